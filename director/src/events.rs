//! The event history behind `director events`: every state change (VRRP transitions, dual
//! masters, later health and sync) with its time and cause, newest last, bounded.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Events kept; older ones are dropped (and counted).
pub const CAPACITY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Sequence number, from 1, never reused while the daemon runs.
    pub seq: u64,
    pub time: SystemTime,
    /// `vrrp`, `config`, ...
    pub kind: &'static str,
    /// What changed: an instance, a real server, the datapath.
    pub subject: String,
    /// The change and its cause, in words.
    pub message: String,
}

#[derive(Debug, Default)]
struct Inner {
    events: VecDeque<Event>,
    next_seq: u64,
    dropped: u64,
}

/// A shared, bounded event log.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    inner: Arc<Mutex<Inner>>,
}

impl EventLog {
    pub fn push(&self, kind: &'static str, subject: impl Into<String>, message: impl Into<String>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.next_seq += 1;
        let seq = inner.next_seq;
        if inner.events.len() == CAPACITY {
            inner.events.pop_front();
            inner.dropped += 1;
        }
        inner.events.push_back(Event {
            seq,
            time: SystemTime::now(),
            kind,
            subject: subject.into(),
            message: message.into(),
        });
    }

    /// The newest `limit` events, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let skip = inner.events.len().saturating_sub(limit);
        inner.events.iter().skip(skip).cloned().collect()
    }

    /// `director events`: the newest `limit`, oldest first, and how many the log dropped.
    pub fn view(&self, limit: usize) -> crate::api::EventsView {
        let dropped = self.inner.lock().unwrap_or_else(|e| e.into_inner()).dropped;
        let events = self
            .recent(limit)
            .into_iter()
            .map(|e| crate::api::EventView {
                seq: e.seq,
                time: unix_seconds(e.time),
                kind: e.kind.to_string(),
                subject: e.subject,
                message: e.message,
            })
            .collect();
        crate::api::EventsView { events, dropped }
    }
}

/// Seconds since the Unix epoch, with milliseconds.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_in_order() {
        let log = EventLog::default();
        for i in 0..CAPACITY + 10 {
            log.push("vrrp", "ext", format!("event {i}"));
        }
        let all = log.recent(usize::MAX);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, 11);
        assert_eq!(
            all.last().unwrap().message,
            format!("event {}", CAPACITY + 9)
        );
        assert_eq!(log.view(2).dropped, 10);
        assert_eq!(log.view(2).events.len(), 2);
    }
}
