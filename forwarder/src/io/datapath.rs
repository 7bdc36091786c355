//! The running datapath: worker threads that move frames from the receive rings through
//! the [`Engine`] to the transmit batch, and one resolver thread that keeps the [`Fib`]
//! current, solicits missing neighbours and expires connections.
//!
//! Workers are plain OS threads (never on an async runtime). Each opens one ring per
//! datapath interface; with several workers the rings of one interface form a
//! PACKET_FANOUT_HASH group. Each worker publishes a heartbeat every loop so the control
//! plane can tell a stalled datapath (VRRP must then resign).

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::engine::{
    Engine, NeighbourMiss, RxMeta, ServiceTable, Solicit, Tables, Verdict, WorkerCounters,
    WorkerCtx, WorkerState,
};
use crate::fib::{FastMap, Fib, FibMiss, Mac};
use crate::io::afpacket::{wait_readable, RingConfig, RxFrame, RxRing, TxBatch, VnetHdr, RX_BATCH};
use crate::io::fastpath::{FastPath, FastQueue, LastSeen};
use crate::io::netlink::{Notifications, Rtnl};
use crate::io::xdp::{AttachMode, Steering, XdpProgram, XdpStats, XdpWant};
use crate::io::xsk::{self, Umem, XdpDesc, Xsk};
use std::sync::Mutex;

/// How the datapath is started.
#[derive(Debug, Clone)]
pub struct DatapathOptions {
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Interface names; empty = every interface that is up, but loopback.
    pub interfaces: Vec<String>,
    pub ring: RingConfig,
    /// Frames per `sendmmsg`.
    pub tx_batch: usize,
    /// The XDP program and AF_XDP sockets as the receive side (`None`: AF_PACKET rings).
    pub xdp: Option<XdpWant>,
    /// With `xdp`: the connection table's fast-path observer, whose flows the program then
    /// forwards itself (`None`: every packet goes to the workers).
    pub fast_path: Option<Arc<FastQueue>>,
    /// Rows of the program's flow map (about two per connection).
    pub fast_flows: u32,
}

impl Default for DatapathOptions {
    fn default() -> Self {
        DatapathOptions {
            workers: 0,
            interfaces: Vec::new(),
            ring: RingConfig::default(),
            tx_batch: 256,
            xdp: None,
            fast_path: None,
            fast_flows: 1 << 20,
        }
    }
}

/// The engine's monotonic clock: whole seconds since the datapath started, from 1.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    /// `CLOCK_MONOTONIC` at `start`, in ns: what the XDP program's `bpf_ktime_get_ns()`
    /// counts, so its timestamps map onto this clock.
    start_ns: u64,
}

/// `CLOCK_MONOTONIC` in ns (the clock `Instant` and `bpf_ktime_get_ns()` read).
pub fn monotonic_ns() -> u64 {
    // SAFETY: zeroed timespec is valid; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
            start_ns: monotonic_ns(),
        }
    }

    /// The engine second of a `CLOCK_MONOTONIC` timestamp (0 for one before the start).
    pub fn at_ns(&self, ns: u64) -> u32 {
        if ns < self.start_ns {
            return 0;
        }
        u32::try_from((ns - self.start_ns) / 1_000_000_000).unwrap_or(u32::MAX - 1) + 1
    }

    pub fn now(&self) -> u32 {
        u32::try_from(self.start.elapsed().as_secs()).unwrap_or(u32::MAX - 1) + 1
    }

    pub fn millis(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Handle on the running datapath.
pub struct Datapath {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub counters: Vec<Arc<WorkerCounters>>,
    heartbeats: Vec<Arc<AtomicU64>>,
    pub fib: Arc<ArcSwap<Fib>>,
    pub services: Arc<ArcSwap<ServiceTable>>,
    pub engine: Arc<Engine>,
    pub clock: Clock,
    /// (ifindex, name) of the interfaces the workers listen on.
    pub interfaces: Vec<(u32, String)>,
    /// The XDP program, when the workers receive through it (`[datapath] xdp`).
    pub xdp: Option<Arc<Mutex<XdpProgram>>>,
    /// The fast path's manager, when the XDP program forwards established flows itself.
    pub fast: Option<FastPath>,
    /// Why `xdp = "auto"` fell back to AF_PACKET rings, if it did.
    pub xdp_fallback: Option<String>,
    /// Interfaces whose GRO this datapath turned off (generic XDP), to turn back on.
    _gro_restore: GroRestore,
}

/// Interfaces whose GRO the datapath turned off; turned back on when this drops (a failed
/// start included).
#[derive(Default)]
struct GroRestore(Vec<String>);

impl Drop for GroRestore {
    fn drop(&mut self) {
        for name in self.0.drain(..) {
            if let Err(e) = crate::io::ethtool::set_gro(&name, true) {
                tracing::warn!(interface = %name, "cannot turn GRO back on: {e}");
            }
        }
    }
}

/// How one interface receives for the datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxPath {
    pub interface: String,
    /// `None`: AF_PACKET rings; else the XDP mode in force, with AF_XDP sockets.
    pub xdp: Option<AttachMode>,
    /// Receive queues, and AF_XDP sockets on them.
    pub queues: u32,
    pub sockets: u32,
}

