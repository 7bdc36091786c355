//! The connection table: every flow the director forwards, looked up by every datapath
//! worker on every packet.
//!
//! - `entry`: [`ConnEntry`], its keys ([`FlowKey`], [`ReplyKey`]) and [`ConnState`].
//! - `tcp`: the IPVS-style TCP state table ([`tcp_next_state`]).
//! - `index`: the keyed hash and the open-addressing index of a shard.
//!
//! The table is split in shards, each a mutex around a fixed slab of entries (with a free
//! list) and one index holding every entry twice, under its inbound and its reply key.
//! Everything is allocated by [`ConnTable::new`]; the packet path allocates nothing, takes
//! one shard lock per packet and does not panic.
//!
//! A shard is chosen by hashing an address with [`ConnTable::shard_index`]: the client
//! address for inbound packets and the reply's destination (the [`ReplyKey::peer`]) for
//! replies. For NAT, DR and TUN both are the client, so both directions of a flow meet in
//! one shard. For FULLNAT the peer is the local address: the port allocator must pick local
//! ports with `shard_index(lip:lport) == shard_index(client)`. The shard hash has its own
//! key, which two nodes of a pair set alike ([`ConnTable::set_shard_key`]): a standby
//! installs a replica in the client's shard, and its reply key must be found there too. The
//! index hashes stay keyed with the table's own random secret.
//!
//! Real-server counters ([`RealRegistry`]) follow the entries: an insert bumps `conns` and
//! `inactive`; ESTABLISHED counts in `active`, every other state (UDP too) in `inactive`.
//! Every insert, state change and delete is reported to the [`ConnObserver`], if any.

mod entry;
mod index;
mod tcp;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use entry::{ConnEntry, ConnState, FlowKey, NewConn, ProxySeq, ReplyKey};
pub use tcp::{tcp_flags, tcp_next_state, Direction};

use crate::model::{Protocol, Timeouts};
use crate::stats::{RealCounters, RealRegistry};
use index::{prefetch_home, Hasher, Index, DIR_IN, DIR_REPLY};

/// Largest number of entries per shard: slots and directions must fit the index cells.
pub const MAX_SHARD_CAPACITY: u32 = 1 << 28;

/// Slots visited per shard lock by [`ConnTable::sweep`] and [`ConnTable::snapshot`], so the
/// datapath never waits long behind them.
const BATCH: usize = 64;

/// End of the free list.
const NO_SLOT: u32 = u32::MAX;

/// Why an entry left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteCause {
    /// Its timeout ran out (seen by a lookup or by the sweep).
    Expired,
    /// Removed on purpose by the engine or the control plane.
    Removed,
    /// The whole table was flushed ([`ConnTable::flush`]).
    Reset,
}

/// A change reported to the [`ConnObserver`]; each carries the entry as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Insert(ConnEntry),
    /// A state change (not every packet).
    Update(ConnEntry),
    /// No state change, but the expiry moved on by half the state's timeout since the
    /// entry was last reported: a replica elsewhere needs the new expiry.
    Refresh(ConnEntry),
    Delete(ConnEntry, DeleteCause),
}

/// Listener for table changes (the sync daemon, persistence bookkeeping). Called under the
/// shard lock, on the datapath: it must be cheap and must not call back into the table.
pub trait ConnObserver: Send + Sync {
    fn on_change(&self, change: &Change);
}

/// Several observers, told of each change in turn.
pub struct Observers(pub Vec<std::sync::Arc<dyn ConnObserver>>);

impl ConnObserver for Observers {
    fn on_change(&self, change: &Change) {
        for o in &self.0 {
            o.on_change(change);
        }
    }
}

/// Handle to an entry returned by a lookup or an insert. Valid on the guard that returned
/// it until the entry is removed; using it elsewhere names some other (or no) entry, never
/// undefined behaviour or a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId(u32);

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// connection table shard is full
    #[error("connection table shard is full")]
    Full,
    /// a live connection already has this inbound key
    #[error("a live connection already has this inbound key")]
    Exists(EntryId),
    /// a live connection already uses this reply tuple (same real server and peer)
    #[error("a live connection already uses this reply tuple")]
    ReplyInUse(EntryId),
}

/// The state change caused by one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub old: ConnState,
    pub new: ConnState,
}

impl Transition {
    pub fn changed(&self) -> bool {
        self.old != self.new
    }

    /// A client SYN started a new connection on the tuple of a closing one.
    pub fn reopened(&self) -> bool {
        self.old.reopens_on_syn() && self.new == ConnState::SynRecv
    }
}

/// Table-wide counters, summed over the shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableCounters {
    pub inserts: u64,
    /// Every removal, whatever the cause (expired ones included).
    pub deletes: u64,
    /// Removals because the timeout ran out.
    pub expired: u64,
    /// Inserts refused because the shard was full.
    pub full: u64,
}

