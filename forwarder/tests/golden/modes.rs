//! Golden tables for the packet engine, katran style: each row is a frame in (built from
//! its fields with `forwarder::wire`, never typed as hex), the ring's metadata and the
//! engine clock → the verdict and the frame a correct director emits, byte for byte. The
//! rows of a table run in order against one engine, so connection state carries from row
//! to row. Every forwarded frame's checksums are also recomputed in full, independently of
//! the expected bytes. After each table: the counters `director stats` shows and the
//! connection table (`ConnTable::snapshot`).
//!
//! The lab's addresses are those of the namespace lab (tests/src/topo.rs): client
//! 198.18.1.10, VIP 198.18.1.100, director ext 198.18.1.2 (ifindex 2) / int 198.18.2.1
//! (ifindex 3), NAT reals 198.18.2.11-13 on port + 8000, DR reals 198.18.1.11-13.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;

use forwarder::conntrack::ConnState::{self, *};
use forwarder::engine::{DropReason, RxMeta, Verdict};
use forwarder::model::{Mode, Protocol, SchedulerKind};
use forwarder::wire::ipv4::Ipv4Packet;

use crate::frames::{
    self, arp_request, check_checksums, Csum, L4Check, Pkt, ACK, FIN, PSH, RST, SYN,
};
use crate::harness::*;

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

/// The NAT lab's services: web (rr over three reals), a real without a known MAC, a fully
/// quiesced service and a UDP service.
fn nat_services() -> Vec<forwarder::model::VirtualService> {
    use Mode::Nat;
    use SchedulerKind::Rr;
    let reals =
        |port| -> Vec<(Ipv4Addr, u16, u32)> { (1..=3).map(|i| (nat_real(i), port, 1)).collect() };
    vec![
        service("web", 80, TCP, Nat, Rr, &reals(8080)),
        service("nomac", 81, TCP, Nat, Rr, &[(UNRESOLVED_REAL, 8081, 1)]),
        service("quiet", 82, TCP, Nat, Rr, &[(nat_real(1), 8082, 0)]),
        service(
            "dns",
            53,
            UDP,
            Nat,
            Rr,
            &[(nat_real(1), 8053, 1), (nat_real(2), 8053, 1)],
        ),
    ]
}

/// A packet as it arrives from the client on ext.
fn from_client(p: Pkt) -> Pkt {
    p.macs(CLIENT_MAC, EXT_MAC)
}

/// A packet as it arrives from NAT real `i` on int.
fn from_real(i: u8, p: Pkt) -> Pkt {
    p.macs(nat_real_mac(i), INT_MAC)
}

/// `p` as the director must send it to NAT real `i`: destination real:port, int's MAC to
/// the real's, TTL - 1.
fn nat_to_real(p: &Pkt, i: u8, port: u16) -> Vec<u8> {
    let ttl = p.ttl - 1;
    p.clone()
        .to(sa(nat_real(i), port))
        .macs(INT_MAC, nat_real_mac(i))
        .ttl(ttl)
        .build()
}

/// A reply `p` as the director must send it toward the client: source VIP:port, ext's MAC
/// to `next_hop`'s, TTL - 1.
fn nat_to_client(p: &Pkt, vip: SocketAddrV4, next_hop: [u8; 6]) -> Vec<u8> {
    let ttl = p.ttl - 1;
    p.clone().from(vip).macs(EXT_MAC, next_hop).ttl(ttl).build()
}

fn partial() -> RxMeta {
    RxMeta {
        csum_partial: true,
        ..RxMeta::default()
    }
}

fn entry(state: ConnState, real: SocketAddrV4) -> Option<(ConnState, SocketAddrV4)> {
    Some((state, real))
}

/// Connection table contents as (client, vip) → (state, real), sorted.
type ConnMap = BTreeMap<(SocketAddrV4, SocketAddrV4), (ConnState, SocketAddrV4)>;

fn conn_map(lab: &Lab) -> ConnMap {
    lab.all_conns()
        .iter()
        .map(|e| ((e.client(), e.vip()), (e.state(), e.real())))
        .collect()
}

fn expect_counts(failures: &mut Vec<String>, table: &str, lab: &Lab, want: Counts) {
    let got = lab.counts();
    if got != want {
        failures.push(format!(
            "[{table}] counters after the table:\n  expected {want:?}\n  got      {got:?}"
        ));
    }
    if !got.balanced() {
        failures.push(format!("[{table}] counters do not add up: {got:?}"));
    }
}

fn expect_conns(failures: &mut Vec<String>, table: &str, lab: &Lab, want: ConnMap) {
    let got = conn_map(lab);
    if got != want {
        failures.push(format!(
            "[{table}] connection table after the table:\n  expected {want:#?}\n  got      {got:#?}"
        ));
    }
}

// ---- NAT ------------------------------------------------------------------------------------

pub fn nat_table() {
    nat_table_run(false)
}

/// [`nat_table`] with every row also run through the XDP program.
pub fn nat_table_xdp() {
    nat_table_run(true)
}

