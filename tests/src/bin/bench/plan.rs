//! What a run measures, where, how long and how often: measures, CPU placements, options.

use anyhow::{bail, Context, Result};

use crate::paths::Path;

/// Where the generator, clients and real-server programs always run.
pub const HOST_CPU: usize = 0;
/// The box's core in P1 and P2.
pub const BOX_CPU: usize = 1;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Measure {
    Rate,
    NoLoss,
    Flows,
    Http,
    Bulk,
    Latency,
    Memory,
}

impl Measure {
    pub const ALL: [Measure; 7] = [
        Measure::Rate,
        Measure::NoLoss,
        Measure::Flows,
        Measure::Http,
        Measure::Bulk,
        Measure::Latency,
        Measure::Memory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Measure::Rate => "rate",
            Measure::NoLoss => "norate",
            Measure::Flows => "flows",
            Measure::Http => "http",
            Measure::Bulk => "bulk",
            Measure::Latency => "latency",
            Measure::Memory => "memory",
        }
    }

    fn parse(s: &str) -> Result<Measure> {
        Ok(match s {
            "rate" => Measure::Rate,
            "norate" | "noloss" | "no-loss" => Measure::NoLoss,
            "flows" => Measure::Flows,
            "http" | "wrk" => Measure::Http,
            "bulk" | "iperf" => Measure::Bulk,
            "latency" | "rtt" => Measure::Latency,
            "memory" => Measure::Memory,
            _ => bail!("unknown measure {s:?} (rate, norate, flows, http, bulk, latency, memory)"),
        })
    }
}

/// A CPU placement: where the box's work runs. The same for every path.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Placement {
    /// The box on one core: the director namespace's processes and its receive processing
    /// (threaded NAPI) on CPU 1; everything else on CPU 0.
    P1,
    /// Receive softirq where veth puts it (the sender's CPU, 0), the box's processes on
    /// CPU 1; kernel baselines spread by RPS over both: the box has two cores.
    P2,
    /// Everything on CPU 0 (latency only).
    P3,
}

impl Placement {
    pub const ALL: [Placement; 3] = [Placement::P1, Placement::P2, Placement::P3];

    pub fn name(self) -> &'static str {
        match self {
            Placement::P1 => "p1",
            Placement::P2 => "p2",
            Placement::P3 => "p3",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Placement::P1 => "P1 box on one core",
            Placement::P2 => "P2 softirq beside the worker (the box has two cores)",
            Placement::P3 => "P3 all on one core (latency only)",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Placement::P1 => {
                "P1 \"box on one core\": the generator, the client programs and the real \
                 servers' programs are pinned to CPU 0 (`taskset -c 0`). The director namespace \
                 gets CPU 1 for everything: directord / HAProxy pinned to CPU 1, and its \
                 receive processing moved there by threaded NAPI (`gro on` and `threaded = 1` on \
                 `ext` and `int`; the `napi/*` kthreads of exactly those interfaces, found \
                 through the netdev netlink family, pinned to CPU 1 once directord runs, since \
                 attaching XDP re-creates them, and again before every measurement). The kernel baselines forward in those \
                 NAPI threads. Receive processing outside the director is steered with RPS \
                 (`rps_cpus = 1`): the client's always; the path after the director (the switch \
                 ports the director sends into, the real servers' `eth0`) for the TCP and \
                 latency measures, so that CPU 1 does not also run the real servers' TCP stacks, \
                 but not for the floods (packet rate, new flows): there it stays in the \
                 director's transmit context, so that the generator alone has CPU 0 and can \
                 offer more than the box forwards, and the box's figures include one bridge hop \
                 and the real server's nftables drop (the same for every path). CPU 1's busy \
                 time is the box's cost; \"ns/pkt\", \"µs/req\" and \"CPU s/GB\" divide it by \
                 the work done."
            }
            Placement::P2 => {
                "P2 \"softirq beside the worker\": as P1 but no threaded NAPI, so the director's \
                 receive processing runs where veth puts it, on the sending CPU (0, with the \
                 generator); directord / HAProxy stay pinned to CPU 1. The kernel baselines \
                 (nftables DNAT, forwarding, netdev forwarding) get RPS `rps_cpus = 3` on the \
                 director's `ext` and `int`, so that they too can use both cores. **P2 gives \
                 the box two cores** (CPU 0 is shared with the generator); compare paths \
                 within it, not with P1."
            }
            Placement::P3 => {
                "P3 \"all on one core\" (latency only): everything, the director's processes \
                 included, on CPU 0, no threaded NAPI, no RPS. In this VM a wake-up of another \
                 CPU costs 50–150 µs and dominates round trips in P1/P2; P3 shows the path \
                 without it."
            }
        }
    }

    /// The CPU of the box's processes (directord, HAProxy).
    pub fn box_cpu(self) -> usize {
        match self {
            Placement::P1 | Placement::P2 => BOX_CPU,
            Placement::P3 => HOST_CPU,
        }
    }

    pub fn allows(self, m: Measure) -> bool {
        match self {
            Placement::P3 => m == Measure::Latency,
            _ => m != Measure::Memory,
        }
    }

    fn parse(s: &str) -> Result<Placement> {
        Ok(match s {
            "p1" | "P1" => Placement::P1,
            "p2" | "P2" => Placement::P2,
            "p3" | "P3" => Placement::P3,
            _ => bail!("unknown placement {s:?} (p1, p2, p3)"),
        })
    }
}

