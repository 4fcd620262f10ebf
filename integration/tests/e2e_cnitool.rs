//! cnitool (libcni 1.1.2, built from Debian's source by scripts/e2e/cnitool.sh) drives the shipped conflists
//! as they are: libcni runs the chain, caches results and passes prevResult. It runs inside the node netns
//! and a private mount namespace whose /var/lib is the test's directory, so its result cache and host-local's
//! default store never touch the machine's /var/lib/cni. cnitool 1.1.2 has no GC or STATUS.

use integration::runtimes::{copy_shipped_conflist, node_with_two_uplinks, node_with_uplink};
use integration::{cni_path, Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

fn cnitool_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e/bin/cnitool");
    assert!(bin.is_file(), "cnitool is missing: run `make e2e` (scripts/e2e/cnitool.sh builds it)");
    bin
}

/// A node with an uplink to an outside host, and cnitool's view: conflists and a private /var/lib.
struct Site {
    node: Netns,
    outside: Netns,
    conf_dir: TempDir,
    var_lib: TempDir,
}

fn site(conflist: &str) -> Site {
    let (node, outside) = node_with_uplink();
    let conf_dir = TempDir::new("cnitool-conf");
    copy_shipped_conflist(conflist, conf_dir.path());
    Site { node, outside, conf_dir, var_lib: TempDir::new("cnitool-varlib") }
}

impl Site {
    /// `program` in the node netns and a private mount namespace whose /var/lib is the test's.
    fn in_jail(&self, program: &Path) -> std::process::Command {
        let script = r#"mount --bind "$1" /var/lib && shift && exec "$@""#;
        let mut cmd = self.node.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(self.var_lib.path())
            .arg(program);
        cmd
    }

    fn cnitool(&self, verb: &str, net: &str, pod: &Netns, cap_args: Option<&Value>) -> Output {
        let mut cmd = self.in_jail(&cnitool_bin());
        cmd.args([verb, net, pod.path()])
            .env("NETCONFPATH", self.conf_dir.path())
            .env("CNI_PATH", cni_path())
            .env("CNI_IFNAME", "eth0");
        if let Some(caps) = cap_args {
            cmd.env("CAP_ARGS", caps.to_string());
        }
        cmd.output().expect("run cnitool")
    }

    fn ok(&self, verb: &str, net: &str, pod: &Netns, cap_args: Option<&Value>) -> String {
        let out = self.cnitool(verb, net, pod, cap_args);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "cnitool {verb}: {stdout}\n{stderr}");
        stdout.into_owned()
    }

    /// host-local's reservations in the default store, under our private /var/lib.
    fn reservations(&self, net: &str) -> Vec<String> {
        integration::reservations_in(&self.var_lib.path().join(format!("cni/networks/{net}")))
    }

    fn pod_veths(&self) -> Vec<String> {
        self.node.veths().into_iter().filter(|v| v.starts_with("veth")).collect()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn cnitool_add_check_del_with_the_masquerade_chain() {
    let s = site("20-cni-chain-masquerade.conflist");
    let net = "cni-chain-masq";
    let pod = Netns::new();
    let result: Value = serde_json::from_str(&s.ok("add", net, &pod, None)).unwrap();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["ips"].as_array().unwrap().len(), 2, "dual stack: {result}");
    assert_eq!(s.reservations(net).len(), 2);
    assert_eq!(s.var_lib.files("cni/results").len(), 1, "libcni cached the result in our private /var/lib");
    let veth = result["interfaces"][0]["name"].as_str().unwrap();
    assert_eq!(s.node.link(veth).unwrap()["group"], "8");
    assert_eq!(s.outside.peer_of(&pod, "192.0.2.2"), Some(ip("192.0.2.1")), "masqueraded egress");
    assert_eq!(s.outside.peer_of(&pod, "2001:db8::2"), Some(ip("2001:db8::1")));

    s.ok("check", net, &pod, None);
    s.ok("del", net, &pod, None);
    assert_eq!(s.pod_veths(), Vec::<String>::new());
    assert_eq!(s.reservations(net), Vec::<String>::new());
    assert_eq!(s.var_lib.files("cni/results"), Vec::<String>::new());
    s.ok("del", net, &pod, None);
}

