//! A point-to-point veth between the node and a pod, routed as seed 001 describes:
//! in the pod, each address without its connected route, the gateway /32 (/128) scope link, the subnet
//! and IPAM routes via the gateway; on the node, the gateway on the host veth and a host route to the pod.
//! Shared by `ptp`, `egress-v4` and `egress-v6`.

use crate::error::{CniError, Result};
use crate::names::Owner;
use crate::netlink::{self, Link, RouteSpec, Rtnl, VethSpec};
use crate::netns::Netns;
use crate::sysctl;
use crate::types::{network_of, CniResult, Interface, IpConfig, Route};
use ipnetwork::IpNetwork;
use rtnetlink::Handle;
use std::collections::HashSet;
use std::net::IpAddr;

/// What one attachment's veth looks like.
pub struct P2pAttachment<'a> {
    pub host_ifname: &'a str,
    pub container_ifname: &'a str,
    pub alias: &'a str,
    pub mtu: Option<u32>,
    pub host_group: Option<u32>,
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn gateway_of(ip: &IpConfig) -> Result<IpAddr> {
    ip.gateway.ok_or_else(|| {
        CniError::InvalidConfig(format!(
            "IPAM gave {} no gateway; a point-to-point link routes through one",
            ip.address
        ))
    })
}

/// The pod-side routes for `ips` plus IPAM's `routes`, in the order they must be added.
pub fn container_routes(oif: u32, ips: &[IpConfig], routes: &[Route]) -> Result<Vec<RouteSpec>> {
    let mut out: Vec<RouteSpec> = Vec::new();
    for ip in ips {
        let gw = gateway_of(ip)?;
        let src = Some(ip.address.ip());
        let gw_host = IpNetwork::new(gw, host_prefix(gw)).map_err(|e| CniError::InvalidConfig(e.to_string()))?;
        out.push(RouteSpec { oif: Some(oif), src, link_scope: true, ..RouteSpec::new(gw_host) });
        let subnet = network_of(ip.address);
        if subnet.prefix() < host_prefix(gw) {
            out.push(RouteSpec { oif: Some(oif), src, gateway: Some(gw), ..RouteSpec::new(subnet) });
        }
    }
    for r in routes {
        let family_gw = ips.iter().find(|ip| ip.address.is_ipv4() == r.dst.is_ipv4()).and_then(|ip| ip.gateway);
        let Some(gw) = r.gw.or(family_gw) else {
            return Err(CniError::InvalidConfig(format!("route {} has no gateway of its family", r.dst)));
        };
        let spec = RouteSpec {
            oif: Some(oif),
            gateway: Some(gw),
            table: r.table,
            metric: r.priority,
            ..RouteSpec::new(network_of(r.dst))
        };
        // IPAM may repeat the subnet route we already add: once is enough.
        if !out.iter().any(|o| o.dst == spec.dst && o.table == spec.table) {
            out.push(spec);
        }
    }
    Ok(out)
}

/// Refuse an ADD for an attachment whose host veth is there, before IPAM runs: the IPAM plugin would hand
/// back the live pod's address, and rolling back the failed ADD would then release it.
pub fn refuse_live(rtnl: &Rtnl, node: &Handle, host_ifname: &str, container_id: &str, ifname: &str) -> Result<()> {
    match rtnl.block_on(netlink::link_by_name(node, host_ifname))? {
        None => Ok(()),
        Some(link) => Err(CniError::AttachmentExists(format!(
            "{host_ifname} ({}) for container {container_id} interface {ifname} is already on the node: DEL it first",
            link.alias.as_deref().unwrap_or("no alias")
        ))),
    }
}

/// Create and configure the veth pair; on failure, remove it again and return the first error.
/// Returns the host and container interfaces for the result.
pub fn setup(
    rtnl: &Rtnl,
    node: &Handle,
    pod: &Netns,
    att: &P2pAttachment,
    ips: &[IpConfig],
    routes: &[Route],
) -> Result<(Interface, Interface)> {
    rtnl.block_on(async {
        let spec = VethSpec {
            host_name: att.host_ifname,
            peer_name: att.container_ifname,
            peer_ns: pod,
            mtu: att.mtu,
            host_group: att.host_group,
        };
        netlink::create_veth(node, &spec).await?;
        Ok::<_, CniError>(())
    })?;
    let configured = configure(rtnl, node, pod, att, ips, routes);
    if configured.is_err() {
        rtnl.block_on(async {
            if let Ok(Some(link)) = netlink::link_by_name(node, att.host_ifname).await {
                if let Err(e) = netlink::delete_link(node, link.index).await {
                    log::warn!("rolling back veth {}: {e}", att.host_ifname);
                }
            }
        });
    }
    configured
}

