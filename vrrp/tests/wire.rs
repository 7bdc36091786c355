//! The VRRP codec against real keepalived 2.2.7 advertisements (tests/captures/, made by
//! tests/captures/capture.sh), one table row per `DecodeError`, round trips, and a seeded
//! mutation loop. The checksum here is this file's own, so the codec is not checked against
//! itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vrrp::wire::{
    decode, decode_ipv4, encode, encode_ipv4_datagram, Advert, ChecksumMode, DecodeError, Version,
    IPPROTO_VRRP, MULTICAST_V4, TTL,
};

// ---------------------------------------------------------------------------------------------
// Helpers: hex files, keepalived.conf, an independent checksum.

fn hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// What a capture's keepalived.conf says, read from the file itself.
#[derive(Debug, Default)]
struct Conf {
    version: u8,
    vrid: u8,
    priority: u8,
    advert_int_cs: u16,
    unicast_src: Option<Ipv4Addr>,
    unicast_peers: Vec<Ipv4Addr>,
    vips: Vec<IpAddr>,
}

fn parse_conf(text: &str) -> Conf {
    let mut conf = Conf::default();
    let mut block = "";
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["}"] => block = "",
            ["unicast_peer", "{"] => block = "peer",
            ["virtual_ipaddress", "{"] => block = "vip",
            [addr] if block == "peer" => conf.unicast_peers.push(addr.parse().expect("peer")),
            [addr] if block == "vip" => {
                let addr = addr.split('/').next().expect("split yields one piece");
                conf.vips.push(addr.parse().expect("vip"));
            }
            ["vrrp_version", v] => conf.version = v.parse().expect("version"),
            ["virtual_router_id", v] => conf.vrid = v.parse().expect("vrid"),
            ["priority", v] => conf.priority = v.parse().expect("priority"),
            ["advert_int", v] => {
                let secs: f64 = v.parse().expect("advert_int");
                conf.advert_int_cs = (secs * 100.0).round() as u16;
            }
            ["unicast_src_ip", v] => conf.unicast_src = Some(v.parse().expect("src")),
            _ => {}
        }
    }
    assert!(conf.version != 0 && conf.vrid != 0 && !conf.vips.is_empty());
    conf
}

/// RFC 1071 ones-complement sum of `parts`, concatenated, folded to 16 bits.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo_header(src: IpAddr, dst: IpAddr, len: usize) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = [s.octets(), d.octets()].concat();
            p.extend_from_slice(&[0, IPPROTO_VRRP]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = [s.octets(), d.octets()].concat();
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, IPPROTO_VRRP]);
            p
        }
        _ => panic!("mixed families"),
    }
}

/// Whether `message`, checksum field included, verifies with (or without) the pseudo-header.
fn verifies(message: &[u8], src: IpAddr, dst: IpAddr, mode: ChecksumMode) -> bool {
    let pseudo = match mode {
        ChecksumMode::PseudoHeader => pseudo_header(src, dst, message.len()),
        ChecksumMode::MessageOnly => Vec::new(),
    };
    ones_sum(&[&pseudo, message]) == 0xffff
}

/// Writes a fresh checksum into `message` (bytes 6..8).
fn set_checksum(message: &mut [u8], src: IpAddr, dst: IpAddr, mode: ChecksumMode) {
    message[6..8].fill(0);
    let pseudo = match mode {
        ChecksumMode::PseudoHeader => pseudo_header(src, dst, message.len()),
        ChecksumMode::MessageOnly => Vec::new(),
    };
    let sum = !ones_sum(&[&pseudo, message]);
    message[6..8].copy_from_slice(&sum.to_be_bytes());
}

fn ihl(datagram: &[u8]) -> usize {
    usize::from(datagram[0] & 0x0f) * 4
}

fn addrs_of(datagram: &[u8]) -> (IpAddr, IpAddr) {
    let src: [u8; 4] = datagram[12..16].try_into().expect("4 bytes");
    let dst: [u8; 4] = datagram[16..20].try_into().expect("4 bytes");
    (IpAddr::from(src), IpAddr::from(dst))
}

// ---------------------------------------------------------------------------------------------
// keepalived 2.2.7 captures.

struct Capture {
    name: &'static str,
    datagram: &'static str,
    conf: &'static str,
}

macro_rules! capture {
    ($name:literal) => {
        Capture {
            name: $name,
            datagram: include_str!(concat!("captures/keepalived-2.2.7-", $name, ".hex")),
            conf: include_str!(concat!("captures/keepalived-2.2.7-", $name, ".conf")),
        }
    };
}

