//! FULLNAT: both ends of the flow rewritten.
//!
//! ```text
//!   client:cport → VIP:vport      becomes   LIP:lport → real:rport      (inbound)
//!   real:rport   → LIP:lport      becomes   VIP:vport → client:cport    (reply)
//! ```
//!
//! The real servers see a local address of the director (a LIP) as the source, so they need
//! no route back to the clients: their replies go to the LIP, which is on whichever box is
//! the VRRP master (the LIPs float with the VIPs). The local port is chosen when the flow is
//! scheduled:
//!
//! - per (LIP, real server): the reply key (real:rport, LIP:lport) must be free, so one port
//!   may serve one flow to each real server at once;
//! - held for the life of the entry, TIME_WAIT included, because the entry keeps its reply
//!   key in the table until it expires (tcp_fin 120 s by default);
//! - in the client's shard: `shard_index(LIP:lport) == shard_index(client)`, so the reply
//!   finds the entry under the same lock as the inbound packets (see `conntrack`);
//! - exhaustion (no free port for any LIP after a bounded search) is counted as
//!   `port_exhausted` and the new flow refused; established flows are untouched.
//!
//! ICMP errors are translated in both directions: one from the client's side about a reply
//! we sent (VIP → client) goes to the real server as if about LIP → real, and one from the
//! real servers' side about a packet we sent (LIP → real) goes to the client as if about
//! client → VIP.

#![forbid(unsafe_code)]

use std::net::SocketAddrV4;

use super::inbound::Conn;
use super::local_ports::LocalPorts;
use super::packet::{Cx, End, Packet, Ports, Quoted};
use super::services::Service;
use super::{emit, emit_sized, proxy, DropReason, Engine, RxMeta, Verdict};
use crate::conntrack::{ConnTable, Direction, ReplyKey, ShardGuard};
use crate::model::Protocol;

/// The default local port range: everything above the well-known ports. The director never
/// opens sockets on a LIP, so it shares the range with nothing on the box.
pub const DEFAULT_LOCAL_PORTS: (u16, u16) = (1024, 65535);

/// How many taken candidates in the client's shard are examined per LIP before the LIP
/// counts as exhausted for this flow, so a SYN flood against an exhausted range costs
/// bounded work (with 256 shards a LIP has about 250 ports per shard, so in practice the
/// bound is the shard's list: one lookup per port, no hashing of ports of other shards).
const PROBES_PER_LIP: usize = 512;

