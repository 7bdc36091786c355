//! The state machine against RFC 9568 §6 (and RFC 3768 for v2), in virtual time. Each test is
//! named after the clause it checks; the rest cover what keepalived operators rely on beyond
//! the RFC (sync groups, tracking, preempt_delay, demote/promote, gratuitous ARP policy).

mod sim;

use std::net::IpAddr;
use std::time::Duration;

use sim::{config, ip, Event, Lan, MS};
use vrrp::instance::{Action, Cause, Instance, PeerClaim, State, Uncorroborated};
use vrrp::router::GroupConfig;
use vrrp::wire::{Advert, Version};

const ADV: Duration = Duration::from_millis(100);

/// Master_Down_Interval for priority `p` at interval `adv` (RFC 9568 §6.1).
fn mdi(p: u32, adv: Duration) -> Duration {
    adv * 3 + adv * (256 - p) / 256
}

/// Two nodes: A (priority 200, .2) and B (priority 100, .3), both started, A master.
fn pair(seed: u64) -> (Lan, usize, usize) {
    let mut lan = Lan::new(seed);
    let a = lan.add("a", 2, vec![config("ext", 51, 2, 200, ADV)], vec![]);
    let b = lan.add("b", 3, vec![config("ext", 51, 3, 100, ADV)], vec![]);
    lan.start(a);
    lan.start(b);
    lan.run_for(Duration::from_secs(2));
    assert_eq!(lan.nodes[a].state(0), State::Master);
    assert_eq!(lan.nodes[b].state(0), State::Backup);
    (lan, a, b)
}

#[test]
fn rfc9568_6_1_skew_time_and_master_down_interval() {
    let inst = Instance::new(config("ext", 51, 2, 100, Duration::from_secs(1)));
    // (256 - 100) * 1 s / 256 = 609.375 ms; 3 s + skew.
    assert_eq!(inst.skew_time(), Duration::from_micros(609_375));
    assert_eq!(
        inst.master_down_interval(),
        Duration::from_micros(3_609_375)
    );
    let fast = Instance::new(config("ext", 51, 2, 254, Duration::from_millis(10)));
    assert_eq!(
        fast.master_down_interval(),
        mdi(254, Duration::from_millis(10))
    );
}

#[test]
fn rfc9568_6_4_1_owner_priority_255_starts_as_master() {
    let mut lan = Lan::new(1);
    let a = lan.add("a", 2, vec![config("ext", 51, 2, 255, ADV)], vec![]);
    lan.start(a);
    let t = lan.nodes[a].transitions();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].0, Duration::ZERO);
    assert_eq!(
        (t[0].2, t[0].3, t[0].4.clone()),
        (State::Initialize, State::Master, Cause::Owner)
    );
    assert!(lan.nodes[a].holds[0]);
    // The first advert and gratuitous ARPs go out at once.
    assert_eq!(
        lan.nodes[a].first_garp_after(Duration::ZERO),
        Some(Duration::ZERO)
    );
    assert_eq!(lan.nodes[a].last_advert_sent(), Some(Duration::ZERO));
}

#[test]
fn rfc9568_6_4_1_non_owner_starts_as_backup_and_becomes_master_after_master_down_interval() {
    let mut lan = Lan::new(1);
    let a = lan.add("a", 2, vec![config("ext", 51, 2, 100, ADV)], vec![]);
    lan.start(a);
    assert_eq!(lan.nodes[a].state(0), State::Backup);
    assert!(!lan.nodes[a].holds[0], "a backup never holds the VIPs");
    lan.run_for(Duration::from_secs(1));
    let t = lan.nodes[a].transitions();
    assert_eq!(t[1].3, State::Master);
    assert_eq!(t[1].0, mdi(100, ADV));
    assert_eq!(t[1].4, Cause::MasterDown);
}

#[test]
fn rfc9568_6_4_2_backup_takes_over_master_down_interval_after_the_last_advert() {
    let (mut lan, a, b) = pair(2);
    lan.kill(a);
    let last = lan.nodes[a].last_advert_sent().expect("a advertised");
    lan.run_for(Duration::from_secs(1));
    let t = lan.nodes[b].transitions();
    let (at, _, _, to, cause) = t.last().expect("b moved").clone();
    assert_eq!((to, cause), (State::Master, Cause::MasterDown));
    // Received `delay` after it was sent; down interval from reception.
    assert_eq!(at, last + lan.delay + mdi(100, ADV));
    assert_eq!(lan.nodes[b].first_garp_after(at), Some(at));
    assert_eq!(lan.holders(0), vec![b]);
}

