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
//! - TCP segment without SYN for an unknown flow: dropped (`NoConnection`), never reset —
//!   but for an `mh` service in NAT, DR or TUN without persistence, where a segment with ACK
//!   and without RST is taken up on the real server the shared Maglev table names
//!   (`picked_up`; see `inbound.rs`);
//! - a frame larger than the egress MTU (not a GSO frame): dropped (`TooBig`); in TUN mode
//!   the tunnel's path MTU is handled instead (ICMP fragmentation-needed or fragments, see
//!   `tun.rs`).
//!
//! Per mode: NAT and DR rewrite in place (`Forward`); TUN encapsulates (`ForwardInsert` of
//! the IPIP header, or built copies `Emitted` for partial checksums, GSO and fragments);
//! FULLNAT rewrites both ends and may splice in a PROXY header (`ForwardInsert`).
//!
//! Where things are:
//! - this file: the verdicts, drop reasons and counters, the worker's state, classification
//!   (the frame is parsed once into a [`packet::Packet`]) and the common end of the
//!   forwarding paths (`emit`: next hop, MTU, TTL, MACs);
//! - `packet.rs`: the parsed frame and its rewrites through the wire views' setters, the
//!   quoted packet of an ICMP error, and [`packet::Cx`] (tables, clock, worker);
//! - `services.rs`: the service table the lookups of classification use;
//! - `inbound.rs`: client → VIP, shared by every mode up to the rewrite: the flow found or
//!   scheduled, then an exhaustive `match` on the flow's mode; ICMP errors to a VIP the same;
//! - one file per mode: `nat.rs` (with the replies and ICMP from the real servers' side),
//!   `dr.rs`, `tun.rs`, `fullnat.rs` (with its replies, ICMP to a LIP, and the local port
//!   allocation over `local_ports.rs`) and `proxy.rs` (the PROXY protocol for FULLNAT TCP).
//!
//! The XDP fast path (`forwarder/bpf/`) is split the same way: `nat.h`, `dr.h`, `tun.h`,
//! `fullnat.h`.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::conntrack::{Change, ConnObserver, ConnTable};
use crate::fib::{Fib, FibMiss};
use crate::sched::PersistTable;
use crate::stats::RealRegistry;
use crate::wire::ethernet::{self, EthernetFrame, MacAddr, ETHERTYPE_IPV4};
use crate::wire::ipv4::{self, Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

mod dr;
mod fullnat;
mod inbound;
mod local_ports;
mod nat;
mod packet;
mod prefetch;
mod proxy;
mod services;
mod tun;

use packet::{Cx, Flow, Packet};

pub use fullnat::DEFAULT_LOCAL_PORTS;
pub use proxy::{header_v2 as proxy_header_v2, V2_TCP4_LEN as PROXY_V2_TCP4_LEN};
pub use services::{Service, ServiceSpec, ServiceTable, SteeringTable};
pub use tun::source_address as tunnel_source;

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
    /// Established flows this node had no entry for, taken up mid-flow on the real server
    /// an `mh` service's Maglev table names (among `new_conns`).
    pub picked_up: AtomicU64,
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
        let mut cx = Cx { t, now, w: ctx };
        let v = self.classify(frame, meta, &mut cx);
        let c = cx.w.counters;
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

    /// Parses the frame once into a [`Packet`] and sends it down its path (see the module
    /// docs for the order).
    fn classify(&self, frame: &mut [u8], meta: RxMeta, cx: &mut Cx<'_, '_>) -> Verdict {
        let t = cx.t;
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
            if to_vip || to_lip || from_nat_real_raw(t, raw_src, raw) {
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
        let mut p = Packet { frame, flow, meta };

        if to_vip {
            match flow.proto {
                PROTO_TCP | PROTO_UDP => {}
                PROTO_ICMP => {
                    if !p.ip_header_ok() {
                        return Verdict::Drop(DropReason::BadIpChecksum);
                    }
                    return self.icmp_to_vip(&mut p, cx);
                }
                _ => return Verdict::Pass,
            }
            if flow.fragment {
                return Verdict::Drop(DropReason::Fragment);
            }
            let Some(ports) = p.ports() else {
                return Verdict::Drop(DropReason::Malformed);
            };
            let Some(svc) = t.services.lookup(flow.dst, ports.dst, flow.proto) else {
                return Verdict::Pass;
            };
            if !p.ip_header_ok() {
                return Verdict::Drop(DropReason::BadIpChecksum);
            }
            return self.inbound(&mut p, ports, svc, cx);
        }

        if to_lip {
            return match flow.proto {
                PROTO_TCP | PROTO_UDP => {
                    if flow.fragment {
                        return Verdict::Drop(DropReason::Fragment);
                    }
                    let Some(ports) = p.ports() else {
                        return Verdict::Drop(DropReason::Malformed);
                    };
                    if !p.ip_header_ok() {
                        return Verdict::Drop(DropReason::BadIpChecksum);
                    }
                    self.fullnat_reply(&mut p, ports, cx)
                }
                PROTO_ICMP if p.ip_header_ok() => self.icmp_to_lip(&mut p, cx),
                _ => Verdict::Pass,
            };
        }

        match flow.proto {
            PROTO_TCP | PROTO_UDP => {
                let Some(ports) = p.ports() else {
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
                if !p.ip_header_ok() {
                    return Verdict::Drop(DropReason::BadIpChecksum);
                }
                self.nat_reply(&mut p, ports, cx)
            }
            PROTO_ICMP if p.ip_header_ok() => self.icmp_from_real_side(&mut p, cx),
            _ => Verdict::Pass,
        }
    }
}

/// A frame from a NAT real server's service port, read from the raw header (before the
/// frame is known to be whole).
fn from_nat_real_raw(t: &Tables<'_>, src: Ipv4Addr, raw: &[u8]) -> bool {
    let ihl = usize::from(raw[0] & 0x0f) * 4;
    let proto = raw[9];
    if ihl < ipv4::HEADER_LEN || raw.len() < ihl + 2 {
        return false;
    }
    let sport = u16::from_be_bytes([raw[ihl], raw[ihl + 1]]);
    t.services.is_nat_real(src, sport, proto)
}

/// The common end of every forwarding path but TUN's: refuse an expiring TTL, pick the next
/// hop, decrement TTL, write the MACs, and count the forward in `counter`.
fn emit(
    p: &mut Packet<'_>,
    toward: Ipv4Addr,
    cx: &mut Cx<'_, '_>,
    counter: fn(&WorkerCounters) -> &AtomicU64,
) -> Verdict {
    emit_sized(p, toward, cx, 0, counter)
}

/// [`emit`] for a packet that leaves `grow` bytes longer than it came in.
fn emit_sized(
    p: &mut Packet<'_>,
    toward: Ipv4Addr,
    cx: &mut Cx<'_, '_>,
    grow: usize,
    counter: fn(&WorkerCounters) -> &AtomicU64,
) -> Verdict {
    if p.flow.ttl <= 1 {
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    let hop = match next_hop(toward, cx) {
        Ok(hop) => hop,
        Err(reason) => return Verdict::Drop(reason),
    };
    if !p.meta.gso && p.len() + grow > hop.mtu as usize {
        return Verdict::Drop(DropReason::TooBig);
    }
    p.ipv4_mut().decrement_ttl_incremental();
    let mut eth = EthernetFrame::new_unchecked(&mut p.frame[..]);
    eth.set_src_addr(MacAddr(hop.src_mac));
    eth.set_dst_addr(MacAddr(hop.dst_mac));
    WorkerCounters::bump(counter(cx.w.counters));
    Verdict::Forward {
        ifindex: hop.ifindex,
    }
}

/// The egress interface and MACs toward `addr`: from the FIB snapshot, or on a neighbour
/// miss from the worker's miss handler.
fn next_hop(addr: Ipv4Addr, cx: &mut Cx<'_, '_>) -> Result<crate::fib::NextHop, DropReason> {
    let t = cx.t;
    match t.fib.resolve(addr) {
        Ok(hop) => Ok(hop),
        Err(FibMiss::NoRoute) => Err(DropReason::NoRoute),
        Err(FibMiss::NoNeighbour { ifindex, addr }) => {
            let dst_mac =
                cx.w.neighbours
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
