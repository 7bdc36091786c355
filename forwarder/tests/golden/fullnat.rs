//! Golden tables for FULLNAT (see modes.rs for how a table works). The engine runs with one
//! connection-table shard and a local port range of one port (40000), so every local
//! address the allocator hands out is known in advance: ports are per (LIP, real server),
//! LIPs take turns by client port (even → 198.18.2.5, odd → 198.18.2.6).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use forwarder::conntrack::ConnState::{self, *};
use forwarder::engine::DropReason;
use forwarder::model::{Mode, Protocol, SchedulerKind, VirtualService};

use crate::frames::{Csum, Pkt, ACK, FIN, PSH, SYN};
use crate::harness::*;

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const LIP1: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 5);
const LIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 6);
const LPORT: u16 = 40000;

fn fullnat(
    name: &str,
    port: u16,
    proto: Protocol,
    reals: &[(Ipv4Addr, u16, u32)],
    lips: &[Ipv4Addr],
) -> VirtualService {
    let mut s = service(name, port, proto, Mode::FullNat, SchedulerKind::Rr, reals);
    s.local_addresses = lips.to_vec();
    s
}

/// A one-shard engine whose FULLNAT local ports are 40000 only.
fn lab(services: Vec<VirtualService>) -> Lab {
    let mut lab = Lab::with_capacity(services, 32);
    lab.engine.set_local_ports(LPORT, LPORT);
    lab
}

fn from_client(p: Pkt) -> Pkt {
    p.macs(CLIENT_MAC, EXT_MAC)
}

fn from_real(i: u8, p: Pkt) -> Pkt {
    p.macs(nat_real_mac(i), INT_MAC)
}

/// `p` as sent to real `i`: local → real:port, int's MAC to the real's, TTL - 1.
fn to_real(p: &Pkt, local: SocketAddrV4, i: u8, port: u16) -> Vec<u8> {
    let ttl = p.ttl - 1;
    p.clone()
        .from(local)
        .to(sa(nat_real(i), port))
        .macs(INT_MAC, nat_real_mac(i))
        .ttl(ttl)
        .build()
}

/// A reply `p` as sent to the client: VIP:port → client, ext's MAC to the client's, TTL - 1.
fn to_client(p: &Pkt, vip: SocketAddrV4, client: SocketAddrV4) -> Vec<u8> {
    let ttl = p.ttl - 1;
    p.clone()
        .from(vip)
        .to(client)
        .macs(EXT_MAC, CLIENT_MAC)
        .ttl(ttl)
        .build()
}

/// (client, vip) → (state, real, local), sorted.
type Conns = BTreeMap<(SocketAddrV4, SocketAddrV4), (ConnState, SocketAddrV4, SocketAddrV4)>;

fn conns(lab: &Lab) -> Conns {
    lab.all_conns()
        .iter()
        .map(|e| {
            let local = e.local().expect("a FULLNAT entry has a local address");
            ((e.client(), e.vip()), (e.state(), e.real(), local))
        })
        .collect()
}

fn check_after(failures: &mut Vec<String>, table: &str, lab: &Lab, counts: Counts, want: Conns) {
    let got = lab.counts();
    if got != counts {
        failures.push(format!(
            "[{table}] counters:\n  expected {counts:?}\n  got      {got:?}"
        ));
    }
    if !got.balanced() {
        failures.push(format!("[{table}] counters do not add up: {got:?}"));
    }
    let have = conns(lab);
    if have != want {
        failures.push(format!(
            "[{table}] connections:\n  expected {want:#?}\n  got      {have:#?}"
        ));
    }
}

pub fn fullnat_table() {
    fullnat_table_run(false)
}

/// [`fullnat_table`] with every row also run through the XDP program.
pub fn fullnat_table_xdp() {
    fullnat_table_run(true)
}

