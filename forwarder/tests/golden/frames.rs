//! Frames for the golden tables: a builder over `forwarder::wire` (Ethernet, IPv4, TCP, UDP,
//! ICMP with correct checksums), an independent RFC 1071 checksum checker, and a field-level
//! decoder used to print readable diffs.

use std::net::{Ipv4Addr, SocketAddrV4};

use forwarder::wire::checksum;
use forwarder::wire::ethernet::{ETHERTYPE_ARP, ETHERTYPE_IPV4};
use forwarder::wire::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use forwarder::wire::{EthernetFrame, Icmpv4Packet, Ipv4Packet, MacAddr, TcpPacket, UdpPacket};

pub type Mac = [u8; 6];

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// What the L4 checksum field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Csum {
    /// The full checksum (UDP: never 0).
    Full,
    /// UDP only: 0, "no checksum".
    None,
    /// Linux CHECKSUM_PARTIAL: the folded, not complemented, pseudo-header sum.
    Partial,
    /// The full checksum off by a fixed ones'-complement amount. An RFC 1624 update keeps
    /// the same error, so a rewritten frame is expected with `Wrong` too.
    Wrong,
}

#[derive(Debug, Clone)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
        payload: Vec<u8>,
    },
}

/// An Ethernet + IPv4 packet described by its fields.
#[derive(Debug, Clone)]
pub struct Pkt {
    pub eth_src: Mac,
    pub eth_dst: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub ident: u16,
    /// The TOS byte (DSCP and ECN).
    pub tos: u8,
    /// DF, unless `more_frags`.
    pub dont_frag: bool,
    pub more_frags: bool,
    /// Fragment offset in bytes (a multiple of 8); a later fragment has no DF.
    pub frag_offset: u16,
    /// IPv4 options, a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// TCP options, a multiple of 4 bytes.
    pub tcp_options: Vec<u8>,
    pub l4: L4,
    pub csum: Csum,
}

