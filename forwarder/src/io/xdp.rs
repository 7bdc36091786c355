//! The XDP program (`forwarder/bpf/director.bpf.c`): loading it, attaching it to the
//! datapath interfaces, and keeping its maps equal to the service table and the FIB.
//!
//! The program is built by `build.rs` with clang and embedded in the binary; a build
//! without clang has none, and [`XdpProgram::load`] says so. It is loaded once per daemon
//! and attached to every datapath interface through a BPF link owned by this process, so
//! the kernel detaches it when the daemon exits, however it exits: no program of a dead
//! daemon is left on an interface.
//!
//! The maps and their keys are defined in `bpf/director.h`; the Rust types here mirror them
//! (`#[repr(C)]`, checked by a size test).

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use crate::engine::ServiceTable;
use crate::fib::Fib;

/// Map sizes and flags, as in `bpf/director.h`.
pub const MAX_ADDRS: usize = 4096;
pub const MAX_PORTS: usize = 16384;
pub const MAX_IFACES: u32 = 32;
pub const MAX_QUEUES: u32 = 64;
pub const ADDR_VIP: u32 = 1 << 0;
pub const ADDR_LIP: u32 = 1 << 1;
pub const ADDR_LOCAL: u32 = 1 << 2;
pub const L4_SERVICE: u32 = 1 << 0;
pub const L4_NAT_REAL: u32 = 1 << 1;

/// `struct dir_l4_key`: (address, port, protocol), address and port in network order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L4Key {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

impl L4Key {
    pub fn new(addr: Ipv4Addr, port: u16, proto: u8) -> L4Key {
        L4Key {
            addr: u32::from(addr).to_be(),
            port: port.to_be(),
            proto,
            pad: 0,
        }
    }
}

// SAFETY: plain old data with no padding (4 + 2 + 1 + 1 bytes).
unsafe impl aya::Pod for L4Key {}

/// `struct dir_ident`: a CPU's next outer identification and its step.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ident {
    pub next: u32,
    pub step: u32,
}

// SAFETY: plain old data with no padding.
unsafe impl aya::Pod for Ident {}

/// The program's counters (`dir_stats`), summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStats {
    /// Frames left to the kernel.
    pub passed: u64,
    /// Frames handed to a worker's AF_XDP socket.
    pub slow_path: u64,
    /// Frames of the engine's that found no socket for their queue (passed to the kernel).
    pub no_socket: u64,
    /// Frames the fast path forwarded toward a real server, and toward a client.
    pub fast_in: u64,
    pub fast_out: u64,
}

/// What the operator asked for (`[datapath] xdp`), for one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpWant {
    /// The driver's own XDP; refuse where it has none.
    Native,
    /// The kernel's generic (skb) XDP, which any device has.
    Generic,
    /// Native where the driver can, else generic.
    Auto,
}

/// How the program runs on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

/// The addresses and ports the program must know, as its maps hold them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steering {
    /// Address (network order) → `ADDR_*` flags.
    pub addrs: BTreeMap<u32, u32>,
    /// (address, port, protocol) → `L4_*` flags.
    pub ports: BTreeMap<L4Key, u32>,
}

impl Steering {
    /// What the program needs from the service table (VIPs, LIPs, service ports, NAT real
    /// servers' ports, retired ones included) and the FIB (the box's own addresses).
    pub fn build(services: &ServiceTable, fib: &Fib) -> Steering {
        let mut s = Steering::default();
        let flag = |m: &mut BTreeMap<u32, u32>, a: Ipv4Addr, f: u32| {
            *m.entry(u32::from(a).to_be()).or_default() |= f;
        };
        for i in fib.interfaces() {
            for (a, _) in &i.addrs {
                flag(&mut s.addrs, *a, ADDR_LOCAL);
            }
        }
        let t = services.steering();
        for v in t.vips {
            flag(&mut s.addrs, v, ADDR_VIP);
        }
        for l in t.lips {
            flag(&mut s.addrs, l, ADDR_LIP);
        }
        for (a, port, proto) in t.services {
            *s.ports.entry(L4Key::new(a, port, proto)).or_default() |= L4_SERVICE;
        }
        for (a, port, proto) in t.nat_reals {
            *s.ports.entry(L4Key::new(a, port, proto)).or_default() |= L4_NAT_REAL;
        }
        s
    }
}

