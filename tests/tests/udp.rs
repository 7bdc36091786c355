//! UDP request/response through the VIP, NAT and DR: every request (each from a new source
//! port, so each is a new flow) gets its own reply, from the VIP's address and port, and the
//! flows spread by the scheduler. In DR the reply leaves the real server directly, so it must
//! come from the VIP that `labsrv` binds there.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use director_lab::topo::{tally, vip, Mode, ServiceSpec, Topo, CLIENT};
use director_lab::udp_request;

const REQUESTS: usize = 90;

/// `n` requests from the client, each on a new unconnected socket, so each is a new flow.
/// Each reply must come from the VIP's address and port and be `rsN <payload>`; returns the
/// rsN.
fn udp_many(topo: &Topo, port: u16, n: usize) -> Vec<String> {
    let target = SocketAddr::V4(vip(port));
    let replies = topo
        .client
        .in_ns(|| -> Vec<(SocketAddr, String, Vec<u8>)> {
            // Every socket stays open until the end: a closed one's port could be picked
            // again, and its request would then ride the earlier flow's connection entry.
            let mut sockets = Vec::with_capacity(n);
            let replies = (0..n)
                .map(|i| {
                    let payload = format!("request {i} from the client");
                    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
                    sock.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    sock.send_to(payload.as_bytes(), target).expect("send");
                    let mut buf = vec![0u8; 2048];
                    let (len, from) = sock
                        .recv_from(&mut buf)
                        .unwrap_or_else(|e| panic!("no reply to request {i}: {e}"));
                    buf.truncate(len);
                    sockets.push(sock);
                    (from, payload, buf)
                })
                .collect();
            drop(sockets);
            replies
        })
        .expect("in the client's namespace");
    replies
        .into_iter()
        .map(|(from, payload, reply)| {
            assert_eq!(from, target, "reply to {payload:?} came from elsewhere");
            let reply = String::from_utf8(reply).expect("UTF-8 reply");
            let (name, echoed) = reply
                .split_once(' ')
                .unwrap_or_else(|| panic!("malformed reply {reply:?}"));
            assert_eq!(echoed, payload, "reply carries another request's payload");
            assert!(
                topo.real_index(name).is_some(),
                "reply from unknown server {name:?}"
            );
            name.to_string()
        })
        .collect()
}

/// Datagrams each real server's `labsrv` logged, by peer address.
fn peers_seen(topo: &Topo) -> Vec<BTreeMap<String, usize>> {
    topo.servers
        .iter()
        .map(|p| {
            let mut m = BTreeMap::new();
            for l in p.stdout().expect("labsrv stdout").lines() {
                if let Some(peer) = l
                    .strip_prefix("udp peer=")
                    .and_then(|r| r.split(' ').next())
                {
                    let ip = peer.rsplit_once(':').map_or(peer, |(ip, _)| ip);
                    *m.entry(ip.to_string()).or_insert(0) += 1;
                }
            }
            m
        })
        .collect()
}

fn udp_distribution(tag: &str, mode: Mode, scheduler: &'static str, weights: &[u32]) {
    let svc = ServiceSpec::udp(scheduler, weights);
    let Some(topo) = Topo::started(tag, mode, std::slice::from_ref(&svc)) else {
        return;
    };
    let names = udp_many(&topo, svc.port, REQUESTS);
    let counts = tally(&names, 3);
    let total: u32 = weights.iter().sum();
    for (i, (&got, &w)) in counts.iter().zip(weights).enumerate() {
        let want = REQUESTS as f64 * f64::from(w) / f64::from(total);
        let slack = want * 0.10;
        assert!(
            (got as f64 - want).abs() <= slack,
            "{mode:?} udp {scheduler} {weights:?}: rs{} got {got} of {REQUESTS}, want {want} \
             ±{slack} (all: {counts:?})",
            i + 1
        );
    }
    // The real servers saw the client itself (NAT and DR keep the client address), once per
    // request, matching the replies.
    let seen = peers_seen(&topo);
    for (i, (m, &got)) in seen.iter().zip(&counts).enumerate() {
        let from_client = m.get(&CLIENT.to_string()).copied().unwrap_or(0);
        assert_eq!(
            (from_client, m.len() <= 1),
            (got, true),
            "rs{} saw {m:?}, the client got {got} replies from it",
            i + 1
        );
    }
    let conns = topo
        .real_conns(&svc.name)
        .expect("director services --json");
    assert_eq!(
        conns,
        counts.iter().map(|&n| n as u64).collect::<Vec<_>>(),
        "director's per-real conns counters differ from the client's tally"
    );
}

#[test]
fn nat_udp_rr() {
    udp_distribution("nat_udp_rr", Mode::Nat, "rr", &[1, 1, 1]);
}

#[test]
fn dr_udp_rr() {
    udp_distribution("dr_udp_rr", Mode::Dr, "rr", &[1, 1, 1]);
}

#[test]
fn nat_udp_wrr() {
    udp_distribution("nat_udp_wrr", Mode::Nat, "wrr", &[1, 2, 3]);
}

/// Source hashing on UDP: one client address, many ports, one real; and the lab's own
/// connected-socket helper gets the same real's reply.
#[test]
fn dr_udp_sh() {
    let svc = ServiceSpec::udp("sh", &[1, 1, 1]);
    let Some(topo) = Topo::started("dr_udp_sh", Mode::Dr, std::slice::from_ref(&svc)) else {
        return;
    };
    let names = udp_many(&topo, svc.port, 30);
    let counts = tally(&names, 3);
    assert_eq!(
        counts.iter().filter(|&&n| n > 0).count(),
        1,
        "one source address spread over several reals: {counts:?}"
    );
    let reply = udp_request(
        &topo.client,
        SocketAddr::V4(vip(svc.port)),
        b"connected",
        Duration::from_secs(5),
    )
    .expect("connected UDP request through the VIP");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        format!("{} connected", names[0])
    );
}
