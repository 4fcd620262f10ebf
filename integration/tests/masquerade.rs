//! linkgroup, masquerade and ptp's ipMasq against the real kernel: a node netns with pods, an "outside"
//! host behind an uplink, and a "peer" behind a link in group 9 (the cluster network). Traffic is real
//! TCP; the listener reports the source address it sees.

use integration::{concurrently, with_prev_result, Call, Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::net::IpAddr;

struct Site {
    node: Netns,
    outside: Netns,
    peer: Netns,
}

/// node ─uplink─ outside (192.0.2.0/24, 2001:db8::/64, no route back to pods)
/// node ─cluster0 (group 9)─ peer (198.51.100.0/24, routes pods via the node)
fn site() -> Site {
    let (node, outside, peer) = (Netns::new(), Netns::new(), Netns::new());
    node.link_to(&outside, "uplink", &[("192.0.2.1/24", "192.0.2.2/24"), ("2001:db8::1/64", "2001:db8::2/64")], None);
    node.link_to(&peer, "cluster0", &[("198.51.100.1/24", "198.51.100.2/24")], Some(9));
    peer.ip(&["route", "add", "10.0.0.0/8", "via", "198.51.100.1"]);
    Site { node, outside, peer }
}

/// The node's veths that plugins made (the site's own links are not counted).
fn pod_veths(node: &Netns) -> Vec<String> {
    node.veths().into_iter().filter(|v| v != "uplink" && v != "cluster0").collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The pod's first address of the family, from a result.
fn pod_ip(r: &Value, v6: bool) -> IpAddr {
    r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| ip(i["address"].as_str().unwrap().split('/').next().unwrap()))
        .find(|a| a.is_ipv6() == v6)
        .unwrap()
}

/// Rules in our table, as `nft -j` lists them.
fn rules(node: &Netns, table: &str) -> Vec<Value> {
    node.nft_json()["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["table"] == table)
        .cloned()
        .collect()
}

/// A table that is not ours, to prove we never touch it.
fn other_table(node: &Netns) -> String {
    node.nft(&["add", "table", "inet", "other"]);
    node.nft(&["add", "chain", "inet", "other", "pass", "{ type filter hook forward priority 0; policy accept; }"]);
    node.nft(&["add", "rule", "inet", "other", "pass", "ip", "daddr", "203.0.113.0/24", "drop"]);
    node.nft(&["list", "table", "inet", "other"])
}

fn shipped_chain(data: &TempDir) -> Chain {
    let mut chain = Chain::shipped("20-cni-chain-masquerade.conflist");
    chain.overrides.push((0, "ipam.dataDir".into(), json!(data.str())));
    chain
}

#[test]
fn group_mode_chain_masquerades_egress_with_one_rule() {
    let (s, data) = (site(), TempDir::new("masq"));
    let other = other_table(&s.node);
    let chain = shipped_chain(&data);
    let pods = [Netns::new(), Netns::new()];
    let r1 = chain.add(&s.node, "p1", pods[0].path());
    let r2 = chain.add(&s.node, "p2", pods[1].path());
    for r in [&r1, &r2] {
        let veth = r["interfaces"][0]["name"].as_str().unwrap();
        assert_eq!(s.node.link(veth).unwrap()["group"], "8", "linkgroup put {veth} in group 8");
    }
    let ours = rules(&s.node, "cni_chain");
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0]["chain"], "masq_group_8");

    let (p1_v4, p1_v6) = (pod_ip(&r1, false), pod_ip(&r1, true));
    assert_eq!(s.outside.peer_of(&pods[0], "192.0.2.2"), Some(ip("192.0.2.1")), "IPv4 egress is masqueraded");
    assert_eq!(s.outside.peer_of(&pods[0], "2001:db8::2"), Some(ip("2001:db8::1")), "IPv6 egress is masqueraded");
    let p2 = pod_ip(&r2, false).to_string();
    assert_eq!(pods[1].peer_of(&pods[0], &p2), Some(p1_v4), "pod to pod keeps the pod's address");
    assert_eq!(s.peer.peer_of(&pods[0], "198.51.100.2"), Some(p1_v4), "the group-9 link is not masqueraded");
    let _ = p1_v6;

    for reply in chain.check(&s.node, "p1", pods[0].path(), &r1) {
        reply.ok();
    }
    // The rule vanished behind our back: CHECK says so, the next ADD puts it back.
    s.node.nft(&["flush", "chain", "inet", "cni_chain", "masq_group_8"]);
    assert!(chain.check(&s.node, "p1", pods[0].path(), &r1)[2].err(104).contains("masq_group_8"));
    let pod3 = Netns::new();
    let r3 = chain.add(&s.node, "p3", pod3.path());
    assert_eq!(rules(&s.node, "cni_chain").len(), 1);

    // DEL leaves the shared rule to the other pods; GC with none left removes our table.
    chain.del(&s.node, "p1", pods[0].path(), Some(&r1));
    chain.del(&s.node, "p3", pod3.path(), Some(&r3));
    assert_eq!(rules(&s.node, "cni_chain").len(), 1);
    assert_eq!(s.outside.peer_of(&pods[1], "192.0.2.2"), Some(ip("192.0.2.1")));
    let mut gc_1_1 = Chain::new(chain.list.clone());
    gc_1_1.list["cniVersion"] = json!("1.1.0");
    gc_1_1.overrides = chain.overrides.clone();
    for reply in gc_1_1.each(&s.node, "GC", &[("p2", "eth0")]) {
        reply.ok();
    }
    assert_eq!(rules(&s.node, "cni_chain").len(), 1, "p2 is still valid");
    for reply in gc_1_1.each(&s.node, "GC", &[]) {
        reply.ok();
    }
    assert!(!s.node.has_nft_table("cni_chain"), "GC with no pods left removes the table");
    assert!(pod_veths(&s.node).is_empty());
    assert_eq!(s.node.nft(&["list", "table", "inet", "other"]), other, "another table was touched");
}

