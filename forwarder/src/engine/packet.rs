//! The frame being processed, parsed once: [`Packet`] holds the frame, the offsets and
//! addresses read from it ([`Flow`]) and what the ring said about it ([`RxMeta`]); every
//! step of the engine takes it instead of re-reading the headers, and every rewrite goes
//! through the wire views' incremental setters (`crate::wire`), which keep the IPv4 and
//! TCP/UDP checksums right. [`Cx`] is the other half of each call: the tables, the engine's
//! clock and the worker.
//!
//! The packet quoted in an ICMP error ([`Quoted`]) is parsed once the same way, and
//! translated with [`Packet::translate_quoted`].

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{RxMeta, Tables, WorkerCtx};
use crate::wire::icmp::{self, Icmpv4Packet};
use crate::wire::ipv4::{Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::wire::tcp::TcpPacket;
use crate::wire::udp::UdpPacket;

/// The L3/L4 facts of a frame, read once. `src` and `dst` follow the rewrites made through
/// [`Packet`]; the offsets never change (bytes are inserted only when the frame is sent).
#[derive(Debug, Clone, Copy)]
pub(super) struct Flow {
    /// Offset of the IPv4 header in the frame.
    pub ip: usize,
    /// Offset of the L4 header in the frame.
    pub l4: usize,
    /// End of the IP packet in the frame (total length; Ethernet padding excluded).
    pub end: usize,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub fragment: bool,
}

/// L4 ports and TCP flags of a TCP/UDP packet, as received.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ports {
    pub src: u16,
    pub dst: u16,
    pub tcp_flags: u8,
}

/// One end of a packet: its source or its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Src,
    Dst,
}

/// The frame being processed and where its headers are.
pub(super) struct Packet<'f> {
    pub frame: &'f mut [u8],
    pub flow: Flow,
    pub meta: RxMeta,
}

/// What each step of the engine needs besides the packet.
pub(super) struct Cx<'c, 'w> {
    pub t: &'c Tables<'c>,
    /// Engine seconds.
    pub now: u32,
    pub w: &'c mut WorkerCtx<'w>,
}

impl<'f> Packet<'f> {
    /// The IP packet (Ethernet padding excluded).
    #[inline]
    pub fn ipv4(&self) -> Ipv4Packet<&[u8]> {
        Ipv4Packet::new_unchecked(&self.frame[self.flow.ip..self.flow.end])
    }

    #[inline]
    pub fn ipv4_mut(&mut self) -> Ipv4Packet<&mut [u8]> {
        Ipv4Packet::new_unchecked(&mut self.frame[self.flow.ip..self.flow.end])
    }

    /// The L4 segment (to the end of the IP packet).
    #[inline]
    pub fn l4(&self) -> &[u8] {
        &self.frame[self.flow.l4..self.flow.end]
    }

    #[inline]
    pub fn l4_mut(&mut self) -> &mut [u8] {
        &mut self.frame[self.flow.l4..self.flow.end]
    }

    /// The IP packet's length.
    #[inline]
    pub fn len(&self) -> usize {
        self.flow.end - self.flow.ip
    }

    /// The ports and TCP flags of a TCP/UDP packet whose header is whole.
    pub fn ports(&self) -> Option<Ports> {
        let l4 = self.frame.get(self.flow.l4..self.flow.end)?;
        match self.flow.proto {
            PROTO_TCP => {
                let tcp = TcpPacket::new_checked(l4).ok()?;
                Some(Ports {
                    src: tcp.src_port(),
                    dst: tcp.dst_port(),
                    tcp_flags: tcp.flags().0,
                })
            }
            PROTO_UDP => {
                let udp = UdpPacket::new_checked(l4).ok()?;
                Some(Ports {
                    src: udp.src_port(),
                    dst: udp.dst_port(),
                    tcp_flags: 0,
                })
            }
            _ => None,
        }
    }

    /// The IPv4 header checksum, verified only for frames the datapath handles (the kernel
    /// checks its own).
    #[inline]
    pub fn ip_header_ok(&self) -> bool {
        self.ipv4().verify_checksum()
    }

    /// The TCP/UDP checksum over the pseudo-header and the segment.
    pub fn l4_checksum_ok(&self) -> bool {
        let (src, dst) = (self.flow.src, self.flow.dst);
        match self.flow.proto {
            PROTO_TCP => TcpPacket::new_unchecked(self.l4()).verify_checksum(src, dst),
            PROTO_UDP => UdpPacket::new_unchecked(self.l4()).verify_checksum(src, dst),
            _ => true,
        }
    }

    /// The TCP sequence number of a segment whose header [`Packet::ports`] has checked.
    #[inline]
    pub fn tcp_seq(&self) -> u32 {
        TcpPacket::new_unchecked(self.l4()).seq_number()
    }

    /// Rewrites the outer IPv4 address of one end (header checksum fixed; the L4 checksum is
    /// left to the caller: for an ICMP message it does not cover the address).
    pub fn set_ip(&mut self, end: End, to: Ipv4Addr) -> Ipv4Addr {
        let mut ip = self.ipv4_mut();
        match end {
            End::Src => {
                let old = ip.src_addr();
                ip.set_src_addr_incremental(to);
                self.flow.src = to;
                old
            }
            End::Dst => {
                let old = ip.dst_addr();
                ip.set_dst_addr_incremental(to);
                self.flow.dst = to;
                old
            }
        }
    }

