//! `resolvConf`: the DNS settings of a resolv.conf-style file, reported in the result.

use crate::types::Dns;
use crate::{CniError, Result};
use std::path::Path;

pub fn read(path: &Path) -> Result<Dns> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CniError::InvalidConfig(format!("resolvConf {}: {e}", path.display())))?;
    Ok(parse(&text))
}

fn parse(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let rest = |w: std::str::SplitWhitespace<'_>| w.map(String::from).collect::<Vec<_>>();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(rest(words)),
            Some("domain") => dns.domain = words.next().unwrap_or_default().to_string(),
            Some("search") => dns.search = rest(words),
            Some("options") => dns.options.extend(rest(words)),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_four_keys_and_ignores_the_rest() {
        let dns = parse(
            "# comment\nnameserver 10.0.0.10\nnameserver fd00::10\ndomain example.com\nsearch a.example b.example\n\
             options ndots:5 edns0\n; other comment\nsortlist 10.0.0.0\n",
        );
        assert_eq!(dns.nameservers, ["10.0.0.10", "fd00::10"]);
        assert_eq!(dns.domain, "example.com");
        assert_eq!(dns.search, ["a.example", "b.example"]);
        assert_eq!(dns.options, ["ndots:5", "edns0"]);
    }
}
