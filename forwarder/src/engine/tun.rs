//! TUN mode: the client's packet goes to its real server inside an IPIP header (RFC 2003),
//! untouched but for the TTL every forwarded packet loses. The real server decapsulates it,
//! holds the VIP on a non-ARP interface and answers the client directly, so a TUN flow, like
//! a DR flow, only ever shows the director `Direction::In` packets.
//!
//! The outer header (RFC 2003 §3.1): version 4, IHL 5, TOS copied from the inner packet
//! (RFC 6040 normal mode: DSCP and ECN), DF copied from the inner packet, a fresh
//! identification from the worker's counter, protocol 4, source = the director's address on
//! the egress interface (the one in the real server's subnet, else the first that is not a
//! VIP), destination = the real server. TTL = the inner TTL after the decrement, as Linux's
//! ip tunnels do by default (`ttl inherit`) and IPVS does: a packet looping through tunnels
//! cannot win a fresh 64 hops at each encapsulation.
//!
//! How it leaves:
//! - a frame that fits and whose checksums are complete (the common case: from a NIC):
//!   `Verdict::ForwardInsert`, the 20 bytes spliced in after the Ethernet header, no copy;
//! - a frame with a partial checksum (Linux CHECKSUM_PARTIAL: locally originated traffic,
//!   e.g. a client on the same host over veth): its checksum is finished in software and
//!   the frame is copied out with a plain vnet header (`Verdict::Emitted`). A stock ipip
//!   device would keep the offload through decapsulation, but a receiver that decapsulates
//!   in userspace (the lab's raw-socket helper) or any device in between that does not know
//!   the inner offsets could not finish it, and the vnet header describes no checksum
//!   behind a tunnel header to the egress device we send to;
//! - a GSO super-frame: `virtio_net_hdr` has no tunnel GSO types, so a packet socket cannot
//!   ask the kernel to segment an IPIP packet; it is segmented here, in software, into
//!   `gso_size` segments (TCP: sequence numbers advanced, FIN and PSH on the last segment
//!   only, CWR on the first only; UDP: one datagram per segment; IPv4 id + i; full
//!   checksums), each encapsulated and emitted;
//! - path MTU (RFC 1191, RFC 2003 §5.1): when inner + 20 bytes (for a GSO frame: its
//!   largest segment) exceed the egress MTU, a packet with DF is dropped (`frag_needed`)
//!   and the client gets an ICMP fragmentation-needed from the VIP with next-hop MTU =
//!   egress MTU − 20, quoting the inner header + 8 bytes (RFC 792), within the worker's
//!   ICMP budget, sent toward the client by the FIB or, while the client's next hop is
//!   unresolved, back to the frame's sender (`back_to_sender`); a packet without DF is encapsulated and the outer packet fragmented
//!   (RFC 791), for the real server to reassemble before it decapsulates.
//!
//! An ICMP error about a TUN flow (to the VIP, quoting VIP → client) is tunnelled to the
//! flow's real server the same way; it never causes an ICMP error of its own (RFC 1122
//! §3.2.2): too big with DF, it is dropped as `too_big`.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicU64;

use super::packet::{Cx, Flow, Packet};
use super::{next_hop, DropReason, FrameOut, Insert, RxMeta, Tables, Verdict, WorkerCounters};
use crate::fib::NextHop;
use crate::wire::ethernet::{self, EthernetFrame, MacAddr, ETHERTYPE_IPV4};
use crate::wire::icmp::{self, Icmpv4Packet};
use crate::wire::ipv4::{self, Ipv4Packet, Ipv4Repr, PROTO_ICMP, PROTO_IPIP, PROTO_TCP, PROTO_UDP};
use crate::wire::tcp::{TcpFlags, TcpPacket};
use crate::wire::udp::UdpPacket;

const OUTER_LEN: usize = ipv4::HEADER_LEN;
/// Ethernet + outer IPv4: where the inner packet starts in a built frame.
pub(super) const ENCAP_HEADERS: usize = ethernet::HEADER_LEN + OUTER_LEN;
/// TTL of the ICMP errors the director originates.
const ICMP_TTL: u8 = 64;

