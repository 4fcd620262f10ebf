//! What operators meet in the field: two networks sharing a node's group rule, a repeated ADD, a DEL whose
//! config no longer reads, and ptp's ipMasq chained with the masquerade plugin. Real kernel, real traffic.

use integration::runtimes::node_with_uplink;
use integration::{concurrently, reservations_in, Call, Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;

/// The shipped masquerade chain as network `name` with its own IPv4/IPv6 ranges and store, at 1.1.0 (GC).
fn masq_network(name: &str, v4: &str, v6: &str, stores: &Path) -> Chain {
    let mut chain = Chain::shipped_in("20-cni-chain-masquerade.conflist", stores);
    chain.list["name"] = json!(name);
    chain.list["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": v4}], [{"subnet": v6}]]);
    chain.list["plugins"][0]["ipam"]["dataDir"] = json!(stores.join(name));
    chain
}

fn all_ok(replies: Vec<integration::Reply>) {
    for r in replies {
        r.ok();
    }
}

/// Point 1: GC of network B with no valid attachment leaves network A's pods their shared group rule; the
/// last DEL of any network removes the rule and our table, with no GC.
#[test]
fn two_networks_share_the_group_rule_until_the_last_pod_of_either_goes() {
    let (node, outside) = node_with_uplink();
    let stores = TempDir::new("field-shared");
    let a = masq_network("net-a", "10.81.0.0/24", "fd81::/64", stores.path());
    let b = masq_network("net-b", "10.82.0.0/24", "fd82::/64", stores.path());
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new()).collect();
    let ra1 = a.add(&node, "a1", pods[0].path());
    let ra2 = a.add(&node, "a2", pods[1].path());
    let rb1 = b.add(&node, "b1", pods[2].path());
    assert_eq!(node.our_nft_rules(), 1, "one rule for both networks");

    // The runtime of network B forgot all its pods: B's GC must not take A's egress away.
    b.gc(&node, &[]);
    assert_eq!(outside.peer_of(&pods[0], "192.0.2.2"), Some("192.0.2.1".parse::<IpAddr>().unwrap()));
    assert_eq!(outside.peer_of(&pods[1], "2001:db8::2"), Some("2001:db8::1".parse::<IpAddr>().unwrap()));
    all_ok(a.check(&node, "a1", pods[0].path(), &ra1));
    all_ok(a.check(&node, "a2", pods[1].path(), &ra2));

    // The pods go one by one; the rule stays while any is left, and the last DEL takes the table.
    b.del(&node, "b1", pods[2].path(), Some(&rb1));
    a.del(&node, "a1", pods[0].path(), Some(&ra1));
    assert_eq!(node.our_nft_rules(), 1, "a2 still uses the rule");
    assert_eq!(outside.peer_of(&pods[1], "192.0.2.2"), Some("192.0.2.1".parse::<IpAddr>().unwrap()));
    a.del(&node, "a2", pods[1].path(), None);
    assert!(!node.has_nft_table("cni_chain"), "{}", node.nft(&["list", "ruleset"]));
}

/// masquerade alone in group mode for network `net`, with the prevResult a main plugin would give.
fn group_masq(net: &str, addrs: &[String]) -> Vec<u8> {
    let ips: Vec<Value> = addrs.iter().map(|a| json!({"address": a})).collect();
    let c = json!({"cniVersion": "1.1.0", "name": net, "type": "masquerade", "mode": "group",
        "prevResult": {"cniVersion": "1.1.0", "ips": ips}});
    serde_json::to_vec(&c).unwrap()
}

/// Point 1 under load: ADDs and DELs of two networks interleave; whichever DEL is last takes the table,
/// and no ADD ever loses its rule to a concurrent last DEL.
#[test]
fn a_hundred_concurrent_adds_and_dels_across_two_networks_end_with_no_table() {
    let node = Netns::new();
    let net = |i: usize| if i.is_multiple_of(2) { "net-a" } else { "net-b" };
    let addr = |i: usize| vec![format!("10.83.{}.{}/16", i / 200, i % 200 + 2), format!("fd83::{:x}/64", i + 2)];
    concurrently(100, 8, |i| {
        let id = format!("c{i}");
        let conf = group_masq(net(i), &addr(i));
        Call::new("masquerade", "ADD", &id, node.path()).run(&node, &conf).ok();
        // Every live pod's rule and membership hold while others come and go.
        Call::new("masquerade", "CHECK", &id, node.path()).run(&node, &conf).ok();
        Call::new("masquerade", "DEL", &id, "").run(&node, &conf).ok();
    });
    assert!(!node.has_nft_table("cni_chain"), "{}", node.nft(&["list", "ruleset"]));
}

