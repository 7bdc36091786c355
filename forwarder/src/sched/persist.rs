//! Client-IP persistence (ipvsadm `-p TIMEOUT`): a template per (service, client address)
//! names the real server every new flow of that client goes to while the template lives.
//!
//! Semantics, following IPVS:
//! - A new connection takes a reference on its template and sets its expiry to
//!   `now + timeout`; a connection that ends drops its reference and pushes the expiry to at
//!   least `now + timeout`. A template never expires while it has references (IPVS keeps a
//!   template while it controls connections); [`PersistTable::sweep`] drops the others once
//!   their expiry has passed.
//! - Quiesce wins, as with IPVS's `expire_quiescent_template = 1`: a template whose server
//!   has weight 0 or is gone from the service is not used for new flows. The client is
//!   scheduled afresh and the template is rewritten to the new server. We chose this because
//!   the point of quiescing (a failed health check, a drain) is that the server gets no new
//!   flows; affinity to a draining server would keep it busy for as long as the client stays.
//! - `refs` counts the client's live connections under the service, whatever server they
//!   went to: connections made before a template was rewritten still release it. They only
//!   keep the new template alive longer, which is harmless.
//! - Full: a client whose shard is full is scheduled normally, without a template, and the
//!   `full` counter is bumped. Capacity is split evenly over the shards, so the table can
//!   refuse a client before the total reaches `capacity` when the load is uneven.
//!
//! Layout: shards behind a `Mutex` each, each a fixed open-addressing table (linear probing,
//! backward-shift deletion, load ≤ 1/2) allocated at construction, so `assign` and
//! `release` never allocate. Slots are chosen with a hash keyed by a random seed per table
//! (unlike sh and mh, placement need not agree between directors), so clients cannot aim at
//! one probe chain. Times are seconds of a monotonic clock, passed in by the caller.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::hash::{reduce, Hasher};
use super::Scheduler;
use crate::stats::RealRegistry;

/// Snapshot of a [`PersistTable`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistCounters {
    /// New flows sent to their template's server.
    pub hits: u64,
    /// Templates created.
    pub inserted: u64,
    /// Templates found expired, or naming a quiesced or removed server, and rescheduled.
    pub rescheduled: u64,
    /// New flows scheduled without a template because the shard was full.
    pub full: u64,
    /// Templates dropped by `sweep`.
    pub expired: u64,
}

#[derive(Debug, Clone, Copy)]
struct Template {
    service: u16,
    client: Ipv4Addr,
    backend: SocketAddrV4,
    expiry: u32,
    refs: u32,
}

#[derive(Debug)]
struct Shard {
    slots: Box<[Option<Template>]>,
    len: usize,
    cap: usize,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    inserted: AtomicU64,
    rescheduled: AtomicU64,
    full: AtomicU64,
    expired: AtomicU64,
}

/// Bounded, sharded table of persistence templates.
#[derive(Debug)]
pub struct PersistTable {
    shards: Box<[Mutex<Shard>]>,
    /// Slots per shard, a power of two.
    mask: usize,
    hasher: Hasher,
    counters: Counters,
    /// Where the next `sweep` starts, as a slot index over all shards.
    sweep_at: AtomicUsize,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn key(service: u16, client: Ipv4Addr) -> u64 {
    u64::from(service) << 32 | u64::from(u32::from(client))
}

impl PersistTable {
    /// A table for at most `capacity` templates over `shards` shards (at least one).
    pub fn new(capacity: usize, shards: usize) -> Self {
        let shards = shards.max(1);
        let per_shard = capacity.div_ceil(shards);
        let slots = (per_shard * 2).max(1).next_power_of_two();
        let shard_vec = (0..shards)
            .map(|i| {
                Mutex::new(Shard {
                    slots: vec![None; slots].into_boxed_slice(),
                    len: 0,
                    cap: capacity / shards + usize::from(i < capacity % shards),
                })
            })
            .collect();
        PersistTable {
            shards: shard_vec,
            mask: slots - 1,
            hasher: Hasher::new(RandomState::new().hash_one(0x5045_5253u32)),
            counters: Counters::default(),
            sweep_at: AtomicUsize::new(0),
        }
    }