fn fullnat_table_run(xdp: bool) {
    let reals: Vec<_> = (1..=3).map(|i| (nat_real(i), 8080, 1)).collect();
    let mut lab = lab(vec![
        fullnat("web", 80, TCP, &reals, &[LIP1, LIP2]),
        fullnat("dns", 53, UDP, &[(nat_real(1), 8053, 1)], &[LIP1]),
    ]);
    if xdp && !lab.use_xdp("fullnat_table") {
        return;
    }
    let web = sa(VIP, 80);
    let dns = sa(VIP, 53);
    let r = |i| sa(nat_real(i), 8080);
    let l1 = sa(LIP1, LPORT);
    let l2 = sa(LIP2, LPORT);
    let mut rows = Vec::new();

    // Flow A: a whole TCP connection, client 40000 (even → LIP1), rr → real 1.
    let a = sa(CLIENT, 40000);
    let p = from_client(Pkt::tcp(a, web, SYN, 1000, 0));
    rows.push(
        row("A: SYN → real 1 from LIP1:40000", 100, p.build())
            .forward(INT, to_real(&p, l1, 1, 8080))
            .conn(TCP, a, web, Some((SynRecv, r(1)))),
    );
    let p = from_real(1, Pkt::tcp(r(1), l1, SYN | ACK, 5000, 1001));
    rows.push(
        row(
            "A: SYN-ACK to LIP1:40000 → client from VIP:80",
            100,
            p.build(),
        )
        .forward(EXT, to_client(&p, web, a)),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1001, 5001));
    rows.push(
        row("A: ACK → established", 101, p.build())
            .forward(INT, to_real(&p, l1, 1, 8080))
            .conn(TCP, a, web, Some((Established, r(1)))),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1001, 5001).payload(b"GET / HTTP/1.1\r\n\r\n"));
    rows.push(row("A: client data", 101, p.build()).forward(INT, to_real(&p, l1, 1, 8080)));
    let p = from_real(
        1,
        Pkt::tcp(r(1), l1, PSH | ACK, 5001, 1019).payload(b"HTTP/1.1 200 OK\r\n\r\n"),
    );
    rows.push(row("A: real data", 102, p.build()).forward(EXT, to_client(&p, web, a)));

    // H: a local client whose checksums the NIC finishes (CHECKSUM_PARTIAL); odd client port
    // → LIP2 first; rr → real 2.
    let h = sa(CLIENT, 40011);
    let p = from_client(Pkt::tcp(h, web, SYN, 8000, 0).csum(Csum::Partial));
    let meta = forwarder::engine::RxMeta {
        csum_partial: true,
        ..Default::default()
    };
    rows.push(
        row(
            "H: SYN, CHECKSUM_PARTIAL, odd port → real 2 from LIP2:40000",
            102,
            p.build(),
        )
        .meta(meta)
        .forward(INT, to_real(&p, l2, 2, 8080))
        .conn(TCP, h, web, Some((SynRecv, r(2)))),
    );
    // B: LIP1:40000 again, toward another real server.
    let b = sa(CLIENT, 40002);
    let p = from_client(Pkt::tcp(b, web, SYN, 2000, 0));
    rows.push(
        row(
            "B: SYN → real 3 from LIP1:40000 (one port, one flow per real)",
            110,
            p.build(),
        )
        .forward(INT, to_real(&p, l1, 3, 8080))
        .conn(TCP, b, web, Some((SynRecv, r(3)))),
    );
    // C: real 1 again; LIP1:40000 is A's toward real 1, so the next LIP.
    let c = sa(CLIENT, 40004);
    let p = from_client(Pkt::tcp(c, web, SYN, 3000, 0));
    rows.push(
        row("C: SYN → real 1, LIP1 taken → LIP2:40000", 111, p.build())
            .forward(INT, to_real(&p, l2, 1, 8080))
            .conn(TCP, c, web, Some((SynRecv, r(1)))),
    );
    let p = from_real(1, Pkt::tcp(r(1), l2, SYN | ACK, 7000, 3001));
    rows.push(
        row("C: SYN-ACK to LIP2 → client C", 111, p.build()).forward(EXT, to_client(&p, web, c)),
    );
    let d = sa(CLIENT, 40006);
    let p = from_client(Pkt::tcp(d, web, SYN, 4000, 0));
    rows.push(
        row("D: SYN → real 2 from LIP1:40000", 112, p.build())
            .forward(INT, to_real(&p, l1, 2, 8080))
            .conn(TCP, d, web, Some((SynRecv, r(2)))),
    );
    let e = sa(CLIENT, 40007);
    let p = from_client(Pkt::tcp(e, web, SYN, 5000, 0));
    rows.push(
        row(
            "E: SYN → real 3 from LIP2:40000 (odd port, LIP2 first)",
            112,
            p.build(),
        )
        .forward(INT, to_real(&p, l2, 3, 8080))
        .conn(TCP, e, web, Some((SynRecv, r(3)))),
    );
    let f = sa(CLIENT, 40008);
    let p = from_client(Pkt::tcp(f, web, SYN, 6000, 0));
    rows.push(
        row(
            "F: SYN → real 1: both LIPs' port in use toward real 1 → refused",
            113,
            p.build(),
        )
        .drop(DropReason::PortExhausted)
        .conn(TCP, f, web, None),
    );

    // ICMP errors about flow A, both ways.
    let mtu_1400 = [0, 0, 0x05, 0x78];
    let sent = Pkt::tcp(web, a, PSH | ACK, 5001, 1019).ttl(63);
    let p =
        Pkt::icmp_error(ROUTER_EXT, VIP, 3, 4, mtu_1400, &sent, None).macs(ROUTER_EXT_MAC, EXT_MAC);
    let as_real_sent = Pkt::tcp(r(1), l1, PSH | ACK, 5001, 1019).ttl(63);
    let want = Pkt::icmp_error(LIP1, nat_real(1), 3, 4, mtu_1400, &as_real_sent, None)
        .macs(INT_MAC, nat_real_mac(1))
        .ttl(63);
    rows.push(
        row(
            "I: frag-needed to the VIP about VIP:80 → A → real 1 from LIP1, quoting real → LIP1",
            120,
            p.build(),
        )
        .forward(INT, want.build()),
    );
    let p = Pkt::icmp_error(ROUTER_EXT, VIP, 3, 4, mtu_1400, &sent, Some(28))
        .macs(ROUTER_EXT_MAC, EXT_MAC);
    let want = Pkt::icmp_error(LIP1, nat_real(1), 3, 4, mtu_1400, &as_real_sent, Some(28))
        .macs(INT_MAC, nat_real_mac(1))
        .ttl(63);
    rows.push(
        row("I: the same quoting 8 bytes of TCP only", 120, p.build()).forward(INT, want.build()),
    );
    let forwarded = Pkt::tcp(l1, r(1), PSH | ACK, 1019, 5020)
        .payload(b"more")
        .ttl(63);
    let p = Pkt::icmp_error(ROUTER_INT, LIP1, 3, 1, [0; 4], &forwarded, None)
        .macs(ROUTER_INT_MAC, INT_MAC);
    let as_client_sent = Pkt::tcp(a, web, PSH | ACK, 1019, 5020)
        .payload(b"more")
        .ttl(63);
    let want = Pkt::icmp_error(VIP, CLIENT, 3, 1, [0; 4], &as_client_sent, None)
        .macs(EXT_MAC, CLIENT_MAC)
        .ttl(63);
    rows.push(
        row(
            "I: host unreachable to LIP1 about LIP1 → real 1 → client A from the VIP, quoting A → VIP:80",
            120,
            p.build(),
        )
        .forward(EXT, want.build()),
    );
    let stray = Pkt::tcp(l1, sa(nat_real(2), 9999), ACK, 1, 1).ttl(63);
    let p =
        Pkt::icmp_error(ROUTER_INT, LIP1, 3, 3, [0; 4], &stray, None).macs(ROUTER_INT_MAC, INT_MAC);
    rows.push(
        row("I: error to a LIP about no flow of ours", 120, p.build())
            .drop(DropReason::IcmpNoConnection),
    );
    let p = Pkt::icmp_echo(ROUTER_INT, LIP1, 9, 1).macs(ROUTER_INT_MAC, INT_MAC);
    rows.push(row("I: echo request to a LIP → kernel's", 120, p.build()).pass());
    let p = from_real(2, Pkt::tcp(r(2), sa(LIP1, 41234), ACK, 1, 1));
    rows.push(
        row(
            "R: segment to a LIP port no flow holds → kernel's (dropped there)",
            120,
            p.build(),
        )
        .pass(),
    );

    // UDP: both directions.
    let u = sa(CLIENT, 50000);
    let ul = sa(LIP1, LPORT);
    let p = from_client(Pkt::udp(u, dns, b"query"));
    rows.push(
        row("U: query → real 1:8053 from LIP1:40000", 140, p.build())
            .forward(INT, to_real(&p, ul, 1, 8053))
            .conn(UDP, u, dns, Some((Udp, sa(nat_real(1), 8053)))),
    );
    let p = from_real(1, Pkt::udp(sa(nat_real(1), 8053), ul, b"answer"));
    rows.push(
        row("U: answer → client from VIP:53", 140, p.build()).forward(EXT, to_client(&p, dns, u)),
    );
    let p = from_client(Pkt::udp(sa(CLIENT, 50001), dns, b"query").csum(Csum::None));
    rows.push(
        row(
            "U: a second client to the one real: LIP1:40000 is taken → refused",
            141,
            p.build(),
        )
        .drop(DropReason::PortExhausted),
    );

    let mut failures = run_table(&mut lab, "fullnat", rows);
    check_after(
        &mut failures,
        "fullnat",
        &lab,
        Counts {
            rx: 21,
            passed: 2,
            forwarded_in: 9,
            forwarded_out: 4,
            icmp_forwarded: 3,
            emitted: 0,
            icmp_sent: 0,
            icmp_limited: 0,
            icmp_unroutable: 0,
            new_conns: 7,
            drops: vec![
                (DropReason::IcmpNoConnection, 1),
                (DropReason::PortExhausted, 2),
            ],
        },
        [
            ((a, web), (Established, r(1), l1)),
            ((h, web), (SynRecv, r(2), l2)),
            ((b, web), (SynRecv, r(3), l1)),
            ((c, web), (SynRecv, r(1), l2)),
            ((d, web), (SynRecv, r(2), l1)),
            ((e, web), (SynRecv, r(3), l2)),
            ((u, dns), (Udp, sa(nat_real(1), 8053), ul)),
        ]
        .into_iter()
        .collect(),
    );
    // The rows of established flows that the fast path forwards.
    assert_xdp_forwarded(&lab, "fullnat_table", if xdp { 3 } else { 0 });
    assert_no_failures(failures);
}