/// Picks a free LIP:lport for a new flow of `proto` from `client` to `real`, or `None` when
/// every LIP is exhausted. `shard` is the client's shard of `table`, locked by the caller;
/// `my_shard` its index. The candidates are the ports of `my_shard` only, from the
/// per-LIP lists of [`LocalPorts`] (see `local_ports.rs`), examined in the order of a walk
/// of the range from a flow-dependent start, ascending and wrapping.
#[allow(clippy::too_many_arguments)]
pub(super) fn allocate_local(
    shard: &mut ShardGuard<'_>,
    my_shard: usize,
    table: &ConnTable,
    local_ports: &LocalPorts,
    svc: &Service,
    proto: Protocol,
    client: SocketAddrV4,
    real: SocketAddrV4,
    now: u32,
) -> Option<SocketAddrV4> {
    let lips = &svc.config.local_addresses;
    let ports = local_ports.range();
    if lips.is_empty() || ports.1 < ports.0 {
        return None;
    }
    let span = u32::from(ports.1 - ports.0) + 1;
    // Start somewhere that depends on the flow, so that flows do not all walk the same run
    // of ports; the walk itself is sequential (every port of the shard is considered).
    let mix = (u64::from(client.ip().to_bits()) << 16 | u64::from(client.port()))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ u64::from(real.ip().to_bits()).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    let start = ports.0 + (((mix >> 32) as u32) % span) as u16;
    // LIPs take turns by client port, so clients spread over them.
    let first_lip = usize::from(client.port()) % lips.len();
    for k in 0..lips.len() {
        let lip = lips[(first_lip + k) % lips.len()];
        let found = local_ports.with(lip, table, |l| {
            // The walk from `start` to the end of the range, then from its beginning.
            for port in l.walk(my_shard, start).take(PROBES_PER_LIP) {
                let key = ReplyKey {
                    proto,
                    real,
                    peer: SocketAddrV4::new(lip, port),
                };
                debug_assert_eq!(table.shard_index(key.peer), my_shard);
                // Taken while an entry holds it (expired entries are removed by the lookup).
                if shard.get_reply(&key, now).is_none() {
                    return Some(key.peer);
                }
            }
            None
        });
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Client → VIP: client:cport → VIP:vport becomes LIP:lport → real:rport; a TCP flow with
/// the PROXY protocol gets its header spliced in (`proxy.rs`). An entry without a local
/// address (never made here; a replica could carry one) is dropped, never forwarded
/// unrewritten.
pub(super) fn inbound(
    p: &mut Packet<'_>,
    ports: Ports,
    conn: &Conn,
    cx: &mut Cx<'_, '_>,
) -> Verdict {
    let Some(local) = conn.local else {
        return Verdict::Drop(DropReason::NoLocalAddress);
    };
    p.rewrite(End::Src, local);
    p.rewrite(End::Dst, conn.real);
    let insert = conn
        .proxy
        .and_then(|ps| proxy::inbound(p, ports.tcp_flags, ps, conn.client, conn.vip));
    let grow = insert.map_or(0, |i| usize::from(i.len));
    let v = emit_sized(p, *conn.real.ip(), cx, grow, |c| &c.forwarded_in);
    match (v, insert) {
        (Verdict::Forward { ifindex }, Some(insert)) => Verdict::ForwardInsert { ifindex, insert },
        _ => v,
    }
}

/// Rewrites both ends of the packet quoted in an ICMP error (source → `new_src`,
/// destination → `new_dst`).
fn translate_quoted_both(
    p: &mut Packet<'_>,
    mut q: Quoted,
    new_src: SocketAddrV4,
    new_dst: SocketAddrV4,
) {
    p.translate_quoted(&mut q, End::Src, new_src);
    p.translate_quoted(&mut q, End::Dst, new_dst);
}

impl Engine {
    /// Real server → LIP:lport: the reply of a FULLNAT flow goes to the client from the VIP:
    /// real:rport → LIP:lport becomes VIP:vport → client:cport. A packet to a LIP the table
    /// does not know is the kernel's to drop (`Pass`).
    pub(super) fn fullnat_reply(
        &self,
        p: &mut Packet<'_>,
        ports: Ports,
        cx: &mut Cx<'_, '_>,
    ) -> Verdict {
        let flow = p.flow;
        let Some(proto) = Protocol::from_ip_proto(flow.proto) else {
            return Verdict::Pass;
        };
        let local = SocketAddrV4::new(flow.dst, ports.dst);
        let key = ReplyKey {
            proto,
            real: SocketAddrV4::new(flow.src, ports.src),
            peer: local,
        };
        let (vip, client, ps) = {
            let mut shard = self.conns.shard_for(local);
            let Some(id) = shard.get_reply(&key, cx.now) else {
                return Verdict::Pass;
            };
            shard.update(id, Direction::Out, ports.tcp_flags, p.len(), cx.now);
            let e = shard.entry(id);
            (e.vip(), e.client(), e.proxy_seq())
        };
        p.rewrite(End::Src, vip);
        p.rewrite(End::Dst, client);
        if let Some(ps) = ps {
            proxy::reply(p, ports.tcp_flags, ps);
        }
        emit(p, *client.ip(), cx, |c| &c.forwarded_out)
    }

    /// An ICMP message to a LIP. An error quoting LIP:lport → real:rport (a packet we sent
    /// to a real server) goes to the client as if about client:cport → VIP:vport, from the
    /// VIP; anything else (echo) is the kernel's.
    pub(super) fn icmp_to_lip(&self, p: &mut Packet<'_>, cx: &mut Cx<'_, '_>) -> Verdict {
        let Some(q) = p.quoted().filter(|q| q.src == p.flow.dst) else {
            return Verdict::Pass;
        };
        let Some(proto) = Protocol::from_ip_proto(q.proto) else {
            return Verdict::Pass;
        };
        if p.flow.fragment {
            return Verdict::Drop(DropReason::Fragment);
        }
        let local = q.source();
        let key = ReplyKey {
            proto,
            real: q.destination(),
            peer: local,
        };
        let found = {
            let mut shard = self.conns.shard_for(local);
            shard.get_reply(&key, cx.now).map(|id| {
                let e = shard.entry(id);
                (e.vip(), e.client())
            })
        };
        let Some((vip, client)) = found else {
            return Verdict::Drop(DropReason::IcmpNoConnection);
        };
        p.set_ip(End::Src, *vip.ip());
        p.set_ip(End::Dst, *client.ip());
        translate_quoted_both(p, q, client, vip);
        // An ICMP error is never a GSO frame: its size is checked against the MTU whatever
        // the ring said of the frame.
        p.meta = RxMeta::default();
        emit(p, *client.ip(), cx, |c| &c.icmp_forwarded)
    }
}

/// An ICMP error to the VIP quoting VIP:vport → client:cport, about a FULLNAT flow: it goes
/// to the real server from the LIP, quoting real:rport → LIP:lport, the packet the real
/// server sent. The outer source becomes the LIP because the real server has no route to
/// whoever sent the error (and reverse-path filtering could drop it).
pub(super) fn icmp_to_real(p: &mut Packet<'_>, q: Quoted, real: SocketAddrV4, local: SocketAddrV4) {
    p.set_ip(End::Src, *local.ip());
    p.set_ip(End::Dst, *real.ip());
    translate_quoted_both(p, q, real, local);
}
