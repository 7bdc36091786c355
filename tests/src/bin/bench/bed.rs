//! A test bed: one lab topology with one path under test, its servers, and the CPU
//! placement applied. Built for one (repetition, placement, path), dropped right after;
//! the Lab removes its namespaces, and every process the bed started is a lab `Proc`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use director_lab::topo::{workspace_bin, App, Mode, ServiceSpec, Topo, VIP};
use director_lab::{wait_until, Host, Lab, Proc};
use serde_json::Value;

use crate::paths::{Lb, Path};
use crate::plan::{Placement, BOX_CPU, HOST_CPU};
use crate::sys;

/// UDP port of the packet-rate service (the real servers drop it).
pub const RATE_PORT: u16 = 5353;
pub const HTTP_PORT: u16 = 80;
pub const BULK_PORT: u16 = 5201;
/// UDP and TCP echo of `rttping --serve`.
pub const RTT_PORT: u16 = 7000;
/// The `direct` host's link to rs1.
const DIRECT_CLIENT: &str = "198.18.3.2/24";
const DIRECT_RS1: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
/// Where the director's `ext` is (the client's next hop for `forward`).
const DIRECTOR_EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// First of the client's extra source addresses for the SYN generator.
pub const SYN_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 64);
pub const SYN_SOURCES: u32 = 64;

/// What the bed is for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wants {
    pub rate: bool,
    pub http: bool,
    pub bulk: bool,
    pub rtt: bool,
    /// The SYN flood (a bed of its own: its table fills, FULLNAT has 24 reals).
    pub syn: bool,
    /// directord's `max_connections`, when not the bench's default.
    pub max_conns: Option<u32>,
}

pub struct Bed {
    /// Servers and proxies, stopped before the lab goes.
    pub procs: Vec<Proc>,
    pub direct: Option<Host>,
    pub topo: Topo,
    pub path: Path,
    pub pl: Placement,
    pub wants: Wants,
    /// What was set up, for the notes (e.g. how directord receives).
    pub notes: Vec<String>,
    /// The box's own process (directord or HAProxy).
    box_pid: Option<u32>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(2));
        }
        if let Some(mut d) = self.topo.daemon.take() {
            d.stop(Duration::from_secs(5));
        }
    }
}

/// The real servers' raw-priority drop chain (frames are still counted by `eth0`).
fn nft_drop(host: &Host, rule: &str) -> Result<()> {
    let script = format!(
        "table ip bench {{\n chain pre {{\n  type filter hook prerouting priority raw; policy accept;\n  {rule}\n }}\n}}\n"
    );
    nft_script(host, &script)
}

/// `nft -f` of `script` in `host`.
pub fn nft_script(host: &Host, script: &str) -> Result<()> {
    let n = SCRIPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("director-bench-{}-{n}.nft", std::process::id()));
    std::fs::write(&file, script)?;
    let r = host.run(["nft", "-f", &file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
    r.with_context(|| format!("nft -f on {}:\n{script}", host.name()))?;
    Ok(())
}

static SCRIPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn taskset(cpu: usize, argv: Vec<String>) -> Vec<String> {
    let mut v = vec!["taskset".to_string(), "-c".into(), cpu.to_string()];
    v.extend(argv);
    v
}

fn service(name: &str, protocol: &'static str, port: u16, weights: Vec<u32>) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        protocol,
        app: App::External,
        port,
        scheduler: "rr",
        persistence: "0s",
        weights,
        extra: String::new(),
        check: None,
    }
}

impl Bed {
    pub fn build(path: Path, pl: Placement, wants: Wants) -> Result<Bed> {
        let tag = format!(
            "b{}{}-{}",
            pl.name(),
            if wants.syn { "s" } else { "" },
            path.tag()
        );
        let lab = Lab::new(&tag)?;
        let mode = path.mode();
        let reals = match path {
            // 2 LIPs × 64,512 ports per real: with 24 reals a 3 s flood of 1 M flows uses
            // about a third of them, so the port walk is measured, not the end of the ports.
            Path::Directord(Lb::FullNat, _) if wants.syn => 24,
            _ => 3,
        };
        let topo = Topo::new(lab, mode, reals)?;
        let mut bed = Bed {
            procs: Vec::new(),
            direct: None,
            topo,
            path,
            pl,
            wants,
            notes: Vec::new(),
            box_pid: None,
        };
        bed.setup()
            .with_context(|| format!("setting up {} in {}", path.name(), pl.name()))?;
        Ok(bed)
    }

