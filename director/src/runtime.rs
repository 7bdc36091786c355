//! The running state of the services: what the config file says, what the health checks
//! found, and what the operator changed at runtime, turned into the datapath's
//! [`ServiceTable`].
//!
//! Every change (a health transition, `director real …`, a reload) goes through one mutex:
//! the state is updated, a new table is built and swapped in for the workers' next block,
//! and what followed from it (a sorry server switched on, a service's quorum lost) is
//! published to VRRP and the event log. Nothing here is on the packet path.
//!
//! A reload is planned by `crate::diff` (pure) and carried out here, under the same mutex.
//!
//! Identity across reloads: a service is the same service while its VIP and protocol stay
//! (its name, mode, scheduler and real servers may change); it keeps its id, so connection
//! entries and persistence templates still name it. A real server is the same while its
//! address stays in the same service; it keeps its counter slot, health, and the operator's
//! drain/disable. A real server that leaves (reload, `on_fail = "remove"`, disable) is
//! retired: no new flows, but replies of its established NAT flows are still translated,
//! and its slot is reused only once no connection counts on it.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::api;
use anyhow::Result;
use arc_swap::ArcSwap;
use forwarder::engine::{ServiceSpec, ServiceTable};
use forwarder::model::{Mode, ProxyProtocol, RealServer, VirtualService};
use forwarder::stats::{RealRegistry, RealSlot};
use std::sync::atomic::Ordering;
use vrrp::driver::Vrrp;

use crate::config::{self, CheckKind, Config, OnFail};
use crate::diff::{self, Plan, PlannedService, ServiceChange};
use crate::events::{unix_seconds, EventLog};
use crate::health::{Health, Target, TargetKey};

/// Real-server counter slots: room for every real of the config plus those added later.
pub const REAL_SLOTS: usize = 4096;

/// The VRRP track an instance's services' quorum feeds (weight 0: lost quorum = FAULT).
pub fn quorum_track(instance: &str) -> String {
    format!("quorum:{instance}")
}

/// The operator's say over one real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    Enabled,
    /// Out of the scheduler, not checked; established flows finish.
    Disabled,
    /// Weight 0; established flows finish; still checked.
    Drained,
}

impl Admin {
    /// As the control API shows it.
    pub fn view(self) -> api::AdminState {
        match self {
            Admin::Enabled => api::AdminState::Enabled,
            Admin::Disabled => api::AdminState::Disabled,
            Admin::Drained => api::AdminState::Drained,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Admin::Enabled => "enabled",
            Admin::Disabled => "disabled",
            Admin::Drained => "drained",
        }
    }
}

#[derive(Debug, Clone)]
struct RealState {
    addr: SocketAddrV4,
    slot: RealSlot,
    /// The file's weight.
    weight: u32,
    /// `director real weight`; dropped when the file's weight changes.
    weight_override: Option<u32>,
    admin: Admin,
    /// `None`: the service has no check.
    health: Option<Health>,
    /// Why the last health transition happened.
    health_cause: Option<String>,
}

impl RealState {
    /// A real server as it joins: enabled, and up if checked (keepalived's default).
    fn new(r: &RealServer, slot: RealSlot, checked: bool) -> RealState {
        RealState {
            addr: r.addr,
            slot,
            weight: r.weight,
            weight_override: None,
            admin: Admin::Enabled,
            health: checked.then_some(Health::Up),
            health_cause: None,
        }
    }
}

#[derive(Debug)]
struct ServiceState {
    id: u16,
    config: config::Service,
    reals: Vec<RealState>,
    sorry: Option<(SocketAddrV4, RealSlot)>,
    /// Real servers that left, with live connections still counted on their slot.
    retired: Vec<(SocketAddrV4, RealSlot)>,
    /// Serving real servers (effective weight > 0) at the last publish.
    serving: usize,
    sorry_active: bool,
}

impl ServiceState {
    fn name(&self) -> &str {
        &self.config.virtual_service.name
    }

    /// What a failed check does to a real server of this service.
    fn on_fail(&self) -> OnFail {
        self.config
            .check
            .as_ref()
            .map_or(OnFail::Inhibit, |c| c.on_fail)
    }

    /// Whether the quorum (default 1, for the service's own up/down) is met.
    fn up(&self) -> bool {
        self.serving >= self.config.quorum.unwrap_or(1) as usize
    }
}

/// The weight a real server gets now; `None` = not scheduled at all.
fn effective(r: &RealState, on_fail: OnFail) -> Option<u32> {
    match r.admin {
        Admin::Disabled => return None,
        Admin::Drained => return Some(0),
        Admin::Enabled => {}
    }
    match (r.health, on_fail) {
        (Some(Health::Down), OnFail::Remove) => None,
        (Some(Health::Down), OnFail::Inhibit) => Some(0),
        _ => Some(r.weight_override.unwrap_or(r.weight)),
    }
}

struct State {
    config: Config,
    generation: u64,
    loaded_at: SystemTime,
    services: Vec<ServiceState>,
    /// Slots of removed services' reals waiting for their connections to end.
    draining_slots: Vec<RealSlot>,
    free_slots: Vec<RealSlot>,
    next_slot: usize,
    /// Per VRRP instance: whether its tracked quorums are all met, as last published.
    quorum: BTreeMap<String, bool>,
}

