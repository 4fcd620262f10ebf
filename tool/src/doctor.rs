//! `cni-chain doctor`: what no live attachment owns. An attachment is live while a host veth of ours has its pod
//! end in a netns (a veth pair dies with either end's netns); it is judged only where one of our veth-making
//! plugins is in its chain, since otherwise the node alone cannot tell. Files younger than the grace time are
//! left alone: an ADD writes its reservation before it makes the veth. `--fix` removes each leak with the code
//! the owning plugin's DEL or GC uses, after looking again that the attachment is still not live.
//!
//! Pods come and go while it runs. A DEL removes the veth and the rest in some order, so for a moment part of a
//! live DEL looks leaked: an attachment with a CNI call in flight (a process with its CNI_CONTAINERID and
//! CNI_IFNAME) is not judged, and what is reported was found both before and after that look.

use common::inventory::{Attachment, Network};
use common::masq::{self, PodMasq, PodMasqNames};
use common::names::{Owner, Tag};
use common::netlink::{self, Rtnl};
use common::nft::Nft;
use common::{egress, ipam_store, policy_route, CniError, Result};
use serde::Serialize;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The plugins whose host veth says whether an attachment lives.
const VETH_PLUGINS: [&str; 3] = ["ptp", "egress-v4", "egress-v6"];

/// Something of ours that no live attachment owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Leak {
    /// A host veth of ours whose pod end is gone.
    Veth {
        network: String,
        #[serde(rename = "containerID")]
        container_id: String,
        ifname: String,
        name: String,
    },
    /// A host-local reservation of an attachment that is not live.
    Reservation {
        network: String,
        #[serde(rename = "containerID")]
        container_id: String,
        ifname: String,
        #[serde(rename = "dataDir")]
        data_dir: PathBuf,
        address: IpAddr,
    },
    /// An nftables element tagged with an attachment that is not live.
    Element {
        network: String,
        #[serde(rename = "containerID")]
        container_id: String,
        ifname: String,
        plugin: String,
        table: String,
        set: String,
        address: IpAddr,
    },
    /// policy-route's record (and so its rules) of an attachment that is not live.
    PolicyRecord {
        network: String,
        #[serde(rename = "containerID")]
        container_id: String,
        ifname: String,
        #[serde(rename = "dataDir")]
        data_dir: PathBuf,
    },
    /// A temporary file a killed writer left in a store.
    TemporaryFile { path: PathBuf },
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leak::Veth { network, container_id, ifname, name } => {
                write!(f, "veth {name} of {network} {container_id}/{ifname}: its pod end is gone")
            }
            Leak::Reservation { network, container_id, ifname, data_dir, address } => write!(
                f,
                "reservation {address} in {} for {container_id}/{ifname}: no live attachment",
                data_dir.join(network).display()
            ),
            Leak::Element { network, container_id, ifname, plugin, table, set, address } => write!(
                f,
                "nftables element {address} of {plugin} in inet {table} {set} for {network} {container_id}/{ifname}: no live attachment"
            ),
            Leak::PolicyRecord { network, container_id, ifname, data_dir } => write!(
                f,
                "policy-route record (and rules) in {} for {network} {container_id}/{ifname}: no live attachment",
                data_dir.display()
            ),
            Leak::TemporaryFile { path } => write!(f, "temporary file {} left by a killed writer", path.display()),
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
    grace: Duration,
) -> Vec<Leak> {
    let mut leaks = Vec::new();
    for a in attachments.iter().filter(|a| a.alive != Some(true) && judged(networks, a)) {
        let (network, container_id, ifname) = (a.network.clone(), a.container_id.clone(), a.ifname.clone());
        for v in &a.host_veths {
            let (network, container_id, ifname) = (network.clone(), container_id.clone(), ifname.clone());
            leaks.push(Leak::Veth { network, container_id, ifname, name: v.name.clone() });
        }
        for r in a.reservations.iter().filter(|r| older_than(r.written, grace)) {
            let (network, container_id, ifname) = (network.clone(), container_id.clone(), ifname.clone());
            let (data_dir, address) = (r.data_dir.clone(), r.address);
            leaks.push(Leak::Reservation { network, container_id, ifname, data_dir, address });
        }
        for m in &a.nftables {
            let (network, container_id, ifname) = (network.clone(), container_id.clone(), ifname.clone());
            let (plugin, table, set, address) = (m.plugin.clone(), m.table.clone(), m.set.clone(), m.address);
            leaks.push(Leak::Element { network, container_id, ifname, plugin, table, set, address });
        }
        if let Some(p) = &a.policy_route {
            leaks.push(Leak::PolicyRecord { network, container_id, ifname, data_dir: p.data_dir.clone() });
        }
    }
    for (path, written) in temporaries {
        if older_than(*written, grace) {
            leaks.push(Leak::TemporaryFile { path: path.clone() });
        }
    }
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
    /// The attachment it belongs to, if any.
    fn attachment(&self) -> Option<(&str, &str)> {
        match self {
            Leak::Veth { container_id, ifname, .. }
            | Leak::Reservation { container_id, ifname, .. }
            | Leak::Element { container_id, ifname, .. }
            | Leak::PolicyRecord { container_id, ifname, .. } => Some((container_id, ifname)),
            Leak::TemporaryFile { .. } => None,
        }
    }
}

