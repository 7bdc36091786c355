//! `pktgen`: a lab packet generator for the benchmarks. Sends 64-byte Ethernet frames
//! (60 bytes in memory + the 4-byte FCS the wire would add) from an AF_PACKET socket with
//! `PACKET_QDISC_BYPASS`, in `sendmmsg` batches, for a fixed time, and prints one JSON line
//! with what it sent.
//!
//! Modes:
//! - `udp`: frames to DST:PORT from SRC, cycling over `--flows` source ports (1024..), so
//!   the forwarder sees that many flows; all frames are built once up front.
//! - `syn`: TCP SYNs, each from a new (source address, port): addresses SRC, SRC+1, ...
//!   (`--sources` of them), ports 1024..=65535, so `--sources` × 64512 unique flows before
//!   the sequence starts again.
//!
//! ```text
//! pktgen --ifname eth0 --src-mac M --dst-mac M --src 198.18.1.10 --dst 198.18.1.100:5353
//!        [--mode udp|syn] [--flows 1024] [--sources 1] [--duration 5] [--count N] [--batch 256]
//!        [--rate PPS]
//! ```
//! `--rate PPS` paces the frames: frame i leaves no earlier than start + i / PPS, in batches
//! of about 50 µs worth of frames (at least one, at most `--batch`), the generator sleeping
//! between them (timer slack 1 µs) rather than spinning, so that it leaves the rest of its
//! core to whatever shares it. A generator that falls behind sends what is due at once (never
//! more than one batch per call), so `sent` / `secs` is the rate it really offered. Without
//! `--rate` it sends flat out.
//!
//! The benchmark driver pins it to a core (`taskset`); it never reads anything back.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use director_lab::Mac;

const SOL_PACKET: libc::c_int = 263;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const ETH_P_IP: u16 = 0x0800;
/// A minimum Ethernet frame without its FCS.
const FRAME_LEN: usize = 60;
const FIRST_PORT: u32 = 1024;
const PORTS: u32 = 65536 - FIRST_PORT;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Udp,
    Syn,
}

struct Args {
    ifname: String,
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    mode: Mode,
    flows: usize,
    sources: u32,
    duration: Duration,
    count: u64,
    batch: usize,
    /// Frames per second; 0 = flat out.
    rate: f64,
}

fn parse_args() -> Result<Args> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut kv = HashMap::new();
    let mut it = raw.iter();
    while let Some(k) = it.next() {
        let key = k
            .strip_prefix("--")
            .with_context(|| format!("unexpected argument {k:?}"))?;
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        kv.insert(key.to_string(), v.clone());
    }
    let get = |k: &str| kv.get(k).with_context(|| format!("--{k} is required"));
    let opt = |k: &str, d: &str| kv.get(k).cloned().unwrap_or_else(|| d.to_string());
    let mode = match opt("mode", "udp").as_str() {
        "udp" => Mode::Udp,
        "syn" => Mode::Syn,
        m => bail!("--mode {m}: expected udp or syn"),
    };
    let args = Args {
        ifname: get("ifname")?.clone(),
        src_mac: get("src-mac")?.parse()?,
        dst_mac: get("dst-mac")?.parse()?,
        src: get("src")?.parse().context("--src")?,
        dst: get("dst")?.parse().context("--dst")?,
        mode,
        flows: opt("flows", "1024").parse().context("--flows")?,
        sources: opt("sources", "1").parse().context("--sources")?,
        duration: Duration::from_secs_f64(opt("duration", "5").parse().context("--duration")?),
        count: opt("count", "0").parse().context("--count")?,
        batch: opt("batch", "256").parse().context("--batch")?,
        rate: opt("rate", "0").parse().context("--rate")?,
    };
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a number of frames per second (0 = flat out)");
    }
    if args.flows == 0 || args.batch == 0 || args.sources == 0 {
        bail!("--flows, --batch and --sources must be at least 1");
    }
    Ok(args)
}

