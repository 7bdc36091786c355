//! The connection table: every flow the director forwards.
//!
//! - `entry`: [`ConnEntry`], its keys ([`FlowKey`], [`ReplyKey`]) and [`ConnState`].
//! - `tcp`: the IPVS-style TCP state table ([`tcp_next_state`]).

mod entry;
mod tcp;

pub use entry::{ConnEntry, ConnState, FlowKey, NewConn, ReplyKey};
pub use tcp::{tcp_flags, tcp_next_state, Direction};
mod index;
