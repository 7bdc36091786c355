//! The topology builder: hosts are network namespaces, joined by veth pairs directly
//! (`Lab::link`) or through bridges (`Lab::attach`) that live in the lab's hidden switch
//! namespace. Nothing is ever created in, or changed in, the root namespace: every `ip`
//! command names its target namespace (`ip -n NS …`), and veth pairs are created with both
//! ends already inside lab namespaces.
//!
//! How processes enter a namespace: through `ip netns exec NS argv…`, which `setns`es and then
//! `exec`s the program (no fork), so the child's pid is the program's own pid. Each child is
//! made the leader of a new process group, so `Proc` can signal it together with anything it
//! forks. In-process code (`Host::in_ns`, `udp_request`, `wait_tcp_listen`, `sysctl`) instead
//! runs on a short-lived thread that `setns`es itself: the network namespace is per thread.
//!
//! Teardown (`Drop for Lab`, also during a panic): every process still registered gets
//! SIGKILL on its group, then every process left inside a lab namespace (`ip netns pids`, which
//! catches daemons that left the group) is killed, then the namespaces are deleted, which
//! takes their veths and bridges with them. A SIGKILLed test run cannot do this, so `Lab::new`
//! first reaps namespaces and temp dirs whose names carry a creator that is no longer alive.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

/// Every lab namespace and temp dir starts with this; `reap_stale` only looks at these.
const NS_PREFIX: &str = "dlab-";
/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";
/// How long a `Proc` gets between SIGTERM and SIGKILL when dropped.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// Default limit for `Host::run`, so a hung tool fails the test instead of hanging it.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------------------------
// Addresses

/// An IPv4 address with prefix length, confined to 198.18.0.0/15 (RFC 2544's benchmarking
/// range): the lab refuses any other address so that nothing it builds can be mistaken for a
/// real network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `addr` lies in 198.18.0.0/15.
    pub fn in_lab_range(addr: Ipv4Addr) -> bool {
        u32::from(addr) & 0xFFFE_0000 == 0xC612_0000
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| anyhow!("{s:?} is not ADDR/PREFIX"))?;
        let addr: Ipv4Addr = a.parse().with_context(|| format!("bad address in {s:?}"))?;
        let prefix: u8 = p.parse().with_context(|| format!("bad prefix in {s:?}"))?;
        ensure!(prefix <= 32, "prefix of {s:?} is longer than 32");
        ensure!(
            Cidr::in_lab_range(addr),
            "{s:?} is outside 198.18.0.0/15, the only range the lab may use"
        );
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn lab_ip(s: &str) -> Result<Ipv4Addr> {
    let ip: Ipv4Addr = s
        .parse()
        .with_context(|| format!("bad IPv4 address {s:?}"))?;
    ensure!(Cidr::in_lab_range(ip), "{s} is outside 198.18.0.0/15");
    Ok(ip)
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(|| anyhow!("short MAC {s:?}"))?;
            *b = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {s:?}"))?;
        }
        ensure!(parts.next().is_none(), "long MAC {s:?}");
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Names

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// Who created a lab: pid namespace, pid and the pid's start time (in clock ticks since
/// boot), so a recycled pid or a pid of another pid namespace is never taken for the creator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Creator {
    pidns: u64,
    pid: u32,
    start: u64,
}

impl Creator {
    fn current() -> Result<Creator> {
        let pid = std::process::id();
        Ok(Creator {
            pidns: own_pidns()?,
            pid,
            start: start_time(pid).context("cannot read own start time")?,
        })
    }

    fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    /// `dlab-PIDNS-PID-START-LAB-TAG` → the creator; `None` for names not made by a lab.
    fn parse_name(name: &str) -> Option<Creator> {
        let mut it = name.strip_prefix(NS_PREFIX)?.splitn(4, '-');
        Some(Creator {
            pidns: it.next()?.parse().ok()?,
            pid: it.next()?.parse().ok()?,
            start: it.next()?.parse().ok()?,
        })
    }
}

fn own_pidns() -> Result<u64> {
    let link = fs::read_link("/proc/self/ns/pid").context("cannot read /proc/self/ns/pid")?;
    let s = link.to_string_lossy();
    s.trim_start_matches("pid:[")
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("unexpected pid namespace link {s:?}"))
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn check_name(what: &str, name: &str, max: usize) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= max
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{what} name {name:?} must be 1..={max} characters of [A-Za-z0-9_-]"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running `ip` and friends from the root namespace (they only ever name lab namespaces)

fn cmd_output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{:?} failed ({}): {}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    cmd_output(Command::new("ip").args(args))
}

