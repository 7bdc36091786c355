use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::tcp_flags::{ACK, FIN, PSH, RST, SYN};
use super::*;
use crate::model::{Mode, Protocol, Timeouts};
use crate::stats::RealRegistry;

use ConnState::*;
use Direction::{In, Out};

fn sa(a: u8, b: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, a, b), port)
}

fn vip() -> SocketAddrV4 {
    sa(0, 10, 80)
}

fn conn(proto: Protocol, mode: Mode, client: SocketAddrV4, real_slot: u16) -> NewConn {
    NewConn {
        proto,
        mode,
        client,
        vip: vip(),
        real: sa(1, 10 + real_slot as u8, 8080),
        local: None,
        proxy: None,
        service: 1,
        real_slot,
        flags: 0,
    }
}

fn tcp(mode: Mode, client: SocketAddrV4) -> NewConn {
    conn(Protocol::Tcp, mode, client, 0)
}

fn table(capacity: u32, shards: usize) -> (ConnTable, Arc<RealRegistry>) {
    let reals = Arc::new(RealRegistry::new(8));
    let t = ConnTable::with_hasher(
        capacity,
        shards,
        Timeouts::default(),
        reals.clone(),
        Hasher::from_seeds([1, 2, 3, 4]),
    );
    (t, reals)
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Change>>);

impl ConnObserver for Recorder {
    fn on_change(&self, change: &Change) {
        self.0.lock().expect("recorder lock").push(*change);
    }
}

impl Recorder {
    fn take(&self) -> Vec<Change> {
        std::mem::take(&mut *self.0.lock().expect("recorder lock"))
    }
}

fn observed_table() -> (ConnTable, Arc<RealRegistry>, Arc<Recorder>) {
    let (mut t, reals) = table(1024, 4);
    let rec = Arc::new(Recorder::default());
    t.set_observer(rec.clone());
    (t, reals, rec)
}

/// (active, inactive, conns) of real slot 0.
fn real0(reals: &RealRegistry) -> (u32, u32, u64) {
    let r = reals.get(0);
    (
        r.active.load(Ordering::Relaxed),
        r.inactive.load(Ordering::Relaxed),
        r.conns.load(Ordering::Relaxed),
    )
}

/// Inserts `new` and feeds it `steps` (direction, flags), checking the state after each.
fn run(t: &ConnTable, new: &NewConn, steps: &[(Direction, u8, ConnState)]) -> EntryId {
    let mut g = t.shard_for(new.client);
    let id = g.insert(new, 0).expect("insert");
    for (i, &(dir, flags, want)) in steps.iter().enumerate() {
        g.update(id, dir, flags, 60, 1);
        assert_eq!(g.entry(id).state(), want, "step {i}: {dir:?} {flags:#04x}");
    }
    id
}

#[test]
fn conn_entry_fits_its_size_budget() {
    assert_eq!(std::mem::size_of::<ConnEntry>(), 56);
    assert!(std::mem::size_of::<ConnEntry>() <= 64);
}

#[test]
fn memory_per_entry_at_capacity_is_at_most_96_bytes() {
    // Sizes that once hit the worst of a power-of-two index (367_002: cells ≈ 5.7 × entries).
    for (capacity, shards) in [
        (1000, 4),
        (65_536, 1),
        (367_002, 1),
        (1 << 20, 8),
        (100_000, 3),
    ] {
        let (t, _) = table(capacity, shards);
        let b = t.bytes_per_entry();
        assert!(
            b <= 96,
            "{capacity} entries in {shards} shards: {b} bytes/entry"
        );
    }
}