impl Datapath {
    /// Open the rings and start the threads. Fails (and starts nothing) when an interface
    /// is missing or a ring cannot be opened.
    pub fn start(
        engine: Arc<Engine>,
        services: Arc<ArcSwap<ServiceTable>>,
        opts: &DatapathOptions,
    ) -> io::Result<Datapath> {
        let mut rtnl = Rtnl::new()?;
        let notifications = Notifications::subscribe()?;
        let fib = resolve_reals(&mut rtnl, &services.load(), Duration::from_secs(1))?;
        let interfaces = select_interfaces(&fib, &opts.interfaces)?;
        let fib = Arc::new(ArcSwap::from_pointee(fib));
        let workers = if opts.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.workers
        };
        let clock = Clock::new();

        // Open every ring or socket before starting any thread, so a failure leaves nothing
        // running.
        let mut gro_restore = GroRestore::default();
        let mut xdp_fallback = None;
        let (rx_per_worker, xdp) = match opts.xdp {
            None => (open_rings(&interfaces, workers, opts.ring)?, None),
            Some(want) => {
                match open_xdp(
                    &interfaces,
                    workers,
                    want,
                    opts.fast_flows,
                    &services.load(),
                    &fib.load(),
                    &mut gro_restore.0,
                ) {
                    Ok((rx, prog)) => (rx, Some(Arc::new(Mutex::new(prog)))),
                    Err(e) => {
                        drop(std::mem::take(&mut gro_restore));
                        if want != XdpWant::Auto {
                            return Err(e);
                        }
                        let why = format!("XDP unavailable, receiving with AF_PACKET rings: {e}");
                        tracing::warn!("{why}");
                        xdp_fallback = Some(why);
                        (open_rings(&interfaces, workers, opts.ring)?, None)
                    }
                }
            }
        };
        let mut rx_per_worker: Vec<(Rx, TxBatch)> = rx_per_worker
            .into_iter()
            .map(|rx| Ok((rx, TxBatch::new(opts.tx_batch)?)))
            .collect::<io::Result<_>>()?;

