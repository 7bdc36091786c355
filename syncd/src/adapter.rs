//! The bridge between the forwarder's connection table and the session.
//!
//! Out: [`ChangeQueue`] is the table's observer (downstream of the engine's). It runs on
//! the datapath, under a shard lock, so it only copies the entry into a bounded queue (one
//! of several, chosen by flow so that workers seldom share a lock and each flow's changes
//! stay in order) and, for the first change since the sync thread last drained, wakes it
//! through an eventfd. Inserts, state
//! changes and refreshes are streamed as upserts, deliberate removals as deletes; expiry is
//! not streamed (each node expires its entries by the same timeouts). Changes made while
//! the sync thread installs replicas are not streamed back ([`applying`]).
//!
//! In: [`Replicas`] turns the peer's entries into table entries: the service and the real
//! server's counter slot are looked up in this node's own service table, the expiry is the
//! peer's remaining time (at most this node's timeout for the state) on this node's clock.
//! A replica goes in its client's shard; a FULLNAT one is found by its replies (to
//! LIP:lport) only if both nodes' tables choose shards alike: [`SHARD_KEY_LABEL`].

use std::cell::Cell;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use forwarder::conntrack::{
    Change, ConnEntry, ConnObserver, ConnState, DeleteCause, NewConn, ProxySeq,
};
use forwarder::engine::{Engine, ServiceTable};
use forwarder::model::{Mode, Protocol};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::session::{Apply, Source};
use crate::wire::{Entry, Op};

/// The label of the connection table's shard key, derived from the sync key
/// ([`crate::wire::Key::derive`]) so that both nodes of a pair set the same one
/// (`forwarder::conntrack::ConnTable::set_shard_key`).
pub const SHARD_KEY_LABEL: &[u8] = b"director conntrack shard v1";

thread_local! {
    static APPLYING: Cell<bool> = const { Cell::new(false) };
}

/// True on the sync thread while it installs the peer's entries.
pub fn applying() -> bool {
    APPLYING.with(Cell::get)
}

/// Most change queues a [`ChangeQueue`] is split into (one bit each in a `u64`).
const MAX_QUEUES: usize = 64;
/// Queues per CPU: enough that workers seldom meet in one, few enough that a worker's
/// pushes stay in a few cache lines (on 2 CPUs, 64 queues cost more per push than the one
/// mutex did; 8 cost about the same alone and less when two workers push at once).
const QUEUES_PER_CPU: usize = 4;
/// Fewest changes each of them holds: a small queue (tests) stays one queue, so its
/// capacity and its drain order are exactly those asked for.
const MIN_PER_QUEUE: usize = 4096;

/// One of the queues, on its own cache lines so that pushes to different queues do not
/// contend.
#[repr(align(128))]
struct Lane {
    changes: Mutex<Vec<(Op, ConnEntry)>>,
}

/// Changes of the local table waiting for the sync thread.
///
/// Split in [`QUEUES_PER_CPU`] queues per CPU (at most [`MAX_QUEUES`]), each its own
/// mutex, so that datapath workers pushing at once seldom take the same lock (before, one
/// mutex was taken by every worker for every change). A change goes to the queue of its
/// flow, picked by a hash of the client address and port, not to one per thread: every
/// change of a flow is made under its shard lock, but not always by the same thread (the
/// worker that saw the SYN, another worker that saw a reply, the sweep, the control thread
/// removing it), and the peer applies the stream in order, so an insert and a later update
/// or delete of the same flow must not be reordered; in one queue, pushed under the shard
/// lock, they keep their order. Changes of different flows may leave in another order than
/// they were made; nothing depends on that. The capacity is shared out evenly: a full queue
/// drops the change and flags an overflow as before (the peer gets a bulk resync).
pub struct ChangeQueue {
    lanes: Box<[Lane]>,
    /// Changes each queue holds at most.
    per_lane: usize,
    wake: EventFd,
    /// Bit `i`: queue `i` has had changes since the drain last took its bit. Set by the
    /// push that finds the queue empty; the push that sets the first bit writes the
    /// eventfd (the queues were all empty: the sync thread may be asleep). The drain takes
    /// the bits and locks only those queues.
    nonempty: AtomicU64,
    /// Set when a change could not be queued: the peer needs a resync.
    overflowed: AtomicBool,
    pub dropped: AtomicU64,
}

