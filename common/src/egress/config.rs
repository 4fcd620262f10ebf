//! The egress plugins' configuration, compatible with the AWS VPC CNI's `egress-cni` configs (v4 and v6 mode).

use super::Family;
use crate::invocation::validate_ifname;
use crate::nft::PortSelection;
use crate::types::{bool_or_string, lenient, number_or_string, validate_mtu};
use crate::{CniError, Result};
use serde::Deserialize;
use std::net::IpAddr;

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
pub fn del_settings(family: &Family, config: Result<DelConf>) -> DelSettings {
    let c = config.unwrap_or(DelConf { enabled: None, if_name: None, veth_prefix: None });
    let enabled = c.enabled.unwrap_or(true);
    let if_name = c.if_name.filter(|n| validate_ifname(n).is_ok()).unwrap_or_else(|| family.default_ifname.into());
    let veth_prefix = c.veth_prefix.filter(|p| !p.is_empty()).unwrap_or_else(|| family.default_veth_prefix.into());
    DelSettings { enabled, if_name, veth_prefix }
}

#[derive(Debug)]
pub struct Settings {
    pub enabled: bool,
    /// None: the preferred source of the node's default route of the family, looked up when needed.
    pub node_ip: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub ports: PortSelection,
    pub if_name: String,
    pub veth_prefix: String,
}

impl EgressConf {
    pub fn settings(self, family: &Family) -> Result<Settings> {
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
                Ok(ip) if usable_node_ip(family, ip) => Some(ip),
                _ => {
                    return Err(CniError::InvalidConfig(format!(
                        "nodeIP {text:?} is not a unicast {} address",
                        family.name()
                    )))
                }
            },
        };
        let mtu = validate_mtu(self.mtu)?;
        if let Some(m) = mtu.filter(|&m| family.v6 && m < 1280) {
            return Err(CniError::InvalidConfig(format!("mtu {m} is below IPv6's minimum of 1280")));
        }
        let if_name = self.if_name.filter(|n| !n.is_empty()).unwrap_or_else(|| family.default_ifname.into());
        validate_ifname(&if_name).map_err(|_| CniError::InvalidConfig(format!("ifName {if_name:?} is not usable")))?;
        Ok(Settings {
            enabled: self.enabled.unwrap_or(true),
            node_ip,
            mtu,
            ports,
            if_name,
            veth_prefix: self
                .veth_prefix
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| family.default_veth_prefix.into()),
        })
    }
}

/// An address SNAT can rewrite to: of the family, unicast and, for IPv6, not link-local.
fn usable_node_ip(family: &Family, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !family.v6 && !v4.is_unspecified() && !v4.is_multicast() && !v4.is_broadcast(),
        IpAddr::V6(v6) => {
            family.v6 && !v6.is_unspecified() && !v6.is_multicast() && !v6.is_loopback() && !v6.is_unicast_link_local()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{V4, V6};
    use super::*;
    use std::net::Ipv4Addr;

    fn parse_as(family: &Family, json: &str) -> Result<Settings> {
        crate::gojson::from_slice::<EgressConf>(json.as_bytes())
            .map_err(|e| CniError::Decode(e.to_string()))?
            .0
            .settings(family)
    }

    fn parse(json: &str) -> Result<Settings> {
        parse_as(&V4, json)
    }

    fn parse6(json: &str) -> Result<Settings> {
        parse_as(&V6, json)
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
        assert_eq!(s.node_ip, Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 123))));
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

    #[test]
    fn aws_egress_cni_v6_config_is_accepted() {
        let s = parse6(
            r#"{"cniVersion":"0.4.0","name":"egress-cni","type":"egress-cni","enabled":"true","mtu":"9001",
            "nodeIP":"2600:1f14:abc:d00::7","randomizeSNAT":"prng","vethPrefix":"eni",
            "ipam":{"type":"host-local","ranges":[[{"subnet":"fd00::ac:00/118"}]],"routes":[{"dst":"::/0"}],
            "dataDir":"/run/cni/v6pd/egress-v6-ipam"},
            "pluginLogFile":"/var/log/aws-routed-eni/egress-v6-plugin.log","pluginLogLevel":"DEBUG"}"#,
        )
        .unwrap();
        assert!(s.enabled);
        assert_eq!(s.mtu, Some(9001));
        assert_eq!(s.node_ip, Some("2600:1f14:abc:d00::7".parse().unwrap()));
        assert_eq!(s.if_name, "v6if0");
        assert_eq!(s.veth_prefix, "eni");
        assert_eq!(parse6("{}").unwrap().veth_prefix, V6.default_veth_prefix);
        assert_ne!(V6.default_veth_prefix, V4.default_veth_prefix, "the two never find each other's veths");
    }

    #[test]
    fn node_ip_of_the_other_family_or_link_local_and_small_mtu_are_refused() {
        for bad in [
            r#"{"nodeIP": "192.0.2.1"}"#,
            r#"{"nodeIP": "fe80::1"}"#,
            r#"{"nodeIP": "ff02::1"}"#,
            r#"{"nodeIP": "::"}"#,
            r#"{"mtu": 1279}"#,
        ] {
            assert_eq!(parse6(bad).unwrap_err().code(), 7, "{bad}");
        }
        assert_eq!(parse6(r#"{"mtu": 1280}"#).unwrap().mtu, Some(1280));
        assert_eq!(parse6(r#"{"nodeIP": " fd00::1 "}"#).unwrap().node_ip, Some("fd00::1".parse().unwrap()));
    }
}
