//! The Prometheus endpoint: the control socket's views rendered in the text exposition
//! format 0.0.4, and a small HTTP server for `GET /metrics`.
//!
//! [`render`] is pure: it takes the same views ([`crate::api`]) the control socket answers for
//! `stats`, `services`, `vrrp` and `sync`, so the metrics and the CLI never disagree; a field
//! that is `null` in its view (no master heard, no check yet) is left out, not zero.
//! Names start with `director_`; counters end in `_total`; times are in seconds and sizes in
//! bytes.
//!
//! [`serve`] accepts on a plain thread and answers each connection on a thread of its own
//! (at most [`MAX_CLIENTS`] at once; one more gets a 503 at once): a request must arrive
//! whole within [`REQUEST_DEADLINE`] and the answer is sent within the same deadline, so a
//! slow or idle client holds only its own connection, for at most that long, and never
//! delays another scrape.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::api;

/// The four views the metrics are made of, the control socket's answers to these requests.
#[derive(Debug, Clone)]
pub struct MetricsInput {
    /// `{"command": "stats"}`
    pub stats: api::StatsView,
    /// `{"command": "services"}`
    pub services: Vec<api::ServiceView>,
    /// `{"command": "vrrp"}`
    pub vrrp: api::VrrpView,
    /// `{"command": "sync"}`
    pub sync: api::SyncView,
}

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a client has to send its request, and then to take the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Connections answered at once; each holds a thread for at most [`REQUEST_DEADLINE`].
pub const MAX_CLIENTS: usize = 16;

/// The VRRP states, each a series of `director_vrrp_state` (one is 1, the others 0).
const VRRP_STATES: [&str; 4] = ["INIT", "BACKUP", "MASTER", "FAULT"];

/// A real server's administrative states, each a series of `director_real_admin_state`.
const ADMIN_STATES: [api::AdminState; 3] = [
    api::AdminState::Enabled,
    api::AdminState::Disabled,
    api::AdminState::Drained,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample value: integers are printed exactly, fractions as Rust prints them (no exponent).
#[derive(Debug, Clone, Copy)]
enum Num {
    U(u64),
    F(f64),
    /// Seconds converted from milliseconds, printed to the nanosecond so that the division
    /// leaves no binary noise (2.1 ms is 0.0021, not 0.0021000000000000003).
    Seconds(f64),
}

impl Num {
    /// Milliseconds, in seconds.
    fn ms(ms: Option<f64>) -> Option<Num> {
        ms.map(|ms| Num::Seconds(ms / 1000.0))
    }

    fn flag(b: bool) -> Num {
        Num::U(u64::from(b))
    }

    fn write(self, out: &mut String) {
        let _ = match self {
            Num::U(n) => write!(out, "{n}"),
            Num::F(f) | Num::Seconds(f) if f.is_nan() => write!(out, "NaN"),
            Num::F(f) | Num::Seconds(f) if f.is_infinite() => {
                write!(out, "{}Inf", if f > 0.0 { "+" } else { "-" })
            }
            Num::F(f) => write!(out, "{f}"),
            Num::Seconds(s) => {
                let fixed = format!("{s:.9}");
                let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
                out.push_str(if trimmed == "-0" { "0" } else { trimmed });
                Ok(())
            }
        };
    }
}

/// A view's field as a sample value; `None` (a `null` in the view) leaves the sample out.
trait Sample {
    fn num(&self) -> Option<Num>;
}

macro_rules! unsigned_sample {
    ($($t:ty),*) => {$(
        impl Sample for $t {
            fn num(&self) -> Option<Num> {
                Some(Num::U(*self as u64))
            }
        }
    )*};
}
unsigned_sample!(u8, u16, u32, u64, usize);

impl Sample for f64 {
    fn num(&self) -> Option<Num> {
        Some(Num::F(*self))
    }
}

impl Sample for bool {
    fn num(&self) -> Option<Num> {
        Some(Num::flag(*self))
    }
}

impl<T: Sample> Sample for Option<T> {
    fn num(&self) -> Option<Num> {
        self.as_ref().and_then(Sample::num)
    }
}

struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    /// Rendered `{labels} value` tails, in insertion order.
    samples: Vec<String>,
}

