//! VRRP advertisement codec: VRRPv3 (RFC 9568, formerly RFC 5798) and VRRPv2 (RFC 3768).
//!
//! IPv4 now; the types carry `IpAddr` so IPv6 (v3 only) slots in without changing callers.
//! Decoding checks everything RFC 9568 §7.1 asks a receiver to check that does not need the
//! instance's config (TTL 255, version, type, length against the address count, checksum);
//! the VRID, address list and interval are the instance's business.

#![forbid(unsafe_code)]

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

/// The VRRP packet type of an advertisement (RFC 9568 §5.2.2); the only type there is.
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Length of the fixed VRRP header, before the addresses.
pub const HEADER_LEN: usize = 8;
/// v2 only: the authentication data that follows the addresses (RFC 3768 §5.3.10).
pub const V2_AUTH_DATA_LEN: usize = 8;
/// Largest v3 interval: Max Adver Int is a 12-bit field (RFC 9568 §5.2.7).
pub const MAX_INTERVAL_CS_V3: u16 = 0x0fff;

const IPV4_HEADER_MIN: usize = 20;

/// Byte offsets inside a VRRP message (RFC 9568 §5.1, RFC 3768 §5.1).
mod field {
    pub const VER_TYPE: usize = 0;
    pub const VRID: usize = 1;
    pub const PRIORITY: usize = 2;
    pub const COUNT: usize = 3;
    /// v3: 4 reserved bits, then the 12-bit Max Adver Int (bytes 4..6).
    /// v2: Auth Type (byte 4), then Adver Int in seconds (byte 5).
    pub const INTERVAL: core::ops::Range<usize> = 4..6;
    pub const V2_AUTH_TYPE: usize = 4;
    pub const V2_ADVER_INT: usize = 5;
    pub const CHECKSUM: core::ops::Range<usize> = 6..8;
    pub const ADDRS: usize = 8;
}

/// Why a received packet is not a usable advertisement. Each variant is one counter;
/// [`DecodeError::label`] is its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The datagram is shorter than an IPv4 header, or the message shorter than a VRRP header.
    #[error("packet too short: {len} bytes")]
    Short { len: usize },
    /// The IPv4 header is not one we can use.
    #[error("bad IPv4 header: {what}")]
    IpHeader { what: &'static str },
    /// The IPv4 datagram does not carry VRRP (protocol 112).
    #[error("IP protocol {protocol} is not VRRP")]
    NotVrrp { protocol: u8 },
    /// TTL / hop limit is not 255, so the packet may come from off-link (RFC 9568 §7.1).
    #[error("TTL {ttl}, must be 255")]
    Ttl { ttl: u8 },
    /// VRRP version not 2 or 3, or version 2 over IPv6 (RFC 3768 is IPv4 only).
    #[error("VRRP version {version} not supported here")]
    Version { version: u8 },
    /// VRRP type other than ADVERTISEMENT (1).
    #[error("VRRP type {kind}, only ADVERTISEMENT (1) exists")]
    Type { kind: u8 },
    /// The message length does not match the address count (RFC 9568 §7.1).
    #[error("VRRP message is {len} bytes, its address count says {expected}")]
    Length { len: usize, expected: usize },
    /// The checksum is wrong under every style accepted for this version and family.
    #[error("VRRP checksum does not match")]
    Checksum,
    /// v2 authentication other than none (0); RFC 3768 §5.3.6 removed the others.
    #[error("VRRPv2 auth type {auth_type}, only 0 (none) is accepted")]
    AuthType { auth_type: u8 },
    /// An advertisement interval of zero.
    #[error("advertisement interval of zero")]
    Interval,
    /// Source and destination addresses are of different families (a caller bug).
    #[error("source and destination addresses of different families")]
    Family,
}

impl DecodeError {
    /// Every label, in declaration order: counters can be registered up front.
    pub const LABELS: [&'static str; 11] = [
        "short",
        "ip_header",
        "not_vrrp",
        "ttl",
        "version",
        "type",
        "length",
        "checksum",
        "auth_type",
        "interval",
        "family",
    ];

