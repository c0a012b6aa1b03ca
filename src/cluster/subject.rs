//! Channel names as NATS subjects.
//!
//! A channel `orders.eu` is stored on `{prefix}.ev.orders.eu` (the stream captures
//! `{prefix}.ev.>`) and republished, once sequenced, on `{prefix}.live.orders.eu`, which the
//! nodes with local subscribers listen to. Channel names may contain `.`, which NATS reads as
//! a token separator: that is fine (and keeps subjects readable in NATS's monitoring) as long
//! as no token is empty. A name with an empty token (`a..b`, `.a`, `a.`) is hex-encoded
//! behind a `~` token, which no channel name can contain, so the two forms never collide.

/// The stream-side and live-side subjects of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subjects {
    /// Where nodes publish the channel's events (captured by the stream).
    pub(crate) publish: String,
    /// Where the stream republishes them, sequenced.
    pub(crate) live: String,
}

/// The subjects of `channel` under `prefix`.
pub(crate) fn of(prefix: &str, channel: &str) -> Subjects {
    let tail = tail(channel);
    Subjects {
        publish: format!("{prefix}.ev.{tail}"),
        live: format!("{prefix}.live.{tail}"),
    }
}

/// The subjects of `channel`'s status snapshots. `$` is in no channel name, so the
/// `$snap` token never collides with a channel's subjects.
pub(crate) fn snapshot_of(prefix: &str, channel: &str) -> Subjects {
    let tail = tail(channel);
    Subjects {
        publish: format!("{prefix}.ev.$snap.{tail}"),
        live: format!("{prefix}.live.$snap.{tail}"),
    }
}

/// Where control requests go to every node (core NATS: not stored). No channel's subject
/// is `{prefix}.control`: theirs all have an `ev` or `live` token first.
pub(crate) fn control(prefix: &str) -> String {
    format!("{prefix}.control")
}

/// Where each node says, every second, that it answers control requests (core NATS).
pub(crate) fn alive(prefix: &str) -> String {
    format!("{prefix}.alive")
}

/// Where each node tells the others of its presence changes (core NATS).
pub(crate) fn roster(prefix: &str) -> String {
    format!("{prefix}.roster")
}

/// Where a node says which node it took for gone (core NATS).
pub(crate) fn gone(prefix: &str) -> String {
    format!("{prefix}.gone")
}

/// Every snapshot's live subject.
pub(crate) fn snapshots_live(prefix: &str) -> String {
    format!("{prefix}.live.$snap.>")
}

/// The subject pattern the stream captures.
pub(crate) fn stream_pattern(prefix: &str) -> String {
    format!("{prefix}.ev.>")
}

/// The republish destination pattern.
pub(crate) fn live_pattern(prefix: &str) -> String {
    format!("{prefix}.live.>")
}

fn tail(channel: &str) -> String {
    if channel.split('.').all(|token| !token.is_empty()) {
        channel.to_owned()
    } else {
        let hex: String = channel.bytes().map(|b| format!("{b:02x}")).collect();
        format!("~.{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Reading a subject back proves that no two channels share one.
    /// The channel of a stream-side subject (`{prefix}.ev.…`), if it is one.
    fn channel_of(prefix: &str, subject: &str) -> Option<String> {
        let tail = subject.strip_prefix(prefix)?.strip_prefix(".ev.")?;
        match tail.strip_prefix("~.") {
            Some(hex) => decode_hex(hex),
            None => Some(tail.to_owned()),
        }
    }

    fn decode_hex(hex: &str) -> Option<String> {
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        String::from_utf8(bytes).ok()
    }

    #[test]
    fn readable_names_stay_readable() {
        let s = of("sigmahub", "system.status");
        assert_eq!(s.publish, "sigmahub.ev.system.status");
        assert_eq!(s.live, "sigmahub.live.system.status");
        assert_eq!(
            channel_of("sigmahub", &s.publish).as_deref(),
            Some("system.status")
        );
    }

    #[test]
    fn empty_tokens_are_encoded() {
        let s = of("p", "a..b");
        assert_eq!(s.publish, "p.ev.~.612e2e62");
        assert_eq!(channel_of("p", &s.publish).as_deref(), Some("a..b"));
        assert_eq!(of("p", ".a").live, "p.live.~.2e61");
        assert_eq!(channel_of("p", "q.ev.a"), None);
        assert_eq!(channel_of("p", "p.ev.~.6"), None);
    }

    proptest! {
        /// Every valid channel name maps to a valid subject and back, and two names never
        /// share a subject.
        #[test]
        fn round_trips(a in "[A-Za-z0-9._:/-]{1,40}", b in "[A-Za-z0-9._:/-]{1,40}") {
            let sa = of("sigmahub", &a);
            prop_assert!(!sa.publish.split('.').any(str::is_empty));
            prop_assert!(!sa.publish.contains(['*', '>', ' ']));
            prop_assert_eq!(channel_of("sigmahub", &sa.publish), Some(a.clone()));
            if a != b {
                prop_assert_ne!(sa.publish, of("sigmahub", &b).publish);
            }
        }
    }
}