    /// Rewrites address and port of one end of a TCP/UDP packet whose header is whole,
    /// fixing the IPv4 and TCP/UDP checksums incrementally (a partial L4 checksum only for
    /// the address: it does not cover the ports).
    pub fn rewrite(&mut self, end: End, to: SocketAddrV4) {
        let old = self.set_ip(end, *to.ip());
        let partial = self.meta.csum_partial;
        let new = *to.ip();
        match self.flow.proto {
            PROTO_TCP => {
                let mut tcp = TcpPacket::new_unchecked(self.l4_mut());
                tcp.update_checksum_for_addr(old, new, partial);
                match end {
                    End::Src => tcp.set_src_port_incremental(to.port(), partial),
                    End::Dst => tcp.set_dst_port_incremental(to.port(), partial),
                }
            }
            PROTO_UDP => {
                let mut udp = UdpPacket::new_unchecked(self.l4_mut());
                udp.update_checksum_for_addr(old, new, partial);
                match end {
                    End::Src => udp.set_src_port_incremental(to.port(), partial),
                    End::Dst => udp.set_dst_port_incremental(to.port(), partial),
                }
            }
            _ => unreachable!("rewrite is for TCP/UDP packets only"),
        }
    }

    /// The TCP/UDP packet quoted in an ICMP error (destination unreachable, time exceeded,
    /// parameter problem, source quench) carried by this packet.
    pub fn quoted(&self) -> Option<Quoted> {
        let flow = self.flow;
        if flow.proto != PROTO_ICMP {
            return None;
        }
        let icmp = Icmpv4Packet::new_checked(self.frame.get(flow.l4..flow.end)?).ok()?;
        if !matches!(
            icmp.msg_type(),
            icmp::TYPE_DEST_UNREACHABLE
                | icmp::TYPE_TIME_EXCEEDED
                | icmp::TYPE_PARAM_PROBLEM
                | icmp::TYPE_SOURCE_QUENCH
        ) {
            return None;
        }
        let q_off = flow.l4 + icmp::HEADER_LEN;
        let q = Ipv4Packet::new_checked_quoted(self.frame.get(q_off..flow.end)?).ok()?;
        let q_l4 = q_off + usize::from(q.header_len());
        let proto = q.protocol();
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return None;
        }
        let ports = self.frame.get(q_l4..q_l4 + 4)?;
        Some(Quoted {
            ip: q_off,
            l4: q_l4,
            src: q.src_addr(),
            dst: q.dst_addr(),
            proto,
            sport: u16::from_be_bytes([ports[0], ports[1]]),
            dport: u16::from_be_bytes([ports[2], ports[3]]),
        })
    }

    /// Rewrites one end of the quoted packet to `to`: the quoted header checksum and, where
    /// enough of the packet was quoted, its L4 checksum; then the ICMP checksum is computed
    /// again (errors are small and rare, so a full sum is simplest and exact).
    pub fn translate_quoted(&mut self, q: &mut Quoted, end: End, to: SocketAddrV4) {
        let flow = self.flow;
        let old = {
            let mut ip = Ipv4Packet::new_unchecked(&mut self.frame[q.ip..flow.end]);
            match end {
                End::Src => {
                    let old = ip.src_addr();
                    ip.set_src_addr_incremental(*to.ip());
                    old
                }
                End::Dst => {
                    let old = ip.dst_addr();
                    ip.set_dst_addr_incremental(*to.ip());
                    old
                }
            }
        };
        // The quoted L4 checksum is there only if enough of the packet was quoted (8 bytes
        // of TCP hold the ports but not the checksum).
        let csum_end = q.l4 + if q.proto == PROTO_TCP { 18 } else { 8 };
        let whole = csum_end <= flow.end;
        let seg = &mut self.frame[q.l4..flow.end];
        if q.proto == PROTO_TCP {
            let mut tcp = TcpPacket::new_unchecked(seg);
            match (end, whole) {
                (End::Src, true) => {
                    tcp.update_checksum_for_addr(old, *to.ip(), false);
                    tcp.set_src_port_incremental(to.port(), false);
                }
                (End::Dst, true) => {
                    tcp.update_checksum_for_addr(old, *to.ip(), false);
                    tcp.set_dst_port_incremental(to.port(), false);
                }
                (End::Src, false) => tcp.set_src_port(to.port()),
                (End::Dst, false) => tcp.set_dst_port(to.port()),
            }
        } else {
            let mut udp = UdpPacket::new_unchecked(seg);
            match (end, whole) {
                (End::Src, true) => {
                    udp.update_checksum_for_addr(old, *to.ip(), false);
                    udp.set_src_port_incremental(to.port(), false);
                }
                (End::Dst, true) => {
                    udp.update_checksum_for_addr(old, *to.ip(), false);
                    udp.set_dst_port_incremental(to.port(), false);
                }
                (End::Src, false) => udp.set_src_port(to.port()),
                (End::Dst, false) => udp.set_dst_port(to.port()),
            }
        }
        match end {
            End::Src => {
                q.src = *to.ip();
                q.sport = to.port();
            }
            End::Dst => {
                q.dst = *to.ip();
                q.dport = to.port();
            }
        }
        Icmpv4Packet::new_unchecked(&mut self.frame[flow.l4..flow.end]).fill_checksum();
    }
}

/// The TCP/UDP packet quoted in an ICMP error: where it is and what it says.
#[derive(Debug, Clone, Copy)]
pub(super) struct Quoted {
    /// Offset of the quoted IPv4 header in the frame.
    pub ip: usize,
    /// Offset of the quoted L4 header.
    pub l4: usize,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl Quoted {
    pub fn source(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.src, self.sport)
    }

    pub fn destination(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.dst, self.dport)
    }
}