#[test]
fn insert_then_lookup_by_inbound_and_reply_key() {
    let (t, _) = table(64, 2);
    let new = tcp(Mode::Nat, sa(9, 1, 40000));
    let mut g = t.shard_for(new.client);
    let id = g.insert(&new, 5).expect("insert");
    assert_eq!(g.get_in(&new.flow_key(), 5), Some(id));
    assert_eq!(g.get_reply(&new.reply_key(), 5), Some(id));
    let e = g.entry(id);
    assert_eq!(
        (e.client(), e.vip(), e.real()),
        (new.client, new.vip, new.real)
    );
    assert_eq!(
        (e.proto(), e.mode(), e.state()),
        (Protocol::Tcp, Mode::Nat, SynRecv)
    );
    assert_eq!(e.local(), None);
    assert_eq!(e.expiry(), 5 + 60);
    // The reply key is not an inbound key, nor the other way round.
    let r = new.reply_key();
    let swapped = FlowKey {
        proto: r.proto,
        client: r.real,
        vip: r.peer,
    };
    assert_eq!(g.get_in(&swapped, 5), None);
    let other_port = FlowKey {
        vip: sa(0, 10, 443),
        ..new.flow_key()
    };
    assert_eq!(g.get_in(&other_port, 5), None);
}

#[test]
fn fullnat_reply_is_keyed_by_local_address() {
    let (t, _) = table(64, 1);
    let local = sa(2, 1, 5000);
    let new = NewConn {
        local: Some(local),
        mode: Mode::FullNat,
        ..tcp(Mode::FullNat, sa(9, 1, 1))
    };
    let mut g = t.shard_for(new.client);
    let id = g.insert(&new, 0).expect("insert");
    assert_eq!(g.entry(id).local(), Some(local));
    assert_eq!(g.entry(id).reply_key().peer, local);
    let by_local = ReplyKey {
        proto: Protocol::Tcp,
        real: new.real,
        peer: local,
    };
    assert_eq!(g.get_reply(&by_local, 0), Some(id));
    let by_client = ReplyKey {
        peer: new.client,
        ..by_local
    };
    assert_eq!(g.get_reply(&by_client, 0), None);
}

#[test]
fn duplicate_inbound_or_reply_tuple_is_refused() {
    let (t, _) = table(64, 1);
    let new = tcp(Mode::Nat, sa(9, 1, 1));
    let mut g = t.shard(0);
    let id = g.insert(&new, 0).expect("insert");
    assert_eq!(g.insert(&new, 0), Err(InsertError::Exists(id)));
    // Same client port to another VIP port, scheduled to the same real: replies ambiguous.
    let other_vip = NewConn {
        vip: sa(0, 10, 443),
        ..new
    };
    assert_eq!(g.insert(&other_vip, 0), Err(InsertError::ReplyInUse(id)));
    // Once the first has expired, the tuple is free again.
    assert!(g.insert(&other_vip, 1000).is_ok());
}

#[test]
fn nat_handshake_and_client_close_walk_the_states() {
    let (t, reals) = table(64, 2);
    let new = tcp(Mode::Nat, sa(9, 1, 1));
    run(
        &t,
        &new,
        &[
            (In, SYN, SynRecv),
            (Out, SYN | ACK, SynRecv),
            (In, ACK, Established),
            (In, PSH | ACK, Established),
            (Out, ACK, Established),
            (In, FIN | ACK, FinWait),
            (Out, ACK, FinWait),
            (Out, FIN | ACK, TimeWait),
            (In, ACK, TimeWait),
        ],
    );
    assert_eq!(real0(&reals), (0, 1, 1));
}

#[test]
fn nat_server_closing_first_goes_through_close_wait() {
    let (t, _) = table(64, 2);
    run(
        &t,
        &tcp(Mode::Nat, sa(9, 1, 1)),
        &[
            (In, SYN, SynRecv),
            (Out, SYN | ACK, SynRecv),
            (In, ACK, Established),
            (Out, FIN | ACK, CloseWait),
            (In, ACK, CloseWait),
            (In, FIN | ACK, TimeWait),
            (Out, ACK, TimeWait),
        ],
    );
}

