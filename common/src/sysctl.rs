//! sysctl through /proc/sys, keys written with `/` (interface names may contain dots).
//! Keys under net/ act in the netns of the calling thread.

use crate::error::{CniError, Result};
use std::fs;

fn path(key: &str) -> String {
    format!("/proc/sys/{key}")
}

pub fn get(key: &str) -> Result<String> {
    fs::read_to_string(path(key)).map(|s| s.trim().to_string()).map_err(|e| sysctl_error(key, e))
}

pub fn set(key: &str, value: &str) -> Result<()> {
    log::debug!("sysctl {key} = {value}");
    fs::write(path(key), value).map_err(|e| sysctl_error(key, e))
}

/// Set `key` only if it differs: writing forwarding sysctls resets per-interface state in the kernel.
pub fn ensure(key: &str, value: &str) -> Result<()> {
    if get(key)? != value {
        set(key, value)?;
    }
    Ok(())
}

/// IP forwarding for the families in use, in the calling thread's netns.
pub fn enable_forwarding(ipv4: bool, ipv6: bool) -> Result<()> {
    if ipv4 {
        ensure("net/ipv4/ip_forward", "1")?;
    }
    if ipv6 {
        ensure("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Ready a link that is still down for IPv6: on, even where the netns' defaults switch it off (as
/// the reference plugins' IPAM does), and without duplicate address detection so its link-local
/// address is usable at once: the kernel sends no neighbour solicitation for forwarded packets
/// while the link-local address is tentative, which drops a new pod's first packets.
pub fn enable_ipv6_without_dad(ifname: &str) -> Result<()> {
    ensure(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0")?;
    set(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")
}

/// No IPv6 on `ifname`, which carries none (the node's end of an IPv4-only attachment): no link-local address
/// and no routes of its own, so the node's IPv6 routing table does not grow with its pods. The kernel walks
/// that whole table on every link event (a veth going up, a group set), which made each ADD slower the more
/// pods the node had. A kernel without IPv6 has nothing to switch off.
pub fn disable_ipv6(ifname: &str) -> Result<()> {
    match set(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1") {
        Err(_) if !std::path::Path::new(&path("net/ipv6")).exists() => Ok(()),
        written => written,
    }
}

fn sysctl_error(key: &str, e: std::io::Error) -> CniError {
    let hint = crate::error::privilege_hint(e.raw_os_error(), crate::netlink::NODE_NET_ADMIN);
    CniError::Sysctl { key: key.into(), msg: format!("{e}{hint}") }
}