        let stop = Arc::new(AtomicBool::new(false));
        let (solicit_tx, solicit_rx) = sync_channel::<Solicit>(1024);
        let mut dp = Datapath {
            stop: stop.clone(),
            threads: Vec::new(),
            counters: Vec::new(),
            heartbeats: Vec::new(),
            fib: fib.clone(),
            services: services.clone(),
            engine: engine.clone(),
            clock,
            interfaces,
            xdp: xdp.clone(),
            fast: None,
            xdp_fallback,
            _gro_restore: gro_restore,
        };
        let mut last_seen = None;
        if let (Some(x), Some(queue)) = (&xdp, &opts.fast_path) {
            let (maps, events) = {
                let mut p = x.lock().expect("xdp lock");
                (p.fast_maps(), p.take_events())
            };
            // veth delivers XDP_TX frames only to a peer that runs XDP itself: on veth the
            // fast path sends a frame back out of its own interface with a redirect.
            let redirect_self = dp
                .interfaces
                .iter()
                .filter(|(_, name)| crate::io::ethtool::driver(name).is_ok_and(|d| d == "veth"))
                .map(|(i, _)| *i)
                .collect();
            dp.fast = Some(FastPath::start(
                maps,
                events,
                queue.clone(),
                engine.clone(),
                services.clone(),
                fib.clone(),
                clock,
                redirect_self,
            )?);
            last_seen = Some(LastSeen::new(maps, clock));
        }
        for (i, (rx, tx)) in rx_per_worker.drain(..).enumerate() {
            let counters = Arc::new(WorkerCounters::default());
            let heartbeat = Arc::new(AtomicU64::new(clock.millis()));
            dp.counters.push(counters.clone());
            dp.heartbeats.push(heartbeat.clone());
            let worker = Worker {
                rx,
                tx,
                engine: engine.clone(),
                services: services.clone(),
                fib: fib.clone(),
                counters,
                heartbeat,
                solicit: solicit_tx.clone(),
                stop: stop.clone(),
                clock,
                state: WorkerState::new(i as u16, workers as u16),
            };
            dp.threads.push(
                std::thread::Builder::new()
                    .name(format!("dp-worker-{i}"))
                    .spawn(move || worker.run())?,
            );
        }
        let resolver = Resolver {
            rtnl,
            notifications,
            fib,
            solicit: solicit_rx,
            engine,
            services,
            stop,
            clock,
            xdp,
            last_seen,
        };
        dp.threads.push(
            std::thread::Builder::new()
                .name("dp-resolver".into())
                .spawn(move || resolver.run())?,
        );
        Ok(dp)
    }

    /// How each interface receives.
    pub fn rx_paths(&self) -> Vec<RxPath> {
        let xdp = self.xdp.as_ref().map(|x| x.lock().expect("xdp lock"));
        self.interfaces
            .iter()
            .map(|(ifindex, name)| {
                let mode = xdp.as_ref().and_then(|x| {
                    x.attached()
                        .iter()
                        .find(|(i, _, _)| i == ifindex)
                        .map(|(_, _, m)| *m)
                });
                let queues = crate::io::xdp::rx_queues(name).unwrap_or(1);
                RxPath {
                    interface: name.clone(),
                    xdp: mode,
                    queues,
                    sockets: if mode.is_some() {
                        queues.min(MAX_SOCKET_QUEUES)
                    } else {
                        0
                    },
                }
            })
            .collect()
    }

    /// The counters of all workers added up, with what the XDP program kept from them:
    /// frames it left to the kernel itself are received and passed as the workers' passed
    /// frames are, so `rx` and `passed` mean the same with and without XDP.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::sum(&self.counters);
        let x = self.xdp_stats();
        t.rx += x.passed + x.no_socket + x.fast_in + x.fast_out;
        t.passed += x.passed + x.no_socket;
        t.forwarded_in += x.fast_in;
        t.forwarded_out += x.fast_out;
        t
    }

    /// The XDP program's counters (all zero without it).
    pub fn xdp_stats(&self) -> XdpStats {
        self.xdp
            .as_ref()
            .map(|x| x.lock().expect("xdp lock").stats())
            .unwrap_or_default()
    }

    /// True when every worker looped within `max_age`.
    pub fn healthy(&self, max_age: Duration) -> bool {
        let now = self.clock.millis();
        self.heartbeats
            .iter()
            .all(|h| now.saturating_sub(h.load(Ordering::Relaxed)) <= max_age.as_millis() as u64)
    }

    /// Stop the threads and wait for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The fast path's manager empties the flow map and stops before the program (whose
        // maps it writes) goes; the program's links close with it (the kernel detaches
        // it); GRO comes back on when `_gro_restore` drops, after it.
        self.fast = None;
        self.xdp = None;
    }
}

/// Counters of all workers added up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub rx: u64,
    pub passed: u64,
    pub forwarded_in: u64,
    pub forwarded_out: u64,
    pub icmp_forwarded: u64,
    pub emitted: u64,
    pub icmp_sent: u64,
    pub icmp_limited: u64,
    pub icmp_unroutable: u64,
    pub new_conns: u64,
    pub picked_up: u64,
    pub tx_errors: u64,
    pub tx_waits: u64,
    pub ring_drops: u64,
    pub drops: [u64; crate::engine::DropReason::COUNT],
}

impl Totals {
    /// Add up the counters of `workers`.
    pub fn sum(workers: &[Arc<WorkerCounters>]) -> Totals {
        let mut t = Totals::default();
        for c in workers {
            let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
            t.rx += l(&c.rx);
            t.passed += l(&c.passed);
            t.forwarded_in += l(&c.forwarded_in);
            t.forwarded_out += l(&c.forwarded_out);
            t.icmp_forwarded += l(&c.icmp_forwarded);
            t.emitted += l(&c.emitted);
            t.icmp_sent += l(&c.icmp_sent);
            t.icmp_limited += l(&c.icmp_limited);
            t.icmp_unroutable += l(&c.icmp_unroutable);
            t.new_conns += l(&c.new_conns);
            t.picked_up += l(&c.picked_up);
            t.tx_errors += l(&c.tx_errors);
            t.tx_waits += l(&c.tx_waits);
            t.ring_drops += l(&c.ring_drops);
            for (sum, d) in t.drops.iter_mut().zip(&c.drops) {
                *sum += l(d);
            }
        }
        t
    }
}

