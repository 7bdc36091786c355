//! Bad and unusual input at the VIP (NAT): each kind of malformed frame is dropped and counted
//! under its own reason, exactly once per frame, and nothing else moves; IP options are kept
//! and forwarded; and afterwards the datapath still forwards, the control socket still
//! answers, and the workers still receive. A burst of random frames crashes nothing.
//!
//! The stated rules (see `forwarder::engine`):
//! - a frame shorter than the IP header or the total length it declares, or with IHL < 5 →
//!   `malformed` (when it is addressed to a VIP; a frame too short to even hold the
//!   destination address cannot be told apart from the box's own traffic and goes to the
//!   kernel);
//! - wrong IPv4 header checksum → `bad_ip_checksum`; wrong TCP checksum on a packet that would
//!   create a flow → `bad_l4_checksum`;
//! - a fragment to a VIP → `fragment` (the datapath does not reassemble);
//! - TTL 1 → `ttl_exceeded`; a non-SYN segment of an unknown flow → `no_connection`;
//! - IP options are kept and forwarded.

use std::collections::BTreeMap;
use std::time::Duration;

use director_lab::labpkt::{self, drop_counters, wait_drops, Frames};
use director_lab::topo::{vip, ServiceSpec, Topo, CLIENT};
use director_lab::{wait_until, Lab, Mac};

const N: u32 = 100;

fn rx(topo: &Topo) -> u64 {
    topo.director_json("stats").expect("stats")["datapath"]["rx"]
        .as_u64()
        .expect("rx counter")
}

fn nat_topo(tag: &str) -> Option<(Topo, Mac)> {
    let lab = Lab::for_test(tag)?;
    let mut topo = Topo::nat(lab, 3).expect("topology");
    let svc = [
        ServiceSpec::http("rr", &[1, 1, 1]),
        ServiceSpec::udp("rr", &[1, 1, 1]),
    ];
    topo.start(&svc).expect("start");
    let dmac = topo.director.mac("ext").expect("director's MAC");
    Some((topo, dmac))
}

/// 30 requests through the VIP, while the workers' rx counter moves.
fn assert_healthy(topo: &mut Topo, after: &str) {
    let rx_before = rx(topo);
    let names = topo
        .curl_many(30, None)
        .unwrap_or_else(|e| panic!("curl through the VIP after {after}: {e:#}"));
    assert_eq!(names.len(), 30);
    let rx_after = rx(topo);
    assert!(
        rx_after > rx_before,
        "rx did not move during 30 requests after {after}"
    );
    assert!(
        topo.daemon.as_mut().expect("daemon").is_running(),
        "directord died after {after}"
    );
}

fn nat_malformed_input_is_dropped_and_counted() {
    let Some((mut topo, dmac)) = nat_topo("bad-input") else {
        return;
    };
    let kinds = [
        ("truncated", "malformed"),
        ("short", "malformed"),
        ("bad-ihl", "malformed"),
        ("bad-ipsum", "bad_ip_checksum"),
        ("bad-tcpsum", "bad_l4_checksum"),
        ("fragment", "fragment"),
        ("ttl1", "ttl_exceeded"),
        ("ack", "no_connection"),
    ];
    for (i, (kind, reason)) in kinds.into_iter().enumerate() {
        let before = drop_counters(&topo).expect("stats");
        let f = Frames::new(kind, N, CLIENT, vip(80)).sport(20000 + 1000 * i as u16);
        let sent = labpkt::send(&topo.client, "eth0", dmac, &f).expect("labpkt");
        assert_eq!(sent.sent, N);
        let want = BTreeMap::from([(reason.to_string(), u64::from(N))]);
        let moved = wait_drops(&topo, &before, &want).expect("stats");
        assert_eq!(moved, want, "{N} `{kind}` frames to the VIP");
    }

    // IP options: forwarded to a real server, whose answers come back through the VIP.
    // labpkt's frames bypass the client's kernel, so the director has not learnt the client's
    // MAC from an ARP request yet (and would drop the first replies as `no_neighbour` while
    // it resolves): one ping first, as a client's own stack would have ARPed for the VIP.
    topo.client
        .run(["ping", "-c", "1", "-W", "5", "198.18.1.100"])
        .expect("ping the VIP");
    let before = drop_counters(&topo).expect("stats");
    let f = Frames::new("ip-options", 20, CLIENT, vip(5353)).sport(30000);
    let sent = labpkt::send(&topo.client, "eth0", dmac, &f).expect("labpkt");
    assert_eq!(
        sent.replies,
        Some(20),
        "UDP replies to datagrams with IP options"
    );
    let seen: usize = topo
        .servers
        .iter()
        .map(|p| {
            p.stdout()
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("udp peer=198.18.1.10:30000 "))
                .count()
        })
        .sum();
    assert_eq!(
        seen, 20,
        "datagrams with IP options seen by the real servers"
    );
    let after = drop_counters(&topo).expect("stats");
    assert_eq!(labpkt::drops_since(&before, &after), BTreeMap::new());

    assert_healthy(&mut topo, "malformed input");
}

fn nat_garbage_burst_crashes_nothing() {
    let Some((mut topo, dmac)) = nat_topo("garbage") else {
        return;
    };
    let rx_before = rx(&topo);
    let f = Frames::new("garbage", 10_000, CLIENT, vip(80))
        .gap_us(0)
        .seed(0x5eed);
    let sent = labpkt::send(&topo.client, "eth0", dmac, &f).expect("labpkt");
    assert_eq!(sent.sent, 10_000);
    // The workers took in (most of) the burst; some may be lost on the way, none may hang
    // the datapath.
    wait_until(Duration::from_secs(20), || rx(&topo) > rx_before + 1000)
        .expect("the workers received the burst");
    eprintln!("garbage: rx moved by {}", rx(&topo) - rx_before);
    topo.director_json("stats").expect("director stats answers");
    assert_healthy(&mut topo, "10,000 garbage frames");
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [nat_malformed_input_is_dropped_and_counted, nat_garbage_burst_crashes_nothing]
}
