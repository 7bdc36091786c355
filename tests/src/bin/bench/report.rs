//! Results and their markdown: every run is kept; a table shows per path the median run's
//! figures (the run with the median main figure), the range over repetitions, and the
//! ratios of the medians to each baseline's in the same placement.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::paths::{Path, RATIO_BASES};
use crate::plan::{Measure, Placement};

#[derive(Clone, Debug, Default)]
pub struct Run {
    pub main: f64,
    pub f: BTreeMap<&'static str, f64>,
    pub note: String,
}

impl Run {
    pub fn new(main: f64) -> Run {
        Run {
            main,
            ..Run::default()
        }
    }
    pub fn set(&mut self, k: &'static str, v: f64) {
        self.f.insert(k, v);
    }
    pub fn get(&self, k: &str) -> Option<f64> {
        self.f.get(k).copied()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    m: Measure,
    variant: String,
    pl: Placement,
    path: Path,
}

#[derive(Default)]
pub struct Store {
    runs: BTreeMap<Key, Vec<Run>>,
    failures: Vec<String>,
    /// Setup notes per path (how directord received, NAPI threads pinned), deduplicated.
    setup: BTreeMap<Path, Vec<String>>,
    /// Each measure's variants in the order they were first measured.
    order: Vec<(Measure, String)>,
}

pub struct Agg<'a> {
    pub mid: &'a Run,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

impl Agg<'_> {
    pub fn median(&self) -> f64 {
        self.mid.main
    }
    pub fn f(&self, k: &str) -> Option<f64> {
        self.mid.get(k)
    }
}

impl Store {
    pub fn add(&mut self, m: Measure, variant: &str, pl: Placement, path: Path, run: Run) {
        if !self.order.iter().any(|(om, ov)| *om == m && ov == variant) {
            self.order.push((m, variant.to_string()));
        }
        let key = Key {
            m,
            variant: variant.into(),
            pl,
            path,
        };
        self.runs.entry(key).or_default().push(run);
    }

    pub fn fail(&mut self, what: String) {
        eprintln!("bench: FAILED {what}");
        // One line each in the report (a backtrace, if any, stays on stderr).
        let short: String = what
            .split("Stack backtrace:")
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        self.failures.push(short.chars().take(400).collect());
    }

    pub fn setup_note(&mut self, path: Path, note: &str) {
        let v = self.setup.entry(path).or_default();
        if !v.iter().any(|n| n == note) {
            v.push(note.to_string());
        }
    }

    pub fn agg(&self, m: Measure, variant: &str, pl: Placement, path: Path) -> Option<Agg<'_>> {
        let runs = self.runs.get(&Key {
            m,
            variant: variant.into(),
            pl,
            path,
        })?;
        let mut sorted: Vec<&Run> = runs.iter().collect();
        sorted.sort_by(|a, b| a.main.total_cmp(&b.main));
        Some(Agg {
            mid: sorted[sorted.len() / 2],
            lo: sorted[0].main,
            hi: sorted[sorted.len() - 1].main,
            n: sorted.len(),
        })
    }

    fn has(&self, m: Measure, pl: Placement) -> bool {
        self.runs.keys().any(|k| k.m == m && k.pl == pl)
    }

    fn variants(&self, m: Measure) -> Vec<String> {
        self.order
            .iter()
            .filter(|(om, _)| *om == m)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting

pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn mpps(x: f64) -> String {
    format!("{:.3}", x / 1e6)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.0}", 100.0 * v))
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or("–".into(), f)
}

/// A column beyond path, median, range and ratios.
pub struct Col<'a> {
    pub title: &'a str,
    pub cell: Box<dyn Fn(&Agg) -> String + 'a>,
}

fn col<'a>(title: &'a str, cell: impl Fn(&Agg) -> String + 'a) -> Col<'a> {
    Col {
        title,
        cell: Box::new(cell),
    }
}

struct Table<'a> {
    m: Measure,
    variant: &'a str,
    pl: Placement,
    main: &'a str,
    fmt: &'a dyn Fn(f64) -> String,
    cols: Vec<Col<'a>>,
}

