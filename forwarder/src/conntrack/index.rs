//! Keyed hashing and the open-addressing index of one shard.
//!
//! Every entry is in the index twice: under its inbound key and under its reply key. A
//! cell is a `u64`: the key's 32-bit hash in the high half (it is both the fingerprint
//! that spares most slab reads and the source of the cell's home position, which the
//! backward-shift deletion needs), and in the low half `slot << 1 | direction`, plus one so
//! that zero means empty. Linear probing; deletion shifts the rest of the run back, so
//! there are no tombstones and lookups never degrade with churn.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddrV4;

use super::entry::{FlowKey, ReplyKey};

/// Highest index load we allow: past ~0.7, linear probing runs grow fast.
const MAX_LOAD_NUM: usize = 7;
const MAX_LOAD_DEN: usize = 10;

/// Which key of its entry a cell stands for.
pub(crate) const DIR_IN: u32 = 0;
pub(crate) const DIR_REPLY: u32 = 1;

/// A hash keyed with per-table random secrets, so that clients cannot choose tuples that
/// pile into one probe run or one shard. Two rounds of a folded 64×64→128 multiply
/// (the construction of foldhash/wyhash): fast, and good enough mixing for table indexes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hasher {
    seeds: [u64; 4],
}

fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

fn pack(addr: SocketAddrV4) -> u64 {
    (u64::from(addr.ip().to_bits()) << 16) | u64::from(addr.port())
}

impl Hasher {
    pub(crate) fn random() -> Hasher {
        let rs = RandomState::new();
        let mut seeds = [0u64; 4];
        for (i, s) in seeds.iter_mut().enumerate() {
            *s = rs.hash_one(i);
        }
        Hasher::from_seeds(seeds)
    }

    pub(crate) fn from_seeds(seeds: [u64; 4]) -> Hasher {
        // Dense constants (digits of pi) so that even a weak seed multiplies by a number
        // with bits all over; a zero multiplier would erase the input.
        const MIX: [u64; 4] = [
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
            0xa409_3822_299f_31d0,
            0x082e_fa98_ec4e_6c89,
        ];
        let mut seeds = std::array::from_fn(|i| seeds[i] ^ MIX[i]);
        seeds[3] |= 1;
        Hasher { seeds }
    }

    /// A digest of the seeds: equal for hashers that hash alike, and almost surely
    /// different otherwise. Names a shard function for caches of its results.
    pub(crate) fn digest(&self) -> u64 {
        self.seeds
            .iter()
            .fold(0x9e37_79b9_7f4a_7c15, |d, &s| fold_mul(d ^ s, MIX_DIGEST))
    }

    fn hash(&self, a: u64, b: u64) -> u32 {
        let h = fold_mul(a ^ self.seeds[0], b ^ self.seeds[1]);
        let h = fold_mul(h ^ self.seeds[2], self.seeds[3]);
        (h ^ (h >> 32)) as u32
    }

    /// `tag` keeps the three uses (shard, inbound key, reply key) apart.
    fn hash_tuple(&self, tag: u32, proto: u8, x: SocketAddrV4, y: SocketAddrV4) -> u32 {
        let a = (pack(x) << 16) | (u64::from(proto) << 8) | u64::from(tag);
        self.hash(a, pack(y))
    }

    pub(crate) fn shard(&self, addr: SocketAddrV4) -> u32 {
        self.hash(pack(addr) << 16 | 0xff, 0)
    }

    pub(crate) fn flow(&self, k: &FlowKey) -> u32 {
        self.hash_tuple(DIR_IN, k.proto as u8, k.client, k.vip)
    }

    pub(crate) fn reply(&self, k: &ReplyKey) -> u32 {
        self.hash_tuple(DIR_REPLY, k.proto as u8, k.real, k.peer)
    }
}

const MIX_DIGEST: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// The index of one shard.
#[derive(Debug)]
pub(crate) struct Index {
    cells: Box<[u64]>,
}

/// The home position of `hash` in an index of `cells` cells (multiply-shift range
/// reduction).
fn home_of(hash: u32, cells: usize) -> usize {
    ((u64::from(hash) * cells as u64) >> 32) as usize
}