#[test]
fn rfc9568_6_4_2_backup_learns_the_masters_advert_interval() {
    let mut lan = Lan::new(3);
    // A advertises every 50 ms; B is configured with 1 s but must use A's interval.
    let a = lan.add("a", 2, vec![config("ext", 51, 2, 200, 50 * MS)], vec![]);
    let b = lan.add(
        "b",
        3,
        vec![config("ext", 51, 3, 100, Duration::from_secs(1))],
        vec![],
    );
    lan.start(a);
    lan.start(b);
    lan.run_for(Duration::from_secs(5));
    let status = lan.nodes[b].router.instance(0).status();
    assert_eq!(status.master_adver_interval, 50 * MS);
    lan.kill(a);
    let last = lan.nodes[a].last_advert_sent().unwrap();
    lan.run_for(Duration::from_secs(5));
    let t = lan.nodes[b].transitions();
    assert_eq!(t.last().unwrap().0, last + lan.delay + mdi(100, 50 * MS));
}

#[test]
fn rfc3768_7_1_v2_advert_with_another_interval_is_discarded() {
    let mut cfg = config("ext", 51, 3, 100, Duration::from_secs(1));
    cfg.version = Version::V2;
    let mut inst = Instance::new(cfg);
    inst.startup(Duration::ZERO);
    let down_at = inst.poll_timeout();
    let advert = Advert {
        version: Version::V2,
        vrid: 51,
        priority: 200,
        interval_cs: 200,
        addrs: vec![ip(100)],
    };
    inst.handle_advert(Duration::from_millis(500), ip(2), &advert);
    assert_eq!(inst.counters().interval_mismatch, 1);
    assert_eq!(inst.poll_timeout(), down_at, "the down timer was not reset");
    let ok = Advert {
        interval_cs: 100,
        ..advert
    };
    inst.handle_advert(Duration::from_millis(500), ip(2), &ok);
    assert_eq!(
        inst.poll_timeout(),
        Some(Duration::from_millis(500) + inst.master_down_interval())
    );
}

#[test]
fn rfc9568_6_4_2_priority_zero_from_the_master_means_takeover_after_skew_time() {
    let (mut lan, a, b) = pair(4);
    let t0 = lan.now;
    lan.stop(a);
    lan.run_for(Duration::from_secs(1));
    let t = lan.nodes[b].transitions();
    let (at, _, _, to, cause) = t.last().unwrap().clone();
    assert_eq!(to, State::Master);
    assert_eq!(cause, Cause::MasterResigned { from: ip(2) });
    let skew = ADV * (256 - 100) / 256;
    assert_eq!(at, t0 + lan.delay + skew);
}

