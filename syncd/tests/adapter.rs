//! The adapter between the forwarder's table and the session: what the change queue streams,
//! and how the peer's entries become replicas (service and real-server slot looked up here,
//! expiry on this node's clock and timeouts, no echo back, sweep after a resync), and
//! FULLNAT replicas: local address and PROXY protocol shift carried, found by both keys.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use forwarder::conntrack::{
    ConnState, ConnTable, DeleteCause, FlowKey, NewConn, ProxySeq, ReplyKey,
};
use forwarder::engine::{Engine, ServiceTable};
use forwarder::model::{
    Mode, Protocol, ProxyProtocol, RealServer, SchedulerKind, Timeouts, VirtualService,
};
use forwarder::sched::PersistTable;
use forwarder::stats::RealRegistry;
use syncd::adapter::{to_wire, ChangeQueue, ReplicaCounters, Replicas, SHARD_KEY_LABEL};
use syncd::session::Apply;
use syncd::wire::{Entry, Key, Op};

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 100), 80);
/// The FULLNAT service, and its local address.
const FULL_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 100), 81);
const LIP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 5);

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
    node_keyed(None)
}

/// A node whose table's shard key is `shard_key` (random when `None`).
fn node_keyed(shard_key: Option<[u8; 32]>) -> Node {
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
    let full = VirtualService {
        name: "full".into(),
        vip: FULL_VIP,
        mode: Mode::FullNat,
        local_addresses: vec![LIP],
        proxy_protocol: Some(ProxyProtocol::V2),
        ..svc.clone()
    };
    // Slots 5, 6, 7: not the peer's numbering, which the wire does not carry.
    let services = Arc::new(ArcSwap::from_pointee(ServiceTable::new(
        vec![svc, full],
        &[vec![5, 6, 7], vec![5, 6, 7]],
    )));
    let mut table = ConnTable::new(4096, 4, Timeouts::default(), reals.clone());
    if let Some(k) = shard_key {
        table.set_shard_key(k);
    }
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
        proxy: None,
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

/// The shard key both nodes of a pair derive from their sync key, as directord does.
fn pair_shard_key() -> [u8; 32] {
    Key::new(b"0123456789abcdef0123456789abcdef")
        .unwrap()
        .derive(SHARD_KEY_LABEL)
}

/// A FULLNAT connection with local port `lport`, its PROXY protocol header inserted.
fn fullnat_conn(client_port: u16, lport: u16) -> NewConn {
    NewConn {
        proto: Protocol::Tcp,
        mode: Mode::FullNat,
        client: key(client_port).client,
        vip: FULL_VIP,
        real: real(2),
        local: Some(SocketAddrV4::new(LIP, lport)),
        proxy: Some(ProxySeq {
            client_isn: 0x8000_0001,
            delta: 28,
        }),
        service: 1,
        real_slot: 6,
        flags: 0,
    }
}

/// The first local port from 61000 up for which `ok` holds.
fn lport_where(ok: impl Fn(SocketAddrV4) -> bool) -> u16 {
    (61000..65535)
        .find(|p| ok(SocketAddrV4::new(LIP, *p)))
        .expect("some port qualifies")
}

#[test]
fn a_fullnat_replica_keeps_its_local_address_and_proxy_shift_and_is_found_by_its_replies() {
    let active = node_keyed(Some(pair_shard_key()));
    let mut standby = node_keyed(Some(pair_shard_key()));
    let client = key(40100).client;
    // The active node's port allocator keeps both keys of the flow in one shard.
    let t = &active.engine.conns;
    let lport = lport_where(|l| t.shard_index(l) == t.shard_index(client));
    let conn = fullnat_conn(40100, lport);
    {
        let mut g = active.engine.conns.shard_for(client);
        let id = g.insert(&conn, 10).unwrap();
        let e = *g.entry(id);
        drop(g);
        assert_eq!(e.local(), conn.local);
    }
    let mut out = Vec::new();
    active.queue.drain(&mut out);
    let wire = to_wire(Op::Upsert, &out.last().expect("queued").1, 10);
    assert_eq!(wire.local, Some((LIP.octets(), lport)));
    assert_eq!(wire.proxy, Some((0x8000_0001, 28)));

    standby.replicas.apply(Apply::Entry(wire), 20);
    assert_eq!(standby.counters.installed.load(Ordering::Relaxed), 1);
    assert_eq!(standby.counters.shard_mismatch.load(Ordering::Relaxed), 0);
    let table = &standby.engine.conns;
    let by_client = {
        let mut g = table.shard_for(client);
        let id = g
            .get_in(&conn.flow_key(), 20)
            .expect("found by its inbound key");
        *g.entry(id)
    };
    assert!(by_client.is_replica());
    assert_eq!(by_client.mode(), Mode::FullNat);
    assert_eq!(by_client.state(), ConnState::SynRecv);
    assert_eq!(by_client.local(), Some(SocketAddrV4::new(LIP, lport)));
    assert_eq!(
        by_client.proxy_seq(),
        Some(ProxySeq {
            client_isn: 0x8000_0001,
            delta: 28
        })
    );
    // A real server's reply goes to LIP:lport; the standby finds the flow in that shard.
    let reply = ReplyKey {
        proto: Protocol::Tcp,
        real: real(2),
        peer: SocketAddrV4::new(LIP, lport),
    };
    assert_eq!(by_client.reply_key(), reply);
    let mut g = table.shard_for(reply.peer);
    let id = g.get_reply(&reply, 20).expect("found by its reply key");
    assert_eq!(*g.entry(id), by_client);
}

#[test]
fn a_fullnat_replica_outside_its_clients_shard_is_installed_and_counted() {
    // The standby chooses shards with another key: the active node's choice of port does
    // not put LIP:lport in the client's shard here.
    let active = node_keyed(Some(pair_shard_key()));
    let mut standby = node_keyed(Some([7; 32]));
    let client = key(40200).client;
    let (a, b) = (&active.engine.conns, &standby.engine.conns);
    let lport = lport_where(|l| {
        a.shard_index(l) == a.shard_index(client) && b.shard_index(l) != b.shard_index(client)
    });
    let mut e = entry(40200, ConnState::Established, 100);
    e.mode = Mode::FullNat as u8;
    e.vip_port = FULL_VIP.port();
    e.local = Some((LIP.octets(), lport));
    standby.replicas.apply(Apply::Entry(e), 10);
    assert_eq!(standby.counters.installed.load(Ordering::Relaxed), 1);
    assert_eq!(standby.counters.shard_mismatch.load(Ordering::Relaxed), 1);
    let mut g = standby.engine.conns.shard_for(client);
    let id = g
        .get_in(&fullnat_conn(40200, lport).flow_key(), 10)
        .expect("installed in its client's shard");
    assert_eq!(
        g.entry(id).proxy_seq(),
        None,
        "no proxy shift on the wire: none"
    );
}

/// A FULLNAT entry without its local address could not be forwarded (the datapath would
/// have no source to rewrite to): refused as invalid, nothing installed.
#[test]
fn a_fullnat_replica_without_its_local_address_is_refused() {
    let mut n = node();
    let mut e = entry(40200, ConnState::Established, 100);
    e.mode = 3;
    e.vip_port = FULL_VIP.port();
    assert_eq!(e.local, None);
    n.replicas.apply(Apply::Entry(e), 10);
    assert_eq!(n.counters.invalid.load(Ordering::Relaxed), 1);
    assert_eq!(n.counters.installed.load(Ordering::Relaxed), 0);
    assert!(n.engine.conns.is_empty());
}

/// A restarted peer (a new run, an empty table) knows nothing of the flows it made before:
/// the replicas become this node's own, and the new run's resync, which carries none of
/// them, sweeps none of them.
#[test]
fn replicas_are_adopted_when_the_peer_run_ends_and_its_next_resync_sweeps_none() {
    let mut n = node();
    for port in 40040..40045 {
        n.replicas
            .apply(Apply::Entry(entry(port, ConnState::Established, 100)), 10);
    }
    assert_eq!(n.engine.conns.replicas(), 5);
    n.replicas.apply(Apply::PeerChanged, 11);
    assert_eq!(n.counters.adopted.load(Ordering::Relaxed), 5);
    assert_eq!(n.engine.conns.replicas(), 0);
    n.replicas.apply(Apply::ResyncStart, 12);
    n.replicas.apply(Apply::ResyncEnd, 12);
    assert_eq!(n.engine.conns.len(), 5);
    assert_eq!(n.counters.swept.load(Ordering::Relaxed), 0);
    let mut g = n.engine.conns.shard_for(key(40042).client);
    assert!(g.get_in(&key(40042), 12).is_some());
}
