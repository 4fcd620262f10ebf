//! Hostile input: a table of bad inputs for every plugin and every verb, each answered with the right CNI
//! error code, no panic, and the node, the pods and the IPAM stores exactly as they were (links, groups,
//! addresses, routes, rules, the whole nftables ruleset, every store file with its mode and content).
//! The node also holds foreign state (a link, a route, a rule, an nftables table) that must stay untouched.

use integration::runtimes::{node_with_uplink, policy_route_on_one_uplink};
use integration::{assert_same_state, tree_state, Call, Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::path::Path;

/// A live attachment whose state the bad calls aim at: its chain, ID, netns and result.
struct Live {
    chain: Chain,
    id: &'static str,
    pod: Netns,
    result: Value,
}

impl Live {
    fn new(node: &Netns, store: &Path, conflist: &str, id: &'static str) -> Live {
        Live::with(node, Chain::shipped_in(conflist, store), id)
    }

    fn with(node: &Netns, chain: Chain, id: &'static str) -> Live {
        let pod = Netns::new();
        let result = chain.add(node, id, pod.path());
        Live { chain, id, pod, result }
    }
}

/// Where a bad input goes: the verbs, and whether it reaches an IPAM plugin.
#[derive(Clone, Copy, PartialEq)]
enum Reach {
    /// ADD, DEL, CHECK, GC and STATUS.
    EveryVerb,
    /// ADD, DEL and CHECK: the attachment's environment.
    AttachmentVerbs,
    /// Every verb, only of host-local and of the plugins that delegate to it; not DEL of a delegating
    /// plugin, which removes its own veth even when its IPAM plugin refuses (DEL does what it can).
    Ipam,
    /// As `Ipam`, but not DEL at all: a value DEL does not need (a range) never stops it.
    IpamNotDel,
    /// Every verb of the plugins that run an IPAM plugin.
    Delegating,
}

/// Environment changes of a call: a value to set, or None to unset.
type EnvChanges = Vec<(&'static str, Option<String>)>;

struct Case {
    what: &'static str,
    reach: Reach,
    code: u64,
    /// Makes the call from the plugin's valid config: stdin, and env changes.
    make: fn(&Value, &Path) -> (Vec<u8>, EnvChanges),
}

fn set(conf: &Value, key: &str, value: Value) -> Vec<u8> {
    let mut c = conf.clone();
    c[key] = value;
    serde_json::to_vec(&c).unwrap()
}

fn env(key: &'static str, value: &str) -> EnvChanges {
    vec![(key, Some(value.to_string()))]
}

fn valid(conf: &Value) -> Vec<u8> {
    serde_json::to_vec(conf).unwrap()
}

const CASES: &[Case] = &[
    Case {
        what: "malformed JSON",
        reach: Reach::EveryVerb,
        code: 6,
        make: |_, _| (b"{\"cniVersion\":".to_vec(), vec![]),
    },
    Case {
        what: "name of the wrong type",
        reach: Reach::EveryVerb,
        code: 6,
        make: |c, _| (set(c, "name", json!(42)), vec![]),
    },
    Case {
        what: "cniVersion of the wrong type",
        reach: Reach::EveryVerb,
        code: 6,
        make: |c, _| (set(c, "cniVersion", json!(1.0)), vec![]),
    },
    Case {
        what: "5 MiB of input",
        reach: Reach::EveryVerb,
        code: 6,
        make: |c, _| (set(c, "padding", json!("x".repeat(5 << 20))), vec![]),
    },
    Case {
        what: "unknown cniVersion",
        reach: Reach::EveryVerb,
        code: 1,
        make: |c, _| (set(c, "cniVersion", json!("9.9.9")), vec![]),
    },
    Case {
        what: "a network name that walks a path",
        reach: Reach::EveryVerb,
        code: 7,
        make: |c, _| (set(c, "name", json!("../../etc")), vec![]),
    },
    Case {
        what: "CNI_CONTAINERID with /",
        reach: Reach::AttachmentVerbs,
        code: 4,
        make: |c, _| (valid(c), env("CNI_CONTAINERID", "a/b")),
    },
    Case {
        what: "CNI_CONTAINERID ..",
        reach: Reach::AttachmentVerbs,
        code: 4,
        make: |c, _| (valid(c), env("CNI_CONTAINERID", "..")),
    },
    Case {
        what: "CNI_CONTAINERID with ..",
        reach: Reach::AttachmentVerbs,
        code: 4,
        make: |c, _| (valid(c), env("CNI_CONTAINERID", "x/../../etc")),
    },
    Case {
        what: "16-character CNI_IFNAME",
        reach: Reach::AttachmentVerbs,
        code: 4,
        make: |c, _| (valid(c), env("CNI_IFNAME", "sixteen-chars-xx")),
    },
    Case {
        what: "CNI_IFNAME with /",
        reach: Reach::AttachmentVerbs,
        code: 4,
        make: |c, _| (valid(c), env("CNI_IFNAME", "eth/0")),
    },
    Case {
        what: "CNI_NETNS that is a regular file",
        reach: Reach::AttachmentVerbs,
        code: 4,
        make: |c, dir| (valid(c), env("CNI_NETNS", dir.join("regular-file").to_str().unwrap())),
    },
    Case {
        what: "CNI_NETNS that is a symlink to a regular file",
        reach: Reach::AttachmentVerbs,
        code: 4,
        make: |c, dir| (valid(c), env("CNI_NETNS", dir.join("symlink-to-file").to_str().unwrap())),
    },
    Case {
        what: "CNI_PATH unset",
        reach: Reach::AttachmentVerbs,
        code: 4,
        make: |c, _| (valid(c), vec![("CNI_PATH", None)]),
    },
    Case {
        what: "CNI_ARGS not KEY=VALUE",
        reach: Reach::AttachmentVerbs,
        code: 4,
        make: |c, _| (valid(c), env("CNI_ARGS", "novalue")),
    },
    Case {
        what: "CNI_COMMAND unknown",
        reach: Reach::EveryVerb,
        code: 4,
        make: |c, _| (valid(c), env("CNI_COMMAND", "FOO")),
    },
    Case {
        what: "an unknown CNI_ARGS key (no IgnoreUnknown)",
        reach: Reach::Ipam,
        code: 4,
        make: |c, _| (valid(c), env("CNI_ARGS", "NOT_A_KEY=1")),
    },
    Case {
        what: "a dataDir that is a symlink",
        reach: Reach::Ipam,
        code: 7,
        make: |c, dir| {
            let mut c = c.clone();
            c["ipam"]["dataDir"] = json!(dir.join("symlinked-store"));
            (valid(&c), vec![])
        },
    },
    Case {
        what: "a bare IP where a subnet is required",
        reach: Reach::IpamNotDel,
        code: 7,
        make: |c, _| {
            let mut c = c.clone();
            c["ipam"]["ranges"] = json!([[{"subnet": "10.99.0.1"}]]);
            (valid(&c), vec![])
        },
    },
    Case {
        what: "an ipam.type that is a path",
        reach: Reach::Delegating,
        code: 7,
        make: |c, _| {
            let mut c = c.clone();
            c["ipam"]["type"] = json!("../../../bin/sh");
            (valid(&c), vec![])
        },
    },
];

#[test]
fn bad_input_to_every_plugin_and_verb_gets_its_code_and_changes_nothing() {
    let (node, _outside) = node_with_uplink();
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    node.add_foreign_state();
    let stores = TempDir::new("hostile");
    let junk = TempDir::new("hostile-junk");
    std::fs::write(junk.path().join("regular-file"), "").unwrap();
    std::os::unix::fs::symlink(junk.path().join("regular-file"), junk.path().join("symlink-to-file")).unwrap();
    std::fs::create_dir(junk.path().join("real-store")).unwrap();
    std::os::unix::fs::symlink(junk.path().join("real-store"), junk.path().join("symlinked-store")).unwrap();

    let masq = Live::new(&node, stores.path(), "20-cni-chain-masquerade.conflist", "live-masq");
    let v6 = Live::new(&node, stores.path(), "30-cni-chain-egress-v4.conflist", "live-v6");
    let v4 = Live::new(&node, stores.path(), "35-cni-chain-egress-v6.conflist", "live-v4");
    // The policy-route conflist, pointed at this node's one uplink and at a store of the test's.
    let routed = Live::with(&node, policy_route_on_one_uplink(stores.path()), "live-routed");
    let attachments = [(masq.id, "eth0"), (v6.id, "eth0"), (v4.id, "eth0"), (routed.id, "eth0")];
    let snapshot = || {
        let pods = [masq.pod.state(), v6.pod.state(), v4.pod.state(), routed.pod.state()].join("\n");
        [node.state(), pods, tree_state(stores.path()), tree_state(junk.path())].join("\n")
    };
    for ns in [&node, &masq.pod, &v6.pod, &v4.pod, &routed.pod] {
        ns.settled_state();
    }
    let before = snapshot();

    // (plugin, whether it uses IPAM, the live attachment, its index in the chain)
    let targets = [
        ("ptp", true, &masq, 0),
        ("host-local", true, &masq, 0),
        ("linkgroup", false, &masq, 1),
        ("masquerade", false, &masq, 2),
        ("egress-v4", true, &v6, 1),
        ("egress-v6", true, &v4, 1),
        ("policy-route", false, &routed, 1),
    ];
    let mut calls = 0;
    for (plugin, uses_ipam, live, index) in targets {
        for verb in ["ADD", "DEL", "CHECK", "GC", "STATUS"] {
            let attachment_verb = matches!(verb, "ADD" | "DEL" | "CHECK");
            let mut conf = match verb {
                "GC" => serde_json::from_slice(&integration::with_valid_attachments(
                    &live.chain.config(index, None),
                    &attachments,
                ))
                .unwrap(),
                "STATUS" => live.chain.config(index, None),
                _ => live.chain.config(index, Some(&live.result)),
            };
            if plugin == "host-local" {
                conf["type"] = json!("host-local");
            }
            for case in CASES {
                let applies = match case.reach {
                    Reach::EveryVerb => true,
                    Reach::AttachmentVerbs => attachment_verb,
                    Reach::Ipam => uses_ipam && !(verb == "DEL" && plugin != "host-local"),
                    Reach::IpamNotDel => uses_ipam && verb != "DEL",
                    Reach::Delegating => uses_ipam && plugin != "host-local",
                };
                if !applies {
                    continue;
                }
                let (stdin, env) = (case.make)(&conf, junk.path());
                let mut call = Call::new(plugin, verb, live.id, live.pod.path());
                for (k, v) in &env {
                    call = call.env(k, v.as_deref());
                }
                let reply = call.run(&node, &stdin);
                let context = format!("{plugin} {verb} with {}", case.what);
                assert!(!reply.stderr.contains("panicked"), "{context}: panic: {}", reply.stderr);
                assert!(!reply.success, "{context}: succeeded: {}", reply.stdout);
                let got = serde_json::from_str::<Value>(&reply.stdout)
                    .unwrap_or_else(|e| panic!("{context}: stdout is not a CNI error ({e}): {:?}", reply.stdout));
                // An ADD aimed at the live attachment is refused as such (109) before the IPAM input is read.
                let live_add = verb == "ADD" && uses_ipam && plugin != "host-local";
                let code = if live_add && matches!(case.reach, Reach::Ipam | Reach::IpamNotDel | Reach::Delegating) {
                    109
                } else {
                    case.code
                };
                assert_eq!(got["code"], code, "{context}: {got}");
                assert!(got["msg"].as_str().is_some_and(|m| !m.is_empty()), "{context}: no message: {got}");
                assert_same_state(&before, &snapshot(), &context);
                calls += 1;
            }
        }
    }
    assert!(calls > 250, "only {calls} bad calls ran");

    // The live attachments still work, and leave nothing when deleted.
    for live in [&masq, &v6, &v4, &routed] {
        assert!(live.chain.check(&node, live.id, live.pod.path(), &live.result).iter().all(|r| r.success));
        live.chain.del(&node, live.id, live.pod.path(), Some(&live.result));
    }
    assert_eq!(node.veths(), ["uplink", "foreign1", "foreign0"], "only the test's own veths are left");
    assert!(!node.ip(&["rule"]).contains("proto 77") && !node.has_nft_table("cni_chain_policy_route"));
    assert!(integration::reservations_in(&stores.path().join("live-masq-0/cni-chain-masq")).is_empty());
}
