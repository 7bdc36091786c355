//! Failover after failover under the product load: an HA pair with a sync link, `flowcheck`
//! on the client holding long streaming connections, idle connections (silent from their
//! handshake to the end) and a stream of short ones. Whichever node is master is SIGKILLed
//! at a random instant (seeded), the other takes over, the killed node is started again
//! and, once its resync is complete, the next kill follows. Without preempt, so each kill
//! moves the VIPs once and the master alternates.
//!
//! Optionally (`ChaosSpec::sync_cut_every`, `link_flap_every`, `resync_kill_every`), some
//! rounds first cut the backup's sync link for 5 s while both boxes live, or fail the master
//! by taking its external link down for 1 s instead of killing it, or SIGKILL the restarted
//! node again at a random instant of its start and resync (it is started once more after).
//!
//! The CI test runs 10 failovers (`sync_failover::ten_failovers_in_a_row_lose_no_flow`);
//! `scripts/bench chaos` runs as many as asked (100 by default) and prints the
//! distribution. Neither asserts anything about speed; the test asserts that no flow is lost
//! but short ones opened, or whose handshake completed, within [`SYNC_WINDOW_NS`] before a
//! kill (the asynchronous stream's stated limit: their entry may not have left yet).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

use crate::flows::{self, stalls_from};
use crate::lab::{mono_ns, wait_until, Lab};
use crate::pair::{Pair, PairSpec};
use crate::topo::{Mode, ServiceSpec};

const T: Duration = Duration::from_secs(20);

/// How long before a kill a short connection may have been opened and still be lost: the
/// sync stream's 1 ms batch plus the sync thread's scheduling on a loaded 2-core machine.
pub const SYNC_WINDOW_NS: u64 = 10_000_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosSpec {
    pub mode: Mode,
    pub kills: usize,
    /// Long streaming connections and idle ones.
    pub long: u64,
    pub idle: u64,
    /// The random instant of each kill: uniform in this range after the pair is steady.
    pub wait_ms: (u64, u64),
    pub seed: u64,
    /// Every this many rounds, before the kill: the backup's sync link down for 5 s while
    /// both boxes live, then up (the stream must repair what it missed).
    pub sync_cut_every: Option<usize>,
    /// Every this many rounds, instead of a SIGKILL: the master's external link down for
    /// 1 s (it faults, the other takes over), then up (it comes back as BACKUP).
    pub link_flap_every: Option<usize>,
    /// Every this many rounds, after the kill: the restarted node SIGKILLed again 0–400 ms
    /// after its start (during its resync, or just before or after it: the report says
    /// which), then started once more.
    pub resync_kill_every: Option<usize>,
}

impl ChaosSpec {
    pub fn new(mode: Mode, kills: usize) -> ChaosSpec {
        ChaosSpec {
            mode,
            kills,
            long: 200,
            idle: 20,
            wait_ms: (300, 2000),
            seed: 1,
            sync_cut_every: None,
            link_flap_every: None,
            resync_kill_every: None,
        }
    }
}

/// How a failover was caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Kill,
    /// A SIGKILL after the sync link had been cut for 5 s and restored.
    KillAfterSyncCut,
    /// The master's external link down for 1 s.
    LinkFlap,
}

/// One failover.
#[derive(Debug, Clone)]
pub struct Failover {
    pub cause: Cause,
    /// The node killed (0 = lb-a).
    pub killed: usize,
    pub kill_ns: u64,
    /// The other node's MASTER, as polled.
    pub master_ns: u64,
    /// The killed node's restart (a flapped link's coming up) → both sync sides up and
    /// resynced.
    pub rejoin_ms: f64,
    /// A second SIGKILL of the restarted node during its start: where it landed.
    pub resync_kill: Option<ResyncKill>,
    /// The longest client-observed stall that began from just before this kill to just
    /// before the next, and how many connections stalled over 100 ms.
    pub longest_stall_ms: f64,
    pub stalls: usize,
}

