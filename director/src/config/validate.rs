//! `validate()`: the serde structs of [`super::file`] → the domain [`Config`].
//!
//! Every check records its error and carries on with a placeholder value, so one pass reports
//! every problem in the file. Placeholders never escape: if any error was recorded the result
//! is `Err` with all of them, in file order.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::time::Duration;

use forwarder::model::{
    DatapathConfig, Mode, Protocol, RealServer, SchedulerKind, Timeouts, VirtualService,
};
use toml::Spanned;

use super::duration::{format_duration, parse_duration, ALLOWED_FORMS};
use super::error::{ConfigError, Locator};
use super::file::{
    CheckFile, ControlFile, DatapathFile, FileConfig, RawDuration, ServiceFile, SyncFile, VrrpFile,
    VrrpInstanceFile,
};
use super::{
    Check, CheckKind, ChecksumMode, Config, Control, DriverGroup, DriverInstance, GarpPolicy,
    GroupConfig, InstanceConfig, Node, OnFail, ProxyProtocol, Service, Sync, SyncDestination,
    Track, Vrrp, VrrpVersion, XdpMode, DEFAULT_SOCKET_PATH,
};

const MODES: &[(&str, Mode)] = &[
    ("nat", Mode::Nat),
    ("dr", Mode::Dr),
    ("tun", Mode::Tun),
    ("fullnat", Mode::FullNat),
];

const SCHEDULERS: &[(&str, SchedulerKind)] = &[
    ("rr", SchedulerKind::Rr),
    ("wrr", SchedulerKind::Wrr),
    ("lc", SchedulerKind::Lc),
    ("wlc", SchedulerKind::Wlc),
    ("sh", SchedulerKind::Sh),
    ("mh", SchedulerKind::Mh),
];

const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];

const CHECK_KINDS: &[(&str, &str)] = &[
    ("tcp", "tcp"),
    ("http", "http"),
    ("udp", "udp"),
    ("exec", "exec"),
];

const ON_FAIL: &[(&str, OnFail)] = &[("inhibit", OnFail::Inhibit), ("remove", OnFail::Remove)];

const XDP_MODES: &[(&str, XdpMode)] = &[
    ("off", XdpMode::Off),
    ("auto", XdpMode::Auto),
    ("native", XdpMode::Native),
    ("generic", XdpMode::Generic),
];

const PROXY_PROTOCOLS: &[(&str, ProxyProtocol)] = &[("v2", ProxyProtocol::V2)];

/// `max_connections` upper bound: 2^26 entries.
const MAX_CONNECTIONS: i64 = 1 << 26;
const MAX_WORKERS: i64 = 1024;

/// Validates the whole file.
pub(crate) fn validate(file: FileConfig, loc: Locator<'_>) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator {
        loc,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let node = v.node(&file.node.name);
    let vrrp = file.vrrp.as_ref().map(|f| v.vrrp(f));
    let sync = file.sync.as_ref().map(|f| v.sync(f));
    if file.service.is_empty() {
        v.err(0..0, "no [[service]] defined; at least one is required");
    }
    let services = v.services(&file.service);
    v.placement(vrrp.as_ref(), &file.service, &services);
    let control = v.control(file.control.as_ref());
    let (datapath, xdp) = v.datapath(file.datapath.as_ref());

    if !v.errors.is_empty() {
        v.errors.sort_by_key(|e| (e.line, e.column));
        return Err(v.errors);
    }
    Ok(Config {
        node,
        vrrp,
        sync,
        services,
        control,
        datapath,
        xdp,
        warnings: v.warnings,
    })
}

/// The `[vrrp]` settings every instance of the section runs with.
struct Shared {
    version: VrrpVersion,
    advert_interval: Duration,
    checksum: ChecksumMode,
    garp: GarpPolicy,
}

/// A VIP with the prefix length it is added with (`198.18.1.100/24`; no prefix = /32).
#[derive(Debug, Clone, Copy)]
struct VipPrefix {
    addr: Ipv4Addr,
    prefix_len: u8,
}

