//! The shared library of the cni-chain plugins: the CNI protocol and types, errors, netns entry,
//! netlink, sysctl, IPAM delegation, names and the point-to-point veth that several plugins build.

pub mod arena;
pub mod conf;
pub mod egress;
pub mod error;
pub mod files;
pub mod gojson;
pub mod host_local;
pub mod inventory;
pub mod invocation;
pub mod ipam;
pub mod ipam_store;
pub mod linkgroup;
pub mod logging;
pub mod masq;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod nlraw;
pub mod p2p;
pub mod plugin;
pub mod policy_route;
pub mod sysctl;
pub mod types;
pub mod version;

pub use error::{CniError, Result};
pub use invocation::{Command, Invocation};
pub use plugin::{run, Plugin};
pub use types::CniResult;