/// Captures in the checksum style keepalived 2.2.7 uses by default.
fn captures() -> [Capture; 4] {
    [
        capture!("v3-multicast"),
        capture!("v3-unicast"),
        capture!("v2-multicast"),
        capture!("v2-unicast"),
    ]
}

fn expected_advert(conf: &Conf) -> Advert {
    Advert {
        version: if conf.version == 2 {
            Version::V2
        } else {
            Version::V3
        },
        vrid: conf.vrid,
        priority: conf.priority,
        interval_cs: conf.advert_int_cs,
        addrs: conf.vips.clone(),
    }
}

/// Every field of each capture is what its keepalived.conf asked for.
#[test]
fn keepalived_captures_decode_to_their_config() {
    for cap in captures() {
        let conf = parse_conf(cap.conf);
        let datagram = hex(cap.datagram);
        let got = decode_ipv4(&datagram).unwrap_or_else(|e| panic!("{}: {e}", cap.name));
        let src = conf.unicast_src.unwrap_or(Ipv4Addr::new(198, 18, 200, 1));
        let dst = conf.unicast_peers.first().copied().unwrap_or(MULTICAST_V4);
        assert_eq!(got.src, src, "{}", cap.name);
        assert_eq!(got.dst, dst, "{}", cap.name);
        assert_eq!(got.ttl, TTL, "{}", cap.name);
        let mode = match conf.version {
            // RFC 3768 §5.3.8: v2 is over the message alone.
            2 => ChecksumMode::MessageOnly,
            // keepalived follows RFC 9568 §5.2.8: pseudo-header, multicast and unicast alike.
            _ => ChecksumMode::PseudoHeader,
        };
        assert_eq!(got.checksum, mode, "{}", cap.name);
        assert_eq!(got.advert, expected_advert(&conf), "{}", cap.name);
        // The checks above are not vacuous: the configs use non-default values.
        assert_ne!(got.advert.priority, 100, "{}", cap.name);
        assert_ne!(got.advert.interval_cs, 100, "{}", cap.name);
    }
}

/// Our encoder, in the mode the decoder reported, writes keepalived's message byte for byte.
#[test]
fn encoder_reproduces_keepalived_messages() {
    for cap in captures() {
        let datagram = hex(cap.datagram);
        let got = decode_ipv4(&datagram).expect("decodes");
        let message = &datagram[ihl(&datagram)..];
        let ours = encode(
            &got.advert,
            IpAddr::V4(got.src),
            IpAddr::V4(got.dst),
            got.checksum,
        );
        assert_eq!(ours, message, "{}", cap.name);

        // The whole datagram too, but for the IP ID (keepalived counts from 1, we send 0) and
        // so the header checksum; ours must verify on its own.
        let ours = encode_ipv4_datagram(&got.advert, got.src, got.dst, got.checksum);
        assert_eq!(ours.len(), datagram.len(), "{}", cap.name);
        assert_eq!(ours[..4], datagram[..4], "{}", cap.name);
        assert_eq!(ours[6..10], datagram[6..10], "{}", cap.name);
        assert_eq!(ours[12..], datagram[12..], "{}", cap.name);
        assert_eq!(ones_sum(&[&ours[..20]]), 0xffff, "{}", cap.name);
    }
}

/// `old_unicast_checksum` (keepalived ≤ 1.3.6 compatibility) is the pseudo-header checksum
/// computed with the multicast group as destination even though the packet goes to the
/// unicast peer. `decode` with the real destination rejects it; `decode_ipv4` accepts it, as
/// keepalived does, by trying the group as destination when the real one fails.
#[test]
fn keepalived_old_unicast_checksum_is_pseudo_header_to_the_group() {
    let cap = capture!("v3-unicast-old-checksum");
    let conf = parse_conf(cap.conf);
    let datagram = hex(cap.datagram);
    let (src0, dst0) = addrs_of(&datagram);
    assert_eq!(
        decode(&datagram[ihl(&datagram)..], src0, dst0),
        Err(DecodeError::Checksum)
    );
    let rx = decode_ipv4(&datagram).expect("accepted as keepalived accepts it");
    assert_eq!(rx.advert, expected_advert(&conf));

    let (src, dst) = addrs_of(&datagram);
    assert_eq!(dst, IpAddr::V4(conf.unicast_peers[0]));
    let message = &datagram[ihl(&datagram)..];
    let (advert, mode) =
        decode(message, src, IpAddr::V4(MULTICAST_V4)).expect("verifies against the group");
    assert_eq!(mode, ChecksumMode::PseudoHeader);
    assert_eq!(advert, expected_advert(&conf));
    let ours = encode(&advert, src, IpAddr::V4(MULTICAST_V4), mode);
    assert_eq!(ours, message);
}

