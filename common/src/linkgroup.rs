//! Interface groups (IFLA_GROUP), given as a number or as a name from iproute2's group table.

use crate::error::{CniError, Result};
use serde::{Deserialize, Deserializer};

/// Where iproute2 keeps group names: /etc first, then the distribution default.
const GROUP_FILES: [&str; 2] = ["/etc/iproute2/group", "/usr/share/iproute2/group"];

/// A group as written in a config: `8` or `"pods"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRef {
    Number(u32),
    Name(String),
}

impl<'de> Deserialize<'de> for GroupRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u32),
            Str(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Num(n) => GroupRef::Number(n),
            Raw::Str(s) => match s.parse() {
                Ok(n) => GroupRef::Number(n),
                Err(_) => GroupRef::Name(s),
            },
        })
    }
}

impl GroupRef {
    pub fn resolve(&self) -> Result<u32> {
        match self {
            GroupRef::Number(n) => Ok(*n),
            GroupRef::Name(name) => {
                for file in GROUP_FILES {
                    if let Ok(text) = std::fs::read_to_string(file) {
                        if let Some(n) = lookup(&text, name) {
                            return Ok(n);
                        }
                    }
                }
                Err(CniError::InvalidConfig(format!(
                    "link group {name:?} is not a number and not named in {}",
                    GROUP_FILES.join(" or ")
                )))
            }
        }
    }
}

/// Find `name` in an iproute2 group table (`<number> <name>` lines, `#` comments, hex allowed).
fn lookup(table: &str, name: &str) -> Option<u32> {
    table.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let mut parts = line.split_whitespace();
        let num = parts.next()?;
        (parts.next()? == name).then(|| parse_number(num)).flatten()
    })
}

fn parse_number(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_names_in_a_group_table() {
        let table = "# comment\n0\tdefault\n8 pods # ours\n0x9 clusternet\n";
        assert_eq!(lookup(table, "default"), Some(0));
        assert_eq!(lookup(table, "pods"), Some(8));
        assert_eq!(lookup(table, "clusternet"), Some(9));
        assert_eq!(lookup(table, "nope"), None);
    }

    #[test]
    fn numbers_and_numeric_strings_are_numbers() {
        assert_eq!(serde_json::from_str::<GroupRef>("8").unwrap(), GroupRef::Number(8));
        assert_eq!(serde_json::from_str::<GroupRef>("\"8\"").unwrap(), GroupRef::Number(8));
        assert_eq!(serde_json::from_str::<GroupRef>("\"pods\"").unwrap(), GroupRef::Name("pods".into()));
        assert!(serde_json::from_str::<GroupRef>("-1").is_err());
        assert!(serde_json::from_str::<GroupRef>("true").is_err());
    }

    #[test]
    fn unknown_name_is_a_config_error() {
        assert_eq!(GroupRef::Name("no-such-group-name".into()).resolve().unwrap_err().code(), 7);
    }
}
