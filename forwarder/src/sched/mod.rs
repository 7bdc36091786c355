//! Schedulers: which real server gets a new flow (ipvsadm's rr, wrr, lc, wlc, sh, mh), and
//! client-IP persistence ([`PersistTable`], ipvsadm's `-p`).
//!
//! A [`Scheduler`] is built by the control plane, allocating as it likes, whenever a
//! service's config is applied or a weight changes, and swapped in whole (arc-swap). After
//! that it is immutable apart from the rr/wrr cursor: [`Scheduler::pick`] is called by the
//! datapath workers once per new flow, takes no lock and does not allocate.
//!
//! Weight 0 means quiesced for every kind: no new flow, while existing flows finish. When no
//! server has weight > 0, `pick` returns `None`.
//!
//! sh and mh hash the client address with a fixed function and a seed that defaults to a
//! constant ([`hash`]), never a random one: the two directors of an HA pair must send a
//! client to the same server. Both also place servers by address, so the order in which the
//! config lists the reals does not matter.

#![forbid(unsafe_code)]

pub mod hash;
pub mod mh;
mod persist;
mod seq;
pub mod sh;

use std::fmt;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use crate::model::SchedulerKind;
use crate::stats::{RealRegistry, RealSlot};
pub use persist::{PersistCounters, PersistTable};

use mh::MhTable;
use seq::{cycle_counts, smooth_sequence, MAX_CYCLE};
use sh::ShTable;

/// A real server as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddrV4,
    /// 0 = quiesced.
    pub weight: u32,
    /// Where its counters live (lc and wlc read the connection counts there).
    pub slot: RealSlot,
}

/// Build-time parameters of a scheduler; the defaults are what two directors share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedParams {
    /// Seed of the sh and mh hash. Must be equal on both directors of a pair.
    pub seed: u64,
    /// Hash the client port too (ipvsadm's `sh-port` / `mh-port`): spreads one client's
    /// flows over servers, so a client no longer sticks to one server. Off by default.
    pub hash_port: bool,
}

impl Default for SchedParams {
    fn default() -> Self {
        SchedParams {
            seed: hash::DEFAULT_SEED,
            hash_port: false,
        }
    }
}

/// The scheduler of one virtual service.
pub struct Scheduler {
    kind: SchedulerKind,
    backends: Box<[Backend]>,
    /// (address, index) sorted by address, to find a persistence template's server.
    by_addr: Box<[(SocketAddrV4, u16)]>,
    algo: Algo,
}

enum Algo {
    /// rr and wrr: a precomputed cycle of backend indices walked by a shared cursor.
    /// rr's cycle is every live backend once; wrr's is the smooth weighted sequence.
    Cycle {
        seq: Box<[u16]>,
        cursor: AtomicUsize,
    },
    Lc,
    Wlc,
    Sh(ShTable),
    Mh(MhTable),
}

impl Scheduler {
    /// Builds a scheduler with the default [`SchedParams`].
    ///
    /// # Panics
    /// If there are more than 65535 backends (indices are stored as u16; a service cannot
    /// have more reals than the [`RealRegistry`] has slots anyway).
    pub fn new(kind: SchedulerKind, backends: Vec<Backend>) -> Scheduler {
        Scheduler::with_params(kind, backends, SchedParams::default())
    }

    /// Builds a scheduler. Allocates; the mh table takes a few milliseconds.
    ///
    /// # Panics
    /// As [`Scheduler::new`].
    pub fn with_params(kind: SchedulerKind, backends: Vec<Backend>, p: SchedParams) -> Scheduler {
        assert!(
            backends.len() <= usize::from(u16::MAX),
            "a scheduler takes at most 65535 backends"
        );
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let algo = match kind {
            SchedulerKind::Rr => {
                let ones: Vec<u32> = weights.iter().map(|&w| u32::from(w > 0)).collect();
                Algo::cycle(smooth_sequence(&ones))
            }
            SchedulerKind::Wrr => Algo::cycle(smooth_sequence(&cycle_counts(&weights, MAX_CYCLE))),
            SchedulerKind::Lc => Algo::Lc,
            SchedulerKind::Wlc => Algo::Wlc,
            SchedulerKind::Sh => Algo::Sh(ShTable::build(&backends, p.seed, p.hash_port)),
            SchedulerKind::Mh => Algo::Mh(MhTable::build(&backends, p.seed, p.hash_port)),
        };
        let mut by_addr: Vec<(SocketAddrV4, u16)> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.addr, u16::try_from(i).expect("bounded above")))
            .collect();
        by_addr.sort_by_key(|&(a, i)| (*a.ip(), a.port(), i));
        Scheduler {
            kind,
            backends: backends.into_boxed_slice(),
            by_addr: by_addr.into_boxed_slice(),
            algo,
        }
    }

    /// Chooses the real server of a new flow from `client`: an index into
    /// [`Scheduler::backends`], or `None` when every weight is 0 (or there are no backends).
    /// lc and wlc read the connection counters in `reals`; the other kinds ignore it.
    ///
    /// Lock-free and allocation-free. rr and wrr bump one shared atomic.
    #[inline]
    pub fn pick(&self, client: SocketAddrV4, reals: &RealRegistry) -> Option<usize> {
        match &self.algo {
            Algo::Cycle { seq, cursor } => {
                if seq.is_empty() {
                    return None;
                }
                let turn = cursor.fetch_add(1, Ordering::Relaxed);
                Some(usize::from(seq[turn % seq.len()]))
            }
            Algo::Lc => self.least(reals, false),
            Algo::Wlc => self.least(reals, true),
            Algo::Sh(t) => t.pick(client),
            Algo::Mh(t) => t.pick(client),
        }
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    /// Index of the backend with this address (the first, if the config repeats one).
    pub fn find(&self, addr: SocketAddrV4) -> Option<usize> {
        let key = (*addr.ip(), addr.port());
        let at = self
            .by_addr
            .partition_point(|&(a, _)| (*a.ip(), a.port()) < key);
        match self.by_addr.get(at) {
            Some(&(a, i)) if a == addr => Some(usize::from(i)),
            _ => None,
        }
    }

    /// lc: least overhead; wlc: least overhead / weight, compared as
    /// `oh_a × w_b < oh_b × w_a` in u128 (no division, no float). Ties go to the first.
    fn least(&self, reals: &RealRegistry, weighted: bool) -> Option<usize> {
        let mut best: Option<(usize, u64)> = None;
        for (i, b) in self.backends.iter().enumerate() {
            if b.weight == 0 {
                continue;
            }
            let oh = reals.get(b.slot).overhead();
            let better = match best {
                None => true,
                Some((_, best_oh)) if !weighted => oh < best_oh,
                Some((bi, best_oh)) => {
                    u128::from(oh) * u128::from(self.backends[bi].weight)
                        < u128::from(best_oh) * u128::from(b.weight)
                }
            };
            if better {
                best = Some((i, oh));
            }
        }
        best.map(|(i, _)| i)
    }
}

impl Algo {
    fn cycle(seq: Vec<u16>) -> Algo {
        Algo::Cycle {
            seq: seq.into_boxed_slice(),
            cursor: AtomicUsize::new(0),
        }
    }
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("kind", &self.kind)
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

/// What sh and mh hash: the client address, and its port only when asked.
#[inline]
fn client_key(client: SocketAddrV4, hash_port: bool) -> u64 {
    let ip = u64::from(u32::from(*client.ip()));
    if hash_port {
        ip | u64::from(client.port()) << 32
    } else {
        ip
    }
}

#[cfg(test)]
mod tests;
