//! The demo lab: a client, directors and three real servers in network namespaces, every
//! director on the XDP datapath (`xdp = "native"`: established flows forwarded by the XDP
//! program itself, the rest by the workers). Requests go through the VIP in NAT mode and
//! then in DR mode; the per-server distribution is printed beside the director's own view,
//! then a long TCP connection shows the fast path at work. Then an HA pair: two directors run VRRP and
//! sync their connection tables; the client holds long echo connections and opens short
//! ones; the master is killed with SIGKILL, the backup takes the VIPs and every connection
//! carries on; the killed node comes back, resyncs and takes the VIPs back, losing nothing
//! either. Run as root (`scripts/demo`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};
use director_lab::pair::{Pair, PairSpec};
use director_lab::topo::{tally, vip, workspace_bin, Mode, ServiceSpec, Topo, ECHO_PORT, VIP};
use director_lab::{wait_until, Lab, Signal};

const REQUESTS: usize = 300;

fn run(mode: &str, weights: &[u32]) -> Result<()> {
    let lab = Lab::new(&format!("demo-{mode}"))?;
    let mut topo = Topo::new(lab, if mode == "nat" { Mode::Nat } else { Mode::Dr }, 3)?;
    topo.use_xdp("native")?;
    let svc = [
        ServiceSpec::http("wrr", weights),
        ServiceSpec::echo("rr", &[1, 1, 1]),
    ];
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
    // One long connection: after its handshake the XDP program forwards it by itself.
    let mut s = topo.client.in_ns(|| {
        TcpStream::connect_timeout(&SocketAddr::V4(vip(ECHO_PORT)), Duration::from_secs(5))
    })??;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let me = s.local_addr()?;
    let mut back = [0u8; 1000];
    let msg = [0x5au8; 1000];
    for _ in 0..2000 {
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
    }
    println!(
        "--- a TCP echo connection from {me}: 2000 round trips of 1000 bytes; director conns \
         --client 198.18.1.10 shows its path ---"
    );
    println!(
        "{}",
        topo.director_cli(&["conns", "--client", "198.18.1.10", "--service", "tcp-echo"])?
    );
    println!(
        "--- director stats: the XDP lines are what the program forwarded itself ---\n{}",
        topo.director_cli(&["stats"])?
    );
    println!(
        "--- director status ---\n{}",
        topo.director_cli(&["status"])?
    );
    drop(s);
    Ok(())
}

fn failover() -> Result<()> {
    let lab = Lab::new("demo-ha")?;
    let mut spec = PairSpec::new(Mode::Nat);
    spec.interval = "100ms".into();
    spec.sync = true;
    spec.xdp = Some("native");
    spec.services = vec![
        ServiceSpec::http("rr", &[1, 1, 1]),
        ServiceSpec::echo("rr", &[1, 1, 1]),
    ];
    println!(
        "\n=== HA pair, NAT, XDP on both: lb-a (priority 200) and lb-b (100) run VRRP v3 every \
         100 ms for the VIP {VIP} and the real servers' gateway 198.18.2.1, and sync their \
         connection tables over 198.18.3.0/24; the standby's replicas are in its XDP flow map \
         too, so it forwards them from the first packet after a takeover ==="
    );
    let mut pair = Pair::new(lab, spec)?;
    println!("--- lb-a config ---\n{}", pair.config_text(0));
    let t = Duration::from_secs(15);
    pair.start(0)?;
    pair.wait_state(0, "ext", "MASTER", t)?;
    pair.start(1)?;
    pair.wait_state(1, "ext", "BACKUP", t)?;
    wait_until(t, || pair.sync_resync_complete(1).unwrap_or(false))?;
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
    // 50 long echo connections streaming a checked byte sequence, and 20 new HTTP
    // connections a second that idle 1.5 s after their handshake.
    println!(
        "--- client: flowcheck holds 50 echo connections (20 kB/s each, every byte checked) and \
         opens 20 short HTTP connections a second ---"
    );
    let flowcheck = workspace_bin("flowcheck")?;
    let mut client = pair.client.spawn([
        flowcheck.display().to_string(),
        "--target".into(),
        vip(ECHO_PORT).to_string(),
        "--long".into(),
        "50".into(),
        "--short-target".into(),
        vip(80).to_string(),
    ])?;
    wait_until(t, || client.stderr().is_ok_and(|e| e.contains("ready")))?;
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "--- lb-b: director conns (first 5): the standby's replicas ---\n{}",
        show(&pair, 1, &["conns", "--limit", "5"])?
    );
    println!(
        "--- lb-b: director sync ---\n{}",
        show(&pair, 1, &["sync"])?
    );
    println!("--- SIGKILL directord on lb-a (the master) ---");
    pair.kill(0)?;
    pair.wait_state(1, "ext", "MASTER", t)?;
    pair.wait_state(1, "int", "MASTER", t)?;
    std::thread::sleep(Duration::from_secs(3));
    println!("--- start lb-a again: it resyncs from lb-b, then takes the VIPs back ---");
    pair.start(0)?;
    wait_until(t, || pair.sync_resync_complete(0).unwrap_or(false))?;
    pair.wait_state(0, "ext", "MASTER", t)?;
    std::thread::sleep(Duration::from_secs(2));
    client.kill(Signal::Term)?;
    client.wait_timeout(Duration::from_secs(30))?;
    let report: serde_json::Value =
        serde_json::from_str(client.stdout()?.trim()).context("flowcheck's report")?;
    let (long, short) = (&report["long"], &report["short"]);
    println!(
        "--- client: long connections {} of {} intact ({} bytes echoed and checked, {} reset, \
         {} corrupt), longest stall {:.0} ms; short connections {} of {} answered ---",
        long["ok"],
        long["count"],
        long["bytes"],
        long["reset"],
        long["corrupt"],
        long["max_stall_ms"].as_f64().unwrap_or(f64::NAN),
        short["ok"],
        short["opened"],
    );
    println!(
        "--- lb-a: director sync ---\n{}",
        show(&pair, 0, &["sync"])?
    );
    println!(
        "--- lb-a: director events ---\n{}",
        show(&pair, 0, &["events"])?
    );
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