#[test]
fn simultaneous_close_ends_in_time_wait() {
    let (t, _) = table(64, 2);
    run(
        &t,
        &tcp(Mode::Nat, sa(9, 1, 1)),
        &[
            (In, SYN, SynRecv),
            (Out, SYN | ACK, SynRecv),
            (In, ACK, Established),
            (In, FIN | ACK, FinWait),
            (Out, FIN | ACK, TimeWait),
            (In, ACK, TimeWait),
            (Out, ACK, TimeWait),
        ],
    );
}

#[test]
fn server_alone_cannot_complete_the_handshake() {
    let (t, _) = table(64, 2);
    run(
        &t,
        &tcp(Mode::Nat, sa(9, 1, 1)),
        &[
            (In, SYN, SynRecv),
            (Out, SYN | ACK, SynRecv),
            (Out, ACK, SynRecv),
        ],
    );
}

#[test]
fn dr_input_only_tracks_the_client_side() {
    let (t, reals) = table(64, 2);
    let new = tcp(Mode::Dr, sa(9, 1, 1));
    let id = run(
        &t,
        &new,
        &[
            (In, SYN, SynRecv),
            (In, ACK, Established),
            (In, PSH | ACK, Established),
            (In, FIN | ACK, FinWait),
            (In, ACK, FinWait),
        ],
    );
    let mut g = t.shard_for(new.client);
    assert_eq!(g.entry(id).packets_in(), 5);
    assert_eq!(g.entry(id).packets_out(), 0);
    g.update(id, In, RST, 40, 2);
    assert_eq!(g.entry(id).state(), Close);
    assert_eq!(g.entry(id).expiry(), 2 + 10);
    assert_eq!(real0(&reals), (0, 1, 1));
}

#[test]
fn rst_either_way_closes_an_established_flow() {
    for dir in [In, Out] {
        let (t, reals) = table(64, 1);
        run(
            &t,
            &tcp(Mode::Nat, sa(9, 1, 1)),
            &[
                (In, SYN, SynRecv),
                (Out, SYN | ACK, SynRecv),
                (In, ACK, Established),
                (dir, RST, Close),
            ],
        );
        assert_eq!(real0(&reals), (0, 1, 1));
    }
}

#[test]
fn client_syn_after_time_wait_reopens_the_entry() {
    let (t, reals) = table(64, 2);
    let new = tcp(Mode::Nat, sa(9, 1, 1));
    let id = run(
        &t,
        &new,
        &[
            (In, SYN, SynRecv),
            (Out, SYN | ACK, SynRecv),
            (In, ACK, Established),
            (In, FIN, FinWait),
            (Out, FIN, TimeWait),
            (In, ACK, TimeWait),
        ],
    );
    let mut g = t.shard_for(new.client);
    assert!(g.entry(id).state().reopens_on_syn());
    let tr = g.update(id, In, SYN, 60, 3);
    assert!(tr.reopened() && tr.changed());
    assert_eq!((tr.old, tr.new), (TimeWait, SynRecv));
    assert_eq!(g.entry(id).packets_in(), 1);
    assert_eq!(g.entry(id).packets_out(), 0);
    assert_eq!(
        real0(&reals),
        (0, 1, 2),
        "a reopened flow is a new connection"
    );
    g.update(id, Out, SYN | ACK, 60, 3);
    assert_eq!(g.update(id, In, ACK, 60, 3).new, Established);
    assert_eq!(real0(&reals), (1, 0, 2));
}

