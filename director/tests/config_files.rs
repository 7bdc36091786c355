//! Every example in `configs/` validates, and the examples mean what their comments say.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use director::config::{self, CheckKind, Config, SyncDestination, VrrpVersion, XdpMode};
use forwarder::model::{Mode, Protocol, SchedulerKind};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// The examples name the appliance's key file; the test gives them one of its own.
fn test_key() -> PathBuf {
    let path = std::env::temp_dir().join(format!("director-test-{}.key", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, "an example sync key of enough bytes\n").expect("write a test key");
        // Private, as the appliance keeps it (the check warns about a readable key).
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod the test key");
    }
    path
}

fn load(name: &str) -> Config {
    let path = configs_dir().join(name);
    let text = std::fs::read_to_string(&path).expect("read the example");
    let text = text.replace("/etc/director/sync.key", &test_key().display().to_string());
    config::parse(&text, &path).unwrap_or_else(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        panic!("{} is invalid:\n{}", path.display(), lines.join("\n"))
    })
}

#[test]
fn every_example_config_validates() {
    let mut count = 0;
    for entry in std::fs::read_dir(configs_dir()).expect("configs/ exists") {
        let path = entry.expect("readable directory entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_name().expect("a file name").to_string_lossy();
            let c = load(&name);
            assert!(c.warnings.is_empty(), "{name}: {:?}", c.warnings);
            count += 1;
        }
    }
    assert!(
        count >= 5,
        "expected nat, dr, tun, fullnat and full in configs/"
    );
}

#[test]
fn nat_example() {
    let c = load("nat.toml");
    assert_eq!(c.node.name, "lb-a");
    assert!(c.vrrp.is_none() && c.sync.is_none());
    let web = &c.services[0];
    assert_eq!(web.virtual_service.vip, "198.18.1.100:80".parse().unwrap());
    assert_eq!(web.virtual_service.mode, Mode::Nat);
    assert_eq!(web.virtual_service.scheduler, SchedulerKind::Wlc);
    assert_eq!(web.virtual_service.reals.len(), 3);
    assert_eq!(web.virtual_service.reals[2].weight, 2);
    assert_eq!(web.quorum, Some(2));
    let check = web.check.as_ref().expect("web has a check");
    assert_eq!(check.interval, Duration::from_millis(500));
    assert!(
        matches!(&check.kind, CheckKind::Http { path, status: None, .. } if path == "/healthz")
    );
    let dns = &c.services[1];
    assert_eq!(dns.virtual_service.protocol, Protocol::Udp);
    assert_eq!(
        dns.virtual_service.reals[0].weight, 1,
        "weight defaults to 1"
    );
    assert_eq!(c.datapath.interfaces, ["eth0", "eth1"]);
    assert_eq!(c.datapath.timeouts.tcp, Duration::from_secs(900));
    assert_eq!(c.xdp, XdpMode::Off);
    assert_eq!(c.control.metrics, Some("127.0.0.1:9586".parse().unwrap()));
    assert_eq!(c.real_server_count(), 5);
}

#[test]
fn dr_example() {
    let c = load("dr.toml");
    let vrrp = c.vrrp.as_ref().expect("dr.toml has VRRP");
    let ext = &vrrp.instances[0];
    assert_eq!(ext.config.version, VrrpVersion::V3);
    assert_eq!(ext.config.advert_interval, Duration::from_millis(100));
    assert_eq!((ext.config.vrid, ext.config.priority), (51, 150));
    assert_eq!(ext.vips[0].1, 24);
    assert_eq!(ext.config.preempt_delay, Duration::from_secs(30));
    assert_eq!(ext.config.tracks[0].weight, -60);
    let sync = c.sync.as_ref().expect("dr.toml has sync");
    assert_eq!(
        sync.destination,
        SyncDestination::Peer("198.18.3.3:8848".parse().unwrap())
    );
    for s in c.virtual_services() {
        assert_eq!(s.mode, Mode::Dr);
        assert!(s.reals.iter().all(|r| r.addr.port() == s.vip.port()));
    }
    assert_eq!(
        c.services[0].virtual_service.persistence,
        Duration::from_secs(300)
    );
    assert_eq!(
        c.services[1].virtual_service.protocol,
        Protocol::Tcp,
        "tcp by default"
    );
}

#[test]
fn tun_example() {
    let c = load("tun.toml");
    let vrrp = c.vrrp.as_ref().expect("tun.toml has VRRP");
    assert_eq!(
        vrrp.instances.len(),
        1,
        "only the VIP floats: tunnels need no gateway"
    );
    assert!(c.sync.is_some());
    let services: Vec<_> = c.virtual_services().collect();
    assert_eq!(services.len(), 2);
    for s in &services {
        assert_eq!(s.mode, Mode::Tun);
        assert!(s.reals.iter().all(|r| r.addr.port() == s.vip.port()));
        assert!(s.local_addresses.is_empty() && s.proxy_protocol.is_none());
    }
    assert_eq!(services[1].protocol, Protocol::Udp);
    assert_eq!(c.datapath.interfaces, ["eth0", "eth1"]);
}

#[test]
fn fullnat_example() {
    let c = load("fullnat.toml");
    let vrrp = c.vrrp.as_ref().expect("fullnat.toml has VRRP");
    let int = &vrrp.instances[1];
    let lips: Vec<Ipv4Addr> = int.vips.iter().map(|v| v.0).collect();
    assert_eq!(
        lips,
        [Ipv4Addr::new(198, 18, 2, 5), Ipv4Addr::new(198, 18, 2, 6)]
    );
    assert_eq!(vrrp.groups[0].config.members, ["ext", "int"]);
    let services: Vec<_> = c.virtual_services().collect();
    for s in &services {
        assert_eq!(s.mode, Mode::FullNat);
        assert!(
            s.local_addresses.iter().all(|l| lips.contains(l)),
            "every LIP floats with VRRP"
        );
    }
    assert_eq!(services[0].local_addresses, lips);
    assert_eq!(services[0].proxy_protocol, Some(config::ProxyProtocol::V2));
    assert_ne!(
        services[0].reals[0].addr.port(),
        services[0].vip.port(),
        "FULLNAT may change the port"
    );
    assert_eq!(services[1].protocol, Protocol::Udp);
    assert_eq!(services[1].proxy_protocol, None);
}

#[test]
fn full_example_uses_the_defaults_of_config_md() {
    let c = load("full.toml");
    let vrrp = c.vrrp.as_ref().expect("full.toml has VRRP");
    assert_eq!(vrrp.groups[0].config.members, ["ext", "int-gw"]);
    assert_eq!(c.control.socket, Path::new(config::DEFAULT_SOCKET_PATH));
    assert_eq!(c.control.metrics, None);
    assert_eq!(c.datapath, forwarder::model::DatapathConfig::default());
}
