//! NAT (LVS masquerading): the destination of the client's packets is rewritten, and so is
//! the source of the real server's replies, which must come back through the director (the
//! real servers route the clients' networks via the director's address, or the VIP's box is
//! their default gateway).
//!
//! ```text
//!   client:cport → VIP:vport      becomes   client:cport → real:rport    (inbound)
//!   real:rport   → client:cport   becomes   VIP:vport    → client:cport  (reply)
//! ```
//!
//! A reply is recognised by its source, a NAT real server's service port (retired real
//! servers included, so their established flows finish), and found in the table by its
//! reply key (real:rport, client:cport); one the table does not know is the box's own (a
//! health check's) and goes to the kernel. ICMP errors are translated both ways, as IPVS
//! does: one to the VIP quoting VIP → client goes to the real server quoting real → client;
//! one from the real servers' side quoting client → real goes to the client from the VIP,
//! quoting client → VIP.

#![forbid(unsafe_code)]

use std::net::SocketAddrV4;

use super::inbound::Conn;
use super::packet::{Cx, End, Packet, Ports, Quoted};
use super::{emit, DropReason, Engine, RxMeta, Verdict};
use crate::conntrack::{Direction, ReplyKey};
use crate::model::Protocol;

/// Client → VIP: the destination becomes the real server.
pub(super) fn inbound(p: &mut Packet<'_>, conn: &Conn, cx: &mut Cx<'_, '_>) -> Verdict {
    p.rewrite(End::Dst, conn.real);
    emit(p, *conn.real.ip(), cx, |c| &c.forwarded_in)
}

/// An ICMP error to the VIP quoting VIP:vport → client: it goes to the real server, the
/// outer destination and the quoted source becoming real:rport.
pub(super) fn icmp_to_real(p: &mut Packet<'_>, mut q: Quoted, real: SocketAddrV4) {
    p.set_ip(End::Dst, *real.ip());
    p.translate_quoted(&mut q, End::Src, real);
}

impl Engine {
    /// NAT real server → client: the source becomes VIP:port again.
    pub(super) fn nat_reply(
        &self,
        p: &mut Packet<'_>,
        ports: Ports,
        cx: &mut Cx<'_, '_>,
    ) -> Verdict {
        let flow = p.flow;
        let proto = Protocol::from_ip_proto(flow.proto).expect("caller checked TCP/UDP");
        let client = SocketAddrV4::new(flow.dst, ports.dst);
        let key = ReplyKey {
            proto,
            real: SocketAddrV4::new(flow.src, ports.src),
            peer: client,
        };
        let vip = {
            let mut shard = self.conns.shard_for(client);
            let Some(id) = shard.get_reply(&key, cx.now) else {
                // Not a flow of ours: e.g. a reply to the box's own health check.
                return Verdict::Pass;
            };
            shard.update(id, Direction::Out, ports.tcp_flags, p.len(), cx.now);
            shard.entry(id).vip()
        };
        p.rewrite(End::Src, vip);
        emit(p, flow.dst, cx, |c| &c.forwarded_out)
    }

    /// An ICMP error from the real servers' side quoting client → real (a NAT flow's
    /// packet): it goes to the client as if the VIP had sent it (as IPVS does).
    pub(super) fn icmp_from_real_side(&self, p: &mut Packet<'_>, cx: &mut Cx<'_, '_>) -> Verdict {
        let Some(mut q) = p.quoted() else {
            return Verdict::Pass;
        };
        if !cx.t.services.is_nat_real(q.dst, q.dport, q.proto) {
            return Verdict::Pass;
        }
        let Some(proto) = Protocol::from_ip_proto(q.proto) else {
            return Verdict::Pass;
        };
        let client = q.source();
        let key = ReplyKey {
            proto,
            real: q.destination(),
            peer: client,
        };
        let vip = {
            let mut shard = self.conns.shard_for(client);
            shard
                .get_reply(&key, cx.now)
                .map(|id| shard.entry(id).vip())
        };
        let Some(vip) = vip else {
            return Verdict::Pass;
        };
        if p.flow.fragment {
            return Verdict::Drop(DropReason::Fragment);
        }
        p.set_ip(End::Src, *vip.ip());
        p.translate_quoted(&mut q, End::Dst, vip);
        // An ICMP error is never a GSO frame: its size is checked against the MTU whatever
        // the ring said of the frame.
        p.meta = RxMeta::default();
        let toward = p.flow.dst;
        emit(p, toward, cx, |c| &c.icmp_forwarded)
    }
}
