//! systemd `Type=notify` and the watchdog, spoken directly (no libsystemd).
//!
//! The protocol (sd_notify(3)): the service manager puts a unix datagram socket in
//! `$NOTIFY_SOCKET` — a filesystem path, or `@name` for the abstract namespace — and the
//! service sends it newline-separated `KEY=VALUE` assignments, one message per datagram:
//! `READY=1` when it serves, `RELOADING=1` + `MONOTONIC_USEC=` while it re-reads its config,
//! `STOPPING=1` on the way out, `STATUS=` free text for `systemctl status`, and `WATCHDOG=1`
//! at least every `$WATCHDOG_USEC` (we ping at half of it). Without `$NOTIFY_SOCKET` (run by
//! hand, in tests, under another supervisor) every call is a no-op that returns `Ok(false)`.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Send `state` (one or more `KEY=VALUE` lines) to `$NOTIFY_SOCKET` as one datagram.
/// `Ok(false)` when the variable is unset or empty: nobody is listening.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) if !path.is_empty() => {
            let path = path.into_string().map_err(|p| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET is not UTF-8: {p:?}"),
                )
            })?;
            notify_to(&path, state)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Send `state` to the notify socket named `socket` (a path, or `@name` for the abstract
/// namespace), as `$NOTIFY_SOCKET` would name it.
pub fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    let addr = socket_addr(socket)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "notify socket {socket}: sent {sent} of {} bytes",
                state.len()
            ),
        ));
    }
    Ok(())
}

fn socket_addr(socket: &str) -> io::Result<SocketAddr> {
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if socket.starts_with('/') {
        SocketAddr::from_pathname(socket)
    } else {
        // systemd also knows `vsock:CID:PORT`, used only by VMs reporting to their host.
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("NOTIFY_SOCKET {socket:?}: only a path or an @abstract name is supported"),
        ))
    }
}

/// `READY=1`: startup is complete, the service serves. systemd's `start` returns now.
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (systemd ≥ 253 pairs the two to tell this reload
/// from an earlier one); follow with [`ready`] when the reload is done or refused.
pub fn reloading() -> io::Result<bool> {
    notify(&reloading_message(monotonic_usec()))
}

fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `STATUS=text`, shown by `systemctl status`. One line: line breaks become spaces.
pub fn status(text: &str) -> io::Result<bool> {
    notify(&status_message(text))
}

fn status_message(text: &str) -> String {
    format!("STATUS={}", text.replace(['\n', '\r'], " "))
}

/// `WATCHDOG=1`: the keep-alive ping; send it every [`watchdog_interval`].
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, or `None` when the watchdog is
/// off (unset, zero, unparseable) or meant for another process (`$WATCHDOG_PID` set and not
/// ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, ours: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != ours {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a datagram within the timeout");
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8 message")
    }

    fn bind_timeout(sock: &UnixDatagram) {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a read timeout");
    }

    /// Everything that reads the process-global environment, in one test so no other test
    /// thread sees it change.
    #[test]
    fn notify_over_a_path_and_an_abstract_socket() {
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(!ready().expect("no socket is not an error"));
        std::env::set_var("NOTIFY_SOCKET", "");
        assert!(!watchdog().expect("an empty socket is not an error"));

        // A filesystem socket, as systemd makes under /run/systemd/notify.
        let dir = std::env::temp_dir().join(format!("director-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify");
        let server = UnixDatagram::bind(&path).expect("bind the notify socket");
        bind_timeout(&server);
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(ready().expect("send READY"));
        assert_eq!(recv(&server), "READY=1");
        assert!(status("serving 2 services\nall up").expect("send STATUS"));
        assert_eq!(recv(&server), "STATUS=serving 2 services all up");
        let before = monotonic_usec();
        assert!(reloading().expect("send RELOADING"));
        let msg = recv(&server);
        let mut lines = msg.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("MONOTONIC_USEC on the second line")
            .parse()
            .expect("a number of microseconds");
        assert!(usec >= before && usec <= monotonic_usec());
        assert!(stopping().expect("send STOPPING"));
        assert_eq!(recv(&server), "STOPPING=1");
        drop(server);
        std::fs::remove_dir_all(&dir).ok();
        // Nobody listening any more: the caller learns it.
        assert!(watchdog().is_err());

        // The abstract namespace, `@name`.
        let name = format!("director-sdnotify-test-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address")
        };
        let server = UnixDatagram::bind_addr(&addr).expect("bind the abstract socket");
        bind_timeout(&server);
        std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        assert!(watchdog().expect("send WATCHDOG"));
        assert_eq!(recv(&server), "WATCHDOG=1");

        std::env::set_var("NOTIFY_SOCKET", "vsock:2:9999");
        assert_eq!(
            ready().expect_err("vsock is not supported").kind(),
            io::ErrorKind::Unsupported
        );
        std::env::remove_var("NOTIFY_SOCKET");

        // The watchdog settings, read from the environment.
        std::env::set_var("WATCHDOG_USEC", "5000000");
        std::env::remove_var("WATCHDOG_PID");
        assert_eq!(watchdog_interval(), Some(Duration::from_millis(2500)));
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_millis(2500)));
        std::env::set_var("WATCHDOG_PID", "1");
        assert_eq!(watchdog_interval(), None);
        std::env::remove_var("WATCHDOG_PID");
        std::env::remove_var("WATCHDOG_USEC");
        assert_eq!(watchdog_interval(), None);
    }

    #[test]
    fn watchdog_interval_rules() {
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("junk"), None, 7), None);
        assert_eq!(
            watchdog_interval_from(Some("3000000"), None, 7),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            watchdog_interval_from(Some("3000000"), Some("7"), 7),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(watchdog_interval_from(Some("3000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("3000000"), Some("x"), 7), None);
    }

    #[test]
    fn messages() {
        assert_eq!(reloading_message(1234), "RELOADING=1\nMONOTONIC_USEC=1234");
        assert_eq!(status_message("a\r\nb"), "STATUS=a  b");
    }

    #[test]
    fn notify_to_names() {
        let dir = std::env::temp_dir().join(format!("director-sdnotify-to-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("n");
        let server = UnixDatagram::bind(&path).expect("bind");
        bind_timeout(&server);
        notify_to(path.to_str().expect("UTF-8 temp path"), "READY=1\nSTATUS=x").expect("send");
        assert_eq!(recv(&server), "READY=1\nSTATUS=x");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            notify_to("relative/path", "READY=1")
                .expect_err("relative paths are refused")
                .kind(),
            io::ErrorKind::Unsupported
        );
    }
}
