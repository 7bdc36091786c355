//! Measure 6, memory: bytes per connection entry, and directord's resident memory idle and with a
//! million entries in its table (filled by SYN passes over 17 × 64512 unique flows).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::bed::{counter, Bed, Wants, HTTP_PORT};
use crate::flows::{syn_args, PORTS_PER_SOURCE};
use crate::paths::{Lb, Path, Variant};
use crate::plan::Placement;
use crate::rate::pktgen;
use crate::sys::vm_rss_kib;

pub struct Memory {
    pub bytes_per_entry: usize,
    pub entry_size: usize,
    pub capacity: u64,
    pub rss_idle_kib: u64,
    pub rss_full_kib: u64,
    pub count: u64,
    pub fill_secs: f64,
    pub passes: u32,
}

fn table_sizes() -> (usize, usize) {
    use forwarder::conntrack::{ConnEntry, ConnTable};
    use forwarder::model::Timeouts;
    use forwarder::stats::RealRegistry;
    let t = ConnTable::new(
        1 << 20,
        256,
        Timeouts::default(),
        Arc::new(RealRegistry::new(4096)),
    );
    (t.bytes_per_entry(), std::mem::size_of::<ConnEntry>())
}

pub fn memory(quick: bool) -> Result<Memory> {
    let (bytes_per_entry, entry_size) = table_sizes();
    // 17 source addresses × 64512 ports = 1,096,704 unique flows; capacity with headroom so
    // that no shard fills before the table holds a million.
    let sources = 17;
    let unique = u64::from(sources) * PORTS_PER_SOURCE;
    let wants = Wants {
        syn: true,
        max_conns: Some(1_310_720),
        ..Wants::default()
    };
    let bed = Bed::build(
        Path::Directord(Lb::Nat, Variant::AfPacket),
        Placement::P2,
        wants,
    )?;
    let pid = bed
        .topo
        .daemon
        .as_ref()
        .map(|p| p.pid())
        .context("no daemon")?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle_kib = vm_rss_kib(pid)?;
    let mut args = syn_args(sources);
    args.push("--count".into());
    args.push(unique.to_string());
    let start = Instant::now();
    let mut passes = 0;
    let mut count = 0;
    // SYN_RECV entries live 60 s: fill well within that.
    let budget = if quick { 30 } else { 40 };
    while start.elapsed() < Duration::from_secs(budget) {
        pktgen(&bed, bed.target(HTTP_PORT), 20.0, 0.0, &args)?;
        passes += 1;
        std::thread::sleep(Duration::from_millis(200));
        count = bed
            .stats()
            .map_or(0, |s| counter(&s, &["connections", "count"]));
        if count >= 1_000_000 {
            break;
        }
    }
    let fill_secs = start.elapsed().as_secs_f64();
    let rss_full_kib = vm_rss_kib(pid)?;
    let capacity = bed
        .stats()
        .map_or(0, |s| counter(&s, &["connections", "capacity"]));
    Ok(Memory {
        bytes_per_entry,
        entry_size,
        capacity,
        rss_idle_kib,
        rss_full_kib,
        count,
        fill_secs,
        passes,
    })
}
