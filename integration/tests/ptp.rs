//! ptp against the real kernel: each test makes a node netns (the plugin runs there) and pod netns.

use integration::{with_prev_result, with_valid_attachments, Call, Netns, TempDir};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;

/// A ptp config with our host-local (first in CNI_PATH) storing into `data`.
fn config(version: &str, data: &TempDir, ranges: Value, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": version,
        "name": "testnet",
        "type": "ptp",
        "ipam": {"type": "host-local", "dataDir": data.str(), "ranges": ranges, "routes": [{"dst": "0.0.0.0/0"}]},
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn v4_ranges(subnet: &str) -> Value {
    json!([[{"subnet": subnet}]])
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn add(node: &Netns, pod: &Netns, id: &str, conf: &Value) -> Value {
    Call::new("ptp", "ADD", id, pod.path()).run(node, &bytes(conf)).ok()
}

fn del(node: &Netns, netns: &str, id: &str, conf: &[u8]) {
    Call::new("ptp", "DEL", id, netns).run(node, conf).ok();
}

/// The host veth in `node` that the result names.
fn host_veth(result: &Value) -> String {
    result["interfaces"][0]["name"].as_str().unwrap().to_string()
}

#[test]
fn add_check_del_at_every_version_before_1_1() {
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let (node, pod, data) = (Netns::new(), Netns::new(), TempDir::new("ipam"));
        let conf = config(version, &data, v4_ranges("10.10.0.0/24"), json!({"mtu": 1400}));
        let r = add(&node, &pod, "c1", &conf);

        assert_eq!(r["cniVersion"], version);
        assert_eq!(r["ips"][0]["address"], "10.10.0.2/24");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["ips"][0].get("version").is_some(), version < "1.0.0", "{version}: {r}");
        assert_eq!(r["interfaces"][1]["name"], "eth0");
        assert_eq!(r["interfaces"][1]["sandbox"], pod.path());
        assert!(r["interfaces"][0].get("sandbox").is_none());

        // Pod side: seed 001's point-to-point routing, MAC as reported, MTU.
        let eth0 = pod.link("eth0").expect("eth0 in pod");
        assert_eq!(eth0["mtu"], 1400);
        assert_eq!(eth0["address"], r["interfaces"][1]["mac"]);
        assert_eq!(pod.addresses("eth0"), ["10.10.0.2/24"]);
        let routes = pod.routes("-4");
        for want in
            ["default via 10.10.0.1 dev eth0", "10.10.0.0/24 via 10.10.0.1 dev eth0", "10.10.0.1 dev eth0 scope link"]
        {
            assert!(routes.contains(&want.to_string()), "{version}: missing {want:?} in {routes:?}");
        }
        assert!(!routes.contains(&"10.10.0.0/24 dev eth0 scope link".to_string()), "connected route must be gone");

        // Node side: gateway on the host veth, host route to the pod, forwarding on.
        let veth = host_veth(&r);
        assert_eq!(node.link(&veth).unwrap()["mtu"], 1400);
        assert_eq!(node.addresses(&veth), ["10.10.0.1/32"]);
        assert!(node.routes("-4").contains(&format!("10.10.0.2 dev {veth} scope link")));
        assert!(pod.ping("10.10.0.1"), "{version}: pod cannot reach its gateway");

        if version >= "0.4.0" {
            Call::new("ptp", "CHECK", "c1", pod.path()).run(&node, &with_prev_result(&conf, &r)).ok();
        } else {
            Call::new("ptp", "CHECK", "c1", pod.path()).run(&node, &with_prev_result(&conf, &r)).err(1);
        }

        let del_conf = with_prev_result(&conf, &r);
        del(&node, pod.path(), "c1", &del_conf);
        assert!(node.veths().is_empty(), "{version}: veth left after DEL");
        assert!(pod.link("eth0").is_none());
        assert_eq!(data.files("testnet").iter().filter(|f| f.starts_with("10.")).count(), 0, "address not released");
        del(&node, pod.path(), "c1", &del_conf);
    }
}