/// The real servers' next hops that the FIB cannot resolve yet.
fn unresolved_reals(fib: &Fib, services: &ServiceTable) -> Vec<Solicit> {
    let mut out = Vec::new();
    for svc in services.services() {
        for b in svc.sched.backends() {
            if let Err(FibMiss::NoNeighbour { ifindex, addr }) = fib.resolve(*b.addr.ip()) {
                if !out.contains(&(ifindex, addr)) {
                    out.push((ifindex, addr));
                }
            }
        }
    }
    out
}

/// Dump the FIB, solicit the real servers' next hops and wait (up to `limit`) until they
/// resolve, so the first packet of the first flow finds them. A real server that does not
/// answer ARP is left to the resolver thread (and to the health checks).
fn resolve_reals(rtnl: &mut Rtnl, services: &ServiceTable, limit: Duration) -> io::Result<Fib> {
    let start = Instant::now();
    let mut fib = rtnl.dump_fib()?;
    let missing = unresolved_reals(&fib, services);
    for &(ifindex, addr) in &missing {
        if let Err(e) = rtnl.solicit(ifindex, addr) {
            tracing::debug!(ifindex, %addr, "neighbour solicit failed: {e}");
        }
    }
    while !missing.is_empty() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
        fib = rtnl.dump_fib()?;
        if unresolved_reals(&fib, services).is_empty() {
            break;
        }
    }
    Ok(fib)
}

fn select_interfaces(fib: &Fib, names: &[String]) -> io::Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    if names.is_empty() {
        for i in fib.interfaces() {
            if i.up && !i.loopback {
                out.push((i.ifindex, i.name.clone()));
            }
        }
        if out.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no interface is up for the datapath",
            ));
        }
    } else {
        for n in names {
            let i = fib.interface_by_name(n).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("datapath interface {n} does not exist"),
                )
            })?;
            out.push((i.ifindex, i.name.clone()));
        }
    }
    out.sort();
    Ok(out)
}

/// A worker's way out of a neighbour miss: ask the kernel for that one entry (it may have
/// learnt it after the FIB snapshot was taken, e.g. from the ARP request a new client just
/// sent for the VIP), and otherwise have the resolver solicit it. Answers are kept briefly so
/// that a burst to one unresolved address costs one netlink request, not one per packet; the
/// cache is reserved up front and cleared when full, so it never allocates.
struct MissHandler {
    rtnl: Option<Rtnl>,
    cache: FastMap<(u32, Ipv4Addr), (Option<Mac>, Instant)>,
    solicit: SyncSender<Solicit>,
}

const MISS_CACHE: usize = 1024;
const MISS_TTL: Duration = Duration::from_millis(100);

impl MissHandler {
    fn new(solicit: SyncSender<Solicit>) -> MissHandler {
        let mut cache = FastMap::default();
        cache.reserve(MISS_CACHE);
        MissHandler {
            rtnl: Rtnl::new().ok(),
            cache,
            solicit,
        }
    }
}

impl NeighbourMiss for MissHandler {
    fn on_miss(&mut self, ifindex: u32, addr: Ipv4Addr) -> Option<Mac> {
        if let Some((mac, at)) = self.cache.get(&(ifindex, addr)) {
            if at.elapsed() < MISS_TTL {
                return *mac;
            }
        }
        let mac = self
            .rtnl
            .as_mut()
            .and_then(|r| r.get_neighbour(ifindex, addr).ok().flatten());
        if mac.is_none() {
            match self.solicit.try_send((ifindex, addr)) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
        if self.cache.len() >= MISS_CACHE {
            self.cache.clear();
        }
        self.cache.insert((ifindex, addr), (mac, Instant::now()));
        mac
    }
}

/// A worker's receive side.
enum Rx {
    /// AF_PACKET rings, one per datapath interface.
    Rings(Vec<RxRing>),
    /// AF_XDP sockets, one per (interface, receive queue) this worker owns, sharing one UMEM.
    Xsk(XskRx),
}

struct XskRx {
    umem: Umem,
    socks: Vec<Xsk>,
    descs: Vec<XdpDesc>,
    /// Drops each socket's kernel counters showed at the last look.
    seen_drops: Vec<u64>,
}

impl Rx {
    fn fds(&self) -> Vec<RawFd> {
        match self {
            Rx::Rings(r) => r.iter().map(|r| r.as_raw_fd()).collect(),
            Rx::Xsk(x) => x.socks.iter().map(|s| s.as_raw_fd()).collect(),
        }
    }

