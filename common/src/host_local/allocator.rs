//! What each verb does to the store, under its lock: one address per range set for an attachment.

use super::range::RangeSet;
use crate::ipam_store::{held_by, Store};
use crate::types::{Attachment, CniResult, IpConfig};
use crate::{CniError, Result};
use std::collections::HashSet;
use std::net::IpAddr;

/// One address per range set for (container_id, ifname). A repeated ADD gets the addresses it already
/// holds; on any failure the addresses reserved by this call are released again.
pub fn allocate(
    store: &Store,
    sets: &[RangeSet],
    requested: &[IpAddr],
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>> {
    if let Some(ip) = requested.iter().find(|ip| !sets.iter().any(|s| s.contains(**ip))) {
        return Err(CniError::AddressUnavailable(format!("{ip} is in none of the configured ranges")));
    }
    // A new attachment has no index entry: nothing is read but the cursor (a runtime never repeats an ADD
    // without a DEL; when ours does, the entry gives back what it holds).
    let mine = store.indexed(container_id, ifname).unwrap_or_default();
    let mut taken = HashSet::new();
    let mut new = Vec::new();
    let mut ips = Vec::new();
    for (idx, set) in sets.iter().enumerate() {
        match allocate_one(store, set, idx, requested, &mine, &mut taken, container_id, ifname) {
            Ok((ip, is_new)) => {
                if is_new {
                    new.push(ip);
                }
                let range = set.range_for(ip).ok_or_else(|| CniError::Internal(format!("{ip} left its range")))?;
                ips.push(IpConfig { interface: None, address: range.address(ip), gateway: range.gateway });
            }
            Err(e) => {
                for ip in new {
                    let _ = store.release(ip);
                }
                return Err(e);
            }
        }
    }
    let held: Vec<IpAddr> = ips.iter().map(|c| c.address.ip()).collect();
    if let Err(e) = store.index(container_id, ifname, &held) {
        for ip in new {
            let _ = store.release(ip);
        }
        return Err(e);
    }
    Ok(ips)
}

/// What the attachment holds: by the index, else (no entry, or none of it still true) by reading every file.
fn held(store: &Store, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    match store.indexed(container_id, ifname) {
        Some(ips) if !ips.is_empty() => Ok(ips),
        _ => Ok(held_by(&store.reservations()?, container_id, ifname)),
    }
}

#[allow(clippy::too_many_arguments)]
fn allocate_one(
    store: &Store,
    set: &RangeSet,
    idx: usize,
    requested: &[IpAddr],
    mine: &[IpAddr],
    taken: &mut HashSet<IpAddr>,
    container_id: &str,
    ifname: &str,
) -> Result<(IpAddr, bool)> {
    let wanted: Vec<IpAddr> = requested.iter().copied().filter(|ip| set.contains(*ip)).collect();
    if wanted.len() > 1 {
        return Err(CniError::AddressUnavailable(format!("{wanted:?} all fall in range set {idx}: ask for one")));
    }
    let holding = mine.iter().copied().find(|ip| set.contains(*ip));
    match (holding, wanted.first().copied()) {
        (Some(held), Some(want)) if held != want => Err(CniError::AddressUnavailable(format!(
            "{container_id}/{ifname} already holds {held} in range set {idx}, not the requested {want}"
        ))),
        (Some(held), _) => Ok((held, false)),
        (None, Some(want)) => {
            let range = set.range_for(want).filter(|r| r.allocatable(want));
            if range.is_none() {
                return Err(CniError::AddressUnavailable(format!("{want} is a gateway, network or broadcast address")));
            }
            if !store.reserve(want, container_id, ifname, idx)? {
                return Err(CniError::AddressUnavailable(format!("{want} is reserved by another container")));
            }
            Ok((want, true))
        }
        (None, None) => {
            for (_, ip) in set.candidates(store.last_reserved(idx)) {
                if !taken.contains(&ip) && store.reserve(ip, container_id, ifname, idx)? {
                    taken.insert(ip);
                    return Ok((ip, true));
                }
            }
            Err(CniError::RangeExhausted(format!("every address of range set {idx} ({set}) is reserved")))
        }
    }
}

/// Release what the attachment holds; nothing held is fine.
pub fn release(store: &Store, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    let held = held(store, container_id, ifname)?;
    for ip in &held {
        store.release(*ip)?;
    }
    store.unindex(container_id, ifname)?;
    Ok(held)
}

/// The attachment holds addresses, and every address of `prev` that is in our ranges is one of them.
pub fn check(
    store: &Store,
    sets: &[RangeSet],
    prev: Option<&CniResult>,
    container_id: &str,
    ifname: &str,
) -> Result<()> {
    let held = held(store, container_id, ifname)?;
    if held.is_empty() {
        return Err(CniError::CheckFailed(format!("no address is reserved for {container_id}/{ifname}")));
    }
    for ip in prev.map(|p| p.ips.as_slice()).unwrap_or_default() {
        let addr = ip.address.ip();
        if sets.iter().any(|s| s.contains(addr)) && !held.contains(&addr) {
            return Err(CniError::CheckFailed(format!("{addr} is not reserved for {container_id}/{ifname}")));
        }
    }
    Ok(())
}

/// Release every reservation whose attachment is not in `valid`. An ID-only file is kept while any
/// attachment of its container is valid.
pub fn gc(store: &Store, valid: &[Attachment]) -> Result<Vec<IpAddr>> {
    let mut released = Vec::new();
    for r in store.reservations()? {
        let keep = valid.iter().any(|a| {
            a.container_id.trim() == r.holder.container_id
                && r.holder.ifname.as_ref().is_none_or(|ifname| *ifname == a.ifname)
        });
        if !keep {
            store.release(r.ip)?;
            released.push(r.ip);
        }
    }
    store.sweep(|container_id, ifname| {
        valid.iter().any(|a| a.container_id.trim() == container_id && a.ifname == ifname)
    })?;
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_local::range::RangeConf;
    use std::path::PathBuf;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("host-local-alloc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Tmp(p)
    }

    fn sets(subnets: &[&str]) -> Vec<RangeSet> {
        subnets
            .iter()
            .map(|s| RangeSet::new(&[RangeConf { subnet: s.to_string(), ..Default::default() }]).unwrap())
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addrs(v: &[IpConfig]) -> Vec<String> {
        v.iter().map(|c| c.address.to_string()).collect()
    }

    #[test]
    fn one_address_per_set_round_robin_and_readd_returns_the_same() {
        let t = tmp("rr");
        let store = Store::open(&t.0, "n").unwrap();
        let s = sets(&["10.0.0.0/29", "fd00::/120"]);
        let a = allocate(&store, &s, &[], "c1", "eth0").unwrap();
        assert_eq!(addrs(&a), ["10.0.0.2/29", "fd00::2/120"]);
        assert_eq!(a[0].gateway, Some(ip("10.0.0.1")));
        assert_eq!(addrs(&allocate(&store, &s, &[], "c1", "eth0").unwrap()), addrs(&a), "re-ADD");
        assert_eq!(addrs(&allocate(&store, &s, &[], "c2", "eth0").unwrap()), ["10.0.0.3/29", "fd00::3/120"]);
        release(&store, "c1", "eth0").unwrap();
        // Round-robin: the released .2 is not handed out again before the range wraps.
        assert_eq!(addrs(&allocate(&store, &s, &[], "c3", "eth0").unwrap()), ["10.0.0.4/29", "fd00::4/120"]);
    }

    #[test]
    fn exhaustion_is_its_own_error_and_rolls_back_the_other_sets() {
        let t = tmp("full");
        let store = Store::open(&t.0, "n").unwrap();
        let s = sets(&["fd00::/120", "10.0.0.0/30"]);
        allocate(&store, &s, &[], "c1", "eth0").unwrap();
        let e = allocate(&store, &s, &[], "c2", "eth0").unwrap_err();
        assert_eq!(e.code(), 106, "{e}");
        assert!(e.to_string().contains("range set 1"), "{e}");
        assert_eq!(store.reservations().unwrap().len(), 2, "c2's IPv6 address was given back");
    }

    #[test]
    fn requested_addresses() {
        let t = tmp("req");
        let store = Store::open(&t.0, "n").unwrap();
        let s = sets(&["10.0.0.0/24"]);
        assert_eq!(addrs(&allocate(&store, &s, &[ip("10.0.0.50")], "c1", "eth0").unwrap()), ["10.0.0.50/24"]);
        let code = |r: &[IpAddr], id: &str| allocate(&store, &s, r, id, "eth0").unwrap_err().code();
        assert_eq!(code(&[ip("10.0.0.50")], "c2"), 107, "taken");
        assert_eq!(code(&[ip("10.0.0.1")], "c2"), 107, "gateway");
        assert_eq!(code(&[ip("10.9.0.1")], "c2"), 107, "in no range");
        assert_eq!(code(&[ip("10.0.0.7"), ip("10.0.0.8")], "c2"), 107, "two in one set");
        assert_eq!(code(&[ip("10.0.0.51")], "c1"), 107, "c1 already holds another");
        assert_eq!(store.reservations().unwrap().len(), 1);
    }

    fn index_entries(t: &Tmp) -> usize {
        std::fs::read_dir(t.0.join("n/.cni-chain-attachments")).map_or(0, |d| d.count())
    }

    #[test]
    fn the_index_finds_an_attachment_and_a_reference_made_one_is_found_by_reading_the_files() {
        let t = tmp("index");
        let store = Store::open(&t.0, "n").unwrap();
        let s = sets(&["10.0.0.0/24"]);
        let a = allocate(&store, &s, &[], "c1", "eth0").unwrap();
        assert_eq!(index_entries(&t), 1);
        assert_eq!(store.indexed("c1", "eth0"), Some(vec![ip("10.0.0.2")]));
        assert_eq!(addrs(&allocate(&store, &s, &[], "c1", "eth0").unwrap()), addrs(&a), "re-ADD by the index");
        // As the reference host-local writes it: no index entry.
        std::fs::write(t.0.join("n/10.0.0.9"), "c9\r\neth0").unwrap();
        check(&store, &s, None, "c9", "eth0").unwrap();
        assert_eq!(release(&store, "c9", "eth0").unwrap(), [ip("10.0.0.9")]);
        assert_eq!(release(&store, "c1", "eth0").unwrap(), [ip("10.0.0.2")]);
        assert_eq!(index_entries(&t), 0, "DEL removes the entry");
        assert!(!t.0.join("n/.cni-chain-attachments").exists(), "and the directory with the last one");
        assert!(store.reservations().unwrap().is_empty());
    }

    #[test]
    fn an_index_entry_the_files_contradict_is_not_trusted() {
        let t = tmp("stale");
        let store = Store::open(&t.0, "n").unwrap();
        let s = sets(&["10.0.0.0/24"]);
        allocate(&store, &s, &[], "c1", "eth0").unwrap();
        // The reference released c1 and gave its address to c2, leaving our entry behind.
        std::fs::write(t.0.join("n/10.0.0.2"), "c2\r\neth0").unwrap();
        assert_eq!(store.indexed("c1", "eth0"), Some(vec![]));
        assert_eq!(release(&store, "c1", "eth0").unwrap(), Vec::<IpAddr>::new(), "c2's address stays");
        assert_eq!(addrs(&allocate(&store, &s, &[], "c1", "eth0").unwrap()), ["10.0.0.3/24"]);
        assert_eq!(std::fs::read_to_string(t.0.join("n/10.0.0.2")).unwrap(), "c2\r\neth0");
    }

    #[test]
    fn check_and_gc() {
        let t = tmp("gc");
        let store = Store::open(&t.0, "n").unwrap();
        let s = sets(&["10.0.0.0/24"]);
        let a = allocate(&store, &s, &[], "c1", "eth0").unwrap();
        allocate(&store, &s, &[], "c2", "eth0").unwrap();
        let prev = CniResult { ips: a.clone(), ..Default::default() };
        check(&store, &s, Some(&prev), "c1", "eth0").unwrap();
        assert_eq!(check(&store, &s, Some(&prev), "c2", "eth0").unwrap_err().code(), 104);
        assert_eq!(check(&store, &s, None, "c3", "eth0").unwrap_err().code(), 104);
        let valid = [Attachment { container_id: "c1".into(), ifname: "eth0".into() }];
        assert_eq!(gc(&store, &valid).unwrap(), [ip("10.0.0.3")]);
        assert_eq!(store.reservations().unwrap().len(), 1);
        assert_eq!(index_entries(&t), 1, "GC dropped c2's entry");
        assert_eq!(gc(&store, &[]).unwrap(), [ip("10.0.0.2")]);
        assert_eq!(index_entries(&t), 0);
    }
}
