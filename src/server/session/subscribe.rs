//! Subscribing and unsubscribing, with recovery of what a resuming client missed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::reply::{subscription_reply, Resumed};
use super::{Session, Step};
use crate::auth::permissions::Identity;
use crate::broker::{Broker, Completion};
use crate::dialect::{Dialect, Encoding, ServerMessage};
use crate::engine::client::{Client, Rejection, SubscriptionChange};
use crate::engine::history::Locked;
use crate::hooks::{Caller, Refused};
use crate::protocol::channel::{self, Channel};
use crate::protocol::code::RejectReason;
use crate::protocol::message::{ChannelList, MessageError, Resume};
use crate::protocol::recovery::{Incomplete, Recovery};
use crate::server::counters::Limit;
use crate::snapshot::{Snapshot, SnapshotCache};

impl Session {
    /// Decides, with their logs locked, what each channel of `resume` that `change`
    /// subscribes gets replayed. The locks are held until [`Self::complete_subscribe`]
    /// has subscribed the client, so no event published meanwhile is missed or doubled.
    pub(super) fn plan_resume(
        &self,
        resume: Option<&Resume>,
        change: &SubscriptionChange,
    ) -> Resumption {
        let mut plan = Resumption::default();
        let Some(resume) = resume else {
            return plan;
        };
        let failed = |reason| Recovery::failed(reason);
        let Some(history) = self.shared.hub.history() else {
            plan.outcomes = resume
                .since
                .iter()
                .map(|(name, _)| (name.clone(), failed(Incomplete::NoHistory)))
                .collect();
            return plan;
        };
        if resume
            .epoch
            .as_deref()
            .is_some_and(|e| e != history.epoch().as_str())
        {
            plan.outcomes = resume
                .since
                .iter()
                .map(|(name, _)| (name.clone(), failed(Incomplete::EpochChanged)))
                .collect();
            return plan;
        }
        let mut resumed = Vec::new();
        for (name, since) in &resume.since {
            match change.changed.iter().find(|c| c.as_str() == name) {
                Some(channel) => resumed.push((channel, *since)),
                None if self
                    .client
                    .subscriptions()
                    .iter()
                    .any(|c| c.as_str() == name) =>
                {
                    plan.outcomes
                        .insert(name.clone(), failed(Incomplete::AlreadySubscribed));
                }
                // Refused or not asked for: the reply's `rejected` says why.
                None => {}
            }
        }
        if resumed.is_empty() {
            return plan;
        }
        let locked = history.lock(resumed.iter().map(|(c, _)| *c));
        // Room in the queue for the replay, after the reply (snapshots widen the bounds by
        // their own size: they take none of it).
        let mut room = self.client.outbox().room().saturating_sub(1);
        for (channel, since) in resumed {
            let (recovery, frames) = locked
                .missed(channel, since)
                .expect("every resumed channel is locked");
            let recovery = if frames.len() > room {
                failed(Incomplete::TooMuchToReplay)
            } else {
                room -= frames.len();
                plan.replay.extend(frames);
                recovery
            };
            plan.outcomes.insert(channel.to_string(), recovery);
        }
        plan.locked = Some(locked);
        plan
    }

    /// A client's subscribe: asks the application about the channels its grant allows
    /// (where it wants to be asked), has the broker ready them, and subscribes, at once
    /// when nothing has to be waited for.
    pub(super) fn check_subscribe(
        &mut self,
        identity: Arc<Identity>,
        list: ChannelList,
        now: SystemTime,
    ) -> Step {
        let wanted: Vec<Channel> = list
            .channels
            .iter()
            .filter(|name| identity.may_subscribe(name))
            .filter_map(|name| Channel::new(name).ok())
            .collect();
        let caller = Caller {
            client: self.client.id(),
            identity: identity.clone(),
        };
        let readying: BoxFuture<'static, Vec<Refused>> =
            match self.shared.hooks.check_subscribe(&caller, &wanted) {
                Completion::Ready(refused) => {
                    match listen(
                        &*self.shared.broker,
                        &wanted,
                        &refused,
                        list.resume.as_ref(),
                    ) {
                        Completion::Ready(()) => {
                            self.subscribe(&identity, &list, &refused, now);
                            return Step::Done;
                        }
                        Completion::Pending(listening) => Box::pin(async move {
                            listening.await;
                            refused
                        }),
                    }
                }
                Completion::Pending(checking) => {
                    let broker = self.shared.broker.clone();
                    let resume = list.resume.clone();
                    Box::pin(async move {
                        let refused = checking.await;
                        listen(&*broker, &wanted, &refused, resume.as_ref()).await;
                        refused
                    })
                }
            };
        Step::Subscribe(identity, list, readying)
    }

