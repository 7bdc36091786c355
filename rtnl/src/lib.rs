//! One rtnetlink request/reply loop, shared by the datapath's resolver (`forwarder`) and the
//! VRRP engine (`vrrp`), each of which builds its own requests on top.
//!
//! Synchronous on purpose: the kernel answers an rtnetlink request while handling the `send`
//! (and produces the parts of a dump while handling each `recv`), so a request never waits on
//! the network, and each caller runs it on a thread of its own. A receive timeout guards
//! against a lost reply; a reply to an earlier request (one that timed out) is skipped by its
//! sequence number. Messages in one datagram are walked at their 4-byte aligned lengths
//! (`NLMSG_ALIGN`), as the kernel pads them.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST};

/// How long a request waits for the kernel's reply before giving up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// A NETLINK_ROUTE socket for requests (not notifications), in the network namespace it was
/// created in.
pub struct Conn {
    sock: Socket,
    seq: u32,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

impl Conn {
    pub fn new() -> io::Result<Conn> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let timeout = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: REPLY_TIMEOUT.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: `timeout` is a live timeval and the length passed is exactly its size.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Conn {
            sock,
            seq: 0,
            tx: Vec::new(),
            rx: vec![0; 1 << 16],
        })
    }

    /// Sends `msg` with `flags` and collects the replies: every part of a dump
    /// (`NLM_F_DUMP`), the one reply of a get, or nothing for an acknowledged change
    /// (`NLM_F_ACK`). A negative acknowledgement is the error, with the kernel's errno.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        self.tx.clear();
        self.tx.resize(req.buffer_len(), 0);
        req.serialize(&mut self.tx);
        self.sock.send(&self.tx, 0)?;

        let mut out = Vec::new();
        loop {
            let n = match self.sock.recv(&mut &mut self.rx[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if let Some(done) = take_replies(&self.rx[..n], self.seq, flags, &mut out)? {
                return done.map(|()| out);
            }
        }
    }

    /// A dump request (`NLM_F_REQUEST | NLM_F_DUMP`): every part.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.request(msg, NLM_F_REQUEST | NLM_F_DUMP)
    }
}

/// The messages of one received datagram for request `seq` (sent with `flags`), appended to
/// `out`. `Some(Ok)` when the request is complete, `Some(Err)` when the kernel refused it,
/// `None` when more is to come.
fn take_replies(
    buf: &[u8],
    seq: u32,
    flags: u16,
    out: &mut Vec<RouteNetlinkMessage>,
) -> io::Result<Option<io::Result<()>>> {
    let mut off = 0;
    while off < buf.len() {
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}")))?;
        let len = msg.header.length as usize;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "netlink: zero-length message",
            ));
        }
        // NLMSG_ALIGN: messages are padded to 4 bytes; the length field does not count the
        // padding.
        off += (len + 3) & !3;
        if msg.header.sequence_number != seq {
            continue;
        }
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(Some(Ok(()))),
            NetlinkPayload::Error(e) => {
                return Ok(Some(match e.code {
                    None => Ok(()),
                    Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                }));
            }
            NetlinkPayload::InnerMessage(m) => {
                out.push(m);
                if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 {
                    return Ok(Some(Ok(())));
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DoneMessage, ErrorMessage};
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    fn bytes(seq: u32, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        let mut m = NetlinkMessage::new(header, payload);
        m.finalize();
        let mut b = vec![0u8; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    fn link(name: &str) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut l = LinkMessage::default();
        l.attributes.push(LinkAttribute::IfName(name.into()));
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
    }

    /// A datagram whose first message's length is not a multiple of 4 (padded after it, as
    /// the kernel pads): the walk must step over the padding to find the next message.
    #[test]
    fn messages_are_walked_at_their_aligned_lengths() {
        let mut first = bytes(7, link("eth0"));
        // Cut the message to an unaligned length, then pad it as the kernel would.
        let unaligned = first.len() - 1;
        first.truncate(unaligned);
        first[..4].copy_from_slice(&(unaligned as u32).to_ne_bytes());
        first.resize((unaligned + 3) & !3, 0);
        let mut buf = first;
        buf.extend(bytes(7, link("eth1")));
        buf.extend(bytes(7, NetlinkPayload::Done(DoneMessage::default())));
        let mut out = Vec::new();
        let done = take_replies(&buf, 7, NLM_F_REQUEST | NLM_F_DUMP, &mut out).expect("parsed");
        assert!(matches!(done, Some(Ok(()))));
        assert_eq!(out.len(), 2, "{out:?}");
        let RouteNetlinkMessage::NewLink(l) = &out[1] else {
            panic!("{:?}", out[1]);
        };
        assert_eq!(l.attributes, vec![LinkAttribute::IfName("eth1".into())]);
    }

    #[test]
    fn replies_to_another_request_are_skipped_and_a_nack_is_the_error() {
        let mut buf = bytes(6, link("stale"));
        let mut nack = ErrorMessage::default();
        nack.code = std::num::NonZeroI32::new(-libc::EEXIST);
        buf.extend(bytes(7, NetlinkPayload::Error(nack)));
        let mut out = Vec::new();
        let done = take_replies(&buf, 7, NLM_F_REQUEST | NLM_F_ACK, &mut out).expect("parsed");
        let err = done.expect("complete").expect_err("refused");
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        assert!(out.is_empty(), "the stale reply is skipped: {out:?}");
        // A dump part without its Done: more to come.
        let mut out = Vec::new();
        let more = take_replies(
            &bytes(8, link("eth0")),
            8,
            NLM_F_REQUEST | NLM_F_DUMP,
            &mut out,
        )
        .expect("parsed");
        assert!(more.is_none());
        assert_eq!(out.len(), 1);
    }
}
