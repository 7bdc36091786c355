//! The engine as directord assembles it (connection table, persistence, real registry,
//! service table behind an ArcSwap, FIB of the lab's two interfaces), a recording
//! neighbour-miss handler, and the table runner.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use forwarder::conntrack::{ConnEntry, ConnState, ConnTable, FlowKey};
use forwarder::engine::{
    DropReason, Engine, EngineObserver, FrameOut, NeighbourMiss, RxMeta, ServiceTable, Tables,
    Verdict, WorkerCounters, WorkerCtx, WorkerState,
};
use forwarder::fib::{Fib, Interface, Route};
use forwarder::model::{Mode, Protocol, RealServer, SchedulerKind, Timeouts, VirtualService};
use forwarder::sched::PersistTable;
use forwarder::stats::{RealRegistry, RealSlot};
use forwarder::wire::ipv4::Ipv4Packet;

use super::frames::{check_checksums, diff, hexdump, L4Check, Mac};

// ---- the lab's addresses (those of tests/src/topo.rs) ---------------------------------------

pub const EXT: u32 = 2;
pub const INT: u32 = 3;
pub const EXT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
pub const INT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x03];
pub const EXT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const INT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x0a];
/// The router on the client side (default gateway).
pub const ROUTER_EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
pub const ROUTER_EXT_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0xfe];
/// A router on the real servers' side.
pub const ROUTER_INT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 254);
pub const ROUTER_INT_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0xfe];
/// A NAT real server whose MAC the FIB does not know.
pub const UNRESOLVED_REAL: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 14);

/// NAT real server `i` (1-based): 198.18.2.1i.
pub fn nat_real(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + i)
}

pub fn nat_real_mac(i: u8) -> Mac {
    [0x02, 0, 0, 0, 0x02, 10 + i]
}

/// DR real server `i` (1-based): 198.18.1.1i (VIP on lo).
pub fn dr_real(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + i)
}

pub fn dr_real_mac(i: u8) -> Mac {
    [0x02, 0, 0, 0, 0x01, 10 + i]
}

pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

pub fn service(
    name: &str,
    port: u16,
    protocol: Protocol,
    mode: Mode,
    scheduler: SchedulerKind,
    reals: &[(Ipv4Addr, u16, u32)],
) -> VirtualService {
    VirtualService {
        name: name.into(),
        vip: sa(VIP, port),
        protocol,
        mode,
        scheduler,
        persistence: Duration::ZERO,
        reals: reals
            .iter()
            .map(|&(ip, port, weight)| RealServer {
                addr: sa(ip, port),
                weight,
            })
            .collect(),
        local_addresses: Vec::new(),
        proxy_protocol: None,
    }
}

pub fn lab_fib() -> Fib {
    fib_with_ext_addrs(vec![(EXT_ADDR, 24)])
}

fn fib_with_ext_addrs(ext_addrs: Vec<(Ipv4Addr, u8)>) -> Fib {
    let iface = |ifindex, name: &str, mac, addrs| Interface {
        ifindex,
        name: name.into(),
        mac,
        mtu: 1500,
        up: true,
        loopback: false,
        addrs,
    };
    let route = |dst, prefix_len, gateway, oif| Route {
        dst,
        prefix_len,
        gateway,
        oif,
        metric: 0,
    };
    let mut neigh = vec![
        (EXT, CLIENT, CLIENT_MAC),
        (EXT, ROUTER_EXT, ROUTER_EXT_MAC),
        (INT, ROUTER_INT, ROUTER_INT_MAC),
    ];
    for i in 1..=3 {
        neigh.push((INT, nat_real(i), nat_real_mac(i)));
        neigh.push((EXT, dr_real(i), dr_real_mac(i)));
    }
    Fib::new(
        vec![
            iface(EXT, "ext", EXT_MAC, ext_addrs),
            iface(INT, "int", INT_MAC, vec![(INT_ADDR, 24)]),
        ],
        vec![
            route(Ipv4Addr::UNSPECIFIED, 0, Some(ROUTER_EXT), EXT),
            route(Ipv4Addr::new(198, 18, 1, 0), 24, None, EXT),
            route(Ipv4Addr::new(198, 18, 2, 0), 24, None, INT),
        ],
        neigh,
    )
}

