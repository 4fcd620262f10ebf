//! One plugin call: the CNI_* environment, validated, plus the config from stdin.

use crate::conf::Config;
use crate::error::{CniError, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => return Err(CniError::InvalidEnv(format!("unknown CNI_COMMAND {other:?}"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// Verbs that act on one attachment and so need CNI_CONTAINERID and CNI_IFNAME.
    fn needs_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// `CNI_ARGS`: `K=V;K2=V2`. Unknown keys are the caller's to reject unless `IgnoreUnknown` is set.
#[derive(Debug, Clone, Default)]
pub struct CniArgs {
    pub pairs: BTreeMap<String, String>,
}

impl CniArgs {
    pub fn parse(s: &str) -> Result<Self> {
        let mut pairs = BTreeMap::new();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| CniError::InvalidEnv(format!("CNI_ARGS: {part:?} is not KEY=VALUE")))?;
            pairs.insert(k.to_string(), v.to_string());
        }
        Ok(CniArgs { pairs })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.get(key).map(String::as_str)
    }

    pub fn ignore_unknown(&self) -> bool {
        self.get("IgnoreUnknown").is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"))
    }

    /// Error on a key this plugin does not know, as the Go plugins do, unless `IgnoreUnknown`.
    pub fn check_known(&self, known: &[&str]) -> Result<()> {
        if self.ignore_unknown() {
            return Ok(());
        }
        match self.pairs.keys().find(|k| *k != "IgnoreUnknown" && !known.contains(&k.as_str())) {
            Some(k) => Err(CniError::InvalidEnv(format!("CNI_ARGS: unknown key {k:?} (set IgnoreUnknown=1 to allow)"))),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// Empty when the runtime sent none (DEL after the sandbox is gone).
    pub netns: String,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
    pub config: Config,
}

/// Reads the environment through a lookup so tests need not touch the process env.
pub struct Env<F: Fn(&str) -> Option<String>>(pub F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn get(&self, key: &str) -> String {
        (self.0)(key).unwrap_or_default()
    }

    /// A variable as it is, unvalidated (for log lines and for telling "unset" from "empty").
    pub fn raw(&self, key: &str) -> Option<String> {
        (self.0)(key)
    }

    pub fn command(&self) -> Result<Command> {
        let c = self.get("CNI_COMMAND");
        if c.is_empty() {
            return Err(CniError::InvalidEnv("CNI_COMMAND is not set".into()));
        }
        Command::parse(&c)
    }

    pub fn invocation(&self, command: Command, config: Config) -> Result<Invocation> {
        let container_id = self.get("CNI_CONTAINERID");
        let netns = self.get("CNI_NETNS");
        let ifname = self.get("CNI_IFNAME");
        if command.needs_attachment() {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
            if netns.is_empty() && command != Command::Del {
                return Err(CniError::InvalidEnv("CNI_NETNS is not set".into()));
            }
        }
        let path_var = self.get("CNI_PATH");
        if path_var.is_empty() {
            return Err(CniError::InvalidEnv("CNI_PATH is not set".into()));
        }
        let path = path_var.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect();
        let args = CniArgs::parse(&self.get("CNI_ARGS"))?;
        match command {
            Command::Check if !config.version.supports_check() => {
                return Err(CniError::IncompatibleVersion(format!(
                    "CHECK needs cniVersion 0.4.0 or later, config has {}",
                    config.version
                )))
            }
            Command::Gc | Command::Status if !config.version.supports_gc_and_status() => {
                return Err(CniError::IncompatibleVersion(format!(
                    "{} needs cniVersion 1.1.0 or later, config has {}",
                    command.as_str(),
                    config.version
                )))
            }
            _ => {}
        }
        Ok(Invocation { command, container_id, netns, ifname, args, path, config })
    }
}

/// The spec's container ID: starts alphanumeric, then alphanumerics, `_`, `.`, `-` (so no `/`, no NUL).
pub fn validate_container_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(CniError::InvalidEnv("CNI_CONTAINERID is not set".into()));
    }
    let first_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(CniError::InvalidEnv(format!("CNI_CONTAINERID {id:?} has characters outside [A-Za-z0-9_.-]")));
    }
    Ok(())
}

/// A Linux interface name: 1–15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |why: &str| CniError::InvalidEnv(format!("CNI_IFNAME {name:?} {why}"));
    if name.is_empty() {
        return Err(bad("is not set"));
    }
    if name.len() > 15 {
        return Err(bad("is longer than 15 characters"));
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0') {
        return Err(bad("is not a valid interface name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env(move |k: &str| m.get(k).cloned())
    }

    fn config(v: &str) -> Config {
        Config::parse(format!(r#"{{"cniVersion":"{v}","name":"n","type":"ptp"}}"#).into_bytes()).unwrap()
    }

    const FULL: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn full_add_env_is_accepted() {
        let e = env(&FULL);
        let inv = e.invocation(e.command().unwrap(), config("1.0.0")).unwrap();
        assert_eq!(inv.ifname, "eth0");
        assert_eq!(inv.path, vec![PathBuf::from("/opt/cni/bin")]);
    }

    #[test]
    fn del_needs_no_netns() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]);
        assert!(e.invocation(Command::Del, config("1.0.0")).is_ok());
        assert_eq!(e.invocation(Command::Add, config("1.0.0")).unwrap_err().code(), 4);
    }

    #[test]
    fn bad_env_gets_code_4() {
        for (k, v) in [
            ("CNI_IFNAME", "a-very-long-name"),
            ("CNI_IFNAME", "eth/0"),
            ("CNI_IFNAME", ".."),
            ("CNI_CONTAINERID", "../x"),
            ("CNI_CONTAINERID", "a/b"),
            ("CNI_CONTAINERID", "a\0b"),
            ("CNI_CONTAINERID", ""),
            ("CNI_ARGS", "novalue"),
        ] {
            let mut pairs = FULL.to_vec();
            pairs.retain(|(key, _)| *key != k);
            pairs.push((k, v));
            let e = env(&pairs);
            assert_eq!(e.invocation(Command::Add, config("1.0.0")).unwrap_err().code(), 4, "{k}={v:?}");
        }
        assert_eq!(env(&[]).command().unwrap_err().code(), 4);
        assert_eq!(env(&[("CNI_COMMAND", "FOO")]).command().unwrap_err().code(), 4);
    }

    #[test]
    fn verbs_newer_than_the_config_get_code_1() {
        let e = env(&FULL);
        assert_eq!(e.invocation(Command::Check, config("0.3.1")).unwrap_err().code(), 1);
        assert_eq!(e.invocation(Command::Gc, config("1.0.0")).unwrap_err().code(), 1);
        assert_eq!(e.invocation(Command::Status, config("1.0.0")).unwrap_err().code(), 1);
        assert!(e.invocation(Command::Status, config("1.1.0")).is_ok());
    }

    #[test]
    fn cni_args_and_ignore_unknown() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.0.0.5").unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.5"));
        assert!(a.check_known(&["IP"]).is_ok());
        let strict = CniArgs::parse("K8S_POD_NAME=p").unwrap();
        assert_eq!(strict.check_known(&["IP"]).unwrap_err().code(), 4);
    }
}
