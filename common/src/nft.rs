//! nftables spoken over netlink (NETLINK_NETFILTER) in the current netns: every change is one atomic
//! batch, and what is there is read back with dumps. No `nft` process, no C library.

use crate::error::{CniError, Result};
use crate::nlraw::{self, errno_of, nlas, NLMSG_DONE, NLMSG_ERROR};
use netlink_packet_core::{
    DefaultNla, NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_NONREC, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook, Immediate,
    InetHookNumber, ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register, RuleAttribute,
    RuleMessage, SetAttribute, SetDescription, SetElementAttribute, SetElementList, SetElementMessage, SetFlags,
    SetMessage, TableAttribute, TableFlags, TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{constants::NETLINK_NETFILTER, Socket};
use nix::libc;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// The kernel's type ids for set keys and data (nftables' datatype.h).
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_IPV6_ADDR: u32 = 8;
const TYPE_VERDICT: u32 = 0xffff_ff00;
/// NFT_PAYLOAD_NETWORK_HEADER
const BASE_NETWORK: u32 = 1;
const NFTA_MASQ_FLAGS: u16 = 1;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_FLAGS: u16 = 7;
const NFT_NAT_SNAT: u32 = 0;
/// NFT_REG_1, the register `load_addr` and `Immediate` use.
const NFT_REG_1: u32 = 1;
const NF_NAT_RANGE_PROTO_RANDOM: u32 = 1 << 2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 1 << 4;
/// libnftnl's user-data TLV type for a comment, so `nft list` shows our tags as comments.
const UDATA_COMMENT: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// A set dump interrupted by concurrent changes (NLM_F_DUMP_INTR) is done again this often.
const DUMP_TRIES: usize = 5;
/// The capacity of each of our sets and maps (pods of one family on one node). A set with a size makes every
/// kernel count its elements: 6.1 kernels before 6.1.0-57 (Debian's) count them only then, and without the
/// count the "delete only if empty" guard that keeps a concurrent ADD's element safe does nothing. The size
/// also sets the hash's bucket array, which every commit that adds a `jump` element walks: at 65536 (1 MiB of
/// buckets) that walk cost ptp's ipMasq ADD 1.3 ms; at 16384 it is not measurable.
pub const SET_SIZE: u32 = 16384;
/// The `srcnat` priority of a nat postrouting chain.
pub const PRIORITY_SRCNAT: i32 = 100;
/// The `mangle` priority: a prerouting chain there runs before any DNAT (kube-proxy's at `dstnat`, -100).
pub const PRIORITY_MANGLE: i32 = -150;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_SREG: u16 = 4;
const NFT_CT_MARK: u32 = 3;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFTA_FIB_F_IIF: u32 = 1 << 3;
/// The route type of an address of this host (RTN_LOCAL).
const RTN_LOCAL: u32 = 2;
/// Interface names are compared as the kernel stores them: IFNAMSIZ bytes, zero-padded.
const IFNAMSIZ: usize = 16;

/// User data holding a comment, in the format `nft` reads and writes.
pub fn comment(text: &str) -> Vec<u8> {
    let mut v = vec![UDATA_COMMENT, (text.len() + 1) as u8];
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}

/// The comment in user data written by `comment` (or by `nft ... comment "..."`).
pub fn comment_of(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if kind == UDATA_COMMENT {
            return Some(nlraw::string(value));
        }
        rest = &rest[2 + len..];
    }
    None
}

/// The longest comment nftables stores with an object.
pub const MAX_COMMENT: usize = 250;

/// How NAT picks the source port: `fully-random`, `random` (a hash of the flow) or kept when possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSelection {
    FullyRandom,
    HashRandom,
    Keep,
}

impl PortSelection {
    fn flags(self) -> u32 {
        match self {
            PortSelection::FullyRandom => NF_NAT_RANGE_PROTO_RANDOM_FULLY,
            PortSelection::HashRandom => NF_NAT_RANGE_PROTO_RANDOM,
            PortSelection::Keep => 0,
        }
    }

    /// The words `nft list` prints after the NAT target.
    pub fn nft_words(self) -> &'static str {
        match self {
            PortSelection::FullyRandom => " fully-random",
            PortSelection::HashRandom => " random",
            PortSelection::Keep => "",
        }
    }
}

fn be32_nla(kind: u16, value: u32) -> DefaultNla {
    DefaultNla::new(kind, value.to_be_bytes().to_vec())
}

/// Rule expressions, built with the helpers below.
#[derive(Debug, Clone, Default)]
pub struct Rule(Vec<ListAttribute<ExpressionAttribute>>);

impl Rule {
    pub fn new() -> Self {
        Rule::default()
    }

    fn push(mut self, e: Expressions) -> Self {
        self.0.push(e.into());
        self
    }

    fn load_meta(self, key: MetaKey) -> Self {
        self.push(Expressions::Meta(vec![Meta::DestinationRegister(Register::Reg1), Meta::Key(key)]))
    }

