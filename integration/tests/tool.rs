//! The operator's tool, `cni-chain`, run inside a node netns holding live pods of every shipped chain, with the
//! conflists (pointed at the test's stores) in a directory of the test's.

use integration::runtimes::{node_with_uplink, policy_route_on_one_uplink};
use integration::{Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

const CONFLISTS: [&str; 5] = [
    "10-cni-chain-ptp.conflist",
    "20-cni-chain-masquerade.conflist",
    "30-cni-chain-egress-v4.conflist",
    "35-cni-chain-egress-v6.conflist",
    "50-cni-chain-policy-route.conflist",
];

/// Run `cni-chain args...` in `node`; (exit code, stdout, stderr).
fn tool(node: &Netns, args: &[&str]) -> (i32, String, String) {
    let out = node.command(integration::bin_dir().join("cni-chain")).args(args).env_clear().output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Every shipped chain at 1.1.0 with its stores in `stores`, written into `conf_dir` as a runtime finds them. The
/// policy-route conflist is pointed at the node's one uplink.
fn chains(stores: &Path, conf_dir: &Path) -> Vec<Chain> {
    CONFLISTS
        .iter()
        .map(|name| {
            let chain = match name.contains("policy-route") {
                true => policy_route_on_one_uplink(stores),
                false => Chain::shipped_in(name, stores),
            };
            std::fs::write(conf_dir.join(name), serde_json::to_vec_pretty(&chain.conflist()).unwrap()).unwrap();
            chain
        })
        .collect()
}

fn addresses(result: &Value) -> BTreeSet<String> {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().into())
        .collect()
}

#[test]
fn ls_lists_each_live_pod_once_with_its_real_addresses() {
    let (node, _outside) = node_with_uplink();
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    let (stores, conf_dir) = (TempDir::new("tool-stores"), TempDir::new("tool-conf"));
    let chains = chains(stores.path(), conf_dir.path());
    let mut live = Vec::new();
    for (c, chain) in chains.iter().enumerate() {
        for p in 0..2 {
            let (pod, id) = (Netns::new(), format!("pod-{c}-{p}"));
            let result = chain.add(&node, &id, pod.path());
            live.push((chain, id, pod, result));
        }
    }
    let (code, out, err) = tool(&node, &["ls", "--json", "--conf-dir", conf_dir.str()]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let attachments = listed["attachments"].as_array().unwrap();
    eprintln!("{out}");
    assert_eq!(attachments.len(), live.len(), "{out}");
    for (chain, id, pod, result) in &live {
        let net = chain.list["name"].as_str().unwrap();
        let a = attachments.iter().find(|a| a["network"] == net && a["containerID"] == id.as_str()).unwrap();
        assert_eq!(a["ifname"], "eth0");
        assert_eq!(a["alive"], true, "{a}");
        let listed: BTreeSet<String> =
            a["addresses"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
        // The main plugin's addresses and, for the egress chains, the egress address on the second interface.
        let mut real = addresses(result);
        for egress_if in ["v4if0", "v6if0"].into_iter().filter(|i| pod.link(i).is_some()) {
            real.extend(pod.addresses(egress_if).into_iter().map(|a| a.split('/').next().unwrap().to_string()));
        }
        assert_eq!(listed, real, "{net}/{id}: {a}");
    }
    let (_, table, _) = tool(&node, &["ls", "--conf-dir", conf_dir.str()]);
    assert_eq!(table.lines().count(), live.len() + 1, "{table}");
    eprintln!("{table}");

    for (chain, id, pod, result) in &live {
        chain.del(&node, id, pod.path(), Some(result));
    }
    let (code, out, _) = tool(&node, &["ls", "--json", "--conf-dir", conf_dir.str()]);
    assert_eq!((code, serde_json::from_str::<Value>(&out).unwrap()), (0, json!({"attachments": []})));
}

/// Set every file below `dir` to have been written `ago` (leaks are old; an ADD in flight is not).
fn backdate(dir: &Path, ago: std::time::Duration) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            backdate(&path, ago);
        } else {
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(std::time::SystemTime::now() - ago).unwrap();
        }
    }
}

