//! The browser origin allowlist.
//!
//! A browser sends `Origin` with every WebSocket handshake and every cross-origin (and most
//! same-origin non-GET) HTTP request; other clients usually send none. The list decides:
//!
//! - **WebSocket upgrades**: with a list, an upgrade whose `Origin` is neither on it nor the
//!   server's own gets HTTP 403 before the 101, which stops other sites' pages from
//!   opening sockets to the hub with their visitors' network position. Without a list,
//!   any origin may upgrade.
//! - **The HTTP API**: a request that carries an `Origin` is answered only if that origin is
//!   the server's own (same origin) or on the list; others get 403, so a page elsewhere can
//!   neither publish nor read operator data, list or no list. Listed origins get CORS.
//!
//! Entries are origins, `scheme://host[:port]` (`https://app.example.com`), where the host
//! may be `*.domain` for every name below it (`https://*.example.com`), or `*` alone for
//! every origin. An `Origin` header is compared only once it parses as an origin, so a
//! pattern can never match across a path, a user name or a port.

use super::host::{split_authority, Host, HostPattern};

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginPattern {
    scheme: String,
    host: HostPattern,
    port: u16,
}

/// A parsed `Origin`: scheme, host and port (the scheme's default when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: Host,
    port: u16,
}

impl Origin {
    /// Parses a serialized origin (RFC 6454 §6.2): `scheme://host[:port]`, nothing more.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (scheme, authority) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return None;
        }
        let (host, port) = split_authority(authority)?;
        let port = port.or_else(|| default_port(&scheme))?;
        Some(Self { scheme, host, port })
    }

    /// Whether this origin is the one a request with this `Host` header was sent to: the
    /// same host and port (the scheme is the client's business behind a TLS proxy).
    pub(crate) fn is_host(&self, host: &str) -> bool {
        split_authority(host).is_some_and(|(host, port)| {
            host == self.host && port.or_else(|| default_port(&self.scheme)) == Some(self.port)
        })
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// A `auth.allowed_origins` entry that is not an origin pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an origin (`https://app.example.com`, `https://*.example.com:8443`) or `*`")]
pub(crate) struct BadOriginPattern(pub String);

/// The configured allowlist; empty lists nothing. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginPolicy {
    any: bool,
    allowed: Vec<OriginPattern>,
}

impl OriginPolicy {
    /// Parses the entries; scheme and host compare case-insensitively (RFC 6454 serializes
    /// them in lower case, but proxies and hand-written configs vary).
    pub(crate) fn new<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadOriginPattern> {
        let mut policy = Self::default();
        for entry in entries {
            let text = entry.as_ref().trim_end_matches('/');
            if text == "*" {
                policy.any = true;
                continue;
            }
            let bad = || BadOriginPattern(entry.as_ref().to_owned());
            let (scheme, authority) = text.split_once("://").ok_or_else(bad)?;
            // Parse with a stand-in label for the wildcard, then put the pattern back.
            let (wild, concrete) = match authority.strip_prefix("*.") {
                Some(rest) => (true, format!("{scheme}://x.{rest}")),
                None => (false, text.to_owned()),
            };
            let origin = Origin::parse(&concrete).ok_or_else(bad)?;
            let host = match (&origin.host, wild) {
                (Host::Name(name), true) => {
                    let domain = name.strip_prefix("x.").ok_or_else(bad)?;
                    HostPattern::parse(&format!("*.{domain}")).ok_or_else(bad)?
                }
                (Host::Name(name), false) => HostPattern::Exact(name.clone()),
                (Host::Ip(ip), false) => HostPattern::Exact(ip.to_string()),
                (Host::Ip(_), true) => return Err(bad()),
            };
            policy.allowed.push(OriginPattern {
                scheme: origin.scheme,
                host,
                port: origin.port,
            });
        }
        Ok(policy)
    }

    /// Whether `origin` (an `Origin` header's value) is on the list itself (an empty list
    /// lists nothing): the origins that may call the HTTP API from elsewhere, with CORS.
    pub(crate) fn lists(&self, origin: &[u8]) -> bool {
        let Some(origin) = std::str::from_utf8(origin).ok().and_then(Origin::parse) else {
            return false;
        };
        self.any
            || self.allowed.iter().any(|p| {
                p.scheme == origin.scheme
                    && p.port == origin.port
                    && match &origin.host {
                        Host::Name(name) => p.host.matches(name),
                        Host::Ip(ip) => p.host == HostPattern::Exact(ip.to_string()),
                    }
            })
    }

