//! Golden tables for the XDP fast path's rules (see modes.rs for how a table works): per
//! mode, flows are established (TCP handshakes, UDP first datagrams) and then sent what an
//! established flow meets: data both ways, several segments, pure ACKs, UDP with and without
//! a checksum, and every case the fast path must leave to the engine (`forwarder/bpf/
//! fastpath.h`): SYN, FIN and RST, IPv4 options, fragments, a wrong IPv4 header checksum,
//! TTL ≤ 1, a frame too big for the egress MTU (TUN: with the 20 bytes), an unresolved next
//! hop, the PROXY protocol segment that gets the header, a SACK edge at an odd offset. Each
//! row still gets the engine's normal verdict.
//!
//! Each table runs twice: engine only (`X_table`), and with every row also run through the
//! loaded XDP program (`X_table_xdp`, see `harness.rs`, `XdpCheck`). Rows are added with
//! [`Rows::fast`] (the program must forward it, byte for byte as the engine does) or
//! [`Rows::slow`] (the engine's: no fast-path flow yet, or a case the program leaves alone);
//! at the end the program must have forwarded exactly the `fast` rows.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use forwarder::conntrack::ConnState::{self, *};
use forwarder::engine::DropReason;
use forwarder::model::{Mode, Protocol, SchedulerKind, VirtualService};

use crate::frames::{self, Csum, Mac, Pkt, ACK, FIN, PSH, RST, SYN};
use crate::harness::*;

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

/// A client on ext's subnet whose MAC the FIB does not know (and the miss handler cannot
/// find): replies toward it have no next hop.
const NOMAC_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 77);
/// A DR real server on ext's subnet whose MAC the FIB does not know.
const NOMAC_DR_REAL: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 14);
/// IPv4 option: router alert (RFC 2113).
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];
/// The FULLNAT local addresses and the one local port (see golden_fullnat.rs).
const LIP1: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 5);
const LIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 6);
const LPORT: u16 = 40000;

// ---- rows and checks ------------------------------------------------------------------------

/// A table's rows, and how many of them the XDP program must forward itself.
#[derive(Default)]
struct Rows {
    rows: Vec<Row>,
    fast: usize,
}

impl Rows {
    /// A plain packet of an established TCP or UDP flow: the program forwards it, byte for
    /// byte as the engine does.
    fn fast(&mut self, r: Row) {
        self.fast += 1;
        self.rows.push(r);
    }

    /// The engine's: no fast-path flow (yet, or any more), or a case the program must leave
    /// to the engine (XDP_PASS, the frame unchanged).
    fn slow(&mut self, r: Row) {
        self.rows.push(r);
    }
}

fn entry(state: ConnState, real: SocketAddrV4) -> Option<(ConnState, SocketAddrV4)> {
    Some((state, real))
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

/// (client, vip) → (state, real), sorted.
type ConnMap = BTreeMap<(SocketAddrV4, SocketAddrV4), (ConnState, SocketAddrV4)>;

fn expect_conns(failures: &mut Vec<String>, table: &str, lab: &Lab, want: ConnMap) {
    let got: ConnMap = lab
        .all_conns()
        .iter()
        .map(|e| ((e.client(), e.vip()), (e.state(), e.real())))
        .collect();
    if got != want {
        failures.push(format!(
            "[{table}] connection table after the table:\n  expected {want:#?}\n  got      {got:#?}"
        ));
    }
}

fn expect_misses(failures: &mut Vec<String>, table: &str, lab: &Lab, want: &[(u32, Ipv4Addr)]) {
    if lab.misses.0 != want {
        failures.push(format!(
            "[{table}] neighbour misses: expected {want:?}, got {:?}",
            lab.misses.0
        ));
    }
}

/// The end of a table: the program forwarded exactly the `fast` rows, and no row failed.
fn finish(lab: &Lab, table: &str, xdp: bool, fast: usize, mut failures: Vec<String>) {
    if let Some(x) = &lab.xdp {
        if x.forwarded != fast {
            failures.push(format!(
                "[{table}] XDP: the program forwarded {} rows, the fast path owns {fast}",
                x.forwarded
            ));
        }
    }
    assert_no_failures(failures);
    assert_xdp_forwarded(lab, table, if xdp { fast } else { 0 });
}

// ---- frames ---------------------------------------------------------------------------------

/// A packet as it arrives from the client on ext.
fn from_client(p: Pkt) -> Pkt {
    p.macs(CLIENT_MAC, EXT_MAC)
}

/// A packet as it arrives from NAT (or FULLNAT) real `i` on int.
fn from_real(i: u8, p: Pkt) -> Pkt {
    p.macs(nat_real_mac(i), INT_MAC)
}

/// `p` as the director sends it to NAT real `i`: destination real:port, int's MAC to the
/// real's, TTL − 1.
fn nat_to_real(p: &Pkt, i: u8, port: u16) -> Vec<u8> {
    let ttl = p.ttl - 1;
    p.clone()
        .to(sa(nat_real(i), port))
        .macs(INT_MAC, nat_real_mac(i))
        .ttl(ttl)
        .build()
}

/// A NAT reply `p` as the director sends it: source VIP:port, out of `eth` (source, next
/// hop) MACs, TTL − 1.
fn nat_to_client(p: &Pkt, vip: SocketAddrV4, eth: (Mac, Mac)) -> Vec<u8> {
    let ttl = p.ttl - 1;
    p.clone().from(vip).macs(eth.0, eth.1).ttl(ttl).build()
}

/// The frame with its IPv4 header checksum made wrong.
fn bad_ip_csum(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14 + 11] ^= 0x01;
    frame
}

/// The frame with Ethernet padding (zeros) up to `len` bytes, as a NIC delivers a short
/// frame: the IP packet ends before the frame does.
fn padded(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    assert!(frame.len() <= len, "padding only lengthens");
    frame.resize(len, 0);
    frame
}

/// Bytes 0, 1, 2... so that a misplaced byte shows.
fn counting(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A 2-byte UDP payload for which the datagram `src` → `dst` has a computed checksum of 0,
/// written as 0xffff (RFC 768).
fn payload_summing_to_ffff(src: SocketAddrV4, dst: SocketAddrV4) -> [u8; 2] {
    (0..=u16::MAX)
        .map(u16::to_be_bytes)
        .find(|v| {
            let f = Pkt::udp(src, dst, v).build();
            f[14 + 20 + 6..14 + 20 + 8] == [0xff, 0xff]
        })
        .expect("some payload sums to 0")
}

/// TCP options: NOP, NOP, timestamps (`val`, `ecr`), as Linux lays them out.
fn timestamps(val: u32, ecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&val.to_be_bytes());
    o.extend_from_slice(&ecr.to_be_bytes());
    o
}

/// A SACK option (kind 5) with these blocks, without padding.
fn sack_option(blocks: &[(u32, u32)]) -> Vec<u8> {
    let mut o = vec![5, 2 + 8 * blocks.len() as u8];
    for (l, r) in blocks {
        o.extend_from_slice(&l.to_be_bytes());
        o.extend_from_slice(&r.to_be_bytes());
    }
    o
}

// ---- NAT ------------------------------------------------------------------------------------

fn nat_services() -> Vec<VirtualService> {
    let reals: Vec<_> = (1..=3).map(|i| (nat_real(i), 8080, 1)).collect();
    vec![
        service("web", 80, TCP, Mode::Nat, SchedulerKind::Rr, &reals),
        service(
            "dns",
            53,
            UDP,
            Mode::Nat,
            SchedulerKind::Rr,
            &[(nat_real(1), 8053, 1), (nat_real(2), 8053, 1)],
        ),
    ]
}

pub fn nat_table() {
    nat_table_run(false)
}

/// [`nat_table`] with every row also run through the XDP program.
pub fn nat_table_xdp() {
    nat_table_run(true)
}

