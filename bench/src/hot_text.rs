//! `make hot-text`: the functions our plugins run on the calls that matter, in the order they first run, written
//! as a GNU ld script that puts them side by side at the start of the code (build/hot-text.ld; release-bins links
//! with it).
//!
//! Why: a plugin lives a millisecond, and the kernel maps its code 16 pages (64 KiB) around each page it first
//! touches, one page at a time when the file's page cache is in small pages (a binary as the linker wrote it, or as
//! read back from disk), then unmaps them all at exit. Spread over the whole binary, linkgroup's ADD run again
//! touched 76 pages of code in 8 of its 9 windows; side by side, 39 pages in 3 windows.
//!
//! How: each call is run under ptrace one instruction at a time, and each address is looked up in the linker's map
//! of the same build (`-Wl,-Map`) to find the input section (one function each, rustc's function sections) it is in.
//! Names are written without the hashes another toolchain changes (unless that names several copies of a generic
//! function), so a list made from an older build still places what it names; what it misses stays where it was.

use crate::pod::PodNetns;
use crate::setups::Chain;
use integration::{bin_dir, Netns};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// One input section of the linked executable: where it went, and the pattern that names it in a linker script.
#[derive(Debug, PartialEq)]
struct InputSection {
    addr: u64,
    size: u64,
    pattern: String,
}

/// The code input sections a GNU ld map lists under "Linker script and memory map", in address order.
fn parse_map(map: &str) -> Vec<InputSection> {
    let body = map.split_once("Linker script and memory map").map_or("", |(_, body)| body);
    let lines: Vec<&str> = body.lines().collect();
    let (mut out, mut exact) = (Vec::new(), Vec::new());
    for (i, line) in lines.iter().enumerate() {
        // " .text.name 0xADDR 0xSIZE file", or a long name alone with the rest on the next line.
        let Some(rest) = line.strip_prefix(" .text") else { continue };
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let mut fields: Vec<&str> = words.collect();
        if fields.is_empty() && !rest.contains(' ') {
            fields = lines.get(i + 1).map_or(vec![], |next| next.split_whitespace().collect());
        }
        let [addr, size, file] = fields[..] else { continue };
        let hex = |s: &str| s.strip_prefix("0x").and_then(|h| u64::from_str_radix(h, 16).ok());
        let (Some(addr), Some(size)) = (hex(addr), hex(size)) else { continue };
        if addr != 0 && size != 0 {
            out.push(InputSection { addr, size, pattern: pattern(name, file) });
            exact.push(format!("*({name})"));
        }
    }
    // A name without its hash can name several copies of a generic function (legacy names keep the type
    // arguments only in the hash): those are named exactly, or every copy would be placed with the one run.
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for section in &out {
        *copies.entry(section.pattern.as_str()).or_default() += 1;
    }
    let ambiguous: HashSet<String> = copies.into_iter().filter(|(_, n)| *n > 1).map(|(p, _)| p.to_string()).collect();
    for (section, exact) in out.iter_mut().zip(exact) {
        if ambiguous.contains(&section.pattern) && section.pattern.starts_with("*(") {
            section.pattern = exact;
        }
    }
    out.sort_by_key(|s| s.addr);
    out
}

/// A linker-script input section description for section `name` of `file`: the Rust object by section name alone
/// (its file name changes with every build), an archive member or another object by file and section.
fn pattern(name: &str, file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    if base.ends_with(".rcgu.o") {
        return format!("*({})", without_hashes(name));
    }
    match base.split_once('(') {
        Some((archive, member)) => format!("*{archive}:{}({name})", member.trim_end_matches(')')),
        None => format!("*{base}({name})"),
    }
}

