//! Everything we say to the kernel over rtnetlink, in one module.
//!
//! One tokio `current_thread` runtime per process drives every socket; a socket acts in the netns of
//! the thread that opened it, so `connect_in` enters the target netns only for the `socket()` call
//! and all later requests run from the plugin's own thread and netns. `RtnlNow` is the exception: a
//! blocking socket for the plugin that only looks up links and sets their group (linkgroup).

use crate::error::{CniError, Result};
use crate::netns::Netns;
use crate::nlraw;
use futures::StreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkExtentMask, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
pub use rtnetlink::Handle;
use rtnetlink::{LinkGetRequest, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;
/// Dumps interrupted by a concurrent change (NLM_F_DUMP_INTR) are retried this often.
const DUMP_TRIES: usize = 5;

/// The errno a netlink request failed with, if it was a kernel NACK.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENODEV | ENOENT | ESRCH | EADDRNOTAVAIL))
}

/// The capability every change to the node's links, addresses and routes needs.
pub const NODE_NET_ADMIN: &str = "CAP_NET_ADMIN over the node's network namespace";

fn nl_err(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> CniError {
    move |e| match e {
        rtnetlink::Error::NetlinkError(m) if m.code.is_some() => {
            let io = m.to_io();
            let hint = crate::error::privilege_hint(io.raw_os_error(), NODE_NET_ADMIN);
            CniError::netlink(what, format!("{io}{hint}"))
        }
        other => CniError::netlink(what, other),
    }
}

/// The runtime that drives our netlink sockets.
pub struct Rtnl {
    rt: tokio::runtime::Runtime,
}

impl Rtnl {
    pub fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| CniError::Internal(format!("tokio runtime: {e}")))?;
        Ok(Rtnl { rt })
    }

    /// A socket in the calling thread's current netns.
    pub fn connect(&self) -> Result<Handle> {
        let _ctx = self.rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| CniError::Netlink(format!("socket: {e}")))?;
        self.rt.spawn(conn);
        Ok(handle)
    }

    /// A socket that acts inside `ns` (entered only while the socket is created).
    pub fn connect_in(&self, ns: &Netns) -> Result<Handle> {
        let _guard = ns.enter()?;
        self.connect()
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

/// A blocking NETLINK_ROUTE socket, for a plugin that asks about a link or two and changes little (linkgroup):
/// the kernel answers a request before `send` returns, so one request and one read do it, without the runtime
/// and its socket task, which would cost more than the questions.
pub struct RtnlNow {
    socket: netlink_sys::Socket,
    seq: u32,
    answer: Vec<u8>,
}

/// Larger than any link's answer; only the pages the kernel writes into are touched.
const ANSWER_MAX: usize = 32 << 10;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
/// Asked with every single-link lookup (RtnlNow's and the async ones): we read no counters, and without it the
/// kernel folds every CPU's IPv4 and IPv6 counters into the answer (a quarter of a veth's), work that grows with CPUs.
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_GROUP: u16 = 27;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;
/// struct ifinfomsg, before a link message's attributes.
const IFINFOMSG_LEN: usize = 16;

/// A request about link `index` (0: the one an IFLA_IFNAME attribute names), any family.
fn link_request(kind: u16, flags: u16, seq: u32, index: u32, attributes: &[(u16, &[u8])]) -> Vec<u8> {
    let mut ifinfomsg = [0; IFINFOMSG_LEN];
    ifinfomsg[4..8].copy_from_slice(&index.to_ne_bytes());
    let request = nlraw::Request::new(kind, flags, seq, &ifinfomsg);
    attributes.iter().fold(request, |r, (kind, value)| r.attribute(*kind, value)).bytes()
}

impl RtnlNow {
    /// A socket in the calling thread's netns.
    pub fn new() -> Result<Self> {
        let socket = netlink_sys::Socket::new(netlink_sys::constants::NETLINK_ROUTE)
            .map_err(|e| CniError::Netlink(format!("socket: {e}")))?;
        Ok(RtnlNow { socket, seq: 0, answer: Vec::new() })
    }

    /// A socket that acts inside `ns` (entered only while the socket is created).
    pub fn new_in(ns: &Netns) -> Result<Self> {
        let _guard = ns.enter()?;
        Self::new()
    }

    /// One request about a link (`index` 0: the one named in `attributes`) and its one answer, read in place: the
    /// answer's (type, payload), or None for the kernel's ack.
    fn ask(&mut self, kind: u16, index: u32, attributes: &[(u16, &[u8])]) -> std::io::Result<Option<(u16, &[u8])>> {
        self.seq += 1;
        // A change is acknowledged; a question is answered.
        let ack = kind != RTM_GETLINK;
        let flags = NLM_F_REQUEST | if ack { NLM_F_ACK } else { 0 };
        self.socket.send(&link_request(kind, flags, self.seq, index, attributes), 0)?;
        // Already queued, or something is wrong: never wait.
        self.answer.clear();
        self.answer.reserve(ANSWER_MAX);
        let len = self.socket.recv(&mut self.answer, nix::libc::MSG_DONTWAIT | nix::libc::MSG_TRUNC)?;
        let unexpected = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        if len > self.answer.len() {
            return Err(unexpected(format!("an answer of {len} bytes, more than {ANSWER_MAX}")));
        }
        let Some(&(kind, _, seq, payload)) = nlraw::messages(&self.answer).first() else {
            return Err(unexpected("an answer that is not a netlink message".into()));
        };
        if seq != self.seq {
            return Err(unexpected(format!("an answer to request {seq}, not {}", self.seq)));
        }
        match (kind, nlraw::errno_of(payload)) {
            (nlraw::NLMSG_ERROR, 0) if ack => Ok(None),
            (nlraw::NLMSG_ERROR, 0) => Err(unexpected("an acknowledgement where an answer was due".into())),
            (nlraw::NLMSG_ERROR, code) => Err(std::io::Error::from_raw_os_error(-code)),
            _ => Ok(Some((kind, payload))),
        }
    }

    /// A link by index, or (index 0) by the name in `name`; counters are not asked for (`SKIP_STATS`).
    fn link(&mut self, index: u32, name: Option<&str>, what: impl FnOnce() -> String) -> Result<Option<Link>> {
        let name = name.map(|n| [n.as_bytes(), &[0]].concat());
        let skip_stats = RTEXT_FILTER_SKIP_STATS.to_ne_bytes();
        let mut attributes: Vec<(u16, &[u8])> = vec![(IFLA_EXT_MASK, &skip_stats)];
        attributes.extend(name.as_deref().map(|n| (IFLA_IFNAME, n)));
        match self.ask(RTM_GETLINK, index, &attributes) {
            Ok(Some((RTM_NEWLINK, payload))) => match Link::from_raw(payload) {
                Some(link) => Ok(Some(link)),
                None => Err(CniError::netlink(what(), "a link message that does not parse")),
            },
            Ok(other) => Err(CniError::netlink(what(), format!("an answer of type {:?}", other.map(|(kind, _)| kind)))),
            Err(e) if e.raw_os_error() == Some(ENODEV) => Ok(None),
            Err(e) => Err(CniError::netlink(what(), e)),
        }
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        self.link(0, Some(name), || format!("looking up link {name}"))
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        self.link(index, None, || format!("looking up link {index}"))
    }

    pub fn set_link_group(&mut self, index: u32, group: u32) -> Result<()> {
        log::debug!("setting link {index}: group {group}");
        match self.ask(RTM_SETLINK, index, &[(IFLA_GROUP, &group.to_ne_bytes())]) {
            Ok(None) => Ok(()),
            Ok(Some((kind, _))) => Err(CniError::netlink(
                format!("setting the group of link {index}"),
                format!("an answer of type {kind}"),
            )),
            Err(e) => {
                let hint = crate::error::privilege_hint(e.raw_os_error(), NODE_NET_ADMIN);
                Err(CniError::netlink(format!("setting the group of link {index}"), format!("{e}{hint}")))
            }
        }
    }
}

/// A network interface, as much of it as we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub group: u32,
    pub alias: Option<String>,
    pub kind: Option<String>,
    /// The bridge (or bond, VRF...) this link is a port of.
    pub master: Option<u32>,
    /// For a veth whose peer is in another netns: that netns' id as seen from here.
    pub peer_netns: Option<i32>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link { index: m.header.index, ..Default::default() };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = a.clone(),
                LinkAttribute::Mtu(v) => link.mtu = *v,
                LinkAttribute::Group(g) => link.group = *g,
                LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
                LinkAttribute::Controller(m) => link.master = Some(*m),
                LinkAttribute::LinkNetNsId(id) => link.peer_netns = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// A link from an RTM_NEWLINK message's payload (its ifinfomsg, then its attributes), read in place as
    /// `from_message` reads the parsed message; None when it is too short to be one.
    fn from_raw(payload: &[u8]) -> Option<Self> {
        let index = nlraw::u32_of(payload.get(4..8)?)?;
        let mut link = Link { index, ..Default::default() };
        for (kind, value) in nlraw::nlas(payload.get(IFINFOMSG_LEN..)?) {
            match kind {
                IFLA_ADDRESS => link.mac = value.to_vec(),
                IFLA_IFNAME => link.name = nlraw::string(value),
                IFLA_MTU => link.mtu = nlraw::u32_of(value)?,
                IFLA_MASTER => link.master = Some(nlraw::u32_of(value)?),
                IFLA_IFALIAS => link.alias = Some(nlraw::string(value)),
                IFLA_GROUP => link.group = nlraw::u32_of(value)?,
                IFLA_LINK_NETNSID => link.peer_netns = Some(nlraw::u32_of(value)? as i32),
                IFLA_LINKINFO => {
                    let kind = nlraw::nlas(value).find(|(k, _)| *k == IFLA_INFO_KIND);
                    link.kind = kind.map(|(_, v)| nlraw::string(v)).or(link.kind);
                }
                _ => {}
            }
        }
        Some(link)
    }

    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }

    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }

    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Run a dump, retrying when the kernel says it was interrupted by a concurrent change.
