//! Load-balancer topologies on top of the lab: a client segment, a director, real servers.
//!
//! NAT (`Topo::nat`):
//! ```text
//!  client 198.18.1.10 ─┐ ext 198.18.1.0/24        int 198.18.2.0/24 ┌─ rs1 198.18.2.11
//!                      ├── director ext .1.2 ── director int .2.1 ───┼─ rs2 198.18.2.12
//!                      │   VIP 198.18.1.100/32                        └─ rs3 198.18.2.13
//! ```
//! The real servers' default gateway is the director's internal address.
//!
//! DR (`Topo::dr`): one segment 198.18.1.0/24; the real servers 198.18.1.11-13 hold the VIP
//! on `lo` with `arp_ignore=1`/`arp_announce=2` (the classic LVS-DR recipe), so they accept
//! VIP traffic but never answer ARP for it, and reply to the client directly.
//!
//! TUN (`Topo::tun`): the real servers 198.18.2.11-13 sit on the internal segment, hold the
//! VIP on `lo` (the DR recipe) and run `ipip-decap`, the lab's stand-in for a stock kernel's
//! `ipip` device (this host kernel has none); their default route is a plain router, the
//! gateway `gw` (198.18.2.254 on `int`, 198.18.1.254 on `ext`), so their replies reach the
//! client without the director:
//! ```text
//!  client .1.10 ── ext ── director .1.2 ═══ IPIP to 198.18.2.1x ═══ int ── rs1..3 (VIP on lo)
//!        ▲          │                                                │
//!        └──────────┴─ gw 198.18.1.254 ◄─── replies VIP → client ────┘ 198.18.2.254
//! ```
//!
//! FULLNAT (`Topo::fullnat`): the real servers as in NAT but with no route beyond their own
//! /24 (no default route): they only ever talk to the director's local addresses (LIPs)
//! 198.18.2.5 and 198.18.2.6, which the director holds on `int` the way it holds the VIP on
//! `ext`.
//!
//! Every real server runs `labsrv` (HTTP, TCP echo or UDP on the service port, per
//! [`ServiceSpec::app`]), and the director runs
//! `directord` with a config written into the lab's directory.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::lab::{wait_until, Bridge, Host, Lab, Proc, Signal};

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
/// The FULLNAT services' local addresses (`local_addresses`), on the director's `int`.
pub const LIPS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 2, 5), Ipv4Addr::new(198, 18, 2, 6)];
/// The TUN topologies' plain router: its address on `int` (the real servers' default route)
/// and on `ext` (the client's segment).
pub const GATEWAY_INT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 254);
pub const GATEWAY_EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
/// The TUN device `ipip-decap` creates on each TUN real server.
pub const DECAP_DEV: &str = "decap0";

/// The forwarding mode of a topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Nat,
    Dr,
    Tun,
    FullNat,
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

    /// The port a real server listens on for a service port: NAT and FULLNAT map 80 → 8080
    /// to show the rewrite; DR and TUN cannot change the port.
    pub fn real_port(self, port: u16) -> u16 {
        match self {
            Mode::Nat | Mode::FullNat => port + 8000,
            Mode::Dr | Mode::Tun => port,
        }
    }

    /// Whether the real servers sit on the director's internal segment (`int`).
    pub fn has_int(self) -> bool {
        self != Mode::Dr
    }

    /// Whether the real servers hold the VIP themselves (on `lo`) and answer the client
    /// directly.
    pub fn vip_on_reals(self) -> bool {
        matches!(self, Mode::Dr | Mode::Tun)
    }

    /// `[datapath] interfaces` of a director in this mode's topology.
    pub fn interfaces_toml(self) -> &'static str {
        if self.has_int() {
            "[\"ext\", \"int\"]"
        } else {
            "[\"ext\"]"
        }
    }

    /// The service keys this mode needs beyond the common ones (FULLNAT: its LIPs).
    pub fn write_service_keys(self, c: &mut String) {
        if self == Mode::FullNat {
            let lips: Vec<String> = LIPS.iter().map(|l| format!("\"{l}\"")).collect();
            let _ = writeln!(c, "local_addresses = [{}]", lips.join(", "));
        }
    }
}

