//! `make bench`: ADD/DEL latency of our chains against the reference Go plugins, side by side and interleaved,
//! its growth with live pods, the floor (the same kernel work from one minimal process, and a bare
//! fork+exec), each plugin's start cost above a bare static executable's, and each plugin's peak RSS and
//! stripped size, then whether the speed aims are met. Everything runs in throwaway namespaces. Our plugins are
//! taken from `CNI_CHAIN_BIN_DIR` when set (`make bench`: the static release binaries).
//! Writes RESULTS.md and results.json into the output directory; bench/plot.py draws growth.png from the JSON.
//!
//!     cni-chain-bench [--quick] [--levels 1,100,500,1000] [--out DIR]
//!     cni-chain-bench --hot-text MAPS_DIR --out SCRIPT      (make hot-text: see hot_text.rs)

mod exec;
mod footprint;
mod growth;
#[cfg(target_arch = "x86_64")]
mod hot_text;
mod latency;
mod pod;
mod report;
mod setups;
mod start;
mod stats;

use setups::{Chain, Floor, ForkExec, Subject};
use std::path::PathBuf;

struct Options {
    out: PathBuf,
    samples: usize,
    levels: Vec<usize>,
    growth_samples: usize,
    /// Per probe of the start costs (ours and the bare starts; the reference's take `samples`).
    start_samples: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out =
        args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1)).map_or("bench".into(), PathBuf::from);
    let mut opts = if quick {
        Options { out, samples: 10, levels: vec![1, 50], growth_samples: 5, start_samples: 10 }
    } else {
        // The growth aim's interval for the chain's growth beyond the floor's spanned about ±0.35 ms at 60 samples a
        // level, ±0.2 ms at 150, and ±0.12 ms at 300 with the reference sampled apart, against about 0.3 ms allowed.
        Options { out, samples: 60, levels: vec![1, 100, 500, 1000], growth_samples: 300, start_samples: 300 }
    };
    if let Some(levels) = args.iter().position(|a| a == "--levels").and_then(|i| args.get(i + 1)) {
        opts.levels = levels.split(',').map(|n| n.parse().expect("--levels 1,100,500")).collect();
    }
    opts
}

fn main() {
    let opts = options();
    let _pod_mounts = pod::PodMounts::new();
    #[cfg(target_arch = "x86_64")]
    if let Some(maps) = std::env::args().skip_while(|a| a != "--hot-text").nth(1) {
        return hot_text::run(std::path::Path::new(&maps), &opts.out);
    }
    let (ours_ptp, ours_ptp_masq, ours_chain) = (Chain::ours_ptp(), Chain::ours_ptp_masq(), Chain::ours_chain());
    let (ref_masq, ref_plain) = (Chain::reference_ptp(true), Chain::reference_ptp(false));
    let (ours_portmap, ref_portmap) = (Chain::ours_with_portmap(), Chain::reference_with_portmap());
    let ours_policy_route = Chain::ours_policy_route();
    let chains = [
        &ours_ptp,
        &ours_ptp_masq,
        &ours_chain,
        &ref_masq,
        &ref_plain,
        &ours_portmap,
        &ref_portmap,
        &ours_policy_route,
    ];
    // Measured first, while this process is small: see exec.rs.
    let rss = footprint::peak_rss(&chains);

    let floor = Floor::default();
    // The chains (by their keys), then the floor and a bare fork+exec.
    let mut keys: Vec<&str> = chains.iter().map(|c| c.key).collect();
    let mut subjects: Vec<&dyn Subject> = chains.iter().map(|c| *c as &dyn Subject).collect();
    keys.extend(["floor", "fork_exec"]);
    subjects.extend([&floor as &dyn Subject, &ForkExec]);
    eprintln!("latency: {} samples of {} subjects, interleaved", opts.samples, subjects.len());
    let latency = latency::run(&subjects, opts.samples, 3);
    let mut calls = std::collections::BTreeMap::new();
    for chain in chains {
        for (name, samples) in chain.take_calls() {
            let all: &mut stats::Samples = calls.entry(name).or_default();
            all.0.extend(samples.0);
        }
    }

    eprintln!("start costs: VERSION of each plugin against a bare static executable");
    let start = start::run(opts.start_samples, opts.samples, 3);

    eprintln!("growth: {:?} live pods", opts.levels);
    // The chain and the floor, whose growths the aim compares, interleaved with twins of theirs kept at the first
    // level; the reference in a pass of its own.
    let compared: [(&str, &dyn Subject); 2] = [("ours_chain", &ours_chain), ("floor", &floor)];
    let (twin_chain, twin_floor) = (Chain::ours_chain(), Floor::default());
    let context: [(&str, &dyn Subject); 1] = [("ref_ptp_masq", &ref_masq)];
    let passes = [
        growth::Pass {
            subjects: compared.iter().map(|(_, s)| *s).collect(),
            samples: opts.growth_samples,
            alongside: vec![&twin_chain, &twin_floor],
        },
        growth::Pass {
            subjects: context.iter().map(|(_, s)| *s).collect(),
            samples: opts.samples,
            alongside: Vec::new(),
        },
    ];
    let growing: Vec<(&str, &dyn Subject)> = compared.into_iter().chain(context).collect();
    let growth = growth::run(&passes, &opts.levels);

    let report = report::Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        latency: keys.iter().zip(&subjects).zip(latency).map(|((k, s), l)| (*k, s.label(), l)).collect(),
        growth: growing.iter().zip(growth).map(|((k, s), levels)| (*k, s.label(), levels)).collect(),
        rss,
        calls,
        start,
        sizes: footprint::sizes(),
        bin_dir: integration::bin_dir().display().to_string(),
    };
    report.write(&opts.out);
    for aim in report.aims() {
        eprintln!("{}: {} ({})", if aim.met { "met" } else { "NOT MET" }, aim.what, aim.measured);
    }
    eprintln!("wrote {}", opts.out.join("RESULTS.md").display());
}
