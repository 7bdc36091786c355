//! The golden tables: the packet engine, and the XDP fast path beside it, fed frames built
//! field by field and checked against the frames a correct director emits, byte for byte
//! (`modes.rs` explains how a table works).
//!
//! - `modes.rs`: NAT, DR and TUN tables, bad input, the schedulers, random mutations;
//! - `fullnat.rs`: FULLNAT, its local ports and the PROXY protocol;
//! - `fastpath.rs`: per mode, what an established flow meets, for the XDP program's rules;
//! - `frames.rs` builds the frames, `harness.rs` assembles the engine as directord does,
//!   runs a table and, for the `_xdp` tables, the loaded XDP program beside it.
//!
//! One test target (`cargo test -p forwarder --test golden`) with this `main` on
//! `libtest-mimic`: the same command line and result lines as Rust's harness. A `_xdp` table
//! this machine cannot run (not root, or a build without the XDP program because clang was
//! missing) is reported as **ignored** with the reason, never as passed; under CI
//! (`CI=true`), or asked for with `--ignored`/`--include-ignored`, it runs and fails.

mod fastpath;
mod frames;
mod fullnat;
mod harness;
mod modes;

use libtest_mimic::{Arguments, Failed, Trial};

/// Why the XDP tables cannot run here, if they cannot.
fn xdp_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (loading an XDP program needs CAP_BPF and CAP_NET_ADMIN)".into());
    }
    if forwarder::io::xdp::object().is_none() {
        return Some("this build has no XDP program (clang was missing at build time)".into());
    }
    None
}

fn main() {
    let args = Arguments::from_args();
    let tests: &[(fn(), &str)] = &[
        (modes::nat_table, "modes::nat_table"),
        (modes::nat_table_xdp, "modes::nat_table_xdp"),
        (modes::dr_table, "modes::dr_table"),
        (modes::dr_table_xdp, "modes::dr_table_xdp"),
        (modes::tun_table, "modes::tun_table"),
        (modes::tun_table_xdp, "modes::tun_table_xdp"),
        (
            modes::tun_frag_needed_is_rate_limited_per_worker,
            "modes::tun_frag_needed_is_rate_limited_per_worker",
        ),
        (
            modes::tun_frag_needed_reaches_a_client_not_yet_resolved,
            "modes::tun_frag_needed_reaches_a_client_not_yet_resolved",
        ),
        (modes::nat_bad_input_table, "modes::nat_bad_input_table"),
        (
            modes::nat_bad_input_table_xdp,
            "modes::nat_bad_input_table_xdp",
        ),
        (modes::nat_table_full, "modes::nat_table_full"),
        (
            modes::wrr_weights_1_2_3_over_60_flows,
            "modes::wrr_weights_1_2_3_over_60_flows",
        ),
        (
            modes::sh_keeps_a_client_on_one_real,
            "modes::sh_keeps_a_client_on_one_real",
        ),
        (
            modes::mh_takes_up_an_established_flow_the_peer_scheduled,
            "modes::mh_takes_up_an_established_flow_the_peer_scheduled",
        ),
        (
            modes::weight_zero_takes_no_new_flow_but_finishes_old_ones,
            "modes::weight_zero_takes_no_new_flow_but_finishes_old_ones",
        ),
        (
            modes::persistence_keeps_a_client_until_its_template_expires,
            "modes::persistence_keeps_a_client_until_its_template_expires",
        ),
        (
            modes::random_mutations_never_panic_and_always_add_up,
            "modes::random_mutations_never_panic_and_always_add_up",
        ),
        (
            modes::tun_random_mutations_never_panic_and_always_add_up,
            "modes::tun_random_mutations_never_panic_and_always_add_up",
        ),
        (
            modes::nat_reply_fragment_is_dropped_and_counted,
            "modes::nat_reply_fragment_is_dropped_and_counted",
        ),
        (fastpath::nat_table, "fastpath::nat_table"),
        (fastpath::nat_table_xdp, "fastpath::nat_table_xdp"),
        (fastpath::dr_table, "fastpath::dr_table"),
        (fastpath::dr_table_xdp, "fastpath::dr_table_xdp"),
        (fastpath::tun_table, "fastpath::tun_table"),
        (fastpath::tun_table_xdp, "fastpath::tun_table_xdp"),
        (fastpath::fullnat_table, "fastpath::fullnat_table"),
        (fastpath::fullnat_table_xdp, "fastpath::fullnat_table_xdp"),
        (
            fastpath::fullnat_proxy_table,
            "fastpath::fullnat_proxy_table",
        ),
        (
            fastpath::fullnat_proxy_table_xdp,
            "fastpath::fullnat_proxy_table_xdp",
        ),
        (fullnat::fullnat_table, "fullnat::fullnat_table"),
        (fullnat::fullnat_table_xdp, "fullnat::fullnat_table_xdp"),
        (
            fullnat::fullnat_port_held_through_time_wait,
            "fullnat::fullnat_port_held_through_time_wait",
        ),
        (
            fullnat::fullnat_proxy_protocol_table,
            "fullnat::fullnat_proxy_protocol_table",
        ),
        (
            fullnat::fullnat_proxy_protocol_table_xdp,
            "fullnat::fullnat_proxy_protocol_table_xdp",
        ),
        (
            fullnat::a_fullnat_entry_without_a_local_address_is_never_forwarded_unrewritten,
            "fullnat::a_fullnat_entry_without_a_local_address_is_never_forwarded_unrewritten",
        ),
    ];
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let run_anyway = ci || args.ignored || args.include_ignored;
    let missing = xdp_missing();
    if let (Some(why), false) = (&missing, run_anyway) {
        eprintln!("XDP golden tables ignored on this machine: {why} (CI=true or --include-ignored runs them, and they fail)");
    }
    let trials = tests
        .iter()
        .map(|&(run, name)| {
            let why = name.ends_with("_xdp").then(|| missing.clone()).flatten();
            let ignored = why.is_some() && !run_anyway;
            Trial::test(name, move || match why {
                Some(why) => Err(Failed::from(format!(
                    "this XDP table cannot run here: {why}"
                ))),
                None => {
                    run();
                    Ok(())
                }
            })
            .with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}