async fn dump(handle: &Handle, request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
    'retry: for _ in 0..DUMP_TRIES {
        let mut req = NetlinkMessage::from(request.clone());
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut responses = handle.clone().request(req).map_err(nl_err("dump request"))?;
        let mut out = Vec::new();
        let mut interrupted = false;
        while let Some(msg) = responses.next().await {
            interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(CniError::netlink("dump", e.to_io())),
                _ => {}
            }
        }
        if interrupted {
            continue 'retry;
        }
        return Ok(out);
    }
    Err(CniError::TryAgainLater("netlink dump kept being interrupted by concurrent changes".into()))
}

pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<Link>> {
    one_link(handle.link().get().match_name(name.to_string()), || format!("looking up link {name}")).await
}

pub async fn link_by_index(handle: &Handle, index: u32) -> Result<Option<Link>> {
    one_link(handle.link().get().match_index(index), || format!("looking up link {index}")).await
}

/// The one link `request` names, asked without counters as `RtnlNow` asks; None when there is no such link.
async fn one_link(request: LinkGetRequest, what: impl FnOnce() -> String) -> Result<Option<Link>> {
    let mut stream = request.set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats]).execute();
    match stream.next().await {
        Some(Ok(m)) => Ok(Some(Link::from_message(&m))),
        Some(Err(e)) if is_gone(&e) => Ok(None),
        Some(Err(e)) => Err(nl_err(what())(e)),
        None => Ok(None),
    }
}