    /// A stable name for counters and logs.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Short { .. } => "short",
            DecodeError::IpHeader { .. } => "ip_header",
            DecodeError::NotVrrp { .. } => "not_vrrp",
            DecodeError::Ttl { .. } => "ttl",
            DecodeError::Version { .. } => "version",
            DecodeError::Type { .. } => "type",
            DecodeError::Length { .. } => "length",
            DecodeError::Checksum => "checksum",
            DecodeError::AuthType { .. } => "auth_type",
            DecodeError::Interval => "interval",
            DecodeError::Family => "family",
        }
    }
}

/// An advertisement taken from a whole IPv4 datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Always [`TTL`]: anything else is rejected. Kept for logs.
    pub ttl: u8,
    /// Which checksum style the sender used (v2: always `MessageOnly`).
    pub checksum: ChecksumMode,
    pub advert: Advert,
}

/// Decodes a whole IPv4 datagram as a raw IP socket returns it (header included). Bytes
/// after the IP total length are ignored. The IP header checksum is not checked: the kernel
/// drops datagrams whose header checksum is wrong before a raw socket sees them.
pub fn decode_ipv4(datagram: &[u8]) -> Result<Received, DecodeError> {
    if datagram.len() < IPV4_HEADER_MIN {
        return Err(DecodeError::Short {
            len: datagram.len(),
        });
    }
    if datagram[0] >> 4 != 4 {
        return Err(DecodeError::IpHeader {
            what: "IP version is not 4",
        });
    }
    let header_len = usize::from(datagram[0] & 0x0f) * 4;
    if header_len < IPV4_HEADER_MIN {
        return Err(DecodeError::IpHeader {
            what: "IHL below 5",
        });
    }
    if header_len > datagram.len() {
        return Err(DecodeError::IpHeader {
            what: "IHL beyond the datagram",
        });
    }
    let total_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if total_len < header_len {
        return Err(DecodeError::IpHeader {
            what: "total length below the header length",
        });
    }
    if total_len > datagram.len() {
        return Err(DecodeError::IpHeader {
            what: "total length beyond the datagram",
        });
    }
    // More-fragments set or a non-zero offset: a piece of a datagram, never a whole advert.
    if u16::from_be_bytes([datagram[6], datagram[7]]) & 0x3fff != 0 {
        return Err(DecodeError::IpHeader { what: "fragment" });
    }
    let protocol = datagram[9];
    if protocol != IPPROTO_VRRP {
        return Err(DecodeError::NotVrrp { protocol });
    }
    let ttl = datagram[8];
    if ttl != TTL {
        return Err(DecodeError::Ttl { ttl });
    }
    let src = Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]);
    let dst = Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]);
    let message = &datagram[header_len..total_len];
    let (advert, checksum) = match decode(message, IpAddr::V4(src), IpAddr::V4(dst)) {
        // keepalived before 1.3.6 (and later ones with `old_unicast_checksum`) sum unicast v3
        // adverts over a pseudo-header addressed to 224.0.0.18; keepalived itself accepts
        // them, and so do we.
        Err(DecodeError::Checksum) if dst != MULTICAST_V4 => {
            decode(message, IpAddr::V4(src), IpAddr::V4(MULTICAST_V4))?
        }
        other => other?,
    };
    Ok(Received {
        src,
        dst,
        ttl,
        checksum,
        advert,
    })
}

