//! host-local run per the protocol: alone, under ptp, and side by side with the reference host-local on
//! one store. Every test has its own node netns and dataDir.

use integration::{with_prev_result, with_valid_attachments, Call, Netns, Reply, TempDir};
use serde_json::{json, Value};
use std::collections::HashSet;

const REFERENCE: &str = "/usr/lib/cni/host-local";

/// The config a main plugin hands its IPAM plugin: its own, `ipam` included.
fn conf(version: &str, data: &TempDir, ranges: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": "hlnet",
        "type": "ptp",
        "ipam": {"type": "host-local", "dataDir": data.str(), "ranges": ranges},
    })
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn call(plugin: &str, verb: &str, id: &str, node: &Netns, stdin: &[u8]) -> Reply {
    Call::new(plugin, verb, id, node.path()).run(node, stdin)
}

fn addresses(r: &Value) -> Vec<String> {
    r["ips"].as_array().unwrap().iter().map(|ip| ip["address"].as_str().unwrap().to_string()).collect()
}

/// The reservation files (addresses) in the network's store.
fn reserved(data: &TempDir) -> Vec<String> {
    integration::reservations_in(&data.path().join("hlnet"))
}

#[test]
fn results_at_every_version_with_routes_and_dns() {
    let (node, data) = (Netns::new(), TempDir::new("hl"));
    let resolv = data.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.40.0.10\nsearch svc.local\noptions ndots:5\n").unwrap();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let mut c = conf(version, &data, json!([[{"subnet": "10.40.0.0/24"}], [{"subnet": "fd40::/64"}]]));
        c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "fd99::/64", "gw": "fd40::1"}]);
        c["ipam"]["resolvConf"] = json!(resolv.to_str().unwrap());
        let r = call("host-local", "ADD", "v", &node, &bytes(&c)).ok();
        assert_eq!(r["cniVersion"], version);
        assert_eq!(addresses(&r), ["10.40.0.2/24", "fd40::2/64"], "{version}");
        assert_eq!(r["ips"][0]["gateway"], "10.40.0.1");
        assert_eq!(r["ips"][1]["gateway"], "fd40::1");
        assert_eq!(r["ips"][0].get("version").is_some(), version < "1.0.0", "{version}: {r}");
        assert!(r.get("interfaces").is_none());
        assert_eq!(r["routes"][1], json!({"dst": "fd99::/64", "gw": "fd40::1"}));
        assert_eq!(r["dns"], json!({"nameservers": ["10.40.0.10"], "search": ["svc.local"], "options": ["ndots:5"]}));
        if version >= "0.4.0" {
            call("host-local", "CHECK", "v", &node, &with_prev_result(&c, &r)).ok();
        }
        call("host-local", "DEL", "v", &node, &bytes(&c)).ok();
        call("host-local", "DEL", "v", &node, &bytes(&c)).ok();
        assert!(reserved(&data).is_empty(), "{version}: {:?}", data.files("hlnet"));
        // Each version starts from an empty store (round-robin would move on otherwise).
        std::fs::remove_dir_all(data.path().join("hlnet")).unwrap();
    }
}

#[test]
fn ptp_with_our_host_local_at_1_1_check_status_gc_and_del() {
    let (node, data) = (Netns::new(), TempDir::new("hl"));
    let mut c = conf("1.1.0", &data, json!([[{"subnet": "10.41.0.0/24"}], [{"subnet": "fd41::/64"}]]));
    c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
    let pods = [Netns::new(), Netns::new()];
    let results: Vec<Value> = pods
        .iter()
        .zip(["p1", "p2"])
        .map(|(pod, id)| Call::new("ptp", "ADD", id, pod.path()).run(&node, &bytes(&c)).ok())
        .collect();
    assert_eq!(addresses(&results[0]), ["10.41.0.2/24", "fd41::2/64"]);
    assert_eq!(addresses(&results[1]), ["10.41.0.3/24", "fd41::3/64"]);
    assert_eq!(pods[0].addresses("eth0"), ["10.41.0.2/24", "fd41::2/64"]);
    assert!(pods[0].ping("10.41.0.3"), "pod to pod over IPv4");
    assert!(pods[0].ping("fd41::3"), "pod to pod over IPv6");
    let file = data.path().join("hlnet/10.41.0.2");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "p1\r\neth0");

    let check = |id: &str, pod: &Netns, r: &Value| {
        Call::new("ptp", "CHECK", id, pod.path()).run(&node, &with_prev_result(&c, r))
    };
    check("p1", &pods[0], &results[0]).ok();
    // The reservation vanished behind our back: CHECK (delegated to host-local) says so.
    std::fs::remove_file(&file).unwrap();
    let msg = check("p1", &pods[0], &results[0]).err(104);
    assert!(msg.contains("10.41.0.2"), "{msg}");
    std::fs::write(&file, "p1\r\neth0").unwrap();
    check("p1", &pods[0], &results[0]).ok();

    Call::new("ptp", "STATUS", "", "").run(&node, &bytes(&c)).ok();

    // GC: p2 is no longer wanted; its veth and both its addresses go, p1 keeps everything.
    Call::new("ptp", "GC", "", "").run(&node, &with_valid_attachments(&c, &[("p1", "eth0")])).ok();
    assert_eq!(reserved(&data), ["10.41.0.2", "fd41::2"]);
    assert_eq!(node.veths().len(), 1);
    assert!(pods[1].link("eth0").is_none());
    assert!(pods[0].ping("10.41.0.1"));

    Call::new("ptp", "DEL", "p1", pods[0].path()).run(&node, &with_prev_result(&c, &results[0])).ok();
    assert!(reserved(&data).is_empty());
    assert!(node.veths().is_empty());
}

