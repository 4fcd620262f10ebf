//! Address ranges as the reference host-local reads them, on `u128` so IPv4 and IPv6 share one arithmetic.

use crate::types::{network_of, opt_ip, parse_cidr};
use crate::{CniError, Result};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One range as written in the config.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RangeConf {
    #[serde(default)]
    pub subnet: String,
    #[serde(rename = "rangeStart", default, with = "opt_ip")]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd", default, with = "opt_ip")]
    pub range_end: Option<IpAddr>,
    #[serde(default, with = "opt_ip")]
    pub gateway: Option<IpAddr>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// A validated range: every address from `start` to `end` that is not the gateway, the network
/// address or the IPv4 broadcast address can be handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    start: u128,
    end: u128,
    pub gateway: Option<IpAddr>,
    network: u128,
    last: u128,
}

impl Range {
    pub fn new(conf: &RangeConf) -> Result<Range> {
        let bad = |msg: String| CniError::InvalidConfig(format!("range {}: {msg}", conf.subnet));
        if conf.subnet.is_empty() {
            return Err(CniError::InvalidConfig("a range needs a subnet".into()));
        }
        let subnet = network_of(parse_cidr(&conf.subnet)?);
        let bits = if subnet.is_ipv4() { 32 } else { 128 };
        let host_bits = bits - u32::from(subnet.prefix());
        let network = to_u128(subnet.network());
        let last = if host_bits == 128 { u128::MAX } else { network + ((1u128 << host_bits) - 1) };
        // /31 and /127 are point-to-point links (RFC 3021, RFC 6164) and /32, /128 single addresses:
        // every address is usable and there is no default gateway.
        let tiny = host_bits <= 1;
        let first_usable = if tiny { network } else { network + 1 };
        let last_usable = if tiny || subnet.is_ipv6() { last } else { last - 1 };
        let mut range = Range { subnet, start: first_usable, end: last_usable, gateway: None, network, last };

        let in_subnet = |what: &str, ip: IpAddr| {
            if ip.is_ipv4() != subnet.is_ipv4() {
                Err(bad(format!("{what} {ip} is not of the subnet's address family")))
            } else if !subnet.contains(ip) {
                Err(bad(format!("{what} {ip} is outside the subnet")))
            } else {
                Ok(to_u128(ip))
            }
        };
        range.gateway = match conf.gateway {
            Some(gw) => in_subnet("gateway", gw).map(|_| Some(gw))?,
            None if tiny => None,
            None => Some(range.ip(network + 1)),
        };
        if let Some(ip) = conf.range_start {
            range.start = in_subnet("rangeStart", ip)?;
        }
        if let Some(ip) = conf.range_end {
            range.end = in_subnet("rangeEnd", ip)?;
        }
        if range.start > range.end {
            return Err(bad(format!("rangeStart {} is after rangeEnd {}", range.ip(range.start), range.ip(range.end))));
        }
        Ok(range)
    }

    fn ip(&self, v: u128) -> IpAddr {
        match self.subnet {
            // The value came from this IPv4 subnet, so it fits in 32 bits.
            IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
            IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }

    fn same_family(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.subnet.is_ipv4()
    }

    /// `ip` lies between rangeStart and rangeEnd.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.same_family(ip) && (self.start..=self.end).contains(&to_u128(ip))
    }

    fn allocatable_value(&self, v: u128) -> bool {
        let tiny = self.last - self.network <= 1;
        (self.start..=self.end).contains(&v)
            && self.gateway.map(to_u128) != Some(v)
            && (tiny || (v != self.network && (self.subnet.is_ipv6() || v != self.last)))
    }

    /// `ip` may be handed out: in the range and not the gateway, network or broadcast address.
    pub fn allocatable(&self, ip: IpAddr) -> bool {
        self.same_family(ip) && self.allocatable_value(to_u128(ip))
    }

    pub fn overlaps(&self, other: &Range) -> bool {
        self.subnet.is_ipv4() == other.subnet.is_ipv4() && self.start <= other.end && other.start <= self.end
    }

    /// `ip` with this range's prefix length, as a result reports it.
    pub fn address(&self, ip: IpAddr) -> IpNetwork {
        IpNetwork::new(ip, self.subnet.prefix()).unwrap_or(self.subnet)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}-{})", self.subnet, self.ip(self.start), self.ip(self.end))
    }
}