#[test]
fn rfc9568_6_4_3_shutdown_sends_priority_zero_and_removes_the_vips() {
    let (mut lan, a, _) = pair(5);
    lan.stop(a);
    let log = &lan.nodes[a].log;
    let last_advert = log
        .iter()
        .rev()
        .find_map(|(_, e)| match e {
            Event::Advert { priority, .. } => Some(*priority),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_advert, 0);
    assert!(!lan.nodes[a].holds[0]);
    assert_eq!(lan.nodes[a].state(0), State::Initialize);
}

#[test]
fn rfc9568_6_4_2_preempt_a_lower_priority_master() {
    let mut lan = Lan::new(6);
    let b = lan.add("b", 3, vec![config("ext", 51, 3, 100, ADV)], vec![]);
    lan.start(b);
    lan.run_for(Duration::from_secs(1));
    assert_eq!(lan.nodes[b].state(0), State::Master);
    let a = lan.add("a", 2, vec![config("ext", 51, 2, 200, ADV)], vec![]);
    let t0 = lan.now;
    lan.start(a);
    lan.run_for(Duration::from_secs(1));
    let ta = lan.nodes[a].transitions();
    let (at, _, _, to, cause) = ta.last().unwrap().clone();
    assert_eq!(to, State::Master);
    assert_eq!(
        cause,
        Cause::Preempt {
            from: ip(3),
            priority: 100
        }
    );
    // Lower-priority adverts are discarded, so A takes over when its down timer runs out.
    assert_eq!(at, t0 + mdi(200, ADV));
    let tb = lan.nodes[b].transitions();
    let (bt, _, _, to, cause) = tb.last().unwrap().clone();
    assert_eq!(
        (to, cause),
        (
            State::Backup,
            Cause::HigherPriority {
                from: ip(2),
                priority: 200
            }
        )
    );
    // The dual-master window is one network delay: B yields on A's first advert.
    assert_eq!(bt, at + lan.delay);
    assert_eq!(lan.holders(0), vec![a]);
}

#[test]
fn rfc9568_6_4_2_nopreempt_keeps_a_lower_priority_master() {
    let mut lan = Lan::new(7);
    let b = lan.add("b", 3, vec![config("ext", 51, 3, 100, ADV)], vec![]);
    lan.start(b);
    lan.run_for(Duration::from_secs(1));
    let mut cfg = config("ext", 51, 2, 200, ADV);
    cfg.preempt = false;
    let a = lan.add("a", 2, vec![cfg], vec![]);
    lan.start(a);
    lan.run_for(Duration::from_secs(10));
    assert_eq!(lan.nodes[a].state(0), State::Backup);
    assert_eq!(lan.holders(0), vec![b]);
    assert_eq!(
        lan.nodes[a].transitions().len(),
        1,
        "only Initialize → Backup"
    );
}

#[test]
fn a_held_node_does_not_preempt_until_released_but_still_takes_over_a_silent_master() {
    // Connection sync holds a starting node off preempting until its resync is complete.
    let mut lan = Lan::new(17);
    let b = lan.add("b", 3, vec![config("ext", 51, 3, 100, ADV)], vec![]);
    lan.start(b);
    lan.run_for(Duration::from_secs(1));
    let a = lan.add("a", 2, vec![config("ext", 51, 2, 200, ADV)], vec![]);
    lan.with(a, |r, _| r.hold_preempt(true));
    lan.start(a);
    lan.run_for(Duration::from_secs(10));
    assert_eq!(lan.nodes[a].state(0), State::Backup);
    assert_eq!(lan.holders(0), vec![b]);
    // Released: preempts at the first Master_Down expiry after it.
    let t0 = lan.now;
    lan.with(a, |r, _| r.hold_preempt(false));
    lan.run_for(Duration::from_secs(5));
    let (at, _, _, to, _) = lan.nodes[a].transitions().last().unwrap().clone();
    assert_eq!(to, State::Master);
    assert!(at > t0 && at <= t0 + ADV + mdi(200, ADV), "{at:?}");
    assert_eq!(lan.holders(0), vec![a]);

    // Held again, and the master dies: the held node still takes over (nobody to wait for).
    let mut lan = Lan::new(18);
    let b = lan.add("b", 3, vec![config("ext", 51, 3, 100, ADV)], vec![]);
    let a = lan.add("a", 2, vec![config("ext", 51, 2, 200, ADV)], vec![]);
    lan.start(b);
    lan.run_for(Duration::from_secs(1));
    lan.with(a, |r, _| r.hold_preempt(true));
    lan.start(a);
    lan.run_for(Duration::from_secs(2));
    assert_eq!(lan.holders(0), vec![b]);
    let t0 = lan.now;
    lan.kill(b);
    lan.run_for(Duration::from_secs(5));
    let (at, _, _, to, _) = lan.nodes[a].transitions().last().unwrap().clone();
    assert_eq!(to, State::Master);
    assert!(at <= t0 + mdi(200, ADV) + ADV, "{at:?}");
}

#[test]
fn preempt_delay_tolerates_a_lower_priority_master_for_the_delay() {
    let mut lan = Lan::new(8);
    let b = lan.add("b", 3, vec![config("ext", 51, 3, 100, ADV)], vec![]);
    lan.start(b);
    lan.run_for(Duration::from_secs(1));
    let mut cfg = config("ext", 51, 2, 200, ADV);
    cfg.preempt_delay = Duration::from_secs(3);
    let a = lan.add("a", 2, vec![cfg], vec![]);
    let t0 = lan.now;
    lan.start(a);
    lan.run_for(Duration::from_secs(10));
    let ta = lan.nodes[a].transitions();
    let at = ta.last().unwrap().0;
    assert_eq!(ta.last().unwrap().3, State::Master);
    // Preempts at the first Master_Down expiry after the delay.
    assert!(at >= t0 + Duration::from_secs(3), "{at:?}");
    assert!(
        at <= t0 + Duration::from_secs(3) + mdi(200, ADV) + ADV,
        "{at:?}"
    );
}

#[test]
fn rfc9568_6_4_3_master_yields_to_a_higher_priority_advert() {
    let mut inst = Instance::new(config("ext", 51, 3, 100, ADV));
    inst.startup(Duration::ZERO);
    inst.handle_timeout(Duration::from_secs(1));
    assert_eq!(inst.state(), State::Master);
    while inst.poll_action().is_some() {}
    let advert = Advert {
        version: Version::V3,
        vrid: 51,
        priority: 150,
        interval_cs: 20,
        addrs: vec![ip(100)],
    };
    let now = Duration::from_secs(2);
    inst.handle_advert(now, ip(2), &advert);
    assert_eq!(inst.state(), State::Backup);
    let actions: Vec<Action> = std::iter::from_fn(|| inst.poll_action()).collect();
    assert!(actions.contains(&Action::RemoveVips));
    // v3: the new master's interval (200 ms) is learned for Master_Down_Interval.
    assert_eq!(inst.poll_timeout(), Some(now + mdi(100, 200 * MS)));
}

#[test]
fn rfc9568_6_4_3_equal_priority_tie_break_on_the_primary_address() {
    let mut lan = Lan::new(9);
    let lo = lan.add("lo", 2, vec![config("ext", 51, 2, 100, ADV)], vec![]);
    let hi = lan.add("hi", 3, vec![config("ext", 51, 3, 100, ADV)], vec![]);
    // Both start alone (a partition), both become master, then they meet.
    lan.nodes[hi].side = 1;
    lan.start(lo);
    lan.start(hi);
    lan.run_for(Duration::from_secs(1));
    assert_eq!(lan.holders(0), vec![lo, hi]);
    lan.nodes[hi].side = 0;
    lan.run_for(Duration::from_secs(1));
    assert_eq!(
        lan.holders(0),
        vec![hi],
        "the higher address wins at equal priority"
    );
    let t = lan.nodes[lo].transitions();
    assert_eq!(
        t.last().unwrap().4,
        Cause::HigherPriority {
            from: ip(3),
            priority: 100
        }
    );
}

#[test]
fn rfc9568_6_4_3_master_answers_a_priority_zero_advert_at_once() {
    let mut inst = Instance::new(config("ext", 51, 3, 100, ADV));
    inst.startup(Duration::ZERO);
    inst.handle_timeout(Duration::from_secs(1));
    while inst.poll_action().is_some() {}
    let now = Duration::from_millis(1_010);
    let resign = Advert {
        version: Version::V3,
        vrid: 51,
        priority: 0,
        interval_cs: 10,
        addrs: vec![ip(100)],
    };
    inst.handle_advert(now, ip(2), &resign);
    assert_eq!(
        inst.poll_action(),
        Some(Action::SendAdvert { priority: 100 })
    );
    assert_eq!(inst.poll_timeout(), Some(now + ADV));
    assert_eq!(inst.state(), State::Master);
}

#[test]
fn own_and_other_version_adverts_are_ignored() {
    let mut inst = Instance::new(config("ext", 51, 3, 100, ADV));
    inst.startup(Duration::ZERO);
    let down = inst.poll_timeout();
    let mut advert = Advert {
        version: Version::V3,
        vrid: 51,
        priority: 200,
        interval_cs: 10,
        addrs: vec![ip(100)],
    };
    inst.handle_advert(Duration::from_millis(50), ip(3), &advert);
    advert.version = Version::V2;
    inst.handle_advert(Duration::from_millis(50), ip(2), &advert);
    assert_eq!(inst.poll_timeout(), down);
    assert_eq!(inst.counters().own, 1);
    assert_eq!(inst.counters().wrong_version, 1);
}

/// A priority-255 advert for VRID 51.
fn forged(priority: u8) -> Advert {
    Advert {
        version: Version::V3,
        vrid: 51,
        priority,
        interval_cs: 10,
        addrs: vec![ip(100)],
    }
}

/// The pair of [`pair`] with the sync link up: each node knows the other's address, state
/// and priority.
fn corroborated_pair(seed: u64) -> (Lan, usize, usize) {
    let (mut lan, a, b) = pair(seed);
    let claim = |last: u8, state: State, priority: u8| PeerClaim {
        addr: ip(last),
        state,
        priority,
    };
    lan.with(a, |r, _| {
        r.set_pair_peer(Some(&[(51, claim(3, State::Backup, 100))]))
    });
    lan.with(b, |r, _| {
        r.set_pair_peer(Some(&[(51, claim(2, State::Master, 200))]))
    });
    (lan, a, b)
}

/// Beyond the RFC: forged priority-255 adverts every 100 ms for 5 s, from a third host and
/// then from the backup's own address, move nothing while the sync link says who the peer is
/// and what it advertises. Each node counts them, reports each episode once, and the master
/// answers each at once with its own advert (and one gratuitous ARP burst).
#[test]
fn forged_adverts_the_sync_peer_contradicts_move_nothing() {
    let (mut lan, a, b) = corroborated_pair(21);
    let before = (
        lan.nodes[a].transitions().len(),
        lan.nodes[b].transitions().len(),
    );
    for (src, n) in [(99u8, 50), (3, 50)] {
        for _ in 0..n {
            for node in [a, b] {
                lan.with(node, |r, now| {
                    r.handle_advert(now, 0, ip(src), &forged(255))
                });
            }
            lan.run_for(ADV);
        }
    }
    assert_eq!(lan.nodes[a].state(0), State::Master);
    assert_eq!(lan.nodes[b].state(0), State::Backup);
    assert_eq!(
        (
            lan.nodes[a].transitions().len(),
            lan.nodes[b].transitions().len()
        ),
        before,
        "no transition"
    );
    assert_eq!(lan.holders(0), vec![a]);
    let ca = lan.nodes[a].router.instance(0).counters().clone();
    // From .99 to both; from .3 to A (B's own address is B's own advert: `own`).
    assert_eq!(ca.uncorroborated, 100);
    assert_eq!(
        lan.nodes[b].router.instance(0).counters().uncorroborated,
        50
    );
    let episodes: Vec<IpAddr> = lan.nodes[a]
        .log
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Uncorroborated { from, .. } => Some(*from),
            _ => None,
        })
        .collect();
    assert_eq!(episodes, vec![ip(99), ip(3)], "one event per episode");
}