/// The 16-bit one's complement sum of `data`, folded, not yet inverted.
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Fill `f` with Ethernet + IPv4 + (UDP | TCP SYN) from `src` to `dst`, checksums included.
fn build(f: &mut [u8; FRAME_LEN], a: &Args, src: SocketAddrV4) {
    f.fill(0);
    f[0..6].copy_from_slice(&a.dst_mac.0);
    f[6..12].copy_from_slice(&a.src_mac.0);
    f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    let (proto, l4_len) = match a.mode {
        Mode::Udp => (17u8, FRAME_LEN - 34),
        Mode::Syn => (6u8, 20),
    };
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&a.dst.ip().octets());
    let c = fold(sum16(0, ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let l4 = &mut f[34..34 + l4_len];
    l4[0..2].copy_from_slice(&src.port().to_be_bytes());
    l4[2..4].copy_from_slice(&a.dst.port().to_be_bytes());
    match a.mode {
        Mode::Udp => {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4[8..].copy_from_slice(&b"director-bench-64B-frame"[..l4_len - 8]);
        }
        Mode::Syn => {
            l4[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes()); // seq
            l4[12] = 5 << 4; // data offset
            l4[13] = 0x02; // SYN
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
        }
    }
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&a.dst.ip().octets());
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&(l4_len as u16).to_be_bytes());
    let c = fold(sum16(sum16(0, &pseudo), l4));
    let at = if a.mode == Mode::Udp { 6 } else { 16 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The source of the `i`-th unique SYN.
fn syn_source(a: &Args, i: u64) -> SocketAddrV4 {
    let per_round = u64::from(a.sources) * u64::from(PORTS);
    let i = i % per_round;
    let addr = u32::from(a.src) + (i / u64::from(PORTS)) as u32;
    let port = FIRST_PORT + (i % u64::from(PORTS)) as u32;
    SocketAddrV4::new(Ipv4Addr::from(addr), port as u16)
}

fn open_socket(ifname: &str) -> Result<libc::c_int> {
    let name = CString::new(ifname)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname}: {}", io::Error::last_os_error());
    }
    // SAFETY: plain socket(2); protocol 0 = this socket receives nothing.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and has the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            SOL_PACKET,
            PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        bail!("PACKET_QDISC_BYPASS: {}", io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain old data.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_IP.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll for the duration of the call.
    let r = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        bail!("bind to {ifname}: {}", io::Error::last_os_error());
    }
    Ok(fd)
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let fd = open_socket(&a.ifname)?;

    // UDP: one frame per flow, sent round-robin. SYN: one buffer per batch slot, rewritten
    // before each send.
    let slots = match a.mode {
        Mode::Udp => a.flows.div_ceil(a.batch) * a.batch,
        Mode::Syn => a.batch,
    };
    let mut frames = vec![[0u8; FRAME_LEN]; slots];
    if a.mode == Mode::Udp {
        for (i, f) in frames.iter_mut().enumerate() {
            let port = FIRST_PORT + (i % a.flows) as u32;
            build(f, &a, SocketAddrV4::new(a.src, port as u16));
        }
    }
    let mut iovs: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr().cast(),
            iov_len: FRAME_LEN,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain old data; zero is an empty message.
            let mut m: libc::mmsghdr = unsafe { zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();

    // Paced: about 50 µs of frames per wake-up.
    let chunk = ((a.rate * 50e-6) as u64).clamp(1, a.batch as u64);
    if a.rate > 0.0 {
        // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
    }
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    let mut next_syn: u64 = 0;
    let mut at = 0usize;
    while start.elapsed() < a.duration && (a.count == 0 || sent < a.count) {
        let mut n = a.batch;
        if a.count > 0 {
            n = n.min((a.count - sent) as usize);
        }
        if a.rate > 0.0 {
            let due = (start.elapsed().as_secs_f64() * a.rate) as u64;
            if due < sent + chunk {
                let next = start + Duration::from_secs_f64((sent + chunk) as f64 / a.rate);
                let now = Instant::now();
                if next > now {
                    std::thread::sleep((next - now).min(a.duration));
                }
                continue;
            }
            n = n.min((due - sent) as usize);
        }
        if a.mode == Mode::Udp {
            // A paced batch may be short: keep cycling over every flow's frame.
            n = n.min(slots - at);
        }
        if a.mode == Mode::Syn {
            for f in frames.iter_mut().take(n) {
                build(f, &a, syn_source(&a, next_syn));
                next_syn += 1;
            }
            at = 0;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: msgs[at+done..at+n] point at live frames and iovecs owned above.
            let r = unsafe {
                libc::sendmmsg(fd, msgs.as_mut_ptr().add(at + done), (n - done) as u32, 0)
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                        errors += 1;
                        std::thread::yield_now();
                        continue;
                    }
                    _ => bail!("sendmmsg: {e}"),
                }
            }
            done += r as usize;
        }
        sent += n as u64;
        if a.mode == Mode::Udp {
            at = (at + n) % slots;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"sent\":{sent},\"errors\":{errors},\"secs\":{secs:.6},\"pps\":{:.0},\"rate\":{:.0},\"unique_flows\":{}}}",
        sent as f64 / secs,
        a.rate,
        match a.mode {
            Mode::Udp => a.flows as u64,
            Mode::Syn => next_syn.min(u64::from(a.sources) * u64::from(PORTS)),
        }
    );
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    Ok(())
}