/// masquerade alone, with a made-up prevResult: what a main plugin would have returned.
fn masq_conf(mode: Value, addrs: &[String]) -> Vec<u8> {
    let ips: Vec<Value> = addrs.iter().map(|a| json!({"address": a})).collect();
    let mut c = json!({"cniVersion": "1.1.0", "name": "masqnet", "type": "masquerade",
        "prevResult": {"cniVersion": "1.1.0", "ips": ips}});
    for (k, v) in mode.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::to_vec(&c).unwrap()
}

#[test]
fn rule_count_is_the_same_for_one_pod_and_for_200_and_concurrent_adds_converge() {
    let node = Netns::new();
    let addr = |i: usize| format!("10.70.{}.{}/16", i / 250, i % 250 + 2);
    let add = |mode: &Value, i: usize| {
        Call::new("masquerade", "ADD", &format!("c{i}"), node.path())
            .run(&node, &masq_conf(mode.clone(), &[addr(i)]))
            .ok();
    };

    let group = json!({"mode": "group"});
    add(&group, 0);
    let one = rules(&node, "cni_chain").len();
    concurrently(200, 8, |i| add(&group, i));
    assert_eq!((one, rules(&node, "cni_chain").len()), (1, 1), "group mode: one rule, however many pods");

    let pod = json!({"mode": "pod"});
    add(&pod, 0);
    let with_one = rules(&node, "cni_chain").len();
    concurrently(200, 8, |i| add(&pod, i));
    assert_eq!(rules(&node, "cni_chain").len(), with_one, "pod mode: fixed rules");
    let elems = node.nft_elements("pods_v4");
    assert_eq!(elems.len(), 200);
    assert!(
        elems.iter().any(|(a, c)| a == "10.70.0.7" && c == "cni-chain:masquerade:masqnet:c5/eth0"),
        "{:?}",
        &elems[..3]
    );

    // GC keeps the valid half; DEL without prevResult removes one more; GC with none removes the rest.
    let valid: Vec<(String, String)> = (0..100).map(|i| (format!("c{i}"), "eth0".to_string())).collect();
    let valid: Vec<(&str, &str)> = valid.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let conf: Value = serde_json::from_slice(&masq_conf(pod.clone(), &[])).unwrap();
    Call::new("masquerade", "GC", "", "").run(&node, &integration::with_valid_attachments(&conf, &valid)).ok();
    assert_eq!(node.nft_elements("pods_v4").len(), 100);
    let mut no_prev = conf.clone();
    no_prev.as_object_mut().unwrap().remove("prevResult");
    Call::new("masquerade", "DEL", "c0", "").run(&node, &serde_json::to_vec(&no_prev).unwrap()).ok();
    Call::new("masquerade", "DEL", "c0", "").run(&node, &serde_json::to_vec(&no_prev).unwrap()).ok();
    assert_eq!(node.nft_elements("pods_v4").len(), 99);
    // The last 99 go by concurrent DELs, which must still leave no per-pod structure behind.
    concurrently(99, 8, |i| {
        let id = format!("c{}", i + 1);
        Call::new("masquerade", "DEL", &id, "").run(&node, &serde_json::to_vec(&no_prev).unwrap()).ok();
    });
    let ruleset = node.nft(&["list", "ruleset"]);
    assert!(!ruleset.contains("pods_v4") && !ruleset.contains("masq_pods"), "{ruleset}");
    Call::new("masquerade", "GC", "", "").run(&node, &integration::with_valid_attachments(&conf, &[])).ok();
    let group_conf: Value = serde_json::from_slice(&masq_conf(group, &[])).unwrap();
    Call::new("masquerade", "GC", "", "").run(&node, &integration::with_valid_attachments(&group_conf, &[])).ok();
    assert!(!node.has_nft_table("cni_chain"), "{}", node.nft(&["list", "ruleset"]));
}

