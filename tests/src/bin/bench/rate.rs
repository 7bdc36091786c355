//! Measure 1, 64-byte UDP packets per second through the VIP: flat out, and the highest paced rate
//! with loss ≤ [`LOSS_MAX`] (a binary search over the offered rate).

use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::{Context, Result};
use director_lab::topo::{workspace_bin, CLIENT};
use serde_json::Value;

use crate::bed::{Bed, Delta, RATE_PORT};
use crate::perf;
use crate::plan::{Opts, Placement, BOX_CPU, HOST_CPU};
use crate::report::Run;
use crate::sys::{CpuTimes, CpuUse};

/// UDP flows (client source ports) of the packet-rate runs.
pub const FLOWS: usize = 1024;
/// The no-loss threshold: lost / offered.
pub const LOSS_MAX: f64 = 0.001;
/// The lowest rate the no-loss search tries.
pub const NOLOSS_FLOOR: f64 = 5000.0;

pub struct Gen {
    pub sent: u64,
    pub secs: f64,
}

/// `pktgen` in the client, pinned to the hosts' CPU, towards `dst` through the director's
/// `ext` MAC; `rate` 0 = flat out.
pub fn pktgen(bed: &Bed, dst: SocketAddrV4, secs: f64, rate: f64, extra: &[String]) -> Result<Gen> {
    let bin = workspace_bin("pktgen")?;
    let client = bed.client();
    let mut argv: Vec<String> = vec![
        "taskset".into(),
        "-c".into(),
        HOST_CPU.to_string(),
        bin.display().to_string(),
        "--ifname".into(),
        "eth0".into(),
        "--src-mac".into(),
        client.mac("eth0")?.to_string(),
        "--dst-mac".into(),
        bed.topo.director.mac("ext")?.to_string(),
        "--dst".into(),
        dst.to_string(),
        "--duration".into(),
        format!("{secs}"),
    ];
    if rate > 0.0 {
        argv.push("--rate".into());
        argv.push(format!("{rate:.0}"));
    }
    argv.extend(extra.iter().cloned());
    if !extra.iter().any(|a| a == "--src") {
        argv.push("--src".into());
        argv.push(CLIENT.to_string());
    }
    let out = client.run_timeout(&argv, Duration::from_secs_f64(secs + 30.0))?;
    let v: Value = serde_json::from_slice(&out.stdout).context("pktgen output")?;
    Ok(Gen {
        sent: v["sent"].as_u64().unwrap_or(0),
        secs: v["secs"].as_f64().unwrap_or(secs),
    })
}

pub struct Trial {
    pub sent: u64,
    pub delivered: u64,
    pub secs: f64,
    pub cpu: CpuUse,
    pub delta: Option<Delta>,
    /// P1: CPU-seconds of the box's threads, and the wall time they were counted over.
    pub box_cpu: Option<(f64, f64)>,
}

impl Trial {
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        self.sent.saturating_sub(self.delivered) as f64 / self.sent as f64
    }
    pub fn offered_pps(&self) -> f64 {
        self.sent as f64 / self.secs
    }
    pub fn delivered_pps(&self) -> f64 {
        self.delivered.min(self.sent) as f64 / self.secs
    }
}

fn trial(bed: &Bed, secs: f64, rate: f64, perf_name: Option<String>) -> Result<Trial> {
    bed.pin_napi()?;
    let s0 = bed.stats();
    let rx0 = bed.reals_rx()?;
    bed.debug_counters("before a trial");
    let rec = perf_name.and_then(|n| perf::start(&n, secs, bed.pl));
    let c0 = CpuTimes::now();
    let b0 = bed.box_clock();
    let g = pktgen(
        bed,
        bed.target(RATE_PORT),
        secs,
        rate,
        &["--flows".into(), FLOWS.to_string()],
    )?;
    let c1 = CpuTimes::now();
    let box_cpu = b0.since(bed);
    perf::wait(rec);
    // Let the rings and queues drain into the counters.
    std::thread::sleep(Duration::from_millis(300));
    let rx1 = bed.reals_rx()?;
    bed.debug_counters(&format!("after a trial at {rate:.0} pps"));
    let delta = match (s0, bed.stats()) {
        (Some(before), Some(after)) => Some(Delta { before, after }),
        _ => None,
    };
    Ok(Trial {
        sent: g.sent,
        delivered: rx1.saturating_sub(rx0),
        secs: g.secs,
        cpu: CpuUse::between(&c0, &c1),
        delta,
        box_cpu,
    })
}

/// A short paced run so that neighbours, flows and conntrack entries exist before timing.
pub fn warm(bed: &Bed) -> Result<()> {
    trial(bed, 0.3, 20_000.0, None)?;
    Ok(())
}

fn run_of(bed: &Bed, t: &Trial) -> Run {
    let mut r = Run::new(t.delivered_pps());
    r.set("offered", t.offered_pps());
    r.set("loss", t.loss());
    r.set("cpu0", t.cpu.busy(0));
    r.set("cpu1", t.cpu.busy(1));
    r.set("si0", t.cpu.softirq.first().copied().unwrap_or(0.0));
    r.set("si1", t.cpu.softirq.get(1).copied().unwrap_or(0.0));
    if bed.pl == Placement::P1 && t.delivered_pps() > 0.0 {
        r.set("ns_pkt", t.cpu.busy(BOX_CPU) * 1e9 / t.delivered_pps());
    }
    if let Some((cpu_s, wall)) = t.box_cpu {
        r.set("box", cpu_s / wall);
        if t.delivered > 0 {
            r.set("ns_pkt_box", cpu_s * 1e9 / t.delivered.min(t.sent) as f64);
        }
    }
    if let Some(d) = &t.delta {
        r.set("ring_drops", d.dp("ring_drops") as f64);
        r.set("tx_errors", d.dp("tx_errors") as f64);
        r.set("tx_waits", d.dp("tx_waits") as f64);
        r.set("dp_rx", d.dp("rx") as f64);
        r.set("fwd_in", d.dp("forwarded_in") as f64);
        r.note = d.drops();
    }
    r
}

