//! Health checks of real servers, with keepalived's checker as the model.
//!
//! - [`TargetStatus::record`]: the rise/fall state of one real server, sans-I/O (a probe's
//!   result in, a transition out), and [`first_probe_delay`] / [`next_slot`], the schedule.
//! - [`Checker`]: one thread running a `ppoll` loop over non-blocking probe sockets, the
//!   pidfds of exec checks and an eventfd that wakes it for [`Checker::update`] and
//!   [`Checker::stop`]. It sleeps between probes, so hundreds of targets cost little CPU.
//! - [`probe`]: the probes of each check kind and the HTTP answer parser.
//!
//! Semantics an LVS operator expects: a target starts Up (keepalived without `alpha`);
//! `fall` consecutive failures make it Down, `rise` consecutive successes make it Up again;
//! `timeout` is the deadline of the whole probe (connect, request and complete answer), so a
//! server that trickles its answer fails; probes run every `interval`, start to start, and go
//! from the box's own address (nothing is bound) to the real server's address, never a VIP.
//! An exec check's program runs without a shell, stdin/stdout/stderr on /dev/null, in its own
//! process group (killed whole at the deadline), with `DIRECTOR_SERVICE`,
//! `DIRECTOR_REAL_ADDR`, `DIRECTOR_REAL_PORT` and `DIRECTOR_CHECK_PORT` in its environment.

pub mod probe;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::config::Check;
use probe::{Outcome, Probe, Reaper, Start};

/// Which real server of which service a check is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub service: String,
    pub real: SocketAddrV4,
}

impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.service, self.real)
    }
}

/// One real server to check, and how. The probe goes to `real.ip()` on `check.port`, or on
/// the real server's own port when that is `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub key: TargetKey,
    pub check: Check,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// Called on the checker thread on every Up↔Down transition (after rise/fall), with the
/// detail of the deciding probe ("HTTP 503 from 198.18.2.11:8080", "connect to
/// 198.18.2.11:80: connection refused", "timed out after 300ms, killed"). It runs before the
/// next probe result is recorded, so a [`Statuses::snapshot`] taken inside it shows the
/// state at the transition. It should return quickly: probes wait while it runs.
pub type OnChange = Box<dyn Fn(&TargetKey, Health, &str) + Send + 'static>;

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    pub detail: String,
    /// From the start of the probe to its result.
    pub took: Duration,
    /// When the result came.
    pub at: SystemTime,
}

/// The last Up↔Down transition of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub health: Health,
    pub at: SystemTime,
    /// The detail of the deciding probe.
    pub detail: String,
    /// The number of the deciding probe (1 = the target's first).
    pub probe: u64,
}

/// The state of one target, as `snapshot` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetStatus {
    pub key: TargetKey,
    pub health: Health,
    /// Successes in a row (0 after a failure).
    pub consecutive_ok: u32,
    /// Failures in a row (0 after a success).
    pub consecutive_fail: u32,
    /// Probes finished since the target (with this check) appeared.
    pub probes: u64,
    pub last: Option<ProbeResult>,
    pub last_change: Option<Change>,
}

impl TargetStatus {
    /// The initial state: Up, nothing probed yet.
    pub fn new(key: TargetKey) -> TargetStatus {
        TargetStatus {
            key,
            health: Health::Up,
            consecutive_ok: 0,
            consecutive_fail: 0,
            probes: 0,
            last: None,
            last_change: None,
        }
    }

    /// Records one probe's result; returns the new health when this result makes a
    /// transition: the `fall`-th failure in a row while Up, the `rise`-th success in a row
    /// while Down (a value of 0 counts as 1).
    pub fn record(&mut self, rise: u32, fall: u32, result: ProbeResult) -> Option<Health> {
        self.probes += 1;
        if result.ok {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_fail = 0;
        } else {
            self.consecutive_fail = self.consecutive_fail.saturating_add(1);
            self.consecutive_ok = 0;
        }
        let next = match self.health {
            Health::Up if self.consecutive_fail >= fall.max(1) => Some(Health::Down),
            Health::Down if self.consecutive_ok >= rise.max(1) => Some(Health::Up),
            _ => None,
        };
        if let Some(health) = next {
            self.health = health;
            self.last_change = Some(Change {
                health,
                at: result.at,
                detail: result.detail.clone(),
                probe: self.probes,
            });
        }
        self.last = Some(result);
        next
    }
}