/// Sends the packet of `flow` to `real` in an IPIP header, and counts a zero-copy forward in
/// `counter` (built copies are counted as `emitted` by `process`).
pub(super) fn tunnel(
    p: &mut Packet<'_>,
    real: Ipv4Addr,
    cx: &mut Cx<'_, '_>,
    counter: fn(&WorkerCounters) -> &AtomicU64,
) -> Verdict {
    let (flow, meta, t) = (p.flow, p.meta, cx.t);
    if flow.ttl <= 1 {
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    let hop = match next_hop(real, cx) {
        Ok(hop) => hop,
        Err(reason) => return Verdict::Drop(reason),
    };
    // An interface without an address cannot source a tunnel: as good as no route.
    let Some(src) = tunnel_source(t, hop.ifindex, real) else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let segments = match Segments::of(p.frame, flow, meta, hop.mtu) {
        Ok(s) => s,
        Err(reason) => return Verdict::Drop(reason),
    };
    let inner_len = flow.end - flow.ip;
    if inner_len + OUTER_LEN > usize::from(u16::MAX) {
        // Not even fragments could carry it: no IPv4 datagram is that long.
        return Verdict::Drop(DropReason::TooBig);
    }
    let largest = segments.map_or(inner_len, |s| s.largest(flow));
    let mtu = hop.mtu as usize;
    let too_big = largest + OUTER_LEN > mtu;
    if too_big && p.ipv4().dont_frag() {
        if flow.proto == PROTO_ICMP {
            return Verdict::Drop(DropReason::TooBig);
        }
        let mtu = u16::try_from(mtu.saturating_sub(OUTER_LEN)).unwrap_or(u16::MAX);
        frag_needed(p, mtu, cx);
        return Verdict::Drop(DropReason::FragNeeded);
    }

    p.ipv4_mut().decrement_ttl_incremental();
    let ctx = &mut *cx.w;
    let frame = &mut *p.frame;
    let tun = Tunnel {
        src,
        dst: real,
        hop,
    };
    let partial = meta.csum_partial && matches!(flow.proto, PROTO_TCP | PROTO_UDP);
    if segments.is_none() && !partial && !too_big {
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_src_addr(MacAddr(hop.src_mac));
        eth.set_dst_addr(MacAddr(hop.dst_mac));
        let mut outer = [0u8; OUTER_LEN];
        let ident = ctx.state.next_ident();
        tun.write_outer(
            &mut outer,
            &frame[flow.ip..flow.end],
            inner_len,
            ident,
            0,
            false,
        );
        WorkerCounters::bump(counter(ctx.counters));
        return Verdict::ForwardInsert {
            ifindex: hop.ifindex,
            insert: Insert::new(ethernet::HEADER_LEN, &outer),
        };
    }

    let state = &mut *ctx.state;
    match segments {
        None => {
            if partial {
                complete_l4_checksum(frame, flow);
            }
            let buf = &mut state.buf;
            buf.clear();
            buf.resize(ENCAP_HEADERS, 0);
            buf.extend_from_slice(&frame[flow.ip..flow.end]);
            let ident = state.next_ident();
            tun.send(&mut state.buf, ident, ctx.out);
        }
        Some(s) => {
            for i in 0..s.count(flow) {
                s.build(frame, flow, i, &mut state.buf);
                let ident = state.next_ident();
                tun.send(&mut state.buf, ident, ctx.out);
            }
        }
    }
    Verdict::Emitted
}

/// The director's address to send tunnelled packets from on `ifindex`: the one in the real
/// server's subnet, else the first. VIPs are skipped (they move with VRRP) unless there is
/// nothing else.
fn tunnel_source(t: &Tables<'_>, ifindex: u32, real: Ipv4Addr) -> Option<Ipv4Addr> {
    source_address(t, ifindex, real)
}

/// The tunnel source on `ifindex` toward `real` (see [`tunnel`]): also what the XDP fast
/// path writes for a TUN flow.
pub fn source_address(t: &Tables<'_>, ifindex: u32, real: Ipv4Addr) -> Option<Ipv4Addr> {
    let iface = t.fib.interface(ifindex)?;
    let own = || iface.addrs.iter().filter(|(a, _)| !t.services.is_vip(*a));
    let in_subnet = |&&(a, len): &&(Ipv4Addr, u8)| {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(len.min(32)))
            .unwrap_or(0);
        (u32::from(a) ^ u32::from(real)) & mask == 0
    };
    own()
        .find(in_subnet)
        .or_else(|| own().next())
        .or_else(|| iface.addrs.first())
        .map(|&(a, _)| a)
}

