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
use crate::io::afpacket::{wait_readable, RingConfig, RxRing, TxBatch, VnetHdr};
use crate::io::netlink::{Notifications, Rtnl};

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
}

impl Default for DatapathOptions {
    fn default() -> Self {
        DatapathOptions {
            workers: 0,
            interfaces: Vec::new(),
            ring: RingConfig::default(),
            tx_batch: 256,
        }
    }
}

/// The engine's monotonic clock: whole seconds since the datapath started, from 1.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
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

        // Open every ring before starting any thread, so a failure leaves nothing running.
        let fanout_base = (std::process::id() as u16).wrapping_mul(31);
        let mut rings_per_worker = Vec::with_capacity(workers);
        for _ in 0..workers {
            let mut rings = Vec::with_capacity(interfaces.len());
            for &(ifindex, ref name) in &interfaces {
                let group = (workers > 1).then(|| fanout_base.wrapping_add(ifindex as u16));
                let ring = RxRing::open(ifindex, opts.ring, group).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot open an AF_PACKET ring on {name}: {e}"),
                    )
                })?;
                rings.push(ring);
            }
            rings_per_worker.push((rings, TxBatch::new(opts.tx_batch)?));
        }

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
        };
        for (i, (rings, tx)) in rings_per_worker.into_iter().enumerate() {
            let counters = Arc::new(WorkerCounters::default());
            let heartbeat = Arc::new(AtomicU64::new(clock.millis()));
            dp.counters.push(counters.clone());
            dp.heartbeats.push(heartbeat.clone());
            let worker = Worker {
                rings,
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
        };
        dp.threads.push(
            std::thread::Builder::new()
                .name("dp-resolver".into())
                .spawn(move || resolver.run())?,
        );
        Ok(dp)
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
    pub new_conns: u64,
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
            t.new_conns += l(&c.new_conns);
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

struct Worker {
    rings: Vec<RxRing>,
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

impl Worker {
    fn run(mut self) {
        let fds: Vec<RawFd> = self.rings.iter().map(|r| r.as_raw_fd()).collect();
        let mut pollfds = Vec::with_capacity(fds.len());
        let mut last_stats = Instant::now();
        let mut misses = MissHandler::new(self.solicit.clone());
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
            let mut busy = false;
            for ring in self.rings.iter_mut() {
                for _ in 0..BLOCKS_PER_TURN {
                    let drained = ring.drain_block(
                        &mut self.tx,
                        |tx, frame| {
                            let vnet = frame.vnet();
                            let meta = rx_meta(vnet, frame.truncated(), frame.status());
                            let data = frame.data_mut();
                            let mut ctx = WorkerCtx {
                                counters,
                                neighbours: &mut misses,
                                out: tx,
                                state,
                            };
                            match engine.process(data, meta, &tables, now, &mut ctx) {
                                Verdict::Forward { ifindex } => tx.push(data, vnet, ifindex),
                                Verdict::ForwardInsert { ifindex, insert } => tx.push_insert(
                                    data,
                                    vnet,
                                    ifindex,
                                    usize::from(insert.at),
                                    insert.as_slice(),
                                ),
                                // Emitted: what replaces the frame is queued already.
                                Verdict::Emitted | Verdict::Pass | Verdict::Drop(_) => {}
                            }
                        },
                        |tx| tx.flush(),
                    );
                    if drained.is_none() {
                        break;
                    }
                    busy = true;
                }
            }
            if last_stats.elapsed() >= Duration::from_millis(500) {
                last_stats = Instant::now();
                for ring in &self.rings {
                    if let Ok((_, drops)) = ring.take_stats() {
                        WorkerCounters::add(&self.counters.ring_drops, u64::from(drops));
                    }
                }
                self.counters
                    .tx_errors
                    .store(self.tx.errors, Ordering::Relaxed);
                self.counters
                    .tx_waits
                    .store(self.tx.waits, Ordering::Relaxed);
            }
            if !busy {
                // A frame wakes the poll at once (one ring slot per frame); the timeout only
                // bounds how stale the heartbeat and the counters get.
                let _ = wait_readable(&fds, &mut pollfds, 20);
            }
        }
    }
}

/// What the ring's headers say about a frame.
fn rx_meta(vnet: VnetHdr, truncated: bool, status: u32) -> RxMeta {
    RxMeta {
        csum_partial: vnet.needs_csum(),
        csum_verified: vnet.data_valid(),
        gso: vnet.is_gso(),
        gso_size: if vnet.is_gso() { vnet.gso_size } else { 0 },
        gso_udp: vnet.gso_type & !VnetHdr::GSO_ECN == VnetHdr::GSO_UDP_L4,
        truncated,
        vlan: status & crate::io::afpacket::TP_STATUS_VLAN_VALID != 0,
    }
}

struct Resolver {
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
    fn run(mut self) {
        let mut last_dump = Instant::now();
        let mut last_sweep = Instant::now();
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
            if last_sweep.elapsed() >= SWEEP_EVERY {
                let now = self.clock.now();
                self.engine.conns.sweep(now, SWEEP_BUDGET);
                self.engine.persist.sweep(now, SWEEP_BUDGET);
                last_sweep = Instant::now();
            }
        }
    }
}