    /// Reply, then snapshots, then subscribe: the client sees the reply before any event
    /// the subscription lets through. Channels the grant does not allow, and those the
    /// application `refused`, are refused.
    pub(super) fn subscribe(
        &mut self,
        identity: &Identity,
        list: &ChannelList,
        refused: &[Refused],
        now: SystemTime,
    ) {
        let (allowed, forbidden): (Vec<&str>, Vec<&str>) = list
            .channels
            .iter()
            .map(String::as_str)
            .partition(|name| channel::validate(name).is_err() || identity.may_subscribe(name));
        let mut vetoed = Vec::new();
        let allowed: Vec<&str> = allowed
            .into_iter()
            .filter(|name| match refused.iter().find(|r| r.channel == *name) {
                Some(refusal) => {
                    vetoed.push(refusal.rejection());
                    false
                }
                None => true,
            })
            .collect();
        let mut change = self.client.plan_subscribe(allowed);
        change.rejected.extend(forbidden.into_iter().map(|name| {
            Rejection::new(
                name,
                RejectReason::Forbidden,
                "your token does not allow this channel",
            )
        }));
        change.rejected.extend(vetoed);
        let after: Vec<Channel> = self
            .client
            .subscriptions()
            .iter()
            .chain(&change.changed)
            .cloned()
            .collect();
        let offsets = self.positions(&change);
        let resumption = self.plan_resume(list.resume.as_ref(), &change);
        let epoch = self.epoch();
        self.client.send(subscription_reply(
            self.client.dialect(),
            ServerMessage::SubscribeResponse,
            "subscribed",
            &after,
            list,
            &change,
            Resumed {
                epoch: epoch.as_deref().map(String::as_str),
                recovery: list.resume.is_some().then_some(&resumption.outcomes),
                offsets: offsets.as_ref(),
            },
            now,
        ));
        self.complete_subscribe(&change, resumption);
    }

    /// Unsubscribes the client from `names` and takes it off their presence.
    pub(super) fn leave<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> SubscriptionChange {
        let change = self.client.unsubscribe(names);
        self.left(&change.changed);
        change
    }

    /// An unsubscribe, the client's or the server's for it: leave, then reply.
    pub(super) fn unsubscribe(&mut self, list: &ChannelList, now: SystemTime) {
        let change = self.leave(list.channels.iter().map(String::as_str));
        self.client.send(subscription_reply(
            self.client.dialect(),
            ServerMessage::UnsubscribeResponse,
            "unsubscribed",
            self.client.subscriptions(),
            list,
            &change,
            Resumed::default(),
            now,
        ));
    }

    /// The end of every subscribe, after its reply (or the welcome) is queued: the
    /// snapshots, the replay of what a resuming client missed, then the subscription
    /// itself, so nothing newer can arrive ahead of them. Releases the resumed logs.
    pub(super) fn complete_subscribe(
        &mut self,
        change: &SubscriptionChange,
        resumption: Resumption,
    ) {
        self.count_rejections(&change.rejected);
        send_snapshots(&self.client, change, &self.shared.snapshots);
        let dialect = self.client.dialect();
        for frame in resumption.replay {
            self.client.send(dialect.transcode(&frame));
        }
        let late = self.client.apply_subscribe(change);
        drop(resumption.locked);
        self.joined(
            change
                .changed
                .iter()
                .filter(|c| !late.iter().any(|r| r.channel == c.as_str())),
        );
        self.report_late(late);
    }

    pub(super) fn count_rejections(&self, rejected: &[Rejection]) {
        self.shared
            .counters
            .subscriptions_failed
            .fetch_add(rejected.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for r in rejected {
            if let Some(limit) = Limit::of_rejection(r.code) {
                self.shared.counters.hit(limit);
            }
        }
    }

    /// Channels that filled up between the reply and the subscription (rare): an `error`
    /// for each, so the client knows the subscription did not take.
    pub(super) fn report_late(&self, late: Vec<Rejection>) {
        self.count_rejections(&late);
        for r in late {
            let e = MessageError {
                code: r.code.into(),
                message: format!("not subscribed to {:?}: {}", r.channel, r.reason),
                correlation_id: None,
            };
            self.refuse(&e, SystemTime::now());
        }
    }
}

/// Before subscribing, this node must receive what is published anywhere on the channels
/// `wanted` but not `refused`: the broker readies them.
fn listen(
    broker: &dyn Broker,
    wanted: &[Channel],
    refused: &[Refused],
    resume: Option<&Resume>,
) -> Completion<()> {
    let mut allowed = wanted
        .iter()
        .filter(|c| !refused.iter().any(|r| r.channel == c.as_str()))
        .cloned();
    broker.listen(&mut allowed, resume)
}

/// Queues the current snapshot of every channel in `change` (before the subscription is
/// applied, so that nothing newer can arrive ahead of it), in the client's dialect.
pub(super) fn send_snapshots(
    client: &Client,
    change: &SubscriptionChange,
    snapshots: &SnapshotCache,
) {
    for channel in &change.changed {
        let Some(snapshot) = snapshots.get(channel) else {
            continue;
        };
        // Whole: hundreds of agents are more than the queue's frame bound.
        let frames = snapshot_frames(&snapshot, client.encoding(), |f| client.encode(f));
        client.outbox().push_snapshot(channel, &frames);
    }
}

/// `snapshot`'s frames in `encoding`; `encode` compresses a frame of the encoding's
/// dialect when the encoding says so (see `Client::encode`).
pub(crate) fn snapshot_frames(
    snapshot: &Snapshot,
    encoding: Encoding,
    encode: impl Fn(&Bytes) -> Bytes,
) -> Arc<[Bytes]> {
    if encoding == Encoding::plain(Dialect::CANONICAL) {
        snapshot.frames.clone()
    } else if encoding.dialect == Dialect::CANONICAL {
        // Compressed once per snapshot, for every subscriber that takes it compressed.
        snapshot.deflated(encode)
    } else {
        // Another dialect: transcoded (and compressed) for this client.
        snapshot
            .frames
            .iter()
            .map(|f| encode(&encoding.dialect.transcode(f)))
            .collect()
    }
}

/// A subscribe's resumed channels: what was decided and the locks held until it applies.
#[derive(Default)]
pub(super) struct Resumption {
    /// Per channel named in `since`, how its recovery went.
    pub(super) outcomes: BTreeMap<String, Recovery>,
    /// What the client missed, oldest first, channel by channel.
    replay: Vec<Bytes>,
    /// The resumed channels' logs, locked.
    locked: Option<Locked>,
}
