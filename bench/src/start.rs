//! Each plugin's start cost: a VERSION call, which changes nothing, against the start of a bare static
//! executable (a C `main` that returns) linked against musl, as our release binaries are (`musl-gcc -static`),
//! taking turns in one node netns (the reference's apart, after them). The same `main` linked by `gcc -static`
//! (glibc) is measured beside it, and so are linkgroup's and masquerade's ADD run again on a pod that has had
//! them, which change nothing either.

use crate::exec;
use crate::footprint::{OURS, REFERENCE};
use crate::pod::PodNetns;
use crate::setups::{Added, Chain, Subject};
use crate::stats::{round_order, Samples};
use integration::{bin_dir, Netns, TempDir, REFERENCE_DIR};
use std::path::PathBuf;
use std::process::Command;

pub const BARE: &str = "bare static executable (musl)";
pub const BARE_GLIBC: &str = "bare static executable (glibc)";

/// A C `main` that returns, linked statically by `compiler` (the package that has it, for the message).
fn bare(dir: &TempDir, compiler: &str, package: &str) -> PathBuf {
    let (source, bare) = (dir.path().join("bare.c"), dir.path().join(compiler));
    std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    let built = Command::new(compiler).args(["-O2", "-static", "-o"]).arg(&bare).arg(&source).status();
    assert!(built.is_ok_and(|s| s.success()), "{compiler} -static ({package}) builds the bare executable");
    bare
}

/// One program run again and again: what it is called in the report, and how it is run.
struct Probe {
    name: String,
    program: PathBuf,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
}

fn version(name: String, program: PathBuf) -> Probe {
    let env = vec![("CNI_COMMAND".into(), "VERSION".into()), ("CNI_PATH".into(), REFERENCE_DIR.into())];
    Probe { name, program, env, stdin: br#"{"cniVersion":"1.0.0"}"#.to_vec() }
}

/// (name, samples): the bare executables first, then "ours ptp VERSION", "reference ptp VERSION"..., then
/// the chain's ADDs after ptp run again on a pod that has them already, which change nothing in the kernel.
/// Ours and the bare ones take turns, `samples` each; the reference's (Go executables) after them, `reference_samples`
/// each: in the same turns, Go executables run among them slowed ours by 0.03–0.05 ms and the bare start by 0.01
/// at most (what they leave in the caches costs a larger process more), so the difference depended on them.
pub fn run(samples: usize, reference_samples: usize, warmup: usize) -> Vec<(String, Samples)> {
    let dir = TempDir::new("bench-bare");
    let mut probes: Vec<Probe> = vec![
        version(BARE.into(), bare(&dir, "musl-gcc", "musl-tools")),
        version(BARE_GLIBC.into(), bare(&dir, "gcc", "gcc and libc6-dev")),
    ];
    probes.extend(OURS.iter().map(|p| version(format!("ours {p} VERSION"), bin_dir().join(p))));
    probes.extend(
        REFERENCE.iter().map(|p| version(format!("reference {p} VERSION"), PathBuf::from(REFERENCE_DIR).join(p))),
    );
    let node = Netns::new();
    let (chain, pod, id) = (Chain::ours_chain(), PodNetns::new(), "start-probe");
    let (_, added) = chain.add(&node, id, &pod);
    let Added::Result(result) = &added else { unreachable!("a chain's ADD gives a result") };
    for (i, program) in chain.binaries().enumerate().skip(1) {
        let name = program.file_name().unwrap().to_string_lossy();
        probes.push(Probe {
            name: format!("ours {name} ADD, already done"),
            program: program.clone(),
            env: chain.env("ADD", id, &pod).into_iter().map(|(k, v)| (k.into(), v)).collect(),
            stdin: chain.config(i, Some(result)),
        });
    }
    let mut out: Vec<(String, Samples)> = probes.iter().map(|p| (p.name.clone(), Samples::default())).collect();
    let (reference, ours): (Vec<usize>, Vec<usize>) =
        (0..probes.len()).partition(|&j| probes[j].program.starts_with(REFERENCE_DIR));
    for (members, samples) in [(ours, samples), (reference, reference_samples)] {
        for i in 0..warmup + samples {
            // Shuffled each round: in a rotation, one probe always ran right after the same other one.
            for j in round_order(i, members.len()).into_iter().map(|k| members[k]) {
                let probe = &probes[j];
                let env: Vec<(&str, &str)> = probe.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let run = exec::run(&node, &probe.program, &[], &env, &probe.stdin, false);
                assert!(run.status.success(), "{}: {}", probe.name, String::from_utf8_lossy(&run.stdout));
                if i >= warmup {
                    out[j].1.push(run.elapsed);
                }
            }
        }
    }
    chain.del(&node, id, &pod, &added);
    out
}
