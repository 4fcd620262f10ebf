//! The CNI_* environment: CNI_ARGS, container ID, interface name, cniVersion and verb parsing.
#![no_main]

use common::invocation::{validate_container_id, validate_ifname, CniArgs, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(args) = CniArgs::parse(text) {
        let _ = args.check_known(&["IP", "K8S_POD_NAME"]);
        let _ = args.ignore_unknown();
    }
    if validate_container_id(text).is_ok() {
        assert!(!text.contains('/') && !text.contains('\0') && text != "..", "accepted container ID {text:?}");
    }
    if validate_ifname(text).is_ok() {
        assert!(text.len() <= 15 && !text.contains('/'), "accepted interface name {text:?}");
    }
    let _ = common::version::CniVersion::parse(text);
    let _ = Command::parse(text);
});
