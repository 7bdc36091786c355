//! Driving the `labpkt` binary (crafted frames from a lab host, see `src/bin/labpkt.rs`),
//! and reading what the director's drop counters made of them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result};

use forwarder::wire::{EthernetFrame, Icmpv4Packet, Ipv4Packet};

use crate::lab::{wait_until, Host, Mac};
use crate::topo::{workspace_bin, Topo};

/// One run of `labpkt`: `count` frames of `kind` from `src` to `dst`.
#[derive(Debug, Clone)]
pub struct Frames {
    pub kind: &'static str,
    pub count: u32,
    pub src: Ipv4Addr,
    pub dst: SocketAddrV4,
    /// Source port of the first frame; each frame after it uses the next port (so each is a
    /// flow of its own), except `ip-options`, which all use this one.
    pub sport: u16,
    /// Pause after each frame. The default (50 µs) keeps a burst of counted frames well
    /// inside the veth backlog and the director's rings, so every frame arrives.
    pub gap_us: u32,
    pub seed: u64,
}

impl Frames {
    pub fn new(kind: &'static str, count: u32, src: Ipv4Addr, dst: SocketAddrV4) -> Frames {
        Frames {
            kind,
            count,
            src,
            dst,
            sport: 20000,
            gap_us: 50,
            seed: 1,
        }
    }

    pub fn sport(mut self, sport: u16) -> Frames {
        self.sport = sport;
        self
    }

    pub fn gap_us(mut self, gap_us: u32) -> Frames {
        self.gap_us = gap_us;
        self
    }

    pub fn seed(mut self, seed: u64) -> Frames {
        self.seed = seed;
        self
    }
}

/// What `labpkt` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub sent: u32,
    /// UDP replies received (only for `ip-options`).
    pub replies: Option<u32>,
}

/// Runs `labpkt` on `host`, sending out of `iface` to `dst_mac`, and waits for it to finish.
pub fn send(host: &Host, iface: &str, dst_mac: Mac, f: &Frames) -> Result<Sent> {
    let bin = workspace_bin("labpkt")?;
    let argv: Vec<String> = vec![
        bin.display().to_string(),
        "--iface".into(),
        iface.into(),
        "--dst-mac".into(),
        dst_mac.to_string(),
        "--kind".into(),
        f.kind.into(),
        "--src".into(),
        f.src.to_string(),
        "--dst".into(),
        f.dst.to_string(),
        "--count".into(),
        f.count.to_string(),
        "--sport".into(),
        f.sport.to_string(),
        "--gap-us".into(),
        f.gap_us.to_string(),
        "--seed".into(),
        f.seed.to_string(),
        "--wait-ms".into(),
        "5000".into(),
    ];
    let out = host
        .run_timeout(&argv, Duration::from_secs(120))
        .with_context(|| format!("labpkt {} x{} on {}", f.kind, f.count, host.name()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u32>().ok())
    };
    Ok(Sent {
        sent: field("sent ").with_context(|| format!("labpkt printed {text:?}"))?,
        replies: field("replies "),
    })
}

/// Every drop counter of the director, by label.
pub fn drop_counters(topo: &Topo) -> Result<BTreeMap<String, u64>> {
    let v = topo.director_json("stats")?;
    let drops = v["datapath"]["drops"]
        .as_object()
        .with_context(|| format!("no drop counters in {v}"))?;
    Ok(drops
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect())
}

/// The counters that moved between two snapshots, with how much.
pub fn drops_since(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, n)| {
            let d = n.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Waits (up to 20 s) until the drop counters have moved by at least `expected` since
/// `before`, then returns everything that moved, for the caller to compare with `expected`
/// exactly (so a counter that moved too much, or one that should not have moved, shows).
pub fn wait_drops(
    topo: &Topo,
    before: &BTreeMap<String, u64>,
    expected: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, u64>> {
    let reached = |moved: &BTreeMap<String, u64>| {
        expected
            .iter()
            .all(|(k, n)| moved.get(k).copied().unwrap_or(0) >= *n)
    };
    let _ = wait_until(Duration::from_secs(20), || {
        drop_counters(topo).is_ok_and(|now| reached(&drops_since(before, &now)))
    });
    Ok(drops_since(before, &drop_counters(topo)?))
}

/// A fragmentation-needed message as seen on the wire.
#[derive(Debug, PartialEq, Eq)]
pub struct FragNeeded {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub mtu: u16,
    pub quoted_src: SocketAddrV4,
    pub quoted_dst: SocketAddrV4,
}

/// The ICMP fragmentation-needed messages among captured Ethernet frames (each one's ICMP
/// checksum must be right).
pub fn frag_needed(frames: &[Vec<u8>]) -> Vec<FragNeeded> {
    frames
        .iter()
        .filter_map(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).ok()?;
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
            assert!(icmp.verify_checksum(), "ICMP checksum wrong in {f:02x?}");
            let q = Ipv4Packet::new_checked_quoted(icmp.payload()).ok()?;
            let (sport, dport) = forwarder::wire::l4_ports(q.payload())?;
            Some(FragNeeded {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
                mtu: icmp.next_hop_mtu()?,
                quoted_src: SocketAddrV4::new(q.src_addr(), sport),
                quoted_dst: SocketAddrV4::new(q.dst_addr(), dport),
            })
        })
        .collect()
}