/// One tunnel: the outer addresses and the next hop toward the real server.
struct Tunnel {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    hop: NextHop,
}

impl Tunnel {
    /// Writes the outer header for `payload_len` bytes at fragment offset `offset` (bytes) of
    /// an outer packet carrying `inner` (whose header gives TOS, DF and TTL) into `hdr`.
    fn write_outer(
        &self,
        hdr: &mut [u8],
        inner: &[u8],
        payload_len: usize,
        ident: u16,
        offset: usize,
        more: bool,
    ) {
        let inner = Ipv4Packet::new_unchecked(inner);
        let mut ip = Ipv4Packet::new_unchecked(&mut hdr[..OUTER_LEN]);
        ip.set_header_len(OUTER_LEN as u8);
        ip.set_dscp_ecn(inner.dscp_ecn());
        ip.set_total_len((OUTER_LEN + payload_len) as u16);
        ip.set_ident(ident);
        ip.set_dont_frag(inner.dont_frag());
        ip.set_more_frags(more);
        ip.set_frag_offset(offset as u16);
        ip.set_ttl(inner.ttl());
        ip.set_protocol(PROTO_IPIP);
        ip.set_src_addr(self.src);
        ip.set_dst_addr(self.dst);
        ip.fill_checksum();
    }

    /// `buf` holds Ethernet and outer header room, then the inner packet: fills both in and
    /// emits the frame, or its fragments when it exceeds the MTU (the caller has checked
    /// that the inner packet allows fragmentation).
    fn send(&self, buf: &mut Vec<u8>, ident: u16, out: &mut dyn FrameOut) {
        let whole = buf.len();
        let inner_len = whole - ENCAP_HEADERS;
        {
            let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
            eth.set_dst_addr(MacAddr(self.hop.dst_mac));
            eth.set_src_addr(MacAddr(self.hop.src_mac));
            eth.set_ethertype(ETHERTYPE_IPV4);
        }
        let (head, inner) = buf.split_at_mut(ENCAP_HEADERS);
        let mtu = self.hop.mtu as usize;
        if OUTER_LEN + inner_len <= mtu {
            self.write_outer(
                &mut head[ethernet::HEADER_LEN..],
                inner,
                inner_len,
                ident,
                0,
                false,
            );
            out.emit(self.hop.ifindex, buf);
            return;
        }
        // RFC 791: every fragment but the last carries a multiple of 8 bytes, MF set;
        // the offset counts 8-byte units (`set_frag_offset` takes bytes).
        let per_fragment = (mtu.saturating_sub(OUTER_LEN) & !7).max(8);
        let mut offset = 0;
        while offset < inner_len {
            let n = per_fragment.min(inner_len - offset);
            let more = offset + n < inner_len;
            buf.truncate(whole);
            buf.extend_from_within(..ethernet::HEADER_LEN);
            buf.resize(whole + ENCAP_HEADERS, 0);
            let from = ENCAP_HEADERS + offset;
            buf.extend_from_within(from..from + n);
            let (packet, fragment) = buf.split_at_mut(whole);
            let inner = &packet[ENCAP_HEADERS..];
            self.write_outer(
                &mut fragment[ethernet::HEADER_LEN..],
                inner,
                n,
                ident,
                offset,
                more,
            );
            out.emit(self.hop.ifindex, fragment);
            offset += n;
        }
        buf.truncate(whole);
    }
}

