//! `vrrpbench`: VRRP takeover time and spurious transitions under CPU oversubscription, for
//! keepalived and `directord`, in one lab. Run as root (through `scripts/bench-vrrp`, which
//! builds in release first). It measures and reports; it asserts nothing about speed.
//!
//! Topology: one bridge, three namespaces: node A 198.18.1.2 (priority 200), node B 198.18.1.3
//! (priority 100), both on `eth0` with VIP 198.18.1.100/24, VRID 51, multicast; and an
//! observer 198.18.1.10 running `vrrpwatch eth0`, whose kernel receive timestamps are the only
//! clock of the results (daemon logs are used for nothing but a cross-check column).
//!
//! Takeover, per (implementation, version, interval), `--runs` times: with A master and B
//! backup steady, SIGKILL A (parent and children at once: no goodbye advert); takeover = first
//! gratuitous ARP for the VIP from B's MAC − last advert from A before it. Then A is started
//! again (B stays up) and preempts; the next run starts once the pair is steady again: A's
//! adverts flowing, none from B for 5 intervals (at least 0.5 s), and at least 5.5 s since B's
//! takeover, because keepalived repeats its gratuitous ARPs 5 s after becoming master
//! (`vrrp_garp_master_delay`) and a late burst from B must not be taken for the next
//! takeover. The RFC figure is Master_Down_Interval for B: 3 × I + (256 − 100) × I / 256.
//!
//! Spurious transitions: with A master and B backup steady, `nproc` × 4 busy loops run in the
//! root namespace (`--spurious-secs`, default 60). Any advert from B is B acting as master;
//! B-master episodes are runs of B adverts split by gaps of at least B's Master_Down_Interval
//! (the shortest time in which B can step down on A's advert and come back). The busy loops
//! are killed by a guard on every exit path, and by the kernel if this process dies
//! (`PR_SET_PDEATHSIG`).
//!
//! `vrrpbench [--impl keepalived,directord] [--intervals 1s,100ms,30ms,10ms] [--runs N]
//! [--spurious-secs N] [--v2] [--quick]` (`--quick`: 5 runs, 10 s; `--v2`: also VRRPv2 at 1 s).
//! `directord` is skipped, with the reason, when `director check-config` refuses its config.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use director_lab::keepalived::{master_down_interval, Keepalived, KeepalivedSpec, VrrpState};
use director_lab::topo::workspace_bin;
use director_lab::{preflight, wait_until, Host, Lab, Mac, Proc, Signal};
use serde_json::Value;

const VRID: u8 = 51;
const PRIO_A: u8 = 200;
const PRIO_B: u8 = 100;
const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const ADDR_OBS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
const IFACE: &str = "eth0";
/// keepalived's `vrrp_garp_master_delay` default plus a margin (see the module docs).
const GARP_QUIET: Duration = Duration::from_millis(5500);

fn main() {
    if let Err(e) = run() {
        eprintln!("vrrpbench: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Keepalived,
    Directord,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Keepalived => "keepalived",
            Impl::Directord => "directord",
        }
    }
}

struct Opts {
    impls: Vec<Impl>,
    /// (VRRP version, advert interval), in order.
    cases: Vec<(u8, Duration)>,
    runs: usize,
    spurious: Duration,
}

fn parse_interval(s: &str) -> Result<Duration> {
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        bail!("interval {s:?} needs a unit: 10ms, 1s");
    };
    let n: u64 = num.parse().with_context(|| format!("bad interval {s:?}"))?;
    ensure!(n > 0, "interval {s:?} is zero");
    Ok(Duration::from_millis(n * mul))
}

