//! `director reload` and SIGHUP: read the config file again, validate it, and apply the
//! difference (services, reals, weights, checks, interception rules), or refuse it whole and
//! keep the running config.

#![forbid(unsafe_code)]

use std::sync::Arc;

use forwarder::io::nft;
use forwarder::model::VirtualService;

use crate::events::EventLog;
use crate::health::Checker;
use crate::runtime::{Applied, Runtime};

/// `director reload` and SIGHUP: read the file again, validate it, apply the difference.
pub struct Reloader {
    path: std::path::PathBuf,
    runtime: Arc<Runtime>,
    checker: Arc<Checker>,
    events: EventLog,
    /// VIPs whose non-service traffic is dropped (accept = false); fixed while running.
    no_accept: Vec<std::net::Ipv4Addr>,
    /// The interception rules as last installed.
    nft: std::sync::Mutex<Vec<VirtualService>>,
}

impl Reloader {
    /// `no_accept`: the VIPs whose non-service traffic is dropped; `nft`: the services whose
    /// interception rules are installed now.
    pub fn new(
        path: std::path::PathBuf,
        runtime: Arc<Runtime>,
        checker: Arc<Checker>,
        events: EventLog,
        no_accept: Vec<std::net::Ipv4Addr>,
        nft: Vec<VirtualService>,
    ) -> Reloader {
        Reloader {
            path,
            runtime,
            checker,
            events,
            no_accept,
            nft: std::sync::Mutex::new(nft),
        }
    }

    /// The config file reloads read.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// One reload at a time. A file that does not validate, or changes a section that needs
    /// a restart, is refused with its errors and the running config stays.
    pub fn reload(&self) -> Result<Applied, String> {
        let mut nft_now = self.nft.lock().unwrap_or_else(|e| e.into_inner());
        let _ = crate::sdnotify::reloading();
        let result = self.reload_locked(&mut nft_now);
        let _ = crate::sdnotify::ready();
        match &result {
            Ok(a) => {
                let summary = if a.changes.is_empty() {
                    "no changes".to_string()
                } else {
                    a.changes.join("; ")
                };
                tracing::info!(generation = a.generation, "reload applied: {summary}");
                self.events.push(
                    "config",
                    self.path.display().to_string(),
                    format!("reload applied (generation {}): {summary}", a.generation),
                );
            }
            Err(e) => {
                tracing::error!("reload refused: {e}");
                self.events.push(
                    "config",
                    self.path.display().to_string(),
                    format!(
                        "reload refused, running config kept: {}",
                        e.replace('\n', " ")
                    ),
                );
            }
        }
        result
    }

    fn reload_locked(&self, nft_now: &mut Vec<VirtualService>) -> Result<Applied, String> {
        let config = crate::config::load(&self.path).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            format!(
                "invalid config, not applied (the running config stays):\n{}",
                lines.join("\n")
            )
        })?;
        let applied = self.runtime.apply(&config)?;
        self.checker.update(self.runtime.targets());
        let wanted = self.runtime.nft_services();
        if wanted != *nft_now {
            nft::apply(&wanted, &self.no_accept)
                .map_err(|e| format!("applied, but the interception rules failed: {e}"))?;
            *nft_now = wanted;
        }
        Ok(applied)
    }
}
