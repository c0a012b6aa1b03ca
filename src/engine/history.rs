//! Each channel's recent events, with offsets, so that a client that reconnects can ask for
//! what it missed.
//!
//! # Offsets
//! Every event published through the hub gets an *offset*: a number from one hub-wide
//! sequence, so offsets increase along each channel but are not contiguous within it (the
//! same model as a JetStream stream's sequence, which a cluster uses instead). Each entry
//! also records the offset of the channel's previous event (`prev`), which is how the log
//! knows whether it still reaches back to a client's last offset.
//!
//! The *epoch* names the sequence: it is drawn at random when the hub starts, so offsets
//! from before a restart are never mistaken for today's.
//!
//! # Ordering and locking
//! Publishing on a channel takes that channel's log lock, appends the encoded frame, and
//! fans it out *under the lock*. A recovering subscriber takes the same locks, queues what it
//! missed, subscribes, and only then lets publishers go on: nothing published meanwhile can
//! be missed or delivered twice. Publishers of different channels never share a lock, and
//! the fan-out itself stays lock-free.
//!
//! # Bounds
//! A log keeps at most `size` frames, none older than `max_age`; frames are the refcounted
//! frames that were delivered, so history costs one pointer per entry plus the frames it
//! keeps alive. Idle logs are dropped beyond `max_channels`.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use parking_lot::{ArcMutexGuard, Mutex, RawMutex, RwLock};

use super::rules::ChannelRules;
use crate::config::{ChannelRule, HistoryConfig};
use crate::protocol::channel::Channel;
use crate::protocol::recovery::{Incomplete, Recovery};

const SHARDS: usize = 16;

/// One shard of the channel-to-log map.
type Shard = RwLock<HashMap<Channel, Arc<Mutex<Log>>>>;

/// "The previous offset is not known": the log was dropped or started after a restart.
pub const UNKNOWN: u64 = u64::MAX;

/// One retained event.
#[derive(Debug, Clone)]
struct Entry {
    offset: u64,
    prev: u64,
    at: SystemTime,
    frame: Bytes,
}

/// One channel's log.
#[derive(Debug)]
pub struct Log {
    /// The offset of the channel's latest event (0: none since the log was created).
    last: u64,
    /// Most entries it keeps: `history.size`, or its channel's `[[channels]]` rule's.
    size: usize,
    /// `prev` of the log's first event: 0 if the channel had no event before the log was
    /// created, [`UNKNOWN`] if it may have (logs were dropped since the hub started).
    start_prev: u64,
    entries: VecDeque<Entry>,
}

/// Per-channel logs and the hub-wide offset sequence.
#[derive(Debug)]
pub struct History {
    size: usize,
    rules: ChannelRules,
    max_age: Duration,
    max_channels: usize,
    epoch: ArcSwap<String>,
    next: AtomicU64,
    /// Offsets come from a sequence kept elsewhere (a cluster's stream), see
    /// [`History::number_elsewhere`].
    numbered_elsewhere: AtomicBool,
    /// Whether any log has been dropped: a channel's new log then cannot vouch for the past.
    dropped: AtomicBool,
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
}

impl History {
    /// Logs as `config` says, and as `channels` say for the channels they match, numbered
    /// in a fresh random epoch.
    pub fn new(config: &HistoryConfig, channels: &[ChannelRule]) -> Self {
        let hasher = std::collections::hash_map::RandomState::new();
        Self {
            size: config.size,
            rules: ChannelRules::new(channels),
            max_age: config.max_age,
            max_channels: config.max_channels,
            epoch: ArcSwap::from_pointee(random_epoch(&hasher)),
            next: AtomicU64::new(1),
            numbered_elsewhere: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher,
        }
    }

    /// The name of this offset sequence.
    pub fn epoch(&self) -> Arc<String> {
        self.epoch.load_full()
    }

    /// Hands the numbering to a sequence kept elsewhere (a cluster's stream), named
    /// `epoch`. From then on events are numbered only by
    /// [`append_sequenced`](Self::append_sequenced); an event published on this hub alone
    /// is delivered without an offset and not kept (it has no place in that sequence).
    pub fn number_elsewhere(&self, epoch: String) {
        self.epoch.store(Arc::new(epoch));
        self.numbered_elsewhere.store(true, Ordering::Release);
    }

