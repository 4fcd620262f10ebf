//! `cni-chain gc`: CNI GC for runtimes that never send it (containerd 1.6, Podman 4, cnitool 1.1). The valid
//! attachments are the network's entries in libcni's result cache, which the runtime writes after each ADD and
//! removes after DEL, as libcni 1.2 reads them; then each plugin of the conflist gets GC with them, executed from
//! CNI_PATH as a runtime would.

use common::types::Attachment;
use common::{CniError, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The part of a libcni cache entry (`<cacheDir>/results/<network>-<containerID>-<ifname>`) GC needs.
#[derive(Deserialize)]
struct CacheEntry {
    kind: String,
    #[serde(rename = "containerId")]
    container_id: String,
    #[serde(rename = "ifName")]
    ifname: String,
    #[serde(rename = "networkName")]
    network: String,
}

/// The attachments of `network` in libcni's cache below `cache_dir`, sorted; entries of other kinds or that do
/// not parse are not attachments (libcni skips them too).
pub fn cached_attachments(cache_dir: &Path, network: &str) -> Result<Vec<Attachment>> {
    let dir = cache_dir.join("results");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(common::files::io("reading", &dir, e)),
    };
    let mut out: Vec<Attachment> = entries
        .flatten()
        .filter_map(|e| serde_json::from_slice::<CacheEntry>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|c| c.kind == "cniCacheV1" && c.network == network)
        .map(|c| Attachment { container_id: c.container_id, ifname: c.ifname })
        .collect();
    out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
    out.dedup_by(|a, b| a.container_id == b.container_id && a.ifname == b.ifname);
    Ok(out)
}

/// What GC did for one plugin.
pub enum Outcome {
    Collected,
    /// The plugin does not speak CNI 1.1.0, which brought GC.
    Skipped(String),
    Failed(CniError),
}

/// A conflist as libcni reads it (Go's rules: keys match whatever their case).
#[derive(Deserialize)]
pub struct Conflist {
    pub name: String,
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

impl Conflist {
    pub fn read(path: &Path) -> Result<Conflist> {
        let raw = std::fs::read(path).map_err(|e| common::files::io("reading", path, e))?;
        let (list, _) = common::gojson::from_slice::<Conflist>(&raw)
            .map_err(|e| CniError::Decode(format!("{}: {e}", path.display())))?;
        Ok(list)
    }
}

/// GC on every plugin of the conflist, in order, with `valid`. A conflist older than 1.1.0 (GC's version) gets
/// GC at 1.1.0 on the plugins that support it, which libcni would skip altogether.
pub fn run(conflist: &Conflist, valid: &[Attachment], cni_path: &[PathBuf]) -> Vec<(String, Outcome)> {
    let version = match common::version::CniVersion::parse(&conflist.cni_version) {
        Ok(v) if v.supports_gc_and_status() => conflist.cni_version.clone(),
        _ => "1.1.0".to_string(),
    };
    let mut outcomes = Vec::new();
    for plugin in &conflist.plugins {
        let kind = plugin["type"].as_str().unwrap_or("").to_string();
        let outcome = match common::ipam::find_in_path(cni_path, &kind) {
            Err(e) => Outcome::Failed(e),
            Ok(bin) if !speaks(&bin, &version) => Outcome::Skipped(format!("{kind} does not support CNI {version}")),
            Ok(bin) => {
                let mut config = plugin.clone();
                config["cniVersion"] = json!(version);
                config["name"] = json!(conflist.name);
                config["cni.dev/valid-attachments"] = json!(valid);
                match exec(&bin, "GC", &config, cni_path) {
                    Ok(_) => Outcome::Collected,
                    Err(e) => Outcome::Failed(e),
                }
            }
        };
        outcomes.push((kind, outcome));
    }
    outcomes
}

/// Whether the plugin's VERSION lists `version`.
fn speaks(bin: &Path, version: &str) -> bool {
    exec(bin, "VERSION", &json!({"cniVersion": "1.0.0"}), &[])
        .ok()
        .and_then(|v| v["supportedVersions"].as_array().cloned())
        .is_some_and(|vs| vs.iter().any(|v| v == version))
}

/// Run a plugin as a runtime does: the verb in CNI_COMMAND, the config on stdin, the answer on stdout.
fn exec(bin: &Path, command: &str, config: &Value, cni_path: &[PathBuf]) -> Result<Value> {
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", std::env::join_paths(cni_path).unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::Delegate(format!("running {}: {e}", bin.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(config.to_string().as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| CniError::Delegate(format!("running {}: {e}", bin.display())))?;
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if out.status.success() {
        return Ok(answer);
    }
    let msg = answer["msg"].as_str().unwrap_or("no CNI error on stdout");
    Err(CniError::Delegate(format!("{} {command}: {msg} (code {})", bin.display(), answer["code"])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_gives_the_networks_attachments_only() {
        let dir = std::env::temp_dir().join(format!("cni-chain-gc-{}", std::process::id()));
        let results = dir.join("results");
        std::fs::create_dir_all(&results).unwrap();
        let entry = |net: &str, id: &str, ifname: &str| {
            json!({"kind": "cniCacheV1", "containerId": id, "ifName": ifname, "networkName": net, "config": "e30=",
                   "result": {"cniVersion": "1.0.0"}})
        };
        for (file, value) in [
            ("n1-a-eth0", entry("n1", "a", "eth0")),
            ("n1-b-net1", entry("n1", "b", "net1")),
            ("n2-c-eth0", entry("n2", "c", "eth0")),
            ("junk", json!({"kind": "other"})),
        ] {
            std::fs::write(results.join(file), value.to_string()).unwrap();
        }
        std::fs::write(results.join("broken"), "{").unwrap();
        let got = cached_attachments(&dir, "n1").unwrap();
        let pairs: Vec<(&str, &str)> = got.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
        assert_eq!(pairs, [("a", "eth0"), ("b", "net1")]);
        assert!(cached_attachments(&dir.join("none"), "n1").unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
