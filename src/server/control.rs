//! The control API: what an operator, or the program embedding the server, can ask of the
//! connections and channels of the cluster. The HTTP routes (`/api/v1/channels`,
//! `/api/v1/disconnect`, …, see `http::control`) call it; so can Rust code, through
//! [`Server::control`](super::Server::control).
//!
//! A request goes to every node through the broker ([`Broker::gather`]); each applies it
//! to its own connections ([`Control::apply`]) and answers what it did, and the caller
//! gets the sum with the number of nodes that answered. On one node it is applied here.
//! Client ids are unique across a cluster (each node numbers its clients from a random
//! base), so a client id names one connection wherever it is.
//!
//! Connections are told through the hub's mailbox (see [`crate::engine::control`]): a
//! call returns as soon as every connection named has its command, which it carries out
//! within moments (after the message it is reading, if any).
//!
//! [`Broker::gather`]: crate::broker::Broker::gather

use std::sync::{Arc, Weak};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::presence::Member;
use super::Shared;
use crate::engine::control::{Command, Farewell};
use crate::protocol::channel::Channel;
use crate::protocol::recovery::{Incomplete, Recovery};

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

/// A request to every node: a command for some connections, or a question.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Disconnect `target`'s connections.
    Disconnect {
        /// Whose.
        target: Target,
        /// With what.
        farewell: Farewell,
    },
    /// Subscribe `target`'s connections to `channels`.
    Subscribe {
        /// Whose.
        target: Target,
        /// To what.
        channels: Vec<Channel>,
    },
    /// Unsubscribe `target`'s connections from `channels`.
    Unsubscribe {
        /// Whose.
        target: Target,
        /// From what.
        channels: Vec<Channel>,
    },
    /// Which channels have subscribers, and how many.
    Channels,
    /// Who is subscribed to a channel that keeps presence.
    Presence {
        /// The channel.
        channel: Channel,
    },
    /// Every channel's members: for a node that keeps the whole cluster's roster.
    Roster,
}

/// What one node did with a [`ControlRequest`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NodeAnswer {
    /// The node that answered (set by the cluster link).
    #[serde(default)]
    pub node: String,
    /// Connections told (a command).
    #[serde(default)]
    pub connections: usize,
    /// Channels with subscribers, and how many (a [`ControlRequest::Channels`]).
    #[serde(default)]
    pub channels: Vec<(Channel, usize)>,
    /// A channel's members (a [`ControlRequest::Presence`]).
    #[serde(default)]
    pub members: Vec<Member>,
    /// Every channel's members (a [`ControlRequest::Roster`]).
    #[serde(default)]
    pub roster: Vec<(Channel, Vec<Member>)>,
}

/// What a command did across the nodes that answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Told {
    /// Connections told, over every node that answered (0: none matched).
    pub connections: usize,
    /// Nodes that answered (1 without a cluster). In a cluster, nodes that did not answer
    /// within the gathering window are not counted, nor are their connections.
    pub nodes: usize,
}

/// Applies a request on this node; what a cluster node runs for each request it receives
/// ([`NatsBroker::serve_control`](crate::cluster::NatsBroker::serve_control)).
pub type ControlHandler = Arc<dyn Fn(&ControlRequest) -> NodeAnswer + Send + Sync>;

/// Who is subscribed to a channel that keeps presence ([`Control::presence`]).
#[derive(Debug, Clone, Serialize)]
pub struct PresenceList {
    /// The channel.
    pub channel: Channel,
    /// How many members.
    pub count: usize,
    /// Its members.
    pub members: Vec<Member>,
    /// Nodes that answered (1 without a cluster).
    pub nodes: usize,
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
    /// is written), on every node.
    pub async fn disconnect(&self, target: &Target, farewell: &Farewell) -> Told {
        self.command(ControlRequest::Disconnect {
            target: target.clone(),
            farewell: farewell.clone(),
        })
        .await
    }

    /// Subscribes `target`'s connections to `channels`, on every node, whatever their
    /// grant allows; each is sent a `subscribe_response` (and the snapshots of snapshot
    /// channels).
    pub async fn subscribe(&self, target: &Target, channels: &[Channel]) -> Told {
        self.command(ControlRequest::Subscribe {
            target: target.clone(),
            channels: channels.to_vec(),
        })
        .await
    }