#[test]
fn interop_with_the_reference_on_one_data_dir() {
    let (node, data) = (Netns::new(), TempDir::new("hl"));
    let c = conf("1.0.0", &data, json!([[{"subnet": "10.42.0.0/24"}]]));
    let c_bytes = bytes(&c);
    let add = |plugin: &str, id: &str| addresses(&call(plugin, "ADD", id, &node, &c_bytes).ok());

    // Each continues the other's round-robin and never hands out what the other reserved.
    assert_eq!(add(REFERENCE, "ref-a"), ["10.42.0.2/24"]);
    assert_eq!(add("host-local", "ours-b"), ["10.42.0.3/24"]);
    assert_eq!(add(REFERENCE, "ref-c"), ["10.42.0.4/24"]);
    let taken = Call::new("host-local", "ADD", "ours-d", node.path()).env("CNI_ARGS", Some("IP=10.42.0.2"));
    assert!(taken.run(&node, &c_bytes).err(107).contains("10.42.0.2"));
    let taken = Call::new(REFERENCE, "ADD", "ref-e", node.path()).env("CNI_ARGS", Some("IP=10.42.0.3"));
    assert!(!taken.run(&node, &c_bytes).success, "the reference handed out our address");

    // Each CHECKs and DELs what the other reserved.
    let prev = |addr: &str| with_prev_result(&c, &json!({"cniVersion": "1.0.0", "ips": [{"address": addr}]}));
    call("host-local", "CHECK", "ref-a", &node, &prev("10.42.0.2/24")).ok();
    call(REFERENCE, "CHECK", "ours-b", &node, &prev("10.42.0.3/24")).ok();
    call("host-local", "DEL", "ref-a", &node, &c_bytes).ok();
    call(REFERENCE, "DEL", "ours-b", &node, &c_bytes).ok();
    assert_eq!(reserved(&data), ["10.42.0.4"]);

    // A file in the older ID-only format belongs to its container.
    std::fs::write(data.path().join("hlnet/10.42.0.9"), "old-f").unwrap();
    call("host-local", "CHECK", "old-f", &node, &prev("10.42.0.9/24")).ok();
    call("host-local", "DEL", "old-f", &node, &c_bytes).ok();
    assert_eq!(reserved(&data), ["10.42.0.4"]);
    // Our index beside the reservations does not disturb the reference.
    assert_eq!(add("host-local", "ours-h"), ["10.42.0.5/24"]);
    call(REFERENCE, "DEL", "ours-h", &node, &c_bytes).ok();
    assert_eq!(add(REFERENCE, "ref-i"), ["10.42.0.6/24"]);
    call("host-local", "DEL", "ref-i", &node, &c_bytes).ok();
    assert_eq!(reserved(&data), ["10.42.0.4"]);

    // ptp with the reference as its IPAM; our host-local releases the address on DEL.
    let pod = Netns::new();
    let reference_first = format!("/usr/lib/cni:{}", integration::cni_path());
    let r =
        Call::new("ptp", "ADD", "ptp-g", pod.path()).env("CNI_PATH", Some(&reference_first)).run(&node, &c_bytes).ok();
    assert_eq!(addresses(&r), ["10.42.0.7/24"], "after the last reserved, .6");
    assert!(pod.ping("10.42.0.1"));
    Call::new("ptp", "DEL", "ptp-g", pod.path()).run(&node, &c_bytes).ok();
    assert_eq!(reserved(&data), ["10.42.0.4"]);
    assert!(node.veths().is_empty());
}