impl ChangeQueue {
    /// A queue for `capacity` changes in all.
    pub fn new(capacity: usize) -> std::io::Result<ChangeQueue> {
        let wake =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let lanes = (capacity / MIN_PER_QUEUE)
            .min(cpus * QUEUES_PER_CPU)
            .clamp(1, MAX_QUEUES);
        let per_lane = capacity.div_ceil(lanes);
        // Reserved up front as before (64 Ki changes in all), so pushes do not allocate.
        let reserve = per_lane.min(65536 / lanes);
        Ok(ChangeQueue {
            lanes: (0..lanes)
                .map(|_| Lane {
                    changes: Mutex::new(Vec::with_capacity(reserve)),
                })
                .collect(),
            per_lane,
            wake,
            nonempty: AtomicU64::new(0),
            overflowed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        })
    }

    /// The eventfd that becomes readable when changes are queued.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Wakes the sync thread without a change (something else for it to send).
    pub fn wake(&self) {
        let _ = self.wake.write(1);
    }

    /// Moves the queued changes into `out` (which it clears first): every queue in turn,
    /// each in the order its changes were made (so each flow's changes in their order).
    pub fn drain(&self, out: &mut Vec<(Op, ConnEntry)>) {
        out.clear();
        // Taken before the queues are read: a push into a queue emptied below sets its bit
        // again (and wakes the thread if it is the first).
        let mut bits = self.nonempty.swap(0, Ordering::SeqCst);
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if let Some(lane) = self.lanes.get(i) {
                let mut q = lane.changes.lock().unwrap_or_else(|e| e.into_inner());
                out.extend(q.drain(..));
            }
        }
    }

    /// Clears the wake-up and tells whether changes were lost since the last call.
    pub fn take_overflow(&self) -> bool {
        // Resets the counter; EAGAIN when nothing was queued.
        let _ = self.wake.read();
        self.overflowed.swap(false, Ordering::Relaxed)
    }

    /// The queue of `e`'s flow: a hash of its client address and port (every change of a
    /// flow carries the same client).
    fn lane_of(&self, e: &ConnEntry) -> usize {
        let c = e.client();
        let h = (u64::from(c.ip().to_bits()) << 16 | u64::from(c.port()))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // Multiply-shift onto 0..lanes.
        let i = (((h >> 32) * self.lanes.len() as u64) >> 32) as usize;
        i.min(self.lanes.len() - 1)
    }

    fn push(&self, op: Op, e: ConnEntry) {
        let i = self.lane_of(&e);
        let was_empty = {
            let mut q = self.lanes[i]
                .changes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.per_lane {
                drop(q);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.overflowed.store(true, Ordering::Relaxed);
                return;
            }
            q.push((op, e));
            q.len() == 1
        };
        if was_empty && self.nonempty.fetch_or(1 << i, Ordering::SeqCst) == 0 {
            // Fails only for a counter near u64::MAX, which wake-ups never reach.
            let _ = self.wake.write(1);
        }
    }

    #[cfg(test)]
    fn lanes(&self) -> usize {
        self.lanes.len()
    }
}

impl ConnObserver for ChangeQueue {
    fn on_change(&self, change: &Change) {
        if applying() {
            return;
        }
        match *change {
            Change::Insert(e) | Change::Update(e) | Change::Refresh(e) => self.push(Op::Upsert, e),
            Change::Delete(e, DeleteCause::Removed) => self.push(Op::Delete, e),
            Change::Delete(_, DeleteCause::Expired | DeleteCause::Reset) => {}
        }
    }
}

/// A table entry on the wire; `now` is the engine clock (seconds).
pub fn to_wire(op: Op, e: &ConnEntry, now: u32) -> Entry {
    let local = e.local().map(|l| (l.ip().octets(), l.port()));
    Entry {
        op: op as u8,
        proto: e.proto() as u8,
        mode: e.mode() as u8,
        state: e.state() as u8,
        flags: e.flags() & ConnEntry::CALLER_FLAGS,
        client: e.client().ip().octets(),
        client_port: e.client().port(),
        vip: e.vip().ip().octets(),
        vip_port: e.vip().port(),
        real: e.real().ip().octets(),
        real_port: e.real().port(),
        local,
        remaining: e.expiry().saturating_sub(now),
        proxy: e.proxy_seq().map(|p| (p.client_isn, p.delta)),
    }
}

fn mode_of(raw: u8) -> Option<Mode> {
    Some(match raw {
        0 => Mode::Nat,
        1 => Mode::Dr,
        2 => Mode::Tun,
        3 => Mode::FullNat,
        _ => return None,
    })
}

