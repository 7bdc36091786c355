//! Bad sync datagrams sent into the lab's sync link: forged (wrong key), altered, replayed,
//! truncated, and from an address that is not the peer. Each is refused and counted by its
//! kind on the receiving node, its replica table does not change, and the real stream goes
//! on afterwards.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use director_lab::pair::{sync_addr, Pair, PairSpec, SYNC_PORT};
use director_lab::topo::Mode;
use director_lab::{wait_until, Lab};
use serde_json::Value;
use syncd::wire::{self, Key};

const T: Duration = Duration::from_secs(20);

/// lb-b's replicas as (client, vip, real, state), and how many there are.
fn replicas(pair: &Pair) -> BTreeSet<(String, String, String, String)> {
    let out = pair.cli(1, &["--json", "conns"]).expect("director conns");
    let v: Value = serde_json::from_slice(&out.stdout).expect("conns JSON");
    v["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["origin"] == "replica")
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (s("client"), s("vip"), s("real"), s("state"))
        })
        .collect()
}

fn refused(pair: &Pair, kind: &str) -> u64 {
    pair.sync_status(1).expect("director sync")["refused"][kind]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// A pair with sync, lb-a master, lb-b backup with lb-a's table (`None`: no lab outside CI).
fn synced_pair(tag: &str, mode: Mode, multicast: bool) -> Option<Pair> {
    let lab = Lab::for_test(tag)?;
    let mut spec = PairSpec::new(mode);
    spec.sync = true;
    spec.sync_multicast = multicast;
    let mut pair = Pair::new(lab, spec).expect("pair topology");
    pair.start(0).expect("start lb-a");
    pair.wait_state(0, "ext", "MASTER", T).expect("lb-a master");
    pair.start(1).expect("start lb-b");
    pair.wait_state(1, "ext", "BACKUP", T).expect("lb-b backup");
    wait_until(T, || pair.sync_resync_complete(1).unwrap_or(false)).expect("lb-b resynced");
    Some(pair)
}

/// The UDP payload of an Ethernet/IPv4/UDP frame.
fn udp_payload(frame: &[u8]) -> Option<&[u8]> {
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    ip.get(ihl + 8..)
}

fn bad_sync_datagrams_are_refused_by_kind_and_change_no_replica() {
    let Some(pair) = synced_pair("syncbad", Mode::Nat, false) else {
        return;
    };

    // Real traffic, and the sync datagrams it causes, as lb-b receives them.
    let cap = pair.nodes[1]
        .capture("sync", "udp and src host 198.18.3.2 and dst port 8848")
        .expect("capture");
    for _ in 0..20 {
        pair.curl().expect("curl through the VIP");
    }
    wait_until(T, || replicas(&pair).len() >= 20).expect("20 replicas on lb-b");
    std::thread::sleep(Duration::from_millis(300));
    let frames = cap.stop().expect("capture stop");
    let data: Vec<Vec<u8>> = frames
        .iter()
        .filter_map(|f| udp_payload(f))
        .filter(|p| p.len() > 32 && p[..4] == wire::MAGIC && p[6] == 1 && p[28..30] != [0, 0])
        .map(<[u8]>::to_vec)
        .collect();
    assert!(!data.is_empty(), "no data datagram captured");
    let before = replicas(&pair);
    let counts = |p: &Pair| {
        ["auth", "replayed", "truncated", "unknown_node", "malformed"].map(|k| refused(p, k))
    };
    let c0 = counts(&pair);

    let to = SocketAddrV4::new(sync_addr(1), SYNC_PORT);
    let from_a = pair.nodes[0]
        .in_ns(|| UdpSocket::bind(SocketAddrV4::new(sync_addr(0), 0)))
        .expect("lb-a namespace")
        .expect("socket on lb-a");
    // Replayed: every real data datagram again, byte for byte.
    for d in &data {
        from_a.send_to(d, to).expect("send");
    }
    // Forged: well formed, lb-a's node id, epoch and a future sequence number, deleting
    // every replica — under the wrong key.
    let st = pair.sync_status(0).expect("lb-a sync");
    let epoch = st["epoch"].as_u64().expect("lb-a epoch");
    let wrong = Key::new(b"this is not the key of the pair!").unwrap();
    let victim = wire::Entry {
        op: wire::Op::Delete as u8,
        proto: 6,
        mode: 0,
        state: 2,
        flags: 0,
        client: [198, 18, 1, 10],
        client_port: 40000,
        vip: [198, 18, 1, 100],
        vip_port: 80,
        real: [198, 18, 2, 11],
        real_port: 8080,
        local: None,
        remaining: 0,
        proxy: None,
    };
    let forged = wire::encode_data(
        &wrong,
        wire::Header {
            minor: 0,
            kind: wire::Kind::Data,
            flags: 0,
            node: wire::node_id("lb-a"),
            epoch,
            seq: 1 << 40,
            count: 1,
        },
        &wire::DataHead::default(),
        &[victim],
    );
    from_a.send_to(&forged, to).expect("send");
    // Altered: a real datagram with one entry byte flipped.
    let mut altered = data[0].clone();
    altered[40] ^= 0x20;
    from_a.send_to(&altered, to).expect("send");
    // Truncated: shorter than a header and a MAC, and one byte short (the MAC fails).
    from_a.send_to(&data[0][..20], to).expect("send");
    from_a
        .send_to(&data[0][..data[0].len() - 1], to)
        .expect("send");
    // From an address that is not the peer.
    pair.nodes[0]
        .addr_add("sync", "198.18.3.9/24")
        .expect("second address");
    let stranger = pair.nodes[0]
        .in_ns(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 9), 0)))
        .expect("lb-a namespace")
        .expect("socket on .3.9");
    stranger.send_to(&data[0], to).expect("send");

    let expect = [
        c0[0] + 3,
        c0[1] + data.len() as u64,
        c0[2] + 1,
        c0[3] + 1,
        c0[4],
    ];
    let seen = wait_until(Duration::from_secs(5), || counts(&pair) == expect);
    assert!(
        seen.is_ok(),
        "refused [auth, replayed, truncated, unknown_node, malformed]: {:?}, expected {expect:?}",
        counts(&pair)
    );
    assert_eq!(replicas(&pair), before, "the replica table changed");
    assert_eq!(
        pair.state(1, "ext").expect("lb-b state"),
        "BACKUP",
        "the attack moved VRRP"
    );

    // The real stream goes on: new flows still reach lb-b.
    for _ in 0..5 {
        pair.curl().expect("curl through the VIP");
    }
    let want = before.len() + 5;
    wait_until(T, || replicas(&pair).len() >= want).expect("new flows replicated after it");
    assert!(pair.sync_peer_up(1).expect("lb-b sync"));
}

fn multicast_sync_replicates_to_the_standby() {
    let Some(mut pair) = synced_pair("syncmc", Mode::Dr, true) else {
        return;
    };
    for _ in 0..10 {
        pair.curl().expect("curl through the VIP");
    }
    wait_until(T, || replicas(&pair).len() >= 10).expect("10 replicas on lb-b");
    let st = pair.sync_status(1).expect("director sync");
    assert_eq!(st["mode"], "multicast");
    assert_eq!(st["destination"], "224.0.0.81:8848");
    assert_eq!(st["peer"]["state"], "up");
    assert_eq!(st["refused"]["total"], 0, "{st}");
    // The standby takes over and serves.
    pair.kill(0).expect("kill lb-a");
    pair.wait_state(1, "ext", "MASTER", T).expect("lb-b master");
    pair.curl().expect("curl through lb-b");
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [bad_sync_datagrams_are_refused_by_kind_and_change_no_replica, multicast_sync_replicates_to_the_standby]
}
