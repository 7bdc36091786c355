//! The reload diff: what a new config file changes in the running services, as typed changes.
//!
//! [`diff`] is pure: it reads the running config, the ids its services run under and the new
//! config, and returns either a [`Refusal`] (a section that needs a restart changed, or no id
//! is left for a new service) or a [`Plan`]. `Runtime::apply` then carries the plan out under
//! its mutex (slots, health, retired real servers); nothing here touches running state.
//!
//! Identity, as the runtime keeps it: a service is the same service while its VIP and
//! protocol stay (name, mode, scheduler and real servers may change) and keeps its id; a new
//! service takes the lowest id no staying service holds. A real server is the same while its
//! address stays in the same service.
//!
//! Each change's `Display` is the line operators read in `director reload` and in
//! `director events`.

#![forbid(unsafe_code)]

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use forwarder::model::{Mode, Protocol, ProxyProtocol, SchedulerKind};

use crate::config::{self, Config};

/// Why a new config is not applied at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Sections other than `[[service]]` changed; they need a restart of `directord`.
    RestartOnly(Vec<RestartOnly>),
    /// Every service id is taken.
    TooManyServices,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::RestartOnly(changes) => {
                write!(
                    f,
                    "not applied: these changes need a restart of directord (the running config stays):"
                )?;
                for c in changes {
                    write!(f, "\n  {c}")?;
                }
                Ok(())
            }
            Refusal::TooManyServices => write!(f, "more than 65536 services"),
        }
    }
}

/// A section that cannot change while the daemon runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartOnly {
    /// `[node] name`.
    NodeName {
        from: String,
        to: String,
    },
    Vrrp,
    Sync,
    Control,
    /// `[datapath]`, including `xdp`.
    Datapath,
}

impl fmt::Display for RestartOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartOnly::NodeName { from, to } => write!(f, "[node] name {from:?} -> {to:?}"),
            RestartOnly::Vrrp => write!(f, "[vrrp] changed"),
            RestartOnly::Sync => write!(f, "[sync] changed"),
            RestartOnly::Control => write!(f, "[control] changed"),
            RestartOnly::Datapath => write!(f, "[datapath] changed"),
        }
    }
}

/// What a new config does to the running services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Running services the new file no longer has, by (VIP, protocol).
    pub removed: Vec<RemovedService>,
    /// One per service of the new file, in the file's order.
    pub services: Vec<PlannedService>,
}

impl Plan {
    /// Every change in words, in the order operators read them: removed services first,
    /// then each service of the new file.
    pub fn changes(&self) -> Vec<String> {
        let mut out: Vec<String> = self.removed.iter().map(|r| r.to_string()).collect();
        for s in &self.services {
            match s {
                PlannedService::Added(a) => out.push(a.to_string()),
                PlannedService::Kept(k) => out.extend(k.changes.iter().map(|c| c.to_string())),
            }
        }
        out
    }

    /// Whether the new file changes nothing of the services.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.services.iter().all(|s| match s {
                PlannedService::Added(_) => false,
                PlannedService::Kept(k) => k.changes.is_empty(),
            })
    }
}

/// A running service that goes, with all its flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedService {
    /// Its index among the running services.
    pub running: usize,
    pub name: String,
    pub protocol: Protocol,
    pub vip: SocketAddrV4,
}

impl fmt::Display for RemovedService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {} ({} {}) removed: its flows end",
            self.name,
            self.protocol.as_str(),
            self.vip
        )
    }
}

/// What becomes of one service of the new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedService {
    Added(AddedService),
    Kept(KeptService),
}

impl PlannedService {
    /// The id the service runs under after the reload.
    pub fn id(&self) -> u16 {
        match self {
            PlannedService::Added(a) => a.id,
            PlannedService::Kept(k) => k.id,
        }
    }
}

/// A service new in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedService {
    pub id: u16,
    pub name: String,
    pub protocol: Protocol,
    pub vip: SocketAddrV4,
    pub mode: Mode,
    /// How many real servers it starts with.
    pub reals: usize,
}

impl fmt::Display for AddedService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {} ({} {}, {}) added with {} real servers",
            self.name,
            self.protocol.as_str(),
            self.vip,
            self.mode.as_str(),
            self.reals
        )
    }
}