/// The ranges one address is taken from (one range set gives a pod one address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn new(confs: &[RangeConf]) -> Result<RangeSet> {
        let ranges = confs.iter().map(Range::new).collect::<Result<Vec<_>>>()?;
        let Some(first) = ranges.first() else {
            return Err(CniError::InvalidConfig("a range set must have at least one range".into()));
        };
        if ranges.iter().any(|r| r.subnet.is_ipv4() != first.subnet.is_ipv4()) {
            return Err(CniError::InvalidConfig("a range set mixes IPv4 and IPv6 ranges".into()));
        }
        for (i, a) in ranges.iter().enumerate() {
            if let Some(b) = ranges[i + 1..].iter().find(|b| a.overlaps(b)) {
                return Err(CniError::InvalidConfig(format!("ranges {a} and {b} overlap")));
            }
        }
        Ok(RangeSet(ranges))
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }

    /// The range `ip` falls in.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// Every allocatable address once, round-robin: from the one after `last_reserved` (when it is in
    /// this set), through the end of its range and the following ranges, wrapping around.
    pub fn candidates(&self, last_reserved: Option<IpAddr>) -> Candidates<'_> {
        let first = last_reserved
            .and_then(|ip| self.0.iter().position(|r| r.contains(ip)).map(|i| self.step((i, to_u128(ip)))))
            .unwrap_or((0, self.0[0].start));
        Candidates { set: self, first, next: Some(first) }
    }

    fn step(&self, (i, v): (usize, u128)) -> (usize, u128) {
        if v == self.0[i].end {
            let j = (i + 1) % self.0.len();
            (j, self.0[j].start)
        } else {
            (i, v + 1)
        }
    }

    /// Some address is free, given the reserved ones. Looks at no more than `reserved.len() + 1`
    /// candidates, so it is cheap however large the ranges are.
    pub fn has_free(&self, reserved: &HashSet<IpAddr>) -> bool {
        self.candidates(None).take(reserved.len() + 1).any(|(_, ip)| !reserved.contains(&ip))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Range::to_string).collect();
        f.write_str(&parts.join(", "))
    }
}

/// Iterator over a range set's allocatable addresses: (index of the range, address).
pub struct Candidates<'a> {
    set: &'a RangeSet,
    first: (usize, u128),
    next: Option<(usize, u128)>,
}

