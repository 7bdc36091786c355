//! The one hash of the schedulers: a seeded splitmix64 finaliser.
//!
//! sh and mh must choose the same real server for the same client on both directors of an
//! HA pair, so the function, its constants and the default seed are part of the contract
//! between two directors: changing any of them moves clients after an upgrade of one box.
//! `golden_values` below pins them.
//!
//! splitmix64's finaliser (Steele, Lea, Flood, "Fast splittable pseudorandom number
//! generators", OOPSLA 2014) is a bijection on u64 with full avalanche, costs two
//! multiplications, and needs no table. It is not a keyed PRF: an attacker who knows the seed
//! can choose client addresses that land on one server, as with IPVS's sh and mh.

/// Seed used when the config does not set one. Both directors of a pair must agree on it.
pub const DEFAULT_SEED: u64 = 0x4c56_535f_7363_6864; // "LVS_schd"

/// splitmix64 output function: adds the golden gamma, then the two xor-shift-multiply rounds.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seeded 64-bit hash of a 64-bit key: `splitmix64(splitmix64(seed) ^ key)`. The seed is
/// mixed once at construction so that a lookup costs one finaliser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hasher {
    key: u64,
}

impl Hasher {
    pub fn new(seed: u64) -> Hasher {
        Hasher {
            key: splitmix64(seed),
        }
    }

    #[inline]
    pub fn hash(&self, data: u64) -> u64 {
        splitmix64(self.key ^ data)
    }
}

/// Maps a 64-bit hash onto `0..n` by multiply-shift (Lemire's "fastrange") of its high half:
/// no division on the per-flow path, bias below n / 2^32.
#[inline]
pub fn reduce(hash: u64, n: usize) -> usize {
    debug_assert!(n <= u32::MAX as usize);
    (((hash >> 32) * n as u64) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the function and the default seed: if this test has to change, sh and mh choices
    /// change, and the two directors of a pair disagree until both run the same build.
    #[test]
    fn golden_values() {
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        let h = Hasher::new(DEFAULT_SEED);
        let vals = [h.hash(0), h.hash(0xc612_0001), h.hash(u64::MAX)];
        assert_eq!(vals, GOLDEN);
    }

    const GOLDEN: [u64; 3] = [
        0x190f_5469_8f7d_4892,
        0x283b_0442_3a2b_8728,
        0xad83_8587_1619_e1f8,
    ];

    #[test]
    fn reduce_stays_in_range() {
        for &h in &[0u64, 1, u64::MAX, 0x8000_0000_0000_0000] {
            assert!(reduce(h, 65537) < 65537);
            assert!(reduce(h, 1) == 0);
        }
        assert_eq!(reduce(u64::MAX, 65537), 65536);
    }
}
