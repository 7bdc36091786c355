//! `flowcheck`: the client of the failover product test. Run in the lab's client namespace,
//! it holds long-lived TCP connections to an echo service and opens a steady stream of short
//! HTTP connections, and reports whether every flow survived and how long each one stalled.
//!
//! ```text
//! flowcheck --target VIP:PORT [--long N] [--idle N] [--rate BYTES_PER_SEC] [--chunk BYTES]
//!           [--short-target VIP:PORT] [--short-rate PER_SEC] [--short-hold-ms MS]
//!           [--short-timeout-secs S] [--source-base IP] [--sources N]
//!           [--duration SECS] [--drain-secs S] [--connect-timeout-secs S]
//! ```
//!
//! Long connections (default 200, to `--target`, an echo server such as `labsrv --echo`):
//! connection `i` sends `director_lab::pattern` from stream offset `i << 40` at `--rate`
//! bytes per second in writes of `--chunk` bytes (connections are staggered across the chunk
//! period), reads the echo and checks every byte against the pattern. A connection fails as
//! `reset` (ECONNRESET/EPIPE), `corrupt` (a byte differs, or more came back than was sent),
//! `eof` (the server closed first), `timeout` (bytes still unechoed when the drain ends, or
//! the kernel gave up: ETIMEDOUT) or `other`. A stall is the time from the moment data became
//! outstanding (a write while everything sent had been echoed, or the previous read when
//! bytes were still outstanding after it) to the next successful read: the longest interval
//! without progress while the client was waiting for its echo.
//!
//! Idle connections (`--idle N`, default 0, to `--target` as well): established with the long
//! ones, then silent, not one packet, until the stop; then each sends one chunk of its own
//! region of the pattern (connection `--long + i`) and must get it back, checked, before the
//! drain ends. They stand for a keep-alive pool or an idle session: a director that lost
//! their entries while they were silent drops the first segment after (no SYN) and the
//! connection times out. Reported apart, under `"idle"`, never in the long figures.
//!
//! Short connections (with `--short-target`, an HTTP server such as `labsrv --http`):
//! `--short-rate` per second; each completes its handshake, stays idle `--short-hold-ms`
//! (so one opened just before a failover has had fewer than 3 packets through the director
//! that dies), then sends `GET /` with `Connection: close` and reads the response to EOF; it
//! is ok when the response is a complete `200`.
//!
//! `ready` is printed on stderr once every long connection is established. The run ends at
//! SIGTERM/SIGINT (or after `--duration`): no new data and no new short connections; the
//! outstanding echoes and short connections get up to `--drain-secs`; the long connections
//! are shut down (FIN, then the server's FIN is awaited) and one JSON report is printed on
//! stdout. SIGUSR1 prints the same report so far (with `"interim":true` and each long
//! connection's longest stall) as one line on stderr. The exit status is 0 whatever happened
//! to the flows: the caller judges.
//!
//! Times are CLOCK_MONOTONIC nanoseconds, the clock of every process on the machine whatever
//! its network namespace, so a test can line stalls up with the moments it acted:
//! ```text
//! {"start_ns":…,"ready_ns":…,"stop_ns":…,"end_ns":…,
//!  "long":{"count":200,"ok":200,"reset":0,"corrupt":0,"eof":0,"timeout":0,"other":0,
//!          "unclosed":0,"bytes":…,"max_stall_ms":…,
//!          "stalls":[{"conn":7,"start_ns":…,"end_ns":…,"ms":…,"ongoing":false}],
//!          "failures":[{"conn":3,"error":"reset","detail":"…","bytes":…,
//!                       "first_mismatch":null}]},
//!  "idle":{"count":…,"ok":…,"failures":[{"conn":…,"error":"timeout","detail":"…"}]},
//!  "short":{"opened":…,"ok":…,"failed":…,"errors":{"reset":2},
//!           "failures":[{"opened_ns":…,"handshake_ns":…,"local":"ADDR:PORT","error":"reset","detail":"…"}]}}
//! ```
//! `stalls` lists every stall over 100 ms, in start order (`ongoing`: still running when the
//! report was made, e.g. bytes never echoed; its `end_ns` is then the report's); `unclosed` counts ok connections
//! whose FIN from the server did not arrive before the drain ended; `first_mismatch` is the
//! connection's stream position (bytes from its first byte) of the first wrong byte;
//! `handshake_ns` is null when the handshake never completed.
//!
//! One thread: nonblocking sockets and `poll(2)`, with a 5 ms send tick.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{anyhow, bail, ensure, Context, Result};
use director_lab::{mono_ns, pattern};
use serde_json::{json, Value};

