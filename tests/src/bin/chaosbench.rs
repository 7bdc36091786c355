//! `chaosbench`: failover after failover under the product load (see `director_lab::chaos`):
//! whichever node is master is SIGKILLed at a random instant, the other takes over, the
//! killed node restarts and resyncs, again and again, with long streaming connections, idle
//! ones and a stream of short ones checked throughout. Run as root through `scripts/bench
//! chaos`, which builds in release first. It measures and reports; it asserts nothing.
//!
//! `chaosbench [--kills N] [--mode nat|dr|tun|fullnat] [--seed N] [--wait-ms LO,HI]
//! [--sync-cut-every K] [--link-flap-every K] [--resync-kill-every K]` (defaults: 100 rounds,
//! NAT, seed 1, a kill 300–2000 ms after the pair is steady again; every K-th round the
//! backup's sync link is cut for 5 s before the kill, or the master's external link flaps for
//! 1 s instead of a kill, or the restarted node is killed again 0–400 ms into its start).

use anyhow::{bail, Context, Result};
use director_lab::chaos::{self, ChaosSpec};
use director_lab::topo::Mode;
use director_lab::Lab;

fn main() -> Result<()> {
    let mut spec = ChaosSpec::new(Mode::Nat, 100);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--kills" => spec.kills = value()?.parse().context("--kills N")?,
            "--seed" => spec.seed = value()?.parse().context("--seed N")?,
            "--sync-cut-every" => {
                spec.sync_cut_every = Some(value()?.parse().context("--sync-cut-every N")?)
            }
            "--resync-kill-every" => {
                spec.resync_kill_every = Some(value()?.parse().context("--resync-kill-every N")?)
            }
            "--link-flap-every" => {
                spec.link_flap_every = Some(value()?.parse().context("--link-flap-every N")?)
            }
            "--mode" => {
                spec.mode = match value()?.as_str() {
                    "nat" => Mode::Nat,
                    "dr" => Mode::Dr,
                    "tun" => Mode::Tun,
                    "fullnat" => Mode::FullNat,
                    other => bail!("--mode {other:?}: nat, dr, tun or fullnat"),
                }
            }
            "--wait-ms" => {
                let v = value()?;
                let (lo, hi) = v.split_once(',').context("--wait-ms LO,HI")?;
                spec.wait_ms = (lo.parse()?, hi.parse()?);
                if spec.wait_ms.0 >= spec.wait_ms.1 {
                    bail!("--wait-ms LO,HI needs LO < HI");
                }
            }
            "-h" | "--help" => {
                println!("chaosbench [--kills N] [--mode nat|dr|tun|fullnat] [--seed N] [--wait-ms LO,HI] [--sync-cut-every K] [--link-flap-every K] [--resync-kill-every K]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let lab = Lab::new("chaosbench")?;
    let started = std::time::Instant::now();
    let r = chaos::run(lab, &spec)?;
    println!(
        "### Chaos: {} failovers, {} mode, seed {}, {:.0} s\n",
        r.failovers.len(),
        spec.mode.as_str(),
        spec.seed,
        started.elapsed().as_secs_f64()
    );
    println!("{}", chaos::table(&r));
    Ok(())
}
