//! A snapshot of the kernel's IPv4 routes, interfaces and neighbours, used by the workers to
//! pick the egress interface and the MAC addresses of a forwarded frame.
//!
//! The datapath writes frames straight onto the wire, so it needs what the kernel's output
//! path would have used: the longest-prefix route for the next hop and the neighbour entry
//! for its MAC. `io::netlink` dumps the kernel's tables into a new [`Fib`] a few times a
//! second and on every neighbour or route notification; workers read the current one
//! through an `ArcSwap` without locking. A miss is reported, never waited for: the caller
//! drops the packet, counts it and asks the resolver to solicit the neighbour.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;

/// A link-layer address.
pub type Mac = [u8; 6];

/// One network interface as seen by the datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub ifindex: u32,
    pub name: String,
    pub mac: Mac,
    pub mtu: u32,
    pub up: bool,
    pub loopback: bool,
    /// IPv4 addresses with their prefix length.
    pub addrs: Vec<(Ipv4Addr, u8)>,
}

/// A unicast route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
    pub metric: u32,
}

impl Route {
    fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len.min(32)))
        }
    }

    fn matches(&self, dst: Ipv4Addr) -> bool {
        (u32::from(dst) ^ u32::from(self.dst)) & self.mask() == 0
    }
}

/// Where a frame for an IPv4 destination goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub mtu: u32,
}

/// Why a destination could not be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FibMiss {
    /// No route, or the route's interface is unknown or down.
    NoRoute,
    /// The route is known but the next hop's MAC is not (yet): solicit it.
    NoNeighbour { ifindex: u32, addr: Ipv4Addr },
}

/// FNV-1a-style mixer for small integer keys: the neighbour map is read on every forwarded
/// packet, where SipHash would cost more than the lookup itself. Keys are (ifindex, address)
/// pairs learnt from the kernel, not chosen by clients directly.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Routes, interfaces and neighbours at one moment.
#[derive(Debug, Default, Clone)]
pub struct Fib {
    interfaces: FastMap<u32, Interface>,
    /// Sorted by prefix length (longest first), then metric.
    routes: Vec<Route>,
    neighbours: FastMap<(u32, u32), Mac>,
}

impl Fib {
    pub fn new(
        interfaces: Vec<Interface>,
        mut routes: Vec<Route>,
        neighbours: Vec<(u32, Ipv4Addr, Mac)>,
    ) -> Fib {
        routes.sort_by(|a, b| {
            b.prefix_len
                .cmp(&a.prefix_len)
                .then(a.metric.cmp(&b.metric))
        });
        Fib {
            interfaces: interfaces.into_iter().map(|i| (i.ifindex, i)).collect(),
            routes,
            neighbours: neighbours
                .into_iter()
                .map(|(ifindex, addr, mac)| ((ifindex, u32::from(addr)), mac))
                .collect(),
        }
    }

    pub fn interface(&self, ifindex: u32) -> Option<&Interface> {
        self.interfaces.get(&ifindex)
    }

    pub fn interface_by_name(&self, name: &str) -> Option<&Interface> {
        self.interfaces.values().find(|i| i.name == name)
    }