fn nat_table_run(xdp: bool) {
    let mut lab = Lab::new(nat_services());
    if xdp && !lab.use_xdp("nat_table") {
        return;
    }
    let web = sa(VIP, 80);
    let dns = sa(VIP, 53);
    let r = |i| sa(nat_real(i), 8080);
    let mut rows = Vec::new();

    // Flow A: a whole TCP connection, then its TIME_WAIT entry expires.
    let a = sa(CLIENT, 40000);
    let p = from_client(Pkt::tcp(a, web, SYN, 1000, 0));
    rows.push(
        row("A: client SYN → real 1 (rr, first pick)", 1000, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080))
            .conn(TCP, a, web, entry(SynRecv, r(1))),
    );
    let p = from_real(1, Pkt::tcp(r(1), a, SYN | ACK, 5000, 1001));
    rows.push(
        row("A: real 1 SYN-ACK → client, source VIP:80", 1000, p.build())
            .forward(EXT, nat_to_client(&p, web, CLIENT_MAC))
            .conn(TCP, a, web, entry(SynRecv, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1001, 5001));
    rows.push(
        row("A: client ACK completes the handshake", 1001, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080))
            .conn(TCP, a, web, entry(Established, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1001, 5001).payload(b"GET / HTTP/1.1\r\n\r\n"));
    rows.push(row("A: client data", 1001, p.build()).forward(INT, nat_to_real(&p, 1, 8080)));
    let p = from_real(
        1,
        Pkt::tcp(r(1), a, PSH | ACK, 5001, 1019)
            .payload(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
    );
    rows.push(
        row("A: real data", 1002, p.build()).forward(EXT, nat_to_client(&p, web, CLIENT_MAC)),
    );
    let p = from_client(Pkt::tcp(a, web, FIN | ACK, 1019, 5040));
    rows.push(
        row("A: client FIN", 1003, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080))
            .conn(TCP, a, web, entry(FinWait, r(1))),
    );
    let p = from_real(1, Pkt::tcp(r(1), a, FIN | ACK, 5040, 1020));
    rows.push(
        row("A: real FIN", 1003, p.build())
            .forward(EXT, nat_to_client(&p, web, CLIENT_MAC))
            .conn(TCP, a, web, entry(TimeWait, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1020, 5041));
    rows.push(
        row("A: client's last ACK", 1004, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080))
            .conn(TCP, a, web, entry(TimeWait, r(1))),
    );
    // tcp_fin = 120 s after the last packet: the entry is dead at exactly 1004 + 120.
    rows.push(
        row(
            "A: ACK after the tcp_fin timeout → no connection (no RST)",
            1004 + 120,
            p.build(),
        )
        .drop(DropReason::NoConnection)
        .conn(TCP, a, web, None),
    );

    // Flow B: the server closes first, then the client reuses its port.
    let b = sa(CLIENT, 40001);
    let p = from_client(Pkt::tcp(b, web, SYN, 2000, 0));
    rows.push(
        row("B: client SYN → real 2 (rr)", 1200, p.build())
            .forward(INT, nat_to_real(&p, 2, 8080))
            .conn(TCP, b, web, entry(SynRecv, r(2))),
    );
    let p = from_real(2, Pkt::tcp(r(2), b, SYN | ACK, 6000, 2001));
    rows.push(
        row("B: real 2 SYN-ACK", 1200, p.build()).forward(EXT, nat_to_client(&p, web, CLIENT_MAC)),
    );
    let p = from_client(Pkt::tcp(b, web, ACK, 2001, 6001));
    rows.push(
        row("B: client ACK", 1201, p.build())
            .forward(INT, nat_to_real(&p, 2, 8080))
            .conn(TCP, b, web, entry(Established, r(2))),
    );
    let p = from_real(2, Pkt::tcp(r(2), b, FIN | ACK, 6001, 2001));
    rows.push(
        row("B: real 2 FIN first", 1202, p.build())
            .forward(EXT, nat_to_client(&p, web, CLIENT_MAC))
            .conn(TCP, b, web, entry(CloseWait, r(2))),
    );
    let p = from_client(Pkt::tcp(b, web, FIN | ACK, 2001, 6002));
    rows.push(
        row("B: client FIN", 1202, p.build())
            .forward(INT, nat_to_real(&p, 2, 8080))
            .conn(TCP, b, web, entry(TimeWait, r(2))),
    );
    let p = from_client(Pkt::tcp(b, web, SYN, 9000, 0));
    rows.push(
        row(
            "B: SYN reusing the port in TIME_WAIT → rescheduled to real 3",
            1210,
            p.build(),
        )
        .forward(INT, nat_to_real(&p, 3, 8080))
        .conn(TCP, b, web, entry(SynRecv, r(3))),
    );
    let p = from_real(3, Pkt::tcp(r(3), b, SYN | ACK, 7000, 9001));
    rows.push(
        row("B: real 3 SYN-ACK", 1210, p.build()).forward(EXT, nat_to_client(&p, web, CLIENT_MAC)),
    );
    let p = from_real(2, Pkt::tcp(r(2), b, ACK, 6002, 2002));
    rows.push(
        row(
            "B: late segment from the old real 2 → kernel's",
            1210,
            p.build(),
        )
        .pass(),
    );

    // Flow C: a client behind the router: replies go to the router's MAC.
    let c = sa(Ipv4Addr::new(198, 19, 7, 7), 33000);
    let p = Pkt::tcp(c, web, SYN, 3000, 0).macs(ROUTER_EXT_MAC, EXT_MAC);
    rows.push(
        row("C: remote client SYN → real 1 (rr wraps)", 1300, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080))
            .conn(TCP, c, web, entry(SynRecv, r(1))),
    );
    let p = from_real(1, Pkt::tcp(r(1), c, SYN | ACK, 8000, 3001));
    rows.push(
        row("C: SYN-ACK → the gateway's MAC", 1300, p.build())
            .forward(EXT, nat_to_client(&p, web, ROUTER_EXT_MAC)),
    );

    // Flow D: a local client whose checksums the NIC finishes (CHECKSUM_PARTIAL).
    let d = sa(CLIENT, 40002);
    let p = from_client(Pkt::tcp(d, web, SYN, 4000, 0).csum(Csum::Partial));
    rows.push(
        row(
            "D: SYN, CHECKSUM_PARTIAL: seed over the new addresses",
            1300,
            p.build(),
        )
        .meta(partial())
        .forward(INT, nat_to_real(&p, 2, 8080))
        .conn(TCP, d, web, entry(SynRecv, r(2))),
    );
    let p = from_real(2, Pkt::tcp(r(2), d, SYN | ACK, 9500, 4001));
    rows.push(row("D: SYN-ACK", 1300, p.build()).forward(EXT, nat_to_client(&p, web, CLIENT_MAC)));
    let p = from_client(
        Pkt::tcp(d, web, PSH | ACK, 4001, 9501)
            .payload(b"partial")
            .csum(Csum::Partial),
    );
    rows.push(
        row("D: data, CHECKSUM_PARTIAL", 1301, p.build())
            .meta(partial())
            .forward(INT, nat_to_real(&p, 2, 8080))
            .conn(TCP, d, web, entry(Established, r(2))),
    );
    let p = from_real(
        2,
        Pkt::tcp(r(2), d, PSH | ACK, 9501, 4008)
            .payload(b"reply")
            .csum(Csum::Partial),
    );
    rows.push(
        row(
            "D: reply, CHECKSUM_PARTIAL: seed over VIP and client",
            1301,
            p.build(),
        )
        .meta(partial())
        .forward(EXT, nat_to_client(&p, web, CLIENT_MAC)),
    );

    // ICMP errors about flow D, both ways.
    let mtu_1400 = [0, 0, 0x05, 0x78];
    let sent = Pkt::tcp(web, d, PSH | ACK, 9501, 4008)
        .payload(b"reply")
        .ttl(63);
    let into_real = sent.clone().from(r(2));
    let p =
        Pkt::icmp_error(ROUTER_EXT, VIP, 3, 4, mtu_1400, &sent, None).macs(ROUTER_EXT_MAC, EXT_MAC);
    let want = Pkt::icmp_error(ROUTER_EXT, nat_real(2), 3, 4, mtu_1400, &into_real, None)
        .macs(INT_MAC, nat_real_mac(2))
        .ttl(63);
    rows.push(
        row(
            "I: frag-needed to the VIP about VIP:80 → client → real 2, quoted source real:8080",
            1302,
            p.build(),
        )
        .forward(INT, want.build()),
    );
    let p = Pkt::icmp_error(ROUTER_EXT, VIP, 3, 4, mtu_1400, &sent, Some(28))
        .macs(ROUTER_EXT_MAC, EXT_MAC);
    let want = Pkt::icmp_error(
        ROUTER_EXT,
        nat_real(2),
        3,
        4,
        mtu_1400,
        &into_real,
        Some(28),
    )
    .macs(INT_MAC, nat_real_mac(2))
    .ttl(63);
    rows.push(
        row(
            "I: frag-needed quoting only 8 bytes of TCP (no checksum to fix)",
            1302,
            p.build(),
        )
        .forward(INT, want.build()),
    );
    let forwarded = Pkt::tcp(d, r(2), PSH | ACK, 4008, 9506)
        .payload(b"more")
        .ttl(63);
    let p = Pkt::icmp_error(ROUTER_INT, CLIENT, 3, 1, [0; 4], &forwarded, None)
        .macs(ROUTER_INT_MAC, INT_MAC);
    let want = Pkt::icmp_error(VIP, CLIENT, 3, 1, [0; 4], &forwarded.clone().to(web), None)
        .macs(EXT_MAC, CLIENT_MAC)
        .ttl(63);
    rows.push(
        row(
            "I: host unreachable from the real side → client, from the VIP, quoting VIP:80",
            1302,
            p.build(),
        )
        .forward(EXT, want.build()),
    );
    let p = from_client(Pkt::icmp_echo(CLIENT, VIP, 0x77, 1));
    rows.push(row("I: echo request to the VIP → kernel's", 1302, p.build()).pass());
    let unknown = Pkt::tcp(web, sa(CLIENT, 49999), ACK, 1, 1).ttl(63);
    let p = Pkt::icmp_error(ROUTER_EXT, VIP, 3, 4, mtu_1400, &unknown, None)
        .macs(ROUTER_EXT_MAC, EXT_MAC);
    rows.push(
        row("I: error about an unknown flow", 1302, p.build()).drop(DropReason::IcmpNoConnection),
    );

    // UDP.
    let (u0, u1) = (sa(CLIENT, 50000), sa(CLIENT, 50001));
    let ur = |i| sa(nat_real(i), 8053);
    let p = from_client(Pkt::udp(u0, dns, b"query-0").csum(Csum::None));
    rows.push(
        row(
            "U: query without checksum → real 1, checksum stays 0",
            1400,
            p.build(),
        )
        .forward(INT, nat_to_real(&p, 1, 8053))
        .conn(UDP, u0, dns, entry(Udp, ur(1))),
    );
    let p = from_real(1, Pkt::udp(ur(1), u0, b"answer-0").csum(Csum::None));
    rows.push(
        row("U: answer without checksum, stays 0", 1400, p.build())
            .forward(EXT, nat_to_client(&p, dns, CLIENT_MAC)),
    );
    let p = from_client(Pkt::udp(u1, dns, b"query-1"));
    rows.push(
        row(
            "U: query with checksum → real 2, checksum updated",
            1400,
            p.build(),
        )
        .forward(INT, nat_to_real(&p, 2, 8053))
        .conn(UDP, u1, dns, entry(Udp, ur(2))),
    );
    let p = from_real(2, Pkt::udp(ur(2), u1, b"answer-1"));
    rows.push(
        row("U: answer with checksum updated", 1400, p.build())
            .forward(EXT, nat_to_client(&p, dns, CLIENT_MAC)),
    );
    let p = from_client(Pkt::udp(u0, dns, b"query-0 again").csum(Csum::None));
    rows.push(
        row("U: same flow again → same real 1", 1401, p.build())
            .forward(INT, nat_to_real(&p, 1, 8053)),
    );
    // RFC 768: a computed 0 is sent as 0xffff, since 0 means "none".
    let u3 = sa(CLIENT, 50003);
    let p = from_client(Pkt::udp(u3, dns, &payload_summing_to_ffff(u3, ur(1))));
    rows.push(
        row(
            "U: checksum that becomes 0 after NAT is sent as 0xffff",
            1401,
            p.build(),
        )
        .forward(INT, nat_to_real(&p, 1, 8053))
        .conn(UDP, u3, dns, entry(Udp, ur(1))),
    );
    let p = from_client(Pkt::udp(sa(CLIENT, 50002), sa(VIP, 5353), b"mdns"));
    rows.push(
        row(
            "U: to a VIP port without a service → kernel's",
            1401,
            p.build(),
        )
        .pass(),
    );
    let quoted = Pkt::udp(u1, ur(2), b"query-1").ttl(63);
    let p = from_real(
        2,
        Pkt::icmp_error(nat_real(2), CLIENT, 3, 3, [0; 4], &quoted, None),
    );
    let want = Pkt::icmp_error(VIP, CLIENT, 3, 3, [0; 4], &quoted.clone().to(dns), None)
        .macs(EXT_MAC, CLIENT_MAC)
        .ttl(63);
    rows.push(
        row(
            "U: port unreachable from real 2 → client, from the VIP, quoting VIP:53",
            1402,
            p.build(),
        )
        .forward(EXT, want.build()),
    );

    let mut failures = run_table(&mut lab, "nat", rows);
    expect_counts(
        &mut failures,
        "nat",
        &lab,
        Counts {
            rx: 36,
            passed: 3,
            forwarded_in: 16,
            forwarded_out: 11,
            icmp_forwarded: 4,
            emitted: 0,
            icmp_sent: 0,
            icmp_limited: 0,
            icmp_unroutable: 0,
            new_conns: 8,
            drops: vec![
                (DropReason::NoConnection, 1),
                (DropReason::IcmpNoConnection, 1),
            ],
        },
    );
    expect_conns(
        &mut failures,
        "nat",
        &lab,
        [
            ((b, web), (SynRecv, r(3))),
            ((c, web), (SynRecv, r(1))),
            ((d, web), (Established, r(2))),
            ((u0, dns), (Udp, ur(1))),
            ((u1, dns), (Udp, ur(2))),
            ((u3, dns), (Udp, ur(1))),
        ]
        .into_iter()
        .collect(),
    );
    // The rows of established flows that the fast path forwards.
    assert_xdp_forwarded(&lab, "nat_table", if xdp { 5 } else { 0 });
    assert_no_failures(failures);
}