#[test]
fn active_and_inactive_counters_follow_state_and_delete() {
    let (t, reals) = table(64, 2);
    let a = tcp(Mode::Nat, sa(9, 1, 1));
    let b = tcp(Mode::Nat, sa(9, 1, 2));
    let udp = conn(Protocol::Udp, Mode::Nat, sa(9, 1, 3), 0);
    let ida = run(
        &t,
        &a,
        &[
            (In, SYN, SynRecv),
            (Out, SYN | ACK, SynRecv),
            (In, ACK, Established),
        ],
    );
    run(&t, &b, &[(In, SYN, SynRecv)]);
    run(&t, &udp, &[(In, 0, Udp), (Out, 0, Udp)]);
    assert_eq!(real0(&reals), (1, 2, 3));
    let mut g = t.shard_for(a.client);
    g.update(ida, In, FIN, 60, 2);
    drop(g);
    assert_eq!(real0(&reals), (0, 3, 3));
    t.shard_for(udp.client)
        .remove_in(&udp.flow_key())
        .expect("udp entry");
    t.shard_for(a.client)
        .remove_in(&a.flow_key())
        .expect("a entry");
    t.shard_for(b.client)
        .remove_in(&b.flow_key())
        .expect("b entry");
    assert_eq!(real0(&reals), (0, 0, 3));
    // A counter reset by the control plane must not make deletes wrap around.
    let id = run(&t, &a, &[(In, SYN, SynRecv)]);
    reals.get(0).reset();
    t.shard_for(a.client)
        .remove(id, DeleteCause::Removed)
        .expect("entry");
    assert_eq!(real0(&reals), (0, 0, 0));
}

#[test]
fn lookup_after_expiry_misses_and_reports_expired() {
    let (t, reals, rec) = observed_table();
    let new = conn(Protocol::Udp, Mode::Nat, sa(9, 1, 1), 0);
    let mut g = t.shard_for(new.client);
    let id = g.insert(&new, 100).expect("insert");
    g.update(id, In, 0, 10, 100);
    assert_eq!(g.entry(id).expiry(), 400);
    g.update(id, Out, 0, 10, 250);
    assert_eq!(
        g.entry(id).expiry(),
        550,
        "each packet refreshes the expiry"
    );
    assert_eq!(g.get_in(&new.flow_key(), 549), Some(id));
    assert_eq!(g.get_reply(&new.reply_key(), 550), None);
    assert_eq!(g.get_in(&new.flow_key(), 550), None);
    assert!(g.is_empty());
    drop(g);
    let changes = rec.take();
    assert!(
        matches!(changes[..], [Change::Insert(_), Change::Refresh(r), Change::Delete(e, DeleteCause::Expired)] if r.expiry() == 550 && e.packets_out() == 1),
        "the expiry moved on by half the UDP timeout: one refresh; got {changes:?}"
    );
    assert_eq!(
        t.counters(),
        TableCounters {
            inserts: 1,
            deletes: 1,
            expired: 1,
            full: 0
        }
    );
    assert_eq!(real0(&reals), (0, 0, 1));
}

#[test]
fn expiry_uses_the_timeout_of_the_new_state() {
    let (t, _) = table(64, 1);
    let new = tcp(Mode::Nat, sa(9, 1, 1));
    let mut g = t.shard(0);
    let id = g.insert(&new, 0).expect("insert");
    let expect = [(SYN, 60), (ACK, 900), (FIN, 120), (RST, 10)];
    for (flags, timeout) in expect {
        g.update(id, In, flags, 60, 1000);
        assert_eq!(g.entry(id).expiry(), 1000 + timeout, "after {flags:#04x}");
    }
    drop(g);
    t.set_timeouts(Timeouts {
        close: Duration::from_secs(3),
        ..Timeouts::default()
    });
    let mut g = t.shard(0);
    g.update(id, In, ACK, 60, 2000);
    assert_eq!(g.entry(id).expiry(), 2003);
}