    /// Frames the kernel could not hand over since the last call.
    fn take_drops(&mut self) -> u64 {
        match self {
            Rx::Rings(rings) => rings
                .iter()
                .filter_map(|r| r.take_stats().ok())
                .map(|(_, d)| u64::from(d))
                .sum(),
            Rx::Xsk(x) => {
                let mut new = 0;
                for (s, seen) in x.socks.iter().zip(x.seen_drops.iter_mut()) {
                    if let Ok(st) = s.stats() {
                        new += st.drops().saturating_sub(*seen);
                        *seen = st.drops();
                    }
                }
                new
            }
        }
    }
}

/// The AF_PACKET receive side: one ring per interface for each worker, the rings of one
/// interface in a fanout group when there are several workers.
fn open_rings(
    interfaces: &[(u32, String)],
    workers: usize,
    ring: RingConfig,
) -> io::Result<Vec<Rx>> {
    let fanout_base = (std::process::id() as u16).wrapping_mul(31);
    let mut out = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut rings = Vec::with_capacity(interfaces.len());
        for &(ifindex, ref name) in interfaces {
            let group = (workers > 1).then(|| fanout_base.wrapping_add(ifindex as u16));
            let r = RxRing::open(ifindex, ring, group).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open an AF_PACKET ring on {name}: {e}"),
                )
            })?;
            rings.push(r);
        }
        out.push(Rx::Rings(rings));
    }
    Ok(out)
}

/// The most receive queues of one interface that get a socket (the program's map width).
const MAX_SOCKET_QUEUES: u32 = crate::io::xdp::MAX_QUEUES;

/// The XDP receive side: the program loaded, an AF_XDP socket on every receive queue of
/// every interface (queue q to worker q mod workers), the maps filled, and only then the
/// program attached, so that the first frame it steers finds its socket.
#[allow(clippy::too_many_arguments)]
fn open_xdp(
    interfaces: &[(u32, String)],
    workers: usize,
    want: XdpWant,
    fast_flows: u32,
    services: &ServiceTable,
    fib: &Fib,
    gro_restore: &mut Vec<String>,
) -> io::Result<(Vec<Rx>, XdpProgram)> {
    if interfaces.len() > crate::io::xdp::MAX_IFACES as usize {
        return Err(io::Error::other(format!(
            "the XDP datapath takes at most {} interfaces",
            crate::io::xdp::MAX_IFACES
        )));
    }
    // First whether this build has the program at all.
    let mut prog = XdpProgram::load(fast_flows)?;
    for (ifindex, name) in interfaces {
        let mtu = fib.interface(*ifindex).map_or(1500, |i| i.mtu);
        if mtu as usize + 14 > xsk::MAX_FRAME as usize {
            return Err(io::Error::other(format!(
                "the MTU of {name} is {mtu}: the XDP receive path takes frames up to {} bytes \
                 (MTU {}); lower the MTU or set [datapath] xdp = \"off\"",
                xsk::MAX_FRAME,
                xsk::MAX_FRAME - 14
            )));
        }
    }
    let mut plan: Vec<Vec<(u32, u32, u32)>> = vec![Vec::new(); workers];
    for (slot, (ifindex, name)) in interfaces.iter().enumerate() {
        let slot = slot as u32;
        prog.register_interface(*ifindex, slot)?;
        prog.add_tx_port(*ifindex)?;
        let queues = crate::io::xdp::rx_queues(name).map_err(|e| {
            io::Error::other(format!("cannot count the receive queues of {name}: {e}"))
        })?;
        if queues > MAX_SOCKET_QUEUES {
            tracing::warn!(
                interface = %name,
                queues,
                "only the first {MAX_SOCKET_QUEUES} receive queues get a datapath socket"
            );
        }
        for q in 0..queues.min(MAX_SOCKET_QUEUES) {
            plan[q as usize % workers].push((slot, *ifindex, q));
        }
    }
    let mut out = Vec::with_capacity(workers);
    for socks_plan in plan {
        let chunks = socks_plan.len() as u32 * (xsk::RX_RING + xsk::FILL_RING) + RX_BATCH as u32;
        let mut umem = Umem::new(chunks).map_err(|e| {
            io::Error::other(format!("cannot allocate the AF_XDP packet buffers: {e}"))
        })?;
        let mut socks: Vec<Xsk> = Vec::with_capacity(socks_plan.len());
        for (slot, ifindex, q) in socks_plan {
            let name = &interfaces[slot as usize].1;
            let sock = Xsk::open(&umem, ifindex, q, socks.first()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open an AF_XDP socket on {name} queue {q}: {e}"),
                )
            })?;
            prog.set_socket(slot, q, sock.as_raw_fd())?;
            socks.push(sock);
        }
        for s in &mut socks {
            s.refill(&mut umem, xsk::FILL_RING);
        }
        let n = socks.len();
        out.push(Rx::Xsk(XskRx {
            umem,
            socks,
            descs: Vec::with_capacity(RX_BATCH),
            seen_drops: vec![0; n],
        }));
    }
    prog.sync(&Steering::build(services, fib))?;
    for (ifindex, name) in interfaces {
        let mode = prog.attach(*ifindex, name, want)?;
        tracing::info!(interface = %name, mode = mode.as_str(), "XDP attached");
        if mode == AttachMode::Generic {
            // Generic XDP runs after GRO: a merged super-frame does not fit a socket's
            // chunk, so merging stops while the program runs (and comes back after).
            match crate::io::ethtool::gro(name) {
                Ok(true) => match crate::io::ethtool::set_gro(name, false) {
                    Ok(()) => gro_restore.push(name.clone()),
                    Err(e) => {
                        tracing::warn!(interface = %name, "cannot turn GRO off for generic XDP: {e}")
                    }
                },
                Ok(false) => {}
                Err(e) => tracing::warn!(interface = %name, "cannot read GRO: {e}"),
            }
        }
    }
    Ok((out, prog))
}

