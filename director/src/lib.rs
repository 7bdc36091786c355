//! The control plane of Director and its two binaries.
//!
//! - `config`: the TOML file → serde structs → `validate()` → `forwarder::model` types plus
//!   the validated VRRP, sync, health-check and control settings; every error names file,
//!   line and column.
//! - `cli`: the `director` command line (clap), kept apart from `bin/director.rs` so tests
//!   and the binary share one definition.

pub mod cli;
pub mod config;