    /// Whether this history numbers the events published on its hub (see
    /// [`number_elsewhere`](Self::number_elsewhere)).
    pub fn numbers_locally(&self) -> bool {
        !self.numbered_elsewhere.load(Ordering::Acquire)
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    fn log(&self, channel: &Channel) -> Arc<Mutex<Log>> {
        let shard = self.shard(channel);
        if let Some(log) = shard.read().get(channel.as_str()) {
            return log.clone();
        }
        let start_prev = if self.dropped.load(Ordering::Acquire) {
            UNKNOWN
        } else {
            0
        };
        let size = self.rules.history(channel).unwrap_or(self.size);
        let mut map = shard.write();
        map.entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Log {
                    last: 0,
                    size,
                    start_prev,
                    entries: VecDeque::new(),
                }))
            })
            .clone()
    }

    /// Appends an event to `channel`'s log and delivers it, both under the log's lock:
    /// `encode` builds the (canonical) frame for the event's offset, `deliver` fans it out
    /// given the offset, the offset of the channel's event before it, and that frame.
    pub fn append<R>(
        &self,
        channel: &Channel,
        now: SystemTime,
        encode: impl FnOnce(u64) -> Bytes,
        deliver: impl FnOnce(u64, u64, &Bytes) -> R,
    ) -> R {
        let log = self.log(channel);
        let mut log = log.lock();
        // Taken under the channel's lock, so offsets rise along the channel in delivery order.
        let offset = self.next.fetch_add(1, Ordering::Relaxed);
        let prev = if log.last == 0 {
            log.start_prev
        } else {
            log.last
        };
        let frame = self.record(&mut log, offset, prev, now, encode);
        deliver(offset, prev, &frame)
    }

    /// Appends an event whose offset was assigned elsewhere (a cluster's stream), after
    /// the channel's event at `prev`, and delivers it, both under the log's lock. An offset
    /// not above the log's last is a duplicate: nothing is done and `None` returned.
    pub fn append_sequenced<R>(
        &self,
        channel: &Channel,
        offset: u64,
        prev: u64,
        now: SystemTime,
        encode: impl FnOnce(u64) -> Bytes,
        deliver: impl FnOnce(u64, u64, &Bytes) -> R,
    ) -> Option<R> {
        let log = self.log(channel);
        let mut log = log.lock();
        if offset <= log.last {
            return None;
        }
        let frame = self.record(&mut log, offset, prev, now, encode);
        Some(deliver(offset, prev, &frame))
    }

    /// Encodes the event at `offset` and keeps it as the log's latest.
    fn record(
        &self,
        log: &mut Log,
        offset: u64,
        prev: u64,
        now: SystemTime,
        encode: impl FnOnce(u64) -> Bytes,
    ) -> Bytes {
        let frame = encode(offset);
        log.entries.push_back(Entry {
            offset,
            prev,
            at: now,
            frame: frame.clone(),
        });
        log.last = offset;
        self.trim(log, now);
        frame
    }

    /// Puts events read back from elsewhere (a cluster's stream) in front of `channel`'s
    /// log, oldest first, each `(offset, prev, published at, frame)`. Only those older than
    /// the log's first entry are taken (live events may have arrived meanwhile); the log's
    /// bounds still apply. Returns how many were taken.
    ///
    /// `latest` is the channel's latest offset where the events came from: a log that has
    /// seen nothing yet takes it as its last, so a client that missed nothing recovers.
    pub fn backfill(
        &self,
        channel: &Channel,
        events: Vec<(u64, u64, SystemTime, Bytes)>,
        latest: u64,
        now: SystemTime,
    ) -> usize {
        let log = self.log(channel);
        let mut log = log.lock();
        if log.last == 0 && log.entries.is_empty() {
            log.last = latest;
        }
        let before = match log.entries.front() {
            Some(first) => first.offset,
            // Emptied by age after events: what is older is older still.
            None if log.last > latest => return 0,
            None => u64::MAX,
        };
        let older: Vec<Entry> = events
            .into_iter()
            .filter(|(offset, ..)| *offset < before)
            .map(|(offset, prev, at, frame)| Entry {
                offset,
                prev,
                at,
                frame,
            })
            .collect();
        let taken = older.len();
        if log.entries.is_empty() {
            log.last = older.last().map_or(log.last, |e| e.offset.max(log.last));
        }
        for entry in older.into_iter().rev() {
            log.entries.push_front(entry);
        }
        self.trim(&mut log, now);
        taken
    }

    /// The offset of the first event kept for `channel`, if any.
    pub fn first(&self, channel: &Channel) -> Option<u64> {
        self.log(channel).lock().entries.front().map(|e| e.offset)
    }

    /// The offset of the latest event of `channel` in its log (0: none).
    pub fn last(&self, channel: &Channel) -> u64 {
        self.log(channel).lock().last
    }

    /// Where a subscription to `channel` starts: the offset of its latest event, 0 when
    /// it has none here. A client that saw nothing on the channel resumes from this
    /// position. Unlike [`last`](Self::last), creates no log for a quiet channel.
    pub fn position(&self, channel: &Channel) -> u64 {
        let log = self.shard(channel).read().get(channel.as_str()).cloned();
        log.map_or(0, |log| log.lock().last)
    }

    /// Drops `channel`'s log: its events stopped arriving (a cluster node lost interest).
    pub fn forget(&self, channel: &str) {
        self.dropped.store(true, Ordering::Release);
        self.shard(channel).write().remove(channel);
    }

    fn trim(&self, log: &mut Log, now: SystemTime) {
        while log.entries.len() > log.size {
            log.entries.pop_front();
        }
        while log
            .entries
            .front()
            .is_some_and(|e| now.duration_since(e.at).unwrap_or_default() > self.max_age)
        {
            log.entries.pop_front();
        }
    }

    /// Drops entries past `max_age` everywhere, and, beyond `max_channels` logs, the logs
    /// that hold no entry. Called about once a second.
    pub fn sweep(&self, now: SystemTime) {
        let mut total = 0;
        for shard in self.shards.iter() {
            let map = shard.read();
            total += map.len();
            for log in map.values() {
                self.trim(&mut log.lock(), now);
            }
        }
        if total <= self.max_channels {
            return;
        }
        self.dropped.store(true, Ordering::Release);
        for shard in self.shards.iter() {
            shard
                .write()
                .retain(|_, log| !log.lock().entries.is_empty());
        }
    }

    /// Locks the logs of `channels` (sorted, so two lockers never deadlock) for a
    /// recovering subscribe; publishers on them wait until the guard is dropped.
    pub fn lock<'a>(&self, channels: impl IntoIterator<Item = &'a Channel>) -> Locked {
        let mut channels: Vec<&Channel> = channels.into_iter().collect();
        channels.sort_unstable();
        channels.dedup();
        let logs: Vec<(Channel, Arc<Mutex<Log>>)> = channels
            .into_iter()
            .map(|c| (c.clone(), self.log(c)))
            .collect();
        Locked::new(logs)
    }

    /// Number of channels with a log.
    pub fn channels(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

/// Logs locked for a recovering subscribe; see [`History::lock`].
pub struct Locked {
    guards: Vec<(Channel, ArcMutexGuard<RawMutex, Log>)>,
}

impl Locked {
    fn new(logs: Vec<(Channel, Arc<Mutex<Log>>)>) -> Self {
        Self {
            guards: logs
                .into_iter()
                .map(|(channel, log)| (channel, log.lock_arc()))
                .collect(),
        }
    }

    /// What a client that last saw `since` on `channel` missed, oldest first, and whether
    /// that is everything it missed. `None` if `channel` is not locked here.
    pub fn missed(&self, channel: &str, since: u64) -> Option<(Recovery, Vec<Bytes>)> {
        let (_, log) = self.guards.iter().find(|(c, _)| c.as_str() == channel)?;
        Some(log.missed(since))
    }
}

impl Log {
    fn missed(&self, since: u64) -> (Recovery, Vec<Bytes>) {
        if since == self.last {
            return (Recovery::complete(0), Vec::new());
        }
        if since > self.last {
            let reason = if self.last == 0 && self.start_prev == UNKNOWN {
                Incomplete::HistoryTruncated
            } else {
                Incomplete::UnknownOffset
            };
            return (Recovery::failed(reason), Vec::new());
        }
        let first_new = self.entries.partition_point(|e| e.offset <= since);
        let frames: Vec<Bytes> = self
            .entries
            .range(first_new..)
            .map(|e| e.frame.clone())
            .collect();
        // Complete if the entry before the first replayed one is the client's, or the first
        // replayed one follows directly on what the client saw.
        let complete = match self.entries.get(first_new) {
            Some(_) if first_new > 0 => true,
            Some(e) => e.prev != UNKNOWN && e.prev <= since,
            None => false,
        };
        let recovery = if complete {
            Recovery::complete(frames.len())
        } else {
            Recovery {
                recovered: false,
                replayed: frames.len(),
                reason: Some(Incomplete::HistoryTruncated),
            }
        };
        (recovery, frames)
    }
}

fn random_epoch(hasher: &std::collections::hash_map::RandomState) -> String {
    let mut h = hasher.build_hasher();
    std::time::SystemTime::now().hash(&mut h);
    std::process::id().hash(&mut h);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(size: usize) -> History {
        History::new(
            &HistoryConfig {
                size,
                max_age: Duration::from_secs(60),
                max_channels: 100,
            },
            &[],
        )
    }

    fn ch(name: &str) -> Channel {
        Channel::new(name).unwrap()
    }

    /// Publishes `n` events on `channel`; returns their offsets.
    fn publish(h: &History, channel: &str, n: usize, now: SystemTime) -> Vec<u64> {
        (0..n)
            .map(|_| {
                h.append(
                    &ch(channel),
                    now,
                    |offset| Bytes::from(offset.to_string()),
                    |offset, _, frame| {
                        assert_eq!(frame, offset.to_string().as_bytes());
                        offset
                    },
                )
            })
            .collect()
    }

    fn missed(h: &History, channel: &str, since: u64) -> (Recovery, Vec<u64>) {
        let c = ch(channel);
        let locked = h.lock([&c]);
        let (recovery, frames) = locked.missed(channel, since).unwrap();
        let offsets = frames
            .iter()
            .map(|f| std::str::from_utf8(f).unwrap().parse().unwrap())
            .collect();
        (recovery, offsets)
    }

    #[test]
    fn a_channel_rule_sets_its_channels_log_size() {
        let mut big = ChannelRule::new("big.*");
        big.history = Some(5);
        let mut none = ChannelRule::new("none");
        none.history = Some(0);
        let config = HistoryConfig {
            size: 2,
            max_age: Duration::from_secs(60),
            max_channels: 100,
        };
        let h = History::new(&config, &[big, none]);
        let now = SystemTime::now();
        for channel in ["big.one", "small", "none"] {
            publish(&h, channel, 10, now);
        }
        assert_eq!(missed(&h, "big.one", 0).1.len(), 5);
        assert_eq!(missed(&h, "small", 0).1.len(), 2);
        let (recovery, kept) = missed(&h, "none", 0);
        assert!(kept.is_empty());
        assert!(!recovery.recovered, "{recovery:?}");
    }

    #[test]
    fn offsets_rise_per_channel_from_one_sequence() {
        let h = history(10);
        let now = SystemTime::now();
        assert_eq!(publish(&h, "a", 2, now), [1, 2]);
        assert_eq!(publish(&h, "b", 1, now), [3]);
        assert_eq!(publish(&h, "a", 1, now), [4]);
    }

    #[test]
    fn a_client_gets_exactly_what_it_missed() {
        let h = history(10);
        let now = SystemTime::now();
        publish(&h, "a", 3, now); // 1 2 3
        publish(&h, "b", 1, now); // 4
        publish(&h, "a", 2, now); // 5 6
        assert_eq!(missed(&h, "a", 2), (Recovery::complete(3), vec![3, 5, 6]));
        assert_eq!(missed(&h, "a", 6), (Recovery::complete(0), vec![]));
        // Nothing seen yet on a channel whose whole past is kept.
        assert_eq!(missed(&h, "a", 0).1, vec![1, 2, 3, 5, 6]);
        assert!(missed(&h, "a", 0).0.recovered);
        // An offset from another channel between two of this one's events works too.
        assert_eq!(missed(&h, "a", 4), (Recovery::complete(2), vec![5, 6]));
    }

    #[test]
    fn a_position_resumes_exactly_what_came_after_it() {
        let h = history(10);
        let now = SystemTime::now();
        assert_eq!(h.position(&ch("a")), 0);
        assert_eq!(h.channels(), 0, "a quiet channel's position creates no log");
        publish(&h, "a", 2, now); // 1 2
        publish(&h, "b", 1, now); // 3
        let at = h.position(&ch("a"));
        assert_eq!(at, 2);
        assert_eq!(missed(&h, "a", at), (Recovery::complete(0), vec![]));
        publish(&h, "a", 1, now); // 4
        assert_eq!(missed(&h, "a", at), (Recovery::complete(1), vec![4]));
        assert_eq!(
            missed(&h, "quiet", h.position(&ch("quiet"))).0,
            Recovery::complete(0)
        );
    }

    #[test]
    fn a_log_that_no_longer_reaches_back_says_so_and_replays_what_it_has() {
        let h = history(3);
        let now = SystemTime::now();
        publish(&h, "a", 6, now); // keeps 4 5 6
        assert_eq!(missed(&h, "a", 3), (Recovery::complete(3), vec![4, 5, 6]));
        let (recovery, offsets) = missed(&h, "a", 2);
        assert_eq!(offsets, vec![4, 5, 6]);
        assert!(!recovery.recovered);
        assert_eq!(recovery.reason, Some(Incomplete::HistoryTruncated));
    }

    #[test]
    fn future_offsets_are_unknown() {
        let h = history(3);
        let now = SystemTime::now();
        publish(&h, "a", 2, now);
        assert_eq!(missed(&h, "a", 9).0.reason, Some(Incomplete::UnknownOffset));
        assert_eq!(
            missed(&h, "new", 9).0.reason,
            Some(Incomplete::UnknownOffset)
        );
    }

    #[test]
    fn old_entries_expire_and_idle_logs_are_dropped_past_the_limit() {
        let h = History::new(
            &HistoryConfig {
                size: 10,
                max_age: Duration::from_secs(5),
                max_channels: 2,
            },
            &[],
        );
        let t0 = SystemTime::now();
        publish(&h, "a", 2, t0);
        publish(&h, "b", 1, t0);
        publish(&h, "c", 1, t0 + Duration::from_secs(4));
        h.sweep(t0 + Duration::from_secs(6));
        // a and b expired, c is kept; with 3 logs over a limit of 2, the empty ones go.
        assert_eq!(h.channels(), 1);
        assert_eq!(missed(&h, "c", 3), (Recovery::complete(1), vec![4]));
        // A's log is gone: its next event cannot vouch for what came before.
        publish(&h, "a", 1, t0 + Duration::from_secs(7)); // 5
        let (recovery, offsets) = missed(&h, "a", 2);
        assert_eq!(offsets, vec![5]);
        assert_eq!(recovery.reason, Some(Incomplete::HistoryTruncated));
    }

    #[test]
    fn a_locked_channel_holds_publishers_back() {
        let h = Arc::new(history(10));
        let c = ch("a");
        let locked = h.lock([&c]);
        let publisher = {
            let h = h.clone();
            std::thread::spawn(move || publish(&h, "a", 1, SystemTime::now()))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !publisher.is_finished(),
            "publish went through a locked log"
        );
        assert_eq!(locked.missed("a", 0).unwrap().1.len(), 0);
        drop(locked);
        assert_eq!(publisher.join().unwrap(), [1]);
    }

    #[test]
    fn epochs_differ_between_hubs() {
        assert_ne!(history(1).epoch(), history(1).epoch());
    }

    #[test]
    fn backfilled_events_go_in_front_and_complete_the_chain() {
        let h = history(10);
        let now = SystemTime::now();
        let c = ch("a");
        let frame = |o: u64| Bytes::from(o.to_string());
        // Live: 20 (after 15) arrived; the stream holds 12 (after 9) and 15 (after 12).
        h.append_sequenced(&c, 20, 15, now, frame, |_, _, _| ());
        let fetched = vec![
            (12, 9, now, frame(12)),
            (15, 12, now, frame(15)),
            (20, 15, now, frame(20)),
        ];
        assert_eq!(h.backfill(&c, fetched, 20, now), 2, "20 is already there");
        assert_eq!(
            missed(&h, "a", 9),
            (Recovery::complete(3), vec![12, 15, 20])
        );
        assert_eq!(h.first(&c), Some(12));
        // Into an empty log, the backfill is the log.
        let d = ch("d");
        h.backfill(&d, vec![(3, 1, now, frame(3))], 3, now);
        assert_eq!(h.last(&d), 3);
        assert_eq!(missed(&h, "d", 1), (Recovery::complete(1), vec![3]));
        // Nothing to read back, but the source's latest is known: up to date is recovered.
        let e = ch("e");
        h.backfill(&e, Vec::new(), 7, now);
        assert_eq!(missed(&h, "e", 7), (Recovery::complete(0), vec![]));
        assert_eq!(missed(&h, "e", 8).0.reason, Some(Incomplete::UnknownOffset));
    }

    #[test]
    fn sequenced_events_keep_their_offsets_and_duplicates_are_dropped() {
        let h = history(10);
        let now = SystemTime::now();
        let c = ch("a");
        let append = |offset, prev| {
            h.append_sequenced(
                &c,
                offset,
                prev,
                now,
                |o| Bytes::from(o.to_string()),
                |_, _, _| (),
            )
        };
        assert_eq!(append(10, 4), Some(()));
        assert_eq!(append(12, 10), Some(()));
        assert_eq!(append(12, 10), None, "a duplicate");
        assert_eq!(append(11, 10), None, "older than the last");
        // The log knows the channel's event before 10 was 4.
        assert_eq!(missed(&h, "a", 4), (Recovery::complete(2), vec![10, 12]));
        assert!(!missed(&h, "a", 3).0.recovered);
        h.forget("a");
        assert_eq!(h.last(&c), 0);
    }
}
