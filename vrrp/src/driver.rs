//! The I/O driver: runs a [`Router`] on one thread against real sockets.
//!
//! One thread owns everything: the raw VRRP sockets (one per interface), the gratuitous-ARP
//! sockets, the rtnetlink handle that adds and removes VIPs, the link watcher and a command
//! eventfd. It sleeps in `ppoll` until the router's next timer or an input (or at most
//! [`BEAT`], so that its loop count shows it alive: [`Vrrp::loops`]), so timers are
//! kept to the microsecond when the thread is scheduled on time — and to be scheduled on time
//! under CPU load it runs SCHED_FIFO (the daemon also locks its memory). Notify hooks run on
//! another, normal-priority thread.
//!
//! Start-up removes every configured VIP from its interface first: a crashed run (SIGKILL)
//! leaves them behind, and a box in Initialize/Backup must not hold them.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::time::TimeSpec;

use crate::instance::{Action, Cause, InstanceConfig, PeerClaim, State, Status, Track};
use crate::io::addr::Rtnl;
use crate::io::garp::GarpSender;
use crate::io::link::LinkWatcher;
use crate::io::socket::AdvertSocket;
use crate::notify::{Hook, Notifier};
use crate::router::{GroupConfig, Router};
use crate::wire::{self, ChecksumMode, MULTICAST_V4};

/// The tracked object every instance has: the datapath's heartbeat. A box that cannot
/// forward must not hold the VIPs.
pub const TRACK_DATAPATH: &str = "datapath";

/// The longest the VRRP thread sleeps with no timer due: it loops at least this often, so
/// the daemon can tell a live thread from a stuck one ([`Vrrp::loops`]).
pub const BEAT: Duration = Duration::from_millis(250);

/// The tracked-object name of an interface.
pub fn track_interface(name: &str) -> String {
    format!("if:{name}")
}

/// One instance as the driver runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInstance {
    /// `primary` is filled in at start from the interface's first address that is not a VIP.
    pub config: InstanceConfig,
    pub interface: String,
    /// The VIPs with the prefix length they are added with.
    pub vips: Vec<(Ipv4Addr, u8)>,
    /// Empty: multicast to 224.0.0.18.
    pub unicast_peers: Vec<Ipv4Addr>,
    pub checksum: ChecksumMode,
    pub notify: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverGroup {
    pub config: GroupConfig,
    pub notify: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub instances: Vec<DriverInstance>,
    pub groups: Vec<DriverGroup>,
    /// SCHED_FIFO priority of the timer thread; `None` = normal scheduling.
    pub realtime_priority: Option<i32>,
    /// Start with preemption held off, until [`Vrrp::hold_preempt`]`(false)` (connection
    /// sync has resynced).
    pub hold_preempt: bool,
}

/// A state change worth recording (`director events`) — reported through the callback given
/// to [`Vrrp::start`], from the timer thread: keep it short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Transition {
        instance: String,
        from: State,
        to: State,
        cause: Cause,
        priority: u8,
    },
    DualMaster {
        instance: String,
        from: IpAddr,
        priority: u8,
    },
    /// An advert the pair's peer contradicts over the sync link was ignored (once per
    /// episode).
    Uncorroborated {
        instance: String,
        from: IpAddr,
        priority: u8,
        why: crate::instance::Uncorroborated,
    },
    /// This member's master went silent while another member of its sync group (`by`)
    /// hears a live one: it stayed BACKUP (once per episode).
    GroupHeld { instance: String, by: String },
}

/// What `director vrrp` shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub instances: Vec<InstanceView>,
    /// Malformed adverts per kind, over all interfaces.
    pub malformed: BTreeMap<&'static str, u64>,
    /// Adverts for a VRID nobody here runs, or from a source that is not a unicast peer.
    pub foreign: u64,
    /// The timer thread runs SCHED_FIFO.
    pub realtime: bool,
    /// Timer wake-ups later than 1 ms / 5 ms after their deadline.
    pub late_wakeups_1ms: u64,
    pub late_wakeups_5ms: u64,
}

