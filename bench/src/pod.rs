//! A pod netns held as a runtime holds one: bind-mounted on a file. The mounts are made in the bench's own
//! mount namespace (`PodMounts`), so they vanish with the bench, even when it is killed.
//!
//! Held by open files instead, a thousand live pods put a thousand descriptors in the bench, which every fork
//! copies and every exec closes: about 0.15 ms more per plugin process per thousand here, charged to chains of
//! several processes as growth with live pods. A runtime's forks pay nothing for its pods' bind mounts.

use integration::TempDir;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

static MOUNT_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Where pod netns are mounted, alive as long as this value. Made first in `main`: the bench must still be
/// one thread when it leaves the machine's mount namespace, so that every thread it starts is in its own.
pub struct PodMounts {
    _dir: TempDir,
}

impl PodMounts {
    pub fn new() -> PodMounts {
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS): run the bench as root");
        // Private: a bind mount made here must not propagate back to the machine's namespace.
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .expect("make / private in the bench's mount namespace");
        let dir = TempDir::new("bench-netns");
        MOUNT_DIR.set(dir.path().to_path_buf()).expect("one PodMounts");
        PodMounts { _dir: dir }
    }
}

pub struct PodNetns {
    path: String,
}

impl PodNetns {
    pub fn new() -> PodNetns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = MOUNT_DIR.get().expect("PodMounts::new first");
        let path = dir.join(format!("pod-{}", N.fetch_add(1, Ordering::SeqCst)));
        std::fs::File::create(&path).expect("the pod netns mount point");
        let target = path.clone();
        std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): run as root");
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .expect("bind-mount the pod netns");
        })
        .join()
        .expect("netns thread");
        PodNetns { path: path.to_str().expect("a UTF-8 temp dir").to_string() }
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = umount2(self.path.as_str(), MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.path);
    }
}