fn netns_pids(ns: &str) -> Vec<i32> {
    ip(["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills whatever still runs inside `ns`, then deletes it. Best effort: used on teardown.
fn destroy_ns(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = netns_pids(ns);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = ip(["netns", "del", ns]) {
        if Path::new(NETNS_DIR).join(ns).exists() {
            eprintln!("lab: cannot delete namespace {ns}: {e:#}");
        }
    }
}

/// Deletes namespaces and temp dirs of labs whose creating process is gone (a test run that
/// was SIGKILLed never ran its `Drop`). Labs of live processes and of other pid namespaces are
/// left alone.
pub fn reap_stale() -> Result<usize> {
    let me = Creator::current()?;
    let stale = |name: &str| {
        Creator::parse_name(name).is_some_and(|c| c.pidns == me.pidns && !c.is_alive())
    };
    let mut reaped = 0;
    if let Ok(dir) = fs::read_dir(NETNS_DIR) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                destroy_ns(&name);
                reaped += 1;
            }
        }
    }
    if let Ok(dir) = fs::read_dir(std::env::temp_dir()) {
        for e in dir.flatten() {
            if stale(&e.file_name().to_string_lossy()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(reaped)
}

// ---------------------------------------------------------------------------------------------
// The lab

/// Whether this process can build labs: root, `ip` present, and allowed to create a network
/// namespace. Probed once per process.
pub fn preflight() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // SAFETY: geteuid(2) cannot fail and touches no memory.
            if unsafe { libc::geteuid() } != 0 {
                return Err("not running as root".into());
            }
            let c = Creator::current().map_err(|e| format!("{e:#}"))?;
            let probe = format!("{NS_PREFIX}{}-{}-{}-probe", c.pidns, c.pid, c.start);
            ip(["netns", "add", &probe])
                .map_err(|e| format!("cannot create a network namespace: {e:#}"))?;
            destroy_ns(&probe);
            Ok(())
        })
        .clone()
}

/// True when running under CI (`CI` set to anything but empty, `0` or `false`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

struct State {
    /// Every namespace of the lab, switch first.
    namespaces: Vec<String>,
    /// Process groups spawned and not yet reaped by their `Proc`.
    live_pgids: Vec<i32>,
    next_port: u32,
    next_bridge: u32,
    next_log: u32,
}

struct Inner {
    /// `dlab-PIDNS-PID-START-LAB-TAG`: prefix of every namespace and of the temp dir.
    ns_prefix: String,
    /// `d` + base36(pid) + `_` + base36(lab): prefix of interface names the lab invents.
    if_prefix: String,
    switch_ns: String,
    dir: PathBuf,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the lists intact, so keep going on teardown.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A lab: a set of hosts and bridges, all removed when the `Lab` is dropped.
pub struct Lab {
    inner: Arc<Inner>,
}

impl Lab {
    /// Creates an empty lab (just its switch namespace). `tag` (≤ 16 of `[A-Za-z0-9_-]`) only
    /// helps a person reading `ip netns list`.
    pub fn new(tag: &str) -> Result<Lab> {
        check_name("lab tag", tag, 16)?;
        if let Err(e) = reap_stale() {
            eprintln!("lab: reaping stale labs failed: {e:#}");
        }
        let c = Creator::current()?;
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let ns_prefix = format!("{NS_PREFIX}{}-{}-{}-{n}-{tag}", c.pidns, c.pid, c.start);
        let if_prefix = format!("d{}_{}", base36(c.pid.into()), base36(n.into()));
        let dir = std::env::temp_dir().join(&ns_prefix);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let switch_ns = format!("{ns_prefix}.switch");
        let lab = Lab {
            inner: Arc::new(Inner {
                ns_prefix,
                if_prefix,
                switch_ns: switch_ns.clone(),
                dir,
                state: Mutex::new(State {
                    namespaces: Vec::new(),
                    live_pgids: Vec::new(),
                    next_port: 0,
                    next_bridge: 0,
                    next_log: 0,
                }),
            }),
        };
        lab.add_ns(&switch_ns)?;
        // Bridges and their ports need no IPv6 (and its DAD/RS chatter).
        lab.switch().sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        lab.switch()
            .sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        // The bridges must carry frames as a switch would. With br_netfilter loaded, a new
        // namespace starts with bridge-nf-call-* = 1, and the bridge then validates IPv4 (and
        // drops malformed frames) before any lab host sees them.
        for table in ["iptables", "ip6tables", "arptables"] {
            let key = format!("net.bridge.bridge-nf-call-{table}");
            if lab.switch().sysctl_get(&key).is_ok() {
                lab.switch().sysctl(&key, "0")?;
            }
        }
        Ok(lab)
    }

    /// For tests: a new lab, or `None` (after printing why) when this machine cannot run lab
    /// tests. Under CI a missing capability is a failure, never a silent skip.
    pub fn for_test(tag: &str) -> Option<Lab> {
        match preflight() {
            Ok(()) => Some(Lab::new(tag).expect("creating the lab")),
            Err(why) if under_ci() => {
                panic!("lab tests need root and network namespaces, and CI is set: {why}")
            }
            Err(why) => {
                eprintln!("skipping lab test {tag}: {why}");
                None
            }
        }
    }

