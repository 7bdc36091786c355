//! The sans-I/O replication session of one node with its peer.
//!
//! Sending: every local change ([`Session::push_local`]) goes into the open data message,
//! which leaves when it is full or [`Config::batch`] after its first entry. Data messages
//! are numbered; the last [`Config::ring`] unacknowledged ones are kept so that a NACK can
//! be answered with the very same bytes. A NACK for a message that has left the ring, or a
//! peer that (re)starts (a new epoch), gets a bulk resync: a Start marker, the whole table
//! in paced messages (at most [`Config::window`] unacknowledged at a time), an End marker.
//! Live changes keep flowing between them, in sequence order, so the peer converges.
//!
//! Receiving: data messages are applied strictly in sequence order; early ones wait in a
//! bounded hold-back buffer while the missing ones are NACKed (again every
//! [`Config::nack_retry`]). A heartbeat carries the sender's highest sequence number, so a
//! lost last message is noticed too. A bulk Start addressed to this node's epoch
//! supersedes everything older: the receiver applies what it holds below it and moves on.
//! A node's resync is complete when it has applied the End of a resync addressed to its
//! own epoch; until then its heartbeats say `resyncing` and VRRP keeps it from preempting.
//!
//! Ownership: a replica is the peer's entry while the peer run that sent it lives; the
//! sweep at the End of a resync removes only replicas of that run which the resync did not
//! renew (the peer deleted them while we could not hear it). When the peer run ends (a new
//! epoch: it restarted with an empty table; or another node took its place), the receiver
//! adopts every replica it holds ([`Apply::PeerChanged`]) before it applies anything of the
//! new run: the new run knows nothing of those flows, so they are this node's, sent to the
//! new run in this node's resync, and no sweep of the new run's resync can remove them.
//! Idle flows (no packet since the takeover) survive a failback that way.
//!
//! Nothing here reads a clock or touches a socket: time comes in as `now` (a `Duration`
//! from any fixed origin), datagrams in and out as bytes, table scans through [`Source`].

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::wire::{
    self, Body, Bulk, Claim, DataHead, DataWriter, DecodeError, Entry, Header, Heartbeat, Key,
    Kind, Nack, Phase, VERSION_MINOR,
};

/// Tunables; [`Config::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id on the wire ([`wire::node_id`] of its name).
    pub node: u32,
    /// This run of the node: larger than any earlier run's (start time in µs).
    pub epoch: u64,
    /// Longest a change waits in the open data message.
    pub batch: Duration,
    /// Heartbeat (and acknowledgement) period.
    pub heartbeat: Duration,
    /// The peer is down after this long without a valid message.
    pub peer_timeout: Duration,
    /// Unacknowledged data messages kept for resending.
    pub ring: usize,
    /// Unacknowledged data messages allowed while a bulk resync is being sent.
    pub window: usize,
    /// Early data messages held while a gap is repaired.
    pub holdback: usize,
    /// A NACK not answered is sent again after this long.
    pub nack_retry: Duration,
    /// Acknowledge after this many applied data messages (besides every heartbeat).
    pub ack_every: u64,
    /// Acknowledge applied data at most this long after it arrived, so the sender sees its
    /// replication lag (and frees its ring) without waiting for a heartbeat.
    pub ack_delay: Duration,
    /// Unicast: the only source address accepted.
    pub peer_addr: Option<Ipv4Addr>,
}

impl Config {
    pub fn new(node: u32, epoch: u64) -> Config {
        Config {
            node,
            epoch,
            batch: Duration::from_millis(1),
            heartbeat: Duration::from_millis(100),
            peer_timeout: Duration::from_secs(1),
            ring: 8192,
            window: 1024,
            holdback: 8192,
            nack_retry: Duration::from_millis(20),
            ack_every: 32,
            ack_delay: Duration::from_millis(5),
            peer_addr: None,
        }
    }
}

/// A run of the table for a bulk resync.
pub trait Source {
    /// Appends up to `max` entries from `cursor` (0 = start) to `out`; returns where to go
    /// on, or `None` once the table is done.
    fn scan(&mut self, cursor: u64, max: usize, out: &mut Vec<Entry>) -> Option<u64>;
}

