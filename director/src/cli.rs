//! The `director` command line: argument parsing (clap) and the commands that need no daemon.
//!
//! Exit codes, as CONFIG.md fixes them: 0 ok, 1 error (an invalid config), 2 usage error
//! (clap's own), 3 no daemon.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::config::{self, ConfigError, DEFAULT_CONFIG_PATH, DEFAULT_SOCKET_PATH};
use crate::control::{self, ClientError};

#[derive(Debug, Parser)]
#[command(
    name = "director",
    version,
    about = "Control the Director load balancer"
)]
pub struct Cli {
    /// Machine-readable output (JSON on stdout).
    #[arg(long, global = true)]
    pub json: bool,

    /// The daemon's control socket (its `[control] socket`).
    #[arg(long, global = true, default_value = DEFAULT_SOCKET_PATH)]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and validate a config file; print every error. Needs no daemon.
    CheckConfig {
        /// The config file.
        #[arg(default_value = DEFAULT_CONFIG_PATH)]
        file: PathBuf,
    },
    /// Datapath counters: frames, forwards, drops by reason; table size; per real server
    /// packets, bytes and connections.
    Stats,
    /// Each virtual service with its real servers, weights and connections (like
    /// `ipvsadm -L -n`).
    Services,
    /// The connection table (like `ipvsadm -L -n -c`).
    Conns {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Only this client address.
        #[arg(long)]
        client: Option<std::net::Ipv4Addr>,
        /// Show at most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
    },
    /// Change a real server at runtime.
    #[command(subcommand)]
    Real(RealCommand),
    /// Each VRRP instance: state, priority (effective and configured), master, last
    /// transition and its cause.
    Vrrp,
    /// Planned switchover: resign every VRRP instance (priority 0) so the peer takes over at
    /// once, and stop preempting until `director promote`.
    Demote,
    /// Planned switchover: take every VRRP instance over now, advertising priority 254 until
    /// `director demote`.
    Promote,
    /// Connection sync: the peer, replicas, lag, gaps repaired, resyncs and refused
    /// (forged, replayed, truncated) datagrams.
    Sync,
    /// The history of state changes (VRRP transitions, ...) with time and cause.
    Events {
        /// Show at most this many, the newest.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum RealCommand {
    /// Set the weight (0..65535) of a real server; 0 quiesces it.
    ///
    /// Example: director real weight web 198.18.2.11:8080 3
    Weight {
        service: String,
        real: std::net::SocketAddrV4,
        weight: u32,
    },
    /// Drain a real server: weight 0, no new flows, existing ones finish.
    ///
    /// Example: director real drain web 198.18.2.11:8080
    Drain {
        service: String,
        real: std::net::SocketAddrV4,
    },
}

/// Runs a parsed command line, writing to `out` and `err`; returns the exit code.
pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<i32> {
    match &cli.command {
        Command::CheckConfig { file } => check_config(file, cli.json, out, err),
        Command::Stats => daemon_view(cli, json!({"command": "stats"}), render_stats, out, err),
        Command::Services => daemon_view(
            cli,
            json!({"command": "services"}),
            render_services,
            out,
            err,
        ),
        Command::Conns {
            service,
            client,
            limit,
        } => {
            let req =
                json!({"command": "conns", "limit": limit, "service": service, "client": client});
            daemon_view(cli, req, render_conns, out, err)
        }
        Command::Real(RealCommand::Weight {
            service,
            real,
            weight,
        }) => {
            let req = json!({"command": "real-weight", "service": service, "real": real.to_string(), "weight": weight});
            daemon_view(cli, req, render_ack, out, err)
        }
        Command::Vrrp => daemon_view(cli, json!({"command": "vrrp"}), render_vrrp, out, err),
        Command::Sync => daemon_view(cli, json!({"command": "sync"}), render_sync, out, err),
        Command::Demote => daemon_view(cli, json!({"command": "demote"}), render_vrrp, out, err),
        Command::Promote => daemon_view(cli, json!({"command": "promote"}), render_vrrp, out, err),
        Command::Events { limit } => daemon_view(
            cli,
            json!({"command": "events", "limit": limit}),
            render_events,
            out,
            err,
        ),
        Command::Real(RealCommand::Drain { service, real }) => {
            let req = json!({"command": "real-weight", "service": service, "real": real.to_string(), "weight": 0});
            daemon_view(cli, req, render_ack, out, err)
        }
    }
}

/// Ask the daemon, then print its answer as JSON or through `render`.
fn daemon_view(
    cli: &Cli,
    req: serde_json::Value,
    render: fn(&serde_json::Value, &mut dyn Write) -> std::io::Result<()>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    match control::request(&cli.socket, &req) {
        Ok(data) if cli.json => {
            writeln!(out, "{data}")?;
            Ok(0)
        }
        Ok(data) => {
            render(&data, out)?;
            Ok(0)
        }
        Err(e @ ClientError::NoDaemon(..)) => {
            writeln!(err, "director: {e}")?;
            Ok(3)
        }
        Err(e) => {
            writeln!(err, "director: {e}")?;
            Ok(1)
        }
    }
}

fn render_vrrp(v: &serde_json::Value, out: &mut dyn Write) -> std::io::Result<()> {
    if v["standalone"].as_bool() == Some(true) {
        return writeln!(
            out,
            "VRRP is not configured (standalone: the VIPs are put on the interfaces by hand)"
        );
    }
    writeln!(
        out,
        "{:<12} {:<10} {:>4} {:<7} {:>9} {:<24} {:>8}  Last transition",
        "Instance", "Interface", "VRID", "State", "Prio/Cfg", "Master", "Interval"
    )?;
    for i in v["instances"].as_array().into_iter().flatten() {
        let master = match (i["master"].as_str(), i["master_priority"].as_u64()) {
            (Some(m), _) if Some(m) == i["primary"].as_str() => format!("{m} (this node)"),
            (Some(m), Some(p)) => format!("{m} ({p})"),
            _ => "-".to_owned(),
        };
        let last = &i["last_transition"];
        let last = if last.is_null() {
            "-".to_owned()
        } else {
            format!(
                "{} -> {}: {}",
                last["from"].as_str().unwrap_or("?"),
                last["to"].as_str().unwrap_or("?"),
                last["cause"].as_str().unwrap_or("?")
            )
        };
        let mut flags = Vec::new();
        if i["demoted"].as_bool() == Some(true) {
            flags.push("demoted".to_owned());
        }
        if i["promoted"].as_bool() == Some(true) {
            flags.push("promoted".to_owned());
        }
        for t in i["tracks_down"].as_array().into_iter().flatten() {
            flags.push(format!("down: {}", t.as_str().unwrap_or("?")));
        }
        writeln!(
            out,
            "{:<12} {:<10} {:>4} {:<7} {:>9} {:<24} {:>6}ms  {}{}",
            i["name"].as_str().unwrap_or("?"),
            i["interface"].as_str().unwrap_or("?"),
            i["vrid"].as_u64().unwrap_or(0),
            i["state"].as_str().unwrap_or("?"),
            format!("{}/{}", i["priority"], i["configured_priority"]),
            master,
            i["master_adver_interval_ms"].as_f64().unwrap_or(0.0),
            last,
            if flags.is_empty() {
                String::new()
            } else {
                format!("  [{}]", flags.join(", "))
            }
        )?;
    }
    Ok(())
}

fn render_events(v: &serde_json::Value, out: &mut dyn Write) -> std::io::Result<()> {
    for e in v["events"].as_array().into_iter().flatten() {
        let t = e["time"].as_f64().unwrap_or(0.0);
        writeln!(
            out,
            "{:>6} {} {:<8} {:<12} {}",
            e["seq"],
            utc(t),
            e["kind"].as_str().unwrap_or("?"),
            e["subject"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("?")
        )?;
    }
    if v["dropped"].as_u64().unwrap_or(0) > 0 {
        writeln!(out, "({} older events dropped)", v["dropped"])?;
    }
    Ok(())
}

/// `2026-11-21 19:38:12.345Z` from seconds since the Unix epoch.
pub fn utc(unix: f64) -> String {
    let ms = (unix * 1000.0).round() as i64;
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian), by 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn render_ack(v: &serde_json::Value, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {}: weight {}",
        v["service"].as_str().unwrap_or("?"),
        v["real"].as_str().unwrap_or("?"),
        v["weight"]
    )
}

fn render_stats(v: &serde_json::Value, out: &mut dyn Write) -> std::io::Result<()> {
    let d = &v["datapath"];
    writeln!(
        out,
        "Node {}  workers {}  interfaces {}",
        v["node"].as_str().unwrap_or("?"),
        d["workers"],
        d["interfaces"]
    )?;
    writeln!(
        out,
        "Frames rx {}  passed {}  forwarded in {}  out {}  icmp {}  new conns {}  tx errors {}  ring drops {}",
        d["rx"], d["passed"], d["forwarded_in"], d["forwarded_out"], d["icmp_forwarded"], d["new_conns"], d["tx_errors"], d["ring_drops"]
    )?;
    if let Some(drops) = d["drops"].as_object() {
        let nonzero: Vec<String> = drops
            .iter()
            .filter(|(_, n)| n.as_u64() != Some(0))
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            out,
            "Drops {}",
            if nonzero.is_empty() {
                "none".to_string()
            } else {
                nonzero.join("  ")
            }
        )?;
    }
    let c = &v["connections"];
    writeln!(
        out,
        "Connections {} of {}  inserted {}  deleted {}  expired {}  refused (full) {}",
        c["count"], c["capacity"], c["inserts"], c["deletes"], c["expired"], c["full"]
    )?;
    writeln!(
        out,
        "{:<28} {:>10} {:>10} {:>12} {:>12} {:>8}",
        "Service / RemoteAddress:Port", "InPkts", "OutPkts", "InBytes", "OutBytes", "Conns"
    )?;
    for s in v["services"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{} {} ({})",
            s["protocol"].as_str().unwrap_or("?").to_uppercase(),
            s["vip"].as_str().unwrap_or("?"),
            s["name"].as_str().unwrap_or("?")
        )?;
        for r in s["reals"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  -> {:<23} {:>10} {:>10} {:>12} {:>12} {:>8}",
                r["address"].as_str().unwrap_or("?"),
                r["packets_in"],
                r["packets_out"],
                r["bytes_in"],
                r["bytes_out"],
                r["conns"]
            )?;
        }
    }
    Ok(())
}

