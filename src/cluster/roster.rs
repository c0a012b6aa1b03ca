//! The presence of every node, kept by every node, so that the members of a node that
//! dies are announced as leaving.
//!
//! Each node tells the others of its presence changes on core NATS (`{prefix}.roster`):
//! of a join before it publishes the event, of a leave after, so that a member any
//! subscriber has seen join is known to every node until its leave is stored. Every node
//! keeps what the others told it, by node. A node that starts seeds its
//! roster with one gathering ([`ControlRequest::Roster`]) once it has heard every node.
//! When a node has been silent for [`SILENCE`](super::nodes::SILENCE), every node forgets
//! its members, and the live node whose id sorts first publishes their `leave` events
//! through the stream, once: a watcher hears of a dead node's members leaving within about
//! four seconds. (Two nodes that disagree for a moment about who sorts first may both
//! publish them; a `leave` for a member already gone is harmless.)
//!
//! A node cut off from NATS announces nothing meanwhile. When its link comes back it may
//! have been announced as gone, so it announces its own members as joining again, and
//! reads the others' anew. A node taken for gone while it was not (its beats held up
//! past the silence) hears so on `{prefix}.gone`, and does the same.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::nodes::BEAT;
use super::{subject, Cluster, ClusterError};
use crate::event::Event;
use crate::protocol::channel::Channel;
use crate::server::control::{ControlHandler, ControlRequest};
use crate::server::presence::{change, Action, Member};

/// Each node's members, by channel and client.
#[derive(Debug, Default)]
pub(super) struct Roster {
    nodes: Mutex<HashMap<String, Members>>,
}

/// One node's members, by channel and client id.
type Members = HashMap<Channel, BTreeMap<String, Member>>;

/// A presence change as a node tells the others: its id and the event's data.
#[derive(Serialize)]
struct Told<'a> {
    node: &'a str,
    change: &'a RawValue,
}

/// The same, read.
#[derive(Deserialize)]
struct Heard {
    node: String,
    change: Change,
}

/// A presence event's data.
#[derive(Deserialize)]
struct Change {
    action: Action,
    channel: Channel,
    client: String,
    user: String,
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

impl Roster {
    fn apply(&self, node: String, change: Change) {
        let mut nodes = self.nodes.lock();
        let channels = nodes.entry(node).or_default();
        match change.action {
            Action::Join => {
                let member = Member {
                    client: change.client.clone(),
                    user: change.user,
                    info: change.info,
                };
                channels
                    .entry(change.channel)
                    .or_default()
                    .insert(change.client, member);
            }
            Action::Leave => {
                if let Some(members) = channels.get_mut(&change.channel) {
                    members.remove(&change.client);
                    if members.is_empty() {
                        channels.remove(&change.channel);
                    }
                }
            }
        }
    }

    /// Adds what `node` answered a gathering, beside what it told since.
    fn seed(&self, node: String, roster: Vec<(Channel, Vec<Member>)>) {
        let mut nodes = self.nodes.lock();
        let channels = nodes.entry(node).or_default();
        for (channel, members) in roster {
            let known = channels.entry(channel).or_default();
            for member in members {
                known.entry(member.client.clone()).or_insert(member);
            }
        }
    }

    /// Forgets the nodes that are not `live`, returning their members.
    fn take_gone(&self, live: &BTreeSet<String>) -> Vec<(String, Vec<(Channel, Member)>)> {
        let mut nodes = self.nodes.lock();
        let gone: Vec<String> = nodes
            .keys()
            .filter(|node| !live.contains(*node))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|node| {
                let channels = nodes.remove(&node)?;
                let members = channels
                    .into_iter()
                    .flat_map(|(channel, members)| {
                        members.into_values().map(move |m| (channel.clone(), m))
                    })
                    .collect();
                Some((node, members))
            })
            .collect()
    }
}

impl Cluster {
    /// Tells the other nodes of this node's presence `changes`, in order.
    pub(super) async fn tell_roster(&self, changes: &[Event]) {
        let subject = subject::roster(&self.prefix);
        for change in changes {
            let told = Told {
                node: &self.instance,
                change: change.data(),
            };
            let body = serde_json::to_vec(&told).expect("serializing to memory cannot fail");
            if let Err(e) = self.client.publish(subject.clone(), body.into()).await {
                tracing::debug!(error = %e, "presence change not told to the cluster");
            }
        }
    }

