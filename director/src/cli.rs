//! The `director` command line: argument parsing (clap), the requests each command sends to
//! the daemon, and the human renderers of the daemon's replies.
//!
//! Exit codes, as CONFIG.md fixes them: 0 ok, 1 the daemon reported an error (or
//! `check-config` found errors), 2 usage error (clap's own), 3 no daemon.
//!
//! Every daemon command is one request `{"command": NAME, ...}` on the control socket; with
//! `--json` the reply's `data` is printed as it came, otherwise [`render`] turns it into the
//! tables operators know from `ipvsadm -L -n` and `keepalived`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::{self, ConfigError, DEFAULT_CONFIG_PATH, DEFAULT_SOCKET_PATH};
use crate::control::{self, ClientError};
use appliance::upgrade;

/// Exit code: the daemon reported an error, or `check-config` found errors.
pub const EXIT_ERROR: i32 = 1;
/// Exit code: no daemon answers on the control socket.
pub const EXIT_NO_DAEMON: i32 = 3;

const TOP_HELP: &str = "\
Examples:
  director status                       overview: roles, services, sync, rates
  director services                     virtual services and real servers (ipvsadm -L -n)
  director real drain web 198.18.2.11:8080
  director --json vrrp | jq '.instances[].state'
  director --socket /run/director/lab-b.sock status
  director upgrade /tmp/director-0.7.0.img     write the other root slot and boot it

Exit codes: 0 ok, 1 the daemon reported an error, 2 usage error, 3 no daemon.";

#[derive(Debug, Parser)]
#[command(
    name = "director",
    version,
    about = "Control the Director load balancer",
    after_help = TOP_HELP
)]
pub struct Cli {
    /// Machine-readable output (JSON on stdout).
    #[arg(long, global = true)]
    pub json: bool,

    /// The daemon's control socket (its `[control] socket`).
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET_PATH)]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The node at a glance: VRRP role, services up/down, sync peer, datapath rates.
    #[command(after_help = "\
Examples:
  director status
  director --json status | jq '.vrrp[] | {name, state}'")]
    Status,
    /// Parse and validate a config file; print every error. Needs no daemon.
    #[command(after_help = "\
Examples:
  director check-config                            # /etc/director/director.toml
  director check-config /tmp/director.toml.new && cp /tmp/director.toml.new /etc/director/director.toml
  director --json check-config lab.toml | jq '.errors[].message'

Exit codes: 0 valid (warnings go to stderr), 1 invalid or unreadable, 2 usage error.")]
    CheckConfig {
        /// The config file.
        #[arg(default_value = DEFAULT_CONFIG_PATH)]
        file: PathBuf,
    },
    /// Datapath counters: frames, forwards, drops by reason; table size; per real server
    /// packets, bytes and connections.
    #[command(after_help = "\
Examples:
  director stats
  director --json stats | jq '.datapath.drops'")]
    Stats,
    /// Each virtual service with its real servers: weight, connections, health, admin state,
    /// sorry server (like `ipvsadm -L -n`).
    #[command(after_help = "\
Examples:
  director services
  director --json services | jq '.[] | select(.up | not) | .name'")]
    Services,
    /// The connection table (like `ipvsadm -L -n -c`).
    #[command(after_help = "\
Examples:
  director conns --service web
  director conns --client 198.18.1.77 --limit 20
  director --json conns | jq '.total'")]
    Conns {
        /// Only this service.
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// Only this client address.
        #[arg(long, value_name = "ADDR")]
        client: Option<std::net::Ipv4Addr>,
        /// Show at most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
    },
    /// Change a real server at runtime: enable, disable, drain, weight.
    #[command(
        subcommand,
        after_help = "\
Examples:
  director real drain web 198.18.2.11:8080
  director real enable web 198.18.2.11:8080
  director real weight web 198.18.2.11:8080 3"
    )]
    Real(RealCommand),
    /// Each VRRP instance: state, priority (effective and configured), master, last
    /// transition and its cause.
    #[command(after_help = "\
Examples:
  director vrrp
  director --json vrrp | jq '.instances[] | {name, state, priority}'")]
    Vrrp,
    /// Planned switchover: resign every VRRP instance (priority 0) so the peer takes over at
    /// once, and stop preempting until `director promote`.
    #[command(after_help = "\
Examples:
  director demote                       # on the master: the backup takes over now
  director promote                      # later, to take the VIPs back")]
    Demote,
    /// Planned switchover: take every VRRP instance over now, advertising priority 254 until
    /// `director demote`.
    #[command(after_help = "\
Examples:
  director promote")]
    Promote,
    /// Connection sync: the peer, replicas, lag, gaps repaired, resyncs and refused
    /// (forged, replayed, truncated) datagrams.
    #[command(after_help = "\