impl State {
    fn alloc_slot(&mut self, reals: &RealRegistry) -> Result<RealSlot, String> {
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None if self.next_slot < REAL_SLOTS => {
                self.next_slot += 1;
                RealSlot::try_from(self.next_slot - 1).expect("REAL_SLOTS fits a u16")
            }
            None => {
                return Err(format!(
                    "more than {REAL_SLOTS} real servers (including those still draining)"
                ))
            }
        };
        reals.get(slot).reset();
        Ok(slot)
    }

    fn new_service(
        &mut self,
        id: u16,
        svc: &config::Service,
        reals: &RealRegistry,
    ) -> Result<ServiceState, String> {
        let mut out = ServiceState {
            id,
            config: svc.clone(),
            reals: Vec::new(),
            sorry: None,
            retired: Vec::new(),
            serving: 0,
            sorry_active: false,
        };
        for r in &svc.virtual_service.reals {
            let slot = self.alloc_slot(reals)?;
            out.reals.push(RealState::new(r, slot, svc.check.is_some()));
        }
        if let Some(addr) = svc.sorry_server {
            out.sorry = Some((addr, self.alloc_slot(reals)?));
        }
        Ok(out)
    }
}

/// The running services; see the module docs.
pub struct Runtime {
    state: Mutex<State>,
    table: Arc<ArcSwap<ServiceTable>>,
    reals: Arc<RealRegistry>,
    events: EventLog,
    vrrp: Mutex<Option<Arc<Vrrp>>>,
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct Applied {
    pub generation: u64,
    pub changes: Vec<String>,
    pub warnings: Vec<String>,
}

impl Runtime {
    /// The state of a freshly loaded config: every real server enabled and, where checked,
    /// up until its checks say otherwise (keepalived's default).
    pub fn new(config: &Config, reals: Arc<RealRegistry>, events: EventLog) -> Result<Runtime> {
        let mut state = State {
            config: config.clone(),
            generation: 1,
            loaded_at: SystemTime::now(),
            services: Vec::new(),
            draining_slots: Vec::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            quorum: BTreeMap::new(),
        };
        for (i, svc) in config.services.iter().enumerate() {
            let id = u16::try_from(i).map_err(|_| anyhow::anyhow!("more than 65536 services"))?;
            let s = state
                .new_service(id, svc, &reals)
                .map_err(|e| anyhow::anyhow!(e))?;
            state.services.push(s);
        }
        let table = Arc::new(ArcSwap::from_pointee(build(&mut state.services)));
        Ok(Runtime {
            state: Mutex::new(state),
            table,
            reals,
            events,
            vrrp: Mutex::new(None),
        })
    }

