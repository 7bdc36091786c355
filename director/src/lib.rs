//! The control plane of Director and its two binaries.
//!
//! - `config`: the TOML file → serde structs → `validate()` → `forwarder::model` types, the
//!   VRRP engine's own instance and group types, the sync engine's destination, and the
//!   health-check and control settings; every error names file, line and column.
//! - `api`: the control API — the `Request` enum and one view struct per answer, shared by
//!   the daemon, the CLI, the metrics and the golden fixtures.
//! - `cli`: the `director` command line (clap), kept apart from `bin/director.rs` so tests
//!   and the binary share one definition.
//! - `control`: the root-only unix control socket (server in the daemon, client for the CLI).
//! - `daemon`: `directord` — builds the datapath and the VRRP engine from a config and runs
//!   them until a signal.
//! - `diff`: the reload diff, pure — the running config and a new one → a refusal (sections
//!   that need a restart) or a plan of typed changes, each shown as the operator reads it.
//! - `events`: the bounded history of state changes behind `director events`.
//! - `health`: the health checker of real servers (TCP, HTTP, UDP, exec probes; rise/fall).
//! - `instance`: one `directord` per network namespace (an `flock` taken before anything
//!   else).
//! - `runtime`: the services' running state (config, health, operator changes) → the
//!   datapath's service table; carries out a reload's plan (from `diff`); quorum to VRRP.
//! - `liveness`: which of the daemon's threads still make progress (the monitor's fate-sharing
//!   policy, pure).
//! - `logging`: `tracing` to stderr, level from `DIRECTOR_LOG`.
//! - `metrics`: the Prometheus text endpoint, rendered from the control socket's views.
//! - `monitor`: the monitor's other policy, pure (preemption hold, datapath heartbeat changes,
//!   watchdog pets, rate sampling); the loop around it is in `daemon`.
//! - `reload`: `director reload` and SIGHUP (read, validate, apply the difference or keep the
//!   running config).
//! - `sdnotify`: systemd `Type=notify` readiness, reload and watchdog messages.
//!
//! The A/B root slots behind `director upgrade`, `boot-check` and `slots` are the `appliance`
//! crate's; `cli` only calls them.

pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod diff;
pub mod events;
pub mod health;
pub mod instance;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod reload;
pub mod runtime;
pub mod sdnotify;
