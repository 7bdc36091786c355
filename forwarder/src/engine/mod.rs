//! The packet engine: one received frame + the tables → a verdict, with the frame rewritten
//! in place. Pure: no sockets, no clock (the caller passes `now`), no allocation (but for
//! the FULLNAT port lists, once per LIP on its first use: `local_ports.rs`).
//!
//! Classification of an IPv4 frame, in order:
//! 1. to a VIP: TCP/UDP to a virtual service → *inbound* (schedule or find the flow,
//!    rewrite per mode); an ICMP error about a reply we sent toward a client → forwarded to
//!    the flow's real server; anything else (ICMP echo, SSH to the VIP) → `Pass` to the
//!    kernel;
//! 2. TCP/UDP to a FULLNAT local address (LIP) → *FULLNAT reply* when the table knows
//!    (real, LIP:lport), else `Pass` (the kernel's copy is dropped by the interception
//!    rules); an ICMP error to a LIP quoting LIP → real → translated back to the client;
//! 3. from a NAT real server's service port → *reply* (source back to VIP:port) when the
//!    connection table knows the flow, else `Pass` (the box's own health checks);
//! 4. an ICMP error quoting a client → NAT-real packet → translated back to the client;
//! 5. anything else → `Pass`.
//!
//! Stated rules for bad or unusual input (all counted, see [`DropReason`]):
//! - frames too short for the headers they claim, bad IHL, total length past the frame:
//!   dropped as `Malformed` when addressed to a VIP or from a NAT real server, else passed
//!   (the kernel decides about the box's own traffic);
//! - IPv4 header checksum wrong: dropped (`BadIpChecksum`);
//! - a packet that would create a flow has its TCP/UDP checksum verified unless the kernel
//!   already did (or the frame is a local one with a partial checksum): wrong → dropped
//!   (`BadL4Checksum`); packets of existing flows are rewritten with incremental updates,
//!   which keep an error for the end host to catch;
//! - IP options are kept and forwarded;
//! - fragments to a VIP, and first fragments of NAT replies: dropped (`Fragment`) — the
//!   datapath does not reassemble;
//! - TTL ≤ 1 on a packet to forward: dropped (`TtlExceeded`); forwarding decrements TTL as
//!   any router (and IPVS) does;
//! - TCP segment without SYN for an unknown flow: dropped (`NoConnection`), never reset;
//! - a frame larger than the egress MTU (not a GSO frame): dropped (`TooBig`); in TUN mode
//!   the tunnel's path MTU is handled instead (ICMP fragmentation-needed or fragments, see
//!   `tun.rs`).
//!
//! Per mode: NAT and DR rewrite in place (`Forward`); TUN encapsulates (`tun.rs`:
//! `ForwardInsert` of the IPIP header, or built copies `Emitted` for partial checksums, GSO
//! and fragments).

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::conntrack::{
    Change, ConnEntry, ConnObserver, ConnTable, DeleteCause, Direction, FlowKey, InsertError,
    NewConn, ProxySeq, ReplyKey,
};
use crate::fib::{FastMap, Fib, FibMiss};
use crate::model::{Mode, Protocol, VirtualService};
use crate::sched::{Backend, PersistTable, Scheduler};
use crate::stats::{RealRegistry, RealSlot};
use crate::wire::checksum;
use crate::wire::ethernet::{self, EthernetFrame, MacAddr, ETHERTYPE_IPV4};
use crate::wire::icmp::{self, Icmpv4Packet};
use crate::wire::ipv4::{self, Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

mod fullnat;
mod local_ports;
mod prefetch;
mod proxy;
mod tun;

pub use tun::source_address as tunnel_source;

pub use fullnat::DEFAULT_LOCAL_PORTS;
pub use proxy::{header_v2 as proxy_header_v2, V2_TCP4_LEN as PROXY_V2_TCP4_LEN};

/// What the worker does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) frame out of this interface.
    Forward { ifindex: u32 },
    /// Send the (rewritten) frame out of this interface with `insert` spliced in: still no
    /// copy of the frame, the transmitter points one more iovec at the inserted bytes.
    ForwardInsert { ifindex: u32, insert: Insert },
    /// The frame was consumed and replaced by the frames the engine queued on
    /// [`WorkerCtx::out`] (software segments, fragments).
    Emitted,
    /// Not the datapath's: the kernel's copy is the one that counts.
    Pass,
    /// Counted and dropped (the kernel's copy is dropped by the interception rules).
    Drop(DropReason),
}

/// Bytes to splice into a forwarded frame: the IPIP outer header (TUN), the PROXY protocol
/// header (FULLNAT). The frame goes out as `frame[..at] + bytes[..len] + frame[at..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insert {
    /// Offset in the received frame before which the bytes go.
    pub at: u16,
    pub len: u8,
    pub bytes: [u8; 32],
}

impl Insert {
    /// The most bytes an insert carries.
    pub const MAX: usize = 32;

    /// `bytes` (at most [`Insert::MAX`]) to go before offset `at`.
    pub fn new(at: usize, bytes: &[u8]) -> Insert {
        assert!(
            bytes.len() <= Self::MAX,
            "an insert carries at most 32 bytes"
        );
        let mut b = [0u8; Self::MAX];
        b[..bytes.len()].copy_from_slice(bytes);
        Insert {
            at: u16::try_from(at).expect("an insert lies inside a frame"),
            len: bytes.len() as u8,
            bytes: b,
        }
    }

    /// The inserted bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(Self::MAX)]
    }

    /// Appends the frame as it goes on the wire to `out` (recorders and tests; the datapath
    /// sends it as iovecs, without this copy).
    pub fn splice_into(&self, frame: &[u8], out: &mut Vec<u8>) {
        let at = usize::from(self.at).min(frame.len());
        out.extend_from_slice(&frame[..at]);
        out.extend_from_slice(self.as_slice());
        out.extend_from_slice(&frame[at..]);
    }
}

/// Where the engine queues the frames it builds itself (ICMP errors it originates, software
/// segments and fragments). The frame is copied; its checksums are complete and it asks the
/// device for no offload.
pub trait FrameOut {
    fn emit(&mut self, ifindex: u32, frame: &[u8]);
}

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $name:ident => $label:literal,)*) => {
        /// Why the datapath dropped a frame. Each has a counter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum DropReason { $($(#[doc = $doc])* $name,)* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            pub const COUNT: usize = DropReason::ALL.len();

            /// The counter's name in `director stats` and the metrics.
            pub fn label(self) -> &'static str {
                match self { $(DropReason::$name => $label,)* }
            }
        }
    };
}

