//! `healthbench`: how fast the health checks take a failed real server out of the service and
//! put it back, and what clients see meanwhile. Run as root (through `scripts/bench health`,
//! which builds in release first). It measures and reports; it asserts nothing about speed.
//!
//! The NAT topology with three real servers running `labsrv`, and `directord` with the `web`
//! HTTP service (rr) and a `[service.check]`. For each check setting the director is
//! restarted with it, a steady stream of client requests runs (`--rate` per second, each a
//! new connection to the VIP from the client namespace), and each trial:
//!
//! 1. waits until rs1 is up and its latest probe passed, then sleeps a random part of the
//!    check interval (so the fault lands at a random phase of the probe schedule);
//! 2. the fault, at a noted monotonic instant: `kill` = SIGKILL to rs1's `labsrv` (the kernel
//!    then refuses connections), or `stall` = SIGSTOP (the process answers nothing, but the
//!    kernel still completes TCP handshakes into the listen backlog);
//! 3. polls rs1's health over the control socket every 5 ms until it reads "down":
//!    detection = reply that shows it − fault. The `down` event's own time (wall clock,
//!    milliseconds) gives a second reading without the polling error;
//! 4. repair: `kill` starts rs1's `labsrv` again and notes when its socket listens (a thread
//!    in rs1's namespace reads the kernel's socket table every millisecond); `stall` sends
//!    SIGCONT, [`STALL_HOLD`] after the detection (so requests stuck on the frozen server
//!    meet their deadlines first, as they would on one that stays stalled). Then polls until
//!    "up": recovery = reply that shows it − repair.
//!
//! Bounds: detection ≤ fall × interval + timeout (the next probe within one interval, then
//! fall − 1 more, the last one failing at its deadline at the latest); recovery ≤ rise ×
//! interval plus one probe's duration. The client requests that failed between the fault
//! and detection are the operator-visible cost.
//!
//! `healthbench [--settings http:200ms:100ms:2:2,tcp:200ms:100ms:2:2,http:1s:500ms:3:3]
//! [--slow] [--trials 10] [--rate 50] [--cases kill,stall]` — a setting is
//! kind:interval:timeout:rise:fall; `--slow` adds keepalived's defaults (`tcp:60s:5s:1:1`:
//! a connect check every 60 s, 5 s timeout; about 2 minutes per trial).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use director_lab::lab::{Host, Lab, Signal};
use director_lab::topo::{start_labsrv, Mode, ServiceSpec, Topo, VIP};
use serde_json::{json, Value};

/// How often the control socket is polled.
const POLL: Duration = Duration::from_millis(5);
/// rs1 as the director's config names it.
const RS1: &str = "198.18.2.11:8080";
/// rs1's port in /proc/net/tcp (8080).
const RS1_PORT_HEX: &str = ":1F90";
/// A client request's deadlines: to connect, and for each read of the answer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// A stalled server stays stopped this long after its detection: longer than a client
/// request's deadlines, so requests stuck on it fail as they would on a server that stays
/// stalled, rather than being answered late when it resumes.
const STALL_HOLD: Duration = Duration::from_millis(1600);
/// A request answered later than this counts as late.
const LATE: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
struct Setting {
    kind: String,
    interval_s: String,
    timeout_s: String,
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

fn duration(s: &str) -> Result<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        Ok(Duration::from_millis(ms.parse()?))
    } else if let Some(secs) = s.strip_suffix('s') {
        Ok(Duration::from_secs_f64(secs.parse()?))
    } else {
        bail!("duration {s:?}: want e.g. 200ms or 5s")
    }
}

