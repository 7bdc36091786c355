//! rtnetlink for the datapath: dump links, addresses, routes and neighbours into a
//! [`Fib`], and ask the kernel to resolve a neighbour.
//!
//! Synchronous on purpose: this runs on the datapath's own resolver thread, so the datapath
//! keeps working if the control plane is busy. The request/reply loop is `rtnl::Conn`,
//! shared with the VRRP engine.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::time::Duration;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::fib::{Fib, Interface, Mac, Route};

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// A NETLINK_ROUTE socket for requests (not notifications).
pub struct Rtnl {
    conn: rtnl::Conn,
}

impl Rtnl {
    pub fn new() -> io::Result<Rtnl> {
        Ok(Rtnl {
            conn: rtnl::Conn::new()?,
        })
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.conn.request(msg, flags)
    }

    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.conn.dump(msg)
    }

    /// `ip -4 link; ip -4 addr; ip -4 route show table main; ip -4 neigh` in one snapshot.
    pub fn dump_fib(&mut self) -> io::Result<Fib> {
        let mut interfaces = Vec::new();
        for m in self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
            if let RouteNetlinkMessage::NewLink(l) = m {
                interfaces.push(interface_from(&l));
            }
        }
        let mut addr_req = AddressMessage::default();
        addr_req.header.family = AddressFamily::Inet;
        for m in self.dump(RouteNetlinkMessage::GetAddress(addr_req))? {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                let local = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
                    _ => None,
                });
                let addr = local.or_else(|| {
                    a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                        _ => None,
                    })
                });
                if let (Some(addr), Some(iface)) = (
                    addr,
                    interfaces
                        .iter_mut()
                        .find(|i: &&mut Interface| i.ifindex == a.header.index),
                ) {
                    iface.addrs.push((addr, a.header.prefix_len));
                }
            }
        }
        let mut route_req = RouteMessage::default();
        route_req.header.address_family = AddressFamily::Inet;
        let mut routes = Vec::new();
        for m in self.dump(RouteNetlinkMessage::GetRoute(route_req))? {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                if let Some(route) = route_from(&r) {
                    routes.push(route);
                }
            }
        }
        let mut neigh_req = NeighbourMessage::default();
        neigh_req.header.family = AddressFamily::Inet;
        let mut neighbours = Vec::new();
        for m in self.dump(RouteNetlinkMessage::GetNeighbour(neigh_req))? {
            if let RouteNetlinkMessage::NewNeighbour(n) = m {
                if let Some(entry) = neighbour_from(&n) {
                    neighbours.push(entry);
                }
            }
        }
        Ok(Fib::new(interfaces, routes, neighbours))
    }

    /// The XDP program attached to `ifindex` through netlink, if any: its id and the attach
    /// flags to detach it with (`ip -d link show dev IF` shows it as `prog/xdp id N`).
    /// A program attached through a BPF link shows too, but cannot be detached this way.
    pub fn xdp_program(&mut self, ifindex: u32) -> io::Result<Option<(u32, u32)>> {
        use netlink_packet_route::link::{LinkXdp, XdpAttached};
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        for m in self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST)? {
            let RouteNetlinkMessage::NewLink(l) = m else {
                continue;
            };
            for attr in &l.attributes {
                let LinkAttribute::Xdp(xdp) = attr else {
                    continue;
                };
                let mut id = None;
                let mut flags = 0;
                for x in xdp {
                    match x {
                        LinkXdp::ProgId(i) if *i != 0 => id = Some(*i),
                        LinkXdp::Attached(XdpAttached::Driver) => flags = XDP_FLAGS_DRV_MODE,
                        LinkXdp::Attached(XdpAttached::SocketBuffer) => flags = XDP_FLAGS_SKB_MODE,
                        _ => {}
                    }
                }
                return Ok(id.map(|i| (i, flags)));
            }
        }
        Ok(None)
    }

    /// Detaches a netlink-attached XDP program from `ifindex` (`ip link set dev IF xdp off`).
    pub fn detach_xdp(&mut self, ifindex: u32, flags: u32) -> io::Result<()> {
        use netlink_packet_route::link::LinkXdp;
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        msg.attributes.push(LinkAttribute::Xdp(vec![
            LinkXdp::Fd(-1),
            LinkXdp::Flags(flags),
        ]));
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_REQUEST | NLM_F_ACK)
            .map(drop)
    }

    /// The kernel's current MAC for `addr` on `ifindex` (`ip neigh get ADDR dev IF`), if it
    /// has a usable entry.
    pub fn get_neighbour(&mut self, ifindex: u32, addr: Ipv4Addr) -> io::Result<Option<Mac>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = ifindex;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        match self.request(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_REQUEST) {
            Ok(replies) => Ok(replies.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => neighbour_from(n).map(|(_, _, mac)| mac),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ask the kernel to resolve `addr` on `ifindex` as if traffic were waiting for it
    /// (`ip neigh replace ADDR dev IF use`): it sends the ARP request and fills its
    /// neighbour table, which the next [`Rtnl::dump_fib`] picks up.
    pub fn solicit(&mut self, ifindex: u32, addr: Ipv4Addr) -> io::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = ifindex;
        msg.header.state = NeighbourState::None;
        msg.header.flags = NeighbourFlags::Use;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }
}

fn interface_from(l: &LinkMessage) -> Interface {
    let mut iface = Interface {
        ifindex: l.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 1500,
        up: l.header.flags.contains(LinkFlags::Up) && l.header.flags.contains(LinkFlags::LowerUp),
        loopback: l.header.flags.contains(LinkFlags::Loopback),
        addrs: Vec::new(),
    };
    for attr in &l.attributes {
        match attr {
            LinkAttribute::IfName(n) => iface.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => iface.mac.copy_from_slice(a),
            LinkAttribute::Mtu(m) => iface.mtu = *m,
            _ => {}
        }
    }
    iface
}

fn route_from(r: &RouteMessage) -> Option<Route> {
    if r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(r.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(Route {
        dst,
        prefix_len: r.header.destination_prefix_length,
        gateway,
        oif: oif?,
        metric,
    })
}

fn neighbour_from(n: &NeighbourMessage) -> Option<(u32, Ipv4Addr, Mac)> {
    let usable = matches!(
        n.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    if !usable {
        return None;
    }
    let mut addr = None;
    let mut mac = None;
    for attr in &n.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some(*a),
            NeighbourAttribute::LinkLocalAddress(l) if l.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(l);
                mac = Some(m);
            }
            _ => {}
        }
    }
    Some((n.header.ifindex, addr?, mac?))
}

/// rtnetlink multicast groups (the legacy RTMGRP_* bitmask of `bind`).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;

/// A subscription to link, address, route and neighbour changes. Only "something changed"
/// matters: the reader re-dumps the tables, which is simpler and cannot drift.
pub struct Notifications {
    sock: Socket,
    buf: Vec<u8>,
}

impl Notifications {
    pub fn subscribe() -> io::Result<Notifications> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(
            0,
            RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE,
        ))?;
        sock.set_non_blocking(true)?;
        Ok(Notifications {
            sock,
            buf: vec![0; 1 << 16],
        })
    }

    /// Wait up to `timeout` for notifications; true when any arrived (or some were lost,
    /// which also calls for a re-dump). Drains everything queued.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let r = poll(
            &mut [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)],
            timeout,
        );
        if !matches!(r, Ok(n) if n > 0) {
            return false;
        }
        let mut any = false;
        loop {
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => break,
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ENOBUFS: notifications were dropped; a re-dump covers them.
                Err(_) => {
                    any = true;
                    break;
                }
            }
        }
        any
    }
}