drop_reasons! {
    /// Headers shorter or longer than the frame, bad IHL or length fields.
    Malformed => "malformed",
    /// The ring slot held only part of the frame.
    Truncated => "truncated",
    /// IPv4 header checksum wrong.
    BadIpChecksum => "bad_ip_checksum",
    /// TCP/UDP checksum wrong on a packet that would create a flow.
    BadL4Checksum => "bad_l4_checksum",
    /// IP fragment to a VIP.
    Fragment => "fragment",
    /// TTL would reach zero.
    TtlExceeded => "ttl_exceeded",
    /// A TCP segment other than SYN for a flow the table does not know.
    NoConnection => "no_connection",
    /// Every real server is quiesced or the service has none.
    NoRealServer => "no_real_server",
    /// The connection table is full.
    TableFull => "table_full",
    /// No route to the next hop.
    NoRoute => "no_route",
    /// The next hop's MAC is not known yet (resolution was requested).
    NoNeighbour => "no_neighbour",
    /// Larger than the egress MTU.
    TooBig => "too_big",
    /// Too big for the tunnel to a TUN real server with DF set: an ICMP
    /// fragmentation-needed went to the client (unless the worker's ICMP budget was spent).
    FragNeeded => "frag_needed",
    /// An ICMP error about a flow the table does not know.
    IcmpNoConnection => "icmp_no_connection",
    /// A tagged frame (VLANs are not handled by the datapath).
    Vlan => "vlan",
    /// NAT could not keep two flows apart: the same client address and port reaching one
    /// real server through two VIPs.
    FlowClash => "flow_clash",
    /// FULLNAT found no free local port on any LIP for the real server chosen.
    PortExhausted => "port_exhausted",
    /// A FULLNAT flow whose entry has no local address to send it from (never forwarded
    /// unrewritten, as DR would).
    NoLocalAddress => "no_local_address",
}

/// Per-worker counters. Written by one worker only (plain load + store), read by anyone.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub rx: AtomicU64,
    pub passed: AtomicU64,
    pub forwarded_in: AtomicU64,
    pub forwarded_out: AtomicU64,
    pub icmp_forwarded: AtomicU64,
    /// Received frames replaced by frames the engine built (`Verdict::Emitted`).
    pub emitted: AtomicU64,
    /// ICMP errors the engine originated (fragmentation needed).
    pub icmp_sent: AtomicU64,
    /// ICMP errors not sent because the worker's budget was spent.
    pub icmp_limited: AtomicU64,
    /// ICMP errors not sent because there was no way back to the source: no route, or a
    /// route whose next hop is unresolved out of another interface than the frame came in on.
    pub icmp_unroutable: AtomicU64,
    pub new_conns: AtomicU64,
    pub tx_errors: AtomicU64,
    /// Times a transmit batch found the socket buffer or device queue full and waited.
    pub tx_waits: AtomicU64,
    pub ring_drops: AtomicU64,
    pub drops: [AtomicU64; DropReason::COUNT],
}

impl WorkerCounters {
    #[inline]
    pub fn bump(c: &AtomicU64) {
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.drops[r as usize].load(Ordering::Relaxed)
    }
}

/// What the ring told us about a frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxMeta {
    /// The L4 checksum field holds only the pseudo-header sum (Linux CHECKSUM_PARTIAL):
    /// rewrite it as a sum, without ports, and let the egress device finish it.
    pub csum_partial: bool,
    /// The kernel or the device has verified the L4 checksum.
    pub csum_verified: bool,
    /// A GSO super-frame: it is segmented on egress, so it may exceed the MTU.
    pub gso: bool,
    /// Payload bytes per segment of a GSO super-frame (the vnet header's `gso_size`: the
    /// MSS for TCP); 0 when unknown.
    pub gso_size: u16,
    /// The GSO super-frame is UDP (`VIRTIO_NET_HDR_GSO_UDP_L4`: one datagram per segment),
    /// not TCP.
    pub gso_udp: bool,
    /// Only part of the frame is in the buffer.
    pub truncated: bool,
    /// The device stripped a VLAN tag.
    pub vlan: bool,
    /// The interface the frame arrived on (its ifindex); 0 when not known.
    pub ingress: u32,
}

/// A neighbour the worker wants resolved.
pub type Solicit = (u32, Ipv4Addr);

/// What a worker offers the engine besides the tables: counters and the way out of a
/// neighbour miss.
pub trait NeighbourMiss {
    /// The MAC of `addr` on `ifindex` if the kernel knows it although the FIB snapshot does
    /// not yet (it learnt it microseconds ago); otherwise ask for resolution and say `None`.
    /// Called only on a miss; must be cheap and never block for long.
    fn on_miss(&mut self, ifindex: u32, addr: Ipv4Addr) -> Option<crate::fib::Mac>;
}

/// Where a worker reports what it saw, and where it sends what the engine builds.
pub struct WorkerCtx<'a> {
    pub counters: &'a WorkerCounters,
    pub neighbours: &'a mut dyn NeighbourMiss,
    pub out: &'a mut dyn FrameOut,
    pub state: &'a mut WorkerState,
}

/// What one worker keeps between frames for the packets the engine builds itself.
pub struct WorkerState {
    /// Next IPv4 identification of a header the engine writes.
    ident: u16,
    /// Added to `ident` after each use: worker `i` of `n` uses i, i + n, i + 2n... so two
    /// workers never hand out the same identification close together.
    ident_step: u16,
    /// ICMP errors this worker may still send (token bucket, refilled every second).
    icmp_tokens: u32,
    icmp_refilled: u32,
    /// Where segments, fragments and ICMP errors are assembled before `out` copies them:
    /// a whole encapsulated packet, then one fragment of it behind. Reserved once, so
    /// building never allocates.
    pub(crate) buf: Vec<u8>,
}

impl WorkerState {
    /// ICMP errors per second and burst, per worker (Linux: `icmp_msgs_per_sec` 1000,
    /// burst 50 for the whole box).
    pub const ICMP_PER_SEC: u32 = 100;

    /// The state of worker `index` of `workers`.
    pub fn new(index: u16, workers: u16) -> WorkerState {
        WorkerState {
            ident: index,
            ident_step: workers.max(1),
            icmp_tokens: Self::ICMP_PER_SEC,
            icmp_refilled: 0,
            buf: Vec::with_capacity(2 * (tun::ENCAP_HEADERS + usize::from(u16::MAX))),
        }
    }

    /// The identification the next header this worker writes gets.
    pub fn peek_ident(&self) -> u16 {
        self.ident
    }

