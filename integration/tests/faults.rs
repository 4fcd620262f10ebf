//! Faults: a plugin killed with SIGKILL at a random moment of its ADD, then the runtime's DEL (with no
//! prevResult, as after a failed ADD) and GC, leave no veth, no reservation, no nftables element, no index
//! entry, record or temporary file, no policy rule of ours, and no IPAM lock held. A step that fails inside ADD rolls the whole ADD back.

use integration::runtimes::{node_with_uplink, policy_route_on_one_uplink};
use integration::{assert_same_state, reservations_in, tree_state, Call, Chain, Netns, TempDir};
use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A small xorshift generator: the seed is printed, so a failing run can be replayed with FAULT_SEED.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        eprintln!("FAULT_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The chains under test at cniVersion 1.1.0 (for GC), their stores in `stores`; masquerade per pod so that
/// every pod has nftables elements of its own.
fn chains(stores: &Path) -> Vec<Chain> {
    let mut out = Vec::new();
    for name in
        ["20-cni-chain-masquerade.conflist", "30-cni-chain-egress-v4.conflist", "35-cni-chain-egress-v6.conflist"]
    {
        let mut chain = Chain::shipped_in(name, stores);
        for i in 0..chain.plugins() {
            if chain.kind(i) == "masquerade" {
                chain.list["plugins"][i] = json!({"type": "masquerade", "mode": "pod"});
            }
        }
        out.push(chain);
    }
    // The policy-route conflist, pointed at this node's one uplink, with its records among the stores.
    out.push(policy_route_on_one_uplink(stores));
    out
}

/// Run plugin `i` of `chain` for ADD and SIGKILL it after `delay`; wait until it and its IPAM child are gone.
/// True if the kill landed (the plugin had not finished).
fn add_killed(
    chain: &Chain,
    i: usize,
    node: &Netns,
    id: &str,
    pod: &Netns,
    prev: Option<&Value>,
    delay: Duration,
) -> bool {
    let conf = serde_json::to_vec(&chain.config(i, prev)).unwrap();
    let kind = chain.kind(i);
    // Its own process group, so the test can see when its IPAM child has died with it too.
    let mut child = Call::new(&kind, "ADD", id, pod.path()).spawn_with(node, &conf, |c| {
        c.process_group(0);
    });
    let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
    std::thread::sleep(delay);
    let _ = child.kill();
    let killed = killed_by_the_signal(&mut child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::kill(group, None).is_ok() {
        assert!(Instant::now() < deadline, "the IPAM plugin outlived the killed {kind}");
        std::thread::sleep(Duration::from_millis(2));
    }
    killed
}

fn killed_by_the_signal(child: &mut std::process::Child) -> bool {
    use std::os::unix::process::ExitStatusExt;
    child.wait().unwrap().signal() == Some(9)
}

/// Enough kills must land mid-way, or the test tests nothing (here: 60 to 80% do; a third is the floor).
fn assert_enough_landed(landed: usize, runs: usize) {
    eprintln!("{landed} of {runs} kills landed before the plugin finished");
    assert!(landed * 3 >= runs, "only {landed} of {runs} kills landed mid-way: lengthen the plugins' window");
}

/// The window after a kill: one that came after the plugin finished says the machine is quicker now than
/// when the window was measured (under the load of other tests), so the next kill aims a quarter earlier;
/// one that landed lets the window grow back towards the measured time, so late moments stay covered.
fn adapt(window: &mut u64, measured: u64, landed: bool) {
    *window = if landed { (*window * 9 / 8 + 1).min(measured.max(1)) } else { (*window * 3 / 4).max(1) };
}

/// How long each plugin of `chain` takes for ADD here (the shortest of three runs), so kills can be
/// aimed inside that window: our plugins are quick, and a kill after the end tests nothing.
fn add_durations(chain: &Chain, node: &Netns) -> Vec<Duration> {
    let mut best = vec![Duration::MAX; chain.plugins()];
    for round in 0..3 {
        let (pod, id) = (Netns::new(), format!("timing-{round}"));
        let mut prev: Option<Value> = None;
        for (i, best) in best.iter_mut().enumerate() {
            let conf = serde_json::to_vec(&chain.config(i, prev.as_ref())).unwrap();
            let kind = chain.kind(i);
            let start = Instant::now();
            prev = Some(Call::new(&kind, "ADD", &id, pod.path()).run(node, &conf).ok());
            *best = (*best).min(start.elapsed());
        }
        chain.del(node, &id, pod.path(), prev.as_ref());
    }
    best
}

/// Every `lock` file below `dir` can be locked at once: nobody holds one.
fn assert_no_lock_held(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            assert_no_lock_held(&path);
        } else if path.file_name().is_some_and(|n| n == "lock") {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: flock on an fd we own.
            let locked = unsafe { nix::libc::flock(file.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB) };
            assert_eq!(locked, 0, "{} is still locked", path.display());
        }
    }
}

