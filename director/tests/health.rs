//! The health checker against real sockets on 127.0.0.1 and real programs: servers that
//! answer well, answer 503, answer without the wanted body, trickle, refuse, stay silent;
//! `/bin/true`, `/bin/false`, `/bin/sleep`. Waits are generous polling loops; the only
//! numbers asserted are probe counts.
//!
//! The checker's benchmarks (detection time, CPU for 500 targets) are a bench command:
//! `cargo bench -p director --bench checker`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use director::config::{Check, CheckKind, OnFail};
use director::health::{Checker, Health, Statuses, Target, TargetKey, TargetStatus};

// --- helpers -----------------------------------------------------------------------------

fn check(kind: CheckKind, interval_ms: u64, timeout_ms: u64, rise: u32, fall: u32) -> Check {
    Check {
        kind,
        port: None,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        rise,
        fall,
        on_fail: OnFail::Inhibit,
    }
}

fn http(body: Option<&str>) -> CheckKind {
    CheckKind::Http {
        path: "/healthz".to_owned(),
        status: None,
        body: body.map(str::to_owned),
    }
}

fn udp(payload: &str, expect: Option<&str>) -> CheckKind {
    CheckKind::Udp {
        payload: payload.to_owned(),
        expect: expect.map(str::to_owned),
    }
}

fn exec(argv: &[&str]) -> CheckKind {
    CheckKind::Exec {
        command: argv.iter().map(|s| s.to_string()).collect(),
    }
}

fn key(service: &str, real: SocketAddrV4) -> TargetKey {
    TargetKey {
        service: service.to_owned(),
        real,
    }
}

fn target(service: &str, real: SocketAddrV4, check: Check) -> Target {
    Target {
        key: key(service, real),
        check,
    }
}

/// A transition as `on_change` saw it, with the target's state at that moment.
#[derive(Debug, Clone)]
struct Seen {
    key: TargetKey,
    health: Health,
    detail: String,
    status: Option<TargetStatus>,
}

/// A checker whose transitions are recorded.
struct Harness {
    checker: Option<Checker>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Harness {
    fn start(targets: Vec<Target>) -> Harness {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handle: Arc<OnceLock<Statuses>> = Arc::default();
        let (s, h) = (seen.clone(), handle.clone());
        let checker = Checker::start(
            targets,
            Box::new(move |key, health, detail| {
                // The handle is set right after start; a transition can come first.
                let statuses = loop {
                    if let Some(st) = h.get() {
                        break st;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                let status = statuses.get(key);
                s.lock().unwrap().push(Seen {
                    key: key.clone(),
                    health,
                    detail: detail.to_owned(),
                    status,
                });
            }),
        )
        .expect("start the checker");
        handle
            .set(checker.statuses())
            .unwrap_or_else(|_| unreachable!());
        Harness {
            checker: Some(checker),
            seen,
        }
    }

    fn checker(&self) -> &Checker {
        self.checker.as_ref().expect("running")
    }

    fn status(&self, key: &TargetKey) -> TargetStatus {
        self.checker()
            .snapshot()
            .into_iter()
            .find(|s| &s.key == key)
            .unwrap_or_else(|| panic!("{key:?} not in the snapshot"))
    }

    /// Waits (up to 10 s) until `key` has finished at least `n` probes.
    fn wait_probes(&self, key: &TargetKey, n: u64) -> TargetStatus {
        wait_for(&format!("{n} probes of {key:?}"), || {
            let s = self.status(key);
            (s.probes >= n).then_some(s)
        })
    }

    /// Waits (up to 10 s) for the `nth` (from 1) transition of `key`.
    fn wait_change(&self, key: &TargetKey, nth: usize) -> Seen {
        wait_for(&format!("transition {nth} of {key:?}"), || {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|s| &s.key == key)
                .nth(nth - 1)
                .cloned()
        })
    }

    fn changes_of(&self, key: &TargetKey) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|s| &s.key == key).cloned().collect()
    }