/// A 2-byte UDP payload for which the datagram `client` → `real` has a computed checksum
/// of 0, written as 0xffff.
fn payload_summing_to_ffff(client: SocketAddrV4, real: SocketAddrV4) -> [u8; 2] {
    (0..=u16::MAX)
        .map(u16::to_be_bytes)
        .find(|v| {
            let f = Pkt::udp(client, real, v).build();
            f[14 + 20 + 6..14 + 20 + 8] == [0xff, 0xff]
        })
        .expect("some payload sums to 0")
}

// ---- DR -------------------------------------------------------------------------------------

pub fn dr_table() {
    dr_table_run(false)
}

/// [`dr_table`] with every row also run through the XDP program.
pub fn dr_table_xdp() {
    dr_table_run(true)
}

fn dr_table_run(xdp: bool) {
    let reals: Vec<_> = (1..=3).map(|i| (dr_real(i), 80, 1)).collect();
    let mut lab = Lab::new(vec![service(
        "web-dr",
        80,
        TCP,
        Mode::Dr,
        SchedulerKind::Rr,
        &reals,
    )]);
    if xdp && !lab.use_xdp("dr_table") {
        return;
    }
    let web = sa(VIP, 80);
    let r = |i| sa(dr_real(i), 80);
    // DR: only the MACs and the TTL change.
    let to_real = |p: &Pkt, i: u8| {
        let ttl = p.ttl - 1;
        p.clone().macs(EXT_MAC, dr_real_mac(i)).ttl(ttl).build()
    };
    let a = sa(CLIENT, 41000);
    let mut rows = Vec::new();
    let p = from_client(Pkt::tcp(a, web, SYN, 100, 0));
    rows.push(
        row(
            "DR: SYN → real 1, addresses and ports untouched",
            100,
            p.build(),
        )
        .forward(EXT, to_real(&p, 1))
        .conn(TCP, a, web, entry(SynRecv, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 101, 5001));
    rows.push(
        row("DR: ACK", 101, p.build())
            .forward(EXT, to_real(&p, 1))
            .conn(TCP, a, web, entry(Established, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 101, 5001).payload(b"GET / HTTP/1.1\r\n\r\n"));
    rows.push(row("DR: data", 101, p.build()).forward(EXT, to_real(&p, 1)));
    let p = Pkt::tcp(r(1), a, SYN | ACK, 5000, 101).macs(dr_real_mac(1), CLIENT_MAC);
    rows.push(
        row(
            "DR: a real's direct reply seen by the director → kernel's",
            101,
            p.build(),
        )
        .pass(),
    );
    let p = from_client(Pkt::tcp(a, web, FIN | ACK, 119, 5100));
    rows.push(
        row("DR: client FIN", 102, p.build())
            .forward(EXT, to_real(&p, 1))
            .conn(TCP, a, web, entry(FinWait, r(1))),
    );
    let sent = Pkt::tcp(web, a, ACK, 5100, 120)
        .payload(&[0x55; 64])
        .ttl(64);
    let p = Pkt::icmp_error(ROUTER_EXT, VIP, 3, 4, [0, 0, 0x05, 0x78], &sent, None)
        .macs(ROUTER_EXT_MAC, EXT_MAC);
    rows.push(
        row(
            "DR: frag-needed about the flow → real 1 untranslated",
            102,
            p.build(),
        )
        .forward(EXT, to_real(&p, 1)),
    );
    let p = from_client(Pkt::tcp(a, web, SYN, 7000, 0));
    rows.push(
        row(
            "DR: SYN reusing the port (FIN_WAIT) → rescheduled to real 2",
            103,
            p.build(),
        )
        .forward(EXT, to_real(&p, 2))
        .conn(TCP, a, web, entry(SynRecv, r(2))),
    );
    let b = sa(CLIENT, 41001);
    let p = from_client(Pkt::tcp(b, web, SYN, 200, 0).csum(Csum::Partial));
    rows.push(
        row("DR: SYN, CHECKSUM_PARTIAL: seed untouched", 103, p.build())
            .meta(partial())
            .forward(EXT, to_real(&p, 3))
            .conn(TCP, b, web, entry(SynRecv, r(3))),
    );
    let c = sa(Ipv4Addr::new(198, 19, 7, 7), 33001);
    let p = Pkt::tcp(c, web, SYN, 300, 0).macs(ROUTER_EXT_MAC, EXT_MAC);
    rows.push(
        row("DR: remote client SYN → real 1", 104, p.build())
            .forward(EXT, to_real(&p, 1))
            .conn(TCP, c, web, entry(SynRecv, r(1))),
    );
    let p = from_client(Pkt::tcp(sa(CLIENT, 41002), web, SYN, 1, 0).ttl(1));
    rows.push(row("DR: TTL 1", 104, p.build()).drop(DropReason::TtlExceeded));

    let mut failures = run_table(&mut lab, "dr", rows);
    expect_counts(
        &mut failures,
        "dr",
        &lab,
        Counts {
            rx: 10,
            passed: 1,
            forwarded_in: 7,
            forwarded_out: 0,
            icmp_forwarded: 1,
            emitted: 0,
            icmp_sent: 0,
            icmp_limited: 0,
            icmp_unroutable: 0,
            new_conns: 4,
            drops: vec![(DropReason::TtlExceeded, 1)],
        },
    );
    expect_conns(
        &mut failures,
        "dr",
        &lab,
        [
            ((a, web), (SynRecv, r(2))),
            ((b, web), (SynRecv, r(3))),
            ((c, web), (SynRecv, r(1))),
        ]
        .into_iter()
        .collect(),
    );
    // The rows of established flows that the fast path forwards.
    assert_xdp_forwarded(&lab, "dr_table", if xdp { 1 } else { 0 });
    assert_no_failures(failures);
}

// ---- TUN ------------------------------------------------------------------------------------

/// The TUN lab: web (rr over the int reals, same port), dns (UDP), near (a real on ext's
/// subnet) and far (a real beyond the client-side router).
fn tun_lab() -> Lab {
    use Mode::Tun;
    use SchedulerKind::Rr;
    let reals: Vec<_> = (1..=3).map(|i| (nat_real(i), 80, 1)).collect();
    let mut lab = Lab::new(vec![
        service("web-tun", 80, TCP, Tun, Rr, &reals),
        service("dns-tun", 53, UDP, Tun, Rr, &[(nat_real(1), 53, 1)]),
        service("near-tun", 81, TCP, Tun, Rr, &[(dr_real(1), 81, 1)]),
        service("far-tun", 82, TCP, Tun, Rr, &[(FAR_REAL, 82, 1)]),
    ]);
    lab.fib = tun_fib();
    lab
}

/// `p` as the director must tunnel it to NAT-lab real `i` on int: the inner packet with TTL
/// − 1 in an IPIP header from int's address (outer identification `ident`).
fn tun_to_real(p: &Pkt, i: u8, ident: u16) -> Vec<u8> {
    let inner = p.clone().ttl(p.ttl - 1).ip_bytes();
    frames::ipip(
        (INT_MAC, nat_real_mac(i)),
        INT_ADDR,
        nat_real(i),
        ident,
        &inner,
    )
}

/// The ICMP fragmentation-needed the director must send the client about `p` (received
/// from the client): from the VIP, next-hop MTU `mtu`, quoting `p`'s header and 8 bytes.
fn frag_needed_to_client(p: &Pkt, mtu: u16, ident: u16) -> Vec<u8> {
    let mut rest = [0u8; 4];
    rest[2..].copy_from_slice(&mtu.to_be_bytes());
    Pkt::icmp_error(VIP, CLIENT, 3, 4, rest, p, Some(28))
        .macs(EXT_MAC, CLIENT_MAC)
        .ident(ident)
        .may_fragment()
        .build()
}

fn gso(size: u16, udp: bool) -> RxMeta {
    RxMeta {
        csum_partial: true,
        gso: true,
        gso_size: size,
        gso_udp: udp,
        ..RxMeta::default()
    }
}

/// Bytes 0, 1, 2... so that a misplaced segment boundary shows.
fn counting(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

pub fn tun_table() {
    tun_table_run(false)
}

/// [`tun_table`] with every row also run through the XDP program.
pub fn tun_table_xdp() {
    tun_table_run(true)
}

fn tun_table_run(xdp: bool) {
    let mut lab = tun_lab();
    if xdp && !lab.use_xdp("tun_table") {
        return;
    }
    let web = sa(VIP, 80);
    let dns = sa(VIP, 53);
    let r = |i| sa(nat_real(i), 80);
    let mut rows = Vec::new();
    // Outer identifications come from the worker's counter: 0, 1, 2...
    let mut id = 0u16..;
    let mut next = || id.next().expect("enough identifications");

    let a = sa(CLIENT, 42000);
    let p = from_client(Pkt::tcp(a, web, SYN, 1000, 0));
    rows.push(
        row("A: SYN → real 1 in IPIP from int's address", 100, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next()))
            .conn(TCP, a, web, entry(SynRecv, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1001, 5001));
    rows.push(
        row(
            "A: ACK (the real answers the client itself)",
            100,
            p.build(),
        )
        .forward_insert(INT, tun_to_real(&p, 1, next()))
        .conn(TCP, a, web, entry(Established, r(1))),
    );
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 1001, 5001)
            .payload(b"GET / HTTP/1.1\r\n\r\n")
            .tos(0xb9),
    );
    rows.push(
        row(
            "A: data, DSCP EF + ECT(1): TOS copied outside",
            101,
            p.build(),
        )
        .forward_insert(INT, tun_to_real(&p, 1, next())),
    );
    let sent = Pkt::tcp(web, a, ACK, 5001, 1019)
        .payload(&[0x55; 64])
        .ttl(64);
    let p =
        Pkt::icmp_error(ROUTER_EXT, VIP, 3, 1, [0; 4], &sent, None).macs(ROUTER_EXT_MAC, EXT_MAC);
    rows.push(
        row(
            "A: host-unreachable about the real's reply → tunnelled to real 1",
            101,
            p.build(),
        )
        .forward_insert(INT, tun_to_real(&p, 1, next())),
    );

    let u = sa(CLIENT, 42001);
    let p = from_client(Pkt::udp(u, dns, b"query"));
    rows.push(
        row("U: UDP → real 1", 102, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next()))
            .conn(UDP, u, dns, entry(Udp, sa(nat_real(1), 53))),
    );

    // Path MTU: egress MTU 1500, so 1480 bytes of inner packet fit.
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1019, 5001).payload(&counting(1460)));
    rows.push(
        row(
            "A: 1500 bytes with DF → frag-needed, MTU 1480",
            103,
            p.build(),
        )
        .drop(DropReason::FragNeeded)
        .emits(vec![(EXT, frag_needed_to_client(&p, 1480, next()))]),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1019, 5001).payload(&counting(1440)));
    rows.push(
        row("A: 1480 bytes with DF → fits exactly", 103, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next())),
    );
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 2459, 5001)
            .payload(&counting(1460))
            .may_fragment(),
    );
    let inner = p.clone().ttl(63).ip_bytes();
    let frags = frames::ipip_fragments(
        (INT_MAC, nat_real_mac(1)),
        INT_ADDR,
        nat_real(1),
        next(),
        &inner,
        1500,
    );
    assert_eq!(frags.len(), 2, "1520 bytes in two fragments");
    rows.push(
        row(
            "A: 1500 bytes without DF → outer packet in 2 fragments",
            103,
            p.build(),
        )
        .emitted(frags.into_iter().map(|f| (INT, f)).collect()),
    );

    // GSO super-frames (always with a partial checksum).
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 3919, 5001)
            .payload(&counting(2920))
            .csum(Csum::Partial),
    );
    rows.push(
        row(
            "A: GSO, 1460-byte segments: 1520 with the tunnel → frag-needed",
            104,
            p.build(),
        )
        .meta(gso(1460, false))
        .drop(DropReason::FragNeeded)
        .emits(vec![(EXT, frag_needed_to_client(&p, 1480, next()))]),
    );
    let data = counting(3000);
    let cwr = 0x80;
    let p = from_client(
        Pkt::tcp(a, web, ACK | cwr | PSH | FIN, 3919, 5001)
            .payload(&data)
            .csum(Csum::Partial),
    );
    let segs: Vec<(u32, Vec<u8>)> = data
        .chunks(1400)
        .enumerate()
        .map(|(i, chunk)| {
            let last = i == 2;
            let flags = ACK | if i == 0 { cwr } else { 0 } | if last { PSH | FIN } else { 0 };
            let seg = from_client(
                Pkt::tcp(a, web, flags, 3919 + 1400 * i as u32, 5001)
                    .payload(chunk)
                    .ident(0x1c46 + i as u16),
            );
            (INT, tun_to_real(&seg, 1, next()))
        })
        .collect();
    rows.push(
        row(
            "A: GSO 3000 bytes, MSS 1400 → 3 segments (CWR first, PSH+FIN last), each tunnelled",
            104,
            p.build(),
        )
        .meta(gso(1400, false))
        .emitted(segs)
        .conn(TCP, a, web, entry(FinWait, r(1))),
    );
    let data = counting(2500);
    let p = from_client(Pkt::udp(u, dns, &data).csum(Csum::Partial));
    let dgrams: Vec<(u32, Vec<u8>)> = data
        .chunks(1000)
        .enumerate()
        .map(|(i, chunk)| {
            let d = from_client(Pkt::udp(u, dns, chunk).ident(0x1c46 + i as u16));
            (INT, tun_to_real(&d, 1, next()))
        })
        .collect();
    rows.push(
        row(
            "U: UDP GSO 2500 bytes by 1000 → 3 datagrams",
            104,
            p.build(),
        )
        .meta(gso(1000, true))
        .emitted(dgrams),
    );

    let d = sa(CLIENT, 42003);
    let p = from_client(Pkt::tcp(d, web, SYN, 7000, 0).csum(Csum::Partial));
    let done = from_client(Pkt::tcp(d, web, SYN, 7000, 0));
    rows.push(
        row(
            "D: SYN, partial checksum → finished in software, copied out",
            105,
            p.build(),
        )
        .meta(partial())
        .emitted(vec![(INT, tun_to_real(&done, 2, next()))])
        .conn(TCP, d, web, entry(SynRecv, r(2))),
    );
    let p = from_client(Pkt::tcp(sa(CLIENT, 42004), web, SYN, 1, 0).ttl(1));
    rows.push(row("E: TTL 1", 105, p.build()).drop(DropReason::TtlExceeded));

    let f = sa(CLIENT, 42005);
    let p = from_client(Pkt::tcp(f, sa(VIP, 81), SYN, 1, 0));
    let inner = p.clone().ttl(63).ip_bytes();
    rows.push(
        row(
            "F: real on ext's subnet → source ext's address there, not the VIP",
            106,
            p.build(),
        )
        .forward_insert(
            EXT,
            frames::ipip(
                (EXT_MAC, dr_real_mac(1)),
                EXT_ADDR,
                dr_real(1),
                next(),
                &inner,
            ),
        ),
    );
    let g = sa(CLIENT, 42006);
    let p = from_client(Pkt::tcp(g, sa(VIP, 82), SYN, 1, 0));
    let inner = p.clone().ttl(63).ip_bytes();
    rows.push(
        row(
            "G: real beyond the router → via the router, from ext's first own address",
            106,
            p.build(),
        )
        .forward_insert(
            EXT,
            frames::ipip(
                (EXT_MAC, ROUTER_EXT_MAC),
                EXT_SECOND,
                FAR_REAL,
                next(),
                &inner,
            ),
        ),
    );

    let big = Pkt::tcp(web, a, ACK, 5001, 1019).payload(&counting(1460));
    let p = Pkt::icmp_error(ROUTER_EXT, VIP, 3, 4, [0, 0, 0x05, 0x78], &big, None)
        .macs(ROUTER_EXT_MAC, EXT_MAC);
    rows.push(
        row(
            "A: ICMP error quoting 1500 bytes, DF → too big, never an error about an error",
            107,
            p.build(),
        )
        .drop(DropReason::TooBig),
    );

    let mut failures = run_table(&mut lab, "tun", rows);
    expect_counts(
        &mut failures,
        "tun",
        &lab,
        Counts {
            rx: 16,
            passed: 0,
            forwarded_in: 7,
            forwarded_out: 0,
            icmp_forwarded: 1,
            emitted: 4,
            icmp_sent: 2,
            icmp_limited: 0,
            icmp_unroutable: 0,
            new_conns: 5,
            drops: vec![
                (DropReason::TtlExceeded, 1),
                (DropReason::TooBig, 1),
                (DropReason::FragNeeded, 2),
            ],
        },
    );
    expect_conns(
        &mut failures,
        "tun",
        &lab,
        [
            ((a, web), (FinWait, r(1))),
            ((u, dns), (Udp, sa(nat_real(1), 53))),
            ((d, web), (SynRecv, r(2))),
            ((f, sa(VIP, 81)), (SynRecv, sa(dr_real(1), 81))),
            ((g, sa(VIP, 82)), (SynRecv, sa(FAR_REAL, 82))),
        ]
        .into_iter()
        .collect(),
    );
    // The rows of established flows that the fast path forwards.
    assert_xdp_forwarded(&lab, "tun_table", if xdp { 2 } else { 0 });
    assert_no_failures(failures);
}

