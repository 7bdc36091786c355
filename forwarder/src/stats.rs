//! Counters shared between the datapath workers, the schedulers and the control plane.
//!
//! A real server's counters live in a fixed slot of [`RealRegistry`] so that a connection
//! entry can name its real server with a `u16` and so that the counters survive a reload
//! that keeps the real server. Everything is a relaxed atomic: counters are statistics,
//! never synchronisation.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Index of a real server's counters in the [`RealRegistry`].
pub type RealSlot = u16;

/// Counters of one real server (one `[[service.real]]` of one service).
#[derive(Debug, Default)]
pub struct RealCounters {
    /// Connections in ESTABLISHED (ipvsadm's ActiveConn).
    pub active: AtomicU32,
    /// Connections in any other state, UDP included (ipvsadm's InActConn).
    pub inactive: AtomicU32,
    /// Connections ever scheduled to this real server.
    pub conns: AtomicU64,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl RealCounters {
    /// IPVS "overhead" used by lc and wlc: active × 256 + inactive.
    pub fn overhead(&self) -> u64 {
        u64::from(self.active.load(Ordering::Relaxed)) * 256
            + u64::from(self.inactive.load(Ordering::Relaxed))
    }

    pub fn reset(&self) {
        self.active.store(0, Ordering::Relaxed);
        self.inactive.store(0, Ordering::Relaxed);
        self.conns.store(0, Ordering::Relaxed);
        self.packets_in.store(0, Ordering::Relaxed);
        self.packets_out.store(0, Ordering::Relaxed);
        self.bytes_in.store(0, Ordering::Relaxed);
        self.bytes_out.store(0, Ordering::Relaxed);
    }
}

/// Fixed array of real-server counters, indexed by [`RealSlot`]. Slots are handed out by
/// the control plane when it applies a config; the datapath only reads and bumps them.
#[derive(Debug)]
pub struct RealRegistry {
    slots: Box<[RealCounters]>,
}

impl RealRegistry {
    pub fn new(slots: usize) -> Self {
        assert!(
            slots <= usize::from(RealSlot::MAX) + 1,
            "slot index must fit a u16"
        );
        RealRegistry {
            slots: (0..slots).map(|_| RealCounters::default()).collect(),
        }
    }

    pub fn get(&self, slot: RealSlot) -> &RealCounters {
        &self.slots[usize::from(slot)]
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_weights_active_connections() {
        let reg = RealRegistry::new(4);
        let c = reg.get(2);
        c.active.store(3, Ordering::Relaxed);
        c.inactive.store(5, Ordering::Relaxed);
        assert_eq!(c.overhead(), 3 * 256 + 5);
        assert_eq!(reg.get(1).overhead(), 0);
    }
}
