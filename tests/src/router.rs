//! Topologies with a router between the client and the director's segment, for path-MTU
//! discovery through the director.
//!
//! ```text
//!  client 198.18.3.10 ── cl 198.18.3.1 [router] ext 198.18.1.1 ── ext bridge ── director …
//!          (MTU 1500)        (MTU `mtu`)
//! ```
//! The router's interface toward the client has the smaller MTU while the client's own stays
//! at 1500, so the client advertises an MSS of 1460 and the server side sends full 1500-byte
//! segments (with DF, as Linux TCP does): the router cannot forward them and answers with
//! ICMP fragmentation-needed, addressed to the packet's source, the VIP.
//!
//! NAT (`nat_via_router`): the director and real servers as in `Topo::nat`; the director
//! routes 198.18.3.0/24 via the router. DR (`dr_via_router`): the real servers on the ext
//! segment with the VIP on `lo` as in `Topo::dr`; their route to the client's network is via
//! the router (they reply to the client directly, so the router sees their segments).
//!
//! Both give a `Topo` (so `start`, `curl_many`, `director_json` work as usual) and the router.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::lab::{Host, Lab};
use crate::topo::{director_host, dr_reals, nat_reals, Mode, Topo};

/// The client's address behind the router.
pub const FAR_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 10);
/// The router's address on the director's external segment.
pub const ROUTER_EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const FAR_NET: &str = "198.18.3.0/24";

/// A topology whose client sits behind a router.
pub struct Routed {
    pub topo: Topo,
    pub router: Host,
}

/// Client and router, the router's ext side on `ext`, forwarding on.
fn client_and_router(lab: &Lab, ext: &crate::lab::Bridge, mtu: u32) -> Result<(Host, Host)> {
    let client = lab.host("client")?;
    let router = lab.host("router")?;
    lab.link(
        &client,
        "eth0",
        "198.18.3.10/24",
        &router,
        "cl",
        "198.18.3.1/24",
    )?;
    router.ip(["link", "set", "dev", "cl", "mtu", &mtu.to_string()])?;
    lab.attach(&router, ext, "ext", &format!("{ROUTER_EXT}/24"))?;
    router.sysctl("net.ipv4.ip_forward", "1")?;
    client.route_add("default", "198.18.3.1")?;
    Ok((client, router))
}

fn topo(
    lab: Lab,
    mode: Mode,
    client: Host,
    director: Host,
    reals: Vec<Host>,
    real_addrs: Vec<Ipv4Addr>,
) -> Result<Topo> {
    director.route_add(FAR_NET, &ROUTER_EXT.to_string())?;
    Topo::finish(lab, mode, client, director, reals, real_addrs)
}

/// NAT with `n` real servers and a router whose client-side link has MTU `mtu`.
pub fn nat_via_router(lab: Lab, n: usize, mtu: u32) -> Result<Routed> {
    let ext = lab.bridge("ext")?;
    let int = lab.bridge("int")?;
    let (client, router) = client_and_router(&lab, &ext, mtu)?;
    let director = director_host(&lab, &ext, Some(&int))?;
    let (reals, real_addrs) = nat_reals(&lab, &int, n)?;
    let topo = topo(lab, Mode::Nat, client, director, reals, real_addrs)?;
    Ok(Routed { topo, router })
}

/// DR with `n` real servers on the ext segment (VIP on `lo`, no ARP for it) whose route to
/// the client's network is the router; the router's client-side link has MTU `mtu`.
pub fn dr_via_router(lab: Lab, n: usize, mtu: u32) -> Result<Routed> {
    let ext = lab.bridge("ext")?;
    let (client, router) = client_and_router(&lab, &ext, mtu)?;
    let director = director_host(&lab, &ext, None)?;
    let (reals, real_addrs) = dr_reals(&lab, &ext, n)?;
    for h in &reals {
        h.route_add(FAR_NET, &ROUTER_EXT.to_string())?;
    }
    let topo = topo(lab, Mode::Dr, client, director, reals, real_addrs)?;
    Ok(Routed { topo, router })
}
