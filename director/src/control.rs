//! The control socket: the `director` CLI's way into the daemon.
//!
//! A unix stream socket, mode 0600 (root only). One request per connection: a JSON line
//! `{"command": "stats"}` (an [`api::Request`]), answered by one JSON line
//! `{"ok": true, "data": VIEW}` or `{"ok": false, "error": "…"}`, VIEW being the request's view
//! struct in [`crate::api`]. The views are read-only snapshots of the datapath's counters and
//! tables; nothing here is on the packet path.
//!
//! Each connection is read and answered on a thread of its own (at most [`MAX_CLIENTS`] at
//! once; one more is told the daemon is busy), with a deadline for the request line and one
//! for the answer, so an idle or slow client holds only its own connection and never delays
//! another. Requests are handled one at a time (a reload and a weight change do not
//! interleave), which takes microseconds but for a reload.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use forwarder::engine::{DropReason, Engine, ServiceTable, WorkerCounters};
use forwarder::io::datapath::Clock;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::Value;

use crate::api::{self, Request};
use crate::events::{unix_seconds, EventLog};
use crate::health::Checker;
use crate::reload::Reloader;
use crate::runtime::{Admin, Runtime};
use forwarder::io::datapath::Totals;
use std::collections::HashMap;
use syncd::io::{Destination, Syncd};
use vrrp::driver::Vrrp;

/// What the control socket can show: shared handles on the running daemon's parts (the
/// daemon builds it; this module never sees the daemon itself).
#[derive(Clone)]
pub struct Views {
    pub(crate) node: String,
    pub(crate) counters: Vec<Arc<WorkerCounters>>,
    pub(crate) services: Arc<ArcSwap<ServiceTable>>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) clock: Clock,
    pub(crate) interfaces: Vec<String>,
    pub(crate) datapath: Arc<forwarder::io::datapath::Datapath>,
    pub(crate) vrrp: Option<Arc<Vrrp>>,
    pub(crate) syncd: Option<Arc<Syncd>>,
    pub(crate) events: EventLog,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) checker: Arc<Checker>,
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) rates: Arc<Rates>,
    pub(crate) started: std::time::Instant,
    pub(crate) config_path: PathBuf,
}

/// Datapath rates over the last second, for `director status`.
#[derive(Default)]
pub struct Rates {
    inner: std::sync::Mutex<RatesInner>,
}

#[derive(Default)]
struct RatesInner {
    last: Option<(std::time::Instant, Totals)>,
    per_second: [f64; 4],
}

impl Rates {
    /// Take a sample of the totals; the rates are the difference to the previous sample.
    pub(crate) fn sample(&self, t: Totals) {
        let now = std::time::Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, prev)) = &inner.last {
            let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
            let drops = |t: &Totals| t.drops.iter().sum::<u64>();
            let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            inner.per_second = [
                d(t.rx, prev.rx),
                d(
                    t.forwarded_in + t.forwarded_out + t.emitted,
                    prev.forwarded_in + prev.forwarded_out + prev.emitted,
                ),
                d(t.new_conns, prev.new_conns),
                d(drops(&t), drops(prev)),
            ];
        }
        inner.last = Some((now, t));
    }

    /// Received frames, forwarded frames, new connections and drops per second.
    pub fn per_second(&self) -> [f64; 4] {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .per_second
    }
}

impl Views {
    /// What the Prometheus endpoint renders.
    pub fn metrics_input(&self) -> crate::metrics::MetricsInput {
        crate::metrics::MetricsInput {
            stats: self.stats(),
            services: self.services(),
            vrrp: self.vrrp(),
            sync: self.sync(),
        }
    }

