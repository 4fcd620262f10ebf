//! policy-route (seeds 000 and 004): pods whose addresses belong to a secondary uplink. Per pod, `to <pod>
//! lookup main` and `from <pod> lookup <table>`; per uplink, the table's gateway route and default route via it;
//! with a primary uplink, loose reverse-path filtering on it, `fwmark <mark>/<mark> lookup main`, and a connmark
//! that sends the replies of connections that came in on the primary (NodePorts) back out of it.
//!
//! Each attachment is recorded under dataDir before the kernel is changed, so DEL and GC find what ADD made
//! without prevResult or netns, also after a kill. Everything happens under one lock per dataDir, and node-wide
//! pieces are kept while any record uses them: the records are the reference count.

use crate::error::{CniError, Result};
use crate::files::{create_dir, io, lock_dir, refuse_symlink, write_atomic, TMP_SUFFIX};
use crate::names::attachment_hash;
use crate::netlink::{self, Handle, RouteSpec, Rtnl, RuleSpec};
use crate::nft::{Batch, Nft, Rule, PRIORITY_MANGLE};
use crate::sysctl;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/cni-chain";
/// The `protocol` of our rules and routes: one with another value is someone else's and is never removed.
pub const PROTOCOL: u8 = 77;
/// Our nftables table, of policy-route's alone (the marking of connections that came in on a primary uplink).
pub const NFT_TABLE: &str = "cni_chain_policy_route";
/// Seed 000's `fwmark <mark>/<mark> lookup main`, between the to-pod and the from-pod rules.
pub const PRIMARY_RULE_PRIORITY: u32 = 1024;
pub const DEFAULT_TO_POD_PRIORITY: u32 = 512;
pub const DEFAULT_FROM_POD_PRIORITY: u32 = 1536;
/// Reverse-path filtering "loose": a NodePort's packets arrive on the primary while the pod's source route
/// points at the secondary uplink.
pub const RP_FILTER_LOOSE: &str = "2";
const MAIN_TABLE: u32 = 254;
const STORE_DIR: &str = "policy-route";
const ATTACHMENTS_DIR: &str = "attachments";
const RP_FILTER_DIR: &str = "rp_filter";

/// The uplink whose table pod traffic uses, and the gateways ADD puts in that table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uplink {
    pub interface: String,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
}

/// Seed 000's NodePort support: the primary uplink and the mark bit its connections carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Primary {
    pub interface: String,
    pub mark: u32,
}

/// One attachment: what its ADD makes, recorded before it makes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub addresses: Vec<IpAddr>,
    pub table: u32,
    #[serde(rename = "toPodPriority")]
    pub to_pod_priority: u32,
    #[serde(rename = "fromPodPriority")]
    pub from_pod_priority: u32,
    pub uplink: Option<Uplink>,
    pub primary: Option<Primary>,
}

impl Attachment {
    /// The pod's rules: to each address through main, from each address through the uplink's table.
    pub fn pod_rules(&self) -> Vec<RuleSpec> {
        self.addresses
            .iter()
            .flat_map(|ip| {
                [
                    RuleSpec::for_address(*ip, false, MAIN_TABLE, self.to_pod_priority, PROTOCOL),
                    RuleSpec::for_address(*ip, true, self.table, self.from_pod_priority, PROTOCOL),
                ]
            })
            .collect()
    }

    fn is_attachment(&self, other: &Attachment) -> bool {
        (&self.network, &self.container_id, &self.ifname) == (&other.network, &other.container_id, &other.ifname)
    }

    fn same_uplink_table(&self, other: &Attachment) -> bool {
        self.table == other.table && self.uplink == other.uplink
    }
}

impl Primary {
    /// `fwmark <mark>/<mark> lookup main`, one rule per family.
    pub fn rules(&self) -> [RuleSpec; 2] {
        [false, true].map(|ipv6| RuleSpec {
            src: None,
            dst: None,
            fwmark: Some((self.mark, self.mark)),
            ipv6,
            table: MAIN_TABLE,
            priority: PRIMARY_RULE_PRIORITY,
            protocol: Some(PROTOCOL),
        })
    }

    /// The chain marking this primary's connections (one per interface and mark).
    pub fn chain(&self) -> String {
        format!("primary_{}_{:x}", self.interface, self.mark)
    }