/// Starts `labsrv` on each real server (`rs1`, `rs2`, ...) for these services and waits until
/// every socket is bound and every TCP port listens.
pub fn start_labsrv(
    reals: &[Host],
    real_addrs: &[Ipv4Addr],
    mode: Mode,
    services: &[ServiceSpec],
) -> Result<Vec<Proc>> {
    let labsrv = workspace_bin("labsrv")?;
    let mut procs = Vec::new();
    for (i, h) in reals.iter().enumerate() {
        let mut argv = vec![
            labsrv.display().to_string(),
            "--name".into(),
            format!("rs{}", i + 1),
        ];
        for s in services {
            let Some(flag) = s.app.labsrv_flag() else {
                continue;
            };
            // A UDP socket bound to 0.0.0.0 answers from the interface's address; in DR and
            // TUN the reply must come from the VIP (which the real holds on `lo`), so bind the
            // VIP itself there.
            let bind = if s.protocol == "udp" && mode.vip_on_reals() {
                VIP
            } else {
                Ipv4Addr::UNSPECIFIED
            };
            argv.push(flag.into());
            argv.push(format!("{bind}:{}", mode.real_port(s.port)));
        }
        if argv.len() == 3 {
            continue; // every service runs something else
        }
        let mut proc = h.spawn(&argv)?;
        // `ready` follows once every socket is bound (UDP has no listen to wait for).
        proc.wait_stdout("ready", Duration::from_secs(10))
            .with_context(|| format!("labsrv on {} did not start", h.name()))?;
        procs.push(proc);
    }
    for (i, s) in services.iter().enumerate() {
        if s.protocol == "tcp" && s.app != App::External {
            for (h, addr) in reals.iter().zip(real_addrs) {
                h.wait_tcp_listen(
                    SocketAddr::from((*addr, mode.real_port(s.port))),
                    Duration::from_secs(10),
                )
                .with_context(|| format!("labsrv for service {i} did not start"))?;
            }
        }
    }
    Ok(procs)
}

/// What the real servers run for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// `labsrv --http`: HTTP/1.1 (`/`, `/healthz`, `/stream`).
    Http,
    /// `labsrv --echo`: every byte written back until EOF (the flows of `flowcheck`).
    TcpEcho,
    /// `labsrv --echo-proxy`: TCP echo after a PROXY protocol v2 header, whose client
    /// address it logs (FULLNAT with `proxy_protocol = "v2"`).
    TcpEchoProxy,
    /// `labsrv --udp`: each datagram answered with the server's name and the payload.
    Udp,
    /// Not `labsrv`: the test starts the real servers' program itself (e.g. `nginx`).
    External,
}

impl App {
    /// `labsrv`'s flag for this app; `None` for [`App::External`].
    pub fn labsrv_flag(self) -> Option<&'static str> {
        Some(match self {
            App::Http => "--http",
            App::TcpEcho => "--echo",
            App::TcpEchoProxy => "--echo-proxy",
            App::Udp => "--udp",
            App::External => return None,
        })
    }
}

/// The TCP echo service's port (the well-known echo port).
pub const ECHO_PORT: u16 = 7;

/// A service to put in the director's config.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub protocol: &'static str,
    pub app: App,
    pub port: u16,
    pub scheduler: &'static str,
    pub persistence: &'static str,
    /// Weight of each real server, in order rs1, rs2, ...
    pub weights: Vec<u32>,
    /// More `[[service]]` keys, one per line (`quorum = 1`).
    pub extra: String,
    /// The body of `[service.check]`, if any (`kind = "http"` ...).
    pub check: Option<String>,
}

impl ServiceSpec {
    /// The extra keys and the check table, ending the service's own keys.
    pub fn write_extra(&self, c: &mut String) {
        for line in self.extra.lines() {
            let _ = writeln!(c, "{line}");
        }
        if let Some(check) = &self.check {
            let _ = writeln!(c, "\n[service.check]\n{check}");
        }
        let _ = writeln!(c);
    }

