//! TUN mode end to end (`Topo::tun`): the director wraps each client packet, unchanged, in an
//! outer IPv4 header (protocol 4) to the real server; the real server (VIP on `lo`) takes it
//! apart with `ipip-decap` — the lab's stand-in for a stock kernel's `ipip` device, since
//! this host kernel has none — and answers the client directly through the gateway `gw`,
//! never through the director.
//!
//! - the stand-in alone (no director): a hand-made IPIP packet reaches `labsrv` on the VIP and
//!   the answer reaches the client through `gw`;
//! - HTTP balanced over the reals, every packet toward them encapsulated, the replies
//!   through `gw` only (`forwarded_out` stays 0);
//! - path MTU with 1500 bytes everywhere: a client's full-size segment does not fit once
//!   wrapped (1520), so the director answers ICMP fragmentation-needed with MTU 1480 and a
//!   long upload completes byte-exact; a DF UDP datagram of 1500 bytes gets the same answer
//!   and is not delivered, while one of 1480 is.
//!
//! UDP balancing is in `udp.rs`, the failover in `sync_failover.rs`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use director_lab::labpkt::frag_needed;
use director_lab::pattern;
use director_lab::topo::{
    decap_counters, tally, vip, Mode, ServiceSpec, Topo, CLIENT, ECHO_PORT, VIP,
};
use director_lab::{wait_until, Lab};
use forwarder::wire::{EthernetFrame, Ipv4Packet};

const T: Duration = Duration::from_secs(20);
/// The director's own address on `int`: the outer source of its IPIP packets.
const DIRECTOR_INT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const FRAG_NEEDED: &str = "icmp[icmptype] == icmp-unreach and icmp[icmpcode] == 4";

/// A UDP datagram as the client would send it: `src` → `dst`, DF set, IPv4 header checksum
/// filled, UDP checksum 0 (none, allowed over IPv4).
fn udp_datagram(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
    p
}