/// A running service that stays (same VIP and protocol), with what changes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptService {
    pub id: u16,
    /// Its index among the running services.
    pub running: usize,
    /// In the order operators read them: the service's own settings, then its real servers
    /// in the new file's order, then the real servers that leave.
    pub changes: Vec<ServiceChange>,
}

/// One change inside a staying service. `service` is its name in the new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceChange {
    Renamed {
        from: String,
        to: String,
    },
    /// Established flows keep the old mode.
    Mode {
        service: String,
        from: Mode,
        to: Mode,
    },
    Scheduler {
        service: String,
        from: SchedulerKind,
        to: SchedulerKind,
    },
    Persistence {
        service: String,
        from: Duration,
        to: Duration,
    },
    Quorum {
        service: String,
        from: Option<u32>,
        to: Option<u32>,
    },
    /// The health check came, went or changed; every real server's health starts again.
    Check {
        service: String,
        change: CheckChange,
    },
    /// FULLNAT: new flows take their local address from the new list; established flows
    /// keep theirs until they end.
    LocalAddresses {
        service: String,
        from: Vec<Ipv4Addr>,
        to: Vec<Ipv4Addr>,
    },
    /// FULLNAT TCP: new flows get the PROXY header (or not); established flows keep the
    /// sequence shift they were made with.
    ProxyProtocol {
        service: String,
        from: Option<ProxyProtocol>,
        to: Option<ProxyProtocol>,
    },
    /// The old sorry server (if any) is retired, its flows finish.
    SorryServer {
        service: String,
        from: Option<SocketAddrV4>,
        to: Option<SocketAddrV4>,
    },
    /// The file's weight changed; a runtime weight (`director real weight`) is dropped.
    RealWeight {
        service: String,
        real: SocketAddrV4,
        from: u32,
        to: u32,
    },
    RealAdded {
        service: String,
        real: SocketAddrV4,
        weight: u32,
    },
    /// Retired: no new flows, its established ones finish.
    RealRemoved {
        service: String,
        real: SocketAddrV4,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckChange {
    Added,
    Removed,
    Changed,
}

fn or_none<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or("none".into(), |v| v.to_string())
}

impl fmt::Display for ServiceChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceChange::Renamed { from, to } => write!(f, "service {from} renamed {to}"),
            ServiceChange::Mode { service, from, to } => write!(
                f,
                "service {service}: mode {} -> {} (established flows keep {})",
                from.as_str(),
                to.as_str(),
                from.as_str()
            ),
            ServiceChange::Scheduler { service, from, to } => write!(
                f,
                "service {service}: scheduler {} -> {}",
                from.as_str(),
                to.as_str()
            ),
            ServiceChange::Persistence { service, from, to } => write!(
                f,
                "service {service}: persistence {}s -> {}s",
                from.as_secs(),
                to.as_secs()
            ),
            ServiceChange::Quorum { service, from, to } => write!(
                f,
                "service {service}: quorum {} -> {}",
                or_none(*from),
                or_none(*to)
            ),
            ServiceChange::Check { service, change } => match change {
                CheckChange::Added => write!(f, "service {service}: health check added"),
                CheckChange::Removed => write!(f, "service {service}: health check removed"),
                CheckChange::Changed => write!(
                    f,
                    "service {service}: health check changed (states start again)"
                ),
            },
            ServiceChange::LocalAddresses { service, from, to } => {
                let list = |v: &[Ipv4Addr]| {
                    let v: Vec<String> = v.iter().map(|a| a.to_string()).collect();
                    format!("[{}]", v.join(", "))
                };
                write!(
                    f,
                    "service {service}: local addresses {} -> {} (established flows keep theirs)",
                    list(from),
                    list(to)
                )
            }
            ServiceChange::ProxyProtocol { service, from, to } => {
                let name = |p: &Option<ProxyProtocol>| match p {
                    Some(ProxyProtocol::V2) => "v2",
                    None => "off",
                };
                write!(
                    f,
                    "service {service}: proxy_protocol {} -> {} (for new flows)",
                    name(from),
                    name(to)
                )
            }
            ServiceChange::SorryServer { service, from, to } => write!(
                f,
                "service {service}: sorry server {} -> {}",
                or_none(*from),
                or_none(*to)
            ),
            ServiceChange::RealWeight {
                service,
                real,
                from,
                to,
            } => write!(f, "service {service}: real {real} weight {from} -> {to}"),
            ServiceChange::RealAdded {
                service,
                real,
                weight,
            } => write!(f, "service {service}: real {real} added (weight {weight})"),
            ServiceChange::RealRemoved { service, real } => write!(
                f,
                "service {service}: real {real} removed (its established flows finish)"
            ),
        }
    }
}