    /// Keeps the other nodes' presence, and announces the members of those that die,
    /// until the link closes.
    pub(super) async fn keep_roster(
        self: &Arc<Self>,
        own: ControlHandler,
    ) -> Result<(), ClusterError> {
        let mut told = self.follow(subject::roster(&self.prefix)).await?;
        let this = self.clone();
        let listening = tokio::spawn(async move {
            while let Some(message) = told.next().await {
                match serde_json::from_slice::<Heard>(&message.payload) {
                    Ok(heard) if heard.node == this.instance => {}
                    Ok(heard) => this.roster.apply(heard.node, heard.change),
                    Err(e) => tracing::debug!(error = %e, "not a presence change; ignored"),
                }
            }
        });
        // Taken for gone while still here: say again who is here.
        let mut gone = self.follow(subject::gone(&self.prefix)).await?;
        let this = self.clone();
        let me = own.clone();
        let contradicting = tokio::spawn(async move {
            while let Some(message) = gone.next().await {
                if *message.payload == *this.instance.as_bytes() {
                    tracing::info!("this node was taken for gone; its members are announced again");
                    this.announce_own(&me);
                }
            }
        });
        self.tasks.lock().push(contradicting);
        let this = self.clone();
        let mut reconnects = self.reconnects.subscribe();
        let watching = tokio::spawn(async move {
            // Once every node has been heard, what they hold already.
            tokio::time::sleep(BEAT * 2).await;
            this.seed_roster().await;
            let mut ticks = tokio::time::interval(BEAT);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => this.announce_the_gone().await,
                    changed = reconnects.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        this.rejoin(&own).await;
                    }
                }
            }
        });
        self.tasks.lock().extend([listening, watching]);
        Ok(())
    }

    /// After the link came back: hears every node again before judging who is gone,
    /// announces this node's members as joining (the others may have announced them as
    /// leaving), and reads the others' members anew.
    async fn rejoin(self: &Arc<Self>, own: &ControlHandler) {
        self.nodes.listening(crate::clock::now());
        self.announce_own(own);
        tokio::time::sleep(BEAT * 2).await;
        self.seed_roster().await;
    }

    /// Announces this node's members as joining, to the watchers and the other nodes.
    fn announce_own(&self, own: &ControlHandler) {
        let arrivals: Vec<Event> = own(&ControlRequest::Roster)
            .roster
            .into_iter()
            .flat_map(|(channel, members)| {
                members
                    .into_iter()
                    .filter_map(move |member| change(Action::Join, &channel, member))
            })
            .collect();
        if !arrivals.is_empty() {
            tracing::info!(
                members = arrivals.len(),
                "this node's presence members are announced again"
            );
            self.announce(arrivals, Action::Join, SystemTime::now());
        }
    }

    async fn seed_roster(self: &Arc<Self>) {
        match self.clone().gather(ControlRequest::Roster).await {
            Ok(answers) => {
                for answer in answers.into_iter().filter(|a| a.node != self.instance) {
                    self.roster.seed(answer.node, answer.roster);
                }
            }
            Err(e) => tracing::warn!(error = %e, "the cluster's presence could not be read"),
        }
    }

    /// Forgets the nodes gone silent; if this node is the live one that sorts first,
    /// publishes their members' `leave` events.
    async fn announce_the_gone(&self) {
        // Cut off, this node cannot tell who is gone: everyone is silent to it.
        if !self.is_connected() {
            return;
        }
        let Some(mut live) = self.nodes.live(crate::clock::now()) else {
            return;
        };
        live.insert(self.instance.clone());
        let first = live.first().is_some_and(|node| *node == self.instance);
        for (node, members) in self.roster.take_gone(&live) {
            if !first {
                tracing::debug!(node, "a node is gone; another node announces it");
                continue;
            }
            // Should it be here after all, it announces its members again.
            let said = self
                .client
                .publish(subject::gone(&self.prefix), node.clone().into())
                .await;
            if let Err(e) = said {
                tracing::debug!(error = %e, "could not say which node is gone");
            }
            if members.is_empty() {
                continue;
            }
            tracing::info!(
                node,
                members = members.len(),
                "a node is gone; its presence members leave"
            );
            let leaves: Vec<Event> = members
                .into_iter()
                .filter_map(|(channel, member)| change(Action::Leave, &channel, member))
                .collect();
            let _ = self
                .publish_or_deliver_here(&leaves, SystemTime::now())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(action: Action, channel: &str, client: &str) -> Change {
        Change {
            action,
            channel: Channel::new(channel).unwrap(),
            client: client.to_owned(),
            user: "u".to_owned(),
            info: None,
        }
    }

    #[test]
    fn a_gone_nodes_members_are_taken_once() {
        let roster = Roster::default();
        roster.apply("a".into(), change(Action::Join, "room", "1"));
        roster.apply("a".into(), change(Action::Join, "room", "2"));
        roster.apply("a".into(), change(Action::Leave, "room", "1"));
        roster.apply("b".into(), change(Action::Join, "room", "3"));
        let member = Member {
            client: "4".into(),
            user: "u".into(),
            info: None,
        };
        roster.seed(
            "a".into(),
            vec![(Channel::new("hall").unwrap(), vec![member])],
        );
        let live: BTreeSet<String> = ["b".to_owned()].into();
        let gone = roster.take_gone(&live);
        assert_eq!(gone.len(), 1);
        let (node, members) = &gone[0];
        assert_eq!(node, "a");
        let mut clients: Vec<&str> = members.iter().map(|(_, m)| m.client.as_str()).collect();
        clients.sort_unstable();
        assert_eq!(clients, ["2", "4"]);
        assert!(roster.take_gone(&live).is_empty(), "forgotten");
        let none = BTreeSet::new();
        assert_eq!(roster.take_gone(&none)[0].1.len(), 1, "b's member");
    }
}
