//! What a client that cannot keep up is owed, under `slow_consumer = "degrade"`.
//!
//! A degrading outbox ([`super::outbox`]) does not queue every event: past its high-water
//! mark it holds back the ones that matter least, and records them here, per channel, in a
//! [`Book`]:
//! - an event with a conflation key is **parked**: the newest event of each key waits here
//!   (a newer one with the same key makes the parked one obsolete, and it is counted as
//!   missed and *conflated*);
//! - any other event is **missed**: counted, with the range of offsets it falls in.
//!
//! When the client has read everything queued, the writer takes the book and sends, per
//! channel, a `gap` marker (how many events were missed, the offsets they lie between),
//! the parked events, and the channel's current snapshot where it has one; then the client
//! is served normally again. While a channel has anything in the book, its later events
//! (except `critical` ones) go to the book too, so that what the client receives of a
//! channel stays in publish order.
//!
//! The book is touched only by publishers and the writer of a client that is degrading,
//! under the outbox's lock; a client that keeps up never has one.

use bytes::Bytes;

use crate::event::{ConflateKey, Priority};

/// What a degrading outbox needs to know about a broadcast frame.
#[derive(Debug, Clone, Copy)]
pub struct Tag<'a> {
    /// The event's channel.
    pub channel: &'a str,
    /// How much it matters.
    pub priority: Priority,
    /// Its conflation key, if it has one.
    pub conflate: Option<&'a ConflateKey>,
    /// Its offset (0: it has none).
    pub offset: u64,
    /// The offset of the channel's event before it (0: none, or no offsets).
    pub prev: u64,
}

impl<'a> Tag<'a> {
    /// A tag for a frame on `channel` without offset, key or priority of its own (a status
    /// broadcast, say).
    pub fn plain(channel: &'a str) -> Self {
        Self {
            channel,
            priority: Priority::Normal,
            conflate: None,
            offset: 0,
            prev: 0,
        }
    }
}

/// Why an event was not delivered to a degrading client, for the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Missed {
    /// Events held back, by priority ([`Priority`] order: low, normal, high), conflated
    /// ones excluded.
    pub shed: [u64; 3],
    /// Events made obsolete by a newer event with the same conflation key.
    pub conflated: u64,
}

impl Missed {
    /// Every event counted.
    pub fn total(&self) -> u64 {
        self.shed.iter().sum::<u64>() + self.conflated
    }
}

/// One channel's share of a [`Book`].
#[derive(Debug)]
pub struct Held {
    /// The channel.
    pub channel: Box<str>,
    /// Events not delivered and not to be (conflated ones included).
    pub missed: u64,
    /// Of `missed`, those made obsolete by a newer event with the same key.
    pub conflated: u64,
    /// The offset of the channel's event before the first missed one (0: none, or the
    /// missed events carry no offsets): resuming with `since` set to it replays them.
    pub after: u64,
    /// The offset of the last missed event (0: they carry none).
    pub through: u64,
    /// The newest event of each conflation key, oldest first, to send after the gap.
    pub parked: Vec<Bytes>,
    parked_keys: Vec<(ConflateKey, u64, u64)>,
}

impl Held {
    fn new(channel: &str) -> Self {
        Self {
            channel: channel.into(),
            missed: 0,
            conflated: 0,
            after: 0,
            through: 0,
            parked: Vec::new(),
            parked_keys: Vec::new(),
        }
    }

    /// Counts an event at `offset` (after `prev`) as missed.
    fn miss(&mut self, offset: u64, prev: u64) {
        // Conflated events are missed out of order: the range is the widest seen.
        self.after = match self.missed {
            0 => prev,
            _ => self.after.min(prev),
        };
        self.missed += 1;
        self.through = self.through.max(offset);
    }
}

/// What a degrading client missed and what it is owed, per channel, in the order the
/// channels first lost something. See the [module docs](self).
#[derive(Debug, Default)]
pub struct Book {
    held: Vec<Held>,
    parked_frames: usize,
    parked_bytes: usize,
    counts: Missed,
}

impl Book {
    /// Whether `channel` has anything in the book: its events must wait behind it.
    pub(crate) fn holds(&self, channel: &str) -> bool {
        self.held.iter().any(|h| &*h.channel == channel)
    }

    /// Notes that `channel` is owed its snapshot (a subscribe while behind): it goes out
    /// at the catch-up, and the channel's events wait behind it.
    pub(crate) fn owe(&mut self, channel: &str) {
        if !self.holds(channel) {
            self.held.push(Held::new(channel));
        }
    }

