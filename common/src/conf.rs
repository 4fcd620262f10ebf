//! The part of a network configuration every plugin reads; each plugin reads its own keys from the same bytes.

use crate::error::{CniError, Result};
use crate::gojson::{self, UnknownKey};
use crate::types::{Attachment, CniResult, Dns};
use crate::version::CniVersion;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

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

/// The config as read from stdin: typed common part plus the parsed keys for plugin-specific ones. Both are
/// read with Go's `encoding/json` rules (`gojson`), as the reference plugins read them.
#[derive(Debug, Clone)]
pub struct Config {
    pub net: NetConf,
    pub version: CniVersion,
    raw: Vec<u8>,
    /// The top-level object without `prevResult` (kept in `net`): each plugin's view is decoded from it, not
    /// from the bytes again, and the previous result, the largest part, is neither copied nor decoded twice.
    keys: Map<String, Value>,
    /// Top-level keys the common part does not take, with the common part's own keys.
    beyond_common: Vec<UnknownKey>,
}

/// Keys runtimes add to a plugin's config that no plugin reads.
const RUNTIME_KEYS: [&str; 1] = ["capabilities"];
/// What runtimes pass inside these is meant for whichever plugin takes it: the rest is not a typo.
const RUNTIME_SECTIONS: [&str; 2] = ["runtimeConfig", "args"];

impl Config {
    pub fn parse(raw: Vec<u8>) -> Result<Self> {
        let decode_error = |e: serde_json::Error| CniError::Decode(format!("network config: {e}"));
        let mut keys = match serde_json::from_slice(&raw).map_err(decode_error)? {
            Value::Object(keys) => keys,
            // Refused as Go refuses it, with the same words.
            other => return Err(decode_error(gojson::from_value::<NetConf>(other).err().unwrap_or_else(not_object))),
        };
        let prev_result = take_prev_result(&mut keys);
        let (mut net, unknown): (NetConf, _) = gojson::from_value(Value::Object(keys.clone())).map_err(decode_error)?;
        net.prev_result = prev_result;
        let version = CniVersion::parse(&net.cni_version)?;
        if !net.name.is_empty() {
            validate_network_name(&net.name)?;
        }
        let beyond_common = unknown.into_iter().filter(|u| u.path.len() == 1).collect();
        Ok(Config { net, version, raw, keys, beyond_common })
    }

    /// The plugin's own view of the same config. Keys neither it nor the common part takes are accepted, as
    /// the spec asks, and logged with the nearest known key, so that a typo is found.
    pub fn plugin<T: DeserializeOwned>(&self) -> Result<T> {
        self.decode(|_| true)
    }

    /// An IPAM plugin's view: it reads the `ipam` section, and the main plugin's keys beside it are not its
    /// to report.
    pub fn ipam<T: DeserializeOwned>(&self) -> Result<T> {
        self.decode(|key| key.path.len() > 1 && key.path[0] == "ipam")
    }

    fn decode<T: DeserializeOwned>(&self, report: impl Fn(&UnknownKey) -> bool) -> Result<T> {
        let (conf, unknown) = gojson::from_value(Value::Object(self.keys.clone()))
            .map_err(|e| CniError::Decode(format!("{} config: {e}", self.net.kind)))?;
        let runtime_given = |k: &UnknownKey| k.path.len() > 1 && RUNTIME_SECTIONS.contains(&k.path[0].as_str());
        for key in unknown.iter().filter(|k| report(k) && !runtime_given(k)) {
            let top_level = key.path.len() == 1;
            if top_level && !self.beyond_common.iter().any(|c| c.path == key.path) {
                continue;
            }
            if top_level && RUNTIME_KEYS.contains(&key.path[0].as_str()) {
                continue;
            }
            let common = self.beyond_common.first().map(|c| c.known.clone()).unwrap_or_default();
            let known = key.known.iter().chain(if top_level { common.iter() } else { [].iter() });
            let path = key.path.join(".");
            match gojson::nearest(key.name(), known.copied()) {
                Some(near) => log::warn!("config key {path:?} is not one this plugin reads: did you mean {near:?}?"),
                None => log::warn!("config key {path:?} is not one this plugin reads"),
            }
        }
        Ok(conf)
    }

    /// A few of the plugin's keys, for a verb that needs no more (DEL): the other keys are not reported.
    pub fn plugin_part<T: DeserializeOwned>(&self) -> Result<T> {
        gojson::from_value(Value::Object(self.keys.clone()))
            .map(|(part, _)| part)
            .map_err(|e| CniError::Decode(format!("{} config: {e}", self.net.kind)))
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

/// `prevResult` taken out of the top-level keys as Go would fill the field: its name in any case, the last
/// of several winning, `null` for none.
fn take_prev_result(keys: &mut Map<String, Value>) -> Option<Value> {
    const FIELD: &str = "prevResult";
    if !keys.keys().any(|k| k.eq_ignore_ascii_case(FIELD)) {
        return None;
    }
    let mut found = None;
    for (key, value) in std::mem::take(keys) {
        if key.eq_ignore_ascii_case(FIELD) {
            found = Some(value);
        } else {
            keys.insert(key, value);
        }
    }
    found.filter(|v| !v.is_null())
}

fn not_object() -> serde_json::Error {
    serde::de::Error::custom("a network config is a JSON object")
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
    fn keys_with_dots_are_top_level_keys() {
        let c = Config::parse(
            br#"{"cniVersion":"1.1.0","name":"d","type":"x","cni.dev/valid-attachments":[],
            "unknown.key":1}"#
                .to_vec(),
        )
        .unwrap();
        let paths: Vec<&Vec<String>> = c.beyond_common.iter().map(|u| &u.path).collect();
        assert_eq!(paths, [&vec!["unknown.key".to_string()]]);
    }

    #[test]
    fn prev_result_is_taken_out_as_go_fills_the_field() {
        let c = Config::parse(
            br#"{"cniVersion":"1.0.0","name":"n","PREVRESULT":{"ips":[]},"mtu":1,
            "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]},"type":"x"}"#
                .to_vec(),
        )
        .unwrap();
        assert_eq!(c.require_prev_result().unwrap().ips.len(), 1, "the last of several wins");
        let rest: Vec<&str> = c.keys.keys().map(String::as_str).collect();
        assert_eq!(rest, ["cniVersion", "name", "mtu", "type"]);
        assert!(c.beyond_common.iter().all(|u| u.path != ["prevResult"]));
        let c = Config::parse(br#"{"cniVersion":"1.0.0","prevResult":{"ips":[]},"prevresult":null}"#.to_vec());
        assert!(c.unwrap().prev_result().unwrap().is_none(), "a null given last is none");
        assert_eq!(Config::parse(b"[1]".to_vec()).unwrap_err().code(), 6);
    }

    #[test]
    fn chained_plugin_without_prev_result_is_told_so() {
        let c = Config::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"linkgroup"}"#.to_vec()).unwrap();
        assert!(c.require_prev_result().unwrap_err().to_string().contains("prevResult"));
    }
}
