//! host-local's config, as the reference reads it: `ipam.ranges` (and the older single range), routes,
//! dataDir, resolvConf, and the addresses a runtime asks for.

use super::range::{RangeConf, RangeSet};
use crate::ipam_store::DEFAULT_DATA_DIR;
use crate::types::{opt_ip, Route};
use crate::{CniError, Invocation, Result};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Default, Deserialize)]
struct IpamConf {
    /// This plugin's own name, which the main plugin reads (listed so it is not taken for a typo).
    #[serde(rename = "type", default)]
    _kind: Option<String>,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(rename = "rangeStart", default, with = "opt_ip")]
    range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd", default, with = "opt_ip")]
    range_end: Option<IpAddr>,
    #[serde(default, with = "opt_ip")]
    gateway: Option<IpAddr>,
    #[serde(default)]
    ranges: Vec<Vec<RangeConf>>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(rename = "dataDir", default)]
    data_dir: Option<String>,
    #[serde(rename = "resolvConf", default)]
    resolv_conf: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    ips: Vec<String>,
    #[serde(rename = "ipRanges", default)]
    ip_ranges: Vec<Vec<RangeConf>>,
}

#[derive(Debug, Default, Deserialize)]
struct CniArgsJson {
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ArgsJson {
    #[serde(default)]
    cni: Option<CniArgsJson>,
}

#[derive(Debug, Deserialize)]
struct HostLocalConf {
    #[serde(default)]
    ipam: Option<IpamConf>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Option<RuntimeConfig>,
    #[serde(default)]
    args: Option<ArgsJson>,
}

/// Everything a verb needs, validated.
#[derive(Debug)]
pub struct Settings {
    pub network: String,
    pub data_dir: PathBuf,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub resolv_conf: Option<PathBuf>,
    /// Addresses the runtime asked for (CNI_ARGS `IP=`, `args.cni.ips`, `runtimeConfig.ips`).
    pub requested: Vec<IpAddr>,
}

/// The keys DEL reads: where the store is.
#[derive(Debug, Deserialize)]
struct StoreConf {
    #[serde(default)]
    ipam: Option<StoreIpam>,
}

#[derive(Debug, Deserialize)]
struct StoreIpam {
    #[serde(rename = "dataDir", default, deserialize_with = "crate::types::lenient")]
    data_dir: Option<String>,
}

/// Where DEL finds the attachment's reservations: the network's store under `dataDir`. Ranges and routes it
/// does not need, so none of them can fail it; CNI_ARGS is checked as for every verb (the reference does).
pub fn store_location(inv: &Invocation) -> Result<(PathBuf, String)> {
    let network = inv.config.net.name.clone();
    if network.is_empty() {
        return Err(CniError::InvalidConfig("host-local needs the network's name (it names the store)".into()));
    }
    inv.args.check_known(&["IP"])?;
    let conf: Option<StoreConf> = inv.config.plugin_part().ok();
    let dir = conf.and_then(|c| c.ipam).and_then(|i| i.data_dir).filter(|d| !d.is_empty());
    let data_dir = PathBuf::from(dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()));
    crate::files::refuse_symlink(&data_dir, "dataDir")?;
    Ok((data_dir, network))
}

/// A requested address: an IP, or an IP with a prefix length as the `ips` capability allows.
fn requested_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.split_once('/').map_or(s, |(ip, _)| ip).parse().ok()
}

