//! VRRP for Director.
//!
//! - [`wire`]: VRRPv3 (RFC 9568 / 5798) and VRRPv2 (RFC 3768) advertisement codec.
//! - [`instance`]: the sans-I/O state machine of RFC 9568 §6 (Initialize, Backup, Master),
//!   driven by `handle(now, input)`, `handle_timeout(now)`, `poll_action()`, `poll_timeout()`.
//! - [`router`]: all instances of a box, with sync groups; tracking (interfaces, service
//!   quorum, datapath heartbeat) is fed to the instances that track each object.
//! - `io`: raw IP protocol 112 socket, VIP add/del over rtnetlink, gratuitous ARP.

pub mod instance;
pub mod router;
pub mod wire;