/// The difference between the running config and `new`. `ids[i]` is the id the running
/// config's `services[i]` runs under.
pub fn diff(running: &Config, ids: &[u16], new: &Config) -> Result<Plan, Refusal> {
    assert_eq!(
        running.services.len(),
        ids.len(),
        "one id per running service"
    );
    let fixed = restart_only(running, new);
    if !fixed.is_empty() {
        return Err(Refusal::RestartOnly(fixed));
    }
    let key = |s: &config::Service| (s.virtual_service.vip, s.virtual_service.protocol);
    let running_index =
        |s: &config::Service| running.services.iter().position(|r| key(r) == key(s));
    let kept: Vec<Option<usize>> = new.services.iter().map(running_index).collect();

    let mut removed: Vec<RemovedService> = running
        .services
        .iter()
        .enumerate()
        .filter(|(i, _)| !kept.contains(&Some(*i)))
        .map(|(i, s)| RemovedService {
            running: i,
            name: s.virtual_service.name.clone(),
            protocol: s.virtual_service.protocol,
            vip: s.virtual_service.vip,
        })
        .collect();
    removed.sort_by_key(|r| (r.vip, r.protocol));

    // The services that stay keep their ids, so new ones never take one of them.
    let mut used: Vec<u16> = kept.iter().flatten().map(|&i| ids[i]).collect();
    let mut services = Vec::with_capacity(new.services.len());
    for (svc, from) in new.services.iter().zip(&kept) {
        let vs = &svc.virtual_service;
        services.push(match *from {
            Some(i) => PlannedService::Kept(KeptService {
                id: ids[i],
                running: i,
                changes: service_changes(&running.services[i], svc),
            }),
            None => {
                let id = (0..=u16::MAX)
                    .find(|id| !used.contains(id))
                    .ok_or(Refusal::TooManyServices)?;
                used.push(id);
                PlannedService::Added(AddedService {
                    id,
                    name: vs.name.clone(),
                    protocol: vs.protocol,
                    vip: vs.vip,
                    mode: vs.mode,
                    reals: vs.reals.len(),
                })
            }
        });
    }
    Ok(Plan { removed, services })
}

/// What differs outside `[[service]]`.
fn restart_only(old: &Config, new: &Config) -> Vec<RestartOnly> {
    let mut out = Vec::new();
    if old.node != new.node {
        out.push(RestartOnly::NodeName {
            from: old.node.name.clone(),
            to: new.node.name.clone(),
        });
    }
    if old.vrrp != new.vrrp {
        out.push(RestartOnly::Vrrp);
    }
    if old.sync != new.sync {
        out.push(RestartOnly::Sync);
    }
    if old.control != new.control {
        out.push(RestartOnly::Control);
    }
    if old.datapath != new.datapath || old.xdp != new.xdp {
        out.push(RestartOnly::Datapath);
    }
    out
}

