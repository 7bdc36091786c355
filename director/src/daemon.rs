//! `directord`: assemble the datapath and the VRRP engine from a validated config and run
//! them until told to stop.
//!
//! Order of start-up: the sync key (a bad one stops the start before anything runs), counters
//! and tables, then the interception rules (so the kernel stops answering VIP traffic before
//! the datapath takes it over), then the workers, then connection sync (so replicas arrive
//! before the box can own a VIP), then VRRP (so the box never owns a VIP before it can
//! forward; with `[sync]` it starts with preemption held until the peer's table is here),
//! then the control socket. Shutdown reverses it: VRRP first (a master resigns with
//! priority 0 and drops its VIPs, so the peer takes over after Skew_Time), then sync, then
//! the datapath, then the interception rules.
//!
//! Fate sharing: a monitor thread feeds the datapath's heartbeat to VRRP as the tracked
//! object `datapath` (weight 0): when a worker dies or stalls for [`DATAPATH_MAX_STALL`], every
//! instance goes to FAULT and a master resigns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use forwarder::conntrack::ConnTable;
use forwarder::engine::{Engine, EngineObserver};
use forwarder::io::datapath::{Datapath, DatapathOptions};
use forwarder::io::fastpath::FastQueue;
use forwarder::io::nft;
use forwarder::io::xdp::XdpWant;
use forwarder::sched::PersistTable;
use forwarder::stats::RealRegistry;
use nix::sys::signal::{SigSet, Signal};

use syncd::adapter::ChangeQueue;
use syncd::io::{SyncConfig, Syncd};
use syncd::session::Event as SyncEvent;
use syncd::wire::Claim;
use vrrp::driver::{DriverConfig, Notice, Vrrp, TRACK_DATAPATH};
use vrrp::instance::Track;
use vrrp::instance::{PeerClaim, State as VrrpState};

use crate::config::Config;
use crate::control::Rates;
use crate::control::{ControlListener, ControlServer};
use crate::events::EventLog;
use crate::health::Checker;
use crate::instance::InstanceLock;
use crate::liveness::{Change, Liveness, Watch};
use crate::monitor::{HoldEnd, Policy};
use crate::reload::Reloader;
use crate::runtime::{quorum_track, Runtime, REAL_SLOTS};

/// A datapath whose workers have not looped for this long is dead: VRRP faults.
pub const DATAPATH_MAX_STALL: Duration = Duration::from_secs(1);
/// How often the monitor looks at the datapath's heartbeat.
const MONITOR_PERIOD: Duration = Duration::from_millis(100);
/// How long the VRRP, sync and health threads may go without a loop (each loops at least
/// every `liveness::BEAT`) before the box counts as half-alive.
const THREAD_MAX_STALL: Duration = Duration::from_secs(3);
/// The control thread's bound: it answers one request at a time and may wait up to 5 s for a
/// slow client's request line.
const CONTROL_MAX_STALL: Duration = Duration::from_secs(15);
/// The tracked object every instance has beside the datapath: all the daemon's threads make
/// progress (`liveness`). Lost = FAULT.
pub const TRACK_THREADS: &str = "threads";

/// Connection-table shards: enough that workers rarely meet on one lock. A constant, not a
/// setting: both nodes of a pair must have the same count for FULLNAT replicas to land in
/// the shard their replies look in (with the same shard key, derived from the sync key).
const CONN_SHARDS: usize = 256;
/// Table changes that may wait for the sync thread; beyond, the peer gets a resync.
const SYNC_QUEUE: usize = 1 << 20;

/// The running daemon.
pub struct Daemon {
    config: Config,
    datapath: Arc<Datapath>,
    vrrp: Option<Arc<Vrrp>>,
    syncd: Option<Arc<Syncd>>,
    events: EventLog,
    runtime: Arc<Runtime>,
    checker: Arc<Checker>,
    reloader: Arc<Reloader>,
    rates: Arc<Rates>,
    started: std::time::Instant,
    monitor: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    control: Option<ControlServer>,
    metrics: Option<crate::metrics::MetricsServer>,
    /// Held for the daemon's whole life, released last.
    instance: InstanceLock,
}