    /// The chain's rules and their comments: a connection that comes in on the primary to an address of the
    /// primary gets the bit in its connmark; packets of such a connection that come from anywhere else (the
    /// pod's replies) get it into their mark, so `fwmark` sends them out of the primary. No other bit changes.
    fn nft_rules(&self) -> [(Rule, String); 2] {
        let (iface, mark) = (&self.interface, self.mark);
        [
            (
                Rule::new().iifname(iface, true).to_local_address_of_iif().ct_mark_add_bits(mark),
                format!("cni-chain:policy-route: connections to {iface}'s addresses get {mark:#x} in their connmark"),
            ),
            (
                Rule::new().iifname(iface, false).ct_mark_has_bits(mark).meta_mark_add_bits(mark),
                format!("cni-chain:policy-route: their replies get {mark:#x} in their mark, to leave by {iface}"),
            ),
        ]
    }

    fn rp_filter_key(&self) -> String {
        format!("net/ipv4/conf/{}/rp_filter", self.interface)
    }
}

/// policy-route's records under dataDir, locked for as long as the value lives:
/// `policy-route/attachments/<network>/<hash>.json` per attachment and `policy-route/rp_filter/<interface>`
/// holding the value there was before the first attachment changed it.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// The store's directory under `data_dir`.
    pub fn location(data_dir: &Path) -> PathBuf {
        data_dir.join(STORE_DIR)
    }

    pub fn open(data_dir: &Path) -> Result<Store> {
        let dir = data_dir.join(STORE_DIR);
        refuse_symlink(data_dir, "dataDir")?;
        refuse_symlink(&dir, "policy-route's store")?;
        create_dir(&dir)?;
        let lock = lock_dir(&dir)?;
        Ok(Store { dir, _lock: lock })
    }

    /// As `open`, but `None` when nothing was ever recorded (DEL and GC create nothing).
    pub fn open_existing(data_dir: &Path) -> Result<Option<Store>> {
        let dir = data_dir.join(STORE_DIR);
        refuse_symlink(data_dir, "dataDir")?;
        refuse_symlink(&dir, "policy-route's store")?;
        if !dir.is_dir() {
            return Ok(None);
        }
        Store::open(data_dir).map(Some)
    }

    fn network_dir(&self, network: &str) -> PathBuf {
        self.dir.join(ATTACHMENTS_DIR).join(network)
    }

    fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.network_dir(network).join(format!("{:016x}.json", attachment_hash(container_id, ifname)))
    }

    pub fn get(&self, network: &str, container_id: &str, ifname: &str) -> Result<Option<Attachment>> {
        let path = self.path(network, container_id, ifname);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let a: Attachment = serde_json::from_slice(&bytes)
                    .map_err(|e| CniError::Io(format!("reading {}: {e}", path.display())))?;
                Ok((a.container_id == container_id && a.ifname == ifname).then_some(a))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path, e)),
        }
    }

    pub fn put(&self, a: &Attachment) -> Result<()> {
        let dir = self.network_dir(&a.network);
        create_dir(&dir)?;
        let json = serde_json::to_string(a).map_err(|e| CniError::Internal(e.to_string()))?;
        write_atomic(&self.path(&a.network, &a.container_id, &a.ifname), &json)
    }

    /// Remove the attachment's record, and the temporary file a writer killed mid-write left of it.
    fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(network, container_id, ifname);
        let mut tmp = path.clone().into_os_string();
        tmp.push(TMP_SUFFIX);
        for file in [PathBuf::from(tmp), path] {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("removing", &file, e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Temporary files of a network's records: writers hold the lock, so these are left by killed ones.
    fn sweep_temporary(&self, network: &str) {
        for path in self.temporaries(network) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Temporary files a killed writer left among `network`'s records.
    pub fn temporaries(&self, network: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.network_dir(network)) else { return vec![] };
        entries.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(TMP_SUFFIX)).map(|e| e.path()).collect()
    }

    /// The attachments of one network; unreadable records are skipped.
    pub fn of_network(&self, network: &str) -> Result<Vec<Attachment>> {
        let dir = self.network_dir(network);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io("reading", &dir, e)),
        };
        Ok(entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect())
    }

    /// Every network's attachments.
    pub fn all(&self) -> Result<Vec<Attachment>> {
        let dir = self.dir.join(ATTACHMENTS_DIR);
        let networks = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io("reading", &dir, e)),
        };
        let mut out = Vec::new();
        for network in networks.flatten() {
            out.extend(self.of_network(&network.file_name().to_string_lossy())?);
        }
        Ok(out)
    }

    fn rp_filter_path(&self, interface: &str) -> PathBuf {
        self.dir.join(RP_FILTER_DIR).join(interface)
    }

    /// Keep the interface's rp_filter value unless one was kept already (the value before the first change).
    fn keep_rp_filter(&self, interface: &str, value: &str) -> Result<()> {
        let path = self.rp_filter_path(interface);
        if path.exists() {
            return Ok(());
        }
        create_dir(&self.dir.join(RP_FILTER_DIR))?;
        write_atomic(&path, value)
    }

    fn kept_rp_filter(&self, interface: &str) -> Option<String> {
        std::fs::read_to_string(self.rp_filter_path(interface)).ok().map(|v| v.trim().to_string())
    }

    fn forget_rp_filter(&self, interface: &str) {
        let path = self.rp_filter_path(interface);
        let mut tmp = path.clone().into_os_string();
        tmp.push(TMP_SUFFIX);
        let _ = std::fs::remove_file(tmp);
        let _ = std::fs::remove_file(path);
    }
}