/// How a GSO super-frame is cut into segments.
#[derive(Debug, Clone, Copy)]
struct Segments {
    /// Offset of the payload in the frame, after the IPv4 and TCP/UDP headers.
    payload: usize,
    /// Payload bytes per segment.
    size: usize,
    udp: bool,
}

impl Segments {
    /// `None` for a frame that is not a GSO super-frame of TCP or UDP.
    fn of(
        frame: &[u8],
        flow: Flow,
        meta: RxMeta,
        mtu: u32,
    ) -> Result<Option<Segments>, DropReason> {
        if !meta.gso {
            return Ok(None);
        }
        if !matches!(flow.proto, PROTO_TCP | PROTO_UDP) {
            // No kernel segments anything else; passed on, the GSO type would make the
            // egress device cut the outer packet as if it were TCP.
            return Err(DropReason::Malformed);
        }
        let udp = flow.proto == PROTO_UDP;
        if udp != meta.gso_udp {
            // UFO (IP fragmentation of one datagram) or a type that does not match the
            // packet: no kernel hands these to a packet socket.
            return Err(DropReason::Malformed);
        }
        let l4_len = if udp {
            crate::wire::udp::HEADER_LEN
        } else {
            // The caller has read the header with `TcpPacket::new_checked`.
            usize::from(TcpPacket::new_unchecked(&frame[flow.l4..flow.end]).header_len())
        };
        let payload = flow.l4 + l4_len;
        if payload > flow.end {
            return Err(DropReason::Malformed);
        }
        let size = if meta.gso_size > 0 {
            usize::from(meta.gso_size)
        } else {
            // No segment size given: the largest that fits the tunnel.
            (mtu as usize).saturating_sub(OUTER_LEN + (payload - flow.ip))
        };
        if size == 0 {
            return Err(DropReason::TooBig);
        }
        Ok(Some(Segments { payload, size, udp }))
    }

    fn count(&self, flow: Flow) -> usize {
        (flow.end - self.payload).div_ceil(self.size).max(1)
    }

    /// IPv4 length of the largest segment.
    fn largest(&self, flow: Flow) -> usize {
        (self.payload - flow.ip) + self.size.min(flow.end - self.payload)
    }

    /// Writes segment `i` into `buf` after room for the Ethernet and outer headers: the
    /// inner IPv4 header (length, id + i, checksum), the TCP header (sequence number,
    /// flags) or UDP header (length), full L4 checksum, its part of the payload.
    fn build(&self, frame: &[u8], flow: Flow, i: usize, buf: &mut Vec<u8>) {
        let start = self.payload + i * self.size;
        let end = (start + self.size).min(flow.end);
        let last = end == flow.end;
        buf.clear();
        buf.resize(ENCAP_HEADERS, 0);
        buf.extend_from_slice(&frame[flow.ip..self.payload]);
        buf.extend_from_slice(&frame[start..end]);
        let inner = &mut buf[ENCAP_HEADERS..];
        let l4 = flow.l4 - flow.ip;
        let total = inner.len();
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut inner[..]);
            let ident = ip.ident().wrapping_add(i as u16);
            ip.set_total_len(total as u16);
            ip.set_ident(ident);
            ip.fill_checksum();
        }
        if self.udp {
            let mut udp = UdpPacket::new_unchecked(&mut inner[l4..]);
            udp.set_len((total - l4) as u16);
            udp.fill_checksum(flow.src, flow.dst);
        } else {
            let mut tcp = TcpPacket::new_unchecked(&mut inner[l4..]);
            let seq = tcp.seq_number().wrapping_add((i * self.size) as u32);
            tcp.set_seq_number(seq);
            let mut flags = tcp.flags().0;
            if !last {
                flags &= !(TcpFlags::FIN.0 | TcpFlags::PSH.0);
            }
            if i > 0 {
                flags &= !TcpFlags::CWR.0;
            }
            tcp.set_flags(TcpFlags(flags));
            tcp.fill_checksum(flow.src, flow.dst);
        }
    }
}