    /// `director status`: the overview.
    fn status(&self) -> api::StatusView {
        let (services, mut config) = self.runtime.status_view();
        config.path = self.config_path.display().to_string();
        let vrrp = self.vrrp.as_ref().map_or_else(Vec::new, |v| {
            v.snapshot()
                .instances
                .iter()
                .map(|i| {
                    let s = &i.status;
                    api::StatusInstance {
                        name: s.name.clone(),
                        state: s.state.as_str().to_string(),
                        priority: s.effective_priority,
                        configured_priority: s.configured_priority,
                        master: s.master,
                    }
                })
                .collect()
        });
        let session = match (&self.syncd, self.syncd.as_ref().and_then(|s| s.snapshot())) {
            (None, _) => None,
            (Some(_), None) => Some(api::StatusSyncSession {
                peer: "unknown".into(),
                lag_ms: None,
                replicas: 0,
                resync_complete: false,
            }),
            (Some(_), Some(snap)) => {
                let st = &snap.status;
                Some(api::StatusSyncSession {
                    peer: match &st.peer {
                        None => "unknown",
                        Some(p) if p.up => "up",
                        Some(_) => "down",
                    }
                    .into(),
                    lag_ms: st.ack_rtt.map(|d| d.as_secs_f64() * 1e3),
                    replicas: self.engine.conns.replicas(),
                    resync_complete: st.resync_complete,
                })
            }
        };
        let [rx, fwd, new_conns, drops] = self.rates.per_second();
        api::StatusView {
            node: self.node.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            config,
            standalone: self.vrrp.is_none(),
            vrrp,
            services,
            sync: api::StatusSync {
                enabled: self.syncd.is_some(),
                session,
            },
            datapath: api::StatusDatapath {
                workers: self.counters.len(),
                connections: self.engine.conns.len(),
                rx_pps: rx,
                forwarded_pps: fwd,
                new_conns_per_s: new_conns,
                drops_per_s: drops,
                receive: self.receive(),
            },
        }
    }

    /// How each datapath interface receives: AF_PACKET rings, or the XDP program (mode in
    /// force) with AF_XDP sockets.
    fn receive(&self) -> Vec<api::ReceivePath> {
        self.datapath
            .rx_paths()
            .iter()
            .map(|p| match p.xdp {
                None => api::ReceivePath::AfPacket {
                    interface: p.interface.clone(),
                },
                Some(mode) => api::ReceivePath::Xdp {
                    interface: p.interface.clone(),
                    xdp_mode: mode.as_str().to_string(),
                    queues: p.queues,
                    sockets: p.sockets,
                },
            })
            .collect()
    }

    fn vrrp(&self) -> api::VrrpView {
        let Some(vrrp) = &self.vrrp else {
            return api::VrrpView {
                standalone: true,
                instances: Vec::new(),
                engine: None,
            };
        };
        let snap = vrrp.snapshot();
        let instances = snap
            .instances
            .iter()
            .map(|i| {
                let s = &i.status;
                let c = &s.counters;
                api::InstanceView {
                    name: s.name.clone(),
                    interface: i.interface.clone(),
                    vrid: s.vrid,
                    state: s.state.as_str().to_string(),
                    priority: s.effective_priority,
                    configured_priority: s.configured_priority,
                    primary: i.primary,
                    master: s.master,
                    master_priority: s.master_priority,
                    master_adver_interval_ms: s.master_adver_interval.as_secs_f64() * 1000.0,
                    group: i.group.clone(),
                    vips: i.vips.iter().map(|(a, l)| format!("{a}/{l}")).collect(),
                    demoted: s.demoted,
                    promoted: s.promoted,
                    tracks_down: s.tracks_down.clone(),
                    last_transition: s.last_transition.as_ref().map(|(_, from, to, cause)| {
                        api::Transition {
                            time: i.last_transition_at.map(unix_seconds),
                            from: from.as_str().to_string(),
                            to: to.as_str().to_string(),
                            cause: cause.to_string(),
                        }
                    }),
                    counters: api::InstanceCounters {
                        adverts_rx: c.adverts_rx,
                        adverts_tx: c.adverts_tx,
                        priority_zero_rx: c.priority_zero_rx,
                        priority_zero_tx: c.priority_zero_tx,
                        became_master: c.became_master,
                        became_backup: c.became_backup,
                        faults: c.faults,
                        dual_master: c.dual_master,
                        garps: c.garps,
                        wrong_version: c.wrong_version,
                        interval_mismatch: c.interval_mismatch,
                        addr_mismatch: c.addr_mismatch,
                        own: c.own,
                        uncorroborated: c.uncorroborated,
                        group_held: c.group_held,
                    },
                }
            })
            .collect();
        api::VrrpView {
            standalone: false,
            instances,
            engine: Some(api::VrrpEngine {
                malformed: snap
                    .malformed
                    .iter()
                    .map(|(k, n)| (k.to_string(), *n))
                    .collect(),
                foreign: snap.foreign,
                realtime: snap.realtime,
                late_wakeups_1ms: snap.late_wakeups_1ms,
                late_wakeups_5ms: snap.late_wakeups_5ms,
            }),
        }
    }