struct Validator<'a> {
    loc: Locator<'a>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(self.loc.error(span, message));
    }

    fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.warnings.push(self.loc.error(span, message));
    }

    /// Records `Err` at `span`; `None` then.
    fn ok<T>(&mut self, span: Range<usize>, r: Result<T, String>) -> Option<T> {
        r.map_err(|m| self.err(span, m)).ok()
    }

    fn int<T: TryFrom<i64>>(
        &mut self,
        v: &Spanned<i64>,
        key: &str,
        range: RangeInclusive<i64>,
    ) -> Option<T> {
        let n = *v.get_ref();
        if !range.contains(&n) {
            let (lo, hi) = (range.start(), range.end());
            self.err(
                v.span(),
                format!("{key} must be between {lo} and {hi}, not {n}"),
            );
            return None;
        }
        T::try_from(n).ok()
    }

    fn duration(&mut self, v: &Spanned<RawDuration>, key: &str) -> Option<Duration> {
        let r = match v.get_ref() {
            RawDuration::Text(t) => parse_duration(t).map_err(|m| format!("{key}: {m}")),
            RawDuration::Number(n) => Err(format!(
                "{key} = {n} has no unit; durations are strings, {ALLOWED_FORMS}"
            )),
        };
        self.ok(v.span(), r)
    }

    fn opt_duration(
        &mut self,
        v: Option<&Spanned<RawDuration>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        v.and_then(|v| self.duration(v, key)).unwrap_or(default)
    }

    /// One of a fixed set of words; the error lists them.
    fn choice<T: Copy>(
        &mut self,
        v: &Spanned<String>,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let word = v.get_ref().as_str();
        if let Some((_, t)) = options.iter().find(|(name, _)| *name == word) {
            return Some(*t);
        }
        let allowed: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        self.err(
            v.span(),
            format!("unknown {key} {word:?}; allowed: {}", allowed.join(" | ")),
        );
        None
    }

    fn ipv4(&mut self, v: &Spanned<String>, key: &str) -> Option<Ipv4Addr> {
        let text = v.get_ref();
        let r = match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => Ok(a),
            Ok(IpAddr::V6(_)) => Err(format!("{key} {text:?}: only IPv4 is supported")),
            Err(_) => Err(format!(
                "invalid {key} {text:?}; write an IPv4 address, e.g. \"198.18.1.100\""
            )),
        };
        self.ok(v.span(), r)
    }

    /// `ADDR:PORT` with an IPv4 address and a port other than 0.
    fn socket_v4(&mut self, v: &Spanned<String>, key: &str) -> Option<SocketAddrV4> {
        let text = v.get_ref();
        let example = "e.g. \"198.18.1.100:80\"";
        let r = match text.parse::<SocketAddr>() {
            Ok(SocketAddr::V4(a)) if a.port() == 0 => Err(format!(
                "{key} {text:?}: port 0 is not allowed; give a port 1..65535"
            )),
            Ok(SocketAddr::V4(a)) => Ok(a),
            Ok(SocketAddr::V6(_)) => Err(format!("{key} {text:?}: only IPv4 is supported")),
            Err(_) if text.parse::<Ipv4Addr>().is_ok() => Err(format!(
                "{key} {text:?} needs a port: write ADDR:PORT, {example}"
            )),
            Err(_) => Err(format!(
                "invalid {key} {text:?}; write an IPv4 address and port, {example}"
            )),
        };
        self.ok(v.span(), r)
    }

    /// A Linux interface name (the rules of the kernel's `dev_valid_name`).
    fn interface(&mut self, v: &Spanned<String>, key: &str) -> String {
        let name = v.get_ref();
        let valid = !name.is_empty()
            && name.len() < 16
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if !valid {
            self.err(
                v.span(),
                format!(
                    "invalid {key} {name:?}; an interface name has 1 to 15 characters, \
                     without '/', ':' or spaces"
                ),
            );
        }
        name.clone()
    }

    /// Names the operator types on the command line: services, instances, groups.
    fn name(&mut self, v: &Spanned<String>, what: &str) -> String {
        let name = v.get_ref();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            self.err(
                v.span(),
                format!(
                    "invalid {what} name {name:?}; use 1 to 64 letters, digits, '-', '_' or '.'"
                ),
            );
        }
        name.clone()
    }

    fn path(&mut self, v: &Spanned<String>, key: &str) -> PathBuf {
        let p = PathBuf::from(v.get_ref());
        if !p.is_absolute() {
            self.err(
                v.span(),
                format!("{key} {:?} must be an absolute path", v.get_ref()),
            );
        }
        p
    }

    /// A hook program VRRP runs (`notify`): an absolute path to an executable file, checked
    /// now rather than at the first transition, when it would fail unseen.
    fn program(&mut self, v: &Spanned<String>, key: &str) -> PathBuf {
        let p = self.path(v, key);
        if !p.is_absolute() {
            return p;
        }
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(&p) {
            Err(e) => self.err(
                v.span(),
                format!("{key} program {} cannot be used: {e}; give the absolute path of an executable script", p.display()),
            ),
            Ok(m) if !m.is_file() => self.err(
                v.span(),
                format!("{key} program {} is not a file; give the absolute path of an executable script", p.display()),
            ),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => self.err(
                v.span(),
                format!("{key} program {} is not executable; chmod +x {}", p.display(), p.display()),
            ),
            Ok(_) => {}
        }
        p
    }

    /// An address the box is to own and answer for (a service VIP, a VRRP VIP): a unicast
    /// host address. `what` names it in the message.
    fn unicast_own(&mut self, span: Range<usize>, addr: Ipv4Addr, what: &str) -> bool {
        let why = if addr.is_unspecified() {
            "0.0.0.0 means no address"
        } else if addr.is_loopback() {
            "a loopback address (127.0.0.0/8) never leaves the box"
        } else if addr.is_multicast() {
            "a multicast address (224.0.0.0/4) is a group, not a host"
        } else if addr.is_broadcast() {
            "255.255.255.255 is the broadcast address"
        } else if u32::from(addr) >> 28 == 0xf {
            "240.0.0.0/4 is reserved"
        } else {
            return true;
        };
        self.err(span, format!("{what} {addr} is not a unicast host address ({why}); give an address clients can reach"));
        false
    }

    /// Reports every later occurrence of a key already seen.
    fn duplicates<K: std::hash::Hash + Eq>(
        &mut self,
        items: impl IntoIterator<Item = (K, Range<usize>)>,
        message: impl Fn(&K, usize) -> String,
    ) {
        let mut seen: HashMap<K, usize> = HashMap::new();
        for (key, span) in items {
            if let Some(&first) = seen.get(&key) {
                let line = self.loc.line_of(first);
                self.err(span, message(&key, line));
            } else {
                seen.insert(key, span.start);
            }
        }
    }

    fn node(&mut self, name: &Spanned<String>) -> Node {
        let n = name.get_ref();
        let valid = !n.is_empty()
            && n.len() <= 253
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            self.err(
                name.span(),
                format!(
                    "invalid node name {n:?}; use a hostname: letters, digits and '-', \
                     dot-separated labels of at most 63 characters"
                ),
            );
        }
        Node { name: n.clone() }
    }

    fn vrrp(&mut self, f: &VrrpFile) -> Vrrp {
        let version = match &f.version {
            None => VrrpVersion::V3,
            Some(v) => match *v.get_ref() {
                2 => VrrpVersion::V2,
                3 => VrrpVersion::V3,
                n => {
                    self.err(
                        v.span(),
                        format!("unknown VRRP version {n}; allowed: 2 | 3"),
                    );
                    VrrpVersion::V3
                }
            },
        };
        let advert_interval = Duration::from_secs(1);
        let advert_interval = match &f.advert_interval {
            None => advert_interval,
            Some(v) => match self.duration(v, "advert_interval") {
                None => advert_interval,
                Some(d) => {
                    let ms = d.as_millis();
                    let valid = match version {
                        VrrpVersion::V3 => (10..=40_950).contains(&ms) && ms % 10 == 0,
                        VrrpVersion::V2 => (1000..=255_000).contains(&ms) && ms % 1000 == 0,
                    };
                    if !valid {
                        let allowed = match version {
                            VrrpVersion::V3 => {
                                "VRRP v3 allows 10ms..40950ms in steps of 10ms (centiseconds)"
                            }
                            VrrpVersion::V2 => "VRRP v2 allows whole seconds 1s..255s",
                        };
                        self.err(
                            v.span(),
                            format!(
                                "advert_interval {:?} is out of range; {allowed}",
                                format_duration(d)
                            ),
                        );
                    }
                    d
                }
            },
        };

        let checksum = match &f.checksum {
            None => ChecksumMode::PseudoHeader,
            Some(c) => match (c.get_ref().as_str(), version) {
                ("pseudo-header", _) => ChecksumMode::PseudoHeader,
                ("message-only", VrrpVersion::V3) => ChecksumMode::MessageOnly,
                ("message-only", VrrpVersion::V2) => {
                    self.err(
                        c.span(),
                        "checksum = \"message-only\" is a VRRP v3 choice; v2 always sums the message alone"
                            .to_owned(),
                    );
                    ChecksumMode::PseudoHeader
                }
                (other, _) => {
                    self.err(
                        c.span(),
                        format!("unknown checksum {other:?}; allowed: \"pseudo-header\" | \"message-only\""),
                    );
                    ChecksumMode::PseudoHeader
                }
            },
        };
        let defaults = GarpPolicy::default();
        let garp = GarpPolicy {
            repeat: f
                .garp_repeat
                .as_ref()
                .and_then(|v| self.int(v, "garp_repeat", 1..=100))
                .unwrap_or(defaults.repeat),
            interval: self.opt_duration(
                f.garp_interval.as_ref(),
                "garp_interval",
                defaults.interval,
            ),
            delay: self.opt_duration(f.garp_delay.as_ref(), "garp_delay", defaults.delay),
            refresh: self.opt_duration(f.garp_refresh.as_ref(), "garp_refresh", defaults.refresh),
        };
        let shared = Shared {
            version,
            advert_interval,
            checksum,
            garp,
        };
        let instances: Vec<DriverInstance> = f
            .instance
            .iter()
            .map(|i| self.vrrp_instance(i, &shared))
            .collect();
        self.duplicates(
            f.instance
                .iter()
                .map(|i| (i.get_ref().name.get_ref().clone(), i.get_ref().name.span())),
            |name, line| {
                format!("duplicate VRRP instance name {name:?} (first defined on line {line})")
            },
        );
        self.duplicates(
            f.instance.iter().map(|i| {
                let i = i.get_ref();
                ((i.interface.get_ref().clone(), *i.vrid.get_ref()), i.vrid.span())
            }),
            |(ifname, vrid), line| {
                format!("vrid {vrid} is already used on {ifname} (line {line}); each instance on an interface needs its own vrid")
            },
        );
        self.duplicates(
            f.instance.iter().flat_map(|i| {
                i.get_ref().vips.get_ref().iter().filter_map(|v| {
                    let addr = v.get_ref().split('/').next()?.parse::<Ipv4Addr>().ok()?;
                    Some((addr, v.span()))
                })
            }),
            |addr, line| {
                format!("vip {addr} is already listed on line {line}; an address belongs to one virtual router (two would fight over it)")
            },
        );

        let mut groups = Vec::new();
        let mut grouped: HashMap<String, usize> = HashMap::new();
        for g in &f.group {
            let g = g.get_ref();
            let name = self.name(&g.name, "group");
            let mut members = Vec::new();
            for m in &g.instances {
                let member = m.get_ref();
                if !instances.iter().any(|i| &i.config.name == member) {
                    let mut defined: Vec<&str> =
                        instances.iter().map(|i| i.config.name.as_str()).collect();
                    defined.sort_unstable();
                    defined.dedup();
                    self.err(
                        m.span(),
                        format!(
                            "group {name:?} names instance {member:?}, which is not defined; defined instances: {}",
                            if defined.is_empty() { "none".to_owned() } else { defined.join(", ") }
                        ),
                    );
                } else if let Some(&first) = grouped.get(member) {
                    let line = self.loc.line_of(first);
                    self.err(
                        m.span(),
                        format!("instance {member:?} is already in a group (line {line}); an instance belongs to at most one group"),
                    );
                } else {
                    grouped.insert(member.clone(), m.span().start);
                }
                members.push(member.clone());
            }
            let notify = g.notify.as_ref().map(|n| self.program(n, "notify"));
            groups.push(DriverGroup {
                config: GroupConfig { name, members },
                notify,
            });
        }
        self.duplicates(
            f.group
                .iter()
                .map(|g| (g.get_ref().name.get_ref().clone(), g.get_ref().name.span())),
            |name, line| {
                format!("duplicate VRRP group name {name:?} (first defined on line {line})")
            },
        );
        let realtime_priority = match &f.realtime_priority {
            None => Some(20),
            Some(v) => match self.int::<i32>(v, "realtime_priority", 0..=99) {
                Some(0) => None,
                Some(p) => Some(p),
                None => Some(20),
            },
        };
        Vrrp {
            instances,
            groups,
            realtime_priority,
        }
    }

    /// One `[[vrrp.instance]]` as the engine runs it, with the section's `shared` settings.
    fn vrrp_instance(&mut self, i: &Spanned<VrrpInstanceFile>, shared: &Shared) -> DriverInstance {
        let i = i.get_ref();
        let name = self.name(&i.name, "instance");
        let interface = self.interface(&i.interface, "interface");
        let vrid = self.int(&i.vrid, "vrid", 1..=255).unwrap_or(1);
        let priority = self.int(&i.priority, "priority", 1..=255).unwrap_or(1);
        if i.vips.get_ref().is_empty() {
            self.err(
                i.vips.span(),
                format!(
                    "instance {name:?} has no vips; give at least one, e.g. [\"198.18.1.100/24\"]"
                ),
            );
        }
        if i.vips.get_ref().len() > 255 {
            self.err(
                i.vips.span(),
                format!(
                    "instance {name:?} has {} vips; an advertisement carries at most 255 (RFC 9568 and 3768: an 8-bit count), so a backup would see a different list; split them over several instances in one [[vrrp.group]]",
                    i.vips.get_ref().len()
                ),
            );
        }
        let vips: Vec<VipPrefix> = i
            .vips
            .get_ref()
            .iter()
            .filter_map(|v| {
                let p = self.vip_prefix(v)?;
                self.vip_in_its_network(v, p)
            })
            .collect();
        let unicast_peers = i
            .unicast_peers
            .iter()
            .filter_map(|p| {
                let addr = self.ipv4(p, "unicast peer")?;
                let why = if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback() {
                    Some("is not a unicast host address; a unicast peer is the other director's own address".to_string())
                } else if vips.iter().any(|v| v.addr == addr) {
                    Some(format!("is a VIP of instance {name:?}; a unicast peer is the other director's own address, which does not move"))
                } else {
                    None
                };
                match why {
                    Some(why) => {
                        self.err(p.span(), format!("unicast peer {addr} {why}"));
                        None
                    }
                    None => Some(addr),
                }
            })
            .collect();
        let tracks = i
            .track_interfaces
            .iter()
            .map(|t| {
                let t = t.get_ref();
                Track {
                    name: vrrp::driver::track_interface(
                        &self.interface(&t.name, "tracked interface"),
                    ),
                    weight: t
                        .weight
                        .as_ref()
                        .and_then(|w| self.int(w, "weight", -254..=254))
                        .unwrap_or(0),
                }
            })
            .collect();
        DriverInstance {
            config: InstanceConfig {
                name,
                version: shared.version,
                vrid,
                priority,
                advert_interval: shared.advert_interval,
                vips: vips.iter().map(|p| IpAddr::V4(p.addr)).collect(),
                // The engine reads it from the interface at start.
                primary: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                preempt: i.preempt.unwrap_or(true),
                preempt_delay: self.opt_duration(
                    i.preempt_delay.as_ref(),
                    "preempt_delay",
                    Duration::ZERO,
                ),
                accept: i.accept.unwrap_or(true),
                garp: shared.garp.clone(),
                tracks,
            },
            interface,
            vips: vips.iter().map(|p| (p.addr, p.prefix_len)).collect(),
            unicast_peers,
            checksum: shared.checksum,
            notify: i.notify.as_ref().map(|n| self.program(n, "notify")),
        }
    }

    /// A VRRP VIP with a prefix must be a host of its network: not the network's own
    /// address, not its broadcast (a /31 or /32 has neither); and a unicast host at all.
    fn vip_in_its_network(&mut self, v: &Spanned<String>, p: VipPrefix) -> Option<VipPrefix> {
        if !self.unicast_own(v.span(), p.addr, "vip") {
            return None;
        }
        if p.prefix_len <= 30 {
            let host = u32::MAX >> p.prefix_len;
            let bits = u32::from(p.addr) & host;
            let what = if bits == host {
                Some("broadcast")
            } else if bits == 0 {
                Some("network")
            } else {
                None
            };
            if let Some(what) = what {
                self.err(
                    v.span(),
                    format!(
                        "vip {}/{} is the {what} address of its network; give a host address inside it",
                        p.addr, p.prefix_len
                    ),
                );
                return None;
            }
        }
        Some(p)
    }

    fn vip_prefix(&mut self, v: &Spanned<String>) -> Option<VipPrefix> {
        let text = v.get_ref();
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text.as_str(), None),
        };
        let r = match (addr.parse::<Ipv4Addr>(), len.map(str::parse::<u8>)) {
            (Ok(addr), None) => Ok(VipPrefix { addr, prefix_len: 32 }),
            (Ok(addr), Some(Ok(prefix_len))) if prefix_len <= 32 => Ok(VipPrefix { addr, prefix_len }),
            _ => Err(format!(
                "invalid vip {text:?}; write an IPv4 address with an optional prefix length 0..32, e.g. \"198.18.1.100/24\""
            )),
        };
        self.ok(v.span(), r)
    }

    fn sync(&mut self, f: &Spanned<SyncFile>) -> Sync {
        let s = f.get_ref();
        let interface = self.interface(&s.interface, "interface");
        let placeholder = SyncDestination::Peer(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let destination = match (&s.peer, &s.group) {
            (Some(p), None) => self.socket_v4(p, "peer").map(SyncDestination::Peer),
            (None, Some(g)) => self.socket_v4(g, "group").and_then(|a| {
                if a.ip().is_multicast() {
                    Some(SyncDestination::Group(a))
                } else {
                    self.err(g.span(), format!("group {:?} is not a multicast address (224.0.0.0/4); for one peer use peer = \"ADDR:PORT\"", g.get_ref()));
                    None
                }
            }),
            (Some(_), Some(g)) => {
                self.err(g.span(), "[sync] takes either peer or group, not both");
                None
            }
            (None, None) => {
                self.err(f.span(), "[sync] needs peer = \"ADDR:PORT\" (unicast) or group = \"MCAST:PORT\" (multicast)");
                None
            }
        }
        .unwrap_or(placeholder);
        let key_file = self.path(&s.key_file, "key_file");
        if key_file.is_absolute() {
            if let Err(e) = syncd::wire::Key::from_file(&key_file) {
                self.err(
                    s.key_file.span(),
                    format!("{e}; the key is a file of at least 16 bytes shared by both nodes, e.g. head -c 32 /dev/urandom | base64 > {}", key_file.display()),
                );
            } else if let Ok(m) = std::fs::metadata(&key_file) {
                use std::os::unix::fs::PermissionsExt;
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    self.warn(
                        s.key_file.span(),
                        format!("key_file {} is readable by {} (mode {mode:03o}): whoever reads it can forge and read the pair's sync stream; chmod 600 {}", key_file.display(), if mode & 0o004 != 0 { "every user" } else { "its group" }, key_file.display()),
                    );
                }
            }
        }
        let resync_timeout = self.opt_duration(
            s.resync_timeout.as_ref(),
            "resync_timeout",
            Duration::from_secs(30),
        );
        Sync {
            interface,
            destination,
            key_file,
            resync_timeout,
        }
    }

    fn services(&mut self, files: &[Spanned<ServiceFile>]) -> Vec<Service> {
        let services: Vec<Service> = files.iter().map(|s| self.service(s.get_ref())).collect();
        self.duplicates(
            files
                .iter()
                .map(|s| (s.get_ref().name.get_ref().clone(), s.get_ref().name.span())),
            |name, line| format!("duplicate service name {name:?} (first defined on line {line})"),
        );
        // Compare only services whose VIP parsed, keyed as the datapath keys them.
        let keyed: Vec<((SocketAddrV4, Protocol), Range<usize>, &str)> = files
            .iter()
            .zip(&services)
            .filter(|(f, s)| {
                f.get_ref().vip.get_ref().parse::<SocketAddrV4>().is_ok()
                    && !s.virtual_service.vip.ip().is_unspecified()
            })
            .map(|(f, s)| {
                let vs = &s.virtual_service;
                (
                    (vs.vip, vs.protocol),
                    f.get_ref().vip.span(),
                    vs.name.as_str(),
                )
            })
            .collect();
        let mut seen: HashMap<(SocketAddrV4, Protocol), (&str, usize)> = HashMap::new();
        for (key, span, name) in keyed {
            if let Some(&(first, at)) = seen.get(&key) {
                let line = self.loc.line_of(at);
                self.err(
                    span,
                    format!(
                        "service {name:?} uses {}/{}, already used by service {first:?} (line {line})",
                        key.0,
                        key.1.as_str()
                    ),
                );
            } else {
                seen.insert(key, (name, span.start));
            }
        }
        services
    }

    fn service(&mut self, f: &ServiceFile) -> Service {
        let name = self.name(&f.name, "service");
        let placeholder = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        let vip = self
            .socket_v4(&f.vip, "vip")
            .filter(|v| self.unicast_own(f.vip.span(), *v.ip(), "vip"))
            .unwrap_or(placeholder);
        let protocol = f
            .protocol
            .as_ref()
            .and_then(|p| self.choice(p, "protocol", PROTOCOLS))
            .unwrap_or(Protocol::Tcp);
        let mode = self.choice(&f.mode, "mode", MODES);
        let scheduler = f
            .scheduler
            .as_ref()
            .and_then(|s| self.choice(s, "scheduler", SCHEDULERS))
            .unwrap_or(SchedulerKind::Wlc);
        let persistence = match &f.persistence {
            None => Duration::ZERO,
            Some(p) => match self.duration(p, "persistence") {
                Some(d) if d.subsec_nanos() != 0 => {
                    self.err(p.span(), format!("persistence {:?} must be whole seconds (the granularity of IPVS persistence)", format_duration(d)));
                    d
                }
                d => d.unwrap_or_default(),
            },
        };

        let mut reals = Vec::new();
        for r in &f.real {
            let r = r.get_ref();
            let Some(addr) = self.socket_v4(&r.address, "real server address") else {
                continue;
            };
            let weight = r
                .weight
                .as_ref()
                .map_or(Some(1), |w| self.int(w, "weight", 0..=65535))
                .unwrap_or(1);
            if let Some(m @ (Mode::Dr | Mode::Tun)) = mode {
                if vip.port() != 0 && addr.port() != vip.port() {
                    self.err(
                        r.address.span(),
                        format!(
                            "mode {} forwards to the VIP's port; real {addr} must use port {}",
                            m.as_str(),
                            vip.port()
                        ),
                    );
                }
            }
            reals.push((addr, r.address.span(), weight));
        }
        self.duplicates(
            reals.iter().map(|(a, span, _)| (*a, span.clone())),
            |addr, line| {
                format!(
                    "real server {addr} is listed twice in service {name:?} (first on line {line})"
                )
            },
        );
        if f.real.is_empty() {
            self.warn(
                f.name.span(),
                format!("service {name:?} has no real servers; its VIP will not be served"),
            );
        }

        let is_fullnat = mode == Some(Mode::FullNat);
        let mode_name = mode.map_or("?", Mode::as_str);
        let local_addresses = match &f.local_addresses {
            Some(l) if mode.is_some() && !is_fullnat => {
                self.err(l.span(), format!("local_addresses are only used by mode fullnat (service {name:?} uses mode {mode_name})"));
                Vec::new()
            }
            Some(l) => {
                if l.get_ref().is_empty() {
                    self.err(l.span(), "local_addresses is empty; mode fullnat needs at least one local address (LIP)");
                }
                let lips: Vec<(Ipv4Addr, Range<usize>)> = l
                    .get_ref()
                    .iter()
                    .filter_map(|a| Some((self.ipv4(a, "local address")?, a.span())))
                    .collect();
                self.duplicates(lips.iter().cloned(), |lip, line| {
                    format!("local address {lip} is listed twice in service {name:?} (first on line {line})")
                });
                lips.into_iter().map(|(lip, _)| lip).collect()
            }
            None => {
                if is_fullnat {
                    self.err(f.mode.span(), "mode fullnat needs local_addresses (the LIPs it uses as source), e.g. local_addresses = [\"198.18.2.5\"]");
                }
                Vec::new()
            }
        };
        let proxy_protocol = f.proxy_protocol.as_ref().and_then(|p| {
            let pp = self.choice(p, "proxy_protocol", PROXY_PROTOCOLS)?;
            if mode.is_some() && !is_fullnat {
                self.err(p.span(), format!("proxy_protocol needs mode fullnat (service {name:?} uses mode {mode_name})"));
            } else if protocol != Protocol::Tcp {
                self.err(p.span(), format!("proxy_protocol needs protocol tcp (service {name:?} uses {})", protocol.as_str()));
            }
            Some(pp)
        });
        let sorry_server = f
            .sorry_server
            .as_ref()
            .and_then(|s| self.socket_v4(s, "sorry_server"));
        let quorum = f.quorum.as_ref().and_then(|q| {
            let n: u32 = self.int(q, "quorum", 1..=65535)?;
            if n as usize > f.real.len() {
                self.err(
                    q.span(),
                    format!(
                        "quorum {n} is more than the {} real servers of service {name:?}",
                        f.real.len()
                    ),
                );
            }
            Some(n)
        });
        let check = f.check.as_ref().map(|c| self.check(c.get_ref()));

        Service {
            virtual_service: VirtualService {
                name,
                vip,
                protocol,
                mode: mode.unwrap_or(Mode::Nat),
                scheduler,
                persistence,
                reals: reals
                    .into_iter()
                    .map(|(addr, _, weight)| RealServer { addr, weight })
                    .collect(),
                local_addresses,
                proxy_protocol,
            },
            check,
            sorry_server,
            quorum,
        }
    }

    fn check(&mut self, f: &CheckFile) -> Check {
        let kind_name = self
            .choice(&f.kind, "check kind", CHECK_KINDS)
            .unwrap_or("tcp");
        // Keys that belong to one kind only: an error elsewhere, since they would be ignored.
        for (key, span, owner) in [
            ("path", f.path.as_ref().map(Spanned::span), "http"),
            ("status", f.status.as_ref().map(Spanned::span), "http"),
            ("body", f.body.as_ref().map(Spanned::span), "http"),
            ("command", f.command.as_ref().map(Spanned::span), "exec"),
            ("payload", f.payload.as_ref().map(Spanned::span), "udp"),
            ("expect", f.expect.as_ref().map(Spanned::span), "udp"),
        ] {
            if let Some(span) = span {
                if kind_name != owner {
                    self.err(span, format!("{key} is only used by kind = \"{owner}\" checks (this one is {kind_name:?})"));
                }
            }
        }
        let kind = match kind_name {
            "http" => {
                let path = f.path.as_ref().map_or("/".to_owned(), |p| {
                    if !p.get_ref().starts_with('/') {
                        self.err(
                            p.span(),
                            format!("path {:?} must start with '/'", p.get_ref()),
                        );
                    } else if p.get_ref().chars().any(|c| c.is_control() || c == ' ') {
                        self.err(
                            p.span(),
                            format!("path {:?} has a space or control character (CR or LF would end the request line and inject headers); percent-encode it, e.g. %20 for a space", p.get_ref()),
                        );
                    }
                    p.get_ref().clone()
                });
                let status = f.status.as_ref().map(|s| {
                    if s.get_ref().is_empty() {
                        self.err(
                            s.span(),
                            "status is empty; list the accepted codes, or omit it for 200..299",
                        );
                    }
                    s.get_ref()
                        .iter()
                        .filter_map(|c| self.int(c, "status", 100..=599))
                        .collect()
                });
                CheckKind::Http {
                    path,
                    status,
                    body: f.body.as_ref().map(|b| b.get_ref().clone()),
                }
            }
            "udp" => CheckKind::Udp {
                payload: f
                    .payload
                    .as_ref()
                    .map_or(String::new(), |p| p.get_ref().clone()),
                expect: f.expect.as_ref().map(|e| e.get_ref().clone()),
            },
            "exec" => {
                let command = match &f.command {
                    Some(c) if !c.get_ref().is_empty() => {
                        let program = std::path::Path::new(&c.get_ref()[0]);
                        if program.is_absolute() && !program.is_file() {
                            self.err(c.span(), format!("command program {} does not exist (or is not a file); give the checker program's absolute path", program.display()));
                        }
                        c.get_ref().clone()
                    }
                    Some(c) => {
                        self.err(c.span(), "command is empty; give the program and its arguments, e.g. [\"/usr/local/bin/check\", \"--quick\"]");
                        Vec::new()
                    }
                    None => {
                        self.err(
                            f.kind.span(),
                            "kind = \"exec\" needs command = [\"/path/to/program\", \"arg\", ...]",
                        );
                        Vec::new()
                    }
                };
                CheckKind::Exec { command }
            }
            _ => CheckKind::Tcp,
        };
        let port = f.port.as_ref().and_then(|p| self.int(p, "port", 1..=65535));
        let interval = self.opt_duration(f.interval.as_ref(), "interval", Duration::from_secs(2));
        let timeout = self.opt_duration(f.timeout.as_ref(), "timeout", Duration::from_secs(1));
        for (key, v, d) in [
            ("interval", &f.interval, interval),
            ("timeout", &f.timeout, timeout),
        ] {
            if let (Some(v), true) = (v, d.is_zero()) {
                self.err(v.span(), format!("{key} must be greater than 0s"));
            }
        }
        if timeout > interval {
            let span = f
                .timeout
                .as_ref()
                .or(f.interval.as_ref())
                .map_or(f.kind.span(), Spanned::span);
            self.err(
                span,
                format!(
                    "timeout {} is longer than interval {}; a check must end before the next one starts",
                    format_duration(timeout),
                    format_duration(interval)
                ),
            );
        }
        let rise = f
            .rise
            .as_ref()
            .and_then(|r| self.int(r, "rise", 1..=100))
            .unwrap_or(2);
        let fall = f
            .fall
            .as_ref()
            .and_then(|r| self.int(r, "fall", 1..=100))
            .unwrap_or(2);
        let on_fail = f
            .on_fail
            .as_ref()
            .and_then(|o| self.choice(o, "on_fail", ON_FAIL))
            .unwrap_or(OnFail::Inhibit);
        Check {
            kind,
            port,
            interval,
            timeout,
            rise,
            fall,
            on_fail,
        }
    }

    /// Where services and real servers sit relative to this box: every VIP on a VRRP
    /// instance (or nothing would bring it up), real servers that are plain unicast hosts
    /// and not a VIP, DR/TUN real servers within reach of the mode, and FULLNAT LIPs placed
    /// like VIPs ([`Self::lip_placement`]).
    fn placement(
        &mut self,
        vrrp: Option<&Vrrp>,
        files: &[Spanned<ServiceFile>],
        services: &[Service],
    ) {
        let vips: Vec<Ipv4Addr> = services
            .iter()
            .map(|s| *s.virtual_service.vip.ip())
            .collect();
        let prefixes: Vec<(String, VipPrefix)> = vrrp
            .iter()
            .flat_map(|v| v.instances.iter())
            .flat_map(|i| {
                i.vips.iter().map(move |&(addr, prefix_len)| {
                    (i.config.name.clone(), VipPrefix { addr, prefix_len })
                })
            })
            .collect();
        // The network of a VIP prefix, as (network address, mask).
        let network = |p: &VipPrefix| {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(p.prefix_len))
                .unwrap_or(0);
            (u32::from(p.addr) & mask, mask)
        };
        let in_prefix = |p: &VipPrefix, a: Ipv4Addr| {
            let (net, mask) = network(p);
            u32::from(a) & mask == net
        };
        for (f, svc) in files.iter().zip(services) {
            let f = f.get_ref();
            let vs = &svc.virtual_service;
            if f.vip.get_ref().parse::<SocketAddrV4>().is_err() {
                continue;
            }
            if vrrp.is_some() && !prefixes.iter().any(|(_, p)| p.addr == *vs.vip.ip()) {
                let have: Vec<String> = prefixes
                    .iter()
                    .map(|(n, p)| format!("{n}: {}/{}", p.addr, p.prefix_len))
                    .collect();
                self.err(
                    f.vip.span(),
                    format!(
                        "VIP {} of service {:?} is in no [[vrrp.instance]] vips, so VRRP would never bring it up on this box; add it to an instance (now: {})",
                        vs.vip.ip(),
                        vs.name,
                        if have.is_empty() { "none".to_string() } else { have.join(", ") }
                    ),
                );
            }
            let reach: Vec<&VipPrefix> = prefixes
                .iter()
                .map(|(_, p)| p)
                .filter(|p| p.prefix_len < 32)
                .collect();
            for r in &f.real {
                let Ok(addr) = r.get_ref().address.get_ref().parse::<SocketAddrV4>() else {
                    continue;
                };
                let ip = *addr.ip();
                let span = r.get_ref().address.span();
                let subnet_broadcast = reach
                    .iter()
                    .find(|p| p.prefix_len <= 30 && u32::from(ip) == network(p).0 | !network(p).1);
                if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast()
                {
                    self.err(span, format!("real server {addr} is not a unicast host address; give the real server's own address"));
                } else if let Some(p) = subnet_broadcast {
                    self.err(span, format!("real server {addr} is the broadcast address of {}/{} (a VRRP instance's network); give the real server's own address", Ipv4Addr::from(network(p).0), p.prefix_len));
                } else if vips.contains(&ip) {
                    self.err(span, format!("real server {addr} is a VIP of this config; a real server needs its own address (the director would forward to itself)"));
                } else if vs.mode == Mode::Dr
                    && !reach.is_empty()
                    && !reach.iter().any(|p| in_prefix(p, ip))
                {
                    let nets: Vec<String> = reach
                        .iter()
                        .map(|p| format!("{}/{}", Ipv4Addr::from(network(p).0), p.prefix_len))
                        .collect();
                    self.err(span, format!("mode dr forwards by MAC address, so real server {ip} must be on a network this box shares with it; it is in none of the VRRP instances' networks ({}); use mode nat or tun for a routed real server", nets.join(", ")));
                }
            }
            let lips = f.local_addresses.iter().flat_map(|l| l.get_ref());
            for lip_text in lips.filter(|_| vs.mode == Mode::FullNat) {
                let Ok(lip) = lip_text.get_ref().parse::<Ipv4Addr>() else {
                    continue;
                };
                self.lip_placement(
                    lip,
                    lip_text.span(),
                    &vs.name,
                    vrrp.is_some(),
                    &prefixes,
                    services,
                );
            }
            if let Some(sorry) = f.sorry_server.as_ref() {
                if let Ok(addr) = sorry.get_ref().parse::<SocketAddrV4>() {
                    if vips.contains(addr.ip()) {
                        self.err(sorry.span(), format!("sorry_server {addr} is a VIP of this config; it must be a real server's own address"));
                    }
                }
            }
        }
    }

    /// A FULLNAT local address (LIP) is where the real servers send their replies, so it must
    /// move with VRRP like a VIP (or replies go to a box that is not forwarding), and it must
    /// be an address of its own: not a VIP (a packet to VIP:port could then be a client's or a
    /// real server's reply) and not a real server (the director would forward to itself).
    /// Several services may share LIPs: their ports are allocated per (LIP, real server).
    fn lip_placement(
        &mut self,
        lip: Ipv4Addr,
        span: Range<usize>,
        service: &str,
        has_vrrp: bool,
        prefixes: &[(String, VipPrefix)],
        services: &[Service],
    ) {
        let mut all = services.iter().map(|s| &s.virtual_service);
        if let Some(owner) = all.clone().find(|vs| *vs.vip.ip() == lip) {
            self.err(span, format!(
                "local address {lip} of service {service:?} is the VIP of service {:?}; a LIP needs an address of its own (a packet to it could be a client's request or a real server's reply)",
                owner.name
            ));
        } else if let Some(owner) = all.find(|vs| vs.reals.iter().any(|r| *r.addr.ip() == lip)) {
            self.err(span, format!(
                "local address {lip} of service {service:?} is a real server of service {:?}; a LIP is the director's own source address, not a real server's",
                owner.name
            ));
        } else if has_vrrp && !prefixes.iter().any(|(_, p)| p.addr == lip) {
            let have: Vec<String> = prefixes
                .iter()
                .map(|(n, p)| format!("{n}: {}/{}", p.addr, p.prefix_len))
                .collect();
            self.err(span, format!(
                "local address {lip} of service {service:?} is in no [[vrrp.instance]] vips, so VRRP would never bring it up and the real servers' replies would not reach the active box; add it to an instance, like a VIP (now: {})",
                if have.is_empty() { "none".to_string() } else { have.join(", ") }
            ));
        }
    }

    fn control(&mut self, f: Option<&ControlFile>) -> Control {
        let socket = f.and_then(|c| c.socket.as_ref()).map_or_else(
            || PathBuf::from(DEFAULT_SOCKET_PATH),
            |s| {
                let p = self.path(s, "socket");
                // sockaddr_un's sun_path: 108 bytes with the terminating NUL.
                let len = p.as_os_str().len();
                if len > 107 {
                    self.err(s.span(), format!("socket path is {len} bytes; a Unix socket path has at most 107 (sockaddr_un), choose a shorter one, e.g. {DEFAULT_SOCKET_PATH}"));
                }
                p
            },
        );
        let metrics = f.and_then(|c| c.metrics.as_ref()).and_then(|m| {
            let r = m.get_ref().parse::<SocketAddr>().map_err(|_| {
                format!(
                    "invalid metrics address {:?}; write ADDR:PORT, e.g. \"127.0.0.1:9586\"",
                    m.get_ref()
                )
            });
            let addr = self.ok(m.span(), r)?;
            if !addr.ip().is_loopback() {
                let who = if addr.ip().is_unspecified() {
                    "any host that can reach this box".to_string()
                } else {
                    format!("any host that can reach {}", addr.ip())
                };
                self.warn(m.span(), format!("metrics on {addr} can be read, without authentication, by {who} on port {}: connection counts, real servers and their state; bind 127.0.0.1 unless a scraper elsewhere needs it", addr.port()));
            }
            Some(addr)
        });
        Control { socket, metrics }
    }

    fn datapath(&mut self, f: Option<&DatapathFile>) -> (DatapathConfig, XdpMode) {
        let mut dp = DatapathConfig::default();
        let Some(f) = f else {
            return (dp, XdpMode::Off);
        };
        if let Some(w) = f
            .workers
            .as_ref()
            .and_then(|w| self.int(w, "workers", 0..=MAX_WORKERS))
        {
            dp.workers = w;
        }
        if let Some(m) = f
            .max_connections
            .as_ref()
            .and_then(|m| self.int(m, "max_connections", 1..=MAX_CONNECTIONS))
        {
            dp.max_connections = m;
        }
        let xdp = f
            .xdp
            .as_ref()
            .and_then(|x| self.choice(x, "xdp", XDP_MODES))
            .unwrap_or(XdpMode::Off);
        if let Some(fp) = &f.fast_path {
            dp.fast_path = *fp.get_ref();
            if dp.fast_path && xdp == XdpMode::Off {
                self.err(
                    fp.span(),
                    "fast_path = true needs the XDP program: set xdp = \"native\", \"generic\" or \"auto\" (or leave fast_path out)",
                );
            }
        }
        if let Some(list) = &f.interfaces {
            dp.interfaces = list
                .iter()
                .map(|i| self.interface(i, "interface"))
                .collect();
            self.duplicates(
                list.iter().map(|i| (i.get_ref().clone(), i.span())),
                |name, line| format!("interface {name:?} is listed twice (first on line {line})"),
            );
        }
        let defaults = Timeouts::default();
        let mut timeout = |v: &Option<Spanned<RawDuration>>, key: &str, default: Duration| {
            let d = self.opt_duration(v.as_ref(), key, default);
            match v {
                Some(v) if d.is_zero() => {
                    self.err(v.span(), format!("{key} must be greater than 0s"));
                    default
                }
                _ => d,
            }
        };
        dp.timeouts.tcp = timeout(&f.tcp_timeout, "tcp_timeout", defaults.tcp);
        dp.timeouts.tcp_fin = timeout(&f.tcp_fin_timeout, "tcp_fin_timeout", defaults.tcp_fin);
        dp.timeouts.udp = timeout(&f.udp_timeout, "udp_timeout", defaults.udp);
        (dp, xdp)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{parse, Config, ConfigError};
    use super::*;

    const NODE: &str = "[node]\nname = \"lb-a\"\n";
    const WEB: &str = "[[service]]\nname = \"web\"\nvip = \"198.18.1.100:80\"\nmode = \"nat\"\n\
                       [[service.real]]\naddress = \"198.18.2.11:8080\"\n";

    fn check(text: &str) -> Result<Config, Vec<ConfigError>> {
        parse(text, Path::new("t.toml"))
    }

    fn messages(text: &str) -> Vec<String> {
        match check(text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| e.message).collect(),
        }
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = check(&format!("{NODE}{WEB}")).expect("valid");
        let vs = &c.services[0].virtual_service;
        assert_eq!(vs.protocol, Protocol::Tcp);
        assert_eq!(vs.scheduler, SchedulerKind::Wlc);
        assert_eq!(vs.persistence, Duration::ZERO);
        assert_eq!(vs.reals[0].weight, 1);
        assert_eq!(c.control.socket, Path::new(DEFAULT_SOCKET_PATH));
        assert_eq!(c.datapath, DatapathConfig::default());
        assert_eq!(c.xdp, XdpMode::Off);
        assert!(c.vrrp.is_none() && c.sync.is_none() && c.warnings.is_empty());
    }

    #[test]
    fn advert_interval_ranges_follow_the_version() {
        let vrrp = |version: u8, interval: &str| {
            messages(&format!(
                "{NODE}[vrrp]\nversion = {version}\nadvert_interval = \"{interval}\"\n\
                 [[vrrp.instance]]\nname = \"ext\"\ninterface = \"eth0\"\nvrid = 51\n\
                 priority = 150\nvips = [\"198.18.1.100/24\"]\n{WEB}"
            ))
        };
        // RFC 9568 §5.2.7: 12-bit centiseconds; RFC 3768 §5.3.7: 8-bit seconds.
        for ok in ["10ms", "100ms", "40950ms", "1s"] {
            assert_eq!(vrrp(3, ok), Vec::<String>::new(), "v3 {ok}");
        }
        for bad in ["0s", "5ms", "15ms", "40960ms", "41s"] {
            assert_eq!(vrrp(3, bad).len(), 1, "v3 {bad}");
        }
        for ok in ["1s", "3s", "255s"] {
            assert_eq!(vrrp(2, ok), Vec::<String>::new(), "v2 {ok}");
        }
        for bad in ["0s", "1500ms", "256s"] {
            assert_eq!(vrrp(2, bad).len(), 1, "v2 {bad}");
        }
    }

    #[test]
    fn a_fullnat_service_carries_its_lips_and_proxy_protocol() {
        let text = format!(
            "{NODE}[[service]]\nname = \"f\"\nvip = \"198.18.1.100:80\"\nmode = \"fullnat\"\n\
             local_addresses = [\"198.18.2.5\", \"198.18.2.6\"]\nproxy_protocol = \"v2\"\n\
             [[service.real]]\naddress = \"198.18.2.11:8080\"\n"
        );
        let c = check(&text).expect("valid");
        let vs = &c.services[0].virtual_service;
        assert_eq!(vs.mode, Mode::FullNat);
        assert_eq!(
            vs.local_addresses,
            [Ipv4Addr::new(198, 18, 2, 5), Ipv4Addr::new(198, 18, 2, 6)]
        );
        assert_eq!(vs.proxy_protocol, Some(ProxyProtocol::V2));
    }

    #[test]
    fn errors_come_in_file_order_with_character_columns() {
        let text = format!(
            "{NODE}[datapath]\nxdp = \"on\"\n[[service]]\nname = \"wéb\"\nvip = \"x\"\nmode = \"nat\"\n"
        );
        let errors = check(&text).expect_err("invalid");
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(4, 7), (6, 8), (7, 7)]);
    }

    #[test]
    fn odd_input_gives_errors_not_panics() {
        for text in [
            "",
            "\u{feff}",
            "[",
            "x",
            "[node]\nname = \"\"",
            "[[service]]",
            "a = 1\n\u{00e9}",
        ] {
            assert!(check(text).is_err(), "{text:?}");
        }
    }

    const VRRP: &str = "[vrrp]\nversion = 2\nadvert_interval = \"2s\"\nchecksum = \"pseudo-header\"\n\
                        garp_repeat = 3\nrealtime_priority = 0\n\
                        [[vrrp.instance]]\nname = \"ext\"\ninterface = \"eth0\"\nvrid = 51\n\
                        priority = 150\nvips = [\"198.18.1.100/24\", \"198.18.1.101\"]\n\
                        preempt = false\naccept = false\nunicast_peers = [\"198.18.1.3\"]\n\
                        track_interfaces = [{ name = \"eth2\", weight = -60 }, { name = \"eth3\" }]\n\
                        notify = \"/bin/true\"\n\
                        [[vrrp.instance]]\nname = \"int\"\ninterface = \"eth1\"\nvrid = 52\n\
                        priority = 100\nvips = [\"198.18.2.1/24\"]\n\
                        [[vrrp.group]]\nname = \"lb\"\ninstances = [\"ext\", \"int\"]\n";

    #[test]
    fn vrrp_is_validated_into_the_engines_instances_and_groups() {
        let c = check(&format!("{NODE}{VRRP}{WEB}")).expect("valid");
        let v = c.vrrp.expect("[vrrp]");
        assert_eq!(v.realtime_priority, None, "0 = normal scheduling");
        let ext = &v.instances[0];
        let garp = GarpPolicy {
            repeat: 3,
            ..GarpPolicy::default()
        };
        assert_eq!(
            ext.config,
            InstanceConfig {
                name: "ext".into(),
                version: VrrpVersion::V2,
                vrid: 51,
                priority: 150,
                advert_interval: Duration::from_secs(2),
                vips: vec![
                    IpAddr::V4(Ipv4Addr::new(198, 18, 1, 100)),
                    IpAddr::V4(Ipv4Addr::new(198, 18, 1, 101))
                ],
                primary: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                preempt: false,
                preempt_delay: Duration::ZERO,
                accept: false,
                garp: garp.clone(),
                tracks: vec![
                    Track {
                        name: vrrp::driver::track_interface("eth2"),
                        weight: -60
                    },
                    Track {
                        name: vrrp::driver::track_interface("eth3"),
                        weight: 0
                    },
                ],
            }
        );
        assert_eq!(ext.interface, "eth0");
        assert_eq!(
            ext.vips,
            [
                (Ipv4Addr::new(198, 18, 1, 100), 24),
                (Ipv4Addr::new(198, 18, 1, 101), 32)
            ]
        );
        assert_eq!(ext.unicast_peers, [Ipv4Addr::new(198, 18, 1, 3)]);
        assert_eq!(ext.checksum, ChecksumMode::PseudoHeader);
        assert_eq!(ext.notify.as_deref(), Some(Path::new("/bin/true")));
        // The section's settings are every instance's.
        let int = &v.instances[1];
        assert_eq!(
            (
                int.config.version,
                int.config.advert_interval,
                &int.config.garp
            ),
            (VrrpVersion::V2, Duration::from_secs(2), &garp)
        );
        assert!(int.config.preempt && int.config.accept && int.config.tracks.is_empty());
        assert_eq!(
            v.groups,
            [DriverGroup {
                config: GroupConfig {
                    name: "lb".into(),
                    members: vec!["ext".into(), "int".into()]
                },
                notify: None
            }]
        );
        assert_eq!(
            v.instance_of(Ipv4Addr::new(198, 18, 1, 101))
                .map(|i| i.config.name.as_str()),
            Some("ext")
        );
        assert!(v.instance_of(Ipv4Addr::new(198, 18, 1, 102)).is_none());
        // The engine's whole config: the caller's tracks after the file's, and the hold.
        let d = v.driver(true, |name| {
            vec![Track {
                name: format!("quorum:{name}"),
                weight: 0,
            }]
        });
        assert!(d.hold_preempt);
        assert_eq!(d.realtime_priority, None);
        let names: Vec<&str> = d.instances[0]
            .config
            .tracks
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                track_name("eth2").as_str(),
                &track_name("eth3"),
                "quorum:ext"
            ]
        );
        assert_eq!(d.groups, v.groups);
    }

    fn track_name(interface: &str) -> String {
        vrrp::driver::track_interface(interface)
    }

    #[test]
    fn sync_names_its_destination_in_the_sync_engines_type() {
        let key =
            std::env::temp_dir().join(format!("director-validate-{}.key", std::process::id()));
        std::fs::write(&key, "0123456789abcdef0123456789abcdef").expect("write a test key");
        let sync = |dest: &str| {
            check(&format!(
                "{NODE}[sync]\ninterface = \"eth2\"\n{dest}\nkey_file = \"{}\"\n{WEB}",
                key.display()
            ))
            .expect("valid")
            .sync
            .expect("[sync]")
        };
        let peer = sync("peer = \"198.18.3.3:8848\"");
        assert_eq!(
            peer.destination,
            syncd::io::Destination::Peer("198.18.3.3:8848".parse().unwrap())
        );
        assert_eq!(peer.resync_timeout, Duration::from_secs(30));
        assert_eq!(
            sync("group = \"224.0.0.81:8848\"").destination,
            syncd::io::Destination::Group("224.0.0.81:8848".parse().unwrap())
        );
    }

    /// A sync key others can read is accepted, with a warning that says what it exposes
    /// and the fix; a key only root reads gets none.
    #[test]
    fn a_sync_key_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let key = std::env::temp_dir().join(format!("director-keymode-{}.key", std::process::id()));
        std::fs::write(&key, "0123456789abcdef0123456789abcdef").expect("write a test key");
        let text = format!(
            "{NODE}[sync]\ninterface = \"eth2\"\npeer = \"198.18.3.3:8848\"\nkey_file = \"{}\"\n{WEB}",
            key.display()
        );
        let warnings = |mode: u32| {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let c = check(&text).expect("valid");
            c.warnings
                .into_iter()
                .map(|w| w.message)
                .collect::<Vec<_>>()
        };
        let open = warnings(0o644);
        let group = warnings(0o640);
        let private = warnings(0o600);
        let _ = std::fs::remove_file(&key);
        assert_eq!(open.len(), 1, "{open:?}");
        assert!(
            open[0].contains("readable by every user (mode 644)") && open[0].contains("chmod 600"),
            "{open:?}"
        );
        assert!(
            group[0].contains("readable by its group (mode 640)"),
            "{group:?}"
        );
        assert!(private.is_empty(), "{private:?}");
    }

    /// A metrics endpoint beyond loopback is accepted with a warning naming who can read it.
    #[test]
    fn a_metrics_address_beyond_loopback_is_warned_about() {
        let with = |addr: &str| {
            let c =
                check(&format!("{NODE}{WEB}\n[control]\nmetrics = \"{addr}\"\n")).expect("valid");
            c.warnings
                .into_iter()
                .map(|w| w.message)
                .collect::<Vec<_>>()
        };
        let any = with("0.0.0.0:9586");
        assert!(
            any.len() == 1 && any[0].contains("any host that can reach this box on port 9586"),
            "{any:?}"
        );
        let one = with("198.18.3.2:9586");
        assert!(
            one.len() == 1 && one[0].contains("any host that can reach 198.18.3.2"),
            "{one:?}"
        );
        assert!(with("127.0.0.1:9586").is_empty());
    }
}