/// What a start has changed on the box so far. A failed start drops it, which undoes each
/// step in reverse (sync, health checks, datapath with its XDP program, nftables table);
/// a start that succeeds hands each piece to the `Daemon` with `take`.
#[derive(Default)]
struct StartGuard {
    nft: bool,
    datapath: Option<Arc<Datapath>>,
    checker: Option<Arc<Checker>>,
    syncd: Option<Arc<Syncd>>,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(s) = self.syncd.take() {
            stop_syncd(s);
        }
        if let Some(c) = self.checker.take() {
            stop_checker(c);
        }
        if let Some(d) = self.datapath.take() {
            stop_datapath(d);
        }
        if self.nft {
            if let Err(e) = nft::remove() {
                tracing::warn!("cannot remove the interception rules: {e}");
            }
        }
    }
}

/// The VRRP engine's config: the file's `[vrrp]` (already the engine's types) with the
/// daemon's own tracked objects beside each instance's interfaces, all weight 0 (down =
/// FAULT): the datapath's heartbeat, the other threads' progress, and the instance's
/// services' quorum (see runtime). With `[sync]`, preemption is held until the peer's table
/// is here.
pub fn vrrp_config(config: &Config) -> Option<DriverConfig> {
    let v = config.vrrp.as_ref()?;
    Some(v.driver(config.sync.is_some(), |instance| {
        [
            TRACK_DATAPATH.to_string(),
            TRACK_THREADS.into(),
            quorum_track(instance),
        ]
        .into_iter()
        .map(|name| Track { name, weight: 0 })
        .collect()
    }))
}

/// Records a VRRP notice in the event log.
fn record(events: &EventLog, notice: Notice) {
    match notice {
        Notice::Transition {
            instance,
            from,
            to,
            cause,
            priority,
        } => events.push(
            "vrrp",
            instance,
            format!("{from} -> {to} (priority {priority}): {cause}"),
        ),
        Notice::DualMaster {
            instance,
            from,
            priority,
        } => events.push(
            "vrrp",
            instance,
            format!("dual master: {from} advertised priority {priority}; stayed master and re-announced"),
        ),
        Notice::Uncorroborated {
            instance,
            from,
            priority,
            why,
        } => events.push(
            "vrrp",
            instance,
            format!("advert from {from} with priority {priority} ignored: {why}"),
        ),
        Notice::GroupHeld { instance, by } => events.push(
            "vrrp",
            instance,
            format!("master silent, but sync group member {by} hears a live master: stayed BACKUP"),
        ),
    }
}

/// This node's VRRP instances as the sync link tells the peer (IPv4 instances only).
fn local_claims(v: &vrrp::driver::Snapshot) -> Vec<Claim> {
    v.instances
        .iter()
        .filter_map(|i| match i.primary {
            std::net::IpAddr::V4(a) => Some(Claim {
                vrid: i.status.vrid,
                state: i.status.state.as_u8(),
                priority: i.status.effective_priority,
                addr: a.octets(),
            }),
            std::net::IpAddr::V6(_) => None,
        })
        .collect()
}

/// The peer's claims as VRRP takes them, by VRID (unknown states left out).
fn pair_peer(claims: &[Claim]) -> Vec<(u8, PeerClaim)> {
    claims
        .iter()
        .filter_map(|c| {
            Some((
                c.vrid,
                PeerClaim {
                    addr: std::net::IpAddr::V4(std::net::Ipv4Addr::from(c.addr)),
                    state: VrrpState::from_u8(c.state)?,
                    priority: c.priority,
                },
            ))
        })
        .collect()
}

