//! Load: 100 concurrent ADDs of the full chain into one node, then 100 concurrent DELs; and a soak of
//! 1000 ADD/DEL cycles, counting links, addresses, routes, rules, nftables elements and store files
//! before and after.

use integration::runtimes::node_with_uplink;
use integration::{concurrently, reservations_in, tree_state, Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;

fn addresses(result: &Value) -> Vec<String> {
    result["ips"].as_array().unwrap().iter().map(|ip| ip["address"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_hundred_concurrent_adds_then_a_hundred_concurrent_dels() {
    let (node, _outside) = node_with_uplink();
    let stores = TempDir::new("load");
    let chain = Chain::shipped_in("20-cni-chain-masquerade.conflist", stores.path());
    let pods: Vec<Netns> = (0..100).map(|_| Netns::new()).collect();
    let results = std::sync::Mutex::new(vec![Value::Null; pods.len()]);
    // All 100 at once: every ADD runs while others are in their IPAM lock, netlink and nftables batches.
    concurrently(pods.len(), pods.len(), |i| {
        let r = chain.add(&node, &format!("load-{i}"), pods[i].path());
        results.lock().unwrap()[i] = r;
    });
    let results = results.into_inner().unwrap();
    let all: Vec<String> = results.iter().flat_map(addresses).collect();
    assert_eq!(all.len(), 200, "one IPv4 and one IPv6 address per pod");
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 200, "addresses are distinct");
    let veths = node.veths().into_iter().filter(|v| v != "uplink").count();
    assert_eq!(veths, 100);
    assert_eq!(node.our_nft_rules(), 1, "one masquerade rule for 100 pods");
    // Traffic: a pod reaches another through the node.
    let other = results[99]["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    // A few tries: the first packets wait for neighbour resolution on a machine busy with other tests.
    let reached = (0..3).any(|_| pods[0].ping(&other));
    assert!(reached, "pod 0 cannot reach {other}: pod routes {:?}", pods[0].routes("-4"));

    concurrently(pods.len(), pods.len(), |i| {
        chain.del(&node, &format!("load-{i}"), pods[i].path(), Some(&results[i]));
    });
    assert_eq!(node.veths(), ["uplink"]);
    let store = stores.path().join("20-cni-chain-masquerade.conflist-0/cni-chain-masq");
    assert!(reservations_in(&store).is_empty());
    assert!(!store.join(".cni-chain-attachments").exists(), "index entries left");
    // The group rule went with its last member, whichever of the concurrent DELs that was: no GC needed.
    assert!(!node.nft(&["list", "tables"]).contains("cni_chain"), "the last DEL left our table");
}

/// What a leak would show up in: counts of links, addresses, routes, rules, nftables ruleset lines and
/// elements, and the store's files (cursors and locks are made once and stay).
fn counts(node: &Netns, stores: &Path) -> Vec<(String, usize)> {
    let lines = |text: String| text.lines().count();
    let elements: usize =
        ["pods_v4", "pods_v6", "egress_v4_192_0_2_1"].iter().map(|s| node.nft_elements(s).len()).sum();
    let files =
        tree_state(stores).lines().filter(|l| !l.contains("/lock ") && !l.contains("/last_reserved_ip.")).count();
    vec![
        ("links".into(), lines(node.ip(&["-o", "link", "show"]))),
        ("addresses".into(), lines(node.ip(&["-o", "addr", "show"]))),
        (
            "routes".into(),
            lines(node.ip(&["-4", "route", "show", "table", "all"]))
                + lines(node.ip(&["-6", "route", "show", "table", "all"])),
        ),
        ("rules".into(), lines(node.ip(&["-4", "rule"])) + lines(node.ip(&["-6", "rule"]))),
        ("nft elements".into(), elements),
        ("store files".into(), files),
    ]
}

#[test]
fn a_soak_of_1000_add_del_cycles_leaves_nothing() {
    let (node, _outside) = node_with_uplink();
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    let stores = TempDir::new("soak");
    let mut masq = Chain::shipped_in("20-cni-chain-masquerade.conflist", stores.path());
    // Per pod, so that every pod adds and removes nftables elements of its own.
    masq.list["plugins"][2] = json!({"type": "masquerade", "mode": "pod"});
    let chains = [masq, Chain::shipped_in("30-cni-chain-egress-v4.conflist", stores.path())];
    // One warm-up cycle per chain makes what stays by design (stores, cursors, the shared table).
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new()).collect();
    for chain in &chains {
        let r = chain.add(&node, "warm-up", pods[0].path());
        chain.del(&node, "warm-up", pods[0].path(), Some(&r));
    }
    for ns in [&node, &pods[0]] {
        ns.settled_state();
    }
    let before = counts(&node, stores.path());

    let cycles = 1000;
    // Four workers, each with its own pod, alternating between the two chains.
    std::thread::scope(|s| {
        let workers = pods.len();
        for (w, pod) in pods.iter().enumerate() {
            let (node, chains) = (&node, &chains);
            s.spawn(move || {
                for i in (w..cycles).step_by(workers) {
                    let chain = &chains[(i / workers) % chains.len()];
                    let id = format!("soak-{i}");
                    let r = chain.add(node, &id, pod.path());
                    chain.del(node, &id, pod.path(), Some(&r));
                }
            });
        }
    });

    let after = counts(&node, stores.path());
    assert_eq!(before, after, "counts before and after {cycles} ADD/DEL cycles");
    for pod in &pods {
        assert!(pod.link("eth0").is_none() && pod.link("v4if0").is_none());
    }
}

#[test]
fn per_pod_masquerade_keeps_every_live_pod_while_others_come_and_go() {
    let (node, _outside) = node_with_uplink();
    let stores = TempDir::new("churn");
    let mut chain = Chain::shipped_in("20-cni-chain-masquerade.conflist", stores.path());
    chain.list["plugins"][2] = json!({"type": "masquerade", "mode": "pod"});
    let pods: Vec<Netns> = (0..60).map(|_| Netns::new()).collect();
    let kept = std::sync::Mutex::new(Vec::new());
    // Pods 0..30 are added once and stay; pods 30..60 come and go five times, all at the same time, so
    // that DELs prune the shared maps and chains while ADDs fill them.
    concurrently(pods.len(), pods.len(), |i| {
        if i < 30 {
            let r = chain.add(&node, &format!("kept-{i}"), pods[i].path());
            kept.lock().unwrap().push((i, r));
        } else {
            for round in 0..5 {
                let id = format!("churn-{i}-{round}");
                let r = chain.add(&node, &id, pods[i].path());
                chain.del(&node, &id, pods[i].path(), Some(&r));
            }
        }
    });
    let kept = kept.into_inner().unwrap();
    for (i, r) in &kept {
        for reply in chain.check(&node, &format!("kept-{i}"), pods[*i].path(), r) {
            reply.ok();
        }
    }
    assert_eq!(node.nft_elements("pods_v4").len(), 30, "one IPv4 element per live pod");
    for (i, r) in &kept {
        chain.del(&node, &format!("kept-{i}"), pods[*i].path(), Some(r));
    }
    assert!(!node.nft(&["list", "tables"]).contains("cni_chain"), "the last DEL leaves no table");
}
