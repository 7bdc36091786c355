//! The connection entry, its lookup keys and its states.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::model::{Mode, Protocol};
use crate::stats::RealSlot;

/// Inbound key: what a client → VIP packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: Protocol,
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
}

/// Reply key: what a real server → director packet carries. `peer` is the client for
/// NAT (and DR/TUN, whose replies normally bypass the director), the local address
/// (LIP:lport) for FULLNAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyKey {
    pub proto: Protocol,
    pub real: SocketAddrV4,
    pub peer: SocketAddrV4,
}

/// State of a connection: the six TCP states IPVS reports, and one for UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnState {
    SynRecv = 1,
    Established = 2,
    /// The client sent FIN first.
    FinWait = 3,
    /// The real server sent FIN first.
    CloseWait = 4,
    /// Both sides sent FIN.
    TimeWait = 5,
    /// Reset (or closed without a FIN exchange).
    Close = 6,
    Udp = 7,
}

impl ConnState {
    /// Number of raw values, vacant (0) included: sizes the per-state arrays.
    pub(crate) const RAW_COUNT: usize = 8;

    pub fn from_raw(raw: u8) -> Option<ConnState> {
        Some(match raw {
            1 => ConnState::SynRecv,
            2 => ConnState::Established,
            3 => ConnState::FinWait,
            4 => ConnState::CloseWait,
            5 => ConnState::TimeWait,
            6 => ConnState::Close,
            7 => ConnState::Udp,
            _ => return None,
        })
    }

    /// The names of `ipvsadm -lnc`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::SynRecv => "SYN_RECV",
            ConnState::Established => "ESTABLISHED",
            ConnState::FinWait => "FIN_WAIT",
            ConnState::CloseWait => "CLOSE_WAIT",
            ConnState::TimeWait => "TIME_WAIT",
            ConnState::Close => "CLOSE",
            ConnState::Udp => "UDP",
        }
    }

    /// ipvsadm's ActiveConn counts ESTABLISHED only; everything else is InActConn.
    pub fn is_active(self) -> bool {
        self == ConnState::Established
    }

    /// A client SYN in this state starts a new connection on the same tuple (the client
    /// reused its port). The engine may delete the entry and reschedule instead of letting
    /// [`super::ShardGuard::update`] re-open it on the same real server.
    pub fn reopens_on_syn(self) -> bool {
        matches!(
            self,
            ConnState::FinWait | ConnState::CloseWait | ConnState::TimeWait | ConnState::Close
        )
    }
}

/// The sequence-number shift of a FULLNAT TCP flow whose real server is sent a PROXY
/// protocol header: `delta` bytes are inserted before the client's first byte (sequence
/// number `client_isn + 1`), so every later client sequence number is `delta` higher on the
/// real server's side, and the real server's acknowledgements `delta` higher than the
/// client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxySeq {
    /// The initial sequence number of the client's SYN.
    pub client_isn: u32,
    /// Length of the inserted header.
    pub delta: u16,
}

/// One tracked connection. Fields are private because both lookup keys are derived from
/// them: changing one in place would strand the entry in the index. Addresses are stored
/// as host-order integers so the layout is plain `repr(C)` (56 bytes, align 4) and can be
/// mirrored as-is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct ConnEntry {
    pub(crate) client_ip: u32,
    pub(crate) vip_ip: u32,
    pub(crate) real_ip: u32,
    pub(crate) local_ip: u32,
    /// Seconds of the engine's monotonic clock at which the entry dies.
    pub(crate) expiry: u32,
    /// The expiry last reported to the observer: a flow whose expiry has moved on by half
    /// its timeout since is reported again ([`super::Change::Refresh`]), so a replica of a
    /// long, quiet flow does not time out on the peer while the flow lives here.
    pub(crate) reported: u32,
    pub(crate) packets_in: u32,
    pub(crate) packets_out: u32,
    /// [`ProxySeq::client_isn`] (meaningful when `seq_delta` is not 0).
    pub(crate) client_isn: u32,
    pub(crate) client_port: u16,
    pub(crate) vip_port: u16,
    pub(crate) real_port: u16,
    pub(crate) local_port: u16,
    pub(crate) service: u16,
    pub(crate) real_slot: RealSlot,
    /// [`ProxySeq::delta`]; 0 = no PROXY header, sequence numbers pass unchanged.
    pub(crate) seq_delta: u16,
    pub(crate) proto: u8,
    pub(crate) mode: u8,
    /// `ConnState` as u8; 0 marks a vacant slab slot.
    pub(crate) state: u8,
    pub(crate) flags: u8,
}

impl ConnEntry {
    /// Under a client-IP persistence template.
    pub const PERSISTENT: u8 = 0x01;
    /// Has a local address (FULLNAT): replies are keyed by (real, local).
    pub const LOCAL: u8 = 0x02;
    /// Installed from the peer's sync stream, and no packet of it seen here since.
    pub const REPLICA: u8 = 0x04;
    /// The mark of the last resync this replica was installed in (see
    /// [`super::ConnTable::sweep_replicas`]).
    pub const SYNC_MARK: u8 = 0x08;
    /// The XDP fast path forwards this flow's packets too: its entry is in the program's
    /// flow map, so the last packet may be more recent than this entry shows (see
    /// [`super::ConnTable::sweep_with`]).
    pub const FAST: u8 = 0x10;
    /// Flags the caller may set through [`NewConn::flags`]; the others belong to the table.
    pub const CALLER_FLAGS: u8 = Self::PERSISTENT;