    fn cmp(self, op: Operator, data: Vec<u8>) -> Self {
        self.push(Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(op),
            Cmp::Data(DataAttribute::Value(data)),
        ]))
    }

    /// `meta iifgroup == group`
    pub fn iif_group(self, group: u32) -> Self {
        self.load_meta(MetaKey::Iifgroup).cmp(Operator::Equal, group.to_ne_bytes().to_vec())
    }

    /// `meta oifgroup != g` for each group
    pub fn oif_group_not_in(self, groups: &[u32]) -> Self {
        groups
            .iter()
            .fold(self.load_meta(MetaKey::Oifgroup), |r, g| r.cmp(Operator::NotEqual, g.to_ne_bytes().to_vec()))
    }

    /// `meta nfproto ipv4|ipv6`: needed before reading addresses in an inet table.
    pub fn family(self, v6: bool) -> Self {
        let proto = if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
        self.load_meta(MetaKey::Nfproto).cmp(Operator::Equal, vec![proto])
    }

    /// `iifname "name"` (or `!=`).
    pub fn iifname(self, name: &str, equal: bool) -> Self {
        let mut padded = name.as_bytes().to_vec();
        padded.resize(IFNAMSIZ, 0);
        let op = if equal { Operator::Equal } else { Operator::NotEqual };
        self.load_meta(MetaKey::Iifname).cmp(op, padded)
    }

    /// `fib daddr . iif type local`: the packet is addressed to an address of the interface it came in on.
    pub fn to_local_address_of_iif(self) -> Self {
        self.push(Expressions::Other {
            expression_type: "fib".into(),
            attributes: vec![
                be32_nla(NFTA_FIB_DREG, NFT_REG_1),
                be32_nla(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE),
                be32_nla(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR | NFTA_FIB_F_IIF),
            ],
        })
        .cmp(Operator::Equal, RTN_LOCAL.to_ne_bytes().to_vec())
    }

    fn load_ct_mark(self) -> Self {
        self.push(Expressions::Other {
            expression_type: "ct".into(),
            attributes: vec![be32_nla(NFTA_CT_DREG, NFT_REG_1), be32_nla(NFTA_CT_KEY, NFT_CT_MARK)],
        })
    }

    /// register 1 = (register 1 & mask) ^ xor, on a 32-bit mark.
    fn mark_bitwise(self, mask: u32, xor: u32) -> Self {
        self.push(Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(4),
            Bitwise::Mask(DataAttribute::Value(mask.to_ne_bytes().to_vec())),
            Bitwise::Xor(DataAttribute::Value(xor.to_ne_bytes().to_vec())),
        ]))
    }

    /// `ct mark set ct mark | bits`: the other bits of the connection's mark stay as they are.
    pub fn ct_mark_add_bits(self, bits: u32) -> Self {
        self.load_ct_mark().mark_bitwise(!bits, bits).push(Expressions::Other {
            expression_type: "ct".into(),
            attributes: vec![be32_nla(NFTA_CT_KEY, NFT_CT_MARK), be32_nla(NFTA_CT_SREG, NFT_REG_1)],
        })
    }

    /// `ct mark & bits != 0`
    pub fn ct_mark_has_bits(self, bits: u32) -> Self {
        self.load_ct_mark().mark_bitwise(bits, 0).cmp(Operator::NotEqual, 0u32.to_ne_bytes().to_vec())
    }

    /// `meta mark set meta mark | bits`: the packet's other mark bits (kube-proxy's, Calico's) stay.
    pub fn meta_mark_add_bits(self, bits: u32) -> Self {
        self.load_meta(MetaKey::Mark)
            .mark_bitwise(!bits, bits)
            .push(Expressions::Meta(vec![Meta::Key(MetaKey::Mark), Meta::SourceRegister(Register::Reg1)]))
    }

    /// Load the source (or destination) address of the family into register 1.
    fn load_addr(self, v6: bool, source: bool) -> Self {
        let (offset, len) = match (v6, source) {
            (false, true) => (12, 4),
            (false, false) => (16, 4),
            (true, true) => (8, 16),
            (true, false) => (24, 16),
        };
        self.family(v6).push(Expressions::Payload(vec![
            Payload::DestinationRegister(Register::Reg1),
            Payload::Base(BASE_NETWORK),
            Payload::Offset(offset),
            Payload::Len(len),
        ]))
    }

    /// `ip daddr net/prefix` (or `ip6 daddr`).
    pub fn daddr_in(self, net: ipnetwork::IpNetwork) -> Self {
        self.daddr_cmp(net, Operator::Equal)
    }

    /// `ip daddr != net/prefix` (or `ip6 daddr`).
    pub fn daddr_not_in(self, net: ipnetwork::IpNetwork) -> Self {
        self.daddr_cmp(net, Operator::NotEqual)
    }

    fn daddr_cmp(self, net: ipnetwork::IpNetwork, op: Operator) -> Self {
        let (addr, mask): (Vec<u8>, Vec<u8>) = match net {
            ipnetwork::IpNetwork::V4(n) => (n.network().octets().to_vec(), n.mask().octets().to_vec()),
            ipnetwork::IpNetwork::V6(n) => (n.network().octets().to_vec(), n.mask().octets().to_vec()),
        };
        let len = addr.len() as u32;
        self.load_addr(net.is_ipv6(), false)
            .push(Expressions::Bitwise(vec![
                Bitwise::SourceRegister(Register::Reg1),
                Bitwise::DestinationRegister(Register::Reg1),
                Bitwise::Length(len),
                Bitwise::Mask(DataAttribute::Value(mask)),
                Bitwise::Xor(DataAttribute::Value(vec![0; len as usize])),
            ]))
            .cmp(op, addr)
    }

    /// `ip saddr @set` (or `ip6 saddr`).
    pub fn saddr_in(self, v6: bool, set: &str) -> Self {
        self.load_addr(v6, true)
            .push(Expressions::Lookup(vec![Lookup::Set(set.into()), Lookup::SourceRegister(Register::Reg1)]))
    }

    /// `ip saddr vmap @map` (or `ip6 saddr`).
    pub fn saddr_vmap(self, v6: bool, map: &str) -> Self {
        self.load_addr(v6, true).push(Expressions::Lookup(vec![
            Lookup::Set(map.into()),
            Lookup::SourceRegister(Register::Reg1),
            Lookup::DestinationRegister(Register::Verdict),
        ]))
    }

    pub fn verdict_return(self) -> Self {
        self.push(Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Verdict),
            Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(Verdict::Return)])),
        ]))
    }

    pub fn masquerade(self, random_fully: bool) -> Self {
        let flags = if random_fully { NF_NAT_RANGE_PROTO_RANDOM_FULLY } else { 0 };
        let attrs =
            if flags == 0 { vec![] } else { vec![DefaultNla::new(NFTA_MASQ_FLAGS, flags.to_be_bytes().to_vec())] };
        self.push(Expressions::Other { expression_type: "masq".into(), attributes: attrs })
    }

    /// `snat ip to addr` (or `ip6`), choosing ports as `ports` says.
    pub fn snat(self, addr: IpAddr, ports: PortSelection) -> Self {
        let family = if addr.is_ipv6() { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
        self.push(Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Reg1),
            Immediate::Data(DataAttribute::Value(addr_bytes(addr))),
        ]))
        .push(Expressions::Other {
            expression_type: "nat".into(),
            attributes: vec![
                be32_nla(NFTA_NAT_TYPE, NFT_NAT_SNAT),
                be32_nla(NFTA_NAT_FAMILY, u32::from(family)),
                be32_nla(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1),
                be32_nla(NFTA_NAT_FLAGS, ports.flags()),
            ],
        })
    }
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// One element of an address set, or of a verdict map (address → `jump chain`), tagged with a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: IpAddr,
    pub jump: Option<String>,
    pub comment: Option<String>,
}

