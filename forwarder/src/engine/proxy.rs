//! PROXY protocol v2 for FULLNAT TCP: the real server sees a LIP as the peer, so the client's
//! address travels in a PROXY header at the start of the stream.
//!
//! The 28-byte header (v2, PROXY, TCP over IPv4: client address and port as the source,
//! VIP and port as the destination) is inserted before the client's first byte, sequence
//! number `client_isn + 1`, in whichever client segment carries that byte (or the client's
//! FIN if it sends nothing), again in each retransmission of it. From then on the two ends
//! disagree by `delta` = 28 about the client's sequence space, and the engine translates
//! every segment of the flow:
//!
//! - client → real: a sequence number past `client_isn + 1` gains `delta`; the segment at
//!   `client_isn + 1` with data or FIN gets the header (and keeps its number); a pure ACK
//!   there, before the client has sent anything, is left alone;
//! - real → client: an acknowledgement number that covers the header loses `delta` (one that
//!   covers part of it, which a real stack does not send, becomes `client_isn + 1`), and so
//!   does each edge of a SACK block;
//! - the real server's SYN-ACK: its MSS option is lowered by `delta`, so that the client's
//!   first full-sized segment still fits the path once the header is in it.
//!
//! The shift (ISN and delta) lives in the connection entry and is synced, so the standby
//! translates the flow the same way after a takeover.

#![forbid(unsafe_code)]

use std::net::SocketAddrV4;

use crate::conntrack::tcp_flags::{ACK, FIN, SYN};
use crate::conntrack::ProxySeq;
use crate::wire::checksum;
use crate::wire::tcp::TcpPacket;

use super::packet::Packet;
use super::Insert;

/// The PROXY v2 signature.
const SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// Length of the header for TCP over IPv4.
pub const V2_TCP4_LEN: u16 = 28;

/// Smallest MSS the clamp leaves (RFC 879's default for IPv4).
const MIN_MSS: u16 = 536;

/// The v2 header for a TCP/IPv4 connection from `client` to `vip`.
pub fn header_v2(client: SocketAddrV4, vip: SocketAddrV4) -> [u8; V2_TCP4_LEN as usize] {
    let mut h = [0u8; V2_TCP4_LEN as usize];
    h[..12].copy_from_slice(&SIGNATURE);
    h[12] = 0x21; // version 2, command PROXY
    h[13] = 0x11; // AF_INET, STREAM
    h[14..16].copy_from_slice(&12u16.to_be_bytes());
    h[16..20].copy_from_slice(&client.ip().octets());
    h[20..24].copy_from_slice(&vip.ip().octets());
    h[24..26].copy_from_slice(&client.port().to_be_bytes());
    h[26..28].copy_from_slice(&vip.port().to_be_bytes());
    h
}

/// The TCP header's length and the payload's length, if the header is sane.
fn tcp_lengths(p: &Packet<'_>) -> Option<(usize, usize)> {
    let seg = p.l4();
    if seg.len() < 20 {
        return None;
    }
    let doff = usize::from(TcpPacket::new_unchecked(seg).header_len());
    if doff < 20 || doff > seg.len() {
        return None;
    }
    Some((doff, seg.len() - doff))
}

/// Client → real, after the FULLNAT rewrite: shifts the sequence number, or returns the
/// header to insert (with the IPv4 total length and the TCP checksum already accounting
/// for it) when this segment carries the client's first byte or FIN.
pub(super) fn inbound(
    p: &mut Packet<'_>,
    tcp_flags: u8,
    ps: ProxySeq,
    client: SocketAddrV4,
    vip: SocketAddrV4,
) -> Option<Insert> {
    let (doff, payload) = tcp_lengths(p)?;
    if tcp_flags & SYN != 0 {
        return None;
    }
    let partial = p.meta.csum_partial;
    let seq = p.tcp_seq();
    let first = ps.client_isn.wrapping_add(1);
    let rel = seq.wrapping_sub(first) as i32;
    if rel > 0 {
        TcpPacket::new_unchecked(p.l4_mut())
            .set_seq_number_incremental(seq.wrapping_add(u32::from(ps.delta)), partial);
        return None;
    }
    if rel < 0 || (payload == 0 && tcp_flags & FIN == 0) {
        return None;
    }
    // The segment that starts the stream: the header goes before its payload.
    let header = header_v2(client, vip);
    let delta = ps.delta;
    {
        let mut ip = p.ipv4_mut();
        let total = ip.total_len().wrapping_add(delta);
        ip.set_total_len_incremental(total);
    }
    // TCP: the pseudo-header's length grows by delta; a complete checksum also takes the
    // header's words (inserted at an even offset, so the payload's words keep their places).
    let seg_len = p.l4().len() as u32;
    let mut tcp = TcpPacket::new_unchecked(p.l4_mut());
    tcp.update_checksum_for_len(seg_len, seg_len + u32::from(delta), partial);
    if !partial {
        let c = checksum::update_bytes(tcp.checksum(), &[0u8; V2_TCP4_LEN as usize], &header);
        tcp.set_checksum(c);
    }
    let mut bytes = [0u8; 32];
    bytes[..header.len()].copy_from_slice(&header);
    Some(Insert {
        at: u16::try_from(p.flow.l4 + doff).ok()?,
        len: V2_TCP4_LEN as u8,
        bytes,
    })
}

