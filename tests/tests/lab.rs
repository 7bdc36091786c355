//! Namespace end-to-end tests of the lab itself (need root; skipped with a reason otherwise,
//! failed under CI=true).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use director_lab::pattern;
use director_lab::{reap_stale, udp_request, wait_until, Host, Lab, Signal};

const LABSRV: &str = env!("CARGO_BIN_EXE_labsrv");
const SECS: Duration = Duration::from_secs(5);

/// client ── front ── router ── back ── server
struct Topo {
    client: Host,
    router: Host,
    server: Host,
}

fn three_hosts(lab: &Lab) -> Topo {
    let client = lab.host("client").unwrap();
    let router = lab.host("router").unwrap();
    let server = lab.host("server").unwrap();
    let front = lab.bridge("front").unwrap();
    let back = lab.bridge("back").unwrap();
    lab.attach(&client, &front, "eth0", "198.18.1.10/24")
        .unwrap();
    lab.attach(&router, &front, "eth0", "198.18.1.1/24")
        .unwrap();
    lab.attach(&router, &back, "eth1", "198.18.2.1/24").unwrap();
    lab.attach(&server, &back, "eth0", "198.18.2.10/24")
        .unwrap();
    router.sysctl("net.ipv4.ip_forward", "1").unwrap();
    client.route_add("default", "198.18.1.1").unwrap();
    server.route_add("default", "198.18.2.1").unwrap();
    Topo {
        client,
        router,
        server,
    }
}

fn start_labsrv(host: &Host, name: &str) -> director_lab::Proc {
    let p = host
        .spawn([
            LABSRV,
            "--name",
            name,
            "--http",
            "0.0.0.0:8080",
            "--udp",
            "0.0.0.0:8080",
        ])
        .unwrap();
    host.wait_tcp_listen("198.18.2.10:8080".parse().unwrap(), SECS)
        .unwrap();
    p
}

fn curl(host: &Host, args: &[&str]) -> String {
    let mut argv = vec!["curl", "-sS", "--max-time", "5"];
    argv.extend_from_slice(args);
    String::from_utf8(host.run(&argv).unwrap().stdout).unwrap()
}

fn conn_lines(p: &director_lab::Proc) -> usize {
    p.stdout()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("conn "))
        .count()
}

