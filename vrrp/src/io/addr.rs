//! rtnetlink requests: the VIPs (IPv4 addresses of an interface) and link state.
//!
//! Synchronous request/reply on a netlink socket (`rtnl::Conn`, shared with the datapath's
//! resolver): the kernel answers rtnetlink requests while handling the `send`, so a request
//! never waits on the network; a receive timeout guards against a lost reply.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// A failed rtnetlink request: what was attempted (as the `ip` command that does the same)
/// and the error, whose [`errno`](Error::errno) is the kernel's answer when it gave one.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Error {
    what: String,
    #[source]
    source: io::Error,
}

impl Error {
    fn new(what: String, source: io::Error) -> Error {
        Error { what, source }
    }

    /// The request, e.g. `ip addr add 198.18.1.100/24 dev #3`.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The errno: the netlink error code of the kernel's reply, or of the socket call that
    /// failed. `None` when the reply could not be parsed.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// A network interface as the VRRP engine cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    /// Administratively up and operationally up (`IFF_UP` and `IFF_RUNNING`; `IFF_RUNNING`
    /// needs carrier, `IFF_LOWER_UP`): the test keepalived uses for interface tracking.
    pub up: bool,
}

impl Link {
    pub(crate) fn from_message(l: &LinkMessage) -> Link {
        let mut link = Link {
            index: l.header.index,
            name: String::new(),
            mac: [0; 6],
            up: l.header.flags.contains(LinkFlags::Up | LinkFlags::Running),
        };
        for attr in &l.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name.clone_from(n),
                LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(a),
                _ => {}
            }
        }
        link
    }
}

/// A NETLINK_ROUTE socket for requests (not notifications: see
/// [`LinkWatcher`](super::link::LinkWatcher)). Requests act in the network namespace the
/// socket was created in.
pub struct Rtnl {
    conn: rtnl::Conn,
}

impl Rtnl {
    pub fn new() -> io::Result<Rtnl> {
        Ok(Rtnl {
            conn: rtnl::Conn::new()?,
        })
    }

    /// Sends `msg` and collects the replies (`rtnl::Conn::request`).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.conn.request(msg, flags)
    }

    fn addr_message(ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = ifindex;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        msg
    }

    /// `ip addr add ADDR/PREFIX dev IFINDEX`. Already present (same address and
    /// prefix) is success.
    pub fn add_addr(&mut self, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Error> {
        let msg = Self::addr_message(ifindex, addr, prefix_len);
        match self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(Error::new(
                format!("ip addr add {addr}/{prefix_len} dev #{ifindex}"),
                e,
            )),
        }
    }

    /// `ip addr del ADDR/PREFIX dev IFINDEX`. Already absent is success.
    pub fn del_addr(&mut self, ifindex: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<(), Error> {
        let msg = Self::addr_message(ifindex, addr, prefix_len);
        match self.request(
            RouteNetlinkMessage::DelAddress(msg),
            NLM_F_REQUEST | NLM_F_ACK,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(Error::new(
                format!("ip addr del {addr}/{prefix_len} dev #{ifindex}"),
                e,
            )),
        }
    }

    /// `ip -4 addr show dev IFINDEX`: each IPv4 address with its prefix length, in the
    /// kernel's order (primary addresses first).
    pub fn addrs(&mut self, ifindex: u32) -> Result<Vec<(Ipv4Addr, u8)>, Error> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self
            .request(
                RouteNetlinkMessage::GetAddress(req),
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .map_err(|e| Error::new(format!("ip -4 addr show dev #{ifindex}"), e))?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != ifindex {
                continue;
            }
            // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point
            // links and equal to IFA_LOCAL elsewhere.
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
            if let Some(addr) = addr {
                out.push((addr, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// `ip link show dev NAME`: index, MAC and whether it is up.
    pub fn link(&mut self, name: &str) -> Result<Link, Error> {
        let mut req = LinkMessage::default();
        req.attributes.push(LinkAttribute::IfName(name.to_string()));
        let replies = self
            .request(RouteNetlinkMessage::GetLink(req), NLM_F_REQUEST)
            .map_err(|e| Error::new(format!("ip link show dev {name}"), e))?;
        replies
            .iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .ok_or_else(|| {
                Error::new(
                    format!("ip link show dev {name}"),
                    io::Error::new(io::ErrorKind::InvalidData, "the kernel sent no link"),
                )
            })
    }
}