fn render_table(out: &mut String, store: &Store, paths: &[Path], t: &Table) {
    let rows: Vec<(Path, Agg)> = paths
        .iter()
        .filter_map(|p| store.agg(t.m, t.variant, t.pl, *p).map(|a| (*p, a)))
        .collect();
    if rows.is_empty() {
        return;
    }
    let bases: Vec<(Path, &str, f64)> = RATIO_BASES
        .iter()
        .filter_map(|(b, title)| {
            rows.iter()
                .find(|(p, _)| p == b)
                .map(|(_, a)| (*b, *title, a.median()))
        })
        .collect();
    let mut head = format!("| path | {} | range (runs) |", t.main);
    let mut rule = String::from("| --- | ---: | --- |");
    for (_, title, _) in &bases {
        let _ = write!(head, " {title} |");
        rule.push_str(" ---: |");
    }
    // Columns with nothing in them (e.g. P1-only figures in P2) are left out.
    let cols: Vec<&Col> = t
        .cols
        .iter()
        .filter(|c| rows.iter().any(|(_, a)| (c.cell)(a) != "–"))
        .collect();
    for c in &cols {
        let _ = write!(head, " {} |", c.title);
        rule.push_str(" ---: |");
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for (p, a) in &rows {
        let range = if a.n > 1 {
            format!("{}–{} ({})", (t.fmt)(a.lo), (t.fmt)(a.hi), a.n)
        } else {
            "(1)".to_string()
        };
        let mut line = format!("| {} | **{}** | {range} |", p.label(), (t.fmt)(a.median()));
        for (b, _, base) in &bases {
            let cell = if p == b {
                "1".to_string()
            } else if *base > 0.0 {
                format!("{:.2}", a.median() / base)
            } else {
                "–".into()
            };
            let _ = write!(line, " {cell} |");
        }
        for c in &cols {
            let _ = write!(line, " {} |", (c.cell)(a));
        }
        let _ = writeln!(out, "{line}");
    }
    let notes: Vec<String> = rows
        .iter()
        .filter(|(_, a)| !a.mid.note.is_empty())
        .map(|(p, a)| format!("{}: {}", p.name(), a.mid.note))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes (median runs): {}.", notes.join("; "));
    }
    let _ = writeln!(out);
}

/// P1: the box's own threads' CPU (directord or HAProxy, and the director's NAPI threads),
/// as a share of one CPU, and per unit of work (`key`, shown with `decimals`).
fn box_cols<'a>(title: &'a str, key: &'static str, decimals: usize) -> Vec<Col<'a>> {
    vec![
        col("box threads %", |a: &Agg| pct(a.f("box"))),
        col(title, move |a: &Agg| {
            opt(a.f(key), |v| format!("{v:.decimals$}"))
        }),
    ]
}

fn cpu_cols<'a>() -> Vec<Col<'a>> {
    vec![
        col("CPU 0 %", |a| pct(a.f("cpu0"))),
        col("CPU 1 %", |a| pct(a.f("cpu1"))),
    ]
}

// ---------------------------------------------------------------------------------------------
// Sections

pub struct Context<'a> {
    pub paths: &'a [Path],
    pub placements: &'a [Placement],
}

