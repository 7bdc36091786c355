//! Client → VIP: the path every mode shares up to the rewrite. The flow is found in the
//! connection table or scheduled (a new entry, its real server picked by the service's
//! scheduler or its persistence template, a FULLNAT local address allocated), and the packet
//! then goes to its mode's file: `nat.rs`, `dr.rs`, `tun.rs`, `fullnat.rs` (with
//! `proxy.rs`). An ICMP error to a VIP about one of our replies takes the same turn by the
//! flow's mode.
//!
//! The mode is the flow's own, from its entry, not the service's: a reload that changes a
//! service's mode leaves its established flows as they were made.

#![forbid(unsafe_code)]

use std::net::SocketAddrV4;

use super::packet::{Cx, Packet, Ports};
use super::services::Service;
use super::{dr, emit, fullnat, nat, proxy, tun, DropReason, Engine, Verdict, WorkerCounters};
use crate::conntrack::tcp_flags::{ACK as TCP_ACK, RST as TCP_RST, SYN as TCP_SYN};
use crate::conntrack::{
    ConnEntry, DeleteCause, Direction, FlowKey, InsertError, NewConn, ProxySeq,
};
use crate::model::{Mode, Protocol, SchedulerKind};

/// What a packet's path needs of its connection entry, read under the shard's lock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Conn {
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub real: SocketAddrV4,
    /// FULLNAT: the LIP:lport the flow is sent from.
    pub local: Option<SocketAddrV4>,
    pub mode: Mode,
    /// FULLNAT TCP with a PROXY header: the sequence shift.
    pub proxy: Option<ProxySeq>,
}

impl Engine {
    /// Client → VIP:port of a service.
    pub(super) fn inbound(
        &self,
        p: &mut Packet<'_>,
        ports: Ports,
        svc: &Service,
        cx: &mut Cx<'_, '_>,
    ) -> Verdict {
        if p.flow.ttl <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let conn = match self.find_or_schedule(p, ports, svc, cx) {
            Ok(conn) => conn,
            Err(reason) => return Verdict::Drop(reason),
        };
        match conn.mode {
            Mode::Nat => nat::inbound(p, &conn, cx),
            Mode::Dr => dr::inbound(p, &conn, cx),
            Mode::Tun => tun::tunnel(p, *conn.real.ip(), cx, |c| &c.forwarded_in),
            Mode::FullNat => fullnat::inbound(p, ports, &conn, cx),
        }
    }

