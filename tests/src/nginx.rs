//! Debian's nginx (`nginx-light`, from `scripts/install-deps`) as a lab real server behind
//! the PROXY protocol: the real server a FULLNAT service with `proxy_protocol = "v2"` is meant
//! for.
//!
//! [`start`] writes a config into the lab's directory (prefix, pid file, temp paths, error and
//! access logs all there, nothing under /etc or /var) and runs nginx in the real server's
//! namespace as a lab `Proc` (`daemon off; master_process off;`), so it dies with the lab. The
//! server `listen`s on `PORT proxy_protocol` — a connection that does not start with a PROXY
//! header is refused — and answers:
//! - `GET /` → `NAME\n`;
//! - `GET /files/F` → the file `F` of its document root ([`Nginx::root`]);
//! - `PUT /files/F` → stores the body as `F` there (the WebDAV module's PUT), 201.
//!
//! Each request is one access-log line (see [`Access`]): the client address from the PROXY
//! header (`$proxy_protocol_addr:$proxy_protocol_port`), the TCP peer (`$remote_addr`, a LIP
//! in FULLNAT), the method, the URI, the status and the body bytes each way.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::{Host, Lab, Proc};
use crate::topo::{App, ServiceSpec};

/// One nginx on one real server.
pub struct Nginx {
    pub name: String,
    pub port: u16,
    /// The document root; `/files/F` is `root/files/F`.
    pub root: PathBuf,
    pub access_log: PathBuf,
    pub error_log: PathBuf,
    pub proc: Proc,
}

/// One access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `$proxy_protocol_addr:$proxy_protocol_port`: the client as the PROXY header names it
    /// (`None` when the header carried none, e.g. `LOCAL`).
    pub proxy: Option<SocketAddrV4>,
    /// `$remote_addr:$remote_port`: the TCP peer.
    pub remote: SocketAddrV4,
    pub method: String,
    pub uri: String,
    pub status: u16,
    /// `$request_length`: bytes of the request, headers and body.
    pub request_len: u64,
    /// `$body_bytes_sent`.
    pub body_sent: u64,
}

impl Access {
    /// `pp=ADDR:PORT remote=ADDR:PORT METHOD URI STATUS REQUEST_LEN BODY_SENT`.
    fn parse(line: &str) -> Result<Access> {
        let f: Vec<&str> = line.split(' ').collect();
        let [pp, remote, method, uri, status, request_len, body_sent] = f[..] else {
            bail!("unexpected access-log line {line:?}");
        };
        let field = |s: &'static str, v: &str| -> Result<String> {
            v.strip_prefix(s)
                .map(str::to_owned)
                .with_context(|| format!("no {s} in {line:?}"))
        };
        let pp = field("pp=", pp)?;
        Ok(Access {
            // nginx logs an empty address and port when there was no PROXY address.
            proxy: pp.parse().ok(),
            remote: field("remote=", remote)?
                .parse()
                .with_context(|| format!("remote address in {line:?}"))?,
            method: method.into(),
            uri: uri.into(),
            status: status.parse()?,
            request_len: request_len.parse()?,
            body_sent: body_sent.parse()?,
        })
    }
}

