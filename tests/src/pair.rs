//! The HA pair: two directors running VRRP side by side, a client and real servers.
//!
//! ```text
//!  client 198.18.1.10 ─┐ ext 198.18.1.0/24                int 198.18.2.0/24 ┌─ rs1 198.18.2.11
//!                      ├── lb-a ext .1.2 ─── lb-a int .2.2 ────────────────┼─ rs2 198.18.2.12
//!                      └── lb-b ext .1.3 ─── lb-b int .2.3 ────────────────┘─ rs3 198.18.2.13
//!                          VRRP "ext" vrid 51: VIP 198.18.1.100/24
//!                          VRRP "int" vrid 52: the real servers' gateway 198.18.2.1/24 (NAT)
//! ```
//! In NAT mode both instances form the sync group `lb`. In DR mode there is no `int`
//! segment: the real servers 198.18.1.11-13 sit on `ext` with the VIP on `lo`.
//!
//! TUN: the real servers on `int` as in `Topo::tun` (VIP on `lo`, `ipip-decap`, default route
//! via the gateway `gw`, which joins `ext` and `int`); only the `ext` instance (the directors
//! encapsulate from their own `int` addresses, and the real servers never route through
//! them). FULLNAT: the real servers on `int` with no default route, as in `Topo::fullnat`;
//! the `int` instance floats the LIPs 198.18.2.5 and 198.18.2.6 instead of a gateway, in the
//! sync group `lb` with `ext`, so the real servers' replies reach whichever node is master.
//!
//! With `PairSpec::sync`, a third segment joins the two directors only:
//! ```text
//!  lb-a sync 198.18.3.2 ── sync 198.18.3.0/24 ── lb-b sync 198.18.3.3
//! ```
//! and each node's config gets a `[sync]` section naming the other node as its unicast peer
//! (port 8848) and a shared key file (32 random bytes, hex, one line) in the lab's directory.
//!
//! Node 0 is `lb-a` (priority 200 by default), node 1 is `lb-b` (100).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::lab::{wait_until, write_file, Host, Lab, Proc, Signal};
use crate::topo::{
    dr_reals, fullnat_reals, gateway_host, nat_reals, start_decap, start_labsrv, tun_reals,
    workspace_bin, Mode, ServiceSpec, LIPS, VIP,
};

/// The NAT real servers' gateway, a VIP of the `int` instance.
pub const INT_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);

/// How the pair is configured.
#[derive(Debug, Clone)]
pub struct PairSpec {
    pub mode: Mode,
    /// `[vrrp] version`.
    pub version: u8,
    /// `[vrrp] advert_interval`, e.g. "100ms".
    pub interval: String,
    pub priorities: [u8; 2],
    pub preempt: bool,
    /// Unicast peers instead of multicast.
    pub unicast: bool,
    pub services: Vec<ServiceSpec>,
    /// More keys for each `[[vrrp.instance]]` of each node (e.g. `notify = "..."`).
    pub instance_extra: [String; 2],
    /// A sync link between the directors and a `[sync]` section in both configs.
    pub sync: bool,
    /// More keys for `[sync]` (both nodes), one per line.
    pub sync_extra: String,
    /// Sync over the multicast group [`SYNC_GROUP`] instead of unicast to the peer.
    pub sync_multicast: bool,
    /// `[datapath] xdp` of both nodes (their switch ports made wire-like, see
    /// `Lab::wire_port`); `None` is the default, AF_PACKET. From `DIRECTOR_LAB_XDP` unless set.
    pub xdp: Option<&'static str>,
}

impl PairSpec {
    pub fn new(mode: Mode) -> PairSpec {
        PairSpec {
            mode,
            version: 3,
            interval: "100ms".into(),
            priorities: [200, 100],
            preempt: true,
            unicast: false,
            services: vec![ServiceSpec::http("rr", &[1, 1, 1])],
            instance_extra: [String::new(), String::new()],
            sync: false,
            sync_extra: String::new(),
            sync_multicast: false,
            xdp: crate::topo::lab_xdp().expect("DIRECTOR_LAB_XDP"),
        }
    }
}