#[test]
fn dual_stack_pods_reach_each_other_through_the_node() {
    let (node, pod1, pod2, data) = (Netns::new(), Netns::new(), Netns::new(), TempDir::new("ipam"));
    let ranges = json!([[{"subnet": "10.11.0.0/24"}], [{"subnet": "fd11::/64"}]]);
    let mut conf = config("1.0.0", &data, ranges, json!({}));
    conf["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
    let r1 = add(&node, &pod1, "p1", &conf);
    let r2 = add(&node, &pod2, "p2", &conf);
    assert_eq!(r1["ips"].as_array().unwrap().len(), 2);
    assert!(pod1.routes("-6").contains(&"default via fd11::1 dev eth0".to_string()), "{:?}", pod1.routes("-6"));
    assert!(pod1.routes("-6").contains(&"fd11::/64 via fd11::1 dev eth0".to_string()));
    let ip2_v4 = r2["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    let ip2_v6 = r2["ips"][1]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert!(pod1.ping(&ip2_v4), "pod1 -> pod2 over IPv4");
    assert!(pod1.ping(&ip2_v6), "pod1 -> pod2 over IPv6 (no DAD wait)");
    assert!(pod2.ping("fd11::1"), "pod2 -> node over IPv6");
    assert_eq!(node.sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", host_veth(&r1))), "0");
    del(&node, pod1.path(), "p1", &bytes(&conf));
    del(&node, pod2.path(), "p2", &bytes(&conf));
    assert!(node.veths().is_empty());
}

/// The node's end of an IPv4-only attachment has no IPv6: no link-local address and no route of its own in the
/// node's IPv6 table, which the kernel walks on every link event; the pod's end keeps the kernel's default.
#[test]
fn ipv4_only_pods_add_nothing_to_the_node_ipv6_table() {
    let (node, pod, data) = (Netns::new(), Netns::new(), TempDir::new("ipam"));
    let conf = config("1.0.0", &data, v4_ranges("10.12.0.0/24"), json!({}));
    let r = add(&node, &pod, "c1", &conf);
    let host = host_veth(&r);
    assert_eq!(node.sysctl(&format!("net/ipv6/conf/{host}/disable_ipv6")), "1");
    assert_eq!(node.ip(&["-6", "addr", "show", "dev", &host]).trim(), "", "no IPv6 address on {host}");
    let v6_routes = node.ip(&["-6", "route", "show", "table", "all", "dev", &host]);
    assert_eq!(v6_routes.trim(), "", "no IPv6 route through {host}");
    assert_eq!(pod.sysctl("net/ipv6/conf/eth0/disable_ipv6"), "0");
    assert!(pod.ping("10.12.0.1"), "the pod reaches the node over IPv4");
    del(&node, pod.path(), "c1", &bytes(&conf));
    assert!(node.veths().is_empty());
}

#[test]
fn link_group_by_number_and_check_sees_it() {
    let (node, pod, data) = (Netns::new(), Netns::new(), TempDir::new("ipam"));
    let conf = config("1.0.0", &data, v4_ranges("10.12.0.0/24"), json!({"linkGroup": 8}));
    let r = add(&node, &pod, "g1", &conf);
    assert_eq!(node.link(&host_veth(&r)).unwrap()["group"], "8");
    Call::new("ptp", "CHECK", "g1", pod.path()).run(&node, &with_prev_result(&conf, &r)).ok();
    // The group changed behind our back: CHECK says so.
    node.ip(&["link", "set", &host_veth(&r), "group", "3"]);
    let msg = Call::new("ptp", "CHECK", "g1", pod.path()).run(&node, &with_prev_result(&conf, &r)).err(104);
    assert!(msg.contains("group"), "{msg}");
    del(&node, pod.path(), "g1", &bytes(&conf));
}

#[test]
fn link_group_by_name_from_iproute2_table() {
    let (node, pod, data) = (Netns::new(), Netns::new(), TempDir::new("ipam"));
    // The plugin reads /etc/iproute2/group; give it ours in a private mount namespace of its own.
    let table = data.path().join("group");
    std::fs::write(&table, "0 default\n42 podnet\n").unwrap();
    let target =
        ["/etc/iproute2/group", "/usr/share/iproute2/group"].into_iter().find(|p| std::path::Path::new(p).exists());
    let target = target.expect("iproute2's group table").to_string();
    let conf = config("1.0.0", &data, v4_ranges("10.13.0.0/24"), json!({"linkGroup": "podnet"}));
    let reply = Call::new("ptp", "ADD", "n1", pod.path()).run_with(&node, &bytes(&conf), |cmd| {
        use std::os::unix::process::CommandExt;
        let (table, target) = (table.clone(), target.clone());
        // SAFETY: unshare and mount are plain syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                use nix::mount::{mount, MsFlags};
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)?;
                mount(Some(&table), target.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
                Ok(())
            });
        }
    });
    let r = reply.ok();
    assert_eq!(node.link(&host_veth(&r)).unwrap()["group"], "42");
    del(&node, pod.path(), "n1", &bytes(&conf));
    // Outside that mount namespace the name is unknown: a config error, nothing made.
    let msg = Call::new("ptp", "ADD", "n2", pod.path()).run(&node, &bytes(&conf)).err(7);
    assert!(msg.contains("podnet"), "{msg}");
    assert!(node.veths().is_empty());
}