/// The local port is held through TIME_WAIT and free again when the entry expires.
pub fn fullnat_port_held_through_time_wait() {
    let mut lab = lab(vec![fullnat(
        "solo",
        80,
        TCP,
        &[(nat_real(3), 8081, 1)],
        &[LIP1],
    )]);
    let web = sa(VIP, 80);
    let real = sa(nat_real(3), 8081);
    let l1 = sa(LIP1, LPORT);
    let x = sa(CLIENT, 41000);
    let y = sa(CLIENT, 41002);
    let mut rows = Vec::new();
    let p = from_client(Pkt::tcp(x, web, SYN, 10, 0));
    rows.push(
        row("X: SYN → real 3 from LIP1:40000", 1000, p.build())
            .forward(INT, to_real(&p, l1, 3, 8081))
            .conn(TCP, x, web, Some((SynRecv, real))),
    );
    let p = from_client(Pkt::tcp(y, web, SYN, 20, 0));
    rows.push(
        row(
            "Y: SYN while X holds the only port → refused",
            1000,
            p.build(),
        )
        .drop(DropReason::PortExhausted)
        .conn(TCP, y, web, None),
    );
    let p = from_real(3, Pkt::tcp(real, l1, SYN | ACK, 500, 11));
    rows.push(row("X: SYN-ACK", 1000, p.build()).forward(EXT, to_client(&p, web, x)));
    let p = from_client(Pkt::tcp(x, web, ACK, 11, 501));
    rows.push(
        row("X: ACK", 1001, p.build())
            .forward(INT, to_real(&p, l1, 3, 8081))
            .conn(TCP, x, web, Some((Established, real))),
    );
    let p = from_client(Pkt::tcp(x, web, FIN | ACK, 11, 501));
    rows.push(
        row("X: client FIN", 1002, p.build())
            .forward(INT, to_real(&p, l1, 3, 8081))
            .conn(TCP, x, web, Some((FinWait, real))),
    );
    let p = from_real(3, Pkt::tcp(real, l1, FIN | ACK, 501, 12));
    rows.push(
        row("X: real FIN → TIME_WAIT", 1002, p.build())
            .forward(EXT, to_client(&p, web, x))
            .conn(TCP, x, web, Some((TimeWait, real))),
    );
    let p = from_client(Pkt::tcp(y, web, SYN, 21, 0));
    rows.push(
        row(
            "Y: SYN 119 s into TIME_WAIT → still refused",
            1002 + 119,
            p.build(),
        )
        .drop(DropReason::PortExhausted)
        .conn(TCP, y, web, None),
    );
    let p = from_client(Pkt::tcp(y, web, SYN, 22, 0));
    rows.push(
        row(
            "Y: SYN when X's TIME_WAIT has run out (120 s) → LIP1:40000",
            1002 + 120,
            p.build(),
        )
        .forward(INT, to_real(&p, l1, 3, 8081))
        .conn(TCP, y, web, Some((SynRecv, real)))
        .conn(TCP, x, web, None),
    );
    let mut failures = run_table(&mut lab, "fullnat-time-wait", rows);
    check_after(
        &mut failures,
        "fullnat-time-wait",
        &lab,
        Counts {
            rx: 8,
            passed: 0,
            forwarded_in: 4,
            forwarded_out: 2,
            icmp_forwarded: 0,
            emitted: 0,
            icmp_sent: 0,
            icmp_limited: 0,
            icmp_unroutable: 0,
            new_conns: 2,
            drops: vec![(DropReason::PortExhausted, 2)],
        },
        [((y, web), (SynRecv, real, l1))].into_iter().collect(),
    );
    assert_no_failures(failures);
}

