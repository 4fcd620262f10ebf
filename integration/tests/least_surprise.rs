//! Least surprise: the plugins touch only what is theirs. With foreign links, routes, rules and an nftables
//! table on the node, every chain's ADD, CHECK, DEL and GC (also GC with nothing valid, which removes all
//! of ours) leaves the foreign state as it was and the node as it was before the first ADD. The store and
//! the log file are private, and a log file path that is a symlink is not written through.

use integration::runtimes::node_with_uplink;
use integration::{assert_same_state, Chain, Netns, TempDir};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn foreign_state_is_untouched_and_ours_is_gone_after_del_and_gc() {
    let (node, _outside) = node_with_uplink();
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    node.add_foreign_state();
    // ptp turns forwarding on (and the kernel adds anycast routes): that is meant to stay.
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        assert!(node.command("sysctl").args(["-qw", &format!("{key}=1")]).status().unwrap().success());
    }
    let (stores, logs) = (TempDir::new("surprise"), TempDir::new("surprise-logs"));
    let log = logs.path().join("plugins.log");
    let elsewhere = logs.path().join("not-a-log");
    std::fs::write(&elsewhere, "untouched").unwrap();
    std::os::unix::fs::symlink(&elsewhere, logs.path().join("symlinked.log")).unwrap();
    let before = node.settled_state();

    let mut chains = Vec::new();
    for name in [
        "10-cni-chain-ptp.conflist",
        "20-cni-chain-masquerade.conflist",
        "30-cni-chain-egress-v4.conflist",
        "35-cni-chain-egress-v6.conflist",
    ] {
        let mut chain = Chain::shipped_in(name, stores.path());
        for i in 0..chain.plugins() {
            let plugin = &mut chain.list["plugins"][i];
            plugin["logLevel"] = json!("debug");
            // The first plugin of each chain logs through a symlink, which must not be followed.
            plugin["logFile"] = json!(if i == 0 { logs.path().join("symlinked.log") } else { log.clone() });
        }
        chains.push(chain);
    }
    let pods: Vec<Netns> = (0..chains.len() * 2).map(|_| Netns::new()).collect();
    let mut live = Vec::new();
    for (p, pod) in pods.iter().enumerate() {
        let chain = &chains[p % chains.len()];
        let id = format!("pod-{p}");
        let result = chain.add(&node, &id, pod.path());
        assert!(chain.check(&node, &id, pod.path(), &result).iter().all(|r| r.success));
        live.push((chain, id, pod, result));
    }
    // Half go by DEL, the rest by GC with nothing valid (as after a node restart).
    for (chain, id, pod, result) in live.iter().step_by(2) {
        chain.del(&node, id, pod.path(), Some(result));
    }
    for chain in &chains {
        chain.gc(&node, &[]);
    }
    assert_same_state(&before, &node.state(), "ADD, CHECK, DEL and GC of every chain");

    // Private files: the stores (directories 0700, files 0600) and the log (0600); the symlink's target
    // was never written.
    let mut todo = vec![stores.path().to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                todo.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
        }
    }
    assert_eq!(mode(&log), 0o600);
    assert!(std::fs::read_to_string(&log).unwrap().contains("ADD"), "the log has the calls");
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched");
}