/// A second address of the director on ext, in no real server's subnet.
pub const EXT_SECOND: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 2);
/// A TUN real server beyond the router on the client side.
pub const FAR_REAL: Ipv4Addr = Ipv4Addr::new(198, 19, 5, 5);

/// The lab's FIB with the VIP (first, as keepalived adds it) and a second address on ext:
/// the tunnel source is the director's own address in the real server's subnet, else its
/// first own address, never the VIP.
pub fn tun_fib() -> Fib {
    fib_with_ext_addrs(vec![(VIP, 24), (EXT_SECOND, 24), (EXT_ADDR, 24)])
}

/// Records every neighbour miss and knows no MAC the FIB does not.
#[derive(Default)]
pub struct Misses(pub Vec<(u32, Ipv4Addr)>);

impl NeighbourMiss for Misses {
    fn on_miss(&mut self, ifindex: u32, addr: Ipv4Addr) -> Option<Mac> {
        self.0.push((ifindex, addr));
        None
    }
}

/// Records every frame the engine builds and emits, as the transmit batch would send it.
#[derive(Default)]
pub struct Emitted(pub Vec<(u32, Vec<u8>)>);

impl FrameOut for Emitted {
    fn emit(&mut self, ifindex: u32, frame: &[u8]) {
        self.0.push((ifindex, frame.to_vec()));
    }
}

/// The XDP program, loaded, beside the engine: every row also runs through it
/// (`BPF_PROG_TEST_RUN`) with its flow map mirrored from the engine's connection table as
/// the fast path's manager mirrors it ([`forwarder::io::fastpath::plan`]). A frame the
/// program forwards must come out byte for byte as the engine's; one it passes must be
/// unchanged; and it must forward exactly the frames the fast path owns (see `owned`).
pub struct XdpCheck {
    prog: forwarder::io::xdp::XdpProgram,
    maps: forwarder::io::fastpath::FastMaps,
    written: Vec<forwarder::io::fastpath::BpfFlowKey>,
    /// Rows the program forwarded, and rows it left to the engine.
    pub forwarded: usize,
    pub passed: usize,
}

/// XDP actions.
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

impl XdpCheck {
    /// The program loaded in a network namespace of this test thread's own, where the lab's
    /// two interfaces exist as a veth pair with the FIB's ifindexes (`ext` 2, `int` 3), so
    /// that the program's redirect map and ingress interface mean what they mean in the
    /// lab. `None` (with a message) where that cannot be done outside CI; in CI a failure.
    pub fn for_test(table: &str) -> Option<XdpCheck> {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let fail = |why: String| -> Option<XdpCheck> {
            assert!(
                !ci,
                "[{table}] the XDP golden check cannot run in CI: {why}"
            );
            eprintln!("[{table}] SKIPPED the XDP golden check: {why}");
            None
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return fail(
                "not root (loading an XDP program needs CAP_BPF and CAP_NET_ADMIN)".into(),
            );
        }
        // SAFETY: unshare of the network namespace for this thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return fail(format!(
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            ));
        }
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !(ip(&[
            "link", "add", "ext", "index", "2", "type", "veth", "peer", "name", "int", "index", "3",
        ]) && ip(&["link", "set", "ext", "up"])
            && ip(&["link", "set", "int", "up"]))
        {
            return fail("cannot make the ext/int veth pair".into());
        }
        // if_nametoindex asks through a socket, in this thread's namespace (sysfs would
        // show the namespace it was mounted in).
        let index = |name: &str| {
            let c = std::ffi::CString::new(name).expect("no NUL in an interface name");
            // SAFETY: c is a valid NUL-terminated string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            (i != 0).then_some(i)
        };
        if index("ext") != Some(EXT) || index("int") != Some(INT) {
            return fail(format!(
                "the veth pair got ifindexes {:?}/{:?}, not {EXT}/{INT}",
                index("ext"),
                index("int")
            ));
        }
        let mut prog = match forwarder::io::xdp::XdpProgram::load(4096) {
            Ok(p) => p,
            // A build without clang has no program: a missing tool, not a failure (outside CI).
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                return fail(format!("this build has no XDP program: {e}"))
            }
            // The program is there and the kernel refused it (the verifier): always a failure.
            Err(e) => panic!("[{table}] the XDP program does not load: {e}"),
        };
        for i in [EXT, INT] {
            prog.add_tx_port(i)
                .expect("dir_tx_ports takes the veth pair");
        }
        let maps = prog.fast_maps();
        Some(XdpCheck {
            prog,
            maps,
            written: Vec::new(),
            forwarded: 0,
            passed: 0,
        })
    }

    /// Makes the flow map hold exactly the engine's eligible flows, next hops from the FIB.
    fn mirror(&mut self, lab: &Lab) {
        use forwarder::io::bpf;
        for k in self.written.drain(..) {
            let _ = bpf::delete(self.maps.flows, as_bytes(&k));
        }
        let services = lab.services.load();
        let mut hops = forwarder::io::fastpath::NextHops::default();
        for e in lab.all_conns() {
            let Some(p) = forwarder::io::fastpath::plan(&e, &lab.fib, &services, &mut hops) else {
                continue;
            };
            for (slot, h) in &p.new_hops {
                bpf::update(self.maps.nexthops, &slot.to_ne_bytes(), as_bytes(h))
                    .expect("dir_nexthops takes the row");
            }
            for (k, f) in &p.rows {
                bpf::update(self.maps.flows, as_bytes(k), as_bytes(f))
                    .expect("dir_flows takes the row");
                self.written.push(*k);
            }
        }
        self.prog
            .set_tun_ident(u32::from(lab.state.peek_ident()))
            .expect("dir_ident");
    }
}