pub fn settings(inv: &Invocation) -> Result<Settings> {
    let network = inv.config.net.name.clone();
    if network.is_empty() {
        return Err(CniError::InvalidConfig("host-local needs the network's name (it names the store)".into()));
    }
    let conf: HostLocalConf = inv.config.ipam()?;
    let ipam = conf.ipam.ok_or_else(|| CniError::InvalidConfig("the config has no \"ipam\" section".into()))?;
    let runtime = conf.runtime_config.unwrap_or_default();

    // Order as the reference: runtime ipRanges, then the single old-style range, then `ranges`.
    let mut confs = runtime.ip_ranges;
    if let Some(subnet) = ipam.subnet.filter(|s| !s.is_empty()) {
        confs.push(vec![RangeConf {
            subnet,
            range_start: ipam.range_start,
            range_end: ipam.range_end,
            gateway: ipam.gateway,
        }]);
    }
    confs.extend(ipam.ranges);
    if confs.is_empty() {
        return Err(CniError::InvalidConfig("ipam has no ranges (set \"ranges\" or \"subnet\")".into()));
    }
    let range_sets = confs
        .iter()
        .enumerate()
        .map(|(i, c)| RangeSet::new(c).map_err(|e| CniError::InvalidConfig(format!("range set {i}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    for (i, a) in range_sets.iter().enumerate() {
        if let Some(j) = range_sets[i + 1..].iter().position(|b| a.overlaps(b)) {
            return Err(CniError::InvalidConfig(format!("range set {i} overlaps with range set {}", i + 1 + j)));
        }
    }

    inv.args.check_known(&["IP"])?;
    let mut requested: Vec<IpAddr> = Vec::new();
    let mut request = |ip: IpAddr| {
        if !requested.contains(&ip) {
            requested.push(ip);
        }
    };
    for item in inv.args.get("IP").unwrap_or_default().split(',').filter(|s| !s.trim().is_empty()) {
        request(
            requested_ip(item)
                .ok_or_else(|| CniError::InvalidEnv(format!("CNI_ARGS IP={item:?} is not an IP address")))?,
        );
    }
    let from_config = conf.args.and_then(|a| a.cni).map(|c| c.ips).unwrap_or_default().into_iter().chain(runtime.ips);
    for item in from_config {
        request(
            requested_ip(&item)
                .ok_or_else(|| CniError::InvalidConfig(format!("requested address {item:?} is not an IP address")))?,
        );
    }

    let data_dir = PathBuf::from(ipam.data_dir.filter(|d| !d.is_empty()).unwrap_or_else(|| DEFAULT_DATA_DIR.into()));
    crate::files::refuse_symlink(&data_dir, "dataDir")?;
    let resolv_conf = ipam.resolv_conf.filter(|p| !p.is_empty()).map(PathBuf::from);
    Ok(Settings { network, data_dir, range_sets, routes: ipam.routes, resolv_conf, requested })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::Config;
    use crate::invocation::{CniArgs, Command};

    fn inv(conf: &str, cni_args: &str) -> Invocation {
        Invocation {
            command: Command::Add,
            container_id: "c1".into(),
            netns: "/proc/self/ns/net".into(),
            ifname: "eth0".into(),
            args: CniArgs::parse(cni_args).unwrap(),
            path: vec![],
            config: Config::parse(conf.as_bytes().to_vec()).unwrap(),
        }
    }

    fn parse(conf: &str) -> Result<Settings> {
        settings(&inv(conf, ""))
    }

    #[test]
    fn old_single_range_comes_first_and_defaults_apply() {
        let s = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"ptp","ipam":{"type":"host-local","subnet":"10.1.0.0/24",
                "ranges":[[{"subnet":"fd00::/64"}]],"routes":[{"dst":"0.0.0.0/0"}]}}"#,
        )
        .unwrap();
        assert_eq!(s.range_sets.len(), 2);
        assert!(s.range_sets[0].contains("10.1.0.9".parse().unwrap()));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/cni/networks"));
        assert_eq!(s.routes.len(), 1);
        assert!(s.requested.is_empty());
    }

    #[test]
    fn requested_addresses_from_every_source() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"ptp",
            "ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]},
            "args":{"cni":{"ips":["10.1.0.7"]}},"runtimeConfig":{"ips":["fd00::7/64"]}}"#;
        let s = settings(&inv(conf, "IgnoreUnknown=1;IP=10.1.0.8,fd00::8;K8S_POD_NAME=x")).unwrap();
        let got: Vec<String> = s.requested.iter().map(IpAddr::to_string).collect();
        assert_eq!(got, ["10.1.0.8", "fd00::8", "10.1.0.7", "fd00::7"]);
        assert_eq!(settings(&inv(conf, "IP=nope")).unwrap_err().code(), 4);
        assert_eq!(settings(&inv(conf, "FOO=1")).unwrap_err().code(), 4, "unknown CNI_ARGS key");
    }

    #[test]
    fn runtime_ip_ranges_come_before_the_configured_ones() {
        let s = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"ptp","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"}]]},
                "runtimeConfig":{"ipRanges":[[{"subnet":"10.2.0.0/24"}]]}}"#,
        )
        .unwrap();
        assert!(s.range_sets[0].contains("10.2.0.9".parse().unwrap()));
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let with = |ipam: &str| format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"ptp","ipam":{ipam}}}"#);
        let cases = [
            (with(r#"{"type":"host-local"}"#), 7, "no ranges"),
            (
                with(r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.128/25"}]]}"#),
                7,
                "overlaps",
            ),
            (
                with(r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.9.1"}]]}"#),
                7,
                "outside",
            ),
            (with(r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24","gateway":"10.1.0.1"}]]}"#), 7, "outside"),
            (with(r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24","gateway":"nope"}]]}"#), 6, "IP address"),
            (with(r#"{"type":"host-local","ranges":[{"subnet":"10.0.0.0/24"}]}"#), 6, "sequence"),
            (with(r#"{"type":"host-local","subnet":"10.0.0.0"}"#), 7, "CIDR"),
            (r#"{"cniVersion":"1.0.0","name":"n","type":"ptp"}"#.to_string(), 7, "ipam"),
            (
                r#"{"cniVersion":"1.0.0","type":"ptp","ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#
                    .to_string(),
                7,
                "name",
            ),
        ];
        for (conf, code, want) in cases {
            let e = parse(&conf).unwrap_err();
            assert_eq!(e.code(), code, "{conf}: {e}");
            assert!(e.to_string().contains(want), "{conf}: {e}");
        }
    }
}
