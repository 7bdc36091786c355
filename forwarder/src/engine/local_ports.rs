//! FULLNAT local ports sorted by connection-table shard, so that choosing a local port costs
//! a lookup or two instead of a walk.
//!
//! A FULLNAT flow's local address LIP:lport must hash to its client's shard
//! (`ConnTable::shard_index(LIP:lport) == shard_index(client)`, see `fullnat.rs`). With 256
//! shards only one port in 256 qualifies, and the allocator used to walk the range one port
//! at a time, hashing each, until it met one: about 256 shard hashes per new flow (perf: the
//! walk was the hottest user-space function of a FULLNAT SYN flood, and FULLNAT made about a
//! third of NAT's new flows per second).
//!
//! The shard hash is keyed (`ConnTable::set_shard_key`, derived from the sync key), so the
//! split cannot be known at compile time, but it is fixed for the life of the table. So per
//! LIP, on its first use, [`LipPorts::build`] hashes every port of the range once and sorts
//! them by shard (a counting sort: 64 K hashes, about 0.2 ms, 2 bytes per port, 126 KiB per
//! LIP for the default range). [`LipPorts::in_shard`] then gives the ports of one shard,
//! ascending, and the allocator walks only those: the first one examined is in the client's
//! shard, so a new flow on an uncrowded range costs one reply-key lookup.
//!
//! The lists are kept in a small copy-on-write cache ([`LocalPorts`]): the packet path reads
//! it through an `ArcSwap` (no lock, no shared reference count); a miss builds the LIP's
//! list and publishes a new cache under a mutex that only builders take. This is the one
//! allocation the engine makes on the packet path, once per LIP (and again only if the
//! cache had to drop the LIP: it keeps [`MAX_LIPS`], the oldest going first).
//!
//! The order in which ports are examined is exactly that of the old walk (from a start that
//! depends on the flow, ascending, wrapping at the end of the range, skipping ports of other
//! shards), so the same flows get the same ports. A list is made for one shard function:
//! it names the shard count and [`ConnTable::shard_fn_id`] it was built with, and a table
//! whose key or shard count differs (set after the list was built) gets lists of its own.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use crate::conntrack::ConnTable;

/// LIPs whose lists are kept. A box holds few LIPs (they are VRRP addresses); past this
/// many the oldest list is dropped and built again when next needed.
pub(super) const MAX_LIPS: usize = 256;

/// The ports of one LIP's range, grouped by the shard of LIP:port.
#[derive(Debug)]
pub(super) struct LipPorts {
    lip: Ipv4Addr,
    /// The range it covers (inclusive).
    range: (u16, u16),
    /// The shard function it was built for: shard count and [`ConnTable::shard_fn_id`].
    shards: usize,
    shard_fn: u64,
    /// `ports[starts[s]..starts[s + 1]]` are the ports of shard `s`, ascending.
    starts: Box<[u32]>,
    ports: Box<[u16]>,
}

impl LipPorts {
    /// Hashes every port of `range` (inclusive) once and groups them by `shard_of`.
    pub(super) fn build(
        lip: Ipv4Addr,
        range: (u16, u16),
        shards: usize,
        shard_fn: u64,
        shard_of: impl Fn(SocketAddrV4) -> usize,
    ) -> LipPorts {
        let shards = shards.max(1);
        let (lo, hi) = range;
        let of: Vec<u32> = if lo <= hi {
            (lo..=hi)
                .map(|p| shard_of(SocketAddrV4::new(lip, p)).min(shards - 1) as u32)
                .collect()
        } else {
            Vec::new()
        };
        let mut starts = vec![0u32; shards + 1];
        for &s in &of {
            starts[s as usize + 1] += 1;
        }
        for s in 0..shards {
            starts[s + 1] += starts[s];
        }
        let mut fill = starts.clone();
        let mut ports = vec![0u16; of.len()];
        // Ascending within each shard because the ports are visited in ascending order.
        for (i, &s) in of.iter().enumerate() {
            let at = &mut fill[s as usize];
            ports[*at as usize] = lo + i as u16;
            *at += 1;
        }
        LipPorts {
            lip,
            range,
            shards,
            shard_fn,
            starts: starts.into_boxed_slice(),
            ports: ports.into_boxed_slice(),
        }
    }

