//! The advertisement socket: a raw IPv4 socket for IP protocol 112 on one interface.
//!
//! One socket does both directions:
//!
//! - Receive: the socket is bound to the interface (`SO_BINDTODEVICE`) but not to an address,
//!   so it gets every protocol 112 datagram the kernel accepts locally on that interface:
//!   unicast to any address of the box, and multicast to 224.0.0.18 when the socket joined it
//!   there. `IP_MULTICAST_ALL` is off, so groups joined by other sockets (another instance,
//!   another program) do not leak in, and `IP_MULTICAST_LOOP` is off, so our own adverts do
//!   not come back.
//! - Send: binding a raw socket to the source address would also filter what it receives
//!   (only datagrams addressed to that address), which would lose multicast. So the source
//!   address and the interface travel with each datagram instead, in an `IP_PKTINFO` control
//!   message (`ipi_spec_dst` = source, `ipi_ifindex` = interface); the kernel builds the IP
//!   header with it. TTL 255 (RFC 9568 §5.1.1.3) is set for unicast (`IP_TTL`) and multicast
//!   (`IP_MULTICAST_TTL`).
//!
//! Hence a single file descriptor to poll, [`AdvertSocket::fd`].

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{cvt, setsockopt};
use crate::wire::{IPPROTO_VRRP, MULTICAST_V4, TTL};

/// A raw IP protocol 112 socket on one interface. Non-blocking.
#[derive(Debug)]
pub struct AdvertSocket {
    fd: OwnedFd,
    ifindex: u32,
    src: Ipv4Addr,
}

fn in_addr(a: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from_ne_bytes(a.octets()),
    }
}

impl AdvertSocket {
    /// Opens the socket of interface `ifname` (index `ifindex`), sending from `src`; joins
    /// 224.0.0.18 on that interface when `multicast`. Anything that reached the socket before
    /// its options were in place is discarded before this returns.
    pub fn open(ifname: &str, ifindex: u32, src: Ipv4Addr, multicast: bool) -> io::Result<Self> {
        if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad interface name {ifname:?}"),
            ));
        }
        // SAFETY: socket(2) has no memory-safety preconditions.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(IPPROTO_VRRP),
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = AdvertSocket { fd, ifindex, src };
        let s = sock.fd.as_raw_fd();

        // SAFETY: the name's bytes are live for the call and the length is theirs.
        cvt(unsafe {
            libc::setsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                ifname.as_ptr().cast(),
                ifname.len() as libc::socklen_t,
            )
        })?;
        setsockopt(
            s,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_ALL,
            &0 as &libc::c_int,
        )?;
        setsockopt(
            s,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_LOOP,
            &0 as &libc::c_int,
        )?;
        let ttl = libc::c_int::from(TTL);
        setsockopt(s, libc::IPPROTO_IP, libc::IP_TTL, &ttl)?;
        setsockopt(s, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, &ttl)?;
        // The per-datagram IP_PKTINFO already picks interface and source; this makes a
        // multicast send without it agree.
        let mc_if = libc::ip_mreqn {
            imr_multiaddr: in_addr(Ipv4Addr::UNSPECIFIED),
            imr_address: in_addr(src),
            imr_ifindex: ifindex as libc::c_int,
        };
        setsockopt(s, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mc_if)?;
        if multicast {
            let group = libc::ip_mreqn {
                imr_multiaddr: in_addr(MULTICAST_V4),
                imr_address: in_addr(Ipv4Addr::UNSPECIFIED),
                imr_ifindex: ifindex as libc::c_int,
            };
            setsockopt(s, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &group)?;
        }

        // Between socket() and SO_BINDTODEVICE the socket received from every interface.
        let mut scratch = [0u8; 64];
        loop {
            // SAFETY: `scratch` is writable for its whole length.
            let n = unsafe {
                libc::recv(
                    s,
                    scratch.as_mut_ptr().cast(),
                    scratch.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                return Err(e);
            }
        }
        Ok(sock)
    }

    /// The descriptor to poll for `POLLIN` (adverts to [`recv`](Self::recv)). Sends never
    /// wait, so there is nothing to poll for on that side.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// [`fd`](Self::fd), borrowed.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// The interface index given to [`open`](Self::open).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The source address of what [`send`](Self::send) sends.
    pub fn src(&self) -> Ipv4Addr {
        self.src
    }

    /// The next datagram, whole: the IPv4 header as received (Linux, unlike the BSDs, leaves
    /// every field in network order) followed by the VRRP message. `None` when nothing is queued. A datagram longer than
    /// `buf` is consumed and reported as `InvalidData`; size `buf` for the interface MTU.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "VRRP datagram of {n} bytes dropped: receive buffer holds {}",
                    buf.len()
                ),
            ));
        }
        Ok(Some(n))
    }

    /// Sends `payload` (a VRRP message) to `dst`, unicast or multicast, out of this socket's
    /// interface with source address [`src`](Self::src) and TTL 255; the kernel adds the IP
    /// header. Never waits: a full queue is `WouldBlock` (or `ENOBUFS`), for the caller to
    /// count; the next advert interval sends again anyway.
    /// `src` must be an address of this box (the kernel refuses to send from any other
    /// with `EINVAL`), normally the interface's primary address (RFC 9568 §5.1.1.1).
    pub fn send(&self, payload: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let mut to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: in_addr(dst),
            sin_zero: [0; 8],
        };
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        // u64 elements give the alignment cmsghdr needs.
        let mut control = [0u64; 8];
        // SAFETY: CMSG_SPACE is pure arithmetic.
        let space = unsafe { libc::CMSG_SPACE(mem::size_of::<libc::in_pktinfo>() as u32) };
        debug_assert!(space as usize <= mem::size_of_val(&control));
        // SAFETY: zeroed msghdr is a valid empty header; every pointer set below outlives the
        // sendmsg call.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&mut to as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let info = libc::in_pktinfo {
            ipi_ifindex: self.ifindex as libc::c_int,
            ipi_spec_dst: in_addr(self.src),
            ipi_addr: in_addr(Ipv4Addr::UNSPECIFIED),
        };
        // SAFETY: msg_control points at `control`, which has room for one header plus an
        // in_pktinfo (checked above), so CMSG_FIRSTHDR is non-null and CMSG_DATA is in bounds.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::IPPROTO_IP;
            (*cmsg).cmsg_type = libc::IP_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<libc::in_pktinfo>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
        }
        // SAFETY: `msg` and everything it points to are valid for the call.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != payload.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {n} of {} bytes", payload.len()),
            ));
        }
        Ok(())
    }
}

impl AsRawFd for AdvertSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for AdvertSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