#[test]
fn gc_releases_every_reservation_not_in_valid_attachments() {
    let (node, data) = (Netns::new(), TempDir::new("hl"));
    let c = conf("1.1.0", &data, json!([[{"subnet": "10.43.0.0/24"}]]));
    // GC of a network that never stored anything creates nothing.
    Call::new("host-local", "GC", "", "").run(&node, &with_valid_attachments(&c, &[])).ok();
    assert!(data.files("").is_empty());

    for (id, ifname) in [("c1", "eth0"), ("c1", "net1"), ("c2", "eth0")] {
        Call::new("host-local", "ADD", id, node.path()).ifname(ifname).run(&node, &bytes(&c)).ok();
    }
    std::fs::write(data.path().join("hlnet/10.43.0.50"), "c3").unwrap();
    std::fs::write(data.path().join("hlnet/10.43.0.51"), "c4").unwrap();
    std::fs::write(data.path().join("hlnet/10.43.0.52"), "").unwrap();
    Call::new("host-local", "GC", "", "")
        .run(&node, &with_valid_attachments(&c, &[("c1", "eth0"), ("c3", "eth0")]))
        .ok();
    assert_eq!(reserved(&data), ["10.43.0.2", "10.43.0.50"]);
    assert!(data.files("hlnet").contains(&"lock".to_string()));
    Call::new("host-local", "GC", "", "").run(&node, &with_valid_attachments(&c, &[])).ok();
    assert!(reserved(&data).is_empty());
}

/// Run `call` in a private mount namespace where `dir` is mounted read-only.
fn read_only(call: Call<'_>, node: &Netns, dir: &std::path::Path, stdin: &[u8]) -> Reply {
    let dir = dir.to_path_buf();
    call.run_with(node, stdin, |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: unshare and mount are plain syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                use nix::mount::{mount, MsFlags};
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)?;
                mount(Some(&dir), &dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
                let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                mount(None::<&str>, &dir, None::<&str>, ro, None::<&str>)?;
                Ok(())
            });
        }
    })
}

#[test]
fn status_reports_an_unwritable_store_and_a_full_range() {
    let (node, data) = (Netns::new(), TempDir::new("hl"));
    let c = conf("1.1.0", &data, json!([[{"subnet": "10.44.0.0/24"}], [{"subnet": "10.45.0.0/30"}]]));
    let status = || Call::new("host-local", "STATUS", "", "");
    status().run(&node, &bytes(&c)).ok();
    assert!(data.files("").is_empty(), "STATUS wrote something");

    let msg = read_only(status(), &node, data.path(), &bytes(&c)).err(50);
    assert!(msg.contains("cannot write"), "{msg}");
    let mut below_a_file = c.clone();
    std::fs::write(data.path().join("file"), "").unwrap();
    below_a_file["ipam"]["dataDir"] = json!(data.path().join("file/sub"));
    assert!(status().run(&node, &bytes(&below_a_file)).err(50).contains("not a directory"));

    // The /30 has one address besides its gateway: once it is taken, the plugin cannot serve an ADD.
    call("host-local", "ADD", "only", &node, &bytes(&c)).ok();
    let msg = status().run(&node, &bytes(&c)).err(50);
    assert!(msg.contains("range set 1") && msg.contains("10.45.0.0/30"), "{msg}");
    assert!(Call::new("ptp", "STATUS", "", "").run(&node, &bytes(&c)).err(50).contains("range set 1"), "through ptp");
    let msg = call("host-local", "ADD", "more", &node, &bytes(&c)).err(106);
    assert!(msg.contains("range set 1"), "{msg}");
    call("host-local", "DEL", "only", &node, &bytes(&c)).ok();
    status().run(&node, &bytes(&c)).ok();
}