    /// The ports of `shard` in the order of a walk of the range from `start`: those from
    /// `start` up, then those from the bottom of the range.
    pub(super) fn walk(&self, shard: usize, start: u16) -> impl Iterator<Item = u16> + '_ {
        let mine = self.in_shard(shard);
        let (before, after) = mine.split_at(self.split(mine, start));
        after.iter().chain(before).copied()
    }

    /// How many of `ports` (one shard's, ascending) are below `start`. The keyed hash
    /// spreads a shard's ports evenly over the range, so the count is first guessed by
    /// interpolation and then corrected by a step or two: one or two cache lines of the
    /// list, where a binary search would touch eight.
    fn split(&self, ports: &[u16], start: u16) -> usize {
        let n = ports.len();
        let (lo, hi) = self.range;
        let span = u64::from(hi.saturating_sub(lo)) + 1;
        let guess = u64::from(start.saturating_sub(lo)) * n as u64 / span;
        let mut i = usize::try_from(guess).unwrap_or(n).min(n);
        while i > 0 && ports[i - 1] >= start {
            i -= 1;
        }
        while i < n && ports[i] < start {
            i += 1;
        }
        i
    }

    /// The ports whose LIP:port is in `shard`, ascending (empty for a shard out of range).
    pub(super) fn in_shard(&self, shard: usize) -> &[u16] {
        match (self.starts.get(shard), self.starts.get(shard + 1)) {
            (Some(&a), Some(&b)) => self.ports.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// The FULLNAT local port range and, per LIP, its ports by shard.
pub(super) struct LocalPorts {
    range: (u16, u16),
    lists: ArcSwap<Vec<Arc<LipPorts>>>,
    /// Taken by builders only, so that two workers missing at once build a list once.
    building: Mutex<()>,
}

impl std::fmt::Debug for LocalPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPorts")
            .field("range", &self.range)
            .field("lips", &self.lists.load().len())
            .finish()
    }
}

impl LocalPorts {
    pub(super) fn new(range: (u16, u16)) -> LocalPorts {
        LocalPorts {
            range,
            lists: ArcSwap::from_pointee(Vec::new()),
            building: Mutex::new(()),
        }
    }

    pub(super) fn range(&self) -> (u16, u16) {
        self.range
    }

    /// Calls `f` with `lip`'s ports by shard of `table`, building them first if need be.
    pub(super) fn with<R>(
        &self,
        lip: Ipv4Addr,
        table: &ConnTable,
        f: impl FnOnce(&LipPorts) -> R,
    ) -> R {
        let (shards, shard_fn) = (table.shard_count(), table.shard_fn_id());
        let lists = self.lists.load();
        match lists
            .iter()
            .find(|l| l.lip == lip && l.shards == shards && l.shard_fn == shard_fn)
        {
            Some(l) => f(l),
            None => {
                drop(lists);
                f(&self.build(lip, table))
            }
        }
    }

    /// Builds `lip`'s list for `table` (unless another worker just did) and publishes a
    /// cache with it.
    #[cold]
    fn build(&self, lip: Ipv4Addr, table: &ConnTable) -> Arc<LipPorts> {
        let _g = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        let lists = self.lists.load_full();
        let (shards, shard_fn) = (table.shard_count(), table.shard_fn_id());
        if let Some(l) = lists
            .iter()
            .find(|l| l.lip == lip && l.shards == shards && l.shard_fn == shard_fn)
        {
            return l.clone();
        }
        let built = Arc::new(LipPorts::build(lip, self.range, shards, shard_fn, |a| {
            table.shard_index(a)
        }));
        let mut next: Vec<Arc<LipPorts>> = lists.iter().filter(|l| l.lip != lip).cloned().collect();
        if next.len() >= MAX_LIPS {
            next.remove(0);
        }
        next.push(built.clone());
        self.lists.store(Arc::new(next));
        built
    }

