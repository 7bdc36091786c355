//! `vrrpwatch IFACE [--duration SECS]`: the measuring instrument of the VRRP benchmark. Run
//! inside a lab namespace, it prints one JSON line per VRRP advertisement and per ARP frame
//! received on IFACE, each stamped with the kernel's receive time, and flushes every line.
//!
//! Timestamps: an `AF_PACKET` socket with `SO_TIMESTAMPNS`; every `recvmsg` carries an
//! `SCM_TIMESTAMPNS` control message holding the skb's receive time (`CLOCK_REALTIME`, ns),
//! taken when the frame entered the observer's interface (a veth sets it at `netif_rx`), not
//! when this process got to read it. So a busy CPU delays the lines, not their `t_ns`. A frame
//! without that message (never seen) gets the read time and `"ts":"user"`.
//!
//! Lines (`t_ns` first, then `kind`):
//! ```text
//! {"t_ns":…,"kind":"ready","iface":"eth0"}
//! {"t_ns":…,"kind":"vrrp","src":"198.18.1.2","dst":"224.0.0.18","src_mac":"…","ttl":255,
//!  "version":3,"vrid":51,"priority":200,"interval_cs":3,"addrs":["198.18.1.100"]}
//! {"t_ns":…,"kind":"arp","op":1,"sender_ip":"198.18.1.100","sender_mac":"…",
//!  "target_ip":"198.18.1.100","target_mac":"…","gratuitous":true}
//! ```
//! `interval_cs` is the v3 interval in centiseconds (v2: seconds × 100). `gratuitous` means
//! sender IP = target IP. Frames this host sends itself are skipped.

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_VRRP: u8 = 112;

fn main() {
    if let Err(e) = run() {
        eprintln!("vrrpwatch: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut iface = None;
    let mut duration = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--duration" => {
                let v = args.next().context("--duration needs SECS")?;
                let secs: f64 = v.parse().with_context(|| format!("bad --duration {v:?}"))?;
                ensure!(secs >= 0.0 && secs.is_finite(), "bad --duration {v:?}");
                duration = Some(Duration::from_secs_f64(secs));
            }
            "-h" | "--help" => {
                println!("usage: vrrpwatch IFACE [--duration SECS]");
                return Ok(());
            }
            _ if iface.is_none() && !a.starts_with('-') => iface = Some(a),
            _ => bail!("unexpected argument {a:?}; usage: vrrpwatch IFACE [--duration SECS]"),
        }
    }
    let iface = iface.context("usage: vrrpwatch IFACE [--duration SECS]")?;
    let sock = PacketSocket::open(&iface)?;
    let deadline = duration.map(|d| Instant::now() + d);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let ready = format!(
        "{{\"t_ns\":{},\"kind\":\"ready\",\"iface\":{}}}",
        realtime_ns(),
        json_str(&iface)
    );
    emit(&mut out, &ready)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let wait = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Ok(());
                }
                (d - now).as_millis().clamp(1, 1000) as i32
            }
            None => 1000,
        };
        let Some(rx) = sock.recv(&mut buf, wait)? else {
            continue;
        };
        if rx.outgoing {
            continue;
        }
        let (t_ns, ts) = match rx.t_ns {
            Some(t) => (t, ""),
            None => (realtime_ns(), ",\"ts\":\"user\""),
        };
        if let Some(ev) = decode(&buf[..rx.len]) {
            emit(
                &mut out,
                &format!("{{\"t_ns\":{t_ns},{}{ts}}}", ev.fields()),
            )?;
        }
    }
}

fn emit(out: &mut impl Write, line: &str) -> Result<()> {
    // A closed stdout (the bench stopped reading) ends the watch.
    writeln!(out, "{line}").context("stdout closed")?;
    out.flush().context("stdout closed")?;
    Ok(())
}

fn realtime_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Decoding (pure)

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Vrrp {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        src_mac: [u8; 6],
        ttl: u8,
        version: u8,
        vrid: u8,
        priority: u8,
        interval_cs: u16,
        addrs: Vec<Ipv4Addr>,
    },
    Arp {
        op: u16,
        sender_ip: Ipv4Addr,
        sender_mac: [u8; 6],
        target_ip: Ipv4Addr,
        target_mac: [u8; 6],
    },
}