/// Records a sync event in the event log and the log.
fn record_sync(events: &EventLog, ev: &SyncEvent) {
    let (subject, message) = match ev {
        SyncEvent::PeerUp { node, epoch } => ("peer", format!("up: node {node:08x} epoch {epoch}")),
        SyncEvent::PeerRestarted { node, epoch } => {
            ("peer", format!("restarted: node {node:08x} epoch {epoch}"))
        }
        SyncEvent::PeerDown { node } => ("peer", format!("down: node {node:08x} silent")),
        SyncEvent::ResyncStart {
            target_epoch,
            reason,
        } => (
            "resync",
            format!("sending our table to epoch {target_epoch}: {reason}"),
        ),
        SyncEvent::ResyncSent { entries, took } => (
            "resync",
            format!(
                "sent {entries} entries in {:.1} ms",
                took.as_secs_f64() * 1e3
            ),
        ),
        SyncEvent::ResyncReceiving => ("resync", "receiving the peer's table".to_string()),
        SyncEvent::ResyncReceived { entries, took } => (
            "resync",
            format!(
                "received the peer's table: {entries} entries in {:.1} ms",
                took.as_secs_f64() * 1e3
            ),
        ),
    };
    tracing::info!("sync {subject}: {message}");
    events.push("sync", subject, message);
}

/// What the monitor does for connection sync: let VRRP preempt once the resync is done.
struct PreemptHold {
    syncd: Arc<Syncd>,
    timeout: Duration,
}

/// What the monitor thread looks after.
struct Monitor {
    datapath: Arc<Datapath>,
    vrrp: Option<Arc<Vrrp>>,
    events: EventLog,
    stop: Arc<AtomicBool>,
    hold: Option<PreemptHold>,
    runtime: Arc<Runtime>,
    rates: Arc<Rates>,
    /// The other threads whose progress the box's fate hangs on, with their loop counts.
    threads: Vec<(Watch, Box<dyn Fn() -> u64 + Send>)>,
}

