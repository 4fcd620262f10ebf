//! linkgroup: chained after any main plugin, puts the pod's host-side interface(s) into a link group
//! (and optionally the pod-side ones into another), so one nftables rule can match every pod.
#![cfg_attr(not(test), no_main)]

use common::linkgroup::GroupRef;
use common::netlink::{Link, RtnlNow};
use common::netns::Netns;
use common::types::Interface;
use common::{CniError, CniResult, Invocation, Plugin, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct LinkGroupConf {
    group: Option<GroupRef>,
    #[serde(rename = "containerGroup", default)]
    container_group: Option<GroupRef>,
    /// Host-side interfaces to group, instead of the veths found in prevResult.
    #[serde(default)]
    interfaces: Option<Vec<String>>,
}

struct LinkGroup;

struct Groups {
    host: u32,
    container: Option<u32>,
    interfaces: Option<Vec<String>>,
}

fn groups(inv: &Invocation) -> Result<Groups> {
    let conf: LinkGroupConf = inv.config.plugin()?;
    let host = conf.group.ok_or_else(|| CniError::InvalidConfig("linkgroup needs \"group\"".into()))?.resolve()?;
    let container = conf.container_group.as_ref().map(GroupRef::resolve).transpose()?;
    Ok(Groups { host, container, interfaces: conf.interfaces })
}

/// prevResult's interfaces on the node (no sandbox).
fn node_side(prev: &CniResult) -> impl Iterator<Item = &Interface> {
    prev.interfaces.iter().filter(|i| i.sandbox.as_deref().unwrap_or("").is_empty())
}

/// The node-side links to group: the ones named in the config, else those pod traffic enters the node
/// through. After a point-to-point plugin that is its host veth; after a bridge plugin, routed traffic enters
/// through the bridge, not through the port, so the bridge is grouped (with its ports, for bridged traffic).
fn host_links(node: &mut RtnlNow, prev: &CniResult, named: Option<&[String]>) -> Result<Vec<Link>> {
    let mut links: Vec<Link> = Vec::new();
    let mut push = |link: Link| {
        if !links.iter().any(|l| l.index == link.index) {
            links.push(link);
        }
    };
    match named {
        Some(names) => {
            for name in names {
                let link = node.link_by_name(name)?;
                push(link.ok_or_else(|| {
                    CniError::InvalidConfig(format!("interface {name:?} does not exist on the node"))
                })?);
            }
        }
        None => {
            for iface in node_side(prev) {
                let Some(link) = node.link_by_name(&iface.name)? else { continue };
                if !link.is_veth() && !link.is_bridge() {
                    continue;
                }
                if let Some(master) = link.master {
                    let port_of = node.link_by_index(master)?;
                    match port_of {
                        Some(m) if m.is_bridge() => push(m),
                        // A bond, a VRF, an OVS port: what traffic enters through is not ours to know.
                        _ => {
                            return Err(CniError::InvalidConfig(format!(
                            "{} is a port of {}, which is not a bridge: name the interfaces to group in \"interfaces\"",
                            link.name,
                            port_of.map_or_else(
                                || format!("link {master}"),
                                |m| format!("{} ({})", m.name, m.kind.unwrap_or_default())
                            )
                        )))
                        }
                    }
                }
                push(link);
            }
            if links.is_empty() {
                return Err(CniError::InvalidConfig(
                    "prevResult names no host-side veth or bridge on this node; list the interfaces in \"interfaces\""
                        .into(),
                ));
            }
        }
    }
    Ok(links)
}

/// prevResult's interfaces inside this pod.
fn pod_ifnames<'a>(inv: &Invocation, prev: &'a CniResult) -> Vec<&'a str> {
    prev.interfaces
        .iter()
        .filter(|i| i.sandbox.as_deref() == Some(inv.netns.as_str()))
        .map(|i| i.name.as_str())
        .collect()
}

/// Apply (or, with `verify`, compare) the groups.
fn walk(inv: &Invocation, verify: bool) -> Result<CniResult> {
    let g = groups(inv)?;
    let prev = inv.config.require_prev_result()?;
    let mut node = RtnlNow::new()?;
    for link in host_links(&mut node, &prev, g.interfaces.as_deref())? {
        set_or_check(&mut node, &link, g.host, verify)?;
    }
    if let Some(group) = g.container {
        let mut pod = RtnlNow::new_in(&Netns::open(&inv.netns)?)?;
        for name in pod_ifnames(inv, &prev) {
            let link = pod.link_by_name(name)?;
            let link = link.ok_or_else(|| CniError::CheckFailed(format!("{name} is missing from {}", inv.netns)))?;
            set_or_check(&mut pod, &link, group, verify)?;
        }
    }
    Ok(prev)
}

/// Put `link` into `group`, unless it is there already; with `verify`, only say whether it is.
fn set_or_check(socket: &mut RtnlNow, link: &Link, group: u32, verify: bool) -> Result<()> {
    match link.group == group {
        true => Ok(()),
        false if verify => Err(CniError::CheckFailed(format!("{} is in group {}, not {group}", link.name, link.group))),
        false => socket.set_link_group(link.index, group),
    }
}

impl Plugin for LinkGroup {
    const NAME: &'static str = "linkgroup";
    const ABOUT: &'static str = "chained: puts the pod's host-side interfaces (or its bridge) into a link group, for one nftables rule per group";

    fn add(inv: &Invocation) -> Result<CniResult> {
        walk(inv, false)
    }

    fn check(inv: &Invocation) -> Result<()> {
        walk(inv, true).map(|_| ())
    }

    /// The main plugin removes the interfaces; a group needs no undoing, so no config value can fail DEL.
    fn del(_: &Invocation) -> Result<()> {
        Ok(())
    }

    fn status(inv: &Invocation) -> Result<()> {
        groups(inv).map(|_| ())
    }

    fn gc(inv: &Invocation) -> Result<()> {
        inv.config.plugin::<LinkGroupConf>().map(|_| ())
    }
}

common::plugin_main!(LinkGroup);