fn render_sync(v: &serde_json::Value, out: &mut dyn Write) -> std::io::Result<()> {
    if v["enabled"] == false {
        return writeln!(out, "connection sync is off (no [sync] in the config)");
    }
    if v["starting"] == true {
        return writeln!(out, "connection sync is starting");
    }
    let p = &v["peer"];
    writeln!(
        out,
        "node {} ({}) epoch {} on {} {} {}",
        v["node"].as_str().unwrap_or("?"),
        v["node_id"].as_str().unwrap_or("?"),
        v["epoch"],
        v["interface"].as_str().unwrap_or("?"),
        v["mode"].as_str().unwrap_or("?"),
        v["destination"].as_str().unwrap_or("?"),
    )?;
    match p["state"].as_str() {
        Some("unknown") => writeln!(out, "peer      never heard")?,
        state => writeln!(
            out,
            "peer      {} node {} epoch {}, heard {:.0} ms ago, {} messages behind{}",
            state.unwrap_or("?"),
            p["node_id"].as_str().unwrap_or("?"),
            p["epoch"],
            p["last_heard_ms"].as_f64().unwrap_or(0.0),
            p["behind"],
            if p["resyncing"] == true {
                ", waiting for our table"
            } else {
                ""
            },
        )?,
    }
    let c = &v["connections"];
    writeln!(
        out,
        "table     {} connections: {} local, {} replicas",
        c["total"], c["local"], c["replicas"]
    )?;
    let s = &v["stream"];
    let rtt = |x: &serde_json::Value| {
        x.as_f64()
            .map_or_else(|| "-".to_string(), |ms| format!("{ms:.2} ms"))
    };
    writeln!(
        out,
        "stream    seq {} acked {} (unacked {}); lag (sent → applied and acknowledged) last {}, max {}",
        s["seq"],
        s["acked"],
        s["unacked"],
        rtt(&s["lag_ms"]),
        rtt(&s["lag_max_ms"]),
    )?;
    let r = &v["resync"];
    let resync = |x: &serde_json::Value| {
        if x.is_null() {
            "none".to_string()
        } else {
            format!(
                "{} entries in {:.1} ms",
                x["entries"],
                x["ms"].as_f64().unwrap_or(0.0)
            )
        }
    };
    writeln!(
        out,
        "resync    {}; last received: {}; last sent: {}{}",
        if r["complete"] == true {
            "complete"
        } else {
            "NOT complete"
        },
        resync(&r["received"]),
        resync(&r["sent"]),
        if r["sending"].is_null() {
            String::new()
        } else {
            format!("; sending now: {}", resync(&r["sending"]))
        },
    )?;
    let k = &v["counters"];
    writeln!(
        out,
        "repairs   {} gaps, {} repaired, {} NACKs sent, {} received, {} retransmitted",
        k["gaps"], k["repaired"], k["nacks_tx"], k["nacks_rx"], k["retransmits"]
    )?;
    writeln!(
        out,
        "traffic   tx {} datagrams ({} entries, {} B), rx {} datagrams ({} B), {} applied",
        k["tx_datagrams"],
        k["tx_entries"],
        k["tx_bytes"],
        k["rx_datagrams"],
        k["rx_bytes"],
        k["applied"]
    )?;
    let f = &v["refused"];
    writeln!(
        out,
        "refused   {} total: {} auth failures, {} replayed, {} truncated, {} malformed, {} bad magic, {} other version, {} unknown node",
        f["total"],
        f["auth"],
        f["replayed"],
        f["truncated"],
        f["malformed"],
        f["bad_magic"],
        f["version"],
        f["unknown_node"]
    )?;
    Ok(())
}

