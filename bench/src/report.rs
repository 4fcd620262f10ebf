//! bench/RESULTS.md (tables, with the machine noted) and bench/results.json (every sample, for the plot).

use crate::growth::Level;
use crate::latency::Latency;
use crate::stats::Samples;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

pub struct Report<'a> {
    pub command: String,
    pub latency: Vec<(&'a str, &'a str, Latency)>,
    pub growth: Vec<(&'a str, &'a str, Vec<Level>)>,
    pub rss: BTreeMap<String, u64>,
    /// Per plugin and verb, from the latency runs.
    pub calls: BTreeMap<String, Samples>,
    pub sizes: BTreeMap<String, u64>,
}

pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']));
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output();
    let date = date.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    format!("{}, {cpus} CPUs, Linux {}, {date}", model.unwrap_or("unknown CPU"), kernel.trim())
}

fn ratio(ours: f64, reference: f64) -> String {
    if ours > 0.0 {
        format!("{:.1}× faster", reference / ours)
    } else {
        "-".into()
    }
}

impl Report<'_> {
    fn latency_of(&self, key: &str) -> Option<&Latency> {
        self.latency.iter().find(|(k, _, _)| *k == key).map(|(_, _, l)| l)
    }

    /// ADD+DEL median of our chain against the reference chain it replaces.
    pub fn headline(&self, ours: &str, reference: &str) -> Option<(f64, f64)> {
        let (o, r) = (self.latency_of(ours)?, self.latency_of(reference)?);
        Some((o.add.paired_sum(&o.del).median(), r.add.paired_sum(&r.del).median()))
    }

    pub fn markdown(&self, machine: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmark results\n\nMachine: {machine}. Command: `{}`.\n", self.command);
        let _ = writeln!(
            md,
            "Times are wall-clock milliseconds from spawning the first plugin of a chain to reaping the last, as a \
             runtime sees them, summed over the chain's plugins. Every subject has its own node netns; every sample \
             is a fresh pod netns; subjects take turns sample by sample, in a rotating order, so drift hits all alike.\n"
        );
        let _ = writeln!(md, "## ADD and DEL latency\n");
        let _ = writeln!(md, "| chain | n | ADD median | ADD p95 | DEL median | DEL p95 | ADD+DEL median | against |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for (key, label, l) in &self.latency {
            let total = l.add.paired_sum(&l.del).median();
            let against = match *key {
                "ours_ptp" | "ours_chain" => {
                    self.headline(key, "ref_ptp_masq").map(|(o, r)| ratio(o, r) + " than reference ptp (ipMasq)")
                }
                "ours_portmap" => {
                    self.headline(key, "ref_portmap").map(|(o, r)| ratio(o, r) + " than the reference with portmap")
                }
                _ => None,
            };
            let _ = writeln!(
                md,
                "| {label} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {total:.1} | {} |",
                l.add.0.len(),
                l.add.median(),
                l.add.percentile(95.0),
                l.del.median(),
                l.del.percentile(95.0),
                against.unwrap_or_default()
            );
        }
        if let Some((o, r)) = self.headline("ours_chain", "ref_ptp_masq") {
            let _ = writeln!(
                md,
                "\nOur full chain (ptp + linkgroup + masquerade + host-local) takes {o:.1} ms for ADD+DEL against \
                 {r:.1} ms for the reference ptp with ipMasq and host-local: **{:.1}× faster**.",
                r / o
            );
        }
        let _ = writeln!(md, "\n### Per plugin\n\nEach plugin's own calls in the chains above (ms; ptp's include the host-local it runs).\n");
        let _ = writeln!(md, "| plugin and verb | n | median | p95 |\n|---|---|---|---|");
        for (name, samples) in &self.calls {
            let _ = writeln!(
                md,
                "| {name} | {} | {:.1} | {:.1} |",
                samples.0.len(),
                samples.median(),
                samples.percentile(95.0)
            );
        }
        let _ = writeln!(md, "\n## Growth with live pods\n");
        let _ = writeln!(md, "One more pod's ADD and DEL (medians, ms) on a node that already has N live pods, and the nftables rules there. The floor shows what the kernel's own work does as pods accumulate.\n");
        let mut header = String::from("| live pods |");
        let mut rule = String::from("|---|");
        for (_, label, _) in &self.growth {
            let _ = write!(header, " {label}: ADD | DEL | nft rules |");
            rule += "---|---|---|";
        }
        let _ = writeln!(md, "{header}\n{rule}");
        let levels = self.growth.first().map_or(0, |(_, _, l)| l.len());
        for i in 0..levels {
            let _ = write!(md, "| {} |", self.growth[0].2[i].live);
            for (_, _, series) in &self.growth {
                let l = &series[i];
                let _ = write!(md, " {:.1} | {:.1} | {} |", l.add.median(), l.del.median(), l.rules);
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md, "\n![ADD and DEL latency against live pods](growth.png)\n");
        let _ = writeln!(md, "## Footprint\n");
        let _ = writeln!(md, "Peak RSS over one ADD and DEL, measured under static busybox's `time` (ptp's includes the host-local it runs; host-local's own is measured alone; egress-v4 and egress-v6 are in none of these chains). Sizes are after `strip`.\n");
        let _ = writeln!(md, "| plugin | peak RSS (KiB) | stripped size (KiB) |\n|---|---|---|");
        for (name, size) in &self.sizes {
            let rss = self.rss.get(name).map_or("-".into(), |r| r.to_string());
            let _ = writeln!(md, "| {name} | {rss} | {} |", size / 1024);
        }
        md
    }

    pub fn json(&self, machine: &str) -> Value {
        let mut latency = Map::new();
        for (key, label, l) in &self.latency {
            let total = l.add.paired_sum(&l.del);
            latency.insert(
                key.to_string(),
                json!({"label": label, "add": l.add.to_json(), "del": l.del.to_json(), "add_del": total.to_json()}),
            );
        }
        let mut growth = Map::new();
        for (key, label, series) in &self.growth {
            let levels: Vec<Value> = series
                .iter()
                .map(|l| json!({"live": l.live, "rules": l.rules, "add": l.add.to_json(), "del": l.del.to_json()}))
                .collect();
            growth.insert(key.to_string(), json!({"label": label, "levels": levels}));
        }
        json!({"machine": machine, "command": self.command, "latency": latency, "growth": growth,
               "rss_kib": self.rss, "stripped_bytes": self.sizes})
    }

    pub fn write(&self, dir: &Path) {
        let machine = machine();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("RESULTS.md"), self.markdown(&machine)).unwrap();
        let json = serde_json::to_string_pretty(&self.json(&machine)).unwrap();
        std::fs::write(dir.join("results.json"), json + "\n").unwrap();
    }
}
