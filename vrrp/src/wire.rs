//! VRRP advertisement codec: VRRPv3 (RFC 9568, formerly RFC 5798) and VRRPv2 (RFC 3768).
//!
//! IPv4 now; the types carry `IpAddr` so IPv6 (v3 only) slots in without changing callers.
//! Decoding checks everything RFC 9568 §7.1 asks a receiver to check that does not need the
//! instance's config (TTL 255, version, type, length against the address count, checksum);
//! the VRID, address list and interval are the instance's business.

use std::net::{IpAddr, Ipv4Addr};

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// IPv4 multicast group of VRRP.
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// Every VRRP packet is sent, and must arrive, with this TTL / hop limit.
pub const TTL: u8 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// RFC 3768: intervals in whole seconds, an 8-byte (unused) authentication field.
    V2,
    /// RFC 9568: intervals in centiseconds.
    V3,
}

/// How the v3 IPv4 checksum is computed on send. Receive accepts both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// Over the IPv4 pseudo-header and the VRRP message, as RFC 9568 says and keepalived does.
    PseudoHeader,
    /// Over the VRRP message only, as some routers (Cisco, Juniper) do for v3 over IPv4.
    MessageOnly,
}

/// A decoded (or to-be-encoded) advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// The advertisement interval in centiseconds. v2 carries whole seconds on the wire;
    /// decoding multiplies by 100 and encoding divides (the config only allows whole seconds).
    pub interval_cs: u16,
    /// The virtual addresses, in wire order.
    pub addrs: Vec<IpAddr>,
}
