//! The built `director` binary: exit codes and output of `check-config`.

use std::process::{Command, Output};

fn director(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_director"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the director binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

fn check_config_accepts_a_valid_file() {
    let out = director(&["check-config", "../configs/nat.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "../configs/nat.toml: ok (2 services, 5 real servers)\n"
    );
    assert_eq!(text(&out.stderr), "");
}

fn check_config_prints_every_error_and_exits_1() {
    let file = "tests/config_errors/multiple_errors.toml";
    let out = director(&["check-config", file]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    let expected = std::fs::read_to_string("tests/config_errors/multiple_errors.expected")
        .expect("the golden file");
    assert_eq!(text(&out.stderr), expected);
    assert!(expected.lines().count() > 3);
}

fn check_config_json() {
    let out = director(&["--json", "check-config", "../configs/nat.toml"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["ok"], true);
    assert_eq!(v["services"], 2);
    assert_eq!(v["real_servers"], 5);

    let out = director(&[
        "check-config",
        "--json",
        "tests/config_errors/duplicate_vip.toml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["ok"], false);
    let e = &v["errors"][0];
    assert_eq!(e["file"], "tests/config_errors/duplicate_vip.toml");
    assert!(e["line"].as_u64().unwrap() > 0 && e["column"].as_u64().unwrap() > 0);
    assert!(e["message"].as_str().unwrap().contains("already used"));
}

fn unreadable_file_exits_1() {
    let out = director(&["check-config", "tests/config_errors/no-such-file.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("tests/config_errors/no-such-file.toml: cannot read"));
}

fn warnings_do_not_fail_the_check() {
    let dir = std::env::temp_dir().join(format!("director-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("empty-service.toml");
    std::fs::write(
        &file,
        "[node]\nname = \"lb-a\"\n\n[[service]]\nname = \"web\"\nvip = \"198.18.1.100:80\"\nmode = \"nat\"\n",
    )
    .expect("write temp config");
    let out = director(&["check-config", file.to_str().expect("UTF-8 temp path")]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).ends_with(": ok (1 service, 0 real servers)\n"));
    assert!(text(&out.stderr).contains(":5:8: warning: service \"web\" has no real servers"));
}

fn usage_errors_exit_2() {
    assert_eq!(director(&["check-config", "a", "b"]).status.code(), Some(2));
    assert_eq!(director(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(director(&[]).status.code(), Some(2));
}

// --- usage, help and completions: no daemon needed ---

fn status(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn bad_arguments_exit_2() {
    for args in [
        &["real", "weight", "web", "198.18.2.11:8080", "70000"][..],
        &["real", "drain", "web", "198.18.2.11"],
        &["real", "enable", "web"],
        &["real", "pause", "web", "198.18.2.11:8080"],
        &["conns", "--client", "not-an-address"],
        &["completions", "tcsh"],
        &["status", "extra"],
    ] {
        let out = director(args);
        assert_eq!(status(&out), 2, "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).starts_with("error: "), "{args:?}");
    }
}

/// Every command and subcommand, as `director` arguments (`["real", "drain"]`, ...).
fn all_commands() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands() {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            out.push(p.clone());
            walk(sub, p, out);
        }
    }
    let mut out = Vec::new();
    walk(
        &<director::cli::Cli as clap::CommandFactory>::command(),
        Vec::new(),
        &mut out,
    );
    out
}

fn every_command_has_help_with_examples() {
    let commands = all_commands();
    for name in [
        "status",
        "services",
        "conns",
        "vrrp",
        "sync",
        "stats",
        "events",
        "reload",
        "demote",
        "promote",
        "check-config",
        "completions",
        "real",
    ] {
        assert!(
            commands.iter().any(|c| c == &[name]),
            "no command {name}: {commands:?}"
        );
    }
    for leaf in ["enable", "disable", "drain", "weight"] {
        assert!(commands.iter().any(|c| c == &["real", leaf]));
    }
    let top = director(&["--help"]);
    assert_eq!(status(&top), 0);
    assert!(text(&top.stdout).contains("Examples:"));
    assert!(text(&top.stdout).contains("3 no daemon"));
    for c in commands {
        if c.first().is_some_and(|h| h == "help") || c.last().is_some_and(|h| h == "help") {
            continue; // clap's own
        }
        let mut args: Vec<&str> = c.iter().map(String::as_str).collect();
        args.push("--help");
        let out = director(&args);
        assert_eq!(status(&out), 0, "{args:?}");
        let help = text(&out.stdout);
        let examples = help
            .split_once("Examples:\n")
            .unwrap_or_else(|| panic!("{args:?} has no Examples section:\n{help}"))
            .1;
        assert!(
            examples.contains(&format!("director {}", c.join(" "))),
            "{args:?}: the examples do not show the command:\n{help}"
        );
    }
}

fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = director(&["completions", shell]);
        assert_eq!(status(&out), 0, "{shell}");
        let script = text(&out.stdout);
        for word in ["check-config", "services", "reload", "drain", "socket"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    // The bash script at least parses.
    let script = director(&["completions", "bash"]).stdout;
    let dir = std::env::temp_dir().join(format!("director-compl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("director.bash");
    std::fs::write(&file, script).expect("write the script");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("run bash -n");
    std::fs::remove_dir_all(&dir).ok();
    assert!(check.status.success(), "{}", text(&check.stderr));
}

// --- talking to the daemon ---

/// Every command that asks the daemon, with valid arguments.
const DAEMON_COMMANDS: &[&[&str]] = &[
    &["status"],
    &["services"],
    &["conns", "--service", "web"],
    &["stats"],
    &["vrrp"],
    &["sync"],
    &["events"],
    &["demote"],
    &["promote"],
    &["reload"],
    &["real", "enable", "web", "198.18.2.11:8080"],
    &["real", "disable", "web", "198.18.2.11:8080"],
    &["real", "drain", "web", "198.18.2.11:8080"],
    &["real", "weight", "web", "198.18.2.11:8080", "3"],
];

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("director-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn no_daemon_exits_3() {
    let dir = temp_dir("nodaemon");
    let missing = dir.join("no-such.sock");
    // A socket file nobody listens on, as a killed daemon leaves behind.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind a socket"));
    for sock in [&missing, &stale] {
        for cmd in DAEMON_COMMANDS {
            let mut args = vec!["--socket", sock.to_str().expect("UTF-8 temp path")];
            args.extend_from_slice(cmd);
            for json in [false, true] {
                let mut args = args.clone();
                if json {
                    args.push("--json");
                }
                let out = director(&args);
                assert_eq!(status(&out), 3, "{args:?}: {}", text(&out.stderr));
                assert_eq!(text(&out.stdout), "", "{args:?}");
                assert!(
                    text(&out.stderr).starts_with(&format!(
                        "director: no daemon answers on {}: ",
                        sock.display()
                    )),
                    "{args:?}: {}",
                    text(&out.stderr)
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A real `directord` in a network namespace of its own (two veth ends, lab addresses), its
/// control socket in a temp dir that the CLI reaches from here. Killed when dropped; the
/// namespace goes with its last process.
struct Daemon {
    child: std::process::Child,
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
    /// Where the daemon's sd_notify messages arrive (`NOTIFY_SOCKET`).
    notify: std::os::unix::net::UnixDatagram,
}

impl Daemon {
    /// Starts `directord` (the harness runs this only as root).
    fn start(tag: &str) -> Daemon {
        let dir = temp_dir(tag);
        let socket = dir.join("director.sock");
        let config = dir.join("director.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nname = \"lb-cli\"\n\n\
                 [[service]]\nname = \"web\"\nvip = \"198.18.1.100:80\"\nmode = \"nat\"\n\n\
                 [[service.real]]\naddress = \"198.18.2.11:8080\"\n\n\
                 [[service.real]]\naddress = \"198.18.2.12:8080\"\nweight = 2\n\n\
                 [control]\nsocket = \"{}\"\nmetrics = \"127.0.0.1:9586\"\n\n\
                 [datapath]\nworkers = 1\ninterfaces = [\"d0\", \"d1\"]\n",
                socket.display()
            ),
        )
        .expect("write the config");
        let log = std::fs::File::create(dir.join("directord.log")).expect("log file");
        let script = format!(
            "set -e; ip link set lo up; ip link add d0 type veth peer name d1; \
             ip addr add 198.18.1.2/24 dev d0; ip addr add 198.18.2.1/24 dev d1; \
             ip link set d0 up; ip link set d1 up; exec {} --config {}",
            env!("CARGO_BIN_EXE_directord"),
            config.display()
        );
        let notify_path = dir.join("notify.sock");
        let notify =
            std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        notify
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let child = Command::new("unshare")
            .args(["--net", "--", "sh", "-c", &script])
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "400000")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("run unshare");
        let mut d = Daemon {
            child,
            dir,
            socket,
            notify,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(exit) = d.child.try_wait().expect("wait for the daemon") {
                panic!("directord exited ({exit}) before answering:\n{}", d.log());
            }
            if status(&d.cli(&["stats"])) == 0 {
                return d;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "directord did not answer within 30 s:\n{}",
                d.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["--socket", self.socket.to_str().expect("UTF-8 temp path")];
        all.extend_from_slice(args);
        director(&all)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("directord.log")).unwrap_or_default()
    }

    /// The next sd_notify message (10 s at most).
    fn notified(&self) -> String {
        let mut buf = [0u8; 4096];
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                // A signal to this process (another test's child ending) is not the end.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("a notify message: {e}"),
            }
        }
    }

    /// Notify messages until one contains `want`; all of them.
    fn notified_until(&self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let m = self.notified();
            let done = m.contains(want);
            seen.push(m);
            if done || seen.len() > 200 {
                return seen;
            }
        }
    }

    /// Kill it with SIGKILL: the socket file stays, with nobody behind it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Clients that connect and say nothing hold only their own connection: `director status`
/// is answered while they are still connected (the server answered one client at a time
/// before, so it would have waited out each one's 5 s deadline first). A user who may not
/// open the control socket is told so, with exit 1, not "no daemon".
fn idle_clients_do_not_hold_the_control_socket() {
    let d = Daemon::start("idle");
    let idle: Vec<std::os::unix::net::UnixStream> = (0..3)
        .map(|_| std::os::unix::net::UnixStream::connect(&d.socket).expect("connect"))
        .collect();
    let out = d.cli(&["status"]);
    assert_eq!(status(&out), 0, "{}", text(&out.stderr));
    // The idle clients are still connected: the server neither answered nor closed them.
    for c in &idle {
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let r = std::io::Read::read(&mut &*c, &mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "an idle client was answered or closed before status: {r:?}"
        );
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_director"))
        .args(["--socket", d.socket.to_str().unwrap(), "status"])
        .output()
        .expect("run setpriv");
    let err = text(&out.stderr);
    assert_eq!(status(&out), 1, "{err}");
    assert!(
        err.contains("permission denied on") && err.contains("run director as root"),
        "{err}"
    );
}

fn exit_codes_against_a_running_daemon() {
    let mut d = Daemon::start("daemon");
    // 0: views render, as tables and as JSON.
    let out = d.cli(&["services"]);
    assert_eq!(status(&out), 0, "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("Prot LocalAddress:Port Scheduler Flags\n"));
    assert!(
        table.contains("TCP  198.18.1.100:80 wlc [nat]  web"),
        "{table}"
    );
    assert!(
        table.contains("  -> 198.18.2.12:8080             Masq    2 "),
        "{table}"
    );
    let out = d.cli(&["--json", "services"]);
    assert_eq!(status(&out), 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v[0]["name"], "web");
    for args in [
        &["stats"][..],
        &["vrrp"],
        &["sync"],
        &["events"],
        &["conns"],
    ] {
        let out = d.cli(args);
        assert_eq!(status(&out), 0, "{args:?}: {}", text(&out.stderr));
        assert!(!out.stdout.is_empty(), "{args:?}");
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
    let out = d.cli(&["vrrp"]);
    assert!(text(&out.stdout).starts_with("VRRP is not configured"));

    // A change, and its effect.
    let out = d.cli(&["real", "weight", "web", "198.18.2.11:8080", "3"]);
    assert_eq!(status(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "web 198.18.2.11:8080: enabled, weight 3\n"
    );
    let out = d.cli(&["--json", "services"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v[0]["reals"][0]["weight"], 3);

    // 1: the daemon refuses.
    let out = d.cli(&["real", "weight", "nosuch", "198.18.2.11:8080", "1"]);
    assert_eq!(status(&out), 1);
    assert_eq!(text(&out.stderr), "director: no service named \"nosuch\"\n");
    assert_eq!(text(&out.stdout), "");
    let out = d.cli(&["--json", "demote"]);
    assert_eq!(status(&out), 1);
    assert!(text(&out.stderr).contains("VRRP is not configured"));

    // 3: the daemon is gone, its socket file left behind.
    d.kill();
    assert!(d.socket.exists());
    let out = d.cli(&["services"]);
    assert_eq!(status(&out), 3, "{}", text(&out.stderr));
}

fn the_daemon_speaks_sd_notify() {
    let mut d = Daemon::start("notify");
    let seen = d.notified_until("READY=1");
    assert!(
        seen.last().is_some_and(|m| m.contains("READY=1")),
        "{seen:?}"
    );
    // WATCHDOG_USEC = 400 ms: a ping every 200 ms while the datapath is alive.
    let seen = d.notified_until("WATCHDOG=1");
    assert!(seen.last().is_some_and(|m| m == "WATCHDOG=1"), "{seen:?}");
    let out = d.cli(&["reload"]);
    assert_eq!(status(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "config generation 2: no changes\n");
    let seen = d.notified_until("RELOADING=1");
    assert!(
        seen.last().is_some_and(|m| m.contains("MONOTONIC_USEC=")),
        "{seen:?}"
    );
    let seen = d.notified_until("READY=1");
    assert!(
        seen.last().is_some_and(|m| m.contains("READY=1")),
        "{seen:?}"
    );
    // SIGTERM: STOPPING=1, then a clean exit.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let seen = d.notified_until("STOPPING=1");
    assert!(
        seen.last().is_some_and(|m| m.contains("STOPPING=1")),
        "{seen:?}"
    );
    let exit = d.child.wait().expect("wait for directord");
    assert!(exit.success(), "{exit}: {}", d.log());
}

fn the_live_daemon_serves_prometheus_metrics() {
    let d = Daemon::start("metrics");
    // The daemon's 127.0.0.1 is in its own network namespace: curl from there.
    let out = Command::new("nsenter")
        .args([
            "-t",
            &d.child.id().to_string(),
            "-n",
            "curl",
            "-sS",
            "--max-time",
            "5",
        ])
        .arg("http://127.0.0.1:9586/metrics")
        .output()
        .expect("run nsenter curl");
    assert_eq!(status(&out), 0, "{}", text(&out.stderr));
    let body = text(&out.stdout);
    for want in [
        "# TYPE director_datapath_received_frames_total counter",
        "director_real_weight{service=\"web\",real=\"198.18.2.12:8080\"} 2",
        "director_connections ",
    ] {
        assert!(body.contains(want), "{want:?} not in:\n{body}");
    }
}

/// A start that fails leaves nothing on the box: not when its metrics endpoint cannot be
/// bound (checked before anything is touched), nor when the datapath cannot start after the
/// nftables table is in (undone on the way out). Either way the error says what failed, and
/// no control socket file stays behind.
fn a_failed_start_leaves_nothing_behind() {
    let dir = temp_dir("failedstart");
    let socket = dir.join("director.sock");
    // A VRRP instance on an interface that is not there fails last, with the datapath
    // (AF_PACKET rings), the health checker and the nftables table already in.
    let vrrp_on_missing = "[vrrp]\n\n[[vrrp.instance]]\nname = \"ext\"\ninterface = \"nosuch1\"\n\
                           vrid = 51\npriority = 150\nvips = [\"198.18.1.100/24\"]\n";
    let cases = [
        (
            "metrics = \"198.18.9.9:9586\"",
            "[\"d0\", \"d1\"]",
            "",
            "cannot open the metrics endpoint 198.18.9.9:9586",
        ),
        ("", "[\"d0\", \"nosuch0\"]", "", "cannot start the datapath"),
        ("", "[\"d0\", \"d1\"]", vrrp_on_missing, "cannot start VRRP"),
    ];
    for (metrics, interfaces, vrrp, want) in cases {
        let config = dir.join("director.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nname = \"lb-fail\"\n\n\
                 [[service]]\nname = \"web\"\nvip = \"198.18.1.100:80\"\nmode = \"nat\"\n\n\
                 [[service.real]]\naddress = \"198.18.2.11:8080\"\n\n\
                 [control]\nsocket = \"{}\"\n{metrics}\n\n\
                 [datapath]\nworkers = 1\ninterfaces = {interfaces}\n\n{vrrp}",
                socket.display()
            ),
        )
        .expect("write the config");
        // In a namespace of its own: the exit status, then whether the table or the socket
        // outlived the daemon.
        let script = format!(
            "ip link set lo up; ip link add d0 type veth peer name d1; \
             ip addr add 198.18.1.2/24 dev d0; ip addr add 198.18.2.1/24 dev d1; \
             ip link set d0 up; ip link set d1 up; \
             {} --config {}; echo \"rc=$?\"; \
             nft list table ip director >/dev/null 2>&1 && echo table-left; \
             test -e {} && echo socket-left; true",
            env!("CARGO_BIN_EXE_directord"),
            config.display(),
            socket.display()
        );
        let out = Command::new("unshare")
            .args(["--net", "--", "sh", "-c", &script])
            .output()
            .expect("run unshare");
        let stdout = text(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stdout.contains("rc=1"), "{want}: {stdout} {stderr}");
        assert!(
            stderr.contains(want),
            "the error says what failed: {stderr}"
        );
        assert!(
            !stdout.contains("table-left"),
            "{want}: nftables table left"
        );
        assert!(!stdout.contains("socket-left"), "{want}: socket file left");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `directord`'s panic policy: a panic in any thread ends the process with SIGABRT (run here
/// in a child process, this test binary again, so that the abort is the child's).
fn a_panic_in_any_thread_aborts_the_process() {
    const CHILD: &str = "DIRECTOR_TEST_PANIC_CHILD";
    if std::env::var_os(CHILD).is_some() {
        director::daemon::abort_on_panic();
        std::thread::Builder::new()
            .name("health".into())
            .spawn(|| panic!("a checker bug"))
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_secs(20));
        // Reaching this line means the process lived on: the parent sees exit 0.
        return;
    }
    let out = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "a_panic_in_any_thread_aborts_the_process",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{:?}: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("thread health panicked: aborting"),
        "{stderr}"
    );
}

/// The harness (`harness = false`, libtest-mimic: the usual command line and result lines).
/// The tests that start `directord` need root: as another user they are reported as ignored,
/// never as passed; under CI, or asked for with `--ignored`/`--include-ignored`, they run and
/// fail with the reason.
fn main() {
    let args = libtest_mimic::Arguments::from_args();
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    let run_anyway = ci || args.ignored || args.include_ignored;
    let tests: [(&str, fn(), bool); 16] = [
        (
            "check_config_accepts_a_valid_file",
            check_config_accepts_a_valid_file as fn(),
            false,
        ),
        (
            "check_config_prints_every_error_and_exits_1",
            check_config_prints_every_error_and_exits_1 as fn(),
            false,
        ),
        ("check_config_json", check_config_json as fn(), false),
        (
            "unreadable_file_exits_1",
            unreadable_file_exits_1 as fn(),
            false,
        ),
        (
            "warnings_do_not_fail_the_check",
            warnings_do_not_fail_the_check as fn(),
            false,
        ),
        ("usage_errors_exit_2", usage_errors_exit_2 as fn(), false),
        ("bad_arguments_exit_2", bad_arguments_exit_2 as fn(), false),
        (
            "every_command_has_help_with_examples",
            every_command_has_help_with_examples as fn(),
            false,
        ),
        (
            "completions_for_bash_zsh_and_fish",
            completions_for_bash_zsh_and_fish as fn(),
            false,
        ),
        ("no_daemon_exits_3", no_daemon_exits_3 as fn(), false),
        (
            "exit_codes_against_a_running_daemon",
            exit_codes_against_a_running_daemon as fn(),
            true,
        ),
        (
            "idle_clients_do_not_hold_the_control_socket",
            idle_clients_do_not_hold_the_control_socket as fn(),
            true,
        ),
        (
            "the_daemon_speaks_sd_notify",
            the_daemon_speaks_sd_notify as fn(),
            true,
        ),
        (
            "the_live_daemon_serves_prometheus_metrics",
            the_live_daemon_serves_prometheus_metrics as fn(),
            true,
        ),
        (
            "a_failed_start_leaves_nothing_behind",
            a_failed_start_leaves_nothing_behind as fn(),
            true,
        ),
        (
            "a_panic_in_any_thread_aborts_the_process",
            a_panic_in_any_thread_aborts_the_process as fn(),
            false,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test, needs_root)| {
            let cannot = needs_root && !root;
            libtest_mimic::Trial::test(name, move || {
                if cannot {
                    return Err("this test starts directord and needs root".into());
                }
                test();
                Ok(())
            })
            .with_ignored_flag(cannot && !run_anyway)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}