pub async fn links(handle: &Handle) -> Result<Vec<Link>> {
    let msgs = dump(handle, RouteNetlinkMessage::GetLink(LinkMessage::default())).await?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
            _ => None,
        })
        .collect())
}

/// A veth pair: `host_name` stays in the socket's netns, `peer_name` is created straight inside `peer_ns`.
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub peer_name: &'a str,
    pub peer_ns: &'a Netns,
    pub mtu: Option<u32>,
    pub host_group: Option<u32>,
}

/// Create the pair, both ends down, with MTU on both and the host end's group, in one request.
/// Down, so per-interface sysctls can be set before addresses appear; and the peer could not be
/// brought up here anyway (the kernel configures it before the ends are joined: ENOTCONN).
pub async fn create_veth(handle: &Handle, spec: &VethSpec<'_>) -> Result<()> {
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(spec.peer_name.to_string())
        .setns_by_fd(spec.peer_ns.file().as_raw_fd());
    let mut host = LinkVeth::new(spec.host_name, spec.peer_name);
    if let Some(mtu) = spec.mtu {
        peer = peer.mtu(mtu);
        host = host.mtu(mtu);
    }
    if let Some(group) = spec.host_group {
        host = host.link_group(group);
    }
    let msg = host.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build()))).build();
    log::debug!(
        "creating veth {} <-> {} (mtu {:?}, group {:?})",
        spec.host_name,
        spec.peer_name,
        spec.mtu,
        spec.host_group
    );
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .map_err(nl_err(format!("creating veth {} <-> {}", spec.host_name, spec.peer_name)))
}

