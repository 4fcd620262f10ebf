//! masquerade: chained after a main plugin, masquerades pod traffic leaving the node with nftables,
//! either by link group (one rule for all pods) or per pod.
#![cfg_attr(not(test), no_main)]

mod config;

use common::masq::{remove_group_addresses, remove_group_members, GroupMasq, PodMasq, PodMasqNames};
use common::names::Owner;
use common::nft::Nft;
use common::types::network_of;
use common::{CniError, CniResult, Invocation, Plugin, Result};
use config::{MasqConf, Mode, Settings};
use std::collections::HashSet;

struct Masquerade;

fn settings(inv: &Invocation) -> Result<Settings> {
    inv.config.plugin::<MasqConf>()?.settings()
}

/// DEL needs nothing of the config but the table: a mode or group it cannot read must not leak the pod.
fn table_for_del(inv: &Invocation) -> String {
    config::table_for_del(inv.config.plugin_part::<config::TableOnly>())
}

fn owner(inv: &Invocation) -> Owner<'_> {
    Owner { plugin: "masquerade", network: &inv.config.net.name }
}

fn pod_masq(table: &str, random_fully: bool) -> PodMasq<'_> {
    PodMasq { table, random_fully, names: PodMasqNames::MASQUERADE }
}

/// Resolve the group mode's names into numbers (ADD, CHECK and GC only, as for linkGroup).
fn with_group<T>(s: &Settings, f: impl FnOnce(&GroupMasq) -> Result<T>) -> Result<T> {
    let Mode::Group { pod_group, exclude_groups } = &s.mode else {
        return Err(CniError::Internal("not in group mode".into()));
    };
    let excluded = exclude_groups.iter().map(|g| g.resolve()).collect::<Result<Vec<_>>>()?;
    f(&GroupMasq {
        table: &s.table,
        pod_group: pod_group.resolve()?,
        exclude_groups: &excluded,
        random_fully: s.random_fully,
    })
}

impl Plugin for Masquerade {
    const NAME: &'static str = "masquerade";
    const ABOUT: &'static str =
        "chained: masquerades pod traffic leaving the node with nftables, one rule per pod link group or per pod";

    fn add(inv: &Invocation) -> Result<CniResult> {
        let s = settings(inv)?;
        let prev = inv.config.require_prev_result()?;
        let ips: Vec<_> = prev.ips.iter().map(|ip| ip.address.ip()).collect();
        let tag = owner(inv).alias(&inv.container_id, &inv.ifname)?;
        let mut nft = Nft::open()?;
        match &s.mode {
            Mode::Group { .. } => with_group(&s, |g| g.add(&mut nft, &tag, &ips))?,
            Mode::Pod { excludes } => {
                let excludes =
                    excludes.clone().unwrap_or_else(|| prev.ips.iter().map(|ip| network_of(ip.address)).collect());
                pod_masq(&s.table, s.random_fully).add(&mut nft, &tag, &ips, &excludes)?;
            }
        }
        Ok(prev)
    }

    /// Whatever the mode says now, the attachment's tag finds what ADD made (the mode may have changed).
    /// The last member of a group rule takes the rule with it.
    fn del(inv: &Invocation) -> Result<()> {
        let table = table_for_del(inv);
        let tag = owner(inv).alias(&inv.container_id, &inv.ifname)?;
        let mut nft = Nft::open()?;
        let pods = pod_masq(&table, true).del(&mut nft, &tag);
        // With prevResult, the members are looked up by the pod's addresses; without, found by their tag.
        let groups = match inv.config.prev_result().ok().flatten() {
            Some(prev) => {
                let ips: Vec<_> = prev.ips.iter().map(|ip| ip.address.ip()).collect();
                remove_group_addresses(&mut nft, &table, &tag, &ips)
            }
            None => remove_group_members(&mut nft, &table, |t| t == tag).map(|_| ()),
        };
        pods.and(groups)
    }

    fn check(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let prev = inv.config.require_prev_result()?;
        let ips: Vec<_> = prev.ips.iter().map(|ip| ip.address.ip()).collect();
        let tag = owner(inv).alias(&inv.container_id, &inv.ifname)?;
        let mut nft = Nft::open()?;
        match &s.mode {
            Mode::Group { .. } => with_group(&s, |g| g.check(&mut nft, &tag, &ips)),
            Mode::Pod { .. } => pod_masq(&s.table, s.random_fully).check(&mut nft, &tag, &ips),
        }
    }

    fn status(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let usable = Nft::open().and_then(|mut nft| nft.table_exists(&s.table));
        usable.map(|_| ()).map_err(|e| CniError::NotAvailable(format!("nftables is not usable here: {e}")))
    }

    /// Only this network's attachments: another network's pods may share a group rule, and the rule goes
    /// only with the last member of any network.
    fn gc(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let valid: HashSet<(String, String)> =
            inv.config.valid_attachments().into_iter().map(|a| (a.container_id, a.ifname)).collect();
        let owner = owner(inv);
        let prefix = owner.prefix();
        let stale = |tag: &str| {
            tag.starts_with(&prefix)
                && !owner.attachment(tag).is_some_and(|(c, i)| valid.contains(&(c.to_string(), i.to_string())))
        };
        let mut nft = Nft::open()?;
        let pods = pod_masq(&s.table, s.random_fully).gc(&mut nft, &prefix, |t| !stale(t))?;
        let members = remove_group_members(&mut nft, &s.table, stale)?;
        log::info!("GC removed the masquerade of {pods} addresses and {members} group memberships");
        Ok(())
    }
}

common::plugin_main!(Masquerade);
