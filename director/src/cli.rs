//! The `director` command line: argument parsing (clap), the requests each command sends to
//! the daemon, and the human renderers of the daemon's replies.
//!
//! Exit codes, as CONFIG.md fixes them: 0 ok, 1 the daemon reported an error (or
//! `check-config` found errors, or this user may not use the control socket), 2 usage
//! error (clap's own), 3 no daemon.
//!
//! Every daemon command is one request `{"command": NAME, ...}` on the control socket; with
//! `--json` the reply's `data` is printed as it came, otherwise [`render`] turns it into the
//! tables operators know from `ipvsadm -L -n` and `keepalived`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{json, Value};

use crate::api::{self, Request};
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

Exit codes: 0 ok, 1 the daemon reported an error (or permission denied), 2 usage error, 3 no daemon.";

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
        #[arg(long, default_value_t = api::CONNS_LIMIT)]
        limit: usize,
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
        #[arg(long, default_value_t = api::EVENTS_LIMIT)]
        limit: usize,
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
        #[arg(value_parser = clap::value_parser!(u16))]
        weight: u16,
    },
}

/// The request a daemon command sends (its command name is also its view's); `None` for
/// commands that need no daemon.
fn request_of(command: &Command) -> Option<Request> {
    let admin = |service: &str, real: &std::net::SocketAddrV4, action| Request::RealAdmin {
        service: service.to_string(),
        real: (*real).into(),
        action,
    };
    Some(match command {
        Command::CheckConfig { .. }
        | Command::Completions { .. }
        | Command::Upgrade { .. }
        | Command::BootCheck { .. }
        | Command::Slots { .. } => return None,
        Command::Status => Request::Status,
        Command::Stats => Request::Stats,
        Command::Services => Request::Services,
        Command::Conns {
            service,
            client,
            limit,
        } => Request::Conns {
            limit: *limit,
            service: service.clone(),
            client: client.map(std::net::IpAddr::V4),
        },
        Command::Real(RealCommand::Enable { service, real }) => {
            admin(service, real, api::AdminAction::Enable)
        }
        Command::Real(RealCommand::Disable { service, real }) => {
            admin(service, real, api::AdminAction::Disable)
        }
        Command::Real(RealCommand::Drain { service, real }) => {
            admin(service, real, api::AdminAction::Drain)
        }
        Command::Real(RealCommand::Weight {
            service,
            real,
            weight,
        }) => Request::RealWeight {
            service: service.clone(),
            real: (*real).into(),
            weight: *weight,
        },
        Command::Vrrp => Request::Vrrp,
        Command::Sync => Request::Sync,
        Command::Demote => Request::Demote,
        Command::Promote => Request::Promote,
        Command::Events { limit } => Request::Events { limit: *limit },
        Command::Reload => Request::Reload,
    })
}

/// The request `director ARGS...` would send to the daemon (for tests and `--help` texts);
/// `None` for commands that need no daemon.
pub fn request_for(cli: &Cli) -> Option<Request> {
    request_of(&cli.command)
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
            let mut ask = || {
                let asked = |req: &Request| {
                    control::request(&cli.socket, req).map_err(|e| match e {
                        control::ClientError::NoDaemon(path, e) => {
                            format!("no daemon answers on {}: {e}", path.display())
                        }
                        e => format!("the daemon's {} failed: {e}", req.command()),
                    })
                };
                let status: api::StatusView = serde_json::from_value(asked(&Request::Status)?)
                    .map_err(|e| format!("the daemon's status does not read as its view: {e}"))?;
                let vrrp: api::VrrpView = serde_json::from_value(asked(&Request::Vrrp)?)
                    .map_err(|e| format!("the daemon's vrrp does not read as its view: {e}"))?;
                Ok(peer_signs(&status, &vrrp))
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
            let req = request_of(command).expect("every other command asks the daemon");
            daemon_view(cli, &req, out, err)
        }
    }
}