/// A list of changes applied as one transaction: all of them or none.
#[derive(Debug, Default)]
pub struct Batch {
    msgs: Vec<(NfTablesMessage, u16)>,
    /// The kernel requires each set created in a batch to carry an ID unique in that batch.
    set_ids: u32,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    fn push(&mut self, msg: NfTablesMessage, flags: u16) -> &mut Self {
        self.msgs.push((msg, flags));
        self
    }

    /// The changes of `other` after these (it creates no set: set IDs are this batch's).
    pub fn append(&mut self, other: Batch) -> &mut Self {
        self.msgs.extend(other.msgs);
        self
    }

    /// Create the table unless it exists.
    pub fn add_table(&mut self, table: &str) -> &mut Self {
        let attrs = vec![TableAttribute::Name(table.into()), TableAttribute::Flags(TableFlags::default())];
        self.push(NfTablesMessage::NewTable(TableMessage { attributes: attrs }), NLM_F_CREATE)
    }

    /// Delete the table, which the kernel refuses (EBUSY) while it holds chains or sets.
    pub fn delete_empty_table(&mut self, table: &str) -> &mut Self {
        let attrs = vec![TableAttribute::Name(table.into())];
        self.push(NfTablesMessage::DeleteTable(TableMessage { attributes: attrs }), NLM_F_NONREC)
    }

    /// Create a nat chain hooked at postrouting unless it exists.
    pub fn add_nat_postrouting_chain(&mut self, table: &str, chain: &str) -> &mut Self {
        let attrs = vec![
            ChainAttribute::Table(table.into()),
            ChainAttribute::Name(chain.into()),
            ChainAttribute::Hook(vec![
                Hook::Number(InetHookNumber::PostRouting.into()),
                Hook::Priority(PRIORITY_SRCNAT as u32),
            ]),
            ChainAttribute::Policy(1), // accept
            ChainAttribute::Type("nat".into()),
        ];
        self.push(NfTablesMessage::NewChain(ChainMessage { attributes: attrs }), NLM_F_CREATE)
    }

    /// Create a filter chain hooked at prerouting with `priority` unless it exists.
    pub fn add_filter_prerouting_chain(&mut self, table: &str, chain: &str, priority: i32) -> &mut Self {
        let attrs = vec![
            ChainAttribute::Table(table.into()),
            ChainAttribute::Name(chain.into()),
            ChainAttribute::Hook(vec![
                Hook::Number(InetHookNumber::PreRouting.into()),
                Hook::Priority(priority as u32),
            ]),
            ChainAttribute::Policy(1), // accept
            ChainAttribute::Type("filter".into()),
        ];
        self.push(NfTablesMessage::NewChain(ChainMessage { attributes: attrs }), NLM_F_CREATE)
    }

    /// Delete the table with everything in it.
    pub fn delete_table(&mut self, table: &str) -> &mut Self {
        let attrs = vec![TableAttribute::Name(table.into())];
        self.push(NfTablesMessage::DeleteTable(TableMessage { attributes: attrs }), 0)
    }

    /// Create a regular chain (a jump target) unless it exists.
    pub fn add_chain(&mut self, table: &str, chain: &str) -> &mut Self {
        let attrs = vec![ChainAttribute::Table(table.into()), ChainAttribute::Name(chain.into())];
        self.push(NfTablesMessage::NewChain(ChainMessage { attributes: attrs }), NLM_F_CREATE)
    }