pub fn tun_frag_needed_is_rate_limited_per_worker() {
    let mut lab = tun_lab();
    let web = sa(VIP, 80);
    let a = sa(CLIENT, 43000);
    let mut syn = from_client(Pkt::tcp(a, web, SYN, 1, 0)).build();
    assert!(matches!(
        lab.process(&mut syn, RxMeta::default(), 10),
        Verdict::ForwardInsert { .. }
    ));
    let big = from_client(Pkt::tcp(a, web, ACK, 2, 1).payload(&counting(1460))).build();
    let mut sent = 0;
    let budget = forwarder::engine::WorkerState::ICMP_PER_SEC;
    for _ in 0..budget + 5 {
        let mut f = big.clone();
        let v = lab.process(&mut f, RxMeta::default(), 10);
        assert_eq!(v, Verdict::Drop(DropReason::FragNeeded));
        sent += lab.take_emitted().len() as u32;
    }
    assert_eq!(sent, budget, "one second's budget");
    let mut f = big.clone();
    lab.process(&mut f, RxMeta::default(), 11);
    assert_eq!(lab.take_emitted().len(), 1, "refilled a second later");
    let c = lab.counts();
    assert_eq!((c.icmp_sent, c.icmp_limited), (u64::from(budget) + 1, 5));
    assert!(c.balanced(), "{c:?}");
}