pub fn rate(out: &mut String, s: &Store, cx: &Context, secs: f64, reps: usize) {
    if !cx.placements.iter().any(|pl| s.has(Measure::Rate, *pl)) {
        return;
    }
    let _ = writeln!(
        out,
        "## 1a. 64-byte UDP packets per second through the VIP, flat out\n\n\
         `pktgen` in the client (CPU 0) sends 64-byte frames (60 + the 4-byte FCS) of UDP to \
         VIP:5353 (`forward`: to rs1's address) from {} source ports, flat out, from an \
         AF_PACKET socket with `PACKET_QDISC_BYPASS` in `sendmmsg` batches of 256, for {secs} s; \
         {reps} run(s) per path, interleaved (for each repetition, every path in turn). The \
         three real servers drop the frames in nftables (raw prerouting; TUN: the IPIP frames \
         by their inner port, before the lab's decapsulator). **Delivered = the real servers' \
         `eth0` receive counter delta** / the generator's send time; offered = frames sent / \
         that time. ns/pkt (P1 only) = CPU 1's busy fraction × 10⁹ / delivered pps: the box's \
         cost per forwarded packet when it is saturated, one bridge hop and the real server's \
         drop included (see P1). CPU % = busy (user + system + irq + \
         softirq) per core from /proc/stat over the run. XDP program ns/run: a second, 1 s \
         flat-out trial with `kernel.bpf_stats_enabled = 1`, Δ`run_time_ns` / Δ`run_cnt` of \
         every program of the path (`director_xdp`, `ceiling`; bpftool): the program's own cost per frame it sees, \
         forwarded or passed on (the statistics add a clock read per run).\n",
        crate::rate::FLOWS
    );
    for pl in cx.placements {
        if !s.has(Measure::Rate, *pl) {
            continue;
        }
        let _ = writeln!(out, "### {}\n", pl.title());
        let mut cols = vec![col("offered Mpps", |a: &Agg| opt(a.f("offered"), mpps))];
        cols.extend(cpu_cols());
        cols.push(col("ns/pkt (CPU 1)", |a| {
            opt(a.f("ns_pkt"), |v| format!("{v:.0}"))
        }));
        cols.extend(box_cols("ns/pkt (box threads)", "ns_pkt_box", 0));
        cols.push(col("XDP program ns/run", |a| {
            opt(a.f("bpf_ns"), |v| format!("{v:.0}"))
        }));
        cols.push(col("ring_drops", |a| opt(a.f("ring_drops"), thousands)));
        cols.push(col("tx_errors", |a| opt(a.f("tx_errors"), thousands)));
        render_table(
            out,
            s,
            cx.paths,
            &Table {
                m: Measure::Rate,
                variant: "",
                pl: *pl,
                main: "delivered Mpps",
                fmt: &mpps,
                cols,
            },
        );
    }
}

pub fn noloss(out: &mut String, s: &Store, cx: &Context, trial: (f64, usize)) {
    if !cx.placements.iter().any(|pl| s.has(Measure::NoLoss, *pl)) {
        return;
    }
    let _ = writeln!(
        out,
        "## 1b. No-loss packet rate\n\n\
         The same frames paced (`pktgen --rate`: about 50 µs of frames per `sendmmsg`, the \
         generator sleeping between batches): the highest offered rate whose loss (sent − \
         delivered) / sent is **≤ {} %** over a {} s trial, found by bisection in {} \
         trials over [0, the flat-out offered rate], starting at the flat-out delivered rate \
         (when none passes, up to 4 more, halving the rate, down to 5 kpps). \
         The figure is what was delivered in the best passing trial; \"failed at\" is the \
         lowest rate that lost more (the search's upper bound). A search that passes at the \
         generator's own limit shows that limit (a lower bound). CPU, ns/pkt and counters are \
         from the best passing trial: the cost below saturation. **Read P1's no-loss figures \
         with care:** there the director's receive is a NAPI kthread on CPU 1, woken from CPU 0 \
         for each paced burst, and veth's receive ring holds a fixed 256 frames; in this VM a \
         cross-CPU wake-up takes 50–150 µs with tails of milliseconds (see the round trips \
         below), so above a few tens of kpps the ring overflows now and then on every path, \
         with CPU 1 mostly idle (`BENCH_DEBUG=1` shows the drops at the switch port into the \
         director). Flat out the thread never sleeps and this does not arise; in P2 the \
         receive runs in the sender's own softirq.\n",
        100.0 * crate::rate::LOSS_MAX,
        trial.0,
        trial.1
    );
    for pl in cx.placements {
        if !s.has(Measure::NoLoss, *pl) {
            continue;
        }
        let _ = writeln!(out, "### {}\n", pl.title());
        let mut cols = vec![
            col("failed at Mpps", |a: &Agg| opt(a.f("upper"), mpps)),
            col("loss %", |a| {
                opt(a.f("loss"), |v| format!("{:.3}", 100.0 * v))
            }),
        ];
        cols.extend(cpu_cols());
        cols.push(col("ns/pkt (CPU 1)", |a| {
            opt(a.f("ns_pkt"), |v| format!("{v:.0}"))
        }));
        cols.extend(box_cols("ns/pkt (box threads)", "ns_pkt_box", 0));
        cols.push(col("trials", |a| opt(a.f("trials"), |v| format!("{v:.0}"))));
        render_table(
            out,
            s,
            cx.paths,
            &Table {
                m: Measure::NoLoss,
                variant: "",
                pl: *pl,
                main: "no-loss Mpps",
                fmt: &mpps,
                cols,
            },
        );
    }
}

