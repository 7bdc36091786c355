//! The adapter between the forwarder's table and the session: what the change queue streams,
//! and how the peer's entries become replicas (service and real-server slot looked up here,
//! expiry on this node's clock and timeouts, no echo back, sweep after a resync).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use forwarder::conntrack::{ConnState, ConnTable, DeleteCause, FlowKey, NewConn};
use forwarder::engine::{Engine, ServiceTable};
use forwarder::model::{Mode, Protocol, RealServer, SchedulerKind, Timeouts, VirtualService};
use forwarder::sched::PersistTable;
use forwarder::stats::RealRegistry;
use syncd::adapter::{to_wire, ChangeQueue, ReplicaCounters, Replicas};
use syncd::session::Apply;
use syncd::wire::{Entry, Op};

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 100), 80);

fn real(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 10 + i), 8080)
}

struct Node {
    engine: Arc<Engine>,
    queue: Arc<ChangeQueue>,
    replicas: Replicas,
    counters: Arc<ReplicaCounters>,
}

fn node() -> Node {
    let reals = Arc::new(RealRegistry::new(8));
    let svc = VirtualService {
        name: "web".into(),
        vip: VIP,
        protocol: Protocol::Tcp,
        mode: Mode::Nat,
        scheduler: SchedulerKind::Rr,
        persistence: Duration::from_secs(60),
        reals: (1..=3)
            .map(|i| RealServer {
                addr: real(i),
                weight: 1,
            })
            .collect(),
        local_addresses: Vec::new(),
        proxy_protocol: None,
    };
    // Slots 5, 6, 7: not the peer's numbering, which the wire does not carry.
    let services = Arc::new(ArcSwap::from_pointee(ServiceTable::new(
        vec![svc],
        &[vec![5, 6, 7]],
    )));
    let mut table = ConnTable::new(4096, 4, Timeouts::default(), reals.clone());
    let queue = Arc::new(ChangeQueue::new(16).unwrap());
    table.set_observer(queue.clone());
    let engine = Arc::new(Engine::new(
        table,
        Arc::new(PersistTable::new(64, 1)),
        reals,
    ));
    let counters = Arc::new(ReplicaCounters::default());
    Node {
        replicas: Replicas::new(engine.clone(), services, counters.clone()),
        engine,
        queue,
        counters,
    }
}

fn entry(port: u16, state: ConnState, remaining: u32) -> Entry {
    Entry {
        op: Op::Upsert as u8,
        proto: 6,
        mode: 0,
        state: state as u8,
        flags: 0,
        client: [198, 18, 1, 10],
        client_port: port,
        vip: VIP.ip().octets(),
        vip_port: 80,
        real: real(2).ip().octets(),
        real_port: 8080,
        local: None,
        remaining,
    }
}

fn key(port: u16) -> FlowKey {
    FlowKey {
        proto: Protocol::Tcp,
        client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), port),
        vip: VIP,
    }
}

