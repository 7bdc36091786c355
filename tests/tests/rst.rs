//! The director never resets VIP service traffic: a capture on the client counts every TCP
//! RST that reaches it while the client
//! (a) makes 100 ordinary HTTP requests through the VIP,
//! (b) sends 50 ACKs of flows nobody knows to VIP:80 (dropped as `no_connection`),
//! (c) sends 50 SYNs to a service whose every real server is drained (`no_real_server`),
//! and there must be none: the datapath drops what it cannot forward, silently and counted,
//! and the interception rules keep the director's kernel from answering in its place.
//!
//! (d) is the rule's other side: a SYN to a VIP port that no service uses (81) is not service
//! traffic but the box's own: the datapath passes it and the director's kernel answers it as
//! any host answers a closed port, with one RST from VIP:81 per SYN. Counting those on the
//! same capture filter also shows that the filter does see RSTs when there are some.
//!
//! Run in NAT and DR. The drained service of (c) is drained in its config (weight 0 for every
//! real: the same state in the datapath as `director real drain`), because the control socket
//! does not yet implement the CLI's `real-weight` request; the runtime-drain variant below is
//! ignored until it does.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Duration;

use director_lab::labpkt::{self, drop_counters, wait_drops, Frames};
use director_lab::topo::{vip, Mode, ServiceSpec, Topo, CLIENT, VIP};
use director_lab::{wait_until, Lab};
use forwarder::wire::{EthernetFrame, Ipv4Packet, TcpPacket};

const RST_FILTER: &str = "tcp[tcpflags] & tcp-rst != 0";

/// (source, destination) of every TCP segment in the captured frames.
fn segments(frames: &[Vec<u8>]) -> Vec<(SocketAddrV4, SocketAddrV4)> {
    frames
        .iter()
        .filter_map(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).ok()?;
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            Some((
                SocketAddrV4::new(ip.src_addr(), tcp.src_port()),
                SocketAddrV4::new(ip.dst_addr(), tcp.dst_port()),
            ))
        })
        .collect()
}

/// A service on VIP:82 with every real server drained (weight 0).
const DRAINED_PORT: u16 = 82;

fn drained_service() -> ServiceSpec {
    ServiceSpec {
        name: "drained".into(),
        port: DRAINED_PORT,
        ..ServiceSpec::http("rr", &[0, 0, 0])
    }
}

fn passed(topo: &Topo) -> u64 {
    topo.director_json("stats").expect("stats")["datapath"]["passed"]
        .as_u64()
        .expect("passed counter")
}

fn no_rsts_for_service_traffic(mode: Mode) {
    let svc = [ServiceSpec::http("rr", &[1, 1, 1]), drained_service()];
    let Some(topo) = Topo::started(&format!("rst-{}", mode.as_str()), mode, &svc) else {
        return;
    };
    let dmac = topo.director.mac("ext").expect("director's MAC");
    let send = |f: Frames| {
        let sent = labpkt::send(&topo.client, "eth0", dmac, &f).expect("labpkt");
        assert_eq!(sent.sent, f.count);
    };

    let cap = topo.client.capture("eth0", RST_FILTER).expect("capture");

    // (a) ordinary requests, each on its own connection.
    let names = topo.curl_many(100, None).expect("curl through the VIP");
    assert_eq!(names.len(), 100);

    // (b) segments of unknown flows.
    let before = drop_counters(&topo).expect("stats");
    send(Frames::new("ack", 50, CLIENT, vip(80)).sport(20000));
    let want = BTreeMap::from([("no_connection".to_string(), 50)]);
    let moved = wait_drops(&topo, &before, &want).expect("stats");
    assert_eq!(moved, want, "drops for 50 ACKs of unknown flows");

    // (c) new flows to a service whose every real server is drained.
    let before = drop_counters(&topo).expect("stats");
    send(Frames::new("syn", 50, CLIENT, vip(DRAINED_PORT)).sport(21000));
    let want = BTreeMap::from([("no_real_server".to_string(), 50)]);
    let moved = wait_drops(&topo, &before, &want).expect("stats");
    assert_eq!(moved, want, "drops for 50 SYNs with every real drained");

    let rsts = segments(&cap.stop().expect("stop capture"));
    assert!(
        rsts.is_empty(),
        "{} RSTs reached the client during (a)-(c) in {mode:?}: {rsts:?}",
        rsts.len()
    );

    // (d) a port without a service: the director's kernel answers, once per SYN.
    let cap = topo.client.capture("eth0", RST_FILTER).expect("capture");
    let passed_before = passed(&topo);
    let before = drop_counters(&topo).expect("stats");
    send(Frames::new("syn", 50, CLIENT, vip(81)).sport(22000));
    wait_until(Duration::from_secs(20), || {
        passed(&topo) >= passed_before + 50
    })
    .expect("the datapath passes SYNs to a port without a service to the kernel");
    let rsts = segments(&cap.stop().expect("stop capture"));
    eprintln!("{mode:?}: (d) 50 SYNs to {VIP}:81 drew {} RSTs", rsts.len());
    assert!(
        rsts.iter()
            .all(|(src, dst)| *src == vip(81) && *dst.ip() == CLIENT),
        "RSTs not from {VIP}:81: {rsts:?}"
    );
    assert_eq!(rsts.len(), 50, "one RST per SYN to a closed VIP port");
    let after = drop_counters(&topo).expect("stats");
    assert_eq!(
        labpkt::drops_since(&before, &after),
        BTreeMap::new(),
        "SYNs to a port without a service are not dropped by the datapath"
    );
}

fn nat_director_sends_no_rsts_for_service_traffic() {
    no_rsts_for_service_traffic(Mode::Nat);
}

fn dr_director_sends_no_rsts_for_service_traffic() {
    no_rsts_for_service_traffic(Mode::Dr);
}

/// (c) with the real servers drained at run time (`director real drain`), after traffic has
/// flowed to them.
fn nat_no_rsts_after_runtime_drain() {
    let Some(lab) = Lab::for_test("rst-drain") else {
        return;
    };
    let mut topo = Topo::nat(lab, 3).expect("topology");
    topo.start(&[ServiceSpec::http("rr", &[1, 1, 1])])
        .expect("start");
    let dmac = topo.director.mac("ext").expect("director's MAC");
    topo.curl_many(3, None).expect("curl through the VIP");
    let cap = topo.client.capture("eth0", RST_FILTER).expect("capture");
    for addr in &topo.real_addrs {
        let real = format!("{addr}:{}", topo.real_port(80));
        topo.director_cli(&["real", "drain", "web", &real])
            .expect("director real drain");
    }
    let before = drop_counters(&topo).expect("stats");
    let f = Frames::new("syn", 50, CLIENT, vip(80)).sport(21000);
    labpkt::send(&topo.client, "eth0", dmac, &f).expect("labpkt");
    let want = BTreeMap::from([("no_real_server".to_string(), 50)]);
    let moved = wait_drops(&topo, &before, &want).expect("stats");
    assert_eq!(moved, want, "drops for 50 SYNs with every real drained");
    let rsts = segments(&cap.stop().expect("stop capture"));
    assert!(rsts.is_empty(), "RSTs reached the client: {rsts:?}");
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [nat_director_sends_no_rsts_for_service_traffic, dr_director_sends_no_rsts_for_service_traffic, nat_no_rsts_after_runtime_drain]
}