/// Something node-wide of ours that no record uses: left by a kill, or by records removed by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unowned {
    /// A rule with our protocol.
    Rule(RuleSpec),
    /// A chain marking a primary uplink's connections.
    Chain(String),
    /// A route in an uplink's table.
    Route(RouteSpec),
}

/// The node's netlink and nftables, as policy-route changes them.
pub struct Node {
    rtnl: Rtnl,
    handle: Handle,
}

impl Node {
    pub fn open() -> Result<Node> {
        let rtnl = Rtnl::new()?;
        let handle = rtnl.connect()?;
        Ok(Node { rtnl, handle })
    }

    /// ADD: record the attachment, then make its rules and whatever node-wide piece is missing. A failure
    /// takes back what this ADD made and nothing another attachment uses.
    pub fn add(&self, store: &Store, a: &Attachment) -> Result<()> {
        if store.get(&a.network, &a.container_id, &a.ifname)?.is_some() {
            return Err(CniError::AttachmentExists(format!(
                "policy-route has rules for {}/{} already: DEL it first",
                a.container_id, a.ifname
            )));
        }
        store.put(a)?;
        let made = self.make(store, a);
        if let Err(e) = made {
            if let Err(undo) = self.release(store, a) {
                log::warn!("undoing the failed ADD: {undo}");
            }
            return Err(e);
        }
        Ok(())
    }

    fn make(&self, store: &Store, a: &Attachment) -> Result<()> {
        if let Some(p) = &a.primary {
            self.ensure_primary(store, p)?;
        }
        if let Some(u) = &a.uplink {
            self.ensure_table_routes(a.table, u)?;
        }
        for rule in a.pod_rules() {
            if !self.rtnl.block_on(netlink::add_rule_if_absent(&self.handle, &rule))? {
                log::debug!("a rule like {rule:?} exists: it is used as it is");
            }
        }
        Ok(())
    }

    fn ensure_primary(&self, store: &Store, p: &Primary) -> Result<()> {
        let key = p.rp_filter_key();
        let value = sysctl::get(&key)?;
        store.keep_rp_filter(&p.interface, &value)?;
        if value != RP_FILTER_LOOSE {
            sysctl::set(&key, RP_FILTER_LOOSE)?;
        }
        for rule in p.rules() {
            self.rtnl.block_on(netlink::add_rule_if_absent(&self.handle, &rule))?;
        }
        let mut nft = Nft::open()?;
        let chain = p.chain();
        let expected: Vec<String> = p.nft_rules().into_iter().map(|(_, c)| c).collect();
        let present: Vec<String> = nft.rules(NFT_TABLE, &chain)?.into_iter().filter_map(|r| r.comment).collect();
        if present != expected {
            let mut batch = Batch::new();
            batch.add_table(NFT_TABLE).add_filter_prerouting_chain(NFT_TABLE, &chain, PRIORITY_MANGLE);
            batch.flush_chain(NFT_TABLE, &chain);
            for (rule, comment) in p.nft_rules() {
                batch.add_rule(NFT_TABLE, &chain, rule, &comment);
            }
            nft.apply(&batch, "marking the primary uplink's connections")?;
        }
        Ok(())
    }

