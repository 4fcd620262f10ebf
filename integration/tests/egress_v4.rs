//! egress-v4 against the real kernel: IPv6-only pods made by ptp get a second veth with a link-local IPv4
//! address, and their IPv4 traffic reaches an "outside" host as the node's address. Traffic is real TCP;
//! the listener reports the source address it sees.

use integration::egress::{self, rule_count, sorted, Site, V4};
use integration::Netns;
use serde_json::json;
use std::net::IpAddr;

fn site() -> Site {
    Site::new(&V4)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
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
    let addr = s.egress_ip(&pod);
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
fn every_version_with_the_aws_config_and_an_explicit_node_ip() {
    egress::every_version_with_the_aws_config_and_an_explicit_node_ip(&V4);
}

#[test]
fn fifty_pods_share_one_snat_rule() {
    egress::fifty_pods_share_one_snat_rule(&V4);
}

#[test]
fn del_after_the_pod_netns_is_gone_and_gc_leave_nothing() {
    egress::del_after_the_pod_netns_is_gone_and_gc_leave_nothing(&V4);
}

#[test]
fn refusals_change_nothing() {
    let bad = [
        (json!({"nodeIP": "2001:db8::1"}), 7),
        (json!({"randomizeSNAT": "sometimes"}), 7),
        (json!({"ifName": "eth0"}), 7),
        (json!({"vethPrefix": "much-too-long"}), 7),
        (json!({"mtu": [1]}), 6),
    ];
    egress::refusals_change_nothing(&V4, &bad, |_, _, _| {});
}

#[test]
fn after_the_reference_ptp() {
    egress::after_the_reference_ptp(&V4);
}
