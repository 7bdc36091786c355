//! One probe of one real server: the non-blocking socket or child process of each check
//! kind, advanced by the checker's poll loop, and the HTTP answer parser (pure, tested on
//! byte strings).
//!
//! A probe never blocks: [`Probe::start`] opens the socket (or spawns the program) and
//! either finishes at once or hands back a [`Probe`] whose [`Probe::pollfd`] the loop waits
//! on; [`Probe::ready`] advances it; at its deadline the loop calls [`Probe::expire`].
//! Killed exec children go to the [`Reaper`], which the loop also polls, so no child is left
//! a zombie and no wait ever blocks the loop.

use std::io::{self, Read};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use socket2::{Domain, SockRef, Socket, Type};

use crate::config::duration::format_duration;
use crate::config::{Check, CheckKind};

use super::TargetKey;

/// What is kept of an HTTP answer (status line, headers and body) or a UDP reply.
pub const ANSWER_LIMIT: usize = 64 * 1024;

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// What decided it, in words: `"HTTP 503 from 198.18.2.11:8080"`.
    pub detail: String,
}

impl Outcome {
    fn ok(detail: impl Into<String>) -> Outcome {
        Outcome {
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(detail: impl Into<String>) -> Outcome {
        Outcome {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What [`Probe::start`] gives back.
pub enum Start {
    /// Under way: poll it.
    Running(Probe),
    /// Decided at once (a refused connect on loopback, a program that cannot start).
    Done(Outcome),
}

/// A probe under way.
pub struct Probe {
    dest: SocketAddrV4,
    timeout: Duration,
    deadline: Instant,
    io: Io,
}

enum Io {
    /// Connecting; done when connected.
    Tcp(OwnedFd),
    Http(Box<Http>),
    Udp {
        fd: OwnedFd,
        expect: Option<String>,
    },
    Exec(Child),
}

struct Http {
    fd: OwnedFd,
    connected: bool,
    request: Vec<u8>,
    sent: usize,
    answer: Vec<u8>,
    status: Option<Vec<u16>>,
    body: Option<String>,
}

impl Probe {
    /// Starts the probe of `key` by `check`; its deadline is `now + check.timeout`.
    ///
    /// The probe goes to the real server's address, on `check.port` or else the real's port,
    /// from whatever source address the kernel picks (nothing is bound).
    pub fn start(key: &TargetKey, check: &Check, now: Instant) -> Start {
        let dest = SocketAddrV4::new(*key.real.ip(), check.port.unwrap_or(key.real.port()));
        let io = match &check.kind {
            CheckKind::Tcp => match connect_stream(dest) {
                Ok((fd, false)) => Io::Tcp(fd),
                Ok((_, true)) => return Start::Done(Outcome::ok(format!("connected to {dest}"))),
                Err(e) => return Start::Done(connect_failed(dest, &e)),
            },
            CheckKind::Http { path, status, body } => match connect_stream(dest) {
                Ok((fd, connected)) => Io::Http(Box::new(Http {
                    fd,
                    connected,
                    request: format!(
                        "GET {path} HTTP/1.1\r\nHost: {dest}\r\nUser-Agent: director-health\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                    sent: 0,
                    answer: Vec::new(),
                    status: status.clone(),
                    body: body.clone(),
                })),
                Err(e) => return Start::Done(connect_failed(dest, &e)),
            },
            CheckKind::Udp { payload, expect } => match udp_send(dest, payload.as_bytes()) {
                Ok(fd) => Io::Udp {
                    fd,
                    expect: expect.clone(),
                },
                Err(e) => return Start::Done(udp_failed(dest, "send", &e)),
            },
            CheckKind::Exec { command } => match Child::spawn(command, key, dest.port()) {
                Ok(child) => Io::Exec(child),
                Err(outcome) => return Start::Done(outcome),
            },
        };
        let mut probe = Probe {
            dest,
            timeout: check.timeout,
            deadline: now + check.timeout,
            io,
        };
        // An HTTP connect that completed at once goes straight on to sending.
        if let Io::Http(h) = &mut probe.io {
            if h.connected {
                if let Some(outcome) = h.advance(dest, 0) {
                    return Start::Done(outcome);
                }
            }
        }
        Start::Running(probe)
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// What to wait for.
    pub fn pollfd(&self) -> libc::pollfd {
        let (fd, events) = match &self.io {
            Io::Tcp(fd) => (fd.as_raw_fd(), libc::POLLOUT),
            Io::Http(h) if !h.connected || h.sent < h.request.len() => {
                (h.fd.as_raw_fd(), libc::POLLOUT)
            }
            Io::Http(h) => (h.fd.as_raw_fd(), libc::POLLIN),
            Io::Udp { fd, .. } => (fd.as_raw_fd(), libc::POLLIN),
            Io::Exec(child) => (child.pidfd.as_raw_fd(), libc::POLLIN),
        };
        libc::pollfd {
            fd,
            events,
            revents: 0,
        }
    }

    /// Advances the probe after poll reported `revents` on its fd; `Some` when decided.
    pub fn ready(&mut self, revents: libc::c_short) -> Option<Outcome> {
        let dest = self.dest;
        match &mut self.io {
            Io::Tcp(fd) => Some(match so_error(fd.as_fd()) {
                Ok(()) => Outcome::ok(format!("connected to {dest}")),
                Err(e) => connect_failed(dest, &e),
            }),
            Io::Http(h) => h.advance(dest, revents),
            Io::Udp { fd, expect } => udp_receive(fd.as_fd(), dest, expect.as_deref()),
            Io::Exec(child) => {
                // The pidfd is readable: the program has ended. Whatever it left running in
                // its group goes too; then the program is reaped.
                child.kill_group();
                let status = child.try_reap()?;
                Some(exit_outcome(status))
            }
        }
    }

    /// The deadline has passed: the probe fails. An exec child is killed and handed to
    /// `reaper`.
    pub fn expire(self, reaper: &mut Reaper) -> Outcome {
        let t = format_duration(self.timeout);
        let detail = match &self.io {
            Io::Tcp(_) => format!("no connection to {} in {t}", self.dest),
            Io::Http(h) if !h.connected => format!("no connection to {} in {t}", self.dest),
            Io::Http(h) => format!(
                "no complete answer from {} in {t} ({} bytes received)",
                self.dest,
                h.answer.len()
            ),
            Io::Udp { .. } => format!("no reply from {} in {t}", self.dest),
            Io::Exec(_) => format!("timed out after {t}, killed"),
        };
        self.abandon(reaper);
        Outcome::fail(detail)
    }

    /// Drops the probe undecided (its target is gone): sockets close, a child is killed
    /// and handed to `reaper`.
    pub fn abandon(self, reaper: &mut Reaper) {
        if let Io::Exec(child) = self.io {
            child.kill_group();
            reaper.children.push(child);
        }
    }
}

impl Http {
    /// Connects, sends, reads: as far as the socket allows without blocking.
    fn advance(&mut self, dest: SocketAddrV4, revents: libc::c_short) -> Option<Outcome> {
        let fd = self.fd.as_fd();
        if !self.connected {
            if let Err(e) = so_error(fd) {
                return Some(connect_failed(dest, &e));
            }
            self.connected = true;
        }
        while self.sent < self.request.len() {
            match send(fd, &self.request[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => return Some(Outcome::fail(format!("send to {dest}: {}", os_text(&e)))),
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            // Just finished sending; wait for the answer.
            return None;
        }
        let mut eof = false;
        let mut error = None;
        let mut buf = [0u8; 16 * 1024];
        while self.answer.len() < ANSWER_LIMIT {
            match recv(fd, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let keep = n.min(ANSWER_LIMIT - self.answer.len());
                    self.answer.extend_from_slice(&buf[..keep]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let full = self.answer.len() >= ANSWER_LIMIT;
        // What was received is judged first: a complete or a malformed answer says more
        // than the reset that may follow it (a server that closes without reading the
        // request resets the connection).
        let parsed = match parse_response(&self.answer, false, full) {
            Parse::Partial if eof => parse_response(&self.answer, true, full),
            parsed => parsed,
        };
        match (parsed, error) {
            (Parse::Partial, None) => None,
            (Parse::Partial, Some(e)) => Some(Outcome::fail(format!(
                "read from {dest}: {} ({} bytes received)",
                os_text(&e),
                self.answer.len()
            ))),
            (Parse::Bad(why), _) => Some(Outcome::fail(format!(
                "malformed answer from {dest}: {why}"
            ))),
            (Parse::Done(response), _) => Some(judge(
                &response,
                dest,
                self.status.as_deref(),
                self.body.as_deref(),
            )),
        }
    }
}

/// The verdict on a complete HTTP answer.
fn judge(
    response: &Response,
    dest: SocketAddrV4,
    status: Option<&[u16]>,
    body: Option<&str>,
) -> Outcome {
    let code = response.status;
    let status_ok = match status {
        Some(list) => list.contains(&code),
        None => (200..=299).contains(&code),
    };
    if !status_ok {
        return Outcome::fail(format!("HTTP {code} from {dest}"));
    }
    if let Some(needle) = body {
        if !contains(&response.body, needle.as_bytes()) {
            let kept = if response.truncated {
                format!(" (first {} bytes kept)", response.body.len())
            } else {
                String::new()
            };
            return Outcome::fail(format!(
                "HTTP {code} from {dest}, body has no {needle:?}{kept}"
            ));
        }
    }
    Outcome::ok(format!("HTTP {code} from {dest}"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

// --- HTTP answer parsing ---------------------------------------------------------------

/// A complete HTTP answer, as far as the checker cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The answer was longer than [`ANSWER_LIMIT`]; `body` is its beginning.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed.
    Partial,
    Done(Response),
    /// Not an HTTP/1 answer, or cut short; the reason in words.
    Bad(String),
}

/// Parses the bytes of an HTTP/1.x answer received so far.
///
/// `eof`: the server closed the connection after these bytes. `full`: the buffer reached
/// [`ANSWER_LIMIT`] and no more will be read, so a body still open counts as complete
/// (truncated). Interim 1xx answers (other than 101) are skipped. The body ends as the
/// headers say: no body for 1xx/204/304, chunked, `Content-Length`, else at close.
pub fn parse_response(buf: &[u8], eof: bool, full: bool) -> Parse {
    let mut start = 0;
    loop {
        let rest = &buf[start..];
        let Some((head_len, body_at)) = head_end(rest) else {
            return if eof {
                Parse::Bad(if buf.is_empty() {
                    "connection closed with no answer".to_owned()
                } else {
                    format!("connection closed in the headers after {} bytes", buf.len())
                })
            } else if full {
                Parse::Bad(format!("headers longer than {} KiB", ANSWER_LIMIT / 1024))
            } else if !rest.is_empty() && !b"HTTP/".starts_with(&rest[..rest.len().min(5)]) {
                // Fail fast on something that is not HTTP at all.
                Parse::Bad(format!("status line {:?}", printable(first_line(rest))))
            } else {
                Parse::Partial
            };
        };
        let head = match Head::parse(&rest[..head_len]) {
            Ok(head) => head,
            Err(why) => return Parse::Bad(why),
        };
        let body = &rest[body_at..];
        if (100..200).contains(&head.status) && head.status != 101 {
            start += body_at;
            continue;
        }
        let done = |body: Vec<u8>, truncated: bool| {
            Parse::Done(Response {
                status: head.status,
                body,
                truncated,
            })
        };
        if matches!(head.status, 101 | 204 | 304) {
            return done(Vec::new(), false);
        }
        if head.chunked {
            return match dechunk(body) {
                Ok(Some(body)) => done(body, false),
                Ok(None) if full => done(dechunk_prefix(body), true),
                Ok(None) if eof => Parse::Bad("connection closed in the chunked body".to_owned()),
                Ok(None) => Parse::Partial,
                Err(why) => Parse::Bad(why),
            };
        }
        if let Some(len) = head.content_length {
            let have = body.len() as u64;
            return if have >= len {
                done(body[..len as usize].to_vec(), false)
            } else if full {
                done(body.to_vec(), true)
            } else if eof {
                Parse::Bad(format!(
                    "connection closed after {have} of {len} body bytes"
                ))
            } else {
                Parse::Partial
            };
        }
        return if eof || full {
            done(body.to_vec(), full && !eof)
        } else {
            Parse::Partial
        };
    }
}

/// The status line and the headers that frame the body.
struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<u64>,
}

impl Head {
    fn parse(head: &[u8]) -> Result<Head, String> {
        let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, |&b| b == b' ');
        let version = parts.next().unwrap_or_default();
        let code = parts.next().unwrap_or_default();
        let bad_status = || format!("status line {:?}", printable(status_line));
        if !(version == b"HTTP/1.1" || version == b"HTTP/1.0") {
            return Err(bad_status());
        }
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return Err(bad_status());
        }
        let status = std::str::from_utf8(code)
            .ok()
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..=999).contains(c))
            .ok_or_else(bad_status)?;
        let mut chunked = false;
        let mut content_length = None;
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(format!("header line {:?}", printable(line)));
            };
            let name = &line[..colon];
            let value = trim(&line[colon + 1..]);
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // The last coding decides the framing (RFC 9112 §6.3).
                let last = value.rsplit(|&b| b == b',').next().map(trim);
                chunked = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                let len = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| format!("Content-Length {:?}", printable(value)))?;
                if content_length.is_some_and(|l| l != len) {
                    return Err("two different Content-Length headers".to_owned());
                }
                content_length = Some(len);
            }
        }
        Ok(Head {
            status,
            chunked,
            content_length,
        })
    }
}

/// Length of the head without its blank line, and where the body starts.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(nl) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + nl;
        // The blank line: "\n\n" or "\n\r\n".
        if buf.get(nl + 1) == Some(&b'\n') {
            return Some((nl, nl + 2));
        }
        if buf.get(nl + 1) == Some(&b'\r') && buf.get(nl + 2) == Some(&b'\n') {
            return Some((nl, nl + 3));
        }
        i = nl + 1;
    }
    None
}

/// The whole body of a chunked answer: `Ok(None)` while incomplete.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let size = chunk_size(trim_cr(&rest[..nl]))?;
        rest = &rest[nl + 1..];
        if size == 0 {
            // Trailers, then a blank line.
            loop {
                let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                    return Ok(None);
                };
                if trim_cr(&rest[..nl]).is_empty() {
                    return Ok(Some(body));
                }
                rest = &rest[nl + 1..];
            }
        }
        if (rest.len() as u64) < size {
            return Ok(None);
        }
        let size = size as usize;
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        match rest {
            [b'\r', b'\n', more @ ..] | [b'\n', more @ ..] => rest = more,
            [] | [b'\r'] => return Ok(None),
            _ => return Err("chunk not followed by CRLF".to_owned()),
        }
    }
}