/// Counters, all since the session started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub tx_datagrams: u64,
    pub tx_bytes: u64,
    pub tx_entries: u64,
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    /// Entries handed out to be applied.
    pub applied: u64,
    pub heartbeats_rx: u64,
    /// Sequence numbers found missing.
    pub gaps: u64,
    /// Missing data messages that arrived after a NACK.
    pub repaired: u64,
    pub nacks_tx: u64,
    pub nacks_rx: u64,
    pub retransmits: u64,
    /// Resyncs this node sent / received completely.
    pub resyncs_tx: u64,
    pub resyncs_rx: u64,
    /// Hold-back buffer full: an early message was dropped (and will be NACKed).
    pub holdback_full: u64,
    /// Datagrams refused, by reason.
    pub auth_failures: u64,
    pub truncated: u64,
    pub bad_magic: u64,
    pub bad_version: u64,
    pub malformed: u64,
    pub replayed: u64,
    pub unknown_node: u64,
    /// Our own multicast coming back.
    pub own: u64,
}

impl Stats {
    fn refuse(&mut self, e: DecodeError) {
        match e {
            DecodeError::Truncated => self.truncated += 1,
            DecodeError::BadMagic => self.bad_magic += 1,
            DecodeError::Auth => self.auth_failures += 1,
            DecodeError::Version => self.bad_version += 1,
            DecodeError::Malformed => self.malformed += 1,
        }
    }

    /// Datagrams refused for any reason.
    pub fn refused(&self) -> u64 {
        self.auth_failures
            + self.truncated
            + self.bad_magic
            + self.bad_version
            + self.malformed
            + self.replayed
            + self.unknown_node
    }
}

/// What the receiver must do to its table, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// The peer run the replicas came from has ended (the peer restarted, or another node
    /// took its place): this node is now the only one that knows those flows, so every
    /// replica becomes its own entry, which no later sweep removes and which goes out in
    /// the resync to the new run. Comes before anything of the new run.
    PeerChanged,
    /// Install (or bring up to date) or delete a replica.
    Entry(Entry),
    /// A resync of the peer's whole table begins: mark every replica installed from here on.
    ResyncStart,
    /// The resync is complete: replicas not marked since its start are gone on the peer
    /// (removed while we could not hear it) and must go.
    ResyncEnd,
}

/// Something worth a log line or an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// First valid message of a peer run.
    PeerUp {
        node: u32,
        epoch: u64,
    },
    /// The peer came back with a new epoch (it restarted).
    PeerRestarted {
        node: u32,
        epoch: u64,
    },
    /// No valid message for `peer_timeout`.
    PeerDown {
        node: u32,
    },
    /// Sending the whole table to the peer.
    ResyncStart {
        target_epoch: u64,
        reason: &'static str,
    },
    ResyncSent {
        entries: u64,
        took: Duration,
    },
    /// The peer's resync of its table to us began / is complete.
    ResyncReceiving,
    ResyncReceived {
        entries: u64,
        took: Duration,
    },
}

/// The peer as the receiver sees it.
#[derive(Debug)]
struct Peer {
    node: u32,
    epoch: u64,
    /// Next data sequence number to apply; `None` until the stream's position is known.
    next: Option<u64>,
    /// Highest data sequence number known to exist.
    high: u64,
    holdback: BTreeMap<u64, (DataHead, Vec<Entry>)>,
    last_control: u64,
    last_heard: Duration,
    up: bool,
    since_ack: u64,
    /// When applied data must be acknowledged at the latest.
    ack_due: Option<Duration>,
    last_nack: Option<Duration>,
    nacked_high: u64,
    /// The resync addressed to us being received: (id, start time).
    resync: Option<(u32, Duration)>,
    /// Its VRRP instances, from its last heartbeat (none from a 1.1 peer).
    claims: Vec<Claim>,
}

/// A resync this node is sending.
#[derive(Debug)]
struct BulkTx {
    target_epoch: u64,
    id: u32,
    start_seq: Option<u64>,
    cursor: Option<u64>,
    leftover: Vec<Entry>,
    total: u64,
    started: Duration,
}