/// Every [`MONITOR_PERIOD`]: feeds the datapath's heartbeat and the other threads' progress
/// (`liveness`) to VRRP, releases the preemption hold once connection sync has the peer's
/// table (or the hold timed out), and pets the systemd watchdog only while the datapath and
/// every watched thread are alive (a stalled one gets the daemon restarted). Every second:
/// datapath rates, and retired real servers' slots freed. What to do when is
/// `monitor::Policy` and `liveness` (pure); this loop reads the inputs and acts.
fn monitor(m: Monitor) {
    let started = std::time::Instant::now();
    let watches: Vec<Watch> = m.threads.iter().map(|(w, _)| *w).collect();
    let mut liveness = Liveness::new(&watches, Duration::ZERO);
    let mut policy = Policy::new(
        m.hold.as_ref().map(|h| h.timeout),
        crate::sdnotify::watchdog_interval(),
    );
    // What the sync link last carried each way about the VRRP instances.
    let mut claims_sent: Option<Vec<Claim>> = None;
    let mut peer_seen: Option<Option<Vec<Claim>>> = None;
    while !m.stop.load(Ordering::Relaxed) {
        let now = started.elapsed();
        // The pair corroborates what VRRP hears over the sync link: each node tells the
        // other its instances, and VRRP believes no advert the peer contradicts.
        if let (Some(h), Some(vrrp)) = (&m.hold, &m.vrrp) {
            let mine = local_claims(&vrrp.snapshot());
            if claims_sent.as_ref() != Some(&mine) {
                h.syncd.set_claims(mine.clone());
                claims_sent = Some(mine);
            }
            let theirs = h.syncd.peer_claims();
            if peer_seen.as_ref() != Some(&theirs) {
                vrrp.set_pair_peer(theirs.as_deref().map(pair_peer));
                peer_seen = Some(theirs);
            }
        }
        if let (Some(h), Some(vrrp)) = (&m.hold, &m.vrrp) {
            match policy.hold(now, h.syncd.resync_complete()) {
                Some(HoldEnd::ResyncComplete) => {
                    tracing::info!("sync: the peer's table is here; VRRP may preempt");
                    m.events
                        .push("sync", "resync", "complete: VRRP may preempt");
                    vrrp.hold_preempt(false);
                }
                Some(HoldEnd::TimedOut(timeout)) => {
                    tracing::warn!(
                        "sync: no complete resync from the peer in {timeout:?}; VRRP may preempt anyway"
                    );
                    m.events.push(
                        "sync",
                        "resync",
                        format!("not complete after {timeout:?}: VRRP may preempt anyway"),
                    );
                    vrrp.hold_preempt(false);
                }
                None => {}
            }
        }
        let healthy = m.datapath.healthy(DATAPATH_MAX_STALL);
        if let Some(healthy) = policy.datapath(healthy) {
            if healthy {
                tracing::info!("datapath heartbeat back");
                m.events.push("datapath", "workers", "heartbeat back");
            } else {
                tracing::error!(
                    "datapath heartbeat stalled for more than {:?}: VRRP goes to FAULT",
                    DATAPATH_MAX_STALL
                );
                m.events
                    .push("datapath", "workers", "heartbeat stalled: VRRP FAULT");
            }
            if let Some(vrrp) = &m.vrrp {
                vrrp.set_track(TRACK_DATAPATH, healthy);
            }
        }
        let counts: Vec<u64> = m.threads.iter().map(|(_, count)| count()).collect();
        let changes = liveness.observe(now, &counts);
        for c in &changes {
            match c {
                Change::Stalled { name, for_ } => {
                    tracing::error!(
                        "the {name} thread has made no progress for {for_:?}: VRRP goes to \
                         FAULT and the watchdog pings stop"
                    );
                    m.events.push(
                        "daemon",
                        *name,
                        format!("stalled for {:.1} s: VRRP FAULT", for_.as_secs_f64()),
                    );
                }
                Change::Recovered { name } => {
                    tracing::info!("the {name} thread makes progress again");
                    m.events.push("daemon", *name, "progress again");
                }
            }
        }
        if !changes.is_empty() {
            if let Some(vrrp) = &m.vrrp {
                vrrp.set_track(TRACK_THREADS, liveness.all_alive());
            }
        }
        if policy.pet(now, healthy && liveness.all_alive()) {
            let _ = crate::sdnotify::watchdog();
        }
        if policy.sample(now) {
            m.rates.sample(m.datapath.totals());
            m.runtime.tick();
        }
        std::thread::sleep(MONITOR_PERIOD);
    }
}

/// The threads the monitor watches besides the datapath workers, each with its bound.
fn watched_threads(
    vrrp: Option<Arc<Vrrp>>,
    syncd: Option<Arc<Syncd>>,
    checker: Arc<Checker>,
    control: Arc<AtomicU64>,
) -> Vec<(Watch, Box<dyn Fn() -> u64 + Send>)> {
    let watch = |name, bound| Watch { name, bound };
    let mut threads: Vec<(Watch, Box<dyn Fn() -> u64 + Send>)> = Vec::new();
    if let Some(v) = vrrp {
        threads.push((watch("vrrp", THREAD_MAX_STALL), Box::new(move || v.loops())));
    }
    if let Some(s) = syncd {
        threads.push((
            watch("syncd", THREAD_MAX_STALL),
            Box::new(move || s.loops()),
        ));
    }
    threads.push((
        watch("health", THREAD_MAX_STALL),
        Box::new(move || checker.loops()),
    ));
    threads.push((
        watch("control", CONTROL_MAX_STALL),
        Box::new(move || control.load(Ordering::Relaxed)),
    ));
    threads
}