#[test]
fn why_an_advert_is_not_believed() {
    let mut inst = Instance::new(config("ext", 51, 2, 200, ADV));
    inst.startup(Duration::ZERO);
    inst.handle_timeout(Duration::from_secs(1));
    assert_eq!(inst.state(), State::Master);
    inst.set_pair_peer(Some(PeerClaim {
        addr: ip(3),
        state: State::Backup,
        priority: 100,
    }));
    while inst.poll_action().is_some() {}
    let now = Duration::from_secs(2);
    inst.handle_advert(now, ip(99), &forged(255));
    let actions: Vec<Action> = std::iter::from_fn(|| inst.poll_action()).collect();
    assert_eq!(
        actions[0],
        Action::Uncorroborated {
            from: ip(99),
            priority: 255,
            why: Uncorroborated::UnknownRouter { peer: ip(3) }
        }
    );
    assert!(actions.contains(&Action::SendAdvert { priority: 200 }));
    inst.handle_advert(now + ADV * 10, ip(3), &forged(255));
    assert_eq!(
        inst.poll_action(),
        Some(Action::Uncorroborated {
            from: ip(3),
            priority: 255,
            why: Uncorroborated::PriorityContradicted { claimed: 100 }
        })
    );
    assert_eq!(inst.state(), State::Master);
}