impl Event {
    /// The fields after `t_ns`, as `"kind":…,…` without braces.
    fn fields(&self) -> String {
        match self {
            Event::Vrrp {
                src,
                dst,
                src_mac,
                ttl,
                version,
                vrid,
                priority,
                interval_cs,
                addrs,
            } => {
                let addrs: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
                format!(
                    "\"kind\":\"vrrp\",\"src\":\"{src}\",\"dst\":\"{dst}\",\"src_mac\":\"{}\",\
                     \"ttl\":{ttl},\"version\":{version},\"vrid\":{vrid},\"priority\":{priority},\
                     \"interval_cs\":{interval_cs},\"addrs\":[{}]",
                    mac(src_mac),
                    addrs.join(",")
                )
            }
            Event::Arp {
                op,
                sender_ip,
                sender_mac,
                target_ip,
                target_mac,
            } => format!(
                "\"kind\":\"arp\",\"op\":{op},\"sender_ip\":\"{sender_ip}\",\"sender_mac\":\"{}\",\
                 \"target_ip\":\"{target_ip}\",\"target_mac\":\"{}\",\"gratuitous\":{}",
                mac(sender_mac),
                mac(target_mac),
                sender_ip == target_ip
            ),
        }
    }
}

fn mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ipv4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s = b.get(at..at + 4)?;
    Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

fn mac_at(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6)?.try_into().ok()
}