/// How long after its appearance a target is first probed: spread over
/// `[0, min(interval, 1s))` by the hash of its key, so many targets do not fire at once.
pub fn first_probe_delay(key: &TargetKey, interval: Duration) -> Duration {
    let span = interval.min(Duration::from_secs(1)).as_nanos() as u64;
    if span == 0 {
        return Duration::ZERO;
    }
    // DefaultHasher::new() has fixed keys: the same key gets the same delay every time.
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    Duration::from_nanos(h.finish() % span)
}

/// The slot after `due`: one interval later (start to start, so no drift accumulates), or,
/// when the loop fell behind, the first slot still ahead of `now` — missed slots are skipped,
/// never run back to back.
pub fn next_slot(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next > now {
        return next;
    }
    let behind = (now - due).as_nanos();
    let slots = behind / interval.as_nanos().max(1) + 1;
    let skip = u32::try_from(slots).unwrap_or(u32::MAX);
    due + interval.saturating_mul(skip)
}

/// The shortest interval the loop accepts (the config requires more than 0).
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// A handle on the targets' states, cheap to clone; valid after the checker stops.
#[derive(Clone, Default)]
pub struct Statuses {
    inner: Arc<Mutex<HashMap<u64, TargetStatus>>>,
}

impl Statuses {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, TargetStatus>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every target's state, sorted by service and real server.
    pub fn snapshot(&self) -> Vec<TargetStatus> {
        let mut all: Vec<TargetStatus> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// One target's state.
    pub fn get(&self, key: &TargetKey) -> Option<TargetStatus> {
        self.lock().values().find(|s| &s.key == key).cloned()
    }
}

/// What `update` and `stop` hand the checker thread.
#[derive(Default)]
struct Control {
    pending: Option<Vec<Target>>,
    stop: bool,
}

struct Shared {
    control: Mutex<Control>,
    /// An eventfd; written to wake the loop.
    wake: EventFd,
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        // Fails only when the counter is near overflow, and then the loop is woken anyway.
        let _ = self.wake.write(1);
    }
}

/// The health checker: one thread probing every target on its schedule.
pub struct Checker {
    shared: Arc<Shared>,
    statuses: Statuses,
    thread: Option<JoinHandle<()>>,
    loops: Arc<AtomicU64>,
}

impl Checker {
    /// Starts the checker thread (named `health`). Every target starts Up; its first probe
    /// runs within `min(interval, 1s)`.
    pub fn start(targets: Vec<Target>, on_change: OnChange) -> io::Result<Checker> {
        let wake =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        let shared = Arc::new(Shared {
            control: Mutex::new(Control::default()),
            wake,
        });
        let statuses = Statuses::default();
        let loops = Arc::new(AtomicU64::new(0));
        let mut engine = Engine {
            shared: shared.clone(),
            statuses: statuses.clone(),
            loops: loops.clone(),
            on_change,
            entries: HashMap::new(),
            by_key: HashMap::new(),
            timers: BinaryHeap::new(),
            in_flight: Vec::new(),
            reaper: Reaper::default(),
            next_id: 0,
            pollfds: Vec::new(),
            results: Vec::new(),
            changes: Vec::new(),
        };
        // Applied here, so a snapshot right after start lists every target.
        engine.apply(targets, Instant::now());
        let thread = std::thread::Builder::new()
            .name("health".to_owned())
            .spawn(move || engine.run())?;
        Ok(Checker {
            shared,
            statuses,
            thread: Some(thread),
            loops,
        })
    }

    /// How many times the checker thread has looped (at least every `liveness::BEAT` while
    /// it runs): the daemon's monitor tells a frozen checker by it.
    pub fn loops(&self) -> u64 {
        self.loops.load(Ordering::Relaxed)
    }

    /// Replaces the target set (config reload). A target whose key and check are unchanged
    /// keeps its state, counters and schedule; a new target, or one whose check changed,
    /// starts Up with nothing probed (a changed one that was Down is reported Up through
    /// `on_change`, detail "check changed; starts up again"); a target that is gone stops,
    /// its probe abandoned (socket closed, program killed and reaped). Returns at once; the
    /// checker thread applies it.
    pub fn update(&self, targets: Vec<Target>) {
        self.shared.control().pending = Some(targets);
        self.shared.wake();
    }

    /// Every target's state, sorted by service and real server.
    pub fn snapshot(&self) -> Vec<TargetStatus> {
        self.statuses.snapshot()
    }

    /// A handle for snapshots that can live apart from the checker (the control socket,
    /// an `on_change` callback).
    pub fn statuses(&self) -> Statuses {
        self.statuses.clone()
    }