/// What `find` reports in both inventories, leaving out attachments with a CNI call in flight in between.
pub fn confirmed(first: Vec<Leak>, in_flight: &HashSet<(String, String)>, second: &[Leak]) -> Vec<Leak> {
    first
        .into_iter()
        .filter(|l| l.attachment().is_none_or(|(c, i)| !in_flight.contains(&(c.to_string(), i.to_string()))))
        .filter(|l| second.contains(l))
        .collect()
}

/// The attachments (network, container ID, interface) that are live now: a host veth of ours with its pod end.
fn live_now() -> Result<HashSet<(String, String, String)>> {
    let rtnl = Rtnl::new()?;
    let node = rtnl.connect()?;
    Ok(rtnl
        .block_on(netlink::links(&node))?
        .into_iter()
        .filter(|l| l.peer_netns.is_some())
        .filter_map(|l| l.alias.as_deref().and_then(Tag::parse))
        .map(|t| (t.network, t.container_id, t.ifname))
        .collect())
}

/// Remove each leak, looking again first that its attachment is not live (a pod may have come back since) and
/// has no CNI call in flight.
pub fn fix(leaks: &[Leak]) -> Result<Vec<(Leak, Result<()>)>> {
    let live = live_now()?;
    let busy = in_flight();
    let is_live = |n: &str, c: &str, i: &str| {
        live.contains(&(n.to_string(), c.to_string(), i.to_string())) || busy.contains(&(c.to_string(), i.to_string()))
    };
    Ok(leaks
        .iter()
        .map(|leak| {
            let outcome = match leak {
                Leak::Veth { network, container_id, ifname, name } if !is_live(network, container_id, ifname) => {
                    remove_veth(network, container_id, ifname, name)
                }
                Leak::Reservation { network, container_id, ifname, data_dir, address }
                    if !is_live(network, container_id, ifname) =>
                {
                    release(network, container_id, ifname, data_dir, *address)
                }
                Leak::Element { network, container_id, ifname, plugin, table, set, address }
                    if !is_live(network, container_id, ifname) =>
                {
                    remove_element(network, container_id, ifname, plugin, table, set, *address)
                }
                Leak::PolicyRecord { network, container_id, ifname, data_dir }
                    if !is_live(network, container_id, ifname) =>
                {
                    remove_policy_record(network, container_id, ifname, data_dir)
                }
                Leak::TemporaryFile { path } => match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(common::files::io("removing", path, e)),
                    _ => Ok(()),
                },
                _ => Err(CniError::TryAgainLater("its attachment is live again: left alone".into())),
            };
            (leak.clone(), outcome)
        })
        .collect())
}

fn remove_veth(network: &str, container_id: &str, ifname: &str, name: &str) -> Result<()> {
    let rtnl = Rtnl::new()?;
    let node = rtnl.connect()?;
    rtnl.block_on(async {
        let Some(link) = netlink::link_by_name(&node, name).await? else { return Ok(()) };
        let tag = link.alias.as_deref().and_then(Tag::parse);
        let same = tag.is_some_and(|t| t.network == network && t.container_id == container_id && t.ifname == ifname);
        if same && link.peer_netns.is_none() {
            netlink::delete_link(&node, link.index).await?;
        }
        Ok(())
    })
}

/// As host-local's DEL: under the store's lock, the file goes if the attachment still holds it.
fn release(network: &str, container_id: &str, ifname: &str, data_dir: &std::path::Path, ip: IpAddr) -> Result<()> {
    let Some(store) = ipam_store::Store::open_existing(data_dir, network)? else { return Ok(()) };
    let held = store.reservations()?.into_iter().any(|r| {
        r.ip == ip && r.holder.container_id == container_id && r.holder.ifname.as_deref().unwrap_or("") == ifname
    });
    if held {
        store.release(ip)?;
        store.unindex(container_id, ifname)?;
    }
    Ok(())
}

/// With the owning plugin's own DEL for its structure, so what becomes empty goes too.
fn remove_element(
    network: &str,
    container_id: &str,
    ifname: &str,
    plugin: &str,
    table: &str,
    set: &str,
    address: IpAddr,
) -> Result<()> {
    let tag = Owner { plugin, network }.alias(container_id, ifname)?;
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
fn remove_policy_record(network: &str, container_id: &str, ifname: &str, data_dir: &std::path::Path) -> Result<()> {
    let Some(store) = policy_route::Store::open_existing(data_dir)? else { return Ok(()) };
    policy_route::Node::open()?.gc(&store, network, |c, i| !(c == container_id && i == ifname)).map(|_| ())
}