fn as_bytes<T>(v: &T) -> &[u8] {
    // SAFETY: the fast path's map types are repr(C) plain old data.
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), std::mem::size_of::<T>()) }
}

/// Whether the fast path owns `frame`: a plain TCP/UDP packet (IPv4 without options, not
/// a fragment, a right header checksum, TTL above 1, no SYN, FIN or RST) of a flow whose
/// entry is established TCP or UDP, that the engine forwards as it is (not spliced, not
/// rebuilt, not dropped). A FULLNAT reply of a PROXY protocol flow that carries a SACK
/// block may be left to the engine (a block at an odd offset is).
fn owned(frame: &[u8], entry: Option<ConnEntry>, verdict: &Verdict) -> (bool, bool) {
    let may_pass = false;
    let Some(e) = entry else {
        return (false, may_pass);
    };
    // TUN's outer header goes in as an insert (the program makes room for it); any other
    // insert (the PROXY protocol header) is the engine's.
    let forwarded_as_is = match verdict {
        Verdict::Forward { .. } => true,
        Verdict::ForwardInsert { .. } => e.mode() == Mode::Tun,
        _ => false,
    };
    if !matches!(e.state(), ConnState::Established | ConnState::Udp)
        || !forwarded_as_is
        || frame.len() < 34
        || frame[12..14] != [0x08, 0x00]
    {
        return (false, may_pass);
    }
    let ip = &frame[14..];
    let plain = ip[0] == 0x45
        && u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff == 0
        && ip[8] > 1
        && Ipv4Packet::new_checked(ip).is_ok_and(|p| p.verify_checksum());
    if !plain || !matches!(ip[9], 6 | 17) {
        return (false, may_pass);
    }
    if ip[9] == 6 {
        let flags = frame.get(14 + 20 + 13).copied().unwrap_or(0);
        if flags & 0x07 != 0 {
            return (false, may_pass);
        }
        if e.proxy_seq().is_some() {
            let doff = usize::from(frame[14 + 20 + 12] >> 4) * 4;
            let opts = frame.get(54..34 + doff).unwrap_or(&[]);
            if opts.contains(&5) {
                return (true, true);
            }
        }
    }
    (true, may_pass)
}

