//! The sync session in virtual time: two nodes, a network with seeded loss, reordering and
//! duplication, tables changing under random workloads. After the stream drains, each
//! node's table must equal its peer's.

use std::collections::{BTreeMap, BinaryHeap};
use std::net::Ipv4Addr;
use std::time::Duration;

use syncd::session::{Apply, Config, Event, Session, Source};
use syncd::wire::{self, Entry, Key, Op};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const A_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
const B_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 3);

/// xorshift64*: a seeded, reproducible stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// A node's connection table: its own flows and its replicas of the peer's, keyed by a
/// number derived from the flow (stable, so a scan cursor survives changes). As in the
/// forwarder's table, a replica carries a flag and the mark of the last resync it was
/// installed in; `marks` holds those, `mark` the current resync's.
#[derive(Default, Clone, Debug)]
struct Table {
    map: BTreeMap<u64, Entry>,
    marks: BTreeMap<u64, bool>,
    mark: bool,
}

impl PartialEq for Table {
    fn eq(&self, o: &Table) -> bool {
        self.map == o.map
    }
}

fn key_of(e: &Entry) -> u64 {
    (u64::from(u32::from_be_bytes(e.client)) << 16) | u64::from(e.client_port)
}

impl Table {
    /// A change of this node's own.
    fn local(&mut self, e: Entry) {
        let k = key_of(&e);
        self.marks.remove(&k);
        match e.op() {
            Some(Op::Upsert) => {
                self.map.insert(k, Entry { op: 0, ..e });
            }
            _ => {
                self.map.remove(&k);
            }
        }
    }

    /// A change from the peer's stream.
    fn apply(&mut self, a: Apply) {
        match a {
            Apply::Entry(e) => {
                self.local(e);
                if e.op() == Some(Op::Upsert) {
                    self.marks.insert(key_of(&e), self.mark);
                }
            }
            // The peer run the replicas came from ended: they are this node's own now.
            Apply::PeerChanged => self.marks.clear(),
            Apply::ResyncStart => self.mark = !self.mark,
            Apply::ResyncEnd => {
                let stale: Vec<u64> = self
                    .marks
                    .iter()
                    .filter(|(_, &m)| m != self.mark)
                    .map(|(&k, _)| k)
                    .collect();
                for k in stale {
                    self.marks.remove(&k);
                    self.map.remove(&k);
                }
            }
        }
    }
}

impl Source for Table {
    fn scan(&mut self, cursor: u64, max: usize, out: &mut Vec<Entry>) -> Option<u64> {
        let mut it = self.map.range(cursor..);
        for _ in 0..max {
            match it.next() {
                Some((_, e)) => out.push(*e),
                None => return None,
            }
        }
        it.next().map(|(k, _)| *k)
    }
}

fn flow(node: u8, n: u32, state: u8) -> Entry {
    Entry {
        op: Op::Upsert as u8,
        proto: 6,
        mode: 0,
        state,
        flags: 0,
        client: [198, 18, node, (n >> 16) as u8],
        client_port: n as u16,
        vip: [198, 18, 1, 100],
        vip_port: 80,
        real: [198, 18, 2, 11 + (n % 3) as u8],
        real_port: 8080,
        local: None,
        remaining: 900,
        proxy: None,
    }
}

#[derive(Clone, Copy)]
struct Net {
    loss: f64,
    dup: f64,
    /// Each datagram is delayed by 100 µs plus up to this much.
    jitter: Duration,
}

const CLEAN: Net = Net {
    loss: 0.0,
    dup: 0.0,
    jitter: Duration::ZERO,
};

struct Node {
    session: Session,
    table: Table,
    addr: Ipv4Addr,
    /// Next own flow number.
    next_flow: u32,
    own: Vec<u64>,
    events: Vec<Event>,
}

/// A datagram in flight, ordered by arrival time (then by sending order).
#[derive(PartialEq, Eq)]
struct Flight {
    at: Duration,
    n: u64,
    to: usize,
    from: Ipv4Addr,
    bytes: Vec<u8>,
}