    pub fn interfaces(&self) -> impl Iterator<Item = &Interface> {
        self.interfaces.values()
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn neighbour(&self, ifindex: u32, addr: Ipv4Addr) -> Option<Mac> {
        self.neighbours.get(&(ifindex, u32::from(addr))).copied()
    }

    /// True when `addr` is configured on one of the box's interfaces.
    pub fn is_local(&self, addr: Ipv4Addr) -> bool {
        self.interfaces
            .values()
            .any(|i| i.addrs.iter().any(|(a, _)| *a == addr))
    }

    /// The longest-prefix route for `dst` whose interface is known and up.
    pub fn route(&self, dst: Ipv4Addr) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.matches(dst)
                && self
                    .interfaces
                    .get(&r.oif)
                    .is_some_and(|i| i.up && !i.loopback)
        })
    }

    /// Egress interface and MACs for a frame to `dst`.
    /// The interface and next-hop address toward `dst` (the gateway of its route, or `dst`
    /// itself on a connected route).
    pub fn next_hop_addr(&self, dst: Ipv4Addr) -> Option<(u32, Ipv4Addr)> {
        let route = self.route(dst)?;
        Some((route.oif, route.gateway.unwrap_or(dst)))
    }

    /// The next hop `hop` on interface `oif`, if its MAC is known.
    pub fn hop(&self, oif: u32, hop: Ipv4Addr) -> Option<NextHop> {
        let iface = self.interfaces.get(&oif)?;
        let dst_mac = self.neighbour(oif, hop)?;
        Some(NextHop {
            ifindex: oif,
            src_mac: iface.mac,
            dst_mac,
            mtu: iface.mtu,
        })
    }

    pub fn resolve(&self, dst: Ipv4Addr) -> Result<NextHop, FibMiss> {
        let route = self.route(dst).ok_or(FibMiss::NoRoute)?;
        let iface = self.interfaces.get(&route.oif).ok_or(FibMiss::NoRoute)?;
        let hop = route.gateway.unwrap_or(dst);
        let dst_mac = self.neighbour(route.oif, hop).ok_or(FibMiss::NoNeighbour {
            ifindex: route.oif,
            addr: hop,
        })?;
        Ok(NextHop {
            ifindex: route.oif,
            src_mac: iface.mac,
            dst_mac,
            mtu: iface.mtu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_fib() -> Fib {
        let ext = Interface {
            ifindex: 2,
            name: "ext".into(),
            mac: [2, 0, 0, 0, 0, 2],
            mtu: 1500,
            up: true,
            loopback: false,
            addrs: vec![(Ipv4Addr::new(198, 18, 1, 2), 24)],
        };
        let int = Interface {
            ifindex: 3,
            name: "int".into(),
            mac: [2, 0, 0, 0, 0, 3],
            mtu: 9000,
            up: true,
            loopback: false,
            addrs: vec![(Ipv4Addr::new(198, 18, 2, 1), 24)],
        };
        let routes = vec![
            Route {
                dst: Ipv4Addr::new(0, 0, 0, 0),
                prefix_len: 0,
                gateway: Some(Ipv4Addr::new(198, 18, 1, 254)),
                oif: 2,
                metric: 0,
            },
            Route {
                dst: Ipv4Addr::new(198, 18, 1, 0),
                prefix_len: 24,
                gateway: None,
                oif: 2,
                metric: 0,
            },
            Route {
                dst: Ipv4Addr::new(198, 18, 2, 0),
                prefix_len: 24,
                gateway: None,
                oif: 3,
                metric: 0,
            },
        ];
        let neigh = vec![
            (2, Ipv4Addr::new(198, 18, 1, 254), [2, 0, 0, 0, 1, 254]),
            (3, Ipv4Addr::new(198, 18, 2, 11), [2, 0, 0, 0, 2, 11]),
        ];
        Fib::new(vec![ext, int], routes, neigh)
    }

    #[test]
    fn connected_route_uses_destination_neighbour() {
        let fib = lab_fib();
        let hop = fib.resolve(Ipv4Addr::new(198, 18, 2, 11)).unwrap();
        assert_eq!(
            hop,
            NextHop {
                ifindex: 3,
                src_mac: [2, 0, 0, 0, 0, 3],
                dst_mac: [2, 0, 0, 0, 2, 11],
                mtu: 9000
            }
        );
    }

    #[test]
    fn default_route_uses_gateway_neighbour() {
        let fib = lab_fib();
        let hop = fib.resolve(Ipv4Addr::new(198, 19, 7, 7)).unwrap();
        assert_eq!(hop.ifindex, 2);
        assert_eq!(hop.dst_mac, [2, 0, 0, 0, 1, 254]);
    }

    #[test]
    fn missing_neighbour_names_what_to_solicit() {
        let fib = lab_fib();
        assert_eq!(
            fib.resolve(Ipv4Addr::new(198, 18, 2, 12)),
            Err(FibMiss::NoNeighbour {
                ifindex: 3,
                addr: Ipv4Addr::new(198, 18, 2, 12)
            })
        );
    }

    #[test]
    fn down_interface_has_no_route() {
        let mut fib = lab_fib();
        fib.interfaces.get_mut(&3).unwrap().up = false;
        // 198.18.2.0/24 is on a down link, so the default route wins.
        assert_eq!(fib.route(Ipv4Addr::new(198, 18, 2, 11)).unwrap().oif, 2);
        let empty = Fib::default();
        assert_eq!(
            empty.resolve(Ipv4Addr::new(198, 18, 2, 11)),
            Err(FibMiss::NoRoute)
        );
    }

    #[test]
    fn local_addresses_are_known() {
        let fib = lab_fib();
        assert!(fib.is_local(Ipv4Addr::new(198, 18, 2, 1)));
        assert!(!fib.is_local(Ipv4Addr::new(198, 18, 2, 11)));
    }
}
