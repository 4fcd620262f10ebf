//! masquerade: chained after a main plugin, masquerades pod traffic leaving the node with nftables,
//! either by link group (one rule for all pods) or per pod.

mod config;

use common::masq::{GroupMasq, PodMasq};
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

fn owner(inv: &Invocation) -> Owner<'_> {
    Owner { plugin: "masquerade", network: &inv.config.net.name }
}

fn pod_masq(s: &Settings) -> PodMasq<'_> {
    PodMasq { table: &s.table, random_fully: s.random_fully }
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
    fn add(inv: &Invocation) -> Result<CniResult> {
        let s = settings(inv)?;
        let prev = inv.config.require_prev_result()?;
        let mut nft = Nft::open()?;
        match &s.mode {
            Mode::Group { .. } => with_group(&s, |g| g.ensure(&mut nft))?,
            Mode::Pod { excludes } => {
                let ips: Vec<_> = prev.ips.iter().map(|ip| ip.address.ip()).collect();
                let excludes =
                    excludes.clone().unwrap_or_else(|| prev.ips.iter().map(|ip| network_of(ip.address)).collect());
                let tag = owner(inv).alias(&inv.container_id, &inv.ifname)?;
                pod_masq(&s).add(&mut nft, &tag, &ips, &excludes)?;
            }
        }
        Ok(prev)
    }

    fn del(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        match s.mode {
            // The shared rule stays for the other pods; GC removes it.
            Mode::Group { .. } => Ok(()),
            Mode::Pod { .. } => {
                let tag = owner(inv).alias(&inv.container_id, &inv.ifname)?;
                pod_masq(&s).del(&mut Nft::open()?, &tag)
            }
        }
    }

    fn check(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let prev = inv.config.require_prev_result()?;
        let mut nft = Nft::open()?;
        match &s.mode {
            Mode::Group { .. } => with_group(&s, |g| g.check(&mut nft)),
            Mode::Pod { .. } => {
                let ips: Vec<_> = prev.ips.iter().map(|ip| ip.address.ip()).collect();
                let tag = owner(inv).alias(&inv.container_id, &inv.ifname)?;
                pod_masq(&s).check(&mut nft, &tag, &ips)
            }
        }
    }

    fn status(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let usable = Nft::open().and_then(|mut nft| nft.table_exists(&s.table));
        usable.map(|_| ()).map_err(|e| CniError::NotAvailable(format!("nftables is not usable here: {e}")))
    }

    fn gc(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let valid: HashSet<(String, String)> =
            inv.config.valid_attachments().into_iter().map(|a| (a.container_id, a.ifname)).collect();
        let mut nft = Nft::open()?;
        match &s.mode {
            Mode::Group { .. } if valid.is_empty() => with_group(&s, |g| g.remove(&mut nft)),
            Mode::Group { .. } => Ok(()),
            Mode::Pod { .. } => {
                let owner = owner(inv);
                let prefix = owner.prefix();
                let is_valid = |tag: &str| {
                    owner.attachment(tag).is_some_and(|(c, i)| valid.contains(&(c.to_string(), i.to_string())))
                };
                let removed = pod_masq(&s).gc(&mut nft, &prefix, is_valid)?;
                log::info!("GC removed the masquerade of {removed} addresses");
                Ok(())
            }
        }
    }
}

fn main() {
    common::run::<Masquerade>()
}
