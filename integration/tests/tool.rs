//! The operator's tool, `cni-chain`, run inside a node netns holding live pods of every shipped chain, with the
//! conflists (pointed at the test's stores) in a directory of the test's.

use integration::runtimes::node_with_uplink;
use integration::{Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

const CONFLISTS: [&str; 5] = [
    "10-cni-chain-ptp.conflist",
    "20-cni-chain-masquerade.conflist",
    "30-cni-chain-egress-v4.conflist",
    "35-cni-chain-egress-v6.conflist",
    "50-cni-chain-policy-route.conflist",
];

/// Run `cni-chain args...` in `node`; (exit code, stdout, stderr).
fn tool(node: &Netns, args: &[&str]) -> (i32, String, String) {
    let out = node.command(integration::bin_dir().join("cni-chain")).args(args).env_clear().output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Every shipped chain at 1.1.0 with its stores in `stores`, written into `conf_dir` as a runtime finds them. The
/// policy-route conflist is pointed at the node's one uplink.
fn chains(stores: &Path, conf_dir: &Path) -> Vec<Chain> {
    CONFLISTS
        .iter()
        .map(|name| {
            let mut chain = Chain::shipped_in(name, stores);
            if name.contains("policy-route") {
                for (key, value) in [
                    ("uplink", json!("uplink")),
                    ("gateway", json!("192.0.2.2")),
                    ("gateway6", json!("2001:db8::2")),
                    ("primary.interface", json!("uplink")),
                    ("dataDir", json!(stores.join("policy-route"))),
                ] {
                    chain.overrides.push((1, key.into(), value));
                }
            }
            std::fs::write(conf_dir.join(name), serde_json::to_vec_pretty(&chain.conflist()).unwrap()).unwrap();
            chain
        })
        .collect()
}

fn addresses(result: &Value) -> BTreeSet<String> {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().into())
        .collect()
}

#[test]
fn ls_lists_each_live_pod_once_with_its_real_addresses() {
    let (node, _outside) = node_with_uplink();
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    let (stores, conf_dir) = (TempDir::new("tool-stores"), TempDir::new("tool-conf"));
    let chains = chains(stores.path(), conf_dir.path());
    let mut live = Vec::new();
    for (c, chain) in chains.iter().enumerate() {
        for p in 0..2 {
            let (pod, id) = (Netns::new(), format!("pod-{c}-{p}"));
            let result = chain.add(&node, &id, pod.path());
            live.push((chain, id, pod, result));
        }
    }
    let (code, out, err) = tool(&node, &["ls", "--json", "--conf-dir", conf_dir.str()]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let attachments = listed["attachments"].as_array().unwrap();
    eprintln!("{out}");
    assert_eq!(attachments.len(), live.len(), "{out}");
    for (chain, id, pod, result) in &live {
        let net = chain.list["name"].as_str().unwrap();
        let a = attachments.iter().find(|a| a["network"] == net && a["containerID"] == id.as_str()).unwrap();
        assert_eq!(a["ifname"], "eth0");
        assert_eq!(a["alive"], true, "{a}");
        let listed: BTreeSet<String> =
            a["addresses"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
        // The main plugin's addresses and, for the egress chains, the egress address on the second interface.
        let mut real = addresses(result);
        for egress_if in ["v4if0", "v6if0"].into_iter().filter(|i| pod.link(i).is_some()) {
            real.extend(pod.addresses(egress_if).into_iter().map(|a| a.split('/').next().unwrap().to_string()));
        }
        assert_eq!(listed, real, "{net}/{id}: {a}");
    }
    let (_, table, _) = tool(&node, &["ls", "--conf-dir", conf_dir.str()]);
    assert_eq!(table.lines().count(), live.len() + 1, "{table}");
    eprintln!("{table}");

    for (chain, id, pod, result) in &live {
        chain.del(&node, id, pod.path(), Some(result));
    }
    let (code, out, _) = tool(&node, &["ls", "--json", "--conf-dir", conf_dir.str()]);
    assert_eq!((code, serde_json::from_str::<Value>(&out).unwrap()), (0, json!({"attachments": []})));
}
