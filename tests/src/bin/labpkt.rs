//! `labpkt`: sends crafted Ethernet frames from inside a lab host, through an AF_PACKET socket,
//! so tests can put bad or unusual packets on the wire that no kernel stack would send.
//!
//! ```text
//! labpkt --iface IF --dst-mac MAC --kind KIND --src IP [--dst IP:PORT] [--count N]
//!        [--sport N] [--gap-us N] [--seed N] [--wait-ms N]
//! ```
//!
//! Kinds (TCP to `--dst` unless said otherwise; each packet is a new flow: the source port
//! goes up by one per packet from `--sport`):
//! - `syn`: a well-formed SYN;
//! - `ack`: a bare ACK, i.e. a segment of a flow nobody knows;
//! - `truncated`: a SYN whose IP total length claims 100 bytes more than the frame holds;
//! - `short`: the frame ends inside the IP header (IHL 6, 22 of its 24 bytes present; the
//!   addresses are there, the rest is not);
//! - `bad-ihl`: a SYN with IHL 3 (12 bytes, below the minimum of 20);
//! - `bad-ipsum`: a SYN with a wrong IPv4 header checksum;
//! - `bad-tcpsum`: a SYN with a wrong TCP checksum;
//! - `ip-options`: a UDP datagram with IHL 6 (four bytes of options: NOP NOP NOP EOL) and a
//!   valid checksum; all from the one source port `--sport`, on which labpkt listens for
//!   replies for `--wait-ms` after sending and prints `replies N`;
//! - `fragment`: a SYN with More Fragments set (offset 0);
//! - `ttl1`: a SYN with TTL 1;
//! - `garbage`: random bytes after an IPv4 ethertype (seeded by `--seed`, so a run can be
//!   repeated): random lengths, half of them with version 4 and `--dst`'s address written
//!   where the IPv4 destination goes, so they get past the first checks of a parser.
//!
//! Prints `sent N` when done. `--src` and `--dst` must lie in 198.18.0.0/15, like every
//! address of the lab.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use director_lab::{Cidr, Mac};
use forwarder::wire::ethernet::{self, ETHERTYPE_IPV4};
use forwarder::wire::ipv4::{self, PROTO_TCP, PROTO_UDP};
use forwarder::wire::{
    EthernetFrame, Ipv4Packet, Ipv4Repr, MacAddr, TcpFlags, TcpPacket, UdpPacket,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Syn,
    Ack,
    Truncated,
    Short,
    BadIhl,
    BadIpsum,
    BadTcpsum,
    IpOptions,
    Fragment,
    Ttl1,
    Garbage,
}

impl Kind {
    const NAMES: &'static [(&'static str, Kind)] = &[
        ("syn", Kind::Syn),
        ("ack", Kind::Ack),
        ("truncated", Kind::Truncated),
        ("short", Kind::Short),
        ("bad-ihl", Kind::BadIhl),
        ("bad-ipsum", Kind::BadIpsum),
        ("bad-tcpsum", Kind::BadTcpsum),
        ("ip-options", Kind::IpOptions),
        ("fragment", Kind::Fragment),
        ("ttl1", Kind::Ttl1),
        ("garbage", Kind::Garbage),
    ];

    fn parse(s: &str) -> Result<Kind> {
        Kind::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                let all: Vec<&str> = Kind::NAMES.iter().map(|(n, _)| *n).collect();
                anyhow!("unknown kind {s:?}; one of {}", all.join(", "))
            })
    }
}

struct Args {
    iface: String,
    dst_mac: Mac,
    kind: Kind,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    count: u32,
    sport: u16,
    gap: Duration,
    seed: u64,
    wait: Duration,
}

