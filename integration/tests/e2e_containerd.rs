//! containerd 1.6 (Debian 12) runs pod sandboxes through its CRI plugin, as kubelet asks it to, with the
//! shipped masquerade chain. containerd runs inside the test's node netns and a private mount namespace
//! (see `integration::runtimes`) with its own root, state, socket and CNI dirs; the CRI calls go through
//! scripts/e2e/cri.py (Debian 12 has no crictl). containerd calls DEL twice on teardown, the second
//! time with no netns and no prevResult: nothing may be left after either. With the shipped template
//! (deploy/containerd), containerd renders the conflist itself from the pod CIDRs kubelet sends.

use integration::runtimes::{
    cni_dirs, node_with_uplink, plugin_dir, podman, podman_conf, podman_import_busybox, stdout_of, Jail,
};
use integration::{file_names, reservations_in, Netns};
use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const PAUSE_IMAGE: &str = "localhost/cni-chain/pause:latest";

struct Containerd {
    jail: Jail,
    node: Netns,
    outside: Netns,
    daemon: Option<Child>,
    socket: PathBuf,
    conf_dir: PathBuf,
}

/// Where containerd's CRI plugin gets its network: a conflist in conf_dir, or the shipped template it renders.
enum Network<'a> {
    Conflist(&'a str),
    Template,
}