/// Set group, alias and/or up of an existing link, addressed by index (never by name alone: a
/// name-less RTM_NEWLINK carrying IFLA_GROUP would change every link of that group).
pub async fn set_link_attrs(
    handle: &Handle,
    index: u32,
    group: Option<u32>,
    alias: Option<&str>,
    up: bool,
) -> Result<()> {
    let mut b = LinkUnspec::new_with_index(index);
    if up {
        b = b.up();
    }
    if let Some(g) = group {
        b = b.link_group(g);
    }
    if let Some(a) = alias {
        b = b.alias(a.to_string());
    }
    log::debug!("setting link {index}: group {group:?}, alias {alias:?}, up {up}");
    handle.link().set(b.build()).execute().await.map_err(nl_err(format!("setting attributes of link {index}")))
}

/// Delete a link; `Ok(false)` if it was already gone.
pub async fn delete_link(handle: &Handle, index: u32) -> Result<bool> {
    log::debug!("deleting link {index}");
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_gone(&e) => Ok(false),
        Err(e) => Err(nl_err(format!("deleting link {index}"))(e)),
    }
}

/// Add an address without the kernel's prefix route (we route point to point ourselves) and, for
/// IPv6, without duplicate address detection so it is usable at once.
pub async fn add_address(handle: &Handle, index: u32, addr: IpNetwork) -> Result<()> {
    let mut req = handle.address().add(index, addr.ip(), addr.prefix());
    let msg = req.message_mut();
    let mut flags = AddressFlags::Noprefixroute;
    if addr.is_ipv6() {
        flags |= AddressFlags::Nodad;
        msg.header.flags |= AddressHeaderFlags::Nodad;
    }
    msg.attributes.push(AddressAttribute::Flags(flags));
    log::debug!("adding address {addr} to link {index}");
    req.execute().await.map_err(nl_err(format!("adding address {addr} to link {index}")))
}

/// The addresses on a link (all families).
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<IpNetwork>> {
    Ok(addresses_with_flags(handle, index).await?.into_iter().map(|(net, _)| net).collect())
}

/// The addresses on a link with their kernel flags (temporary, deprecated, tentative...).
async fn addresses_with_flags(handle: &Handle, index: u32) -> Result<Vec<(IpNetwork, AddressFlags)>> {
    let msgs = dump(handle, RouteNetlinkMessage::GetAddress(AddressMessage::default())).await?;
    let mut out = Vec::new();
    for m in msgs {
        if let RouteNetlinkMessage::NewAddress(a) = m {
            if a.header.index != index {
                continue;
            }
            let ip = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            // IFA_FLAGS holds all 32 bits; the header's 8 are what older kernels report.
            let flags = a
                .attributes
                .iter()
                .find_map(|attr| match attr {
                    AddressAttribute::Flags(f) => Some(*f),
                    _ => None,
                })
                .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(a.header.flags.bits())));
            if let Some(ip) = ip {
                if let Ok(n) = IpNetwork::new(ip, a.header.prefix_len) {
                    out.push((n, flags));
                }
            }
        }
    }
    Ok(out)
}

/// A route as we create and compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub src: Option<IpAddr>,
    /// `true` for scope link (a directly reachable destination), else universe.
    pub link_scope: bool,
    pub table: Option<u32>,
    pub metric: Option<u32>,
}

impl RouteSpec {
    pub fn new(dst: IpNetwork) -> Self {
        RouteSpec { dst, gateway: None, oif: None, src: None, link_scope: false, table: None, metric: None }
    }