    pub fn http(scheduler: &'static str, weights: &[u32]) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            protocol: "tcp",
            app: App::Http,
            port: 80,
            scheduler,
            persistence: "0s",
            weights: weights.to_vec(),
            extra: String::new(),
            check: None,
        }
    }

    /// A TCP echo service on [`ECHO_PORT`] (for `flowcheck`'s long-lived connections).
    pub fn echo(scheduler: &'static str, weights: &[u32]) -> ServiceSpec {
        ServiceSpec {
            name: "tcp-echo".into(),
            protocol: "tcp",
            app: App::TcpEcho,
            port: ECHO_PORT,
            scheduler,
            persistence: "0s",
            weights: weights.to_vec(),
            extra: String::new(),
            check: None,
        }
    }

    /// [`ServiceSpec::echo`] behind the PROXY protocol: `proxy_protocol = "v2"` (FULLNAT
    /// only) and `labsrv --echo-proxy` on the real servers.
    pub fn echo_proxy(scheduler: &'static str, weights: &[u32]) -> ServiceSpec {
        ServiceSpec {
            name: "tcp-echo-pp".into(),
            app: App::TcpEchoProxy,
            extra: "proxy_protocol = \"v2\"".into(),
            ..ServiceSpec::echo(scheduler, weights)
        }
    }

    pub fn udp(scheduler: &'static str, weights: &[u32]) -> ServiceSpec {
        ServiceSpec {
            name: "echo".into(),
            protocol: "udp",
            app: App::Udp,
            port: 5353,
            scheduler,
            persistence: "0s",
            weights: weights.to_vec(),
            extra: String::new(),
            check: None,
        }
    }
}

/// The path of a binary of this workspace (built by `cargo build --workspace`).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the {name} binary next to {} — run `cargo build --workspace` first",
        exe.display()
    )
}

/// `DIRECTOR_LAB_XDP=native` (or `generic`, `auto`) runs every topology's directors on the
/// XDP receive path instead of the default (`off`: AF_PACKET rings).
pub fn lab_xdp() -> Result<Option<&'static str>> {
    let Ok(mode) = std::env::var("DIRECTOR_LAB_XDP") else {
        return Ok(None);
    };
    Ok(match mode.as_str() {
        "native" => Some("native"),
        "generic" => Some("generic"),
        "auto" => Some("auto"),
        "off" | "" => None,
        other => bail!("DIRECTOR_LAB_XDP={other}: native, generic, auto or off"),
    })
}

/// The director: `ext` 198.18.1.2/24 holding the VIP, and `int` 198.18.2.1/24 (the NAT real
/// servers' gateway) when `int` is given.
pub fn director_host(lab: &Lab, ext: &Bridge, int: Option<&Bridge>) -> Result<Host> {
    let director = lab.host("director")?;
    lab.attach(&director, ext, "ext", "198.18.1.2/24")?;
    if let Some(int) = int {
        lab.attach(&director, int, "int", "198.18.2.1/24")?;
    }
    director.addr_add("ext", &format!("{VIP}/32"))?;
    Ok(director)
}

/// NAT real servers rs1..rsN at 198.18.2.11.. on `int`, default route via the director.
pub fn nat_reals(lab: &Lab, int: &Bridge, n: usize) -> Result<(Vec<Host>, Vec<Ipv4Addr>)> {
    let mut reals = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let h = lab.host(&format!("rs{}", i + 1))?;
        let addr = Ipv4Addr::new(198, 18, 2, 11 + i as u8);
        lab.attach(&h, int, "eth0", &format!("{addr}/24"))?;
        h.route_add("default", "198.18.2.1")?;
        reals.push(h);
        addrs.push(addr);
    }
    Ok((reals, addrs))
}

/// DR real servers rs1..rsN at 198.18.1.11.. on `ext`, holding the VIP on `lo` without ever
/// answering ARP for it (`arp_ignore=1`, `arp_announce=2`: the LVS-DR recipe).
pub fn dr_reals(lab: &Lab, ext: &Bridge, n: usize) -> Result<(Vec<Host>, Vec<Ipv4Addr>)> {
    let mut reals = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let h = lab.host(&format!("rs{}", i + 1))?;
        let addr = Ipv4Addr::new(198, 18, 1, 11 + i as u8);
        h.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
        h.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
        lab.attach(&h, ext, "eth0", &format!("{addr}/24"))?;
        h.sysctl("net.ipv4.conf.eth0.arp_ignore", "1")?;
        h.sysctl("net.ipv4.conf.eth0.arp_announce", "2")?;
        h.addr_add("lo", &format!("{VIP}/32"))?;
        reals.push(h);
        addrs.push(addr);
    }
    Ok((reals, addrs))
}

