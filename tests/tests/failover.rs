//! VRRP failover between two `directord` in the lab: the VIP moves when the master dies
//! (SIGKILL, no goodbye) or stops cleanly (priority 0), the client's neighbour entry follows
//! the gratuitous ARP, traffic through the VIP works on the new master, and a returning
//! master preempts (or not, per config) without a long dual-master window.
//!
//! Durations asserted here are protocol properties measured on captured packets (a takeover
//! after a resignation happens within Skew_Time, not after Master_Down_Interval), with
//! margins far above scheduling noise; speed itself is for the benchmarks.

use std::net::Ipv4Addr;
use std::time::Duration;

use director_lab::pair::{ext_addr, Pair, PairSpec};
use director_lab::topo::{Mode, VIP};
use director_lab::Lab;

const T: Duration = Duration::from_secs(15);

/// A captured VRRP advert or ARP on the client's segment.
#[derive(Debug, Clone)]
enum Seen {
    Advert {
        at: Duration,
        src: Ipv4Addr,
        priority: u8,
    },
    Garp {
        at: Duration,
        mac: String,
    },
}

fn mac_str(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Adverts for vrid 51 and gratuitous ARPs for the VIP, in capture order.
fn parse(frames: &[(Duration, Vec<u8>)]) -> Vec<Seen> {
    let mut out = Vec::new();
    for (at, f) in frames {
        if f.len() < 14 {
            continue;
        }
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        let p = &f[14..];
        if ethertype == 0x0800 && p.len() >= 28 && p[9] == 112 {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p.len() >= ihl + 4 && p[ihl + 1] == 51 {
                out.push(Seen::Advert {
                    at: *at,
                    src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
                    priority: p[ihl + 2],
                });
            }
        } else if ethertype == 0x0806 && p.len() >= 28 {
            let spa = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
            let tpa = Ipv4Addr::new(p[24], p[25], p[26], p[27]);
            if spa == VIP && tpa == VIP {
                out.push(Seen::Garp {
                    at: *at,
                    mac: mac_str(&p[8..14]),
                });
            }
        }
    }
    out
}

/// (time, priority) of every advert from `src`, in capture order.
fn adverts_from(seen: &[Seen], src: Ipv4Addr) -> Vec<(Duration, u8)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Advert {
                at,
                src: from,
                priority,
            } if *from == src => Some((*at, *priority)),
            _ => None,
        })
        .collect()
}

/// The first gratuitous ARP for the VIP from `mac`.
fn first_garp_from(seen: &[Seen], mac: &str) -> Option<Duration> {
    seen.iter().find_map(|s| match s {
        Seen::Garp { at, mac: from } if from == mac => Some(*at),
        _ => None,
    })
}

fn pair(tag: &str, spec: PairSpec) -> Option<Pair> {
    let lab = Lab::for_test(tag)?;
    let mut pair = Pair::new(lab, spec).expect("pair topology");
    pair.start(0).expect("start lb-a");
    pair.wait_state(0, "ext", "MASTER", T).expect("lb-a master");
    pair.start(1).expect("start lb-b");
    pair.wait_state(1, "ext", "BACKUP", T).expect("lb-b backup");
    Some(pair)
}

fn node_mac(pair: &Pair, n: usize) -> String {
    pair.nodes[n].mac("ext").expect("mac").to_string()
}