/// One engine with its tables, as one datapath worker sees them.
pub struct Lab {
    pub engine: Engine,
    pub services: Arc<ArcSwap<ServiceTable>>,
    pub fib: Fib,
    pub counters: WorkerCounters,
    pub misses: Misses,
    pub emitted: Emitted,
    pub state: WorkerState,
    /// With the XDP program beside the engine, every row runs through both.
    pub xdp: Option<XdpCheck>,
}

impl Lab {
    pub fn new(services: Vec<VirtualService>) -> Lab {
        Lab::with_capacity(services, 4096)
    }

    /// Assembled as `director::daemon::Daemon::start` does it.
    pub fn with_capacity(services: Vec<VirtualService>, capacity: u32) -> Lab {
        let mut next: RealSlot = 0;
        let slots: Vec<Vec<RealSlot>> = services
            .iter()
            .map(|s| {
                s.reals
                    .iter()
                    .map(|_| {
                        next += 1;
                        next - 1
                    })
                    .collect()
            })
            .collect();
        let reals = Arc::new(RealRegistry::new(256));
        let table = Arc::new(ArcSwap::from_pointee(ServiceTable::new(services, &slots)));
        let persist = Arc::new(PersistTable::new(1024, 64));
        let shards = if capacity < 64 { 1 } else { 16 };
        let mut conns = ConnTable::new(capacity, shards, Timeouts::default(), reals.clone());
        conns.set_observer(Arc::new(EngineObserver {
            persist: persist.clone(),
            services: table.clone(),
            downstream: None,
        }));
        Lab {
            engine: Engine::new(conns, persist, reals),
            services: table,
            fib: lab_fib(),
            counters: WorkerCounters::default(),
            misses: Misses::default(),
            emitted: Emitted::default(),
            // Worker 0 of 1: identifications 0, 1, 2...
            state: WorkerState::new(0, 1),
            xdp: None,
        }
    }

    pub fn process(&mut self, frame: &mut [u8], meta: RxMeta, now: u32) -> Verdict {
        let services = self.services.load();
        let tables = Tables {
            services: &services,
            fib: &self.fib,
        };
        let mut ctx = WorkerCtx {
            counters: &self.counters,
            neighbours: &mut self.misses,
            out: &mut self.emitted,
            state: &mut self.state,
        };
        self.engine.process(frame, meta, &tables, now, &mut ctx)
    }

    /// Runs every row of this lab through the XDP program too ([`XdpCheck`]); false when
    /// that cannot be done here (reported; only outside CI).
    pub fn use_xdp(&mut self, table: &str) -> bool {
        self.xdp = XdpCheck::for_test(table);
        self.xdp.is_some()
    }

    /// The frames emitted since the last call.
    pub fn take_emitted(&mut self) -> Vec<(u32, Vec<u8>)> {
        std::mem::take(&mut self.emitted.0)
    }

    /// Swaps in a service table with one real server's weight changed (`director real
    /// weight`).
    pub fn set_weight(&self, service: &str, real: SocketAddrV4, weight: u32) {
        let next = self
            .services
            .load()
            .with_weight(service, real, weight)
            .expect("service and real exist");
        self.services.store(Arc::new(next));
    }

    /// The live entry of a flow, if any (expired but unswept entries included).
    pub fn conn(
        &self,
        proto: Protocol,
        client: SocketAddrV4,
        vip: SocketAddrV4,
    ) -> Option<ConnEntry> {
        let key = FlowKey { proto, client, vip };
        let mut found = None;
        self.engine.conns.snapshot(|e| {
            if e.flow_key() == key {
                found = Some(*e);
            }
        });
        found
    }

    pub fn all_conns(&self) -> Vec<ConnEntry> {
        let mut all = Vec::new();
        self.engine.conns.snapshot(|e| all.push(*e));
        all
    }

    pub fn counts(&self) -> Counts {
        let c = &self.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            rx: l(&c.rx),
            passed: l(&c.passed),
            forwarded_in: l(&c.forwarded_in),
            forwarded_out: l(&c.forwarded_out),
            icmp_forwarded: l(&c.icmp_forwarded),
            emitted: l(&c.emitted),
            icmp_sent: l(&c.icmp_sent),
            icmp_limited: l(&c.icmp_limited),
            icmp_unroutable: l(&c.icmp_unroutable),
            new_conns: l(&c.new_conns),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r, c.drop_count(r)))
                .filter(|&(_, n)| n > 0)
                .collect(),
        }
    }
}

