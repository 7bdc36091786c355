//! `xdpceiling`: the benchmarks' bare XDP_REDIRECT forwarder (forwarder/bpf/ceiling.bpf.c):
//! every IPv4 frame arriving on `--in` gets the given MACs and is redirected out of `--out`,
//! nothing looked up. What it moves is the ceiling the XDP fast path is measured against.
//!
//! ```text
//! xdpceiling --in ext --out int --src-mac M --dst-mac M [--mode native|generic]
//! ```
//! Prints `xdpceiling: ready` once attached; detaches on SIGTERM/SIGINT (the program is held
//! by a BPF link of this process).

use anyhow::{bail, Context, Result};
use aya::maps::{Array, DevMapHash};
use aya::programs::{Xdp, XdpMode};
use director_lab::tool::{ifindex, stop_on_signals, stopped, Args};
use director_lab::Mac;

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

fn main() -> Result<()> {
    let args = Args::from_env()?;
    let input = args.get("in")?.to_string();
    let out = ifindex(args.get("out")?)?;
    let smac: Mac = args.get("src-mac")?.parse()?;
    let dmac: Mac = args.get("dst-mac")?.parse()?;
    let mode = match args.opt("mode") {
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
    stop_on_signals();
    eprintln!("xdpceiling: ready");
    while !stopped() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}