/// MessageOnly (Cisco/Juniper v3 over IPv4). keepalived 2.2.7 cannot send it, so this case
/// is DERIVED: keepalived's v3 captures with the checksum recomputed over the message alone.
#[test]
fn message_only_checksum_derived_from_keepalived_captures() {
    for cap in captures().into_iter().filter(|c| c.name.starts_with("v3")) {
        let conf = parse_conf(cap.conf);
        let mut datagram = hex(cap.datagram);
        let (src, dst) = addrs_of(&datagram);
        let start = ihl(&datagram);
        set_checksum(&mut datagram[start..], src, dst, ChecksumMode::MessageOnly);
        assert!(!verifies(
            &datagram[start..],
            src,
            dst,
            ChecksumMode::PseudoHeader
        ));

        let got = decode_ipv4(&datagram).expect("message-only checksum is accepted");
        assert_eq!(got.checksum, ChecksumMode::MessageOnly, "{}", cap.name);
        assert_eq!(got.advert, expected_advert(&conf), "{}", cap.name);
        let ours = encode(&got.advert, src, dst, ChecksumMode::MessageOnly);
        assert_eq!(ours, datagram[start..], "{}", cap.name);
    }
}

/// Bytes past the IP total length (a padded frame, a larger buffer) are not the message.
#[test]
fn trailing_bytes_after_total_length_are_ignored() {
    for cap in captures() {
        let mut datagram = hex(cap.datagram);
        let want = decode_ipv4(&datagram).expect("decodes");
        datagram.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x01]);
        assert_eq!(decode_ipv4(&datagram), Ok(want), "{}", cap.name);
    }
}

// ---------------------------------------------------------------------------------------------
// One row per malformed kind.

const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
const DST6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

fn v3() -> Advert {
    Advert {
        version: Version::V3,
        vrid: 7,
        priority: 150,
        interval_cs: 5,
        addrs: vec![
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 100)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 101)),
        ],
    }
}

fn v2() -> Advert {
    Advert {
        version: Version::V2,
        interval_cs: 300,
        ..v3()
    }
}

fn v3_ipv6() -> Advert {
    Advert {
        addrs: vec![
            IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100)),
        ],
        ..v3()
    }
}

/// A v3 datagram from SRC to the group, edited by `edit`, then (if `refix`) given a correct
/// pseudo-header checksum again so that only the edit is wrong.
fn datagram_with(advert: &Advert, refix: bool, edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut d = encode_ipv4_datagram(advert, SRC, MULTICAST_V4, ChecksumMode::PseudoHeader);
    edit(&mut d);
    if refix {
        let (src, dst) = addrs_of(&d);
        let mode = match advert.version {
            Version::V2 => ChecksumMode::MessageOnly,
            Version::V3 => ChecksumMode::PseudoHeader,
        };
        let start = ihl(&d);
        set_checksum(&mut d[start..], src, dst, mode);
    }
    d
}

