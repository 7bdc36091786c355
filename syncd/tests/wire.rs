//! The sync wire format: round trips, sizes, every refusal, and the minor-version rule (a
//! reader skips fields a newer minor version appended to an entry).

use syncd::wire::{
    self, Body, Bulk, Claim, DataHead, DataWriter, DecodeError, Entry, Header, Heartbeat, Key,
    Kind, Nack, Op, Phase, HEADER_LEN, MAC_LEN, MAX_DATAGRAM,
};

fn key() -> Key {
    Key::new(b"0123456789abcdef0123456789abcdef").unwrap()
}

fn header(seq: u64) -> Header {
    Header {
        minor: wire::VERSION_MINOR,
        kind: Kind::Data,
        flags: 0,
        node: wire::node_id("lb-a"),
        epoch: 1_795_295_658_291_223,
        seq,
        count: 0,
    }
}

fn entry(port: u16) -> Entry {
    Entry {
        op: Op::Upsert as u8,
        proto: 6,
        mode: 0,
        state: 2,
        flags: 0,
        client: [198, 18, 1, 10],
        client_port: port,
        vip: [198, 18, 1, 100],
        vip_port: 80,
        real: [198, 18, 2, 11],
        real_port: 8080,
        local: None,
        remaining: 900,
        proxy: None,
    }
}

#[test]
fn data_heartbeat_and_nack_round_trip() {
    let k = key();
    let head = DataHead {
        bulk: Some(Bulk {
            target_epoch: 7,
            id: 3,
            start_seq: 40,
            phase: Phase::Middle,
            total: 128,
        }),
    };
    let entries: Vec<Entry> = (0..10).map(|i| entry(40000 + i)).collect();
    let bytes = wire::encode_data(&k, header(41), &head, &entries);
    let (h, body) = wire::decode(&k, &bytes).unwrap();
    assert_eq!((h.kind, h.seq, h.count), (Kind::Data, 41, 10));
    assert_eq!(body, Body::Data(head, entries));

    let hb = Heartbeat {
        high: 99,
        peer_epoch: 5,
        ack: 97,
        bulk: Some((5, 90)),
        resyncing: true,
        claims: vec![
            Claim {
                vrid: 51,
                state: 2,
                priority: 200,
                addr: [198, 18, 1, 2],
            },
            Claim {
                vrid: 52,
                state: 2,
                priority: 200,
                addr: [198, 18, 2, 2],
            },
        ],
    };
    let bytes = wire::encode_control(&k, header(3), &Body::Heartbeat(hb.clone()));
    assert_eq!(wire::decode(&k, &bytes).unwrap().1, Body::Heartbeat(hb));
    let nack = Nack {
        peer_epoch: 5,
        ranges: vec![(3, 7), (9, 9)],
    };
    let bytes = wire::encode_control(&k, header(4), &Body::Nack(nack.clone()));
    let (h, body) = wire::decode(&k, &bytes).unwrap();
    assert_eq!((h.kind, body), (Kind::Nack, Body::Nack(nack)));
}

#[test]
fn a_full_datagram_fits_the_mtu_and_an_entry_is_about_28_bytes() {
    let mut w = DataWriter::new(header(1), &DataHead::default());
    let mut n = 0u16;
    while w.push(&entry(40000 + n)) {
        n += 1;
    }
    let bytes = w.finish(&key(), 1);
    assert!(bytes.len() <= MAX_DATAGRAM);
    let per_entry = (bytes.len() - HEADER_LEN - MAC_LEN - 1) as f64 / f64::from(n);
    assert!(
        (25.0..=28.0).contains(&per_entry),
        "{per_entry} B per entry"
    );
    assert!(n >= 50, "{n} entries per datagram");
    // FULLNAT entries carry the local address and the PROXY protocol shift too.
    let fullnat = Entry {
        local: Some(([198, 18, 2, 5], 61000)),
        mode: 3,
        proxy: Some((0xfedc_ba98, 28)),
        ..entry(1)
    };
    let bytes = wire::encode_data(&key(), header(2), &DataHead::default(), &[fullnat]);
    assert_eq!(
        wire::decode(&key(), &bytes).unwrap().1,
        Body::Data(DataHead::default(), vec![fullnat])
    );
}