    pub fn delete_chain(&mut self, table: &str, chain: &str) -> &mut Self {
        let attrs = vec![ChainAttribute::Table(table.into()), ChainAttribute::Name(chain.into())];
        self.push(NfTablesMessage::DeleteChain(ChainMessage { attributes: attrs }), 0)
    }

    /// Remove every rule of the chain (`nft flush chain`).
    pub fn flush_chain(&mut self, table: &str, chain: &str) -> &mut Self {
        let attrs = vec![RuleAttribute::Table(table.into()), RuleAttribute::Chain(chain.into())];
        self.push(NfTablesMessage::DeleteRule(RuleMessage { attributes: attrs }), 0)
    }

    pub fn add_rule(&mut self, table: &str, chain: &str, rule: Rule, comment_text: &str) -> &mut Self {
        let attrs = vec![
            RuleAttribute::Table(table.into()),
            RuleAttribute::Chain(chain.into()),
            RuleAttribute::Expressions(rule.0),
            RuleAttribute::UserData(comment(comment_text)),
        ];
        self.push(NfTablesMessage::NewRule(RuleMessage { attributes: attrs }), NLM_F_CREATE | NLM_F_APPEND)
    }

    /// Create an address → verdict map unless it exists.
    pub fn add_vmap(&mut self, table: &str, map: &str, v6: bool) -> &mut Self {
        self.add_address_set(table, map, v6, true)
    }

    /// Create a set of addresses unless it exists.
    pub fn add_set(&mut self, table: &str, set: &str, v6: bool) -> &mut Self {
        self.add_address_set(table, set, v6, false)
    }

    fn add_address_set(&mut self, table: &str, name: &str, v6: bool, verdict_map: bool) -> &mut Self {
        let (key_type, key_len) = if v6 { (TYPE_IPV6_ADDR, 16) } else { (TYPE_IPV4_ADDR, 4) };
        self.set_ids += 1;
        let mut attrs = vec![
            SetAttribute::Table(table.into()),
            SetAttribute::Name(name.into()),
            SetAttribute::Flags(if verdict_map { SetFlags::Map } else { SetFlags::empty() }),
            SetAttribute::KeyType(key_type),
            SetAttribute::KeyLen(key_len),
            SetAttribute::Id(self.set_ids),
            SetAttribute::Description(vec![SetDescription::Size(SET_SIZE)]),
        ];
        if verdict_map {
            attrs.extend([SetAttribute::DataType(TYPE_VERDICT), SetAttribute::DataLen(0)]);
        }
        self.push(NfTablesMessage::NewSet(SetMessage { attributes: attrs }), NLM_F_CREATE)
    }

    /// Delete the set, which the kernel refuses (EBUSY) while it has elements.
    pub fn delete_empty_set(&mut self, table: &str, set: &str) -> &mut Self {
        let attrs = vec![SetAttribute::Table(table.into()), SetAttribute::Name(set.into())];
        self.push(NfTablesMessage::DeleteSet(SetMessage { attributes: attrs }), NLM_F_NONREC)
    }

    fn elements(table: &str, map: &str, elems: Vec<ListAttribute<SetElementAttribute>>) -> SetElementMessage {
        SetElementMessage {
            attributes: vec![
                SetElementList::Table(table.into()),
                SetElementList::Set(map.into()),
                SetElementList::Elements(elems),
            ],
        }
    }

    /// Add elements to a set (without `jump`) or a verdict map (with).
    pub fn add_elements(&mut self, table: &str, set: &str, elems: &[Element]) -> &mut Self {
        let list = elems
            .iter()
            .map(|e| {
                let mut attrs = vec![SetElementAttribute::Key(DataAttribute::Value(addr_bytes(e.key)))];
                if let Some(chain) = &e.jump {
                    attrs.push(SetElementAttribute::Data(DataAttribute::Verdict(vec![
                        VerdictAttribute::Code(Verdict::Jump),
                        VerdictAttribute::Chain(chain.clone()),
                    ])));
                }
                if let Some(c) = &e.comment {
                    attrs.push(SetElementAttribute::UserData(comment(c)));
                }
                ListAttribute::Element(attrs)
            })
            .collect();
        self.push(NfTablesMessage::NewSetElement(Batch::elements(table, set, list)), NLM_F_CREATE)
    }

    pub fn delete_elements(&mut self, table: &str, map: &str, keys: &[IpAddr]) -> &mut Self {
        // A key twice in one batch would void it (the second delete finds nothing): a dump resumed while the
        // set changed can repeat an element.
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        let list = keys
            .iter()
            .map(|k| ListAttribute::Element(vec![SetElementAttribute::Key(DataAttribute::Value(addr_bytes(*k)))]))
            .collect();
        self.push(NfTablesMessage::DeleteSetElement(Batch::elements(table, map, list)), 0)
    }
}

/// A rule as read back: its handle and comment.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    pub handle: u64,
    pub comment: Option<String>,
}

/// A netfilter netlink socket in the netns of the thread that opened it.
pub struct Nft {
    socket: Socket,
    seq: u32,
    /// Every answer is read into this one buffer: a fresh 256 KiB one per read costs an mmap and a munmap each
    /// with musl's allocator.
    answer: Vec<u8>,
    /// The sockets `set_is_empty` left a dump unread on, closed with this one: closing a netfilter socket after
    /// a commit that deleted something waits for the kernel's deferred cleanup (an RCU grace period), so each
    /// close between a DEL's commits would add a wait of its own.
    probes: Vec<Socket>,
}

