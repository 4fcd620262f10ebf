//! cni-chain: the operator's tool (not a CNI plugin). It acts on the network namespace it runs in and learns
//! the networks from the conflists the runtimes read; what it finds, it finds with the lookups the plugins'
//! DEL and GC use (`common::inventory`).

mod doctor;
mod gc;

use clap::{Parser, Subcommand};
use common::inventory::{self, Attachment, Network};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cni-chain", version = common::plugin::BUILD, about = "What cni-chain's CNI plugins made on this node")]
struct Cli {
    /// The conflists that name the networks and where their stores are (the runtimes' directory).
    #[arg(long, global = true, default_value = "/etc/cni/net.d", value_name = "DIR")]
    conf_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every attachment our plugins made in this network namespace, one line each.
    Ls {
        /// Stable JSON for scripts instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// What no live attachment owns: veths whose pod is gone, reservations, nftables elements and policy-route
    /// records of attachments that are not live, temporary files of killed writers, shared chains, tables and
    /// rules nothing uses. Exit status 1 when something was found.
    Doctor {
        /// Remove what was found, with the owning plugin's own DEL or GC code.
        #[arg(long)]
        fix: bool,
        /// JSON for scripts: the leaks and, with --fix, what became of each.
        #[arg(long)]
        json: bool,
        /// Files younger than this are not judged (an ADD writes its reservation before it makes its veth).
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        grace: u64,
    },
    /// A shell completion script on stdout, e.g. `cni-chain completions bash > /etc/bash_completion.d/cni-chain`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// CNI GC for runtimes that never send it: the valid attachments are the network's entries in libcni's
    /// result cache; each plugin of the conflist gets GC with them, run from CNI_PATH (default /opt/cni/bin).
    Gc {
        /// The conflist whose network to collect.
        #[arg(long, value_name = "FILE")]
        conflist: PathBuf,
        /// libcni's cache directory: its results/ hold the attachments the runtime considers live.
        #[arg(long, default_value = "/var/lib/cni", value_name = "DIR")]
        cache_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Cmd::Ls { json } => ls(&cli.conf_dir, json),
        Cmd::Gc { conflist, cache_dir } => collect(&conflist, &cache_dir),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "cni-chain",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Doctor { fix, json, grace } => diagnose(&cli.conf_dir, fix, json, std::time::Duration::from_secs(grace)),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("cni-chain: {e}");
        ExitCode::from(2)
    })
}

fn networks(conf_dir: &std::path::Path) -> common::Result<Vec<Network>> {
    let (networks, skipped) = Network::from_dir(conf_dir)?;
    for e in skipped {
        eprintln!("cni-chain: skipped {e}");
    }
    Ok(networks)
}

fn ls(conf_dir: &std::path::Path, json: bool) -> common::Result<ExitCode> {
    let attachments = inventory::collect(&networks(conf_dir)?)?;
    if json {
        let out = serde_json::json!({ "attachments": attachments });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print!("{}", table(&attachments, std::io::stdout().is_terminal()));
    }
    Ok(ExitCode::SUCCESS)
}

