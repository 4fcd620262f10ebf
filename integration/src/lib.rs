//! Test harness: throwaway network namespaces (a parked thread that unshared, exposed as
//! `/proc/<pid>/task/<tid>/ns/net`, so nothing is mounted and everything vanishes with the test
//! process, even on a crash), CNI calls of the built plugins inside a "node" netns, and kernel state
//! read back with `ip -j`.

use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

pub mod egress;
pub mod runtimes;

/// Where the plugins under test are: `target/release` of this workspace, or `CNI_CHAIN_BIN_DIR` (the bench
/// measures the static release binaries).
pub fn bin_dir() -> PathBuf {
    let dir = match std::env::var_os("CNI_CHAIN_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"),
    };
    assert!(dir.join("ptp").is_file(), "build the plugins first: cargo build --release ({})", dir.display());
    dir.canonicalize().unwrap()
}

/// Debian's reference plugins (package containernetworking-plugins).
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// Our plugins, as `make build` (the Makefile's PLUGINS) builds and `make release` ships them.
pub const OURS: [&str; 7] = ["ptp", "host-local", "linkgroup", "masquerade", "egress-v4", "egress-v6", "policy-route"];

/// CNI_PATH for tests: ours first, then the reference plugins.
pub fn cni_path() -> String {
    format!("{}:{REFERENCE_DIR}", bin_dir().display())
}