/// Stalls shorter than this are not listed one by one (only the maximum is kept).
const LISTED_STALL_NS: u64 = 100_000_000;
const TICK_NS: u64 = 5_000_000;
const NS: u64 = 1_000_000_000;
/// Each long connection's own region of the pattern stream.
const CONN_STRIDE: u64 = 1 << 40;

static STOP: AtomicBool = AtomicBool::new(false);
static DUMP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

extern "C" fn on_dump(_: libc::c_int) {
    DUMP.store(true, Ordering::Relaxed);
}

struct Args {
    target: SocketAddrV4,
    long: usize,
    idle: usize,
    rate: u64,
    chunk: usize,
    short_target: Option<SocketAddrV4>,
    short_rate: f64,
    short_hold_ns: u64,
    short_timeout_ns: u64,
    source_base: Option<Ipv4Addr>,
    sources: u32,
    duration_ns: Option<u64>,
    drain_ns: u64,
    connect_timeout_ns: u64,
}

const USAGE: &str = "flowcheck --target VIP:PORT [--long N] [--idle N] [--rate BYTES_PER_SEC] \
[--chunk BYTES] [--short-target VIP:PORT] [--short-rate PER_SEC] [--short-hold-ms MS] \
[--short-timeout-secs S] [--source-base IP] [--sources N] [--duration SECS] [--drain-secs S] \
[--connect-timeout-secs S]";

fn secs_ns(v: &str, flag: &str) -> Result<u64> {
    let s: f64 = v.parse().with_context(|| format!("bad {flag} {v:?}"))?;
    ensure!(s.is_finite() && s >= 0.0, "bad {flag} {v:?}");
    Ok((s * NS as f64) as u64)
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        target: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        long: 200,
        idle: 0,
        rate: 20_000,
        chunk: 1000,
        short_target: None,
        short_rate: 20.0,
        short_hold_ns: 1_500_000_000,
        short_timeout_ns: 30 * NS,
        source_base: None,
        sources: 1,
        duration_ns: None,
        drain_ns: 10 * NS,
        connect_timeout_ns: 10 * NS,
    };
    let mut target = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => target = Some(value()?.parse().context("--target IP:PORT")?),
            "--long" => a.long = value()?.parse().context("--long N")?,
            "--idle" => a.idle = value()?.parse().context("--idle N")?,
            "--rate" => a.rate = value()?.parse().context("--rate BYTES_PER_SEC")?,
            "--chunk" => a.chunk = value()?.parse().context("--chunk BYTES")?,
            "--short-target" => {
                a.short_target = Some(value()?.parse().context("--short-target IP:PORT")?)
            }
            "--short-rate" => a.short_rate = value()?.parse().context("--short-rate PER_SEC")?,
            "--short-hold-ms" => {
                a.short_hold_ns = value()?.parse::<u64>().context("--short-hold-ms MS")? * 1_000_000
            }
            "--short-timeout-secs" => a.short_timeout_ns = secs_ns(&value()?, &flag)?,
            "--source-base" => a.source_base = Some(value()?.parse().context("--source-base IP")?),
            "--sources" => a.sources = value()?.parse().context("--sources N")?,
            "--duration" => a.duration_ns = Some(secs_ns(&value()?, &flag)?),
            "--drain-secs" => a.drain_ns = secs_ns(&value()?, &flag)?,
            "--connect-timeout-secs" => a.connect_timeout_ns = secs_ns(&value()?, &flag)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; usage: {USAGE}"),
        }
    }
    a.target = target.ok_or_else(|| anyhow!("--target is required; usage: {USAGE}"))?;
    ensure!(
        a.rate > 0 && a.chunk > 0,
        "--rate and --chunk must be positive"
    );
    ensure!(
        a.short_rate.is_finite() && a.short_rate > 0.0,
        "--short-rate must be positive"
    );
    ensure!(a.sources > 0, "--sources must be positive");
    Ok(a)
}

