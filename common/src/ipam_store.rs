//! host-local's on-disk store, byte-compatible with the reference host-local so either can take over a live node:
//! `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>` (older releases wrote the ID alone),
//! `last_reserved_ip.<rangeSetIndex>` the last address handed out, and `lock` is flock'ed by every writer.
//! Ours adds an index, `.cni-chain-attachments/<hash>`, so that ADD, CHECK and DEL read one or two files
//! instead of every reservation (a cost that grew with the pods). The reservation files stay the truth.
//! Here in `common` so the operator's tool reads reservations the way host-local does.

use crate::files::{create_dir, io, lock_dir, refuse_symlink, write_in_place, FILE_MODE, TMP_SUFFIX};
use crate::Result;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
const LINE_BREAK: &str = "\r\n";
const LAST_RESERVED: &str = "last_reserved_ip.";
/// The reference reads every file below the store, this directory's too, but only acts on files whose
/// content is an attachment's `<containerID>\r\n<ifname>` or whose name is an address: an index entry is neither.
const INDEX_DIR: &str = ".cni-chain-attachments";

/// Who holds an address: the attachment, or only the container for files in the older format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub container_id: String,
    pub ifname: Option<String>,
}

impl Holder {
    fn parse(content: &str) -> Holder {
        let content = content.trim();
        match content.split_once(LINE_BREAK) {
            Some((id, ifname)) => Holder { container_id: id.trim().into(), ifname: Some(ifname.into()) },
            None => Holder { container_id: content.into(), ifname: None },
        }
    }
}

pub struct Reservation {
    pub ip: IpAddr,
    pub holder: Holder,
}

