//! Throttling by channel rule (`[[channels]] throttle = "500ms"`): at most one event per key
//! per interval reaches the broker, the latest winning.
//!
//! The key is the event's conflation key, or its channel when it has none. The first event
//! of a key passes at once and opens a window of `throttle`; an event of that key within
//! the window is held, replacing the one held before it (which is counted as superseded and
//! never published). When the window ends, the held event is published (by the server's
//! throttle ticker, [`Throttle::due`]) and opens the next window; a window that ends with
//! nothing held is forgotten, so the table holds only keys published within the last
//! interval. A `critical` event (by its own priority or its channel's) is never throttled:
//! it passes at once and leaves the key's window as it was.
//!
//! Throttling happens before the broker, where events enter the server (HTTP publish and a
//! socket's `publish`): a held or superseded event never gets an offset, and in a cluster
//! each event is throttled by the node it was published on. [`Hub::publish`](crate::Hub::publish),
//! called by an embedder, is not throttled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::ChannelRule;
use crate::engine::rules::ChannelRules;
use crate::event::{ConflateKey, Event, Priority};
use crate::protocol::channel::Channel;

/// Shortest and longest ticker period.
const TICK: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(250));

type Key = (Channel, Option<ConflateKey>);

struct Window {
    interval: Duration,
    ends: Instant,
    /// The held event, with its place in the order events were held.
    held: Option<(u64, Event)>,
}

#[derive(Default)]
struct Windows {
    by_key: HashMap<Key, Window>,
    next_seq: u64,
}

/// The throttle of a server: its rules and each throttled key's window.
pub(crate) struct Throttle {
    rules: ChannelRules,
    tick: Option<Duration>,
    windows: Mutex<Windows>,
    held: AtomicU64,
    superseded: AtomicU64,
}

/// What [`Throttle::admit`] let through.
pub(crate) struct Admitted {
    /// The events to publish now, in their order.
    pub(crate) events: Vec<Event>,
    /// Events held for the end of their key's window.
    pub(crate) throttled: usize,
}

impl Throttle {
    /// A throttle for the `throttle` options of `rules`.
    pub(crate) fn new(rules: &[ChannelRule]) -> Self {
        let shortest = rules.iter().filter_map(|rule| rule.throttle).min();
        Self {
            rules: ChannelRules::new(rules),
            tick: shortest.map(|interval| (interval / 4).clamp(TICK.0, TICK.1)),
            windows: Mutex::default(),
            held: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
        }
    }

    /// How often [`due`](Self::due) should be called; `None` when no rule throttles.
    pub(crate) fn tick(&self) -> Option<Duration> {
        self.tick
    }

    /// Events held so far, and of them, those replaced by a newer one of their key.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.held.load(Ordering::Relaxed),
            self.superseded.load(Ordering::Relaxed),
        )
    }

    /// Splits `events` into those to publish now and those held; in order.
    pub(crate) fn admit(&self, events: Vec<Event>, now: Instant) -> Admitted {
        if self.tick.is_none() {
            return Admitted {
                events,
                throttled: 0,
            };
        }
        let mut guard = self.windows.lock();
        let Windows { by_key, next_seq } = &mut *guard;
        let mut admitted = Admitted {
            events: Vec::with_capacity(events.len()),
            throttled: 0,
        };
        for event in events {
            let channel = event.channel();
            let interval = self.rules.throttle(channel).filter(|_| {
                // A `critical` event is never held or replaced, nor does it open a window.
                event
                    .priority()
                    .unwrap_or_else(|| self.rules.priority(channel))
                    != Priority::Critical
            });
            let Some(interval) = interval else {
                admitted.events.push(event);
                continue;
            };
            let key = (event.channel().clone(), event.conflate().cloned());
            match by_key.get_mut(&key) {
                Some(window) if now < window.ends => {
                    let seq = *next_seq;
                    *next_seq += 1;
                    self.held.fetch_add(1, Ordering::Relaxed);
                    if window.held.replace((seq, event)).is_some() {
                        self.superseded.fetch_add(1, Ordering::Relaxed);
                    }
                    admitted.throttled += 1;
                }
                _ => {
                    let window = Window {
                        interval,
                        ends: now + interval,
                        held: None,
                    };
                    by_key.insert(key, window);
                    admitted.events.push(event);
                }
            }
        }
        admitted
    }

    /// The held events whose window has ended, in the order they were held; each opens
    /// its key's next window. Forgets the windows that ended with nothing held.
    pub(crate) fn due(&self, now: Instant) -> Vec<Event> {
        let mut windows = self.windows.lock();
        let mut due = Vec::new();
        windows.by_key.retain(|_, window| {
            if now < window.ends {
                return true;
            }
            match window.held.take() {
                Some(held) => {
                    window.ends = now + window.interval;
                    due.push(held);
                    true
                }
                None => false,
            }
        });
        due.sort_unstable_by_key(|(seq, _)| *seq);
        due.into_iter().map(|(_, event)| event).collect()
    }
}

