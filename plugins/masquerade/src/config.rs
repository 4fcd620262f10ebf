//! masquerade's configuration: the mode, its table, and what is not masqueraded.

use common::linkgroup::GroupRef;
use common::masq::{validate_table, DEFAULT_TABLE};
use common::types::{lenient, parse_cidr};
use common::{CniError, Result};
use ipnetwork::IpNetwork;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct MasqConf {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(rename = "podGroup", default)]
    pod_group: Option<GroupRef>,
    #[serde(rename = "excludeGroups", default)]
    exclude_groups: Option<Vec<GroupRef>>,
    #[serde(rename = "randomFully", default)]
    random_fully: Option<bool>,
    #[serde(rename = "excludeCIDRs", default)]
    exclude_cidrs: Option<Vec<String>>,
}

/// The table a DEL looks in: the configured one when it is usable, else ours by default (where an ADD
/// with an unusable table could not have put anything, so looking costs nothing).
pub fn table_for_del(config: Result<TableOnly>) -> String {
    match config.ok().and_then(|t| t.table) {
        Some(t) if validate_table(&t).is_ok() => t,
        _ => DEFAULT_TABLE.into(),
    }
}

/// The one key DEL reads, of any JSON type.
#[derive(Debug, Deserialize)]
pub struct TableOnly {
    #[serde(default, deserialize_with = "lenient")]
    table: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// One rule for the pod link group.
    Group { pod_group: GroupRef, exclude_groups: Vec<GroupRef> },
    /// Per-pod elements; `None`: each address's own subnet is excluded.
    Pod { excludes: Option<Vec<IpNetwork>> },
}

#[derive(Debug)]
pub struct Settings {
    pub table: String,
    pub random_fully: bool,
    pub mode: Mode,
}

impl MasqConf {
    pub fn settings(self) -> Result<Settings> {
        let table = self.table.unwrap_or_else(|| DEFAULT_TABLE.into());
        validate_table(&table)?;
        let mode = match self.mode.as_deref().unwrap_or("group") {
            "group" => {
                if self.exclude_cidrs.is_some() {
                    return Err(CniError::InvalidConfig("excludeCIDRs applies to mode \"pod\" only".into()));
                }
                Mode::Group {
                    pod_group: self.pod_group.unwrap_or(GroupRef::Number(8)),
                    exclude_groups: self.exclude_groups.unwrap_or_else(|| vec![GroupRef::Number(9)]),
                }
            }
            "pod" => {
                if self.pod_group.is_some() || self.exclude_groups.is_some() {
                    return Err(CniError::InvalidConfig(
                        "podGroup and excludeGroups apply to mode \"group\" only".into(),
                    ));
                }
                let excludes = self
                    .exclude_cidrs
                    .map(|l| l.iter().map(|c| parse_cidr(c)).collect::<Result<Vec<_>>>())
                    .transpose()?;
                Mode::Pod { excludes }
            }
            other => return Err(CniError::InvalidConfig(format!("mode {other:?}: use \"group\" or \"pod\""))),
        };
        Ok(Settings { table, random_fully: self.random_fully.unwrap_or(true), mode })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings> {
        common::gojson::from_slice::<MasqConf>(json.as_bytes())
            .map_err(|e| CniError::Decode(e.to_string()))?
            .0
            .settings()
    }

    #[test]
    fn defaults_are_group_8_excluding_9_fully_random() {
        let s = parse("{}").unwrap();
        assert_eq!(s.table, "cni_chain");
        assert!(s.random_fully);
        assert_eq!(s.mode, Mode::Group { pod_group: GroupRef::Number(8), exclude_groups: vec![GroupRef::Number(9)] });
    }

    #[test]
    fn pod_mode_reads_excluded_cidrs_strictly() {
        let s = parse(r#"{"mode":"pod","excludeCIDRs":["10.0.0.0/8","fd00::/8"],"randomFully":false}"#).unwrap();
        assert!(!s.random_fully);
        assert!(matches!(s.mode, Mode::Pod { excludes: Some(ref v) } if v.len() == 2));
        assert_eq!(parse(r#"{"mode":"pod"}"#).unwrap().mode, Mode::Pod { excludes: None });
        assert_eq!(parse(r#"{"mode":"pod","excludeCIDRs":["10.0.0.1"]}"#).unwrap_err().code(), 7);
    }

    #[test]
    fn keys_are_read_as_go_reads_them() {
        let s = parse(r#"{"Mode": "pod", "RandomFully": false, "excludecidrs": ["10.0.0.0/8"]}"#).unwrap();
        assert!(!s.random_fully);
        assert!(matches!(s.mode, Mode::Pod { excludes: Some(ref v) } if v.len() == 1));
    }

    #[test]
    fn bad_settings_are_config_errors() {
        for bad in [
            r#"{"mode":"both"}"#,
            r#"{"table":"no spaces"}"#,
            r#"{"mode":"group","excludeCIDRs":["10.0.0.0/8"]}"#,
            r#"{"mode":"pod","podGroup":8}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code(), 7, "{bad}");
        }
        assert_eq!(parse(r#"{"podGroup":[8]}"#).unwrap_err().code(), 6);
    }
}
