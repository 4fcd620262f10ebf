//! Masquerade in one nftables table of ours (`inet`), two ways:
//! - group (seed 003): one rule `iifgroup P oifgroup != {P, X…} masquerade` in a chain of its own, the same
//!   for 1 pod or 10,000;
//! - pod (kubenet's idea, also `ptp`'s `ipMasq`): pod addresses are elements of `pods_v4`/`pods_v6`, maps
//!   tagged per attachment, that jump to a fixed chain per exclusion list. The rules never change with pods.
//!
//! Every change is one atomic batch. Cleanup deletes with NLM_F_NONREC-style care: a chain or map still
//! in use is refused by the kernel at commit, so a concurrent ADD never loses its state.

use crate::error::{CniError, Result};
use crate::nft::{Batch, Element, Nft, Rule, MAX_COMMENT};
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const DEFAULT_TABLE: &str = "cni_chain";
const POD_CHAIN: &str = "masq_pods";
const POD_MAP_V4: &str = "pods_v4";
const POD_MAP_V6: &str = "pods_v6";
const EXCLUSION_CHAIN_PREFIX: &str = "pods_";

/// Table names become netlink strings and `nft` arguments: keep them plain.
pub fn validate_table(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidConfig(format!("nftables table name {name:?}: use letters, digits, '_' and '-'")))
    }
}

/// The group rule and where it lives.
#[derive(Debug, Clone)]
pub struct GroupMasq<'a> {
    pub table: &'a str,
    pub pod_group: u32,
    pub exclude_groups: &'a [u32],
    pub random_fully: bool,
}

impl GroupMasq<'_> {
    fn chain(&self) -> String {
        format!("masq_group_{}", self.pod_group)
    }

    /// The rule's comment says what it does, so a changed config is seen and replaced.
    fn tag(&self) -> String {
        let mut not_to: Vec<u32> = vec![self.pod_group];
        not_to.extend(self.exclude_groups.iter().filter(|g| **g != self.pod_group));
        let list: Vec<String> = not_to.iter().map(u32::to_string).collect();
        let random = if self.random_fully { " fully-random" } else { "" };
        format!("cni-chain: iifgroup {} oifgroup != {{{}}} masquerade{random}", self.pod_group, list.join(", "))
    }

    fn rule(&self) -> Rule {
        let mut not_to = vec![self.pod_group];
        not_to.extend(self.exclude_groups.iter().filter(|g| **g != self.pod_group));
        Rule::new().iif_group(self.pod_group).oif_group_not_in(&not_to).masquerade(self.random_fully)
    }

    fn is_current(&self, nft: &mut Nft) -> Result<bool> {
        let rules = nft.rules(self.table, &self.chain())?;
        Ok(rules.len() == 1 && rules[0].comment.as_deref() == Some(self.tag().as_str()))
    }

    /// Make the chain hold exactly our rule. Concurrent calls converge: each batch flushes and re-adds.
    pub fn ensure(&self, nft: &mut Nft) -> Result<()> {
        if self.is_current(nft)? {
            return Ok(());
        }
        let chain = self.chain();
        let mut b = Batch::new();
        b.add_table(self.table).add_nat_postrouting_chain(self.table, &chain).flush_chain(self.table, &chain).add_rule(
            self.table,
            &chain,
            self.rule(),
            &self.tag(),
        );
        nft.apply(&b, "installing the group masquerade rule")
    }

    pub fn check(&self, nft: &mut Nft) -> Result<()> {
        if self.is_current(nft)? {
            Ok(())
        } else {
            Err(CniError::CheckFailed(format!(
                "chain {} of table inet {} does not hold exactly the rule \"{}\"",
                self.chain(),
                self.table,
                self.tag()
            )))
        }
    }

    /// Remove the group rule's chain, and the table if nothing else is left in it.
    pub fn remove(&self, nft: &mut Nft) -> Result<()> {
        let chain = self.chain();
        if nft.chains(self.table)?.contains(&chain) {
            let mut b = Batch::new();
            b.flush_chain(self.table, &chain).delete_chain(self.table, &chain);
            nft.apply(&b, "removing the group masquerade chain")?;
        }
        delete_table_if_empty(nft, self.table);
        Ok(())
    }
}

/// Per-pod masquerade: addresses in maps, tagged with their attachment.
#[derive(Debug, Clone)]
pub struct PodMasq<'a> {
    pub table: &'a str,
    pub random_fully: bool,
}

