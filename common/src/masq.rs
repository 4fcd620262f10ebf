//! Masquerade in one nftables table of ours (`inet`), two ways:
//! - group (seed 003): one rule `iifgroup P oifgroup != {P, X…} masquerade` in a chain of its own, the same
//!   for 1 pod or 10,000;
//! - pod (kubenet's idea, also `ptp`'s `ipMasq`): pod addresses are elements of `pods_v4`/`pods_v6`, maps
//!   tagged per attachment, that jump to a fixed chain per exclusion list. The rules never change with pods.
//!
//! Every change is one atomic batch. Cleanup deletes with NLM_F_NONREC-style care: a chain or map still
//! in use is refused by the kernel at commit, so a concurrent ADD never loses its state.

use crate::error::{CniError, Result};
use crate::nft::{Batch, Element, Nft, Rule, RuleInfo, MAX_COMMENT};
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const DEFAULT_TABLE: &str = "cni_chain";

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

/// The group rule and where it lives. The rule is shared by every network that masquerades the same pod
/// group; its members are the addresses of the attachments using it, in sets beside it (one per family,
/// each element tagged with its attachment), and it goes with its last member.
#[derive(Debug, Clone)]
pub struct GroupMasq<'a> {
    pub table: &'a str,
    pub pod_group: u32,
    pub exclude_groups: &'a [u32],
    pub random_fully: bool,
}

const GROUP_CHAIN_PREFIX: &str = "masq_group_";

/// The member sets of a group chain, IPv4 then IPv6.
fn member_sets(chain: &str) -> [String; 2] {
    [format!("{chain}_v4"), format!("{chain}_v6")]
}

fn member_set_of(chain: &str, ip: IpAddr) -> String {
    let [v4, v6] = member_sets(chain);
    if ip.is_ipv6() {
        v6
    } else {
        v4
    }
}

/// The group chain a member set belongs to.
fn group_chain_of_set(set: &str) -> Option<&str> {
    let chain = set.strip_suffix("_v4").or_else(|| set.strip_suffix("_v6"))?;
    let group = chain.strip_prefix(GROUP_CHAIN_PREFIX)?;
    group.parse::<u32>().ok().map(|_| chain)
}