    fn table_id(&self) -> u32 {
        self.table.unwrap_or(RouteHeader::RT_TABLE_MAIN as u32)
    }

    fn to_message(&self) -> Result<RouteMessage> {
        let dst = self.dst;
        let bad = move |e: &dyn std::fmt::Display| CniError::InvalidConfig(format!("route {dst}: {e}"));
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.ip(), self.dst.prefix())
            .map_err(|e| bad(&e))?;
        if let Some(gw) = self.gateway {
            b = b.gateway(gw).map_err(|e| bad(&e))?;
        }
        if let Some(src) = self.src {
            b = b.pref_source(src).map_err(|e| bad(&e))?;
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if self.link_scope {
            b = b.scope(RouteScope::Link);
        }
        if let Some(m) = self.metric {
            b = b.priority(m);
        }
        b = b.table_id(self.table_id()).protocol(RouteProtocol::Boot);
        Ok(b.build())
    }
}

/// Add `route` marked with `protocol` (whose routes are ours), unless a route with its key (table, destination,
/// metric) exists: `Ok(false)` then, and the route there, maybe someone else's, is used as it is.
pub async fn add_own_route(handle: &Handle, route: &RouteSpec, protocol: u8) -> Result<bool> {
    let mut msg = route.to_message()?;
    msg.header.protocol = RouteProtocol::from(protocol);
    log::debug!("adding route {} (protocol {protocol})", describe_route(route));
    match handle.route().add(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
        Err(e) => Err(nl_err(format!("adding route {}", describe_route(route)))(e)),
    }
}

/// Delete `route` only if it carries `protocol`: `Ok(false)` when there is no such route of ours.
pub async fn delete_own_route(handle: &Handle, route: &RouteSpec, protocol: u8) -> Result<bool> {
    let mut msg = route.to_message()?;
    msg.header.protocol = RouteProtocol::from(protocol);
    log::debug!("deleting route {} (protocol {protocol})", describe_route(route));
    match handle.route().del(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_gone(&e) => Ok(false),
        Err(e) => Err(nl_err(format!("deleting route {}", describe_route(route)))(e)),
    }
}

pub async fn add_route(handle: &Handle, route: &RouteSpec) -> Result<()> {
    let msg = route.to_message()?;
    log::debug!("adding route {}", describe_route(route));
    handle.route().add(msg).execute().await.map_err(nl_err(format!("adding route {}", describe_route(route))))
}

/// As `ip route` shows it, roughly: `0.0.0.0/0 via 192.0.2.2 dev #3 table 101`.
impl std::fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", describe_route(self))?;
        match self.table {
            Some(t) => write!(f, " table {t}"),
            None => Ok(()),
        }
    }
}

fn describe_route(r: &RouteSpec) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(oif) = r.oif {
        s += &format!(" dev #{oif}");
    }
    s
}

/// Routes of one family in every table (filter by `table`/`oif` on the result).
pub async fn routes(handle: &Handle, ipv6: bool) -> Result<Vec<RouteSpec>> {
    Ok(routes_by_protocol(handle, ipv6).await?.into_iter().map(|(r, _)| r).collect())
}

/// Routes of one family in every table that carry `protocol` (ours carry our own value).
pub async fn own_routes(handle: &Handle, ipv6: bool, protocol: u8) -> Result<Vec<RouteSpec>> {
    let all = routes_by_protocol(handle, ipv6).await?;
    Ok(all.into_iter().filter(|(_, p)| *p == protocol).map(|(r, _)| r).collect())
}

