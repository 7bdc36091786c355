//! `syncbench`: connection-sync lag, bulk resync time and bytes per entry, with baselines
//! measured in the same run. Run as root (through `scripts/bench sync`, which builds in
//! release first). It measures and reports; it asserts nothing about speed.
//!
//! Two namespaces joined by a bridge (198.18.3.2 and .3.3, interface `sync`), each with a
//! sync node as `directord` builds it: a connection table (256 shards) whose observer is the
//! change queue, and the `syncd` thread on a UDP socket bound to `sync`. There is no
//! datapath: the bench inserts connections into node A's table itself, from one generator
//! thread, exactly as a worker does (`ShardGuard::insert`), and node B's table has a
//! recorder observer beside its change queue that notes when each replica is installed.
//! Both clocks are this process's `Instant`, so lag = install on B − insert on A.
//!
//! - Lag: at each `--rates` (new connections per second; `max` = as fast as the generator
//!   goes) for `--secs`: p50, p99, p99.9 and max. Baseline: one-way latency of plain UDP
//!   datagrams over the same link at the same rate (a timestamp in each datagram).
//! - Resync: node A holds N connections (`--resync`), node B starts empty; time from B's
//!   start to its resync complete (B's own view), the bytes B received, entries per
//!   datagram. Baseline: the same number of bytes blasted as 1472-byte UDP datagrams over
//!   the same link (the bytes that arrived and the time they took).
//! - Bytes per entry on the wire during the steady stream (headers and MAC included).
//!
//! `syncbench [--rates 10000,100000,200000,400000] [--secs 5] [--resync 100000,1000000]`
//! (`max` as a rate: as fast as the generator goes; its tables are sized for 8 M flows, and
//! faulting those in slows the generator itself, so it is not in the default run).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use director_lab::lab::{write_file, Host, Lab};
use forwarder::conntrack::{Change, ConnObserver, ConnTable, NewConn};
use forwarder::engine::{Engine, ServiceTable};
use forwarder::io::datapath::Clock;
use forwarder::model::{Mode, Protocol, RealServer, SchedulerKind, Timeouts, VirtualService};
use forwarder::sched::PersistTable;
use forwarder::stats::RealRegistry;
use syncd::adapter::{applying, ChangeQueue};
use syncd::io::{Destination, SyncConfig, Syncd};
use syncd::wire::Key;

const PORT: u16 = 8848;
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 100), 80);

fn addr(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 3, 2 + node as u8)
}

/// Flow `n`'s client: 198.19.x.y:port, unique for 16 M flows.
fn client(n: u64) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(198, 19, (n >> 16) as u8, (n >> 8) as u8),
        1024 + (n & 0xff) as u16,
    )
}

fn flow_of(c: SocketAddrV4) -> u64 {
    let o = c.ip().octets();
    (u64::from(o[2]) << 16) | (u64::from(o[3]) << 8) | u64::from(c.port() - 1024)
}

fn service() -> VirtualService {
    VirtualService {
        name: "web".into(),
        vip: VIP,
        protocol: Protocol::Tcp,
        mode: Mode::Nat,
        scheduler: SchedulerKind::Rr,
        persistence: Duration::ZERO,
        reals: (11..14)
            .map(|i| RealServer {
                addr: SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, i), 8080),
                weight: 1,
            })
            .collect(),
        local_addresses: Vec::new(),
        proxy_protocol: None,
    }
}

/// Notes when each replica lands (installs only: the sync thread sets `applying`).
struct Recorder {
    start: Instant,
    /// Nanoseconds since `start` + 1, per flow number; 0 = not yet.
    at: Vec<AtomicU64>,
}

impl ConnObserver for Recorder {
    fn on_change(&self, c: &Change) {
        if let Change::Insert(e) = c {
            if applying() {
                let n = flow_of(e.client()) as usize;
                if let Some(slot) = self.at.get(n) {
                    let ns = self.start.elapsed().as_nanos() as u64 + 1;
                    let _ = slot.compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed);
                }
            }
        }
    }
}

struct Both(Arc<Recorder>, Arc<ChangeQueue>);

impl ConnObserver for Both {
    fn on_change(&self, c: &Change) {
        self.0.on_change(c);
        self.1.on_change(c);
    }
}

struct Node {
    engine: Arc<Engine>,
    clock: Clock,
    syncd: Syncd,
}