/// Command-line options and what follows from them.
pub struct Opts {
    pub quick: bool,
    pub only: Vec<Measure>,
    pub placements: Vec<Placement>,
    pub paths: Vec<Path>,
    /// `--reps N`: every measure N times; otherwise per measure (see [`Opts::reps`]).
    pub reps: Option<usize>,
    pub perf: Option<std::path::PathBuf>,
    pub out: Option<std::path::PathBuf>,
}

pub const USAGE: &str =
    "usage: bench [--quick] [--only rate,norate,flows,http,bulk,latency,memory] \
     [--placements p1,p2,p3] [--paths LIST] [--reps N] [--perf DIR] [--out FILE]\n\
     paths: nat, nat-xdp, nat-steer, dr, dr-xdp, dr-steer, tun, tun-xdp, tun-steer, fullnat, \
     fullnat-xdp, fullnat-steer, nft-dnat, forward, haproxy, nft-fwd, direct; groups: default \
     (all but the -steer ones), all, directord, afpacket, xdp, steer, baselines";

impl Opts {
    pub fn parse() -> Result<Opts> {
        let mut o = Opts {
            quick: false,
            only: Measure::ALL.to_vec(),
            placements: Placement::ALL.to_vec(),
            paths: Path::defaults(),
            reps: None,
            perf: None,
            out: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("{a} needs a value\n{USAGE}"))
            };
            match a.as_str() {
                "--quick" => o.quick = true,
                "--only" => {
                    o.only = value()?
                        .split(',')
                        .map(Measure::parse)
                        .collect::<Result<_>>()?
                }
                "--placements" => {
                    o.placements = value()?
                        .split(',')
                        .map(Placement::parse)
                        .collect::<Result<_>>()?
                }
                "--paths" => o.paths = Path::parse_list(&value()?)?,
                "--reps" => {
                    let n: usize = value()?.parse().context("--reps N")?;
                    if n == 0 {
                        bail!("--reps must be at least 1");
                    }
                    o.reps = Some(n);
                }
                "--perf" => o.perf = Some(value()?.into()),
                "--out" => o.out = Some(value()?.into()),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                _ => bail!("unknown argument {a:?}\n{USAGE}"),
            }
        }
        o.placements.sort();
        o.placements.dedup();
        Ok(o)
    }

    pub fn wants(&self, m: Measure) -> bool {
        self.only.contains(&m)
    }

    /// Repetitions of a measure. Full run: 3 of the short, noisy ones (flat-out rate, new
    /// flows), 1 of those that are long and average over many samples already (the no-loss
    /// search is itself several trials, wrk 10 s, iperf3 5 s, latency thousands of probes),
    /// so that the full run stays well under an hour. `--quick`: 1. `--reps N`: N of each.
    pub fn reps(&self, m: Measure) -> usize {
        if let Some(n) = self.reps {
            return n;
        }
        if self.quick {
            return 1;
        }
        match m {
            Measure::Rate | Measure::Flows => 3,
            _ => 1,
        }
    }

    /// Flat-out packet-rate trial.
    pub fn rate_secs(&self) -> f64 {
        if self.quick {
            1.0
        } else {
            2.0
        }
    }

    /// One trial of the no-loss search, and the number of trials.
    pub fn noloss_trial(&self) -> (f64, usize) {
        if self.quick {
            (1.0, 3)
        } else {
            (2.0, 4)
        }
    }

    pub fn flows_secs(&self) -> f64 {
        if self.quick {
            1.0
        } else {
            3.0
        }
    }

    pub fn wrk_secs(&self) -> u32 {
        if self.quick {
            2
        } else {
            10
        }
    }

    pub fn iperf_secs(&self) -> u32 {
        if self.quick {
            1
        } else {
            5
        }
    }

    /// (rate per second, probes) of each latency level.
    pub fn latency_levels(&self) -> Vec<(u32, u32)> {
        if self.quick {
            vec![(1, 2), (100, 100), (1000, 300), (10000, 1000)]
        } else {
            vec![(1, 10), (100, 1000), (1000, 1000), (10000, 3000)]
        }
    }
}
