//! What our plugins made in this network namespace, per attachment, found the way their DEL and GC find it:
//! host veths and nftables elements by their tag (`names::Tag`), policy-route's records (`policy_route::Store`)
//! and host-local's reservations (`ipam_store::Store`). The networks, and where their stores are, come from the
//! conflists the runtimes read. This is what the operator's tool shows.

use crate::egress;
use crate::error::{CniError, Result};
use crate::gojson;
use crate::ipam_store;
use crate::masq::{self, PodMasq, PodMasqNames, DEFAULT_TABLE};
use crate::names::Tag;
use crate::netlink::{self, RouteSpec, Rtnl, RuleSpec};
use crate::nft::Nft;
use crate::policy_route::{self, Unowned};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One network as a conflist describes it: what the inventory needs to find its state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    /// The plugin types in chain order.
    pub plugins: Vec<String>,
    /// host-local stores (`<dataDir>`, holding `<dataDir>/<network>`) of the plugins that delegate to it.
    pub ipam_data_dirs: Vec<PathBuf>,
    pub policy_route_data_dirs: Vec<PathBuf>,
    pub nft_tables: Vec<String>,
    /// The file it was read from.
    pub file: PathBuf,
}

#[derive(Deserialize)]
struct ListConf {
    #[serde(default)]
    name: String,
    #[serde(default)]
    plugins: Option<Vec<PluginConf>>,
}

#[derive(Deserialize)]
struct PluginConf {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    ipam: Option<IpamPart>,
    #[serde(rename = "dataDir", default, deserialize_with = "crate::types::lenient")]
    data_dir: Option<String>,
    #[serde(default, deserialize_with = "crate::types::lenient")]
    table: Option<String>,
}

#[derive(Deserialize)]
struct IpamPart {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(rename = "dataDir", default, deserialize_with = "crate::types::lenient")]
    data_dir: Option<String>,
}

fn add<T: PartialEq>(v: &mut Vec<T>, item: T) {
    if !v.contains(&item) {
        v.push(item);
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl Network {
    /// A conflist, or a single plugin's `.conf`, read with Go's rules as libcni reads it.
    pub fn parse(raw: &[u8], file: &Path) -> Result<Network> {
        let bad = |e: &dyn std::fmt::Display| CniError::Decode(format!("{}: {e}", file.display()));
        let (list, _) = gojson::from_slice::<serde_json::Value>(raw).map_err(|e| bad(&e))?;
        let (conf, _) = gojson::from_value::<ListConf>(list.clone()).map_err(|e| bad(&e))?;
        let plugins: Vec<PluginConf> = match conf.plugins {
            Some(plugins) => plugins,
            None => vec![gojson::from_value::<PluginConf>(list).map_err(|e| bad(&e))?.0],
        };
        let mut net = Network { name: conf.name, file: file.to_path_buf(), ..Default::default() };
        add(&mut net.nft_tables, DEFAULT_TABLE.to_string());
        for p in plugins {
            if p.ipam.as_ref().is_some_and(|i| i.kind == "host-local") || p.kind == "host-local" {
                let dir = p.ipam.and_then(|i| non_empty(i.data_dir)).or_else(|| non_empty(p.data_dir.clone()));
                add(&mut net.ipam_data_dirs, PathBuf::from(dir.unwrap_or_else(|| ipam_store::DEFAULT_DATA_DIR.into())));
            }
            if p.kind == "policy-route" {
                let dir = non_empty(p.data_dir).unwrap_or_else(|| policy_route::DEFAULT_DATA_DIR.into());
                add(&mut net.policy_route_data_dirs, PathBuf::from(dir));
            }
            if p.kind == "masquerade" {
                if let Some(table) = non_empty(p.table) {
                    add(&mut net.nft_tables, table);
                }
            }
            net.plugins.push(p.kind);
        }
        Ok(net)
    }

    /// The networks of the config files in `dir`, in libcni's order (by file name), and the files that could not
    /// be read (libcni skips them too).
    pub fn from_dir(dir: &Path) -> Result<(Vec<Network>, Vec<CniError>)> {
        let entries = std::fs::read_dir(dir).map_err(|e| crate::files::io("reading", dir, e))?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conflist" || x == "conf" || x == "json"))
            .collect();
        files.sort();
        let (mut networks, mut skipped) = (Vec::new(), Vec::new());
        for file in files {
            let read = std::fs::read(&file).map_err(|e| crate::files::io("reading", &file, e));
            match read.and_then(|raw| Network::parse(&raw, &file)) {
                Ok(net) if !net.name.is_empty() => networks.push(net),
                Ok(_) => skipped.push(CniError::InvalidConfig(format!("{}: no network name", file.display()))),
                Err(e) => skipped.push(e),
            }
        }
        Ok((networks, skipped))
    }
}

/// A host veth of an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostVeth {
    pub name: String,
    /// The plugin whose tag it carries.
    pub plugin: String,
    pub group: u32,
    /// Its peer is in a live netns (a veth pair dies with either end's netns).
    #[serde(rename = "podSide")]
    pub pod_side: bool,
}

/// An attachment's element in one of our nftables sets or maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NftMember {
    pub plugin: String,
    pub table: String,
    pub set: String,
    pub address: IpAddr,
}