#[test]
fn sweep_removes_expired_entries_incrementally() {
    let (t, _, rec) = observed_table();
    for port in 0..200 {
        let new = conn(Protocol::Udp, Mode::Nat, sa(9, 1, port), 0);
        let now = if port % 2 == 0 { 0 } else { 100 };
        t.shard_for(new.client).insert(&new, now).expect("insert");
    }
    rec.take();
    assert_eq!(t.sweep(300, 0), 0);
    let mut removed = 0;
    let mut calls = 0;
    while removed < 100 {
        removed += t.sweep(300, 100);
        calls += 1;
        assert!(calls <= t.capacity() / 100 + 1, "sweep must make progress");
    }
    assert_eq!(removed, 100);
    assert_eq!(
        t.sweep(300, usize::MAX),
        0,
        "the others are not expired yet"
    );
    assert_eq!(t.len(), 100);
    let changes = rec.take();
    assert_eq!(changes.len(), 100);
    assert!(changes.iter().all(
        |c| matches!(c, Change::Delete(e, DeleteCause::Expired) if e.client().port() % 2 == 0)
    ));
    assert_eq!(t.sweep(400, usize::MAX), 100);
    assert!(t.is_empty());
    assert_eq!(t.counters().expired, 200);
}

#[test]
fn observer_sees_inserts_state_changes_and_deletes_but_not_every_packet() {
    let (t, _, rec) = observed_table();
    let new = tcp(Mode::Nat, sa(9, 1, 1));
    let mut g = t.shard_for(new.client);
    let id = g.insert(&new, 0).expect("insert");
    g.update(id, In, SYN, 60, 0);
    g.update(id, Out, SYN | ACK, 60, 0);
    g.update(id, In, ACK, 60, 0);
    g.update(id, In, PSH | ACK, 60, 0);
    g.remove(id, DeleteCause::Removed).expect("entry");
    assert_eq!(g.remove(id, DeleteCause::Removed), None);
    drop(g);
    let changes = rec.take();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(matches!(changes[0], Change::Insert(e) if e.state() == SynRecv));
    assert!(
        matches!(changes[1], Change::Update(e) if e.state() == Established && e.packets_in() == 2)
    );
    assert!(matches!(changes[2], Change::Delete(e, DeleteCause::Removed) if e.packets_in() == 3));

    let other = tcp(Mode::Nat, sa(9, 1, 2));
    t.shard_for(other.client).insert(&other, 0).expect("insert");
    assert_eq!(t.flush(), 1);
    assert!(matches!(
        rec.take()[..],
        [Change::Insert(_), Change::Delete(_, DeleteCause::Reset)]
    ));
}

#[test]
fn insert_past_capacity_is_refused_and_counted_without_eviction() {
    let (t, _) = table(100, 1);
    let clients: Vec<_> = (0..100).map(|p| sa(9, 1, p)).collect();
    for &c in &clients {
        t.shard(0).insert(&tcp(Mode::Nat, c), 0).expect("room left");
    }
    let extra = tcp(Mode::Nat, sa(9, 2, 1));
    assert_eq!(t.shard(0).insert(&extra, 0), Err(InsertError::Full));
    assert_eq!(t.shard(0).insert(&extra, 0), Err(InsertError::Full));
    assert_eq!(t.counters().full, 2);
    assert_eq!(t.len(), 100);
    let mut g = t.shard(0);
    for &c in &clients {
        let n = tcp(Mode::Nat, c);
        assert!(g.get_in(&n.flow_key(), 1).is_some());
        assert!(g.get_reply(&n.reply_key(), 1).is_some());
    }
    // Freeing one slot makes room for exactly one.
    g.remove_in(&tcp(Mode::Nat, clients[42]).flow_key())
        .expect("entry");
    assert!(g.insert(&extra, 1).is_ok());
    assert_eq!(
        g.insert(&tcp(Mode::Nat, clients[42]), 1),
        Err(InsertError::Full)
    );
}

#[test]
fn snapshot_visits_every_live_entry_once() {
    let (t, _) = table(1000, 4);
    for p in 0..300 {
        let new = tcp(Mode::Nat, sa(9, 1, p));
        t.shard_for(new.client).insert(&new, 0).expect("insert");
    }
    let mut ports = Vec::new();
    t.snapshot(|e| ports.push(e.client().port()));
    ports.sort_unstable();
    assert_eq!(ports, (0..300).collect::<Vec<_>>());
}