impl Iterator for Candidates<'_> {
    type Item = (usize, IpAddr);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let pos = self.next?;
            let after = self.set.step(pos);
            self.next = (after != self.first).then_some(after);
            let range = &self.set.0[pos.0];
            if range.allocatable_value(pos.1) {
                return Some((pos.0, range.ip(pos.1)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(subnet: &str) -> RangeConf {
        RangeConf { subnet: subnet.into(), ..Default::default() }
    }

    fn set(confs: &[RangeConf]) -> RangeSet {
        RangeSet::new(confs).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn all(s: &RangeSet, last: Option<&str>) -> Vec<String> {
        s.candidates(last.map(ip)).map(|(_, a)| a.to_string()).collect()
    }

    #[test]
    fn v4_defaults_skip_network_gateway_and_broadcast() {
        let s = set(&[conf("10.0.0.0/29")]);
        assert_eq!(s.0[0].gateway, Some(ip("10.0.0.1")));
        assert_eq!(all(&s, None), ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        assert_eq!(s.0[0].address(ip("10.0.0.3")).to_string(), "10.0.0.3/29");
    }

    #[test]
    fn host_bits_in_the_subnet_are_cleared() {
        let s = set(&[conf("10.0.0.5/30")]);
        assert_eq!(s.0[0].subnet.to_string(), "10.0.0.4/30");
        assert_eq!(all(&s, None), ["10.0.0.6"]);
    }

    #[test]
    fn round_robin_starts_after_the_last_reserved_and_wraps() {
        let s = set(&[conf("10.0.0.0/29")]);
        assert_eq!(all(&s, Some("10.0.0.4")), ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        // A last-reserved address from another range set (the config changed) starts from the beginning.
        assert_eq!(all(&s, Some("192.168.0.9"))[0], "10.0.0.2");
    }

    #[test]
    fn several_ranges_in_one_set_are_walked_in_order() {
        let a =
            RangeConf { range_start: Some(ip("10.0.0.10")), range_end: Some(ip("10.0.0.11")), ..conf("10.0.0.0/24") };
        let b = conf("10.0.1.0/30");
        let s = set(&[a, b]);
        assert_eq!(all(&s, None), ["10.0.0.10", "10.0.0.11", "10.0.1.2"]);
        assert_eq!(all(&s, Some("10.0.0.11")), ["10.0.1.2", "10.0.0.10", "10.0.0.11"]);
    }

    #[test]
    fn explicit_start_on_the_network_address_and_gateway_inside_are_still_skipped() {
        let c = RangeConf {
            range_start: Some(ip("10.0.0.0")),
            range_end: Some(ip("10.0.0.7")),
            gateway: Some(ip("10.0.0.3")),
            ..conf("10.0.0.0/29")
        };
        assert_eq!(all(&set(&[c]), None), ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
    }

    #[test]
    fn point_to_point_and_single_address_subnets() {
        let s31 = set(&[conf("10.0.0.0/31")]);
        assert_eq!(s31.0[0].gateway, None);
        assert_eq!(all(&s31, None), ["10.0.0.0", "10.0.0.1"]);
        assert_eq!(all(&set(&[conf("10.0.0.7/32")]), None), ["10.0.0.7"]);
        assert_eq!(all(&set(&[conf("fd00::/127")]), None), ["fd00::", "fd00::1"]);
        assert_eq!(all(&set(&[conf("fd00::5/128")]), None), ["fd00::5"]);
        // A gateway given for a /31 takes one of its two addresses.
        let gw = RangeConf { gateway: Some(ip("10.0.0.0")), ..conf("10.0.0.0/31") };
        assert_eq!(all(&set(&[gw]), None), ["10.0.0.1"]);
    }

    #[test]
    fn v6_keeps_the_last_address_and_skips_the_subnet_router_anycast() {
        let s = set(&[conf("fd00::/125")]);
        assert_eq!(s.0[0].gateway, Some(ip("fd00::1")));
        assert_eq!(all(&s, None), ["fd00::2", "fd00::3", "fd00::4", "fd00::5", "fd00::6", "fd00::7"]);
    }

    #[test]
    fn large_v6_ranges_stay_cheap() {
        let s = set(&[conf("fd00::/64")]);
        let mut it = s.candidates(Some(ip("fd00::ffff:ffff:ffff:fffe")));
        assert_eq!(it.next().unwrap().1, ip("fd00::ffff:ffff:ffff:ffff"));
        assert_eq!(it.next().unwrap().1, ip("fd00::2"), "wraps to the start");
        let reserved: HashSet<IpAddr> =
            (2..1000u32).map(|i| IpAddr::V6(Ipv6Addr::from(0xfd00u128 << 112 | u128::from(i)))).collect();
        assert!(s.has_free(&reserved));
        let whole = set(&[conf("::/0")]);
        assert_eq!(whole.candidates(Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))).next().unwrap().1, ip("::2"));
    }

    #[test]
    fn full_set_has_no_free_address() {
        let s = set(&[conf("10.0.0.0/30")]);
        assert!(!s.has_free(&[ip("10.0.0.2")].into_iter().collect()));
        assert!(s.has_free(&[ip("10.0.0.9")].into_iter().collect()));
    }

    #[test]
    fn bad_ranges_are_refused_with_a_reason() {
        let cases = [
            (RangeConf { range_start: Some(ip("10.0.1.1")), ..conf("10.0.0.0/24") }, "outside the subnet"),
            (RangeConf { range_end: Some(ip("10.0.1.1")), ..conf("10.0.0.0/24") }, "outside the subnet"),
            (RangeConf { gateway: Some(ip("10.9.0.1")), ..conf("10.0.0.0/24") }, "outside the subnet"),
            (RangeConf { gateway: Some(ip("fd00::1")), ..conf("10.0.0.0/24") }, "address family"),
            (
                RangeConf { range_start: Some(ip("10.0.0.9")), range_end: Some(ip("10.0.0.8")), ..conf("10.0.0.0/24") },
                "after rangeEnd",
            ),
            (conf("10.0.0.1"), "not a CIDR"),
            (conf("10.0.0.0/33"), "not a CIDR"),
            (conf(""), "needs a subnet"),
        ];
        for (c, want) in cases {
            let e = Range::new(&c).unwrap_err();
            assert_eq!(e.code(), 7);
            assert!(e.to_string().contains(want), "{c:?}: {e}");
        }
    }

    #[test]
    fn overlaps_and_mixed_families_inside_a_set_are_refused() {
        let a = conf("10.0.0.0/24");
        let b = RangeConf { range_start: Some(ip("10.0.0.200")), ..conf("10.0.0.0/24") };
        assert!(RangeSet::new(&[a.clone(), b]).unwrap_err().to_string().contains("overlap"));
        assert!(RangeSet::new(&[a.clone(), conf("fd00::/64")]).unwrap_err().to_string().contains("mixes"));
        assert!(RangeSet::new(&[]).is_err());
        // Disjoint parts of one subnet do not overlap.
        let lo = RangeConf { range_end: Some(ip("10.0.0.99")), ..a.clone() };
        let hi = RangeConf { range_start: Some(ip("10.0.0.100")), ..a };
        assert!(!set(&[lo]).overlaps(&set(&[hi])));
    }
}
