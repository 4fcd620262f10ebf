//! A result in any version's shape, converted to every supported version and read back: no panic, and a
//! second conversion changes nothing (what a version can express survives the trip).
#![no_main]

use common::types::CniResult;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(result) = CniResult::from_value(&value) else { return };
    for version in common::version::SUPPORTED {
        let once = result.to_value(version);
        let back = CniResult::from_value(&once).expect("our own output parses");
        assert_eq!(back.to_value(version), once, "converting to {} twice differs", version.as_str());
    }
});