impl Pkt {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Pkt {
        Pkt {
            eth_src: [0; 6],
            eth_dst: [0; 6],
            src,
            dst,
            ttl: 64,
            ident: 0x1c46,
            tos: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            options: Vec::new(),
            tcp_options: Vec::new(),
            l4,
            csum: Csum::Full,
        }
    }

    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, seq: u32, ack: u32) -> Pkt {
        Pkt::new(
            *src.ip(),
            *dst.ip(),
            L4::Tcp {
                sport: src.port(),
                dport: dst.port(),
                seq,
                ack,
                flags,
                payload: Vec::new(),
            },
        )
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Pkt {
        Pkt::new(
            *src.ip(),
            *dst.ip(),
            L4::Udp {
                sport: src.port(),
                dport: dst.port(),
                payload: payload.to_vec(),
            },
        )
    }

    /// An ICMP error from `src` to `dst` quoting the IP packet of `quoted` (its first
    /// `quote` bytes, or all of it).
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ty: u8,
        code: u8,
        rest: [u8; 4],
        quoted: &Pkt,
        quote: Option<usize>,
    ) -> Pkt {
        let ip = quoted.ip_bytes();
        let n = quote.unwrap_or(ip.len()).min(ip.len());
        Pkt::new(
            src,
            dst,
            L4::Icmp {
                ty,
                code,
                rest,
                payload: ip[..n].to_vec(),
            },
        )
    }

    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, ident: u16, seq: u16) -> Pkt {
        let mut rest = [0u8; 4];
        rest[..2].copy_from_slice(&ident.to_be_bytes());
        rest[2..].copy_from_slice(&seq.to_be_bytes());
        Pkt::new(
            src,
            dst,
            L4::Icmp {
                ty: 8,
                code: 0,
                rest,
                payload: b"director golden ping".to_vec(),
            },
        )
    }

    pub fn macs(mut self, src: Mac, dst: Mac) -> Pkt {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Pkt {
        self.ttl = ttl;
        self
    }

    pub fn csum(mut self, c: Csum) -> Pkt {
        self.csum = c;
        self
    }

    pub fn options(mut self, options: &[u8]) -> Pkt {
        assert_eq!(options.len() % 4, 0, "IPv4 options come in 32-bit words");
        self.options = options.to_vec();
        self
    }

    /// TCP options (a multiple of 4 bytes) after the 20-byte TCP header.
    #[allow(dead_code)] // not every test binary that includes this file uses it
    pub fn tcp_options(mut self, options: &[u8]) -> Pkt {
        assert_eq!(options.len() % 4, 0, "TCP options are padded to 4 bytes");
        self.tcp_options = options.to_vec();
        self
    }

    pub fn ident(mut self, ident: u16) -> Pkt {
        self.ident = ident;
        self
    }

    pub fn tos(mut self, tos: u8) -> Pkt {
        self.tos = tos;
        self
    }

    /// DF clear: routers may fragment it.
    pub fn may_fragment(mut self) -> Pkt {
        self.dont_frag = false;
        self
    }

    pub fn more_frags(mut self) -> Pkt {
        self.more_frags = true;
        self
    }

    /// A later fragment: the IPv4 fragment offset `bytes` (a multiple of 8), DF clear. The
    /// frame still carries the L4 header the builder writes, as a payload that looks like it.
    #[allow(dead_code)] // not every test binary that includes this file uses it
    pub fn frag_offset(mut self, bytes: u16) -> Pkt {
        assert_eq!(bytes % 8, 0, "fragment offsets come in 8-byte units");
        self.frag_offset = bytes;
        self
    }

    pub fn payload(mut self, data: &[u8]) -> Pkt {
        match &mut self.l4 {
            L4::Tcp { payload, .. } | L4::Udp { payload, .. } | L4::Icmp { payload, .. } => {
                *payload = data.to_vec()
            }
        }
        self
    }

    fn set_port(&mut self, which_src: bool, port: u16) {
        match &mut self.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => {
                *(if which_src { sport } else { dport }) = port
            }
            L4::Icmp { .. } => panic!("ICMP has no ports"),
        }
    }

    /// Source address and port.
    pub fn from(mut self, a: SocketAddrV4) -> Pkt {
        self.src = *a.ip();
        self.set_port(true, a.port());
        self
    }

    /// Destination address and port.
    pub fn to(mut self, a: SocketAddrV4) -> Pkt {
        self.dst = *a.ip();
        self.set_port(false, a.port());
        self
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp { .. } => PROTO_UDP,
            L4::Icmp { .. } => PROTO_ICMP,
        }
    }

    /// The IPv4 packet (no Ethernet header).
    pub fn ip_bytes(&self) -> Vec<u8> {
        self.build()[14..].to_vec()
    }

    /// The whole frame, checksums filled in as `csum` says.
    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let ihl = 20 + self.options.len();
        let total = ihl + l4.len();
        let mut buf = vec![0u8; 14 + total];
        {
            let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
            eth.set_dst_addr(MacAddr(self.eth_dst));
            eth.set_src_addr(MacAddr(self.eth_src));
            eth.set_ethertype(ETHERTYPE_IPV4);
        }
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut buf[14..]);
            ip.set_header_len(u8::try_from(ihl).expect("options fit"));
            ip.set_dscp_ecn(self.tos);
            ip.set_total_len(u16::try_from(total).expect("fits an IPv4 packet"));
            ip.set_ident(self.ident);
            ip.set_dont_frag(self.dont_frag && !self.more_frags && self.frag_offset == 0);
            ip.set_more_frags(self.more_frags);
            ip.set_frag_offset(self.frag_offset);
            ip.set_ttl(self.ttl);
            ip.set_protocol(self.proto());
            ip.set_src_addr(self.src);
            ip.set_dst_addr(self.dst);
        }
        buf[34..34 + self.options.len()].copy_from_slice(&self.options);
        buf[14 + ihl..].copy_from_slice(&l4);
        Ipv4Packet::new_unchecked(&mut buf[14..]).fill_checksum();
        let seg = &mut buf[14 + ihl..];
        let (src, dst) = (self.src, self.dst);
        let len = u16::try_from(seg.len()).expect("fits");
        let partial = checksum::fold(checksum::pseudo_header_sum(src, dst, self.proto(), len));
        match self.l4 {
            L4::Tcp { .. } => {
                let mut t = TcpPacket::new_unchecked(seg);
                match self.csum {
                    Csum::Full => t.fill_checksum(src, dst),
                    Csum::Partial => t.set_checksum(partial),
                    Csum::Wrong => {
                        t.fill_checksum(src, dst);
                        let c = t.checksum();
                        t.set_checksum(wrong(c));
                    }
                    Csum::None => panic!("TCP always has a checksum"),
                }
            }
            L4::Udp { .. } => {
                let mut u = UdpPacket::new_unchecked(seg);
                match self.csum {
                    Csum::Full => u.fill_checksum(src, dst),
                    Csum::None => u.set_checksum(0),
                    Csum::Partial => u.set_checksum(partial),
                    Csum::Wrong => {
                        u.fill_checksum(src, dst);
                        let c = u.checksum();
                        u.set_checksum(wrong(c));
                    }
                }
            }
            L4::Icmp { .. } => Icmpv4Packet::new_unchecked(seg).fill_checksum(),
        }
        buf
    }

    fn l4_bytes(&self) -> Vec<u8> {
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                payload,
            } => {
                let hl = 20 + self.tcp_options.len();
                let mut b = vec![0u8; hl + payload.len()];
                b[20..hl].copy_from_slice(&self.tcp_options);
                let mut t = TcpPacket::new_unchecked(&mut b[..]);
                t.set_src_port(*sport);
                t.set_dst_port(*dport);
                t.set_seq_number(*seq);
                t.set_ack_number(*ack);
                t.set_header_len(u8::try_from(hl).expect("TCP header fits"));
                t.set_flags(forwarder::wire::TcpFlags(*flags));
                t.set_window(64240);
                t.set_urgent(0);
                t.payload_mut().copy_from_slice(payload);
                b
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                let mut b = vec![0u8; 8 + payload.len()];
                let mut u = UdpPacket::new_unchecked(&mut b[..]);
                u.set_src_port(*sport);
                u.set_dst_port(*dport);
                u.set_len(u16::try_from(8 + payload.len()).expect("fits"));
                u.payload_mut().copy_from_slice(payload);
                b
            }
            L4::Icmp {
                ty,
                code,
                rest,
                payload,
            } => {
                let mut b = vec![0u8; 8 + payload.len()];
                let mut i = Icmpv4Packet::new_unchecked(&mut b[..]);
                i.set_msg_type(*ty);
                i.set_code(*code);
                i.payload_mut().copy_from_slice(payload);
                b[4..8].copy_from_slice(rest);
                b
            }
        }
    }
}

