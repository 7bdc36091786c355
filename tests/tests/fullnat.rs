//! FULLNAT mode end to end (`Topo::fullnat`): the director rewrites client:cport → VIP:vport
//! into LIP:lport → real:rport and back; the real servers have no route to the client at all
//! (no default route), so only the director's LIPs 198.18.2.5-6 can reach them.
//!
//! - HTTP balanced over the reals, which see only LIPs as peers;
//! - `proxy_protocol = "v2"` with Debian's nginx as the real server (`listen … proxy_protocol`):
//!   every request through the VIP is logged with the client's address as
//!   `$proxy_protocol_addr` and a LIP as `$remote_addr`; keep-alive requests share a
//!   connection; a long download and a long upload through it are byte-exact (every segment's
//!   sequence and acknowledgement numbers shifted by the header's length, both ways);
//! - the nginx instrument itself, with a hand-written PROXY header and no director.
//!
//! UDP balancing is in `udp.rs`, the failover (with and without the PROXY protocol) in
//! `sync_failover.rs`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::Duration;

use director_lab::nginx::{self, Nginx};
use director_lab::pattern;
use director_lab::topo::{tally, Mode, ServiceSpec, Topo, CLIENT, LIPS, VIP};
use director_lab::Lab;

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4) for `src` → `dst`.
fn proxy_v2_header(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// The lab's nginx takes a PROXY v2 header and logs its client address, and refuses a
/// connection that starts without one. No director: the director's namespace (on `int`)
/// talks to rs1 directly.
fn nginx_instrument_logs_the_proxy_protocol_client() {
    let Some(lab) = Lab::for_test("fn-nginx") else {
        return;
    };
    let topo = Topo::fullnat(lab, 1).expect("FULLNAT topology");
    let port = topo.real_port(nginx::PORT);
    let ngx = nginx::start(&topo.lab, &topo.reals[0], "rs1", port).expect("nginx");
    let real = SocketAddrV4::new(topo.real_addrs[0], port);
    let claimed = SocketAddrV4::new(CLIENT, 40000);
    let (with, without) = topo
        .director
        .in_ns(move || -> std::io::Result<(String, String)> {
            let talk = |prefix: &[u8]| -> std::io::Result<String> {
                let mut s = TcpStream::connect(real)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(prefix)?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")?;
                let mut out = Vec::new();
                match s.read_to_end(&mut out) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                    Err(e) => return Err(e),
                }
                Ok(String::from_utf8_lossy(&out).into_owned())
            };
            Ok((
                talk(&proxy_v2_header(
                    claimed,
                    SocketAddrV4::new(VIP, nginx::PORT),
                ))?,
                talk(b"")?,
            ))
        })
        .expect("director namespace")
        .expect("talk to nginx");
    assert!(with.starts_with("HTTP/1.1 200"), "{with}");
    assert!(with.ends_with("\r\n\r\nrs1\n"), "{with}");
    assert!(
        !without.contains("rs1"),
        "served without a PROXY header: {without}"
    );
    let log = ngx.access().expect("access log");
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].proxy, Some(claimed), "{log:?}");
    assert_eq!(*log[0].remote.ip(), Ipv4Addr::new(198, 18, 2, 1), "{log:?}");
}

/// The reals have no route to the client: FULLNAT must not need one.
fn assert_no_route_to_client(topo: &Topo) {
    for h in &topo.reals {
        let r = h.ip(["route", "get", &CLIENT.to_string()]);
        assert!(r.is_err(), "{} has a route to the client: {r:?}", h.name());
    }
}

fn fullnat_http_balanced_reals_see_only_lips() {
    let svc = [ServiceSpec::http("rr", &[1, 1, 1])];
    let Some(topo) = Topo::started("fn-http", Mode::FullNat, &svc) else {
        return;
    };
    assert_no_route_to_client(&topo);
    let names = topo
        .curl_many(30, None)
        .expect("30 requests through the VIP");
    assert_eq!(tally(&names, 3), vec![10, 10, 10], "{names:?}");
    let mut lips = BTreeSet::new();
    for (i, peers) in topo
        .tcp_peers_seen("conn")
        .expect("labsrv")
        .iter()
        .enumerate()
    {
        assert_eq!(peers.len(), 10, "rs{}: {peers:?}", i + 1);
        for p in peers {
            assert!(LIPS.contains(p.ip()), "rs{} saw {p}, not a LIP", i + 1);
            lips.insert(*p.ip());
        }
    }
    eprintln!("fullnat http: LIPs used {lips:?}");
    let stats = topo.director_json("stats").expect("stats");
    let d = &stats["datapath"];
    assert!(
        d["forwarded_in"].as_u64().unwrap_or(0) > 0 && d["forwarded_out"].as_u64().unwrap_or(0) > 0,
        "FULLNAT carries both directions: {stats}"
    );
}

