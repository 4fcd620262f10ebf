//! egress-v4: chained after an IPv6 main plugin, gives the pod a second point-to-point veth with a
//! link-local IPv4 address and SNATs its traffic to the node's IPv4 address (the AWS VPC CNI design).
//! egress-v6 is its mirror image; both are `common::egress`.
#![cfg_attr(not(test), no_main)]

use common::egress::{self, V4};
use common::{CniResult, Invocation, Plugin, Result};

struct EgressV4;

impl Plugin for EgressV4 {
    const NAME: &'static str = "egress-v4";
    const ABOUT: &'static str = "chained after an IPv6 main plugin: a second veth with a link-local IPv4 address, SNAT to the node's IPv4 address";

    fn add(inv: &Invocation) -> Result<CniResult> {
        egress::add(&V4, inv)
    }

    fn del(inv: &Invocation) -> Result<()> {
        egress::del(&V4, inv)
    }

    fn check(inv: &Invocation) -> Result<()> {
        egress::check(&V4, inv)
    }

    fn status(inv: &Invocation) -> Result<()> {
        egress::status(&V4, inv)
    }

    fn gc(inv: &Invocation) -> Result<()> {
        egress::gc(&V4, inv)
    }
}

common::plugin_main!(EgressV4);