/// The families of one exposition, in the order they were first named, so that samples added
/// from several loops (per service, per real) still sit under one HELP/TYPE header.
#[derive(Default)]
struct Exposition {
    families: Vec<Family>,
    index: HashMap<&'static str, usize>,
}

impl Exposition {
    /// One sample; skipped when `value` is `None` (the view did not have the field).
    fn sample(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        labels: &[(&str, &str)],
        value: Option<Num>,
    ) {
        let Some(value) = value else { return };
        let i = *self.index.entry(name).or_insert_with(|| {
            self.families.push(Family {
                name,
                kind,
                help,
                samples: Vec::new(),
            });
            self.families.len() - 1
        });
        debug_assert_eq!(self.families[i].kind, kind, "{name} declared twice");
        let mut tail = String::new();
        if !labels.is_empty() {
            tail.push('{');
            for (n, (k, v)) in labels.iter().enumerate() {
                if n > 0 {
                    tail.push(',');
                }
                tail.push_str(k);
                tail.push_str("=\"");
                escape_label_value(v, &mut tail);
                tail.push('"');
            }
            tail.push('}');
        }
        tail.push(' ');
        value.write(&mut tail);
        self.families[i].samples.push(tail);
    }

    fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        v: impl Sample,
    ) {
        self.sample(name, Kind::Counter, help, labels, v.num());
    }

    fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        v: impl Sample,
    ) {
        self.sample(name, Kind::Gauge, help, labels, v.num());
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for s in &f.samples {
                out.push_str(f.name);
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

/// Label values escape backslash, double quote and line feed (text format 0.0.4).
fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Render the four views as a Prometheus text exposition.
pub fn render(views: &MetricsInput) -> String {
    let mut x = Exposition::default();
    datapath(&mut x, &views.stats);
    services(&mut x, &views.services);
    vrrp(&mut x, &views.vrrp);
    sync(&mut x, &views.sync);
    x.finish()
}

fn datapath(x: &mut Exposition, stats: &api::StatsView) {
    x.gauge(
        "director_node_info",
        "The node's name (its [node] name); always 1.",
        &[("node", &stats.node)],
        1u64,
    );
    let d = &stats.datapath;
    x.gauge(
        "director_datapath_workers",
        "Datapath worker threads.",
        &[],
        d.workers,
    );
    x.counter(
        "director_datapath_received_frames_total",
        "Frames the datapath read from its rings.",
        &[],
        d.rx,
    );
    x.counter(
        "director_datapath_passed_frames_total",
        "Frames left to the kernel (not service traffic).",
        &[],
        d.passed,
    );
    for (dir, n) in [("in", d.forwarded_in), ("out", d.forwarded_out)] {
        x.counter(
            "director_datapath_forwarded_packets_total",
            "Packets forwarded: in = client to real server, out = real server to client.",
            &[("direction", dir)],
            n,
        );
    }
    x.counter(
        "director_datapath_icmp_forwarded_packets_total",
        "ICMP errors forwarded for known connections.",
        &[],
        d.icmp_forwarded,
    );
    x.counter(
        "director_datapath_rebuilt_packets_total",
        "Received packets the datapath sent on as frames it built (TUN: software segments and copies).",
        &[],
        d.emitted,
    );
    x.counter(
        "director_datapath_icmp_sent_total",
        "ICMP errors the datapath originated (TUN fragmentation needed).",
        &[],
        d.icmp_sent,
    );
    x.counter(
        "director_datapath_icmp_rate_limited_total",
        "ICMP errors not sent because of the per-worker rate limit.",
        &[],
        d.icmp_limited,
    );
    x.counter(
        "director_datapath_icmp_unroutable_total",
        "ICMP errors not sent because there was no way back to the source (no route, or an \
         unresolved next hop on another interface than the frame came in on).",
        &[],
        d.icmp_unroutable,
    );
    x.counter(
        "director_datapath_new_connections_total",
        "Connections the datapath scheduled to a real server.",
        &[],
        d.new_conns,
    );
    x.counter(
        "director_datapath_picked_up_total",
        "Established flows without an entry taken up mid-flow on the real server an mh service's Maglev table names.",
        &[],
        d.picked_up,
    );
    x.counter(
        "director_datapath_transmit_errors_total",
        "Frames the datapath failed to send.",
        &[],
        d.tx_errors,
    );
    x.counter(
        "director_datapath_transmit_waits_total",
        "Times a transmit batch found the socket buffer or device queue full and waited to retry.",
        &[],
        d.tx_waits,
    );
    x.counter(
        "director_datapath_ring_drops_total",
        "Frames the kernel dropped because a receive ring was full.",
        &[],
        d.ring_drops,
    );
    // With the XDP program: what it did with the frames it saw, and the fast path's flows.
    if let Some(x_) = &d.xdp {
        for (action, n) in [
            ("pass", x_.passed),
            ("slow_path", x_.slow_path),
            ("no_socket", x_.no_socket),
            ("fast_in", x_.fast_in),
            ("fast_out", x_.fast_out),
        ] {
            x.counter(
                "director_xdp_frames_total",
                "Frames the XDP program handled, by what it did: left to the kernel (pass), handed to a worker (slow_path, or no_socket: passed for want of one), forwarded itself (fast_in toward a real server, fast_out toward a client).",
                &[("action", action)],
                n,
            );
        }
        if let Some(f) = &x_.fast_path {
            x.gauge(
                "director_fast_path_flows",
                "Connections in the XDP program's flow map.",
                &[],
                f.flows,
            );
            for (event, n) in [
                ("installed", f.installed),
                ("removed", f.removed),
                ("map_full", f.map_full),
                ("no_route", f.no_route),
                ("adopted", f.adopted),
            ] {
                x.counter(
                    "director_fast_path_flow_events_total",
                    "Connections put in the fast path's map, taken out, refused for a full map or a missing route, and replicas adopted on their first fast-path packet.",
                    &[("event", event)],
                    n,
                );
            }
        }
    }
    for (reason, n) in &d.drops {
        x.counter(
            "director_datapath_drops_total",
            "Packets dropped by the datapath, by reason.",
            &[("reason", reason)],
            *n,
        );
    }
    let c = &stats.connections;
    x.gauge(
        "director_connections",
        "Entries in the connection table (local and replicas).",
        &[],
        c.count,
    );
    x.gauge(
        "director_connections_capacity",
        "Entries the connection table can hold.",
        &[],
        c.capacity,
    );
    x.counter(
        "director_connections_inserted_total",
        "Entries inserted into the connection table.",
        &[],
        c.inserts,
    );
    x.counter(
        "director_connections_deleted_total",
        "Entries deleted from the connection table.",
        &[],
        c.deletes,
    );
    x.counter(
        "director_connections_expired_total",
        "Entries removed from the connection table on expiry.",
        &[],
        c.expired,
    );
    x.counter(
        "director_connections_table_full_total",
        "Connections refused because the connection table was full.",
        &[],
        c.full,
    );
}

fn services(x: &mut Exposition, services: &[api::ServiceView]) {
    for s in services {
        let name = s.name.as_str();
        let vip = s.vip.to_string();
        let labels = [
            ("service", name),
            ("vip", vip.as_str()),
            ("protocol", s.protocol.as_str()),
            ("mode", s.mode.as_str()),
        ];
        let mut info = labels.to_vec();
        info.push(("scheduler", s.scheduler.as_str()));
        x.gauge(
            "director_service_info",
            "A virtual service and its scheduler; always 1.",
            &info,
            1u64,
        );
        x.gauge(
            "director_service_up",
            "1 when the service is up: enough of its real servers are healthy.",
            &labels,
            s.up,
        );
        x.gauge(
            "director_service_healthy_reals",
            "Real servers of the service that are up.",
            &labels,
            s.healthy,
        );
        x.gauge(
            "director_service_reals",
            "Real servers configured for the service.",
            &labels,
            s.reals.len(),
        );
        x.gauge(
            "director_service_quorum",
            "Healthy real servers the service needs to count as up.",
            &labels,
            s.quorum,
        );
        x.gauge(
            "director_service_persistence_seconds",
            "Client-IP affinity timeout; 0 = off.",
            &labels,
            s.persistence,
        );
        if let Some(sorry) = &s.sorry_server {
            let addr = sorry.address.to_string();
            x.gauge(
                "director_service_sorry_server_active",
                "1 while the sorry server takes the service's new connections.",
                &[("service", name), ("sorry_server", &addr)],
                sorry.active,
            );
        }
        if let Some(check) = &s.check {
            let l = [("service", name), ("kind", check.kind.as_str())];
            x.sample(
                "director_service_check_interval_seconds",
                Kind::Gauge,
                "Time between two health checks of a real server.",
                &l,
                Num::ms(Some(check.interval_ms as f64)),
            );
            x.sample(
                "director_service_check_timeout_seconds",
                Kind::Gauge,
                "Deadline of one health check.",
                &l,
                Num::ms(Some(check.timeout_ms as f64)),
            );
        }
        for r in &s.reals {
            real(x, name, r);
        }
    }
}

fn real(x: &mut Exposition, service: &str, r: &api::RealView) {
    let address = r.address.to_string();
    let l = [("service", service), ("real", address.as_str())];
    x.gauge(
        "director_real_weight",
        "Effective weight: the configured or operator's weight, 0 while inhibited or drained.",
        &l,
        r.weight,
    );
    x.gauge(
        "director_real_configured_weight",
        "Weight from the config or the last `director real weight`.",
        &l,
        r.configured_weight,
    );
    let health = r.health;
    x.sample(
        "director_real_up",
        Kind::Gauge,
        "1 when the real server passes its health check (or the service has none), else 0.",
        &l,
        Some(Num::flag(health != api::HealthState::Down)),
    );
    x.sample(
        "director_real_checked",
        Kind::Gauge,
        "1 when the real server is health-checked.",
        &l,
        Some(Num::flag(health != api::HealthState::Unchecked)),
    );
    for state in ADMIN_STATES {
        let mut labels = l.to_vec();
        labels.push(("state", state.as_str()));
        x.sample(
            "director_real_admin_state",
            Kind::Gauge,
            "The operator's state of the real server: 1 for the current one.",
            &labels,
            Some(Num::flag(r.admin == state)),
        );
    }
    if let Some(last) = &r.last_check {
        x.gauge(
            "director_real_last_check_success",
            "1 when the latest health check passed.",
            &l,
            last.ok,
        );
        x.sample(
            "director_real_last_check_duration_seconds",
            Kind::Gauge,
            "How long the latest health check took.",
            &l,
            Num::ms(Some(last.ms)),
        );
        x.gauge(
            "director_real_last_check_timestamp_seconds",
            "When the latest health check ended, in seconds since the Unix epoch.",
            &l,
            last.time,
        );
    }
    x.gauge(
        "director_real_active_connections",
        "Connections to the real server in the ESTABLISHED state (ipvsadm ActiveConn).",
        &l,
        r.counters.active,
    );
    x.gauge(
        "director_real_inactive_connections",
        "Connections to the real server in any other state (ipvsadm InActConn).",
        &l,
        r.counters.inactive,
    );
    x.counter(
        "director_real_connections_total",
        "Connections scheduled to the real server.",
        &l,
        r.counters.conns,
    );
    let k = &r.counters;
    for (dir, p, b) in [
        ("in", k.packets_in, k.bytes_in),
        ("out", k.packets_out, k.bytes_out),
    ] {
        let mut labels = l.to_vec();
        labels.push(("direction", dir));
        x.counter(
            "director_real_packets_total",
            "Packets forwarded for the real server: in = toward it, out = its replies.",
            &labels,
            p,
        );
        x.counter(
            "director_real_bytes_total",
            "Bytes forwarded for the real server: in = toward it, out = its replies.",
            &labels,
            b,
        );
    }
}

fn vrrp(x: &mut Exposition, v: &api::VrrpView) {
    x.sample(
        "director_vrrp_enabled",
        Kind::Gauge,
        "1 when VRRP runs ([vrrp] in the config); 0 standalone.",
        &[],
        Some(Num::flag(!v.standalone)),
    );
    for i in &v.instances {
        let vrid = i.vrid.to_string();
        let l = [("instance", i.name.as_str()), ("vrid", vrid.as_str())];
        for s in VRRP_STATES {
            x.sample(
                "director_vrrp_state",
                Kind::Gauge,
                "VRRP state of the instance: 1 for the current one.",
                &[l[0], l[1], ("state", s)],
                Some(Num::flag(i.state == s)),
            );
        }
        x.gauge(
            "director_vrrp_priority",
            "Effective priority: configured, adjusted by tracking, 0 when demoted.",
            &l,
            i.priority,
        );
        x.gauge(
            "director_vrrp_configured_priority",
            "Priority from the config.",
            &l,
            i.configured_priority,
        );
        x.gauge(
            "director_vrrp_master_priority",
            "Priority the current master advertises.",
            &l,
            i.master_priority,
        );
        x.sample(
            "director_vrrp_master_advert_interval_seconds",
            Kind::Gauge,
            "Advertisement interval of the current master.",
            &l,
            Num::ms(Some(i.master_adver_interval_ms)),
        );
        x.gauge(
            "director_vrrp_demoted",
            "1 after `director demote`, until `director promote`.",
            &l,
            i.demoted,
        );
        x.gauge(
            "director_vrrp_promoted",
            "1 after `director promote`, until `director demote`.",
            &l,
            i.promoted,
        );
        x.gauge(
            "director_vrrp_tracks_down",
            "Tracked objects (interfaces, services, the datapath) that are down.",
            &l,
            i.tracks_down.len(),
        );
        x.gauge(
            "director_vrrp_last_transition_timestamp_seconds",
            "When the instance last changed state, in seconds since the Unix epoch.",
            &l,
            i.last_transition.as_ref().and_then(|t| t.time),
        );
        let c = &i.counters;
        for (to, n) in [
            ("MASTER", c.became_master),
            ("BACKUP", c.became_backup),
            ("FAULT", c.faults),
        ] {
            x.counter(
                "director_vrrp_transitions_total",
                "State transitions of the instance, by the state entered.",
                &[l[0], l[1], ("to", to)],
                n,
            );
        }
        for (dir, n) in [("received", c.adverts_rx), ("sent", c.adverts_tx)] {
            x.counter(
                "director_vrrp_adverts_total",
                "VRRP advertisements received and sent.",
                &[l[0], l[1], ("direction", dir)],
                n,
            );
        }
        for (dir, n) in [
            ("received", c.priority_zero_rx),
            ("sent", c.priority_zero_tx),
        ] {
            x.counter(
                "director_vrrp_priority_zero_total",
                "Priority-0 advertisements (a master resigning) received and sent.",
                &[l[0], l[1], ("direction", dir)],
                n,
            );
        }
        for (reason, n) in [
            ("wrong_version", c.wrong_version),
            ("interval_mismatch", c.interval_mismatch),
            ("address_mismatch", c.addr_mismatch),
            ("own", c.own),
            ("uncorroborated", c.uncorroborated),
        ] {
            x.counter(
                "director_vrrp_adverts_ignored_total",
                "Advertisements for this instance that were ignored, by reason.",
                &[l[0], l[1], ("reason", reason)],
                n,
            );
        }
        x.counter(
            "director_vrrp_dual_master_total",
            "Times another master was seen while this one was master.",
            &l,
            c.dual_master,
        );
        x.counter(
            "director_vrrp_group_held_total",
            "Times the master went silent while another sync group member heard a live one (the instance stayed BACKUP).",
            &l,
            c.group_held,
        );
        x.counter(
            "director_vrrp_gratuitous_arps_total",
            "Gratuitous ARPs sent for the instance's addresses.",
            &l,
            c.garps,
        );
    }
    let Some(e) = &v.engine else { return };
    // Every reason the decoder knows, seen or not, so that each counter exists from the
    // start; the view lists only those seen.
    let reasons = vrrp::wire::DecodeError::LABELS.iter().copied();
    let seen = e.malformed.keys().map(String::as_str);
    let mut all: Vec<&str> = reasons.chain(seen).collect();
    all.sort_unstable();
    all.dedup();
    for reason in all {
        x.counter(
            "director_vrrp_malformed_total",
            "VRRP packets that failed to parse or verify, by reason.",
            &[("reason", reason)],
            e.malformed.get(reason).copied().unwrap_or(0),
        );
    }
    x.counter(
        "director_vrrp_foreign_total",
        "VRRP packets for virtual routers this node does not run.",
        &[],
        e.foreign,
    );
    x.gauge(
        "director_vrrp_realtime",
        "1 when the VRRP thread runs with SCHED_FIFO.",
        &[],
        e.realtime,
    );
    for (over, n) in [("0.001", e.late_wakeups_1ms), ("0.005", e.late_wakeups_5ms)] {
        x.counter(
            "director_vrrp_late_wakeups_total",
            "VRRP timer wake-ups later than `over` seconds.",
            &[("over", over)],
            n,
        );
    }
}

fn sync(x: &mut Exposition, v: &api::SyncView) {
    x.sample(
        "director_sync_enabled",
        Kind::Gauge,
        "1 when connection sync runs ([sync] in the config).",
        &[],
        Some(Num::flag(v.enabled)),
    );
    let Some(v) = &v.session else { return };
    let p = &v.peer;
    x.sample(
        "director_sync_peer_up",
        Kind::Gauge,
        "1 while the sync peer is heard from.",
        &[],
        Some(Num::flag(p.state == "up")),
    );
    if let Some(h) = &p.heard {
        x.sample(
            "director_sync_peer_last_heard_seconds",
            Kind::Gauge,
            "Time since the sync peer was last heard from.",
            &[],
            Num::ms(Some(h.last_heard_ms)),
        );
        x.gauge(
            "director_sync_peer_behind",
            "Messages the peer has not acknowledged yet.",
            &[],
            h.behind,
        );
    }
    let st = &v.stream;
    x.sample(
        "director_sync_lag_seconds",
        Kind::Gauge,
        "Latest time from sending a change to its acknowledgement by the peer.",
        &[],
        Num::ms(st.lag_ms),
    );
    x.sample(
        "director_sync_lag_max_seconds",
        Kind::Gauge,
        "Longest such time seen.",
        &[],
        Num::ms(Some(st.lag_max_ms)),
    );
    x.gauge(
        "director_sync_unacknowledged",
        "Messages sent and not yet acknowledged.",
        &[],
        st.unacked,
    );
    x.gauge(
        "director_sync_pending_entries",
        "Changes waiting to be batched and sent.",
        &[],
        st.pending,
    );
    let c = &v.connections;
    for (origin, n) in [("local", c.local), ("replica", c.replicas)] {
        x.gauge(
            "director_sync_connections",
            "Connection table entries by origin: made here, or replicated from the peer.",
            &[("origin", origin)],
            n,
        );
    }
    {
        for (outcome, n) in by_key(&v.replicas) {
            x.counter(
                "director_sync_replica_changes_total",
                "Changes from the peer, by what became of them.",
                &[("outcome", &outcome)],
                n,
            );
        }
    }
    let r = &v.resync;
    x.gauge(
        "director_sync_resync_complete",
        "1 once this node holds the peer's whole table.",
        &[],
        r.complete,
    );
    for (dir, n) in [("sent", r.sent_count), ("received", r.received_count)] {
        x.counter(
            "director_sync_resyncs_total",
            "Bulk resyncs of the whole table sent and received.",
            &[("direction", dir)],
            n,
        );
    }
    let k = &v.counters;
    for (dir, d, b) in [
        ("sent", k.tx_datagrams, k.tx_bytes),
        ("received", k.rx_datagrams, k.rx_bytes),
    ] {
        x.counter(
            "director_sync_datagrams_total",
            "Sync datagrams sent and received.",
            &[("direction", dir)],
            d,
        );
        x.counter(
            "director_sync_bytes_total",
            "Sync bytes sent and received.",
            &[("direction", dir)],
            b,
        );
    }
    x.counter(
        "director_sync_entries_sent_total",
        "Connection changes sent to the peer.",
        &[],
        k.tx_entries,
    );
    x.counter(
        "director_sync_applied_total",
        "Connection changes from the peer applied here.",
        &[],
        k.applied,
    );
    x.counter(
        "director_sync_heartbeats_received_total",
        "Heartbeats received from the peer.",
        &[],
        k.heartbeats_rx,
    );
    x.counter(
        "director_sync_gaps_total",
        "Gaps in the peer's sequence numbers.",
        &[],
        k.gaps,
    );
    x.counter(
        "director_sync_repaired_total",
        "Gaps repaired by retransmission.",
        &[],
        k.repaired,
    );
    for (dir, n) in [("sent", k.nacks_tx), ("received", k.nacks_rx)] {
        x.counter(
            "director_sync_nacks_total",
            "Retransmission requests sent and received.",
            &[("direction", dir)],
            n,
        );
    }
    x.counter(
        "director_sync_retransmits_total",
        "Messages retransmitted to the peer.",
        &[],
        k.retransmits,
    );
    x.counter(
        "director_sync_holdback_full_total",
        "Out-of-order messages dropped because the holdback buffer was full.",
        &[],
        k.holdback_full,
    );
    x.counter(
        "director_sync_queue_dropped_total",
        "Changes dropped because the send queue was full.",
        &[],
        k.queue_dropped,
    );
    for (dir, n) in [("send", k.tx_errors), ("receive", k.rx_errors)] {
        x.counter(
            "director_sync_socket_errors_total",
            "Sync socket errors.",
            &[("operation", dir)],
            n,
        );
    }
    {
        for (reason, n) in by_key(&v.refused).into_iter().filter(|(k, _)| k != "total") {
            x.counter(
                "director_sync_refused_total",
                "Sync datagrams refused, by reason (auth = failed HMAC).",
                &[("reason", &reason)],
                n,
            );
        }
    }
}

/// A struct of counters as (key, value) pairs, in key order: its fields are the label values.
fn by_key<T: serde::Serialize>(t: &T) -> Vec<(String, u64)> {
    match serde_json::to_value(t) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_u64().map(|n| (k, n)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The metrics endpoint's thread.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Listen on `addr` and answer `GET /metrics` with `source()` on a thread.
pub fn serve(
    addr: SocketAddr,
    source: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<MetricsServer> {
    MetricsListener::bind(addr)?.serve(source)
}

/// The metrics endpoint, bound but not yet answering (the daemon binds it before it touches
/// the system; see `control::ControlListener`).
pub struct MetricsListener(TcpListener);

impl MetricsListener {
    pub fn bind(addr: SocketAddr) -> std::io::Result<MetricsListener> {
        TcpListener::bind(addr).map(MetricsListener)
    }

    /// Starts answering with what `source` renders.
    pub fn serve(
        self,
        source: Arc<dyn Fn() -> String + Send + Sync>,
    ) -> std::io::Result<MetricsServer> {
        let listener = self.0;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                for stream in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut stream = match stream {
                        Ok(s) => s,
                        // Out of file descriptors and the like: do not spin.
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                        busy.fetch_sub(1, Ordering::AcqRel);
                        let deadline = Instant::now() + Duration::from_millis(100);
                        let _ = respond(
                            &mut stream,
                            deadline,
                            503,
                            "text/plain",
                            b"too many clients at once\n",
                            &[],
                        );
                        continue;
                    }
                    let (source, stop, mine) = (source.clone(), stop2.clone(), busy.clone());
                    let spawned = std::thread::Builder::new()
                        .name("metrics-client".into())
                        .spawn(move || {
                            let _ = answer(stream, &*source, &stop);
                            mine.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        // The stream went with the closure: the client sees the close.
                        busy.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl MetricsServer {
    /// The address it listens on (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening and join the thread; a request being read is abandoned.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where to connect to reach a listener on `addr`: an unspecified address over loopback.
fn wake_addr(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

/// Longest request head accepted.
const MAX_REQUEST: usize = 8192;

/// Read one request head within the deadline, then answer it.
fn answer(
    mut stream: TcpStream,
    source: &(dyn Fn() -> String + Send + Sync),
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                deadline,
                431,
                "text/plain",
                b"request too large\n",
                &[],
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Short reads so that stop() is noticed while a slow client dawdles.
        stream.set_read_timeout(Some(left.min(Duration::from_millis(100))))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return respond(
            &mut stream,
            deadline,
            400,
            "text/plain",
            b"bad request\n",
            &[],
        );
    };
    if !version.starts_with("HTTP/1.") {
        return respond(
            &mut stream,
            deadline,
            400,
            "text/plain",
            b"bad request\n",
            &[],
        );
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            deadline,
            405,
            "text/plain",
            b"only GET\n",
            &[("Allow", "GET, HEAD")],
        );
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    let (status, content_type, body) = match path {
        "/metrics" => (200, CONTENT_TYPE, source().into_bytes()),
        "/" => (
            200,
            "text/html; charset=utf-8",
            b"<html><head><title>directord</title></head><body>\
              <h1>directord</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n"
                .to_vec(),
        ),
        _ => (404, "text/plain", b"not found; try /metrics\n".to_vec()),
    };
    let body = if head_only { &body[..0] } else { &body[..] };
    respond(&mut stream, deadline, status, content_type, body, &[])
}

fn respond(
    stream: &mut TcpStream,
    deadline: Instant,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    write_by(stream, deadline, head.as_bytes())?;
    write_by(stream, deadline, body)
}

/// Write all of `data` before `deadline`, or give up: a client that does not read cannot
/// hold the endpoint.
fn write_by(stream: &mut TcpStream, deadline: Instant, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_values_are_escaped() {
        let mut x = Exposition::default();
        x.gauge(
            "director_test",
            "A test.",
            &[("service", "we\"b\\x\ny")],
            1u64,
        );
        assert_eq!(
            x.finish(),
            "# HELP director_test A test.\n# TYPE director_test gauge\n\
             director_test{service=\"we\\\"b\\\\x\\ny\"} 1\n"
        );
    }

    #[test]
    fn values() {
        let mut x = Exposition::default();
        x.gauge("director_v", "V.", &[("i", "0")], 18446744073709551615u64);
        x.gauge("director_v", "V.", &[("i", "1")], -3.0);
        x.gauge("director_v", "V.", &[("i", "2")], 0.25);
        x.gauge("director_v", "V.", &[("i", "3")], true);
        x.gauge("director_v", "V.", &[("i", "null")], None::<u64>);
        for (i, ms) in [("s", 1.5), ("t", 2.1), ("u", 0.0), ("v", 12000.0)] {
            x.sample(
                "director_v",
                Kind::Gauge,
                "V.",
                &[("i", i)],
                Num::ms(Some(ms)),
            );
        }
        let out = x.finish();
        assert_eq!(
            out.lines().skip(2).collect::<Vec<_>>(),
            [
                "director_v{i=\"0\"} 18446744073709551615",
                "director_v{i=\"1\"} -3",
                "director_v{i=\"2\"} 0.25",
                "director_v{i=\"3\"} 1",
                "director_v{i=\"s\"} 0.0015",
                "director_v{i=\"t\"} 0.0021",
                "director_v{i=\"u\"} 0",
                "director_v{i=\"v\"} 12",
            ]
        );
    }

    #[test]
    fn wake_addr_reaches_unspecified_listeners_over_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("address");
        assert_eq!(wake_addr(a("0.0.0.0:9586")), a("127.0.0.1:9586"));
        assert_eq!(wake_addr(a("[::]:9586")), a("[::1]:9586"));
        assert_eq!(wake_addr(a("198.18.3.1:9586")), a("198.18.3.1:9586"));
    }

    #[test]
    fn a_standalone_box_without_sync_says_so_and_nothing_more() {
        let stats: api::StatsView = serde_json::from_value(json!({
            "node": "lb-a",
            "datapath": {
                "workers": 1, "interfaces": ["eth0"], "rx": 0, "passed": 0, "forwarded_in": 0,
                "forwarded_out": 0, "icmp_forwarded": 0, "emitted": 0, "icmp_sent": 0,
                "icmp_limited": 0, "icmp_unroutable": 0, "new_conns": 0, "tx_errors": 0,
                "tx_waits": 0, "ring_drops": 0, "drops": {}, "xdp": null
            },
            "connections": {
                "count": 0, "capacity": 1024, "inserts": 0, "deletes": 0, "expired": 0, "full": 0
            },
            "services": []
        }))
        .expect("a stats view");
        let standalone = MetricsInput {
            stats,
            services: Vec::new(),
            vrrp: serde_json::from_value(json!({"standalone": true, "instances": []}))
                .expect("a vrrp view"),
            sync: serde_json::from_value(json!({"enabled": false})).expect("a sync view"),
        };
        let out = render(&standalone);
        assert!(out.contains("\ndirector_vrrp_enabled 0\n"), "{out}");
        assert!(out.contains("\ndirector_sync_enabled 0\n"), "{out}");
        assert!(!out.contains("director_sync_peer_up"), "{out}");
        assert!(!out.contains("director_vrrp_foreign_total"), "{out}");
        assert!(!out.contains("director_xdp_frames_total"), "{out}");
    }
}
