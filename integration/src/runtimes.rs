//! What the end-to-end tests need to run a real runtime (Podman, containerd) on a test's node: a private
//! mount namespace whose /var/lib, /run/netns and /dev/shm are the test's own directories and whose /run is a
//! tmpfs, so libcni's result cache, host-local's store, the runtime's netns files, sockets and locks never
//! touch the machine's;
//! a busybox root filesystem for images (no registry is reachable); one CNI bin dir with ours and the
//! reference plugins.

use crate::{bin_dir, Netns, TempDir, REFERENCE_DIR};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A mount namespace kept alive by a parked process; commands enter it together with a node netns.
pub struct Jail {
    pub dir: TempDir,
    holder: Child,
}

impl Jail {
    pub fn new(tag: &str) -> Jail {
        let dir = TempDir::new(tag);
        for sub in ["var-lib", "netns", "shm"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        // A /run of its own: the runtimes' fixed paths there (containerd's shim sockets in /run/containerd/s,
        // runc's state) stay off the machine.
        let script = r#"mount --bind "$1/var-lib" /var/lib && mount -t tmpfs -o mode=0755 jail-run /run &&
            mkdir /run/netns && mount --bind "$1/netns" /run/netns &&
            mount --bind "$1/shm" /dev/shm && echo ready && exec sleep infinity"#;
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn unshare");
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line);
        assert_eq!(line.trim(), "ready", "the private mount namespace could not be set up");
        Jail { dir, holder }
    }

    /// `program` inside this mount namespace and `node`'s netns.
    pub fn command(&self, node: &Netns, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg(format!("--net={}", node.path()))
            .arg(program);
        cmd
    }

    /// What the runtime sees as /var/lib/`sub`.
    pub fn var_lib(&self, sub: &str) -> PathBuf {
        self.dir.path().join("var-lib").join(sub)
    }

    /// A fresh directory of the test's, beside the private mounts.
    pub fn subdir(&self, sub: &str) -> PathBuf {
        let p = self.dir.path().join(sub);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Stdout of a finished command; panics with its output if it failed.
pub fn stdout_of(what: &str, out: Output) -> String {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed: {stdout}\n{stderr}");
    stdout.trim().to_string()
}

/// A root filesystem of the machine's static busybox and its applets, for `podman import`.
pub fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    let list = stdout_of("busybox --list", Command::new("/bin/busybox").arg("--list").output().unwrap());
    for applet in list.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
}

/// One directory with our plugins and the reference ones (runtimes such as containerd take a single bin dir).
pub fn plugin_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for source in [Path::new(REFERENCE_DIR).to_path_buf(), bin_dir()] {
        for entry in std::fs::read_dir(&source).unwrap().flatten() {
            let path = entry.path();
            let executable = entry.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if executable && path.extension().is_none() {
                let link = dir.join(entry.file_name());
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&path, link).unwrap();
            }
        }
    }
}

/// Podman with the jail's own storage, run directory and containers.conf (see `podman_conf`).
pub fn podman(jail: &Jail, node: &Netns) -> Command {
    let mut cmd = jail.command(node, "podman");
    cmd.env("CONTAINERS_CONF", jail.dir.path().join("containers.conf"))
        .arg("--root")
        .arg(jail.subdir("podman-storage"))
        .arg("--runroot")
        .arg(jail.subdir("podman-run"))
        .args(["--storage-driver", "vfs"]);
    cmd
}

/// containers.conf for this machine: runc (crun refuses its cgroup layout), cgroupfs, ulimits below its
/// own; with `cni`, the CNI backend with these plugin and conflist directories.
pub fn podman_conf(jail: &Jail, cni: Option<(&Path, &Path)>) {
    let mut conf = format!(
        r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = "{}"
"#,
        jail.subdir("podman-tmp").display()
    );
    if let Some((bin, conf_dir)) = cni {
        conf += &format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n",
            bin.display(),
            conf_dir.display()
        );
    }
    std::fs::write(jail.dir.path().join("containers.conf"), conf).unwrap();
}

