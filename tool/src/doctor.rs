//! `cni-chain doctor`: what no live attachment owns. An attachment is live while a host veth of ours has its pod
//! end in a netns (a veth pair dies with either end's netns); it is judged only where one of our veth-making
//! plugins is in its chain, since otherwise the node alone cannot tell. Files younger than the grace time are
//! left alone: an ADD writes its reservation before it makes the veth. `--fix` removes each leak with the code
//! the owning plugin's DEL or GC uses, after looking again that the attachment is still not live.
//!
//! Pods come and go while it runs. A DEL removes the veth and the rest in some order, so for a moment part of a
//! live DEL looks leaked: an attachment with a CNI call in flight (a process with its CNI_CONTAINERID and
//! CNI_IFNAME) is not judged, and what is reported was found both before and after that look. Shared pieces
//! (chains, tables, policy rules) are judged by what uses them, not by an attachment: `inventory::unused`.

use common::inventory::{self, Attachment, Network, Unused};
use common::masq::{self, PodMasq, PodMasqNames};
use common::names::{Owner, Tag};
use common::netlink::{self, Rtnl};
use common::netlink::{RouteSpec, RuleSpec};
use common::nft::Nft;
use common::policy_route::Unowned;
use common::{egress, ipam_store, policy_route, CniError, Result};
use serde::Serialize;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The plugins whose host veth says whether an attachment lives.
const VETH_PLUGINS: [&str; 3] = ["ptp", "egress-v4", "egress-v6"];

/// The attachment a leak belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Whose {
    pub network: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for Whose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.network, self.container_id, self.ifname)
    }
}

/// Something of ours that no live attachment owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Leak {
    /// A host veth of ours whose pod end is gone.
    Veth {
        #[serde(flatten)]
        whose: Whose,
        name: String,
    },
    /// A host-local reservation of an attachment that is not live.
    Reservation {
        #[serde(flatten)]
        whose: Whose,
        #[serde(rename = "dataDir")]
        data_dir: PathBuf,
        address: IpAddr,
    },
    /// An nftables element tagged with an attachment that is not live.
    Element {
        #[serde(flatten)]
        whose: Whose,
        plugin: String,
        table: String,
        set: String,
        address: IpAddr,
    },
    /// policy-route's record (and so its rules) of an attachment that is not live.
    PolicyRecord {
        #[serde(flatten)]
        whose: Whose,
        #[serde(rename = "dataDir")]
        data_dir: PathBuf,
    },
    /// A temporary file a killed writer left in a store.
    TemporaryFile { path: PathBuf },
    /// A shared chain of `plugin` (with its sets or maps) that no attachment uses any more.
    UnusedChain { plugin: String, table: String, name: String },
    /// One of our nftables tables, with nothing in it.
    EmptyTable { table: String },
    /// A rule with policy-route's protocol that no record has.
    UnownedRule {
        #[serde(serialize_with = "as_text")]
        rule: RuleSpec,
    },
    /// A route with policy-route's protocol in a table no record uses.
    UnownedRoute {
        #[serde(serialize_with = "as_text")]
        route: RouteSpec,
    },
}

fn as_text<S: serde::Serializer>(value: &impl std::fmt::Display, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(value)
}

