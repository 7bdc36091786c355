//! IPv4 headers (RFC 791).

use std::net::Ipv4Addr;

use super::checksum;
use super::{read_u16, read_u32, write_u16, write_u32, WireError};

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

mod field {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    /// TTL is the high byte, protocol the low byte, of the 16-bit word at 8.
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    pub const OPTIONS: usize = 20;

    pub const FLAG_DF: u16 = 0x4000;
    pub const FLAG_MF: u16 = 0x2000;
    pub const OFFSET_MASK: u16 = 0x1fff;
}

/// A view over an IPv4 packet. The buffer may extend past the total length (Ethernet
/// padding); [`payload`](Self::payload) stops at the total length.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short or malformed one.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer holding a whole IPv4 packet: version 4, IHL ≥ 5, the header and the
    /// total length within the buffer, and the total length at least the header length.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self { buffer };
        packet.check(false)?;
        Ok(packet)
    }

    /// Wraps the original datagram quoted in an ICMP error (RFC 792: its header plus at
    /// least 8 bytes of data). Its total length describes the original datagram, so it may
    /// exceed the buffer; [`payload`](Self::payload) is then the quoted part only. Everything
    /// else is checked as in [`new_checked`](Self::new_checked).
    #[inline]
    pub fn new_checked_quoted(buffer: T) -> Result<Self, WireError> {
        let packet = Self { buffer };
        packet.check(true)?;
        Ok(packet)
    }

    fn check(&self, quoted: bool) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 4 {
            return Err(WireError::BadVersion);
        }
        let header_len = usize::from(self.header_len());
        if header_len < HEADER_LEN {
            return Err(WireError::BadHeaderLen);
        }
        if header_len > len {
            return Err(WireError::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(WireError::BadTotalLen);
        }
        if total_len > len && !quoted {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    #[inline]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The former TOS byte: DSCP in the high 6 bits, ECN in the low 2.
    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    #[inline]
    fn flags_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLG_OFF)
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.flags_offset() & field::FLAG_DF != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        self.flags_offset() & field::FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units; this multiplies by 8).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (self.flags_offset() & field::OFFSET_MASK) << 3
    }

    /// True for any fragment, first (MF set) or later (offset ≠ 0): its ports may be missing.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_offset() & (field::FLAG_MF | field::OFFSET_MASK) != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_u32(self.buffer.as_ref(), field::SRC))
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_u32(self.buffer.as_ref(), field::DST))
    }

    /// The header, options included.
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.header_len())]
    }

    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..usize::from(self.header_len())]
    }

    #[inline]
    fn payload_range(&self) -> std::ops::Range<usize> {
        let end = usize::from(self.total_len()).min(self.buffer.as_ref().len());
        usize::from(self.header_len())..end
    }

    /// Bytes from the end of the header to the total length (padding after it excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    /// True when the header checksum is right.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.header(), 0)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the header length in bytes (a multiple of 4, 20 to 60).
    #[inline]
    pub fn set_header_len(&mut self, len: u8) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((len / 4) & 0x0f);
    }

    #[inline]
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, ident);
    }

    #[inline]
    fn set_flag(&mut self, flag: u16, on: bool) {
        let word = self.flags_offset() & !flag;
        let word = if on { word | flag } else { word };
        write_u16(self.buffer.as_mut(), field::FLG_OFF, word);
    }

    #[inline]
    pub fn set_dont_frag(&mut self, on: bool) {
        self.set_flag(field::FLAG_DF, on);
    }

    #[inline]
    pub fn set_more_frags(&mut self, on: bool) {
        self.set_flag(field::FLAG_MF, on);
    }

    /// Sets the fragment offset in bytes (rounded down to a multiple of 8).
    #[inline]
    pub fn set_frag_offset(&mut self, bytes: u16) {
        let word = (self.flags_offset() & !field::OFFSET_MASK) | (bytes >> 3);
        write_u16(self.buffer.as_mut(), field::FLG_OFF, word);
    }

    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    #[inline]
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, csum);
    }

    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        write_u32(self.buffer.as_mut(), field::SRC, addr.into());
    }

    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        write_u32(self.buffer.as_mut(), field::DST, addr.into());
    }

    /// Computes the header checksum from scratch and stores it.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = checksum::finish(checksum::sum(self.header(), 0));
        self.set_checksum(csum);
    }

    /// Rewrites the source address and updates the header checksum (RFC 1624). The TCP/UDP
    /// checksum also covers the address, through the pseudo-header: the caller updates it.
    #[inline]
    pub fn set_src_addr_incremental(&mut self, addr: Ipv4Addr) {
        let old = self.src_addr();
        self.set_checksum(checksum::update32(self.checksum(), old.into(), addr.into()));
        self.set_src_addr(addr);
    }

    /// Rewrites the destination address and updates the header checksum (RFC 1624). The
    /// TCP/UDP checksum also covers the address, through the pseudo-header: the caller
    /// updates it.
    #[inline]
    pub fn set_dst_addr_incremental(&mut self, addr: Ipv4Addr) {
        let old = self.dst_addr();
        self.set_checksum(checksum::update32(self.checksum(), old.into(), addr.into()));
        self.set_dst_addr(addr);
    }

    /// Rewrites the total length and updates the header checksum (RFC 1624).
    #[inline]
    pub fn set_total_len_incremental(&mut self, len: u16) {
        self.set_checksum(checksum::update16(self.checksum(), self.total_len(), len));
        self.set_total_len(len);
    }

    /// Decrements the TTL, updates the header checksum, and returns the new TTL. A TTL of 0 is
    /// left alone. The caller checks `ttl() <= 1` first and answers with an ICMP time
    /// exceeded instead of forwarding.
    #[inline]
    pub fn decrement_ttl_incremental(&mut self) -> u8 {
        let ttl = self.ttl();
        if ttl == 0 {
            return 0;
        }
        let proto = u16::from(self.protocol());
        let old = u16::from(ttl) << 8 | proto;
        let new = u16::from(ttl - 1) << 8 | proto;
        self.set_checksum(checksum::update16(self.checksum(), old, new));
        self.set_ttl(ttl - 1);
        ttl - 1
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.payload_range();
        &mut self.buffer.as_mut()[range]
    }
}

