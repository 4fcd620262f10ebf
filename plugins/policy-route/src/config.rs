//! policy-route's configuration: the table pod traffic uses, the uplink and gateways that table routes to, the
//! rule priorities, the primary uplink for NodePorts, and where the records live.

use common::invocation::validate_ifname;
use common::policy_route::{
    Primary, Uplink, DEFAULT_DATA_DIR, DEFAULT_FROM_POD_PRIORITY, DEFAULT_TO_POD_PRIORITY, PRIMARY_RULE_PRIORITY,
};
use common::{CniError, Result};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
pub struct PolicyRouteConf {
    #[serde(default)]
    table: Option<u32>,
    #[serde(default)]
    uplink: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    gateway6: Option<String>,
    #[serde(rename = "toPodPriority", default)]
    to_pod_priority: Option<u32>,
    #[serde(rename = "fromPodPriority", default)]
    from_pod_priority: Option<u32>,
    #[serde(default)]
    primary: Option<PrimaryConf>,
    #[serde(rename = "dataDir", default)]
    data_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PrimaryConf {
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    mark: Option<Mark>,
}

/// A mark as configs write it: `128`, `"128"` or `"0x80"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Mark {
    Number(u32),
    Text(String),
}

impl Mark {
    fn value(&self) -> Result<u32> {
        let bad = || CniError::InvalidConfig(format!("primary.mark {self:?}: give a number such as \"0x80\""));
        let n = match self {
            Mark::Number(n) => *n,
            Mark::Text(t) => match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(hex) => u32::from_str_radix(hex, 16).map_err(|_| bad())?,
                None => t.parse().map_err(|_| bad())?,
            },
        };
        if n == 0 {
            return Err(CniError::InvalidConfig("primary.mark must have at least one bit set".into()));
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub table: u32,
    pub uplink: Option<Uplink>,
    pub to_pod_priority: u32,
    pub from_pod_priority: u32,
    pub primary: Option<Primary>,
    pub data_dir: PathBuf,
}

/// The main, default and local tables, and "unspecified", are not a secondary uplink's.
const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];
/// The kernel's own rules: `from all lookup main` at 32766, `lookup default` at 32767.
const MAIN_RULE_PRIORITY: u32 = 32766;

impl PolicyRouteConf {
    pub fn settings(self) -> Result<Settings> {
        let invalid = |m: String| Err(CniError::InvalidConfig(m));
        let Some(table) = self.table else {
            return invalid("\"table\" is required: the routing table pod traffic uses".into());
        };
        if RESERVED_TABLES.contains(&table) {
            return invalid(format!("table {table} is reserved (0, 253 default, 254 main, 255 local)"));
        }
        let gateway = parse_gateway(self.gateway.as_deref(), "gateway", false)?;
        let gateway6 = parse_gateway(self.gateway6.as_deref(), "gateway6", true)?;
        let uplink = match (self.uplink, gateway.is_some() || gateway6.is_some()) {
            (Some(interface), true) => {
                validate_name(&interface, "uplink")?;
                Some(Uplink {
                    interface,
                    gateway: gateway.and_then(|g| match g {
                        IpAddr::V4(v4) => Some(v4),
                        IpAddr::V6(_) => None,
                    }),
                    gateway6: gateway6.and_then(|g| match g {
                        IpAddr::V6(v6) => Some(v6),
                        IpAddr::V4(_) => None,
                    }),
                })
            }
            (Some(_), false) => return invalid("\"uplink\" needs \"gateway\" or \"gateway6\"".into()),
            (None, true) => return invalid("\"gateway\" and \"gateway6\" need \"uplink\"".into()),
            (None, false) => None,
        };
        let to_pod_priority = self.to_pod_priority.unwrap_or(DEFAULT_TO_POD_PRIORITY);
        let from_pod_priority = self.from_pod_priority.unwrap_or(DEFAULT_FROM_POD_PRIORITY);
        for (name, p) in [("toPodPriority", to_pod_priority), ("fromPodPriority", from_pod_priority)] {
            if p == 0 || p >= MAIN_RULE_PRIORITY {
                return invalid(format!("{name} {p} must be between 1 and {}", MAIN_RULE_PRIORITY - 1));
            }
        }
        if to_pod_priority >= from_pod_priority {
            return invalid(format!(
                "toPodPriority {to_pod_priority} must come before fromPodPriority {from_pod_priority}: traffic to a \
                 pod must find the pod's route in main"
            ));
        }
        let primary = match self.primary {
            None => None,
            Some(p) => {
                let Some(interface) = p.interface else {
                    return invalid("primary.interface is required".into());
                };
                validate_name(&interface, "primary.interface")?;
                let mark = p.mark.map(|m| m.value()).transpose()?.unwrap_or(0x80);
                if !(to_pod_priority < PRIMARY_RULE_PRIORITY && PRIMARY_RULE_PRIORITY < from_pod_priority) {
                    return invalid(format!(
                        "with \"primary\", toPodPriority must be below {PRIMARY_RULE_PRIORITY} and fromPodPriority \
                         above it, so that NodePort replies find the fwmark rule before the pod's table"
                    ));
                }
                Some(Primary { interface, mark })
            }
        };
        let data_dir =
            PathBuf::from(self.data_dir.filter(|d| !d.is_empty()).unwrap_or_else(|| DEFAULT_DATA_DIR.into()));
        if !data_dir.is_absolute() {
            return invalid(format!("dataDir {:?} must be an absolute path", data_dir.display()));
        }
        Ok(Settings { table, uplink, to_pod_priority, from_pod_priority, primary, data_dir })
    }
}

