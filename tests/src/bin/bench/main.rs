//! `bench`: Director's datapath beside the alternatives an operator would use instead, in the
//! same run, the same lab namespaces, interleaved, in two CPU placements (and a third for
//! latency), printed as markdown tables. Run as root through `scripts/bench` (which installs
//! what it needs and builds in release first). Benchmarks measure and report; they assert
//! nothing about speed.
//!
//! Paths ([`paths`]): directord in NAT, DR, TUN and FULLNAT with AF_PACKET rings and with
//! the XDP fast path (and, on request, XDP steering only); nftables DNAT + conntrack; plain
//! kernel forwarding; HAProxy `mode tcp`; stateless nftables netdev forwarding (DR); and, for
//! scale, the client straight at one real server. Placements ([`plan::Placement`]): P1 the box on one core, P2 the receive softirq
//! beside the worker (two cores for the box), P3 all on one core (latency only). Measures:
//! 64-byte UDP packets/s flat out and at no loss, new flows/s, HTTP requests/s (wrk →
//! nginx), bulk TCP (iperf3), round-trip latency (rttping), memory.
//!
//! For each repetition, for each placement, for each path: one lab is built with the path
//! and the servers the wanted measures need, every measure runs in it, and it is torn down
//! (the SYN flood gets a lab of its own). So every path sees the same machine state in turn.
//!
//! `bench [--quick] [--only rate,norate,flows,http,bulk,latency,memory] [--placements p1,p2,p3]
//! [--paths LIST] [--reps N] [--perf DIR] [--out FILE]`
//!
//! Diagnosis: `BENCH_DEBUG=1` prints every lab interface's packet and drop counters, the
//! director's softnet_stat and its NAPI threads' schedstat around each packet-rate trial;
//! `BENCH_PROBE_RATES=100000,200000` runs no-loss trials at those rates (and prints their
//! loss and CPU) before each no-loss search.

mod bed;
mod flows;
mod latency;
mod memory;
mod paths;
mod perf;
mod plan;
mod rate;
mod report;
mod servers;
mod sys;
mod tcp;

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{bail, Result};

use bed::{Bed, Wants};
use paths::Path;
use plan::{Measure, Opts, Placement};
use report::{Run, Store};

/// Raises the global `nf_conntrack_max` (writable only in the root namespace) for the SYN
/// flood through nftables, and puts the old value back when dropped.
struct ConntrackMax {
    old: Option<String>,
}

const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

impl ConntrackMax {
    fn raise(to: u64) -> ConntrackMax {
        if !std::path::Path::new(CONNTRACK_MAX).exists() {
            let _ = std::process::Command::new("modprobe")
                .arg("nf_conntrack")
                .status();
        }
        let old = std::fs::read_to_string(CONNTRACK_MAX)
            .ok()
            .map(|s| s.trim().to_string());
        if old.is_some() {
            if let Err(e) = std::fs::write(CONNTRACK_MAX, to.to_string()) {
                eprintln!("bench: cannot raise nf_conntrack_max: {e}");
            }
        }
        ConntrackMax { old }
    }
}

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = std::fs::write(CONNTRACK_MAX, old);
        }
    }
}

fn need(tool: &str, why: &str) -> Result<()> {
    let ok = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("{tool} is not installed ({why}); run scripts/bench, which installs it");
    }
    Ok(())
}

fn variant_of_http(close: bool) -> &'static str {
    if close {
        "Connection: close"
    } else {
        "keep-alive"
    }
}

/// The measures of the main bed, in the order they run: latency first (the quietest
/// machine), the flood last.
const MAIN_ORDER: [Measure; 5] = [
    Measure::Latency,
    Measure::Http,
    Measure::Bulk,
    Measure::Rate,
    Measure::NoLoss,
];