    /// `director sync`: the session with the peer, the replicas, lag, repairs, resyncs and
    /// refused datagrams.
    fn sync(&self) -> api::SyncView {
        let Some(syncd) = &self.syncd else {
            return api::SyncView {
                enabled: false,
                starting: false,
                session: None,
            };
        };
        let replicas = self.engine.conns.replicas();
        let total = self.engine.conns.len();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let (destination, mode) = match syncd.destination {
            Destination::Peer(a) => (a.into(), "unicast"),
            Destination::Group(a) => (a.into(), "multicast"),
        };
        let r = &syncd.replicas;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let replica_side = api::ReplicaCounters {
            installed: l(&r.installed),
            deleted: l(&r.deleted),
            swept: l(&r.swept),
            adopted: l(&r.adopted),
            unknown_service: l(&r.unknown_service),
            unknown_real: l(&r.unknown_real),
            invalid: l(&r.invalid),
            table_full: l(&r.full),
            shard_mismatch: l(&r.shard_mismatch),
        };
        let Some(snap) = syncd.snapshot() else {
            return api::SyncView {
                enabled: true,
                starting: true,
                session: None,
            };
        };
        let st = &snap.status;
        let s = &st.stats;
        let run = |(n, d): (u64, std::time::Duration)| api::ResyncRun {
            entries: n,
            ms: ms(d),
        };
        api::SyncView {
            enabled: true,
            starting: false,
            session: Some(api::SyncSession {
                node: syncd.node_name.clone(),
                node_id: format!("{:08x}", st.node),
                epoch: st.epoch,
                interface: syncd.interface.clone(),
                destination,
                mode: mode.into(),
                peer: match &st.peer {
                    None => api::SyncPeer {
                        state: "unknown".into(),
                        heard: None,
                    },
                    Some(p) => api::SyncPeer {
                        state: if p.up { "up" } else { "down" }.into(),
                        heard: Some(api::PeerHeard {
                            node_id: format!("{:08x}", p.node),
                            epoch: p.epoch,
                            last_heard_ms: ms(p.last_heard),
                            behind: p.behind,
                            holdback: p.holdback as u64,
                            resyncing: p.resyncing,
                        }),
                    },
                },
                connections: api::SyncConnections {
                    total,
                    replicas,
                    local: total - replicas,
                },
                replicas: replica_side,
                stream: api::SyncStream {
                    seq: st.seq,
                    acked: st.acked,
                    unacked: st.seq.saturating_sub(st.acked),
                    pending: st.pending as u64,
                    ring: st.ring as u64,
                    lag_ms: st.ack_rtt.map(ms),
                    lag_max_ms: snap.lag_ms.max_ms,
                },
                resync: api::SyncResync {
                    complete: st.resync_complete,
                    received: st.last_resync_rx.map(run),
                    sent: st.last_resync_tx.map(run),
                    sending: st.sending_resync.map(run),
                    sent_count: s.resyncs_tx,
                    received_count: s.resyncs_rx,
                },
                counters: api::SyncCounters {
                    tx_datagrams: s.tx_datagrams,
                    tx_bytes: s.tx_bytes,
                    tx_entries: s.tx_entries,
                    rx_datagrams: s.rx_datagrams,
                    rx_bytes: s.rx_bytes,
                    applied: s.applied,
                    heartbeats_rx: s.heartbeats_rx,
                    gaps: s.gaps,
                    repaired: s.repaired,
                    nacks_tx: s.nacks_tx,
                    nacks_rx: s.nacks_rx,
                    retransmits: s.retransmits,
                    holdback_full: s.holdback_full,
                    queue_dropped: snap.queue_dropped,
                    tx_errors: snap.tx_errors,
                    rx_errors: snap.rx_errors,
                },
                refused: api::SyncRefused {
                    auth: s.auth_failures,
                    truncated: s.truncated,
                    bad_magic: s.bad_magic,
                    version: s.bad_version,
                    malformed: s.malformed,
                    replayed: s.replayed,
                    unknown_node: s.unknown_node,
                    total: s.refused(),
                },
            }),
        }
    }

    fn switchover(&self, promote: bool) -> Result<api::VrrpView, String> {
        let vrrp = self
            .vrrp
            .as_ref()
            .ok_or("VRRP is not configured on this node (no [vrrp] in its config)")?;
        let what = if promote { "promote" } else { "demote" };
        tracing::info!("operator {what}");
        self.events.push("vrrp", "operator", what);
        if promote {
            vrrp.promote();
        } else {
            vrrp.demote();
        }
        Ok(self.vrrp())
    }