/// Maps a real server's acknowledgement (or SACK edge) into the client's sequence space.
fn unshift(n: u32, ps: ProxySeq) -> u32 {
    let first = ps.client_isn.wrapping_add(1);
    let rel = n.wrapping_sub(first) as i32;
    if rel >= i32::from(ps.delta) {
        n.wrapping_sub(u32::from(ps.delta))
    } else if rel > 0 {
        first
    } else {
        n
    }
}

/// Real → client, after the FULLNAT rewrite: the acknowledgement and SACK edges lose the
/// shift, and a SYN-ACK's MSS is lowered by it.
pub(super) fn reply(p: &mut Packet<'_>, tcp_flags: u8, ps: ProxySeq) {
    let Some((doff, _)) = tcp_lengths(p) else {
        return;
    };
    let partial = p.meta.csum_partial;
    let mut tcp = TcpPacket::new_unchecked(p.l4_mut());
    if tcp_flags & ACK != 0 {
        let ack = tcp.ack_number();
        let new = unshift(ack, ps);
        if new != ack {
            tcp.set_ack_number_incremental(new, partial);
        }
    }
    // The options, by offset from their start (20 bytes into the segment).
    let opts_len = doff - 20;
    let mut i = 0;
    while i < opts_len {
        let opts = tcp.options();
        let kind = opts[i];
        if kind == 0 {
            break;
        }
        if kind == 1 {
            i += 1;
            continue;
        }
        let Some(&len) = opts.get(i + 1) else {
            break;
        };
        let len = usize::from(len);
        if len < 2 || i + len > opts_len {
            break;
        }
        match (kind, len) {
            (2, 4) if tcp_flags & SYN != 0 => {
                let mss = u16::from_be_bytes([opts[i + 2], opts[i + 3]]);
                let clamped = mss.saturating_sub(ps.delta).max(MIN_MSS).min(mss);
                if clamped != mss {
                    tcp.patch_header_incremental(20 + i + 2, &clamped.to_be_bytes(), partial);
                }
            }
            (5, _) if (len - 2) % 8 == 0 => {
                let mut at = i + 2;
                while at + 4 <= i + len {
                    let o = tcp.options();
                    let edge = u32::from_be_bytes([o[at], o[at + 1], o[at + 2], o[at + 3]]);
                    let new = unshift(edge, ps);
                    if new != edge {
                        tcp.patch_header_incremental(20 + at, &new.to_be_bytes(), partial);
                    }
                    at += 4;
                }
            }
            _ => {}
        }
        i += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_the_spec_layout() {
        let h = header_v2(
            "198.18.1.10:40000".parse().unwrap(),
            "198.18.1.100:80".parse().unwrap(),
        );
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(&h[12..16], &[0x21, 0x11, 0x00, 0x0c]);
        assert_eq!(&h[16..24], &[198, 18, 1, 10, 198, 18, 1, 100]);
        assert_eq!(&h[24..28], &[0x9c, 0x40, 0x00, 0x50]);
    }

    #[test]
    fn acknowledgements_lose_the_shift_once_past_the_header() {
        let ps = ProxySeq {
            client_isn: 999,
            delta: 28,
        };
        assert_eq!(unshift(1000, ps), 1000, "SYN-ACK acks the ISN + 1");
        assert_eq!(unshift(1000 + 28, ps), 1000, "the header alone");
        assert_eq!(unshift(1000 + 28 + 5, ps), 1005);
        assert_eq!(unshift(1010, ps), 1000, "inside the header");
        let wrap = ProxySeq {
            client_isn: u32::MAX - 3,
            delta: 28,
        };
        assert_eq!(unshift(wrap.client_isn.wrapping_add(1 + 28 + 7), wrap), 4);
    }
}