    /// Unsubscribes `target`'s connections from `channels`, on every node; each is sent an
    /// `unsubscribe_response`.
    pub async fn unsubscribe(&self, target: &Target, channels: &[Channel]) -> Told {
        self.command(ControlRequest::Unsubscribe {
            target: target.clone(),
            channels: channels.to_vec(),
        })
        .await
    }

    /// Every channel with subscribers on any node that answered, with their counts summed,
    /// by name.
    pub async fn channels(&self) -> Vec<(Channel, usize)> {
        let mut sum = std::collections::BTreeMap::new();
        for answer in self.gather(ControlRequest::Channels).await {
            for (channel, n) in answer.channels {
                *sum.entry(channel).or_insert(0) += n;
            }
        }
        sum.into_iter().collect()
    }

    /// Who is subscribed to `channel`, on every node that answered, by node then client
    /// id; `None` if the channel does not keep presence (`[[channels]] presence = true`).
    pub async fn presence(&self, channel: &Channel) -> Option<PresenceList> {
        if !self.shared.hub.keeps_presence(channel) {
            return None;
        }
        let answers = self
            .gather(ControlRequest::Presence {
                channel: channel.clone(),
            })
            .await;
        let nodes = answers.len();
        let members: Vec<Member> = answers.into_iter().flat_map(|a| a.members).collect();
        Some(PresenceList {
            channel: channel.clone(),
            count: members.len(),
            members,
            nodes,
        })
    }

    /// Applies `request` to this node's connections alone.
    pub fn apply(&self, request: &ControlRequest) -> NodeAnswer {
        let told = |target, command| NodeAnswer {
            connections: self.tell(target, command),
            ..NodeAnswer::default()
        };
        match request {
            ControlRequest::Disconnect { target, farewell } => {
                told(target, Command::Disconnect(farewell.clone()))
            }
            ControlRequest::Subscribe { target, channels } => {
                told(target, Command::Subscribe(channels.clone()))
            }
            ControlRequest::Unsubscribe { target, channels } => {
                told(target, Command::Unsubscribe(channels.clone()))
            }
            ControlRequest::Channels => NodeAnswer {
                channels: self.shared.hub.channels(),
                ..NodeAnswer::default()
            },
            ControlRequest::Presence { channel } => NodeAnswer {
                members: self.shared.presence.members(channel),
                ..NodeAnswer::default()
            },
            ControlRequest::Roster => NodeAnswer {
                roster: self.shared.presence.all(),
                ..NodeAnswer::default()
            },
        }
    }

    /// What applies requests from other nodes here. It holds the server weakly: a broker
    /// that outlives the server answers nothing.
    pub(crate) fn handler(shared: &Arc<Shared>) -> ControlHandler {
        let shared: Weak<Shared> = Arc::downgrade(shared);
        Arc::new(move |request| match shared.upgrade() {
            Some(shared) => Control::new(shared).apply(request),
            None => NodeAnswer::default(),
        })
    }

    async fn command(&self, request: ControlRequest) -> Told {
        let answers = self.gather(request).await;
        Told {
            connections: answers.iter().map(|a| a.connections).sum(),
            nodes: answers.len(),
        }
    }

    /// Every node's answer to `request`: through the broker in a cluster (this node's
    /// among them), else this node's. A cluster whose broker cannot ask the others now
    /// (NATS unreachable) gets this node's answer alone.
    async fn gather(&self, request: ControlRequest) -> Vec<NodeAnswer> {
        match self.shared.broker.gather(&request) {
            Some(gathering) => match gathering.await {
                Ok(answers) => answers,
                Err(e) => {
                    tracing::warn!(error = %e, "control request not sent to the cluster; applied on this node only");
                    vec![self.apply(&request)]
                }
            },
            None => vec![self.apply(&request)],
        }
    }

    /// Up to `limit` (at most [`MAX_HISTORY_PAGE`]) of `channel`'s events after offset
    /// `since` (0: from the oldest kept), from this node's history. `None` when the
    /// server keeps no history (`history.size = 0`).
    pub fn history(&self, channel: &Channel, since: u64, limit: usize) -> Option<HistoryPage> {
        let history = self.shared.hub.history()?;
        let (mut recovery, frames) = match history.position(channel) {
            // Nothing kept: no log is made for a name that was only asked about.
            0 => match since {
                0 => (Recovery::complete(0), Vec::new()),
                _ => (Recovery::failed(Incomplete::UnknownOffset), Vec::new()),
            },
            _ => history
                .lock([channel])
                .missed(channel, since)
                .expect("the channel was just locked"),
        };
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