/// One network's store, locked for as long as the value lives.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// Open (creating it) the network's directory and take its lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        let dir = data_dir.join(network);
        refuse_symlink(&dir, "the network's store")?;
        create_dir(&dir)?;
        Store::lock(dir)
    }

    /// As `open`, but `None` when nothing was ever stored (DEL and GC create nothing).
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<Store>> {
        let dir = data_dir.join(network);
        refuse_symlink(&dir, "the network's store")?;
        if !dir.is_dir() {
            return Ok(None);
        }
        Store::lock(dir).map(Some)
    }

    fn lock(dir: PathBuf) -> Result<Store> {
        let lock = lock_dir(&dir)?;
        Ok(Store { dir, _lock: lock })
    }

    /// Every address file in the store. Unreadable files are skipped, as the reference does.
    pub fn reservations(&self) -> Result<Vec<Reservation>> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io("reading", &self.dir, e))?;
        Ok(entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let ip: IpAddr = entry.file_name().to_str()?.parse().ok()?;
                let content = fs::read_to_string(entry.path()).ok()?;
                Some(Reservation { ip, holder: Holder::parse(&content) })
            })
            .collect())
    }

    /// Reserve `ip` for the attachment unless someone holds it; `false` when taken.
    pub fn reserve(&self, ip: IpAddr, container_id: &str, ifname: &str, range_set: usize) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        let mut file = match OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io("creating", &path, e)),
        };
        if let Err(e) = file.write_all(format!("{}{LINE_BREAK}{ifname}", container_id.trim()).as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(io("writing", &path, e));
        }
        // In place, as the reference writes it: a torn write at worst moves where the next search starts.
        write_in_place(&self.dir.join(format!("{LAST_RESERVED}{range_set}")), &ip.to_string())?;
        Ok(true)
    }

    pub fn last_reserved(&self, range_set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{range_set}"))).ok()?.trim().parse().ok()
    }

    fn holder_of(&self, ip: IpAddr) -> Option<Holder> {
        fs::read_to_string(self.dir.join(ip.to_string())).ok().map(|c| Holder::parse(&c))
    }

    fn index_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        let hash = crate::names::attachment_hash(container_id.trim(), ifname);
        self.dir.join(INDEX_DIR).join(format!("{hash:016x}"))
    }

    /// The addresses the index says the attachment holds and whose reservation files agree; None when
    /// the index has no entry for it (an attachment made by the reference, or before the index existed).
    pub fn indexed(&self, container_id: &str, ifname: &str) -> Option<Vec<IpAddr>> {
        let entry = IndexEntry::parse(&fs::read_to_string(self.index_path(container_id, ifname)).ok()?)?;
        let id = container_id.trim();
        if entry.container_id != id || entry.ifname != ifname {
            return None;
        }
        let holds = |ip: &IpAddr| {
            self.holder_of(*ip).is_some_and(|h| h.container_id == id && h.ifname.as_deref() == Some(ifname))
        };
        Some(entry.ips.into_iter().filter(holds).collect())
    }

    /// Record what the attachment holds (under the lock, after its files were written).
    pub fn index(&self, container_id: &str, ifname: &str, ips: &[IpAddr]) -> Result<()> {
        create_dir(&self.dir.join(INDEX_DIR))?;
        let entry = IndexEntry { container_id: container_id.trim().into(), ifname: ifname.into(), ips: ips.to_vec() };
        // In place: a torn entry does not parse (the files are read), or names addresses `indexed` checks in the files.
        write_in_place(&self.index_path(container_id, ifname), &entry.to_string())
    }

    /// Drop the attachment's entry, and the index directory with its last entry.
    pub fn unindex(&self, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.index_path(container_id, ifname);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io("removing", &path, e)),
            _ => {
                // Fails while other entries remain, as it should.
                let _ = fs::remove_dir(self.dir.join(INDEX_DIR));
                Ok(())
            }
        }
    }

    /// GC: drop every index entry that is not of a `valid` attachment, unreadable entries and temporary
    /// files left by a killed writer among them (under the lock, nothing else is writing).
    pub fn sweep(&self, valid: impl Fn(&str, &str) -> bool) -> Result<()> {
        let index = self.dir.join(INDEX_DIR);
        let stale_entries = fs::read_dir(&index).into_iter().flatten().flatten().filter(|e| {
            let entry = fs::read_to_string(e.path()).ok().and_then(|t| IndexEntry::parse(&t));
            !entry.is_some_and(|entry| valid(&entry.container_id, &entry.ifname))
        });
        for path in stale_entries.map(|e| e.path()).chain(self.temporaries()?) {
            match fs::remove_file(&path) {
                Err(err) if err.kind() != ErrorKind::NotFound => return Err(io("removing", &path, err)),
                _ => {}
            }
        }
        let _ = fs::remove_dir(&index);
        Ok(())
    }

    /// Temporary files a killed writer left in the store.
    pub fn temporaries(&self) -> Result<Vec<PathBuf>> {
        Ok(fs::read_dir(&self.dir)
            .map_err(|e| io("reading", &self.dir, e))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(TMP_SUFFIX))
            .map(|e| e.path())
            .collect())
    }

    /// When the reservation of `ip` was written.
    pub fn reserved_at(&self, ip: IpAddr) -> Option<std::time::SystemTime> {
        fs::metadata(self.dir.join(ip.to_string())).and_then(|m| m.modified()).ok()
    }

    pub fn release(&self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io("removing", &path, e)),
            _ => Ok(()),
        }
    }
}

/// An index entry: the container ID, the interface, then one address a line.
struct IndexEntry {
    container_id: String,
    ifname: String,
    ips: Vec<IpAddr>,
}

impl IndexEntry {
    fn parse(text: &str) -> Option<IndexEntry> {
        let mut lines = text.lines();
        let (container_id, ifname) = (lines.next()?.to_string(), lines.next()?.to_string());
        let ips = lines.map(|l| l.parse().ok()).collect::<Option<Vec<IpAddr>>>()?;
        Some(IndexEntry { container_id, ifname, ips })
    }
}

impl std::fmt::Display for IndexEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}\n{}", self.container_id, self.ifname)?;
        self.ips.iter().try_for_each(|ip| writeln!(f, "{ip}"))
    }
}