#[cfg(director_bpf)]
mod imp {
    use super::*;
    use aya::maps::{DevMapHash, HashMap, Map, MapData, PerCpuArray, RingBuf, XskMap};
    use aya::programs::{Xdp, XdpMode};
    use aya::{Ebpf, EbpfLoader};
    use std::os::fd::{AsFd, AsRawFd};

    use crate::io::fastpath::FastMaps;

    /// The map inside an aya `Map`, for the maps used through raw `bpf(2)` calls.
    fn data(m: Map) -> io::Result<MapData> {
        match m {
            Map::HashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => Ok(d),
            other => Err(io::Error::other(format!("unexpected map type {other:?}"))),
        }
    }

    /// The program's object file, as embedded (for tools and tests that load it otherwise).
    pub fn object() -> Option<&'static [u8]> {
        Some(OBJECT)
    }

    /// The benchmarks' bare-redirect program (`bpf/ceiling.bpf.c`), not part of the datapath.
    pub fn ceiling_object() -> Option<&'static [u8]> {
        static CEILING: &[u8] =
            aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ceiling.bpf.o"));
        Some(CEILING)
    }

    /// The program as clang built it (see `build.rs`).
    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/director.bpf.o"));
    const PROGRAM: &str = "director_xdp";

    fn err(what: &str, e: impl std::fmt::Display) -> io::Error {
        io::Error::other(format!("{what}: {e}"))
    }

    /// The loaded program, its maps, and the interfaces it is attached to.
    pub struct XdpProgram {
        ebpf: Ebpf,
        addrs: HashMap<MapData, u32, u32>,
        ports: HashMap<MapData, L4Key, u32>,
        ifaces: HashMap<MapData, u32, u32>,
        xsks: XskMap<MapData>,
        stats: PerCpuArray<MapData, u64>,
        flows: MapData,
        nexthops: MapData,
        reals: MapData,
        ident: PerCpuArray<MapData, Ident>,
        tx_ports: DevMapHash<MapData>,
        events: Option<RingBuf<MapData>>,
        attached: Vec<(u32, String, AttachMode)>,
        current: Steering,
    }

    impl XdpProgram {
        /// Load the program into the kernel (the verifier checks it here), not attached yet,
        /// with room for `flows` rows in the fast path's flow map.
        pub fn load(flows: u32) -> io::Result<XdpProgram> {
            let mut ebpf = EbpfLoader::new()
                .map_max_entries("dir_flows", flows.max(1024))
                .load(OBJECT)
                .map_err(|e| err("cannot load the XDP program", e))?;
            let prog: &mut Xdp = ebpf
                .program_mut(PROGRAM)
                .ok_or_else(|| io::Error::other("the XDP object has no director_xdp program"))?
                .try_into()
                .map_err(|e| err("director_xdp is not an XDP program", e))?;
            prog.load()
                .map_err(|e| err("the kernel refused the XDP program", e))?;
            let mut take = |name: &str| {
                ebpf.take_map(name)
                    .ok_or_else(|| io::Error::other(format!("the XDP object has no map {name}")))
            };
            let addrs = HashMap::try_from(take("dir_addrs")?).map_err(|e| err("dir_addrs", e))?;
            let ports = HashMap::try_from(take("dir_ports")?).map_err(|e| err("dir_ports", e))?;
            let ifaces =
                HashMap::try_from(take("dir_ifaces")?).map_err(|e| err("dir_ifaces", e))?;
            let xsks = XskMap::try_from(take("dir_xsks")?).map_err(|e| err("dir_xsks", e))?;
            let stats =
                PerCpuArray::try_from(take("dir_stats")?).map_err(|e| err("dir_stats", e))?;
            let flows = data(take("dir_flows")?)?;
            let nexthops = data(take("dir_nexthops")?)?;
            let reals = data(take("dir_reals")?)?;
            let ident =
                PerCpuArray::try_from(take("dir_ident")?).map_err(|e| err("dir_ident", e))?;
            let tx_ports =
                DevMapHash::try_from(take("dir_tx_ports")?).map_err(|e| err("dir_tx_ports", e))?;
            let events =
                Some(RingBuf::try_from(take("dir_events")?).map_err(|e| err("dir_events", e))?);
            let mut p = XdpProgram {
                ebpf,
                addrs,
                ports,
                ifaces,
                xsks,
                stats,
                flows,
                nexthops,
                reals,
                ident,
                tx_ports,
                events,
                attached: Vec::new(),
                current: Steering::default(),
            };
            p.spread_tun_ident()?;
            Ok(p)
        }

        /// The fast path's maps, for the manager and the sweep (valid while `self` lives).
        pub fn fast_maps(&self) -> FastMaps {
            FastMaps {
                flows: self.flows.fd().as_fd().as_raw_fd(),
                nexthops: self.nexthops.fd().as_fd().as_raw_fd(),
                reals: self.reals.fd().as_fd().as_raw_fd(),
            }
        }

        /// The ring buffer of the program's events (once: its reader is the manager).
        pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
            self.events.take()
        }

        /// Frames may be redirected out of `ifindex`.
        pub fn add_tx_port(&mut self, ifindex: u32) -> io::Result<()> {
            self.tx_ports
                .insert(ifindex, ifindex, None, 0)
                .map_err(|e| err("cannot fill dir_tx_ports", e))
        }

        /// The next identification every CPU writes into an outer (TUN) header, one after
        /// the other (for tests that compare with one engine worker's).
        pub fn set_tun_ident(&mut self, next: u32) -> io::Result<()> {
            let cpus = crate::io::bpf::possible_cpus()?;
            self.set_ident(vec![Ident { next, step: 1 }; cpus])
        }

        /// CPU c of n hands out c, c + n, c + 2n... (the datapath's setting).
        pub fn spread_tun_ident(&mut self) -> io::Result<()> {
            let cpus = crate::io::bpf::possible_cpus()?;
            self.set_ident(
                (0..cpus)
                    .map(|c| Ident {
                        next: c as u32,
                        step: cpus as u32,
                    })
                    .collect(),
            )
        }

        fn set_ident(&mut self, v: Vec<Ident>) -> io::Result<()> {
            let values = aya::maps::PerCpuValues::try_from(v).map_err(|e| err("dir_ident", e))?;
            self.ident
                .set(0, values, 0)
                .map_err(|e| err("dir_ident", e))
        }

        /// Runs the program once on `frame` as if received on `ingress_ifindex`, queue 0
        /// (`BPF_PROG_TEST_RUN`): the XDP action and the frame as the program left it.
        pub fn run_test(
            &mut self,
            frame: &[u8],
            ingress_ifindex: u32,
        ) -> io::Result<(u32, Vec<u8>)> {
            let prog: &Xdp = self
                .ebpf
                .program(PROGRAM)
                .expect("checked at load")
                .try_into()
                .expect("checked at load");
            let fd = prog
                .fd()
                .map_err(|e| err("the XDP program", e))?
                .as_fd()
                .as_raw_fd();
            crate::io::bpf::xdp_test_run(fd, frame, ingress_ifindex)
        }

        /// Makes room on `ifindex` for this program: a `director_xdp` left attached through
        /// netlink by an earlier run (a program attached through a BPF link goes with its
        /// process, but one attached the old way stays) is detached; any other program is
        /// not ours to remove, and the start stops there.
        fn clear_stale(ifindex: u32, name: &str) -> io::Result<()> {
            let mut rtnl = crate::io::netlink::Rtnl::new()?;
            let Some((id, flags)) = rtnl.xdp_program(ifindex)? else {
                return Ok(());
            };
            let prog_name = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.id() == id)
                .and_then(|p| p.name_as_str().map(str::to_owned))
                .unwrap_or_default();
            // The kernel keeps 16 bytes of a program's name.
            if !PROGRAM.starts_with(&prog_name) || prog_name.is_empty() {
                return Err(io::Error::other(format!(
                    "{name} already runs the XDP program id {id} ({prog_name:?}), not directord's:                      detach it (ip link set dev {name} xdp off) or set [datapath] xdp = \"off\""
                )));
            }
            tracing::warn!(
                interface = name,
                id,
                "replacing a director_xdp program left attached by an earlier run"
            );
            rtnl.detach_xdp(ifindex, flags).map_err(|e| {
                err(
                    &format!("cannot detach the earlier run's XDP program (id {id}) from {name}: another directord may be running"),
                    e,
                )
            })
        }

        /// Attach to `ifindex` (`name` for messages) as asked; returns the mode in force.
        pub fn attach(
            &mut self,
            ifindex: u32,
            name: &str,
            want: XdpWant,
        ) -> io::Result<AttachMode> {
            Self::clear_stale(ifindex, name)?;
            let prog: &mut Xdp = self
                .ebpf
                .program_mut(PROGRAM)
                .expect("checked at load")
                .try_into()
                .expect("checked at load");
            let mut try_mode = |mode: AttachMode| {
                let m = match mode {
                    AttachMode::Native => XdpMode::Driver,
                    AttachMode::Generic => XdpMode::Skb,
                };
                prog.attach_to_if_index(ifindex, m).map(drop)
            };
            let mode = match want {
                XdpWant::Native => try_mode(AttachMode::Native)
                    .map(|()| AttachMode::Native)
                    .map_err(|e| {
                        err(
                            &format!("cannot attach XDP in native mode to {name} (its driver may have no XDP support; xdp = \"generic\" or \"auto\" works on any device)"),
                            e,
                        )
                    })?,
                XdpWant::Generic => try_mode(AttachMode::Generic)
                    .map(|()| AttachMode::Generic)
                    .map_err(|e| err(&format!("cannot attach XDP in generic mode to {name}"), e))?,
                XdpWant::Auto => match try_mode(AttachMode::Native) {
                    Ok(()) => AttachMode::Native,
                    Err(native) => {
                        tracing::info!(interface = name, "native XDP not available ({native}); trying generic");
                        try_mode(AttachMode::Generic).map_err(|e| {
                            err(&format!("cannot attach XDP to {name} natively ({native}) or generically"), e)
                        })?;
                        AttachMode::Generic
                    }
                },
            };
            self.attached.push((ifindex, name.to_string(), mode));
            Ok(mode)
        }

        /// The interfaces the program runs on and how.
        pub fn attached(&self) -> &[(u32, String, AttachMode)] {
            &self.attached
        }

        /// Give `ifindex` its row in the socket map.
        pub fn register_interface(&mut self, ifindex: u32, slot: u32) -> io::Result<()> {
            self.ifaces
                .insert(ifindex, slot, 0)
                .map_err(|e| err("cannot fill dir_ifaces", e))
        }

        /// The AF_XDP socket `fd` takes the frames of (`slot`, `queue`).
        pub fn set_socket(&mut self, slot: u32, queue: u32, fd: RawFd) -> io::Result<()> {
            self.xsks
                .set(slot * MAX_QUEUES + queue, fd, 0)
                .map_err(|e| err("cannot fill dir_xsks", e))
        }

        /// Make the maps hold `want`: add and change what differs, remove what is gone.
        pub fn sync(&mut self, want: &Steering) -> io::Result<()> {
            if *want == self.current {
                return Ok(());
            }
            if want.addrs.len() > MAX_ADDRS || want.ports.len() > MAX_PORTS {
                return Err(io::Error::other(format!(
                    "too many addresses ({}, at most {MAX_ADDRS}) or service ports ({}, at most {MAX_PORTS}) for the XDP maps",
                    want.addrs.len(),
                    want.ports.len()
                )));
            }
            for (k, v) in &want.addrs {
                if self.current.addrs.get(k) != Some(v) {
                    self.addrs
                        .insert(*k, *v, 0)
                        .map_err(|e| err("dir_addrs", e))?;
                }
            }
            for k in self.current.addrs.keys() {
                if !want.addrs.contains_key(k) {
                    let _ = self.addrs.remove(k);
                }
            }
            for (k, v) in &want.ports {
                if self.current.ports.get(k) != Some(v) {
                    self.ports
                        .insert(*k, *v, 0)
                        .map_err(|e| err("dir_ports", e))?;
                }
            }
            for k in self.current.ports.keys() {
                if !want.ports.contains_key(k) {
                    let _ = self.ports.remove(k);
                }
            }
            self.current = want.clone();
            Ok(())
        }

        /// The program's counters, summed over CPUs.
        pub fn stats(&self) -> XdpStats {
            let sum =
                |i: u32| -> u64 { self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
            XdpStats {
                passed: sum(0),
                slow_path: sum(1),
                no_socket: sum(2),
                fast_in: sum(3),
                fast_out: sum(4),
            }
        }
    }
}

