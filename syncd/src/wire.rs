//! The sync wire format, version 1.2.
//!
//! One UDP datagram is one message:
//!
//! ```text
//!  0               4       5       6       7       8              12
//!  +---------------+-------+-------+-------+-------+---------------+
//!  | magic "DSYN"  | major | minor | kind  | flags | node id (u32) |
//!  +---------------+-------+-------+-------+-------+---------------+
//!  | epoch (u64)                   | seq (u64)                     |
//!  +-------+-------+-------+-------+-------------------------------+
//!  | count (u16)   | reserved (0)  |   body (postcard) ...
//!  +---------------+---------------+-------------------------------+
//!  | HMAC-SHA256 of everything before it (32 bytes)                |
//!  +---------------------------------------------------------------+
//! ```
//!
//! All header integers are big-endian; the header is 32 bytes. `node id` names the sender
//! (a hash of its `[node] name`), `epoch` one run of it (its start time in microseconds,
//! so a restart has a larger one), `seq` numbers the sender's messages in two spaces: data
//! messages (which the receiver applies in that order and repairs by NACK) and control
//! messages (heartbeats and NACKs, each newer than the last); `count` is the number of
//! entries in a data message. A message from an older epoch, or with a sequence number
//! already seen, is a replay and is dropped.
//!
//! Bodies, by kind, all [postcard](https://docs.rs/postcard):
//! - [`Kind::Data`]: a [`DataHead`] then `count` entries, each a varint length followed by
//!   a postcard [`Entry`]. The length lets a newer minor version append fields to an entry
//!   (an older reader skips them; a newer reader treats absent fields as their default).
//!   The entry's fields, in wire order:
//!
//!   | since | field | postcard type | meaning |
//!   |-------|-------|---------------|---------|
//!   | 1.0 | `op` | u8 | [`Op`]: 0 upsert, 1 delete |
//!   | 1.0 | `proto` | u8 | IP protocol: 6 TCP, 17 UDP |
//!   | 1.0 | `mode` | u8 | 0 NAT, 1 DR, 2 TUN, 3 FULLNAT |
//!   | 1.0 | `state` | u8 | connection state (`forwarder::conntrack::ConnState`) |
//!   | 1.0 | `flags` | u8 | the entry's caller flags (persistence) |
//!   | 1.0 | `client`, `client_port` | [u8; 4], varint u16 | the client |
//!   | 1.0 | `vip`, `vip_port` | [u8; 4], varint u16 | the service |
//!   | 1.0 | `real`, `real_port` | [u8; 4], varint u16 | the real server |
//!   | 1.0 | `local` | Option<([u8; 4], varint u16)> | FULLNAT LIP and local port |
//!   | 1.0 | `remaining` | varint u32 | seconds left on the sender's clock |
//!   | 1.1 | `proxy` | Option<(varint u32, varint u16)> | FULLNAT PROXY protocol sequence shift: (client ISN, header length) |
//!
//!   A 1.0 entry (it ends after `remaining`) is read by a 1.1 reader with `proxy = None`.
//! - [`Kind::Heartbeat`]: a [`Heartbeat`] (acknowledgement and liveness). Since 1.2 its
//!   1.1 fields are followed by `claims`, a postcard `Vec<`[`Claim`]`>`: what the sender's
//!   VRRP instances are and say (VRID, state, priority, primary address), which the peer
//!   uses to corroborate the adverts it hears (`vrrp::instance`, the pair's peer). A 1.1
//!   heartbeat (it ends after `resyncing`) is read with no claims.
//! - [`Kind::Nack`]: a [`Nack`] (sequence numbers to send again).
//!
//! A reader accepts any minor version of its major version and ignores bytes after the
//! structures it knows. The MAC covers the header and the body; it is checked before
//! anything else is believed.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub const MAGIC: [u8; 4] = *b"DSYN";
pub const VERSION_MAJOR: u8 = 1;
pub const VERSION_MINOR: u8 = 2;
pub const HEADER_LEN: usize = 32;
pub const MAC_LEN: usize = 32;
/// Largest datagram we send: an Ethernet MTU of 1500 less the IPv4 and UDP headers.
pub const MAX_DATAGRAM: usize = 1472;
/// Shortest key accepted from `key_file`.
pub const MIN_KEY_LEN: usize = 16;

