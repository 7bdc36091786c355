//! UDP on the sync interface and the thread that runs the session.
//!
//! One nonblocking UDP socket bound to the sync port on the sync interface
//! (SO_BINDTODEVICE): unicast to the peer, or multicast to a group joined on that
//! interface (TTL 1, no loopback). The `syncd` thread sleeps in `ppoll` on the socket and
//! the change queue's eventfd until the session's next deadline, then: reads datagrams,
//! feeds queued local changes, runs the timers (batch flush, heartbeats, NACKs, resync
//! pacing), installs the peer's entries and sends what the session produced.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use forwarder::engine::{Engine, ServiceTable};
use forwarder::io::datapath::Clock;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use socket2::{Domain, Protocol, Socket, Type};

use crate::adapter::{to_wire, ChangeQueue, ReplicaCounters, Replicas, TableSource};
use crate::session::{Config, Event, Session, Status};
use crate::wire::{self, Claim, Key};

/// Where the sync stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Peer(SocketAddrV4),
    Group(SocketAddrV4),
}

/// What the sync thread needs.
pub struct SyncConfig {
    pub interface: String,
    pub destination: Destination,
    pub key: Key,
    pub node_name: String,
    pub session: Config,
}

/// A snapshot for `director sync`, refreshed by the thread every few milliseconds.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: Status,
    pub tx_errors: u64,
    pub rx_errors: u64,
    pub queue_dropped: u64,
    pub lag_ms: LagStats,
}

/// Acknowledgement latency of data messages, as seen by the sender.
#[derive(Debug, Clone, Copy, Default)]
pub struct LagStats {
    pub max_ms: f64,
}

/// The running sync thread.
pub struct Syncd {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// This node's VRRP claims for the peer, taken by the thread (see [`Syncd::set_claims`]).
    claims_out: Arc<Mutex<Option<Vec<Claim>>>>,
    /// The peer's VRRP claims while it is up.
    claims_in: Arc<Mutex<Option<Vec<Claim>>>>,
    queue: Arc<ChangeQueue>,
    snapshot: Arc<Mutex<Option<Snapshot>>>,
    resync_complete: Arc<AtomicBool>,
    loops: Arc<AtomicU64>,
    pub replicas: Arc<ReplicaCounters>,
    pub interface: String,
    pub destination: Destination,
    pub node_name: String,
}

/// Opens the sync socket.
fn open_socket(interface: &str, dest: Destination) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(interface.as_bytes())).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the sync socket to interface {interface}: {e}"),
        )
    })?;
    let port = match dest {
        Destination::Peer(a) | Destination::Group(a) => a.port(),
    };
    let bind = match dest {
        Destination::Peer(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        Destination::Group(g) => SocketAddrV4::new(*g.ip(), port),
    };
    s.bind(&SocketAddr::V4(bind).into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the sync socket to {bind}: {e}"),
        )
    })?;
    if let Destination::Group(g) = dest {
        let index = if_index(interface)?;
        s.join_multicast_v4_n(g.ip(), &socket2::InterfaceIndexOrAddress::Index(index))?;
        // IP_MULTICAST_IF by interface index (ip_mreqn).
        let mreq = libc::ip_mreqn {
            imr_multiaddr: libc::in_addr { s_addr: 0 },
            imr_address: libc::in_addr { s_addr: 0 },
            imr_ifindex: index as libc::c_int,
        };
        // SAFETY: a valid socket and a pointer to an ip_mreqn of the given size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                (&mreq as *const libc::ip_mreqn).cast(),
                std::mem::size_of::<libc::ip_mreqn>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        s.set_multicast_loop_v4(false)?;
        s.set_multicast_ttl_v4(1)?;
    }
    s.set_send_buffer_size(4 << 20)?;
    s.set_recv_buffer_size(8 << 20)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn if_index(name: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(name)
        .map_err(|_| io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}")))
}