    pub(crate) const VACANT: ConnEntry = ConnEntry {
        client_ip: 0,
        vip_ip: 0,
        real_ip: 0,
        local_ip: 0,
        expiry: 0,
        reported: 0,
        packets_in: 0,
        packets_out: 0,
        client_isn: 0,
        client_port: 0,
        vip_port: 0,
        real_port: 0,
        local_port: 0,
        service: 0,
        real_slot: 0,
        seq_delta: 0,
        proto: 0,
        mode: 0,
        state: 0,
        flags: 0,
    };

    pub(crate) fn from_new(n: &NewConn, state: ConnState, expiry: u32) -> ConnEntry {
        let (local, flags) = match n.local {
            Some(l) => (l, (n.flags & Self::CALLER_FLAGS) | Self::LOCAL),
            None => (
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                n.flags & Self::CALLER_FLAGS,
            ),
        };
        ConnEntry {
            client_ip: n.client.ip().to_bits(),
            vip_ip: n.vip.ip().to_bits(),
            real_ip: n.real.ip().to_bits(),
            local_ip: local.ip().to_bits(),
            expiry,
            reported: expiry,
            packets_in: 0,
            packets_out: 0,
            client_isn: n.proxy.map_or(0, |p| p.client_isn),
            client_port: n.client.port(),
            vip_port: n.vip.port(),
            real_port: n.real.port(),
            local_port: local.port(),
            service: n.service,
            real_slot: n.real_slot,
            seq_delta: n.proxy.map_or(0, |p| p.delta),
            proto: n.proto as u8,
            mode: n.mode as u8,
            state: state as u8,
            flags,
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        self.state != 0
    }

    pub fn client(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from_bits(self.client_ip), self.client_port)
    }

    pub fn vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from_bits(self.vip_ip), self.vip_port)
    }

    pub fn real(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from_bits(self.real_ip), self.real_port)
    }

    /// FULLNAT local address (LIP:lport).
    pub fn local(&self) -> Option<SocketAddrV4> {
        (self.flags & Self::LOCAL != 0)
            .then(|| SocketAddrV4::new(Ipv4Addr::from_bits(self.local_ip), self.local_port))
    }

    /// The PROXY protocol sequence shift, if this flow's real server gets a header.
    pub fn proxy_seq(&self) -> Option<ProxySeq> {
        (self.seq_delta != 0).then_some(ProxySeq {
            client_isn: self.client_isn,
            delta: self.seq_delta,
        })
    }

    /// The reply packets' destination: the local address if any, else the client.
    pub fn peer(&self) -> SocketAddrV4 {
        self.local().unwrap_or_else(|| self.client())
    }

    pub fn proto(&self) -> Protocol {
        if self.proto == Protocol::Udp as u8 {
            Protocol::Udp
        } else {
            Protocol::Tcp
        }
    }

    pub fn mode(&self) -> Mode {
        match self.mode {
            1 => Mode::Dr,
            2 => Mode::Tun,
            3 => Mode::FullNat,
            _ => Mode::Nat,
        }
    }

    pub fn state(&self) -> ConnState {
        // A vacant slot is never handed out; Close is the harmless answer if it were.
        ConnState::from_raw(self.state).unwrap_or(ConnState::Close)
    }

    pub fn expiry(&self) -> u32 {
        self.expiry
    }

    pub fn service(&self) -> u16 {
        self.service
    }

    pub fn real_slot(&self) -> RealSlot {
        self.real_slot
    }

    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// A copy of the peer's flow that no packet has touched on this node yet.
    pub fn is_replica(&self) -> bool {
        self.flags & Self::REPLICA != 0
    }

    pub fn is_persistent(&self) -> bool {
        self.flags & Self::PERSISTENT != 0
    }

    /// In the XDP fast path's flow map (see [`ConnEntry::FAST`]).
    pub fn is_fast(&self) -> bool {
        self.flags & Self::FAST != 0
    }

    pub fn packets_in(&self) -> u32 {
        self.packets_in
    }

    pub fn packets_out(&self) -> u32 {
        self.packets_out
    }

    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto(),
            client: self.client(),
            vip: self.vip(),
        }
    }

    pub fn reply_key(&self) -> ReplyKey {
        ReplyKey {
            proto: self.proto(),
            real: self.real(),
            peer: self.peer(),
        }
    }

    pub(crate) fn matches_in(&self, k: &FlowKey) -> bool {
        self.proto == k.proto as u8
            && self.client_ip == k.client.ip().to_bits()
            && self.client_port == k.client.port()
            && self.vip_ip == k.vip.ip().to_bits()
            && self.vip_port == k.vip.port()
    }

    pub(crate) fn matches_reply(&self, k: &ReplyKey) -> bool {
        let (peer_ip, peer_port) = if self.flags & Self::LOCAL != 0 {
            (self.local_ip, self.local_port)
        } else {
            (self.client_ip, self.client_port)
        };
        self.proto == k.proto as u8
            && self.real_ip == k.real.ip().to_bits()
            && self.real_port == k.real.port()
            && peer_ip == k.peer.ip().to_bits()
            && peer_port == k.peer.port()
    }
}

/// What the engine knows when it schedules a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewConn {
    pub proto: Protocol,
    pub mode: Mode,
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub real: SocketAddrV4,
    /// FULLNAT local address (LIP:lport); `None` for NAT, DR and TUN.
    pub local: Option<SocketAddrV4>,
    /// FULLNAT TCP with a PROXY protocol header: the sequence shift.
    pub proxy: Option<ProxySeq>,
    pub service: u16,
    pub real_slot: RealSlot,
    /// Only [`ConnEntry::CALLER_FLAGS`] are kept.
    pub flags: u8,
}

impl NewConn {
    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            client: self.client,
            vip: self.vip,
        }
    }

    pub fn reply_key(&self) -> ReplyKey {
        ReplyKey {
            proto: self.proto,
            real: self.real,
            peer: self.local.unwrap_or(self.client),
        }
    }
}
