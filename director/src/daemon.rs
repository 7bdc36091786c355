//! `directord`: assemble the datapath from a validated config and run it until told to stop.
//!
//! Order of start-up: counters and tables, then the interception rules (so the kernel stops
//! answering VIP traffic before the datapath takes it over), then the workers, then the
//! control socket. Shutdown reverses it and removes the interception rules.

use std::sync::Arc;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use forwarder::conntrack::ConnTable;
use forwarder::engine::{Engine, EngineObserver, ServiceTable};
use forwarder::io::datapath::{Datapath, DatapathOptions};
use forwarder::io::nft;
use forwarder::model::VirtualService;
use forwarder::sched::PersistTable;
use forwarder::stats::{RealRegistry, RealSlot};

use crate::config::Config;
use crate::control::{self, ControlServer};

/// Real-server counter slots: room for every real of the config plus those added later.
const REAL_SLOTS: usize = 4096;
/// Connection-table shards: enough that workers rarely meet on one lock.
const CONN_SHARDS: usize = 256;

/// The running daemon.
pub struct Daemon {
    pub config: Config,
    pub datapath: Datapath,
    control: Option<ControlServer>,
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
        if config.vrrp.is_some() || config.sync.is_some() {
            tracing::warn!(
                "[vrrp] and [sync] are validated but not run by this build yet; \
                 put the VIPs on the interfaces by hand"
            );
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

        nft::apply(&services).context("cannot install the nftables interception rules")?;
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
        let mut daemon = Daemon {
            config,
            datapath,
            control: None,
        };
        let socket = daemon.config.control.socket.clone();
        let server = control::serve(&socket, control::Views::of(&daemon))
            .with_context(|| format!("cannot open the control socket {}", socket.display()))?;
        daemon.control = Some(server);
        Ok(daemon)
    }

    /// Stop the control socket and the datapath, then hand VIP traffic back to the kernel.
    pub fn stop(mut self) {
        if let Some(c) = self.control.take() {
            c.stop();
        }
        let Daemon { datapath, .. } = self;
        datapath.stop();
        if let Err(e) = nft::remove() {
            tracing::warn!("cannot remove the interception rules: {e}");
        }
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