    pub fn next_ident(&mut self) -> u16 {
        let id = self.ident;
        self.ident = self.ident.wrapping_add(self.ident_step);
        id
    }

    /// Takes one ICMP error from the budget at engine second `now`; false when spent.
    pub fn icmp_allowed(&mut self, now: u32) -> bool {
        if now != self.icmp_refilled {
            let add = now
                .wrapping_sub(self.icmp_refilled)
                .saturating_mul(Self::ICMP_PER_SEC);
            self.icmp_tokens = self.icmp_tokens.saturating_add(add).min(Self::ICMP_PER_SEC);
            self.icmp_refilled = now;
        }
        if self.icmp_tokens == 0 {
            return false;
        }
        self.icmp_tokens -= 1;
        true
    }
}

/// One virtual service as the engine runs it.
pub struct Service {
    /// Stable for the life of the service: connection entries and persistence templates
    /// name their service by it, so a reload that adds or removes other services leaves it.
    pub id: u16,
    pub config: VirtualService,
    pub sched: Scheduler,
    /// Persistence timeout in seconds, 0 = off.
    pub persistence: u32,
    /// NAT real servers no longer scheduled (removed by a reload, a failed health check or
    /// the operator) whose established flows still need their replies translated.
    pub retired: Vec<SocketAddrV4>,
}

/// How to build one service of a [`ServiceTable`].
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub id: u16,
    /// `reals` are the scheduler's backends, with the weights to use now.
    pub config: VirtualService,
    /// Counter slot of each of `config.reals`, in order.
    pub slots: Vec<RealSlot>,
    /// See [`Service::retired`].
    pub retired: Vec<SocketAddrV4>,
}

/// The services, indexed for the per-packet lookups. Immutable; replaced whole on reload.
pub struct ServiceTable {
    services: Vec<Service>,
    /// Service id → index into `services`.
    by_id: Vec<Option<u16>>,
    by_vip: FastMap<u64, u16>,
    vips: FastMap<u32, ()>,
    nat_reals: FastMap<u64, ()>,
    /// FULLNAT local addresses of every service.
    lips: FastMap<u32, ()>,
}

fn l4_key(addr: Ipv4Addr, port: u16, proto: u8) -> u64 {
    (u64::from(u32::from(addr)) << 24) | (u64::from(port) << 8) | u64::from(proto)
}

fn l4_unkey(k: u64) -> (Ipv4Addr, u16, u8) {
    (Ipv4Addr::from((k >> 24) as u32), (k >> 8) as u16, k as u8)
}

/// What the XDP program needs to tell the engine's frames from the kernel's (see
/// `io::xdp::Steering`): the addresses and ports the classification below looks up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteeringTable {
    pub vips: Vec<Ipv4Addr>,
    pub lips: Vec<Ipv4Addr>,
    /// (VIP, port, IP protocol) of every service.
    pub services: Vec<(Ipv4Addr, u16, u8)>,
    /// (real server, port, IP protocol) of every NAT real server, retired ones included.
    pub nat_reals: Vec<(Ipv4Addr, u16, u8)>,
}

impl ServiceTable {
    /// Index `services` with ids by position; real server `j` of service `i` uses counter
    /// slot `slots[i][j]`.
    pub fn new(services: Vec<VirtualService>, slots: &[Vec<RealSlot>]) -> ServiceTable {
        ServiceTable::build(
            services
                .into_iter()
                .enumerate()
                .map(|(i, config)| ServiceSpec {
                    id: u16::try_from(i).expect("at most 65536 services"),
                    config,
                    slots: slots[i].clone(),
                    retired: Vec::new(),
                })
                .collect(),
        )
    }

    /// Index services with the ids, slots and retired reals given. Ids must be unique.
    pub fn build(specs: Vec<ServiceSpec>) -> ServiceTable {
        let mut table = ServiceTable {
            services: Vec::with_capacity(specs.len()),
            by_id: Vec::new(),
            by_vip: FastMap::default(),
            vips: FastMap::default(),
            nat_reals: FastMap::default(),
            lips: FastMap::default(),
        };
        for (i, spec) in specs.into_iter().enumerate() {
            let ServiceSpec {
                id,
                config: svc,
                slots,
                retired,
            } = spec;
            let index = u16::try_from(i).expect("at most 65536 services");
            let backends = svc
                .reals
                .iter()
                .zip(&slots)
                .map(|(r, &slot)| Backend {
                    addr: r.addr,
                    weight: r.weight,
                    slot,
                })
                .collect();
            let proto = svc.protocol as u8;
            table
                .by_vip
                .insert(l4_key(*svc.vip.ip(), svc.vip.port(), proto), index);
            table.vips.insert(u32::from(*svc.vip.ip()), ());
            if svc.mode == Mode::FullNat {
                for lip in &svc.local_addresses {
                    table.lips.insert(u32::from(*lip), ());
                }
            }
            if svc.mode == Mode::Nat {
                for a in svc
                    .reals
                    .iter()
                    .map(|r| r.addr)
                    .chain(retired.iter().copied())
                {
                    table.nat_reals.insert(l4_key(*a.ip(), a.port(), proto), ());
                }
            }
            let at = usize::from(id);
            if table.by_id.len() <= at {
                table.by_id.resize(at + 1, None);
            }
            assert!(table.by_id[at].is_none(), "service id {id} used twice");
            table.by_id[at] = Some(index);
            table.services.push(Service {
                id,
                sched: Scheduler::new(svc.scheduler, backends),
                persistence: u32::try_from(svc.persistence.as_secs()).unwrap_or(u32::MAX),
                config: svc,
                retired,
            });
        }
        table
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The addresses and ports that make a frame the engine's (the lookups of
    /// classification), for the XDP program's maps.
    pub fn steering(&self) -> SteeringTable {
        let mut t = SteeringTable {
            vips: self.vips.keys().map(|&a| Ipv4Addr::from(a)).collect(),
            lips: self.lips.keys().map(|&a| Ipv4Addr::from(a)).collect(),
            services: self.by_vip.keys().map(|&k| l4_unkey(k)).collect(),
            nat_reals: self.nat_reals.keys().map(|&k| l4_unkey(k)).collect(),
        };
        t.vips.sort();
        t.lips.sort();
        t.services.sort();
        t.nat_reals.sort();
        t
    }

    /// The spec each service was built from, with the weights it runs now.
    pub fn specs(&self) -> Vec<ServiceSpec> {
        self.services
            .iter()
            .map(|s| {
                let mut config = s.config.clone();
                config.reals = s
                    .sched
                    .backends()
                    .iter()
                    .map(|b| crate::model::RealServer {
                        addr: b.addr,
                        weight: b.weight,
                    })
                    .collect();
                ServiceSpec {
                    id: s.id,
                    config,
                    slots: s.sched.backends().iter().map(|b| b.slot).collect(),
                    retired: s.retired.clone(),
                }
            })
            .collect()
    }

    /// A new table with the weight of one real server changed (0 = quiesce: no new flows,
    /// existing ones finish). Ids, counter slots and everything else stay as they are.
    pub fn with_weight(
        &self,
        service: &str,
        real: SocketAddrV4,
        weight: u32,
    ) -> Result<ServiceTable, String> {
        let mut specs = self.specs();
        let spec = specs
            .iter_mut()
            .find(|s| s.config.name == service)
            .ok_or_else(|| format!("no service named {service:?}"))?;
        let r = spec
            .config
            .reals
            .iter_mut()
            .find(|r| r.addr == real)
            .ok_or_else(|| format!("service {service:?} has no real server {real}"))?;
        r.weight = weight;
        Ok(ServiceTable::build(specs))
    }

    /// The service with id `id`.
    pub fn get(&self, id: u16) -> Option<&Service> {
        let index = (*self.by_id.get(usize::from(id))?)?;
        self.services.get(usize::from(index))
    }

    /// The service of `vip` for `proto`.
    pub fn find(&self, proto: Protocol, vip: SocketAddrV4) -> Option<&Service> {
        self.lookup(*vip.ip(), vip.port(), proto as u8)
    }

    #[inline]
    fn lookup(&self, vip: Ipv4Addr, port: u16, proto: u8) -> Option<&Service> {
        let id = *self.by_vip.get(&l4_key(vip, port, proto))?;
        self.services.get(usize::from(id))
    }

    #[inline]
    fn is_vip(&self, addr: Ipv4Addr) -> bool {
        self.vips.contains_key(&u32::from(addr))
    }

    /// A FULLNAT local address (LIP) of some service.
    #[inline]
    pub fn is_lip(&self, addr: Ipv4Addr) -> bool {
        self.lips.contains_key(&u32::from(addr))
    }

    #[inline]
    fn is_nat_real(&self, addr: Ipv4Addr, port: u16, proto: u8) -> bool {
        self.nat_reals.contains_key(&l4_key(addr, port, proto))
    }
}

/// The state shared by all workers.
pub struct Engine {
    pub conns: ConnTable,
    pub persist: Arc<PersistTable>,
    pub reals: Arc<RealRegistry>,
    /// FULLNAT local ports (inclusive range, [`DEFAULT_LOCAL_PORTS`] unless set) and,
    /// per LIP, those ports by shard (`local_ports.rs`).
    local_ports: local_ports::LocalPorts,
}

/// The tables a worker reads for one batch of frames.
pub struct Tables<'a> {
    pub services: &'a ServiceTable,
    pub fib: &'a Fib,
}