/// Flat out for the measure's duration; with an XDP program, then a second, 1 s flat-out
/// trial with the kernel's BPF run-time statistics on, for the program's own cost per run.
pub fn flat(bed: &Bed, opts: &Opts, rep: usize) -> Result<Run> {
    let name = (rep == 0).then(|| format!("{}-{}-rate", bed.pl.name(), bed.path.name()));
    let t = trial(bed, opts.rate_secs(), 0.0, name)?;
    let mut run = run_of(bed, &t);
    if let Some(prog) = bed.path.xdp_prog() {
        let stats = BpfStats::on()?;
        let p0 = prog_runs(prog)?;
        trial(bed, 1.0, 0.0, None)?;
        let p1 = prog_runs(prog)?;
        drop(stats);
        let (dns, dn) = (p1.0.saturating_sub(p0.0), p1.1.saturating_sub(p0.1));
        if dn > 0 {
            run.set("bpf_ns", dns as f64 / dn as f64);
            run.set("bpf_runs", dn as f64);
        }
    }
    Ok(run)
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` = 1 while it lives (it costs a clock read per program run,
/// which is why it is only on for its own trial); the old value goes back when dropped.
struct BpfStats {
    old: String,
}

impl BpfStats {
    fn on() -> Result<BpfStats> {
        let old = std::fs::read_to_string(BPF_STATS).context(BPF_STATS)?;
        std::fs::write(BPF_STATS, "1").context(BPF_STATS)?;
        Ok(BpfStats { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.old.trim());
    }
}

/// The summed `run_time_ns` and `run_cnt` of every loaded program named `name` (bpftool's
/// JSON; the counters only move while the statistics are on).
fn prog_runs(name: &str) -> Result<(u64, u64)> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool prog show")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool prog show --json")?;
    let mut sum = (0, 0);
    for p in v.as_array().into_iter().flatten() {
        if p["name"].as_str() == Some(name) {
            sum.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            sum.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok(sum)
}

/// The highest paced rate with loss ≤ LOSS_MAX: a bisection over [0, the flat-out offered
/// rate], first probing the flat-out delivered rate. `flat` is this bed's flat-out run, if
/// it was just measured.
pub fn noloss(bed: &Bed, opts: &Opts, flat_run: Option<&Run>) -> Result<Run> {
    let (secs, steps) = opts.noloss_trial();
    if let Ok(list) = std::env::var("BENCH_PROBE_RATES") {
        for r in list.split(',').filter_map(|x| x.parse::<f64>().ok()) {
            let t = trial(bed, secs, r, None)?;
            eprintln!(
                "bench:   probe {}: offered {:.0} pps, loss {:.4} %, CPU {:?} steal {:?}",
                bed.path.name(),
                t.offered_pps(),
                100.0 * t.loss(),
                t.cpu.busy,
                t.cpu.steal
            );
        }
    }
    let (top, first, loss) = match flat_run {
        Some(r) => (r.get("offered").unwrap_or(r.main), r.main, r.get("loss")),
        None => {
            let t = trial(bed, secs, 0.0, None)?;
            (t.offered_pps(), t.delivered_pps(), Some(t.loss()))
        }
    };
    // Generator-bound when flat out already lost (almost) nothing: start at the top.
    let first = if loss.is_some_and(|l| l <= LOSS_MAX) {
        top
    } else {
        first.min(top)
    };
    let mut lo = 0.0f64;
    let mut hi = top;
    let mut guess = first.max(top * 0.01);
    let mut best: Option<Trial> = None;
    let mut tried = 0;
    // Nothing passed in `steps` trials: keep halving (at most 4 more) down to NOLOSS_FLOOR,
    // so that a path that loses at every rate tried still gets a figure.
    let mut extra = 0;
    while tried < steps || (best.is_none() && extra < 4 && guess >= NOLOSS_FLOOR) {
        if tried >= steps {
            extra += 1;
        }
        let t = trial(bed, secs, guess, None)?;
        tried += 1;
        let pass = t.loss() <= LOSS_MAX;
        eprintln!(
            "bench:   no-loss search {}: offered {:.0} pps, loss {:.4} % → {}",
            bed.path.name(),
            t.offered_pps(),
            100.0 * t.loss(),
            if pass { "pass" } else { "fail" }
        );
        if pass {
            lo = guess;
            // The generator could not go faster: nothing above to find.
            let short = t.offered_pps() < 0.97 * guess;
            if best
                .as_ref()
                .is_none_or(|b| t.delivered_pps() > b.delivered_pps())
            {
                best = Some(t);
            }
            if short || guess >= top {
                break;
            }
        } else {
            hi = guess;
        }
        guess = (lo + hi) / 2.0;
    }
    let mut r = match &best {
        Some(t) => run_of(bed, t),
        None => {
            let mut r = Run::new(0.0);
            r.note = format!("every trial lost more than {} %", 100.0 * LOSS_MAX);
            r
        }
    };
    r.set("trials", tried as f64);
    r.set("upper", hi);
    Ok(r)
}
