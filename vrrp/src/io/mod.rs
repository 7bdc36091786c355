//! Side effects of the VRRP engine, for a driver thread that polls file descriptors
//! (`ppoll`) and calls in when one is ready. Nothing here blocks on the network or spawns
//! a thread; nothing here uses tokio.
//!
//! - [`socket`]: [`AdvertSocket`](socket::AdvertSocket), the raw IP protocol 112 socket of one
//!   interface (receive every advert arriving there, send with TTL 255 from a given source).
//! - [`addr`]: [`Rtnl`](addr::Rtnl), rtnetlink requests: add, delete and list IPv4 addresses
//!   (the VIPs), read a link's index, MAC and state.
//! - [`link`]: [`LinkWatcher`](link::LinkWatcher), link up/down notifications.
//! - [`garp`]: [`GarpSender`](garp::GarpSender), gratuitous ARP announcements of a VIP.
//! - [`rt`]: real-time scheduling and locked memory for the driver thread.

pub mod addr;
pub mod garp;
pub mod link;
pub mod rt;
pub mod socket;

use std::io;

/// `Err(last_os_error)` when a libc call returned -1.
fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `setsockopt(fd, level, name, &value, sizeof value)`.
fn setsockopt<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live `T` and the length passed is exactly its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}