/// Where the session stands, for `director sync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub node: u32,
    pub epoch: u64,
    pub peer: Option<PeerStatus>,
    /// Highest data sequence number sent.
    pub seq: u64,
    /// Highest one the peer acknowledged.
    pub acked: u64,
    /// Data messages kept for resending.
    pub ring: usize,
    /// Entries waiting in the open data message.
    pub pending: usize,
    /// Resync being sent: (entries so far, started how long ago).
    pub sending_resync: Option<(u64, Duration)>,
    /// This node has received a complete resync of the peer's table.
    pub resync_complete: bool,
    pub last_resync_rx: Option<(u64, Duration)>,
    pub last_resync_tx: Option<(u64, Duration)>,
    /// Last acknowledgement round trip: data message sent → acknowledged.
    pub ack_rtt: Option<Duration>,
    pub stats: Stats,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub node: u32,
    pub epoch: u64,
    pub up: bool,
    pub last_heard: Duration,
    /// Data messages known to exist but not applied yet.
    pub behind: u64,
    pub holdback: usize,
    /// The peer says it has not received all of our table yet.
    pub resyncing: bool,
}

/// One node's sync session.
pub struct Session {
    cfg: Config,
    key: Key,
    // Sending.
    seq: u64,
    control_seq: u64,
    open: Option<(DataWriter, Duration)>,
    open_entries: usize,
    ring: VecDeque<(u64, Vec<u8>, Duration)>,
    acked: u64,
    ack_rtt: Option<Duration>,
    bulk: Option<BulkTx>,
    bulk_ids: u32,
    /// (target epoch, end seq) of the last resync finished.
    bulk_done: Option<(u64, u64)>,
    next_heartbeat: Duration,
    peer_resyncing: bool,
    // Receiving.
    peer: Option<Peer>,
    resync_complete: bool,
    last_resync_rx: Option<(u64, Duration)>,
    last_resync_tx: Option<(u64, Duration)>,
    /// This node's VRRP instances, told to the peer in every heartbeat.
    claims: Vec<Claim>,
    // Out.
    transmit: VecDeque<Vec<u8>>,
    apply: VecDeque<Apply>,
    events: VecDeque<Event>,
    stats: Stats,
    scratch: Vec<Entry>,
}

impl Session {
    pub fn new(cfg: Config, key: Key, now: Duration) -> Session {
        Session {
            cfg,
            key,
            seq: 0,
            control_seq: 0,
            open: None,
            open_entries: 0,
            ring: VecDeque::new(),
            acked: 0,
            ack_rtt: None,
            bulk: None,
            bulk_ids: 0,
            bulk_done: None,
            next_heartbeat: now,
            peer_resyncing: false,
            peer: None,
            resync_complete: false,
            last_resync_rx: None,
            last_resync_tx: None,
            claims: Vec::new(),
            transmit: VecDeque::new(),
            apply: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            scratch: Vec::new(),
        }
    }

    fn header(&self, kind: Kind, seq: u64) -> Header {
        Header {
            seq,
            ..header_of(&self.cfg, kind)
        }
    }

    // ---- sending ----

    /// A change of this node's own table, to stream to the peer.
    pub fn push_local(&mut self, now: Duration, e: Entry) {
        let (w, _) = self.open.get_or_insert_with(|| {
            (
                DataWriter::new(header_of(&self.cfg, Kind::Data), &DataHead::default()),
                now,
            )
        });
        if w.push(&e) {
            self.open_entries += 1;
            return;
        }
        self.flush(now);
        let mut w = DataWriter::new(self.header(Kind::Data, 0), &DataHead::default());
        assert!(w.push(&e), "one entry fits an empty data message");
        self.open = Some((w, now));
        self.open_entries = 1;
    }

    /// Sends the open data message now.
    fn flush(&mut self, now: Duration) {
        if let Some((w, _)) = self.open.take() {
            let n = self.open_entries as u64;
            self.open_entries = 0;
            self.send_data(now, w, n);
        }
    }

