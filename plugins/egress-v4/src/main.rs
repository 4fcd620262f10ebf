//! egress-v4: chained after an IPv6 main plugin, gives the pod a second point-to-point veth with a
//! link-local IPv4 address and SNATs its traffic to the node's IPv4 address (the AWS VPC CNI design).

mod config;
mod snat;

use common::masq::DEFAULT_TABLE;
use common::names::{self, Owner};
use common::netlink::{self, Rtnl};
use common::netns::Netns;
use common::nft::Nft;
use common::types::{IpConfig, Route};
use common::{ipam, p2p, sysctl, CniError, CniResult, Command, Invocation, Plugin, Result};
use config::{DelSettings, EgressConf, Settings};
use snat::Snat;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

struct EgressV4;

fn settings(inv: &Invocation) -> Result<Settings> {
    let s = inv.config.plugin::<EgressConf>()?.settings()?;
    if s.if_name == inv.ifname {
        return Err(CniError::InvalidConfig(format!("ifName {:?} is the main interface's name", s.if_name)));
    }
    Ok(s)
}

fn owner(inv: &Invocation) -> Owner<'_> {
    Owner { plugin: "egress-v4", network: &inv.config.net.name }
}

/// Everything an attachment's state is found by, without its netns.
struct Names {
    host_ifname: String,
    /// Tags the host veth and the SNAT element with the attachment (containerID, CNI_IFNAME).
    tag: String,
}

fn names(inv: &Invocation, veth_prefix: &str, if_name: &str) -> Result<Names> {
    Ok(Names {
        host_ifname: names::host_ifname(veth_prefix, &inv.container_id, if_name)?,
        tag: owner(inv).alias(&inv.container_id, &inv.ifname)?,
    })
}

fn node_ip(s: &Settings, rtnl: &Rtnl, node: &netlink::Handle) -> Result<Ipv4Addr> {
    if let Some(ip) = s.node_ip {
        return Ok(ip);
    }
    rtnl.block_on(netlink::default_route_source_v4(node))?.ok_or_else(|| {
        CniError::TryAgainLater("nodeIP is not set and the node has no IPv4 default route to take it from".into())
    })
}

fn ipam_configured(inv: &Invocation) -> bool {
    inv.config.net.ipam.as_ref().is_some_and(|i| !i.kind.is_empty())
}

/// IPAM must give exactly one IPv4 address, with the gateway the pod routes through.
fn egress_address(result: &CniResult) -> Result<(IpConfig, Ipv4Addr)> {
    match result.ips.as_slice() {
        [ip] => match ip.address.ip() {
            IpAddr::V4(v4) => Ok((ip.clone(), v4)),
            IpAddr::V6(_) => Err(CniError::InvalidConfig(format!("IPAM gave {}, not an IPv4 address", ip.address))),
        },
        ips => {
            Err(CniError::InvalidConfig(format!("IPAM gave {} addresses; egress-v4 needs exactly one IPv4", ips.len())))
        }
    }
}

impl Plugin for EgressV4 {
    const NAME: &'static str = "egress-v4";
    const ABOUT: &'static str = "chained after an IPv6 main plugin: a second veth with a link-local IPv4 address, SNAT to the node's IPv4 address";

    fn add(inv: &Invocation) -> Result<CniResult> {
        let s = settings(inv)?;
        let mut result = inv.config.require_prev_result()?;
        if !s.enabled {
            return Ok(result);
        }
        if let Some(v4) = result.ips.iter().find(|ip| ip.address.is_ipv4()) {
            return Err(CniError::InvalidConfig(format!(
                "the pod already has IPv4 address {} from the main plugin; egress-v4 is for IPv6-only pods",
                v4.address
            )));
        }
        let n = names(inv, &s.veth_prefix, &s.if_name)?;
        let pod = Netns::open(&inv.netns)?;
        let rtnl = Rtnl::new()?;
        let node = rtnl.connect()?;
        let snat = Snat { table: DEFAULT_TABLE, node_ip: node_ip(&s, &rtnl, &node)?, ports: s.ports };
        p2p::refuse_live(&rtnl, &node, &n.host_ifname, &inv.container_id, &inv.ifname)?;
        let allocated = ipam::exec(inv, Command::Add)?.unwrap_or_default();
        let wired = (|| {
            let (ip, pod_ip) = egress_address(&allocated)?;
            sysctl::enable_forwarding(true, false)?;
            let att = p2p::P2pAttachment {
                host_ifname: &n.host_ifname,
                container_ifname: &s.if_name,
                alias: &n.tag,
                mtu: s.mtu,
                host_group: None,
            };
            let ifs = p2p::setup(&rtnl, &node, &pod, &att, &[ip], &allocated.routes)?;
            if let Err(e) = Nft::open().and_then(|mut nft| snat.add(&mut nft, &n.tag, pod_ip)) {
                let _ = p2p::teardown(&rtnl, &node, &n.host_ifname, &n.tag, Some(&pod), &s.if_name);
                return Err(e);
            }
            Ok(ifs)
        })();
        let (host_if, cont_if) = wired.inspect_err(|_| ipam::rollback(inv))?;
        // Only interfaces: runtimes take the pod's IPs from `ips`, which must stay the IPv6 ones.
        result.interfaces.extend([host_if, cont_if]);
        Ok(result)
    }

    /// DEL reads only the names that find the attachment: a value it does not need never leaks the pod.
    fn del(inv: &Invocation) -> Result<()> {
        let s = config::del_settings(inv.config.plugin_part());
        let cleaned = cleanup(inv, &s);
        if s.enabled {
            cleaned
        } else {
            // Disabled now, maybe not when the pod was added: clean up what is there, never fail.
            cleaned.or_else(|e| {
                log::info!("DEL with egress-v4 disabled: {e}");
                Ok(())
            })
        }
    }

