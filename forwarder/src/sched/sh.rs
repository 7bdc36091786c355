//! Source hashing: client address → one of [`SH_BUCKETS`] buckets → real server.
//!
//! Buckets are shared out in proportion to weight (largest remainder, so every live server
//! gets at least one bucket while there are no more than 4096 of them) and laid out by the
//! smooth weighted sequence, so a server's buckets are spread over the table. Servers are
//! placed in address order, so the table depends on the set of servers and weights, not on
//! the order of the config: two directors that list the reals differently still agree.
//!
//! Quiesced servers (weight 0) keep buckets, and a client whose bucket belongs to one falls
//! back to another bucket, as with IPVS's `sh-fallback`. Keeping the buckets is what keeps
//! every other client on its server when a health check quiesces one real. IPVS gives a
//! weight-0 server as many buckets as a weight-1 server; we give it the mean live weight,
//! which is the same for the default weight 1 and keeps the layout when weights are scaled
//! (all 100, say). The fallback is resolved at build time: each quiesced bucket takes the
//! owner of the first live bucket along its own pseudo-random probe sequence, so the
//! quiesced server's clients spread over the live servers in proportion to their buckets.
//! (The bucket next door would hand them all to one neighbour of the interleaved layout.)

use std::net::SocketAddrV4;

use super::hash::{reduce, Hasher};
use super::seq::{apportion, smooth_sequence};
use super::{client_key, Backend};

/// Number of buckets: weight precision of 1/4096 of the total, 8 KiB of table.
pub const SH_BUCKETS: usize = 4096;

/// Salt of the fallback probe sequence, so it is independent of the client hash.
const PROBE_SALT: u64 = 0x5348_5f66_616c_6c62; // "SH_fallb"

#[derive(Debug)]
pub struct ShTable {
    /// Live owner of each bucket after fallback; empty when no server has weight > 0.
    buckets: Box<[u16]>,
    hasher: Hasher,
    hash_port: bool,
}

impl ShTable {
    pub fn build(backends: &[Backend], seed: u64, hash_port: bool) -> ShTable {
        let hasher = Hasher::new(seed);
        let live: Vec<bool> = backends.iter().map(|b| b.weight > 0).collect();
        let n_live = live.iter().filter(|&&l| l).count();
        if n_live == 0 {
            return ShTable {
                buckets: Box::new([]),
                hasher,
                hash_port,
            };
        }
        let live_sum: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        let quiesced_share = u32::try_from((live_sum + n_live as u64 / 2) / n_live as u64)
            .expect("a mean of u32 fits u32")
            .max(1);

        let order = addr_order(backends);
        let shares: Vec<u32> = order
            .iter()
            .map(|&i| match backends[i].weight {
                0 => quiesced_share,
                w => w,
            })
            .collect();
        let owners: Vec<usize> = smooth_sequence(&apportion(&shares, SH_BUCKETS))
            .into_iter()
            .map(|k| order[usize::from(k)])
            .collect();
        debug_assert_eq!(owners.len(), SH_BUCKETS);

        let buckets = (0..SH_BUCKETS)
            .map(|b| {
                let owner = if live[owners[b]] {
                    owners[b]
                } else {
                    fallback(b, &owners, &live, &hasher)
                };
                u16::try_from(owner).expect("Scheduler::new bounds the number of backends")
            })
            .collect();
        ShTable {
            buckets,
            hasher,
            hash_port,
        }
    }

    #[inline]
    pub fn pick(&self, client: SocketAddrV4) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let h = self.hasher.hash(client_key(client, self.hash_port));
        Some(usize::from(self.buckets[reduce(h, SH_BUCKETS)]))
    }
}

/// Owner of the first live bucket along bucket `b`'s probe sequence. Each live server has at
/// least one bucket, so a probe hits a live one with probability ≥ 1/4096; the linear scan
/// after 2^20 probes only makes termination obvious.
fn fallback(b: usize, owners: &[usize], live: &[bool], hasher: &Hasher) -> usize {
    for k in 1..(1u64 << 20) {
        let p = reduce(hasher.hash(PROBE_SALT ^ ((b as u64) << 32 | k)), SH_BUCKETS);
        if live[owners[p]] {
            return owners[p];
        }
    }
    (1..=SH_BUCKETS)
        .map(|d| owners[(b + d) % SH_BUCKETS])
        .find(|&o| live[o])
        .expect("the caller checked that a live server exists")
}

/// Backend indices sorted by address (then index, for duplicates).
pub fn addr_order(backends: &[Backend]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| (*backends[i].addr.ip(), backends[i].addr.port(), i));
    order
}