/// Message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Data = 1,
    Heartbeat = 2,
    Nack = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Data),
            2 => Some(Kind::Heartbeat),
            3 => Some(Kind::Nack),
            _ => None,
        }
    }
}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub minor: u8,
    pub kind: Kind,
    pub flags: u8,
    pub node: u32,
    pub epoch: u64,
    pub seq: u64,
    pub count: u16,
}

/// What one entry says about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Op {
    /// Insert it, or bring it to this state.
    Upsert = 0,
    /// It was removed on purpose (expiry is not synced: each side expires by its timers).
    Delete = 1,
}

/// One connection on the wire: about 28 bytes for a NAT/DR flow, against IPVS sync v1's 36.
///
/// Serialized, it is every field in order. Deserialized, it is the 1.0 fields only: the
/// fields later minor versions appended (`#[serde(skip_deserializing)]`) are read by
/// [`decode`] from the bytes after them, each only when the entry is long enough to hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub op: u8,
    /// `forwarder::model::Protocol` as u8 (6 TCP, 17 UDP).
    pub proto: u8,
    /// `forwarder::model::Mode` as u8.
    pub mode: u8,
    /// `forwarder::conntrack::ConnState` as u8.
    pub state: u8,
    /// `ConnEntry` caller flags (persistence).
    pub flags: u8,
    pub client: [u8; 4],
    pub client_port: u16,
    pub vip: [u8; 4],
    pub vip_port: u16,
    pub real: [u8; 4],
    pub real_port: u16,
    /// FULLNAT local address and port.
    pub local: Option<([u8; 4], u16)>,
    /// Seconds the connection has left on the sender's clock.
    pub remaining: u32,
    /// Since 1.1: the PROXY protocol sequence shift of a FULLNAT connection, as
    /// (the client's initial sequence number, the inserted header's length).
    #[serde(skip_deserializing)]
    pub proxy: Option<(u32, u16)>,
}

impl Entry {
    pub fn op(&self) -> Option<Op> {
        match self.op {
            0 => Some(Op::Upsert),
            1 => Some(Op::Delete),
            _ => None,
        }
    }

    pub fn client(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.client), self.client_port)
    }

    pub fn vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.vip), self.vip_port)
    }

    pub fn real(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.real), self.real_port)
    }

    pub fn local(&self) -> Option<SocketAddrV4> {
        self.local
            .map(|(a, p)| SocketAddrV4::new(Ipv4Addr::from(a), p))
    }

    /// The connection's identity: protocol, client and VIP (the inbound key).
    pub fn key(&self) -> (u8, SocketAddrV4, SocketAddrV4) {
        (self.proto, self.client(), self.vip())
    }
}

/// Marks the data messages of a bulk resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bulk {
    /// The epoch of the receiver this resync is for.
    pub target_epoch: u64,
    /// Numbers the resyncs of one sender epoch.
    pub id: u32,
    /// Sequence number of the resync's first message: a receiver that joins in the middle
    /// asks for everything from there.
    pub start_seq: u64,
    pub phase: Phase,
    /// Entries of this resync in the messages before this one (in the End: all of them).
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The first message: everything older than it is superseded.
    Start,
    Middle,
    /// The last message: the receiver now holds the sender's whole table.
    End,
}

/// The head of a data message's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataHead {
    pub bulk: Option<Bulk>,
}

/// One VRRP instance of the sender, as its heartbeat tells the peer (since 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    pub vrid: u8,
    /// `vrrp::instance::State` as u8 (0 initialize, 1 backup, 2 master, 3 fault).
    pub state: u8,
    /// The priority it advertises (its effective priority).
    pub priority: u8,
    /// The source address of its adverts (the instance's primary address).
    pub addr: [u8; 4],
}

/// Liveness and acknowledgement, sent every heartbeat interval and after a run of data.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The highest data sequence number the sender has used.
    pub high: u64,
    /// The epoch of the peer whose stream `ack` refers to (0: none heard yet).
    pub peer_epoch: u64,
    /// Every data message of that stream up to this one has been applied.
    pub ack: u64,
    /// The resync the sender is running for the peer, if any: (target epoch, start seq).
    pub bulk: Option<(u64, u64)>,
    /// The sender has not finished receiving a resync of the peer's table.
    pub resyncing: bool,
    /// Since 1.2: the sender's VRRP instances (read by [`decode`] from the bytes after the
    /// 1.1 fields).
    #[serde(skip_deserializing)]
    pub claims: Vec<Claim>,
}

