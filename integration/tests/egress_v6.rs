//! egress-v6 against the real kernel: IPv4-only pods made by ptp get a second veth with a unique-local
//! IPv6 address, routed through the host end's link-local address, and their IPv6 traffic reaches an
//! "outside" host as the node's global address. Traffic is real TCP; the listener reports the source it sees.

use integration::{with_prev_result, with_valid_attachments, Call, Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const CONFLIST: &str = "35-cni-chain-egress-v6.conflist";
const SET: &str = "egress_v6_2001_db8__1";

struct Site {
    node: Netns,
    outside: Netns,
    data: TempDir,
}

/// node ─uplink─ outside (192.0.2.0/24, 2001:db8::/64). The node's default routes point at outside, which
/// routes the pods' IPv4 range back but knows nothing of the unique-local fd00::ac:0/118.
fn site() -> Site {
    let (node, outside) = (Netns::new(), Netns::new());
    node.link_to(&outside, "uplink", &[("192.0.2.1/24", "192.0.2.2/24"), ("2001:db8::1/64", "2001:db8::2/64")], None);
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    outside.ip(&["route", "add", "10.91.0.0/16", "via", "192.0.2.1"]);
    Site { node, outside, data: TempDir::new("egress6") }
}

impl Site {
    /// The shipped conflist, its two IPAM stores in the test's directory.
    fn chain(&self, version: &str) -> Chain {
        let mut chain = Chain::shipped(CONFLIST);
        chain.list["cniVersion"] = json!(version);
        chain.overrides.push((0, "ipam.dataDir".into(), json!(format!("{}/v4", self.data.str()))));
        chain.overrides.push((1, "ipam.dataDir".into(), json!(format!("{}/v6", self.data.str()))));
        chain
    }

    fn veths(&self, prefix: &str) -> Vec<String> {
        self.node.veths().into_iter().filter(|v| v.starts_with(prefix)).collect()
    }

    fn reservations(&self) -> Vec<String> {
        let mut all = integration::reservations_in(&self.data.path().join("v4/cni-chain-v4"));
        all.extend(integration::reservations_in(&self.data.path().join("v6/cni-chain-v4")));
        all
    }

    /// Nothing of any pod is left: no veth, no reservation, no table of ours.
    fn assert_clean(&self) {
        assert_eq!(self.veths("egress6"), Vec::<String>::new());
        assert_eq!(self.veths("veth"), Vec::<String>::new());
        assert_eq!(self.reservations(), Vec::<String>::new());
        assert!(!self.node.nft(&["list", "tables"]).contains("cni_chain"), "our table is gone");
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The unique-local address on the pod's v6if0.
fn egress_ip(pod: &Netns) -> String {
    let addrs = pod.addresses("v6if0");
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    addrs[0].clone()
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
    let addr = egress_ip(&pod);
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
    Site { node, outside, data: TempDir::new("egress6-ra") }
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
fn every_version_and_the_aws_config_with_explicit_node_ip() {
    let s = site();
    s.node.ip(&["addr", "add", "2001:db8::10/64", "dev", "uplink", "nodad"]);
    for (version, mode, words) in [
        ("0.3.0", "none", "snat ip6 to 2001:db8::10 comment"),
        ("0.3.1", "hashrandom", "snat ip6 to 2001:db8::10 random comment"),
        ("0.4.0", "prng", "snat ip6 to 2001:db8::10 fully-random comment"),
        ("1.0.0", "", "snat ip6 to 2001:db8::10 fully-random comment"),
        ("1.1.0", "hashrandom", "snat ip6 to 2001:db8::10 random comment"),
    ] {
        let mut chain = s.chain(version);
        // The AWS VPC CNI's egress plugin config in v6 mode, as its template writes it (strings for all).
        let aws = json!({
            "name": "egress-cni", "type": "egress-v6", "enabled": "true", "mtu": "9001",
            "randomizeSNAT": mode, "nodeIP": "2001:db8::10",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "fd00::ac:00/118"}]], "routes": [{"dst": "::/0"}],
                     "dataDir": format!("{}/v6", s.data.str())},
            "pluginLogFile": format!("{}/egress.log", s.data.str()), "pluginLogLevel": "DEBUG"
        });
        chain.list["plugins"][1] = aws;
        let pod = Netns::new();
        let r = chain.add(&s.node, "p1", pod.path());
        assert_eq!(r["cniVersion"], version);
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 4, "{version}: {r}");
        assert_eq!(pod.link("v6if0").unwrap()["mtu"], 9001);
        let listing = s.node.nft(&["list", "chain", "inet", "cni_chain", "egress_v6_2001_db8__10"]);
        assert!(listing.contains(words), "{version}: {listing}");
        assert_eq!(s.outside.peer_of(&pod, "2001:db8::2"), Some(ip("2001:db8::10")), "{version}");
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
        let line = log
            .lines()
            .find(|l| l.contains(" DEBUG egress-v6[") && l.contains(&format!("] {verb} net=cni-chain-v4 id=p1: ")));
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
    assert_eq!(rule_count(&s.node, SET), 1);
    let elems = s.node.nft_elements(SET);
    assert_eq!(elems.len(), 50);
    for pod in [&pods[0], &pods[27], &pods[49]] {
        let addr = egress_ip(pod);
        assert!(elems.iter().any(|(a, _)| addr.starts_with(&format!("{a}/"))), "{addr} in {elems:?}");
        assert_eq!(s.outside.peer_of(pod, "2001:db8::2"), Some(ip("2001:db8::1")));
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
    s.node.nft(&["add", "set", "inet", "cni_chain", SET, "{ type ipv6_addr; }"]);
    let ghost = r#"{ fd00::ac:2 comment "cni-chain:egress-v6:cni-chain-v4:ghost/eth0" }"#;
    s.node.nft(&["add", "element", "inet", "cni_chain", SET, ghost]);
    chain.add(&s.node, "gone", &gone_path);
    assert_eq!(
        s.node.nft_elements(SET),
        [("fd00::ac:2".to_string(), "cni-chain:egress-v6:cni-chain-v4:gone/eth0".to_string())]
    );
    let r_kept = chain.add(&s.node, "kept", kept.path());
    chain.add(&s.node, "stale", stale.path());
    drop(gone);
    chain.del(&s.node, "gone", &gone_path, None);
    let elems = s.node.nft_elements(SET);
    assert_eq!(elems.len(), 2, "{elems:?}");
    assert!(!elems.iter().any(|(_, c)| c.ends_with(":gone/eth0")));
    assert_eq!(s.veths("egress6").len(), 2);

    // GC with "kept" valid: "stale" goes from the links, the set and the store.
    for reply in chain.each(&s.node, "GC", &[("kept", "eth0")]) {
        reply.ok();
    }
    let elems = s.node.nft_elements(SET);
    assert_eq!(elems.len(), 1, "{elems:?}");
    assert!(elems[0].1.ends_with(":kept/eth0"));
    assert_eq!(s.veths("egress6").len(), 1);
    assert_eq!(s.reservations().len(), 2, "kept's IPv4 and IPv6 addresses");
    for reply in chain.each(&s.node, "STATUS", &[]) {
        reply.ok();
    }
    assert_eq!(s.outside.peer_of(&kept, "2001:db8::2"), Some(ip("2001:db8::1")));
    chain.del(&s.node, "kept", kept.path(), Some(&r_kept));
    s.assert_clean();
}

/// egress-v6's own config from the shipped conflist, at 1.0.0, with the test's store.
fn egress_conf(s: &Site, extra: Value) -> Value {
    let mut c = s.chain("1.0.0").config(1, None);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// A prevResult as ptp returns it for an IPv4 pod.
fn v4_prev(pod: &Netns, address: &str) -> Value {
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
    // The primary interface a main plugin would have made, to see that its IPv6 stays on.
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    let before = pod.settled_state();
    let conf = egress_conf(&s, json!({}));
    let add = |conf: &[u8]| Call::new("egress-v6", "ADD", "p1", pod.path()).run(&s.node, conf);

    assert!(add(&serde_json::to_vec(&conf).unwrap()).err(7).contains("prevResult"));
    let dual = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}, {"address": "fd90::5/64"}]});
    assert!(add(&with_prev_result(&conf, &dual)).err(7).contains("IPv4-only"));
    for (extra, code) in [
        (json!({"nodeIP": "192.0.2.1"}), 7),
        (json!({"nodeIP": "fe80::1"}), 7),
        (json!({"randomizeSNAT": "sometimes"}), 7),
        (json!({"ifName": "eth0"}), 7),
        (json!({"vethPrefix": "much-too-long"}), 7),
        (json!({"mtu": 1000}), 7),
        (json!({"mtu": [1]}), 6),
    ] {
        add(&with_prev_result(&egress_conf(&s, extra.clone()), &v4_prev(&pod, "10.91.0.5/16"))).err(code);
    }
    // IPAM giving no IPv6 address: rolled back.
    let v4_ipam = egress_conf(
        &s,
        json!({"ipam": {"type": "host-local", "dataDir": format!("{}/v6", s.data.str()),
        "ranges": [[{"subnet": "10.99.0.0/24"}]]}}),
    );
    assert!(add(&with_prev_result(&v4_ipam, &v4_prev(&pod, "10.91.0.5/16"))).err(7).contains("not an IPv6"));
    // No nodeIP and no IPv6 default route to take it from: try again later; nothing was allocated.
    s.node.ip(&["-6", "route", "del", "default"]);
    assert!(add(&with_prev_result(&conf, &v4_prev(&pod, "10.91.0.5/16"))).err(11).contains("default route"));
    // nftables refusing the batch (a set of the same name with another type) undoes the veth and IPAM.
    s.node.nft(&["add", "table", "inet", "cni_chain"]);
    s.node.nft(&["add", "set", "inet", "cni_chain", SET, "{ type ipv4_addr; }"]);
    let pinned = egress_conf(&s, json!({"nodeIP": "2001:db8::1"}));
    add(&with_prev_result(&pinned, &v4_prev(&pod, "10.91.0.5/16"))).err(108);
    s.node.nft(&["delete", "table", "inet", "cni_chain"]);
    // The primary interface missing from the pod: its IPv6 cannot be switched off, the rest is undone.
    let wrong_if = Call::new("egress-v6", "ADD", "p1", pod.path()).ifname("net1");
    let failed = wrong_if.run(&s.node, &with_prev_result(&pinned, &v4_prev(&pod, "10.91.0.5/16")));
    assert!(failed.err(102).contains("net1/disable_ipv6"), "{failed:?}");
    assert_eq!(pod.link("v6if0"), None);
    integration::assert_same_state(&before, &pod.settled_state(), "the pod after refused ADDs");
    s.assert_clean();

    // Disabled: prevResult passes through untouched, nothing is made, DEL is fine.
    let off = egress_conf(&s, json!({"enabled": "false"}));
    let prev = v4_prev(&pod, "10.91.0.5/16");
    let out = add(&with_prev_result(&off, &prev)).ok();
    assert_eq!(out["ips"], prev["ips"]);
    assert_eq!(out["interfaces"], prev["interfaces"]);
    Call::new("egress-v6", "DEL", "p1", pod.path()).run(&s.node, &serde_json::to_vec(&off).unwrap()).ok();
    s.assert_clean();
    // GC without attachments is fine on an empty node.
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    Call::new("egress-v6", "GC", "", "").run(&s.node, &with_valid_attachments(&gc, &[])).ok();
}

#[test]
fn after_the_reference_ptp() {
    let s = site();
    let mut chain = s.chain("1.0.0");
    chain.list["plugins"][0]["type"] = json!(format!("{}/ptp", integration::REFERENCE_DIR));
    let pod = Netns::new();
    let r = chain.add(&s.node, "p1", pod.path());
    assert_eq!(r["interfaces"][3]["name"], "v6if0", "{r}");
    assert_eq!(s.outside.peer_of(&pod, "2001:db8::2"), Some(ip("2001:db8::1")));
    assert_eq!(all_ipv6(&pod, "eth0"), Vec::<String>::new());
    for reply in chain.check(&s.node, "p1", pod.path(), &r) {
        reply.ok();
    }
    chain.del(&s.node, "p1", pod.path(), Some(&r));
    assert_eq!(s.veths("egress6"), Vec::<String>::new());
    assert!(!s.node.nft(&["list", "tables"]).contains("cni_chain"));
    assert_eq!(s.reservations(), Vec::<String>::new());
}
