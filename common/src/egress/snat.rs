//! The egress SNAT in our nftables table: per node address, a set of pod addresses (each element tagged
//! with its attachment) and one base chain whose single rule SNATs the set to that node address.
//! The rules never change with pods; pods only add and remove set elements.

use crate::masq::{apply_members, check_tag, delete_table_if_empty, multicast, remove_tagged};
use crate::nft::{Batch, Element, Nft, PortSelection, Rule};
use crate::{CniError, Result};
use std::net::IpAddr;

/// Sets and chains of egress-v4 (`v6` false) or egress-v6 start with this; chains and sets have
/// separate namespaces in nftables.
pub fn prefix(v6: bool) -> &'static str {
    if v6 {
        "egress_v6_"
    } else {
        "egress_v4_"
    }
}

/// Where SNAT to one node address lives; the node address's family is the egress family.
#[derive(Debug, Clone)]
pub struct Snat<'a> {
    pub table: &'a str,
    pub node_ip: IpAddr,
    pub ports: PortSelection,
}

impl Snat<'_> {
    fn v6(&self) -> bool {
        self.node_ip.is_ipv6()
    }

    /// Set and chain name, e.g. `egress_v4_192_0_2_1` or `egress_v6_2001_db8__1` (the mapping is one to one).
    pub fn name(&self) -> String {
        format!("{}{}", prefix(self.v6()), self.node_ip.to_string().replace(['.', ':'], "_"))
    }

    /// The rule's comment says what it does, so a changed `randomizeSNAT` is seen.
    fn rule_tag(&self) -> String {
        let (plugin, ip, group) =
            if self.v6() { ("egress-v6", "ip6", "ff00::/8") } else { ("egress-v4", "ip", "224.0.0.0/4") };
        format!(
            "cni-chain: {plugin} {ip} saddr @{} {ip} daddr != {group} snat to {}{}",
            self.name(),
            self.node_ip,
            self.ports.nft_words()
        )
    }

    fn rule(&self) -> Rule {
        Rule::new().saddr_in(self.v6(), &self.name()).daddr_not_in(multicast(self.v6())).snat(self.node_ip, self.ports)
    }

    /// SNAT `pod_ip` of attachment `tag`: when the rule is as this config wants it, only the element (and the
    /// removal of a stale one for the same address); otherwise one batch with the structure too (created if
    /// missing, rule rewritten so concurrent ADDs converge).
    pub fn add(&self, nft: &mut Nft, tag: &str, pod_ip: IpAddr) -> Result<()> {
        check_tag(tag)?;
        let name = self.name();
        let member = self.member(nft, tag, pod_ip)?;
        if self.is_current(nft)? && apply_members(nft, &member, "adding the pod to its egress SNAT") {
            return Ok(());
        }
        let mut b = Batch::new();
        b.add_table(self.table)
            .add_set(self.table, &name, self.v6())
            .add_nat_postrouting_chain(self.table, &name)
            .flush_chain(self.table, &name)
            .add_rule(self.table, &name, self.rule(), &self.rule_tag())
            .append(member);
        nft.apply(&b, "adding the pod's egress SNAT")
    }

    fn is_current(&self, nft: &mut Nft) -> Result<bool> {
        let rules = nft.rules(self.table, &self.name())?;
        Ok(rules.len() == 1 && rules[0].comment.as_deref() == Some(self.rule_tag().as_str()))
    }

    /// The batch that puts the pod's address in this node address's set. The address may still be held by an
    /// attachment that leaked (crash) or under an older node address: each set is asked for the one address
    /// (the cost does not grow with the pods), and a holder is replaced.
    fn member(&self, nft: &mut Nft, tag: &str, key: IpAddr) -> Result<Batch> {
        let name = self.name();
        let mut b = Batch::new();
        for set in nft.sets(self.table)?.into_iter().filter(|s| s.starts_with(prefix(self.v6()))) {
            if nft.element(self.table, &set, key)?.is_some_and(|e| set != name || e.comment.as_deref() != Some(tag)) {
                b.delete_elements(self.table, &set, &[key]);
            }
        }
        b.add_elements(self.table, &name, &[Element { key, jump: None, comment: Some(tag.into()) }]);
        Ok(b)
    }

    pub fn check(&self, nft: &mut Nft, tag: &str, pod_ip: IpAddr) -> Result<()> {
        let name = self.name();
        if !self.is_current(nft)? {
            return Err(CniError::CheckFailed(format!(
                "chain {name} of table inet {} does not hold exactly the rule \"{}\"",
                self.table,
                self.rule_tag()
            )));
        }
        let elements = nft.elements(self.table, &name)?;
        if !elements.iter().any(|e| e.key == pod_ip && e.comment.as_deref() == Some(tag)) {
            return Err(CniError::CheckFailed(format!("{pod_ip} is not in set {name} of table inet {}", self.table)));
        }
        Ok(())
    }
}

