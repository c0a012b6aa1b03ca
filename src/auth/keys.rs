//! Publish API keys, compared in constant time.
//!
//! Several keys may be valid at once so that a key can be rotated without downtime: add the
//! new one, move the publishers over, remove the old one. A candidate is compared with every
//! key, through SHA-256 digests so that neither the position of the first differing byte nor
//! the keys' lengths show in the timing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest key accepted, in bytes: short keys can be guessed.
pub(crate) const MIN_KEY_LEN: usize = 16;

/// The configured publish keys.
#[derive(Clone, Default)]
pub(crate) struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

impl ApiKeys {
    /// Keeps the digests of `keys`.
    pub(crate) fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        Self {
            digests: keys.iter().map(|k| digest(k.as_ref())).collect(),
        }
    }

    /// Whether no key is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The position of the key equal to `candidate`, comparing with every key whatever
    /// the outcome.
    pub(crate) fn find(&self, candidate: &str) -> Option<usize> {
        let candidate = digest(candidate);
        let mut found = None;
        for (i, key) in self.digests.iter().enumerate() {
            if bool::from(key.ct_eq(&candidate)) {
                found = Some(i);
            }
        }
        found
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_key_and_nothing_else() {
        let keys = ApiKeys::new(&["old-key-0123456789", "new-key-0123456789"]);
        assert_eq!(keys.find("old-key-0123456789"), Some(0));
        assert_eq!(keys.find("new-key-0123456789"), Some(1));
        assert_eq!(keys.find("new-key-012345678"), None);
        assert_eq!(keys.find(""), None);
        assert!(ApiKeys::default().is_empty());
        assert_eq!(ApiKeys::default().find("x"), None);
    }

    #[test]
    fn debug_never_shows_keys() {
        let keys = ApiKeys::new(&["secret-secret-secret"]);
        assert!(!format!("{keys:?}").contains("secret"));
    }
}
