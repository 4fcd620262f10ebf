//! Per-plugin peak RSS and stripped binary size, ours and the reference's.

use crate::exec;
use crate::pod::PodNetns;
use crate::setups::{Chain, Subject};
use integration::{bin_dir, Netns, TempDir, REFERENCE_DIR};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const OURS: [&str; 7] = ["ptp", "host-local", "linkgroup", "masquerade", "egress-v4", "egress-v6", "policy-route"];
pub const REFERENCE: [&str; 3] = ["ptp", "host-local", "portmap"];

/// Size in bytes of `binary` after `strip` (Debian's reference binaries are shipped stripped).
pub fn stripped_size(binary: &Path) -> u64 {
    let dir = TempDir::new("bench-strip");
    let copy = dir.path().join("stripped");
    let status = Command::new("strip").arg("-o").arg(&copy).arg(binary).status().expect("run strip (binutils)");
    assert!(status.success(), "strip {}", binary.display());
    std::fs::metadata(copy).unwrap().len()
}

pub fn sizes() -> BTreeMap<String, u64> {
    let ours = OURS.iter().map(|p| (format!("ours {p}"), bin_dir().join(p)));
    let reference = REFERENCE.iter().map(|p| (format!("reference {p}"), PathBuf::from(REFERENCE_DIR).join(p)));
    ours.chain(reference).map(|(name, path)| (name, stripped_size(&path))).collect()
}

/// Peak RSS (KiB) of each plugin over one ADD and DEL of each chain, and of host-local run on its own
/// (inside a chain the kernel counts it into ptp's figure).
pub fn peak_rss(chains: &[&Chain]) -> BTreeMap<String, u64> {
    let node = Netns::new();
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for chain in chains {
        let (chain_node, pod) = (Netns::new(), PodNetns::new());
        chain.prepare(&chain_node);
        let (_, added) = chain.add_with(&chain_node, "rss", &pod, true);
        chain.del_with(&chain_node, "rss", &pod, &added, true);
        for (name, kib) in chain.rss.lock().unwrap().iter() {
            let peak = out.entry(name.clone()).or_default();
            *peak = (*peak).max(*kib);
        }
    }
    for (who, dir) in [("ours", bin_dir()), ("reference", PathBuf::from(REFERENCE_DIR))] {
        let data = TempDir::new("bench-ipam");
        // As ptp delegates: the whole network config, with the IPAM plugin's part under "ipam".
        let ipam = json!({"type": "host-local", "dataDir": data.str(), "ranges": [[{"subnet": "10.62.0.0/16"}]]});
        let conf = json!({"cniVersion": "1.0.0", "name": "bench", "type": "ptp", "ipam": ipam});
        let mut peak = 0;
        for verb in ["ADD", "DEL"] {
            let env = [
                ("CNI_COMMAND", verb),
                ("CNI_CONTAINERID", "rss"),
                ("CNI_NETNS", "/proc/self/ns/net"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", dir.to_str().unwrap()),
            ];
            let run = exec::run(&node, &dir.join("host-local"), &[], &env, conf.to_string().as_bytes(), true);
            assert!(run.status.success(), "{who} host-local {verb}: {}", String::from_utf8_lossy(&run.stdout));
            peak = peak.max(run.max_rss_kib.unwrap_or(0));
        }
        out.insert(format!("{who} host-local"), peak);
    }
    out
}
