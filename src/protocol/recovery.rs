//! What a resuming client is told about each channel it resumed (`since`): the
//! `recovery` map of its welcome or `subscribe_response`.

/// Why a recovery was not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Incomplete {
    /// The client's offsets are from another epoch (a restart, or another cluster).
    EpochChanged,
    /// The log no longer reaches back to the client's offset: events were missed. What is
    /// still kept was replayed.
    HistoryTruncated,
    /// The offset is newer than anything published on the channel.
    UnknownOffset,
    /// What was missed does not fit in the client's queue; nothing was replayed.
    TooMuchToReplay,
    /// The client was already subscribed: the gap, if any, cannot be placed in its stream.
    AlreadySubscribed,
    /// The server keeps no history (`history.size = 0`).
    NoHistory,
}

/// The outcome of resuming one channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recovery {
    /// Whether everything after the client's offset was replayed.
    pub recovered: bool,
    /// Events replayed.
    pub replayed: usize,
    /// Why not complete, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Incomplete>,
}

impl Recovery {
    /// Everything missed, `replayed` events, was replayed.
    pub fn complete(replayed: usize) -> Self {
        Self {
            recovered: true,
            replayed,
            reason: None,
        }
    }

    /// Not recovered for `reason`, nothing replayed.
    pub fn failed(reason: Incomplete) -> Self {
        Self {
            recovered: false,
            replayed: 0,
            reason: Some(reason),
        }
    }
}