/// A busybox image named `image` in the jail's Podman storage, with these `--change` instructions.
pub fn podman_import_busybox(jail: &Jail, node: &Netns, changes: &[&str], image: &str) {
    let rootfs = jail.subdir("rootfs");
    busybox_rootfs(&rootfs);
    let tarball = jail.dir.path().join("rootfs.tar");
    let out = Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tarball).arg(".").output().unwrap();
    stdout_of("tar", out);
    let mut cmd = podman(jail, node);
    cmd.arg("import");
    for change in changes {
        cmd.args(["--change", change]);
    }
    stdout_of("podman import", cmd.arg(&tarball).arg(image).output().unwrap());
}

/// A node netns with an uplink to an "outside" host: 192.0.2.1/24 and 2001:db8::1/64 on the node's end,
/// .2 and ::2 on the outside's.
pub fn node_with_uplink() -> (Netns, Netns) {
    let (node, outside) = (Netns::new(), Netns::new());
    node.link_to(&outside, "uplink", &[("192.0.2.1/24", "192.0.2.2/24"), ("2001:db8::1/64", "2001:db8::2/64")], None);
    (node, outside)
}

/// The shipped policy-route conflist at 1.1.0 (`Chain::shipped_in`), pointed at `node_with_uplink`'s one uplink,
/// as both its uplink and its primary, with its records in `stores/policy-route`.
pub fn policy_route_on_one_uplink(stores: &Path) -> crate::Chain {
    let mut chain = crate::Chain::shipped_in("50-cni-chain-policy-route.conflist", stores);
    for (key, value) in [
        ("uplink", serde_json::json!("uplink")),
        ("gateway", serde_json::json!("192.0.2.2")),
        ("gateway6", serde_json::json!("2001:db8::2")),
        ("primary.interface", serde_json::json!("uplink")),
        ("dataDir", serde_json::json!(stores.join("policy-route"))),
    ] {
        chain.overrides.push((1, key.into(), value));
    }
    chain
}

/// Copy the shipped conflist `name` (from conflists/) into `dir`.
pub fn copy_shipped_conflist(name: &str, dir: &Path) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conflists").join(name);
    std::fs::copy(shipped, dir.join(name)).unwrap();
}

/// A runtime's CNI directories in the jail: one bin dir with ours and the reference plugins (containerd's CRI
/// also runs the reference loopback), and a conf dir holding the shipped `conflist` alone.
pub fn cni_dirs(jail: &Jail, conflist: &str) -> (PathBuf, PathBuf) {
    let (bin, conf) = (jail.subdir("cni-bin"), jail.subdir("cni-conf"));
    plugin_dir(&bin);
    copy_shipped_conflist(conflist, &conf);
    (bin, conf)
}

/// The node `conflists/50-cni-chain-policy-route.conflist` expects, with its two uplinks: eth0 (192.0.2.1, the
/// main table's default route) to an outside host 1 (192.0.2.2), and eth1 (198.51.100.10, 2001:db8:51::10) to
/// an outside host 2 (the gateways 198.51.100.1 and 2001:db8:51::1), which alone routes the pods' ranges back
/// and holds 203.0.113.9 and 2001:db8:99::9 beyond it. Returns (node, outside host 1, outside host 2).
pub fn node_with_two_uplinks() -> (Netns, Netns, Netns) {
    let (node, outside1, outside2) = (Netns::new(), Netns::new(), Netns::new());
    node.link_to(&outside1, "eth0", &[("192.0.2.1/24", "192.0.2.2/24")], None);
    node.link_to(
        &outside2,
        "eth1",
        &[("198.51.100.10/24", "198.51.100.1/24"), ("2001:db8:51::10/64", "2001:db8:51::1/64")],
        None,
    );
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    outside2.ip(&["addr", "add", "203.0.113.9/32", "dev", "lo"]);
    outside2.ip(&["addr", "add", "2001:db8:99::9/128", "dev", "lo"]);
    outside2.ip(&["route", "add", "10.92.0.0/24", "via", "198.51.100.10"]);
    outside2.ip(&["-6", "route", "add", "fd92::/64", "via", "2001:db8:51::10"]);
    (node, outside1, outside2)
}
