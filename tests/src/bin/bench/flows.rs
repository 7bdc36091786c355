//! Measure 2, new flows per second: TCP SYNs, each from a new (source address, port), through the
//! path; counted where they arrive (the real servers' `eth0`), and as directord's new
//! connections.

use std::time::Duration;

use anyhow::Result;

use crate::bed::{Bed, Delta, HTTP_PORT, SYN_BASE, SYN_SOURCES};
use crate::paths::Path;
use crate::perf;
use crate::plan::{Opts, Placement, BOX_CPU};
use crate::rate::pktgen;
use crate::report::Run;
use crate::sys::{CpuTimes, CpuUse};

/// Ports per source address of `pktgen --mode syn` (1024..=65535).
pub const PORTS_PER_SOURCE: u64 = 64512;

pub fn syn_args(sources: u32) -> Vec<String> {
    vec![
        "--mode".into(),
        "syn".into(),
        "--src".into(),
        SYN_BASE.to_string(),
        "--sources".into(),
        sources.to_string(),
    ]
}

pub fn flows(bed: &Bed, opts: &Opts, rep: usize) -> Result<Run> {
    let secs = opts.flows_secs();
    bed.pin_napi()?;
    let s0 = bed.stats();
    let rx0 = bed.reals_rx()?;
    let name = (rep == 0).then(|| format!("{}-{}-flows", bed.pl.name(), bed.path.name()));
    let rec = name.and_then(|n| perf::start(&n, secs, bed.pl));
    let c0 = CpuTimes::now();
    let b0 = bed.box_clock();
    let g = pktgen(
        bed,
        bed.target(HTTP_PORT),
        secs,
        0.0,
        &syn_args(SYN_SOURCES),
    )?;
    let c1 = CpuTimes::now();
    let box_cpu = b0.since(bed);
    perf::wait(rec);
    std::thread::sleep(Duration::from_millis(300));
    let rx1 = bed.reals_rx()?;
    let cpu = CpuUse::between(&c0, &c1);
    let delivered = rx1.saturating_sub(rx0).min(g.sent) as f64 / g.secs;
    let mut r = Run::new(delivered);
    r.set("offered", g.sent as f64 / g.secs);
    r.set("cpu0", cpu.busy(0));
    r.set("cpu1", cpu.busy(1));
    if bed.pl == Placement::P1 && delivered > 0.0 {
        r.set("ns_flow", cpu.busy(BOX_CPU) * 1e9 / delivered);
    }
    if let Some((cpu_s, wall)) = box_cpu {
        r.set("box", cpu_s / wall);
        if delivered > 0.0 {
            r.set("ns_flow_box", cpu_s * 1e9 / (delivered * g.secs));
        }
    }
    if g.sent > u64::from(SYN_SOURCES) * PORTS_PER_SOURCE {
        r.note = "the SYN generator wrapped around (some flows repeat)".into();
    }
    if let (Some(before), Some(after)) = (s0, bed.stats()) {
        let d = Delta { before, after };
        r.set("new_conns", d.dp("new_conns") as f64 / g.secs);
        r.set("ring_drops", d.dp("ring_drops") as f64);
        r.set("count", d.get(&["connections", "count"]) as f64);
        r.set("full", d.get(&["connections", "full"]) as f64);
        r.set(
            "port_exhausted",
            d.get(&["datapath", "drops", "port_exhausted"]) as f64,
        );
        let drops = d.drops();
        if !drops.is_empty() {
            r.note = if r.note.is_empty() {
                drops
            } else {
                format!("{}; {drops}", r.note)
            };
        }
    }
    if bed.path == Path::NftDnat {
        if let Some(c) = bed.conntrack_count() {
            r.set("count", c as f64);
        }
    }
    Ok(r)
}
