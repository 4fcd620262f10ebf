//! ptp: a point-to-point veth per pod, addresses from the IPAM plugin, routed through the node.
#![cfg_attr(not(test), no_main)]

mod config;

use common::linkgroup::GroupRef;
use common::masq::{PodMasq, PodMasqNames, DEFAULT_TABLE};
use common::names::{self, Owner};
use common::netlink::Rtnl;
use common::netns::Netns;
use common::nft::Nft;
use common::types::network_of;
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

/// `ipMasq`: the masquerade plugin's pod mode, in its default table but with maps and chains of ptp's own (a
/// masquerade plugin later in the chain may hold the same pod), excluding each address's own subnet.
const MASQ: PodMasq<'static> = PodMasq { table: DEFAULT_TABLE, random_fully: true, names: PodMasqNames::PTP };

fn masquerade(inv: &Invocation, result: &CniResult) -> Result<()> {
    let ips: Vec<_> = result.ips.iter().map(|ip| ip.address.ip()).collect();
    let subnets: Vec<_> = result.ips.iter().map(|ip| network_of(ip.address)).collect();
    MASQ.add(&mut Nft::open()?, &owner(inv).alias(&inv.container_id, &inv.ifname)?, &ips, &subnets)
}

impl Plugin for Ptp {
    const NAME: &'static str = "ptp";
    const ABOUT: &'static str = "a point-to-point veth per pod, addresses from an IPAM plugin, routed through the node (optional nftables masquerade)";

    fn add(inv: &Invocation) -> Result<CniResult> {
        let s = settings(inv)?;
        let group = s.group.as_ref().map(GroupRef::resolve).transpose()?;
        let host_ifname = names::host_ifname(&s.veth_prefix, &inv.container_id, &inv.ifname)?;
        let alias = owner(inv).alias(&inv.container_id, &inv.ifname)?;
        let pod = Netns::open(&inv.netns)?;
        let rtnl = Rtnl::new()?;
        let node = rtnl.connect()?;
        p2p::refuse_live(&rtnl, &node, &host_ifname, &inv.container_id, &inv.ifname)?;
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
            let ifs = p2p::setup(&rtnl, &node, &pod, &att, &result.ips, &result.routes)?;
            if s.ip_masq {
                if let Err(e) = masquerade(inv, &result) {
                    let _ = p2p::teardown(&rtnl, &node, &host_ifname, &alias, Some(&pod), &inv.ifname);
                    return Err(e);
                }
            }
            Ok(ifs)
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
        let d = config::del_settings(inv.config.plugin_part());
        let alias = owner(inv).alias(&inv.container_id, &inv.ifname)?;
        // A missing netns is normal for DEL: the host end is found by name.
        let pod = Netns::open_for_del(&inv.netns)?;
        // IPAM releases the addresses while the kernel deletes the veth (an RCU wait that dominates DEL). An
        // IPAM plugin that cannot even start (a bad ipam.type) stops DEL before it changes anything.
        let addresses = ipam::start(inv, Command::Del)?;
        let rtnl = Rtnl::new()?;
        let node = rtnl.connect()?;
        let links = match names::host_ifname(&d.veth_prefix, &inv.container_id, &inv.ifname) {
            Ok(host_ifname) => p2p::teardown(&rtnl, &node, &host_ifname, &alias, pod.as_ref(), &inv.ifname),
            // A vethPrefix no ADD could have used: the tag still finds a veth made under an older config.
            Err(_) => p2p::teardown_by_alias(&rtnl, &node, &alias),
        };
        // ipMasq may have been switched off since ADD: the tag finds ptp's elements either way.
        let masq = Nft::open().and_then(|mut nft| MASQ.del(&mut nft, &alias));
        let addresses = addresses.finish().map(|_| ());
        links.and(masq).and(addresses)
    }

    fn check(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let group = s.group.as_ref().map(GroupRef::resolve).transpose()?;
        let prev = inv.config.require_prev_result()?;
        ipam::exec(inv, Command::Check)?;
        let pod = Netns::open(&inv.netns)?;
        let rtnl = Rtnl::new()?;
        let node = rtnl.connect()?;
        p2p::check(&rtnl, &node, &pod, &prev, &inv.ifname, group)?;
        if s.ip_masq {
            let ips: Vec<_> = prev.ips.iter().map(|ip| ip.address.ip()).collect();
            MASQ.check(&mut Nft::open()?, &owner(inv).alias(&inv.container_id, &inv.ifname)?, &ips)?;
        }
        Ok(())
    }

    fn status(inv: &Invocation) -> Result<()> {
        if settings(inv)?.ip_masq {
            Nft::open()
                .and_then(|mut nft| nft.table_exists(DEFAULT_TABLE))
                .map_err(|e| CniError::NotAvailable(format!("ipMasq needs nftables, which is not usable here: {e}")))?;
        }
        ipam::exec(inv, Command::Status).map(|_| ())
    }

    fn gc(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let addresses = ipam::exec(inv, Command::Gc).map(|_| ());
        let valid: HashSet<(String, String)> =
            inv.config.valid_attachments().into_iter().map(|a| (a.container_id, a.ifname)).collect();
        let rtnl = Rtnl::new()?;
        let node = rtnl.connect()?;
        let links = p2p::gc(&rtnl, &node, &owner(inv), &valid).map(|_| ());
        let masq = if s.ip_masq {
            let owner = owner(inv);
            let is_valid =
                |tag: &str| owner.attachment(tag).is_some_and(|(c, i)| valid.contains(&(c.into(), i.into())));
            Nft::open().and_then(|mut nft| MASQ.gc(&mut nft, &owner.prefix(), is_valid)).map(|_| ())
        } else {
            Ok(())
        };
        links.and(masq).and(addresses)
    }
}

common::plugin_main!(Ptp);
