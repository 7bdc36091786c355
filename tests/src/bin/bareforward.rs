//! `bareforward`: the benchmarks' baseline B — the datapath's own AF_PACKET I/O
//! (`forwarder::io::afpacket`: a TPACKET_V3 `RxRing` and a `sendmmsg` `TxBatch`) with no
//! load-balancing logic at all. Every IPv4 frame received on `--in` leaves through `--out`
//! with its MACs rewritten to a fixed next hop; everything else is ignored. The gap between
//! this and `directord` is what the engine (parsing, connection table, scheduling,
//! rewriting) costs.
//!
//! ```text
//! bareforward --in ext --out int --src-mac M --dst-mac M
//! ```
//! Runs until SIGTERM/SIGINT, then prints one JSON line with its counters.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use director_lab::tool::{ifindex, stop_on_signals, stopped, Args};
use director_lab::Mac;
use forwarder::io::afpacket::{wait_readable, RingConfig, RxRing, TxBatch};

struct State {
    tx: TxBatch,
    out: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    rx: u64,
    ignored: u64,
}

fn main() -> Result<()> {
    let args = Args::from_env()?;
    let input = ifindex(args.get("in")?)?;
    let out = ifindex(args.get("out")?)?;
    let src_mac: Mac = args.get("src-mac")?.parse()?;
    let dst_mac: Mac = args.get("dst-mac")?.parse()?;
    stop_on_signals();

    let mut ring = RxRing::open(input, RingConfig::default(), None).context("rx ring")?;
    let mut st = State {
        tx: TxBatch::new(256).context("tx socket")?,
        out,
        src_mac: src_mac.0,
        dst_mac: dst_mac.0,
        rx: 0,
        ignored: 0,
    };
    let fds = [ring.as_raw_fd()];
    let mut pollfds = Vec::with_capacity(1);
    let mut ring_drops: u64 = 0;
    eprintln!("bareforward: ready");
    while !stopped() {
        let drained = ring.drain_block(
            &mut st,
            |st, frame| {
                st.rx += 1;
                let vnet = frame.vnet();
                let data = frame.data_mut();
                if data.len() < 34 || data[12..14] != [0x08, 0x00] {
                    st.ignored += 1;
                    return;
                }
                data[0..6].copy_from_slice(&st.dst_mac);
                data[6..12].copy_from_slice(&st.src_mac);
                let out = st.out;
                st.tx.push(data, vnet, out);
            },
            |st| st.tx.flush(),
        );
        if drained.is_none() {
            let _ = wait_readable(&fds, &mut pollfds, 20);
        }
    }
    if let Ok((_, drops)) = ring.take_stats() {
        ring_drops += u64::from(drops);
    }
    println!(
        "{{\"rx\":{},\"ignored\":{},\"sent\":{},\"tx_errors\":{},\"ring_drops\":{}}}",
        st.rx, st.ignored, st.tx.sent, st.tx.errors, ring_drops
    );
    Ok(())
}
