//! The hub: clients, their subscriptions, and publishing.
//!
//! A publish looks up the channel's subscriber bitsets (one per [`Encoding`]: wire dialect,
//! compressed or not) without locking, encodes its event once for each dialect that has
//! subscribers (see [`crate::dialect`]), compresses that frame once if some of them take
//! it compressed (see [`crate::compression`]), and pushes a refcounted clone of the frame
//! of its encoding into the outbox of every subscribed client. It never blocks and never
//! allocates per subscriber.
//!
//! # Guarantees
//! - A client receives an event only if it was subscribed to the event's channel at some
//!   moment during the publish; an event published while a client subscribes or leaves is
//!   delivered to it once or not at all, and never to another client that later takes the
//!   same slot (see `engine::slots`).
//! - Events published one after another (one `publish` returning before the next starts)
//!   reach each subscriber in that order.
//! - A full client queue never slows the publisher: the slow-consumer policy applies.

use super::rules::ChannelRules;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use crossbeam_queue::SegQueue;

use super::client::Client;
use super::control::Command;
use super::degrade::Tag;
use super::history::History;
use super::latency::Stamp;
use super::outbox::{Closing, Outbox, Push};
use super::slots::Slots;
pub use super::slots::SlotsExhausted;
use super::state::HubState;
pub use super::topics::Occupancy;
use super::topics::Topics;
use crate::compression::{DeflateStats, Deflater};
use crate::config::Config;
use crate::dialect::{Dialect, Encoding};
use crate::event::{ConflateKey, Event, Priority};
use crate::protocol::channel::Channel;
use crate::protocol::close::CloseCode;

/// The broadcast engine. Cheap to clone: clones share one hub.
#[derive(Clone)]
pub struct Hub {
    pub(super) inner: Arc<HubState>,
}

/// What one publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Client queues the frame was put in.
    pub queued: usize,
    /// Clients whose queue overflowed and which are being closed as slow consumers.
    pub overflowed: usize,
    /// Clients whose queue was full and which lost this frame (`drop` policy).
    pub dropped: usize,
    /// Clients behind, from which the event was held back (`degrade` policy): counted for
    /// their next `gap` marker, or parked as the newest of its conflation key.
    pub degraded: usize,
}

impl Delivery {
    /// Counts one push.
    #[inline(always)]
    fn count(&mut self, push: Push) {
        match push {
            Push::Queued => self.queued += 1,
            Push::Overflowed => self.overflowed += 1,
            Push::Dropped => self.dropped += 1,
            Push::Degraded => self.degraded += 1,
            Push::Closed => {}
        }
    }
}

impl std::ops::AddAssign for Delivery {
    fn add_assign(&mut self, other: Self) {
        self.queued += other.queued;
        self.overflowed += other.overflowed;
        self.dropped += other.dropped;
        self.degraded += other.degraded;
    }
}

/// Counters over the hub's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HubStats {
    /// Clients connected now.
    pub clients: usize,
    /// Clients connected now, by dialect ([`Dialect::index`]).
    pub clients_by_dialect: [usize; Dialect::COUNT],
    /// Clients connected now whose broadcast frames are compressed (permessage-deflate).
    pub deflate_clients: usize,
    /// Clients connected over the hub's lifetime.
    pub connected_total: u64,
    /// Most clients connected at once.
    pub peak_clients: usize,
    /// Events published.
    pub published: u64,
    /// Frames put in client queues by publishes.
    pub delivered: u64,
    /// Writers woken by [`Hub::wake_deferred`]: their queue held only `low` events, which
    /// waited up to `low_priority_delay` to be written together.
    pub deferred_wakes: u64,
}

/// What the clients' queues hold together ([`Hub::queued`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Queued {
    /// Frames waiting to be written, over every client.
    pub frames: u64,
    /// Their bytes, a broadcast frame counted once per client that holds it: an upper
    /// bound of the memory they pin (shared frames are one allocation).
    pub bytes: u64,
}