fn ns_list() -> String {
    String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

fn ns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn ping_http_udp_through_a_router() {
    let Some(lab) = Lab::for_test("route") else {
        return;
    };
    let t = three_hosts(&lab);
    assert!(t
        .client
        .exec_ok(["ping", "-c1", "-W2", "198.18.2.10"])
        .unwrap());

    let mut srv = start_labsrv(&t.server, "rs1");
    srv.wait_stdout("ready", SECS).unwrap();

    let resp = curl(&t.client, &["-i", "http://198.18.2.10:8080/"]);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("X-Real: rs1\r\n"), "{resp}");
    assert!(resp.contains("X-Peer: 198.18.1.10:"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nrs1\n"), "{resp}");
    assert_eq!(conn_lines(&srv), 1);

    // Keep-alive: two requests, one connection; `Connection: close` gets a connection each.
    let two = curl(
        &t.client,
        &[
            "http://198.18.2.10:8080/",
            "http://198.18.2.10:8080/healthz",
        ],
    );
    assert_eq!(two, "rs1\nok\n");
    assert_eq!(conn_lines(&srv), 2);
    curl(
        &t.client,
        &[
            "-H",
            "Connection: close",
            "http://198.18.2.10:8080/",
            "http://198.18.2.10:8080/",
        ],
    );
    assert_eq!(conn_lines(&srv), 4);

    let addr: SocketAddr = "198.18.2.10:8080".parse().unwrap();
    assert_eq!(
        udp_request(&t.client, addr, b"hello", SECS).unwrap(),
        b"rs1 hello"
    );
    let out = t
        .client
        .run([LABSRV, "--udp-client", "198.18.2.10:8080", "hi"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rs1 hi\n");

    // The router sees 3 echo requests and 3 replies on its back side.
    let cap = t.router.capture("eth1", "icmp").unwrap();
    assert!(t
        .client
        .exec_ok(["ping", "-c3", "-i0.05", "-W2", "198.18.2.10"])
        .unwrap());
    assert_eq!(cap.stop_and_count().unwrap(), 6);

    let err = srv.stop(Duration::from_secs(1));
    assert!(
        err.is_some_and(|st| !st.success()),
        "labsrv ignored SIGTERM"
    );
}

fn stream_is_complete_and_in_order() {
    let Some(lab) = Lab::for_test("stream") else {
        return;
    };
    let t = three_hosts(&lab);
    t.router.set_offloads("eth0", false).unwrap();
    let k = t.router.run(["ethtool", "-k", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&k.stdout).contains("tcp-segmentation-offload: off"));
    t.router.set_offloads("eth0", true).unwrap();

    let _srv = start_labsrv(&t.server, "rs1");
    let n = 300_000u64;
    let (head, body) = t
        .client
        .in_ns(|| {
            let mut s = TcpStream::connect("198.18.2.10:8080").unwrap();
            write!(
                s,
                "GET /stream?bytes={n}&chunk=50000&delay_ms=5 HTTP/1.1\r\nHost: x\r\n\
                 Connection: close\r\n\r\n"
            )
            .unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let body = all.split_off(split);
            (String::from_utf8(all).unwrap(), body)
        })
        .unwrap();
    assert!(head.contains(&format!("Content-Length: {n}\r\n")), "{head}");
    assert_eq!(body.len() as u64, n);
    assert_eq!(pattern::first_mismatch(0, &body), None);
    assert!(head.contains(&format!("X-Stream-Fnv1a: {:016x}", pattern::digest(n))));
}

fn direct_link_sysctl_and_iface_facts() {
    let Some(lab) = Lab::for_test("link") else {
        return;
    };
    let a = lab.host("a").unwrap();
    let b = lab.host("b").unwrap();
    let (ia, ib) = lab
        .link(&a, "eth1", "198.18.9.1/30", &b, "eth1", "198.18.9.2/30")
        .unwrap();
    assert!(a.exec_ok(["ping", "-c1", "-W2", "198.18.9.2"]).unwrap());
    assert_eq!(ia.mac, a.mac("eth1").unwrap());
    assert_eq!(ib.ifindex, b.ifindex("eth1").unwrap());
    assert_ne!(ia.mac, ib.mac);
    // The neighbour entry a learned is b's MAC.
    let neigh = a.ip(["neigh", "show", "198.18.9.2"]).unwrap();
    assert!(neigh.contains(&ib.mac.to_string()), "{neigh}");

    a.sysctl("net.ipv4.conf.all.arp_ignore", "1").unwrap();
    assert_eq!(a.sysctl_get("net.ipv4.conf.all.arp_ignore").unwrap(), "1");
    assert_eq!(b.sysctl_get("net.ipv4.conf.all.arp_ignore").unwrap(), "0");
    let via_tool = a
        .run(["sysctl", "-n", "net.ipv4.conf.all.arp_ignore"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&via_tool.stdout).trim(), "1");

    // Only 198.18.0.0/15 is allowed.
    assert!(a.addr_add("eth1", "10.0.0.1/24").is_err());
    assert!(a.route_add("default", "8.8.8.8").is_err());
    assert!(a.route_add("198.18.20.0/24", "198.18.9.2").is_ok());
    let br = lab.bridge("x").unwrap();
    assert!(lab.attach(&a, &br, "eth2", "192.168.1.1/24").is_err());
}

fn processes_signals_and_timeouts() {
    let Some(lab) = Lab::for_test("procs") else {
        return;
    };
    let h = lab.host("h").unwrap();
    let mut p = h.spawn(["sleep", "1000"]).unwrap();
    p.kill(Signal::Stop).unwrap();
    p.kill(Signal::Cont).unwrap();
    assert!(p.wait_timeout(Duration::from_millis(50)).unwrap().is_none());
    p.kill(Signal::Term).unwrap();
    assert!(p.wait_timeout(SECS).unwrap().is_some());
    assert!(p.kill(Signal::Term).is_err());

    let t0 = Instant::now();
    let e = h
        .run_timeout(["sleep", "5"], Duration::from_millis(200))
        .unwrap_err();
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    let e = h.run(["sh", "-c", "echo boom >&2; exit 3"]).unwrap_err();
    assert!(format!("{e:#}").contains("boom"), "{e:#}");
    assert!(!h.exec_ok(["false"]).unwrap());

    // Only the namespace's own interfaces are visible inside it.
    let links = h.run(["ip", "-o", "link"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&links.stdout).lines().count(), 1);
}

fn teardown_removes_namespaces_processes_and_files() {
    let Some(lab) = Lab::for_test("teardown") else {
        return;
    };
    let before = ns_list();
    let t = three_hosts(&lab);
    let mut srv = start_labsrv(&t.server, "rs1");
    // A process that leaves the process group (as daemons do) is still found and killed.
    t.client
        .run(["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 &"])
        .unwrap();
    let namespaces = lab.namespaces();
    assert_eq!(namespaces.len(), 4);
    let mid = ns_list();
    for ns in &namespaces {
        assert!(mid.contains(ns.as_str()));
        assert!(!before.contains(ns.as_str()) || ns.ends_with(".switch"));
    }
    let pids: Vec<String> = namespaces
        .iter()
        .flat_map(|ns| {
            let out = std::process::Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(pids.len(), 2, "labsrv and the setsid sleep: {pids:?}");
    let dir = lab.dir().to_path_buf();
    assert!(dir.exists());

    drop(lab);
    assert!(!srv.is_running());
    let after = ns_list();
    for ns in &namespaces {
        assert!(!after.contains(ns.as_str()), "{ns} left behind");
    }
    assert!(!dir.exists());
    wait_until(SECS, || {
        pids.iter().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| {
                s.rsplit(')').next().is_some_and(|r| r.starts_with(" Z"))
            })
        })
    })
    .expect("lab processes still running after teardown");
}

fn a_panicking_test_still_cleans_up() {
    if Lab::for_test("probe").is_none() {
        return;
    }
    /// What the panicking closure leaves behind to check: namespaces, temp dir, labsrv pid.
    type Seen = Option<(Vec<String>, std::path::PathBuf, u32)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let seen2 = seen.clone();
    let r = std::panic::catch_unwind(move || {
        let lab = Lab::new("panic").unwrap();
        let t = three_hosts(&lab);
        let srv = start_labsrv(&t.server, "rs1");
        *seen2.lock().unwrap() = Some((lab.namespaces(), lab.dir().to_path_buf(), srv.pid()));
        std::mem::forget(srv); // even a leaked Proc is killed by the lab
        panic!("deliberate panic inside a lab");
    });
    assert!(r.is_err());
    let (namespaces, dir, pid) = seen.lock().unwrap().take().unwrap();
    for ns in &namespaces {
        assert!(!ns_exists(ns), "{ns} survived the panic");
    }
    assert!(!dir.exists());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "labsrv survived: {stat}"
    );
}

fn parallel_labs_do_not_collide() {
    if Lab::for_test("probe").is_none() {
        return;
    }
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = ["rs-a", "rs-b"]
        .into_iter()
        .map(|name| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let lab = Lab::new("par").unwrap();
                // Same host names, interface names and addresses in both labs.
                let t = three_hosts(&lab);
                let _srv = start_labsrv(&t.server, name);
                barrier.wait();
                for _ in 0..5 {
                    let body = curl(&t.client, &["http://198.18.2.10:8080/"]);
                    assert_eq!(body, format!("{name}\n"));
                }
                barrier.wait();
                lab.namespaces()
            })
        })
        .collect();
    let all: Vec<Vec<String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(all[0].iter().all(|ns| !all[1].contains(ns)));
}