fn main() {
    // SAFETY: installing async-signal-safe handlers (they only store to atomics) before any
    // other thread exists. No SA_RESTART: poll(2) returns EINTR and the loop looks at once.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        sa.sa_sigaction = on_dump as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let result = parse_args().and_then(|args| Run::new(args).run());
    match result {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{report}");
            let _ = out.flush();
        }
        Err(e) => {
            eprintln!("flowcheck: {e:#}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets

/// A nonblocking TCP socket (bound to `source` when given) with a connect to `dst` started.
fn start_connect(source: Option<Ipv4Addr>, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    // SAFETY: socket(2) with constant arguments; the fd is owned by the TcpStream right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid socket that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    stream.set_nodelay(true)?;
    if let Some(src) = source {
        let sin = sockaddr(SocketAddrV4::new(src, 0));
        // SAFETY: bind(2) with a valid sockaddr_in of the size given.
        let rc = unsafe {
            libc::bind(
                fd,
                std::ptr::from_ref(&sin).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let sin = sockaddr(dst);
    // SAFETY: connect(2) with a valid sockaddr_in of the size given.
    let rc = unsafe {
        libc::connect(
            fd,
            std::ptr::from_ref(&sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The failure kind of a socket error, in the report's words.
fn kind_of(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNRESET | libc::EPIPE) => "reset",
        Some(libc::ETIMEDOUT) => "timeout",
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => "unreachable",
        _ => "other",
    }
}

/// The completion of a nonblocking connect: `Ok` when established, the error otherwise.
fn connect_result(s: &TcpStream) -> std::io::Result<()> {
    match s.take_error()? {
        Some(e) => Err(e),
        None => s.peer_addr().map(|_| ()),
    }
}

// ---------------------------------------------------------------------------------------------
// Long connections

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LongState {
    Connecting,
    /// Sending (until the stop) and verifying.
    Open,
    /// Everything sent was echoed after the stop; our FIN is out, the server's is awaited.
    Closing,
    Done,
}

#[derive(Debug, Clone)]
struct Stall {
    conn: usize,
    start_ns: u64,
    end_ns: u64,
    /// Still running when the report was made (`end_ns` is the report's time).
    ongoing: bool,
}

struct Long {
    id: usize,
    /// Silent until the stop, then one chunk (`--idle`).
    idle: bool,
    stream: Option<TcpStream>,
    state: LongState,
    /// First send time: connections are staggered across the chunk period.
    phase_ns: u64,
    sent: u64,
    verified: u64,
    /// Since when the client has been waiting for an echo (None: nothing outstanding).
    waiting_since: Option<u64>,
    max_stall_ns: u64,
    write_blocked: bool,
    error: Option<(&'static str, String)>,
    first_mismatch: Option<u64>,
    /// Ok, but the server's FIN never came.
    unclosed: bool,
}

impl Long {
    fn base(&self) -> u64 {
        self.id as u64 * CONN_STRIDE
    }

    fn fail(&mut self, kind: &'static str, detail: String) {
        if self.error.is_none() {
            self.error = Some((kind, detail));
        }
        self.state = LongState::Done;
        self.stream = None;
    }

    /// The bytes read arrived at `now`: close the stall that was running, if any.
    fn progress(&mut self, now: u64, stalls: &mut Vec<Stall>) {
        if let Some(since) = self.waiting_since {
            let gap = now.saturating_sub(since);
            self.max_stall_ns = self.max_stall_ns.max(gap);
            if gap > LISTED_STALL_NS {
                stalls.push(Stall {
                    conn: self.id,
                    start_ns: since,
                    end_ns: now,
                    ongoing: false,
                });
            }
        }
        self.waiting_since = (self.verified < self.sent).then_some(now);
    }

    /// Sends what the rate allows by `now` (nothing once `stopping`).
    fn send(&mut self, now: u64, rate: u64, chunk: usize, start_ns: u64, buf: &mut [u8]) {
        let base = self.base();
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let since = now.saturating_sub(start_ns + self.phase_ns);
        let chunk64 = chunk as u64;
        // Whole chunks due by now, the first one at the phase.
        let due = if now < start_ns + self.phase_ns {
            0
        } else {
            (u128::from(since) * u128::from(rate) / u128::from(NS)) as u64 / chunk64 * chunk64
                + chunk64
        };
        self.write_blocked = false;
        while self.sent < due {
            let k = (due - self.sent).min(chunk64) as usize;
            pattern::fill(base + self.sent, &mut buf[..k]);
            match stream.write(&buf[..k]) {
                Ok(n) => {
                    if self.waiting_since.is_none() && n > 0 {
                        self.waiting_since = Some(now);
                    }
                    self.sent += n as u64;
                    if n < k {
                        self.write_blocked = true;
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    let kind = kind_of(&e);
                    self.fail(kind, format!("write: {e}"));
                    return;
                }
            }
        }
    }

    /// An idle connection at the stop: its one chunk, from its region of the pattern.
    fn send_probe(&mut self, now: u64, chunk: usize, buf: &mut [u8]) {
        let base = self.base();
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        pattern::fill(base, &mut buf[..chunk]);
        match stream.write(&buf[..chunk]) {
            Ok(n) => {
                self.sent = n as u64;
                self.waiting_since = Some(now);
            }
            Err(e) => {
                let kind = kind_of(&e);
                self.fail(kind, format!("write after the silence: {e}"));
            }
        }
    }

    /// Reads and checks what is there.
    fn receive(&mut self, now: u64, buf: &mut [u8], stalls: &mut Vec<Stall>) {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            match stream.read(buf) {
                Ok(0) => {
                    if self.state == LongState::Closing {
                        self.state = LongState::Done;
                        self.stream = None;
                    } else {
                        let detail = format!(
                            "server closed after {} of {} bytes",
                            self.verified, self.sent
                        );
                        self.fail("eof", detail);
                    }
                    return;
                }
                Ok(n) => {
                    let got = &buf[..n];
                    if let Some(at) = pattern::first_mismatch(self.base() + self.verified, got) {
                        self.first_mismatch = Some(at - self.base());
                        let detail = format!("byte {} differs", at - self.base());
                        self.fail("corrupt", detail);
                        return;
                    }
                    if self.verified + n as u64 > self.sent {
                        self.first_mismatch = Some(self.sent);
                        let detail = format!(
                            "{} bytes came back, only {} were sent",
                            self.verified + n as u64,
                            self.sent
                        );
                        self.fail("corrupt", detail);
                        return;
                    }
                    self.verified += n as u64;
                    self.progress(now, stalls);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    let kind = kind_of(&e);
                    self.fail(kind, format!("read: {e}"));
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Short connections

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShortState {
    Connecting,
    /// Established, idle until `hold_until`.
    Holding,
    /// Request sent, reading the response to EOF.
    Reading,
}

struct Short {
    stream: TcpStream,
    state: ShortState,
    opened_ns: u64,
    handshake_ns: Option<u64>,
    response: Vec<u8>,
}

/// How a short connection ended.
enum ShortEnd {
    Ok,
    Failed(&'static str, String),
}

const MAX_RESPONSE: usize = 16 * 1024;

/// Whether `r` is one complete `200` response (headers and a body of Content-Length).
fn response_ok(r: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(r);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("incomplete response ({} bytes)", r.len()));
    };
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200 ") {
        return Err(format!("status line {status:?}"));
    }
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .ok_or_else(|| "no Content-Length".to_string())?;
    if body.len() != len {
        return Err(format!(
            "body of {} bytes, Content-Length {len}",
            body.len()
        ));
    }
    Ok(())
}

impl Short {
    /// Advances on a poll event or the clock; `Some` when the connection is finished.
    fn step(
        &mut self,
        now: u64,
        readable: bool,
        writable: bool,
        hold_ns: u64,
        request: &[u8],
    ) -> Option<ShortEnd> {
        if self.state == ShortState::Connecting {
            if !writable {
                return None;
            }
            if let Err(e) = connect_result(&self.stream) {
                return Some(ShortEnd::Failed(kind_of(&e), format!("connect: {e}")));
            }
            self.handshake_ns = Some(now);
            self.state = ShortState::Holding;
        }
        if readable {
            let mut buf = [0u8; 4096];
            loop {
                match self.stream.read(&mut buf) {
                    Ok(0) if self.state == ShortState::Reading => {
                        return Some(match response_ok(&self.response) {
                            Ok(()) => ShortEnd::Ok,
                            Err(d) if self.response.is_empty() => ShortEnd::Failed("eof", d),
                            Err(d) => ShortEnd::Failed("bad_response", d),
                        });
                    }
                    Ok(0) => {
                        return Some(ShortEnd::Failed(
                            "eof",
                            "server closed before the request".into(),
                        ))
                    }
                    Ok(n) => {
                        self.response.extend_from_slice(&buf[..n]);
                        if self.state != ShortState::Reading || self.response.len() > MAX_RESPONSE {
                            return Some(ShortEnd::Failed(
                                "bad_response",
                                format!("{} unexpected bytes", self.response.len()),
                            ));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Some(ShortEnd::Failed(kind_of(&e), format!("read: {e}"))),
                }
            }
        }
        if self.state == ShortState::Holding && now >= self.handshake_ns.unwrap_or(now) + hold_ns {
            // The request is far smaller than any socket buffer: one write takes it all.
            match self.stream.write(request) {
                Ok(n) if n == request.len() => self.state = ShortState::Reading,
                Ok(n) => {
                    return Some(ShortEnd::Failed(
                        "other",
                        format!("short write of the request ({n} bytes)"),
                    ))
                }
                Err(e) => return Some(ShortEnd::Failed(kind_of(&e), format!("write: {e}"))),
            }
        }
        None
    }

    fn events(&self) -> libc::c_short {
        match self.state {
            ShortState::Connecting => libc::POLLOUT,
            ShortState::Holding | ShortState::Reading => libc::POLLIN,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run

#[derive(Default)]
struct ShortStats {
    opened: u64,
    ok: u64,
    errors: BTreeMap<&'static str, u64>,
    failures: Vec<Value>,
}

impl ShortStats {
    fn record(&mut self, s: &Short, end: ShortEnd) {
        match end {
            ShortEnd::Ok => self.ok += 1,
            ShortEnd::Failed(kind, detail) => {
                *self.errors.entry(kind).or_default() += 1;
                self.failures.push(json!({
                    "opened_ns": s.opened_ns,
                    "handshake_ns": s.handshake_ns,
                    "local": s.stream.local_addr().ok().map(|a| a.to_string()),
                    "error": kind,
                    "detail": detail,
                }));
            }
        }
    }
}

struct Run {
    args: Args,
    longs: Vec<Long>,
    shorts: Vec<Short>,
    short_stats: ShortStats,
    stalls: Vec<Stall>,
    start_ns: u64,
    ready_ns: Option<u64>,
    stop_ns: Option<u64>,
    buf: Vec<u8>,
    request: Vec<u8>,
}

impl Run {
    fn new(args: Args) -> Run {
        let request = match args.short_target {
            Some(t) => format!(
                "GET / HTTP/1.1\r\nHost: {t}\r\nUser-Agent: flowcheck\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
            None => Vec::new(),
        };
        let buf = vec![0u8; (64 * 1024).max(args.chunk)];
        Run {
            args,
            longs: Vec::new(),
            shorts: Vec::new(),
            short_stats: ShortStats::default(),
            stalls: Vec::new(),
            start_ns: mono_ns(),
            ready_ns: None,
            stop_ns: None,
            buf,
            request,
        }
    }

    /// The source address for the `k`-th connection made.
    fn source(&self, k: u64) -> Option<Ipv4Addr> {
        self.args
            .source_base
            .map(|b| Ipv4Addr::from(u32::from(b) + (k % u64::from(self.args.sources)) as u32))
    }

    fn run(mut self) -> Result<String> {
        self.connect_longs()?;
        let n = self.longs.len();
        let chunk_period_ns = self.args.chunk as u64 * NS / self.args.rate;
        let send_start = mono_ns();
        for l in &mut self.longs {
            l.phase_ns = chunk_period_ns * l.id as u64 / n.max(1) as u64;
        }
        let mut shorts_made = 0u64;
        let mut next_tick = send_start;
        let mut drain_deadline = None;
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        loop {
            let now = mono_ns();
            if DUMP.swap(false, Ordering::Relaxed) {
                eprintln!("{}", self.report(now, true));
            }
            let stop_due = self.args.duration_ns.is_some_and(|d| now >= send_start + d);
            if self.stop_ns.is_none() && (STOP.load(Ordering::Relaxed) || stop_due) {
                self.stop_ns = Some(now);
                drain_deadline = Some(now + self.args.drain_ns);
                let chunk = self.args.chunk;
                for l in self.longs.iter_mut().filter(|l| l.idle) {
                    if l.state == LongState::Open {
                        l.send_probe(now, chunk, &mut self.buf);
                    }
                }
            }
            if let Some(deadline) = drain_deadline {
                self.close_drained();
                let idle =
                    self.longs.iter().all(|l| l.state == LongState::Done) && self.shorts.is_empty();
                if idle || now >= deadline {
                    break;
                }
            }
            if now >= next_tick {
                next_tick = now + TICK_NS;
                if self.stop_ns.is_none() {
                    let (rate, chunk) = (self.args.rate, self.args.chunk);
                    for l in &mut self.longs {
                        if l.state == LongState::Open && !l.idle {
                            l.send(now, rate, chunk, send_start, &mut self.buf);
                        }
                    }
                    if let Some(target) = self.args.short_target {
                        let due = ((now - send_start) as f64 / NS as f64 * self.args.short_rate)
                            as u64
                            + 1;
                        while shorts_made < due {
                            self.open_short(target, shorts_made, now);
                            shorts_made += 1;
                        }
                    }
                }
                self.expire_shorts(now);
            }
            // Poll: long connections first, then short ones.
            pfds.clear();
            for l in &self.longs {
                let fd = l.stream.as_ref().map_or(-1, |s| s.as_raw_fd());
                let mut events = libc::POLLIN;
                if l.write_blocked && l.state == LongState::Open && self.stop_ns.is_none() {
                    events |= libc::POLLOUT;
                }
                pfds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
            }
            for s in &self.shorts {
                pfds.push(libc::pollfd {
                    fd: s.stream.as_raw_fd(),
                    events: s.events(),
                    revents: 0,
                });
            }
            let wait_ms = (next_tick.saturating_sub(mono_ns()) / 1_000_000).max(1) as libc::c_int;
            // SAFETY: pfds is a valid array of pollfd of the length given.
            let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, wait_ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("poll");
            }
            if rc == 0 {
                continue;
            }
            let now = mono_ns();
            let (rate, chunk) = (self.args.rate, self.args.chunk);
            for (l, p) in self.longs.iter_mut().zip(&pfds) {
                if p.fd < 0 || p.revents == 0 {
                    continue;
                }
                if p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                    l.receive(now, &mut self.buf, &mut self.stalls);
                }
                if p.revents & libc::POLLOUT != 0
                    && l.state == LongState::Open
                    && !l.idle
                    && self.stop_ns.is_none()
                {
                    l.send(now, rate, chunk, send_start, &mut self.buf);
                }
            }
            let short_pfds = &pfds[self.longs.len()..];
            let mut finished = Vec::new();
            for (i, (s, p)) in self.shorts.iter_mut().zip(short_pfds).enumerate() {
                if p.revents == 0 {
                    continue;
                }
                let err = p.revents & (libc::POLLERR | libc::POLLHUP) != 0;
                let readable =
                    p.revents & libc::POLLIN != 0 || (err && s.state != ShortState::Connecting);
                let writable = p.revents & libc::POLLOUT != 0 || err;
                if let Some(end) = s.step(
                    now,
                    readable,
                    writable,
                    self.args.short_hold_ns,
                    &self.request,
                ) {
                    finished.push((i, end));
                }
            }
            self.finish_shorts(finished);
        }
        Ok(self.finish())
    }

    /// Opens every long connection and waits (up to the connect timeout) for the handshakes.
    fn connect_longs(&mut self) -> Result<()> {
        for id in 0..self.args.long + self.args.idle {
            let mut l = Long {
                id,
                idle: id >= self.args.long,
                stream: None,
                state: LongState::Connecting,
                phase_ns: 0,
                sent: 0,
                verified: 0,
                waiting_since: None,
                max_stall_ns: 0,
                write_blocked: false,
                error: None,
                first_mismatch: None,
                unclosed: false,
            };
            match start_connect(self.source(id as u64), self.args.target) {
                Ok(s) => l.stream = Some(s),
                Err(e) => l.fail(kind_of(&e), format!("connect: {e}")),
            }
            self.longs.push(l);
        }
        let deadline = mono_ns() + self.args.connect_timeout_ns;
        loop {
            let mut pfds: Vec<libc::pollfd> = self
                .longs
                .iter()
                .map(|l| libc::pollfd {
                    fd: match (&l.stream, l.state) {
                        (Some(s), LongState::Connecting) => s.as_raw_fd(),
                        _ => -1,
                    },
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            if pfds.iter().all(|p| p.fd < 0) || STOP.load(Ordering::Relaxed) {
                break;
            }
            let now = mono_ns();
            if now >= deadline {
                for l in &mut self.longs {
                    if l.state == LongState::Connecting {
                        l.fail("timeout", "connect: no handshake".into());
                    }
                }
                break;
            }
            let wait_ms = ((deadline - now) / 1_000_000).clamp(1, 100) as libc::c_int;
            // SAFETY: pfds is a valid array of pollfd of the length given.
            let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, wait_ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("poll");
            }
            for (l, p) in self.longs.iter_mut().zip(&mut pfds) {
                if p.fd < 0 || p.revents == 0 {
                    continue;
                }
                let res = connect_result(l.stream.as_ref().expect("a connecting stream"));
                match res {
                    Ok(()) => l.state = LongState::Open,
                    Err(e) => l.fail(kind_of(&e), format!("connect: {e}")),
                }
            }
        }
        let open = self
            .longs
            .iter()
            .filter(|l| l.state == LongState::Open)
            .count();
        if open == self.longs.len() {
            self.ready_ns = Some(mono_ns());
            eprintln!("ready");
        } else {
            eprintln!(
                "flowcheck: only {open} of {} long connections established",
                self.longs.len()
            );
        }
        Ok(())
    }

    fn open_short(&mut self, target: SocketAddrV4, k: u64, now: u64) {
        self.short_stats.opened += 1;
        match start_connect(self.source(k), target) {
            Ok(stream) => self.shorts.push(Short {
                stream,
                state: ShortState::Connecting,
                opened_ns: now,
                handshake_ns: None,
                response: Vec::new(),
            }),
            Err(e) => {
                let kind = kind_of(&e);
                *self.short_stats.errors.entry(kind).or_default() += 1;
                self.short_stats.failures.push(json!({
                    "opened_ns": now,
                    "handshake_ns": null,
                    "error": kind,
                    "detail": format!("connect: {e}"),
                }));
            }
        }
    }

    /// Short connections past their own deadline fail as `timeout`; held ones whose hold is
    /// over send their request.
    fn expire_shorts(&mut self, now: u64) {
        let mut finished = Vec::new();
        for (i, s) in self.shorts.iter_mut().enumerate() {
            if now >= s.opened_ns + self.args.short_timeout_ns {
                finished.push((
                    i,
                    ShortEnd::Failed("timeout", format!("not done in time ({:?})", s.state)),
                ));
            } else if s.state == ShortState::Holding {
                if let Some(end) = s.step(now, false, false, self.args.short_hold_ns, &self.request)
                {
                    finished.push((i, end));
                }
            }
        }
        self.finish_shorts(finished);
    }

    /// Records and drops the short connections at these indices (ascending).
    fn finish_shorts(&mut self, finished: Vec<(usize, ShortEnd)>) {
        for (i, end) in finished.into_iter().rev() {
            let s = self.shorts.swap_remove(i);
            self.short_stats.record(&s, end);
        }
    }

    /// After the stop: long connections whose every byte came back send their FIN.
    fn close_drained(&mut self) {
        for l in &mut self.longs {
            if l.state == LongState::Open && l.verified == l.sent {
                if let Some(s) = &l.stream {
                    match s.shutdown(Shutdown::Write) {
                        Ok(()) => l.state = LongState::Closing,
                        Err(e) => {
                            let kind = kind_of(&e);
                            l.fail(kind, format!("shutdown: {e}"));
                        }
                    }
                }
            }
        }
    }

    /// The drain is over: whatever is still open has timed out (or, for a long connection
    /// that got every byte back, merely not seen the server's FIN).
    fn finish(mut self) -> String {
        let now = mono_ns();
        for l in &mut self.longs {
            match l.state {
                LongState::Closing => {
                    l.unclosed = true;
                    l.state = LongState::Done;
                    l.stream = None;
                }
                LongState::Open | LongState::Connecting => {
                    if let Some(since) = l.waiting_since {
                        l.max_stall_ns = l.max_stall_ns.max(now.saturating_sub(since));
                        self.stalls.push(Stall {
                            conn: l.id,
                            start_ns: since,
                            end_ns: now,
                            ongoing: true,
                        });
                    }
                    let detail = format!("{} of {} bytes echoed at the end", l.verified, l.sent);
                    l.fail("timeout", detail);
                }
                LongState::Done => {}
            }
        }
        for s in std::mem::take(&mut self.shorts) {
            let detail = format!("still {:?} at the end", s.state);
            self.short_stats
                .record(&s, ShortEnd::Failed("timeout", detail));
        }
        self.report(now, false).to_string()
    }

    /// The report at `now`. Interim reports count a stall still running up to `now`.
    fn report(&self, now: u64, interim: bool) -> Value {
        let mut stalls = self.stalls.clone();
        let mut per_conn_max = Vec::with_capacity(self.longs.len());
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        let mut failures = Vec::new();
        let mut bytes = 0;
        let mut max_stall = 0;
        let mut idle_ok = 0;
        let mut idle_failures = Vec::new();
        for l in self.longs.iter().filter(|l| l.idle) {
            match &l.error {
                None => idle_ok += 1,
                Some((kind, detail)) => idle_failures.push(json!({
                    "conn": l.id,
                    "error": kind,
                    "detail": detail,
                })),
            }
        }
        let idle_count = self.longs.iter().filter(|l| l.idle).count();
        for l in self.longs.iter().filter(|l| !l.idle) {
            bytes += l.verified;
            let mut m = l.max_stall_ns;
            if let Some(since) = l.waiting_since.filter(|_| interim && l.error.is_none()) {
                m = m.max(now.saturating_sub(since));
                if now.saturating_sub(since) > LISTED_STALL_NS {
                    stalls.push(Stall {
                        conn: l.id,
                        start_ns: since,
                        end_ns: now,
                        ongoing: true,
                    });
                }
            }
            max_stall = max_stall.max(m);
            per_conn_max.push(m as f64 / 1e6);
            match &l.error {
                None => *counts.entry("ok").or_default() += 1,
                Some((kind, detail)) => {
                    *counts.entry(kind).or_default() += 1;
                    failures.push(json!({
                        "conn": l.id,
                        "error": kind,
                        "detail": detail,
                        "bytes": l.verified,
                        "first_mismatch": l.first_mismatch,
                    }));
                }
            }
        }
        // An idle connection's one echo is not a stall of the long ones.
        stalls.retain(|s| s.conn < self.args.long);
        stalls.sort_by_key(|s| (s.start_ns, s.conn));
        let stalls: Vec<Value> = stalls
            .iter()
            .map(|s| {
                json!({
                    "conn": s.conn,
                    "start_ns": s.start_ns,
                    "end_ns": s.end_ns,
                    "ms": (s.end_ns - s.start_ns) as f64 / 1e6,
                    "ongoing": s.ongoing,
                })
            })
            .collect();
        let count = |k: &str| counts.get(k).copied().unwrap_or(0);
        let other = counts
            .iter()
            .filter(|(k, _)| !matches!(**k, "ok" | "reset" | "corrupt" | "eof" | "timeout"))
            .map(|(_, v)| v)
            .sum::<u64>();
        let short = &self.short_stats;
        let mut v = json!({
            "start_ns": self.start_ns,
            "ready_ns": self.ready_ns,
            "stop_ns": self.stop_ns,
            "end_ns": now,
            "long": {
                "count": self.longs.len() - idle_count,
                "ok": count("ok"),
                "reset": count("reset"),
                "corrupt": count("corrupt"),
                "eof": count("eof"),
                "timeout": count("timeout"),
                "other": other,
                "unclosed": self.longs.iter().filter(|l| l.unclosed && !l.idle).count(),
                "bytes": bytes,
                "max_stall_ms": max_stall as f64 / 1e6,
                "stalls": stalls,
                "failures": failures,
            },
            "idle": {
                "count": idle_count,
                "ok": idle_ok,
                "failures": idle_failures,
            },
            "short": {
                "opened": short.opened,
                "ok": short.ok,
                "failed": short.errors.values().sum::<u64>(),
                "in_flight": self.shorts.len(),
                "errors": short.errors,
                "failures": short.failures,
            },
        });
        if interim {
            v["interim"] = json!(true);
            v["long"]["conn_max_stall_ms"] = json!(per_conn_max);
        }
        v
    }
}
