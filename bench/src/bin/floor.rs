//! The floor for `make bench`: the kernel work of a point-to-point ADD (a veth into the pod's netns, its
//! addresses and routes on both ends) or DEL (deleting the veth) done by one minimal process, with no
//! IPAM, no config parsing, no chained plugins and no nftables.
//!
//!     cni-chain-floor add NETNS HOST_IFNAME POD_CIDR GATEWAY
//!     cni-chain-floor del HOST_IFNAME

use common::netlink::Rtnl;
use common::netns::Netns;
use common::p2p::{self, P2pAttachment};
use common::types::{IpConfig, Route};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cni-chain-floor {args:?}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let rtnl = Rtnl::new()?;
    let node = rtnl.connect()?;
    match args {
        [verb, netns, host, cidr, gateway] if verb == "add" => {
            let pod = Netns::open(netns)?;
            let att = P2pAttachment {
                host_ifname: host,
                container_ifname: "eth0",
                alias: "floor",
                mtu: None,
                host_group: None,
            };
            let ip = IpConfig { interface: None, address: cidr.parse()?, gateway: Some(gateway.parse()?) };
            let default = Route::new("0.0.0.0/0".parse()?, None);
            p2p::setup(&rtnl, &node, &pod, &att, &[ip], &[default])?;
        }
        [verb, host] if verb == "del" => p2p::teardown(&rtnl, &node, host, "floor", None, "eth0")?,
        _ => return Err("usage: add NETNS HOST_IFNAME POD_CIDR GATEWAY | del HOST_IFNAME".into()),
    }
    Ok(())
}