fn parse_opts() -> Result<Opts> {
    let mut impls = vec![Impl::Keepalived, Impl::Directord];
    let mut intervals: Vec<Duration> = ["1s", "100ms", "30ms", "10ms"]
        .iter()
        .map(|s| parse_interval(s))
        .collect::<Result<_>>()?;
    let mut runs = None;
    let mut spurious = None;
    let mut quick = false;
    let mut v2 = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--impl" => {
                impls = value()?
                    .split(',')
                    .map(|s| match s {
                        "keepalived" => Ok(Impl::Keepalived),
                        "directord" => Ok(Impl::Directord),
                        _ => bail!("unknown implementation {s:?} (keepalived, directord)"),
                    })
                    .collect::<Result<_>>()?
            }
            "--intervals" => {
                intervals = value()?
                    .split(',')
                    .map(parse_interval)
                    .collect::<Result<_>>()?
            }
            "--runs" => runs = Some(value()?.parse().context("--runs")?),
            "--spurious-secs" => {
                spurious = Some(Duration::from_secs(
                    value()?.parse().context("--spurious-secs")?,
                ))
            }
            "--quick" => quick = true,
            "--v2" => v2 = true,
            "-h" | "--help" => {
                println!(
                    "usage: vrrpbench [--impl keepalived,directord] [--intervals 1s,100ms,30ms,10ms] \
                     [--runs N] [--spurious-secs N] [--v2] [--quick]"
                );
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a:?} (try --help)"),
        }
    }
    let runs: usize = runs.unwrap_or(if quick { 5 } else { 20 });
    ensure!(runs >= 1, "--runs must be at least 1");
    let mut cases: Vec<(u8, Duration)> = intervals.iter().map(|i| (3, *i)).collect();
    if v2 {
        cases.push((2, Duration::from_secs(1)));
    }
    Ok(Opts {
        impls,
        cases,
        runs,
        spurious: spurious.unwrap_or(Duration::from_secs(if quick { 10 } else { 60 })),
    })
}

// ---------------------------------------------------------------------------------------------
// The observer's view: vrrpwatch's JSON lines, read as they are written

#[derive(Clone, Debug)]
enum Ev {
    Advert {
        t: u128,
        src: Ipv4Addr,
        vrid: u8,
    },
    /// A gratuitous ARP (sender IP = target IP).
    Garp {
        t: u128,
        ip: Ipv4Addr,
        mac: String,
    },
}

/// A running `vrrpwatch` and the events it has printed so far.
struct Watch {
    proc: Proc,
    path: PathBuf,
    offset: u64,
    partial: String,
    events: Vec<Ev>,
}

impl Watch {
    fn start(obs: &Host) -> Result<Watch> {
        let bin = workspace_bin("vrrpwatch")?;
        let mut proc = obs.spawn([bin.as_os_str(), IFACE.as_ref()])?;
        proc.wait_stdout("\"kind\":\"ready\"", Duration::from_secs(10))?;
        let path = proc.stdout_path().to_path_buf();
        let mut w = Watch {
            proc,
            path,
            offset: 0,
            partial: String::new(),
            events: Vec::new(),
        };
        w.poll()?;
        Ok(w)
    }

    /// Reads what vrrpwatch printed since the last call.
    fn poll(&mut self) -> Result<()> {
        let mut f = fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = String::new();
        let n = f.read_to_string(&mut buf)?;
        self.offset += n as u64;
        self.partial.push_str(&buf);
        let Some(end) = self.partial.rfind('\n') else {
            return Ok(());
        };
        let rest = self.partial.split_off(end + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        for line in complete.lines() {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("vrrpwatch printed {line:?}"))?;
            let t = v["t_ns"].as_u64().map(u128::from).unwrap_or(0);
            let ip = |k: &str| v[k].as_str().and_then(|s| s.parse::<Ipv4Addr>().ok());
            match v["kind"].as_str() {
                Some("vrrp") => {
                    if let Some(src) = ip("src") {
                        let vrid = v["vrid"].as_u64().unwrap_or(0) as u8;
                        self.events.push(Ev::Advert { t, src, vrid });
                    }
                }
                Some("arp") if v["gratuitous"] == true => {
                    if let Some(ip) = ip("sender_ip") {
                        let mac = v["sender_mac"].as_str().unwrap_or("").to_string();
                        self.events.push(Ev::Garp { t, ip, mac });
                    }
                }
                _ => {}
            }
        }
        ensure!(
            self.proc.is_running(),
            "vrrpwatch exited: {}",
            self.proc.stderr().unwrap_or_default().trim()
        );
        Ok(())
    }

