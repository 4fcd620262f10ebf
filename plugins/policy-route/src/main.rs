//! policy-route: chained after a main plugin, routes the pod's traffic through a secondary uplink's table
//! (`to <pod> lookup main`, `from <pod> lookup <table>`), keeps that table's routes, and with `primary` sends
//! the replies of connections that came in on the primary uplink (NodePorts) back out of it (seeds 000, 004).
#![cfg_attr(not(test), no_main)]

mod config;

use common::policy_route::{Attachment, Node, Store};
use common::{CniError, CniResult, Invocation, Plugin, Result};
use config::{PolicyRouteConf, Settings};

struct PolicyRoute;

fn settings(inv: &Invocation) -> Result<Settings> {
    inv.config.plugin::<PolicyRouteConf>()?.settings()
}

/// The attachment as this ADD or CHECK sees it: prevResult's addresses under the config's settings.
fn attachment(inv: &Invocation, s: &Settings, prev: &CniResult) -> Attachment {
    Attachment {
        network: inv.config.net.name.clone(),
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        addresses: prev.ips.iter().map(|ip| ip.address.ip()).collect(),
        table: s.table,
        to_pod_priority: s.to_pod_priority,
        from_pod_priority: s.from_pod_priority,
        uplink: s.uplink.clone(),
        primary: s.primary.clone(),
    }
}

impl Plugin for PolicyRoute {
    const NAME: &'static str = "policy-route";
    const ABOUT: &'static str =
        "chained: routes pod traffic through a secondary uplink's table, with the NodePort return path (AWS VPC CNI)";

    fn add(inv: &Invocation) -> Result<CniResult> {
        let s = settings(inv)?;
        let prev = inv.config.require_prev_result()?;
        if prev.ips.is_empty() {
            return Err(CniError::InvalidConfig("prevResult has no addresses to route".into()));
        }
        let store = Store::open(&s.data_dir)?;
        Node::open()?.add(&store, &attachment(inv, &s, &prev))?;
        Ok(prev)
    }

    /// The record finds what ADD made: no prevResult, netns or config but dataDir needed.
    fn del(inv: &Invocation) -> Result<()> {
        let data_dir = config::data_dir_for_del(inv.config.plugin_part());
        let Some(store) = Store::open_existing(&data_dir)? else { return Ok(()) };
        Node::open()?.del(&store, &inv.config.net.name, &inv.container_id, &inv.ifname)
    }

    fn check(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let prev = inv.config.require_prev_result()?;
        let store = Store::open(&s.data_dir)?;
        let Some(recorded) = store.get(&inv.config.net.name, &inv.container_id, &inv.ifname)? else {
            return Err(CniError::CheckFailed("policy-route has no record of this attachment".into()));
        };
        if recorded != attachment(inv, &s, &prev) {
            return Err(CniError::CheckFailed(format!(
                "the attachment was added with other addresses or settings: {recorded:?}"
            )));
        }
        Node::open()?.check(&recorded)
    }

    fn status(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        common::files::probe_writable(&Store::location(&s.data_dir)).map_err(CniError::NotAvailable)?;
        let usable = Node::open().and_then(|node| node.status());
        usable.map_err(|e| CniError::NotAvailable(format!("policy rules and nftables cannot be changed here: {e}")))
    }

    /// Only this network's records: another network's attachments keep the node-wide pieces they share.
    fn gc(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        let valid: Vec<(String, String)> =
            inv.config.valid_attachments().into_iter().map(|a| (a.container_id, a.ifname)).collect();
        let Some(store) = Store::open_existing(&s.data_dir)? else { return Ok(()) };
        let removed =
            Node::open()?.gc(&store, &inv.config.net.name, |c, i| valid.iter().any(|(vc, vi)| vc == c && vi == i))?;
        log::info!("GC removed the rules of {removed} attachments");
        Ok(())
    }
}

common::plugin_main!(PolicyRoute);