/// TUN real servers rs1..rsN at 198.18.2.11.. on `int`, holding the VIP on `lo` as in DR,
/// `rp_filter` off (the client's packets arrive on the decapsulating device, not on the
/// route back to the client), default route via [`GATEWAY_INT`]. Start [`start_decap`] on
/// them before traffic.
pub fn tun_reals(lab: &Lab, int: &Bridge, n: usize) -> Result<(Vec<Host>, Vec<Ipv4Addr>)> {
    let mut reals = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let h = lab.host(&format!("rs{}", i + 1))?;
        let addr = Ipv4Addr::new(198, 18, 2, 11 + i as u8);
        h.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
        h.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
        h.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        h.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        lab.attach(&h, int, "eth0", &format!("{addr}/24"))?;
        h.sysctl("net.ipv4.conf.eth0.arp_ignore", "1")?;
        h.sysctl("net.ipv4.conf.eth0.arp_announce", "2")?;
        h.addr_add("lo", &format!("{VIP}/32"))?;
        h.route_add("default", &GATEWAY_INT.to_string())?;
        reals.push(h);
        addrs.push(addr);
    }
    Ok((reals, addrs))
}

/// Starts `ipip-decap` (the lab's stand-in for a stock kernel's `ipip` device) on each TUN
/// real server and turns `rp_filter` off on its device; the helpers stop with their `Proc`s.
pub fn start_decap(reals: &[Host]) -> Result<Vec<Proc>> {
    let bin = workspace_bin("ipip-decap")?;
    let mut procs = Vec::new();
    for h in reals {
        let mut p = h.spawn([bin.display().to_string(), "--dev".into(), DECAP_DEV.into()])?;
        p.wait_stdout("ready", Duration::from_secs(10))
            .with_context(|| format!("ipip-decap on {} did not start", h.name()))?;
        h.sysctl(&format!("net.ipv4.conf.{DECAP_DEV}.rp_filter"), "0")?;
        procs.push(p);
    }
    Ok(procs)
}

/// The TUN topologies' router `gw`: [`GATEWAY_EXT`] on `ext`, [`GATEWAY_INT`] on `int`,
/// forwarding on, `rp_filter` off (replies from the VIP come in on `int` while the VIP's
/// own subnet is on `ext`).
pub fn gateway_host(lab: &Lab, ext: &Bridge, int: &Bridge) -> Result<Host> {
    let gw = lab.host("gw")?;
    gw.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    gw.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    lab.attach(&gw, ext, "ext", &format!("{GATEWAY_EXT}/24"))?;
    lab.attach(&gw, int, "int", &format!("{GATEWAY_INT}/24"))?;
    gw.sysctl("net.ipv4.ip_forward", "1")?;
    Ok(gw)
}

/// The counters of each running `ipip-decap` (SIGUSR1 makes it print them as one JSON line):
/// `{"decapsulated":N,"bytes":N,"bad":N,"write_errors":N}`.
pub fn decap_counters(helpers: &mut [Proc]) -> Result<Vec<serde_json::Value>> {
    let json_lines = |p: &Proc| -> Vec<String> {
        p.stdout()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(str::to_owned)
            .collect()
    };
    let mut out = Vec::new();
    for p in helpers.iter_mut() {
        let before = json_lines(p).len();
        p.kill(Signal::Usr1)?;
        wait_until(Duration::from_secs(5), || json_lines(p).len() > before)
            .context("ipip-decap did not print its counters")?;
        let last = json_lines(p).pop().context("no counters line")?;
        out.push(serde_json::from_str(&last).with_context(|| format!("counters {last:?}"))?);
    }
    Ok(out)
}

/// FULLNAT real servers rs1..rsN at 198.18.2.11.. on `int`, with no route beyond that /24:
/// they can only answer the director's LIPs.
pub fn fullnat_reals(lab: &Lab, int: &Bridge, n: usize) -> Result<(Vec<Host>, Vec<Ipv4Addr>)> {
    let mut reals = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let h = lab.host(&format!("rs{}", i + 1))?;
        let addr = Ipv4Addr::new(198, 18, 2, 11 + i as u8);
        lab.attach(&h, int, "eth0", &format!("{addr}/24"))?;
        reals.push(h);
        addrs.push(addr);
    }
    Ok((reals, addrs))
}