    /// Stops the thread and waits for it: probes are abandoned, exec programs killed and
    /// reaped.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.control().stop = true;
        self.shared.wake();
        if thread.join().is_err() {
            tracing::error!("health checker thread panicked");
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A target in the loop.
struct Entry {
    key: TargetKey,
    check: Check,
    /// The next slot; a timer with another time for this id is stale.
    next_due: Instant,
    probe: Option<Running>,
}

struct Running {
    probe: Probe,
    started: Instant,
}

/// The checker thread's state. Ids are never reused, so a stale timer or a result for a
/// target that was replaced is recognised and dropped.
struct Engine {
    shared: Arc<Shared>,
    statuses: Statuses,
    /// Counted every loop; the loop runs at least every `liveness::BEAT`.
    loops: Arc<AtomicU64>,
    on_change: OnChange,
    entries: HashMap<u64, Entry>,
    by_key: HashMap<TargetKey, u64>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Ids with a probe under way, in the order of their pollfds.
    in_flight: Vec<u64>,
    reaper: Reaper,
    next_id: u64,
    pollfds: Vec<libc::pollfd>,
    /// Finished probes not yet recorded: id, outcome, duration.
    results: Vec<(u64, Outcome, Duration)>,
    /// Transitions not yet announced.
    changes: Vec<(TargetKey, Health, String)>,
}

impl Engine {
    fn run(mut self) {
        loop {
            self.loops.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            self.start_due(now);
            self.record_results();
            self.announce();
            // From a fresh clock: `on_change` may have taken a while.
            let timeout = Some(
                self.poll_timeout(Instant::now())
                    .map_or(crate::liveness::BEAT, |t| t.min(crate::liveness::BEAT)),
            );

            self.pollfds.clear();
            self.pollfds.push(libc::pollfd {
                fd: self.shared.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            for id in &self.in_flight {
                let running = self.entries[id].probe.as_ref().expect("in flight");
                self.pollfds.push(running.probe.pollfd());
            }
            self.reaper.pollfds(&mut self.pollfds);
            let ts = timeout.map(|t| libc::timespec {
                tv_sec: t.as_secs() as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            });
            // SAFETY: pollfds is a valid array of its length; ts, when given, outlives the
            // call; no signal mask.
            let r = unsafe {
                libc::ppoll(
                    self.pollfds.as_mut_ptr(),
                    self.pollfds.len() as libc::nfds_t,
                    ts.as_ref().map_or(std::ptr::null(), |t| t as *const _),
                    std::ptr::null(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("health checker: ppoll: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let now = Instant::now();
            self.finish_probes(now);
            let reaped_from = 1 + self.in_flight.len();
            self.reaper
                .reap(&self.pollfds[reaped_from.min(self.pollfds.len())..]);
            // Deadlines after readiness: an answer that arrived in time counts.
            self.expire_probes(now);
            self.in_flight
                .retain(|id| self.entries.get(id).is_some_and(|e| e.probe.is_some()));
            if self.pollfds[0].revents != 0 {
                self.drain_wake();
                let (pending, stop) = {
                    let mut control = self.shared.control();
                    (control.pending.take(), control.stop)
                };
                if stop {
                    break;
                }
                if let Some(targets) = pending {
                    self.record_results();
                    self.apply(targets, now);
                }
            }
            self.record_results();
            self.announce();
        }
        // Dropping the entries closes the sockets; an exec child still running is killed
        // and reaped by `probe::Child`'s drop, and so are the reaper's.
        tracing::debug!(targets = self.entries.len(), "health checker stopped");
    }

    /// Starts the probes whose slot has come, and schedules their next slot.
    fn start_due(&mut self, now: Instant) {
        while let Some(&Reverse((due, id))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            if entry.next_due != due {
                continue;
            }
            let interval = entry.check.interval.max(MIN_INTERVAL);
            entry.next_due = next_slot(due, interval, now);
            self.timers.push(Reverse((entry.next_due, id)));
            if entry.probe.is_some() {
                // Only when timeout > interval, which the config refuses.
                tracing::debug!(service = %entry.key.service, real = %entry.key.real, "previous probe still running; slot skipped");
                continue;
            }
            match Probe::start(&entry.key, &entry.check, now) {
                Start::Running(probe) => {
                    entry.probe = Some(Running {
                        probe,
                        started: now,
                    });
                    self.in_flight.push(id);
                }
                Start::Done(outcome) => self.results.push((id, outcome, now.elapsed())),
            }
        }
    }

    /// The wait until the next slot or probe deadline; `None` = nothing to wait for.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let next_slot = self.timers.peek().map(|Reverse((due, _))| *due);
        let next_deadline = self
            .in_flight
            .iter()
            .filter_map(|id| self.entries[id].probe.as_ref())
            .map(|r| r.probe.deadline())
            .min();
        let wake_at = match (next_slot, next_deadline) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(wake_at.saturating_duration_since(now))
    }

    /// Advances the probes poll found ready.
    fn finish_probes(&mut self, now: Instant) {
        for (i, id) in self.in_flight.iter().enumerate() {
            let revents = self.pollfds[1 + i].revents;
            if revents == 0 {
                continue;
            }
            let entry = self.entries.get_mut(id).expect("in flight");
            let running = entry.probe.as_mut().expect("in flight");
            if let Some(outcome) = running.probe.ready(revents) {
                let took = now - running.started;
                entry.probe = None;
                self.results.push((*id, outcome, took));
            }
        }
    }

    /// Fails the probes whose deadline has passed.
    fn expire_probes(&mut self, now: Instant) {
        for id in &self.in_flight {
            let entry = self.entries.get_mut(id).expect("in flight");
            if entry
                .probe
                .as_ref()
                .is_some_and(|r| r.probe.deadline() <= now)
            {
                let running = entry.probe.take().expect("checked above");
                let outcome = running.probe.expire(&mut self.reaper);
                self.results.push((*id, outcome, now - running.started));
            }
        }
    }

    fn drain_wake(&self) {
        // Resets the counter; EAGAIN when nothing woke the loop.
        let _ = self.shared.wake.read();
    }

    /// Records the finished probes and queues the transitions they make.
    fn record_results(&mut self) {
        if self.results.is_empty() {
            return;
        }
        let mut statuses = self.statuses.lock();
        for (id, outcome, took) in self.results.drain(..) {
            let (Some(entry), Some(status)) = (self.entries.get(&id), statuses.get_mut(&id)) else {
                continue;
            };
            tracing::debug!(
                service = %entry.key.service,
                real = %entry.key.real,
                ok = outcome.ok,
                took_ms = took.as_secs_f64() * 1e3,
                "probe: {}",
                outcome.detail
            );
            let result = ProbeResult {
                ok: outcome.ok,
                detail: outcome.detail,
                took,
                at: SystemTime::now(),
            };
            if let Some(health) = status.record(entry.check.rise, entry.check.fall, result) {
                let detail = status.last.as_ref().map(|l| l.detail.clone());
                self.changes
                    .push((entry.key.clone(), health, detail.unwrap_or_default()));
            }
        }
    }

    /// Calls `on_change` for the queued transitions, with no lock held.
    fn announce(&mut self) {
        for (key, health, detail) in self.changes.drain(..) {
            tracing::info!(service = %key.service, real = %key.real, "real server {health}: {detail}");
            let call = std::panic::AssertUnwindSafe(|| (self.on_change)(&key, health, &detail));
            if std::panic::catch_unwind(call).is_err() {
                tracing::error!(service = %key.service, real = %key.real, "health on_change callback panicked");
            }
        }
    }

    /// Makes `targets` the target set (see [`Checker::update`]).
    fn apply(&mut self, targets: Vec<Target>, now: Instant) {
        let mut statuses = self.statuses.lock();
        let mut by_key = HashMap::with_capacity(targets.len());
        let mut kept = HashSet::with_capacity(targets.len());
        for Target { key, check } in targets {
            if by_key.contains_key(&key) {
                tracing::warn!(service = %key.service, real = %key.real, "target listed twice; the first is checked");
                continue;
            }
            let old = self.by_key.get(&key).copied();
            if let Some(id) = old.filter(|id| self.entries[id].check == check) {
                by_key.insert(key, id);
                kept.insert(id);
                continue;
            }
            if old
                .and_then(|id| statuses.get(&id))
                .is_some_and(|s| s.health == Health::Down)
            {
                self.changes.push((
                    key.clone(),
                    Health::Up,
                    "check changed; starts up again".to_owned(),
                ));
            }
            let id = self.next_id;
            self.next_id += 1;
            let due = now + first_probe_delay(&key, check.interval.max(MIN_INTERVAL));
            self.timers.push(Reverse((due, id)));
            statuses.insert(id, TargetStatus::new(key.clone()));
            by_key.insert(key.clone(), id);
            kept.insert(id);
            self.entries.insert(
                id,
                Entry {
                    key,
                    check,
                    next_due: due,
                    probe: None,
                },
            );
        }
        let gone: Vec<u64> = self
            .entries
            .keys()
            .filter(|id| !kept.contains(id))
            .copied()
            .collect();
        for id in gone {
            let entry = self.entries.remove(&id).expect("listed above");
            statuses.remove(&id);
            if let Some(running) = entry.probe {
                running.probe.abandon(&mut self.reaper);
            }
        }
        self.in_flight.retain(|id| self.entries.contains_key(id));
        self.by_key = by_key;
        // Stale timers of removed ids are dropped as they come due; when removals pile up
        // (many reloads), rebuild the heap instead.
        if self.timers.len() > 2 * self.entries.len() + 64 {
            self.timers = self
                .entries
                .iter()
                .map(|(id, e)| Reverse((e.next_due, *id)))
                .collect();
        }
        tracing::debug!(targets = self.entries.len(), "health targets applied");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(service: &str, real: &str) -> TargetKey {
        TargetKey {
            service: service.to_owned(),
            real: real.parse().expect("literal"),
        }
    }

    fn result(ok: bool) -> ProbeResult {
        ProbeResult {
            ok,
            detail: if ok { "fine" } else { "broken" }.to_owned(),
            took: Duration::from_millis(1),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    /// Feeds `results` (true = success) and returns the probe numbers of the transitions.
    fn transitions(rise: u32, fall: u32, results: &[bool]) -> Vec<(u64, Health)> {
        let mut s = TargetStatus::new(key("web", "198.18.2.11:80"));
        let mut out = Vec::new();
        for &ok in results {
            if let Some(h) = s.record(rise, fall, result(ok)) {
                out.push((s.probes, h));
                assert_eq!(s.last_change.as_ref().map(|c| c.probe), Some(s.probes));
            }
        }
        out
    }

    #[test]
    fn starts_up_and_falls_after_fall_failures_in_a_row() {
        assert_eq!(transitions(2, 3, &[false, false]), vec![]);
        assert_eq!(
            transitions(2, 3, &[false, false, false]),
            vec![(3, Health::Down)]
        );
        // A success in between starts the count again.
        assert_eq!(
            transitions(2, 3, &[false, false, true, false, false, false]),
            vec![(6, Health::Down)]
        );
    }

    #[test]
    fn rises_after_rise_successes_in_a_row() {
        let r = [false, true, false, true, true, true];
        assert_eq!(
            transitions(2, 1, &r),
            vec![(1, Health::Down), (5, Health::Up)]
        );
        // fall = 1, rise = 1: every change of result is a transition.
        assert_eq!(
            transitions(1, 1, &[true, false, true, true, false]),
            vec![(2, Health::Down), (3, Health::Up), (5, Health::Down)]
        );
    }

    #[test]
    fn successes_while_up_and_failures_while_down_change_nothing() {
        let mut s = TargetStatus::new(key("web", "198.18.2.11:80"));
        for _ in 0..5 {
            assert_eq!(s.record(2, 2, result(true)), None);
        }
        assert_eq!((s.health, s.consecutive_ok, s.probes), (Health::Up, 5, 5));
        s.record(2, 2, result(false));
        assert_eq!(s.record(2, 2, result(false)), Some(Health::Down));
        for _ in 0..5 {
            assert_eq!(s.record(2, 2, result(false)), None);
        }
        assert_eq!(
            (s.health, s.consecutive_fail, s.consecutive_ok),
            (Health::Down, 7, 0)
        );
        assert_eq!(
            s.last_change.as_ref().map(|c| c.detail.as_str()),
            Some("broken")
        );
    }

    #[test]
    fn first_probes_spread_over_the_interval_capped_at_one_second() {
        let interval = Duration::from_millis(100);
        let delays: Vec<Duration> = (0..200)
            .map(|i| first_probe_delay(&key(&format!("s{i}"), "198.18.2.11:80"), interval))
            .collect();
        assert!(delays.iter().all(|d| *d < interval));
        // Spread: both halves of the interval are used.
        assert!(delays.iter().any(|d| *d < interval / 2));
        assert!(delays.iter().any(|d| *d >= interval / 2));
        let k = key("web", "198.18.2.12:80");
        assert_eq!(
            first_probe_delay(&k, interval),
            first_probe_delay(&k, interval)
        );
        assert!(first_probe_delay(&k, Duration::from_secs(60)) < Duration::from_secs(1));
    }

    #[test]
    fn slots_are_start_to_start_and_missed_ones_are_skipped() {
        let t0 = Instant::now();
        let i = Duration::from_millis(100);
        // On time or a little late: exactly one interval after the slot, not after now.
        assert_eq!(next_slot(t0, i, t0), t0 + i);
        assert_eq!(next_slot(t0, i, t0 + Duration::from_millis(30)), t0 + i);
        // Three and a half intervals late: the next slot ahead of now.
        assert_eq!(
            next_slot(t0, i, t0 + Duration::from_millis(350)),
            t0 + 4 * i
        );
        assert_eq!(next_slot(t0, i, t0 + i), t0 + 2 * i);
    }
}