fn nat_table_run(xdp: bool) {
    let mut lab = Lab::new(nat_services());
    if xdp && !lab.use_xdp("fastpath_nat_table") {
        return;
    }
    let web = sa(VIP, 80);
    let dns = sa(VIP, 53);
    let r = |i| sa(nat_real(i), 8080);
    let ur = |i| sa(nat_real(i), 8053);
    let to_cl = (EXT_MAC, CLIENT_MAC);
    let mut t = Rows::default();

    // A: the handshake, rr → real 1.
    let a = sa(CLIENT, 40100);
    let p = from_client(Pkt::tcp(a, web, SYN, 1000, 0));
    t.slow(
        row("A: SYN → real 1", 100, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080))
            .conn(TCP, a, web, entry(SynRecv, r(1))),
    );
    let p = from_real(1, Pkt::tcp(r(1), a, SYN | ACK, 5000, 1001));
    t.slow(
        row("A: SYN-ACK", 100, p.build())
            .forward(EXT, nat_to_client(&p, web, to_cl))
            .conn(TCP, a, web, entry(SynRecv, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1001, 5001));
    t.slow(
        row(
            "A: handshake ACK (the flow is not established before it)",
            100,
            p.build(),
        )
        .forward(INT, nat_to_real(&p, 1, 8080))
        .conn(TCP, a, web, entry(Established, r(1))),
    );

    // A, established: data both ways, several segments, pure ACKs.
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 1001, 5001).payload(b"GET /index.html HTTP/1.1\r\n"),
    );
    t.fast(row("A: client data, segment 1", 101, p.build()).forward(INT, nat_to_real(&p, 1, 8080)));
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1027, 5001).payload(b"host: director\r\n\r\n"));
    t.fast(row("A: client data, segment 2", 101, p.build()).forward(INT, nat_to_real(&p, 1, 8080)));
    let p = from_real(
        1,
        Pkt::tcp(r(1), a, ACK, 5001, 1045).payload(&counting(1000)),
    );
    t.fast(
        row("A: real data, segment 1 (1000 bytes)", 102, p.build())
            .forward(EXT, nat_to_client(&p, web, to_cl)),
    );
    let p = from_real(
        1,
        Pkt::tcp(r(1), a, PSH | ACK, 6001, 1045).payload(&counting(300)),
    );
    t.fast(
        row("A: real data, segment 2", 102, p.build()).forward(EXT, nat_to_client(&p, web, to_cl)),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1045, 6301));
    t.fast(row("A: client pure ACK", 102, p.build()).forward(INT, nat_to_real(&p, 1, 8080)));
    let p = from_real(1, Pkt::tcp(r(1), a, ACK, 6301, 1045));
    t.fast(
        row("A: real pure ACK (window update)", 102, p.build())
            .forward(EXT, nat_to_client(&p, web, to_cl)),
    );
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 1045, 6301)
            .tcp_options(&timestamps(77, 88))
            .payload(b"x"),
    );
    t.fast(
        row("A: client data with timestamps", 103, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080)),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1046, 6301));
    t.fast(
        row(
            "A: client pure ACK, Ethernet padding to 60 bytes (kept)",
            103,
            padded(p.build(), 60),
        )
        .forward(INT, padded(nat_to_real(&p, 1, 8080), 60)),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1046, 6301).ttl(2));
    t.fast(
        row("A: TTL 2 → forwarded with TTL 1", 103, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080)),
    );
    let p = from_real(1, Pkt::tcp(r(1), a, ACK, 6301, 1046).ttl(2));
    t.fast(
        row("A: reply with TTL 2 → TTL 1", 103, p.build())
            .forward(EXT, nat_to_client(&p, web, to_cl)),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1046, 6301).payload(&counting(1460)));
    t.fast(
        row("A: client 1500 bytes: fits the MTU exactly", 104, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080)),
    );
    let p = from_real(
        1,
        Pkt::tcp(r(1), a, ACK, 6301, 2506).payload(&counting(1460)),
    );
    t.fast(
        row("A: real 1500 bytes: fits exactly", 104, p.build())
            .forward(EXT, nat_to_client(&p, web, to_cl)),
    );
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 2506, 7761)
            .payload(b"bad")
            .csum(Csum::Wrong),
    );
    t.fast(
        row(
            "A: wrong TCP checksum: forwarded, the error kept for the end host",
            104,
            p.build(),
        )
        .forward(INT, nat_to_real(&p, 1, 8080))
        .l4_invalid(),
    );
    let p = from_client(Pkt::tcp(a, web, PSH, 2506, 0).payload(b"no ack"));
    t.fast(
        row("A: a segment without ACK (PSH only)", 104, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080)),
    );

    // A: what the fast path leaves to the engine.
    let data = || Pkt::tcp(a, web, PSH | ACK, 2512, 7761).payload(b"data");
    let reply = || Pkt::tcp(r(1), a, PSH | ACK, 7761, 2512).payload(b"reply");
    t.slow(
        row(
            "A: wrong IPv4 header checksum",
            105,
            bad_ip_csum(from_client(data()).build()),
        )
        .drop(DropReason::BadIpChecksum),
    );
    t.slow(
        row(
            "A: reply with a wrong IPv4 header checksum",
            105,
            bad_ip_csum(from_real(1, reply()).build()),
        )
        .drop(DropReason::BadIpChecksum),
    );
    t.slow(row("A: TTL 1", 105, from_client(data().ttl(1)).build()).drop(DropReason::TtlExceeded));
    t.slow(
        row(
            "A: reply with TTL 1",
            105,
            from_real(1, reply().ttl(1)).build(),
        )
        .drop(DropReason::TtlExceeded),
    );
    let p = from_client(data().options(&ROUTER_ALERT));
    t.slow(
        row("A: IP options → the engine forwards them", 105, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080)),
    );
    let p = from_real(1, reply().options(&ROUTER_ALERT));
    t.slow(
        row("A: reply with IP options → the engine's", 105, p.build())
            .forward(EXT, nat_to_client(&p, web, to_cl)),
    );
    t.slow(
        row(
            "A: first fragment (MF)",
            105,
            from_client(data().more_frags()).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "A: last fragment (offset 1480) that looks like the flow's TCP header",
            105,
            from_client(data().frag_offset(1480)).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "A: first fragment of a reply",
            105,
            from_real(1, reply().more_frags()).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "A: later fragment of a reply that looks like its TCP header",
            105,
            from_real(1, reply().frag_offset(1480)).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "A: 1501 bytes, egress MTU 1500",
            105,
            from_client(data().payload(&counting(1461))).build(),
        )
        .drop(DropReason::TooBig),
    );
    t.slow(
        row(
            "A: reply of 1501 bytes",
            105,
            from_real(1, reply().payload(&counting(1461))).build(),
        )
        .drop(DropReason::TooBig),
    );
    let p = from_client(Pkt::tcp(a, web, SYN, 1000, 0));
    t.slow(
        row(
            "A: the client's SYN again (a stray retransmission): the engine's",
            105,
            p.build(),
        )
        .forward(INT, nat_to_real(&p, 1, 8080))
        .conn(TCP, a, web, entry(Established, r(1))),
    );
    let p = from_real(1, Pkt::tcp(r(1), a, SYN | ACK, 5000, 1001));
    t.slow(
        row("A: the SYN-ACK again: the engine's", 105, p.build())
            .forward(EXT, nat_to_client(&p, web, to_cl))
            .conn(TCP, a, web, entry(Established, r(1))),
    );

    // UDP: first datagrams make the flows; the rest is the fast path's.
    let (u0, u1) = (sa(CLIENT, 50100), sa(CLIENT, 50101));
    let p = from_client(Pkt::udp(u0, dns, b"query-0").csum(Csum::None));
    t.slow(
        row("U0: first datagram, no checksum → real 1", 110, p.build())
            .forward(INT, nat_to_real(&p, 1, 8053))
            .conn(UDP, u0, dns, entry(Udp, ur(1))),
    );
    let p = from_client(Pkt::udp(u0, dns, b"query-0 again").csum(Csum::None));
    t.fast(
        row("U0: datagram without checksum: stays 0", 110, p.build())
            .forward(INT, nat_to_real(&p, 1, 8053)),
    );
    let p = from_real(1, Pkt::udp(ur(1), u0, b"answer-0").csum(Csum::None));
    t.fast(
        row("U0: answer without checksum: stays 0", 110, p.build())
            .forward(EXT, nat_to_client(&p, dns, to_cl)),
    );
    let p = from_client(Pkt::udp(u1, dns, b"query-1"));
    t.slow(
        row("U1: first datagram, with checksum → real 2", 110, p.build())
            .forward(INT, nat_to_real(&p, 2, 8053))
            .conn(UDP, u1, dns, entry(Udp, ur(2))),
    );
    let p = from_real(2, Pkt::udp(ur(2), u1, b"answer-1"));
    t.fast(
        row("U1: answer, checksum updated", 110, p.build())
            .forward(EXT, nat_to_client(&p, dns, to_cl)),
    );
    let p = from_client(Pkt::udp(u1, dns, b"query-1 again"));
    t.fast(row("U1: second datagram", 111, p.build()).forward(INT, nat_to_real(&p, 2, 8053)));
    let p = from_client(Pkt::udp(u1, dns, &payload_summing_to_ffff(u1, ur(2))));
    t.fast(
        row(
            "U1: checksum that becomes 0 after NAT is sent as 0xffff",
            111,
            p.build(),
        )
        .forward(INT, nat_to_real(&p, 2, 8053)),
    );
    let p = from_real(2, Pkt::udp(ur(2), u1, &payload_summing_to_ffff(dns, u1)));
    t.fast(
        row(
            "U1: answer whose checksum becomes 0 after NAT → 0xffff",
            111,
            p.build(),
        )
        .forward(EXT, nat_to_client(&p, dns, to_cl)),
    );
    let p = from_client(Pkt::udp(u1, dns, b"bad sum").csum(Csum::Wrong));
    t.fast(
        row("U1: wrong UDP checksum: the error kept", 111, p.build())
            .forward(INT, nat_to_real(&p, 2, 8053))
            .l4_invalid(),
    );
    t.slow(
        row(
            "U1: TTL 1",
            111,
            from_client(Pkt::udp(u1, dns, b"q").ttl(1)).build(),
        )
        .drop(DropReason::TtlExceeded),
    );
    t.slow(
        row(
            "U1: wrong IPv4 header checksum",
            111,
            bad_ip_csum(from_client(Pkt::udp(u1, dns, b"q")).build()),
        )
        .drop(DropReason::BadIpChecksum),
    );
    let p = from_client(Pkt::udp(u1, dns, b"q").options(&ROUTER_ALERT));
    t.slow(
        row("U1: IP options → the engine's", 111, p.build()).forward(INT, nat_to_real(&p, 2, 8053)),
    );
    t.slow(
        row(
            "U1: first fragment",
            111,
            from_client(Pkt::udp(u1, dns, &counting(100)).more_frags()).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "U1: 1501 bytes",
            111,
            from_client(Pkt::udp(u1, dns, &counting(1473))).build(),
        )
        .drop(DropReason::TooBig),
    );

    // N: a client whose MAC nobody knows: its replies have no next hop.
    let n = sa(NOMAC_CLIENT, 40200);
    let p = from_client(Pkt::tcp(n, web, SYN, 100, 0));
    t.slow(
        row("N: SYN → real 2", 120, p.build())
            .forward(INT, nat_to_real(&p, 2, 8080))
            .conn(TCP, n, web, entry(SynRecv, r(2))),
    );
    let p = from_real(2, Pkt::tcp(r(2), n, SYN | ACK, 900, 101));
    t.slow(row("N: SYN-ACK: no neighbour", 120, p.build()).drop(DropReason::NoNeighbour));
    let p = from_client(Pkt::tcp(n, web, ACK, 101, 901));
    t.slow(
        row("N: ACK", 121, p.build())
            .forward(INT, nat_to_real(&p, 2, 8080))
            .conn(TCP, n, web, entry(Established, r(2))),
    );
    let p = from_client(Pkt::tcp(n, web, PSH | ACK, 101, 901).payload(b"hello"));
    t.fast(
        row("N: client data (toward the real: resolved)", 121, p.build())
            .forward(INT, nat_to_real(&p, 2, 8080)),
    );
    let p = from_real(2, Pkt::tcp(r(2), n, PSH | ACK, 901, 106).payload(b"hi"));
    t.slow(
        row(
            "N: reply: unresolved next hop → the engine asks, then drops",
            121,
            p.build(),
        )
        .drop(DropReason::NoNeighbour),
    );

    // I: a client on int's subnet (the int-side router itself): both ways in and out of
    // int (XDP_TX).
    let i = sa(ROUTER_INT, 40300);
    let from_int_client = |p: Pkt| p.macs(ROUTER_INT_MAC, INT_MAC);
    let to_int_client = (INT_MAC, ROUTER_INT_MAC);
    let p = from_int_client(Pkt::tcp(i, web, SYN, 300, 0));
    t.slow(
        row("I: SYN from int's side → real 3", 130, p.build())
            .forward(INT, nat_to_real(&p, 3, 8080))
            .conn(TCP, i, web, entry(SynRecv, r(3))),
    );
    let p = from_int_client(Pkt::tcp(i, web, ACK, 301, 701));
    t.slow(
        row("I: ACK", 130, p.build())
            .forward(INT, nat_to_real(&p, 3, 8080))
            .conn(TCP, i, web, entry(Established, r(3))),
    );
    let p = from_int_client(Pkt::tcp(i, web, PSH | ACK, 301, 701).payload(b"ping"));
    t.fast(
        row("I: data: in and out of int", 131, p.build()).forward(INT, nat_to_real(&p, 3, 8080)),
    );
    let p = from_real(3, Pkt::tcp(r(3), i, PSH | ACK, 701, 305).payload(b"pong"));
    t.fast(
        row("I: reply: in and out of int", 131, p.build())
            .forward(INT, nat_to_client(&p, web, to_int_client)),
    );

    // C: a client behind the router: replies go to the gateway's MAC.
    let c = sa(Ipv4Addr::new(198, 19, 7, 7), 33100);
    let from_remote = |p: Pkt| p.macs(ROUTER_EXT_MAC, EXT_MAC);
    let to_gateway = (EXT_MAC, ROUTER_EXT_MAC);
    let p = from_remote(Pkt::tcp(c, web, SYN, 3000, 0));
    t.slow(
        row("C: remote client SYN → real 1", 140, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080))
            .conn(TCP, c, web, entry(SynRecv, r(1))),
    );
    let p = from_remote(Pkt::tcp(c, web, ACK, 3001, 8001));
    t.slow(
        row("C: ACK", 140, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080))
            .conn(TCP, c, web, entry(Established, r(1))),
    );
    let p = from_remote(Pkt::tcp(c, web, PSH | ACK, 3001, 8001).payload(b"far"));
    t.fast(row("C: data", 141, p.build()).forward(INT, nat_to_real(&p, 1, 8080)));
    let p = from_real(1, Pkt::tcp(r(1), c, PSH | ACK, 8001, 3004).payload(b"away"));
    t.fast(
        row("C: reply → the gateway's MAC", 141, p.build())
            .forward(EXT, nat_to_client(&p, web, to_gateway)),
    );
    let p = from_real(1, Pkt::tcp(r(1), c, RST | ACK, 8005, 3004));
    t.slow(
        row("C: the real server resets: the engine's", 142, p.build())
            .forward(EXT, nat_to_client(&p, web, to_gateway))
            .conn(TCP, c, web, entry(Close, r(1))),
    );

    // B: the client resets.
    let b = sa(CLIENT, 40101);
    let p = from_client(Pkt::tcp(b, web, SYN, 2000, 0));
    t.slow(
        row("B: SYN → real 2", 150, p.build())
            .forward(INT, nat_to_real(&p, 2, 8080))
            .conn(TCP, b, web, entry(SynRecv, r(2))),
    );
    let p = from_client(Pkt::tcp(b, web, ACK, 2001, 6001));
    t.slow(
        row("B: ACK", 150, p.build())
            .forward(INT, nat_to_real(&p, 2, 8080))
            .conn(TCP, b, web, entry(Established, r(2))),
    );
    let p = from_client(Pkt::tcp(b, web, PSH | ACK, 2001, 6001).payload(b"bye"));
    t.fast(row("B: data", 151, p.build()).forward(INT, nat_to_real(&p, 2, 8080)));
    let p = from_client(Pkt::tcp(b, web, RST | ACK, 2004, 6001));
    t.slow(
        row("B: client RST: the engine's, flow closed", 151, p.build())
            .forward(INT, nat_to_real(&p, 2, 8080))
            .conn(TCP, b, web, entry(Close, r(2))),
    );
    let p = from_real(2, Pkt::tcp(r(2), b, PSH | ACK, 6001, 2004).payload(b"late"));
    t.slow(
        row(
            "B: reply after the RST (flow closed: no longer the fast path's)",
            151,
            p.build(),
        )
        .forward(EXT, nat_to_client(&p, web, to_cl)),
    );

    // A closes.
    let p = from_client(Pkt::tcp(a, web, FIN | ACK, 2512, 7761));
    t.slow(
        row("A: client FIN: the engine's", 160, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080))
            .conn(TCP, a, web, entry(FinWait, r(1))),
    );
    let p = from_real(1, Pkt::tcp(r(1), a, PSH | ACK, 7761, 2513).payload(b"tail"));
    t.slow(
        row(
            "A: reply data after the client's FIN (flow no longer established)",
            160,
            p.build(),
        )
        .forward(EXT, nat_to_client(&p, web, to_cl)),
    );
    let p = from_real(1, Pkt::tcp(r(1), a, FIN | ACK, 7765, 2513));
    t.slow(
        row("A: real FIN", 160, p.build())
            .forward(EXT, nat_to_client(&p, web, to_cl))
            .conn(TCP, a, web, entry(TimeWait, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 2513, 7766));
    t.slow(
        row("A: the last ACK", 160, p.build())
            .forward(INT, nat_to_real(&p, 1, 8080))
            .conn(TCP, a, web, entry(TimeWait, r(1))),
    );

    let fast = t.fast;
    let mut failures = run_table(&mut lab, "fastpath-nat", t.rows);
    expect_counts(
        &mut failures,
        "fastpath-nat",
        &lab,
        Counts {
            rx: 68,
            passed: 0,
            forwarded_in: 35,
            forwarded_out: 17,
            icmp_forwarded: 0,
            emitted: 0,
            icmp_sent: 0,
            icmp_limited: 0,
            icmp_unroutable: 0,
            new_conns: 7,
            drops: vec![
                (DropReason::BadIpChecksum, 3),
                (DropReason::Fragment, 5),
                (DropReason::TtlExceeded, 3),
                (DropReason::NoNeighbour, 2),
                (DropReason::TooBig, 3),
            ],
        },
    );
    expect_conns(
        &mut failures,
        "fastpath-nat",
        &lab,
        [
            ((a, web), (TimeWait, r(1))),
            ((b, web), (Close, r(2))),
            ((c, web), (Close, r(1))),
            ((i, web), (Established, r(3))),
            ((n, web), (Established, r(2))),
            ((u0, dns), (Udp, ur(1))),
            ((u1, dns), (Udp, ur(2))),
        ]
        .into_iter()
        .collect(),
    );
    expect_misses(
        &mut failures,
        "fastpath-nat",
        &lab,
        &[(EXT, NOMAC_CLIENT), (EXT, NOMAC_CLIENT)],
    );
    finish(&lab, "fastpath_nat_table", xdp, fast, failures);
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
    use Mode::Dr;
    use SchedulerKind::Rr;
    let reals: Vec<_> = (1..=3).map(|i| (dr_real(i), 80, 1)).collect();
    let mut lab = Lab::new(vec![
        service("web-dr", 80, TCP, Dr, Rr, &reals),
        service("dns-dr", 53, UDP, Dr, Rr, &[(dr_real(1), 53, 1)]),
        service("nomac-dr", 81, TCP, Dr, Rr, &[(NOMAC_DR_REAL, 81, 1)]),
    ]);
    if xdp && !lab.use_xdp("fastpath_dr_table") {
        return;
    }
    let web = sa(VIP, 80);
    let dns = sa(VIP, 53);
    let r = |i| sa(dr_real(i), 80);
    // DR: only the MACs and the TTL change; in and out of ext (XDP_TX).
    let to_real = |p: &Pkt, i: u8| {
        let ttl = p.ttl - 1;
        p.clone().macs(EXT_MAC, dr_real_mac(i)).ttl(ttl).build()
    };
    let mut t = Rows::default();

    let a = sa(CLIENT, 41100);
    let p = from_client(Pkt::tcp(a, web, SYN, 100, 0));
    t.slow(
        row("A: SYN → real 1", 200, p.build())
            .forward(EXT, to_real(&p, 1))
            .conn(TCP, a, web, entry(SynRecv, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 101, 5001));
    t.slow(
        row("A: handshake ACK", 200, p.build())
            .forward(EXT, to_real(&p, 1))
            .conn(TCP, a, web, entry(Established, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 101, 5001).payload(b"GET / HTTP/1.1\r\n"));
    t.fast(row("A: data, segment 1", 201, p.build()).forward(EXT, to_real(&p, 1)));
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 117, 5001).payload(&counting(700)));
    t.fast(row("A: data, segment 2", 201, p.build()).forward(EXT, to_real(&p, 1)));
    let p = from_client(Pkt::tcp(a, web, ACK, 817, 6001));
    t.fast(row("A: pure ACK", 201, p.build()).forward(EXT, to_real(&p, 1)));
    let p = from_client(Pkt::tcp(a, web, ACK, 817, 7001));
    t.fast(
        row(
            "A: pure ACK with Ethernet padding (kept)",
            201,
            padded(p.build(), 60),
        )
        .forward(EXT, padded(to_real(&p, 1), 60)),
    );
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 817, 7001)
            .tcp_options(&timestamps(1, 2))
            .payload(b"ts")
            .tos(0x2e),
    );
    t.fast(row("A: data with timestamps and a DSCP", 202, p.build()).forward(EXT, to_real(&p, 1)));
    let p = from_client(Pkt::tcp(a, web, ACK, 819, 7001).ttl(2));
    t.fast(row("A: TTL 2 → TTL 1", 202, p.build()).forward(EXT, to_real(&p, 1)));
    let p = from_client(Pkt::tcp(a, web, ACK, 819, 7001).payload(&counting(1460)));
    t.fast(row("A: 1500 bytes: fits exactly", 202, p.build()).forward(EXT, to_real(&p, 1)));
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 2279, 7001)
            .payload(b"bad")
            .csum(Csum::Wrong),
    );
    t.fast(
        row("A: wrong TCP checksum: passed on untouched", 202, p.build())
            .forward(EXT, to_real(&p, 1))
            .l4_invalid(),
    );

    let data = || Pkt::tcp(a, web, PSH | ACK, 2282, 7001).payload(b"data");
    t.slow(
        row(
            "A: wrong IPv4 header checksum",
            203,
            bad_ip_csum(from_client(data()).build()),
        )
        .drop(DropReason::BadIpChecksum),
    );
    t.slow(row("A: TTL 1", 203, from_client(data().ttl(1)).build()).drop(DropReason::TtlExceeded));
    let p = from_client(data().options(&ROUTER_ALERT));
    t.slow(
        row("A: IP options → the engine forwards them", 203, p.build())
            .forward(EXT, to_real(&p, 1)),
    );
    t.slow(
        row(
            "A: first fragment",
            203,
            from_client(data().more_frags()).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "A: later fragment that looks like the flow's TCP header",
            203,
            from_client(data().frag_offset(2960)).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "A: 1501 bytes, egress MTU 1500",
            203,
            from_client(data().payload(&counting(1461))).build(),
        )
        .drop(DropReason::TooBig),
    );
    let p = from_client(Pkt::tcp(a, web, SYN, 100, 0));
    t.slow(
        row("A: the SYN again: the engine's", 203, p.build())
            .forward(EXT, to_real(&p, 1))
            .conn(TCP, a, web, entry(Established, r(1))),
    );

    // U: DR UDP.
    let u = sa(CLIENT, 51100);
    let ru = sa(dr_real(1), 53);
    let p = from_client(Pkt::udp(u, dns, b"query"));
    t.slow(
        row("U: first datagram → real 1", 210, p.build())
            .forward(EXT, to_real(&p, 1))
            .conn(UDP, u, dns, entry(Udp, ru)),
    );
    let p = from_client(Pkt::udp(u, dns, b"query, no checksum").csum(Csum::None));
    t.fast(
        row("U: datagram without checksum: stays 0", 210, p.build()).forward(EXT, to_real(&p, 1)),
    );
    let p = from_client(Pkt::udp(u, dns, &counting(400)));
    t.fast(row("U: datagram with checksum", 210, p.build()).forward(EXT, to_real(&p, 1)));
    t.slow(
        row(
            "U: TTL 1",
            210,
            from_client(Pkt::udp(u, dns, b"q").ttl(1)).build(),
        )
        .drop(DropReason::TtlExceeded),
    );
    t.slow(
        row(
            "U: 1501 bytes",
            210,
            from_client(Pkt::udp(u, dns, &counting(1473))).build(),
        )
        .drop(DropReason::TooBig),
    );

    // M: a real server whose MAC nobody knows; the flow is made (and established by the
    // client's ACK) before the misses.
    let m = sa(CLIENT, 41101);
    let rm = sa(NOMAC_DR_REAL, 81);
    let vm = sa(VIP, 81);
    t.slow(
        row(
            "M: SYN → a real without a known MAC",
            220,
            from_client(Pkt::tcp(m, vm, SYN, 1, 0)).build(),
        )
        .drop(DropReason::NoNeighbour)
        .conn(TCP, m, vm, entry(SynRecv, rm)),
    );
    t.slow(
        row(
            "M: ACK",
            220,
            from_client(Pkt::tcp(m, vm, ACK, 2, 2)).build(),
        )
        .drop(DropReason::NoNeighbour)
        .conn(TCP, m, vm, entry(Established, rm)),
    );
    t.slow(
        row(
            "M: data of the established flow: unresolved next hop",
            221,
            from_client(Pkt::tcp(m, vm, PSH | ACK, 2, 2).payload(b"x")).build(),
        )
        .drop(DropReason::NoNeighbour),
    );

    // B: the client resets.
    let b = sa(CLIENT, 41102);
    let p = from_client(Pkt::tcp(b, web, SYN, 10, 0));
    t.slow(
        row("B: SYN → real 2", 230, p.build())
            .forward(EXT, to_real(&p, 2))
            .conn(TCP, b, web, entry(SynRecv, r(2))),
    );
    let p = from_client(Pkt::tcp(b, web, ACK, 11, 1));
    t.slow(
        row("B: ACK", 230, p.build())
            .forward(EXT, to_real(&p, 2))
            .conn(TCP, b, web, entry(Established, r(2))),
    );
    let p = from_client(Pkt::tcp(b, web, PSH | ACK, 11, 1).payload(b"bye"));
    t.fast(row("B: data", 231, p.build()).forward(EXT, to_real(&p, 2)));
    let p = from_client(Pkt::tcp(b, web, RST, 14, 0));
    t.slow(
        row("B: RST: the engine's", 231, p.build())
            .forward(EXT, to_real(&p, 2))
            .conn(TCP, b, web, entry(Close, r(2))),
    );
    let p = from_client(Pkt::tcp(b, web, ACK, 14, 1));
    t.slow(
        row("B: a segment after the RST: the engine's", 231, p.build())
            .forward(EXT, to_real(&p, 2)),
    );

    // A closes.
    let p = from_client(Pkt::tcp(a, web, FIN | ACK, 2282, 7001));
    t.slow(
        row("A: FIN: the engine's", 240, p.build())
            .forward(EXT, to_real(&p, 1))
            .conn(TCP, a, web, entry(FinWait, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 2283, 7002));
    t.slow(
        row(
            "A: ACK after the FIN (flow no longer established)",
            240,
            p.build(),
        )
        .forward(EXT, to_real(&p, 1))
        .conn(TCP, a, web, entry(FinWait, r(1))),
    );

    let fast = t.fast;
    let mut failures = run_table(&mut lab, "fastpath-dr", t.rows);
    expect_counts(
        &mut failures,
        "fastpath-dr",
        &lab,
        Counts {
            rx: 32,
            passed: 0,
            forwarded_in: 22,
            forwarded_out: 0,
            icmp_forwarded: 0,
            emitted: 0,
            icmp_sent: 0,
            icmp_limited: 0,
            icmp_unroutable: 0,
            new_conns: 4,
            drops: vec![
                (DropReason::BadIpChecksum, 1),
                (DropReason::Fragment, 2),
                (DropReason::TtlExceeded, 2),
                (DropReason::NoNeighbour, 3),
                (DropReason::TooBig, 2),
            ],
        },
    );
    expect_conns(
        &mut failures,
        "fastpath-dr",
        &lab,
        [
            ((a, web), (FinWait, r(1))),
            ((b, web), (Close, r(2))),
            ((m, vm), (Established, rm)),
            ((u, dns), (Udp, ru)),
        ]
        .into_iter()
        .collect(),
    );
    expect_misses(
        &mut failures,
        "fastpath-dr",
        &lab,
        &[(EXT, NOMAC_DR_REAL); 3],
    );
    finish(&lab, "fastpath_dr_table", xdp, fast, failures);
}