async fn routes_by_protocol(handle: &Handle, ipv6: bool) -> Result<Vec<(RouteSpec, u8)>> {
    let mut req = RouteMessage::default();
    req.header.address_family = if ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let msgs = dump(handle, RouteNetlinkMessage::GetRoute(req)).await?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        let addr = |a: &RouteAddress| match a {
            RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
            RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
            _ => None,
        };
        let zero = if ipv6 { IpAddr::V6(0.into()) } else { IpAddr::V4(0.into()) };
        let mut dst = zero;
        let mut spec = RouteSpec::new(IpNetwork::from(zero));
        let mut table = r.header.table as u32;
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = addr(a).unwrap_or(zero),
                RouteAttribute::Gateway(a) => spec.gateway = addr(a),
                RouteAttribute::PrefSource(a) => spec.src = addr(a),
                RouteAttribute::Oif(i) => spec.oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Priority(p) => spec.metric = Some(*p),
                _ => {}
            }
        }
        let Ok(dst) = IpNetwork::new(dst, r.header.destination_prefix_length) else {
            continue;
        };
        spec.dst = dst;
        spec.link_scope = r.header.scope == RouteScope::Link;
        spec.table = Some(table);
        out.push((spec, u8::from(r.header.protocol)));
    }
    Ok(out)
}

/// The address the node's traffic of one family leaves with: the preferred source of the main table's
/// best default route, else the first stable global address of that route's interface. For IPv6 that
/// skips unique-local (not routed beyond the site), temporary (they rotate), deprecated and tentative ones.
pub async fn default_route_source(handle: &Handle, ipv6: bool) -> Result<Option<IpAddr>> {
    let mut defaults: Vec<RouteSpec> = routes(handle, ipv6)
        .await?
        .into_iter()
        .filter(|r| r.dst.prefix() == 0 && r.table == Some(RouteHeader::RT_TABLE_MAIN as u32))
        .collect();
    defaults.sort_by_key(|r| r.metric.unwrap_or(0));
    for route in defaults {
        if let Some(src) = route.src.filter(|src| src.is_ipv6() == ipv6) {
            return Ok(Some(src));
        }
        let Some(oif) = route.oif else { continue };
        let unstable = AddressFlags::Secondary // IFA_F_TEMPORARY for IPv6
            | AddressFlags::Deprecated
            | AddressFlags::Tentative
            | AddressFlags::Dadfailed;
        let global = addresses_with_flags(handle, oif).await?.into_iter().find_map(|(a, flags)| match a.ip() {
            IpAddr::V4(v4) if !ipv6 && !v4.is_link_local() && !v4.is_loopback() => Some(IpAddr::V4(v4)),
            IpAddr::V6(v6)
                if ipv6
                    && !flags.intersects(unstable)
                    && !v6.is_unicast_link_local()
                    && !v6.is_unique_local()
                    && !v6.is_loopback() =>
            {
                Some(IpAddr::V6(v6))
            }
            _ => None,
        });
        if global.is_some() {
            return Ok(global);
        }
    }
    Ok(None)
}

/// Interfaces holding a default route learnt from a router advertisement: the kernel drops those
/// routes when IPv6 forwarding is turned on, unless the interface's `accept_ra` is 2.
pub async fn ra_default_route_links(handle: &Handle) -> Result<Vec<u32>> {
    let mut req = RouteMessage::default();
    req.header.address_family = AddressFamily::Inet6;
    let msgs = dump(handle, RouteNetlinkMessage::GetRoute(req)).await?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRoute(r) = m else { continue };
        if r.header.protocol != RouteProtocol::Ra || r.header.destination_prefix_length != 0 {
            continue;
        }
        for attr in &r.attributes {
            if let RouteAttribute::Oif(i) = attr {
                if !out.contains(i) {
                    out.push(*i);
                }
            }
        }
    }
    Ok(out)
}

/// A policy rule: traffic from `src`, to `dst` and/or with `fwmark` looks up `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub src: Option<IpNetwork>,
    pub dst: Option<IpNetwork>,
    /// `fwmark value/mask`
    pub fwmark: Option<(u32, u32)>,
    /// The family of a rule with neither address (a fwmark rule).
    pub ipv6: bool,
    pub table: u32,
    pub priority: u32,
    /// Who made the rule: ours carry our own value, so a rule someone else made with the same selector is
    /// never taken for ours (the kernel matches it on delete).
    pub protocol: Option<u8>,
}

