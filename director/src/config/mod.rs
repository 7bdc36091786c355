//! The operator's config file, from text to validated domain types.
//!
//! The flow is one way: text → [`file`] (serde structs, `deny_unknown_fields`, spans kept) →
//! [`validate`] → [`Config`]. Every problem becomes a [`ConfigError`] located by file, line and
//! column; validation collects all of them rather than stopping at the first. The datapath's
//! part of the result is `forwarder::model` types; sections whose engines come later (VRRP,
//! sync, health checks) are validated into the plain structs below.

#![forbid(unsafe_code)]

pub mod duration;
pub mod error;
pub mod file;
pub mod validate;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use forwarder::model::{DatapathConfig, VirtualService};
pub use vrrp::instance::GarpPolicy;
pub use vrrp::wire::ChecksumMode;

pub use error::ConfigError;

use error::Locator;

/// Where the appliance keeps its config.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/director/director.toml";
/// `[control] socket` when the file does not set it.
pub const DEFAULT_SOCKET_PATH: &str = "/run/director/director.sock";

/// Reads and validates a config file. Errors name `path` as given.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(vec![ConfigError::whole_file(
            path,
            format!("cannot read config file: {e}"),
        )]),
    }
}

/// Parses and validates config text; `file` is only used to name the file in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, Vec<ConfigError>> {
    let loc = Locator { file, text };
    let raw: file::FileConfig = toml::from_str(text).map_err(|e| vec![from_toml_error(&e, loc)])?;
    validate::validate(raw, loc)
}

/// Turns a TOML syntax or serde error into a located error whose message says what is
/// allowed, in the file's words (keys, tables, arrays) rather than serde's.
fn from_toml_error(e: &toml::de::Error, loc: Locator<'_>) -> ConfigError {
    let message = e.message().trim().replace('\n', ": ");
    let message = if let Some(rest) = message.strip_prefix("unknown field ") {
        // "`foo`, expected one of `a`, `b`" or "`foo`, expected `a`"
        match rest.split_once(", expected ") {
            Some((key, allowed)) => {
                let allowed = allowed
                    .trim_start_matches("one of ")
                    .replace(" or ", ", ")
                    .replace('`', "");
                format!("unknown key {key}; allowed keys here: {allowed}")
            }
            None => format!("unknown key {rest}"),
        }
    } else if message == "missing field `node`" {
        "missing required table [node]".to_owned()
    } else if let Some(rest) = message.strip_prefix("missing field ") {
        // The span is the table that lacks the key; name it when it has a header.
        let start = e.span().map_or(0, |s| s.start).min(loc.text.len());
        let header = loc.text[start..].lines().next().unwrap_or("").trim();
        match header.split_once('#').map_or(header, |(h, _)| h).trim() {
            h if h.starts_with('[') => format!("missing required key {rest} in {h}"),
            _ => format!("missing required key {rest}"),
        }
    } else {
        let message = message
            .replace("expected i64", "expected an integer")
            .replace("expected a sequence", "expected an array");
        match message.split_once("expected struct ") {
            Some((head, _)) => format!("{head}expected a table"),
            None => message,
        }
    };
    loc.error(e.span().unwrap_or(0..0), message)
}

/// A validated config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: Node,
    /// `None`: standalone, the operator puts the VIPs on the interfaces.
    pub vrrp: Option<Vrrp>,
    /// `None`: nothing is replicated.
    pub sync: Option<Sync>,
    pub services: Vec<Service>,
    pub control: Control,
    pub datapath: DatapathConfig,
    pub xdp: XdpMode,
    /// Things that are allowed but probably not meant (a service without real servers).
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// The datapath's view of the services, in file order.
    pub fn virtual_services(&self) -> impl Iterator<Item = &VirtualService> {
        self.services.iter().map(|s| &s.virtual_service)
    }

    /// Real servers over all services.
    pub fn real_server_count(&self) -> usize {
        self.virtual_services().map(|vs| vs.reals.len()).sum()
    }
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Hostname-like; names this box in sync packets, events and status.
    pub name: String,
}