fn node(
    host: &Host,
    n: usize,
    key: &Key,
    capacity: u32,
    recorder: Option<Arc<Recorder>>,
) -> Result<Node> {
    let reals = Arc::new(RealRegistry::new(16));
    let services = Arc::new(ArcSwap::from_pointee(ServiceTable::new(
        vec![service()],
        &[vec![0, 1, 2]],
    )));
    let mut table = ConnTable::new(capacity, 256, Timeouts::default(), reals.clone());
    let queue = Arc::new(ChangeQueue::new(1 << 20)?);
    match recorder {
        Some(r) => table.set_observer(Arc::new(Both(r, queue.clone()))),
        None => table.set_observer(queue.clone()),
    }
    let engine = Arc::new(Engine::new(
        table,
        Arc::new(PersistTable::new(1024, 4)),
        reals,
    ));
    let clock = Clock::new();
    let name = if n == 0 { "lb-a" } else { "lb-b" };
    let cfg = SyncConfig {
        interface: "sync".into(),
        destination: Destination::Peer(SocketAddrV4::new(addr(1 - n), PORT)),
        key: key.clone(),
        node_name: name.into(),
        session: syncd::session::Config::new(syncd::wire::node_id(name), syncd::io::new_epoch()),
    };
    let (e, s) = (engine.clone(), services.clone());
    let syncd = host.in_ns(move || Syncd::start(cfg, e, s, clock, queue, Box::new(|_| {})))??;
    Ok(Node {
        engine,
        clock,
        syncd,
    })
}