/// An Ethernet frame → a VRRP advert or an ARP packet; `None` for anything else or anything
/// too short to read. Only the fields printed are checked (no checksum: a bad advert is still
/// an advert on the wire, and the daemons are the ones that judge it).
fn decode(frame: &[u8]) -> Option<Event> {
    let src_mac = mac_at(frame, 6)?;
    let mut off = 12;
    let mut ethertype = be16(frame, off)?;
    while ethertype == ETH_P_8021Q {
        off += 4;
        ethertype = be16(frame, off)?;
    }
    let l3 = frame.get(off + 2..)?;
    match ethertype {
        ETH_P_IP => {
            let ihl = usize::from(l3.first()? & 0x0f) * 4;
            if l3[0] >> 4 != 4 || ihl < 20 || *l3.get(9)? != IPPROTO_VRRP {
                return None;
            }
            let total = usize::from(be16(l3, 2)?).min(l3.len());
            let v = l3.get(ihl..total)?;
            let version = v.first()? >> 4;
            let count = *v.get(3)?;
            let interval_cs = match version {
                3 => be16(v, 4)? & 0x0fff,
                _ => u16::from(*v.get(5)?) * 100,
            };
            let addrs = (0..usize::from(count))
                .map_while(|i| ipv4(v, 8 + 4 * i))
                .collect();
            Some(Event::Vrrp {
                src: ipv4(l3, 12)?,
                dst: ipv4(l3, 16)?,
                src_mac,
                ttl: *l3.get(8)?,
                version,
                vrid: *v.get(1)?,
                priority: *v.get(2)?,
                interval_cs,
                addrs,
            })
        }
        ETH_P_ARP => {
            // Ethernet/IPv4 ARP only: htype 1, ptype IPv4, hlen 6, plen 4.
            if be16(l3, 0)? != 1 || be16(l3, 2)? != ETH_P_IP || l3.get(4..6)? != [6, 4] {
                return None;
            }
            Some(Event::Arp {
                op: be16(l3, 6)?,
                sender_mac: mac_at(l3, 8)?,
                sender_ip: ipv4(l3, 14)?,
                target_mac: mac_at(l3, 18)?,
                target_ip: ipv4(l3, 24)?,
            })
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The socket (the only unsafe part)

struct PacketSocket {
    fd: std::os::fd::OwnedFd,
}

struct Rx {
    len: usize,
    outgoing: bool,
    t_ns: Option<u128>,
}

impl PacketSocket {
    fn open(iface: &str) -> Result<PacketSocket> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(iface).context("interface name holds a NUL")?;
        // SAFETY: `name` is a valid C string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(
            ifindex != 0,
            "no interface {iface}: {}",
            std::io::Error::last_os_error()
        );
        let proto = ETH_P_ALL.to_be();
        // SAFETY: socket(2) with constant arguments; the fd is owned right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        ensure!(
            raw >= 0,
            "cannot open an AF_PACKET socket (root needed): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let s = PacketSocket { fd };
        s.setsockopt(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
            .context("SO_TIMESTAMPNS")?;
        // Room for a long stall of this process under load: the kernel queues, we print late.
        let _ = s.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
        // SAFETY: an all-zero sockaddr_ll is a valid value to fill in.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: bind(2) with a sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                s.raw(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        ensure!(
            rc == 0,
            "cannot bind to {iface}: {}",
            std::io::Error::last_os_error()
        );
        Ok(s)
    }

    fn raw(&self) -> libc::c_int {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> Result<()> {
        // SAFETY: setsockopt(2) with a c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.raw(),
                level,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ensure!(rc == 0, "{}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Waits up to `timeout_ms` for a frame; `None` on timeout or EINTR.
    fn recv(&self, buf: &mut [u8], timeout_ms: i32) -> Result<Option<Rx>> {
        let mut pfd = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            if n < 0 && e.kind() != std::io::ErrorKind::Interrupted {
                bail!("poll: {e}");
            }
            return Ok(None);
        }
        // SAFETY: all-zero sockaddr_ll and msghdr are valid values to fill in.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 32];
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: recvmsg(2) into buffers that `msg` describes with their true sizes.
        let len = unsafe { libc::recvmsg(self.raw(), &mut msg, libc::MSG_DONTWAIT) };
        if len < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e).context("recvmsg"),
            };
        }
        let mut t_ns = None;
        // SAFETY: walking the control messages the kernel wrote into `msg`'s buffer with the
        // CMSG macros, reading a timespec only from an SCM_TIMESTAMPNS message.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    t_ns = Some(ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(Some(Rx {
            len: len as usize,
            outgoing: sll.sll_pkttype == libc::PACKET_OUTGOING,
            t_ns,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x01, 0x00, 0x5e, 0x00, 0x00, 0x12];
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4_vrrp(vrrp: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 255, IPPROTO_VRRP, 0, 0];
        ip[2..4].copy_from_slice(&((20 + vrrp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[198, 18, 1, 2, 224, 0, 0, 18]);
        ip.extend_from_slice(vrrp);
        ip
    }

    #[test]
    fn decodes_v3_advert() {
        // v3 advert, VRID 51, priority 200, one address, interval 3 cs, checksum, VIP.
        let vrrp = [0x31, 51, 200, 1, 0x00, 0x03, 0xab, 0xcd, 198, 18, 1, 100];
        let f = eth(ETH_P_IP, &ipv4_vrrp(&vrrp));
        let ev = decode(&f).unwrap();
        assert_eq!(
            ev,
            Event::Vrrp {
                src: Ipv4Addr::new(198, 18, 1, 2),
                dst: Ipv4Addr::new(224, 0, 0, 18),
                src_mac: MAC_A,
                ttl: 255,
                version: 3,
                vrid: 51,
                priority: 200,
                interval_cs: 3,
                addrs: vec![Ipv4Addr::new(198, 18, 1, 100)],
            }
        );
        let line = format!("{{\"t_ns\":1,{}}}", ev.fields());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "vrrp");
        assert_eq!(v["priority"], 200);
        assert_eq!(v["addrs"][0], "198.18.1.100");
    }

    #[test]
    fn decodes_v2_advert_interval_in_seconds() {
        let vrrp = [
            0x21, 51, 100, 1, 0, 1, 0, 0, 198, 18, 1, 100, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        match decode(&eth(ETH_P_IP, &ipv4_vrrp(&vrrp))).unwrap() {
            Event::Vrrp {
                version,
                interval_cs,
                priority,
                ..
            } => assert_eq!((version, interval_cs, priority), (2, 100, 100)),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn decodes_gratuitous_arp() {
        let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
        arp.extend_from_slice(&MAC_A);
        arp.extend_from_slice(&[198, 18, 1, 100]);
        arp.extend_from_slice(&[0xff; 6]);
        arp.extend_from_slice(&[198, 18, 1, 100]);
        let ev = decode(&eth(ETH_P_ARP, &arp)).unwrap();
        let line = format!("{{\"t_ns\":7,{}}}", ev.fields());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["op"], 1);
        assert_eq!(v["sender_ip"], "198.18.1.100");
        assert_eq!(v["sender_mac"], "02:00:00:00:00:0a");
        assert_eq!(v["gratuitous"], true);
        // An ordinary request is not gratuitous.
        arp[24..28].copy_from_slice(&[198, 18, 1, 3]);
        let ev = decode(&eth(ETH_P_ARP, &arp)).unwrap();
        assert!(ev.fields().ends_with("\"gratuitous\":false"));
    }

    #[test]
    fn ignores_other_and_short_frames() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&eth(0x86dd, &[0; 40])), None);
        // TCP over IPv4.
        let mut ip = ipv4_vrrp(&[0; 8]);
        ip[9] = 6;
        assert_eq!(decode(&eth(ETH_P_IP, &ip)), None);
        // A VRRP header cut short.
        let ip = ipv4_vrrp(&[0x31, 51]);
        assert_eq!(decode(&eth(ETH_P_IP, &ip)), None);
        // A VLAN tag in front is skipped.
        let vrrp = [0x31, 7, 100, 0, 0, 100, 0, 0];
        let mut tagged = vec![0x81, 0x00, 0x00, 0x0a, 0x08, 0x00];
        tagged.extend_from_slice(&ipv4_vrrp(&vrrp));
        let mut f = eth(ETH_P_8021Q, &[]);
        f.truncate(12);
        f.extend_from_slice(&tagged);
        assert!(matches!(decode(&f), Some(Event::Vrrp { vrid: 7, .. })));
    }
}
