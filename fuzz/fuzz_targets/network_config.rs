//! A network config from stdin as a runtime sends it: the common part, the prevResult, GC's attachments
//! and a plugin's own view of the same bytes. Errors are fine; a panic is not.
#![no_main]

use common::conf::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = Config::parse(data.to_vec()) else { return };
    if let Ok(Some(prev)) = config.prev_result() {
        for version in common::version::SUPPORTED {
            let _ = prev.to_value(version);
        }
    }
    let _ = config.require_prev_result();
    let _ = config.valid_attachments();
    let _ = config.plugin::<serde_json::Value>();
});