    /// Whether an upgrade carrying `origin` (the header's value, if any) to `host` (the
    /// `Host` header) may proceed: always without a list; with one, from no origin, the
    /// server's own, or a listed one.
    pub(crate) fn allows(&self, origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
        if self.allowed.is_empty() && !self.any {
            return true;
        }
        self.api_allows(origin, host)
    }

    /// Whether an HTTP API request may be answered: it carries no `Origin` (not a
    /// browser, or a same-origin read), its origin is the server's own (`host`, the
    /// request's `Host` header), or its origin is listed.
    pub(crate) fn api_allows(&self, origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let same_origin = || {
            let origin = std::str::from_utf8(origin).ok().and_then(Origin::parse);
            let host = host.and_then(|h| std::str::from_utf8(h).ok());
            matches!((origin, host), (Some(o), Some(h)) if o.is_host(h))
        };
        same_origin() || self.lists(origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OriginPolicy {
        OriginPolicy::new(entries).unwrap()
    }

    #[test]
    fn empty_allows_every_upgrade_and_lists_nothing() {
        let p = OriginPolicy::default();
        assert!(p.allows(Some(b"https://evil.example"), None));
        assert!(!p.lists(b"https://app.example.com"));
    }

    #[test]
    fn only_listed_origins_pass() {
        let p = policy(&["https://app.example.com/", "https://*.example.org"]);
        assert!(p.allows(Some(b"https://app.example.com"), None));
        assert!(p.allows(Some(b"HTTPS://APP.EXAMPLE.COM"), None));
        assert!(p.allows(Some(b"https://app.example.com:443"), None));
        assert!(p.allows(Some(b"https://a.example.org"), None));
        assert!(!p.allows(Some(b"https://example.org.evil.com"), None));
        assert!(!p.allows(Some(b"http://app.example.com"), None));
        assert!(!p.allows(Some(b"https://app.example.com:8443"), None));
        assert!(!p.allows(Some(b"null"), None));
        assert!(!p.allows(Some(&[0xff, 0xfe]), None));
        assert!(p.allows(None, None), "non-browser clients send no Origin");
        assert!(p.lists(b"https://a.example.org"));
        assert!(!p.lists(b"https://evil.example"));
        // A page the server itself served may upgrade, list or no list.
        let host = Some(&b"127.0.0.1:12080"[..]);
        assert!(p.allows(Some(b"http://127.0.0.1:12080"), host));
        assert!(!p.allows(Some(b"http://127.0.0.1:12081"), host));
    }

    #[test]
    fn a_glob_never_matches_across_a_path_a_user_or_a_port() {
        let p = policy(&["https://*.example.com"]);
        for bad in [
            "https://evil.com/.example.com",
            "https://evil.com?.example.com",
            "https://evil.com#.example.com",
            "https://user@x.example.com",
            "https://evil.com@x.example.com",
            "https://evil.com:1.example.com",
            "https://x.example.com/",
            "https://x.example.com:8443",
            "https://.example.com",
            "https://example.com",
        ] {
            assert!(!p.lists(bad.as_bytes()), "{bad}");
        }
        assert!(p.lists(b"https://x.example.com"));
        assert!(p.lists(b"https://x.y.example.com:443"));
    }

    #[test]
    fn entries_must_be_origins() {
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "https://*example.com",
            "https://app.*.com",
            "https://*.192.0.2.1",
            "*.example.com",
        ] {
            assert!(OriginPolicy::new(&[bad]).is_err(), "{bad}");
        }
        assert!(policy(&["*"]).lists(b"https://anything.example"));
        assert!(policy(&["http://127.0.0.1:12080"]).lists(b"http://127.0.0.1:12080"));
        assert!(policy(&["http://[::1]:12080"]).lists(b"http://[::1]:12080"));
    }

    #[test]
    fn the_api_answers_its_own_origin_and_listed_ones() {
        let p = OriginPolicy::default();
        let host = Some(&b"127.0.0.1:12080"[..]);
        assert!(p.api_allows(None, host));
        assert!(p.api_allows(Some(b"http://127.0.0.1:12080"), host));
        assert!(p.api_allows(Some(b"http://localhost"), Some(b"localhost")));
        assert!(p.api_allows(Some(b"http://localhost"), Some(b"localhost:80")));
        assert!(!p.api_allows(Some(b"http://127.0.0.1:12081"), host));
        assert!(!p.api_allows(Some(b"https://evil.example"), host));
        assert!(!p.api_allows(Some(b"null"), host));
        assert!(!p.api_allows(Some(b"http://127.0.0.1:12080"), None));
        let listed = policy(&["https://app.example.com"]);
        assert!(listed.api_allows(Some(b"https://app.example.com"), host));
    }
}
