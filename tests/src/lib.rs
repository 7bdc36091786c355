//! The network-namespace lab: topology builder with RAII teardown, lab servers and
//! benchmark drivers.
//!
//! - `harness`: the test harness of `tests/tests/*.rs` (a test this machine cannot run is
//!   reported as ignored, never as passed; under CI it fails).
//! - `lab`: hosts (network namespaces), bridges, veth links, processes inside hosts,
//!   captures, and the teardown that removes all of it (see its module docs).
//! - `pattern`: the deterministic byte stream `labsrv` serves on `/stream`, so a client can
//!   check that a long-lived connection delivered every byte in order.
//! - `keepalived`: keepalived as a lab VRRP peer (config, start, state from its log, stop/kill).
//! - `nginx`: Debian's nginx as a real server behind the PROXY protocol (FULLNAT).
//! - `topo`, `pair`, `router`: single-director, HA-pair and routed topologies of every mode.
//! - `tool`: what the small tools `bareforward` and `xdpceiling` share (arguments, interface
//!   indexes, a stop flag for SIGTERM/SIGINT).
//! - `bin/labsrv`: the real server (HTTP/1.1 + UDP echo) used as a lab real server.
//! - `bin/ipip-decap`: LAB STAND-IN for a stock kernel's `ipip` device on TUN real servers
//!   (this host kernel has no ipip module): raw IP-protocol-4 socket → TUN device.

pub mod chaos;
pub mod flows;
pub mod harness;
pub mod keepalived;
pub mod lab;
pub mod labpkt;
pub mod nginx;
pub mod pair;
pub mod pattern;
pub mod router;
pub mod tool;
pub mod topo;
pub mod vm;

pub use lab::{
    mono_ns, parse_pcap, preflight, reap_stale, udp_request, under_ci, wait_until, write_file,
    Bridge, Capture, Cidr, Host, Iface, Lab, Mac, Proc, Signal,
};
