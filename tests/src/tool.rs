//! What the small lab tools (`bareforward`, `xdpceiling`) share: `--key value` arguments,
//! interface indexes by name, and a stop flag set by SIGTERM/SIGINT.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

/// `--key value` pairs, keys without their dashes.
pub struct Args(HashMap<String, String>);

impl Args {
    /// This process's arguments.
    pub fn from_env() -> Result<Args> {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let mut kv = HashMap::new();
        for pair in raw.chunks(2) {
            let [k, v] = pair else {
                bail!("arguments come in --key value pairs");
            };
            kv.insert(k.trim_start_matches("--").to_string(), v.clone());
        }
        Ok(Args(kv))
    }

    /// The value of `--k`, which must be given.
    pub fn get(&self, k: &str) -> Result<&str> {
        self.0
            .get(k)
            .map(String::as_str)
            .with_context(|| format!("--{k} is required"))
    }

    /// The value of `--k`, if given.
    pub fn opt(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
}

/// The index of interface `name` in this network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface {name}: {}", io::Error::last_os_error());
    }
    Ok(i)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Makes SIGTERM and SIGINT set the flag [`stopped`] reads instead of killing the process.
pub fn stop_on_signals() {
    // SAFETY: installing an async-signal-safe handler that only stores an atomic.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// Whether SIGTERM or SIGINT came (after [`stop_on_signals`]).
pub fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}