fn insert(node: &Node, n: u64) -> bool {
    let c = client(n);
    let new = NewConn {
        proto: Protocol::Tcp,
        mode: Mode::Nat,
        client: c,
        vip: VIP,
        real: SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 11 + (n % 3) as u8), 8080),
        local: None,
        proxy: None,
        service: 0,
        real_slot: (n % 3) as u16,
        flags: 0,
    };
    node.engine
        .conns
        .shard_for(c)
        .insert(&new, node.clock.now())
        .is_ok()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Args {
    rates: Vec<Option<u64>>,
    secs: u64,
    resync: Vec<u64>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        rates: vec![Some(10_000), Some(100_000), Some(200_000), Some(400_000)],
        secs: 5,
        resync: vec![100_000, 1_000_000],
    };
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        let mut v = || it.next().context("flag needs a value");
        match f.as_str() {
            "--rates" => {
                a.rates = v()?
                    .split(',')
                    .map(|r| {
                        if r == "max" {
                            Ok(None)
                        } else {
                            r.parse().map(Some)
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
            "--secs" => a.secs = v()?.parse()?,
            "--resync" => a.resync = v()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            _ => anyhow::bail!("unknown flag {f}"),
        }
    }
    Ok(a)
}

/// Paces a loop at `rate` per second (none: flat out); returns false when `secs` are up.
struct Pacer {
    start: Instant,
    rate: Option<u64>,
    secs: u64,
    n: u64,
}

impl Pacer {
    fn next(&mut self) -> bool {
        let el = self.start.elapsed();
        if el >= Duration::from_secs(self.secs) {
            return false;
        }
        if let Some(r) = self.rate {
            let due = Duration::from_nanos(self.n * 1_000_000_000 / r);
            if due > el {
                let wait = due - el;
                if wait > Duration::from_micros(200) {
                    std::thread::sleep(wait - Duration::from_micros(100));
                }
                while self.start.elapsed() < due {
                    std::hint::spin_loop();
                }
            }
        }
        self.n += 1;
        true
    }
}

fn lag(lab_hosts: &[Host; 2], key: &Key, rate: Option<u64>, secs: u64) -> Result<String> {
    let max_flows = rate.map_or(8_000_000, |r| r * secs + 1000) as usize;
    let start = Instant::now();
    let rec = Arc::new(Recorder {
        start,
        at: (0..max_flows).map(|_| AtomicU64::new(0)).collect(),
    });
    // Twice the flows: the shards fill unevenly, and a full shard would refuse inserts.
    let capacity = (max_flows as u32 * 2).max(1 << 16);
    let a = node(&lab_hosts[0], 0, key, capacity, None)?;
    let b = node(&lab_hosts[1], 1, key, capacity, Some(rec.clone()))?;
    // Let the pair meet and finish the (empty) resyncs.
    let t0 = Instant::now();
    while !(a.syncd.resync_complete() && b.syncd.resync_complete()) {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "the pair never met");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut sent_at = Vec::with_capacity(max_flows);
    let mut pacer = Pacer {
        start: Instant::now(),
        rate,
        secs,
        n: 0,
    };
    while pacer.next() && sent_at.len() < max_flows {
        let n = sent_at.len() as u64;
        let t = start.elapsed().as_nanos() as u64;
        if !insert(&a, n) {
            break;
        }
        sent_at.push(t);
    }
    let achieved = sent_at.len() as f64 / pacer.start.elapsed().as_secs_f64();
    // Wait for the stream (and any resync an overload caused) to drain: up to 20 s.
    let drained = Instant::now();
    let all_in =
        |rec: &Recorder| (0..sent_at.len()).all(|n| rec.at[n].load(Ordering::Relaxed) != 0);
    while !all_in(&rec) && drained.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut lags: Vec<f64> = Vec::with_capacity(sent_at.len());
    let mut missing = 0;
    for (n, &t) in sent_at.iter().enumerate() {
        let got = rec.at[n].load(Ordering::Relaxed);
        if got == 0 {
            missing += 1;
        } else {
            lags.push((got - 1).saturating_sub(t) as f64 / 1e6);
        }
    }
    lags.sort_by(f64::total_cmp);
    let snap = a.syncd.snapshot().context("node A status")?;
    let st = &snap.status.stats;
    let per_entry = st.tx_bytes as f64 / st.tx_entries.max(1) as f64;
    let per_dgram = st.tx_entries as f64 / st.tx_datagrams.max(1) as f64;
    let b_len = b.engine.conns.len();
    let line = format!(
        "| sync lag | {} | {:.0}/s | {:.3} | {:.3} | {:.3} | {:.3} | {} of {} | {:.1} B ({:.1} per datagram, {} datagrams, {} NACKs) |",
        rate.map_or("max".into(), |r| format!("{r}/s")),
        achieved,
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        pct(&lags, 0.999),
        lags.last().copied().unwrap_or(f64::NAN),
        missing,
        sent_at.len(),
        per_entry,
        per_dgram,
        st.tx_datagrams,
        b.syncd
            .snapshot()
            .map_or(0, |s| s.status.stats.nacks_tx),
    );
    eprintln!("{line}   (B holds {b_len})");
    a.syncd.stop();
    b.syncd.stop();
    Ok(line)
}

/// One-way latency of plain UDP over the same link at `rate`.
fn udp_baseline(hosts: &[Host; 2], rate: Option<u64>, secs: u64) -> Result<String> {
    let start = Instant::now();
    let rx = hosts[1].in_ns(|| UdpSocket::bind(SocketAddrV4::new(addr(1), PORT + 1)))??;
    let tx = hosts[0].in_ns(|| UdpSocket::bind(SocketAddrV4::new(addr(0), 0)))??;
    rx.set_read_timeout(Some(Duration::from_millis(300)))?;
    let receiver = std::thread::spawn(move || {
        let mut lags = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = rx.recv(&mut buf) {
            let now = start.elapsed().as_nanos() as u64;
            if n >= 8 {
                let t = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                lags.push(now.saturating_sub(t) as f64 / 1e6);
            }
        }
        lags
    });
    let mut pacer = Pacer {
        start: Instant::now(),
        rate,
        secs,
        n: 0,
    };
    let dest = SocketAddrV4::new(addr(1), PORT + 1);
    let mut sent = 0u64;
    while pacer.next() {
        let t = start.elapsed().as_nanos() as u64;
        let mut msg = [0u8; 40];
        msg[..8].copy_from_slice(&t.to_be_bytes());
        if tx.send_to(&msg, dest).is_ok() {
            sent += 1;
        }
    }
    let achieved = sent as f64 / pacer.start.elapsed().as_secs_f64();
    let mut lags = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    lags.sort_by(f64::total_cmp);
    let line = format!(
        "| baseline: plain UDP one-way | {} | {:.0}/s | {:.3} | {:.3} | {:.3} | {:.3} | {} of {} | 40 B datagrams, one per message |",
        rate.map_or("max".into(), |r| format!("{r}/s")),
        achieved,
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        pct(&lags, 0.999),
        lags.last().copied().unwrap_or(f64::NAN),
        sent - lags.len() as u64,
        sent,
    );
    eprintln!("{line}");
    Ok(line)
}

fn resync(hosts: &[Host; 2], key: &Key, entries: u64) -> Result<(String, u64)> {
    let capacity = (entries as u32 * 2).max(1 << 16);
    let a = node(&hosts[0], 0, key, capacity, None)?;
    for n in 0..entries {
        anyhow::ensure!(insert(&a, n), "node A's table refused entry {n}");
    }
    // Let A's stream of the inserts (to nobody) drain before B appears.
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let b = node(&hosts[1], 1, key, capacity, None)?;
    while !b.syncd.resync_complete() {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "no complete resync in 120 s"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(50));
    let bs = b.syncd.snapshot().context("node B status")?;
    let asnap = a.syncd.snapshot().context("node A status")?;
    let sent = asnap.status.last_resync_tx;
    let held = b.engine.conns.len();
    let rx_bytes = bs.status.stats.rx_bytes;
    let line = format!(
        "| resync | {} | {:.3} s | {:.1} MB | {:.1} B | {} | {} | {} |",
        entries,
        took.as_secs_f64(),
        rx_bytes as f64 / 1e6,
        rx_bytes as f64 / entries as f64,
        held,
        sent.map_or("-".into(), |(n, d)| format!(
            "{n} in {:.3} s",
            d.as_secs_f64()
        )),
        bs.status.stats.nacks_tx,
    );
    eprintln!("{line}");
    a.syncd.stop();
    b.syncd.stop();
    Ok((line, rx_bytes))
}

/// The same bytes as 1472-byte UDP datagrams, as fast as one socket sends them.
fn blast_baseline(hosts: &[Host; 2], bytes: u64) -> Result<String> {
    let rx = hosts[1].in_ns(|| UdpSocket::bind(SocketAddrV4::new(addr(1), PORT + 2)))??;
    let tx = hosts[0].in_ns(|| UdpSocket::bind(SocketAddrV4::new(addr(0), 0)))??;
    rx.set_read_timeout(Some(Duration::from_millis(300)))?;
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut got = 0u64;
        let mut first = None;
        let mut last = Instant::now();
        while let Ok(n) = rx.recv(&mut buf) {
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            got += n as u64;
        }
        (got, first.map(|f| last - f))
    });
    let dest = SocketAddrV4::new(addr(1), PORT + 2);
    let msg = [0u8; 1472];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        if tx.send_to(&msg, dest).is_ok() {
            sent += msg.len() as u64;
        }
    }
    let send_time = t0.elapsed();
    let (got, span) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let line = format!(
        "| baseline: UDP blast of the same bytes | {:.1} MB | sent in {:.3} s | {:.1} MB arrived in {:.3} s | | | |",
        bytes as f64 / 1e6,
        send_time.as_secs_f64(),
        got as f64 / 1e6,
        span.unwrap_or_default().as_secs_f64(),
    );
    eprintln!("{line}");
    Ok(line)
}

