//! Interception: keep the kernel's own stack away from the traffic the datapath forwards.
//!
//! The AF_PACKET rings see every frame before netfilter, but the kernel still receives its
//! own copy. Without these rules it would answer a VIP service's SYN with a RST (no local
//! listener), answer UDP with port-unreachable, and, where forwarding is on, route a second
//! copy of NAT replies. The rules live in one table, `ip director`, replaced atomically by
//! `nft -f -` on every apply and deleted on shutdown. They drop, in the prerouting hook at
//! raw priority (before conntrack, so dropped traffic costs no conntrack entry):
//! - VIP service traffic (VIP . protocol . port), and fragments to a VIP for TCP/UDP (the
//!   datapath counts and drops those; the kernel must not reassemble and answer them);
//! - NAT replies (real . protocol . port) that are not addressed to this box, so the box's
//!   own health checks to the same real servers still reach their sockets;
//! - all TCP and UDP to a FULLNAT local address (LIP), fragments included: the real servers'
//!   replies to LIP:lport are the datapath's, and no local socket lives on a LIP (the kernel
//!   would reset them). The box's own traffic must therefore not use a LIP as its source
//!   address (keep the LIP a secondary address beside the interface's own, as VRRP adds it).
//!   ICMP to a LIP stays the kernel's, as ICMP to a VIP does (echo answered; errors about
//!   LIP:lport find no socket and are ignored);
//! - with VRRP Accept_Mode off (`accept = false`), every other packet to those VIPs (ping, SSH
//!   to the VIP): RFC 9568 §6.4.3 says a non-owner master must not accept them.
//!
//! Everything else — SSH, VRRP, sync, ICMP echo to a VIP in accept mode, health checks — is
//! untouched.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::model::{Mode, VirtualService};

/// The nftables table the daemon owns.
pub const TABLE: &str = "director";

/// The ruleset for `services`, as `nft -f` input. The table is created, flushed and
/// refilled in one transaction, so there is never a moment without rules.
pub fn ruleset(services: &[VirtualService], no_accept: &[Ipv4Addr]) -> String {
    let mut vips = Vec::new();
    let mut vip_addrs = Vec::new();
    let mut reals = Vec::new();
    let mut lips = Vec::new();
    for s in services {
        let proto = s.protocol.as_str();
        vips.push(format!("{} . {} . {}", s.vip.ip(), proto, s.vip.port()));
        vip_addrs.push(format!("{} . {}", s.vip.ip(), proto));
        if s.mode == Mode::Nat {
            for r in &s.reals {
                reals.push(format!("{} . {} . {}", r.addr.ip(), proto, r.addr.port()));
            }
        }
        if s.mode == Mode::FullNat {
            lips.extend(s.local_addresses.iter().map(Ipv4Addr::to_string));
        }
    }
    lips.sort();
    lips.dedup();
    vips.sort();
    vips.dedup();
    vip_addrs.sort();
    vip_addrs.dedup();
    reals.sort();
    reals.dedup();
    let mut no_accept: Vec<String> = no_accept.iter().map(Ipv4Addr::to_string).collect();
    no_accept.sort();
    no_accept.dedup();
    let elements = |v: &[String]| {
        if v.is_empty() {
            String::new()
        } else {
            format!("elements = {{ {} }}", v.join(", "))
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "table ip {TABLE} {{}}");
    let _ = writeln!(out, "delete table ip {TABLE}");
    let _ = writeln!(out, "table ip {TABLE} {{");
    let _ = writeln!(
        out,
        "  set vip_services {{ type ipv4_addr . inet_proto . inet_service; {} }}",
        elements(&vips)
    );
    let _ = writeln!(
        out,
        "  set vip_protos {{ type ipv4_addr . inet_proto; {} }}",
        elements(&vip_addrs)
    );
    let _ = writeln!(
        out,
        "  set nat_reals {{ type ipv4_addr . inet_proto . inet_service; {} }}",
        elements(&reals)
    );
    let _ = writeln!(out, "  set lips {{ type ipv4_addr; {} }}", elements(&lips));
    let _ = writeln!(
        out,
        "  set no_accept {{ type ipv4_addr; {} }}",
        elements(&no_accept)
    );
    let _ = writeln!(out, "  chain prerouting {{");
    let _ = writeln!(
        out,
        "    type filter hook prerouting priority raw; policy accept;"
    );
    let _ = writeln!(
        out,
        "    ip daddr . ip protocol @vip_protos ip frag-off & 0x3fff != 0 counter drop"
    );
    let _ = writeln!(
        out,
        "    ip daddr . meta l4proto . th dport @vip_services counter drop"
    );
    // No port match, so non-first fragments (which have no ports) are dropped too.
    let _ = writeln!(
        out,
        "    ip daddr @lips meta l4proto {{ tcp, udp }} counter drop"
    );
    let _ = writeln!(
        out,
        "    ip saddr . meta l4proto . th sport @nat_reals fib daddr type != local counter drop"
    );
    let _ = writeln!(out, "    ip daddr @no_accept counter drop");
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    out
}

fn nft(input: &str) -> io::Result<()> {
    let mut child = Command::new("nft")
        .arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run nft (is nftables installed?): {e}"),
            )
        })?;
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft rejected the interception rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Install (or replace) the interception rules for `services`, and drop all other traffic
/// to the `no_accept` VIPs.
pub fn apply(services: &[VirtualService], no_accept: &[Ipv4Addr]) -> io::Result<()> {
    nft(&ruleset(services, no_accept))
}

