//! What the egress-v4 and egress-v6 suites share, as the two plugins share `common::egress`: the site (node ─uplink─
//! outside over 192.0.2.0/24 and 2001:db8::/64, default routes of both families to outside, which routes the pods'
//! own range back but not the egress range), the shipped conflist with its two stores in the test's directory, and
//! the tests whose steps are the same for both families.

use crate::{with_prev_result, with_valid_attachments, Call, Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::net::IpAddr;

/// One egress plugin as its suite sees it.
pub struct Mirror {
    pub plugin: &'static str,
    pub conflist: &'static str,
    pub network: &'static str,
    /// The main plugin's range in the shipped conflist, which the outside host routes back.
    pub pods: &'static str,
    pub pod_if: &'static str,
    pub veth_prefix: &'static str,
    /// The set and chain of the node's address of the egress family.
    pub set: &'static str,
    /// The node's and the outside host's addresses of the egress family.
    pub node_ip: &'static str,
    pub outside_ip: &'static str,
    /// The egress range (as the AWS VPC CNI's config gives it) and the first address it hands out.
    pub range: &'static str,
    pub first: &'static str,
    /// A second node address of the egress family, for an explicit `nodeIP`: (address/prefix, set name).
    pub other_node_ip: (&'static str, &'static str),
    /// Main and egress ranges for a second network on the same node.
    pub other_ranges: (&'static str, &'static str),
}

pub const V4: Mirror = Mirror {
    plugin: "egress-v4",
    conflist: "30-cni-chain-egress-v4.conflist",
    network: "cni-chain-v6",
    pods: "fd90::/64",
    pod_if: "v4if0",
    veth_prefix: "egress",
    set: "egress_v4_192_0_2_1",
    node_ip: "192.0.2.1",
    outside_ip: "192.0.2.2",
    range: "169.254.172.0/22",
    first: "169.254.172.2",
    other_node_ip: ("192.0.2.10/24", "egress_v4_192_0_2_10"),
    other_ranges: ("fd95::/64", "169.254.176.0/22"),
};

pub const V6: Mirror = Mirror {
    plugin: "egress-v6",
    conflist: "35-cni-chain-egress-v6.conflist",
    network: "cni-chain-v4",
    pods: "10.91.0.0/16",
    pod_if: "v6if0",
    veth_prefix: "egress6",
    set: "egress_v6_2001_db8__1",
    node_ip: "2001:db8::1",
    outside_ip: "2001:db8::2",
    range: "fd00::ac:00/118",
    first: "fd00::ac:2",
    other_node_ip: ("2001:db8::10/64", "egress_v6_2001_db8__10"),
    other_ranges: ("10.95.0.0/16", "fd00::b0:00/118"),
};

pub struct Site {
    pub node: Netns,
    pub outside: Netns,
    pub data: TempDir,
    pub m: &'static Mirror,
}

impl Site {
    pub fn new(m: &'static Mirror) -> Site {
        let (node, outside) = (Netns::new(), Netns::new());
        node.link_to(
            &outside,
            "uplink",
            &[("192.0.2.1/24", "192.0.2.2/24"), ("2001:db8::1/64", "2001:db8::2/64")],
            None,
        );
        node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
        node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
        let back = if m.pods.contains(':') { "2001:db8::1" } else { "192.0.2.1" };
        outside.ip(&["route", "add", m.pods, "via", back]);
        Site { node, outside, data: TempDir::new(m.plugin), m }
    }

    /// The shipped conflist at `version`, the main plugin's store and the egress store in the test's directory.
    pub fn chain(&self, version: &str) -> Chain {
        let mut chain = Chain::shipped(self.m.conflist);
        chain.list["cniVersion"] = json!(version);
        chain.overrides.push((0, "ipam.dataDir".into(), json!(format!("{}/main", self.data.str()))));
        chain.overrides.push((1, "ipam.dataDir".into(), json!(self.egress_store())));
        chain
    }

    pub fn egress_store(&self) -> String {
        format!("{}/egress", self.data.str())
    }

    /// The node's veths that plugins made, by prefix.
    pub fn veths(&self, prefix: &str) -> Vec<String> {
        self.node.veths().into_iter().filter(|v| v.starts_with(prefix)).collect()
    }

    pub fn reservations(&self) -> Vec<String> {
        let mut all = crate::reservations_in(&self.data.path().join("main").join(self.m.network));
        all.extend(crate::reservations_in(&self.data.path().join("egress").join(self.m.network)));
        all
    }

    /// Nothing of any pod is left: no veth, no reservation, no table of ours.
    pub fn assert_clean(&self) {
        assert_eq!(self.veths(self.m.veth_prefix), Vec::<String>::new());
        assert_eq!(self.veths("veth"), Vec::<String>::new());
        assert_eq!(self.reservations(), Vec::<String>::new());
        assert!(!self.node.nft(&["list", "tables"]).contains("cni_chain"), "our table is gone");
    }

    /// The egress plugin's own config from the shipped conflist, at 1.0.0, with the test's store and `extra` keys.
    pub fn egress_conf(&self, extra: Value) -> Value {
        let mut c = self.chain("1.0.0").config(1, None);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    /// The egress address on the pod's second interface.
    pub fn egress_ip(&self, pod: &Netns) -> String {
        let addrs = pod.addresses(self.m.pod_if);
        assert_eq!(addrs.len(), 1, "{addrs:?}");
        addrs[0].clone()
    }

    /// The source the outside host sees when `pod` connects to it over the egress family.
    pub fn seen_outside(&self, pod: &Netns) -> Option<IpAddr> {
        self.outside.peer_of(pod, self.m.outside_ip)
    }
}

/// A prevResult as the main plugin returns it with one address (its interfaces are not looked at by ADD).
pub fn prev_result(pod: &Netns, address: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "vethx"}, {"name": "eth0", "sandbox": pod.path()}],
        "ips": [{"address": address, "interface": 1}],
    })
}