/// Nothing of any attachment is left: no pod veth on the node, no reservation, index entry or temporary
/// file in the stores, no element in our nftables sets and maps, no lock held.
fn assert_nothing_left(node: &Netns, stores: &Path, context: &str) {
    let veths: Vec<String> = node.veths().into_iter().filter(|v| v != "uplink").collect();
    assert!(veths.is_empty(), "{context}: veths left: {veths:?}");
    let files = tree_state(stores);
    for line in files.lines() {
        let name = line.split(' ').next().unwrap();
        let leaf = Path::new(name).file_name().unwrap().to_string_lossy().into_owned();
        let allowed = leaf == "lock" || leaf.starts_with("last_reserved_ip.") && !leaf.ends_with(".tmp");
        let is_store_dir = line.contains(" 40700 /") && !name.contains(".cni-chain-attachments");
        assert!(allowed || is_store_dir || Path::new(name).components().count() == 1, "{context}: left {line}");
    }
    for dir in std::fs::read_dir(stores).into_iter().flatten().flatten() {
        for net in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            assert!(reservations_in(&net.path()).is_empty(), "{context}: reservations left: {files}");
        }
    }
    for set in [
        "pods_v4",
        "pods_v6",
        "ptp_pods_v4",
        "ptp_pods_v6",
        "masq_group_8_v4",
        "masq_group_8_v6",
        "egress_v4_192_0_2_1",
        "egress_v6_2001_db8__1",
    ] {
        assert!(node.nft_elements(set).is_empty(), "{context}: elements left in {set}");
    }
    for family in ["-4", "-6"] {
        let rules = node.ip(&[family, "rule"]);
        assert!(!rules.contains("proto 77"), "{context}: policy-route rules left: {rules}");
    }
    assert!(!node.has_nft_table("cni_chain_policy_route"), "{context}: policy-route's table left");
    assert_no_lock_held(stores);
}

#[test]
fn sigkill_at_random_moments_of_add_then_del_and_gc_leave_nothing() {
    let (node, _outside) = node_with_uplink();
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    let stores = TempDir::new("faults");
    let chains = chains(stores.path());
    let windows: Vec<Vec<Duration>> = chains.iter().map(|c| add_durations(c, &node)).collect();
    eprintln!("ADD times per plugin: {windows:?}");
    let measured: Vec<Vec<u64>> = windows.iter().map(|w| w.iter().map(|d| d.as_micros() as u64).collect()).collect();
    let mut windows = measured.clone();
    let mut rng = Rng::new();
    let (runs, mut landed) = (120, 0);
    for run in 0..runs {
        let chain = &chains[run % chains.len()];
        // Which plugin dies, and when: anywhere in the time its ADD takes.
        let victim = rng.below(chain.plugins() as u64) as usize;
        let window = &mut windows[run % chains.len()][victim];
        let delay = Duration::from_micros(rng.below((*window).max(1)));
        let (pod, id) = (Netns::new(), format!("killed-{run}"));
        let prev = chain.add_first(victim, &node, &id, pod.path());
        let hit = add_killed(chain, victim, &node, &id, &pod, prev.as_ref(), delay);
        adapt(window, measured[run % chains.len()][victim], hit);
        landed += hit as usize;
        let context = format!("run {run}: plugin {victim} killed after {delay:?}");
        // The runtime saw ADD fail: DEL with no prevResult, then GC with nothing valid.
        chain.del(&node, &id, pod.path(), None);
        chain.gc(&node, &[]);
        let left = ["eth0", "v4if0", "v6if0"].into_iter().filter(|i| pod.link(i).is_some()).collect::<Vec<_>>();
        assert!(left.is_empty(), "{context}: pod interfaces left: {left:?}");
        assert_nothing_left(&node, stores.path(), &context);
    }
    assert_enough_landed(landed, runs);
}