fn sigkill_master_backup_takes_the_vip_and_the_client_follows() {
    let mut spec = PairSpec::new(Mode::Dr);
    spec.interval = "100ms".into();
    let Some(mut pair) = pair("fo-kill", spec) else {
        return;
    };
    assert!(pair.holds_vip(0).unwrap());
    assert!(!pair.holds_vip(1).unwrap());
    let before = pair.curl().expect("traffic through lb-a");
    assert!(before.starts_with("rs"), "{before}");
    assert_eq!(pair.client_vip_mac().unwrap(), Some(node_mac(&pair, 0)));

    let cap = pair.client.capture("eth0", "vrrp or arp").expect("capture");
    // Let the capture see lb-a's adverts first.
    std::thread::sleep(Duration::from_millis(300));
    pair.kill(0).expect("SIGKILL lb-a");
    pair.wait_state(1, "ext", "MASTER", T)
        .expect("lb-b takes over");
    assert!(pair.holds_vip(1).unwrap());
    // SIGKILL leaves the VIP on lb-a's interface (its namespace lives on, like a hung box
    // would): the client must still follow lb-b, by the gratuitous ARP.
    director_lab::wait_until(T, || {
        pair.client_vip_mac().ok().flatten() == Some(node_mac(&pair, 1))
    })
    .expect("the client's neighbour entry points at lb-b");
    let after = pair.curl().expect("traffic through lb-b");
    assert!(after.starts_with("rs"), "{after}");
    let seen = parse(&cap.stop_timed().expect("capture"));
    let last_a = adverts_from(&seen, ext_addr(0))
        .last()
        .map(|a| a.0)
        .expect("lb-a advertised before it died");
    let garp_b = first_garp_from(&seen, &node_mac(&pair, 1)).expect("lb-b sent a gratuitous ARP");
    // Master_Down_Interval for priority 100 at 100 ms is 360.9 ms; the takeover cannot be
    // earlier (that would be a spurious takeover while lb-a was alive).
    let takeover = garp_b - last_a;
    assert!(takeover >= Duration::from_millis(360), "{takeover:?}");
    let v = pair.vrrp(1).unwrap();
    let cause = v["instances"][0]["last_transition"]["cause"]
        .as_str()
        .unwrap_or("");
    assert!(cause.contains("master down"), "{v}");
    eprintln!("takeover after SIGKILL: {takeover:?}");
}

fn clean_stop_hands_over_within_skew_time() {
    let mut spec = PairSpec::new(Mode::Dr);
    spec.interval = "1s".into();
    let Some(mut pair) = pair("fo-stop", spec) else {
        return;
    };
    let cap = pair.client.capture("eth0", "vrrp or arp").expect("capture");
    pair.stop(0).expect("SIGTERM lb-a");
    pair.wait_state(1, "ext", "MASTER", T)
        .expect("lb-b takes over");
    assert!(!pair.holds_vip(0).unwrap(), "a clean stop removes the VIP");
    let seen = parse(&cap.stop_timed().expect("capture"));
    let resign = adverts_from(&seen, ext_addr(0))
        .iter()
        .find(|a| a.1 == 0)
        .map(|a| a.0)
        .expect("lb-a resigned with priority 0");
    let garp_b = first_garp_from(&seen, &node_mac(&pair, 1)).expect("lb-b sent a gratuitous ARP");
    // Skew_Time for priority 100 at 1 s is 609 ms; Master_Down_Interval would be 3.6 s.
    let handover = garp_b - resign;
    assert!(handover >= Duration::from_millis(600), "{handover:?}");
    assert!(
        handover < Duration::from_millis(3000),
        "{handover:?}: waited for the timeout"
    );
    let v = pair.vrrp(1).unwrap();
    let cause = v["instances"][0]["last_transition"]["cause"]
        .as_str()
        .unwrap_or("");
    assert!(cause.contains("resigned"), "{v}");
    eprintln!("handover after a clean stop: {handover:?}");
}

