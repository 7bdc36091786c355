//! DR (LVS direct routing): the client's packet goes to the real server unchanged at layer 3
//! — only the Ethernet destination becomes the real server's MAC (and the TTL loses one, as
//! on any forwarded packet). The real server holds the VIP on a non-ARP interface (loopback,
//! `arp_ignore`/`arp_announce`) and answers the client directly, so a DR flow only ever
//! shows the director `Direction::In` packets, and the real server must be on a link of the
//! director: the next hop toward it is the real server itself.
//!
//! An ICMP error to the VIP about a DR flow (the real server sent the quoted packet as the
//! VIP) goes to the real server the same way, unchanged (`inbound.rs`).

#![forbid(unsafe_code)]

use super::inbound::Conn;
use super::packet::{Cx, Packet};
use super::{emit, Verdict};

/// Client → VIP: to the real server's MAC, nothing else rewritten.
pub(super) fn inbound(p: &mut Packet<'_>, conn: &Conn, cx: &mut Cx<'_, '_>) -> Verdict {
    emit(p, *conn.real.ip(), cx, |c| &c.forwarded_in)
}