fn set_total_len(d: &mut [u8], len: usize) {
    d[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

#[test]
fn each_malformed_kind_gives_its_error() {
    use DecodeError as E;
    let ip = |what| E::IpHeader { what };
    // (what is wrong, the datagram, the error)
    let rows: Vec<(&str, Vec<u8>, DecodeError)> = vec![
        ("empty", Vec::new(), E::Short { len: 0 }),
        (
            "19 bytes",
            datagram_with(&v3(), false, |d| d.truncate(19)),
            E::Short { len: 19 },
        ),
        (
            "VRRP header cut",
            datagram_with(&v3(), false, |d| {
                d.truncate(27);
                set_total_len(d, 27);
            }),
            E::Short { len: 7 },
        ),
        (
            "IP version 6",
            datagram_with(&v3(), false, |d| d[0] = 0x65),
            ip("IP version is not 4"),
        ),
        (
            "IHL 4",
            datagram_with(&v3(), false, |d| d[0] = 0x44),
            ip("IHL below 5"),
        ),
        (
            "IHL past the end",
            datagram_with(&v3(), false, |d| {
                d[0] = 0x4f;
                d.truncate(40);
            }),
            ip("IHL beyond the datagram"),
        ),
        (
            "total length below IHL",
            datagram_with(&v3(), false, |d| set_total_len(d, 19)),
            ip("total length below the header length"),
        ),
        (
            "total length past the end",
            datagram_with(&v3(), false, |d| {
                let len = d.len() + 1;
                set_total_len(d, len);
            }),
            ip("total length beyond the datagram"),
        ),
        (
            "more fragments",
            datagram_with(&v3(), false, |d| d[6] = 0x20),
            ip("fragment"),
        ),
        (
            "fragment offset",
            datagram_with(&v3(), false, |d| d[7] = 0x01),
            ip("fragment"),
        ),
        (
            "TCP",
            datagram_with(&v3(), false, |d| d[9] = 6),
            E::NotVrrp { protocol: 6 },
        ),
        (
            "TTL 254",
            datagram_with(&v3(), false, |d| d[8] = 254),
            E::Ttl { ttl: 254 },
        ),
        (
            "TTL 1",
            datagram_with(&v3(), false, |d| d[8] = 1),
            E::Ttl { ttl: 1 },
        ),
        (
            "version 1",
            datagram_with(&v3(), true, |d| d[20] = 0x11),
            E::Version { version: 1 },
        ),
        (
            "version 4",
            datagram_with(&v3(), true, |d| d[20] = 0x41),
            E::Version { version: 4 },
        ),
        (
            "type 2",
            datagram_with(&v3(), true, |d| d[20] = 0x32),
            E::Type { kind: 2 },
        ),
        (
            "v2 type 0",
            datagram_with(&v2(), true, |d| d[20] = 0x20),
            E::Type { kind: 0 },
        ),
        (
            "count one too many",
            datagram_with(&v3(), true, |d| d[23] = 3),
            E::Length {
                len: 16,
                expected: 20,
            },
        ),
        (
            "one byte more than the count says",
            datagram_with(&v3(), true, |d| {
                d.push(0);
                let len = d.len();
                set_total_len(d, len);
            }),
            E::Length {
                len: 17,
                expected: 16,
            },
        ),
        (
            "v2 without its auth data",
            datagram_with(&v2(), true, |d| {
                d.truncate(d.len() - 8);
                let len = d.len();
                set_total_len(d, len);
            }),
            E::Length {
                len: 16,
                expected: 24,
            },
        ),
        (
            "address changed",
            datagram_with(&v3(), false, |d| d[30] ^= 1),
            E::Checksum,
        ),
        (
            "source changed",
            datagram_with(&v3(), false, |d| d[15] ^= 1),
            E::Checksum,
        ),
        (
            "checksum zeroed",
            datagram_with(&v3(), false, |d| d[26..28].fill(0)),
            E::Checksum,
        ),
        (
            "v2 with a pseudo-header checksum",
            datagram_with(&v2(), false, |d| {
                let (src, dst) = addrs_of(d);
                set_checksum(&mut d[20..], src, dst, ChecksumMode::PseudoHeader);
            }),
            E::Checksum,
        ),
        (
            "v2 auth type 1",
            datagram_with(&v2(), true, |d| d[24] = 1),
            E::AuthType { auth_type: 1 },
        ),
        (
            "v2 auth type 2",
            datagram_with(&v2(), true, |d| d[24] = 2),
            E::AuthType { auth_type: 2 },
        ),
        (
            "v3 interval 0",
            datagram_with(&v3(), true, |d| d[24..26].fill(0)),
            E::Interval,
        ),
        (
            "v3 interval 0, reserved bits set",
            datagram_with(&v3(), true, |d| d[24..26].copy_from_slice(&[0xf0, 0])),
            E::Interval,
        ),
        (
            "v2 adver int 0",
            datagram_with(&v2(), true, |d| d[25] = 0),
            E::Interval,
        ),
    ];
    for (what, datagram, want) in &rows {
        assert_eq!(decode_ipv4(datagram).as_ref(), Err(want), "{what}");
    }
    let kinds: std::collections::BTreeSet<_> = rows.iter().map(|r| r.2.label()).collect();

    // Rows that only `decode` can reach.
    let (v4, g) = (IpAddr::V4(SRC), IpAddr::V4(MULTICAST_V4));
    let (s6, d6) = (IpAddr::V6(SRC6), IpAddr::V6(DST6));
    let v6_message = encode(&v3_ipv6(), s6, d6, ChecksumMode::PseudoHeader);
    let mut v2_over_v6 = v6_message.clone();
    v2_over_v6[0] = 0x21;
    let mut v6_message_only = v6_message.clone();
    set_checksum(&mut v6_message_only, s6, d6, ChecksumMode::MessageOnly);
    let message_rows: Vec<(&str, &[u8], IpAddr, IpAddr, DecodeError)> = vec![
        (
            "IPv6 v3 message cut",
            &v6_message[..7],
            s6,
            d6,
            E::Short { len: 7 },
        ),
        (
            "v2 over IPv6",
            &v2_over_v6,
            s6,
            d6,
            E::Version { version: 2 },
        ),
        (
            "IPv6 without pseudo-header",
            &v6_message_only,
            s6,
            d6,
            E::Checksum,
        ),
        ("IPv6 to another group", &v6_message, s6, s6, E::Checksum),
        (
            "IPv6 read as IPv4",
            &v6_message,
            v4,
            g,
            E::Length {
                len: 40,
                expected: 16,
            },
        ),
        (
            "IPv4 source, IPv6 destination",
            &v6_message,
            v4,
            d6,
            E::Family,
        ),
        (
            "IPv6 source, IPv4 destination",
            &v6_message,
            s6,
            g,
            E::Family,
        ),
    ];
    for (what, message, src, dst, want) in &message_rows {
        assert_eq!(
            decode(message, *src, *dst).map(|_| ()),
            Err(*want),
            "{what}"
        );
    }
    let kinds: std::collections::BTreeSet<_> = kinds
        .into_iter()
        .chain(message_rows.iter().map(|r| r.4.label()))
        .collect();
    let all: std::collections::BTreeSet<_> = DecodeError::LABELS.into_iter().collect();
    assert_eq!(kinds, all, "every kind has a row");
}

// ---------------------------------------------------------------------------------------------
// Round trips.

fn v4_addrs(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 1)))
        .collect()
}

