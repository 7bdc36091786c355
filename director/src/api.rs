//! The control API: what the `director` CLI (and the metrics endpoint) asks the daemon, and
//! what the daemon answers — one [`Request`] enum and one view struct per answer, shared by
//! the daemon that fills them, the CLI that renders them, the metrics that expose them and the
//! golden fixtures under `tests/` (each fixture must read into its view and write back
//! unchanged, so a renamed or missing key fails `cargo test`).
//!
//! On the wire (the control socket, and `director --json`) a request is one JSON object
//! tagged by `"command"`; a view is its serde form. Keys the CLI does not know are ignored, so
//! a newer daemon can add one; a key it needs and does not find is an error, never a blank
//! in an operator's table.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// `director conns` shows at most this many entries unless told otherwise (`--limit`).
pub const CONNS_LIMIT: usize = 1000;
/// `director events` shows at most this many of the newest events unless told otherwise.
pub const EVENTS_LIMIT: usize = 100;

fn conns_limit() -> usize {
    CONNS_LIMIT
}

fn events_limit() -> usize {
    EVENTS_LIMIT
}

/// One request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The overview: node, config generation, VRRP states, services, sync, datapath rates.
    Status,
    /// The datapath's counters, the connection table's and the services'.
    Stats,
    /// Each service with its real servers, weights, admin state, health and counters.
    Services,
    /// The connection table, filtered.
    Conns {
        #[serde(default = "conns_limit")]
        limit: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<IpAddr>,
    },
    /// A runtime weight for one real server.
    RealWeight {
        service: String,
        real: SocketAddr,
        weight: u16,
    },
    /// Enable, disable or drain one real server.
    RealAdmin {
        service: String,
        real: SocketAddr,
        action: AdminAction,
    },
    /// The VRRP instances.
    Vrrp,
    /// The sync session with the peer.
    Sync,
    /// Resign mastership (every instance goes to priority 0 and stays BACKUP).
    Demote,
    /// Take mastership back (ends a demote; priority 255 for a takeover).
    Promote,
    /// The newest events.
    Events {
        #[serde(default = "events_limit")]
        limit: usize,
    },
    /// Read the config file again and apply the difference.
    Reload,
}

impl Request {
    /// Every command's name on the wire, in the order `director --help` lists them.
    pub const COMMANDS: &'static [&'static str] = &[
        "status",
        "stats",
        "services",
        "conns",
        "real-weight",
        "real-admin",
        "vrrp",
        "sync",
        "demote",
        "promote",
        "events",
        "reload",
    ];

    /// This request's command name on the wire.
    pub fn command(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Stats => "stats",
            Request::Services => "services",
            Request::Conns { .. } => "conns",
            Request::RealWeight { .. } => "real-weight",
            Request::RealAdmin { .. } => "real-admin",
            Request::Vrrp => "vrrp",
            Request::Sync => "sync",
            Request::Demote => "demote",
            Request::Promote => "promote",
            Request::Events { .. } => "events",
            Request::Reload => "reload",
        }
    }

    /// Reads a request line, with the errors an operator's script needs to see: no
    /// command, an unknown one (and which are allowed), or a bad argument.
    pub fn parse(line: &str) -> Result<Request, String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
        match v.get("command").map(|c| c.as_str()) {
            None => return Err("request has no \"command\"".into()),
            Some(Some(c)) if !Request::COMMANDS.contains(&c) => {
                return Err(format!(
                    "unknown command {c:?} (allowed: {})",
                    Request::COMMANDS.join(", ")
                ))
            }
            Some(None) => return Err("\"command\" is not a string".into()),
            Some(Some(_)) => {}
        }
        serde_json::from_value(v).map_err(|e| format!("bad request: {e}"))
    }
}

/// What `real-admin` does to a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminAction {
    Enable,
    Disable,
    Drain,
}

/// An operator's state for one real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminState {
    Enabled,
    Disabled,
    Drained,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Disabled => "disabled",
            AdminState::Drained => "drained",
        }
    }
}

/// A real server's health as its checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    Up,
    Down,
    /// The service has no check: always treated as up.
    Unchecked,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Down => "down",
            HealthState::Unchecked => "unchecked",
        }
    }
}