/// PROXY protocol v2: the header before the client's first byte, every later sequence and
/// acknowledgement number shifted by its 28 bytes, SACK edges too, MSS lowered.
pub fn fullnat_proxy_protocol_table() {
    fullnat_proxy_protocol_table_run(false)
}

/// [`fullnat_proxy_protocol_table`] with every row also run through the XDP program.
pub fn fullnat_proxy_protocol_table_xdp() {
    fullnat_proxy_protocol_table_run(true)
}

fn fullnat_proxy_protocol_table_run(xdp: bool) {
    let mut s = fullnat(
        "pp",
        80,
        TCP,
        &[(nat_real(1), 8080, 1), (nat_real(2), 8080, 1)],
        &[LIP1],
    );
    s.proxy_protocol = Some(forwarder::model::ProxyProtocol::V2);
    let mut lab = lab(vec![s]);
    if xdp && !lab.use_xdp("fullnat_proxy_protocol_table") {
        return;
    }
    let web = sa(VIP, 80);
    let real = sa(nat_real(1), 8080);
    let l1 = sa(LIP1, LPORT);
    let a = sa(CLIENT, 40000);
    let header = forwarder::engine::proxy_header_v2(a, web);
    let with_header = |data: &[u8]| [&header[..], data].concat();
    let mut rows = Vec::new();

    let p = from_client(Pkt::tcp(a, web, SYN, 999, 0).tcp_options(&[2, 4, 0x05, 0xb4]));
    rows.push(
        row(
            "SYN (ISN 999) → real, unchanged but for FULLNAT",
            10,
            p.build(),
        )
        .forward(INT, to_real(&p, l1, 1, 8080))
        .conn(TCP, a, web, Some((SynRecv, real))),
    );
    let p = from_real(
        1,
        Pkt::tcp(real, l1, SYN | ACK, 5000, 1000).tcp_options(&[2, 4, 0x05, 0xb4]),
    );
    let want = Pkt::tcp(real, l1, SYN | ACK, 5000, 1000).tcp_options(&[2, 4, 0x05, 0x98]);
    rows.push(
        row(
            "SYN-ACK: MSS 1460 → 1432 (room for the header)",
            10,
            p.build(),
        )
        .forward(EXT, to_client(&from_real(1, want), web, a)),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1000, 5001));
    rows.push(
        row(
            "handshake ACK at ISN + 1, no data: unchanged",
            11,
            p.build(),
        )
        .forward(INT, to_real(&p, l1, 1, 8080))
        .conn(TCP, a, web, Some((Established, real))),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1000, 5001).payload(b"GET /"));
    let want = Pkt::tcp(a, web, PSH | ACK, 1000, 5001).payload(&with_header(b"GET /"));
    rows.push(
        row(
            "first data: the PROXY v2 header goes in front of it",
            11,
            p.build(),
        )
        .forward_insert(INT, to_real(&from_client(want), l1, 1, 8080)),
    );
    let p = from_real(1, Pkt::tcp(real, l1, ACK, 5001, 1000 + 28 + 5));
    let want = Pkt::tcp(real, l1, ACK, 5001, 1005);
    rows.push(
        row(
            "real's ACK of header + 5 bytes → client sees 1005",
            12,
            p.build(),
        )
        .forward(EXT, to_client(&from_real(1, want), web, a)),
    );
    let sack = |l: u32, r: u32| {
        let mut o = vec![1, 1, 5, 10];
        o.extend_from_slice(&l.to_be_bytes());
        o.extend_from_slice(&r.to_be_bytes());
        o
    };
    let p = from_real(
        1,
        Pkt::tcp(real, l1, ACK, 5001, 1033).tcp_options(&sack(1040 + 28, 1050 + 28)),
    );
    let want = Pkt::tcp(real, l1, ACK, 5001, 1005).tcp_options(&sack(1040, 1050));
    rows.push(
        row("real's SACK block loses the shift too", 12, p.build())
            .forward(EXT, to_client(&from_real(1, want), web, a)),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1000, 5001).payload(b"GET /"));
    let want = Pkt::tcp(a, web, PSH | ACK, 1000, 5001).payload(&with_header(b"GET /"));
    rows.push(
        row(
            "a retransmission of the first data gets the header again",
            13,
            p.build(),
        )
        .forward_insert(INT, to_real(&from_client(want), l1, 1, 8080)),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1005, 5001).payload(b"more"));
    let want = Pkt::tcp(a, web, PSH | ACK, 1005 + 28, 5001).payload(b"more");
    rows.push(
        row("later data: sequence number + 28", 13, p.build())
            .forward(INT, to_real(&from_client(want), l1, 1, 8080)),
    );
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 1009, 5001)
            .payload(b"partial")
            .csum(Csum::Partial),
    );
    let want = Pkt::tcp(a, web, PSH | ACK, 1009 + 28, 5001)
        .payload(b"partial")
        .csum(Csum::Partial);
    let meta = forwarder::engine::RxMeta {
        csum_partial: true,
        ..Default::default()
    };
    rows.push(
        row(
            "later data, CHECKSUM_PARTIAL: the seed is untouched by the shift",
            13,
            p.build(),
        )
        .meta(meta)
        .forward(INT, to_real(&from_client(want), l1, 1, 8080)),
    );
    let p = from_client(Pkt::tcp(a, web, FIN | ACK, 1016, 5001));
    let want = Pkt::tcp(a, web, FIN | ACK, 1016 + 28, 5001);
    rows.push(
        row("client FIN: + 28", 14, p.build())
            .forward(INT, to_real(&from_client(want), l1, 1, 8080))
            .conn(TCP, a, web, Some((FinWait, real))),
    );
    let p = from_real(1, Pkt::tcp(real, l1, FIN | ACK, 5001, 1017 + 28));
    let want = Pkt::tcp(real, l1, FIN | ACK, 5001, 1017);
    rows.push(
        row("real FIN acking the client's FIN → 1017", 14, p.build())
            .forward(EXT, to_client(&from_real(1, want), web, a))
            .conn(TCP, a, web, Some((TimeWait, real))),
    );

    // B (rr → real 2): a client that closes without sending a byte; its FIN at ISN + 1
    // carries the header.
    let b = sa(CLIENT, 40002);
    let real2 = sa(nat_real(2), 8080);
    let hb = forwarder::engine::proxy_header_v2(b, web);
    let p = from_client(Pkt::tcp(b, web, SYN, 7000, 0));
    rows.push(
        row("B: SYN → real 2", 20, p.build())
            .forward(INT, to_real(&p, l1, 2, 8080))
            .conn(TCP, b, web, Some((SynRecv, real2))),
    );
    let p = from_client(Pkt::tcp(b, web, FIN | ACK, 7001, 9001));
    let want = Pkt::tcp(b, web, FIN | ACK, 7001, 9001).payload(&hb);
    rows.push(
        row(
            "B: FIN at ISN + 1 without data: the header goes with it",
            21,
            p.build(),
        )
        .forward_insert(INT, to_real(&from_client(want), l1, 2, 8080)),
    );

    let mut failures = run_table(&mut lab, "fullnat-proxy", rows);
    let e = lab.conn(TCP, a, web).expect("flow A");
    if e.proxy_seq()
        != Some(forwarder::conntrack::ProxySeq {
            client_isn: 999,
            delta: 28,
        })
    {
        failures.push(format!(
            "[fullnat-proxy] entry's shift: {:?}",
            e.proxy_seq()
        ));
    }
    // The rows of established flows that the fast path forwards.
    assert_xdp_forwarded(
        &lab,
        "fullnat_proxy_protocol_table",
        if xdp { 3 } else { 0 },
    );
    assert_no_failures(failures);
}