/// Right after a takeover the new master has never resolved its clients (a TUN director
/// never sends to them): the fragmentation-needed goes back to the frame's sender, out of the
/// interface it came in on, when that is where the route toward the client leaves. Seen on
/// another interface, or on one the worker does not name, there is no way back: counted as
/// `icmp_unroutable`, never sent blind.
pub fn tun_frag_needed_reaches_a_client_not_yet_resolved() {
    let mut lab = tun_lab();
    let web = sa(VIP, 80);
    // On ext's subnet, absent from the FIB's neighbours.
    let stranger = Ipv4Addr::new(198, 18, 1, 50);
    let stranger_mac = [0x02, 0, 0, 0, 0x01, 50];
    let a = sa(stranger, 43100);
    let on = |ingress| RxMeta {
        ingress,
        ..RxMeta::default()
    };
    let mut syn = Pkt::tcp(a, web, SYN, 1, 0)
        .macs(stranger_mac, EXT_MAC)
        .build();
    assert!(matches!(
        lab.process(&mut syn, on(EXT), 10),
        Verdict::ForwardInsert { .. }
    ));
    assert_eq!(lab.take_emitted().len(), 0);
    let p = Pkt::tcp(a, web, ACK, 2, 1)
        .payload(&counting(1460))
        .macs(stranger_mac, EXT_MAC);
    let mut f = p.build();
    assert_eq!(
        lab.process(&mut f, on(EXT), 10),
        Verdict::Drop(DropReason::FragNeeded)
    );
    let mut rest = [0u8; 4];
    rest[2..].copy_from_slice(&1480u16.to_be_bytes());
    // Identification 1: the SYN's tunnel header took 0.
    let want = Pkt::icmp_error(VIP, stranger, 3, 4, rest, &p, Some(28))
        .macs(EXT_MAC, stranger_mac)
        .ident(1)
        .may_fragment()
        .build();
    assert_eq!(lab.take_emitted(), vec![(EXT, want)]);
    for ingress in [INT, 0] {
        let mut f = p.build();
        assert_eq!(
            lab.process(&mut f, on(ingress), 10),
            Verdict::Drop(DropReason::FragNeeded)
        );
        assert_eq!(lab.take_emitted(), vec![], "ingress {ingress}");
    }
    let c = lab.counts();
    assert_eq!((c.icmp_sent, c.icmp_limited, c.icmp_unroutable), (1, 0, 2));
    assert!(c.balanced(), "{c:?}");
}

// ---- bad and unusual input ------------------------------------------------------------------

/// `frame` changed by `f`, then its IPv4 header checksum made right again.
fn edit(frame: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = frame.to_vec();
    f(&mut v);
    v
}

fn fix_ip_csum(v: &mut [u8]) {
    let mut ip = Ipv4Packet::new_unchecked(&mut v[14..]);
    ip.fill_checksum();
}

fn set_total_len(v: &mut [u8], len: u16) {
    v[16..18].copy_from_slice(&len.to_be_bytes());
}

pub fn nat_bad_input_table() {
    nat_bad_input_table_run(false)
}

/// [`nat_bad_input_table`] with every row also run through the XDP program.
pub fn nat_bad_input_table_xdp() {
    nat_bad_input_table_run(true)
}