/// The daemon's answer on the wire: `{"ok": true, "data": VIEW}` or
/// `{"ok": false, "error": "…"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// ---- status ----------------------------------------------------------------------------

/// `director status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub node: String,
    pub uptime_s: u64,
    pub config: ConfigInfo,
    /// No `[vrrp]`: the box forwards on its own.
    pub standalone: bool,
    pub vrrp: Vec<StatusInstance>,
    pub services: Vec<StatusService>,
    pub sync: StatusSync,
    pub datapath: StatusDatapath,
}

/// Which config runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigInfo {
    pub path: String,
    pub generation: u64,
    /// Unix seconds.
    pub loaded_at: f64,
}

/// One VRRP instance in `director status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInstance {
    pub name: String,
    pub state: String,
    pub priority: u8,
    pub configured_priority: u8,
    pub master: Option<IpAddr>,
}

/// One service in `director status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusService {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: String,
    pub mode: String,
    /// Serving: quorum met, or the sorry server active.
    pub up: bool,
    /// Real servers in the scheduler.
    pub healthy: usize,
    pub total: usize,
    pub quorum: Option<u32>,
    pub sorry_active: bool,
}

/// The sync session in `director status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSync {
    pub enabled: bool,
    /// Absent when sync is off.
    #[serde(flatten)]
    pub session: Option<StatusSyncSession>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSyncSession {
    /// `up`, `down` or `unknown`.
    pub peer: String,
    pub lag_ms: Option<f64>,
    pub replicas: usize,
    pub resync_complete: bool,
}

/// The datapath in `director status`: rates over the last second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDatapath {
    pub workers: usize,
    pub connections: usize,
    pub rx_pps: f64,
    pub forwarded_pps: f64,
    pub new_conns_per_s: f64,
    pub drops_per_s: f64,
    pub receive: Vec<ReceivePath>,
}

/// How one interface receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "path", rename_all = "snake_case")]
pub enum ReceivePath {
    /// AF_PACKET rings.
    AfPacket { interface: String },
    /// The XDP program in `xdp_mode`, with AF_XDP sockets.
    Xdp {
        interface: String,
        xdp_mode: String,
        queues: u32,
        sockets: u32,
    },
}

// ---- stats -----------------------------------------------------------------------------

/// `director stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    pub node: String,
    pub datapath: DatapathStats,
    pub connections: TableStats,
    pub services: Vec<ServiceView>,
}

/// The datapath's counters since start, summed over the workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatapathStats {
    pub workers: usize,
    pub interfaces: Vec<String>,
    pub rx: u64,
    pub passed: u64,
    pub forwarded_in: u64,
    pub forwarded_out: u64,
    pub icmp_forwarded: u64,
    pub emitted: u64,
    pub icmp_sent: u64,
    pub icmp_limited: u64,
    pub icmp_unroutable: u64,
    pub new_conns: u64,
    /// Established flows taken up mid-flow on the real server an `mh` service's Maglev
    /// table names (no entry here: the peer's never arrived), among `new_conns`.
    #[serde(default)]
    pub picked_up: u64,
    pub tx_errors: u64,
    pub tx_waits: u64,
    pub ring_drops: u64,
    /// Dropped frames by reason (`forwarder::engine::DropReason` labels), in that order.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// The XDP program's counters; `null` without XDP.
    pub xdp: Option<XdpStats>,
}