/// Point 3: a second ADD for a live attachment fails, and its rollback never frees the live pod's address.
#[test]
fn a_repeated_add_keeps_the_live_pods_address() {
    let (node, _outside) = node_with_uplink();
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    let stores = TempDir::new("field-again");
    for conflist in ["10-cni-chain-ptp.conflist", "30-cni-chain-egress-v4.conflist", "35-cni-chain-egress-v6.conflist"]
    {
        let chain = Chain::shipped_in(conflist, stores.path());
        let last = chain.plugins() - 1;
        let pod = Netns::new();
        let r = chain.add(&node, "again", pod.path());
        let held = reservations(stores.path());
        // The runtime repeats the last plugin's ADD (ptp's or an egress plugin's), as after a lost reply.
        let first_prev = (last > 0).then(|| ptp_result_of(&r));
        let conf = serde_json::to_vec(&chain.config(last, first_prev.as_ref())).unwrap();
        let msg = Call::new(&chain.kind(last), "ADD", "again", pod.path()).run(&node, &conf).err(109);
        assert!(msg.contains("DEL it first"), "{msg}");
        assert_eq!(reservations(stores.path()), held, "{conflist}: the live pod's reservations are kept");
        all_ok(chain.check(&node, "again", pod.path(), &r));
        // The next pod gets other addresses.
        let next = Netns::new();
        let r2 = chain.add(&node, "next", next.path());
        let ips = |r: &Value| r["ips"].as_array().unwrap().iter().map(|i| i["address"].clone()).collect::<Vec<_>>();
        assert!(ips(&r2).iter().all(|a| !ips(&r).contains(a)), "{conflist}: {r2} reuses {r}");
        chain.del(&node, "next", next.path(), Some(&r2));
        chain.del(&node, "again", pod.path(), Some(&r));
    }
    assert!(reservations(stores.path()).is_empty());
}

/// An egress chain's result without the egress plugin's interfaces: what ptp returned.
fn ptp_result_of(r: &Value) -> Value {
    let mut p = r.clone();
    p["interfaces"].as_array_mut().unwrap().truncate(2);
    p
}

/// Reservations of every store below `stores`.
fn reservations(stores: &Path) -> Vec<String> {
    let mut all = Vec::new();
    for dir in std::fs::read_dir(stores).into_iter().flatten().flatten() {
        for net in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            all.extend(reservations_in(&net.path()).into_iter().map(|r| format!("{}/{r}", net.path().display())));
        }
    }
    all.sort();
    all
}

/// Point 5: a config changed into something ADD would refuse (a mode that does not exist, an MTU that is
/// no number) still lets the runtime's chain DEL remove everything.
#[test]
fn del_with_a_config_add_would_refuse_leaves_nothing() {
    let (node, _outside) = node_with_uplink();
    let stores = TempDir::new("field-del");
    let mut chain = Chain::shipped_in("20-cni-chain-masquerade.conflist", stores.path());
    let pod = Netns::new();
    let r = chain.add(&node, "typo", pod.path());
    chain.list["plugins"][2]["mode"] = json!("groups");
    chain.list["plugins"][2]["podGroup"] = json!([8]);
    chain.list["plugins"][1]["group"] = json!([8]);
    chain.list["plugins"][0]["mtu"] = json!("x");
    chain.list["plugins"][0]["ipMasqBackend"] = json!("iptables");
    // host-local, run by ptp's DEL, needs the store, not the ranges.
    chain.list["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": "10.0.0.1"}]]);
    let conf = serde_json::to_vec(&chain.config(2, Some(&r))).unwrap();
    Call::new("masquerade", "ADD", "typo2", pod.path()).run(&node, &conf).err(6);
    chain.del(&node, "typo", pod.path(), Some(&r));
    chain.del(&node, "typo", pod.path(), None);
    // egress-v4 likewise, with SNAT settings it would refuse.
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    let mut egress = Chain::shipped_in("30-cni-chain-egress-v4.conflist", stores.path());
    let v6pod = Netns::new();
    let r6 = egress.add(&node, "typo6", v6pod.path());
    egress.list["plugins"][1]["randomizeSNAT"] = json!("sometimes");
    egress.list["plugins"][1]["nodeIP"] = json!("not-an-ip");
    egress.list["plugins"][1]["mtu"] = json!("x");
    egress.del(&node, "typo6", v6pod.path(), Some(&r6));
    // egress-v6 too.
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    let mut egress6 = Chain::shipped_in("35-cni-chain-egress-v6.conflist", stores.path());
    let v4pod = Netns::new();
    let r4 = egress6.add(&node, "typo4", v4pod.path());
    egress6.list["plugins"][1]["randomizeSNAT"] = json!("sometimes");
    egress6.list["plugins"][1]["nodeIP"] = json!("192.0.2.1");
    egress6.list["plugins"][1]["mtu"] = json!(1000);
    egress6.del(&node, "typo4", v4pod.path(), Some(&r4));
    let veths: Vec<String> = node.veths().into_iter().filter(|v| v != "uplink").collect();
    assert!(veths.is_empty(), "{veths:?}");
    assert!(reservations(stores.path()).is_empty());
    assert!(!node.has_nft_table("cni_chain"), "{}", node.nft(&["list", "ruleset"]));
}

