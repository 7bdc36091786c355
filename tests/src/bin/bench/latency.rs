//! Measure 5, round trips at low load: `rttping` (UDP, and TCP over one connection) from the client
//! through the path to `rttping --serve` on the real servers, at 1, 100, 1000 and 10000
//! probes per second.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use director_lab::topo::workspace_bin;
use director_lab::Proc;
use serde_json::Value;

use crate::bed::{Bed, RTT_PORT};
use crate::plan::{Opts, HOST_CPU};
use crate::report::Run;

/// Probes not counted at the start of a level (at 1/s: 1, or the level would take 10 s
/// longer).
fn warmup(rate: u32) -> u32 {
    if rate <= 1 {
        1
    } else {
        10
    }
}

fn spawn(bed: &Bed, proto: &str, rate: u32, count: u32) -> Result<Proc> {
    let bin = workspace_bin("rttping")?;
    let argv: Vec<String> = vec![
        "taskset".into(),
        "-c".into(),
        HOST_CPU.to_string(),
        bin.display().to_string(),
        format!("--{proto}"),
        bed.target(RTT_PORT).to_string(),
        "--rate".into(),
        rate.to_string(),
        "--count".into(),
        count.to_string(),
        "--warmup".into(),
        warmup(rate).to_string(),
    ];
    bed.client().spawn(&argv)
}

fn finish(mut p: Proc, rate: u32, count: u32) -> Result<Run> {
    let secs = f64::from(count + warmup(rate)) / f64::from(rate) + 30.0;
    let Some(status) = p.wait_timeout(Duration::from_secs_f64(secs))? else {
        p.stop(Duration::from_secs(1));
        bail!("rttping did not finish in {secs:.0} s");
    };
    let out = p.stdout()?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| {
            format!(
                "rttping ({status}) printed no result: {}{}",
                out.trim(),
                p.stderr().unwrap_or_default().trim()
            )
        })?;
    let v: Value = serde_json::from_str(line)?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let mut r = Run::new(f("p50_us"));
    for (k, name) in [
        ("p50", "p50_us"),
        ("p90", "p90_us"),
        ("p99", "p99_us"),
        ("p999", "p999_us"),
        ("max", "max_us"),
        ("lost", "lost"),
        ("sent", "sent"),
    ] {
        r.set(k, f(name));
    }
    Ok(r)
}

/// Every level, each as ("udp 100/s", run). At 1/s the UDP and TCP probes run at once,
/// half a second apart (they never overlap); above, one after the other.
pub fn latency(bed: &Bed, opts: &Opts) -> Result<Vec<(String, Run)>> {
    bed.pin_napi()?;
    let mut out = Vec::new();
    let protos: Vec<&str> = if bed.path.udp() {
        vec!["udp", "tcp"]
    } else {
        vec!["tcp"]
    };
    for (rate, count) in opts.latency_levels() {
        if rate <= 1 {
            let mut running = Vec::new();
            for (i, proto) in protos.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(500));
                }
                running.push((*proto, spawn(bed, proto, rate, count)?));
            }
            for (proto, p) in running {
                out.push((format!("{proto} {rate}/s"), finish(p, rate, count)?));
            }
        } else {
            for proto in &protos {
                let p = spawn(bed, proto, rate, count)?;
                out.push((format!("{proto} {rate}/s"), finish(p, rate, count)?));
            }
        }
    }
    Ok(out)
}
