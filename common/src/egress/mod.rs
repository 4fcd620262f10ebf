//! Egress to the IP family a pod lacks, as the AWS VPC CNI's egress plugin does it: chained after the
//! main plugin, a second point-to-point veth with an address from IPAM, and SNAT of that address to
//! the node's address of the family. egress-v4 (IPv6-only pods reach IPv4) and egress-v6 (IPv4-only
//! pods reach IPv6) are this module with a `Family`; their `main.rs` only dispatch.

pub mod config;
pub mod snat;

use crate::masq::DEFAULT_TABLE;
use crate::names::{self, Owner};
use crate::netlink::{self, Rtnl};
use crate::netns::Netns;
use crate::nft::Nft;
use crate::types::{IpConfig, Route};
use crate::{ipam, p2p, sysctl, CniError, CniResult, Command, Invocation, Result};
use config::{DelSettings, EgressConf, Settings};
use ipnetwork::IpNetwork;
use snat::Snat;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};

/// What differs between egress-v4 and egress-v6.
#[derive(Debug)]
pub struct Family {
    /// The plugin, in tags, names and messages.
    pub plugin: &'static str,
    /// The family this egress gives the pod: IPv6 for egress-v6.
    pub v6: bool,
    pub default_ifname: &'static str,
    pub default_veth_prefix: &'static str,
}

pub const V4: Family =
    Family { plugin: "egress-v4", v6: false, default_ifname: "v4if0", default_veth_prefix: "egress" };
/// Its own default veth prefix: a chain that carries both plugins (one disabled) never finds the other's veth.
pub const V6: Family =
    Family { plugin: "egress-v6", v6: true, default_ifname: "v6if0", default_veth_prefix: "egress6" };

/// The link-local address every egress-v6 host veth carries and every pod routes IPv6 through. Ours and
/// fixed, with DAD off: the kernel's own link-local appears late (or never, with `addr_gen_mode` none).
pub const HOST_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

impl Family {
    /// "IPv4" or "IPv6": the family egress gives.
    pub fn name(&self) -> &'static str {
        if self.v6 {
            "IPv6"
        } else {
            "IPv4"
        }
    }

    /// The family the pod already has from the main plugin.
    fn other_name(&self) -> &'static str {
        if self.v6 {
            "IPv4"
        } else {
            "IPv6"
        }
    }

    pub fn owner<'a>(&self, inv: &'a Invocation) -> Owner<'a> {
        Owner { plugin: self.plugin, network: &inv.config.net.name }
    }
}

fn settings(family: &Family, inv: &Invocation) -> Result<Settings> {
    let s = inv.config.plugin::<EgressConf>()?.settings(family)?;
    if s.if_name == inv.ifname {
        return Err(CniError::InvalidConfig(format!("ifName {:?} is the main interface's name", s.if_name)));
    }
    Ok(s)
}

/// Everything an attachment's state is found by, without its netns.
struct Names {
    host_ifname: String,
    /// Tags the host veth and the SNAT element with the attachment (containerID, CNI_IFNAME).
    tag: String,
}

fn names(family: &Family, inv: &Invocation, veth_prefix: &str, if_name: &str) -> Result<Names> {
    Ok(Names {
        host_ifname: names::host_ifname(veth_prefix, &inv.container_id, if_name)?,
        tag: family.owner(inv).alias(&inv.container_id, &inv.ifname)?,
    })
}

fn node_ip(family: &Family, s: &Settings, rtnl: &Rtnl, node: &netlink::Handle) -> Result<IpAddr> {
    if let Some(ip) = s.node_ip {
        return Ok(ip);
    }
    rtnl.block_on(netlink::default_route_source(node, family.v6))?.ok_or_else(|| {
        CniError::TryAgainLater(format!(
            "nodeIP is not set and the node has no {} default route with a usable source to take it from",
            family.name()
        ))
    })
}

fn ipam_configured(inv: &Invocation) -> bool {
    inv.config.net.ipam.as_ref().is_some_and(|i| !i.kind.is_empty())
}

