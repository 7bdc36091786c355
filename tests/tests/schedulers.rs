//! Every scheduler, in NAT and in DR, end to end: curl on the client, `labsrv` on three real
//! servers, `directord` between them. One test per (mode, scheduler) so a failure is named.
//!
//! - rr, wrr, lc, wlc: 300 sequential short connections spread by weight, ±10 % of each
//!   real's share. (Closed connections linger in the table as inactive, so lc/wlc spread
//!   sequential requests by weight as well.)
//! - sh, mh: one source address always lands on one real; twelve source addresses each stick
//!   to one real and use at least two reals between them.
//! - persistence (rr, 60 s): each of six source addresses sticks to one real; the addresses
//!   spread over at least two reals.
//!
//! Every test also checks that the director's per-real `conns` counters equal what the
//! client saw.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use director_lab::topo::{tally, Mode, ServiceSpec, Topo, CLIENT};

const REQUESTS: usize = 300;

/// The director's per-real connection counters must equal the client's tally.
fn assert_director_agrees(topo: &Topo, seen: &[usize]) {
    let conns = topo.real_conns("web").expect("director services --json");
    let seen: Vec<u64> = seen.iter().map(|&n| n as u64).collect();
    assert_eq!(
        conns, seen,
        "director's per-real conns counters differ from what the client saw"
    );
}

/// 300 requests; each real's share must be within ±10 % of `weights`' proportion.
fn distribution(tag: &str, mode: Mode, scheduler: &'static str, weights: &[u32]) {
    let svc = ServiceSpec::http(scheduler, weights);
    let Some(topo) = Topo::started(tag, mode, std::slice::from_ref(&svc)) else {
        return;
    };
    let names = topo
        .curl_many(REQUESTS, None)
        .expect("curl through the VIP");
    let counts = tally(&names, 3);
    eprintln!("{mode:?} {scheduler} {weights:?}: {counts:?}");
    assert_eq!(
        counts.iter().sum::<usize>(),
        REQUESTS,
        "answers from unknown servers: {names:?}"
    );
    let total: u32 = weights.iter().sum();
    for (i, (&got, &w)) in counts.iter().zip(weights).enumerate() {
        let want = REQUESTS as f64 * f64::from(w) / f64::from(total);
        let slack = want * 0.10;
        assert!(
            (got as f64 - want).abs() <= slack,
            "{mode:?} {scheduler} weights {weights:?}: rs{} got {got} of {REQUESTS}, want \
             {want} ±{slack} (all: {counts:?})",
            i + 1
        );
    }
    assert_director_agrees(&topo, &counts);
}

/// `n` extra client addresses 198.18.1.20, .21, …
fn extra_clients(n: u8) -> Vec<Ipv4Addr> {
    (0..n).map(|i| Ipv4Addr::new(198, 18, 1, 20 + i)).collect()
}

/// Sends `per_source` requests from each of `sources`; asserts each source sticks to one
/// real and that the sources use at least two reals. Returns the per-real tally.
fn sticky_sources(topo: &Topo, sources: &[Ipv4Addr], per_source: usize) -> Vec<usize> {
    let mut counts = vec![0; 3];
    let mut used = BTreeSet::new();
    for &src in sources {
        let names = topo
            .curl_many(per_source, Some(src))
            .unwrap_or_else(|e| panic!("curl from {src}: {e:#}"));
        let distinct: BTreeSet<&String> = names.iter().collect();
        assert_eq!(
            distinct.len(),
            1,
            "requests from {src} went to several reals: {names:?}"
        );
        used.insert(names[0].clone());
        for (c, n) in counts.iter_mut().zip(tally(&names, 3)) {
            *c += n;
        }
    }
    eprintln!("{} sources used {used:?}: {counts:?}", sources.len());
    assert!(
        used.len() >= 2,
        "{} sources all landed on {used:?}",
        sources.len()
    );
    counts
}

/// sh / mh: one source sticks to one real; twelve sources stick and spread.
fn source_hash(tag: &str, mode: Mode, scheduler: &'static str) {
    let svc = ServiceSpec::http(scheduler, &[1, 1, 1]);
    let Some(topo) = Topo::started(tag, mode, std::slice::from_ref(&svc)) else {
        return;
    };
    let names = topo
        .curl_many(REQUESTS, Some(CLIENT))
        .expect("curl through the VIP");
    let mut counts = tally(&names, 3);
    assert_eq!(
        counts.iter().filter(|&&n| n > 0).count(),
        1,
        "{mode:?} {scheduler}: one source address spread over several reals: {counts:?}"
    );
    assert_eq!(counts.iter().sum::<usize>(), REQUESTS);

    let sources = extra_clients(12);
    topo.add_client_addrs(&sources).expect("client addresses");
    for (c, n) in counts.iter_mut().zip(sticky_sources(&topo, &sources, 25)) {
        *c += n;
    }
    assert_director_agrees(&topo, &counts);
}

/// rr with persistence: each source sticks to one real; six sources spread.
fn persistence(tag: &str, mode: Mode) {
    let mut svc = ServiceSpec::http("rr", &[1, 1, 1]);
    svc.persistence = "60s";
    let Some(topo) = Topo::started(tag, mode, std::slice::from_ref(&svc)) else {
        return;
    };
    let sources = extra_clients(6);
    topo.add_client_addrs(&sources).expect("client addresses");
    let counts = sticky_sources(&topo, &sources, 20);
    assert_eq!(counts.iter().sum::<usize>(), 6 * 20);
    assert_director_agrees(&topo, &counts);
}

macro_rules! distribution_tests {
    ($($name:ident: $mode:expr, $sched:literal, $weights:expr;)*) => {$(
        fn $name() {
            distribution(stringify!($name), $mode, $sched, &$weights);
        }
    )*};
}

distribution_tests! {
    nat_rr: Mode::Nat, "rr", [1, 1, 1];
    dr_rr: Mode::Dr, "rr", [1, 1, 1];
    nat_wrr: Mode::Nat, "wrr", [1, 2, 3];
    dr_wrr: Mode::Dr, "wrr", [1, 2, 3];
    nat_lc: Mode::Nat, "lc", [1, 1, 1];
    dr_lc: Mode::Dr, "lc", [1, 1, 1];
    nat_wlc: Mode::Nat, "wlc", [1, 2, 3];
    dr_wlc: Mode::Dr, "wlc", [1, 2, 3];
}

macro_rules! source_hash_tests {
    ($($name:ident: $mode:expr, $sched:literal;)*) => {$(
        fn $name() {
            source_hash(stringify!($name), $mode, $sched);
        }
    )*};
}

source_hash_tests! {
    nat_sh: Mode::Nat, "sh";
    dr_sh: Mode::Dr, "sh";
    nat_mh: Mode::Nat, "mh";
    dr_mh: Mode::Dr, "mh";
}

fn nat_rr_persistence() {
    persistence("nat_persist", Mode::Nat);
}

fn dr_rr_persistence() {
    persistence("dr_persist", Mode::Dr);
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [nat_rr_persistence, dr_rr_persistence, nat_rr, dr_rr, nat_wrr, dr_wrr, nat_lc, dr_lc, nat_wlc, dr_wlc, nat_sh, dr_sh, nat_mh, dr_mh]
}