fn reap_stale_removes_labs_of_dead_runs_only() {
    let Some(lab) = Lab::for_test("reap") else {
        return;
    };
    let _h = lab.host("alive").unwrap();
    let pidns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let pidns = pidns.to_string_lossy();
    let pidns = pidns.trim_start_matches("pid:[").trim_end_matches(']');
    // A creator that cannot be alive: a real pid with a start time it never had.
    let name = format!("dlab-{pidns}-{}-1-0-stale-x", std::process::id());
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success());
    reap_stale().unwrap();
    assert!(!ns_exists(&name), "stale namespace not reaped");
    for ns in lab.namespaces() {
        assert!(ns_exists(&ns), "live lab namespace {ns} was reaped");
    }
}

fn a_missing_program_is_an_error_not_a_failure() {
    let Some(lab) = Lab::for_test("missing") else {
        return;
    };
    let h = lab.host("h").unwrap();
    let e = h.exec_ok(["no-such-program-here"]).unwrap_err();
    assert!(format!("{e:#}").contains("No such file"), "{e:#}");
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [ping_http_udp_through_a_router, stream_is_complete_and_in_order, direct_link_sysctl_and_iface_facts, processes_signals_and_timeouts, teardown_removes_namespaces_processes_and_files, a_panicking_test_still_cleans_up, parallel_labs_do_not_collide, reap_stale_removes_labs_of_dead_runs_only, a_missing_program_is_an_error_not_a_failure]
}