    fn add_ns(&self, ns: &str) -> Result<()> {
        ip(["netns", "add", ns])?;
        self.inner.state().namespaces.push(ns.to_string());
        ip(["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The switch namespace (where the bridges are) as a host, e.g. to run QEMU there so that
    /// its tap devices can join the bridges.
    pub fn switch_host(&self) -> Host {
        self.switch()
    }

    /// A new interface name, unique in this lab and valid for any namespace (≤ 15 bytes).
    pub fn new_ifname(&self) -> String {
        let mut st = self.inner.state();
        st.next_port += 1;
        format!("{}t{}", self.inner.if_prefix, st.next_port)
    }

    fn switch(&self) -> Host {
        Host {
            lab: self.inner.clone(),
            name: "switch".into(),
            ns: self.inner.switch_ns.clone(),
        }
    }

    /// The lab's temp dir: process logs and captures live here until the lab is dropped.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Names of all namespaces of this lab (the switch namespace first).
    pub fn namespaces(&self) -> Vec<String> {
        self.inner.state().namespaces.clone()
    }

    /// A new host: a network namespace with `lo` up.
    pub fn host(&self, name: &str) -> Result<Host> {
        check_name("host", name, 32)?;
        let ns = format!("{}-{name}", self.inner.ns_prefix);
        self.add_ns(&ns)
            .with_context(|| format!("cannot create host {name}"))?;
        Ok(Host {
            lab: self.inner.clone(),
            name: name.into(),
            ns,
        })
    }

    /// A new bridge in the switch namespace (`ip link add NAME type bridge`), up.
    pub fn bridge(&self, name: &str) -> Result<Bridge> {
        check_name("bridge", name, 32)?;
        let ifname = {
            let mut st = self.inner.state();
            st.next_bridge += 1;
            format!("{}b{}", self.inner.if_prefix, st.next_bridge)
        };
        let sw = &self.inner.switch_ns;
        ip(["-n", sw, "link", "add", &ifname, "type", "bridge"])
            .with_context(|| format!("cannot create bridge {name}"))?;
        ip(["-n", sw, "link", "set", &ifname, "alias", name])?;
        ip(["-n", sw, "link", "set", &ifname, "up"])?;
        Ok(Bridge {
            name: name.into(),
            ifname,
        })
    }

    /// Plugs `host` into `bridge`: a veth pair whose host end is `ifname` with address `cidr`
    /// and whose other end is a port of the bridge; both up.
    pub fn attach(&self, host: &Host, bridge: &Bridge, ifname: &str, cidr: &str) -> Result<Iface> {
        check_name("interface", ifname, 15)?;
        let cidr: Cidr = cidr.parse()?;
        let port = {
            let mut st = self.inner.state();
            st.next_port += 1;
            format!("{}p{}", self.inner.if_prefix, st.next_port)
        };
        let sw = &self.inner.switch_ns;
        ip([
            "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns",
            &host.ns,
        ])
        .with_context(|| format!("cannot attach {}:{ifname} to {}", host.name, bridge.name))?;
        ip(["-n", sw, "link", "set", &port, "master", &bridge.ifname])?;
        ip(["-n", sw, "link", "set", &port, "up"])?;
        host.addr_add(ifname, &cidr.to_string())?;
        host.link_up(ifname)?;
        let mut iface = host.iface(ifname, Some(cidr))?;
        iface.port = Some(port);
        Ok(iface)
    }

    /// The switch port that `host:ifname` is attached to (the other end of its veth).
    pub fn port_of(&self, host: &Host, ifname: &str) -> Result<String> {
        let out = host.ip(["-j", "link", "show", "dev", ifname])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let peer = v[0]["link_index"]
            .as_u64()
            .with_context(|| format!("{}:{ifname} is not a veth: {out}", host.name))?;
        let links: serde_json::Value =
            serde_json::from_str(&self.switch().ip(["-j", "link", "show"])?)?;
        links
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["ifindex"].as_u64() == Some(peer))
            .and_then(|l| l["ifname"].as_str())
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "{}:{ifname} is not attached to this lab's switch",
                    host.name
                )
            })
    }

    /// Makes the switch port `port` (an [`Iface::port`]) deliver frames the way a physical
    /// wire does: complete checksums and no frame over the MTU (TX checksum offload, TSO and
    /// GSO off, so the switch finishes and segments what a local sender left to offload),
    /// with GRO on so that the port takes XDP redirects (a veth redirect target needs NAPI
    /// on its peer). An XDP program sees a frame's bytes only, never the kernel's
    /// "checksum partial" mark, so a host running one is attached like this.
    pub fn wire_port(&self, port: &str) -> Result<()> {
        let sw = self.switch();
        sw.run([
            "ethtool", "-K", port, "tso", "off", "gso", "off", "tx", "off", "gro", "on",
        ])
        .with_context(|| format!("cannot make switch port {port} wire-like"))?;
        Ok(())
    }