pub fn flows(out: &mut String, s: &Store, cx: &Context, secs: f64, reps: usize) {
    if !cx.placements.iter().any(|pl| s.has(Measure::Flows, *pl)) {
        return;
    }
    let _ = writeln!(
        out,
        "## 2. New flows per second (SYN flood)\n\n\
         `pktgen --mode syn` sends TCP SYNs to VIP:80 (`forward`: rs1:8080), each from a new \
         (address, port): 64 client addresses 198.18.1.64–127 × ports 1024–65535 (4.1 M \
         unique flows, none repeats), flat out for {secs} s, {reps} run(s) per path. \
         **Delivered = SYNs arriving at the real servers** (their `eth0` receive counter \
         delta; they drop them in nftables) per second; directord's `new_conns` beside it. \
         3 real servers (FULLNAT 24: 2 LIPs × 64,512 ports each, about a third used by a 3 s flood, so that the port walk is measured and not the end of the ports). directord: \
         `max_connections = 4194304`; nftables: `nf_conntrack_max = 4194304` (a global \
         setting, writable only in the root namespace: raised for the run and put back \
         after); `table` = directord's connection count or the director's conntrack count \
         after the run. `forward` and `nft-fwd` keep no state: their figure is the cost of \
         moving a SYN, not of creating a flow.\n"
    );
    for pl in cx.placements {
        if !s.has(Measure::Flows, *pl) {
            continue;
        }
        let _ = writeln!(out, "### {}\n", pl.title());
        let mut cols = vec![
            col("offered SYN/s", |a: &Agg| opt(a.f("offered"), thousands)),
            col("directord new_conns/s", |a| {
                opt(a.f("new_conns"), thousands)
            }),
            col("table", |a| opt(a.f("count"), thousands)),
            col("ring_drops", |a| opt(a.f("ring_drops"), thousands)),
        ];
        cols.extend(cpu_cols());
        cols.push(col("ns/flow (CPU 1)", |a| {
            opt(a.f("ns_flow"), |v| format!("{v:.0}"))
        }));
        cols.extend(box_cols("ns/flow (box threads)", "ns_flow_box", 0));
        render_table(
            out,
            s,
            cx.paths,
            &Table {
                m: Measure::Flows,
                variant: "",
                pl: *pl,
                main: "SYNs delivered/s",
                fmt: &thousands,
                cols,
            },
        );
    }
}

pub fn http(out: &mut String, s: &Store, cx: &Context, secs: u32) {
    if !cx.placements.iter().any(|pl| s.has(Measure::Http, *pl)) {
        return;
    }
    let _ = writeln!(
        out,
        "## 3. HTTP requests per second (wrk → nginx)\n\n\
         `wrk -t1 -c32 -d{secs}s` in the client (CPU 0) against VIP:80 (`forward`: rs1:8080; \
         `direct`: rs1 over its own veth), keep-alive and with `Connection: close` (every \
         request a new TCP connection). Each real server runs Debian's nginx 1.22, \
         `worker_processes 1`, pinned to CPU 0, serving a 100-byte static file, no access \
         log; 3 real servers, round robin (`forward` and `direct`: rs1 only). µs/req (P1) = \
         CPU 1's busy time per request. errors = wrk's socket errors + non-2xx answers. TUN \
         includes the lab's user-space decapsulator on the real servers (CPU 0).\n"
    );
    for pl in cx.placements {
        for variant in s.variants(Measure::Http) {
            if !cx
                .paths
                .iter()
                .any(|p| s.agg(Measure::Http, &variant, *pl, *p).is_some())
            {
                continue;
            }
            let _ = writeln!(out, "### {}, {variant}\n", pl.title());
            let mut cols = vec![col("errors", |a: &Agg| {
                opt(
                    Some(a.f("errors").unwrap_or(0.0) + a.f("non2xx").unwrap_or(0.0)),
                    thousands,
                )
            })];
            cols.extend(cpu_cols());
            cols.push(col("µs/req (CPU 1)", |a| {
                opt(a.f("us_req"), |v| format!("{v:.1}"))
            }));
            cols.extend(box_cols("µs/req (box threads)", "us_req_box", 1));
            render_table(
                out,
                s,
                cx.paths,
                &Table {
                    m: Measure::Http,
                    variant: &variant,
                    pl: *pl,
                    main: "requests/s",
                    fmt: &thousands,
                    cols,
                },
            );
        }
    }
}

