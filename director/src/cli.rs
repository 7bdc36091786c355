//! The `director` command line: argument parsing (clap) and the commands that need no daemon.
//!
//! Exit codes, as CONFIG.md fixes them: 0 ok, 1 error (an invalid config), 2 usage error
//! (clap's own), 3 no daemon.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::config::{self, ConfigError, DEFAULT_CONFIG_PATH};

#[derive(Debug, Parser)]
#[command(
    name = "director",
    version,
    about = "Control the Director load balancer"
)]
pub struct Cli {
    /// Machine-readable output (JSON on stdout).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and validate a config file; print every error. Needs no daemon.
    CheckConfig {
        /// The config file.
        #[arg(default_value = DEFAULT_CONFIG_PATH)]
        file: PathBuf,
    },
}

/// Runs a parsed command line, writing to `out` and `err`; returns the exit code.
pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<i32> {
    match &cli.command {
        Command::CheckConfig { file } => check_config(file, cli.json, out, err),
    }
}

fn check_config(
    file: &Path,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    let result = config::load(file);
    if json {
        let report = match &result {
            Ok(c) => json!({
                "file": file,
                "ok": true,
                "services": c.services.len(),
                "real_servers": c.real_server_count(),
                "warnings": c.warnings.iter().map(error_json).collect::<Vec<_>>(),
            }),
            Err(errors) => json!({
                "file": file,
                "ok": false,
                "errors": errors.iter().map(error_json).collect::<Vec<_>>(),
            }),
        };
        writeln!(out, "{report}")?;
        return Ok(if result.is_ok() { 0 } else { 1 });
    }
    match result {
        Ok(c) => {
            for w in &c.warnings {
                writeln!(
                    err,
                    "{}:{}:{}: warning: {}",
                    w.file.display(),
                    w.line,
                    w.column,
                    w.message
                )?;
            }
            writeln!(
                out,
                "{}: ok ({}, {})",
                file.display(),
                plural(c.services.len(), "service"),
                plural(c.real_server_count(), "real server")
            )?;
            Ok(0)
        }
        Err(errors) => {
            for e in &errors {
                writeln!(err, "{e}")?;
            }
            Ok(1)
        }
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn error_json(e: &ConfigError) -> serde_json::Value {
    json!({ "file": e.file, "line": e.line, "column": e.column, "message": e.message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn check_config_defaults_to_the_appliance_path() {
        let cli = Cli::try_parse_from(["director", "check-config"]).expect("valid command line");
        match cli.command {
            Command::CheckConfig { file } => assert_eq!(file, Path::new(DEFAULT_CONFIG_PATH)),
        }
    }
}