    fn send_data(&mut self, now: Duration, w: DataWriter, entries: u64) {
        self.seq += 1;
        let bytes = w.finish(&self.key, self.seq);
        self.stats.tx_entries += entries;
        if self.ring.len() >= self.cfg.ring {
            self.ring.pop_front();
        }
        self.ring.push_back((self.seq, bytes.clone(), now));
        self.queue(bytes);
    }

    fn queue(&mut self, bytes: Vec<u8>) {
        self.stats.tx_datagrams += 1;
        self.stats.tx_bytes += bytes.len() as u64;
        self.transmit.push_back(bytes);
    }

    fn send_control(&mut self, body: Body) {
        self.control_seq += 1;
        let h = self.header(Kind::Heartbeat, self.control_seq);
        let bytes = wire::encode_control(&self.key, h, &body);
        self.queue(bytes);
    }

    fn send_heartbeat(&mut self, now: Duration) {
        let (peer_epoch, ack) = match &self.peer {
            Some(p) => (p.epoch, p.next.map_or(0, |n| n - 1)),
            None => (0, 0),
        };
        let hb = Heartbeat {
            high: self.seq,
            peer_epoch,
            ack,
            bulk: self
                .bulk
                .as_ref()
                .and_then(|b| b.start_seq.map(|s| (b.target_epoch, s))),
            resyncing: !self.resync_complete,
            claims: self.claims.clone(),
        };
        if let Some(p) = &mut self.peer {
            p.since_ack = 0;
            p.ack_due = None;
        }
        self.send_control(Body::Heartbeat(hb));
        self.next_heartbeat = now + self.cfg.heartbeat;
    }

    /// Starts (or restarts) a bulk resync of the whole table to the peer's current epoch.
    pub fn start_resync(&mut self, now: Duration, reason: &'static str) {
        let Some(target_epoch) = self.peer.as_ref().map(|p| p.epoch) else {
            return;
        };
        self.bulk_ids += 1;
        self.bulk = Some(BulkTx {
            target_epoch,
            id: self.bulk_ids,
            start_seq: None,
            cursor: Some(0),
            leftover: Vec::new(),
            total: 0,
            started: now,
        });
        self.events.push_back(Event::ResyncStart {
            target_epoch,
            reason,
        });
    }

    /// Unacknowledged data messages of the running resync. Older ones do not count: the
    /// resync supersedes them, and those lost for good would otherwise stall it.
    fn inflight(&self) -> u64 {
        let start = self
            .bulk
            .as_ref()
            .and_then(|b| b.start_seq)
            .map_or(self.seq, |s| s - 1);
        self.seq.saturating_sub(self.acked.max(start))
    }

    fn bulk_can_send(&self) -> bool {
        self.bulk.is_some()
            && self.peer.as_ref().is_some_and(|p| p.up)
            && self.inflight() < self.cfg.window as u64
    }

    /// Sends bulk messages while the window allows.
    fn pump_bulk(&mut self, now: Duration, src: &mut dyn Source) {
        while self.bulk_can_send() {
            self.flush(now);
            let mut b = self.bulk.take().expect("bulk_can_send");
            let mut head = DataHead {
                bulk: Some(Bulk {
                    target_epoch: b.target_epoch,
                    id: b.id,
                    start_seq: b.start_seq.unwrap_or(self.seq + 1),
                    phase: Phase::Middle,
                    total: b.total,
                }),
            };
            let mark = head.bulk.as_mut().expect("set above");
            if b.start_seq.is_none() {
                b.start_seq = Some(self.seq + 1);
                mark.phase = Phase::Start;
                let w = DataWriter::new(self.header(Kind::Data, 0), &head);
                self.send_data(now, w, 0);
                self.bulk = Some(b);
                continue;
            }
            // Fill one message: leftovers first, then the table.
            let mut entries = std::mem::take(&mut b.leftover);
            while entries.len() < 64 {
                let Some(cursor) = b.cursor else { break };
                self.scratch.clear();
                b.cursor = src.scan(cursor, 64 - entries.len(), &mut self.scratch);
                entries.append(&mut self.scratch);
            }
            if entries.is_empty() && b.cursor.is_none() {
                mark.phase = Phase::End;
                let w = DataWriter::new(self.header(Kind::Data, 0), &head);
                self.send_data(now, w, 0);
                let took = now.saturating_sub(b.started);
                self.bulk_done = Some((b.target_epoch, self.seq));
                self.stats.resyncs_tx += 1;
                self.last_resync_tx = Some((b.total, took));
                self.events.push_back(Event::ResyncSent {
                    entries: b.total,
                    took,
                });
                return;
            }
            let mut w = DataWriter::new(self.header(Kind::Data, 0), &head);
            let mut sent = 0;
            for e in &entries {
                if !w.push(e) {
                    break;
                }
                sent += 1;
            }
            b.leftover = entries.split_off(sent);
            b.total += sent as u64;
            self.send_data(now, w, sent as u64);
            self.bulk = Some(b);
        }
    }

