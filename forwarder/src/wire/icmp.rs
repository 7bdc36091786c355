//! ICMP for IPv4 (RFC 792), with the fragmentation-needed MTU of RFC 1191.

use super::checksum;
use super::{read_u16, write_u16, WireError};

pub const TYPE_ECHO_REPLY: u8 = 0;
pub const TYPE_DEST_UNREACHABLE: u8 = 3;
pub const TYPE_SOURCE_QUENCH: u8 = 4;
pub const TYPE_REDIRECT: u8 = 5;
pub const TYPE_ECHO_REQUEST: u8 = 8;
pub const TYPE_TIME_EXCEEDED: u8 = 11;
pub const TYPE_PARAM_PROBLEM: u8 = 12;

/// Destination unreachable codes (RFC 792, RFC 1191).
pub const CODE_NET_UNREACHABLE: u8 = 0;
pub const CODE_HOST_UNREACHABLE: u8 = 1;
pub const CODE_PROTO_UNREACHABLE: u8 = 2;
pub const CODE_PORT_UNREACHABLE: u8 = 3;
pub const CODE_FRAG_NEEDED: u8 = 4;
/// Time exceeded code: TTL reached 0 in transit.
pub const CODE_TTL_EXCEEDED: u8 = 0;

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQ_NO: usize = 6;
    /// Bytes 4..6 are unused (zero) in a fragmentation-needed message.
    pub const UNUSED: usize = 4;
    pub const NEXT_HOP_MTU: usize = 6;
    pub const PAYLOAD: usize = 8;
}

/// Length of the header (type, code, checksum and the 4-byte rest of header).
pub const HEADER_LEN: usize = field::PAYLOAD;