fn configure(
    rtnl: &Rtnl,
    node: &Handle,
    pod: &Netns,
    att: &P2pAttachment,
    ips: &[IpConfig],
    routes: &[Route],
) -> Result<(Interface, Interface)> {
    // Both ends are still down: IPv6 on and DAD off now, before their link-local addresses exist; or, for an
    // IPv4-only attachment, no IPv6 on the node's end at all (the pod's end keeps the kernel's default).
    if ips.iter().any(|ip| ip.address.is_ipv6()) {
        sysctl::enable_ipv6_without_dad(att.host_ifname)?;
        pod.run(|| sysctl::enable_ipv6_without_dad(att.container_ifname))??;
    } else {
        sysctl::disable_ipv6(att.host_ifname)?;
    }
    let pod_handle = rtnl.connect_in(pod)?;
    rtnl.block_on(async {
        let host = require_link(node, att.host_ifname).await?;
        netlink::set_link_attrs(node, host.index, None, Some(att.alias), true).await?;
        let cont = require_link(&pod_handle, att.container_ifname).await?;
        netlink::set_link_attrs(&pod_handle, cont.index, None, None, true).await?;
        for ip in ips {
            netlink::add_address(&pod_handle, cont.index, ip.address).await?;
        }
        for route in container_routes(cont.index, ips, routes)? {
            netlink::add_route(&pod_handle, &route).await?;
        }
        for ip in ips {
            let gw = gateway_of(ip)?;
            let gw_host = IpNetwork::new(gw, host_prefix(gw)).map_err(|e| CniError::InvalidConfig(e.to_string()))?;
            netlink::add_address(node, host.index, gw_host).await?;
            let pod_ip = ip.address.ip();
            let pod_host =
                IpNetwork::new(pod_ip, host_prefix(pod_ip)).map_err(|e| CniError::InvalidConfig(e.to_string()))?;
            netlink::add_route(
                node,
                &RouteSpec { oif: Some(host.index), link_scope: true, ..RouteSpec::new(pod_host) },
            )
            .await?;
        }
        let host_if = Interface { name: host.name.clone(), mac: host.mac_string(), ..Default::default() };
        let cont_if = Interface {
            name: cont.name.clone(),
            mac: cont.mac_string(),
            sandbox: Some(pod.path().to_string()),
            ..Default::default()
        };
        Ok((host_if, cont_if))
    })
}

async fn require_link(handle: &Handle, name: &str) -> Result<Link> {
    netlink::link_by_name(handle, name)
        .await?
        .ok_or_else(|| CniError::Netlink(format!("link {name} vanished right after it was created")))
}

/// Remove an attachment's veth. The host end is found by its deterministic name and only deleted if it
/// carries our tag (or none, when ADD died before tagging it); deleting it removes the pod end too.
/// Without it (a veth made by another plugin version), the pod end is deleted by name if the netns is there.
pub fn teardown(
    rtnl: &Rtnl,
    node: &Handle,
    host_ifname: &str,
    alias: &str,
    pod: Option<&Netns>,
    container_ifname: &str,
) -> Result<()> {
    let host = rtnl.block_on(netlink::link_by_name(node, host_ifname))?;
    if let Some(link) = host {
        match link.alias.as_deref() {
            Some(a) if a != alias => {
                log::warn!("not deleting {host_ifname}: it belongs to {a:?}, not {alias:?}");
            }
            _ => {
                rtnl.block_on(netlink::delete_link(node, link.index))?;
                return Ok(());
            }
        }
    }
    if let Some(pod) = pod {
        let pod_handle = rtnl.connect_in(pod)?;
        rtnl.block_on(async {
            if let Some(link) = netlink::link_by_name(&pod_handle, container_ifname).await? {
                if link.is_veth() {
                    netlink::delete_link(&pod_handle, link.index).await?;
                }
            }
            Ok::<_, CniError>(())
        })?;
    }
    Ok(())
}

/// Delete the host veth that carries `alias`, whatever its name.
pub fn teardown_by_alias(rtnl: &Rtnl, node: &Handle, alias: &str) -> Result<()> {
    rtnl.block_on(async {
        for link in netlink::links(node).await? {
            if link.alias.as_deref() == Some(alias) {
                netlink::delete_link(node, link.index).await?;
            }
        }
        Ok(())
    })
}