impl Daemon {
    /// Build everything and start the datapath and control socket. `path` is where
    /// `config` came from; reloads read it again.
    ///
    /// Nothing on the box changes before the instance lock is held and the control socket
    /// and metrics endpoint are bound: a second daemon started by mistake, or one whose
    /// socket or port is taken, stops with the running one untouched. A step that fails
    /// later undoes the ones before it (`StartGuard`).
    pub fn start(config: Config, path: &std::path::Path) -> Result<Daemon> {
        let started = std::time::Instant::now();
        let instance = InstanceLock::claim()?;
        let socket = config.control.socket.clone();
        let control = ControlListener::bind(&socket)
            .with_context(|| format!("cannot open the control socket {}", socket.display()))?;
        let metrics = match config.control.metrics {
            Some(addr) => Some(
                crate::metrics::MetricsListener::bind(addr)
                    .with_context(|| format!("cannot open the metrics endpoint {addr}"))?,
            ),
            None => None,
        };
        let mut guard = StartGuard::default();
        let control_loops = Arc::new(AtomicU64::new(0));
        // Read the sync key before anything runs: a bad key stops the start cleanly.
        let sync_key = match &config.sync {
            Some(s) => {
                Some(syncd::wire::Key::from_file(&s.key_file).map_err(|e| anyhow::anyhow!(e))?)
            }
            None => None,
        };
        let sync_queue = match &config.sync {
            Some(_) => Some(Arc::new(
                ChangeQueue::new(SYNC_QUEUE).context("cannot create the sync change queue")?,
            )),
            None => None,
        };
        let reals = Arc::new(RealRegistry::new(REAL_SLOTS));
        let events = EventLog::default();
        let runtime = Arc::new(Runtime::new(&config, reals.clone(), events.clone())?);
        let table = runtime.table();
        let nft_services = runtime.nft_services();
        let persist = Arc::new(PersistTable::new(
            (config.datapath.max_connections as usize / 4).max(1024),
            64,
        ));
        let mut conns = ConnTable::new(
            config.datapath.max_connections,
            CONN_SHARDS,
            config.datapath.timeouts,
            reals.clone(),
        );
        // Both nodes of a pair choose shards alike, so a FULLNAT replica's replies (to
        // LIP:lport) find it in its client's shard on the standby too.
        if let Some(key) = &sync_key {
            conns.set_shard_key(key.derive(syncd::adapter::SHARD_KEY_LABEL));
        }
        // The fast path hears of every change too (it keeps the XDP program's flow map equal
        // to the table), but only once it runs.
        let fast_queue =
            match config.xdp != crate::config::XdpMode::Off && config.datapath.fast_path {
                true => Some(Arc::new(
                    FastQueue::new().context("cannot create the fast path's change queue")?,
                )),
                false => None,
            };
        let mut downstream: Vec<Arc<dyn forwarder::conntrack::ConnObserver>> = Vec::new();
        if let Some(q) = &sync_queue {
            downstream.push(q.clone());
        }
        if let Some(q) = &fast_queue {
            downstream.push(q.clone());
        }
        conns.set_observer(Arc::new(EngineObserver {
            persist: persist.clone(),
            services: table.clone(),
            downstream: match downstream.len() {
                0 => None,
                1 => downstream.pop(),
                _ => Some(Arc::new(forwarder::conntrack::Observers(downstream))),
            },
        }));
        let engine = Arc::new(Engine::new(conns, persist, reals));

        let no_accept: Vec<std::net::Ipv4Addr> = config
            .vrrp
            .iter()
            .flat_map(|v| {
                v.instances
                    .iter()
                    .filter(|i| !i.config.accept && i.config.priority != 255)
            })
            .flat_map(|i| i.vips.iter().map(|&(addr, _)| addr))
            .collect();
        nft::apply(&nft_services, &no_accept)
            .context("cannot install the nftables interception rules")?;
        guard.nft = true;
        let opts = DatapathOptions {
            workers: config.datapath.workers,
            interfaces: config.datapath.interfaces.clone(),
            xdp: match config.xdp {
                crate::config::XdpMode::Off => None,
                crate::config::XdpMode::Auto => Some(XdpWant::Auto),
                crate::config::XdpMode::Native => Some(XdpWant::Native),
                crate::config::XdpMode::Generic => Some(XdpWant::Generic),
            },
            fast_path: fast_queue,
            fast_flows: config.datapath.max_connections.saturating_mul(2),
            ..DatapathOptions::default()
        };
        let datapath =
            Datapath::start(engine, table, &opts).context("cannot start the datapath")?;
        if let Some(why) = &datapath.xdp_fallback {
            events.push("datapath", "xdp", why.clone());
        }
        for p in datapath.rx_paths() {
            tracing::info!(
                interface = %p.interface,
                receive = p.xdp.map_or("af_packet", |m| m.as_str()),
                queues = p.queues,
                "datapath interface"
            );
        }
        tracing::info!(
            workers = datapath.counters.len(),
            interfaces = ?datapath.interfaces.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(),
            services = config.services.len(),
            "datapath running"
        );
        let datapath = Arc::new(datapath);
        guard.datapath = Some(datapath.clone());
        // Health checks from here on: from the box's own address, straight to the real
        // servers; their verdicts reach the table through the runtime.
        let checker = {
            let rt = runtime.clone();
            Arc::new(
                Checker::start(
                    runtime.targets(),
                    Box::new(move |key, health, cause| rt.set_health(key, health, cause)),
                )
                .context("cannot start the health checker")?,
            )
        };
        guard.checker = Some(checker.clone());
        let syncd = match (&config.sync, sync_key, sync_queue) {
            (Some(s), Some(key), Some(queue)) => {
                let cfg = SyncConfig {
                    interface: s.interface.clone(),
                    destination: s.destination,
                    key,
                    node_name: config.node.name.clone(),
                    session: syncd::session::Config::new(
                        syncd::io::node_id(&config.node.name),
                        syncd::io::new_epoch(),
                    ),
                };
                let log = events.clone();
                let s = Syncd::start(
                    cfg,
                    datapath.engine.clone(),
                    datapath.services.clone(),
                    datapath.clock,
                    queue,
                    Box::new(move |ev| record_sync(&log, ev)),
                )
                .context("cannot start connection sync")?;
                Some(Arc::new(s))
            }
            _ => None,
        };
        guard.syncd = syncd.clone();
        let vrrp = match vrrp_config(&config) {
            None => None,
            Some(dc) => {
                if dc.realtime_priority.is_some() {
                    if let Err(e) = vrrp::io::rt::lock_memory() {
                        tracing::warn!("cannot lock memory for the VRRP timer thread: {e}");
                    }
                }
                let log = events.clone();
                // On an error the locals above go first (declared after the guard), so the
                // guard's clones are the last ones and it can stop what they share.
                Some(Arc::new(
                    Vrrp::start(dc, Box::new(move |n| record(&log, n)))
                        .context("cannot start VRRP")?,
                ))
            }
        };
        if let Some(v) = &vrrp {
            runtime.attach_vrrp(v.clone());
        }
        let rates = Arc::new(Rates::default());
        let monitor = {
            let stop = Arc::new(AtomicBool::new(false));
            let m = Monitor {
                datapath: datapath.clone(),
                vrrp: vrrp.clone(),
                events: events.clone(),
                stop: stop.clone(),
                hold: syncd
                    .clone()
                    .zip(config.sync.as_ref())
                    .filter(|_| vrrp.is_some())
                    .map(|(syncd, c)| PreemptHold {
                        syncd,
                        timeout: c.resync_timeout,
                    }),
                runtime: runtime.clone(),
                rates: rates.clone(),
                threads: watched_threads(
                    vrrp.clone(),
                    syncd.clone(),
                    checker.clone(),
                    control_loops.clone(),
                ),
            };
            let t = std::thread::Builder::new()
                .name("dp-monitor".into())
                .spawn(move || monitor(m))
                .expect("spawn the datapath monitor");
            Some((stop, t))
        };
        let reloader = Arc::new(Reloader::new(
            path.to_path_buf(),
            runtime.clone(),
            checker.clone(),
            events.clone(),
            no_accept,
            nft_services,
        ));
        let mut daemon = Daemon {
            config,
            datapath,
            vrrp,
            syncd,
            events,
            runtime,
            checker,
            reloader,
            rates,
            started,
            monitor,
            control: None,
            metrics: None,
            instance,
        };
        // From here the daemon's own `stop` undoes everything.
        guard.nft = false;
        guard.datapath = None;
        guard.checker = None;
        guard.syncd = None;
        drop(guard);
        match daemon.serve(control, control_loops, metrics) {
            Ok(()) => Ok(daemon),
            Err(e) => {
                daemon.stop();
                Err(e)
            }
        }
    }