/// As `ip rule` shows it: `from 10.0.0.9 lookup 100 pref 1536 proto 77`.
impl std::fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = |n: &IpNetwork| match n.prefix() == if n.is_ipv6() { 128 } else { 32 } {
            true => n.ip().to_string(),
            false => n.to_string(),
        };
        match (&self.src, &self.dst) {
            (Some(src), _) => write!(f, "from {}", host(src))?,
            (None, _) => write!(f, "from all")?,
        }
        if let Some(dst) = &self.dst {
            write!(f, " to {}", host(dst))?;
        }
        if let Some((mark, mask)) = self.fwmark {
            write!(f, " fwmark {mark:#x}/{mask:#x}")?;
        }
        write!(f, " lookup {} pref {}", self.table, self.priority)?;
        if let Some(p) = self.protocol {
            write!(f, " proto {p}")?;
        }
        Ok(())
    }
}

impl RuleSpec {
    /// `from`/`to` the address `ip` (a host prefix) lookup `table`.
    pub fn for_address(ip: IpAddr, from: bool, table: u32, priority: u32, protocol: u8) -> RuleSpec {
        let host = IpNetwork::from(ip);
        let (src, dst) = if from { (Some(host), None) } else { (None, Some(host)) };
        RuleSpec { src, dst, fwmark: None, ipv6: ip.is_ipv6(), table, priority, protocol: Some(protocol) }
    }

    fn to_message(&self) -> Result<RuleMessage> {
        let v6 = self.src.as_ref().or(self.dst.as_ref()).map_or(self.ipv6, |n| n.is_ipv6());
        let mut m = RuleMessage::default();
        m.header.family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        // The kernel does not default the action: without FR_ACT_TO_TBL a rule matches and does nothing.
        m.header.action = RuleAction::ToTable;
        m.header.table = if self.table < 256 { self.table as u8 } else { 0 };
        m.attributes.push(RuleAttribute::Table(self.table));
        m.attributes.push(RuleAttribute::Priority(self.priority));
        if let Some(src) = self.src {
            m.header.src_len = src.prefix();
            m.attributes.push(RuleAttribute::Source(src.ip()));
        }
        if let Some(dst) = self.dst {
            m.header.dst_len = dst.prefix();
            m.attributes.push(RuleAttribute::Destination(dst.ip()));
        }
        if let Some((mark, mask)) = self.fwmark {
            m.attributes.push(RuleAttribute::FwMark(mark));
            m.attributes.push(RuleAttribute::FwMask(mask));
        }
        if let Some(p) = self.protocol {
            m.attributes.push(RuleAttribute::Protocol(RouteProtocol::from(p)));
        }
        Ok(m)
    }
}

pub async fn add_rule(handle: &Handle, rule: &RuleSpec) -> Result<()> {
    add_rule_if_absent(handle, rule).await.and_then(|added| {
        added.then_some(()).ok_or_else(|| CniError::netlink(format!("adding rule {rule:?}"), "File exists"))
    })
}

/// Add a rule unless the kernel has one with its selector, priority and table: `Ok(false)` then.
pub async fn add_rule_if_absent(handle: &Handle, rule: &RuleSpec) -> Result<bool> {
    let mut req = handle.rule().add();
    *req.message_mut() = rule.to_message()?;
    log::debug!("adding rule {rule:?}");
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
        Err(e) => Err(nl_err(format!("adding rule {rule:?}"))(e)),
    }
}

/// Delete a rule (with `protocol`, only one that carries it); `Ok(false)` if there was none.
pub async fn delete_rule(handle: &Handle, rule: &RuleSpec) -> Result<bool> {
    log::debug!("deleting rule {rule:?}");
    match handle.rule().del(rule.to_message()?).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_gone(&e) => Ok(false),
        Err(e) => Err(nl_err(format!("deleting rule {rule:?}"))(e)),
    }
}

