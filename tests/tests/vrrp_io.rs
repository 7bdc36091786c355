//! Namespace end-to-end tests of the VRRP I/O layer (`vrrp::io`): the advert socket, VIP
//! add/del over rtnetlink, gratuitous ARP, link notifications and real-time scheduling.
//! Real kernels on both ends; the payloads are arbitrary bytes (the codec is tested on its
//! own). Need root; skipped with a reason otherwise, failed under CI=true.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use director_lab::{wait_until, Host, Lab};
use vrrp::io::addr::Rtnl;
use vrrp::io::garp::GarpSender;
use vrrp::io::link::{LinkEvent, LinkWatcher};
use vrrp::io::socket::AdvertSocket;
use vrrp::wire::{IPPROTO_VRRP, MULTICAST_V4, TTL};

/// Only a guard against hangs: nothing here is expected to take more than milliseconds.
const SECS: Duration = Duration::from_secs(5);

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const C: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
/// A secondary address of a: sending from it shows that the socket's source address is
/// used rather than the interface's primary one.
const A2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);

/// a, b, c on one bridge `lan`, each with `eth0` = 198.18.1.{1,2,3}/24.
fn lan(lab: &Lab) -> (Host, Host, Host) {
    let lan = lab.bridge("lan").unwrap();
    let hosts: Vec<Host> = ["a", "b", "c"]
        .iter()
        .zip([A, B, C])
        .map(|(name, addr)| {
            let h = lab.host(name).unwrap();
            lab.attach(&h, &lan, "eth0", &format!("{addr}/24")).unwrap();
            h
        })
        .collect();
    let [a, b, c]: [Host; 3] = hosts.try_into().unwrap();
    (a, b, c)
}

fn open(host: &Host, ifname: &str, src: Ipv4Addr, multicast: bool) -> AdvertSocket {
    let ifindex = host.ifindex(ifname).unwrap();
    let ifname = ifname.to_string();
    host.in_ns(move || AdvertSocket::open(&ifname, ifindex, src, multicast))
        .unwrap()
        .unwrap_or_else(|e| panic!("opening the advert socket on {}: {e}", host.name()))
}

/// A received datagram, header fields decoded by hand (independent of the code under test).
#[derive(Debug)]
struct Dgram {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    proto: u8,
    payload: Vec<u8>,
}

