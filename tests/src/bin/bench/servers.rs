//! Real-server programs the bench starts itself: Debian's nginx serving a small static file
//! over plain HTTP (the lab's `nginx` module is the PROXY-protocol variant for FULLNAT).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Result};
use director_lab::{Host, Lab, Proc};

use crate::plan::HOST_CPU;

/// The body of `GET /`: 100 bytes starting with the server's name.
pub fn body(n: usize) -> String {
    let head = format!("rs{n} ");
    format!("{head}{}\n", "x".repeat(99 - head.len()))
}

/// nginx on `host` (real server number `n`), one worker process pinned to the hosts' CPU,
/// no access log, keep-alive without a request limit, listening on `port` (backlog 4096);
/// returns once it listens.
pub fn nginx(lab: &Lab, host: &Host, n: usize, port: u16) -> Result<Proc> {
    let dir = lab.dir().join(format!("nginx-rs{n}"));
    let root = dir.join("www");
    std::fs::create_dir_all(&root)?;
    for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join("tmp").join(t))?;
    }
    std::fs::write(root.join("index.html"), body(n))?;
    let d = dir.display();
    let error_log = dir.join("error.log");
    let mut c = String::new();
    let _ = writeln!(c, "daemon off;\nmaster_process off;\nworker_processes 1;");
    let _ = writeln!(
        c,
        "pid {d}/nginx.pid;\nerror_log {} warn;",
        error_log.display()
    );
    let _ = writeln!(c, "worker_rlimit_nofile 65536;");
    let _ = writeln!(c, "events {{ worker_connections 16384; }}");
    let _ = writeln!(c, "http {{");
    for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let sub = t.trim_start_matches("client_");
        let _ = writeln!(c, "  {t}_temp_path {d}/tmp/{sub};");
    }
    let _ = writeln!(
        c,
        "  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 120s;"
    );
    let _ = writeln!(
        c,
        "  server {{\n    listen {port} backlog=4096;\n    root {};\n    location / {{ default_type text/plain; }}\n  }}\n}}",
        root.display()
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, c)?;
    let mut proc = host.spawn([
        "taskset".to_string(),
        "-c".into(),
        HOST_CPU.to_string(),
        "nginx".into(),
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
    Ok(proc)
}