    /// The real server (index into `sched.backends()`) for a new connection of `client` to
    /// `service`: the template's if it is live and its server still has weight > 0, else a
    /// fresh `sched.pick`, stored as the template. Takes a reference for the new connection
    /// and sets the expiry to `now + timeout`. `None` when the template cannot be used and
    /// the scheduler has no live server.
    pub fn assign(
        &self,
        service: u16,
        client: Ipv4Addr,
        now: u32,
        timeout: u32,
        sched: &Scheduler,
        reals: &RealRegistry,
    ) -> Option<usize> {
        let h = self.hasher.hash(key(service, client));
        let mut shard = self.shard(h);
        let expiry = now.saturating_add(timeout);
        let client_addr = SocketAddrV4::new(client, 0);
        match self.find(&shard, h, service, client) {
            Ok(at) => {
                let t = shard.slots[at].as_mut().expect("find returned a full slot");
                if t.refs > 0 || now < t.expiry {
                    let current = sched
                        .find(t.backend)
                        .filter(|&i| sched.backends()[i].weight > 0);
                    if let Some(i) = current {
                        t.refs = t.refs.saturating_add(1);
                        t.expiry = expiry;
                        bump(&self.counters.hits);
                        return Some(i);
                    }
                }
                let i = sched.pick(client_addr, reals)?;
                t.backend = sched.backends()[i].addr;
                t.refs = t.refs.saturating_add(1);
                t.expiry = expiry;
                bump(&self.counters.rescheduled);
                Some(i)
            }
            Err(empty) => {
                let i = sched.pick(client_addr, reals)?;
                if shard.len >= shard.cap {
                    bump(&self.counters.full);
                    return Some(i);
                }
                shard.slots[empty] = Some(Template {
                    service,
                    client,
                    backend: sched.backends()[i].addr,
                    expiry,
                    refs: 1,
                });
                shard.len += 1;
                bump(&self.counters.inserted);
                Some(i)
            }
        }
    }

    /// A replica of the peer's persistent connection (connection sync) was installed: the
    /// template of `client` on `service` points at `backend` and takes a reference, as
    /// `assign` would have done on the peer. A full table keeps the connection without a
    /// template (counted as `full`).
    pub fn adopt(
        &self,
        service: u16,
        client: Ipv4Addr,
        backend: SocketAddrV4,
        now: u32,
        timeout: u32,
    ) {
        let h = self.hasher.hash(key(service, client));
        let mut shard = self.shard(h);
        let expiry = now.saturating_add(timeout);
        match self.find(&shard, h, service, client) {
            Ok(at) => {
                let t = shard.slots[at].as_mut().expect("find returned a full slot");
                t.backend = backend;
                t.refs = t.refs.saturating_add(1);
                t.expiry = t.expiry.max(expiry);
            }
            Err(empty) => {
                if shard.len >= shard.cap {
                    bump(&self.counters.full);
                    return;
                }
                shard.slots[empty] = Some(Template {
                    service,
                    client,
                    backend,
                    expiry,
                    refs: 1,
                });
                shard.len += 1;
                bump(&self.counters.inserted);
            }
        }
    }

    /// A connection under the template ended: drops its reference and keeps the template
    /// for at least `timeout` more seconds. Unknown templates (never stored because the
    /// table was full) are ignored.
    pub fn release(&self, service: u16, client: Ipv4Addr, now: u32, timeout: u32) {
        let h = self.hasher.hash(key(service, client));
        let mut shard = self.shard(h);
        if let Ok(at) = self.find(&shard, h, service, client) {
            let t = shard.slots[at].as_mut().expect("find returned a full slot");
            t.refs = t.refs.saturating_sub(1);
            t.expiry = t.expiry.max(now.saturating_add(timeout));
        }
    }

