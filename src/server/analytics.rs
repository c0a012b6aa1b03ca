//! Connection analytics (seed 002): how long connections last, how many are reconnections,
//! and message rates over the last minutes.
//!
//! Everything here happens per connection or once a second, never per frame: a connection
//! adds its duration when it ends, and the sampler reads the frame counters every second
//! into a short history that the stats API and the dashboard show as rates.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::auth::permissions::{Identity, Method};

/// A connection counts as a reconnection when its client ended another connection this
/// recently.
pub(crate) const RECONNECT_WINDOW: Duration = Duration::from_secs(60);

/// Clients remembered for reconnection counting; past it, departures are not remembered
/// until old ones expire (reconnections are then undercounted, memory stays bounded).
const MAX_REMEMBERED: usize = 100_000;

/// Seconds of per-second samples kept.
pub(crate) const HISTORY_SECONDS: usize = 300;

/// Seconds the throughput in the stats is averaged over.
const THROUGHPUT_WINDOW: usize = 60;

/// Who a client is, for telling reconnections apart: its token's subject when it has one,
/// otherwise its address (so clients behind one NAT count as one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    /// An authenticated subject.
    Subject(Box<str>),
    /// An anonymous client's (or a service key's) address.
    Address(IpAddr),
}

impl ClientKey {
    /// The key of a client known as `identity` connecting from `address`.
    pub(crate) fn of(identity: &Identity, address: IpAddr) -> Self {
        match identity.method {
            Method::Jwt | Method::Application => Self::Subject(identity.subject.as_str().into()),
            Method::Anonymous | Method::ApiKey => Self::Address(address),
        }
    }
}

/// One second of traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Sample {
    /// Unix time of the sample, in seconds.
    pub(crate) time: u64,
    /// Connections open at the time.
    pub(crate) connections: usize,
    /// Connections opened in the second before.
    pub(crate) connects: u64,
    /// Events published in the second before.
    pub(crate) events: u64,
    /// Frames written to clients in the second before (0 with `metrics = false`).
    pub(crate) frames_sent: u64,
    /// Messages received from clients in the second before.
    pub(crate) messages_received: u64,
}

/// Running totals the sampler turns into per-second rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Connections open.
    pub(crate) connections: usize,
    /// Connections opened, ever.
    pub(crate) connects: u64,
    /// Events published, ever.
    pub(crate) events: u64,
    /// Frames written, ever.
    pub(crate) frames_sent: u64,
    /// Messages received, ever.
    pub(crate) messages_received: u64,
}

struct Recent {
    left: HashMap<ClientKey, Instant>,
    swept: Instant,
}

struct History {
    samples: VecDeque<Sample>,
    last: Option<Totals>,
}

/// Connection durations, reconnections and the per-second history.
pub(crate) struct Analytics {
    closed: AtomicU64,
    connected_micros: AtomicU64,
    reconnections: AtomicU64,
    recent: Mutex<Recent>,
    history: Mutex<History>,
}

impl Default for Analytics {
    fn default() -> Self {
        Self {
            closed: AtomicU64::new(0),
            connected_micros: AtomicU64::new(0),
            reconnections: AtomicU64::new(0),
            recent: Mutex::new(Recent {
                left: HashMap::new(),
                swept: crate::clock::now(),
            }),
            history: Mutex::new(History {
                samples: VecDeque::with_capacity(HISTORY_SECONDS),
                last: None,
            }),
        }
    }
}

/// The analytics part of `GET /api/v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Summary {
    /// Connections that have ended.
    pub(crate) connections_closed: u64,
    /// Their average duration, in seconds (0 before the first one ends).
    pub(crate) connection_duration_avg_seconds: f64,
    /// Connections that were reconnections (see [`RECONNECT_WINDOW`]).
    pub(crate) reconnections: u64,
    /// Reconnections over connections opened, 0 to 1.
    pub(crate) reconnection_rate: f64,
    /// Per-second rates averaged over the last minute of samples.
    pub(crate) throughput: Throughput,
}