struct Worker {
    rx: Rx,
    tx: TxBatch,
    engine: Arc<Engine>,
    services: Arc<ArcSwap<ServiceTable>>,
    fib: Arc<ArcSwap<Fib>>,
    counters: Arc<WorkerCounters>,
    heartbeat: Arc<AtomicU64>,
    solicit: SyncSender<Solicit>,
    stop: Arc<AtomicBool>,
    clock: Clock,
    state: WorkerState,
}

/// Blocks drained from one ring before looking at the next, so one busy interface cannot
/// starve the others.
const BLOCKS_PER_TURN: usize = 4;

/// One frame through the engine, and the verdict into the transmit batch.
#[allow(clippy::too_many_arguments)]
#[inline]
fn handle(
    engine: &Engine,
    tables: &Tables<'_>,
    now: u32,
    counters: &WorkerCounters,
    misses: &mut MissHandler,
    state: &mut WorkerState,
    tx: &mut TxBatch,
    data: &mut [u8],
    meta: RxMeta,
    vnet: VnetHdr,
) {
    let mut ctx = WorkerCtx {
        counters,
        neighbours: misses,
        out: tx,
        state,
    };
    match engine.process(data, meta, tables, now, &mut ctx) {
        Verdict::Forward { ifindex } => tx.push(data, vnet, ifindex),
        Verdict::ForwardInsert { ifindex, insert } => tx.push_insert(
            data,
            vnet,
            ifindex,
            usize::from(insert.at),
            insert.as_slice(),
        ),
        // Emitted: what replaces the frame is queued already. Pass of a frame the XDP
        // program handed over: the kernel never got it (see the program's rules: such a
        // frame is one the kernel would drop too).
        Verdict::Emitted | Verdict::Pass | Verdict::Drop(_) => {}
    }
}

