//! egress-v6 against the real kernel: IPv4-only pods made by ptp get a second veth with a unique-local
//! IPv6 address, routed through the host end's link-local address, and their IPv6 traffic reaches an
//! "outside" host as the node's global address. Traffic is real TCP; the listener reports the source it sees.

use integration::egress::{self, prev_result, rule_count, sorted, Site, V6};
use integration::{with_prev_result, Call, Netns, TempDir};
use serde_json::json;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const SET: &str = V6.set;

fn site() -> Site {
    Site::new(&V6)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every IPv6 address (link-local ones too) on `dev`.
fn all_ipv6(ns: &Netns, dev: &str) -> Vec<String> {
    let v = ns.ip_json(&["-6", "addr", "show", "dev", dev]);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

#[test]
fn ipv4_pod_reaches_an_ipv6_host_as_the_node() {
    let s = site();
    let chain = s.chain("1.0.0");
    let pod = Netns::new();
    let r = chain.add(&s.node, "p1", pod.path());

    // Runtimes read pod IPs from `ips`: only the IPv4 one is there.
    let ips: Vec<&str> = r["ips"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    assert_eq!(ips.len(), 1, "{r}");
    assert!(ips[0].starts_with("10.91."), "{r}");
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 4, "ptp's pair, then ours: {r}");
    let host = ifs[2]["name"].as_str().unwrap().to_string();
    assert!(host.starts_with("egress6") && ifs[2].get("sandbox").is_none(), "{r}");
    assert_eq!(ifs[3]["name"], "v6if0");
    assert_eq!(ifs[3]["sandbox"], pod.path());

    // The pod: IPv6 only on v6if0, its default route via the host end's fixed link-local address.
    assert_eq!(all_ipv6(&pod, "eth0"), Vec::<String>::new(), "eth0 has no IPv6 address at all");
    assert_eq!(pod.sysctl("net/ipv6/conf/eth0/disable_ipv6"), "1");
    let addr = s.egress_ip(&pod);
    assert!(addr.starts_with("fd00::ac:") && addr.ends_with("/118"), "{addr}");
    let pod_v6 = addr.split('/').next().unwrap().to_string();
    let routes: Vec<String> = pod.routes("-6").into_iter().filter(|r| !r.starts_with("fe80::/64")).collect();
    assert_eq!(
        sorted(routes),
        sorted(vec![
            "default via fe80::1 dev v6if0".into(),
            "fd00::ac:0/118 via fe80::1 dev v6if0".into(),
            "fe80::1 dev v6if0".into(),
        ])
    );
    // The node: our link-local on the host veth, a host route to the pod, the attachment in the alias.
    assert!(all_ipv6(&s.node, &host).contains(&"fe80::1/128".to_string()), "{:?}", all_ipv6(&s.node, &host));
    assert!(s.node.routes("-6").contains(&format!("{pod_v6} dev {host}")), "{:?}", s.node.routes("-6"));
    let tag = "cni-chain:egress-v6:cni-chain-v4:p1/eth0".to_string();
    assert_eq!(s.node.link(&host).unwrap()["ifalias"], tag.as_str());

    // nftables: the pod's address in the node address's set, one SNAT rule.
    assert_eq!(s.node.nft_elements(SET), [(pod_v6.clone(), tag)]);
    assert_eq!(rule_count(&s.node, SET), 1);
    let listing = s.node.nft(&["list", "chain", "inet", "cni_chain", SET]);
    assert!(listing.contains("type nat hook postrouting priority srcnat"), "{listing}");
    assert!(
        listing.contains(&format!("ip6 saddr @{SET} ip6 daddr != ff00::/8 snat ip6 to 2001:db8::1 fully-random")),
        "{listing}"
    );

    // Real traffic: IPv6 leaves as the node, IPv4 keeps the pod's address as before.
    assert_eq!(s.outside.peer_of(&pod, "2001:db8::2"), Some(ip("2001:db8::1")), "IPv6 egress is SNATed to nodeIP");
    let pod_v4 = ips[0].split('/').next().unwrap();
    assert_eq!(s.outside.peer_of(&pod, "192.0.2.2"), Some(ip(pod_v4)), "IPv4 is untouched");

    for reply in chain.check(&s.node, "p1", pod.path(), &r) {
        reply.ok();
    }
    // State changed behind our back: CHECK says what.
    s.node.nft(&["delete", "element", "inet", "cni_chain", SET, &format!("{{ {pod_v6} }}")]);
    assert!(chain.check(&s.node, "p1", pod.path(), &r)[1].err(104).contains(&pod_v6));
    pod.set_sysctl("net/ipv6/conf/eth0/disable_ipv6", "0");
    assert!(chain.check(&s.node, "p1", pod.path(), &r)[1].err(104).contains("IPv6 is on again"));
    s.node.ip(&["-6", "route", "del", &pod_v6]);
    assert!(chain.check(&s.node, "p1", pod.path(), &r)[1].err(104).contains("no route"));

    chain.del(&s.node, "p1", pod.path(), Some(&r));
    s.assert_clean();
    // DEL again, also without prevResult: still fine.
    chain.del(&s.node, "p1", pod.path(), None);
}

/// Netns defaults that switch IPv6 off and generate no link-local address do not stop the path, and it
/// works the moment ADD returns: nothing on either end is left tentative.
#[test]
fn works_at_once_where_the_defaults_switch_ipv6_off() {
    let s = site();
    let pod = Netns::new();
    for ns in [&s.node, &pod] {
        ns.set_sysctl("net/ipv6/conf/default/disable_ipv6", "1");
        ns.set_sysctl("net/ipv6/conf/default/addr_gen_mode", "1");
    }
    let chain = s.chain("1.1.0");
    let r = chain.add(&s.node, "p1", pod.path());
    let host = r["interfaces"][2]["name"].as_str().unwrap().to_string();
    let pod_addrs = pod.ip(&["-6", "addr", "show", "dev", "v6if0"]);
    let host_addrs = s.node.ip(&["-6", "addr", "show", "dev", &host]);
    assert!(!pod_addrs.contains("tentative") && pod_addrs.contains("fd00::ac:"), "{pod_addrs}");
    assert!(!host_addrs.contains("tentative") && host_addrs.contains("fe80::1/128"), "{host_addrs}");
    assert!(!host_addrs.replace("fe80::1/128", "").contains("fe80::"), "no link-local of the kernel's: {host_addrs}");
    assert_eq!(s.outside.peer_of(&pod, "2001:db8::2"), Some(ip("2001:db8::1")));
    chain.del(&s.node, "p1", pod.path(), Some(&r));
    s.assert_clean();
}

/// node ─uplink─ outside, IPv6 from router advertisements only: outside (fe80::2) advertises itself as
/// default router and 2001:db8:5::/64 for SLAAC; the node makes a stable and a temporary address from it.
/// Then a unique-local and a deprecated address are added, which the node lists before those two.
fn ra_site() -> Site {
    let (node, outside) = (Netns::new(), Netns::new());
    node.ip(&["link", "add", "uplink", "type", "veth", "peer", "name", "uplinkp"]);
    let tid = outside.path().split('/').nth(4).unwrap().to_string();
    node.ip(&["link", "set", "uplinkp", "netns", &tid]);
    node.set_sysctl("net/ipv6/conf/all/forwarding", "0");
    for (key, value) in [("accept_ra", "1"), ("accept_dad", "0"), ("use_tempaddr", "2")] {
        node.set_sysctl(&format!("net/ipv6/conf/uplink/{key}"), value);
    }
    node.ip(&["addr", "add", "192.0.2.1/24", "dev", "uplink"]);
    node.ip(&["link", "set", "uplink", "up"]);
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    for a in ["fe80::2/64", "2001:db8:5::2/64", "192.0.2.2/24"] {
        outside.ip(&["addr", "add", a, "dev", "uplinkp", "nodad"]);
    }
    outside.ip(&["addr", "add", "2001:db8:99::9/128", "dev", "lo"]);
    outside.ip(&["link", "set", "uplinkp", "up"]);
    outside.ip(&["route", "add", "10.91.0.0/16", "via", "192.0.2.1"]);
    // A router: its neighbour advertisements say so, else the node drops the routes via it.
    outside.set_sysctl("net/ipv6/conf/all/forwarding", "1");
    // Advertised again and again, as routers do, until the node has taken it: the first may come before
    // the node's end listens.
    let mut router = outside.command("/usr/bin/python3").args(["-c", SEND_RA]).spawn().expect("python3");
    let learnt = wait_for(|| {
        node.ip(&["-6", "route", "show", "default"]).contains("proto ra")
            && node.ip(&["-6", "addr", "show", "dev", "uplink"]).contains("temporary")
    });
    let _ = router.kill();
    let _ = router.wait();
    assert!(learnt, "the node took no default route and temporary address from the advertisements");
    node.ip(&["addr", "add", "fd00:5::1/64", "dev", "uplink", "nodad"]);
    node.ip(&["addr", "add", "2001:db8:5::dead/64", "dev", "uplink", "nodad", "preferred_lft", "0"]);
    Site { node, outside, data: TempDir::new("egress6-ra"), m: &V6 }
}

/// Router advertisements from fe80::2 to all nodes, every 50 ms for at most 20 s: default router for
/// 1800 s, prefix 2001:db8:5::/64 on-link and autonomous.
const SEND_RA: &str = r#"
import select, socket, struct
ifindex = socket.if_nametoindex("uplinkp")
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
s.bind(("fe80::2", 0, 0, ifindex))
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
pio = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + socket.inet_pton(socket.AF_INET6, "2001:db8:5::")
for _ in range(400):
    s.sendto(ra + pio, ("ff02::1", 0, 0, ifindex))
    select.select([], [], [], 0.05)
"#;

/// Whether `ready` became true within 20 s.
fn wait_for(mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The node's stable SLAAC address: from the advertised prefix, neither temporary nor deprecated.
fn stable_slaac(node: &Netns) -> String {
    let v = node.ip_json(&["-6", "addr", "show", "dev", "uplink"]);
    let infos = v[0]["addr_info"].as_array().unwrap();
    let found = infos.iter().find(|a| {
        let local = a["local"].as_str().unwrap_or("");
        local.starts_with("2001:db8:5:") && local != "2001:db8:5::dead" && a.get("temporary").is_none()
    });
    found.unwrap_or_else(|| panic!("no stable SLAAC address in {infos:?}"))["local"].as_str().unwrap().to_string()
}

#[test]
fn forwarding_keeps_the_router_advertised_route_and_node_ip_is_the_stable_global_address() {
    // Control: the kernel drops an RA default route when forwarding is turned on with accept_ra 1.
    let control = ra_site();
    control.node.set_sysctl("net/ipv6/conf/all/forwarding", "1");
    assert!(!control.node.ip(&["-6", "route", "show", "default"]).contains("proto ra"), "the kernel dropped it");
    drop(control);

    let s = ra_site();
    // A second link with accept_ra 1 but no RA route: not ours to change.
    s.node.ip(&["link", "add", "spare", "type", "veth", "peer", "name", "sparep"]);
    s.node.set_sysctl("net/ipv6/conf/spare/accept_ra", "1");
    let slaac = stable_slaac(&s.node);
    let chain = s.chain("1.0.0");
    let pod = Netns::new();
    let r = chain.add(&s.node, "p1", pod.path());
    assert_eq!(s.node.sysctl("net/ipv6/conf/all/forwarding"), "1");
    assert_eq!(s.node.sysctl("net/ipv6/conf/uplink/accept_ra"), "2");
    assert_eq!(s.node.sysctl("net/ipv6/conf/spare/accept_ra"), "1");
    assert!(s.node.ip(&["-6", "route", "show", "default"]).contains("proto ra"), "the RA route is still there");
    // Not the unique-local, deprecated or temporary address the node lists first: the stable global one.
    let set = format!("egress_v6_{}", slaac.replace(':', "_"));
    assert_eq!(s.node.nft_elements(&set).len(), 1, "{}", s.node.nft(&["list", "ruleset"]));
    assert_eq!(s.outside.peer_of(&pod, "2001:db8:99::9"), Some(ip(&slaac)));
    for reply in chain.check(&s.node, "p1", pod.path(), &r) {
        reply.ok();
    }
    chain.del(&s.node, "p1", pod.path(), Some(&r));
    s.assert_clean();
    assert!(s.node.ip(&["-6", "route", "show", "default"]).contains("proto ra"));
}

#[test]
fn every_version_with_the_aws_config_and_an_explicit_node_ip() {
    egress::every_version_with_the_aws_config_and_an_explicit_node_ip(&V6);
}

#[test]
fn fifty_pods_share_one_snat_rule() {
    egress::fifty_pods_share_one_snat_rule(&V6);
}

#[test]
fn del_after_the_pod_netns_is_gone_and_gc_leave_nothing() {
    egress::del_after_the_pod_netns_is_gone_and_gc_leave_nothing(&V6);
}

#[test]
fn refusals_change_nothing() {
    let bad = [
        (json!({"nodeIP": "192.0.2.1"}), 7),
        (json!({"nodeIP": "fe80::1"}), 7),
        (json!({"randomizeSNAT": "sometimes"}), 7),
        (json!({"ifName": "eth0"}), 7),
        (json!({"vethPrefix": "much-too-long"}), 7),
        (json!({"mtu": 1000}), 7),
        (json!({"mtu": [1]}), 6),
    ];
    egress::refusals_change_nothing(&V6, &bad, |s, pod, pinned| {
        // The primary interface missing from the pod: its IPv6 cannot be switched off, the rest is undone.
        let wrong_if = Call::new("egress-v6", "ADD", "p1", pod.path()).ifname("net1");
        let failed = wrong_if.run(&s.node, &with_prev_result(pinned, &prev_result(pod, "10.91.0.5/16")));
        assert!(failed.err(102).contains("net1/disable_ipv6"), "{failed:?}");
    });
}

#[test]
fn after_the_reference_ptp() {
    egress::after_the_reference_ptp(&V6);
}