    /// A direct veth pair: `a:a_if` (address `a_cidr`) ⇄ `b:b_if` (address `b_cidr`), both up.
    pub fn link(
        &self,
        a: &Host,
        a_if: &str,
        a_cidr: &str,
        b: &Host,
        b_if: &str,
        b_cidr: &str,
    ) -> Result<(Iface, Iface)> {
        check_name("interface", a_if, 15)?;
        check_name("interface", b_if, 15)?;
        let (a_cidr, b_cidr): (Cidr, Cidr) = (a_cidr.parse()?, b_cidr.parse()?);
        ip([
            "-n", &a.ns, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.ns,
        ])
        .with_context(|| format!("cannot link {}:{a_if} to {}:{b_if}", a.name, b.name))?;
        for (h, ifname, cidr) in [(a, a_if, a_cidr), (b, b_if, b_cidr)] {
            h.addr_add(ifname, &cidr.to_string())?;
            h.link_up(ifname)?;
        }
        Ok((a.iface(a_if, Some(a_cidr))?, b.iface(b_if, Some(b_cidr))?))
    }

    fn teardown(&self) {
        let inner = &self.inner;
        let (pgids, namespaces) = {
            let mut st = inner.state();
            (
                std::mem::take(&mut st.live_pgids),
                std::mem::take(&mut st.namespaces),
            )
        };
        for pgid in pgids {
            // SAFETY: kill(2) has no memory-safety preconditions; the group's leader is still
            // unreaped (its `Proc` deregisters only after waiting), so the id is not recycled.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        // Hosts first, the switch namespace last.
        for ns in namespaces.iter().rev() {
            destroy_ns(ns);
        }
        if std::thread::panicking() {
            dump_logs(&inner.dir);
        }
        if std::env::var_os("LAB_KEEP").is_some() {
            eprintln!("lab: LAB_KEEP set, keeping {}", inner.dir.display());
        } else {
            let _ = fs::remove_dir_all(&inner.dir);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// On a failing test, the tail of every process log goes to stderr, which the test harness
/// shows next to the failure.
fn dump_logs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    for p in paths {
        let text = fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            continue;
        }
        eprintln!("---- {} (last 20 lines)", p.display());
        for l in &lines[lines.len().saturating_sub(20)..] {
            eprintln!("{l}");
        }
    }
}

/// A bridge in the lab's switch namespace.
#[derive(Clone, Debug)]
pub struct Bridge {
    /// The name the test gave it (also the link's alias).
    pub name: String,
    /// The interface name in the switch namespace.
    pub ifname: String,
}

/// A host-side interface.
#[derive(Clone, Debug)]
pub struct Iface {
    /// The host it lives in.
    pub host: String,
    pub name: String,
    pub ifindex: u32,
    pub mac: Mac,
    pub addr: Option<Cidr>,
    /// The switch-side end of the veth when the interface was attached to a bridge
    /// ([`Lab::attach`]).
    pub port: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Hosts

/// A host: one network namespace of a lab. Cheap to clone; it does not own the namespace
/// (the `Lab` does).
#[derive(Clone)]
pub struct Host {
    lab: Arc<Inner>,
    name: String,
    ns: String,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host").field("ns", &self.ns).finish()
    }
}

impl Host {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace name, as `ip netns` knows it.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// `ip -n NS ARGS…`: any `ip` command inside this host. Addresses given this way are not
    /// checked against the lab range; prefer the typed methods.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cmd_output(Command::new("ip").arg("-n").arg(&self.ns).args(args))
    }

    /// `ip addr add CIDR dev IFNAME` (CIDR within 198.18.0.0/15).
    pub fn addr_add(&self, ifname: &str, cidr: &str) -> Result<()> {
        let cidr: Cidr = cidr.parse()?;
        self.ip(["addr", "add", &cidr.to_string(), "dev", ifname])
            .with_context(|| format!("cannot add {cidr} to {}:{ifname}", self.name))?;
        Ok(())
    }

    /// `ip link set IFNAME up`.
    pub fn link_up(&self, ifname: &str) -> Result<()> {
        self.ip(["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// `ip route add DEST via VIA`; `dest` is `"default"` or a CIDR, both within the lab range.
    pub fn route_add(&self, dest: &str, via: &str) -> Result<()> {
        let dest = if dest == "default" {
            dest.to_string()
        } else {
            dest.parse::<Cidr>()?.to_string()
        };
        let via = lab_ip(via)?;
        self.ip(["route", "add", &dest, "via", &via.to_string()])
            .with_context(|| format!("cannot add route {dest} via {via} on {}", self.name))?;
        Ok(())
    }

    /// Writes a sysctl inside this namespace (`sysctl -w KEY=VALUE` there). `key` is dotted
    /// (`net.ipv4.ip_forward`) or a path under /proc/sys when a part holds a dot
    /// (`net/ipv4/conf/eth0.10/arp_ignore`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key)?;
        let value = value.to_string();
        self.in_ns(move || fs::write(&path, value.as_bytes()))?
            .with_context(|| format!("cannot set {key} on {}", self.name))
    }

    /// Reads a sysctl inside this namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key)?;
        let v = self
            .in_ns(move || fs::read_to_string(&path))?
            .with_context(|| format!("cannot read {key} on {}", self.name))?;
        Ok(v.trim().to_string())
    }

    /// Index, MAC and first IPv4 address of `ifname`.
    pub fn iface(&self, ifname: &str, addr: Option<Cidr>) -> Result<Iface> {
        let link = self
            .ip(["-o", "link", "show", "dev", ifname])
            .with_context(|| format!("no interface {ifname} on {}", self.name))?;
        let (ifindex, mac) = parse_link_line(&link)?;
        Ok(Iface {
            host: self.name.clone(),
            name: ifname.into(),
            ifindex,
            mac,
            addr,
            port: None,
        })
    }

    pub fn mac(&self, ifname: &str) -> Result<Mac> {
        Ok(self.iface(ifname, None)?.mac)
    }

    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        Ok(self.iface(ifname, None)?.ifindex)
    }

    /// Turns TSO, GSO, GRO and TX checksum offload on or off
    /// (`ethtool -K IFNAME tso X gso X gro X tx X`).
    pub fn set_offloads(&self, ifname: &str, on: bool) -> Result<()> {
        let v = if on { "on" } else { "off" };
        self.run([
            "ethtool", "-K", ifname, "tso", v, "gso", v, "gro", v, "tx", v,
        ])?;
        Ok(())
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// Sockets made by `f` stay in the namespace. The calling thread is not affected.
    pub fn in_ns<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = Path::new(NETNS_DIR).join(&self.ns);
        let ns =
            fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on a valid fd; it only changes this thread's network
                // namespace (CLONE_NEWNET is allowed in multi-threaded processes).
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(anyhow!(
                        "setns into {}: {}",
                        self.ns,
                        std::io::Error::last_os_error()
                    ));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("in_ns closure on {} panicked", self.name))?
        })
    }

    /// A `Command` for `argv` that will run inside this host (`ip netns exec NS argv…`).
    pub fn command<I, S>(&self, argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new("ip");
        c.args(["netns", "exec"]).arg(&self.ns).args(argv);
        c
    }

    /// Starts `argv` in this host as a new process group, stdout and stderr going to
    /// `HOST.PROG.N.{stdout,stderr}.log` in the lab dir.
    pub fn spawn<I, S>(&self, argv: I) -> Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let first = argv.first().ok_or_else(|| anyhow!("empty argv"))?;
        let label = Path::new(first)
            .file_name()
            .unwrap_or(first)
            .to_string_lossy()
            .into_owned();
        self.spawn_command(&label, self.command(&argv))
    }

    /// Like `spawn`, for a `Command` from `Host::command` that the caller adjusted (env, cwd).
    pub fn spawn_command(&self, label: &str, mut cmd: Command) -> Result<Proc> {
        let n = {
            let mut st = self.lab.state();
            st.next_log += 1;
            st.next_log
        };
        let base = format!("{}.{label}.{n}", self.name);
        let stdout = self.lab.dir.join(format!("{base}.stdout.log"));
        let stderr = self.lab.dir.join(format!("{base}.stderr.log"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout)?)
            .stderr(fs::File::create(&stderr)?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let pgid = child.id() as i32;
        self.lab.state().live_pgids.push(pgid);
        Ok(Proc {
            child,
            label: format!("{}:{label}", self.name),
            stdout,
            stderr,
            lab: self.lab.clone(),
            exited: None,
        })
    }

    /// Runs `argv` in this host to completion (at most a minute); an error, with its stderr,
    /// if it fails.
    pub fn run<I, S>(&self, argv: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_timeout(argv, RUN_TIMEOUT)
    }

    /// `run` with an explicit time limit; the process group is killed when it runs out.
    pub fn run_timeout<I, S>(&self, argv: I, timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.output(&argv, timeout)?;
        ensure!(
            out.status.success(),
            "{} on {} failed ({}): {}",
            show_argv(&argv),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out)
    }

    /// Runs `argv` in this host to completion; whether it exited 0.
    pub fn exec_ok<I, S>(&self, argv: I) -> Result<bool>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        Ok(self.output(&argv, RUN_TIMEOUT)?.status.success())
    }

    /// Runs `argv` in this host and returns its output whatever its exit status; an error only
    /// when it cannot be started or outlives `timeout` (then it is killed).
    pub fn output(&self, argv: &[OsString], timeout: Duration) -> Result<Output> {
        // Output goes to files, not pipes: a daemon forked by the command may keep a pipe open
        // forever, a file it cannot hold hostage.
        let n = {
            let mut st = self.lab.state();
            st.next_log += 1;
            st.next_log
        };
        let out_path = self.lab.dir.join(format!("run.{n}.out"));
        let err_path = self.lab.dir.join(format!("run.{n}.err"));
        let mut child = self
            .command(argv)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path)?)
            .stderr(fs::File::create(&err_path)?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {} on {}", show_argv(argv), self.name))?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                // SAFETY: kill(2) on our unreaped child's group.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                bail!(
                    "{} on {} timed out after {timeout:?}",
                    show_argv(argv),
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let out = Output {
            status,
            stdout: fs::read(&out_path)?,
            stderr: fs::read(&err_path)?,
        };
        let _ = fs::remove_file(&out_path);
        let _ = fs::remove_file(&err_path);
        // `ip netns exec` reports a program it cannot start as a plain exit 1; make that an
        // error, so `exec_ok` does not read "ping is not installed" as "no reply".
        if !out.status.success() && out.stderr.starts_with(b"exec of \"") {
            bail!(
                "cannot run {} on {}: {}",
                show_argv(argv),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Waits until something in this host listens on TCP `addr` (a listener on the wildcard
    /// address with the same port counts; so does any address when `addr`'s is unspecified).
    /// Reads the kernel's socket table, so it does not connect (and is not counted by servers).
    pub fn wait_tcp_listen(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let found = self.in_ns(|| {
            wait_until(timeout, || {
                listeners().is_ok_and(|ls| ls.iter().any(|l| listener_matches(*l, addr)))
            })
        })?;
        found.with_context(|| format!("nothing listens on {addr} in {}", self.name))
    }

    /// Starts `tcpdump -i IFNAME -w FILE FILTER` and waits until it is capturing.
    pub fn capture(&self, ifname: &str, filter: &str) -> Result<Capture> {
        let n = {
            let mut st = self.lab.state();
            st.next_log += 1;
            st.next_log
        };
        let file = self
            .lab
            .dir
            .join(format!("{}.{ifname}.{n}.pcap", self.name));
        let mut argv: Vec<OsString> = [
            "tcpdump",
            "--immediate-mode",
            "-i",
            ifname,
            "-n",
            "-U",
            "-Z",
            "root",
            "-w",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        argv.push(file.clone().into_os_string());
        if !filter.is_empty() {
            argv.push(filter.into());
        }
        let mut proc = self.spawn(&argv)?;
        let started = wait_until(Duration::from_secs(10), || {
            proc.stderr().is_ok_and(|s| s.contains("listening on")) || !proc.is_running()
        });
        let err = proc.stderr().unwrap_or_default();
        ensure!(
            started.is_ok() && err.contains("listening on"),
            "tcpdump on {}:{ifname} did not start: {}",
            self.name,
            err.trim()
        );
        Ok(Capture { proc, file })
    }
}

fn show_argv(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn sysctl_path(key: &str) -> Result<PathBuf> {
    ensure!(
        !key.is_empty() && !key.contains("..") && !key.starts_with('/'),
        "bad sysctl key {key:?}"
    );
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    Ok(Path::new("/proc/sys").join(rel))
}

/// `5: eth0@if6: <…> … link/ether aa:bb:… brd …` → (5, aa:bb:…).
fn parse_link_line(line: &str) -> Result<(u32, Mac)> {
    let ifindex = line
        .split(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| anyhow!("no ifindex in {line:?}"))?;
    let mac = line
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| anyhow!("no MAC in {line:?}"))?
        .parse()?;
    Ok((ifindex, mac))
}

/// Listening TCP sockets of the calling thread's network namespace.
fn listeners() -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        // /proc/self/net would show the main thread's namespace, not this thread's.
        let Ok(text) = fs::read_to_string(format!("/proc/thread-self/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && f[3] == "0A" {
                if let Some(a) = parse_proc_addr(f[1], v6) {
                    out.push(a);
                }
            }
        }
    }
    Ok(out)
}

/// `0100007F:1F90` → 127.0.0.1:8080. The address is the in-memory (network order) bytes
/// printed as native-endian 32-bit words.
fn parse_proc_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..a.len()).step_by(8) {
        let w = u32::from_str_radix(a.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&w.to_ne_bytes());
    }
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?))
    } else {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))
    };
    Some(SocketAddr::new(ip, port))
}