struct ShardInner {
    slab: Box<[ConnEntry]>,
    /// Head of the free list; a vacant entry's `expiry` holds the next free slot.
    free: u32,
    index: Index,
    /// Next slot the sweep visits.
    sweep_cursor: usize,
}

// Each shard on its own cache lines: workers on different shards must not contend.
#[repr(align(64))]
struct Shard {
    inner: Mutex<ShardInner>,
    /// The index's cells (address, count), fixed at construction: for
    /// [`ConnTable::prefetch`], which reads nothing through them.
    index_at: (usize, usize),
    len: AtomicU32,
    inserts: AtomicU64,
    deletes: AtomicU64,
    expired: AtomicU64,
    full: AtomicU64,
}

/// The sharded, bounded connection table. `Send + Sync`: share it with an `Arc`.
pub struct ConnTable {
    shards: Box<[Shard]>,
    per_shard: u32,
    /// The index hashes (inbound and reply keys): random per table.
    hasher: Hasher,
    /// The shard choice: random unless set by [`ConnTable::set_shard_key`].
    shard_hasher: Hasher,
    /// Timeout in seconds, indexed by raw state.
    timeouts: [AtomicU32; ConnState::RAW_COUNT],
    reals: Arc<RealRegistry>,
    observer: Option<Arc<dyn ConnObserver>>,
    sweep_shard: AtomicUsize,
}

impl std::fmt::Debug for ConnTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTable")
            .field("shards", &self.shards.len())
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

fn secs(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn decrement(counter: &AtomicU32) {
    // Saturating: the control plane may have reset the counters under us.
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(1))
    });
}

/// A connection of real server `r` went from inactive to active (or back).
fn move_activity(r: &RealCounters, now_active: bool) {
    let (from, to) = if now_active {
        (&r.inactive, &r.active)
    } else {
        (&r.active, &r.inactive)
    };
    decrement(from);
    to.fetch_add(1, Ordering::Relaxed);
}

impl ConnTable {
    /// A table of `capacity` entries split in `shards` shards of equal size (capacity is
    /// rounded up to a multiple of `shards`). Allocates everything it will ever use.
    ///
    /// Panics if `shards` is 0 or a shard would exceed [`MAX_SHARD_CAPACITY`]: the config
    /// validation keeps both in range.
    pub fn new(capacity: u32, shards: usize, timeouts: Timeouts, reals: Arc<RealRegistry>) -> Self {
        let mut table = Self::with_hasher(capacity, shards, timeouts, reals, Hasher::random());
        table.shard_hasher = Hasher::random();
        table
    }

    fn with_hasher(
        capacity: u32,
        shards: usize,
        timeouts: Timeouts,
        reals: Arc<RealRegistry>,
        hasher: Hasher,
    ) -> Self {
        assert!(shards > 0, "a connection table needs at least one shard");
        let shards_u32 = u32::try_from(shards).expect("shard count fits in u32");
        let per_shard = capacity.div_ceil(shards_u32).max(1);
        assert!(
            per_shard <= MAX_SHARD_CAPACITY,
            "connection table shard of {per_shard} entries exceeds {MAX_SHARD_CAPACITY}"
        );
        let shards = (0..shards)
            .map(|_| {
                let mut slab = vec![ConnEntry::VACANT; per_shard as usize].into_boxed_slice();
                for (i, e) in slab.iter_mut().enumerate() {
                    let next = i as u32 + 1;
                    e.expiry = if next == per_shard { NO_SLOT } else { next };
                }
                let index = Index::for_entries(per_shard as usize);
                Shard {
                    index_at: index.cells_at(),
                    inner: Mutex::new(ShardInner {
                        slab,
                        free: 0,
                        index,
                        sweep_cursor: 0,
                    }),
                    len: AtomicU32::new(0),
                    inserts: AtomicU64::new(0),
                    deletes: AtomicU64::new(0),
                    expired: AtomicU64::new(0),
                    full: AtomicU64::new(0),
                }
            })
            .collect();
        let table = ConnTable {
            shards,
            per_shard,
            hasher,
            shard_hasher: hasher,
            timeouts: Default::default(),
            reals,
            observer: None,
            sweep_shard: AtomicUsize::new(0),
        };
        table.set_timeouts(timeouts);
        table
    }