/// A built topology with its processes.
pub struct Topo {
    pub lab: Lab,
    pub mode: Mode,
    pub client: Host,
    pub director: Host,
    pub reals: Vec<Host>,
    pub real_addrs: Vec<Ipv4Addr>,
    pub servers: Vec<Proc>,
    /// Lab helpers that are not servers (TUN: `ipip-decap` on each real server).
    pub helpers: Vec<Proc>,
    /// TUN: the router the real servers reply through.
    pub gateway: Option<Host>,
    pub daemon: Option<Proc>,
    pub socket: PathBuf,
    pub config: PathBuf,
    /// `[datapath] workers` of the director's config.
    pub workers: usize,
    /// `[datapath] max_connections`, when not the default.
    pub max_connections: Option<u32>,
    /// `[datapath] xdp`, when not the default (see [`Topo::use_xdp`]).
    pub xdp: Option<&'static str>,
    /// More `[datapath]` keys, one per line (`udp_timeout = "3s"`).
    pub datapath_extra: String,
}

impl Topo {
    /// The topology of `mode` with `n` real servers.
    pub fn new(lab: Lab, mode: Mode, n: usize) -> Result<Topo> {
        match mode {
            Mode::Nat => Topo::nat(lab, n),
            Mode::Dr => Topo::dr(lab, n),
            Mode::Tun => Topo::tun(lab, n),
            Mode::FullNat => Topo::fullnat(lab, n),
        }
    }

    /// For tests: a three-real topology of `mode` with its servers and director started for
    /// `services`, or `None` where lab tests cannot run (see `Lab::for_test`).
    pub fn started(tag: &str, mode: Mode, services: &[ServiceSpec]) -> Option<Topo> {
        let lab = Lab::for_test(tag)?;
        let mut topo = Topo::new(lab, mode, 3).expect("topology");
        topo.start(services).expect("start");
        Some(topo)
    }

    /// The NAT topology with `n` real servers.
    pub fn nat(lab: Lab, n: usize) -> Result<Topo> {
        let ext = lab.bridge("ext")?;
        let int = lab.bridge("int")?;
        let client = lab.host("client")?;
        lab.attach(&client, &ext, "eth0", "198.18.1.10/24")?;
        let director = director_host(&lab, &ext, Some(&int))?;
        let (reals, real_addrs) = nat_reals(&lab, &int, n)?;
        Topo::finish(lab, Mode::Nat, client, director, reals, real_addrs)
    }

    /// The DR topology with `n` real servers on the client's segment.
    pub fn dr(lab: Lab, n: usize) -> Result<Topo> {
        let ext = lab.bridge("ext")?;
        let client = lab.host("client")?;
        lab.attach(&client, &ext, "eth0", "198.18.1.10/24")?;
        let director = director_host(&lab, &ext, None)?;
        let (reals, real_addrs) = dr_reals(&lab, &ext, n)?;
        Topo::finish(lab, Mode::Dr, client, director, reals, real_addrs)
    }

    /// The TUN topology: real servers on `int` with the VIP on `lo` and `ipip-decap`
    /// running, replying through the gateway `gw`.
    pub fn tun(lab: Lab, n: usize) -> Result<Topo> {
        let ext = lab.bridge("ext")?;
        let int = lab.bridge("int")?;
        let client = lab.host("client")?;
        lab.attach(&client, &ext, "eth0", "198.18.1.10/24")?;
        let director = director_host(&lab, &ext, Some(&int))?;
        let gw = gateway_host(&lab, &ext, &int)?;
        let (reals, real_addrs) = tun_reals(&lab, &int, n)?;
        let helpers = start_decap(&reals)?;
        let mut topo = Topo::finish(lab, Mode::Tun, client, director, reals, real_addrs)?;
        topo.helpers = helpers;
        topo.gateway = Some(gw);
        Ok(topo)
    }