    // ---- receiving ----

    /// A datagram from `src`.
    pub fn handle_datagram(&mut self, now: Duration, src: Ipv4Addr, buf: &[u8]) {
        self.stats.rx_datagrams += 1;
        self.stats.rx_bytes += buf.len() as u64;
        if self.cfg.peer_addr.is_some_and(|a| a != src) {
            self.stats.unknown_node += 1;
            return;
        }
        let (h, body) = match wire::decode(&self.key, buf) {
            Ok(m) => m,
            Err(e) => {
                self.stats.refuse(e);
                return;
            }
        };
        if h.node == self.cfg.node {
            self.stats.own += 1;
            return;
        }
        // Who is it?
        match &mut self.peer {
            Some(p) if p.node != h.node => {
                if p.up && now.saturating_sub(p.last_heard) < self.cfg.peer_timeout {
                    self.stats.unknown_node += 1;
                    return;
                }
                self.new_peer(now, h.node, h.epoch, false);
            }
            Some(p) if h.epoch < p.epoch => {
                self.stats.replayed += 1;
                return;
            }
            Some(p) if h.epoch > p.epoch => self.new_peer(now, h.node, h.epoch, true),
            Some(_) => {}
            None => self.new_peer(now, h.node, h.epoch, false),
        }
        let p = self.peer.as_mut().expect("set above");
        match body {
            Body::Data(head, entries) => {
                if self.data(now, h.seq, head, entries) {
                    self.mark_heard(now);
                }
            }
            Body::Heartbeat(hb) => {
                if h.seq <= p.last_control {
                    self.stats.replayed += 1;
                    return;
                }
                p.last_control = h.seq;
                self.mark_heard(now);
                self.stats.heartbeats_rx += 1;
                self.heartbeat(now, hb);
            }
            Body::Nack(n) => {
                if h.seq <= p.last_control {
                    self.stats.replayed += 1;
                    return;
                }
                p.last_control = h.seq;
                self.mark_heard(now);
                self.nack(now, n);
            }
        }
    }

    fn mark_heard(&mut self, now: Duration) {
        let p = self.peer.as_mut().expect("a peer");
        p.last_heard = now;
        if !p.up {
            p.up = true;
            let (node, epoch) = (p.node, p.epoch);
            self.events.push_back(Event::PeerUp { node, epoch });
        }
    }

    fn new_peer(&mut self, now: Duration, node: u32, epoch: u64, restarted: bool) {
        self.peer = Some(Peer {
            node,
            epoch,
            next: None,
            high: 0,
            holdback: BTreeMap::new(),
            last_control: 0,
            last_heard: now,
            up: true,
            since_ack: 0,
            ack_due: None,
            last_nack: None,
            nacked_high: 0,
            resync: None,
            claims: Vec::new(),
        });
        // Whatever replicas we hold came from a run that has ended (or there are none):
        // ours now, before anything of this run is applied.
        self.apply.push_back(Apply::PeerChanged);
        // What we sent to its previous run is moot.
        self.acked = self.seq;
        self.ring.clear();
        self.peer_resyncing = true;
        self.events.push_back(if restarted {
            Event::PeerRestarted { node, epoch }
        } else {
            Event::PeerUp { node, epoch }
        });
        self.start_resync(
            now,
            if restarted {
                "peer restarted"
            } else {
                "new peer"
            },
        );
        // Tell it where our stream stands at once.
        self.send_heartbeat(now);
    }