impl Ord for Flight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.n).cmp(&(self.at, self.n))
    }
}
impl PartialOrd for Flight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

struct Sim {
    now: Duration,
    nodes: Vec<Node>,
    net: Net,
    rng: Rng,
    flights: BinaryHeap<Flight>,
    sent: u64,
    /// Datagrams between the two nodes are dropped while set.
    partitioned: bool,
    /// Every datagram that crossed the network, for the replay tests.
    wiretap: Vec<(usize, Ipv4Addr, Vec<u8>)>,
}

fn config(node: u32, epoch: u64) -> Config {
    Config::new(node, epoch)
}

impl Sim {
    fn new(seed: u64, net: Net, cfg: impl Fn(u32, u64) -> Config) -> Sim {
        let key = Key::new(KEY).unwrap();
        let nodes = [("lb-a", A_ADDR), ("lb-b", B_ADDR)]
            .iter()
            .enumerate()
            .map(|(i, &(name, addr))| Node {
                session: Session::new(
                    cfg(wire::node_id(name), 1_000 + i as u64),
                    key.clone(),
                    Duration::ZERO,
                ),
                table: Table::default(),
                addr,
                next_flow: 0,
                own: Vec::new(),
                events: Vec::new(),
            })
            .collect();
        Sim {
            now: Duration::ZERO,
            nodes,
            net,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            flights: BinaryHeap::new(),
            sent: 0,
            partitioned: false,
            wiretap: Vec::new(),
        }
    }

    /// Restarts node `i` with an empty table and a new epoch.
    fn restart(&mut self, i: usize, epoch: u64) {
        let name = if i == 0 { "lb-a" } else { "lb-b" };
        let n = &mut self.nodes[i];
        n.session = Session::new(
            config(wire::node_id(name), epoch),
            Key::new(KEY).unwrap(),
            self.now,
        );
        n.table = Table::default();
        n.own.clear();
        n.events.clear();
    }

    /// A random change to node `i`'s own flows: a new flow (SYN_RECV), a state change, or
    /// a removal.
    fn change(&mut self, i: usize) {
        let r = self.rng.below(10);
        let node = &mut self.nodes[i];
        let e = if r < 5 || node.own.is_empty() {
            let n = node.next_flow;
            node.next_flow += 1;
            let e = flow(10 + i as u8, n, 1);
            node.own.push(key_of(&e));
            e
        } else {
            let at = (self.rng.below(node.own.len() as u64)) as usize;
            let k = node.own[at];
            match node.table.map.get(&k) {
                None => {
                    node.own.swap_remove(at);
                    return;
                }
                Some(cur) if r < 8 => Entry {
                    state: (cur.state % 6) + 1,
                    ..*cur
                },
                Some(cur) => {
                    node.own.swap_remove(at);
                    Entry {
                        op: Op::Delete as u8,
                        ..*cur
                    }
                }
            }
        };
        let node = &mut self.nodes[i];
        node.table.local(e);
        node.session.push_local(self.now, e);
    }