pub struct Pair {
    pub lab: Lab,
    pub spec: PairSpec,
    pub client: Host,
    pub nodes: [Host; 2],
    pub reals: Vec<Host>,
    pub real_addrs: Vec<Ipv4Addr>,
    pub servers: Vec<Proc>,
    /// TUN: `ipip-decap` on each real server.
    pub helpers: Vec<Proc>,
    /// TUN: the router the real servers reply through.
    pub gateway: Option<Host>,
    pub daemons: [Option<Proc>; 2],
    pub sockets: [PathBuf; 2],
    pub configs: [PathBuf; 2],
    /// The shared sync key file, when `spec.sync`.
    pub sync_key: Option<PathBuf>,
}

/// The sync port of both nodes.
pub const SYNC_PORT: u16 = 8848;
/// The multicast group of `PairSpec::sync_multicast`.
pub const SYNC_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 81);

/// A director's own address on the sync link (node 0 → .2, node 1 → .3).
pub fn sync_addr(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 3, 2 + node as u8)
}

/// 32 random bytes from the kernel, hex-encoded: a sync key file's content.
pub fn random_key_hex() -> Result<String> {
    let mut key = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("open /dev/urandom")?,
        &mut key,
    )?;
    Ok(key.iter().map(|b| format!("{b:02x}")).collect())
}

/// A director's own address on `ext` (node 0 → .2, node 1 → .3).
pub fn ext_addr(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 2 + node as u8)
}

/// A director's own address on `int`.
pub fn int_addr(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 2 + node as u8)
}

