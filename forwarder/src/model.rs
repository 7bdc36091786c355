//! The datapath's view of the configuration: virtual services, real servers, modes,
//! schedulers and timeouts. `director::config` validates the operator's file into these
//! types; the engine, schedulers and connection table consume them. Nothing here does I/O.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// IP protocol of a virtual service. The discriminant is the IP protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Protocol {
    Tcp = 6,
    Udp = 17,
}

impl Protocol {
    pub fn from_ip_proto(p: u8) -> Option<Protocol> {
        match p {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// LVS forwarding method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Mode {
    /// Masquerading: the destination is rewritten to the real server; replies come back
    /// through the director (the real servers' gateway) and get the VIP back as source.
    Nat = 0,
    /// Direct routing: only the destination MAC is rewritten; the real server holds the VIP
    /// on a non-ARP interface and replies straight to the client.
    Dr = 1,
    /// IPIP tunnelling: the client's packet, untouched, inside an IPv4 header from the
    /// director to the real server, which decapsulates it (VIP on a non-ARP interface) and
    /// replies straight to the client.
    Tun = 2,
    /// Source and destination rewritten: client:port → LIP:lport, VIP:port → real:port.
    /// Replies come back to the LIP, so real servers need no route to the clients.
    FullNat = 3,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Dr => "dr",
            Mode::Tun => "tun",
            Mode::FullNat => "fullnat",
        }
    }
}

/// Scheduling algorithm of a virtual service (the names of ipvsadm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// Round robin: every real server with weight > 0 in turn.
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connections (overhead = active × 256 + inactive).
    Lc,
    /// Weighted least connections (overhead / weight).
    Wlc,
    /// Source hashing on the client address.
    Sh,
    /// Maglev hashing, lookup table of 65537 slots.
    Mh,
}

impl SchedulerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::Rr => "rr",
            SchedulerKind::Wrr => "wrr",
            SchedulerKind::Lc => "lc",
            SchedulerKind::Wlc => "wlc",
            SchedulerKind::Sh => "sh",
            SchedulerKind::Mh => "mh",
        }
    }
}

/// One real server of a virtual service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServer {
    pub addr: SocketAddrV4,
    /// 0 = quiesced: no new flows, existing ones finish.
    pub weight: u32,
}

/// A virtual service: VIP:port/protocol with its real servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    pub name: String,
    pub vip: SocketAddrV4,
    pub protocol: Protocol,
    pub mode: Mode,
    pub scheduler: SchedulerKind,
    /// Client-IP affinity timeout; zero = off.
    pub persistence: Duration,
    pub reals: Vec<RealServer>,
    /// FULLNAT: the local addresses (LIPs) used as the source toward the real servers.
    /// They float with VRRP like the VIPs. Empty for the other modes.
    pub local_addresses: Vec<Ipv4Addr>,
    /// FULLNAT TCP: pass the client's address to the real server in a PROXY protocol
    /// header at the start of each stream.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// The PROXY protocol versions the datapath can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyProtocol {
    /// The binary version 2 header (28 bytes for TCP over IPv4).
    V2,
}

impl VirtualService {
    pub fn vip_addr(&self) -> Ipv4Addr {
        *self.vip.ip()
    }
}

/// Connection timeouts. Defaults are those of IPVS (`ipvsadm --set 900 120 300` and the
/// fixed per-state values of `ip_vs_proto_tcp.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// ESTABLISHED (ipvsadm "tcp").
    pub tcp: Duration,
    /// FIN_WAIT and TIME_WAIT (ipvsadm "tcpfin").
    pub tcp_fin: Duration,
    /// UDP (ipvsadm "udp").
    pub udp: Duration,
    pub syn_recv: Duration,
    pub close_wait: Duration,
    pub close: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp: Duration::from_secs(900),
            tcp_fin: Duration::from_secs(120),
            udp: Duration::from_secs(300),
            syn_recv: Duration::from_secs(60),
            close_wait: Duration::from_secs(60),
            close: Duration::from_secs(10),
        }
    }
}

/// Datapath settings (`[datapath]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Interfaces the datapath listens on; empty = every interface that is up, but loopback.
    pub interfaces: Vec<String>,
    /// Capacity of the connection table; a full table refuses new flows and counts them.
    pub max_connections: u32,
    pub timeouts: Timeouts,
    /// With XDP: the program forwards established flows itself (the fast path); off, it
    /// only hands the engine's frames to the workers.
    pub fast_path: bool,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            workers: 0,
            interfaces: Vec::new(),
            max_connections: 1 << 20,
            timeouts: Timeouts::default(),
            fast_path: true,
        }
    }
}