fn nat_bad_input_table_run(xdp: bool) {
    let mut lab = Lab::new(nat_services());
    if xdp && !lab.use_xdp("nat_bad_input_table") {
        return;
    }
    let web = sa(VIP, 80);
    let syn = |port| from_client(Pkt::tcp(sa(CLIENT, port), web, SYN, 1, 0));
    let base = syn(40010).build();
    let mut rows = vec![
        row("truncated ring slot", 10, base.clone())
            .meta(RxMeta {
                truncated: true,
                ..RxMeta::default()
            })
            .drop(DropReason::Truncated),
        row(
            "IPv4 header cut at 18 bytes: VIP unreadable → kernel's",
            10,
            base[..14 + 18].to_vec(),
        )
        .pass(),
        row(
            "TCP header cut: total length 30",
            10,
            edit(&base, |v| {
                v.truncate(14 + 30);
                set_total_len(v, 30);
                fix_ip_csum(v);
            }),
        )
        .drop(DropReason::Malformed),
        row(
            "IHL 4",
            10,
            edit(&base, |v| {
                v[14] = 0x44;
                fix_ip_csum(v);
            }),
        )
        .drop(DropReason::Malformed),
        row(
            "IHL 15, header past the frame",
            10,
            edit(&base, |v| {
                v.truncate(14 + 40);
                v[14] = 0x4f;
            }),
        )
        .drop(DropReason::Malformed),
        row(
            "total length past the frame",
            10,
            edit(&base, |v| {
                set_total_len(v, 41);
                fix_ip_csum(v);
            }),
        )
        .drop(DropReason::Malformed),
        row(
            "bad IPv4 header checksum",
            10,
            edit(&base, |v| v[24] ^= 0x01),
        )
        .drop(DropReason::BadIpChecksum),
        row(
            "SYN with a wrong TCP checksum",
            10,
            syn(40010).csum(Csum::Wrong).build(),
        )
        .drop(DropReason::BadL4Checksum)
        .conn(TCP, sa(CLIENT, 40010), web, None),
        row(
            "same SYN, checksum verified by the device → forwarded, error kept",
            10,
            syn(40010).csum(Csum::Wrong).build(),
        )
        .meta(RxMeta {
            csum_verified: true,
            ..RxMeta::default()
        })
        .forward(INT, nat_to_real(&syn(40010).csum(Csum::Wrong), 1, 8080))
        .l4_invalid(),
    ];
    // IP options: router alert (RFC 2113).
    let p = syn(40011).options(&[0x94, 0x04, 0x00, 0x00]);
    rows.push(
        row(
            "IP options (IHL 6) → forwarded with the options",
            10,
            p.build(),
        )
        .forward(INT, nat_to_real(&p, 2, 8080)),
    );
    rows.extend([
        row(
            "fragment (MF) to the VIP",
            10,
            syn(40012).more_frags().build(),
        )
        .drop(DropReason::Fragment),
        row("TTL 1", 10, syn(40013).ttl(1).build()).drop(DropReason::TtlExceeded),
        row(
            "ACK for an unknown flow → dropped, never reset",
            10,
            from_client(Pkt::tcp(sa(CLIENT, 40014), web, ACK, 5, 5)).build(),
        )
        .drop(DropReason::NoConnection),
        row("VLAN-tagged frame", 10, syn(40015).build())
            .meta(RxMeta {
                vlan: true,
                ..RxMeta::default()
            })
            .drop(DropReason::Vlan),
        row(
            "SYN to a service whose reals all have weight 0",
            10,
            from_client(Pkt::tcp(sa(CLIENT, 40016), sa(VIP, 82), SYN, 1, 0)).build(),
        )
        .drop(DropReason::NoRealServer),
        row(
            "UDP to a VIP port without a service → kernel's",
            10,
            from_client(Pkt::udp(sa(CLIENT, 40017), sa(VIP, 9999), b"x")).build(),
        )
        .pass(),
        row(
            "ARP who-has the VIP → kernel's",
            10,
            arp_request(CLIENT_MAC, CLIENT, VIP),
        )
        .pass(),
        row(
            "SSH to the director's own address → kernel's",
            10,
            from_client(Pkt::tcp(sa(CLIENT, 40018), sa(EXT_ADDR, 22), SYN, 1, 0)).build(),
        )
        .pass(),
        row(
            "SYN to a real whose MAC is unknown",
            10,
            from_client(Pkt::tcp(sa(CLIENT, 40019), sa(VIP, 81), SYN, 1, 0)).build(),
        )
        .drop(DropReason::NoNeighbour),
    ]);
    let big = from_client(Pkt::tcp(sa(CLIENT, 40020), web, PSH | ACK, 2, 1).payload(&[0xab; 1481]));
    let gso = RxMeta {
        gso: true,
        ..RxMeta::default()
    };
    rows.extend([
        row("SYN → real 3", 11, syn(40020).build()).forward(INT, nat_to_real(&syn(40020), 3, 8080)),
        row("1521-byte packet, egress MTU 1500", 11, big.build()).drop(DropReason::TooBig),
        row("same as a GSO frame → forwarded", 11, big.build())
            .meta(gso)
            .forward(INT, nat_to_real(&big, 3, 8080)),
        row(
            "reply with TTL 1",
            11,
            from_real(
                3,
                Pkt::tcp(sa(nat_real(3), 8080), sa(CLIENT, 40020), SYN | ACK, 1, 3).ttl(1),
            )
            .build(),
        )
        .drop(DropReason::TtlExceeded),
        row(
            "frame shorter than an Ethernet header → kernel's",
            11,
            base[..10].to_vec(),
        )
        .pass(),
        row(
            "bad IPv4 checksum to the director itself → kernel's",
            11,
            edit(
                &from_client(Pkt::tcp(sa(CLIENT, 40021), sa(EXT_ADDR, 22), SYN, 1, 0)).build(),
                |v| v[24] ^= 1,
            ),
        )
        .pass(),
        row(
            "total length past the frame, from a NAT real's service port",
            11,
            edit(
                &from_real(
                    1,
                    Pkt::tcp(sa(nat_real(1), 8080), sa(CLIENT, 40022), ACK, 1, 1),
                )
                .build(),
                |v| {
                    set_total_len(v, 200);
                    fix_ip_csum(v);
                },
            ),
        )
        .drop(DropReason::Malformed),
    ]);

    let mut failures = run_table(&mut lab, "nat-bad-input", rows);
    if lab.misses.0 != [(INT, UNRESOLVED_REAL)] {
        failures.push(format!(
            "[nat-bad-input] neighbour misses: expected [(3, {UNRESOLVED_REAL})], got {:?}",
            lab.misses.0
        ));
    }
    use DropReason::*;
    expect_counts(
        &mut failures,
        "nat-bad-input",
        &lab,
        Counts {
            rx: 26,
            passed: 6,
            forwarded_in: 4,
            forwarded_out: 0,
            icmp_forwarded: 0,
            emitted: 0,
            icmp_sent: 0,
            icmp_limited: 0,
            icmp_unroutable: 0,
            // The SYN to the unresolved real made its flow before the miss: its
            // retransmission finds it once the neighbour is resolved.
            new_conns: 4,
            drops: vec![
                (Malformed, 5),
                (Truncated, 1),
                (BadIpChecksum, 1),
                (BadL4Checksum, 1),
                (Fragment, 1),
                (TtlExceeded, 2),
                (NoConnection, 1),
                (NoRealServer, 1),
                (NoNeighbour, 1),
                (TooBig, 1),
                (Vlan, 1),
            ],
        },
    );
    // Its established flows see only broken or unusual frames, every one the engine's.
    assert_xdp_forwarded(&lab, "nat_bad_input_table", 0);
    assert_no_failures(failures);
}

pub fn nat_table_full() {
    let web = sa(VIP, 80);
    let mut lab = Lab::with_capacity(nat_services(), 1);
    let p1 = from_client(Pkt::tcp(sa(CLIENT, 1111), web, SYN, 1, 0));
    let p2 = from_client(Pkt::tcp(sa(CLIENT, 2222), web, SYN, 1, 0));
    let rows = vec![
        row("first flow fills the table", 1, p1.build()).forward(INT, nat_to_real(&p1, 1, 8080)),
        row("second flow: table full", 1, p2.build())
            .drop(DropReason::TableFull)
            .conn(TCP, sa(CLIENT, 2222), web, None),
    ];
    let mut failures = run_table(&mut lab, "nat-table-full", rows);
    expect_counts(
        &mut failures,
        "nat-table-full",
        &lab,
        Counts {
            rx: 2,
            forwarded_in: 1,
            new_conns: 1,
            drops: vec![(DropReason::TableFull, 1)],
            ..Counts::default()
        },
    );
    assert_no_failures(failures);
}

// ---- schedulers through the engine ---------------------------------------------------------

/// Sends a SYN from `client` to VIP:80 and returns the real server it was forwarded to.
fn schedule(lab: &mut Lab, client: SocketAddrV4, now: u32) -> Ipv4Addr {
    let mut f = from_client(Pkt::tcp(client, sa(VIP, 80), SYN, 1, 0)).build();
    let v = lab.process(&mut f, RxMeta::default(), now);
    assert_eq!(v, Verdict::Forward { ifindex: INT }, "SYN from {client}");
    let bad = check_checksums(&f, L4Check::Valid);
    assert!(bad.is_empty(), "SYN from {client}: {bad:?}");
    Ipv4Addr::new(f[30], f[31], f[32], f[33])
}

fn tally(reals: impl IntoIterator<Item = Ipv4Addr>) -> BTreeMap<Ipv4Addr, u32> {
    let mut m = BTreeMap::new();
    for r in reals {
        *m.entry(r).or_insert(0) += 1;
    }
    m
}

fn web_lab(kind: SchedulerKind, weights: [u32; 3]) -> Lab {
    let reals: Vec<_> = (1..=3u8)
        .map(|i| (nat_real(i), 8080, weights[usize::from(i - 1)]))
        .collect();
    Lab::new(vec![service("web", 80, TCP, Mode::Nat, kind, &reals)])
}

pub fn wrr_weights_1_2_3_over_60_flows() {
    let mut lab = web_lab(SchedulerKind::Wrr, [1, 2, 3]);
    let got = tally((0..60).map(|i| schedule(&mut lab, sa(CLIENT, 20000 + i), 1)));
    let want = [(nat_real(1), 10), (nat_real(2), 20), (nat_real(3), 30)];
    assert_eq!(got, want.into_iter().collect());
    assert_eq!(lab.counts().new_conns, 60);
}