#[cfg(not(director_bpf))]
mod imp {
    use super::*;

    /// No program in this build.
    pub fn object() -> Option<&'static [u8]> {
        None
    }

    /// No program in this build.
    pub fn ceiling_object() -> Option<&'static [u8]> {
        None
    }

    /// Stands in for the program in a build without one: every use says why it is missing.
    pub struct XdpProgram(());

    impl XdpProgram {
        pub fn load(_flows: u32) -> io::Result<XdpProgram> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this directord was built without its XDP program (clang was missing at build \
                 time): install clang and rebuild, or set [datapath] xdp = \"off\"",
            ))
        }
        pub fn attach(&mut self, _: u32, _: &str, _: XdpWant) -> io::Result<AttachMode> {
            unreachable!("load() never returns a program in this build")
        }
        pub fn attached(&self) -> &[(u32, String, AttachMode)] {
            &[]
        }
        pub fn register_interface(&mut self, _: u32, _: u32) -> io::Result<()> {
            unreachable!("load() never returns a program in this build")
        }
        pub fn set_socket(&mut self, _: u32, _: u32, _: RawFd) -> io::Result<()> {
            unreachable!("load() never returns a program in this build")
        }
        pub fn sync(&mut self, _: &Steering) -> io::Result<()> {
            unreachable!("load() never returns a program in this build")
        }
        pub fn stats(&self) -> XdpStats {
            XdpStats::default()
        }
        pub fn fast_maps(&self) -> crate::io::fastpath::FastMaps {
            unreachable!("load() never returns a program in this build")
        }
        pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
            None
        }
        pub fn add_tx_port(&mut self, _: u32) -> io::Result<()> {
            unreachable!("load() never returns a program in this build")
        }
        pub fn set_tun_ident(&mut self, _: u32) -> io::Result<()> {
            unreachable!("load() never returns a program in this build")
        }
        pub fn run_test(&mut self, _: &[u8], _: u32) -> io::Result<(u32, Vec<u8>)> {
            unreachable!("load() never returns a program in this build")
        }
    }
}

pub use imp::{ceiling_object, object, XdpProgram};

/// The number of receive queues of interface `name` (its `queues/rx-N` in sysfs).
pub fn rx_queues(name: &str) -> io::Result<u32> {
    let dir = format!("/sys/class/net/{name}/queues");
    let n = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    Ok(u32::try_from(n).unwrap_or(u32::MAX).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_matches_the_program() {
        assert_eq!(std::mem::size_of::<L4Key>(), 8);
        let k = L4Key::new(Ipv4Addr::new(198, 18, 1, 100), 80, 6);
        // Network order in memory, as the program reads the packet.
        assert_eq!(k.addr.to_ne_bytes(), [198, 18, 1, 100]);
        assert_eq!(k.port.to_ne_bytes(), [0, 80]);
        assert_eq!((k.proto, k.pad), (6, 0));
    }
}
