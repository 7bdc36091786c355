//! The machine, its CPUs and how the bench places work on them: facts for the header,
//! per-CPU busy time from /proc/stat, CPU affinity, and the director's NAPI threads.

use std::path::Path as FsPath;
use std::process::Command;

use anyhow::{bail, Context, Result};
use director_lab::Host;

/// nproc, CPU model, kernel, memory.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!(
        "nproc {}, CPU \"{cpu}\", kernel {kernel}, {mem_gib:.0} GiB RAM",
        nproc()
    )
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The workspace's commit (`git rev-parse --short HEAD`), and whether the tree the binaries
/// were built from had uncommitted changes.
pub fn commit() -> String {
    let root = FsPath::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head} plus uncommitted changes in the tree")
    } else {
        head
    }
}

pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

// ---------------------------------------------------------------------------------------------
// CPU accounting

/// Per-CPU jiffies from /proc/stat: user nice system idle iowait irq softirq steal.
#[derive(Clone, Debug)]
pub struct CpuTimes(Vec<[u64; 8]>);

impl CpuTimes {
    pub fn now() -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        CpuTimes(
            stat.lines()
                .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                .map(|l| {
                    let mut v = [0u64; 8];
                    for (slot, x) in v.iter_mut().zip(l.split_whitespace().skip(1)) {
                        *slot = x.parse().unwrap_or(0);
                    }
                    v
                })
                .collect(),
        )
    }
}

/// What each CPU did between two samples, as fractions of the wall time.
#[derive(Clone, Debug, Default)]
pub struct CpuUse {
    /// user + nice + system + irq + softirq.
    pub busy: Vec<f64>,
    pub softirq: Vec<f64>,
    /// Time the hypervisor ran something else while this vCPU wanted to run.
    pub steal: Vec<f64>,
}

impl CpuUse {
    pub fn between(a: &CpuTimes, b: &CpuTimes) -> CpuUse {
        let mut u = CpuUse::default();
        for (x, y) in a.0.iter().zip(&b.0) {
            let d: Vec<f64> = (0..8).map(|i| y[i].saturating_sub(x[i]) as f64).collect();
            let total: f64 = d.iter().sum::<f64>().max(1.0);
            u.busy.push((d[0] + d[1] + d[2] + d[5] + d[6]) / total);
            u.softirq.push(d[6] / total);
            u.steal.push(d[7] / total);
        }
        u
    }