// ---- TUN ------------------------------------------------------------------------------------

/// `p` as the director tunnels it to NAT-lab real `i` on int: the inner packet with TTL − 1
/// in an IPIP header from int's address (outer identification `ident`).
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

/// The ICMP fragmentation-needed the director sends the client about `p`: from the VIP,
/// next-hop MTU `mtu`, quoting `p`'s header and 8 bytes.
fn frag_needed_to_client(p: &Pkt, mtu: u16, ident: u16) -> Vec<u8> {
    let mut rest = [0u8; 4];
    rest[2..].copy_from_slice(&mtu.to_be_bytes());
    Pkt::icmp_error(VIP, CLIENT, 3, 4, rest, p, Some(28))
        .macs(EXT_MAC, CLIENT_MAC)
        .ident(ident)
        .may_fragment()
        .build()
}

pub fn tun_table() {
    tun_table_run(false)
}

/// [`tun_table`] with every row also run through the XDP program.
pub fn tun_table_xdp() {
    tun_table_run(true)
}

fn tun_table_run(xdp: bool) {
    use Mode::Tun;
    use SchedulerKind::Rr;
    let reals: Vec<_> = (1..=3).map(|i| (nat_real(i), 80, 1)).collect();
    let mut lab = Lab::new(vec![
        service("web-tun", 80, TCP, Tun, Rr, &reals),
        service("dns-tun", 53, UDP, Tun, Rr, &[(nat_real(1), 53, 1)]),
        service("near-tun", 81, TCP, Tun, Rr, &[(dr_real(1), 81, 1)]),
        service("nomac-tun", 83, TCP, Tun, Rr, &[(UNRESOLVED_REAL, 83, 1)]),
    ]);
    lab.fib = tun_fib();
    if xdp && !lab.use_xdp("fastpath_tun_table") {
        return;
    }
    let web = sa(VIP, 80);
    let dns = sa(VIP, 53);
    let r = |i| sa(nat_real(i), 80);
    let mut t = Rows::default();
    // Outer identifications come from the worker's counter: 0, 1, 2... (the program's
    // counter is set to the engine's before each row).
    let mut id = 0u16..;
    let mut next = || id.next().expect("enough identifications");

    let a = sa(CLIENT, 42100);
    let p = from_client(Pkt::tcp(a, web, SYN, 1000, 0));
    t.slow(
        row("A: SYN → real 1 in IPIP", 300, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next()))
            .conn(TCP, a, web, entry(SynRecv, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1001, 5001));
    t.slow(
        row("A: handshake ACK", 300, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next()))
            .conn(TCP, a, web, entry(Established, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1001, 5001).payload(b"GET / HTTP/1.1\r\n"));
    t.fast(
        row("A: data, segment 1", 301, p.build()).forward_insert(INT, tun_to_real(&p, 1, next())),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1017, 5001).payload(&counting(900)));
    t.fast(
        row("A: data, segment 2", 301, p.build()).forward_insert(INT, tun_to_real(&p, 1, next())),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1917, 6001));
    t.fast(row("A: pure ACK", 301, p.build()).forward_insert(INT, tun_to_real(&p, 1, next())));
    let p = from_client(Pkt::tcp(a, web, ACK, 1917, 7001));
    let ident = next();
    t.fast(
        row(
            "A: pure ACK with Ethernet padding (kept after the inner packet)",
            301,
            padded(p.build(), 60),
        )
        .forward_insert(INT, padded(tun_to_real(&p, 1, ident), 80)),
    );
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 1917, 7001)
            .payload(b"ef")
            .tos(0xb9),
    );
    t.fast(
        row("A: DSCP EF + ECT(1): TOS copied outside", 302, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next())),
    );
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 1919, 7001)
            .payload(b"df clear")
            .may_fragment(),
    );
    t.fast(
        row("A: DF clear: outer DF clear", 302, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next())),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1927, 7001).ttl(2));
    t.fast(
        row("A: TTL 2 → inner and outer TTL 1", 302, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next())),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1927, 7001).payload(&counting(1440)));
    t.fast(
        row(
            "A: 1480 bytes: 1500 with the tunnel, fits exactly",
            302,
            p.build(),
        )
        .forward_insert(INT, tun_to_real(&p, 1, next())),
    );
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 3367, 7001)
            .payload(b"bad")
            .csum(Csum::Wrong),
    );
    t.fast(
        row("A: wrong TCP checksum: passed on untouched", 302, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next()))
            .l4_invalid(),
    );

    let data = || Pkt::tcp(a, web, PSH | ACK, 3370, 7001).payload(b"data");
    t.slow(
        row(
            "A: wrong IPv4 header checksum",
            303,
            bad_ip_csum(from_client(data()).build()),
        )
        .drop(DropReason::BadIpChecksum),
    );
    t.slow(row("A: TTL 1", 303, from_client(data().ttl(1)).build()).drop(DropReason::TtlExceeded));
    let p = from_client(data().options(&ROUTER_ALERT));
    t.slow(
        row(
            "A: IP options → the engine tunnels them inside",
            303,
            p.build(),
        )
        .forward_insert(INT, tun_to_real(&p, 1, next())),
    );
    t.slow(
        row(
            "A: first fragment",
            303,
            from_client(data().more_frags()).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "A: later fragment that looks like the flow's TCP header",
            303,
            from_client(data().frag_offset(1480)).build(),
        )
        .drop(DropReason::Fragment),
    );
    let p = from_client(data().payload(&counting(1441)));
    t.slow(
        row(
            "A: 1481 bytes with DF: 1501 with the tunnel → frag-needed, MTU 1480",
            303,
            p.build(),
        )
        .drop(DropReason::FragNeeded)
        .emits(vec![(EXT, frag_needed_to_client(&p, 1480, next()))]),
    );
    let p = from_client(data().payload(&counting(1441)).may_fragment());
    let frags = frames::ipip_fragments(
        (INT_MAC, nat_real_mac(1)),
        INT_ADDR,
        nat_real(1),
        next(),
        &p.clone().ttl(63).ip_bytes(),
        1500,
    );
    t.slow(
        row(
            "A: 1481 bytes without DF → the outer packet in 2 fragments",
            303,
            p.build(),
        )
        .emitted(frags.into_iter().map(|f| (INT, f)).collect()),
    );
    let p = from_client(Pkt::tcp(a, web, SYN, 1000, 0));
    t.slow(
        row("A: the SYN again: the engine's", 303, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next()))
            .conn(TCP, a, web, entry(Established, r(1))),
    );

    // U: TUN UDP.
    let u = sa(CLIENT, 52100);
    let p = from_client(Pkt::udp(u, dns, b"query"));
    t.slow(
        row("U: first datagram → real 1", 310, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next()))
            .conn(UDP, u, dns, entry(Udp, sa(nat_real(1), 53))),
    );
    let p = from_client(Pkt::udp(u, dns, b"no checksum").csum(Csum::None));
    t.fast(
        row("U: datagram without checksum", 310, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next())),
    );
    let p = from_client(Pkt::udp(u, dns, &counting(1452)));
    t.fast(
        row(
            "U: 1480-byte datagram: fits the tunnel exactly",
            310,
            p.build(),
        )
        .forward_insert(INT, tun_to_real(&p, 1, next())),
    );
    let p = from_client(Pkt::udp(u, dns, &counting(1453)));
    t.slow(
        row(
            "U: 1481-byte datagram with DF → frag-needed",
            310,
            p.build(),
        )
        .drop(DropReason::FragNeeded)
        .emits(vec![(EXT, frag_needed_to_client(&p, 1480, next()))]),
    );

    // F: a real server on ext's subnet: in and out of ext (XDP_TX), from ext's address.
    let f = sa(CLIENT, 42101);
    let vf = sa(VIP, 81);
    let rf = sa(dr_real(1), 81);
    let to_near = |p: &Pkt, ident| {
        frames::ipip(
            (EXT_MAC, dr_real_mac(1)),
            EXT_ADDR,
            dr_real(1),
            ident,
            &p.clone().ttl(p.ttl - 1).ip_bytes(),
        )
    };
    let p = from_client(Pkt::tcp(f, vf, SYN, 1, 0));
    t.slow(
        row("F: SYN → the real on ext's subnet", 320, p.build())
            .forward_insert(EXT, to_near(&p, next()))
            .conn(TCP, f, vf, entry(SynRecv, rf)),
    );
    let p = from_client(Pkt::tcp(f, vf, ACK, 2, 2));
    t.slow(
        row("F: ACK", 320, p.build())
            .forward_insert(EXT, to_near(&p, next()))
            .conn(TCP, f, vf, entry(Established, rf)),
    );
    let p = from_client(Pkt::tcp(f, vf, PSH | ACK, 2, 2).payload(b"near"));
    t.fast(
        row("F: data: in and out of ext", 321, p.build()).forward_insert(EXT, to_near(&p, next())),
    );

    // M: a real server whose MAC nobody knows.
    let m = sa(CLIENT, 42102);
    let vm = sa(VIP, 83);
    let rm = sa(UNRESOLVED_REAL, 83);
    t.slow(
        row(
            "M: SYN → a real without a known MAC",
            330,
            from_client(Pkt::tcp(m, vm, SYN, 1, 0)).build(),
        )
        .drop(DropReason::NoNeighbour)
        .conn(TCP, m, vm, entry(SynRecv, rm)),
    );
    t.slow(
        row(
            "M: ACK",
            330,
            from_client(Pkt::tcp(m, vm, ACK, 2, 2)).build(),
        )
        .drop(DropReason::NoNeighbour)
        .conn(TCP, m, vm, entry(Established, rm)),
    );
    t.slow(
        row(
            "M: data of the established flow: unresolved next hop",
            331,
            from_client(Pkt::tcp(m, vm, PSH | ACK, 2, 2).payload(b"x")).build(),
        )
        .drop(DropReason::NoNeighbour),
    );

    // B: the client resets.
    let b = sa(CLIENT, 42103);
    let p = from_client(Pkt::tcp(b, web, SYN, 10, 0));
    t.slow(
        row("B: SYN → real 2", 340, p.build())
            .forward_insert(INT, tun_to_real(&p, 2, next()))
            .conn(TCP, b, web, entry(SynRecv, r(2))),
    );
    let p = from_client(Pkt::tcp(b, web, ACK, 11, 1));
    t.slow(
        row("B: ACK", 340, p.build())
            .forward_insert(INT, tun_to_real(&p, 2, next()))
            .conn(TCP, b, web, entry(Established, r(2))),
    );
    let p = from_client(Pkt::tcp(b, web, PSH | ACK, 11, 1).payload(b"bye"));
    t.fast(row("B: data", 341, p.build()).forward_insert(INT, tun_to_real(&p, 2, next())));
    let p = from_client(Pkt::tcp(b, web, RST, 14, 0));
    t.slow(
        row("B: RST: the engine's", 341, p.build())
            .forward_insert(INT, tun_to_real(&p, 2, next()))
            .conn(TCP, b, web, entry(Close, r(2))),
    );

    // A closes.
    let p = from_client(Pkt::tcp(a, web, FIN | ACK, 3370, 7001));
    t.slow(
        row("A: FIN: the engine's", 350, p.build())
            .forward_insert(INT, tun_to_real(&p, 1, next()))
            .conn(TCP, a, web, entry(FinWait, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 3371, 7002));
    t.slow(
        row(
            "A: ACK after the FIN (flow no longer established)",
            350,
            p.build(),
        )
        .forward_insert(INT, tun_to_real(&p, 1, next())),
    );

    let fast = t.fast;
    let mut failures = run_table(&mut lab, "fastpath-tun", t.rows);
    expect_counts(
        &mut failures,
        "fastpath-tun",
        &lab,
        Counts {
            rx: 35,
            passed: 0,
            forwarded_in: 25,
            forwarded_out: 0,
            icmp_forwarded: 0,
            emitted: 1,
            icmp_sent: 2,
            icmp_limited: 0,
            icmp_unroutable: 0,
            new_conns: 5,
            drops: vec![
                (DropReason::BadIpChecksum, 1),
                (DropReason::Fragment, 2),
                (DropReason::TtlExceeded, 1),
                (DropReason::NoNeighbour, 3),
                (DropReason::FragNeeded, 2),
            ],
        },
    );
    expect_conns(
        &mut failures,
        "fastpath-tun",
        &lab,
        [
            ((a, web), (FinWait, r(1))),
            ((b, web), (Close, r(2))),
            ((f, vf), (Established, rf)),
            ((m, vm), (Established, rm)),
            ((u, dns), (Udp, sa(nat_real(1), 53))),
        ]
        .into_iter()
        .collect(),
    );
    expect_misses(
        &mut failures,
        "fastpath-tun",
        &lab,
        &[(INT, UNRESOLVED_REAL); 3],
    );
    finish(&lab, "fastpath_tun_table", xdp, fast, failures);
}