/// Sequence numbers missing from the peer's stream, as inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Nack {
    pub peer_epoch: u64,
    pub ranges: Vec<(u64, u64)>,
}

/// Why a datagram was refused. Each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// shorter than a header and a MAC
    #[error("truncated")]
    Truncated,
    /// wrong magic
    #[error("not a sync datagram (bad magic)")]
    BadMagic,
    /// MAC check failed: wrong key, forged or altered
    #[error("authentication failed")]
    Auth,
    /// another major version
    #[error("unsupported major version")]
    Version,
    /// the body does not decode
    #[error("malformed body")]
    Malformed,
}

impl DecodeError {
    pub fn label(self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::Auth => "auth",
            DecodeError::Version => "version",
            DecodeError::Malformed => "malformed",
        }
    }
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Data(DataHead, Vec<Entry>),
    Heartbeat(Heartbeat),
    Nack(Nack),
}

/// The HMAC-SHA256 key. Its bytes are the key file's contents without surrounding white
/// space.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Fails on a key shorter than [`MIN_KEY_LEN`].
    pub fn new(bytes: &[u8]) -> Result<Key, String> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(format!(
                "the sync key is {} bytes; it needs at least {MIN_KEY_LEN} (e.g. `head -c 32 /dev/urandom | base64`)",
                bytes.len()
            ));
        }
        Ok(Key(
            Hmac::<Sha256>::new_from_slice(bytes).expect("HMAC takes keys of any length")
        ))
    }

    /// Reads a key file.
    pub fn from_file(path: &std::path::Path) -> Result<Key, String> {
        let raw = std::fs::read(path)
            .map_err(|e| format!("cannot read the sync key {}: {e}", path.display()))?;
        Key::new(raw.trim_ascii()).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A 32-byte secret for another use, HMAC-SHA256(key, `label`): nodes with the same key
    /// derive the same secret, which tells nothing about the key nor about other labels'
    /// secrets. No label may start with [`MAGIC`], so none is the MAC of a message.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        assert!(
            !label.starts_with(&MAGIC),
            "a derive label is not a message"
        );
        self.tag(label)
    }

    fn tag(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.0.clone();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut m = self.0.clone();
        m.update(data);
        m.verify_slice(tag).is_ok()
    }
}

/// FNV-1a of the node name: the node id on the wire.
pub fn node_id(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn put_header(out: &mut Vec<u8>, h: &Header) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION_MAJOR);
    out.push(h.minor);
    out.push(h.kind as u8);
    out.push(h.flags);
    out.extend_from_slice(&h.node.to_be_bytes());
    out.extend_from_slice(&h.epoch.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.count.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

fn seal(mut out: Vec<u8>, key: &Key) -> Vec<u8> {
    let tag = key.tag(&out);
    out.extend_from_slice(&tag);
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn take_varint(buf: &[u8]) -> Option<(usize, &[u8])> {
    let mut v: usize = 0;
    for (i, &b) in buf.iter().enumerate().take(4) {
        v |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, &buf[i + 1..]));
        }
    }
    None
}

/// Builds a data message entry by entry, up to [`MAX_DATAGRAM`].
#[derive(Debug)]
pub struct DataWriter {
    buf: Vec<u8>,
    count: u16,
}

impl DataWriter {
    pub fn new(h: Header, head: &DataHead) -> DataWriter {
        let mut buf = Vec::with_capacity(MAX_DATAGRAM);
        put_header(
            &mut buf,
            &Header {
                kind: Kind::Data,
                count: 0,
                ..h
            },
        );
        let mut scratch = [0u8; 64];
        let head = postcard::to_slice(head, &mut scratch).expect("a DataHead fits 64 bytes");
        buf.extend_from_slice(head);
        DataWriter { buf, count: 0 }
    }

    /// Appends `e`; false (and nothing appended) when it does not fit.
    pub fn push(&mut self, e: &Entry) -> bool {
        let mut scratch = [0u8; 64];
        let bytes = postcard::to_slice(e, &mut scratch).expect("an Entry fits 64 bytes");
        if self.buf.len() + 1 + bytes.len() + MAC_LEN > MAX_DATAGRAM {
            return false;
        }
        put_varint(&mut self.buf, bytes.len());
        self.buf.extend_from_slice(bytes);
        self.count += 1;
        true
    }

