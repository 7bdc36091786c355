//! `labsrv`: the lab's real server, on the kernel's own TCP and UDP stacks.
//!
//! ```text
//! labsrv --name rs1 [--http ADDR]... [--udp ADDR]... [--echo ADDR]... [--echo-proxy ADDR]...
//! labsrv --udp-client ADDR PAYLOAD [--timeout-ms N]
//! ```
//!
//! HTTP/1.1 (thread per connection, keep-alive unless `Connection: close`):
//! - `GET /` → 200, body `NAME\n`, headers `X-Real: NAME` and `X-Peer: IP:PORT` (the client
//!   address this server saw, to tell NAT/DR from FULLNAT);
//! - `GET /healthz` → 200 `ok\n`;
//! - `GET /stream?bytes=N&chunk=M&delay_ms=D` → N bytes of `director_lab::pattern`, written M
//!   at a time with D ms between writes, with `X-Stream-Fnv1a` (the body's digest);
//! - anything else → 404.
//!
//! TCP echo (`--echo`, thread per connection): everything read is written back until the
//! client's EOF, then the connection is closed. For DR/TUN real servers `0.0.0.0:PORT` is
//! enough (the VIP is on `lo`, and TCP answers from the address the SYN was sent to).
//!
//! TCP echo behind the PROXY protocol (`--echo-proxy`, for FULLNAT with `proxy_protocol =
//! "v2"`): each connection must start with a PROXY protocol v2 header (the 16-byte preamble
//! and its address block, TLVs skipped); its addresses are logged, and everything after it is
//! echoed as by `--echo`. A connection without a valid header is closed.
//!
//! UDP: every datagram is answered with `NAME ` + payload, from the socket it came in on. For
//! DR/TUN real servers bind the VIP itself (`--udp VIP:PORT`), so replies leave from the VIP.
//!
//! stdout gets one line per accepted TCP connection (`conn peer=… local=…`, or `echo peer=…
//! local=…` for the echo service; `echo-proxy peer=… local=…` and, once its header is read,
//! `proxy peer=… client=SRC:PORT dst=DST:PORT`, or `proxy peer=… bad=WHY`) and per datagram
//! (`udp peer=… len=…`), so tests count what reached each real server; `ready` follows once
//! every socket is bound. SIGTERM/SIGINT end it at once (default disposition, restored at
//! start in case the parent ignored them).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use director_lab::pattern;

const MAX_LINE: usize = 8192;
const MAX_HEADERS: usize = 100;

struct Args {
    name: String,
    http: Vec<SocketAddr>,
    udp: Vec<SocketAddr>,
    echo: Vec<SocketAddr>,
    echo_proxy: Vec<SocketAddr>,
    udp_client: Option<(SocketAddr, String)>,
    timeout: Duration,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        name: "labsrv".into(),
        http: Vec::new(),
        udp: Vec::new(),
        echo: Vec::new(),
        echo_proxy: Vec::new(),
        udp_client: None,
        timeout: Duration::from_secs(2),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => a.name = value()?,
            "--http" => a.http.push(value()?.parse().context("--http ADDR:PORT")?),
            "--udp" => a.udp.push(value()?.parse().context("--udp ADDR:PORT")?),
            "--echo" => a.echo.push(value()?.parse().context("--echo ADDR:PORT")?),
            "--echo-proxy" => a
                .echo_proxy
                .push(value()?.parse().context("--echo-proxy ADDR:PORT")?),
            "--udp-client" => {
                let addr = value()?.parse().context("--udp-client ADDR:PORT")?;
                a.udp_client = Some((addr, value()?));
            }
            "--timeout-ms" => a.timeout = Duration::from_millis(value()?.parse()?),
            "-h" | "--help" => {
                println!(
                    "labsrv --name NAME [--http ADDR]... [--udp ADDR]... [--echo ADDR]... \
                     [--echo-proxy ADDR]...\n\
                     labsrv --udp-client ADDR PAYLOAD [--timeout-ms N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.udp_client.is_none()
        && a.http.is_empty()
        && a.udp.is_empty()
        && a.echo.is_empty()
        && a.echo_proxy.is_empty()
    {
        bail!("nothing to serve: give --http, --udp and/or --echo (or --udp-client)");
    }
    Ok(a)
}

fn main() -> ExitCode {
    // SAFETY: restoring default dispositions before any thread exists.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("labsrv: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    if let Some((addr, payload)) = &args.udp_client {
        let reply = udp_client(*addr, payload.as_bytes(), args.timeout)?;
        println!("{}", String::from_utf8_lossy(&reply));
        return Ok(());
    }
    let name: Arc<str> = args.name.into();
    let mut threads = Vec::new();
    for addr in &args.http {
        let l = TcpListener::bind(addr).with_context(|| format!("cannot listen on tcp {addr}"))?;
        println!("listening http {}", l.local_addr()?);
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            accept_loop(l, "conn", move |stream, peer| serve(stream, &name, peer))
        }));
    }
    for addr in &args.echo {
        let l = TcpListener::bind(addr).with_context(|| format!("cannot listen on tcp {addr}"))?;
        println!("listening echo {}", l.local_addr()?);
        threads.push(std::thread::spawn(move || {
            accept_loop(l, "echo", |stream, _| echo(stream))
        }));
    }
    for addr in &args.echo_proxy {
        let l = TcpListener::bind(addr).with_context(|| format!("cannot listen on tcp {addr}"))?;
        println!("listening echo-proxy {}", l.local_addr()?);
        threads.push(std::thread::spawn(move || {
            accept_loop(l, "echo-proxy", |mut stream, peer| {
                match read_proxy_v2(&mut stream) {
                    Ok((client, dst)) => println!("proxy peer={peer} client={client} dst={dst}"),
                    Err(e) => {
                        println!(
                            "proxy peer={peer} bad={}",
                            format!("{e:#}").replace(' ', "_")
                        );
                        return Err(e);
                    }
                }
                echo(stream)
            })
        }));
    }
    for addr in &args.udp {
        let s = UdpSocket::bind(addr).with_context(|| format!("cannot bind udp {addr}"))?;
        println!("listening udp {}", s.local_addr()?);
        let name = name.clone();
        threads.push(std::thread::spawn(move || udp_loop(s, name)));
    }
    println!("ready");
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn udp_client(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let any = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = UdpSocket::bind(any)?;
    s.set_read_timeout(Some(timeout))?;
    s.connect(addr)?;
    s.send(payload)?;
    let mut buf = vec![0u8; 65536];
    let n = loop {
        match s.recv(&mut buf) {
            // A signal landed during the wait (EINTR): nothing was lost, wait again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => {
                break other.with_context(|| format!("no reply from {addr} within {timeout:?}"))?
            }
        }
    };
    buf.truncate(n);
    Ok(buf)
}

