//! One timed process run inside the node netns, as a runtime runs a plugin: its wall time from spawn to
//! exit, and its stdout. With `rss`, the process runs under `busybox time`, which reports its peak RSS.
//!
//! The process is spawned from a thread already in the node netns, so no code runs between fork and exec and
//! the standard library spawns it as Go's runtimes do, sharing the parent's memory until exec (posix_spawn, a
//! vfork). A fork would copy the page tables of the bench's memory, which grows with the live pods it holds:
//! charged to every plugin process, that made chains of several processes seem to grow more than they do.

use integration::Netns;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Run {
    pub elapsed: Duration,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// Peak RSS in KiB, when asked for.
    pub max_rss_kib: Option<u64>,
}

pub fn run(node: &Netns, program: &Path, args: &[&str], env: &[(&str, &str)], stdin: &[u8], rss: bool) -> Run {
    // A process's peak RSS counts the memory it had before exec, i.e. a copy of whoever forked it: the
    // plugin must be forked by a small process (static busybox's `time`), not by this one, to be measured.
    let report = rss.then(|| integration::TempDir::new("bench-rss"));
    let mut cmd = match &report {
        Some(dir) => {
            let mut c = Command::new("/bin/busybox");
            c.args(["time", "-f", "%M", "-o"]).arg(dir.path().join("rss")).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let (program, stdin): (PathBuf, Vec<u8>) = (program.to_path_buf(), stdin.to_vec());
    let (elapsed, status, stdout) = node.run(move || {
        let start = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let _ = child.stdin.take().unwrap().write_all(&stdin);
        let mut stdout = Vec::new();
        let _ = child.stdout.take().unwrap().read_to_end(&mut stdout);
        let status = child.wait().expect("wait");
        (start.elapsed(), status, stdout)
    });
    let max_rss_kib = report.map(|dir| {
        let text = std::fs::read_to_string(dir.path().join("rss")).unwrap_or_default();
        // busybox 1.35 prints ru_maxrss (KiB) as if it counted pages: scaled by the page size / 1024.
        // SAFETY: sysconf only reads a constant.
        let page_kib = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) } / 1024).max(1) as u64;
        text.trim().parse::<u64>().unwrap_or(0) / page_kib
    });
    Run { elapsed, status, stdout, max_rss_kib }
}
