//! The XDP fast path's userspace half: the program's flow map kept equal to the
//! connection table.
//!
//! The connection table stays the one source of truth; the program forwards a flow only
//! while its rows are in `dir_flows` (see `bpf/director.h`):
//!
//! - [`FastQueue`], an observer of the table, hears of every insert, state change and
//!   removal (the engine's, the sweep's and the sync thread's replicas) and queues the
//!   flow's key when the flow is eligible or in the map (not a half-open flow's). It runs
//!   on the datapath under a shard lock, so it only pushes a key.
//! - The manager thread (`dp-fastpath`) takes the keys, reads each flow's entry as it is
//!   *now* (so the order in which changes arrive does not matter), and makes the map agree:
//!   an established TCP flow or a UDP flow gets its rows ([`rows`]: the inbound key, and for
//!   NAT and FULLNAT the reply key), anything else loses them. The entry is then marked
//!   [`ConnEntry::FAST`] (`director conns` shows the path).
//! - Each row names a next hop, a row of `dir_nexthops`, shared by every flow toward the
//!   same (interface, gateway): a neighbour, MAC or egress change in the FIB snapshot
//!   rewrites that one row ([`NextHops`]), and a change of routes re-resolves the flows.
//! - Packets the program forwards are counted in the map (per flow, with the last-seen time)
//!   and per real server (`dir_reals`). The manager adds the per-real counts to the real
//!   servers' counters every second (and when a view asks, [`FastPath::flush_counters`]);
//!   the sweep asks [`LastSeen`] about a fast flow before it expires it; the first packet of
//!   a replica forwarded here comes back as an event and makes the flow this node's.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::conntrack::{Change, ConnEntry, ConnObserver, ConnState, FlowKey};
use crate::engine::{Engine, ServiceTable, Tables};
use crate::fib::Fib;
use crate::io::bpf;
use crate::io::datapath::Clock;
use crate::model::{Mode, Protocol};

/// `struct dir_flow_key`: a packet's addresses and ports, network order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BpfFlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

impl BpfFlowKey {
    pub fn new(src: SocketAddrV4, dst: SocketAddrV4, proto: Protocol) -> BpfFlowKey {
        BpfFlowKey {
            saddr: u32::from(*src.ip()).to_be(),
            daddr: u32::from(*dst.ip()).to_be(),
            sport: src.port().to_be(),
            dport: dst.port().to_be(),
            proto: proto as u8,
            pad: [0; 3],
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain old data without padding (4 + 4 + 2 + 2 + 1 + 3 bytes).
        unsafe {
            std::slice::from_raw_parts((self as *const Self).cast(), std::mem::size_of::<Self>())
        }
    }
}

/// `dir_flow.action`.
pub const ACT_NAT_IN: u8 = 1;
pub const ACT_NAT_OUT: u8 = 2;
pub const ACT_DR: u8 = 3;
pub const ACT_TUN: u8 = 4;
pub const ACT_FNAT_IN: u8 = 5;
pub const ACT_FNAT_OUT: u8 = 6;
/// `dir_flow.flags`.
pub const F_REPLICA: u8 = 1 << 0;
pub const F_PROXY: u8 = 1 << 1;

/// `struct dir_flow`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BpfFlow {
    pub nexthop: u32,
    pub action: u8,
    pub flags: u8,
    pub real_slot: u16,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub seq_isn: u32,
    pub seq_delta: u32,
    pub _pad: u32,
    pub packets: u64,
    pub bytes: u64,
    pub last_seen: u64,
}

impl BpfFlow {
    fn bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain old data; the padding is an explicit zeroed field.
        unsafe {
            std::slice::from_raw_parts((self as *const Self).cast(), std::mem::size_of::<Self>())
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; every bit pattern is a valid BpfFlow.
        unsafe {
            std::slice::from_raw_parts_mut((self as *mut Self).cast(), std::mem::size_of::<Self>())
        }
    }

    /// The rewrite, without the counters the program keeps.
    fn same_rewrite(&self, other: &BpfFlow) -> bool {
        let strip = |f: &BpfFlow| BpfFlow {
            packets: 0,
            bytes: 0,
            last_seen: 0,
            flags: f.flags & !F_REPLICA,
            ..*f
        };
        strip(self) == strip(other)
    }
}

/// `struct dir_nexthop`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BpfNextHop {
    /// 0: unresolved (the slow path takes the packets and solicits the neighbour).
    pub ifindex: u32,
    pub mtu: u16,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub flags: u16,
}

