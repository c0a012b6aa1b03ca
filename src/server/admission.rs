//! Admission control: total and per-IP connection limits, a per-IP WebSocket connection
//! rate (a token bucket against reconnect storms), and the client address behind trusted
//! reverse proxies.
//!
//! Every TCP connection from a client counts against `max_connections` and
//! `max_connections_per_ip` from the moment it is accepted, plain HTTP or WebSocket: a
//! WebSocket keeps the place its connection took. The connection rate applies to WebSocket
//! upgrades. Behind a trusted proxy the proxy's own connections are not counted (they
//! carry many clients); each upgrade is then admitted by the forwarded address instead.
//!
//! A refused connection or upgrade is answered with HTTP 503 (server full) or 429 (this
//! address), each with `Retry-After`. Every refusal is counted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::HeaderMap;

use crate::config::Config;
use crate::protocol::code::ErrorCode;
use crate::protocol::rate::{TokenBucket, Verdict};

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` reached: HTTP 503.
    ServerFull,
    /// `max_connections_per_ip` reached for this address: HTTP 429.
    TooManyFromAddress,
    /// This address connects faster than `connection_rate_per_ip`: HTTP 429.
    TooFast(Duration),
}

impl Refusal {
    /// The stable code in the refusal's JSON body and in the stats.
    pub(crate) fn code(self) -> ErrorCode {
        match self {
            Self::ServerFull => ErrorCode::ServerFull,
            Self::TooManyFromAddress => ErrorCode::TooManyConnectionsFromAddress,
            Self::TooFast(_) => ErrorCode::ConnectionRateExceeded,
        }
    }

    /// How long the client should wait before trying again.
    pub(crate) fn retry_after(self) -> Duration {
        match self {
            Self::ServerFull => Duration::from_secs(5),
            Self::TooManyFromAddress => Duration::from_secs(10),
            Self::TooFast(wait) => wait.max(Duration::from_secs(1)),
        }
    }
}

struct PerAddress {
    active: usize,
    rate: TokenBucket,
}

/// Refusal counters, by reason.
#[derive(Debug, Default)]
pub(crate) struct Refused {
    pub(crate) server_full: AtomicU64,
    pub(crate) per_address: AtomicU64,
    pub(crate) rate: AtomicU64,
}

impl Refused {
    /// Each refusal's code with its count.
    pub(crate) fn by_reason(&self) -> [(&'static str, u64); 3] {
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            (
                Refusal::ServerFull.code().as_str(),
                count(&self.server_full),
            ),
            (
                Refusal::TooManyFromAddress.code().as_str(),
                count(&self.per_address),
            ),
            (
                Refusal::TooFast(Duration::ZERO).code().as_str(),
                count(&self.rate),
            ),
        ]
    }

    /// The counts keyed by each refusal's code, as the stats API shows them.
    pub(crate) fn by_code(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.by_reason().into_iter().collect()
    }
}

pub(crate) struct Admission {
    max_connections: usize,
    max_per_address: usize,
    rate_per_minute: u32,
    rate_burst: u32,
    trusted_proxies: Vec<IpAddr>,
    active: AtomicUsize,
    addresses: Mutex<HashMap<IpAddr, PerAddress>>,
    pub(crate) refused: Refused,
}

/// An admitted connection's place; dropping it frees the place.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Admission {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            max_connections: config.max_connections,
            max_per_address: config.max_connections_per_ip,
            rate_per_minute: config.connection_rate_per_ip,
            rate_burst: config.connection_burst_per_ip,
            trusted_proxies: config.trusted_proxies.clone(),
            active: AtomicUsize::new(0),
            addresses: Mutex::new(HashMap::new()),
            refused: Refused::default(),
        }
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
    /// untrusted address in `X-Forwarded-For` (read from the right).
    pub(crate) fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip().to_canonical();
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .map(|a| a.to_canonical())
            .collect::<Vec<_>>();
        forwarded
            .into_iter()
            .rev()
            .find(|a| !self.trusted_proxies.contains(a))
            .unwrap_or(peer)
    }

    /// Whether `peer` is one of the trusted proxies.
    pub(crate) fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.contains(&peer.to_canonical())
    }

    /// Admits a WebSocket connection from `address` at `now` (its place and its share of
    /// the connection rate), or says why not.
    pub(crate) fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        now: Instant,
    ) -> Result<Ticket, Refusal> {
        self.admit_with(address, now, true)
    }

    /// Admits a TCP connection from `address` (its place only; an upgrade on it takes its
    /// share of the rate with [`take_rate`](Self::take_rate)).
    pub(crate) fn admit_connection(
        self: &Arc<Self>,
        address: IpAddr,
        now: Instant,
    ) -> Result<Ticket, Refusal> {
        self.admit_with(address, now, false)
    }

    /// Takes an upgrade's share of the connection rate of `address`, whose connection
    /// already holds a place.
    pub(crate) fn take_rate(&self, address: IpAddr, now: Instant) -> Result<(), Refusal> {
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let (per_minute, burst) = (self.rate_per_minute, self.rate_burst);
        if per_minute == 0 {
            return Ok(());
        }
        let entry = addresses.entry(address).or_insert_with(|| PerAddress {
            active: 0,
            rate: TokenBucket::new(per_minute, burst.max(1), now),
        });
        if entry.rate.take(now) != Verdict::Allow {
            self.refused.rate.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooFast(entry.rate.retry_after()));
        }
        Ok(())
    }

    fn admit_with(
        self: &Arc<Self>,
        address: IpAddr,
        now: Instant,
        rated: bool,
    ) -> Result<Ticket, Refusal> {
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if self.max_connections > 0 && self.active.load(Ordering::Relaxed) >= self.max_connections {
            self.refused.server_full.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::ServerFull);
        }
        if addresses.len() > 10_000 {
            // Forget idle addresses whose rate bucket has refilled.
            addresses.retain(|_, a| a.active > 0 || a.rate.retry_after() > Duration::ZERO);
        }
        let (per_minute, burst) = (self.rate_per_minute, self.rate_burst);
        let entry = addresses.entry(address).or_insert_with(|| PerAddress {
            active: 0,
            rate: TokenBucket::new(per_minute.max(1), burst.max(1), now),
        });
        if self.max_per_address > 0 && entry.active >= self.max_per_address {
            self.refused.per_address.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooManyFromAddress);
        }
        if rated && per_minute > 0 && entry.rate.take(now) != Verdict::Allow {
            self.refused.rate.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooFast(entry.rate.retry_after()));
        }
        entry.active += 1;
        self.active.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            admission: self.clone(),
            address,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut addresses = self
            .admission
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = addresses.get_mut(&self.address) {
            entry.active -= 1;
        }
        self.admission.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(f: impl FnOnce(&mut Config)) -> Arc<Admission> {
        let mut config = Config::default();
        f(&mut config);
        Arc::new(Admission::new(&config))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_and_total_limits_free_on_drop() {
        let a = admission(|c| {
            c.max_connections = 3;
            c.max_connections_per_ip = 2;
            c.connection_rate_per_ip = 0;
        });
        let now = Instant::now();
        let t1 = a.admit(ip("10.0.0.1"), now).unwrap();
        let _t2 = a.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.1"), now).err(),
            Some(Refusal::TooManyFromAddress)
        );
        let _t3 = a.admit(ip("10.0.0.2"), now).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.3"), now).err(),
            Some(Refusal::ServerFull)
        );
        drop(t1);
        assert!(a.admit(ip("10.0.0.1"), now).is_ok());
        assert_eq!(a.refused.per_address.load(Ordering::Relaxed), 1);
        assert_eq!(a.refused.server_full.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn reconnect_storms_hit_the_rate_limit() {
        let a = admission(|c| {
            c.max_connections_per_ip = 0;
            c.connection_rate_per_ip = 60;
            c.connection_burst_per_ip = 3;
        });
        let now = Instant::now();
        for _ in 0..3 {
            drop(a.admit(ip("10.0.0.1"), now).unwrap());
        }
        let Err(Refusal::TooFast(wait)) = a.admit(ip("10.0.0.1"), now) else {
            panic!("not refused")
        };
        assert!(wait > Duration::ZERO);
        assert!(a
            .admit(ip("10.0.0.1"), now + Duration::from_secs(1))
            .is_ok());
    }

    #[test]
    fn connections_take_places_and_upgrades_take_the_rate() {
        let a = admission(|c| {
            c.max_connections_per_ip = 2;
            c.connection_rate_per_ip = 60;
            c.connection_burst_per_ip = 1;
        });
        let now = Instant::now();
        let http = a.admit_connection(ip("10.0.0.1"), now).unwrap();
        let _ws = a.admit_connection(ip("10.0.0.1"), now).unwrap();
        assert_eq!(
            a.admit_connection(ip("10.0.0.1"), now).err(),
            Some(Refusal::TooManyFromAddress)
        );
        assert!(a.take_rate(ip("10.0.0.1"), now).is_ok());
        assert!(matches!(
            a.take_rate(ip("10.0.0.1"), now),
            Err(Refusal::TooFast(_))
        ));
        drop(http);
        assert!(a.admit_connection(ip("10.0.0.1"), now).is_ok());
        assert!(
            a.is_trusted_proxy(ip("::ffff:10.9.9.9"))
                == a.trusted_proxies.contains(&ip("10.9.9.9"))
        );
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let a = admission(|c| c.trusted_proxies = vec![ip("10.9.9.9")]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.7, 198.51.100.1, 10.9.9.9".parse().unwrap(),
        );
        let proxy: SocketAddr = "10.9.9.9:4000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        assert_eq!(a.client_address(proxy, &headers), ip("198.51.100.1"));
        assert_eq!(a.client_address(stranger, &headers), ip("192.0.2.1"));
        assert_eq!(a.client_address(proxy, &HeaderMap::new()), ip("10.9.9.9"));
    }
}
