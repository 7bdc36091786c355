//! Day-to-day operations against running daemons: a reload that reweights and removes a
//! real server under live flows, a refused reload that keeps the running config, SIGHUP,
//! a planned switchover with `director demote`/`promote` under live flows, every CLI
//! command against a running pair, and a box whose health checks fail resigning through
//! the service quorum.

use std::process::Output;
use std::time::Duration;

use director_lab::flows;
use director_lab::pair::{Pair, PairSpec};
use director_lab::topo::{Mode, ServiceSpec, Topo};
use director_lab::{wait_until, Lab, Signal};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
const LONG: u64 = 60;

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn echo_reals(topo: &Topo) -> (Vec<Value>, Vec<Value>) {
    let v = topo.director_json("services").expect("services");
    let s = v
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "tcp-echo"))
        .expect("service tcp-echo")
        .clone();
    (
        s["reals"].as_array().cloned().unwrap_or_default(),
        s["retired"].as_array().cloned().unwrap_or_default(),
    )
}

fn reload_reweights_and_removes_without_dropping_a_flow() {
    let services = vec![
        ServiceSpec::http("rr", &[1, 1, 1]),
        ServiceSpec::echo("rr", &[1, 1, 1]),
    ];
    let Some(mut topo) = Topo::started("reload", Mode::Nat, &services) else {
        return;
    };
    let flows = flows::start(&topo.client, LONG);
    let (reals, _) = echo_reals(&topo);
    let on_rs3 = reals[2]["active"].as_u64().expect("active");
    assert!(on_rs3 > 0, "rs3 carries some of the long flows: {reals:?}");

    // rs1 weight 3, rs2 stays, rs3 leaves the echo service.
    let new = vec![
        ServiceSpec::http("rr", &[1, 1, 1]),
        ServiceSpec::echo("rr", &[3, 1]),
    ];
    std::fs::write(&topo.config, topo.config_text(&new)).expect("write config");
    let reply = topo.director_json("reload").expect("reload");
    let changes: Vec<&str> = reply["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(reply["generation"], 2);
    assert!(
        changes.iter().any(|c| c.contains("weight 1 -> 3"))
            && changes
                .iter()
                .any(|c| c.contains("198.18.2.13:8007 removed")),
        "{changes:?}"
    );
    let (reals, retired) = echo_reals(&topo);
    assert_eq!(reals.len(), 2);
    assert_eq!(reals[0]["weight"], 3);
    assert_eq!(retired.len(), 1, "rs3 kept for its flows: {retired:?}");

    // A broken file is refused with its location; nothing changes.
    let good = std::fs::read_to_string(&topo.config).expect("read config");
    std::fs::write(&topo.config, good.replace("weight = 3", "weight = -3")).expect("write");
    let out = std::process::Command::new(director_lab::topo::workspace_bin("director").unwrap())
        .arg("--socket")
        .arg(&topo.socket)
        .arg("reload")
        .output()
        .expect("director reload");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:", topo.config.display())) && err.contains("weight"),
        "the error names the file, line and key: {err}"
    );
    assert_eq!(echo_reals(&topo).0[0]["weight"], 3, "running config kept");

    // SIGHUP applies a good file as `reload` does.
    std::fs::write(&topo.config, good.replace("weight = 3", "weight = 2")).expect("write");
    topo.daemon
        .as_mut()
        .expect("daemon")
        .kill(Signal::Hup)
        .expect("SIGHUP");
    wait_until(T, || echo_reals(&topo).0[0]["weight"] == 2).expect("SIGHUP reloaded");
    let status = topo.director_json("status").expect("status");
    assert_eq!(status["config"]["generation"], 3, "{status}");

    // New flows follow the new weights; the old ones all finish intact.
    let report = flows::stop(flows);
    flows::assert_all_ok(&report, LONG);
    let events = topo.director_json("events").expect("events");
    let config_events = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "config")
        .count();
    assert_eq!(config_events, 3, "two applied, one refused: {events}");
}

/// `director --socket S ARGS` for node `n`, whatever its exit status (the socket is a file:
/// no namespace needed).
fn raw(pair: &Pair, n: usize, args: &[&str]) -> Output {
    std::process::Command::new(director_lab::topo::workspace_bin("director").unwrap())
        .arg("--socket")
        .arg(&pair.sockets[n])
        .args(args)
        .output()
        .expect("run director")
}