/// xorshift64*: deterministic, dependency-free randomness for the model test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_inserts_and_deletes_match_a_hashmap_model() {
    // Small shards filled to the brim: long probe runs, wrap-around and many backward shifts.
    let (t, _) = table(256, 4);
    let per_shard = t.capacity() / t.shard_count();
    let mut model: HashMap<FlowKey, NewConn> = HashMap::new();
    let mut per_shard_len = vec![0usize; t.shard_count()];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for op in 0..40_000 {
        // A small key space makes re-inserts and removals of present keys common.
        let client = sa(9, rng.below(4) as u8, rng.below(150) as u16);
        let mut new = conn(Protocol::Tcp, Mode::Nat, client, rng.below(3) as u16);
        new.vip = sa(0, 10, 80 + rng.below(2) as u16);
        let key = new.flow_key();
        let shard = t.shard_index(client);
        let mut g = t.shard_for(client);
        if rng.below(2) == 0 {
            let present = model.contains_key(&key);
            let reply_taken = model.values().any(|m| m.reply_key() == new.reply_key());
            let got = g.insert(&new, 0);
            if present {
                assert!(matches!(got, Err(InsertError::Exists(_))), "op {op}");
            } else if reply_taken {
                assert!(matches!(got, Err(InsertError::ReplyInUse(_))), "op {op}");
            } else if per_shard_len[shard] == per_shard {
                assert_eq!(got, Err(InsertError::Full), "op {op}");
            } else {
                assert!(got.is_ok(), "op {op}: {got:?}");
                model.insert(key, new);
                per_shard_len[shard] += 1;
            }
        } else {
            let got = g.remove_in(&key);
            assert_eq!(
                got.map(|e| e.flow_key()),
                model.remove(&key).map(|m| m.flow_key())
            );
            if got.is_some() {
                per_shard_len[shard] -= 1;
            }
        }
        drop(g);
        if op % 1000 == 999 {
            for m in model.values() {
                let mut g = t.shard_for(m.client);
                let id = g.get_in(&m.flow_key(), 0).expect("inbound key findable");
                assert_eq!(
                    g.get_reply(&m.reply_key(), 0),
                    Some(id),
                    "reply key findable"
                );
                assert_eq!(g.entry(id).real(), m.real);
            }
            assert_eq!(t.len(), model.len());
        }
    }
    assert!(
        t.counters().full > 0,
        "the test should have hit full shards"
    );
}

