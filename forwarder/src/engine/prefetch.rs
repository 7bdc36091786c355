//! Prefetch of the connection-table index for a block of frames.
//!
//! A new flow's first lookup (its inbound key in the client's shard) misses the cache: the
//! index is large (about 30 bytes per entry of capacity) and a new key's cell is anywhere
//! in it. perf showed new flows stalling on that load. [`Engine::prefetch`] reads just
//! enough of a frame to know its inbound key (Ethernet, IPv4, the ports), and when it is
//! addressed to a VIP asks the CPU to start loading the key's home cell
//! ([`crate::conntrack::ConnTable::prefetch`]); the datapath calls it for every frame of a
//! block before the engine processes the first, so the block's misses are in flight
//! together. Frames it cannot read are left alone: the engine decides about them as ever.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{Engine, Tables};
use crate::conntrack::FlowKey;
use crate::model::Protocol;
use crate::wire::ethernet::{self, ETHERTYPE_IPV4};

impl Engine {
    /// Hints the cache about the table lookup `frame` will need (see the module comment).
    #[inline]
    pub fn prefetch(&self, frame: &[u8], t: &Tables<'_>) {
        let Some(ip) = frame.get(ethernet::HEADER_LEN..) else {
            return;
        };
        if frame[12..14] != ETHERTYPE_IPV4.to_be_bytes() || ip.len() < 20 || ip[0] >> 4 != 4 {
            return;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        // A later fragment has no ports; a short header is the engine's to judge.
        let offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
        let (Some(l4), Some(proto), 0) =
            (ip.get(ihl..ihl + 4), Protocol::from_ip_proto(ip[9]), offset)
        else {
            return;
        };
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        if ihl < 20 || !t.services.is_vip(dst) {
            return;
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        self.conns.prefetch(&FlowKey {
            proto,
            client: SocketAddrV4::new(src, u16::from_be_bytes([l4[0], l4[1]])),
            vip: SocketAddrV4::new(dst, u16::from_be_bytes([l4[2], l4[3]])),
        });
    }
}
