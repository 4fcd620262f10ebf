//! egress-v4's configuration, compatible with the AWS VPC CNI's `egress-cni` (v4 mode) configs.

use common::invocation::validate_ifname;
use common::nft::PortSelection;
use common::types::{bool_or_string, lenient, number_or_string, validate_mtu};
use common::{CniError, Result};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, Deserialize)]
pub struct EgressConf {
    #[serde(default, deserialize_with = "bool_or_string")]
    enabled: Option<bool>,
    #[serde(rename = "nodeIP", default)]
    node_ip: Option<String>,
    #[serde(default, deserialize_with = "number_or_string")]
    mtu: Option<u32>,
    #[serde(rename = "randomizeSNAT", default)]
    randomize_snat: Option<String>,
    #[serde(rename = "ifName", default)]
    if_name: Option<String>,
    #[serde(rename = "vethPrefix", default)]
    veth_prefix: Option<String>,
}

pub const DEFAULT_IFNAME: &str = "v4if0";
pub const DEFAULT_VETH_PREFIX: &str = "egress";

/// What DEL reads: whether it is on, and the names that find the attachment.
#[derive(Debug, PartialEq, Eq)]
pub struct DelSettings {
    pub enabled: bool,
    pub if_name: String,
    pub veth_prefix: String,
}

/// The keys DEL reads, of any JSON type.
#[derive(Debug, Deserialize)]
pub struct DelConf {
    #[serde(default, deserialize_with = "lenient_flag")]
    enabled: Option<bool>,
    #[serde(rename = "ifName", default, deserialize_with = "lenient")]
    if_name: Option<String>,
    #[serde(rename = "vethPrefix", default, deserialize_with = "lenient")]
    veth_prefix: Option<String>,
}

fn lenient_flag<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<bool>, D::Error> {
    Ok(bool_or_string(d).ok().flatten())
}

/// Unusable values fall back to the defaults: DEL then finds what an ADD with the defaults made.
pub fn del_settings(config: Result<DelConf>) -> DelSettings {
    let c = config.unwrap_or(DelConf { enabled: None, if_name: None, veth_prefix: None });
    let enabled = c.enabled.unwrap_or(true);
    let if_name = c.if_name.filter(|n| validate_ifname(n).is_ok()).unwrap_or_else(|| DEFAULT_IFNAME.into());
    let veth_prefix = c.veth_prefix.filter(|p| !p.is_empty()).unwrap_or_else(|| DEFAULT_VETH_PREFIX.into());
    DelSettings { enabled, if_name, veth_prefix }
}

#[derive(Debug)]
pub struct Settings {
    pub enabled: bool,
    /// None: the preferred source of the node's IPv4 default route, looked up when needed.
    pub node_ip: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
    pub ports: PortSelection,
    pub if_name: String,
    pub veth_prefix: String,
}

impl EgressConf {
    pub fn settings(self) -> Result<Settings> {
        let ports = match self.randomize_snat.as_deref().unwrap_or("") {
            "" | "prng" => PortSelection::FullyRandom,
            "hashrandom" => PortSelection::HashRandom,
            "none" => PortSelection::Keep,
            other => {
                return Err(CniError::InvalidConfig(format!(
                    "randomizeSNAT {other:?}: use \"prng\", \"hashrandom\" or \"none\""
                )))
            }
        };
        let node_ip = match self.node_ip.as_deref().map(str::trim).unwrap_or("") {
            "" => None,
            text => match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) if !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast() => Some(ip),
                _ => return Err(CniError::InvalidConfig(format!("nodeIP {text:?} is not a unicast IPv4 address"))),
            },
        };
        let mtu = validate_mtu(self.mtu)?;
        let if_name = self.if_name.filter(|n| !n.is_empty()).unwrap_or_else(|| DEFAULT_IFNAME.into());
        validate_ifname(&if_name).map_err(|_| CniError::InvalidConfig(format!("ifName {if_name:?} is not usable")))?;
        Ok(Settings {
            enabled: self.enabled.unwrap_or(true),
            node_ip,
            mtu,
            ports,
            if_name,
            veth_prefix: self.veth_prefix.filter(|p| !p.is_empty()).unwrap_or_else(|| DEFAULT_VETH_PREFIX.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings> {
        common::gojson::from_slice::<EgressConf>(json.as_bytes())
            .map_err(|e| CniError::Decode(e.to_string()))?
            .0
            .settings()
    }

    #[test]
    fn aws_egress_cni_config_is_accepted() {
        let s = parse(
            r#"{"name":"egress-cni","type":"egress-cni","mtu":"9001","enabled":"true","randomizeSNAT":"prng",
            "nodeIP":"192.168.1.123","ipam":{"type":"host-local","ranges":[[{"subnet":"169.254.172.0/22"}]],
            "routes":[{"dst":"0.0.0.0/0"}],"dataDir":"/run/cni/v4pd/egress-v4-ipam"},
            "pluginLogFile":"/var/log/aws-routed-eni/egress-v4-plugin.log","pluginLogLevel":"DEBUG"}"#,
        )
        .unwrap();
        assert!(s.enabled);
        assert_eq!(s.mtu, Some(9001));
        assert_eq!(s.node_ip, Some(Ipv4Addr::new(192, 168, 1, 123)));
        assert_eq!(s.ports, PortSelection::FullyRandom);
        assert_eq!(s.if_name, "v4if0");
        assert_eq!(s.veth_prefix, "egress");
    }

    #[test]
    fn defaults_and_spellings() {
        let s = parse("{}").unwrap();
        assert!(s.enabled);
        assert_eq!(s.node_ip, None);
        assert_eq!(s.ports, PortSelection::FullyRandom);
        assert!(!parse(r#"{"enabled": false}"#).unwrap().enabled);
        assert!(!parse(r#"{"enabled": "False"}"#).unwrap().enabled);
        assert!(parse(r#"{"enabled": "", "nodeIP": ""}"#).unwrap().enabled);
        assert_eq!(parse(r#"{"randomizeSNAT": "hashrandom"}"#).unwrap().ports, PortSelection::HashRandom);
        assert_eq!(parse(r#"{"randomizeSNAT": "none"}"#).unwrap().ports, PortSelection::Keep);
        assert_eq!(parse(r#"{"ifName": "egress0"}"#).unwrap().if_name, "egress0");
    }

    #[test]
    fn bad_values_are_errors_with_codes() {
        assert_eq!(parse(r#"{"randomizeSNAT": "random"}"#).unwrap_err().code(), 7);
        assert_eq!(parse(r#"{"nodeIP": "fd00::1"}"#).unwrap_err().code(), 7);
        assert_eq!(parse(r#"{"nodeIP": "10.0.0.0/8"}"#).unwrap_err().code(), 7);
        assert_eq!(parse(r#"{"nodeIP": "224.0.0.1"}"#).unwrap_err().code(), 7);
        assert_eq!(parse(r#"{"mtu": 20}"#).unwrap_err().code(), 7);
        assert_eq!(parse(r#"{"ifName": "a/b"}"#).unwrap_err().code(), 7);
        assert_eq!(parse(r#"{"ifName": "sixteen-chars-xx"}"#).unwrap_err().code(), 7);
        assert_eq!(parse(r#"{"enabled": "yes"}"#).unwrap_err().code(), 6);
        assert_eq!(parse(r#"{"enabled": 1}"#).unwrap_err().code(), 6);
        assert_eq!(parse(r#"{"mtu": "big"}"#).unwrap_err().code(), 6);
    }
}
