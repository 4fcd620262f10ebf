//! The installer in cni-chain's image (`make image`), run by the DaemonSet in deploy/kubernetes.
//!
//! `install [--from DIR] [--to DIR]` copies every file below `--from` (default `/cni-chain/host`, the image's copy
//! of the host's `/opt/cni/bin` and `/etc/cni/cni-chain`) to the same path below `--to` (default `/host`, where the
//! host's directories are mounted). Each file is written beside its final name and renamed over it, so a runtime
//! executing a plugin meanwhile runs the old one or the new one, never half of one (nor fails with ETXTBSY).
//! `wait` blocks until SIGTERM or SIGINT: the DaemonSet's main container, which keeps the pod running.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: cni-chain-install install [--from DIR] [--to DIR] | wait | --version | --help
  install  copy every file below --from (default /cni-chain/host) to the same path below --to (default /host),
           each written beside its final name and then renamed over it
  wait     block until SIGTERM or SIGINT (the DaemonSet's main container)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("install") => {
            parse_install(&args[1..]).and_then(|(from, to)| install(&from, &to).map_err(|e| e.to_string()))
        }
        Some("wait") => wait_for_termination(),
        Some("--version") => {
            println!("cni-chain-install {} (cni-chain)", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("--help") | Some("-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cni-chain-install: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_install(args: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let (mut from, mut to) = (PathBuf::from("/cni-chain/host"), PathBuf::from("/host"));
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a directory\n{USAGE}"))?;
        match flag.as_str() {
            "--from" => from = value.into(),
            "--to" => to = value.into(),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    Ok((from, to))
}

/// Copies the tree below `from` to `to`, file by file, each replaced atomically.
fn install(from: &Path, to: &Path) -> io::Result<()> {
    let mut files = Vec::new();
    regular_files(from, Path::new(""), &mut files).map_err(|e| context(e, from))?;
    if files.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("nothing to install below {}", from.display())));
    }
    for relative in &files {
        let dest = to.join(relative);
        replace_atomically(&from.join(relative), &dest).map_err(|e| context(e, &dest))?;
        println!("installed {}", dest.display());
    }
    Ok(())
}

fn regular_files(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(relative))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let kind = entry.file_type()?;
        let path = relative.join(entry.file_name());
        if kind.is_dir() {
            regular_files(root, &path, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Writes `source`'s content and mode to a temporary file beside `dest`, flushed to disk, then renames it over
/// `dest` and flushes the directory: `dest` is at every moment the whole old file or the whole new one.
fn replace_atomically(source: &Path, dest: &Path) -> io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir)?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.cni-chain-new"));
    let mode = fs::metadata(source)?.permissions().mode() & 0o7777;
    // A killed earlier run may have left its temporary file: it is ours, and never executed.
    let _ = fs::remove_file(&temp);
    let written = (|| {
        let mut out = OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp)?;
        io::copy(&mut File::open(source)?, &mut out)?;
        out.set_permissions(fs::Permissions::from_mode(mode))?;
        out.sync_all()
    })();
    if let Err(e) = written.and_then(|()| fs::rename(&temp, dest)) {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

fn context(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Blocks until SIGTERM or SIGINT arrives. As a container's PID 1 the process gets no default action for them,
/// so it takes them itself.
fn wait_for_termination() -> Result<(), String> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().map_err(|e| format!("blocking SIGTERM and SIGINT: {e}"))?;
    signals.wait().map_err(|e| format!("waiting for SIGTERM: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_arguments() {
        let args = |a: &[&str]| parse_install(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(args(&[]).unwrap(), (PathBuf::from("/cni-chain/host"), PathBuf::from("/host")));
        assert_eq!(args(&["--to", "/x", "--from", "/y"]).unwrap(), (PathBuf::from("/y"), PathBuf::from("/x")));
        assert!(args(&["--to"]).is_err());
        assert!(args(&["--into", "/x"]).is_err());
    }

    #[test]
    fn install_copies_the_tree_with_modes_and_leaves_no_temporary_file() {
        let base = std::env::temp_dir().join(format!("cni-chain-install-unit-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        fs::create_dir_all(from.join("opt/cni/bin")).unwrap();
        fs::create_dir_all(from.join("etc/cni/cni-chain")).unwrap();
        fs::write(from.join("opt/cni/bin/ptp"), b"new plugin").unwrap();
        fs::set_permissions(from.join("opt/cni/bin/ptp"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(from.join("etc/cni/cni-chain/t.json"), b"{}").unwrap();
        fs::create_dir_all(to.join("opt/cni/bin")).unwrap();
        fs::write(to.join("opt/cni/bin/ptp"), b"old plugin").unwrap();
        fs::write(to.join("opt/cni/bin/.ptp.cni-chain-new"), b"left by a killed run").unwrap();
        fs::write(to.join("opt/cni/bin/bridge"), b"someone else's").unwrap();

        install(&from, &to).unwrap();
        assert_eq!(fs::read(to.join("opt/cni/bin/ptp")).unwrap(), b"new plugin");
        assert_eq!(fs::metadata(to.join("opt/cni/bin/ptp")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(fs::read(to.join("etc/cni/cni-chain/t.json")).unwrap(), b"{}");
        assert_eq!(fs::read(to.join("opt/cni/bin/bridge")).unwrap(), b"someone else's");
        let mut left: Vec<_> = fs::read_dir(to.join("opt/cni/bin")).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, ["bridge", "ptp"]);
        assert!(install(&base.join("missing"), &to).is_err());
        fs::remove_dir_all(&base).unwrap();
    }
}
