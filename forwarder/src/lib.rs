//! The datapath of Director.
//!
//! - `model`: services, real servers, modes, schedulers, timeouts (the datapath's config view).
//! - `wire`: zero-copy views over Ethernet, IPv4, TCP, UDP and ICMP, and checksums
//!   (full and RFC 1624 incremental).
//! - `conntrack`: the sharded, bounded connection table with TCP state tracking.
//! - `sched`: rr, wrr, lc, wlc, sh, mh and client-IP persistence.
//! - `fib`: route and neighbour snapshot used to pick egress interface and MACs.
//! - `engine`: pure packet processing: frame + tables → verdict + frame rewritten in place.
//! - `io`: the side effects: AF_PACKET TPACKET_V3 rings, netlink, nftables interception,
//!   worker threads.

pub mod conntrack;
pub mod engine;
pub mod fib;
pub mod io;
pub mod model;
pub mod sched;
pub mod stats;
pub mod wire;
