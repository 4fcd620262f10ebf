//! Logging to stderr or the config's `logFile`; never stdout, which carries the protocol.

use crate::conf::Config;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;

/// Level from `RUST_LOG`, else the config's `logLevel`, else warnings only.
pub fn init(config: &Config) {
    let filter =
        std::env::var("RUST_LOG").ok().or_else(|| config.net.log_level.clone()).unwrap_or_else(|| "warn".into());
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&filter.to_ascii_lowercase()).format_timestamp_millis();
    let target = config.net.log_file.as_deref().filter(|p| !p.is_empty()).and_then(|path| {
        // 0600: logs name containers and addresses. Never through a symlink: we write as root.
        OpenOptions::new().create(true).append(true).mode(0o600).custom_flags(nix::libc::O_NOFOLLOW).open(path).ok()
    });
    match target {
        Some(file) => builder.target(env_logger::Target::Pipe(Box::new(file))),
        None => builder.target(env_logger::Target::Stderr),
    };
    let _ = builder.try_init();
}