    /// Holds back an event that was not queued: parks it if it has a conflation key and
    /// parking room is left (`max_frames`, `max_bytes`), counts it as missed otherwise.
    pub(crate) fn hold(
        &mut self,
        tag: &Tag<'_>,
        frame: Bytes,
        max_frames: usize,
        max_bytes: usize,
    ) {
        let at = match self.held.iter().position(|h| &*h.channel == tag.channel) {
            Some(at) => at,
            None => {
                self.held.push(Held::new(tag.channel));
                self.held.len() - 1
            }
        };
        let held = &mut self.held[at];
        let Some(key) = tag.conflate else {
            held.miss(tag.offset, tag.prev);
            self.counts.shed[shed_index(tag.priority)] += 1;
            return;
        };
        if let Some(i) = held.parked_keys.iter().position(|(k, _, _)| k == key) {
            // The newer event replaces the parked one, which is missed for good.
            let (_, offset, prev) = held.parked_keys.remove(i);
            let old = held.parked.remove(i);
            held.miss(offset, prev);
            held.conflated += 1;
            self.counts.conflated += 1;
            self.parked_bytes -= old.len();
            self.parked_frames -= 1;
        } else if self.parked_frames >= max_frames || self.parked_bytes + frame.len() > max_bytes {
            held.miss(tag.offset, tag.prev);
            self.counts.shed[shed_index(tag.priority)] += 1;
            return;
        }
        self.parked_frames += 1;
        self.parked_bytes += frame.len();
        held.parked_keys.push((key.clone(), tag.offset, tag.prev));
        held.parked.push(frame);
    }

    /// Takes `channel`'s parked events, oldest first, to be queued ahead of a `critical`
    /// event of the channel; what it missed stays in the book.
    pub(crate) fn unpark(&mut self, channel: &str) -> Vec<Bytes> {
        let Some(held) = self.held.iter_mut().find(|h| &*h.channel == channel) else {
            return Vec::new();
        };
        held.parked_keys.clear();
        let parked = std::mem::take(&mut held.parked);
        self.parked_frames -= parked.len();
        self.parked_bytes -= parked.iter().map(Bytes::len).sum::<usize>();
        parked
    }

    /// Each channel's share, in the order the channels first lost something.
    pub fn into_held(self) -> Vec<Held> {
        self.held
    }

    /// Why the events counted here were missed.
    pub fn counts(&self) -> Missed {
        self.counts
    }

    /// The frames and bytes parked.
    pub fn parked(&self) -> (usize, usize) {
        (self.parked_frames, self.parked_bytes)
    }
}

/// `Missed::shed`'s index for a priority that can be held back.
fn shed_index(priority: Priority) -> usize {
    match priority {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High | Priority::Critical => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag<'a>(channel: &'a str, key: Option<&'a ConflateKey>, offset: u64, prev: u64) -> Tag<'a> {
        Tag {
            channel,
            priority: Priority::Normal,
            conflate: key,
            offset,
            prev,
        }
    }

    #[test]
    fn missed_events_are_counted_with_their_offset_range() {
        let (a, b) = ("a", "b");
        let mut book = Book::default();
        book.hold(&tag(a, None, 12, 10), Bytes::from_static(b"x"), 8, 1024);
        book.hold(&tag(b, None, 13, 0), Bytes::from_static(b"x"), 8, 1024);
        book.hold(&tag(a, None, 15, 12), Bytes::from_static(b"x"), 8, 1024);
        assert!(book.holds(a) && book.holds(b));
        assert_eq!(book.counts().shed, [0, 3, 0]);
        let held = book.into_held();
        assert_eq!(&*held[0].channel, a);
        assert_eq!(
            (held[0].missed, held[0].after, held[0].through),
            (2, 10, 15)
        );
        assert_eq!((held[1].missed, held[1].after, held[1].through), (1, 0, 13));
    }

    #[test]
    fn the_newest_event_of_a_key_is_parked_and_older_ones_are_conflated() {
        let a = "a";
        let (k1, k2) = (
            ConflateKey::new("k1").unwrap(),
            ConflateKey::new("k2").unwrap(),
        );
        let mut book = Book::default();
        book.hold(&tag(a, Some(&k1), 5, 4), Bytes::from_static(b"1"), 8, 1024);
        book.hold(&tag(a, Some(&k2), 6, 5), Bytes::from_static(b"2"), 8, 1024);
        book.hold(&tag(a, Some(&k1), 7, 6), Bytes::from_static(b"3"), 8, 1024);
        assert_eq!(book.counts().conflated, 1);
        assert_eq!(book.parked(), (2, 2));
        let held = book.into_held();
        assert_eq!(
            held[0].parked,
            [Bytes::from_static(b"2"), Bytes::from_static(b"3")]
        );
        assert_eq!((held[0].missed, held[0].conflated), (1, 1));
        assert_eq!((held[0].after, held[0].through), (4, 5));
    }

    #[test]
    fn parking_is_bounded_and_unparking_keeps_what_was_missed() {
        let a = "a";
        let keys: Vec<ConflateKey> = (0..4)
            .map(|i| ConflateKey::new(&format!("k{i}")).unwrap())
            .collect();
        let mut book = Book::default();
        for (i, key) in keys.iter().enumerate() {
            let offset = i as u64 + 1;
            book.hold(
                &tag(a, Some(key), offset, offset - 1),
                Bytes::from_static(b"x"),
                2,
                1024,
            );
        }
        // Two parked; the other two keys found no room and were missed.
        assert_eq!(book.parked(), (2, 2));
        assert_eq!(book.counts().shed, [0, 2, 0]);
        assert_eq!(book.unpark(a).len(), 2);
        assert_eq!(book.parked(), (0, 0));
        assert!(book.holds(a), "the missed events still owe a gap");
        assert_eq!(book.into_held()[0].missed, 2);
    }
}
