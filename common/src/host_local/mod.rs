//! host-local: IPAM from ranges configured per network, stored on the node's disk in the reference's format.
//! Here rather than in its plugin so that a main plugin can run it in its own process (`ipam`).

mod allocator;
mod config;
mod dns;
mod range;

use crate::ipam_store::{self as store, Store};
use crate::{CniError, CniResult, Invocation, Plugin, Result};
use config::{settings, Settings};

pub struct HostLocal;

/// What our host-local executable carries in its ELF section `MARKER_SECTION`: the version and a hash of this
/// library's source. A main plugin whose own is the same runs host-local in its own process: the code is
/// the same, and so is every effect (`ipam::start`).
pub const MARKER: &[u8] =
    concat!("cni-chain host-local ", env!("CARGO_PKG_VERSION"), " ", env!("CNI_CHAIN_SOURCE_HASH")).as_bytes();
pub const MARKER_SECTION: &str = ".cni_chain_ipam";

/// Whether the executable at `path` is our host-local, built from this very source.
pub fn is_same_build(path: &std::path::Path) -> bool {
    crate::files::elf_section(path, MARKER_SECTION).is_some_and(|content| content == MARKER)
}

/// The ID only goes into files, but `..` is refused all the same.
fn refuse_dotdot(inv: &Invocation) -> Result<()> {
    if inv.container_id.contains("..") {
        return Err(CniError::InvalidEnv(format!("CNI_CONTAINERID {:?} contains \"..\"", inv.container_id)));
    }
    Ok(())
}

/// Settings for a verb on one attachment.
fn attachment_settings(inv: &Invocation) -> Result<Settings> {
    refuse_dotdot(inv)?;
    settings(inv)
}

impl Plugin for HostLocal {
    const NAME: &'static str = "host-local";
    const ABOUT: &'static str =
        "IPAM: addresses from ranges per network, kept on the node's disk in the reference host-local's format";

    fn add(inv: &Invocation) -> Result<CniResult> {
        let s = attachment_settings(inv)?;
        let dns = s.resolv_conf.as_deref().map(dns::read).transpose()?.unwrap_or_default();
        let store = Store::open(&s.data_dir, &s.network)?;
        let ips = allocator::allocate(&store, &s.range_sets, &s.requested, &inv.container_id, &inv.ifname)?;
        Ok(CniResult { ips, routes: s.routes, dns, interfaces: Vec::new() })
    }

    fn del(inv: &Invocation) -> Result<()> {
        refuse_dotdot(inv)?;
        let (data_dir, network) = config::store_location(inv)?;
        if let Some(store) = Store::open_existing(&data_dir, &network)? {
            let released = allocator::release(&store, &inv.container_id, &inv.ifname)?;
            log::debug!("released {released:?}");
        }
        Ok(())
    }

    fn check(inv: &Invocation) -> Result<()> {
        let s = attachment_settings(inv)?;
        let prev = inv.config.prev_result()?;
        let store = Store::open_existing(&s.data_dir, &s.network)?.ok_or_else(|| {
            CniError::CheckFailed(format!("no store for network {} in {}", s.network, s.data_dir.display()))
        })?;
        allocator::check(&store, &s.range_sets, prev.as_ref(), &inv.container_id, &inv.ifname)
    }

    fn status(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        crate::files::probe_writable(&s.data_dir.join(&s.network)).map_err(CniError::NotAvailable)?;
        let reserved = match Store::open_existing(&s.data_dir, &s.network)? {
            Some(store) => store::reserved_set(&store.reservations()?),
            None => Default::default(),
        };
        match s.range_sets.iter().position(|set| !set.has_free(&reserved)) {
            Some(i) => Err(CniError::NotAvailable(format!("range set {i} ({}) has no free address", s.range_sets[i]))),
            None => Ok(()),
        }
    }

    fn gc(inv: &Invocation) -> Result<()> {
        let s = settings(inv)?;
        if let Some(store) = Store::open_existing(&s.data_dir, &s.network)? {
            let released = allocator::gc(&store, &inv.config.valid_attachments())?;
            if !released.is_empty() {
                log::info!("GC released {released:?}");
            }
        }
        Ok(())
    }
}
