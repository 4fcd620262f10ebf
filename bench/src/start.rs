//! Each plugin's start cost: a VERSION call, which changes nothing, against the start of a bare static
//! executable (a C `main` that returns, linked by `gcc -static`), taking turns in one node netns.

use crate::exec;
use crate::footprint::{OURS, REFERENCE};
use crate::stats::Samples;
use integration::{bin_dir, Netns, TempDir, REFERENCE_DIR};
use std::path::PathBuf;
use std::process::Command;

pub const BARE: &str = "bare static executable";

/// (name, samples): the bare executable first, then "ours ptp VERSION", "reference ptp VERSION"...
pub fn run(samples: usize, warmup: usize) -> Vec<(String, Samples)> {
    let dir = TempDir::new("bench-bare");
    let (source, bare) = (dir.path().join("bare.c"), dir.path().join("bare"));
    std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    let built = Command::new("gcc").args(["-O2", "-static", "-o"]).arg(&bare).arg(&source).status();
    assert!(built.is_ok_and(|s| s.success()), "gcc -static (gcc and libc6-dev) builds the bare executable");
    let mut programs: Vec<(String, PathBuf)> = vec![(BARE.into(), bare)];
    programs.extend(OURS.iter().map(|p| (format!("ours {p} VERSION"), bin_dir().join(p))));
    programs.extend(REFERENCE.iter().map(|p| (format!("reference {p} VERSION"), PathBuf::from(REFERENCE_DIR).join(p))));
    let node = Netns::new();
    let mut out: Vec<(String, Samples)> = programs.iter().map(|(name, _)| (name.clone(), Samples::default())).collect();
    let env = [("CNI_COMMAND", "VERSION"), ("CNI_PATH", REFERENCE_DIR)];
    for i in 0..warmup + samples {
        for k in 0..programs.len() {
            let j = (i + k) % programs.len();
            let run = exec::run(&node, &programs[j].1, &[], &env, br#"{"cniVersion":"1.0.0"}"#, false);
            assert!(run.status.success(), "{} VERSION", programs[j].1.display());
            if i >= warmup {
                out[j].1.push(run.elapsed);
            }
        }
    }
    out
}