#[test]
fn every_refusal_has_its_reason() {
    let k = key();
    let good = wire::encode_data(&k, header(1), &DataHead::default(), &[entry(1)]);
    let refuse = |b: &[u8]| wire::decode(&k, b).unwrap_err();
    assert_eq!(
        refuse(&good[..HEADER_LEN + MAC_LEN - 1]),
        DecodeError::Truncated
    );
    assert_eq!(refuse(&good[..good.len() - 1]), DecodeError::Auth);
    let mut magic = good.clone();
    magic[0] = b'X';
    assert_eq!(refuse(&magic), DecodeError::BadMagic);
    let other = Key::new(b"another key, just as long as it!").unwrap();
    assert_eq!(wire::decode(&other, &good).unwrap_err(), DecodeError::Auth);
    // Every single-bit flip after the magic is caught by the MAC.
    for i in 4..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x01;
        assert_eq!(refuse(&b), DecodeError::Auth, "byte {i}");
    }
    assert!(Key::new(b"short").is_err());
}

/// Re-seals `signed` (header + body, no MAC) as a sender with the key would.
fn seal(signed: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
    m.update(signed);
    let mut out = signed.to_vec();
    out.extend_from_slice(&m.finalize().into_bytes());
    out
}

#[test]
fn a_newer_minor_version_with_longer_entries_is_read_and_a_newer_major_is_refused() {
    let k = key();
    let good = wire::encode_data(&k, header(1), &DataHead::default(), &[entry(1), entry(2)]);
    let signed = &good[..good.len() - MAC_LEN];
    // Rebuild the body as minor 1 would: each entry two bytes longer (a new field appended),
    // its length prefix saying so, plus trailing bytes after the last entry.
    let mut newer = signed[..HEADER_LEN].to_vec();
    newer[5] = wire::VERSION_MINOR + 1;
    let mut rest = &signed[HEADER_LEN..];
    newer.push(rest[0]); // the DataHead (None: one byte)
    rest = &rest[1..];
    for _ in 0..2 {
        let len = usize::from(rest[0]);
        newer.push((len + 2) as u8);
        newer.extend_from_slice(&rest[1..=len]);
        newer.extend_from_slice(&[0xAB, 0xCD]);
        rest = &rest[1 + len..];
    }
    newer.extend_from_slice(&[1, 2, 3]);
    let (h, body) = wire::decode(&k, &seal(&newer)).unwrap();
    assert_eq!(h.minor, wire::VERSION_MINOR + 1);
    assert_eq!(
        body,
        Body::Data(DataHead::default(), vec![entry(1), entry(2)])
    );

    let mut major = signed.to_vec();
    major[4] = wire::VERSION_MAJOR + 1;
    assert_eq!(
        wire::decode(&k, &seal(&major)).unwrap_err(),
        DecodeError::Version
    );
    let mut kind = signed.to_vec();
    kind[6] = 9;
    assert_eq!(
        wire::decode(&k, &seal(&kind)).unwrap_err(),
        DecodeError::Malformed
    );
    // A count larger than the entries present.
    let mut count = signed.to_vec();
    count[29] = 3;
    assert_eq!(
        wire::decode(&k, &seal(&count)).unwrap_err(),
        DecodeError::Malformed
    );
}

/// The entries of a data message, each as (length prefix, bytes); lengths below 128.
fn entries_of(signed: &[u8]) -> Vec<&[u8]> {
    let mut rest = &signed[HEADER_LEN + 1..]; // after the DataHead (None: one byte)
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(rest[0]);
        out.push(&rest[1..=len]);
        rest = &rest[1 + len..];
    }
    out
}

/// Builds a data message of `minor` from entry bytes, as a sender of that version would.
fn data_message(minor: u8, entries: &[&[u8]]) -> Vec<u8> {
    let mut h = header(1);
    h.minor = minor;
    let mut out = wire::encode_data(&key(), h, &DataHead::default(), &[]);
    out.truncate(out.len() - MAC_LEN);
    out[28..30].copy_from_slice(&(entries.len() as u16).to_be_bytes());
    for e in entries {
        out.push(e.len() as u8);
        out.extend_from_slice(e);
    }
    seal(&out)
}

