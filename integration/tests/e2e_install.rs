//! The DaemonSet's install image (`make image`, deploy/kubernetes) run by Podman against a host directory, as
//! the kubelet runs its init container: the static plugins and the containerd template land in the host's
//! /opt/cni/bin and /etc/cni/cni-chain. A second run is an upgrade: a plugin executed in a loop meanwhile never
//! fails to start (no missing file, no "text file busy", no half-written binary). The containers run with the
//! arguments, user, mounts and restrictions deploy/kubernetes/cni-chain.yaml gives them.

use integration::runtimes::{podman, podman_conf, stdout_of, Jail};
use integration::{file_names, Netns};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn image() -> String {
    format!("localhost/cni-chain:v{}", env!("CARGO_PKG_VERSION"))
}

fn archive() -> PathBuf {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../dist/cni-chain-image-{arch}-v{}.tar", env!("CARGO_PKG_VERSION")));
    assert!(path.is_file(), "run `make image` first: no {}", path.display());
    path
}

/// Podman in a jail of the test's, with the install image loaded from its archive.
fn podman_with_the_image() -> (Jail, Netns) {
    let (jail, node) = (Jail::new("install-image"), Netns::new());
    podman_conf(&jail, None);
    stdout_of(
        "podman load",
        podman(&jail, &node).arg("load").arg("--quiet").arg("--input").arg(archive()).output().unwrap(),
    );
    (jail, node)
}

/// A container of the DaemonSet as deploy/kubernetes/cni-chain.yaml gives it.
struct DaemonSetContainer {
    image: String,
    args: Vec<String>,
    user: String,
    /// (host path, path in the container)
    mounts: Vec<(String, String)>,
}

/// Reads the container `name` from the shipped YAML (a line reader: Debian's python has no YAML by default, and
/// the file keeps one key per line).
fn daemonset_container(name: &str) -> DaemonSetContainer {
    let yaml =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/cni-chain.yaml"))
            .unwrap();
    let value = |line: &str, key: &str| line.trim().strip_prefix(key).map(|v| v.trim().to_string());
    let (mut host_paths, mut current, mut item) = (Vec::new(), String::new(), String::new());
    let mut found = DaemonSetContainer { image: String::new(), args: vec![], user: String::new(), mounts: vec![] };
    let mut mount_names = Vec::new();
    for line in yaml.lines() {
        if let Some(n) = value(line, "- name:") {
            item = n.clone();
            if line.starts_with("        - name:") {
                current = n; // a container (the deeper `- name:` are its mounts)
            }
        } else if let Some(path) = value(line, "path:") {
            host_paths.push((item.clone(), path));
        } else if current == name {
            if let Some(image) = value(line, "image:") {
                found.image = image;
            } else if let Some(args) = value(line, "args:") {
                found.args = serde_json::from_str(&args).unwrap();
            } else if let Some(user) = value(line, "runAsUser:") {
                found.user = user;
            } else if let Some(mount) = value(line, "mountPath:") {
                mount_names.push((item.clone(), mount));
            }
        }
    }
    for (volume, mount) in mount_names {
        let host = host_paths.iter().find(|(v, _)| *v == volume).map(|(_, p)| p.clone()).unwrap();
        found.mounts.push((host, mount));
    }
    assert!(!found.args.is_empty(), "no container {name} in the DaemonSet");
    found
}

