//! Quiescing a real server at runtime, NAT and DR: a long `/stream` is open through the VIP;
//! `director real drain` on the real that serves it; new connections avoid that real while
//! the open stream keeps flowing to the last byte (no reset, every byte right); the director
//! shows weight 0; `director real weight … 1` brings the real back for new flows.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use director_lab::pattern;
use director_lab::topo::{tally, vip, Mode, ServiceSpec, Topo};
use director_lab::Lab;

/// 3000 writes of 1000 bytes with 1 ms between them: at least 3 s of streaming.
const STREAM_BYTES: u64 = 3_000_000;
/// Read (and check) this much before draining, so the drain lands mid-stream.
const BEFORE_DRAIN: u64 = 100_000;

/// The head of an HTTP response: header values by lower-case name.
struct Head {
    status: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in the response"))
    }
}

fn read_head(r: &mut impl BufRead) -> Head {
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').expect("header with a colon");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Head {
        status: status.trim_end().to_string(),
        headers,
    }
}

/// Reads exactly `n` body bytes from stream offset `offset` and checks each one.
fn read_checked(r: &mut impl Read, offset: u64, n: u64, digest: &mut pattern::Fnv1a) {
    let mut buf = vec![0u8; 65536];
    let mut off = offset;
    while off < offset + n {
        let want = (offset + n - off).min(buf.len() as u64) as usize;
        let got = match r.read(&mut buf[..want]) {
            Ok(n) => n,
            // A signal landed during the read (EINTR): nothing was lost, read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("stream broke at byte {off}: {e}"),
        };
        assert!(
            got > 0,
            "stream ended early at byte {off} of {STREAM_BYTES}"
        );
        assert_eq!(
            pattern::first_mismatch(off, &buf[..got]),
            None,
            "wrong byte in the stream"
        );
        digest.update(&buf[..got]);
        off += got as u64;
    }
}