#[test]
fn check_reports_a_missing_route_and_a_missing_interface() {
    let (node, pod, data) = (Netns::new(), Netns::new(), TempDir::new("ipam"));
    let conf = config("0.4.0", &data, v4_ranges("10.14.0.0/24"), json!({}));
    let r = add(&node, &pod, "k1", &conf);
    pod.ip(&["route", "del", "default"]);
    let msg = Call::new("ptp", "CHECK", "k1", pod.path()).run(&node, &with_prev_result(&conf, &r)).err(104);
    assert!(msg.contains("0.0.0.0/0"), "{msg}");
    pod.ip(&["link", "del", "eth0"]);
    let msg = Call::new("ptp", "CHECK", "k1", pod.path()).run(&node, &with_prev_result(&conf, &r)).err(104);
    assert!(msg.contains("eth0"), "{msg}");
    // CHECK without prevResult is a config error.
    Call::new("ptp", "CHECK", "k1", pod.path()).run(&node, &bytes(&conf)).err(7);
    del(&node, pod.path(), "k1", &bytes(&conf));
}

#[test]
fn del_after_the_pod_netns_is_gone_and_with_no_netns() {
    let (node, data) = (Netns::new(), TempDir::new("ipam"));
    let conf = config("1.0.0", &data, v4_ranges("10.15.0.0/24"), json!({}));
    let pod = Netns::new();
    let pod_path = pod.path().to_string();
    let r = add(&node, &pod, "gone", &conf);
    drop(pod);
    // containerd's second DEL: no netns and no prevResult; the first with a dead path.
    del(&node, &pod_path, "gone", &with_prev_result(&conf, &r));
    del(&node, "", "gone", &bytes(&conf));
    assert!(node.veths().is_empty());
    assert!(!data.files("testnet").iter().any(|f| f.starts_with("10.")));
}