#[test]
fn parallel_adds_get_distinct_addresses_and_parallel_dels_free_them() {
    let (node, data) = (Netns::new(), TempDir::new("hl"));
    let c = bytes(&conf("1.0.0", &data, json!([[{"subnet": "10.46.0.0/24"}], [{"subnet": "fd46::/64"}]])));
    let ids: Vec<String> = (0..64).map(|i| format!("par{i}")).collect();
    let got: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            ids.iter().map(|id| s.spawn(|| addresses(&call("host-local", "ADD", id, &node, &c).ok()))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let v4: HashSet<&String> = got.iter().map(|a| &a[0]).collect();
    let v6: HashSet<&String> = got.iter().map(|a| &a[1]).collect();
    assert_eq!((v4.len(), v6.len()), (64, 64), "duplicate addresses handed out");
    assert_eq!(reserved(&data).len(), 128);
    std::thread::scope(|s| {
        for id in &ids {
            s.spawn(|| call("host-local", "DEL", id, &node, &c).ok());
        }
    });
    assert!(reserved(&data).is_empty(), "{:?}", reserved(&data));
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let (node, data) = (Netns::new(), TempDir::new("hl"));
    let with_ranges = |ranges: Value| bytes(&conf("1.0.0", &data, ranges));
    let cases: Vec<(Vec<u8>, u64, &str)> = vec![
        (with_ranges(json!([[{"subnet": "10.47.0.0/24"}], [{"subnet": "10.47.0.0/25"}]])), 7, "overlaps"),
        (with_ranges(json!([[{"subnet": "10.47.0.0/24", "rangeStart": "10.48.0.1"}]])), 7, "outside the subnet"),
        (with_ranges(json!([[{"subnet": "10.47.0.0/24", "gateway": "10.48.0.1"}]])), 7, "outside the subnet"),
        (with_ranges(json!([[{"subnet": "10.47.0.0"}]])), 7, "CIDR"),
        (with_ranges(json!([[{"subnet": "10.47.0.0/24", "rangeEnd": 5}]])), 6, ""),
        (with_ranges(json!([])), 7, "no ranges"),
        (br#"{"cniVersion":"1.0.0","name":"../etc","type":"ptp","ipam":{"type":"host-local","subnet":"10.47.0.0/24"}}"#.to_vec(), 7, "network name"),
        (br#"{"cniVersion":"1.0.0","name":"a/b","type":"ptp","ipam":{"type":"host-local","subnet":"10.47.0.0/24"}}"#.to_vec(), 7, "network name"),
    ];
    for (stdin, code, want) in &cases {
        let msg = call("host-local", "ADD", "bad", &node, stdin).err(*code);
        assert!(msg.contains(want), "{}: {msg}", String::from_utf8_lossy(stdin));
    }
    let good = with_ranges(json!([[{"subnet": "10.47.0.0/24"}]]));
    for id in ["a/b", "a..b", ".."] {
        call("host-local", "ADD", id, &node, &good).err(4);
    }
    Call::new("host-local", "ADD", "bad", node.path()).env("CNI_ARGS", Some("IP=10.47.0.300")).run(&node, &good).err(4);
    assert!(data.files("").is_empty(), "{:?}", data.files(""));
}

/// ptp runs our host-local's code in its own process when `ipam.type` resolves to our host-local of the same
/// build, and as a process otherwise (here a script in front of the same executable): the replies, errors and
/// stores are the same either way.
#[test]
fn ptp_runs_our_host_local_itself_with_the_same_effects_as_running_it() {
    let wrapper = TempDir::new("hl-wrapper");
    let script = format!("#!/bin/sh\nexec {} \"$@\"\n", integration::bin_dir().join("host-local").display());
    std::fs::write(wrapper.path().join("host-local"), script).unwrap();
    std::fs::set_permissions(wrapper.path().join("host-local"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    let run_through = |cni_path: Option<String>| {
        let (node, data, logs) = (Netns::new(), TempDir::new("hl-same"), TempDir::new("hl-log"));
        let mut c = conf(
            "1.0.0",
            &data,
            json!([[{"subnet": "10.41.0.0/29", "rangeEnd": "10.41.0.3"}], [{"subnet": "fd41::/64"}]]),
        );
        c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
        c["logLevel"] = json!("debug");
        c["logFile"] = json!(logs.path().join("log"));
        let mut replies = Vec::new();
        let pods: Vec<Netns> = (0..3).map(|_| Netns::new()).collect();
        for (i, pod) in pods.iter().enumerate() {
            let id = format!("pod{i}");
            let mut call = Call::new("ptp", "ADD", &id, pod.path());
            if let Some(path) = &cni_path {
                call = call.env("CNI_PATH", Some(path));
            }
            // The third ADD finds the range full: host-local's error, as ptp passes it on.
            let reply = call.run(&node, &bytes(&c));
            let mut v = reply.json();
            for key in ["interfaces", "mac"] {
                v.as_object_mut().map(|o| o.remove(key));
            }
            replies.push((reply.success, v));
        }
        let store = reserved(&data);
        for (i, pod) in pods.iter().enumerate() {
            let id = format!("pod{i}");
            let mut call = Call::new("ptp", "DEL", &id, pod.path());
            if let Some(path) = &cni_path {
                call = call.env("CNI_PATH", Some(path));
            }
            call.run(&node, &bytes(&c)).ok();
        }
        let log = std::fs::read_to_string(logs.path().join("log")).unwrap_or_default();
        (replies, store, reserved(&data), log.contains("runs in this process"))
    };
    let itself = run_through(None);
    let as_process = run_through(Some(format!("{}:{}", wrapper.str(), integration::cni_path())));
    assert_eq!(itself.0, as_process.0, "the replies");
    assert_eq!(itself.0.iter().map(|r| r.0).collect::<Vec<_>>(), [true, true, false], "{:?}", itself.0);
    assert!(itself.0[2].1["msg"].as_str().unwrap().starts_with("IPAM host-local: no free address"), "{:?}", itself.0);
    assert_eq!(itself.1, as_process.1, "the store after the ADDs");
    assert_eq!(itself.1.len(), 2 * 2);
    assert_eq!((itself.2.len(), as_process.2.len()), (0, 0), "the DELs released everything");
    assert_eq!((itself.3, as_process.3), (true, false), "which ran it in its own process");
}
