//! What the client hands its user: events, gaps, connection states and notices.

use std::time::Duration;

use serde::Deserialize;

/// An event published on a channel, with its data decoded as `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<T> {
    /// The channel (the SigmaVault message `type`).
    pub channel: String,
    /// When the server stamped it (RFC 3339, milliseconds, UTC).
    pub timestamp: String,
    /// Its place in the server's sequence, for recovery; `None` for status types (they
    /// are resent as snapshots instead) and on a server that keeps no history.
    pub offset: Option<u64>,
    /// The event's data.
    pub data: T,
}

/// Events on a channel that this client will never receive: reported where they would
/// have been, between the events before and after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The channel.
    pub channel: String,
    /// Why they could not be recovered.
    pub reason: GapReason,
    /// The offset of the last event received before the gap (in the previous epoch for
    /// [`GapReason::EpochChanged`]); `None` if none was.
    pub after: Option<u64>,
    /// The offset of the first event the server still had, delivered right after this
    /// gap, when it replayed some; `None` when it replayed nothing (then the next event
    /// delivered is simply the next live one).
    pub before: Option<u64>,
}

/// Why events were lost, as the server's recovery reported it (docs/protocol.md,
/// "Recovery after a reconnect"), or as the client knows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The server's history no longer reaches back far enough: what it still had was
    /// replayed, the rest is lost. Reload state.
    HistoryTruncated,
    /// The server restarted (or the cluster's stream was recreated): its offsets start
    /// over and nothing could be replayed.
    EpochChanged,
    /// The server did not know the last offset this client saw.
    UnknownOffset,
    /// What was missed did not fit in the client's queue on the server.
    TooMuchToReplay,
    /// The connection was already subscribed (a default channel the client had not
    /// resumed): nothing was replayed.
    AlreadySubscribed,
    /// The server keeps no history, or the client never learned a position on the
    /// channel: whatever was published while it was disconnected is lost.
    NoHistory,
    /// The server subscribed the channel on connect without resuming it (it refused the
    /// `since` of the reconnect, or its default channels changed): whatever was published
    /// while the client was disconnected is lost.
    NotResumed,
    /// A reason this client does not know.
    #[serde(other)]
    Other,
}

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Connecting to `url`, attempt `attempt` since the last good connection.
    Connecting {
        /// The server address tried.
        url: String,
        /// 0 for the first attempt.
        attempt: u32,
    },
    /// Connected and welcomed: subscriptions are live.
    Connected {
        /// The server address.
        url: String,
        /// The id the server gave this connection.
        client_id: String,
    },
    /// Disconnected; the next attempt starts after `delay`.
    Reconnecting {
        /// Why the last connection ended.
        reason: String,
        /// How long until the next attempt.
        delay: Duration,
    },
    /// Closed for good: by [`Client::close`](crate::Client::close), or because retrying
    /// cannot succeed (an invalid token, a refused origin, a client bug the server
    /// reported with its close code).
    Closed {
        /// Why.
        reason: String,
    },
}

/// Something the application may want to know about, from [`Client::notices`](crate::Client::notices).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The connection changed state.
    State(State),
    /// Events lost on a channel (also delivered in the channel's subscriptions).
    Gap(Gap),
    /// A subscription's handler has not taken an event for a while: the client stopped
    /// reading from the server for it, and the server may close the connection as a slow
    /// consumer (the client then reconnects and resumes).
    SlowHandler {
        /// The channel.
        channel: String,
    },
    /// The server said something went wrong (an `error` message), or a token refresh
    /// failed.
    Error {
        /// The server's error code, or `token_refresh_failed`.
        code: String,
        /// What it said.
        message: String,
    },
}

/// Who is subscribed to a channel that keeps presence: the answer to
/// [`Client::presence`](crate::Client::presence).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct Presence {
    /// The channel.
    pub channel: String,
    /// How many members.
    pub count: u64,
    /// Who they are.
    pub members: Vec<Member>,
    /// How many server nodes answered (1 without a cluster).
    pub nodes: u64,
}

/// One subscriber of a channel that keeps presence.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// Its client id.
    pub client: String,
    /// Its user: its token's `sub`, or `anonymous`.
    pub user: String,
    /// What its token says about it (the `info` claim), if anything.
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

/// The server's answer to a [`Client::publish`](crate::Client::publish).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PublishAck {
    /// How many events were accepted.
    pub accepted: u64,
    /// How many clients they were delivered to on the server this client is connected
    /// to; `None` in a cluster, where every node delivers them.
    #[serde(default)]
    pub delivered: Option<u64>,
    /// In a cluster, the offsets the events were stored at.
    #[serde(default)]
    pub offsets: Vec<u64>,
}