fn v6_addrs(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16 + 1)))
        .collect()
}

#[test]
fn round_trip_v2_v3_ipv6_with_0_to_n_addresses() {
    let (v4, g) = (IpAddr::V4(SRC), IpAddr::V4(MULTICAST_V4));
    let (s6, d6) = (IpAddr::V6(SRC6), IpAddr::V6(DST6));
    let counts = [0, 1, 2, 3, 16, 255];
    let mut checked = 0;
    for n in counts {
        let cases = [
            (
                Version::V2,
                v4_addrs(n),
                v4,
                g,
                ChecksumMode::MessageOnly,
                16 + 4 * n,
            ),
            (
                Version::V3,
                v4_addrs(n),
                v4,
                g,
                ChecksumMode::PseudoHeader,
                8 + 4 * n,
            ),
            (
                Version::V3,
                v4_addrs(n),
                v4,
                g,
                ChecksumMode::MessageOnly,
                8 + 4 * n,
            ),
            (
                Version::V3,
                v6_addrs(n),
                s6,
                d6,
                ChecksumMode::PseudoHeader,
                8 + 16 * n,
            ),
        ];
        for (version, addrs, src, dst, mode, len) in cases {
            let advert = Advert {
                version,
                vrid: 255,
                priority: 254,
                interval_cs: if version == Version::V2 { 25_500 } else { 4095 },
                addrs,
            };
            let message = encode(&advert, src, dst, mode);
            assert_eq!(message.len(), len, "{version:?} {n}");
            assert!(
                verifies(&message, src, dst, mode),
                "{version:?} {n} {mode:?}"
            );
            assert_eq!(decode(&message, src, dst), Ok((advert.clone(), mode)));
            if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) {
                let datagram = encode_ipv4_datagram(&advert, s, d, mode);
                let got = decode_ipv4(&datagram).expect("own datagram decodes");
                assert_eq!((got.src, got.dst, got.checksum), (s, d, mode));
                assert_eq!(got.advert, advert);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, counts.len() * 4);
}

/// v3 interval 1 cs and v2 1 s, the smallest; the 12-bit and 8-bit fields clamp on encode.
#[test]
fn intervals_at_the_field_limits() {
    let (v4, g) = (IpAddr::V4(SRC), IpAddr::V4(MULTICAST_V4));
    let mode = ChecksumMode::PseudoHeader;
    for (version, interval_cs, on_wire) in [
        (Version::V3, 1, 1),
        (Version::V3, 4096, 4095),
        (Version::V3, u16::MAX, 4095),
        (Version::V2, 100, 100),
        (Version::V2, 199, 100),
        (Version::V2, u16::MAX, 25_500),
    ] {
        let advert = Advert {
            version,
            interval_cs,
            ..v3()
        };
        let (got, _) = decode(&encode(&advert, v4, g, mode), v4, g).expect("decodes");
        assert_eq!(got.interval_cs, on_wire, "{version:?} {interval_cs}");
    }
}

// ---------------------------------------------------------------------------------------------
// Mutation loop.

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            1 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
            2 => bytes.truncate(rng.below(bytes.len() + 1)),
            3 => {
                for _ in 0..rng.below(24) {
                    bytes.push(rng.next() as u8);
                }
            }
            _ => {
                // Random count byte: the length check must hold against any count.
                if bytes.len() > 23 {
                    bytes[23] = rng.next() as u8;
                }
            }
        }
    }
}