impl Setting {
    fn parse(s: &str) -> Result<Setting> {
        let f: Vec<&str> = s.split(':').collect();
        let [kind, interval, timeout, rise, fall] = f[..] else {
            bail!("setting {s:?}: want kind:interval:timeout:rise:fall");
        };
        anyhow::ensure!(
            kind == "http" || kind == "tcp",
            "setting {s:?}: kind is http or tcp"
        );
        Ok(Setting {
            kind: kind.into(),
            interval_s: interval.into(),
            timeout_s: timeout.into(),
            interval: duration(interval)?,
            timeout: duration(timeout)?,
            rise: rise.parse()?,
            fall: fall.parse()?,
        })
    }

    fn label(&self) -> String {
        format!(
            "{} {}/{} rise {} fall {}",
            self.kind, self.interval_s, self.timeout_s, self.rise, self.fall
        )
    }

    fn check(&self) -> String {
        let path = if self.kind == "http" {
            "path = \"/healthz\"\n"
        } else {
            ""
        };
        format!(
            "kind = \"{}\"\n{path}interval = \"{}\"\ntimeout = \"{}\"\nrise = {}\nfall = {}",
            self.kind, self.interval_s, self.timeout_s, self.rise, self.fall
        )
    }

    fn detect_bound(&self) -> Duration {
        self.interval * self.fall + self.timeout
    }

    fn recover_bound(&self) -> Duration {
        self.interval * self.rise
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Kill,
    Stall,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Kill => "kill (SIGKILL)",
            Case::Stall => "stall (SIGSTOP)",
        }
    }
}

struct Args {
    settings: Vec<Setting>,
    trials: usize,
    rate: u32,
    cases: Vec<Case>,
}

fn args() -> Result<Args> {
    let mut settings = "http:200ms:100ms:2:2,tcp:200ms:100ms:2:2,http:1s:500ms:3:3".to_string();
    let mut slow = false;
    let mut a = Args {
        settings: Vec::new(),
        trials: 10,
        rate: 50,
        cases: vec![Case::Kill, Case::Stall],
    };
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        let mut v = || it.next().context("flag needs a value");
        match f.as_str() {
            "--settings" => settings = v()?,
            "--slow" => slow = true,
            "--trials" => a.trials = v()?.parse()?,
            "--rate" => a.rate = v()?.parse()?,
            "--cases" => {
                a.cases = v()?
                    .split(',')
                    .map(|c| match c {
                        "kill" => Ok(Case::Kill),
                        "stall" => Ok(Case::Stall),
                        _ => bail!("case {c:?}: kill or stall"),
                    })
                    .collect::<Result<_>>()?
            }
            _ => bail!("unknown flag {f}"),
        }
    }
    if slow {
        settings.push_str(",tcp:60s:5s:1:1");
    }
    a.settings = settings
        .split(',')
        .map(Setting::parse)
        .collect::<Result<_>>()?;
    anyhow::ensure!(a.trials > 0 && a.rate > 0, "--trials and --rate above 0");
    Ok(a)
}

/// xorshift64*: the fault's phase; no need for more.
struct Rng(u64);

impl Rng {
    fn below(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Duration::from_nanos(r % (d.as_nanos() as u64).max(1))
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One request over the control socket (one JSON line each way); the reply's `data`.
fn control(socket: &Path, req: &Value) -> Result<Value> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("control socket {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(&stream, "{req}")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let reply: Value = serde_json::from_str(&line).with_context(|| format!("reply {line:?}"))?;
    if reply["ok"] != true {
        bail!("director: {}", reply["error"]);
    }
    Ok(reply["data"].clone())
}

/// rs1 of service `web` as `director services --json` shows it.
fn rs1(socket: &Path) -> Result<Value> {
    let v = control(socket, &json!({ "command": "services" }))?;
    v.as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "web"))
        .and_then(|s| s["reals"].as_array())
        .and_then(|r| r.iter().find(|r| r["address"] == RS1))
        .cloned()
        .with_context(|| format!("no real {RS1} in {v}"))
}

