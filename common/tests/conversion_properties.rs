//! Property tests of result conversion: any result, written at any supported version and read back, then
//! written at any other, keeps exactly what both versions can express.

use common::types::{CniResult, Dns, Interface, IpConfig, Route};
use common::version::{CniVersion, SUPPORTED};
use ipnetwork::IpNetwork;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a)))
    ]
}

fn network() -> impl Strategy<Value = IpNetwork> {
    (ip(), any::<u8>()).prop_map(|(ip, p)| {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        IpNetwork::new(ip, p % (max + 1)).unwrap()
    })
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/._:-]{1,20}"
}

fn interface() -> impl Strategy<Value = Interface> {
    let mac = proptest::option::of("[0-9a-f]{2}(:[0-9a-f]{2}){5}");
    let paths = (proptest::option::of(text()), proptest::option::of(text()), proptest::option::of(text()));
    ("[a-z][a-z0-9]{0,14}", mac, any::<Option<u32>>(), paths).prop_map(
        |(name, mac, mtu, (sandbox, socket_path, pci_id))| Interface {
            name,
            mac: mac.unwrap_or_default(),
            mtu,
            sandbox,
            socket_path,
            pci_id,
        },
    )
}

fn ip_config() -> impl Strategy<Value = IpConfig> {
    (proptest::option::of(0usize..4), network(), proptest::option::of(ip()))
        .prop_map(|(interface, address, gateway)| IpConfig { interface, address, gateway })
}

fn route() -> impl Strategy<Value = Route> {
    let numbers = (any::<Option<u32>>(), any::<Option<u32>>(), any::<Option<u32>>(), any::<Option<u32>>());
    (network(), proptest::option::of(ip()), numbers, any::<Option<u8>>()).prop_map(
        |(dst, gw, (mtu, advmss, priority, table), scope)| Route { dst, gw, mtu, advmss, priority, table, scope },
    )
}

fn dns() -> impl Strategy<Value = Dns> {
    let list = || proptest::collection::vec(text(), 0..3);
    (list(), proptest::option::of(text()), list(), list()).prop_map(|(nameservers, domain, search, options)| Dns {
        nameservers,
        domain: domain.unwrap_or_default(),
        search,
        options,
    })
}

fn result() -> impl Strategy<Value = CniResult> {
    (
        proptest::collection::vec(interface(), 0..4),
        proptest::collection::vec(ip_config(), 0..4),
        proptest::collection::vec(route(), 0..4),
        dns(),
    )
        .prop_map(|(interfaces, ips, routes, dns)| CniResult { interfaces, ips, routes, dns })
}

fn version() -> impl Strategy<Value = CniVersion> {
    proptest::sample::select(SUPPORTED.to_vec())
}

/// What `version` can express of `r`: 1.1.0's interface and route fields go before 1.1.0.
fn expressible(r: &CniResult, version: CniVersion) -> CniResult {
    let mut out = r.clone();
    if !version.has_1_1_fields() {
        for i in &mut out.interfaces {
            (i.mtu, i.socket_path, i.pci_id) = (None, None, None);
        }
        for route in &mut out.routes {
            (route.mtu, route.advmss, route.priority, route.table, route.scope) = (None, None, None, None, None);
        }
    }
    out
}

fn through(r: &CniResult, version: CniVersion) -> CniResult {
    CniResult::from_value(&r.to_value(version)).expect("a result we wrote reads back")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn one_version_keeps_what_it_can_express(r in result(), v in version()) {
        prop_assert_eq!(through(&r, v), expressible(&r, v));
    }

    #[test]
    fn every_pair_of_versions_keeps_what_both_can_express(r in result(), a in version(), b in version()) {
        let via_a = through(&through(&r, a), b);
        prop_assert_eq!(&via_a, &expressible(&expressible(&r, a), b));
        // What is written for b depends only on what a could carry, not on the trip.
        prop_assert_eq!(via_a.to_value(b), expressible(&r, a).to_value(b));
    }

    #[test]
    fn the_ip_version_field_is_written_exactly_before_1_0(r in result(), v in version()) {
        let value = r.to_value(v);
        prop_assert_eq!(value["cniVersion"].as_str(), Some(v.as_str()));
        for (json, ip) in value["ips"].as_array().into_iter().flatten().zip(&r.ips) {
            let family = if ip.address.is_ipv4() { "4" } else { "6" };
            let want = v.ip_has_version_field().then_some(family);
            prop_assert_eq!(json.get("version").and_then(|v| v.as_str()), want);
        }
    }
}