fn udp_loop(s: UdpSocket, name: Arc<str>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = match s.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("udp recv: {e}");
                continue;
            }
        };
        println!("udp peer={peer} len={n}");
        let mut reply = Vec::with_capacity(name.len() + 1 + n);
        reply.extend_from_slice(name.as_bytes());
        reply.push(b' ');
        reply.extend_from_slice(&buf[..n]);
        if let Err(e) = s.send_to(&reply, peer) {
            eprintln!("udp reply to {peer}: {e}");
        }
    }
}

/// Accepts connections forever, printing `KIND peer=… local=…` for each and running
/// `handle` on a thread of its own.
fn accept_loop<F>(l: TcpListener, kind: &'static str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Result<()> + Clone + Send + 'static,
{
    loop {
        match l.accept() {
            Ok((stream, peer)) => {
                let local = stream
                    .local_addr()
                    .map_or_else(|_| "?".into(), |a| a.to_string());
                println!("{kind} peer={peer} local={local}");
                let handle = handle.clone();
                std::thread::spawn(move || {
                    if let Err(e) = handle(stream, peer) {
                        eprintln!("{kind} {peer}: {e:#}");
                    }
                });
            }
            Err(e) => {
                eprintln!("accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Writes back everything read until the client's EOF; the connection closes on return.
fn echo(mut stream: TcpStream) -> Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match std::io::Read::read(&mut stream, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        stream.write_all(&buf[..n])?;
    }
}

/// The PROXY protocol v2 preamble (signature, then version/command, family, length).
const PROXY_V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Reads a PROXY protocol v2 header for TCP over IPv4 from the start of `r` and returns the
/// source (the client) and destination addresses it carries. Reads exactly the header, so the
/// stream continues with the client's first byte.
fn read_proxy_v2(r: &mut impl std::io::Read) -> Result<(SocketAddr, SocketAddr)> {
    let mut pre = [0u8; 16];
    r.read_exact(&mut pre)
        .context("stream ended inside the PROXY preamble")?;
    let len = usize::from(u16::from_be_bytes([pre[14], pre[15]]));
    let mut block = vec![0u8; len];
    r.read_exact(&mut block)
        .context("stream ended inside the PROXY addresses")?;
    parse_proxy_v2(&pre, &block)
}

/// The addresses of a PROXY v2 header: `pre` its 16-byte preamble, `block` the `len` bytes
/// that follow (IPv4: source, destination, source port, destination port, then TLVs).
fn parse_proxy_v2(pre: &[u8; 16], block: &[u8]) -> Result<(SocketAddr, SocketAddr)> {
    if pre[..12] != PROXY_V2_SIG {
        bail!("no PROXY v2 signature: {:02x?}", &pre[..12]);
    }
    if pre[12] != 0x21 {
        bail!("version/command {:#04x}, want 0x21 (v2 PROXY)", pre[12]);
    }
    if pre[13] != 0x11 {
        bail!(
            "family/transport {:#04x}, want 0x11 (TCP over IPv4)",
            pre[13]
        );
    }
    if block.len() < 12 {
        bail!("address block of {} bytes, IPv4 needs 12", block.len());
    }
    let ip = |i: usize| std::net::Ipv4Addr::new(block[i], block[i + 1], block[i + 2], block[i + 3]);
    let port = |i: usize| u16::from_be_bytes([block[i], block[i + 1]]);
    Ok((
        SocketAddr::from((ip(0), port(8))),
        SocketAddr::from((ip(4), port(10))),
    ))
}

struct Request {
    method: String,
    target: String,
    keep_alive: bool,
}

/// Reads one line (up to `MAX_LINE`), without its CRLF; `None` at a clean EOF.
fn read_line(r: &mut impl BufRead) -> Result<Option<String>> {
    let mut line = Vec::new();
    let n = std::io::Read::take(&mut *r, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE || !line.ends_with(b"\n") {
        bail!("request line or header too long or cut off");
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(Some(String::from_utf8(line).context("non-UTF-8 request")?))
}

fn read_request(r: &mut impl BufRead) -> Result<Option<Request>> {
    let Some(line) = read_line(r)? else {
        return Ok(None);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("bad request line {line:?}");
    };
    let mut keep_alive = version == "HTTP/1.1";
    let mut body_len = 0usize;
    for _ in 0..=MAX_HEADERS {
        let h = read_line(r)?.ok_or_else(|| anyhow!("EOF in headers"))?;
        if h.is_empty() {
            std::io::copy(
                &mut std::io::Read::take(&mut *r, body_len as u64),
                &mut std::io::sink(),
            )?;
            return Ok(Some(Request {
                method: method.into(),
                target: target.into(),
                keep_alive,
            }));
        }
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("bad header {h:?}"))?;
        let v = v.trim().to_ascii_lowercase();
        if k.eq_ignore_ascii_case("connection") {
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        } else if k.eq_ignore_ascii_case("content-length") {
            body_len = v.parse().context("bad Content-Length")?;
        }
    }
    bail!("more than {MAX_HEADERS} headers")
}

fn query_u64(target: &str, key: &str, default: u64) -> Result<u64> {
    let Some((_, q)) = target.split_once('?') else {
        return Ok(default);
    };
    for kv in q.split('&') {
        if let Some((k, v)) = kv.split_once('=') {
            if k == key {
                return v.parse().with_context(|| format!("bad {key}={v}"));
            }
        }
    }
    Ok(default)
}

fn serve(stream: TcpStream, name: &str, peer: SocketAddr) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    loop {
        let req = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                let _ = w.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return Err(e);
            }
        };
        let conn = if req.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        let path = req.target.split('?').next().unwrap_or("");
        let head = |status: &str, len: u64, extra: &str| {
            format!(
                "HTTP/1.1 {status}\r\nServer: labsrv\r\nX-Real: {name}\r\nX-Peer: {peer}\r\n\
                 Content-Type: text/plain\r\nContent-Length: {len}\r\nConnection: {conn}\r\n\
                 {extra}\r\n"
            )
        };
        match (req.method.as_str(), path) {
            ("GET", "/") => {
                let body = format!("{name}\n");
                w.write_all(head("200 OK", body.len() as u64, "").as_bytes())?;
                w.write_all(body.as_bytes())?;
            }
            ("GET", "/healthz") => {
                w.write_all(head("200 OK", 3, "").as_bytes())?;
                w.write_all(b"ok\n")?;
            }
            ("GET", "/stream") => {
                let bytes = query_u64(&req.target, "bytes", 1 << 20)?;
                let chunk = query_u64(&req.target, "chunk", 16384)?.clamp(1, 1 << 20);
                let delay = Duration::from_millis(query_u64(&req.target, "delay_ms", 0)?);
                let digest = format!("X-Stream-Fnv1a: {:016x}\r\n", pattern::digest(bytes));
                w.write_all(head("200 OK", bytes, &digest).as_bytes())?;
                let mut buf = vec![0u8; chunk as usize];
                let mut off = 0u64;
                while off < bytes {
                    let k = (bytes - off).min(chunk) as usize;
                    pattern::fill(off, &mut buf[..k]);
                    w.write_all(&buf[..k])?;
                    off += k as u64;
                    if off < bytes && !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                }
            }
            _ => {
                w.write_all(head("404 Not Found", 10, "").as_bytes())?;
                w.write_all(b"not found\n")?;
            }
        }
        w.flush()?;
        if !req.keep_alive {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_v2_header() {
        // 198.18.1.10:40000 → 198.18.1.100:7, then one TLV (type 4, NOOP, 2 bytes), then data.
        let mut wire = PROXY_V2_SIG.to_vec();
        wire.extend_from_slice(&[0x21, 0x11, 0, 17]);
        wire.extend_from_slice(&[198, 18, 1, 10, 198, 18, 1, 100, 0x9c, 0x40, 0, 7]);
        wire.extend_from_slice(&[4, 0, 2, 0, 0]);
        wire.extend_from_slice(b"hello");
        let mut r = &wire[..];
        let (src, dst) = read_proxy_v2(&mut r).unwrap();
        assert_eq!(src, "198.18.1.10:40000".parse().unwrap());
        assert_eq!(dst, "198.18.1.100:7".parse().unwrap());
        assert_eq!(r, b"hello");

        let mut local = wire.clone();
        local[12] = 0x20;
        assert!(read_proxy_v2(&mut &local[..]).is_err());
        assert!(read_proxy_v2(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]).is_err());
        assert!(read_proxy_v2(&mut &wire[..20]).is_err());
    }
}