    /// The table the datapath reads.
    pub fn table(&self) -> Arc<ArcSwap<ServiceTable>> {
        self.table.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, quorum changes go to VRRP; the current ones are sent at once.
    pub fn attach_vrrp(&self, vrrp: Arc<Vrrp>) {
        let mut st = self.lock();
        *self.vrrp.lock().unwrap_or_else(|e| e.into_inner()) = Some(vrrp);
        st.quorum.clear();
        self.publish(&mut st);
    }

    /// Build and swap the table, then report what followed from it.
    fn publish(&self, st: &mut State) {
        self.table.store(Arc::new(build(&mut st.services)));
        for s in &mut st.services {
            let active = s.sorry.is_some() && s.serving == 0;
            if active != s.sorry_active {
                s.sorry_active = active;
                let (addr, _) = s.sorry.expect("checked above");
                let msg = if active {
                    format!("no real server is up: new connections go to the sorry server {addr}")
                } else {
                    format!(
                        "real servers are back: the sorry server {addr} gets no new connections"
                    )
                };
                tracing::warn!(service = s.name(), "{msg}");
                self.events.push("service", s.name().to_string(), msg);
            }
        }
        let Some(vrrp_cfg) = &st.config.vrrp else {
            return;
        };
        let mut now: BTreeMap<String, bool> = BTreeMap::new();
        let mut why: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for inst in &vrrp_cfg.instances {
            now.insert(inst.config.name.clone(), true);
        }
        for s in &st.services {
            let (Some(quorum), Some(inst)) = (s.config.quorum, instance_of(&st.config, s)) else {
                continue;
            };
            if !s.up() {
                now.insert(inst.to_string(), false);
                why.entry(inst.to_string()).or_default().push(format!(
                    "service {} has {} of the {quorum} real servers it needs",
                    s.name(),
                    s.serving
                ));
            }
        }
        for (inst, ok) in now {
            if st.quorum.get(&inst) == Some(&ok) {
                continue;
            }
            let first = !st.quorum.contains_key(&inst);
            st.quorum.insert(inst.clone(), ok);
            let vrrp = self.vrrp.lock().unwrap_or_else(|e| e.into_inner());
            let Some(vrrp) = vrrp.as_ref() else {
                continue;
            };
            vrrp.set_track(&quorum_track(&inst), ok);
            if first && ok {
                continue;
            }
            let msg = if ok {
                "quorum met again: the instance may serve".to_string()
            } else {
                format!(
                    "quorum lost ({}): the instance goes to FAULT",
                    why.get(&inst).map(|w| w.join("; ")).unwrap_or_default()
                )
            };
            tracing::warn!(instance = %inst, "{msg}");
            self.events.push("quorum", inst, msg);
        }
    }

    /// Stop talking to VRRP (at shutdown, so the engine can be stopped).
    pub fn detach_vrrp(&self) {
        let _st = self.lock();
        self.vrrp.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// A health transition from the checker.
    pub fn set_health(&self, key: &TargetKey, health: Health, cause: &str) {
        let mut st = self.lock();
        let Some(s) = st.services.iter_mut().find(|s| s.name() == key.service) else {
            return;
        };
        let on_fail = s.on_fail();
        let Some(r) = s.reals.iter_mut().find(|r| r.addr == key.real) else {
            return;
        };
        if r.health.is_none() || r.health == Some(health) {
            return;
        }
        r.health = Some(health);
        r.health_cause = Some(cause.to_string());
        let what = match (health, on_fail) {
            (Health::Up, _) => "up: back in the scheduler".to_string(),
            (Health::Down, OnFail::Inhibit) => format!("down ({cause}): weight 0"),
            (Health::Down, OnFail::Remove) => format!("down ({cause}): removed"),
        };
        let subject = format!("{} {}", key.service, key.real);
        match health {
            Health::Up => tracing::info!("health {subject}: {what}"),
            Health::Down => tracing::warn!("health {subject}: {what}"),
        }
        self.events.push("health", subject, what);
        self.publish(&mut st);
    }

    /// `director real weight`: a runtime weight, kept until the file's weight for this real
    /// server changes; it ends a drain (not a disable).
    pub fn set_weight(
        &self,
        service: &str,
        real: SocketAddrV4,
        weight: u32,
    ) -> Result<api::RealAck, String> {
        let mut st = self.lock();
        let r = find_real(&mut st, service, real)?;
        r.weight_override = Some(weight);
        // Setting a weight ends a drain (as with ipvsadm, where a drain is weight 0).
        if r.admin == Admin::Drained {
            r.admin = Admin::Enabled;
        }
        let admin = r.admin;
        self.events.push(
            "operator",
            format!("{service} {real}"),
            format!("weight {weight}"),
        );
        self.publish(&mut st);
        Ok(api::RealAck {
            service: service.to_string(),
            real: real.into(),
            weight,
            admin: admin.view(),
        })
    }

    /// `director real enable|disable|drain`.
    pub fn set_admin(
        &self,
        service: &str,
        real: SocketAddrV4,
        admin: Admin,
    ) -> Result<api::RealAck, String> {
        let mut st = self.lock();
        let r = find_real(&mut st, service, real)?;
        r.admin = admin;
        let weight = r.weight_override.unwrap_or(r.weight);
        let msg = match admin {
            Admin::Enabled => "enabled".to_string(),
            Admin::Disabled => {
                "disabled: out of the scheduler and not checked; established flows finish"
                    .to_string()
            }
            Admin::Drained => "drained: weight 0; established flows finish".to_string(),
        };
        self.events
            .push("operator", format!("{service} {real}"), msg);
        tracing::info!(service, %real, admin = admin.as_str(), "operator changed a real server");
        self.publish(&mut st);
        let effective_weight = match admin {
            Admin::Enabled => weight,
            _ => 0,
        };
        Ok(api::RealAck {
            service: service.to_string(),
            real: real.into(),
            weight: effective_weight,
            admin: admin.view(),
        })
    }

    /// Apply a new config's services: see the module docs for what is kept. Sections other
    /// than `[[service]]` cannot change without a restart; a file that changes them is
    /// refused whole and nothing is applied. What changes is [`diff::diff`]'s plan; this
    /// carries it out (slots, health, retired real servers) and publishes the new table.
    pub fn apply(&self, new: &Config) -> Result<Applied, String> {
        let mut st = self.lock();
        let ids: Vec<u16> = st.services.iter().map(|s| s.id).collect();
        let plan = diff::diff(&st.config, &ids, new).map_err(|r| r.to_string())?;
        // Refuse before anything changes, rather than run out of slots half-way.
        let wanted = slots_wanted(&st.services, &plan, new);
        let free = st.free_slots.len() + (REAL_SLOTS - st.next_slot);
        if wanted > free {
            return Err(format!(
                "more than {REAL_SLOTS} real servers (including those still draining)"
            ));
        }
        let mut old: Vec<Option<ServiceState>> = std::mem::take(&mut st.services)
            .into_iter()
            .map(Some)
            .collect();
        for r in &plan.removed {
            let s = old[r.running].take().expect("a removed service is running");
            st.draining_slots.extend(s.reals.iter().map(|r| r.slot));
            st.draining_slots
                .extend(s.retired.iter().map(|(_, slot)| *slot));
            st.draining_slots
                .extend(s.sorry.iter().map(|(_, slot)| *slot));
        }
        let mut next = Vec::with_capacity(plan.services.len());
        for (planned, svc) in plan.services.iter().zip(&new.services) {
            next.push(match planned {
                PlannedService::Added(a) => st
                    .new_service(a.id, svc, &self.reals)
                    .expect("slots counted before applying"),
                PlannedService::Kept(k) => {
                    let mut s = old[k.running].take().expect("a kept service is running");
                    apply_service(&mut st, &self.reals, &mut s, svc, &k.changes);
                    s
                }
            });
        }
        st.services = next;
        st.config = new.clone();
        st.generation += 1;
        st.loaded_at = SystemTime::now();
        let generation = st.generation;
        self.publish(&mut st);
        Ok(Applied {
            generation,
            changes: plan.changes(),
            warnings: new.warnings.iter().map(|w| w.to_string()).collect(),
        })
    }

    /// Free the slots of retired real servers once no connection counts on them.
    pub fn tick(&self) {
        let mut st = self.lock();
        let idle = |slot: RealSlot| {
            let c = self.reals.get(slot);
            c.active.load(Ordering::Relaxed) == 0 && c.inactive.load(Ordering::Relaxed) == 0
        };
        let mut freed = Vec::new();
        let mut changed = false;
        for s in &mut st.services {
            let before = s.retired.len();
            s.retired.retain(|&(_, slot)| {
                if idle(slot) {
                    freed.push(slot);
                    false
                } else {
                    true
                }
            });
            changed |= s.retired.len() != before;
        }
        st.draining_slots.retain(|&slot| {
            if idle(slot) {
                freed.push(slot);
                false
            } else {
                true
            }
        });
        st.free_slots.extend(freed);
        if changed {
            self.table.store(Arc::new(build(&mut st.services)));
        }
    }

    /// The health checks to run: every enabled real server of every checked service.
    pub fn targets(&self) -> Vec<Target> {
        let st = self.lock();
        let mut out = Vec::new();
        for s in &st.services {
            let Some(check) = &s.config.check else {
                continue;
            };
            for r in s.reals.iter().filter(|r| r.admin != Admin::Disabled) {
                out.push(Target {
                    key: TargetKey {
                        service: s.name().to_string(),
                        real: r.addr,
                    },
                    check: check.clone(),
                });
            }
        }
        out
    }

    /// The services as the datapath's interception rules need them: every VIP, and every
    /// NAT real server whose replies the datapath translates (sorry and retired included).
    pub fn nft_services(&self) -> Vec<VirtualService> {
        let st = self.lock();
        st.services
            .iter()
            .map(|s| {
                let mut vs = s.config.virtual_service.clone();
                let mut addrs: Vec<SocketAddrV4> = s.reals.iter().map(|r| r.addr).collect();
                addrs.extend(s.sorry.iter().map(|(a, _)| *a));
                addrs.extend(s.retired.iter().map(|(a, _)| *a));
                vs.reals = addrs
                    .into_iter()
                    .map(|addr| RealServer { addr, weight: 1 })
                    .collect();
                vs
            })
            .collect()
    }

    /// The running config and when it was loaded.
    pub fn config(&self) -> (Config, u64, SystemTime) {
        let st = self.lock();
        (st.config.clone(), st.generation, st.loaded_at)
    }

    /// `director services`: each service with its real servers, their weights (effective and
    /// configured), admin state, health, and counters. `last_check` gives the latest probe of
    /// a real server, from the checker.
    pub fn services_view(
        &self,
        last_check: &dyn Fn(&str, SocketAddrV4) -> Option<api::LastCheck>,
    ) -> Vec<api::ServiceView> {
        let st = self.lock();
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let counters = |slot: RealSlot| {
            let c = self.reals.get(slot);
            api::RealCounters {
                active: u64::from(c.active.load(Ordering::Relaxed)),
                inactive: u64::from(c.inactive.load(Ordering::Relaxed)),
                conns: l(&c.conns),
                packets_in: l(&c.packets_in),
                packets_out: l(&c.packets_out),
                bytes_in: l(&c.bytes_in),
                bytes_out: l(&c.bytes_out),
            }
        };
        st.services
            .iter()
            .map(|s| {
                let vs = &s.config.virtual_service;
                let on_fail = s.on_fail();
                let reals = s
                    .reals
                    .iter()
                    .map(|r| {
                        let eff = effective(r, on_fail);
                        api::RealView {
                            address: r.addr.into(),
                            weight: eff.unwrap_or(0),
                            scheduled: eff.is_some(),
                            configured_weight: r.weight,
                            runtime_weight: r.weight_override,
                            admin: r.admin.view(),
                            health: match r.health {
                                None => api::HealthState::Unchecked,
                                Some(Health::Up) => api::HealthState::Up,
                                Some(Health::Down) => api::HealthState::Down,
                            },
                            health_cause: r.health_cause.clone(),
                            last_check: if s.config.check.is_some() {
                                last_check(vs.name.as_str(), r.addr)
                            } else {
                                None
                            },
                            counters: counters(r.slot),
                        }
                    })
                    .collect();
                let retired = s
                    .retired
                    .iter()
                    .map(|(addr, slot)| api::RetiredReal {
                        address: (*addr).into(),
                        counters: counters(*slot),
                    })
                    .collect();
                let fullnat = vs.mode == Mode::FullNat;
                api::ServiceView {
                    name: vs.name.clone(),
                    vip: vs.vip.into(),
                    protocol: vs.protocol.as_str().to_string(),
                    mode: vs.mode.as_str().to_string(),
                    scheduler: vs.scheduler.as_str().to_string(),
                    persistence: vs.persistence.as_secs(),
                    quorum: s.config.quorum,
                    healthy: s
                        .reals
                        .iter()
                        .filter(|r| r.admin != Admin::Disabled && r.health != Some(Health::Down))
                        .count(),
                    serving: s.serving,
                    up: s.up() || s.sorry_active,
                    sorry_server: s.sorry.map(|(addr, slot)| api::SorryServer {
                        address: addr.into(),
                        active: s.sorry_active,
                        counters: counters(slot),
                    }),
                    check: s.config.check.as_ref().map(|c| api::CheckView {
                        kind: match &c.kind {
                            CheckKind::Tcp => "tcp",
                            CheckKind::Http { .. } => "http",
                            CheckKind::Udp { .. } => "udp",
                            CheckKind::Exec { .. } => "exec",
                        }
                        .to_string(),
                        interval_ms: c.interval.as_millis() as u64,
                        timeout_ms: c.timeout.as_millis() as u64,
                        rise: c.rise,
                        fall: c.fall,
                        on_fail: match c.on_fail {
                            OnFail::Inhibit => "inhibit",
                            OnFail::Remove => "remove",
                        }
                        .to_string(),
                    }),
                    reals,
                    retired,
                    local_addresses: fullnat.then(|| {
                        vs.local_addresses
                            .iter()
                            .map(|a| std::net::IpAddr::V4(*a))
                            .collect()
                    }),
                    proxy_protocol: fullnat.then(|| {
                        vs.proxy_protocol.map(|p| match p {
                            ProxyProtocol::V2 => "v2".to_string(),
                        })
                    }),
                }
            })
            .collect()
    }

    /// `director status`'s per-service lines, and which config runs (its `path` left for
    /// the caller, who knows the file).
    pub fn status_view(&self) -> (Vec<api::StatusService>, api::ConfigInfo) {
        let st = self.lock();
        let services = st
            .services
            .iter()
            .map(|s| {
                let vs = &s.config.virtual_service;
                api::StatusService {
                    name: vs.name.clone(),
                    vip: vs.vip.into(),
                    protocol: vs.protocol.as_str().to_string(),
                    mode: vs.mode.as_str().to_string(),
                    up: s.up() || s.sorry_active,
                    healthy: s.serving,
                    total: s.reals.len(),
                    quorum: s.config.quorum,
                    sorry_active: s.sorry_active,
                }
            })
            .collect();
        let config = api::ConfigInfo {
            path: String::new(),
            generation: st.generation,
            loaded_at: unix_seconds(st.loaded_at),
        };
        (services, config)
    }
}

fn find_real<'a>(
    st: &'a mut State,
    service: &str,
    real: SocketAddrV4,
) -> Result<&'a mut RealState, String> {
    let s = st
        .services
        .iter_mut()
        .find(|s| s.name() == service)
        .ok_or_else(|| format!("no service named {service:?}"))?;
    s.reals
        .iter_mut()
        .find(|r| r.addr == real)
        .ok_or_else(|| format!("service {service:?} has no real server {real}"))
}

/// The VRRP instance that carries a service's VIP.
fn instance_of<'a>(config: &'a Config, s: &ServiceState) -> Option<&'a str> {
    let vip = *s.config.virtual_service.vip.ip();
    let instance = config.vrrp.as_ref()?.instance_of(vip)?;
    Some(instance.config.name.as_str())
}