    /// What the control socket and the metrics show.
    fn views(&self) -> crate::control::Views {
        crate::control::Views {
            node: self.config.node.name.clone(),
            counters: self.datapath.counters.clone(),
            services: self.datapath.services.clone(),
            engine: self.datapath.engine.clone(),
            clock: self.datapath.clock,
            interfaces: self
                .datapath
                .interfaces
                .iter()
                .map(|(_, n)| n.clone())
                .collect(),
            datapath: self.datapath.clone(),
            vrrp: self.vrrp.clone(),
            syncd: self.syncd.clone(),
            events: self.events.clone(),
            runtime: self.runtime.clone(),
            checker: self.checker.clone(),
            reloader: self.reloader.clone(),
            rates: self.rates.clone(),
            started: self.started,
            config_path: self.reloader.path().to_path_buf(),
        }
    }

    /// Starts answering on the listeners bound at the start.
    fn serve(
        &mut self,
        control: ControlListener,
        control_loops: Arc<AtomicU64>,
        metrics: Option<crate::metrics::MetricsListener>,
    ) -> Result<()> {
        let views = self.views();
        self.control = Some(
            control
                .serve(views.clone(), control_loops)
                .context("cannot serve the control socket")?,
        );
        if let Some(listener) = metrics {
            let source: Arc<dyn Fn() -> String + Send + Sync> =
                Arc::new(move || crate::metrics::render(&views.metrics_input()));
            let server = listener
                .serve(source)
                .context("cannot serve the metrics endpoint")?;
            let addr = server.local_addr();
            tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics");
            self.metrics = Some(server);
        }
        Ok(())
    }