    /// Looks at up to `max` slots, continuing where the previous sweep stopped, and drops
    /// the templates without references whose expiry has passed. Returns how many it
    /// dropped (at most `max`). Locks one shard at a time, so `max` bounds how long a
    /// worker can wait on a sweep.
    pub fn sweep(&self, now: u32, max: usize) -> usize {
        let per_shard = self.mask + 1;
        let total = per_shard * self.shards.len();
        let mut budget = max;
        let mut pos = self.sweep_at.load(Ordering::Relaxed) % total;
        // Slots passed in this call: one round at most.
        let mut passed = 0;
        let mut dropped = 0;
        while budget > 0 && passed < total {
            let (s, start) = (pos / per_shard, pos % per_shard);
            let end = per_shard.min(start + total - passed);
            let mut shard = self.shards[s]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut i = start;
            while budget > 0 && i < end {
                budget -= 1;
                match shard.slots[i] {
                    Some(t) if t.refs == 0 && now >= t.expiry => {
                        // The backward shift may move a later entry into slot i: look at
                        // slot i again (it costs budget, so a sweep stays bounded).
                        self.remove(&mut shard, i);
                        dropped += 1;
                    }
                    _ => i += 1,
                }
            }
            drop(shard);
            passed += i - start;
            pos = (pos + i - start) % total;
        }
        self.sweep_at.store(pos, Ordering::Relaxed);
        self.counters
            .expired
            .fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    /// Number of templates. Locks every shard in turn: for the control plane.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn counters(&self) -> PersistCounters {
        let c = &self.counters;
        PersistCounters {
            hits: c.hits.load(Ordering::Relaxed),
            inserted: c.inserted.load(Ordering::Relaxed),
            rescheduled: c.rescheduled.load(Ordering::Relaxed),
            full: c.full.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
        }
    }

    /// The shard of hash `h`: its high bits (`reduce`); the slot uses the low bits.
    fn shard(&self, h: u64) -> MutexGuard<'_, Shard> {
        // A panic while holding the lock leaves the shard consistent (every write is a
        // whole field), so a poisoned lock is still usable.
        self.shards[reduce(h, self.shards.len())]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn home(&self, t: &Template) -> usize {
        self.hasher.hash(key(t.service, t.client)) as usize & self.mask
    }

    /// `Ok(slot)` of the template, or `Err(slot)` of the empty slot ending its probe chain.
    /// Terminates because a shard is never more than half full.
    fn find(&self, shard: &Shard, h: u64, service: u16, client: Ipv4Addr) -> Result<usize, usize> {
        let mut i = h as usize & self.mask;
        loop {
            match &shard.slots[i] {
                None => return Err(i),
                Some(t) if t.service == service && t.client == client => return Ok(i),
                Some(_) => i = (i + 1) & self.mask,
            }
        }
    }

