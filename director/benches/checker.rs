//! The health checker's own benchmarks, in-process on loopback: how long a real server's
//! death or stall takes to become "down" (interval 200 ms, timeout 100 ms, fall 2, ten trials
//! at different phases of the probe schedule), and the checker thread's CPU for 500 TCP
//! targets at a 100 ms interval. They report; they assert nothing about speed.
//!
//! `cargo bench -p director --bench checker` (or `scripts/bench micro`). Under `cargo test`
//! (which builds and starts bench targets without `--bench`) it says so and exits.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use director::config::{Check, CheckKind, OnFail};
use director::health::{Checker, Health, Target, TargetKey};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("checker: a benchmark; run it with `cargo bench -p director --bench checker`");
        return;
    }
    detection_time();
    cpu_500_tcp_targets();
}

fn check(kind: CheckKind, interval_ms: u64, timeout_ms: u64, fall: u32) -> Check {
    Check {
        kind,
        port: None,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        rise: 2,
        fall,
        on_fail: OnFail::Inhibit,
    }
}

fn target(service: &str, real: SocketAddrV4, check: Check) -> Target {
    Target {
        key: TargetKey {
            service: service.to_owned(),
            real,
        },
        check,
    }
}

const ANSWER: u8 = 0;
const HANG: u8 = 1;
const CLOSED: u8 = 2;

/// An HTTP server on loopback that answers 200, or accepts and never answers (a stalled
/// process: the kernel still completes the handshake), or has closed its listener.
struct Server {
    addr: SocketAddrV4,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = match listener.local_addr().expect("addr") {
            std::net::SocketAddr::V4(a) => a,
            a => panic!("not IPv4: {a}"),
        };
        let mode = Arc::new(AtomicU8::new(ANSWER));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (mode.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut listener = Some(listener);
            while !s.load(Ordering::Relaxed) {
                if m.load(Ordering::Relaxed) == CLOSED {
                    listener = None;
                }
                let Some(l) = &listener else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                match l.accept() {
                    Ok((stream, _)) if m.load(Ordering::Relaxed) == HANG => held.push(stream),
                    Ok((stream, _)) => answer(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Server { addr, mode, stop }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 1024];
    let _ = stream.read(&mut buf);
    let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
}

/// Server death (listener closed: refused) or stall (accepts, never answers) to the Down
/// callback.
fn detection_time() {
    for (name, fault) in [("refused", CLOSED), ("stalled", HANG)] {
        let mut times = Vec::new();
        for trial in 0..10u64 {
            let server = Server::start();
            let (tx, rx) = std::sync::mpsc::channel::<Instant>();
            let tx = Mutex::new(tx);
            let kind = CheckKind::Http {
                path: "/healthz".to_owned(),
                status: None,
                body: None,
            };
            let t = target("web", server.addr, check(kind, 200, 100, 2));
            let k = t.key.clone();
            let checker = Checker::start(
                vec![t],
                Box::new(move |_, health, _| {
                    if health == Health::Down {
                        let _ = tx.lock().map(|tx| tx.send(Instant::now()));
                    }
                }),
            )
            .expect("start the checker");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !checker
                .snapshot()
                .iter()
                .any(|s| s.key == k && s.consecutive_ok >= 1)
            {
                assert!(Instant::now() < deadline, "no good probe within 10 s");
                std::thread::sleep(Duration::from_millis(5));
            }
            // Land the fault at a different phase of the interval each trial.
            std::thread::sleep(Duration::from_millis(20 * trial));
            let fault_at = Instant::now();
            server.set(fault);
            let down = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("down within 10 s");
            times.push(down - fault_at);
            checker.stop();
        }
        times.sort();
        let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        println!(
            "detection ({name}, http, interval 200ms, timeout 100ms, fall 2): min {} median {} max {} ms; all {ms:?}",
            ms[0],
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        );
    }
}

/// CPU time of the checker thread for 500 TCP targets at a 100 ms interval over 10 s.
fn cpu_500_tcp_targets() {
    let servers: Vec<Server> = (0..10).map(|_| Server::start()).collect();
    let targets: Vec<Target> = (0..500)
        .map(|i| {
            target(
                &format!("svc{i}"),
                servers[i % servers.len()].addr,
                check(CheckKind::Tcp, 100, 50, 2),
            )
        })
        .collect();
    let checker = Checker::start(targets, Box::new(|_, _, _| {})).expect("start the checker");
    let deadline = Instant::now() + Duration::from_secs(5);
    let tid = loop {
        if let Some(tid) = health_thread() {
            break tid;
        }
        assert!(Instant::now() < deadline, "no health thread");
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_secs(1));
    let ((user0, sys0), t0) = (thread_user_sys(tid), Instant::now());
    let probes0: u64 = checker.snapshot().iter().map(|s| s.probes).sum();
    std::thread::sleep(Duration::from_secs(10));
    let ((user1, sys1), wall) = (thread_user_sys(tid), t0.elapsed());
    let snap = checker.snapshot();
    let probes = snap.iter().map(|s| s.probes).sum::<u64>() - probes0;
    let down = snap.iter().filter(|s| s.health == Health::Down).count();
    checker.stop();
    let cpu = (user1 + sys1) - (user0 + sys0);
    println!(
        "500 TCP targets @100ms for {:.1}s: {probes} probes ({:.0}/s), checker thread CPU {:.3}s ({:.1}% of one core, {:.1} µs per probe), {down} down; user {:.3}s, system {:.3}s (the system part includes the loopback handshakes, which the kernel runs in the connecting thread)",
        wall.as_secs_f64(),
        probes as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / probes.max(1) as f64,
        (user1 - user0).as_secs_f64(),
        (sys1 - sys0).as_secs_f64(),
    );
}

/// The tid of the thread named `health` in this process.
fn health_thread() -> Option<u32> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim() == "health").then(|| t.file_name().to_string_lossy().parse().ok())?
        })
}

/// utime and stime of one thread of this process (fields 14 and 15 of its stat).
fn thread_user_sys(tid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: a plain sysconf query.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let time = |i: usize| {
        let ticks: u64 = fields[i].parse().expect("a tick count");
        Duration::from_nanos(ticks * 1_000_000_000 / hz)
    };
    (time(11), time(12))
}