/// `DIR_NH_REDIRECT_SELF`: a frame for the interface it came in on is redirected there
/// rather than sent with XDP_TX (veth: see `bpf/director.h`).
pub const NH_REDIRECT_SELF: u16 = 1 << 0;

impl BpfNextHop {
    fn bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain old data; the padding is an explicit zeroed field.
        unsafe {
            std::slice::from_raw_parts((self as *const Self).cast(), std::mem::size_of::<Self>())
        }
    }
}

/// `struct dir_real_stats` (one CPU's).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BpfRealStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

/// `struct dir_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BpfEvent {
    pub kind: u32,
    pub key: BpfFlowKey,
}

pub const EV_ADOPT: u32 = 1;
/// Rows of `dir_nexthops` and `dir_reals`.
pub const MAX_NEXTHOPS: u32 = 65536;
pub const MAX_REALS: u32 = 4096;

/// One row a flow needs in the flow map, before its next hop is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub key: BpfFlowKey,
    pub flow: BpfFlow,
    /// Where its packets go: the next hop is the route's toward this address.
    pub toward: Ipv4Addr,
}

/// Whether the fast path takes a flow in `state`: an established TCP flow (the engine
/// sees its handshake and its end) or any UDP flow.
pub fn eligible(state: ConnState) -> bool {
    matches!(state, ConnState::Established | ConnState::Udp)
}

/// The rows of connection `e` (none if it is not [`eligible`]): the same rewrites the
/// engine applies to the flow's packets (see `engine/{nat,dr,tun,fullnat}.rs` and
/// `bpf/*.h`, one file per mode on each side).
pub fn rows(e: &ConnEntry) -> Vec<Row> {
    if !eligible(e.state()) {
        return Vec::new();
    }
    let proto = e.proto();
    let (client, vip, real) = (e.client(), e.vip(), e.real());
    let flags = if e.is_replica() { F_REPLICA } else { 0 };
    let (isn, delta, pflag) = match e.proxy_seq() {
        Some(p) => (p.client_isn, u32::from(p.delta), F_PROXY),
        None => (0, 0, 0),
    };
    let be = |a: &SocketAddrV4| (u32::from(*a.ip()).to_be(), a.port().to_be());
    let flow = |action: u8, src: Option<SocketAddrV4>, dst: Option<SocketAddrV4>| {
        let (saddr, sport) = src.as_ref().map_or((0, 0), be);
        let (daddr, dport) = dst.as_ref().map_or((0, 0), be);
        BpfFlow {
            action,
            flags,
            real_slot: e.real_slot(),
            saddr,
            daddr,
            sport,
            dport,
            ..BpfFlow::default()
        }
    };
    match e.mode() {
        Mode::Nat => vec![
            Row {
                key: BpfFlowKey::new(client, vip, proto),
                flow: flow(ACT_NAT_IN, None, Some(real)),
                toward: *real.ip(),
            },
            Row {
                key: BpfFlowKey::new(real, client, proto),
                flow: flow(ACT_NAT_OUT, Some(vip), None),
                toward: *client.ip(),
            },
        ],
        Mode::Dr => vec![Row {
            key: BpfFlowKey::new(client, vip, proto),
            flow: flow(ACT_DR, None, None),
            toward: *real.ip(),
        }],
        // The tunnel source depends on the egress interface: filled in with the next hop.
        Mode::Tun => vec![Row {
            key: BpfFlowKey::new(client, vip, proto),
            flow: flow(ACT_TUN, None, Some(SocketAddrV4::new(*real.ip(), 0))),
            toward: *real.ip(),
        }],
        Mode::FullNat => {
            let Some(local) = e.local() else {
                return Vec::new();
            };
            let mut inbound = flow(ACT_FNAT_IN, Some(local), Some(real));
            let mut reply = flow(ACT_FNAT_OUT, Some(vip), Some(client));
            if proto == Protocol::Tcp && pflag != 0 {
                for f in [&mut inbound, &mut reply] {
                    f.flags |= pflag;
                    f.seq_isn = isn;
                    f.seq_delta = delta;
                }
            }
            vec![
                Row {
                    key: BpfFlowKey::new(client, vip, proto),
                    flow: inbound,
                    toward: *real.ip(),
                },
                Row {
                    key: BpfFlowKey::new(real, local, proto),
                    flow: reply,
                    toward: *client.ip(),
                },
            ]
        }
    }
}