fn render_services(v: &serde_json::Value, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "Prot LocalAddress:Port Scheduler Flags")?;
    writeln!(
        out,
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"
    )?;
    for s in v.as_array().into_iter().flatten() {
        let persist = s["persistence"].as_u64().unwrap_or(0);
        let flags = if persist > 0 {
            format!(" persistent {persist}")
        } else {
            String::new()
        };
        writeln!(
            out,
            "{:<4} {} {}{}  ({})",
            s["protocol"].as_str().unwrap_or("?").to_uppercase(),
            s["vip"].as_str().unwrap_or("?"),
            s["scheduler"].as_str().unwrap_or("?"),
            flags,
            s["name"].as_str().unwrap_or("?"),
        )?;
        let fwd = match s["mode"].as_str() {
            Some("nat") => "Masq",
            Some("dr") => "Route",
            Some("tun") => "Tunnel",
            Some("fullnat") => "FullNat",
            _ => "?",
        };
        for r in s["reals"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  -> {:<27} {:<7} {:<6} {:<10} {}",
                r["address"].as_str().unwrap_or("?"),
                fwd,
                r["weight"],
                r["active"],
                r["inactive"]
            )?;
        }
    }
    Ok(())
}

fn render_conns(v: &serde_json::Value, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "Pro FromIP:Port          ToIP:Port             DestIP:Port           State        Expires Origin"
    )?;
    for c in v["connections"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<3} {:<21} {:<21} {:<21} {:<12} {:>6}s {}",
            c["protocol"].as_str().unwrap_or("?").to_uppercase(),
            c["client"].as_str().unwrap_or("?"),
            c["vip"].as_str().unwrap_or("?"),
            c["real"].as_str().unwrap_or("?"),
            c["state"].as_str().unwrap_or("?"),
            c["expires_in"],
            c["origin"].as_str().unwrap_or("?"),
        )?;
    }
    if v["shown"] != v["total"] {
        writeln!(out, "({} of {} connections shown)", v["shown"], v["total"])?;
    }
    Ok(())
}

