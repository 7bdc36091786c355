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
        "Pro FromIP:Port          ToIP:Port             DestIP:Port           State        Expires"
    )?;
    for c in v["connections"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<3} {:<21} {:<21} {:<21} {:<12} {}s",
            c["protocol"].as_str().unwrap_or("?").to_uppercase(),
            c["client"].as_str().unwrap_or("?"),
            c["vip"].as_str().unwrap_or("?"),
            c["real"].as_str().unwrap_or("?"),
            c["state"].as_str().unwrap_or("?"),
            c["expires_in"],
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