pub fn bulk(out: &mut String, s: &Store, cx: &Context, secs: u32) {
    if !cx.placements.iter().any(|pl| s.has(Measure::Bulk, *pl)) {
        return;
    }
    let _ = writeln!(
        out,
        "## 4. Bulk TCP (iperf3)\n\n\
         `iperf3 -c VIP -p 5201 -t {secs} -J` (and `-P 4`) from the client (CPU 0) to \
         `iperf3 -s` on rs1 (CPU 0; the bulk service has rs1 only, so that iperf3's control \
         and data connections meet one server); NAT and FULLNAT map the port. Gbit/s = \
         `end.sum_received.bits_per_second`; retransmits = `end.sum_sent.retransmits`; \
         directord's `tx_errors` and `tx_waits` deltas. CPU s/GB (P1) = CPU 1's busy \
         CPU-seconds over the iperf3 run per GB received. MTU 1500 everywhere; the wire-like \
         switch ports segment the client's TSO bursts before the director, and GRO on the \
         director's interfaces may merge them again (the same for every path). TUN includes \
         the lab's user-space decapsulator on rs1 (CPU 0), which bounds it.\n"
    );
    for pl in cx.placements {
        for variant in s.variants(Measure::Bulk) {
            if !cx
                .paths
                .iter()
                .any(|p| s.agg(Measure::Bulk, &variant, *pl, *p).is_some())
            {
                continue;
            }
            let _ = writeln!(out, "### {}, {variant}\n", pl.title());
            let mut cols = vec![
                col("retransmits", |a: &Agg| opt(a.f("retransmits"), thousands)),
                col("tx_errors", |a| opt(a.f("tx_errors"), thousands)),
                col("tx_waits", |a| opt(a.f("tx_waits"), thousands)),
            ];
            cols.extend(cpu_cols());
            cols.push(col("CPU s/GB (CPU 1)", |a| {
                opt(a.f("cpu_s_gb"), |v| format!("{v:.3}"))
            }));
            cols.extend(box_cols("CPU s/GB (box threads)", "cpu_s_gb_box", 3));
            render_table(
                out,
                s,
                cx.paths,
                &Table {
                    m: Measure::Bulk,
                    variant: &variant,
                    pl: *pl,
                    main: "Gbit/s",
                    fmt: &|v| format!("{v:.2}"),
                    cols,
                },
            );
        }
    }
}

