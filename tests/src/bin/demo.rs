//! The demo lab: a client, a director and three real servers in network namespaces.
//! Requests go through the VIP in NAT mode and then in DR mode; the per-server distribution
//! is printed beside the director's own view. Run as root (`scripts/demo`).
//!
//! VRRP failover joins the demo when the VRRP engine lands (issue 3).

use anyhow::{Context, Result};
use director_lab::topo::{tally, Mode, ServiceSpec, Topo, VIP};
use director_lab::Lab;

const REQUESTS: usize = 300;

fn run(mode: &str, weights: &[u32]) -> Result<()> {
    let lab = Lab::new(&format!("demo-{mode}"))?;
    let mut topo = Topo::new(lab, if mode == "nat" { Mode::Nat } else { Mode::Dr }, 3)?;
    let svc = [ServiceSpec::http("wrr", weights)];
    println!(
        "\n=== {} mode: client 198.18.1.10 → VIP {VIP}:80 → rs1..rs3 ({:?}) ===",
        mode.to_uppercase(),
        topo.real_addrs
    );
    topo.start(&svc).context("starting servers and directord")?;
    println!("--- director config ---\n{}", topo.config_text(&svc));
    println!("--- {REQUESTS} HTTP requests with curl from the client, one connection each ---");
    let names = topo.curl_many(REQUESTS, None)?;
    let counts = tally(&names, 3);
    let total_weight: u32 = weights.iter().sum();
    for (i, c) in counts.iter().enumerate() {
        let expect = REQUESTS as f64 * f64::from(weights[i]) / f64::from(total_weight);
        println!(
            "  rs{} weight {}: {:>4} responses (expected {:.0}) {}",
            i + 1,
            weights[i],
            c,
            expect,
            "#".repeat(c / 5)
        );
    }
    println!(
        "--- director services ---\n{}",
        topo.director_cli(&["services"])?
    );
    println!("--- director stats ---\n{}", topo.director_cli(&["stats"])?);
    let conns = topo.director_cli(&["conns", "--limit", "5"])?;
    println!("--- director conns (first 5) ---\n{conns}");
    Ok(())
}

fn main() -> Result<()> {
    director_lab::preflight()
        .map_err(|e| anyhow::anyhow!("the demo needs root and network namespaces: {e}"))?;
    run("nat", &[1, 2, 3])?;
    run("dr", &[3, 2, 1])?;
    println!("\nDemo finished; every namespace and process it made has been removed.");
    Ok(())
}