/// Restarting the old, higher-priority master: with preempt it takes the VIP back, and the
/// two masters overlap by less than one advert interval; without preempt it stays backup.
fn restarted_master_preempts_or_not_per_config() {
    for preempt in [true, false] {
        let mut spec = PairSpec::new(Mode::Dr);
        spec.interval = "100ms".into();
        spec.preempt = preempt;
        let Some(mut pair) = pair(if preempt { "fo-pre" } else { "fo-nopre" }, spec) else {
            return;
        };
        // The client talks to the VIP, so it has a neighbour entry for the GARPs to move.
        assert!(pair.curl().unwrap().starts_with("rs"));
        pair.kill(0).unwrap();
        pair.wait_state(1, "ext", "MASTER", T).unwrap();
        let cap = pair.client.capture("eth0", "vrrp or arp").expect("capture");
        pair.start(0).expect("restart lb-a");
        assert!(
            !pair.holds_vip(0).unwrap() || pair.state(0, "ext").unwrap() == "MASTER",
            "a starting node removes the VIP a crashed run left behind"
        );
        if !preempt {
            std::thread::sleep(Duration::from_secs(2));
            assert_eq!(pair.state(0, "ext").unwrap(), "BACKUP");
            assert_eq!(pair.state(1, "ext").unwrap(), "MASTER");
            assert!(!pair.holds_vip(0).unwrap());
            continue;
        }
        pair.wait_state(0, "ext", "MASTER", T)
            .expect("lb-a preempts");
        pair.wait_state(1, "ext", "BACKUP", T).expect("lb-b yields");
        director_lab::wait_until(T, || {
            pair.client_vip_mac().ok().flatten() == Some(node_mac(&pair, 0))
        })
        .expect("the client follows lb-a back");
        std::thread::sleep(Duration::from_millis(300));
        let seen = parse(&cap.stop_timed().expect("capture"));
        let first_a = adverts_from(&seen, ext_addr(0))
            .iter()
            .find(|a| a.1 > 0)
            .map(|a| a.0)
            .expect("lb-a advertised");
        let last_b = adverts_from(&seen, ext_addr(1))
            .last()
            .map(|a| a.0)
            .expect("lb-b advertised");
        let window = last_b.saturating_sub(first_a);
        assert!(
            window <= Duration::from_millis(100),
            "dual master for {window:?}"
        );
        eprintln!("preempt: dual-master window {window:?}");
    }
}

