//! UDP headers (RFC 768).

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::PROTO_UDP;
use super::{read_u16, write_u16, WireError};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
    pub const PAYLOAD: usize = 8;
}

/// Length of the header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// A view over a UDP datagram. The buffer is the IPv4 payload; the datagram is its first
/// `len()` bytes.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short or malformed one.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that holds the header and whose length field is between 8 and the
    /// buffer length.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self { buffer };
        let buf_len = packet.buffer.as_ref().len();
        if buf_len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(packet.len());
        if !(HEADER_LEN..=buf_len).contains(&len) {
            return Err(WireError::BadLength);
        }
        Ok(packet)
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header plus payload.
    #[inline]
    #[allow(clippy::len_without_is_empty)] // a field of the header, never empty
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// 0 means the sender computed no checksum.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..usize::from(self.len())]
    }

    /// True when the checksum over the pseudo-header and the datagram is right, or when
    /// there is none (0).
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let datagram = &self.buffer.as_ref()[..usize::from(self.len())];
        checksum::fold(checksum::l4_sum(src, dst, PROTO_UDP, datagram)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    #[inline]
    pub fn set_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, csum);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[field::PAYLOAD..end]
    }

    /// Computes the checksum over the pseudo-header and the datagram and stores it; a result
    /// of 0 is stored as 0xffff, since 0 means "none".
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let datagram = &self.buffer.as_ref()[..usize::from(self.len())];
        let csum = checksum::finish(checksum::l4_sum(src, dst, PROTO_UDP, datagram));
        self.set_checksum(checksum::udp_nonzero(csum));
    }

    /// An address of the pseudo-header changed from `old` to `new` (the IPv4 header was
    /// rewritten): updates the checksum, complete (RFC 1624; 0, "none", stays 0) or, with
    /// `partial`, the pseudo-header sum a Linux CHECKSUM_PARTIAL field holds.
    #[inline]
    pub fn update_checksum_for_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr, partial: bool) {
        let c = self.checksum();
        self.set_checksum(if partial {
            checksum::update_partial32(c, old.into(), new.into())
        } else {
            checksum::udp_update32(c, old.into(), new.into())
        });
    }

    /// Rewrites the source port and updates a complete checksum (0 stays 0); a partial one
    /// does not cover the ports and stays.
    #[inline]
    pub fn set_src_port_incremental(&mut self, port: u16, partial: bool) {
        if !partial {
            let c = checksum::udp_update16(self.checksum(), self.src_port(), port);
            self.set_checksum(c);
        }
        self.set_src_port(port);
    }

    /// Rewrites the destination port and updates a complete checksum (0 stays 0); a partial
    /// one does not cover the ports and stays.
    #[inline]
    pub fn set_dst_port_incremental(&mut self, port: u16, partial: bool) {
        if !partial {
            let c = checksum::udp_update16(self.checksum(), self.dst_port(), port);
            self.set_checksum(c);
        }
        self.set_dst_port(port);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::wire::testutil::{mangle, XorShift};

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);

    /// A DNS query for example.com A, 198.18.0.10:5353 → 198.18.1.100:53.
    const DNS_QUERY: [u8; 37] = [
        0x14, 0xe9, 0x00, 0x35, 0x00, 0x25, 0xe1, 0xb7, // UDP header
        0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // DNS header
        0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00, // qname
        0x00, 0x01, 0x00, 0x01, // A, IN
    ];

    #[test]
    fn test_parse() {
        let p = UdpPacket::new_checked(&DNS_QUERY[..]).expect("valid datagram");
        assert_eq!(p.src_port(), 5353);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 37);
        assert_eq!(p.checksum(), 0xe1b7);
        assert_eq!(p.payload(), &DNS_QUERY[8..]);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(DST, Ipv4Addr::new(198, 18, 1, 1)));
    }

    #[test]
    fn test_emit_by_setters() {
        let mut bytes = [0u8; 37];
        bytes[8..].copy_from_slice(&DNS_QUERY[8..]);
        let mut p = UdpPacket::new_unchecked(&mut bytes[..]);
        p.set_src_port(5353);
        p.set_dst_port(53);
        p.set_len(37);
        p.fill_checksum(SRC, DST);
        assert_eq!(bytes, DNS_QUERY);
    }

    #[test]
    fn test_zero_checksum_means_none() {
        let mut bytes = DNS_QUERY;
        let mut p = UdpPacket::new_checked(&mut bytes[..]).expect("valid datagram");
        p.set_checksum(0);
        assert!(p.verify_checksum(SRC, Ipv4Addr::new(10, 0, 0, 1)));
        let csum = checksum::udp_update32(p.checksum(), DST.into(), 0x0a00_0001);
        assert_eq!(csum, 0);
    }

    #[test]
    fn test_fill_checksum_writes_ffff_for_a_zero_result() {
        // Pick the payload's last word so that the computed checksum is 0x0000.
        let mut bytes = [0u8; 10];
        let mut p = UdpPacket::new_unchecked(&mut bytes[..]);
        p.set_src_port(1);
        p.set_dst_port(2);
        p.set_len(10);
        p.fill_checksum(SRC, DST);
        let csum = p.checksum();
        // Putting the checksum value into the payload moves the total to 0xffff (checksum 0).
        p.payload_mut().copy_from_slice(&csum.to_be_bytes());
        p.fill_checksum(SRC, DST);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(SRC, DST));
    }

    #[test]
    fn test_payload_stops_at_length_field() {
        let mut bytes = [0u8; 40];
        bytes[..37].copy_from_slice(&DNS_QUERY);
        let p = UdpPacket::new_checked(&bytes[..]).expect("longer buffer is fine");
        assert_eq!(p.payload().len(), 29);
        assert!(p.verify_checksum(SRC, DST));
    }

    #[test]
    fn test_address_and_port_rewrite_incremental_matches_fill() {
        let mut rng = XorShift::new(0x4d9);
        for _ in 0..1000 {
            let mut bytes = DNS_QUERY;
            let mut p = UdpPacket::new_unchecked(&mut bytes[..]);
            let new_src = Ipv4Addr::from(rng.next() as u32);
            let new_port = rng.next() as u16;
            let mut csum = checksum::udp_update32(p.checksum(), SRC.into(), new_src.into());
            csum = checksum::udp_update16(csum, p.src_port(), new_port);
            p.set_src_port(new_port);
            p.fill_checksum(new_src, DST);
            assert_eq!(csum, p.checksum());
        }
    }

    #[test]
    fn test_incremental_setters_keep_the_checksum_a_full_sum_gives() {
        let mut rng = XorShift::new(0x0dd5);
        for _ in 0..1000 {
            let mut bytes = DNS_QUERY;
            let mut p = UdpPacket::new_unchecked(&mut bytes[..]);
            let (src, dst) = (
                Ipv4Addr::from(rng.next() as u32),
                Ipv4Addr::from(rng.next() as u32),
            );
            p.update_checksum_for_addr(SRC, src, false);
            p.set_src_port_incremental(rng.next() as u16, false);
            p.update_checksum_for_addr(DST, dst, false);
            p.set_dst_port_incremental(rng.next() as u16, false);
            assert!(p.verify_checksum(src, dst));
            let kept = p.checksum();
            p.fill_checksum(src, dst);
            assert_eq!(p.checksum(), kept);
        }
        // No checksum stays no checksum.
        let mut bytes = DNS_QUERY;
        let mut p = UdpPacket::new_unchecked(&mut bytes[..]);
        p.set_checksum(0);
        p.update_checksum_for_addr(SRC, DST, false);
        p.set_dst_port_incremental(9, false);
        assert_eq!((p.checksum(), p.dst_port()), (0, 9));
    }

    #[test]
    fn test_every_truncation_is_refused() {
        for len in 0..DNS_QUERY.len() {
            assert!(
                UdpPacket::new_checked(&DNS_QUERY[..len]).is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn test_lying_length_field_is_refused() {
        let mut bytes = DNS_QUERY;
        write_u16(&mut bytes, 4, 38);
        assert_eq!(
            UdpPacket::new_checked(&bytes[..]).err(),
            Some(WireError::BadLength)
        );
        write_u16(&mut bytes, 4, 7);
        assert_eq!(
            UdpPacket::new_checked(&bytes[..]).err(),
            Some(WireError::BadLength)
        );
        write_u16(&mut bytes, 4, 0);
        assert_eq!(
            UdpPacket::new_checked(&bytes[..]).err(),
            Some(WireError::BadLength)
        );
        write_u16(&mut bytes, 4, 8);
        let p = UdpPacket::new_checked(&bytes[..]).expect("empty datagram");
        assert!(p.payload().is_empty());
    }

    #[test]
    fn test_mangled_datagrams_never_panic() {
        mangle(&DNS_QUERY, 5, |bytes| {
            if let Ok(p) = UdpPacket::new_checked(bytes) {
                let _ = (
                    p.src_port(),
                    p.dst_port(),
                    p.len(),
                    p.checksum(),
                    p.payload(),
                );
                let _ = p.verify_checksum(SRC, DST);
            }
        });
    }
}