/// The counters `director stats` shows, with only the nonzero drop reasons.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    pub rx: u64,
    pub passed: u64,
    pub forwarded_in: u64,
    pub forwarded_out: u64,
    pub icmp_forwarded: u64,
    pub emitted: u64,
    pub icmp_sent: u64,
    pub icmp_limited: u64,
    pub icmp_unroutable: u64,
    pub new_conns: u64,
    pub drops: Vec<(DropReason, u64)>,
}

impl Counts {
    /// Every received frame is accounted for exactly once.
    pub fn balanced(&self) -> bool {
        let drops: u64 = self.drops.iter().map(|&(_, n)| n).sum();
        self.rx
            == self.passed
                + self.forwarded_in
                + self.forwarded_out
                + self.icmp_forwarded
                + self.emitted
                + drops
    }
}

// ---- tables -------------------------------------------------------------------------------

/// What the frame must look like after `process`.
pub enum Out {
    /// Byte for byte this frame (for `ForwardInsert`: the frame with the insert spliced in,
    /// as it goes on the wire).
    Frame(Vec<u8>),
    /// Untouched (the kernel's copy is the one that counts, the engine must not scribble).
    Unchanged,
    /// Not looked at (a dropped frame may be half rewritten).
    Any,
}

/// What the flow's entry must be after the row.
pub struct ConnCheck {
    pub proto: Protocol,
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    /// `None` = no entry.
    pub want: Option<(ConnState, SocketAddrV4)>,
}

/// One row: a frame in at `now` → a verdict and a frame out.
pub struct Row {
    pub name: String,
    pub now: u32,
    pub meta: RxMeta,
    pub input: Vec<u8>,
    pub verdict: Verdict,
    pub out: Out,
    pub l4: L4Check,
    pub conn: Option<ConnCheck>,
    /// The frames the engine must emit, in order (none unless said).
    pub emits: Vec<(u32, Vec<u8>)>,
}

/// Starts a row; finish it with `forward`, `pass` or `drop`.
pub fn row(name: &str, now: u32, input: Vec<u8>) -> Row {
    Row {
        name: name.into(),
        now,
        meta: RxMeta::default(),
        input,
        verdict: Verdict::Pass,
        out: Out::Unchanged,
        l4: L4Check::Valid,
        conn: None,
        emits: Vec::new(),
    }
}

impl Row {
    pub fn meta(mut self, meta: RxMeta) -> Row {
        if meta.csum_partial {
            self.l4 = L4Check::Partial;
        }
        self.meta = meta;
        self
    }

    pub fn forward(mut self, ifindex: u32, out: Vec<u8>) -> Row {
        self.verdict = Verdict::Forward { ifindex };
        self.out = Out::Frame(out);
        self
    }

    /// Forwarded with bytes spliced in; `out` is the frame as it goes on the wire. The
    /// verdict's insert is checked through `out`, so only its interface is compared.
    pub fn forward_insert(mut self, ifindex: u32, out: Vec<u8>) -> Row {
        self.verdict = Verdict::ForwardInsert {
            ifindex,
            insert: forwarder::engine::Insert::new(0, &[]),
        };
        self.out = Out::Frame(out);
        self
    }

    /// Replaced by `frames` (interface, frame), emitted in this order.
    pub fn emitted(mut self, frames: Vec<(u32, Vec<u8>)>) -> Row {
        self.verdict = Verdict::Emitted;
        self.out = Out::Any;
        self.emits = frames;
        self
    }

    /// Besides its verdict, the row emits `frames` (e.g. an ICMP error for a dropped frame).
    pub fn emits(mut self, frames: Vec<(u32, Vec<u8>)>) -> Row {
        self.emits = frames;
        self
    }

    pub fn pass(mut self) -> Row {
        self.verdict = Verdict::Pass;
        self.out = Out::Unchanged;
        self
    }

    pub fn drop(mut self, reason: DropReason) -> Row {
        self.verdict = Verdict::Drop(reason);
        self.out = Out::Any;
        self
    }