impl Hub {
    /// A hub with the queue and subscription settings of `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            inner: Arc::new(HubState {
                topics: Topics::new(),
                slots: Slots::new(),
                queue_capacity: config.client_queue_capacity,
                queue_bytes: config.client_queue_bytes,
                policy: config.slow_consumer,
                max_subscriptions: config.max_subscriptions_per_connection,
                max_subscribers: config.max_subscribers_per_channel,
                timing: config.metrics,
                deflater: Deflater::new(&config.compression),
                history: (config.history.size > 0)
                    .then(|| History::new(&config.history, &config.channels)),
                rules: ChannelRules::new(&config.channels),
                defer_low: !config.low_priority_delay.is_zero(),
                deferred: SegQueue::new(),
                deferred_wakes: AtomicU64::new(0),
                next_client_id: AtomicU64::new(1),
                first_client_id: AtomicU64::new(1),
                mailbox: Default::default(),
                batches: AtomicU64::new(0),
                clients: AtomicUsize::new(0),
                clients_by_dialect: Default::default(),
                deflate_clients: AtomicUsize::new(0),
                peak_clients: AtomicUsize::new(0),
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
            }),
        }
    }

    /// Registers a new client with an empty outbox and no subscriptions; it is sent
    /// SigmaVault frames.
    pub fn connect(&self) -> Result<Client, SlotsExhausted> {
        self.connect_as(Dialect::SigmaVault)
    }

    /// Registers a new client that speaks `dialect`, with an empty outbox and no
    /// subscriptions.
    pub fn connect_as(&self, dialect: Dialect) -> Result<Client, SlotsExhausted> {
        self.connect_with(Encoding::plain(dialect))
    }

    /// Registers a new client that takes its frames in `encoding` (its dialect, compressed
    /// if it negotiated permessage-deflate), with an empty outbox and no subscriptions.
    pub fn connect_with(&self, encoding: Encoding) -> Result<Client, SlotsExhausted> {
        let inner = &self.inner;
        let outbox = Arc::new(
            Outbox::bounded(inner.queue_capacity, inner.queue_bytes, inner.policy)
                .encoded(encoding),
        );
        let id = inner.next_client_id.fetch_add(1, Ordering::Relaxed);
        let slot = inner.slots.insert(outbox.clone(), id)?;
        let now = inner.clients.fetch_add(1, Ordering::Relaxed) + 1;
        inner.clients_by_dialect[encoding.dialect.index()].fetch_add(1, Ordering::Relaxed);
        if encoding.is_deflated() {
            inner.deflate_clients.fetch_add(1, Ordering::Relaxed);
        }
        inner.peak_clients.fetch_max(now, Ordering::Relaxed);
        Ok(Client::new(Arc::clone(inner), slot, id, outbox))
    }

    /// Numbers clients from `first` (not 0) instead of 1, if none has connected yet;
    /// returns whether it did. A cluster node numbers from a random base, so that a client
    /// id names one connection across the cluster (see `cluster::Cluster::connect`).
    pub fn number_clients_from(&self, first: u64) -> bool {
        let inner = &self.inner;
        let numbered = first != 0
            && inner
                .next_client_id
                .compare_exchange(1, first, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if numbered {
            inner.first_client_id.store(first, Ordering::Relaxed);
        }
        numbered
    }

    /// Publishes `event` stamped with the current time.
    pub fn publish(&self, event: &Event) -> Delivery {
        self.publish_at(event, SystemTime::now())
    }

    /// Publishes `event` stamped with `now`. The event is encoded only for the dialects
    /// that have subscribers on its channel.
    pub fn publish_at(&self, event: &Event, now: SystemTime) -> Delivery {
        self.publish_event(event, now, |o, f, s, t| {
            self.inner.push_and_wake(o, f, s, t)
        })
    }

    /// Publishes `events` in order, all stamped with `now`.
    ///
    /// Every event is queued for every subscriber before any writer is woken, so a writer
    /// finds the whole batch in its queue and sends it with one vectored write instead of
    /// racing the publisher frame by frame. A client that keeps up takes all of it, even
    /// past its queue's bounds (see `Outbox::push_in_batch`).
    pub fn publish_batch(&self, events: &[Event], now: SystemTime) -> Delivery {
        if let [event] = events {
            return self.publish_at(event, now);
        }
        self.in_batch(|batch| {
            let mut delivery = Delivery::default();
            for event in events {
                delivery += self.publish_event(event, now, |o, f, s, t| batch.push(o, f, s, t));
            }
            delivery
        })
    }

    /// One event: numbered and kept when this hub numbers its publishes, then encoded for
    /// each dialect with subscribers (the kept canonical frame serves its own dialect).
    #[inline]
    fn publish_event(
        &self,
        event: &Event,
        now: SystemTime,
        push: impl FnMut(&Arc<Outbox>, Bytes, Option<Stamp>, &Tag<'_>) -> Push,
    ) -> Delivery {
        let channel = event.channel();
        let tag = |offset, prev| Tag {
            channel: channel.as_str(),
            priority: event
                .priority()
                .unwrap_or_else(|| self.inner.rules.priority(channel)),
            conflate: event.conflate(),
            offset,
            prev,
        };
        let Some(history) = self.local_history() else {
            let frame = |dialect: Dialect| dialect.event(event, now, None);
            return self.fan_out(&tag(0, 0), frame, push);
        };
        history.append(
            channel,
            now,
            |offset| Dialect::CANONICAL.event(event, now, Some(offset)),
            |offset, prev, kept| {
                let frame = |dialect: Dialect| match dialect == Dialect::CANONICAL {
                    true => kept.clone(),
                    false => dialect.event(event, now, Some(offset)),
                };
                self.fan_out(&tag(offset, prev), frame, push)
            },
        )
    }

    /// The history that numbers this hub's publishes: none when the hub keeps none, or
    /// when offsets come from elsewhere ([`History::number_elsewhere`]); such publishes
    /// carry no offset.
    fn local_history(&self) -> Option<&History> {
        self.inner
            .history
            .as_ref()
            .filter(|history| history.numbers_locally())
    }

    /// Delivers an event numbered elsewhere (a cluster's stream): `offset` is its place,
    /// `prev` the offset of its channel's event before it. `encode` builds the canonical
    /// frame for the offset, only if there are subscribers or history keeps it; other
    /// dialects transcode it. Kept in history when the hub keeps one; an offset at or
    /// below the channel's last is a duplicate and is dropped (`None`).
    pub(crate) fn publish_sequenced(
        &self,
        channel: &Channel,
        (priority, conflate): (Option<Priority>, Option<&ConflateKey>),
        offset: u64,
        prev: u64,
        now: SystemTime,
        encode: impl FnOnce(u64) -> Bytes,
    ) -> Option<Delivery> {
        let tag = Tag {
            channel: channel.as_str(),
            priority: priority.unwrap_or_else(|| self.inner.rules.priority(channel)),
            conflate,
            offset,
            prev,
        };
        match &self.inner.history {
            None => {
                // Encoded for the first dialect with subscribers, if any has.
                let (mut encode, kept) = (Some(encode), std::cell::OnceCell::new());
                let frame = |d: Dialect| {
                    d.transcode(kept.get_or_init(|| encode.take().expect("called once")(offset)))
                };
                Some(self.fan_out(&tag, frame, |o, f, s, t| {
                    self.inner.push_and_wake(o, f, s, t)
                }))
            }
            Some(history) => {
                history.append_sequenced(channel, offset, prev, now, encode, |_, _, kept| {
                    self.fan_out(
                        &tag,
                        |d| d.transcode(kept),
                        |o, f, s, t| self.inner.push_and_wake(o, f, s, t),
                    )
                })
            }
        }
    }

    /// Each channel's recent events, if the hub keeps them (`history.size > 0`).
    pub fn history(&self) -> Option<&History> {
        self.inner.history.as_ref()
    }

    /// Drops history entries older than `history.max_age` (call about once a second).
    pub fn sweep_history(&self, now: SystemTime) {
        if let Some(history) = &self.inner.history {
            history.sweep(now);
        }
    }

    /// Fans an already encoded (canonical) frame out to the subscribers of `channel`. The
    /// frame is not kept in history and carries no offset: pollers use this for status
    /// snapshots, which a new subscriber receives whole instead.
    #[inline]
    pub fn publish_frame(&self, channel: &str, frame: &Bytes) -> Delivery {
        let tag = Tag::plain(channel);
        self.fan_out(
            &tag,
            |d| d.transcode(frame),
            |o, f, s, t| self.inner.push_and_wake(o, f, s, t),
        )
    }

    /// Fans already encoded frames out to the subscribers of `channel`, in order, as one
    /// batch that a client keeping up takes whole (see `Outbox::push_in_batch`). For
    /// multi-frame snapshots (one frame per agent, per job), which a client that keeps up
    /// must never be closed for.
    ///
    /// Subscriber by subscriber: each gets every frame and then its wake-up, so that a
    /// resting connection, which its wake-up writes to at once, gives its queue's block
    /// back before the next one takes one (instead of every subscriber holding a block
    /// until the last frame is queued for the last of them).
    pub(crate) fn publish_frames(&self, channel: &str, frames: &[Bytes]) -> Delivery {
        if let [frame] = frames {
            return self.publish_frame(channel, frame);
        }
        let tag = Tag::plain(channel);
        let batch = self.inner.next_batch();
        let transcoded = |d: Dialect| frames.iter().map(|f| d.transcode(f)).collect::<Vec<_>>();
        let delivery = self.deliver(&tag, transcoded, |outbox, frames, since, tag, delivery| {
            let mut owed = false;
            for frame in frames {
                let pushed = outbox.push_in_batch(frame.clone(), since, batch, Some(tag));
                owed |= self.inner.owes_wake(outbox, pushed, tag.priority);
                delivery.count(pushed.0);
            }
            if owed {
                outbox.wake();
            }
        });
        // Each frame is a publish.
        let published = frames.len() as u64;
        self.inner.published.fetch_add(published, Ordering::Relaxed);
        delivery
    }

    /// Runs `publish` with one publish batch ([`Outbox::push_in_batch`]), then wakes each
    /// writer it owes a wake-up, once.
    fn in_batch(&self, publish: impl FnOnce(&mut Batch<'_>) -> Delivery) -> Delivery {
        thread_local! {
            static OWED: std::cell::RefCell<Vec<Arc<Outbox>>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let id = self.inner.next_batch();
        OWED.with(|owed| {
            let mut batch = Batch {
                state: &self.inner,
                id,
                owed: owed.borrow_mut(),
            };
            let delivery = publish(&mut batch);
            for outbox in batch.owed.drain(..) {
                outbox.wake();
            }
            delivery
        })
    }

    /// One channel lookup (`tag.channel`); `frame` is called (the event encoded) once for
    /// each dialect that has subscribers, and its frame compressed once if some of them
    /// take it compressed; `push` queues a clone of the frame of its encoding, with the
    /// publish stamp and the event's tag, for each subscriber.
    #[inline]
    fn fan_out(
        &self,
        tag: &Tag<'_>,
        frame: impl FnMut(Dialect) -> Bytes,
        mut push: impl FnMut(&Arc<Outbox>, Bytes, Option<Stamp>, &Tag<'_>) -> Push,
    ) -> Delivery {
        let delivery = self.deliver(tag, frame, |outbox, frame, since, tag, delivery| {
            delivery.count(push(outbox, frame.clone(), since, tag));
        });
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        delivery
    }

    /// What [`fan_out`](Self::fan_out) does, for a frame or a batch of frames (`F`):
    /// `push` gives its subscriber what `frame` made for its dialect, as its encoding
    /// takes it, and counts what it did in the delivery. The caller counts the publishes.
    #[inline]
    fn deliver<F: Fanned>(
        &self,
        tag: &Tag<'_>,
        mut frame: impl FnMut(Dialect) -> F,
        mut push: impl FnMut(&Arc<Outbox>, &F, Option<Stamp>, &Tag<'_>, &mut Delivery),
    ) -> Delivery {
        let inner = &*self.inner;
        let mut delivery = Delivery::default();
        let guard = crossbeam_epoch::pin();
        inner.topics.with_subscribers(tag.channel, |subscribers| {
            if subscribers.is_empty() {
                return;
            }
            let since = inner.timing.then(Stamp::now);
            // A dialect's compressed set comes right after its plain one: the frame of the
            // last dialect encoded serves both.
            let mut encoded: Option<(Dialect, F)> = None;
            for (encoding, set) in subscribers.encodings() {
                let plain = match &encoded {
                    Some((dialect, plain)) if *dialect == encoding.dialect => plain,
                    _ => {
                        &encoded
                            .insert((encoding.dialect, frame(encoding.dialect)))
                            .1
                    }
                };
                let frame = plain.encoded(inner, encoding);
                set.for_each(|slot| {
                    if let Some(outbox) = inner.slots.get(slot, &guard) {
                        push(&outbox, &frame, since, tag, &mut delivery);
                    }
                })
            }
        });
        drop(guard);
        inner
            .delivered
            .fetch_add(delivery.queued as u64, Ordering::Relaxed);
        delivery
    }

    /// Whether `channel` keeps its presence (`[[channels]] presence = true`).
    pub fn keeps_presence(&self, channel: &str) -> bool {
        self.inner.rules.presence(channel)
    }

    /// Tells `watcher` whenever a channel gets its first subscriber on this hub or loses
    /// its last, from now on (the changes of one channel in order). It is called where the
    /// subscription changes, under that channel's lock: make it quick (a queue push).
    /// Only one watcher may be set; false if one was.
    pub fn watch_occupancy(
        &self,
        watcher: impl Fn(&Channel, Occupancy) + Send + Sync + 'static,
    ) -> bool {
        self.inner.topics.watch_occupancy(Box::new(watcher))
    }

    /// The number of clients subscribed to `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.inner.topics.subscriber_count(channel)
    }

    /// Every channel with subscribers, with their counts, sorted by name.
    pub fn channels(&self) -> Vec<(Channel, usize)> {
        self.inner.topics.counts()
    }

    /// Lifetime counters.
    pub fn stats(&self) -> HubStats {
        HubStats {
            clients: self.inner.clients.load(Ordering::Relaxed),
            clients_by_dialect: self
                .inner
                .clients_by_dialect
                .each_ref()
                .map(|n| n.load(Ordering::Relaxed)),
            deflate_clients: self.inner.deflate_clients.load(Ordering::Relaxed),
            connected_total: self.inner.next_client_id.load(Ordering::Relaxed)
                - self.inner.first_client_id.load(Ordering::Relaxed),
            peak_clients: self.inner.peak_clients.load(Ordering::Relaxed),
            published: self.inner.published.load(Ordering::Relaxed),
            delivered: self.inner.delivered.load(Ordering::Relaxed),
            deferred_wakes: self.inner.deferred_wakes.load(Ordering::Relaxed),
        }
    }

    /// A broadcast frame of `encoding`'s dialect as a client taking `encoding` is sent it:
    /// compressed if the encoding says so and compressing pays, as a publish compresses it.
    pub(crate) fn encode_as(&self, encoding: Encoding, frame: &Bytes) -> Bytes {
        self.inner.encode(encoding, frame)
    }

    /// What compression did: broadcasts compressed once for the subscribers that
    /// negotiated permessage-deflate, and the bytes it saved.
    pub fn compression(&self) -> DeflateStats {
        self.inner.deflater.stats()
    }

    /// What every client's queue holds now, summed. A walk over the clients (no counter on
    /// the publish path): call it for stats, not per event.
    pub fn queued(&self) -> Queued {
        let mut queued = Queued::default();
        self.for_each_outbox(|outbox| {
            queued.frames += outbox.len() as u64;
            queued.bytes += outbox.queued_bytes() as u64;
        });
        queued
    }

    /// Leaves `command` for the connection of client `id` (the id its welcome gave it) and
    /// wakes it; the connection carries its commands out in order (see
    /// [`control`](super::control)). Returns whether the client is connected here.
    pub fn command(&self, id: u64, command: Command) -> bool {
        let guard = crossbeam_epoch::pin();
        let Some(outbox) = self.inner.slots.find(id, &guard) else {
            return false;
        };
        self.inner.mailbox.post(id, command);
        outbox.commanded();
        true
    }

    /// The commands left for client `id` since the last call, oldest first: for its
    /// connection, once its outbox says some wait
    /// ([`Outbox::poll_commands`](super::outbox::Outbox::poll_commands)).
    pub fn take_commands(&self, id: u64) -> Vec<Command> {
        self.inner.mailbox.take(id)
    }

    /// Asks every connected client's writer to flush its queue and close with `code`.
    pub fn close_all(&self, code: CloseCode) {
        self.for_each_outbox(|outbox| outbox.close(Closing::AfterFlush(code)));
    }

    /// Queues a keep-alive ping for every client, `ping(dialect)` in its dialect, and
    /// starts its pong deadline. Returns the number of clients pinged.
    pub fn ping_all(&self, ping: impl FnMut(Dialect) -> Bytes) -> usize {
        let frames = Dialect::ALL.map(ping);
        let mut pinged = 0;
        self.for_each_outbox(|outbox| {
            if outbox.ping(frames[outbox.dialect().index()].clone()) == Push::Queued {
                pinged += 1;
            }
        });
        pinged
    }

    /// Closes every client that has not answered the last ping since [`ping_all`]
    /// (close code 4001). Returns the number closed.
    ///
    /// [`ping_all`]: Self::ping_all
    pub fn expire_silent(&self) -> usize {
        let mut expired = 0;
        self.for_each_outbox(|outbox| expired += usize::from(outbox.expire_if_silent()));
        expired
    }

    /// Wakes every writer whose wake-up a `low` event put off (`low_priority_delay`), so
    /// that what its queue holds is written now. The server calls it every
    /// `low_priority_delay`; a program that embeds the hub with that option set must too,
    /// or `low` events wait for the next event of another priority. Returns the number of
    /// writers woken.
    pub fn wake_deferred(&self) -> usize {
        let inner = &*self.inner;
        // Only those listed now: an outbox listed again meanwhile waits for the next call.
        let mut woken = 0;
        for _ in 0..inner.deferred.len() {
            let Some(outbox) = inner.deferred.pop() else {
                break;
            };
            woken += usize::from(outbox.wake_if_deferred());
        }
        inner
            .deferred_wakes
            .fetch_add(woken as u64, Ordering::Relaxed);
        woken
    }

    /// For every client that was sent nothing since the last call ([`Outbox::take_idle`]):
    /// gives back its queue's memory ([`Outbox::shrink`]) and asks its connection to go
    /// dormant ([`Outbox::ask_to_rest`]). Call it about once a second (the server does): a
    /// client idle for that long then holds no block of its queue and, once dormant, no
    /// task.
    pub fn sweep_idle(&self) -> Swept {
        let mut swept = Swept::default();
        self.for_each_outbox(|outbox| {
            if outbox.take_idle() {
                swept.shrunk += usize::from(outbox.shrink());
                swept.asked_to_rest += usize::from(outbox.ask_to_rest());
            }
        });
        swept
    }

    fn for_each_outbox(&self, mut f: impl FnMut(&Outbox)) {
        let guard = crossbeam_epoch::pin();
        for slot in 0..self.inner.slots.high_water() {
            if let Some(outbox) = self.inner.slots.get(slot, &guard) {
                f(&outbox);
            }
        }
    }
}

/// What one [`Hub::sweep_idle`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Idle clients whose queue gave its memory back.
    pub shrunk: usize,
    /// Idle clients whose connection was asked to go dormant.
    pub asked_to_rest: usize,
}

/// What a fan-out gives each subscriber: one frame, or a batch's frames in order.
trait Fanned {
    /// This, as a client taking `encoding` is sent it (see [`HubState::encode`]).
    fn encoded(&self, state: &HubState, encoding: Encoding) -> Self;
}

impl Fanned for Bytes {
    #[inline(always)]
    fn encoded(&self, state: &HubState, encoding: Encoding) -> Self {
        state.encode(encoding, self)
    }
}

impl Fanned for Vec<Bytes> {
    fn encoded(&self, state: &HubState, encoding: Encoding) -> Self {
        self.iter()
            .map(|frame| state.encode(encoding, frame))
            .collect()
    }
}

/// One publish batch in progress: its id, and the writers it owes a wake-up.
struct Batch<'a> {
    state: &'a HubState,
    id: u64,
    owed: std::cell::RefMut<'a, Vec<Arc<Outbox>>>,
}

impl Batch<'_> {
    /// Queues a frame of this batch; the wake-up, if due, waits for the batch's end.
    #[inline(always)]
    fn push(
        &mut self,
        outbox: &Arc<Outbox>,
        frame: Bytes,
        since: Option<Stamp>,
        tag: &Tag<'_>,
    ) -> Push {
        let pushed = outbox.push_in_batch(frame, since, self.id, Some(tag));
        if self.state.owes_wake(outbox, pushed, tag.priority) {
            self.owed.push(Arc::clone(outbox));
        }
        pushed.0
    }
}

impl HubState {
    /// Queues an event and wakes the writer if the queue was empty (or its wake-up was
    /// put off, see [`HubState::owes_wake`]).
    #[inline(always)]
    fn push_and_wake(
        &self,
        outbox: &Arc<Outbox>,
        frame: Bytes,
        since: Option<Stamp>,
        tag: &Tag<'_>,
    ) -> Push {
        let pushed = outbox.push_event(frame, since, Some(tag));
        if self.owes_wake(outbox, pushed, tag.priority) {
            outbox.wake();
        }
        pushed.0
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("stats", &self.stats()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::client::MAX_ECHOED_NAME;
    use crate::frame;

    const NORMAL: (Option<Priority>, Option<&ConflateKey>) = (None, None);

    fn hub() -> Hub {
        Hub::new(&Config::default())
    }

    #[test]
    fn a_command_waits_for_its_client_alone_and_leaves_with_it() {
        use crate::engine::control::{Command, Farewell};
        let hub = hub();
        let (a, b) = (hub.connect().unwrap(), hub.connect().unwrap());
        let bye = Command::Disconnect(Farewell::default());
        assert!(hub.command(a.id(), bye.clone()));
        assert!(a.outbox().has_commands());
        assert!(!b.outbox().has_commands());
        assert!(!hub.command(b.id() + 1, bye.clone()), "no such client");
        assert_eq!(hub.take_commands(b.id()), []);
        assert_eq!(hub.take_commands(a.id()), std::slice::from_ref(&bye));
        assert_eq!(hub.take_commands(a.id()), []);

        let gone = b.id();
        assert!(hub.command(gone, bye.clone()));
        drop(b);
        assert!(!hub.command(gone, bye), "a client that left is not found");
        assert_eq!(hub.take_commands(gone), [], "its commands left with it");
    }

    #[test]
    fn a_watcher_hears_each_channels_first_subscriber_and_last_leave_once() {
        let hub = hub();
        let heard = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let into = heard.clone();
        assert!(hub.watch_occupancy(move |c, o| into.lock().push((c.to_string(), o))));
        assert!(!hub.watch_occupancy(|_, _| {}), "one watcher");
        let (mut a, mut b) = (hub.connect().unwrap(), hub.connect().unwrap());
        a.subscribe(["room", "solo"]);
        b.subscribe(["room"]);
        a.unsubscribe(["room"]);
        drop(a);
        use Occupancy::{Occupied, Vacated};
        let expected = [("room", Occupied), ("solo", Occupied), ("solo", Vacated)];
        let expected: Vec<_> = expected.map(|(c, o)| (c.to_owned(), o)).into();
        assert_eq!(*heard.lock(), expected);
        drop(b);
        assert_eq!(heard.lock().last(), Some(&("room".to_owned(), Vacated)));
    }

    fn drain(client: &Client) -> Vec<Bytes> {
        let mut out = Vec::new();
        client.outbox().drain_into(&mut out, usize::MAX);
        out
    }

    /// A waker that counts its wake-ups.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_low_event_leaves_the_writer_asleep_until_another_event_or_the_ticker() {
        let hub = Hub::new(&Config {
            low_priority_delay: std::time::Duration::from_millis(50),
            ..Config::default()
        });
        let mut client = hub.connect().unwrap();
        client.subscribe(["metrics", "orders"]);
        let wakes = Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(Arc::clone(&wakes));
        let woken = || wakes.0.load(Ordering::SeqCst);
        let sleep = || {
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(client.outbox().poll_ready(&mut cx).is_pending());
        };
        let low = |v: u32| {
            Event::new("metrics", &v)
                .unwrap()
                .with_priority(Priority::Low)
        };
        let now = SystemTime::now();

        sleep();
        hub.publish_at(&low(1), now);
        hub.publish_batch(&[low(2), low(3)], now);
        assert_eq!(woken(), 0, "low events wait");
        hub.publish_at(&Event::new("orders", &1).unwrap(), now);
        assert_eq!(woken(), 1, "a normal event wakes the writer");
        assert_eq!(drain(&client).len(), 4);
        assert_eq!(hub.wake_deferred(), 0, "nothing was owed any more");

        sleep();
        hub.publish_batch(&[low(4), Event::new("orders", &2).unwrap()], now);
        assert_eq!(woken(), 2, "a batch with a normal event wakes the writer");
        assert_eq!(drain(&client).len(), 2);
        hub.wake_deferred();

        sleep();
        hub.publish_at(&low(5), now);
        assert_eq!(woken(), 2);
        assert_eq!(hub.wake_deferred(), 1);
        assert_eq!(woken(), 3, "the ticker wakes it");
        assert_eq!(hub.stats().deferred_wakes, 1);
        assert_eq!(drain(&client).len(), 1);
    }

    /// A writer that, like a resting connection's, writes what it is woken for at once:
    /// it drains its outbox, and notes what it found and what every outbox held.
    struct WritesAtOnce {
        mine: Arc<Outbox>,
        all: Vec<Arc<Outbox>>,
        /// Per wake-up: frames it drained, frames queued in all outboxes before, and
        /// whether its queue then gave a block back.
        seen: std::sync::Mutex<Vec<(usize, usize, bool)>>,
    }

    impl std::task::Wake for WritesAtOnce {
        fn wake(self: Arc<Self>) {
            let queued = self.all.iter().map(|o| o.len()).sum();
            let mut out = Vec::new();
            self.mine.drain_into(&mut out, usize::MAX);
            let shrunk = self.mine.shrink();
            self.seen.lock().unwrap().push((out.len(), queued, shrunk));
        }
    }

    #[test]
    fn a_multi_frame_publish_wakes_each_subscriber_once_with_all_its_frames() {
        let hub = hub();
        let mut clients: Vec<Client> = (0..4).map(|_| hub.connect().unwrap()).collect();
        for client in &mut clients {
            client.subscribe(["status"]);
        }
        let all: Vec<Arc<Outbox>> = clients.iter().map(|c| Arc::clone(c.outbox())).collect();
        let writers: Vec<Arc<WritesAtOnce>> = all
            .iter()
            .map(|mine| {
                let writer = Arc::new(WritesAtOnce {
                    mine: Arc::clone(mine),
                    all: all.clone(),
                    seen: Default::default(),
                });
                let waker = std::task::Waker::from(Arc::clone(&writer));
                let mut cx = std::task::Context::from_waker(&waker);
                assert!(mine.poll_ready(&mut cx).is_pending());
                writer
            })
            .collect();
        let frames = [b"1", b"2", b"3"].map(|f| Bytes::from_static(f));
        let published = hub.stats().published;

        let delivery = hub.publish_frames("status", &frames);

        assert_eq!(delivery.queued, 12);
        assert_eq!(
            hub.stats().published - published,
            3,
            "each frame is a publish"
        );
        for writer in &writers {
            // Subscriber by subscriber: when one is woken, it holds the whole batch and no
            // other holds anything, so writers that write at once never hold a block each.
            assert_eq!(*writer.seen.lock().unwrap(), [(3, 3, true)]);
        }
    }

    #[test]
    fn a_broadcast_is_encoded_once_per_dialect_with_subscribers() {
        let hub = hub();
        let mut clients: Vec<Client> = (0..3).map(|_| hub.connect().unwrap()).collect();
        for client in &mut clients {
            client.subscribe(["orders"]);
        }
        let mut encoded = Vec::new();
        let mut encode = |dialect| {
            encoded.push(dialect);
            Bytes::from_static(b"x")
        };
        let delivery = hub.fan_out(&Tag::plain("orders"), &mut encode, |o, f, s, t| {
            hub.inner.push_and_wake(o, f, s, t)
        });
        assert_eq!(delivery.queued, 3);
        hub.fan_out(&Tag::plain("nobody-listens"), &mut encode, |o, f, s, t| {
            hub.inner.push_and_wake(o, f, s, t)
        });
        assert_eq!(
            encoded,
            [Dialect::SigmaVault],
            "once, and not for an empty channel"
        );
        for client in &clients {
            assert_eq!(drain(client), [Bytes::from_static(b"x")]);
        }
    }

    #[test]
    fn a_broadcast_is_compressed_once_for_every_subscriber_that_takes_it_compressed() {
        let hub = hub();
        let sv = Dialect::SigmaVault;
        let deflate = Encoding::deflated(sv);
        let mut plain = hub.connect_as(sv).unwrap();
        let mut squeezed: Vec<Client> =
            (0..3).map(|_| hub.connect_with(deflate).unwrap()).collect();
        plain.subscribe(["orders"]);
        for client in &mut squeezed {
            client.subscribe(["orders"]);
        }
        let event = Event::new("orders", &serde_json::json!({"text": "abc".repeat(100)})).unwrap();
        let mut encoded = 0;
        let frame = |dialect: Dialect| {
            encoded += 1;
            dialect.event(&event, SystemTime::UNIX_EPOCH, None)
        };
        assert_eq!(
            hub.fan_out(&Tag::plain("orders"), frame, |o, f, s, t| hub
                .inner
                .push_and_wake(o, f, s, t))
                .queued,
            4
        );
        assert_eq!(encoded, 1, "encoded once for both encodings");
        let stats = hub.compression();
        assert_eq!((stats.messages, stats.compressed), (1, 1));
        assert!(stats.bytes_out * 4 < stats.bytes_in, "{stats:?}");
        let sent = drain(&plain).remove(0);
        let shared = drain(&squeezed[0]).remove(0);
        assert_eq!(shared[0], 0xc1, "FIN, RSV1, text");
        assert_eq!(sent[0], 0x81);
        for client in &squeezed[1..] {
            assert_eq!(
                drain(client)[0].as_ptr(),
                shared.as_ptr(),
                "one frame, shared"
            );
        }
        let inflated = crate::compression::inflate(&frame::payload_of(&shared), 1 << 16);
        assert_eq!(inflated.unwrap(), frame::payload_of(&sent));
        assert_eq!(hub.stats().deflate_clients, 3);
        drop(squeezed);
        assert_eq!(hub.stats().deflate_clients, 0);
    }

    #[test]
    fn each_window_gets_one_frame_of_its_own_that_its_clients_can_inflate() {
        use crate::compression::negotiate::Window;
        use flate2::{Decompress, FlushDecompress};
        let hub = hub();
        let sv = Dialect::SigmaVault;
        let with = |window| Encoding {
            dialect: sv,
            deflate: Some(window),
        };
        let mut clients: Vec<Client> =
            [Window::Bits15, Window::Bits15, Window::Bits9, Window::Bits9]
                .into_iter()
                .map(|w| hub.connect_with(with(w)).unwrap())
                .collect();
        for client in &mut clients {
            client.subscribe(["orders"]);
        }
        // Text that repeats only 1,500 bytes back: out of a 9-bit window's reach.
        let mut seed = 7u32;
        let mut noise = |n: usize| -> String {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    char::from(b'a' + (seed >> 16) as u8 % 26)
                })
                .collect()
        };
        let chunk = noise(700);
        let text = format!("{chunk}{}{chunk}", noise(800));
        let event = Event::new("orders", &serde_json::json!({ "text": text })).unwrap();
        let plain = sv.event(&event, SystemTime::UNIX_EPOCH, None);
        let frame = |dialect: Dialect| dialect.event(&event, SystemTime::UNIX_EPOCH, None);
        let push = |o: &Arc<Outbox>, f, s, t: &Tag<'_>| hub.inner.push_and_wake(o, f, s, t);
        assert_eq!(hub.fan_out(&Tag::plain("orders"), frame, push).queued, 4);
        assert_eq!(hub.compression().compressed, 2, "once per window");
        let frames: Vec<Bytes> = clients.iter().map(|c| drain(c).remove(0)).collect();
        assert_eq!(
            frames[0].as_ptr(),
            frames[1].as_ptr(),
            "shared within a window"
        );
        assert_eq!(
            frames[2].as_ptr(),
            frames[3].as_ptr(),
            "shared within a window"
        );
        let inflate = |frame: &Bytes, bits: u8| {
            let mut input = frame::payload_of(frame).to_vec();
            input.extend_from_slice(&[0, 0, 0xff, 0xff]);
            let mut out = Vec::with_capacity(1 << 16);
            Decompress::new_with_window_bits(false, bits)
                .decompress_vec(&input, &mut out, FlushDecompress::Sync)
                .ok()
                .map(|_| out)
        };
        let expected = frame::payload_of(&plain).to_vec();
        assert_eq!(inflate(&frames[0], 15), Some(expected.clone()));
        assert_eq!(inflate(&frames[2], 9), Some(expected));
        // Only the full window reaches the repeat (tests/compression.rs checks the small
        // window's frame against a streaming C zlib inflater, which enforces the window).
        assert!(
            frames[0].len() + 300 < frames[2].len(),
            "{} and {} bytes",
            frames[0].len(),
            frames[2].len()
        );
    }

    #[test]
    fn a_sequenced_event_without_history_is_encoded_only_for_subscribers() {
        let mut config = Config::default();
        config.history.size = 0;
        let hub = Hub::new(&config);
        let channel = Channel::new("orders").unwrap();
        let now = SystemTime::now();
        let unwanted = |_| -> Bytes { panic!("encoded for nobody") };
        assert_eq!(
            hub.publish_sequenced(&channel, NORMAL, 5, 0, now, unwanted)
                .unwrap()
                .queued,
            0
        );
        let mut client = hub.connect().unwrap();
        client.subscribe(["orders"]);
        let d = hub.publish_sequenced(&channel, NORMAL, 6, 5, now, |o| Bytes::from(o.to_string()));
        assert_eq!(d.unwrap().queued, 1);
        assert_eq!(drain(&client), [Bytes::from_static(b"6")]);
    }

    #[test]
    fn publish_reaches_only_subscribers() {
        let hub = hub();
        let mut a = hub.connect().unwrap();
        let mut b = hub.connect().unwrap();
        a.subscribe(["orders"]);
        b.subscribe(["billing"]);
        let d = hub.publish_frame("orders", &Bytes::from_static(b"x"));
        assert_eq!(d.queued, 1);
        assert_eq!(drain(&a).len(), 1);
        assert!(drain(&b).is_empty());
    }

    #[test]
    fn subscribers_share_the_topic_s_name() {
        let hub = hub();
        let mut a = hub.connect().unwrap();
        let mut b = hub.connect().unwrap();
        a.subscribe(["orders", "trades"]);
        b.subscribe(["trades"]);
        b.subscribe(["orders"]);
        let name = |c: &Client, i: usize| c.subscriptions()[i].as_str().as_ptr();
        assert_eq!(name(&a, 0), name(&b, 1), "one allocation per channel");
        assert_eq!(name(&a, 1), name(&b, 0));
        assert_eq!(b.subscriptions().len(), 2);
    }

    #[test]
    fn unsubscribe_and_drop_stop_delivery() {
        let hub = hub();
        let mut a = hub.connect().unwrap();
        a.subscribe(["orders", "billing"]);
        a.unsubscribe(["orders"]);
        assert_eq!(
            hub.publish_frame("orders", &Bytes::from_static(b"x"))
                .queued,
            0
        );
        assert_eq!(
            hub.publish_frame("billing", &Bytes::from_static(b"x"))
                .queued,
            1
        );
        drop(a);
        assert_eq!(
            hub.publish_frame("billing", &Bytes::from_static(b"x"))
                .queued,
            0
        );
        assert!(hub.channels().is_empty());
        assert_eq!(hub.stats().clients, 0);
    }

    #[test]
    fn invalid_and_excess_names_are_rejected_the_rest_applied() {
        let config = Config {
            max_subscriptions_per_connection: 2,
            ..Config::default()
        };
        let hub = Hub::new(&config);
        let mut a = hub.connect().unwrap();
        let change = a.subscribe(["ok1", "bad name", "ok1", "ok2", "ok3"]);
        assert_eq!(change.changed.len(), 2);
        let codes: Vec<_> = change.rejected.iter().map(|r| r.code).collect();
        assert_eq!(codes, ["invalid_channel", "subscription_limit"]);
        assert_eq!(a.subscriptions().len(), 2);
    }

    #[test]
    fn refused_names_are_echoed_no_longer_than_a_valid_one() {
        let hub = hub();
        let mut a = hub.connect().unwrap();
        let long = "é".repeat(40_000);
        let change = a.subscribe([long.as_str(), "ok", &"a".repeat(200)]);
        assert_eq!(change.rejected.len(), 2);
        for r in &change.rejected {
            assert!(
                r.channel.len() <= MAX_ECHOED_NAME + '…'.len_utf8(),
                "{}",
                r.channel.len()
            );
            assert!(r.channel.ends_with('…'));
        }
        assert!(change.rejected[0].channel.starts_with("éé"));
        let unsub = a.unsubscribe([long.as_str()]);
        assert!(unsub.rejected[0].channel.len() <= MAX_ECHOED_NAME + 3);
    }

    #[test]
    fn a_batch_is_queued_in_order_and_counted() {
        let hub = hub();
        let mut a = hub.connect().unwrap();
        let mut b = hub.connect().unwrap();
        a.subscribe(["x", "y"]);
        b.subscribe(["y"]);
        let events: Vec<_> = ["x", "y", "z", "x"]
            .iter()
            .map(|c| Event::new(c, &serde_json::json!({"c": c})).unwrap())
            .collect();
        let d = hub.publish_batch(&events, SystemTime::UNIX_EPOCH);
        assert_eq!(d.queued, 4);
        assert_eq!(drain(&a).len(), 3);
        assert_eq!(drain(&b).len(), 1);
        assert_eq!(hub.stats().published, 4);
    }

    #[test]
    fn the_idle_sweep_gives_back_only_empty_queues_and_asks_each_idle_client_once() {
        let hub = hub();
        let mut idle = hub.connect().unwrap();
        let mut behind = hub.connect().unwrap();
        let never = hub.connect().unwrap();
        idle.subscribe(["x"]);
        behind.subscribe(["x"]);
        hub.publish_frame("x", &Bytes::from_static(b"1"));
        assert_eq!(drain(&idle).len(), 1);
        let swept = |shrunk, asked_to_rest| Swept {
            shrunk,
            asked_to_rest,
        };
        // `idle` was drained since the last sweep: it keeps its queue and is not asked to
        // go dormant. `behind` still holds its frame, `never` was never sent one: both are idle.
        assert_eq!(hub.sweep_idle(), swept(0, 2));
        // Asked already: not asked again until the connection has heard.
        assert_eq!(hub.sweep_idle(), swept(1, 1));
        assert_eq!(hub.sweep_idle(), swept(0, 0));
        assert!([&idle, &behind, &never]
            .iter()
            .all(|c| c.outbox().take_rest_ask()));
        // A dormant connection is not asked.
        never.outbox().set_dormant(true);
        hub.publish_frame("x", &Bytes::from_static(b"2"));
        assert_eq!(drain(&idle), [Bytes::from_static(b"2")]);
        assert_eq!(
            drain(&behind),
            [Bytes::from_static(b"1"), Bytes::from_static(b"2")]
        );
        assert!(never.outbox().is_empty());
        assert_eq!(hub.sweep_idle(), swept(0, 0));
        assert_eq!(hub.sweep_idle(), swept(2, 2));
        assert!(!never.outbox().take_rest_ask());
    }

    #[test]
    fn ping_sweep_expires_only_silent_clients() {
        let hub = hub();
        let quiet = hub.connect().unwrap();
        let chatty = hub.connect().unwrap();
        assert_eq!(hub.ping_all(|_| Bytes::from_static(b"ping")), 2);
        chatty.outbox().mark_alive();
        assert_eq!(hub.expire_silent(), 1);
        assert!(quiet.outbox().is_closing());
        assert!(!chatty.outbox().is_closing());
    }

    #[test]
    fn a_full_channel_refuses_more_subscribers() {
        let hub = Hub::new(&Config {
            max_subscribers_per_channel: 2,
            ..Config::default()
        });
        let mut clients: Vec<_> = (0..3).map(|_| hub.connect().unwrap()).collect();
        assert!(clients[0].subscribe(["x"]).rejected.is_empty());
        assert!(clients[1].subscribe(["x", "y"]).rejected.is_empty());
        let third = clients[2].subscribe(["x", "y"]);
        assert_eq!(third.rejected.len(), 1);
        assert_eq!(third.rejected[0].code, "channel_full");
        assert_eq!(third.changed.len(), 1);
        assert_eq!(hub.subscriber_count("x"), 2);

        // Filled between plan and apply: the apply refuses it.
        let plan = clients[2].plan_subscribe(["z"]);
        clients[0].subscribe(["z"]);
        clients[1].subscribe(["z"]);
        let late = clients[2].apply_subscribe(&plan);
        assert_eq!(late.len(), 1);
        assert_eq!(hub.subscriber_count("z"), 2);
        assert!(!clients[2].subscriptions().iter().any(|c| c.as_str() == "z"));

        drop(clients.remove(0));
        assert!(clients[1].subscribe(["x"]).rejected.is_empty());
    }

    #[test]
    fn one_frame_is_shared_by_every_subscriber() {
        let hub = hub();
        let mut clients: Vec<_> = (0..10).map(|_| hub.connect().unwrap()).collect();
        for c in &mut clients {
            c.subscribe(["x"]);
        }
        let frame = Bytes::from(vec![1u8; 100]);
        hub.publish_frame("x", &frame);
        for c in &clients {
            let got = drain(c);
            assert_eq!(got[0].as_ptr(), frame.as_ptr(), "a copy was made");
        }
    }
}