/// The family's sets in `table` with their elements.
fn egress_sets(nft: &mut Nft, table: &str, v6: bool) -> Result<Vec<(String, Vec<Element>)>> {
    let mut out = Vec::new();
    for set in nft.sets(table)?.into_iter().filter(|s| s.starts_with(prefix(v6))) {
        let elements = nft.elements(table, &set)?;
        out.push((set, elements));
    }
    Ok(out)
}

/// DEL: the attachment's element goes, in whichever node address's set it is.
pub fn del(nft: &mut Nft, table: &str, v6: bool, tag: &str) -> Result<()> {
    remove_where(nft, table, v6, |c| c == tag).map(|_| ())
}

/// GC: elements with our `prefix` whose attachment `is_valid` does not accept go.
pub fn gc(nft: &mut Nft, table: &str, v6: bool, prefix: &str, is_valid: impl Fn(&str) -> bool) -> Result<usize> {
    remove_where(nft, table, v6, |c| c.starts_with(prefix) && !is_valid(c))
}

fn remove_where(nft: &mut Nft, table: &str, v6: bool, drop: impl Fn(&str) -> bool) -> Result<usize> {
    let sets = egress_sets(nft, table, v6)?;
    if sets.is_empty() {
        return Ok(0);
    }
    let mut removed = 0;
    for (set, elements) in sets {
        removed += remove_tagged(nft, table, &set, elements, &drop)?;
        // Tried whenever the set may be empty now, not just when our dump said so: concurrent DELs each see
        // the others' elements, and the kernel's "only if empty" check is the one that is never stale.
        prune(nft, table, &set);
    }
    delete_table_if_empty(nft, table);
    Ok(removed)
}

/// The node addresses' chains and sets of the family that hold no pod: what a prune the kernel refused, or a
/// kill, left.
pub fn unused(nft: &mut Nft, table: &str, v6: bool) -> Result<Vec<String>> {
    Ok(egress_sets(nft, table, v6)?.into_iter().filter(|(_, e)| e.is_empty()).map(|(s, _)| s).collect())
}

/// Best effort: remove a node address's chain and set once empty. The kernel refuses to delete a set
/// that a concurrent ADD just put an element in, and then the whole batch is void.
pub fn prune(nft: &mut Nft, table: &str, name: &str) {
    if !nft.deletion_is_guarded(table, &[name]) {
        return;
    }
    let mut b = Batch::new();
    b.flush_chain(table, name).delete_chain(table, name).delete_empty_set(table, name);
    nft.apply_if_unused(&b, "removing an unused egress SNAT chain");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_rule_comment() {
        let s = Snat { table: "t", node_ip: "192.0.2.1".parse().unwrap(), ports: PortSelection::FullyRandom };
        assert_eq!(s.name(), "egress_v4_192_0_2_1");
        assert_eq!(
            s.rule_tag(),
            "cni-chain: egress-v4 ip saddr @egress_v4_192_0_2_1 ip daddr != 224.0.0.0/4 snat to 192.0.2.1 fully-random"
        );
        let keep = Snat { ports: PortSelection::Keep, ..s.clone() };
        assert!(keep.rule_tag().ends_with("snat to 192.0.2.1"));
        let v6 = Snat { node_ip: "2001:db8::1".parse().unwrap(), ..s };
        assert_eq!(v6.name(), "egress_v6_2001_db8__1");
        assert_eq!(
            v6.rule_tag(),
            "cni-chain: egress-v6 ip6 saddr @egress_v6_2001_db8__1 ip6 daddr != ff00::/8 snat to 2001:db8::1 fully-random"
        );
    }
}