/// Runs the DaemonSet's container `name` under Podman, restricted as the YAML says, the host's directories taken
/// below `host`.
fn podman_run(jail: &Jail, node: &Netns, host: &Path, name: &str, extra: &[&str]) -> Command {
    let container = daemonset_container(name);
    assert_eq!(container.image, image(), "the DaemonSet names the image make image builds");
    let mut cmd = podman(jail, node);
    cmd.args(["run", "--network", "none", "--read-only", "--cap-drop", "all"])
        .args(["--security-opt", "no-new-privileges", "--user", &container.user])
        .args(extra);
    for (host_path, mount) in &container.mounts {
        let dir = host.join(host_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        cmd.arg("--volume").arg(format!("{}:{mount}", dir.display()));
    }
    cmd.arg(&container.image).args(&container.args);
    cmd
}

/// The DaemonSet's init container.
fn install_into(jail: &Jail, node: &Netns, host: &Path) -> String {
    let out = podman_run(jail, node, host, "install", &["--rm"]).output().unwrap();
    stdout_of("podman run <image> install", out)
}

/// Executes `plugin --version` until stopped; returns (runs, failures described).
fn exec_loop(plugin: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut runs, mut failures) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            runs += 1;
            match Command::new(&plugin).arg("--version").output() {
                Ok(out) if out.status.success() && out.stdout.starts_with(b"ptp ") => {}
                Ok(out) => failures.push(format!("{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr))),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (runs, failures)
    })
}

#[test]
fn the_install_image_puts_the_plugins_in_place_and_an_upgrade_never_breaks_a_running_exec() {
    let (jail, node) = podman_with_the_image();
    let host = jail.subdir("host");
    std::fs::create_dir_all(host.join("opt/cni/bin")).unwrap();
    std::fs::write(host.join("opt/cni/bin/bridge"), "someone else's plugin").unwrap();

    let said = install_into(&jail, &node, &host);
    assert!(said.contains("installed /host/opt/cni/bin/ptp"), "{said}");
    let mut expected: Vec<String> = integration::OURS.iter().map(|p| p.to_string()).chain(["bridge".into()]).collect();
    expected.sort();
    assert_eq!(file_names(&host.join("opt/cni/bin")), expected, "plugins in place, no temporary file left");
    assert_eq!(file_names(&host.join("etc/cni/cni-chain")), ["cni-conf-template.json"]);
    let shipped =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/containerd/cni-conf-template.json"));
    assert_eq!(std::fs::read(host.join("etc/cni/cni-chain/cni-conf-template.json")).unwrap(), shipped.unwrap());
    for plugin in integration::OURS {
        let path = host.join("opt/cni/bin").join(plugin);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
        let out = Command::new(&path).arg("--version").output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("{plugin} ")), "{out:?}");
    }
    assert_eq!(std::fs::read_to_string(host.join("opt/cni/bin/bridge")).unwrap(), "someone else's plugin");

    // The upgrade, while a runtime keeps executing ptp.
    let ptp = host.join("opt/cni/bin/ptp");
    let before = std::fs::metadata(&ptp).unwrap().ino();
    let stop = Arc::new(AtomicBool::new(false));
    let looping = exec_loop(ptp.clone(), stop.clone());
    install_into(&jail, &node, &host);
    stop.store(true, Ordering::Relaxed);
    let (runs, failures) = looping.join().unwrap();
    assert_ne!(std::fs::metadata(&ptp).unwrap().ino(), before, "the second run replaced the plugin");
    assert!(runs > 1, "the loop ran during the upgrade ({runs} runs)");
    assert!(
        failures.is_empty(),
        "{} of {runs} execs failed during the upgrade: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(file_names(&host.join("opt/cni/bin")), expected);
}

#[test]
fn the_images_main_container_waits_and_stops_on_sigterm() {
    let (jail, node) = podman_with_the_image();
    // Also after a failed assert: no container of ours outlives the test.
    struct Removed<'a>(&'a Jail, &'a Netns);
    impl Drop for Removed<'_> {
        fn drop(&mut self) {
            let _ = podman(self.0, self.1).args(["rm", "--force", "--ignore", "waiter"]).output();
        }
    }
    let _removed = Removed(&jail, &node);
    let host = jail.subdir("host");
    let started = podman_run(&jail, &node, &host, "wait", &["--detach", "--name", "waiter"]).output().unwrap();
    stdout_of("podman run <image> wait", started);
    let state = |what: &str| {
        stdout_of(
            "podman inspect",
            podman(&jail, &node).args(["inspect", "--format", what, "waiter"]).output().unwrap(),
        )
    };
    assert_eq!(state("{{.State.Running}}"), "true");
    // Ten seconds is podman's own grace before SIGKILL: exit code 0 proves SIGTERM ended it.
    stdout_of("podman stop", podman(&jail, &node).args(["stop", "--time", "10", "waiter"]).output().unwrap());
    assert_eq!(state("{{.State.ExitCode}}"), "0");
}