/// `director demote` on the master hands over at once (priority 0); `director promote` on
/// the old master takes it back.
fn demote_and_promote_switch_over() {
    let mut spec = PairSpec::new(Mode::Dr);
    spec.interval = "100ms".into();
    let Some(pair) = pair("fo-demote", spec) else {
        return;
    };
    let out = pair.cli(0, &["demote"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pair.wait_state(1, "ext", "MASTER", T)
        .expect("lb-b takes over");
    // lb-a has the higher priority but does not preempt while demoted.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pair.state(0, "ext").unwrap(), "BACKUP");
    assert_eq!(pair.vrrp(0).unwrap()["instances"][0]["demoted"], true);
    assert!(pair.curl().unwrap().starts_with("rs"));
    let out = pair.cli(0, &["promote"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pair.wait_state(0, "ext", "MASTER", T).expect("lb-a back");
    pair.wait_state(1, "ext", "BACKUP", T).expect("lb-b yields");
    let events = pair.cli(0, &["events"]).unwrap();
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(text.contains("operator demote"), "{text}");
    assert!(text.contains("MASTER -> BACKUP"), "{text}");
}

/// NAT: the external VIP and the real servers' gateway move together (sync group), and
/// traffic flows through the new master both ways.
fn nat_sync_group_moves_both_vips() {
    let mut spec = PairSpec::new(Mode::Nat);
    spec.interval = "100ms".into();
    let Some(mut pair) = pair("fo-nat", spec) else {
        return;
    };
    pair.wait_state(0, "int", "MASTER", T).unwrap();
    assert!(pair.curl().unwrap().starts_with("rs"));
    pair.kill(0).unwrap();
    pair.wait_state(1, "ext", "MASTER", T).unwrap();
    pair.wait_state(1, "int", "MASTER", T).unwrap();
    director_lab::wait_until(T, || pair.curl().is_ok_and(|r| r.starts_with("rs")))
        .expect("traffic through lb-b");
}

/// The datapath's heartbeat is tracked: a master whose forwarder stalls resigns. Stopping the
/// daemon's process (SIGSTOP) freezes everything, so instead the test tracks an interface:
/// taking lb-a's `ext` link down faults the instance and lb-b takes over; bringing it back
/// up returns lb-a to backup and then to master (preempt).
fn interface_down_faults_the_master() {
    let mut spec = PairSpec::new(Mode::Dr);
    spec.interval = "100ms".into();
    let Some(pair) = pair("fo-fault", spec) else {
        return;
    };
    pair.nodes[0].ip(["link", "set", "ext", "down"]).unwrap();
    pair.wait_state(0, "ext", "FAULT", T).expect("lb-a faults");
    pair.wait_state(1, "ext", "MASTER", T)
        .expect("lb-b takes over");
    pair.nodes[0].ip(["link", "set", "ext", "up"]).unwrap();
    pair.wait_state(0, "ext", "MASTER", T)
        .expect("lb-a back and preempts");
    pair.wait_state(1, "ext", "BACKUP", T).expect("lb-b yields");
}

/// Instance notify hooks run on every transition with INSTANCE NAME STATE PRIORITY (STOP when
/// the daemon stops).
fn notify_hooks_run_on_every_transition() {
    let Some(lab) = Lab::for_test("fo-notify") else {
        return;
    };
    let dir = lab.dir().to_path_buf();
    let script = dir.join("notify.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}/notify-$NODE.log\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut spec = PairSpec::new(Mode::Nat);
    spec.interval = "100ms".into();
    // Each node's hook is a one-line wrapper that names the node.
    for (n, node) in ["a", "b"].iter().enumerate() {
        let wrapper = dir.join(format!("notify-{node}.sh"));
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\nNODE={node} exec {} \"$@\"\n", script.display()),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        spec.instance_extra[n] = format!("notify = \"{}\"", wrapper.display());
    }
    let mut pair = Pair::new(lab, spec).expect("pair");
    pair.start(0).unwrap();
    pair.wait_state(0, "int", "MASTER", T).unwrap();
    pair.start(1).unwrap();
    pair.wait_state(1, "int", "BACKUP", T).unwrap();
    pair.stop(0).unwrap();
    pair.wait_state(1, "ext", "MASTER", T).unwrap();
    pair.wait_state(1, "int", "MASTER", T).unwrap();
    let read = |node: &str| std::fs::read_to_string(dir.join(format!("notify-{node}.log")));
    director_lab::wait_until(T, || {
        read("a").is_ok_and(|t| t.matches("STOP").count() == 2)
    })
    .expect("lb-a's hooks ran for the stop");
    director_lab::wait_until(T, || {
        read("b").is_ok_and(|t| t.matches("MASTER").count() == 2)
    })
    .expect("lb-b's hooks ran for the takeover");
    let a = read("a").unwrap();
    let b = read("b").unwrap();
    for line in [
        "INSTANCE ext BACKUP 200",
        "INSTANCE int BACKUP 200",
        "INSTANCE ext MASTER 200",
        "INSTANCE int MASTER 200",
        "INSTANCE ext STOP 200",
        "INSTANCE int STOP 200",
    ] {
        assert!(a.lines().any(|l| l == line), "lb-a: no {line:?} in\n{a}");
    }
    for line in [
        "INSTANCE ext BACKUP 100",
        "INSTANCE ext MASTER 100",
        "INSTANCE int MASTER 100",
    ] {
        assert!(b.lines().any(|l| l == line), "lb-b: no {line:?} in\n{b}");
    }
}

/// Sends whole IPv4 datagrams (IP_HDRINCL) out of `ifname` in the calling thread's namespace.
fn send_raw(ifname: &str, datagrams: &[Vec<u8>]) {
    // SAFETY: plain socket calls on a fresh fd that is closed at the end; every pointer is to
    // a live local of the size passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let name = std::ffi::CString::new(ifname).unwrap();
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.as_bytes_with_nul().len() as libc::socklen_t,
        );
        assert_eq!(
            rc,
            0,
            "SO_BINDTODEVICE: {}",
            std::io::Error::last_os_error()
        );
        for d in datagrams {
            let dst = Ipv4Addr::new(d[16], d[17], d[18], d[19]);
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(dst).to_be(),
                },
                sin_zero: [0; 8],
            };
            let n = libc::sendto(
                fd,
                d.as_ptr().cast(),
                d.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(
                n,
                d.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
        libc::close(fd);
    }
}

/// Malformed and foreign adverts injected on the segment — each claiming priority 254, so
/// that any one wrongly accepted would make the master yield — are counted by kind and change
/// nothing; the daemons keep running.
fn malformed_and_foreign_adverts_are_counted_and_ignored() {
    use vrrp::wire::{encode_ipv4_datagram, Advert, ChecksumMode, Version, MULTICAST_V4};
    let mut spec = PairSpec::new(Mode::Dr);
    spec.interval = "100ms".into();
    let Some(pair) = pair("fo-bad", spec) else {
        return;
    };
    let forged = Ipv4Addr::new(198, 18, 1, 99);
    let advert = |vrid: u8| Advert {
        version: Version::V3,
        vrid,
        priority: 254,
        interval_cs: 10,
        addrs: vec![std::net::IpAddr::V4(VIP)],
    };
    let good = |vrid: u8| {
        encode_ipv4_datagram(
            &advert(vrid),
            forged,
            MULTICAST_V4,
            ChecksumMode::PseudoHeader,
        )
    };
    let fix_ip_checksum = |d: &mut Vec<u8>| {
        d[10] = 0;
        d[11] = 0;
        let mut sum: u32 = 0;
        for c in d[..20].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let c = !(sum as u16);
        d[10..12].copy_from_slice(&c.to_be_bytes());
    };
    let mut bad = Vec::new();
    // TTL 64: not from this segment.
    let mut d = good(51);
    d[8] = 64;
    fix_ip_checksum(&mut d);
    bad.push(("ttl", d));
    // Checksum broken.
    let mut d = good(51);
    let n = d.len();
    d[n - 1] ^= 0xff;
    bad.push(("checksum", d));
    // Version 7.
    let mut d = good(51);
    d[20] = 0x71;
    bad.push(("version", d));
    // Type 2.
    let mut d = good(51);
    d[20] = 0x32;
    bad.push(("type", d));
    // Count says 3 addresses, one present.
    let mut d = good(51);
    d[23] = 3;
    bad.push(("length", d));
    let before = [pair.vrrp(0).unwrap(), pair.vrrp(1).unwrap()];
    let datagrams: Vec<Vec<u8>> = bad.iter().map(|(_, d)| d.clone()).collect();
    let foreign = good(99);
    pair.client
        .in_ns(|| {
            for _ in 0..10 {
                send_raw("eth0", &datagrams);
                send_raw("eth0", std::slice::from_ref(&foreign));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for (n, before) in before.iter().enumerate() {
        let v = pair.vrrp(n).unwrap();
        for (label, _) in &bad {
            assert_eq!(v["malformed"][label], 10, "node {n} {label}: {v}");
        }
        assert_eq!(v["foreign"], 10, "node {n}: {v}");
        let i = &v["instances"][0];
        assert_eq!(i["state"], before["instances"][0]["state"], "node {n}: {v}");
        assert_eq!(
            i["counters"]["became_master"],
            before["instances"][0]["counters"]["became_master"]
        );
        assert_eq!(
            i["counters"]["became_backup"],
            before["instances"][0]["counters"]["became_backup"]
        );
    }
    assert_eq!(pair.state(0, "ext").unwrap(), "MASTER");
    assert_eq!(pair.state(1, "ext").unwrap(), "BACKUP");
}

/// Forged priority-255 adverts for the pair's VRID, every 100 ms for 3 s from a third host
/// on the external segment and then 3 s more with the backup's own address as the source,
/// against a NAT pair (sync group ext + int) whose sync link is up. Before the pair
/// corroborated adverts over the sync link, this made the group oscillate (ext yields, the
/// group pulls int to BACKUP, int times out and pulls it back; the VIP on neither node most
/// of the time). Now: no transition on either node, the VIP stays on lb-a the whole time,
/// both nodes count the adverts and record the episodes as events. `unicast`: the same
/// with unicast peers, where only the spoofed source gets as far as the instance.
fn forged_adverts_move_nothing(unicast: bool) {
    use vrrp::wire::{encode_ipv4_datagram, Advert, ChecksumMode, Version, MULTICAST_V4};
    let mut spec = PairSpec::new(Mode::Nat);
    spec.interval = "100ms".into();
    spec.sync = true;
    spec.unicast = unicast;
    let tag = if unicast { "fo-forge-u" } else { "fo-forge-m" };
    let Some(pair) = pair(tag, spec) else {
        return;
    };
    director_lab::wait_until(T, || {
        pair.sync_peer_up(0).unwrap_or(false) && pair.sync_peer_up(1).unwrap_or(false)
    })
    .expect("the sync link comes up");
    // Each node's claims reach the other within a monitor period and a heartbeat.
    std::thread::sleep(Duration::from_millis(500));
    let before = [pair.vrrp(0).unwrap(), pair.vrrp(1).unwrap()];
    let third = Ipv4Addr::new(198, 18, 1, 99);
    let sources = if unicast {
        vec![ext_addr(1)]
    } else {
        vec![third, ext_addr(1)]
    };
    let mut lost_vip = 0;
    let mut rounds = 0;
    for &src in &sources {
        let advert = Advert {
            version: Version::V3,
            vrid: 51,
            priority: 255,
            interval_cs: 10,
            addrs: vec![std::net::IpAddr::V4(VIP)],
        };
        // To the group, and in unicast mode straight to lb-a (as a unicast peer sends).
        let dst = if unicast { ext_addr(0) } else { MULTICAST_V4 };
        let datagram = encode_ipv4_datagram(&advert, src, dst, ChecksumMode::PseudoHeader);
        for _ in 0..30 {
            pair.client
                .in_ns(|| send_raw("eth0", std::slice::from_ref(&datagram)))
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            rounds += 1;
            if !pair.holds_vip(0).unwrap_or(false) {
                lost_vip += 1;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        lost_vip, 0,
        "lb-a lost the VIP in {lost_vip} of {rounds} samples"
    );
    for (n, before) in before.iter().enumerate() {
        let v = pair.vrrp(n).unwrap();
        for (i, inst) in v["instances"].as_array().unwrap().iter().enumerate() {
            let was = &before["instances"][i]["counters"];
            for k in ["became_master", "became_backup"] {
                assert_eq!(
                    inst["counters"][k], was[k],
                    "node {n} {}: {k} moved: {v}",
                    inst["name"]
                );
            }
        }
    }
    assert_eq!(pair.state(0, "ext").unwrap(), "MASTER");
    assert_eq!(pair.state(0, "int").unwrap(), "MASTER");
    assert_eq!(pair.state(1, "ext").unwrap(), "BACKUP");
    let ext_counters = |n: usize| pair.vrrp(n).unwrap()["instances"][0]["counters"].clone();
    let a = ext_counters(0);
    let ignored_a = a["uncorroborated"].as_u64().unwrap();
    assert!(
        ignored_a >= 25 * sources.len() as u64,
        "lb-a ignored {ignored_a}: {a}"
    );
    let events = pair.cli(0, &["events"]).unwrap();
    let text = String::from_utf8_lossy(&events.stdout);
    for &src in &sources {
        assert!(
            text.contains(&format!("advert from {src} with priority 255 ignored")),
            "lb-a's events name the forged adverts from {src}:\n{text}"
        );
    }
    if !unicast {
        // lb-b hears the third host's adverts too (its own address is its own).
        let b = ext_counters(1);
        assert!(b["uncorroborated"].as_u64().unwrap() >= 25, "lb-b: {b}");
    }
    println!(
        "{tag}: {rounds} forged adverts (priority 255) from {sources:?}: no transition, VIP on lb-a \
         in every sample; lb-a ignored {ignored_a}"
    );
}

fn forged_adverts_move_nothing_multicast() {
    forged_adverts_move_nothing(false);
}

fn forged_adverts_move_nothing_unicast() {
    forged_adverts_move_nothing(true);
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [sigkill_master_backup_takes_the_vip_and_the_client_follows, clean_stop_hands_over_within_skew_time, restarted_master_preempts_or_not_per_config, demote_and_promote_switch_over, nat_sync_group_moves_both_vips, interface_down_faults_the_master, notify_hooks_run_on_every_transition, malformed_and_foreign_adverts_are_counted_and_ignored, forged_adverts_move_nothing_multicast, forged_adverts_move_nothing_unicast]
}