    /// The flow's entry, or a new one: `Err` is why the packet is dropped.
    fn find_or_schedule(
        &self,
        p: &Packet<'_>,
        ports: Ports,
        svc: &Service,
        cx: &mut Cx<'_, '_>,
    ) -> Result<Conn, DropReason> {
        let now = cx.now;
        let flow = p.flow;
        let proto = svc.config.protocol;
        let client = SocketAddrV4::new(flow.src, ports.src);
        let vip = SocketAddrV4::new(flow.dst, ports.dst);
        let key = FlowKey { proto, client, vip };
        let len = p.len();
        let syn = ports.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;

        let my_shard = self.conns.shard_index(client);
        let mut shard = self.conns.shard(my_shard);
        let mut found = shard.get_in(&key, now);
        // A client reusing its port after the old flow closed gets a new scheduling.
        if let Some(id) = found {
            if proto == Protocol::Tcp && syn && shard.entry(id).state().reopens_on_syn() {
                shard.remove(id, DeleteCause::Removed);
                found = None;
            }
        }
        if let Some(id) = found {
            shard.update(id, Direction::In, ports.tcp_flags, len, now);
            let e = shard.entry(id);
            return Ok(Conn {
                client,
                vip,
                real: e.real(),
                local: e.local(),
                mode: e.mode(),
                proxy: e.proxy_seq(),
            });
        }
        // A TCP segment of a flow this node has no entry for. Dropped, but for an `mh`
        // service in NAT, DR or TUN without persistence: there the Maglev table, built from
        // the same servers and seed on both nodes (the HA contract), names the real server
        // the flow went to wherever it was scheduled, so an established flow whose entry
        // never reached this node (the last milliseconds before the peer died) carries on.
        // Not FULLNAT (the real server's socket is bound to a local port only the old node
        // knew), not a RST, not a segment without ACK.
        let pick_up = proto == Protocol::Tcp
            && !syn
            && ports.tcp_flags & (TCP_ACK | TCP_RST) == TCP_ACK
            && svc.sched.kind() == SchedulerKind::Mh
            && svc.persistence == 0
            && svc.config.mode != Mode::FullNat;
        if proto == Protocol::Tcp && !syn && !pick_up {
            return Err(DropReason::NoConnection);
        }
        if !p.meta.csum_partial && !p.meta.csum_verified && !p.l4_checksum_ok() {
            return Err(DropReason::BadL4Checksum);
        }
        let (picked, persistent) = if svc.persistence > 0 {
            let picked = self.persist.assign(
                svc.id,
                flow.src,
                now,
                svc.persistence,
                &svc.sched,
                &self.reals,
            );
            (picked, picked.is_some())
        } else {
            (svc.sched.pick(client, &self.reals), false)
        };
        let Some(idx) = picked else {
            return Err(DropReason::NoRealServer);
        };
        let release = |this: &Engine| {
            if persistent {
                this.persist.release(svc.id, flow.src, now, svc.persistence);
            }
        };
        let backend = svc.sched.backends()[idx];
        let mode = svc.config.mode;
        let local = match mode {
            Mode::FullNat => {
                let local = fullnat::allocate_local(
                    &mut shard,
                    my_shard,
                    &self.conns,
                    &self.local_ports,
                    svc,
                    proto,
                    client,
                    backend.addr,
                    now,
                );
                if local.is_none() {
                    release(self);
                    return Err(DropReason::PortExhausted);
                }
                local
            }
            Mode::Nat | Mode::Dr | Mode::Tun => None,
        };
        // FULLNAT TCP with a PROXY header: the shift starts at the SYN's ISN.
        let proxy =
            (local.is_some() && proto == Protocol::Tcp && svc.config.proxy_protocol.is_some())
                .then(|| ProxySeq {
                    client_isn: p.tcp_seq(),
                    delta: proxy::V2_TCP4_LEN,
                });
        let new = NewConn {
            proto,
            client,
            vip,
            real: backend.addr,
            local,
            proxy,
            mode,
            service: svc.id,
            real_slot: backend.slot,
            flags: if persistent { ConnEntry::PERSISTENT } else { 0 },
        };
        let inserted = if pick_up {
            shard.pick_up(&new, len, now).inspect(|_| {
                WorkerCounters::bump(&cx.w.counters.picked_up);
            })
        } else {
            shard.insert(&new, now).inspect(|&id| {
                shard.update(id, Direction::In, ports.tcp_flags, len, now);
            })
        };
        match inserted {
            Ok(_) => WorkerCounters::bump(&cx.w.counters.new_conns),
            Err(e) => {
                release(self);
                return Err(match e {
                    InsertError::Full => DropReason::TableFull,
                    // The client:port already talks to this real server through another
                    // VIP: NAT could not tell the replies apart.
                    InsertError::Exists(_) | InsertError::ReplyInUse(_) => DropReason::FlowClash,
                });
            }
        }
        Ok(Conn {
            client,
            vip,
            real: backend.addr,
            local,
            mode,
            proxy,
        })
    }

    /// An ICMP message to a VIP. Errors quoting a packet VIP:port → client belong to a flow
    /// and go to its real server, by the flow's mode; the rest (echo) is the kernel's.
    pub(super) fn icmp_to_vip(&self, p: &mut Packet<'_>, cx: &mut Cx<'_, '_>) -> Verdict {
        let Some(q) = p.quoted() else {
            return Verdict::Pass;
        };
        if p.flow.fragment {
            return Verdict::Drop(DropReason::Fragment);
        }
        // The quoted packet went VIP:vport → client:cport.
        let Some(proto) = Protocol::from_ip_proto(q.proto) else {
            return Verdict::Pass;
        };
        let key = FlowKey {
            proto,
            client: q.destination(),
            vip: q.source(),
        };
        let found = {
            let mut shard = self.conns.shard_for(key.client);
            shard.get_in(&key, cx.now).map(|id| {
                let e = shard.entry(id);
                (e.real(), e.mode(), e.local())
            })
        };
        let Some((real, mode, local)) = found else {
            return Verdict::Drop(DropReason::IcmpNoConnection);
        };
        match mode {
            // The real server sent the quoted packet itself: it gets the error the same
            // way it gets the flow's packets.
            Mode::Tun => return tun::tunnel(p, *real.ip(), cx, |c| &c.icmp_forwarded),
            Mode::Dr => {}
            Mode::Nat => nat::icmp_to_real(p, q, real),
            Mode::FullNat => match local {
                Some(local) => fullnat::icmp_to_real(p, q, real, local),
                None => return Verdict::Drop(DropReason::NoLocalAddress),
            },
        }
        emit(p, *real.ip(), cx, |c| &c.icmp_forwarded)
    }
}