#[test]
fn a_killed_host_local_then_del_and_gc_leave_nothing() {
    let node = Netns::new();
    let stores = TempDir::new("faults-ipam");
    let chain = Chain::new(json!({
        "cniVersion": "1.1.0", "name": "killed",
        "plugins": [{"type": "host-local", "ipam": {"type": "host-local", "dataDir": stores.path(),
                     "ranges": [[{"subnet": "10.70.0.0/24"}], [{"subnet": "fd70::/64"}]]}}]
    }));
    let measured = add_durations(&chain, &node)[0].as_micros() as u64;
    let mut window = measured;
    let (mut rng, runs, mut landed) = (Rng::new(), 100, 0);
    for run in 0..runs {
        let (pod, id) = (Netns::new(), format!("ipam-{run}"));
        let delay = Duration::from_micros(rng.below(window.max(1)));
        let hit = add_killed(&chain, 0, &node, &id, &pod, None, delay);
        adapt(&mut window, measured, hit);
        landed += hit as usize;
        chain.del(&node, &id, pod.path(), None);
        chain.gc(&node, &[]);
        assert_nothing_left(&node, stores.path(), &format!("host-local run {run}"));
    }
    assert_enough_landed(landed, runs);
}

/// nftables refuses our batch: a chain of our name already exists with another hook (as if made by hand).
fn impostor_chain(node: &Netns, chain: &str) {
    node.nft(&["add", "table", "inet", "cni_chain"]);
    node.nft(&["add", "chain", "inet", "cni_chain", chain, "{ type filter hook forward priority 0; }"]);
}

#[test]
fn nftables_refusing_rolls_back_the_whole_add() {
    let (node, _outside) = node_with_uplink();
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
    let stores = TempDir::new("faults-nft");
    let pod = Netns::new();
    impostor_chain(&node, "masq_pods");
    impostor_chain(&node, "ptp_masq");
    impostor_chain(&node, "egress_v4_192_0_2_1");
    impostor_chain(&node, "egress_v6_2001_db8__1");
    // ptp turns forwarding on (and the kernel adds anycast routes): that is meant to stay.
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        assert!(node.command("sysctl").args(["-qw", &format!("{key}=1")]).status().unwrap().success());
    }
    let before = [node.settled_state(), pod.settled_state()].join("\n");

    // ptp with ipMasq: IPAM and the veth were done when nftables refused.
    let ptp = json!({
        "cniVersion": "1.1.0", "name": "refused", "type": "ptp", "ipMasq": true,
        "ipam": {"type": "host-local", "dataDir": stores.path(), "ranges": [[{"subnet": "10.71.0.0/24"}]]}
    });
    Call::new("ptp", "ADD", "refused", pod.path()).run(&node, &serde_json::to_vec(&ptp).unwrap()).err(108);
    assert_nothing_left(&node, stores.path(), "ptp ipMasq");

    // The masquerade and egress chains: the failing plugin undoes its own part; the runtime's DEL the rest.
    // (policy-route's nftables are in a table of its own: its failed ADD is in tests/policy_route.rs.)
    for chain in chains(stores.path()).into_iter().filter(|c| c.kind(c.plugins() - 1) != "policy-route") {
        let last = chain.plugins() - 1;
        let prev = chain.add_first(last, &node, "refused", pod.path());
        let kind = chain.kind(last);
        let conf = serde_json::to_vec(&chain.config(last, prev.as_ref())).unwrap();
        Call::new(&kind, "ADD", "refused", pod.path()).run(&node, &conf).err(108);
        if let Some(egress_if) = [("egress-v4", "v4if0"), ("egress-v6", "v6if0")].iter().find(|(k, _)| *k == kind) {
            assert!(pod.link(egress_if.1).is_none(), "{kind} left its pod interface");
            assert_eq!(node.veths().len(), 2, "{kind} left its host veth");
        }
        chain.del(&node, "refused", pod.path(), None);
        assert_nothing_left(&node, stores.path(), &kind);
    }
    // The impostor chains are not ours to remove, and nothing else changed.
    assert_same_state(&before, &[node.state(), pod.state()].join("\n"), "a refused ADD and its DEL");
}