    /// Keys the shard choice with `key` instead of a random secret, before the first insert
    /// (an entry stays in the shard it was inserted in). Nodes that replicate each other's
    /// entries must set the same key, from a secret they share (directord derives it from
    /// the sync key): with the same key and shard count, [`ConnTable::shard_index`] is the
    /// same function on both, so a FULLNAT replica's reply key (LIP:lport) is in the shard
    /// of its client on the standby as it was on the active node.
    pub fn set_shard_key(&mut self, key: [u8; 32]) {
        debug_assert!(
            self.is_empty(),
            "the shard key is set before the first insert"
        );
        let seeds = std::array::from_fn(|i| {
            u64::from_le_bytes(key[i * 8..i * 8 + 8].try_into().expect("8 of 32 bytes"))
        });
        self.shard_hasher = Hasher::from_seeds(seeds);
    }

    /// Registers the listener for changes (replaces any previous one).
    pub fn set_observer(&mut self, observer: Arc<dyn ConnObserver>) {
        self.observer = Some(observer);
    }

    /// Applies new timeouts; each entry picks its new timeout at its next packet.
    pub fn set_timeouts(&self, t: Timeouts) {
        let by_state = [
            (ConnState::SynRecv, t.syn_recv),
            (ConnState::Established, t.tcp),
            (ConnState::FinWait, t.tcp_fin),
            (ConnState::CloseWait, t.close_wait),
            (ConnState::TimeWait, t.tcp_fin),
            (ConnState::Close, t.close),
            (ConnState::Udp, t.udp),
        ];
        for (state, d) in by_state {
            self.timeouts[state as usize].store(secs(d), Ordering::Relaxed);
        }
    }

    /// The timeout, in seconds, of an entry in `state`.
    pub fn timeout(&self, state: ConnState) -> u32 {
        self.timeouts[state as usize].load(Ordering::Relaxed)
    }

    /// The shard of a packet: hash the client for inbound packets, the reply's destination
    /// ([`ReplyKey::peer`]) for replies. Keyed with the shard key
    /// ([`ConnTable::set_shard_key`]).
    pub fn shard_index(&self, addr: std::net::SocketAddrV4) -> usize {
        let h = u64::from(self.shard_hasher.shard(addr));
        ((h * self.shards.len() as u64) >> 32) as usize
    }

    /// Names the shard function: tables with the same shard count and the same
    /// `shard_fn_id` have the same [`ConnTable::shard_index`], so what was computed from
    /// one (the FULLNAT allocator's ports by shard) holds for the other.
    pub fn shard_fn_id(&self) -> u64 {
        self.shard_hasher.digest()
    }

