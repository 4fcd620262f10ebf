//! egress-v6: chained after an IPv4 main plugin, gives the pod a second point-to-point veth with a
//! unique-local IPv6 address routed through the host end's link-local address, SNATs its traffic to the
//! node's global IPv6 address and switches IPv6 off on the pod's primary interface (the AWS VPC CNI
//! design). egress-v4 is its mirror image; both are `common::egress`.
#![cfg_attr(not(test), no_main)]

use common::egress::{self, V6};
use common::{CniResult, Invocation, Plugin, Result};

struct EgressV6;

impl Plugin for EgressV6 {
    const NAME: &'static str = "egress-v6";
    const ABOUT: &'static str = "chained after an IPv4 main plugin: a second veth with a unique-local IPv6 address, SNAT to the node's IPv6 address";

    fn add(inv: &Invocation) -> Result<CniResult> {
        egress::add(&V6, inv)
    }

    fn del(inv: &Invocation) -> Result<()> {
        egress::del(&V6, inv)
    }

    fn check(inv: &Invocation) -> Result<()> {
        egress::check(&V6, inv)
    }

    fn status(inv: &Invocation) -> Result<()> {
        egress::status(&V6, inv)
    }

    fn gc(inv: &Invocation) -> Result<()> {
        egress::gc(&V6, inv)
    }
}

common::plugin_main!(EgressV6);