#[test]
fn workers_on_same_and_different_shards_keep_the_table_consistent() {
    let reals = Arc::new(RealRegistry::new(8));
    let t = Arc::new(ConnTable::new(4096, 4, Timeouts::default(), reals.clone()));
    let threads: Vec<_> = (0..4u8)
        .map(|w| {
            let t = t.clone();
            std::thread::spawn(move || {
                for round in 0..200u16 {
                    // Own flows (spread over shards) and one client shared by all workers.
                    let mut flows: Vec<NewConn> = (0..8)
                        .map(|i| conn(Protocol::Tcp, Mode::Nat, sa(10 + w, i, round), 1))
                        .collect();
                    let mut shared = conn(Protocol::Tcp, Mode::Nat, sa(99, 0, 1000), 1);
                    shared.vip = sa(0, 10, 1000 + u16::from(w));
                    shared.real = sa(1, 20 + w, 8080);
                    flows.push(shared);
                    for f in &flows {
                        let mut g = t.shard_for(f.client);
                        let id = g.insert(f, 0).expect("room");
                        g.update(id, In, SYN, 60, 0);
                        g.update(id, Out, SYN | ACK, 60, 0);
                        g.update(id, In, ACK, 60, 0);
                    }
                    for f in &flows {
                        let mut g = t.shard_for(f.client);
                        let id = g.get_reply(&f.reply_key(), 1).expect("present");
                        assert_eq!(g.entry(id).state(), Established);
                        g.remove(id, DeleteCause::Removed).expect("removed once");
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().expect("worker panicked");
    }
    assert!(t.is_empty());
    let c = t.counters();
    assert_eq!((c.inserts, c.deletes), (4 * 200 * 9, 4 * 200 * 9));
    let r = reals.get(1);
    assert_eq!(r.active.load(Ordering::Relaxed), 0);
    assert_eq!(r.inactive.load(Ordering::Relaxed), 0);
    assert_eq!(r.packets_in.load(Ordering::Relaxed), 4 * 200 * 9 * 2);
}

#[test]
fn a_refresh_is_reported_once_per_half_timeout_of_expiry_moved() {
    let (t, _reals, rec) = observed_table();
    let new = conn(Protocol::Udp, Mode::Nat, sa(9, 2, 1), 0);
    let mut g = t.shard_for(new.client);
    let id = g.insert(&new, 100).expect("insert");
    // UDP timeout 300 s: packets every 10 s refresh the replica every 150 s of expiry.
    for now in (100..=700).step_by(10) {
        g.update(id, In, 0, 10, now);
    }
    drop(g);
    let refreshes: Vec<u32> = rec
        .take()
        .iter()
        .filter_map(|c| match c {
            Change::Refresh(e) => Some(e.expiry()),
            _ => None,
        })
        .collect();
    assert_eq!(refreshes, [550, 700, 850, 1000]);
}

#[test]
fn install_adds_a_replica_and_brings_an_existing_entry_up_to_date() {
    let (t, reals, rec) = observed_table();
    let new = conn(Protocol::Tcp, Mode::Nat, sa(9, 3, 1), 0);
    let mut g = t.shard_for(new.client);
    let id = g
        .install(&new, ConnState::Established, 1000, false)
        .expect("install");
    let e = *g.entry(id);
    assert!(e.is_replica());
    assert_eq!((e.state(), e.expiry()), (Established, 1000));
    assert_eq!(
        real0(&reals),
        (1, 0, 1),
        "an established replica counts as active"
    );
    // The same flow again, now closing: in place, same slot.
    let again = g
        .install(&new, ConnState::FinWait, 1100, false)
        .expect("install");
    assert_eq!(again, id);
    assert_eq!(g.entry(id).state(), FinWait);
    assert_eq!(real0(&reals), (0, 1, 1));
    // Moved to another real server by the peer: replaced.
    let moved = NewConn {
        real: sa(1, 99, 8080),
        real_slot: 1,
        ..new
    };
    let id2 = g
        .install(&moved, ConnState::Established, 1200, false)
        .expect("install");
    assert_eq!(g.entry(id2).real(), moved.real);
    assert_eq!(g.len(), 1);
    // A packet here adopts it: no longer a replica, reported as an update.
    rec.take();
    g.update(id2, In, tcp_flags::ACK, 60, 500);
    assert!(!g.entry(id2).is_replica());
    drop(g);
    assert!(matches!(rec.take()[..], [Change::Update(e)] if !e.is_replica()));
}

/// The peer's update of a flow the XDP map holds keeps the FAST mark, so that the fast
/// path's observer hears of the flow leaving eligibility and takes its rows out.
#[test]
fn install_in_place_keeps_the_fast_mark() {
    let (t, _reals, rec) = observed_table();
    let new = conn(Protocol::Tcp, Mode::FullNat, sa(9, 5, 1), 0);
    let mut g = t.shard_for(new.client);
    let id = g
        .install(&new, ConnState::Established, 1000, true)
        .expect("install");
    assert!(g.set_fast(&new.flow_key(), true));
    rec.take();
    let again = g
        .install(&new, ConnState::TimeWait, 1100, false)
        .expect("install");
    assert_eq!(again, id);
    let e = *g.entry(id);
    assert!(e.is_fast() && e.is_replica(), "{:#04x}", e.flags);
    assert_eq!(
        e.flags & ConnEntry::SYNC_MARK,
        0,
        "the mark is the new resync's"
    );
    drop(g);
    assert!(matches!(rec.take()[..], [Change::Update(e)] if e.is_fast() && e.state() == TimeWait));
}

#[test]
fn install_removes_an_entry_holding_the_same_reply_tuple() {
    let (t, _reals, _rec) = observed_table();
    let a = conn(Protocol::Tcp, Mode::Nat, sa(9, 4, 1), 0);
    // Same client and real server through another VIP: same reply tuple.
    let b = NewConn {
        vip: sa(0, 11, 80),
        ..a
    };
    let mut g = t.shard_for(a.client);
    g.insert(&a, 10).expect("insert");
    let id = g
        .install(&b, ConnState::SynRecv, 100, false)
        .expect("install");
    assert_eq!(g.len(), 1);
    assert_eq!(g.entry(id).vip(), b.vip);
    assert_eq!(g.get_in(&a.flow_key(), 20), None);
}

#[test]
fn scan_visits_every_live_entry_once_in_paced_steps() {
    let (t, _reals) = table(4096, 8);
    for i in 0..1000u16 {
        let c = conn(
            Protocol::Udp,
            Mode::Nat,
            sa(9, (i % 250) as u8, 1000 + i),
            0,
        );
        t.shard_for(c.client).insert(&c, 1).expect("insert");
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor = Some(0);
    let mut steps = 0;
    while let Some(c) = cursor {
        let mut n = 0;
        cursor = t.scan(c, 37, |e| {
            n += 1;
            assert!(seen.insert(e.flow_key()), "seen twice");
        });
        assert!(n <= 37);
        steps += 1;
    }
    assert_eq!(seen.len(), 1000);
    assert!(steps >= 1000 / 37);
}

#[test]
fn sweep_replicas_removes_the_replicas_a_resync_did_not_renew() {
    let (t, _reals) = table(1024, 4);
    let c = |i: u8| conn(Protocol::Tcp, Mode::Nat, sa(9, i, 1), 0);
    // Replicas of an old resync (mark false), one renewed by the new one (mark true), one
    // adopted by a packet here, one local flow.
    for i in 1..=3 {
        t.shard_for(c(i).client)
            .install(&c(i), Established, 1000, false)
            .expect("install");
    }
    t.shard_for(c(2).client)
        .install(&c(2), Established, 1000, true)
        .expect("install");
    {
        let mut g = t.shard_for(c(3).client);
        let id = g.get_in(&c(3).flow_key(), 10).expect("replica");
        g.update(id, In, ACK, 60, 10);
    }
    t.shard_for(c(4).client).insert(&c(4), 10).expect("insert");
    assert_eq!(t.replicas(), 2);
    assert_eq!(t.sweep_replicas(true), 1);
    assert_eq!(t.len(), 3);
    assert!(t
        .shard_for(c(1).client)
        .get_in(&c(1).flow_key(), 10)
        .is_none());
}

#[test]
fn adopted_replicas_are_local_and_no_sweep_takes_them() {
    let (t, _reals) = table(1024, 4);
    let c = |i: u8| conn(Protocol::Tcp, Mode::Nat, sa(9, i, 1), 0);
    // Replicas of both marks and one local flow.
    for i in 1..=4 {
        t.shard_for(c(i).client)
            .install(&c(i), Established, 1000, i % 2 == 0)
            .expect("install");
    }
    t.shard_for(c(5).client).insert(&c(5), 10).expect("insert");
    assert_eq!(t.replicas(), 4);
    assert_eq!(t.adopt_replicas(), 4);
    assert_eq!(t.replicas(), 0);
    // Neither mark sweeps anything now: every entry is this node's.
    assert_eq!(t.sweep_replicas(true), 0);
    assert_eq!(t.sweep_replicas(false), 0);
    assert_eq!(t.len(), 5);
    assert_eq!(t.adopt_replicas(), 0);
}