/// Polls every [`POLL`] until `cond(rs1)`; returns the instant of the reply that showed it,
/// that reply, and the round trips of the requests. `None` at `limit`.
fn poll_until(
    socket: &Path,
    limit: Duration,
    rtts: &mut Vec<f64>,
    cond: impl Fn(&Value) -> bool,
) -> Result<Option<(Instant, Value)>> {
    let start = Instant::now();
    loop {
        let sent = Instant::now();
        let r = rs1(socket)?;
        let got = Instant::now();
        rtts.push((got - sent).as_secs_f64() * 1e3);
        if cond(&r) {
            return Ok(Some((got, r)));
        }
        if got - start > limit {
            return Ok(None);
        }
        if let Some(wait) = (sent + POLL).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

fn is_up_probed(r: &Value) -> bool {
    r["health"] == "up" && r["last_check"]["ok"] == true
}

/// The wall-clock time of the first `down` event of rs1 at or after `since`.
fn down_event_time(socket: &Path, since: f64) -> Result<Option<f64>> {
    let v = control(socket, &json!({ "command": "events", "limit": 50 }))?;
    Ok(v["events"].as_array().and_then(|evs| {
        evs.iter()
            .filter(|e| {
                e["kind"] == "health"
                    && e["subject"].as_str().is_some_and(|s| s.ends_with(RS1))
                    && e["message"].as_str().is_some_and(|m| m.starts_with("down"))
            })
            .filter_map(|e| e["time"].as_f64())
            // Event times are truncated to the millisecond.
            .find(|t| *t >= since - 0.001)
    }))
}

/// Waits (in the host's namespace) until something listens on TCP port 8080; the instant
/// it appeared in the kernel's socket table (read every millisecond).
fn wait_listen(limit: Duration) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < limit {
        // /proc/self/net would show the main thread's namespace, not this thread's.
        if let Ok(t) = std::fs::read_to_string("/proc/thread-self/net/tcp") {
            let listening = t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(RS1_PORT_HEX) && f[3] == "0A"
            });
            if listening {
                return Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The client's request stream

/// One client request: when it started and what came of it (the answering server, or why
/// it failed).
struct Req {
    start: Instant,
    took: Duration,
    outcome: Result<String, &'static str>,
}

fn failure(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "refused",
        K::TimedOut | K::WouldBlock => "timeout",
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "reset",
        _ => "other",
    }
}

/// `GET /` on a new connection to the VIP (within [`CONNECT_TIMEOUT`], each read within
/// [`READ_TIMEOUT`]).
fn request() -> Result<String, &'static str> {
    let vip = SocketAddr::from((VIP, 80));
    let mut s = TcpStream::connect_timeout(&vip, CONNECT_TIMEOUT).map_err(|e| failure(&e))?;
    let _ = s.set_read_timeout(Some(READ_TIMEOUT));
    let _ = s.set_write_timeout(Some(READ_TIMEOUT));
    s.write_all(b"GET / HTTP/1.1\r\nHost: 198.18.1.100\r\nConnection: close\r\n\r\n")
        .map_err(|e| failure(&e))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| failure(&e))?;
    let text = String::from_utf8_lossy(&buf);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.trim().to_string()),
        _ if buf.is_empty() => Err("empty"),
        _ => Err("bad answer"),
    }
}

/// `rate` requests per second from the client namespace, each on a thread of its own (so a
/// hanging one does not hold the others back), until stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Req>>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Stream {
    fn start(client: &Host, rate: u32) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (client, stop2, log2) = (client.clone(), stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            client.in_ns(move || {
                let start = Instant::now();
                let mut workers = Vec::new();
                for n in 0u64.. {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let due = start + Duration::from_nanos(n * 1_000_000_000 / u64::from(rate));
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let log = log2.clone();
                    // Threads made here are in the client's namespace too.
                    workers.push(std::thread::spawn(move || {
                        let start = Instant::now();
                        let outcome = request();
                        let took = start.elapsed();
                        log.lock().unwrap_or_else(|e| e.into_inner()).push(Req {
                            start,
                            took,
                            outcome,
                        });
                    }));
                    workers.retain(|w| !w.is_finished());
                }
                for w in workers {
                    let _ = w.join();
                }
            })
        });
        Stream {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Result<Vec<Req>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("request stream panicked"))??;
        }
        let mut log = std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()));
        log.sort_by_key(|r| r.start);
        Ok(log)
    }
}

