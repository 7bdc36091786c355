//! `directord`: assemble the datapath and the VRRP engine from a validated config and run
//! them until told to stop.
//!
//! Order of start-up: counters and tables, then the interception rules (so the kernel stops
//! answering VIP traffic before the datapath takes it over), then the workers, then VRRP (so
//! the box never owns a VIP before it can forward), then the control socket. Shutdown
//! reverses it: VRRP first (a master resigns with priority 0 and drops its VIPs, so the peer
//! takes over after Skew_Time), then the datapath, then the interception rules.
//!
//! Fate sharing: a monitor thread feeds the datapath's heartbeat to VRRP as the tracked
//! object `datapath` (weight 0): when a worker dies or stalls for [`DATAPATH_MAX_STALL`], every
//! instance goes to FAULT and a master resigns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use forwarder::conntrack::ConnTable;
use forwarder::engine::{Engine, EngineObserver, ServiceTable};
use forwarder::io::datapath::{Datapath, DatapathOptions};
use forwarder::io::nft;
use forwarder::model::VirtualService;
use forwarder::sched::PersistTable;
use forwarder::stats::{RealRegistry, RealSlot};

use vrrp::driver::{DriverConfig, DriverGroup, DriverInstance, Notice, Vrrp, TRACK_DATAPATH};
use vrrp::instance::{InstanceConfig, Track};
use vrrp::router::GroupConfig;

use crate::config::{Config, VrrpVersion};
use crate::control::{self, ControlServer};
use crate::events::EventLog;

/// A datapath whose workers have not looped for this long is dead: VRRP faults.
pub const DATAPATH_MAX_STALL: Duration = Duration::from_secs(1);
/// How often the monitor looks at the datapath's heartbeat.
const MONITOR_PERIOD: Duration = Duration::from_millis(100);

/// Real-server counter slots: room for every real of the config plus those added later.
const REAL_SLOTS: usize = 4096;
/// Connection-table shards: enough that workers rarely meet on one lock.
const CONN_SHARDS: usize = 256;

/// The running daemon.
pub struct Daemon {
    pub config: Config,
    pub datapath: Arc<Datapath>,
    pub vrrp: Option<Arc<Vrrp>>,
    pub events: EventLog,
    monitor: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    control: Option<ControlServer>,
}

/// The VRRP engine's view of the config.
pub fn vrrp_config(config: &Config) -> Option<DriverConfig> {
    let v = config.vrrp.as_ref()?;
    let version = match v.version {
        VrrpVersion::V2 => vrrp::wire::Version::V2,
        VrrpVersion::V3 => vrrp::wire::Version::V3,
    };
    let instances = v
        .instances
        .iter()
        .map(|i| {
            let mut tracks: Vec<Track> = i
                .track_interfaces
                .iter()
                .map(|t| Track {
                    name: vrrp::driver::track_interface(&t.name),
                    weight: t.weight,
                })
                .collect();
            tracks.push(Track {
                name: TRACK_DATAPATH.into(),
                weight: 0,
            });
            DriverInstance {
                config: InstanceConfig {
                    name: i.name.clone(),
                    version,
                    vrid: i.vrid,
                    priority: i.priority,
                    advert_interval: v.advert_interval,
                    vips: i
                        .vips
                        .iter()
                        .map(|p| std::net::IpAddr::V4(p.addr))
                        .collect(),
                    // Filled in from the interface at start.
                    primary: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    preempt: i.preempt,
                    preempt_delay: i.preempt_delay,
                    accept: i.accept,
                    garp: v.garp.clone(),
                    tracks,
                },
                interface: i.interface.clone(),
                vips: i.vips.iter().map(|p| (p.addr, p.prefix_len)).collect(),
                unicast_peers: i.unicast_peers.clone(),
                checksum: v.checksum,
                notify: i.notify.clone(),
            }
        })
        .collect();
    let groups = v
        .groups
        .iter()
        .map(|g| DriverGroup {
            config: GroupConfig {
                name: g.name.clone(),
                members: g.instances.clone(),
            },
            notify: g.notify.clone(),
        })
        .collect();
    Some(DriverConfig {
        instances,
        groups,
        realtime_priority: v.realtime_priority,
    })
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
    }
}

/// Feeds the datapath's heartbeat to VRRP until told to stop.
fn monitor(datapath: Arc<Datapath>, vrrp: Arc<Vrrp>, events: EventLog, stop: Arc<AtomicBool>) {
    let mut last = true;
    while !stop.load(Ordering::Relaxed) {
        let healthy = datapath.healthy(DATAPATH_MAX_STALL);
        if healthy != last {
            last = healthy;
            if healthy {
                tracing::info!("datapath heartbeat back");
                events.push("datapath", "workers", "heartbeat back");
            } else {
                tracing::error!(
                    "datapath heartbeat stalled for more than {:?}: VRRP goes to FAULT",
                    DATAPATH_MAX_STALL
                );
                events.push("datapath", "workers", "heartbeat stalled: VRRP FAULT");
            }
            vrrp.set_track(TRACK_DATAPATH, healthy);
        }
        std::thread::sleep(MONITOR_PERIOD);
    }
}

/// Counter slots for each real server of each service, in order.
fn assign_slots(services: &[VirtualService]) -> Result<Vec<Vec<RealSlot>>> {
    let mut next: usize = 0;
    let mut out = Vec::with_capacity(services.len());
    for s in services {
        let mut slots = Vec::with_capacity(s.reals.len());
        for _ in &s.reals {
            anyhow::ensure!(
                next < REAL_SLOTS,
                "more than {REAL_SLOTS} real servers in all services"
            );
            slots.push(RealSlot::try_from(next).expect("REAL_SLOTS fits a u16"));
            next += 1;
        }
        out.push(slots);
    }
    Ok(out)
}