/// One of host-local's reservations, where it is and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationAt {
    pub data_dir: PathBuf,
    pub address: IpAddr,
    pub written: Option<SystemTime>,
}

/// What policy-route recorded for an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyView {
    pub table: u32,
    pub addresses: Vec<IpAddr>,
    #[serde(rename = "dataDir")]
    pub data_dir: PathBuf,
}

/// Everything found for one attachment (network, container ID, interface).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub network: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// Every plugin that left something of this attachment, in the order of the network's chain when known.
    pub plugins: Vec<String>,
    #[serde(rename = "hostVeths")]
    pub host_veths: Vec<HostVeth>,
    /// host-local's reservations.
    pub addresses: Vec<IpAddr>,
    pub nftables: Vec<NftMember>,
    #[serde(rename = "policyRoute")]
    pub policy_route: Option<PolicyView>,
    /// The reservations behind `addresses`.
    #[serde(skip)]
    pub reservations: Vec<ReservationAt>,
    /// Whether the pod's side is alive: a host veth of ours has its peer in a netns. None when no plugin of
    /// ours made a veth for it (its main plugin is not ours), so the node alone cannot tell.
    pub alive: Option<bool>,
}

#[derive(Default)]
struct Found {
    plugins: BTreeSet<String>,
    host_veths: Vec<HostVeth>,
    reservations: Vec<ReservationAt>,
    nftables: Vec<NftMember>,
    policy_route: Option<PolicyView>,
}

type Key = (String, String, String);

fn key(network: &str, container_id: &str, ifname: &str) -> Key {
    (network.into(), container_id.into(), ifname.into())
}