    /// The FULLNAT topology: real servers on `int` with no route to the client; the
    /// director holds the LIPs on `int` as it holds the VIP on `ext`.
    pub fn fullnat(lab: Lab, n: usize) -> Result<Topo> {
        let ext = lab.bridge("ext")?;
        let int = lab.bridge("int")?;
        let client = lab.host("client")?;
        lab.attach(&client, &ext, "eth0", "198.18.1.10/24")?;
        let director = director_host(&lab, &ext, Some(&int))?;
        for lip in LIPS {
            director.addr_add("int", &format!("{lip}/32"))?;
        }
        let (reals, real_addrs) = fullnat_reals(&lab, &int, n)?;
        Topo::finish(lab, Mode::FullNat, client, director, reals, real_addrs)
    }

    /// Common end of every topology builder: director settings and file paths.
    pub fn finish(
        lab: Lab,
        mode: Mode,
        client: Host,
        director: Host,
        reals: Vec<Host>,
        real_addrs: Vec<Ipv4Addr>,
    ) -> Result<Topo> {
        // The director forwards only what the datapath forwards.
        director.sysctl("net.ipv4.ip_forward", "0")?;
        let socket = lab.dir().join("director.sock");
        let config = lab.dir().join("director.toml");
        let mut topo = Topo {
            lab,
            mode,
            client,
            director,
            reals,
            real_addrs,
            servers: Vec::new(),
            helpers: Vec::new(),
            gateway: None,
            daemon: None,
            socket,
            config,
            workers: 2,
            max_connections: None,
            xdp: None,
            datapath_extra: String::new(),
        };
        if let Some(mode) = lab_xdp()? {
            topo.use_xdp(mode)?;
        }
        Ok(topo)
    }

    /// Run the director with `[datapath] xdp = MODE` ("native", "generic", "auto"), its
    /// switch ports made wire-like ([`Lab::wire_port`]): what an XDP program receives must
    /// look like what a NIC receives.
    pub fn use_xdp(&mut self, mode: &'static str) -> Result<()> {
        for ifname in ["ext", "int"] {
            if ifname == "int" && !self.mode.has_int() {
                continue;
            }
            let port = self.lab.port_of(&self.director, ifname)?;
            self.lab.wire_port(&port)?;
        }
        self.xdp = Some(mode);
        Ok(())
    }

    /// The port a real server listens on for a service port (see [`Mode::real_port`]).
    pub fn real_port(&self, port: u16) -> u16 {
        self.mode.real_port(port)
    }

    /// Start `labsrv` on every real server for these services.
    pub fn start_servers(&mut self, services: &[ServiceSpec]) -> Result<()> {
        let procs = start_labsrv(&self.reals, &self.real_addrs, self.mode, services)?;
        self.servers.extend(procs);
        Ok(())
    }

    /// The director's config for these services.
    pub fn config_text(&self, services: &[ServiceSpec]) -> String {
        let mut c = String::new();
        let _ = writeln!(c, "[node]\nname = \"lab-director\"\n");
        let _ = writeln!(c, "[control]\nsocket = \"{}\"\n", self.socket.display());
        let _ = writeln!(
            c,
            "[datapath]\nworkers = {}\ninterfaces = {}",
            self.workers,
            self.mode.interfaces_toml()
        );
        if let Some(max) = self.max_connections {
            let _ = writeln!(c, "max_connections = {max}");
        }
        if let Some(xdp) = self.xdp {
            let _ = writeln!(c, "xdp = \"{xdp}\"");
        }
        for line in self.datapath_extra.lines() {
            let _ = writeln!(c, "{line}");
        }
        let _ = writeln!(c);
        for s in services {
            let _ = writeln!(c, "[[service]]");
            let _ = writeln!(c, "name = \"{}\"", s.name);
            let _ = writeln!(c, "vip = \"{VIP}:{}\"", s.port);
            let _ = writeln!(c, "protocol = \"{}\"", s.protocol);
            let _ = writeln!(c, "mode = \"{}\"", self.mode.as_str());
            let _ = writeln!(c, "scheduler = \"{}\"", s.scheduler);
            let _ = writeln!(c, "persistence = \"{}\"", s.persistence);
            self.mode.write_service_keys(&mut c);
            s.write_extra(&mut c);
            for (addr, w) in self.real_addrs.iter().zip(&s.weights) {
                let _ = writeln!(c, "[[service.real]]");
                let _ = writeln!(c, "address = \"{addr}:{}\"", self.real_port(s.port));
                let _ = writeln!(c, "weight = {w}\n");
            }
        }
        c
    }

