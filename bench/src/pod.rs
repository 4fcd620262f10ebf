//! A pod netns held only by an open file, named `/proc/<pid>/fd/<n>`. The test harness parks a thread per
//! netns instead, but a thousand parked threads make every fork of the bench slower and would be counted as
//! plugin latency; a runtime holds a pod's netns by a bind mount, which costs its forks nothing either.

use std::fs::File;
use std::os::fd::AsRawFd;

pub struct PodNetns {
    _file: File,
    path: String,
}

impl PodNetns {
    pub fn new() -> PodNetns {
        let file = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): run as root");
            File::open("/proc/thread-self/ns/net").expect("open the new netns")
        })
        .join()
        .expect("netns thread");
        let path = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        PodNetns { _file: file, path }
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}