impl Containerd {
    fn new(network: Network) -> Containerd {
        let (node, outside) = node_with_uplink();
        let jail = Jail::new("containerd");
        let (bin, conf, template) = match network {
            Network::Conflist(conflist) => {
                let (bin, conf) = cni_dirs(&jail, conflist);
                (bin, conf, String::new())
            }
            Network::Template => {
                let (bin, conf) = (jail.subdir("cni-bin"), jail.subdir("cni-conf"));
                plugin_dir(&bin);
                let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/containerd/cni-conf-template.json");
                (bin, conf, format!("    conf_template = \"{}\"\n", shipped.canonicalize().unwrap().display()))
            }
        };
        let socket = jail.dir.path().join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Without it runc fails here: "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
{template}"#,
            root = jail.subdir("root").display(),
            state = jail.subdir("state").display(),
            socket = socket.display(),
            bin = bin.display(),
            conf = conf.display(),
        );
        let config_path = jail.dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(jail.dir.path().join("containerd.log")).unwrap();
        let daemon = jail
            .command(&node, "containerd")
            .arg("--config")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd { jail, node, outside, daemon: Some(daemon), socket, conf_dir: conf };
        c.wait_for_socket();
        c.import_pause_image();
        c
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() {
            let exited = self.daemon.as_mut().unwrap().try_wait().unwrap();
            assert!(exited.is_none() && Instant::now() < deadline, "containerd did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The sandbox image: busybox sleeping, built with Podman and imported with ctr (no registry here).
    fn import_pause_image(&self) {
        podman_conf(&self.jail, None);
        podman_import_busybox(&self.jail, &self.node, &[r#"ENTRYPOINT ["/bin/sleep", "2147483647"]"#], PAUSE_IMAGE);
        let archive = self.jail.dir.path().join("pause.tar");
        let save = podman(&self.jail, &self.node)
            .args(["save", "--format", "docker-archive", "-o"])
            .arg(&archive)
            .arg(PAUSE_IMAGE)
            .output()
            .unwrap();
        stdout_of("podman save", save);
        let import = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(&archive)
            .output()
            .unwrap();
        stdout_of("ctr images import", import);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.jail.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn cri(&self, args: &[&str]) -> Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/e2e/cri.py");
        // Debian's python3-grpcio is for Debian's python, whatever python3 comes first on PATH.
        let out = Command::new("/usr/bin/python3").arg(script).arg(&self.socket).args(args).output().unwrap();
        let what = format!("cri.py {args:?} (containerd log: {})", self.log());
        serde_json::from_str(&stdout_of(&what, out)).unwrap()
    }

    fn run_pod(&self, name: &str) -> String {
        self.cri(&["run", name, &format!("uid-{name}"), "default"])["id"].as_str().unwrap().to_string()
    }

    fn pod_veths(&self) -> Vec<String> {
        self.node.veths().into_iter().filter(|v| v != "uplink").collect()
    }

    /// The address the outside host sees when the sandbox `pid` connects to it over TCP.
    fn seen_outside(&self, pid: u64, outside_addr: &str) -> Option<IpAddr> {
        self.outside.source_of(0, |port| {
            let mut nc = Command::new("nsenter");
            nc.arg(format!("--net=/proc/{pid}/ns/net")).args(["busybox", "nc", "-w", "3", outside_addr]);
            nc.arg(port.to_string()).output().is_ok_and(|o| o.status.success())
        })
    }

    /// host-local's reservations under the private /var/lib.
    fn reservations(&self, store: &str) -> Vec<String> {
        reservations_in(&self.jail.var_lib(store))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Also after a failed assert: remove every sandbox (and so its network), then stop containerd and
        // any shim of ours still running, before the jail and its directories go.
        let ids = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cri(&["list"])));
        for id in ids.ok().and_then(|v| v["ids"].as_array().cloned()).unwrap_or_default() {
            let id = id.as_str().unwrap_or_default();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.cri(&["stop", id]);
                self.cri(&["remove", id]);
            }));
        }
        if let Some(mut daemon) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = daemon.wait();
        }
        let _ = Command::new("pkill").arg("-f").arg(self.socket.as_os_str()).status();
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn containerd_pod_sandboxes_on_the_masquerade_chain() {
    let c = Containerd::new(Network::Conflist("20-cni-chain-masquerade.conflist"));
    let (p1, p2) = (c.run_pod("p1"), c.run_pod("p2"));
    let (s1, s2) = (c.cri(&["status", &p1]), c.cri(&["status", &p2]));
    let ips = |s: &Value| -> Vec<String> { s["ips"].as_array().unwrap().iter().map(|i| i.to_string()).collect() };
    assert_eq!(s1["state"], 0, "SANDBOX_READY: {s1}");
    let (p1_v4, p1_v6) = (s1["ips"][0].as_str().unwrap(), s1["ips"][1].as_str().unwrap());
    assert!(p1_v4.starts_with("10.89.") && p1_v6.starts_with("fd89::"), "dual stack: {s1}");
    assert_ne!(ips(&s1), ips(&s2));
    assert_eq!(c.pod_veths().len(), 2, "the host veths are in the node netns");
    for veth in c.pod_veths() {
        assert_eq!(c.node.link(&veth).unwrap()["group"], "8", "linkgroup ran");
    }
    let pid2 = s2["pid"].as_u64().unwrap();
    let ping = |addr: &str| {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/proc/{pid2}/ns/net")).args(["ping", "-c", "1", "-W", "2", addr]);
        cmd.output().unwrap().status.success()
    };
    assert!(ping(p1_v4) && ping(p1_v6), "p2 reaches p1 over IPv4 and IPv6");
    assert_eq!(c.seen_outside(pid2, "192.0.2.2"), Some(ip("192.0.2.1")), "masqueraded as the node");
    assert_eq!(c.seen_outside(pid2, "2001:db8::2"), Some(ip("2001:db8::1")));
    assert_eq!(c.reservations("cni/networks/cni-chain-masq").len(), 4);

    // StopPodSandbox tears the network down (DEL with the netns and prevResult); RemovePodSandbox
    // calls DEL once more without either.
    c.cri(&["stop", &p1]);
    assert_eq!(c.pod_veths().len(), 1);
    assert_eq!(c.reservations("cni/networks/cni-chain-masq").len(), 2);
    c.cri(&["remove", &p1]);
    c.cri(&["stop", &p2]);
    c.cri(&["remove", &p2]);
    assert_eq!(c.cri(&["list"])["ids"], serde_json::json!([]));
    assert_eq!(c.pod_veths(), Vec::<String>::new());
    assert_eq!(c.reservations("cni/networks/cni-chain-masq"), Vec::<String>::new());
    assert_eq!(file_names(&c.jail.var_lib("cni/results")), Vec::<String>::new(), "libcni's cache is cleared");
    assert_eq!(file_names(&c.jail.dir.path().join("netns")), Vec::<String>::new(), "no cni-<uuid> netns left");
}

