//! Gratuitous ARP: after taking a VIP, the new master tells the segment that the VIP now
//! lives at its MAC (RFC 9568 §6.4.2 "broadcast a gratuitous ARP request").
//!
//! The frame is the RFC 5227 §3 ARP Announcement: an ARP request, Ethernet broadcast, with
//! sender and target protocol address both the VIP, sender hardware address our MAC and
//! target hardware address zero. Linux updates an existing neighbour entry from it even
//! within `locktime` (it recognises sender IP = target IP as gratuitous) and, with
//! `arp_accept`, creates one.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
/// Ethernet header (14) + ARP for IPv4 over Ethernet (28) = 42, padded to the 60-byte
/// minimum frame (without FCS) as a NIC would; some switches drop runts.
const FRAME_LEN: usize = 60;

/// An AF_PACKET socket that sends gratuitous ARPs out of one interface. It receives
/// nothing (protocol 0), so there is nothing to poll.
#[derive(Debug)]
pub struct GarpSender {
    fd: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
}

/// The announcement of `vip` at `mac`.
fn announcement(mac: [u8; 6], vip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    let arp = &mut f[14..42];
    arp[0..2].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    arp[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    arp[8..14].copy_from_slice(&mac);
    arp[14..18].copy_from_slice(&vip.octets());
    // Target hardware address [18..24] stays zero.
    arp[24..28].copy_from_slice(&vip.octets());
    f
}

impl GarpSender {
    /// A sender on interface `ifindex` whose frames carry `mac` (the interface's own MAC, or
    /// the VRRP virtual MAC when one is in use).
    pub fn open(ifindex: u32, mac: [u8; 6]) -> io::Result<GarpSender> {
        // SAFETY: socket(2) has no memory-safety preconditions.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sll = Self::sockaddr(ifindex, 0);
        // SAFETY: `sll` is a valid sockaddr_ll and the length is its size.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(GarpSender { fd, ifindex, mac })
    }

    fn sockaddr(ifindex: u32, protocol: u16) -> libc::sockaddr_ll {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol.to_be();
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        sll
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends one announcement of `vip`. Never waits and never retries: a full device queue
    /// comes back as the error (`WouldBlock` or `ENOBUFS`), for the caller to count; the
    /// caller's repeat schedule (RFC 9568 leaves the count to the implementation) covers it.
    pub fn send(&self, vip: Ipv4Addr) -> io::Result<()> {
        let frame = announcement(self.mac, vip);
        let to = Self::sockaddr(self.ifindex, ETH_P_ARP);
        // SAFETY: `frame` and `to` are live for the call and the lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&to as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {n} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5227 §3 announcement: request, SPA = TPA = VIP, THA zero, broadcast.
    #[test]
    fn test_announcement_bytes() {
        let mac = [0x02, 0x00, 0x5e, 0x00, 0x01, 0x07];
        let f = announcement(mac, Ipv4Addr::new(198, 18, 1, 100));
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x07, // src
            0x08, 0x06, // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4, // Ethernet / IPv4
            0x00, 0x01, // request
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x07, // SHA
            198, 18, 1, 100, // SPA
            0, 0, 0, 0, 0, 0, // THA
            198, 18, 1, 100, // TPA
        ];
        assert_eq!(&f[..42], &want[..]);
        assert!(f[42..].iter().all(|&b| b == 0));
    }
}