/// The chunk data present in a truncated chunked body.
fn dechunk_prefix(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let Ok(size) = chunk_size(trim_cr(&rest[..nl])) else {
            break;
        };
        rest = &rest[nl + 1..];
        let take = rest.len().min(usize::try_from(size).unwrap_or(usize::MAX));
        body.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
            .unwrap_or(rest);
        if size == 0 || take == 0 {
            break;
        }
    }
    body
}

fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let hex = trim(line.split(|&b| b == b';').next().unwrap_or_default());
    std::str::from_utf8(hex)
        .ok()
        .filter(|h| !h.is_empty() && h.len() <= 15)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| format!("chunk size {:?}", printable(line)))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

fn first_line(buf: &[u8]) -> &[u8] {
    trim_cr(buf.split(|&b| b == b'\n').next().unwrap_or_default())
}

/// At most 60 characters of `bytes`, lossily decoded, for a message.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).into_owned()
}

// --- UDP -------------------------------------------------------------------------------

fn udp_send(dest: SocketAddrV4, payload: &[u8]) -> io::Result<OwnedFd> {
    let fd = socket(Type::DGRAM)?;
    // A connected UDP socket: replies from elsewhere are not ours, and an ICMP port
    // unreachable from the real server comes back as ECONNREFUSED.
    sys_connect(fd.as_fd(), dest)?;
    send(fd.as_fd(), payload)?;
    Ok(fd)
}

