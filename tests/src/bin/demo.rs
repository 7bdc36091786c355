//! The demo lab: a client, directors and three real servers in network namespaces.
//! Requests go through the VIP in NAT mode and then in DR mode; the per-server distribution
//! is printed beside the director's own view. Then an HA pair: two directors run VRRP, the
//! client sends a request every 20 ms, and the master is killed with SIGKILL; the backup
//! takes the VIPs and the requests carry on. Run as root (`scripts/demo`).

use std::time::Duration;

use anyhow::{Context, Result};
use director_lab::pair::{Pair, PairSpec};
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

fn failover() -> Result<()> {
    let lab = Lab::new("demo-ha")?;
    let mut spec = PairSpec::new(Mode::Nat);
    spec.interval = "100ms".into();
    println!(
        "\n=== HA pair, NAT: lb-a (priority 200) and lb-b (100) run VRRP v3 every 100 ms for \
         the VIP {VIP} and the real servers' gateway 198.18.2.1 ==="
    );
    let mut pair = Pair::new(lab, spec)?;
    println!("--- lb-a config ---\n{}", pair.config_text(0));
    let t = Duration::from_secs(15);
    pair.start(0)?;
    pair.wait_state(0, "ext", "MASTER", t)?;
    pair.start(1)?;
    pair.wait_state(1, "ext", "BACKUP", t)?;
    let show = |pair: &Pair, n: usize, args: &[&str]| -> Result<String> {
        let out = pair.cli(n, args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    println!(
        "--- lb-a: director vrrp ---\n{}",
        show(&pair, 0, &["vrrp"])?
    );
    println!(
        "--- lb-b: director vrrp ---\n{}",
        show(&pair, 1, &["vrrp"])?
    );
    // One request every 20 ms for 6 s, each on a new connection; print the status codes.
    let script = format!(
        "for i in $(seq 300); do curl -s -m 1 -o /dev/null -w '%{{http_code}}\\n' \
         http://{VIP}:80/; sleep 0.02; done"
    );
    let mut client = pair.client.spawn(["sh", "-c", script.as_str()])?;
    std::thread::sleep(Duration::from_secs(2));
    println!("--- SIGKILL directord on lb-a (the master) ---");
    pair.kill(0)?;
    pair.wait_state(1, "ext", "MASTER", t)?;
    pair.wait_state(1, "int", "MASTER", t)?;
    client.wait_timeout(Duration::from_secs(30))?;
    let codes = client.stdout()?;
    let ok = codes.lines().filter(|l| *l == "200").count();
    let failed = codes.lines().count() - ok;
    println!(
        "--- client: {} requests, {ok} answered, {failed} failed while the VIP moved ---",
        codes.lines().count()
    );
    println!(
        "--- lb-b: director vrrp ---\n{}",
        show(&pair, 1, &["vrrp"])?
    );
    println!(
        "--- lb-b: director events ---\n{}",
        show(&pair, 1, &["events"])?
    );
    println!("(Connections open at the moment of the kill are not carried over until connection sync lands.)");
    Ok(())
}

fn main() -> Result<()> {
    director_lab::preflight()
        .map_err(|e| anyhow::anyhow!("the demo needs root and network namespaces: {e}"))?;
    run("nat", &[1, 2, 3])?;
    run("dr", &[3, 2, 1])?;
    failover()?;
    println!("\nDemo finished; every namespace and process it made has been removed.");
    Ok(())
}