/// Asks the CPU to start loading the cache line of `hash`'s home cell in the index whose
/// [`Index::cells_at`] is `(at, cells)`. Only a hint: it reads nothing, so it needs no lock
/// and cannot fault; a no-op off x86_64.
#[inline]
pub(crate) fn prefetch_home(at: usize, cells: usize, hash: u32) {
    let addr = at.wrapping_add(home_of(hash, cells) * std::mem::size_of::<u64>());
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint that never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(addr as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

fn encode(hash: u32, slot: u32, dir: u32) -> u64 {
    (u64::from(hash) << 32) | u64::from(((slot << 1) | dir) + 1)
}

impl Index {
    /// An index for `entries` entries (two cells each) at no more than the maximum load.
    pub(crate) fn for_entries(entries: usize) -> Index {
        let refs = entries.max(1) * 2;
        // Any size will do: homes come from a multiply-shift range reduction, not a mask,
        // so the index is not rounded up to a power of two (which cost up to twice the
        // memory).
        let cells = (refs * MAX_LOAD_DEN).div_ceil(MAX_LOAD_NUM).max(2);
        Index {
            cells: vec![0u64; cells].into_boxed_slice(),
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.cells)
    }

    fn home(&self, hash: u32) -> usize {
        home_of(hash, self.cells.len())
    }

    /// Where the cells are and how many: fixed for the life of the index (the cells are
    /// allocated once), so [`prefetch_home`] may use them without the shard lock.
    pub(crate) fn cells_at(&self) -> (usize, usize) {
        (self.cells.as_ptr() as usize, self.cells.len())
    }

    fn next(&self, pos: usize) -> usize {
        if pos + 1 >= self.cells.len() {
            0
        } else {
            pos + 1
        }
    }

    /// How far `to` is past `from`, going forward with wrap-around.
    fn distance(&self, from: usize, to: usize) -> usize {
        if to >= from {
            to - from
        } else {
            to + self.cells.len() - from
        }
    }

    fn at(&self, pos: usize) -> u64 {
        self.cells.get(pos).copied().unwrap_or(0)
    }

    /// First slot whose cell has this hash and direction and for which `matches(slot)`.
    /// Returns the slot and the cell position.
    pub(crate) fn find(
        &self,
        hash: u32,
        dir: u32,
        mut matches: impl FnMut(u32) -> bool,
    ) -> Option<(u32, usize)> {
        let mut pos = self.home(hash);
        loop {
            let cell = self.at(pos);
            if cell == 0 {
                return None;
            }
            if (cell >> 32) as u32 == hash {
                let r = (cell as u32) - 1;
                if r & 1 == dir && matches(r >> 1) {
                    return Some((r >> 1, pos));
                }
            }
            pos = self.next(pos);
        }
    }

    /// Position of the cell naming `slot` in direction `dir` under `hash`.
    pub(crate) fn position_of(&self, hash: u32, slot: u32, dir: u32) -> Option<usize> {
        let want = encode(hash, slot, dir);
        let mut pos = self.home(hash);
        loop {
            let cell = self.at(pos);
            if cell == 0 {
                return None;
            }
            if cell == want {
                return Some(pos);
            }
            pos = self.next(pos);
        }
    }

    /// Adds a cell. The caller guarantees room (the slab is smaller than the index).
    pub(crate) fn insert(&mut self, hash: u32, slot: u32, dir: u32) {
        let mut pos = self.home(hash);
        while self.at(pos) != 0 {
            pos = self.next(pos);
        }
        if let Some(c) = self.cells.get_mut(pos) {
            *c = encode(hash, slot, dir);
        }
    }

    /// Empties the cell at `pos` and shifts back the cells after it that may move closer
    /// to home, so every remaining cell stays reachable from its home without a gap.
    pub(crate) fn remove_at(&mut self, pos: usize) {
        let mut hole = pos;
        let mut next = hole;
        loop {
            next = self.next(next);
            let cell = self.at(next);
            if cell == 0 {
                break;
            }
            let home = self.home((cell >> 32) as u32);
            // The cell may fill the hole if its home is not inside (hole, next].
            if self.distance(home, next) >= self.distance(hole, next) {
                if let Some(c) = self.cells.get_mut(hole) {
                    *c = cell;
                }
                hole = next;
            }
        }
        if let Some(c) = self.cells.get_mut(hole) {
            *c = 0;
        }
    }

    #[cfg(test)]
    pub(crate) fn cells(&self) -> usize {
        self.cells.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes whose homes crowd the end of the table, so runs wrap around to the start.
    fn crowded(i: u32) -> u32 {
        0xffff_ff00 | (i % 3)
    }

    #[test]
    fn backward_shift_keeps_wrapped_runs_reachable() {
        let mut idx = Index::for_entries(8);
        assert_eq!(idx.cells(), 23);
        assert_eq!(idx.home(crowded(0)), 22);
        for slot in 0..8 {
            idx.insert(crowded(slot), slot, DIR_IN);
            idx.insert(crowded(slot) ^ 0x10, slot, DIR_REPLY);
        }
        let mut live: Vec<u32> = (0..8).collect();
        for victim in [3, 0, 7, 5, 1, 6, 2, 4] {
            let pos = idx
                .position_of(crowded(victim), victim, DIR_IN)
                .expect("present");
            idx.remove_at(pos);
            live.retain(|&s| s != victim);
            assert_eq!(idx.find(crowded(victim), DIR_IN, |s| s == victim), None);
            for &s in &live {
                assert_eq!(
                    idx.find(crowded(s), DIR_IN, |x| x == s).map(|f| f.0),
                    Some(s)
                );
                assert!(idx.position_of(crowded(s) ^ 0x10, s, DIR_REPLY).is_some());
            }
        }
    }

    #[test]
    fn direction_bit_separates_the_two_keys_of_a_slot() {
        let mut idx = Index::for_entries(4);
        idx.insert(7, 2, DIR_REPLY);
        assert_eq!(idx.find(7, DIR_IN, |_| true), None);
        assert_eq!(idx.find(7, DIR_REPLY, |_| true).map(|f| f.0), Some(2));
    }

    #[test]
    fn keyed_hash_depends_on_the_seed() {
        let k = FlowKey {
            proto: crate::model::Protocol::Tcp,
            client: "198.18.0.1:1000".parse().expect("addr"),
            vip: "198.18.0.2:80".parse().expect("addr"),
        };
        let a = Hasher::from_seeds([1, 2, 3, 4]);
        let b = Hasher::from_seeds([5, 6, 7, 8]);
        assert_ne!(a.flow(&k), b.flow(&k));
        assert_eq!(a.flow(&k), Hasher::from_seeds([1, 2, 3, 4]).flow(&k));
    }
}