/// What changes inside one staying service; real servers matched by address.
fn service_changes(old: &config::Service, new: &config::Service) -> Vec<ServiceChange> {
    let (ov, nv) = (&old.virtual_service, &new.virtual_service);
    let service = nv.name.clone();
    let mut out = Vec::new();
    if ov.name != nv.name {
        out.push(ServiceChange::Renamed {
            from: ov.name.clone(),
            to: nv.name.clone(),
        });
    }
    if ov.mode != nv.mode {
        out.push(ServiceChange::Mode {
            service: service.clone(),
            from: ov.mode,
            to: nv.mode,
        });
    }
    if ov.scheduler != nv.scheduler {
        out.push(ServiceChange::Scheduler {
            service: service.clone(),
            from: ov.scheduler,
            to: nv.scheduler,
        });
    }
    if ov.persistence != nv.persistence {
        out.push(ServiceChange::Persistence {
            service: service.clone(),
            from: ov.persistence,
            to: nv.persistence,
        });
    }
    if old.quorum != new.quorum {
        out.push(ServiceChange::Quorum {
            service: service.clone(),
            from: old.quorum,
            to: new.quorum,
        });
    }
    if old.check != new.check {
        let change = match (&old.check, &new.check) {
            (None, Some(_)) => CheckChange::Added,
            (Some(_), None) => CheckChange::Removed,
            _ => CheckChange::Changed,
        };
        out.push(ServiceChange::Check {
            service: service.clone(),
            change,
        });
    }
    if ov.local_addresses != nv.local_addresses {
        out.push(ServiceChange::LocalAddresses {
            service: service.clone(),
            from: ov.local_addresses.clone(),
            to: nv.local_addresses.clone(),
        });
    }
    if ov.proxy_protocol != nv.proxy_protocol {
        out.push(ServiceChange::ProxyProtocol {
            service: service.clone(),
            from: ov.proxy_protocol,
            to: nv.proxy_protocol,
        });
    }
    if old.sorry_server != new.sorry_server {
        out.push(ServiceChange::SorryServer {
            service: service.clone(),
            from: old.sorry_server,
            to: new.sorry_server,
        });
    }
    for nr in &nv.reals {
        match ov.reals.iter().find(|r| r.addr == nr.addr) {
            Some(or) if or.weight != nr.weight => out.push(ServiceChange::RealWeight {
                service: service.clone(),
                real: nr.addr,
                from: or.weight,
                to: nr.weight,
            }),
            Some(_) => {}
            None => out.push(ServiceChange::RealAdded {
                service: service.clone(),
                real: nr.addr,
                weight: nr.weight,
            }),
        }
    }
    for or in &ov.reals {
        if !nv.reals.iter().any(|r| r.addr == or.addr) {
            out.push(ServiceChange::RealRemoved {
                service: service.clone(),
                real: or.addr,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    const VRRP: &str = r#"
[vrrp]
advert_interval = "100ms"
[[vrrp.instance]]
name = "ext"
interface = "eth0"
vrid = 51
priority = 150
vips = ["198.18.1.100/24"]
"#;

    /// A `[sync]` section with a key file that validates.
    fn sync_section() -> String {
        let key = std::env::temp_dir().join(format!("director-diff-{}.key", std::process::id()));
        std::fs::write(&key, "0123456789abcdef0123456789abcdef").expect("write a test key");
        format!(
            "\n[sync]\ninterface = \"eth2\"\npeer = \"198.18.3.3:8848\"\nkey_file = \"{}\"\n",
            key.display()
        )
    }

    fn parse(text: &str) -> Config {
        config::parse(text, std::path::Path::new("test.toml")).expect("valid")
    }

    /// The plan for BASE (ids 0 and 1) → `new`.
    fn plan(new: &str) -> Plan {
        diff(&parse(BASE), &[0, 1], &parse(new)).expect("a plan")
    }

    fn kept(p: &Plan, i: usize) -> &KeptService {
        match &p.services[i] {
            PlannedService::Kept(k) => k,
            PlannedService::Added(a) => panic!("service {i} added: {a}"),
        }
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let p = plan(BASE);
        assert!(p.is_empty());
        assert!(p.changes().is_empty());
        assert!(p.removed.is_empty());
        assert_eq!(
            (
                kept(&p, 0).id,
                kept(&p, 0).running,
                kept(&p, 1).id,
                kept(&p, 1).running
            ),
            (0, 0, 1, 1)
        );
    }

    #[test]
    fn staying_services_keep_their_ids_in_a_new_order() {
        // dns first now; the ids follow the services, not the positions.
        let (web, dns) = BASE.split_at(BASE.find("[[service]]\nname = \"dns\"").unwrap());
        let head = web.find("[[service]]").unwrap();
        let swapped = format!("{}{dns}\n{}", &web[..head], &web[head..]);
        let p = diff(&parse(BASE), &[7, 3], &parse(&swapped)).expect("a plan");
        assert!(p.is_empty(), "{:?}", p.changes());
        assert_eq!((kept(&p, 0).id, kept(&p, 0).running), (3, 1));
        assert_eq!((kept(&p, 1).id, kept(&p, 1).running), (7, 0));
    }

    #[test]
    fn a_new_service_takes_the_lowest_id_no_staying_service_holds() {
        let extra = |name: &str, port: u16| {
            format!(
                "\n[[service]]\nname = \"{name}\"\nvip = \"198.18.1.100:{port}\"\nmode = \"nat\"\n[[service.real]]\naddress = \"198.18.2.11:{port}\"\n"
            )
        };
        // Running web = 0 and dns = 2: the first new one gets 1, the next 3.
        let new = format!("{BASE}{}{}", extra("ssh", 22), extra("smtp", 25));
        let p = diff(&parse(BASE), &[0, 2], &parse(&new)).expect("a plan");
        let ids: Vec<u16> = p.services.iter().map(PlannedService::id).collect();
        assert_eq!(ids, [0, 2, 1, 3]);
        assert_eq!(
            p.services[2],
            PlannedService::Added(AddedService {
                id: 1,
                name: "ssh".into(),
                protocol: Protocol::Tcp,
                vip: "198.18.1.100:22".parse().unwrap(),
                mode: Mode::Nat,
                reals: 1,
            })
        );
        assert_eq!(
            p.changes(),
            [
                "service ssh (tcp 198.18.1.100:22, nat) added with 1 real servers",
                "service smtp (tcp 198.18.1.100:25, nat) added with 1 real servers",
            ]
        );
        assert!(!p.is_empty());
    }

    #[test]
    fn a_removed_service_frees_its_id_for_a_new_one() {
        // dns (id 1) goes, ssh comes: ssh gets 1.
        let new = BASE
            .replace("198.18.1.100:53", "198.18.1.100:22")
            .replace("\"dns\"", "\"ssh\"")
            .replace("protocol = \"udp\"\n", "");
        let p = plan(&new);
        assert_eq!(
            p.removed,
            [RemovedService {
                running: 1,
                name: "dns".into(),
                protocol: Protocol::Udp,
                vip: "198.18.1.100:53".parse().unwrap(),
            }]
        );
        assert_eq!(p.services[1].id(), 1);
        assert_eq!(
            p.changes(),
            [
                "service dns (udp 198.18.1.100:53) removed: its flows end",
                "service ssh (tcp 198.18.1.100:22, nat) added with 1 real servers",
            ]
        );
    }

    #[test]
    fn a_service_is_the_same_while_vip_and_protocol_stay() {
        // Same name and port, other protocol: a different service.
        let new = BASE.replace("protocol = \"udp\"", "protocol = \"tcp\"");
        let p = plan(&new);
        assert_eq!(p.removed.len(), 1);
        assert!(matches!(p.services[1], PlannedService::Added(_)));
        // Other name, same VIP and protocol: the same service, renamed.
        let p = plan(&BASE.replace("\"dns\"", "\"resolver\""));
        assert!(p.removed.is_empty());
        assert_eq!(
            kept(&p, 1).changes,
            [ServiceChange::Renamed {
                from: "dns".into(),
                to: "resolver".into()
            }]
        );
        assert_eq!(p.changes(), ["service dns renamed resolver"]);
    }

    #[test]
    fn removed_services_come_first_ordered_by_vip_and_protocol() {
        let only = r#"
[node]
name = "lb-a"
[[service]]
name = "ssh"
vip = "198.18.1.100:22"
mode = "nat"
"#;
        let p = plan(only);
        let removed: Vec<&str> = p.removed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(removed, ["dns", "web"], "port 53 before port 80");
        assert_eq!(
            p.changes()[0],
            "service dns (udp 198.18.1.100:53) removed: its flows end"
        );
        assert_eq!(
            p.changes()[2],
            "service ssh (tcp 198.18.1.100:22, nat) added with 0 real servers"
        );
    }

    #[test]
    fn each_setting_of_a_service_is_a_change_of_its_own_in_order() {
        // Real servers on the VIP's port, as DR needs.
        let old = BASE.replace(":8080", ":80");
        let new = old
            .replacen("name = \"web\"", "name = \"www\"", 1)
            .replacen(
                "mode = \"nat\"",
                "mode = \"dr\"\nscheduler = \"rr\"\npersistence = \"300s\"\nquorum = 1",
                1,
            )
            .replace(
                "sorry_server = \"198.18.2.99:80\"",
                "sorry_server = \"198.18.2.98:80\"",
            )
            .replace("interval = \"200ms\"", "interval = \"300ms\"");
        let p = diff(&parse(&old), &[0, 1], &parse(&new)).expect("a plan");
        let web = kept(&p, 0);
        assert_eq!(web.changes.len(), 7, "{:?}", p.changes());
        assert_eq!(
            web.changes[1],
            ServiceChange::Mode {
                service: "www".into(),
                from: Mode::Nat,
                to: Mode::Dr
            }
        );
        assert_eq!(
            p.changes(),
            [
                "service web renamed www",
                "service www: mode nat -> dr (established flows keep nat)",
                "service www: scheduler wlc -> rr",
                "service www: persistence 0s -> 300s",
                "service www: quorum none -> 1",
                "service www: health check changed (states start again)",
                "service www: sorry server 198.18.2.99:80 -> 198.18.2.98:80",
            ]
        );
        assert!(kept(&p, 1).changes.is_empty());
    }

    #[test]
    fn a_check_or_sorry_server_that_comes_or_goes() {
        let start = BASE.find("[service.check]").unwrap();
        let end = BASE.find("[[service.real]]").unwrap();
        let unchecked = format!("{}{}", &BASE[..start], &BASE[end..])
            .replace("sorry_server = \"198.18.2.99:80\"\n", "");
        let p = plan(&unchecked);
        assert_eq!(
            p.changes(),
            [
                "service web: health check removed",
                "service web: sorry server 198.18.2.99:80 -> none",
            ]
        );
        let back = diff(&parse(&unchecked), &[0, 1], &parse(BASE)).expect("a plan");
        assert_eq!(
            kept(&back, 0).changes,
            [
                ServiceChange::Check {
                    service: "web".into(),
                    change: CheckChange::Added
                },
                ServiceChange::SorryServer {
                    service: "web".into(),
                    from: None,
                    to: Some("198.18.2.99:80".parse().unwrap())
                },
            ]
        );
        assert_eq!(
            back.changes(),
            [
                "service web: health check added",
                "service web: sorry server none -> 198.18.2.99:80",
            ]
        );
    }

    #[test]
    fn fullnat_local_addresses_and_proxy_protocol_are_changes_too() {
        let fullnat = |lips: &str, proxy: &str| {
            format!(
                "[node]\nname = \"lb-a\"\n\n[[service]]\nname = \"app\"\nvip = \"198.18.1.100:443\"\nmode = \"fullnat\"\n\
                 local_addresses = [{lips}]\n{proxy}[[service.real]]\naddress = \"198.18.2.11:443\"\n"
            )
        };
        let old = fullnat("\"198.18.2.5\"", "");
        let new = fullnat(
            "\"198.18.2.5\", \"198.18.2.6\"",
            "proxy_protocol = \"v2\"\n",
        );
        let p = diff(&parse(&old), &[0], &parse(&new)).expect("a plan");
        assert_eq!(
            kept(&p, 0).changes,
            [
                ServiceChange::LocalAddresses {
                    service: "app".into(),
                    from: vec!["198.18.2.5".parse().unwrap()],
                    to: vec!["198.18.2.5".parse().unwrap(), "198.18.2.6".parse().unwrap()],
                },
                ServiceChange::ProxyProtocol {
                    service: "app".into(),
                    from: None,
                    to: Some(ProxyProtocol::V2),
                },
            ]
        );
        assert_eq!(
            p.changes(),
            [
                "service app: local addresses [198.18.2.5] -> [198.18.2.5, 198.18.2.6] (established flows keep theirs)",
                "service app: proxy_protocol off -> v2 (for new flows)",
            ]
        );
        let same = diff(&parse(&new), &[0], &parse(&new)).expect("a plan");
        assert!(same.is_empty(), "{:?}", same.changes());
    }

    #[test]
    fn real_servers_are_matched_by_address() {
        // .11 goes, .12 is reweighted, .13 comes; the new file lists .13 before .12.
        let new = BASE.replace(
            "[[service.real]]\naddress = \"198.18.2.11:8080\"\n[[service.real]]\naddress = \"198.18.2.12:8080\"\nweight = 2",
            "[[service.real]]\naddress = \"198.18.2.13:8080\"\nweight = 3\n[[service.real]]\naddress = \"198.18.2.12:8080\"\nweight = 5",
        );
        let p = plan(&new);
        let real = |a: &str| a.parse::<SocketAddrV4>().unwrap();
        assert_eq!(
            kept(&p, 0).changes,
            [
                ServiceChange::RealAdded {
                    service: "web".into(),
                    real: real("198.18.2.13:8080"),
                    weight: 3
                },
                ServiceChange::RealWeight {
                    service: "web".into(),
                    real: real("198.18.2.12:8080"),
                    from: 2,
                    to: 5
                },
                ServiceChange::RealRemoved {
                    service: "web".into(),
                    real: real("198.18.2.11:8080")
                },
            ]
        );
        assert_eq!(
            p.changes(),
            [
                "service web: real 198.18.2.13:8080 added (weight 3)",
                "service web: real 198.18.2.12:8080 weight 2 -> 5",
                "service web: real 198.18.2.11:8080 removed (its established flows finish)",
            ]
        );
        // The same address in another service is another real server.
        let moved = BASE.replace("198.18.2.11:8053", "198.18.2.11:8080");
        assert_eq!(
            plan(&moved).changes(),
            [
                "service dns: real 198.18.2.11:8080 added (weight 1)",
                "service dns: real 198.18.2.11:8053 removed (its established flows finish)",
            ]
        );
    }

    #[test]
    fn sections_outside_the_services_refuse_the_whole_file() {
        let refusal =
            |old: &str, new: &str| diff(&parse(old), &[0, 1], &parse(new)).expect_err("refused");
        // A service change beside it is not applied either.
        let renamed = BASE
            .replace("lb-a", "lb-b")
            .replace("weight = 2", "weight = 3");
        assert_eq!(
            refusal(BASE, &renamed),
            Refusal::RestartOnly(vec![RestartOnly::NodeName {
                from: "lb-a".into(),
                to: "lb-b".into()
            }])
        );
        let with_vrrp = format!("{BASE}{VRRP}");
        assert_eq!(
            refusal(BASE, &with_vrrp),
            Refusal::RestartOnly(vec![RestartOnly::Vrrp])
        );
        assert_eq!(
            refusal(
                &with_vrrp,
                &with_vrrp.replace("priority = 150", "priority = 100")
            ),
            Refusal::RestartOnly(vec![RestartOnly::Vrrp])
        );
        let sync = sync_section();
        let with_sync = format!("{BASE}{sync}");
        assert_eq!(
            refusal(BASE, &with_sync),
            Refusal::RestartOnly(vec![RestartOnly::Sync])
        );
        assert_eq!(
            refusal(
                BASE,
                &format!("{BASE}\n[control]\nsocket = \"/run/other.sock\"\n")
            ),
            Refusal::RestartOnly(vec![RestartOnly::Control])
        );
        assert_eq!(
            refusal(BASE, &format!("{BASE}\n[datapath]\nworkers = 3\n")),
            Refusal::RestartOnly(vec![RestartOnly::Datapath])
        );
        assert_eq!(
            refusal(BASE, &format!("{BASE}\n[datapath]\nxdp = \"generic\"\n")),
            Refusal::RestartOnly(vec![RestartOnly::Datapath])
        );
        // All of them at once, in the file's order of sections, in the words operators read.
        let all = format!(
            "{}{VRRP}{sync}\n[control]\nsocket = \"/run/other.sock\"\n[datapath]\nworkers = 3\n",
            BASE.replace("lb-a", "lb-b")
        );
        let r = refusal(BASE, &all);
        assert_eq!(
            r.to_string(),
            "not applied: these changes need a restart of directord (the running config stays):\n  \
             [node] name \"lb-a\" -> \"lb-b\"\n  [vrrp] changed\n  [sync] changed\n  \
             [control] changed\n  [datapath] changed"
        );
    }

    #[test]
    fn the_refusals_say_why() {
        assert_eq!(
            Refusal::TooManyServices.to_string(),
            "more than 65536 services"
        );
    }
}