// ---------------------------------------------------------------------------------------------
// Trials

struct Trial {
    /// Fault → the reply showing "down" (ms); `None`: not down within the limit.
    detect: Option<f64>,
    /// Fault → the `down` event's time (ms, wall clock).
    detect_event: Option<f64>,
    /// Repair → the reply showing "up" (ms).
    recover: Option<f64>,
    /// The fault and the end of its window: detection, or the repair when undetected.
    window: (Instant, Instant),
    cause: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn trial(
    topo: &mut Topo,
    svc: &[ServiceSpec],
    s: &Setting,
    case: Case,
    rng: &mut Rng,
    rtts: &mut Vec<f64>,
) -> Result<Trial> {
    let socket = topo.socket.clone();
    let settle = s.recover_bound() * 3 + Duration::from_secs(10);
    poll_until(&socket, settle, rtts, is_up_probed)?
        .with_context(|| format!("rs1 not up and probed within {settle:?}"))?;
    std::thread::sleep(rng.below(s.interval));

    let wall = unix_now();
    topo.servers[0].kill(match case {
        Case::Kill => Signal::Kill,
        Case::Stall => Signal::Stop,
    })?;
    let fault = Instant::now();
    let limit = match case {
        Case::Kill => s.detect_bound() + Duration::from_secs(5),
        Case::Stall => (s.detect_bound() * 3).max(s.detect_bound() + Duration::from_secs(10)),
    };
    let down = poll_until(&socket, limit, rtts, |r| r["health"] == "down")?;
    let detect = down.as_ref().map(|(t, _)| ms(*t - fault));
    let cause = down.as_ref().map_or_else(
        || "-".to_string(),
        |(_, r)| r["health_cause"].as_str().unwrap_or("?").to_string(),
    );
    let detect_event = match down {
        Some(_) => down_event_time(&socket, wall)?.map(|t| (t - wall) * 1e3),
        None => None,
    };

    let repaired = match case {
        Case::Kill => {
            let host = topo.reals[0].clone();
            let (listen, procs) = std::thread::scope(|sc| {
                let watcher = sc.spawn(move || host.in_ns(|| wait_listen(Duration::from_secs(15))));
                let procs = start_labsrv(&topo.reals[..1], &topo.real_addrs[..1], Mode::Nat, svc);
                (watcher.join(), procs)
            });
            let mut procs = procs.context("restart rs1's server")?;
            topo.servers[0] = procs.remove(0);
            listen
                .map_err(|_| anyhow::anyhow!("listen watcher panicked"))??
                .context("rs1's server never listened")?
        }
        Case::Stall => {
            std::thread::sleep(STALL_HOLD);
            topo.servers[0].kill(Signal::Cont)?;
            Instant::now()
        }
    };
    let window = (fault, down.as_ref().map_or(repaired, |(t, _)| *t));
    let recover = if down.is_some() {
        let (t, _) = poll_until(&socket, settle, rtts, |r| r["health"] == "up")?
            .with_context(|| format!("rs1 not up within {settle:?} of its repair"))?;
        Some(ms(t - repaired))
    } else {
        None
    };
    eprintln!(
        "healthbench: {} {}: down {} (event {}), up {} — {cause}",
        s.label(),
        case.label(),
        detect.map_or("never".into(), |d| format!("{d:.0} ms")),
        detect_event.map_or("-".into(), |d| format!("{d:.0} ms")),
        recover.map_or("-".into(), |d| format!("{d:.0} ms")),
    );
    Ok(Trial {
        detect,
        detect_event,
        recover,
        window,
        cause,
    })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v
}

fn f0(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.0}")
    }
}