/// Seeded random edits of real and encoded packets never panic, and whatever is accepted
/// verifies under the checksum style the decoder reported (checked with this file's sum).
#[test]
fn mutated_packets_never_panic_and_never_pass_a_wrong_checksum() {
    let mut bases: Vec<Vec<u8>> = captures().iter().map(|c| hex(c.datagram)).collect();
    bases.push(hex(capture!("v3-unicast-old-checksum").datagram));
    bases.push(encode_ipv4_datagram(
        &v3(),
        SRC,
        MULTICAST_V4,
        ChecksumMode::MessageOnly,
    ));
    bases.push(encode_ipv4_datagram(
        &v2(),
        SRC,
        MULTICAST_V4,
        ChecksumMode::MessageOnly,
    ));
    let (s6, d6) = (IpAddr::V6(SRC6), IpAddr::V6(DST6));
    let v6_base = encode(&v3_ipv6(), s6, d6, ChecksumMode::PseudoHeader);

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut rejected) = (0u32, 0u32);
    for i in 0..40_000 {
        // IPv4 datagrams through decode_ipv4.
        let mut d = bases[i % bases.len()].clone();
        mutate(&mut rng, &mut d);
        // Now and then re-sign the edited message so that the accepting path is exercised.
        let resign = rng.below(4) == 0 && d.len() >= 28 && ihl(&d) >= 20 && ihl(&d) + 8 <= d.len();
        if resign {
            let (src, dst) = addrs_of(&d);
            let start = ihl(&d);
            let end = usize::from(u16::from_be_bytes([d[2], d[3]])).clamp(start + 8, d.len());
            let mode = if rng.below(2) == 0 {
                ChecksumMode::PseudoHeader
            } else {
                ChecksumMode::MessageOnly
            };
            set_checksum(&mut d[start..end], src, dst, mode);
        }
        match decode_ipv4(&d) {
            Ok(got) => {
                accepted += 1;
                let (src, dst) = addrs_of(&d);
                assert_eq!((IpAddr::V4(got.src), IpAddr::V4(got.dst)), (src, dst));
                assert_eq!(d[8], TTL);
                let total = usize::from(u16::from_be_bytes([d[2], d[3]]));
                let message = &d[ihl(&d)..total];
                // The old keepalived unicast style verifies against the group.
                let group = IpAddr::V4(MULTICAST_V4);
                assert!(
                    verifies(message, src, dst, got.checksum)
                        || verifies(message, src, group, got.checksum),
                    "iteration {i}"
                );
                if got.advert.version == Version::V2 {
                    assert_eq!(got.checksum, ChecksumMode::MessageOnly);
                }
                assert_eq!(message[3] as usize, got.advert.addrs.len());
            }
            Err(e) => {
                rejected += 1;
                assert!(DecodeError::LABELS.contains(&e.label()));
            }
        }

        // IPv6 messages through decode: only the pseudo-header style may pass.
        let mut m = v6_base.clone();
        mutate(&mut rng, &mut m);
        if rng.below(4) == 0 && m.len() >= 8 {
            set_checksum(&mut m, s6, d6, ChecksumMode::PseudoHeader);
        }
        if let Ok((advert, mode)) = decode(&m, s6, d6) {
            accepted += 1;
            assert_eq!(mode, ChecksumMode::PseudoHeader);
            assert!(verifies(&m, s6, d6, mode), "iteration {i} (IPv6)");
            assert_eq!(m.len(), 8 + 16 * advert.addrs.len());
        }
    }
    eprintln!("accepted {accepted}, rejected {rejected}");
    // Both paths were taken: the loop is not only testing rejection.
    assert!(
        accepted > 100 && rejected > 10_000,
        "accepted {accepted}, rejected {rejected}"
    );
}
