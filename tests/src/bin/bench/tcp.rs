//! Measures 3, HTTP requests per second (wrk against nginx on the real servers), and 4, bulk TCP
//! (iperf3).

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bed::{Bed, Delta, BULK_PORT, HTTP_PORT};
use crate::plan::{Placement, BOX_CPU, HOST_CPU};
use crate::report::Run;
use crate::sys::{CpuTimes, CpuUse};

fn argv(v: &[String]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// The first number after `key` in `text`'s line that holds it.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let l = text.lines().find(|l| l.contains(key))?;
    let rest = &l[l.find(key)? + key.len()..];
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

/// `wrk -t1 -c32 -dSECS` from the client (pinned with the hosts), keep-alive or
/// `Connection: close`.
pub fn wrk(bed: &Bed, secs: u32, close: bool) -> Result<Run> {
    bed.pin_napi()?;
    let t = bed.target(HTTP_PORT);
    let mut v: Vec<String> = [
        "taskset",
        "-c",
        &HOST_CPU.to_string(),
        "wrk",
        "-t1",
        "-c32",
        &format!("-d{secs}s"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if close {
        v.push("-H".into());
        v.push("Connection: close".into());
    }
    v.push(format!("http://{t}/"));
    let c0 = CpuTimes::now();
    let b0 = bed.box_clock();
    let out = bed
        .client()
        .output(&argv(&v), Duration::from_secs(u64::from(secs) + 60))?;
    let c1 = CpuTimes::now();
    let box_cpu = b0.since(bed);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(rps) = number_after(&text, "Requests/sec:") else {
        bail!(
            "no Requests/sec in wrk's output:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let cpu = CpuUse::between(&c0, &c1);
    let mut r = Run::new(rps);
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let errors: f64 = ["connect", "read", "write", "timeout"]
        .iter()
        .filter_map(|k| {
            text.lines()
                .find(|l| l.contains("Socket errors"))
                .and_then(|l| number_after(l, k))
        })
        .sum();
    r.set("errors", errors);
    r.set(
        "non2xx",
        number_after(&text, "Non-2xx or 3xx responses:").unwrap_or(0.0),
    );
    r.set("cpu0", cpu.busy(0));
    r.set("cpu1", cpu.busy(1));
    if bed.pl == Placement::P1 && rps > 0.0 {
        r.set("us_req", cpu.busy(BOX_CPU) * 1e6 / rps);
    }
    if let Some((cpu_s, wall)) = box_cpu {
        r.set("box", cpu_s / wall);
        if rps > 0.0 {
            r.set("us_req_box", cpu_s * 1e6 / (rps * f64::from(secs)));
        }
    }
    if let Some(l) = text.lines().find(|l| l.trim_start().starts_with("Latency")) {
        r.note = format!(
            "wrk latency avg {}",
            l.split_whitespace().nth(1).unwrap_or("?")
        );
    }
    Ok(r)
}

/// `iperf3 -c TARGET -t SECS -J [-P streams]` from the client to rs1's `iperf3 -s`.
pub fn iperf(bed: &Bed, secs: u32, streams: u32) -> Result<Run> {
    bed.pin_napi()?;
    let t = bed.target(BULK_PORT);
    let v: Vec<String> = vec![
        "taskset".into(),
        "-c".into(),
        HOST_CPU.to_string(),
        "iperf3".into(),
        "-c".into(),
        t.ip().to_string(),
        "-p".into(),
        t.port().to_string(),
        "-t".into(),
        secs.to_string(),
        "-P".into(),
        streams.to_string(),
        "-J".into(),
    ];
    let s0 = bed.stats();
    bed.debug_counters("before iperf3");
    let c0 = CpuTimes::now();
    let b0 = bed.box_clock();
    let w0 = std::time::Instant::now();
    let out = bed
        .client()
        .output(&argv(&v), Duration::from_secs(u64::from(secs) + 60))?;
    let c1 = CpuTimes::now();
    let box_cpu = b0.since(bed);
    let window = w0.elapsed().as_secs_f64();
    bed.debug_counters("after iperf3");
    let j: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = j["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let end = &j["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received in iperf3's JSON")?;
    let bytes = end["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    let cpu = CpuUse::between(&c0, &c1);
    let mut r = Run::new(bps / 1e9);
    r.set(
        "retransmits",
        end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
    );
    r.set("cpu0", cpu.busy(0));
    r.set("cpu1", cpu.busy(1));
    // The client's own sender side, as iperf3 measures it (CPU of the iperf3 process).
    if let Some(c) = end["cpu_utilization_percent"]["host_total"].as_f64() {
        r.set("client_cpu", c / 100.0);
    }
    if bed.pl == Placement::P1 && bytes > 0.0 {
        // CPU-seconds of the box's core over the whole iperf3 run, per GB received.
        r.set("cpu_s_gb", cpu.busy(BOX_CPU) * window / (bytes / 1e9));
    }
    if let Some((cpu_s, wall)) = box_cpu {
        r.set("box", cpu_s / wall);
        if bytes > 0.0 {
            r.set("cpu_s_gb_box", cpu_s / (bytes / 1e9));
        }
    }
    if let (Some(before), Some(after)) = (s0, bed.stats()) {
        let d = Delta { before, after };
        r.set("tx_errors", d.dp("tx_errors") as f64);
        r.set("tx_waits", d.dp("tx_waits") as f64);
        r.set("ring_drops", d.dp("ring_drops") as f64);
        r.note = d.drops();
    }
    Ok(r)
}