impl DatapathStats {
    /// The drops of `reason` (a `DropReason` label); 0 when the daemon does not count it.
    pub fn drop_count(&self, reason: &str) -> u64 {
        self.drops.get(reason).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XdpStats {
    pub passed: u64,
    pub slow_path: u64,
    pub no_socket: u64,
    pub fast_in: u64,
    pub fast_out: u64,
    /// The fast path's flow map; absent when it is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<FastPathStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FastPathStats {
    pub flows: u64,
    pub installed: u64,
    pub removed: u64,
    pub map_full: u64,
    pub no_route: u64,
    pub adopted: u64,
}

/// The connection table's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableStats {
    pub count: usize,
    pub capacity: usize,
    pub inserts: u64,
    pub deletes: u64,
    pub expired: u64,
    pub full: u64,
}

// ---- services --------------------------------------------------------------------------

/// `director services` answers a list of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub vip: SocketAddr,
    pub protocol: String,
    pub mode: String,
    pub scheduler: String,
    /// Seconds; 0 is none.
    pub persistence: u64,
    pub quorum: Option<u32>,
    /// Real servers neither disabled nor down.
    pub healthy: usize,
    /// Real servers in the scheduler.
    pub serving: usize,
    pub up: bool,
    pub sorry_server: Option<SorryServer>,
    pub check: Option<CheckView>,
    pub reals: Vec<RealView>,
    /// Real servers removed from the config whose connections still finish.
    pub retired: Vec<RetiredReal>,
    /// FULLNAT only: the director's addresses toward the real servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_addresses: Option<Vec<IpAddr>>,
    /// FULLNAT only: `"v2"` or `null`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub proxy_protocol: Option<Option<String>>,
}