    /// A data message; false if it was a replay.
    fn data(&mut self, now: Duration, seq: u64, head: DataHead, entries: Vec<Entry>) -> bool {
        let my_epoch = self.cfg.epoch;
        let p = self.peer.as_mut().expect("a peer");
        // A resync addressed to us fixes where the stream starts.
        if let Some(b) = head.bulk.filter(|b| b.target_epoch == my_epoch) {
            match p.next {
                None => p.next = Some(b.start_seq),
                Some(n) if b.start_seq > n => {
                    // Everything older is superseded: apply what we hold below it, in order.
                    let mut below = p.holdback.split_off(&b.start_seq);
                    std::mem::swap(&mut below, &mut p.holdback);
                    for (_, (h, es)) in below {
                        self.apply_data(now, h, es);
                    }
                    let p = self.peer.as_mut().expect("a peer");
                    p.next = Some(b.start_seq);
                }
                Some(_) => {}
            }
        }
        let p = self.peer.as_mut().expect("a peer");
        let next = *p.next.get_or_insert(seq);
        if seq < next || p.holdback.contains_key(&seq) {
            self.stats.replayed += 1;
            return false;
        }
        if seq <= p.nacked_high {
            self.stats.repaired += 1;
        }
        self.note_high(seq, true);
        let p = self.peer.as_mut().expect("a peer");
        if seq > next {
            if p.holdback.len() >= self.cfg.holdback {
                self.stats.holdback_full += 1;
            } else {
                p.holdback.insert(seq, (head, entries));
            }
            return true;
        }
        self.apply_data(now, head, entries);
        let p = self.peer.as_mut().expect("a peer");
        p.next = Some(seq + 1);
        p.since_ack += 1;
        // Drain what was waiting behind it.
        loop {
            let p = self.peer.as_mut().expect("a peer");
            let n = p.next.expect("set above");
            let Some((h, es)) = p.holdback.remove(&n) else {
                break;
            };
            p.next = Some(n + 1);
            p.since_ack += 1;
            self.apply_data(now, h, es);
        }
        let p = self.peer.as_mut().expect("a peer");
        if p.since_ack >= self.cfg.ack_every {
            self.send_heartbeat(now);
        } else if p.ack_due.is_none() {
            p.ack_due = Some(now + self.cfg.ack_delay);
        }
        true
    }

    /// Sequence number `high` is known to exist (`arrived`: it is here): the numbers
    /// between the highest known so far and it are gaps.
    fn note_high(&mut self, high: u64, arrived: bool) {
        let p = self.peer.as_mut().expect("a peer");
        let known = p.high.max(p.next.map_or(high, |n| n.saturating_sub(1)));
        if high > known {
            self.stats.gaps += high - known - u64::from(arrived);
        }
        p.high = p.high.max(high);
    }

    fn apply_data(&mut self, now: Duration, head: DataHead, entries: Vec<Entry>) {
        self.stats.applied += entries.len() as u64;
        let mine = head.bulk.filter(|b| b.target_epoch == self.cfg.epoch);
        if let Some(b) = mine.filter(|b| b.phase == Phase::Start) {
            let p = self.peer.as_mut().expect("a peer");
            p.resync = Some((b.id, now));
            self.apply.push_back(Apply::ResyncStart);
            self.events.push_back(Event::ResyncReceiving);
        }
        self.apply.extend(entries.into_iter().map(Apply::Entry));
        let Some(b) = mine else {
            return;
        };
        let p = self.peer.as_mut().expect("a peer");
        match b.phase {
            Phase::Start => {}
            Phase::Middle => {}
            Phase::End => {
                if let Some((id, started)) = p.resync {
                    if id == b.id {
                        p.resync = None;
                        let took = now.saturating_sub(started);
                        self.resync_complete = true;
                        self.apply.push_back(Apply::ResyncEnd);
                        self.stats.resyncs_rx += 1;
                        self.last_resync_rx = Some((b.total, took));
                        self.events.push_back(Event::ResyncReceived {
                            entries: b.total,
                            took,
                        });
                        self.send_heartbeat(now);
                    }
                }
            }
        }
    }

