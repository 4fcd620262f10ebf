//! What is measured: chains of plugin binaries with their configs, run the way libcni runs a conflist
//! (ADD in order, each result the next one's prevResult; DEL in reverse with the final result), and the floor.

use crate::exec;
use crate::pod::PodNetns;
use crate::stats::Samples;
use integration::{bin_dir, Netns, TempDir, REFERENCE_DIR};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub struct Chain {
    pub key: &'static str,
    pub label: &'static str,
    cni_path: String,
    plugins: Vec<(PathBuf, Value)>,
    _data: TempDir,
    /// Peak RSS (KiB) seen per binary, as "ours ptp", "reference portmap"...
    pub rss: Mutex<BTreeMap<String, u64>>,
    /// Each call's time per binary and verb, as "ours ptp DEL".
    pub calls: Mutex<BTreeMap<String, Samples>>,
    /// What the chain needs on its node first (links its config names).
    prepare: fn(&Netns),
}

/// What a measured ADD leaves for its DEL.
pub enum Added {
    Result(Value),
    HostIfname(String),
}

/// Something with an ADD and a DEL to time, on a node, for one pod.
pub trait Subject: Sync {
    fn label(&self) -> &str;
    /// Set up what the subject needs on a fresh node (once per node).
    fn prepare(&self, _node: &Netns) {}
    fn add(&self, node: &Netns, id: &str, pod: &PodNetns) -> (Duration, Added);
    fn del(&self, node: &Netns, id: &str, pod: &PodNetns, added: &Added) -> Duration;
    /// Each plugin call's time since the last take, by binary and verb (a chain's; nothing for the others).
    fn take_calls(&self) -> BTreeMap<String, Samples> {
        BTreeMap::new()
    }
}

fn ours(name: &str) -> PathBuf {
    bin_dir().join(name)
}

fn reference(name: &str) -> PathBuf {
    PathBuf::from(REFERENCE_DIR).join(name)
}

/// The bench's own executables (the floor): beside this one.
fn bench_bin(name: &str) -> PathBuf {
    std::env::current_exe().ok().and_then(|me| me.parent().map(|dir| dir.join(name))).unwrap_or_else(|| name.into())
}