/// The table for the datapath; also records how many real servers serve each service.
fn build(services: &mut [ServiceState]) -> ServiceTable {
    let mut specs = Vec::with_capacity(services.len());
    for s in services.iter_mut() {
        let on_fail = s.on_fail();
        let mut vs = s.config.virtual_service.clone();
        let mut reals = Vec::new();
        let mut slots = Vec::new();
        let mut retired: Vec<SocketAddrV4> = s.retired.iter().map(|(a, _)| *a).collect();
        for r in &s.reals {
            match effective(r, on_fail) {
                Some(weight) => {
                    reals.push(RealServer {
                        addr: r.addr,
                        weight,
                    });
                    slots.push(r.slot);
                }
                None => retired.push(r.addr),
            }
        }
        s.serving = reals.iter().filter(|r| r.weight > 0).count();
        if let Some((addr, slot)) = s.sorry {
            // Always listed (weight 0 while a real server serves), so its flows finish.
            reals.push(RealServer {
                addr,
                weight: u32::from(s.serving == 0),
            });
            slots.push(slot);
        }
        vs.reals = reals;
        specs.push(ServiceSpec {
            id: s.id,
            config: vs,
            slots,
            retired,
        });
    }
    ServiceTable::build(specs)
}

/// The counter slots a plan takes: each added real server (unless it takes back its retired
/// slot), each new sorry server, and every real and sorry server of an added service.
fn slots_wanted(running: &[ServiceState], plan: &Plan, new: &Config) -> usize {
    let mut wanted = 0;
    for (planned, svc) in plan.services.iter().zip(&new.services) {
        match planned {
            PlannedService::Added(_) => {
                wanted += svc.virtual_service.reals.len() + usize::from(svc.sorry_server.is_some());
            }
            PlannedService::Kept(k) => {
                let s = &running[k.running];
                // A real server added under a retired address takes that slot back; an old
                // sorry server is retired before the real servers are added.
                let mut retired: Vec<SocketAddrV4> = s.retired.iter().map(|(a, _)| *a).collect();
                for c in &k.changes {
                    match c {
                        ServiceChange::SorryServer { to, .. } => {
                            retired.extend(s.sorry.iter().map(|(a, _)| *a));
                            wanted += usize::from(to.is_some());
                        }
                        ServiceChange::RealAdded { real, .. } => {
                            match retired.iter().position(|a| a == real) {
                                Some(i) => {
                                    retired.remove(i);
                                }
                                None => wanted += 1,
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    wanted
}

/// Carry out one staying service's changes; `new` is its config in the new file. The caller
/// has made sure there are slots enough.
fn apply_service(
    st: &mut State,
    registry: &RealRegistry,
    s: &mut ServiceState,
    new: &config::Service,
    changes: &[ServiceChange],
) {
    let slot = |st: &mut State| {
        st.alloc_slot(registry)
            .expect("slots counted before applying")
    };
    for change in changes {
        match change {
            ServiceChange::Renamed { .. }
            | ServiceChange::Mode { .. }
            | ServiceChange::Scheduler { .. }
            | ServiceChange::Persistence { .. }
            | ServiceChange::Quorum { .. }
            | ServiceChange::LocalAddresses { .. }
            | ServiceChange::ProxyProtocol { .. } => {} // the new config below says it
            ServiceChange::Check { .. } => {} // after the real servers: all start again
            ServiceChange::SorryServer { to, .. } => {
                if let Some((addr, slot)) = s.sorry.take() {
                    s.retired.push((addr, slot));
                }
                if let Some(addr) = *to {
                    s.sorry = Some((addr, slot(st)));
                }
            }
            ServiceChange::RealWeight { real, to, .. } => {
                let r = s
                    .reals
                    .iter_mut()
                    .find(|r| r.addr == *real)
                    .expect("a reweighted real server is running");
                r.weight = *to;
                r.weight_override = None;
            }
            ServiceChange::RealAdded { real, weight, .. } => {
                let slot = match s.retired.iter().position(|(a, _)| a == real) {
                    Some(i) => s.retired.remove(i).1,
                    None => slot(st),
                };
                let r = RealServer {
                    addr: *real,
                    weight: *weight,
                };
                s.reals.push(RealState::new(&r, slot, new.check.is_some()));
            }
            ServiceChange::RealRemoved { real, .. } => {
                let i = s
                    .reals
                    .iter()
                    .position(|r| r.addr == *real)
                    .expect("a removed real server is running");
                let r = s.reals.remove(i);
                s.retired.push((r.addr, r.slot));
            }
        }
    }
    if changes
        .iter()
        .any(|c| matches!(c, ServiceChange::Check { .. }))
    {
        for r in &mut s.reals {
            r.health = new.check.as_ref().map(|_| Health::Up);
            r.health_cause = None;
        }
    }
    // The scheduler sees the real servers in the file's order.
    let order = |r: &RealState| {
        new.virtual_service
            .reals
            .iter()
            .position(|n| n.addr == r.addr)
    };
    s.reals.sort_by_key(order);
    s.config = new.clone();
}

#[cfg(test)]
mod tests {
    use super::*;
    use forwarder::model::Protocol;

    const BASE: &str = r#"
[node]
name = "lb-a"

[[service]]
name = "web"
vip = "198.18.1.100:80"
mode = "nat"
sorry_server = "198.18.2.99:80"
[service.check]
kind = "tcp"
interval = "200ms"
timeout = "100ms"
[[service.real]]
address = "198.18.2.11:8080"
[[service.real]]
address = "198.18.2.12:8080"
weight = 2

[[service]]
name = "dns"
vip = "198.18.1.100:53"
protocol = "udp"
mode = "nat"
[[service.real]]
address = "198.18.2.11:8053"
"#;

    fn parse(text: &str) -> Config {
        config::parse(text, std::path::Path::new("test.toml")).expect("valid")
    }

    fn runtime(text: &str) -> Runtime {
        Runtime::new(
            &parse(text),
            Arc::new(RealRegistry::new(REAL_SLOTS)),
            EventLog::default(),
        )
        .expect("runtime")
    }

    fn weights(rt: &Runtime, vip: &str, proto: Protocol) -> Vec<(String, u32)> {
        let t = rt.table.load();
        let s = t.find(proto, vip.parse().unwrap()).expect("service");
        s.sched
            .backends()
            .iter()
            .map(|b| (b.addr.to_string(), b.weight))
            .collect()
    }

    fn key(real: &str) -> TargetKey {
        TargetKey {
            service: "web".into(),
            real: real.parse().unwrap(),
        }
    }

    #[test]
    fn health_inhibits_then_sorry_server_then_back() {
        let rt = runtime(BASE);
        assert_eq!(
            weights(&rt, "198.18.1.100:80", Protocol::Tcp),
            [
                ("198.18.2.11:8080".into(), 1),
                ("198.18.2.12:8080".into(), 2),
                ("198.18.2.99:80".into(), 0)
            ]
        );
        rt.set_health(&key("198.18.2.11:8080"), Health::Down, "refused");
        assert_eq!(weights(&rt, "198.18.1.100:80", Protocol::Tcp)[0].1, 0);
        rt.set_health(&key("198.18.2.12:8080"), Health::Down, "refused");
        assert_eq!(
            weights(&rt, "198.18.1.100:80", Protocol::Tcp),
            [
                ("198.18.2.11:8080".into(), 0),
                ("198.18.2.12:8080".into(), 0),
                ("198.18.2.99:80".into(), 1)
            ]
        );
        rt.set_health(&key("198.18.2.12:8080"), Health::Up, "ok");
        assert_eq!(
            weights(&rt, "198.18.1.100:80", Protocol::Tcp),
            [
                ("198.18.2.11:8080".into(), 0),
                ("198.18.2.12:8080".into(), 2),
                ("198.18.2.99:80".into(), 0)
            ]
        );
        let events = rt.events.recent(100);
        assert!(events
            .iter()
            .any(|e| e.message.contains("sorry server 198.18.2.99:80")));
    }

    #[test]
    fn a_fullnat_service_shows_and_intercepts_its_local_addresses() {
        // Built past validation, which refuses fullnat until the datapath has it.
        let mut config = parse(BASE);
        let vs = &mut config.services[0].virtual_service;
        vs.mode = Mode::FullNat;
        vs.local_addresses = vec!["198.18.2.5".parse().unwrap(), "198.18.2.6".parse().unwrap()];
        vs.proxy_protocol = Some(ProxyProtocol::V2);
        let rt = Runtime::new(
            &config,
            Arc::new(RealRegistry::new(REAL_SLOTS)),
            EventLog::default(),
        )
        .expect("runtime");
        let v = rt.services_view(&|_, _| None);
        assert_eq!(
            v[0].local_addresses,
            Some(vec![
                "198.18.2.5".parse().unwrap(),
                "198.18.2.6".parse().unwrap()
            ])
        );
        assert_eq!(v[0].proxy_protocol, Some(Some("v2".to_string())));
        let nat = serde_json::to_value(&v[1]).expect("a service encodes");
        let nat = nat.as_object().expect("a service object");
        assert!(!nat.contains_key("local_addresses") && !nat.contains_key("proxy_protocol"));
        // The interception rules get the LIPs with the service.
        assert_eq!(rt.nft_services()[0].local_addresses.len(), 2);
    }

    #[test]
    fn remove_policy_takes_the_real_out_but_keeps_its_replies() {
        let rt = runtime(&BASE.replace(
            "timeout = \"100ms\"",
            "timeout = \"100ms\"\non_fail = \"remove\"",
        ));
        rt.set_health(&key("198.18.2.11:8080"), Health::Down, "refused");
        let t = rt.table.load();
        let s = t
            .find(Protocol::Tcp, "198.18.1.100:80".parse().unwrap())
            .unwrap();
        assert!(s.sched.find("198.18.2.11:8080".parse().unwrap()).is_none());
        assert_eq!(
            s.retired,
            ["198.18.2.11:8080".parse::<SocketAddrV4>().unwrap()]
        );
        assert!(rt.nft_services()[0]
            .reals
            .iter()
            .any(|r| r.addr.to_string() == "198.18.2.11:8080"));
    }

    #[test]
    fn operator_drain_disable_enable_and_weight() {
        let rt = runtime(BASE);
        let real: SocketAddrV4 = "198.18.2.12:8080".parse().unwrap();
        rt.set_admin("web", real, Admin::Drained).unwrap();
        assert_eq!(weights(&rt, "198.18.1.100:80", Protocol::Tcp)[1].1, 0);
        rt.set_admin("web", real, Admin::Disabled).unwrap();
        assert_eq!(weights(&rt, "198.18.1.100:80", Protocol::Tcp).len(), 2);
        assert_eq!(rt.targets().len(), 1, "a disabled real is not checked");
        rt.set_weight("web", real, 7).unwrap();
        rt.set_admin("web", real, Admin::Enabled).unwrap();
        assert_eq!(weights(&rt, "198.18.1.100:80", Protocol::Tcp)[1].1, 7);
        assert!(rt
            .set_admin("web", "198.18.2.13:8080".parse().unwrap(), Admin::Drained)
            .unwrap_err()
            .contains("has no real server"));
        assert!(rt
            .set_weight("nope", real, 1)
            .unwrap_err()
            .contains("no service"));
    }

    #[test]
    fn reload_keeps_ids_slots_and_state_and_retires_removed_reals() {
        let rt = runtime(BASE);
        let before = rt.table.load();
        let web_id = before
            .find(Protocol::Tcp, "198.18.1.100:80".parse().unwrap())
            .unwrap()
            .id;
        let slot_12 = before
            .find(Protocol::Tcp, "198.18.1.100:80".parse().unwrap())
            .unwrap()
            .sched
            .backends()[1]
            .slot;
        rt.set_admin("web", "198.18.2.12:8080".parse().unwrap(), Admin::Drained)
            .unwrap();
        // Service dns removed and a new one put first; web loses .11, reweights .12, gains .13.
        let new = r#"
[node]
name = "lb-a"

[[service]]
name = "ssh"
vip = "198.18.1.100:22"
mode = "nat"
[[service.real]]
address = "198.18.2.11:8022"

[[service]]
name = "web"
vip = "198.18.1.100:80"
mode = "nat"
sorry_server = "198.18.2.99:80"
[service.check]
kind = "tcp"
interval = "200ms"
timeout = "100ms"
[[service.real]]
address = "198.18.2.12:8080"
weight = 5
[[service.real]]
address = "198.18.2.13:8080"
"#;
        let applied = rt.apply(&parse(new)).expect("applied");
        assert_eq!(applied.generation, 2);
        let text = applied.changes.join("\n");
        for want in [
            "service dns (udp 198.18.1.100:53) removed",
            "service ssh (tcp 198.18.1.100:22, nat) added with 1 real servers",
            "service web: real 198.18.2.12:8080 weight 2 -> 5",
            "service web: real 198.18.2.13:8080 added (weight 1)",
            "service web: real 198.18.2.11:8080 removed",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        let t = rt.table.load();
        let web = t
            .find(Protocol::Tcp, "198.18.1.100:80".parse().unwrap())
            .unwrap();
        assert_eq!(web.id, web_id);
        assert_eq!(web.sched.backends()[0].slot, slot_12);
        assert_eq!(web.sched.backends()[0].weight, 0, "still drained");
        assert_eq!(
            web.retired,
            ["198.18.2.11:8080".parse::<SocketAddrV4>().unwrap()]
        );
        let ssh = t
            .find(Protocol::Tcp, "198.18.1.100:22".parse().unwrap())
            .unwrap();
        assert_ne!(ssh.id, web_id);
        assert!(t
            .find(Protocol::Udp, "198.18.1.100:53".parse().unwrap())
            .is_none());
        // No connection counts on the retired slot: the next tick frees it.
        rt.tick();
        assert!(rt
            .table
            .load()
            .find(Protocol::Tcp, "198.18.1.100:80".parse().unwrap())
            .unwrap()
            .retired
            .is_empty());
    }

    #[test]
    fn reload_that_needs_more_slots_than_there_are_changes_nothing() {
        let rt = runtime(BASE);
        // BASE holds 4 slots; a service with every other slot and one more does not fit.
        let mut big = String::from(
            "\n[[service]]\nname = \"big\"\nvip = \"198.18.1.100:443\"\nmode = \"nat\"\n",
        );
        for i in 0..REAL_SLOTS - 3 {
            big.push_str(&format!(
                "[[service.real]]\naddress = \"10.{}.{}.1:443\"\n",
                i / 256,
                i % 256
            ));
        }
        let err = rt
            .apply(&parse(&format!(
                "{}{big}",
                BASE.replace("weight = 2", "weight = 3")
            )))
            .unwrap_err();
        assert!(err.contains("more than 4096 real servers"), "{err}");
        assert_eq!(rt.config().1, 1, "nothing applied");
        assert_eq!(
            weights(&rt, "198.18.1.100:80", Protocol::Tcp)[1],
            ("198.18.2.12:8080".into(), 2)
        );
        assert_eq!(rt.status_view().0.len(), 2, "the running services stay");
    }

    #[test]
    fn reload_restarts_health_only_when_the_check_changes() {
        let rt = runtime(BASE);
        rt.set_health(&key("198.18.2.11:8080"), Health::Down, "refused");
        // Another real server's weight: the health found stays.
        rt.apply(&parse(&BASE.replace("weight = 2", "weight = 3")))
            .expect("applied");
        assert_eq!(weights(&rt, "198.18.1.100:80", Protocol::Tcp)[0].1, 0);
        // Another check: every real server starts up again.
        let applied = rt
            .apply(&parse(
                &BASE
                    .replace("weight = 2", "weight = 3")
                    .replace("interval = \"200ms\"", "interval = \"300ms\""),
            ))
            .expect("applied");
        assert_eq!(
            applied.changes,
            ["service web: health check changed (states start again)"]
        );
        assert_eq!(weights(&rt, "198.18.1.100:80", Protocol::Tcp)[0].1, 1);
    }

    #[test]
    fn a_real_server_back_under_its_retired_address_gets_its_slot_back() {
        let rt = runtime(BASE);
        let web = |rt: &Runtime| {
            rt.table
                .load()
                .find(Protocol::Tcp, "198.18.1.100:80".parse().unwrap())
                .unwrap()
                .sched
                .backends()
                .iter()
                .map(|b| (b.addr.to_string(), b.slot))
                .collect::<Vec<_>>()
        };
        let before = web(&rt);
        let without = BASE.replacen("[[service.real]]\naddress = \"198.18.2.11:8080\"\n", "", 1);
        rt.apply(&parse(&without)).expect("applied");
        // A connection still counts on the retired slot, so it is not freed.
        rt.reals.get(before[0].1).active.store(1, Ordering::Relaxed);
        rt.tick();
        let applied = rt.apply(&parse(BASE)).expect("applied");
        assert_eq!(
            applied.changes,
            ["service web: real 198.18.2.11:8080 added (weight 1)"]
        );
        assert_eq!(web(&rt), before, "same slots, in the file's order");
    }

    #[test]
    fn reload_refuses_changes_that_need_a_restart() {
        let rt = runtime(BASE);
        let err = rt.apply(&parse(&BASE.replace("lb-a", "lb-b"))).unwrap_err();
        assert!(err.contains("[node] name \"lb-a\" -> \"lb-b\""), "{err}");
        assert_eq!(rt.config().1, 1, "nothing applied");
    }
}