    fn heartbeat(&mut self, now: Duration, hb: Heartbeat) {
        let my_epoch = self.cfg.epoch;
        let p = self.peer.as_mut().expect("a peer");
        p.claims = hb.claims.clone();
        if p.next.is_none() {
            // Join its stream: at the resync it runs for us, else after what it has sent.
            p.next = Some(match hb.bulk {
                Some((target, start)) if target == my_epoch => start,
                _ => hb.high + 1,
            });
            p.high = hb.high.max(p.high);
        } else {
            self.note_high(hb.high, false);
        }
        if hb.peer_epoch == my_epoch {
            if hb.ack > self.acked {
                if let Some((_, _, sent)) = self.ring.iter().find(|(s, _, _)| *s == hb.ack) {
                    self.ack_rtt = Some(now.saturating_sub(*sent));
                }
                self.acked = hb.ack.min(self.seq);
                while self.ring.front().is_some_and(|(s, _, _)| *s <= self.acked) {
                    self.ring.pop_front();
                }
            }
            self.peer_resyncing = hb.resyncing;
            // It still waits for our table and no resync of ours is on its way: send one.
            let peer_epoch = self.peer.as_ref().map_or(0, |p| p.epoch);
            let ours_delivered = self
                .bulk_done
                .is_none_or(|(target, end)| target != peer_epoch || hb.ack >= end);
            if hb.resyncing && self.bulk.is_none() && ours_delivered {
                self.start_resync(now, "peer asked");
            }
        }
    }

    fn nack(&mut self, now: Duration, n: Nack) {
        self.stats.nacks_rx += 1;
        if n.peer_epoch != self.cfg.epoch {
            return;
        }
        let oldest = self.ring.front().map(|(s, _, _)| *s);
        let mut resend = Vec::new();
        let mut lost = false;
        for &(lo, hi) in n.ranges.iter().take(256) {
            if hi < lo || hi > self.seq {
                continue;
            }
            for s in lo..=hi {
                if s <= self.acked {
                    continue;
                }
                match oldest {
                    Some(o) if s >= o => {
                        let i = (s - o) as usize;
                        if let Some((_, bytes, _)) = self.ring.get(i) {
                            resend.push(bytes.clone());
                        }
                    }
                    _ => lost = true,
                }
                if resend.len() >= self.cfg.window {
                    break;
                }
            }
        }
        if lost {
            // It fell behind the ring: only the whole table can repair that.
            if self.bulk.is_none() {
                self.start_resync(now, "peer fell behind the resend ring");
            }
            return;
        }
        self.stats.retransmits += resend.len() as u64;
        for b in resend {
            self.queue(b);
        }
    }

    // ---- time ----

    /// Runs what is due at `now`: flush the open message, heartbeats, NACKs, the peer's
    /// liveness, and the bulk resync (which reads the table through `src`).
    pub fn handle_timeout(&mut self, now: Duration, src: &mut dyn Source) {
        if self
            .open
            .as_ref()
            .is_some_and(|(_, t)| now >= *t + self.cfg.batch)
        {
            self.flush(now);
        }
        if let Some(p) = &mut self.peer {
            if p.up && now.saturating_sub(p.last_heard) >= self.cfg.peer_timeout {
                p.up = false;
                let node = p.node;
                self.events.push_back(Event::PeerDown { node });
            }
        }
        self.pump_bulk(now, src);
        self.send_nack(now);
        let ack_due = self
            .peer
            .as_ref()
            .and_then(|p| p.ack_due)
            .is_some_and(|t| now >= t);
        if now >= self.next_heartbeat || ack_due {
            self.send_heartbeat(now);
        }
    }