impl From<Unused> for Leak {
    fn from(unused: Unused) -> Leak {
        match unused {
            Unused::Chain { plugin, table, name } => Leak::UnusedChain { plugin, table, name },
            Unused::Table(table) => Leak::EmptyTable { table },
            Unused::Rule(rule) => Leak::UnownedRule { rule },
            Unused::Route(route) => Leak::UnownedRoute { route },
        }
    }
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leak::Veth { whose, name } => write!(f, "veth {name} of {whose}: its pod end is gone"),
            Leak::Reservation { whose, data_dir, address } => write!(
                f,
                "reservation {address} in {} for {}/{}: no live attachment",
                data_dir.join(&whose.network).display(),
                whose.container_id,
                whose.ifname
            ),
            Leak::Element { whose, plugin, table, set, address } => {
                write!(
                    f,
                    "nftables element {address} of {plugin} in inet {table} {set} for {whose}: no live attachment"
                )
            }
            Leak::PolicyRecord { whose, data_dir } => {
                write!(f, "policy-route record (and rules) in {} for {whose}: no live attachment", data_dir.display())
            }
            Leak::TemporaryFile { path } => write!(f, "temporary file {} left by a killed writer", path.display()),
            Leak::UnusedChain { plugin, table, name } => {
                write!(f, "chain {name} of {plugin} in inet {table}: no attachment uses it")
            }
            Leak::EmptyTable { table } => write!(f, "table inet {table}: empty"),
            Leak::UnownedRule { rule } => write!(f, "rule {rule}: no policy-route record has it"),
            Leak::UnownedRoute { route } => write!(f, "route {route}: no policy-route record uses the table"),
        }
    }
}

fn judged(networks: &[Network], a: &Attachment) -> bool {
    let chain = networks.iter().find(|n| n.name == a.network).map(|n| n.plugins.as_slice()).unwrap_or(&[]);
    chain.iter().chain(&a.plugins).any(|p| VETH_PLUGINS.contains(&p.as_str()))
}

fn older_than(written: Option<SystemTime>, grace: Duration) -> bool {
    written.and_then(|w| w.elapsed().ok()).is_some_and(|age| age >= grace)
}

/// The leaks among what the inventory found.
pub fn find(
    networks: &[Network],
    attachments: &[Attachment],
    temporaries: &[(PathBuf, Option<SystemTime>)],
    unused: Vec<Unused>,
    grace: Duration,
) -> Vec<Leak> {
    let mut leaks = Vec::new();
    for a in attachments.iter().filter(|a| a.alive != Some(true) && judged(networks, a)) {
        let whose =
            Whose { network: a.network.clone(), container_id: a.container_id.clone(), ifname: a.ifname.clone() };
        for v in &a.host_veths {
            leaks.push(Leak::Veth { whose: whose.clone(), name: v.name.clone() });
        }
        for r in a.reservations.iter().filter(|r| older_than(r.written, grace)) {
            leaks.push(Leak::Reservation { whose: whose.clone(), data_dir: r.data_dir.clone(), address: r.address });
        }
        for m in &a.nftables {
            let (plugin, table, set, address) = (m.plugin.clone(), m.table.clone(), m.set.clone(), m.address);
            leaks.push(Leak::Element { whose: whose.clone(), plugin, table, set, address });
        }
        if let Some(p) = &a.policy_route {
            leaks.push(Leak::PolicyRecord { whose, data_dir: p.data_dir.clone() });
        }
    }
    for (path, written) in temporaries {
        if older_than(*written, grace) {
            leaks.push(Leak::TemporaryFile { path: path.clone() });
        }
    }
    leaks.extend(unused.into_iter().map(Leak::from));
    leaks
}

