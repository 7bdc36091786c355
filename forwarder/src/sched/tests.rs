//! Unit tests of the schedulers. Random inputs come from a seeded xorshift, so every run
//! sees the same clients.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;

use super::mh::MH_TABLE_SIZE;
use super::seq::MAX_CYCLE;
use super::*;

/// Marsaglia's xorshift64.
pub(super) struct XorShift(u64);

impl XorShift {
    pub(super) fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(super) fn client(&mut self) -> SocketAddrV4 {
        let r = self.next();
        SocketAddrV4::new(Ipv4Addr::from(r as u32), (r >> 32) as u16)
    }
}

pub(super) fn backends(weights: &[u32]) -> Vec<Backend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Backend {
            addr: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, i as u8 + 1), 80),
            weight,
            slot: i as RealSlot,
        })
        .collect()
}

const ALL: [SchedulerKind; 6] = [
    SchedulerKind::Rr,
    SchedulerKind::Wrr,
    SchedulerKind::Lc,
    SchedulerKind::Wlc,
    SchedulerKind::Sh,
    SchedulerKind::Mh,
];

fn picks(s: &Scheduler, n: usize, reals: &RealRegistry) -> Vec<usize> {
    let c = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 4000);
    (0..n)
        .map(|_| s.pick(c, reals).expect("live backend"))
        .collect()
}

fn counts(picks: &[usize], n: usize) -> Vec<u32> {
    let mut c = vec![0u32; n];
    for &p in picks {
        c[p] += 1;
    }
    c
}

/// Longest run of one server in `seq` read as a cycle (the wrap joins two cycles).
fn longest_run(seq: &[usize], server: usize, cyclic: bool) -> usize {
    let n = seq.len();
    let len = if cyclic { 2 * n } else { n };
    let (mut best, mut run) = (0, 0);
    for k in 0..len {
        if seq[k % n] == server {
            run += 1;
            best = best.max(run.min(n));
        } else {
            run = 0;
        }
    }
    best
}

#[test]
fn scheduler_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Scheduler>();
    check::<PersistTable>();
}

#[test]
fn rr_takes_every_live_backend_in_turn() {
    let reals = RealRegistry::new(4);
    let s = Scheduler::new(SchedulerKind::Rr, backends(&[1, 0, 7, 1]));
    assert_eq!(picks(&s, 7, &reals), vec![0, 2, 3, 0, 2, 3, 0]);
}

#[test]
fn wrr_exact_proportions_over_a_cycle() {
    let reals = RealRegistry::new(8);
    for weights in [
        &[5u32, 1, 1][..],
        &[100, 300, 200, 0, 50],
        &[1, 1, 1],
        &[7, 3, 11, 2, 13, 5],
    ] {
        let s = Scheduler::new(SchedulerKind::Wrr, backends(weights));
        let g = weights.iter().fold(0, |g, &w| seq::gcd(g, u64::from(w))) as u32;
        let cycle: u32 = weights.iter().map(|w| w / g).sum();
        for _ in 0..3 {
            let c = counts(&picks(&s, cycle as usize, &reals), weights.len());
            let want: Vec<u32> = weights.iter().map(|w| w / g).collect();
            assert_eq!(c, want, "weights {weights:?}");
        }
    }
}

#[test]
fn wrr_caps_the_cycle_of_huge_weights() {
    let reals = RealRegistry::new(3);
    let weights = [4_000_000_000u32, 1_000_000_001, 3];
    let s = Scheduler::new(SchedulerKind::Wrr, backends(&weights));
    let Algo::Cycle { seq, .. } = &s.algo else {
        panic!("wrr is a cycle")
    };
    assert!(seq.len() <= MAX_CYCLE);
    let c = counts(&picks(&s, seq.len(), &reals), 3);
    // 4 : 1 within 1/65536 of the total, and the tiny weight keeps one turn.
    assert_eq!(c[2], 1);
    let share0 = f64::from(c[0]) / seq.len() as f64;
    assert!((share0 - 0.8).abs() < 2.0 / MAX_CYCLE as f64, "{c:?}");
}