fn diagnose(conf_dir: &std::path::Path, fix: bool, json: bool, grace: std::time::Duration) -> common::Result<ExitCode> {
    let networks = networks(conf_dir)?;
    let look = || -> common::Result<Vec<doctor::Leak>> {
        let (attachments, temporaries) = (inventory::collect(&networks)?, inventory::temporaries(&networks)?);
        Ok(doctor::find(&networks, &attachments, &temporaries, inventory::unused(&networks)?, grace))
    };
    let first = look()?;
    let in_flight = doctor::in_flight();
    let leaks = doctor::confirmed(first, &in_flight, &look()?);
    let fixed = if fix { doctor::fix(&networks, &leaks)? } else { Vec::new() };
    if json {
        let fixed: Vec<serde_json::Value> = fixed
            .iter()
            .map(|(leak, outcome)| {
                serde_json::json!({"leak": leak, "removed": outcome.is_ok(),
                                   "error": outcome.as_ref().err().map(|e| e.to_string())})
            })
            .collect();
        let out = serde_json::json!({ "leaks": leaks, "fixed": fixed });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if fix {
        for (leak, outcome) in &fixed {
            match outcome {
                Ok(()) => println!("removed: {leak}"),
                Err(e) => println!("not removed: {leak}: {e}"),
            }
        }
    } else {
        for leak in &leaks {
            println!("leak: {leak}");
        }
    }
    if !json {
        match leaks.len() {
            0 => println!("clean: every piece of state of ours belongs to a live attachment"),
            n => println!("{n} leak(s) found{}", if fix { "" } else { "; `cni-chain doctor --fix` removes them" }),
        }
    }
    Ok(if leaks.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn collect(conflist: &std::path::Path, cache_dir: &std::path::Path) -> common::Result<ExitCode> {
    let list = gc::Conflist::read(conflist)?;
    let valid = gc::cached_attachments(cache_dir, &list.name)?;
    let cni_path: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("CNI_PATH").unwrap_or_else(|| "/opt/cni/bin".into())).collect();
    println!("network {}: {} attachment(s) in {}/results are live", list.name, valid.len(), cache_dir.display());
    let mut failed = false;
    for (plugin, outcome) in gc::run(&list, &valid, &cni_path) {
        match outcome {
            gc::Outcome::Collected => println!("{plugin}: GC done"),
            gc::Outcome::Skipped(why) => println!("{plugin}: skipped, {why}"),
            gc::Outcome::Failed(e) => {
                failed = true;
                println!("{plugin}: GC failed: {e}");
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// One line per attachment, columns as wide as their widest cell. On a terminal, container IDs are cut
/// to 12 characters as runtimes show them.
fn table(attachments: &[Attachment], short_ids: bool) -> String {
    let header =
        ["NETWORK", "CONTAINER", "IFNAME", "ADDRESSES", "HOST VETH", "GROUP", "NAT", "POLICY", "POD", "PLUGINS"];
    let mut rows = vec![header.map(String::from).to_vec()];
    for a in attachments {
        let id = if short_ids { a.container_id.chars().take(12).collect() } else { a.container_id.clone() };
        let join = |items: Vec<String>| if items.is_empty() { "-".to_string() } else { items.join(",") };
        let veths = join(a.host_veths.iter().map(|v| v.name.clone()).collect());
        let groups = join(a.host_veths.iter().filter(|v| v.group != 0).map(|v| v.group.to_string()).collect());
        let nat = join(a.nftables.iter().map(|m| m.set.clone()).collect());
        let policy = a.policy_route.as_ref().map_or("-".to_string(), |p| format!("table {}", p.table));
        let alive = match a.alive {
            Some(true) => "alive",
            Some(false) => "gone",
            None => "?",
        };
        rows.push(vec![
            a.network.clone(),
            id,
            if a.ifname.is_empty() { "?".into() } else { a.ifname.clone() },
            join(a.addresses.iter().map(|ip| ip.to_string()).collect()),
            veths,
            groups,
            nat,
            policy,
            alive.into(),
            a.plugins.join(","),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out += cells.join("  ").trim_end();
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use common::inventory::HostVeth;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_table_has_a_line_per_attachment_and_aligned_columns() {
        let a = Attachment {
            network: "cni-chain-masq".into(),
            container_id: "0123456789abcdef0123".into(),
            ifname: "eth0".into(),
            plugins: vec!["ptp".into(), "host-local".into()],
            host_veths: vec![HostVeth { name: "veth0123".into(), plugin: "ptp".into(), group: 8, pod_side: true }],
            addresses: vec!["10.89.0.2".parse().unwrap()],
            nftables: vec![],
            policy_route: None,
            reservations: vec![],
            alive: Some(true),
        };
        let text = table(&[a], true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("cni-chain-masq  0123456789ab  eth0"), "{text}");
        assert_eq!(lines[0].find("ADDRESSES"), lines[1].find("10.89.0.2"), "{text}");
        assert!(lines[1].contains("alive") && lines[1].ends_with("ptp,host-local"), "{text}");
    }
}
