//! `ipip-decap`: **LAB STAND-IN for a stock kernel's `ipip` device** on a TUN-mode real
//! server. Not part of the product, and not needed on a real server whose kernel has the
//! `ipip` module (there: `ip link add tunl0 type ipip`, or `modprobe ipip` and use `tunl0`).
//!
//! The lab's host kernel is built without `ipip`, so a TUN-mode real server cannot take the
//! director's IP-in-IP packets apart by itself. This helper does that in user space, in the
//! real server's network namespace:
//!
//! ```text
//!  eth0 ── [outer IPv4, proto 4 | client packet] ──► raw socket (AF_INET, SOCK_RAW, 4)
//!                                                        │ strip the outer header
//!  the kernel's stack ◄── tun device (IFF_TUN|IFF_NO_PI) ◄┘ write the inner packet
//! ```
//! The inner packet (client → VIP) then arrives on the TUN device exactly as a stock kernel's
//! `tunl0` would hand it over, and the real server (VIP on `lo`, `arp_ignore=1`,
//! `arp_announce=2`) answers the client directly through its default route. Holding a raw
//! socket for protocol 4 also keeps the kernel from answering each IPIP packet with ICMP
//! protocol-unreachable. What the caller must set up in the namespace: `rp_filter` off on
//! `all` and on the TUN device (the client's source address arrives on a device that is not
//! the route back to it), and the VIP on `lo`.
//!
//! ```text
//! ipip-decap [--dev NAME] [--mtu BYTES]      (defaults: decap0, 1500)
//! ```
//! Prints `ready` on stdout once the device is up and the socket open. SIGUSR1 prints the
//! counters so far as one JSON line on stdout; SIGTERM/SIGINT end it, printing them once more:
//! `{"decapsulated":N,"bytes":N,"bad":N,"write_errors":N}` (`bad`: a received packet that
//! is not IPv4-in-IPv4 with consistent lengths; `bytes`: inner bytes written).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, ensure, Context, Result};
use forwarder::wire::Ipv4Packet;

/// IANA protocol number of IP-in-IP (RFC 2003).
const IPPROTO_IPIP: libc::c_int = 4;
const USAGE: &str = "ipip-decap [--dev NAME] [--mtu BYTES]\n\n\
    LAB STAND-IN for a stock kernel's ipip device (this lab's kernel has no ipip module):\n\
    receives IPv4-in-IPv4 packets on a raw socket (protocol 4), strips the outer header and\n\
    writes the inner packet into a TUN device, so the real server's stack receives the\n\
    client's packet as from the wire. Turn rp_filter off on `all` and on the device.\n\
    SIGUSR1: print counters; SIGTERM/SIGINT: print counters and exit.";

static STOP: AtomicBool = AtomicBool::new(false);
static DUMP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

extern "C" fn on_dump(_: libc::c_int) {
    DUMP.store(true, Ordering::Relaxed);
}

/// Why a received packet was not passed on.
#[derive(Debug, PartialEq, Eq)]
enum Bad {
    /// The outer header is not a whole IPv4 header of protocol 4.
    Outer,
    /// The payload is not one whole IPv4 packet.
    Inner,
}

/// The inner packet of an IPv4-in-IPv4 packet as a raw socket returns it (outer header
/// included), trimmed to the inner packet's total length.
fn decap(packet: &[u8]) -> Result<&[u8], Bad> {
    let outer = Ipv4Packet::new_checked(packet).map_err(|_| Bad::Outer)?;
    if outer.protocol() != IPPROTO_IPIP as u8 || outer.is_fragment() {
        return Err(Bad::Outer);
    }
    let start = usize::from(outer.header_len());
    let end = usize::from(outer.total_len());
    let inner = &packet[start..end];
    let len = usize::from(
        Ipv4Packet::new_checked(inner)
            .map_err(|_| Bad::Inner)?
            .total_len(),
    );
    Ok(&inner[..len])
}

#[derive(Default)]
struct Counters {
    decapsulated: u64,
    bytes: u64,
    bad: u64,
    write_errors: u64,
}

impl Counters {
    fn print(&self) {
        println!(
            "{{\"decapsulated\":{},\"bytes\":{},\"bad\":{},\"write_errors\":{}}}",
            self.decapsulated, self.bytes, self.bad, self.write_errors
        );
        let _ = io::stdout().flush();
    }
}

fn ifname_bytes(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ]> {
    ensure!(
        !name.is_empty() && name.len() < libc::IFNAMSIZ && !name.contains('\0'),
        "device name {name:?} must be 1..{} bytes",
        libc::IFNAMSIZ
    );
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as libc::c_char;
    }
    Ok(out)
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = ifname_bytes(name)?;
    Ok(req)
}

/// Creates the TUN device `name` (`ip tuntap add NAME mode tun`, no packet information
/// header) and returns its file: each write is one IPv4 packet for the kernel to receive.
fn open_tun(name: &str) -> Result<File> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("cannot open /dev/net/tun (is the tun driver there, and are we root?)")?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and writes back the name into) the ifreq we own.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc != 0 {
        bail!(
            "TUNSETIFF {name}: {} (does a device of that name exist already?)",
            io::Error::last_os_error()
        );
    }
    Ok(tun)
}

/// `ip link set NAME mtu MTU up`, through the interface ioctls.
fn link_up(name: &str, mtu: u32) -> Result<()> {
    // SAFETY: socket(2) has no memory preconditions; the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    ensure!(raw >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: raw is a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = libc::c_int::try_from(mtu).context("--mtu")?;
    // SAFETY: the ioctls read and write the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut req) } != 0 {
        bail!("set MTU {mtu} on {name}: {}", io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        bail!("read flags of {name}: {}", io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) } != 0 {
        bail!("bring {name} up: {}", io::Error::last_os_error());
    }
    Ok(())
}

