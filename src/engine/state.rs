//! What a hub's clones share: the topic and slot tables, the queue and subscription
//! limits, the compressor, history, and the counters. `Hub` publishes through it; each
//! `Client` holds it to subscribe, unsubscribe and leave.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_queue::SegQueue;

use super::history::History;
use super::outbox::{Outbox, Push};
use super::rules::ChannelRules;
use super::slots::Slots;
use super::topics::Topics;
use crate::compression::Deflater;
use crate::config::SlowConsumerPolicy;
use crate::dialect::{Dialect, Encoding};
use crate::event::Priority;

/// The state every clone of a `Hub`, and every `Client`, shares.
pub(super) struct HubState {
    pub(super) topics: Topics,
    pub(super) slots: Slots,
    pub(super) queue_capacity: usize,
    pub(super) queue_bytes: usize,
    pub(super) policy: SlowConsumerPolicy,
    pub(super) max_subscriptions: usize,
    pub(super) max_subscribers: usize,
    /// Stamp each publish for the publish-to-write latency (`config.metrics`).
    pub(super) timing: bool,
    /// Compresses broadcasts for clients with permessage-deflate.
    pub(super) deflater: Deflater,
    /// Each channel's recent events, when `history.size > 0`.
    pub(super) history: Option<History>,
    /// Channel options by pattern (`[[channels]]`): the default priority.
    pub(super) rules: ChannelRules,
    /// Put off the writer's wake-up for `low` events (`low_priority_delay` is set): see
    /// [`Outbox::defer_wake`].
    pub(super) defer_low: bool,
    /// The outboxes whose writer's wake-up was put off, for [`crate::Hub::wake_deferred`].
    pub(super) deferred: SegQueue<Arc<Outbox>>,
    /// Writers woken by [`crate::Hub::wake_deferred`].
    pub(super) deferred_wakes: AtomicU64,
    pub(super) next_client_id: AtomicU64,
    /// The first client id ([`crate::Hub::number_clients_from`]).
    pub(super) first_client_id: AtomicU64,
    /// Commands on their way to connections ([`crate::Hub::command`]).
    pub(super) mailbox: super::control::Mailbox,
    /// Publish batches begun, whose count is the last batch's id (see [`Self::next_batch`]).
    pub(super) batches: AtomicU64,
    pub(super) clients: AtomicUsize,
    /// `clients`, by dialect ([`Dialect::index`]).
    pub(super) clients_by_dialect: [AtomicUsize; Dialect::COUNT],
    /// Clients whose broadcast frames are compressed.
    pub(super) deflate_clients: AtomicUsize,
    pub(super) peak_clients: AtomicUsize,
    pub(super) published: AtomicU64,
    pub(super) delivered: AtomicU64,
}

impl HubState {
    /// The id of a new publish batch, for the outboxes' byte bound
    /// (`Outbox::push_in_batch`). Ids start at 1: 0 means "no batch" to the outbox.
    pub(super) fn next_batch(&self) -> u64 {
        self.batches.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether a push (`push`, which found the queue empty if `wake`) of an event of
    /// `priority` must wake `outbox`'s writer now. With `low_priority_delay`, a `low` event
    /// that finds the queue empty leaves its writer asleep until the next event of another
    /// priority, a reply, or [`crate::Hub::wake_deferred`]; whatever comes first wakes it.
    #[inline(always)]
    pub(super) fn owes_wake(
        &self,
        outbox: &Arc<Outbox>,
        (push, wake): (Push, bool),
        priority: Priority,
    ) -> bool {
        if !self.defer_low {
            return wake;
        }
        match (wake, priority) {
            (true, Priority::Low) if push == Push::Queued => {
                if outbox.defer_wake() {
                    self.deferred.push(Arc::clone(outbox));
                }
                false
            }
            (true, _) => true,
            (false, Priority::Low) => false,
            (false, _) => outbox.take_deferred_wake(),
        }
    }

    /// A broadcast frame of `encoding`'s dialect as a client taking `encoding` is sent it:
    /// compressed if the encoding says so and compressing pays.
    #[inline]
    pub(super) fn encode(&self, encoding: Encoding, frame: &Bytes) -> Bytes {
        match encoding.deflate {
            Some(window) => self.deflater.frame(frame, window),
            None => frame.clone(),
        }
    }
}