/// The leaks `doctor --json` reports, as (kind, container ID or file name), sorted.
fn reported(node: &Netns, conf_dir: &TempDir, extra: &[&str]) -> (i32, Vec<(String, String)>, Value) {
    let mut args = vec!["doctor", "--json", "--conf-dir", conf_dir.str()];
    args.extend_from_slice(extra);
    let (code, out, err) = tool(node, &args);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let mut leaks: Vec<(String, String)> = v["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let named =
                ["containerID", "name", "table", "rule", "route"].iter().find_map(|k| l[k].as_str()).map(String::from);
            let who = named.unwrap_or_else(|| {
                Path::new(l["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned()
            });
            (l["kind"].as_str().unwrap().to_string(), who)
        })
        .collect();
    leaks.sort();
    (code, leaks, v)
}

/// Sets its flag when dropped, also by a panic.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn doctor_reports_exactly_the_leaks_while_pods_come_and_go_and_fix_removes_only_them() {
    let (node, outside) = node_with_uplink();
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    outside.ip(&["route", "add", "10.91.0.0/16", "via", "192.0.2.1"]);
    let (stores, conf_dir) = (TempDir::new("doctor-stores"), TempDir::new("doctor-conf"));
    let chains = chains(stores.path(), conf_dir.path());
    let (masq, egress6, routed) = (&chains[1], &chains[3], &chains[4]);
    // A live pod of every chain.
    let live: Vec<(&Chain, Netns, Value)> = chains
        .iter()
        .enumerate()
        .map(|(c, chain)| {
            let pod = Netns::new();
            let r = chain.add(&node, &format!("live-{c}"), pod.path());
            (chain, pod, r)
        })
        .collect();
    let (code, leaks, _) = reported(&node, &conf_dir, &["--grace", "0"]);
    assert_eq!((code, leaks), (0, vec![]), "a node with live pods only is clean");

    // Leaks of each kind. ptp killed with SIGKILL the moment its IPAM call returns, before its veth: its IPAM
    // plugin is a script that runs our host-local, then kills the ptp that ran it.
    let killer = TempDir::new("doctor-killer");
    let host_local = integration::bin_dir().join("host-local");
    let script = format!("#!/bin/sh\n{} || exit 1\nkill -9 $PPID\n", host_local.display());
    std::fs::write(killer.path().join("host-local"), script).unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(killer.path().join("host-local"), executable).unwrap();
    let killed = Netns::new();
    let conf = serde_json::to_vec(&masq.config(0, None)).unwrap();
    let reply = integration::Call::new("ptp", "ADD", "killed", killed.path())
        .env("CNI_PATH", Some(killer.str()))
        .env("PATH", Some("/usr/bin:/bin"))
        .run(&node, &conf);
    assert!(!reply.success && reply.stdout.is_empty(), "ptp was killed: {reply:?}");
    assert_eq!(killed.link("eth0"), None, "before its veth");
    // Pod netns deleted without DEL: the kernel takes the veths with them, the rest stays.
    for (chain, id) in [(masq, "vanished-masq"), (egress6, "vanished-egress6"), (routed, "vanished-routed")] {
        let pod = Netns::new();
        chain.add(&node, id, pod.path());
        drop(pod);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while node.veths().len() > 1 + 7 {
        assert!(std::time::Instant::now() < deadline, "the vanished pods' veths stayed: {:?}", node.veths());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A reservation nobody holds, an element nobody owns, a temporary file a killed writer left.
    let ptp_store = stores.path().join("10-cni-chain-ptp.conflist-0/cni-chain");
    std::fs::write(ptp_store.join("10.88.0.250"), "ghost\r\neth0").unwrap();
    std::fs::write(ptp_store.join("last_reserved_ip.0.tmp"), "10.88").unwrap();
    let ghost = r#"{ 169.254.175.250 comment "cni-chain:egress-v4:cni-chain-v6:ghost/eth0" }"#;
    node.nft(&["add", "element", "inet", "cni_chain", "egress_v4_192_0_2_1", ghost]);
    // Shared pieces a prune the kernel refused (or a kill) left: nothing uses them, beside ones live pods use.
    let unused = TempDir::new("doctor-unused");
    let unused_route = inject_unused(&node, &unused, &UNUSED_IN_USE_TABLES);
    backdate(stores.path(), std::time::Duration::from_secs(600));

    let expected: Vec<(String, String)> = {
        let mut e: Vec<(String, String)> = [
            ("reservation", "killed"),
            ("reservation", "killed"),
            ("reservation", "vanished-masq"),
            ("reservation", "vanished-masq"),
            ("element", "vanished-masq"),
            ("element", "vanished-masq"),
            ("reservation", "vanished-egress6"),
            ("reservation", "vanished-egress6"),
            ("element", "vanished-egress6"),
            ("reservation", "vanished-routed"),
            ("reservation", "vanished-routed"),
            ("policyRecord", "vanished-routed"),
            ("reservation", "ghost"),
            ("element", "ghost"),
            ("temporaryFile", "last_reserved_ip.0.tmp"),
            ("unusedChain", "egress_v4_198_51_100_7"),
            ("unownedRule", "from 10.99.0.9 lookup 100 pref 1536 proto 77"),
            ("unownedRoute", &unused_route),
        ]
        .iter()
        .map(|(k, w)| (k.to_string(), w.to_string()))
        .collect();
        e.sort();
        e
    };
    // Pods come and go on three chains meanwhile (each worker at least 10 times, doctor at least 10 times):
    // none of theirs is ever reported.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = AtomicBool::new(false);
    let cycles: [AtomicUsize; 3] = Default::default();
    let runs = std::thread::scope(|scope| {
        for (w, chain) in [masq, egress6, routed].into_iter().enumerate() {
            let (node, stop, done) = (&node, &stop, &cycles[w]);
            scope.spawn(move || {
                let _stop_all = StopOnDrop(stop);
                while !stop.load(Ordering::Relaxed) {
                    let (pod, id) = (Netns::new(), format!("churn-{w}-{}", done.load(Ordering::Relaxed)));
                    let r = chain.add(node, &id, pod.path());
                    chain.del(node, &id, pod.path(), Some(&r));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // A panic here or in a worker stops them all (the scope waits for every worker).
        let _stop_all = StopOnDrop(&stop);
        let mut runs = 0;
        while !stop.load(Ordering::Relaxed) && (runs < 10 || cycles.iter().any(|c| c.load(Ordering::Relaxed) < 10)) {
            let (code, leaks, v) = reported(&node, &conf_dir, &[]);
            assert_eq!((code, &leaks), (1, &expected), "doctor run {runs} with pods coming and going:\n{v:#}");
            runs += 1;
        }
        runs
    });
    eprintln!("{runs} doctor runs while pods came and went: {cycles:?}");

    let (code, text, _) = tool(&node, &["doctor", "--conf-dir", conf_dir.str()]);
    assert_eq!(code, 1);
    assert_eq!(text.lines().filter(|l| l.starts_with("leak: ")).count(), expected.len(), "{text}");
    eprintln!("{text}");
    let (code, _, v) = reported(&node, &conf_dir, &["--fix"]);
    assert_eq!(code, 1, "leaks were found: {v:#}");
    let fixed = v["fixed"].as_array().unwrap();
    assert_eq!(fixed.len(), expected.len());
    assert!(fixed.iter().all(|f| f["removed"] == true), "{v:#}");
    let (code, leaks, v) = reported(&node, &conf_dir, &["--grace", "0"]);
    assert_eq!((code, leaks), (0, vec![]), "{v:#}");
    assert!(!ptp_store.join("10.88.0.250").exists() && !ptp_store.join("last_reserved_ip.0.tmp").exists());
    let rules = node.ip(&["rule"]);
    assert_eq!(rules.matches("proto 77").count(), 2 + 1, "the live pod's two rules and the fwmark rule: {rules}");
    assert_eq!(node.ip(&["route", "show", "table", "150"]).trim(), "", "the unused route went");

    // The live pods are untouched: CHECK passes and they carry traffic.
    for (chain, pod, r) in &live {
        let id = format!("live-{}", chains.iter().position(|c| std::ptr::eq(c, *chain)).unwrap());
        for reply in chain.check(&node, &id, pod.path(), r) {
            reply.ok();
        }
    }
    assert_eq!(outside.peer_of(&live[1].1, "192.0.2.2"), Some("192.0.2.1".parse().unwrap()), "masqueraded");
    assert_eq!(outside.peer_of(&live[3].1, "2001:db8::2"), Some("2001:db8::1".parse().unwrap()), "egress-v6");
    let (_, listed, _) = tool(&node, &["ls", "--json", "--conf-dir", conf_dir.str()]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["attachments"].as_array().unwrap().len(), live.len(), "{listed:#}");
    for (i, (chain, pod, r)) in live.iter().enumerate() {
        chain.del(&node, &format!("live-{i}"), pod.path(), Some(r));
    }
}

/// A shared piece nothing uses, as egress-v4 makes it, in a table that exists already. (An empty group rule
/// would not last while pods come and go: the masquerade plugin's DEL prunes every one.)
const UNUSED_IN_USE_TABLES: [&str; 3] = [
    "add chain inet cni_chain egress_v4_198_51_100_7 { type nat hook postrouting priority srcnat; }",
    "add set inet cni_chain egress_v4_198_51_100_7 { type ipv4_addr; size 16384; }",
    "add rule inet cni_chain egress_v4_198_51_100_7 ip saddr @egress_v4_198_51_100_7 snat ip to 198.51.100.7",
];

/// Load `lines` into `node`'s nftables, and add a rule and a route (in table 150, through the uplink) with
/// policy-route's protocol that no record has. The route as doctor shows it.
fn inject_unused(node: &Netns, dir: &TempDir, lines: &[&str]) -> String {
    let file = dir.path().join("unused.nft");
    std::fs::write(&file, lines.join("\n")).unwrap();
    node.nft(&["-f", file.to_str().unwrap()]);
    node.ip(&["rule", "add", "from", "10.99.0.9", "lookup", "100", "pref", "1536", "proto", "77"]);
    node.ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.2", "dev", "uplink", "table", "150", "proto", "77"]);
    format!("198.51.100.0/24 via 192.0.2.2 dev #{} table 150", node.link("uplink").unwrap()["ifindex"])
}

#[test]
fn doctor_removes_shared_pieces_nothing_uses_and_then_their_tables() {
    let (node, _outside) = node_with_uplink();
    let (stores, conf_dir, unused) =
        (TempDir::new("unused-stores"), TempDir::new("unused-conf"), TempDir::new("unused-nft"));
    chains(stores.path(), conf_dir.path());
    let mut lines = UNUSED_IN_USE_TABLES.to_vec();
    lines.splice(0..0, ["add table inet cni_chain", "add table inet cni_chain_policy_route"]);
    lines.extend([
        "add chain inet cni_chain masq_group_77 { type nat hook postrouting priority srcnat; }",
        "add set inet cni_chain masq_group_77_v4 { type ipv4_addr; size 16384; }",
        "add set inet cni_chain masq_group_77_v6 { type ipv6_addr; size 16384; }",
        "add chain inet cni_chain egress_v6_2001_db8__7 { type nat hook postrouting priority srcnat; }",
        "add set inet cni_chain egress_v6_2001_db8__7 { type ipv6_addr; size 16384; }",
        "add map inet cni_chain ptp_pods_v4 { type ipv4_addr : verdict; size 16384; }",
        "add map inet cni_chain ptp_pods_v6 { type ipv6_addr : verdict; size 16384; }",
        "add chain inet cni_chain ptp_masq { type nat hook postrouting priority srcnat; }",
        "add chain inet cni_chain ptp_pods_00000000000000ff",
        "add chain inet cni_chain pods_00000000000000ff",
        "add chain inet cni_chain_policy_route primary_eth9_80 { type filter hook prerouting priority mangle; }",
    ]);
    let unused_route = inject_unused(&node, &unused, &lines);
    node.ip(&["-6", "rule", "add", "fwmark", "0x80/0x80", "lookup", "main", "pref", "1024", "proto", "77"]);
    let (code, leaks, v) = reported(&node, &conf_dir, &[]);
    let mut expected: Vec<(String, String)> = [
        ("unusedChain", "egress_v4_198_51_100_7"),
        ("unusedChain", "egress_v6_2001_db8__7"),
        ("unusedChain", "masq_group_77"),
        ("unusedChain", "ptp_pods_00000000000000ff"),
        ("unusedChain", "ptp_masq"),
        ("unusedChain", "pods_00000000000000ff"),
        ("unusedChain", "primary_eth9_80"),
        ("unownedRule", "from 10.99.0.9 lookup 100 pref 1536 proto 77"),
        ("unownedRule", "from all fwmark 0x80/0x80 lookup 254 pref 1024 proto 77"),
        ("unownedRoute", &unused_route),
    ]
    .iter()
    .map(|(k, w)| (k.to_string(), w.to_string()))
    .collect();
    expected.sort();
    assert_eq!((code, leaks), (1, expected.clone()), "{v:#}");
    // A rule of the same shape made by someone else (another protocol) is never ours.
    node.ip(&["rule", "add", "from", "10.99.0.10", "lookup", "100", "pref", "1536"]);
    let (code, _, v) = reported(&node, &conf_dir, &["--fix"]);
    assert_eq!(code, 1);
    let fixed = v["fixed"].as_array().unwrap();
    assert_eq!(fixed.len(), expected.len(), "{v:#}");
    assert!(fixed.iter().all(|f| f["removed"] == true), "{v:#}");
    assert_eq!(node.nft(&["list", "ruleset"]).trim(), "", "the tables went with their last pieces");
    let rules = node.ip(&["rule"]) + &node.ip(&["-6", "rule"]);
    assert!(!rules.contains("proto 77") && rules.contains("from 10.99.0.10"), "{rules}");
    assert_eq!(node.ip(&["route", "show", "table", "150"]).trim(), "", "the route went");
    // An empty table of ours is reported and removed by itself too.
    node.nft(&["add", "table", "inet", "cni_chain"]);
    let (code, leaks, v) = reported(&node, &conf_dir, &["--fix"]);
    assert_eq!((code, leaks), (1, vec![("emptyTable".to_string(), "cni_chain".to_string())]), "{v:#}");
    assert_eq!(node.nft(&["list", "ruleset"]).trim(), "");
    assert_eq!(reported(&node, &conf_dir, &[]).0, 0);
}

#[test]
fn version_help_and_shell_completions() {
    let bin = integration::bin_dir().join("cni-chain");
    let run = |args: &[&str]| std::process::Command::new(&bin).args(args).env_clear().output().unwrap();
    let version = run(&["--version"]);
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("cni-chain 0."), "{version:?}");
    let help = String::from_utf8_lossy(&run(&["--help"]).stdout).into_owned();
    for command in ["ls", "doctor", "gc", "completions"] {
        assert!(help.contains(&format!("\n  {command} ")), "{help}");
    }
    // bash completes the subcommands from the script the tool prints (called as bash calls it: the command,
    // the word under completion, the word before it).
    let script = format!(
        "source <({} completions bash) && COMP_WORDS=(cni-chain d) && COMP_CWORD=1 && _cni__chain cni-chain d cni-chain && echo \"${{COMPREPLY[@]}}\"",
        bin.display()
    );
    let out = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "doctor", "{out:?}");
    // A usage error is clap's (2), not a panic.
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
}