fn parse(b: &[u8]) -> Dgram {
    assert!(b.len() >= 20, "datagram of {} bytes", b.len());
    assert_eq!(b[0] >> 4, 4, "not IPv4: {b:02x?}");
    let ihl = usize::from(b[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
    assert_eq!(total, b.len(), "IP total length against the datagram size");
    Dgram {
        src: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
        dst: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
        ttl: b[8],
        proto: b[9],
        payload: b[ihl..].to_vec(),
    }
}

fn readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    rc > 0
}

/// The next datagram of `sock`, waiting up to [`SECS`] for it.
fn recv_one(sock: &mut AdvertSocket, who: &str) -> Dgram {
    let deadline = Instant::now() + SECS;
    let mut buf = [0u8; 2048];
    loop {
        if let Some(n) = sock.recv(&mut buf).unwrap() {
            return parse(&buf[..n]);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{who} received nothing within {SECS:?}");
        readable(sock.fd(), left);
    }
}

fn check_vrrp(d: &Dgram, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) {
    assert_eq!(d.src, src, "source address of {d:?}");
    assert_eq!(d.dst, dst, "destination address of {d:?}");
    assert_eq!(d.ttl, TTL, "TTL of {d:?} (RFC 9568 §5.1.1.3)");
    assert_eq!(d.proto, IPPROTO_VRRP, "protocol of {d:?}");
    assert_eq!(d.payload, payload, "payload of {d:?}");
}

/// Multicast to 224.0.0.18 reaches joined peers whole (header included) with TTL 255 and the
/// sender's chosen (secondary) source address. It is not looped back to the sender, and not
/// delivered to a socket that did not join, even on a host where another socket joined the
/// group on the same interface. Each negative is shown by a unicast, sent after the multicast
/// on the same path, arriving first.
fn multicast_advert_reaches_joined_peers_only() {
    let Some(lab) = Lab::for_test("vio-mc") else {
        return;
    };
    let (a, b, c) = lan(&lab);
    a.addr_add("eth0", &format!("{A2}/24")).unwrap();
    let mut sa = open(&a, "eth0", A2, true);
    let mut sb = open(&b, "eth0", B, true);
    let mut sc = open(&c, "eth0", C, false);
    let mut sc_joined = open(&c, "eth0", C, true);

    sa.send(b"advert from a", MULTICAST_V4).unwrap();
    let got = recv_one(&mut sb, "b");
    check_vrrp(&got, A2, MULTICAST_V4, b"advert from a");
    let got = recv_one(&mut sc_joined, "c (joined)");
    check_vrrp(&got, A2, MULTICAST_V4, b"advert from a");

    sb.send(b"unicast b to a", A).unwrap();
    let got = recv_one(&mut sa, "a");
    check_vrrp(&got, B, A, b"unicast b to a");

    sa.send(b"unicast a to c", C).unwrap();
    let got = recv_one(&mut sc, "c");
    check_vrrp(&got, A2, C, b"unicast a to c");
}

/// Unicast to the box's address arrives with TTL 255 and the sender's chosen (secondary)
/// address; a datagram to the same address arriving on another interface goes to that
/// interface's socket only (SO_BINDTODEVICE).
fn unicast_advert_is_received_on_its_interface_only() {
    let Some(lab) = Lab::for_test("vio-uc") else {
        return;
    };
    let (a, b, _c) = lan(&lab);
    let d = lab.host("d").unwrap();
    lab.link(&b, "eth1", "198.18.2.2/24", &d, "eth0", "198.18.2.4/24")
        .unwrap();
    d.route_add("198.18.1.0/24", "198.18.2.2").unwrap();
    let d_addr = Ipv4Addr::new(198, 18, 2, 4);

    a.addr_add("eth0", &format!("{A2}/24")).unwrap();
    let sa = open(&a, "eth0", A2, false);
    let mut sb0 = open(&b, "eth0", B, false);
    let mut sb1 = open(&b, "eth1", Ipv4Addr::new(198, 18, 2, 2), false);
    let sd = open(&d, "eth0", d_addr, false);

    // To b's eth0 address, but in through eth1: local delivery (weak host model) happens.
    sd.send(b"from d via eth1", B).unwrap();
    let got = recv_one(&mut sb1, "b eth1");
    check_vrrp(&got, d_addr, B, b"from d via eth1");

    sa.send(b"from a via eth0", B).unwrap();
    let got = recv_one(&mut sb0, "b eth0");
    check_vrrp(&got, A2, B, b"from a via eth0");
}

fn addr_lines(host: &Host) -> String {
    host.ip(["-4", "addr", "show", "dev", "eth0"]).unwrap()
}

/// VIP add and del are idempotent, keep the prefix, and show in `ip -4 addr`; `link` reads
/// index, name, MAC and state; errors name the request and carry the kernel's errno.
fn rtnl_adds_lists_and_deletes_vips() {
    let Some(lab) = Lab::for_test("vio-addr") else {
        return;
    };
    let (a, _b, _c) = lan(&lab);
    let iface = a.iface("eth0", None).unwrap();
    let idx = iface.ifindex;
    let mut rtnl = a.in_ns(Rtnl::new).unwrap().unwrap();

    rtnl.add_addr(idx, VIP, 24).unwrap();
    rtnl.add_addr(idx, VIP, 24).unwrap();
    assert!(addr_lines(&a).contains("inet 198.18.1.100/24 "));
    let addrs = rtnl.addrs(idx).unwrap();
    assert!(addrs.contains(&(A, 24)), "{addrs:?}");
    assert!(addrs.contains(&(VIP, 24)), "{addrs:?}");
    assert_eq!(addrs.len(), 2, "{addrs:?}");

    rtnl.del_addr(idx, VIP, 24).unwrap();
    rtnl.del_addr(idx, VIP, 24).unwrap();
    assert!(!addr_lines(&a).contains("198.18.1.100"));
    assert_eq!(rtnl.addrs(idx).unwrap(), vec![(A, 24)]);

    let link = rtnl.link("eth0").unwrap();
    assert_eq!(link.index, idx);
    assert_eq!(link.name, "eth0");
    assert_eq!(link.mac, iface.mac.0);
    assert!(link.up, "{link:?}");

    let e = rtnl.link("nosuch0").unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
    assert!(e.to_string().contains("ip link show dev nosuch0"), "{e}");
    let e = rtnl.add_addr(99_999, VIP, 32).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
    assert!(e.what().contains("ip addr add 198.18.1.100/32"), "{e}");
}

fn neigh(host: &Host) -> String {
    host.ip(["neigh", "show", &VIP.to_string(), "dev", "eth0"])
        .unwrap()
}

/// After the VIP moves from a to b, one gratuitous ARP from b repoints c's existing neighbour
/// entry at b's MAC. No wait past c's `locktime` (1 s): Linux lets a gratuitous ARP (sender IP
/// = target IP) override within it, which is the form sent here. (On a slow run the locktime
/// passes anyway, so the test cannot flake; it is then only less strict.)
fn garp_moves_neighbour_entry_to_new_master() {
    let Some(lab) = Lab::for_test("vio-garp") else {
        return;
    };
    let (a, b, c) = lan(&lab);
    let a_if = a.iface("eth0", None).unwrap();
    let b_if = b.iface("eth0", None).unwrap();
    let mut rtnl_a = a.in_ns(Rtnl::new).unwrap().unwrap();
    let mut rtnl_b = b.in_ns(Rtnl::new).unwrap().unwrap();

    rtnl_a.add_addr(a_if.ifindex, VIP, 32).unwrap();
    let ping = c
        .run(["ping", "-c", "1", "-W", "5", &VIP.to_string()])
        .unwrap();
    assert!(
        ping.status.success(),
        "c cannot ping the VIP on a: {ping:?}"
    );
    let before = neigh(&c);
    assert!(before.contains(&a_if.mac.to_string()), "{before}");

    rtnl_a.del_addr(a_if.ifindex, VIP, 32).unwrap();
    rtnl_b.add_addr(b_if.ifindex, VIP, 32).unwrap();
    let garp = b
        .in_ns(move || GarpSender::open(b_if.ifindex, b_if.mac.0))
        .unwrap()
        .unwrap();
    garp.send(VIP).unwrap();

    let want = b_if.mac.to_string();
    let moved = wait_until(SECS, || neigh(&c).contains(&want));
    assert!(
        moved.is_ok(),
        "c's entry for the VIP still {:?}, want {want}",
        neigh(&c)
    );
}

fn wait_event(w: &mut LinkWatcher, want: impl Fn(&LinkEvent) -> bool) -> LinkEvent {
    let deadline = Instant::now() + SECS;
    let mut seen = Vec::new();
    loop {
        for e in w.drain() {
            if want(&e) {
                return e;
            }
            seen.push(e);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no such link event within {SECS:?}: {seen:?}"
        );
        readable(w.fd(), left);
    }
}

/// `ip link set eth0 down` / `up` arrive as events with eth0's index and name and the state.
fn link_watcher_sees_down_and_up() {
    let Some(lab) = Lab::for_test("vio-link") else {
        return;
    };
    let (a, _b, _c) = lan(&lab);
    let idx = a.ifindex("eth0").unwrap();
    let mut w = a.in_ns(LinkWatcher::new).unwrap().unwrap();
    let mut rtnl = a.in_ns(Rtnl::new).unwrap().unwrap();
    assert!(rtnl.link("eth0").unwrap().up);

    a.ip(["link", "set", "eth0", "down"]).unwrap();
    let e = wait_event(&mut w, |e| e.name == "eth0" && !e.up);
    assert_eq!(e.index, idx);
    assert!(!rtnl.link("eth0").unwrap().up);

    a.ip(["link", "set", "eth0", "up"]).unwrap();
    // Carrier (IFF_RUNNING) may follow IFF_UP in a later notification.
    let e = wait_event(&mut w, |e| e.name == "eth0" && e.up);
    assert_eq!(e.index, idx);
    assert!(!w.take_overrun());
}

/// `set_realtime` puts the calling thread, and only it, in SCHED_FIFO at the priority given.
fn rt_set_realtime_on_calling_thread() {
    fn policy() -> (i32, i32) {
        let mut policy = 0;
        // SAFETY: all-zero is a valid sched_param.
        let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
        // SAFETY: pthread_self() is the calling thread; both out-pointers are live.
        let rc =
            unsafe { libc::pthread_getschedparam(libc::pthread_self(), &mut policy, &mut param) };
        assert_eq!(rc, 0);
        (policy, param.sched_priority)
    }
    let rt = std::thread::spawn(|| {
        vrrp::io::rt::set_realtime(10).unwrap();
        policy()
    })
    .join()
    .unwrap();
    assert_eq!(rt, (libc::SCHED_FIFO, 10));
    assert_eq!(
        policy(),
        (libc::SCHED_OTHER, 0),
        "the test thread changed too"
    );
}

/// `lock_memory` locks the process's pages. Runs `lock_memory_child` in a child process, so
/// the test harness itself stays unlocked.
fn rt_lock_memory() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "lock_memory_child", "--nocapture"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

fn lock_memory_child() {
    vrrp::io::rt::lock_memory().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck in /proc/self/status");
    assert!(locked_kb > 0, "{status}");
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [multicast_advert_reaches_joined_peers_only, unicast_advert_is_received_on_its_interface_only, rtnl_adds_lists_and_deletes_vips, garp_moves_neighbour_entry_to_new_master, link_watcher_sees_down_and_up, rt_set_realtime_on_calling_thread, rt_lock_memory];
    on_request: [lock_memory_child]
}