pub fn rule_count(node: &Netns, chain: &str) -> usize {
    node.nft_json()["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o.get("rule").is_some_and(|r| r["chain"] == chain))
        .count()
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// 50 pods added and deleted concurrently share one SNAT rule, each with its element.
pub fn fifty_pods_share_one_snat_rule(m: &'static Mirror) {
    let s = Site::new(m);
    let chain = s.chain("1.0.0");
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new()).collect();
    let each_share = |work: &(dyn Fn(&Netns, String) + Sync)| {
        std::thread::scope(|scope| {
            for (worker, share) in pods.chunks(10).enumerate() {
                scope.spawn(move || {
                    for (i, pod) in share.iter().enumerate() {
                        work(pod, format!("p{worker}-{i}"));
                    }
                });
            }
        })
    };
    each_share(&|pod, id| {
        chain.add(&s.node, &id, pod.path());
    });
    assert_eq!(rule_count(&s.node, m.set), 1);
    let elems = s.node.nft_elements(m.set);
    assert_eq!(elems.len(), 50);
    for pod in [&pods[0], &pods[27], &pods[49]] {
        let addr = s.egress_ip(pod);
        assert!(elems.iter().any(|(a, _)| addr.starts_with(&format!("{a}/"))), "{addr} in {elems:?}");
        assert_eq!(s.seen_outside(pod), Some(ip(m.node_ip)));
    }
    each_share(&|pod, id| chain.del(&s.node, &id, pod.path(), None));
    s.assert_clean();
}

/// An element leaked by a crash is taken over by ADD; DEL after the pod's netns is gone; GC keeps only what is
/// valid; STATUS; and the last DEL leaves nothing.
pub fn del_after_the_pod_netns_is_gone_and_gc_leave_nothing(m: &'static Mirror) {
    let s = Site::new(m);
    let chain = s.chain("1.1.0");
    let (gone, kept, stale) = (Netns::new(), Netns::new(), Netns::new());
    let gone_path = gone.path().to_string();
    let tag = |id: &str| format!("cni-chain:{}:{}:{id}/eth0", m.plugin, m.network);
    // An element leaked by a crashed attachment holds the address IPAM hands out first: ADD takes it over.
    let key_type = if m.first.contains(':') { "ipv6_addr" } else { "ipv4_addr" };
    s.node.nft(&["add", "table", "inet", "cni_chain"]);
    s.node.nft(&["add", "set", "inet", "cni_chain", m.set, &format!("{{ type {key_type}; }}")]);
    let ghost = format!(r#"{{ {} comment "{}" }}"#, m.first, tag("ghost"));
    s.node.nft(&["add", "element", "inet", "cni_chain", m.set, &ghost]);
    chain.add(&s.node, "gone", &gone_path);
    assert_eq!(s.node.nft_elements(m.set), [(m.first.to_string(), tag("gone"))]);
    let r_kept = chain.add(&s.node, "kept", kept.path());
    chain.add(&s.node, "stale", stale.path());
    // Another network on the same node, whose attachment this network's GC must not touch.
    let mut other = s.chain("1.1.0");
    other.list["name"] = json!("other");
    for (i, range) in [m.other_ranges.0, m.other_ranges.1].into_iter().enumerate() {
        other.list["plugins"][i]["ipam"]["ranges"] = json!([[{ "subnet": range }]]);
    }
    let elsewhere = Netns::new();
    let r_elsewhere = other.add(&s.node, "elsewhere", elsewhere.path());
    drop(gone);
    chain.del(&s.node, "gone", &gone_path, None);
    let elems = s.node.nft_elements(m.set);
    assert_eq!(elems.len(), 3, "{elems:?}");
    assert!(!elems.iter().any(|(_, c)| c.ends_with(":gone/eth0")));
    assert_eq!(s.veths(m.veth_prefix).len(), 3);

    // GC with "kept" valid: "stale" goes from the links, the set and the store.
    for reply in chain.each(&s.node, "GC", &[("kept", "eth0")]) {
        reply.ok();
    }
    let elems = s.node.nft_elements(m.set);
    assert_eq!(elems.len(), 2, "{elems:?}");
    assert!(elems.iter().any(|(_, c)| c.ends_with(":kept/eth0")));
    assert!(
        elems.iter().any(|(_, c)| c.as_str() == format!("cni-chain:{}:other:elsewhere/eth0", m.plugin)),
        "{elems:?}"
    );
    assert_eq!(s.veths(m.veth_prefix).len(), 2, "kept's and the other network's");
    assert_eq!(s.reservations().len(), 2, "kept's main and egress addresses");
    for reply in chain.each(&s.node, "STATUS", &[]) {
        reply.ok();
    }
    assert_eq!(s.seen_outside(&kept), Some(ip(m.node_ip)));
    assert_eq!(s.seen_outside(&elsewhere), Some(ip(m.node_ip)), "the other network's pod still works");
    chain.del(&s.node, "kept", kept.path(), Some(&r_kept));
    other.del(&s.node, "elsewhere", elsewhere.path(), Some(&r_elsewhere));
    s.assert_clean();
}

/// After Debian's reference ptp instead of ours: the same egress, CHECK and DEL.
pub fn after_the_reference_ptp(m: &'static Mirror) {
    let s = Site::new(m);
    let mut chain = s.chain("1.0.0");
    chain.list["plugins"][0]["type"] = json!(format!("{}/ptp", crate::REFERENCE_DIR));
    let pod = Netns::new();
    let r = chain.add(&s.node, "p1", pod.path());
    assert_eq!(r["interfaces"][3]["name"], m.pod_if, "{r}");
    assert_eq!(s.seen_outside(&pod), Some(ip(m.node_ip)));
    for reply in chain.check(&s.node, "p1", pod.path(), &r) {
        reply.ok();
    }
    chain.del(&s.node, "p1", pod.path(), Some(&r));
    s.assert_clean();
}

/// Every spec version with the AWS VPC CNI's egress plugin config as its template writes it (strings for every
/// value), an explicit `nodeIP` and each `randomizeSNAT`; its AWS-named log settings log every verb.
pub fn every_version_with_the_aws_config_and_an_explicit_node_ip(m: &'static Mirror) {
    let s = Site::new(m);
    let (with_prefix, set) = m.other_node_ip;
    let node_ip = with_prefix.split('/').next().unwrap();
    s.node.ip(&["addr", "add", with_prefix, "dev", "uplink", "nodad"]);
    let (family, default) = if m.first.contains(':') { ("ip6", "::/0") } else { ("ip", "0.0.0.0/0") };
    for (version, mode, words) in [
        ("0.3.0", "none", ""),
        ("0.3.1", "hashrandom", " random"),
        ("0.4.0", "prng", " fully-random"),
        ("1.0.0", "", " fully-random"),
        ("1.1.0", "hashrandom", " random"),
    ] {
        let mut chain = s.chain(version);
        chain.list["plugins"][1] = json!({
            "name": "egress-cni", "type": m.plugin, "enabled": "true", "mtu": "9001",
            "randomizeSNAT": mode, "nodeIP": node_ip,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": m.range}]], "routes": [{"dst": default}],
                     "dataDir": s.egress_store()},
            "pluginLogFile": format!("{}/egress.log", s.data.str()), "pluginLogLevel": "DEBUG"
        });
        let pod = Netns::new();
        let r = chain.add(&s.node, "p1", pod.path());
        assert_eq!(r["cniVersion"], version);
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 4, "{version}: {r}");
        assert_eq!(pod.link(m.pod_if).unwrap()["mtu"], 9001);
        let listing = s.node.nft(&["list", "chain", "inet", "cni_chain", set]);
        let rule = format!("snat {family} to {node_ip}{words} comment");
        assert!(listing.contains(&rule), "{version}: {rule} in {listing}");
        assert_eq!(s.seen_outside(&pod), Some(ip(node_ip)), "{version}");
        if version != "0.3.0" && version != "0.3.1" {
            for reply in chain.check(&s.node, "p1", pod.path(), &r) {
                reply.ok();
            }
        }
        chain.del(&s.node, "p1", pod.path(), Some(&r));
        s.assert_clean();
    }
    let log = std::fs::read_to_string(s.data.path().join("egress.log")).unwrap();
    for verb in ["ADD", "CHECK", "DEL"] {
        let said = format!("] {verb} net={} id=p1: ", m.network);
        let line = log.lines().find(|l| l.contains(&format!(" DEBUG {}[", m.plugin)) && l.contains(&said));
        assert!(line.is_some(), "{verb}: {log}");
    }
}

