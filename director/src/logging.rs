//! Structured logs through `tracing`, to stderr (journald captures it on the appliance).
//! The level comes from `DIRECTOR_LOG` (e.g. `debug`, `forwarder=trace`), default `info`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("DIRECTOR_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,netlink_packet_route=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