    /// Starts loading the index cell where a lookup of `key` will begin (the first cache
    /// miss of a new flow), without taking the shard lock: the datapath calls it for every
    /// frame of a block before the engine runs, so the misses overlap instead of stalling
    /// one after the other. A hint only.
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) {
        if let Some(s) = self.shards.get(self.shard_index(key.client)) {
            prefetch_home(s.index_at.0, s.index_at.1, self.hasher.flow(key));
        }
    }

    /// Locks the shard of `addr` (see [`ConnTable::shard_index`]).
    pub fn shard_for(&self, addr: std::net::SocketAddrV4) -> ShardGuard<'_> {
        self.lock(self.shard_index(addr))
    }

    /// Locks shard `index` (modulo the shard count).
    pub fn shard(&self, index: usize) -> ShardGuard<'_> {
        self.lock(index % self.shards.len())
    }

    fn lock(&self, i: usize) -> ShardGuard<'_> {
        let shard = &self.shards[i % self.shards.len()];
        // A panic under the lock cannot leave a shard half-updated in a way that matters
        // more than stopping the datapath would: keep going.
        let inner = shard.inner.lock().unwrap_or_else(PoisonError::into_inner);
        ShardGuard {
            table: self,
            shard,
            inner,
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.len.load(Ordering::Relaxed) as usize)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total entries the table can hold (the requested capacity rounded up to a multiple
    /// of the shard count). Each shard holds `capacity / shard_count`.
    pub fn capacity(&self) -> usize {
        self.per_shard as usize * self.shards.len()
    }

    /// Memory allocated by the table divided by its capacity.
    pub fn bytes_per_entry(&self) -> usize {
        let shards: usize = self
            .shards
            .iter()
            .map(|s| {
                let inner = s.inner.lock().unwrap_or_else(PoisonError::into_inner);
                std::mem::size_of::<Shard>()
                    + std::mem::size_of_val(&*inner.slab)
                    + inner.index.bytes()
            })
            .sum();
        (std::mem::size_of::<ConnTable>() + shards).div_ceil(self.capacity())
    }

    pub fn counters(&self) -> TableCounters {
        let mut c = TableCounters::default();
        for s in self.shards.iter() {
            c.inserts += s.inserts.load(Ordering::Relaxed);
            c.deletes += s.deletes.load(Ordering::Relaxed);
            c.expired += s.expired.load(Ordering::Relaxed);
            c.full += s.full.load(Ordering::Relaxed);
        }
        c
    }

    /// Visits up to `max_slots` slab slots, round-robin over the shards and resuming where
    /// the last call stopped, and removes the entries expired at `now`. Returns how many
    /// it removed. One call visits each slot at most once.
    pub fn sweep(&self, now: u32, max_slots: usize) -> usize {
        self.sweep_with(now, max_slots, &mut |_| None)
    }

    /// [`ConnTable::sweep`] for a table some of whose flows the XDP fast path forwards
    /// without the engine seeing their packets: an entry marked [`ConnEntry::FAST`] in the
    /// last half of its lifetime is first asked about, and `last_seen` returns when the
    /// fast path last forwarded one of its packets (engine seconds), if it knows. A packet
    /// seen there counts as a packet seen here: the expiry moves on (and a replica on the
    /// peer is refreshed through the observer, [`Change::Refresh`], as a packet would), so a
    /// flow that only the fast path forwards lives as long as its packets keep coming.
    pub fn sweep_with(
        &self,
        now: u32,
        max_slots: usize,
        last_seen: &mut dyn FnMut(&ConnEntry) -> Option<u32>,
    ) -> usize {
        let mut budget = max_slots.min(self.capacity());
        let mut removed = 0;
        while budget > 0 {
            let i = self.sweep_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
            let mut guard = self.lock(i);
            let steps = budget.min(BATCH).min(self.per_shard as usize);
            for _ in 0..steps {
                let slot = guard.inner.sweep_cursor;
                guard.inner.sweep_cursor = (slot + 1) % self.per_shard as usize;
                let ask = guard.inner.slab.get(slot).and_then(|e| {
                    let half = self.timeout(e.state()) / 2;
                    (e.is_live() && e.is_fast() && now.saturating_add(half) >= e.expiry)
                        .then(|| last_seen(e))
                        .flatten()
                });
                if let Some(seen) = ask {
                    guard.touch_slot(slot, seen, false);
                }
                let expired = guard
                    .inner
                    .slab
                    .get(slot)
                    .is_some_and(|e| e.is_live() && e.expiry <= now);
                if expired {
                    guard.delete(slot as u32, DeleteCause::Expired);
                    removed += 1;
                }
            }
            budget -= steps;
        }
        removed
    }

    /// Calls `f` for every live entry (expired ones not yet swept included). Locks one
    /// shard at a time for a few dozen entries and calls `f` outside the lock; entries
    /// inserted or removed meanwhile may or may not be seen.
    pub fn snapshot(&self, mut f: impl FnMut(&ConnEntry)) {
        let mut batch = [ConnEntry::VACANT; BATCH];
        for i in 0..self.shards.len() {
            let mut slot = 0;
            while slot < self.per_shard as usize {
                let mut n = 0;
                {
                    let guard = self.lock(i);
                    while slot < guard.inner.slab.len() && n < BATCH {
                        let e = guard.inner.slab[slot];
                        if e.is_live() {
                            batch[n] = e;
                            n += 1;
                        }
                        slot += 1;
                    }
                }
                batch[..n].iter().for_each(&mut f);
            }
        }
    }

    /// Calls `f` for up to `max` live entries from `cursor` on (0 = the start) and returns
    /// where to go on, or `None` when the whole table has been visited. Locks one shard at
    /// a time for at most a few dozen slots; as [`ConnTable::snapshot`], entries inserted
    /// or removed meanwhile may or may not be seen. Lets a bulk resync walk the table in
    /// paced steps.
    pub fn scan(&self, cursor: u64, max: usize, mut f: impl FnMut(&ConnEntry)) -> Option<u64> {
        let per_shard = self.per_shard as usize;
        let mut shard = (cursor >> 32) as usize;
        let mut slot = (cursor & 0xffff_ffff) as usize;
        let mut seen = 0;
        let mut batch = [ConnEntry::VACANT; BATCH];
        while shard < self.shards.len() {
            if seen >= max {
                return Some(((shard as u64) << 32) | slot as u64);
            }
            let mut n = 0;
            {
                let guard = self.lock(shard);
                while slot < per_shard && n < BATCH.min(max - seen) {
                    let e = guard.inner.slab[slot];
                    if e.is_live() {
                        batch[n] = e;
                        n += 1;
                    }
                    slot += 1;
                }
            }
            seen += n;
            batch[..n].iter().for_each(&mut f);
            if slot >= per_shard {
                shard += 1;
                slot = 0;
            }
        }
        None
    }

    /// After a complete resync from the peer: removes the replicas not installed during it
    /// (their mark differs from `mark`): the peer no longer has them. Entries a packet has
    /// touched here are this node's and stay. Returns how many went.
    pub fn sweep_replicas(&self, mark: bool) -> usize {
        let mut removed = 0;
        for i in 0..self.shards.len() {
            let mut slot = 0;
            while slot < self.per_shard {
                let mut guard = self.lock(i);
                let end = (slot + BATCH as u32).min(self.per_shard);
                while slot < end {
                    let e = guard.inner.slab[slot as usize];
                    let stale = e.is_live()
                        && e.is_replica()
                        && (e.flags & ConnEntry::SYNC_MARK != 0) != mark;
                    if stale {
                        guard.delete(slot, DeleteCause::Removed);
                        removed += 1;
                    }
                    slot += 1;
                }
            }
        }
        removed
    }

    /// Makes every replica this node's own entry (clears [`ConnEntry::REPLICA`] and the
    /// resync mark), for when the peer run they came from has ended: a peer that restarts
    /// knows nothing of them, so this node is the only one that does, and the next sweep
    /// (after the new run's resync) must not take them. Not reported to the observer: the
    /// sync session sends the whole table to the new run anyway. Returns how many.
    pub fn adopt_replicas(&self) -> usize {
        let mut adopted = 0;
        for i in 0..self.shards.len() {
            let mut slot = 0;
            while slot < self.per_shard {
                let mut guard = self.lock(i);
                let end = (slot + BATCH as u32).min(self.per_shard);
                while slot < end {
                    let e = &mut guard.inner.slab[slot as usize];
                    if e.is_live() && e.is_replica() {
                        e.flags &= !(ConnEntry::REPLICA | ConnEntry::SYNC_MARK);
                        adopted += 1;
                    }
                    slot += 1;
                }
            }
        }
        adopted
    }

    /// Replicas in the table (entries of the peer's not touched by a packet here).
    pub fn replicas(&self) -> usize {
        let mut n = 0;
        self.snapshot(|e| n += usize::from(e.is_replica()));
        n
    }

    /// Removes every entry (reported as [`DeleteCause::Reset`]). Returns how many.
    pub fn flush(&self) -> usize {
        let mut removed = 0;
        for i in 0..self.shards.len() {
            let mut guard = self.lock(i);
            for slot in 0..self.per_shard {
                if guard.inner.slab[slot as usize].is_live() {
                    guard.delete(slot, DeleteCause::Reset);
                    removed += 1;
                }
            }
        }
        removed
    }

    fn real(&self, entry: &ConnEntry) -> Option<&RealCounters> {
        let slot = usize::from(entry.real_slot);
        (slot < self.reals.len()).then(|| self.reals.get(entry.real_slot))
    }

    fn notify(&self, change: Change) {
        if let Some(o) = &self.observer {
            o.on_change(&change);
        }
    }
}