    pub fn count(&self) -> usize {
        usize::from(self.count)
    }

    /// The sealed datagram, numbered `seq`.
    pub fn finish(mut self, key: &Key, seq: u64) -> Vec<u8> {
        self.buf[20..28].copy_from_slice(&seq.to_be_bytes());
        self.buf[28..30].copy_from_slice(&self.count.to_be_bytes());
        seal(self.buf, key)
    }
}

/// Encodes a data message; entries that do not fit are left out (see [`DataWriter`]).
pub fn encode_data(key: &Key, h: Header, head: &DataHead, entries: &[Entry]) -> Vec<u8> {
    let mut w = DataWriter::new(h, head);
    for e in entries {
        if !w.push(e) {
            break;
        }
    }
    w.finish(key, h.seq)
}

/// Encodes a heartbeat or a NACK.
pub fn encode_control(key: &Key, h: Header, body: &Body) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let (kind, bytes) = match body {
        Body::Heartbeat(hb) => (Kind::Heartbeat, postcard::to_allocvec(hb)),
        Body::Nack(n) => (Kind::Nack, postcard::to_allocvec(n)),
        Body::Data(..) => unreachable!("data messages go through encode_data"),
    };
    put_header(
        &mut out,
        &Header {
            kind,
            count: 0,
            ..h
        },
    );
    out.extend_from_slice(&bytes.expect("serialize a control body"));
    seal(out, key)
}

/// One entry of any 1.x minor version: the 1.0 fields, then each later field if present.
fn entry(bytes: &[u8]) -> Option<Entry> {
    let (mut e, rest) = postcard::take_from_bytes::<Entry>(bytes).ok()?;
    if !rest.is_empty() {
        e.proxy = postcard::take_from_bytes(rest).ok()?.0;
    }
    Some(e)
}

/// Checks and decodes a datagram. Nothing in it is believed before the MAC matches.
pub fn decode(key: &Key, buf: &[u8]) -> Result<(Header, Body), DecodeError> {
    if buf.len() < HEADER_LEN + MAC_LEN {
        return Err(DecodeError::Truncated);
    }
    if buf[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let (signed, tag) = buf.split_at(buf.len() - MAC_LEN);
    if !key.verify(signed, tag) {
        return Err(DecodeError::Auth);
    }
    if signed[4] != VERSION_MAJOR {
        return Err(DecodeError::Version);
    }
    let kind = Kind::from_u8(signed[6]).ok_or(DecodeError::Malformed)?;
    let be64 = |at: usize| u64::from_be_bytes(signed[at..at + 8].try_into().expect("8 bytes"));
    let h = Header {
        minor: signed[5],
        kind,
        flags: signed[7],
        node: u32::from_be_bytes(signed[8..12].try_into().expect("4 bytes")),
        epoch: be64(12),
        seq: be64(20),
        count: u16::from_be_bytes([signed[28], signed[29]]),
    };
    let body = &signed[HEADER_LEN..];
    let malformed = |_| DecodeError::Malformed;
    let body = match kind {
        Kind::Data => {
            let (head, mut rest) =
                postcard::take_from_bytes::<DataHead>(body).map_err(malformed)?;
            let mut entries = Vec::with_capacity(usize::from(h.count));
            for _ in 0..h.count {
                let (len, after) = take_varint(rest).ok_or(DecodeError::Malformed)?;
                if len > after.len() {
                    return Err(DecodeError::Malformed);
                }
                let e = entry(&after[..len]).ok_or(DecodeError::Malformed)?;
                if e.op().is_none() {
                    return Err(DecodeError::Malformed);
                }
                entries.push(e);
                rest = &after[len..];
            }
            Body::Data(head, entries)
        }
        Kind::Heartbeat => {
            let (mut hb, rest) = postcard::take_from_bytes::<Heartbeat>(body).map_err(malformed)?;
            if !rest.is_empty() {
                hb.claims = postcard::take_from_bytes(rest).map_err(malformed)?.0;
            }
            Body::Heartbeat(hb)
        }
        Kind::Nack => Body::Nack(
            postcard::take_from_bytes::<Nack>(body)
                .map_err(malformed)?
                .0,
        ),
    };
    Ok((h, body))
}