fn listener_matches(l: SocketAddr, want: SocketAddr) -> bool {
    let l_ip = match l.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        ip => ip,
    };
    l.port() == want.port()
        && (l_ip == want.ip() || l_ip.is_unspecified() || want.ip().is_unspecified())
}

/// Polls `cond` every 10 ms until it holds (Ok) or `timeout` passes (Err).
/// CLOCK_MONOTONIC in nanoseconds: one clock for every namespace (and for `flowcheck`'s
/// reports), so a test can compare its own instants with a tool's.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends one UDP datagram from inside `host` to `addr` and returns the first reply.
pub fn udp_request(
    host: &Host,
    addr: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    host.in_ns(|| -> Result<Vec<u8>> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(timeout))?;
        sock.connect(addr)?;
        sock.send(payload)?;
        let mut buf = vec![0u8; 65536];
        let n = loop {
            match sock.recv(&mut buf) {
                // A signal landed during the wait (EINTR): nothing was lost, wait again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        buf.truncate(n);
        Ok(buf)
    })?
    .with_context(|| format!("UDP request from {} to {addr}", host.name))
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Signals a test may send to a lab process (to its whole process group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
    Int,
    Hup,
    Usr1,
    Usr2,
    /// Freezes the process (a stalled daemon), until `Cont`.
    Stop,
    Cont,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

/// A process running in a lab host. Dropping it sends SIGTERM to its process group, then
/// SIGKILL after a grace period.
pub struct Proc {
    child: Child,
    label: String,
    stdout: PathBuf,
    stderr: PathBuf,
    lab: Arc<Inner>,
    exited: Option<ExitStatus>,
}

impl fmt::Debug for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proc")
            .field("label", &self.label)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the process group (the process and whatever it forked).
    pub fn kill(&mut self, sig: Signal) -> Result<()> {
        ensure!(self.is_running(), "{} has already exited", self.label);
        // SAFETY: kill(2) on our unreaped child's group (checked just above).
        let rc = unsafe { libc::kill(-(self.child.id() as i32), sig.raw()) };
        ensure!(
            rc == 0,
            "signal {sig:?} to {}: {}",
            self.label,
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    fn poll(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
                let pgid = self.child.id() as i32;
                self.lab.state().live_pgids.retain(|p| *p != pgid);
            }
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.poll().is_none()
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let _ = wait_until(timeout, || self.poll().is_some());
        Ok(self.poll())
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// Everything the process has written to stdout so far.
    pub fn stdout(&self) -> Result<String> {
        Ok(fs::read_to_string(&self.stdout)?)
    }

    pub fn stderr(&self) -> Result<String> {
        Ok(fs::read_to_string(&self.stderr)?)
    }

    /// Waits until stdout contains `needle`; fails early if the process exits first.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let mut exited = false;
        let res = wait_until(timeout, || {
            exited = !self.is_running();
            exited || self.stdout().is_ok_and(|s| s.contains(needle))
        });
        if self.stdout().is_ok_and(|s| s.contains(needle)) {
            return Ok(());
        }
        let err = self.stderr().unwrap_or_default();
        match (exited, res) {
            (true, _) => bail!(
                "{} exited before printing {needle:?}: {}",
                self.label,
                err.trim()
            ),
            _ => bail!("{} did not print {needle:?} within {timeout:?}", self.label),
        }
    }

    /// Stops the process: SIGTERM to its group, SIGKILL after `grace`; returns its status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.poll().is_none() {
            let _ = self.kill(Signal::Term);
            if self.wait_timeout(grace).ok().flatten().is_none() {
                let _ = self.kill(Signal::Kill);
                let _ = wait_until(Duration::from_secs(5), || self.poll().is_some());
            }
        }
        self.poll()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(TERM_GRACE);
    }
}

