//! First light: HTTP through the VIP in NAT mode, and nothing dropped on the way.

use director_lab::topo::{tally, ServiceSpec, Topo};
use director_lab::Lab;

fn nat_round_robin_smoke() {
    let Some(lab) = Lab::for_test("smoke") else {
        return;
    };
    let mut topo = Topo::nat(lab, 3).expect("topology");
    let svc = [ServiceSpec::http("rr", &[1, 1, 1])];
    topo.start(&svc).expect("start");
    let names = topo.curl_many(30, None).expect("curl through the VIP");
    assert_eq!(tally(&names, 3), vec![10, 10, 10]);
    let stats = topo.director_json("stats").expect("stats");
    let drops = &stats["datapath"]["drops"];
    for (reason, n) in drops.as_object().expect("drop counters") {
        assert_eq!(n.as_u64(), Some(0), "unexpected drops {reason}: {stats}");
    }
}

/// The box's own traffic is untouched while the datapath runs: the director's own request
/// to a NAT real server's service port gets its reply (the interception rule for NAT replies
/// exempts local destinations — this is how health checks will reach the real servers), a
/// service of the box itself (standing in for SSH) answers on the director's address, and
/// ICMP echo to the VIP is answered by the kernel.
fn own_traffic_untouched() {
    let Some(lab) = Lab::for_test("own") else {
        return;
    };
    let mut topo = Topo::nat(lab, 3).expect("topology");
    let svc = [ServiceSpec::http("rr", &[1, 1, 1])];
    topo.start(&svc).expect("start");
    let labsrv = director_lab::topo::workspace_bin("labsrv").expect("labsrv");
    let _own = topo
        .director
        .spawn([
            labsrv.display().to_string(),
            "--name".into(),
            "director-itself".into(),
            "--http".into(),
            "198.18.1.2:2222".into(),
        ])
        .expect("a service of the box itself");
    topo.director
        .wait_tcp_listen(
            "198.18.1.2:2222".parse().unwrap(),
            std::time::Duration::from_secs(10),
        )
        .expect("own service listening");

    // Director → real server 198.18.2.11:8080 (a NAT real's service port), from the box.
    let out = topo
        .director
        .run([
            "curl",
            "-sS",
            "--max-time",
            "10",
            "http://198.18.2.11:8080/",
        ])
        .expect("curl from the director");
    assert!(
        out.status.success(),
        "director's own request failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "rs1");

    // Client → the box's own service on its own address.
    let out = topo
        .client
        .run(["curl", "-sS", "--max-time", "10", "http://198.18.1.2:2222/"])
        .expect("curl to the director's own service");
    assert!(
        out.status.success(),
        "own service unreachable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "director-itself"
    );

    // Client → ping the VIP: the kernel answers.
    let out = topo
        .client
        .run(["ping", "-c", "2", "-W", "2", "198.18.1.100"])
        .expect("ping");
    assert!(
        out.status.success(),
        "ping VIP failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // And service traffic still flows through the datapath meanwhile.
    assert_eq!(
        tally(&topo.curl_many(9, None).expect("curl"), 3),
        vec![3, 3, 3]
    );
    let stats = topo.director_json("stats").expect("stats");
    assert!(
        stats["datapath"]["passed"].as_u64().unwrap_or(0) > 0,
        "own traffic seen by the rings and passed: {stats}"
    );
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [nat_round_robin_smoke, own_traffic_untouched]
}