/// A mangled name with its build-specific parts as `*`: a legacy name's `17h<16 hex digits>E` suffix, a v0 name's
/// crate disambiguators (`Cs<base 62>_`), and the numbers LTO appends to a local name it had twice (`.1269`,
/// `.llvm.123`).
fn without_hashes(name: &str) -> String {
    let renamed = name.rsplit_once('.').filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if let Some((base, _)) = renamed {
        let base = base.strip_suffix(".llvm").unwrap_or(base);
        return without_hashes(base) + "*";
    }
    let mut name = name.to_string();
    if let Some(at) = name.len().checked_sub(20) {
        let suffix = &name[at..];
        if suffix.starts_with("17h") && suffix.ends_with('E') && suffix[3..19].bytes().all(|b| b.is_ascii_hexdigit()) {
            name.replace_range(at + 3..at + 19, "*");
        }
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name.as_str();
    while let Some(at) = rest.find("Cs") {
        out.push_str(&rest[..at + 2]);
        rest = &rest[at + 2..];
        let run = rest.bytes().take_while(u8::is_ascii_alphanumeric).count();
        if run > 0 && rest[run..].starts_with('_') && rest[run + 1..].starts_with(|c: char| c.is_ascii_digit()) {
            out.push('*');
            rest = &rest[run..];
        }
    }
    out.push_str(rest);
    out
}

/// The addresses of the instructions `program` runs in its own code (a static executable's, below 4 GiB), in the
/// order first run, one instruction at a time under ptrace; and what it wrote on stdout.
fn trace(node: &Netns, program: &Path, env: Vec<(&str, String)>, stdin: Vec<u8>) -> (Vec<u64>, Vec<u8>) {
    let path = CString::new(program.as_os_str().as_encoded_bytes()).expect("a path");
    let mut envp: Vec<CString> = env.iter().map(|(k, v)| CString::new(format!("{k}={v}")).expect("env")).collect();
    envp.push(CString::new(format!("PATH={}", std::env::var("PATH").unwrap_or_default())).expect("PATH"));
    assert!(stdin.len() < 65536, "a config that fits in a pipe");
    node.run(move || {
        let argv = [path.as_ptr(), std::ptr::null()];
        let mut envv: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
        envv.push(std::ptr::null());
        let (mut input, mut output) = ([0; 2], [0; 2]);
        // SAFETY: plain syscalls on descriptors this thread owns; the child only calls async-signal-safe functions
        // (dup2, ptrace, execve, _exit) on memory prepared before the fork.
        unsafe {
            assert_eq!(libc::pipe2(input.as_mut_ptr(), libc::O_CLOEXEC), 0);
            assert_eq!(libc::pipe2(output.as_mut_ptr(), libc::O_CLOEXEC), 0);
            assert_eq!(libc::write(input[1], stdin.as_ptr().cast(), stdin.len()), stdin.len() as isize);
            libc::close(input[1]);
            let child = libc::fork();
            if child == 0 {
                libc::dup2(input[0], 0);
                libc::dup2(output[1], 1);
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                libc::execve(path.as_ptr(), argv.as_ptr(), envv.as_ptr());
                libc::_exit(127);
            }
            assert!(child > 0, "fork");
            libc::close(input[0]);
            libc::close(output[1]);
            let (mut seen, mut order) = (HashSet::new(), Vec::new());
            let mut status = 0;
            libc::waitpid(child, &mut status, 0); // stopped at the exec
            let mut signal = 0;
            while libc::WIFSTOPPED(status) {
                let mut regs: libc::user_regs_struct = std::mem::zeroed();
                libc::ptrace(libc::PTRACE_GETREGS, child, 0, &mut regs as *mut _);
                if regs.rip < 1 << 32 && seen.insert(regs.rip) {
                    order.push(regs.rip);
                }
                libc::ptrace(libc::PTRACE_SINGLESTEP, child, 0, signal);
                libc::waitpid(child, &mut status, 0);
                // A stop for a signal other than the step's own is handed on to the plugin.
                signal = match libc::WSTOPSIG(status) {
                    libc::SIGTRAP => 0,
                    other => other,
                };
            }
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{} failed", path.to_string_lossy());
            let mut stdout = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::read(output[0], buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                stdout.extend_from_slice(&buf[..n as usize]);
            }
            libc::close(output[0]);
            (order, stdout)
        }
    })
}

/// The patterns of the sections holding `addresses`, in order, each once.
fn sections_run(map: &[InputSection], addresses: &[u64], out: &mut Vec<String>, seen: &mut HashSet<String>) {
    for &addr in addresses {
        let at = map.partition_point(|s| s.addr <= addr);
        let Some(section) = at.checked_sub(1).map(|i| &map[i]) else { continue };
        if addr < section.addr + section.size && seen.insert(section.pattern.clone()) {
            out.push(section.pattern.clone());
        }
    }
}

/// The map the linker wrote for `plugin` into `maps`, named after the executable cargo links (`host_local-<hash>`).
fn map_of(maps: &Path, plugin: &str) -> Vec<InputSection> {
    let crate_name = plugin.replace('-', "_");
    let newest = std::fs::read_dir(maps)
        .expect("the maps directory")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(&crate_name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|hash| !hash.contains('-'))
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no linker map for {plugin} in {}", maps.display()));
    parse_map(&std::fs::read_to_string(newest.path()).expect("read the map"))
}

/// Traces the calls whose speed matters most first (an ADD run again, which changes nothing; then the first ADD of
/// each plugin of the chain, its DEL, and every plugin's VERSION) and writes the linker script to `out`.
pub fn run(maps: &Path, out: &Path) {
    assert!(maps.is_dir(), "{} is not a directory of linker maps (make hot-text writes them)", maps.display());
    let node = Netns::new();
    let (chain, pod, id) = (Chain::ours_chain(), PodNetns::new(), "hot-text");
    let binaries: Vec<PathBuf> = chain.binaries().cloned().collect();
    let name = |b: &Path| b.file_name().unwrap().to_string_lossy().into_owned();
    let mut calls: Vec<(String, Vec<u64>)> = Vec::new();
    let mut prev: Option<serde_json::Value> = None;
    for (i, binary) in binaries.iter().enumerate() {
        let (addresses, stdout) = trace(&node, binary, chain.env("ADD", id, &pod), chain.config(i, prev.as_ref()));
        calls.push((name(binary), addresses));
        prev = Some(serde_json::from_slice(&stdout).expect("a result"));
    }
    let result = prev.expect("a chain");
    // The ADDs run again go first: they are what the no-change aim measures, and the other calls add to them.
    for (i, binary) in binaries.iter().enumerate().skip(1).rev() {
        let (addresses, _) = trace(&node, binary, chain.env("ADD", id, &pod), chain.config(i, Some(&result)));
        calls.insert(0, (name(binary), addresses));
    }
    for (i, binary) in binaries.iter().enumerate().rev() {
        let (addresses, _) = trace(&node, binary, chain.env("DEL", id, &pod), chain.config(i, Some(&result)));
        calls.push((name(binary), addresses));
    }
    for plugin in crate::footprint::OURS {
        let env = vec![("CNI_COMMAND", "VERSION".to_string())];
        let (addresses, _) = trace(&node, &bin_dir().join(plugin), env, br#"{"cniVersion":"1.0.0"}"#.to_vec());
        calls.push((plugin.to_string(), addresses));
    }
    let (mut patterns, mut seen) = (Vec::new(), HashSet::new());
    for (plugin, addresses) in &calls {
        sections_run(&map_of(maps, plugin), addresses, &mut patterns, &mut seen);
        eprintln!("{plugin}: {} distinct instructions, {} sections so far", addresses.len(), patterns.len());
    }
    let mut script = String::from(
        "/* Written by `make hot-text` (bench/src/hot_text.rs); do not edit. The code our plugins run on an ADD run\n   \
         again, a chain's ADD and DEL and VERSION, in the order first run, placed together at the start of .text. */\n\
         SECTIONS\n{\n  .text.hot :\n  {\n",
    );
    for p in &patterns {
        script.push_str(&format!("    {p}\n"));
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    std::fs::write(out, script).expect("write the linker script");
    eprintln!("wrote {} ({} sections)", out.display(), patterns.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_gives_code_sections_in_address_order_with_stable_patterns() {
        let map = [
            "Discarded input sections",
            " .text.gone     0x0000000000000000       0x10 x.o",
            "",
            "Linker script and memory map",
            "",
            ".text           0x0000000000401010     0x2000",
            " *(.text.unlikely .text.*_unlikely .text.unlikely.*)",
            " .text           0x0000000000401010       0xab /usr/lib/musl/lib/crt1.o",
            "                0x0000000000401010                _start",
            " .text._ZN6common6plugin3run17h0123456789abcdefE",
            "                0x0000000000402000      0x200 /t/deps/lg-1.lg.abc-cgu.0.rcgu.o",
            " .text           0x0000000000401100       0x32 /r/self-contained/libc.a(memcpy.lo)",
            " .text.unused    0x0000000000000000        0x0 /t/x.rcgu.o",
            " .text._ZN4core3ptr13drop_in_place17h00000000000000aaE 0x0000000000403000 0x10 /t/lg.rcgu.o",
            " .text._ZN4core3ptr13drop_in_place17h00000000000000bbE 0x0000000000403010 0x10 /t/lg.rcgu.o",
        ]
        .join("\n");
        let sections = parse_map(&map);
        let patterns: Vec<&str> = sections.iter().map(|s| s.pattern.as_str()).collect();
        assert_eq!(
            patterns,
            [
                "*crt1.o(.text)",
                "*libc.a:memcpy.lo(.text)",
                "*(.text._ZN6common6plugin3run17h*E)",
                "*(.text._ZN4core3ptr13drop_in_place17h00000000000000aaE)",
                "*(.text._ZN4core3ptr13drop_in_place17h00000000000000bbE)",
            ],
            "two copies of a generic function are named exactly"
        );
        assert_eq!((sections[2].addr, sections[2].size), (0x402000, 0x200));
    }

    #[test]
    fn hashes_a_rebuild_changes_are_left_out() {
        assert_eq!(
            without_hashes("_RNvMs3_NtCsaz6eC2DG7lh_3std9panicking11begin_panic"),
            "_RNvMs3_NtCs*_3std9panicking11begin_panic"
        );
        assert_eq!(without_hashes("_ZN4core3fmt5write17hfedcba9876543210E"), "_ZN4core3fmt5write17h*E");
        assert_eq!(without_hashes("main"), "main");
        assert_eq!(
            without_hashes("_RNvXsZ_NtCs2Nb3gJ4iU0I_5alloc6string10write_char.1269"),
            "_RNvXsZ_NtCs*_5alloc6string10write_char*"
        );
        assert_eq!(without_hashes("_ZN4core3fmt5write17hfedcba9876543210E.llvm.42"), "_ZN4core3fmt5write17h*E*");
        assert_eq!(
            without_hashes("drop_in_place$LT$a..b$GT$"),
            "drop_in_place$LT$a..b$GT$",
            "legacy paths keep their dots"
        );
        assert_eq!(without_hashes("_ZN3Cs_17hxE"), "_ZN3Cs_17hxE", "not a disambiguator, not a hash");
    }

    #[test]
    fn addresses_are_looked_up_in_their_sections() {
        let map = vec![
            InputSection { addr: 0x1000, size: 0x10, pattern: "*(a)".into() },
            InputSection { addr: 0x2000, size: 0x10, pattern: "*(b)".into() },
        ];
        let (mut out, mut seen) = (vec![], HashSet::new());
        sections_run(&map, &[0x2004, 0x1000, 0x1fff, 0x2008, 0x500], &mut out, &mut seen);
        assert_eq!(out, ["*(b)", "*(a)"], "in first-run order, each once; between sections or before them: none");
    }
}