fn parse_gateway(text: Option<&str>, key: &str, v6: bool) -> Result<Option<IpAddr>> {
    let Some(text) = text.filter(|t| !t.is_empty()) else { return Ok(None) };
    match text.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv6() == v6 => Ok(Some(ip)),
        _ => Err(CniError::InvalidConfig(format!(
            "{key} {text:?} is not an {} address",
            if v6 { "IPv6" } else { "IPv4" }
        ))),
    }
}

fn validate_name(name: &str, key: &str) -> Result<()> {
    validate_ifname(name).map_err(|_| CniError::InvalidConfig(format!("{key} {name:?} is not an interface name")))
}

/// The one key DEL reads, of any JSON type: where the records are.
#[derive(Debug, Deserialize)]
pub struct DataDirOnly {
    #[serde(rename = "dataDir", default, deserialize_with = "common::types::lenient")]
    data_dir: Option<String>,
}

/// DEL's dataDir: the configured one when it is usable, else the default (where an ADD with an unusable one
/// recorded nothing).
pub fn data_dir_for_del(config: Result<DataDirOnly>) -> PathBuf {
    match config.ok().and_then(|c| c.data_dir).map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => PathBuf::from(DEFAULT_DATA_DIR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings> {
        common::gojson::from_slice::<PolicyRouteConf>(json.as_bytes())
            .map_err(|e| CniError::Decode(e.to_string()))?
            .0
            .settings()
    }

    #[test]
    fn the_issue_example_reads_as_written() {
        let s = parse(
            r#"{"table":101,"uplink":"eth1","gateway":"203.0.113.1","gateway6":"fe80::1","toPodPriority":512,
            "fromPodPriority":1536,"primary":{"interface":"eth0","mark":"0x80"},"dataDir":"/var/lib/cni/cni-chain"}"#,
        )
        .unwrap();
        assert_eq!(s.table, 101);
        let u = s.uplink.unwrap();
        assert_eq!((u.interface.as_str(), u.gateway.unwrap().to_string()), ("eth1", "203.0.113.1".into()));
        assert_eq!(u.gateway6.unwrap().to_string(), "fe80::1");
        assert_eq!(s.primary, Some(Primary { interface: "eth0".into(), mark: 0x80 }));
        assert_eq!((s.to_pod_priority, s.from_pod_priority), (512, 1536));
    }

    #[test]
    fn defaults_are_the_seeds() {
        let s = parse(r#"{"table":7,"primary":{"interface":"eth0"}}"#).unwrap();
        assert_eq!((s.to_pod_priority, s.from_pod_priority), (512, 1536));
        assert_eq!(s.primary.unwrap().mark, 0x80);
        assert_eq!(s.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(s.uplink, None);
        assert_eq!(
            parse(r#"{"table":7,"primary":{"interface":"eth0","mark":256}}"#).unwrap().primary.unwrap().mark,
            256
        );
        assert_eq!(parse(r#"{"Table":7,"Primary":{"Interface":"e","Mark":"16"}}"#).unwrap().primary.unwrap().mark, 16);
    }

    #[test]
    fn bad_settings_are_config_errors() {
        for bad in [
            r#"{}"#,
            r#"{"table":254}"#,
            r#"{"table":0}"#,
            r#"{"table":101,"uplink":"eth1"}"#,
            r#"{"table":101,"gateway":"203.0.113.1"}"#,
            r#"{"table":101,"uplink":"eth1","gateway":"fe80::1"}"#,
            r#"{"table":101,"uplink":"eth1","gateway6":"203.0.113.1"}"#,
            r#"{"table":101,"uplink":"a/b","gateway":"203.0.113.1"}"#,
            r#"{"table":101,"toPodPriority":2000}"#,
            r#"{"table":101,"fromPodPriority":40000}"#,
            r#"{"table":101,"primary":{"mark":"0x80"}}"#,
            r#"{"table":101,"primary":{"interface":"eth0","mark":"0x0"}}"#,
            r#"{"table":101,"primary":{"interface":"eth0","mark":"eighty"}}"#,
            r#"{"table":101,"primary":{"interface":"eth0"},"fromPodPriority":1000}"#,
            r#"{"table":101,"dataDir":"relative"}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code(), 7, "{bad}");
        }
        assert_eq!(parse(r#"{"table":-1}"#).unwrap_err().code(), 6);
        assert_eq!(parse(r#"{"table":"101"}"#).unwrap_err().code(), 6);
    }

    #[test]
    fn del_takes_any_data_dir_it_can_use() {
        let read = |json: &str| {
            data_dir_for_del(
                common::gojson::from_slice::<DataDirOnly>(json.as_bytes())
                    .map(|c| c.0)
                    .map_err(|e| CniError::Decode(e.to_string())),
            )
        };
        assert_eq!(read(r#"{"dataDir":"/x"}"#), PathBuf::from("/x"));
        assert_eq!(read(r#"{"dataDir":7}"#), PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(read(r#"{"dataDir":"rel"}"#), PathBuf::from(DEFAULT_DATA_DIR));
    }
}
