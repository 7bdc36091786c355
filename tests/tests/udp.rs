//! UDP request/response through the VIP, in every mode: every request (each from a new source
//! port, so each is a new flow) gets its own reply, from the VIP's address and port, and the
//! flows spread by the scheduler. In DR and TUN the reply leaves the real server directly, so
//! it must come from the VIP that `labsrv` binds there; in FULLNAT the real servers see only
//! the director's LIPs.

use std::net::SocketAddr;
use std::time::Duration;

use director_lab::topo::{decap_counters, tally, vip, Mode, ServiceSpec, Topo, CLIENT, LIPS};
use director_lab::udp_request;

const REQUESTS: usize = 90;

fn udp_distribution(tag: &str, mode: Mode, scheduler: &'static str, weights: &[u32]) {
    let svc = ServiceSpec::udp(scheduler, weights);
    let Some(mut topo) = Topo::started(tag, mode, std::slice::from_ref(&svc)) else {
        return;
    };
    let names = topo
        .udp_many(svc.port, REQUESTS)
        .expect("UDP through the VIP");
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
    // The real servers saw the client itself (NAT, DR and TUN keep the client address;
    // FULLNAT shows one of its LIPs instead), once per request, matching the replies.
    let seen = topo.udp_peers_seen().expect("labsrv logs");
    for (i, (m, &got)) in seen.iter().zip(&counts).enumerate() {
        if mode == Mode::FullNat {
            let from_lips: usize = LIPS.iter().filter_map(|l| m.get(l)).sum();
            assert_eq!(
                (from_lips, m.len() <= LIPS.len()),
                (got, true),
                "rs{} saw {m:?} (want only the LIPs {LIPS:?}), the client got {got} replies",
                i + 1
            );
            continue;
        }
        let from_client = m.get(&CLIENT).copied().unwrap_or(0);
        assert_eq!(
            (from_client, m.len() <= 1),
            (got, true),
            "rs{} saw {m:?}, the client got {got} replies from it",
            i + 1
        );
    }
    if mode == Mode::Tun {
        // Every request reached its real server inside IPIP (DR-style forwarding would also
        // get answers here, the real servers being on the director's segment).
        let decap = decap_counters(&mut topo.helpers).expect("ipip-decap counters");
        let got: Vec<u64> = decap
            .iter()
            .map(|c| c["decapsulated"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(
            got,
            counts.iter().map(|&n| n as u64).collect::<Vec<_>>(),
            "datagrams decapsulated per real vs replies: {decap:?}"
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

fn nat_udp_rr() {
    udp_distribution("nat_udp_rr", Mode::Nat, "rr", &[1, 1, 1]);
}

fn dr_udp_rr() {
    udp_distribution("dr_udp_rr", Mode::Dr, "rr", &[1, 1, 1]);
}

fn tun_udp_rr() {
    udp_distribution("tun_udp_rr", Mode::Tun, "rr", &[1, 1, 1]);
}

fn fullnat_udp_rr() {
    udp_distribution("fullnat_udp_rr", Mode::FullNat, "rr", &[1, 1, 1]);
}

fn nat_udp_wrr() {
    udp_distribution("nat_udp_wrr", Mode::Nat, "wrr", &[1, 2, 3]);
}

/// Source hashing on UDP: one client address, many ports, one real; and the lab's own
/// connected-socket helper gets the same real's reply.
fn dr_udp_sh() {
    let svc = ServiceSpec::udp("sh", &[1, 1, 1]);
    let Some(topo) = Topo::started("dr_udp_sh", Mode::Dr, std::slice::from_ref(&svc)) else {
        return;
    };
    let names = topo.udp_many(svc.port, 30).expect("UDP through the VIP");
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

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [nat_udp_rr, dr_udp_rr, tun_udp_rr, fullnat_udp_rr, nat_udp_wrr, dr_udp_sh]
}