#[test]
fn wrr_interleaves() {
    let reals = RealRegistry::new(8);
    for weights in [
        &[5u32, 1, 1][..],
        &[3, 2],
        &[4, 4, 1],
        &[10, 1, 1, 1, 1, 1],
        &[7, 3, 11, 2, 13, 5],
    ] {
        let s = Scheduler::new(SchedulerKind::Wrr, backends(weights));
        let total: u32 = weights.iter().sum();
        let seq = picks(&s, total as usize, &reals);
        for (i, &w) in weights.iter().enumerate() {
            let others = total - w;
            // A server can be kept from running more than ceil(w / others) times in a row;
            // smooth wrr achieves it inside a cycle, and at most twice that across the
            // wrap where two cycles meet.
            let bound = w.div_ceil(others) as usize;
            assert!(longest_run(&seq, i, false) <= bound, "{weights:?} {seq:?}");
            assert!(
                longest_run(&seq, i, true) <= 2 * bound,
                "{weights:?} {seq:?}"
            );
        }
    }
}

#[test]
fn lc_picks_least_overhead_first_on_ties() {
    let reals = RealRegistry::new(4);
    let s = Scheduler::new(SchedulerKind::Lc, backends(&[1, 1, 1, 0]));
    let c = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
    assert_eq!(s.pick(c, &reals), Some(0), "all zero: the first");
    reals.get(0).active.store(1, Ordering::Relaxed); // 256
    reals.get(1).inactive.store(200, Ordering::Relaxed); // 200
    reals.get(2).inactive.store(200, Ordering::Relaxed); // 200
    assert_eq!(s.pick(c, &reals), Some(1));
    reals.get(1).inactive.store(201, Ordering::Relaxed);
    assert_eq!(s.pick(c, &reals), Some(2));
    // The quiesced one has the least overhead and is still skipped.
    assert_eq!(reals.get(3).overhead(), 0);
    assert_ne!(s.pick(c, &reals), Some(3));
}

#[test]
fn wlc_compares_overhead_per_weight() {
    let reals = RealRegistry::new(4);
    let s = Scheduler::new(SchedulerKind::Wlc, backends(&[1, 3, 2, 0]));
    let c = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
    for (slot, oh) in [(0, 100), (1, 299), (2, 200)] {
        reals.get(slot).inactive.store(oh, Ordering::Relaxed);
    }
    // 100/1, 99.67/1, 100/1: server 1.
    assert_eq!(s.pick(c, &reals), Some(1));
    // 100, 100, 100: a tie goes to the first.
    reals.get(1).inactive.store(300, Ordering::Relaxed);
    assert_eq!(s.pick(c, &reals), Some(0));
    // 100, 100, 99.5: server 2.
    reals.get(2).inactive.store(199, Ordering::Relaxed);
    assert_eq!(s.pick(c, &reals), Some(2));

    // Products beyond u64 do not overflow.
    let s = Scheduler::new(SchedulerKind::Wlc, backends(&[u32::MAX, u32::MAX - 1]));
    reals.get(0).active.store(u32::MAX, Ordering::Relaxed);
    reals.get(1).active.store(u32::MAX - 2, Ordering::Relaxed);
    reals.get(0).inactive.store(0, Ordering::Relaxed);
    reals.get(1).inactive.store(0, Ordering::Relaxed);
    assert_eq!(s.pick(c, &reals), Some(1));
}

#[test]
fn weight_zero_is_never_picked_by_any_kind() {
    let reals = RealRegistry::new(5);
    let mut rng = XorShift::new(7);
    for kind in ALL {
        let s = Scheduler::new(kind, backends(&[0, 1, 0, 2, 0]));
        for _ in 0..5000 {
            for slot in [1, 3] {
                reals
                    .get(slot)
                    .active
                    .store(rng.next() as u32 % 50, Ordering::Relaxed);
            }
            let p = s.pick(rng.client(), &reals);
            assert!(matches!(p, Some(1) | Some(3)), "{kind:?} picked {p:?}");
        }
    }
}