fn cli(pair: &Pair, n: usize, args: &[&str]) -> String {
    let out = raw(pair, n, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "director {args:?}: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_json(pair: &Pair, n: usize, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = cli(pair, n, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("director {args:?} --json: {e}: {out}"))
}

fn synced_pair(tag: &str, extra: &str, check: Option<&str>) -> Option<Pair> {
    let lab = Lab::for_test(tag)?;
    let mut spec = PairSpec::new(Mode::Nat);
    spec.sync = true;
    spec.interval = "100ms".into();
    spec.preempt = true;
    spec.services = vec![
        ServiceSpec {
            extra: extra.into(),
            check: check.map(str::to_string),
            ..ServiceSpec::http("rr", &[1, 1, 1])
        },
        ServiceSpec::echo("rr", &[1, 1, 1]),
    ];
    let mut pair = Pair::new(lab, spec).expect("pair topology");
    pair.start(0).expect("start lb-a");
    pair.wait_state(0, "ext", "MASTER", T).expect("lb-a master");
    pair.start(1).expect("start lb-b");
    pair.wait_state(1, "ext", "BACKUP", T).expect("lb-b backup");
    wait_until(T, || pair.sync_peer_up(0).unwrap_or(false)).expect("sync up");
    Some(pair)
}

fn demote_and_promote_move_the_vip_with_no_flow_lost_and_every_command_answers() {
    let check = "kind = \"http\"\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"";
    let Some(pair) = synced_pair("ops-pair", "quorum = 1", Some(check)) else {
        return;
    };
    let flows = flows::start(&pair.client, LONG);

    // Every command, human and JSON, on both nodes.
    for n in 0..2 {
        for cmd in [
            "status", "services", "conns", "vrrp", "sync", "stats", "events",
        ] {
            let human = cli(&pair, n, &[cmd]);
            assert!(!human.trim().is_empty(), "director {cmd} printed nothing");
            cli_json(&pair, n, &[cmd]);
        }
    }
    let status = cli_json(&pair, 0, &["status"]);
    assert_eq!(status["vrrp"][0]["state"], "MASTER", "{status}");
    assert_eq!(status["sync"]["peer"], "up", "{status}");
    assert_eq!(status["services"][0]["up"], true, "{status}");
    let human = cli(&pair, 0, &["status"]);
    assert!(human.contains("MASTER") && human.contains("web"), "{human}");
    let services = cli(&pair, 0, &["services"]);
    assert!(services.contains("198.18.1.100:80"), "{services}");
    let real = "198.18.2.12:8080";
    let r = cli_json(&pair, 0, &["real", "drain", "web", real]);
    assert_eq!(
        (r["admin"].as_str(), r["weight"].as_u64()),
        (Some("drained"), Some(0))
    );
    let r = cli_json(&pair, 0, &["real", "disable", "web", real]);
    assert_eq!(r["admin"], "disabled");
    let r = cli_json(&pair, 0, &["real", "enable", "web", real]);
    assert_eq!(
        (r["admin"].as_str(), r["weight"].as_u64()),
        (Some("enabled"), Some(1))
    );
    let r = cli_json(&pair, 0, &["real", "weight", "web", real, "4"]);
    assert_eq!(r["weight"], 4);
    let out = raw(&pair, 0, &["real", "drain", "web", "198.18.2.99:8080"]);
    assert_eq!(out.status.code(), Some(1), "unknown real: {}", text(&out));
    let out = raw(&pair, 0, &["real", "drain"]);
    assert_eq!(out.status.code(), Some(2), "usage error: {}", text(&out));
    let r = cli_json(&pair, 0, &["reload"]);
    assert!(r["changes"].as_array().is_some(), "{r}");
    let cfg = pair.configs[0].display().to_string();
    assert!(cli(&pair, 0, &["check-config", &cfg]).contains("ok"));

    // Planned switchover and back.
    let v = cli_json(&pair, 0, &["demote"]);
    assert!(v["instances"].is_array());
    pair.wait_state(1, "ext", "MASTER", T)
        .expect("lb-b takes over");
    pair.wait_state(0, "ext", "BACKUP", T)
        .expect("lb-a steps back");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pair.state(0, "ext").unwrap(),
        "BACKUP",
        "demoted stays backup"
    );
    cli_json(&pair, 0, &["promote"]);
    pair.wait_state(0, "ext", "MASTER", T)
        .expect("lb-a takes over again");
    std::thread::sleep(Duration::from_secs(2));
    let report = flows::stop(flows);
    flows::assert_all_ok(&report, LONG);

    let events = cli(&pair, 0, &["events"]);
    assert!(
        events.contains("demote") && events.contains("promote"),
        "{events}"
    );
}

