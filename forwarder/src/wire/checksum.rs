//! The Internet checksum: full computation (RFC 1071) and incremental update (RFC 1624).
//!
//! An accumulator (`u32`) is a ones'-complement sum that has not been folded to 16 bits
//! yet. [`sum`] always returns an accumulator no larger than `0x1_fffe`, so a caller may add a
//! handful of accumulators ([`pseudo_header_sum`] + [`sum`] of the segment) with plain `+`
//! and still [`fold`] the total correctly.
//!
//! Which update to use when the datapath rewrites a field in place:
//!
//! - The IPv4 header checksum, and a TCP/UDP checksum that is complete (a packet received
//!   from the wire, or one the kernel handed over with `CHECKSUM_UNNECESSARY` /
//!   `CHECKSUM_COMPLETE`): [`update16`], [`update32`], [`update_bytes`]. An address change
//!   hits both the IPv4 header checksum and (through the pseudo-header) the L4 checksum; a
//!   port change hits only the L4 checksum.
//! - A TCP/UDP checksum the local stack left for the NIC to finish (Linux
//!   `CHECKSUM_PARTIAL`, seen on locally generated packets read from AF_PACKET with
//!   `PACKET_AUXDATA` / `TP_STATUS_CSUMNOTREADY`): the field holds the folded but NOT
//!   complemented pseudo-header sum and covers nothing else, so only an address change
//!   touches it, through [`update_partial32`]; a port change leaves it alone.
//! - UDP over IPv4, where a checksum of 0 means "not computed" (RFC 768): [`udp_update16`]
//!   and [`udp_update32`], which keep 0 as 0 and never produce 0.

use std::net::Ipv4Addr;

/// Adds the 16-bit big-endian words of `data` to the accumulator `acc`. An odd trailing byte
/// is padded with a zero byte, as if `data` started at an even offset of the checksummed
/// region. Correct for any slice length, including full 64 KiB datagrams.
#[inline]
pub fn sum(data: &[u8], acc: u32) -> u32 {
    // Adding 32-bit big-endian words is the same ones'-complement sum as adding their two
    // 16-bit halves (2^16 ≡ 1 mod 0xffff); a u64 cannot overflow before 2^32 of them.
    let mut total = u64::from(acc);
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        total += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    total += u64::from(u32::from_be_bytes(tail));
    // Two end-around folds bring any u64 down to at most 0x1_fffe.
    let total = (total & 0xffff_ffff) + (total >> 32);
    let total = (total & 0xffff_ffff) + (total >> 32);
    let total = (total & 0xffff) + (total >> 16);
    let total = (total & 0xffff) + (total >> 16);
    // The folds above leave at most 0x1_fffe, which fits a u32.
    total as u32
}

/// Folds the carries of an accumulator into 16 bits. The result is not complemented.
#[inline]
pub fn fold(acc: u32) -> u16 {
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    // Two folds leave at most 0xffff.
    acc as u16
}

/// The checksum to store: the complement of the folded accumulator.
#[inline]
pub fn finish(acc: u32) -> u16 {
    !fold(acc)
}

/// Accumulator of the IPv4 pseudo-header (RFC 793 §3.1, RFC 768) for a TCP or UDP segment
/// of `len` bytes (header included).
#[inline]
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u32 {
    let s = u32::from(src);
    let d = u32::from(dst);
    (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + u32::from(proto) + u32::from(len)
}

/// Accumulator of a TCP or UDP segment over IPv4: its pseudo-header plus all of `segment`.
/// `segment` is the whole L4 message (an IPv4 payload, so below 64 KiB; the length of a
/// longer slice is truncated to 16 bits and the sum is wrong, but nothing panics).
#[inline]
pub fn l4_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u32 {
    pseudo_header_sum(src, dst, proto, segment.len() as u16) + sum(segment, 0)
}

#[inline]
fn split(word: u32) -> (u32, u32) {
    (word >> 16, word & 0xffff)
}

/// New value of a complete checksum after the 16-bit word `old` becomes `new`
/// (RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`).
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    finish(u32::from(!csum) + u32::from(!old) + u32::from(new))
}

/// New value of a complete checksum after the 32-bit word `old` (an IPv4 address, or a port
/// pair) becomes `new`.
#[inline]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let (oh, ol) = split(!old);
    let (nh, nl) = split(new);
    finish(u32::from(!csum) + oh + ol + nh + nl)
}