/// Multicast destinations, which NAT leaves alone.
pub fn multicast(v6: bool) -> IpNetwork {
    let (addr, prefix) = if v6 {
        (IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8)
    } else {
        (IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4)
    };
    IpNetwork::new(addr, prefix).unwrap_or_else(|_| IpNetwork::from(addr))
}

/// Name of the chain for one exclusion list: the same list always gives the same chain.
fn exclusion_chain(excludes: &[IpNetwork], random_fully: bool) -> String {
    let mut key: Vec<String> = excludes.iter().map(|n| n.to_string()).collect();
    key.sort();
    key.dedup();
    key.push(random_fully.to_string());
    let hash =
        key.join(",").bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{EXCLUSION_CHAIN_PREFIX}{hash:016x}")
}

fn map_for(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() {
        POD_MAP_V6
    } else {
        POD_MAP_V4
    }
}

impl PodMasq<'_> {
    fn elements(&self, nft: &mut Nft) -> Result<Vec<Element>> {
        let mut all = nft.elements(self.table, POD_MAP_V4)?;
        all.extend(nft.elements(self.table, POD_MAP_V6)?);
        Ok(all)
    }

    /// Masquerade `ips` of the attachment `tag`, except towards `excludes` and multicast.
    pub fn add(&self, nft: &mut Nft, tag: &str, ips: &[IpAddr], excludes: &[IpNetwork]) -> Result<()> {
        if tag.len() > MAX_COMMENT {
            return Err(CniError::InvalidConfig(format!(
                "network name and container ID are too long ({} bytes) to tag nftables elements",
                tag.len()
            )));
        }
        let chain = exclusion_chain(excludes, self.random_fully);
        let mut b = Batch::new();
        b.add_table(self.table)
            .add_vmap(self.table, POD_MAP_V4, false)
            .add_vmap(self.table, POD_MAP_V6, true)
            .add_nat_postrouting_chain(self.table, POD_CHAIN)
            .flush_chain(self.table, POD_CHAIN)
            .add_rule(
                self.table,
                POD_CHAIN,
                Rule::new().saddr_vmap(false, POD_MAP_V4),
                "cni-chain: per-pod masquerade (IPv4)",
            )
            .add_rule(
                self.table,
                POD_CHAIN,
                Rule::new().saddr_vmap(true, POD_MAP_V6),
                "cni-chain: per-pod masquerade (IPv6)",
            )
            .add_chain(self.table, &chain)
            .flush_chain(self.table, &chain);
        let mut nets: Vec<IpNetwork> = excludes.to_vec();
        nets.push(multicast(false));
        nets.push(multicast(true));
        for net in nets {
            b.add_rule(
                self.table,
                &chain,
                Rule::new().daddr_in(net).verdict_return(),
                &format!("cni-chain: keep the pod's address towards {net}"),
            );
        }
        b.add_rule(self.table, &chain, Rule::new().masquerade(self.random_fully), "cni-chain: masquerade the rest");
        // An address still mapped for another attachment (leaked by a crash) is taken over.
        let existing = self.elements(nft)?;
        for map in [POD_MAP_V4, POD_MAP_V6] {
            let stale: Vec<IpAddr> = existing
                .iter()
                .filter(|e| map_for(e.key) == map && ips.contains(&e.key) && e.comment.as_deref() != Some(tag))
                .map(|e| e.key)
                .collect();
            if !stale.is_empty() {
                b.delete_elements(self.table, map, &stale);
            }
            let elems: Vec<Element> = ips
                .iter()
                .filter(|ip| map_for(**ip) == map)
                .map(|ip| Element { key: *ip, jump: Some(chain.clone()), comment: Some(tag.into()) })
                .collect();
            if !elems.is_empty() {
                b.add_elements(self.table, map, &elems);
            }
        }
        nft.apply(&b, "adding the pod's masquerade")
    }

    /// Remove the elements of every attachment `drop` selects, then what no element uses any more.
    fn remove_where(&self, nft: &mut Nft, drop: impl Fn(&str) -> bool) -> Result<usize> {
        if !nft.table_exists(self.table)? {
            return Ok(0);
        }
        // A concurrent change between our read and our batch voids the batch: read again and retry; what
        // counts is that the elements are gone.
        let mut attempts = 0;
        let removed = loop {
            let elements = self.elements(nft)?;
            let gone: Vec<&Element> = elements.iter().filter(|e| e.comment.as_deref().is_some_and(&drop)).collect();
            let mut b = Batch::new();
            for map in [POD_MAP_V4, POD_MAP_V6] {
                let keys: Vec<IpAddr> = gone.iter().filter(|e| map_for(e.key) == map).map(|e| e.key).collect();
                if !keys.is_empty() {
                    b.delete_elements(self.table, map, &keys);
                }
            }
            match nft.apply(&b, "removing the pod's masquerade") {
                Ok(()) => break gone.len(),
                Err(e) if attempts < 3 => {
                    log::info!("{e}: reading the maps again");
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        };
        // Read again: concurrent DELs each saw the others' elements, and the last one must see none.
        let kept = self.elements(nft)?;
        self.prune(nft, &kept);
        Ok(removed)
    }

    /// Best effort: exclusion chains nothing jumps to, then the per-pod structure and the table once
    /// empty. The kernel refuses to delete what a concurrent ADD just started to use.
    fn prune(&self, nft: &mut Nft, kept: &[Element]) {
        let chains = nft.chains(self.table).unwrap_or_default();
        for chain in chains.iter().filter(|c| {
            c.starts_with(EXCLUSION_CHAIN_PREFIX) && !kept.iter().any(|e| e.jump.as_deref() == Some(c.as_str()))
        }) {
            let mut b = Batch::new();
            b.flush_chain(self.table, chain).delete_chain(self.table, chain);
            nft.apply_if_unused(&b, "removing an unused exclusion chain");
        }
        if kept.is_empty() && chains.iter().any(|c| c == POD_CHAIN) {
            let mut b = Batch::new();
            b.flush_chain(self.table, POD_CHAIN)
                .delete_chain(self.table, POD_CHAIN)
                .delete_empty_set(self.table, POD_MAP_V4)
                .delete_empty_set(self.table, POD_MAP_V6);
            nft.apply_if_unused(&b, "removing the per-pod structure");
        }
        delete_table_if_empty(nft, self.table);
    }

    /// DEL: this attachment's elements go, whether or not prevResult or the netns still exist.
    pub fn del(&self, nft: &mut Nft, tag: &str) -> Result<()> {
        self.remove_where(nft, |c| c == tag).map(|_| ())
    }

    /// GC: elements with our `prefix` whose attachment `is_valid` does not accept go.
    pub fn gc(&self, nft: &mut Nft, prefix: &str, is_valid: impl Fn(&str) -> bool) -> Result<usize> {
        self.remove_where(nft, |c| c.starts_with(prefix) && !is_valid(c))
    }

    pub fn check(&self, nft: &mut Nft, tag: &str, ips: &[IpAddr]) -> Result<()> {
        let elements = self.elements(nft)?;
        for ip in ips {
            if !elements.iter().any(|e| e.key == *ip && e.comment.as_deref() == Some(tag)) {
                return Err(CniError::CheckFailed(format!(
                    "{ip} is not in map {} of table inet {}",
                    map_for(*ip),
                    self.table
                )));
            }
        }
        Ok(())
    }
}

/// Delete the table only if nothing is left in it (the kernel checks, so a concurrent ADD wins).
pub fn delete_table_if_empty(nft: &mut Nft, table: &str) {
    let mut b = Batch::new();
    b.delete_empty_table(table);
    nft.apply_if_unused(&b, "removing the empty table");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusion_chain_depends_on_the_set_of_excludes_only() {
        let a: IpNetwork = "10.0.0.0/24".parse().unwrap();
        let b: IpNetwork = "fd00::/64".parse().unwrap();
        assert_eq!(exclusion_chain(&[a, b], true), exclusion_chain(&[b, a, a], true));
        assert_ne!(exclusion_chain(&[a], true), exclusion_chain(&[a], false));
        assert_ne!(exclusion_chain(&[a], true), exclusion_chain(&[b], true));
        assert!(exclusion_chain(&[a], true).len() <= 32);
    }

    #[test]
    fn group_rule_comment_says_what_it_does() {
        let g = GroupMasq { table: DEFAULT_TABLE, pod_group: 8, exclude_groups: &[9, 8], random_fully: true };
        assert_eq!(g.tag(), "cni-chain: iifgroup 8 oifgroup != {8, 9} masquerade fully-random");
    }

    #[test]
    fn table_names_are_plain() {
        assert!(validate_table("cni_chain").is_ok());
        for bad in ["", "1x", "a b", "a;b", &"x".repeat(65)] {
            assert!(validate_table(bad).is_err(), "{bad:?}");
        }
    }
}