impl Throttle {
    /// Every held event, due or not, in the order they were held, and no window left: at
    /// shutdown, so that nothing a throttle holds is lost.
    pub(crate) fn take_all(&self) -> Vec<Event> {
        let mut windows = self.windows.lock();
        let mut held: Vec<_> = windows
            .by_key
            .drain()
            .filter_map(|(_, window)| window.held)
            .collect();
        held.sort_unstable_by_key(|(seq, _)| *seq);
        held.into_iter().map(|(_, event)| event).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(pattern: &str, interval: Duration) -> Throttle {
        let mut rule = ChannelRule::new(pattern);
        rule.throttle = Some(interval);
        Throttle::new(&[rule])
    }

    fn event(channel: &str, n: u32, key: Option<&str>) -> Event {
        Event::new(channel, &n)
            .unwrap()
            .with_conflate(key.map(|k| ConflateKey::new(k).unwrap()))
    }

    fn data(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| format!("{}={}", e.channel(), e.data().get()))
            .collect()
    }

    #[test]
    fn the_first_passes_the_latest_in_the_window_follows_when_it_ends() {
        let t = throttle("m.*", Duration::from_millis(100));
        let t0 = Instant::now();
        let a = t.admit(vec![event("m.cpu", 1, None), event("m.cpu", 2, None)], t0);
        assert_eq!(data(&a.events), ["m.cpu=1"]);
        assert_eq!(a.throttled, 1);
        let b = t.admit(vec![event("m.cpu", 3, None), event("other", 9, None)], t0);
        assert_eq!(
            data(&b.events),
            ["other=9"],
            "an unthrottled channel passes"
        );
        assert_eq!(t.counts(), (2, 1), "2 was superseded by 3");

        assert!(t.due(t0 + Duration::from_millis(99)).is_empty());
        let at = t0 + Duration::from_millis(100);
        assert_eq!(data(&t.due(at)), ["m.cpu=3"]);
        // 3 opened the next window: 4 waits for it.
        assert_eq!(t.admit(vec![event("m.cpu", 4, None)], at).throttled, 1);
        assert_eq!(data(&t.due(at + Duration::from_millis(100))), ["m.cpu=4"]);
        // A window that ends with nothing held is forgotten: the next event passes.
        assert!(t.due(at + Duration::from_millis(200)).is_empty());
        let later = t.admit(
            vec![event("m.cpu", 5, None)],
            at + Duration::from_millis(200),
        );
        assert_eq!(data(&later.events), ["m.cpu=5"]);
    }

    #[test]
    fn each_conflation_key_has_its_own_window_and_held_events_keep_their_order() {
        let t = throttle("*", Duration::from_secs(1));
        let t0 = Instant::now();
        let first = [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5)];
        let events = first
            .iter()
            .map(|(k, n)| event("agents", *n, Some(k)))
            .collect();
        let a = t.admit(events, t0);
        assert_eq!(data(&a.events), ["agents=1", "agents=2"]);
        assert_eq!(a.throttled, 3);
        // b's 4 was held before a's 5: it is published first.
        assert_eq!(
            data(&t.due(t0 + Duration::from_secs(1))),
            ["agents=4", "agents=5"]
        );
    }

    #[test]
    fn critical_events_are_never_held() {
        let t = throttle("alerts", Duration::from_secs(1));
        let t0 = Instant::now();
        let critical = |n| event("alerts", n, None).with_priority(Priority::Critical);
        let a = t.admit(
            vec![
                event("alerts", 1, None),
                critical(2),
                event("alerts", 3, None),
                critical(4),
            ],
            t0,
        );
        assert_eq!(data(&a.events), ["alerts=1", "alerts=2", "alerts=4"]);
        assert_eq!(a.throttled, 1);

        let mut rules = [ChannelRule::new("alerts"), ChannelRule::new("alerts")];
        rules[0].priority = Some(Priority::Critical);
        rules[1].throttle = Some(Duration::from_secs(1));
        let by_channel = Throttle::new(&rules);
        let a = by_channel.admit(vec![event("alerts", 1, None), event("alerts", 2, None)], t0);
        assert_eq!(a.events.len(), 2, "critical by the channel's default");
    }

    #[test]
    fn at_shutdown_everything_held_comes_out_in_order() {
        let t = throttle("*", Duration::from_secs(3600));
        let t0 = Instant::now();
        let events = [("b", 1), ("a", 2), ("b", 3), ("a", 4), ("c", 5)]
            .iter()
            .map(|(channel, n)| event(channel, *n, None))
            .collect();
        assert_eq!(t.admit(events, t0).throttled, 2);
        assert_eq!(data(&t.take_all()), ["b=3", "a=4"]);
        assert!(t.take_all().is_empty());
        assert_eq!(t.admit(vec![event("b", 6, None)], t0).throttled, 0);
    }

    #[test]
    fn without_a_throttle_rule_nothing_is_held_or_ticked() {
        let t = Throttle::new(&[ChannelRule::new("*")]);
        assert_eq!(t.tick(), None);
        let a = t.admit(
            vec![event("a", 1, None), event("a", 2, None)],
            Instant::now(),
        );
        assert_eq!(a.events.len(), 2);
        assert_eq!(t.tick(), None);
        assert_eq!(throttle("*", Duration::from_secs(60)).tick(), Some(TICK.1));
        assert_eq!(throttle("*", Duration::from_millis(1)).tick(), Some(TICK.0));
    }
}