impl GroupMasq<'_> {
    fn chain(&self) -> String {
        format!("{GROUP_CHAIN_PREFIX}{}", self.pod_group)
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

    /// Join attachment `tag` (addresses `ips`) to the rule; an address still held by another attachment (leaked
    /// by a crash) is taken over. When the rule is as this config wants it, only the members are added;
    /// otherwise one batch makes the structure, rewrites the rule (so concurrent ADDs converge, and a chain a
    /// concurrent last DEL just pruned comes back whole) and adds the members.
    pub fn add(&self, nft: &mut Nft, tag: &str, ips: &[IpAddr]) -> Result<()> {
        check_tag(tag)?;
        // An ADD run again changes nothing. Another group's set cannot hold these addresses then: every ADD that
        // places an address takes it out of the other sets in the same commit.
        let own = self.own_set_elements(nft, ips)?;
        let in_place = own.iter().all(|e| e.as_ref().and_then(|e| e.comment.as_deref()) == Some(tag));
        let current = self.is_current(nft)?;
        if in_place && current {
            return Ok(());
        }
        let members = self.members(nft, tag, ips, own)?;
        if current && apply_members(nft, &members, "adding the group's members") {
            return Ok(());
        }
        let chain = self.chain();
        let [v4, v6] = member_sets(&chain);
        let mut b = Batch::new();
        b.add_table(self.table)
            .add_set(self.table, &v4, false)
            .add_set(self.table, &v6, true)
            .add_nat_postrouting_chain(self.table, &chain)
            .flush_chain(self.table, &chain)
            .add_rule(self.table, &chain, self.rule(), &self.tag())
            .append(members);
        nft.apply(&b, "installing the group masquerade rule")
    }

    /// Each of `ips` as its family's member set of this group holds it, if it does.
    fn own_set_elements(&self, nft: &mut Nft, ips: &[IpAddr]) -> Result<Vec<Option<Element>>> {
        let chain = self.chain();
        ips.iter().map(|ip| nft.element(self.table, &member_set_of(&chain, *ip), *ip)).collect()
    }

    /// The batch that makes `ips` the attachment's members, taking over any a leaked attachment holds. `own` is
    /// what `own_set_elements` found, not asked again.
    fn members(&self, nft: &mut Nft, tag: &str, ips: &[IpAddr], mut own: Vec<Option<Element>>) -> Result<Batch> {
        let chain = self.chain();
        let [v4, v6] = member_sets(&chain);
        let mut b = Batch::new();
        // Already members as asked (an ADD run again): nothing to commit for them.
        let mut in_place = Vec::new();
        // Each member set of the family is asked for the pod's addresses: the cost does not grow with the pods.
        for set in nft.sets(self.table)?.into_iter().filter(|s| group_chain_of_set(s).is_some()) {
            let mut stale = Vec::new();
            for (i, ip) in
                ips.iter().enumerate().filter(|(_, ip)| set.ends_with(if ip.is_ipv6() { "_v6" } else { "_v4" }))
            {
                let own_set = set == member_set_of(&chain, *ip);
                let element = if own_set { own[i].take() } else { nft.element(self.table, &set, *ip)? };
                match element {
                    Some(e) if e.comment.as_deref() == Some(tag) && own_set => in_place.push(*ip),
                    Some(_) => stale.push(*ip),
                    None => {}
                }
            }
            if !stale.is_empty() {
                b.delete_elements(self.table, &set, &stale);
            }
        }
        for set in [&v4, &v6] {
            let members: Vec<Element> = ips
                .iter()
                .filter(|ip| member_set_of(&chain, **ip) == *set && !in_place.contains(ip))
                .map(|ip| Element { key: *ip, jump: None, comment: Some(tag.into()) })
                .collect();
            if !members.is_empty() {
                b.add_elements(self.table, set, &members);
            }
        }
        Ok(b)
    }

    pub fn check(&self, nft: &mut Nft, tag: &str, ips: &[IpAddr]) -> Result<()> {
        if !self.is_current(nft)? {
            return Err(CniError::CheckFailed(format!(
                "chain {} of table inet {} does not hold exactly the rule \"{}\"",
                self.chain(),
                self.table,
                self.tag()
            )));
        }
        let chain = self.chain();
        for ip in ips {
            let set = member_set_of(&chain, *ip);
            if !nft.elements(self.table, &set)?.iter().any(|e| e.key == *ip && e.comment.as_deref() == Some(tag)) {
                return Err(CniError::CheckFailed(format!(
                    "{ip} is not a member in set {set} of table inet {}",
                    self.table
                )));
            }
        }
        Ok(())
    }
}

/// When the structure is as the config wants it already (the common case), a batch of elements alone: it
/// commits without the wait of a batch that touches chains or rules (about 10 ms here). False when it failed,
/// such as when a concurrent last DEL just pruned the structure: the caller makes it whole then.
pub fn apply_members(nft: &mut Nft, members: &Batch, what: &str) -> bool {
    match nft.apply(members, what) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("{e}: making the structure whole again");
            false
        }
    }
}

/// The group member sets in `table` with their elements.
fn group_sets(nft: &mut Nft, table: &str) -> Result<Vec<(String, Vec<Element>)>> {
    let mut out = Vec::new();
    for set in nft.sets(table)?.into_iter().filter(|s| group_chain_of_set(s).is_some()) {
        let elements = nft.elements(table, &set)?;
        out.push((set, elements));
    }
    Ok(out)
}