    /// The forwarded frame's L4 checksum is expected wrong (an error passed on).
    pub fn l4_invalid(mut self) -> Row {
        self.l4 = L4Check::Invalid;
        self
    }

    pub fn conn(
        mut self,
        proto: Protocol,
        client: SocketAddrV4,
        vip: SocketAddrV4,
        want: Option<(ConnState, SocketAddrV4)>,
    ) -> Row {
        self.conn = Some(ConnCheck {
            proto,
            client,
            vip,
            want,
        });
        self
    }
}

/// Runs the rows in order against one engine; returns one readable report per failed row.
pub fn run_table(lab: &mut Lab, table: &str, rows: Vec<Row>) -> Vec<String> {
    let mut failures = Vec::new();
    for r in rows {
        let mut frame = r.input.clone();
        // The program's view of the frame before the engine changes the table: no ring
        // metadata (a frame an XDP program sees carries none: complete checksums, no GSO).
        let xdp_run = match lab.xdp.take() {
            // BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet header (no NIC
            // delivers one either).
            Some(mut x) if r.meta == RxMeta::default() && r.input.len() >= 14 => {
                x.mirror(lab);
                let ingress = if r.input.get(0..6) == Some(&INT_MAC[..]) {
                    INT
                } else {
                    EXT
                };
                let run = x
                    .prog
                    .run_test(&r.input, ingress)
                    .expect("BPF_PROG_TEST_RUN");
                let entry = flow_entry(lab, &r.input);
                lab.xdp = Some(x);
                Some((run, ingress, entry))
            }
            other => {
                lab.xdp = other;
                None
            }
        };
        let verdict = lab.process(&mut frame, r.meta, r.now);
        let emitted = lab.take_emitted();
        // What goes on the wire in place of the received frame.
        if let Verdict::ForwardInsert { insert, .. } = verdict {
            let mut wire = Vec::new();
            insert.splice_into(&frame, &mut wire);
            frame = wire;
        }
        let mut problems = Vec::new();
        if !same_verdict(&verdict, &r.verdict) {
            problems.push(format!(
                "  verdict: expected {:?}, got {:?}",
                r.verdict, verdict
            ));
        }
        match &r.out {
            Out::Frame(want) if *want != frame => {
                problems.push(format!("  output frame differs:\n{}", diff(want, &frame)));
            }
            Out::Unchanged if r.input != frame => {
                problems.push(format!(
                    "  frame was modified although not forwarded:\n{}",
                    diff(&r.input, &frame)
                ));
            }
            _ => {}
        }
        if emitted != r.emits {
            problems.push(emits_diff(&r.emits, &emitted));
        }
        for (i, (_, f)) in emitted.iter().enumerate() {
            // What the engine builds always has complete checksums.
            let bad = check_checksums(f, L4Check::Valid);
            if !bad.is_empty() {
                problems.push(format!(
                    "  checksums of emitted frame {i}: {}\n{}",
                    bad.join("; "),
                    hexdump(f)
                ));
            }
        }
        if matches!(
            verdict,
            Verdict::Forward { .. } | Verdict::ForwardInsert { .. }
        ) {
            let bad = check_checksums(&frame, r.l4);
            if !bad.is_empty() {
                problems.push(format!(
                    "  checksums of the output (full recomputation): {}\n{}",
                    bad.join("; "),
                    hexdump(&frame)
                ));
            }
        }
        if let (Some(((act, out), ingress, entry)), Some(x)) = (xdp_run, lab.xdp.as_mut()) {
            let (must, may_pass) = owned(&r.input, entry, &verdict);
            match act {
                XDP_PASS => {
                    x.passed += 1;
                    if out != r.input {
                        problems.push(format!(
                            "  XDP: passed but changed the frame:\n{}",
                            diff(&r.input, &out)
                        ));
                    }
                    if must && !may_pass {
                        problems.push(
                            "  XDP: passed a frame the fast path owns (an established flow's)"
                                .into(),
                        );
                    }
                }
                XDP_TX | XDP_REDIRECT => {
                    x.forwarded += 1;
                    if !must {
                        problems.push(format!(
                            "  XDP: forwarded (action {act}) a frame the fast path must leave to the engine (engine: {verdict:?})"
                        ));
                    }
                    if let Verdict::Forward { ifindex } | Verdict::ForwardInsert { ifindex, .. } =
                        verdict
                    {
                        let want = if ifindex == ingress {
                            XDP_TX
                        } else {
                            XDP_REDIRECT
                        };
                        if act != want {
                            problems.push(format!(
                                "  XDP: action {act}, expected {want} (out of {ifindex}, in on {ingress})"
                            ));
                        }
                    }
                    if out != frame {
                        problems.push(format!(
                            "  XDP: output differs from the engine's:\n{}",
                            diff(&frame, &out)
                        ));
                    }
                }
                other => problems.push(format!("  XDP: unexpected action {other}")),
            }
        }
        if let Some(c) = &r.conn {
            let got = lab
                .conn(c.proto, c.client, c.vip)
                .map(|e| (e.state(), e.real()));
            if got != c.want {
                problems.push(format!(
                    "  connection {} → {}: expected {:?}, got {:?}",
                    c.client, c.vip, c.want, got
                ));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "[{table}] row {:?}:\n{}\n  input:\n{}",
                r.name,
                problems.join("\n"),
                hexdump(&r.input)
            ));
        }
    }
    failures
}