// ---- FULLNAT --------------------------------------------------------------------------------

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

/// A one-shard engine whose FULLNAT local ports are 40000 only, so every local address is
/// known in advance (LIPs take turns by client port: even → LIP1, odd → LIP2).
fn fullnat_lab(services: Vec<VirtualService>) -> Lab {
    let mut lab = Lab::with_capacity(services, 32);
    lab.engine.set_local_ports(LPORT, LPORT);
    lab
}

/// `p` as sent to real `i`: local → real:port, int's MAC to the real's, TTL − 1.
fn fnat_to_real(p: &Pkt, local: SocketAddrV4, i: u8, port: u16) -> Vec<u8> {
    let ttl = p.ttl - 1;
    p.clone()
        .from(local)
        .to(sa(nat_real(i), port))
        .macs(INT_MAC, nat_real_mac(i))
        .ttl(ttl)
        .build()
}

/// A reply `p` as sent to the client: VIP:port → client, ext's MAC to the client's, TTL − 1.
fn fnat_to_client(p: &Pkt, vip: SocketAddrV4, client: SocketAddrV4) -> Vec<u8> {
    let ttl = p.ttl - 1;
    p.clone()
        .from(vip)
        .to(client)
        .macs(EXT_MAC, CLIENT_MAC)
        .ttl(ttl)
        .build()
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
    let mut lab = fullnat_lab(vec![
        fullnat("web", 80, TCP, &reals, &[LIP1, LIP2]),
        fullnat("dns", 53, UDP, &[(nat_real(1), 8053, 1)], &[LIP1]),
    ]);
    if xdp && !lab.use_xdp("fastpath_fullnat_table") {
        return;
    }
    let web = sa(VIP, 80);
    let dns = sa(VIP, 53);
    let r = |i| sa(nat_real(i), 8080);
    let l1 = sa(LIP1, LPORT);
    let mut t = Rows::default();

    // A: client 40000 (even → LIP1), rr → real 1.
    let a = sa(CLIENT, 40000);
    let p = from_client(Pkt::tcp(a, web, SYN, 1000, 0));
    t.slow(
        row("A: SYN → real 1 from LIP1:40000", 400, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080))
            .conn(TCP, a, web, entry(SynRecv, r(1))),
    );
    let p = from_real(1, Pkt::tcp(r(1), l1, SYN | ACK, 5000, 1001));
    t.slow(row("A: SYN-ACK", 400, p.build()).forward(EXT, fnat_to_client(&p, web, a)));
    let p = from_client(Pkt::tcp(a, web, ACK, 1001, 5001));
    t.slow(
        row("A: handshake ACK", 400, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080))
            .conn(TCP, a, web, entry(Established, r(1))),
    );

    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1001, 5001).payload(b"GET / HTTP/1.1\r\n"));
    t.fast(
        row("A: client data, segment 1", 401, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080)),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1017, 5001).payload(b"host: x\r\n\r\n"));
    t.fast(
        row("A: client data, segment 2", 401, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080)),
    );
    let p = from_real(
        1,
        Pkt::tcp(r(1), l1, ACK, 5001, 1028).payload(&counting(1000)),
    );
    t.fast(
        row("A: real data, segment 1 (1000 bytes)", 402, p.build())
            .forward(EXT, fnat_to_client(&p, web, a)),
    );
    let p = from_real(
        1,
        Pkt::tcp(r(1), l1, PSH | ACK, 6001, 1028).payload(&counting(200)),
    );
    t.fast(row("A: real data, segment 2", 402, p.build()).forward(EXT, fnat_to_client(&p, web, a)));
    let p = from_client(Pkt::tcp(a, web, ACK, 1028, 6201));
    t.fast(row("A: client pure ACK", 402, p.build()).forward(INT, fnat_to_real(&p, l1, 1, 8080)));
    let p = from_real(1, Pkt::tcp(r(1), l1, ACK, 6201, 1028));
    t.fast(row("A: real pure ACK", 402, p.build()).forward(EXT, fnat_to_client(&p, web, a)));
    let p = from_client(Pkt::tcp(a, web, ACK, 1028, 6201));
    t.fast(
        row(
            "A: client pure ACK with Ethernet padding (kept)",
            403,
            padded(p.build(), 60),
        )
        .forward(INT, padded(fnat_to_real(&p, l1, 1, 8080), 60)),
    );
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 1028, 6201)
            .tcp_options(&timestamps(5, 6))
            .payload(b"ts"),
    );
    t.fast(
        row("A: client data with timestamps", 403, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080)),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1030, 6201).ttl(2));
    t.fast(row("A: TTL 2 → TTL 1", 403, p.build()).forward(INT, fnat_to_real(&p, l1, 1, 8080)));
    let p = from_real(1, Pkt::tcp(r(1), l1, ACK, 6201, 1030).ttl(2));
    t.fast(
        row("A: reply with TTL 2 → TTL 1", 403, p.build()).forward(EXT, fnat_to_client(&p, web, a)),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1030, 6201).payload(&counting(1460)));
    t.fast(
        row("A: client 1500 bytes: fits exactly", 404, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080)),
    );
    let p = from_real(
        1,
        Pkt::tcp(r(1), l1, ACK, 6201, 2490).payload(&counting(1460)),
    );
    t.fast(
        row("A: real 1500 bytes: fits exactly", 404, p.build())
            .forward(EXT, fnat_to_client(&p, web, a)),
    );
    let p = from_client(
        Pkt::tcp(a, web, PSH | ACK, 2490, 7661)
            .payload(b"bad")
            .csum(Csum::Wrong),
    );
    t.fast(
        row("A: wrong TCP checksum: the error kept", 404, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080))
            .l4_invalid(),
    );
    let p = from_real(
        1,
        Pkt::tcp(r(1), l1, PSH | ACK, 7661, 2493)
            .payload(b"bad too")
            .csum(Csum::Wrong),
    );
    t.fast(
        row("A: reply with a wrong TCP checksum: kept", 404, p.build())
            .forward(EXT, fnat_to_client(&p, web, a))
            .l4_invalid(),
    );

    let data = || Pkt::tcp(a, web, PSH | ACK, 2493, 7668).payload(b"data");
    let reply = || Pkt::tcp(r(1), l1, PSH | ACK, 7668, 2493).payload(b"reply");
    t.slow(
        row(
            "A: wrong IPv4 header checksum",
            405,
            bad_ip_csum(from_client(data()).build()),
        )
        .drop(DropReason::BadIpChecksum),
    );
    t.slow(
        row(
            "A: reply with a wrong IPv4 header checksum",
            405,
            bad_ip_csum(from_real(1, reply()).build()),
        )
        .drop(DropReason::BadIpChecksum),
    );
    t.slow(row("A: TTL 1", 405, from_client(data().ttl(1)).build()).drop(DropReason::TtlExceeded));
    t.slow(
        row(
            "A: reply with TTL 1",
            405,
            from_real(1, reply().ttl(1)).build(),
        )
        .drop(DropReason::TtlExceeded),
    );
    let p = from_client(data().options(&ROUTER_ALERT));
    t.slow(
        row("A: IP options → the engine forwards them", 405, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080)),
    );
    let p = from_real(1, reply().options(&ROUTER_ALERT));
    t.slow(
        row("A: reply with IP options → the engine's", 405, p.build())
            .forward(EXT, fnat_to_client(&p, web, a)),
    );
    t.slow(
        row(
            "A: first fragment",
            405,
            from_client(data().more_frags()).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "A: later fragment that looks like the flow's TCP header",
            405,
            from_client(data().frag_offset(1480)).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "A: first fragment of a reply (to the LIP)",
            405,
            from_real(1, reply().more_frags()).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "A: later fragment of a reply that looks like its TCP header",
            405,
            from_real(1, reply().frag_offset(1480)).build(),
        )
        .drop(DropReason::Fragment),
    );
    t.slow(
        row(
            "A: 1501 bytes",
            405,
            from_client(data().payload(&counting(1461))).build(),
        )
        .drop(DropReason::TooBig),
    );
    t.slow(
        row(
            "A: reply of 1501 bytes",
            405,
            from_real(1, reply().payload(&counting(1461))).build(),
        )
        .drop(DropReason::TooBig),
    );
    let p = from_client(Pkt::tcp(a, web, SYN, 1000, 0));
    t.slow(
        row("A: the SYN again: the engine's", 405, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080))
            .conn(TCP, a, web, entry(Established, r(1))),
    );
    let p = from_real(1, Pkt::tcp(r(1), l1, SYN | ACK, 5000, 1001));
    t.slow(
        row("A: the SYN-ACK again: the engine's", 405, p.build())
            .forward(EXT, fnat_to_client(&p, web, a))
            .conn(TCP, a, web, entry(Established, r(1))),
    );

    // U: UDP both ways, LIP1:40000 → real 1:8053.
    let u = sa(CLIENT, 50000);
    let ru = sa(nat_real(1), 8053);
    let p = from_client(Pkt::udp(u, dns, b"query").csum(Csum::None));
    t.slow(
        row("U: first datagram, no checksum", 410, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8053))
            .conn(UDP, u, dns, entry(Udp, ru)),
    );
    let p = from_client(Pkt::udp(u, dns, b"query again").csum(Csum::None));
    t.fast(
        row("U: datagram without checksum: stays 0", 410, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8053)),
    );
    let p = from_real(1, Pkt::udp(ru, l1, b"answer").csum(Csum::None));
    t.fast(
        row("U: answer without checksum: stays 0", 410, p.build())
            .forward(EXT, fnat_to_client(&p, dns, u)),
    );
    let p = from_real(1, Pkt::udp(ru, l1, b"answer, summed"));
    t.fast(row("U: answer with checksum", 410, p.build()).forward(EXT, fnat_to_client(&p, dns, u)));
    let p = from_client(Pkt::udp(u, dns, b"query, summed"));
    t.fast(
        row("U: datagram with checksum", 411, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8053)),
    );
    let p = from_client(Pkt::udp(u, dns, &payload_summing_to_ffff(l1, ru)));
    t.fast(
        row(
            "U: checksum that becomes 0 after FULLNAT → 0xffff",
            411,
            p.build(),
        )
        .forward(INT, fnat_to_real(&p, l1, 1, 8053)),
    );
    let p = from_real(1, Pkt::udp(ru, l1, &payload_summing_to_ffff(dns, u)));
    t.fast(
        row(
            "U: answer whose checksum becomes 0 after FULLNAT → 0xffff",
            411,
            p.build(),
        )
        .forward(EXT, fnat_to_client(&p, dns, u)),
    );
    let p = from_client(Pkt::udp(u, dns, b"bad").csum(Csum::Wrong));
    t.fast(
        row("U: wrong UDP checksum: the error kept", 411, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8053))
            .l4_invalid(),
    );
    t.slow(
        row(
            "U: TTL 1",
            411,
            from_client(Pkt::udp(u, dns, b"q").ttl(1)).build(),
        )
        .drop(DropReason::TtlExceeded),
    );
    let p = from_real(1, Pkt::udp(ru, l1, b"a").options(&ROUTER_ALERT));
    t.slow(
        row("U: answer with IP options → the engine's", 411, p.build())
            .forward(EXT, fnat_to_client(&p, dns, u)),
    );

    // N: a client whose MAC nobody knows (even port → LIP1), rr → real 2.
    let n = sa(NOMAC_CLIENT, 40002);
    let p = from_client(Pkt::tcp(n, web, SYN, 100, 0));
    t.slow(
        row("N: SYN → real 2", 420, p.build())
            .forward(INT, fnat_to_real(&p, l1, 2, 8080))
            .conn(TCP, n, web, entry(SynRecv, r(2))),
    );
    let p = from_real(2, Pkt::tcp(r(2), l1, SYN | ACK, 900, 101));
    t.slow(row("N: SYN-ACK: no neighbour", 420, p.build()).drop(DropReason::NoNeighbour));
    let p = from_client(Pkt::tcp(n, web, ACK, 101, 901));
    t.slow(
        row("N: ACK", 421, p.build())
            .forward(INT, fnat_to_real(&p, l1, 2, 8080))
            .conn(TCP, n, web, entry(Established, r(2))),
    );
    let p = from_client(Pkt::tcp(n, web, PSH | ACK, 101, 901).payload(b"hello"));
    t.fast(
        row("N: client data (toward the real: resolved)", 421, p.build())
            .forward(INT, fnat_to_real(&p, l1, 2, 8080)),
    );
    let p = from_real(2, Pkt::tcp(r(2), l1, PSH | ACK, 901, 106).payload(b"hi"));
    t.slow(
        row(
            "N: reply: unresolved next hop → the engine asks, then drops",
            421,
            p.build(),
        )
        .drop(DropReason::NoNeighbour),
    );

    // B: rr → real 3 from LIP1; the real server resets.
    let b = sa(CLIENT, 40004);
    let p = from_client(Pkt::tcp(b, web, SYN, 2000, 0));
    t.slow(
        row("B: SYN → real 3", 430, p.build())
            .forward(INT, fnat_to_real(&p, l1, 3, 8080))
            .conn(TCP, b, web, entry(SynRecv, r(3))),
    );
    let p = from_client(Pkt::tcp(b, web, ACK, 2001, 3001));
    t.slow(
        row("B: ACK", 430, p.build())
            .forward(INT, fnat_to_real(&p, l1, 3, 8080))
            .conn(TCP, b, web, entry(Established, r(3))),
    );
    let p = from_real(
        3,
        Pkt::tcp(r(3), l1, PSH | ACK, 3001, 2001).payload(b"banner"),
    );
    t.fast(row("B: real data", 431, p.build()).forward(EXT, fnat_to_client(&p, web, b)));
    let p = from_real(3, Pkt::tcp(r(3), l1, RST | ACK, 3007, 2001));
    t.slow(
        row("B: the real server resets: the engine's", 431, p.build())
            .forward(EXT, fnat_to_client(&p, web, b))
            .conn(TCP, b, web, entry(Close, r(3))),
    );
    let p = from_client(Pkt::tcp(b, web, PSH | ACK, 2001, 3007).payload(b"late"));
    t.slow(
        row("B: client data after the RST: the engine's", 431, p.build())
            .forward(INT, fnat_to_real(&p, l1, 3, 8080)),
    );

    // A: the real server closes first.
    let p = from_real(1, Pkt::tcp(r(1), l1, FIN | ACK, 7668, 2493));
    t.slow(
        row("A: real FIN: the engine's", 440, p.build())
            .forward(EXT, fnat_to_client(&p, web, a))
            .conn(TCP, a, web, entry(CloseWait, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 2493, 7669).payload(b"last words"));
    t.slow(
        row(
            "A: client data after the real's FIN (flow no longer established)",
            440,
            p.build(),
        )
        .forward(INT, fnat_to_real(&p, l1, 1, 8080)),
    );
    let p = from_client(Pkt::tcp(a, web, FIN | ACK, 2503, 7669));
    t.slow(
        row("A: client FIN", 440, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080))
            .conn(TCP, a, web, entry(TimeWait, r(1))),
    );

    let fast = t.fast;
    let mut failures = run_table(&mut lab, "fastpath-fullnat", t.rows);
    expect_counts(
        &mut failures,
        "fastpath-fullnat",
        &lab,
        Counts {
            rx: 54,
            passed: 0,
            forwarded_in: 25,
            forwarded_out: 16,
            icmp_forwarded: 0,
            emitted: 0,
            icmp_sent: 0,
            icmp_limited: 0,
            icmp_unroutable: 0,
            new_conns: 4,
            drops: vec![
                (DropReason::BadIpChecksum, 2),
                (DropReason::Fragment, 4),
                (DropReason::TtlExceeded, 3),
                (DropReason::NoNeighbour, 2),
                (DropReason::TooBig, 2),
            ],
        },
    );
    expect_conns(
        &mut failures,
        "fastpath-fullnat",
        &lab,
        [
            ((a, web), (TimeWait, r(1))),
            ((b, web), (Close, r(3))),
            ((n, web), (Established, r(2))),
            ((u, dns), (Udp, ru)),
        ]
        .into_iter()
        .collect(),
    );
    expect_misses(
        &mut failures,
        "fastpath-fullnat",
        &lab,
        &[(EXT, NOMAC_CLIENT), (EXT, NOMAC_CLIENT)],
    );
    finish(&lab, "fastpath_fullnat_table", xdp, fast, failures);
}