/// One locked shard. Hold it for one packet (or one batch of work), not longer.
pub struct ShardGuard<'a> {
    table: &'a ConnTable,
    shard: &'a Shard,
    inner: MutexGuard<'a, ShardInner>,
}

impl ShardGuard<'_> {
    /// The live, unexpired entry with this inbound key. An expired one is removed
    /// ([`DeleteCause::Expired`]) and `None` returned.
    pub fn get_in(&mut self, key: &FlowKey, now: u32) -> Option<EntryId> {
        let slot = self.find_in(key)?;
        self.unless_expired(slot, now)
    }

    /// The live, unexpired entry with this reply key; as [`ShardGuard::get_in`].
    pub fn get_reply(&mut self, key: &ReplyKey, now: u32) -> Option<EntryId> {
        let slot = self.find_reply(key)?;
        self.unless_expired(slot, now)
    }

    /// The entry `id` names. A stale id yields a vacant entry rather than a panic.
    pub fn entry(&self, id: EntryId) -> &ConnEntry {
        debug_assert!(self.is_live(id), "stale EntryId {id:?}");
        self.inner
            .slab
            .get(id.0 as usize)
            .unwrap_or(&ConnEntry::VACANT)
    }

    /// Refuses `new` when a live entry holds its inbound or its reply key (an expired one is
    /// removed on the way).
    fn keys_free(&mut self, new: &NewConn, now: u32) -> Result<(), InsertError> {
        if let Some(slot) = self.find_in(&new.flow_key()) {
            if let Some(id) = self.unless_expired(slot, now) {
                return Err(InsertError::Exists(id));
            }
        }
        if let Some(slot) = self.find_reply(&new.reply_key()) {
            if let Some(id) = self.unless_expired(slot, now) {
                return Err(InsertError::ReplyInUse(id));
            }
        }
        Ok(())
    }

    /// Adds a connection: SynRecv for TCP (whatever the first segment; the engine decides
    /// whether a non-SYN may create one), Udp for UDP. Counts no packet: call
    /// [`ShardGuard::update`] for the packet that created it, as for every other packet.
    pub fn insert(&mut self, new: &NewConn, now: u32) -> Result<EntryId, InsertError> {
        self.keys_free(new, now)?;
        let state = match new.proto {
            Protocol::Tcp => ConnState::SynRecv,
            Protocol::Udp => ConnState::Udp,
        };
        let expiry = now.saturating_add(self.table.timeout(state));
        self.link(ConnEntry::from_new(new, state, expiry))
    }

    /// Adds an established connection from one of its mid-flow segments (`len` bytes,
    /// inbound): a flow this node never saw open, whose real server a hash scheduler shared
    /// with the peer names (see `engine/inbound.rs`). The entry lives only the SYN_RECV
    /// timeout until a second packet confirms it (each packet then gives it the established
    /// timeout), so a stray or forged ACK costs what a SYN does. Reported as an insert.
    pub fn pick_up(&mut self, new: &NewConn, len: usize, now: u32) -> Result<EntryId, InsertError> {
        self.keys_free(new, now)?;
        let expiry = now.saturating_add(self.table.timeout(ConnState::SynRecv));
        let mut entry = ConnEntry::from_new(new, ConnState::Established, expiry);
        entry.packets_in = 1;
        entry.reported = expiry;
        let id = self.link(entry)?;
        if let Some(r) = self.table.real(&entry) {
            r.packets_in.fetch_add(1, Ordering::Relaxed);
            r.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        }
        Ok(id)
    }

    /// Installs a copy of a connection the peer reported (connection sync), marked
    /// [`ConnEntry::REPLICA`] until a packet of it is seen here. The peer is the authority
    /// on its flows: an entry with the same inbound key is brought to `state` and `expiry`
    /// in place when it goes to the same real server, and replaced when it does not; an
    /// entry holding the same reply tuple is removed. Reported to the observer as an insert
    /// or, in place, as an update. `mark` is the current resync's (see
    /// [`ConnTable::sweep_replicas`]).
    pub fn install(
        &mut self,
        new: &NewConn,
        state: ConnState,
        expiry: u32,
        mark: bool,
    ) -> Result<EntryId, InsertError> {
        let mut entry = ConnEntry::from_new(new, state, expiry);
        entry.flags |= ConnEntry::REPLICA;
        if mark {
            entry.flags |= ConnEntry::SYNC_MARK;
        }
        if let Some(slot) = self.find_in(&new.flow_key()) {
            let current = self.inner.slab[slot as usize];
            if current.reply_key() != entry.reply_key() {
                self.delete(slot, DeleteCause::Removed);
            } else {
                let e = &mut self.inner.slab[slot as usize];
                let old = e.state();
                e.state = state as u8;
                e.expiry = expiry;
                e.reported = expiry;
                // FAST is the fast-path manager's mark (the flow's rows are in the XDP
                // map), not the peer's to clear: an update that dropped it made the
                // observer see a closing flow that was never in the map, so its rows
                // stayed there, and a client reusing the port had its packets sent after
                // the old flow (see fastpath.rs, FastQueue).
                e.flags = entry.flags | (e.flags & ConnEntry::FAST);
                let updated = *e;
                if old.is_active() != state.is_active() {
                    if let Some(r) = self.table.real(&updated) {
                        move_activity(r, state.is_active());
                    }
                }
                self.table.notify(Change::Update(updated));
                return Ok(EntryId(slot));
            }
        }
        if let Some(slot) = self.find_reply(&entry.reply_key()) {
            self.delete(slot, DeleteCause::Removed);
        }
        self.link(entry)
    }

    /// Puts a new entry (whose keys are known to be free) in a vacant slot and the index.
    fn link(&mut self, entry: ConnEntry) -> Result<EntryId, InsertError> {
        let slot = self.inner.free;
        let Some(vacant) = self.inner.slab.get(slot as usize) else {
            self.shard.full.fetch_add(1, Ordering::Relaxed);
            return Err(InsertError::Full);
        };
        self.inner.free = vacant.expiry;
        self.inner.slab[slot as usize] = entry;
        let (fh, rh) = (
            self.table.hasher.flow(&entry.flow_key()),
            self.table.hasher.reply(&entry.reply_key()),
        );
        self.inner.index.insert(fh, slot, DIR_IN);
        self.inner.index.insert(rh, slot, DIR_REPLY);
        self.shard.len.fetch_add(1, Ordering::Relaxed);
        self.shard.inserts.fetch_add(1, Ordering::Relaxed);
        if let Some(real) = self.table.real(&entry) {
            real.conns.fetch_add(1, Ordering::Relaxed);
            if entry.state().is_active() {
                real.active.fetch_add(1, Ordering::Relaxed);
            } else {
                real.inactive.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.table.notify(Change::Insert(entry));
        Ok(EntryId(slot))
    }

    /// Accounts one packet of `len` bytes going `dir`: TCP state transition by
    /// `tcp_flags` (ignored for UDP), expiry refresh to `now` + the new state's timeout,
    /// entry and real-server counters. A state change is reported to the observer.
    /// DR and TUN flows only ever see [`Direction::In`] (IPVS's INPUT_ONLY).
    pub fn update(
        &mut self,
        id: EntryId,
        dir: Direction,
        tcp_flags: u8,
        len: usize,
        now: u32,
    ) -> Transition {
        let table = self.table;
        let Some(e) = self
            .inner
            .slab
            .get_mut(id.0 as usize)
            .filter(|e| e.is_live())
        else {
            debug_assert!(false, "stale EntryId {id:?}");
            let closed = ConnState::Close;
            return Transition {
                old: closed,
                new: closed,
            };
        };
        let old = e.state();
        let new = tcp_next_state(old, dir, tcp_flags);
        let t = Transition { old, new };
        if t.reopened() {
            e.packets_in = 0;
            e.packets_out = 0;
        }
        let real = table.real(e);
        let len = len as u64;
        match dir {
            Direction::In => {
                e.packets_in = e.packets_in.saturating_add(1);
                if let Some(r) = real {
                    r.packets_in.fetch_add(1, Ordering::Relaxed);
                    r.bytes_in.fetch_add(len, Ordering::Relaxed);
                }
            }
            Direction::Out => {
                e.packets_out = e.packets_out.saturating_add(1);
                if let Some(r) = real {
                    r.packets_out.fetch_add(1, Ordering::Relaxed);
                    r.bytes_out.fetch_add(len, Ordering::Relaxed);
                }
            }
        }
        e.expiry = now.saturating_add(table.timeout(new));
        // The first packet of a replica here: this node now carries the flow.
        let adopted = e.flags & ConnEntry::REPLICA != 0;
        e.flags &= !ConnEntry::REPLICA;
        if t.changed() {
            e.state = new as u8;
            if let Some(r) = real {
                if t.reopened() {
                    r.conns.fetch_add(1, Ordering::Relaxed);
                }
                if old.is_active() != new.is_active() {
                    move_activity(r, new.is_active());
                }
            }
            e.reported = e.expiry;
            table.notify(Change::Update(*e));
        } else if adopted {
            e.reported = e.expiry;
            table.notify(Change::Update(*e));
        } else if e.expiry.saturating_sub(e.reported) >= (table.timeout(new) / 2).max(1) {
            e.reported = e.expiry;
            table.notify(Change::Refresh(*e));
        }
        t
    }

    /// The XDP fast path forwarded a packet of entry `id` at `seen` (engine seconds): as a
    /// packet would, that moves the expiry on to `seen` + the state's timeout (never back)
    /// and, with `adopt`, makes a replica this node's flow. Reported to the observer as a
    /// packet's update would be: an adopted replica as an update, an expiry moved on by half
    /// the timeout since the last report as a refresh.
    pub fn touch(&mut self, id: EntryId, seen: u32, adopt: bool) {
        if self.is_live(id) {
            self.touch_slot(id.0 as usize, seen, adopt);
        }
    }

    /// Sets or clears [`ConnEntry::FAST`] on the entry with this inbound key (not a change
    /// the observer hears of: it says where packets go, not what the flow is). False when
    /// there is no such entry.
    pub fn set_fast(&mut self, key: &FlowKey, on: bool) -> bool {
        let Some(slot) = self.find_in(key) else {
            return false;
        };
        let e = &mut self.inner.slab[slot as usize];
        if on {
            e.flags |= ConnEntry::FAST;
        } else {
            e.flags &= !ConnEntry::FAST;
        }
        true
    }

    fn touch_slot(&mut self, slot: usize, seen: u32, adopt: bool) {
        let table = self.table;
        let Some(e) = self.inner.slab.get_mut(slot).filter(|e| e.is_live()) else {
            return;
        };
        let timeout = table.timeout(e.state());
        let expiry = seen.saturating_add(timeout);
        if expiry > e.expiry {
            e.expiry = expiry;
        }
        if adopt && e.flags & ConnEntry::REPLICA != 0 {
            e.flags &= !ConnEntry::REPLICA;
            e.reported = e.expiry;
            table.notify(Change::Update(*e));
        } else if e.expiry.saturating_sub(e.reported) >= (timeout / 2).max(1) {
            e.reported = e.expiry;
            table.notify(Change::Refresh(*e));
        }
    }

    /// Removes the entry `id` names; `None` if it is already gone.
    pub fn remove(&mut self, id: EntryId, cause: DeleteCause) -> Option<ConnEntry> {
        self.is_live(id).then(|| self.delete(id.0, cause))
    }

    /// Removes the entry with this inbound key ([`DeleteCause::Removed`]), expired or not.
    pub fn remove_in(&mut self, key: &FlowKey) -> Option<ConnEntry> {
        let slot = self.find_in(key)?;
        Some(self.delete(slot, DeleteCause::Removed))
    }

    /// Live entries in this shard.
    pub fn len(&self) -> usize {
        self.shard.len.load(Ordering::Relaxed) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_live(&self, id: EntryId) -> bool {
        self.inner
            .slab
            .get(id.0 as usize)
            .is_some_and(ConnEntry::is_live)
    }

    fn find_in(&self, key: &FlowKey) -> Option<u32> {
        let h = self.table.hasher.flow(key);
        let inner = &*self.inner;
        inner
            .index
            .find(h, DIR_IN, |s| {
                inner
                    .slab
                    .get(s as usize)
                    .is_some_and(|e| e.matches_in(key))
            })
            .map(|(slot, _)| slot)
    }

    fn find_reply(&self, key: &ReplyKey) -> Option<u32> {
        let h = self.table.hasher.reply(key);
        let inner = &*self.inner;
        inner
            .index
            .find(h, DIR_REPLY, |s| {
                inner
                    .slab
                    .get(s as usize)
                    .is_some_and(|e| e.matches_reply(key))
            })
            .map(|(slot, _)| slot)
    }

    fn unless_expired(&mut self, slot: u32, now: u32) -> Option<EntryId> {
        let expiry = self.inner.slab.get(slot as usize)?.expiry;
        if expiry <= now {
            self.delete(slot, DeleteCause::Expired);
            None
        } else {
            Some(EntryId(slot))
        }
    }

    /// Unlinks a live slot from the index and the counters and frees it.
    fn delete(&mut self, slot: u32, cause: DeleteCause) -> ConnEntry {
        let table = self.table;
        let inner = &mut *self.inner;
        let Some(e) = inner.slab.get_mut(slot as usize).filter(|e| e.is_live()) else {
            return ConnEntry::VACANT;
        };
        let entry = *e;
        *e = ConnEntry::VACANT;
        e.expiry = inner.free;
        inner.free = slot;
        for (h, dir) in [
            (table.hasher.flow(&entry.flow_key()), DIR_IN),
            (table.hasher.reply(&entry.reply_key()), DIR_REPLY),
        ] {
            if let Some(pos) = inner.index.position_of(h, slot, dir) {
                inner.index.remove_at(pos);
            }
        }
        self.shard.len.fetch_sub(1, Ordering::Relaxed);
        self.shard.deletes.fetch_add(1, Ordering::Relaxed);
        if cause == DeleteCause::Expired {
            self.shard.expired.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(r) = table.real(&entry) {
            decrement(if entry.state().is_active() {
                &r.active
            } else {
                &r.inactive
            });
        }
        table.notify(Change::Delete(entry, cause));
        entry
    }
}

#[cfg(test)]
mod shard_key_tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    fn table() -> ConnTable {
        ConnTable::new(
            1024,
            256,
            Timeouts::default(),
            Arc::new(RealRegistry::new(1)),
        )
    }

    fn addrs() -> impl Iterator<Item = SocketAddrV4> {
        (0..2000u16).map(|i| SocketAddrV4::new(Ipv4Addr::new(198, 18, (i % 7) as u8, 10), i))
    }

    /// How many of `addrs()` the two tables put in the same shard.
    fn agree(a: &ConnTable, b: &ConnTable) -> usize {
        addrs()
            .filter(|x| a.shard_index(*x) == b.shard_index(*x))
            .count()
    }

    #[test]
    fn tables_with_the_same_shard_key_choose_the_same_shards() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8 * 7 + 1);
        let (mut a, mut b) = (table(), table());
        a.set_shard_key(key);
        b.set_shard_key(key);
        assert_eq!(agree(&a, &b), addrs().count());
        // The index hashes stay each table's own.
        let k = FlowKey {
            proto: Protocol::Tcp,
            client: "198.18.1.10:40000".parse().expect("addr"),
            vip: "198.18.1.100:80".parse().expect("addr"),
        };
        assert_ne!(a.hasher.flow(&k), b.hasher.flow(&k));
    }

    #[test]
    fn tables_with_other_shard_keys_mostly_disagree() {
        // 256 shards: two independent keys agree on about 1 address in 256.
        let (a, b) = (table(), table());
        assert!(agree(&a, &b) < addrs().count() / 8, "random keys");
        let mut c = table();
        c.set_shard_key([1; 32]);
        let mut d = table();
        d.set_shard_key([2; 32]);
        assert!(agree(&c, &d) < addrs().count() / 8, "two set keys");
        assert!(agree(&a, &c) < addrs().count() / 8, "random and set");
    }
}
