//! The snapshot cache: the latest value of each status type, read lock-free.
//!
//! Pollers write a [`Snapshot`] per status type (`system.status`, `agent.status`, …) each
//! time they broadcast it, fresh or stale. Readers (new subscribers, the REST API) load the
//! whole map through one `ArcSwap` without locking. A snapshot keeps the frames that were
//! broadcast, so a client that subscribes gets exactly what subscribers got, as refcount
//! clones, without any encoding on the subscribe path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::dialect::sigmavault;
use crate::event;
use crate::protocol::channel::Channel;
use crate::protocol::code::StaleCode;

/// The status types pollers publish as snapshots.
pub const STATUS_TYPES: [&str; 5] = [
    "system.status",
    "agent.status",
    "agent.summary",
    "storage.update",
    "compression.update",
];

/// Why a snapshot is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Staleness {
    /// The `error_code` it is sent with.
    pub error_code: StaleCode,
}

/// How fresh a snapshot is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotStatus {
    /// Whether the source failed since the data was fetched.
    pub stale: bool,
    /// Why it is stale, when it is.
    pub error_code: Option<StaleCode>,
    /// When the data was fetched, RFC 3339.
    pub last_update: String,
}

/// The field that names an item of a status type sent per change (see
/// [`Snapshot::to_broadcast`]): `agent.status`, one event per agent, by `agent_id`.
pub fn change_key(channel: &str) -> Option<&'static str> {
    match channel {
        "agent.status" => Some("agent_id"),
        _ => None,
    }
}

/// An item's key and its data without `timestamp`, to compare two polls.
fn keyed(item: &RawValue, key: &str) -> Option<(String, serde_json::Value)> {
    let serde_json::Value::Object(mut data) = serde_json::from_str(item.get()).ok()? else {
        return None;
    };
    data.remove("timestamp");
    let id = data.get(key)?.as_str()?.to_owned();
    Some((id, serde_json::Value::Object(data)))
}

/// The latest value of one status type.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The status type (channel).
    pub channel: Channel,
    /// The data of each event that makes up the value (one for `system.status`, one per
    /// agent for `agent.status`, …), without stale fields.
    pub items: Arc<[Box<RawValue>]>,
    /// When the data was last fresh.
    pub last_update: SystemTime,
    /// `None` while fresh.
    pub stale: Option<Staleness>,
    /// The frames as broadcast (stale fields included when stale).
    pub frames: Arc<[Bytes]>,
    /// `frames` as a client with permessage-deflate is sent them, compressed on the first
    /// subscribe that needs them: once per snapshot, not once per subscriber.
    deflated: std::sync::OnceLock<Arc<[Bytes]>>,
}

impl Snapshot {
    /// Builds a snapshot and its frames, stamped `now`.
    pub fn new(
        channel: Channel,
        items: Arc<[Box<RawValue>]>,
        last_update: SystemTime,
        stale: Option<Staleness>,
        now: SystemTime,
    ) -> Self {
        let frames = items
            .iter()
            .map(|data| encode_item(&channel, data, last_update, stale, now))
            .collect();
        Self {
            channel,
            items,
            last_update,
            stale,
            frames,
            deflated: std::sync::OnceLock::new(),
        }
    }

    /// [`frames`](Self::frames) compressed by `deflate` (each frame, or itself where
    /// compressing does not pay), computed once and kept with the snapshot.
    pub(crate) fn deflated(&self, deflate: impl Fn(&Bytes) -> Bytes) -> Arc<[Bytes]> {
        self.deflated
            .get_or_init(|| self.frames.iter().map(deflate).collect())
            .clone()
    }

    /// The same data marked stale with `error_code`, stamped `now`.
    pub fn to_stale(&self, error_code: StaleCode, now: SystemTime) -> Self {
        Self::new(
            self.channel.clone(),
            self.items.clone(),
            self.last_update,
            Some(Staleness { error_code }),
            now,
        )
    }

    /// The frames to broadcast when this snapshot replaces `previous`. Every frame, except
    /// for types sent per change ([`change_key`]): there, an item goes out when it is new
    /// or its data changed (its `timestamp` aside), and during an outage every item goes
    /// out once when the staleness changes (fresh to stale, or another `error_code`), not
    /// again on every tick. New subscribers always receive every item (the snapshot).
    pub fn to_broadcast(&self, previous: Option<&Snapshot>) -> Vec<Bytes> {
        let (Some(key), Some(previous)) = (change_key(&self.channel), previous) else {
            return self.frames.to_vec();
        };
        if previous.stale != self.stale {
            return self.frames.to_vec();
        }
        if self.stale.is_some() {
            return Vec::new();
        }
        let before: std::collections::HashMap<String, serde_json::Value> = previous
            .items
            .iter()
            .filter_map(|item| keyed(item, key))
            .collect();
        self.items
            .iter()
            .zip(self.frames.iter())
            .filter(|(item, _)| match keyed(item, key) {
                Some((id, data)) => before.get(&id) != Some(&data),
                None => true,
            })
            .map(|(_, frame)| frame.clone())
            .collect()
    }