    pub fn busy(&self, cpu: usize) -> f64 {
        self.busy.get(cpu).copied().unwrap_or(0.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Affinity

/// Pins every thread of `pid` to `cpu`.
pub fn pin(pid: u32, cpu: usize) -> Result<()> {
    let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("no process {pid}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    for tid in tids {
        pin_thread(tid, cpu)?;
    }
    Ok(())
}

fn pin_thread(tid: u32, cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `cpu` is below CPU_SETSIZE on any machine this runs on.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity reads `set` for the size given.
    let rc = unsafe {
        libc::sched_setaffinity(
            tid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        )
    };
    if rc != 0 {
        bail!(
            "cannot pin thread {tid} to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `Cpus_allowed_list` of a thread.
pub fn allowed_cpus(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Writes `value` to a file under /sys/class/net/IFNAME/ in `host` (its own sysfs view).
pub fn sysfs_net(host: &Host, ifname: &str, file: &str, value: &str) -> Result<()> {
    host.run([
        "sh",
        "-c",
        &format!("echo {value} > /sys/class/net/{ifname}/{file}"),
    ])
    .with_context(|| format!("{} {ifname}/{file} = {value}", host.name()))?;
    Ok(())
}

/// RPS mask of `host:ifname`'s (only) receive queue.
pub fn set_rps(host: &Host, ifname: &str, mask: u32) -> Result<()> {
    sysfs_net(host, ifname, "queues/rx-0/rps_cpus", &format!("{mask:x}"))
}

// ---------------------------------------------------------------------------------------------
// NAPI threads, through the kernel's `netdev` generic-netlink family (napi-get): the exact
// threads of one interface in one namespace, not every `napi/ext-*` on the machine.

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_NAPI_GET: u8 = 11;
const NETDEV_A_NAPI_IFINDEX: u16 = 1;
const NETDEV_A_NAPI_ID: u16 = 2;
const NETDEV_A_NAPI_PID: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

struct Genl {
    fd: libc::c_int,
    seq: u32,
}

impl Drop for Genl {
    fn drop(&mut self) {
        // SAFETY: closing the socket this struct owns.
        unsafe { libc::close(self.fd) };
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// (kind, payload) of each attribute in `b`.
fn attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= b.len() {
        let len = u16::from_ne_bytes([b[i], b[i + 1]]) as usize;
        let kind = u16::from_ne_bytes([b[i + 2], b[i + 3]]) & 0x3fff;
        if len < 4 || i + len > b.len() {
            break;
        }
        out.push((kind, &b[i + 4..i + len]));
        i += len.div_ceil(4) * 4;
    }
    out
}

fn u32_of(p: &[u8]) -> Option<u32> {
    p.get(..4)
        .map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
}

impl Genl {
    fn open() -> Result<Genl> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            bail!("netlink socket: {}", std::io::Error::last_os_error());
        }
        let g = Genl { fd, seq: 1 };
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: `tv` outlives the call and has the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(g)
    }

    /// Sends one request and returns the payload (after the genl header) of every answer.
    fn request(&mut self, family: u16, cmd: u8, flags: u16, body: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.seq += 1;
        let mut m = Vec::new();
        let len = 16 + 4 + body.len();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&family.to_ne_bytes());
        m.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[cmd, 1, 0, 0]);
        m.extend_from_slice(body);
        // SAFETY: sockaddr_nl is plain data; zero = the kernel.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `m` and `to` are valid for the lengths passed.
        let r = unsafe {
            libc::sendto(
                self.fd,
                m.as_ptr().cast(),
                m.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            bail!("netlink send: {}", std::io::Error::last_os_error());
        }
        let dump = flags & (libc::NLM_F_DUMP as u16) != 0;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: `buf` is valid for its length.
            let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                bail!("netlink recv: {}", std::io::Error::last_os_error());
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                if len < 16 || len > b.len() {
                    bail!("malformed netlink answer");
                }
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let err = b
                            .get(16..20)
                            .map_or(0, |x| i32::from_ne_bytes([x[0], x[1], x[2], x[3]]));
                        if err != 0 {
                            bail!("netlink error {}", std::io::Error::from_raw_os_error(-err));
                        }
                        if !dump {
                            return Ok(out);
                        }
                    }
                    _ => {
                        out.push(b.get(20..len).unwrap_or(&[]).to_vec());
                        if !dump {
                            return Ok(out);
                        }
                    }
                }
                b = b.get(len.div_ceil(4) * 4..).unwrap_or(&[]);
            }
        }
    }

    fn family(&mut self, name: &str) -> Result<u16> {
        let mut body = Vec::new();
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        attr(&mut body, CTRL_ATTR_FAMILY_NAME, &n);
        let answers = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 0, &body)?;
        for a in &answers {
            for (k, p) in attrs(a) {
                if k == CTRL_ATTR_FAMILY_ID && p.len() >= 2 {
                    return Ok(u16::from_ne_bytes([p[0], p[1]]));
                }
            }
        }
        bail!("no generic-netlink family {name}")
    }
}

/// The NAPI threads (pids) of `ifname` in `host`: empty when its NAPI is not threaded.
pub fn napi_threads(host: &Host, ifname: &str) -> Result<Vec<u32>> {
    let ifindex = host.ifindex(ifname)?;
    host.in_ns(move || -> Result<Vec<u32>> {
        let mut g = Genl::open()?;
        let fam = g.family("netdev")?;
        let mut body = Vec::new();
        attr(&mut body, NETDEV_A_NAPI_IFINDEX, &ifindex.to_ne_bytes());
        let answers = g.request(fam, NETDEV_CMD_NAPI_GET, libc::NLM_F_DUMP as u16, &body)?;
        let mut pids = Vec::new();
        for a in &answers {
            let mut idx = None;
            let mut pid = None;
            let mut id = None;
            for (k, p) in attrs(a) {
                match k {
                    NETDEV_A_NAPI_IFINDEX => idx = u32_of(p),
                    NETDEV_A_NAPI_ID => id = u32_of(p),
                    NETDEV_A_NAPI_PID => pid = u32_of(p),
                    _ => {}
                }
            }
            if idx == Some(ifindex) && id.is_some() {
                if let Some(pid) = pid.filter(|p| *p > 0) {
                    pids.push(pid);
                }
            }
        }
        Ok(pids)
    })?
}
