//! egress-v4 against the real kernel: IPv6-only pods made by ptp get a second veth with a link-local IPv4
//! address, and their IPv4 traffic reaches an "outside" host as the node's address. Traffic is real TCP;
//! the listener reports the source address it sees.

use integration::{with_prev_result, with_valid_attachments, Call, Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::net::IpAddr;

const CONFLIST: &str = "30-cni-chain-egress-v4.conflist";

struct Site {
    node: Netns,
    outside: Netns,
    data: TempDir,
}

/// node ─uplink─ outside (192.0.2.0/24, 2001:db8::/64). The node's default routes point at outside,
/// which routes the pods' IPv6 range back but knows nothing of 169.254.172.0/22.
fn site() -> Site {
    let (node, outside) = (Netns::new(), Netns::new());
    node.link_to(&outside, "uplink", &[("192.0.2.1/24", "192.0.2.2/24"), ("2001:db8::1/64", "2001:db8::2/64")], None);
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    outside.ip(&["-6", "route", "add", "fd90::/64", "via", "2001:db8::1"]);
    Site { node, outside, data: TempDir::new("egress") }
}

impl Site {
    /// The shipped conflist, its two IPAM stores in the test's directory.
    fn chain(&self, version: &str) -> Chain {
        let mut chain = Chain::shipped(CONFLIST);
        chain.list["cniVersion"] = json!(version);
        chain.overrides.push((0, "ipam.dataDir".into(), json!(format!("{}/v6", self.data.str()))));
        chain.overrides.push((1, "ipam.dataDir".into(), json!(format!("{}/v4", self.data.str()))));
        chain
    }

    /// The node's veths that plugins made, by prefix.
    fn veths(&self, prefix: &str) -> Vec<String> {
        self.node.veths().into_iter().filter(|v| v.starts_with(prefix)).collect()
    }

    fn reservations(&self) -> Vec<String> {
        let mut all = integration::reservations_in(&self.data.path().join("v4/cni-chain-v6"));
        all.extend(integration::reservations_in(&self.data.path().join("v6/cni-chain-v6")));
        all
    }

    /// Nothing of any pod is left: no veth, no reservation, no table of ours.
    fn assert_clean(&self) {
        assert_eq!(self.veths("egress"), Vec::<String>::new());
        assert_eq!(self.veths("veth"), Vec::<String>::new());
        assert_eq!(self.reservations(), Vec::<String>::new());
        assert!(!self.node.nft(&["list", "tables"]).contains("cni_chain"), "our table is gone");
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The IPv4 address on the pod's v4if0.
fn egress_ip(pod: &Netns) -> String {
    let addrs = pod.addresses("v4if0");
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    addrs[0].clone()
}

fn rule_count(node: &Netns, chain: &str) -> usize {
    node.nft_json()["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o.get("rule").is_some_and(|r| r["chain"] == chain))
        .count()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn ipv6_pod_reaches_an_ipv4_host_as_the_node() {
    let s = site();
    let chain = s.chain("1.0.0");
    let pod = Netns::new();
    let r = chain.add(&s.node, "p1", pod.path());

    // Runtimes read pod IPs from `ips`: only the IPv6 one is there.
    let ips: Vec<&str> = r["ips"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    assert_eq!(ips.len(), 1, "{r}");
    assert!(ips[0].starts_with("fd90::"), "{r}");
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 4, "ptp's pair, then ours: {r}");
    let host = ifs[2]["name"].as_str().unwrap().to_string();
    assert!(host.starts_with("egress") && ifs[2].get("sandbox").is_none(), "{r}");
    assert_eq!(ifs[3]["name"], "v4if0");
    assert_eq!(ifs[3]["sandbox"], pod.path());
    assert_eq!(r["ips"][0]["interface"], 1, "the IPv6 address stays on eth0");

    // Pod side as seed 001 routes it: no connected route, the gateway /32 scope link, the rest via it.
    let addr = egress_ip(&pod);
    assert!(addr.starts_with("169.254.172.") && addr.ends_with("/22"), "{addr}");
    let pod_v4 = addr.split('/').next().unwrap().to_string();
    assert_eq!(
        sorted(pod.routes("-4")),
        sorted(vec![
            "default via 169.254.172.1 dev v4if0".into(),
            "169.254.172.0/22 via 169.254.172.1 dev v4if0".into(),
            "169.254.172.1 dev v4if0 scope link".into(),
        ])
    );
    // Node side: the gateway on the host veth, a host route to the pod, the attachment in the alias.
    assert_eq!(s.node.addresses(&host), ["169.254.172.1/32"]);
    assert!(s.node.routes("-4").contains(&format!("{pod_v4} dev {host} scope link")), "{:?}", s.node.routes("-4"));
    assert_eq!(s.node.link(&host).unwrap()["ifalias"], "cni-chain:egress-v4:cni-chain-v6:p1/eth0");

    // nftables: the pod's address in the node address's set, one SNAT rule.
    let tag = "cni-chain:egress-v4:cni-chain-v6:p1/eth0".to_string();
    assert_eq!(s.node.nft_elements("egress_v4_192_0_2_1"), [(pod_v4.clone(), tag)]);
    assert_eq!(rule_count(&s.node, "egress_v4_192_0_2_1"), 1);
    let listing = s.node.nft(&["list", "chain", "inet", "cni_chain", "egress_v4_192_0_2_1"]);
    assert!(listing.contains("type nat hook postrouting priority srcnat"), "{listing}");
    assert!(
        listing.contains("ip saddr @egress_v4_192_0_2_1 ip daddr != 224.0.0.0/4 snat ip to 192.0.2.1 fully-random"),
        "{listing}"
    );

    // Real traffic: IPv4 leaves as the node, IPv6 keeps the pod's address.
    assert_eq!(s.outside.peer_of(&pod, "192.0.2.2"), Some(ip("192.0.2.1")), "IPv4 egress is SNATed to nodeIP");
    let pod_v6 = ips[0].split('/').next().unwrap();
    assert_eq!(s.outside.peer_of(&pod, "2001:db8::2"), Some(ip(pod_v6)), "IPv6 is untouched");

    for reply in chain.check(&s.node, "p1", pod.path(), &r) {
        reply.ok();
    }
    // State changed behind our back: CHECK says what.
    s.node.nft(&["delete", "element", "inet", "cni_chain", "egress_v4_192_0_2_1", &format!("{{ {pod_v4} }}")]);
    assert!(chain.check(&s.node, "p1", pod.path(), &r)[1].err(104).contains(&pod_v4));
    s.node.ip(&["route", "del", &pod_v4]);
    assert!(chain.check(&s.node, "p1", pod.path(), &r)[1].err(104).contains("no route"));

    chain.del(&s.node, "p1", pod.path(), Some(&r));
    s.assert_clean();
    // DEL again, also without prevResult: still fine.
    chain.del(&s.node, "p1", pod.path(), None);
}

#[test]
fn every_version_explicit_node_ip_and_port_randomization() {
    let s = site();
    s.node.ip(&["addr", "add", "192.0.2.10/24", "dev", "uplink", "nodad"]);
    for (version, mode, words) in [
        ("0.3.0", "none", "snat ip to 192.0.2.10 comment"),
        ("0.3.1", "hashrandom", "snat ip to 192.0.2.10 random comment"),
        ("0.4.0", "prng", "snat ip to 192.0.2.10 fully-random comment"),
        ("1.1.0", "hashrandom", "snat ip to 192.0.2.10 random comment"),
    ] {
        let mut chain = s.chain(version);
        chain.overrides.push((1, "nodeIP".into(), json!("192.0.2.10")));
        chain.overrides.push((1, "randomizeSNAT".into(), json!(mode)));
        chain.overrides.push((1, "mtu".into(), json!("1400")));
        chain.overrides.push((1, "pluginLogFile".into(), json!(format!("{}/egress.log", s.data.str()))));
        chain.overrides.push((1, "pluginLogLevel".into(), json!("DEBUG")));
        let pod = Netns::new();
        let r = chain.add(&s.node, "p1", pod.path());
        assert_eq!(r["cniVersion"], version);
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 4, "{version}: {r}");
        assert_eq!(pod.link("v4if0").unwrap()["mtu"], 1400);
        let listing = s.node.nft(&["list", "chain", "inet", "cni_chain", "egress_v4_192_0_2_10"]);
        assert!(listing.contains(words), "{version}: {listing}");
        assert_eq!(s.outside.peer_of(&pod, "192.0.2.2"), Some(ip("192.0.2.10")), "{version}");
        if version != "0.3.0" && version != "0.3.1" {
            for reply in chain.check(&s.node, "p1", pod.path(), &r) {
                reply.ok();
            }
        }
        chain.del(&s.node, "p1", pod.path(), Some(&r));
        s.assert_clean();
    }
    // The AWS names of the log settings work: DEBUG lines of every verb went to the file.
    let log = std::fs::read_to_string(s.data.path().join("egress.log")).unwrap();
    for verb in ["ADD", "CHECK", "DEL"] {
        let line = log
            .lines()
            .find(|l| l.contains(" DEBUG egress-v4[") && l.contains(&format!("] {verb} net=cni-chain-v6 id=p1: ")));
        assert!(line.is_some(), "{verb}: {log}");
    }
}

#[test]
fn fifty_pods_share_one_snat_rule() {
    let s = site();
    let chain = s.chain("1.0.0");
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new()).collect();
    std::thread::scope(|scope| {
        for (worker, share) in pods.chunks(10).enumerate() {
            let (chain, node) = (&chain, &s.node);
            scope.spawn(move || {
                for (i, pod) in share.iter().enumerate() {
                    chain.add(node, &format!("p{worker}-{i}"), pod.path());
                }
            });
        }
    });
    assert_eq!(rule_count(&s.node, "egress_v4_192_0_2_1"), 1);
    let elems = s.node.nft_elements("egress_v4_192_0_2_1");
    assert_eq!(elems.len(), 50);
    for pod in [&pods[0], &pods[27], &pods[49]] {
        let addr = egress_ip(pod);
        assert!(elems.iter().any(|(a, _)| addr.starts_with(&format!("{a}/"))), "{addr} in {elems:?}");
        assert_eq!(s.outside.peer_of(pod, "192.0.2.2"), Some(ip("192.0.2.1")));
    }
    std::thread::scope(|scope| {
        for (worker, share) in pods.chunks(10).enumerate() {
            let (chain, node) = (&chain, &s.node);
            scope.spawn(move || {
                for (i, pod) in share.iter().enumerate() {
                    chain.del(node, &format!("p{worker}-{i}"), pod.path(), None);
                }
            });
        }
    });
    s.assert_clean();
}

#[test]
fn del_after_the_pod_netns_is_gone_and_gc_leave_nothing() {
    let s = site();
    let chain = s.chain("1.1.0");
    let (gone, kept, stale) = (Netns::new(), Netns::new(), Netns::new());
    let gone_path = gone.path().to_string();
    // An element leaked by a crashed attachment holds the address IPAM hands out first: ADD takes it over.
    s.node.nft(&["add", "table", "inet", "cni_chain"]);
    s.node.nft(&["add", "set", "inet", "cni_chain", "egress_v4_192_0_2_1", "{ type ipv4_addr; }"]);
    let ghost = r#"{ 169.254.172.2 comment "cni-chain:egress-v4:cni-chain-v6:ghost/eth0" }"#;
    s.node.nft(&["add", "element", "inet", "cni_chain", "egress_v4_192_0_2_1", ghost]);
    chain.add(&s.node, "gone", &gone_path);
    assert_eq!(
        s.node.nft_elements("egress_v4_192_0_2_1"),
        [("169.254.172.2".to_string(), "cni-chain:egress-v4:cni-chain-v6:gone/eth0".to_string())]
    );
    let r_kept = chain.add(&s.node, "kept", kept.path());
    chain.add(&s.node, "stale", stale.path());
    drop(gone);
    chain.del(&s.node, "gone", &gone_path, None);
    let elems = s.node.nft_elements("egress_v4_192_0_2_1");
    assert_eq!(elems.len(), 2, "{elems:?}");
    assert!(!elems.iter().any(|(_, c)| c.ends_with(":gone/eth0")));
    assert_eq!(s.veths("egress").len(), 2);

    // GC with "kept" valid: "stale" goes from the links, the set and the store.
    for reply in chain.each(&s.node, "GC", &[("kept", "eth0")]) {
        reply.ok();
    }
    let elems = s.node.nft_elements("egress_v4_192_0_2_1");
    assert_eq!(elems.len(), 1, "{elems:?}");
    assert!(elems[0].1.ends_with(":kept/eth0"));
    assert_eq!(s.veths("egress").len(), 1);
    assert_eq!(s.reservations().len(), 2, "kept's IPv6 and IPv4 addresses");
    for reply in chain.each(&s.node, "STATUS", &[]) {
        reply.ok();
    }
    assert_eq!(s.outside.peer_of(&kept, "192.0.2.2"), Some(ip("192.0.2.1")));
    chain.del(&s.node, "kept", kept.path(), Some(&r_kept));
    s.assert_clean();
}

/// egress-v4's own config from the shipped conflist, at 1.0.0, with the test's store.
fn egress_conf(s: &Site, extra: Value) -> Value {
    let mut c = s.chain("1.0.0").config(1, None);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// A prevResult as ptp returns it for an IPv6 pod (the interfaces are not looked at by egress-v4's ADD).
fn v6_prev(pod: &Netns, address: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "vethx"}, {"name": "eth0", "sandbox": pod.path()}],
        "ips": [{"address": address, "interface": 1}],
    })
}