Examples:
  director sync
  director --json sync | jq '.stream.lag_ms'")]
    Sync,
    /// The history of state changes (VRRP, health, sync, config) with time and cause.
    #[command(after_help = "\
Examples:
  director events
  director events --limit 20")]
    Events {
        /// Show at most this many, the newest.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Re-read the config file and apply the difference without dropping established flows
    /// or moving a VIP. A config with errors is refused and the running one stays.
    #[command(after_help = "\
Examples:
  director check-config && director reload
  systemctl reload directord            # the same, through SIGHUP")]
    Reload,
    /// Write a new image into the root slot that is not running, verify it, install its
    /// kernel on the ESP and make it the next boot, with boot counting; then reboot.
    #[command(after_help = "\
Examples:
  director upgrade /tmp/director-0.7.0.img                # a disk image from the build
  director upgrade /tmp/director-0.7.0.img --no-reboot    # boot it later: systemctl reboot
  director upgrade /tmp/root.ext4 --tries 5               # a bare root filesystem

The new slot boots with TRIES attempts; a boot counts as good once `director boot-check` saw
the daemon and its peer. After TRIES failed boots systemd-boot boots the previous slot again.

Exit codes: 0 done, 1 a step failed (it is named, with its path), 2 usage error.")]
    Upgrade {
        /// The new image: a disk image file or device (its partition root-a is used), or a
        /// bare ext4 root filesystem.
        image: PathBuf,
        /// Boot attempts before systemd-boot falls back to the previous slot.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        tries: u32,
        /// Prepare the next boot but do not reboot now.
        #[arg(long)]
        no_reboot: bool,
        #[command(flatten)]
        paths: SlotPaths,
    },
    /// Confirm a counted boot: wait until the daemon answers and sees its peer (VRRP adverts
    /// heard, or the sync peer up). Run by a unit before boot-complete.target.
    #[command(after_help = "\
Examples:
  director boot-check                   # what the boot-check unit runs
  director boot-check --timeout 30

Exit codes: 0 good (or not a counted boot), 1 not good within the timeout, 2 usage error.")]
    BootCheck {
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        timeout: u64,
        #[command(flatten)]
        paths: SlotPaths,
    },
    /// The root slots: the running one, each slot's image version, and the boot entries in
    /// the order systemd-boot tries them.
    #[command(after_help = "\
Examples:
  director slots
  director --json slots | jq -r .next")]
    Slots {
        #[command(flatten)]
        paths: SlotPaths,
    },
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  director completions bash > /etc/bash_completion.d/director
  director completions zsh > \"${fpath[1]}/_director\"
  director completions fish > ~/.config/fish/completions/director.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Where `upgrade`, `boot-check` and `slots` find the appliance's files. Hidden: they exist
/// so that tests can point the commands at temporary files.
#[derive(Debug, Clone, clap::Args)]
pub struct SlotPaths {
    #[arg(long, hide = true, value_name = "PATH", default_value = upgrade::DEFAULT_CMDLINE)]
    cmdline_file: PathBuf,
    #[arg(long, hide = true, value_name = "DIR", default_value = upgrade::DEFAULT_PARTLABEL_DIR)]
    partlabel_dir: PathBuf,
    #[arg(long, hide = true, value_name = "DIR", default_value = upgrade::DEFAULT_ESP)]
    esp: PathBuf,
    #[arg(long, hide = true, value_name = "DIR", default_value = upgrade::DEFAULT_EFIVARS)]
    efivars: PathBuf,
    #[arg(long, hide = true, value_name = "PATH", default_value = upgrade::DEFAULT_IMAGE_VERSION)]
    image_version_file: PathBuf,
    #[arg(long, hide = true, value_name = "COMMAND", default_value = upgrade::DEFAULT_REBOOT)]
    reboot_command: String,
}

impl SlotPaths {
    pub fn paths(&self) -> upgrade::Paths {
        upgrade::Paths {
            cmdline: self.cmdline_file.clone(),
            by_partlabel: self.partlabel_dir.clone(),
            esp: self.esp.clone(),
            efivars: self.efivars.clone(),
            image_version: self.image_version_file.clone(),
            reboot: self
                .reboot_command
                .split_whitespace()
                .map(String::from)
                .collect(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RealCommand {
    /// Put a real server back in service (after `disable` or `drain`), at its configured
    /// weight.
    #[command(after_help = "\
Examples:
  director real enable web 198.18.2.11:8080")]
    Enable {
        /// The service's name.
        service: String,
        /// The real server, as in the config.
        #[arg(value_name = "ADDR:PORT")]
        real: std::net::SocketAddrV4,
    },
    /// Disable a real server: out of the scheduler until `director real enable`.
    #[command(after_help = "\
Examples:
  director real disable web 198.18.2.11:8080")]
    Disable {
        /// The service's name.
        service: String,
        /// The real server, as in the config.
        #[arg(value_name = "ADDR:PORT")]
        real: std::net::SocketAddrV4,
    },
    /// Drain a real server: weight 0, no new flows, existing ones finish.
    #[command(after_help = "\
Examples:
  director real drain web 198.18.2.11:8080
  director conns --service web | grep 198.18.2.11:8080   # wait until it is empty
  director real enable web 198.18.2.11:8080")]
    Drain {
        /// The service's name.
        service: String,
        /// The real server, as in the config.
        #[arg(value_name = "ADDR:PORT")]
        real: std::net::SocketAddrV4,
    },
    /// Set the runtime weight (0..65535) of a real server; 0 quiesces it.
    #[command(after_help = "\
Examples:
  director real weight web 198.18.2.11:8080 3
  director real weight web 198.18.2.11:8080 0    # quiesce")]
    Weight {
        /// The service's name.
        service: String,
        /// The real server, as in the config.
        #[arg(value_name = "ADDR:PORT")]
        real: std::net::SocketAddrV4,
        /// The new weight.
        #[arg(value_parser = clap::value_parser!(u32).range(0..=65535))]
        weight: u32,
    },
}

/// The request a daemon command sends, and the renderer of its reply; `None` for commands
/// that need no daemon.
fn request_of(command: &Command) -> Option<(Value, &'static str)> {
    let admin = |service: &str, real: &std::net::SocketAddrV4, action: &str| json!({"command": "real-admin", "service": service, "real": real.to_string(), "action": action});
    Some(match command {
        Command::CheckConfig { .. }
        | Command::Completions { .. }
        | Command::Upgrade { .. }
        | Command::BootCheck { .. }
        | Command::Slots { .. } => return None,
        Command::Status => (json!({"command": "status"}), "status"),
        Command::Stats => (json!({"command": "stats"}), "stats"),
        Command::Services => (json!({"command": "services"}), "services"),
        Command::Conns {
            service,
            client,
            limit,
        } => (
            json!({"command": "conns", "limit": limit, "service": service, "client": client}),
            "conns",
        ),
        Command::Real(RealCommand::Enable { service, real }) => {
            (admin(service, real, "enable"), "real-admin")
        }
        Command::Real(RealCommand::Disable { service, real }) => {
            (admin(service, real, "disable"), "real-admin")
        }
        Command::Real(RealCommand::Drain { service, real }) => {
            (admin(service, real, "drain"), "real-admin")
        }
        Command::Real(RealCommand::Weight {
            service,
            real,
            weight,
        }) => (
            json!({"command": "real-weight", "service": service, "real": real.to_string(), "weight": weight}),
            "real-weight",
        ),
        Command::Vrrp => (json!({"command": "vrrp"}), "vrrp"),
        Command::Sync => (json!({"command": "sync"}), "sync"),
        Command::Demote => (json!({"command": "demote"}), "demote"),
        Command::Promote => (json!({"command": "promote"}), "promote"),
        Command::Events { limit } => (json!({"command": "events", "limit": limit}), "events"),
        Command::Reload => (json!({"command": "reload"}), "reload"),
    })
}

/// The request `director ARGS...` would send to the daemon (for tests and `--help` texts);
/// `None` for commands that need no daemon.
pub fn request_for(cli: &Cli) -> Option<Value> {
    request_of(&cli.command).map(|(req, _)| req)
}

/// Runs a parsed command line, writing to `out` and `err`; returns the exit code.
pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<i32> {
    match &cli.command {
        Command::CheckConfig { file } => check_config(file, cli.json, out, err),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "director", out);
            Ok(0)
        }
        Command::Upgrade {
            image,
            tries,
            no_reboot,
            paths,
        } => upgrade_command(
            &paths.paths(),
            image,
            *tries,
            *no_reboot,
            cli.json,
            out,
            err,
        ),
        Command::BootCheck { timeout, paths } => {
            let mut ask = |command: &str| {
                control::request(&cli.socket, &serde_json::json!({ "command": command })).map_err(
                    |e| match e {
                        control::ClientError::NoDaemon(path, e) => {
                            format!("no daemon answers on {}: {e}", path.display())
                        }
                        e => format!("the daemon's {command} failed: {e}"),
                    },
                )
            };
            let check = upgrade::boot_check(
                &paths.paths(),
                &mut ask,
                std::time::Duration::from_secs(*timeout),
                out,
            );
            match check {
                Ok(upgrade::BootCheck::NotCounted | upgrade::BootCheck::Good(_)) => Ok(0),
                Ok(upgrade::BootCheck::Failed(_)) => Ok(EXIT_ERROR),
                Err(e) => {
                    writeln!(err, "director: boot-check: {e}")?;
                    Ok(EXIT_ERROR)
                }
            }
        }
        Command::Slots { paths } => match upgrade::slots(&paths.paths()) {
            Ok(v) if cli.json => {
                writeln!(out, "{v}")?;
                Ok(0)
            }
            Ok(v) => {
                upgrade::render_slots(&v, out)?;
                Ok(0)
            }
            Err(e) => {
                writeln!(err, "director: slots: {e}")?;
                Ok(EXIT_ERROR)
            }
        },
        command => {
            let (req, view) = request_of(command).expect("every other command asks the daemon");
            daemon_view(cli, &req, view, out, err)
        }
    }
}

/// `director upgrade`: the steps' lines on stdout (stderr with `--json`, whose summary goes
/// to stdout), the copy's progress on stderr; then the reboot.
fn upgrade_command(
    paths: &upgrade::Paths,
    image: &Path,
    tries: u32,
    no_reboot: bool,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    let result = if json {
        upgrade::upgrade(paths, image, tries, err, &mut std::io::sink())
    } else {
        upgrade::upgrade(paths, image, tries, out, err)
    };
    let done = match result {
        Ok(done) => done,
        Err(e) => {
            writeln!(err, "director: upgrade failed: {e}")?;
            return Ok(EXIT_ERROR);
        }
    };
    if json {
        let mut v = done.to_json();
        v["rebooting"] = json!(!no_reboot);
        writeln!(out, "{v}")?;
    }
    if no_reboot {
        if !json {
            writeln!(
                out,
                "not rebooting (--no-reboot): slot {} boots at the next reboot",
                done.target
            )?;
        }
        return Ok(0);
    }
    if !json {
        writeln!(out, "rebooting into slot {}", done.target)?;
    }
    out.flush()?;
    match upgrade::reboot(paths) {
        Ok(()) => Ok(0),
        Err(e) => {
            writeln!(
                err,
                "director: {e} (slot {} is ready and boots at the next reboot)",
                done.target
            )?;
            Ok(EXIT_ERROR)
        }
    }
}

/// Ask the daemon, then print its answer as JSON or through the renderer of `view`.
fn daemon_view(
    cli: &Cli,
    req: &Value,
    view: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    match control::request(&cli.socket, req) {
        Ok(data) if cli.json => {
            writeln!(out, "{data}")?;
            Ok(0)
        }
        Ok(data) => {
            render(view, &data, out)?;
            Ok(0)
        }
        Err(ClientError::NoDaemon(path, e)) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (the control socket is root-only: run as root)"
            } else {
                " (is directord running? is --socket its [control] socket?)"
            };
            writeln!(
                err,
                "director: no daemon answers on {}: {e}{hint}",
                path.display()
            )?;
            Ok(EXIT_NO_DAEMON)
        }
        Err(ClientError::Daemon(msg)) if view == "reload" => {
            writeln!(err, "director: reload refused; the running config stays:")?;
            writeln!(err, "{}", msg.trim_end())?;
            Ok(EXIT_ERROR)
        }
        Err(e) => {
            writeln!(err, "director: {e}")?;
            Ok(EXIT_ERROR)
        }
    }
}

/// The views [`render`] knows, by the name of the request that returns them.
pub const VIEWS: &[&str] = &[
    "status",
    "services",
    "conns",
    "stats",
    "vrrp",
    "sync",
    "events",
    "demote",
    "promote",
    "real-weight",
    "real-admin",
    "reload",
];

/// Render the daemon's reply `data` to `command` (a name of [`VIEWS`]) as the human table.
pub fn render(command: &str, data: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    match command {
        "status" => render_status(data, out),
        "services" => render_services(data, out),
        "conns" => render_conns(data, out),
        "stats" => render_stats(data, out),
        "vrrp" | "demote" | "promote" => render_vrrp(data, out),
        "sync" => render_sync(data, out),
        "events" => render_events(data, out),
        "real-weight" | "real-admin" => render_ack(data, out),
        "reload" => render_reload(data, out),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("no renderer for {other:?}"),
        )),
    }
}