    fn send(&mut self, from: usize) {
        while let Some(bytes) = self.nodes[from].session.poll_transmit() {
            let to = 1 - from;
            let src = self.nodes[from].addr;
            self.wiretap.push((to, src, bytes.clone()));
            if self.partitioned || self.rng.chance(self.net.loss) {
                continue;
            }
            let copies = if self.rng.chance(self.net.dup) { 2 } else { 1 };
            for _ in 0..copies {
                let jitter = if self.net.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(self.rng.below(self.net.jitter.as_nanos() as u64))
                };
                self.sent += 1;
                self.flights.push(Flight {
                    at: self.now + Duration::from_micros(100) + jitter,
                    n: self.sent,
                    to,
                    from: src,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    /// Lets node `i` act on what is due and ship what it produced.
    fn settle(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        if node.session.poll_timeout() <= now {
            node.session.handle_timeout(now, &mut node.table);
        }
        while let Some(e) = node.session.poll_apply() {
            node.table.apply(e);
        }
        while let Some(ev) = node.session.poll_event() {
            node.events.push(ev);
        }
        self.send(i);
    }

    /// Runs to `until`, with a change every `every` on the nodes in `writers`.
    fn run(&mut self, until: Duration, every: Option<Duration>, writers: &[usize]) {
        let mut next_change = every.map(|e| self.now + e);
        loop {
            let mut t = until;
            for n in &self.nodes {
                t = t.min(n.session.poll_timeout().max(self.now));
            }
            if let Some(f) = self.flights.peek() {
                t = t.min(f.at);
            }
            if let Some(c) = next_change {
                t = t.min(c);
            }
            if t >= until && self.flights.peek().is_none_or(|f| f.at > until) {
                self.now = until;
                for i in 0..2 {
                    self.settle(i);
                }
                return;
            }
            self.now = t;
            while self.flights.peek().is_some_and(|f| f.at <= self.now) {
                let f = self.flights.pop().unwrap();
                self.nodes[f.to]
                    .session
                    .handle_datagram(self.now, f.from, &f.bytes);
            }
            if next_change.is_some_and(|c| c <= self.now) {
                for &w in writers {
                    self.change(w);
                }
                next_change = Some(self.now + every.unwrap());
            }
            for i in 0..2 {
                self.settle(i);
            }
        }
    }

    fn assert_converged(&self, what: &str) {
        let (a, b) = (&self.nodes[0].table, &self.nodes[1].table);
        let (a, b) = (&a.map, &b.map);
        let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(k)).take(5).collect();
        let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(k)).take(5).collect();
        let differ: Vec<_> = a
            .iter()
            .filter(|(k, e)| b.get(k).is_some_and(|f| f != *e))
            .take(5)
            .collect();
        assert!(
            a == b,
            "{what}: tables differ: {} vs {} entries; only on A {only_a:?}, only on B {only_b:?}, different {differ:?}",
            a.len(),
            b.len()
        );
    }
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn lossless_stream_replicates_every_change_within_the_batch_window() {
    let mut sim = Sim::new(1, CLEAN, config);
    sim.run(MS * 300, None, &[]);
    // One change: it leaves A at most `batch` later and is applied on B 100 µs after.
    let start = sim.now;
    sim.change(0);
    let k = *sim.nodes[0].own.last().unwrap();
    while !sim.nodes[1].table.map.contains_key(&k) {
        let step = sim.now + Duration::from_micros(50);
        sim.run(step, None, &[]);
        assert!(sim.now - start < MS * 5, "the change did not arrive");
    }
    let lag = sim.now - start;
    assert!(lag <= MS + Duration::from_micros(150), "lag {lag:?}");
    sim.run(sim.now + MS * 2000, Some(Duration::from_micros(200)), &[0]);
    sim.run(sim.now + MS * 500, None, &[]);
    sim.assert_converged("lossless");
    assert!(sim.nodes[0].table.map.len() > 1000);
    let s = sim.nodes[1].session.stats();
    assert_eq!((s.gaps, s.nacks_tx, s.replayed), (0, 0, 0));
    // Changes were batched: far fewer datagrams than entries.
    let a = sim.nodes[0].session.stats();
    assert!(a.tx_entries > 4 * a.tx_datagrams / 2, "{a:?}");
}

#[test]
fn loss_reordering_and_duplication_are_repaired_by_nack() {
    for seed in 1..=20 {
        let net = Net {
            loss: 0.15,
            dup: 0.05,
            jitter: MS * 3,
        };
        let mut sim = Sim::new(seed, net, config);
        sim.run(MS * 500, None, &[]);
        sim.run(MS * 3000, Some(Duration::from_micros(300)), &[0, 1]);
        // Drain on a clean network.
        sim.net = CLEAN;
        sim.run(MS * 5000, None, &[]);
        sim.assert_converged(&format!("seed {seed}"));
        let (a, b) = (sim.nodes[0].session.stats(), sim.nodes[1].session.stats());
        assert!(
            a.gaps > 0 && a.repaired > 0 && b.retransmits > 0,
            "seed {seed}: {a:?} {b:?}"
        );
        assert!(b.replayed > 0, "duplicates are counted as replays: {b:?}");
        assert_eq!(a.auth_failures + b.auth_failures, 0);
        assert!(sim.nodes[0].table.map.len() > 2000);
    }
}

#[test]
fn a_restarted_peer_gets_a_bulk_resync_and_reports_it_complete() {
    let mut sim = Sim::new(7, CLEAN, config);
    sim.run(MS * 300, None, &[]);
    sim.run(MS * 2000, Some(Duration::from_micros(100)), &[0]);
    sim.run(sim.now + MS * 300, None, &[]);
    sim.assert_converged("before the restart");
    assert!(sim.nodes[1].session.resync_complete());
    let before = sim.nodes[0].table.map.len();
    assert!(before > 3000, "{before}");

    // B restarts empty while A keeps changing its table.
    sim.restart(1, 5_000);
    assert!(!sim.nodes[1].session.resync_complete());
    sim.run(sim.now + MS * 2000, Some(Duration::from_micros(100)), &[0]);
    sim.run(sim.now + MS * 500, None, &[]);
    sim.assert_converged("after the restart");
    assert!(sim.nodes[1].session.resync_complete());
    let received = sim.nodes[1]
        .events
        .iter()
        .find_map(|e| match e {
            Event::ResyncReceived { entries, .. } => Some(*entries),
            _ => None,
        })
        .expect("B reports the resync it received");
    assert!(
        received as usize >= before * 9 / 10,
        "resync carried {received} of {before}"
    );
    assert!(sim.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::PeerRestarted { .. })));
}

/// The idle flows of a failback: A made them, B holds them as replicas and carried them
/// while A was down (no packet: idle). A restarts with an empty table and nobody changes
/// anything. B keeps every one (they are its own once A's old run has ended; A's empty
/// resync must not sweep them) and A gets them all back in B's resync. Before
/// `Apply::PeerChanged`, B's sweep at the end of A's (empty) resync removed them all.
#[test]
fn replicas_of_a_run_that_ended_are_kept_and_go_to_the_new_run() {
    let mut sim = Sim::new(11, CLEAN, config);
    sim.run(MS * 300, None, &[]);
    sim.run(MS * 1000, Some(Duration::from_micros(200)), &[0]);
    sim.run(sim.now + MS * 300, None, &[]);
    sim.assert_converged("before the restart");
    let held = sim.nodes[1].table.map.clone();
    assert!(held.len() > 1000, "{}", held.len());
    assert_eq!(
        sim.nodes[1].table.marks.len(),
        held.len(),
        "B holds replicas"
    );

    sim.restart(0, 7_000);
    sim.run(sim.now + MS * 3000, None, &[]);
    assert!(
        sim.nodes[0].session.resync_complete(),
        "A's resync is complete"
    );
    assert!(
        sim.nodes[1].session.resync_complete(),
        "B's resync is complete"
    );
    assert!(
        sim.nodes[1].table.map == held,
        "B lost {} of its {} flows at A's restart",
        held.keys()
            .filter(|k| !sim.nodes[1].table.map.contains_key(k))
            .count(),
        held.len()
    );
    assert!(sim.nodes[1].table.marks.is_empty(), "B's own entries now");
    sim.assert_converged("after the restart");
    assert_eq!(
        sim.nodes[0].table.marks.len(),
        held.len(),
        "A holds them as B's replicas"
    );
}

/// What each node says of its VRRP instances reaches the other with its next heartbeat, a
/// change at once; a peer that falls silent says nothing any more.
#[test]
fn vrrp_claims_ride_the_heartbeats_and_lapse_with_the_peer() {
    use syncd::wire::Claim;
    let mut sim = Sim::new(13, CLEAN, config);
    sim.run(MS * 300, None, &[]);
    assert_eq!(
        sim.nodes[1].session.peer_claims(sim.now),
        None,
        "none said yet"
    );
    let claim = |state: u8, priority: u8| Claim {
        vrid: 51,
        state,
        priority,
        addr: [198, 18, 1, 2],
    };
    let now = sim.now;
    sim.nodes[0].session.set_claims(now, vec![claim(2, 200)]);
    sim.send(0);
    // Sent at once, not at the next heartbeat: a few ms of delivery suffice.
    sim.run(sim.now + MS * 5, None, &[]);
    assert_eq!(
        sim.nodes[1].session.peer_claims(sim.now),
        Some(&[claim(2, 200)][..])
    );
    let now = sim.now;
    sim.nodes[0].session.set_claims(now, vec![claim(1, 150)]);
    sim.send(0);
    sim.run(sim.now + MS * 5, None, &[]);
    assert_eq!(
        sim.nodes[1].session.peer_claims(sim.now),
        Some(&[claim(1, 150)][..])
    );
    // A goes silent (a partition): after peer_timeout its claims are no longer believed.
    sim.net.loss = 1.0;
    sim.run(sim.now + Duration::from_secs(2), None, &[]);
    assert_eq!(sim.nodes[1].session.peer_claims(sim.now), None);
}

#[test]
fn a_resync_survives_loss_and_a_lossy_start() {
    for seed in 1..=10 {
        let net = Net {
            loss: 0.2,
            dup: 0.02,
            jitter: MS * 2,
        };
        let mut sim = Sim::new(seed, CLEAN, config);
        sim.run(MS * 200, None, &[]);
        // A has a big table before B exists on the network.
        for _ in 0..20_000 {
            sim.change(0);
        }
        sim.run(sim.now + MS * 100, None, &[]);
        sim.restart(1, 9_000 + seed);
        sim.net = net;
        sim.run(sim.now + MS * 3000, Some(MS), &[0]);
        sim.net = CLEAN;
        sim.run(sim.now + MS * 5000, None, &[]);
        sim.assert_converged(&format!("seed {seed}"));
        assert!(sim.nodes[1].session.resync_complete(), "seed {seed}");
    }
}

#[test]
fn a_peer_that_fell_behind_the_ring_is_resynced() {
    let small = |node, epoch| Config {
        ring: 16,
        ..Config::new(node, epoch)
    };
    let mut sim = Sim::new(3, CLEAN, small);
    sim.run(MS * 300, None, &[]);
    sim.run(sim.now + MS * 200, Some(MS), &[0]);
    // Cut the link long enough for far more than 16 messages and for the peer to be down.
    sim.partitioned = true;
    sim.run(sim.now + MS * 2500, Some(Duration::from_micros(200)), &[0]);
    sim.partitioned = false;
    sim.run(sim.now + MS * 3000, None, &[]);
    sim.assert_converged("after the partition");
    assert!(sim.nodes[0].events.iter().any(|e| matches!(
        e,
        Event::ResyncStart {
            reason: "peer fell behind the resend ring",
            ..
        }
    )));
}

#[test]
fn a_node_alone_never_completes_its_resync() {
    let mut sim = Sim::new(4, CLEAN, config);
    sim.partitioned = true;
    sim.run(MS * 3000, None, &[]);
    assert!(!sim.nodes[0].session.resync_complete());
    assert!(!sim.nodes[1].session.resync_complete());
    sim.partitioned = false;
    sim.run(sim.now + MS * 500, None, &[]);
    assert!(sim.nodes[0].session.resync_complete());
    assert!(sim.nodes[1].session.resync_complete());
}

/// Everything A ever sent, as (to, from, bytes).
fn captured(sim: &Sim) -> Vec<(usize, Ipv4Addr, Vec<u8>)> {
    sim.wiretap
        .iter()
        .filter(|(to, _, _)| *to == 1)
        .cloned()
        .collect()
}

#[test]
fn forged_replayed_truncated_and_foreign_datagrams_change_nothing() {
    let mut sim = Sim::new(5, CLEAN, config);
    sim.run(MS * 300, None, &[]);
    sim.run(sim.now + MS * 500, Some(MS), &[0]);
    sim.run(sim.now + MS * 300, None, &[]);
    sim.assert_converged("before the attack");
    let replica = sim.nodes[1].table.clone();
    let before = *sim.nodes[1].session.stats();
    let old = captured(&sim);
    let data: Vec<_> = old
        .iter()
        .filter(|(_, _, b)| b[6] == 1 && u16::from_be_bytes([b[28], b[29]]) > 0)
        .cloned()
        .collect();
    assert!(data.len() > 10);

    let now = sim.now;
    let b = &mut sim.nodes[1].session;
    // Replays of real data messages.
    for (_, from, bytes) in &data {
        b.handle_datagram(now, *from, bytes);
    }
    // Forged: a valid-looking data message under the wrong key, deleting a flow.
    let wrong = Key::new(b"not the key, not the key, not it").unwrap();
    let victim = *replica.map.values().next().unwrap();
    let h = wire::Header {
        minor: 0,
        kind: wire::Kind::Data,
        flags: 0,
        node: wire::node_id("lb-a"),
        epoch: 1_000,
        seq: 1_000_000,
        count: 1,
    };
    let forged = wire::encode_data(
        &wrong,
        h,
        &wire::DataHead::default(),
        &[Entry {
            op: Op::Delete as u8,
            ..victim
        }],
    );
    b.handle_datagram(now, A_ADDR, &forged);
    // Altered: a real message with one entry byte flipped.
    let mut altered = data[0].2.clone();
    altered[40] ^= 0x55;
    b.handle_datagram(now, A_ADDR, &altered);
    // Truncated, at several lengths.
    for cut in [0, 10, 31, 63, data[1].2.len() - 1] {
        b.handle_datagram(now, A_ADDR, &data[1].2[..cut]);
    }
    // From an address that is not the peer (unicast).
    let mut cfg = Config::new(wire::node_id("lb-b"), 77);
    cfg.peer_addr = Some(A_ADDR);
    let mut strict = Session::new(cfg, Key::new(KEY).unwrap(), now);
    strict.handle_datagram(now, Ipv4Addr::new(198, 18, 3, 66), &data[0].2);
    assert_eq!(strict.stats().unknown_node, 1);
    assert!(strict.poll_apply().is_none());

    sim.run(sim.now + MS * 300, None, &[]);
    let after = *sim.nodes[1].session.stats();
    assert_eq!(sim.nodes[1].table, replica, "the replica changed");
    assert_eq!(after.replayed - before.replayed, data.len() as u64);
    // Wrong key, one flipped byte, and the cut by one byte (long enough to reach the MAC
    // check, which fails); the others are shorter than a header and a MAC.
    assert_eq!(after.auth_failures - before.auth_failures, 3);
    assert_eq!(after.truncated - before.truncated, 4, "{after:?}");
    assert_eq!(after.applied, before.applied);
}

#[test]
fn a_third_node_is_refused_while_the_peer_lives() {
    let mut sim = Sim::new(6, CLEAN, config);
    sim.run(MS * 300, None, &[]);
    let key = Key::new(KEY).unwrap();
    let mut intruder = Session::new(Config::new(wire::node_id("lb-x"), 99_999), key, sim.now);
    intruder.push_local(sim.now, flow(99, 1, 2));
    intruder.handle_timeout(sim.now + MS * 2, &mut Table::default());
    let now = sim.now;
    while let Some(bytes) = intruder.poll_transmit() {
        sim.nodes[1]
            .session
            .handle_datagram(now, Ipv4Addr::new(198, 18, 3, 9), &bytes);
    }
    assert!(sim.nodes[1].session.stats().unknown_node >= 1);
    sim.run(sim.now + MS * 100, None, &[]);
    assert!(sim.nodes[1].table.map.is_empty());
}
