//! Logging to stderr or the config's `logFile`; never stdout, which carries the protocol. Each line says
//! when, which process and plugin, the verb, the network and the container, so one node's log can be read.

use crate::conf::Config;
use crate::invocation::Command;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// Log lines from host-local's code (its module) run inside a main plugin's process (`ipam`) say host-local
/// and its own verb, as the lines of host-local's own process would.
pub const HOST_LOCAL_TARGET: &str = "common::host_local";
static IN_PROCESS_VERB: std::sync::Mutex<&'static str> = std::sync::Mutex::new("");

/// The verb host-local's code is running for in this process.
pub fn set_in_process_verb(verb: &'static str) {
    if let Ok(mut v) = IN_PROCESS_VERB.lock() {
        *v = verb;
    }
}

fn in_process_verb() -> &'static str {
    IN_PROCESS_VERB.lock().map(|v| *v).unwrap_or("")
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The level a config's `logLevel` names (any case; AWS configs write `"Debug"`), or None if it names none.
fn level(spec: &str) -> Option<&'static str> {
    let spec = spec.trim().to_ascii_lowercase();
    let spec = if spec == "warning" { "warn".to_string() } else { spec };
    LEVELS.iter().find(|l| **l == spec).copied()
}

/// Level from `RUST_LOG`, else the config's `logLevel`, else warnings only. A bad `logLevel` or a `logFile`
/// that cannot be written is said on stderr; the call itself goes on.
pub fn init(plugin: &'static str, command: Command, config: &Config, container_id: &str) {
    let filter = match (std::env::var("RUST_LOG").ok(), config.net.log_level.as_deref()) {
        (Some(env), _) => env,
        (None, Some(l)) if !l.is_empty() => level(l).map(String::from).unwrap_or_else(|| {
            eprintln!("{plugin}: logLevel {l:?} is not one of {}: logging warnings", LEVELS.join(", "));
            "warn".into()
        }),
        _ => "warn".into(),
    };
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&filter.to_ascii_lowercase());
    let (verb, network, id) = (command.as_str(), config.net.name.clone(), container_id.escape_debug().to_string());
    builder.format(move |buf, record| {
        // Asked here, not up front: most calls log nothing.
        let (ts, pid) = (utc_now(), std::process::id());
        let (who, verb) = match record.target().starts_with(HOST_LOCAL_TARGET) && plugin != "host-local" {
            true => ("host-local", in_process_verb()),
            false => (plugin, verb),
        };
        writeln!(buf, "{ts} {} {who}[{pid}] {verb} net={network} id={id}: {}", record.level(), record.args())
    });
    let target = config.net.log_file.as_deref().filter(|p| !p.is_empty()).and_then(|path| {
        // 0600: logs name containers and addresses. Never through a symlink: we write as root.
        match OpenOptions::new().create(true).append(true).mode(0o600).custom_flags(nix::libc::O_NOFOLLOW).open(path) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("{plugin}: cannot write logFile {path:?} ({e}): logging to stderr");
                None
            }
        }
    });
    match target {
        Some(file) => builder.target(env_logger::Target::Pipe(Box::new(file))),
        None => builder.target(env_logger::Target::Stderr),
    };
    let _ = builder.try_init();
}

/// The time as RFC 3339 UTC with milliseconds (env_logger's own needs a date crate we do without).
fn utc_now() -> String {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(since.as_secs(), since.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    // Days to a civil date (Howard Hinnant's algorithm), valid for any date after 1970.
    let (days, rem) = (secs / 86400, secs % 86400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400 + 86399, 7), "2000-02-29T23:59:59.007Z");
        assert_eq!(rfc3339(1_796_000_000, 123), "2026-11-30T00:53:20.123Z");
    }

    #[test]
    fn levels_are_read_in_any_case() {
        assert_eq!(level("Debug"), Some("debug"));
        assert_eq!(level("WARNING"), Some("warn"));
        assert_eq!(level("off"), Some("off"));
        assert_eq!(level("verbose"), None);
    }
}