/// Room for the largest answer part the kernel sends.
const ANSWER_SIZE: usize = 1 << 18;

fn nl_err(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::Nftables(format!("{what}: {e}"))
}

fn errno_text(code: i32) -> String {
    let hint = crate::error::privilege_hint(Some(-code), crate::netlink::NODE_NET_ADMIN);
    format!("{}{hint}", std::io::Error::from_raw_os_error(-code))
}

impl Nft {
    pub fn open() -> Result<Nft> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| nl_err("opening a netfilter socket", e))?;
        socket.bind_auto().map_err(|e| nl_err("binding the netfilter socket", e))?;
        // A reply that never comes must not hang the runtime.
        let timeout = libc::timeval { tv_sec: 10, tv_usec: 0 };
        // SAFETY: setsockopt on our own fd with a correctly sized timeval.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(nl_err("setting the socket timeout", std::io::Error::last_os_error()));
        }
        Ok(Nft { socket, seq: 1, answer: Vec::with_capacity(ANSWER_SIZE), probes: Vec::new() })
    }

    fn message(&mut self, family: NetfilterProtoFamily, inner: NetfilterMessageInner, flags: u16) -> Vec<u8> {
        let res_id = if matches!(inner, NetfilterMessageInner::None(_)) { NFNL_SUBSYS_NFTABLES } else { 0 };
        let mut msg = NetlinkMessage::from(NetfilterMessage::new(NetfilterHeader::new(family, 0, res_id), inner));
        msg.header.flags = NLM_F_REQUEST | flags;
        msg.header.sequence_number = self.seq;
        self.seq += 1;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    /// One read from the socket into `answer`.
    fn read_answer(&mut self) -> Result<()> {
        self.answer.clear();
        self.socket.recv(&mut self.answer, 0).map_err(|e| nl_err("reading the kernel's answer", e))?;
        Ok(())
    }

    fn receive(&mut self) -> Result<Vec<NetlinkMessage<NetfilterMessage>>> {
        self.read_answer()?;
        let buf = &self.answer;
        let mut out = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            let len = match NetlinkBuffer::new_checked(&buf[off..]) {
                Ok(b) => b.length() as usize,
                Err(_) => break,
            };
            if len == 0 || off + len > buf.len() {
                break;
            }
            match NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..off + len]) {
                Ok(m) => out.push(m),
                Err(e) => log::debug!("skipping a netfilter message we cannot parse: {e}"),
            }
            off += (len + 3) & !3;
        }
        Ok(out)
    }

    /// Apply `batch` atomically; the first error names the change that failed.
    pub fn apply(&mut self, batch: &Batch, what: &str) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if log::log_enabled!(log::Level::Debug) {
            let changes: Vec<String> = batch.msgs.iter().map(|(m, _)| describe_with_name(m)).collect();
            log::debug!("nftables batch ({what}): {}", changes.join("; "));
        }
        let first = self.seq;
        let mut buf = self.message(NetfilterProtoFamily::Unspec, ControlMessage::BatchBegin.into(), 0);
        for (msg, flags) in &batch.msgs {
            buf.extend(self.message(NetfilterProtoFamily::Inet, msg.clone().into(), flags | NLM_F_ACK));
        }
        buf.extend(self.message(NetfilterProtoFamily::Unspec, ControlMessage::BatchEnd.into(), 0));
        self.socket.send(&buf, 0).map_err(|e| nl_err(what, e))?;
        // The kernel answers every message of the batch, also after one failed: read them all, so that no
        // answer is left to be mistaken for the next request's.
        let (mut answered, mut failure) = (0, None);
        while answered < batch.msgs.len() {
            for reply in self.receive()? {
                let NetlinkPayload::Error(err) = reply.payload else { continue };
                let seq = reply.header.sequence_number;
                if seq == first {
                    // Addressed to the batch itself: the kernel gave up on all of it (out of memory).
                    let code = err.code.map_or(0, |c| c.get());
                    return Err(nl_err(what, format!("the batch: {}", errno_text(code))));
                }
                let Some(index) = seq.checked_sub(first + 1).map(|i| i as usize).filter(|i| *i < batch.msgs.len())
                else {
                    continue;
                };
                answered += 1;
                if let (Some(code), None) = (err.code, &failure) {
                    let failed = describe(&batch.msgs[index].0);
                    failure = Some(nl_err(what, format!("{failed}: {}", errno_text(code.get()))));
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Apply a cleanup the kernel may rightly refuse (a set or chain still in use): the refusal is logged.
    pub fn apply_if_unused(&mut self, batch: &Batch, what: &str) {
        if let Err(e) = self.apply(batch, what) {
            log::debug!("{e}");
        }
    }

    /// Dump objects of one kind; a missing table or set reads as empty.
    fn dump(&mut self, request: NfTablesMessage) -> Result<Vec<NfTablesMessage>> {
        let seq = self.seq;
        let buf = self.message(NetfilterProtoFamily::Inet, request.into(), NLM_F_DUMP);
        self.socket.send(&buf, 0).map_err(|e| nl_err("dump request", e))?;
        let mut out = Vec::new();
        loop {
            // Only the answers to this request count.
            for reply in self.receive()?.into_iter().filter(|r| r.header.sequence_number == seq) {
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(err) => match err.code {
                        Some(code) if code.get() == -libc::ENOENT => return Ok(out),
                        Some(code) => return Err(nl_err("dump", errno_text(code.get()))),
                        None => return Ok(out),
                    },
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::NfTables(m),
                        ..
                    }) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Send `request` and hand each answer message's (type, payload) to `each`, unparsed, until the end of the
    /// answer (a missing table or set ends it like an empty one) or until `each` says to stop; whether the kernel
    /// said a concurrent change interrupted the dump. The netlink crate's parser is slow on what we read most.
    fn request_raw(
        &mut self,
        request: NfTablesMessage,
        flags: u16,
        what: &str,
        mut each: impl FnMut(u16, &[u8]) -> bool,
    ) -> Result<bool> {
        let seq = self.seq;
        let buf = self.message(NetfilterProtoFamily::Inet, request.into(), flags);
        self.socket.send(&buf, 0).map_err(|e| nl_err(what, e))?;
        let mut interrupted = false;
        loop {
            self.read_answer()?;
            for (kind, flags, msg_seq, payload) in nlraw::messages(&self.answer) {
                if msg_seq != seq {
                    continue;
                }
                interrupted |= flags & NLM_F_DUMP_INTR != 0;
                match kind {
                    NLMSG_DONE => return Ok(interrupted),
                    NLMSG_ERROR => {
                        return match errno_of(payload) {
                            0 => Ok(interrupted),
                            c if c == -libc::ENOENT => Ok(interrupted),
                            c => Err(nl_err(what, errno_text(c))),
                        };
                    }
                    _ if !each(kind, payload) => return Ok(interrupted),
                    _ => {}
                }
            }
        }
    }

    pub fn table_exists(&mut self, table: &str) -> Result<bool> {
        let tables = self.dump(NfTablesMessage::GetTable(TableMessage { attributes: vec![] }))?;
        Ok(tables.iter().any(|m| match m {
            NfTablesMessage::NewTable(t) => {
                t.attributes.iter().any(|a| matches!(a, TableAttribute::Name(n) if n == table))
            }
            _ => false,
        }))
    }

    /// Whether `table` exists and holds neither chain nor set.
    pub fn table_is_empty(&mut self, table: &str) -> Result<bool> {
        Ok(self.table_exists(table)? && self.chains(table)?.is_empty() && self.sets(table)?.is_empty())
    }

    /// Names of the chains in `table`.
    pub fn chains(&mut self, table: &str) -> Result<Vec<String>> {
        let attrs = vec![ChainAttribute::Table(table.into())];
        let dumped = self.dump(NfTablesMessage::GetChain(ChainMessage { attributes: attrs }))?;
        Ok(names_in_table(dumped, table, |m| match m {
            NfTablesMessage::NewChain(c) => c.attributes.into_iter().fold((None, None), |(t, n), a| match a {
                ChainAttribute::Table(x) => (Some(x), n),
                ChainAttribute::Name(x) => (t, Some(x)),
                _ => (t, n),
            }),
            _ => (None, None),
        }))
    }

    /// The rules of `chain`, read from the raw answer: the netlink crate's parser formats every expression's bytes
    /// into an error message it almost never needs (most of an ADD's user time when it changes nothing).
    pub fn rules(&mut self, table: &str, chain: &str) -> Result<Vec<RuleInfo>> {
        let attrs = vec![RuleAttribute::Table(table.into()), RuleAttribute::Chain(chain.into())];
        let request = NfTablesMessage::GetRule(RuleMessage { attributes: attrs });
        let mut rules = Vec::new();
        self.request_raw(request, NLM_F_DUMP, "reading rules", |kind, payload| {
            if kind != NFT_MSG_NEWRULE_TYPE {
                return true;
            }
            let (mut info, mut in_chain) = (RuleInfo { handle: 0, comment: None }, false);
            for (attr, value) in nlas(payload.get(NFGENMSG_LEN..).unwrap_or_default()) {
                match attr {
                    NFTA_RULE_CHAIN => in_chain = nlraw::unterminated(value) == chain.as_bytes(),
                    NFTA_RULE_HANDLE => info.handle = value.try_into().map_or(0, u64::from_be_bytes),
                    NFTA_RULE_USERDATA => info.comment = comment_of(value),
                    _ => {}
                }
            }
            if in_chain {
                rules.push(info);
            }
            true
        })?;
        Ok(rules)
    }

    /// Names of the sets and maps in `table`.
    pub fn sets(&mut self, table: &str) -> Result<Vec<String>> {
        Ok(self.set_sizes(table)?.into_iter().map(|(name, _)| name).collect())
    }

    /// The sets and maps in `table` with their size, if they have one, read from the raw answer (as `rules`).
    pub fn set_sizes(&mut self, table: &str) -> Result<Vec<(String, Option<u32>)>> {
        let request = NfTablesMessage::GetSet(SetMessage { attributes: vec![SetAttribute::Table(table.into())] });
        let mut out = Vec::new();
        self.request_raw(request, NLM_F_DUMP, "reading sets", |kind, payload| {
            out.extend((kind == NFT_MSG_NEWSET_TYPE).then(|| raw_set(payload, table)).flatten());
            true
        })?;
        Ok(out)
    }

    /// Whether the kernel's "only if empty" delete can be trusted for these sets: each has a size (every kernel
    /// counts its elements) or, made without one (by hand, or by an older release), is empty right now.
    pub fn deletion_is_guarded(&mut self, table: &str, sets: &[&str]) -> bool {
        let Ok(sizes) = self.set_sizes(table) else { return false };
        sets.iter().all(|set| match sizes.iter().find(|(name, _)| name == set) {
            None | Some((_, Some(_))) => true,
            Some((_, None)) => self.elements(table, set).is_ok_and(|e| e.is_empty()),
        })
    }

    /// The elements of an address set or address → verdict map. Read from the raw answer: the netlink crate's
    /// parser formats the whole element list once per element (quadratic: half a second for 1000 pods).
    pub fn elements(&mut self, table: &str, set: &str) -> Result<Vec<Element>> {
        for _ in 0..DUMP_TRIES {
            if let Some(elements) = self.elements_once(table, set)? {
                return Ok(elements);
            }
        }
        Err(CniError::TryAgainLater(format!("the dump of set {set} kept being interrupted by concurrent changes")))
    }

    /// The element of `set` with `key`, if there is one: one element asked for, not the whole set dumped, so
    /// an ADD costs the same whatever the number of pods.
    pub fn element(&mut self, table: &str, set: &str, key: IpAddr) -> Result<Option<Element>> {
        let wanted = ListAttribute::Element(vec![SetElementAttribute::Key(DataAttribute::Value(addr_bytes(key)))]);
        let mut found = None;
        self.read_elements(table, set, vec![wanted], NLM_F_ACK, |elements| {
            found = elements.into_iter().find(|e| e.key == key);
            true
        })?;
        Ok(found)
    }

    /// Whether `set` holds no element (a missing set holds none). Only the first part of a dump is read, so the
    /// cost does not grow with the set; the rest is dropped with the socket it was asked on.
    pub fn set_is_empty(&mut self, table: &str, set: &str) -> Result<bool> {
        let mut empty = true;
        let mut probe = Nft::open()?;
        probe.read_elements(table, set, vec![], NLM_F_DUMP, |elements| {
            empty = elements.is_empty();
            empty
        })?;
        self.probes.push(probe.socket);
        Ok(empty)
    }

    /// One dump of a set's elements; None when the kernel says a concurrent change interrupted it. A dump in
    /// several parts can meet the same element twice while others change the set: a key counts once.
    fn elements_once(&mut self, table: &str, set: &str) -> Result<Option<Vec<Element>>> {
        let (mut out, mut seen) = (Vec::<Element>::new(), std::collections::HashSet::new());
        let interrupted = self.read_elements(table, set, vec![], NLM_F_DUMP, |elements| {
            out.extend(elements.into_iter().filter(|e| seen.insert(e.key)));
            true
        })?;
        Ok((!interrupted).then_some(out))
    }

    /// Ask for `set`'s elements (`keys` of them, or all) and hand each answer's elements to `each`, as
    /// `request_raw` does; the netlink crate's parser formats the whole element list once per element.
    fn read_elements(
        &mut self,
        table: &str,
        set: &str,
        keys: Vec<ListAttribute<SetElementAttribute>>,
        flags: u16,
        mut each: impl FnMut(Vec<Element>) -> bool,
    ) -> Result<bool> {
        let request = NfTablesMessage::GetSetElement(Batch::elements(table, set, keys));
        self.request_raw(request, flags, "reading set elements", |kind, payload| {
            kind != NFT_MSG_NEWSETELEM_TYPE || each(raw_set_elements(payload))
        })
    }
}

const NFT_MSG_NEWSETELEM_TYPE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 12;
const NFT_MSG_NEWSET_TYPE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 9;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_MSG_NEWRULE_TYPE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 6;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_USERDATA: u16 = 7;
const NFGENMSG_LEN: usize = 4;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// One NEWSET message's set (after its netlink header) as (name, size if it has one), if it is in `table`.
fn raw_set(payload: &[u8], table: &str) -> Option<(String, Option<u32>)> {
    let (mut in_table, mut name, mut size) = (false, None, None);
    for (kind, value) in nlas(payload.get(NFGENMSG_LEN..)?) {
        match kind {
            NFTA_SET_TABLE => in_table = nlraw::unterminated(value) == table.as_bytes(),
            NFTA_SET_NAME => name = Some(nlraw::string(value)),
            NFTA_SET_DESC => {
                let sized = nlas(value).find(|(k, _)| *k == NFTA_SET_DESC_SIZE);
                size = sized.and_then(|(_, v)| v.try_into().ok()).map(u32::from_be_bytes).filter(|&n| n > 0);
            }
            _ => {}
        }
    }
    Some((name.filter(|_| in_table)?, size))
}

/// The elements of one NEWSETELEM message (after its netlink header).
fn raw_set_elements(payload: &[u8]) -> Vec<Element> {
    let Some(attrs) = payload.get(NFGENMSG_LEN..) else { return vec![] };
    nlas(attrs)
        .filter(|(kind, _)| *kind == NFTA_SET_ELEM_LIST_ELEMENTS)
        .flat_map(|(_, list)| nlas(list).filter(|(kind, _)| *kind == NFTA_LIST_ELEM).map(|(_, e)| e))
        .filter_map(raw_element)
        .collect()
}

fn raw_element(attrs: &[u8]) -> Option<Element> {
    let (mut key, mut jump, mut comment) = (None, None, None);
    for (kind, value) in nlas(attrs) {
        match kind {
            NFTA_SET_ELEM_KEY => {
                key = nlas(value).find(|(k, _)| *k == NFTA_DATA_VALUE).and_then(|(_, v)| match v.len() {
                    4 => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
                    _ => None,
                })
            }
            NFTA_SET_ELEM_DATA => {
                jump = nlas(value)
                    .filter(|(k, _)| *k == NFTA_DATA_VERDICT)
                    .flat_map(|(_, verdict)| nlas(verdict))
                    .find(|(k, _)| *k == NFTA_VERDICT_CHAIN)
                    .map(|(_, chain)| nlraw::string(chain))
            }
            NFTA_SET_ELEM_USERDATA => comment = comment_of(value),
            _ => {}
        }
    }
    Some(Element { key: key?, jump, comment })
}

/// The names of dumped objects that belong to `table`; `table_and_name` reads both from one message.
fn names_in_table(
    dumped: Vec<NfTablesMessage>,
    table: &str,
    table_and_name: impl Fn(NfTablesMessage) -> (Option<String>, Option<String>),
) -> Vec<String> {
    dumped
        .into_iter()
        .filter_map(|m| match table_and_name(m) {
            (Some(t), Some(name)) if t == table => Some(name),
            _ => None,
        })
        .collect()
}

/// A change with the name of what it changes, for the debug log.
fn describe_with_name(m: &NfTablesMessage) -> String {
    let name = match m {
        NfTablesMessage::NewTable(t) | NfTablesMessage::DeleteTable(t) => {
            t.attributes.iter().find_map(|a| if let TableAttribute::Name(n) = a { Some(n.clone()) } else { None })
        }
        NfTablesMessage::NewChain(c) | NfTablesMessage::DeleteChain(c) => {
            c.attributes.iter().find_map(|a| if let ChainAttribute::Name(n) = a { Some(n.clone()) } else { None })
        }
        NfTablesMessage::NewRule(r) | NfTablesMessage::DeleteRule(r) => {
            r.attributes.iter().find_map(|a| if let RuleAttribute::Chain(n) = a { Some(n.clone()) } else { None })
        }
        NfTablesMessage::NewSet(x) | NfTablesMessage::DeleteSet(x) => {
            x.attributes.iter().find_map(|a| if let SetAttribute::Name(n) = a { Some(n.clone()) } else { None })
        }
        NfTablesMessage::NewSetElement(e) | NfTablesMessage::DeleteSetElement(e) => {
            let set =
                e.attributes.iter().find_map(|a| if let SetElementList::Set(n) = a { Some(n.clone()) } else { None });
            let count =
                e.attributes
                    .iter()
                    .find_map(|a| if let SetElementList::Elements(v) = a { Some(v.len()) } else { None });
            set.map(|s| format!("{s}, {} element(s)", count.unwrap_or(0)))
        }
        _ => None,
    };
    format!("{} {}", describe(m), name.unwrap_or_default())
}

fn describe(m: &NfTablesMessage) -> &'static str {
    match m {
        NfTablesMessage::NewTable(_) => "creating the table",
        NfTablesMessage::DeleteTable(_) => "deleting the table",
        NfTablesMessage::NewChain(_) => "creating a chain",
        NfTablesMessage::DeleteChain(_) => "deleting a chain",
        NfTablesMessage::NewRule(_) => "adding a rule",
        NfTablesMessage::DeleteRule(_) => "flushing a chain",
        NfTablesMessage::NewSet(_) => "creating a set",
        NfTablesMessage::DeleteSet(_) => "deleting a set",
        NfTablesMessage::NewSetElement(_) => "adding set elements",
        NfTablesMessage::DeleteSetElement(_) => "deleting set elements",
        _ => "a change",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_element_reader_reads_what_the_crate_writes() {
        let elements = vec![
            Element { key: "10.0.0.7".parse().unwrap(), jump: None, comment: Some("cni-chain:x:n:c1/eth0".into()) },
            Element { key: "fd00::7".parse().unwrap(), jump: Some("masq_pod_1".into()), comment: None },
        ];
        let mut batch = Batch::new();
        batch.add_elements("t", "s", &elements);
        assert_eq!(raw_set_elements(&payload_of(&batch)), elements);
        assert!(raw_set_elements(&[1, 2]).is_empty(), "a short payload reads as no element");
    }

    /// The payload (after the netlink header) of the batch's first message, as the kernel would echo it.
    fn payload_of(batch: &Batch) -> Vec<u8> {
        let inner: NetfilterMessageInner = batch.msgs[0].0.clone().into();
        let mut msg =
            NetlinkMessage::from(NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0), inner));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf[16..].to_vec()
    }

    #[test]
    fn the_raw_set_reader_reads_what_the_crate_writes() {
        let mut batch = Batch::new();
        batch.add_set("t", "pods_v4", false);
        let payload = payload_of(&batch);
        assert_eq!(raw_set(&payload, "t"), Some(("pods_v4".into(), Some(SET_SIZE))));
        assert_eq!(raw_set(&payload, "other"), None, "a set of another table");
        assert_eq!(raw_set(&[1, 2], "t"), None, "a short payload");
    }

    #[test]
    fn comments_round_trip_in_nft_format() {
        let u = comment("c1/eth0");
        assert_eq!(u, b"\x00\x08c1/eth0\x00");
        assert_eq!(comment_of(&u).as_deref(), Some("c1/eth0"));
        assert_eq!(comment_of(b"\x01\x02ab\x00\x03xy\x00").as_deref(), Some("xy"));
        assert_eq!(comment_of(b"\x00\x09short"), None);
    }
}