/// The L3/L4 facts of a frame, read once.
#[derive(Debug, Clone, Copy)]
struct Flow {
    /// Offset of the IPv4 header in the frame.
    ip: usize,
    /// Offset of the L4 header in the frame.
    l4: usize,
    /// End of the IP packet in the frame (total length; Ethernet padding excluded).
    end: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    fragment: bool,
}

/// L4 ports and TCP flags.
#[derive(Debug, Clone, Copy)]
struct Ports {
    src: u16,
    dst: u16,
    tcp_flags: u8,
}

use crate::conntrack::tcp_flags::{ACK as TCP_ACK, RST as TCP_RST, SYN as TCP_SYN};

impl Engine {
    /// An engine with a table of `capacity` connections in `shards` shards.
    pub fn new(conns: ConnTable, persist: Arc<PersistTable>, reals: Arc<RealRegistry>) -> Engine {
        Engine {
            conns,
            persist,
            reals,
            local_ports: local_ports::LocalPorts::new(DEFAULT_LOCAL_PORTS),
        }
    }

    /// Sets the FULLNAT local port range (inclusive). Panics if `lo > hi`.
    pub fn set_local_ports(&mut self, lo: u16, hi: u16) {
        assert!(lo <= hi, "local port range {lo}-{hi} is empty");
        self.local_ports = local_ports::LocalPorts::new((lo, hi));
    }

    pub fn local_ports(&self) -> (u16, u16) {
        self.local_ports.range()
    }

    /// Process one frame (starting at its Ethernet header) at time `now` (engine seconds).
    pub fn process(
        &self,
        frame: &mut [u8],
        meta: RxMeta,
        t: &Tables<'_>,
        now: u32,
        ctx: &mut WorkerCtx<'_>,
    ) -> Verdict {
        let v = self.classify(frame, meta, t, now, ctx);
        let c = ctx.counters;
        WorkerCounters::bump(&c.rx);
        match v {
            Verdict::Pass => WorkerCounters::bump(&c.passed),
            Verdict::Drop(r) => WorkerCounters::bump(&c.drops[r as usize]),
            Verdict::Emitted => WorkerCounters::bump(&c.emitted),
            // Counted by the path that forwarded it (see `emit`).
            Verdict::Forward { .. } | Verdict::ForwardInsert { .. } => {}
        }
        v
    }

    fn classify(
        &self,
        frame: &mut [u8],
        meta: RxMeta,
        t: &Tables<'_>,
        now: u32,
        ctx: &mut WorkerCtx<'_>,
    ) -> Verdict {
        let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
            return Verdict::Pass;
        };
        if eth.ethertype() != ETHERTYPE_IPV4 {
            return Verdict::Pass;
        }
        let ip_off = ethernet::HEADER_LEN;
        // The addresses are read before full validation so that a broken packet to a VIP is
        // counted as ours while a broken packet for the box goes to the kernel.
        let raw = &frame[ip_off..];
        if raw.len() < ipv4::HEADER_LEN {
            return Verdict::Pass;
        }
        let raw_src = Ipv4Addr::new(raw[12], raw[13], raw[14], raw[15]);
        let raw_dst = Ipv4Addr::new(raw[16], raw[17], raw[18], raw[19]);
        let to_vip = t.services.is_vip(raw_dst);
        let to_lip = t.services.is_lip(raw_dst);
        let ours = |reason| {
            if to_vip || to_lip || Self::from_nat_real_raw(t, raw_src, raw) {
                Verdict::Drop(reason)
            } else {
                Verdict::Pass
            }
        };
        if meta.vlan {
            return ours(DropReason::Vlan);
        }
        if meta.truncated {
            return ours(DropReason::Truncated);
        }
        let Ok(ip) = Ipv4Packet::new_checked(&frame[ip_off..]) else {
            return ours(DropReason::Malformed);
        };
        let flow = Flow {
            ip: ip_off,
            l4: ip_off + usize::from(ip.header_len()),
            end: ip_off + usize::from(ip.total_len()),
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            proto: ip.protocol(),
            ttl: ip.ttl(),
            fragment: ip.is_fragment(),
        };

