//! CNI results (every version from 0.3.0 to 1.1.0 read into one superset, written out per version)
//! and the small value types that configs share.

use crate::error::{CniError, Result};
use crate::version::CniVersion;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// Parse `ip/prefix` strictly: a bare IP, a non-numeric or out-of-range prefix is an error.
pub fn parse_cidr(s: &str) -> Result<IpNetwork> {
    let bad = || CniError::InvalidConfig(format!("{s:?} is not a CIDR (address/prefix)"));
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    IpNetwork::new(ip, prefix).map_err(|_| bad())
}

/// The network a CIDR names (host bits cleared), as Go's `net.ParseCIDR` returns it.
pub fn network_of(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

/// Serde adapter for a strictly parsed CIDR.
pub mod cidr {
    use super::*;
    pub fn serialize<S: Serializer>(n: &IpNetwork, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(n)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<IpNetwork, D::Error> {
        let s = String::deserialize(d)?;
        parse_cidr(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter for an optional IP where runtimes sometimes send `""` for "none".
pub mod opt_ip {
    use super::*;
    pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> std::result::Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<IpAddr>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| serde::de::Error::custom(format!("{s:?} is not an IP address"))),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(rename = "socketPath", default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces` of the interface this address is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(with = "cidr")]
    pub address: IpNetwork,
    #[serde(default, with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    #[serde(with = "cidr")]
    pub dst: IpNetwork,
    #[serde(default, with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Route { dst, gw, mtu: None, advmss: None, priority: None, table: None, scope: None }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

/// A result of any version from 0.3.0 on, held as the 1.1.0 superset. The 0.3.x/0.4.0 per-IP
/// `version` field is read and dropped: it is derived from the address when writing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// Read a result as a plugin or runtime wrote it (any supported version).
    pub fn from_value(v: &Value) -> Result<Self> {
        if let Some(ver) = v.get("cniVersion").and_then(Value::as_str) {
            if ver.starts_with("0.1") || ver.starts_with("0.2") {
                return Err(CniError::IncompatibleVersion(format!(
                    "result version {ver} (ip4/ip6 form) is not supported"
                )));
            }
        }
        crate::gojson::from_value(v.clone()).map(|(r, _)| r).map_err(|e| CniError::Decode(format!("result: {e}")))
    }

    /// The result as the spec's JSON for `version`: fields a version lacks are left out.
    pub fn to_value(&self, version: CniVersion) -> Value {
        let mut out = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        out.insert("cniVersion".into(), Value::from(version.as_str()));
        if !version.has_1_1_fields() {
            strip(&mut out, "interfaces", &["mtu", "socketPath", "pciID"]);
            strip(&mut out, "routes", &["mtu", "advmss", "priority", "table", "scope"]);
        }
        if version.ip_has_version_field() {
            if let Some(Value::Array(ips)) = out.get_mut("ips") {
                for (ip, cfg) in ips.iter_mut().zip(&self.ips) {
                    if let Value::Object(m) = ip {
                        let fam = if cfg.address.is_ipv4() { "4" } else { "6" };
                        m.insert("version".into(), Value::from(fam));
                    }
                }
            }
        }
        Value::Object(out)
    }

    /// Index of the interface named `name` that lives in a sandbox (the container side).
    pub fn container_interface(&self, name: &str) -> Option<usize> {
        self.interfaces.iter().position(|i| i.name == name && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    }
}

fn strip(obj: &mut Map<String, Value>, list: &str, keys: &[&str]) {
    if let Some(Value::Array(items)) = obj.get_mut(list) {
        for item in items {
            if let Value::Object(m) = item {
                for k in keys {
                    m.remove(*k);
                }
            }
        }
    }
}

/// One attachment named by a GC call's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct Attachment {
    #[serde(rename = "containerID", alias = "ContainerID", alias = "containerId")]
    pub container_id: String,
    #[serde(alias = "ifName", alias = "IfName")]
    pub ifname: String,
}

/// An MTU from a config: IPv4's minimum up to the largest a veth takes.
pub fn validate_mtu(mtu: Option<u32>) -> Result<Option<u32>> {
    match mtu {
        // Go's zero value: the reference plugins leave the MTU to the kernel then.
        Some(0) | None => Ok(None),
        Some(m) if !(68..=65535).contains(&m) => Err(CniError::InvalidConfig(format!("mtu {m} is outside 68..65535"))),
        Some(m) => Ok(Some(m)),
    }
}

/// A value DEL reads but must not fail on: None when it is missing or of another type.
pub fn lenient<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> std::result::Result<Option<T>, D::Error> {
    let value = Value::deserialize(d)?;
    Ok(T::deserialize(value).ok())
}

/// A number given as a JSON number or a numeric string (AWS configs write `"mtu": "9001"`).
pub fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u32),
        Str(String),
    }
    match Option::<NumOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrStr::Num(n)) => Ok(Some(n)),
        Some(NumOrStr::Str(s)) if s.is_empty() => Ok(None),
        Some(NumOrStr::Str(s)) => {
            s.trim().parse().map(Some).map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number")))
        }
    }
}

/// A flag given as a JSON bool or the string "true"/"false" (AWS templates write `"enabled": "true"`);
/// an empty string means unset.
pub fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BoolOrStr {
        Bool(bool),
        Str(String),
    }
    match Option::<BoolOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(BoolOrStr::Bool(b)) => Ok(Some(b)),
        Some(BoolOrStr::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(serde::de::Error::custom(format!("{s:?} is neither true nor false"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the reference ptp writes at 0.3.1 (interfaces without sandbox on the host side).
    fn reference_ptp_031() -> Value {
        json!({
            "cniVersion": "0.3.1",
            "interfaces": [
                {"name": "veth1a2b3c4d", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/var/run/netns/x"}
            ],
            "ips": [{"version": "4", "interface": 1, "address": "10.1.1.5/24", "gateway": "10.1.1.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    }

    #[test]
    fn reads_a_reference_ptp_result() {
        let r = CniResult::from_value(&reference_ptp_031()).unwrap();
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(r.interfaces[0].sandbox, None);
        assert_eq!(r.ips[0].interface, Some(1));
        assert_eq!(r.ips[0].gateway, Some("10.1.1.1".parse().unwrap()));
        assert_eq!(r.container_interface("eth0"), Some(1));
    }

    #[test]
    fn writes_version_field_only_before_1_0() {
        let r = CniResult::from_value(&reference_ptp_031()).unwrap();
        for v in crate::version::SUPPORTED {
            let out = r.to_value(v);
            assert_eq!(out["cniVersion"], v.as_str());
            assert_eq!(out["ips"][0].get("version").is_some(), v < CniVersion::V1_0_0, "{v}");
            assert_eq!(CniResult::from_value(&out).unwrap(), r, "round trip at {v}");
        }
    }

    #[test]
    fn drops_1_1_fields_for_older_versions() {
        let mut r = CniResult::default();
        r.interfaces.push(Interface { name: "eth0".into(), mtu: Some(1400), ..Default::default() });
        let mut route = Route::new(parse_cidr("0.0.0.0/0").unwrap(), None);
        route.table = Some(100);
        route.scope = Some(0);
        r.routes.push(route);
        let old = r.to_value(CniVersion::V1_0_0);
        assert!(old["interfaces"][0].get("mtu").is_none());
        assert!(old["routes"][0].get("table").is_none());
        let new = r.to_value(CniVersion::V1_1_0);
        assert_eq!(new["interfaces"][0]["mtu"], 1400);
        assert_eq!(new["routes"][0]["table"], 100);
        assert_eq!(CniResult::from_value(&new).unwrap(), r);
    }

    #[test]
    fn strict_cidr_parsing() {
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("fd00::1/64").is_ok());
        for bad in ["10.0.0.1", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/+8", "x/8", "fd00::/129", "10.0.0.0/8 "] {
            assert_eq!(parse_cidr(bad).unwrap_err().code(), 7, "{bad}");
        }
        assert_eq!(network_of(parse_cidr("10.1.2.3/16").unwrap()).to_string(), "10.1.0.0/16");
    }

    #[test]
    fn rejects_legacy_and_malformed_results() {
        assert_eq!(CniResult::from_value(&json!({"cniVersion": "0.2.0", "ip4": {}})).unwrap_err().code(), 1);
        let bad = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]});
        assert_eq!(CniResult::from_value(&bad).unwrap_err().code(), 6);
        let bad = json!({"cniVersion": "1.0.0", "interfaces": "eth0"});
        assert_eq!(CniResult::from_value(&bad).unwrap_err().code(), 6);
    }

    #[test]
    fn empty_gateway_string_means_none() {
        let r = CniResult::from_value(&json!({"ips": [{"address": "10.0.0.2/24", "gateway": ""}]})).unwrap();
        assert_eq!(r.ips[0].gateway, None);
    }

    #[test]
    fn numbers_may_be_strings() {
        #[derive(Deserialize)]
        struct C {
            #[serde(default, deserialize_with = "number_or_string")]
            mtu: Option<u32>,
        }
        assert_eq!(serde_json::from_str::<C>(r#"{"mtu": "9001"}"#).unwrap().mtu, Some(9001));
        assert_eq!(serde_json::from_str::<C>(r#"{"mtu": 1500}"#).unwrap().mtu, Some(1500));
        assert_eq!(serde_json::from_str::<C>(r#"{}"#).unwrap().mtu, None);
        assert!(serde_json::from_str::<C>(r#"{"mtu": "big"}"#).is_err());
        assert!(serde_json::from_str::<C>(r#"{"mtu": true}"#).is_err());
    }
}
