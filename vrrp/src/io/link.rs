//! Link state notifications (`ip monitor link`), for interface tracking and for noticing
//! that the VRRP interface itself lost carrier.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::addr::Link;

/// The legacy rtnetlink multicast group bit of link notifications (`RTMGRP_LINK`).
const RTMGRP_LINK: u32 = 0x1;

/// A link changed, appeared or disappeared. The kernel also notifies changes that do not
/// touch `up` (MTU, addresses, statistics refreshes), so consecutive events may repeat the
/// same state: the consumer compares with what it knew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    pub index: u32,
    pub name: String,
    /// As [`Link::up`]; false for a link that was deleted.
    pub up: bool,
}

/// A non-blocking netlink socket subscribed to link notifications of the network namespace
/// it was created in. Poll [`fd`](Self::fd) for `POLLIN`, then [`drain`](Self::drain). The
/// state before the subscription comes from [`Rtnl::link`](super::addr::Rtnl::link), read
/// after [`LinkWatcher::new`] so that no change falls in between.
pub struct LinkWatcher {
    sock: Socket,
    buf: Vec<u8>,
    overrun: bool,
}

impl LinkWatcher {
    pub fn new() -> io::Result<LinkWatcher> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        sock.set_non_blocking(true)?;
        Ok(LinkWatcher {
            sock,
            buf: vec![0; 1 << 16],
            overrun: false,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// The descriptor to poll for `POLLIN`, borrowed.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.sock)
    }

    /// Every notification queued now, oldest first. When the kernel had to drop some
    /// (socket buffer full), [`take_overrun`](Self::take_overrun) says so.
    pub fn drain(&mut self) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        loop {
            let n = match self.sock.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ENOBUFS: notifications were lost. The socket stays usable.
                    tracing::warn!("link notifications lost: {e}");
                    self.overrun = true;
                    continue;
                }
            };
            let mut off = 0;
            while off < n {
                let msg =
                    match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n]) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!("undecodable link notification: {e}");
                            self.overrun = true;
                            break;
                        }
                    };
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                        let link = Link::from_message(&l);
                        events.push(LinkEvent {
                            index: link.index,
                            name: link.name,
                            up: link.up,
                        });
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                        let link = Link::from_message(&l);
                        events.push(LinkEvent {
                            index: link.index,
                            name: link.name,
                            up: false,
                        });
                    }
                    _ => {}
                }
            }
        }
        events
    }

    /// Whether notifications were lost (or unreadable) since the last call. After `true`, the
    /// caller re-reads every link it tracks with [`Rtnl::link`](super::addr::Rtnl::link).
    pub fn take_overrun(&mut self) -> bool {
        std::mem::take(&mut self.overrun)
    }
}