/// The attachments (container ID, interface) a CNI call is running for now: every plugin, and the IPAM plugin it
/// runs, has them in its environment.
pub fn in_flight() -> HashSet<(String, String)> {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return HashSet::new() };
    procs
        .flatten()
        .filter(|p| p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) && p.file_name() != me.as_str())
        .filter_map(|p| std::fs::read(p.path().join("environ")).ok())
        .filter_map(|environ| {
            let var = |name: &str| {
                environ.split(|b| *b == 0).find_map(|kv| {
                    kv.strip_prefix(format!("{name}=").as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            var("CNI_COMMAND")?;
            Some((var("CNI_CONTAINERID")?, var("CNI_IFNAME").unwrap_or_default()))
        })
        .collect()
}

impl Leak {
    fn whose(&self) -> Option<&Whose> {
        match self {
            Leak::Veth { whose, .. }
            | Leak::Reservation { whose, .. }
            | Leak::Element { whose, .. }
            | Leak::PolicyRecord { whose, .. } => Some(whose),
            Leak::TemporaryFile { .. }
            | Leak::UnusedChain { .. }
            | Leak::EmptyTable { .. }
            | Leak::UnownedRule { .. }
            | Leak::UnownedRoute { .. } => None,
        }
    }
}

/// What `find` reports in both inventories, leaving out attachments with a CNI call in flight in between.
pub fn confirmed(first: Vec<Leak>, in_flight: &HashSet<(String, String)>, second: &[Leak]) -> Vec<Leak> {
    first
        .into_iter()
        .filter(|l| l.whose().is_none_or(|w| !in_flight.contains(&(w.container_id.clone(), w.ifname.clone()))))
        .filter(|l| second.contains(l))
        .collect()
}

/// The attachments that are live now: a host veth of ours with its pod end.
fn live_now() -> Result<HashSet<Whose>> {
    let rtnl = Rtnl::new()?;
    let node = rtnl.connect()?;
    Ok(rtnl
        .block_on(netlink::links(&node))?
        .into_iter()
        .filter(|l| l.peer_netns.is_some())
        .filter_map(|l| l.alias.as_deref().and_then(Tag::parse))
        .map(|t| Whose { network: t.network, container_id: t.container_id, ifname: t.ifname })
        .collect())
}

/// Remove each leak, looking again first that its attachment is not live (a pod may have come back since) and
/// has no CNI call in flight. A shared piece goes only if the kernel (or policy-route's held stores) still
/// finds it unused, and is reported as not removed when it is still there.
pub fn fix(networks: &[Network], leaks: &[Leak]) -> Result<Vec<(Leak, Result<()>)>> {
    let live = live_now()?;
    let busy = in_flight();
    let left_alone = || Err(CniError::TryAgainLater("its attachment is live again: left alone".into()));
    let fixed: Vec<(Leak, Result<()>)> = leaks
        .iter()
        .map(|leak| {
            let outcome = match (leak, leak.whose()) {
                (_, Some(w)) if live.contains(w) || busy.contains(&(w.container_id.clone(), w.ifname.clone())) => {
                    left_alone()
                }
                (Leak::Veth { whose, name }, _) => remove_veth(whose, name),
                (Leak::Reservation { whose, data_dir, address }, _) => release(whose, data_dir, *address),
                (Leak::Element { whose, plugin, table, set, address }, _) => {
                    remove_element(whose, plugin, table, set, *address)
                }
                (Leak::PolicyRecord { whose, data_dir }, _) => remove_policy_record(whose, data_dir),
                (Leak::TemporaryFile { path }, _) => match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(common::files::io("removing", path, e)),
                    _ => Ok(()),
                },
                (Leak::UnusedChain { plugin, table, name }, _) => remove_chain(networks, plugin, table, name),
                (Leak::EmptyTable { table }, _) => {
                    Nft::open().map(|mut nft| masq::delete_table_if_empty(&mut nft, table))
                }
                (Leak::UnownedRule { rule }, _) => remove_unowned(networks, Unowned::Rule(rule.clone())),
                (Leak::UnownedRoute { route }, _) => remove_unowned(networks, Unowned::Route(route.clone())),
            };
            (leak.clone(), outcome)
        })
        .collect();
    // Pruning is best effort (the kernel keeps what a concurrent ADD just used): say what is still there.
    let left: Vec<Leak> = inventory::unused(networks)?.into_iter().map(Leak::from).collect();
    Ok(fixed
        .into_iter()
        .map(|(leak, outcome)| match outcome {
            Ok(()) if left.contains(&leak) => {
                (leak, Err(CniError::TryAgainLater("still there: in use again, or the kernel kept it".into())))
            }
            outcome => (leak, outcome),
        })
        .collect())
}

/// With the owning plugin's own prune, as its DEL runs it after removing the last member.
fn remove_chain(networks: &[Network], plugin: &str, table: &str, name: &str) -> Result<()> {
    let mut nft = Nft::open()?;
    match plugin {
        "egress-v4" | "egress-v6" => egress::snat::prune(&mut nft, table, name),
        "masquerade" if name.starts_with("masq_group_") => {
            masq::remove_group_rule_if_unused(&mut nft, table, name)?;
        }
        "masquerade" => {
            PodMasq { table, random_fully: false, names: PodMasqNames::MASQUERADE }.prune_unused(&mut nft)?
        }
        "ptp" => PodMasq { table, random_fully: false, names: PodMasqNames::PTP }.prune_unused(&mut nft)?,
        "policy-route" => return remove_unowned(networks, Unowned::Chain(name.into())),
        _ => return Ok(()),
    }
    masq::delete_table_if_empty(&mut nft, table);
    Ok(())
}

fn remove_unowned(networks: &[Network], what: Unowned) -> Result<()> {
    let Some(stores) = inventory::policy_route_stores(networks)? else { return Ok(()) };
    policy_route::Node::open()?.remove_unowned(&stores, &what)
}

fn remove_veth(whose: &Whose, name: &str) -> Result<()> {
    let rtnl = Rtnl::new()?;
    let node = rtnl.connect()?;
    rtnl.block_on(async {
        let Some(link) = netlink::link_by_name(&node, name).await? else { return Ok(()) };
        let tag = link.alias.as_deref().and_then(Tag::parse);
        let same = tag.is_some_and(|t| {
            t.network == whose.network && t.container_id == whose.container_id && t.ifname == whose.ifname
        });
        if same && link.peer_netns.is_none() {
            netlink::delete_link(&node, link.index).await?;
        }
        Ok(())
    })
}

/// As host-local's DEL: under the store's lock, the file goes if the attachment still holds it.
fn release(whose: &Whose, data_dir: &std::path::Path, ip: IpAddr) -> Result<()> {
    let Some(store) = ipam_store::Store::open_existing(data_dir, &whose.network)? else { return Ok(()) };
    let held = store.reservations()?.into_iter().any(|r| {
        r.ip == ip
            && r.holder.container_id == whose.container_id
            && r.holder.ifname.as_deref().unwrap_or("") == whose.ifname
    });
    if held {
        store.release(ip)?;
        store.unindex(&whose.container_id, &whose.ifname)?;
    }
    Ok(())
}

/// With the owning plugin's own DEL for its structure, so what becomes empty goes too.
fn remove_element(whose: &Whose, plugin: &str, table: &str, set: &str, address: IpAddr) -> Result<()> {
    let tag = Owner { plugin, network: &whose.network }.alias(&whose.container_id, &whose.ifname)?;
    let mut nft = Nft::open()?;
    match plugin {
        "egress-v4" | "egress-v6" => egress::snat::del(&mut nft, table, address.is_ipv6(), &tag),
        "ptp" => PodMasq { table, random_fully: false, names: PodMasqNames::PTP }.del(&mut nft, &tag),
        "masquerade" if set.starts_with("masq_group_") => {
            masq::remove_group_members(&mut nft, table, |c| c == tag).map(|_| ())
        }
        "masquerade" => PodMasq { table, random_fully: false, names: PodMasqNames::MASQUERADE }.del(&mut nft, &tag),
        _ => {
            let elements = nft.elements(table, set)?;
            masq::remove_tagged(&mut nft, table, set, elements, |c| c == tag).map(|_| ())
        }
    }
}

/// With policy-route's own GC, for this one attachment: its rules, what only it used, then its record.
fn remove_policy_record(whose: &Whose, data_dir: &std::path::Path) -> Result<()> {
    let Some(store) = policy_route::Store::open_existing(data_dir)? else { return Ok(()) };
    let is_other = |c: &str, i: &str| !(c == whose.container_id && i == whose.ifname);
    policy_route::Node::open()?.gc(&store, &whose.network, is_other).map(|_| ())
}
