//! Zero-copy views over the packet formats the datapath reads and rewrites in place.
//!
//! Each format is a view `Xxx<T: AsRef<[u8]>>` over a buffer, in the style of smoltcp:
//! `new_unchecked` wraps any buffer, `new_checked` validates the lengths the accessors rely
//! on (after it succeeds no accessor panics), getters read fields, and for a mutable buffer
//! setters write them. Untrusted input is parsed only through `new_checked`.
//!
//! - `checksum`: the Internet checksum, full and incremental (RFC 1071, RFC 1624).
//! - `ethernet`: Ethernet II frames and [`MacAddr`].
//! - `ipv4`: IPv4 headers, in-place rewrites that keep the header checksum right, and
//!   [`Ipv4Repr`] to build a fresh header (ICMP errors, IPIP outer headers).
//! - `tcp`, `udp`, `icmp`: the L4 headers the datapath rewrites or answers.

#![forbid(unsafe_code)]

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;

pub use ethernet::{EthernetFrame, MacAddr};
pub use icmp::Icmpv4Packet;
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use tcp::{TcpFlags, TcpPacket};
pub use udp::UdpPacket;

/// Why a buffer was refused by a `new_checked` constructor or by an `emit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// buffer is shorter than the header or the length it declares
    #[error("buffer is shorter than the header or the length it declares")]
    Truncated,
    /// IP version field is not 4
    #[error("IP version field is not 4")]
    BadVersion,
    /// header length field is below the minimum header size
    #[error("header length field is below the minimum header size")]
    BadHeaderLen,
    /// IPv4 total length is smaller than its header, or too large to encode
    #[error("IPv4 total length is smaller than its header, or too large to encode")]
    BadTotalLen,
    /// UDP length field is below 8 or beyond the end of the datagram
    #[error("UDP length field is below 8 or beyond the end of the datagram")]
    BadLength,
}

/// Source and destination port of a TCP or UDP header, which both start with them. Works on
/// the 8 bytes of L4 header quoted in an ICMP error, where a full [`TcpPacket`] does not fit.
#[inline]
pub fn l4_ports(l4: &[u8]) -> Option<(u16, u16)> {
    match l4 {
        [s0, s1, d0, d1, ..] => Some((
            u16::from_be_bytes([*s0, *s1]),
            u16::from_be_bytes([*d0, *d1]),
        )),
        _ => None,
    }
}

// Field access for the views. The callers index only within lengths that `new_checked` has
// validated, so the bounds checks here never fail on a checked view.

#[inline]
fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

#[inline]
fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

#[inline]
fn write_u16(data: &mut [u8], at: usize, value: u16) {
    data[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

#[inline]
fn write_u32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod testutil {
    /// Marsaglia's xorshift64: deterministic pseudo-random input for the wire tests.
    pub struct XorShift(u64);

    impl XorShift {
        pub fn new(seed: u64) -> Self {
            Self(seed.max(1))
        }

        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// Calls `f` on every prefix of `packet` and on copies of it with one byte changed to
    /// random values: `f` parses and reads every field, and must not panic.
    pub fn mangle(packet: &[u8], seed: u64, mut f: impl FnMut(&[u8])) {
        for len in 0..=packet.len() {
            f(&packet[..len]);
        }
        let mut rng = XorShift::new(seed);
        for at in 0..packet.len() {
            for _ in 0..16 {
                let mut copy = packet.to_vec();
                copy[at] = rng.next() as u8;
                let cut = rng.next() as usize % (copy.len() + 1);
                f(&copy);
                f(&copy[..cut]);
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn test_l4_ports_needs_four_bytes() {
        assert_eq!(l4_ports(&[0xd4, 0x31, 0x00, 0x50]), Some((54321, 80)));
        assert_eq!(l4_ports(&[0xd4, 0x31, 0x00]), None);
        assert_eq!(l4_ports(&[]), None);
    }
}