        if to_vip {
            match flow.proto {
                PROTO_TCP | PROTO_UDP => {}
                PROTO_ICMP => {
                    if !ip_header_ok(frame, flow) {
                        return Verdict::Drop(DropReason::BadIpChecksum);
                    }
                    return self.icmp_to_vip(frame, flow, meta, t, now, ctx);
                }
                _ => return Verdict::Pass,
            }
            if flow.fragment {
                return Verdict::Drop(DropReason::Fragment);
            }
            let Some(ports) = read_ports(frame, flow) else {
                return Verdict::Drop(DropReason::Malformed);
            };
            let Some(svc) = t.services.lookup(flow.dst, ports.dst, flow.proto) else {
                return Verdict::Pass;
            };
            if !ip_header_ok(frame, flow) {
                return Verdict::Drop(DropReason::BadIpChecksum);
            }
            return self.inbound(frame, flow, ports, svc, meta, t, now, ctx);
        }

        if to_lip {
            return match flow.proto {
                PROTO_TCP | PROTO_UDP => {
                    if flow.fragment {
                        return Verdict::Drop(DropReason::Fragment);
                    }
                    let Some(ports) = read_ports(frame, flow) else {
                        return Verdict::Drop(DropReason::Malformed);
                    };
                    if !ip_header_ok(frame, flow) {
                        return Verdict::Drop(DropReason::BadIpChecksum);
                    }
                    self.fullnat_reply(frame, flow, ports, meta, t, now, ctx)
                }
                PROTO_ICMP if ip_header_ok(frame, flow) => {
                    self.icmp_to_lip(frame, flow, t, now, ctx)
                }
                _ => Verdict::Pass,
            };
        }