impl Daemon {
    /// Build everything and start the datapath and control socket.
    pub fn start(config: Config) -> Result<Daemon> {
        let services: Vec<VirtualService> = config.virtual_services().cloned().collect();
        for s in config.services.iter().filter(|s| s.check.is_some()) {
            tracing::warn!(
                service = %s.virtual_service.name,
                "[service.check] is validated but health checks are not run by this build yet; \
                 every real server is treated as up"
            );
        }
        if config.sync.is_some() {
            tracing::warn!("[sync] is validated but not run by this build yet");
        }
        let slots = assign_slots(&services)?;
        let reals = Arc::new(RealRegistry::new(REAL_SLOTS));
        let table = Arc::new(ArcSwap::from_pointee(ServiceTable::new(
            services.clone(),
            &slots,
        )));
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
        conns.set_observer(Arc::new(EngineObserver {
            persist: persist.clone(),
            services: table.clone(),
            downstream: None,
        }));
        let engine = Arc::new(Engine::new(conns, persist, reals));

        let no_accept: Vec<std::net::Ipv4Addr> = config
            .vrrp
            .iter()
            .flat_map(|v| {
                v.instances
                    .iter()
                    .filter(|i| !i.accept && i.priority != 255)
            })
            .flat_map(|i| i.vips.iter().map(|p| p.addr))
            .collect();
        nft::apply(&services, &no_accept)
            .context("cannot install the nftables interception rules")?;
        let opts = DatapathOptions {
            workers: config.datapath.workers,
            interfaces: config.datapath.interfaces.clone(),
            ..DatapathOptions::default()
        };
        let datapath = match Datapath::start(engine, table, &opts) {
            Ok(dp) => dp,
            Err(e) => {
                let _ = nft::remove();
                return Err(e).context("cannot start the datapath");
            }
        };
        tracing::info!(
            workers = datapath.counters.len(),
            interfaces = ?datapath.interfaces.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(),
            services = services.len(),
            "datapath running"
        );
        let datapath = Arc::new(datapath);
        let events = EventLog::default();
        let vrrp = match vrrp_config(&config) {
            None => None,
            Some(dc) => {
                if dc.realtime_priority.is_some() {
                    if let Err(e) = vrrp::io::rt::lock_memory() {
                        tracing::warn!("cannot lock memory for the VRRP timer thread: {e}");
                    }
                }
                let log = events.clone();
                match Vrrp::start(dc, Box::new(move |n| record(&log, n))) {
                    Ok(v) => Some(Arc::new(v)),
                    Err(e) => {
                        stop_datapath(datapath);
                        let _ = nft::remove();
                        return Err(e).context("cannot start VRRP");
                    }
                }
            }
        };
        let monitor = vrrp.as_ref().map(|v| {
            let stop = Arc::new(AtomicBool::new(false));
            let (dp, v, log, s) = (datapath.clone(), v.clone(), events.clone(), stop.clone());
            let t = std::thread::Builder::new()
                .name("dp-monitor".into())
                .spawn(move || monitor(dp, v, log, s))
                .expect("spawn the datapath monitor");
            (stop, t)
        });
        let mut daemon = Daemon {
            config,
            datapath,
            vrrp,
            events,
            monitor,
            control: None,
        };
        let socket = daemon.config.control.socket.clone();
        let server = control::serve(&socket, control::Views::of(&daemon))
            .with_context(|| format!("cannot open the control socket {}", socket.display()))?;
        daemon.control = Some(server);
        Ok(daemon)
    }

    /// Stop the control socket, resign and drop the VIPs, stop the datapath, then hand VIP
    /// traffic back to the kernel.
    pub fn stop(mut self) {
        if let Some(c) = self.control.take() {
            c.stop();
        }
        if let Some((stop, t)) = self.monitor.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
        if let Some(v) = self.vrrp.take() {
            match Arc::try_unwrap(v) {
                Ok(v) => v.stop(),
                Err(_) => tracing::error!("VRRP engine still shared at shutdown"),
            }
        }
        let Daemon { datapath, .. } = self;
        stop_datapath(datapath);
        if let Err(e) = nft::remove() {
            tracing::warn!("cannot remove the interception rules: {e}");
        }
    }
}

fn stop_datapath(datapath: Arc<Datapath>) {
    match Arc::try_unwrap(datapath) {
        Ok(dp) => dp.stop(),
        Err(_) => tracing::error!("datapath still shared at shutdown"),
    }
}

/// Signals the daemon waits for.
fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Load the config, start, and run until SIGTERM or SIGINT.
///
/// The signals are blocked before any thread starts (threads inherit the mask), so they
/// are delivered only to `sigwait` here.
pub fn run(config_path: &std::path::Path) -> Result<()> {
    let set = signal_set();
    // SAFETY: blocking signals for this thread (and the threads it will start).
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let config = crate::config::load(config_path).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("invalid config:\n{}", lines.join("\n"))
    })?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let daemon = Daemon::start(config)?;
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: set is initialised; sig is a valid out-pointer.
        let r = unsafe { libc::sigwait(&set, &mut sig) };
        if r != 0 {
            continue;
        }
        match sig {
            libc::SIGHUP => {
                tracing::warn!("SIGHUP: reload is not implemented yet; the running config stays")
            }
            _ => {
                tracing::info!(signal = sig, "stopping");
                break;
            }
        }
    }
    daemon.stop();
    Ok(())
}