impl Syncd {
    /// Opens the socket and starts the thread. `on_event` gets the session's events (from
    /// the sync thread: keep it short).
    pub fn start(
        cfg: SyncConfig,
        engine: Arc<Engine>,
        services: Arc<ArcSwap<ServiceTable>>,
        clock: Clock,
        queue: Arc<ChangeQueue>,
        on_event: Box<dyn Fn(&Event) + Send>,
    ) -> io::Result<Syncd> {
        let socket = open_socket(&cfg.interface, cfg.destination)?;
        let stop = Arc::new(AtomicBool::new(false));
        let snapshot = Arc::new(Mutex::new(None));
        let resync_complete = Arc::new(AtomicBool::new(false));
        let loops = Arc::new(AtomicU64::new(0));
        let counters = Arc::new(ReplicaCounters::default());
        let claims_out = Arc::new(Mutex::new(None));
        let claims_in = Arc::new(Mutex::new(None));
        let mut session_cfg = cfg.session.clone();
        if let Destination::Peer(p) = cfg.destination {
            session_cfg.peer_addr = Some(*p.ip());
        }
        let worker = Worker {
            socket: socket.into(),
            dest: match cfg.destination {
                Destination::Peer(a) | Destination::Group(a) => a,
            },
            session: Session::new(session_cfg, cfg.key.clone(), Duration::ZERO),
            replicas: Replicas::new(engine.clone(), services, counters.clone()),
            engine,
            clock,
            queue: queue.clone(),
            claims_out: claims_out.clone(),
            claims_in: claims_in.clone(),
            stop: stop.clone(),
            snapshot: snapshot.clone(),
            resync_complete: resync_complete.clone(),
            loops: loops.clone(),
            on_event,
            tx_errors: 0,
            rx_errors: 0,
            lag: LagStats::default(),
        };
        let thread = std::thread::Builder::new()
            .name("syncd".into())
            .spawn(move || worker.run())?;
        Ok(Syncd {
            stop,
            thread: Some(thread),
            claims_out,
            claims_in,
            queue,
            snapshot,
            resync_complete,
            loops,
            replicas: counters,
            interface: cfg.interface,
            destination: cfg.destination,
            node_name: cfg.node_name,
        })
    }

    pub fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many times the sync thread has looped (at least every 50 ms while it runs).
    pub fn loops(&self) -> u64 {
        self.loops.load(Ordering::Relaxed)
    }

    /// Tells the peer what this node's VRRP instances are and say (in every heartbeat; a
    /// change at once).
    pub fn set_claims(&self, claims: Vec<Claim>) {
        *self.claims_out.lock().unwrap_or_else(|e| e.into_inner()) = Some(claims);
        self.queue.wake();
    }