        match flow.proto {
            PROTO_TCP | PROTO_UDP => {
                let Some(ports) = read_ports(frame, flow) else {
                    return Verdict::Pass;
                };
                if !t.services.is_nat_real(flow.src, ports.src, flow.proto) {
                    return Verdict::Pass;
                }
                // A (first) fragment of a NAT reply: the interception rules drop the kernel's
                // copy and the datapath does not reassemble, so say so in a counter.
                if flow.fragment {
                    return Verdict::Drop(DropReason::Fragment);
                }
                if !ip_header_ok(frame, flow) {
                    return Verdict::Drop(DropReason::BadIpChecksum);
                }
                self.reply(frame, flow, ports, meta, t, now, ctx)
            }
            PROTO_ICMP if ip_header_ok(frame, flow) => {
                self.icmp_from_real_side(frame, flow, t, now, ctx)
            }
            _ => Verdict::Pass,
        }
    }

    fn from_nat_real_raw(t: &Tables<'_>, src: Ipv4Addr, raw: &[u8]) -> bool {
        let ihl = usize::from(raw[0] & 0x0f) * 4;
        let proto = raw[9];
        if ihl < ipv4::HEADER_LEN || raw.len() < ihl + 2 {
            return false;
        }
        let sport = u16::from_be_bytes([raw[ihl], raw[ihl + 1]]);
        t.services.is_nat_real(src, sport, proto)
    }

    /// Client → VIP:port of a service.
    #[allow(clippy::too_many_arguments)]
    fn inbound(
        &self,
        frame: &mut [u8],
        flow: Flow,
        ports: Ports,
        svc: &Service,
        meta: RxMeta,
        t: &Tables<'_>,
        now: u32,
        ctx: &mut WorkerCtx<'_>,
    ) -> Verdict {
        if flow.ttl <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let proto = svc.config.protocol;
        let client = SocketAddrV4::new(flow.src, ports.src);
        let vip = SocketAddrV4::new(flow.dst, ports.dst);
        let key = FlowKey { proto, client, vip };
        let len = flow.end - flow.ip;
        let syn = ports.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;

        // The flow's own mode, not the service's: a reload that changes a service's mode
        // leaves its established flows as they were made.
        let (real, local, mode, proxy) = {
            let my_shard = self.conns.shard_index(client);
            let mut shard = self.conns.shard(my_shard);
            let mut found = shard.get_in(&key, now);
            // A client reusing its port after the old flow closed gets a new scheduling.
            if let Some(id) = found {
                if proto == Protocol::Tcp && syn && shard.entry(id).state().reopens_on_syn() {
                    shard.remove(id, DeleteCause::Removed);
                    found = None;
                }
            }
            match found {
                Some(id) => {
                    shard.update(id, Direction::In, ports.tcp_flags, len, now);
                    let e = shard.entry(id);
                    (e.real(), e.local(), e.mode(), e.proxy_seq())
                }
                None => {
                    if proto == Protocol::Tcp && !syn {
                        return Verdict::Drop(DropReason::NoConnection);
                    }
                    if !meta.csum_partial && !meta.csum_verified && !l4_checksum_ok(frame, flow) {
                        return Verdict::Drop(DropReason::BadL4Checksum);
                    }
                    let (picked, persistent) = if svc.persistence > 0 {
                        let p = self.persist.assign(
                            svc.id,
                            flow.src,
                            now,
                            svc.persistence,
                            &svc.sched,
                            &self.reals,
                        );
                        (p, p.is_some())
                    } else {
                        (svc.sched.pick(client, &self.reals), false)
                    };
                    let Some(idx) = picked else {
                        return Verdict::Drop(DropReason::NoRealServer);
                    };
                    let backend = svc.sched.backends()[idx];
                    let local = if svc.config.mode == Mode::FullNat {
                        let local = fullnat::allocate_local(
                            &mut shard,
                            my_shard,
                            &self.conns,
                            &self.local_ports,
                            svc,
                            proto,
                            client,
                            backend.addr,
                            now,
                        );
                        if local.is_none() {
                            if persistent {
                                self.persist.release(svc.id, flow.src, now, svc.persistence);
                            }
                            return Verdict::Drop(DropReason::PortExhausted);
                        }
                        local
                    } else {
                        None
                    };
                    // FULLNAT TCP with a PROXY header: the shift starts at the SYN's ISN.
                    let proxy = (local.is_some()
                        && proto == Protocol::Tcp
                        && svc.config.proxy_protocol.is_some())
                    .then(|| ProxySeq {
                        client_isn: tcp_seq(frame, flow),
                        delta: proxy::V2_TCP4_LEN,
                    });
                    let new = NewConn {
                        proto,
                        client,
                        vip,
                        real: backend.addr,
                        local,
                        proxy,
                        mode: svc.config.mode,
                        service: svc.id,
                        real_slot: backend.slot,
                        flags: if persistent { ConnEntry::PERSISTENT } else { 0 },
                    };
                    match shard.insert(&new, now) {
                        Ok(id) => {
                            shard.update(id, Direction::In, ports.tcp_flags, len, now);
                            WorkerCounters::bump(&ctx.counters.new_conns);
                        }
                        Err(e) => {
                            if persistent {
                                self.persist.release(svc.id, flow.src, now, svc.persistence);
                            }
                            return Verdict::Drop(match e {
                                InsertError::Full => DropReason::TableFull,
                                // The client:port already talks to this real server through
                                // another VIP: NAT could not tell the replies apart.
                                InsertError::Exists(_) | InsertError::ReplyInUse(_) => {
                                    DropReason::FlowClash
                                }
                            });
                        }
                    }
                    (backend.addr, local, svc.config.mode, proxy)
                }
            }
        };

        let mut insert = None;
        match (mode, local) {
            (Mode::Tun, _) => {
                return tun::tunnel(frame, flow, *real.ip(), meta, t, now, ctx, |c| {
                    &c.forwarded_in
                });
            }
            (Mode::Nat, _) => rewrite_dst(frame, flow, ports, real, meta),
            (Mode::FullNat, Some(local)) => {
                fullnat::rewrite_in(frame, flow, ports, local, real, meta.csum_partial);
                if let Some(ps) = proxy {
                    insert = proxy::inbound(
                        frame,
                        flow,
                        ports.tcp_flags,
                        ps,
                        client,
                        vip,
                        meta.csum_partial,
                    );
                }
            }
            (Mode::FullNat, None) => return Verdict::Drop(DropReason::NoLocalAddress),
            // The destination MAC only, in `emit_sized`.
            (Mode::Dr, _) => {}
        }
        let grow = insert.map_or(0, |i| usize::from(i.len));
        let v = self.emit_sized(frame, flow, *real.ip(), meta, t, ctx, grow, |c| {
            &c.forwarded_in
        });
        match (v, insert) {
            (Verdict::Forward { ifindex }, Some(insert)) => {
                Verdict::ForwardInsert { ifindex, insert }
            }
            _ => v,
        }
    }

    /// NAT real server → client: the source becomes VIP:port again.
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &self,
        frame: &mut [u8],
        flow: Flow,
        ports: Ports,
        meta: RxMeta,
        t: &Tables<'_>,
        now: u32,
        ctx: &mut WorkerCtx<'_>,
    ) -> Verdict {
        let proto = Protocol::from_ip_proto(flow.proto).expect("caller checked TCP/UDP");
        let client = SocketAddrV4::new(flow.dst, ports.dst);
        let key = ReplyKey {
            proto,
            real: SocketAddrV4::new(flow.src, ports.src),
            peer: client,
        };
        let len = flow.end - flow.ip;
        let vip = {
            let mut shard = self.conns.shard_for(client);
            let Some(id) = shard.get_reply(&key, now) else {
                // Not a flow of ours: e.g. a reply to the box's own health check.
                return Verdict::Pass;
            };
            shard.update(id, Direction::Out, ports.tcp_flags, len, now);
            shard.entry(id).vip()
        };
        rewrite_src(frame, flow, ports, vip, meta);
        self.emit(frame, flow, flow.dst, meta, t, ctx, |c| &c.forwarded_out)
    }

    /// An ICMP message to a VIP. Errors quoting a packet VIP:port → client belong to a flow
    /// and go to its real server; the rest (echo) is the kernel's.
    fn icmp_to_vip(
        &self,
        frame: &mut [u8],
        flow: Flow,
        meta: RxMeta,
        t: &Tables<'_>,
        now: u32,
        ctx: &mut WorkerCtx<'_>,
    ) -> Verdict {
        let Some(q) = quoted(frame, flow) else {
            return Verdict::Pass;
        };
        if flow.fragment {
            return Verdict::Drop(DropReason::Fragment);
        }
        // The quoted packet went VIP:vport → client:cport.
        let Some(proto) = Protocol::from_ip_proto(q.proto) else {
            return Verdict::Pass;
        };
        let key = FlowKey {
            proto,
            client: SocketAddrV4::new(q.dst, q.dport),
            vip: SocketAddrV4::new(q.src, q.sport),
        };
        let found = {
            let mut shard = self.conns.shard_for(key.client);
            shard.get_in(&key, now).map(|id| {
                let e = shard.entry(id);
                (e.real(), e.mode(), e.local())
            })
        };
        let Some((real, mode, local)) = found else {
            return Verdict::Drop(DropReason::IcmpNoConnection);
        };
        match (mode, local) {
            (Mode::Tun, _) => {
                // The real server sent the quoted packet itself: it gets the error the same
                // way it gets the flow's packets.
                return tun::tunnel(frame, flow, *real.ip(), meta, t, now, ctx, |c| {
                    &c.icmp_forwarded
                });
            }
            (Mode::Nat, _) => {
                // Outer destination VIP → real; quoted source VIP:vport → real:rport.
                set_ip_addr(frame, flow.ip, ADDR_DST, *real.ip());
                translate_quoted(frame, flow, q, QuotedSide::Src, real);
            }
            (Mode::FullNat, Some(local)) => fullnat::icmp_to_real(frame, flow, q, real, local),
            (Mode::FullNat, None) => return Verdict::Drop(DropReason::NoLocalAddress),
            (Mode::Dr, _) => {}
        }
        self.emit(frame, flow, *real.ip(), meta, t, ctx, |c| &c.icmp_forwarded)
    }

    /// An ICMP error from the real servers' side quoting client → real (a NAT flow's
    /// packet): it goes to the client as if the VIP had sent it (as IPVS does).
    fn icmp_from_real_side(
        &self,
        frame: &mut [u8],
        flow: Flow,
        t: &Tables<'_>,
        now: u32,
        ctx: &mut WorkerCtx<'_>,
    ) -> Verdict {
        let Some(q) = quoted(frame, flow) else {
            return Verdict::Pass;
        };
        if !t.services.is_nat_real(q.dst, q.dport, q.proto) {
            return Verdict::Pass;
        }
        let Some(proto) = Protocol::from_ip_proto(q.proto) else {
            return Verdict::Pass;
        };
        let client = SocketAddrV4::new(q.src, q.sport);
        let key = ReplyKey {
            proto,
            real: SocketAddrV4::new(q.dst, q.dport),
            peer: client,
        };
        let vip = {
            let mut shard = self.conns.shard_for(client);
            shard.get_reply(&key, now).map(|id| shard.entry(id).vip())
        };
        let Some(vip) = vip else {
            return Verdict::Pass;
        };
        if flow.fragment {
            return Verdict::Drop(DropReason::Fragment);
        }
        set_ip_addr(frame, flow.ip, ADDR_SRC, *vip.ip());
        translate_quoted(frame, flow, q, QuotedSide::Dst, vip);
        self.emit(frame, flow, flow.dst, RxMeta::default(), t, ctx, |c| {
            &c.icmp_forwarded
        })
    }

    /// The common end of every forwarding path: refuse an expiring TTL, pick the next hop,
    /// decrement TTL, write the MACs, and count the forward in `counter`.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        frame: &mut [u8],
        flow: Flow,
        toward: Ipv4Addr,
        meta: RxMeta,
        t: &Tables<'_>,
        ctx: &mut WorkerCtx<'_>,
        counter: fn(&WorkerCounters) -> &AtomicU64,
    ) -> Verdict {
        self.emit_sized(frame, flow, toward, meta, t, ctx, 0, counter)
    }

    /// [`Engine::emit`] for a packet that leaves `grow` bytes longer than it came in.
    #[allow(clippy::too_many_arguments)]
    fn emit_sized(
        &self,
        frame: &mut [u8],
        flow: Flow,
        toward: Ipv4Addr,
        meta: RxMeta,
        t: &Tables<'_>,
        ctx: &mut WorkerCtx<'_>,
        grow: usize,
        counter: fn(&WorkerCounters) -> &AtomicU64,
    ) -> Verdict {
        if flow.ttl <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let hop = match next_hop(toward, t, ctx) {
            Ok(hop) => hop,
            Err(reason) => return Verdict::Drop(reason),
        };
        if !meta.gso && flow.end - flow.ip + grow > hop.mtu as usize {
            return Verdict::Drop(DropReason::TooBig);
        }
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[flow.ip..flow.end]);
        ip.decrement_ttl_incremental();
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_src_addr(MacAddr(hop.src_mac));
        eth.set_dst_addr(MacAddr(hop.dst_mac));
        WorkerCounters::bump(counter(ctx.counters));
        Verdict::Forward {
            ifindex: hop.ifindex,
        }
    }
}