    fn director_ifaces(&self) -> Vec<&'static str> {
        if self.topo.mode.has_int() {
            vec!["ext", "int"]
        } else {
            vec!["ext"]
        }
    }

    fn setup(&mut self) -> Result<()> {
        let mode = self.topo.mode;
        // TUN: the lab's user-space decapsulator runs on each real (pinned with the real
        // servers' programs) for the TCP and latency measures; the SYN bed drops the IPIP
        // frames at the real servers instead.
        if self.wants.syn || !(self.wants.http || self.wants.bulk || self.wants.rtt) {
            self.topo.helpers.clear();
        }
        for h in &self.topo.helpers {
            sys::pin(h.pid(), HOST_CPU)?;
        }
        // Every path sees the same frames: wire-like switch ports on the director, GRO on
        // the director's own interfaces (threaded NAPI needs NAPI, which veth has with GRO).
        for ifname in self.director_ifaces() {
            let port = self.topo.lab.port_of(&self.topo.director, ifname)?;
            self.topo.lab.wire_port(&port)?;
            self.topo
                .director
                .run(["ethtool", "-K", ifname, "gro", "on"])?;
        }
        self.real_servers(mode)?;
        // The box is set up before its daemon starts; the NAPI threads are pinned again
        // once it runs (attaching XDP re-creates them).
        self.place()?;
        self.start_path()?;
        let n = self.pin_napi()?;
        if self.pl == Placement::P1 {
            self.notes.push(format!(
                "{n} NAPI thread{} pinned to CPU {BOX_CPU}",
                if n == 1 { "" } else { "s" }
            ));
        }
        self.warm()?;
        Ok(())
    }

    fn real_servers(&mut self, mode: Mode) -> Result<()> {
        let rp = |p: u16| mode.real_port(p);
        let reals = self.topo.reals.clone();
        if self.wants.syn {
            let rule = if mode == Mode::Tun {
                "ip protocol 4 counter drop".to_string()
            } else {
                format!(
                    "tcp dport {{ {}, {} }} counter drop",
                    HTTP_PORT,
                    HTTP_PORT + 8000
                )
            };
            for rs in &reals {
                nft_drop(rs, &rule)?;
            }
            for i in 0..SYN_SOURCES {
                let a = Ipv4Addr::from(u32::from(SYN_BASE) + i);
                self.topo.client.addr_add("eth0", &format!("{a}/24"))?;
            }
            return Ok(());
        }
        if self.wants.rate {
            // Only the rate service's frames: TUN's IPIP frames by their inner UDP port
            // (inner header at 20, its destination port at 20 + 20 + 2 bytes: bit 336).
            let rule = if mode == Mode::Tun {
                format!("ip protocol 4 @nh,336,16 {RATE_PORT} counter drop")
            } else {
                format!(
                    "udp dport {{ {RATE_PORT}, {} }} counter drop",
                    RATE_PORT + 8000
                )
            };
            for rs in &reals {
                nft_drop(rs, &rule)?;
            }
        }
        if self.wants.http {
            for (i, rs) in reals.iter().enumerate() {
                let p = crate::servers::nginx(&self.topo.lab, rs, i + 1, rp(HTTP_PORT))?;
                self.procs.push(p);
            }
        }
        if self.wants.bulk {
            let port = rp(BULK_PORT).to_string();
            let argv = taskset(
                HOST_CPU,
                vec!["iperf3".into(), "-s".into(), "-p".into(), port.clone()],
            );
            let p = reals[0].spawn(&argv)?;
            reals[0]
                .wait_tcp_listen(
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, rp(BULK_PORT))),
                    Duration::from_secs(10),
                )
                .context("iperf3 -s did not start")?;
            self.procs.push(p);
        }
        if self.wants.rtt {
            let bin = workspace_bin("rttping")?.display().to_string();
            let bind = if mode.vip_on_reals() {
                VIP
            } else {
                Ipv4Addr::UNSPECIFIED
            };
            for rs in &reals {
                let argv = taskset(
                    HOST_CPU,
                    vec![
                        bin.clone(),
                        "--serve".into(),
                        format!("{bind}:{}", rp(RTT_PORT)),
                    ],
                );
                let mut p = rs.spawn(&argv)?;
                p.wait_stdout("ready", Duration::from_secs(10))
                    .with_context(|| format!("rttping --serve on {}", rs.name()))?;
                self.procs.push(p);
            }
        }
        Ok(())
    }

    fn services(&self) -> Vec<ServiceSpec> {
        let all = vec![1; self.topo.reals.len()];
        if self.wants.syn {
            return vec![service("web", "tcp", HTTP_PORT, all)];
        }
        let mut s = Vec::new();
        if self.wants.rate {
            s.push(service("rate", "udp", RATE_PORT, all.clone()));
        }
        if self.wants.http {
            s.push(service("web", "tcp", HTTP_PORT, all.clone()));
        }
        if self.wants.bulk {
            s.push(service("bulk", "tcp", BULK_PORT, vec![1]));
        }
        if self.wants.rtt {
            s.push(service("rtt-udp", "udp", RTT_PORT, all.clone()));
            s.push(service("rtt-tcp", "tcp", RTT_PORT, all));
        }
        s
    }

    fn start_path(&mut self) -> Result<()> {
        match self.path {
            Path::Directord(_, variant) => {
                self.topo.workers = 1;
                let default = if self.wants.syn { 1 << 22 } else { 1 << 20 };
                self.topo.max_connections = Some(self.wants.max_conns.unwrap_or(default));
                if let Some(x) = variant.xdp() {
                    self.topo.use_xdp(x)?;
                }
                let mut text = self.topo.config_text(&self.services());
                let keys = variant.datapath_keys();
                if !keys.is_empty() {
                    let at = text
                        .find("\ninterfaces = ")
                        .and_then(|i| text[i + 1..].find('\n').map(|j| i + 1 + j + 1))
                        .context("no [datapath] interfaces line in the config")?;
                    text.insert_str(at, &(keys.join("\n") + "\n"));
                }
                std::fs::write(&self.topo.config, text)?;
                let bin = workspace_bin("directord")?;
                let argv = taskset(
                    self.pl.box_cpu(),
                    vec![
                        bin.display().to_string(),
                        "--config".into(),
                        self.topo.config.display().to_string(),
                    ],
                );
                let mut cmd = self.topo.director.command(&argv);
                cmd.env("DIRECTOR_LOG", "warn");
                let d = self.topo.director.spawn_command("directord", cmd)?;
                self.box_pid = Some(d.pid());
                self.topo.daemon = Some(d);
                let ok = wait_until(Duration::from_secs(20), || {
                    self.topo.director_json("stats").is_ok()
                });
                if ok.is_err() {
                    let log = self
                        .topo
                        .daemon
                        .as_ref()
                        .and_then(|p| p.stderr().ok())
                        .unwrap_or_default();
                    bail!("directord did not start:\n{log}");
                }
                if let Ok(st) = self.topo.director_json("status") {
                    let rx: Vec<String> = st["datapath"]["receive"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| {
                            format!(
                                "{}: {}{}",
                                r["interface"].as_str().unwrap_or("?"),
                                r["path"].as_str().unwrap_or("?"),
                                r["xdp_mode"]
                                    .as_str()
                                    .map(|m| format!(" {m}"))
                                    .unwrap_or_default()
                            )
                        })
                        .collect();
                    self.notes.push(format!("receive {}", rx.join(", ")));
                }
            }
            Path::NftDnat => {
                self.topo.director.sysctl("net.ipv4.ip_forward", "1")?;
                nft_script(&self.topo.director, &self.dnat_script())?;
            }
            Path::Forward => {
                self.topo.director.sysctl("net.ipv4.ip_forward", "1")?;
                self.topo
                    .client
                    .route_add("198.18.2.0/24", &DIRECTOR_EXT.to_string())?;
            }
            Path::Haproxy => {
                let cfg = self.topo.lab.dir().join("haproxy.cfg");
                std::fs::write(&cfg, self.haproxy_config())?;
                let argv = taskset(
                    self.pl.box_cpu(),
                    vec![
                        "haproxy".into(),
                        "-db".into(),
                        "-f".into(),
                        cfg.display().to_string(),
                    ],
                );
                let mut p = self.topo.director.spawn(&argv)?;
                let port = if self.wants.http {
                    HTTP_PORT
                } else if self.wants.bulk {
                    BULK_PORT
                } else {
                    RTT_PORT
                };
                let up = self
                    .topo
                    .director
                    .wait_tcp_listen(SocketAddr::from((VIP, port)), Duration::from_secs(10));
                if up.is_err() || !p.is_running() {
                    bail!("haproxy did not start: {}", p.stderr().unwrap_or_default());
                }
                self.box_pid = Some(p.pid());
                self.procs.push(p);
            }
            Path::NftFwd => {
                nft_script(&self.topo.director, &self.netdev_script()?)?;
            }
            Path::Ceiling => {
                self.topo.use_xdp("native")?;
                let bin = workspace_bin("xdpceiling")?;
                let argv = vec![
                    bin.display().to_string(),
                    "--in".into(),
                    "ext".into(),
                    "--out".into(),
                    "int".into(),
                    "--src-mac".into(),
                    self.topo.director.mac("int")?.to_string(),
                    "--dst-mac".into(),
                    self.topo.reals[0].mac("eth0")?.to_string(),
                    "--mode".into(),
                    "native".into(),
                ];
                let p = self.topo.director.spawn(&argv)?;
                let up = wait_until(Duration::from_secs(10), || {
                    p.stderr().is_ok_and(|e| e.contains("xdpceiling: ready"))
                });
                if up.is_err() {
                    bail!(
                        "xdpceiling did not start: {}",
                        p.stderr().unwrap_or_default()
                    );
                }
                self.box_pid = Some(p.pid());
                self.procs.push(p);
                self.notes
                    .push("receive ext: xdp native (xdpceiling)".into());
            }
            Path::Direct => {
                let direct = self.topo.lab.host("direct")?;
                self.topo.lab.link(
                    &direct,
                    "eth0",
                    DIRECT_CLIENT,
                    &self.topo.reals[0],
                    "eth1",
                    &format!("{DIRECT_RS1}/24"),
                )?;
                self.direct = Some(direct);
            }
        }
        Ok(())
    }

    /// `numgen inc mod 3 map { 0 : RS1, ... }`.
    fn numgen(&self) -> String {
        let n = self.topo.reals.len().min(3);
        let m: Vec<String> = self.topo.real_addrs[..n]
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{i} : {a}"))
            .collect();
        format!("numgen inc mod {n} map {{ {} }}", m.join(", "))
    }

    fn dnat_script(&self) -> String {
        let ng = self.numgen();
        let rs1 = self.topo.real_addrs[0];
        let mut s = String::from(
            "table ip lb {\n chain pre {\n  type nat hook prerouting priority dstnat; policy accept;\n",
        );
        let mut rule = |proto: &str, port: u16, to: String| {
            let _ = writeln!(s, "  ip daddr {VIP} {proto} dport {port} dnat to {to}");
        };
        rule("udp", RATE_PORT, format!("{ng} : {}", RATE_PORT + 8000));
        rule("tcp", HTTP_PORT, format!("{ng} : {}", HTTP_PORT + 8000));
        rule("tcp", BULK_PORT, format!("{rs1} : {}", BULK_PORT + 8000));
        rule("udp", RTT_PORT, format!("{ng} : {}", RTT_PORT + 8000));
        rule("tcp", RTT_PORT, format!("{ng} : {}", RTT_PORT + 8000));
        s.push_str(" }\n}\n");
        s
    }

    fn netdev_script(&self) -> Result<String> {
        let dmac = self.topo.director.mac("ext")?;
        let n = self.topo.reals.len().min(3);
        let mut macs = Vec::new();
        for rs in &self.topo.reals[..n] {
            macs.push(rs.mac("eth0")?);
        }
        let map: Vec<String> = macs
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{i} : {m}"))
            .collect();
        let map = map.join(", ");
        let mut s = String::from(
            "table netdev lb {\n chain in {\n  type filter hook ingress device ext priority 0; policy accept;\n",
        );
        for (proto, ports) in [
            ("udp", format!("{{ {RATE_PORT}, {RTT_PORT} }}")),
            ("tcp", format!("{{ {HTTP_PORT}, {RTT_PORT} }}")),
        ] {
            let _ = writeln!(
                s,
                "  ip daddr {VIP} {proto} dport {ports} ether saddr set {dmac} ether daddr set \
                 jhash ip saddr . {proto} sport mod {n} map {{ {map} }} fwd to ext"
            );
        }
        let _ = writeln!(
            s,
            "  ip daddr {VIP} tcp dport {BULK_PORT} ether saddr set {dmac} ether daddr set {} fwd to ext",
            macs[0]
        );
        s.push_str(" }\n}\n");
        Ok(s)
    }

    fn haproxy_config(&self) -> String {
        let mut c = String::new();
        let _ = writeln!(
            c,
            "global\n  nbthread 1\n  maxconn 8000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 120s\n  timeout server 120s\n"
        );
        let mut front = |name: &str, port: u16, real_port: u16, all: bool| {
            let _ = writeln!(
                c,
                "frontend {name}\n  bind {VIP}:{port}\n  default_backend {name}\n"
            );
            let _ = writeln!(c, "backend {name}\n  balance roundrobin");
            let n = if all { self.topo.reals.len() } else { 1 };
            for (i, a) in self.topo.real_addrs[..n].iter().enumerate() {
                let _ = writeln!(c, "  server rs{} {a}:{real_port}", i + 1);
            }
            let _ = writeln!(c);
        };
        front("web", HTTP_PORT, HTTP_PORT + 8000, true);
        front("bulk", BULK_PORT, BULK_PORT + 8000, false);
        front("rtt", RTT_PORT, RTT_PORT + 8000, true);
        c
    }

    /// Applies the placement (see [`Placement::describe`]).
    fn place(&mut self) -> Result<()> {
        self.steer(self.wants.syn || !(self.wants.http || self.wants.bulk || self.wants.rtt))?;
        match self.pl {
            Placement::P1 => {
                for ifname in self.director_ifaces() {
                    sys::sysfs_net(&self.topo.director, ifname, "threaded", "1")?;
                }
            }
            Placement::P2 => {
                if self.path.in_kernel() {
                    for ifname in self.director_ifaces() {
                        sys::set_rps(&self.topo.director, ifname, 3)?;
                    }
                }
            }
            Placement::P3 => {}
        }
        Ok(())
    }

    /// Where the receive processing outside the director runs (P1, P2; P3 has it all on
    /// CPU 0 anyway). Always on the hosts' CPU: the client's, the TUN router's and the direct
    /// host's interfaces (RPS `rps_cpus = 1`). The path after the director — the switch
    /// ports the director transmits into and the real servers' `eth0` — on the hosts' CPU
    /// too for the TCP and latency measures (so the box's CPU does not also carry the real
    /// servers' TCP stacks), but left where veth puts it, in the director's transmit context,
    /// for the floods (`flood`: packet rate, new flows), so that the generator alone has CPU 0
    /// and can offer more than the box forwards: the box's figures then include one bridge hop
    /// and the real server's nftables drop, the same for every path.
    pub fn steer(&self, flood: bool) -> Result<()> {
        if self.pl == Placement::P3 {
            return Ok(());
        }
        let host = 1 << HOST_CPU;
        let sink = if flood { 0 } else { host };
        sys::set_rps(&self.topo.client, "eth0", host)?;
        if let Some(gw) = &self.topo.gateway {
            sys::set_rps(gw, "ext", host)?;
            sys::set_rps(gw, "int", host)?;
        }
        if let Some(d) = &self.direct {
            sys::set_rps(d, "eth0", host)?;
            sys::set_rps(&self.topo.reals[0], "eth1", host)?;
        }
        for rs in &self.topo.reals {
            sys::set_rps(rs, "eth0", sink)?;
        }
        let sw = self.topo.lab.switch_host();
        for ifname in self.director_ifaces() {
            let port = self.topo.lab.port_of(&self.topo.director, ifname)?;
            sys::set_rps(&sw, &port, sink)?;
        }
        Ok(())
    }

    /// P1: (re)pins the director's NAPI threads to the box's CPU (attaching XDP or
    /// changing features re-creates them). Returns how many.
    pub fn pin_napi(&self) -> Result<usize> {
        if self.pl != Placement::P1 {
            return Ok(0);
        }
        let mut n = 0;
        for ifname in self.director_ifaces() {
            let pids = sys::napi_threads(&self.topo.director, ifname)?;
            if pids.is_empty() {
                bail!("{ifname} has no threaded NAPI in the director");
            }
            for pid in pids {
                sys::pin(pid, BOX_CPU)?;
                let allowed = sys::allowed_cpus(pid);
                if allowed != BOX_CPU.to_string() {
                    bail!("NAPI thread {pid} of {ifname} runs on CPUs {allowed}");
                }
                n += 1;
            }
        }
        Ok(n)
    }

    /// Neighbours resolved before anything is timed: the director and the real servers
    /// know each other (and the client knows the director).
    fn warm(&self) -> Result<()> {
        for a in &self.topo.real_addrs {
            let _ = self
                .topo
                .director
                .run(["ping", "-c1", "-W2", &a.to_string()]);
        }
        let _ = self
            .topo
            .client
            .run(["ping", "-c1", "-W2", &DIRECTOR_EXT.to_string()]);
        Ok(())
    }

    /// CPU time (ns) the box's own threads have run so far: every thread of directord or
    /// HAProxy, and in P1 the director's NAPI threads (`/proc/…/schedstat`). Unlike a CPU's
    /// busy time in /proc/stat, other work on the machine does not count.
    pub fn box_ns(&self) -> u64 {
        let run = |path: String| -> u64 {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
                .unwrap_or(0)
        };
        let mut ns = 0;
        if let Some(pid) = self.box_pid {
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                for t in tasks.flatten() {
                    ns += run(format!("{}/schedstat", t.path().display()));
                }
            }
        }
        if self.pl == Placement::P1 {
            for ifname in self.director_ifaces() {
                for pid in sys::napi_threads(&self.topo.director, ifname).unwrap_or_default() {
                    ns += run(format!("/proc/{pid}/schedstat"));
                }
            }
        }
        ns
    }

    /// A sample of [`Bed::box_ns`] to measure a run with.
    pub fn box_clock(&self) -> BoxClock {
        BoxClock {
            ns: self.box_ns(),
            at: std::time::Instant::now(),
        }
    }

    /// Where client programs run.
    pub fn client(&self) -> &Host {
        self.direct.as_ref().unwrap_or(&self.topo.client)
    }

    /// Where a client sends for service port `port`.
    pub fn target(&self, port: u16) -> SocketAddrV4 {
        match self.path {
            Path::Forward => SocketAddrV4::new(self.topo.real_addrs[0], port + 8000),
            Path::Direct => SocketAddrV4::new(DIRECT_RS1, port + 8000),
            _ => SocketAddrV4::new(VIP, port),
        }
    }

    /// Frames the real servers' `eth0` received, summed.
    pub fn reals_rx(&self) -> Result<u64> {
        let mut sum = 0;
        for rs in &self.topo.reals {
            let out = rs.ip(["-s", "-j", "link", "show", "dev", "eth0"])?;
            let v: Value = serde_json::from_str(&out)?;
            sum += v[0]["stats64"]["rx"]["packets"]
                .as_u64()
                .with_context(|| format!("no rx counter in {out}"))?;
        }
        Ok(sum)
    }

    /// `director stats --json` (directord paths).
    pub fn stats(&self) -> Option<Value> {
        if self.topo.daemon.is_some() {
            self.topo.director_json("stats").ok()
        } else {
            None
        }
    }

    /// `BENCH_DEBUG=1`: every lab interface's packet and drop counters, to stderr.
    pub fn debug_counters(&self, when: &str) {
        if std::env::var_os("BENCH_DEBUG").is_none() {
            return;
        }
        let mut hosts = vec![
            self.topo.lab.switch_host(),
            self.topo.client.clone(),
            self.topo.director.clone(),
        ];
        hosts.extend(self.topo.reals.iter().cloned());
        eprintln!("bench: counters {when}");
        for h in hosts {
            let Ok(out) = h.ip(["-s", "-j", "link", "show"]) else {
                continue;
            };
            let v: Value = serde_json::from_str(&out).unwrap_or_default();
            for l in v.as_array().into_iter().flatten() {
                let st = &l["stats64"];
                eprintln!(
                    "  {}:{} rx {} (drop {}) tx {} (drop {})",
                    h.name(),
                    l["ifname"].as_str().unwrap_or("?"),
                    st["rx"]["packets"],
                    st["rx"]["dropped"],
                    st["tx"]["packets"],
                    st["tx"]["dropped"]
                );
            }
        }
        if let Ok(o) = self
            .topo
            .director
            .run(["sh", "-c", "cat /proc/net/softnet_stat"])
        {
            eprintln!("  softnet_stat:\n{}", String::from_utf8_lossy(&o.stdout));
        }
        if let Some(st) = self.stats() {
            eprintln!("  directord datapath {}", st["datapath"]);
        }
        if let Ok(o) = self.topo.reals[0].run(["nft", "list", "table", "ip", "bench"]) {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            for l in text.lines().filter(|l| l.contains("counter")) {
                eprintln!("  rs1 nft: {}", l.trim());
            }
        }
        for ifname in self.director_ifaces() {
            match sys::napi_threads(&self.topo.director, ifname) {
                Err(e) => eprintln!("  napi {ifname}: {e:#}"),
                Ok(pids) => {
                    for pid in pids {
                        let st = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
                            .unwrap_or_default();
                        eprintln!(
                            "  napi {ifname} {pid} on CPUs {}: schedstat (run ns, wait ns, slices) {}",
                            sys::allowed_cpus(pid),
                            st.trim()
                        );
                    }
                }
            }
        }
    }

    pub fn conntrack_count(&self) -> Option<u64> {
        self.topo
            .director
            .sysctl_get("net.netfilter.nf_conntrack_count")
            .ok()
            .and_then(|v| v.parse().ok())
    }
}