/// The addresses an attachment holds: its own files, or else older ID-only files of its container
/// (the reference's rule, so an ID-only file is not taken from another interface that has its own).
pub fn held_by(reservations: &[Reservation], container_id: &str, ifname: &str) -> Vec<IpAddr> {
    let id = container_id.trim();
    let exact: Vec<IpAddr> = reservations
        .iter()
        .filter(|r| r.holder.container_id == id && r.holder.ifname.as_deref() == Some(ifname))
        .map(|r| r.ip)
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    reservations.iter().filter(|r| r.holder.container_id == id && r.holder.ifname.is_none()).map(|r| r.ip).collect()
}

/// The set of reserved addresses, for quick skipping and for STATUS.
pub fn reserved_set(reservations: &[Reservation]) -> HashSet<IpAddr> {
    reservations.iter().map(|r| r.ip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "host-local-store-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn file_format_matches_the_reference() {
        let data = tmp();
        let store = Store::open(&data, "net").unwrap();
        assert!(store.reserve("10.0.0.2".parse().unwrap(), " c1 ", "eth0", 0).unwrap());
        assert!(!store.reserve("10.0.0.2".parse().unwrap(), "c2", "eth0", 0).unwrap(), "taken");
        assert!(store.reserve("fd00::2".parse().unwrap(), "c1", "eth0", 1).unwrap());
        let dir = data.join("net");
        assert_eq!(fs::read_to_string(dir.join("10.0.0.2")).unwrap(), "c1\r\neth0");
        assert_eq!(fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(), "10.0.0.2");
        assert_eq!(fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(), "fd00::2");
        assert!(dir.join("lock").exists());
        assert_eq!(store.last_reserved(1), Some("fd00::2".parse().unwrap()));
        fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn old_id_only_files_belong_to_the_container_unless_the_interface_has_its_own() {
        let r = |ip: &str, content: &str| Reservation { ip: ip.parse().unwrap(), holder: Holder::parse(content) };
        let store = [r("10.0.0.2", "c1\n"), r("10.0.0.3", "c2\r\neth0"), r("10.0.0.4", "c2")];
        assert_eq!(held_by(&store, "c1", "eth0"), ["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(held_by(&store, "c2", "eth0"), ["10.0.0.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(held_by(&store, "c2", "net1"), ["10.0.0.4".parse::<IpAddr>().unwrap()]);
        assert!(held_by(&store, "c3", "eth0").is_empty());
    }

    #[test]
    fn the_store_is_private_reached_through_no_symlink_and_gc_sweeps_what_a_kill_left() {
        use std::os::unix::fs::PermissionsExt;
        let data = tmp();
        let store = Store::open(&data, "net").unwrap();
        store.reserve("10.0.0.2".parse().unwrap(), "c1", "eth0", 0).unwrap();
        store.index("c1", "eth0", &["10.0.0.2".parse().unwrap()]).unwrap();
        let dir = data.join("net");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for f in ["10.0.0.2", "lock", "last_reserved_ip.0"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        // What a writer killed mid-way leaves: a temporary file and a half-written index entry.
        fs::write(dir.join("last_reserved_ip.0.tmp"), "10.0").unwrap();
        fs::write(dir.join(INDEX_DIR).join("00000000deadbeef"), "c9\n").unwrap();
        store.sweep(|id, ifname| id == "c1" && ifname == "eth0").unwrap();
        assert_eq!(fs::read_dir(dir.join(INDEX_DIR)).unwrap().count(), 1, "only c1's entry is left");
        assert!(!dir.join("last_reserved_ip.0.tmp").exists());
        drop(store);
        let elsewhere = data.with_extension("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, data.join("linked")).unwrap();
        assert_eq!(Store::open(&data, "linked").err().map(|e| e.code()), Some(7));
        assert_eq!(refuse_symlink(&data.join("linked"), "dataDir").unwrap_err().code(), 7);
        assert!(fs::read_dir(&elsewhere).unwrap().next().is_none(), "nothing was written through the link");
        fs::remove_dir_all(&data).unwrap();
        fs::remove_dir_all(&elsewhere).unwrap();
    }
}
