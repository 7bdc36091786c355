//! TCP headers (RFC 9293).

use std::fmt;
use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::PROTO_TCP;
use super::{read_u16, read_u32, write_u16, write_u32, WireError};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ_NUM: usize = 4;
    pub const ACK_NUM: usize = 8;
    /// Data offset in the high nibble.
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
    pub const OPTIONS: usize = 20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

/// The eight flag bits of byte 13 (the NS bit of byte 12 is obsolete and not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);
    pub const ECE: TcpFlags = TcpFlags(0x40);
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// True when every flag of `other` is set in `self`.
    #[inline]
    pub fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = TcpFlags;

    #[inline]
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl fmt::Display for TcpFlags {
    /// tcpdump-like names joined by `|`, e.g. `SYN|ACK`; `-` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (bit, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// A view over a TCP segment: the buffer is exactly the segment (the IPv4 payload).
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short or malformed one.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that holds at least the whole header, options included (data offset
    /// ≥ 5).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self { buffer };
        let len = packet.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = usize::from(packet.header_len());
        if header_len < HEADER_LEN {
            return Err(WireError::BadHeaderLen);
        }
        if header_len > len {
            return Err(WireError::Truncated);
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

    #[inline]
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    #[inline]
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes (data offset × 4).
    #[inline]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }

    #[inline]
    pub fn window(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn urgent(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..usize::from(self.header_len())]
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[usize::from(self.header_len())..]
    }

    /// True when the checksum over the pseudo-header and the whole segment is right.
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let data = self.buffer.as_ref();
        if data.len() > usize::from(u16::MAX) {
            return false;
        }
        checksum::fold(checksum::l4_sum(src, dst, PROTO_TCP, data)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    #[inline]
    pub fn set_seq_number(&mut self, seq: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM, seq);
    }

    #[inline]
    pub fn set_ack_number(&mut self, ack: u32) {
        write_u32(self.buffer.as_mut(), field::ACK_NUM, ack);
    }

    /// Sets the header length in bytes (a multiple of 4, 20 to 60); keeps the NS bit.
    #[inline]
    pub fn set_header_len(&mut self, len: u8) {
        let byte = &mut self.buffer.as_mut()[field::DATA_OFF];
        *byte = (((len / 4) & 0x0f) << 4) | (*byte & 0x0f);
    }

    #[inline]
    pub fn set_flags(&mut self, flags: TcpFlags) {
        self.buffer.as_mut()[field::FLAGS] = flags.0;
    }

    #[inline]
    pub fn set_window(&mut self, window: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW, window);
    }

    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, csum);
    }

    #[inline]
    pub fn set_urgent(&mut self, urgent: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT, urgent);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = usize::from(self.header_len());
        &mut self.buffer.as_mut()[start..]
    }

    /// Computes the checksum over the pseudo-header and the whole segment and stores it.
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let acc = checksum::l4_sum(src, dst, PROTO_TCP, self.buffer.as_ref());
        self.set_checksum(checksum::finish(acc));
    }

    /// An address of the pseudo-header changed from `old` to `new` (the IPv4 header was
    /// rewritten): updates the checksum, complete (RFC 1624) or, with `partial`, the
    /// pseudo-header sum a Linux CHECKSUM_PARTIAL field holds.
    #[inline]
    pub fn update_checksum_for_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr, partial: bool) {
        self.update_checksum32(old.into(), new.into(), partial);
    }

    /// The segment length of the pseudo-header changed from `old` to `new` (bytes were
    /// inserted): updates the checksum, complete or partial.
    #[inline]
    pub fn update_checksum_for_len(&mut self, old: u32, new: u32, partial: bool) {
        self.update_checksum32(old, new, partial);
    }

    #[inline]
    fn update_checksum32(&mut self, old: u32, new: u32, partial: bool) {
        let c = self.checksum();
        self.set_checksum(if partial {
            checksum::update_partial32(c, old, new)
        } else {
            checksum::update32(c, old, new)
        });
    }

    /// Rewrites the source port and updates a complete checksum; a partial one does not
    /// cover the ports and stays.
    #[inline]
    pub fn set_src_port_incremental(&mut self, port: u16, partial: bool) {
        if !partial {
            let c = checksum::update16(self.checksum(), self.src_port(), port);
            self.set_checksum(c);
        }
        self.set_src_port(port);
    }

    /// Rewrites the destination port and updates a complete checksum; a partial one does
    /// not cover the ports and stays.
    #[inline]
    pub fn set_dst_port_incremental(&mut self, port: u16, partial: bool) {
        if !partial {
            let c = checksum::update16(self.checksum(), self.dst_port(), port);
            self.set_checksum(c);
        }
        self.set_dst_port(port);
    }

    /// Rewrites the sequence number and updates a complete checksum (a partial one does not
    /// cover the header).
    #[inline]
    pub fn set_seq_number_incremental(&mut self, seq: u32, partial: bool) {
        if !partial {
            let c = checksum::update32(self.checksum(), self.seq_number(), seq);
            self.set_checksum(c);
        }
        self.set_seq_number(seq);
    }

    /// Rewrites the acknowledgement number and updates a complete checksum (a partial one
    /// does not cover the header).
    #[inline]
    pub fn set_ack_number_incremental(&mut self, ack: u32, partial: bool) {
        if !partial {
            let c = checksum::update32(self.checksum(), self.ack_number(), ack);
            self.set_checksum(c);
        }
        self.set_ack_number(ack);
    }

    /// Replaces the bytes at `at` (an offset inside the header, options included) with
    /// `new` (at most 14 bytes), updating a complete checksum over the 16-bit words that
    /// cover them (a partial one does not cover the header).
    #[inline]
    pub fn patch_header_incremental(&mut self, at: usize, new: &[u8], partial: bool) {
        let buf = self.buffer.as_mut();
        let start = at & !1;
        let end = ((at + new.len() + 1) & !1).min(buf.len());
        let mut old = [0u8; 16];
        let n = end - start;
        old[..n].copy_from_slice(&buf[start..end]);
        buf[at..at + new.len()].copy_from_slice(new);
        if !partial {
            let c = checksum::update_bytes(
                self.checksum(),
                &old[..n],
                &self.buffer.as_ref()[start..end],
            );
            self.set_checksum(c);
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::wire::testutil::{mangle, XorShift};

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);

    /// The TCP part of a Linux SYN to port 80: MSS 1460, SACK-permitted, timestamps,
    /// NOP, window scale 7.
    const SYN: [u8; 40] = [
        0xd4, 0x31, 0x00, 0x50, // ports 54321 → 80
        0x12, 0x34, 0x56, 0x78, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0xa0, 0x02, 0xfa, 0xf0, // data offset 10, SYN, window 64240
        0xb9, 0xa3, 0x00, 0x00, // checksum, urgent
        0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x09, 0xc8, 0xa1, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    /// The TCP part of a bare ACK of the same flow.
    const ACK: [u8; 20] = [
        0xd4, 0x31, 0x00, 0x50, 0x12, 0x34, 0x56, 0x79, 0xab, 0xcd, 0xef, 0x01, 0x50, 0x10, 0x01,
        0xf6, 0x48, 0x4d, 0x00, 0x00,
    ];

    #[test]
    fn test_parse() {
        let p = TcpPacket::new_checked(&SYN[..]).expect("valid SYN");
        assert_eq!(p.src_port(), 54321);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq_number(), 0x1234_5678);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), TcpFlags::SYN);
        assert_eq!(p.window(), 64240);
        assert_eq!(p.checksum(), 0xb9a3);
        assert_eq!(p.urgent(), 0);
        assert_eq!(p.options(), &SYN[20..]);
        assert!(p.payload().is_empty());
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(198, 18, 1, 101)));
    }

    #[test]
    fn test_parse_bare_ack() {
        let p = TcpPacket::new_checked(&ACK[..]).expect("valid ACK");
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.ack_number(), 0xabcd_ef01);
        assert!(p.flags().contains(TcpFlags::ACK));
        assert!(!p.flags().contains(TcpFlags::SYN | TcpFlags::ACK));
        assert!(p.options().is_empty());
        assert!(p.verify_checksum(SRC, DST));
    }

    #[test]
    fn test_emit_by_setters() {
        let mut bytes = [0u8; 40];
        bytes[20..].copy_from_slice(&SYN[20..]);
        let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
        p.set_src_port(54321);
        p.set_dst_port(80);
        p.set_seq_number(0x1234_5678);
        p.set_ack_number(0);
        p.set_header_len(40);
        p.set_flags(TcpFlags::SYN);
        p.set_window(64240);
        p.set_urgent(0);
        p.fill_checksum(SRC, DST);
        assert_eq!(bytes, SYN);
    }

    #[test]
    fn test_payload_follows_options() {
        let mut bytes = [0u8; 45];
        bytes[..40].copy_from_slice(&SYN);
        bytes[40..].copy_from_slice(b"hello");
        let mut p = TcpPacket::new_checked(&mut bytes[..]).expect("valid segment");
        assert_eq!(p.payload(), b"hello");
        p.payload_mut()[0] = b'j';
        p.fill_checksum(SRC, DST);
        assert!(p.verify_checksum(SRC, DST));
        assert_eq!(p.payload(), b"jello");
    }

    #[test]
    fn test_port_and_address_rewrite_incremental_matches_fill() {
        let mut rng = XorShift::new(0x7c9);
        for _ in 0..1000 {
            let mut bytes = SYN;
            let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
            let new_dst = Ipv4Addr::from(rng.next() as u32);
            let new_port = rng.next() as u16;
            let mut csum = checksum::update32(p.checksum(), DST.into(), new_dst.into());
            csum = checksum::update16(csum, p.dst_port(), new_port);
            p.set_dst_port(new_port);
            p.set_checksum(csum);
            assert!(p.verify_checksum(SRC, new_dst));
            p.fill_checksum(SRC, new_dst);
            assert_eq!(p.checksum(), csum);
        }
    }

    #[test]
    fn test_incremental_setters_keep_the_checksum_a_full_sum_gives() {
        let mut rng = XorShift::new(0x51e7);
        for _ in 0..1000 {
            let mut bytes = SYN;
            let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
            let (src, dst) = (
                Ipv4Addr::from(rng.next() as u32),
                Ipv4Addr::from(rng.next() as u32),
            );
            p.update_checksum_for_addr(SRC, src, false);
            p.update_checksum_for_addr(DST, dst, false);
            p.set_src_port_incremental(rng.next() as u16, false);
            p.set_dst_port_incremental(rng.next() as u16, false);
            p.set_seq_number_incremental(rng.next() as u32, false);
            p.set_ack_number_incremental(rng.next() as u32, false);
            // The MSS option's value, at an odd-aligned and an even-aligned place.
            p.patch_header_incremental(22, &(rng.next() as u16).to_be_bytes(), false);
            p.patch_header_incremental(33, &[rng.next() as u8], false);
            assert!(p.verify_checksum(src, dst));
            let kept = p.checksum();
            p.fill_checksum(src, dst);
            assert_eq!(p.checksum(), kept);
        }
    }

    #[test]
    fn test_partial_checksum_follows_addresses_and_length_only() {
        // A CHECKSUM_PARTIAL field holds the folded pseudo-header sum, which has no ports.
        let mut bytes = SYN;
        let len = SYN.len() as u16;
        let seed = |s: Ipv4Addr, d: Ipv4Addr, l: u16| {
            checksum::fold(checksum::pseudo_header_sum(s, d, PROTO_TCP, l))
        };
        let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
        p.set_checksum(seed(SRC, DST, len));
        let to = Ipv4Addr::new(198, 18, 2, 20);
        p.update_checksum_for_addr(DST, to, true);
        p.set_dst_port_incremental(8080, true);
        p.set_seq_number_incremental(7, true);
        assert_eq!(p.checksum(), seed(SRC, to, len));
        p.update_checksum_for_len(u32::from(len), u32::from(len) + 28, true);
        assert_eq!(p.checksum(), seed(SRC, to, len + 28));
        assert_eq!((p.dst_port(), p.seq_number()), (8080, 7));
    }

    #[test]
    fn test_every_truncation_is_refused() {
        for len in 0..SYN.len() {
            assert_eq!(
                TcpPacket::new_checked(&SYN[..len]).err(),
                Some(WireError::Truncated)
            );
        }
    }

    #[test]
    fn test_bad_data_offset_is_refused() {
        let mut bytes = ACK;
        bytes[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&bytes[..]).err(),
            Some(WireError::BadHeaderLen)
        );
        bytes[12] = 0x00;
        assert_eq!(
            TcpPacket::new_checked(&bytes[..]).err(),
            Some(WireError::BadHeaderLen)
        );
        bytes[12] = 0xf0;
        assert_eq!(
            TcpPacket::new_checked(&bytes[..]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn test_mangled_segments_never_panic() {
        mangle(&SYN, 9, |bytes| {
            if let Ok(p) = TcpPacket::new_checked(bytes) {
                let _ = (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number());
                let _ = (
                    p.header_len(),
                    p.flags(),
                    p.window(),
                    p.checksum(),
                    p.urgent(),
                );
                let _ = (p.options(), p.payload(), p.verify_checksum(SRC, DST));
            }
        });
    }

    #[test]
    fn test_flags_display() {
        assert_eq!((TcpFlags::SYN | TcpFlags::ACK).to_string(), "SYN|ACK");
        assert_eq!(TcpFlags(0).to_string(), "-");
        assert_eq!(
            TcpFlags(0xff).to_string(),
            "FIN|SYN|RST|PSH|ACK|URG|ECE|CWR"
        );
    }
}