/// The rows of `dir_nexthops`: one per (interface, next-hop address) some flow uses.
#[derive(Default)]
pub struct NextHops {
    slots: Vec<Option<HopSlot>>,
    by_key: HashMap<(u32, Ipv4Addr), u32>,
    free: Vec<u32>,
    /// Interfaces whose hops get [`NH_REDIRECT_SELF`].
    redirect_self: Vec<u32>,
    /// Asks the kernel for a neighbour the FIB snapshot does not know yet (it may have
    /// learnt it a moment ago, from the client's ARP request for the VIP).
    kernel: KernelLookup,
}

struct HopSlot {
    key: (u32, Ipv4Addr),
    refs: u32,
    value: BpfNextHop,
}

/// A way to ask the kernel for a neighbour's MAC (interface, address).
pub type KernelLookup = Option<Box<dyn FnMut(u32, Ipv4Addr) -> Option<crate::fib::Mac> + Send>>;

fn hop_value(
    fib: &Fib,
    oif: u32,
    hop: Ipv4Addr,
    redirect_self: &[u32],
    kernel: &mut KernelLookup,
) -> BpfNextHop {
    let found = fib.hop(oif, hop).or_else(|| {
        let mac = kernel.as_mut()?(oif, hop)?;
        let iface = fib.interface(oif)?;
        Some(crate::fib::NextHop {
            ifindex: oif,
            src_mac: iface.mac,
            dst_mac: mac,
            mtu: iface.mtu,
        })
    });
    match found {
        Some(h) => BpfNextHop {
            ifindex: h.ifindex,
            mtu: u16::try_from(h.mtu).unwrap_or(u16::MAX),
            dmac: h.dst_mac,
            smac: h.src_mac,
            flags: if redirect_self.contains(&h.ifindex) {
                NH_REDIRECT_SELF
            } else {
                0
            },
        },
        None => BpfNextHop::default(),
    }
}

impl NextHops {
    /// Next hops on `redirect_self` interfaces are marked [`NH_REDIRECT_SELF`]; a neighbour
    /// the FIB does not know is asked of `kernel`.
    pub fn new(redirect_self: Vec<u32>, kernel: KernelLookup) -> NextHops {
        NextHops {
            redirect_self,
            kernel,
            ..NextHops::default()
        }
    }

    /// The row for the route toward `toward` (taking a reference), its value, and whether
    /// the row is new or changed (to write to the map). `None` without a route.
    pub fn acquire(&mut self, fib: &Fib, toward: Ipv4Addr) -> Option<(u32, BpfNextHop, bool)> {
        let key = fib.next_hop_addr(toward)?;
        if let Some(&slot) = self.by_key.get(&key) {
            let s = self.slots[slot as usize]
                .as_mut()
                .expect("indexed slot is used");
            s.refs += 1;
            return Some((slot, s.value, false));
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None if (self.slots.len() as u32) < MAX_NEXTHOPS => {
                self.slots.push(None);
                self.slots.len() as u32 - 1
            }
            None => return None,
        };
        let value = hop_value(fib, key.0, key.1, &self.redirect_self, &mut self.kernel);
        self.slots[slot as usize] = Some(HopSlot {
            key,
            refs: 1,
            value,
        });
        self.by_key.insert(key, slot);
        Some((slot, value, true))
    }

    /// Drops a reference taken by [`NextHops::acquire`].
    pub fn release(&mut self, slot: u32) {
        let Some(Some(s)) = self.slots.get_mut(slot as usize) else {
            return;
        };
        s.refs -= 1;
        if s.refs == 0 {
            self.by_key.remove(&s.key);
            self.slots[slot as usize] = None;
            self.free.push(slot);
        }
    }

    /// Re-resolves every row from `fib`; returns the rows whose value changed.
    pub fn refresh(&mut self, fib: &Fib) -> Vec<(u32, BpfNextHop)> {
        let mut changed = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(s) = s {
                let v = hop_value(fib, s.key.0, s.key.1, &self.redirect_self, &mut self.kernel);
                if v != s.value {
                    s.value = v;
                    changed.push((i as u32, v));
                }
            }
        }
        changed
    }

    /// Rows in use.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// What putting one connection in the maps takes: its rows, next hops chosen, and the
/// next-hop rows that are new (to write before the rows that use them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub rows: Vec<(BpfFlowKey, BpfFlow)>,
    pub new_hops: Vec<(u32, BpfNextHop)>,
}