/// An entry of a FULLNAT service without its local address (only a defective replica could
/// be one, and the sync adapter refuses those) is never forwarded unrewritten, as DR would
/// forward it: its packets, and ICMP errors about it, are dropped as `no_local_address`.
pub fn a_fullnat_entry_without_a_local_address_is_never_forwarded_unrewritten() {
    use forwarder::conntrack::NewConn;
    use forwarder::engine::{RxMeta, Verdict};
    let mut lab = lab(vec![fullnat(
        "solo",
        80,
        TCP,
        &[(nat_real(3), 8081, 1)],
        &[LIP1],
    )]);
    let web = sa(VIP, 80);
    let x = sa(CLIENT, 41000);
    let conn = NewConn {
        proto: TCP,
        mode: Mode::FullNat,
        client: x,
        vip: web,
        real: sa(nat_real(3), 8081),
        local: None,
        proxy: None,
        service: 0,
        real_slot: 0,
        flags: 0,
    };
    lab.engine
        .conns
        .shard_for(x)
        .insert(&conn, 1000)
        .expect("insert the entry");
    let mut data = from_client(Pkt::tcp(x, web, ACK, 11, 501).payload(b"data")).build();
    assert_eq!(
        lab.process(&mut data, RxMeta::default(), 1000),
        Verdict::Drop(DropReason::NoLocalAddress)
    );
    // A router on the client's side reports our packet to the client unreachable.
    let ours = Pkt::tcp(web, x, ACK, 501, 11);
    let mut icmp = from_client(Pkt::icmp_error(
        ROUTER_EXT,
        VIP,
        3,
        1,
        [0; 4],
        &ours,
        Some(28),
    ))
    .build();
    assert_eq!(
        lab.process(&mut icmp, RxMeta::default(), 1000),
        Verdict::Drop(DropReason::NoLocalAddress)
    );
    assert_eq!(lab.take_emitted(), vec![]);
    let c = lab.counts();
    assert_eq!(c.drops, vec![(DropReason::NoLocalAddress, 2)], "{c:?}");
    assert!(c.balanced(), "{c:?}");
}