/// Decodes a VRRP message (the IP payload) sent from `src` to `dst`.
///
/// Checks version, type, length against the address count, checksum, v2 auth type and a
/// non-zero interval, in that order. IPv4 v3 accepts the checksum with the pseudo-header
/// (RFC 9568 §5.2.8) or over the message alone, and says which matched; v2 is over the message
/// alone (RFC 3768 §5.3.8); IPv6 (v3 only) always uses the IPv6 pseudo-header. The TTL / hop
/// limit is the caller's to check (the IPv6 socket gives it as ancillary data).
pub fn decode(
    message: &[u8],
    src: IpAddr,
    dst: IpAddr,
) -> Result<(Advert, ChecksumMode), DecodeError> {
    let ipv6 = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return Err(DecodeError::Family),
    };
    if message.len() < HEADER_LEN {
        return Err(DecodeError::Short { len: message.len() });
    }
    let version = match message[field::VER_TYPE] >> 4 {
        3 => Version::V3,
        2 if !ipv6 => Version::V2,
        other => return Err(DecodeError::Version { version: other }),
    };
    let kind = message[field::VER_TYPE] & 0x0f;
    if kind != TYPE_ADVERTISEMENT {
        return Err(DecodeError::Type { kind });
    }
    let count = usize::from(message[field::COUNT]);
    let addr_len = if ipv6 { 16 } else { 4 };
    let expected = message_len(version, count, addr_len);
    if message.len() != expected {
        return Err(DecodeError::Length {
            len: message.len(),
            expected,
        });
    }
    let checksum = check_checksum(message, version, src, dst)?;
    let interval_cs = match version {
        Version::V3 => {
            let [hi, lo] = [
                message[field::INTERVAL.start],
                message[field::INTERVAL.start + 1],
            ];
            u16::from_be_bytes([hi, lo]) & MAX_INTERVAL_CS_V3
        }
        Version::V2 => {
            let auth_type = message[field::V2_AUTH_TYPE];
            if auth_type != 0 {
                return Err(DecodeError::AuthType { auth_type });
            }
            u16::from(message[field::V2_ADVER_INT]) * 100
        }
    };
    if interval_cs == 0 {
        return Err(DecodeError::Interval);
    }
    let mut addrs = Vec::with_capacity(count);
    for raw in message[field::ADDRS..field::ADDRS + count * addr_len].chunks_exact(addr_len) {
        addrs.push(if ipv6 {
            let mut octets = [0; 16];
            octets.copy_from_slice(raw);
            IpAddr::from(octets)
        } else {
            IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
        });
    }
    let advert = Advert {
        version,
        vrid: message[field::VRID],
        priority: message[field::PRIORITY],
        interval_cs,
        addrs,
    };
    Ok((advert, checksum))
}

