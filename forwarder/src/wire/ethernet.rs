//! Ethernet II frames (no 802.1Q tag parsing: a VLAN-tagged frame shows `ETHERTYPE_VLAN`).

use std::fmt;

use super::{read_u16, write_u16, WireError};

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group bit set: broadcast or multicast.
    #[inline]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    #[inline]
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

mod field {
    use std::ops::Range;

    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: usize = 14;
}

/// Length of an Ethernet II header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// A view over an Ethernet II frame (without the FCS).
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is shorter than
    /// [`HEADER_LEN`].
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that holds at least a full header.
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
    fn mac(&self, range: std::ops::Range<usize>) -> MacAddr {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[range]);
        MacAddr(mac)
    }

    #[inline]
    pub fn dst_addr(&self) -> MacAddr {
        self.mac(field::DST)
    }

    #[inline]
    pub fn src_addr(&self) -> MacAddr {
        self.mac(field::SRC)
    }

    #[inline]
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    #[inline]
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr.0);
    }

    #[inline]
    pub fn set_src_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.0);
    }

    #[inline]
    pub fn set_ethertype(&mut self, ethertype: u16) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::wire::testutil::mangle;

    /// The Ethernet header of a TCP SYN between two QEMU NICs, plus the first IPv4 bytes.
    const FRAME: [u8; 18] = [
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // dst
        0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, // src
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x3c,
    ];

    #[test]
    fn test_parse() {
        let frame = EthernetFrame::new_checked(&FRAME[..]).expect("valid frame");
        assert_eq!(
            frame.dst_addr(),
            MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            frame.src_addr(),
            MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef])
        );
        assert_eq!(frame.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(frame.payload(), &[0x45, 0x00, 0x00, 0x3c]);
    }

    #[test]
    fn test_emit_by_setters() {
        let mut bytes = [0u8; 18];
        bytes[14..].copy_from_slice(&FRAME[14..]);
        let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
        frame.set_dst_addr(MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]));
        frame.set_src_addr(MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]));
        frame.set_ethertype(ETHERTYPE_IPV4);
        frame.payload_mut()[0] = 0x45;
        assert_eq!(frame.into_inner(), &FRAME[..]);
    }

    #[test]
    fn test_header_only_frame_has_empty_payload() {
        let frame = EthernetFrame::new_checked(&FRAME[..HEADER_LEN]).expect("header fits");
        assert!(frame.payload().is_empty());
    }

    #[test]
    fn test_truncated_header_is_refused() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&FRAME[..len]).err(),
                Some(WireError::Truncated)
            );
        }
    }

    #[test]
    fn test_mangled_frames_never_panic() {
        mangle(&FRAME, 1, |bytes| {
            if let Ok(frame) = EthernetFrame::new_checked(bytes) {
                let _ = (
                    frame.dst_addr(),
                    frame.src_addr(),
                    frame.ethertype(),
                    frame.payload(),
                );
            }
        });
    }

    #[test]
    fn test_mac_display_and_kind() {
        let mac = MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:ef");
        assert!(!mac.is_multicast());
        assert!(MacAddr([0x01, 0x00, 0x5e, 0, 0, 0x12]).is_multicast());
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert_eq!(MacAddr::BROADCAST.to_string(), "ff:ff:ff:ff:ff:ff");
    }
}