/// Remove the interception rules (on shutdown). Missing table is not an error.
pub fn remove() -> io::Result<()> {
    nft(&format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, RealServer, SchedulerKind};
    use std::time::Duration;

    #[test]
    fn ruleset_names_vips_nat_reals_and_lips_only() {
        let svc = |name: &str, vip: &str, proto, mode, real: &str| VirtualService {
            name: name.into(),
            vip: vip.parse().unwrap(),
            protocol: proto,
            mode,
            scheduler: SchedulerKind::Rr,
            persistence: Duration::ZERO,
            reals: vec![RealServer {
                addr: real.parse().unwrap(),
                weight: 1,
            }],
            local_addresses: Vec::new(),
            proxy_protocol: None,
        };
        let fullnat = |name: &str, vip: &str, real: &str, lips: &[&str]| VirtualService {
            local_addresses: lips.iter().map(|l| l.parse().unwrap()).collect(),
            ..svc(name, vip, Protocol::Tcp, Mode::FullNat, real)
        };
        let rules = ruleset(
            &[
                fullnat(
                    "full",
                    "198.18.1.100:81",
                    "198.18.2.31:8080",
                    &["198.18.2.6", "198.18.2.5"],
                ),
                fullnat(
                    "full2",
                    "198.18.1.100:82",
                    "198.18.2.32:8080",
                    &["198.18.2.5"],
                ),
                svc(
                    "web",
                    "198.18.1.100:80",
                    Protocol::Tcp,
                    Mode::Nat,
                    "198.18.2.11:8080",
                ),
                svc(
                    "dns",
                    "198.18.1.100:53",
                    Protocol::Udp,
                    Mode::Dr,
                    "198.18.1.21:53",
                ),
            ],
            &["198.18.1.101".parse().unwrap()],
        );
        assert!(rules.contains("set no_accept { type ipv4_addr; elements = { 198.18.1.101 } }"));
        assert!(rules.contains(
            "elements = { 198.18.1.100 . tcp . 80, 198.18.1.100 . tcp . 81, \
             198.18.1.100 . tcp . 82, 198.18.1.100 . udp . 53 }"
        ));
        assert!(rules.contains("elements = { 198.18.2.11 . tcp . 8080 }"));
        assert!(
            !rules.contains("198.18.1.21"),
            "DR real servers reply directly, no rule needed"
        );
        assert!(rules.contains("fib daddr type != local"));
        assert!(
            rules.contains("set lips { type ipv4_addr; elements = { 198.18.2.5, 198.18.2.6 } }")
        );
        assert!(rules.contains("ip daddr @lips meta l4proto { tcp, udp } counter drop"));
        assert!(
            !rules.contains("198.18.2.31") && !rules.contains("198.18.2.32"),
            "FULLNAT real servers reply to a LIP, which the lips rule covers"
        );
    }
}