#[test]
fn no_live_backend_gives_none() {
    let reals = RealRegistry::new(3);
    let c = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
    for kind in ALL {
        assert_eq!(
            Scheduler::new(kind, backends(&[0, 0, 0])).pick(c, &reals),
            None
        );
        assert_eq!(Scheduler::new(kind, Vec::new()).pick(c, &reals), None);
    }
}

/// Picks of `n` random clients (seeded), as backend addresses.
fn addr_picks(s: &Scheduler, seed: u64, n: usize) -> Vec<SocketAddrV4> {
    let reals = RealRegistry::new(1);
    let mut rng = XorShift::new(seed);
    (0..n)
        .map(|_| s.backends()[s.pick(rng.client(), &reals).expect("live")].addr)
        .collect()
}

fn assert_shares(s: &Scheduler, weights: &[u32], tolerance: f64) {
    let reals = RealRegistry::new(weights.len());
    let mut rng = XorShift::new(42);
    let n = 10_000;
    let mut c = vec![0u32; weights.len()];
    for _ in 0..n {
        c[s.pick(rng.client(), &reals).expect("live")] += 1;
    }
    let total: u32 = weights.iter().sum();
    for (i, &w) in weights.iter().enumerate() {
        let want = f64::from(n) * f64::from(w) / f64::from(total);
        let got = f64::from(c[i]);
        assert!(
            (got - want).abs() <= tolerance * want,
            "{:?} weights {weights:?}: got {c:?}",
            s.kind()
        );
    }
}

#[test]
fn sh_is_stable_per_client_and_follows_weights() {
    let weights = [1, 2, 3, 4];
    let s = Scheduler::new(SchedulerKind::Sh, backends(&weights));
    assert_shares(&s, &weights, 0.10);
    let reals = RealRegistry::new(4);
    let mut rng = XorShift::new(3);
    for _ in 0..1000 {
        let c = rng.client();
        let other_port = SocketAddrV4::new(*c.ip(), c.port().wrapping_add(1));
        let first = s.pick(c, &reals);
        assert_eq!(s.pick(c, &reals), first);
        assert_eq!(s.pick(other_port, &reals), first, "the port is not hashed");
    }
    // The same servers listed in another order: every client keeps its server.
    let mut rev = backends(&weights);
    rev.reverse();
    let r = Scheduler::new(SchedulerKind::Sh, rev);
    assert_eq!(addr_picks(&s, 9, 5000), addr_picks(&r, 9, 5000));
}

#[test]
fn sh_falls_back_when_quiesced_and_keeps_the_others() {
    for w in [1u32, 100] {
        let all = Scheduler::new(SchedulerKind::Sh, backends(&[w, w, w, w]));
        let quiesced = Scheduler::new(SchedulerKind::Sh, backends(&[w, 0, w, w]));
        let before = addr_picks(&all, 11, 10_000);
        let after = addr_picks(&quiesced, 11, 10_000);
        let gone = backends(&[0, 0])[1].addr;
        let mut moved_to = std::collections::HashMap::new();
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(*a, gone);
            if *b == gone {
                *moved_to.entry(*a).or_insert(0u32) += 1;
            } else {
                assert_eq!(a, b, "a client of a live server moved");
            }
        }
        // The quiesced server's clients spread over the three others.
        let moved: u32 = moved_to.values().sum();
        assert_eq!(moved_to.len(), 3);
        assert!(moved_to.values().all(|&m| m * 5 > moved), "{moved_to:?}");
    }
}