fn udp_receive(fd: BorrowedFd<'_>, dest: SocketAddrV4, expect: Option<&str>) -> Option<Outcome> {
    let mut buf = vec![0u8; ANSWER_LIMIT];
    match recv(fd, &mut buf) {
        Ok(n) => {
            let reply = &buf[..n];
            Some(match expect {
                Some(want) if !contains(reply, want.as_bytes()) => {
                    Outcome::fail(format!("reply of {n} bytes from {dest} has no {want:?}"))
                }
                _ => Outcome::ok(format!("reply of {n} bytes from {dest}")),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => Some(udp_failed(dest, "recv", &e)),
    }
}

fn udp_failed(dest: SocketAddrV4, op: &str, e: &io::Error) -> Outcome {
    if e.raw_os_error() == Some(libc::ECONNREFUSED) {
        Outcome::fail(format!(
            "{op}: connection refused (ICMP port unreachable from {dest})"
        ))
    } else {
        Outcome::fail(format!("{op} to {dest}: {}", os_text(e)))
    }
}

// --- exec ------------------------------------------------------------------------------

/// A check program, in its own process group, with a pidfd to poll for its exit.
pub struct Child {
    child: std::process::Child,
    pidfd: OwnedFd,
    reaped: bool,
}

impl Child {
    fn spawn(command: &[String], key: &TargetKey, port: u16) -> Result<Child, Outcome> {
        let Some((program, args)) = command.split_first() else {
            return Err(Outcome::fail("exec check has no command"));
        };
        // std resets the signal mask and dispositions in the child, so the daemon's
        // blocked signals do not reach the check program.
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env("DIRECTOR_SERVICE", &key.service)
            .env("DIRECTOR_REAL_ADDR", key.real.ip().to_string())
            .env("DIRECTOR_REAL_PORT", key.real.port().to_string())
            .env("DIRECTOR_CHECK_PORT", port.to_string())
            .process_group(0)
            .spawn()
            .map_err(|e| Outcome::fail(format!("cannot start {program}: {}", os_text(&e))))?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1. The pid is
        // our unreaped child, so it cannot have been reused.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(Outcome::fail(format!("pidfd_open: {}", os_text(&e))));
        }
        // SAFETY: a new fd from pidfd_open, owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        Ok(Child {
            child,
            pidfd,
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL to the child's whole process group (what the check program started, too).
    fn kill_group(&self) {
        if !self.reaped {
            // The child is not reaped, so its pid (= the group id) is still ours.
            let _ = killpg(
                Pid::from_raw(self.child.id() as libc::pid_t),
                Signal::SIGKILL,
            );
        }
    }

    /// After the pidfd polled readable: the exit status, reaping the child.
    fn try_reap(&mut self) -> Option<io::Result<ExitStatus>> {
        if self.reaped {
            return None;
        }
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                self.reaped = true;
                Some(Ok(status))
            }
            Err(e) => {
                // ECHILD: someone else reaped it (SIGCHLD ignored); nothing left to wait for.
                self.reaped = true;
                Some(Err(e))
            }
        }
    }
}

impl Drop for Child {
    /// Never leaves a zombie: kill and wait (blocking, only at stop or on an error path).
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_group();
            let _ = self.child.wait();
        }
    }
}

