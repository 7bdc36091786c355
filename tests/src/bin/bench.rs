//! `bench`: every benchmark of the lab, one after the other, printed as markdown tables.
//! Run as root through `scripts/bench` (which builds in release first). Benchmarks measure
//! and report; they assert nothing about speed.
//!
//! 1. Packet rate: 64-byte UDP frames from `pktgen` (client namespace, CPU 0) through
//!    - baseline A, the kernel's own forwarding (`ip_forward=1`, no daemon), with the
//!      director's receive processing left where veth puts it (CPU 0) and steered to CPU 1
//!      with RPS;
//!    - baseline B, `bareforward` (the datapath's AF_PACKET I/O, no logic) on CPU 1;
//!    - `directord` NAT, DR, TUN and FULLNAT, one worker, on CPU 1.
//!
//!    The real server drops the frames in nftables (TUN: the IPIP frames, with the lab's
//!    decapsulating stand-in `ipip-decap` stopped, so user-space decapsulation is not
//!    measured); delivered = its interface's receive counter delta.
//! 2. New flows per second: SYNs from unique (address, port) pairs through `directord` in each
//!    mode; TCP handshakes per second with wrk through the director in each mode and straight
//!    at a real server.
//! 3. Memory: bytes per connection entry, and `directord`'s resident memory idle and with
//!    1M entries in its table.
//!
//! `bench [--quick] [--only rate,flows,wrk,memory] [--perf DIR]` (`--perf`: a `perf record -g`
//! of the forwarder during each packet-rate and new-flows run, saved in DIR).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use director_lab::topo::{workspace_bin, Mode, ServiceSpec, Topo, CLIENT, VIP};
use director_lab::{wait_until, Host, Lab, Proc};
use serde_json::Value;

/// Where the generator runs, and where the forwarder under test runs.
const GEN_CPU: &str = "0";
const FWD_CPU: &str = "1";
const UDP_PORT: u16 = 5353;
const FLOWS: usize = 1024;
/// First of the client's extra source addresses for the SYN generator.
const SYN_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 64);
const SYN_SOURCES: u32 = 64;
const PORTS_PER_SOURCE: u64 = 64512;

