//! ptp's configuration: the reference ptp's keys plus `linkGroup` and `vethPrefix`.

use common::linkgroup::GroupRef;
use common::types::{lenient, number_or_string, validate_mtu, Dns};
use common::{CniError, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct PtpConf {
    #[serde(default, deserialize_with = "number_or_string")]
    pub mtu: Option<u32>,
    #[serde(rename = "ipMasq", default)]
    pub ip_masq: bool,
    #[serde(rename = "ipMasqBackend", default)]
    pub ip_masq_backend: Option<String>,
    #[serde(rename = "linkGroup", default)]
    pub link_group: Option<GroupRef>,
    #[serde(rename = "vethPrefix", default = "default_prefix")]
    pub veth_prefix: String,
    #[serde(default)]
    pub dns: Option<Dns>,
}

fn default_prefix() -> String {
    "veth".into()
}

/// What DEL needs of the config: the names that find the attachment. A value DEL does not need (a bad MTU,
/// an unknown backend, a group of the wrong type) must not leak the pod, so nothing else is read.
#[derive(Debug, PartialEq, Eq)]
pub struct DelSettings {
    pub veth_prefix: String,
}

/// The keys DEL reads, of any JSON type.
#[derive(Debug, Deserialize)]
pub struct DelConf {
    #[serde(rename = "vethPrefix", default, deserialize_with = "lenient")]
    veth_prefix: Option<String>,
}

pub fn del_settings(config: Result<DelConf>) -> DelSettings {
    let prefix = config.ok().and_then(|c| c.veth_prefix);
    DelSettings { veth_prefix: prefix.unwrap_or_else(default_prefix) }
}

/// What the config resolves to, checked before anything is changed.
#[derive(Debug)]
pub struct Settings {
    pub mtu: Option<u32>,
    /// Resolved only by the verbs that use it: DEL must work even if a group name vanished.
    pub group: Option<GroupRef>,
    pub veth_prefix: String,
    pub dns: Option<Dns>,
    /// nftables masquerade of the pod's addresses except towards their own subnets (masquerade's pod mode).
    pub ip_masq: bool,
}

impl PtpConf {
    pub fn settings(self) -> Result<Settings> {
        match self.ip_masq_backend.as_deref() {
            None | Some("") | Some("nftables") => {}
            Some("iptables") => {
                return Err(CniError::UnsupportedField(
                    "ipMasqBackend \"iptables\": cni-chain speaks nftables only".into(),
                ))
            }
            Some(other) => return Err(CniError::InvalidConfig(format!("ipMasqBackend {other:?}: use \"nftables\""))),
        }
        let mtu = validate_mtu(self.mtu)?;
        Ok(Settings {
            mtu,
            group: self.link_group,
            veth_prefix: self.veth_prefix,
            dns: self.dns.filter(|d| !d.is_empty()),
            ip_masq: self.ip_masq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings> {
        common::gojson::from_slice::<PtpConf>(json.as_bytes())
            .map_err(|e| CniError::Decode(e.to_string()))?
            .0
            .settings()
    }

    #[test]
    fn reference_ptp_config_is_accepted() {
        let s = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"ptp","ipMasq":false,"mtu":1400,
            "ipam":{"type":"host-local","subnet":"10.1.0.0/24"},"dns":{"nameservers":["10.1.0.1"]}}"#,
        )
        .unwrap();
        assert_eq!(s.mtu, Some(1400));
        assert_eq!(s.veth_prefix, "veth");
        assert_eq!(s.dns.unwrap().nameservers, ["10.1.0.1"]);
    }

    #[test]
    fn keys_are_read_as_go_reads_them() {
        let s = parse(r#"{"MTU": 1400, "ipmasq": true, "LinkGroup": 8, "mtu": 1450}"#).unwrap();
        assert_eq!((s.mtu, s.ip_masq, s.group), (Some(1450), true, Some(GroupRef::Number(8))));
        assert_eq!(parse(r#"{"mtu": 0}"#).unwrap().mtu, None, "0 is Go's unset");
    }

    #[test]
    fn link_group_by_number() {
        assert_eq!(parse(r#"{"linkGroup": 8}"#).unwrap().group, Some(GroupRef::Number(8)));
        assert_eq!(parse(r#"{"linkGroup": "8"}"#).unwrap().group, Some(GroupRef::Number(8)));
    }

    #[test]
    fn del_reads_only_the_veth_prefix() {
        let del = |json: &str| del_settings(serde_json::from_str(json).map_err(|e| CniError::Decode(e.to_string())));
        assert_eq!(del(r#"{"mtu":"x","ipMasqBackend":"bpf","vethPrefix":"p"}"#).veth_prefix, "p");
        assert_eq!(del(r#"{"vethPrefix":7}"#).veth_prefix, "veth");
        assert_eq!(del("{}").veth_prefix, "veth");
    }

    #[test]
    fn iptables_and_bad_values_are_refused_with_codes() {
        assert!(parse(r#"{"ipMasq": true, "ipMasqBackend": "nftables"}"#).unwrap().ip_masq);
        assert_eq!(parse(r#"{"ipMasqBackend": "iptables"}"#).unwrap_err().code(), 2);
        assert_eq!(parse(r#"{"ipMasqBackend": "bpf"}"#).unwrap_err().code(), 7);
        assert_eq!(parse(r#"{"mtu": 10}"#).unwrap_err().code(), 7);
        assert_eq!(parse(r#"{"mtu": "x"}"#).unwrap_err().code(), 6);
    }
}