/// The rows of `e` with their next hops from `fib` (references taken in `hops`), TUN's
/// tunnel source as the engine picks it. `None` when the flow is not [`eligible`] or a row
/// has no route (no reference is kept then).
pub fn plan(
    e: &ConnEntry,
    fib: &Fib,
    services: &ServiceTable,
    hops: &mut NextHops,
) -> Option<Plan> {
    let want = rows(e);
    if want.is_empty() {
        return None;
    }
    let mut out = Plan {
        rows: Vec::with_capacity(want.len()),
        new_hops: Vec::new(),
    };
    for r in &want {
        let Some((slot, hop, new)) = hops.acquire(fib, r.toward) else {
            for (_, f) in &out.rows {
                hops.release(f.nexthop);
            }
            return None;
        };
        if new {
            out.new_hops.push((slot, hop));
        }
        let mut flow = r.flow;
        flow.nexthop = slot;
        if flow.action == ACT_TUN {
            let t = Tables { services, fib };
            let real = Ipv4Addr::from(u32::from_be(flow.daddr));
            let src = (hop.ifindex != 0)
                .then(|| crate::engine::tunnel_source(&t, hop.ifindex, real))
                .flatten();
            flow.saddr = src.map_or(0, |a| u32::from(a).to_be());
        }
        out.rows.push((r.key, flow));
    }
    Some(out)
}

/// The connection table's observer for the fast path: queues the key of every flow that
/// was inserted, changed state or went away while eligible for the map or in it (FAST), for
/// the manager to look at. Off (it queues nothing) until a manager runs.
pub struct FastQueue {
    enabled: AtomicBool,
    shards: Vec<Mutex<Vec<FlowKey>>>,
    wake: EventFd,
    /// Keys not queued because a shard was full (the manager then rescans the table).
    pub overflowed: AtomicBool,
}

const QUEUE_SHARDS: usize = 16;
const QUEUE_CAP: usize = 1 << 16;

