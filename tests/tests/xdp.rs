//! The XDP datapath end to end (`[datapath] xdp`), on veth in the lab, native and generic:
//!
//! - in every mode a TCP connection's established packets are forwarded by the fast path
//!   (the flow shows on path `xdp` in `director conns`, the program's counters carry nearly
//!   all of its packets), every byte comes back right, a FIN in mid-flow hands the flow to
//!   the engine (data after it still arrives) and an RST takes it out of the map;
//! - a UDP flow's datagrams are counted exactly once each in the real server's counters,
//!   whichever path carried them (what the client sent is what `director services` shows);
//! - a real server drained and reweighted while its flow is in the map: the flow goes on,
//!   new flows follow the weights;
//! - `xdp = "native"` where the program cannot run (an MTU too large for its buffers) refuses
//!   to start and says why; `xdp = "auto"` falls back to AF_PACKET rings and says so in the
//!   log, `director events` and `director status`.
//!
//! The other lab tests also run with XDP when `DIRECTOR_LAB_XDP` is set (scripts/test does
//! that for a selection, the 200-stream failover among them).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use director_lab::topo::{vip, Mode, ServiceSpec, Topo, ECHO_PORT};
use director_lab::{wait_until, Lab};
use serde_json::Value;

const MODES: [Mode; 4] = [Mode::Nat, Mode::Dr, Mode::Tun, Mode::FullNat];

/// A topology of `mode` with the director on XDP `xdp`, TCP echo and UDP services, or
/// `None` where lab tests cannot run.
fn xdp_topo(tag: &str, mode: Mode, xdp: &'static str) -> Option<Topo> {
    let lab = Lab::for_test(tag)?;
    let mut topo = Topo::new(lab, mode, 3).expect("topology");
    topo.use_xdp(xdp).expect("wire-like switch ports");
    topo.start(&services()).expect("start");
    Some(topo)
}

fn services() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec::echo("rr", &[1, 1, 1]),
        ServiceSpec::udp("rr", &[1, 1, 1]),
    ]
}

fn stats(topo: &Topo) -> Value {
    topo.director_json("stats").expect("director stats")
}

fn xdp_counter(s: &Value, key: &str) -> u64 {
    s["datapath"]["xdp"][key].as_u64().unwrap_or(0)
}

/// The connection from `client` in `director conns --json`.
fn conn_of(topo: &Topo, client: SocketAddr) -> Option<Value> {
    let v = topo.director_json("conns").expect("director conns");
    v["connections"]
        .as_array()?
        .iter()
        .find(|c| c["client"] == client.to_string())
        .cloned()
}