/// New value of a complete checksum after the bytes `old` become `new`. Both slices must have
/// the same length and start at an even offset of the checksummed region (an odd length is
/// fine then: the last byte is the high byte of its word).
#[inline]
pub fn update_bytes(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(
        old.len(),
        new.len(),
        "update_bytes: slices of different length"
    );
    // Σ~m ≡ ~Σm (mod 0xffff), so the old words are removed by adding their folded,
    // complemented sum.
    let removed = u32::from(!fold(sum(old, 0)));
    finish(u32::from(!csum) + removed + sum(new, 0))
}

/// New value of a partial checksum (Linux `CHECKSUM_PARTIAL`: the field holds the folded, not
/// complemented, pseudo-header sum) after the address `old` becomes `new`:
/// `fold(seed + ~old + new)`. Ports are not in a partial checksum: do not call this for them.
#[inline]
pub fn update_partial32(seed: u16, old: u32, new: u32) -> u16 {
    let (oh, ol) = split(!old);
    let (nh, nl) = split(new);
    fold(u32::from(seed) + oh + ol + nh + nl)
}

/// Maps a computed UDP checksum of 0 to 0xffff, the same value in ones' complement, because 0
/// on the wire means "no checksum" (RFC 768).
#[inline]
pub fn udp_nonzero(csum: u16) -> u16 {
    if csum == 0 {
        0xffff
    } else {
        csum
    }
}

/// [`update16`] for a UDP-over-IPv4 checksum: 0 ("none") stays 0, and a result of 0 is
/// written as 0xffff.
#[inline]
pub fn udp_update16(csum: u16, old: u16, new: u16) -> u16 {
    if csum == 0 {
        return 0;
    }
    udp_nonzero(update16(csum, old, new))
}