/// Counters of the replica side.
#[derive(Debug, Default)]
pub struct ReplicaCounters {
    pub installed: AtomicU64,
    pub deleted: AtomicU64,
    /// Entries for a VIP:port this node has no service for (config differs).
    pub unknown_service: AtomicU64,
    /// Entries whose real server this node's service does not list (kept, uncounted).
    pub unknown_real: AtomicU64,
    /// Entries with a state, protocol or mode this build does not know, and FULLNAT entries
    /// without their local address (which the datapath could not forward).
    pub invalid: AtomicU64,
    /// Shard full.
    pub full: AtomicU64,
    /// Replicas removed after a resync because the peer no longer had them.
    pub swept: AtomicU64,
    /// Replicas made this node's own because the peer run they came from ended.
    pub adopted: AtomicU64,
    /// FULLNAT replicas whose local address (LIP:lport) hashes to another shard than their
    /// client here: installed, but replies will not find them (the nodes' shard keys differ,
    /// or the peer picked the port without the shard rule).
    pub shard_mismatch: AtomicU64,
}

/// Installs the peer's entries in the local table.
pub struct Replicas {
    pub engine: Arc<Engine>,
    pub services: Arc<ArcSwap<ServiceTable>>,
    pub counters: Arc<ReplicaCounters>,
    mark: bool,
}

impl Replicas {
    pub fn new(
        engine: Arc<Engine>,
        services: Arc<ArcSwap<ServiceTable>>,
        counters: Arc<ReplicaCounters>,
    ) -> Replicas {
        Replicas {
            engine,
            services,
            counters,
            mark: false,
        }
    }