/// The entry as a 1.0 reader knew it: what it decodes from an entry's bytes.
#[derive(Debug, PartialEq, serde::Deserialize)]
struct EntryV10 {
    op: u8,
    proto: u8,
    mode: u8,
    state: u8,
    flags: u8,
    client: [u8; 4],
    client_port: u16,
    vip: [u8; 4],
    vip_port: u16,
    real: [u8; 4],
    real_port: u16,
    local: Option<([u8; 4], u16)>,
    remaining: u32,
}

#[test]
fn minor_1_and_minor_0_entries_are_read_by_each_other() {
    let fullnat = Entry {
        mode: 3,
        local: Some(([198, 18, 2, 5], 61000)),
        proxy: Some((0x8000_0001, 28)),
        ..entry(40000)
    };
    let no_proxy = Entry {
        proxy: None,
        ..fullnat
    };
    let ours = wire::encode_data(
        &key(),
        header(1),
        &DataHead::default(),
        &[fullnat, no_proxy],
    );
    let signed = &ours[..ours.len() - MAC_LEN];
    assert_eq!(signed[5], wire::VERSION_MINOR, "this build's minor version");
    const { assert!(wire::VERSION_MINOR >= 1, "1.1 entries or later") };
    let ours = entries_of(signed);

    // A 1.0 reader decodes the 1.0 fields and skips the rest of the entry by its length.
    for bytes in &ours {
        let (old, _rest) = postcard::take_from_bytes::<EntryV10>(bytes).unwrap();
        assert_eq!(
            (old.mode, old.client_port, old.local, old.remaining),
            (3, 40000, Some(([198, 18, 2, 5], 61000)), 900)
        );
    }

    // A 1.0 entry ends after `remaining` (1.1 appends one zero byte for `proxy: None`); a
    // 1.1 reader takes its proxy as None.
    let v10 = &ours[1][..ours[1].len() - 1];
    assert_eq!(ours[1].last(), Some(&0), "None is one zero byte");
    assert!(
        ours[0].starts_with(v10),
        "1.1 appends, changes nothing before"
    );
    let (h, body) = wire::decode(&key(), &data_message(0, &[v10, ours[0]])).unwrap();
    assert_eq!(h.minor, 0);
    assert_eq!(
        body,
        Body::Data(DataHead::default(), vec![no_proxy, fullnat])
    );

    // A proxy field that does not decode makes the message malformed, as any bad field.
    let mut bad = v10.to_vec();
    bad.extend_from_slice(&[1, 0x80]); // Some, then a varint cut short
    assert_eq!(
        wire::decode(&key(), &data_message(1, &[&bad])).unwrap_err(),
        DecodeError::Malformed
    );
}

/// A 1.1 heartbeat ends after `resyncing`: a 1.2 reader takes it as one without claims. A
/// 1.2 heartbeat is the 1.1 one with the claims after it, which a 1.1 reader (postcard
/// reads its fields and stops) never looks at.
#[test]
fn a_1_1_heartbeat_has_no_claims_and_a_1_2_one_appends_them() {
    let k = key();
    let base = Heartbeat {
        high: 7,
        peer_epoch: 3,
        ack: 6,
        bulk: None,
        resyncing: false,
        claims: Vec::new(),
    };
    let h = Header {
        kind: Kind::Heartbeat,
        ..header(9)
    };
    let with_empty = wire::encode_control(&k, h, &Body::Heartbeat(base.clone()));
    // 1.2 with no claims: one zero byte (an empty list) after the 1.1 fields.
    let signed = &with_empty[..with_empty.len() - MAC_LEN];
    assert_eq!(signed.last(), Some(&0));
    let mut old = signed[..signed.len() - 1].to_vec();
    old[5] = 1;
    let (h11, body) = wire::decode(&k, &seal(&old)).expect("a 1.1 heartbeat");
    assert_eq!(h11.minor, 1);
    assert_eq!(body, Body::Heartbeat(base.clone()));
    // The claims come after the 1.1 fields, byte for byte.
    let claimed = Heartbeat {
        claims: vec![Claim {
            vrid: 51,
            state: 1,
            priority: 100,
            addr: [198, 18, 1, 3],
        }],
        ..base
    };
    let new = wire::encode_control(&k, h, &Body::Heartbeat(claimed.clone()));
    assert_eq!(&new[HEADER_LEN..old.len()], &old[HEADER_LEN..]);
    assert_eq!(wire::decode(&k, &new).unwrap().1, Body::Heartbeat(claimed));
}
