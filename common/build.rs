//! The commit the plugins were built from, for `--version`: `unknown` outside a git checkout. And a hash of
//! this library's source, which says whether two of our executables run the same code (`host_local::MARKER`).

use std::path::Path;
use std::process::Command;

/// FNV-1a over `path` (a file, or every file below a directory, by name and content in sorted order): the same
/// on every build of the same source, unlike a random build ID, so release builds stay reproducible.
fn source_hash(path: &Path, hash: &mut u64) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            source_hash(&entry, hash);
        }
        return;
    }
    let name = path.to_string_lossy().into_owned().into_bytes();
    for b in name.iter().chain(&std::fs::read(path).unwrap_or_default()) {
        *hash = (*hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = std::env::var("CNI_CHAIN_COMMIT").ok().or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    println!("cargo:rustc-env=CNI_CHAIN_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
    println!("cargo:rerun-if-env-changed=CNI_CHAIN_COMMIT");
    let mut hash = 0xcbf2_9ce4_8422_2325;
    source_hash(Path::new("src"), &mut hash);
    source_hash(Path::new("Cargo.toml"), &mut hash);
    println!("cargo:rustc-env=CNI_CHAIN_SOURCE_HASH={hash:016x}");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    // A new commit or checkout changes HEAD or the ref it names.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for f in ["HEAD", "refs/heads", "packed-refs"] {
            println!("cargo:rerun-if-changed={dir}/{f}");
        }
    }
}