impl Worker {
    fn run(mut self) {
        let fds = self.rx.fds();
        let mut pollfds = Vec::with_capacity(fds.len());
        let mut last_stats = Instant::now();
        let mut misses = MissHandler::new(self.solicit.clone());
        let mut block = Block {
            frames: Vec::with_capacity(RX_BATCH),
        };
        while !self.stop.load(Ordering::Relaxed) {
            self.heartbeat.store(self.clock.millis(), Ordering::Relaxed);
            let now = self.clock.now();
            let services = self.services.load();
            let fib = self.fib.load();
            let tables = Tables {
                services: &services,
                fib: &fib,
            };
            let engine = &*self.engine;
            let counters = &*self.counters;
            let state = &mut self.state;
            let tx = &mut self.tx;
            let mut busy = false;
            match &mut self.rx {
                Rx::Rings(rings) => {
                    for ring in rings.iter_mut() {
                        let ingress = ring.ifindex();
                        for _ in 0..BLOCKS_PER_TURN {
                            // Frames are held and prefetched for, then run (see `Block`).
                            let drained = ring.drain_block(
                                &mut block,
                                |block, frame| block.hold(engine, &tables, frame, ingress),
                                |block| {
                                    block.run(|data, meta, vnet| {
                                        handle(
                                            engine,
                                            &tables,
                                            now,
                                            counters,
                                            &mut misses,
                                            state,
                                            tx,
                                            data,
                                            meta,
                                            vnet,
                                        )
                                    });
                                    tx.flush()
                                },
                            );
                            if drained.is_none() {
                                break;
                            }
                            busy = true;
                        }
                    }
                }
                Rx::Xsk(x) => {
                    for sock in x.socks.iter_mut() {
                        let ingress = sock.ifindex;
                        x.descs.clear();
                        if sock.receive(&mut x.descs, RX_BATCH as u32) == 0 {
                            continue;
                        }
                        busy = true;
                        prefetch_descs(engine, &tables, &x.umem, &x.descs);
                        for d in &x.descs {
                            // SAFETY: the kernel handed this chunk over in a receive
                            // descriptor; it goes back to a fill ring only below, after the
                            // flush that ends every use of it.
                            let data = unsafe { x.umem.frame(d.addr, d.len) };
                            // Frames from XDP carry no offload state: complete checksums, no
                            // GSO (a wire's frames; veth peers lose GSO when XDP is on).
                            handle(
                                engine,
                                &tables,
                                now,
                                counters,
                                &mut misses,
                                state,
                                tx,
                                data,
                                RxMeta {
                                    ingress,
                                    ..RxMeta::default()
                                },
                                VnetHdr::default(),
                            );
                        }
                        tx.flush();
                        for d in &x.descs {
                            x.umem.recycle(d.addr);
                        }
                        sock.refill(&mut x.umem, xsk::FILL_RING);
                    }
                }
            }
            if last_stats.elapsed() >= Duration::from_millis(500) {
                last_stats = Instant::now();
                WorkerCounters::add(&self.counters.ring_drops, self.rx.take_drops());
                self.counters
                    .tx_errors
                    .store(self.tx.errors, Ordering::Relaxed);
                self.counters
                    .tx_waits
                    .store(self.tx.waits, Ordering::Relaxed);
            }
            if !busy {
                // A frame wakes the poll at once; the timeout only bounds how stale the
                // heartbeat and the counters get.
                let _ = wait_readable(&fds, &mut pollfds, 20);
            }
        }
    }
}

// ---- connection-table prefetch for a block of frames ------------------------------------
//
// A new flow's first table lookup misses the cache (perf: new flows stalled on it). So the
// engine's `prefetch` (`engine/prefetch.rs`) runs over every frame of a block before the
// engine processes the first: the block's misses are in flight together instead of one
// after the other. For the AF_XDP arm that is a first pass over the descriptors; the ring
// arm gets its frames one at a time from `drain_block`, so they are held (`Block`) and run
// in its `done`, before the flush, as the ring's contract allows: its frames stay valid,
// and untouched by the kernel, until `done` returns.

/// The frames of one ring block between `drain_block`'s `each` and its `done`.
struct Block {
    frames: Vec<(std::ptr::NonNull<u8>, usize, RxMeta, VnetHdr)>,
}

impl Block {
    /// Notes a frame of the block and prefetches the table cell it will need.
    fn hold(&mut self, engine: &Engine, tables: &Tables<'_>, frame: &mut RxFrame, ingress: u32) {
        let vnet = frame.vnet();
        let meta = rx_meta(vnet, frame.truncated(), frame.status(), ingress);
        let data = frame.data_mut();
        engine.prefetch(data, tables);
        if let Some(p) = std::ptr::NonNull::new(data.as_mut_ptr()) {
            self.frames.push((p, data.len(), meta, vnet));
        }
    }

    /// Runs `f` on each held frame, in the order received, and forgets them.
    fn run(&mut self, mut f: impl FnMut(&mut [u8], RxMeta, VnetHdr)) {
        for (p, len, meta, vnet) in self.frames.drain(..) {
            // SAFETY: `hold` took these from frames of the block whose `done` is running:
            // each is its own slot or buffer, valid until `done` returns, and nothing else
            // refers to it now (the transmit batch only after `f` pushed it).
            let data = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len) };
            f(data, meta, vnet);
        }
    }
}

/// The first pass over an AF_XDP batch: prefetch for each frame.
fn prefetch_descs(engine: &Engine, tables: &Tables<'_>, umem: &Umem, descs: &[XdpDesc]) {
    for d in descs {
        // SAFETY: as in the loop that follows: a chunk the kernel handed over; read only
        // here, and the slice is gone before the next one is made.
        let data = unsafe { umem.frame(d.addr, d.len) };
        engine.prefetch(data, tables);
    }
}