/// `--perf DIR`: record `perf record -g` of the forwarder during each run into DIR.
static PERF_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Starts `perf record` on `pid` for `secs` when `--perf` was given.
fn perf_start(pid: u32, name: &str, secs: f64) -> Option<std::process::Child> {
    let dir = PERF_DIR.get()?;
    std::process::Command::new("perf")
        .args([
            "record",
            "-q",
            "-F",
            "1999",
            "-g",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(dir.join(format!("{name}.data")))
        .args(["--", "sleep", &format!("{secs}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
}

fn perf_wait(child: Option<std::process::Child>) {
    if let Some(mut c) = child {
        let _ = c.wait();
    }
}

struct Opts {
    quick: bool,
    only: Option<Vec<String>>,
}

impl Opts {
    fn wants(&self, what: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|l| l.iter().any(|x| x == what))
    }
    fn rate_secs(&self) -> f64 {
        if self.quick {
            2.0
        } else {
            5.0
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Machine and CPU accounting

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("nproc {nproc}, CPU \"{cpu}\", kernel {kernel}")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Per-CPU jiffies from /proc/stat: (busy, softirq, total).
fn cpu_times() -> Vec<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, v.get(6).copied().unwrap_or(0), total)
        })
        .collect()
}

/// "cpu0 97% (si 40%), cpu1 ..." between two samples.
fn cpu_use(before: &[(u64, u64, u64)], after: &[(u64, u64, u64)]) -> String {
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(i, (b, a))| {
            let total = (a.2 - b.2).max(1) as f64;
            format!(
                "cpu{i} {:.0}% (softirq {:.0}%)",
                100.0 * (a.0 - b.0) as f64 / total,
                100.0 * (a.1 - b.1) as f64 / total
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

// ---------------------------------------------------------------------------------------------
// Lab helpers

/// `nft` in `host`: a raw-priority prerouting chain that drops what `rule` matches, so the
/// host's stack neither answers nor forwards it (the frames are still counted by the
/// interface).
fn nft_drop(host: &Host, rule: &str) -> Result<()> {
    host.run(["nft", "add", "table", "ip", "bench"])?;
    host.run([
        "nft",
        "add chain ip bench pre { type filter hook prerouting priority raw; policy accept; }",
    ])?;
    let mut argv = vec!["nft", "add", "rule", "ip", "bench", "pre"];
    argv.extend(rule.split_whitespace());
    host.run(argv)?;
    Ok(())
}

fn rx_packets(host: &Host, ifname: &str) -> Result<u64> {
    let out = host.ip(["-s", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&out)?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .with_context(|| format!("no rx counter in {out}"))
}

fn tx_dropped(host: &Host, ifname: &str) -> Result<u64> {
    let out = host.ip(["-s", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0))
}

/// `directord` with one worker pinned to FWD_CPU, for `services`.
fn start_directord(topo: &mut Topo, services: &[ServiceSpec], max_conns: u32) -> Result<()> {
    topo.workers = 1;
    topo.max_connections = Some(max_conns);
    std::fs::write(&topo.config, topo.config_text(services))?;
    let bin = workspace_bin("directord")?;
    let mut cmd = topo.director.command([
        "taskset".to_string(),
        "-c".into(),
        FWD_CPU.into(),
        bin.display().to_string(),
        "--config".into(),
        topo.config.display().to_string(),
    ]);
    cmd.env("DIRECTOR_LOG", "warn");
    topo.daemon = Some(topo.director.spawn_command("directord", cmd)?);
    let ok = wait_until(Duration::from_secs(20), || {
        topo.director_json("stats").is_ok()
    });
    if ok.is_err() {
        let log = topo
            .daemon
            .as_ref()
            .and_then(|p| p.stderr().ok())
            .unwrap_or_default();
        bail!("directord did not start:\n{log}");
    }
    Ok(())
}

fn stats(topo: &Topo) -> Result<Value> {
    topo.director_json("stats")
}

fn counter(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().unwrap_or(0)
}

struct Gen {
    sent: u64,
    secs: f64,
    unique: u64,
}

/// Run pktgen in the client on GEN_CPU; `extra` are mode-specific arguments.
fn pktgen(topo: &Topo, dst_mac: &str, dst: &str, secs: f64, extra: &[&str]) -> Result<Gen> {
    let bin = workspace_bin("pktgen")?;
    let src_mac = topo.client.mac("eth0")?.to_string();
    let mut argv: Vec<String> = vec![
        "taskset".into(),
        "-c".into(),
        GEN_CPU.into(),
        bin.display().to_string(),
        "--ifname".into(),
        "eth0".into(),
        "--src-mac".into(),
        src_mac,
        "--dst-mac".into(),
        dst_mac.into(),
        "--dst".into(),
        dst.into(),
        "--duration".into(),
        format!("{secs}"),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    if !extra.contains(&"--src") {
        argv.push("--src".into());
        argv.push(CLIENT.to_string());
    }
    let out = topo
        .client
        .run_timeout(&argv, Duration::from_secs_f64(secs + 30.0))?;
    let v: Value = serde_json::from_slice(&out.stdout).context("pktgen output")?;
    Ok(Gen {
        sent: v["sent"].as_u64().unwrap_or(0),
        secs: v["secs"].as_f64().unwrap_or(secs),
        unique: v["unique_flows"].as_u64().unwrap_or(0),
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Packet rate

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Kernel,
    Bare,
    Nat,
    Dr,
    Tun,
    FullNat,
}

impl Path {
    /// The forwarding mode of a `directord` path.
    fn mode(self) -> Option<Mode> {
        match self {
            Path::Kernel | Path::Bare => None,
            Path::Nat => Some(Mode::Nat),
            Path::Dr => Some(Mode::Dr),
            Path::Tun => Some(Mode::Tun),
            Path::FullNat => Some(Mode::FullNat),
        }
    }
    fn label(self) -> &'static str {
        match self {
            Path::Kernel => "A: kernel ip_forward",
            Path::Bare => "B: bareforward (AF_PACKET, no logic)",
            Path::Nat => "directord NAT, 1 worker",
            Path::Dr => "directord DR, 1 worker",
            Path::Tun => "directord TUN, 1 worker",
            Path::FullNat => "directord FULLNAT, 1 worker",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Path::Kernel => "b-kern",
            Path::Bare => "b-bare",
            Path::Nat => "b-nat",
            Path::Dr => "b-dr",
            Path::Tun => "b-tun",
            Path::FullNat => "b-fnat",
        }
    }
}

struct Rate {
    path: Path,
    rps: bool,
    /// Lowest–highest delivered Mpps over the repetitions.
    spread: String,
    offered_pps: f64,
    delivered_pps: f64,
    cpu: String,
    notes: String,
}

fn packet_rate(path: Path, rps: bool, secs: f64) -> Result<Rate> {
    let lab = Lab::new(path.tag())?;
    let mut topo = Topo::new(lab, path.mode().unwrap_or(Mode::Nat), 1)?;
    // TUN: the real server drops the IPIP frames itself; the lab's user-space decapsulator
    // would only compete for the two cores.
    topo.helpers.clear();
    let rs = topo.reals[0].clone();
    let rs_addr = topo.real_addrs[0];
    let real_port = topo.real_port(UDP_PORT);
    if path == Path::Tun {
        nft_drop(&rs, "ip protocol 4 counter drop")?;
    } else {
        // Both ports: bareforward leaves the VIP as the destination.
        nft_drop(
            &rs,
            &format!("udp dport {{ {UDP_PORT}, {real_port} }} counter drop"),
        )?;
    }
    if rps {
        // The director's receive processing (softirq: AF_PACKET ring fill, or the kernel's
        // forwarding) runs on the forwarder's CPU instead of the generator's.
        topo.director.run([
            "sh",
            "-c",
            "echo 2 > /sys/class/net/ext/queues/rx-0/rps_cpus",
        ])?;
    }
    let dmac = topo.director.mac("ext")?.to_string();
    let mut dst = format!("{VIP}:{UDP_PORT}");
    let mut bare: Option<Proc> = None;
    let mut fwd_pid = None;
    match path {
        Path::Kernel => {
            topo.director.sysctl("net.ipv4.ip_forward", "1")?;
            dst = format!("{rs_addr}:{real_port}");
            topo.director
                .run(["ping", "-c1", "-W2", &rs_addr.to_string()])?;
        }
        Path::Bare => {
            nft_drop(
                &topo.director,
                &format!("ip daddr {VIP} udp dport {UDP_PORT} counter drop"),
            )?;
            topo.director
                .run(["ping", "-c1", "-W2", &rs_addr.to_string()])?;
            let bin = workspace_bin("bareforward")?;
            let p = topo.director.spawn([
                "taskset".to_string(),
                "-c".into(),
                FWD_CPU.into(),
                bin.display().to_string(),
                "--in".into(),
                "ext".into(),
                "--out".into(),
                "int".into(),
                "--src-mac".into(),
                topo.director.mac("int")?.to_string(),
                "--dst-mac".into(),
                rs.mac("eth0")?.to_string(),
            ])?;
            wait_until(Duration::from_secs(10), || {
                p.stderr().is_ok_and(|s| s.contains("ready"))
            })
            .context("bareforward did not start")?;
            fwd_pid = Some(p.pid());
            bare = Some(p);
        }
        Path::Nat | Path::Dr | Path::Tun | Path::FullNat => {
            start_directord(&mut topo, &[ServiceSpec::udp("rr", &[1])], 1 << 20)?;
            fwd_pid = topo.daemon.as_ref().map(Proc::pid);
        }
    }
    let s0 = if topo.daemon.is_some() {
        Some(stats(&topo)?)
    } else {
        None
    };
    let rx0 = rx_packets(&rs, "eth0")?;
    let perf = fwd_pid
        .and_then(|pid| perf_start(pid, &format!("{}-rps{}", path.tag(), u8::from(rps)), secs));
    let c0 = cpu_times();
    let g = pktgen(&topo, &dmac, &dst, secs, &["--flows", &FLOWS.to_string()])?;
    let c1 = cpu_times();
    perf_wait(perf);
    std::thread::sleep(Duration::from_millis(300));
    let rx1 = rx_packets(&rs, "eth0")?;
    let mut notes = String::new();
    if let Some(s0) = s0 {
        let s1 = stats(&topo)?;
        let d = |p: &[&str]| counter(&s1, p) - counter(&s0, p);
        let _ = write!(
            notes,
            "datapath rx {}, forwarded_in {}, ring_drops {}, tx_errors {}, conns {}",
            d(&["datapath", "rx"]),
            d(&["datapath", "forwarded_in"]),
            d(&["datapath", "ring_drops"]),
            d(&["datapath", "tx_errors"]),
            counter(&s1, &["connections", "count"])
        );
    }
    if let Some(mut p) = bare.take() {
        p.stop(Duration::from_secs(5));
        let _ = write!(notes, "bareforward {}", p.stdout()?.trim());
    }
    let veth_drops = tx_dropped(&topo.client, "eth0")?;
    if veth_drops > 0 {
        let _ = write!(notes, "; client veth tx drops {veth_drops}");
    }
    Ok(Rate {
        path,
        rps,
        spread: String::new(),
        offered_pps: g.sent as f64 / g.secs,
        delivered_pps: (rx1 - rx0) as f64 / g.secs,
        cpu: cpu_use(&c0, &c1),
        notes,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. New flows and handshakes

struct Flows {
    mode: Mode,
    reals: usize,
    secs: f64,
    offered_pps: f64,
    new_conns: u64,
    forwarded: u64,
    ring_drops: u64,
    count: u64,
    full: u64,
    /// FULLNAT: new flows refused for want of a free LIP:lport.
    port_exhausted: u64,
    cpu: String,
}

/// How many real servers the SYN benchmark of `mode` uses: one, except FULLNAT, whose local
/// ports are per (LIP, real server): 2 LIPs × 8 reals × 64 K ports hold about 1 M flows, so
/// the run does not measure port exhaustion instead of the datapath.
fn syn_reals(mode: Mode) -> usize {
    if mode == Mode::FullNat {
        8
    } else {
        1
    }
}

/// A director in `mode` for the web service with the SYN sink on the real servers and the
/// SYN generator's source addresses on the client.
fn syn_topo(tag: &str, mode: Mode, max_conns: u32) -> Result<Topo> {
    let lab = Lab::new(tag)?;
    let mut topo = Topo::new(lab, mode, syn_reals(mode))?;
    // TUN: the real server drops the IPIP frames (the user-space stand-in stays out of it).
    topo.helpers.clear();
    let rule = match mode {
        Mode::Tun => "ip protocol 4 counter drop".to_string(),
        _ => format!("tcp dport {} counter drop", topo.real_port(80)),
    };
    for rs in &topo.reals {
        nft_drop(rs, &rule)?;
    }
    for i in 0..SYN_SOURCES {
        let a = Ipv4Addr::from(u32::from(SYN_BASE) + i);
        topo.client.addr_add("eth0", &format!("{a}/24"))?;
    }
    let weights = vec![1; topo.reals.len()];
    start_directord(&mut topo, &[ServiceSpec::http("rr", &weights)], max_conns)?;
    Ok(topo)
}

fn syn_args(sources: u32) -> Vec<String> {
    vec![
        "--mode".into(),
        "syn".into(),
        "--src".into(),
        SYN_BASE.to_string(),
        "--sources".into(),
        sources.to_string(),
    ]
}

fn new_flows(mode: Mode, secs: f64) -> Result<Flows> {
    let topo = syn_topo(&format!("b-flows-{}", mode.as_str()), mode, 1 << 22)?;
    let dmac = topo.director.mac("ext")?.to_string();
    let s0 = stats(&topo)?;
    let c0 = cpu_times();
    let args = syn_args(SYN_SOURCES);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let perf = topo
        .daemon
        .as_ref()
        .and_then(|p| perf_start(p.pid(), &format!("flows-{}", mode.as_str()), secs));
    let g = pktgen(&topo, &dmac, &format!("{VIP}:80"), secs, &args)?;
    let c1 = cpu_times();
    perf_wait(perf);
    std::thread::sleep(Duration::from_millis(300));
    let s1 = stats(&topo)?;
    let d = |p: &[&str]| counter(&s1, p) - counter(&s0, p);
    if g.sent > g.unique {
        eprintln!(
            "bench: the SYN generator wrapped around ({} sent, {} unique)",
            g.sent, g.unique
        );
    }
    Ok(Flows {
        mode,
        reals: topo.reals.len(),
        secs: g.secs,
        offered_pps: g.sent as f64 / g.secs,
        new_conns: d(&["datapath", "new_conns"]),
        forwarded: d(&["datapath", "forwarded_in"]),
        ring_drops: d(&["datapath", "ring_drops"]),
        count: counter(&s1, &["connections", "count"]),
        full: counter(&s1, &["connections", "full"]),
        port_exhausted: d(&["datapath", "drops", "port_exhausted"]),
        cpu: cpu_use(&c0, &c1),
    })
}

struct Wrk {
    rps: f64,
    errors: String,
}

fn wrk(host: &Host, url: &str, secs: u32) -> Result<Wrk> {
    let out = host.run_timeout(
        [
            "taskset",
            "-c",
            GEN_CPU,
            "wrk",
            "-t1",
            "-c32",
            &format!("-d{secs}s"),
            "-H",
            "Connection: close",
            url,
        ],
        Duration::from_secs(u64::from(secs) + 60),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let errors = text
        .lines()
        .filter(|l| l.contains("errors") || l.contains("Non-2xx"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    Ok(Wrk { rps, errors })
}

const MODES: [Mode; 4] = [Mode::Nat, Mode::Dr, Mode::Tun, Mode::FullNat];

struct Handshakes {
    direct: Wrk,
    /// wrk through the director, per mode.
    modes: Vec<(Mode, Result<Wrk>)>,
}

/// wrk against a director in `mode` with 3 real servers (TUN: with the lab's user-space
/// decapsulating stand-in on each, unpinned).
fn handshakes_through(mode: Mode, secs: u32) -> Result<Wrk> {
    let lab = Lab::new(&format!("b-wrk-{}", mode.as_str()))?;
    let mut topo = Topo::new(lab, mode, 3)?;
    let svc = [ServiceSpec::http("rr", &[1, 1, 1])];
    topo.start_servers(&svc)?;
    start_directord(&mut topo, &svc, 1 << 20)?;
    wrk(&topo.client, &format!("http://{VIP}/"), secs)
}

fn handshakes(secs: u32) -> Result<Handshakes> {
    let lab = Lab::new("b-wrk")?;
    let mut topo = Topo::nat(lab, 1)?;
    let svc = [ServiceSpec::http("rr", &[1])];
    topo.start_servers(&svc)?;
    // The baseline client sits on its own veth straight to rs1: no director on the path.
    let direct = topo.lab.host("direct")?;
    topo.lab.link(
        &direct,
        "eth0",
        "198.18.3.2/24",
        &topo.reals[0],
        "eth1",
        "198.18.3.1/24",
    )?;
    let port = topo.real_port(80);
    let direct = wrk(&direct, &format!("http://198.18.3.1:{port}/"), secs)?;
    drop(topo);
    let modes = MODES
        .iter()
        .map(|&m| {
            eprintln!("bench: TCP handshakes with wrk, {}", m.as_str());
            (m, handshakes_through(m, secs))
        })
        .collect();
    Ok(Handshakes { direct, modes })
}

// ---------------------------------------------------------------------------------------------
// 3. Memory

struct Memory {
    bytes_per_entry: usize,
    entry_size: usize,
    capacity: u64,
    rss_idle_kib: u64,
    rss_full_kib: u64,
    count: u64,
    fill_secs: f64,
    passes: u32,
}

fn table_sizes() -> (usize, usize) {
    use forwarder::conntrack::{ConnEntry, ConnTable};
    use forwarder::model::Timeouts;
    use forwarder::stats::RealRegistry;
    let t = ConnTable::new(
        1 << 20,
        256,
        Timeouts::default(),
        Arc::new(RealRegistry::new(4096)),
    );
    (t.bytes_per_entry(), std::mem::size_of::<ConnEntry>())
}

fn memory(quick: bool) -> Result<Memory> {
    let (bytes_per_entry, entry_size) = table_sizes();
    // 17 source addresses × 64512 ports = 1,096,704 unique flows; capacity with headroom so
    // that no shard fills before the table holds a million.
    let sources = 17;
    let unique = u64::from(sources) * PORTS_PER_SOURCE;
    let capacity: u32 = 1_310_720;
    let topo = syn_topo("b-mem", Mode::Nat, capacity)?;
    let pid = topo.daemon.as_ref().map(Proc::pid).context("no daemon")?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle_kib = vm_rss_kib(pid)?;
    let dmac = topo.director.mac("ext")?.to_string();
    let mut args = syn_args(sources);
    args.push("--count".into());
    args.push(unique.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = Instant::now();
    let mut passes = 0;
    let mut count = 0;
    // SYN_RECV entries live 60 s: fill well within that.
    let budget = if quick { 30 } else { 40 };
    while start.elapsed() < Duration::from_secs(budget) {
        pktgen(&topo, &dmac, &format!("{VIP}:80"), 20.0, &args)?;
        passes += 1;
        std::thread::sleep(Duration::from_millis(200));
        count = counter(&stats(&topo)?, &["connections", "count"]);
        if count >= 1_000_000 {
            break;
        }
    }
    let fill_secs = start.elapsed().as_secs_f64();
    let rss_full_kib = vm_rss_kib(pid)?;
    let s = stats(&topo)?;
    Ok(Memory {
        bytes_per_entry,
        entry_size,
        capacity: counter(&s, &["connections", "capacity"]),
        rss_idle_kib,
        rss_full_kib,
        count,
        fill_secs,
        passes,
    })
}

// ---------------------------------------------------------------------------------------------

fn mpps(pps: f64) -> String {
    format!("{:.3}", pps / 1e6)
}

fn main() -> Result<()> {
    let mut opts = Opts {
        quick: false,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--only" => {
                let v = args.next().context("--only needs a list")?;
                opts.only = Some(v.split(',').map(str::to_string).collect());
            }
            "--perf" => {
                let dir = std::path::PathBuf::from(args.next().context("--perf needs a dir")?);
                std::fs::create_dir_all(&dir)?;
                let _ = PERF_DIR.set(dir);
            }
            _ => bail!("usage: bench [--quick] [--only rate,flows,wrk,memory] [--perf DIR]"),
        }
    }
    director_lab::preflight()
        .map_err(|e| anyhow::anyhow!("the benchmarks need root and network namespaces: {e}"))?;
    let started = Instant::now();
    let load_before = loadavg();
    let mut out = String::new();
    let _ = writeln!(out, "## Director benchmarks\n");
    let _ = writeln!(out, "- machine: {}", machine());
    let _ = writeln!(
        out,
        "- pinning: generator (pktgen, wrk) on CPU {GEN_CPU}; forwarder under test \
         (directord, bareforward) on CPU {FWD_CPU}; real servers and the lab bridges unpinned"
    );
    let _ = writeln!(
        out,
        "- mode: {}",
        if opts.quick { "--quick" } else { "full" }
    );

    if opts.wants("rate") {
        let secs = opts.rate_secs();
        let mut rates = Vec::new();
        // Other work on a shared machine only ever lowers a figure: each path runs `reps`
        // times (in turns, so a burst of load hits different paths) and the median is shown.
        let reps = if opts.quick { 1 } else { 5 };
        let mut runs: Vec<((Path, bool), Vec<Rate>)> = Vec::new();
        for rps in [true, false] {
            for path in [
                Path::Kernel,
                Path::Bare,
                Path::Nat,
                Path::Dr,
                Path::Tun,
                Path::FullNat,
            ] {
                runs.push(((path, rps), Vec::new()));
            }
        }
        for rep in 0..reps {
            for ((path, rps), results) in runs.iter_mut() {
                eprintln!(
                    "bench: packet rate, {} (RPS {rps}), run {}/{reps}",
                    path.label(),
                    rep + 1
                );
                match packet_rate(*path, *rps, secs) {
                    Ok(r) => results.push(r),
                    Err(e) => eprintln!("bench: {path:?} failed: {e:#}"),
                }
            }
        }
        for (_, mut results) in runs {
            results.sort_by(|a, b| a.delivered_pps.total_cmp(&b.delivered_pps));
            let spread = match (results.first(), results.last()) {
                (Some(lo), Some(hi)) if results.len() > 1 => {
                    format!("{}–{}", mpps(lo.delivered_pps), mpps(hi.delivered_pps))
                }
                _ => "-".into(),
            };
            let mid = results.len() / 2;
            if let Some(mut r) = results.into_iter().nth(mid) {
                r.spread = spread;
                rates.push(r);
            }
        }
        let _ = writeln!(
            out,
            "\n### Packet rate: 64-byte UDP frames, {FLOWS} flows, {secs} s per run, median of {reps}\n"
        );
        let _ = writeln!(
            out,
            "| path | director RX softirq on | offered Mpps | delivered Mpps | range | vs bareforward | CPU use during the run | counters |"
        );
        let _ = writeln!(out, "| --- | --- | ---: | ---: | --- | ---: | --- | --- |");
        for r in &rates {
            let bare = rates
                .iter()
                .find(|b| b.path == Path::Bare && b.rps == r.rps)
                .map(|b| b.delivered_pps);
            let ratio = bare
                .filter(|b| *b > 0.0)
                .map(|b| format!("{:.0} %", 100.0 * r.delivered_pps / b))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.path.label(),
                if r.rps {
                    "CPU 1 (RPS)"
                } else {
                    "CPU 0 (veth default)"
                },
                mpps(r.offered_pps),
                mpps(r.delivered_pps),
                r.spread,
                ratio,
                r.cpu,
                r.notes
            );
        }
    }

    if opts.wants("flows") {
        let secs = if opts.quick { 2.0 } else { 3.0 };
        let _ = writeln!(
            out,
            "\n### New flows: SYNs from unique (address, port), 1 worker, {secs} s per mode\n"
        );
        let _ = writeln!(
            out,
            "| mode | reals | new flows/s (per core) | offered SYN/s | new_conns | forwarded_in | ring_drops | table count | table full | port_exhausted | CPU use |"
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        for mode in MODES {
            eprintln!("bench: new flows per second, {}", mode.as_str());
            match new_flows(mode, secs) {
                Ok(f) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                        f.mode.as_str(),
                        f.reals,
                        f.new_conns as f64 / f.secs,
                        f.offered_pps,
                        f.new_conns,
                        f.forwarded,
                        f.ring_drops,
                        f.count,
                        f.full,
                        f.port_exhausted,
                        f.cpu
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "| {} | failed: {e:#} |", mode.as_str());
                }
            }
        }
    }

    if opts.wants("wrk") {
        let secs = if opts.quick { 3 } else { 10 };
        eprintln!("bench: TCP handshakes with wrk");
        let _ = writeln!(
            out,
            "\n### TCP handshakes: wrk -t1 -c32 -d{secs}s, Connection: close, labsrv\n"
        );
        match handshakes(secs) {
            Ok(h) => {
                let _ = writeln!(out, "| path | requests (= handshakes)/s | errors |");
                let _ = writeln!(out, "| --- | ---: | --- |");
                let _ = writeln!(
                    out,
                    "| baseline: straight at rs1 (veth, no director) | {:.0} | {} |",
                    h.direct.rps, h.direct.errors
                );
                for (mode, r) in &h.modes {
                    let path = format!(
                        "through directord {} (1 worker, CPU {FWD_CPU}), 3 reals",
                        mode.as_str().to_uppercase()
                    );
                    match r {
                        Ok(w) => {
                            let _ = writeln!(out, "| {path} | {:.0} | {} |", w.rps, w.errors);
                        }
                        Err(e) => {
                            let _ = writeln!(out, "| {path} | failed | {e:#} |");
                        }
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(out, "failed: {e:#}");
            }
        }
    }

    if opts.wants("memory") {
        eprintln!("bench: memory (filling 1M connections)");
        let _ = writeln!(out, "\n### Memory\n");
        match memory(opts.quick) {
            Ok(m) => {
                let _ = writeln!(out, "| measure | value |");
                let _ = writeln!(out, "| --- | ---: |");
                let _ = writeln!(
                    out,
                    "| ConnTable::bytes_per_entry() (2^20 entries, 256 shards) | {} B |",
                    m.bytes_per_entry
                );
                let _ = writeln!(out, "| size_of::<ConnEntry>() | {} B |", m.entry_size);
                let _ = writeln!(
                    out,
                    "| directord VmRSS idle (table capacity {}) | {:.1} MiB |",
                    m.capacity,
                    m.rss_idle_kib as f64 / 1024.0
                );
                let _ = writeln!(
                    out,
                    "| directord VmRSS with {} entries (filled in {:.1} s, {} SYN passes) | {:.1} MiB |",
                    m.count,
                    m.fill_secs,
                    m.passes,
                    m.rss_full_kib as f64 / 1024.0
                );
                let _ = writeln!(
                    out,
                    "| RSS growth per entry while filling | {:.1} B |",
                    (m.rss_full_kib.saturating_sub(m.rss_idle_kib) * 1024) as f64
                        / m.count.max(1) as f64
                );
            }
            Err(e) => {
                let _ = writeln!(out, "failed: {e:#}");
            }
        }
    }

    let _ = writeln!(
        out,
        "\nLoad average before: {load_before}; after: {}. Total time {:.0} s.",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    println!("{out}");
    Ok(())
}