    /// Freshness alone (the stats API shows this).
    pub fn status(&self) -> SnapshotStatus {
        SnapshotStatus {
            stale: self.stale.is_some(),
            error_code: self.stale.map(|s| s.error_code),
            last_update: event::rfc3339(self.last_update),
        }
    }

    /// The snapshot as a cluster's poller leader sends it to the other nodes.
    pub fn to_wire(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            channel: &'a str,
            items: &'a [Box<RawValue>],
            last_update_ms: u64,
            stale: Option<&'a str>,
        }
        serde_json::to_vec(&Wire {
            channel: &self.channel,
            items: &self.items,
            last_update_ms: self
                .last_update
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            stale: self.stale.map(|s| s.error_code.as_str()),
        })
        .expect("a snapshot serializes")
    }

    /// A snapshot received from the cluster, its frames encoded here, stamped `now`.
    /// `None` if it is not one sigmahub sent.
    pub fn from_wire(bytes: &[u8], now: SystemTime) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Wire {
            channel: String,
            items: Vec<Box<RawValue>>,
            last_update_ms: u64,
            stale: Option<String>,
        }
        let wire: Wire = serde_json::from_slice(bytes).ok()?;
        let channel = Channel::new(&wire.channel).ok()?;
        if wire
            .items
            .iter()
            .any(|i| !i.get().trim_start().starts_with('{'))
        {
            return None;
        }
        let stale = match wire.stale {
            None => None,
            Some(code) => Some(Staleness {
                error_code: StaleCode::from_wire(&code)?,
            }),
        };
        let last_update =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(wire.last_update_ms);
        Some(Self::new(
            channel,
            wire.items.into(),
            last_update,
            stale,
            now,
        ))
    }

    /// The snapshot as the REST API shows it: its status, `type` and `items`.
    pub fn to_json(&self) -> serde_json::Value {
        let items: Vec<serde_json::Value> = self
            .items
            .iter()
            .map(|i| serde_json::from_str(i.get()).unwrap_or(serde_json::Value::Null))
            .collect();
        let mut json = serde_json::json!(self.status());
        json["type"] = serde_json::json!(self.channel);
        json["items"] = items.into();
        json
    }
}

/// Writes one item's frame: its data object, with `stale`, `error_code` and `last_update`
/// added in front of the cached fields when stale.
fn encode_item(
    channel: &Channel,
    data: &RawValue,
    last_update: SystemTime,
    stale: Option<Staleness>,
    now: SystemTime,
) -> Bytes {
    let raw = data.get();
    sigmavault::encode(channel, now, None, raw.len() + 96, |buf| match stale {
        None => buf.extend_from_slice(raw.as_bytes()),
        Some(s) => {
            let fields = format!(
                "{{\"stale\":true,\"error_code\":\"{}\",\"last_update\":\"{}\"",
                s.error_code,
                event::rfc3339(last_update)
            );
            buf.extend_from_slice(fields.as_bytes());
            // `raw` is a JSON object (pollers only cache objects): splice its members in.
            let inner = raw.trim().strip_prefix('{').unwrap_or("}").trim_start();
            if !inner.starts_with('}') {
                buf.extend_from_slice(b",");
            }
            buf.extend_from_slice(inner.as_bytes());
        }
    })
}

/// Every status type's latest snapshot.
#[derive(Default)]
pub struct SnapshotCache {
    map: ArcSwap<BTreeMap<Channel, Arc<Snapshot>>>,
}

impl SnapshotCache {
    /// The snapshot of `channel`, if any.
    pub fn get(&self, channel: &str) -> Option<Arc<Snapshot>> {
        self.map.load().get(channel).cloned()
    }

    /// Every snapshot, by channel name.
    pub fn all(&self) -> Vec<Arc<Snapshot>> {
        self.map.load().values().cloned().collect()
    }

    /// Replaces the snapshot of its channel.
    pub fn store(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        self.map.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            map.insert(snapshot.channel.clone(), snapshot.clone());
            map
        });
        snapshot
    }
}

