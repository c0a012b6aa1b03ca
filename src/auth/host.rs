//! The `Host` allowlist: the defence against DNS rebinding.
//!
//! A page on `http://evil.example:12080/` whose name the attacker re-points at 127.0.0.1 is,
//! to the browser, the same origin as its own server: it may read every answer, open
//! sockets, and send no `Origin` that an origin check could refuse. What gives it away is
//! the `Host` header, which still names the attacker's domain. So every request, the
//! WebSocket upgrade included, must name a host this server answers to; others get HTTP 421.
//!
//! - A host given as an IP address always passes: rebinding needs a name.
//! - With `auth.allowed_hosts` set, a name passes if it is listed (`hub.example.com`, or
//!   `*.example.com` for any name below it; `*` alone for any name).
//! - Unset, a server on a loopback address answers only to `localhost` and `*.localhost`,
//!   and a server on any other address to every name (set the list to its public names).
//! - A request without `Host` (HTTP/1.0) is not from a browser, and passes.

use std::net::{IpAddr, SocketAddr};

/// A host name pattern: one exact name, or every name below a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// Any name.
    Any,
    /// This name, lower case.
    Exact(String),
    /// Any name ending in `.` and this domain, lower case.
    Below(String),
}

impl HostPattern {
    /// Parses `name`, `*.domain` or `*`; `None` if it is none of them.
    pub(crate) fn parse(pattern: &str) -> Option<Self> {
        let pattern = pattern.to_ascii_lowercase();
        if pattern == "*" {
            return Some(Self::Any);
        }
        match pattern.strip_prefix("*.") {
            // Names below an address are no names at all.
            Some(domain) if domain.parse::<std::net::Ipv4Addr>().is_ok() => None,
            Some(domain) => is_name(domain).then(|| Self::Below(domain.to_owned())),
            None => is_name(&pattern).then_some(Self::Exact(pattern)),
        }
    }

    /// Whether `name` (lower case) matches.
    pub(crate) fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => name == exact,
            Self::Below(domain) => name
                .strip_suffix(domain.as_str())
                .is_some_and(|label| label.len() > 1 && label.ends_with('.')),
        }
    }
}

/// Whether `name` is a DNS name: dot-separated labels of letters, digits and `-`.
pub(crate) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The host of an authority (`host`, `host:port`, `[v6]`, `[v6]:port`), lower case, and
/// its port; `None` if it is not one.
pub(crate) fn split_authority(authority: &str) -> Option<(Host, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (Host::Ip(IpAddr::V6(v6.parse().ok()?)), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let host = match host.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => Host::Ip(ip),
            _ if is_name(host) => Host::Name(host.to_ascii_lowercase()),
            _ => return None,
        };
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// A parsed host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// An IP address literal.
    Ip(IpAddr),
    /// A DNS name, lower case.
    Name(String),
}

/// Which `Host` headers the server answers to. See the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct HostPolicy {
    names: Vec<HostPattern>,
}

/// A `auth.allowed_hosts` entry that is not a host pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a host name, `*.domain` or `*` (no scheme, port or path)")]
pub(crate) struct BadHostPattern(pub String);

impl HostPolicy {
    /// The policy for `entries` (`auth.allowed_hosts`) on a server listening on `listen`.
    pub(crate) fn new<S: AsRef<str>>(
        entries: &[S],
        listen: SocketAddr,
    ) -> Result<Self, BadHostPattern> {
        let names = if entries.is_empty() {
            if listen.ip().is_loopback() {
                vec![
                    HostPattern::Exact("localhost".to_owned()),
                    HostPattern::Below("localhost".to_owned()),
                ]
            } else {
                vec![HostPattern::Any]
            }
        } else {
            entries
                .iter()
                .map(|e| {
                    HostPattern::parse(e.as_ref())
                        .ok_or_else(|| BadHostPattern(e.as_ref().to_owned()))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Self { names })
    }

    /// Whether a request with this `Host` header (its value, if any) may be answered.
    pub(crate) fn allows(&self, host: Option<&[u8]>) -> bool {
        let Some(host) = host else {
            return true;
        };
        let Some((host, _)) = std::str::from_utf8(host).ok().and_then(split_authority) else {
            return false;
        };
        match host {
            Host::Ip(_) => true,
            Host::Name(name) => self.names.iter().any(|p| p.matches(&name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        "127.0.0.1:12080".parse().unwrap()
    }

    #[test]
    fn on_loopback_only_loopback_names_and_addresses_pass() {
        let p = HostPolicy::new::<&str>(&[], loopback()).unwrap();
        for ok in [
            "localhost:12080",
            "LOCALHOST",
            "app.localhost:1",
            "127.0.0.1:12080",
            "127.0.0.5",
            "[::1]:12080",
            "[2001:db8::1]",
            "10.0.0.1",
        ] {
            assert!(p.allows(Some(ok.as_bytes())), "{ok}");
        }
        for bad in [
            "evil.example:12080",
            "localhost.evil.example",
            "evillocalhost",
            "",
            "local host",
            "localhost:",
            "localhost:99999x",
            "user@localhost",
            "localhost/x",
            "[::1",
        ] {
            assert!(!p.allows(Some(bad.as_bytes())), "{bad}");
        }
        assert!(!p.allows(Some(&[0xff])));
        assert!(p.allows(None), "HTTP/1.0 without Host");
    }

    #[test]
    fn elsewhere_every_name_passes_unless_listed() {
        let public: SocketAddr = "0.0.0.0:12080".parse().unwrap();
        let p = HostPolicy::new::<&str>(&[], public).unwrap();
        assert!(p.allows(Some(b"anything.example:12080")));
        let p = HostPolicy::new(&["hub.example.com", "*.example.org"], public).unwrap();
        assert!(p.allows(Some(b"HUB.example.com:443")));
        assert!(p.allows(Some(b"eu.example.org")));
        assert!(p.allows(Some(b"a.b.example.org")));
        assert!(p.allows(Some(b"192.0.2.7:12080")));
        assert!(!p.allows(Some(b"example.org")));
        assert!(!p.allows(Some(b"evilexample.org")));
        assert!(!p.allows(Some(b"hub.example.com.evil")));
        assert!(!p.allows(Some(b"localhost")));
    }

    #[test]
    fn entries_must_be_host_patterns() {
        for bad in [
            "https://hub.example.com",
            "hub.example.com:443",
            "*example.com",
            "*.10.0.0.1",
            "a/b",
            "",
        ] {
            assert!(HostPolicy::new(&[bad], loopback()).is_err(), "{bad}");
        }
        assert!(HostPolicy::new(&["*"], loopback())
            .unwrap()
            .allows(Some(b"x.y")));
    }
}
