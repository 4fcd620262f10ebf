//! policy-route after ptp on a node with two uplinks (seeds 000 and 004): eth0 to outside host 1 carries the
//! main table's default route, eth1 to outside host 2 is the secondary uplink whose table (101) pod traffic
//! uses. Pods get addresses only outside host 2 routes back. Real TCP shows which way traffic goes; `ip rule`,
//! `ip route`, nft and sysctl show what is left.

use integration::runtimes::node_with_two_uplinks;
use integration::{concurrently, Call, Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::Duration;

/// Beyond outside host 2: reachable only through it.
const BEYOND_V4: &str = "203.0.113.9";
const BEYOND_V6: &str = "2001:db8:99::9";
const NODE_PRIMARY: &str = "192.0.2.1";

struct Site {
    node: Netns,
    outside1: Netns,
    outside2: Netns,
    data: TempDir,
}

impl Site {
    /// The node the shipped policy-route conflist expects (`runtimes::node_with_two_uplinks`).
    fn new() -> Site {
        let (node, outside1, outside2) = node_with_two_uplinks();
        Site { node, outside1, outside2, data: TempDir::new("policy-route") }
    }

    /// ptp (dual stack) then policy-route with `policy` (merged over table 101 via eth1, both gateways).
    fn chain(&self, policy: Value) -> Chain {
        let mut route = json!({"type": "policy-route", "table": 101, "uplink": "eth1", "gateway": "198.51.100.1",
            "gateway6": "2001:db8:51::1", "dataDir": self.data.path().join("records")});
        for (k, v) in policy.as_object().unwrap() {
            route[k] = v.clone();
        }
        Chain::new(json!({"cniVersion": "1.1.0", "name": "pr", "plugins": [
            {"type": "ptp", "ipam": {"type": "host-local", "dataDir": self.data.path().join("ipam"),
                "ranges": [[{"subnet": "10.92.0.0/24"}], [{"subnet": "fd92::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
            route
        ]}))
    }

    /// A second network "other" on the node (IPv4 only, addresses from .200 up) with primary `primary`.
    fn other_network(&self, primary: &str) -> Chain {
        let mut other = self.chain(json!({"primary": {"interface": primary}}));
        other.list["name"] = json!("other");
        let range = json!([[{"subnet": "10.92.0.0/24", "rangeStart": "10.92.0.200"}]]);
        other.overrides.push((0, "ipam.ranges".into(), range));
        other.overrides.push((0, "ipam.routes".into(), json!([{"dst": "0.0.0.0/0"}])));
        other
    }

    fn ptp_only(&self) -> Chain {
        let mut chain = self.chain(json!({}));
        chain.list["plugins"].as_array_mut().unwrap().truncate(1);
        chain
    }

    /// `ip rule` lines of one family.
    fn rules(&self, family: &str) -> Vec<String> {
        self.node.ip(&[family, "rule"]).lines().map(str::to_string).collect()
    }

    /// Our rules (protocol 77) of both families.
    fn our_rules(&self) -> Vec<String> {
        ["-4", "-6"].iter().flat_map(|f| self.rules(f)).filter(|r| r.contains("proto 77")).collect()
    }

    /// Table 101's routes of both families (an IPv6 table with no route does not exist: no lines).
    fn table_101(&self) -> Vec<String> {
        ["-4", "-6"]
            .iter()
            .flat_map(|f| {
                let out = self.node.command("ip").args([f, "route", "show", "table", "101"]).output().unwrap();
                String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect::<Vec<_>>()
            })
            .collect()
    }

    fn rp_filter(&self) -> String {
        self.node.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/eth0/rp_filter").unwrap().trim().to_string())
    }

    fn sysctl(&self, key: &'static str, value: &'static str) {
        self.node.run(move || std::fs::write(format!("/proc/sys/{key}"), value).unwrap());
    }

    /// Nothing of policy-route's is left on the node.
    fn assert_nothing_of_ours(&self) {
        assert_eq!(self.our_rules(), Vec::<String>::new(), "rules of ours left");
        assert!(
            !self.table_101().iter().any(|r| r.contains("proto 77")),
            "routes of ours left: {:?}",
            self.table_101()
        );
        assert!(!self.node.has_nft_table("cni_chain_policy_route"), "{}", self.node.nft(&["list", "ruleset"]));
        let records = self.data.path().join("records/policy-route/attachments/pr");
        assert_eq!(integration::file_names(&records), Vec::<String>::new(), "records left");
    }
}

/// The first address of `family` in a result.
fn address(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap().split('/').next().unwrap().to_string())
        .find(|a| a.parse::<IpAddr>().unwrap().is_ipv6() == v6)
        .unwrap()
}

/// The address outside host 2 sees when the pod connects beyond it, or None.
fn seen_beyond(site: &Site, pod: &Netns, v6: bool) -> Option<IpAddr> {
    let target: IpAddr = if v6 { BEYOND_V6 } else { BEYOND_V4 }.parse().unwrap();
    site.outside2.source_of(0, |port| {
        let addr = std::net::SocketAddr::new(target, port);
        pod.run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
    })
}

#[test]
fn pod_traffic_leaves_through_the_secondary_uplink_with_the_pods_own_address() {
    let site = Site::new();
    let pod = Netns::new();
    let without = site.ptp_only().add(&site.node, "c0", pod.path());
    assert_eq!(seen_beyond(&site, &pod, false), None, "without policy-route the main table's default route is used");
    site.ptp_only().del(&site.node, "c0", pod.path(), Some(&without));

    let chain = site.chain(json!({}));
    let result = chain.add(&site.node, "c1", pod.path());
    let (v4, v6) = (address(&result, false), address(&result, true));
    assert_eq!(seen_beyond(&site, &pod, false), Some(v4.parse().unwrap()), "outside host 2 sees the pod");
    assert_eq!(seen_beyond(&site, &pod, true), Some(v6.parse().unwrap()));
    for reply in chain.check(&site.node, "c1", pod.path(), &result) {
        reply.ok();
    }

    // Seed 004's picture: the pod's rules, and the table's gateway and default route.
    let rules4 = site.rules("-4").join("\n");
    assert!(rules4.contains(&format!("512:\tfrom all to {v4} lookup main proto 77")), "{rules4}");
    assert!(rules4.contains(&format!("1536:\tfrom {v4} lookup 101 proto 77")), "{rules4}");
    let rules6 = site.rules("-6").join("\n");
    assert!(rules6.contains(&format!("1536:\tfrom {v6} lookup 101 proto 77")), "{rules6}");
    let table = site.table_101().join("\n");
    assert!(table.contains("default via 198.51.100.1 dev eth1 proto 77"), "{table}");
    assert!(table.contains("198.51.100.1 dev eth1 proto 77 scope link"), "{table}");
    assert!(table.contains("default via 2001:db8:51::1 dev eth1 proto 77"), "{table}");

    chain.del(&site.node, "c1", pod.path(), Some(&result));
    site.assert_nothing_of_ours();
    chain.del(&site.node, "c1", pod.path(), Some(&result));
}

#[test]
fn a_nodeport_on_the_primary_uplink_answers_through_it_with_strict_rp_filter() {
    let site = Site::new();
    site.sysctl("net/ipv4/conf/all/rp_filter", "1");
    site.sysctl("net/ipv4/conf/eth0/rp_filter", "1");
    let pod = Netns::new();
    let nodeport = |chain: &Chain, id: &str| {
        let result = chain.add(&site.node, id, pod.path());
        let pod_v4 = address(&result, false);
        // kube-proxy's part, done by the test: the node's eth0 address:30080 is DNATed to the pod's 8080.
        site.node.nft(&["add", "table", "ip", "kube"]);
        site.node.nft(&["add", "chain", "ip", "kube", "pre", "{ type nat hook prerouting priority dstnat; }"]);
        site.node.nft(&[
            "add",
            "rule",
            "ip",
            "kube",
            "pre",
            "ip",
            "daddr",
            NODE_PRIMARY,
            "tcp",
            "dport",
            "30080",
            "dnat",
            "to",
            &format!("{pod_v4}:8080"),
        ]);
        let seen = pod.source_of(8080, |_| {
            let target: std::net::SocketAddr = format!("{NODE_PRIMARY}:30080").parse().unwrap();
            site.outside1.run(move || std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok())
        });
        site.node.nft(&["delete", "table", "ip", "kube"]);
        chain.del(&site.node, id, pod.path(), Some(&result));
        seen
    };

    // Without `primary`, even with loose filtering the reply follows the pod's rule out of eth1.
    site.sysctl("net/ipv4/conf/eth0/rp_filter", "2");
    assert_eq!(nodeport(&site.chain(json!({})), "c1"), None, "the reply left through eth1");
    site.sysctl("net/ipv4/conf/eth0/rp_filter", "1");

    let with_primary = site.chain(json!({"primary": {"interface": "eth0", "mark": "0x80"}}));
    assert_eq!(nodeport(&with_primary, "c2"), Some("192.0.2.2".parse().unwrap()), "the client's own address");
    site.assert_nothing_of_ours();
    assert_eq!(site.rp_filter(), "1", "strict filtering is back after the last attachment");
}

#[test]
fn fifty_pods_share_the_node_wide_pieces_and_foreign_rules_and_routes_stay() {
    let site = Site::new();
    site.sysctl("net/ipv4/conf/eth0/rp_filter", "1");
    // Someone else's rules in the same priorities, and the node agent's own default route in table 101.
    site.node.ip(&["rule", "add", "from", "10.99.0.1", "lookup", "101", "pref", "1536"]);
    site.node.ip(&["rule", "add", "to", "10.99.0.1", "lookup", "main", "pref", "512"]);
    site.node.ip(&["rule", "add", "fwmark", "0x80/0x80", "lookup", "main", "pref", "1024"]);
    site.node.ip(&["route", "add", "default", "via", "198.51.100.1", "dev", "eth1", "table", "101"]);
    let foreign_rules = site.rules("-4");
    let chain = site.chain(json!({"primary": {"interface": "eth0", "mark": "0x80"}}));
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new()).collect();
    let results = std::sync::Mutex::new(vec![Value::Null; 50]);
    concurrently(50, 4, |i| {
        let result = chain.add(&site.node, &format!("c{i}"), pods[i].path());
        results.lock().unwrap()[i] = result;
    });
    let results = results.into_inner().unwrap();

    let rules = site.rules("-4");
    // The kernel may take the foreign fwmark rule for ours (then ADD made none): either way one of ours at most.
    let fwmark: Vec<&String> = rules.iter().filter(|r| r.starts_with("1024:")).collect();
    assert!((1..=2).contains(&fwmark.len()), "{fwmark:?}");
    assert!(fwmark.iter().filter(|r| r.contains("proto 77")).count() <= 1, "{fwmark:?}");
    assert_eq!(rules.iter().filter(|r| r.starts_with("1536:") && r.contains("proto 77")).count(), 50);
    assert_eq!(rules.iter().filter(|r| r.starts_with("512:") && r.contains("proto 77")).count(), 50);
    let nft = site.node.nft(&["list", "table", "inet", "cni_chain_policy_route"]);
    assert_eq!(nft.matches("comment \"cni-chain:policy-route").count(), 2, "{nft}");
    let table = site.table_101().join("\n");
    assert!(
        !table.contains("default via 198.51.100.1 dev eth1 proto 77"),
        "the agent's default route is used: {table}"
    );
    assert_eq!(site.rp_filter(), "2");
    for (i, pod) in pods.iter().enumerate() {
        if i % 10 == 0 {
            assert_eq!(seen_beyond(&site, pod, false), Some(address(&results[i], false).parse().unwrap()));
        }
    }

    concurrently(50, 4, |i| chain.del(&site.node, &format!("c{i}"), pods[i].path(), Some(&results[i])));
    site.assert_nothing_of_ours();
    assert_eq!(site.rules("-4"), foreign_rules, "someone else's rules stay as they were");
    assert!(
        site.table_101().iter().any(|r| r.starts_with("default via 198.51.100.1 dev eth1")),
        "the agent's route stays"
    );
    assert_eq!(site.rp_filter(), "1");
}

#[test]
fn del_without_prev_result_or_netns_and_gc_scoped_to_its_network_leave_nothing() {
    let site = Site::new();
    let chain = site.chain(json!({"primary": {"interface": "eth0"}}));
    let (p1, p2) = (Netns::new(), Netns::new());
    let r1 = chain.add(&site.node, "c1", p1.path());
    let r2 = chain.add(&site.node, "c2", p2.path());
    // Another network's attachment on the same node shares the node-wide pieces.
    let other = site.other_network("eth0");
    let p3 = Netns::new();
    let r3 = other.add(&site.node, "c3", p3.path());

    // DEL without prevResult and without netns: the record finds the rules.
    let policy = chain.config(1, None);
    Call::new("policy-route", "DEL", "c1", "").run(&site.node, &serde_json::to_vec(&policy).unwrap()).ok();
    Call::new("policy-route", "DEL", "c1", "").run(&site.node, &serde_json::to_vec(&policy).unwrap()).ok();
    assert!(
        !site.our_rules().iter().any(|r| r.contains(&format!(" {} ", address(&r1, false)))),
        "{:?}",
        site.our_rules()
    );
    chain.del(&site.node, "c1", p1.path(), Some(&r1));

    // GC of network "pr" with nothing valid removes c2's rules, not c3's of network "other".
    chain.gc(&site.node, &[]);
    let left = site.our_rules();
    assert!(!left.iter().any(|r| r.contains(&format!(" {} ", address(&r2, false)))), "{left:?}");
    assert!(left.iter().any(|r| r.contains(&format!(" {} ", address(&r3, false)))), "{left:?}");
    assert!(left.iter().any(|r| r.starts_with("1024:")), "the other network still uses the fwmark rule");
    for reply in other.check(&site.node, "c3", p3.path(), &r3) {
        reply.ok();
    }
    other.gc(&site.node, &[]);
    site.assert_nothing_of_ours();
    let ptp_only = site.ptp_only();
    ptp_only.del(&site.node, "c2", p2.path(), Some(&r2));
}

#[test]
fn check_fails_when_a_rule_or_the_primary_state_is_removed_behind_our_back() {
    let site = Site::new();
    let chain = site.chain(json!({"primary": {"interface": "eth0"}}));
    let pod = Netns::new();
    let result = chain.add(&site.node, "c1", pod.path());
    let check = || {
        let conf = serde_json::to_vec(&chain.config(1, Some(&result))).unwrap();
        Call::new("policy-route", "CHECK", "c1", pod.path()).run(&site.node, &conf)
    };
    check().ok();
    let v4 = address(&result, false);
    site.node.ip(&["rule", "del", "from", &v4, "lookup", "101", "pref", "1536"]);
    assert!(check().err(104).contains("is missing"));
    site.node.ip(&["rule", "add", "from", &v4, "lookup", "101", "pref", "1536", "proto", "77"]);
    check().ok();
    site.sysctl("net/ipv4/conf/eth0/rp_filter", "1");
    assert!(check().err(104).contains("rp_filter"));
    site.sysctl("net/ipv4/conf/eth0/rp_filter", "2");
    site.node.nft(&["delete", "table", "inet", "cni_chain_policy_route"]);
    assert!(check().err(104).contains("nftables"));
    // A second ADD of a live attachment is refused and changes nothing.
    let conf = serde_json::to_vec(&chain.config(1, Some(&result))).unwrap();
    let rules = site.our_rules();
    Call::new("policy-route", "ADD", "c1", pod.path()).run(&site.node, &conf).err(109);
    assert_eq!(site.our_rules(), rules);
    Call::new("policy-route", "STATUS", "", "")
        .run(&site.node, &serde_json::to_vec(&chain.config(1, None)).unwrap())
        .ok();
    chain.del(&site.node, "c1", pod.path(), Some(&result));
    site.assert_nothing_of_ours();
}

#[test]
fn every_spec_version_adds_and_deletes() {
    let site = Site::new();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let mut chain = site.chain(json!({}));
        chain.list["cniVersion"] = json!(version);
        let pod = Netns::new();
        let result = chain.add(&site.node, "c1", pod.path());
        assert_eq!(result["cniVersion"], version);
        assert_eq!(seen_beyond(&site, &pod, false), Some(address(&result, false).parse().unwrap()), "{version}");
        chain.del(&site.node, "c1", pod.path(), Some(&result));
        site.assert_nothing_of_ours();
    }
}

#[test]
fn a_kill_at_any_moment_of_add_then_del_and_gc_leave_nothing() {
    let site = Site::new();
    site.sysctl("net/ipv4/conf/eth0/rp_filter", "1");
    let chain = site.chain(json!({"primary": {"interface": "eth0"}}));
    let pod = Netns::new();
    let prev = site.ptp_only().add(&site.node, "c1", pod.path());
    let conf = serde_json::to_vec(&chain.config(1, Some(&prev))).unwrap();
    for delay_us in [0, 200, 500, 1000, 1500, 2000, 3000, 5000, 8000] {
        let mut child = Call::new("policy-route", "ADD", "c1", pod.path()).spawn_with(&site.node, &conf, |_| {});
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = child.kill();
        let _ = child.wait();
        let del = serde_json::to_vec(&chain.config(1, None)).unwrap();
        Call::new("policy-route", "DEL", "c1", "").run(&site.node, &del).ok();
        site.assert_nothing_of_ours();
        assert_eq!(site.rp_filter(), "1", "after a kill {delay_us}µs into ADD, DEL restored rp_filter");

        let mut child = Call::new("policy-route", "ADD", "c1", pod.path()).spawn_with(&site.node, &conf, |_| {});
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = child.kill();
        let _ = child.wait();
        chain.gc(&site.node, &[]);
        site.assert_nothing_of_ours();
        assert_eq!(site.rp_filter(), "1", "after a kill {delay_us}µs into ADD, GC restored rp_filter");
    }
    site.ptp_only().del(&site.node, "c1", pod.path(), Some(&prev));
}

#[test]
fn a_failed_add_leaves_nothing_and_keeps_what_an_earlier_add_made() {
    let site = Site::new();
    let chain = site.chain(json!({"primary": {"interface": "eth0"}}));
    let (p1, p2) = (Netns::new(), Netns::new());
    let r1 = chain.add(&site.node, "c1", p1.path());
    let before = site.our_rules();
    let nft_before = site.node.nft(&["list", "table", "inet", "cni_chain_policy_route"]);
    // Another network whose primary uplink does not exist: its ADD fails after its record was written.
    let other = site.other_network("eth9");
    let prev = other.add_first(1, &site.node, "c2", p2.path()).unwrap();
    let conf = serde_json::to_vec(&other.config(1, Some(&prev))).unwrap();
    let failed = Call::new("policy-route", "ADD", "c2", p2.path()).run(&site.node, &conf);
    assert!(!failed.success && failed.stdout.contains("eth9"), "{}", failed.stdout);
    assert_eq!(site.our_rules(), before, "the failed ADD left nothing and took nothing of c1's");
    assert_eq!(site.node.nft(&["list", "table", "inet", "cni_chain_policy_route"]), nft_before);
    let records = site.data.path().join("records/policy-route/attachments/other");
    assert_eq!(integration::file_names(&records), Vec::<String>::new(), "no record of the failed ADD");
    let del = serde_json::to_vec(&other.config(1, None)).unwrap();
    Call::new("policy-route", "DEL", "c2", "").run(&site.node, &del).ok();
    site.ptp_only().del(&site.node, "c2", p2.path(), Some(&prev));
    for reply in chain.check(&site.node, "c1", p1.path(), &r1) {
        reply.ok();
    }
    chain.del(&site.node, "c1", p1.path(), Some(&r1));
    site.assert_nothing_of_ours();
}

#[test]
fn status_creates_nothing_and_says_when_rules_and_nftables_cannot_be_changed_here() {
    let site = Site::new();
    let conf = serde_json::to_vec(&site.chain(json!({})).config(1, None)).unwrap();
    Call::new("policy-route", "STATUS", "", "").run(&site.node, &conf).ok();
    assert!(!site.data.path().join("records").exists(), "STATUS created nothing");
    // In a user namespace of its own the plugin has no CAP_NET_ADMIN over the node's netns.
    let reply = Call::new("policy-route", "STATUS", "", "").run_with(&site.node, &conf, |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: unshare is a plain syscall between fork and exec.
        unsafe {
            cmd.pre_exec(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(std::io::Error::from));
        }
    });
    assert!(reply.err(50).contains("CAP_NET_ADMIN"));
}