#[test]
fn containerd_renders_the_shipped_template_from_the_dual_stack_pod_cidrs_kubelet_sends() {
    let c = Containerd::new(Network::Template);
    assert_eq!(c.cri(&["runtime-status"])["NetworkReady"], false, "no conflist before kubelet's pod CIDRs");
    // What kubelet sends once the node object has its pod CIDRs: both families, comma-separated.
    c.cri(&["update-runtime-config", "10.244.7.0/24,fd00:10:244:7::/64"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.cri(&["runtime-status"])["NetworkReady"] != true {
        assert!(Instant::now() < deadline, "containerd did not load the rendered conflist: {}", c.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let rendered = file_names(&c.conf_dir);
    assert_eq!(rendered.len(), 1, "{rendered:?}");
    let conflist: Value = serde_json::from_slice(&std::fs::read(c.conf_dir.join(&rendered[0])).unwrap()).unwrap();
    assert_eq!(conflist["name"], "cni-chain");
    let ipam = &conflist["plugins"][0]["ipam"];
    assert_eq!(ipam["ranges"], serde_json::json!([[{"subnet": "10.244.7.0/24"}], [{"subnet": "fd00:10:244:7::/64"}]]));
    assert_eq!(ipam["routes"], serde_json::json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]));

    let (p1, p2) = (c.run_pod("p1"), c.run_pod("p2"));
    let (s1, s2) = (c.cri(&["status", &p1]), c.cri(&["status", &p2]));
    for s in [&s1, &s2] {
        assert_eq!(s["state"], 0, "SANDBOX_READY: {s}");
        let (v4, v6) = (s["ips"][0].as_str().unwrap(), s["ips"][1].as_str().unwrap());
        assert!(v4.starts_with("10.244.7.") && v6.starts_with("fd00:10:244:7::"), "from the pod CIDRs: {s}");
    }
    let pid2 = s2["pid"].as_u64().unwrap();
    let ping = |addr: &str| {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/proc/{pid2}/ns/net")).args(["ping", "-c", "1", "-W", "2", addr]);
        cmd.output().unwrap().status.success()
    };
    assert!(ping(s1["ips"][0].as_str().unwrap()) && ping(s1["ips"][1].as_str().unwrap()), "p2 reaches p1");
    assert_eq!(c.seen_outside(pid2, "192.0.2.2"), Some(ip("192.0.2.1")), "masqueraded as the node");
    assert_eq!(c.seen_outside(pid2, "2001:db8::2"), Some(ip("2001:db8::1")));
    assert_eq!(c.reservations("cni/networks/cni-chain").len(), 4);

    for p in [&p1, &p2] {
        c.cri(&["stop", p]);
        c.cri(&["remove", p]);
    }
    assert_eq!(c.cri(&["list"])["ids"], serde_json::json!([]));
    assert_eq!(c.pod_veths(), Vec::<String>::new());
    assert_eq!(c.reservations("cni/networks/cni-chain"), Vec::<String>::new());
    assert!(!c.node.has_nft_table("cni_chain"), "the last DEL took the masquerade table");
    assert_eq!(file_names(&c.jail.var_lib("cni/results")), Vec::<String>::new(), "libcni's cache is cleared");
    assert_eq!(file_names(&c.jail.dir.path().join("netns")), Vec::<String>::new(), "no cni-<uuid> netns left");
}