/// [`update32`] for a UDP-over-IPv4 checksum: 0 ("none") stays 0, and a result of 0 is
/// written as 0xffff.
#[inline]
pub fn udp_update32(csum: u16, old: u32, new: u32) -> u16 {
    if csum == 0 {
        return 0;
    }
    udp_nonzero(update32(csum, old, new))
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::wire::testutil::XorShift;

    /// The straightforward RFC 1071 loop, as the reference for the fast [`sum`].
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map_or(0, u64::from);
            acc += hi | lo;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    fn checksum_of(data: &[u8]) -> u16 {
        finish(sum(data, 0))
    }

    fn word(data: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([data[at], data[at + 1]])
    }

    fn dword(data: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
    }

    #[test]
    fn test_sum_matches_rfc1071_reference_for_all_lengths() {
        let mut rng = XorShift::new(0x5eed_0001);
        for len in 0..=67 {
            let data = rng.bytes(len);
            assert_eq!(fold(sum(&data, 0)), reference_sum(&data), "len {len}");
        }
    }

    #[test]
    fn test_sum_of_64k_of_ones_does_not_overflow() {
        let data = vec![0xffu8; 65_535];
        assert_eq!(fold(sum(&data, 0)), reference_sum(&data));
        let data = vec![0xffu8; 1 << 20];
        assert_eq!(fold(sum(&data, 0xffff_ffff)), 0xffff);
    }

    #[test]
    fn test_sum_accumulator_stays_small_enough_to_add() {
        let data = vec![0xffu8; 4096];
        assert!(sum(&data, u32::MAX) <= 0x1_fffe);
    }

    #[test]
    fn test_rfc1071_example_sum() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(finish(sum(&data, 0)), 0x220d);
    }

    #[test]
    fn test_rfc1624_eqn3_worked_example() {
        // RFC 1624 §4: HC = 0xdd2f, m = 0x5555 → m' = 0x3285 gives 0x0000 with eqn. 3 (eqn. 2
        // would give the wrong 0xffff).
        assert_eq!(update16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn test_update_of_unchanged_word_keeps_checksum() {
        let mut rng = XorShift::new(7);
        for _ in 0..1000 {
            let csum = checksum_of(&rng.bytes(20));
            let w = rng.next() as u16;
            assert_eq!(update16(csum, w, w), csum);
            let d = rng.next() as u32;
            assert_eq!(update32(csum, d, d), csum);
        }
    }

    #[test]
    fn test_checksum_0000_and_ffff_corner_cases() {
        // A region whose sum folds to 0xffff has checksum 0x0000, and rewriting a word of it
        // back and forth must come back to 0x0000, never to the other zero 0xffff.
        let data = [0xff, 0xff, 0x00, 0x00];
        assert_eq!(checksum_of(&data), 0x0000);
        let there = update16(0x0000, 0xffff, 0x1234);
        assert_eq!(there, checksum_of(&[0x12, 0x34, 0x00, 0x00]));
        assert_eq!(update16(there, 0x1234, 0xffff), 0x0000);
        // 0xffff as the stored checksum (all-zero data).
        assert_eq!(checksum_of(&[0, 0, 0, 0]), 0xffff);
        assert_eq!(update16(0xffff, 0x0000, 0x0001), checksum_of(&[0, 1, 0, 0]));
    }

    #[test]
    fn test_udp_update_keeps_zero_and_never_emits_zero() {
        assert_eq!(udp_update16(0, 0x1234, 0x5678), 0);
        assert_eq!(udp_update32(0, 0xc612_000a, 0xc612_0164), 0);
        // RFC 1624 example again: the plain update gives 0x0000, UDP must write 0xffff.
        assert_eq!(udp_update16(0xdd2f, 0x5555, 0x3285), 0xffff);
        assert_eq!(udp_nonzero(0x0000), 0xffff);
        assert_eq!(udp_nonzero(0x1234), 0x1234);
    }

    #[test]
    fn test_incremental_equals_recompute_on_random_packets() {
        let mut rng = XorShift::new(0xd1ec_7012);
        for round in 0..5000 {
            let len = 8 + 2 * (rng.next() as usize % 40);
            let mut data = rng.bytes(len);
            // Checksum field at 0..2, zero while summing.
            data[0] = 0;
            data[1] = 0;
            let csum = checksum_of(&data);
            let at = 2 + 2 * (rng.next() as usize % ((len - 6) / 2));
            match round % 3 {
                0 => {
                    let old = word(&data, at);
                    let new = rng.next() as u16;
                    data[at..at + 2].copy_from_slice(&new.to_be_bytes());
                    assert_eq!(
                        update16(csum, old, new),
                        checksum_of(&data),
                        "round {round}"
                    );
                }
                1 => {
                    let old = dword(&data, at);
                    let new = rng.next() as u32;
                    data[at..at + 4].copy_from_slice(&new.to_be_bytes());
                    assert_eq!(
                        update32(csum, old, new),
                        checksum_of(&data),
                        "round {round}"
                    );
                }
                _ => {
                    let n = 1 + rng.next() as usize % (len - at);
                    let old = data[at..at + n].to_vec();
                    let new = rng.bytes(n);
                    data[at..at + n].copy_from_slice(&new);
                    let got = update_bytes(csum, &old, &new);
                    assert_eq!(got, checksum_of(&data), "round {round}");
                }
            }
        }
    }

    #[test]
    fn test_incremental_equals_recompute_with_pseudo_header_address_change() {
        let mut rng = XorShift::new(42);
        for _ in 0..2000 {
            let src = Ipv4Addr::from(rng.next() as u32);
            let dst = Ipv4Addr::from(rng.next() as u32);
            let new_dst = Ipv4Addr::from(rng.next() as u32);
            let n = 20 + rng.next() as usize % 30;
            let seg = rng.bytes(n);
            let len = seg.len() as u16;
            let before = finish(pseudo_header_sum(src, dst, 6, len) + sum(&seg, 0));
            let after = finish(pseudo_header_sum(src, new_dst, 6, len) + sum(&seg, 0));
            assert_eq!(update32(before, dst.into(), new_dst.into()), after);
        }
    }

    #[test]
    fn test_udp_incremental_equals_recompute() {
        let mut rng = XorShift::new(0x0dd5);
        for _ in 0..2000 {
            let src = Ipv4Addr::from(rng.next() as u32);
            let dst = Ipv4Addr::from(rng.next() as u32);
            let new_src = Ipv4Addr::from(rng.next() as u32);
            let n = 8 + rng.next() as usize % 30;
            let seg = rng.bytes(n);
            let len = seg.len() as u16;
            let full = |s: Ipv4Addr| {
                udp_nonzero(finish(pseudo_header_sum(s, dst, 17, len) + sum(&seg, 0)))
            };
            let got = udp_update32(full(src), src.into(), new_src.into());
            assert_eq!(got, full(new_src));
        }
    }

    #[test]
    fn test_partial_update_equals_recomputed_seed() {
        let mut rng = XorShift::new(0xc5a1);
        for _ in 0..2000 {
            let src = Ipv4Addr::from(rng.next() as u32);
            let dst = Ipv4Addr::from(rng.next() as u32);
            let new_dst = Ipv4Addr::from(rng.next() as u32);
            let len = rng.next() as u16;
            let seed = fold(pseudo_header_sum(src, dst, 6, len));
            let want = fold(pseudo_header_sum(src, new_dst, 6, len));
            assert_eq!(update_partial32(seed, dst.into(), new_dst.into()), want);
        }
    }
}