/// Remove the group memberships `drop` selects (by tag), whatever the group, then every group rule left
/// without members, and the table once empty. DEL and GC need no config value but the table for this.
pub fn remove_group_members(nft: &mut Nft, table: &str, drop: impl Fn(&str) -> bool) -> Result<usize> {
    let sets = group_sets(nft, table)?;
    if sets.is_empty() {
        return Ok(0);
    }
    let mut removed = 0;
    for (set, elements) in &sets {
        removed += remove_tagged(nft, table, set, elements.clone(), &drop)?;
    }
    prune_group_rules(nft, table, sets.iter().filter_map(|(s, _)| group_chain_of_set(s)))?;
    Ok(removed)
}

/// After members left these group rules: each one left without members goes, and the table once empty.
fn prune_group_rules<'a>(nft: &mut Nft, table: &str, chains: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut chains: Vec<&str> = chains.collect();
    chains.sort_unstable();
    chains.dedup();
    let mut pruned = false;
    for chain in chains {
        pruned |= remove_group_rule_if_unused(nft, table, chain)?;
    }
    if pruned {
        delete_table_if_empty(nft, table);
    }
    Ok(())
}

/// DEL when the attachment's addresses are known (its prevResult): its memberships are looked up by address
/// instead of found among every member, so DEL costs the same at any pod count; then, as in
/// `remove_group_members`, a rule left without members goes, and the table once empty.
pub fn remove_group_addresses(nft: &mut Nft, table: &str, tag: &str, ips: &[IpAddr]) -> Result<()> {
    let mut chains = Vec::new();
    for set in nft.sets(table)?.into_iter().filter(|s| group_chain_of_set(s).is_some()) {
        let mut gone = Vec::new();
        for ip in ips.iter().filter(|ip| set.ends_with(if ip.is_ipv6() { "_v6" } else { "_v4" })) {
            if nft.element(table, &set, *ip)?.is_some_and(|e| e.comment.as_deref() == Some(tag)) {
                gone.push(*ip);
            }
        }
        if gone.is_empty() {
            continue;
        }
        let mut b = Batch::new();
        b.delete_elements(table, &set, &gone);
        if let Err(e) = nft.apply(&b, "removing the pod's group memberships") {
            // Changed meanwhile (a concurrent GC): find this attachment's members the thorough way.
            log::info!("{e}: reading the member sets");
            return remove_group_members(nft, table, |t| t == tag).map(|_| ());
        }
        chains.extend(group_chain_of_set(&set).map(String::from));
    }
    prune_group_rules(nft, table, chains.iter().map(String::as_str))
}

/// Remove a group rule (its chain and member sets) if it has no members; whether a removal was tried.
pub fn remove_group_rule_if_unused(nft: &mut Nft, table: &str, chain: &str) -> Result<bool> {
    // Read again after our removal: whoever removes the last member sees both sets empty, and nobody
    // else pays for a prune the kernel would refuse (a refused batch costs ~10 ms).
    let [v4, v6] = member_sets(chain);
    if !nft.set_is_empty(table, &v4)? || !nft.set_is_empty(table, &v6)? {
        return Ok(false);
    }
    // The kernel refuses the whole batch while either set holds a member, even one a concurrent ADD
    // just added: the rule then stays for it.
    if !nft.deletion_is_guarded(table, &[&v4, &v6]) {
        return Ok(false);
    }
    let mut b = Batch::new();
    b.flush_chain(table, chain).delete_chain(table, chain).delete_empty_set(table, &v4).delete_empty_set(table, &v6);
    nft.apply_if_unused(&b, "removing a group masquerade rule without members");
    Ok(true)
}

/// The group rules (their chains) without members: what a prune the kernel refused, or a kill, left.
pub fn unused_group_rules(nft: &mut Nft, table: &str) -> Result<Vec<String>> {
    let sets = group_sets(nft, table)?;
    let mut chains: Vec<&str> = sets.iter().filter_map(|(s, _)| group_chain_of_set(s)).collect();
    chains.sort_unstable();
    chains.dedup();
    Ok(chains
        .into_iter()
        .filter(|c| sets.iter().filter(|(s, _)| group_chain_of_set(s) == Some(c)).all(|(_, e)| e.is_empty()))
        .map(String::from)
        .collect())
}

