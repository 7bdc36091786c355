//! Interoperability with keepalived (Debian's 2.2.7) as the VRRP peer, in both roles and both
//! directions of failover, for v3 and v2, multicast and unicast.
//!
//! On one segment, keepalived runs on lb-a (198.18.1.2) and `directord` on lb-b (198.18.1.3);
//! DR real servers answer behind the VIP so every takeover by directord is also checked with
//! traffic (keepalived runs VRRP only here, with no LVS behind it).
//! 1. keepalived (200) is master, directord (100) backup: directord accepts keepalived's
//!    adverts (it learns the master, counts no malformed advert) and stays backup.
//! 2. keepalived is killed (SIGKILL): directord takes the VIP; the client follows.
//! 3. keepalived restarts with priority 50: it hears directord's adverts, accepts them and
//!    stays backup — directord is master towards keepalived.
//! 4. directord is killed (SIGKILL): keepalived takes over; the client follows.
//! 5. directord restarts (100 > 50, preempt): it preempts, keepalived yields to its adverts.

use std::time::Duration;

use director_lab::keepalived::{Keepalived, KeepalivedSpec, VrrpState};
use director_lab::pair::{ext_addr, Pair, PairSpec};
use director_lab::topo::{Mode, VIP};
use director_lab::{wait_until, Lab};

const T: Duration = Duration::from_secs(20);

fn keepalived_spec(version: u8, unicast: bool, interval: Duration, priority: u8) -> KeepalivedSpec {
    let mut k = KeepalivedSpec::new("ka", "ext", priority, interval);
    k.version = version;
    k.vips = vec![format!("{VIP}/24")];
    if unicast {
        k.unicast_src = Some(ext_addr(0));
        k.unicast_peers = vec![ext_addr(1)];
    }
    k
}

fn client_follows(pair: &Pair, n: usize) {
    let mac = pair.nodes[n].mac("ext").unwrap().to_string();
    wait_until(T, || {
        pair.client_vip_mac().ok().flatten().as_deref() == Some(mac.as_str())
    })
    .unwrap_or_else(|_| panic!("the client's neighbour entry for the VIP points at node {n}"));
    // keepalived here runs VRRP only (no LVS behind it), so only directord forwards.
    if n == 1 {
        let who = pair.curl().expect("traffic through the VIP");
        assert!(who.starts_with("rs"), "{who}");
    }
}

fn interop(tag: &str, version: u8, unicast: bool) {
    let Some(lab) = Lab::for_test(tag) else {
        return;
    };
    let interval = if version == 2 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(100)
    };
    let mut spec = PairSpec::new(Mode::Dr);
    spec.version = version;
    spec.interval = format!("{}ms", interval.as_millis());
    spec.unicast = unicast;
    let mut pair = Pair::new(lab, spec).expect("topology");

    // 1. keepalived master, directord backup.
    let mut ka = Keepalived::start(
        &pair.lab,
        &pair.nodes[0],
        keepalived_spec(version, unicast, interval, 200),
    )
    .expect("keepalived");
    ka.wait_state(VrrpState::Master, T)
        .expect("keepalived master");
    pair.start(1).expect("directord");
    wait_until(T, || {
        pair.vrrp(1).is_ok_and(|v| {
            v["instances"][0]["state"] == "BACKUP"
                && v["instances"][0]["master"] == ext_addr(0).to_string()
                && v["instances"][0]["counters"]["adverts_rx"].as_u64() > Some(2)
        })
    })
    .unwrap_or_else(|_| panic!("directord follows keepalived: {:?}", pair.vrrp(1)));
    // The client resolves the VIP (to keepalived's box), so the GARPs have an entry to move.
    let _ = pair
        .client
        .run(["ping", "-c", "1", "-W", "1", &VIP.to_string()]);
    std::thread::sleep(interval * 2);
    let v = pair.vrrp(1).unwrap();
    assert_eq!(v["instances"][0]["state"], "BACKUP", "{v}");
    assert_eq!(v["malformed"], serde_json::json!({}), "{v}");
    assert_eq!(v["instances"][0]["master_priority"], 200, "{v}");

    // 2. keepalived dies: directord takes over.
    ka.kill().unwrap();
    pair.wait_state(1, "ext", "MASTER", T)
        .expect("directord takes over");
    client_follows(&pair, 1);

    // 3. keepalived comes back with a lower priority: it accepts directord as master.
    let mut ka = Keepalived::start(
        &pair.lab,
        &pair.nodes[0],
        keepalived_spec(version, unicast, interval, 50),
    )
    .expect("keepalived again");
    ka.wait_state(VrrpState::Backup, T)
        .expect("keepalived backup");
    std::thread::sleep(interval * 5);
    assert_eq!(ka.state(), Some(VrrpState::Backup), "{}", ka.log());
    assert_eq!(pair.state(1, "ext").unwrap(), "MASTER");

    // 4. directord dies: keepalived takes over.
    pair.kill(1).unwrap();
    ka.wait_state(VrrpState::Master, T)
        .expect("keepalived takes over");
    client_follows(&pair, 0);

    // 5. directord returns with the higher priority and preempts keepalived.
    pair.start(1).expect("directord again");
    pair.wait_state(1, "ext", "MASTER", T)
        .expect("directord preempts");
    wait_until(T, || ka.state() == Some(VrrpState::Backup))
        .unwrap_or_else(|_| panic!("keepalived yields:\n{}", ka.log()));
    client_follows(&pair, 1);
    let v = pair.vrrp(1).unwrap();
    assert_eq!(v["malformed"], serde_json::json!({}), "{v}");
}

fn keepalived_v3_multicast() {
    interop("ka-v3m", 3, false);
}

fn keepalived_v3_unicast() {
    interop("ka-v3u", 3, true);
}

fn keepalived_v2_multicast() {
    interop("ka-v2m", 2, false);
}

fn keepalived_v2_unicast() {
    interop("ka-v2u", 2, true);
}

director_lab::lab_tests! {
    needs: [Need::Lab];
    tests: [keepalived_v3_multicast, keepalived_v3_unicast, keepalived_v2_multicast, keepalived_v2_unicast]
}
