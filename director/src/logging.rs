//! Structured logs through `tracing`, to stderr (journald captures it on the appliance).
//! The level comes from `DIRECTOR_LOG` (e.g. `debug`, `forwarder=trace`), default `info`.

use tracing_subscriber::EnvFilter;

/// netlink-packet-route warns on every table dump about link attributes newer kernels add;
/// that stays out of the log unless `DIRECTOR_LOG` names the crate.
const QUIET: &str = "netlink_packet_route=error";

pub fn init() {
    let spec = std::env::var("DIRECTOR_LOG").unwrap_or_else(|_| "info".to_string());
    let spec = if spec.contains("netlink_packet_route") {
        spec
    } else {
        format!("{spec},{QUIET}")
    };
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("DIRECTOR_LOG={spec:?} is not a valid filter ({e}); using info");
        EnvFilter::new(format!("info,{QUIET}"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