#[test]
fn failed_add_leaves_no_veth_and_no_address() {
    let (node, pod, data) = (Netns::new(), Netns::new(), TempDir::new("ipam"));
    let conf = config("1.0.0", &data, v4_ranges("10.16.0.0/24"), json!({}));
    // The pod already has an eth0.
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "other0"]);
    let msg = Call::new("ptp", "ADD", "f1", pod.path()).run(&node, &bytes(&conf)).err(100);
    assert!(msg.contains("eth0"), "{msg}");
    assert!(node.veths().is_empty());
    assert!(
        !data.files("testnet").iter().any(|f| f.starts_with("10.")),
        "IPAM not rolled back: {:?}",
        data.files("testnet")
    );

    // IPAM fails (range exhausted: a /30 has one address besides the gateway).
    let small = config("1.0.0", &data, v4_ranges("10.17.0.0/30"), json!({}));
    let pod2 = Netns::new();
    add(&node, &pod2, "f2", &small);
    let pod3 = Netns::new();
    let msg = Call::new("ptp", "ADD", "f3", pod3.path()).run(&node, &bytes(&small)).err(106);
    assert!(msg.contains("10.17.0.0/30"), "{msg}");
    assert_eq!(node.veths().len(), 1, "only f2's veth");
    assert!(pod3.link("eth0").is_none());

    // IPAM plugin not found.
    let mut missing = small.clone();
    missing["ipam"]["type"] = json!("no-such-ipam");
    let msg = Call::new("ptp", "ADD", "f4", pod3.path()).run(&node, &bytes(&missing)).err(7);
    assert!(msg.contains("no-such-ipam"), "{msg}");
    del(&node, pod2.path(), "f2", &bytes(&small));
    assert!(node.veths().is_empty());
}

