//! The browser origin allowlist for WebSocket upgrades.
//!
//! A browser sends `Origin` with every WebSocket handshake; other clients usually send none.
//! With an allowlist configured, an upgrade whose `Origin` matches no entry is refused with
//! HTTP 403 before the 101, which stops other sites' pages from opening sockets to the hub
//! with their visitors' network position. Entries are exact origins
//! (`https://app.example.com`) or globs (`https://*.example.com`); requests without `Origin`
//! are not browsers and pass.

use wildmatch::WildMatch;

/// The configured allowlist; empty allows every origin.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Vec<WildMatch>,
}

impl OriginPolicy {
    /// Compiles the entries; origins compare case-insensitively (RFC 6454 serializes the
    /// scheme and host in lower case, but proxies and hand-written configs vary).
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Self {
        Self {
            allowed: entries
                .iter()
                .map(|e| WildMatch::new_case_insensitive(e.as_ref().trim_end_matches('/')))
                .collect(),
        }
    }

    /// Whether `origin` is on the list itself (an empty list lists nothing): the origins
    /// that get CORS headers on the HTTP API.
    pub fn lists(&self, origin: &[u8]) -> bool {
        std::str::from_utf8(origin).is_ok_and(|o| self.allowed.iter().any(|p| p.matches(o)))
    }

    /// Whether an upgrade carrying `origin` (the header's value, if any) may proceed.
    pub fn allows(&self, origin: Option<&[u8]>) -> bool {
        if self.allowed.is_empty() {
            return true;
        }
        let Some(origin) = origin else {
            return true;
        };
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        self.allowed.iter().any(|p| p.matches(origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_allows_everything() {
        assert!(OriginPolicy::default().allows(Some(b"https://evil.example")));
    }

    #[test]
    fn only_listed_origins_pass() {
        let p = OriginPolicy::new(&["https://app.example.com/", "https://*.example.org"]);
        assert!(p.allows(Some(b"https://app.example.com")));
        assert!(p.allows(Some(b"HTTPS://APP.EXAMPLE.COM")));
        assert!(p.allows(Some(b"https://a.example.org")));
        assert!(!p.allows(Some(b"https://example.org.evil.com")));
        assert!(!p.allows(Some(b"http://app.example.com")));
        assert!(!p.allows(Some(b"null")));
        assert!(!p.allows(Some(&[0xff, 0xfe])));
        assert!(p.allows(None), "non-browser clients send no Origin");
        assert!(p.lists(b"https://a.example.org"));
        assert!(!p.lists(b"https://evil.example"));
        assert!(!OriginPolicy::default().lists(b"https://app.example.com"));
    }
}