// ---------------------------------------------------------------------------------------------
// Captures

/// A running `tcpdump -w` (see `Host::capture`).
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Stops tcpdump and returns the captured frames. Waits first until the file has stopped
    /// growing for 100 ms, so packets still on their way are written.
    pub fn stop(self) -> Result<Vec<Vec<u8>>> {
        Ok(self.stop_timed()?.into_iter().map(|(_, f)| f).collect())
    }

    /// Like [`Capture::stop`], with each frame's capture time (since the Unix epoch).
    pub fn stop_timed(mut self) -> Result<Vec<(Duration, Vec<u8>)>> {
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut last = size(&self.file);
        let mut since = Instant::now();
        let _ = wait_until(Duration::from_secs(2), || {
            let now = size(&self.file);
            if now != last {
                last = now;
                since = Instant::now();
            }
            since.elapsed() >= Duration::from_millis(100)
        });
        self.proc.kill(Signal::Int)?;
        ensure!(
            self.proc.wait_timeout(Duration::from_secs(5))?.is_some(),
            "tcpdump did not stop on SIGINT"
        );
        let data = fs::read(&self.file)
            .with_context(|| format!("cannot read capture {}", self.file.display()))?;
        parse_pcap_timed(&data)
    }

    /// Stops tcpdump and returns how many packets matched its filter.
    pub fn stop_and_count(self) -> Result<usize> {
        Ok(self.stop()?.len())
    }
}