#[test]
fn bad_input_gets_the_right_code_and_changes_nothing() {
    let (node, pod, data) = (Netns::new(), Netns::new(), TempDir::new("ipam"));
    let conf = bytes(&config("1.0.0", &data, v4_ranges("10.18.0.0/24"), json!({})));
    let base = || Call::new("ptp", "ADD", "bad", pod.path());
    base().run(&node, b"{not json").err(6);
    base().run(&node, br#"{"cniVersion":"1.0.0","name":"x","type":"ptp","mtu":"big"}"#).err(6);
    base().run(&node, br#"{"cniVersion":"1.0.0","name":"x","type":"ptp","mtu":[1]}"#).err(6);
    base().run(&node, br#"{"cniVersion":"0.2.0","name":"x","type":"ptp"}"#).err(1);
    base().run(&node, br#"{"cniVersion":"7.0.0","name":"x","type":"ptp"}"#).err(1);
    base()
        .run(&node, br#"{"cniVersion":"1.0.0","name":"x","type":"ptp","ipMasq":true,"ipMasqBackend":"iptables","ipam":{"type":"host-local"}}"#)
        .err(2);
    base().ifname("sixteen-chars-xx").run(&node, &conf).err(4);
    base().ifname("eth/0").run(&node, &conf).err(4);
    Call::new("ptp", "ADD", "a/b", pod.path()).run(&node, &conf).err(4);
    Call::new("ptp", "ADD", "..", pod.path()).run(&node, &conf).err(4);
    base().env("CNI_COMMAND", None).run(&node, &conf).err(4);
    base().env("CNI_PATH", None).run(&node, &conf).err(4);
    base().env("CNI_NETNS", None).run(&node, &conf).err(4);
    // A netns path that is a regular file is refused, never entered.
    let file = data.path().join("not-a-netns");
    std::fs::write(&file, "").unwrap();
    let msg = Call::new("ptp", "ADD", "bad", file.to_str().unwrap()).run(&node, &conf).err(4);
    assert!(msg.contains("not a network namespace"), "{msg}");
    Call::new("ptp", "ADD", "bad", "/nonexistent/netns").run(&node, &conf).err(3);
    // A bare IP where prevResult needs a CIDR.
    let mut c: Value = serde_json::from_slice(&conf).unwrap();
    c["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.18.0.2"}]});
    Call::new("ptp", "CHECK", "bad", pod.path()).run(&node, &bytes(&c)).err(6);
    // A huge config is refused before parsing.
    let huge = vec![b' '; 5 << 20];
    base().run(&node, &huge).err(6);

    assert!(node.veths().is_empty());
    assert!(pod.link("eth0").is_none());
    assert!(data.files("testnet").iter().all(|f| !f.starts_with("10.")));
}

#[test]
fn version_lists_every_supported_version() {
    let node = Netns::new();
    let v = Call::new("ptp", "VERSION", "", "dummy").run(&node, br#"{"cniVersion":"1.0.0"}"#).ok();
    assert_eq!(v["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
    // Podman sends VERSION with an empty stdin too.
    Call::new("ptp", "VERSION", "", "dummy").run(&node, b"").ok();
}

/// An IPAM plugin that speaks 1.1.0 (the reference host-local here stops at 1.0.0): ADD returns the
/// result in $TEST_IPAM_RESULT, every other verb succeeds. It only hands out what the test says.
fn fixed_ipam(dir: &TempDir) -> String {
    let path = dir.path().join("fixed-ipam");
    std::fs::write(
        &path,
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && printf '%s' \"$TEST_IPAM_RESULT\"\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", dir.str(), integration::cni_path())
}

#[test]
fn version_1_1_results_status_and_gc_of_stale_veths() {
    let (node, dir) = (Netns::new(), TempDir::new("ipam"));
    let path = fixed_ipam(&dir);
    let conf = json!({"cniVersion": "1.1.0", "name": "gcnet", "type": "ptp", "ipam": {"type": "fixed-ipam"}});
    let pods = [Netns::new(), Netns::new()];
    let mut results = Vec::new();
    for (i, (pod, id)) in pods.iter().zip(["keep", "stale"]).enumerate() {
        let ipam = json!({"cniVersion": "1.1.0", "ips": [{"address": format!("10.19.0.{}/24", i + 2), "gateway": "10.19.0.1"}]});
        let r = Call::new("ptp", "ADD", id, pod.path())
            .env("CNI_PATH", Some(&path))
            .env("TEST_IPAM_RESULT", Some(&ipam.to_string()))
            .run(&node, &bytes(&conf))
            .ok();
        assert_eq!(r["cniVersion"], "1.1.0");
        assert!(r["ips"][0].get("version").is_none());
        results.push(r);
    }
    Call::new("ptp", "CHECK", "keep", pods[0].path())
        .env("CNI_PATH", Some(&path))
        .run(&node, &with_prev_result(&conf, &results[0]))
        .ok();
    Call::new("ptp", "STATUS", "", "").env("CNI_PATH", Some(&path)).run(&node, &bytes(&conf)).ok();

    // Another network's veth is not ours to collect.
    let mut other = conf.clone();
    other["name"] = json!("othernet");
    let pod3 = Netns::new();
    let ipam = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.20.0.2/24", "gateway": "10.20.0.1"}]});
    Call::new("ptp", "ADD", "other", pod3.path())
        .env("CNI_PATH", Some(&path))
        .env("TEST_IPAM_RESULT", Some(&ipam.to_string()))
        .run(&node, &bytes(&other))
        .ok();

    Call::new("ptp", "GC", "", "")
        .env("CNI_PATH", Some(&path))
        .run(&node, &with_valid_attachments(&conf, &[("keep", "eth0")]))
        .ok();
    let left = node.veths();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&host_veth(&results[0])));
    assert!(!left.contains(&host_veth(&results[1])), "stale veth survived GC");
    assert!(pods[1].link("eth0").is_none());

    // GC and STATUS need 1.1.0.
    let mut old = conf.clone();
    old["cniVersion"] = json!("1.0.0");
    Call::new("ptp", "GC", "", "").env("CNI_PATH", Some(&path)).run(&node, &bytes(&old)).err(1);
    Call::new("ptp", "STATUS", "", "").env("CNI_PATH", Some(&path)).run(&node, &bytes(&old)).err(1);
}

#[test]
fn shipped_conflist_wires_a_pod() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conflists/10-cni-chain-ptp.conflist");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // What a runtime does: each plugin gets the list's cniVersion and name.
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    let data = TempDir::new("ipam");
    conf["ipam"]["dataDir"] = json!(data.str());
    let (node, pod) = (Netns::new(), Netns::new());
    let r = add(&node, &pod, "cl", &conf);
    assert_eq!(node.link(&host_veth(&r)).unwrap()["group"], "8");
    assert!(pod.ping(r["ips"][0]["gateway"].as_str().unwrap()));
    del(&node, pod.path(), "cl", &with_prev_result(&conf, &r));
    assert!(node.veths().is_empty());
}