    /// Applies one change from the peer; `now` is the engine clock (seconds).
    pub fn apply(&mut self, a: Apply, now: u32) {
        APPLYING.with(|f| f.set(true));
        match a {
            Apply::Entry(e) => self.entry(&e, now),
            Apply::PeerChanged => {
                let n = self.engine.conns.adopt_replicas();
                self.counters.adopted.fetch_add(n as u64, Ordering::Relaxed);
                if n > 0 {
                    tracing::info!("the peer's run ended: {n} replicas are this node's now");
                }
            }
            Apply::ResyncStart => self.mark = !self.mark,
            Apply::ResyncEnd => {
                let n = self.engine.conns.sweep_replicas(self.mark);
                self.counters.swept.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        APPLYING.with(|f| f.set(false));
    }

    fn entry(&mut self, e: &Entry, now: u32) {
        let c = &self.counters;
        let (Some(proto), Some(state), Some(mode), Some(op)) = (
            Protocol::from_ip_proto(e.proto),
            ConnState::from_raw(e.state),
            mode_of(e.mode),
            e.op(),
        ) else {
            c.invalid.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // A FULLNAT connection cannot be forwarded without its local address.
        if mode == Mode::FullNat && op != Op::Delete && e.local().is_none() {
            c.invalid.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let client = e.client();
        let table = &self.engine.conns;
        if op == Op::Delete {
            let key = forwarder::conntrack::FlowKey {
                proto,
                client,
                vip: e.vip(),
            };
            if table.shard_for(client).remove_in(&key).is_some() {
                c.deleted.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let services = self.services.load();
        let Some(svc) = services.find(proto, e.vip()) else {
            c.unknown_service.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let real = e.real();
        let slot = match svc.sched.backends().iter().find(|b| b.addr == real) {
            Some(b) => b.slot,
            None => {
                c.unknown_real.fetch_add(1, Ordering::Relaxed);
                u16::MAX
            }
        };
        let new = NewConn {
            proto,
            mode,
            client,
            vip: e.vip(),
            real,
            local: e.local(),
            // None from a 1.0 peer, which does not carry it (nor does it do PROXY protocol).
            proxy: e
                .proxy
                .map(|(client_isn, delta)| ProxySeq { client_isn, delta }),
            service: svc.id,
            real_slot: slot,
            flags: e.flags & ConnEntry::CALLER_FLAGS,
        };
        let expiry = now.saturating_add(e.remaining.min(table.timeout(state)).max(1));
        if let Some(local) = new.local {
            if table.shard_index(local) != table.shard_index(client) {
                c.shard_mismatch.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut shard = table.shard_for(client);
        let existed = shard.get_in(&new.flow_key(), now).is_some();
        match shard.install(&new, state, expiry, self.mark) {
            Ok(_) => {
                c.installed.fetch_add(1, Ordering::Relaxed);
                drop(shard);
                if !existed && new.flags & ConnEntry::PERSISTENT != 0 && svc.persistence > 0 {
                    self.engine
                        .persist
                        .adopt(svc.id, *client.ip(), real, now, svc.persistence);
                }
            }
            Err(_) => {
                c.full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The local table as a [`Source`] for bulk resyncs.
pub struct TableSource<'a> {
    pub engine: &'a Engine,
    /// Engine clock (seconds).
    pub now: u32,
}

impl Source for TableSource<'_> {
    fn scan(&mut self, cursor: u64, max: usize, out: &mut Vec<Entry>) -> Option<u64> {
        let now = self.now;
        self.engine
            .conns
            .scan(cursor, max, |e| out.push(to_wire(Op::Upsert, e, now)))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use forwarder::conntrack::ConnTable;
    use forwarder::model::Timeouts;
    use forwarder::stats::RealRegistry;

    use super::*;

    fn conn(flow: u16) -> NewConn {
        NewConn {
            proto: Protocol::Tcp,
            mode: Mode::Nat,
            client: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, (flow % 251) as u8), 1024 + flow),
            vip: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 100), 80),
            real: SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 11), 8080),
            local: None,
            proxy: None,
            service: 0,
            real_slot: u16::MAX,
            flags: 0,
        }
    }

    #[test]
    fn a_small_queue_is_one_queue_and_a_large_one_is_split() {
        assert_eq!(ChangeQueue::new(16).unwrap().lanes(), 1);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let two = ChangeQueue::new(MIN_PER_QUEUE * 2).unwrap().lanes();
        assert_eq!(two, 2.min(cpus * QUEUES_PER_CPU));
        let q = ChangeQueue::new(1 << 20).unwrap();
        assert_eq!(q.lanes(), (cpus * QUEUES_PER_CPU).min(MAX_QUEUES));
        assert!(q.per_lane * q.lanes() >= 1 << 20);
        assert!(q.per_lane * (q.lanes() - 1) < 1 << 20);
    }

    /// Two threads take turns with the same flows (insert by one, removal by the other,
    /// under the shard lock as the datapath and the control thread do): whatever queue a
    /// flow's changes went to, the drain gives them in the order they were made.
    #[test]
    fn changes_of_one_flow_made_by_two_threads_keep_their_order() {
        let queue = Arc::new(ChangeQueue::new(1 << 20).unwrap());
        let mut table = ConnTable::new(
            4096,
            16,
            Timeouts::default(),
            Arc::new(RealRegistry::new(4)),
        );
        table.set_observer(queue.clone());
        let table = Arc::new(table);
        const FLOWS: u16 = 200;
        const ROUNDS: usize = 50;
        let turn = |inserter: bool| {
            let table = table.clone();
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    for f in 0..FLOWS {
                        let c = conn(f);
                        loop {
                            let mut g = table.shard_for(c.client);
                            let here = g.get_in(&c.flow_key(), 10);
                            match (inserter, here) {
                                (true, None) => {
                                    g.insert(&c, 10).unwrap();
                                    break;
                                }
                                (false, Some(id)) => {
                                    g.remove(id, DeleteCause::Removed);
                                    break;
                                }
                                _ => {
                                    drop(g);
                                    std::thread::yield_now();
                                }
                            }
                        }
                    }
                }
            })
        };
        let (a, b) = (turn(true), turn(false));
        // Drain while they run, as the sync thread does.
        let mut all = Vec::new();
        let mut out = Vec::new();
        while !(a.is_finished() && b.is_finished()) {
            queue.drain(&mut out);
            all.append(&mut out);
        }
        a.join().unwrap();
        b.join().unwrap();
        queue.drain(&mut out);
        all.append(&mut out);
        assert!(!queue.take_overflow());
        let mut last: std::collections::HashMap<u16, Op> = Default::default();
        for (op, e) in &all {
            let f = e.client().port() - 1024;
            let want = match last.get(&f) {
                None | Some(Op::Delete) => Op::Upsert,
                Some(Op::Upsert) => Op::Delete,
            };
            assert_eq!(*op, want, "flow {f}: out of order");
            last.insert(f, *op);
        }
        assert_eq!(all.len(), usize::from(FLOWS) * ROUNDS * 2);
    }

    #[test]
    fn a_full_queue_of_a_split_one_flags_an_overflow() {
        let q = ChangeQueue::new(MIN_PER_QUEUE * 2).unwrap();
        let table = ConnTable::new(16, 1, Timeouts::default(), Arc::new(RealRegistry::new(4)));
        let e = {
            let mut g = table.shard(0);
            let id = g.insert(&conn(1), 10).unwrap();
            *g.entry(id)
        };
        // One flow, so one queue: it takes half the capacity.
        for _ in 0..MIN_PER_QUEUE + 3 {
            q.push(Op::Upsert, e);
        }
        assert_eq!(q.dropped.load(Ordering::Relaxed), 3);
        assert!(q.take_overflow());
        let mut out = Vec::new();
        q.drain(&mut out);
        assert_eq!(out.len(), MIN_PER_QUEUE);
        assert!(!q.take_overflow(), "reported once");
    }
}
