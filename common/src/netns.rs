//! Network namespaces: open one by path (refusing anything that is not a namespace file) and enter it
//! on the current thread for the span of a guard, which returns to the original namespace on drop,
//! also when unwinding from a panic. setns is per thread: never use this across an async thread pool.

use crate::error::{CniError, Result};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::os::fd::AsFd;

const NSFS_MAGIC: i64 = 0x6e73_6673;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Open the netns at `path`; a path that does not exist is `NetnsMissing` (DEL tolerates it).
    pub fn open(path: &str) -> Result<Self> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CniError::NetnsMissing(path.to_string()),
            _ => CniError::Netns(format!("opening {path}: {e}")),
        })?;
        let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| CniError::Netns(format!("statfs {path}: {e}")))?;
        let magic = fs.filesystem_type().0 as i64;
        if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
            return Err(CniError::Netns(format!("{path} is not a network namespace file (nsfs)")));
        }
        Ok(Netns { file, path: path.to_string() })
    }

    /// The calling thread's current netns.
    pub fn current() -> Result<Self> {
        Netns::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Enter this netns on the current thread until the guard drops.
    pub fn enter(&self) -> Result<NetnsGuard> {
        let original = Netns::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| CniError::Netns(format!("entering {}: {e} (is it a network namespace?)", self.path)))?;
        Ok(NetnsGuard { original })
    }

    /// Run `f` inside this netns and come back, whatever `f` does.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let _guard = self.enter()?;
        Ok(f())
    }
}

/// Returns the thread to the netns it was in when dropped.
#[must_use]
pub struct NetnsGuard {
    original: Netns,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Carrying on in the wrong namespace could change the wrong host: stop here.
            log::error!("cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}