    fn stop(&mut self) {
        if let Some(c) = self.checker.take() {
            c.stop();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `f` every 10 ms for up to 10 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn loopback(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

/// A port with nothing listening (bound, then released).
fn closed_tcp_port() -> SocketAddrV4 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    loopback(l.local_addr().expect("addr").port())
}

fn closed_udp_port() -> SocketAddrV4 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    loopback(s.local_addr().expect("addr").port())
}

// --- servers -----------------------------------------------------------------------------

/// What the test HTTP server does with a request.
#[derive(Clone, Debug)]
enum Answer {
    /// This status with this body (Content-Length framing).
    Status(u16, &'static str),
    /// A good answer, one byte every 100 ms.
    Trickle,
}

/// An HTTP server on 127.0.0.1 whose answer can be changed while it runs.
struct HttpServer {
    addr: SocketAddrV4,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    fn start(answer: Answer) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = loopback(listener.local_addr().expect("addr").port());
        let answer = Arc::new(Mutex::new(answer));
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, r, s) = (answer.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (a, r, s) = (a.clone(), r.clone(), s.clone());
                        std::thread::spawn(move || serve(conn, &a, &r, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HttpServer {
            addr,
            answer,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

fn serve(
    mut conn: TcpStream,
    answer: &Mutex<Answer>,
    requests: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    conn.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.ends_with(b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    requests
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&request).into_owned());
    let answer = answer.lock().unwrap().clone();
    match answer {
        Answer::Status(code, body) => {
            let _ = write!(
                conn,
                "HTTP/1.1 {code} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Answer::Trickle => {
            let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            for b in whole {
                if stop.load(Ordering::Relaxed) || conn.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A TCP listener that accepts and drops every connection.
struct TcpServer {
    addr: SocketAddrV4,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    fn start() -> TcpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = loopback(listener.local_addr().expect("addr").port());
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        TcpServer {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("listener thread");
        }
    }
}

/// A UDP server that echoes each datagram with a prefix, or (`echo = false`) reads and
/// never answers.
struct UdpServer {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    fn start(echo: bool) -> UdpServer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = loopback(sock.local_addr().expect("addr").port());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if echo {
                        let mut reply = b"echo:".to_vec();
                        reply.extend_from_slice(&buf[..n]);
                        let _ = sock.send_to(&reply, from);
                    }
                }
            }
        });
        UdpServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("udp thread");
        }
    }
}

// --- child processes -----------------------------------------------------------------------

/// Tests that start programs hold this, so one test's children are not another's.
static CHILDREN: Mutex<()> = Mutex::new(());

fn children_lock() -> MutexGuard<'static, ()> {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Our child processes: (pid, comm, state letter).
fn children() -> Vec<(i32, String, char)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ..."; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = rest.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == me {
            out.push((pid, comm, state));
        }
    }
    out
}

/// `waitpid(-1, WNOHANG)` fails with ECHILD: this process has no child at all, not even a
/// zombie.
fn no_child_at_all() -> bool {
    // SAFETY: plain syscall with a null status pointer.
    let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
}

// --- HTTP ----------------------------------------------------------------------------------

#[test]
fn http_healthy_server_stays_up_and_gets_a_proper_request() {
    let server = HttpServer::start(Answer::Status(200, "all ok"));
    // Healthy targets get generous timeouts and fall = 3, so a loaded machine does not
    // make them fail.
    let t = target("web", server.addr, check(http(Some("ok")), 100, 100, 1, 3));
    let k = t.key.clone();
    let h = Harness::start(vec![t]);
    let s = h.wait_probes(&k, 3);
    assert_eq!(s.health, Health::Up);
    let last = s.last.expect("a result");
    assert!(last.ok);
    assert_eq!(last.detail, format!("HTTP 200 from {}", server.addr));
    assert!(h.changes_of(&k).is_empty());
    let request = server.requests.lock().unwrap()[0].clone();
    assert_eq!(
        request,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nUser-Agent: director-health\r\nConnection: close\r\n\r\n",
            server.addr
        )
    );
}