/// Average rates over the last samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Throughput {
    /// Seconds averaged over (fewer than 60 just after start).
    pub(crate) window_seconds: usize,
    /// Events published per second.
    pub(crate) events_per_second: f64,
    /// Frames written to clients per second.
    pub(crate) frames_sent_per_second: f64,
    /// Messages received from clients per second.
    pub(crate) messages_received_per_second: f64,
    /// Connections opened per second.
    pub(crate) connects_per_second: f64,
}

impl Analytics {
    /// A client known as `key` has connected at `now`; returns whether it is a reconnection.
    pub(crate) fn arrived(&self, key: &ClientKey, now: Instant) -> bool {
        let mut recent = self.recent.lock().expect("analytics lock");
        let again = recent
            .left
            .remove(key)
            .is_some_and(|left| now.saturating_duration_since(left) <= RECONNECT_WINDOW);
        drop(recent);
        if again {
            self.reconnections.fetch_add(1, Ordering::Relaxed);
        }
        again
    }

    /// A connection of `duration` has ended at `now`; `key` is its client, if it ever
    /// authenticated.
    pub(crate) fn left(&self, key: Option<ClientKey>, duration: Duration, now: Instant) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.connected_micros.fetch_add(micros, Ordering::Relaxed);
        let Some(key) = key else {
            return;
        };
        let mut recent = self.recent.lock().expect("analytics lock");
        if now.saturating_duration_since(recent.swept) > RECONNECT_WINDOW
            || recent.left.len() >= MAX_REMEMBERED
        {
            recent
                .left
                .retain(|_, left| now.saturating_duration_since(*left) <= RECONNECT_WINDOW);
            recent.swept = now;
        }
        if recent.left.len() < MAX_REMEMBERED {
            recent.left.insert(key, now);
        }
    }

    /// Adds the second that ended with `totals` at `time` to the history.
    pub(crate) fn sample(&self, totals: Totals, time: SystemTime) {
        let mut history = self.history.lock().expect("analytics lock");
        let Some(last) = history.last.replace(totals) else {
            return;
        };
        let sample = Sample {
            time: crate::event::unix_seconds(time),
            connections: totals.connections,
            connects: totals.connects.saturating_sub(last.connects),
            events: totals.events.saturating_sub(last.events),
            frames_sent: totals.frames_sent.saturating_sub(last.frames_sent),
            messages_received: totals
                .messages_received
                .saturating_sub(last.messages_received),
        };
        if history.samples.len() == HISTORY_SECONDS {
            history.samples.pop_front();
        }
        history.samples.push_back(sample);
    }

    /// The per-second samples, oldest first.
    pub(crate) fn history(&self) -> Vec<Sample> {
        let history = self.history.lock().expect("analytics lock");
        history.samples.iter().copied().collect()
    }

    /// The figures for the stats API; `opened` is every connection ever accepted.
    pub(crate) fn summary(&self, opened: u64) -> Summary {
        let closed = self.closed.load(Ordering::Relaxed);
        let micros = self.connected_micros.load(Ordering::Relaxed);
        let reconnections = self.reconnections.load(Ordering::Relaxed);
        Summary {
            connections_closed: closed,
            connection_duration_avg_seconds: if closed == 0 {
                0.0
            } else {
                micros as f64 / 1e6 / closed as f64
            },
            reconnections,
            reconnection_rate: if opened == 0 {
                0.0
            } else {
                reconnections as f64 / opened as f64
            },
            throughput: self.throughput(),
        }
    }

    fn throughput(&self) -> Throughput {
        let history = self.history.lock().expect("analytics lock");
        let n = history.samples.len().min(THROUGHPUT_WINDOW);
        if n == 0 {
            return Throughput::default();
        }
        let recent = history.samples.iter().rev().take(n);
        let (mut events, mut frames, mut received, mut connects) = (0u64, 0u64, 0u64, 0u64);
        for s in recent {
            events += s.events;
            frames += s.frames_sent;
            received += s.messages_received;
            connects += s.connects;
        }
        let per_second = |total: u64| total as f64 / n as f64;
        Throughput {
            window_seconds: n,
            events_per_second: per_second(events),
            frames_sent_per_second: per_second(frames),
            messages_received_per_second: per_second(received),
            connects_per_second: per_second(connects),
        }
    }

    /// Sum of the durations of ended connections, in seconds (for `/metrics`).
    pub(crate) fn connected_seconds(&self) -> f64 {
        self.connected_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Connections that have ended (for `/metrics`).
    pub(crate) fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// Reconnections so far (for `/metrics`).
    pub(crate) fn reconnections(&self) -> u64 {
        self.reconnections.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> ClientKey {
        ClientKey::Address(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn a_return_within_the_window_is_a_reconnection() {
        let a = Analytics::default();
        let t0 = Instant::now();
        assert!(!a.arrived(&addr(1), t0));
        a.left(
            Some(addr(1)),
            Duration::from_secs(10),
            t0 + Duration::from_secs(10),
        );
        assert!(a.arrived(&addr(1), t0 + Duration::from_secs(20)));
        assert!(!a.arrived(&addr(2), t0 + Duration::from_secs(20)));
        a.left(
            Some(addr(1)),
            Duration::from_secs(30),
            t0 + Duration::from_secs(50),
        );
        // Too late: not a reconnection.
        assert!(!a.arrived(&addr(1), t0 + Duration::from_secs(200)));
        let s = a.summary(4);
        assert_eq!(s.reconnections, 1);
        assert_eq!(s.reconnection_rate, 0.25);
        assert_eq!(s.connections_closed, 2);
        assert_eq!(s.connection_duration_avg_seconds, 20.0);
    }

    #[test]
    fn subjects_and_addresses_are_different_clients() {
        let a = Analytics::default();
        let t0 = Instant::now();
        a.left(Some(ClientKey::Subject("alice".into())), Duration::ZERO, t0);
        assert!(!a.arrived(&addr(1), t0));
        assert!(a.arrived(&ClientKey::Subject("alice".into()), t0));
    }

    #[test]
    fn departures_expire_and_memory_stays_bounded() {
        let a = Analytics::default();
        let t0 = Instant::now();
        for i in 0..1000u32 {
            a.left(
                Some(ClientKey::Address(IpAddr::from(i.to_be_bytes()))),
                Duration::ZERO,
                t0,
            );
        }
        let later = t0 + RECONNECT_WINDOW * 2;
        a.left(Some(addr(1)), Duration::ZERO, later);
        assert_eq!(a.recent.lock().unwrap().left.len(), 1);
    }

    #[test]
    fn samples_become_rates() {
        let a = Analytics::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut totals = Totals::default();
        a.sample(totals, t); // the baseline: no sample yet
        assert!(a.history().is_empty());
        for i in 1..=3u64 {
            totals.events += 10 * i;
            totals.frames_sent += 100;
            totals.connections = i as usize;
            a.sample(totals, t + Duration::from_secs(i));
        }
        let h = a.history();
        assert_eq!(h.len(), 3);
        assert_eq!(h[2].events, 30);
        assert_eq!(h[2].time, 1_003);
        assert_eq!(h[2].connections, 3);
        let s = a.summary(0);
        assert_eq!(s.throughput.window_seconds, 3);
        assert_eq!(s.throughput.events_per_second, 20.0);
        assert_eq!(s.throughput.frames_sent_per_second, 100.0);
        for i in 0..HISTORY_SECONDS as u64 {
            a.sample(totals, t + Duration::from_secs(10 + i));
        }
        assert_eq!(a.history().len(), HISTORY_SECONDS);
    }
}