fn a_box_whose_checks_fail_resigns_through_the_quorum() {
    let check = "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"";
    let Some(pair) = synced_pair("ops-quorum", "quorum = 2", Some(check)) else {
        return;
    };
    // lb-a's own packets to the real servers' HTTP port are dropped: its checks fail, while
    // the traffic it forwards (not its own) still flows.
    pair.nodes[0]
        .run([
            "nft",
            "add table ip labblock; add chain ip labblock out { type filter hook output priority 0; }; add rule ip labblock out tcp dport 8080 drop",
        ])
        .expect("nft");
    let ok = pair.nodes[0]
        .exec_ok(["nft", "list", "table", "ip", "labblock"])
        .unwrap_or(false);
    assert!(ok, "the lab's block rule is in place");
    pair.wait_state(0, "ext", "FAULT", T).expect("lb-a resigns");
    pair.wait_state(1, "ext", "MASTER", T)
        .expect("lb-b takes over");
    let events = cli(&pair, 0, &["events"]);
    assert!(events.contains("quorum lost"), "{events}");
    assert!(pair.curl().is_ok(), "the VIP answers through lb-b");

    pair.nodes[0]
        .run(["nft", "delete table ip labblock"])
        .expect("nft");
    pair.wait_state(0, "ext", "MASTER", T)
        .expect("lb-a back with its quorum");
}

/// What a second daemon must not touch on the running master's box: its nftables ruleset, its
/// addresses (the VIPs), its XDP attachments and its VRRP state.
fn box_state(pair: &Pair, n: usize) -> (String, String, String, Value) {
    let out = |argv: &[&str]| {
        String::from_utf8_lossy(&pair.nodes[n].run(argv).expect("inspect the box").stdout)
            .into_owned()
    };
    let vrrp = cli_json(pair, n, &["vrrp"]);
    let states: Value = vrrp["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| (i["name"].clone(), i["state"].clone()))
        .map(|(k, v)| Value::Array(vec![k, v]))
        .collect();
    (
        out(&["nft", "-a", "-s", "list", "ruleset"]),
        out(&["ip", "-br", "addr"]),
        out(&["ip", "-d", "link"]),
        states,
    )
}

/// A second `directord` started by mistake beside a running master under traffic, with the
/// same config (so the same control socket) and with a copy that names another socket: each
/// refuses to start, says why, and nothing of the running one changes (rules, VIPs, XDP,
/// VRRP state, flows).
fn a_second_daemon_started_by_mistake_changes_nothing_of_the_running_one() {
    let Some(pair) = synced_pair("ops-second", "", None) else {
        return;
    };
    let flows = flows::start(&pair.client, LONG);
    std::thread::sleep(Duration::from_secs(1));
    let before = box_state(&pair, 0);
    assert!(
        before.1.contains("198.18.1.100/"),
        "lb-a holds the VIP: {}",
        before.1
    );
    let directord = director_lab::topo::workspace_bin("directord").unwrap();
    let other = pair.lab.dir().join("lb-a-other.toml");
    let other_socket = pair.lab.dir().join("lb-a-other.sock");
    std::fs::write(
        &other,
        pair.config_text(0).replace(
            &pair.sockets[0].display().to_string(),
            &other_socket.display().to_string(),
        ),
    )
    .unwrap();
    assert!(std::fs::read_to_string(&other)
        .unwrap()
        .contains("lb-a-other.sock"));
    for config in [&pair.configs[0], &other] {
        let argv = [
            directord.clone().into_os_string(),
            "--config".into(),
            config.clone().into_os_string(),
        ];
        let out = pair.nodes[0]
            .output(&argv, Duration::from_secs(20))
            .expect("run a second directord");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a second directord started: {err}");
        assert!(
            err.contains("already running"),
            "the refusal says why: {err}"
        );
    }
    assert!(
        !other_socket.exists(),
        "the refused daemon left its socket behind"
    );
    std::thread::sleep(Duration::from_secs(1));
    let after = box_state(&pair, 0);
    assert_eq!(before.0, after.0, "nftables ruleset changed");
    assert_eq!(before.1, after.1, "addresses changed");
    assert_eq!(before.2, after.2, "links (XDP attachments) changed");
    assert_eq!(before.3, after.3, "VRRP state changed");
    assert_eq!(pair.state(1, "ext").unwrap(), "BACKUP");
    // The running daemon still answers.
    cli_json(&pair, 0, &["stats"]);
    let report = flows::stop(flows);
    flows::assert_all_ok(&report, LONG);
}

/// One thread of another process frozen with ptrace (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`:
/// only that thread stops, as a thread stuck in a bug would), resumed when dropped.
struct FrozenThread {
    tid: libc::pid_t,
}

impl FrozenThread {
    /// Freezes the thread of `pid` named `comm`.
    fn freeze(pid: u32, comm: &str) -> FrozenThread {
        let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("list the daemon's threads")
            .filter_map(|t| t.ok())
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == comm)
            })
            .and_then(|t| t.file_name().to_str()?.parse::<libc::pid_t>().ok())
            .unwrap_or_else(|| panic!("directord {pid} has no thread named {comm}"));
        // SAFETY: ptrace requests on a thread id; no memory is passed.
        let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
        assert_eq!(
            seized,
            0,
            "PTRACE_SEIZE {tid}: {}",
            std::io::Error::last_os_error()
        );
        let frozen = FrozenThread { tid };
        // SAFETY: as above.
        let r = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
        assert_eq!(
            r,
            0,
            "PTRACE_INTERRUPT: {}",
            std::io::Error::last_os_error()
        );
        let mut status = 0;
        // SAFETY: waits for the traced thread's stop; status is a valid out-pointer.
        let w = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        assert_eq!(w, tid, "waitpid: {}", std::io::Error::last_os_error());
        assert!(libc::WIFSTOPPED(status), "the thread stopped: {status:#x}");
        frozen
    }
}