#[test]
fn cnitool_ipv6_pod_with_egress_v4() {
    let s = site("30-cni-chain-egress-v4.conflist");
    s.node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    s.outside.ip(&["-6", "route", "add", "fd90::/64", "via", "2001:db8::1"]);
    let net = "cni-chain-v6";
    let pod = Netns::new();
    let result: Value = serde_json::from_str(&s.ok("add", net, &pod, None)).unwrap();
    assert_eq!(result["ips"].as_array().unwrap().len(), 1, "{result}");
    assert_eq!(result["interfaces"].as_array().unwrap().len(), 4, "{result}");
    let pod_v6 = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert_eq!(s.outside.peer_of(&pod, "192.0.2.2"), Some(ip("192.0.2.1")), "IPv4 egress as the node");
    assert_eq!(s.outside.peer_of(&pod, "2001:db8::2"), Some(ip(&pod_v6)), "IPv6 keeps the pod's address");
    s.ok("check", net, &pod, None);
    s.ok("del", net, &pod, None);
    assert!(s.node.veths().iter().all(|v| v == "uplink"), "{:?}", s.node.veths());
    assert!(!s.node.nft(&["list", "tables"]).contains("cni_chain"));
    assert_eq!(s.var_lib.files("cni/egress-v4/cni-chain-v6").into_iter().filter(|f| f.starts_with("169.")).count(), 0);
}

#[test]
fn cnitool_ipv4_pod_with_egress_v6() {
    let s = site("35-cni-chain-egress-v6.conflist");
    s.node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    s.node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    s.outside.ip(&["route", "add", "10.91.0.0/16", "via", "192.0.2.1"]);
    let net = "cni-chain-v4";
    let pod = Netns::new();
    let result: Value = serde_json::from_str(&s.ok("add", net, &pod, None)).unwrap();
    assert_eq!(result["ips"].as_array().unwrap().len(), 1, "{result}");
    assert_eq!(result["interfaces"].as_array().unwrap().len(), 4, "{result}");
    let pod_v4 = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert_eq!(s.outside.peer_of(&pod, "2001:db8::2"), Some(ip("2001:db8::1")), "IPv6 egress as the node");
    assert_eq!(s.outside.peer_of(&pod, "192.0.2.2"), Some(ip(&pod_v4)), "IPv4 keeps the pod's address");
    s.ok("check", net, &pod, None);
    s.ok("del", net, &pod, None);
    assert!(s.node.veths().iter().all(|v| v == "uplink"), "{:?}", s.node.veths());
    assert!(!s.node.nft(&["list", "tables"]).contains("cni_chain"));
    assert_eq!(s.var_lib.files("cni/egress-v6/cni-chain-v4").into_iter().filter(|f| f.starts_with("fd00")).count(), 0);
}