fn quiesce(tag: &str, mode: Mode) {
    let svc = ServiceSpec::http("rr", &[1, 1, 1]);
    let Some(topo) = Topo::started(tag, mode, std::slice::from_ref(&svc)) else {
        return;
    };

    // The long stream, from a socket made in the client's namespace.
    let stream = topo
        .client
        .in_ns(|| TcpStream::connect_timeout(&SocketAddr::V4(vip(80)), Duration::from_secs(10)))
        .expect("client namespace")
        .expect("connect to the VIP");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    (&stream)
        .write_all(
            format!(
                "GET /stream?bytes={STREAM_BYTES}&chunk=1000&delay_ms=1 HTTP/1.1\r\n\
                 Host: vip\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("send the request");
    let mut body = BufReader::new(&stream);
    let head = read_head(&mut body);
    assert!(head.status.contains(" 200 "), "status {}", head.status);
    assert_eq!(head.get("content-length"), STREAM_BYTES.to_string());
    let real_name = head.get("x-real").to_string();
    let want_digest = head.get("x-stream-fnv1a").to_string();
    let drained = topo
        .real_index(&real_name)
        .unwrap_or_else(|| panic!("unknown real {real_name}"));
    let drained_addr = topo.real_addr(drained, svc.port).to_string();
    let mut digest = pattern::Fnv1a::default();
    read_checked(&mut body, 0, BEFORE_DRAIN, &mut digest);

    // Drain the stream's real.
    let out = topo
        .director_cli(&["real", "drain", "web", &drained_addr])
        .expect("director real drain");
    assert!(out.contains("weight 0"), "drain printed {out:?}");
    let weights = topo.real_field("web", "weight").expect("services --json");
    assert_eq!(weights[drained], 0, "weights after the drain: {weights:?}");
    assert!(
        weights
            .iter()
            .enumerate()
            .all(|(i, &w)| i == drained || w == 1),
        "other weights changed: {weights:?}"
    );
    let conns_at_drain = topo.real_conns("web").expect("services --json");

    // New flows avoid the drained real; the other two take them.
    let names = topo.curl_many(60, None).expect("curl through the VIP");
    let counts = tally(&names, 3);
    assert_eq!(
        counts[drained], 0,
        "the drained {real_name} got new flows: {counts:?}"
    );
    for (i, &n) in counts.iter().enumerate() {
        assert!(
            i == drained || n > 0,
            "rs{} took none of the new flows: {counts:?}",
            i + 1
        );
    }
    let conns = topo.real_conns("web").expect("services --json");
    assert_eq!(
        conns[drained], conns_at_drain[drained],
        "the director counted new connections on the drained real"
    );

    // The open stream finishes on the drained real, every byte right, no reset.
    read_checked(
        &mut body,
        BEFORE_DRAIN,
        STREAM_BYTES - BEFORE_DRAIN,
        &mut digest,
    );
    let mut rest = Vec::new();
    body.read_to_end(&mut rest)
        .expect("clean end of the stream (no reset)");
    assert!(rest.is_empty(), "{} bytes past Content-Length", rest.len());
    assert_eq!(format!("{:016x}", digest.0), want_digest, "body digest");
    drop(body);
    drop(stream);

    // Weight 1 again: the real takes new flows.
    let out = topo
        .director_cli(&["real", "weight", "web", &drained_addr, "1"])
        .expect("director real weight");
    assert!(out.contains("weight 1"), "weight printed {out:?}");
    let weights = topo.real_field("web", "weight").expect("services --json");
    assert_eq!(weights, vec![1, 1, 1]);
    let names = topo.curl_many(30, None).expect("curl through the VIP");
    let counts = tally(&names, 3);
    assert!(
        counts[drained] > 0,
        "{real_name} took no new flows after weight 1: {counts:?}"
    );
}

fn nat_drain_and_restore() {
    quiesce("nat_quiesce", Mode::Nat);
}

fn dr_drain_and_restore() {
    quiesce("dr_quiesce", Mode::Dr);
}

/// The CLI's human tables against a live daemon (after some NAT traffic), and exit code 3
/// where no daemon listens.
fn cli_tables_and_no_daemon() {
    let Some(lab) = Lab::for_test("cli_tables") else {
        return;
    };
    let mut topo = Topo::nat(lab, 3).expect("topology");
    let svc = ServiceSpec::http("wrr", &[1, 2, 3]);
    topo.start(std::slice::from_ref(&svc)).expect("start");
    let names = topo.curl_many(12, None).expect("curl through the VIP");
    let counts = tally(&names, 3);
    assert_eq!(counts, vec![2, 4, 6]);
    let reals: Vec<String> = (0..3).map(|i| topo.real_addr(i, 80).to_string()).collect();

    let services = topo.director_cli(&["services"]).expect("director services");
    let lines: Vec<&str> = services.lines().collect();
    assert!(
        lines[0].starts_with("Prot LocalAddress:Port Scheduler"),
        "header of:\n{services}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("TCP  198.18.1.100:80 wrr [nat]  web: UP, 3/3 healthy")),
        "no service row in:\n{services}"
    );
    for (i, r) in reals.iter().enumerate() {
        let row = lines
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("-> {r} ")))
            .unwrap_or_else(|| panic!("no row for {r} in:\n{services}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &cols[..4],
            &["->", r.as_str(), "Masq", &(i + 1).to_string()],
            "row {row:?}"
        );
        // Active + inactive: every connection of the table for this real.
        let active: usize = cols[4].parse().expect("ActiveConn");
        let inactive: usize = cols[5].parse().expect("InActConn");
        assert!(active + inactive <= counts[i], "row {row:?}");
    }

    let stats = topo.director_cli(&["stats"]).expect("director stats");
    assert!(
        stats.starts_with("Node lab-director  workers 2"),
        "stats:\n{stats}"
    );
    assert!(stats.contains("\nDrops none\n"), "stats:\n{stats}");
    assert!(
        stats.contains("\nTCP 198.18.1.100:80 (web)\n"),
        "stats:\n{stats}"
    );
    for (i, r) in reals.iter().enumerate() {
        let row = stats
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("-> {r} ")))
            .unwrap_or_else(|| panic!("no row for {r} in:\n{stats}"));
        let conns = row.split_whitespace().last().expect("Conns column");
        assert_eq!(conns, counts[i].to_string(), "row {row:?}");
    }

    let conns = topo
        .director_cli(&["conns", "--client", "198.18.1.10"])
        .expect("director conns");
    let mut lines = conns.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.starts_with("Pro FromIP:Port")),
        "conns:\n{conns}"
    );
    let rows: Vec<&str> = lines.filter(|l| l.starts_with("TCP ")).collect();
    assert!(!rows.is_empty(), "no connections listed:\n{conns}");
    for row in &rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert!(cols[1].starts_with("198.18.1.10:"), "row {row:?}");
        assert_eq!(cols[2], "198.18.1.100:80", "row {row:?}");
        assert!(reals.iter().any(|r| r == cols[3]), "row {row:?}");
    }
    let none = topo
        .director_cli(&["conns", "--client", "198.18.1.99"])
        .expect("director conns");
    assert_eq!(none.lines().filter(|l| l.starts_with("TCP ")).count(), 0);

    // No daemon on this socket: exit code 3, for a view and for a change alike.
    let nowhere = topo.lab.dir().join("nobody.sock");
    let director = director_lab::topo::workspace_bin("director").expect("director binary");
    for args in [vec!["stats"], vec!["real", "drain", "web", &reals[0]]] {
        let out = std::process::Command::new(&director)
            .arg("--socket")
            .arg(&nowhere)
            .args(&args)
            .output()
            .expect("running director");
        assert_eq!(out.status.code(), Some(3), "director {args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no daemon"),
            "stderr {out:?}"
        );
    }
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [nat_drain_and_restore, dr_drain_and_restore, cli_tables_and_no_daemon]
}