fn parse_args() -> Result<Args> {
    let mut iface = None;
    let mut dst_mac = None;
    let mut kind = None;
    let mut src = None;
    let mut dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 100), 80);
    let mut count = 1;
    let mut sport = 40000 + (std::process::id() % 20000) as u16;
    let mut gap = Duration::ZERO;
    let mut seed = 1;
    let mut wait = Duration::from_secs(3);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--iface" => iface = Some(value()?),
            "--dst-mac" => dst_mac = Some(value()?.parse().context("--dst-mac")?),
            "--kind" => kind = Some(Kind::parse(&value()?)?),
            "--src" => src = Some(value()?.parse().context("--src IP")?),
            "--dst" => dst = value()?.parse().context("--dst IP:PORT")?,
            "--count" => count = value()?.parse().context("--count N")?,
            "--sport" => sport = value()?.parse().context("--sport N")?,
            "--gap-us" => gap = Duration::from_micros(value()?.parse().context("--gap-us N")?),
            "--seed" => seed = value()?.parse().context("--seed N")?,
            "--wait-ms" => wait = Duration::from_millis(value()?.parse().context("--wait-ms")?),
            "-h" | "--help" => {
                println!(
                    "labpkt --iface IF --dst-mac MAC --kind KIND --src IP [--dst IP:PORT] \
                     [--count N] [--sport N] [--gap-us N] [--seed N] [--wait-ms N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let a = Args {
        iface: iface.ok_or_else(|| anyhow!("--iface is required"))?,
        dst_mac: dst_mac.ok_or_else(|| anyhow!("--dst-mac is required"))?,
        kind: kind.ok_or_else(|| anyhow!("--kind is required"))?,
        src: src.ok_or_else(|| anyhow!("--src is required"))?,
        dst,
        count,
        sport,
        gap,
        seed,
        wait,
    };
    for ip in [a.src, *a.dst.ip()] {
        ensure!(
            Cidr::in_lab_range(ip),
            "{ip} is outside 198.18.0.0/15, the only range the lab may use"
        );
    }
    Ok(a)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("labpkt: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let sock = PacketSocket::open(&args.iface)?;
    let src_mac = iface_mac(&args.iface)?;
    // For `ip-options` the replies come back to the kernel of this host: a socket on the
    // source port takes them (and keeps the kernel from answering port-unreachable).
    let listener = if args.kind == Kind::IpOptions {
        let s = UdpSocket::bind(SocketAddrV4::new(args.src, args.sport))
            .with_context(|| format!("cannot bind UDP {}:{}", args.src, args.sport))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        Some(s)
    } else {
        None
    };
    let mut rng = XorShift::new(args.seed);
    let mut frame = Vec::with_capacity(2048);
    for i in 0..args.count {
        frame.clear();
        build(&args, i, src_mac, &mut rng, &mut frame);
        sock.send(&frame, args.dst_mac)
            .with_context(|| format!("sending frame {i} on {}", args.iface))?;
        if !args.gap.is_zero() {
            std::thread::sleep(args.gap);
        }
    }
    println!("sent {}", args.count);
    if let Some(s) = listener {
        let mut replies = 0u32;
        let mut buf = [0u8; 2048];
        let deadline = std::time::Instant::now() + args.wait;
        while replies < args.count && std::time::Instant::now() < deadline {
            if s.recv_from(&mut buf).is_ok() {
                replies += 1;
            }
        }
        println!("replies {replies}");
    }
    Ok(())
}

/// Appends frame number `i` of `args.kind` to `out`.
fn build(args: &Args, i: u32, src_mac: MacAddr, rng: &mut XorShift, out: &mut Vec<u8>) {
    let dst = *args.dst.ip();
    let sport = if args.kind == Kind::IpOptions {
        args.sport
    } else {
        args.sport.wrapping_add(i as u16)
    };
    let eth_header = |out: &mut Vec<u8>| {
        out.resize(ethernet::HEADER_LEN, 0);
        let mut eth = EthernetFrame::new_unchecked(&mut out[..]);
        eth.set_dst_addr(MacAddr(args.dst_mac.0));
        eth.set_src_addr(src_mac);
        eth.set_ethertype(ETHERTYPE_IPV4);
    };
    eth_header(out);
    let ip_at = ethernet::HEADER_LEN;

    if args.kind == Kind::Garbage {
        let len = (rng.next() % 1400) as usize;
        out.extend((0..len).map(|_| rng.next() as u8));
        if len >= ipv4::HEADER_LEN && rng.next() & 1 == 0 {
            let ip = &mut out[ip_at..];
            ip[0] = 0x40 | (ip[0] & 0x0f);
            ip[16..20].copy_from_slice(&dst.octets());
        }
        return;
    }

    if args.kind == Kind::IpOptions {
        const OPTIONS: [u8; 4] = [1, 1, 1, 0]; // NOP NOP NOP EOL
        let payload = format!("ip-options {i}");
        let udp_len = 8 + payload.len();
        let hlen = ipv4::HEADER_LEN + OPTIONS.len();
        out.resize(ip_at + hlen + udp_len, 0);
        out[ip_at + ipv4::HEADER_LEN..ip_at + hlen].copy_from_slice(&OPTIONS);
        let repr = Ipv4Repr {
            src: args.src,
            dst,
            protocol: PROTO_UDP,
            ttl: 64,
            ident: i as u16,
            dont_frag: true,
            payload_len: (OPTIONS.len() + udp_len) as u16,
        };
        let mut ip = Ipv4Packet::new_unchecked(&mut out[ip_at..]);
        repr.emit(&mut ip).expect("buffer sized for the packet");
        ip.set_header_len(hlen as u8);
        ip.fill_checksum();
        let ip_buf = ip.into_inner();
        let mut udp = UdpPacket::new_unchecked(&mut ip_buf[hlen..]);
        udp.set_src_port(sport);
        udp.set_dst_port(args.dst.port());
        udp.set_len(udp_len as u16);
        udp.payload_mut().copy_from_slice(payload.as_bytes());
        udp.fill_checksum(args.src, dst);
        return;
    }

    // The TCP kinds: a 20-byte SYN or ACK, then the defect.
    let tcp_len = 20;
    out.resize(ip_at + ipv4::HEADER_LEN + tcp_len, 0);
    let repr = Ipv4Repr {
        src: args.src,
        dst,
        protocol: PROTO_TCP,
        ttl: if args.kind == Kind::Ttl1 { 1 } else { 64 },
        ident: i as u16,
        dont_frag: args.kind != Kind::Fragment,
        payload_len: tcp_len as u16,
    };
    {
        let ip_buf = &mut out[ip_at..];
        let mut tcp = TcpPacket::new_unchecked(&mut ip_buf[ipv4::HEADER_LEN..]);
        tcp.set_src_port(sport);
        tcp.set_dst_port(args.dst.port());
        tcp.set_seq_number(rng.next() as u32);
        tcp.set_header_len(20);
        tcp.set_window(64240);
        if args.kind == Kind::Ack {
            tcp.set_ack_number(rng.next() as u32);
            tcp.set_flags(TcpFlags::ACK);
        } else {
            tcp.set_flags(TcpFlags::SYN);
        }
        tcp.fill_checksum(args.src, dst);
        if args.kind == Kind::BadTcpsum {
            let c = tcp.checksum();
            tcp.set_checksum(c ^ 0x5a5a);
        }
    }
    let mut ip = Ipv4Packet::new_unchecked(&mut out[ip_at..]);
    repr.emit(&mut ip).expect("buffer sized for the packet");
    match args.kind {
        Kind::Truncated => {
            ip.set_total_len((ipv4::HEADER_LEN + tcp_len + 100) as u16);
            ip.fill_checksum();
        }
        Kind::BadIhl => {
            ip.set_header_len(12);
            ip.fill_checksum();
        }
        Kind::BadIpsum => {
            let c = ip.checksum();
            ip.set_checksum(c ^ 0x1234);
        }
        Kind::Fragment => {
            ip.set_more_frags(true);
            ip.fill_checksum();
        }
        Kind::Short => {
            ip.set_header_len(24);
            ip.set_total_len((24 + tcp_len) as u16);
            ip.fill_checksum();
            out.truncate(ip_at + 22);
        }
        _ => {}
    }
}

/// An AF_PACKET raw socket bound to one interface.
struct PacketSocket {
    fd: libc::c_int,
    ifindex: libc::c_int,
}

impl PacketSocket {
    fn open(iface: &str) -> Result<PacketSocket> {
        let name = std::ffi::CString::new(iface).context("interface name")?;
        // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no interface {iface} in this namespace");
        // Protocol 0: a send-only socket, it receives nothing.
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        ensure!(
            fd >= 0,
            "cannot open an AF_PACKET socket (root needed): {}",
            std::io::Error::last_os_error()
        );
        Ok(PacketSocket {
            fd,
            ifindex: ifindex as libc::c_int,
        })
    }

    fn send(&self, frame: &[u8], dst: Mac) -> Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&dst.0);
        loop {
            // SAFETY: the buffer and the address are valid for the lengths given.
            let rc = unsafe {
                libc::sendto(
                    self.fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            // A full device queue: wait for it to drain rather than lose the frame.
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == std::io::ErrorKind::WouldBlock
            {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            return Err(e.into());
        }
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: fd is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// The interface's MAC, from sysfs (`ip netns exec` mounts the namespace's own /sys).
fn iface_mac(iface: &str) -> Result<MacAddr> {
    let path = format!("/sys/class/net/{iface}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let mac: Mac = text.trim().parse()?;
    Ok(MacAddr(mac.0))
}

/// Marsaglia's xorshift64: repeatable garbage and sequence numbers.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
