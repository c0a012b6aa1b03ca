//! The topic table: channel names to their subscriber sets.
//!
//! Split into [`SHARDS`] shards by hash so that subscribes on one channel do not contend with
//! subscribes on another. Each shard's map sits behind an `ArcSwap`: a publish looks its
//! channel up and loads the subscriber set without taking any lock. Writers (subscribe,
//! unsubscribe) serialize per shard on a mutex and publish new versions copy-on-write: the
//! subscriber set of one topic on every change, the shard's map only when a topic is created
//! or removed (its last subscriber left).
//!
//! A replaced map or set is dropped only after an epoch grace period (`crossbeam-epoch`):
//! publishes run pinned, so a publish never depends on an `arc-swap` guard alone to keep
//! what it reads alive (see the slot table's docs, [`super::slots`], for why).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::bitset::SubscriberSet;
use crate::dialect::Encoding;
use crate::protocol::channel::Channel;

/// A subscribe refused because the channel has `max_subscribers_per_channel` subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelFull;

/// Number of shards.
pub(crate) const SHARDS: usize = 64;

/// One channel and its subscribers.
pub(crate) struct Topic {
    pub(crate) name: Channel,
    pub(crate) subscribers: ArcSwap<Subscribers>,
}

/// One channel's subscribers, a set per [`Encoding`]: a publish encodes its event once for
/// each dialect, and compresses it once, for the sets that are not empty.
#[derive(Clone, Default)]
pub(crate) struct Subscribers {
    by_encoding: [SubscriberSet; Encoding::COUNT],
}

impl Subscribers {
    /// The number of subscribers, every encoding's.
    pub(crate) fn len(&self) -> usize {
        self.by_encoding.iter().map(SubscriberSet::len).sum()
    }

    /// Whether nobody is subscribed.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_encoding.iter().all(SubscriberSet::is_empty)
    }

    /// Whether `slot`, taking `encoding`, is subscribed.
    fn contains(&self, slot: u32, encoding: Encoding) -> bool {
        self.by_encoding[encoding.index()].contains(slot)
    }

    /// A new version with `slot` added to `encoding`'s set, or `None` if it was there.
    fn with(&self, slot: u32, encoding: Encoding) -> Option<Self> {
        let set = self.by_encoding[encoding.index()].with(slot)?;
        let mut next = self.clone();
        next.by_encoding[encoding.index()] = set;
        Some(next)
    }

    /// A new version with `slot` removed from `encoding`'s set, or `None` if it was not
    /// there.
    fn without(&self, slot: u32, encoding: Encoding) -> Option<Self> {
        let set = self.by_encoding[encoding.index()].without(slot)?;
        let mut next = self.clone();
        next.by_encoding[encoding.index()] = set;
        Some(next)
    }

    /// Every subscriber's slot, encoding by encoding.
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u32> {
        self.by_encoding
            .iter()
            .flat_map(SubscriberSet::to_vec)
            .collect()
    }

    /// Each encoding that has subscribers here, with their set, in [`Encoding::index`]
    /// order (a dialect's uncompressed set just before its compressed one).
    #[inline]
    pub(crate) fn encodings(&self) -> impl Iterator<Item = (Encoding, &SubscriberSet)> {
        Encoding::ALL
            .into_iter()
            .zip(&self.by_encoding)
            .filter(|(_, set)| !set.is_empty())
    }
}

type Map = HashMap<Channel, Arc<Topic>>;

struct Shard {
    map: ArcSwap<Map>,
    writer: Mutex<()>,
}

pub(crate) struct Topics {
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// Told when a channel gets its first subscriber or loses its last, if anyone asked
    /// ([`Hub::watch_occupancy`](super::hub::Hub::watch_occupancy)). Called under the
    /// channel's shard lock, so the changes of one channel come in order.
    occupancy: std::sync::OnceLock<OccupancyWatcher>,
}

/// Whether a channel has subscribers on this hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occupancy {
    /// It got its first subscriber.
    Occupied,
    /// Its last subscriber left.
    Vacated,
}

/// What [`Hub::watch_occupancy`](super::hub::Hub::watch_occupancy) is given.
pub(crate) type OccupancyWatcher = Box<dyn Fn(&Channel, Occupancy) + Send + Sync>;