/// Finishes a partial TCP/UDP checksum (the field holds the pseudo-header sum) in software.
fn complete_l4_checksum(frame: &mut [u8], flow: Flow) {
    let seg = &mut frame[flow.l4..flow.end];
    if flow.proto == PROTO_TCP {
        TcpPacket::new_unchecked(seg).fill_checksum(flow.src, flow.dst);
    } else {
        // The caller has read the header with `UdpPacket::new_checked`: its length fits.
        UdpPacket::new_unchecked(seg).fill_checksum(flow.src, flow.dst);
    }
}

/// ICMP fragmentation needed (type 3 code 4, RFC 792 / RFC 1191 next-hop MTU) for the
/// packet of `flow`, from the VIP it was sent to, back to its source: the quoted packet is
/// its IPv4 header and first 8 bytes as received. Within the worker's budget; a spent
/// budget is counted, an unreachable client is not answered.
/// The way back to the sender of `frame` when the FIB's next hop toward `src` is not
/// resolved yet: the frame's source MAC, out of the interface it came in on, if that is where
/// the route toward `src` leaves. The sender is then a neighbour on the route's link that
/// forwarded or sent the packet, so it can take the error back. This is the case right after a
/// takeover: a TUN (or DR) director never sends to its clients, so the new master has never
/// resolved them, and the first burst of too-big segments arrives before its solicitation is
/// answered; without this, each of those clients learns nothing and waits out a
/// retransmission timeout before it sends the same too-big segments again.
fn back_to_sender(frame: &[u8], src: Ipv4Addr, meta: RxMeta, t: &Tables<'_>) -> Option<NextHop> {
    let Err(crate::fib::FibMiss::NoNeighbour { ifindex, .. }) = t.fib.resolve(src) else {
        return None;
    };
    if ifindex != meta.ingress {
        return None;
    }
    let iface = t.fib.interface(ifindex)?;
    let sender = EthernetFrame::new_checked(frame).ok()?.src_addr();
    Some(NextHop {
        ifindex,
        src_mac: iface.mac,
        dst_mac: sender.0,
        mtu: iface.mtu,
    })
}

fn frag_needed(p: &Packet<'_>, mtu: u16, cx: &mut Cx<'_, '_>) {
    let (frame, flow, t) = (&*p.frame, p.flow, cx.t);
    let hop = match next_hop(flow.src, cx) {
        Ok(hop) => hop,
        Err(_) => match back_to_sender(frame, flow.src, p.meta, t) {
            Some(hop) => hop,
            None => {
                WorkerCounters::bump(&cx.w.counters.icmp_unroutable);
                return;
            }
        },
    };
    let ctx = &mut *cx.w;
    if !ctx.state.icmp_allowed(cx.now) {
        WorkerCounters::bump(&ctx.counters.icmp_limited);
        return;
    }
    let quote = &frame[flow.ip..(flow.l4 + 8).min(flow.end)];
    let ident = ctx.state.next_ident();
    let repr = Ipv4Repr {
        src: flow.dst,
        dst: flow.src,
        protocol: PROTO_ICMP,
        ttl: ICMP_TTL,
        ident,
        dont_frag: false,
        payload_len: (icmp::HEADER_LEN + quote.len()) as u16,
    };
    let buf = &mut ctx.state.buf;
    buf.clear();
    buf.resize(ethernet::HEADER_LEN + repr.buffer_len(), 0);
    {
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.set_dst_addr(MacAddr(hop.dst_mac));
        eth.set_src_addr(MacAddr(hop.src_mac));
        eth.set_ethertype(ETHERTYPE_IPV4);
    }
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[ethernet::HEADER_LEN..]);
    repr.emit(&mut ip)
        .expect("the buffer was sized for the header and a short quote");
    let mut msg = Icmpv4Packet::new_unchecked(ip.payload_mut());
    msg.set_msg_type(icmp::TYPE_DEST_UNREACHABLE);
    msg.set_code(icmp::CODE_FRAG_NEEDED);
    msg.set_next_hop_mtu(mtu);
    msg.payload_mut().copy_from_slice(quote);
    msg.fill_checksum();
    ctx.out.emit(hop.ifindex, buf);
    WorkerCounters::bump(&ctx.counters.icmp_sent);
}