#[test]
fn pod_mode_masquerades_except_towards_excluded_cidrs() {
    let (s, data) = (site(), TempDir::new("masq"));
    let list = json!({"cniVersion": "1.0.0", "name": "podmasq", "plugins": [
        {"type": "ptp", "ipam": {"type": "host-local", "dataDir": data.str(),
            "ranges": [[{"subnet": "10.61.0.0/24"}], [{"subnet": "fd61::/64"}]], "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
        {"type": "masquerade", "mode": "pod", "table": "podmasq", "excludeCIDRs": ["10.61.0.0/24", "fd61::/64", "198.51.100.0/24"]}
    ]});
    let chain = Chain::new(list);
    let pods = [Netns::new(), Netns::new()];
    let r1 = chain.add(&s.node, "q1", pods[0].path());
    let r2 = chain.add(&s.node, "q2", pods[1].path());
    let p1 = pod_ip(&r1, false);
    assert_eq!(s.outside.peer_of(&pods[0], "192.0.2.2"), Some(ip("192.0.2.1")));
    assert_eq!(s.outside.peer_of(&pods[0], "2001:db8::2"), Some(ip("2001:db8::1")));
    assert_eq!(s.peer.peer_of(&pods[0], "198.51.100.2"), Some(p1), "excluded CIDR keeps the pod's address");
    assert_eq!(pods[1].peer_of(&pods[0], &pod_ip(&r2, false).to_string()), Some(p1));
    assert_eq!(s.node.nft_elements("pods_v4").len(), 2);
    assert_eq!(s.node.nft_elements("pods_v6").len(), 2);
    for reply in chain.check(&s.node, "q1", pods[0].path(), &r1) {
        reply.ok();
    }

    // DEL after the pod's netns is gone and without prevResult still removes its elements.
    let gone = pods[0].path().to_string();
    let [pod1, pod2] = pods;
    drop(pod1);
    chain.del(&s.node, "q1", &gone, None);
    assert_eq!(
        s.node.nft_elements("pods_v4"),
        [(pod_ip(&r2, false).to_string(), "cni-chain:masquerade:podmasq:q2/eth0".into())]
    );
    chain.del(&s.node, "q2", pod2.path(), Some(&r2));
    assert!(!s.node.has_nft_table("podmasq"), "the last DEL leaves no elements and no table");
}

#[test]
fn ptp_ip_masq_uses_the_pod_mode() {
    let (s, data) = (site(), TempDir::new("masq"));
    let conf = json!({"cniVersion": "1.0.0", "name": "ptpmasq", "type": "ptp", "ipMasq": true,
        "ipam": {"type": "host-local", "dataDir": data.str(), "ranges": [[{"subnet": "10.62.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}});
    let pod = Netns::new();
    let bytes = serde_json::to_vec(&conf).unwrap();
    let r = Call::new("ptp", "ADD", "m1", pod.path()).run(&s.node, &bytes).ok();
    assert_eq!(s.outside.peer_of(&pod, "192.0.2.2"), Some(ip("192.0.2.1")));
    assert_eq!(
        s.node.nft_elements("ptp_pods_v4"),
        [("10.62.0.2".to_string(), "cni-chain:ptp:ptpmasq:m1/eth0".to_string())]
    );
    Call::new("ptp", "CHECK", "m1", pod.path()).run(&s.node, &with_prev_result(&conf, &r)).ok();
    s.node.nft(&["flush", "map", "inet", "cni_chain", "ptp_pods_v4"]);
    Call::new("ptp", "CHECK", "m1", pod.path()).run(&s.node, &with_prev_result(&conf, &r)).err(104);
    Call::new("ptp", "DEL", "m1", pod.path()).run(&s.node, &bytes).ok();
    assert!(!s.node.has_nft_table("cni_chain"));
    assert!(pod_veths(&s.node).is_empty());
}

/// The result's interfaces on the node (no sandbox).
fn node_side_interfaces(result: &Value) -> Vec<String> {
    let interfaces = result["interfaces"].as_array().unwrap().iter();
    interfaces.filter(|i| i.get("sandbox").is_none()).map(|i| i["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn linkgroup_after_the_reference_ptp_and_bridge() {
    let (node, data) = (Netns::new(), TempDir::new("lg"));
    for (main, subnet) in [("/usr/lib/cni/ptp", "10.63.0.0/24"), ("/usr/lib/cni/bridge", "10.64.0.0/24")] {
        let list = json!({"cniVersion": "1.0.0", "name": "lgnet", "plugins": [
            {"type": main, "bridge": "br-test", "isGateway": true,
             "ipam": {"type": "host-local", "dataDir": data.str(), "ranges": [[{"subnet": subnet}]]}},
            {"type": "linkgroup", "group": 8, "containerGroup": 7}
        ]});
        let chain = Chain::new(list);
        let pod = Netns::new();
        let r = chain.add(&node, "l1", pod.path());
        let host = node_side_interfaces(&r);
        // The bridge too: routed traffic enters the node through it, not through its port.
        for name in &host {
            assert_eq!(node.link(name).unwrap()["group"], "8", "{main}: {name}");
        }
        assert_eq!(pod.link("eth0").unwrap()["group"], "7", "{main}: containerGroup");
        for reply in chain.check(&node, "l1", pod.path(), &r) {
            reply.ok();
        }
        let veth = host.iter().find(|n| node.link(n).unwrap()["group"] == "8").unwrap();
        node.ip(&["link", "set", veth, "group", "0"]);
        assert!(chain.check(&node, "l1", pod.path(), &r)[1].err(104).contains("group"));
        chain.del(&node, "l1", pod.path(), Some(&r));
        chain.del(&node, "l1", pod.path(), Some(&r));
    }
    // Without prevResult linkgroup cannot know what to group.
    let conf = br#"{"cniVersion":"1.0.0","name":"lgnet","type":"linkgroup","group":8}"#;
    assert!(Call::new("linkgroup", "ADD", "x", node.path()).run(&node, conf).err(7).contains("prevResult"));
    let bad = br#"{"cniVersion":"1.0.0","name":"lgnet","type":"linkgroup","group":"no-such-group",
        "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"x"}]}}"#;
    Call::new("linkgroup", "ADD", "x", node.path()).run(&node, bad).err(7);
}

/// linkgroup's ADD run again finds the links in their group (asked without its runtime) and changes nothing; a group
/// changed since is set again, and after a bridge both the bridge and its port are still grouped.
#[test]
fn linkgroup_add_run_again_changes_nothing_and_sets_a_changed_group_again() {
    let (node, data) = (Netns::new(), TempDir::new("lg-again"));
    for (main, subnet) in [("ptp", "10.65.0.0/24"), ("/usr/lib/cni/bridge", "10.66.0.0/24")] {
        let list = json!({"cniVersion": "1.0.0", "name": "lgagain", "plugins": [
            {"type": main, "bridge": "br-again", "isGateway": true,
             "ipam": {"type": "host-local", "dataDir": data.str(), "ranges": [[{"subnet": subnet}]]}},
            {"type": "linkgroup", "group": 8}
        ]});
        let (chain, pod) = (Chain::new(list), Netns::new());
        let r = chain.add(&node, "a1", pod.path());
        let host = node_side_interfaces(&r);
        let conf = json!({"cniVersion": "1.0.0", "name": "lgagain", "type": "linkgroup", "group": 8});
        let again = || {
            let reply = Call::new("linkgroup", "ADD", "a1", pod.path()).run(&node, &with_prev_result(&conf, &r));
            assert_eq!(reply.ok()["interfaces"], r["interfaces"], "{main}");
            for name in &host {
                assert_eq!(node.link(name).unwrap()["group"], "8", "{main}: {name}");
            }
        };
        again();
        for name in &host {
            node.ip(&["link", "set", name, "group", "0"]);
            again();
        }
        chain.del(&node, "a1", pod.path(), Some(&r));
    }
}

#[test]
fn status_says_when_nftables_is_not_usable() {
    let node = Netns::new();
    let conf = br#"{"cniVersion":"1.1.0","name":"st","type":"masquerade"}"#;
    Call::new("masquerade", "STATUS", "", "").run(&node, conf).ok();
    // In a user namespace of its own the plugin has no CAP_NET_ADMIN over the node's netns.
    let reply = Call::new("masquerade", "STATUS", "", "").run_with(&node, conf, |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: unshare is a plain syscall between fork and exec.
        unsafe {
            cmd.pre_exec(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(std::io::Error::from));
        }
    });
    assert!(reply.err(50).contains("nftables"));
}

#[test]
fn shipped_chain_with_the_reference_portmap_and_bandwidth() {
    let (s, data) = (site(), TempDir::new("masq"));
    let mut chain = Chain::shipped("40-cni-chain-portmap-bandwidth.conflist");
    chain.overrides.push((0, "ipam.dataDir".into(), json!(data.str())));
    let mappings = json!({"portMappings": [{"hostPort": 8090, "containerPort": 80, "protocol": "tcp"}]});
    chain.overrides.push((3, "runtimeConfig".into(), mappings));
    let rates = json!({"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000,
        "egressRate": 8_000_000, "egressBurst": 80_000}});
    chain.overrides.push((4, "runtimeConfig".into(), rates));
    let pod = Netns::new();
    let r = chain.add(&s.node, "pm", pod.path());
    assert_eq!(pod.peer_via(&s.outside, "192.0.2.1", 80, Some(8090)), Some(ip("192.0.2.2")), "port mapping");
    assert_eq!(s.outside.peer_of(&pod, "192.0.2.2"), Some(ip("192.0.2.1")), "egress still masqueraded");
    // bandwidth shaped the host veth (ingress) and an ifb device (egress).
    let veth = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let shaping = s.node.command("tc").args(["qdisc", "show", "dev", &veth]).output().unwrap();
    assert!(String::from_utf8_lossy(&shaping.stdout).contains("tbf"), "{shaping:?}");
    assert!(s.node.ip_json(&["link", "show", "type", "ifb"]).as_array().is_some_and(|a| a.len() == 1));
    // Ours pass CHECK; Debian's portmap 1.1.1 fails its own CHECK of a dual-stack pod's IPv6 rules.
    let checks = chain.check(&s.node, "pm", pod.path(), &r);
    for reply in checks.iter().take(3).chain(checks.get(4)) {
        reply.ok();
    }
    chain.del(&s.node, "pm", pod.path(), Some(&r));
    assert!(pod_veths(&s.node).is_empty());
    assert_eq!(s.node.ip_json(&["link", "show", "type", "ifb"]), json!([]));
    assert!(!s.node.has_nft_table("cni_chain"), "our rule goes with the last pod");
}

/// An address a crashed attachment still holds in a member set is taken over by the next pod that gets it:
/// ADD asks for that one address rather than reading every member.
#[test]
fn group_add_takes_over_an_address_a_leaked_member_holds() {
    let (s, data) = (site(), TempDir::new("masq-takeover"));
    let chain = shipped_chain(&data);
    let pods = [Netns::new(), Netns::new(), Netns::new()];
    let r0 = chain.add(&s.node, "p0", pods[0].path());
    let r1 = chain.add(&s.node, "p1", pods[1].path());
    chain.del(&s.node, "p1", pods[1].path(), Some(&r1));
    // host-local hands out the address after the last one it gave.
    let next = match pod_ip(&r1, false) {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) + 1).into()),
        IpAddr::V6(_) => unreachable!(),
    };
    let leaked = format!(r#"{{ {next} comment "cni-chain:masquerade:cni-chain-masq:leaked/eth0" }}"#);
    s.node.nft(&["add", "element", "inet", "cni_chain", "masq_group_8_v4", &leaked]);
    let r2 = chain.add(&s.node, "p2", pods[2].path());
    assert_eq!(pod_ip(&r2, false), next);
    let members = s.node.nft_elements("masq_group_8_v4");
    let holder = members.iter().find(|(k, _)| *k == next.to_string()).map(|(_, c)| c.as_str());
    assert_eq!(holder, Some("cni-chain:masquerade:cni-chain-masq:p2/eth0"), "{members:?}");
    assert_eq!(s.outside.peer_of(&pods[2], "192.0.2.2"), Some(ip("192.0.2.1")), "p2 is masqueraded");
    chain.del(&s.node, "p2", pods[2].path(), Some(&r2));
    chain.del(&s.node, "p0", pods[0].path(), Some(&r0));
    assert!(!s.node.has_nft_table("cni_chain"), "{}", s.node.nft(&["list", "ruleset"]));
}

/// The group mode's ADD run again finds its member and the rule in place and changes nothing (no handle is new); an
/// ADD with another pod group moves the member to that group's set, and back.
#[test]
fn group_add_run_again_changes_nothing_and_a_changed_group_moves_the_member() {
    let (node, pod) = (Netns::new(), Netns::new());
    let member = |group: u32| {
        let held = node.nft_elements(&format!("masq_group_{group}_v4"));
        held.iter().any(|(k, c)| k == "10.70.0.2" && c == "cni-chain:masquerade:masqnet:a1/eth0")
    };
    let add = |group: u32| {
        let conf = masq_conf(json!({"mode": "group", "podGroup": group}), &["10.70.0.2/24".into()]);
        Call::new("masquerade", "ADD", "a1", pod.path()).run(&node, &conf).ok();
    };
    add(8);
    let before = node.nft(&["--handle", "list", "ruleset"]);
    add(8);
    assert_eq!(node.nft(&["--handle", "list", "ruleset"]), before, "an ADD run again changed the ruleset");
    add(9);
    assert!(member(9) && !member(8), "{}", node.nft(&["list", "ruleset"]));
    add(8);
    assert!(member(8) && !member(9), "{}", node.nft(&["list", "ruleset"]));
}
