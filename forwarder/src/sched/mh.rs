//! Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, §3.4) with a lookup table of [`MH_TABLE_SIZE`] slots.
//!
//! Each live server has a permutation of the slots, `offset + j × skip (mod M)`, from two
//! independent hashes of its address and port: `offset = h1 % M`, `skip = h2 % (M − 1) + 1`
//! (M is prime, so every skip walks all slots). Servers take turns claiming the next free
//! slot of their permutation until the table is full; a client is hashed to a slot.
//!
//! Weights: the order of turns is the smooth weighted sequence of the weights (divided by
//! their gcd, capped at `seq::MAX_CYCLE` turns per round), so a server of weight 3 takes
//! three turns per round for every one of a weight-1 server, spread over the round. A turn
//! claims exactly one slot, so shares are the weights' proportions to within one round's
//! rounding. (IPVS's ip_vs_mh gets the same effect with per-server turn counters after
//! shifting the weights down; the interleaved order also makes the last, partial round fair.)
//!
//! Weight-0 servers are left out of the table entirely; their slots are redistributed with
//! Maglev's near-minimal disruption. Live servers are placed in address order, so the table
//! depends only on the set of (address, weight) pairs: the same servers listed in any order
//! give every client the same real server.

use std::net::SocketAddrV4;

use super::hash::{reduce, Hasher};
use super::seq::{cycle_counts, smooth_sequence, MAX_CYCLE};
use super::sh::addr_order;
use super::{client_key, Backend};

/// Size of the lookup table: prime, as Maglev requires, and IPVS's default.
pub const MH_TABLE_SIZE: usize = 65537;

/// Salts that make the two permutation hashes independent of each other and of the client
/// hash. Part of the HA contract, like the seed.
const OFFSET_SALT: u64 = 0x4d48_5f6f_6666_7365; // "MH_offse"
const SKIP_SALT: u64 = 0x4d48_5f73_6b69_7021; // "MH_skip!"

const EMPTY: u16 = u16::MAX;

#[derive(Debug)]
pub struct MhTable {
    /// Backend index per slot; empty when no server has weight > 0.
    slots: Box<[u16]>,
    hasher: Hasher,
    hash_port: bool,
}

impl MhTable {
    pub fn build(backends: &[Backend], seed: u64, hash_port: bool) -> MhTable {
        let hasher = Hasher::new(seed);
        let live: Vec<usize> = addr_order(backends)
            .into_iter()
            .filter(|&i| backends[i].weight > 0)
            .collect();
        if live.is_empty() {
            return MhTable {
                slots: Box::new([]),
                hasher,
                hash_port,
            };
        }
        let weights: Vec<u32> = live.iter().map(|&i| backends[i].weight).collect();
        let turns = smooth_sequence(&cycle_counts(&weights, MAX_CYCLE));

        let (h1, h2) = (
            Hasher::new(seed ^ OFFSET_SALT),
            Hasher::new(seed ^ SKIP_SALT),
        );
        let m = MH_TABLE_SIZE as u64;
        // Next slot of each live server's permutation, and its step.
        let (mut next, skip): (Vec<u32>, Vec<u32>) = live
            .iter()
            .map(|&i| {
                let a = backends[i].addr;
                let key = u64::from(u32::from(*a.ip())) << 16 | u64::from(a.port());
                let offset = h1.hash(key) % m;
                let skip = h2.hash(key) % (m - 1) + 1;
                (offset as u32, skip as u32)
            })
            .unzip();

        let mut slots = vec![EMPTY; MH_TABLE_SIZE];
        let mut filled = 0;
        'fill: loop {
            for &t in &turns {
                let j = usize::from(t);
                loop {
                    let c = next[j] as usize;
                    let n = next[j] + skip[j];
                    next[j] = if n >= MH_TABLE_SIZE as u32 {
                        n - MH_TABLE_SIZE as u32
                    } else {
                        n
                    };
                    if slots[c] == EMPTY {
                        slots[c] =
                            u16::try_from(live[j]).expect("Scheduler::new bounds the backends");
                        filled += 1;
                        break;
                    }
                }
                if filled == MH_TABLE_SIZE {
                    break 'fill;
                }
            }
        }
        MhTable {
            slots: slots.into_boxed_slice(),
            hasher,
            hash_port,
        }
    }

    #[inline]
    pub fn pick(&self, client: SocketAddrV4) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let h = self.hasher.hash(client_key(client, self.hash_port));
        Some(usize::from(self.slots[reduce(h, MH_TABLE_SIZE)]))
    }

    #[cfg(test)]
    pub fn slots(&self) -> &[u16] {
        &self.slots
    }
}
