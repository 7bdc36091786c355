//! Fate sharing across the daemon's threads: which of them still make progress.
//!
//! Each long-lived thread (VRRP, sync, health checks, control) counts its loops and wakes at
//! least every [`BEAT`], work or not, so a count that stops moving means a thread that is stuck
//! (keepalived's checker is known to freeze silently). The datapath workers have their own
//! heartbeats (`Datapath::healthy`). This module is the policy only, in virtual time:
//! the monitor feeds it the counts every tick and acts on what it says. A stalled thread
//! faults VRRP (a master resigns, so the peer takes over) and stops the systemd watchdog
//! pings (systemd restarts the daemon); a thread that moves again lifts both.
#![forbid(unsafe_code)]

use std::time::Duration;

/// The longest a watched thread sleeps between loops.
pub const BEAT: Duration = Duration::from_millis(250);

/// A watched thread: its name and how long its count may stand still.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    pub name: &'static str,
    pub bound: Duration,
}

#[derive(Debug)]
struct State {
    watch: Watch,
    count: u64,
    moved_at: Duration,
    stalled: bool,
}

/// What changed at one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The thread's count has not moved for `for_` (more than its bound).
    Stalled { name: &'static str, for_: Duration },
    /// A stalled thread moves again.
    Recovered { name: &'static str },
}

/// The watched threads' progress.
#[derive(Debug)]
pub struct Liveness {
    threads: Vec<State>,
}

impl Liveness {
    /// Watches `threads`, each seen moving at `now`.
    pub fn new(threads: &[Watch], now: Duration) -> Liveness {
        Liveness {
            threads: threads
                .iter()
                .map(|&watch| State {
                    watch,
                    count: 0,
                    moved_at: now,
                    stalled: false,
                })
                .collect(),
        }
    }

    /// The threads' loop counts at `now`, in the order given to `new`.
    pub fn observe(&mut self, now: Duration, counts: &[u64]) -> Vec<Change> {
        assert_eq!(counts.len(), self.threads.len(), "one count per thread");
        let mut changes = Vec::new();
        for (t, &count) in self.threads.iter_mut().zip(counts) {
            if count != t.count {
                t.count = count;
                t.moved_at = now;
                if t.stalled {
                    t.stalled = false;
                    changes.push(Change::Recovered { name: t.watch.name });
                }
                continue;
            }
            let still = now.saturating_sub(t.moved_at);
            if !t.stalled && still > t.watch.bound {
                t.stalled = true;
                changes.push(Change::Stalled {
                    name: t.watch.name,
                    for_: still,
                });
            }
        }
        changes
    }

    /// No watched thread is stalled.
    pub fn all_alive(&self) -> bool {
        self.threads.iter().all(|t| !t.stalled)
    }

    /// The stalled threads' names.
    pub fn stalled(&self) -> Vec<&'static str> {
        self.threads
            .iter()
            .filter(|t| t.stalled)
            .map(|t| t.watch.name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn watches() -> [Watch; 2] {
        [
            Watch {
                name: "health",
                bound: 2000 * MS,
            },
            Watch {
                name: "control",
                bound: 10_000 * MS,
            },
        ]
    }

    #[test]
    fn a_count_that_stands_still_past_its_bound_is_a_stall_and_moving_again_ends_it() {
        let mut l = Liveness::new(&watches(), Duration::ZERO);
        let mut health = 0;
        // Moving every 250 ms: never stalled, whatever the time.
        for i in 1..=40u32 {
            health += 1;
            assert_eq!(l.observe(i * 250 * MS, &[health, u64::from(i)]), vec![]);
        }
        assert!(l.all_alive());
        // Health stops at 10 s; 2 s later it is not yet a stall, just after it is, once.
        assert_eq!(l.observe(12_000 * MS, &[health, 41]), vec![]);
        let c = l.observe(12_100 * MS, &[health, 42]);
        assert_eq!(
            c,
            vec![Change::Stalled {
                name: "health",
                for_: 2100 * MS
            }]
        );
        assert!(!l.all_alive());
        assert_eq!(l.stalled(), vec!["health"]);
        assert_eq!(l.observe(20_000 * MS, &[health, 43]), vec![], "said once");
        // It moves again: recovered, alive.
        health += 1;
        assert_eq!(
            l.observe(20_100 * MS, &[health, 44]),
            vec![Change::Recovered { name: "health" }]
        );
        assert!(l.all_alive());
        assert_eq!(l.stalled(), Vec::<&str>::new());
    }

    #[test]
    fn each_thread_has_its_own_bound() {
        let mut l = Liveness::new(&watches(), Duration::ZERO);
        // Both stand still from the start: health stalls after 2 s, control only after 10 s.
        assert_eq!(l.observe(2001 * MS, &[0, 0]).len(), 1);
        assert_eq!(l.stalled(), vec!["health"]);
        assert_eq!(l.observe(9999 * MS, &[0, 0]), vec![]);
        assert_eq!(
            l.observe(10_001 * MS, &[0, 0]),
            vec![Change::Stalled {
                name: "control",
                for_: 10_001 * MS
            }]
        );
        assert_eq!(l.stalled(), vec!["health", "control"]);
    }
}
