//! Path-MTU discovery through the director.
//!
//! The client sits behind a router whose link toward it has MTU 1400 (`director_lab::router`);
//! everything else is 1500, and the client advertises MSS 1460. A real server's 1500-byte
//! segments (DF set, as Linux TCP sends them) cannot cross that link, so the router answers
//! each with ICMP fragmentation-needed (MTU 1400) to the segment's source: the VIP. The
//! director must take that ICMP error, find the flow it quotes, and forward it to the flow's
//! real server (NAT: outer destination and quoted source translated back to the real server;
//! DR: only the MAC changes, the real server holds the VIP); the real server lowers its path
//! MTU and resends smaller, and the transfer completes. Without that the connection would
//! stall at its first full-size segment (Linux does no MTU probing by default).
//!
//! Offloads (TSO, GSO, GRO) are off on the real server and the router, so the real server
//! really sends 1500-byte frames and the router sees them as such.

use std::net::SocketAddrV4;
use std::time::Duration;

use director_lab::labpkt::frag_needed;
use director_lab::pattern;
use director_lab::router::{dr_via_router, nat_via_router, Routed, FAR_CLIENT, ROUTER_EXT};
use director_lab::topo::{Mode, ServiceSpec, VIP};
use director_lab::Lab;

const MTU: u32 = 1400;
const BYTES: usize = 300_000;
const FRAG_NEEDED: &str = "icmp[icmptype] == icmp-unreach and icmp[icmpcode] == 4";

fn pmtu_through_director(mode: Mode) {
    let Some(lab) = Lab::for_test(&format!("pmtu-{}", mode.as_str())) else {
        return;
    };
    let Routed { mut topo, router } = match mode {
        Mode::Nat => nat_via_router(lab, 1, MTU),
        Mode::Dr => dr_via_router(lab, 1, MTU),
        Mode::Tun | Mode::FullNat => panic!("no router topology for {mode:?} (see tun.rs)"),
    }
    .expect("topology");
    let real = topo.reals[0].clone();
    let real_addr = SocketAddrV4::new(topo.real_addrs[0], topo.real_port(80));
    real.set_offloads("eth0", false).expect("offloads off");
    router.set_offloads("cl", false).expect("offloads off");
    router.set_offloads("ext", false).expect("offloads off");
    topo.start(&[ServiceSpec::http("rr", &[1])]).expect("start");

    let at_router = router.capture("ext", FRAG_NEEDED).expect("capture");
    let at_real = real.capture("eth0", FRAG_NEEDED).expect("capture");

    let body = topo.lab.dir().join("stream.body");
    let url = format!("http://{VIP}/stream?bytes={BYTES}");
    topo.client
        .run_timeout(
            [
                "curl",
                "-sS",
                "--max-time",
                "60",
                "-o",
                &body.display().to_string(),
                &url,
            ],
            Duration::from_secs(90),
        )
        .expect("the transfer completes through the 1400-byte link");
    let data = std::fs::read(&body).expect("body");
    assert_eq!(data.len(), BYTES, "body length");
    assert_eq!(pattern::first_mismatch(0, &data), None, "body content");

    let stats = topo.director_json("stats").expect("stats");
    let forwarded = stats["datapath"]["icmp_forwarded"].as_u64().unwrap_or(0);
    assert!(forwarded > 0, "no ICMP forwarded by the director: {stats}");

    // The router's messages went to the VIP and quote VIP:80 → client.
    let sent = frag_needed(&at_router.stop().expect("capture"));
    assert!(!sent.is_empty(), "the router sent no fragmentation-needed");
    for m in &sent {
        assert_eq!(
            (m.src, m.dst, m.mtu),
            (ROUTER_EXT, VIP, MTU as u16),
            "{m:?}"
        );
        assert_eq!(m.quoted_src, SocketAddrV4::new(VIP, 80), "{m:?}");
        assert_eq!(*m.quoted_dst.ip(), FAR_CLIENT, "{m:?}");
    }
    // The real server got them, translated for NAT, as they were for DR.
    let got = frag_needed(&at_real.stop().expect("capture"));
    assert!(
        !got.is_empty(),
        "no fragmentation-needed reached the real server"
    );
    let (dst, quoted_src) = match mode {
        Mode::Nat => (*real_addr.ip(), real_addr),
        Mode::Dr | Mode::Tun | Mode::FullNat => (VIP, SocketAddrV4::new(VIP, 80)),
    };
    for m in &got {
        assert_eq!(
            (m.src, m.dst, m.mtu),
            (ROUTER_EXT, dst, MTU as u16),
            "{m:?}"
        );
        assert_eq!(m.quoted_src, quoted_src, "{m:?}");
        assert_eq!(*m.quoted_dst.ip(), FAR_CLIENT, "{m:?}");
    }
    eprintln!(
        "{mode:?}: router sent {}, real server got {}, director counted {forwarded}",
        sent.len(),
        got.len()
    );

    // And the real server's kernel took it: its route to the client has the lower MTU.
    let route = real
        .ip(["route", "get", &FAR_CLIENT.to_string()])
        .expect("ip route get");
    assert!(
        route.contains(&format!("mtu {MTU}")),
        "the real server's path MTU to the client was not lowered: {route}"
    );
}

fn nat_path_mtu_discovery_through_the_director() {
    pmtu_through_director(Mode::Nat);
}

fn dr_path_mtu_discovery_through_the_director() {
    pmtu_through_director(Mode::Dr);
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [nat_path_mtu_discovery_through_the_director, dr_path_mtu_discovery_through_the_director]
}
