//! VRRP for Director.
//!
//! - [`wire`]: VRRPv3 (RFC 9568 / 5798) and VRRPv2 (RFC 3768) advertisement codec.
//! - [`instance`]: the sans-I/O state machine of RFC 9568 §6 (Initialize, Backup, Master),
//!   driven by inputs with their time, `handle_timeout(now)`, `poll_action()`,
//!   `poll_timeout()`.
//! - [`router`]: all instances of a box, with sync groups; tracking (interfaces, service
//!   quorum, datapath heartbeat) is fed to the instances that track each object.
//! - [`io`]: raw IP protocol 112 socket, VIP add/del and link state over rtnetlink,
//!   gratuitous ARP, real-time scheduling.
//! - [`driver`]: the thread that runs a router against those sockets.
//! - [`notify`]: notify hooks, run off the timer thread.

pub mod driver;
pub mod instance;
pub mod io;
pub mod notify;
pub mod router;
pub mod wire;
