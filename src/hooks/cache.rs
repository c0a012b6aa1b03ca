//! The answers of subscribe and publish checks, kept per hook, user and channel for as
//! long as each answer said it holds ([`Ruling::cache_for`]).
//!
//! Bounded (`hooks.cache_size` entries, least recently used out first) and shared by every
//! connection: a user's hundred tabs ask the application once per channel.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use quick_cache::sync::Cache;
use quick_cache::Equivalent;

use super::{Hook, Ruling, Verdict};
use crate::protocol::channel::Channel;

/// A kept answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Checked {
    /// Allowed.
    Allowed,
    /// Refused, for this reason.
    Refused(String),
}

/// What the cache is asked by: a hook, a user's subject and a channel.
pub(super) type Key<'a> = (Hook, &'a str, &'a Channel);

/// An entry's key, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owned(Hook, Box<str>, Channel);

impl Hash for Owned {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Borrowed((self.0, &self.1, &self.2)).hash(state);
    }
}

/// A key as asked, hashed as its owned form is.
struct Borrowed<'a>(Key<'a>);

impl Hash for Borrowed<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (hook, subject, channel) = self.0;
        hook.hash(state);
        subject.hash(state);
        channel.as_str().hash(state);
    }
}

impl Equivalent<Owned> for Borrowed<'_> {
    fn equivalent(&self, key: &Owned) -> bool {
        let (hook, subject, channel) = self.0;
        key.0 == hook && &*key.1 == subject && key.2 == *channel
    }
}

/// The cache; clones share it.
#[derive(Clone)]
pub(super) struct VerdictCache {
    /// `None` when `hooks.cache_size` is 0.
    entries: Option<Arc<Cache<Owned, (Checked, Instant)>>>,
}

impl VerdictCache {
    /// A cache of at most `capacity` answers (none when 0).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: (capacity > 0).then(|| Arc::new(Cache::new(capacity))),
        }
    }

    /// The kept answer to `key`, if one still holds.
    pub(super) fn get(&self, key: Key<'_>) -> Option<Checked> {
        let (checked, until) = self.entries.as_ref()?.get(&Borrowed(key))?;
        (crate::clock::now() < until).then_some(checked)
    }

    /// Keeps `ruling`'s answer to `key` for as long as it says, if it may be kept.
    pub(super) fn put(&self, key: Key<'_>, ruling: &Ruling) {
        let Some(entries) = &self.entries else {
            return;
        };
        if ruling.cache_for.is_zero() {
            return;
        }
        let checked = match &ruling.verdict {
            Verdict::Allow => Checked::Allowed,
            Verdict::Refuse(reason) => Checked::Refused(reason.clone()),
            // A rewrite depends on the event; a failure is not an answer.
            Verdict::Rewrite(_) | Verdict::Unavailable(_) => return,
        };
        let Some(until) = crate::clock::now().checked_add(ruling.cache_for) else {
            return;
        };
        let (hook, subject, channel) = key;
        entries.insert(
            Owned(hook, subject.into(), channel.clone()),
            (checked, until),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ruling(verdict: Verdict, secs: u64) -> Ruling {
        Ruling {
            verdict,
            cache_for: Duration::from_secs(secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_kept_per_hook_user_and_channel_until_they_expire() {
        let cache = VerdictCache::new(100);
        let room = Channel::new("room").unwrap();
        let other = Channel::new("other").unwrap();
        cache.put(
            (Hook::Subscribe, "alice", &room),
            &ruling(Verdict::Allow, 10),
        );
        cache.put(
            (Hook::Publish, "alice", &room),
            &ruling(Verdict::Refuse("read only".into()), 60),
        );
        assert_eq!(
            cache.get((Hook::Subscribe, "alice", &room)),
            Some(Checked::Allowed)
        );
        assert_eq!(
            cache.get((Hook::Publish, "alice", &room)),
            Some(Checked::Refused("read only".into()))
        );
        assert_eq!(cache.get((Hook::Subscribe, "bob", &room)), None);
        assert_eq!(cache.get((Hook::Subscribe, "alice", &other)), None);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(cache.get((Hook::Subscribe, "alice", &room)), None);
        assert!(cache.get((Hook::Publish, "alice", &room)).is_some());
    }

    #[test]
    fn failures_rewrites_and_unkept_answers_are_not_kept() {
        let cache = VerdictCache::new(100);
        let room = Channel::new("room").unwrap();
        let key = (Hook::Publish, "alice", &room);
        cache.put(key, &ruling(Verdict::Unavailable("timeout".into()), 60));
        let data = serde_json::value::to_raw_value(&1).unwrap();
        cache.put(key, &ruling(Verdict::Rewrite(data), 60));
        cache.put(key, &ruling(Verdict::Allow, 0));
        assert_eq!(cache.get(key), None);
        let off = VerdictCache::new(0);
        off.put(key, &ruling(Verdict::Allow, 60));
        assert_eq!(off.get(key), None);
    }
}