/// A network namespace alive as long as this value.
pub struct Netns {
    path: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Netns {
    pub fn new() -> Netns {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET): run the tests as root");
            let path = format!("/proc/{}/task/{}/ns/net", std::process::id(), nix::unistd::gettid());
            ready_tx.send(path).unwrap();
            let _ = stop_rx.recv();
        });
        let path = ready_rx.recv().expect("netns thread died");
        let ns = Netns { path, stop: Some(stop_tx), thread: Some(thread) };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// A command that runs inside this netns.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let ns = File::open(&self.path).expect("open netns");
        let mut cmd = Command::new(program);
        // SAFETY: setns is a plain syscall, async-signal-safe between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        cmd
    }

    /// Run `f` on a thread inside this netns (sockets it opens stay in this netns).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = File::open(&self.path).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }

    /// A veth between this netns and `other`, with addresses on both ends, up; `group` on this end.
    pub fn link_to(&self, other: &Netns, name: &str, addrs: &[(&str, &str)], group: Option<u32>) {
        let peer = format!("{name}p");
        self.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
        // `ip link set netns` takes a pid: the parked thread's tid names its netns.
        let tid = other.path.split('/').nth(4).unwrap().to_string();
        self.ip(&["link", "set", &peer, "netns", &tid]);
        for (mine, theirs) in addrs {
            self.ip(&["addr", "add", mine, "dev", name, "nodad"]);
            other.ip(&["addr", "add", theirs, "dev", &peer, "nodad"]);
        }
        if let Some(g) = group {
            self.ip(&["link", "set", name, "group", &g.to_string()]);
        }
        self.ip(&["link", "set", name, "up"]);
        other.ip(&["link", "set", &peer, "up"]);
    }

    /// `nft -j list ruleset` here (the tests read nftables with the CLI; the plugins never do).
    pub fn nft_json(&self) -> Value {
        let out = self.command("nft").args(["-j", "list", "ruleset"]).output().expect("run nft");
        assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Elements of the set or map `name` (any table) as (key, comment); empty if it does not exist.
    pub fn nft_elements(&self, name: &str) -> Vec<(String, String)> {
        let ruleset = self.nft_json();
        let found = ruleset["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("set").or_else(|| o.get("map")))
            .find(|s| s["name"] == name);
        let Some(elems) = found.and_then(|s| s["elem"].as_array()) else {
            return Vec::new();
        };
        elems
            .iter()
            .map(|e| {
                // A map element is [key, verdict]; a key with a comment is {"elem": {"val", "comment"}}.
                let key = if e.is_array() { &e[0] } else { e };
                match key.get("elem") {
                    Some(el) => (el["val"].as_str().unwrap_or("").into(), el["comment"].as_str().unwrap_or("").into()),
                    None => (key.as_str().unwrap_or("").into(), String::new()),
                }
            })
            .collect()
    }

    /// Whether an nftables table of this name exists here (any family).
    pub fn has_nft_table(&self, table: &str) -> bool {
        let ruleset = self.nft_json();
        ruleset["nftables"].as_array().unwrap().iter().any(|o| o.get("table").is_some_and(|t| t["name"] == table))
    }

    /// The number of rules in our table `cni_chain`.
    pub fn our_nft_rules(&self) -> usize {
        let ruleset = self.nft_json();
        ruleset["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o.get("rule").is_some_and(|r| r["table"] == "cni_chain"))
            .count()
    }

    /// `nft args...` here; panics if it fails.
    pub fn nft(&self, args: &[&str]) -> String {
        let out = self.command("nft").args(args).output().expect("run nft");
        assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Listen on TCP here, let `client` connect to `addr` from its netns, and return the source
    /// address the connection arrived with here (None: it never arrived).
    pub fn peer_of(&self, client: &Netns, addr: &str) -> Option<std::net::IpAddr> {
        self.peer_via(client, addr, 0, None)
    }

    /// As `peer_of`, listening on `port` (0: any) while the client connects to `via_port` (a port mapping).
    pub fn peer_via(&self, client: &Netns, addr: &str, port: u16, via_port: Option<u16>) -> Option<std::net::IpAddr> {
        use std::net::{SocketAddr, TcpStream};
        let addr: std::net::IpAddr = addr.parse().unwrap();
        self.source_of(port, |listening| {
            let target = SocketAddr::new(addr, via_port.unwrap_or(listening));
            client.run(move || TcpStream::connect_timeout(&target, std::time::Duration::from_secs(3)).is_ok())
        })
    }

    /// Listen on TCP `port` (0: any) here, let `connect` (given the port) connect from elsewhere, and return
    /// the source address the connection arrived with (None: `connect` failed).
    /// Connections are accepted (and closed) as they come, for clients that wait for the server to close.
    pub fn source_of(&self, port: u16, connect: impl FnOnce(u16) -> bool) -> Option<std::net::IpAddr> {
        let listener = self.run(move || std::net::TcpListener::bind(("::", port)).expect("bind"));
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let acceptor = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok((_, peer)) = listener.accept() {
                    return Some(peer.ip().to_canonical());
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            None
        });
        let connected = connect(port);
        let peer = acceptor.join().unwrap();
        peer.filter(|_| connected)
    }

    /// Run `ip args...` here; panics if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = self.command("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j args...` parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let text = self.ip(&full);
        if text.trim().is_empty() {
            return json!([]);
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip {args:?} gave no JSON ({e}): {text}"))
    }

    /// A link by name, or None.
    pub fn link(&self, name: &str) -> Option<Value> {
        let links = self.ip_json(&["-d", "link", "show"]);
        links.as_array()?.iter().find(|l| l["ifname"] == name).cloned()
    }

    /// Names of veth links here.
    pub fn veths(&self) -> Vec<String> {
        let links = self.ip_json(&["link", "show", "type", "veth"]);
        links
            .as_array()
            .map(|a| a.iter().filter_map(|l| l["ifname"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// `address/prefix` strings on a link, link-local ones left out.
    pub fn addresses(&self, dev: &str) -> Vec<String> {
        let v = self.ip_json(&["addr", "show", "dev", dev]);
        v[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i["scope"] != "link")
                    .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or(""), i["prefixlen"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Routes of one family as `dst via gw dev scope` strings (main table), for readable asserts.
    pub fn routes(&self, family: &str) -> Vec<String> {
        let v = self.ip_json(&[family, "route", "show"]);
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let mut s = r["dst"].as_str().unwrap_or("").to_string();
                        if let Some(gw) = r["gateway"].as_str() {
                            s += &format!(" via {gw}");
                        }
                        s += &format!(" dev {}", r["dev"].as_str().unwrap_or(""));
                        if let Some(scope) = r["scope"].as_str() {
                            s += &format!(" scope {scope}");
                        }
                        s
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Everything a plugin could change in this netns, as text to compare before and after: links (with
    /// groups and aliases), addresses, routes and rules of every table, the whole nftables ruleset.
    pub fn state(&self) -> String {
        let mut out = String::new();
        for args in [
            &["-d", "link", "show"][..],
            &["addr", "show"],
            &["-4", "route", "show", "table", "all"],
            &["-6", "route", "show", "table", "all"],
            &["-4", "rule", "show"],
            &["-6", "rule", "show"],
        ] {
            out += &format!("## ip {}\n{}\n", args.join(" "), self.ip(args));
        }
        out + "## nft list ruleset\n" + &self.nft(&["list", "ruleset"])
    }

    /// `state` once the kernel's own changes are done: IPv6 duplicate address detection on every link.
    pub fn settled_state(&self) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let state = self.state();
            if !state.contains("tentative") || std::time::Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Foreign state for a test to prove it untouched: a veth pair, one end in group 9 with an address, a route in
    /// table 100 and a rule to it, and an nftables table with a chain, a rule and a set element.
    pub fn add_foreign_state(&self) {
        // A veth: this kernel has no dummy module.
        self.ip(&["link", "add", "foreign0", "type", "veth", "peer", "name", "foreign1"]);
        self.ip(&["link", "set", "foreign0", "group", "9", "alias", "not cni-chain's", "up"]);
        self.ip(&["addr", "add", "198.51.100.1/24", "dev", "foreign0"]);
        self.ip(&["route", "add", "203.0.113.0/24", "via", "198.51.100.2", "table", "100"]);
        self.ip(&["rule", "add", "from", "198.51.100.0/24", "table", "100", "priority", "500"]);
        let script = "table inet foreign {
            set blocked { type ipv4_addr; elements = { 203.0.113.9 }; }
            chain input { type filter hook input priority 0; ip saddr @blocked drop; }
            chain postrouting { type nat hook postrouting priority 100; oifgroup 9 masquerade; }
        }";
        let mut child = self.command("nft").args(["-f", "-"]).stdin(Stdio::piped()).spawn().expect("run nft");
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "nft -f: {script}");
    }

    /// A sysctl of this netns (`net/ipv6/conf/eth0/disable_ipv6`), trimmed.
    pub fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{key}");
        self.run(move || std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().to_string())
    }

    pub fn set_sysctl(&self, key: &str, value: &str) {
        let (path, value) = (format!("/proc/sys/{key}"), value.to_string());
        self.run(move || std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}")));
    }

    /// One ping to `addr`; true if answered.
    pub fn ping(&self, addr: &str) -> bool {
        self.command("ping")
            .args(["-c", "1", "-W", "2", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Names of the entries of `dir` (empty if it does not exist), sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The address reservations in a host-local store directory: the files named by an address, not its
/// lock, cursors or our index.
pub fn reservations_in(store: &Path) -> Vec<String> {
    file_names(store).into_iter().filter(|f| f.parse::<std::net::IpAddr>().is_ok()).collect()
}

/// Every file and directory below `dir` with its mode and content (symlinks as their target), sorted, to
/// compare before and after.
pub fn tree_state(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut lines = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                todo.push(path.clone());
                "/".into()
            } else {
                format!("{:?}", std::fs::read_to_string(&path).unwrap_or_default())
            };
            lines.push(format!("{name} {:o} {what}", meta.mode()));
        }
    }
    lines.sort();
    lines.join("\n")
}

/// Panic with the lines that differ (`-` before, `+` after) unless the two states are the same.
pub fn assert_same_state(before: &str, after: &str, context: &str) {
    if before == after {
        return;
    }
    let old: std::collections::HashSet<&str> = before.lines().collect();
    let new: std::collections::HashSet<&str> = after.lines().collect();
    let gone = before.lines().filter(|l| !new.contains(l)).map(|l| format!("- {l}"));
    let came = after.lines().filter(|l| !old.contains(l)).map(|l| format!("+ {l}"));
    panic!("{context} changed the host:\n{}", gone.chain(came).collect::<Vec<_>>().join("\n"));
}

/// Run `f(i)` for i in 0..n, `threads` at a time.
pub fn concurrently(n: usize, threads: usize, f: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                f(i);
            });
        }
    });
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "cni-chain-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn str(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Files below `sub` (empty if it does not exist), sorted.
    pub fn files(&self, sub: &str) -> Vec<String> {
        file_names(&self.0.join(sub))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a plugin call printed and returned.
#[derive(Debug)]
pub struct Reply {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    fn from(out: Output) -> Reply {
        Reply {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}\nstderr: {}", self.stdout, self.stderr))
    }

    /// Assert success and return the parsed result (Null when stdout is empty).
    pub fn ok(&self) -> Value {
        assert!(self.success, "plugin failed: {}\nstderr: {}", self.stdout, self.stderr);
        assert!(!self.stderr.contains("panicked"), "plugin panicked: {}", self.stderr);
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Assert a CNI error with `code` and return its message.
    pub fn err(&self, code: u64) -> String {
        assert!(!self.success, "expected error code {code}, got success: {}", self.stdout);
        assert!(!self.stderr.contains("panicked"), "plugin panicked: {}", self.stderr);
        let v = self.json();
        assert_eq!(v["code"], code, "wrong code: {v}\nstderr: {}", self.stderr);
        v["msg"].as_str().unwrap_or_default().to_string()
    }
}

/// One CNI call: the env the spec names, with any entry overridable or removable (value None).
pub struct Call<'a> {
    pub plugin: &'a str,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub env: Vec<(&'a str, Option<String>)>,
}

impl<'a> Call<'a> {
    pub fn new(plugin: &'a str, command: &'a str, container_id: &'a str, netns: &'a str) -> Self {
        Call { plugin, command, container_id, netns, ifname: "eth0", env: Vec::new() }
    }

    pub fn ifname(mut self, ifname: &'a str) -> Self {
        self.ifname = ifname;
        self
    }

    pub fn env(mut self, key: &'a str, value: Option<&str>) -> Self {
        self.env.push((key, value.map(String::from)));
        self
    }

    /// Run the plugin inside `node` with `stdin`.
    pub fn run(&self, node: &Netns, stdin: &[u8]) -> Reply {
        self.run_with(node, stdin, |_| {})
    }

    /// As `run`, letting the caller adjust the process (e.g. a private mount namespace).
    pub fn run_with(&self, node: &Netns, stdin: &[u8], adjust: impl FnOnce(&mut Command)) -> Reply {
        let child = self.spawn_with(node, stdin, adjust);
        Reply::from(child.wait_with_output().expect("wait plugin"))
    }

    /// Start the plugin with all of `stdin` written, without waiting for it.
    pub fn spawn_with(&self, node: &Netns, stdin: &[u8], adjust: impl FnOnce(&mut Command)) -> std::process::Child {
        let bin = plugin_path(self.plugin);
        // Ours get a PATH with nothing in it: they run no shell and no tool (only IPAM, from CNI_PATH).
        let path = match bin.starts_with(bin_dir()) {
            true => "/nonexistent/cni-chain-runs-no-tools".to_string(),
            false => std::env::var("PATH").unwrap_or_default(),
        };
        let mut cmd = node.command(bin);
        cmd.env_clear()
            .env("PATH", path)
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_NETNS", self.netns)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", cni_path());
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn plugin");
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child
    }
}

/// A plugin by name: ours if we build it, else the reference one; a path is taken as it is.
pub fn plugin_path(plugin: &str) -> PathBuf {
    if plugin.contains('/') {
        return PathBuf::from(plugin);
    }
    let ours = bin_dir().join(plugin);
    if ours.is_file() {
        ours
    } else {
        Path::new(REFERENCE_DIR).join(plugin)
    }
}

/// A conflist run the way libcni runs it: each plugin gets the list's name and cniVersion, ADD passes
/// each result on as the next plugin's prevResult, DEL goes in reverse, CHECK and DEL get the final result.
pub struct Chain {
    pub list: Value,
    /// Extra keys for every plugin's config (runtimeConfig, a dataDir override...).
    pub overrides: Vec<(usize, String, Value)>,
}

impl Chain {
    pub fn new(list: Value) -> Chain {
        Chain { list, overrides: Vec::new() }
    }

    /// The shipped conflist `name` from conflists/.
    pub fn shipped(name: &str) -> Chain {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conflists").join(name);
        Chain::new(serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
    }

    /// The shipped conflist `name` at cniVersion 1.1.0 (for GC and STATUS), each IPAM store in its own
    /// directory below `stores`.
    pub fn shipped_in(name: &str, stores: &Path) -> Chain {
        let mut chain = Chain::shipped(name);
        chain.list["cniVersion"] = json!("1.1.0");
        for i in 0..chain.plugins() {
            if chain.list["plugins"][i].get("ipam").is_some() {
                chain.list["plugins"][i]["ipam"]["dataDir"] = json!(stores.join(format!("{name}-{i}")));
            }
        }
        chain
    }

    pub fn plugins(&self) -> usize {
        self.list["plugins"].as_array().map_or(0, Vec::len)
    }

    /// The conflist as a runtime reads it from disk, overrides applied.
    pub fn conflist(&self) -> Value {
        let mut list = self.list.clone();
        for i in 0..self.plugins() {
            let mut c = self.config(i, None);
            let plugin = c.as_object_mut().unwrap();
            plugin.remove("cniVersion");
            plugin.remove("name");
            list["plugins"][i] = c;
        }
        list
    }

    /// Plugin `i`'s config as the runtime sends it.
    pub fn config(&self, i: usize, prev: Option<&Value>) -> Value {
        let mut c = self.list["plugins"][i].clone();
        c["cniVersion"] = self.list["cniVersion"].clone();
        c["name"] = self.list["name"].clone();
        for (idx, key, value) in &self.overrides {
            if *idx == i {
                let mut target = &mut c;
                let parts: Vec<&str> = key.split('.').collect();
                for part in &parts[..parts.len() - 1] {
                    target = &mut target[*part];
                }
                target[parts[parts.len() - 1]] = value.clone();
            }
        }
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    pub fn kind(&self, i: usize) -> String {
        self.list["plugins"][i]["type"].as_str().unwrap().to_string()
    }

    pub fn add(&self, node: &Netns, id: &str, netns: &str) -> Value {
        self.add_first(self.plugins(), node, id, netns).unwrap_or(Value::Null)
    }

    /// ADD of the first `n` plugins only; the last one's result.
    pub fn add_first(&self, n: usize, node: &Netns, id: &str, netns: &str) -> Option<Value> {
        let mut prev: Option<Value> = None;
        for i in 0..n {
            let conf = serde_json::to_vec(&self.config(i, prev.as_ref())).unwrap();
            let r = Call::new(&self.kind(i), "ADD", id, netns).run(node, &conf);
            prev = Some(r.ok());
        }
        prev
    }

    /// GC on every plugin with these valid attachments; each must succeed.
    pub fn gc(&self, node: &Netns, valid: &[(&str, &str)]) {
        for reply in self.each(node, "GC", valid) {
            reply.ok();
        }
    }

    pub fn check(&self, node: &Netns, id: &str, netns: &str, result: &Value) -> Vec<Reply> {
        (0..self.plugins())
            .map(|i| {
                let conf = serde_json::to_vec(&self.config(i, Some(result))).unwrap();
                Call::new(&self.kind(i), "CHECK", id, netns).run(node, &conf)
            })
            .collect()
    }

    pub fn del(&self, node: &Netns, id: &str, netns: &str, result: Option<&Value>) {
        for i in (0..self.plugins()).rev() {
            let conf = serde_json::to_vec(&self.config(i, result)).unwrap();
            Call::new(&self.kind(i), "DEL", id, netns).run(node, &conf).ok();
        }
    }

    /// A verb without an attachment (GC, STATUS) on every plugin; GC with these valid attachments.
    pub fn each(&self, node: &Netns, verb: &str, valid: &[(&str, &str)]) -> Vec<Reply> {
        (0..self.plugins())
            .map(|i| {
                let conf = with_valid_attachments(&self.config(i, None), valid);
                Call::new(&self.kind(i), verb, "", "").run(node, &conf)
            })
            .collect()
    }
}

/// `config` with `prevResult` set, as a runtime sends it for CHECK/DEL and to chained plugins.
pub fn with_prev_result(config: &Value, result: &Value) -> Vec<u8> {
    let mut c = config.clone();
    c["prevResult"] = result.clone();
    serde_json::to_vec(&c).unwrap()
}

/// `config` with GC's valid attachments.
pub fn with_valid_attachments(config: &Value, attachments: &[(&str, &str)]) -> Vec<u8> {
    let mut c = config.clone();
    c["cni.dev/valid-attachments"] =
        attachments.iter().map(|(id, ifname)| json!({"containerID": id, "ifname": ifname})).collect();
    serde_json::to_vec(&c).unwrap()
}