/// ADD refusals change nothing in the node or the pod: no prevResult, a prevResult that has the egress family
/// already, each of `bad` (extra keys, code), IPAM giving the other family, no default route to take `nodeIP` from,
/// nftables refusing the batch, and `more` (the plugin's own, given the site, the pod and a pinned config). Then
/// disabled: prevResult passes through, DEL and GC are fine.
pub fn refusals_change_nothing(m: &'static Mirror, bad: &[(Value, u64)], more: impl FnOnce(&Site, &Netns, &Value)) {
    let s = Site::new(m);
    let pod = Netns::new();
    // The primary interface a main plugin would have made.
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    let before = pod.settled_state();
    let v6 = m.first.contains(':');
    let (main_ip, other_range, family, other) =
        if v6 { ("10.91.0.5/16", "10.99.0.0/24", "-6", "IPv4") } else { ("fd90::5/64", "fd91::/64", "-4", "IPv6") };
    let prev = prev_result(&pod, main_ip);
    let conf = s.egress_conf(json!({}));
    let add = |conf: &Value, prev: Option<&Value>| {
        let stdin = prev.map_or_else(|| serde_json::to_vec(conf).unwrap(), |p| with_prev_result(conf, p));
        Call::new(m.plugin, "ADD", "p1", pod.path()).run(&s.node, &stdin)
    };

    assert!(add(&conf, None).err(7).contains("prevResult"));
    let dual = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}, {"address": "fd90::5/64"}]});
    assert!(add(&conf, Some(&dual)).err(7).contains(&format!("{other}-only")));
    for (extra, code) in bad {
        add(&s.egress_conf(extra.clone()), Some(&prev)).err(*code);
    }
    // IPAM giving an address of the other family: rolled back.
    let wrong = s.egress_conf(json!({"ipam": {"type": "host-local", "dataDir": s.egress_store(),
        "ranges": [[{"subnet": other_range}]]}}));
    let ours = if v6 { "IPv6" } else { "IPv4" };
    assert!(add(&wrong, Some(&prev)).err(7).contains(&format!("not an {ours}")));
    // No nodeIP and no default route to take it from: try again later; nothing was allocated.
    s.node.ip(&[family, "route", "del", "default"]);
    assert!(add(&conf, Some(&prev)).err(11).contains("default route"));
    // nftables refusing the batch (a set of the same name with another type) undoes the veth and IPAM.
    let other_type = if v6 { "ipv4_addr" } else { "ipv6_addr" };
    s.node.nft(&["add", "table", "inet", "cni_chain"]);
    s.node.nft(&["add", "set", "inet", "cni_chain", m.set, &format!("{{ type {other_type}; }}")]);
    let pinned = s.egress_conf(json!({"nodeIP": m.node_ip}));
    add(&pinned, Some(&prev)).err(108);
    s.node.nft(&["delete", "table", "inet", "cni_chain"]);
    more(&s, &pod, &pinned);
    assert_eq!(pod.link(m.pod_if), None);
    crate::assert_same_state(&before, &pod.settled_state(), "the pod after refused ADDs");
    s.assert_clean();

    // Disabled: prevResult passes through untouched, nothing is made, DEL is fine.
    let off = s.egress_conf(json!({"enabled": "false"}));
    let out = add(&off, Some(&prev)).ok();
    assert_eq!(out["ips"], prev["ips"]);
    assert_eq!(out["interfaces"], prev["interfaces"]);
    Call::new(m.plugin, "DEL", "p1", pod.path()).run(&s.node, &serde_json::to_vec(&off).unwrap()).ok();
    s.assert_clean();
    // GC without attachments is fine on an empty node.
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    Call::new(m.plugin, "GC", "", "").run(&s.node, &with_valid_attachments(&gc, &[])).ok();
}
