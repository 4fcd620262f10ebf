//! Podman 4 (Debian 12) with its CNI backend runs containers on the shipped conflists. Podman runs inside
//! the test's node netns and a private mount namespace (see `integration::runtimes`), with a private
//! containers.conf, storage and run directory: the machine's own Podman state is never touched.

use integration::runtimes::{
    cni_dirs, node_with_two_uplinks, node_with_uplink, podman, podman_conf, podman_import_busybox, stdout_of, Jail,
};
use integration::{file_names, reservations_in, Netns};
use std::net::IpAddr;
use std::process::Command;

struct Podman {
    jail: Jail,
    node: Netns,
    outside: Netns,
    /// Namespaces the node's other links lead to, kept as long as the node.
    _elsewhere: Vec<Netns>,
}

impl Podman {
    /// Podman with the shipped `conflist`, on a node with an uplink to an outside host.
    fn new(conflist: &str) -> Podman {
        let (node, outside) = node_with_uplink();
        Podman::on(conflist, node, outside, vec![])
    }

    /// Podman with the shipped `conflist` on `node`, whose traffic under test goes to `outside`.
    fn on(conflist: &str, node: Netns, outside: Netns, elsewhere: Vec<Netns>) -> Podman {
        let jail = Jail::new("podman");
        let (bin, conf) = cni_dirs(&jail, conflist);
        podman_conf(&jail, Some((&bin, &conf)));
        let podman = Podman { jail, node, outside, _elsewhere: elsewhere };
        let changes = [r#"CMD ["/bin/sh"]"#, "ENV PATH=/bin"];
        podman_import_busybox(&podman.jail, &podman.node, &changes, "local/busybox");
        podman
    }

    fn command(&self) -> Command {
        podman(&self.jail, &self.node)
    }

    fn ok(&self, args: &[&str]) -> String {
        stdout_of(&format!("podman {args:?}"), self.command().args(args).output().unwrap())
    }

    /// A container that sleeps on `network`, allowed to ping.
    fn start(&self, name: &str, network: &str) {
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--cap-add",
            "NET_RAW",
            "local/busybox",
            "sleep",
            "600",
        ]);
    }

    fn address(&self, name: &str, network: &str, v6: bool) -> String {
        let field = if v6 { "GlobalIPv6Address" } else { "IPAddress" };
        self.ok(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{network}\").{field}}}}}"), name])
    }

    fn exec_ok(&self, name: &str, cmd: &[&str]) -> bool {
        self.command().args(["exec", name]).args(cmd).output().unwrap().status.success()
    }

    /// The address the outside host sees when container `name` connects to it over TCP.
    fn seen_outside(&self, name: &str, outside_addr: &str) -> Option<IpAddr> {
        self.outside.source_of(0, |port| self.exec_ok(name, &["nc", "-w", "3", outside_addr, &port.to_string()]))
    }

    fn pod_veths(&self) -> Vec<String> {
        // Every veth but the node's uplinks.
        self.node.veths().into_iter().filter(|v| !["uplink", "eth0", "eth1"].contains(&v.as_str())).collect()
    }

    /// host-local's reservations under the private /var/lib.
    fn reservations(&self, store: &str) -> Vec<String> {
        reservations_in(&self.jail.var_lib(store))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Also after a failed assert: stop and remove every container (and so its network) before the jail goes.
        let _ = self.command().args(["rm", "--all", "--force", "--time", "0"]).output();
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn podman_containers_on_the_masquerade_chain() {
    let p = Podman::new("20-cni-chain-masquerade.conflist");
    let net = "cni-chain-masq";
    p.start("c1", net);
    p.start("c2", net);
    let (c1_v4, c1_v6) = (p.address("c1", net, false), p.address("c1", net, true));
    assert!(c1_v4.starts_with("10.89.") && c1_v6.starts_with("fd89::"), "{c1_v4} {c1_v6}");
    assert_eq!(p.pod_veths().len(), 2);
    for veth in p.pod_veths() {
        assert_eq!(p.node.link(&veth).unwrap()["group"], "8", "linkgroup ran");
    }
    assert!(p.exec_ok("c2", &["ping", "-c", "1", "-W", "2", &c1_v4]), "c2 pings c1 over IPv4");
    assert!(p.exec_ok("c2", &["ping", "-c", "1", "-W", "2", &c1_v6]), "c2 pings c1 over IPv6");
    assert_eq!(p.seen_outside("c1", "192.0.2.2"), Some(ip("192.0.2.1")), "masqueraded as the node");
    assert_eq!(p.seen_outside("c1", "2001:db8::2"), Some(ip("2001:db8::1")));
    assert_eq!(p.reservations("cni/networks/cni-chain-masq").len(), 4);

    p.ok(&["rm", "--force", "--time", "0", "c1", "c2"]);
    assert_eq!(p.pod_veths(), Vec::<String>::new());
    assert_eq!(p.reservations("cni/networks/cni-chain-masq"), Vec::<String>::new());
    assert_eq!(file_names(&p.jail.var_lib("cni/results")), Vec::<String>::new(), "libcni's cache is cleared");
    assert_eq!(p.node.nft_elements("masq_group_8"), vec![], "group mode has no per-pod state");
}

#[test]
fn podman_ipv6_container_with_egress_v4() {
    let p = Podman::new("30-cni-chain-egress-v4.conflist");
    p.node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    p.outside.ip(&["-6", "route", "add", "fd90::/64", "via", "2001:db8::1"]);
    let net = "cni-chain-v6";
    p.start("c6", net);
    let c6 = p.address("c6", net, true);
    assert!(c6.starts_with("fd90::"), "{c6}");
    assert_eq!(p.seen_outside("c6", "192.0.2.2"), Some(ip("192.0.2.1")), "IPv4 egress as the node");
    assert_eq!(p.seen_outside("c6", "2001:db8::2"), Some(ip(&c6)), "IPv6 keeps the container's address");
    let elements = p.node.nft_elements("egress_v4_192_0_2_1");
    assert_eq!(elements.len(), 1, "{elements:?}");

    p.ok(&["rm", "--force", "--time", "0", "c6"]);
    assert_eq!(p.pod_veths(), Vec::<String>::new());
    assert_eq!(p.node.nft_elements("egress_v4_192_0_2_1"), vec![]);
    assert!(!p.node.nft(&["list", "tables"]).contains("cni_chain"), "the last pod took the table with it");
    assert_eq!(p.reservations("cni/networks/cni-chain-v6"), Vec::<String>::new());
    assert_eq!(p.reservations("cni/egress-v4/cni-chain-v6"), Vec::<String>::new());
}

#[test]
fn podman_ipv4_container_with_egress_v6() {
    let p = Podman::new("35-cni-chain-egress-v6.conflist");
    p.node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    p.node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    p.outside.ip(&["route", "add", "10.91.0.0/16", "via", "192.0.2.1"]);
    let net = "cni-chain-v4";
    p.start("c4", net);
    let c4 = p.address("c4", net, false);
    assert!(c4.starts_with("10.91."), "{c4}");
    assert_eq!(p.address("c4", net, true), "", "the unique-local address is not the container's IPv6 address");
    assert_eq!(p.seen_outside("c4", "2001:db8::2"), Some(ip("2001:db8::1")), "IPv6 egress as the node");
    assert_eq!(p.seen_outside("c4", "192.0.2.2"), Some(ip(&c4)), "IPv4 keeps the container's address");
    let elements = p.node.nft_elements("egress_v6_2001_db8__1");
    assert_eq!(elements.len(), 1, "{elements:?}");

    p.ok(&["rm", "--force", "--time", "0", "c4"]);
    assert_eq!(p.pod_veths(), Vec::<String>::new());
    assert!(!p.node.nft(&["list", "tables"]).contains("cni_chain"), "the last pod took the table with it");
    assert_eq!(p.reservations("cni/networks/cni-chain-v4"), Vec::<String>::new());
    assert_eq!(p.reservations("cni/egress-v6/cni-chain-v4"), Vec::<String>::new());
}

#[test]
fn podman_container_leaves_through_the_secondary_uplink_with_policy_route() {
    let (node, outside1, outside2) = node_with_two_uplinks();
    let p = Podman::on("50-cni-chain-policy-route.conflist", node, outside2, vec![outside1]);
    let net = "cni-chain-policy-route";
    p.start("pr", net);
    let (v4, v6) = (p.address("pr", net, false), p.address("pr", net, true));
    assert_eq!(p.seen_outside("pr", "203.0.113.9"), Some(ip(&v4)), "beyond outside host 2, with its own address");
    assert_eq!(p.seen_outside("pr", "2001:db8:99::9"), Some(ip(&v6)));
    let rules = p.node.ip(&["rule"]);
    assert!(rules.contains(&format!("1536:\tfrom {v4} lookup 101 proto 77")), "{rules}");

    p.ok(&["rm", "--force", "--time", "0", "pr"]);
    assert_eq!(p.pod_veths(), Vec::<String>::new());
    for family in ["-4", "-6"] {
        let rules = p.node.ip(&[family, "rule"]);
        assert!(!rules.contains("proto 77"), "{rules}");
    }
    assert!(!p.node.has_nft_table("cni_chain_policy_route"));
    let records = p.jail.var_lib("cni/cni-chain/policy-route/attachments/cni-chain-policy-route");
    assert_eq!(file_names(&records), Vec::<String>::new());
    assert_eq!(p.reservations("cni/networks/cni-chain-policy-route"), Vec::<String>::new());
}