impl Topics {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    map: ArcSwap::from_pointee(Map::new()),
                    writer: Mutex::new(()),
                })
                .collect(),
            hasher: RandomState::new(),
            occupancy: std::sync::OnceLock::new(),
        }
    }

    /// Tells `watcher` of every channel that gets its first subscriber or loses its last,
    /// from now on. False if a watcher was set already.
    pub(crate) fn watch_occupancy(&self, watcher: OccupancyWatcher) -> bool {
        self.occupancy.set(watcher).is_ok()
    }

    fn occupancy_changed(&self, channel: &Channel, change: Occupancy) {
        if let Some(watcher) = self.occupancy.get() {
            watcher(channel, change);
        }
    }

    /// Stores `next` in `cell`; the version it replaces lives on until every thread pinned
    /// now has unpinned.
    fn replace<T: Send + Sync + 'static>(cell: &ArcSwap<T>, next: T) {
        let old = cell.swap(Arc::new(next));
        crossbeam_epoch::pin().defer(move || drop(old));
    }

    fn shard(&self, name: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(name) as usize % SHARDS]
    }

    /// Calls `f` with the subscribers of `name`, lock-free; `None` if nobody is subscribed.
    /// The publish path calls it pinned (see the [module docs](self)).
    #[inline]
    pub(crate) fn with_subscribers<R>(
        &self,
        name: &str,
        f: impl FnOnce(&Subscribers) -> R,
    ) -> Option<R> {
        let map = self.shard(name).map.load();
        let topic = map.get(name)?;
        let set = topic.subscribers.load();
        Some(f(&set))
    }

    /// Adds `slot` to `channel`'s subscribers; false if it was already there.
    #[cfg(test)]
    pub(crate) fn subscribe(&self, channel: &Channel, slot: u32) -> bool {
        self.subscribe_within(channel, slot, Encoding::default(), 0)
            .is_ok_and(|(added, _)| added)
    }

    /// Adds `slot`, a client taking `encoding`, to `channel`'s subscribers unless the
    /// channel already has `limit` (0: no limit). Checked under the shard's writer lock, so
    /// the limit is exact. Returns whether `slot` was added (false if it was there), and the
    /// topic's name: a clone of it is one shared allocation for every subscriber.
    pub(crate) fn subscribe_within(
        &self,
        channel: &Channel,
        slot: u32,
        encoding: Encoding,
        limit: usize,
    ) -> Result<(bool, Channel), ChannelFull> {
        let shard = self.shard(channel);
        let _writer = shard.writer.lock().unwrap_or_else(|e| e.into_inner());
        let map = shard.map.load();
        let topic = match map.get(channel.as_str()) {
            Some(topic) => {
                let set = topic.subscribers.load();
                if limit > 0 && set.len() >= limit && !set.contains(slot, encoding) {
                    return Err(ChannelFull);
                }
                topic.clone()
            }
            None => {
                let topic = Arc::new(Topic {
                    name: channel.clone(),
                    subscribers: ArcSwap::from_pointee(Subscribers::default()),
                });
                let mut next = Map::clone(&map);
                next.insert(channel.clone(), topic.clone());
                Self::replace(&shard.map, next);
                topic
            }
        };
        let (added, first) = match topic.subscribers.load().with(slot, encoding) {
            Some(next) => {
                let first = next.len() == 1;
                Self::replace(&topic.subscribers, next);
                (true, first)
            }
            None => (false, false),
        };
        if first {
            self.occupancy_changed(&topic.name, Occupancy::Occupied);
        }
        Ok((added, topic.name.clone()))
    }

    /// Removes `slot`, a client taking `encoding`, from `channel`'s subscribers; false if
    /// it was not there. A topic whose last subscriber leaves is removed from the table.
    pub(crate) fn unsubscribe(&self, channel: &str, slot: u32, encoding: Encoding) -> bool {
        let shard = self.shard(channel);
        let _writer = shard.writer.lock().unwrap_or_else(|e| e.into_inner());
        let map = shard.map.load();
        let Some(topic) = map.get(channel) else {
            return false;
        };
        let Some(next) = topic.subscribers.load().without(slot, encoding) else {
            return false;
        };
        let now_empty = next.is_empty();
        Self::replace(&topic.subscribers, next);
        if now_empty {
            let mut next_map = Map::clone(&map);
            next_map.remove(channel);
            Self::replace(&shard.map, next_map);
            self.occupancy_changed(&topic.name, Occupancy::Vacated);
        }
        true
    }

    /// The number of subscribers of `name`.
    pub(crate) fn subscriber_count(&self, name: &str) -> usize {
        self.with_subscribers(name, Subscribers::len).unwrap_or(0)
    }

    /// Every channel with at least one subscriber, with its subscriber count.
    pub(crate) fn counts(&self) -> Vec<(Channel, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for topic in shard.map.load().values() {
                out.push((topic.name.clone(), topic.subscribers.load().len()));
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_appear_and_disappear_with_their_subscribers() {
        let topics = Topics::new();
        let ch = Channel::new("orders").unwrap();
        assert!(topics.with_subscribers("orders", |_| ()).is_none());
        assert!(topics.subscribe(&ch, 3));
        assert!(!topics.subscribe(&ch, 3));
        assert!(topics.subscribe(&ch, 7));
        assert_eq!(
            topics.with_subscribers("orders", |s| s.to_vec()),
            Some(vec![3, 7])
        );
        let sv = Encoding::default();
        assert!(topics.unsubscribe("orders", 3, sv));
        assert!(!topics.unsubscribe("orders", 3, sv));
        assert!(topics.unsubscribe("orders", 7, sv));
        assert!(topics.with_subscribers("orders", |_| ()).is_none());
        assert!(topics.counts().is_empty());
    }
}