    fn stats(&self) -> api::StatsView {
        // What the XDP fast path forwarded, into the real servers' counters first.
        self.flush_fast_counters();
        let t = self.datapath.totals();
        let drops = DropReason::ALL
            .iter()
            .map(|r| (r.label().to_string(), t.drops[*r as usize]))
            .collect();
        let table = self.engine.conns.counters();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let xdp = self.datapath.xdp.as_ref().map(|_| {
            let x = self.datapath.xdp_stats();
            api::XdpStats {
                passed: x.passed,
                slow_path: x.slow_path,
                no_socket: x.no_socket,
                fast_in: x.fast_in,
                fast_out: x.fast_out,
                fast_path: self.datapath.fast.as_ref().map(|f| {
                    let c = &f.counters;
                    api::FastPathStats {
                        flows: l(&c.flows),
                        installed: l(&c.installed),
                        removed: l(&c.removed),
                        map_full: l(&c.map_full),
                        no_route: l(&c.no_route),
                        adopted: l(&c.adopted),
                    }
                }),
            }
        });
        api::StatsView {
            node: self.node.clone(),
            datapath: api::DatapathStats {
                workers: self.counters.len(),
                interfaces: self.interfaces.clone(),
                rx: t.rx,
                passed: t.passed,
                forwarded_in: t.forwarded_in,
                forwarded_out: t.forwarded_out,
                icmp_forwarded: t.icmp_forwarded,
                emitted: t.emitted,
                icmp_sent: t.icmp_sent,
                icmp_limited: t.icmp_limited,
                icmp_unroutable: t.icmp_unroutable,
                new_conns: t.new_conns,
                picked_up: t.picked_up,
                tx_errors: t.tx_errors,
                tx_waits: t.tx_waits,
                ring_drops: t.ring_drops,
                drops,
                xdp,
            },
            connections: api::TableStats {
                count: self.engine.conns.len(),
                capacity: self.engine.conns.capacity(),
                inserts: table.inserts,
                deletes: table.deletes,
                expired: table.expired,
                full: table.full,
            },
            services: self.services(),
        }
    }

    fn flush_fast_counters(&self) {
        if let Some(f) = &self.datapath.fast {
            f.flush_counters(&self.engine);
        }
    }

    fn services(&self) -> Vec<api::ServiceView> {
        self.flush_fast_counters();
        let probes: HashMap<(String, std::net::SocketAddrV4), api::LastCheck> = self
            .checker
            .snapshot()
            .into_iter()
            .filter_map(|t| {
                let l = t.last.as_ref()?;
                let last = api::LastCheck {
                    ok: l.ok,
                    detail: l.detail.clone(),
                    ms: l.took.as_secs_f64() * 1e3,
                    time: unix_seconds(l.at),
                };
                Some(((t.key.service.clone(), t.key.real), last))
            })
            .collect();
        self.runtime
            .services_view(&|service, real| probes.get(&(service.to_string(), real)).cloned())
    }

    fn conns(
        &self,
        limit: usize,
        service: Option<&str>,
        client: Option<std::net::IpAddr>,
    ) -> api::ConnsView {
        let now = self.clock.now();
        let services = self.services.load();
        let mut list = Vec::new();
        let mut total = 0usize;
        let fast = self.datapath.fast.as_ref().map(|f| f.maps);
        self.engine.conns.snapshot(|e| {
            let name = services
                .get(e.service())
                .map(|s| s.config.name.as_str())
                .unwrap_or("");
            if service.is_some_and(|want| want != name)
                || client.is_some_and(|want| want != std::net::IpAddr::V4(*e.client().ip()))
            {
                return;
            }
            total += 1;
            if list.len() < limit {
                let mut conn = api::ConnView {
                    protocol: e.proto().as_str().to_string(),
                    client: e.client().into(),
                    vip: e.vip().into(),
                    real: e.real().into(),
                    state: e.state().as_str().to_string(),
                    expires_in: u64::from(e.expiry().saturating_sub(now)),
                    origin: if e.is_replica() { "replica" } else { "local" }.into(),
                    service: name.to_string(),
                    packets_in: u64::from(e.packets_in()),
                    packets_out: u64::from(e.packets_out()),
                    // FULLNAT: the director's side toward the real server, LIP:lport.
                    local: e.local().map(Into::into),
                    path: None,
                    fast_packets: None,
                    fast_bytes: None,
                };
                // Which path its packets take, and what the XDP fast path forwarded of it
                // (those packets never reach the engine's counters above).
                if let Some(maps) = fast {
                    conn.path = Some(if e.is_fast() { "xdp" } else { "engine" }.into());
                    if e.is_fast() {
                        let (packets, bytes) = forwarder::io::fastpath::flow_counters(maps, e);
                        conn.fast_packets = Some(packets);
                        conn.fast_bytes = Some(bytes);
                    }
                }
                list.push(conn);
            }
        });
        api::ConnsView {
            total,
            shown: list.len(),
            connections: list,
        }
    }

