//! What `make release` and `make install` give a user: a tarball of static, stripped plugins that run with no
//! libc at all (in an empty root, as in a container `FROM scratch`), its checksum, and an install that uninstall
//! takes back exactly.

use integration::TempDir;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn release_name() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("cni-chain-linux-{arch}-v{}", env!("CARGO_PKG_VERSION"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The tarball, checked against its checksum file and unpacked into `into`.
fn unpacked_release(into: &Path) {
    let dist = repo().join("dist");
    let tgz = format!("{}.tgz", release_name());
    assert!(dist.join(&tgz).is_file(), "run `make release` first: no dist/{tgz}");
    run(Command::new("sha256sum").args(["--check", "--strict", &format!("{tgz}.sha256")]).current_dir(&dist));
    run(Command::new("tar").arg("-xzf").arg(dist.join(&tgz)).arg("-C").arg(into));
}

#[test]
fn the_release_tarball_holds_static_stripped_plugins_the_conflists_and_the_license() {
    let dir = TempDir::new("release");
    unpacked_release(dir.path());
    let mut names = dir.files("");
    names.sort();
    let mut expected: Vec<String> = integration::OURS.iter().map(|p| p.to_string()).collect();
    expected.extend(["cni-chain", "LICENSE", "README.md", "conflists"].map(String::from));
    expected.sort();
    assert_eq!(names, expected);
    let shipped = std::fs::read_dir(repo().join("conflists")).unwrap().count();
    assert_eq!(dir.files("conflists").len(), shipped);
    assert!(std::fs::read_to_string(dir.path().join("LICENSE")).unwrap().contains("Apache License"));

    for plugin in integration::OURS.into_iter().chain(["cni-chain"]) {
        let bin = dir.path().join(plugin);
        let headers = run(Command::new("readelf").args(["--program-headers", "--wide"]).arg(&bin));
        assert!(!headers.contains("INTERP"), "{plugin} asks for a dynamic loader:\n{headers}");
        // Not a static-pie, which relocates itself at every start: an executable at a fixed address.
        assert!(headers.contains("EXEC"), "{plugin} is not a fixed-address executable:\n{headers}");
        let sections = run(Command::new("readelf").args(["--section-headers", "--wide"]).arg(&bin));
        assert!(!sections.contains(".symtab"), "{plugin} is not stripped");
        // build/arena-last.ld placed the allocator's region after the variables written at every start.
        if plugin != "cni-chain" {
            let last_bss = sections.lines().rfind(|l| l.contains(" NOBITS ") && !l.contains(".tbss"));
            assert!(last_bss.is_some_and(|l| l.contains(".bss.arena")), "{plugin}'s arena is not last:\n{sections}");
        }
    }
}

/// Runs `bin` with `args` chrooted into a directory holding nothing but that binary.
fn in_an_empty_root(bin: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let root = TempDir::new("empty-root");
    // A link, not a copy: a copy's file is open for writing, and a fork by another test thread meanwhile
    // would hold it open and make our exec fail with ETXTBSY.
    std::fs::hard_link(bin, root.path().join("plugin")).unwrap();
    let new_root = root.path().to_path_buf();
    let mut cmd = Command::new("/plugin");
    cmd.args(args).env_clear().env("CNI_COMMAND", "VERSION");
    // SAFETY: chroot and chdir are async-signal-safe; nothing is allocated between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::chroot(&new_root)?;
            nix::unistd::chdir("/")?;
            Ok(())
        });
    }
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn each_released_plugin_runs_in_an_empty_root() {
    let dir = TempDir::new("release");
    unpacked_release(dir.path());
    for plugin in integration::OURS {
        let bin = dir.path().join(plugin);
        let version = in_an_empty_root(&bin, &["--version"], "");
        let said = String::from_utf8_lossy(&version.stdout);
        assert!(version.status.success(), "{plugin} --version in an empty root: {version:?}");
        assert!(said.starts_with(&format!("{plugin} {} (cni-chain", env!("CARGO_PKG_VERSION"))), "{said}");
        // And the protocol itself: VERSION reads stdin and answers on stdout.
        let reply = in_an_empty_root(&bin, &[], r#"{"cniVersion":"1.0.0"}"#);
        let answer: serde_json::Value = serde_json::from_slice(&reply.stdout).unwrap();
        assert_eq!(answer["supportedVersions"].as_array().map(Vec::len), Some(5), "{plugin}: {answer}");
    }
    // The operator's tool too (it reads the conflists and the kernel, so here only its version).
    let said = in_an_empty_root(&dir.path().join("cni-chain"), &["--version"], "");
    let said = String::from_utf8_lossy(&said.stdout);
    assert!(said.starts_with(&format!("cni-chain {} (cni-chain", env!("CARGO_PKG_VERSION"))), "{said}");
}

#[test]
fn make_uninstall_removes_exactly_what_make_install_wrote() {
    let dest = TempDir::new("install");
    let bin_dir = dest.path().join("opt/cni/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    // Someone else's plugins: one beside ours, one that will later replace ours under the same name.
    std::fs::write(bin_dir.join("bridge"), "#!/bin/sh\necho foreign\n").unwrap();
    let make = |target: &str| {
        run(Command::new("make")
            .args(["--no-print-directory", "-C"])
            .arg(repo())
            .arg(target)
            .arg(format!("DESTDIR={}", dest.str())))
    };
    make("install");
    let mut installed = dest.files("opt/cni/bin");
    installed.sort();
    let mut expected: Vec<String> = integration::OURS.iter().map(|p| p.to_string()).chain(["bridge".into()]).collect();
    expected.sort();
    assert_eq!(installed, expected, "install wrote something else (a temporary file left?)");
    assert_eq!(dest.files("usr/local/bin"), ["cni-chain"], "the tool goes on PATH, not among the plugins");
    for plugin in integration::OURS {
        let said = run(Command::new(bin_dir.join(plugin)).arg("--version"));
        assert!(said.starts_with(plugin), "{said}");
    }
    make("install"); // again, over itself
    std::fs::write(bin_dir.join("masquerade"), "#!/bin/sh\necho foreign\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin_dir.join("masquerade"), std::fs::Permissions::from_mode(0o755)).unwrap();
    make("uninstall");
    let mut left = dest.files("opt/cni/bin");
    left.sort();
    assert_eq!(left, ["bridge", "masquerade"], "uninstall removed what is not ours or left ours");
    assert_eq!(dest.files("usr/local/bin"), Vec::<String>::new());
}