/// Encodes the VRRP message (the IP payload; the kernel adds the IP header).
///
/// The family is `src`'s: addresses of the other family are left out, and at most 255
/// addresses are sent (the count is one byte); the instance's config validation keeps both
/// from happening. The interval is clamped to the field: v3 to [`MAX_INTERVAL_CS_V3`], v2 to
/// `interval_cs / 100` seconds, at most 255. `mode` matters only for v3 over IPv4: v2 is
/// always over the message alone and IPv6 always over the pseudo-header.
pub fn encode(advert: &Advert, src: IpAddr, dst: IpAddr, mode: ChecksumMode) -> Vec<u8> {
    let ipv6 = src.is_ipv6();
    let addrs = advert
        .addrs
        .iter()
        .filter(|a| a.is_ipv6() == ipv6)
        .take(usize::from(u8::MAX));
    let count = addrs.clone().count();
    let addr_len = if ipv6 { 16 } else { 4 };
    let mut out = Vec::with_capacity(message_len(advert.version, count, addr_len));
    let version = match advert.version {
        Version::V2 => 2,
        Version::V3 => 3,
    };
    out.push(version << 4 | TYPE_ADVERTISEMENT);
    out.push(advert.vrid);
    out.push(advert.priority);
    out.push(u8::try_from(count).unwrap_or(u8::MAX));
    match advert.version {
        Version::V3 => {
            out.extend_from_slice(&advert.interval_cs.min(MAX_INTERVAL_CS_V3).to_be_bytes())
        }
        Version::V2 => {
            let secs = u8::try_from(advert.interval_cs / 100).unwrap_or(u8::MAX);
            out.extend_from_slice(&[0, secs]);
        }
    }
    out.extend_from_slice(&[0, 0]);
    for addr in addrs {
        match addr {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
    if advert.version == Version::V2 {
        out.extend_from_slice(&[0; V2_AUTH_DATA_LEN]);
    }
    let with_pseudo = match advert.version {
        Version::V2 => false,
        Version::V3 => ipv6 || mode == ChecksumMode::PseudoHeader,
    };
    let start = if with_pseudo {
        pseudo_header_sum(src, dst, out.len())
    } else {
        0
    };
    let checksum = !fold(sum_be_words(start, &out));
    out[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    out
}

/// Encodes a whole IPv4 datagram: a 20-byte header (TOS 0xc0 as keepalived sends, TTL 255,
/// protocol 112, correct header checksum) and the message of [`encode`]. For tests and lab
/// injection; the daemon lets the kernel write the IP header.
pub fn encode_ipv4_datagram(
    advert: &Advert,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    mode: ChecksumMode,
) -> Vec<u8> {
    let message = encode(advert, IpAddr::V4(src), IpAddr::V4(dst), mode);
    let total_len = u16::try_from(IPV4_HEADER_MIN + message.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(IPV4_HEADER_MIN + message.len());
    out.extend_from_slice(&[0x45, 0xc0]);
    out.extend_from_slice(&total_len.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, TTL, IPPROTO_VRRP, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let header_checksum = !fold(sum_be_words(0, &out));
    out[10..12].copy_from_slice(&header_checksum.to_be_bytes());
    out.extend_from_slice(&message);
    out
}

/// The length of a message with `count` addresses of `addr_len` bytes each.
fn message_len(version: Version, count: usize, addr_len: usize) -> usize {
    let auth = match version {
        Version::V2 => V2_AUTH_DATA_LEN,
        Version::V3 => 0,
    };
    HEADER_LEN + count * addr_len + auth
}

/// Which accepted checksum style `message` (checksum field included) verifies under.
fn check_checksum(
    message: &[u8],
    version: Version,
    src: IpAddr,
    dst: IpAddr,
) -> Result<ChecksumMode, DecodeError> {
    // A correct message sums (with its checksum) to 0xffff, ones-complement zero.
    let verifies = |start: u64| fold(sum_be_words(start, message)) == 0xffff;
    let pseudo = || pseudo_header_sum(src, dst, message.len());
    match (version, src.is_ipv6()) {
        (Version::V2, _) if verifies(0) => Ok(ChecksumMode::MessageOnly),
        (Version::V3, _) if verifies(pseudo()) => Ok(ChecksumMode::PseudoHeader),
        (Version::V3, false) if verifies(0) => Ok(ChecksumMode::MessageOnly),
        _ => Err(DecodeError::Checksum),
    }
}

/// The unfolded sum of the IPv4 (RFC 768 style) or IPv6 (RFC 8200 §8.1) pseudo-header.
fn pseudo_header_sum(src: IpAddr, dst: IpAddr, len: usize) -> u64 {
    let len = len as u64;
    let proto = u64::from(IPPROTO_VRRP);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum_be_words(sum_be_words(proto + len, &s.octets()), &d.octets())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // The 32-bit length is two words; the zero bytes and next header one more.
            let words = (len >> 16) + (len & 0xffff) + proto;
            sum_be_words(sum_be_words(words, &s.octets()), &d.octets())
        }
        // Mixed families never reach here (decode rejects them); any sum is as good as another.
        (s, d) => sum_be_words(sum_be_words(proto + len, &ip_bytes(s)), &ip_bytes(d)),
    }
}

fn ip_bytes(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Adds `bytes` as big-endian 16-bit words to `acc`, an odd last byte padded with zero
/// (RFC 1071). A u64 cannot overflow for any slice that fits in memory.
fn sum_be_words(acc: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    let mut acc = words.by_ref().fold(acc, |acc, w| {
        acc + u64::from(u16::from_be_bytes([w[0], w[1]]))
    });
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds carries back in until the sum fits 16 bits.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_carries_until_sixteen_bits() {
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(0xffff_ffff_ffff), 0xffff);
        assert_eq!(sum_be_words(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    /// RFC 1071 §3's worked example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
    #[test]
    fn rfc1071_example_sum() {
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_be_words(0, &bytes)), 0xddf2);
    }

    #[test]
    fn labels_list_matches_label() {
        let all = [
            DecodeError::Short { len: 0 },
            DecodeError::IpHeader { what: "" },
            DecodeError::NotVrrp { protocol: 0 },
            DecodeError::Ttl { ttl: 0 },
            DecodeError::Version { version: 0 },
            DecodeError::Type { kind: 0 },
            DecodeError::Length {
                len: 0,
                expected: 0,
            },
            DecodeError::Checksum,
            DecodeError::AuthType { auth_type: 0 },
            DecodeError::Interval,
            DecodeError::Family,
        ];
        let labels: Vec<_> = all.iter().map(DecodeError::label).collect();
        assert_eq!(labels, DecodeError::LABELS);
    }
}