    fn adverts_from(&self, src: Ipv4Addr, since: u128) -> impl Iterator<Item = u128> + '_ {
        self.events.iter().filter_map(move |e| match e {
            Ev::Advert { t, src: s, vrid } if *s == src && *vrid == VRID && *t >= since => Some(*t),
            _ => None,
        })
    }

    fn last_advert_from(&self, src: Ipv4Addr) -> Option<u128> {
        self.adverts_from(src, 0).last()
    }

    /// Gratuitous ARPs for the VIP from `mac` at or after `since`.
    fn vip_garps_from<'a>(&'a self, mac: &'a str, since: u128) -> impl Iterator<Item = u128> + 'a {
        self.events.iter().filter_map(move |e| match e {
            Ev::Garp { t, ip, mac: m } if *ip == VIP && m == mac && *t >= since => Some(*t),
            _ => None,
        })
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn ns(d: Duration) -> u128 {
    d.as_nanos()
}

// ---------------------------------------------------------------------------------------------
// The nodes under test

/// One VRRP node of the implementation under test.
trait Node {
    /// SIGKILL, no goodbye; returns once the process is gone.
    fn kill(&mut self) -> Result<()>;
    /// How many times the daemon says it entered MASTER, when it says (a cross-check of the
    /// wire count; `None` when the implementation has no such record).
    fn master_entries(&self) -> Option<usize>;
    /// A line for error messages.
    fn describe(&self) -> String;
}

struct KeepalivedNode(Keepalived);

impl Node for KeepalivedNode {
    fn kill(&mut self) -> Result<()> {
        self.0.kill()
    }
    fn master_entries(&self) -> Option<usize> {
        Some(
            self.0
                .transitions()
                .iter()
                .filter(|s| **s == VrrpState::Master)
                .count(),
        )
    }
    fn describe(&self) -> String {
        let log = self.0.log();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        format!(
            "keepalived {} state {:?}; log tail:\n{}",
            self.0.spec().name,
            self.0.state(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

/// `directord --config FILE` with one VRRP instance and a placeholder DR service.
struct DirectordNode {
    proc: Proc,
    socket: PathBuf,
    name: String,
}

impl DirectordNode {
    fn config(name: &str, version: u8, interval: Duration, prio: u8, socket: &Path) -> String {
        format!(
            r#"[node]
name = "{name}"

[vrrp]
version = {version}
advert_interval = "{ms}ms"
realtime_priority = 20

[[vrrp.instance]]
name = "ext"
interface = "{IFACE}"
vrid = {VRID}
priority = {prio}
vips = ["{VIP}/24"]

# directord needs a service; VRRP does not need its real server to exist.
[[service]]
name = "web"
vip = "{VIP}:80"
protocol = "tcp"
mode = "dr"
scheduler = "rr"

[[service.real]]
address = "198.18.1.11:80"

[control]
socket = "{socket}"

[datapath]
workers = 1
"#,
            ms = interval.as_millis(),
            socket = socket.display(),
        )
    }

    fn config_path(lab: &Lab, name: &str) -> PathBuf {
        lab.dir().join(format!("{name}.directord.toml"))
    }

    /// Writes the config; an error with directord's words when `director check-config`
    /// refuses it.
    fn write_and_check(
        lab: &Lab,
        name: &str,
        version: u8,
        interval: Duration,
        prio: u8,
    ) -> Result<(PathBuf, PathBuf)> {
        let socket = lab.dir().join(format!("{name}.sock"));
        let path = Self::config_path(lab, name);
        fs::write(&path, Self::config(name, version, interval, prio, &socket))?;
        let out = Command::new(workspace_bin("director")?)
            .arg("check-config")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .context("running director check-config")?;
        ensure!(
            out.status.success(),
            "director check-config refuses the VRRP config: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok((path, socket))
    }

    fn start(host: &Host, config: &Path, socket: PathBuf, name: &str) -> Result<DirectordNode> {
        let _ = fs::remove_file(&socket);
        let bin = workspace_bin("directord")?;
        let proc = host.spawn([bin.as_os_str(), "--config".as_ref(), config.as_os_str()])?;
        let mut node = DirectordNode {
            proc,
            socket,
            name: name.into(),
        };
        // The daemon binds its control socket first and answers once everything runs.
        let up = wait_until(Duration::from_secs(10), || {
            node.vrrp_state().is_ok() || !node.proc.is_running()
        });
        ensure!(
            up.is_ok() && node.proc.is_running(),
            "directord {name} did not start: {}",
            node.proc.stderr().unwrap_or_default().trim()
        );
        Ok(node)
    }

    fn vrrp_state(&self) -> Result<String> {
        let out = Command::new(workspace_bin("director")?)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--json", "vrrp"])
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "director vrrp failed ({})",
            out.status
        );
        let v: Value = serde_json::from_slice(&out.stdout)?;
        let states: Vec<String> = v["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| format!("{}={}", i["name"], i["state"]))
                    .collect()
            })
            .unwrap_or_default();
        Ok(states.join(" "))
    }
}

impl Node for DirectordNode {
    fn kill(&mut self) -> Result<()> {
        if self.proc.is_running() {
            self.proc.kill(Signal::Kill)?;
        }
        ensure!(
            self.proc.wait_timeout(Duration::from_secs(5))?.is_some(),
            "directord {} did not die on SIGKILL",
            self.name
        );
        Ok(())
    }
    fn master_entries(&self) -> Option<usize> {
        None
    }
    fn describe(&self) -> String {
        let state = self
            .vrrp_state()
            .unwrap_or_else(|e| format!("(director vrrp: {e:#})"));
        let err = self.proc.stderr().unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        format!(
            "directord {} {state}; stderr tail:\n{}",
            self.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

/// Starts nodes A and B of one implementation for one (version, interval).
struct Pair<'a> {
    lab: &'a Lab,
    a: &'a Host,
    b: &'a Host,
    which: Impl,
    version: u8,
    interval: Duration,
    /// directord's config paths and sockets, once checked.
    directord: Option<[(PathBuf, PathBuf); 2]>,
}

impl<'a> Pair<'a> {
    fn new(
        lab: &'a Lab,
        a: &'a Host,
        b: &'a Host,
        which: Impl,
        version: u8,
        interval: Duration,
    ) -> Result<Pair<'a>> {
        let directord = match which {
            Impl::Keepalived => None,
            Impl::Directord => Some([
                DirectordNode::write_and_check(lab, "a", version, interval, PRIO_A)?,
                DirectordNode::write_and_check(lab, "b", version, interval, PRIO_B)?,
            ]),
        };
        Ok(Pair {
            lab,
            a,
            b,
            which,
            version,
            interval,
            directord,
        })
    }

    fn start(&self, node: usize) -> Result<Box<dyn Node>> {
        let (host, name, prio) = match node {
            0 => (self.a, "a", PRIO_A),
            _ => (self.b, "b", PRIO_B),
        };
        Ok(match (self.which, &self.directord) {
            (Impl::Directord, Some(cfgs)) => {
                let (config, socket) = &cfgs[node];
                Box::new(DirectordNode::start(host, config, socket.clone(), name)?)
            }
            _ => {
                let mut spec = KeepalivedSpec::new(name, IFACE, prio, self.interval);
                spec.version = self.version;
                spec.vrid = VRID;
                spec.vips.push(format!("{VIP}/24"));
                Box::new(KeepalivedNode(Keepalived::start(self.lab, host, spec)?))
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Busy loops

/// `nproc × 4` busy loops in the root namespace; killed on drop (also while unwinding) and by
/// the kernel if this process dies first.
struct Busy(Vec<Child>);

impl Busy {
    fn start(n: usize) -> Result<Busy> {
        let mut busy = Busy(Vec::with_capacity(n));
        for _ in 0..n {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            busy.0
                .push(cmd.spawn().context("cannot start a busy loop")?);
        }
        Ok(busy)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

// ---------------------------------------------------------------------------------------------
// The measurements

struct Lab3 {
    lab: Lab,
    a: Host,
    b: Host,
    obs: Host,
    mac_b: Mac,
}

fn build_lab() -> Result<Lab3> {
    preflight().map_err(|why| anyhow::anyhow!("vrrpbench needs root and namespaces: {why}"))?;
    let lab = Lab::new("vrrpbench")?;
    let seg = lab.bridge("segment")?;
    let a = lab.host("a")?;
    let b = lab.host("b")?;
    let obs = lab.host("obs")?;
    lab.attach(&a, &seg, IFACE, &format!("{ADDR_A}/24"))?;
    let ib = lab.attach(&b, &seg, IFACE, &format!("{ADDR_B}/24"))?;
    lab.attach(&obs, &seg, IFACE, &format!("{ADDR_OBS}/24"))?;
    Ok(Lab3 {
        lab,
        a,
        b,
        obs,
        mac_b: ib.mac,
    })
}

/// Waits until A advertises steadily and B is silent (see the module docs).
fn wait_steady(
    watch: &mut Watch,
    interval: Duration,
    a_since: u128,
    b_master_at: Option<u128>,
    nodes: &[Box<dyn Node>],
) -> Result<()> {
    let quiet = ns((interval * 5).max(Duration::from_millis(500)));
    let a_alive = ns(interval * 3);
    let deadline = Instant::now() + Duration::from_secs(60) + interval * 20;
    loop {
        watch.poll()?;
        let now = now_ns();
        let last_a = watch.adverts_from(ADDR_A, a_since).last();
        let last_b = watch.last_advert_from(ADDR_B);
        let a_ok = last_a.is_some_and(|t| now.saturating_sub(t) <= a_alive);
        // A must have advertised alone for the whole quiet window.
        let first_a_recent = watch.adverts_from(ADDR_A, a_since).next();
        let a_long = first_a_recent.is_some_and(|t| now.saturating_sub(t) >= quiet);
        let b_ok = last_b.is_none_or(|t| now.saturating_sub(t) >= quiet);
        let garp_ok = b_master_at.is_none_or(|t| now.saturating_sub(t) >= ns(GARP_QUIET));
        if a_ok && a_long && b_ok && garp_ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            let states: Vec<String> = nodes.iter().map(|n| n.describe()).collect();
            bail!(
                "A master / B backup not steady within a minute (A adverting: {a_ok}, \
                 B silent: {b_ok}):\n{}",
                states.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct TakeoverResult {
    samples: Vec<Duration>,
    missed: usize,
}

fn takeovers(
    pair: &Pair,
    watch: &mut Watch,
    mac_b: &str,
    runs: usize,
    label: &str,
) -> Result<(TakeoverResult, Vec<Box<dyn Node>>)> {
    let interval = pair.interval;
    let mdi = master_down_interval(interval, PRIO_B);
    let t0 = now_ns();
    let a = pair.start(0)?;
    if wait_until(Duration::from_secs(30) + interval * 10, || {
        watch.poll().is_ok() && watch.adverts_from(ADDR_A, t0).next().is_some()
    })
    .is_err()
    {
        bail!("A never advertised: {}", a.describe());
    }
    let b = pair.start(1)?;
    let mut nodes: Vec<Box<dyn Node>> = vec![a, b];
    wait_steady(watch, interval, t0, None, &nodes)?;
    let mut res = TakeoverResult {
        samples: Vec::with_capacity(runs),
        missed: 0,
    };
    for run in 0..runs {
        let t_kill = now_ns();
        nodes[0].kill()?;
        let deadline = Instant::now() + mdi * 3 + Duration::from_secs(10);
        let garp = loop {
            watch.poll()?;
            if let Some(t) = watch.vip_garps_from(mac_b, t_kill).next() {
                break Some(t);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let restart_from = now_ns();
        match garp {
            Some(g) => {
                let last_a = watch
                    .adverts_from(ADDR_A, 0)
                    .filter(|t| *t < g)
                    .last()
                    .context("no advert from A before B's takeover")?;
                let d = Duration::from_nanos((g - last_a) as u64);
                eprintln!(
                    "vrrpbench: {label} run {}/{runs}: takeover {:.2} ms",
                    run + 1,
                    ms(d)
                );
                res.samples.push(d);
            }
            None => {
                eprintln!(
                    "vrrpbench: {label} run {}/{runs}: no gratuitous ARP from B; {}",
                    run + 1,
                    nodes[1].describe()
                );
                res.missed += 1;
            }
        }
        nodes[0] = pair.start(0)?;
        wait_steady(watch, interval, restart_from, garp, &nodes)?;
    }
    Ok((res, nodes))
}

struct SpuriousResult {
    secs: f64,
    episodes: usize,
    b_adverts: usize,
    b_master_log: Option<usize>,
    max_a_gap: Duration,
}

fn spurious(
    watch: &mut Watch,
    nodes: &[Box<dyn Node>],
    interval: Duration,
    length: Duration,
    label: &str,
) -> Result<SpuriousResult> {
    let n = nproc() * 4;
    let log_before = nodes[1].master_entries();
    eprintln!(
        "vrrpbench: {label}: spurious transitions, {n} busy loops for {} s",
        length.as_secs_f64()
    );
    let t0 = now_ns();
    let started = Instant::now();
    {
        let _busy = Busy::start(n)?;
        while started.elapsed() < length {
            std::thread::sleep(Duration::from_millis(500).min(length));
            watch.poll()?;
        }
    }
    let t1 = now_ns();
    // Frames received in the window are all printed once the CPU is free again.
    std::thread::sleep(Duration::from_millis(300));
    watch.poll()?;
    let b: Vec<u128> = watch
        .adverts_from(ADDR_B, t0)
        .filter(|t| *t <= t1)
        .collect();
    let gap = ns(master_down_interval(interval, PRIO_B));
    let episodes = b
        .iter()
        .enumerate()
        .filter(|(i, t)| *i == 0 || **t - b[i - 1] >= gap)
        .count();
    let a: Vec<u128> = watch
        .adverts_from(ADDR_A, t0)
        .filter(|t| *t <= t1)
        .collect();
    let max_a_gap = a.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let log_after = nodes[1].master_entries();
    Ok(SpuriousResult {
        secs: (t1 - t0) as f64 / 1e9,
        episodes,
        b_adverts: b.len(),
        b_master_log: log_before.zip(log_after).map(|(x, y)| y - x),
        max_a_gap: Duration::from_nanos(max_a_gap as u64),
    })
}

// ---------------------------------------------------------------------------------------------
// Report

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_interval(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

struct Row {
    which: Impl,
    version: u8,
    interval: Duration,
    takeover: Result<TakeoverResult, String>,
    spurious: Option<Result<SpuriousResult, String>>,
}

fn report(rows: &[Row], skipped: &[(Impl, String)]) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "### VRRP takeover (last advert from the killed master → first gratuitous ARP from \
         the backup, observer's kernel timestamps)\n"
    );
    let _ = writeln!(
        w,
        "| implementation | VRRP | interval | runs | p50 | p99 | min | max | RFC (3×I + 156×I/256) | p99/RFC |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let rfc = master_down_interval(r.interval, PRIO_B);
        let head = format!(
            "| {} | v{} | {} |",
            r.which.name(),
            r.version,
            fmt_interval(r.interval)
        );
        match &r.takeover {
            Ok(t) if !t.samples.is_empty() => {
                let mut v = t.samples.clone();
                v.sort();
                let p99 = percentile(&v, 99.0);
                let missed = if t.missed > 0 {
                    format!(" ({} missed)", t.missed)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    w,
                    "{head} {}{missed} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.3} |",
                    v.len(),
                    ms(percentile(&v, 50.0)),
                    ms(p99),
                    ms(v[0]),
                    ms(v[v.len() - 1]),
                    ms(rfc),
                    p99.as_secs_f64() / rfc.as_secs_f64()
                );
            }
            Ok(t) => {
                let _ = writeln!(
                    w,
                    "{head} 0 ({} missed) | – | – | – | – | {:.2} ms | – |",
                    t.missed,
                    ms(rfc)
                );
            }
            Err(e) => {
                let _ = writeln!(w, "{head} failed: {e} | | | | | {:.2} ms | |", ms(rfc));
            }
        }
    }
    let _ = writeln!(
        w,
        "\n### Spurious transitions with the CPU oversubscribed ({} busy loops = 4 per core)\n",
        nproc() * 4
    );
    let _ = writeln!(
        w,
        "| implementation | VRRP | interval | seconds | B-master episodes | adverts from B | \
         B MASTER entries (daemon log) | longest gap between A's adverts |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let head = format!(
            "| {} | v{} | {} |",
            r.which.name(),
            r.version,
            fmt_interval(r.interval)
        );
        match &r.spurious {
            Some(Ok(sp)) => {
                let log = sp
                    .b_master_log
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "–".into());
                let _ = writeln!(
                    w,
                    "{head} {:.1} | {} | {} | {log} | {:.1} ms ({:.1} × I) |",
                    sp.secs,
                    sp.episodes,
                    sp.b_adverts,
                    ms(sp.max_a_gap),
                    sp.max_a_gap.as_secs_f64() / r.interval.as_secs_f64()
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(w, "{head} failed: {e} | | | | |");
            }
            None => {
                let _ = writeln!(w, "{head} not run (takeover phase failed) | | | | |");
            }
        }
    }
    for (which, why) in skipped {
        let _ = writeln!(w, "\n{} skipped: {why}", which.name());
    }
    s
}

// ---------------------------------------------------------------------------------------------

fn run() -> Result<()> {
    let opts = parse_opts()?;
    let started = Instant::now();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "vrrpbench: load average {} before the run; {} runs per interval, {} s of \
         oversubscription per interval",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        opts.runs,
        opts.spurious.as_secs()
    );
    let l = build_lab()?;
    let mac_b = l.mac_b.to_string();
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    'impls: for &which in &opts.impls {
        for &(version, interval) in &opts.cases {
            let label = format!("{} v{version} {}", which.name(), fmt_interval(interval));
            let pair = match Pair::new(&l.lab, &l.a, &l.b, which, version, interval) {
                Ok(p) => p,
                Err(e) if which == Impl::Directord => {
                    eprintln!("vrrpbench: skipping directord: {e:#}");
                    skipped.push((which, format!("{e:#}")));
                    continue 'impls;
                }
                Err(e) => return Err(e),
            };
            // A fresh observer per case keeps each event list short.
            let mut watch = Watch::start(&l.obs)?;
            let (takeover, spur) = match takeovers(&pair, &mut watch, &mac_b, opts.runs, &label) {
                Ok((t, nodes)) => {
                    let sp = spurious(&mut watch, &nodes, interval, opts.spurious, &label)
                        .map_err(|e| format!("{e:#}"));
                    (Ok(t), Some(sp))
                }
                Err(e) => {
                    eprintln!("vrrpbench: {label}: {e:#}");
                    (Err(format!("{e:#}")), None)
                }
            };
            // Dropping the nodes and the watch (above and here) stops their processes; make
            // sure nothing of this case is left before the next one starts.
            drop(watch);
            for h in [&l.a, &l.b] {
                let _ = h.ip(["addr", "flush", "dev", IFACE, "to", &format!("{VIP}/32")]);
            }
            rows.push(Row {
                which,
                version,
                interval,
                takeover,
                spurious: spur,
            });
        }
    }
    print!("{}", report(&rows, &skipped));
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "vrrpbench: done in {:.0} s; load average {} after the run",
        started.elapsed().as_secs_f64(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(10));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(20));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_millis(1));
        let v: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(198));
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("30ms").unwrap(), Duration::from_millis(30));
        assert!(parse_interval("30").is_err());
        assert!(parse_interval("0ms").is_err());
    }

    #[test]
    fn directord_config_names_the_instance() {
        let c = DirectordNode::config(
            "a",
            3,
            Duration::from_millis(30),
            200,
            Path::new("/tmp/x/a.sock"),
        );
        assert!(c.contains("advert_interval = \"30ms\""), "{c}");
        assert!(c.contains("priority = 200"), "{c}");
        assert!(c.contains("vips = [\"198.18.1.100/24\"]"), "{c}");
        assert!(c.contains("socket = \"/tmp/x/a.sock\""), "{c}");
    }
}