/// An IPIP outer header with the fields RFC 2003 gives it, written byte by byte (not with
/// `forwarder::wire`): TOS, DF and TTL from `inner`, total length, `ident`, protocol 4,
/// header checksum; fragment `offset` (bytes) and MF as given.
fn outer_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    inner: &[u8],
    payload_len: usize,
    offset: usize,
    more: bool,
) -> Vec<u8> {
    let df = inner[6] & 0x40 != 0;
    let flags = (if df { 0x4000u16 } else { 0 }) | (if more { 0x2000 } else { 0 });
    let word = flags | (offset / 8) as u16;
    let mut h = vec![0x45, inner[1]];
    h.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h.extend_from_slice(&ident.to_be_bytes());
    h.extend_from_slice(&word.to_be_bytes());
    h.extend_from_slice(&[inner[8], 4, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = !inet_sum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn eth_header(src: Mac, dst: Mac) -> Vec<u8> {
    let mut f = Vec::with_capacity(14);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f
}

/// The frame carrying the IPv4 packet `inner` from `src` to `dst` in IPIP (RFC 2003).
pub fn ipip(eth: (Mac, Mac), src: Ipv4Addr, dst: Ipv4Addr, ident: u16, inner: &[u8]) -> Vec<u8> {
    let mut f = eth_header(eth.0, eth.1);
    f.extend(outer_header(src, dst, ident, inner, inner.len(), 0, false));
    f.extend_from_slice(inner);
    f
}

/// The fragments (RFC 791) of that IPIP packet for a link MTU of `mtu`.
pub fn ipip_fragments(
    eth: (Mac, Mac),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    inner: &[u8],
    mtu: usize,
) -> Vec<Vec<u8>> {
    let per = (mtu - 20) / 8 * 8;
    inner
        .chunks(per)
        .enumerate()
        .map(|(k, part)| {
            let offset = k * per;
            let more = offset + part.len() < inner.len();
            let mut f = eth_header(eth.0, eth.1);
            f.extend(outer_header(
                src,
                dst,
                ident,
                inner,
                part.len(),
                offset,
                more,
            ));
            f.extend_from_slice(part);
            f
        })
        .collect()
}

/// A checksum that is wrong by a fixed amount (see [`Csum::Wrong`]).
fn wrong(c: u16) -> u16 {
    checksum::finish(u32::from(!c) + 0x1234)
}

/// An ARP request (who-has `target` tell `sender`), built from its fields.
pub fn arp_request(sender_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    {
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        eth.set_dst_addr(MacAddr::BROADCAST);
        eth.set_src_addr(MacAddr(sender_mac));
        eth.set_ethertype(ETHERTYPE_ARP);
    }
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&1u16.to_be_bytes()); // request
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

// ---- independent checks -------------------------------------------------------------------

/// RFC 1071 sum, written here independently of `forwarder::wire::checksum`.
pub fn inet_sum(parts: &[&[u8]]) -> u16 {
    let mut acc: u64 = 0;
    for p in parts {
        let mut it = p.chunks(2);
        for w in &mut it {
            let hi = u64::from(w[0]) << 8;
            let lo = w.get(1).copied().map_or(0, u64::from);
            acc += hi | lo;
        }
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// How the L4 checksum of a forwarded frame must look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Check {
    /// Right by full recomputation (a UDP 0 counts as right).
    Valid,
    /// The pseudo-header sum of the frame's own addresses (CHECKSUM_PARTIAL).
    Partial,
    /// Wrong: an input error the director must pass on, not hide.
    Invalid,
}

/// Checks an IPv4 frame's header checksum, its TCP/UDP/ICMP checksum and, for an ICMP
/// error, the quoted header's checksum and (when quoted whole) the quoted L4 checksum. All
/// by full recomputation. Returns what is wrong.
pub fn check_checksums(frame: &[u8], l4: L4Check) -> Vec<String> {
    let mut bad = Vec::new();
    let Some(ip) = frame.get(14..) else {
        return vec!["no IPv4 header".into()];
    };
    if ip.len() < 20 {
        return vec!["no IPv4 header".into()];
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl || total > ip.len() {
        return vec![format!("bad IPv4 lengths: ihl {ihl} total {total}")];
    }
    if inet_sum(&[&ip[..ihl]]) != 0xffff {
        bad.push(format!(
            "IPv4 header checksum {:#06x} wrong",
            u16::from_be_bytes([ip[10], ip[11]])
        ));
    }
    let (src, dst, proto) = (&ip[12..16], &ip[16..20], ip[9]);
    let seg = &ip[ihl..total];
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let at = if proto == PROTO_TCP { 16 } else { 6 };
            let Some(field) = seg.get(at..at + 2) else {
                bad.push("L4 header cut".into());
                return bad;
            };
            let field = u16::from_be_bytes([field[0], field[1]]);
            let len = if proto == PROTO_UDP {
                usize::from(u16::from_be_bytes([seg[4], seg[5]])).min(seg.len())
            } else {
                seg.len()
            };
            let ph = pseudo(src, dst, proto, len);
            match l4 {
                L4Check::Partial => {
                    let want = inet_sum(&[&ph]);
                    if field != want {
                        bad.push(format!(
                            "partial L4 checksum {field:#06x}, pseudo-header sum is {want:#06x}"
                        ));
                    }
                }
                L4Check::Valid | L4Check::Invalid => {
                    let ok = (proto == PROTO_UDP && field == 0)
                        || inet_sum(&[&ph, &seg[..len]]) == 0xffff;
                    if ok != (l4 == L4Check::Valid) {
                        bad.push(format!(
                            "L4 checksum {field:#06x} is {}",
                            if ok { "right, expected wrong" } else { "wrong" }
                        ));
                    }
                }
            }
        }
        PROTO_ICMP => {
            if inet_sum(&[seg]) != 0xffff {
                bad.push("ICMP checksum wrong".into());
            }
            if matches!(seg.first(), Some(3 | 4 | 11 | 12)) && seg.len() >= 28 {
                let q = &seg[8..];
                let qihl = usize::from(q[0] & 0x0f) * 4;
                if qihl >= 20 && q.len() >= qihl {
                    if inet_sum(&[&q[..qihl]]) != 0xffff {
                        bad.push("quoted IPv4 header checksum wrong".into());
                    }
                    let qtotal = usize::from(u16::from_be_bytes([q[2], q[3]]));
                    let qproto = q[9];
                    let udp_none = qproto == PROTO_UDP && be16(q, qihl + 6) == Some(0);
                    if qtotal == q.len() && matches!(qproto, PROTO_TCP | PROTO_UDP) && !udp_none {
                        let qseg = &q[qihl..];
                        let ph = pseudo(&q[12..16], &q[16..20], qproto, qseg.len());
                        if inet_sum(&[&ph, qseg]) != 0xffff {
                            bad.push("quoted L4 checksum wrong".into());
                        }
                    }
                }
            }
        }
        // IPIP, unless a fragment: the inner packet's checksums, the same rules.
        4 if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff == 0 => {
            let mut inner = vec![0u8; 12];
            inner.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            inner.extend_from_slice(seg);
            bad.extend(
                check_checksums(&inner, l4)
                    .into_iter()
                    .map(|b| format!("inner: {b}")),
            );
        }
        _ => {}
    }
    bad
}

// ---- readable diffs -----------------------------------------------------------------------

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

fn addr(b: &[u8], at: usize) -> Option<String> {
    Some(Ipv4Addr::from(be32(b, at)?).to_string())
}

fn push(out: &mut Vec<(String, String)>, name: &str, v: Option<String>) {
    if let Some(v) = v {
        out.push((name.to_string(), v));
    }
}

/// Decodes an IPv4 packet's header fields (and its L4 header) under `prefix`.
fn ip_fields(out: &mut Vec<(String, String)>, prefix: &str, ip: &[u8], nested: bool) {
    let f = |n: &str| format!("{prefix}{n}");
    push(
        out,
        &f("ip.ver_ihl"),
        ip.first().map(|b| format!("{b:#04x}")),
    );
    push(out, &f("ip.tos"), ip.get(1).map(|b| format!("{b:#04x}")));
    push(out, &f("ip.total_len"), be16(ip, 2).map(|v| v.to_string()));
    push(
        out,
        &f("ip.ident"),
        be16(ip, 4).map(|v| format!("{v:#06x}")),
    );
    push(
        out,
        &f("ip.flags_frag"),
        be16(ip, 6).map(|v| format!("{v:#06x}")),
    );
    push(out, &f("ip.ttl"), ip.get(8).map(|v| v.to_string()));
    push(out, &f("ip.proto"), ip.get(9).map(|v| v.to_string()));
    push(
        out,
        &f("ip.checksum"),
        be16(ip, 10).map(|v| format!("{v:#06x}")),
    );
    push(out, &f("ip.src"), addr(ip, 12));
    push(out, &f("ip.dst"), addr(ip, 16));
    let Some(&vi) = ip.first() else { return };
    let ihl = usize::from(vi & 0x0f) * 4;
    if ihl > 20 {
        push(
            out,
            &f("ip.options"),
            ip.get(20..ihl.min(ip.len())).map(hex),
        );
    }
    let Some(l4) = ip.get(ihl.max(20)..) else {
        return;
    };
    match ip.get(9) {
        Some(&PROTO_TCP) => {
            push(out, &f("tcp.sport"), be16(l4, 0).map(|v| v.to_string()));
            push(out, &f("tcp.dport"), be16(l4, 2).map(|v| v.to_string()));
            push(out, &f("tcp.seq"), be32(l4, 4).map(|v| v.to_string()));
            push(out, &f("tcp.ack"), be32(l4, 8).map(|v| v.to_string()));
            push(
                out,
                &f("tcp.flags"),
                l4.get(13).map(|v| format!("{v:#04x}")),
            );
            push(
                out,
                &f("tcp.checksum"),
                be16(l4, 16).map(|v| format!("{v:#06x}")),
            );
            push(out, &f("tcp.payload"), l4.get(20..).map(hex));
        }
        Some(&PROTO_UDP) => {
            push(out, &f("udp.sport"), be16(l4, 0).map(|v| v.to_string()));
            push(out, &f("udp.dport"), be16(l4, 2).map(|v| v.to_string()));
            push(out, &f("udp.len"), be16(l4, 4).map(|v| v.to_string()));
            push(
                out,
                &f("udp.checksum"),
                be16(l4, 6).map(|v| format!("{v:#06x}")),
            );
            push(out, &f("udp.payload"), l4.get(8..).map(hex));
        }
        Some(&PROTO_ICMP) if !nested => {
            push(out, &f("icmp.type"), l4.first().map(|v| v.to_string()));
            push(out, &f("icmp.code"), l4.get(1).map(|v| v.to_string()));
            push(
                out,
                &f("icmp.checksum"),
                be16(l4, 2).map(|v| format!("{v:#06x}")),
            );
            push(out, &f("icmp.rest"), l4.get(4..8).map(hex));
            if let Some(q) = l4.get(8..) {
                if matches!(l4.first(), Some(3 | 4 | 11 | 12)) {
                    ip_fields(out, "quoted.", q, true);
                } else {
                    push(out, &f("icmp.payload"), Some(hex(q)));
                }
            }
        }
        Some(&4) if prefix.is_empty() => ip_fields(out, "inner.", l4, false),
        _ => push(out, &f("ip.payload"), Some(hex(l4))),
    }
}

/// (field, value) pairs of a frame, best effort: never panics on any input.
pub fn fields(frame: &[u8]) -> Vec<(String, String)> {
    let mut out = vec![("frame.len".to_string(), frame.len().to_string())];
    push(&mut out, "eth.dst", frame.get(0..6).map(mac));
    push(&mut out, "eth.src", frame.get(6..12).map(mac));
    push(
        &mut out,
        "eth.type",
        be16(frame, 12).map(|v| format!("{v:#06x}")),
    );
    if be16(frame, 12) == Some(ETHERTYPE_IPV4) {
        ip_fields(&mut out, "", &frame[14..], false);
    }
    out
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn hexdump(b: &[u8]) -> String {
    b.chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let bytes: Vec<String> = c.iter().map(|x| format!("{x:02x}")).collect();
            format!("    {:04x}  {}", i * 16, bytes.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Field-level differences between two frames, then both hex dumps.
pub fn diff(expected: &[u8], got: &[u8]) -> String {
    let (e, g) = (fields(expected), fields(got));
    let mut lines = Vec::new();
    for (name, ev) in &e {
        match g.iter().find(|(n, _)| n == name) {
            Some((_, gv)) if gv == ev => {}
            Some((_, gv)) => lines.push(format!("    {name}: expected {ev}, got {gv}")),
            None => lines.push(format!("    {name}: expected {ev}, got nothing")),
        }
    }
    for (name, gv) in &g {
        if !e.iter().any(|(n, _)| n == name) {
            lines.push(format!("    {name}: expected nothing, got {gv}"));
        }
    }
    if lines.is_empty() {
        let at = expected
            .iter()
            .zip(got)
            .position(|(a, b)| a != b)
            .unwrap_or(expected.len().min(got.len()));
        lines.push(format!(
            "    (fields equal; bytes first differ at offset {at})"
        ));
    }
    format!(
        "{}\n  expected:\n{}\n  got:\n{}",
        lines.join("\n"),
        hexdump(expected),
        hexdump(got)
    )
}