pub fn latency(out: &mut String, s: &Store, cx: &Context, levels: &[(u32, u32)]) {
    if !cx.placements.iter().any(|pl| s.has(Measure::Latency, *pl)) {
        return;
    }
    let lv: Vec<String> = levels.iter().map(|(r, n)| format!("{r}/s × {n}")).collect();
    let _ = writeln!(
        out,
        "## 5. Round-trip latency at low load (rttping)\n\n\
         `rttping` in the client (CPU 0): UDP datagrams, and TCP over one connection \
         (`TCP_NODELAY`), 32 bytes, each answered by `rttping --serve` on the real server the \
         path picks (`forward`, `direct`: rs1), one probe at a time on a fixed schedule; \
         levels {} probes (after 10 warm-up probes, 1 at 1/s). At 1/s the UDP and TCP probes \
         run at the same time, half a second apart; the other levels one after the other. \
         The round trip is taken around the blocking send and receive (`CLOCK_MONOTONIC`), so \
         it includes both hosts' stacks. Cells are p50 / p99 / p99.9 in µs (1/s: p50 / max); \
         the ratios compare p50 at 1000/s.\n",
        lv.join(", ")
    );
    for pl in cx.placements {
        if !s.has(Measure::Latency, *pl) {
            continue;
        }
        for proto in ["udp", "tcp"] {
            let rows: Vec<Path> = cx
                .paths
                .iter()
                .copied()
                .filter(|p| {
                    levels.iter().any(|(r, _)| {
                        s.agg(Measure::Latency, &format!("{proto} {r}/s"), *pl, *p)
                            .is_some()
                    })
                })
                .collect();
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(out, "### {}, {}\n", pl.title(), proto.to_uppercase());
            let cmp = levels
                .iter()
                .map(|(r, _)| *r)
                .find(|r| *r == 1000)
                .unwrap_or(levels.last().map_or(1, |l| l.0));
            let cmp_variant = format!("{proto} {cmp}/s");
            let bases: Vec<(&str, f64)> = RATIO_BASES
                .iter()
                .filter_map(|(b, t)| {
                    rows.contains(b)
                        .then(|| s.agg(Measure::Latency, &cmp_variant, *pl, *b))
                        .flatten()
                        .map(|a| (*t, a.median()))
                })
                .collect();
            let mut head = String::from("| path |");
            let mut rule = String::from("| --- |");
            for (r, _) in levels {
                let _ = write!(head, " {r}/s |");
                rule.push_str(" ---: |");
            }
            head.push_str(" lost |");
            rule.push_str(" ---: |");
            for (t, _) in &bases {
                let _ = write!(head, " p50 {t} |");
                rule.push_str(" ---: |");
            }
            let _ = writeln!(out, "{head}\n{rule}");
            for p in &rows {
                let mut line = format!("| {} |", p.label());
                let mut lost = 0.0;
                for (r, _) in levels {
                    let a = s.agg(Measure::Latency, &format!("{proto} {r}/s"), *pl, *p);
                    let cell = match a {
                        None => "–".to_string(),
                        Some(a) => {
                            lost += a.f("lost").unwrap_or(0.0);
                            let g = |k: &str| a.f(k).map_or("?".into(), |v| format!("{v:.0}"));
                            if *r <= 1 {
                                format!("{} / {}", g("p50"), g("max"))
                            } else {
                                format!("{} / {} / {}", g("p50"), g("p99"), g("p999"))
                            }
                        }
                    };
                    let _ = write!(line, " {cell} |");
                }
                let _ = write!(line, " {} |", thousands(lost));
                let mine = s
                    .agg(Measure::Latency, &cmp_variant, *pl, *p)
                    .map(|a| a.median());
                for (_, base) in &bases {
                    let cell = match mine {
                        Some(m) if *base > 0.0 => format!("{:.2}", m / base),
                        _ => "–".into(),
                    };
                    let _ = write!(line, " {cell} |");
                }
                let _ = writeln!(out, "{line}");
            }
            let _ = writeln!(out);
        }
    }
}

pub fn memory(out: &mut String, m: &crate::memory::Memory) {
    let _ = writeln!(out, "## 6. Memory\n");
    let _ = writeln!(out, "| measure | value |\n| --- | ---: |");
    let _ = writeln!(
        out,
        "| `ConnTable::bytes_per_entry()` (2^20 entries, 256 shards) | {} B |",
        m.bytes_per_entry
    );
    let _ = writeln!(out, "| `size_of::<ConnEntry>()` | {} B |", m.entry_size);
    let _ = writeln!(
        out,
        "| directord VmRSS idle (table capacity {}) | {:.1} MiB |",
        thousands(m.capacity as f64),
        m.rss_idle_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| directord VmRSS with {} entries (filled in {:.1} s, {} SYN passes) | {:.1} MiB |",
        thousands(m.count as f64),
        m.fill_secs,
        m.passes,
        m.rss_full_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| RSS growth per entry while filling | {:.1} B |\n",
        (m.rss_full_kib.saturating_sub(m.rss_idle_kib) * 1024) as f64 / m.count.max(1) as f64
    );
}

pub fn tail(out: &mut String, s: &Store) {
    if !s.setup.is_empty() {
        let _ = writeln!(out, "## Setup as observed\n");
        for (p, notes) in &s.setup {
            let _ = writeln!(out, "- {}: {}", p.name(), notes.join("; "));
        }
        let _ = writeln!(out);
    }
    if !s.failures.is_empty() {
        let _ = writeln!(out, "## Failures\n");
        for f in &s.failures {
            let _ = writeln!(out, "- {}", f.replace('\n', " "));
        }
        let _ = writeln!(out);
    }
}