    /// The uplink's routes in its table, unless the table has routes with their keys already (the node agent's
    /// own default route, say), which are used as they are.
    fn table_routes(&self, table: u32, u: &Uplink) -> Result<Vec<RouteSpec>> {
        let Some(link) = self.rtnl.block_on(netlink::link_by_name(&self.handle, &u.interface))? else {
            return Err(CniError::InvalidConfig(format!("uplink {:?} does not exist", u.interface)));
        };
        let gateways = [u.gateway.map(IpAddr::V4), u.gateway6.map(IpAddr::V6)];
        Ok(gateways
            .into_iter()
            .flatten()
            .flat_map(|gw| {
                let any =
                    if gw.is_ipv6() { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
                [
                    RouteSpec {
                        oif: Some(link.index),
                        link_scope: true,
                        table: Some(table),
                        ..RouteSpec::new(IpNetwork::from(gw))
                    },
                    RouteSpec {
                        oif: Some(link.index),
                        gateway: Some(gw),
                        table: Some(table),
                        ..RouteSpec::new(IpNetwork::new(any, 0).expect("a zero prefix is valid"))
                    },
                ]
            })
            .collect())
    }

    fn ensure_table_routes(&self, table: u32, u: &Uplink) -> Result<()> {
        for route in self.table_routes(table, u)? {
            self.rtnl.block_on(netlink::add_own_route(&self.handle, &route, PROTOCOL))?;
        }
        Ok(())
    }

    /// DEL: the attachment's rules and record, then the node-wide pieces no other record uses. Without a
    /// record there is nothing of ours.
    pub fn del(&self, store: &Store, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        match store.get(network, container_id, ifname)? {
            Some(a) => self.release(store, &a),
            None => store.remove(network, container_id, ifname),
        }
    }

    /// GC: every attachment of `network` that is not `valid`.
    pub fn gc(&self, store: &Store, network: &str, valid: impl Fn(&str, &str) -> bool) -> Result<usize> {
        let stale: Vec<Attachment> =
            store.of_network(network)?.into_iter().filter(|a| !valid(&a.container_id, &a.ifname)).collect();
        for a in &stale {
            self.release(store, a)?;
        }
        store.sweep_temporary(network);
        Ok(stale.len())
    }

    fn release(&self, store: &Store, a: &Attachment) -> Result<()> {
        let mut first_error = None;
        for rule in a.pod_rules() {
            if let Err(e) = self.rtnl.block_on(netlink::delete_rule(&self.handle, &rule)) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        // The record goes last: a kill before leaves it for the next DEL or GC, which redo what is left.
        let others: Vec<Attachment> = store.all()?.into_iter().filter(|o| !o.is_attachment(a)).collect();
        if let Some(p) = &a.primary {
            self.release_primary(store, p, &others)?;
        }
        if let Some(u) = &a.uplink {
            if !others.iter().any(|o| o.same_uplink_table(a)) {
                self.remove_table_routes(a.table, u)?;
            }
        }
        store.remove(&a.network, &a.container_id, &a.ifname)
    }

    fn release_primary(&self, store: &Store, p: &Primary, others: &[Attachment]) -> Result<()> {
        let primaries: Vec<&Primary> = others.iter().filter_map(|o| o.primary.as_ref()).collect();
        if !primaries.iter().any(|o| o.mark == p.mark) {
            for rule in p.rules() {
                self.rtnl.block_on(netlink::delete_rule(&self.handle, &rule))?;
            }
        }
        if !primaries.contains(&p) {
            let mut nft = Nft::open()?;
            let mut batch = Batch::new();
            if primaries.is_empty() {
                if nft.table_exists(NFT_TABLE)? {
                    batch.delete_table(NFT_TABLE);
                }
            } else if nft.chains(NFT_TABLE)?.contains(&p.chain()) {
                batch.flush_chain(NFT_TABLE, &p.chain()).delete_chain(NFT_TABLE, &p.chain());
            }
            nft.apply(&batch, "removing the primary uplink's marking")?;
        }
        if !primaries.iter().any(|o| o.interface == p.interface) {
            if let Some(before) = store.kept_rp_filter(&p.interface) {
                // The interface may be gone, and its sysctl with it.
                if sysctl::get(&p.rp_filter_key()).is_ok_and(|now| now != before) {
                    sysctl::set(&p.rp_filter_key(), &before)?;
                }
            }
            store.forget_rp_filter(&p.interface);
        }
        Ok(())
    }

    fn remove_table_routes(&self, table: u32, u: &Uplink) -> Result<()> {
        // A gone uplink took its routes with it.
        let routes = match self.table_routes(table, u) {
            Ok(routes) => routes,
            Err(CniError::InvalidConfig(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        // The default route before the gateway's: the kernel refuses neither order, but this one never leaves
        // a default route without its gateway.
        for route in routes.iter().rev() {
            self.rtnl.block_on(netlink::delete_own_route(&self.handle, route, PROTOCOL))?;
        }
        Ok(())
    }

    /// Our rules, uplink table routes and marking chains that no record in `stores` uses, whatever its network. Holding the stores
    /// keeps ADD (record, then rules) and DEL (rules, then record) out while this looks.
    pub fn unowned(&self, stores: &[Store]) -> Result<Vec<Unowned>> {
        let mut records = Vec::new();
        for store in stores {
            records.extend(store.all()?);
        }
        let primaries: Vec<&Primary> = records.iter().filter_map(|a| a.primary.as_ref()).collect();
        let mut used: Vec<RuleSpec> = records.iter().flat_map(Attachment::pod_rules).collect();
        used.extend(primaries.iter().flat_map(|p| p.rules()));
        let mut out = Vec::new();
        for v6 in [false, true] {
            let rules = self.rtnl.block_on(netlink::rules(&self.handle, v6))?;
            out.extend(
                rules.into_iter().filter(|r| r.protocol == Some(PROTOCOL) && !used.contains(r)).map(Unowned::Rule),
            );
            let routes = self.rtnl.block_on(netlink::own_routes(&self.handle, v6, PROTOCOL))?;
            let used_table = |t: Option<u32>| records.iter().any(|a| a.uplink.is_some() && Some(a.table) == t);
            out.extend(routes.into_iter().filter(|r| !used_table(r.table)).map(Unowned::Route));
        }
        let chains = Nft::open()?.chains(NFT_TABLE)?;
        out.extend(chains.into_iter().filter(|c| !primaries.iter().any(|p| p.chain() == *c)).map(Unowned::Chain));
        Ok(out)
    }

    /// Remove `what` if no record in `stores` uses it still, and the table once empty.
    pub fn remove_unowned(&self, stores: &[Store], what: &Unowned) -> Result<()> {
        if !self.unowned(stores)?.contains(what) {
            return Ok(());
        }
        match what {
            Unowned::Rule(rule) => self.rtnl.block_on(netlink::delete_rule(&self.handle, rule)).map(|_| ()),
            Unowned::Route(route) => {
                self.rtnl.block_on(netlink::delete_own_route(&self.handle, route, PROTOCOL)).map(|_| ())
            }
            Unowned::Chain(chain) => {
                let mut nft = Nft::open()?;
                let mut batch = Batch::new();
                batch.flush_chain(NFT_TABLE, chain).delete_chain(NFT_TABLE, chain);
                nft.apply(&batch, "removing a primary uplink's marking no record uses")?;
                crate::masq::delete_table_if_empty(&mut nft, NFT_TABLE);
                Ok(())
            }
        }
    }

    /// CHECK: the attachment's rules, and the node-wide pieces it relies on.
    pub fn check(&self, a: &Attachment) -> Result<()> {
        let failed = |what: String| Err(CniError::CheckFailed(what));
        let rules = [
            self.rtnl.block_on(netlink::rules(&self.handle, false))?,
            self.rtnl.block_on(netlink::rules(&self.handle, true))?,
        ]
        .concat();
        // A rule someone else made with the same selector serves as well as ours (ADD then made none).
        let unowned = |r: &RuleSpec| RuleSpec { protocol: None, ..r.clone() };
        let present = |want: &RuleSpec| rules.iter().any(|r| unowned(r) == unowned(want));
        for want in a.pod_rules() {
            if !present(&want) {
                return failed(format!("rule {want:?} is missing"));
            }
        }
        if let Some(p) = &a.primary {
            for want in p.rules() {
                if !present(&want) {
                    return failed(format!("rule {want:?} is missing"));
                }
            }
            let value = sysctl::get(&p.rp_filter_key())?;
            if value != RP_FILTER_LOOSE {
                return failed(format!("{} is {value}, not {RP_FILTER_LOOSE} (loose)", p.rp_filter_key()));
            }
            let expected: Vec<String> = p.nft_rules().into_iter().map(|(_, c)| c).collect();
            let present: Vec<String> =
                Nft::open()?.rules(NFT_TABLE, &p.chain())?.into_iter().filter_map(|r| r.comment).collect();
            if present != expected {
                return failed(format!("nftables chain {} of table {NFT_TABLE} is not ours as made", p.chain()));
            }
        }
        if let Some(u) = &a.uplink {
            let wanted = self.table_routes(a.table, u)?;
            for v6 in [false, true] {
                let routes = self.rtnl.block_on(netlink::routes(&self.handle, v6))?;
                for want in wanted.iter().filter(|w| w.dst.is_ipv6() == v6 && w.dst.prefix() == 0) {
                    if !routes.iter().any(|r| r.table == want.table && r.dst == want.dst) {
                        return failed(format!("table {} has no default route via {:?}", a.table, want.gateway));
                    }
                }
            }
        }
        Ok(())
    }

    /// STATUS: rules can be read here and nftables used (both need CAP_NET_ADMIN).
    pub fn status(&self) -> Result<()> {
        self.rtnl.block_on(netlink::rules(&self.handle, false))?;
        Nft::open()?.table_exists(NFT_TABLE)?;
        Ok(())
    }
}