/// The `lookup <table>` rules of one family (other actions are left out).
pub async fn rules(handle: &Handle, ipv6: bool) -> Result<Vec<RuleSpec>> {
    let mut req = RuleMessage::default();
    req.header.family = if ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let msgs = dump(handle, RouteNetlinkMessage::GetRule(req)).await?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRule(r) = m else {
            continue;
        };
        if r.header.action != RuleAction::ToTable {
            continue;
        }
        let mut rule = RuleSpec {
            src: None,
            dst: None,
            fwmark: None,
            ipv6,
            table: u32::from(r.header.table),
            priority: 0,
            protocol: None,
        };
        let (mut mark, mut mask) = (None, None);
        for attr in &r.attributes {
            match attr {
                RuleAttribute::Source(ip) => rule.src = IpNetwork::new(*ip, r.header.src_len).ok(),
                RuleAttribute::Destination(ip) => rule.dst = IpNetwork::new(*ip, r.header.dst_len).ok(),
                RuleAttribute::Table(t) => rule.table = *t,
                RuleAttribute::Priority(p) => rule.priority = *p,
                RuleAttribute::FwMark(v) => mark = Some(*v),
                RuleAttribute::FwMask(v) => mask = Some(*v),
                RuleAttribute::Protocol(p) => rule.protocol = Some(u8::from(*p)),
                _ => {}
            }
        }
        rule.fwmark = mark.map(|m| (m, mask.unwrap_or(u32::MAX)));
        out.push(rule);
    }
    Ok(out)
}

/// A permanent neighbour entry (ARP/NDP answered by us, never expiring), replacing any existing one.
pub async fn set_permanent_neighbour(handle: &Handle, index: u32, ip: IpAddr, mac: &[u8]) -> Result<()> {
    handle
        .neighbours()
        .add(index, ip)
        .link_layer_address(mac)
        .state(NeighbourState::Permanent)
        .flags(NeighbourFlags::empty())
        .replace()
        .execute()
        .await
        .map_err(nl_err(format!("adding neighbour {ip} on link {index}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_route::link::InfoKind;

    #[test]
    fn a_link_read_in_place_is_the_link_the_parser_reads() {
        let mut m = LinkMessage::default();
        m.header.index = 42;
        m.attributes = vec![
            LinkAttribute::IfName("veth0123".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Group(8),
            LinkAttribute::IfAlias("cni-chain:ptp:n:c/eth0".into()),
            LinkAttribute::Controller(7),
            LinkAttribute::LinkNetNsId(3),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let mut payload = vec![0; m.buffer_len()];
        m.emit(&mut payload);
        let raw = Link::from_raw(&payload).expect("parses");
        assert_eq!(raw, Link::from_message(&m));
        assert_eq!(
            (raw.name.as_str(), raw.group, raw.master, raw.kind.as_deref()),
            ("veth0123", 8, Some(7), Some("veth"))
        );
        assert_eq!(Link::from_raw(&payload[..10]), None, "shorter than an ifinfomsg");
    }

    #[test]
    fn link_requests_written_in_place_are_the_ones_the_crate_writes() {
        let crate_writes = |message: RouteNetlinkMessage, flags: u16, seq: u32| {
            let mut request = NetlinkMessage::from(message);
            (request.header.flags, request.header.sequence_number) = (flags, seq);
            request.finalize();
            let mut buf = vec![0; request.buffer_len()];
            request.serialize(&mut buf);
            buf
        };
        let skip_stats = LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]);
        let mask = RTEXT_FILTER_SKIP_STATS.to_ne_bytes();
        let mut by_name = LinkMessage::default();
        by_name.attributes = vec![skip_stats.clone(), LinkAttribute::IfName("veth0123".into())];
        assert_eq!(
            link_request(RTM_GETLINK, NLM_F_REQUEST, 1, 0, &[(IFLA_EXT_MASK, &mask), (IFLA_IFNAME, b"veth0123\0")]),
            crate_writes(RouteNetlinkMessage::GetLink(by_name), NLM_F_REQUEST, 1)
        );
        let mut by_index = LinkMessage::default();
        by_index.header.index = 7;
        by_index.attributes = vec![skip_stats];
        assert_eq!(
            link_request(RTM_GETLINK, NLM_F_REQUEST, 2, 7, &[(IFLA_EXT_MASK, &mask)]),
            crate_writes(RouteNetlinkMessage::GetLink(by_index), NLM_F_REQUEST, 2)
        );
        let mut group = LinkMessage::default();
        group.header.index = 7;
        group.attributes = vec![LinkAttribute::Group(8)];
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        assert_eq!(
            link_request(RTM_SETLINK, flags, 3, 7, &[(IFLA_GROUP, &8u32.to_ne_bytes())]),
            crate_writes(RouteNetlinkMessage::SetLink(group), flags, 3)
        );
    }
}