impl Drop for FrozenThread {
    fn drop(&mut self) {
        // SAFETY: detaching a thread this test traces; it resumes.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.tid, 0, 0) };
    }
}

/// keepalived's checker is known to freeze silently. Here lb-a's health-check thread is
/// frozen under 60 long flows: within seconds the box resigns (the `threads` track faults
/// VRRP) and lb-b takes the VIP with no flow lost; resumed, lb-a takes it back.
fn a_frozen_health_thread_makes_the_master_resign() {
    let Some(pair) = synced_pair("ops-frozen", "", None) else {
        return;
    };
    let flows = flows::start(&pair.client, LONG);
    std::thread::sleep(Duration::from_secs(1));
    let pid = pair.daemons[0].as_ref().expect("lb-a runs").pid();
    let frozen = FrozenThread::freeze(pid, "health");
    let at = std::time::Instant::now();
    pair.wait_state(1, "ext", "MASTER", T)
        .expect("lb-b takes over from a box with a frozen checker");
    let took = at.elapsed();
    assert_eq!(pair.state(0, "ext").unwrap(), "FAULT");
    let events = cli(&pair, 0, &["events"]);
    assert!(
        events.contains("health") && events.contains("stalled"),
        "{events}"
    );
    eprintln!("frozen health thread → lb-b MASTER in {took:?}");
    drop(frozen);
    pair.wait_state(0, "ext", "MASTER", T)
        .expect("lb-a takes the VIP back once its checker moves again");
    let events = cli(&pair, 0, &["events"]);
    assert!(events.contains("progress again"), "{events}");
    std::thread::sleep(Duration::from_secs(1));
    let report = flows::stop(flows);
    flows::assert_all_ok(&report, LONG);
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [reload_reweights_and_removes_without_dropping_a_flow, demote_and_promote_move_the_vip_with_no_flow_lost_and_every_command_answers, a_box_whose_checks_fail_resigns_through_the_quorum, a_second_daemon_started_by_mistake_changes_nothing_of_the_running_one, a_frozen_health_thread_makes_the_master_resign]
}
