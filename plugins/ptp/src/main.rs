//! ptp: a point-to-point veth per pod, addresses from the IPAM plugin, routed through the node.

mod config;

use common::linkgroup::GroupRef;
use common::names::{self, Owner};
use common::netlink::Rtnl;
use common::netns::Netns;
use common::{ipam, p2p, sysctl, CniError, CniResult, Command, Invocation, Plugin, Result};
use config::{PtpConf, Settings};
use std::collections::HashSet;

struct Ptp;

fn settings(inv: &Invocation) -> Result<Settings> {
    inv.config.plugin::<PtpConf>()?.settings()
}

fn owner(inv: &Invocation) -> Owner<'_> {
    Owner { plugin: "ptp", network: &inv.config.net.name }
}

impl Plugin for Ptp {
    fn add(inv: &Invocation) -> Result<CniResult> {
        let s = settings(inv)?;
        let group = s.group.as_ref().map(GroupRef::resolve).transpose()?;
        let host_ifname = names::host_ifname(&s.veth_prefix, &inv.container_id, &inv.ifname)?;
        let alias = owner(inv).alias(&inv.container_id, &inv.ifname)?;
        let pod = Netns::open(&inv.netns)?;
        let rtnl = Rtnl::new()?;
        let node = rtnl.connect()?;
        let mut result = ipam::exec(inv, Command::Add)?.unwrap_or_default();
        let wired = (|| {
            if result.ips.is_empty() {
                return Err(CniError::InvalidConfig("IPAM returned no addresses".into()));
            }
            let v4 = result.ips.iter().any(|ip| ip.address.is_ipv4());
            let v6 = result.ips.iter().any(|ip| ip.address.is_ipv6());
            sysctl::enable_forwarding(v4, v6)?;
            let att = p2p::P2pAttachment {
                host_ifname: &host_ifname,
                container_ifname: &inv.ifname,
                alias: &alias,
                mtu: s.mtu,
                host_group: group,
            };
            p2p::setup(&rtnl, &node, &pod, &att, &result.ips, &result.routes)
        })();
        let (host_if, cont_if) = match wired {
            Ok(ifs) => ifs,
            Err(e) => {
                ipam::rollback(inv);
                return Err(e);
            }
        };
        result.interfaces = vec![host_if, cont_if];
        for ip in &mut result.ips {
            ip.interface = Some(1);
        }
        if let Some(dns) = s.dns {
            result.dns = dns;
        }
        Ok(result)
    }

    fn del(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let host_ifname = names::host_ifname(&s.veth_prefix, &inv.container_id, &inv.ifname)?;
        let alias = owner(inv).alias(&inv.container_id, &inv.ifname)?;
        // A missing or unusable netns is normal for DEL: the host end is found by name.
        let pod = match inv.netns.as_str() {
            "" => None,
            path => Netns::open(path).map_err(|e| log::info!("DEL without the pod netns: {e}")).ok(),
        };
        let rtnl = Rtnl::new()?;
        let node = rtnl.connect()?;
        let links = p2p::teardown(&rtnl, &node, &host_ifname, &alias, pod.as_ref(), &inv.ifname);
        let addresses = ipam::exec(inv, Command::Del).map(|_| ());
        links.and(addresses)
    }

    fn check(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let group = s.group.as_ref().map(GroupRef::resolve).transpose()?;
        let prev = inv.config.require_prev_result()?;
        ipam::exec(inv, Command::Check)?;
        let pod = Netns::open(&inv.netns)?;
        let rtnl = Rtnl::new()?;
        let node = rtnl.connect()?;
        p2p::check(&rtnl, &node, &pod, &prev, &inv.ifname, group)
    }

    fn status(inv: &Invocation) -> Result<()> {
        settings(inv)?;
        ipam::exec(inv, Command::Status).map(|_| ())
    }

    fn gc(inv: &Invocation) -> Result<()> {
        settings(inv)?;
        let addresses = ipam::exec(inv, Command::Gc).map(|_| ());
        let valid: HashSet<(String, String)> =
            inv.config.valid_attachments().into_iter().map(|a| (a.container_id, a.ifname)).collect();
        let rtnl = Rtnl::new()?;
        let node = rtnl.connect()?;
        let links = p2p::gc(&rtnl, &node, &owner(inv), &valid).map(|_| ());
        links.and(addresses)
    }
}

fn main() {
    common::run::<Ptp>()
}