fn connect(topo: &Topo) -> TcpStream {
    let s = topo
        .client
        .in_ns(|| {
            TcpStream::connect_timeout(&SocketAddr::V4(vip(ECHO_PORT)), Duration::from_secs(5))
        })
        .expect("client namespace")
        .expect("connect to the echo service");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Sends `n` messages of `size` bytes and reads each echo back, byte for byte.
fn echo(s: &mut TcpStream, n: usize, size: usize, seed: u8) {
    let mut back = vec![0u8; size];
    for i in 0..n {
        let msg: Vec<u8> = (0..size).map(|j| (i + j) as u8 ^ seed).collect();
        s.write_all(&msg).expect("send");
        s.read_exact(&mut back).expect("echo back");
        assert_eq!(back, msg, "message {i} came back changed");
    }
}

fn fast_path_in_every_mode(xdp: &'static str) {
    for mode in MODES {
        let tag = format!("xdp-{}-{}", &xdp[..3], mode.as_str());
        let Some(topo) = xdp_topo(&tag, mode, xdp) else {
            return;
        };
        let before = stats(&topo);
        let mut s = connect(&topo);
        let me = s.local_addr().expect("local address");
        echo(&mut s, 20, 1000, 1);
        // The manager puts the established flow in the map within a few milliseconds.
        wait_until(Duration::from_secs(5), || {
            conn_of(&topo, me).is_some_and(|c| c["path"] == "xdp")
        })
        .unwrap_or_else(|e| panic!("{mode:?}: the flow never went on the fast path: {e}"));
        let mid = stats(&topo);
        echo(&mut s, 200, 1000, 2);
        let after = stats(&topo);
        let fast_in = xdp_counter(&after, "fast_in") - xdp_counter(&mid, "fast_in");
        let fast_out = xdp_counter(&after, "fast_out") - xdp_counter(&mid, "fast_out");
        // 200 messages: at least 200 client segments in (plus ACKs); in NAT and FULLNAT as
        // many replies out. Every one of them through the program.
        assert!(
            fast_in >= 200,
            "{mode:?}: fast path forwarded {fast_in} inbound packets"
        );
        if matches!(mode, Mode::Nat | Mode::FullNat) {
            assert!(
                fast_out >= 200,
                "{mode:?}: fast path forwarded {fast_out} replies"
            );
        }
        let slow = xdp_counter(&after, "slow_path") - xdp_counter(&mid, "slow_path");
        assert!(
            slow * 10 <= fast_in,
            "{mode:?}: {slow} frames went the slow path beside {fast_in} on the fast one"
        );
        let c = conn_of(&topo, me).expect("the flow is in the table");
        assert!(
            c["fast_packets"].as_u64().unwrap_or(0) >= 200,
            "{mode:?}: per-flow fast path counters: {c}"
        );

        // A FIN in mid-flow: the flow leaves the fast path, and the real server's data
        // after the client's FIN still arrives (the echo of what was sent before it).
        let tail: Vec<u8> = (0..5000).map(|i| (i % 251) as u8).collect();
        s.write_all(&tail).expect("send the tail");
        s.shutdown(Shutdown::Write).expect("FIN");
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .expect("the echo of the tail, then EOF");
        assert_eq!(got, tail, "{mode:?}: the data around the FIN");
        wait_until(Duration::from_secs(5), || {
            conn_of(&topo, me).is_none_or(|c| c["path"] == "engine")
        })
        .unwrap_or_else(|e| panic!("{mode:?}: a closing flow stayed on the fast path: {e}"));
        drop(s);

        // An RST: the flow goes out of the map at once.
        let mut s = connect(&topo);
        let me = s.local_addr().expect("local address");
        echo(&mut s, 10, 100, 3);
        wait_until(Duration::from_secs(5), || {
            conn_of(&topo, me).is_some_and(|c| c["path"] == "xdp")
        })
        .expect("the second flow on the fast path");
        // SO_LINGER 0: the close sends an RST.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(s);
        wait_until(Duration::from_secs(5), || {
            conn_of(&topo, me).is_none_or(|c| c["path"] == "engine" && c["state"] == "CLOSE")
        })
        .unwrap_or_else(|e| panic!("{mode:?}: a reset flow stayed on the fast path: {e}"));
        let end = stats(&topo);
        assert_eq!(
            end["datapath"]["tx_errors"], before["datapath"]["tx_errors"],
            "{mode:?}: transmit errors"
        );
    }
}

fn fast_path_carries_every_mode_native() {
    fast_path_in_every_mode("native");
}

fn fast_path_carries_every_mode_generic() {
    fast_path_in_every_mode("generic");
}

/// One UDP flow of `n` datagrams: every one answered, every one counted once.
fn udp_counts_exact(mode: Mode, xdp: &'static str) {
    let tag = format!("xu-{}-{}", &xdp[..3], mode.as_str());
    let Some(topo) = xdp_topo(&tag, mode, xdp) else {
        return;
    };
    let n = 400u64;
    let svc = &services()[1];
    let before_in: u64 = topo
        .real_field(&svc.name, "packets_in")
        .expect("services")
        .iter()
        .sum();
    let before_out: u64 = topo
        .real_field(&svc.name, "packets_out")
        .expect("services")
        .iter()
        .sum();
    let sock = topo
        .client
        .in_ns(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("client namespace")
        .expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    // Connected, so that the local address is the client's own, as the table shows it.
    sock.connect(SocketAddr::V4(vip(svc.port)))
        .expect("connect");
    let me = sock.local_addr().expect("local address");
    let mut buf = [0u8; 2048];
    let mut exchange = |i: u64| {
        let payload = format!("datagram {i}");
        sock.send(payload.as_bytes()).expect("send");
        let len = sock.recv(&mut buf).expect("every datagram is answered");
        let reply = String::from_utf8_lossy(&buf[..len]).into_owned();
        assert!(reply.ends_with(&payload), "reply {reply:?} to {payload:?}");
    };
    // The first datagram makes the flow (the engine's); once it is in the map, the rest
    // are the fast path's.
    exchange(0);
    let fast_before = xdp_counter(&stats(&topo), "fast_in");
    wait_until(Duration::from_secs(5), || {
        conn_of(&topo, me).is_some_and(|c| c["path"] == "xdp")
    })
    .unwrap_or_else(|e| panic!("{mode:?}: the UDP flow never went on the fast path: {e}"));
    for i in 1..n {
        exchange(i);
    }
    let s = stats(&topo);
    assert_eq!(
        xdp_counter(&s, "fast_in") - fast_before,
        n - 1,
        "{mode:?}: datagrams the fast path carried"
    );
    let got_in: u64 = topo
        .real_field(&svc.name, "packets_in")
        .expect("services")
        .iter()
        .sum();
    let got_out: u64 = topo
        .real_field(&svc.name, "packets_out")
        .expect("services")
        .iter()
        .sum();
    assert_eq!(
        got_in - before_in,
        n,
        "{mode:?}: datagrams counted toward the real servers"
    );
    if matches!(mode, Mode::Nat | Mode::FullNat) {
        assert_eq!(
            got_out - before_out,
            n,
            "{mode:?}: replies counted toward the client"
        );
    }
}

fn udp_counters_equal_what_the_client_sent_nat() {
    udp_counts_exact(Mode::Nat, "native");
}

fn udp_counters_equal_what_the_client_sent_fullnat() {
    udp_counts_exact(Mode::FullNat, "native");
}

fn udp_counters_equal_what_the_client_sent_dr_generic() {
    udp_counts_exact(Mode::Dr, "generic");
}

/// A real server drained, then reweighted, while its flow is in the map.
fn drain_and_reweight_with_a_flow_in_the_map() {
    let Some(topo) = xdp_topo("xdp-drain", Mode::Nat, "native") else {
        return;
    };
    let mut s = connect(&topo);
    let me = s.local_addr().expect("local address");
    echo(&mut s, 10, 500, 4);
    wait_until(Duration::from_secs(5), || {
        conn_of(&topo, me).is_some_and(|c| c["path"] == "xdp")
    })
    .expect("on the fast path");
    let real = conn_of(&topo, me).expect("entry")["real"]
        .as_str()
        .expect("real")
        .to_string();
    let out = topo
        .director_cli(&["real", "drain", "tcp-echo", &real])
        .expect("director real drain");
    assert!(out.contains("weight 0"), "drain printed {out:?}");
    // The drained real's established flow goes on, on the fast path.
    echo(&mut s, 100, 500, 5);
    assert_eq!(conn_of(&topo, me).expect("entry")["path"], "xdp");
    // New flows avoid it.
    for _ in 0..6 {
        let mut t = connect(&topo);
        let them = t.local_addr().expect("local address");
        echo(&mut t, 1, 10, 6);
        assert_ne!(
            conn_of(&topo, them).expect("entry")["real"].as_str(),
            Some(real.as_str()),
            "a new flow went to the drained real"
        );
    }
    topo.director_cli(&["real", "weight", "tcp-echo", &real, "3"])
        .expect("director real weight");
    echo(&mut s, 50, 500, 7);
    let weights = topo.real_field("tcp-echo", "weight").expect("services");
    assert!(
        weights.contains(&3),
        "weights after the reweight: {weights:?}"
    );
    drop(s);
}

/// `xdp = "native"` refuses an interface the program cannot serve, and says why;
/// `xdp = "auto"` falls back to AF_PACKET and says so.
fn native_refuses_and_auto_falls_back() {
    let Some(lab) = Lab::for_test("xdp-fallback") else {
        return;
    };
    let mut topo = Topo::new(lab, Mode::Dr, 1).expect("topology");
    // Beyond the frames an AF_XDP chunk holds (and veth's native XDP limit).
    topo.director
        .ip(["link", "set", "ext", "mtu", "9000"])
        .expect("mtu");
    topo.use_xdp("native").expect("wire-like ports");
    let svc = [ServiceSpec::http("rr", &[1])];
    topo.start_servers(&svc).expect("servers");
    let err = topo
        .start_director(&svc)
        .expect_err("native XDP must refuse MTU 9000");
    let log = topo
        .daemon
        .as_ref()
        .and_then(|p| p.stderr().ok())
        .unwrap_or_default();
    assert!(
        log.contains("MTU") && log.contains("xdp"),
        "the refusal says why: {err:#}\n{log}"
    );
    if let Some(mut d) = topo.daemon.take() {
        d.stop(Duration::from_secs(5));
    }
    topo.xdp = Some("auto");
    topo.start_director(&svc).expect("auto starts anyway");
    let status = topo.director_json("status").expect("status");
    assert_eq!(
        status["datapath"]["receive"][0]["path"], "af_packet",
        "status: {status}"
    );
    let events = topo.director_cli(&["events"]).expect("events");
    assert!(
        events.contains("XDP unavailable"),
        "the fallback is an event: {events}"
    );
    let names = topo
        .curl_many(6, None)
        .expect("traffic on the fallback path");
    assert_eq!(names.len(), 6);
}

/// A `director_xdp` left on an interface the old way (attached through netlink, which stays
/// when its process dies, unlike the BPF link directord attaches with) is replaced at start,
/// and nothing of the daemon's is left on the interface once it stops.
fn a_stale_program_of_an_earlier_run_is_replaced() {
    let Some(lab) = Lab::for_test("xdp-stale") else {
        return;
    };
    let Some(object) = forwarder::io::xdp::object() else {
        assert!(
            std::env::var("CI").is_err(),
            "CI builds the XDP program (clang from scripts/install-deps)"
        );
        eprintln!("SKIPPED: this build has no XDP program");
        return;
    };
    let mut topo = Topo::new(lab, Mode::Nat, 3).expect("topology");
    topo.use_xdp("native").expect("wire-like ports");
    let stale = topo.lab.dir().join("stale.bpf.o");
    std::fs::write(&stale, object).expect("write the object");
    topo.director
        .run([
            "ip",
            "link",
            "set",
            "dev",
            "ext",
            "xdpgeneric",
            "obj",
            stale.to_str().expect("utf-8 path"),
            "sec",
            "xdp",
        ])
        .expect("attach the stale program through netlink");
    let shown = |topo: &Topo| {
        topo.director
            .ip(["-d", "link", "show", "dev", "ext"])
            .expect("ip link")
    };
    assert!(shown(&topo).contains("xdpgeneric"), "{}", shown(&topo));
    topo.start(&services())
        .expect("directord replaces it and starts");
    let link = shown(&topo);
    assert!(
        link.contains("prog/xdp") && !link.contains("xdpgeneric"),
        "the daemon's own program, natively: {link}"
    );
    let mut s = connect(&topo);
    echo(&mut s, 50, 200, 8);
    drop(s);
    if let Some(mut d) = topo.daemon.take() {
        d.stop(Duration::from_secs(5));
    }
    let link = shown(&topo);
    assert!(!link.contains("prog/xdp"), "left behind: {link}");
}

/// A flow whose packets only the program forwards lives as long as they keep coming: the
/// sweep asks the program when it last forwarded one before it expires the entry. With a
/// 3 s UDP timeout, a datagram a second for 9 s stays one flow on one real server.
fn a_flow_only_the_fast_path_sees_does_not_expire_while_it_lives() {
    let Some(lab) = Lab::for_test("xdp-expiry") else {
        return;
    };
    let mut topo = Topo::new(lab, Mode::Nat, 3).expect("topology");
    topo.use_xdp("native").expect("wire-like ports");
    topo.datapath_extra = "udp_timeout = \"3s\"".into();
    topo.start(&services()).expect("start");
    let svc = &services()[1];
    let sock = topo
        .client
        .in_ns(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("client namespace")
        .expect("bind");
    sock.connect(SocketAddr::V4(vip(svc.port)))
        .expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let me = sock.local_addr().expect("local address");
    let new_conns = |topo: &Topo| stats(topo)["datapath"]["new_conns"].as_u64().unwrap_or(0);
    let before = new_conns(&topo);
    let mut buf = [0u8; 2048];
    let mut servers = std::collections::BTreeSet::new();
    for i in 0..10 {
        sock.send(format!("tick {i}").as_bytes()).expect("send");
        let len = sock.recv(&mut buf).expect("answered");
        let reply = String::from_utf8_lossy(&buf[..len]).into_owned();
        servers.insert(reply.split(' ').next().unwrap_or("").to_string());
        if i == 0 {
            wait_until(Duration::from_secs(5), || {
                conn_of(&topo, me).is_some_and(|c| c["path"] == "xdp")
            })
            .expect("the flow on the fast path");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        new_conns(&topo) - before,
        1,
        "one flow, never expired and re-made"
    );
    assert_eq!(servers.len(), 1, "one real server all along: {servers:?}");
    let c = conn_of(&topo, me).expect("the flow is still in the table");
    assert_eq!(c["path"], "xdp", "{c}");
    // Then silence: it expires after its timeout, and leaves the map with it.
    wait_until(Duration::from_secs(10), || conn_of(&topo, me).is_none())
        .expect("the idle flow expires");
    let flows = stats(&topo)["datapath"]["xdp"]["fast_path"]["flows"].as_u64();
    assert_eq!(flows, Some(0), "the expired flow left the map");
}

/// A next hop's MAC changes under an established flow: the FIB snapshot sees the new
/// neighbour entry and the fast path's next-hop row follows, so the flow carries on, on the
/// fast path, to the new MAC.
fn a_neighbour_change_reaches_the_fast_path() {
    let Some(lab) = Lab::for_test("xdp-neigh") else {
        return;
    };
    let mut topo = Topo::new(lab, Mode::Nat, 1).expect("topology");
    topo.use_xdp("native").expect("wire-like ports");
    topo.start(&services()).expect("start");
    let mut s = connect(&topo);
    let me = s.local_addr().expect("local address");
    echo(&mut s, 20, 500, 9);
    wait_until(Duration::from_secs(5), || {
        conn_of(&topo, me).is_some_and(|c| c["path"] == "xdp")
    })
    .expect("on the fast path");
    // The real server gets a new MAC (a NIC swapped behind the same address) and the
    // director's kernel learns it, as from the real server's gratuitous ARP.
    let new_mac = "02:00:00:00:0a:0b";
    topo.reals[0]
        .ip(["link", "set", "dev", "eth0", "address", new_mac])
        .expect("new MAC on rs1");
    let rs = topo.real_addrs[0].to_string();
    topo.director
        .ip([
            "neigh",
            "replace",
            &rs,
            "lladdr",
            new_mac,
            "dev",
            "int",
            "nud",
            "reachable",
        ])
        .expect("the director learns it");
    let before = xdp_counter(&stats(&topo), "fast_in");
    echo(&mut s, 100, 500, 10);
    let after = stats(&topo);
    assert!(
        xdp_counter(&after, "fast_in") - before >= 100,
        "the flow went on on the fast path: {}",
        after["datapath"]
    );
    assert_eq!(conn_of(&topo, me).expect("entry")["path"], "xdp");
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [fast_path_carries_every_mode_native, fast_path_carries_every_mode_generic, udp_counters_equal_what_the_client_sent_nat, udp_counters_equal_what_the_client_sent_fullnat, udp_counters_equal_what_the_client_sent_dr_generic, drain_and_reweight_with_a_flow_in_the_map, native_refuses_and_auto_falls_back, a_stale_program_of_an_earlier_run_is_replaced, a_flow_only_the_fast_path_sees_does_not_expire_while_it_lives, a_neighbour_change_reaches_the_fast_path]
}