fn check_config(
    file: &Path,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    let result = config::load(file);
    if json {
        let report = match &result {
            Ok(c) => json!({
                "file": file,
                "ok": true,
                "services": c.services.len(),
                "real_servers": c.real_server_count(),
                "warnings": c.warnings.iter().map(error_json).collect::<Vec<_>>(),
            }),
            Err(errors) => json!({
                "file": file,
                "ok": false,
                "errors": errors.iter().map(error_json).collect::<Vec<_>>(),
            }),
        };
        writeln!(out, "{report}")?;
        return Ok(if result.is_ok() { 0 } else { 1 });
    }
    match result {
        Ok(c) => {
            for w in &c.warnings {
                writeln!(
                    err,
                    "{}:{}:{}: warning: {}",
                    w.file.display(),
                    w.line,
                    w.column,
                    w.message
                )?;
            }
            writeln!(
                out,
                "{}: ok ({}, {})",
                file.display(),
                plural(c.services.len(), "service"),
                plural(c.real_server_count(), "real server")
            )?;
            Ok(0)
        }
        Err(errors) => {
            for e in &errors {
                writeln!(err, "{e}")?;
            }
            Ok(1)
        }
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn error_json(e: &ConfigError) -> serde_json::Value {
    json!({ "file": e.file, "line": e.line, "column": e.column, "message": e.message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00.000Z");
        assert_eq!(utc(951_782_400.5), "2000-02-29 00:00:00.500Z");
        assert_eq!(utc(1_795_290_492.25), "2026-11-21 19:48:12.250Z");
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn check_config_defaults_to_the_appliance_path() {
        let cli = Cli::try_parse_from(["director", "check-config"]).expect("valid command line");
        match cli.command {
            Command::CheckConfig { file } => assert_eq!(file, Path::new(DEFAULT_CONFIG_PATH)),
            other => panic!("parsed as {other:?}"),
        }
    }
}