#[derive(Debug, Clone)]
pub struct InstanceView {
    pub status: Status,
    pub interface: String,
    pub primary: IpAddr,
    pub group: Option<String>,
    pub vips: Vec<(Ipv4Addr, u8)>,
    /// Wall-clock time of the last transition.
    pub last_transition_at: Option<SystemTime>,
}

enum Command {
    HoldPreempt(bool),
    /// What the pair's peer says of each VRID (`None`: nothing from the sync link now).
    PairPeer(Option<Vec<(u8, PeerClaim)>>),
    Demote(Sender<()>),
    Promote(Sender<()>),
    Track(String, bool),
    Stop,
}

/// The running VRRP engine.
pub struct Vrrp {
    commands: Sender<Command>,
    wake: Arc<EventFd>,
    snapshot: Arc<Mutex<Snapshot>>,
    thread: Option<JoinHandle<()>>,
    notifier: Option<Notifier>,
    loops: Arc<AtomicU64>,
}

fn eventfd() -> io::Result<EventFd> {
    Ok(EventFd::from_value_and_flags(
        0,
        EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
    )?)
}

fn wake(fd: &EventFd) {
    // Fails only for a counter near u64::MAX, which wake-ups never reach.
    let _ = fd.write(1);
}

impl Vrrp {
    /// Resolves the interfaces, removes stale VIPs, opens the sockets and starts the
    /// instances. Errors (an interface that does not exist, a socket that cannot be opened)
    /// are returned before anything runs.
    pub fn start(
        mut config: DriverConfig,
        on_notice: Box<dyn Fn(Notice) + Send>,
    ) -> io::Result<Vrrp> {
        let mut io = Io::open(&mut config)?;
        let notifier = Notifier::start()?;
        let hooks = notifier.sender();
        let (tx, rx) = mpsc::channel();
        let wake_fd = Arc::new(eventfd()?);
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let snap = snapshot.clone();
        let wake_rx = wake_fd.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let loops = Arc::new(AtomicU64::new(0));
        let counted = loops.clone();
        let thread = thread::Builder::new().name("vrrp".into()).spawn(move || {
            let realtime = match config.realtime_priority {
                Some(p) => match crate::io::rt::set_realtime(p) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("cannot run the VRRP timer thread SCHED_FIFO {p}: {e}");
                        false
                    }
                },
                None => false,
            };
            let _ = ready_tx.send(());
            io.run(
                config, rx, wake_rx, snap, realtime, hooks, on_notice, counted,
            );
        })?;
        let _ = ready_rx.recv();
        Ok(Vrrp {
            commands: tx,
            wake: wake_fd,
            snapshot,
            thread: Some(thread),
            notifier: Some(notifier),
            loops,
        })
    }

    /// How many times the VRRP thread has looped (at least every [`BEAT`] while it runs).
    pub fn loops(&self) -> u64 {
        self.loops.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().expect("snapshot lock").clone()
    }

    fn call(&self, make: impl FnOnce(Sender<()>) -> Command) {
        let (tx, rx) = mpsc::channel();
        if self.commands.send(make(tx)).is_ok() {
            wake(&self.wake);
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Resign every instance (priority 0) and stop preempting until [`Vrrp::promote`].
    pub fn demote(&self) {
        self.call(Command::Demote);
    }

    /// Take every instance over now, advertising priority 254.
    pub fn promote(&self) {
        self.call(Command::Promote);
    }

    /// Holds preemption off or lets it go (see [`DriverConfig::hold_preempt`]).
    pub fn hold_preempt(&self, held: bool) {
        if self.commands.send(Command::HoldPreempt(held)).is_ok() {
            wake(&self.wake);
        }
    }

    /// What the pair's peer says over the sync link of its instances, by VRID; `None` when the
    /// link has no word from it. See [`crate::instance::Instance::set_pair_peer`].
    pub fn set_pair_peer(&self, claims: Option<Vec<(u8, PeerClaim)>>) {
        if self.commands.send(Command::PairPeer(claims)).is_ok() {
            wake(&self.wake);
        }
    }

    /// A tracked object changed (`datapath`, `service:NAME`, ...).
    pub fn set_track(&self, name: &str, up: bool) {
        if self
            .commands
            .send(Command::Track(name.to_owned(), up))
            .is_ok()
        {
            wake(&self.wake);
        }
    }

    /// Shuts the instances down (a master resigns and removes its VIPs) and joins the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.commands.send(Command::Stop);
            wake(&self.wake);
            let _ = t.join();
        }
        if let Some(n) = self.notifier.take() {
            n.stop();
        }
    }
}