#[test]
fn http_503_is_down_after_exactly_fall_failures_and_up_after_exactly_rise_successes() {
    let server = HttpServer::start(Answer::Status(503, "maintenance"));
    let t = target("web", server.addr, check(http(None), 50, 40, 2, 3));
    let k = t.key.clone();
    let h = Harness::start(vec![t]);

    let down = h.wait_change(&k, 1);
    assert_eq!(down.health, Health::Down);
    assert_eq!(down.detail, format!("HTTP 503 from {}", server.addr));
    let at_down = down.status.expect("state at the transition");
    // Up at start, three failures in a row: down on the third probe.
    assert_eq!((at_down.probes, at_down.consecutive_fail), (3, 3));
    assert_eq!(at_down.last_change.as_ref().map(|c| c.probe), Some(3));

    server.set(Answer::Status(200, "fine"));
    let up = h.wait_change(&k, 2);
    assert_eq!(up.health, Health::Up);
    assert_eq!(up.detail, format!("HTTP 200 from {}", server.addr));
    let at_up = up.status.expect("state at the transition");
    assert_eq!(at_up.consecutive_ok, 2, "up on the second success in a row");
    assert_eq!(
        at_up.last_change.as_ref().map(|c| c.probe),
        Some(at_up.probes)
    );
    // The two successes were preceded only by failures since the Down.
    assert!(at_up.probes >= at_down.probes + 2);
    assert_eq!(h.changes_of(&k).len(), 2);
}

#[test]
fn http_status_list_accepts_what_it_names() {
    let server = HttpServer::start(Answer::Status(503, "sorry"));
    let kind = CheckKind::Http {
        path: "/".to_owned(),
        status: Some(vec![200, 503]),
        body: None,
    };
    let t = target("web", server.addr, check(kind, 100, 100, 1, 3));
    let k = t.key.clone();
    let h = Harness::start(vec![t]);
    let s = h.wait_probes(&k, 3);
    assert_eq!(s.health, Health::Up);
    assert_eq!(
        s.last.map(|l| l.detail),
        Some(format!("HTTP 503 from {}", server.addr))
    );
    assert!(h.changes_of(&k).is_empty());
}

#[test]
fn http_body_without_the_match_fails() {
    let server = HttpServer::start(Answer::Status(200, "status: degraded"));
    let t = target("web", server.addr, check(http(Some("ok")), 50, 40, 1, 2));
    let k = t.key.clone();
    let h = Harness::start(vec![t]);
    let down = h.wait_change(&k, 1);
    assert_eq!(down.health, Health::Down);
    assert_eq!(
        down.detail,
        format!("HTTP 200 from {}, body has no \"ok\"", server.addr)
    );
    assert_eq!(down.status.map(|s| s.probes), Some(2));
}

#[test]
fn http_server_that_trickles_fails_at_the_total_deadline() {
    let server = HttpServer::start(Answer::Trickle);
    let t = target("web", server.addr, check(http(None), 400, 300, 1, 1));
    let k = t.key.clone();
    let h = Harness::start(vec![t]);
    let down = h.wait_change(&k, 1);
    assert_eq!(down.health, Health::Down);
    assert!(
        down.detail.starts_with(&format!(
            "no complete answer from {} in 300ms (",
            server.addr
        )),
        "{}",
        down.detail
    );
    let last = down.status.and_then(|s| s.last).expect("a result");
    // It was bytes arriving, not silence: some came before the deadline.
    assert!(!down.detail.contains("(0 bytes"), "{}", down.detail);
    assert!(last.took >= Duration::from_millis(300), "{:?}", last.took);
    println!("trickle probe failed after {:?}", last.took);
}

#[test]
fn http_to_a_closed_port_is_refused() {
    let addr = closed_tcp_port();
    let t = target("web", addr, check(http(None), 50, 40, 1, 1));
    let k = t.key.clone();
    let h = Harness::start(vec![t]);
    let down = h.wait_change(&k, 1);
    assert_eq!(
        down.detail,
        format!("connect to {addr}: connection refused")
    );
}

