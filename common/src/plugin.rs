//! The protocol loop every plugin's `main` hands itself to: read env + stdin, dispatch on the verb,
//! write the result or the spec's error JSON to stdout, exit non-zero on error. A panic becomes a CNI error.

use crate::conf::Config;
use crate::error::{CniError, Result};
use crate::invocation::{Command, Env, Invocation};
use crate::netns::Netns;
use crate::types::CniResult;
use crate::version::{CniVersion, SUPPORTED};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Configs are small; anything larger is hostile or broken and is refused before parsing.
const MAX_STDIN: u64 = 4 << 20;

pub trait Plugin {
    /// The executable's name, as runtimes find it in CNI_PATH and as its log lines say.
    const NAME: &'static str;
    /// What it does, in one line, for `--help` and `--version`.
    const ABOUT: &'static str;
    fn add(inv: &Invocation) -> Result<CniResult>;
    fn del(inv: &Invocation) -> Result<()>;
    fn check(inv: &Invocation) -> Result<()>;
    fn status(inv: &Invocation) -> Result<()>;
    fn gc(inv: &Invocation) -> Result<()>;
}

/// A plugin executable's entry point: C's `main` running `run::<P>` with the first argument, for a crate that
/// is `no_main`. Rust's own start-up is skipped: it looks up the main thread's stack in /proc/self/maps (for its
/// stack-overflow message), about 0.1 ms of every call; what else it does that a plugin needs, `run` does.
#[macro_export]
macro_rules! plugin_main {
    ($plugin:ty) => {
        #[cfg(not(test))]
        #[no_mangle]
        extern "C" fn main(argc: std::ffi::c_int, argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
            // SAFETY: C's start-up passes `argc` NUL-terminated strings in `argv`.
            $crate::run::<$plugin>(unsafe { $crate::plugin::first_arg(argc, argv) })
        }
        #[cfg(not(test))]
        #[global_allocator]
        static ALLOCATOR: $crate::arena::Arena = $crate::arena::Arena::new();
        // The unit tests' own harness has the entry point; the plugin is still this executable's.
        #[cfg(test)]
        const _: fn(Option<std::ffi::OsString>) -> ! = $crate::run::<$plugin>;
    };
}

/// The first argument after the program's name, from C's `main`: musl, unlike glibc, gives the standard
/// library no arguments in an executable without Rust's `main`.
///
/// # Safety
/// `argv` holds `argc` pointers to NUL-terminated strings, as C's start-up passes them to `main`.
pub unsafe fn first_arg(argc: std::ffi::c_int, argv: *const *const std::ffi::c_char) -> Option<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    if argc < 2 || argv.is_null() {
        return None;
    }
    // SAFETY: the caller's promise; index 1 exists since argc >= 2.
    let arg = unsafe { std::ffi::CStr::from_ptr(*argv.add(1)) };
    Some(std::ffi::OsStr::from_bytes(arg.to_bytes()).to_os_string())
}

/// Run one CNI call of plugin `P` and exit the process. Run by hand with `--version` or `--help` (its first
/// argument), it says what it is and how it is meant to be run.
pub fn run<P: Plugin>(first_arg: Option<std::ffi::OsString>) -> ! {
    // As Rust's start-up would: a write to a closed pipe (an IPAM plugin that exited without reading, a
    // runtime that stopped reading) is an error to handle, not a signal that kills.
    // SAFETY: setting SIGPIPE's disposition to "ignore" installs no handler code.
    let _ =
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) };
    if let Some(arg) = first_arg {
        let code = by_hand::<P>(&arg.to_string_lossy());
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
    std::panic::set_hook(Box::new(|info| log::error!("panic: {info}")));
    let env = Env(|k: &str| std::env::var(k).ok());
    let (reply, ok) = match catch_unwind(AssertUnwindSafe(|| serve::<P>(&env))) {
        Ok(Ok(reply)) => (reply, true),
        Ok(Err((version, e))) => {
            log::error!("{e}");
            (Some(e.to_json(version)), false)
        }
        Err(panic) => (Some(CniError::Internal(panic_message(&*panic)).to_json(CniVersion::LATEST.as_str())), false),
    };
    if let Some(reply) = reply {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &reply);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
    // All is written: `_exit` skips only libc's exit-time code (C's fini functions, musl's own streams, which we never
    // use), whose one call would fault in a page of otherwise cold code at the end of every call.
    // SAFETY: ends the process; nothing of Rust's is left to run or flush.
    unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
}