impl Drop for Vrrp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An interface the driver uses.
struct Iface {
    name: String,
    index: u32,
    socket: AdvertSocket,
    garp: GarpSender,
}

struct Io {
    rtnl: Rtnl,
    links: LinkWatcher,
    ifaces: Vec<Iface>,
    /// Per instance: its index into `ifaces`.
    iface_of: Vec<usize>,
    /// Initial interface states, fed to the router before start-up.
    initial_links: Vec<(String, bool)>,
}

impl Io {
    fn open(config: &mut DriverConfig) -> io::Result<Io> {
        let mut rtnl = Rtnl::new()?;
        let links = LinkWatcher::new()?;
        let mut ifaces: Vec<Iface> = Vec::new();
        let mut iface_of = Vec::new();
        let mut initial_links = Vec::new();
        // Interfaces with at least one multicast instance join 224.0.0.18.
        let multicast_ifaces: Vec<String> = config
            .instances
            .iter()
            .filter(|i| i.unicast_peers.is_empty())
            .map(|i| i.interface.clone())
            .collect();
        for inst in &mut config.instances {
            let link = rtnl.link(&inst.interface).map_err(|e| {
                io::Error::other(format!(
                    "VRRP instance {}: interface {}: {e}",
                    inst.config.name, inst.interface
                ))
            })?;
            // A crashed run leaves its VIPs behind; a starting instance holds none.
            for &(vip, len) in &inst.vips {
                rtnl.del_addr(link.index, vip, len)
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
            let primary = rtnl
                .addrs(link.index)
                .map_err(|e| io::Error::other(e.to_string()))?
                .into_iter()
                .map(|(a, _)| a)
                .find(|a| !inst.vips.iter().any(|(v, _)| v == a))
                .ok_or_else(|| {
                    io::Error::other(format!(
                        "VRRP instance {}: interface {} has no IPv4 address of its own \
                         (the advert source and tie-breaker)",
                        inst.config.name, inst.interface
                    ))
                })?;
            inst.config.primary = IpAddr::V4(primary);
            let own = track_interface(&inst.interface);
            if !inst.config.tracks.iter().any(|t| t.name == own) {
                inst.config.tracks.push(Track {
                    name: own,
                    weight: 0,
                });
            }
            if !inst.config.tracks.iter().any(|t| t.name == TRACK_DATAPATH) {
                inst.config.tracks.push(Track {
                    name: TRACK_DATAPATH.into(),
                    weight: 0,
                });
            }
            for t in &inst.config.tracks {
                if let Some(name) = t.name.strip_prefix("if:") {
                    if !initial_links.iter().any(|(n, _)| n == name) {
                        let up = rtnl.link(name).map(|l| l.up).unwrap_or(false);
                        initial_links.push((name.to_owned(), up));
                    }
                }
            }
            let index = match ifaces.iter().position(|i| i.index == link.index) {
                Some(i) => i,
                None => {
                    let multicast = multicast_ifaces.contains(&link.name);
                    ifaces.push(Iface {
                        name: link.name.clone(),
                        index: link.index,
                        socket: AdvertSocket::open(&link.name, link.index, primary, multicast)?,
                        garp: GarpSender::open(link.index, link.mac)?,
                    });
                    ifaces.len() - 1
                }
            };
            iface_of.push(index);
        }
        Ok(Io {
            rtnl,
            links,
            ifaces,
            iface_of,
            initial_links,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        config: DriverConfig,
        commands: Receiver<Command>,
        wake_fd: Arc<EventFd>,
        snapshot: Arc<Mutex<Snapshot>>,
        realtime: bool,
        hooks: Sender<Hook>,
        on_notice: Box<dyn Fn(Notice) + Send>,
        loops: Arc<AtomicU64>,
    ) {
        let epoch = Instant::now();
        let now = || epoch.elapsed();
        let mut router = Router::new(
            config.instances.iter().map(|i| i.config.clone()).collect(),
            config.groups.iter().map(|g| g.config.clone()).collect(),
        );
        let mut state = RunState {
            config,
            snapshot: Snapshot {
                realtime,
                ..Snapshot::default()
            },
            transitions_at: Vec::new(),
            group_states: Vec::new(),
            hooks,
            on_notice,
        };
        state.transitions_at = vec![None; state.config.instances.len()];
        state.group_states = vec![None; state.config.groups.len()];
        for (name, up) in std::mem::take(&mut self.initial_links) {
            router.set_track(Duration::ZERO, &track_interface(&name), up);
        }
        router.hold_preempt(state.config.hold_preempt);
        router.startup(now());
        self.execute(&mut router, &mut state);
        state.publish(&router, &snapshot);

        let mut buf = vec![0u8; 2048];
        // Readiness of the wake-up eventfd, the link watcher and each interface's socket,
        // in that order, from the last ppoll.
        let mut ready: Vec<bool> = Vec::new();
        let mut n;
        loop {
            loops.fetch_add(1, Ordering::Relaxed);
            let deadline = router.poll_timeout();
            let left = deadline.map_or(BEAT, |d| d.saturating_sub(now()).min(BEAT));
            {
                let mut pfds = Vec::with_capacity(2 + self.ifaces.len());
                pfds.push(PollFd::new(wake_fd.as_fd(), PollFlags::POLLIN));
                pfds.push(PollFd::new(self.links.as_fd(), PollFlags::POLLIN));
                for i in &self.ifaces {
                    pfds.push(PollFd::new(i.socket.as_fd(), PollFlags::POLLIN));
                }
                // How many sources are ready; an error counts as something to publish.
                n = match ppoll(&mut pfds, Some(TimeSpec::from_duration(left)), None) {
                    Ok(k) => k,
                    Err(Errno::EINTR) => -1,
                    Err(e) => {
                        tracing::error!("VRRP ppoll: {e}");
                        thread::sleep(Duration::from_millis(1));
                        -1
                    }
                };
                ready.clear();
                ready.extend(
                    pfds.iter()
                        .map(|p| p.revents().is_some_and(|r| !r.is_empty())),
                );
            }
            let t = now();
            if let Some(d) = deadline.filter(|&d| t >= d) {
                let late = t - d;
                if late > Duration::from_millis(1) {
                    state.snapshot.late_wakeups_1ms += 1;
                }
                if late > Duration::from_millis(5) {
                    state.snapshot.late_wakeups_5ms += 1;
                }
            }
            // Inputs first, in arrival order per source, then the timers due by now.
            if ready[0] {
                // Resets the counter.
                let _ = wake_fd.read();
            }
            let mut stop = false;
            while let Ok(cmd) = commands.try_recv() {
                match cmd {
                    Command::Demote(ack) => {
                        router.demote(now());
                        self.execute(&mut router, &mut state);
                        let _ = ack.send(());
                    }
                    Command::Promote(ack) => {
                        router.promote(now());
                        self.execute(&mut router, &mut state);
                        let _ = ack.send(());
                    }
                    Command::Track(name, up) => router.set_track(now(), &name, up),
                    Command::HoldPreempt(held) => router.hold_preempt(held),
                    Command::PairPeer(claims) => router.set_pair_peer(claims.as_deref()),
                    Command::Stop => stop = true,
                }
            }
            if stop {
                router.shutdown(now());
                self.execute(&mut router, &mut state);
                state.publish(&router, &snapshot);
                return;
            }
            if ready[1] {
                for ev in self.links.drain() {
                    router.set_track(now(), &track_interface(&ev.name), ev.up);
                }
                if self.links.take_overrun() {
                    // Notifications were lost: read every tracked link again.
                    let names: Vec<String> = state
                        .config
                        .instances
                        .iter()
                        .flat_map(|i| i.config.tracks.iter())
                        .filter_map(|t| t.name.strip_prefix("if:").map(str::to_owned))
                        .collect();
                    for name in names {
                        let up = self.rtnl.link(&name).map(|l| l.up).unwrap_or(false);
                        router.set_track(now(), &track_interface(&name), up);
                    }
                }
            }
            for k in 0..self.ifaces.len() {
                if !ready[2 + k] {
                    continue;
                }
                loop {
                    let len = match self.ifaces[k].socket.recv(&mut buf) {
                        Ok(Some(len)) => len,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(interface = %self.ifaces[k].name, "VRRP receive: {e}");
                            break;
                        }
                    };
                    let rx = match wire::decode_ipv4(&buf[..len]) {
                        Ok(rx) => rx,
                        Err(e) => {
                            *state.snapshot.malformed.entry(e.label()).or_default() += 1;
                            tracing::debug!(interface = %self.ifaces[k].name, "malformed VRRP advert: {e}");
                            continue;
                        }
                    };
                    let src = IpAddr::V4(rx.src);
                    let target = state
                        .config
                        .instances
                        .iter()
                        .enumerate()
                        .position(|(i, inst)| {
                            self.iface_of[i] == k
                                && inst.config.vrid == rx.advert.vrid
                                && (inst.unicast_peers.is_empty()
                                    || inst.unicast_peers.contains(&rx.src))
                        });
                    match target {
                        Some(i) => router.handle_advert(now(), i, src, &rx.advert),
                        None => state.snapshot.foreign += 1,
                    }
                }
            }
            let t = now();
            if router.poll_timeout().is_some_and(|d| t >= d) {
                router.handle_timeout(t);
            }
            if self.execute(&mut router, &mut state) || n != 0 {
                state.publish(&router, &snapshot);
            }
        }
    }

    /// Carries out the router's actions. Returns whether there were any.
    fn execute(&mut self, router: &mut Router, state: &mut RunState) -> bool {
        let mut any = false;
        while let Some((i, action)) = router.poll_action() {
            any = true;
            let inst = &state.config.instances[i];
            let iface = &self.ifaces[self.iface_of[i]];
            match action {
                Action::SendAdvert { priority } => {
                    let advert = router.instance(i).advert(priority);
                    let src = inst.config.primary;
                    let dests: Vec<Ipv4Addr> = if inst.unicast_peers.is_empty() {
                        vec![MULTICAST_V4]
                    } else {
                        inst.unicast_peers.clone()
                    };
                    for dst in dests {
                        let payload = wire::encode(&advert, src, IpAddr::V4(dst), inst.checksum);
                        if let Err(e) = iface.socket.send(&payload, dst) {
                            tracing::warn!(instance = %inst.config.name, %dst, "cannot send VRRP advert: {e}");
                        }
                    }
                }
                Action::AddVips => {
                    for &(vip, len) in &inst.vips {
                        if let Err(e) = self.rtnl.add_addr(iface.index, vip, len) {
                            tracing::error!(instance = %inst.config.name, %vip, "cannot add VIP: {e}");
                        }
                    }
                }
                Action::RemoveVips => {
                    for &(vip, len) in &inst.vips {
                        if let Err(e) = self.rtnl.del_addr(iface.index, vip, len) {
                            tracing::error!(instance = %inst.config.name, %vip, "cannot remove VIP: {e}");
                        }
                    }
                }
                Action::Garp => {
                    for &(vip, _) in &inst.vips {
                        if let Err(e) = iface.garp.send(vip) {
                            tracing::debug!(instance = %inst.config.name, %vip, "gratuitous ARP: {e}");
                        }
                    }
                }
                Action::Transition { from, to, cause } => {
                    let priority = router.instance(i).effective_priority();
                    tracing::info!(
                        instance = %inst.config.name,
                        %from, %to, %cause, priority,
                        "VRRP transition"
                    );
                    state.transitions_at[i] = Some(SystemTime::now());
                    if let Some(program) = &inst.notify {
                        let _ = state.hooks.send(Hook {
                            program: program.clone(),
                            kind: "INSTANCE",
                            name: inst.config.name.clone(),
                            state: hook_state(to),
                            priority,
                        });
                    }
                    (state.on_notice)(Notice::Transition {
                        instance: inst.config.name.clone(),
                        from,
                        to,
                        cause,
                        priority,
                    });
                }
                Action::Uncorroborated {
                    from,
                    priority,
                    why,
                } => {
                    tracing::warn!(
                        instance = %inst.config.name, %from, priority,
                        "advert ignored: {why}"
                    );
                    (state.on_notice)(Notice::Uncorroborated {
                        instance: inst.config.name.clone(),
                        from,
                        priority,
                        why,
                    });
                }
                Action::GroupHeld { by } => {
                    tracing::warn!(
                        instance = %inst.config.name, member = %by,
                        "master silent, but sync group member {by} hears a live master: staying BACKUP"
                    );
                    (state.on_notice)(Notice::GroupHeld {
                        instance: inst.config.name.clone(),
                        by,
                    });
                }
                Action::DualMaster { from, priority } => {
                    tracing::warn!(
                        instance = %inst.config.name, %from, priority,
                        "two masters: a lower-priority master is on the segment; staying master and re-announcing"
                    );
                    (state.on_notice)(Notice::DualMaster {
                        instance: inst.config.name.clone(),
                        from,
                        priority,
                    });
                }
            }
        }
        if any {
            state.group_hooks(router);
        }
        any
    }
}

fn hook_state(s: State) -> &'static str {
    match s {
        State::Initialize => "STOP",
        s => s.as_str(),
    }
}

struct RunState {
    config: DriverConfig,
    snapshot: Snapshot,
    transitions_at: Vec<Option<SystemTime>>,
    /// The state each group's notify hook was last called with.
    group_states: Vec<Option<State>>,
    hooks: Sender<Hook>,
    on_notice: Box<dyn Fn(Notice) + Send>,
}

impl RunState {
    /// A group's hook runs when all its members have reached a new common state.
    fn group_hooks(&mut self, router: &Router) {
        for (g, group) in self.config.groups.iter().enumerate() {
            let members: Vec<usize> = group
                .config
                .members
                .iter()
                .filter_map(|m| router.instances().iter().position(|i| i.name() == m))
                .collect();
            let Some(&first) = members.first() else {
                continue;
            };
            let s = router.instance(first).state();
            if members.iter().all(|&m| router.instance(m).state() == s)
                && self.group_states[g] != Some(s)
            {
                self.group_states[g] = Some(s);
                if let Some(program) = &group.notify {
                    let _ = self.hooks.send(Hook {
                        program: program.clone(),
                        kind: "GROUP",
                        name: group.config.name.clone(),
                        state: hook_state(s),
                        priority: router.instance(first).effective_priority(),
                    });
                }
            }
        }
    }

    fn publish(&self, router: &Router, snapshot: &Mutex<Snapshot>) {
        let mut snap = self.snapshot.clone();
        snap.instances = router
            .instances()
            .iter()
            .enumerate()
            .map(|(i, inst)| InstanceView {
                status: inst.status(),
                interface: self.config.instances[i].interface.clone(),
                primary: self.config.instances[i].config.primary,
                group: router.group_of(i).map(|g| g.name.clone()),
                vips: self.config.instances[i].vips.clone(),
                last_transition_at: self.transitions_at[i],
            })
            .collect();
        *snapshot.lock().expect("snapshot lock") = snap;
    }
}