#[test]
fn http_answer_that_is_not_http_is_malformed() {
    // A server speaking another protocol on the port.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = loopback(listener.local_addr().expect("addr").port());
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    listener.set_nonblocking(true).expect("nonblocking");
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            if let Ok((mut c, _)) = listener.accept() {
                let _ = c.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let t = target("web", addr, check(http(None), 50, 40, 1, 1));
    let k = t.key.clone();
    let h = Harness::start(vec![t]);
    let down = h.wait_change(&k, 1);
    assert_eq!(
        down.detail,
        format!("malformed answer from {addr}: status line \"SSH-2.0-OpenSSH_9.2\"")
    );
    drop(h);
    stop.store(true, Ordering::Relaxed);
    thread.join().expect("thread");
}

// --- TCP -----------------------------------------------------------------------------------

#[test]
fn tcp_listener_is_up_and_closed_port_is_down() {
    let server = TcpServer::start();
    let closed = closed_tcp_port();
    let up = target("db", server.addr, check(CheckKind::Tcp, 100, 100, 1, 3));
    let down = target("db", closed, check(CheckKind::Tcp, 50, 40, 1, 2));
    let (ku, kd) = (up.key.clone(), down.key.clone());
    let h = Harness::start(vec![up, down]);

    let s = h.wait_probes(&ku, 3);
    assert_eq!(s.health, Health::Up);
    assert_eq!(
        s.last.map(|l| l.detail),
        Some(format!("connected to {}", server.addr))
    );
    assert!(server.accepted.load(Ordering::Relaxed) >= 1);

    let seen = h.wait_change(&kd, 1);
    assert_eq!(seen.health, Health::Down);
    assert_eq!(
        seen.detail,
        format!("connect to {closed}: connection refused")
    );
    assert_eq!(seen.status.map(|s| s.probes), Some(2));
}

#[test]
fn check_port_overrides_the_real_servers_port() {
    let server = TcpServer::start();
    let closed = closed_tcp_port();
    // The real server's port is closed; the check goes to the listener's port.
    let mut c = check(CheckKind::Tcp, 100, 100, 1, 3);
    c.port = Some(server.addr.port());
    let t = target("db", closed, c);
    let k = t.key.clone();
    let h = Harness::start(vec![t]);
    let s = h.wait_probes(&k, 2);
    assert_eq!(s.health, Health::Up);
    assert_eq!(
        s.last.map(|l| l.detail),
        Some(format!("connected to {}", server.addr))
    );
}

// --- UDP -----------------------------------------------------------------------------------

#[test]
fn udp_echo_is_up_and_a_reply_without_the_match_is_down() {
    let server = UdpServer::start(true);
    let good = target(
        "dns",
        server.addr,
        check(udp("ping", Some("echo:ping")), 100, 100, 1, 3),
    );
    let mut bad_check = check(udp("ping", Some("pong")), 50, 40, 1, 1);
    bad_check.rise = 2;
    let bad = target("dns-strict", server.addr, bad_check);
    let empty = target(
        "dns-empty",
        server.addr,
        check(udp("", None), 100, 100, 1, 3),
    );
    let (kg, kb, ke) = (good.key.clone(), bad.key.clone(), empty.key.clone());
    let h = Harness::start(vec![good, bad, empty]);

    let s = h.wait_probes(&kg, 3);
    assert_eq!(s.health, Health::Up);
    assert_eq!(
        s.last.map(|l| l.detail),
        Some(format!("reply of 9 bytes from {}", server.addr))
    );
    // An empty payload is a datagram too; the echo of it is 5 bytes.
    let s = h.wait_probes(&ke, 3);
    assert_eq!(s.health, Health::Up);
    assert_eq!(
        s.last.map(|l| l.detail),
        Some(format!("reply of 5 bytes from {}", server.addr))
    );

    let seen = h.wait_change(&kb, 1);
    assert_eq!(
        seen.detail,
        format!("reply of 9 bytes from {} has no \"pong\"", server.addr)
    );
}

#[test]
fn udp_port_with_nothing_bound_fails_on_the_icmp_error() {
    let addr = closed_udp_port();
    // A long timeout: the failure must come from the ICMP error, not the deadline.
    let t = target("dns", addr, check(udp("ping", None), 2000, 2000, 1, 1));
    let k = t.key.clone();
    let h = Harness::start(vec![t]);
    let seen = h.wait_change(&k, 1);
    assert_eq!(
        seen.detail,
        format!("recv: connection refused (ICMP port unreachable from {addr})")
    );
    let took = seen.status.and_then(|s| s.last).map(|l| l.took);
    println!("ICMP refusal after {took:?}");
}

#[test]
fn udp_server_that_never_answers_fails_at_the_deadline() {
    let server = UdpServer::start(false);
    let t = target("dns", server.addr, check(udp("ping", None), 100, 60, 1, 2));
    let k = t.key.clone();
    let h = Harness::start(vec![t]);
    let seen = h.wait_change(&k, 1);
    assert_eq!(
        seen.detail,
        format!("no reply from {} in 60ms", server.addr)
    );
    assert_eq!(seen.status.map(|s| s.probes), Some(2));
}

// --- exec ----------------------------------------------------------------------------------

#[test]
fn exec_exit_status_decides_and_killed_programs_are_reaped() {
    let _children = children_lock();
    let real = loopback(8080);
    let ok = target(
        "app-true",
        real,
        check(exec(&["/bin/true"]), 200, 200, 1, 3),
    );
    let bad = target(
        "app-false",
        real,
        check(exec(&["/bin/false"]), 50, 40, 1, 2),
    );
    let slow = target(
        "app-sleep",
        real,
        check(exec(&["/bin/sleep", "10"]), 250, 200, 1, 2),
    );
    let (ko, kb, ks) = (ok.key.clone(), bad.key.clone(), slow.key.clone());
    let mut h = Harness::start(vec![ok, bad, slow]);

    let s = h.wait_probes(&ko, 3);
    assert_eq!(s.health, Health::Up);
    assert!(h.changes_of(&ko).is_empty());
    assert_eq!(s.last.map(|l| l.detail).as_deref(), Some("exit status 0"));

    let seen = h.wait_change(&kb, 1);
    assert_eq!(
        (seen.health, seen.detail.as_str()),
        (Health::Down, "exit status 1")
    );
    assert_eq!(seen.status.map(|s| s.probes), Some(2));

    let seen = h.wait_change(&ks, 1);
    assert_eq!(seen.health, Health::Down);
    assert_eq!(seen.detail, "timed out after 200ms, killed");
    let took = seen.status.and_then(|s| s.last).map(|l| l.took);
    assert!(took >= Some(Duration::from_millis(200)), "{took:?}");
    h.wait_probes(&ks, 4);
    // Killed sleeps are reaped: no zombie, and at most the one of the current probe alive.
    wait_for("killed programs reaped", || {
        let kids = children();
        let zombies = kids.iter().filter(|k| k.2 == 'Z').count();
        let sleeps = kids.iter().filter(|k| k.1 == "sleep").count();
        (zombies == 0 && sleeps <= 1).then_some(())
    });

    h.stop();
    assert!(children().is_empty(), "{:?}", children());
    assert!(no_child_at_all());
}

#[test]
fn exec_program_gets_the_target_in_its_environment() {
    let _children = children_lock();
    let real = loopback(8080);
    let mut c = check(
        exec(&["/usr/bin/printenv", "DIRECTOR_SERVICE"]),
        200,
        200,
        1,
        3,
    );
    let has_service = target("app", real, c.clone());
    c.kind = exec(&["/usr/bin/printenv", "DIRECTOR_CHECK_PORT"]);
    c.port = Some(9090);
    let has_port = target("app-port", real, c.clone());
    c.kind = exec(&["/usr/bin/printenv", "DIRECTOR_NO_SUCH_VARIABLE"]);
    c.fall = 1;
    let lacks = target("app-none", real, c);
    let (k1, k2, k3) = (
        has_service.key.clone(),
        has_port.key.clone(),
        lacks.key.clone(),
    );
    let mut h = Harness::start(vec![has_service, has_port, lacks]);
    for k in [&k1, &k2] {
        let s = h.wait_probes(k, 2);
        assert_eq!(s.health, Health::Up, "{k:?}");
        assert!(h.changes_of(k).is_empty(), "{k:?}");
    }
    assert_eq!(h.wait_change(&k3, 1).detail, "exit status 1");
    h.stop();
    assert!(no_child_at_all());
}

#[test]
fn exec_program_that_cannot_start_fails_with_the_os_error() {
    let t = target(
        "app",
        loopback(8080),
        check(exec(&["/nonexistent/check-app"]), 50, 40, 1, 1),
    );
    let k = t.key.clone();
    let h = Harness::start(vec![t]);
    let seen = h.wait_change(&k, 1);
    assert_eq!(
        seen.detail,
        "cannot start /nonexistent/check-app: no such file or directory"
    );
}

#[test]
fn stop_returns_promptly_and_kills_the_running_program() {
    let _children = children_lock();
    let t = target(
        "app",
        loopback(8080),
        check(exec(&["/bin/sleep", "10"]), 5000, 5000, 1, 1),
    );
    let mut h = Harness::start(vec![t]);
    let pid = wait_for("the check program to run", || {
        children().into_iter().find(|c| c.1 == "sleep").map(|c| c.0)
    });
    let started = Instant::now();
    h.stop();
    let took = started.elapsed();
    // Generous: what matters is that stop did not wait for `sleep 10` or the 5 s deadline.
    assert!(took < Duration::from_secs(4), "stop took {took:?}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(no_child_at_all());
    println!("stop with a program running took {took:?}");
}

// --- update --------------------------------------------------------------------------------

#[test]
fn update_keeps_unchanged_targets_resets_changed_ones_and_drops_gone_ones() {
    let failing = HttpServer::start(Answer::Status(503, "no"));
    let healthy = TcpServer::start();
    let closed = closed_tcp_port();
    let c = check(CheckKind::Tcp, 50, 40, 1, 1);
    let kept = target("web", failing.addr, check(http(None), 50, 40, 1, 1));
    let changed = target("db", closed, c.clone());
    let gone = target("db", healthy.addr, c.clone());
    let (kk, kc, kg) = (kept.key.clone(), changed.key.clone(), gone.key.clone());
    let h = Harness::start(vec![kept.clone(), changed.clone(), gone.clone()]);
    assert_eq!(h.checker().snapshot().len(), 3, "listed from the start");

    assert_eq!(h.wait_change(&kk, 1).health, Health::Down);
    assert_eq!(h.wait_change(&kc, 1).health, Health::Down);
    h.wait_probes(&kg, 1);
    let before = h.status(&kk);

    let mut changed_check = changed.check.clone();
    changed_check.fall = 100;
    let new = target("db", healthy.addr, check(CheckKind::Tcp, 100, 100, 1, 3));
    let new = Target {
        key: key("db-new", new.key.real),
        ..new
    };
    let kn = new.key.clone();
    h.checker().update(vec![
        kept,
        Target {
            key: kc.clone(),
            check: changed_check,
        },
        new,
    ]);

    // The changed one is reported up again, as at a start.
    let reset = h.wait_change(&kc, 2);
    assert_eq!(
        (reset.health, reset.detail.as_str()),
        (Health::Up, "check changed; starts up again")
    );
    wait_for("the update applied", || {
        let keys: Vec<TargetKey> = h.checker().snapshot().into_iter().map(|s| s.key).collect();
        (keys.len() == 3 && !keys.contains(&kg)).then_some(())
    });
    let s = h.wait_probes(&kn, 1);
    assert_eq!(s.health, Health::Up);

    // Kept: its counters go on from where they were, still Down, no new transition.
    let after = h.wait_probes(&kk, before.probes + 2);
    assert_eq!(after.health, Health::Down);
    assert_eq!(after.last_change, before.last_change);
    assert!(after.consecutive_fail as u64 >= before.consecutive_fail as u64 + 2);
    assert_eq!(h.changes_of(&kk).len(), 1);

    // Changed: counting again from nothing, and with fall = 100 it stays Up.
    let c = h.wait_probes(&kc, 1);
    assert_eq!(c.health, Health::Up);
    assert!(c.last_change.is_none());
}

#[test]
fn update_abandons_a_running_program_and_reaps_it() {
    let _children = children_lock();
    let t = target(
        "app",
        loopback(8080),
        check(exec(&["/bin/sleep", "10"]), 5000, 5000, 1, 1),
    );
    let mut h = Harness::start(vec![t]);
    let pid = wait_for("the check program to run", || {
        children().into_iter().find(|c| c.1 == "sleep").map(|c| c.0)
    });
    h.checker().update(Vec::new());
    wait_for("the program killed and reaped", || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert!(h.checker().snapshot().is_empty());
    assert!(no_child_at_all());
    h.stop();
}