/// What the peer claims is believed: its priority rises above ours (an operator's change,
/// a track back up) and the sync link says so, so its advert wins as the RFC says.
#[test]
fn an_advert_the_sync_peer_claims_is_believed() {
    let (mut lan, a, b) = corroborated_pair(22);
    lan.with(a, |r, _| {
        r.set_pair_peer(Some(&[(
            51,
            PeerClaim {
                addr: ip(3),
                state: State::Backup,
                priority: 250,
            },
        )]))
    });
    lan.with(a, |r, now| r.handle_advert(now, 0, ip(3), &forged(250)));
    assert_eq!(lan.nodes[a].state(0), State::Backup);
    assert_eq!(lan.nodes[a].router.instance(0).counters().uncorroborated, 0);
    let _ = b;
}

/// The master dies while forged adverts go on: the sync link falls silent (no claim now),
/// but the backup still knows its peer's address, so the forger's adverts do not hold it
/// back: it takes over at Master_Down_Interval after the master's last advert.
#[test]
fn a_forger_cannot_hold_the_backup_back_when_the_master_dies() {
    let (mut lan, a, b) = corroborated_pair(23);
    lan.kill(a);
    let last = lan.nodes[a].last_advert_sent().expect("a advertised");
    lan.with(b, |r, _| r.set_pair_peer(None));
    for _ in 0..10 {
        lan.with(b, |r, now| r.handle_advert(now, 0, ip(99), &forged(255)));
        lan.run_for(ADV);
    }
    let t = lan.nodes[b].transitions();
    let (at, _, _, to, cause) = t.last().expect("b moved").clone();
    assert_eq!((to, cause), (State::Master, Cause::MasterDown));
    assert_eq!(at, last + lan.delay + mdi(100, ADV));
}

