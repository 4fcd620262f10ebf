//! IPAM delegation: run the `ipam.type` plugin from CNI_PATH with our env and stdin, as the spec says.

use crate::error::{CniError, Result};
use crate::host_local::{self, HostLocal};
use crate::invocation::{Command, Invocation};
use crate::logging::{self, HOST_LOCAL_TARGET};
use crate::plugin::Plugin;
use crate::types::CniResult;
use serde::Deserialize;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

fn ipam_type(inv: &Invocation) -> Result<&str> {
    let kind = inv.config.net.ipam.as_ref().map(|i| i.kind.as_str()).unwrap_or("");
    if kind.is_empty() {
        return Err(CniError::InvalidConfig("ipam.type is required".into()));
    }
    if kind.contains('/') || kind == "." || kind == ".." {
        return Err(CniError::InvalidConfig(format!("ipam.type {kind:?} must be a plugin name, not a path")));
    }
    Ok(kind)
}

/// Find a plugin binary in CNI_PATH.
pub fn find_plugin(inv: &Invocation, name: &str) -> Result<PathBuf> {
    find_in_path(&inv.path, name)
}

/// Find plugin `name` in the directories of a CNI_PATH, first match wins (as libcni looks).
pub fn find_in_path(path: &[PathBuf], name: &str) -> Result<PathBuf> {
    path.iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::InvalidConfig(format!("plugin {name:?} not found in CNI_PATH {path:?}")))
}

/// Run the IPAM plugin for `command` with the config we were given. Returns its result for ADD.
pub fn exec(inv: &Invocation, command: Command) -> Result<Option<CniResult>> {
    start(inv, command)?.finish()
}

/// An IPAM call under way, so the caller can do its own work (such as a veth delete's RCU wait) meanwhile.
pub struct Pending {
    kind: String,
    command: Command,
    call: Call,
}

enum Call {
    Process(std::process::Child),
    /// Our own host-local, run in this process: its outcome.
    Done(Result<Option<CniResult>>),
}

/// Start the IPAM plugin for `command`; `finish` waits for it. When `ipam.type` is our host-local of this very
/// build, its code runs here instead of in a process of its own (a fork and exec saved); any other executable of
/// that name is run as always.
pub fn start(inv: &Invocation, command: Command) -> Result<Pending> {
    let kind = ipam_type(inv)?;
    let bin = find_plugin(inv, kind)?;
    if kind == HostLocal::NAME && host_local::is_same_build(&bin) {
        log::debug!(
            "{} is our host-local of this very build: its {} runs in this process",
            bin.display(),
            command.as_str()
        );
        let call = Call::Done(host_local_here(inv, command));
        return Ok(Pending { kind: kind.to_string(), command, call });
    }
    let mut process = Process::new(&bin);
    die_with_parent(&mut process);
    let mut child = process
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_PATH", std::env::join_paths(&inv.path).unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::Delegate(format!("running IPAM plugin {}: {e}", bin.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading gives EPIPE: its exit status says what happened.
        let _ = stdin.write_all(inv.config.raw());
    }
    Ok(Pending { kind: kind.to_string(), command, call: Call::Process(child) })
}

/// host-local's verb as its executable would run it (it sees the same config, netns and environment), and
/// its answer read back as a delegating plugin reads any IPAM plugin's: the result through its JSON at the
/// config's version, an error as a delegated one, a panic as the executable's code 105.
fn host_local_here(inv: &Invocation, command: Command) -> Result<Option<CniResult>> {
    let inv = Invocation { command, ..inv.clone() };
    let version = inv.config.version;
    logging::set_in_process_verb(command.as_str());
    let started = std::time::Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| match command {
        Command::Add => HostLocal::add(&inv).map(|r| Some(r.to_value(version))),
        Command::Del => HostLocal::del(&inv).map(|_| None),
        Command::Check => HostLocal::check(&inv).map(|_| None),
        Command::Status => HostLocal::status(&inv).map(|_| None),
        Command::Gc => HostLocal::gc(&inv).map(|_| None),
        Command::Version => Ok(None),
    }))
    .unwrap_or_else(|panic| Err(CniError::Internal(crate::plugin::panic_message(&*panic))));
    // The lines host-local's own process would write.
    let (verb, ms) = (command.as_str(), started.elapsed().as_secs_f64() * 1000.0);
    match &outcome {
        Ok(_) => log::info!(target: HOST_LOCAL_TARGET, "{verb} ok in {ms:.1} ms"),
        Err(e) => {
            log::error!(target: HOST_LOCAL_TARGET, "{e}");
            log::info!(target: HOST_LOCAL_TARGET, "{verb} failed with code {} in {ms:.1} ms", e.code());
        }
    }
    match outcome {
        Ok(Some(result)) => CniResult::from_value(&result).map(Some),
        Ok(None) => Ok(None),
        Err(e) => {
            let reply = serde_json::to_vec(&e.to_json(version.as_str())).unwrap_or_default();
            Err(delegated_error(HostLocal::NAME, &reply, None))
        }
    }
}

/// The IPAM plugin is killed if we are (a runtime's timeout sends SIGKILL to us alone): left running, it
/// could reserve an address after the runtime's DEL has already released the attachment's.
fn die_with_parent(process: &mut Process) {
    let parent = std::process::id() as nix::libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe syscalls, fine between fork and exec.
    unsafe {
        process.pre_exec(move || {
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // We may have died before the prctl: then nobody waits for this call.
            if nix::libc::getppid() != parent {
                return Err(std::io::Error::other("the calling plugin is gone"));
            }
            Ok(())
        });
    }
}

impl Pending {
    /// Wait for the IPAM plugin; its result for ADD.
    pub fn finish(self) -> Result<Option<CniResult>> {
        let kind = &self.kind;
        let child = match self.call {
            Call::Process(child) => child,
            Call::Done(outcome) => return outcome,
        };
        let out =
            child.wait_with_output().map_err(|e| CniError::Delegate(format!("waiting for IPAM plugin {kind}: {e}")))?;
        if !out.status.success() {
            return Err(delegated_error(kind, &out.stdout, Some(out.status)));
        }
        if self.command != Command::Add {
            return Ok(None);
        }
        let value: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| CniError::Delegate(format!("IPAM plugin {kind} returned no valid result: {e}")))?;
        CniResult::from_value(&value).map(Some)
    }
}

fn delegated_error(kind: &str, stdout: &[u8], status: Option<std::process::ExitStatus>) -> CniError {
    #[derive(Deserialize)]
    struct Reply {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<Reply>(stdout) {
        Ok(r) => CniError::Delegated { code: r.code, msg: format!("IPAM {kind}: {}", r.msg), details: r.details },
        Err(_) => CniError::Delegate(format!(
            "IPAM plugin {kind} failed ({}) without a CNI error",
            status.map(|s| s.to_string()).unwrap_or_default()
        )),
    }
}

/// Release the addresses of this attachment after a failed ADD; the original error is what matters.
pub fn rollback(inv: &Invocation) {
    if let Err(e) = exec(inv, Command::Del) {
        log::warn!("rolling back IPAM allocation: {e}");
    }
}
