//! Presence: who is subscribed to the channels that keep it (`[[channels]] presence =
//! true`), on this node.
//!
//! A session records its client here when it subscribes to such a channel and takes it
//! off when it unsubscribes or ends; each change is also published, through the broker
//! (so to every node), as an event on the channel's companion `presence:{channel}`:
//! `{"action": "join" | "leave", "channel", "client", "user", "info"?}`. Subscribers that
//! want joins and leaves subscribe to the companion channel (their grant must allow it).
//!
//! Nothing is recorded for channels without presence: a subscribe checks the channel's
//! rules (a scan of `[[channels]]`, an empty loop without any) and stops there. Across a
//! cluster, a channel's members are every node's, gathered when asked (see
//! [`crate::server::control`]); a node that is gone answers nothing, so its clients leave
//! the list at once. Their `leave` events are sent by another node once the dead one has
//! been silent a few seconds (see `cluster::roster`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::auth::permissions::Identity;
use crate::event::Event;
use crate::protocol::channel::Channel;

/// One subscriber of a channel that keeps presence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// Its client id (as a string, as its welcome gives it).
    pub client: String,
    /// Its user: the token's `sub`, `anonymous`, or a publish key's name.
    pub user: String,
    /// The token's `info` claim, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<serde_json::value::RawValue>>,
}

impl Member {
    fn of(client: u64, identity: &Identity) -> Self {
        Self {
            client: client.to_string(),
            user: identity.subject.clone(),
            info: identity.info.as_deref().map(ToOwned::to_owned),
        }
    }
}

/// The members of each channel that keeps presence, on this node.
#[derive(Debug, Default)]
pub(crate) struct Presence {
    channels: Mutex<HashMap<Channel, BTreeMap<u64, Arc<Identity>>>>,
}

impl Presence {
    /// Records `client` (with `identity`) on `channel`; returns the `join` event to
    /// publish, if it was not there already.
    pub(crate) fn join(
        &self,
        channel: &Channel,
        client: u64,
        identity: &Arc<Identity>,
    ) -> Option<Event> {
        let mut channels = self.channels.lock();
        let members = channels.entry(channel.clone()).or_default();
        if members.insert(client, identity.clone()).is_some() {
            return None;
        }
        drop(channels);
        change(Action::Join, channel, Member::of(client, identity))
    }

    /// Takes `client` off `channel`; returns the `leave` event to publish, if it was there.
    pub(crate) fn leave(&self, channel: &Channel, client: u64) -> Option<Event> {
        let mut channels = self.channels.lock();
        let members = channels.get_mut(channel)?;
        let identity = members.remove(&client)?;
        if members.is_empty() {
            channels.remove(channel);
        }
        drop(channels);
        change(Action::Leave, channel, Member::of(client, &identity))
    }

    /// Every channel's members here, for a node that keeps the whole cluster's roster.
    pub(crate) fn all(&self) -> Vec<(Channel, Vec<Member>)> {
        let channels = self.channels.lock();
        channels
            .iter()
            .map(|(channel, members)| {
                let members = members
                    .iter()
                    .map(|(client, identity)| Member::of(*client, identity))
                    .collect();
                (channel.clone(), members)
            })
            .collect()
    }

    /// `channel`'s members here, by client id.
    pub(crate) fn members(&self, channel: &str) -> Vec<Member> {
        let channels = self.channels.lock();
        channels
            .get(channel)
            .map(|members| {
                members
                    .iter()
                    .map(|(client, identity)| Member::of(*client, identity))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What a presence event says of its member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// It subscribed (`"join"`).
    Join,
    /// It unsubscribed or went away (`"leave"`).
    Leave,
}

/// The companion channel of `channel`'s joins and leaves, if its name fits.
pub fn companion(channel: &str) -> Option<Channel> {
    Channel::new(&format!("presence:{channel}")).ok()
}

/// The `action` event of `member` on `channel`'s companion; none if the companion's name
/// would be too long (the channel's presence is still kept). Also for the members of
/// other nodes: a dead node's leaving, this node's joining again after a cut.
pub(crate) fn change(action: Action, channel: &Channel, member: Member) -> Option<Event> {
    let Some(companion) = companion(channel) else {
        tracing::debug!(%channel, "no presence events: `presence:{channel}` is too long");
        return None;
    };
    #[derive(Serialize)]
    struct Change<'a> {
        action: Action,
        channel: &'a Channel,
        #[serde(flatten)]
        member: Member,
    }
    let change = Change {
        action,
        channel,
        member,
    };
    Event::new(companion.as_str(), &change).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> Channel {
        Channel::new(name).unwrap()
    }

    #[test]
    fn members_join_once_and_leave_once_with_an_event_each_time() {
        let presence = Presence::default();
        let room = channel("room.blue");
        let alice = Identity::anonymous();
        let join = presence.join(&room, 7, &alice).expect("a join event");
        assert_eq!(join.channel().as_str(), "presence:room.blue");
        let data: serde_json::Value = serde_json::from_str(join.data().get()).unwrap();
        assert_eq!(data["action"], "join");
        assert_eq!(data["client"], "7");
        assert_eq!(data["user"], "anonymous");
        assert!(presence.join(&room, 7, &alice).is_none(), "already there");
        presence.join(&room, 9, &alice);
        let clients: Vec<String> = presence
            .members("room.blue")
            .into_iter()
            .map(|m| m.client)
            .collect();
        assert_eq!(clients, ["7", "9"]);
        assert!(presence.leave(&room, 7).is_some());
        assert!(presence.leave(&room, 7).is_none(), "gone already");
        assert!(presence.leave(&channel("elsewhere"), 9).is_none());
        assert!(presence.leave(&room, 9).is_some());
        assert!(presence.members("room.blue").is_empty());
        assert!(
            presence.channels.lock().is_empty(),
            "an empty channel is forgotten"
        );
    }

    #[test]
    fn a_channel_whose_companion_is_too_long_keeps_presence_without_events() {
        let presence = Presence::default();
        let long = channel(&"x".repeat(128));
        assert!(presence.join(&long, 1, &Identity::anonymous()).is_none());
        assert_eq!(presence.members(long.as_str()).len(), 1);
    }
}