pub fn sh_keeps_a_client_on_one_real() {
    let mut lab = web_lab(SchedulerKind::Sh, [1, 1, 1]);
    let client = Ipv4Addr::new(198, 19, 0, 5);
    let got = tally((0..50).map(|i| schedule(&mut lab, sa(client, 30000 + i), 1)));
    assert_eq!(got.len(), 1, "one client address, 50 ports: {got:?}");
    // The hash does look at the address: 30 clients do not all land on one real.
    let spread =
        tally((0..30).map(|i| schedule(&mut lab, sa(Ipv4Addr::new(198, 19, 1, i), 1000), 1)));
    assert!(spread.len() > 1, "30 clients on one real: {spread:?}");
}

/// Two directors with the same `mh` service, as a pair is configured: a flow scheduled by
/// one (its SYN) whose entry the other never got is taken up by the other on its first
/// mid-flow segment, toward the same real server, as an established entry that lives the
/// SYN_RECV timeout until a second segment confirms it. A RST of an unknown flow is still
/// dropped, and so is a segment without ACK.
pub fn mh_takes_up_an_established_flow_the_peer_scheduled() {
    let mut first = web_lab(SchedulerKind::Mh, [1, 1, 1]);
    let mut heir = web_lab(SchedulerKind::Mh, [1, 1, 1]);
    let web = sa(VIP, 80);
    let mut reals = BTreeMap::new();
    for i in 0..30u8 {
        // mh hashes the client's address (no `hash_port`): one address per flow.
        let client = sa(Ipv4Addr::new(198, 19, 2, i + 1), 42000);
        let real = schedule(&mut first, client, 1);
        *reals.entry(real).or_insert(0) += 1;
        let idx = (1..=3u8)
            .find(|&k| nat_real(k) == real)
            .expect("a NAT real");
        let p = from_client(Pkt::tcp(client, web, PSH | ACK, 1001, 5001).payload(b"more"));
        let mut f = p.build();
        assert_eq!(
            heir.process(&mut f, RxMeta::default(), 100),
            Verdict::Forward { ifindex: INT },
            "{client}"
        );
        assert_eq!(f, nat_to_real(&p, idx, 8080), "{client}: to the same real");
        let e = heir.conn(TCP, client, web).expect("taken up");
        assert_eq!(
            (e.state(), e.real()),
            (ConnState::Established, sa(real, 8080))
        );
        assert_eq!(e.expiry(), 100 + 60, "SYN_RECV's timeout until confirmed");
        let p = from_client(Pkt::tcp(client, web, ACK, 1005, 5001));
        let mut f = p.build();
        heir.process(&mut f, RxMeta::default(), 101);
        let e = heir.conn(TCP, client, web).expect("still there");
        assert_eq!(e.expiry(), 101 + 900, "confirmed: the established timeout");
    }
    assert_eq!(reals.len(), 3, "the flows spread over the reals: {reals:?}");
    assert_eq!(heir.counters.picked_up.load(Ordering::Relaxed), 30);
    assert_eq!(heir.counts().new_conns, 30);
    for (flags, what) in [(RST | ACK, "RST"), (PSH, "no ACK")] {
        let client = sa(CLIENT, 43000);
        let mut f = from_client(Pkt::tcp(client, web, flags, 1, 1)).build();
        assert_eq!(
            heir.process(&mut f, RxMeta::default(), 102),
            Verdict::Drop(DropReason::NoConnection),
            "{what}"
        );
        assert!(heir.conn(TCP, client, web).is_none(), "{what}");
    }
}

pub fn weight_zero_takes_no_new_flow_but_finishes_old_ones() {
    let mut lab = web_lab(SchedulerKind::Rr, [1, 1, 1]);
    let web = sa(VIP, 80);
    let old = sa(CLIENT, 40000);
    let r1 = sa(nat_real(1), 8080);
    assert_eq!(schedule(&mut lab, old, 1), nat_real(1));
    lab.set_weight("web", r1, 0);
    let got = tally((0..30).map(|i| schedule(&mut lab, sa(CLIENT, 41000 + i), 2)));
    assert_eq!(
        got,
        [(nat_real(2), 15), (nat_real(3), 15)].into_iter().collect()
    );
    // The old flow still goes both ways through real 1.
    let p = from_client(Pkt::tcp(old, web, ACK, 2, 1));
    let mut f = p.build();
    assert_eq!(
        lab.process(&mut f, RxMeta::default(), 3),
        Verdict::Forward { ifindex: INT }
    );
    assert_eq!(f, nat_to_real(&p, 1, 8080));
    let p = from_real(1, Pkt::tcp(r1, old, PSH | ACK, 1, 2).payload(b"still here"));
    let mut f = p.build();
    assert_eq!(
        lab.process(&mut f, RxMeta::default(), 3),
        Verdict::Forward { ifindex: EXT }
    );
    assert_eq!(f, nat_to_client(&p, web, CLIENT_MAC));
    assert_eq!(
        lab.conn(TCP, old, web).map(|e| (e.state(), e.real())),
        Some((Established, r1))
    );
}

// ---- persistence ----------------------------------------------------------------------------

pub fn persistence_keeps_a_client_until_its_template_expires() {
    let reals: Vec<_> = (1..=3).map(|i| (nat_real(i), 8080, 1)).collect();
    let mut svc = service("sticky", 80, TCP, Mode::Nat, SchedulerKind::Rr, &reals);
    svc.persistence = std::time::Duration::from_secs(60);
    let mut lab = Lab::new(vec![svc]);
    let web = sa(VIP, 80);
    let p_ip = Ipv4Addr::new(198, 19, 1, 1);
    let q_ip = Ipv4Addr::new(198, 19, 1, 2);

    assert_eq!(schedule(&mut lab, sa(p_ip, 1000), 100), nat_real(1));
    // Another client moves the rr cursor on; the first one keeps its real.
    assert_eq!(schedule(&mut lab, sa(q_ip, 1000), 100), nat_real(2));
    for port in 1001..1005 {
        assert_eq!(
            schedule(&mut lab, sa(p_ip, port), 101),
            nat_real(1),
            "port {port}"
        );
    }
    // The client resets its five connections: CLOSE, 10 s.
    for port in 1000..1005 {
        let mut f = from_client(Pkt::tcp(sa(p_ip, port), web, RST, 2, 0)).build();
        assert_eq!(
            lab.process(&mut f, RxMeta::default(), 130),
            Verdict::Forward { ifindex: INT }
        );
    }
    // The sweep removes them at 141; each releases the template, which then lives 60 s past
    // its connection's end (140 + 60).
    assert_eq!(lab.engine.conns.sweep(141, 1 << 20), 5);
    assert_eq!(
        lab.engine.persist.sweep(199, 1 << 20),
        0,
        "template kept until 200"
    );
    assert_eq!(
        lab.engine.persist.sweep(200, 1 << 20),
        1,
        "the client's template expires"
    );
    // Scheduled afresh: rr's next turn is real 3.
    assert_eq!(schedule(&mut lab, sa(p_ip, 1005), 200), nat_real(3));
    // The other client's connection (SYN_RECV, not swept) still holds its template.
    assert_eq!(schedule(&mut lab, sa(q_ip, 1001), 200), nat_real(2));
}

// ---- robustness -----------------------------------------------------------------------------