impl std::fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.map.load().keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn payload(frame: &Bytes) -> serde_json::Value {
        let start = if frame[1] == 126 { 4 } else { 2 };
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn stale_frames_carry_the_seed_fields_and_the_cached_data() {
        let fresh_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_703_336_700);
        let now = fresh_at + Duration::from_secs(60);
        let snap = Snapshot::new(
            Channel::new("system.status").unwrap(),
            vec![raw(r#"{ "hostname": "h", "cpu_usage": 1.5 }"#), raw("{}")].into(),
            fresh_at,
            None,
            fresh_at,
        );
        assert_eq!(payload(&snap.frames[0])["data"]["hostname"], "h");
        assert!(payload(&snap.frames[0])["data"].get("stale").is_none());

        let stale = snap.to_stale(StaleCode::RpcDisconnect, now);
        let back = Snapshot::from_wire(&stale.to_wire(), now).expect("round trip");
        assert_eq!(back.frames, stale.frames, "the same frames on every node");
        for &code in StaleCode::ALL {
            let stale = snap.to_stale(code, now);
            let back = Snapshot::from_wire(&stale.to_wire(), now);
            assert_eq!(
                back.map(|b| b.stale),
                Some(stale.stale),
                "{code} crosses the cluster"
            );
        }
        assert!(Snapshot::from_wire(
            br#"{"channel":"x","items":[1],"last_update_ms":0,"stale":null}"#,
            now
        )
        .is_none());
        let data = payload(&stale.frames[0])["data"].clone();
        assert_eq!(data["stale"], true);
        assert_eq!(data["error_code"], "RPC_DISCONNECT");
        assert_eq!(data["last_update"], "2023-12-23T13:05:00.000Z");
        assert_eq!(data["hostname"], "h");
        assert_eq!(data["cpu_usage"], 1.5);
        assert_eq!(payload(&stale.frames[1])["data"]["stale"], true);
        assert_eq!(
            payload(&stale.frames[0])["timestamp"],
            "2023-12-23T13:06:00.000Z"
        );
    }

    #[test]
    fn the_cache_replaces_per_channel() {
        let cache = SnapshotCache::default();
        let t = SystemTime::UNIX_EPOCH;
        let make = |c: &str, v: &str| {
            Snapshot::new(Channel::new(c).unwrap(), vec![raw(v)].into(), t, None, t)
        };
        cache.store(make("a", r#"{"v":1}"#));
        cache.store(make("b", r#"{"v":2}"#));
        cache.store(make("a", r#"{"v":3}"#));
        assert_eq!(cache.get("a").unwrap().items[0].get(), r#"{"v":3}"#);
        assert_eq!(cache.all().len(), 2);
        assert!(cache.get("c").is_none());
    }

    #[test]
    fn the_deflated_frames_are_made_once_per_snapshot() {
        let t = SystemTime::UNIX_EPOCH;
        let items = vec![raw(r#"{"v":1}"#), raw(r#"{"v":2}"#)];
        let snapshot = Snapshot::new(Channel::new("a").unwrap(), items.into(), t, None, t);
        let calls = std::cell::Cell::new(0);
        let deflate = |f: &Bytes| {
            calls.set(calls.get() + 1);
            f.slice(1..)
        };
        let first = snapshot.deflated(deflate);
        let again = snapshot.deflated(deflate);
        assert_eq!(calls.get(), 2, "once per frame, on the first call only");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first[0], snapshot.frames[0].slice(1..));
    }

    fn agents(now: SystemTime, statuses: &[(&str, &str)]) -> Snapshot {
        let items: Vec<_> = statuses
            .iter()
            .map(|(id, status)| {
                raw(&format!(
                    r#"{{"agent_id":"{id}","status":"{status}","timestamp":{}}}"#,
                    crate::event::unix_seconds(now)
                ))
            })
            .collect();
        Snapshot::new(
            Channel::new("agent.status").unwrap(),
            items.into(),
            now,
            None,
            now,
        )
    }

    fn ids(frames: &[Bytes]) -> Vec<String> {
        frames
            .iter()
            .map(|f| payload(f)["data"]["agent_id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn agents_go_out_when_they_change_and_staleness_once_per_change() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let t1 = t0 + Duration::from_secs(5);
        let first = agents(t0, &[("a", "idle"), ("b", "idle")]);
        assert_eq!(ids(&first.to_broadcast(None)), ["a", "b"]);
        // Only the timestamp moved: nothing to send.
        let same = agents(t1, &[("a", "idle"), ("b", "idle")]);
        assert!(same.to_broadcast(Some(&first)).is_empty());
        // b changed, c is new.
        let changed = agents(t1, &[("a", "idle"), ("b", "busy"), ("c", "idle")]);
        assert_eq!(ids(&changed.to_broadcast(Some(&first))), ["b", "c"]);
        // The outage: every agent once, then nothing while the code stays the same.
        let stale = changed.to_stale(StaleCode::RpcDisconnect, t1);
        assert_eq!(stale.to_broadcast(Some(&changed)).len(), 3);
        let still = stale.to_stale(StaleCode::RpcDisconnect, t1);
        assert!(still.to_broadcast(Some(&stale)).is_empty());
        let open = still.to_stale(StaleCode::CircuitBreakerOpen, t1);
        assert_eq!(open.to_broadcast(Some(&still)).len(), 3);
        // Fresh again: every agent, unmarked.
        let back = agents(t1, &[("a", "idle"), ("b", "busy"), ("c", "idle")]);
        assert_eq!(back.to_broadcast(Some(&open)).len(), 3);
        // Other types go out whole every time.
        let status = Snapshot::new(
            Channel::new("system.status").unwrap(),
            vec![raw("{}")].into(),
            t0,
            None,
            t0,
        );
        assert_eq!(status.to_broadcast(Some(&status)).len(), 1);
    }
}