/// A node with instances "ext" (vrid 51) and "int" (vrid 52) in the sync group "lb".
fn add_grouped(lan: &mut Lan, name: &str, last: u8, priority: u8) -> usize {
    let group = GroupConfig {
        name: "lb".into(),
        members: vec!["ext".into(), "int".into()],
    };
    lan.add(
        name,
        last,
        vec![
            config("ext", 51, last, priority, ADV),
            config("int", 52, last, priority, ADV),
        ],
        vec![group],
    )
}

/// Nodes A (priority 200) and B (100) with [`add_grouped`]'s group, started and settled:
/// A holds both VIPs.
fn grouped_pair(seed: u64) -> (Lan, usize, usize) {
    let mut lan = Lan::new(seed);
    let (a, b) = (
        add_grouped(&mut lan, "a", 2, 200),
        add_grouped(&mut lan, "b", 3, 100),
    );
    lan.start(a);
    lan.start(b);
    lan.run_for(Duration::from_secs(2));
    assert_eq!((lan.holders(0), lan.holders(1)), (vec![a], vec![a]));
    (lan, a, b)
}

#[test]
fn sync_group_members_move_together() {
    let (mut lan, a, b) = grouped_pair(10);
    // A's datapath stops (tracked with weight 0 by both instances): the group faults as a
    // whole and B takes both.
    lan.with(a, |r, now| r.set_track(now, "datapath", false));
    assert_eq!(lan.nodes[a].state(0), State::Fault);
    assert_eq!(lan.nodes[a].state(1), State::Fault);
    lan.run_for(Duration::from_secs(1));
    assert_eq!((lan.holders(0), lan.holders(1)), (vec![b], vec![b]));
    // Recovery: A comes back as backup, preempts, and both move back together.
    lan.with(a, |r, now| r.set_track(now, "datapath", true));
    lan.run_for(Duration::from_secs(2));
    assert_eq!((lan.holders(0), lan.holders(1)), (vec![a], vec![a]));
}

#[test]
fn sync_group_follows_a_member_that_took_over() {
    let mut lan = Lan::new(11);
    let (a, b) = (
        add_grouped(&mut lan, "a", 2, 200),
        add_grouped(&mut lan, "b", 3, 100),
    );
    lan.start(a);
    lan.start(b);
    lan.run_for(Duration::from_secs(2));
    // A dies: the first of B's timers to run out takes its instance over, and the other
    // member follows at the same instant instead of waiting for its own timer.
    lan.kill(a);
    lan.run_for(Duration::from_secs(1));
    let t = lan.nodes[b].transitions();
    let masters: Vec<_> = t.iter().filter(|x| x.3 == State::Master).collect();
    assert_eq!(masters.len(), 2);
    assert_eq!(masters[0].0, masters[1].0, "both at the same instant");
    assert!(matches!(masters[1].4, Cause::Group { .. }));
}