/// IPAM must give exactly one address of the family.
fn egress_address(family: &Family, result: &CniResult) -> Result<IpConfig> {
    match result.ips.as_slice() {
        [ip] if ip.address.is_ipv6() == family.v6 => Ok(ip.clone()),
        [ip] => Err(CniError::InvalidConfig(format!("IPAM gave {}, not an {} address", ip.address, family.name()))),
        ips => Err(CniError::InvalidConfig(format!(
            "IPAM gave {} addresses; {} needs exactly one {}",
            ips.len(),
            family.plugin,
            family.name()
        ))),
    }
}

/// The pod side as the point-to-point veth builds it. IPv4 routes through IPAM's gateway, which goes on
/// the host veth; IPv6 through the host veth's fixed link-local address, whatever IPAM says.
fn pod_side(family: &Family, ip: IpConfig, routes: &[Route]) -> (IpConfig, Vec<Route>) {
    if !family.v6 {
        return (ip, routes.to_vec());
    }
    let ip = IpConfig { gateway: Some(IpAddr::V6(HOST_LINK_LOCAL)), ..ip };
    (ip, routes.iter().map(|r| Route { gw: None, ..r.clone() }).collect())
}

/// Forwarding of the egress family on the node. Turning IPv6 forwarding on makes the kernel drop the
/// router-advertised default routes of interfaces with `accept_ra` 1, so those get 2 first.
fn enable_forwarding(family: &Family, rtnl: &Rtnl, node: &netlink::Handle) -> Result<()> {
    if !family.v6 {
        return sysctl::enable_forwarding(true, false);
    }
    if sysctl::get("net/ipv6/conf/all/forwarding")? == "1" {
        return Ok(());
    }
    rtnl.block_on(async {
        for index in netlink::ra_default_route_links(node).await? {
            let Some(link) = netlink::link_by_index(node, index).await? else { continue };
            let key = format!("net/ipv6/conf/{}/accept_ra", link.name);
            if sysctl::get(&key)? == "1" {
                log::info!("{}: accept_ra 2, so IPv6 forwarding keeps its router-advertised default route", link.name);
                sysctl::set(&key, "2")?;
            }
        }
        Ok::<_, CniError>(())
    })?;
    sysctl::enable_forwarding(false, true)
}

/// egress-v6 leaves the pod's primary interface without IPv6, so only the egress path carries it.
fn primary_ipv6_key(ifname: &str) -> String {
    format!("net/ipv6/conf/{ifname}/disable_ipv6")
}

/// The sysctl tree is there only when the kernel has IPv6 at all.
fn require_ipv6(family: &Family) -> Result<()> {
    if family.v6 && !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return Err(CniError::NotAvailable("egress-v6 needs IPv6, which this kernel has switched off".into()));
    }
    Ok(())
}

pub fn add(family: &Family, inv: &Invocation) -> Result<CniResult> {
    let s = settings(family, inv)?;
    let mut result = inv.config.require_prev_result()?;
    if !s.enabled {
        return Ok(result);
    }
    if let Some(had) = result.ips.iter().find(|ip| ip.address.is_ipv6() == family.v6) {
        return Err(CniError::InvalidConfig(format!(
            "the pod already has {} address {} from the main plugin; {} is for {}-only pods",
            family.name(),
            had.address,
            family.plugin,
            family.other_name()
        )));
    }
    require_ipv6(family)?;
    let n = names(family, inv, &s.veth_prefix, &s.if_name)?;
    let pod = Netns::open(&inv.netns)?;
    let rtnl = Rtnl::new()?;
    let node = rtnl.connect()?;
    let snat = Snat { table: DEFAULT_TABLE, node_ip: node_ip(family, &s, &rtnl, &node)?, ports: s.ports };
    p2p::refuse_live(&rtnl, &node, &n.host_ifname, &inv.container_id, &inv.ifname)?;
    let allocated = ipam::exec(inv, Command::Add)?.unwrap_or_default();
    let wired = (|| {
        let (ip, routes) = pod_side(family, egress_address(family, &allocated)?, &allocated.routes);
        let pod_ip = ip.address.ip();
        enable_forwarding(family, &rtnl, &node)?;
        let att = p2p::P2pAttachment {
            host_ifname: &n.host_ifname,
            container_ifname: &s.if_name,
            alias: &n.tag,
            mtu: s.mtu,
            host_group: None,
        };
        let ifs = p2p::setup(&rtnl, &node, &pod, &att, &[ip], &routes)?;
        let finished = Nft::open().and_then(|mut nft| {
            snat.add(&mut nft, &n.tag, pod_ip)?;
            // Last, so a failure before it never needs the primary's IPv6 back.
            let switched_off =
                if family.v6 { pod.run(|| sysctl::set(&primary_ipv6_key(&inv.ifname), "1"))? } else { Ok(()) };
            switched_off.inspect_err(|_| {
                let _ = snat::del(&mut nft, DEFAULT_TABLE, family.v6, &n.tag);
            })
        });
        if let Err(e) = finished {
            let _ = p2p::teardown(&rtnl, &node, &n.host_ifname, &n.tag, Some(&pod), &s.if_name);
            return Err(e);
        }
        Ok(ifs)
    })();
    let (host_if, cont_if) = wired.inspect_err(|_| ipam::rollback(inv))?;
    // Only interfaces: runtimes take the pod's IPs from `ips`, which must stay the main plugin's.
    result.interfaces.extend([host_if, cont_if]);
    Ok(result)
}