    /// `director real weight|enable|disable|drain`: the runtime builds a new service table
    /// with the change, swapped in for the workers' next block.
    fn real_admin(
        &self,
        service: &str,
        real: std::net::SocketAddr,
        action: api::AdminAction,
    ) -> Result<api::RealAck, String> {
        let real = v4_real(real)?;
        let admin = match action {
            api::AdminAction::Enable => Admin::Enabled,
            api::AdminAction::Disable => Admin::Disabled,
            api::AdminAction::Drain => Admin::Drained,
        };
        let out = self.runtime.set_admin(service, real, admin)?;
        // A disabled real server is not checked; an enabled one is again.
        self.checker.update(self.runtime.targets());
        Ok(out)
    }

    fn handle(&self, req: Request) -> Result<Value, String> {
        fn view<T: serde::Serialize>(v: T) -> Result<Value, String> {
            serde_json::to_value(v).map_err(|e| format!("cannot encode the answer: {e}"))
        }
        match req {
            Request::Stats => view(self.stats()),
            Request::Services => view(self.services()),
            Request::Conns {
                limit,
                service,
                client,
            } => view(self.conns(limit, service.as_deref(), client)),
            Request::RealWeight {
                service,
                real,
                weight,
            } => {
                let real = v4_real(real)?;
                tracing::info!(service, %real, weight, "operator set a real server's weight");
                view(self.runtime.set_weight(&service, real, u32::from(weight))?)
            }
            Request::RealAdmin {
                service,
                real,
                action,
            } => view(self.real_admin(&service, real, action)?),
            Request::Status => view(self.status()),
            Request::Reload => view(self.reloader.reload().map(|a| api::ReloadView {
                generation: a.generation,
                changes: a.changes,
                warnings: a.warnings,
            })?),
            Request::Vrrp => view(self.vrrp()),
            Request::Sync => view(self.sync()),
            Request::Demote => view(self.switchover(false)?),
            Request::Promote => view(self.switchover(true)?),
            Request::Events { limit } => view(self.events.view(limit)),
        }
    }
}

/// Real servers are IPv4 for now.
fn v4_real(real: std::net::SocketAddr) -> Result<std::net::SocketAddrV4, String> {
    match real {
        std::net::SocketAddr::V4(a) => Ok(a),
        std::net::SocketAddr::V6(a) => Err(format!(
            "bad real server address {a} (real servers are IPv4 ADDR:PORT)"
        )),
    }
}

/// The listening socket and its thread.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Connections being answered (each on its own thread, holding the views).
    busy: Arc<std::sync::atomic::AtomicUsize>,
}

/// Listen on `path` (replacing a stale socket) and answer requests on a thread.
pub fn serve(path: &Path, views: Views) -> std::io::Result<ControlServer> {
    ControlListener::bind(path)?.serve(views, Arc::default())
}

/// The control socket, bound but not yet answering: the daemon binds it before it touches the
/// system, so a socket it cannot have stops the start while there is nothing to undo.
/// Dropped unserved, it removes its socket file.
pub struct ControlListener {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl ControlListener {
    /// Binds `path` (mode 0600), replacing a stale socket file nobody answers on; refused
    /// with `AddrInUse` when a daemon answers there.
    pub fn bind(path: &Path) -> std::io::Result<ControlListener> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "directord is already running: another daemon answers on this socket",
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let this = ControlListener {
            path: path.to_path_buf(),
            listener: Some(listener),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(this)
    }