    /// Stop the control socket, resign and drop the VIPs, stop the datapath, then hand VIP
    /// traffic back to the kernel.
    pub fn stop(mut self) {
        let _ = crate::sdnotify::stopping();
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
        if let Some(c) = self.control.take() {
            c.stop();
        }
        if let Some((stop, t)) = self.monitor.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
        self.runtime.detach_vrrp();
        if let Some(v) = self.vrrp.take() {
            match Arc::try_unwrap(v) {
                Ok(v) => v.stop(),
                Err(_) => tracing::error!("VRRP engine still shared at shutdown"),
            }
        }
        // Sync after VRRP: the resigning master's last changes still reach the peer.
        if let Some(s) = self.syncd.take() {
            stop_syncd(s);
        }
        let Daemon {
            datapath,
            checker,
            reloader,
            instance,
            ..
        } = self;
        drop(reloader);
        stop_checker(checker);
        stop_datapath(datapath);
        if let Err(e) = nft::remove() {
            tracing::warn!("cannot remove the interception rules: {e}");
        }
        // Last: another daemon may start once nothing of this one is left.
        drop(instance);
    }
}

fn stop_syncd(syncd: Arc<Syncd>) {
    match Arc::try_unwrap(syncd) {
        Ok(s) => s.stop(),
        Err(_) => tracing::error!("sync thread still shared at shutdown"),
    }
}

fn stop_checker(checker: Arc<Checker>) {
    match Arc::try_unwrap(checker) {
        Ok(c) => c.stop(),
        Err(_) => tracing::error!("health checker still shared at shutdown"),
    }
}

fn stop_datapath(datapath: Arc<Datapath>) {
    match Arc::try_unwrap(datapath) {
        Ok(dp) => dp.stop(),
        Err(_) => tracing::error!("datapath still shared at shutdown"),
    }
}

