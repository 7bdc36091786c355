//! The network-namespace lab: topology builder with RAII teardown, lab servers and
//! benchmark drivers.
//!
//! - `lab`: hosts (network namespaces), bridges, veth links, processes inside hosts,
//!   captures, and the teardown that removes all of it (see its module docs).
//! - `pattern`: the deterministic byte stream `labsrv` serves on `/stream`, so a client can
//!   check that a long-lived connection delivered every byte in order.
//! - `keepalived`: keepalived as a lab VRRP peer (config, start, state from its log, stop/kill).
//! - `bin/labsrv`: the real server (HTTP/1.1 + UDP echo) used as a lab real server.

pub mod flows;
pub mod keepalived;
pub mod lab;
pub mod labpkt;
pub mod pair;
pub mod pattern;
pub mod router;
pub mod topo;
pub mod vm;

pub use lab::{
    mono_ns, parse_pcap, preflight, reap_stale, udp_request, under_ci, wait_until, write_file,
    Bridge, Capture, Cidr, Host, Iface, Lab, Mac, Proc, Signal,
};