/// Point 5: ptp's ipMasq and the masquerade plugin's pod mode for the same pod each keep their own state:
/// both CHECKs pass after ADD, egress is masqueraded, and both DELs leave nothing.
#[test]
fn ptp_ip_masq_and_masquerade_pod_mode_hold_the_same_pod() {
    let (node, outside) = node_with_uplink();
    let stores = TempDir::new("field-both");
    let chain = Chain::new(json!({
        "cniVersion": "1.0.0", "name": "both",
        "plugins": [
            {"type": "ptp", "ipMasq": true, "ipam": {"type": "host-local", "dataDir": stores.str(),
                "ranges": [[{"subnet": "10.84.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "masquerade", "mode": "pod"}
        ]
    }));
    let pod = Netns::new();
    let r = chain.add(&node, "both", pod.path());
    all_ok(chain.check(&node, "both", pod.path(), &r));
    assert_eq!(outside.peer_of(&pod, "192.0.2.2"), Some("192.0.2.1".parse::<IpAddr>().unwrap()));
    chain.del(&node, "both", pod.path(), Some(&r));
    assert!(!node.has_nft_table("cni_chain"), "{}", node.nft(&["list", "ruleset"]));
}

/// Point 4: a config written for the Go plugins, read as Go reads it: keys in any case, the last duplicate
/// winning, and a key nobody reads logged with the nearest known one.
#[test]
fn go_style_keys_configure_the_kernel() {
    let (node, outside) = node_with_uplink();
    let stores = TempDir::new("field-go");
    let conf = format!(
        r#"{{"cniVersion": "1.0.0", "name": "gostyle", "type": "ptp", "MTU": 1280, "mtu": 1400, "IPMasq": true,
            "LinkGroup": 8, "mtuu": 1,
            "IPAM": {{"Type": "host-local", "DataDir": "{}", "Ranges": [[{{"Subnet": "10.85.0.0/24"}}]],
                      "Routes": [{{"Dst": "0.0.0.0/0"}}]}}}}"#,
        stores.str()
    );
    let pod = Netns::new();
    let reply = Call::new("ptp", "ADD", "go", pod.path()).run(&node, conf.as_bytes());
    let r = reply.ok();
    assert!(reply.stderr.contains(r#"did you mean "mtu""#), "{}", reply.stderr);
    assert!(!reply.stderr.contains("ipam.type"), "host-local knows its own type key: {}", reply.stderr);
    // Once, by ptp: host-local reads only the ipam section and leaves ptp's keys to ptp.
    assert_eq!(reply.stderr.matches(r#""mtuu""#).count(), 1, "{}", reply.stderr);
    assert_eq!(r["ips"][0]["address"], "10.85.0.2/24", "IPAM's keys were read: {r}");
    let veth = r["interfaces"][0]["name"].as_str().unwrap();
    let link = node.link(veth).unwrap();
    assert_eq!((link["mtu"].as_u64(), link["group"].as_str()), (Some(1400), Some("8")), "{link}");
    assert_eq!(outside.peer_of(&pod, "192.0.2.2"), Some("192.0.2.1".parse::<IpAddr>().unwrap()), "IPMasq");
    let mut with_prev: Value = serde_json::from_str(&conf).unwrap();
    with_prev["prevResult"] = r.clone();
    let with_prev = serde_json::to_vec(&with_prev).unwrap();
    Call::new("ptp", "CHECK", "go", pod.path()).run(&node, &with_prev).ok();
    Call::new("ptp", "DEL", "go", pod.path()).run(&node, conf.as_bytes()).ok();
    assert!(node.veths().iter().all(|v| v == "uplink"));
    // Keys the spec gives runtimes (with dots in them) are no typos.
    let gc = json!({"cniVersion": "1.1.0", "name": "gostyle", "type": "ptp", "cni.dev/valid-attachments": [],
        "runtimeConfig": {"portMappings": []}, "capabilities": {"portMappings": true},
        "ipam": {"type": "host-local", "dataDir": stores.str(), "ranges": [[{"subnet": "10.85.0.0/24"}]]}});
    let reply = Call::new("ptp", "GC", "", "").run(&node, &serde_json::to_vec(&gc).unwrap());
    reply.ok();
    assert!(!reply.stderr.contains("is not one"), "{}", reply.stderr);
    assert!(reservations(stores.path()).is_empty());
    assert!(!node.has_nft_table("cni_chain"));
}

/// Point 2: after the reference bridge (isGateway), routed pod traffic enters the node through the bridge:
/// linkgroup groups it, and the group rule masquerades egress to an outside host.
#[test]
fn linkgroup_after_a_bridge_groups_the_bridge_and_egress_is_masqueraded() {
    let (node, outside) = node_with_uplink();
    let stores = TempDir::new("field-bridge");
    let chain = Chain::new(json!({
        "cniVersion": "1.0.0", "name": "bridged",
        "plugins": [
            {"type": "bridge", "bridge": "cni-br0", "isGateway": true,
             "ipam": {"type": "host-local", "dataDir": stores.str(), "ranges": [[{"subnet": "10.86.0.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "linkgroup", "group": 8},
            {"type": "masquerade", "mode": "group", "podGroup": 8, "excludeGroups": [9]}
        ]
    }));
    let pods = [Netns::new(), Netns::new()];
    let r0 = chain.add(&node, "br0", pods[0].path());
    let r1 = chain.add(&node, "br1", pods[1].path());
    assert_eq!(node.link("cni-br0").unwrap()["group"], "8");
    assert_eq!(outside.peer_of(&pods[0], "192.0.2.2"), Some("192.0.2.1".parse::<IpAddr>().unwrap()), "masqueraded");
    let p1 = r1["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert_eq!(
        pods[1].peer_of(&pods[0], &p1).map(|a| a.to_string()),
        r0["ips"][0]["address"].as_str().unwrap().split('/').next().map(String::from),
        "pod to pod keeps the pod's address"
    );
    all_ok(chain.check(&node, "br0", pods[0].path(), &r0));
    // A bridge taken out of the group fails CHECK: the grouping no longer works.
    node.ip(&["link", "set", "cni-br0", "group", "0"]);
    assert!(chain.check(&node, "br0", pods[0].path(), &r0)[1].err(104).contains("cni-br0"));
    chain.del(&node, "br1", pods[1].path(), Some(&r1));
    chain.del(&node, "br0", pods[0].path(), Some(&r0));
    assert!(!node.has_nft_table("cni_chain"));
    assert!(reservations(stores.path()).is_empty());
}

/// Point 6: run by hand, every binary says what it is and how it is meant to be run.
#[test]
fn every_binary_answers_version_and_help_by_hand() {
    for plugin in integration::OURS {
        let bin = integration::plugin_path(plugin);
        let out = std::process::Command::new(&bin).arg("--version").env_clear().output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{plugin} --version: {out:?}");
        assert!(text.starts_with(&format!("{plugin} 0.")) && text.contains("commit "), "{text}");
        assert!(text.contains("CNI versions: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"), "{text}");
        let out = std::process::Command::new(&bin).arg("--help").env_clear().output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("CNI_COMMAND"), "{out:?}");
        // No CNI_COMMAND: how to run it on stderr, and still the CNI error a runtime reads on stdout.
        let out = std::process::Command::new(&bin).env_clear().stdin(std::process::Stdio::null()).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stderr).contains("cnitool add"), "{plugin}: {out:?}");
        let err: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(err["code"], 4, "{plugin}");
    }
}

/// A call in a user namespace of its own: root there, but without privileges over the node's and the pod's
/// netns. The pod's netns is handed over as fd 3, opened before, as CNI_NETNS=/proc/self/fd/3.
fn unprivileged(pod: &Netns) -> impl FnOnce(&mut std::process::Command) {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(pod.path()).unwrap();
    move |cmd| {
        use std::os::unix::process::CommandExt;
        cmd.env("CNI_NETNS", "/proc/self/fd/3");
        // SAFETY: dup2 and unshare are plain syscalls between fork and exec; `ns` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself would keep close-on-exec: then clear the flag instead.
                let rc = if ns.as_raw_fd() == 3 {
                    nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(ns.as_raw_fd(), 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(std::io::Error::from)
            });
        }
    }
}

/// Point 6: without the privileges it needs, the error names them.
#[test]
fn without_privileges_the_error_names_what_is_missing() {
    let node = Netns::new();
    let pod = Netns::new();
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/proc/self/fd/3"}],
        "ips": [{"address": "10.87.0.2/24", "interface": 0}]});
    let run = |conf: Value| {
        let bytes = serde_json::to_vec(&conf).unwrap();
        Call::new(conf["type"].as_str().unwrap(), "ADD", "p", pod.path()).run_with(&node, &bytes, unprivileged(&pod))
    };
    let reply = run(json!({"cniVersion": "1.0.0", "name": "priv", "type": "masquerade", "prevResult": prev}));
    assert!(reply.err(108).contains("without CAP_NET_ADMIN"), "{}", reply.stdout);
    // linkgroup with the pod side only: the first thing it needs is to enter the pod's netns.
    let reply = run(json!({"cniVersion": "1.0.0", "name": "priv", "type": "linkgroup", "group": 8,
        "containerGroup": 7, "interfaces": [], "prevResult": prev}));
    assert!(reply.err(101).contains("without CAP_SYS_ADMIN"), "{}", reply.stdout);
    let reply = run(json!({"cniVersion": "1.0.0", "name": "priv", "type": "linkgroup", "group": 8,
        "interfaces": ["lo"], "prevResult": prev}));
    assert!(reply.err(100).contains("without CAP_NET_ADMIN"), "{}", reply.stdout);
}

/// Point 6: log lines say when, which plugin and process, the verb, the network and the container; debug
/// shows each change to the kernel, info one line per verb. A bad logLevel or logFile is said on stderr.
#[test]
fn logs_say_who_did_what_to_the_kernel() {
    let (node, _outside) = node_with_uplink();
    let stores = TempDir::new("field-logs");
    let log = stores.path().join("cni.log");
    let conf = json!({"cniVersion": "1.0.0", "name": "logged", "type": "ptp", "ipMasq": true,
        "logLevel": "Debug", "logFile": log,
        "ipam": {"type": "host-local", "dataDir": stores.path().join("store"), "ranges": [[{"subnet": "10.88.5.0/24"}]]}});
    let pod = Netns::new();
    let bytes = serde_json::to_vec(&conf).unwrap();
    Call::new("ptp", "ADD", "logc", pod.path()).run(&node, &bytes).ok();
    Call::new("ptp", "DEL", "logc", pod.path()).run(&node, &bytes).ok();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = |needle: &str| {
        text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    };
    let line_of = |who: &str, needle: &str| {
        let found = text.lines().find(|l| l.contains(who) && l.contains(needle));
        found.unwrap_or_else(|| panic!("no line of {who:?} with {needle:?} in:\n{text}"))
    };
    let add = line("creating veth");
    assert!(add.contains(" DEBUG ptp[") && add.contains("] ADD net=logged id=logc: "), "{add}");
    assert!(
        add.as_bytes()[..24].iter().filter(|b| **b == b'-').count() == 2 && add.contains("T") && add.contains("Z "),
        "{add}"
    );
    line("adding address 10.88.5.2/24");
    line("adding route");
    line("nftables batch (adding the pod's masquerade)");
    line_of(" INFO ptp[", "ADD ok in");
    line_of(" INFO ptp[", "DEL ok in");
    line_of(" INFO host-local[", "] ADD net=logged id=logc: ADD ok in");
    // A level that is none and a file that cannot be written: said on stderr, and the call still runs.
    let mut bad = conf.clone();
    bad["logLevel"] = json!("verbose");
    bad["logFile"] = json!("/nonexistent-dir/cni.log");
    let reply = Call::new("ptp", "ADD", "logc", pod.path()).run(&node, &serde_json::to_vec(&bad).unwrap());
    reply.ok();
    assert!(reply.stderr.contains(r#"logLevel "verbose" is not one of"#), "{}", reply.stderr);
    assert!(reply.stderr.contains("cannot write logFile"), "{}", reply.stderr);
    Call::new("ptp", "DEL", "logc", pod.path()).run(&node, &bytes).ok();
    assert!(!node.has_nft_table("cni_chain"));
}