fn main() -> Result<()> {
    let args = args()?;
    let lab = Lab::new("syncbench")?;
    let bridge = lab.bridge("sync")?;
    let hosts = [lab.host("lb-a")?, lab.host("lb-b")?];
    for (n, h) in hosts.iter().enumerate() {
        lab.attach(h, &bridge, "sync", &format!("{}/24", addr(n)))?;
    }
    let key_path = write_file(&lab, "sync.key", b"syncbench-key-0123456789abcdef\n")?;
    let key = Key::from_file(&key_path).map_err(|e| anyhow::anyhow!(e))?;
    println!("### Sync lag: insert on A → replica installed on B (ms)\n");
    println!("| what | offered | achieved | p50 | p99 | p99.9 | max | lost | bytes per entry on the wire |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &rate in &args.rates {
        println!("{}", udp_baseline(&hosts, rate, args.secs)?);
        println!("{}", lag(&hosts, &key, rate, args.secs)?);
    }
    let t = ConnTable::new(
        1 << 20,
        256,
        Timeouts::default(),
        Arc::new(RealRegistry::new(16)),
    );
    println!(
        "\nConnection table: {} B per entry ({} B entries, 2^20 entries in 256 shards, slab + index + headers / capacity)",
        t.bytes_per_entry(),
        std::mem::size_of::<forwarder::conntrack::ConnEntry>()
    );
    drop(t);
    println!("\n### Bulk resync: B starts empty, A holds N connections\n");
    println!("| what | entries | time to complete (B) | bytes received | per entry | B holds | A's view | NACKs |");
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &args.resync {
        let (line, bytes) = resync(&hosts, &key, n)?;
        println!("{line}");
        println!("{}", blast_baseline(&hosts, bytes)?);
    }
    Ok(())
}
