//! The monitor's policy besides thread liveness (`liveness.rs`), in virtual time: when VRRP's
//! preemption hold ends, when the datapath's heartbeat changes, when the systemd watchdog is
//! petted and when the rates are sampled. The `dp-monitor` loop in `daemon.rs` reads the
//! clock and the inputs every tick, asks this, and does what it says (events, VRRP tracks,
//! `sd_notify`, counters).
#![forbid(unsafe_code)]

use std::time::Duration;

/// How often the datapath rates are sampled (and retired real servers' slots freed).
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// Why VRRP's preemption hold ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// Connection sync has the peer's whole table.
    ResyncComplete,
    /// No complete resync within the timeout: preempt anyway.
    TimedOut(Duration),
}

/// The monitor's state; times are since the monitor started.
#[derive(Debug)]
pub struct Policy {
    /// The resync timeout while preemption is held.
    hold: Option<Duration>,
    /// The datapath's heartbeat as last seen (it starts alive).
    datapath: bool,
    /// The systemd watchdog's ping interval, if systemd wants pings.
    watchdog: Option<Duration>,
    last_pet: Duration,
    last_sample: Duration,
}

impl Policy {
    /// `hold`: VRRP starts with preemption held, for at most this long; `watchdog`: how often
    /// systemd wants to hear from the daemon.
    pub fn new(hold: Option<Duration>, watchdog: Option<Duration>) -> Policy {
        Policy {
            hold,
            datapath: true,
            watchdog,
            last_pet: Duration::ZERO,
            last_sample: Duration::ZERO,
        }
    }

    /// Whether the preemption hold ends now; it ends once.
    pub fn hold(&mut self, now: Duration, resync_complete: bool) -> Option<HoldEnd> {
        let timeout = self.hold?;
        let end = if resync_complete {
            HoldEnd::ResyncComplete
        } else if now >= timeout {
            HoldEnd::TimedOut(timeout)
        } else {
            return None;
        };
        self.hold = None;
        Some(end)
    }

    /// The datapath's heartbeat when it changes (`Some(false)`: stalled, VRRP FAULT).
    pub fn datapath(&mut self, healthy: bool) -> Option<bool> {
        (healthy != self.datapath).then(|| {
            self.datapath = healthy;
            healthy
        })
    }

    /// Whether to pet the watchdog now: only while the datapath and every watched thread are
    /// alive, once per interval.
    pub fn pet(&mut self, now: Duration, all_alive: bool) -> bool {
        let Some(every) = self.watchdog else {
            return false;
        };
        let due = all_alive && now.saturating_sub(self.last_pet) >= every;
        if due {
            self.last_pet = now;
        }
        due
    }

    /// Whether a second has passed since the last sample.
    pub fn sample(&mut self, now: Duration) -> bool {
        let due = now.saturating_sub(self.last_sample) >= SAMPLE_PERIOD;
        if due {
            self.last_sample = now;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_hold_ends_when_the_resync_is_complete_and_only_once() {
        let mut p = Policy::new(Some(Duration::from_secs(30)), None);
        assert_eq!(p.hold(ms(100), false), None);
        assert_eq!(p.hold(ms(200), true), Some(HoldEnd::ResyncComplete));
        assert_eq!(p.hold(ms(300), true), None);
        assert_eq!(p.hold(Duration::from_secs(31), false), None);
    }

    #[test]
    fn the_hold_ends_at_the_resync_timeout_without_a_resync() {
        let mut p = Policy::new(Some(Duration::from_secs(30)), None);
        assert_eq!(p.hold(ms(29_900), false), None);
        assert_eq!(
            p.hold(ms(30_000), false),
            Some(HoldEnd::TimedOut(Duration::from_secs(30)))
        );
        assert_eq!(p.hold(ms(30_100), false), None);
    }

    #[test]
    fn without_a_hold_there_is_nothing_to_release() {
        let mut p = Policy::new(None, None);
        assert_eq!(p.hold(ms(0), true), None);
        assert_eq!(p.hold(Duration::from_secs(3600), false), None);
    }

    #[test]
    fn the_datapath_heartbeat_is_reported_on_change_only() {
        let mut p = Policy::new(None, None);
        assert_eq!(p.datapath(true), None, "it starts alive");
        assert_eq!(p.datapath(false), Some(false));
        assert_eq!(p.datapath(false), None);
        assert_eq!(p.datapath(true), Some(true));
        assert_eq!(p.datapath(true), None);
    }

    #[test]
    fn the_watchdog_is_petted_once_per_interval_and_never_while_something_is_dead() {
        let mut p = Policy::new(None, Some(ms(2_500)));
        assert!(!p.pet(ms(2_400), true), "not before the first interval");
        assert!(p.pet(ms(2_500), true));
        assert!(!p.pet(ms(2_600), true));
        // Something stalls: no pings, however long (systemd restarts the daemon).
        assert!(!p.pet(ms(5_000), false));
        assert!(!p.pet(ms(9_000), false));
        // Back: at once, since the interval is long past.
        assert!(p.pet(ms(9_100), true));
        assert!(!p.pet(ms(11_500), true));
        assert!(p.pet(ms(11_600), true));
    }

    #[test]
    fn without_systemd_watchdog_nothing_is_petted() {
        let mut p = Policy::new(None, None);
        assert!(!p.pet(Duration::from_secs(100), true));
    }

    #[test]
    fn rates_are_sampled_every_second() {
        let mut p = Policy::new(None, None);
        let due: Vec<u64> = (1..=25)
            .map(|t| t * 100)
            .filter(|&t| p.sample(ms(t)))
            .collect();
        assert_eq!(due, [1_000, 2_000]);
    }
}