#[test]
fn refusals_change_nothing() {
    let s = site();
    let pod = Netns::new();
    let conf = egress_conf(&s, json!({}));
    let add = |conf: &[u8]| Call::new("egress-v4", "ADD", "p1", pod.path()).run(&s.node, conf);

    assert!(add(&serde_json::to_vec(&conf).unwrap()).err(7).contains("prevResult"));
    let dual = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}, {"address": "fd90::5/64"}]});
    assert!(add(&with_prev_result(&conf, &dual)).err(7).contains("IPv6-only"));
    for (extra, code) in [
        (json!({"nodeIP": "2001:db8::1"}), 7),
        (json!({"randomizeSNAT": "sometimes"}), 7),
        (json!({"ifName": "eth0"}), 7),
        (json!({"vethPrefix": "much-too-long"}), 7),
        (json!({"mtu": [1]}), 6),
    ] {
        add(&with_prev_result(&egress_conf(&s, extra.clone()), &v6_prev(&pod, "fd90::5/64"))).err(code);
    }
    // IPAM giving no IPv4 address: rolled back.
    let v6_ipam = egress_conf(
        &s,
        json!({"ipam": {"type": "host-local", "dataDir": format!("{}/v4", s.data.str()),
        "ranges": [[{"subnet": "fd91::/64"}]]}}),
    );
    assert!(add(&with_prev_result(&v6_ipam, &v6_prev(&pod, "fd90::5/64"))).err(7).contains("not an IPv4"));
    // No nodeIP and no IPv4 default route to take it from: try again later; nothing was allocated.
    s.node.ip(&["route", "del", "default"]);
    assert!(add(&with_prev_result(&conf, &v6_prev(&pod, "fd90::5/64"))).err(11).contains("default route"));
    // nftables refusing the batch (a set of the same name with another type) undoes the veth and IPAM.
    s.node.nft(&["add", "table", "inet", "cni_chain"]);
    s.node.nft(&["add", "set", "inet", "cni_chain", "egress_v4_192_0_2_1", "{ type ipv6_addr; }"]);
    let pinned = egress_conf(&s, json!({"nodeIP": "192.0.2.1"}));
    add(&with_prev_result(&pinned, &v6_prev(&pod, "fd90::5/64"))).err(108);
    s.node.nft(&["delete", "table", "inet", "cni_chain"]);
    assert_eq!(pod.link("v4if0"), None);
    s.assert_clean();

    // Disabled: prevResult passes through untouched, nothing is made, DEL is fine.
    let off = egress_conf(&s, json!({"enabled": "false"}));
    let prev = v6_prev(&pod, "fd90::5/64");
    let out = add(&with_prev_result(&off, &prev)).ok();
    assert_eq!(out["ips"], prev["ips"]);
    assert_eq!(out["interfaces"], prev["interfaces"]);
    Call::new("egress-v4", "DEL", "p1", pod.path()).run(&s.node, &serde_json::to_vec(&off).unwrap()).ok();
    s.assert_clean();
    // GC without attachments is fine on an empty node.
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    Call::new("egress-v4", "GC", "", "").run(&s.node, &with_valid_attachments(&gc, &[])).ok();
}

#[test]
fn after_the_reference_ptp() {
    let s = site();
    let mut chain = s.chain("1.0.0");
    chain.list["plugins"][0]["type"] = json!(format!("{}/ptp", integration::REFERENCE_DIR));
    let pod = Netns::new();
    let r = chain.add(&s.node, "p1", pod.path());
    assert_eq!(r["interfaces"][3]["name"], "v4if0", "{r}");
    assert_eq!(s.outside.peer_of(&pod, "192.0.2.2"), Some(ip("192.0.2.1")));
    for reply in chain.check(&s.node, "p1", pod.path(), &r) {
        reply.ok();
    }
    chain.del(&s.node, "p1", pod.path(), Some(&r));
    assert_eq!(s.veths("egress"), Vec::<String>::new());
    assert!(!s.node.nft(&["list", "tables"]).contains("cni_chain"));
    assert_eq!(s.reservations(), Vec::<String>::new());
}
