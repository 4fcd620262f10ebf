//! `make demo`'s script as a new user meets it: several runs in a row while every CPU is busy, each one passing
//! and showing the traffic it promises (nothing in it may wait a fixed time for something to become ready).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Threads spinning on every CPU until dropped (also when an assertion fails).
struct BusyCpus {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCpus {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        BusyCpus { stop, threads }
    }
}

impl Drop for BusyCpus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn the_demo_passes_run_after_run_with_the_cpus_busy() {
    integration::bin_dir(); // the plugins are built
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh");
    let _busy = BusyCpus::start();
    for run in 1..=3 {
        let out = Command::new("bash").arg(&script).output().unwrap();
        let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "demo run {run} failed:\n{shown}");
        for seen in [
            "pod1: connected",
            "pod3: connected over IPv4",
            "pod3: connected over IPv6",
            "outside host: connection from 192.0.2.1",
            "outside host: connection from fd90::",
            "pod4: connected over IPv6",
            "outside host: connection from 2001:db8::1",
            "veths left in the node: 0",
            "addresses still reserved: 0",
            "nftables tables in the node: 0",
        ] {
            assert!(shown.contains(seen), "demo run {run} did not show {seen:?}:\n{shown}");
        }
    }
}