/// The connection entry a frame belongs to, looked up by the fast path's keys: as sent by
/// the client (client → VIP), or as a reply (real → client, real → LIP).
fn flow_entry(lab: &Lab, frame: &[u8]) -> Option<ConnEntry> {
    if frame.len() < 38 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = ip.get(ihl..ihl + 4)?;
    let src = SocketAddrV4::new(
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        u16::from_be_bytes([l4[0], l4[1]]),
    );
    let dst = SocketAddrV4::new(
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        u16::from_be_bytes([l4[2], l4[3]]),
    );
    let proto = ip[9];
    lab.all_conns().into_iter().find(|e| {
        e.proto() as u8 == proto
            && ((e.client() == src && e.vip() == dst)
                || (e.real() == src && (e.local().unwrap_or(e.client()) == dst)))
    })
}

/// Equal verdicts; for `ForwardInsert` only the interface (the inserted bytes are checked
/// through the output frame).
fn same_verdict(got: &Verdict, want: &Verdict) -> bool {
    match (got, want) {
        (Verdict::ForwardInsert { ifindex: a, .. }, Verdict::ForwardInsert { ifindex: b, .. }) => {
            a == b
        }
        _ => got == want,
    }
}

fn emits_diff(want: &[(u32, Vec<u8>)], got: &[(u32, Vec<u8>)]) -> String {
    let mut out = format!("  emitted {} frame(s), expected {}", got.len(), want.len());
    for i in 0..want.len().max(got.len()) {
        match (want.get(i), got.get(i)) {
            (Some(w), Some(g)) if w == g => {}
            (Some((wi, wf)), Some((gi, gf))) => {
                out += &format!("\n  emitted frame {i}: ");
                if wi != gi {
                    out += &format!("interface expected {wi}, got {gi}; ");
                }
                out += &diff(wf, gf);
            }
            (Some((wi, wf)), None) => {
                out += &format!("\n  missing frame {i} (to {wi}):\n{}", hexdump(wf));
            }
            (None, Some((gi, gf))) => {
                out += &format!("\n  extra frame {i} (to {gi}):\n{}", hexdump(gf));
            }
            (None, None) => {}
        }
    }
    out
}

/// After an XDP run of a table: the program must have forwarded some rows (else the check
/// proved nothing) and the row reports must be empty.
pub fn assert_xdp_forwarded(lab: &Lab, table: &str, at_least: usize) {
    if let Some(x) = &lab.xdp {
        eprintln!(
            "[{table}] XDP: {} rows forwarded by the program, {} left to the engine",
            x.forwarded, x.passed
        );
        assert!(
            x.forwarded >= at_least,
            "[{table}] the program forwarded {} rows, expected at least {at_least}",
            x.forwarded
        );
    }
}

/// Panics with every failure report, if any.
pub fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} golden row(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