/// Every attachment our plugins left state of in this netns, sorted by network, container ID and interface.
pub fn collect(networks: &[Network]) -> Result<Vec<Attachment>> {
    let mut found: BTreeMap<Key, Found> = BTreeMap::new();
    let rtnl = Rtnl::new()?;
    let node = rtnl.connect()?;
    for link in rtnl.block_on(netlink::links(&node))? {
        let Some(tag) = link.alias.as_deref().and_then(Tag::parse) else { continue };
        let f = found.entry(key(&tag.network, &tag.container_id, &tag.ifname)).or_default();
        f.plugins.insert(tag.plugin.clone());
        let pod_side = link.peer_netns.is_some();
        f.host_veths.push(HostVeth { name: link.name, plugin: tag.plugin, group: link.group, pod_side });
    }
    let mut nft = Nft::open()?;
    for table in nft_tables(networks) {
        if !nft.table_exists(table)? {
            continue;
        }
        for set in nft.sets(table)? {
            for element in nft.elements(table, &set)? {
                let Some(tag) = element.comment.as_deref().and_then(Tag::parse) else { continue };
                let f = found.entry(key(&tag.network, &tag.container_id, &tag.ifname)).or_default();
                f.plugins.insert(tag.plugin.clone());
                let member =
                    NftMember { plugin: tag.plugin, table: table.into(), set: set.clone(), address: element.key };
                f.nftables.push(member);
            }
        }
    }
    let mut policy_dirs: Vec<&PathBuf> = networks.iter().flat_map(|n| &n.policy_route_data_dirs).collect();
    policy_dirs.sort_unstable();
    policy_dirs.dedup();
    for dir in policy_dirs {
        let Some(store) = policy_route::Store::open_existing(dir)? else { continue };
        for a in store.all()? {
            let f = found.entry(key(&a.network, &a.container_id, &a.ifname)).or_default();
            f.plugins.insert("policy-route".into());
            f.policy_route = Some(PolicyView { table: a.table, addresses: a.addresses, data_dir: dir.clone() });
        }
    }
    for net in networks {
        for dir in &net.ipam_data_dirs {
            let Some(store) = ipam_store::Store::open_existing(dir, &net.name)? else { continue };
            for r in store.reservations()? {
                let ifname = r.holder.ifname.unwrap_or_default();
                let f = found.entry(key(&net.name, &r.holder.container_id, &ifname)).or_default();
                f.plugins.insert("host-local".into());
                f.reservations.push(ReservationAt {
                    data_dir: dir.clone(),
                    address: r.ip,
                    written: store.reserved_at(r.ip),
                });
            }
        }
    }
    Ok(found
        .into_iter()
        .map(|((network, container_id, ifname), f)| attachment(networks, network, container_id, ifname, f))
        .collect())
}

/// The tables our plugins use in this network's chains: the default one and those the conflists name.
fn nft_tables(networks: &[Network]) -> Vec<&str> {
    let mut tables: Vec<&str> = networks.iter().flat_map(|n| n.nft_tables.iter().map(String::as_str)).collect();
    tables.push(DEFAULT_TABLE);
    tables.sort_unstable();
    tables.dedup();
    tables
}

/// A shared piece of ours that nothing uses any more: what a kill, or a prune the kernel refused, left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unused {
    /// A chain (with its sets or maps) of `plugin` in `table` that no element uses.
    Chain { plugin: String, table: String, name: String },
    /// One of our tables, with nothing in it.
    Table(String),
    /// A rule with policy-route's protocol that no record has.
    Rule(RuleSpec),
    /// A route with policy-route's protocol in a table no record uses.
    Route(RouteSpec),
}

/// Every unused shared piece in this netns. policy-route's are judged only when a conflist names it, with
/// every store the conflists name held meanwhile (so no ADD or DEL of it is half done).
pub fn unused(networks: &[Network]) -> Result<Vec<Unused>> {
    let mut out = Vec::new();
    let mut nft = Nft::open()?;
    let chain =
        |plugin: &str, table: &str, name: String| Unused::Chain { plugin: plugin.into(), table: table.into(), name };
    for table in nft_tables(networks) {
        if !nft.table_exists(table)? {
            continue;
        }
        if nft.table_is_empty(table)? {
            out.push(Unused::Table(table.into()));
            continue;
        }
        for (plugin, v6) in [("egress-v4", false), ("egress-v6", true)] {
            out.extend(egress::snat::unused(&mut nft, table, v6)?.into_iter().map(|n| chain(plugin, table, n)));
        }
        out.extend(masq::unused_group_rules(&mut nft, table)?.into_iter().map(|n| chain("masquerade", table, n)));
        for (plugin, names) in [("ptp", PodMasqNames::PTP), ("masquerade", PodMasqNames::MASQUERADE)] {
            let structure = PodMasq { table, random_fully: false, names };
            out.extend(structure.unused(&mut nft)?.into_iter().map(|n| chain(plugin, table, n)));
        }
    }
    let stores = policy_route_stores(networks)?;
    if let Some(stores) = stores {
        if nft.table_is_empty(policy_route::NFT_TABLE)? {
            out.push(Unused::Table(policy_route::NFT_TABLE.into()));
        }
        for piece in policy_route::Node::open()?.unowned(&stores)? {
            out.push(match piece {
                Unowned::Rule(rule) => Unused::Rule(rule),
                Unowned::Route(route) => Unused::Route(route),
                Unowned::Chain(name) => chain("policy-route", policy_route::NFT_TABLE, name),
            });
        }
    }
    Ok(out)
}