/// DEL reads only the names that find the attachment: a value it does not need never leaks the pod.
pub fn del(family: &Family, inv: &Invocation) -> Result<()> {
    let s = config::del_settings(family, inv.config.plugin_part());
    let cleaned = cleanup(family, inv, &s);
    if s.enabled {
        cleaned
    } else {
        // Disabled now, maybe not when the pod was added: clean up what is there, never fail.
        cleaned.or_else(|e| {
            log::info!("DEL with {} disabled: {e}", family.plugin);
            Ok(())
        })
    }
}

pub fn check(family: &Family, inv: &Invocation) -> Result<()> {
    let s = settings(family, inv)?;
    if !s.enabled {
        return Ok(());
    }
    let prev = inv.config.require_prev_result()?;
    ipam::exec(inv, Command::Check)?;
    let n = names(family, inv, &s.veth_prefix, &s.if_name)?;
    let pod = Netns::open(&inv.netns)?;
    let rtnl = Rtnl::new()?;
    let node = rtnl.connect()?;
    let (view, pod_ip) = kernel_view(family, &rtnl, &node, &pod, &prev, &s, &n)?;
    p2p::check(&rtnl, &node, &pod, &view, &s.if_name, None)?;
    if family.v6 && pod.run(|| sysctl::get(&primary_ipv6_key(&inv.ifname)))?? != "1" {
        return Err(CniError::CheckFailed(format!("IPv6 is on again on the pod's {}", inv.ifname)));
    }
    let snat = Snat { table: DEFAULT_TABLE, node_ip: node_ip(family, &s, &rtnl, &node)?, ports: s.ports };
    snat.check(&mut Nft::open()?, &n.tag, pod_ip)
}

pub fn status(family: &Family, inv: &Invocation) -> Result<()> {
    if !settings(family, inv)?.enabled {
        return Ok(());
    }
    require_ipv6(family)?;
    Nft::open().and_then(|mut nft| nft.table_exists(DEFAULT_TABLE)).map_err(|e| {
        CniError::NotAvailable(format!("{} needs nftables, which is not usable here: {e}", family.plugin))
    })?;
    ipam::exec(inv, Command::Status).map(|_| ())
}

pub fn gc(family: &Family, inv: &Invocation) -> Result<()> {
    let valid: HashSet<(String, String)> =
        inv.config.valid_attachments().into_iter().map(|a| (a.container_id, a.ifname)).collect();
    let owner = family.owner(inv);
    let is_valid = |tag: &str| owner.attachment(tag).is_some_and(|(c, i)| valid.contains(&(c.into(), i.into())));
    let addresses = if ipam_configured(inv) { ipam::exec(inv, Command::Gc).map(|_| ()) } else { Ok(()) };
    let rtnl = Rtnl::new()?;
    let node = rtnl.connect()?;
    let links = p2p::gc(&rtnl, &node, &owner, &valid).map(|_| ());
    let nat = Nft::open()
        .and_then(|mut nft| snat::gc(&mut nft, DEFAULT_TABLE, family.v6, &owner.prefix(), is_valid))
        .map(|_| ());
    links.and(nat).and(addresses)
}