fn run_main(opts: &Opts, store: &mut Store, rep: usize, pl: Placement, path: Path, ms: &[Measure]) {
    let wants = Wants {
        rate: ms.contains(&Measure::Rate) || ms.contains(&Measure::NoLoss),
        http: ms.contains(&Measure::Http),
        bulk: ms.contains(&Measure::Bulk),
        rtt: ms.contains(&Measure::Latency),
        ..Wants::default()
    };
    let what = format!("rep {} {} {}", rep + 1, pl.name(), path.name());
    eprintln!("bench: {what}: building the lab");
    let t0 = Instant::now();
    let bed = match Bed::build(path, pl, wants) {
        Ok(b) => {
            eprintln!(
                "bench: {what}: built in {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            b
        }
        Err(e) => {
            store.fail(format!("{what}: {e:#}"));
            return;
        }
    };
    for n in &bed.notes {
        store.setup_note(path, n);
    }
    let mut flat: Option<Run> = None;
    for m in MAIN_ORDER.iter().filter(|m| ms.contains(m)) {
        eprintln!("bench: {what}: {}", m.name());
        let r: Result<()> = (|| {
            bed.steer(matches!(m, Measure::Rate | Measure::NoLoss))?;
            match m {
                Measure::Latency => {
                    for (variant, run) in latency::latency(&bed, opts)? {
                        eprintln!(
                            "bench:   {variant}: p50 {:.0} µs, p99 {:.0} µs",
                            run.main,
                            run.get("p99").unwrap_or(0.0)
                        );
                        store.add(*m, &variant, pl, path, run);
                    }
                }
                Measure::Http => {
                    for close in [false, true] {
                        let run = tcp::wrk(&bed, opts.wrk_secs(), close)?;
                        eprintln!(
                            "bench:   {}: {:.0} requests/s",
                            variant_of_http(close),
                            run.main
                        );
                        store.add(*m, variant_of_http(close), pl, path, run);
                    }
                }
                Measure::Bulk => {
                    for streams in [1, 4] {
                        let run = tcp::iperf(&bed, opts.iperf_secs(), streams)?;
                        let variant = if streams == 1 {
                            "1 stream".to_string()
                        } else {
                            format!("{streams} streams")
                        };
                        eprintln!("bench:   {variant}: {:.2} Gbit/s", run.main);
                        store.add(*m, &variant, pl, path, run);
                    }
                }
                Measure::Rate => {
                    rate::warm(&bed)?;
                    let run = rate::flat(&bed, opts, rep)?;
                    eprintln!(
                        "bench:   delivered {} Mpps of {} offered",
                        report::mpps(run.main),
                        report::mpps(run.get("offered").unwrap_or(0.0))
                    );
                    flat = Some(run.clone());
                    store.add(*m, "", pl, path, run);
                }
                Measure::NoLoss => {
                    if flat.is_none() {
                        rate::warm(&bed)?;
                    }
                    let run = rate::noloss(&bed, opts, flat.as_ref())?;
                    eprintln!("bench:   no-loss {} Mpps", report::mpps(run.main));
                    store.add(*m, "", pl, path, run);
                }
                _ => {}
            }
            Ok(())
        })();
        if let Err(e) = r {
            store.fail(format!("{what} {}: {e:#}", m.name()));
        }
    }
    let t0 = Instant::now();
    drop(bed);
    eprintln!(
        "bench: {what}: torn down in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

fn run_flows(opts: &Opts, store: &mut Store, rep: usize, pl: Placement, path: Path) {
    let what = format!("rep {} {} {} flows", rep + 1, pl.name(), path.name());
    eprintln!("bench: {what}");
    let wants = Wants {
        syn: true,
        ..Wants::default()
    };
    let r = Bed::build(path, pl, wants).and_then(|bed| {
        let run = flows::flows(&bed, opts, rep)?;
        eprintln!(
            "bench:   {:.0} SYNs delivered/s of {:.0} offered",
            run.main,
            run.get("offered").unwrap_or(0.0)
        );
        Ok(run)
    });
    match r {
        Ok(run) => store.add(Measure::Flows, "", pl, path, run),
        Err(e) => store.fail(format!("{what}: {e:#}")),
    }
}

struct Header {
    commit: String,
    machine: String,
    load_before: String,
    started: Instant,
    date: String,
}

fn render(
    opts: &Opts,
    store: &Store,
    h: &Header,
    memory: Option<&memory::Memory>,
    done: bool,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Director datapath beside the alternatives\n");
    let _ = writeln!(out, "- commit: {}", h.commit);
    let _ = writeln!(out, "- machine: {}", h.machine);
    let _ = writeln!(out, "- started: {}", h.date);
    let _ = writeln!(
        out,
        "- load average (1, 5, 15 min) before: {}; {}: {}",
        h.load_before,
        if done { "after" } else { "so far" },
        sys::loadavg()
    );
    let reps: Vec<String> = opts
        .only
        .iter()
        .filter(|m| **m != Measure::Memory)
        .map(|m| format!("{} {}", m.name(), opts.reps(*m)))
        .collect();
    let _ = writeln!(
        out,
        "- run: {}, repetitions: {}; {:.0} s{}",
        if opts.quick { "--quick" } else { "full" },
        reps.join(", "),
        h.started.elapsed().as_secs_f64(),
        if done { "" } else { " so far (incomplete)" }
    );
    let _ = writeln!(
        out,
        "- the lab: network namespaces joined by veth pairs and Linux bridges in a switch \
         namespace (`bridge-nf-call-*` off), 198.18.0.0/15, built and removed per path and \
         repetition. The director's switch ports are wire-like for **every** path (TSO, GSO \
         and TX checksum offload off, GRO on: complete checksums, no frame over the MTU, as \
         from a NIC; XDP needs it) and the director's `ext` and `int` have GRO on, so all \
         paths receive the same frames. 3 real servers (FULLNAT's SYN flood: 24). Real \
         servers' default route: the director (NAT, FULLNAT: none beyond their /24), TUN: a \
         plain router.\n"
    );
    let _ = writeln!(out, "Placements (the same for every path):\n");
    for pl in &opts.placements {
        let _ = writeln!(out, "- {}", pl.describe());
    }
    let _ = writeln!(
        out,
        "\nCPU figures: \"CPU 0 %\" and \"CPU 1 %\" are whole-CPU busy time (user + system + \
         irq + softirq) from /proc/stat over the run, so anything else running on the machine \
         counts too (the load averages above say how much there was). \"box threads\" (P1 \
         only) is the CPU time of the box's own threads from /proc/PID/task/*/schedstat: every \
         directord or HAProxy thread and the director's NAPI threads; other load does not \
         count, but hard-IRQ time and softirq work run on CPU 1 in other threads' context are \
         missed, so it is a lower bound. Per-unit figures (ns/pkt, µs/req, CPU s/GB) divide \
         either by the work done."
    );
    let _ = writeln!(out, "\nPaths:\n");
    for p in &opts.paths {
        let _ = writeln!(out, "- {}", p.describe());
    }
    let _ = writeln!(
        out,
        "\nEach table: the median over repetitions (the run with the median main figure \
         supplies the other columns), its range, and the ratio of the medians to each \
         baseline's in the same placement (\"÷ nft DNAT\" = this path / nftables DNAT; > 1 is \
         more throughput, or more latency). Benchmarks report; nothing here asserts a speed.\n"
    );
    let cx = report::Context {
        paths: &opts.paths,
        placements: &opts.placements,
    };
    report::rate(
        &mut out,
        store,
        &cx,
        opts.rate_secs(),
        opts.reps(Measure::Rate),
    );
    report::noloss(&mut out, store, &cx, opts.noloss_trial());
    report::flows(
        &mut out,
        store,
        &cx,
        opts.flows_secs(),
        opts.reps(Measure::Flows),
    );
    report::http(&mut out, store, &cx, opts.wrk_secs());
    report::bulk(&mut out, store, &cx, opts.iperf_secs());
    report::latency(&mut out, store, &cx, &opts.latency_levels());
    if let Some(m) = memory {
        report::memory(&mut out, m);
    }
    report::tail(&mut out, store);
    out
}

fn write_out(opts: &Opts, text: &str) {
    if let Some(path) = &opts.out {
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("bench: cannot write {}: {e}", path.display());
        }
    }
}

fn main() -> Result<()> {
    let opts = Opts::parse()?;
    director_lab::preflight()
        .map_err(|e| anyhow::anyhow!("the benchmarks need root and network namespaces: {e}"))?;
    if let Some(dir) = &opts.perf {
        need("perf", "--perf")?;
        perf::set_dir(dir.clone())?;
    }
    let tcp_wanted = |m: Measure| opts.wants(m) && opts.paths.iter().any(|p| p.applies(m));
    if tcp_wanted(Measure::Http) {
        need("wrk", "the HTTP measure")?;
        need("nginx", "the HTTP measure")?;
    }
    if tcp_wanted(Measure::Bulk) {
        need("iperf3", "the bulk measure")?;
    }
    if opts.paths.contains(&Path::Haproxy)
        && (tcp_wanted(Measure::Http) || tcp_wanted(Measure::Bulk) || tcp_wanted(Measure::Latency))
    {
        need("haproxy", "the HAProxy path")?;
    }
    let header = Header {
        commit: sys::commit(),
        machine: sys::machine(),
        load_before: sys::loadavg(),
        started: Instant::now(),
        date: std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
    };
    let _conntrack = (opts.wants(Measure::Flows) && opts.paths.contains(&Path::NftDnat))
        .then(|| ConntrackMax::raise(4_194_304));
    let mut store = Store::default();
    let max_reps = opts.only.iter().map(|m| opts.reps(*m)).max().unwrap_or(1);
    for rep in 0..max_reps {
        for &pl in &opts.placements {
            for &path in &opts.paths {
                // No director on that path: P1 and P2 place it alike.
                if path == Path::Direct && pl == Placement::P2 {
                    continue;
                }
                let here = |m: Measure| {
                    opts.wants(m) && rep < opts.reps(m) && pl.allows(m) && path.applies(m)
                };
                let ms: Vec<Measure> = MAIN_ORDER.iter().copied().filter(|m| here(*m)).collect();
                if !ms.is_empty() {
                    run_main(&opts, &mut store, rep, pl, path, &ms);
                }
                if here(Measure::Flows) {
                    run_flows(&opts, &mut store, rep, pl, path);
                }
            }
        }
        write_out(&opts, &render(&opts, &store, &header, None, false));
    }
    let mut mem = None;
    if opts.wants(Measure::Memory) {
        eprintln!("bench: memory (filling 1M connections)");
        match memory::memory(opts.quick) {
            Ok(m) => mem = Some(m),
            Err(e) => store.fail(format!("memory: {e:#}")),
        }
    }
    let text = render(&opts, &store, &header, mem.as_ref(), true);
    write_out(&opts, &text);
    println!("{text}");
    Ok(())
}
