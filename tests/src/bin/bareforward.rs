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

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use director_lab::Mac;
use forwarder::io::afpacket::{wait_readable, RingConfig, RxRing, TxBatch};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface {name}: {}", io::Error::last_os_error());
    }
    Ok(i)
}

struct State {
    tx: TxBatch,
    out: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    rx: u64,
    ignored: u64,
}

fn main() -> Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut kv = HashMap::new();
    for pair in raw.chunks(2) {
        let [k, v] = pair else {
            bail!("arguments come in --key value pairs");
        };
        kv.insert(k.trim_start_matches("--").to_string(), v.clone());
    }
    let get = |k: &str| kv.get(k).with_context(|| format!("--{k} is required"));
    let input = ifindex(get("in")?)?;
    let out = ifindex(get("out")?)?;
    let src_mac: Mac = get("src-mac")?.parse()?;
    let dst_mac: Mac = get("dst-mac")?.parse()?;

    // SAFETY: installing an async-signal-safe handler that only stores an atomic.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }

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
    while !STOP.load(Ordering::Relaxed) {
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