    /// Starts answering requests from `views`. The thread adds one to `loops` every time
    /// round, at least every `liveness::BEAT` while it waits, so the daemon's monitor can
    /// tell it is alive.
    pub fn serve(mut self, views: Views, loops: Arc<AtomicU64>) -> std::io::Result<ControlServer> {
        let listener = self
            .listener
            .take()
            .expect("a listener is served once, by value");
        serve_on(listener, self.path.clone(), views, loops)
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Connections answered at once.
pub const MAX_CLIENTS: usize = 16;
/// How long a client has to send its request line, and the answer to be written.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

fn serve_on(
    listener: UnixListener,
    path: PathBuf,
    views: Views,
    loops: Arc<AtomicU64>,
) -> std::io::Result<ControlServer> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let views = Arc::new(views);
    let handling = Arc::new(std::sync::Mutex::new(()));
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let busy_out = busy.clone();
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || loop {
            loops.fetch_add(1, Ordering::Relaxed);
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            let wait = PollTimeout::try_from(crate::liveness::BEAT).unwrap_or(PollTimeout::MAX);
            let ready = poll(
                &mut [PollFd::new(listener.as_fd(), PollFlags::POLLIN)],
                wait,
            );
            if !matches!(ready, Ok(n) if n > 0) {
                continue;
            }
            let Ok((stream, _)) = listener.accept() else {
                continue;
            };
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            let _ = stream.set_read_timeout(Some(CLIENT_DEADLINE));
            let _ = stream.set_write_timeout(Some(CLIENT_DEADLINE));
            if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                busy.fetch_sub(1, Ordering::AcqRel);
                let _ = reply(
                    &stream,
                    Err(format!(
                        "busy: {MAX_CLIENTS} requests in progress; try again"
                    )),
                );
                continue;
            }
            let (views, handling, mine) = (views.clone(), handling.clone(), busy.clone());
            let spawned = std::thread::Builder::new()
                .name("control-client".into())
                .spawn(move || {
                    let _ = answer(stream, &views, &handling);
                    mine.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                busy.fetch_sub(1, Ordering::AcqRel);
            }
        })?;
    Ok(ControlServer {
        path,
        stop,
        thread: Some(thread),
        busy: busy_out,
    })
}

fn answer(
    stream: UnixStream,
    views: &Views,
    handling: &std::sync::Mutex<()>,
) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let result = Request::parse(&line).and_then(|req| {
        let _one_at_a_time = handling.lock().unwrap_or_else(|e| e.into_inner());
        views.handle(req)
    });
    reply(&stream, result)
}

fn reply(stream: &UnixStream, result: Result<Value, String>) -> std::io::Result<()> {
    let reply = match result {
        Ok(data) => api::Reply {
            ok: true,
            data: Some(data),
            error: None,
        },
        Err(e) => api::Reply {
            ok: false,
            data: None,
            error: Some(e),
        },
    };
    let mut w = stream;
    let line = serde_json::to_string(&reply)
        .unwrap_or_else(|e| format!(r#"{{"ok":false,"error":"cannot encode the answer: {e}"}}"#));
    writeln!(w, "{line}")
}

impl ControlServer {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The clients still being answered hold the views (the datapath among them): wait
        // for them, each bounded by its deadline, so that the daemon's teardown runs after.
        let until = std::time::Instant::now() + 2 * CLIENT_DEADLINE;
        while self.busy.load(Ordering::Acquire) > 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

/// Why a request to the daemon failed; the CLI maps these to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// no daemon answers on the control socket
    #[error("no daemon answers on {0}: {1}")]
    NoDaemon(PathBuf, std::io::Error),
    /// the daemon reported an error
    #[error("{0}")]
    Daemon(String),
    /// the exchange itself failed
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Send one request and return the daemon's `data`, as it came (what `director --json`
/// prints); [`ask`] reads it into its view.
pub fn request(path: &Path, req: &Request) -> Result<Value, ClientError> {
    let stream =
        UnixStream::connect(path).map_err(|e| ClientError::NoDaemon(path.to_path_buf(), e))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = &stream;
    let line = serde_json::to_string(req)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    writeln!(w, "{line}")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let reply: api::Reply = serde_json::from_str(&line)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if reply.ok {
        Ok(reply.data.unwrap_or(Value::Null))
    } else {
        Err(ClientError::Daemon(
            reply.error.unwrap_or_else(|| "unknown error".to_string()),
        ))
    }
}

/// Send one request and read the answer into its view `T`.
pub fn ask<T: serde::de::DeserializeOwned>(path: &Path, req: &Request) -> Result<T, ClientError> {
    let data = request(path, req)?;
    serde_json::from_value(data).map_err(|e| {
        ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the daemon's answer to {} does not read as its view: {e}",
                req.command()
            ),
        ))
    })
}