/// `curl` from the client with `args`; stdout.
fn curl(topo: &Topo, args: &[&str]) -> String {
    let mut argv = vec!["curl", "-sS", "--fail", "--max-time", "120"];
    argv.extend_from_slice(args);
    let out = topo
        .client
        .run_timeout(&argv, Duration::from_secs(150))
        .unwrap_or_else(|e| panic!("curl {args:?}: {e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The FULLNAT topology with nginx (PROXY protocol v2) on every real server and the
/// director serving [`nginx::service`].
fn nginx_topo(tag: &str) -> Option<(Topo, Vec<Nginx>)> {
    let lab = Lab::for_test(tag)?;
    let mut topo = Topo::fullnat(lab, 3).expect("FULLNAT topology");
    let ngx = nginx::start_all(&topo.lab, &topo.reals, topo.real_port(nginx::PORT))
        .expect("nginx on the reals");
    topo.start(&[nginx::service("rr", &[1, 1, 1])])
        .expect("director");
    Some((topo, ngx))
}

fn fullnat_proxy_protocol_nginx_logs_the_client() {
    let Some((topo, ngx)) = nginx_topo("fn-pp") else {
        return;
    };
    assert_no_route_to_client(&topo);
    let url = format!("http://{VIP}:{}/", nginx::PORT);
    // 30 connections, then 3 requests on one kept-alive connection.
    let mut names = Vec::new();
    for _ in 0..30 {
        names.push(
            curl(&topo, &["-H", "Connection: close", &url])
                .trim()
                .to_string(),
        );
    }
    assert_eq!(tally(&names, 3), vec![10, 10, 10], "{names:?}");
    let three = curl(&topo, &[&url, &url, &url]);
    let lines: Vec<&str> = three.lines().collect();
    assert_eq!(lines.len(), 3, "{three:?}");
    assert!(lines.iter().all(|l| *l == lines[0]), "{three:?}");

    let mut total = 0;
    let mut kept_alive = None;
    for n in &ngx {
        let log = n.access().expect("access log");
        for a in &log {
            let proxy = a
                .proxy
                .unwrap_or_else(|| panic!("{}: no PROXY address: {a:?}", n.name));
            assert_eq!(*proxy.ip(), CLIENT, "{}: {a:?}", n.name);
            assert!(LIPS.contains(a.remote.ip()), "{}: {a:?}", n.name);
            assert_eq!((a.status, a.uri.as_str()), (200, "/"), "{}: {a:?}", n.name);
        }
        if n.name == lines[0] {
            // The last three lines: one connection (same LIP:lport, same client port).
            let last: Vec<_> = log.iter().rev().take(3).collect();
            assert!(
                last.iter()
                    .all(|a| a.remote == last[0].remote && a.proxy == last[0].proxy),
                "keep-alive requests on different connections: {last:?}"
            );
            kept_alive = Some(last[0].clone());
        }
        total += log.len();
    }
    assert_eq!(total, 33, "requests logged by the three nginx");
    eprintln!("fullnat pp: kept-alive connection as nginx saw it: {kept_alive:?}");
}

/// A long download and a long upload through the PROXY protocol service: every byte exact,
/// so every segment's sequence numbers (toward the real server) and acknowledgement numbers
/// (back to the client) were shifted right.
fn fullnat_proxy_protocol_long_transfers_are_exact() {
    const BYTES: usize = 16 << 20;
    let Some((topo, ngx)) = nginx_topo("fn-pp-bulk") else {
        return;
    };
    let mut data = vec![0u8; BYTES];
    pattern::fill(0, &mut data);
    for n in &ngx {
        n.put_file("big", &data).expect("file for nginx");
    }
    let down = topo.lab.dir().join("down.bin");
    let url = format!("http://{VIP}:{}/files/big", nginx::PORT);
    curl(&topo, &["-o", &down.display().to_string(), &url]);
    let got = std::fs::read(&down).expect("downloaded file");
    assert_eq!(got.len(), BYTES, "download length");
    assert_eq!(pattern::first_mismatch(0, &got), None, "download content");

    let mut up = vec![0u8; BYTES];
    pattern::fill(1 << 40, &mut up);
    let up_path = topo.lab.dir().join("up.bin");
    std::fs::write(&up_path, &up).expect("upload file");
    let url = format!("http://{VIP}:{}/files/up", nginx::PORT);
    curl(&topo, &["-T", &up_path.display().to_string(), &url]);
    let stored: Vec<_> = ngx.iter().filter_map(|n| n.file("up").ok()).collect();
    assert_eq!(stored.len(), 1, "the upload landed on one real server");
    assert_eq!(stored[0].len(), BYTES, "upload length");
    assert_eq!(
        pattern::first_mismatch(1 << 40, &stored[0]),
        None,
        "upload content"
    );
    for n in &ngx {
        for a in n.access().expect("access log") {
            assert_eq!(a.proxy.map(|p| *p.ip()), Some(CLIENT), "{}: {a:?}", n.name);
        }
    }
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [nginx_instrument_logs_the_proxy_protocol_client, fullnat_http_balanced_reals_see_only_lips, fullnat_proxy_protocol_nginx_logs_the_client, fullnat_proxy_protocol_long_transfers_are_exact]
}
