//! Network namespaces: open one by path (refusing anything that is not a namespace file) and enter it
//! on the current thread for the span of a guard, which returns to the original namespace on drop,
//! also when unwinding from a panic. setns is per thread: never use this across an async thread pool.

use crate::error::{CniError, Result};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};

const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: nix::libc::c_ulong = 0xb703;

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Open the netns at `path`; a path that does not exist is `NetnsMissing` (DEL tolerates it), and
    /// anything but a network namespace file (a regular file, a symlink to one, a mount namespace) is
    /// refused as a bad CNI_NETNS.
    pub fn open(path: &str) -> Result<Self> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CniError::NetnsMissing(path.to_string()),
            _ => {
                let hint =
                    crate::error::privilege_hint(e.raw_os_error(), "the right to open the pod's network namespace");
                CniError::Netns(format!("opening {path}: {e}{hint}"))
            }
        })?;
        let not_a_netns = || CniError::InvalidEnv(format!("CNI_NETNS {path} is not a network namespace"));
        let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| CniError::Netns(format!("statfs {path}: {e}")))?;
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(not_a_netns());
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the namespace behind the fd.
        let kind = unsafe { nix::libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != nix::libc::CLONE_NEWNET {
            return Err(not_a_netns());
        }
        Ok(Netns { file, path: path.to_string() })
    }

    /// DEL's view of CNI_NETNS: none given or gone is `None` (DEL still cleans the node); anything else
    /// that is not a network namespace is an error, so a bad path changes nothing.
    pub fn open_for_del(path: &str) -> Result<Option<Self>> {
        if path.is_empty() {
            return Ok(None);
        }
        match Netns::open(path) {
            Ok(ns) => Ok(Some(ns)),
            Err(CniError::NetnsMissing(_)) => {
                log::info!("DEL without the pod netns: {path} is gone");
                Ok(None)
            }
            Err(e) => Err(e),
        }
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
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            let hint = crate::error::privilege_hint(
                Some(e as i32),
                "CAP_SYS_ADMIN, which entering a pod's network namespace needs",
            );
            CniError::Netns(format!("entering {}: {e}{hint}", self.path))
        })?;
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
