//! `common`'s kernel helpers that no plugin exercises yet (rules, neighbours), and the netns guard.

use common::netlink::{self, Rtnl, RuleSpec};
use common::netns::Netns as NsHandle;
use common::types::parse_cidr;
use integration::Netns;

#[test]
fn policy_rule_looks_up_its_table_and_deletes_idempotently() {
    let ns = Netns::new();
    let rtnl = Rtnl::new().unwrap();
    let h = rtnl.connect_in(&NsHandle::open(ns.path()).unwrap()).unwrap();
    let rule = RuleSpec {
        src: Some(parse_cidr("10.50.0.0/16").unwrap()),
        dst: None,
        fwmark: None,
        ipv6: false,
        table: 1000,
        priority: 900,
        protocol: None,
    };
    rtnl.block_on(netlink::add_rule(&h, &rule)).unwrap();
    let rules = ns.ip_json(&["-4", "rule", "show"]);
    let ours = rules.as_array().unwrap().iter().find(|r| r["priority"] == 900).expect("rule added");
    assert_eq!(ours["src"], "10.50.0.0");
    assert_eq!(ours["srclen"], 16);
    assert_eq!(ours["table"], "1000", "the action must be a table lookup: {ours}");
    assert!(rtnl.block_on(netlink::delete_rule(&h, &rule)).unwrap());
    assert!(!rtnl.block_on(netlink::delete_rule(&h, &rule)).unwrap(), "second delete finds nothing");
}

#[test]
fn permanent_neighbour_is_set_and_replaced() {
    let ns = Netns::new();
    ns.ip(&["link", "add", "n0", "type", "veth", "peer", "name", "n1"]);
    let rtnl = Rtnl::new().unwrap();
    let h = rtnl.connect_in(&NsHandle::open(ns.path()).unwrap()).unwrap();
    let link = rtnl.block_on(netlink::link_by_name(&h, "n0")).unwrap().unwrap();
    let ip = "169.254.1.1".parse().unwrap();
    rtnl.block_on(netlink::set_permanent_neighbour(&h, link.index, ip, &[2, 0, 0, 0, 0, 1])).unwrap();
    rtnl.block_on(netlink::set_permanent_neighbour(&h, link.index, ip, &[2, 0, 0, 0, 0, 2])).unwrap();
    let neigh = ns.ip_json(&["neigh", "show", "dev", "n0"]);
    assert_eq!(neigh[0]["dst"], "169.254.1.1");
    assert_eq!(neigh[0]["lladdr"], "02:00:00:00:00:02");
    assert_eq!(neigh[0]["state"][0], "PERMANENT");
}

#[test]
fn netns_guard_returns_to_the_original_namespace_even_on_panic() {
    let ns = Netns::new();
    let inode = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let target = NsHandle::open(ns.path()).unwrap();
    std::thread::spawn(move || {
        let before = inode("/proc/thread-self/ns/net");
        let caught = std::panic::catch_unwind(|| {
            let _guard = target.enter().unwrap();
            assert_ne!(inode("/proc/thread-self/ns/net"), before, "entered");
            panic!("inside the pod netns");
        });
        assert!(caught.is_err());
        assert_eq!(inode("/proc/thread-self/ns/net"), before, "back after the panic");
    })
    .join()
    .unwrap();
}

#[test]
fn netns_open_refuses_files_that_are_not_namespaces() {
    let dir = integration::TempDir::new("ns");
    let file = dir.path().join("plain");
    std::fs::write(&file, "").unwrap();
    // A bad CNI_NETNS: a regular file, a file on procfs, a namespace of another kind.
    for path in [file.to_str().unwrap(), "/proc/self/status", "/proc/self/ns/mnt"] {
        assert_eq!(NsHandle::open(path).unwrap_err().code(), 4, "{path}");
    }
    assert_eq!(NsHandle::open("/nonexistent").unwrap_err().code(), 3);
    assert!(NsHandle::open("/proc/self/ns/net").is_ok());
}

/// Concurrent DELs rely on it: the kernel refuses, at commit, to delete a set or map of ours that holds an
/// element, and the whole batch (chain flush and delete included) is then void. Kernels before Debian's
/// 6.1.0-57 count elements only in sets that have a size, so ours have one.
#[test]
fn a_map_with_an_element_is_not_deleted_by_the_only_if_empty_batch() {
    use common::nft::{Batch, Element, Nft, Rule};
    let ns = Netns::new();
    let refused = ns.run(|| {
        let mut nft = Nft::open().unwrap();
        let mut b = Batch::new();
        b.add_table("t")
            .add_vmap("t", "m", false)
            .add_set("t", "s", true)
            .add_chain("t", "j")
            .add_nat_postrouting_chain("t", "c")
            .add_rule("t", "c", Rule::new().saddr_vmap(false, "m"), "uses the map")
            .add_elements(
                "t",
                "m",
                &[Element { key: "10.0.0.1".parse().unwrap(), jump: Some("j".into()), comment: None }],
            )
            .add_elements("t", "s", &[Element { key: "fd00::1".parse().unwrap(), jump: None, comment: None }]);
        nft.apply(&b, "making").unwrap();
        let mut map = Batch::new();
        map.flush_chain("t", "c").delete_chain("t", "c").delete_empty_set("t", "m");
        let mut set = Batch::new();
        set.delete_empty_set("t", "s");
        (nft.apply(&map, "deleting the map").is_err(), nft.apply(&set, "deleting the set").is_err())
    });
    assert_eq!(refused, (true, true), "the kernel deleted a map or set that holds an element");
    let ruleset = ns.nft(&["list", "ruleset"]);
    assert!(ruleset.contains("10.0.0.1") && ruleset.contains("fd00::1"), "{ruleset}");
}