/// Delete every host veth tagged by `owner` whose attachment is not in `valid`.
pub fn gc(rtnl: &Rtnl, node: &Handle, owner: &Owner, valid: &HashSet<(String, String)>) -> Result<usize> {
    rtnl.block_on(async {
        let mut removed = 0;
        for link in netlink::links(node).await? {
            let Some(alias) = link.alias.as_deref() else {
                continue;
            };
            let Some((cid, ifname)) = owner.attachment(alias) else {
                continue;
            };
            if !valid.contains(&(cid.to_string(), ifname.to_string())) {
                log::info!("GC: removing {} of stale attachment {cid}/{ifname}", link.name);
                if netlink::delete_link(node, link.index).await? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    })
}

/// Verify the kernel still matches what ADD returned for this attachment.
pub fn check(
    rtnl: &Rtnl,
    node: &Handle,
    pod: &Netns,
    result: &CniResult,
    container_ifname: &str,
    host_group: Option<u32>,
) -> Result<()> {
    let fail = |m: String| Err(CniError::CheckFailed(m));
    let Some(cidx) = result.container_interface(container_ifname) else {
        return fail(format!("prevResult has no interface {container_ifname} in a sandbox"));
    };
    let ips: Vec<IpConfig> = result.ips.iter().filter(|ip| ip.interface == Some(cidx)).cloned().collect();
    let host_name =
        result.interfaces.iter().find(|i| i.sandbox.as_deref().unwrap_or("").is_empty()).map(|i| i.name.clone());
    let pod_handle = rtnl.connect_in(pod)?;
    rtnl.block_on(async {
        let Some(cont) = netlink::link_by_name(&pod_handle, container_ifname).await? else {
            return fail(format!("interface {container_ifname} is missing from {}", pod.path()));
        };
        let want_mac = &result.interfaces[cidx].mac;
        if !want_mac.is_empty() && !want_mac.eq_ignore_ascii_case(&cont.mac_string()) {
            return fail(format!("{container_ifname} has MAC {}, result says {want_mac}", cont.mac_string()));
        }
        let have = netlink::addresses(&pod_handle, cont.index).await?;
        for ip in &ips {
            if !have.contains(&ip.address) {
                return fail(format!("{container_ifname} lacks address {}", ip.address));
            }
        }
        let mut kernel_routes = netlink::routes(&pod_handle, false).await?;
        kernel_routes.extend(netlink::routes(&pod_handle, true).await?);
        for want in container_routes(cont.index, &ips, &result.routes)? {
            let found = kernel_routes.iter().any(|r| {
                r.dst == want.dst
                    && r.gateway == want.gateway
                    && r.oif == Some(cont.index)
                    && r.table == Some(want.table.unwrap_or(254))
            });
            if !found {
                return fail(format!("route to {} via {:?} is missing in the pod", want.dst, want.gateway));
            }
        }
        if let Some(host_name) = host_name {
            let Some(host) = netlink::link_by_name(node, &host_name).await? else {
                return fail(format!("host interface {host_name} is missing"));
            };
            if let Some(g) = host_group {
                if host.group != g {
                    return fail(format!("host interface {host_name} is in group {}, config says {g}", host.group));
                }
            }
            let host_addrs = netlink::addresses(node, host.index).await?;
            let mut node_routes = netlink::routes(node, false).await?;
            node_routes.extend(netlink::routes(node, true).await?);
            for ip in &ips {
                let gw = gateway_of(ip)?;
                if !host_addrs.iter().any(|a| a.ip() == gw && a.prefix() == host_prefix(gw)) {
                    return fail(format!("host interface {host_name} lacks gateway address {gw}"));
                }
                let pod_ip = ip.address.ip();
                if !node_routes
                    .iter()
                    .any(|r| r.dst.ip() == pod_ip && r.dst.prefix() == host_prefix(pod_ip) && r.oif == Some(host.index))
                {
                    return fail(format!("the node has no route to {pod_ip} through {host_name}"));
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::parse_cidr;

    fn ip(addr: &str, gw: &str) -> IpConfig {
        IpConfig { interface: Some(1), address: parse_cidr(addr).unwrap(), gateway: Some(gw.parse().unwrap()) }
    }

    #[test]
    fn routes_follow_seed_001() {
        let ips = [ip("10.1.0.5/24", "10.1.0.1"), ip("fd00::5/64", "fd00::1")];
        let routes =
            [Route::new(parse_cidr("0.0.0.0/0").unwrap(), None), Route::new(parse_cidr("10.1.0.0/24").unwrap(), None)];
        let r = container_routes(7, &ips, &routes).unwrap();
        let show: Vec<String> = r.iter().map(|r| format!("{} {:?} {}", r.dst, r.gateway, r.link_scope)).collect();
        assert_eq!(
            show,
            [
                "10.1.0.1/32 None true",
                "10.1.0.0/24 Some(10.1.0.1) false",
                "fd00::1/128 None true",
                "fd00::/64 Some(fd00::1) false",
                "0.0.0.0/0 Some(10.1.0.1) false",
            ]
        );
        assert!(r.iter().all(|r| r.oif == Some(7)));
        assert_eq!(r[0].src, Some("10.1.0.5".parse().unwrap()));
    }

    #[test]
    fn a_host_prefix_needs_no_subnet_route() {
        let r = container_routes(3, &[ip("169.254.172.9/32", "169.254.172.1")], &[]).unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn missing_gateway_is_a_config_error() {
        let mut i = ip("10.1.0.5/24", "10.1.0.1");
        i.gateway = None;
        assert_eq!(container_routes(1, &[i], &[]).unwrap_err().code(), 7);
    }
}