    /// What the peer's VRRP instances are and say, while the peer is up; `None` when it is
    /// down or says nothing of them.
    pub fn peer_claims(&self) -> Option<Vec<Claim>> {
        self.claims_in
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// This node holds a complete copy of the peer's table.
    pub fn resync_complete(&self) -> bool {
        self.resync_complete.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Syncd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Worker {
    /// The sync socket, set up through socket2 (`open_socket`), used as a std UDP socket.
    socket: std::net::UdpSocket,
    dest: SocketAddrV4,
    session: Session,
    replicas: Replicas,
    engine: Arc<Engine>,
    clock: Clock,
    queue: Arc<ChangeQueue>,
    claims_out: Arc<Mutex<Option<Vec<Claim>>>>,
    claims_in: Arc<Mutex<Option<Vec<Claim>>>>,
    stop: Arc<AtomicBool>,
    snapshot: Arc<Mutex<Option<Snapshot>>>,
    resync_complete: Arc<AtomicBool>,
    loops: Arc<AtomicU64>,
    on_event: Box<dyn Fn(&Event) + Send>,
    tx_errors: u64,
    rx_errors: u64,
    lag: LagStats,
}

/// Longest sleep, so a stop request is seen promptly (and the loop count shows the thread
/// alive: `Syncd::loops`).
const MAX_SLEEP: Duration = Duration::from_millis(50);
const SNAPSHOT_EVERY: Duration = Duration::from_millis(20);

impl Worker {
    fn run(mut self) {
        let start = Instant::now();
        let mut changes = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut last_snapshot = Duration::ZERO;
        while !self.stop.load(Ordering::Relaxed) {
            self.loops.fetch_add(1, Ordering::Relaxed);
            let now = start.elapsed();
            let wait = self
                .session
                .poll_timeout()
                .saturating_sub(now)
                .min(MAX_SLEEP);
            self.sleep(wait);
            let now = start.elapsed();
            let claims = self
                .claims_out
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(claims) = claims {
                self.session.set_claims(now, claims);
            }
            self.receive(now, &mut buf);
            {
                let seen = self.session.peer_claims(now);
                let mut held = self.claims_in.lock().unwrap_or_else(|e| e.into_inner());
                if held.as_deref() != seen {
                    *held = seen.map(<[Claim]>::to_vec);
                }
            }
            // Local changes.
            if self.queue.take_overflow() {
                tracing::warn!("sync change queue overflowed: resyncing the peer");
                self.session.start_resync(now, "change queue overflowed");
            }
            self.queue.drain(&mut changes);
            let secs = self.clock.now();
            for (op, e) in changes.drain(..) {
                self.session.push_local(now, to_wire(op, &e, secs));
            }
            let mut src = TableSource {
                engine: &self.engine,
                now: secs,
            };
            self.session.handle_timeout(now, &mut src);
            while let Some(a) = self.session.poll_apply() {
                self.replicas.apply(a, secs);
            }
            self.send();
            while let Some(ev) = self.session.poll_event() {
                (self.on_event)(&ev);
            }
            self.resync_complete
                .store(self.session.resync_complete(), Ordering::Relaxed);
            if now >= last_snapshot + SNAPSHOT_EVERY {
                last_snapshot = now;
                self.publish(now);
            }
        }
        self.publish(start.elapsed());
    }

    fn sleep(&self, wait: Duration) {
        let mut pfds = [
            PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.queue.wake_fd(), PollFlags::POLLIN),
        ];
        // Whatever woke it (a datagram, a change, the deadline, a signal), the loop looks.
        let _ = ppoll(&mut pfds, Some(TimeSpec::from_duration(wait)), None);
    }

    fn receive(&mut self, now: Duration, buf: &mut [u8]) {
        // Bounded, so a flood cannot starve the sending side.
        for _ in 0..1024 {
            let (n, from) = match self.socket.recv_from(buf) {
                Ok(got) => got,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock
                        && e.kind() != io::ErrorKind::Interrupted
                    {
                        self.rx_errors += 1;
                    }
                    return;
                }
            };
            // An IPv4 socket: the sender is IPv4.
            let SocketAddr::V4(from) = from else {
                continue;
            };
            self.session.handle_datagram(now, *from.ip(), &buf[..n]);
        }
    }

    fn send(&mut self) {
        while let Some(bytes) = self.session.poll_transmit() {
            if let Err(e) = self.socket.send_to(&bytes, self.dest) {
                // Lost like on the wire: the peer NACKs what it misses.
                self.tx_errors += 1;
                if self.tx_errors.is_power_of_two() {
                    tracing::warn!(
                        "sync send to {}: {e} ({} errors)",
                        self.dest,
                        self.tx_errors
                    );
                }
            }
        }
    }

    fn publish(&mut self, now: Duration) {
        let status = self.session.status(now);
        if let Some(rtt) = status.ack_rtt {
            let ms = rtt.as_secs_f64() * 1e3;
            self.lag.max_ms = self.lag.max_ms.max(ms);
        }
        let snap = Snapshot {
            status,
            tx_errors: self.tx_errors,
            rx_errors: self.rx_errors,
            queue_dropped: self.queue.dropped.load(Ordering::Relaxed),
            lag_ms: self.lag,
        };
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(snap);
    }
}

/// The epoch of a run starting now: wall-clock microseconds, so a restarted node's epoch is
/// larger than its previous run's.
pub fn new_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// The node id of `name` (see [`wire::node_id`]).
pub fn node_id(name: &str) -> u32 {
    wire::node_id(name)
}
