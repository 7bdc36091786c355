//! VRRP for Director.
//!
//! - [`wire`]: VRRPv3 (RFC 9568 / 5798) and VRRPv2 (RFC 3768) advertisement codec.
//! - `instance`: the sans-I/O state machine of RFC 9568 §6 (Initialize, Backup, Master),
//!   driven by `handle(now, input)`, `handle_timeout(now)`, `poll_action()`, `poll_timeout()`.
//! - `group`: sync groups and tracking (interfaces, service quorum, datapath heartbeat).
//! - [`io`]: raw IP protocol 112 socket, VIP add/del and link state over rtnetlink,
//!   gratuitous ARP, real-time scheduling. The only module with side effects.

pub mod io;
pub mod wire;
