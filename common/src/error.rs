//! The one error type of the suite, and the one place that maps it to CNI error codes.

use serde::Serialize;
use serde_json::Value;

/// Well-known CNI error codes (spec section "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    // Ours (100+): what failed, so an operator knows where to look.
    pub const NETLINK: u32 = 100;
    pub const NETNS: u32 = 101;
    pub const SYSCTL: u32 = 102;
    pub const DELEGATE: u32 = 103;
    pub const CHECK_FAILED: u32 = 104;
    pub const INTERNAL: u32 = 105;
    pub const RANGE_EXHAUSTED: u32 = 106;
    pub const ADDRESS_UNAVAILABLE: u32 = 107;
    pub const NFTABLES: u32 = 108;
    pub const ATTACHMENT_EXISTS: u32 = 109;
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("incompatible CNI version: {0}")]
    IncompatibleVersion(String),
    #[error("unsupported field in network configuration: {0}")]
    UnsupportedField(String),
    #[error("invalid environment variable: {0}")]
    InvalidEnv(String),
    #[error("I/O failure: {0}")]
    Io(String),
    #[error("failed to decode content: {0}")]
    Decode(String),
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    #[error("try again later: {0}")]
    TryAgainLater(String),
    /// STATUS: the plugin cannot serve ADDs now (e.g. no addresses left, store not writable).
    #[error("plugin not available: {0}")]
    NotAvailable(String),
    /// STATUS: ADDs work but pods will have limited connectivity.
    #[error("limited connectivity: {0}")]
    LimitedConnectivity(String),
    #[error("network namespace {0} does not exist")]
    NetnsMissing(String),
    #[error("network namespace: {0}")]
    Netns(String),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("sysctl {key}: {msg}")]
    Sysctl { key: String, msg: String },
    #[error("check failed: {0}")]
    CheckFailed(String),
    /// An error a delegated plugin (IPAM) reported: its code and message are passed on as they are.
    #[error("{msg}")]
    Delegated { code: u32, msg: String, details: String },
    #[error("{0}")]
    Delegate(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// IPAM: every address of a range set is reserved. Not 11: retrying does not help until pods go away.
    #[error("no free address: {0}")]
    RangeExhausted(String),
    /// IPAM: a requested address is taken, reserved for the gateway, or in no configured range.
    #[error("requested address unavailable: {0}")]
    AddressUnavailable(String),
    #[error("nftables: {0}")]
    Nftables(String),
    /// ADD for an attachment that is live: the runtime must DEL it first (the spec forbids a second ADD).
    #[error("attachment exists: {0}")]
    AttachmentExists(String),
}

impl CniError {
    pub fn code(&self) -> u32 {
        use CniError::*;
        match self {
            IncompatibleVersion(_) => code::INCOMPATIBLE_VERSION,
            UnsupportedField(_) => code::UNSUPPORTED_FIELD,
            NetnsMissing(_) => code::UNKNOWN_CONTAINER,
            InvalidEnv(_) => code::INVALID_ENV,
            Io(_) => code::IO_FAILURE,
            Decode(_) => code::DECODING_FAILURE,
            InvalidConfig(_) => code::INVALID_CONFIG,
            TryAgainLater(_) => code::TRY_AGAIN_LATER,
            NotAvailable(_) => code::NOT_AVAILABLE,
            LimitedConnectivity(_) => code::LIMITED_CONNECTIVITY,
            Netns(_) => code::NETNS,
            Netlink(_) => code::NETLINK,
            Sysctl { .. } => code::SYSCTL,
            CheckFailed(_) => code::CHECK_FAILED,
            Delegated { code, .. } => *code,
            Delegate(_) => code::DELEGATE,
            Internal(_) => code::INTERNAL,
            RangeExhausted(_) => code::RANGE_EXHAUSTED,
            AddressUnavailable(_) => code::ADDRESS_UNAVAILABLE,
            Nftables(_) => code::NFTABLES,
            AttachmentExists(_) => code::ATTACHMENT_EXISTS,
        }
    }

    fn details(&self) -> String {
        match self {
            CniError::Delegated { details, .. } => details.clone(),
            _ => String::new(),
        }
    }

    /// The spec's error object, as written to stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        #[derive(Serialize)]
        struct Reply<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: String,
            #[serde(skip_serializing_if = "String::is_empty")]
            details: String,
        }
        serde_json::to_value(Reply { cni_version, code: self.code(), msg: self.to_string(), details: self.details() })
            .unwrap_or(Value::Null)
    }

    /// A netlink error with what we were doing, so the message says more than "File exists".
    pub fn netlink(what: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        CniError::Netlink(format!("{what}: {err}"))
    }
}

/// What EPERM or EACCES from the kernel means for a plugin, appended to the error: which privilege it
/// runs without. `errno` is positive, as `io::Error::raw_os_error` gives it.
pub fn privilege_hint(errno: Option<i32>, capability: &str) -> String {
    match errno {
        Some(nix::libc::EPERM) | Some(nix::libc::EACCES) => {
            format!(" (the plugin runs without {capability}: run it as root, as container runtimes do)")
        }
        _ => String::new(),
    }
}

impl From<std::io::Error> for CniError {
    fn from(e: std::io::Error) -> Self {
        CniError::Io(e.to_string())
    }
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_code_and_message() {
        let e = CniError::InvalidConfig("bad subnet".into());
        let v = e.to_json("1.0.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["msg"].as_str().unwrap().contains("bad subnet"));
        assert!(v.get("details").is_none());
    }

    #[test]
    fn every_variant_maps_to_its_spec_code() {
        let cases = [
            (CniError::IncompatibleVersion(String::new()), 1),
            (CniError::UnsupportedField(String::new()), 2),
            (CniError::NetnsMissing(String::new()), 3),
            (CniError::InvalidEnv(String::new()), 4),
            (CniError::Io(String::new()), 5),
            (CniError::Decode(String::new()), 6),
            (CniError::InvalidConfig(String::new()), 7),
            (CniError::TryAgainLater(String::new()), 11),
            (CniError::NotAvailable(String::new()), 50),
            (CniError::LimitedConnectivity(String::new()), 51),
            (CniError::Netlink(String::new()), 100),
            (CniError::Internal(String::new()), 105),
            (CniError::RangeExhausted(String::new()), 106),
            (CniError::AddressUnavailable(String::new()), 107),
            (CniError::Nftables(String::new()), 108),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e:?}");
        }
    }

    #[test]
    fn delegated_error_keeps_its_code_and_details() {
        let e = CniError::Delegated { code: 11, msg: "busy".into(), details: "lock".into() };
        let v = e.to_json("1.1.0");
        assert_eq!(v["code"], 11);
        assert_eq!(v["msg"], "busy");
        assert_eq!(v["details"], "lock");
    }
}