/// What `boot-check` looks for in the daemon's answers.
fn peer_signs(status: &api::StatusView, vrrp: &api::VrrpView) -> upgrade::PeerSigns {
    upgrade::PeerSigns {
        standalone: vrrp.standalone,
        instances: vrrp
            .instances
            .iter()
            .map(|i| upgrade::InstanceSigns {
                name: i.name.clone(),
                state: i.state.clone(),
                master: i.master.map(|m| m.to_string()),
                adverts_rx: i.counters.adverts_rx,
            })
            .collect(),
        sync_peer: status
            .sync
            .session
            .as_ref()
            .filter(|_| status.sync.enabled)
            .map(|s| s.peer.clone()),
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
    req: &Request,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    let view = req.command();
    match control::request(&cli.socket, req) {
        Ok(data) if cli.json => {
            writeln!(out, "{data}")?;
            Ok(0)
        }
        Ok(data) => {
            render(view, &data, out)?;
            Ok(0)
        }
        Err(ClientError::NoDaemon(path, e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // A daemon may well be there: it is this user who may not ask it.
            writeln!(
                err,
                "director: permission denied on {}: the control socket is root's alone (mode 0600); run director as root, e.g. sudo director {}",
                path.display(),
                req.command()
            )?;
            Ok(EXIT_ERROR)
        }
        Err(ClientError::NoDaemon(path, e)) => {
            writeln!(
                err,
                "director: no daemon answers on {}: {e} (is directord running? is --socket its [control] socket?)",
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
pub const VIEWS: &[&str] = Request::COMMANDS;

/// Render the daemon's reply `data` to `command` (a name of [`VIEWS`]) as the human table.
/// `data` is read into the command's view first: an answer that lacks a key the view needs
/// is an error naming it, never a blank in the table.
pub fn render(command: &str, data: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    fn view<T: serde::de::DeserializeOwned>(command: &str, data: &Value) -> std::io::Result<T> {
        serde_json::from_value(data.clone()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the daemon's answer to {command} does not read as its view: {e}"),
            )
        })
    }
    match command {
        "status" => render_status(&view(command, data)?, out),
        "services" => render_services(&view::<Vec<api::ServiceView>>(command, data)?, out),
        "conns" => render_conns(&view(command, data)?, out),
        "stats" => render_stats(&view(command, data)?, out),
        "vrrp" | "demote" | "promote" => render_vrrp(&view(command, data)?, out),
        "sync" => render_sync(&view(command, data)?, out),
        "events" => render_events(&view(command, data)?, out),
        "real-weight" | "real-admin" => render_ack(&view(command, data)?, out),
        "reload" => render_reload(&view(command, data)?, out),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("no renderer for {other:?}"),
        )),
    }
}

fn render_vrrp(v: &api::VrrpView, out: &mut dyn Write) -> std::io::Result<()> {
    if v.standalone {
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
    for i in &v.instances {
        let master = match (i.master, i.master_priority) {
            (Some(m), _) if m == i.primary => format!("{m} (this node)"),
            (Some(m), Some(p)) => format!("{m} ({p})"),
            _ => "-".to_owned(),
        };
        let last = match &i.last_transition {
            None => "-".to_owned(),
            Some(t) => format!("{} -> {}: {}", t.from, t.to, t.cause),
        };
        let mut flags = Vec::new();
        if i.demoted {
            flags.push("demoted".to_owned());
        }
        if i.promoted {
            flags.push("promoted".to_owned());
        }
        for t in &i.tracks_down {
            flags.push(format!("down: {t}"));
        }
        writeln!(
            out,
            "{:<12} {:<10} {:>4} {:<7} {:>9} {:<24} {:>6}ms  {}{}",
            i.name,
            i.interface,
            i.vrid,
            i.state,
            format!("{}/{}", i.priority, i.configured_priority),
            master,
            i.master_adver_interval_ms,
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

fn render_events(v: &api::EventsView, out: &mut dyn Write) -> std::io::Result<()> {
    if v.events.is_empty() {
        writeln!(out, "no events")?;
    }
    let width = v.events.iter().map(|e| e.subject.len()).max().unwrap_or(0);
    for e in &v.events {
        writeln!(
            out,
            "{:>6} {} {:<8} {:<width$} {}",
            e.seq,
            utc(e.time),
            e.kind,
            e.subject,
            e.message
        )?;
    }
    if v.dropped > 0 {
        writeln!(out, "({} older events dropped)", v.dropped)?;
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

/// `real weight|enable|disable|drain`: the real server as it is now.
fn render_ack(v: &api::RealAck, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {}: {}, weight {}",
        v.service,
        v.real,
        v.admin.as_str(),
        v.weight
    )
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
fn rate(r: f64) -> String {
    if r < 10.0 && r.fract() != 0.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

/// `ext: XDP native, 2 queues; int: AF_PACKET` — how each interface receives.
fn receive_words(paths: &[api::ReceivePath]) -> Option<String> {
    if paths.is_empty() {
        return None;
    }
    Some(
        paths
            .iter()
            .map(|p| match p {
                api::ReceivePath::Xdp {
                    interface,
                    xdp_mode,
                    queues,
                    ..
                } => format!(
                    "{interface}: XDP {xdp_mode}, {queues} queue{}",
                    if *queues == 1 { "" } else { "s" }
                ),
                api::ReceivePath::AfPacket { interface } => format!("{interface}: AF_PACKET"),
            })
            .collect::<Vec<_>>()
            .join("; "),
    )
}

fn render_status(v: &api::StatusView, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "node      {} (up {})",
        v.node,
        duration_words(v.uptime_s)
    )?;
    let c = &v.config;
    writeln!(
        out,
        "config    {}, generation {}, loaded {}",
        c.path,
        c.generation,
        utc(c.loaded_at)
    )?;

    let instances = &v.vrrp;
    if v.standalone || instances.is_empty() {
        writeln!(
            out,
            "role      standalone (no VRRP: the VIPs are put on the interfaces by hand)"
        )?;
    } else {
        let states: Vec<&str> = instances.iter().map(|i| i.state.as_str()).collect();
        let role = if states.iter().all(|s| *s == states[0]) {
            states[0].to_string()
        } else {
            format!("MIXED ({})", states.join("/"))
        };
        writeln!(out, "role      {role}")?;
        let width = instances.iter().map(|i| i.name.len()).max().unwrap_or(0);
        for (n, i) in instances.iter().enumerate() {
            let master = match i.master {
                _ if i.state == "MASTER" => "this node".to_string(),
                Some(m) => m.to_string(),
                None => "none heard".to_string(),
            };
            writeln!(
                out,
                "{:<10}{:<width$}  {:<7} {:>3}/{:<3}  master {master}",
                if n == 0 { "vrrp" } else { "" },
                i.name,
                i.state,
                i.priority,
                i.configured_priority,
            )?;
        }
    }

    let services = &v.services;
    let up = services.iter().filter(|s| s.up).count();
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
    let width = services.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in services {
        let mut notes = vec![format!("{}/{} healthy", s.healthy, s.total)];
        if let Some(q) = s.quorum {
            notes.push(format!("quorum {q}"));
        }
        if s.sorry_active {
            notes.push("SORRY SERVER active".to_string());
        }
        writeln!(
            out,
            "          {:<width$}  {:<4}  {:<3} {:<21} {:<7}  {}",
            s.name,
            if s.up { "up" } else { "DOWN" },
            s.protocol.to_uppercase(),
            s.vip.to_string(),
            s.mode,
            notes.join(", ")
        )?;
    }

    match &v.sync.session {
        Some(y) if v.sync.enabled => {
            let lag = y
                .lag_ms
                .map_or_else(|| "-".to_string(), |ms| format!("{ms:.2} ms"));
            writeln!(
                out,
                "sync      peer {}, lag {lag}, {} replicas, resync {}",
                y.peer,
                y.replicas,
                if y.resync_complete {
                    "complete"
                } else {
                    "NOT complete"
                }
            )?;
        }
        _ => writeln!(out, "sync      off (no [sync] in the config)")?,
    }

    let d = &v.datapath;
    writeln!(
        out,
        "datapath  {}, {}; rx {} pkt/s, forwarded {} pkt/s, {} new conn/s, {} drops/s",
        plural(d.workers, "worker"),
        plural(d.connections, "connection"),
        rate(d.rx_pps),
        rate(d.forwarded_pps),
        rate(d.new_conns_per_s),
        rate(d.drops_per_s),
    )?;
    if let Some(words) = receive_words(&d.receive) {
        writeln!(out, "receive   {words}")?;
    }
    Ok(())
}

fn render_reload(v: &api::ReloadView, out: &mut dyn Write) -> std::io::Result<()> {
    if v.changes.is_empty() {
        writeln!(out, "config generation {}: no changes", v.generation)?;
    } else {
        writeln!(
            out,
            "config generation {}: {}",
            v.generation,
            plural(v.changes.len(), "change")
        )?;
        for c in &v.changes {
            writeln!(out, "  {c}")?;
        }
    }
    for w in &v.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}

fn render_stats(v: &api::StatsView, out: &mut dyn Write) -> std::io::Result<()> {
    let d = &v.datapath;
    writeln!(
        out,
        "Node {}  workers {}  interfaces {}",
        v.node,
        d.workers,
        if d.interfaces.is_empty() {
            "-".to_string()
        } else {
            d.interfaces.join(",")
        }
    )?;
    writeln!(
        out,
        "Frames rx {}  passed {}  forwarded in {}  out {}  icmp {}  new conns {}  tx errors {}  tx waits {}  ring drops {}",
        d.rx, d.passed, d.forwarded_in, d.forwarded_out, d.icmp_forwarded, d.new_conns, d.tx_errors, d.tx_waits, d.ring_drops
    )?;
    // Frames the datapath rebuilt (TUN copies and segments) and ICMP errors it originated.
    writeln!(
        out,
        "Rebuilt and sent {}  icmp sent {}  icmp rate-limited {}  icmp unroutable {}",
        d.emitted, d.icmp_sent, d.icmp_limited, d.icmp_unroutable
    )?;
    // The XDP program's share (already in the totals above) and the fast path's flows.
    if let Some(x) = &d.xdp {
        writeln!(
            out,
            "XDP passed {}  to workers {}  no socket {}  fast path in {}  out {}",
            x.passed, x.slow_path, x.no_socket, x.fast_in, x.fast_out
        )?;
        if let Some(f) = &x.fast_path {
            writeln!(
                out,
                "Fast path flows {}  installed {}  removed {}  map full {}  no route {}  adopted {}",
                f.flows, f.installed, f.removed, f.map_full, f.no_route, f.adopted
            )?;
        }
    }
    let nonzero: Vec<String> = d
        .drops
        .iter()
        .filter(|(_, n)| **n != 0)
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
    let c = &v.connections;
    writeln!(
        out,
        "Connections {} of {}  inserted {}  deleted {}  expired {}  refused (full) {}",
        c.count, c.capacity, c.inserts, c.deletes, c.expired, c.full
    )?;
    writeln!(
        out,
        "{:<28} {:>10} {:>10} {:>12} {:>12} {:>8}",
        "Service / RemoteAddress:Port", "InPkts", "OutPkts", "InBytes", "OutBytes", "Conns"
    )?;
    for s in &v.services {
        writeln!(out, "{} {} ({})", s.protocol.to_uppercase(), s.vip, s.name)?;
        for r in &s.reals {
            let k = &r.counters;
            writeln!(
                out,
                "  -> {:<23} {:>10} {:>10} {:>12} {:>12} {:>8}",
                r.address.to_string(),
                k.packets_in,
                k.packets_out,
                k.bytes_in,
                k.bytes_out,
                k.conns
            )?;
        }
    }
    Ok(())
}

fn render_sync(v: &api::SyncView, out: &mut dyn Write) -> std::io::Result<()> {
    if !v.enabled {
        return writeln!(out, "connection sync is off (no [sync] in the config)");
    }
    let Some(v) = v.session.as_ref().filter(|_| !v.starting) else {
        return writeln!(out, "connection sync is starting");
    };
    writeln!(
        out,
        "node {} ({}) epoch {} on {} {} {}",
        v.node, v.node_id, v.epoch, v.interface, v.mode, v.destination,
    )?;
    match &v.peer.heard {
        None => writeln!(out, "peer      never heard")?,
        Some(p) => writeln!(
            out,
            "peer      {} node {} epoch {}, heard {:.0} ms ago, {} messages behind{}",
            v.peer.state,
            p.node_id,
            p.epoch,
            p.last_heard_ms,
            p.behind,
            if p.resyncing {
                ", waiting for our table"
            } else {
                ""
            },
        )?,
    }
    let c = &v.connections;
    writeln!(
        out,
        "table     {} connections: {} local, {} replicas",
        c.total, c.local, c.replicas
    )?;
    let s = &v.stream;
    let rtt = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |ms| format!("{ms:.2} ms"));
    writeln!(
        out,
        "stream    seq {} acked {} (unacked {}); lag (sent → applied and acknowledged) last {}, max {}",
        s.seq,
        s.acked,
        s.unacked,
        rtt(s.lag_ms),
        rtt(Some(s.lag_max_ms)),
    )?;
    let r = &v.resync;
    let resync = |x: &Option<api::ResyncRun>| match x {
        None => "none".to_string(),
        Some(x) => format!("{} entries in {:.1} ms", x.entries, x.ms),
    };
    writeln!(
        out,
        "resync    {}; last received: {}; last sent: {}{}",
        if r.complete {
            "complete"
        } else {
            "NOT complete"
        },
        resync(&r.received),
        resync(&r.sent),
        if r.sending.is_none() {
            String::new()
        } else {
            format!("; sending now: {}", resync(&r.sending))
        },
    )?;
    let k = &v.counters;
    writeln!(
        out,
        "repairs   {} gaps, {} repaired, {} NACKs sent, {} received, {} retransmitted",
        k.gaps, k.repaired, k.nacks_tx, k.nacks_rx, k.retransmits
    )?;
    writeln!(
        out,
        "traffic   tx {} datagrams ({} entries, {} B), rx {} datagrams ({} B), {} applied",
        k.tx_datagrams, k.tx_entries, k.tx_bytes, k.rx_datagrams, k.rx_bytes, k.applied
    )?;
    let f = &v.refused;
    writeln!(
        out,
        "refused   {} total: {} auth failures, {} replayed, {} truncated, {} malformed, {} bad magic, {} other version, {} unknown node",
        f.total,
        f.auth,
        f.replayed,
        f.truncated,
        f.malformed,
        f.bad_magic,
        f.version,
        f.unknown_node
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

fn render_services(v: &[api::ServiceView], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "Prot LocalAddress:Port Scheduler Flags")?;
    writeln!(
        out,
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn  Health Admin     Notes"
    )?;
    for s in v {
        let persist = s.persistence;
        let mode = s.mode.as_str();
        let mut state = vec![
            if s.up { "UP" } else { "DOWN" }.to_string(),
            format!("{}/{} healthy", s.healthy, s.reals.len()),
        ];
        if let Some(q) = s.quorum {
            state.push(format!("quorum {q}"));
        }
        if let Some(check) = &s.check {
            state.push(format!(
                "{} check every {}ms",
                check.kind, check.interval_ms
            ));
        }
        writeln!(
            out,
            "{:<4} {} {}{} [{mode}]  {}: {}",
            s.protocol.to_uppercase(),
            s.vip,
            s.scheduler,
            if persist > 0 {
                format!(" persistent {persist}")
            } else {
                String::new()
            },
            s.name,
            state.join(", ")
        )?;
        if let Some(lips) = &s.local_addresses {
            let lips: Vec<String> = lips.iter().map(ToString::to_string).collect();
            let proxy = match s.proxy_protocol.as_ref().and_then(Option::as_ref) {
                Some(v) => format!("; PROXY protocol {v} to the real servers"),
                None => String::new(),
            };
            writeln!(out, "  local addresses {}{proxy}", lips.join(", "))?;
        }
        let fwd = forward_method(mode);
        let on_fail = s.check.as_ref().map_or("inhibit", |c| c.on_fail.as_str());
        for r in &s.reals {
            let health = match r.health {
                api::HealthState::Up => "up",
                api::HealthState::Down => "DOWN",
                api::HealthState::Unchecked => "-",
            };
            let admin = r.admin.as_str();
            let mut notes = Vec::new();
            if r.health == api::HealthState::Down {
                let what = if on_fail == "remove" {
                    "REMOVED"
                } else {
                    "INHIBITED"
                };
                match r
                    .health_cause
                    .as_deref()
                    .or(r.last_check.as_ref().map(|l| l.detail.as_str()))
                {
                    Some(d) => notes.push(format!("{what}: {d}")),
                    None => notes.push(what.to_string()),
                }
            }
            match r.admin {
                api::AdminState::Drained => {
                    notes.push("draining: existing flows finish".to_string())
                }
                api::AdminState::Disabled => notes.push("disabled by the operator".to_string()),
                api::AdminState::Enabled => {}
            }
            if r.configured_weight != r.weight {
                notes.push(format!("configured weight {}", r.configured_weight));
            }
            let line = format!(
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10} {:<6} {:<9} {}",
                r.address.to_string(),
                fwd,
                r.weight,
                r.counters.active,
                r.counters.inactive,
                health,
                admin,
                notes.join("; ")
            );
            writeln!(out, "{}", line.trim_end())?;
        }
        if let Some(sorry) = &s.sorry_server {
            writeln!(
                out,
                "  -> {:<28} {fwd:<7} {:<6} {:<10} {:<10} {:<6} {:<9} {}",
                sorry.address.to_string(),
                "-",
                sorry.counters.active,
                sorry.counters.inactive,
                "-",
                "-",
                if sorry.active {
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
fn render_conns(v: &api::ConnsView, out: &mut dyn Write) -> std::io::Result<()> {
    let conns = &v.connections;
    let local = conns.iter().any(|c| c.local.is_some());
    // With the XDP fast path: which path each flow's packets take.
    let path = conns.iter().any(|c| c.path.is_some());
    writeln!(
        out,
        "Pro FromIP:Port          ToIP:Port             {}DestIP:Port           State        Expires Origin{}",
        if local { "LocalIP:Port          " } else { "" },
        if path { "  Path" } else { "" }
    )?;
    for c in conns {
        let local = if local {
            format!(
                "{:<21} ",
                c.local.map_or_else(|| "-".to_string(), |l| l.to_string())
            )
        } else {
            String::new()
        };
        let origin = if path {
            format!("{:<7} {}", c.origin, c.path.as_deref().unwrap_or("-"))
        } else {
            c.origin.clone()
        };
        writeln!(
            out,
            "{:<3} {:<21} {:<21} {local}{:<21} {:<12} {:>6}s {origin}",
            c.protocol.to_uppercase(),
            c.client.to_string(),
            c.vip.to_string(),
            c.real.to_string(),
            c.state,
            c.expires_in,
        )?;
    }
    if v.shown != v.total {
        writeln!(out, "({} of {} connections shown)", v.shown, v.total)?;
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
            .map(|r| serde_json::to_value(r).expect("a request encodes"))
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
            (&["conns"], json!({"command": "conns", "limit": 1000})),
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
            let req = request_of(&cli.command).expect("a daemon command");
            assert!(VIEWS.contains(&req.command()), "{}", req.command());
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
