//! Files a plugin keeps under its dataDir: private directories reached only through real directories, content
//! replaced in one step, and a lock every writer takes.

use crate::error::{CniError, Result};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A store names containers and their addresses, nobody else's business: only root reads it.
pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;
/// Files are written to `<name>.tmp` and renamed, so a plugin killed mid-write leaves the old content or the
/// new, never half.
pub const TMP_SUFFIX: &str = ".tmp";

pub fn io(what: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::Io(format!("{what} {}: {e}", path.display()))
}

/// A store is only ever reached through real directories: a symlink there could point a root process at any
/// file of the node.
pub fn refuse_symlink(path: &Path, what: &str) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            Err(CniError::InvalidConfig(format!("{what} {} is a symlink; give the real directory", path.display())))
        }
        _ => Ok(()),
    }
}

pub fn create_dir(dir: &Path) -> Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(|e| io("creating", dir, e))
}

/// Replace `path`'s content in one step (write a temporary file, then rename it over).
pub fn write_atomic(path: &Path, content: &str) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp_name);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| f.write_all(content.as_bytes()));
    if let Err(e) = written.and_then(|_| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(io("writing", path, e));
    }
    Ok(())
}

/// Take the exclusive lock `dir/lock` (created if missing); held until the file is dropped.
pub fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| io("opening", &path, e))?;
    file.lock().map_err(|e| io("locking", &path, e))?;
    Ok(file)
}

/// STATUS: `target` (or the nearest directory above it that exists) can be written, without creating anything
/// that stays.
pub fn probe_writable(target: &Path) -> std::result::Result<(), String> {
    let existing = target.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if !existing.is_dir() {
        return Err(format!("{} is not a directory", existing.display()));
    }
    let probe = existing.join(format!(".cni-chain-status-{}", std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!("cannot write to {}: {e}", existing.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_creates_nothing_and_fails_below_a_file() {
        let data = std::env::temp_dir().join(format!("cni-chain-probe-{}", std::process::id()));
        fs::create_dir_all(&data).unwrap();
        assert!(probe_writable(&data.join("net")).is_ok());
        assert_eq!(fs::read_dir(&data).unwrap().count(), 0);
        fs::write(data.join("file"), "").unwrap();
        assert!(probe_writable(&data.join("file/net")).unwrap_err().contains("not a directory"));
        fs::remove_dir_all(&data).unwrap();
    }
}