/// The causes seen, most frequent first, with counts when more than one kind.
fn causes(trials: &[Trial]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for t in trials {
        // The address and timing details vary; the cause's words are what matter.
        let c = t
            .cause
            .replace(RS1, "rs1")
            .split(" after ")
            .next()
            .unwrap_or("")
            .to_string();
        match counts.iter_mut().find(|(k, _)| *k == c) {
            Some((_, n)) => *n += 1,
            None => counts.push((c, 1)),
        }
    }
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    counts
        .iter()
        .map(|(c, n)| format!("{c} ({n})"))
        .collect::<Vec<_>>()
        .join("; ")
}

struct Rows {
    detect: Vec<String>,
    recover: Vec<String>,
    clients: Vec<String>,
}

fn count<'a>(kinds: &mut Vec<(&'a str, usize)>, k: &'a str) {
    match kinds.iter_mut().find(|(kk, _)| *kk == k) {
        Some((_, n)) => *n += 1,
        None => kinds.push((k, 1)),
    }
}

fn kinds_text(kinds: &[(&str, usize)]) -> String {
    kinds
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(s: &Setting, case: Case, trials: &[Trial], reqs: &[Req], rows: &mut Rows) {
    let det = sorted(trials.iter().filter_map(|t| t.detect));
    let ev = sorted(trials.iter().filter_map(|t| t.detect_event));
    let rec = sorted(trials.iter().filter_map(|t| t.recover));
    rows.detect.push(format!(
        "| {} | {} | {} | {} of {} | {} | {} | {} | {} | {} | {} / {} | {} |",
        s.label(),
        case.label(),
        trials.len(),
        det.len(),
        trials.len(),
        f0(det.first().copied().unwrap_or(f64::NAN)),
        f0(pct(&det, 0.5)),
        f0(pct(&det, 0.9)),
        f0(det.last().copied().unwrap_or(f64::NAN)),
        f0(ms(s.detect_bound())),
        f0(pct(&ev, 0.5)),
        f0(ev.last().copied().unwrap_or(f64::NAN)),
        causes(trials),
    ));
    rows.recover.push(format!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        s.label(),
        case.label(),
        rec.len(),
        f0(rec.first().copied().unwrap_or(f64::NAN)),
        f0(pct(&rec, 0.5)),
        f0(rec.last().copied().unwrap_or(f64::NAN)),
        f0(ms(s.recover_bound())),
    ));
    let in_window = |r: &Req| {
        trials
            .iter()
            .any(|t| r.start >= t.window.0 && r.start <= t.window.1)
    };
    let (mut started, mut failed, mut to_rs1, mut late) = (0usize, 0usize, 0usize, 0usize);
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    let mut outside_kinds: Vec<(&str, usize)> = Vec::new();
    for r in reqs.iter().filter(|r| !in_window(r)) {
        if let Err(k) = &r.outcome {
            count(&mut outside_kinds, k);
        }
    }
    for r in reqs.iter().filter(|r| in_window(r)) {
        started += 1;
        if r.outcome.is_ok() && r.took > LATE {
            late += 1;
        }
        match &r.outcome {
            Ok(name) if name == "rs1" => to_rs1 += 1,
            Ok(_) => {}
            Err(k) => {
                failed += 1;
                count(&mut kinds, k);
            }
        }
    }
    let window_ms: f64 = trials.iter().map(|t| ms(t.window.1 - t.window.0)).sum();
    let outside: usize = outside_kinds.iter().map(|(_, n)| n).sum();
    let outside_all = reqs.iter().filter(|r| !in_window(r)).count();
    rows.clients.push(format!(
        "| {} | {} | {:.1} s | {} | {} | {} | {} ({:.1} per trial) | {} | {} of {}{} |",
        s.label(),
        case.label(),
        window_ms / 1e3,
        started,
        to_rs1,
        late,
        failed,
        failed as f64 / trials.len() as f64,
        if kinds.is_empty() {
            "-".to_string()
        } else {
            kinds_text(&kinds)
        },
        outside,
        outside_all,
        if outside_kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds_text(&outside_kinds))
        },
    ));
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() -> Result<()> {
    let args = args()?;
    let load_before = loadavg();
    let started = Instant::now();
    let mut topo = Topo::nat(Lab::new("hbench")?, 3)?;
    let mut rng = Rng(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1);
    let mut rows = Rows {
        detect: Vec::new(),
        recover: Vec::new(),
        clients: Vec::new(),
    };
    let mut rtts = Vec::new();
    let mut servers_started = false;
    for s in &args.settings {
        let svc = [ServiceSpec {
            check: Some(s.check()),
            ..ServiceSpec::http("rr", &[1, 1, 1])
        }];
        if !servers_started {
            topo.start_servers(&svc)?;
            servers_started = true;
        }
        if let Some(mut d) = topo.daemon.take() {
            d.stop(Duration::from_secs(5));
        }
        topo.start_director(&svc)?;
        for &case in &args.cases {
            let stream = Stream::start(&topo.client, args.rate);
            let mut trials = Vec::new();
            for _ in 0..args.trials {
                trials.push(trial(&mut topo, &svc, s, case, &mut rng, &mut rtts)?);
            }
            // Let the last requests finish (or time out) inside the stream.
            let reqs = stream.finish()?;
            report(s, case, &trials, &reqs, &mut rows);
        }
    }
    let rtts = sorted(rtts.into_iter());

    println!("### Health checks: rs1's HTTP server fails → rs1 down (ms)\n");
    println!(
        "| check (kind interval/timeout) | fault | trials | detected | min | median | p90 | max | bound fall×interval+timeout | by event time: median / max | cause (trials) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows.detect {
        println!("{r}");
    }
    println!(
        "\nPolled over the control socket every {} ms; a reading is the reply that showed the change, so it is late by up to {} ms plus one request's round trip (median {:.2} ms, p99 {:.2} ms). \"By event time\": the `down` event's wall-clock time (whole milliseconds) − the fault's. Fault at a random phase of the probe interval. A stall not detected by max(3 × bound, bound + 10 s) counts as undetected.",
        POLL.as_millis(),
        POLL.as_millis(),
        pct(&rtts, 0.5),
        pct(&rtts, 0.99),
    );
    println!(
        "\n### Health checks: rs1's server repaired (listening again / SIGCONT) → rs1 up (ms)\n"
    );
    println!("| check | fault | trials | min | median | max | bound rise×interval |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows.recover {
        println!("{r}");
    }
    println!(
        "\nFrom the instant rs1's listening socket appeared in the kernel's table (read every 1 ms in its namespace) or SIGCONT was sent, to the {} ms poll that showed \"up\"; a probe's own duration comes on top of the bound.",
        POLL.as_millis()
    );
    println!(
        "\n### Client requests meanwhile ({} per second, a new connection to the VIP each, connect timeout {} ms, read timeout {} ms)\n",
        args.rate,
        CONNECT_TIMEOUT.as_millis(),
        READ_TIMEOUT.as_millis(),
    );
    println!(
        "| check | fault | time between fault and down, all trials | requests started then | answered by rs1 | answered late (> {} ms) | failed | how | failed at other times |",
        LATE.as_millis()
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows.clients {
        println!("{r}");
    }
    println!(
        "\nA request counts in the window it started in (from the fault to the poll that showed \"down\", or to SIGCONT when never down); \"failed at other times\": failures among the requests that started outside those windows. A stalled server stays stopped {} ms after its detection, past a request's deadlines, so requests stuck on it fail as on a server that stays stalled. Load average before: {load_before}; after: {}. Total run time {:.0} s.",
        STALL_HOLD.as_millis(),
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
