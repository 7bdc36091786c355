//! The config file as written: serde structs that mirror the TOML tables key for key.
//!
//! Nothing here is interpreted. Values whose meaning `validate` checks are kept as strings or
//! wide integers inside `Spanned`, so that a bad value becomes a collected error that points at
//! the value, instead of aborting deserialization at the first one.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node: NodeFile,
    pub vrrp: Option<VrrpFile>,
    pub sync: Option<Spanned<SyncFile>>,
    #[serde(default)]
    pub service: Vec<Spanned<ServiceFile>>,
    pub control: Option<ControlFile>,
    pub datapath: Option<DatapathFile>,
}

/// `[node]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub name: Spanned<String>,
}

/// `[vrrp]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpFile {
    pub version: Option<Spanned<i64>>,
    pub advert_interval: Option<Spanned<RawDuration>>,
    pub checksum: Option<Spanned<String>>,
    pub garp_repeat: Option<Spanned<i64>>,
    pub garp_interval: Option<Spanned<RawDuration>>,
    pub garp_delay: Option<Spanned<RawDuration>>,
    pub garp_refresh: Option<Spanned<RawDuration>>,
    pub realtime_priority: Option<Spanned<i64>>,
    #[serde(default)]
    pub instance: Vec<Spanned<VrrpInstanceFile>>,
    #[serde(default)]
    pub group: Vec<Spanned<VrrpGroupFile>>,
}

/// `[[vrrp.instance]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpInstanceFile {
    pub name: Spanned<String>,
    pub interface: Spanned<String>,
    pub vrid: Spanned<i64>,
    pub priority: Spanned<i64>,
    pub vips: Spanned<Vec<Spanned<String>>>,
    pub preempt: Option<bool>,
    pub preempt_delay: Option<Spanned<RawDuration>>,
    #[serde(default)]
    pub unicast_peers: Vec<Spanned<String>>,
    #[serde(default)]
    pub track_interfaces: Vec<Spanned<TrackInterfaceFile>>,
    pub accept: Option<bool>,
    pub notify: Option<Spanned<String>>,
}

/// One entry of `track_interfaces = [{ name = "eth1", weight = -60 }]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackInterfaceFile {
    pub name: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
}

/// `[[vrrp.group]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpGroupFile {
    pub name: Spanned<String>,
    pub instances: Vec<Spanned<String>>,
    pub notify: Option<Spanned<String>>,
}

/// `[sync]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncFile {
    pub interface: Spanned<String>,
    pub peer: Option<Spanned<String>>,
    pub group: Option<Spanned<String>>,
    pub key_file: Spanned<String>,
    pub resync_timeout: Option<Spanned<RawDuration>>,
}

/// `[[service]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: Spanned<String>,
    pub vip: Spanned<String>,
    pub protocol: Option<Spanned<String>>,
    pub mode: Spanned<String>,
    pub scheduler: Option<Spanned<String>>,
    pub persistence: Option<Spanned<RawDuration>>,
    pub local_addresses: Option<Spanned<Vec<Spanned<String>>>>,
    pub proxy_protocol: Option<Spanned<String>>,
    pub sorry_server: Option<Spanned<String>>,
    pub quorum: Option<Spanned<i64>>,
    pub check: Option<Spanned<CheckFile>>,
    #[serde(default)]
    pub real: Vec<Spanned<RealFile>>,
}

/// `[service.check]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckFile {
    pub kind: Spanned<String>,
    pub port: Option<Spanned<i64>>,
    pub path: Option<Spanned<String>>,
    pub status: Option<Spanned<Vec<Spanned<i64>>>>,
    pub body: Option<Spanned<String>>,
    pub command: Option<Spanned<Vec<String>>>,
    pub payload: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
    pub interval: Option<Spanned<RawDuration>>,
    pub timeout: Option<Spanned<RawDuration>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub on_fail: Option<Spanned<String>>,
}

/// `[[service.real]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealFile {
    pub address: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
}

/// `[control]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlFile {
    pub socket: Option<Spanned<String>>,
    pub metrics: Option<Spanned<String>>,
}

/// `[datapath]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatapathFile {
    pub workers: Option<Spanned<i64>>,
    pub xdp: Option<Spanned<String>>,
    pub fast_path: Option<Spanned<bool>>,
    pub max_connections: Option<Spanned<i64>>,
    pub interfaces: Option<Vec<Spanned<String>>>,
    pub tcp_timeout: Option<Spanned<RawDuration>>,
    pub tcp_fin_timeout: Option<Spanned<RawDuration>>,
    pub udp_timeout: Option<Spanned<RawDuration>>,
}

/// A duration as written. A bare number is accepted here so that `validate` can answer it
/// with the allowed forms rather than a bare "invalid type".
#[derive(Debug, Clone, PartialEq)]
pub enum RawDuration {
    Text(String),
    Number(String),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a duration string such as "100ms", "2s", "1m" or "1h""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Number(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration::Number(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawDuration, E> {
                Ok(RawDuration::Number(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
