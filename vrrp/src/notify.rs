//! Notify hooks: a program run on every transition with `GROUP|INSTANCE NAME STATE PRIORITY`,
//! as keepalived's `notify`. STATE is MASTER, BACKUP, FAULT or STOP.
//!
//! Hooks run one at a time, in order, on their own thread, never on the timer thread: a slow
//! script must not delay an advertisement. That thread is started by [`Notifier::start`]
//! before the timer thread raises its own scheduling priority, so the scripts run at normal
//! priority. A hook that runs longer than [`HOOK_TIMEOUT`] is killed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a hook may run.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// One hook invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub program: PathBuf,
    /// `GROUP` or `INSTANCE`.
    pub kind: &'static str,
    pub name: String,
    /// MASTER, BACKUP, FAULT or STOP.
    pub state: &'static str,
    pub priority: u8,
}

pub struct Notifier {
    tx: Option<Sender<Hook>>,
    thread: Option<JoinHandle<()>>,
}

impl Notifier {
    pub fn start() -> std::io::Result<Notifier> {
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("vrrp-notify".into())
            .spawn(move || run(rx))?;
        Ok(Notifier {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// A sender the timer thread keeps.
    pub fn sender(&self) -> Sender<Hook> {
        self.tx.clone().expect("notifier running")
    }

    /// Runs the hooks already queued, then stops.
    pub fn stop(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: Receiver<Hook>) {
    for hook in rx {
        let priority = hook.priority.to_string();
        let child = Command::new(&hook.program)
            .args([hook.kind, hook.name.as_str(), hook.state, priority.as_str()])
            .stdin(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(program = %hook.program.display(), "cannot run notify hook: {e}");
                continue;
            }
        };
        let deadline = Instant::now() + HOOK_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        tracing::warn!(program = %hook.program.display(), %status, "notify hook failed");
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    tracing::warn!(program = %hook.program.display(), "notify hook timed out; killed");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Err(e) => {
                    tracing::warn!(program = %hook.program.display(), "notify hook: {e}");
                    break;
                }
            }
        }
    }
}
