//! host-local: IPAM from ranges configured per network, stored on the node's disk in the reference's format
//! (`common::host_local`).
#![cfg_attr(not(test), no_main)]

use common::host_local::{HostLocal, MARKER};

/// Says to a main plugin of the same build that it may run host-local's code itself (kept by `#[used]`,
/// stripped binaries included).
#[used]
#[link_section = ".cni_chain_ipam"]
static SAME_BUILD: [u8; MARKER.len()] = match MARKER.first_chunk() {
    Some(marker) => *marker,
    None => panic!("the marker's length"),
};

common::plugin_main!(HostLocal);