fn exit_outcome(status: io::Result<ExitStatus>) -> Outcome {
    match status {
        Ok(s) if s.success() => Outcome::ok("exit status 0"),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => Outcome::fail(format!("exit status {code}")),
            (None, Some(sig)) => Outcome::fail(format!("killed by signal {sig}")),
            (None, None) => Outcome::fail(format!("ended with {s}")),
        },
        Err(e) => Outcome::fail(format!("exit status unknown: {}", os_text(&e))),
    }
}

/// Killed children not yet reaped. The loop polls their pidfds and reaps each as it exits.
#[derive(Default)]
pub struct Reaper {
    children: Vec<Child>,
}

impl Reaper {
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Appends one `pollfd` per child, in order.
    pub fn pollfds(&self, out: &mut Vec<libc::pollfd>) {
        out.extend(self.children.iter().map(|c| libc::pollfd {
            fd: c.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
    }

    /// Reaps the children whose pollfd (from [`Reaper::pollfds`], same order) is readable.
    pub fn reap(&mut self, polled: &[libc::pollfd]) {
        let mut i = 0;
        self.children.retain_mut(|child| {
            let readable = polled.get(i).is_some_and(|p| p.revents != 0);
            i += 1;
            if readable {
                if let Some(status) = child.try_reap() {
                    tracing::debug!(pid = child.pid(), ?status, "killed check program reaped");
                    return false;
                }
            }
            true
        });
    }
}

// --- sockets ---------------------------------------------------------------------------

fn socket(ty: Type) -> io::Result<OwnedFd> {
    Ok(Socket::new(Domain::IPV4, ty.nonblocking().cloexec(), None)?.into())
}

/// A non-blocking TCP connect; `true` when it completed at once.
fn connect_stream(dest: SocketAddrV4) -> io::Result<(OwnedFd, bool)> {
    let fd = socket(Type::STREAM)?;
    match sys_connect(fd.as_fd(), dest) {
        Ok(()) => Ok((fd, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((fd, false)),
        Err(e) => Err(e),
    }
}

fn sys_connect(fd: BorrowedFd<'_>, dest: SocketAddrV4) -> io::Result<()> {
    SockRef::from(&fd).connect(&SocketAddr::V4(dest).into())
}

/// The result of a non-blocking connect (`SO_ERROR`).
fn so_error(fd: BorrowedFd<'_>) -> io::Result<()> {
    match SockRef::from(&fd).take_error()? {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// MSG_NOSIGNAL: a reset peer gives EPIPE, not SIGPIPE.
fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    SockRef::from(&fd).send_with_flags(buf, libc::MSG_NOSIGNAL)
}

fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    (&*SockRef::from(&fd)).read(buf)
}

fn connect_failed(dest: SocketAddrV4, e: &io::Error) -> Outcome {
    Outcome::fail(format!("connect to {dest}: {}", os_text(e)))
}

/// An OS error as a person reads it: "connection refused", without "(os error 111)".
pub fn os_text(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: u16, body: &[u8]) -> Parse {
        Parse::Done(Response {
            status,
            body: body.to_vec(),
            truncated: false,
        })
    }

    #[test]
    fn content_length_answer_is_complete_when_the_body_is() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
        assert_eq!(parse_response(a, false, false), done(200, b"hello"));
        assert_eq!(
            parse_response(&a[..a.len() - 1], false, false),
            Parse::Partial
        );
        // Bytes after the body (a server ignoring Connection: close) are not ours.
        let mut more = a.to_vec();
        more.extend_from_slice(b"junk");
        assert_eq!(parse_response(&more, false, false), done(200, b"hello"));
    }

    #[test]
    fn every_prefix_of_a_good_answer_is_partial() {
        let a = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown";
        for end in 0..a.len() {
            assert_eq!(
                parse_response(&a[..end], false, false),
                Parse::Partial,
                "{end}"
            );
        }
        assert_eq!(parse_response(a, false, false), done(503, b"down"));
    }

    #[test]
    fn chunked_answer_ends_at_the_zero_chunk_and_its_trailers() {
        let a = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(parse_response(a, false, false), done(200, b"abcdefg"));
        for end in 0..a.len() {
            assert_eq!(
                parse_response(&a[..end], false, false),
                Parse::Partial,
                "{end}"
            );
        }
    }

    #[test]
    fn answer_without_length_ends_at_close() {
        let a = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nall good";
        assert_eq!(parse_response(a, false, false), Parse::Partial);
        assert_eq!(parse_response(a, true, false), done(200, b"all good"));
    }

    #[test]
    fn bare_newlines_and_interim_answers_are_accepted() {
        let a = b"HTTP/1.1 100 Continue\n\nHTTP/1.1 204 No Content\nX: y\n\n";
        assert_eq!(parse_response(a, false, false), done(204, b""));
    }

    #[test]
    fn full_buffer_keeps_the_beginning_of_the_body() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nstart";
        assert_eq!(
            parse_response(a, false, true),
            Parse::Done(Response {
                status: 200,
                body: b"start".to_vec(),
                truncated: true
            })
        );
    }

    #[test]
    fn malformed_answers_say_what_is_wrong() {
        let cases: &[(&[u8], bool, &str)] = &[
            (b"", true, "connection closed with no answer"),
            (
                b"SSH-2.0-OpenSSH_9.2\r\n",
                false,
                "status line \"SSH-2.0-OpenSSH_9.2\"",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", false, "status line"),
            (b"HTTP/2 200\r\n\r\n", false, "status line \"HTTP/2 200\""),
            (
                b"HTTP/1.1 200 OK\r\nContent-Le",
                true,
                "connection closed in the headers",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                false,
                "Content-Length \"x\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                "two different Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                false,
                "header line \"no colon\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                true,
                "connection closed after 3 of 10 body bytes",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                false,
                "chunk size \"zz\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX",
                false,
                "chunk not followed by CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
                true,
                "connection closed in the chunked body",
            ),
        ];
        for (bytes, eof, want) in cases {
            match parse_response(bytes, *eof, false) {
                Parse::Bad(why) => assert!(why.contains(want), "{bytes:?}: {why:?} lacks {want:?}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn judge_checks_status_set_and_body() {
        let dest: SocketAddrV4 = "198.18.2.11:8080".parse().expect("literal");
        let r = |status, body: &[u8]| Response {
            status,
            body: body.to_vec(),
            truncated: false,
        };
        assert_eq!(
            judge(&r(200, b"x"), dest, None, None),
            Outcome::ok("HTTP 200 from 198.18.2.11:8080")
        );
        assert_eq!(
            judge(&r(503, b""), dest, None, None),
            Outcome::fail("HTTP 503 from 198.18.2.11:8080")
        );
        assert!(judge(&r(503, b""), dest, Some(&[503]), None).ok);
        assert!(!judge(&r(200, b""), dest, Some(&[301, 302]), None).ok);
        assert_eq!(
            judge(&r(200, b"status: bad"), dest, None, Some("ok")),
            Outcome::fail("HTTP 200 from 198.18.2.11:8080, body has no \"ok\"")
        );
        assert!(judge(&r(200, b"all ok here"), dest, None, Some("ok")).ok);
    }

    #[test]
    fn os_text_reads_like_a_sentence() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(os_text(&e), "connection refused");
    }
}
