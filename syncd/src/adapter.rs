//! The bridge between the forwarder's connection table and the session.
//!
//! Out: [`ChangeQueue`] is the table's observer (downstream of the engine's). It runs on
//! the datapath, under a shard lock, so it only copies the entry into a bounded queue and,
//! when the queue was empty, wakes the sync thread through an eventfd. Inserts, state
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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use forwarder::conntrack::{
    Change, ConnEntry, ConnObserver, ConnState, DeleteCause, NewConn, ProxySeq,
};
use forwarder::engine::{Engine, ServiceTable};
use forwarder::model::{Mode, Protocol};

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

/// Changes of the local table waiting for the sync thread.
pub struct ChangeQueue {
    queue: Mutex<Vec<(Op, ConnEntry)>>,
    capacity: usize,
    wake: OwnedFd,
    /// Set when a change could not be queued: the peer needs a resync.
    overflowed: AtomicBool,
    pub dropped: AtomicU64,
}

impl ChangeQueue {
    pub fn new(capacity: usize) -> std::io::Result<ChangeQueue> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ChangeQueue {
            queue: Mutex::new(Vec::with_capacity(capacity.min(65536))),
            capacity,
            // SAFETY: fd is a fresh descriptor we own.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            overflowed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        })
    }

    /// The eventfd that becomes readable when changes are queued.
    pub fn wake_fd(&self) -> i32 {
        self.wake.as_raw_fd()
    }

    /// Moves the queued changes into `out` (which it clears first).
    pub fn drain(&self, out: &mut Vec<(Op, ConnEntry)>) {
        out.clear();
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *q, out);
    }

    /// Clears the wake-up and tells whether changes were lost since the last call.
    pub fn take_overflow(&self) -> bool {
        let mut counter = 0u64;
        // SAFETY: reads 8 bytes into a valid u64 from our nonblocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut counter as *mut u64).cast(), 8) };
        self.overflowed.swap(false, Ordering::Relaxed)
    }

    fn push(&self, op: Op, e: ConnEntry) {
        let was_empty = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.capacity {
                drop(q);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.overflowed.store(true, Ordering::Relaxed);
                return;
            }
            q.push((op, e));
            q.len() == 1
        };
        if was_empty {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
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
    /// Entries with a state, protocol or mode this build does not know.
    pub invalid: AtomicU64,
    /// Shard full.
    pub full: AtomicU64,
    /// Replicas removed after a resync because the peer no longer had them.
    pub swept: AtomicU64,
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
