//! `rttping`: round-trip latency through the lab, for the benchmarks.
//!
//! ```text
//! rttping --serve ADDR:PORT                       UDP and TCP echo, nothing logged
//! rttping --udp ADDR:PORT --rate N --count N      UDP probes at N per second
//! rttping --tcp ADDR:PORT --rate N --count N      the same over one TCP connection
//!         [--size BYTES] [--warmup N]
//! ```
//!
//! A probe carries its sequence number; the client sends on a fixed schedule (probe i at
//! start + i / rate, slept for, never in a burst to catch up) and reads each answer
//! before the next send is due (UDP: an answer that comes after its probe's deadline, one
//! second, counts as lost). The round trip is taken on `CLOCK_MONOTONIC` around the
//! blocking send and receive, so it includes the kernel's send and receive paths at both
//! ends, as a user's round trip does. It prints one JSON line: probes sent, answered, lost,
//! and the round-trip percentiles in microseconds (p50, p90, p99, p99.9, min, max, mean).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

struct Args {
    serve: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    rate: f64,
    count: u64,
    size: usize,
    warmup: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        serve: None,
        udp: None,
        tcp: None,
        rate: 100.0,
        count: 1000,
        size: 32,
        warmup: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--serve" => a.serve = Some(value.parse().context("--serve ADDR:PORT")?),
            "--udp" => a.udp = Some(value.parse().context("--udp ADDR:PORT")?),
            "--tcp" => a.tcp = Some(value.parse().context("--tcp ADDR:PORT")?),
            "--rate" => a.rate = value.parse().context("--rate N")?,
            "--count" => a.count = value.parse().context("--count N")?,
            "--size" => a.size = value.parse().context("--size BYTES")?,
            "--warmup" => a.warmup = value.parse().context("--warmup N")?,
            _ => bail!(
                "usage: rttping --serve ADDR | --udp ADDR | --tcp ADDR [--rate N] [--count N] \
                 [--size B] [--warmup N]"
            ),
        }
    }
    if a.size < 8 || a.size > 1400 {
        bail!("--size must be 8..=1400 bytes");
    }
    if a.rate.is_nan() || a.rate <= 0.0 {
        bail!("--rate must be above 0");
    }
    Ok(a)
}

fn serve(addr: SocketAddr) -> Result<()> {
    let udp = UdpSocket::bind(addr).with_context(|| format!("bind udp {addr}"))?;
    let tcp = TcpListener::bind(addr).with_context(|| format!("bind tcp {addr}"))?;
    std::thread::spawn(move || {
        for conn in tcp.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = conn;
                let _ = c.set_nodelay(true);
                let mut buf = [0u8; 4096];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    println!("ready");
    let mut buf = [0u8; 2048];
    loop {
        let (n, peer) = udp.recv_from(&mut buf)?;
        let _ = udp.send_to(&buf[..n], peer);
    }
}

/// Sleep until `deadline` (coarse sleep, then a short spin so the send is on time).
fn wait_until(deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > Duration::from_micros(200) {
            std::thread::sleep(left - Duration::from_micros(100));
        } else {
            std::hint::spin_loop();
        }
    }
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Conn {
    /// One probe: send `buf` (sequence number in its first 8 bytes), wait for the same
    /// bytes back. `None` when the answer did not come within the timeout.
    fn probe(&mut self, buf: &[u8], reply: &mut [u8]) -> Result<Option<Duration>> {
        let start = Instant::now();
        match self {
            Conn::Udp(s) => {
                s.send(buf)?;
                loop {
                    match s.recv(reply) {
                        Ok(n) if n == buf.len() && reply[..8] == buf[..8] => {
                            return Ok(Some(start.elapsed()))
                        }
                        // An answer to an earlier probe that came after its deadline.
                        Ok(_) => continue,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            return Ok(None)
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Conn::Tcp(s) => {
                s.write_all(buf)?;
                s.read_exact(&mut reply[..buf.len()])?;
                if reply[..buf.len()] != *buf {
                    bail!("the TCP echo returned other bytes");
                }
                Ok(Some(start.elapsed()))
            }
        }
    }
}

fn client(a: &Args) -> Result<()> {
    let mut conn = if let Some(dst) = a.udp {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(dst)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        Conn::Udp(s)
    } else if let Some(dst) = a.tcp {
        let s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
            .with_context(|| format!("connect {dst}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Conn::Tcp(s)
    } else {
        bail!("one of --serve, --udp, --tcp is needed");
    };
    let mut buf = vec![0u8; a.size];
    let mut reply = vec![0u8; 2048];
    let mut rtts: Vec<Duration> = Vec::with_capacity(a.count as usize);
    let mut lost = 0u64;
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let start = Instant::now();
    let total = a.warmup + a.count;
    for i in 0..total {
        wait_until(start + period.mul_f64(i as f64));
        buf[..8].copy_from_slice(&i.to_be_bytes());
        let r = conn.probe(&buf, &mut reply)?;
        if i < a.warmup {
            continue;
        }
        match r {
            Some(rtt) => rtts.push(rtt),
            None => lost += 1,
        }
    }
    rtts.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let pct = |p: f64| -> f64 {
        if rtts.is_empty() {
            return 0.0;
        }
        let i = ((rtts.len() as f64 * p).ceil() as usize).clamp(1, rtts.len()) - 1;
        us(rtts[i])
    };
    let mean = if rtts.is_empty() {
        0.0
    } else {
        rtts.iter().map(|d| us(*d)).sum::<f64>() / rtts.len() as f64
    };
    println!(
        "{{\"sent\":{},\"answered\":{},\"lost\":{},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"min_us\":{:.1},\"max_us\":{:.1},\"mean_us\":{:.1}}}",
        a.count,
        rtts.len(),
        lost,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        rtts.first().map_or(0.0, |d| us(*d)),
        rtts.last().map_or(0.0, |d| us(*d)),
        mean
    );
    Ok(())
}

fn main() -> Result<()> {
    let a = parse_args()?;
    if let Some(addr) = a.serve {
        return serve(addr);
    }
    client(&a)
}
