//! Connection-state sync for Director: each node streams its connection-table changes to
//! its peer, so the standby holds a live replica and a failover drops no flow.
//!
//! - [`wire`]: the versioned, authenticated wire format.
//! - [`session`]: the sans-I/O replication session (sequence numbers, NACK repair from a
//!   ring, bulk resync, acknowledgements).
//! - [`io`]: UDP on the sync interface (unicast peer or multicast group).
//! - [`adapter`]: the bridge to the forwarder's connection table (change stream in,
//!   replicas out) and the thread that runs it all.

pub mod adapter;
pub mod io;
pub mod session;
pub mod wire;