    fn send_nack(&mut self, now: Duration) {
        let Some(p) = &mut self.peer else { return };
        let Some(next) = p.next else { return };
        if p.high < next {
            return;
        }
        let fresh = p.high > p.nacked_high;
        let retry = p
            .last_nack
            .is_none_or(|t| now.saturating_sub(t) >= self.cfg.nack_retry);
        if !fresh && !retry {
            return;
        }
        let mut ranges = Vec::new();
        let mut lo = next;
        for (&s, _) in p.holdback.range(next..) {
            if s > lo {
                ranges.push((lo, s - 1));
            }
            lo = s + 1;
            if ranges.len() >= 64 {
                break;
            }
        }
        if ranges.len() < 64 && lo <= p.high {
            ranges.push((lo, p.high));
        }
        if ranges.is_empty() {
            return;
        }
        p.last_nack = Some(now);
        p.nacked_high = p.high;
        let peer_epoch = p.epoch;
        self.stats.nacks_tx += 1;
        self.send_control(Body::Nack(Nack { peer_epoch, ranges }));
    }

    /// When [`Session::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Duration {
        let mut t = self.next_heartbeat;
        if let Some((_, first)) = &self.open {
            t = t.min(*first + self.cfg.batch);
        }
        if let Some(p) = &self.peer {
            if p.up {
                t = t.min(p.last_heard + self.cfg.peer_timeout);
            }
            if let Some(due) = p.ack_due {
                t = t.min(due);
            }
            if p.next.is_some_and(|n| p.high >= n) {
                let at = p
                    .last_nack
                    .map_or(Duration::ZERO, |l| l + self.cfg.nack_retry);
                t = t.min(at);
            }
        }
        if self.bulk_can_send() {
            t = Duration::ZERO;
        }
        t
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next change to make to the replicas, in stream order.
    pub fn poll_apply(&mut self) -> Option<Apply> {
        self.apply.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Sets what this node's VRRP instances are and say. Every heartbeat carries it; a
    /// change goes out at once, so that the peer's view of a takeover lags by a datagram,
    /// not a heartbeat interval.
    pub fn set_claims(&mut self, now: Duration, claims: Vec<Claim>) {
        if claims != self.claims {
            self.claims = claims;
            if self.peer.is_some() {
                self.send_heartbeat(now);
            }
        }
    }

    /// The peer's VRRP instances from its last heartbeat, while the peer is up (heard within
    /// `peer_timeout`); `None` when it is not, or has said nothing of them (a 1.1 peer).
    pub fn peer_claims(&self, now: Duration) -> Option<&[Claim]> {
        let p = self.peer.as_ref()?;
        let up = p.up && now.saturating_sub(p.last_heard) < self.cfg.peer_timeout;
        (up && !p.claims.is_empty()).then_some(p.claims.as_slice())
    }

    /// This node has a complete copy of the peer's table (it received a resync addressed
    /// to its current run).
    pub fn resync_complete(&self) -> bool {
        self.resync_complete
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn status(&self, now: Duration) -> Status {
        Status {
            node: self.cfg.node,
            epoch: self.cfg.epoch,
            peer: self.peer.as_ref().map(|p| PeerStatus {
                node: p.node,
                epoch: p.epoch,
                up: p.up,
                last_heard: now.saturating_sub(p.last_heard),
                behind: p.next.map_or(0, |n| (p.high + 1).saturating_sub(n)),
                holdback: p.holdback.len(),
                resyncing: self.peer_resyncing,
            }),
            seq: self.seq,
            acked: self.acked,
            ring: self.ring.len(),
            pending: self.open_entries,
            sending_resync: self
                .bulk
                .as_ref()
                .map(|b| (b.total, now.saturating_sub(b.started))),
            resync_complete: self.resync_complete,
            last_resync_rx: self.last_resync_rx,
            last_resync_tx: self.last_resync_tx,
            ack_rtt: self.ack_rtt,
            stats: self.stats,
        }
    }
}

/// This node's header for a message of `kind` (sequence number 0: set when sent).
fn header_of(cfg: &Config, kind: Kind) -> Header {
    Header {
        minor: VERSION_MINOR,
        kind,
        flags: 0,
        node: cfg.node,
        epoch: cfg.epoch,
        seq: 0,
        count: 0,
    }
}