/// Delete the elements of `set` whose tag `drop` selects. A concurrent change between our read and our
/// batch voids the batch (seen as ENOENT under load): read again and retry; what counts is that they are gone.
pub fn remove_tagged(
    nft: &mut Nft,
    table: &str,
    set: &str,
    mut elements: Vec<Element>,
    drop: impl Fn(&str) -> bool,
) -> Result<usize> {
    let mut attempt = 0;
    loop {
        let gone: Vec<IpAddr> =
            elements.iter().filter(|e| e.comment.as_deref().is_some_and(&drop)).map(|e| e.key).collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let mut b = Batch::new();
        b.delete_elements(table, set, &gone);
        match nft.apply(&b, "removing tagged set elements") {
            Ok(()) => return Ok(gone.len()),
            Err(e) if attempt < 3 => {
                log::info!("{e}: reading set {set} again");
                elements = nft.elements(table, set)?;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Tags are nftables comments, which have a length limit.
pub fn check_tag(tag: &str) -> Result<()> {
    if tag.len() > MAX_COMMENT {
        return Err(CniError::InvalidConfig(format!(
            "network name and container ID are too long ({} bytes) to tag nftables elements",
            tag.len()
        )));
    }
    Ok(())
}

/// Per-pod masquerade: addresses in maps, tagged with their attachment. Each plugin that offers it has
/// its own maps and chains (`names`), so ptp's `ipMasq` and the masquerade plugin can hold the same pod.
#[derive(Debug, Clone)]
pub struct PodMasq<'a> {
    pub table: &'a str,
    pub random_fully: bool,
    pub names: PodMasqNames,
}

/// The names of one plugin's per-pod structure: a base chain, an address → verdict map per family, and
/// a chain per exclusion list (the prefix and a hash of the list).
#[derive(Debug, Clone, Copy)]
pub struct PodMasqNames {
    chain: &'static str,
    maps: [&'static str; 2],
    exclusion_prefix: &'static str,
}

impl PodMasqNames {
    /// The masquerade plugin's pod mode.
    pub const MASQUERADE: PodMasqNames =
        PodMasqNames { chain: "masq_pods", maps: ["pods_v4", "pods_v6"], exclusion_prefix: "pods_" };
    /// ptp's `ipMasq`.
    pub const PTP: PodMasqNames =
        PodMasqNames { chain: "ptp_masq", maps: ["ptp_pods_v4", "ptp_pods_v6"], exclusion_prefix: "ptp_pods_" };

    fn map_for(&self, ip: IpAddr) -> &'static str {
        self.maps[usize::from(ip.is_ipv6())]
    }

    /// Name of the chain for one exclusion list: the same list always gives the same chain.
    fn exclusion_chain(&self, excludes: &[IpNetwork], random_fully: bool) -> String {
        let mut key: Vec<String> = excludes.iter().map(|n| n.to_string()).collect();
        key.sort();
        key.dedup();
        key.push(random_fully.to_string());
        let hash = key
            .join(",")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("{}{hash:016x}", self.exclusion_prefix)
    }
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

impl PodMasq<'_> {
    fn elements(&self, nft: &mut Nft) -> Result<Vec<Element>> {
        let mut all = nft.elements(self.table, self.names.maps[0])?;
        all.extend(nft.elements(self.table, self.names.maps[1])?);
        Ok(all)
    }

    /// Masquerade `ips` of the attachment `tag`, except towards `excludes` and multicast.
    pub fn add(&self, nft: &mut Nft, tag: &str, ips: &[IpAddr], excludes: &[IpNetwork]) -> Result<()> {
        check_tag(tag)?;
        let n = self.names;
        let chain = n.exclusion_chain(excludes, self.random_fully);
        let members = self.members(nft, tag, ips, &chain)?;
        if self.is_current(nft, &chain, excludes)? && apply_members(nft, &members, "adding the pod's masquerade") {
            return Ok(());
        }
        let mut b = Batch::new();
        b.add_table(self.table)
            .add_vmap(self.table, n.maps[0], false)
            .add_vmap(self.table, n.maps[1], true)
            .add_nat_postrouting_chain(self.table, n.chain)
            .flush_chain(self.table, n.chain);
        for (rule, comment) in self.base_rules() {
            b.add_rule(self.table, n.chain, rule, comment);
        }
        b.add_chain(self.table, &chain).flush_chain(self.table, &chain);
        for (rule, comment) in self.exclusion_rules(excludes) {
            b.add_rule(self.table, &chain, rule, &comment);
        }
        b.append(members);
        nft.apply(&b, "adding the pod's masquerade")
    }

    /// The base chain's rules: each family's source address looked up in its map.
    fn base_rules(&self) -> [(Rule, &'static str); 2] {
        let maps = self.names.maps;
        [
            (Rule::new().saddr_vmap(false, maps[0]), "cni-chain: per-pod masquerade (IPv4)"),
            (Rule::new().saddr_vmap(true, maps[1]), "cni-chain: per-pod masquerade (IPv6)"),
        ]
    }

    /// An exclusion chain's rules: return towards each excluded network and multicast, masquerade the rest.
    fn exclusion_rules(&self, excludes: &[IpNetwork]) -> Vec<(Rule, String)> {
        let mut nets: Vec<IpNetwork> = excludes.to_vec();
        nets.push(multicast(false));
        nets.push(multicast(true));
        let mut rules: Vec<(Rule, String)> = nets
            .into_iter()
            .map(|net| {
                (Rule::new().daddr_in(net).verdict_return(), format!("cni-chain: keep the pod's address towards {net}"))
            })
            .collect();
        rules.push((Rule::new().masquerade(self.random_fully), "cni-chain: masquerade the rest".into()));
        rules
    }

    /// Whether the base chain and the exclusion chain hold the rules this config makes (by their comments).
    fn is_current(&self, nft: &mut Nft, chain: &str, excludes: &[IpNetwork]) -> Result<bool> {
        let comments = |rules: Vec<RuleInfo>| rules.into_iter().map(|r| r.comment.unwrap_or_default()).collect();
        let base: Vec<String> = comments(nft.rules(self.table, self.names.chain)?);
        if base != self.base_rules().map(|(_, c)| c.to_string()) {
            return Ok(false);
        }
        let exclusions: Vec<String> = comments(nft.rules(self.table, chain)?);
        Ok(exclusions == self.exclusion_rules(excludes).into_iter().map(|(_, c)| c).collect::<Vec<_>>())
    }

    /// The batch that maps `ips` to the exclusion chain for the attachment, taking over any address still
    /// mapped for a leaked attachment. Each address is asked for, not the maps dumped: the cost does not grow
    /// with the pods.
    fn members(&self, nft: &mut Nft, tag: &str, ips: &[IpAddr], chain: &str) -> Result<Batch> {
        let n = self.names;
        let mut existing = Vec::new();
        for ip in ips {
            existing.extend(nft.element(self.table, n.map_for(*ip), *ip)?);
        }
        let mut b = Batch::new();
        for map in n.maps {
            let stale: Vec<IpAddr> = existing
                .iter()
                .filter(|e| n.map_for(e.key) == map && e.comment.as_deref() != Some(tag))
                .map(|e| e.key)
                .collect();
            if !stale.is_empty() {
                b.delete_elements(self.table, map, &stale);
            }
            let elems: Vec<Element> = ips
                .iter()
                .filter(|ip| n.map_for(**ip) == map)
                .map(|ip| Element { key: *ip, jump: Some(chain.into()), comment: Some(tag.into()) })
                .collect();
            if !elems.is_empty() {
                b.add_elements(self.table, map, &elems);
            }
        }
        Ok(b)
    }

    /// Remove the elements of every attachment `drop` selects, then what no element uses any more.
    fn remove_where(&self, nft: &mut Nft, drop: impl Fn(&str) -> bool) -> Result<usize> {
        // One dump says whether there is anything of ours (a missing table reads as no sets): a DEL in a chain
        // that never used this structure costs one round trip, not a dozen.
        let sets = nft.sets(self.table)?;
        if !self.names.maps.iter().any(|m| sets.iter().any(|s| s == m)) {
            return Ok(0);
        }
        let mut removed = 0;
        for map in self.names.maps {
            let elements = nft.elements(self.table, map)?;
            removed += remove_tagged(nft, self.table, map, elements, &drop)?;
        }
        // Read again: concurrent DELs each saw the others' elements, and the last one must see none.
        let kept = self.elements(nft)?;
        self.prune(nft, &kept);
        Ok(removed)
    }

    /// The chains no element uses: exclusion chains nothing jumps to, then the base chain (with the maps)
    /// when both maps are empty.
    fn unused_of(&self, chains: &[String], kept: &[Element]) -> Vec<String> {
        let n = self.names;
        let mut unused: Vec<String> = chains
            .iter()
            .filter(|c| {
                c.starts_with(n.exclusion_prefix) && !kept.iter().any(|e| e.jump.as_deref() == Some(c.as_str()))
            })
            .cloned()
            .collect();
        if kept.is_empty() && chains.iter().any(|c| c == n.chain) {
            unused.push(n.chain.to_string());
        }
        unused
    }

    /// What of this structure no element uses (left by a prune the kernel refused, or a kill).
    pub fn unused(&self, nft: &mut Nft) -> Result<Vec<String>> {
        let chains = nft.chains(self.table)?;
        if !chains.iter().any(|c| c == self.names.chain || c.starts_with(self.names.exclusion_prefix)) {
            return Ok(Vec::new());
        }
        let kept = self.elements(nft)?;
        Ok(self.unused_of(&chains, &kept))
    }

    /// Remove what no element uses, as a DEL does after removing its elements.
    pub fn prune_unused(&self, nft: &mut Nft) -> Result<()> {
        let kept = self.elements(nft)?;
        self.prune(nft, &kept);
        Ok(())
    }

    /// Best effort: exclusion chains nothing jumps to, then the per-pod structure and the table once
    /// empty. The kernel refuses to delete what a concurrent ADD just started to use.
    fn prune(&self, nft: &mut Nft, kept: &[Element]) {
        let n = self.names;
        let chains = nft.chains(self.table).unwrap_or_default();
        for chain in self.unused_of(&chains, kept) {
            let mut b = Batch::new();
            if chain != n.chain {
                b.flush_chain(self.table, &chain).delete_chain(self.table, &chain);
                nft.apply_if_unused(&b, "removing an unused exclusion chain");
            } else if nft.deletion_is_guarded(self.table, &n.maps) {
                b.flush_chain(self.table, n.chain)
                    .delete_chain(self.table, n.chain)
                    .delete_empty_set(self.table, n.maps[0])
                    .delete_empty_set(self.table, n.maps[1]);
                nft.apply_if_unused(&b, "removing the per-pod structure");
            }
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
                    self.names.map_for(*ip),
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
        let n = PodMasqNames::MASQUERADE;
        assert_eq!(n.exclusion_chain(&[a, b], true), n.exclusion_chain(&[b, a, a], true));
        assert_ne!(n.exclusion_chain(&[a], true), n.exclusion_chain(&[a], false));
        assert_ne!(n.exclusion_chain(&[a], true), n.exclusion_chain(&[b], true));
        assert!(PodMasqNames::PTP.exclusion_chain(&[a], true).len() <= 32);
        assert!(!PodMasqNames::PTP.exclusion_chain(&[a], true).starts_with(n.exclusion_prefix));
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