fn ptp(ip_masq: bool, data: &TempDir) -> Value {
    json!({
        "type": "ptp",
        "ipMasq": ip_masq,
        "ipam": {
            "type": "host-local",
            "dataDir": data.str(),
            "ranges": [[{"subnet": "10.60.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    })
}

fn portmap() -> Value {
    json!({"type": "portmap", "capabilities": {"portMappings": true},
           "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}})
}

impl Chain {
    fn new(
        key: &'static str,
        label: &'static str,
        reference_only: bool,
        plugins: Vec<(PathBuf, Value)>,
        data: TempDir,
    ) -> Chain {
        let cni_path =
            if reference_only { REFERENCE_DIR.to_string() } else { format!("{}:{REFERENCE_DIR}", bin_dir().display()) };
        Chain {
            key,
            label,
            cni_path,
            plugins,
            _data: data,
            rss: Mutex::default(),
            calls: Mutex::default(),
            prepare: |_| {},
        }
    }

    pub fn ours_ptp() -> Chain {
        let data = TempDir::new("bench");
        let plugins = vec![(ours("ptp"), ptp(false, &data))];
        Chain::new("ours_ptp", "ours: ptp + host-local", false, plugins, data)
    }

    /// The reference's features (ipMasq) and ours (linkGroup) in our one plugin.
    pub fn ours_ptp_masq() -> Chain {
        let data = TempDir::new("bench");
        let mut conf = ptp(true, &data);
        conf["linkGroup"] = json!(8);
        Chain::new(
            "ours_ptp_masq",
            "ours: ptp (ipMasq, linkGroup) + host-local",
            false,
            vec![(ours("ptp"), conf)],
            data,
        )
    }

    pub fn ours_chain() -> Chain {
        let data = TempDir::new("bench");
        let plugins = vec![
            (ours("ptp"), ptp(false, &data)),
            (ours("linkgroup"), json!({"type": "linkgroup", "group": 8})),
            (ours("masquerade"), json!({"type": "masquerade", "mode": "group", "podGroup": 8, "excludeGroups": [9]})),
        ];
        Chain::new("ours_chain", "ours: ptp + linkgroup + masquerade + host-local", false, plugins, data)
    }

    /// ptp then policy-route with a secondary uplink and NodePort support, on a node with both uplinks.
    pub fn ours_policy_route() -> Chain {
        let data = TempDir::new("bench");
        let policy = json!({"type": "policy-route", "table": 101, "uplink": "eth1", "gateway": "198.51.100.1",
            "primary": {"interface": "eth0", "mark": "0x80"}, "dataDir": data.path().join("records")});
        let plugins = vec![(ours("ptp"), ptp(false, &data)), (ours("policy-route"), policy)];
        let mut chain = Chain::new("ours_policy_route", "ours: ptp + policy-route + host-local", false, plugins, data);
        chain.prepare = |node| {
            for (link, addr) in [("eth0", "192.0.2.1/24"), ("eth1", "198.51.100.10/24")] {
                node.ip(&["link", "add", link, "type", "veth", "peer", "name", &format!("{link}p")]);
                node.ip(&["addr", "add", addr, "dev", link]);
                node.ip(&["link", "set", link, "up"]);
            }
        };
        chain
    }

    pub fn reference_ptp(ip_masq: bool) -> Chain {
        let data = TempDir::new("bench");
        let plugins = vec![(reference("ptp"), ptp(ip_masq, &data))];
        if ip_masq {
            Chain::new("ref_ptp_masq", "reference: ptp (ipMasq) + host-local", true, plugins, data)
        } else {
            Chain::new("ref_ptp", "reference: ptp + host-local", true, plugins, data)
        }
    }

    pub fn reference_with_portmap() -> Chain {
        let data = TempDir::new("bench");
        let plugins = vec![(reference("ptp"), ptp(true, &data)), (reference("portmap"), portmap())];
        Chain::new("ref_portmap", "reference: ptp (ipMasq) + host-local + portmap", true, plugins, data)
    }

    pub fn ours_with_portmap() -> Chain {
        let mut chain = Chain::ours_chain();
        chain.plugins.push((reference("portmap"), portmap()));
        chain.key = "ours_portmap";
        chain.label = "ours: chain + host-local + reference portmap";
        chain
    }

    /// The chain's binaries, in order.
    pub fn binaries(&self) -> impl Iterator<Item = &PathBuf> {
        self.plugins.iter().map(|(binary, _)| binary)
    }

    /// The environment a runtime gives each plugin of this chain for `verb` on `pod`.
    pub fn env(&self, verb: &str, id: &str, pod: &PodNetns) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", verb.into()),
            ("CNI_CONTAINERID", id.into()),
            ("CNI_NETNS", pod.path().into()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_PATH", self.cni_path.clone()),
        ]
    }

    /// Plugin `i`'s config, with `prev` as its prevResult.
    pub fn config(&self, i: usize, prev: Option<&Value>) -> Vec<u8> {
        let mut c = self.plugins[i].1.clone();
        c["cniVersion"] = json!("1.0.0");
        c["name"] = json!("bench");
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        serde_json::to_vec(&c).unwrap()
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        node: &Netns,
        i: usize,
        verb: &str,
        id: &str,
        pod: &PodNetns,
        prev: Option<&Value>,
        rss: bool,
    ) -> exec::Run {
        let env = self.env(verb, id, pod);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let binary = &self.plugins[i].0;
        let run = exec::run(node, binary, &[], &env, &self.config(i, prev), rss);
        let out = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{} {verb} failed: {out}", binary.display());
        let who = if binary.starts_with(REFERENCE_DIR) { "reference" } else { "ours" };
        let name = format!("{who} {}", binary.file_name().unwrap().to_string_lossy());
        match run.max_rss_kib {
            Some(kib) => {
                let mut rss = self.rss.lock().unwrap();
                let peak = rss.entry(name).or_default();
                *peak = (*peak).max(kib);
            }
            None => self.calls.lock().unwrap().entry(format!("{name} {verb}")).or_default().push(run.elapsed),
        }
        run
    }

    /// ADD (timed, or with `rss` measured instead) through the whole chain.
    pub fn add_with(&self, node: &Netns, id: &str, pod: &PodNetns, rss: bool) -> (Duration, Added) {
        let (mut elapsed, mut prev) = (Duration::ZERO, None);
        for i in 0..self.plugins.len() {
            let run = self.call(node, i, "ADD", id, pod, prev.as_ref(), rss);
            elapsed += run.elapsed;
            prev = Some(serde_json::from_slice(&run.stdout).expect("a result"));
        }
        (elapsed, Added::Result(prev.unwrap()))
    }

    pub fn del_with(&self, node: &Netns, id: &str, pod: &PodNetns, added: &Added, rss: bool) -> Duration {
        let Added::Result(result) = added else { unreachable!("a chain's ADD gives a result") };
        (0..self.plugins.len()).rev().map(|i| self.call(node, i, "DEL", id, pod, Some(result), rss).elapsed).sum()
    }
}

impl Subject for Chain {
    fn label(&self) -> &str {
        self.label
    }

    fn prepare(&self, node: &Netns) {
        (self.prepare)(node)
    }

    fn add(&self, node: &Netns, id: &str, pod: &PodNetns) -> (Duration, Added) {
        self.add_with(node, id, pod, false)
    }

    fn del(&self, node: &Netns, id: &str, pod: &PodNetns, added: &Added) -> Duration {
        self.del_with(node, id, pod, added, false)
    }

    fn take_calls(&self) -> BTreeMap<String, Samples> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

/// The floor's executable: `CNI_CHAIN_FLOOR` when set (`make bench`: a static musl build at a fixed address, as
/// our plugins are released, so that the floor is not slower to start than they are), else the one beside this one.
fn floor_bin() -> PathBuf {
    std::env::var_os("CNI_CHAIN_FLOOR").map_or_else(|| bench_bin("cni-chain-floor"), PathBuf::from)
}

/// The floor: cni-chain-floor does ADD's and DEL's kernel work in one process.
#[derive(Default)]
pub struct Floor {
    pods: AtomicU32,
}

impl Subject for Floor {
    fn label(&self) -> &str {
        "floor: the same veth, addresses and routes from one minimal process"
    }

    fn add(&self, node: &Netns, _id: &str, pod: &PodNetns) -> (Duration, Added) {
        let n = self.pods.fetch_add(1, Ordering::Relaxed);
        let host = format!("floor{n}");
        let cidr = format!("10.61.{}.{}/16", n / 250, n % 250 + 2);
        let args = ["add", pod.path(), &host, &cidr, "10.61.0.1"];
        let run = exec::run(node, &floor_bin(), &args, &[], b"", false);
        assert!(run.status.success(), "cni-chain-floor {args:?} failed");
        (run.elapsed, Added::HostIfname(host))
    }

    fn del(&self, node: &Netns, _id: &str, _pod: &PodNetns, added: &Added) -> Duration {
        let Added::HostIfname(host) = added else { unreachable!("the floor's ADD gives its veth") };
        let run = exec::run(node, &floor_bin(), &["del", host], &[], b"", false);
        assert!(run.status.success(), "cni-chain-floor del {host} failed");
        run.elapsed
    }
}

/// A bare fork+exec of /bin/true in the node netns, as "ADD"; nothing as "DEL".
pub struct ForkExec;

impl Subject for ForkExec {
    fn label(&self) -> &str {
        "bare fork+exec (/bin/true)"
    }

    fn add(&self, node: &Netns, _id: &str, _pod: &PodNetns) -> (Duration, Added) {
        let run = exec::run(node, std::path::Path::new("/bin/true"), &[], &[], b"", false);
        (run.elapsed, Added::HostIfname(String::new()))
    }

    fn del(&self, _node: &Netns, _id: &str, _pod: &PodNetns, _added: &Added) -> Duration {
        Duration::ZERO
    }
}