/// The stand-in by itself: the director's namespace sends one IPIP packet (the kernel adds
/// the outer header to what a protocol-4 raw socket sends) holding a client datagram to
/// VIP:5353; `labsrv` on rs1 answers the client straight through `gw`.
fn tun_decap_stand_in_delivers_to_the_vip() {
    let Some(lab) = Lab::for_test("tun-decap") else {
        return;
    };
    let mut topo = Topo::tun(lab, 1).expect("TUN topology");
    let svc = ServiceSpec::udp("rr", &[1]);
    topo.start_servers(std::slice::from_ref(&svc))
        .expect("labsrv");
    let client_addr = SocketAddrV4::new(CLIENT, 40000);
    let sock = topo
        .client
        .in_ns(|| UdpSocket::bind(client_addr))
        .expect("client namespace")
        .expect("bind the client's socket");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let inner = udp_datagram(client_addr, vip(svc.port), b"through the stand-in");
    let rs1 = SocketAddr::from((topo.real_addrs[0], 0));
    topo.director
        .in_ns(move || -> std::io::Result<()> {
            // SAFETY: socket(2) has no memory preconditions; the fd is owned right away.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, 4) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let sock = socket2_like(fd);
            let SocketAddr::V4(to) = rs1 else {
                unreachable!()
            };
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*to.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sendto reads the buffer and the sockaddr_in we own.
            let n = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    inner.as_ptr().cast(),
                    inner.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
        .expect("director namespace")
        .expect("send the IPIP packet");
    let mut buf = [0u8; 256];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("the real server's answer reaches the client");
    assert_eq!(from, SocketAddr::V4(vip(svc.port)));
    assert_eq!(&buf[..n], b"rs1 through the stand-in");
    let seen = topo.udp_peers_seen().expect("labsrv log");
    assert_eq!(seen[0].get(&CLIENT), Some(&1), "{seen:?}");
    let c = decap_counters(&mut topo.helpers).expect("decap counters");
    assert_eq!(
        (&c[0]["decapsulated"], &c[0]["bad"]),
        (&1.into(), &0.into()),
        "{c:?}"
    );
}

/// An owned fd (closed on drop).
fn socket2_like(fd: libc::c_int) -> std::os::fd::OwnedFd {
    // SAFETY: fd is a fresh socket that nothing else owns.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// Every frame a real server got is IPIP to it from the director's own `int` address,
/// around the client's packet to VIP:80.
fn assert_all_ipip(frames: &[Vec<u8>], reals: &[Ipv4Addr]) -> usize {
    for f in frames {
        let eth = EthernetFrame::new_checked(&f[..]).expect("Ethernet");
        let outer = Ipv4Packet::new_checked(eth.payload()).expect("outer IPv4");
        assert_eq!(outer.protocol(), 4, "not IPIP: {f:02x?}");
        assert!(outer.verify_checksum(), "outer checksum: {f:02x?}");
        assert_eq!(outer.src_addr(), DIRECTOR_INT, "outer source: {f:02x?}");
        assert!(reals.contains(&outer.dst_addr()), "outer dest: {f:02x?}");
        let inner = Ipv4Packet::new_checked(outer.payload()).expect("inner IPv4");
        assert!(inner.verify_checksum(), "inner checksum: {f:02x?}");
        assert_eq!(
            (inner.src_addr(), inner.dst_addr()),
            (CLIENT, VIP),
            "inner: {f:02x?}"
        );
        assert_eq!(
            forwarder::wire::l4_ports(inner.payload()).map(|p| p.1),
            Some(80),
            "inner port: {f:02x?}"
        );
    }
    frames.len()
}

fn tun_http_balanced_replies_bypass_the_director() {
    let svc = [ServiceSpec::http("rr", &[1, 1, 1])];
    let Some(mut topo) = Topo::started("tun-http", Mode::Tun, &svc) else {
        return;
    };
    let gw = topo.gateway.clone().expect("TUN has a gateway");
    // At the real servers (the director's own transmissions bypass its qdisc, so tcpdump
    // there would not see them): IPIP, and anything to port 80 that was not wrapped.
    let at_reals: Vec<_> = topo
        .reals
        .iter()
        .map(|h| {
            h.capture("eth0", "ip proto 4 or tcp dst port 80")
                .expect("capture on a real server")
        })
        .collect();
    let via_gw = gw
        .capture("int", &format!("src host {VIP} and tcp src port 80"))
        .expect("capture on gw");
    let names = topo
        .curl_many(30, None)
        .expect("30 requests through the VIP");
    assert_eq!(tally(&names, 3), vec![10, 10, 10], "{names:?}");
    // The client's closing packets may still be on their way: wait for every packet the
    // director forwarded to have been taken apart.
    // A frame is wrapped in place (`forwarded_in`) or, when it must be rebuilt (a partial
    // checksum to finish, as every frame from a veth with TX offload has), sent as a new
    // frame (`emitted`); small HTTP frames are never split, so one frame each.
    let mut last = (0, 0);
    let settled = wait_until(T, || {
        let fwd = topo
            .director_json("stats")
            .map(|s| {
                let d = &s["datapath"];
                d["forwarded_in"].as_u64().unwrap_or(0) + d["emitted"].as_u64().unwrap_or(0)
            })
            .unwrap_or(0);
        let dec: u64 = decap_counters(&mut topo.helpers)
            .map(|c| {
                c.iter()
                    .map(|x| x["decapsulated"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        last = (fwd, dec);
        fwd > 0 && fwd == dec
    });
    assert!(
        settled.is_ok(),
        "director forwarded_in + emitted vs packets the real servers decapsulated: {last:?}"
    );
    let stats = topo.director_json("stats").expect("stats");
    assert_eq!(
        stats["datapath"]["forwarded_out"], 0,
        "replies went through the director: {stats}"
    );
    let mut n = 0;
    for (cap, addr) in at_reals.into_iter().zip(&topo.real_addrs) {
        n += assert_all_ipip(&cap.stop().expect("capture"), &[*addr]);
    }
    assert_eq!(
        n as u64, last.0,
        "frames at the real servers vs forwarded_in"
    );
    let replies = via_gw.stop().expect("capture").len();
    assert!(
        replies >= 30 * 2,
        "only {replies} reply packets went through gw for 30 connections"
    );
    for c in decap_counters(&mut topo.helpers).expect("counters") {
        assert_eq!(
            (&c["bad"], &c["write_errors"]),
            (&0.into(), &0.into()),
            "{c}"
        );
    }
    // The real servers saw the client itself.
    for (i, peers) in topo
        .tcp_peers_seen("conn")
        .expect("labsrv")
        .iter()
        .enumerate()
    {
        assert_eq!(peers.len(), 10, "rs{}: {peers:?}", i + 1);
        assert!(
            peers.iter().all(|p| *p.ip() == CLIENT),
            "rs{}: {peers:?}",
            i + 1
        );
    }
}

/// The client's segments are full-size (MSS 1460 on 1500-byte links, offloads off so they
/// are real 1500-byte frames); wrapped they would be 1520. The director answers
/// fragmentation-needed with MTU 1480, the client lowers its path MTU to the VIP, and a long
/// upload through the echo service comes back byte for byte.
fn tun_path_mtu_upload_completes() {
    const BYTES: usize = 2_000_000;
    let svc = [ServiceSpec::echo("rr", &[1])];
    let Some(lab) = Lab::for_test("tun-pmtu") else {
        return;
    };
    let mut topo = Topo::tun(lab, 1).expect("TUN topology");
    topo.client.set_offloads("eth0", false).expect("offloads");
    topo.start(&svc).expect("start");
    let at_client = topo
        .client
        .capture("eth0", FRAG_NEEDED)
        .expect("capture on the client");
    let echoed = topo
        .client
        .in_ns(|| -> std::io::Result<Vec<u8>> {
            let s = TcpStream::connect_timeout(&SocketAddr::V4(vip(ECHO_PORT)), T)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            let mut w = s.try_clone()?;
            let writer = std::thread::spawn(move || -> std::io::Result<()> {
                let mut data = vec![0u8; BYTES];
                pattern::fill(0, &mut data);
                w.write_all(&data)?;
                w.shutdown(Shutdown::Write)
            });
            let mut got = Vec::with_capacity(BYTES);
            (&s).read_to_end(&mut got)?;
            writer.join().expect("writer thread")?;
            Ok(got)
        })
        .expect("client namespace")
        .expect("the upload through the VIP completes");
    assert_eq!(echoed.len(), BYTES, "echoed length");
    assert_eq!(pattern::first_mismatch(0, &echoed), None, "echoed content");

    let msgs = frag_needed(&at_client.stop().expect("capture"));
    assert!(
        !msgs.is_empty(),
        "no fragmentation-needed reached the client"
    );
    for m in &msgs {
        assert_eq!((m.dst, m.mtu), (CLIENT, 1480), "{m:?}");
        assert_eq!(*m.quoted_src.ip(), CLIENT, "{m:?}");
        assert_eq!(m.quoted_dst, vip(ECHO_PORT), "{m:?}");
    }
    let route = topo
        .client
        .ip(["route", "get", &VIP.to_string()])
        .expect("ip route get");
    assert!(
        route.contains("mtu 1480"),
        "the client's path MTU to the VIP was not lowered: {route}"
    );
    eprintln!(
        "tun pmtu: {} fragmentation-needed from {:?}; director stats {}",
        msgs.len(),
        msgs.first().map(|m| m.src),
        topo.director_json("stats").expect("stats")["datapath"]
    );
}

/// A DF datagram of 1500 bytes (1472 of payload) fits the client's link but not the
/// director's once wrapped: fragmentation-needed, MTU 1480, and nothing delivered. One of
/// 1480 bytes goes through and is answered.
fn tun_df_udp_too_big_gets_frag_needed() {
    let svc = ServiceSpec::udp("rr", &[1]);
    let Some(lab) = Lab::for_test("tun-df") else {
        return;
    };
    let mut topo = Topo::tun(lab, 1).expect("TUN topology");
    topo.start(std::slice::from_ref(&svc)).expect("start");
    let at_client = topo
        .client
        .capture("eth0", FRAG_NEEDED)
        .expect("capture on the client");
    let target = SocketAddr::V4(vip(svc.port));
    let send_df = |len: usize| -> std::io::Result<Option<Vec<u8>>> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        let on: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: setsockopt reads an int we own.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        sock.send_to(&vec![b'x'; len], target)?;
        let mut buf = vec![0u8; 4096];
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => Ok(Some(buf[..n].to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    };
    // 1500 bytes on the wire: no answer (the 2 s wait is for a reply that must not come).
    let big = topo
        .client
        .in_ns(|| send_df(1472))
        .expect("client namespace")
        .expect("send 1472 bytes");
    assert_eq!(
        big.map(|r| r.len()),
        None,
        "a DF datagram that does not fit was delivered (reply length shown)"
    );
    let msgs = frag_needed(&at_client.stop().expect("capture"));
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let m = &msgs[0];
    assert_eq!((m.dst, m.mtu), (CLIENT, 1480), "{m:?}");
    assert_eq!(*m.quoted_src.ip(), CLIENT, "{m:?}");
    assert_eq!(m.quoted_dst, vip(svc.port), "{m:?}");
    // 1480 bytes on the wire: wrapped, exactly the director's MTU.
    let fits = topo
        .client
        .in_ns(|| send_df(1452))
        .expect("client namespace")
        .expect("send 1452 bytes");
    let reply = fits.expect("a DF datagram that fits was not answered");
    assert_eq!(reply.len(), "rs1 ".len() + 1452);
    let seen: Vec<String> = topo.servers[0]
        .stdout()
        .expect("labsrv log")
        .lines()
        .filter(|l| l.starts_with("udp "))
        .map(str::to_owned)
        .collect();
    assert_eq!(seen.len(), 1, "rs1 got {seen:?}");
    assert!(seen[0].ends_with("len=1452"), "{seen:?}");
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [tun_decap_stand_in_delivers_to_the_vip, tun_http_balanced_replies_bypass_the_director, tun_path_mtu_upload_completes, tun_df_udp_too_big_gets_frag_needed]
}
