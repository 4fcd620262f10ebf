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

/// Write `path`'s content over what it held, in the same file. Only for files read under the lock their writer holds
/// and whose reader takes a torn write (a crash) as no content or a stale one. ext4 makes both other ways slow: a
/// file replaced by a rename is a new inode, and its search for a free inode skips every one freed in the last
/// minutes; a file truncated to nothing and written again is flushed to disk when it is closed.
pub fn write_in_place(path: &Path, content: &str) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| {
            f.write_all(content.as_bytes())?;
            f.set_len(content.len() as u64)
        })
        .map_err(|e| io("writing", path, e))
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

/// The content of the section `name` of the 64-bit little-endian ELF executable at `path`; None for anything
/// else. A few small reads: cheaper by far than running the executable to ask it.
pub fn elf_section(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    const SECTION_HEADER: usize = 64;
    let file = std::fs::File::open(path).ok()?;
    let read = |offset: u64, len: usize| -> Option<Vec<u8>> {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset).ok().map(|_| buf)
    };
    let u16_at = |b: &[u8], at: usize| Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |b: &[u8], at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
    let header = read(0, 64)?;
    if header.get(..6)? != b"\x7fELF\x02\x01" || usize::from(u16_at(&header, 0x3a)?) != SECTION_HEADER {
        return None;
    }
    let (count, names_index) = (usize::from(u16_at(&header, 0x3c)?), usize::from(u16_at(&header, 0x3e)?));
    let table = read(u64_at(&header, 0x28)?, count * SECTION_HEADER)?;
    let section = |i: usize| table.get(i * SECTION_HEADER..(i + 1) * SECTION_HEADER);
    // (name offset, file offset, size), sizes capped: the sections looked at here are small.
    let fields = |s: &[u8]| Some((u32_at(s, 0)? as usize, u64_at(s, 0x18)?, u64_at(s, 0x20)?.min(1 << 20) as usize));
    let (_, names_at, names_len) = fields(section(names_index)?)?;
    let names = read(names_at, names_len)?;
    (0..count).find_map(|i| {
        let (name_at, at, len) = fields(section(i)?)?;
        let this = names.get(name_at..)?.split(|b| *b == 0).next()?;
        (this == name.as_bytes()).then(|| read(at, len)).flatten()
    })
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

    #[test]
    fn written_in_place_a_shorter_content_leaves_nothing_of_the_longer_and_no_symlink_is_followed() {
        let data = std::env::temp_dir().join(format!("cni-chain-in-place-{}", std::process::id()));
        fs::create_dir_all(&data).unwrap();
        let path = data.join("last_reserved_ip.0");
        write_in_place(&path, "10.78.1.166").unwrap();
        write_in_place(&path, "10.78.1.9").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "10.78.1.9");
        std::os::unix::fs::symlink(&path, data.join("link")).unwrap();
        assert!(write_in_place(&data.join("link"), "10.0.0.1").is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "10.78.1.9");
        fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn an_elf_section_is_found_by_name_and_anything_else_is_none() {
        let me = std::env::current_exe().unwrap();
        assert!(elf_section(&me, ".text").is_some_and(|t| !t.is_empty()));
        assert_eq!(elf_section(&me, ".cni_chain_nothing"), None);
        assert_eq!(elf_section(Path::new("/proc/self/status"), ".text"), None);
        assert_eq!(elf_section(Path::new("/nonexistent"), ".text"), None);
    }
}