/// A view over an ICMPv4 message: the buffer is exactly the message (the IPv4 payload).
#[derive(Debug, Clone)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is shorter than 8 bytes.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that holds at least the 8-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// An error message, which quotes the datagram that caused it in its payload and is
    /// forwarded along that datagram's connection.
    #[inline]
    pub fn is_error(&self) -> bool {
        matches!(
            self.msg_type(),
            TYPE_DEST_UNREACHABLE
                | TYPE_SOURCE_QUENCH
                | TYPE_REDIRECT
                | TYPE_TIME_EXCEEDED
                | TYPE_PARAM_PROBLEM
        )
    }

    /// The next-hop MTU of a fragmentation-needed message (type 3 code 4, RFC 1191); `None`
    /// for any other message. A router predating RFC 1191 sends 0.
    #[inline]
    pub fn next_hop_mtu(&self) -> Option<u16> {
        if self.msg_type() == TYPE_DEST_UNREACHABLE && self.code() == CODE_FRAG_NEEDED {
            Some(read_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU))
        } else {
            None
        }
    }

    /// Identifier of an echo request or reply.
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Sequence number of an echo request or reply.
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQ_NO)
    }

    /// Bytes 8 onwards: echo data, or for an error the quoted IPv4 header plus at least 8
    /// bytes of its L4 header (parse it with `Ipv4Packet::new_checked_quoted`).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// True when the checksum over the whole message is right.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref(), 0)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    #[inline]
    pub fn set_msg_type(&mut self, msg_type: u8) {
        self.buffer.as_mut()[field::TYPE] = msg_type;
    }

    #[inline]
    pub fn set_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, csum);
    }

    /// Writes the rest of header of a fragmentation-needed message: 16 unused zero bits,
    /// then the next-hop MTU. Does not change type or code.
    #[inline]
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        write_u16(self.buffer.as_mut(), field::UNUSED, 0);
        write_u16(self.buffer.as_mut(), field::NEXT_HOP_MTU, mtu);
    }

    #[inline]
    pub fn set_echo_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_IDENT, ident);
    }

    #[inline]
    pub fn set_echo_seq_no(&mut self, seq_no: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_SEQ_NO, seq_no);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }

    /// Computes the checksum over the whole message and stores it.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = checksum::finish(checksum::sum(self.buffer.as_ref(), 0));
        self.set_checksum(csum);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::wire::ipv4::{Ipv4Packet, PROTO_TCP};
    use crate::wire::l4_ports;
    use crate::wire::testutil::mangle;
    use std::net::Ipv4Addr;

    /// Fragmentation needed (MTU 1400) from router 198.18.0.1, quoting the header and the
    /// first 8 TCP bytes of a 1500-byte DF segment 198.18.0.10:54321 → 198.18.1.100:80.
    const FRAG_NEEDED: [u8; 36] = [
        0x03, 0x04, 0xba, 0x54, 0x00, 0x00, 0x05, 0x78, // type 3 code 4, MTU 1400
        0x45, 0x00, 0x05, 0xdc, 0x1c, 0x48, 0x40, 0x00, 0x40, 0x06, 0x8b, 0x41, 0xc6, 0x12, 0x00,
        0x0a, 0xc6, 0x12, 0x01, 0x64, // quoted IPv4 header
        0xd4, 0x31, 0x00, 0x50, 0x12, 0x34, 0x56, 0x79, // quoted TCP ports and seq
    ];

    /// An echo request, ident 0x1234, seq 1, data "director".
    const ECHO_REQUEST: [u8; 16] = [
        0x08, 0x00, 0x3c, 0x15, 0x12, 0x34, 0x00, 0x01, b'd', b'i', b'r', b'e', b'c', b't', b'o',
        b'r',
    ];

    #[test]
    fn test_parse_frag_needed_with_quoted_tcp() {
        let p = Icmpv4Packet::new_checked(&FRAG_NEEDED[..]).expect("valid ICMP");
        assert_eq!(p.msg_type(), TYPE_DEST_UNREACHABLE);
        assert_eq!(p.code(), CODE_FRAG_NEEDED);
        assert_eq!(p.checksum(), 0xba54);
        assert!(p.verify_checksum());
        assert!(p.is_error());
        assert_eq!(p.next_hop_mtu(), Some(1400));
        let quoted = Ipv4Packet::new_checked_quoted(p.payload()).expect("valid quote");
        assert_eq!(quoted.protocol(), PROTO_TCP);
        assert_eq!(quoted.src_addr(), Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(quoted.dst_addr(), Ipv4Addr::new(198, 18, 1, 100));
        assert_eq!(quoted.total_len(), 1500);
        assert_eq!(l4_ports(quoted.payload()), Some((54321, 80)));
    }

    #[test]
    fn test_parse_echo_request() {
        let p = Icmpv4Packet::new_checked(&ECHO_REQUEST[..]).expect("valid ICMP");
        assert_eq!(p.msg_type(), TYPE_ECHO_REQUEST);
        assert!(!p.is_error());
        assert_eq!(p.next_hop_mtu(), None);
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x1234, 1));
        assert_eq!(p.payload(), b"director");
        assert!(p.verify_checksum());
    }

    #[test]
    fn test_emit_frag_needed_by_setters() {
        let mut bytes = [0xeeu8; 36];
        bytes[8..].copy_from_slice(&FRAG_NEEDED[8..]);
        let mut p = Icmpv4Packet::new_checked(&mut bytes[..]).expect("long enough");
        p.set_msg_type(TYPE_DEST_UNREACHABLE);
        p.set_code(CODE_FRAG_NEEDED);
        p.set_next_hop_mtu(1400);
        p.fill_checksum();
        assert_eq!(bytes, FRAG_NEEDED);
    }

    #[test]
    fn test_echo_reply_from_request_by_setters() {
        let mut bytes = ECHO_REQUEST;
        let mut p = Icmpv4Packet::new_checked(&mut bytes[..]).expect("valid ICMP");
        p.set_msg_type(TYPE_ECHO_REPLY);
        p.set_checksum(checksum::update16(p.checksum(), 0x0800, 0x0000));
        assert!(p.verify_checksum());
        p.set_echo_ident(7);
        p.set_echo_seq_no(9);
        p.payload_mut()[0] = b'D';
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (7, 9));
        assert_eq!(&p.payload()[..1], b"D");
    }

    #[test]
    fn test_is_error_types() {
        let mut bytes = ECHO_REQUEST;
        for t in 0..=255u8 {
            bytes[0] = t;
            let p = Icmpv4Packet::new_checked(&bytes[..]).expect("valid ICMP");
            assert_eq!(p.is_error(), matches!(t, 3 | 4 | 5 | 11 | 12), "type {t}");
        }
    }

    #[test]
    fn test_every_truncation_of_header_is_refused() {
        for len in 0..HEADER_LEN {
            let got = Icmpv4Packet::new_checked(&FRAG_NEEDED[..len]).err();
            assert_eq!(got, Some(WireError::Truncated));
        }
        let p = Icmpv4Packet::new_checked(&FRAG_NEEDED[..HEADER_LEN]).expect("header only");
        assert!(p.payload().is_empty());
        assert!(Ipv4Packet::new_checked_quoted(p.payload()).is_err());
    }

    #[test]
    fn test_mangled_messages_never_panic() {
        mangle(&FRAG_NEEDED, 11, |bytes| {
            if let Ok(p) = Icmpv4Packet::new_checked(bytes) {
                let _ = (
                    p.msg_type(),
                    p.code(),
                    p.checksum(),
                    p.is_error(),
                    p.next_hop_mtu(),
                );
                let _ = (p.echo_ident(), p.echo_seq_no(), p.verify_checksum());
                if let Ok(q) = Ipv4Packet::new_checked_quoted(p.payload()) {
                    let _ = (q.src_addr(), q.dst_addr(), l4_ports(q.payload()));
                }
            }
        });
    }
}