/// policy-route's stores the conflists name, held; None when no conflist names policy-route.
pub fn policy_route_stores(networks: &[Network]) -> Result<Option<Vec<policy_route::Store>>> {
    let mut dirs: Vec<&PathBuf> = networks.iter().flat_map(|n| &n.policy_route_data_dirs).collect();
    if dirs.is_empty() {
        return Ok(None);
    }
    dirs.sort_unstable();
    dirs.dedup();
    let mut stores = Vec::new();
    for dir in dirs {
        stores.extend(policy_route::Store::open_existing(dir)?);
    }
    Ok(Some(stores))
}

/// Temporary files killed writers left in the networks' stores, with when they were written.
pub fn temporaries(networks: &[Network]) -> Result<Vec<(PathBuf, Option<SystemTime>)>> {
    let mut paths = Vec::new();
    for net in networks {
        for dir in &net.ipam_data_dirs {
            if let Some(store) = ipam_store::Store::open_existing(dir, &net.name)? {
                paths.extend(store.temporaries()?);
            }
        }
        for dir in &net.policy_route_data_dirs {
            if let Some(store) = policy_route::Store::open_existing(dir)? {
                paths.extend(store.temporaries(&net.name));
            }
        }
    }
    paths.sort();
    paths.dedup();
    Ok(paths.into_iter().map(|p| (p.clone(), std::fs::metadata(&p).and_then(|m| m.modified()).ok())).collect())
}

fn attachment(networks: &[Network], network: String, container_id: String, ifname: String, f: Found) -> Attachment {
    // The chain's order where the conflist is known; plugins it does not name (an older conflist) after them.
    let chain = networks.iter().find(|n| n.name == network).map(|n| n.plugins.clone()).unwrap_or_default();
    let mut plugins: Vec<String> = chain.iter().filter(|p| f.plugins.contains(*p)).cloned().collect();
    plugins.extend(f.plugins.iter().filter(|p| !chain.contains(p)).cloned());
    let alive = (!f.host_veths.is_empty()).then(|| f.host_veths.iter().any(|v| v.pod_side));
    let addresses: BTreeSet<IpAddr> = f.reservations.iter().map(|r| r.address).collect();
    Attachment {
        network,
        container_id,
        ifname,
        plugins,
        host_veths: f.host_veths,
        addresses: addresses.into_iter().collect(),
        nftables: f.nftables,
        policy_route: f.policy_route,
        reservations: f.reservations,
        alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflist_says_where_each_plugin_keeps_its_state() {
        let raw = br#"{"cniVersion":"1.0.0","name":"n1","plugins":[
            {"type":"ptp","IPAM":{"type":"host-local","dataDir":"/run/a"}},
            {"type":"egress-v6","ipam":{"type":"host-local"}},
            {"type":"masquerade","table":"mine"},
            {"type":"policy-route","dataDir":"/run/p"},
            {"type":"portmap"}]}"#;
        let n = Network::parse(raw, Path::new("x.conflist")).unwrap();
        assert_eq!(n.name, "n1");
        assert_eq!(n.plugins, ["ptp", "egress-v6", "masquerade", "policy-route", "portmap"]);
        assert_eq!(n.ipam_data_dirs, [PathBuf::from("/run/a"), PathBuf::from(ipam_store::DEFAULT_DATA_DIR)]);
        assert_eq!(n.policy_route_data_dirs, [PathBuf::from("/run/p")]);
        assert_eq!(n.nft_tables, [DEFAULT_TABLE, "mine"]);
        let single = Network::parse(br#"{"name":"n2","type":"ptp","ipam":{"type":"host-local"}}"#, Path::new("a.conf"));
        assert_eq!(single.unwrap().plugins, ["ptp"]);
        assert_eq!(Network::parse(b"{", Path::new("b.conf")).unwrap_err().code(), 6);
    }
}