/// The frames of a classic pcap file (either byte order, µs or ns timestamps). A record cut
/// short at the end of the file is ignored.
pub fn parse_pcap(data: &[u8]) -> Result<Vec<Vec<u8>>> {
    Ok(parse_pcap_timed(data)?
        .into_iter()
        .map(|(_, f)| f)
        .collect())
}

/// The frames of a classic pcap file with their timestamps (since the Unix epoch).
pub fn parse_pcap_timed(data: &[u8]) -> Result<Vec<(Duration, Vec<u8>)>> {
    ensure!(data.len() >= 24, "pcap file shorter than its header");
    let magic = [data[0], data[1], data[2], data[3]];
    let (le, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => bail!("not a pcap file (magic {magic:02x?})"),
    };
    let u32_at = |i: usize| {
        let b = [data[i], data[i + 1], data[i + 2], data[i + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let len = u32_at(off + 8) as usize;
        let start = off + 16;
        if start + len > data.len() {
            break;
        }
        let (secs, frac) = (u64::from(u32_at(off)), u64::from(u32_at(off + 4)));
        let ts = Duration::from_secs(secs)
            + if nanos {
                Duration::from_nanos(frac)
            } else {
                Duration::from_micros(frac)
            };
        frames.push((ts, data[start..start + len].to_vec()));
        off = start + len;
    }
    Ok(frames)
}

/// Writes `bytes` to a file in the lab dir (configs for servers under test) and returns its
/// path.
pub fn write_file(lab: &Lab, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    ensure!(
        !name.is_empty() && !name.contains('/') && name != "..",
        "bad file name {name:?}"
    );
    let p = lab.dir().join(name);
    fs::File::create(&p)?.write_all(bytes)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_only_in_lab_range() {
        assert_eq!(
            "198.18.1.10/24".parse::<Cidr>().unwrap().to_string(),
            "198.18.1.10/24"
        );
        assert!("198.19.255.1/30".parse::<Cidr>().is_ok());
        assert!("198.20.0.1/24".parse::<Cidr>().is_err());
        assert!("10.0.0.1/8".parse::<Cidr>().is_err());
        assert!("198.18.0.1/33".parse::<Cidr>().is_err());
        assert!("198.18.0.1".parse::<Cidr>().is_err());
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(4_194_304), "2hwcg");
        let c = Creator::parse_name("dlab-4026531836-123-456-7-tag-client").unwrap();
        assert_eq!(
            c,
            Creator {
                pidns: 4026531836,
                pid: 123,
                start: 456
            }
        );
        assert!(Creator::parse_name("dlab-x-1-2").is_none());
        assert!(Creator::parse_name("other-1-2-3").is_none());
        assert!(Creator::current().unwrap().is_alive());
    }

    #[test]
    fn parses_link_and_proc_lines() {
        let line =
            "7: eth0@if8: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP \
                    mode DEFAULT group default qlen 1000\\    link/ether f2:b9:16:d1:6c:19 brd \
                    ff:ff:ff:ff:ff:ff link-netns x";
        let (idx, mac) = parse_link_line(line).unwrap();
        assert_eq!(idx, 7);
        assert_eq!(mac.to_string(), "f2:b9:16:d1:6c:19");
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_proc_addr("0100007F:1F90", false),
                Some("127.0.0.1:8080".parse().unwrap())
            );
            assert_eq!(
                parse_proc_addr("00000000000000000000000000000000:0050", true),
                Some("[::]:80".parse().unwrap())
            );
        }
        let any6: SocketAddr = "[::]:80".parse().unwrap();
        assert!(listener_matches(any6, "198.18.0.1:80".parse().unwrap()));
        assert!(!listener_matches(
            "198.18.0.2:80".parse().unwrap(),
            "198.18.0.1:80".parse().unwrap()
        ));
    }

    #[test]
    fn pcap_records() {
        let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1];
        f.extend_from_slice(&[0; 20]);
        for payload in [&b"abc"[..], &b"de"[..]] {
            f.extend_from_slice(&[0; 8]);
            f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            f.extend_from_slice(payload);
        }
        f.extend_from_slice(&[0; 10]); // a cut-off record
        assert_eq!(
            parse_pcap(&f).unwrap(),
            vec![b"abc".to_vec(), b"de".to_vec()]
        );
        assert!(parse_pcap(b"nope").is_err());
    }

    #[test]
    fn sysctl_keys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.10/arp_ignore").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.10/arp_ignore")
        );
        assert!(sysctl_path("../etc").is_err());
    }
}
