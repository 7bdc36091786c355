//! Connection-state sync for Director (not built yet; see issue 4).
//!
//! Layout this crate will have:
//! - `wire`: versioned header {magic, version, node id, epoch, seq, count}, postcard entries,
//!   HMAC-SHA256 trailer.
//! - `session`: the sans-I/O replication session (sequence numbers, NACK repair from a ring,
//!   bulk resync).
//! - `io`: UDP on the sync interface (unicast peer or multicast group).
//! - `adapter`: the bridge to the forwarder's connection-table change stream.