// ---- FULLNAT + PROXY protocol v2 ------------------------------------------------------------

pub fn fullnat_proxy_table() {
    fullnat_proxy_table_run(false)
}

/// [`fullnat_proxy_table`] with every row also run through the XDP program.
pub fn fullnat_proxy_table_xdp() {
    fullnat_proxy_table_run(true)
}

fn fullnat_proxy_table_run(xdp: bool) {
    let reals: Vec<_> = (1..=3).map(|i| (nat_real(i), 8080, 1)).collect();
    let mut s = fullnat("pp", 80, TCP, &reals, &[LIP1]);
    s.proxy_protocol = Some(forwarder::model::ProxyProtocol::V2);
    let mut lab = fullnat_lab(vec![s]);
    if xdp && !lab.use_xdp("fastpath_fullnat_proxy_table") {
        return;
    }
    let web = sa(VIP, 80);
    let r = |i| sa(nat_real(i), 8080);
    let l1 = sa(LIP1, LPORT);
    let mut t = Rows::default();

    // A: ISN 999, so the stream starts at 1000; rr → real 1. The real server's numbers for
    // the client's bytes are 28 higher once the header is in.
    let a = sa(CLIENT, 40000);
    let with_header =
        |data: &[u8]| [&forwarder::engine::proxy_header_v2(a, web)[..], data].concat();
    let to_r1 = |p: Pkt| fnat_to_real(&from_client(p), l1, 1, 8080);
    let to_a = |p: Pkt| fnat_to_client(&from_real(1, p), web, a);
    let p = from_client(Pkt::tcp(a, web, SYN, 999, 0).tcp_options(&[2, 4, 0x05, 0xb4]));
    t.slow(
        row("A: SYN, ISN 999", 500, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080))
            .conn(TCP, a, web, entry(SynRecv, r(1))),
    );
    let p = from_real(
        1,
        Pkt::tcp(r(1), l1, SYN | ACK, 5000, 1000).tcp_options(&[2, 4, 0x05, 0xb4]),
    );
    t.slow(row("A: SYN-ACK: MSS 1460 → 1432", 500, p.build()).forward(
        EXT,
        to_a(Pkt::tcp(r(1), l1, SYN | ACK, 5000, 1000).tcp_options(&[2, 4, 0x05, 0x98])),
    ));
    let p = from_client(Pkt::tcp(a, web, ACK, 1000, 5001));
    t.slow(
        row("A: handshake ACK", 500, p.build())
            .forward(INT, fnat_to_real(&p, l1, 1, 8080))
            .conn(TCP, a, web, entry(Established, r(1))),
    );
    let p = from_real(1, Pkt::tcp(r(1), l1, ACK, 5001, 1000));
    t.fast(
        row(
            "A: the real's pure ACK of ISN + 1 before any data: unchanged",
            501,
            p.build(),
        )
        .forward(EXT, fnat_to_client(&p, web, a)),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1000, 5001));
    t.fast(
        row(
            "A: the client's pure ACK at ISN + 1 (no data): unchanged",
            501,
            p.build(),
        )
        .forward(INT, fnat_to_real(&p, l1, 1, 8080)),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1000, 5001).payload(&counting(1460)));
    t.slow(
        row(
            "A: first data of 1500 bytes: 1528 with the header → too big",
            501,
            p.build(),
        )
        .drop(DropReason::TooBig),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1000, 5001).payload(b"GET /"));
    t.slow(
        row(
            "A: first data at ISN + 1: the engine inserts the header",
            502,
            p.build(),
        )
        .forward_insert(
            INT,
            to_r1(Pkt::tcp(a, web, PSH | ACK, 1000, 5001).payload(&with_header(b"GET /"))),
        ),
    );
    let p = from_real(1, Pkt::tcp(r(1), l1, ACK, 5001, 1000 + 28 + 5));
    t.fast(
        row("A: the real's ACK of header + 5 → 1005", 502, p.build())
            .forward(EXT, to_a(Pkt::tcp(r(1), l1, ACK, 5001, 1005))),
    );
    let p = from_real(1, Pkt::tcp(r(1), l1, ACK, 5001, 1010));
    t.fast(
        row("A: an ACK inside the header → ISN + 1", 502, p.build())
            .forward(EXT, to_a(Pkt::tcp(r(1), l1, ACK, 5001, 1000))),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1000, 5001).payload(b"GET /"));
    t.slow(
        row(
            "A: a retransmission of the first data: the header again",
            503,
            p.build(),
        )
        .forward_insert(
            INT,
            to_r1(Pkt::tcp(a, web, PSH | ACK, 1000, 5001).payload(&with_header(b"GET /"))),
        ),
    );
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1005, 5001).payload(b"more"));
    t.fast(row("A: later data: sequence + 28", 503, p.build()).forward(
        INT,
        to_r1(Pkt::tcp(a, web, PSH | ACK, 1033, 5001).payload(b"more")),
    ));
    let p = from_client(Pkt::tcp(a, web, PSH | ACK, 1009, 5001).payload(b"and more"));
    t.fast(row("A: later data, next segment", 503, p.build()).forward(
        INT,
        to_r1(Pkt::tcp(a, web, PSH | ACK, 1037, 5001).payload(b"and more")),
    ));
    let p = from_client(Pkt::tcp(a, web, ACK, 999, 5001).payload(&[0]));
    t.fast(
        row(
            "A: a keepalive probe at the ISN (before the stream): unchanged",
            504,
            p.build(),
        )
        .forward(INT, fnat_to_real(&p, l1, 1, 8080)),
    );
    let p = from_client(Pkt::tcp(a, web, ACK, 1017, 5001).payload(&counting(1460)));
    t.fast(
        row(
            "A: later data of 1500 bytes: shifted, fits (no header in it)",
            504,
            p.build(),
        )
        .forward(
            INT,
            to_r1(Pkt::tcp(a, web, ACK, 1045, 5001).payload(&counting(1460))),
        ),
    );
    // The client has sent 1000..2477; the real server acknowledges 2505.
    let p = from_real(
        1,
        Pkt::tcp(r(1), l1, PSH | ACK, 5001, 2505).payload(b"HTTP/1.1 200 OK\r\n\r\n"),
    );
    t.fast(
        row("A: real data acking it all → 2477", 505, p.build()).forward(
            EXT,
            to_a(Pkt::tcp(r(1), l1, PSH | ACK, 5001, 2477).payload(b"HTTP/1.1 200 OK\r\n\r\n")),
        ),
    );
    let linux_sack = |edges: &[(u32, u32)]| {
        let mut o = timestamps(0x1111, 0x2222);
        o.extend_from_slice(&[1, 1]);
        o.extend(sack_option(edges));
        o
    };
    let shifted = [(2505 + 100, 2505 + 200), (2505 + 300, 2505 + 400)];
    let unshifted = [(2477 + 100, 2477 + 200), (2477 + 300, 2477 + 400)];
    let p = from_real(
        1,
        Pkt::tcp(r(1), l1, ACK, 5021, 2505).tcp_options(&linux_sack(&shifted)),
    );
    t.fast(
        row(
            "A: timestamps and 2 SACK blocks (Linux layout, even offsets): edges − 28",
            505,
            p.build(),
        )
        .forward(
            EXT,
            to_a(Pkt::tcp(r(1), l1, ACK, 5021, 2477).tcp_options(&linux_sack(&unshifted))),
        ),
    );
    let four = |base: u32| -> Vec<(u32, u32)> {
        (0..4)
            .map(|k| (base + 100 * k, base + 100 * k + 50))
            .collect()
    };
    let opts = |base| [&[1u8, 1][..], &sack_option(&four(base))].concat();
    let p = from_real(
        1,
        Pkt::tcp(r(1), l1, ACK, 5021, 2505).tcp_options(&opts(2605)),
    );
    t.fast(
        row("A: 4 SACK blocks: every edge − 28", 505, p.build()).forward(
            EXT,
            to_a(Pkt::tcp(r(1), l1, ACK, 5021, 2477).tcp_options(&opts(2577))),
        ),
    );
    let odd = |l: u32, r: u32| [&[1u8][..], &sack_option(&[(l, r)]), &[0]].concat();
    let p = from_real(
        1,
        Pkt::tcp(r(1), l1, ACK, 5021, 2505).tcp_options(&odd(2605, 2705)),
    );
    t.slow(
        row(
            "A: a SACK block at an odd offset (one NOP before it): the engine's",
            505,
            p.build(),
        )
        .forward(
            EXT,
            to_a(Pkt::tcp(r(1), l1, ACK, 5021, 2477).tcp_options(&odd(2577, 2677))),
        ),
    );
    let two = |base: u32| {
        let mut o = vec![1, 1];
        o.extend(sack_option(&[(base, base + 10)]));
        o.extend_from_slice(&[1, 1]);
        o.extend(sack_option(&[(base + 100, base + 110)]));
        o
    };
    let p = from_real(
        1,
        Pkt::tcp(r(1), l1, ACK, 5021, 2505).tcp_options(&two(2605)),
    );
    t.slow(
        row(
            "A: two SACK options (even offsets): the engine's, which shifts both",
            505,
            p.build(),
        )
        .forward(
            EXT,
            to_a(Pkt::tcp(r(1), l1, ACK, 5021, 2477).tcp_options(&two(2577))),
        ),
    );
    let data = || Pkt::tcp(a, web, PSH | ACK, 2477, 5021).payload(b"next");
    let p = from_client(data().options(&ROUTER_ALERT));
    t.slow(
        row(
            "A: later data with IP options → the engine shifts it",
            506,
            p.build(),
        )
        .forward(
            INT,
            to_r1(
                Pkt::tcp(a, web, PSH | ACK, 2505, 5021)
                    .payload(b"next")
                    .options(&ROUTER_ALERT),
            ),
        ),
    );
    t.slow(
        row(
            "A: later data with TTL 1",
            506,
            from_client(data().ttl(1)).build(),
        )
        .drop(DropReason::TtlExceeded),
    );
    t.slow(
        row(
            "A: a reply with a wrong IPv4 header checksum",
            506,
            bad_ip_csum(from_real(1, Pkt::tcp(r(1), l1, ACK, 5021, 2505)).build()),
        )
        .drop(DropReason::BadIpChecksum),
    );
    let p = from_real(1, Pkt::tcp(r(1), l1, FIN | ACK, 5021, 2505));
    t.slow(
        row("A: real FIN → 2477: the engine's", 507, p.build())
            .forward(EXT, to_a(Pkt::tcp(r(1), l1, FIN | ACK, 5021, 2477)))
            .conn(TCP, a, web, entry(CloseWait, r(1))),
    );
    let p = from_client(Pkt::tcp(a, web, FIN | ACK, 2477, 5022));
    t.slow(
        row("A: client FIN → + 28", 507, p.build())
            .forward(INT, to_r1(Pkt::tcp(a, web, FIN | ACK, 2505, 5022)))
            .conn(TCP, a, web, entry(TimeWait, r(1))),
    );

    // B: an ISN 15 below the wrap (rr → real 2): the shift wraps around 2^32.
    let b = sa(CLIENT, 40002);
    let isn: u32 = 0xffff_fff0;
    let first = isn.wrapping_add(1);
    let at = |n: u32| first.wrapping_add(n);
    let hb = forwarder::engine::proxy_header_v2(b, web);
    let to_r2 = |p: Pkt| fnat_to_real(&from_client(p), l1, 2, 8080);
    let to_b = |p: Pkt| fnat_to_client(&from_real(2, p), web, b);
    let p = from_client(Pkt::tcp(b, web, SYN, isn, 0));
    t.slow(
        row("B: SYN, ISN 0xfffffff0 → real 2", 510, p.build())
            .forward(INT, fnat_to_real(&p, l1, 2, 8080))
            .conn(TCP, b, web, entry(SynRecv, r(2))),
    );
    let p = from_real(2, Pkt::tcp(r(2), l1, SYN | ACK, 9000, first));
    t.slow(row("B: SYN-ACK", 510, p.build()).forward(EXT, fnat_to_client(&p, web, b)));
    let p = from_client(Pkt::tcp(b, web, ACK, first, 9001));
    t.slow(
        row("B: handshake ACK", 510, p.build())
            .forward(INT, fnat_to_real(&p, l1, 2, 8080))
            .conn(TCP, b, web, entry(Established, r(2))),
    );
    let p = from_client(Pkt::tcp(b, web, PSH | ACK, first, 9001).payload(&counting(20)));
    t.slow(
        row("B: first data: the header", 511, p.build()).forward_insert(
            INT,
            to_r2(
                Pkt::tcp(b, web, PSH | ACK, first, 9001)
                    .payload(&[&hb[..], &counting(20)].concat()),
            ),
        ),
    );
    let p = from_client(Pkt::tcp(b, web, PSH | ACK, at(20), 9001).payload(b"wrapped"));
    t.fast(
        row(
            "B: later data past 2^32: 0x00000005 → 0x00000021",
            511,
            p.build(),
        )
        .forward(
            INT,
            to_r2(Pkt::tcp(b, web, PSH | ACK, at(48), 9001).payload(b"wrapped")),
        ),
    );
    let p = from_real(2, Pkt::tcp(r(2), l1, ACK, 9001, at(28 + 27)));
    t.fast(
        row("B: the real's ACK, wrapped → − 28", 512, p.build())
            .forward(EXT, to_b(Pkt::tcp(r(2), l1, ACK, 9001, at(27)))),
    );
    let sack_b = |shift: u32| {
        [
            &[1u8, 1][..],
            &sack_option(&[(at(shift + 40), at(shift + 60))]),
        ]
        .concat()
    };
    let p = from_real(
        2,
        Pkt::tcp(r(2), l1, ACK, 9001, at(55)).tcp_options(&sack_b(28)),
    );
    t.fast(
        row("B: SACK edges, wrapped → − 28", 512, p.build()).forward(
            EXT,
            to_b(Pkt::tcp(r(2), l1, ACK, 9001, at(27)).tcp_options(&sack_b(0))),
        ),
    );
    let p = from_client(
        Pkt::tcp(b, web, PSH | ACK, at(27), 9001)
            .payload(b"bad")
            .csum(Csum::Wrong),
    );
    t.fast(
        row(
            "B: wrong TCP checksum: shifted, the error kept",
            512,
            p.build(),
        )
        .forward(
            INT,
            to_r2(
                Pkt::tcp(b, web, PSH | ACK, at(55), 9001)
                    .payload(b"bad")
                    .csum(Csum::Wrong),
            ),
        )
        .l4_invalid(),
    );
    let p = from_client(Pkt::tcp(b, web, RST, at(30), 0));
    t.slow(
        row("B: client RST: the engine's, shifted", 513, p.build())
            .forward(INT, to_r2(Pkt::tcp(b, web, RST, at(58), 0)))
            .conn(TCP, b, web, entry(Close, r(2))),
    );

    let fast = t.fast;
    let mut failures = run_table(&mut lab, "fastpath-fullnat-proxy", t.rows);
    expect_counts(
        &mut failures,
        "fastpath-fullnat-proxy",
        &lab,
        Counts {
            rx: 33,
            passed: 0,
            forwarded_in: 17,
            forwarded_out: 13,
            icmp_forwarded: 0,
            emitted: 0,
            icmp_sent: 0,
            icmp_limited: 0,
            icmp_unroutable: 0,
            new_conns: 2,
            drops: vec![
                (DropReason::BadIpChecksum, 1),
                (DropReason::TtlExceeded, 1),
                (DropReason::TooBig, 1),
            ],
        },
    );
    expect_conns(
        &mut failures,
        "fastpath-fullnat-proxy",
        &lab,
        [((a, web), (TimeWait, r(1))), ((b, web), (Close, r(2)))]
            .into_iter()
            .collect(),
    );
    finish(&lab, "fastpath_fullnat_proxy_table", xdp, fast, failures);
}
