//! The CNI spec versions we speak, and what each allows.

use crate::error::{CniError, Result};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

pub const SUPPORTED: [CniVersion; 5] =
    [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0];

impl CniVersion {
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn parse(s: &str) -> Result<Self> {
        SUPPORTED.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
            CniError::IncompatibleVersion(format!(
                "config version {s:?} is not supported; this plugin supports {}",
                SUPPORTED.map(|v| v.as_str()).join(", ")
            ))
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` on each IP.
    pub fn ip_has_version_field(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// Interface `mtu`/`socketPath`/`pciID` and route `mtu`/`advmss`/`priority`/`table`/`scope` came with 1.1.0.
    pub fn has_1_1_fields(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    pub fn supports_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    pub fn supports_gc_and_status(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_orders_them() {
        for v in SUPPORTED {
            assert_eq!(CniVersion::parse(v.as_str()).unwrap(), v);
        }
        assert!(CniVersion::V0_3_1 < CniVersion::V1_0_0);
    }

    #[test]
    fn rejects_old_and_unknown_versions_with_code_1() {
        for s in ["0.1.0", "0.2.0", "2.0.0", "", "1.0"] {
            assert_eq!(CniVersion::parse(s).unwrap_err().code(), 1, "{s}");
        }
    }
}