impl Pair {
    /// Builds the topology and starts the real servers (not the directors).
    pub fn new(lab: Lab, spec: PairSpec) -> Result<Pair> {
        let ext = lab.bridge("ext")?;
        let client = lab.host("client")?;
        lab.attach(&client, &ext, "eth0", "198.18.1.10/24")?;
        let int = match spec.mode.has_int() {
            true => Some(lab.bridge("int")?),
            false => None,
        };
        let sync = if spec.sync {
            Some(lab.bridge("sync")?)
        } else {
            None
        };
        let mut nodes = Vec::new();
        for n in 0..2 {
            let h = lab.host(if n == 0 { "lb-a" } else { "lb-b" })?;
            lab.attach(&h, &ext, "ext", &format!("{}/24", ext_addr(n)))?;
            if let Some(int) = &int {
                lab.attach(&h, int, "int", &format!("{}/24", int_addr(n)))?;
            }
            if let Some(sync) = &sync {
                lab.attach(&h, sync, "sync", &format!("{}/24", sync_addr(n)))?;
            }
            if spec.xdp.is_some() {
                lab.wire_port(&lab.port_of(&h, "ext")?)?;
                if int.is_some() {
                    lab.wire_port(&lab.port_of(&h, "int")?)?;
                }
            }
            h.sysctl("net.ipv4.ip_forward", "0")?;
            nodes.push(h);
        }
        let mut helpers = Vec::new();
        let mut gateway = None;
        let (reals, real_addrs) = match (spec.mode, &int) {
            (Mode::Nat, Some(int)) => nat_reals(&lab, int, 3)?,
            (Mode::FullNat, Some(int)) => fullnat_reals(&lab, int, 3)?,
            (Mode::Tun, Some(int)) => {
                gateway = Some(gateway_host(&lab, &ext, int)?);
                let (reals, addrs) = tun_reals(&lab, int, 3)?;
                helpers = start_decap(&reals)?;
                (reals, addrs)
            }
            _ => dr_reals(&lab, &ext, 3)?,
        };
        let sockets = [lab.dir().join("lb-a.sock"), lab.dir().join("lb-b.sock")];
        let configs = [lab.dir().join("lb-a.toml"), lab.dir().join("lb-b.toml")];
        let sync_key = match spec.sync {
            true => {
                let path = write_file(
                    &lab,
                    "sync.key",
                    format!("{}\n", random_key_hex()?).as_bytes(),
                )?;
                // As an operator must keep it (the config check warns otherwise).
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )?;
                Some(path)
            }
            false => None,
        };
        let nodes: [Host; 2] = nodes.try_into().map_err(|_| anyhow::anyhow!("two nodes"))?;
        let mut pair = Pair {
            lab,
            spec,
            client,
            nodes,
            reals,
            real_addrs,
            servers: Vec::new(),
            helpers,
            gateway,
            daemons: [None, None],
            sockets,
            configs,
            sync_key,
        };
        pair.start_servers()?;
        Ok(pair)
    }

    fn real_port(&self, port: u16) -> u16 {
        self.spec.mode.real_port(port)
    }

    fn start_servers(&mut self) -> Result<()> {
        self.servers = start_labsrv(
            &self.reals,
            &self.real_addrs,
            self.spec.mode,
            &self.spec.services,
        )?;
        Ok(())
    }

    /// Node `n`'s config.
    pub fn config_text(&self, n: usize) -> String {
        let spec = &self.spec;
        let peer = 1 - n;
        let mut c = String::new();
        let name = if n == 0 { "lb-a" } else { "lb-b" };
        let _ = writeln!(c, "[node]\nname = \"{name}\"\n");
        let _ = writeln!(
            c,
            "[vrrp]\nversion = {}\nadvert_interval = \"{}\"\n",
            spec.version, spec.interval
        );
        let mut instances = vec![("ext", "ext", 51, vec![VIP], ext_addr(peer))];
        match spec.mode {
            Mode::Nat => instances.push(("int", "int", 52, vec![INT_VIP], int_addr(peer))),
            Mode::FullNat => instances.push(("int", "int", 52, LIPS.to_vec(), int_addr(peer))),
            Mode::Dr | Mode::Tun => {}
        }
        for (iname, ifname, vrid, vips, peer_addr) in &instances {
            let vips: Vec<String> = vips.iter().map(|v| format!("\"{v}/24\"")).collect();
            let _ = writeln!(c, "[[vrrp.instance]]");
            let _ = writeln!(
                c,
                "name = \"{iname}\"\ninterface = \"{ifname}\"\nvrid = {vrid}"
            );
            let _ = writeln!(c, "priority = {}", spec.priorities[n]);
            let _ = writeln!(
                c,
                "vips = [{}]\npreempt = {}",
                vips.join(", "),
                spec.preempt
            );
            if spec.unicast {
                let _ = writeln!(c, "unicast_peers = [\"{peer_addr}\"]");
            }
            let _ = writeln!(c, "{}", spec.instance_extra[n]);
        }
        if instances.len() > 1 {
            let _ = writeln!(
                c,
                "[[vrrp.group]]\nname = \"lb\"\ninstances = [\"ext\", \"int\"]\n"
            );
        }
        let _ = writeln!(c, "[control]\nsocket = \"{}\"\n", self.sockets[n].display());
        let _ = writeln!(
            c,
            "[datapath]\nworkers = 1\ninterfaces = {}\n{}",
            spec.mode.interfaces_toml(),
            spec.xdp
                .map(|x| format!("xdp = \"{x}\"\n"))
                .unwrap_or_default()
        );
        if let Some(key) = &self.sync_key {
            let _ = writeln!(
                c,
                "[sync]\ninterface = \"sync\"\n{} = \"{}:{SYNC_PORT}\"\nkey_file = \"{}\"\n{}\n",
                if spec.sync_multicast { "group" } else { "peer" },
                if spec.sync_multicast {
                    SYNC_GROUP
                } else {
                    sync_addr(peer)
                },
                key.display(),
                spec.sync_extra
            );
        }
        for s in &spec.services {
            let _ = writeln!(c, "[[service]]\nname = \"{}\"", s.name);
            let _ = writeln!(
                c,
                "vip = \"{VIP}:{}\"\nprotocol = \"{}\"",
                s.port, s.protocol
            );
            let _ = writeln!(
                c,
                "mode = \"{}\"\nscheduler = \"{}\"",
                spec.mode.as_str(),
                s.scheduler
            );
            spec.mode.write_service_keys(&mut c);
            s.write_extra(&mut c);
            for (addr, w) in self.real_addrs.iter().zip(&s.weights) {
                let _ = writeln!(
                    c,
                    "[[service.real]]\naddress = \"{addr}:{}\"\nweight = {w}\n",
                    self.real_port(s.port)
                );
            }
        }
        c
    }

    /// Writes node `n`'s config and starts its `directord`; waits for the control socket.
    pub fn start(&mut self, n: usize) -> Result<()> {
        std::fs::write(&self.configs[n], self.config_text(n))?;
        let directord = workspace_bin("directord")?;
        let mut cmd = self.nodes[n].command([
            directord.display().to_string(),
            "--config".into(),
            self.configs[n].display().to_string(),
        ]);
        cmd.env("DIRECTOR_LOG", "info,vrrp=debug");
        let mut proc = self.nodes[n].spawn_command("directord", cmd)?;
        // Answered, not merely connected: the daemon binds its socket before it starts
        // anything and answers only once everything runs.
        let up = wait_until(Duration::from_secs(20), || {
            !proc.is_running()
                || self
                    .cli(n, &["--json", "stats"])
                    .is_ok_and(|o| o.status.success())
        });
        if up.is_err() || !proc.is_running() {
            bail!(
                "directord on {} did not start: {}",
                self.nodes[n].name(),
                proc.stderr().unwrap_or_default()
            );
        }
        self.daemons[n] = Some(proc);
        Ok(())
    }

    /// SIGKILL: no goodbye, the VIPs stay on the dead node's interface.
    pub fn kill(&mut self, n: usize) -> Result<()> {
        if let Some(mut p) = self.daemons[n].take() {
            p.kill(Signal::Kill)?;
            p.wait_timeout(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// SIGTERM: a clean stop (a master resigns with priority 0).
    pub fn stop(&mut self, n: usize) -> Result<()> {
        if let Some(mut p) = self.daemons[n].take() {
            p.stop(Duration::from_secs(10))
                .with_context(|| format!("directord on node {n} did not stop"))?;
        }
        Ok(())
    }

    /// Runs `director --socket S ARGS` in node `n`'s namespace.
    pub fn cli(&self, n: usize, args: &[&str]) -> Result<std::process::Output> {
        let director = workspace_bin("director")?;
        let mut argv = vec![
            director.display().to_string(),
            "--socket".into(),
            self.sockets[n].display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        self.nodes[n].run(&argv)
    }

    /// `director --json vrrp` on node `n`.
    pub fn vrrp(&self, n: usize) -> Result<Value> {
        let out = self.cli(n, &["--json", "vrrp"])?;
        if !out.status.success() {
            bail!("director vrrp: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `director --json sync` on node `n`.
    pub fn sync_status(&self, n: usize) -> Result<Value> {
        let out = self.cli(n, &["--json", "sync"])?;
        if !out.status.success() {
            bail!("director sync: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Whether node `n`'s sync session with its peer is up (`peer.state == "up"` in
    /// `director --json sync`).
    pub fn sync_peer_up(&self, n: usize) -> Result<bool> {
        let v = self.sync_status(n)?;
        Ok(v["peer"]["state"] == "up")
    }

    /// Whether node `n` has completed its bulk resync from the peer (`resync.complete` in
    /// `director --json sync`).
    pub fn sync_resync_complete(&self, n: usize) -> Result<bool> {
        let v = self.sync_status(n)?;
        Ok(v["resync"]["complete"] == true)
    }

    /// The state of instance `name` on node `n` ("MASTER", ...).
    pub fn state(&self, n: usize, name: &str) -> Result<String> {
        let v = self.vrrp(n)?;
        v["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["name"] == name)
            .and_then(|i| i["state"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("no instance {name} on node {n}: {v}"))
    }

    /// Waits until instance `name` on node `n` is in `state`.
    pub fn wait_state(&self, n: usize, name: &str, state: &str, timeout: Duration) -> Result<()> {
        wait_until(timeout, || self.state(n, name).is_ok_and(|s| s == state)).with_context(|| {
            format!(
                "node {n} instance {name} not {state} after {timeout:?}: {:?}",
                self.state(n, name)
            )
        })
    }

    /// Whether node `n` has the external VIP on its interface.
    pub fn holds_vip(&self, n: usize) -> Result<bool> {
        let out = self.nodes[n].ip(["-4", "addr", "show", "dev", "ext"])?;
        Ok(out.contains(&format!(" {VIP}/")))
    }

    /// The client's neighbour entry for the VIP: the MAC it sends VIP traffic to.
    pub fn client_vip_mac(&self) -> Result<Option<String>> {
        let out = self
            .client
            .ip(["neigh", "show", &VIP.to_string(), "dev", "eth0"])?;
        Ok(out
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .map(str::to_owned))
    }

    /// One HTTP request through the VIP from the client; the real server's name.
    pub fn curl(&self) -> Result<String> {
        let port = self.spec.services.first().map_or(80, |s| s.port);
        let out = self.client.run([
            "curl",
            "-s",
            "--max-time",
            "5",
            &format!("http://{VIP}:{port}/"),
        ])?;
        if !out.status.success() {
            bail!(
                "curl through the VIP failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}
