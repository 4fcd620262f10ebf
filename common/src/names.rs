//! Deterministic names and ownership tags, so DEL and GC find what an ADD made without the pod's netns.

use crate::error::{CniError, Result};
use crate::invocation::validate_ifname;

/// Host-side interface name: `prefix` + a hash of the attachment, at most 15 bytes.
pub fn host_ifname(prefix: &str, container_id: &str, ifname: &str) -> Result<String> {
    // At least 8 hex digits of hash (32 bits) keep collisions on one node negligible.
    if prefix.is_empty() || prefix.len() > 7 {
        return Err(CniError::InvalidConfig(format!("vethPrefix {prefix:?} must be 1 to 7 characters")));
    }
    validate_ifname(prefix)
        .map_err(|_| CniError::InvalidConfig(format!("vethPrefix {prefix:?} is not usable in an interface name")))?;
    let name = format!("{prefix}{:016x}", attachment_hash(container_id, ifname));
    Ok(name[..15].to_string())
}

/// A hash of the attachment (FNV-1a 64) that stays the same across releases, for names on disk and links.
pub fn attachment_hash(container_id: &str, ifname: &str) -> u64 {
    let data = format!("{container_id}/{ifname}");
    data.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Who owns a link we made: plugin, network and attachment, written into the link's alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner<'a> {
    pub plugin: &'a str,
    pub network: &'a str,
}

impl Owner<'_> {
    /// What every tag of this plugin and network starts with.
    pub fn prefix(&self) -> String {
        format!("cni-chain:{}:{}:", self.plugin, self.network)
    }

    /// The alias for one attachment; at most 255 bytes (IFALIASZ - 1).
    pub fn alias(&self, container_id: &str, ifname: &str) -> Result<String> {
        let alias = format!("{}{container_id}/{ifname}", self.prefix());
        if alias.len() > 255 {
            return Err(CniError::InvalidConfig(
                "network name and container ID are too long to tag the host interface".into(),
            ));
        }
        Ok(alias)
    }

    /// The (containerID, ifname) an alias of ours names, or None if the alias is not ours.
    pub fn attachment<'s>(&self, alias: &'s str) -> Option<(&'s str, &'s str)> {
        alias.strip_prefix(&self.prefix())?.rsplit_once('/')
    }
}

/// Any tag of ours (a link alias, an nftables comment), whichever plugin and network wrote it: what the
/// operator's tool reads where a plugin's DEL and GC read their own `Owner`'s.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    pub plugin: String,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl Tag {
    /// Network names and plugin types hold no `:`, container IDs no `/` (both are validated on the way in).
    pub fn parse(text: &str) -> Option<Tag> {
        let rest = text.strip_prefix("cni-chain:")?;
        let (plugin, rest) = rest.split_once(':')?;
        let (network, rest) = rest.split_once(':')?;
        let (container_id, ifname) = rest.rsplit_once('/')?;
        let owner = Owner { plugin, network };
        (owner.attachment(text) == Some((container_id, ifname)) && !container_id.is_empty() && !ifname.is_empty()).then(
            || Tag {
                plugin: plugin.into(),
                network: network.into(),
                container_id: container_id.into(),
                ifname: ifname.into(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("veth", "c1", "eth0").unwrap();
        assert_eq!(a, host_ifname("veth", "c1", "eth0").unwrap());
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, host_ifname("veth", "c1", "eth1").unwrap());
        assert_ne!(a, host_ifname("veth", "c2", "eth0").unwrap());
        assert_eq!(host_ifname("v", "c1", "eth0").unwrap().len(), 15);
    }

    #[test]
    fn bad_prefixes_are_config_errors() {
        for p in ["", "toolongpfx", "a/b", "a b"] {
            assert_eq!(host_ifname(p, "c", "eth0").unwrap_err().code(), 7, "{p:?}");
        }
    }

    #[test]
    fn alias_round_trips_and_is_scoped_to_plugin_and_network() {
        let o = Owner { plugin: "ptp", network: "net1" };
        let alias = o.alias("abc", "eth0").unwrap();
        assert_eq!(o.attachment(&alias), Some(("abc", "eth0")));
        assert_eq!(Owner { plugin: "ptp", network: "net2" }.attachment(&alias), None);
        assert_eq!(Owner { plugin: "egress-v4", network: "net1" }.attachment(&alias), None);
        assert_eq!(o.attachment("something else"), None);
        assert!(o.alias(&"x".repeat(300), "eth0").is_err());
    }

    #[test]
    fn any_tag_parses_back_into_what_the_owner_wrote() {
        let o = Owner { plugin: "egress-v6", network: "cni-chain-v4" };
        let tag = Tag::parse(&o.alias("abc", "eth0").unwrap()).unwrap();
        assert_eq!((tag.plugin.as_str(), tag.network.as_str()), ("egress-v6", "cni-chain-v4"));
        assert_eq!((tag.container_id.as_str(), tag.ifname.as_str()), ("abc", "eth0"));
        for not_ours in
            ["not cni-chain's", "cni-chain: iifgroup 8 masquerade", "cni-chain:ptp:net:/eth0", "cni-chain:ptp"]
        {
            assert_eq!(Tag::parse(not_ours), None, "{not_ours}");
        }
    }
}
