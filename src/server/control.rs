//! The control API: what an operator, or the program embedding the server, can ask of the
//! connections and channels of this node. The HTTP routes (`/api/v1/channels`,
//! `/api/v1/disconnect`, …, see `http::control`) call it; so can Rust code, through
//! [`Server::control`](super::Server::control).
//!
//! Connections are told through the hub's mailbox (see [`crate::engine::control`]): the
//! calls return as soon as every connection named has its command, which it carries out
//! within moments (after the message it is reading, if any).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Shared;
use crate::engine::control::{Command, Farewell};
use crate::protocol::channel::Channel;
use crate::protocol::recovery::Recovery;

/// Whose connections a command is for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One connection: the client id its welcome (or Socket.IO's `sid`) gave it.
    Client(u64),
    /// Every connection of a user: the subject of its token (`sub`), or a publish key's
    /// name (`api-key#N`). Anonymous connections are nobody's.
    User(String),
}

/// The most events one history page holds.
pub const MAX_HISTORY_PAGE: usize = 1000;

/// A page of a channel's history ([`Control::history`]).
#[derive(Debug, Clone, Serialize)]
pub struct HistoryPage {
    /// The channel.
    pub channel: Channel,
    /// The epoch the offsets belong to.
    pub epoch: String,
    /// The offset of the channel's newest event (0: none yet).
    pub last: u64,
    /// The events after `since`, oldest first, as subscribers were sent them.
    pub events: Vec<Box<serde_json::value::RawValue>>,
    /// Whether `events` begins right after `since` (false when history no longer holds
    /// some of what followed it, or never knew `since`; `reason` says which).
    #[serde(flatten)]
    pub recovery: Recovery,
    /// Whether more events follow the page: ask again with `since` = the last one's offset.
    pub more: bool,
}

/// The control API of one server. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl Control {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Disconnects `target`'s connections with `farewell` (after what is queued for them
    /// is written). Returns how many connections were told.
    pub fn disconnect(&self, target: &Target, farewell: &Farewell) -> usize {
        self.tell(target, Command::Disconnect(farewell.clone()))
    }

    /// Subscribes `target`'s connections to `channels`, whatever their grant allows; each
    /// is sent a `subscribe_response` (and the snapshots of snapshot channels). Returns
    /// how many connections were told.
    pub fn subscribe(&self, target: &Target, channels: &[Channel]) -> usize {
        self.tell(target, Command::Subscribe(channels.to_vec()))
    }

    /// Unsubscribes `target`'s connections from `channels`; each is sent an
    /// `unsubscribe_response`. Returns how many connections were told.
    pub fn unsubscribe(&self, target: &Target, channels: &[Channel]) -> usize {
        self.tell(target, Command::Unsubscribe(channels.to_vec()))
    }

    /// Every channel with subscribers on this node, with their counts, by name.
    pub fn channels(&self) -> Vec<(Channel, usize)> {
        self.shared.hub.channels()
    }

    /// Up to `limit` (at most [`MAX_HISTORY_PAGE`]) of `channel`'s events after offset
    /// `since` (0: from the oldest kept), from this node's history. `None` when the
    /// server keeps no history (`history.size = 0`).
    pub fn history(&self, channel: &Channel, since: u64, limit: usize) -> Option<HistoryPage> {
        let history = self.shared.hub.history()?;
        let locked = history.lock([channel]);
        let (mut recovery, frames) = locked
            .missed(channel, since)
            .expect("the channel was just locked");
        drop(locked);
        let last = history.position(channel);
        let limit = limit.min(MAX_HISTORY_PAGE);
        let more = frames.len() > limit;
        let events: Vec<_> = frames
            .iter()
            .take(limit)
            .filter_map(|frame| raw_json(&crate::frame::payload_of(frame)))
            .collect();
        recovery.replayed = events.len();
        Some(HistoryPage {
            channel: channel.clone(),
            epoch: history.epoch().to_string(),
            last,
            events,
            recovery,
            more,
        })
    }

    /// Leaves `command` for each of `target`'s connections; returns how many got it.
    fn tell(&self, target: &Target, command: Command) -> usize {
        let hub = &self.shared.hub;
        match target {
            Target::Client(id) => usize::from(hub.command(*id, command)),
            Target::User(subject) => self
                .shared
                .users
                .of(subject)
                .into_iter()
                .filter(|&id| hub.command(id, command.clone()))
                .count(),
        }
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

/// A kept frame's payload as JSON, as it was sent.
fn raw_json(payload: &Bytes) -> Option<Box<serde_json::value::RawValue>> {
    let text = std::str::from_utf8(payload).ok()?;
    serde_json::value::RawValue::from_string(text.to_owned()).ok()
}