/// Beyond keepalived: a higher-priority master heard on one member's link only (a forged
/// advert with no sync link to contradict it, or a one-sided partition) cannot make the group
/// flap. Without the rule, `ext` yields, the group pulls `int` down, `int` hears nobody and
/// times out, pulls `ext` up, `ext` yields on the next advert: 50 flips in 20 s. With it,
/// both nodes settle as BACKUP within one down interval and stay there, each `int` counting
/// the holds and reporting the episode once; when the forger stops, the real master takes
/// both back.
#[test]
fn a_master_heard_on_one_member_only_does_not_make_the_group_flap() {
    let (mut lan, a, b) = grouped_pair(24);
    let before = lan.nodes[a].transitions().len() + lan.nodes[b].transitions().len();
    // 20 s of priority-255 adverts for vrid 51 every 100 ms, to both nodes.
    let forging = |lan: &mut Lan, secs: u64| {
        for _ in 0..secs * 10 {
            for node in [a, b] {
                lan.with(node, |r, now| r.handle_advert(now, 0, ip(99), &forged(255)));
            }
            lan.run_for(ADV);
        }
    };
    forging(&mut lan, 20);
    let moved = lan.nodes[a].transitions().len() + lan.nodes[b].transitions().len() - before;
    // A's ext yields and its int follows; nothing else moves.
    assert_eq!(moved, 2, "{:?}", lan.nodes[a].transitions());
    for node in [a, b] {
        assert_eq!(lan.nodes[node].state(0), State::Backup);
        assert_eq!(lan.nodes[node].state(1), State::Backup);
        let int = lan.nodes[node].router.instance(1).counters();
        assert!(int.group_held > 100, "held {} times", int.group_held);
        let held: Vec<_> = lan.nodes[node]
            .log
            .iter()
            .filter_map(|(_, e)| match e {
                Event::GroupHeld { instance, by } => Some((instance.clone(), by.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            held,
            vec![("int".to_string(), "ext".to_string())],
            "one report"
        );
    }
    assert!(lan.holders(1).is_empty(), "int is held on both nodes");
    // The forger stops: A, the higher of the two, takes the group back.
    lan.run_for(Duration::from_secs(2));
    assert_eq!((lan.holders(0), lan.holders(1)), (vec![a], vec![a]));
}

#[test]
fn tracking_weight_lowers_priority_and_the_peer_preempts() {
    let mut lan = Lan::new(12);
    let mut cfg = config("ext", 51, 2, 200, ADV);
    cfg.tracks.push(vrrp::instance::Track {
        name: "if:eth1".into(),
        weight: -150,
    });
    let a = lan.add("a", 2, vec![cfg], vec![]);
    let b = lan.add("b", 3, vec![config("ext", 51, 3, 100, ADV)], vec![]);
    lan.start(a);
    lan.start(b);
    lan.run_for(Duration::from_secs(2));
    lan.with(a, |r, now| r.set_track(now, "if:eth1", false));
    assert_eq!(lan.nodes[a].router.instance(0).effective_priority(), 50);
    lan.run_for(Duration::from_secs(1));
    assert_eq!(lan.holders(0), vec![b]);
    lan.with(a, |r, now| r.set_track(now, "if:eth1", true));
    lan.run_for(Duration::from_secs(1));
    assert_eq!(lan.holders(0), vec![a]);
}

#[test]
fn a_master_whose_datapath_stops_resigns_and_the_peer_takes_over_after_skew_time() {
    let (mut lan, a, b) = pair(13);
    let t0 = lan.now;
    lan.with(a, |r, now| r.set_track(now, "datapath", false));
    assert!(!lan.nodes[a].holds[0]);
    lan.run_for(Duration::from_secs(1));
    let t = lan.nodes[b].transitions();
    let (at, _, _, to, cause) = t.last().unwrap().clone();
    assert_eq!(
        (to, cause),
        (State::Master, Cause::MasterResigned { from: ip(2) })
    );
    assert_eq!(at, t0 + lan.delay + ADV * (256 - 100) / 256);
    // While faulted, A never takes the VIPs back, even though B has a lower priority.
    lan.run_for(Duration::from_secs(5));
    assert_eq!(lan.holders(0), vec![b]);
}

#[test]
fn demote_resigns_and_promote_takes_over() {
    let (mut lan, a, b) = pair(14);
    lan.with(a, |r, now| r.demote(now));
    lan.run_for(Duration::from_secs(2));
    assert_eq!(lan.holders(0), vec![b]);
    assert!(lan.nodes[a].router.instance(0).status().demoted);
    // A demoted node does not preempt, but still takes over if the peer dies.
    lan.run_for(Duration::from_secs(5));
    assert_eq!(lan.holders(0), vec![b]);
    lan.with(a, |r, now| r.promote(now));
    lan.run_for(Duration::from_secs(1));
    assert_eq!(lan.holders(0), vec![a]);
    // Promote also works from the lower-priority side: B advertises 254.
    lan.with(b, |r, now| r.promote(now));
    lan.run_for(Duration::from_secs(1));
    assert_eq!(lan.holders(0), vec![b]);
    assert_eq!(lan.nodes[b].router.instance(0).effective_priority(), 254);
}

#[test]
fn gratuitous_arp_burst_second_burst_and_refresh() {
    let mut cfg = config("ext", 51, 2, 255, ADV);
    cfg.garp.repeat = 3;
    cfg.garp.interval = 10 * MS;
    cfg.garp.delay = Duration::from_secs(5);
    cfg.garp.refresh = Duration::from_secs(60);
    let mut lan = Lan::new(15);
    let a = lan.add("a", 2, vec![cfg], vec![]);
    lan.start(a);
    lan.run_for(Duration::from_secs(130));
    let garps: Vec<Duration> = lan.nodes[a]
        .log
        .iter()
        .filter(|(_, e)| matches!(e, Event::Garp { .. }))
        .map(|(t, _)| *t)
        .collect();
    let s = |ms: u64| Duration::from_millis(ms);
    assert_eq!(
        garps,
        vec![
            s(0),
            s(10),
            s(20),
            s(5_000),
            s(5_010),
            s(5_020),
            s(60_000),
            s(60_010),
            s(60_020),
            s(120_000),
            s(120_010),
            s(120_020)
        ]
    );
}

#[test]
fn partition_makes_two_masters_and_healing_keeps_the_higher_with_a_fresh_garp() {
    let (mut lan, a, b) = pair(16);
    lan.nodes[b].side = 1;
    lan.run_for(Duration::from_secs(2));
    assert_eq!(lan.holders(0), vec![a, b], "two masters while partitioned");
    lan.nodes[b].side = 0;
    let heal = lan.now;
    lan.run_for(Duration::from_secs(1));
    assert_eq!(lan.holders(0), vec![a]);
    let tb = lan.nodes[b].transitions();
    let (bt, _, _, to, _) = tb.last().unwrap().clone();
    assert_eq!(to, State::Backup);
    // B yields on A's first advert after the heal.
    assert!(bt <= heal + ADV + lan.delay, "{bt:?}");
    // A heard B's lower-priority advert: it re-asserts and refreshes the neighbours' caches.
    let dual = lan.nodes[a]
        .log
        .iter()
        .find(|(t, e)| *t >= heal && matches!(e, Event::DualMaster { .. }))
        .map(|(t, _)| *t)
        .expect("dual master detected");
    assert_eq!(lan.nodes[a].first_garp_after(heal), Some(dual));
}

/// Under loss and jitter, a backup takes over only when it really heard nothing for
/// Master_Down_Interval, yields on the first advert of the higher-priority master that
/// reaches it, and the right node ends up master.
#[test]
fn seeded_loss_and_jitter_only_justified_takeovers_and_convergence() {
    let mut total_takeovers = 0;
    for seed in 0..20 {
        let mut lan = Lan::new(100 + seed);
        lan.loss = 0.15;
        lan.jitter = 3 * MS;
        let adv = 10 * MS;
        let a = lan.add("a", 2, vec![config("ext", 51, 2, 200, adv)], vec![]);
        let b = lan.add("b", 3, vec![config("ext", 51, 3, 100, adv)], vec![]);
        lan.start(a);
        lan.start(b);
        lan.run_for(Duration::from_secs(60));
        let log = &lan.nodes[b].log;
        let mut last_rx = Duration::ZERO;
        let mut master_since = None;
        for (t, e) in log {
            match e {
                Event::Received { .. } => {
                    last_rx = *t;
                    if let Some(since) = master_since.take() {
                        let yielded = log.iter().any(|(tt, ee)| {
                            *tt == *t
                                && matches!(
                                    ee,
                                    Event::Transition {
                                        to: State::Backup,
                                        ..
                                    }
                                )
                        });
                        assert!(
                            yielded,
                            "seed {seed}: master since {since:?}, heard A at {t:?}"
                        );
                    }
                }
                Event::Transition {
                    to: State::Master,
                    cause,
                    ..
                } => {
                    total_takeovers += 1;
                    master_since = Some(*t);
                    assert_eq!(*cause, Cause::MasterDown, "seed {seed}");
                    assert!(
                        *t - last_rx >= mdi(100, adv),
                        "seed {seed}: takeover at {t:?} after rx {last_rx:?}"
                    );
                }
                _ => {}
            }
        }
        lan.loss = 0.0;
        lan.run_for(Duration::from_secs(1));
        assert_eq!(lan.holders(0), vec![a], "seed {seed}");
    }
    // 15 % loss makes three lost adverts in a row common enough that the checks above ran.
    assert!(total_takeovers > 20, "{total_takeovers}");
}