#[test]
fn cnitool_passes_port_mappings_and_bandwidth_as_capabilities() {
    let s = site("40-cni-chain-portmap-bandwidth.conflist");
    let net = "cni-chain-ports";
    let pod = Netns::new();
    let caps = json!({
        "portMappings": [{"hostPort": 8091, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 8_000_000, "egressBurst": 80_000},
    });
    let result: Value = serde_json::from_str(&s.ok("add", net, &pod, Some(&caps))).unwrap();
    assert_eq!(pod.peer_via(&s.outside, "192.0.2.1", 80, Some(8091)), Some(ip("192.0.2.2")), "port mapping");
    let veth = result["interfaces"][0]["name"].as_str().unwrap().to_string();
    let tc = s.node.command("tc").args(["qdisc", "show", "dev", &veth]).output().unwrap();
    assert!(String::from_utf8_lossy(&tc.stdout).contains("tbf"), "{tc:?}");
    s.ok("del", net, &pod, Some(&caps));
    assert_eq!(s.pod_veths(), Vec::<String>::new());
    assert_eq!(s.node.ip_json(&["link", "show", "type", "ifb"]), json!([]));
    assert_eq!(s.reservations(net), Vec::<String>::new());
}

/// libcni 1.2's GC and STATUS (cnitool 1.1.2 predates them), run the way libcni runs them on a list whose
/// cniVersion is 1.1.0: every plugin gets GC with the attachments in libcni's result cache that are still
/// valid, and STATUS. Here the runtime forgot pod B but kept A: GC frees B's veth and addresses only.
#[test]
fn gc_and_status_on_the_chain_cnitool_made_as_libcni_1_2_runs_them() {
    let s = site("20-cni-chain-masquerade.conflist");
    let net = "cni-chain-masq";
    let (kept_pod, forgotten) = (Netns::new(), Netns::new());
    s.ok("add", net, &kept_pod, None);
    // libcni caches each attachment (cnitool derives the container ID from the netns path).
    let cached = s.var_lib.files("cni/results");
    assert_eq!(cached.len(), 1, "{cached:?}");
    let text = std::fs::read_to_string(s.var_lib.path().join("cni/results").join(&cached[0])).unwrap();
    let kept_id = serde_json::from_str::<Value>(&text).unwrap()["containerId"].as_str().unwrap().to_string();
    s.ok("add", net, &forgotten, None);

    let mut chain = Chain::shipped("20-cni-chain-masquerade.conflist");
    chain.list["cniVersion"] = json!("1.1.0");
    let store = s.var_lib.path().join("cni/networks");
    chain.overrides.push((0, "ipam.dataDir".into(), json!(store.to_str().unwrap())));
    for reply in chain.each(&s.node, "STATUS", &[]) {
        reply.ok();
    }
    for reply in chain.each(&s.node, "GC", &[(&kept_id, "eth0")]) {
        reply.ok();
    }
    assert_eq!(s.pod_veths().len(), 1, "the forgotten pod's veth is collected");
    assert_eq!(s.reservations(net).len(), 2, "and its two addresses");
    s.ok("check", net, &kept_pod, None);
    assert!(s.outside.peer_of(&kept_pod, "192.0.2.2").is_some(), "the kept pod still works");
    s.ok("del", net, &kept_pod, None);
    s.ok("del", net, &forgotten, None);
    assert_eq!(s.pod_veths(), Vec::<String>::new());
    assert_eq!(s.reservations(net), Vec::<String>::new());
}

/// `cni-chain gc` for a runtime that never sends GC: the attachment cnitool forgot (its cache entry is gone, as
/// after a runtime lost its state) is collected from the libcni cache cnitool wrote; the other stays and works.
#[test]
fn cni_chain_gc_collects_the_attachment_cnitool_forgot() {
    let s = site("20-cni-chain-masquerade.conflist");
    let net = "cni-chain-masq";
    let (kept, forgotten) = (Netns::new(), Netns::new());
    s.ok("add", net, &kept, None);
    let kept_entry = s.var_lib.files("cni/results");
    s.ok("add", net, &forgotten, None);
    let forgotten_entry: Vec<String> =
        s.var_lib.files("cni/results").into_iter().filter(|f| !kept_entry.contains(f)).collect();
    assert_eq!(forgotten_entry.len(), 1);
    std::fs::remove_file(s.var_lib.path().join("cni/results").join(&forgotten_entry[0])).unwrap();

    let conflist = s.conf_dir.path().join("20-cni-chain-masquerade.conflist");
    let out = s
        .in_jail(&integration::bin_dir().join("cni-chain"))
        .arg("gc")
        .arg("--conflist")
        .arg(&conflist)
        .env("CNI_PATH", cni_path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{said}");
    assert!(
        said.contains("1 attachment(s)") && said.contains("ptp: GC done") && said.contains("masquerade: GC done"),
        "{said}"
    );
    assert_eq!(s.pod_veths().len(), 1, "the forgotten pod's veth is collected");
    assert_eq!(s.reservations(net).len(), 2, "and its two addresses");
    s.ok("check", net, &kept, None);
    assert_eq!(s.outside.peer_of(&kept, "192.0.2.2"), Some(ip("192.0.2.1")), "the kept pod still works");
    s.ok("del", net, &kept, None);
    s.ok("del", net, &forgotten, None);
    assert_eq!(s.pod_veths(), Vec::<String>::new());
    assert_eq!(s.reservations(net), Vec::<String>::new());
}

#[test]
fn cnitool_routes_a_pod_through_the_secondary_uplink_with_policy_route() {
    let (node, _outside1, outside2) = node_with_two_uplinks();
    let conf_dir = TempDir::new("cnitool-conf");
    copy_shipped_conflist("50-cni-chain-policy-route.conflist", conf_dir.path());
    let s = Site { node, outside: outside2, conf_dir, var_lib: TempDir::new("cnitool-varlib") };
    let net = "cni-chain-policy-route";
    let pod = Netns::new();
    let result: Value = serde_json::from_str(&s.ok("add", net, &pod, None)).unwrap();
    let address = |i: usize| result["ips"][i]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    let (v4, v6) = (address(0), address(1));
    assert_eq!(s.outside.peer_of(&pod, "203.0.113.9"), Some(ip(&v4)), "beyond outside host 2, with its own address");
    assert_eq!(s.outside.peer_of(&pod, "2001:db8:99::9"), Some(ip(&v6)));
    s.ok("check", net, &pod, None);

    s.ok("del", net, &pod, None);
    for family in ["-4", "-6"] {
        let rules = s.node.ip(&[family, "rule"]);
        assert!(!rules.contains("proto 77"), "{rules}");
    }
    assert!(!s.node.has_nft_table("cni_chain_policy_route"));
    let records = s.var_lib.path().join("cni/cni-chain/policy-route/attachments").join(net);
    assert_eq!(integration::file_names(&records), Vec::<String>::new());
    assert_eq!(s.reservations(net), Vec::<String>::new());
}