/// The TCP sequence number of a segment whose header `read_ports` has checked.
fn tcp_seq(frame: &[u8], flow: Flow) -> u32 {
    let at = flow.l4 + 4;
    u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
}

/// The egress interface and MACs toward `addr`: from the FIB snapshot, or on a neighbour
/// miss from the worker's miss handler.
fn next_hop(
    addr: Ipv4Addr,
    t: &Tables<'_>,
    ctx: &mut WorkerCtx<'_>,
) -> Result<crate::fib::NextHop, DropReason> {
    match t.fib.resolve(addr) {
        Ok(hop) => Ok(hop),
        Err(FibMiss::NoRoute) => Err(DropReason::NoRoute),
        Err(FibMiss::NoNeighbour { ifindex, addr }) => {
            let dst_mac = ctx
                .neighbours
                .on_miss(ifindex, addr)
                .ok_or(DropReason::NoNeighbour)?;
            let iface = t.fib.interface(ifindex).ok_or(DropReason::NoRoute)?;
            Ok(crate::fib::NextHop {
                ifindex,
                src_mac: iface.mac,
                dst_mac,
                mtu: iface.mtu,
            })
        }
    }
}

fn read_ports(frame: &[u8], flow: Flow) -> Option<Ports> {
    let l4 = frame.get(flow.l4..flow.end)?;
    match flow.proto {
        PROTO_TCP => {
            let tcp = crate::wire::tcp::TcpPacket::new_checked(l4).ok()?;
            Some(Ports {
                src: tcp.src_port(),
                dst: tcp.dst_port(),
                tcp_flags: tcp.flags().0,
            })
        }
        PROTO_UDP => {
            let udp = crate::wire::udp::UdpPacket::new_checked(l4).ok()?;
            Some(Ports {
                src: udp.src_port(),
                dst: udp.dst_port(),
                tcp_flags: 0,
            })
        }
        _ => None,
    }
}

/// The IPv4 header checksum, verified only for frames the datapath handles (the kernel checks
/// its own).
fn ip_header_ok(frame: &[u8], flow: Flow) -> bool {
    Ipv4Packet::new_unchecked(&frame[flow.ip..flow.end]).verify_checksum()
}

fn l4_checksum_ok(frame: &[u8], flow: Flow) -> bool {
    let l4 = &frame[flow.l4..flow.end];
    match flow.proto {
        PROTO_TCP => {
            crate::wire::tcp::TcpPacket::new_unchecked(l4).verify_checksum(flow.src, flow.dst)
        }
        PROTO_UDP => {
            crate::wire::udp::UdpPacket::new_unchecked(l4).verify_checksum(flow.src, flow.dst)
        }
        _ => true,
    }
}

const ADDR_SRC: usize = 12;
const ADDR_DST: usize = 16;

/// Offset of the TCP/UDP checksum field in the L4 header.
fn l4_csum_offset(proto: u8) -> usize {
    if proto == PROTO_TCP {
        16
    } else {
        6
    }
}

/// Replace the IPv4 address at `which` (ADDR_SRC/ADDR_DST) of the header at `ip`, fixing the
/// header checksum. Returns the old address.
fn set_ip_addr(frame: &mut [u8], ip: usize, which: usize, new: Ipv4Addr) -> u32 {
    let at = ip + which;
    let old = u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
    let new = u32::from(new);
    frame[at..at + 4].copy_from_slice(&new.to_be_bytes());
    let c = u16::from_be_bytes([frame[ip + 10], frame[ip + 11]]);
    frame[ip + 10..ip + 12].copy_from_slice(&checksum::update32(c, old, new).to_be_bytes());
    old
}