/// What a caught panic said.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

type Failure = (&'static str, CniError);

fn serve<P: Plugin>(env: &Env<impl Fn(&str) -> Option<String>>) -> std::result::Result<Option<Value>, Failure> {
    let latest = CniVersion::LATEST.as_str();
    let command = env.command().map_err(|e| {
        if env.raw("CNI_COMMAND").is_none() {
            // Run by hand: say how it is meant to be run (the error on stdout stays, for a runtime).
            eprintln!("{}\n", help_text::<P>());
        }
        (latest, e)
    })?;
    let stdin = read_stdin().map_err(|e| (latest, e))?;
    if command == Command::Version {
        return Ok(Some(version_info()));
    }
    let config = Config::parse(stdin).map_err(|e| (latest, e))?;
    let version = config.version.as_str();
    crate::logging::init(P::NAME, command, &config, &env.raw("CNI_CONTAINERID").unwrap_or_default());
    let inv = env.invocation(command, config).map_err(|e| (version, e))?;
    if matches!(command, Command::Add | Command::Check | Command::Del) {
        // A CNI_NETNS that is not a netns (a regular file, a symlink to one) is refused before any change.
        Netns::open_for_del(&inv.netns).map_err(|e| (version, e))?;
    }
    log::debug!("ifname={} netns={} config type {}", inv.ifname, inv.netns, inv.config.net.kind);
    // Only when it is logged: musl's first clock read looks the clock up in the vDSO.
    let started = log::log_enabled!(log::Level::Info).then(std::time::Instant::now);
    let out = match command {
        Command::Add => P::add(&inv).map(|r| Some(r.to_value(inv.config.version))),
        Command::Del => P::del(&inv).map(|_| None),
        Command::Check => P::check(&inv).map(|_| None),
        Command::Status => P::status(&inv).map(|_| None),
        Command::Gc => P::gc(&inv).map(|_| None),
        Command::Version => unreachable!("handled above"),
    };
    if let Some(started) = started {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match &out {
            Ok(_) => log::info!("{} ok in {ms:.1} ms", command.as_str()),
            Err(e) => log::info!("{} failed with code {} in {ms:.1} ms", command.as_str(), e.code()),
        }
    }
    out.map_err(|e| (version, e))
}

/// `--version` and `--help` on stdout; anything else is a mistake, said on stderr.
fn by_hand<P: Plugin>(arg: &str) -> i32 {
    match arg {
        "--version" | "-V" | "version" => {
            println!("{}", version_text::<P>());
            0
        }
        "--help" | "-h" | "help" => {
            println!("{}", help_text::<P>());
            0
        }
        other => {
            eprintln!("{}: unknown argument {other:?}\n\n{}", P::NAME, help_text::<P>());
            2
        }
    }
}

/// The release and the commit every binary of ours was built from.
pub const BUILD: &str = concat!(env!("CARGO_PKG_VERSION"), " (cni-chain, commit ", env!("CNI_CHAIN_COMMIT"), ")");

fn version_text<P: Plugin>() -> String {
    let versions: Vec<&str> = SUPPORTED.iter().map(|v| v.as_str()).collect();
    format!("{} {BUILD}\nCNI versions: {}\n{}", P::NAME, versions.join(", "), P::ABOUT)
}

fn help_text<P: Plugin>() -> String {
    format!(
        "{name}: {about}

A CNI plugin: a container runtime (containerd, CRI-O, Podman) or cnitool runs it, with the network config
(JSON) on stdin and CNI_COMMAND (ADD, DEL, CHECK, STATUS, GC or VERSION), CNI_CONTAINERID, CNI_NETNS,
CNI_IFNAME and CNI_PATH in the environment. It answers on stdout: the result, or the error as JSON.

To try it by hand, put it in a conflist in /etc/cni/net.d and use cnitool:
    cnitool add <network name> /var/run/netns/<pod>
or ask which CNI versions it speaks:
    CNI_COMMAND=VERSION {name} </dev/null

Options: --version, --help",
        name = P::NAME,
        about = P::ABOUT
    )
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::Io(format!("reading stdin: {e}")))?;
    if buf.len() as u64 > MAX_STDIN {
        return Err(CniError::Decode(format!("network config is larger than {MAX_STDIN} bytes")));
    }
    Ok(buf)
}

pub fn version_info() -> Value {
    json!({
        "cniVersion": CniVersion::LATEST.as_str(),
        "supportedVersions": SUPPORTED.map(|v| v.as_str()),
    })
}