#[test]
fn a_replica_gets_this_nodes_slot_and_clock_and_is_not_streamed_back() {
    let mut n = node();
    let now = 1000;
    n.replicas
        .apply(Apply::Entry(entry(40000, ConnState::Established, 600)), now);
    // Remaining time beyond this node's timeout is cut to it (TIME_WAIT: 120 s).
    n.replicas
        .apply(Apply::Entry(entry(40001, ConnState::TimeWait, 5000)), now);
    let mut g = n.engine.conns.shard_for(key(40000).client);
    let id = g.get_in(&key(40000), now).expect("replica installed");
    let e = *g.entry(id);
    assert!(e.is_replica());
    assert_eq!(e.state(), ConnState::Established);
    assert_eq!(e.expiry(), now + 600);
    assert_eq!(e.real_slot(), 6, "real 2 is slot 6 here");
    drop(g);
    // Each flow in its own shard (the client's port is part of the shard hash).
    let mut g = n.engine.conns.shard_for(key(40001).client);
    let id = g.get_in(&key(40001), now).expect("replica installed");
    assert_eq!(g.entry(id).expiry(), now + 120);
    drop(g);
    // Installing replicas queued nothing for the peer.
    let mut out = Vec::new();
    n.queue.drain(&mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(n.counters.installed.load(Ordering::Relaxed), 2);
    // It expires by this node's timers like a local entry.
    let mut g = n.engine.conns.shard_for(key(40000).client);
    assert!(g.get_in(&key(40000), now + 600).is_none());
}

#[test]
fn local_changes_are_queued_as_upserts_and_removals_as_deletes_but_expiry_is_not() {
    let n = node();
    let new = NewConn {
        proto: Protocol::Tcp,
        mode: Mode::Nat,
        client: key(40010).client,
        vip: VIP,
        real: real(1),
        local: None,
        proxy: None,
        service: 0,
        real_slot: 5,
        flags: 0,
    };
    let other = NewConn {
        client: key(40011).client,
        ..new
    };
    {
        let mut g = n.engine.conns.shard_for(new.client);
        let id = g.insert(&new, 10).unwrap();
        g.remove(id, DeleteCause::Removed);
    }
    {
        let mut g = n.engine.conns.shard_for(other.client);
        g.insert(&other, 10).unwrap();
        // Expired: seen by a lookup after its timeout.
        assert!(g.get_in(&other.flow_key(), 10_000).is_none());
    }
    let mut out = Vec::new();
    n.queue.drain(&mut out);
    let ops: Vec<(Op, u16)> = out.iter().map(|(o, e)| (*o, e.client().port())).collect();
    assert_eq!(
        ops,
        [
            (Op::Upsert, 40010),
            (Op::Delete, 40010),
            (Op::Upsert, 40011)
        ]
    );
    let w = to_wire(Op::Upsert, &out[0].1, 10);
    assert_eq!((w.state, w.remaining), (ConnState::SynRecv as u8, 60));
}

#[test]
fn a_full_queue_flags_an_overflow_for_a_resync() {
    let n = node();
    for port in 0..20u16 {
        let c = NewConn {
            proto: Protocol::Tcp,
            mode: Mode::Nat,
            client: key(41000 + port).client,
            vip: VIP,
            real: real(1),
            local: None,
            proxy: None,
            service: 0,
            real_slot: 5,
            flags: 0,
        };
        n.engine.conns.shard_for(c.client).insert(&c, 10).unwrap();
    }
    assert!(n.queue.take_overflow());
    assert_eq!(n.queue.dropped.load(Ordering::Relaxed), 4);
    assert!(!n.queue.take_overflow(), "reported once");
}

#[test]
fn unknown_services_are_counted_deletes_remove_and_a_resync_sweeps_what_it_did_not_renew() {
    let mut n = node();
    let mut foreign = entry(40020, ConnState::Established, 100);
    foreign.vip_port = 443;
    n.replicas.apply(Apply::Entry(foreign), 10);
    assert_eq!(n.counters.unknown_service.load(Ordering::Relaxed), 1);
    assert!(n.engine.conns.is_empty());

    for port in 40030..40035 {
        n.replicas
            .apply(Apply::Entry(entry(port, ConnState::Established, 100)), 10);
    }
    n.replicas.apply(
        Apply::Entry(Entry {
            op: Op::Delete as u8,
            ..entry(40030, ConnState::Established, 0)
        }),
        10,
    );
    assert_eq!(n.engine.conns.len(), 4);
    // A resync renews two of the four; the End sweeps the other two.
    n.replicas.apply(Apply::ResyncStart, 11);
    for port in [40031, 40032] {
        n.replicas
            .apply(Apply::Entry(entry(port, ConnState::Established, 100)), 11);
    }
    n.replicas.apply(Apply::ResyncEnd, 11);
    assert_eq!(n.engine.conns.len(), 2);
    assert_eq!(n.counters.swept.load(Ordering::Relaxed), 2);
    let mut g = n.engine.conns.shard_for(key(40031).client);
    assert!(g.get_in(&key(40031), 11).is_some());
    drop(g);
    let mut g = n.engine.conns.shard_for(key(40033).client);
    assert!(g.get_in(&key(40033), 11).is_none());
}