#[test]
fn hash_port_spreads_one_client() {
    let reals = RealRegistry::new(4);
    let p = SchedParams {
        hash_port: true,
        ..SchedParams::default()
    };
    for kind in [SchedulerKind::Sh, SchedulerKind::Mh] {
        let s = Scheduler::with_params(kind, backends(&[1, 1, 1, 1]), p);
        let mut seen = [false; 4];
        for port in 1000..1100 {
            let c = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 7), port);
            seen[s.pick(c, &reals).expect("live")] = true;
        }
        assert_eq!(seen, [true; 4], "{kind:?}");
    }
}

fn mh_slots(s: &Scheduler) -> &[u16] {
    match &s.algo {
        Algo::Mh(t) => t.slots(),
        _ => panic!("not mh"),
    }
}

#[test]
fn mh_fills_every_slot_in_proportion_to_weight() {
    for weights in [&[1u32, 1, 1][..], &[1, 2, 3, 4], &[100, 0, 250, 50]] {
        let s = Scheduler::new(SchedulerKind::Mh, backends(weights));
        let slots = mh_slots(&s);
        assert_eq!(slots.len(), MH_TABLE_SIZE);
        let mut c = vec![0u32; weights.len()];
        for &b in slots {
            c[usize::from(b)] += 1; // panics on an empty slot (u16::MAX)
        }
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let want = MH_TABLE_SIZE as f64 * f64::from(w) / f64::from(total);
            assert!(
                (f64::from(c[i]) - want).abs() <= 0.05 * want,
                "{weights:?} {c:?}"
            );
        }
    }
    let weights = [1, 2, 3, 4];
    assert_shares(
        &Scheduler::new(SchedulerKind::Mh, backends(&weights)),
        &weights,
        0.10,
    );
}

#[test]
fn mh_same_backends_same_table_in_any_order() {
    let weights = [3, 1, 4, 1, 5, 9, 2, 6];
    let a = Scheduler::new(SchedulerKind::Mh, backends(&weights));
    let b = Scheduler::new(SchedulerKind::Mh, backends(&weights));
    assert_eq!(mh_slots(&a), mh_slots(&b));
    let mut rev = backends(&weights);
    rev.reverse();
    let r = Scheduler::new(SchedulerKind::Mh, rev);
    let addr = |s: &Scheduler, k: u16| s.backends()[usize::from(k)].addr;
    assert!(mh_slots(&a)
        .iter()
        .zip(mh_slots(&r))
        .all(|(&x, &y)| addr(&a, x) == addr(&r, y)));
    // A different seed gives a different table.
    let p = SchedParams {
        seed: 1,
        ..SchedParams::default()
    };
    let other = Scheduler::with_params(SchedulerKind::Mh, backends(&weights), p);
    assert_ne!(mh_slots(&a), mh_slots(&other));
}

#[test]
fn mh_removing_one_backend_moves_little_more_than_its_clients() {
    let n = 10;
    let all = backends(&[1; 10]);
    let full = Scheduler::new(SchedulerKind::Mh, all.clone());
    let removed = Scheduler::new(
        SchedulerKind::Mh,
        all.iter().copied().filter(|b| b.slot != 3).collect(),
    );
    let mut q = all.clone();
    q[3].weight = 0;
    let quiesced = Scheduler::new(SchedulerKind::Mh, q);

    let clients = 20_000;
    let before = addr_picks(&full, 5, clients);
    let after = addr_picks(&removed, 5, clients);
    assert_eq!(
        after,
        addr_picks(&quiesced, 5, clients),
        "weight 0 = removed"
    );
    let gone = all[3].addr;
    let own = before.iter().filter(|&&a| a == gone).count();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let collateral = moved - own;
    // Every client of the removed server moves; of the others, Maglev moves only a few.
    assert!(
        (own as f64 - clients as f64 / n as f64).abs() < 0.1 * clients as f64 / n as f64,
        "own share {own}"
    );
    assert!(
        collateral * 100 < clients,
        "moved {moved}, of which {own} had to"
    );
}