    /// Write the config and start `directord` in the director's namespace; wait until its
    /// control socket answers.
    pub fn start_director(&mut self, services: &[ServiceSpec]) -> Result<()> {
        std::fs::write(&self.config, self.config_text(services))?;
        let directord = workspace_bin("directord")?;
        let mut cmd = self.director.command([
            directord.display().to_string(),
            "--config".into(),
            self.config.display().to_string(),
        ]);
        cmd.env(
            "DIRECTOR_LOG",
            std::env::var("DIRECTOR_LOG").unwrap_or_else(|_| "info".into()),
        );
        let proc = self.director.spawn_command("directord", cmd)?;
        self.daemon = Some(proc);
        let socket = self.socket.clone();
        wait_until(Duration::from_secs(15), || {
            self.director_json("stats").is_ok()
        })
        .with_context(|| {
            format!(
                "directord did not answer on {}; its log:\n{}",
                socket.display(),
                self.daemon
                    .as_ref()
                    .and_then(|p| p.stderr().ok())
                    .unwrap_or_default()
            )
        })?;
        Ok(())
    }

    /// Both: servers, then the director.
    pub fn start(&mut self, services: &[ServiceSpec]) -> Result<()> {
        self.start_servers(services)?;
        self.start_director(services)
    }

    /// `director CMD --json` against this lab's daemon, parsed.
    pub fn director_json(&self, cmd: &str) -> Result<serde_json::Value> {
        let out = self.director_cli(&[cmd, "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("director {cmd} --json printed: {out}"))
    }

    /// Run the `director` CLI (outside any namespace: the socket is a file) and return stdout.
    pub fn director_cli(&self, args: &[&str]) -> Result<String> {
        let director = workspace_bin("director")?;
        let out = Command::new(director)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running director")?;
        if !out.status.success() {
            bail!(
                "director {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A drop counter of the datapath.
    pub fn drop_count(&self, reason: &str) -> Result<u64> {
        let v = self.director_json("stats")?;
        v["datapath"]["drops"][reason]
            .as_u64()
            .with_context(|| format!("no drop counter {reason} in {v}"))
    }

    /// `n` HTTP requests from the client with curl, each on a new connection (one curl
    /// process), optionally from a given source address. Returns the responding server names
    /// in order.
    pub fn curl_many(&self, n: usize, source: Option<Ipv4Addr>) -> Result<Vec<String>> {
        let url = format!("http://{VIP}:80/");
        let mut argv: Vec<String> = vec![
            "curl".into(),
            "-sS".into(),
            "--max-time".into(),
            "60".into(),
            "-H".into(),
            "Connection: close".into(),
        ];
        if let Some(src) = source {
            argv.push("--interface".into());
            argv.push(src.to_string());
        }
        for _ in 0..n {
            argv.push(url.clone());
        }
        let out = self.client.run_timeout(&argv, Duration::from_secs(120))?;
        if !out.status.success() {
            bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .collect();
        if names.len() != n {
            bail!("expected {n} responses, got {}: {names:?}", names.len());
        }
        Ok(names)
    }

    /// `n` UDP requests from the client to VIP:`port`, each on a new unconnected socket, so
    /// each is a new flow. Each reply must come from the VIP's address and port and be
    /// `rsN <payload>`; returns the rsN in order.
    pub fn udp_many(&self, port: u16, n: usize) -> Result<Vec<String>> {
        let target = SocketAddr::V4(vip(port));
        let replies = self
            .client
            .in_ns(|| -> Result<Vec<(SocketAddr, String, Vec<u8>)>> {
                // Every socket stays open until the end: a closed one's port could be picked
                // again, and its request would then ride the earlier flow's connection entry.
                let mut sockets = Vec::with_capacity(n);
                let mut replies = Vec::with_capacity(n);
                for i in 0..n {
                    let payload = format!("request {i} from the client");
                    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
                    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
                    sock.send_to(payload.as_bytes(), target)?;
                    let mut buf = vec![0u8; 2048];
                    let (len, from) = sock
                        .recv_from(&mut buf)
                        .with_context(|| format!("no reply to UDP request {i}"))?;
                    buf.truncate(len);
                    sockets.push(sock);
                    replies.push((from, payload, buf));
                }
                Ok(replies)
            })??;
        replies
            .into_iter()
            .map(|(from, payload, reply)| {
                ensure!(from == target, "reply to {payload:?} came from {from}");
                let reply = String::from_utf8(reply).context("non-UTF-8 reply")?;
                let (name, echoed) = reply
                    .split_once(' ')
                    .with_context(|| format!("malformed reply {reply:?}"))?;
                ensure!(echoed == payload, "reply {reply:?} to {payload:?}");
                ensure!(
                    self.real_index(name).is_some(),
                    "reply from unknown server {name:?}"
                );
                Ok(name.to_string())
            })
            .collect()
    }

    /// Datagrams each real server's `labsrv` logged, by peer address.
    pub fn udp_peers_seen(&self) -> Result<Vec<std::collections::BTreeMap<Ipv4Addr, usize>>> {
        self.servers
            .iter()
            .map(|p| {
                let mut m = std::collections::BTreeMap::new();
                for l in p.stdout()?.lines() {
                    if let Some(peer) = l
                        .strip_prefix("udp peer=")
                        .and_then(|r| r.split(' ').next())
                    {
                        let peer: SocketAddrV4 = peer.parse()?;
                        *m.entry(*peer.ip()).or_insert(0) += 1;
                    }
                }
                Ok(m)
            })
            .collect()
    }

    /// The peer of every TCP connection each real server's `labsrv` accepted for `kind`
    /// (`conn` for HTTP, `echo`, `echo-proxy`), in order.
    pub fn tcp_peers_seen(&self, kind: &str) -> Result<Vec<Vec<SocketAddrV4>>> {
        let prefix = format!("{kind} peer=");
        self.servers
            .iter()
            .map(|p| {
                p.stdout()?
                    .lines()
                    .filter_map(|l| l.strip_prefix(&prefix))
                    .map(|r| {
                        let peer = r.split(' ').next().unwrap_or_default();
                        peer.parse::<SocketAddrV4>()
                            .with_context(|| format!("peer in {r:?}"))
                    })
                    .collect()
            })
            .collect()
    }

    /// The address (as the director's config names it) of real server `i` (0-based) of a
    /// service port.
    pub fn real_addr(&self, i: usize, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.real_addrs[i], self.real_port(port))
    }

    /// The index (0-based) of a real server from the name `labsrv` reports (`rs1` → 0).
    pub fn real_index(&self, name: &str) -> Option<usize> {
        let i = name.strip_prefix("rs")?.parse::<usize>().ok()?;
        (1..=self.reals.len()).contains(&i).then(|| i - 1)
    }

    /// A per-real field of one service in `director services --json`, in config order.
    pub fn real_field(&self, service: &str, field: &str) -> Result<Vec<u64>> {
        let v = self.director_json("services")?;
        let svc = v
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == service))
            .with_context(|| format!("no service {service} in {v}"))?;
        svc["reals"]
            .as_array()
            .with_context(|| format!("no reals in {svc}"))?
            .iter()
            .map(|r| {
                r[field]
                    .as_u64()
                    .with_context(|| format!("no {field} in {r}"))
            })
            .collect()
    }

    /// The director's per-real connection counters (`conns`) of a service.
    pub fn real_conns(&self, service: &str) -> Result<Vec<u64>> {
        self.real_field(service, "conns")
    }

    /// Adds `addrs` to the client's `eth0` (extra client source addresses on its /24).
    pub fn add_client_addrs(&self, addrs: &[Ipv4Addr]) -> Result<()> {
        for a in addrs {
            self.client.addr_add("eth0", &format!("{a}/24"))?;
        }
        Ok(())
    }
}

/// Count how many times each name occurs, in server order rs1..rsN.
pub fn tally(names: &[String], n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for name in names {
        if let Some(i) = name
            .strip_prefix("rs")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if (1..=n).contains(&i) {
                counts[i - 1] += 1;
            }
        }
    }
    counts
}

/// Socket address of the VIP for a port.
pub fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP, port)
}