fn render_vrrp(v: &Value, out: &mut dyn Write) -> std::io::Result<()> {
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

fn render_events(v: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let events: Vec<&Value> = v["events"].as_array().into_iter().flatten().collect();
    if events.is_empty() {
        writeln!(out, "no events")?;
    }
    let width = events
        .iter()
        .map(|e| str_or(&e["subject"]).len())
        .max()
        .unwrap_or(0);
    for e in events {
        let t = e["time"].as_f64().unwrap_or(0.0);
        writeln!(
            out,
            "{:>6} {} {:<8} {:<width$} {}",
            num_or(&e["seq"]),
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

/// `real weight` answers `{service, real, weight}`; `real enable|disable|drain` adds `admin`.
fn render_ack(v: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    match v["admin"].as_str() {
        Some(admin) => writeln!(
            out,
            "{} {}: {admin}, weight {}",
            str_or(&v["service"]),
            str_or(&v["real"]),
            num_or(&v["weight"])
        ),
        None => writeln!(
            out,
            "{} {}: weight {}",
            str_or(&v["service"]),
            str_or(&v["real"]),
            num_or(&v["weight"])
        ),
    }
}

/// A string field, or `?` when the daemon did not send it.
fn str_or(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// A number (or any scalar) as JSON prints it, `-` when missing or null.
fn num_or(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// `3d 4h 12m`, `4h 12m 3s`, `12m 3s`, `45s`.
pub fn duration_words(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// A rate, to the unit for large ones and one decimal below 10.
fn rate(v: &Value) -> String {
    match v.as_f64() {
        Some(r) if r < 10.0 && r.fract() != 0.0 => format!("{r:.1}"),
        Some(r) => format!("{r:.0}"),
        None => "-".to_string(),
    }
}

/// `ext: XDP native, 2 queues; int: AF_PACKET` — how each interface receives.
fn receive_words(v: &Value) -> Option<String> {
    let paths = v.as_array()?;
    if paths.is_empty() {
        return None;
    }
    Some(
        paths
            .iter()
            .map(|p| {
                let how = match p["path"].as_str() {
                    Some("xdp") => {
                        let q = p["queues"].as_u64().unwrap_or(0);
                        format!(
                            "XDP {}, {q} queue{}",
                            str_or(&p["xdp_mode"]),
                            if q == 1 { "" } else { "s" }
                        )
                    }
                    Some("af_packet") => "AF_PACKET".to_string(),
                    _ => "?".to_string(),
                };
                format!("{}: {how}", str_or(&p["interface"]))
            })
            .collect::<Vec<_>>()
            .join("; "),
    )
}

fn render_status(v: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let uptime = v["uptime_s"]
        .as_f64()
        .map_or_else(|| "?".to_string(), |s| duration_words(s as u64));
    writeln!(out, "node      {} (up {uptime})", str_or(&v["node"]))?;
    let c = &v["config"];
    writeln!(
        out,
        "config    {}, generation {}, loaded {}",
        str_or(&c["path"]),
        num_or(&c["generation"]),
        c["loaded_at"].as_f64().map_or_else(|| "?".to_string(), utc)
    )?;

    let instances: Vec<&Value> = v["vrrp"].as_array().into_iter().flatten().collect();
    if v["standalone"] == true || instances.is_empty() {
        writeln!(
            out,
            "role      standalone (no VRRP: the VIPs are put on the interfaces by hand)"
        )?;
    } else {
        let states: Vec<&str> = instances.iter().map(|i| str_or(&i["state"])).collect();
        let role = if states.iter().all(|s| *s == states[0]) {
            states[0].to_string()
        } else {
            format!("MIXED ({})", states.join("/"))
        };
        writeln!(out, "role      {role}")?;
        let width = instances
            .iter()
            .map(|i| str_or(&i["name"]).len())
            .max()
            .unwrap_or(0);
        for (n, i) in instances.iter().enumerate() {
            let state = str_or(&i["state"]);
            let master = match i["master"].as_str() {
                _ if state == "MASTER" => "this node".to_string(),
                Some(m) => m.to_string(),
                None => "none heard".to_string(),
            };
            writeln!(
                out,
                "{:<10}{:<width$}  {:<7} {:>3}/{:<3}  master {master}",
                if n == 0 { "vrrp" } else { "" },
                str_or(&i["name"]),
                state,
                num_or(&i["priority"]),
                num_or(&i["configured_priority"]),
            )?;
        }
    }

    let services: Vec<&Value> = v["services"].as_array().into_iter().flatten().collect();
    let up = services.iter().filter(|s| s["up"] == true).count();
    writeln!(
        out,
        "services  {up} of {} up{}",
        services.len(),
        if up < services.len() {
            format!(", {} DOWN", services.len() - up)
        } else {
            String::new()
        }
    )?;
    let width = services
        .iter()
        .map(|s| str_or(&s["name"]).len())
        .max()
        .unwrap_or(0);
    for s in &services {
        let mut notes = vec![format!(
            "{}/{} healthy",
            num_or(&s["healthy"]),
            num_or(&s["total"])
        )];
        if let Some(q) = s["quorum"].as_u64() {
            notes.push(format!("quorum {q}"));
        }
        if s["sorry_active"] == true {
            notes.push("SORRY SERVER active".to_string());
        }
        writeln!(
            out,
            "          {:<width$}  {:<4}  {:<3} {:<21} {:<7}  {}",
            str_or(&s["name"]),
            if s["up"] == true { "up" } else { "DOWN" },
            str_or(&s["protocol"]).to_uppercase(),
            str_or(&s["vip"]),
            str_or(&s["mode"]),
            notes.join(", ")
        )?;
    }

    let y = &v["sync"];
    if y["enabled"] == true {
        let lag = y["lag_ms"]
            .as_f64()
            .map_or_else(|| "-".to_string(), |ms| format!("{ms:.2} ms"));
        writeln!(
            out,
            "sync      peer {}, lag {lag}, {} replicas, resync {}",
            str_or(&y["peer"]),
            num_or(&y["replicas"]),
            if y["resync_complete"] == true {
                "complete"
            } else {
                "NOT complete"
            }
        )?;
    } else {
        writeln!(out, "sync      off (no [sync] in the config)")?;
    }

    let d = &v["datapath"];
    writeln!(
        out,
        "datapath  {}, {}; rx {} pkt/s, forwarded {} pkt/s, {} new conn/s, {} drops/s",
        d["workers"]
            .as_u64()
            .map_or_else(|| "? workers".to_string(), |n| plural(n as usize, "worker")),
        d["connections"].as_u64().map_or_else(
            || "? connections".to_string(),
            |n| plural(n as usize, "connection")
        ),
        rate(&d["rx_pps"]),
        rate(&d["forwarded_pps"]),
        rate(&d["new_conns_per_s"]),
        rate(&d["drops_per_s"]),
    )?;
    if let Some(words) = receive_words(&d["receive"]) {
        writeln!(out, "receive   {words}")?;
    }
    Ok(())
}

fn render_reload(v: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let changes: Vec<&Value> = v["changes"].as_array().into_iter().flatten().collect();
    if changes.is_empty() {
        writeln!(
            out,
            "config generation {}: no changes",
            num_or(&v["generation"])
        )?;
    } else {
        writeln!(
            out,
            "config generation {}: {}",
            num_or(&v["generation"]),
            plural(changes.len(), "change")
        )?;
        for c in changes {
            writeln!(out, "  {}", str_or(c))?;
        }
    }
    for w in v["warnings"].as_array().into_iter().flatten() {
        writeln!(out, "warning: {}", str_or(w))?;
    }
    Ok(())
}

fn render_stats(v: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let d = &v["datapath"];
    writeln!(
        out,
        "Node {}  workers {}  interfaces {}",
        v["node"].as_str().unwrap_or("?"),
        num_or(&d["workers"]),
        d["interfaces"]
            .as_array()
            .map(|l| l.iter().map(str_or).collect::<Vec<_>>().join(","))
            .unwrap_or_else(|| "-".to_string())
    )?;
    writeln!(
        out,
        "Frames rx {}  passed {}  forwarded in {}  out {}  icmp {}  new conns {}  tx errors {}  tx waits {}  ring drops {}",
        d["rx"], d["passed"], d["forwarded_in"], d["forwarded_out"], d["icmp_forwarded"], d["new_conns"], d["tx_errors"], num_or(&d["tx_waits"]), d["ring_drops"]
    )?;
    // Frames the datapath rebuilt (TUN copies and segments) and ICMP errors it originated.
    if !d["emitted"].is_null() {
        writeln!(
            out,
            "Rebuilt and sent {}  icmp sent {}  icmp rate-limited {}  icmp unroutable {}",
            d["emitted"],
            d["icmp_sent"],
            d["icmp_limited"],
            num_or(&d["icmp_unroutable"])
        )?;
    }
    // The XDP program's share (already in the totals above) and the fast path's flows.
    let x = &d["xdp"];
    if x.is_object() {
        writeln!(
            out,
            "XDP passed {}  to workers {}  no socket {}  fast path in {}  out {}",
            num_or(&x["passed"]),
            num_or(&x["slow_path"]),
            num_or(&x["no_socket"]),
            num_or(&x["fast_in"]),
            num_or(&x["fast_out"])
        )?;
        let f = &x["fast_path"];
        if f.is_object() {
            writeln!(
                out,
                "Fast path flows {}  installed {}  removed {}  map full {}  no route {}  adopted {}",
                num_or(&f["flows"]),
                num_or(&f["installed"]),
                num_or(&f["removed"]),
                num_or(&f["map_full"]),
                num_or(&f["no_route"]),
                num_or(&f["adopted"])
            )?;
        }
    }
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
                num_or(&r["packets_in"]),
                num_or(&r["packets_out"]),
                num_or(&r["bytes_in"]),
                num_or(&r["bytes_out"]),
                num_or(&r["conns"])
            )?;
        }
    }
    Ok(())
}

fn render_sync(v: &Value, out: &mut dyn Write) -> std::io::Result<()> {
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
    let rtt = |x: &Value| {
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
    let resync = |x: &Value| {
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

/// The `ipvsadm -L -n` forwarding method of a mode.
fn forward_method(mode: &str) -> &'static str {
    match mode {
        "nat" => "Masq",
        "dr" => "Route",
        "tun" => "Tunnel",
        "fullnat" => "FullNat",
        _ => "?",
    }
}

fn render_services(v: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "Prot LocalAddress:Port Scheduler Flags")?;
    writeln!(
        out,
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn  Health Admin     Notes"
    )?;
    for s in v.as_array().into_iter().flatten() {
        let persist = s["persistence"].as_u64().unwrap_or(0);
        let mode = str_or(&s["mode"]);
        let mut state = Vec::new();
        match s["up"].as_bool() {
            Some(true) => state.push("UP".to_string()),
            Some(false) => state.push("DOWN".to_string()),
            None => {}
        }
        if let (Some(h), Some(reals)) = (s["healthy"].as_u64(), s["reals"].as_array()) {
            state.push(format!("{h}/{} healthy", reals.len()));
        }
        if let Some(q) = s["quorum"].as_u64() {
            state.push(format!("quorum {q}"));
        }
        let check = &s["check"];
        if let Some(kind) = check["kind"].as_str() {
            state.push(format!(
                "{kind} check every {}",
                check["interval_ms"]
                    .as_f64()
                    .map_or_else(|| "?".to_string(), |ms| format!("{ms}ms"))
            ));
        }
        writeln!(
            out,
            "{:<4} {} {}{} [{mode}]  {}{}",
            str_or(&s["protocol"]).to_uppercase(),
            str_or(&s["vip"]),
            str_or(&s["scheduler"]),
            if persist > 0 {
                format!(" persistent {persist}")
            } else {
                String::new()
            },
            str_or(&s["name"]),
            if state.is_empty() {
                String::new()
            } else {
                format!(": {}", state.join(", "))
            }
        )?;
        if let Some(lips) = s["local_addresses"].as_array() {
            let lips: Vec<&str> = lips.iter().map(str_or).collect();
            let proxy = match s["proxy_protocol"].as_str() {
                Some(v) => format!("; PROXY protocol {v} to the real servers"),
                None => String::new(),
            };
            writeln!(out, "  local addresses {}{proxy}", lips.join(", "))?;
        }
        let fwd = forward_method(mode);
        let on_fail = check["on_fail"].as_str().unwrap_or("inhibit");
        for r in s["reals"].as_array().into_iter().flatten() {
            let health = match r["health"].as_str() {
                Some("up") => "up",
                Some("down") => "DOWN",
                _ => "-",
            };
            let admin = r["admin"].as_str().unwrap_or("-");
            let mut notes = Vec::new();
            if health == "DOWN" {
                let what = if on_fail == "remove" {
                    "REMOVED"
                } else {
                    "INHIBITED"
                };
                match r["health_cause"]
                    .as_str()
                    .or(r["last_check"]["detail"].as_str())
                {
                    Some(d) => notes.push(format!("{what}: {d}")),
                    None => notes.push(what.to_string()),
                }
            }
            match admin {
                "drained" => notes.push("draining: existing flows finish".to_string()),
                "disabled" => notes.push("disabled by the operator".to_string()),
                _ => {}
            }
            if !r["configured_weight"].is_null() && r["configured_weight"] != r["weight"] {
                notes.push(format!("configured weight {}", r["configured_weight"]));
            }
            let line = format!(
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10} {:<6} {:<9} {}",
                str_or(&r["address"]),
                fwd,
                num_or(&r["weight"]),
                num_or(&r["active"]),
                num_or(&r["inactive"]),
                health,
                admin,
                notes.join("; ")
            );
            writeln!(out, "{}", line.trim_end())?;
        }
        let sorry = &s["sorry_server"];
        if let Some(addr) = sorry["address"].as_str() {
            writeln!(
                out,
                "  -> {addr:<28} {fwd:<7} {:<6} {:<10} {:<10} {:<6} {:<9} {}",
                "-",
                "-",
                num_or(&sorry["counters"]["active"]),
                num_or(&sorry["counters"]["inactive"]),
                "-",
                if sorry["active"] == true {
                    "SORRY SERVER, ACTIVE: no real server is up"
                } else {
                    "sorry server, standby"
                }
            )?;
        }
    }
    Ok(())
}

/// Connections as `ipvsadm -L -n -c` lists them; the LocalIP:Port column (FULLNAT's
/// LIP:lport, the source the real server sees) only when a connection shown has one.
fn render_conns(v: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let conns = v["connections"].as_array().map_or(&[][..], Vec::as_slice);
    let local = conns.iter().any(|c| c["local"].is_string());
    // With the XDP fast path: which path each flow's packets take.
    let path = conns.iter().any(|c| c["path"].is_string());
    writeln!(
        out,
        "Pro FromIP:Port          ToIP:Port             {}DestIP:Port           State        Expires Origin{}",
        if local { "LocalIP:Port          " } else { "" },
        if path { "  Path" } else { "" }
    )?;
    for c in conns {
        let local = if local {
            format!("{:<21} ", c["local"].as_str().unwrap_or("-"))
        } else {
            String::new()
        };
        let origin = c["origin"].as_str().unwrap_or("?");
        let origin = if path {
            format!("{origin:<7} {}", c["path"].as_str().unwrap_or("-"))
        } else {
            origin.to_string()
        };
        writeln!(
            out,
            "{:<3} {:<21} {:<21} {local}{:<21} {:<12} {:>6}s {origin}",
            c["protocol"].as_str().unwrap_or("?").to_uppercase(),
            c["client"].as_str().unwrap_or("?"),
            c["vip"].as_str().unwrap_or("?"),
            c["real"].as_str().unwrap_or("?"),
            c["state"].as_str().unwrap_or("?"),
            num_or(&c["expires_in"]),
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

fn error_json(e: &ConfigError) -> Value {
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

    fn request(args: &[&str]) -> Option<Value> {
        let mut all = vec!["director"];
        all.extend_from_slice(args);
        request_for(&Cli::try_parse_from(all).expect("valid command line"))
    }

    /// The requests are the daemon's protocol: these shapes are what control.rs answers.
    #[test]
    fn each_command_sends_its_request() {
        let real = "198.18.2.11:8080";
        for (args, want) in [
            (&["status"][..], json!({"command": "status"})),
            (&["services"], json!({"command": "services"})),
            (&["stats"], json!({"command": "stats"})),
            (&["vrrp"], json!({"command": "vrrp"})),
            (&["sync"], json!({"command": "sync"})),
            (&["demote"], json!({"command": "demote"})),
            (&["promote"], json!({"command": "promote"})),
            (&["reload"], json!({"command": "reload"})),
            (
                &["events", "--limit", "5"],
                json!({"command": "events", "limit": 5}),
            ),
            (
                &["conns"],
                json!({"command": "conns", "limit": 1000, "service": null, "client": null}),
            ),
            (
                &["conns", "--service", "web", "--client", "198.18.1.7"],
                json!({"command": "conns", "limit": 1000, "service": "web", "client": "198.18.1.7"}),
            ),
            (
                &["real", "weight", "web", real, "7"],
                json!({"command": "real-weight", "service": "web", "real": real, "weight": 7}),
            ),
            (
                &["real", "enable", "web", real],
                json!({"command": "real-admin", "service": "web", "real": real, "action": "enable"}),
            ),
            (
                &["real", "disable", "web", real],
                json!({"command": "real-admin", "service": "web", "real": real, "action": "disable"}),
            ),
            (
                &["real", "drain", "web", real],
                json!({"command": "real-admin", "service": "web", "real": real, "action": "drain"}),
            ),
        ] {
            assert_eq!(request(args), Some(want), "{args:?}");
        }
        assert_eq!(request(&["check-config"]), None);
        assert_eq!(request(&["completions", "bash"]), None);
        assert_eq!(request(&["slots"]), None);
        assert_eq!(request(&["boot-check"]), None);
        assert_eq!(request(&["upgrade", "/tmp/x.img"]), None);
    }

    #[test]
    fn every_daemon_command_has_a_renderer() {
        for args in [
            &["status"][..],
            &["services"],
            &["stats"],
            &["vrrp"],
            &["sync"],
            &["demote"],
            &["promote"],
            &["reload"],
            &["events"],
            &["conns"],
            &["real", "weight", "web", "198.18.2.11:8080", "7"],
            &["real", "drain", "web", "198.18.2.11:8080"],
        ] {
            let cli = Cli::try_parse_from(std::iter::once("director").chain(args.iter().copied()))
                .expect("valid command line");
            let (_, view) = request_of(&cli.command).expect("a daemon command");
            assert!(VIEWS.contains(&view), "{view}");
        }
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(duration_words(0), "0s");
        assert_eq!(duration_words(59), "59s");
        assert_eq!(duration_words(61), "1m 1s");
        assert_eq!(duration_words(3 * 3600 + 5), "3h 0m 5s");
        assert_eq!(duration_words(86_400 * 2 + 3661), "2d 1h 1m");
    }

    #[test]
    fn slot_commands_default_to_the_appliance() {
        for args in [&["slots"][..], &["boot-check"], &["upgrade", "x.img"]] {
            let cli = Cli::try_parse_from(std::iter::once("director").chain(args.iter().copied()))
                .expect("valid command line");
            let paths = match &cli.command {
                Command::Slots { paths }
                | Command::BootCheck { paths, .. }
                | Command::Upgrade { paths, .. } => paths.paths(),
                other => panic!("parsed as {other:?}"),
            };
            assert_eq!(paths, upgrade::Paths::default(), "{args:?}");
        }
        let cli = Cli::try_parse_from(["director", "upgrade", "x.img"]).expect("valid");
        assert!(matches!(
            cli.command,
            Command::Upgrade {
                tries: 3,
                no_reboot: false,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["director", "upgrade", "x.img", "--tries", "0"]).is_err());
        let cli = Cli::try_parse_from(["director", "boot-check"]).expect("valid");
        assert!(matches!(
            cli.command,
            Command::BootCheck { timeout: 120, .. }
        ));
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
