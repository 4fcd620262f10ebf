//! The part of a network configuration every plugin reads; each plugin reads its own keys from the same bytes.

use crate::error::{CniError, Result};
use crate::types::{Attachment, CniResult, Dns};
use crate::version::CniVersion;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<Value>,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The pre-1.1 draft name of the same list.
    #[serde(rename = "cni.dev/attachments", default)]
    pub attachments: Option<Vec<Attachment>>,
    #[serde(rename = "logFile", alias = "pluginLogFile", default)]
    pub log_file: Option<String>,
    #[serde(rename = "logLevel", alias = "pluginLogLevel", default)]
    pub log_level: Option<String>,
}

/// The config as read from stdin: typed common part plus the raw bytes for plugin-specific keys.
#[derive(Debug, Clone)]
pub struct Config {
    pub net: NetConf,
    pub version: CniVersion,
    raw: Vec<u8>,
}

impl Config {
    pub fn parse(raw: Vec<u8>) -> Result<Self> {
        let net: NetConf =
            serde_json::from_slice(&raw).map_err(|e| CniError::Decode(format!("network config: {e}")))?;
        let version = CniVersion::parse(&net.cni_version)?;
        if !net.name.is_empty() {
            validate_network_name(&net.name)?;
        }
        Ok(Config { net, version, raw })
    }

    /// The plugin's own view of the same config.
    pub fn plugin<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.raw).map_err(|e| CniError::Decode(format!("{} config: {e}", self.net.kind)))
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match &self.net.prev_result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_value(v).map(Some),
        }
    }

    /// `prevResult`, required by a chained plugin for ADD and CHECK.
    pub fn require_prev_result(&self) -> Result<CniResult> {
        self.prev_result()?.ok_or_else(|| {
            CniError::InvalidConfig(format!(
                "{} must be chained after a plugin that returns a result (no prevResult)",
                self.net.kind
            ))
        })
    }

    /// The attachments a GC call says are still in use (either key).
    pub fn valid_attachments(&self) -> Vec<Attachment> {
        self.net.valid_attachments.clone().or_else(|| self.net.attachments.clone()).unwrap_or_default()
    }
}

/// Network names become file and table names: the spec's character set, nothing that can walk a path.
pub fn validate_network_name(name: &str) -> Result<()> {
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_first && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) && name.len() <= 255 {
        Ok(())
    } else {
        Err(CniError::InvalidConfig(format!("invalid network name {name:?}: use letters, digits, '_', '.', '-'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_common_keys_and_both_attachment_spellings() {
        let raw = br#"{"cniVersion":"1.1.0","name":"n","type":"ptp","ipam":{"type":"host-local"},
            "cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}],"logLevel":"debug"}"#;
        let c = Config::parse(raw.to_vec()).unwrap();
        assert_eq!(c.version, CniVersion::V1_1_0);
        assert_eq!(c.net.ipam.as_ref().unwrap().kind, "host-local");
        assert_eq!(c.valid_attachments()[0].container_id, "c1");
        assert_eq!(c.net.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn bad_configs_get_the_right_codes() {
        let cases: [(&[u8], u32); 6] = [
            (b"{not json", 6),
            (br#"{"cniVersion": 1}"#, 6),
            (br#"{"name":"x"}"#, 6),
            (br#"{"cniVersion":"0.2.0","name":"x"}"#, 1),
            (br#"{"cniVersion":"9.9.9","name":"x"}"#, 1),
            (br#"{"cniVersion":"1.0.0","name":"../etc"}"#, 7),
        ];
        for (raw, code) in cases {
            assert_eq!(Config::parse(raw.to_vec()).unwrap_err().code(), code, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn chained_plugin_without_prev_result_is_told_so() {
        let c = Config::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"linkgroup"}"#.to_vec()).unwrap();
        assert!(c.require_prev_result().unwrap_err().to_string().contains("prevResult"));
    }
}