/// Present-but-null is not absent: FULLNAT services always carry `proxy_protocol`.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// Traffic counters of one real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RealCounters {
    pub active: u64,
    pub inactive: u64,
    pub conns: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SorryServer {
    pub address: SocketAddr,
    pub active: bool,
    pub counters: RealCounters,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckView {
    /// `tcp`, `http`, `udp` or `exec`.
    pub kind: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    /// `inhibit` or `remove`.
    pub on_fail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealView {
    pub address: SocketAddr,
    /// Effective weight (0 when out of the scheduler).
    pub weight: u32,
    pub scheduled: bool,
    pub configured_weight: u32,
    /// Set by `director real weight`.
    pub runtime_weight: Option<u32>,
    pub admin: AdminState,
    pub health: HealthState,
    pub health_cause: Option<String>,
    /// The latest probe; `null` before the first or without a check.
    pub last_check: Option<LastCheck>,
    #[serde(flatten)]
    pub counters: RealCounters,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastCheck {
    pub ok: bool,
    pub detail: String,
    pub ms: f64,
    /// Unix seconds.
    pub time: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiredReal {
    pub address: SocketAddr,
    #[serde(flatten)]
    pub counters: RealCounters,
}

// ---- conns -----------------------------------------------------------------------------

/// `director conns`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnsView {
    /// Entries that matched the filter.
    pub total: usize,
    pub shown: usize,
    pub connections: Vec<ConnView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnView {
    pub protocol: String,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub real: SocketAddr,
    pub state: String,
    /// Seconds.
    pub expires_in: u64,
    /// `local` or `replica`.
    pub origin: String,
    pub service: String,
    pub packets_in: u64,
    pub packets_out: u64,
    /// FULLNAT: the director's side toward the real server, LIP:lport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    /// With XDP: `xdp` or `engine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What the XDP fast path forwarded of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_packets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_bytes: Option<u64>,
}

// ---- real weight / admin ---------------------------------------------------------------

/// `director real weight|enable|disable|drain`: what the real server is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealAck {
    pub service: String,
    pub real: SocketAddr,
    pub weight: u32,
    pub admin: AdminState,
}

// ---- vrrp ------------------------------------------------------------------------------

/// `director vrrp` (and the answer to `demote` and `promote`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VrrpView {
    pub standalone: bool,
    pub instances: Vec<InstanceView>,
    /// The engine's own counters; absent when standalone.
    #[serde(flatten)]
    pub engine: Option<VrrpEngine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VrrpEngine {
    /// Packets that failed to parse or verify, by reason.
    pub malformed: std::collections::BTreeMap<String, u64>,
    pub foreign: u64,
    /// Running with SCHED_FIFO.
    pub realtime: bool,
    pub late_wakeups_1ms: u64,
    pub late_wakeups_5ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub state: String,
    pub priority: u8,
    pub configured_priority: u8,
    pub primary: IpAddr,
    pub master: Option<IpAddr>,
    pub master_priority: Option<u8>,
    pub master_adver_interval_ms: f64,
    pub group: Option<String>,
    /// `ADDR/LEN`.
    pub vips: Vec<String>,
    pub demoted: bool,
    pub promoted: bool,
    pub tracks_down: Vec<String>,
    pub last_transition: Option<Transition>,
    pub counters: InstanceCounters,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Unix seconds.
    pub time: Option<f64>,
    pub from: String,
    pub to: String,
    pub cause: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCounters {
    pub adverts_rx: u64,
    pub adverts_tx: u64,
    pub priority_zero_rx: u64,
    pub priority_zero_tx: u64,
    pub became_master: u64,
    pub became_backup: u64,
    pub faults: u64,
    pub dual_master: u64,
    pub garps: u64,
    pub wrong_version: u64,
    pub interval_mismatch: u64,
    pub addr_mismatch: u64,
    pub own: u64,
    /// Adverts the pair's peer contradicts over the sync link, ignored.
    pub uncorroborated: u64,
    /// Times the master went silent while another sync group member heard a live one, and
    /// the instance stayed BACKUP.
    #[serde(default)]
    pub group_held: u64,
}

// ---- sync ------------------------------------------------------------------------------

/// `director sync`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncView {
    pub enabled: bool,
    /// The engine has not reported yet (the first second after start).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
    #[serde(flatten)]
    pub session: Option<SyncSession>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncSession {
    pub node: String,
    /// Hex.
    pub node_id: String,
    pub epoch: u64,
    pub interface: String,
    pub destination: SocketAddr,
    /// `unicast` or `multicast`.
    pub mode: String,
    pub peer: SyncPeer,
    pub connections: SyncConnections,
    pub replicas: ReplicaCounters,
    pub stream: SyncStream,
    pub resync: SyncResync,
    pub counters: SyncCounters,
    pub refused: SyncRefused,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncPeer {
    /// `up`, `down` or `unknown` (no other field then).
    pub state: String,
    #[serde(flatten)]
    pub heard: Option<PeerHeard>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerHeard {
    pub node_id: String,
    pub epoch: u64,
    pub last_heard_ms: f64,
    pub behind: u64,
    pub holdback: u64,
    pub resyncing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncConnections {
    pub total: usize,
    pub replicas: usize,
    pub local: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaCounters {
    pub installed: u64,
    pub deleted: u64,
    pub swept: u64,
    pub adopted: u64,
    pub unknown_service: u64,
    pub unknown_real: u64,
    pub invalid: u64,
    pub table_full: u64,
    pub shard_mismatch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncStream {
    pub seq: u64,
    pub acked: u64,
    pub unacked: u64,
    pub pending: u64,
    pub ring: u64,
    /// Sent → applied on the peer and acknowledged (the ack waits ≤ 5 ms).
    pub lag_ms: Option<f64>,
    pub lag_max_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncResync {
    pub complete: bool,
    pub received: Option<ResyncRun>,
    pub sent: Option<ResyncRun>,
    pub sending: Option<ResyncRun>,
    pub sent_count: u64,
    pub received_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResyncRun {
    pub entries: u64,
    pub ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCounters {
    pub tx_datagrams: u64,
    pub tx_bytes: u64,
    pub tx_entries: u64,
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    pub applied: u64,
    pub heartbeats_rx: u64,
    pub gaps: u64,
    pub repaired: u64,
    pub nacks_tx: u64,
    pub nacks_rx: u64,
    pub retransmits: u64,
    pub holdback_full: u64,
    pub queue_dropped: u64,
    pub tx_errors: u64,
    pub rx_errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRefused {
    pub auth: u64,
    pub truncated: u64,
    pub bad_magic: u64,
    pub version: u64,
    pub malformed: u64,
    pub replayed: u64,
    pub unknown_node: u64,
    pub total: u64,
}

// ---- events ----------------------------------------------------------------------------

/// `director events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsView {
    pub events: Vec<EventView>,
    /// Older events the bounded log no longer holds.
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub seq: u64,
    /// Unix seconds.
    pub time: f64,
    pub kind: String,
    pub subject: String,
    pub message: String,
}

// ---- reload ----------------------------------------------------------------------------

/// `director reload`: what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadView {
    pub generation: u64,
    pub changes: Vec<String>,
    pub warnings: Vec<String>,
}

/// Every view by the name of the request that returns it: reads `data` (a daemon's answer
/// to `command`) into its view and writes it back, which gives `data` again exactly when
/// the view knows every key and finds every one it needs. The golden fixtures are held to
/// this.
pub fn round_trip(command: &str, data: &serde_json::Value) -> Result<serde_json::Value, String> {
    fn through<T: Serialize + serde::de::DeserializeOwned>(
        data: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let view: T = serde_json::from_value(data.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(view).map_err(|e| e.to_string())
    }
    match command {
        "status" => through::<StatusView>(data),
        "stats" => through::<StatsView>(data),
        "services" => through::<Vec<ServiceView>>(data),
        "conns" => through::<ConnsView>(data),
        "real-weight" | "real-admin" => through::<RealAck>(data),
        "vrrp" | "demote" | "promote" => through::<VrrpView>(data),
        "sync" => through::<SyncView>(data),
        "events" => through::<EventsView>(data),
        "reload" => through::<ReloadView>(data),
        other => Err(format!("no view for {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_and_write_as_the_cli_sends_them() {
        let cases = [
            (r#"{"command":"status"}"#, Request::Status),
            (
                r#"{"command":"conns"}"#,
                Request::Conns {
                    limit: CONNS_LIMIT,
                    service: None,
                    client: None,
                },
            ),
            (
                r#"{"command":"conns","limit":5,"service":"web","client":"198.18.1.77"}"#,
                Request::Conns {
                    limit: 5,
                    service: Some("web".into()),
                    client: Some("198.18.1.77".parse().unwrap()),
                },
            ),
            (
                r#"{"command":"real-admin","service":"web","real":"198.18.2.11:8080","action":"drain"}"#,
                Request::RealAdmin {
                    service: "web".into(),
                    real: "198.18.2.11:8080".parse().unwrap(),
                    action: AdminAction::Drain,
                },
            ),
            (
                r#"{"command":"events"}"#,
                Request::Events {
                    limit: EVENTS_LIMIT,
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(Request::parse(line).as_ref(), Ok(&want), "{line}");
            let back = serde_json::to_string(&want).unwrap();
            assert_eq!(Request::parse(&back), Ok(want), "{back}");
        }
    }

    #[test]
    fn every_command_name_is_the_wire_name() {
        for name in Request::COMMANDS {
            let line = match *name {
                "real-weight" => {
                    r#"{"command":"real-weight","service":"s","real":"198.18.2.1:80","weight":1}"#
                        .to_string()
                }
                "real-admin" => r#"{"command":"real-admin","service":"s","real":"198.18.2.1:80","action":"enable"}"#.to_string(),
                n => format!(r#"{{"command":"{n}"}}"#),
            };
            let req = Request::parse(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(req.command(), *name);
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert_eq!(
            Request::parse("{}").unwrap_err(),
            "request has no \"command\""
        );
        let e = Request::parse(r#"{"command":"stop"}"#).unwrap_err();
        assert!(
            e.starts_with("unknown command \"stop\" (allowed: status, stats"),
            "{e}"
        );
        let e = Request::parse(r#"{"command":"real-weight","service":"s","real":"x","weight":1}"#)
            .unwrap_err();
        assert!(e.starts_with("bad request: "), "{e}");
        let e = Request::parse(
            r#"{"command":"real-weight","service":"s","real":"198.18.2.1:80","weight":70000}"#,
        )
        .unwrap_err();
        assert!(e.contains("70000"), "{e}");
        assert!(Request::parse("not json")
            .unwrap_err()
            .starts_with("bad request: "));
    }

    #[test]
    fn a_renamed_key_fails_the_view() {
        let good = serde_json::json!({"generation": 3, "changes": [], "warnings": []});
        assert_eq!(round_trip("reload", &good).unwrap(), good);
        let renamed = serde_json::json!({"generation": 3, "change": [], "warnings": []});
        assert!(round_trip("reload", &renamed)
            .unwrap_err()
            .contains("missing field `changes`"));
        // A key the view does not know reads but does not come back: the fixture check
        // catches it.
        let extra = serde_json::json!({"generation": 3, "changes": [], "warnings": [], "x": 1});
        assert_ne!(round_trip("reload", &extra).unwrap(), extra);
    }
}