/// Where a SIGKILL of a starting node landed, by its sync status read just before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncKill {
    /// Its sync session with the master was not up yet.
    BeforeSession,
    /// Session up, its resync of the master's table not complete.
    DuringResync,
    /// Its resync was complete.
    AfterResync,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct ChaosReport {
    pub failovers: Vec<Failover>,
    /// `flowcheck`'s report.
    pub flows: Value,
    /// Short connections that failed and were opened, or completed their handshake, within
    /// `SYNC_WINDOW_NS` before a kill.
    pub short_lost_in_window: u64,
}

impl ChaosReport {
    pub fn long_lost(&self) -> u64 {
        self.flows["long"]["count"].as_u64().unwrap_or(0)
            - self.flows["long"]["ok"].as_u64().unwrap_or(0)
    }

    pub fn idle_lost(&self) -> u64 {
        self.flows["idle"]["count"].as_u64().unwrap_or(0)
            - self.flows["idle"]["ok"].as_u64().unwrap_or(0)
    }
}

/// A seeded xorshift for the kill instants.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs `spec` in `lab`. Every process it starts belongs to the lab and ends with it.
pub fn run(lab: Lab, spec: &ChaosSpec) -> Result<ChaosReport> {
    let mut ps = PairSpec::new(spec.mode);
    ps.sync = true;
    ps.interval = "100ms".into();
    ps.preempt = false;
    ps.services = vec![
        ServiceSpec::http("rr", &[1, 1, 1]),
        ServiceSpec::echo("rr", &[1, 1, 1]),
    ];
    let mut pair = Pair::new(lab, ps).context("pair topology")?;
    pair.start(0)?;
    pair.wait_state(0, "ext", "MASTER", T)?;
    pair.start(1)?;
    pair.wait_state(1, "ext", "BACKUP", T)?;
    let synced = |pair: &Pair| {
        pair.sync_peer_up(0).unwrap_or(false)
            && pair.sync_peer_up(1).unwrap_or(false)
            && pair.sync_resync_complete(0).unwrap_or(false)
            && pair.sync_resync_complete(1).unwrap_or(false)
    };
    wait_until(T, || synced(&pair)).map_err(|_| anyhow!("the sync session did not come up"))?;
    let fc = flows::start_with_idle(&pair.client, spec.long, spec.idle);
    std::thread::sleep(Duration::from_secs(2));
    let mut rng = Rng(spec.seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut failovers = Vec::with_capacity(spec.kills);
    for k in 0..spec.kills {
        let master = if pair.state(0, "ext").is_ok_and(|s| s == "MASTER") {
            0
        } else {
            1
        };
        let heir = 1 - master;
        let every = |e: Option<usize>| e.is_some_and(|e| e > 0 && k % e == e - 1);
        let flap = every(spec.link_flap_every);
        let resync_kill = !flap && every(spec.resync_kill_every);
        let cut = !flap && every(spec.sync_cut_every);
        if cut {
            // Both boxes live, the stream broken for 5 s: the master's changes meanwhile
            // reach the backup only once the link is back (NACK repair or a resync).
            pair.nodes[heir].ip(["link", "set", "sync", "down"])?;
            std::thread::sleep(Duration::from_secs(5));
            pair.nodes[heir].ip(["link", "set", "sync", "up"])?;
            wait_until(T, || {
                synced(&pair)
                    && [0, 1].iter().all(|&n| {
                        pair.sync_status(n)
                            .is_ok_and(|s| s["peer"]["behind"].as_u64() == Some(0))
                    })
            })
            .map_err(|_| anyhow!("round {k}: the sync stream did not recover from the cut"))?;
        }
        let (lo, hi) = spec.wait_ms;
        let wait = lo + rng.next() % (hi - lo).max(1);
        std::thread::sleep(Duration::from_millis(wait));
        let kill_ns = mono_ns();
        if flap {
            pair.nodes[master].ip(["link", "set", "ext", "down"])?;
        } else {
            pair.kill(master)?;
        }
        pair.wait_state(heir, "ext", "MASTER", T)
            .with_context(|| format!("failover {k}: the other node did not take over"))?;
        let master_ns = mono_ns();
        let restart_ns;
        if flap {
            std::thread::sleep(
                Duration::from_secs(1).saturating_sub(Duration::from_nanos(master_ns - kill_ns)),
            );
            restart_ns = mono_ns();
            pair.nodes[master].ip(["link", "set", "ext", "up"])?;
        } else {
            restart_ns = mono_ns();
            pair.start(master)
                .with_context(|| format!("failover {k}: restart"))?;
        }
        let mut landed = None;
        if resync_kill {
            // Killed again while it starts and takes the master's table: the master lives
            // on, so nothing may be lost; the restarted node starts over.
            std::thread::sleep(Duration::from_millis(rng.next() % 400));
            let status = pair.sync_status(master).ok();
            pair.kill(master)?;
            let up = status.as_ref().is_some_and(|s| s["peer"]["state"] == "up");
            let done = status
                .as_ref()
                .is_some_and(|s| s["resync"]["complete"] == true);
            landed = Some(match (up, done) {
                (_, true) => ResyncKill::AfterResync,
                (true, false) => ResyncKill::DuringResync,
                (false, false) => ResyncKill::BeforeSession,
            });
            pair.start(master)
                .with_context(|| format!("failover {k}: second restart"))?;
        }
        wait_until(T, || synced(&pair))
            .map_err(|_| anyhow!("failover {k}: the node did not rejoin and resync"))?;
        let rejoin_ms = (mono_ns() - restart_ns) as f64 / 1e6;
        pair.wait_state(master, "ext", "BACKUP", T)
            .with_context(|| format!("failover {k}: the restarted node is not BACKUP"))?;
        failovers.push(Failover {
            cause: if flap {
                Cause::LinkFlap
            } else if cut {
                Cause::KillAfterSyncCut
            } else {
                Cause::Kill
            },
            killed: master,
            kill_ns,
            master_ns,
            rejoin_ms,
            resync_kill: landed,
            longest_stall_ms: 0.0,
            stalls: 0,
        });
    }
    std::thread::sleep(Duration::from_secs(3));
    let report = flows::stop(fc);
    // Stalls by failover: those that began from just before its kill to just before the next.
    let margin = 1_000_000_000;
    let end = report["end_ns"].as_u64().unwrap_or(u64::MAX);
    for i in 0..failovers.len() {
        let from = failovers[i].kill_ns - margin;
        let to = failovers.get(i + 1).map_or(end + 1, |f| f.kill_ns - margin);
        let (ms, n) = stalls_from(&report, from, to);
        failovers[i].longest_stall_ms = ms;
        failovers[i].stalls = n;
    }
    let windows: Vec<(u64, u64)> = failovers
        .iter()
        .map(|f| (f.kill_ns - SYNC_WINDOW_NS, f.kill_ns))
        .collect();
    let short_failures = report["short"]["failures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let short_lost_in_window = short_failures
        .iter()
        .filter(|f| flows::in_windows(f, &windows))
        .count() as u64;
    Ok(ChaosReport {
        failovers,
        flows: report,
        short_lost_in_window,
    })
}

/// Asserts what the product promises: every long and idle connection survived every
/// failover, and a short one was lost only if it was opened, or completed its handshake,
/// within `SYNC_WINDOW_NS` before a kill.
pub fn assert_nothing_lost(r: &ChaosReport, long: u64) -> u64 {
    let windows: Vec<(u64, u64)> = r
        .failovers
        .iter()
        .map(|f| (f.kill_ns - SYNC_WINDOW_NS, f.kill_ns))
        .collect();
    flows::assert_all_ok_but_opened_in_any(&r.flows, long, &windows)
}

/// The figures as markdown: per failover and the distribution.
pub fn table(r: &ChaosReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut takeovers: Vec<f64> = r
        .failovers
        .iter()
        .map(|f| (f.master_ns - f.kill_ns) as f64 / 1e6)
        .collect();
    let mut stalls: Vec<f64> = r.failovers.iter().map(|f| f.longest_stall_ms).collect();
    let mut rejoins: Vec<f64> = r.failovers.iter().map(|f| f.rejoin_ms).collect();
    let pct = |v: &mut Vec<f64>, p: f64| -> f64 {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i]
    };
    let _ = writeln!(
        out,
        "| measure ({} failovers) | min | p50 | p90 | max |\n|---|---|---|---|---|",
        r.failovers.len()
    );
    for (name, v) in [
        (
            "SIGKILL (or link down) → other node MASTER (ms, polled)",
            &mut takeovers,
        ),
        (
            "longest client-observed stall per failover (ms)",
            &mut stalls,
        ),
        (
            "restart (or link up) → resync complete (ms, polled)",
            &mut rejoins,
        ),
    ] {
        let row = [0.0, 0.5, 0.9, 1.0].map(|p| pct(v, p));
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
            row[0], row[1], row[2], row[3]
        );
    }
    let count = |c: Cause| r.failovers.iter().filter(|f| f.cause == c).count();
    let _ = writeln!(
        out,
        "\nfailovers: {} SIGKILLs, {} SIGKILLs after a 5 s sync-link cut, {} external link flaps (1 s)",
        count(Cause::Kill),
        count(Cause::KillAfterSyncCut),
        count(Cause::LinkFlap)
    );
    let landed = |w: ResyncKill| {
        r.failovers
            .iter()
            .filter(|f| f.resync_kill == Some(w))
            .count()
    };
    if r.failovers.iter().any(|f| f.resync_kill.is_some()) {
        let _ = writeln!(
            out,
            "restarted nodes SIGKILLed again while starting: {} before their sync session was up, {} during their resync, {} just after it",
            landed(ResyncKill::BeforeSession),
            landed(ResyncKill::DuringResync),
            landed(ResyncKill::AfterResync)
        );
    }
    let f = &r.flows;
    let _ = writeln!(
        out,
        "\nflows: long {} of {} ok, idle {} of {} ok, short {} of {} ok ({} lost; opened or handshake within {} ms before a kill: {})",
        f["long"]["ok"],
        f["long"]["count"],
        f["idle"]["ok"],
        f["idle"]["count"],
        f["short"]["ok"],
        f["short"]["opened"],
        f["short"]["failed"],
        SYNC_WINDOW_NS / 1_000_000,
        r.short_lost_in_window
    );
    // Each failed short connection against the kill nearest to its opening.
    for f in f["short"]["failures"].as_array().into_iter().flatten() {
        let opened = f["opened_ns"].as_u64().unwrap_or(0);
        let nearest = r
            .failovers
            .iter()
            .min_by_key(|k| k.kill_ns.abs_diff(opened))
            .map(|k| (opened as f64 - k.kill_ns as f64) / 1e6);
        let handshake = f["handshake_ns"].as_u64().and_then(|h| {
            r.failovers
                .iter()
                .min_by_key(|k| k.kill_ns.abs_diff(h))
                .map(|k| (h as f64 - k.kill_ns as f64) / 1e6)
        });
        let _ = writeln!(
            out,
            "- short failure: {} ({}), opened {} ms from the nearest kill, handshake {}",
            f["error"],
            f["detail"],
            nearest.map_or("?".into(), |d| format!("{d:+.1}")),
            handshake.map_or("never completed".into(), |d| format!(
                "completed {d:+.1} ms from the nearest kill"
            ))
        );
    }
    out
}