/// A raw IPv4 socket for protocol 4: the kernel hands it every IPIP packet addressed to this
/// host, outer header included (and, with a raw socket for the protocol open, does not send
/// protocol-unreachable).
fn open_raw() -> Result<OwnedFd> {
    // SAFETY: socket(2) has no memory preconditions; the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            IPPROTO_IPIP,
        )
    };
    ensure!(
        raw >= 0,
        "raw socket for IP protocol 4: {}",
        io::Error::last_os_error()
    );
    // SAFETY: raw is a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // Room for bursts (the benchmarks): the kernel caps it at rmem_max unless forced.
    let size: libc::c_int = 4 << 20;
    // SAFETY: setsockopt reads an int we own. Best effort: the default buffer also works.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Ok(sock)
}

fn parse_args() -> Result<(String, u32)> {
    let mut dev = "decap0".to_string();
    let mut mtu = 1500;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--dev" => dev = it.next().context("--dev needs a name")?,
            "--mtu" => mtu = it.next().context("--mtu needs a value")?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\nusage: {USAGE}"),
        }
    }
    Ok((dev, mtu))
}

fn main() -> Result<()> {
    let (dev, mtu) = parse_args()?;
    // SAFETY: installing async-signal-safe handlers (they only store to atomics), before any
    // thread exists. No SA_RESTART: poll returns EINTR and the loop looks at the flags.
    unsafe {
        for (sig, handler) in [
            (libc::SIGTERM, on_stop as extern "C" fn(libc::c_int)),
            (libc::SIGINT, on_stop),
            (libc::SIGUSR1, on_dump),
        ] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as libc::sighandler_t;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let raw = open_raw()?;
    let mut tun = open_tun(&dev)?;
    link_up(&dev, mtu)?;
    println!("ready");
    io::stdout().flush()?;

    let mut counters = Counters::default();
    let mut buf = vec![0u8; 65536];
    while !STOP.load(Ordering::Relaxed) {
        if DUMP.swap(false, Ordering::Relaxed) {
            counters.print();
        }
        let mut pfd = libc::pollfd {
            fd: raw.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        let rc = unsafe { libc::poll(&mut pfd, 1, 200) };
        if rc <= 0 {
            continue; // timeout, or EINTR from a signal: look at the flags again
        }
        loop {
            // SAFETY: recv into the buffer we own, non-blocking.
            let n = unsafe {
                libc::recv(
                    raw.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("ipip-decap: recv: {e}");
                }
                break;
            }
            match decap(&buf[..n as usize]) {
                Ok(inner) => match tun.write(inner) {
                    Ok(_) => {
                        counters.decapsulated += 1;
                        counters.bytes += inner.len() as u64;
                    }
                    Err(e) => {
                        counters.write_errors += 1;
                        eprintln!("ipip-decap: write to {dev}: {e}");
                    }
                },
                Err(_) => counters.bad += 1,
            }
        }
    }
    counters.print();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header: 20 bytes, protocol `proto`, total length `total` (checksum left 0:
    /// the stand-in does not check it, the kernel did before the raw socket got the packet).
    fn header(proto: u8, total: u16, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h
    }

    fn inner_udp() -> Vec<u8> {
        // 198.18.1.10:40000 → 198.18.1.100:5353, payload "hi".
        let mut p = header(17, 30, [198, 18, 1, 10], [198, 18, 1, 100]);
        p.extend_from_slice(&[0x9c, 0x40, 0x14, 0xe9, 0, 10, 0, 0, b'h', b'i']);
        p
    }

    #[test]
    fn strips_the_outer_header() {
        let inner = inner_udp();
        let mut p = header(
            4,
            20 + inner.len() as u16,
            [198, 18, 2, 1],
            [198, 18, 2, 11],
        );
        p.extend_from_slice(&inner);
        assert_eq!(decap(&p), Ok(&inner[..]));
    }

    #[test]
    fn trims_to_the_inner_length() {
        // Ethernet padding after a short inner packet is not the inner packet's.
        let inner = inner_udp();
        let mut p = header(
            4,
            20 + inner.len() as u16 + 4,
            [198, 18, 2, 1],
            [198, 18, 2, 11],
        );
        p.extend_from_slice(&inner);
        p.extend_from_slice(&[0; 4]);
        assert_eq!(decap(&p), Ok(&inner[..]));
    }

    #[test]
    fn refuses_what_is_not_ipip() {
        let inner = inner_udp();
        let mut udp = header(
            17,
            20 + inner.len() as u16,
            [198, 18, 2, 1],
            [198, 18, 2, 11],
        );
        udp.extend_from_slice(&inner);
        assert_eq!(decap(&udp), Err(Bad::Outer));
        assert_eq!(decap(&[0x45, 0, 0]), Err(Bad::Outer));
        // Inner shorter than its own total length.
        let mut cut = header(4, 20 + 25, [198, 18, 2, 1], [198, 18, 2, 11]);
        cut.extend_from_slice(&inner[..25]);
        assert_eq!(decap(&cut), Err(Bad::Inner));
        // Inner not IPv4.
        let mut v6 = header(
            4,
            20 + inner.len() as u16,
            [198, 18, 2, 1],
            [198, 18, 2, 11],
        );
        v6.extend_from_slice(&inner);
        v6[20] = 0x60;
        assert_eq!(decap(&v6), Err(Bad::Inner));
    }
}