/// What the ring's headers say about a frame.
fn rx_meta(vnet: VnetHdr, truncated: bool, status: u32, ingress: u32) -> RxMeta {
    RxMeta {
        csum_partial: vnet.needs_csum(),
        csum_verified: vnet.data_valid(),
        gso: vnet.is_gso(),
        gso_size: if vnet.is_gso() { vnet.gso_size } else { 0 },
        gso_udp: vnet.gso_type & !VnetHdr::GSO_ECN == VnetHdr::GSO_UDP_L4,
        truncated,
        vlan: status & crate::io::afpacket::TP_STATUS_VLAN_VALID != 0,
        ingress,
    }
}

struct Resolver {
    /// The XDP program whose maps follow the service table and the FIB.
    xdp: Option<Arc<Mutex<XdpProgram>>>,
    /// The fast path's last packet of a flow, for the sweep.
    last_seen: Option<LastSeen>,
    rtnl: Rtnl,
    notifications: Notifications,
    fib: Arc<ArcSwap<Fib>>,
    solicit: Receiver<Solicit>,
    engine: Arc<Engine>,
    services: Arc<ArcSwap<ServiceTable>>,
    stop: Arc<AtomicBool>,
    clock: Clock,
}

/// Full re-dump even without notifications (they can be lost under load: ENOBUFS).
const FIB_REFRESH: Duration = Duration::from_secs(1);
/// At most one re-dump per this interval when notifications pour in.
const FIB_COALESCE: Duration = Duration::from_millis(20);
const SWEEP_EVERY: Duration = Duration::from_millis(100);
const SWEEP_BUDGET: usize = 65_536;
/// A neighbour is solicited at most this often.
const SOLICIT_EVERY: Duration = Duration::from_millis(500);

impl Resolver {
    /// Bring the XDP program's maps up to date when the service table or the FIB changed
    /// (`synced`: the snapshots last applied).
    fn sync_xdp(&self, synced: &mut (usize, usize)) {
        let Some(xdp) = &self.xdp else {
            return;
        };
        let services = self.services.load();
        let fib = self.fib.load();
        let now = (Arc::as_ptr(&services) as usize, Arc::as_ptr(&fib) as usize);
        if now == *synced {
            return;
        }
        let want = Steering::build(&services, &fib);
        match xdp.lock().expect("xdp lock").sync(&want) {
            Ok(()) => *synced = now,
            Err(e) => tracing::warn!("cannot update the XDP program's tables: {e}"),
        }
    }

    fn run(mut self) {
        let mut last_dump = Instant::now();
        let mut last_sweep = Instant::now();
        let mut synced = (0usize, 0usize);
        let mut dirty = false;
        let mut solicited: Vec<(Solicit, Instant)> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            if self.notifications.wait(Duration::from_millis(20)) {
                dirty = true;
            }
            let mut want: HashSet<Solicit> = HashSet::new();
            while let Ok(s) = self.solicit.try_recv() {
                want.insert(s);
            }
            // Real servers are next hops the datapath will need: keep them resolved ahead
            // of the first packet, as a router keeps its static next hops.
            want.extend(unresolved_reals(&self.fib.load(), &self.services.load()));
            solicited.retain(|(_, at)| at.elapsed() < SOLICIT_EVERY);
            for s in want {
                if solicited.iter().any(|(x, _)| *x == s) {
                    continue;
                }
                tracing::debug!(ifindex = s.0, addr = %s.1, "soliciting neighbour");
                if let Err(e) = self.rtnl.solicit(s.0, s.1) {
                    tracing::debug!(ifindex = s.0, addr = %s.1, "neighbour solicit failed: {e}");
                }
                solicited.push((s, Instant::now()));
                dirty = true;
            }
            if (dirty && last_dump.elapsed() >= FIB_COALESCE) || last_dump.elapsed() >= FIB_REFRESH
            {
                match self.rtnl.dump_fib() {
                    Ok(fib) => {
                        self.fib.store(Arc::new(fib));
                        dirty = false;
                    }
                    Err(e) => tracing::warn!("cannot read routes and neighbours: {e}"),
                }
                last_dump = Instant::now();
            }
            self.sync_xdp(&mut synced);
            if last_sweep.elapsed() >= SWEEP_EVERY {
                let now = self.clock.now();
                match &self.last_seen {
                    Some(ls) => self
                        .engine
                        .conns
                        .sweep_with(now, SWEEP_BUDGET, &mut |e| ls.of(e)),
                    None => self.engine.conns.sweep(now, SWEEP_BUDGET),
                };
                self.engine.persist.sweep(now, SWEEP_BUDGET);
                last_sweep = Instant::now();
            }
        }
    }
}