    /// Empties slot `at` and shifts the rest of its probe chain back, so that lookups need
    /// no tombstones.
    fn remove(&self, shard: &mut Shard, at: usize) {
        shard.slots[at] = None;
        shard.len -= 1;
        let mut hole = at;
        let mut j = at;
        loop {
            j = (j + 1) & self.mask;
            let Some(t) = shard.slots[j] else { return };
            // The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            let home = self.home(&t);
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                shard.slots[hole] = shard.slots[j].take();
                hole = j;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::tests::{backends, XorShift};
    use super::super::{Backend, SchedulerKind};
    use super::*;

    const SVC: u16 = 7;

    fn ip(n: u32) -> Ipv4Addr {
        Ipv4Addr::from(0xcb00_7100 + n)
    }

    impl PersistTable {
        /// Every template as (service, client, expiry, refs), after checking that a lookup
        /// finds each one where it is and that `len` counts them.
        fn dump(&self) -> Vec<(u16, Ipv4Addr, u32, u32)> {
            let mut out = Vec::new();
            for m in self.shards.iter() {
                let shard = m.lock().expect("not poisoned");
                let mut n = 0;
                for (at, t) in shard.slots.iter().enumerate() {
                    let Some(t) = t else { continue };
                    let h = self.hasher.hash(key(t.service, t.client));
                    assert_eq!(self.find(&shard, h, t.service, t.client), Ok(at));
                    out.push((t.service, t.client, t.expiry, t.refs));
                    n += 1;
                }
                assert_eq!(n, shard.len);
                assert!(n <= shard.cap);
            }
            out.sort();
            out
        }
    }

    #[test]
    fn same_client_same_backend() {
        let reals = RealRegistry::new(4);
        // rr would hand the next flow to another server: only the template keeps it.
        let s = Scheduler::new(SchedulerKind::Rr, backends(&[1, 1, 1, 1]));
        let t = PersistTable::new(1024, 4);
        let first = t.assign(SVC, ip(1), 0, 300, &s, &reals);
        for now in 1..20 {
            assert_eq!(t.assign(SVC, ip(1), now, 300, &s, &reals), first);
        }
        // Another client and the same client on another service have templates of their own.
        assert_ne!(t.assign(SVC, ip(2), 20, 300, &s, &reals), first);
        assert_ne!(t.assign(SVC + 1, ip(1), 20, 300, &s, &reals), first);
        assert_eq!(t.len(), 3);
        let c = t.counters();
        assert_eq!((c.hits, c.inserted, c.rescheduled, c.full), (19, 3, 0, 0));
    }

    #[test]
    fn expires_after_timeout_without_references() {
        let reals = RealRegistry::new(2);
        let s = Scheduler::new(SchedulerKind::Rr, backends(&[1, 1]));
        let t = PersistTable::new(16, 1);
        let first = t.assign(SVC, ip(1), 0, 10, &s, &reals);
        t.release(SVC, ip(1), 5, 10); // expiry = max(10, 15)
        assert_eq!(t.sweep(14, usize::MAX), 0);
        assert_eq!(t.dump(), vec![(SVC, ip(1), 15, 0)]);
        assert_eq!(
            t.assign(SVC, ip(1), 14, 10, &s, &reals),
            first,
            "still live at 14"
        );
        t.release(SVC, ip(1), 14, 10); // expiry 24
        assert_eq!(t.sweep(24, usize::MAX), 1);
        assert!(t.is_empty());
        assert_eq!(t.counters().expired, 1);

        // Expired but not yet swept: rescheduled (rr moves on), not reused.
        let a = t.assign(SVC, ip(2), 100, 10, &s, &reals);
        t.release(SVC, ip(2), 100, 10);
        assert_ne!(t.assign(SVC, ip(2), 110, 10, &s, &reals), a);
        assert_eq!(t.counters().rescheduled, 1);
    }

    #[test]
    fn never_expires_while_referenced() {
        let reals = RealRegistry::new(2);
        let s = Scheduler::new(SchedulerKind::Rr, backends(&[1, 1]));
        let t = PersistTable::new(16, 1);
        let first = t.assign(SVC, ip(1), 0, 10, &s, &reals);
        t.assign(SVC, ip(1), 1, 10, &s, &reals);
        t.release(SVC, ip(1), 2, 10);
        // One connection still open long after the timeout.
        assert_eq!(t.sweep(10_000, usize::MAX), 0);
        assert_eq!(t.assign(SVC, ip(1), 10_000, 10, &s, &reals), first);
        t.release(SVC, ip(1), 10_001, 10);
        t.release(SVC, ip(1), 10_002, 10);
        assert_eq!(t.sweep(10_011, usize::MAX), 0);
        assert_eq!(t.sweep(10_012, usize::MAX), 1);
    }

    #[test]
    fn quiesced_or_removed_server_is_not_reused() {
        let reals = RealRegistry::new(3);
        let s = Scheduler::new(SchedulerKind::Rr, backends(&[1, 1, 1]));
        let t = PersistTable::new(16, 2);
        let first = t.assign(SVC, ip(1), 0, 300, &s, &reals).expect("live");

        let mut w = [1, 1, 1];
        w[first] = 0;
        let q = Scheduler::new(SchedulerKind::Rr, backends(&w));
        let second = t.assign(SVC, ip(1), 1, 300, &q, &reals).expect("live");
        assert_ne!(second, first);
        // The template now names the new server, even once the old one is back.
        assert_eq!(t.assign(SVC, ip(1), 2, 300, &s, &reals), Some(second));

        // Removed from the service: rescheduled too.
        let rest: Vec<Backend> = backends(&[1, 1, 1])
            .into_iter()
            .filter(|b| usize::from(b.slot) != second)
            .collect();
        let r = Scheduler::new(SchedulerKind::Rr, rest);
        let third = t.assign(SVC, ip(1), 3, 300, &r, &reals).expect("live");
        assert_ne!(r.backends()[third].addr, s.backends()[second].addr);
        assert_eq!(t.counters().rescheduled, 2);
        // refs counts all four connections, whatever server they went to.
        assert_eq!(t.dump(), vec![(SVC, ip(1), 303, 4)]);

        // No live server at all: no server, and the template is left alone.
        let none = Scheduler::new(SchedulerKind::Rr, backends(&[0, 0, 0]));
        assert_eq!(t.assign(SVC, ip(1), 4, 300, &none, &reals), None);
        assert_eq!(t.assign(SVC, ip(9), 4, 300, &none, &reals), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn capacity_is_a_bound() {
        let reals = RealRegistry::new(2);
        let s = Scheduler::new(SchedulerKind::Rr, backends(&[1, 1]));
        let t = PersistTable::new(8, 2);
        for n in 0..100 {
            assert!(t.assign(SVC, ip(n), 0, 10, &s, &reals).is_some());
        }
        assert_eq!(t.len(), 8);
        assert_eq!(t.counters().full, 92);
        assert_eq!(t.counters().inserted, 8);
        let empty = PersistTable::new(0, 4);
        assert!(empty.assign(SVC, ip(1), 0, 10, &s, &reals).is_some());
        assert!(empty.is_empty());
    }

    #[test]
    fn sweep_is_bounded_and_resumes() {
        let reals = RealRegistry::new(2);
        let s = Scheduler::new(SchedulerKind::Rr, backends(&[1, 1]));
        let t = PersistTable::new(32, 2);
        for n in 0..100 {
            t.assign(SVC, ip(n), 0, 10, &s, &reals);
            t.release(SVC, ip(n), 0, 10);
        }
        assert_eq!(t.len(), 32);
        let slots = 2 * 32; // 2 shards of 32 slots
        let mut dropped = 0;
        for _ in 0..slots {
            let d = t.sweep(10, 4);
            assert!(d <= 4);
            dropped += d;
        }
        assert_eq!(dropped, 32, "repeated small sweeps get round every slot");
        assert!(t.is_empty());
    }

    /// Random assign / release / sweep on a small single-shard table (long probe chains),
    /// against a model map: checks the open addressing and its backward-shift deletion.
    #[test]
    fn matches_a_model_under_random_operations() {
        let reals = RealRegistry::new(3);
        let s = Scheduler::new(SchedulerKind::Sh, backends(&[1, 1, 1]));
        let cap = 48;
        let t = PersistTable::new(cap, 1);
        let mut model: HashMap<(u16, Ipv4Addr), (u32, u32)> = HashMap::new();
        let mut rng = XorShift::new(99);
        let mut now = 0u32;
        for _ in 0..20_000 {
            now += (rng.next() % 3) as u32;
            let k = (1 + (rng.next() % 2) as u16, ip((rng.next() % 80) as u32));
            let timeout = 5 + (rng.next() % 20) as u32;
            match rng.next() % 10 {
                0..=4 => {
                    t.assign(k.0, k.1, now, timeout, &s, &reals);
                    let len = model.len();
                    match model.get_mut(&k) {
                        Some(e) => *e = (now + timeout, e.1 + 1),
                        None if len < cap => {
                            model.insert(k, (now + timeout, 1));
                        }
                        None => {}
                    }
                }
                5..=8 => {
                    t.release(k.0, k.1, now, timeout);
                    if let Some(e) = model.get_mut(&k) {
                        *e = (e.0.max(now + timeout), e.1.saturating_sub(1));
                    }
                }
                _ => {
                    let before = model.len();
                    model.retain(|_, &mut (expiry, refs)| refs > 0 || now < expiry);
                    assert_eq!(t.sweep(now, usize::MAX), before - model.len());
                }
            }
            let mut want: Vec<_> = model.iter().map(|(k, v)| (k.0, k.1, v.0, v.1)).collect();
            want.sort();
            assert_eq!(t.dump(), want);
        }
    }
}