/// DEL's work: host veth by name (also without the netns), SNAT element by tag, IPAM reservation.
fn cleanup(family: &Family, inv: &Invocation, s: &DelSettings) -> Result<()> {
    let n = names(family, inv, &s.veth_prefix, &s.if_name)?;
    // A missing netns is normal for DEL: the host end is found by name.
    let pod = Netns::open_for_del(&inv.netns)?;
    // IPAM releases the address while the kernel deletes the veth (an RCU wait that dominates DEL); an IPAM
    // plugin that cannot even start stops DEL before it changes anything.
    let addresses = ipam_configured(inv).then(|| ipam::start(inv, Command::Del)).transpose()?;
    let rtnl = Rtnl::new()?;
    let node = rtnl.connect()?;
    let links = p2p::teardown(&rtnl, &node, &n.host_ifname, &n.tag, pod.as_ref(), &s.if_name);
    let nat = Nft::open().and_then(|mut nft| snat::del(&mut nft, DEFAULT_TABLE, family.v6, &n.tag));
    let addresses = addresses.map_or(Ok(()), |p| p.finish().map(|_| ()));
    links.and(nat).and(addresses)
}

/// What ADD configured, read back from the kernel: prevResult holds the interfaces but, on purpose, not
/// the egress address. The pod's one address of the family and the gateway on the host veth stand in.
fn kernel_view(
    family: &Family,
    rtnl: &Rtnl,
    node: &netlink::Handle,
    pod: &Netns,
    prev: &CniResult,
    s: &Settings,
    n: &Names,
) -> Result<(CniResult, IpAddr)> {
    let fail = |m: String| CniError::CheckFailed(m);
    let cont = prev
        .container_interface(&s.if_name)
        .map(|i| prev.interfaces[i].clone())
        .ok_or_else(|| fail(format!("prevResult has no interface {} in a sandbox", s.if_name)))?;
    let host = prev
        .interfaces
        .iter()
        .find(|i| i.name == n.host_ifname && i.sandbox.as_deref().unwrap_or("").is_empty())
        .cloned()
        .ok_or_else(|| fail(format!("prevResult has no host interface {}", n.host_ifname)))?;
    // The kernel's own IPv6 link-local addresses are not the egress address.
    let of_family = |addrs: Vec<IpNetwork>| {
        addrs
            .into_iter()
            .filter(|a| match a.ip() {
                IpAddr::V4(_) => !family.v6,
                IpAddr::V6(v6) => family.v6 && !v6.is_unicast_link_local(),
            })
            .collect::<Vec<_>>()
    };
    let pod_handle = rtnl.connect_in(pod)?;
    let (address, gateway) = rtnl.block_on(async {
        let link = netlink::link_by_name(&pod_handle, &s.if_name)
            .await?
            .ok_or_else(|| fail(format!("interface {} is missing from {}", s.if_name, pod.path())))?;
        let [address] = of_family(netlink::addresses(&pod_handle, link.index).await?)[..] else {
            return Err(fail(format!("{} does not hold exactly one {} address", s.if_name, family.name())));
        };
        let host_link = netlink::link_by_name(node, &n.host_ifname)
            .await?
            .ok_or_else(|| fail(format!("host interface {} is missing", n.host_ifname)))?;
        let host_addrs = netlink::addresses(node, host_link.index).await?.into_iter().map(|a| a.ip());
        let gateway = if family.v6 {
            host_addrs.into_iter().find(|gw| *gw == IpAddr::V6(HOST_LINK_LOCAL))
        } else {
            host_addrs.into_iter().find(|gw| gw.is_ipv4() && address.contains(*gw))
        };
        let gateway = gateway.ok_or_else(|| fail(format!("{} holds no gateway for {address}", n.host_ifname)))?;
        Ok::<_, CniError>((address, gateway))
    })?;
    let view = CniResult {
        interfaces: vec![host, cont],
        ips: vec![IpConfig { interface: Some(1), address, gateway: Some(gateway) }],
        routes: Vec::<Route>::new(),
        ..Default::default()
    };
    Ok((view, address.ip()))
}