/// The box's threads' CPU time from a point on (P1 only: elsewhere part of the box's work
/// runs in other threads' softirq and cannot be told apart).
pub struct BoxClock {
    ns: u64,
    at: std::time::Instant,
}

impl BoxClock {
    /// (CPU-seconds of the box's threads, wall seconds) since the sample; `None` outside P1.
    pub fn since(&self, bed: &Bed) -> Option<(f64, f64)> {
        (bed.pl == Placement::P1).then(|| {
            (
                bed.box_ns().saturating_sub(self.ns) as f64 / 1e9,
                self.at.elapsed().as_secs_f64(),
            )
        })
    }
}

/// A counter from `director stats --json` (`path` into its object).
pub fn counter(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().unwrap_or(0)
}

/// Deltas of the datapath counters between two `stats`.
pub struct Delta {
    pub before: Value,
    pub after: Value,
}

impl Delta {
    pub fn get(&self, path: &[&str]) -> u64 {
        counter(&self.after, path).saturating_sub(counter(&self.before, path))
    }

    pub fn dp(&self, name: &str) -> u64 {
        self.get(&["datapath", name])
    }

    /// The nonzero drop reasons, "reason N, ...".
    pub fn drops(&self) -> String {
        let mut out = Vec::new();
        if let Some(m) = self.after["datapath"]["drops"].as_object() {
            for k in m.keys() {
                let d = self.get(&["datapath", "drops", k]);
                if d > 0 {
                    out.push(format!("{k} {d}"));
                }
            }
        }
        out.join(", ")
    }
}