thread_local! {
    static QUEUE_SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

fn my_shard() -> usize {
    QUEUE_SHARD.with(|c| {
        if c.get() == usize::MAX {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            c.set(NEXT.fetch_add(1, Ordering::Relaxed) as usize % QUEUE_SHARDS);
        }
        c.get()
    })
}

impl std::fmt::Debug for FastQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastQueue")
            .field("enabled", &self.enabled.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl FastQueue {
    pub fn new() -> io::Result<FastQueue> {
        let wake =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(FastQueue {
            enabled: AtomicBool::new(false),
            shards: (0..QUEUE_SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            wake,
            overflowed: AtomicBool::new(false),
        })
    }

    fn push(&self, key: FlowKey) {
        let mut q = self.shards[my_shard()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if q.len() >= QUEUE_CAP {
            self.overflowed.store(true, Ordering::Relaxed);
            return;
        }
        let was_empty = q.is_empty();
        q.push(key);
        drop(q);
        if was_empty {
            // Cannot fail but for a counter at u64::MAX - 1, which a wake-up never reaches.
            let _ = self.wake.write(1);
        }
    }

    /// Moves every queued key into `out`.
    fn drain(&self, out: &mut Vec<FlowKey>) {
        // Resets the counter; EAGAIN when nothing woke us (the tick).
        let _ = self.wake.read();
        for s in &self.shards {
            let mut q = s.lock().unwrap_or_else(|e| e.into_inner());
            out.append(&mut q);
        }
    }
}

impl ConnObserver for FastQueue {
    fn on_change(&self, change: &Change) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        // Only what can change the map: a flow that is (or becomes) eligible, and one the
        // map holds. A SYN flood's half-open entries, made and expired by the hundred
        // thousand a second, are neither, and queueing them made the manager take a shard
        // lock per entry beside the worker. An entry installed but not yet marked FAST that
        // then leaves eligibility is caught by `apply`, which checks the state under the
        // same lock that sets the mark.
        match change {
            Change::Insert(e) | Change::Update(e) | Change::Delete(e, _)
                if e.is_fast() || eligible(e.state()) =>
            {
                self.push(e.flow_key())
            }
            Change::Insert(_) | Change::Update(_) | Change::Delete(..) => {}
            // The expiry moved: nothing the program keeps.
            Change::Refresh(_) => {}
        }
    }
}

/// What the fast path has done, for `director stats`.
#[derive(Debug, Default)]
pub struct FastCounters {
    /// Flows in the map now.
    pub flows: AtomicU64,
    /// Flows put in the map, and taken out.
    pub installed: AtomicU64,
    pub removed: AtomicU64,
    /// Flows the map had no room for (they stay on the slow path).
    pub map_full: AtomicU64,
    /// Flows with no route toward their next hop (slow path).
    pub no_route: AtomicU64,
    /// Replicas the fast path forwarded first here (adopted).
    pub adopted: AtomicU64,
}

/// The file descriptors of the program's fast-path maps (kept open by the program).
#[derive(Debug, Clone, Copy)]
pub struct FastMaps {
    pub flows: RawFd,
    pub nexthops: RawFd,
    pub reals: RawFd,
}

/// Reads the last time the program forwarded a packet of a connection, for the sweep.
#[derive(Clone)]
pub struct LastSeen {
    maps: FastMaps,
    clock: Clock,
}

impl LastSeen {
    pub fn new(maps: FastMaps, clock: Clock) -> LastSeen {
        LastSeen { maps, clock }
    }

    /// The engine second of the latest packet of `e` the program forwarded, if any.
    pub fn of(&self, e: &ConnEntry) -> Option<u32> {
        let mut latest = 0u64;
        let mut e2 = *e;
        // The rows are those of an eligible flow: ask with the state it had when installed.
        if !eligible(e2.state()) {
            return None;
        }
        e2.flags &= !ConnEntry::REPLICA;
        for r in rows(&e2) {
            let mut v = BpfFlow::default();
            if let Ok(true) = bpf::lookup(self.maps.flows, r.key.bytes(), v.bytes_mut()) {
                latest = latest.max(v.last_seen);
            }
        }
        (latest > 0).then(|| self.clock.at_ns(latest))
    }
}

/// Per-flow counters the program kept for one connection: (packets, bytes).
pub fn flow_counters(maps: FastMaps, e: &ConnEntry) -> (u64, u64) {
    let mut e2 = *e;
    e2.flags &= !ConnEntry::REPLICA;
    let mut total = (0, 0);
    for r in rows(&e2) {
        let mut v = BpfFlow::default();
        if let Ok(true) = bpf::lookup(maps.flows, r.key.bytes(), v.bytes_mut()) {
            total.0 += v.packets;
            total.1 += v.bytes;
        }
    }
    total
}

/// One installed flow: the rows written and their next hops.
struct Installed {
    rows: Vec<(BpfFlowKey, BpfFlow)>,
}

/// The manager's state (on its own thread).
struct Manager {
    maps: FastMaps,
    queue: Arc<FastQueue>,
    engine: Arc<Engine>,
    services: Arc<ArcSwap<ServiceTable>>,
    fib: Arc<ArcSwap<Fib>>,
    clock: Clock,
    events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    counters: Arc<FastCounters>,
    real_fold: Arc<Mutex<RealFold>>,
    stop: Arc<AtomicBool>,
    installed: HashMap<FlowKey, Installed>,
    by_row: HashMap<BpfFlowKey, FlowKey>,
    hops: NextHops,
}

/// Per-real counts of the program already added to the real servers' counters.
pub struct RealFold {
    maps: FastMaps,
    cpus: usize,
    seen: Vec<BpfRealStats>,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl RealFold {
    fn new(maps: FastMaps) -> io::Result<RealFold> {
        let cpus = bpf::possible_cpus()?;
        Ok(RealFold {
            maps,
            cpus,
            seen: vec![BpfRealStats::default(); MAX_REALS as usize],
            keys: vec![0; MAX_REALS as usize * 4],
            values: vec![0; MAX_REALS as usize * cpus * std::mem::size_of::<BpfRealStats>()],
        })
    }

    /// Adds what the program forwarded per real server since the last call to the real
    /// servers' counters.
    fn fold(&mut self, engine: &Engine) -> io::Result<()> {
        let n = bpf::lookup_batch(
            self.maps.reals,
            0,
            MAX_REALS,
            &mut self.keys,
            &mut self.values,
        )? as usize;
        let sz = std::mem::size_of::<BpfRealStats>();
        for i in 0..n {
            let slot = u32::from_ne_bytes(self.keys[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
            let Some(seen) = self.seen.get_mut(slot as usize) else {
                continue;
            };
            let mut total = BpfRealStats::default();
            for c in 0..self.cpus {
                let at = (i * self.cpus + c) * sz;
                let v = &self.values[at..at + sz];
                let word =
                    |k: usize| u64::from_ne_bytes(v[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
                total.packets_in += word(0);
                total.bytes_in += word(1);
                total.packets_out += word(2);
                total.bytes_out += word(3);
            }
            if total == *seen {
                continue;
            }
            let r = engine.reals.get(slot as u16);
            r.packets_in.fetch_add(
                total.packets_in.saturating_sub(seen.packets_in),
                Ordering::Relaxed,
            );
            r.bytes_in.fetch_add(
                total.bytes_in.saturating_sub(seen.bytes_in),
                Ordering::Relaxed,
            );
            r.packets_out.fetch_add(
                total.packets_out.saturating_sub(seen.packets_out),
                Ordering::Relaxed,
            );
            r.bytes_out.fetch_add(
                total.bytes_out.saturating_sub(seen.bytes_out),
                Ordering::Relaxed,
            );
            *seen = total;
        }
        Ok(())
    }
}

/// The running fast path: its thread, counters and the per-real fold.
pub struct FastPath {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    queue: Arc<FastQueue>,
    pub counters: Arc<FastCounters>,
    real_fold: Arc<Mutex<RealFold>>,
    pub maps: FastMaps,
}

/// How often the manager adds the per-real counts and looks at the FIB without a change
/// to apply.
const TICK: Duration = Duration::from_millis(100);

impl FastPath {
    /// Starts the manager: from now on `queue` records changes, and the map follows them.
    /// Every flow already in the table is looked at once.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        maps: FastMaps,
        events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
        queue: Arc<FastQueue>,
        engine: Arc<Engine>,
        services: Arc<ArcSwap<ServiceTable>>,
        fib: Arc<ArcSwap<Fib>>,
        clock: Clock,
        redirect_self: Vec<u32>,
    ) -> io::Result<FastPath> {
        let counters = Arc::new(FastCounters::default());
        let real_fold = Arc::new(Mutex::new(RealFold::new(maps)?));
        let stop = Arc::new(AtomicBool::new(false));
        queue.enabled.store(true, Ordering::SeqCst);
        let mut m = Manager {
            maps,
            queue: queue.clone(),
            engine,
            services,
            fib,
            clock,
            events,
            counters: counters.clone(),
            real_fold: real_fold.clone(),
            stop: stop.clone(),
            installed: HashMap::new(),
            by_row: HashMap::new(),
            hops: NextHops::new(
                redirect_self,
                crate::io::netlink::Rtnl::new().ok().map(|mut rtnl| {
                    Box::new(move |ifindex: u32, addr: Ipv4Addr| {
                        rtnl.get_neighbour(ifindex, addr).ok().flatten()
                    })
                        as Box<dyn FnMut(u32, Ipv4Addr) -> Option<crate::fib::Mac> + Send>
                }),
            ),
        };
        let thread = std::thread::Builder::new()
            .name("dp-fastpath".into())
            .spawn(move || m.run())?;
        Ok(FastPath {
            thread: Some(thread),
            stop,
            queue,
            counters,
            real_fold,
            maps,
        })
    }

    /// Adds what the program forwarded since the last call to the real servers' counters
    /// (the manager does it every 100 ms; a view calls this first to be exact).
    pub fn flush_counters(&self, engine: &Engine) {
        let mut f = self.real_fold.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.fold(engine) {
            tracing::debug!("cannot read the fast path's per-real counters: {e}");
        }
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        self.queue.enabled.store(false, Ordering::SeqCst);
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.queue.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Manager {
    fn run(&mut self) {
        let mut keys = Vec::new();
        let mut seen_fib = Arc::as_ptr(&self.fib.load()) as usize;
        let mut routes = self.fib.load().routes().to_vec();
        // Flows established before the manager started.
        self.rescan();
        let mut last_tick = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            // A wake-up, an event or the tick: each is handled below the same way (EINTR
            // too).
            let wake = PollFd::new(self.queue.wake.as_fd(), PollFlags::POLLIN);
            let tick = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::MAX);
            let _ = match &self.events {
                Some(e) => poll(&mut [wake, PollFd::new(e.as_fd(), PollFlags::POLLIN)], tick),
                None => poll(&mut [wake], tick),
            };
            keys.clear();
            self.queue.drain(&mut keys);
            if self.queue.overflowed.swap(false, Ordering::Relaxed) {
                self.rescan();
            }
            let mut dedup = HashSet::with_capacity(keys.len());
            for k in keys.drain(..) {
                if dedup.insert(k) {
                    self.apply(k);
                }
            }
            self.adopt_events();
            let fib = self.fib.load();
            let now_fib = Arc::as_ptr(&fib) as usize;
            if now_fib != seen_fib {
                seen_fib = now_fib;
                if fib.routes() != routes.as_slice() {
                    routes = fib.routes().to_vec();
                    // Another route may mean another next hop for any flow.
                    let all: Vec<FlowKey> = self.installed.keys().copied().collect();
                    for k in all {
                        self.uninstall(k);
                        self.apply(k);
                    }
                }
                for (slot, v) in self.hops.refresh(&fib) {
                    if let Err(e) = bpf::update(self.maps.nexthops, &slot.to_ne_bytes(), v.bytes())
                    {
                        tracing::warn!("cannot update the fast path's next hop {slot}: {e}");
                    }
                }
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let mut f = self.real_fold.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = f.fold(&self.engine) {
                    tracing::debug!("cannot read the fast path's per-real counters: {e}");
                }
            }
        }
        // Leaving: empty the map, so that nothing is forwarded from a table nobody keeps.
        let all: Vec<FlowKey> = self.installed.keys().copied().collect();
        for k in all {
            self.uninstall(k);
        }
    }

    /// Looks at every flow in the table (at start, and after the queue overflowed).
    fn rescan(&mut self) {
        let mut keys = Vec::new();
        self.engine.conns.snapshot(|e| keys.push(e.flow_key()));
        let gone: Vec<FlowKey> = self
            .installed
            .keys()
            .filter(|k| !keys.contains(k))
            .copied()
            .collect();
        for k in gone {
            self.uninstall(k);
        }
        for k in keys {
            self.apply(k);
        }
    }

    /// The entry of `key` as it is now, if live and unexpired.
    fn current(&self, key: &FlowKey) -> Option<ConnEntry> {
        let now = self.clock.now();
        let mut shard = self.engine.conns.shard_for(key.client);
        let id = shard.get_in(key, now)?;
        Some(*shard.entry(id))
    }

    /// Makes the map agree with the entry of `key`.
    fn apply(&mut self, key: FlowKey) {
        let Some(e) = self
            .current(&key)
            .filter(|e| eligible(e.state()) && !rows(e).is_empty())
        else {
            if self.installed.contains_key(&key) {
                self.uninstall(key);
                let mut shard = self.engine.conns.shard_for(key.client);
                shard.set_fast(&key, false);
            }
            return;
        };
        let fib = self.fib.load();
        let services = self.services.load();
        let Some(p) = plan(&e, &fib, &services, &mut self.hops) else {
            self.counters.no_route.fetch_add(1, Ordering::Relaxed);
            return;
        };
        for (slot, hop) in &p.new_hops {
            if let Err(e) = bpf::update(self.maps.nexthops, &slot.to_ne_bytes(), hop.bytes()) {
                tracing::warn!("cannot write the fast path's next hop {slot}: {e}");
            }
        }
        let written = p.rows;
        if let Some(old) = self.installed.get(&key) {
            let same = old.rows.len() == written.len()
                && old
                    .rows
                    .iter()
                    .zip(&written)
                    .all(|((ka, fa), (kb, fb))| ka == kb && fa.same_rewrite(fb));
            if same {
                for (_, f) in &written {
                    self.hops.release(f.nexthop);
                }
                return;
            }
            self.uninstall(key);
        }
        for (k, f) in &written {
            if let Err(e) = bpf::update(self.maps.flows, k.bytes(), f.bytes()) {
                if e.raw_os_error() == Some(libc::E2BIG) || e.raw_os_error() == Some(libc::ENOMEM) {
                    self.counters.map_full.fetch_add(1, Ordering::Relaxed);
                } else {
                    tracing::warn!("cannot write a fast path flow: {e}");
                }
                for (k2, f2) in &written {
                    let _ = bpf::delete(self.maps.flows, k2.bytes());
                    self.hops.release(f2.nexthop);
                }
                return;
            }
        }
        for (k, _) in &written {
            self.by_row.insert(*k, key);
        }
        self.installed.insert(key, Installed { rows: written });
        self.counters.installed.fetch_add(1, Ordering::Relaxed);
        self.counters
            .flows
            .store(self.installed.len() as u64, Ordering::Relaxed);
        let now = self.clock.now();
        let mut shard = self.engine.conns.shard_for(key.client);
        if !shard.set_fast(&key, true) {
            drop(shard);
            // Gone meanwhile (its removal is queued, but need not wait).
            self.uninstall(key);
            return;
        }
        // Left eligibility meanwhile (a FIN or RST between the read above and the mark):
        // that change was not queued, since the entry was not yet FAST, so undo it here.
        let still = shard
            .get_in(&key, now)
            .is_some_and(|id| eligible(shard.entry(id).state()));
        if !still {
            shard.set_fast(&key, false);
            drop(shard);
            self.uninstall(key);
        }
    }

    fn uninstall(&mut self, key: FlowKey) {
        let Some(old) = self.installed.remove(&key) else {
            return;
        };
        for (k, f) in &old.rows {
            let _ = bpf::delete(self.maps.flows, k.bytes());
            self.by_row.remove(k);
            self.hops.release(f.nexthop);
        }
        self.counters.removed.fetch_add(1, Ordering::Relaxed);
        self.counters
            .flows
            .store(self.installed.len() as u64, Ordering::Relaxed);
    }

    /// The program forwarded the first packet of a replica: the flow is this node's now.
    fn adopt_events(&mut self) {
        let Some(ring) = self.events.as_mut() else {
            return;
        };
        let mut adopt = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<BpfEvent>() {
                // SAFETY: the program wrote a struct dir_event; read unaligned.
                let ev = unsafe { item.as_ptr().cast::<BpfEvent>().read_unaligned() };
                if ev.kind == EV_ADOPT {
                    adopt.push(ev.key);
                }
            }
        }
        let now = self.clock.now();
        for k in adopt {
            let Some(key) = self.by_row.get(&k).copied() else {
                continue;
            };
            let mut shard = self.engine.conns.shard_for(key.client);
            if let Some(id) = shard.get_in(&key, now) {
                shard.touch(id, now, true);
                self.counters.adopted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::DeleteCause;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_the_program() {
        assert_eq!(size_of::<BpfFlowKey>(), 16);
        assert_eq!(size_of::<BpfFlow>(), 56);
        assert_eq!(offset_of!(BpfFlow, saddr), 8);
        assert_eq!(offset_of!(BpfFlow, seq_isn), 20);
        assert_eq!(offset_of!(BpfFlow, packets), 32);
        assert_eq!(offset_of!(BpfFlow, last_seen), 48);
        assert_eq!(size_of::<BpfNextHop>(), 20);
        assert_eq!(offset_of!(BpfNextHop, dmac), 6);
        assert_eq!(size_of::<BpfRealStats>(), 32);
        assert_eq!(size_of::<BpfEvent>(), 20);
    }

    /// The observer queues only what can change the map: eligible flows and flows it holds
    /// (FAST), never a half-open entry's insert, update or expiry.
    #[test]
    fn the_queue_takes_only_what_can_change_the_map() {
        let q = FastQueue::new().unwrap();
        q.enabled.store(true, Ordering::Relaxed);
        let with = |state: ConnState, flags: u8, port: u16| ConnEntry {
            client_ip: u32::from(Ipv4Addr::new(198, 18, 1, 10)),
            vip_ip: u32::from(Ipv4Addr::new(198, 18, 1, 100)),
            client_port: port,
            vip_port: 80,
            proto: Protocol::Tcp as u8,
            state: state as u8,
            flags,
            ..ConnEntry::VACANT
        };
        let syn = with(ConnState::SynRecv, 0, 1);
        q.on_change(&Change::Insert(syn));
        q.on_change(&Change::Update(syn));
        q.on_change(&Change::Delete(syn, DeleteCause::Expired));
        q.on_change(&Change::Refresh(with(ConnState::Established, 0, 2)));
        let mut out = Vec::new();
        q.drain(&mut out);
        assert!(out.is_empty(), "{out:?}");
        let est = with(ConnState::Established, 0, 3);
        let udp = with(ConnState::Udp, 0, 4);
        // Left eligibility while in the map: queued, so the manager takes its rows out.
        let fin = with(ConnState::FinWait, ConnEntry::FAST, 5);
        let gone = with(ConnState::Close, ConnEntry::FAST, 6);
        q.on_change(&Change::Update(est));
        q.on_change(&Change::Insert(udp));
        q.on_change(&Change::Update(fin));
        q.on_change(&Change::Delete(gone, DeleteCause::Removed));
        q.drain(&mut out);
        let ports: Vec<u16> = out.iter().map(|k| k.client.port()).collect();
        assert_eq!(ports, [3, 4, 5, 6]);
    }

    #[test]
    fn a_flow_key_is_the_packets_bytes() {
        let k = BpfFlowKey::new(
            "198.18.1.10:40000".parse().unwrap(),
            "198.18.1.100:80".parse().unwrap(),
            Protocol::Tcp,
        );
        assert_eq!(
            k.bytes(),
            &[198, 18, 1, 10, 198, 18, 1, 100, 0x9c, 0x40, 0, 80, 6, 0, 0, 0]
        );
    }
}