    #[cfg(test)]
    pub(super) fn cached(&self) -> Vec<Ipv4Addr> {
        self.lists.load().iter().map(|l| l.lip).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy_shard(a: SocketAddrV4) -> usize {
        (a.port() as usize * 7 + a.ip().octets()[3] as usize) % 5
    }

    #[test]
    fn every_port_once_in_its_own_shard_ascending() {
        let lip = Ipv4Addr::new(198, 18, 2, 5);
        let l = LipPorts::build(lip, (1000, 1999), 5, 0, toy_shard);
        let mut seen = Vec::new();
        for s in 0..5 {
            let ports = l.in_shard(s);
            assert!(ports.windows(2).all(|w| w[0] < w[1]), "shard {s} ascending");
            for &p in ports {
                assert_eq!(toy_shard(SocketAddrV4::new(lip, p)), s);
            }
            seen.extend_from_slice(ports);
        }
        seen.sort_unstable();
        assert_eq!(seen, (1000..=1999).collect::<Vec<_>>());
        assert!(l.in_shard(5).is_empty());
    }

    #[test]
    fn the_whole_port_space_and_a_one_port_range() {
        let lip = Ipv4Addr::new(10, 0, 0, 1);
        let all = LipPorts::build(lip, (0, 65535), 3, 0, |a| a.port() as usize % 3);
        assert_eq!(all.ports.len(), 65536);
        assert_eq!(all.in_shard(2).last(), Some(&65534));
        let one = LipPorts::build(lip, (40000, 40000), 1, 0, |_| 0);
        assert_eq!(one.in_shard(0), &[40000]);
        assert_eq!(one.walk(0, 40000).collect::<Vec<_>>(), [40000]);
        // Starts at both ends and a skewed list: the guess is corrected either way.
        for start in [0, 1, 2, 65533, 65534, 65535] {
            let got: Vec<u16> = all.walk(2, start).take(2).collect();
            let first = (start..=65535).chain(0..start).find(|p| p % 3 == 2);
            assert_eq!(got.first().copied(), first, "start {start}");
        }
        let skewed = LipPorts::build(lip, (1000, 1999), 2, 0, |a| usize::from(a.port() >= 1990));
        assert_eq!(
            skewed.walk(1, 1000).collect::<Vec<_>>(),
            (1990..=1999).collect::<Vec<_>>()
        );
        assert_eq!(skewed.walk(1, 1995).next(), Some(1995));
        assert_eq!(skewed.walk(0, 1995).next(), Some(1000));
    }

    fn table(shards: usize) -> ConnTable {
        ConnTable::new(
            4096,
            shards,
            crate::model::Timeouts::default(),
            Arc::new(crate::stats::RealRegistry::new(4)),
        )
    }

    /// The allocator's order (a shard's list from the first port ≥ start, then from its
    /// beginning) is the old walk's: every port of the range from start, wrapping, those of
    /// other shards skipped.
    #[test]
    fn a_shard_list_from_a_start_is_the_walk_of_the_range() {
        let t = table(256);
        let lip = Ipv4Addr::new(198, 18, 2, 5);
        let range = (1024u16, 65535u16);
        let lp = LocalPorts::new(range);
        let span = u32::from(range.1 - range.0) + 1;
        for i in 0..64u32 {
            let start = range.0 + ((i.wrapping_mul(0x9e37_79b9) >> 8) % span) as u16;
            let shard = (i as usize * 37) % 256;
            let walk: Vec<u16> = (0..span)
                .map(|k| range.0 + ((u32::from(start - range.0) + k) % span) as u16)
                .filter(|&p| t.shard_index(SocketAddrV4::new(lip, p)) == shard)
                .collect();
            let listed = lp.with(lip, &t, |l| {
                let mine = l.in_shard(shard);
                assert_eq!(l.split(mine, start), mine.partition_point(|&p| p < start));
                l.walk(shard, start).collect::<Vec<u16>>()
            });
            assert_eq!(listed, walk, "start {start}, shard {shard}");
        }
    }

    #[test]
    fn a_table_with_another_shard_key_gets_its_own_lists() {
        let mut a = table(16);
        let mut b = table(16);
        a.set_shard_key([1; 32]);
        b.set_shard_key([2; 32]);
        let lip = Ipv4Addr::new(198, 18, 2, 5);
        let lp = LocalPorts::new((1024, 4095));
        for t in [&a, &b, &a] {
            for s in 0..16 {
                lp.with(lip, t, |l| {
                    for &p in l.in_shard(s) {
                        assert_eq!(t.shard_index(SocketAddrV4::new(lip, p)), s);
                    }
                });
            }
        }
        assert_ne!(a.shard_fn_id(), b.shard_fn_id());
        let mut c = table(16);
        c.set_shard_key([1; 32]);
        assert_eq!(a.shard_fn_id(), c.shard_fn_id(), "same key, same function");
    }

    #[test]
    fn the_cache_builds_once_and_drops_the_oldest() {
        let table = table(4);
        let lp = LocalPorts::new((2000, 2999));
        let lip = Ipv4Addr::new(198, 18, 2, 5);
        let first = lp.with(lip, &table, |l| l as *const LipPorts);
        let again = lp.with(lip, &table, |l| l as *const LipPorts);
        assert_eq!(first, again, "built once");
        for s in 0..4 {
            lp.with(lip, &table, |l| {
                for &p in l.in_shard(s) {
                    assert_eq!(table.shard_index(SocketAddrV4::new(lip, p)), s);
                }
            });
        }
        for i in 0..MAX_LIPS as u32 {
            lp.with(Ipv4Addr::from(0x0a00_0000 + i), &table, |_| ());
        }
        assert_eq!(lp.cached().len(), MAX_LIPS);
        assert!(!lp.cached().contains(&lip), "the oldest list was dropped");
        lp.with(lip, &table, |_| ());
        assert_eq!(lp.cached().len(), MAX_LIPS);
        assert_eq!(
            lp.cached().last(),
            Some(&lip),
            "and built again when needed"
        );
    }
}
