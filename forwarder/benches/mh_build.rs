//! Build time of the Maglev (mh) lookup table for 3, 100 and 1,000 real servers: the cost a
//! reload or a health change pays when a service uses `scheduler = "mh"`. It reports; it
//! asserts nothing about speed.
//!
//! `cargo bench -p forwarder --bench mh_build` (or `scripts/bench micro`). Under `cargo test`
//! (which builds and starts bench targets without `--bench`) it says so and exits.

use std::net::{Ipv4Addr, SocketAddrV4};

use forwarder::sched::{Backend, Scheduler, SchedulerKind};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("mh_build: a benchmark; run it with `cargo bench -p forwarder --bench mh_build`");
        return;
    }
    for n in [3usize, 100, 1000] {
        let b: Vec<Backend> = (0..n as u32)
            .map(|i| Backend {
                addr: SocketAddrV4::new(Ipv4Addr::from(0xc612_0000 + i), 80),
                weight: 1 + i % 5,
                slot: 0,
            })
            .collect();
        let runs = 20;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            std::hint::black_box(Scheduler::new(SchedulerKind::Mh, b.clone()));
        }
        println!("mh build, {n} backends: {:?}", start.elapsed() / runs);
    }
}