/// The fields of a fresh 20-byte IPv4 header, for packets the director builds itself (ICMP
/// errors, IPIP outer headers). No options, DSCP 0, never a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub ident: u16,
    pub dont_frag: bool,
    /// Bytes after the header.
    pub payload_len: u16,
}

impl Ipv4Repr {
    /// Reads the fields of a checked packet (options, DSCP and fragment fields are dropped).
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Self {
        Self {
            src: packet.src_addr(),
            dst: packet.dst_addr(),
            protocol: packet.protocol(),
            ttl: packet.ttl(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            payload_len: packet
                .total_len()
                .saturating_sub(u16::from(packet.header_len())),
        }
    }

    /// Bytes the whole packet takes: header plus payload.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len)
    }

    /// Writes the header, checksum included, at the start of `packet`, whose buffer must hold
    /// [`buffer_len`](Self::buffer_len) bytes; the payload is left as it is. Afterwards
    /// `Ipv4Packet::new_checked` accepts the buffer.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Ipv4Packet<T>,
    ) -> Result<(), WireError> {
        let total_len = u16::try_from(self.buffer_len()).map_err(|_| WireError::BadTotalLen)?;
        if packet.buffer.as_ref().len() < self.buffer_len() {
            return Err(WireError::Truncated);
        }
        packet.set_header_len(HEADER_LEN as u8);
        packet.set_dscp_ecn(0);
        packet.set_total_len(total_len);
        packet.set_ident(self.ident);
        let flags = if self.dont_frag { field::FLAG_DF } else { 0 };
        write_u16(packet.buffer.as_mut(), field::FLG_OFF, flags);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src);
        packet.set_dst_addr(self.dst);
        packet.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::wire::testutil::{mangle, XorShift};

    /// A Linux TCP SYN, 198.18.0.10:54321 → 198.18.1.100:80, with MSS, SACK-permitted,
    /// timestamps and window-scale options.
    const SYN: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x90, 0xe3, 0xc6, 0x12, 0x00,
        0x0a, 0xc6, 0x12, 0x01, 0x64, // IPv4
        0xd4, 0x31, 0x00, 0x50, 0x12, 0x34, 0x56, 0x78, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0xb9, 0xa3, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x09,
        0xc8, 0xa1, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07, // TCP
    ];

    /// A bare TCP ACK (40 bytes) as read from a 60-byte Ethernet frame: 6 bytes of padding.
    const ACK_PADDED: [u8; 46] = [
        0x45, 0x00, 0x00, 0x28, 0x1c, 0x47, 0x40, 0x00, 0x40, 0x06, 0x90, 0xf6, 0xc6, 0x12, 0x00,
        0x0a, 0xc6, 0x12, 0x01, 0x64, // IPv4
        0xd4, 0x31, 0x00, 0x50, 0x12, 0x34, 0x56, 0x79, 0xab, 0xcd, 0xef, 0x01, 0x50, 0x10, 0x01,
        0xf6, 0x48, 0x4d, 0x00, 0x00, // TCP
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // Ethernet padding
    ];

    /// An IGMPv2 report for 224.0.0.18 with the Router Alert option (IHL 6), TTL 1.
    const IGMP_WITH_OPTIONS: [u8; 32] = [
        0x46, 0xc0, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0x01, 0x02, 0x3d, 0xe9, 0xc6, 0x12, 0x00,
        0x0a, 0xe0, 0x00, 0x00, 0x12, 0x94, 0x04, 0x00, 0x00, // IPv4 + Router Alert
        0x16, 0x00, 0x09, 0xed, 0xe0, 0x00, 0x00, 0x12, // IGMPv2 report
    ];

    fn read_all<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) {
        let _ = (
            p.version(),
            p.header_len(),
            p.dscp_ecn(),
            p.total_len(),
            p.ident(),
        );
        let _ = (
            p.dont_frag(),
            p.more_frags(),
            p.frag_offset(),
            p.is_fragment(),
            p.ttl(),
        );
        let _ = (
            p.protocol(),
            p.checksum(),
            p.src_addr(),
            p.dst_addr(),
            p.options(),
        );
        let _ = (p.header(), p.payload(), p.verify_checksum());
    }

    #[test]
    fn test_parse() {
        let p = Ipv4Packet::new_checked(&SYN[..]).expect("valid SYN");
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp_ecn(), 0);
        assert_eq!(p.total_len(), 60);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), PROTO_TCP);
        assert_eq!(p.checksum(), 0x90e3);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(198, 18, 1, 100));
        assert!(p.options().is_empty());
        assert_eq!(p.header(), &SYN[..20]);
        assert_eq!(p.payload(), &SYN[20..]);
    }

    #[test]
    fn test_parse_header_with_options() {
        let p = Ipv4Packet::new_checked(&IGMP_WITH_OPTIONS[..]).expect("valid IGMP");
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(p.dscp_ecn(), 0xc0);
        assert_eq!(p.ttl(), 1);
        assert_eq!(p.protocol(), 2);
        assert_eq!(p.dst_addr(), Ipv4Addr::new(224, 0, 0, 18));
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &IGMP_WITH_OPTIONS[24..]);
    }

    #[test]
    fn test_payload_stops_at_total_len_before_ethernet_padding() {
        let p = Ipv4Packet::new_checked(&ACK_PADDED[..]).expect("valid ACK");
        assert_eq!(p.total_len(), 40);
        assert_eq!(p.payload(), &ACK_PADDED[20..40]);
        assert!(p.verify_checksum());
        let mut bytes = ACK_PADDED;
        let mut p = Ipv4Packet::new_checked(&mut bytes[..]).expect("valid ACK");
        assert_eq!(p.payload_mut().len(), 20);
    }

    #[test]
    fn test_emit() {
        let repr = Ipv4Repr {
            src: Ipv4Addr::new(198, 18, 0, 10),
            dst: Ipv4Addr::new(198, 18, 1, 100),
            protocol: PROTO_TCP,
            ttl: 64,
            ident: 0x1c46,
            dont_frag: true,
            payload_len: 40,
        };
        assert_eq!(repr.buffer_len(), 60);
        let mut bytes = [0xaau8; 60];
        bytes[20..].copy_from_slice(&SYN[20..]);
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut bytes[..]))
            .expect("fits");
        assert_eq!(bytes, SYN);
        let p = Ipv4Packet::new_checked(&bytes[..]).expect("emitted header is valid");
        assert_eq!(Ipv4Repr::parse(&p), repr);
    }

    #[test]
    fn test_emit_refuses_short_buffer_and_oversized_payload() {
        let mut repr = Ipv4Repr {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 10),
            protocol: PROTO_ICMP,
            ttl: 64,
            ident: 0,
            dont_frag: false,
            payload_len: 36,
        };
        let mut bytes = [0u8; 55];
        let mut p = Ipv4Packet::new_unchecked(&mut bytes[..]);
        assert_eq!(repr.emit(&mut p), Err(WireError::Truncated));
        let mut tiny = [0u8; 10];
        repr.payload_len = 0;
        assert_eq!(
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut tiny[..])),
            Err(WireError::Truncated)
        );
        repr.payload_len = u16::MAX - 19;
        assert_eq!(repr.emit(&mut p), Err(WireError::BadTotalLen));
    }

    #[test]
    fn test_setters_then_fill_checksum() {
        let mut bytes = SYN;
        let mut p = Ipv4Packet::new_checked(&mut bytes[..]).expect("valid SYN");
        p.set_src_addr(Ipv4Addr::new(198, 18, 2, 1));
        p.set_dst_addr(Ipv4Addr::new(198, 18, 3, 7));
        p.set_ttl(63);
        p.set_protocol(PROTO_UDP);
        p.set_ident(0xbeef);
        p.set_dont_frag(false);
        p.set_total_len(59);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(198, 18, 2, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(198, 18, 3, 7));
        assert_eq!((p.ttl(), p.protocol(), p.ident()), (63, PROTO_UDP, 0xbeef));
        assert!(!p.dont_frag());
        assert_eq!(p.payload().len(), 39);
    }

    #[test]
    fn test_fragment_fields() {
        let mut bytes = SYN;
        let mut p = Ipv4Packet::new_unchecked(&mut bytes[..]);
        p.set_more_frags(true);
        assert!(p.is_fragment() && p.more_frags() && p.dont_frag());
        assert_eq!(p.frag_offset(), 0);
        p.set_more_frags(false);
        p.set_frag_offset(1480);
        assert!(p.is_fragment() && !p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        assert_eq!(read_u16(&bytes, 6), 0x4000 | 185);
    }

    #[test]
    fn test_incremental_rewrites_match_fill_checksum() {
        let mut rng = XorShift::new(0x1b4);
        for _ in 0..1000 {
            let mut bytes = IGMP_WITH_OPTIONS;
            let mut p = Ipv4Packet::new_unchecked(&mut bytes[..]);
            p.set_ttl(rng.next() as u8);
            p.set_ident(rng.next() as u16);
            p.fill_checksum();
            p.set_src_addr_incremental(Ipv4Addr::from(rng.next() as u32));
            p.set_dst_addr_incremental(Ipv4Addr::from(rng.next() as u32));
            p.set_total_len_incremental(rng.next() as u16);
            p.decrement_ttl_incremental();
            let incremental = p.checksum();
            p.fill_checksum();
            assert_eq!(incremental, p.checksum());
        }
    }

    #[test]
    fn test_decrement_ttl_incremental() {
        let mut bytes = SYN;
        let mut p = Ipv4Packet::new_checked(&mut bytes[..]).expect("valid SYN");
        assert_eq!(p.decrement_ttl_incremental(), 63);
        assert_eq!(p.ttl(), 63);
        assert_eq!(p.protocol(), PROTO_TCP);
        assert!(p.verify_checksum());
        p.set_ttl(0);
        p.fill_checksum();
        assert_eq!(p.decrement_ttl_incremental(), 0);
        assert!(p.verify_checksum());
    }

    #[test]
    fn test_every_truncation_is_refused() {
        for len in 0..SYN.len() {
            assert!(Ipv4Packet::new_checked(&SYN[..len]).is_err(), "len {len}");
        }
        for len in 0..40 {
            assert!(
                Ipv4Packet::new_checked(&ACK_PADDED[..len]).is_err(),
                "len {len}"
            );
        }
        for len in 0..IGMP_WITH_OPTIONS.len() {
            assert!(
                Ipv4Packet::new_checked(&IGMP_WITH_OPTIONS[..len]).is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn test_bad_version_is_refused() {
        let mut bytes = SYN;
        bytes[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).err(),
            Some(WireError::BadVersion)
        );
    }

    #[test]
    fn test_bad_ihl_is_refused() {
        let mut bytes = SYN;
        bytes[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).err(),
            Some(WireError::BadHeaderLen)
        );
        bytes[0] = 0x40;
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).err(),
            Some(WireError::BadHeaderLen)
        );
        // IHL 6 claims a 24-byte header in a 20-byte buffer.
        bytes[0] = 0x46;
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..20]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn test_total_len_beyond_buffer_or_below_header_is_refused() {
        let mut bytes = SYN;
        write_u16(&mut bytes, 2, 61);
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).err(),
            Some(WireError::Truncated)
        );
        write_u16(&mut bytes, 2, 19);
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).err(),
            Some(WireError::BadTotalLen)
        );
        write_u16(&mut bytes, 2, 20);
        let p = Ipv4Packet::new_checked(&bytes[..]).expect("header-only packet");
        assert!(p.payload().is_empty());
    }

    #[test]
    fn test_quoted_datagram_may_be_shorter_than_total_len() {
        // The header and first 8 TCP bytes of a 1500-byte datagram, as quoted in an ICMP
        // fragmentation-needed message.
        const QUOTE: [u8; 28] = [
            0x45, 0x00, 0x05, 0xdc, 0x1c, 0x48, 0x40, 0x00, 0x40, 0x06, 0x8b, 0x41, 0xc6, 0x12,
            0x00, 0x0a, 0xc6, 0x12, 0x01, 0x64, 0xd4, 0x31, 0x00, 0x50, 0x12, 0x34, 0x56, 0x79,
        ];
        assert_eq!(
            Ipv4Packet::new_checked(&QUOTE[..]).err(),
            Some(WireError::Truncated)
        );
        let p = Ipv4Packet::new_checked_quoted(&QUOTE[..]).expect("valid quote");
        assert_eq!(p.total_len(), 1500);
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &QUOTE[20..]);
        assert_eq!(
            Ipv4Packet::new_checked_quoted(&QUOTE[..19]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn test_mangled_packets_never_panic() {
        for (seed, packet) in [
            (1, &SYN[..]),
            (2, &ACK_PADDED[..]),
            (3, &IGMP_WITH_OPTIONS[..]),
        ] {
            mangle(packet, seed, |bytes| {
                if let Ok(p) = Ipv4Packet::new_checked(bytes) {
                    read_all(&p);
                    let _ = Ipv4Repr::parse(&p);
                }
                if let Ok(p) = Ipv4Packet::new_checked_quoted(bytes) {
                    read_all(&p);
                    let _ = Ipv4Repr::parse(&p);
                }
            });
        }
    }
}
