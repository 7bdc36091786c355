//! `xdpceiling`: the benchmarks' bare XDP_REDIRECT forwarder (forwarder/bpf/ceiling.bpf.c):
//! every IPv4 frame arriving on `--in` gets the given MACs and is redirected out of `--out`,
//! nothing looked up. What it moves is the ceiling the XDP fast path is measured against.
//!
//! ```text
//! xdpceiling --in ext --out int --src-mac M --dst-mac M [--mode native|generic]
//! ```
//! Prints `xdpceiling: ready` once attached; detaches on SIGTERM/SIGINT (the program is held
//! by a BPF link of this process).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use aya::maps::{Array, DevMapHash};
use aya::programs::{Xdp, XdpMode};
use director_lab::Mac;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// `struct ceiling_cfg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Cfg {
    ifindex: u32,
    dmac: [u8; 6],
    smac: [u8; 6],
}

// SAFETY: plain old data, no padding (4 + 6 + 6 bytes).
unsafe impl aya::Pod for Cfg {}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface {name}");
    }
    Ok(i)
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
    let input = get("in")?.clone();
    let out = ifindex(get("out")?)?;
    let smac: Mac = get("src-mac")?.parse()?;
    let dmac: Mac = get("dst-mac")?.parse()?;
    let mode = match kv.get("mode").map(String::as_str) {
        None | Some("native") => XdpMode::Driver,
        Some("generic") => XdpMode::Skb,
        Some(m) => bail!("--mode {m}: native or generic"),
    };
    let object = forwarder::io::xdp::ceiling_object()
        .context("this build has no XDP programs (clang was missing)")?;
    let mut ebpf = aya::Ebpf::load(object).context("load the ceiling program")?;
    let prog: &mut Xdp = ebpf
        .program_mut("ceiling")
        .context("no ceiling program")?
        .try_into()?;
    prog.load()
        .context("the kernel refused the ceiling program")?;
    prog.attach(&input, mode)
        .with_context(|| format!("attach to {input}"))?;
    let mut ports = DevMapHash::try_from(ebpf.map_mut("ceiling_ports").context("ceiling_ports")?)?;
    ports.insert(out, out, None, 0).context("ceiling_ports")?;
    let mut cfg: Array<_, Cfg> =
        Array::try_from(ebpf.map_mut("ceiling_cfg").context("ceiling_cfg")?)?;
    cfg.set(
        0,
        Cfg {
            ifindex: out,
            dmac: dmac.0,
            smac: smac.0,
        },
        0,
    )
    .context("ceiling_cfg")?;
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
    eprintln!("xdpceiling: ready");
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}
