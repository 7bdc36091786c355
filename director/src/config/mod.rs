//! The operator's config file, from text to validated domain types.
//!
//! The flow is one way: text → [`file`] (serde structs, `deny_unknown_fields`, spans kept) →
//! [`validate`] → [`Config`]. Every problem becomes a [`ConfigError`] located by file, line and
//! column; validation collects all of them rather than stopping at the first. The datapath's
//! part of the result is `forwarder::model` types, `[vrrp]` is the VRRP engine's own types
//! (`vrrp::driver`), `[sync]` names its destination in the sync engine's type; the health
//! checks and the control socket are the plain structs below.

#![forbid(unsafe_code)]

pub mod duration;
pub mod error;
pub mod file;
pub mod validate;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use forwarder::model::{DatapathConfig, VirtualService};
pub use syncd::io::Destination as SyncDestination;
pub use vrrp::driver::{DriverConfig, DriverGroup, DriverInstance};
pub use vrrp::instance::{GarpPolicy, InstanceConfig, Track};
pub use vrrp::router::GroupConfig;
pub use vrrp::wire::{ChecksumMode, Version as VrrpVersion};

pub use error::ConfigError;

use error::Locator;

/// Where the appliance keeps its config.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/director/director.toml";
/// `[control] socket` when the file does not set it.
pub const DEFAULT_SOCKET_PATH: &str = "/run/director/director.sock";

/// Reads and validates a config file. Errors name `path` as given.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    match std::fs::read(path) {
        Ok(bytes) => match std::str::from_utf8(&bytes) {
            Ok(text) => parse(text, path),
            Err(e) => Err(vec![not_utf8(&bytes, &e, path)]),
        },
        Err(e) => Err(vec![ConfigError::whole_file(
            path,
            format!("cannot read config file: {e}"),
        )]),
    }
}

/// Where a file stops being UTF-8: the line and column of the first bad byte (counted in
/// the valid text before it), and the byte.
fn not_utf8(bytes: &[u8], e: &std::str::Utf8Error, path: &Path) -> ConfigError {
    let at = e.valid_up_to();
    // Valid up to `at` by the error's word.
    let before = std::str::from_utf8(&bytes[..at]).unwrap_or("");
    let (line, column) = error::line_col(before, at);
    ConfigError {
        file: path.to_path_buf(),
        line,
        column,
        message: format!(
            "byte 0x{:02x} is not UTF-8 text; a config file is UTF-8 (TOML): save it as UTF-8, or remove the byte",
            bytes[at]
        ),
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

/// `[vrrp]`, validated into the VRRP engine's own types: one [`DriverInstance`] per
/// `[[vrrp.instance]]` (the section's version, advert interval, checksum and gratuitous-ARP
/// policy in each; its tracks are the file's `track_interfaces`; `primary` is unspecified
/// until the engine reads the interface at start) and one [`DriverGroup`] per
/// `[[vrrp.group]]`. [`Vrrp::driver`] makes the engine's whole config of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vrrp {
    pub instances: Vec<DriverInstance>,
    pub groups: Vec<DriverGroup>,
    /// SCHED_FIFO priority of the VRRP timer thread; `None` (`0` in the file) = normal
    /// scheduling. Default 20.
    pub realtime_priority: Option<i32>,
}

impl Vrrp {
    /// The engine's config: `tracks(instance)` are tracked beside the file's interfaces (the
    /// daemon's own objects: datapath, threads, quorum); with `hold_preempt` the engine starts
    /// with preemption held until connection sync lets it go.
    pub fn driver(&self, hold_preempt: bool, tracks: impl Fn(&str) -> Vec<Track>) -> DriverConfig {
        let mut instances = self.instances.clone();
        for i in &mut instances {
            let more = tracks(&i.config.name);
            i.config.tracks.extend(more);
        }
        DriverConfig {
            instances,
            groups: self.groups.clone(),
            realtime_priority: self.realtime_priority,
            hold_preempt,
        }
    }

    /// The VRRP instance that carries `addr` among its VIPs.
    pub fn instance_of(&self, addr: Ipv4Addr) -> Option<&DriverInstance> {
        self.instances
            .iter()
            .find(|i| i.vips.iter().any(|&(a, _)| a == addr))
    }
}

/// `[sync]`. Where replicas go is the sync engine's own [`SyncDestination`]; the key is read
/// from `key_file` at start (and checked here), the node id and epoch are the daemon's.
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
