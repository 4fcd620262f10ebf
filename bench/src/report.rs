//! bench/RESULTS.md (tables, with the machine noted) and bench/results.json (every sample, for the plot).

use crate::growth::Level;
use crate::latency::Latency;
use crate::stats::{self, Samples};
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
    /// VERSION of each plugin and the bare static executable's start (`start.rs`).
    pub start: Vec<(String, Samples)>,
    /// Where our plugins were taken from.
    pub bin_dir: String,
}

/// One of the speed aims (issue 19) and whether this run met it.
pub struct Aim {
    pub what: String,
    pub measured: String,
    pub met: bool,
}

/// At most this much above a bare static executable's start, on a verb that changes nothing.
const START_BUDGET_MS: f64 = 0.3;

/// The chain's ADD and the floor do the same kernel work as pods accumulate, so their growths differ by noise, and
/// two medians compared as they are pass or fail by chance. The growth aim asks instead that a 95% interval of
/// the difference stay under this share of the chain's ADD at the first level: the DEL aim's allowance.
const GROWTH_MARGIN: f64 = 0.1;

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
    fn bare_start(&self) -> f64 {
        self.start.iter().find(|(n, _)| n == crate::start::BARE).map_or(0.0, |(_, s)| s.median())
    }

    fn add_ratio(&self, ours: &str, reference: &str) -> Option<(f64, f64)> {
        Some((self.latency_of(ours)?.add.median(), self.latency_of(reference)?.add.median()))
    }

    /// The levels of growth subject `key`.
    fn growth_series(&self, key: &str) -> Option<&[Level]> {
        self.growth.iter().find(|(k, _, _)| *k == key).map(|(_, _, levels)| levels.as_slice())
    }

    /// ADD growth of the medians from the first level to the last, the levels sampled one after the other.
    fn add_growth_one_after_another(&self, key: &str) -> Option<f64> {
        let series = self.growth_series(key)?;
        let (first, last) = (series.first()?, series.last()?);
        (series.len() > 1).then(|| last.add.median() - first.add.median())
    }

    /// (ADD, DEL) growth at the last level against its twin kept at the first level, sampled in the same turns.
    fn growth_alongside(&self, key: &str) -> Option<(f64, f64)> {
        let last = self.growth_series(key)?.last()?;
        let kept = last.alongside.as_ref()?;
        Some((last.add.median() - kept.add.median(), last.del.median() - kept.del.median()))
    }

    /// A 95% interval for how much more the chain's median ADD grows than the floor's (each at the last level against
    /// its twin kept at the first), and the chain's median ADD at the first level.
    fn add_growth_beyond_floor(&self) -> Option<((f64, f64), f64)> {
        let ends = |key: &str| {
            let series = self.growth_series(key)?;
            let last = series.last()?;
            Some((&series.first()?.add, &last.add, &last.alongside.as_ref()?.add))
        };
        let ((ours_first, ours_last, ours_kept), (_, floor_last, floor_kept)) = (ends("ours_chain")?, ends("floor")?);
        let beyond = |s: &[Samples]| (s[0].median() - s[1].median()) - (s[2].median() - s[3].median());
        let interval = stats::resampled_interval(&[ours_last, ours_kept, floor_last, floor_kept], beyond)?;
        Some((interval, ours_first.median()))
    }

    /// The aims of issue 19, measured in this run.
    pub fn aims(&self) -> Vec<Aim> {
        let mut aims = Vec::new();
        for (key, factor, what) in [
            ("ours_ptp_masq", 5.0, "ptp (ipMasq, linkGroup) + host-local ADD at least 5× faster than reference ptp (ipMasq) + host-local"),
            ("ours_chain", 3.5, "ptp + linkgroup + masquerade + host-local ADD at least 3.5× faster than reference ptp (ipMasq) + host-local"),
        ] {
            if let Some((o, r)) = self.add_ratio(key, "ref_ptp_masq") {
                let measured = format!("{o:.2} ms against {r:.2} ms: {:.1}×", r / o);
                aims.push(Aim { what: what.into(), measured, met: r >= factor * o });
            }
        }
        if let (Some((add, del)), Some((floor_add, floor_del)), Some(first)) = (
            self.growth_alongside("ours_chain"),
            self.growth_alongside("floor"),
            self.growth_series("ours_chain").and_then(|s| s.first()),
        ) {
            let live: Vec<String> = self.growth[0].2.iter().map(|l| l.live.to_string()).collect();
            let (one, all) = (live.first().cloned().unwrap_or_default(), live.last().cloned().unwrap_or_default());
            let one_by_one =
                match (self.add_growth_one_after_another("ours_chain"), self.add_growth_one_after_another("floor")) {
                    (Some(a), Some(f)) => format!("; levels one after the other: {a:+.2} against {f:+.2} ms"),
                    _ => String::new(),
                };
            if let Some(((low, high), first_add)) = self.add_growth_beyond_floor() {
                let margin = GROWTH_MARGIN * first_add;
                aims.push(Aim {
                    what: format!(
                        "the chain's ADD grows no more than the floor's ({one} → {all} live pods, each node against \
                         a twin kept at {one}, sampled in the same turns): what it grows beyond the floor's growth, \
                         95% resampled interval, stays under {:.0}% of its ADD at the first level",
                        GROWTH_MARGIN * 100.0
                    ),
                    measured: format!(
                        "{add:+.2} ms against the floor's {floor_add:+.2} ms: {:+.2} ms beyond it, 95% interval \
                         {low:+.2} to {high:+.2} ms, against {margin:.2} ms{one_by_one}",
                        add - floor_add
                    ),
                    met: high <= margin,
                });
            }
            aims.push(Aim {
                what: "the chain's DEL is flat: it grows no more than the floor's (read as ADD's), give or take 10% \
                       of its first level"
                    .into(),
                measured: format!("{del:+.2} ms against the floor's {floor_del:+.2} ms"),
                met: del <= floor_del.max(0.0) + 0.1 * first.del.median(),
            });
        }
        let bare = self.bare_start();
        let worst = self
            .start
            .iter()
            .filter(|(n, _)| n.starts_with("ours "))
            .map(|(n, s)| (n.as_str(), s.median() - bare))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((name, above)) = worst {
            aims.push(Aim {
                what: format!(
                    "no plugin spends more than {START_BUDGET_MS} ms above a bare static executable's start on a \
                     verb that changes nothing (VERSION, or an ADD the pod has already had)"
                ),
                measured: format!("the most: {name}, {above:+.2} ms (bare start {bare:.2} ms)"),
                met: above <= START_BUDGET_MS,
            });
        }
        aims
    }

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
             is a fresh pod netns; subjects take turns sample by sample, in an order shuffled each round, so that \
             drift and what ran just before hit all alike.\n"
        );
        let _ = writeln!(md, "Our plugins: `{}`.\n", self.bin_dir);
        let _ = writeln!(md, "## Aims\n\n| aim | measured | |\n|---|---|---|");
        for aim in self.aims() {
            let _ =
                writeln!(md, "| {} | {} | {} |", aim.what, aim.measured, if aim.met { "met" } else { "**not met**" });
        }
        let _ = writeln!(md, "\n## ADD and DEL latency\n");
        let _ = writeln!(md, "| chain | n | ADD median | ADD p95 | DEL median | DEL p95 | ADD+DEL median | against |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for (key, label, l) in &self.latency {
            let total = l.add.paired_sum(&l.del).median();
            let against = match *key {
                "ours_ptp" | "ours_ptp_masq" | "ours_chain" => {
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
        let bare = self.bare_start();
        let _ = writeln!(md, "\n### Per plugin\n\nEach plugin's own calls in the chains above (ms; ptp's include its host-local, run in ptp's own process when it is ours of the same build), then VERSION alone and the chain's linkgroup and masquerade ADD run again on a pod that has had them (its group set, its member element in place), which change nothing; each against the start of a bare static executable linked against musl as ours are (a C `main` that returns, `musl-gcc -static`: {bare:.2} ms here). The same `main` linked by `gcc -static` (glibc) is the last row. Ours and the bare starts take turns; the reference's VERSION after them, apart: Go executables run among them slowed ours by 0.03–0.05 ms and the bare start by 0.01 at most.\n");
        let _ =
            writeln!(md, "| plugin and verb | n | median | p95 | above a bare static start |\n|---|---|---|---|---|");
        let versions = self.start.iter().filter(|(n, _)| !n.starts_with("bare "));
        let glibc = self.start.iter().filter(|(n, _)| n == crate::start::BARE_GLIBC);
        for (name, samples) in self.calls.iter().chain(versions.chain(glibc).map(|(n, s)| (n, s))) {
            let _ = writeln!(
                md,
                "| {name} | {} | {:.2} | {:.2} | {:+.2} |",
                samples.0.len(),
                samples.median(),
                samples.percentile(95.0),
                samples.median() - bare
            );
        }
        let _ = writeln!(md, "\n## Growth with live pods\n");
        let counts: Vec<String> = self
            .growth
            .iter()
            .map(|(_, label, levels)| format!("{} for {label}", levels.first().map_or(0, |l| l.add.0.len())))
            .collect();
        let _ = writeln!(md, "One more pod's ADD and DEL (medians, ms) on a node that already has N live pods, and the nftables rules there. The floor shows what the kernel's own work does as pods accumulate. The chain's and the floor's samples are taken in turns; the reference's after them, so that what it leaves behind (0.4–0.5 ms more for whatever runs next at 1000 pods) does not widen the spread of the two compared. Samples per level: {}.\n", counts.join("; "));
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
        self.growth_alongside_table(&mut md);
        let _ = writeln!(md, "\n![ADD and DEL latency against live pods](growth.png)\n");
        self.growth_per_plugin(&mut md);
        let _ = writeln!(md, "## Footprint\n");
        let _ = writeln!(md, "Peak RSS over one ADD and DEL, measured under static busybox's `time` (ptp's includes the host-local it runs; host-local's own is measured alone; egress-v4 and egress-v6 are in none of these chains). Sizes are after `strip`.\n");
        let _ = writeln!(md, "| plugin | peak RSS (KiB) | stripped size (KiB) |\n|---|---|---|");
        for (name, size) in &self.sizes {
            let rss = self.rss.get(name).map_or("-".into(), |r| r.to_string());
            let _ = writeln!(md, "| {name} | {rss} | {} |", size / 1024);
        }
        md
    }

    /// Growth read against the twins kept at the first level, level by level: what the aims are measured on.
    fn growth_alongside_table(&self, md: &mut String) {
        let twinned: Vec<_> = self.growth.iter().filter(|(_, _, s)| s.iter().all(|l| l.alongside.is_some())).collect();
        let Some(first) = twinned.first().and_then(|(_, _, s)| s.first()) else { return };
        let _ = writeln!(md, "\nThe levels above are sampled one after the other, so a drift of the machine's speed between them shows as growth, and more for a slower subject when it slows every process by a share. Each of these two subjects therefore has a twin (the same setup with a host-local store of its own) on a node kept at the first level ({} live pod{}), sampled in the same shuffled turns; its growth is read against that twin, and the aims are measured on this reading (medians, ms):\n", first.live, if first.live == 1 { "" } else { "s" });
        let mut header = String::from("| live pods |");
        for (_, label, _) in &twinned {
            let _ = write!(header, " {label}: ADD | its twin's | ADD growth | DEL growth |");
        }
        let _ = writeln!(
            md,
            "{header} the chain's ADD growth beyond the floor's |\n|---|{}---|",
            "---|".repeat(4 * twinned.len())
        );
        for i in 0..twinned[0].2.len() {
            let _ = write!(md, "| {} |", twinned[0].2[i].live);
            let mut growths = Vec::new();
            for (_, _, series) in &twinned {
                let l = &series[i];
                let Some(kept) = &l.alongside else { continue };
                let growth = l.add.median() - kept.add.median();
                let del = l.del.median() - kept.del.median();
                let _ = write!(md, " {:.2} | {:.2} | {growth:+.2} | {del:+.2} |", l.add.median(), kept.add.median());
                growths.push(growth);
            }
            let at = |key: &str| twinned.iter().position(|(k, _, _)| *k == key).map(|j| growths[j]);
            let beyond = match (at("ours_chain"), at("floor")) {
                (Some(ours), Some(floor)) => format!("{:+.2}", ours - floor),
                _ => "-".into(),
            };
            let _ = writeln!(md, " {beyond} |");
        }
    }

    /// Where a chain's growth is: each of its plugins' medians at each level.
    fn growth_per_plugin(&self, md: &mut String) {
        for (_, label, series) in self.growth.iter().filter(|(_, _, s)| s.iter().any(|l| l.calls.len() > 1)) {
            let names: Vec<&String> = series[0].calls.keys().collect();
            let _ = writeln!(md, "Each plugin of {label} (medians, ms):\n");
            let header: String = names.iter().map(|n| format!(" {n} |")).collect();
            let _ = writeln!(md, "| live pods |{header}\n|---|{}", "---|".repeat(names.len()));
            for level in series {
                let cells: String = names
                    .iter()
                    .map(|n| level.calls.get(*n).map_or(" - |".into(), |s| format!(" {:.2} |", s.median())))
                    .collect();
                let _ = writeln!(md, "| {} |{cells}", level.live);
            }
            let _ = writeln!(md);
        }
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
                .map(|l| {
                    let calls: Map<String, Value> = l.calls.iter().map(|(n, s)| (n.clone(), s.to_json())).collect();
                    let alongside =
                        l.alongside.as_ref().map(|k| json!({"add": k.add.to_json(), "del": k.del.to_json()}));
                    json!({"live": l.live, "rules": l.rules, "add": l.add.to_json(), "del": l.del.to_json(),
                           "alongside": alongside, "calls": calls})
                })
                .collect();
            growth.insert(key.to_string(), json!({"label": label, "levels": levels}));
        }
        let start: Map<String, Value> = self.start.iter().map(|(n, s)| (n.clone(), s.to_json())).collect();
        let aims: Vec<Value> =
            self.aims().iter().map(|a| json!({"aim": a.what, "measured": a.measured, "met": a.met})).collect();
        json!({"machine": machine, "command": self.command, "binaries": self.bin_dir, "aims": aims,
               "latency": latency, "growth": growth, "start": start, "rss_kib": self.rss,
               "stripped_bytes": self.sizes})
    }

    pub fn write(&self, dir: &Path) {
        let machine = machine();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("RESULTS.md"), self.markdown(&machine)).unwrap();
        let json = serde_json::to_string_pretty(&self.json(&machine)).unwrap();
        std::fs::write(dir.join("results.json"), json + "\n").unwrap();
    }
}
