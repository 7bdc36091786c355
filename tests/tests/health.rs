//! Health checks in the lab: real servers whose HTTP server stops are taken out of the
//! service and get no new connections while the others take the load; started again, they
//! come back; with every real server down, the sorry server answers.
//!
//! The times from a server's death to "down" and from its restart to "up" are printed
//! (BENCHMARKS.md has the figures); the test asserts what happened, not how fast.

use std::time::{Duration, Instant};

use director_lab::lab::{wait_until, Signal};
use director_lab::topo::{start_labsrv, tally, Mode, ServiceSpec, Topo};
use serde_json::Value;

const CHECK: &str = r#"kind = "http"
path = "/healthz"
interval = "200ms"
timeout = "100ms"
rise = 2
fall = 2"#;

fn web(extra: &str) -> ServiceSpec {
    ServiceSpec {
        check: Some(CHECK.into()),
        extra: extra.into(),
        ..ServiceSpec::http("rr", &[1, 1, 1])
    }
}

/// The `reals` of service `web` as `director services --json` shows them.
fn reals(topo: &Topo) -> Vec<Value> {
    let v = topo.director_json("services").expect("services");
    v.as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "web"))
        .expect("service web")["reals"]
        .as_array()
        .expect("reals")
        .clone()
}

fn health_of(topo: &Topo, i: usize) -> String {
    reals(topo)[i]["health"].as_str().unwrap_or("?").to_string()
}

/// Polls until real `i` has `health`, returning how long it took (20 ms resolution).
fn time_until(topo: &Topo, i: usize, health: &str) -> Duration {
    let start = Instant::now();
    wait_until(Duration::from_secs(10), || health_of(topo, i) == health)
        .unwrap_or_else(|_| panic!("rs{} never {health}: {:?}", i + 1, reals(topo)[i]));
    start.elapsed()
}

fn a_dead_real_server_is_taken_out_and_comes_back() {
    let svc = [web("")];
    let Some(mut topo) = Topo::started("health", Mode::Nat, &svc) else {
        return;
    };
    // Every real server checked at least once, all up.
    wait_until(Duration::from_secs(10), || {
        reals(&topo)
            .iter()
            .all(|r| r["health"] == "up" && r["last_check"]["ok"] == true)
    })
    .expect("first checks pass");
    let names = topo.curl_many(30, None).expect("curl");
    assert_eq!(tally(&names, 3), [10, 10, 10], "rr over three: {names:?}");

    // rs1's HTTP server dies.
    topo.servers[0]
        .kill(Signal::Kill)
        .expect("kill rs1's server");
    let down = time_until(&topo, 0, "down");
    let r1 = &reals(&topo)[0];
    assert_eq!(r1["weight"], 0, "inhibited: {r1}");
    assert!(
        r1["health_cause"]
            .as_str()
            .is_some_and(|c| c.contains("refused")),
        "the cause names the failure: {r1}"
    );
    let names = topo.curl_many(40, None).expect("curl with rs1 down");
    assert_eq!(names.len(), 40, "every request answered");
    assert_eq!(
        tally(&names, 3),
        [0, 20, 20],
        "no new connection to rs1: {names:?}"
    );

    // Started again: back after `rise` good checks.
    let restarted = start_labsrv(&topo.reals[..1], &topo.real_addrs[..1], Mode::Nat, &svc)
        .expect("restart rs1's server");
    topo.servers.extend(restarted);
    let up = time_until(&topo, 0, "up");
    assert_eq!(reals(&topo)[0]["weight"], 1);
    let names = topo.curl_many(30, None).expect("curl with rs1 back");
    assert_eq!(
        tally(&names, 3),
        [10, 10, 10],
        "rs1 serves again: {names:?}"
    );

    let events = topo.director_json("events").expect("events");
    let health: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "health")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        health.len() == 2 && health[0].starts_with("down") && health[1].starts_with("up"),
        "events: {health:?}"
    );
    println!(
        "health (interval 200ms, timeout 100ms, fall 2, rise 2): down {:.0} ms after the kill, up {:.0} ms after the restart (polled every ~20 ms)",
        down.as_secs_f64() * 1e3,
        up.as_secs_f64() * 1e3
    );
}

fn the_sorry_server_answers_when_every_real_is_down() {
    // rs1 and rs2 serve; rs3 runs a second HTTP server on :9090 as the sorry server.
    let sorry = "sorry_server = \"198.18.2.13:9090\"";
    let svc = [ServiceSpec {
        weights: vec![1, 1],
        ..web(sorry)
    }];
    let Some(mut topo) = Topo::started("health-sorry", Mode::Nat, &svc) else {
        return;
    };
    let mut sorry_srv = topo.reals[2]
        .spawn([
            director_lab::topo::workspace_bin("labsrv")
                .expect("labsrv")
                .display()
                .to_string(),
            "--name".into(),
            "sorry".into(),
            "--http".into(),
            "0.0.0.0:9090".into(),
        ])
        .expect("start the sorry server");
    sorry_srv
        .wait_stdout("ready", Duration::from_secs(10))
        .expect("sorry server ready");
    wait_until(Duration::from_secs(10), || {
        reals(&topo).iter().all(|r| r["last_check"]["ok"] == true)
    })
    .expect("first checks pass");
    let names = topo.curl_many(10, None).expect("curl");
    assert!(names.iter().all(|n| n == "rs1" || n == "rs2"), "{names:?}");

    topo.servers[0]
        .kill(Signal::Kill)
        .expect("kill rs1's server");
    topo.servers[1]
        .kill(Signal::Kill)
        .expect("kill rs2's server");
    time_until(&topo, 0, "down");
    time_until(&topo, 1, "down");
    let svc_json = topo.director_json("services").expect("services");
    assert_eq!(svc_json[0]["sorry_server"]["active"], true, "{svc_json}");
    let names = topo.curl_many(10, None).expect("curl with every real down");
    assert_eq!(names, vec!["sorry".to_string(); 10]);

    let restarted = start_labsrv(&topo.reals[..1], &topo.real_addrs[..1], Mode::Nat, &svc)
        .expect("restart rs1's server");
    topo.servers.extend(restarted);
    time_until(&topo, 0, "up");
    let names = topo.curl_many(10, None).expect("curl with rs1 back");
    assert_eq!(
        names,
        vec!["rs1".to_string(); 10],
        "the sorry server steps back"
    );
    sorry_srv.stop(Duration::from_secs(2));
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [a_dead_real_server_is_taken_out_and_comes_back, the_sorry_server_answers_when_every_real_is_down]
}