/// `[vrrp]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vrrp {
    pub version: VrrpVersion,
    /// v3: 10ms..40.95s in centiseconds; v2: whole seconds 1..255. Default 1s.
    pub advert_interval: Duration,
    pub instances: Vec<VrrpInstance>,
    pub groups: Vec<VrrpGroup>,
    /// v3 over IPv4: the checksum style sent (both are accepted). Default: with the
    /// pseudo-header, as RFC 9568 and keepalived.
    pub checksum: ChecksumMode,
    /// Gratuitous ARP on takeover. Defaults as keepalived: 5 at once, again after 5 s.
    pub garp: GarpPolicy,
    /// SCHED_FIFO priority of the VRRP timer thread; `None` (`0` in the file) = normal
    /// scheduling. Default 20.
    pub realtime_priority: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpVersion {
    /// RFC 3768.
    V2,
    /// RFC 9568 (formerly RFC 5798); the default.
    V3,
}

/// `[[vrrp.instance]]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpInstance {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    /// 1..255; 255 = the address owner.
    pub priority: u8,
    pub vips: Vec<VipPrefix>,
    /// Default true.
    pub preempt: bool,
    /// Default zero.
    pub preempt_delay: Duration,
    /// Empty = multicast to 224.0.0.18.
    pub unicast_peers: Vec<Ipv4Addr>,
    pub track_interfaces: Vec<TrackInterface>,
    /// RFC 9568 Accept_Mode: whether the master accepts traffic to the VIPs other than the
    /// services (ping, SSH). Default true, as keepalived without `vrrp_strict`.
    pub accept: bool,
    /// Called with INSTANCE NAME STATE PRIORITY on every transition.
    pub notify: Option<PathBuf>,
}

/// A VIP with the prefix length it is added with (`198.18.1.100/24`; no prefix = /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipPrefix {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// An interface whose state changes the instance's effective priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInterface {
    pub name: String,
    /// Added to the priority while the interface is down; 0 (the default) = go to FAULT.
    pub weight: i32,
}

/// `[[vrrp.group]]`: instances that always move together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpGroup {
    pub name: String,
    pub instances: Vec<String>,
    /// Called with GROUP|INSTANCE NAME STATE PRIORITY on every transition.
    pub notify: Option<PathBuf>,
}

/// `[sync]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    pub interface: String,
    pub destination: SyncDestination,
    /// The shared HMAC-SHA256 key; read by syncd, not here.
    pub key_file: PathBuf,
    /// A starting node does not preempt a live master until it has received the master's
    /// whole connection table, or until this much time has passed (default 30 s).
    pub resync_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDestination {
    /// `peer = "ADDR:PORT"`: unicast to the other node.
    Peer(SocketAddrV4),
    /// `group = "MCAST:PORT"`: a multicast group.
    Group(SocketAddrV4),
}

/// `[[service]]`: the datapath's `VirtualService` and what the control plane needs beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub virtual_service: VirtualService,
    pub check: Option<Check>,
    pub sorry_server: Option<SocketAddrV4>,
    /// Minimum healthy real servers for the service to count as up (VRRP tracking).
    pub quorum: Option<u32>,
}

pub use forwarder::model::ProxyProtocol;

/// `[service.check]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub kind: CheckKind,
    /// Port to check; `None` = the real server's port.
    pub port: Option<u16>,
    /// Default 2s.
    pub interval: Duration,
    /// Total deadline of one check, ≤ interval. Default 1s.
    pub timeout: Duration,
    /// Consecutive successes to mark a real server up. Default 2.
    pub rise: u32,
    /// Consecutive failures to mark it down. Default 2.
    pub fall: u32,
    pub on_fail: OnFail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http {
        /// Default "/".
        path: String,
        /// Accepted status codes; `None` = any of 200..=299.
        status: Option<Vec<u16>>,
        /// A substring the body must contain.
        body: Option<String>,
    },
    /// One datagram sent, one reply wanted before the deadline (an ICMP port unreachable
    /// fails the check at once).
    Udp {
        /// The request datagram. Default: empty.
        payload: String,
        /// A substring the reply must contain; `None` = any reply.
        expect: Option<String>,
    },
    /// A program and its arguments; exit status 0 = healthy.
    Exec {
        command: Vec<String>,
    },
}

/// What a failed real server gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFail {
    /// Weight 0: no new flows, existing ones finish. The default.
    Inhibit,
    /// Removed from the service.
    Remove,
}

/// `[control]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub socket: PathBuf,
    /// Prometheus text endpoint; off when `None`.
    pub metrics: Option<SocketAddr>,
}

/// `[datapath] xdp`: whether to load the XDP fast path, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// The default.
    Off,
    /// Native where the driver supports it, generic otherwise.
    Auto,
    Native,
    Generic,
}