    fn check(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        if !s.enabled {
            return Ok(());
        }
        let prev = inv.config.require_prev_result()?;
        ipam::exec(inv, Command::Check)?;
        let n = names(inv, &s.veth_prefix, &s.if_name)?;
        let pod = Netns::open(&inv.netns)?;
        let rtnl = Rtnl::new()?;
        let node = rtnl.connect()?;
        let (view, pod_ip) = kernel_view(&rtnl, &node, &pod, &prev, &s, &n)?;
        p2p::check(&rtnl, &node, &pod, &view, &s.if_name, None)?;
        let snat = Snat { table: DEFAULT_TABLE, node_ip: node_ip(&s, &rtnl, &node)?, ports: s.ports };
        snat.check(&mut Nft::open()?, &n.tag, pod_ip)
    }

    fn status(inv: &Invocation) -> Result<()> {
        if !settings(inv)?.enabled {
            return Ok(());
        }
        Nft::open()
            .and_then(|mut nft| nft.table_exists(DEFAULT_TABLE))
            .map_err(|e| CniError::NotAvailable(format!("egress-v4 needs nftables, which is not usable here: {e}")))?;
        ipam::exec(inv, Command::Status).map(|_| ())
    }

    fn gc(inv: &Invocation) -> Result<()> {
        let valid: HashSet<(String, String)> =
            inv.config.valid_attachments().into_iter().map(|a| (a.container_id, a.ifname)).collect();
        let owner = owner(inv);
        let is_valid = |tag: &str| owner.attachment(tag).is_some_and(|(c, i)| valid.contains(&(c.into(), i.into())));
        let addresses = if ipam_configured(inv) { ipam::exec(inv, Command::Gc).map(|_| ()) } else { Ok(()) };
        let rtnl = Rtnl::new()?;
        let node = rtnl.connect()?;
        let links = p2p::gc(&rtnl, &node, &owner, &valid).map(|_| ());
        let nat =
            Nft::open().and_then(|mut nft| snat::gc(&mut nft, DEFAULT_TABLE, &owner.prefix(), is_valid)).map(|_| ());
        links.and(nat).and(addresses)
    }
}

/// DEL's work: host veth by name (also without the netns), SNAT element by tag, IPAM reservation.
fn cleanup(inv: &Invocation, s: &DelSettings) -> Result<()> {
    let n = names(inv, &s.veth_prefix, &s.if_name)?;
    // A missing netns is normal for DEL: the host end is found by name.
    let pod = Netns::open_for_del(&inv.netns)?;
    // IPAM releases the address while the kernel deletes the veth (an RCU wait that dominates DEL); an IPAM
    // plugin that cannot even start stops DEL before it changes anything.
    let addresses = ipam_configured(inv).then(|| ipam::start(inv, Command::Del)).transpose()?;
    let rtnl = Rtnl::new()?;
    let node = rtnl.connect()?;
    let links = p2p::teardown(&rtnl, &node, &n.host_ifname, &n.tag, pod.as_ref(), &s.if_name);
    let nat = Nft::open().and_then(|mut nft| snat::del(&mut nft, DEFAULT_TABLE, &n.tag));
    let addresses = addresses.map_or(Ok(()), |p| p.finish().map(|_| ()));
    links.and(nat).and(addresses)
}

/// What ADD configured, read back from the kernel: prevResult holds the interfaces but, on purpose,
/// not the link-local address. The pod's one IPv4 address and the gateway on the host veth stand in.
fn kernel_view(
    rtnl: &Rtnl,
    node: &netlink::Handle,
    pod: &Netns,
    prev: &CniResult,
    s: &Settings,
    n: &Names,
) -> Result<(CniResult, Ipv4Addr)> {
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
    let pod_handle = rtnl.connect_in(pod)?;
    let (address, gateway) = rtnl.block_on(async {
        let v4 = |addrs: Vec<ipnetwork::IpNetwork>| addrs.into_iter().filter(|a| a.is_ipv4()).collect::<Vec<_>>();
        let link = netlink::link_by_name(&pod_handle, &s.if_name)
            .await?
            .ok_or_else(|| fail(format!("interface {} is missing from {}", s.if_name, pod.path())))?;
        let [address] = v4(netlink::addresses(&pod_handle, link.index).await?)[..] else {
            return Err(fail(format!("{} does not hold exactly one IPv4 address", s.if_name)));
        };
        let host_link = netlink::link_by_name(node, &n.host_ifname)
            .await?
            .ok_or_else(|| fail(format!("host interface {} is missing", n.host_ifname)))?;
        let gateway = v4(netlink::addresses(node, host_link.index).await?)
            .into_iter()
            .map(|a| a.ip())
            .find(|gw| address.contains(*gw))
            .ok_or_else(|| fail(format!("{} holds no gateway in {address}", n.host_ifname)))?;
        Ok::<_, CniError>((address, gateway))
    })?;
    let IpAddr::V4(pod_ip) = address.ip() else {
        return Err(fail(format!("{address} is not IPv4")));
    };
    let view = CniResult {
        interfaces: vec![host, cont],
        ips: vec![IpConfig { interface: Some(1), address, gateway: Some(gateway) }],
        routes: Vec::<Route>::new(),
        ..Default::default()
    };
    Ok((view, pod_ip))
}

fn main() {
    common::run::<EgressV4>()
}
