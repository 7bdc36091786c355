//! The paths measured: directord in each mode and receive variant, and what an operator would
//! use instead. To add a directord variant (e.g. a fast path), add a [`Variant`] with its
//! name suffix, label, `xdp` setting and extra `[datapath]` keys; it is then measured in
//! every mode, selectable with `--paths`, and shown in every table.

use anyhow::{bail, Result};
use director_lab::topo::Mode;

use crate::plan::Measure;

/// directord's forwarding mode.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Lb {
    Nat,
    Dr,
    Tun,
    FullNat,
}

impl Lb {
    pub const ALL: [Lb; 4] = [Lb::Nat, Lb::Dr, Lb::Tun, Lb::FullNat];

    pub fn mode(self) -> Mode {
        match self {
            Lb::Nat => Mode::Nat,
            Lb::Dr => Mode::Dr,
            Lb::Tun => Mode::Tun,
            Lb::FullNat => Mode::FullNat,
        }
    }
}

/// How directord receives (and whatever else a variant changes in `[datapath]`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Variant {
    /// `xdp` off: TPACKET_V2 AF_PACKET rings.
    AfPacket,
    /// `xdp = "native"` with the fast path (directord's default with XDP): the program
    /// forwards established flows itself and steers the rest to the workers' AF_XDP sockets.
    Xdp,
    /// `xdp = "native"`, `fast_path = false`: the program only steers the service's frames to
    /// AF_XDP sockets; the workers forward every packet. Not in the default set.
    Steer,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::AfPacket, Variant::Xdp, Variant::Steer];

    /// Appended to the mode's name in `--paths` (`nat`, `nat-xdp`, `nat-steer`).
    pub fn suffix(self) -> &'static str {
        match self {
            Variant::AfPacket => "",
            Variant::Xdp => "-xdp",
            Variant::Steer => "-steer",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::AfPacket => "AF_PACKET",
            Variant::Xdp => "XDP fast path",
            Variant::Steer => "XDP steering only",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Variant::AfPacket => "`xdp` off (AF_PACKET rings)",
            Variant::Xdp => {
                "`xdp = \"native\"`, `fast_path = true` (directord's default with XDP: the \
                 program forwards established flows itself and steers the rest to the worker's \
                 AF_XDP sockets)"
            }
            Variant::Steer => {
                "`xdp = \"native\"`, `fast_path = false` (the program only steers the \
                 service's frames to AF_XDP sockets; the worker forwards every packet)"
            }
        }
    }

    /// Measured unless `--paths` says otherwise.
    pub fn by_default(self) -> bool {
        self != Variant::Steer
    }

    /// `[datapath] xdp`.
    pub fn xdp(self) -> Option<&'static str> {
        match self {
            Variant::AfPacket => None,
            Variant::Xdp | Variant::Steer => Some("native"),
        }
    }

    /// More `[datapath]` lines (`key = value`) this variant sets.
    pub fn datapath_keys(self) -> &'static [&'static str] {
        match self {
            Variant::AfPacket => &[],
            Variant::Xdp => &["fast_path = true"],
            Variant::Steer => &["fast_path = false"],
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Path {
    /// directord, `workers = 1`.
    Directord(Lb, Variant),
    /// nftables DNAT + conntrack in the director namespace (NAT topology).
    NftDnat,
    /// Plain kernel forwarding: the client sends to a real server's own address.
    Forward,
    /// HAProxy `mode tcp`, `nbthread 1` (TCP only).
    Haproxy,
    /// Stateless nftables netdev forwarding in the DR topology: the ingress hook rewrites
    /// the MACs and sends the frame back out of `ext`.
    NftFwd,
    /// No director: the client straight at one real server over its own veth (scale).
    Direct,
    /// The XDP ceiling: `xdpceiling` (forwarder/bpf/ceiling.bpf.c) on the director's `ext`
    /// in the NAT topology, every IPv4 frame given rs1's MAC and redirected out of `int`,
    /// nothing looked up (packet rates only).
    Ceiling,
}

impl Path {
    /// The paths measured when `--paths` is not given: all but the steering-only variants.
    pub fn defaults() -> Vec<Path> {
        Path::all()
            .into_iter()
            .filter(|p| match p {
                Path::Directord(_, v) => v.by_default(),
                _ => true,
            })
            .collect()
    }

    /// Every path, in table order.
    pub fn all() -> Vec<Path> {
        let mut v = Vec::new();
        for lb in Lb::ALL {
            for var in Variant::ALL {
                v.push(Path::Directord(lb, var));
            }
        }
        v.extend([
            Path::NftDnat,
            Path::Forward,
            Path::Haproxy,
            Path::NftFwd,
            Path::Direct,
            Path::Ceiling,
        ]);
        v
    }

    /// The XDP program the path runs, as bpftool names it.
    pub fn xdp_prog(self) -> Option<&'static str> {
        match self {
            Path::Directord(_, v) if v.xdp().is_some() => Some("director_xdp"),
            Path::Ceiling => Some("ceiling"),
            _ => None,
        }
    }

    pub fn name(self) -> String {
        match self {
            Path::Directord(lb, v) => {
                let m = match lb {
                    Lb::Nat => "nat",
                    Lb::Dr => "dr",
                    Lb::Tun => "tun",
                    Lb::FullNat => "fullnat",
                };
                format!("{m}{}", v.suffix())
            }
            Path::NftDnat => "nft-dnat".into(),
            Path::Forward => "forward".into(),
            Path::Haproxy => "haproxy".into(),
            Path::NftFwd => "nft-fwd".into(),
            Path::Direct => "direct".into(),
            Path::Ceiling => "xdp-ceiling".into(),
        }
    }

    /// A lab tag (≤ 16 characters).
    pub fn tag(self) -> String {
        let n = self.name().replace("fullnat", "fnat");
        n.chars().take(11).collect()
    }

    pub fn label(self) -> String {
        match self {
            Path::Directord(lb, v) => format!(
                "directord {} {}",
                match lb {
                    Lb::Nat => "NAT",
                    Lb::Dr => "DR",
                    Lb::Tun => "TUN",
                    Lb::FullNat => "FULLNAT",
                },
                v.label()
            ),
            Path::NftDnat => "nftables DNAT".into(),
            Path::Forward => "kernel forwarding".into(),
            Path::Haproxy => "HAProxy mode tcp".into(),
            Path::NftFwd => "nftables netdev fwd (DR)".into(),
            Path::Direct => "straight at one real (no director)".into(),
            Path::Ceiling => "bare XDP_REDIRECT (ceiling)".into(),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Path::Directord(lb, v) => format!(
                "`{}`: directord, `workers = 1`, mode {}, {}",
                self.name(),
                lb.mode().as_str(),
                v.describe()
            ),
            Path::NftDnat => {
                "`nft-dnat`: NAT topology, `ip_forward=1`, an nftables nat prerouting \
                 chain `ip daddr VIP tcp dport 80 dnat to numgen inc mod 3 map { 0 : RS1, 1 : RS2, \
                 2 : RS3 } : 8080` (and likewise for each UDP/TCP port), conntrack as it comes \
                 (`nf_conntrack_max` raised for the SYN flood); the real servers route back \
                 through the director"
                    .into()
            }
            Path::Forward => "`forward`: NAT topology, `ip_forward=1`, no rules; the client sends \
                 straight to rs1's own address (route to 198.18.2.0/24 via the director), so \
                 there is no load balancing: the floor of any in-kernel path"
                .into(),
            Path::Haproxy => {
                "`haproxy`: HAProxy 2.6 `mode tcp`, `nbthread 1`, `balance roundrobin` \
                 over the 3 reals (bulk: rs1 only), in the foreground in the director namespace \
                 (NAT topology, `ip_forward=0`); TCP measures only"
                    .into()
            }
            Path::NftFwd => "`nft-fwd`: DR topology, stateless nftables netdev ingress on `ext`: \
                 `ip daddr VIP udp dport P ether saddr set DIRECTOR ether daddr set jhash ip saddr \
                 . udp sport mod 3 map { 0 : RS1_MAC, ... } fwd to ext` (bulk: rs1's MAC); no \
                 state, the reals hold the VIP on lo and answer the client directly"
                .into(),
            Path::Direct => "`direct`: no director: the client on its own plain veth (offloads \
                 on, no switch) to rs1, for scale; measured in P1 and P3 only (with no director \
                 on the path, P2 places it as P1 does)"
                .into(),
            Path::Ceiling => "`xdp-ceiling`: NAT topology, no directord: `xdpceiling` \
                 (forwarder/bpf/ceiling.bpf.c, native XDP on `ext`, the same wire-like ports as \
                 the XDP variants) gives every IPv4 frame rs1's MAC and the director's `int` MAC \
                 and redirects it out of `int` through a devmap; no parsing past Ethernet, no \
                 lookup, no rewrite: what XDP_REDIRECT itself moves here (packet rates only)"
                .into(),
        }
    }

    pub fn parse_list(s: &str) -> Result<Vec<Path>> {
        let all = Path::all();
        let mut out: Vec<Path> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let picked: Vec<Path> = match item {
                "all" => all.clone(),
                "directord" => all
                    .iter()
                    .copied()
                    .filter(|p| matches!(p, Path::Directord(..)))
                    .collect(),
                "xdp" => all
                    .iter()
                    .copied()
                    .filter(|p| matches!(p, Path::Directord(_, Variant::Xdp)))
                    .collect(),
                "steer" => all
                    .iter()
                    .copied()
                    .filter(|p| matches!(p, Path::Directord(_, Variant::Steer)))
                    .collect(),
                "default" => Path::defaults(),
                "afpacket" => all
                    .iter()
                    .copied()
                    .filter(|p| matches!(p, Path::Directord(_, Variant::AfPacket)))
                    .collect(),
                "baselines" => all.iter().copied().filter(|p| p.is_baseline()).collect(),
                name => match all.iter().find(|p| p.name() == name) {
                    Some(p) => vec![*p],
                    None => bail!("unknown path {name:?}\n{}", crate::plan::USAGE),
                },
            };
            for p in picked {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        // Table order, whatever the order given.
        out.sort_by_key(|p| all.iter().position(|q| q == p));
        Ok(out)
    }

    /// The topology it runs in.
    pub fn mode(self) -> Mode {
        match self {
            Path::Directord(lb, _) => lb.mode(),
            Path::NftFwd => Mode::Dr,
            Path::NftDnat | Path::Forward | Path::Haproxy | Path::Direct | Path::Ceiling => {
                Mode::Nat
            }
        }
    }

    pub fn is_baseline(self) -> bool {
        !matches!(self, Path::Directord(..))
    }

    /// Forwarding done by the kernel itself (P2 gives these RPS over both cores).
    pub fn in_kernel(self) -> bool {
        matches!(self, Path::NftDnat | Path::Forward | Path::NftFwd)
    }

    pub fn applies(self, m: Measure) -> bool {
        match self {
            // A proxy terminates TCP: no UDP, and a SYN flood never reaches a real server.
            Path::Haproxy => matches!(m, Measure::Http | Measure::Bulk | Measure::Latency),
            Path::Direct => matches!(m, Measure::Http | Measure::Bulk | Measure::Latency),
            // It forwards one way only, to one real: packet rates.
            Path::Ceiling => matches!(m, Measure::Rate | Measure::NoLoss),
            Path::Directord(..) => true,
            _ => m != Measure::Memory,
        }
    }

    /// Whether UDP round trips apply (TCP ones always do where latency does).
    pub fn udp(self) -> bool {
        self != Path::Haproxy
    }
}

/// The baselines every table compares against, with the column title of the ratio.
pub const RATIO_BASES: [(Path, &str); 5] = [
    (Path::Ceiling, "÷ XDP ceiling"),
    (Path::NftDnat, "÷ nft DNAT"),
    (Path::Forward, "÷ forward"),
    (Path::Haproxy, "÷ HAProxy"),
    (Path::NftFwd, "÷ netdev fwd"),
];
