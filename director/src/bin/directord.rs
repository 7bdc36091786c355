//! `directord --config FILE`: the Director daemon, in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The Director daemon: load balancer datapath and control socket.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The config file.
    #[arg(long, short, default_value = "/etc/director/director.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    director::daemon::abort_on_panic();
    director::logging::init();
    match director::daemon::run(&args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("directord: {e:#}");
            ExitCode::FAILURE
        }
    }
}