/// Fate sharing for panics: a panic in any thread ends the whole process, after the usual
/// message, so that systemd restarts it and the peer takes over. Without this, a daemon that
/// lost a thread to a panic would keep its VIPs half-alive. It does what `panic = "abort"`
/// would, without changing how the library's own tests unwind. `directord` installs it
/// first thing.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        tracing::error!("thread {thread} panicked: directord aborts, to be restarted");
        eprintln!("directord: thread {thread} panicked: aborting, to be restarted");
        std::process::abort();
    }));
}

/// Signals the daemon waits for.
fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Load the config, start, and run until SIGTERM or SIGINT.
///
/// The signals are blocked before any thread starts (threads inherit the mask), so they
/// are delivered only to `sigwait` here.
pub fn run(config_path: &std::path::Path) -> Result<()> {
    let set = signal_set();
    set.thread_block()
        .context("cannot block SIGTERM, SIGINT and SIGHUP")?;
    let config = crate::config::load(config_path).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("invalid config:\n{}", lines.join("\n"))
    })?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let daemon = Daemon::start(config, config_path)?;
    let _ = crate::sdnotify::ready();
    loop {
        let Ok(sig) = set.wait() else {
            continue;
        };
        match sig {
            Signal::SIGHUP => {
                tracing::info!("SIGHUP: reloading {}", config_path.display());
                // Errors are logged and recorded by the reloader; the running config stays.
                let _ = daemon.reloader.reload();
            }
            _ => {
                tracing::info!(signal = sig.as_str(), "stopping");
                break;
            }
        }
    }
    daemon.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vrrp_gets_the_daemons_tracks_and_holds_preemption_only_with_sync() {
        let text = r#"
[node]
name = "lb-a"
[vrrp]
[[vrrp.instance]]
name = "ext"
interface = "eth0"
vrid = 51
priority = 150
vips = ["198.18.1.100/24"]
track_interfaces = [{ name = "eth2", weight = -60 }]
[[service]]
name = "web"
vip = "198.18.1.100:80"
mode = "nat"
[[service.real]]
address = "198.18.2.11:8080"
"#;
        let config = crate::config::parse(text, std::path::Path::new("t.toml")).expect("valid");
        let dc = vrrp_config(&config).expect("[vrrp]");
        assert!(!dc.hold_preempt, "no [sync]: nothing to wait for");
        let tracks: Vec<(&str, i32)> = dc.instances[0]
            .config
            .tracks
            .iter()
            .map(|t| (t.name.as_str(), t.weight))
            .collect();
        assert_eq!(
            tracks,
            [
                (vrrp::driver::track_interface("eth2").as_str(), -60),
                (TRACK_DATAPATH, 0),
                (TRACK_THREADS, 0),
                ("quorum:ext", 0),
            ]
        );
        assert_eq!(dc.realtime_priority, Some(20));
        let key = std::env::temp_dir().join(format!("director-daemon-{}.key", std::process::id()));
        std::fs::write(&key, "0123456789abcdef0123456789abcdef").expect("write a test key");
        let sync = format!(
            "[sync]\ninterface = \"eth2\"\npeer = \"198.18.3.3:8848\"\nkey_file = \"{}\"\n",
            key.display()
        );
        let with_sync = text.replace("[[service]]", &format!("{sync}[[service]]"));
        let config =
            crate::config::parse(&with_sync, std::path::Path::new("t.toml")).expect("valid");
        assert!(vrrp_config(&config).expect("[vrrp]").hold_preempt);
        let (head, tail) = text.split_at(text.find("[vrrp]").expect("a [vrrp]"));
        let standalone = format!(
            "{head}{}",
            &tail[tail.find("[[service]]").expect("a service")..]
        );
        let standalone =
            crate::config::parse(&standalone, std::path::Path::new("t.toml")).expect("valid");
        assert!(vrrp_config(&standalone).is_none());
    }
}