/// Marsaglia's xorshift64.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `runs` frames, each one of `bases` with one to three random mutations and random ring
/// metadata, through `lab`: nothing panics, a passed frame is untouched, and whatever leaves
/// with all checksums right came in with all checksums right.
fn mutate_and_check(lab: &mut Lab, bases: &[Vec<u8>], runs: u64, seed: u64) {
    let mut rng = XorShift(seed);
    for i in 0..runs {
        let mut f = bases[rng.below(bases.len())].clone();
        for _ in 0..1 + rng.below(3) {
            let len = f.len();
            match rng.below(8) {
                0 => f.truncate(rng.below(len + 1)),
                1 if len > 0 => {
                    let at = rng.below(len);
                    f[at] ^= (rng.next() as u8) | 1;
                }
                2 if len > 0 => {
                    let at = rng.below(len);
                    f[at] = rng.next() as u8;
                }
                3 if len >= 18 => {
                    let v = if rng.below(2) == 0 {
                        rng.next() as u16
                    } else {
                        (len - 14) as u16 ^ (rng.below(8) as u16)
                    };
                    f[16..18].copy_from_slice(&v.to_be_bytes());
                }
                4 if len > 14 => f[14] = 0x40 | (rng.next() as u8 & 0x0f),
                5 if len >= 14 + 20 + 14 => {
                    // UDP length or TCP data offset.
                    let at = 14 + 20 + if rng.below(2) == 0 { 4 } else { 12 };
                    f[at] = rng.next() as u8;
                }
                6 if len >= 22 => f[20] = (f[20] & 0x1f) | ((rng.next() as u8) & 0xe0),
                7 => {
                    let extra = rng.below(64);
                    f.extend((0..extra).map(|_| rng.next() as u8));
                }
                _ => {}
            }
        }
        // Half the time the IPv4 checksum is made right, so mutations get past it.
        if rng.below(2) == 0 && f.len() >= 14 + 20 && (f[14] & 0x0f) >= 5 {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            if f.len() >= 14 + ihl {
                fix_ip_csum(&mut f);
            }
        }
        let bits = rng.next();
        let meta = RxMeta {
            csum_partial: bits & 0x0f == 0,
            csum_verified: bits & 0xf0 == 0,
            gso: bits & 0xf00 == 0,
            gso_size: if bits & 0xf00 == 0 {
                (bits >> 20) as u16 & 0x7ff
            } else {
                0
            },
            gso_udp: bits & 0x0100_0000 == 0,
            truncated: bits & 0xf000 == 0,
            vlan: bits & 0xf0000 == 0,
            ingress: if bits & 0x1000_0000 == 0 { EXT } else { INT },
        };
        let now = 1000 + (i / 16) as u32;
        let input = f.clone();
        let v = lab.process(&mut f, meta, now);
        assert_eq!(f.len(), input.len(), "run {i}: the frame changed length");
        let l4 = if meta.csum_partial {
            L4Check::Partial
        } else {
            L4Check::Valid
        };
        let emitted = lab.take_emitted();
        let ok_in = check_checksums(&input, l4).is_empty();
        match v {
            Verdict::Forward { ifindex } | Verdict::ForwardInsert { ifindex, .. } => {
                assert!(ifindex == EXT || ifindex == INT, "run {i}: {v:?}");
                let mut wire = f.clone();
                if let Verdict::ForwardInsert { insert, .. } = v {
                    wire.clear();
                    insert.splice_into(&f, &mut wire);
                }
                // A frame whose checksums were all right leaves with all of them right.
                if ok_in {
                    let bad = check_checksums(&wire, l4);
                    assert!(
                        bad.is_empty(),
                        "run {i}: {bad:?}\n{}",
                        frames::diff(&input, &wire)
                    );
                }
            }
            Verdict::Emitted => {
                assert!(!emitted.is_empty(), "run {i}: emitted nothing");
                for (ifindex, e) in &emitted {
                    assert!(*ifindex == EXT || *ifindex == INT, "run {i}: {ifindex}");
                    let bad = check_checksums(e, L4Check::Valid);
                    assert!(
                        !ok_in || bad.is_empty(),
                        "run {i}: {bad:?}\n{}",
                        frames::hexdump(e)
                    );
                }
            }
            Verdict::Pass => assert_eq!(f, input, "run {i}: passed frame was modified"),
            Verdict::Drop(_) => {}
        }
    }
}

pub fn random_mutations_never_panic_and_always_add_up() {
    const RUNS: u64 = 20_000;
    let mut lab = Lab::new(nat_services());
    let web = sa(VIP, 80);
    let dns = sa(VIP, 53);
    let a = sa(CLIENT, 40000);
    let r1 = sa(nat_real(1), 8080);
    // Live flows, so that mutations also hit existing state.
    let setup = [
        from_client(Pkt::tcp(a, web, SYN, 1, 0)),
        from_real(1, Pkt::tcp(r1, a, SYN | ACK, 1, 2)),
        from_client(Pkt::tcp(a, web, ACK, 2, 2)),
        from_client(Pkt::udp(sa(CLIENT, 50000), dns, b"q")),
    ];
    for p in &setup {
        let mut f = p.build();
        assert!(matches!(
            lab.process(&mut f, RxMeta::default(), 1000),
            Verdict::Forward { .. }
        ));
    }
    let reply = Pkt::tcp(web, a, ACK, 2, 2).ttl(63);
    let bases: Vec<Vec<u8>> = vec![
        from_client(Pkt::tcp(sa(CLIENT, 40001), web, SYN, 1, 0)).build(),
        from_client(Pkt::tcp(a, web, PSH | ACK, 2, 2).payload(b"GET /")).build(),
        from_real(1, Pkt::tcp(r1, a, PSH | ACK, 2, 7).payload(b"200 OK")).build(),
        from_client(Pkt::udp(sa(CLIENT, 50000), dns, b"query")).build(),
        from_real(
            1,
            Pkt::udp(sa(nat_real(1), 8053), sa(CLIENT, 50000), b"answer"),
        )
        .build(),
        Pkt::icmp_error(ROUTER_EXT, VIP, 3, 4, [0, 0, 5, 0x78], &reply, None)
            .macs(ROUTER_EXT_MAC, EXT_MAC)
            .build(),
        Pkt::icmp_error(
            ROUTER_INT,
            CLIENT,
            3,
            1,
            [0; 4],
            &Pkt::tcp(a, r1, ACK, 2, 2).ttl(63),
            Some(28),
        )
        .macs(ROUTER_INT_MAC, INT_MAC)
        .build(),
        from_client(Pkt::icmp_echo(CLIENT, VIP, 1, 1)).build(),
        from_client(Pkt::tcp(sa(CLIENT, 40002), web, SYN, 1, 0).options(&[1, 1, 1, 0])).build(),
        arp_request(CLIENT_MAC, CLIENT, VIP),
    ];
    mutate_and_check(&mut lab, &bases, RUNS, 0x9e37_79b9_7f4a_7c15);
    let c = lab.counts();
    assert_eq!(c.rx, RUNS + setup.len() as u64);
    assert!(c.balanced(), "{c:?}");
    // Not vacuous: the mutations reached every path.
    assert!(
        c.forwarded_in > 0 && c.forwarded_out > 0 && c.icmp_forwarded > 0 && c.passed > 0,
        "{c:?}"
    );
    assert!(c.drops.len() >= 6, "{c:?}");
}

pub fn tun_random_mutations_never_panic_and_always_add_up() {
    const RUNS: u64 = 20_000;
    let mut lab = tun_lab();
    let web = sa(VIP, 80);
    let a = sa(CLIENT, 40000);
    let mut f = from_client(Pkt::tcp(a, web, SYN, 1, 0)).build();
    assert!(matches!(
        lab.process(&mut f, RxMeta::default(), 1000),
        Verdict::ForwardInsert { .. }
    ));
    let reply = Pkt::tcp(web, a, ACK, 2, 2).ttl(63);
    let bases: Vec<Vec<u8>> = vec![
        from_client(Pkt::tcp(sa(CLIENT, 40001), web, SYN, 1, 0)).build(),
        from_client(Pkt::tcp(a, web, PSH | ACK, 2, 2).payload(&counting(3000))).build(),
        from_client(
            Pkt::tcp(a, web, PSH | ACK, 2, 2)
                .payload(&counting(1470))
                .may_fragment(),
        )
        .build(),
        from_client(Pkt::udp(sa(CLIENT, 50000), sa(VIP, 53), &counting(2000))).build(),
        Pkt::icmp_error(ROUTER_EXT, VIP, 3, 4, [0, 0, 5, 0x78], &reply, None)
            .macs(ROUTER_EXT_MAC, EXT_MAC)
            .build(),
        from_client(Pkt::tcp(sa(CLIENT, 40002), sa(VIP, 82), SYN, 1, 0).options(&[1, 1, 1, 0]))
            .build(),
    ];
    mutate_and_check(&mut lab, &bases, RUNS, 0x2545_f491_4f6c_dd1d);
    let c = lab.counts();
    assert_eq!(c.rx, RUNS + 1);
    assert!(c.balanced(), "{c:?}");
    // Not vacuous: zero-copy forwards, built copies, ICMP errors tunnelled and sent.
    assert!(
        c.forwarded_in > 0 && c.emitted > 0 && c.icmp_forwarded > 0 && c.icmp_sent > 0,
        "{c:?}"
    );
    assert!(c.drops.len() >= 5, "{c:?}");
}

pub fn nat_reply_fragment_is_dropped_and_counted() {
    let mut lab = Lab::new(nat_services());
    let web = sa(VIP, 80);
    let a = sa(CLIENT, 40000);
    let r1 = sa(nat_real(1), 8080);
    let p = from_client(Pkt::tcp(a, web, SYN, 1, 0));
    let rows = vec![
        row("SYN → real 1", 1, p.build()).forward(INT, nat_to_real(&p, 1, 8080)),
        row(
            "first fragment of a reply from real 1",
            1,
            from_real(1, Pkt::tcp(r1, a, ACK, 1, 2).payload(&[0x5a; 64]))
                .more_frags()
                .build(),
        )
        .drop(DropReason::Fragment),
    ];
    assert_no_failures(run_table(&mut lab, "nat-reply-fragment", rows));
}