/// Fix the TCP/UDP checksum at `l4` after the address `old` → `new` and port `old_port` →
/// `new_port` changed (port change ignored for partial checksums: ports are not in the seed).
#[allow(clippy::too_many_arguments)]
fn fix_l4_csum(
    frame: &mut [u8],
    proto: u8,
    l4: usize,
    old: u32,
    new: u32,
    old_port: u16,
    new_port: u16,
    partial: bool,
) {
    let at = l4 + l4_csum_offset(proto);
    if frame.len() < at + 2 {
        return;
    }
    let c = u16::from_be_bytes([frame[at], frame[at + 1]]);
    let c = if partial {
        checksum::update_partial32(c, old, new)
    } else if proto == PROTO_UDP {
        checksum::udp_update16(checksum::udp_update32(c, old, new), old_port, new_port)
    } else {
        checksum::update16(checksum::update32(c, old, new), old_port, new_port)
    };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Writes `to` as the source (`src = true`) or destination address and port of the IPv4 and
/// L4 headers at `flow`, fixing the IPv4 and TCP/UDP checksums incrementally (a partial
/// checksum only for the address).
fn rewrite_end(
    frame: &mut [u8],
    flow: Flow,
    src: bool,
    old_port: u16,
    to: SocketAddrV4,
    partial: bool,
) {
    let which = if src { ADDR_SRC } else { ADDR_DST };
    let old = set_ip_addr(frame, flow.ip, which, *to.ip());
    let port_at = flow.l4 + if src { 0 } else { 2 };
    frame[port_at..port_at + 2].copy_from_slice(&to.port().to_be_bytes());
    fix_l4_csum(
        frame,
        flow.proto,
        flow.l4,
        old,
        u32::from(*to.ip()),
        old_port,
        to.port(),
        partial,
    );
}

/// NAT inbound: destination VIP:vport → real:rport.
fn rewrite_dst(frame: &mut [u8], flow: Flow, ports: Ports, real: SocketAddrV4, meta: RxMeta) {
    rewrite_end(frame, flow, false, ports.dst, real, meta.csum_partial);
}

/// NAT reply: source real:rport → VIP:vport.
fn rewrite_src(frame: &mut [u8], flow: Flow, ports: Ports, vip: SocketAddrV4, meta: RxMeta) {
    rewrite_end(frame, flow, true, ports.src, vip, meta.csum_partial);
}

/// The packet quoted in an ICMP error.
#[derive(Debug, Clone, Copy)]
struct Quoted {
    /// Offset of the ICMP header in the frame.
    icmp: usize,
    /// Offset of the quoted IPv4 header.
    ip: usize,
    /// Offset of the quoted L4 header.
    l4: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    sport: u16,
    dport: u16,
}

fn quoted(frame: &[u8], flow: Flow) -> Option<Quoted> {
    if flow.proto != PROTO_ICMP {
        return None;
    }
    let icmp = Icmpv4Packet::new_checked(frame.get(flow.l4..flow.end)?).ok()?;
    if !matches!(
        icmp.msg_type(),
        icmp::TYPE_DEST_UNREACHABLE
            | icmp::TYPE_TIME_EXCEEDED
            | icmp::TYPE_PARAM_PROBLEM
            | icmp::TYPE_SOURCE_QUENCH
    ) {
        return None;
    }
    let q_off = flow.l4 + icmp::HEADER_LEN;
    let q = Ipv4Packet::new_checked_quoted(frame.get(q_off..flow.end)?).ok()?;
    let q_l4 = q_off + usize::from(q.header_len());
    let proto = q.protocol();
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let ports = frame.get(q_l4..q_l4 + 4)?;
    Some(Quoted {
        icmp: flow.l4,
        ip: q_off,
        l4: q_l4,
        src: q.src_addr(),
        dst: q.dst_addr(),
        proto,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum QuotedSide {
    Src,
    Dst,
}

/// Rewrite one end of the quoted packet to `to`, fix the quoted header checksum and the
/// quoted L4 checksum where it was quoted, then recompute the ICMP checksum (errors are
/// small and rare, so a full sum is simplest and exact).
fn translate_quoted(frame: &mut [u8], flow: Flow, q: Quoted, side: QuotedSide, to: SocketAddrV4) {
    let (which, port_at, old_port) = match side {
        QuotedSide::Src => (ADDR_SRC, q.l4, q.sport),
        QuotedSide::Dst => (ADDR_DST, q.l4 + 2, q.dport),
    };
    let old = set_ip_addr(frame, q.ip, which, *to.ip());
    frame[port_at..port_at + 2].copy_from_slice(&to.port().to_be_bytes());
    // The quoted L4 checksum is only present if enough of the packet was quoted.
    let at = q.l4 + l4_csum_offset(q.proto);
    if at + 2 <= flow.end {
        let c = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let c = if q.proto == PROTO_UDP {
            checksum::udp_update16(
                checksum::udp_update32(c, old, u32::from(*to.ip())),
                old_port,
                to.port(),
            )
        } else {
            checksum::update16(
                checksum::update32(c, old, u32::from(*to.ip())),
                old_port,
                to.port(),
            )
        };
        frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut icmp = Icmpv4Packet::new_unchecked(&mut frame[q.icmp..flow.end]);
    icmp.fill_checksum();
}

/// Keeps persistence templates referenced while their connections live, and passes every
/// change on to a downstream observer (the sync daemon, later).
pub struct EngineObserver {
    pub persist: Arc<PersistTable>,
    pub services: Arc<arc_swap::ArcSwap<ServiceTable>>,
    pub downstream: Option<Arc<dyn ConnObserver>>,
}

impl ConnObserver for EngineObserver {
    fn on_change(&self, change: &Change) {
        if let Change::Delete(e, _) = change {
            if e.is_persistent() {
                let services = self.services.load();
                if let Some(svc) = services.get(e.service()) {
                    // The entry's expiry is the latest moment it was alive.
                    self.persist
                        .release(svc.id, *e.client().ip(), e.expiry(), svc.persistence);
                }
            }
        }
        if let Some(d) = &self.downstream {
            d.on_change(change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_splices_at_its_offset() {
        let ins = Insert::new(2, b"xyz");
        assert_eq!(ins.as_slice(), b"xyz");
        let mut out = Vec::new();
        ins.splice_into(b"abcd", &mut out);
        assert_eq!(out, b"abxyzcd");
    }

    #[test]
    fn workers_hand_out_disjoint_identifications() {
        let mut w1 = WorkerState::new(1, 3);
        let ids: Vec<u16> = (0..4).map(|_| w1.next_ident()).collect();
        assert_eq!(ids, [1, 4, 7, 10]);
    }

    #[test]
    fn icmp_budget_refills_each_second() {
        let mut w = WorkerState::new(0, 1);
        let sent = (0..WorkerState::ICMP_PER_SEC + 5)
            .filter(|_| w.icmp_allowed(10))
            .count();
        assert_eq!(sent, WorkerState::ICMP_PER_SEC as usize);
        assert!(w.icmp_allowed(11));
    }
}