/// Starts nginx named `name` (the body of `GET /`) on `host`, listening on `port` with the
/// PROXY protocol; returns once it listens.
pub fn start(lab: &Lab, host: &Host, name: &str, port: u16) -> Result<Nginx> {
    let dir = lab.dir().join(format!("nginx-{name}"));
    let root = dir.join("www");
    std::fs::create_dir_all(root.join("files"))
        .with_context(|| format!("cannot create {}", root.display()))?;
    for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join("tmp").join(t))?;
    }
    let access_log = dir.join("access.log");
    let error_log = dir.join("error.log");
    let d = dir.display();
    let mut c = String::new();
    let _ = writeln!(c, "daemon off;\nmaster_process off;\nworker_processes 1;");
    let _ = writeln!(
        c,
        "pid {d}/nginx.pid;\nerror_log {} info;",
        error_log.display()
    );
    let _ = writeln!(c, "events {{ worker_connections 1024; }}");
    let _ = writeln!(c, "http {{");
    for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let sub = t.trim_start_matches("client_");
        let _ = writeln!(c, "  {t}_temp_path {d}/tmp/{sub};");
    }
    let _ = writeln!(
        c,
        "  log_format pp 'pp=$proxy_protocol_addr:$proxy_protocol_port \
         remote=$remote_addr:$remote_port $request_method $request_uri $status \
         $request_length $body_bytes_sent';"
    );
    let _ = writeln!(c, "  access_log {} pp;", access_log.display());
    let _ = writeln!(c, "  keepalive_timeout 30s;");
    let _ = writeln!(c, "  server {{");
    let _ = writeln!(c, "    listen {port} proxy_protocol;");
    let _ = writeln!(c, "    root {};", root.display());
    let _ = writeln!(
        c,
        "    location = / {{ default_type text/plain; return 200 \"{name}\\n\"; }}"
    );
    let _ = writeln!(
        c,
        "    location /files/ {{ dav_methods PUT; client_max_body_size 0; }}"
    );
    let _ = writeln!(c, "  }}\n}}");
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, c)?;
    let mut proc = host.spawn([
        "nginx".to_string(),
        "-p".into(),
        format!("{d}/"),
        "-e".into(),
        error_log.display().to_string(),
        "-c".into(),
        conf.display().to_string(),
    ])?;
    let listening = host.wait_tcp_listen(
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        Duration::from_secs(10),
    );
    if listening.is_err() || !proc.is_running() {
        bail!(
            "nginx on {} did not start: {}{}",
            host.name(),
            proc.stderr().unwrap_or_default(),
            std::fs::read_to_string(&error_log).unwrap_or_default()
        );
    }
    Ok(Nginx {
        name: name.into(),
        port,
        root,
        access_log,
        error_log,
        proc,
    })
}

/// The VIP port of [`service`].
pub const PORT: u16 = 81;

/// A FULLNAT service on VIP:[`PORT`] with `proxy_protocol = "v2"` whose real servers run
/// nginx (start it with [`start_all`] on `mode.real_port(PORT)`).
pub fn service(scheduler: &'static str, weights: &[u32]) -> ServiceSpec {
    ServiceSpec {
        name: "nginx-pp".into(),
        protocol: "tcp",
        app: App::External,
        port: PORT,
        scheduler,
        persistence: "0s",
        weights: weights.to_vec(),
        extra: "proxy_protocol = \"v2\"".into(),
        check: None,
    }
}

/// nginx on each real server, named rs1, rs2, ... like `labsrv`.
pub fn start_all(lab: &Lab, reals: &[Host], port: u16) -> Result<Vec<Nginx>> {
    reals
        .iter()
        .enumerate()
        .map(|(i, h)| start(lab, h, &format!("rs{}", i + 1), port))
        .collect()
}

impl Nginx {
    /// Every request logged so far.
    pub fn access(&self) -> Result<Vec<Access>> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines().map(Access::parse).collect()
    }

    /// Writes `bytes` as `/files/NAME`, for clients to download.
    pub fn put_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        std::fs::write(self.root.join("files").join(name), bytes)?;
        Ok(())
    }

    /// The file `/files/NAME` (e.g. one a client uploaded with PUT).
    pub fn file(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.root.join("files").join(name);
        std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines() {
        let a =
            Access::parse("pp=198.18.1.10:41234 remote=198.18.2.5:1029 PUT /files/up 201 300123 0")
                .unwrap();
        assert_eq!(a.proxy, Some("198.18.1.10:41234".parse().unwrap()));
        assert_eq!(a.remote, "198.18.2.5:1029".parse().unwrap());
        assert_eq!((a.method.as_str(), a.uri.as_str()), ("PUT", "/files/up"));
        assert_eq!((a.status, a.request_len, a.body_sent), (201, 300123, 0));
        let local = Access::parse("pp=: remote=198.18.2.5:1029 GET / 200 70 4").unwrap();
        assert_eq!(local.proxy, None);
        assert!(Access::parse("garbage").is_err());
    }
}
