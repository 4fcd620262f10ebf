//! Two nodes, as the suite is used across machines: node netns A and B joined by a cluster link in group 9,
//! each with its own pod range routed to the other over that link, both with an uplink to one "outside"
//! host. The shipped ptp -> linkgroup -> masquerade conflist runs on each. Pods on different nodes see each
//! other's own addresses; traffic to the outside host leaves as the node.

use integration::{Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::net::IpAddr;

struct Node {
    ns: Netns,
    chain: Chain,
    _data: TempDir,
}

/// Node `n` (1 or 2): pods in 10.89.n.0/24 and fd89:n::/64, its own host-local store.
fn node(n: u8) -> Node {
    let data = TempDir::new("two-nodes");
    let mut chain = Chain::shipped("20-cni-chain-masquerade.conflist");
    chain.overrides.push((0, "ipam.dataDir".into(), json!(data.str())));
    let ranges = json!([[{"subnet": format!("10.89.{n}.0/24")}], [{"subnet": format!("fd89:{n}::/64")}]]);
    chain.overrides.push((0, "ipam.ranges".into(), ranges));
    Node { ns: Netns::new(), chain, _data: data }
}

fn first_ip(result: &Value, v6: bool) -> IpAddr {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().parse::<IpAddr>().unwrap())
        .find(|a| a.is_ipv6() == v6)
        .unwrap()
}

#[test]
fn pods_on_two_nodes_reach_each_other_unmasqueraded_and_the_outside_masqueraded() {
    let (a, b, outside) = (node(1), node(2), Netns::new());
    // The cluster link, in group 9 on both sides; each node routes the other's pod ranges over it.
    a.ns.link_to(
        &b.ns,
        "cluster0",
        &[("198.51.100.1/24", "198.51.100.2/24"), ("2001:db8:9::1/64", "2001:db8:9::2/64")],
        Some(9),
    );
    b.ns.ip(&["link", "set", "cluster0p", "group", "9"]);
    a.ns.ip(&["route", "add", "10.89.2.0/24", "via", "198.51.100.2"]);
    a.ns.ip(&["-6", "route", "add", "fd89:2::/64", "via", "2001:db8:9::2"]);
    b.ns.ip(&["route", "add", "10.89.1.0/24", "via", "198.51.100.1"]);
    b.ns.ip(&["-6", "route", "add", "fd89:1::/64", "via", "2001:db8:9::1"]);
    // Uplinks to the outside host, which knows no pod range.
    a.ns.link_to(
        &outside,
        "uplink",
        &[("192.0.2.1/24", "192.0.2.2/24"), ("2001:db8:1::1/64", "2001:db8:1::2/64")],
        None,
    );
    b.ns.link_to(
        &outside,
        "wan0",
        &[("203.0.113.1/24", "203.0.113.2/24"), ("2001:db8:2::1/64", "2001:db8:2::2/64")],
        None,
    );

    let (pod_a, pod_b) = (Netns::new(), Netns::new());
    let ra = a.chain.add(&a.ns, "pa", pod_a.path());
    let rb = b.chain.add(&b.ns, "pb", pod_b.path());
    assert!(first_ip(&ra, false).to_string().starts_with("10.89.1."), "{ra}");
    assert!(first_ip(&rb, false).to_string().starts_with("10.89.2."), "{rb}");

    for v6 in [false, true] {
        let (ip_a, ip_b) = (first_ip(&ra, v6), first_ip(&rb, v6));
        assert_eq!(pod_b.peer_of(&pod_a, &ip_b.to_string()), Some(ip_a), "A -> B keeps A's pod address");
        assert_eq!(pod_a.peer_of(&pod_b, &ip_a.to_string()), Some(ip_b), "B -> A keeps B's pod address");
    }
    let seen = |pod: &Netns, dst: &str| outside.peer_of(pod, dst).map(|ip| ip.to_string());
    assert_eq!(seen(&pod_a, "192.0.2.2").as_deref(), Some("192.0.2.1"), "A's pod leaves as node A");
    assert_eq!(seen(&pod_b, "203.0.113.2").as_deref(), Some("203.0.113.1"), "B's pod leaves as node B");
    assert_eq!(seen(&pod_a, "2001:db8:1::2").as_deref(), Some("2001:db8:1::1"));
    assert_eq!(seen(&pod_b, "2001:db8:2::2").as_deref(), Some("2001:db8:2::1"));

    for (n, id, pod, r) in [(&a, "pa", &pod_a, &ra), (&b, "pb", &pod_b, &rb)] {
        for reply in n.chain.check(&n.ns, id, pod.path(), r) {
            reply.ok();
        }
        n.chain.del(&n.ns, id, pod.path(), Some(r));
        let left: Vec<String> = n.ns.veths().into_iter().filter(|v| v.starts_with("veth")).collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
