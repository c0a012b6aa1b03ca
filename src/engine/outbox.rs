//! A client's outbox: the bounded queue of ready-to-write frames between the hub and the
//! client's writer task.
//!
//! Publishers push refcounted frames from any thread without locking; the writer task drains
//! them in batches. The publisher wakes the writer only when the queue goes from empty to
//! non-empty, so a burst of events costs one wake-up.
//!
//! # Ordering
//! Frames pushed by one thread come out in the order they were pushed. Replies (acks, pongs,
//! errors) go through the same queue as events, so a client sees a `subscribe_response`
//! before any event that the subscription let through.
//!
//! # Bounds and slow consumers
//! The queue takes a frame while it holds fewer than `capacity` frames *and* fewer than
//! `byte_capacity` bytes, so it never holds more than `capacity` frames nor more than
//! `byte_capacity` bytes plus one frame, with one exception that keeps a large publish or
//! snapshot from closing a client that keeps up: frames taken *whole* (a publish batch,
//! `Outbox::push_in_batch`, or a snapshot, [`Outbox::push_whole`], that finds the client
//! keeping up: its queue within the bounds, not counting frames taken whole) are admitted
//! past both bounds and widen them by their own size until the writer has drained as many
//! frames and bytes (the *allowance*). They are broadcast frames, one allocation shared by
//! every client. The allowance is capped at [`WHOLE_FACTOR`] times the bounds (one batch or
//! snapshot is always taken when nothing else taken whole is pending), so a client that
//! never reads holds at most that many queue entries. A push beyond the bounds follows the
//! [`SlowConsumerPolicy`]: `Close` marks the outbox for an immediate close with
//! [`CloseCode::SLOW_CONSUMER`] (the writer discards the queue); `Drop` discards the new frame
//! and counts it, and the writer tells the client how many it lost. `Degrade` leaves the
//! fast path at half the bounds and holds events back by priority and conflation key, in a
//! book the writer turns into `gap` markers once the client has caught up (see
//! [`super::degrade`]); only a `critical` event or a reply past twice the bounds closes the
//! client. Either way the publisher never waits, and memory per client stays bounded.
//!
//! Both counts live in one word, so one atomic add admits a frame against both
//! bounds.
//!
//! # Memory
//! The queue (`super::queue`) allocates its blocks on first use and frees them as they
//! drain, and once a second the hub gives back the last one of every queue that has been
//! empty since the second before ([`Outbox::take_idle`],
//! [`Hub::sweep_idle`](super::hub::Hub::sweep_idle)): a client idle for a second or two
//! holds no more than this struct. Its connection then rests ([`Outbox::ask_to_rest`]),
//! and gives the block back at once after each write while it rests.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_utils::Backoff;
use serde::{Deserialize, Serialize};

use once_cell::race::OnceBox;
use parking_lot::Mutex;

use super::degrade::{Book, Tag};
use super::latency::Stamp;
use super::queue::{Generation, Queue};
use crate::dialect::{Dialect, Encoding};
use crate::event::Priority;
use crate::protocol::close::CloseCode;

/// What to do with a client whose queue is full.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    /// Close the connection with close code 4000 (`slow consumer`); the client reconnects and
    /// resynchronizes. No event is ever silently missing from a live connection.
    #[default]
    Close,
    /// Drop frames that do not fit and tell the client how many it lost with an `error`
    /// message (`code: "frames_dropped"`, `dropped: N`); the connection stays open.
    Drop,
    /// Degrade step by step (see [`super::degrade`]): past half the bounds hold back `low`
    /// events and events with a conflation key (keeping the newest of each key), past
    /// three quarters `normal` ones too, at the bounds `high` ones; send a `gap` marker per
    /// channel (and the parked events and the current snapshot) once the client has caught
    /// up. `critical` events and replies are queued up to twice the bounds; a client that
    /// cannot take them is closed with 4000.
    Degrade,
}

/// Frames and bytes queued, packed into one `u64`: bytes in the low 40 bits, frames in the
/// next 23, and in the top bit the queue's current [`Generation`]. [`crate::Config::validate`]
/// keeps both bounds well inside their fields (frames counted stay under 7 × 2^20 of 2^23:
/// the bound, four times it taken whole, one more snapshot, refused pushes in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Load(u64);

impl Load {
    const FRAME_SHIFT: u32 = 40;
    const BYTES: u64 = (1 << Self::FRAME_SHIFT) - 1;
    const GENERATION: u64 = 1 << 63;

    /// The load of `frames` frames of `bytes` bytes in all.
    #[inline]
    fn of(frames: usize, bytes: usize) -> Self {
        Self(((frames as u64) << Self::FRAME_SHIFT) | bytes as u64)
    }

    #[inline]
    fn frames(self) -> usize {
        ((self.0 & !Self::GENERATION) >> Self::FRAME_SHIFT) as usize
    }

    /// Whether nothing is counted (whatever the generation).
    #[inline]
    fn is_empty(self) -> bool {
        self.0 & !Self::GENERATION == 0
    }

    /// The generation of the queue that frames counted here go to.
    #[inline]
    fn generation(self) -> Generation {
        (self.0 >> 63) as Generation
    }

    /// The same count in the other generation.
    #[inline]
    fn next_generation(self) -> Self {
        Self(self.0 ^ Self::GENERATION)
    }

    #[inline]
    fn bytes(self) -> usize {
        (self.0 & Self::BYTES) as usize
    }
}

/// Most frames an outbox can count (its `Load` field), with room to spare.
pub const MAX_CAPACITY: usize = 1 << 20;

/// Most bytes an outbox can count (its `Load` field), with room to spare.
pub const MAX_BYTE_CAPACITY: usize = 1 << 36;

/// Frames and bytes taken whole and not drained yet may reach this many times the bounds
/// (a single batch or snapshot may be larger, when nothing else taken whole is pending).
pub const WHOLE_FACTOR: usize = 4;

const OPEN: u8 = 0;
/// Degrading: some events wait in the book; every push takes the book's lock.
const LOSSY: u8 = 1;
const CLOSE_AFTER_FLUSH: u8 = 2;
const CLOSE_NOW: u8 = 3;

/// The drain lock is held ([`Outbox::drain_into`], [`Outbox::shrink`]).
const DRAIN_LOCKED: u8 = 1;
/// A drain took frames since the last [`Outbox::take_idle`].
const DRAINED_LATELY: u8 = 2;

/// The writer is owed a wake-up that was put off (`low_priority_delay`).
const WAKE_DEFERRED: u8 = 1;
/// The outbox is on its hub's list of outboxes with a deferred wake-up.
const WAKE_LISTED: u8 = 2;
/// The hub's sweep found the client idle and asked its connection to go dormant
/// ([`Outbox::ask_to_rest`]).
const REST_ASKED: u8 = 4;
/// The connection is dormant: it holds no task, and its writer's waker wakes it.
const DORMANT: u8 = 8;
/// Commands wait for the connection in its hub's mailbox ([`Outbox::commanded`]).
const COMMANDED: u8 = 16;

/// Under the `degrade` policy, the queue's fill (frames or bytes, whichever is fuller, in
/// quarters of the bounds) from which events are held back: `low` ones and those with a
/// conflation key from half, `normal` ones from three quarters, `high` ones at the
/// bounds; `critical` ones and replies are refused (the client closed) from twice the
/// bounds.
const HOLD_LOW: usize = 2;
const HOLD_NORMAL: usize = 3;
const HOLD_HIGH: usize = 4;
const HOLD_ALL: usize = 8;

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued for the writer.
    Queued,
    /// The queue was full and the client is being closed as a slow consumer.
    Overflowed,
    /// The queue was full and the frame was dropped (the `drop` policy).
    Dropped,
    /// The outbox is closing; the frame was discarded.
    Closed,
    /// The client is behind: the event was held back (`degrade` policy) and is counted for
    /// the client's next `gap` marker, or parked as the newest of its conflation key.
    Degraded,
}

/// How the writer should end the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Write what is queued, then the close frame.
    AfterFlush(CloseCode),
    /// Discard what is queued and write the close frame at once.
    Now(CloseCode),
}

/// A client's bounded frame queue. See the [module docs](self).
pub struct Outbox {
    queue: Queue<Bytes>,
    /// The frames and bytes in the queue, and the queue's generation ([`Load`]).
    load: AtomicU64,
    /// [`DRAIN_LOCKED`]: held by the one drain (or [`shrink`](Self::shrink)) running, so
    /// that a second concurrent one returns at once and a generation is never freed under
    /// a pop. [`DRAINED_LATELY`]: a drain took frames since the last
    /// [`take_idle`](Self::take_idle). One byte for both: the outbox and its
    /// `Arc` fill a 160-byte allocation to the byte.
    drain: AtomicU8,
    capacity: usize,
    byte_capacity: usize,
    policy: SlowConsumerPolicy,
    /// 1 under the `degrade` policy, whose fast path stops at half the bounds; else 0.
    soft: u8,
    /// What a degrading client missed and is owed ([`super::degrade`]); `None` while it
    /// keeps up. The lock is allocated the first time the client falls behind: a pointer
    /// is all a client that keeps up pays.
    book: OnceBox<Mutex<Option<Box<Book>>>>,
    /// The form its frames are in: dialect, compressed or not.
    encoding: Encoding,
    waker: AtomicWaker,
    state: AtomicU8,
    close_code: OnceLock<CloseCode>,
    dropped: AtomicU64,
    awaiting_pong: AtomicBool,
    /// Whether the writer's wake-up is put off for `low` frames ([`WAKE_DEFERRED`]) and
    /// whether the outbox is on its hub's list of such ([`WAKE_LISTED`]), see
    /// [`defer_wake`](Self::defer_wake); whether the connection was asked to go dormant
    /// ([`REST_ASKED`]) and whether it is ([`DORMANT`]), see
    /// [`ask_to_rest`](Self::ask_to_rest).
    wake: AtomicU8,
    /// The publish stamp of the event that found the queue empty (0: none); see
    /// [`super::latency`].
    since: AtomicU64,
    /// The publish batch being taken whole (0: none); see [`Outbox::push_in_batch`].
    batch: AtomicU64,
    /// The frames and bytes taken whole and not drained yet ([`Load`]): the bounds are
    /// widened by them.
    allowance: AtomicU64,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` frames, with no bound on their bytes
    /// beyond [`MAX_BYTE_CAPACITY`]; see [`bounded`](Self::bounded).
    pub fn new(capacity: usize, policy: SlowConsumerPolicy) -> Self {
        Self::bounded(capacity, MAX_BYTE_CAPACITY, policy)
    }

    /// An empty outbox that takes frames while it holds fewer than `capacity` frames and
    /// fewer than `byte_capacity` bytes (each clamped to 1 ..= [`MAX_CAPACITY`] and
    /// [`MAX_BYTE_CAPACITY`]).
    pub fn bounded(capacity: usize, byte_capacity: usize, policy: SlowConsumerPolicy) -> Self {
        Self {
            queue: Queue::new(),
            load: AtomicU64::new(0),
            drain: AtomicU8::new(0),
            capacity: capacity.clamp(1, MAX_CAPACITY),
            byte_capacity: byte_capacity.clamp(1, MAX_BYTE_CAPACITY),
            policy,
            soft: u8::from(policy == SlowConsumerPolicy::Degrade),
            book: OnceBox::new(),
            encoding: Encoding::plain(Dialect::SigmaVault),
            waker: AtomicWaker::new(),
            state: AtomicU8::new(OPEN),
            close_code: OnceLock::new(),
            dropped: AtomicU64::new(0),
            awaiting_pong: AtomicBool::new(false),
            wake: AtomicU8::new(0),
            since: AtomicU64::new(0),
            batch: AtomicU64::new(0),
            allowance: AtomicU64::new(0),
        }
    }

    /// Queues `frame`, applying the slow-consumer policy when the queue is full, and wakes
    /// the writer if the queue was empty.
    #[inline]
    pub fn push(&self, frame: Bytes) -> Push {
        let (push, wake) = self.push_deferred(frame);
        if wake || self.take_deferred_wake() {
            self.wake();
        }
        push
    }

    /// Queues `frame` like [`push`](Self::push) but leaves the wake-up to the caller: when
    /// the second value is true the queue was empty, and the caller must call
    /// [`wake`](Self::wake) once it has queued the rest of its batch.
    #[inline]
    pub fn push_deferred(&self, frame: Bytes) -> (Push, bool) {
        self.enqueue(frame, None, 0, None)
    }

    /// Queues an event published at `since`, like [`push_deferred`](Self::push_deferred).
    /// If it finds the queue empty, the outbox keeps `since` for the writer's latency
    /// figure ([`take_since`](Self::take_since)).
    #[inline]
    pub(crate) fn push_event(
        &self,
        frame: Bytes,
        since: Option<Stamp>,
        tag: Option<&Tag<'_>>,
    ) -> (Push, bool) {
        self.enqueue(frame, since, 0, tag)
    }

    /// Queues an event of publish batch `batch` (a non-zero id unique to the batch, whose
    /// frames one thread pushes in order), like [`push_event`](Self::push_event). If the
    /// batch's first frame finds the client keeping up, the batch is taken whole (see the
    /// [module docs](self)): a client that keeps up receives a publish whole, however many
    /// or large its events.
    #[inline]
    pub(crate) fn push_in_batch(
        &self,
        frame: Bytes,
        since: Option<Stamp>,
        batch: u64,
        tag: Option<&Tag<'_>>,
    ) -> (Push, bool) {
        self.enqueue(frame, since, batch, tag)
    }

    // Always inlined: it is the fan-out's per-subscriber step, and a call here costs about
    // 4 % of the instructions per delivered frame (callgrind, perf/README.md).
    #[inline(always)]
    fn enqueue(
        &self,
        frame: Bytes,
        since: Option<Stamp>,
        batch: u64,
        tag: Option<&Tag<'_>>,
    ) -> (Push, bool) {
        match self.state.load(Ordering::Acquire) {
            OPEN => {}
            LOSSY => return self.degrade(frame, since, tag),
            _ => return (Push::Closed, false),
        }
        // A frame longer than the byte field could hold is counted as the whole field:
        // it is refused unless the queue is empty, and never corrupts the frame count.
        let add = Load::of(1, frame.len().min(MAX_BYTE_CAPACITY));
        let before = Load(self.load.fetch_add(add.0, Ordering::AcqRel));
        let allowance = Load(self.allowance.load(Ordering::Relaxed));
        let whole = batch != 0 && {
            let current = self.batch.load(Ordering::Relaxed) == batch;
            let whole = (current || self.keeps_up(before, allowance))
                && self.allowance_fits(allowance, add);
            if whole && !current {
                // Read back by this batch's next pushes, on this same thread.
                self.batch.store(batch, Ordering::Relaxed);
            }
            whole
        };
        if whole {
            self.allowance.fetch_add(add.0, Ordering::Relaxed);
        } else if self.is_over(before, allowance) {
            self.load.fetch_sub(add.0, Ordering::AcqRel);
            if self.policy == SlowConsumerPolicy::Degrade {
                return self.degrade(frame, since, tag);
            }
            return (self.refuse(1), false);
        }
        (Push::Queued, self.place(frame, since, before))
    }

    /// Puts a frame already counted in `load` (which held `before`) in the queue, keeping
    /// `since` if it found the queue empty; returns whether it did.
    #[inline(always)]
    fn place(&self, frame: Bytes, since: Option<Stamp>, before: Load) -> bool {
        let was_empty = before.frames() == 0;
        if let (true, Some(since)) = (was_empty, since) {
            // Before the frame is visible: a writer that pops it also sees the stamp.
            self.since.store(since.to_raw(), Ordering::Relaxed);
        }
        self.queue.push(before.generation(), frame);
        was_empty
    }

    /// Whether a queue holding `load` is at or over its bounds, widened by `allowance`
    /// (under the `degrade` policy: half the bounds, where holding back begins).
    #[inline]
    fn is_over(&self, load: Load, allowance: Load) -> bool {
        load.frames() >= (self.capacity >> self.soft) + allowance.frames()
            || load.bytes() >= (self.byte_capacity >> self.soft) + allowance.bytes()
    }

    /// The `degrade` policy's push, for a queue past half its bounds or a client with
    /// events in its book (see [`super::degrade`]): queues the frame, holds it back in the
    /// book, or closes the client when even a `critical` event or a reply does not fit.
    /// Serialized on the book's lock; a client that keeps up never comes here.
    #[cold]
    #[inline(never)]
    fn degrade(&self, frame: Bytes, since: Option<Stamp>, tag: Option<&Tag<'_>>) -> (Push, bool) {
        let mut book = self.book_lock().lock();
        if self.state.load(Ordering::Acquire) >= CLOSE_AFTER_FLUSH {
            return (Push::Closed, false);
        }
        let fill = self.fill();
        let tag = match tag {
            Some(tag) if tag.priority != Priority::Critical => tag,
            critical => {
                if fill >= HOLD_ALL {
                    drop(book);
                    self.close(Closing::Now(CloseCode::SLOW_CONSUMER));
                    return (Push::Overflowed, false);
                }
                // The channel's parked events are older: they go first.
                let mut wake = false;
                if let (Some(tag), Some(book)) = (critical, book.as_mut()) {
                    for parked in book.unpark(tag.channel) {
                        wake |= self.admit(parked, None);
                    }
                }
                wake |= self.admit(frame, since);
                return (Push::Queued, wake);
            }
        };
        let hold_from = match (tag.priority, tag.conflate.is_some()) {
            (Priority::Low, _) | (_, true) => HOLD_LOW,
            (Priority::Normal, _) => HOLD_NORMAL,
            _ => HOLD_HIGH,
        };
        let behind = book.as_ref().is_some_and(|b| b.holds(tag.channel));
        if !behind && fill < hold_from {
            return (Push::Queued, self.admit(frame, since));
        }
        book.get_or_insert_default()
            .hold(tag, frame, self.capacity, self.byte_capacity);
        (Push::Degraded, self.enter_degraded())
    }

    /// The book's lock, allocated on first use.
    fn book_lock(&self) -> &Mutex<Option<Box<Book>>> {
        self.book.get_or_init(|| Box::new(Mutex::new(None)))
    }

    /// How full the queue is, in quarters of its bounds (frames or bytes, whichever is
    /// fuller), not counting frames taken whole.
    fn fill(&self) -> usize {
        let load = Load(self.load.load(Ordering::Acquire));
        let allowance = Load(self.allowance.load(Ordering::Relaxed));
        let frames = load.frames().saturating_sub(allowance.frames()) * 4 / self.capacity;
        let bytes = load.bytes().saturating_sub(allowance.bytes()) * 4 / self.byte_capacity;
        frames.max(bytes)
    }

    /// Queues `frame` with no bound checked (the degrade path decided); returns whether
    /// the queue was empty.
    fn admit(&self, frame: Bytes, since: Option<Stamp>) -> bool {
        let add = Load::of(1, frame.len().min(MAX_BYTE_CAPACITY));
        let before = Load(self.load.fetch_add(add.0, Ordering::AcqRel));
        self.place(frame, since, before)
    }

    /// Marks the outbox degraded (events wait in its book); returns whether it was not
    /// already, so that the caller wakes the writer, which takes the book once the client
    /// has caught up. Does nothing to an outbox that is closing.
    fn enter_degraded(&self) -> bool {
        self.state
            .compare_exchange(OPEN, LOSSY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The book of a degrading client that has read everything queued, which leaves the
    /// degraded state: what it missed, and the events parked for it (see
    /// [`super::degrade`]). `None` while frames are queued or nothing was held back. The
    /// writer calls this after each drain, and sends what the book owes before anything
    /// queued later.
    pub fn take_book(&self) -> Option<Box<Book>> {
        if self.state.load(Ordering::Acquire) != LOSSY {
            return None;
        }
        let mut book = self.book_lock().lock();
        if !self.is_empty() {
            return None;
        }
        self.state
            .compare_exchange(LOSSY, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        book.take()
    }

    /// Whether a queue holding `load`, of which `allowance` was taken whole, keeps up: its
    /// other frames are within the bounds.
    #[inline]
    fn keeps_up(&self, load: Load, allowance: Load) -> bool {
        load.frames().saturating_sub(allowance.frames()) < self.capacity
            && load.bytes().saturating_sub(allowance.bytes()) < self.byte_capacity
    }

    /// Whether `add` more may be taken whole beside `allowance`: always when nothing taken
    /// whole is pending,
    /// else up to [`WHOLE_FACTOR`] times the bounds, so that a client that never reads
    /// cannot collect batch after batch.
    #[inline]
    fn allowance_fits(&self, allowance: Load, add: Load) -> bool {
        allowance.0 == 0
            || (allowance.frames() + add.frames() <= self.capacity * WHOLE_FACTOR
                && allowance.bytes() + add.bytes() <= self.byte_capacity * WHOLE_FACTOR)
    }

    /// Applies the slow-consumer policy to `frames` frames that did not fit.
    fn refuse(&self, frames: u64) -> Push {
        match self.policy {
            // Under `degrade`, only a snapshot asked for while behind comes here.
            SlowConsumerPolicy::Close | SlowConsumerPolicy::Degrade => {
                self.close(Closing::Now(CloseCode::SLOW_CONSUMER));
                Push::Overflowed
            }
            SlowConsumerPolicy::Drop => {
                self.dropped.fetch_add(frames, Ordering::Relaxed);
                Push::Dropped
            }
        }
    }

    /// Queues `frames` whole, in order, if the queue is within its bounds now: they are
    /// admitted past the bounds and widen them until drained (see the [module docs](self)).
    /// For a snapshot, which a new subscriber must receive entire however many frames it
    /// holds. Refused whole (the slow-consumer policy applies once) when the queue is over
    /// its bounds already: a client that does not read cannot make it grow by asking for
    /// snapshot after snapshot. Wakes the writer.
    pub fn push_whole(&self, frames: &[Bytes]) -> Push {
        if self.is_closing() {
            return Push::Closed;
        }
        if frames.is_empty() {
            return Push::Queued;
        }
        let bytes = frames
            .iter()
            .map(|f| f.len().min(MAX_BYTE_CAPACITY))
            .fold(0usize, usize::saturating_add)
            .min(MAX_BYTE_CAPACITY);
        let add = Load::of(frames.len().min(MAX_CAPACITY), bytes);
        let before = Load(self.load.load(Ordering::Acquire));
        let allowance = Load(self.allowance.load(Ordering::Relaxed));
        if !self.keeps_up(before, allowance) || !self.allowance_fits(allowance, add) {
            return self.refuse(frames.len() as u64);
        }
        // Allowance first: a concurrent push never sees these frames without it.
        self.allowance.fetch_add(add.0, Ordering::Relaxed);
        let before = Load(self.load.fetch_add(add.0, Ordering::AcqRel));
        for frame in frames {
            self.queue.push(before.generation(), frame.clone());
        }
        if before.frames() == 0 || self.take_deferred_wake() {
            self.wake();
        }
        Push::Queued
    }

    /// Queues `channel`'s snapshot `frames` whole, as [`push_whole`](Self::push_whole)
    /// does. Under the `degrade` policy a client that is behind is not closed for it: the
    /// channel goes in its book instead, and the writer sends the snapshot current when the
    /// client has caught up (see [`super::degrade`]).
    pub fn push_snapshot(&self, channel: &str, frames: &[Bytes]) -> Push {
        let behind = || {
            let load = Load(self.load.load(Ordering::Acquire));
            let allowance = Load(self.allowance.load(Ordering::Relaxed));
            !self.keeps_up(load, allowance)
        };
        if self.policy == SlowConsumerPolicy::Degrade && !frames.is_empty() && behind() {
            let mut book = self.book_lock().lock();
            if behind() && !self.is_closing() {
                book.get_or_insert_default().owe(channel);
                let entered = self.enter_degraded();
                drop(book);
                if entered {
                    self.wake();
                }
                return Push::Degraded;
            }
        }
        self.push_whole(frames)
    }

    /// Wakes the writer.
    #[inline]
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Puts off the wake-up a `low` frame that found the queue empty owes the writer
    /// (`low_priority_delay`): the writer sleeps on until a frame of another priority, a
    /// reply, or the hub's ticker ([`wake_if_deferred`](Self::wake_if_deferred)) wakes it,
    /// and then writes what waited in one go. Returns whether the caller must put the
    /// outbox on the ticker's list (it was not on it).
    ///
    /// A frame pushed concurrently with the `low` one that deferred (between its count and
    /// this call) may miss the deferral and wait with it, no longer than the delay.
    pub(crate) fn defer_wake(&self) -> bool {
        self.wake
            .fetch_or(WAKE_DEFERRED | WAKE_LISTED, Ordering::AcqRel)
            & WAKE_LISTED
            == 0
    }

    /// For a push that found the queue holding frames: whether the writer's wake-up was put
    /// off, and is now owed to this push (which must wake it). Clears it.
    #[inline]
    pub(crate) fn take_deferred_wake(&self) -> bool {
        self.wake.load(Ordering::Relaxed) & WAKE_DEFERRED != 0
            && self.wake.fetch_and(!WAKE_DEFERRED, Ordering::AcqRel) & WAKE_DEFERRED != 0
    }

    /// The hub's ticker: takes the outbox off its list, and wakes the writer if its wake-up
    /// is still owed. Returns whether it woke it.
    pub(crate) fn wake_if_deferred(&self) -> bool {
        let owed = self
            .wake
            .fetch_and(!(WAKE_DEFERRED | WAKE_LISTED), Ordering::AcqRel)
            & WAKE_DEFERRED
            != 0;
        if owed {
            self.wake();
        }
        owed
    }

    /// For the hub's sweep: asks the connection to go dormant, unless it is or was asked
    /// already, and wakes its writer so that it hears. Returns whether it asked.
    ///
    /// A dormant connection holds no task while it has nothing to read or write; its
    /// writer's waker (the one [`poll_ready`](Self::poll_ready) registered) wakes it. The
    /// connection goes dormant only if both its halves are between frames when it hears;
    /// if not, it ignores the ask, and the next sweep asks again.
    pub fn ask_to_rest(&self) -> bool {
        if self.wake.load(Ordering::Relaxed) & (REST_ASKED | DORMANT) != 0 {
            return false;
        }
        self.wake.fetch_or(REST_ASKED, Ordering::AcqRel);
        self.wake();
        true
    }

    /// Whether the connection was asked to go dormant since the last call; resets it.
    #[inline]
    pub fn take_rest_ask(&self) -> bool {
        self.wake.load(Ordering::Relaxed) & REST_ASKED != 0
            && self.wake.fetch_and(!REST_ASKED, Ordering::AcqRel) & REST_ASKED != 0
    }

    /// Tells the connection that commands wait for it in its hub's mailbox (see
    /// `engine::control`), and wakes it: a dormant one gets its task back to hear them.
    pub(crate) fn commanded(&self) {
        self.wake.fetch_or(COMMANDED, Ordering::AcqRel);
        self.wake();
    }

    /// Whether commands wait for the connection in its hub's mailbox.
    #[inline]
    pub fn has_commands(&self) -> bool {
        self.wake.load(Ordering::Acquire) & COMMANDED != 0
    }

    /// Ready, and reset, once commands wait for the connection. Registers no waker: the
    /// connection's task is its writer's, whose [`poll_ready`](Self::poll_ready) is ready
    /// while commands wait (and registers the waker otherwise), so the task is polled
    /// again when they come. Only a task that also runs the writer may wait on this.
    pub fn poll_commands(&self, _cx: &mut Context<'_>) -> Poll<()> {
        if self.has_commands() && self.wake.fetch_and(!COMMANDED, Ordering::AcqRel) & COMMANDED != 0
        {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Records that the connection goes dormant (`true`, before it registers its waker) or
    /// woke (`false`): the sweep does not ask a dormant connection, whose wake-up would
    /// wake it for nothing.
    pub fn set_dormant(&self, dormant: bool) {
        match dormant {
            true => self.wake.fetch_or(DORMANT, Ordering::AcqRel),
            false => self.wake.fetch_and(!DORMANT, Ordering::AcqRel),
        };
    }

    /// This outbox, for a client that takes `encoding` (uncompressed SigmaVault unless
    /// said).
    pub(crate) fn encoded(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// The dialect of the client it belongs to: the frames it holds are in it.
    pub fn dialect(&self) -> Dialect {
        self.encoding.dialect
    }

    /// The form of the frames it holds: its client's dialect, compressed or not.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Queues a keep-alive ping and starts waiting for the client's answer.
    pub fn ping(&self, frame: Bytes) -> Push {
        self.awaiting_pong.store(true, Ordering::Release);
        self.push(frame)
    }

    /// Records that the client is alive (it sent a pong, or anything else).
    #[inline]
    pub fn mark_alive(&self) {
        if self.awaiting_pong.load(Ordering::Relaxed) {
            self.awaiting_pong.store(false, Ordering::Release);
        }
    }

    /// Closes the connection with [`CloseCode::KEEPALIVE_TIMEOUT`] if the last ping is still
    /// unanswered; returns whether it did.
    pub fn expire_if_silent(&self) -> bool {
        if self.awaiting_pong.load(Ordering::Acquire) && !self.is_closing() {
            self.close(Closing::Now(CloseCode::KEEPALIVE_TIMEOUT));
            return true;
        }
        false
    }

    /// Asks the writer to close the connection. The first request wins; an immediate close
    /// overrides a pending close-after-flush.
    pub fn close(&self, how: Closing) {
        let (state, code) = match how {
            Closing::AfterFlush(code) => (CLOSE_AFTER_FLUSH, code),
            Closing::Now(code) => (CLOSE_NOW, code),
        };
        let _ = self.close_code.set(code);
        self.state.fetch_max(state, Ordering::AcqRel);
        self.waker.wake();
    }

    /// The close requested so far, if any.
    pub fn closing(&self) -> Option<Closing> {
        let code = *self.close_code.get()?;
        match self.state.load(Ordering::Acquire) {
            CLOSE_NOW => Some(Closing::Now(code)),
            CLOSE_AFTER_FLUSH => Some(Closing::AfterFlush(code)),
            _ => None,
        }
    }

    /// Whether a close has been requested.
    pub fn is_closing(&self) -> bool {
        self.state.load(Ordering::Acquire) >= CLOSE_AFTER_FLUSH
    }

    /// Whether some events were held back from this client (`degrade` policy) and it is
    /// owed a `gap` marker.
    pub fn is_degraded(&self) -> bool {
        self.state.load(Ordering::Acquire) == LOSSY
    }

    /// The number of queued frames.
    pub fn len(&self) -> usize {
        Load(self.load.load(Ordering::Acquire)).frames()
    }

    /// The bytes of the queued frames (frames shared with other clients counted in full).
    pub fn queued_bytes(&self) -> usize {
        Load(self.load.load(Ordering::Acquire)).bytes()
    }

    /// How many more frames fit before the queue is full.
    pub fn room(&self) -> usize {
        let allowance = Load(self.allowance.load(Ordering::Relaxed)).frames();
        (self.capacity + allowance).saturating_sub(self.len())
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether frames were dropped by the `drop` policy since the last
    /// [`take_dropped`](Self::take_dropped).
    pub fn has_dropped(&self) -> bool {
        self.dropped.load(Ordering::Relaxed) > 0
    }

    /// Frames dropped by the `drop` policy since the last call; resets the count.
    pub fn take_dropped(&self) -> u64 {
        if self.dropped.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.dropped.swap(0, Ordering::AcqRel)
    }

    /// Ready when frames are queued, a close was requested or commands wait (for the
    /// connection's reader: see [`poll_commands`](Self::poll_commands)); otherwise
    /// registers the waker.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.has_work() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.has_work() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Ready once an immediate close was requested; otherwise registers the waker. The
    /// writer polls this while a write is blocked on a full socket.
    pub fn poll_close_now(&self, cx: &mut Context<'_>) -> Poll<()> {
        let now = || self.state.load(Ordering::Acquire) == CLOSE_NOW;
        if now() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if now() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits until [`poll_ready`](Self::poll_ready) is ready.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    fn has_work(&self) -> bool {
        !Load(self.load.load(Ordering::Acquire)).is_empty()
            || self.state.load(Ordering::Acquire) != OPEN
            || self.dropped.load(Ordering::Relaxed) > 0
            || self.has_commands()
    }

    /// Moves up to `max` queued frames into `out`, in order, and returns how many.
    ///
    /// Meant for the writer task alone; a drain that starts while another runs returns 0
    /// at once. A push counts itself before it enqueues, so for a few nanoseconds a counted
    /// frame may not be in the queue yet; the drain waits briefly for it. It never waits
    /// long: a push refused by a full queue is counted too until it takes its count back,
    /// and may never arrive. A counted frame the drain leaves behind keeps the outbox ready
    /// ([`poll_ready`](Self::poll_ready)), so the next drain takes it, in order.
    pub fn drain_into(&self, out: &mut Vec<Bytes>, max: usize) -> usize {
        let Some(mut lock) = self.drain_lock() else {
            return 0;
        };
        let load = Load(self.load.load(Ordering::Acquire));
        // Only a drain changes the generation, and this one holds the lock.
        let generation = load.generation();
        let want = load.frames().min(max);
        let backoff = Backoff::new();
        let (mut got, mut bytes) = (0, 0);
        let mut queue = self.queue.popper(generation);
        while got < want {
            match queue.pop() {
                Some(frame) => {
                    bytes += frame.len().min(MAX_BYTE_CAPACITY);
                    out.push(frame);
                    got += 1;
                }
                None if backoff.is_completed() => break,
                None => backoff.snooze(),
            }
        }
        if got > 0 {
            lock.took_frames = true;
            let drained = Load::of(got, bytes);
            self.load.fetch_sub(drained.0, Ordering::AcqRel);
            if self.allowance.load(Ordering::Relaxed) != 0 {
                // Only the writer lowers it; publishers only raise it.
                let _ = self
                    .allowance
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                        let a = Load(a);
                        let frames = a.frames().saturating_sub(drained.frames());
                        let bytes = a.bytes().saturating_sub(drained.bytes());
                        Some(Load::of(frames, bytes).0)
                    });
            }
        }
        got
    }

    /// Gives the queue's memory back if it is empty, and returns whether it did; the next
    /// push allocates again (a block and the queue's indices, about 1.5 KB, in two
    /// allocations: 70 ns a time, `benches/outbox.rs`). The hub's sweep calls it, once a
    /// second, for every client that received nothing since the last sweep
    /// ([`take_idle`](Self::take_idle)), and a resting connection after each write: an
    /// idle client holds no block of its queue, and a busy one is not made to allocate it
    /// again.
    ///
    /// Any thread may call it. Like [`drain_into`](Self::drain_into), it does nothing while
    /// a drain runs; a drain that starts meanwhile returns nothing, and the writer retries.
    // The one `unsafe` of the outbox: the release rests on the counted word's invariant,
    // stated at the block.
    #[allow(unsafe_code)]
    pub fn shrink(&self) -> bool {
        // The count, if the queue is empty and holds memory.
        let to_give = || {
            let load = Load(self.load.load(Ordering::Acquire));
            (load.is_empty() && self.queue.is_allocated(load.generation())).then_some(load)
        };
        // Looked at before the lock too, so that sweeping an idle or busy client writes
        // nothing.
        if to_give().is_none() {
            return false;
        }
        let Some(_drain) = self.drain_lock() else {
            return false;
        };
        let Some(load) = to_give() else {
            return false;
        };
        let generation = load.generation();
        // Fails if a push counted itself since the load: it may be about to push into this
        // generation. Once it succeeds, every push counts itself, and so pushes, into the
        // other one.
        if self
            .load
            .compare_exchange(
                load.0,
                load.next_generation().0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        // SAFETY: no push of `generation` is running: every push counts itself (in the word
        // that named `generation`) before pushing, the exchange found nothing counted, and
        // a counted frame stays counted until drained, so each push of `generation` has
        // finished and its frame has been popped; pushes from now on name the other
        // generation. No pop is running: pops happen only under the drain lock, held here.
        // Until the next exchange, which only a holder of the lock makes once this
        // generation is current again, nothing pushes into it.
        unsafe { self.queue.release(generation) };
        true
    }

    /// Whether no drain took frames since the last call (the client received nothing, or
    /// nothing was queued for it); resets it.
    pub fn take_idle(&self) -> bool {
        if self.drain.load(Ordering::Relaxed) & DRAINED_LATELY != 0 {
            self.drain.fetch_and(!DRAINED_LATELY, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The drain lock, if no drain holds it.
    fn drain_lock(&self) -> Option<DrainLock<'_>> {
        let before = self.drain.fetch_or(DRAIN_LOCKED, Ordering::Acquire);
        if before & DRAIN_LOCKED != 0 {
            // Not `then_some`: a guard built for nothing would unlock the holder's lock
            // when dropped (the stress test below lost frames that way).
            return None;
        }
        Some(DrainLock {
            flags: &self.drain,
            drained_lately: before & DRAINED_LATELY,
            took_frames: false,
        })
    }

    /// The publish stamp of the oldest event drained since the last call, if an event found
    /// the queue empty; resets it. The writer calls it after [`drain_into`](Self::drain_into).
    pub(crate) fn take_since(&self) -> Option<Stamp> {
        Stamp::from_raw(self.since.swap(0, Ordering::Relaxed))
    }

    /// Discards every queued frame (for an immediate close).
    pub fn clear(&self) {
        let mut sink = Vec::new();
        while self.drain_into(&mut sink, usize::MAX) > 0 {
            sink.clear();
        }
    }
}

/// Held by the running drain; released when dropped.
struct DrainLock<'a> {
    flags: &'a AtomicU8,
    /// [`DRAINED_LATELY`] as the lock found it.
    drained_lately: u8,
    /// Whether the drain took frames: [`DRAINED_LATELY`] is then set.
    took_frames: bool,
}

impl Drop for DrainLock<'_> {
    fn drop(&mut self) {
        // One store, no read-modify-write: while the lock is held only a sweep's clearing
        // of `DRAINED_LATELY` may have changed the byte, and overwriting that costs at most
        // a second's delay before the queue is given back.
        let flags = match self.took_frames {
            true => DRAINED_LATELY,
            false => self.drained_lately,
        };
        self.flags.store(flags, Ordering::Release);
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("len", &self.len())
            .field("bytes", &self.queued_bytes())
            .field("capacity", &self.capacity)
            .field("byte_capacity", &self.byte_capacity)
            .field("closing", &self.closing())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn frame(i: u8) -> Bytes {
        Bytes::copy_from_slice(&[i])
    }

    /// Frame `i` of pusher thread `thread`: the thread's byte, then `i` big-endian.
    fn numbered(thread: u8, i: u32) -> Bytes {
        let mut b = vec![thread];
        b.extend_from_slice(&i.to_be_bytes());
        Bytes::from(b)
    }

    #[test]
    fn an_outbox_and_its_arc_fill_a_160_byte_allocation() {
        // 160 bytes is one of mimalloc's size classes (128, 160, 192, ...): a field that
        // takes the outbox past 144 costs every connection 32 bytes (perf/README.md, "Idle
        // memory, allocation by allocation").
        assert_eq!(std::mem::size_of::<Outbox>(), 144);
        assert_eq!(std::mem::align_of::<Outbox>(), 8);
    }

    #[test]
    fn a_dry_queue_gives_its_memory_back_and_takes_frames_again() {
        let outbox = Outbox::new(8, SlowConsumerPolicy::Close);
        assert!(!outbox.shrink(), "nothing allocated yet");
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        for round in 0..3u8 {
            assert!(outbox.poll_ready(&mut cx).is_pending());
            outbox.push(frame(round));
            outbox.push(frame(round + 10));
            assert_eq!(counter.0.load(Ordering::SeqCst), usize::from(round) + 1);
            assert!(!outbox.shrink(), "frames are queued");
            let mut out = Vec::new();
            assert_eq!(outbox.drain_into(&mut out, 1), 1);
            assert!(!outbox.shrink(), "a frame is still queued");
            outbox.drain_into(&mut out, usize::MAX);
            assert_eq!(out, [frame(round), frame(round + 10)]);
            assert!(outbox.shrink(), "round {round}");
            assert!(!outbox.queue.is_allocated(0) && !outbox.queue.is_allocated(1));
            assert!(!outbox.shrink(), "already given back");
        }
    }

    #[test]
    fn a_drain_or_shrink_started_during_a_drain_does_nothing() {
        let outbox = Outbox::new(8, SlowConsumerPolicy::Close);
        outbox.push(frame(1));
        outbox.drain_into(&mut Vec::new(), usize::MAX);
        outbox.push(frame(2));
        let held = outbox.drain_lock().expect("free");
        // Each refused attempt leaves the lock with its holder.
        for _ in 0..2 {
            assert_eq!(outbox.drain_into(&mut Vec::new(), usize::MAX), 0);
            assert!(outbox.drain_lock().is_none());
        }
        assert_eq!(
            outbox.drain.load(Ordering::Relaxed) & DRAIN_LOCKED,
            DRAIN_LOCKED
        );
        drop(held);
        assert_eq!(outbox.drain_into(&mut Vec::new(), usize::MAX), 1);
        // Empty, its memory still held: the holder's lock refuses the give-back too.
        let held = outbox.drain_lock().expect("free");
        assert!(!outbox.shrink());
        assert!(!outbox.shrink());
        drop(held);
        assert!(outbox.shrink());
    }

    /// Pushers on several threads, a writer on another that sleeps until woken, drains, and
    /// gives the queue back every time it runs dry, and a sweeper on another still that
    /// gives it back whenever it can (as the hub's sweep does, from its own thread): every
    /// frame arrives, each thread's in order, and no wake-up is lost across a generation
    /// change (a lost one stalls the writer, which then fails the test instead of hanging).
    #[test]
    fn pushes_racing_with_shrinks_lose_no_frame_and_no_wake_up() {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        const THREADS: u8 = 3;
        // Under Miri (`cargo +nightly miri test`), a few hundred: it checks every access.
        const FRAMES: u32 = if cfg!(miri) { 200 } else { 200_000 };
        let outbox = Arc::new(Outbox::new(1 << 20, SlowConsumerPolicy::Close));
        let pushers: Vec<_> = (0..THREADS)
            .map(|t| {
                let outbox = outbox.clone();
                std::thread::spawn(move || {
                    for i in 0..FRAMES {
                        outbox.push(numbered(t, i));
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let sweeper = {
            let (outbox, stop) = (outbox.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut shrinks = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    shrinks += u64::from(outbox.shrink());
                    std::thread::yield_now();
                }
                shrinks
            })
        };
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let (mut seen, mut total, mut shrinks) = ([None::<u32>; THREADS as usize], 0, 0);
        let mut out = Vec::new();
        // Miri runs this thousands of times slower than native code.
        let patience = std::time::Duration::from_secs(if cfg!(miri) { 3600 } else { 60 });
        let deadline = std::time::Instant::now() + patience;
        while total < u32::from(THREADS) * FRAMES {
            assert!(
                std::time::Instant::now() < deadline,
                "{total} frames after {patience:?}"
            );
            if outbox.poll_ready(&mut cx).is_pending() {
                let parked = std::time::Instant::now();
                std::thread::park_timeout(patience / 6);
                assert!(
                    parked.elapsed() < patience / 6 || outbox.is_empty(),
                    "frames queued but the writer was never woken"
                );
                continue;
            }
            out.clear();
            outbox.drain_into(&mut out, 256);
            for f in &out {
                let i = u32::from_be_bytes(f[1..5].try_into().unwrap());
                let last = &mut seen[usize::from(f[0])];
                assert!(
                    last.is_none_or(|l| l + 1 == i) && (last.is_some() || i == 0),
                    "thread {}: {i} after {last:?}",
                    f[0]
                );
                *last = Some(i);
                total += 1;
            }
            if outbox.is_empty() && outbox.shrink() {
                shrinks += 1;
            }
        }
        pushers.into_iter().for_each(|p| p.join().unwrap());
        stop.store(true, Ordering::Relaxed);
        let swept = sweeper.join().unwrap();
        assert!(outbox.is_empty());
        assert!(shrinks + swept > 0, "the queue never ran dry");
        eprintln!("generations given back: {shrinks} by the writer, {swept} by the sweeper");
    }

    #[test]
    fn wakes_only_on_empty_to_non_empty() {
        let outbox = Outbox::new(8, SlowConsumerPolicy::Close);
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(outbox.poll_ready(&mut cx).is_pending());
        outbox.push(frame(1));
        outbox.push(frame(2));
        outbox.push(frame(3));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        let mut out = Vec::new();
        assert_eq!(outbox.drain_into(&mut out, 10), 3);
        assert_eq!(out, vec![frame(1), frame(2), frame(3)]);
        assert!(outbox.poll_ready(&mut cx).is_pending());
        outbox.push(frame(4));
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn deferred_pushes_owe_one_wake() {
        let outbox = Outbox::new(8, SlowConsumerPolicy::Close);
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(counter.clone());
        assert!(outbox
            .poll_ready(&mut Context::from_waker(&waker))
            .is_pending());
        assert_eq!(outbox.push_deferred(frame(1)), (Push::Queued, true));
        assert_eq!(outbox.push_deferred(frame(2)), (Push::Queued, false));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        outbox.wake();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_deferred_wake_is_owed_to_the_next_push_or_the_ticker() {
        let outbox = Outbox::new(8, SlowConsumerPolicy::Close);
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(counter.clone());
        let woken = || counter.0.load(Ordering::SeqCst);
        assert!(outbox
            .poll_ready(&mut Context::from_waker(&waker))
            .is_pending());
        // A low frame finds the queue empty: its wake-up is put off, and listed once.
        assert_eq!(outbox.push_deferred(frame(1)), (Push::Queued, true));
        assert!(outbox.defer_wake());
        assert!(!outbox.defer_wake(), "listed once");
        assert_eq!(woken(), 0);
        // A reply finds frames queued: it owes the writer the deferred wake-up.
        outbox.push(frame(2));
        assert_eq!(woken(), 1);
        assert!(!outbox.take_deferred_wake(), "taken by the reply");
        let mut out = Vec::new();
        assert_eq!(outbox.drain_into(&mut out, 10), 2);
        assert_eq!(out, vec![frame(1), frame(2)]);
        assert!(outbox
            .poll_ready(&mut Context::from_waker(&waker))
            .is_pending());
        // The ticker finds nothing owed, and takes the outbox off its list.
        assert!(!outbox.wake_if_deferred());
        assert_eq!(outbox.push_deferred(frame(3)), (Push::Queued, true));
        assert!(outbox.defer_wake(), "off the list: listed again");
        assert!(outbox.wake_if_deferred());
        assert_eq!(woken(), 2);
    }

    #[test]
    fn overflow_closes_under_the_close_policy() {
        let outbox = Outbox::new(2, SlowConsumerPolicy::Close);
        assert_eq!(outbox.push(frame(1)), Push::Queued);
        assert_eq!(outbox.push(frame(2)), Push::Queued);
        assert_eq!(outbox.push(frame(3)), Push::Overflowed);
        assert_eq!(
            outbox.closing(),
            Some(Closing::Now(CloseCode::SLOW_CONSUMER))
        );
        assert_eq!(outbox.push(frame(4)), Push::Closed);
        assert_eq!(outbox.len(), 2);
    }

    fn tagged(channel: &str, priority: Priority, offset: u64) -> Tag<'_> {
        Tag {
            channel,
            priority,
            conflate: None,
            offset,
            prev: offset.saturating_sub(1),
        }
    }

    fn push_tagged(outbox: &Outbox, tag: Tag<'_>) -> Push {
        let frame = Bytes::from(format!("{}:{}", tag.channel, tag.offset));
        let (push, wake) = outbox.push_event(frame, None, Some(&tag));
        if wake {
            outbox.wake();
        }
        push
    }

    fn drained(outbox: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        outbox.drain_into(&mut out, usize::MAX);
        out.iter()
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn degrade_holds_back_by_priority_and_keeps_a_behind_channel_in_order() {
        use Priority::*;
        let outbox = Outbox::new(8, SlowConsumerPolicy::Degrade);
        for offset in 1..=4 {
            assert_eq!(
                push_tagged(&outbox, tagged("a", Normal, offset)),
                Push::Queued
            );
        }
        // Half full: `low` is held back, `normal` still queued.
        assert_eq!(push_tagged(&outbox, tagged("a", Low, 5)), Push::Degraded);
        assert!(outbox.is_degraded());
        // Channel `a` now has events in the book: its later events wait behind them.
        assert_eq!(push_tagged(&outbox, tagged("a", Normal, 6)), Push::Degraded);
        assert_eq!(push_tagged(&outbox, tagged("b", Normal, 7)), Push::Queued);
        assert_eq!(push_tagged(&outbox, tagged("b", Normal, 8)), Push::Queued);
        // Three quarters: `normal` is held back everywhere, `high` still queued.
        assert_eq!(push_tagged(&outbox, tagged("c", Normal, 9)), Push::Degraded);
        assert_eq!(push_tagged(&outbox, tagged("c", High, 10)), Push::Degraded);
        assert_eq!(push_tagged(&outbox, tagged("d", High, 11)), Push::Queued);
        // `critical` is never held back.
        assert_eq!(
            push_tagged(&outbox, tagged("a", Critical, 12)),
            Push::Queued
        );
        assert!(outbox.take_book().is_none(), "frames are still queued");
        assert_eq!(
            drained(&outbox),
            ["a:1", "a:2", "a:3", "a:4", "b:7", "b:8", "d:11", "a:12"]
        );
        let book = outbox.take_book().expect("caught up");
        assert!(!outbox.is_degraded());
        assert_eq!(book.counts().shed, [1, 2, 1]);
        let held = book.into_held();
        assert_eq!(held.len(), 2);
        assert_eq!((&*held[0].channel, held[0].missed), ("a", 2));
        assert_eq!((held[0].after, held[0].through), (4, 6));
        // Channel `c`'s `high` event came while it was behind: held back too.
        assert_eq!((&*held[1].channel, held[1].missed), ("c", 2));
        // Served normally again.
        assert_eq!(push_tagged(&outbox, tagged("a", Low, 13)), Push::Queued);
        assert!(outbox.take_book().is_none());
    }

    #[test]
    fn degrade_parks_the_newest_of_a_key_and_a_critical_event_sends_it_first() {
        let outbox = Outbox::new(4, SlowConsumerPolicy::Degrade);
        let (k1, k2) = (
            crate::event::ConflateKey::new("k1").unwrap(),
            crate::event::ConflateKey::new("k2").unwrap(),
        );
        for offset in 1..=2 {
            push_tagged(&outbox, tagged("a", Priority::Normal, offset));
        }
        for (offset, key) in [(3, &k1), (4, &k2), (5, &k1)] {
            let tag = Tag {
                conflate: Some(key),
                ..tagged("a", Priority::Normal, offset)
            };
            assert_eq!(push_tagged(&outbox, tag), Push::Degraded);
        }
        assert_eq!(
            push_tagged(&outbox, tagged("a", Priority::Critical, 6)),
            Push::Queued
        );
        assert_eq!(drained(&outbox), ["a:1", "a:2", "a:4", "a:5", "a:6"]);
        let book = outbox.take_book().unwrap();
        assert_eq!(book.counts().conflated, 1);
        let held = book.into_held();
        assert_eq!(
            (held[0].missed, held[0].conflated, held[0].parked.len()),
            (1, 1, 0)
        );
        assert_eq!((held[0].after, held[0].through), (2, 3));
    }

    #[test]
    fn degrade_owes_a_snapshot_to_a_client_behind_instead_of_closing_it() {
        let outbox = Outbox::new(4, SlowConsumerPolicy::Degrade);
        let snapshot = [frame(9), frame(9)];
        assert_eq!(outbox.push_snapshot("s", &snapshot), Push::Queued);
        for offset in 1..=4 {
            push_tagged(&outbox, tagged("a", Priority::High, offset));
        }
        assert_eq!(outbox.push_snapshot("s", &snapshot), Push::Degraded);
        assert!(!outbox.is_closing());
        // The channel's events wait behind its snapshot.
        assert_eq!(
            push_tagged(&outbox, tagged("s", Priority::High, 5)),
            Push::Degraded
        );
        assert_eq!(drained(&outbox).len(), 6);
        let held = outbox.take_book().unwrap().into_held();
        assert_eq!((&*held[0].channel, held[0].missed), ("s", 1));
        // Under `close`, a snapshot asked for while behind still closes.
        let outbox = Outbox::new(1, SlowConsumerPolicy::Close);
        outbox.push(frame(1));
        assert_eq!(outbox.push_snapshot("s", &snapshot), Push::Overflowed);
    }

    #[test]
    fn degrade_closes_a_client_that_cannot_take_critical_events() {
        let outbox = Outbox::new(4, SlowConsumerPolicy::Degrade);
        for offset in 1..=8 {
            assert_eq!(
                push_tagged(&outbox, tagged("a", Priority::Critical, offset)),
                Push::Queued
            );
        }
        assert_eq!(
            push_tagged(&outbox, tagged("a", Priority::Critical, 9)),
            Push::Overflowed
        );
        assert_eq!(
            outbox.closing(),
            Some(Closing::Now(CloseCode::SLOW_CONSUMER))
        );
        // Replies (untagged) are held to the same hard bound.
        let outbox = Outbox::new(2, SlowConsumerPolicy::Degrade);
        let pushed: Vec<Push> = (0..5).map(|i| outbox.push(frame(i))).collect();
        assert_eq!(pushed[..4], [Push::Queued; 4]);
        assert_eq!(pushed[4], Push::Overflowed);
    }

    #[test]
    fn overflow_drops_and_counts_under_the_drop_policy() {
        let outbox = Outbox::new(1, SlowConsumerPolicy::Drop);
        assert_eq!(outbox.push(frame(1)), Push::Queued);
        assert_eq!(outbox.push(frame(2)), Push::Dropped);
        assert_eq!(outbox.push(frame(3)), Push::Dropped);
        assert!(!outbox.is_closing());
        assert_eq!(outbox.take_dropped(), 2);
        assert_eq!(outbox.take_dropped(), 0);
    }

    #[test]
    fn bytes_are_bounded_as_well_as_frames() {
        let outbox = Outbox::bounded(100, 1000, SlowConsumerPolicy::Close);
        let big = Bytes::from(vec![0u8; 600]);
        assert_eq!(outbox.push(big.clone()), Push::Queued);
        assert_eq!(outbox.queued_bytes(), 600);
        // Under the bound before it: taken, although it ends above.
        assert_eq!(outbox.push(big.clone()), Push::Queued);
        assert_eq!(outbox.queued_bytes(), 1200);
        assert_eq!(outbox.push(frame(1)), Push::Overflowed);
        assert_eq!(
            outbox.closing(),
            Some(Closing::Now(CloseCode::SLOW_CONSUMER))
        );

        let outbox = Outbox::bounded(100, 1000, SlowConsumerPolicy::Drop);
        outbox.push(big.clone());
        outbox.push(big.clone());
        assert_eq!(outbox.push(frame(1)), Push::Dropped);
        let mut out = Vec::new();
        assert_eq!(outbox.drain_into(&mut out, 1), 1);
        assert_eq!((outbox.len(), outbox.queued_bytes()), (1, 600));
        assert_eq!(outbox.push(frame(1)), Push::Queued);
        outbox.clear();
        assert_eq!((outbox.len(), outbox.queued_bytes()), (0, 0));
        // A frame larger than the whole bound still reaches an empty queue.
        assert_eq!(outbox.push(Bytes::from(vec![0u8; 5000])), Push::Queued);
    }

    #[test]
    fn a_batch_that_finds_the_queue_empty_is_taken_whole() {
        let big = || Bytes::from(vec![0u8; 600]);
        // Five frames of 600 bytes against bounds of 3 frames and 1,000 bytes: all taken.
        let outbox = Outbox::bounded(3, 1000, SlowConsumerPolicy::Close);
        for _ in 0..5 {
            assert_eq!(outbox.push_in_batch(big(), None, 7, None).0, Push::Queued);
        }
        assert_eq!(outbox.queued_bytes(), 3000);
        // The bounds are widened by what was taken whole, no more: 1,000 bytes (plus the
        // frame that crosses them) beside it.
        assert_eq!(outbox.push(big()), Push::Queued);
        assert_eq!(outbox.push(big()), Push::Queued);
        assert_eq!(outbox.push(big()), Push::Overflowed);

        // Once drained, the bounds are the configured ones again.
        let outbox = Outbox::bounded(3, 1000, SlowConsumerPolicy::Drop);
        for _ in 0..5 {
            assert_eq!(outbox.push_in_batch(big(), None, 9, None).0, Push::Queued);
        }
        outbox.drain_into(&mut Vec::new(), usize::MAX);
        assert_eq!(outbox.room(), 3);
        assert_eq!(outbox.push(big()), Push::Queued);
        assert_eq!(outbox.push(big()), Push::Queued);
        assert_eq!(outbox.push(big()), Push::Dropped);

        // A batch that finds the client behind (its own frames over the bounds) gets no
        // exemption.
        let outbox = Outbox::bounded(10, 1000, SlowConsumerPolicy::Drop);
        outbox.push(big());
        outbox.push(big());
        assert_eq!(outbox.push_in_batch(big(), None, 10, None).0, Push::Dropped);

        // One that finds it keeping up is taken whole even if the queue is not empty.
        let outbox = Outbox::bounded(10, 1000, SlowConsumerPolicy::Drop);
        outbox.push(big());
        for _ in 0..5 {
            assert_eq!(outbox.push_in_batch(big(), None, 11, None).0, Push::Queued);
        }

        // A client that never reads cannot collect batch after batch.
        let outbox = Outbox::bounded(2, 1 << 20, SlowConsumerPolicy::Drop);
        let mut taken = 0;
        for batch in 20..100 {
            for _ in 0..3 {
                if outbox.push_in_batch(big(), None, batch, None).0 == Push::Queued {
                    taken += 1;
                }
            }
        }
        assert!(taken <= 2 + 2 * WHOLE_FACTOR + 3, "{taken} frames taken");
    }

    #[test]
    fn a_snapshot_is_taken_whole_unless_the_queue_is_over_its_bounds() {
        let small = || Bytes::from_static(b"x");
        let snapshot: Vec<Bytes> = (0..500).map(|_| small()).collect();
        let outbox = Outbox::bounded(256, 1 << 20, SlowConsumerPolicy::Close);
        outbox.push(small());
        assert_eq!(outbox.push_whole(&snapshot), Push::Queued);
        assert_eq!(outbox.len(), 501);
        // The queue still has its own 256 frames of room beside the snapshot.
        assert_eq!(outbox.room(), 255);
        for _ in 0..255 {
            assert_eq!(outbox.push(small()), Push::Queued);
        }
        // A client that reads nothing cannot make it grow snapshot by snapshot.
        assert_eq!(outbox.push_whole(&snapshot), Push::Overflowed);
        let outbox = Outbox::bounded(256, 1 << 20, SlowConsumerPolicy::Drop);
        assert_eq!(outbox.push_whole(&snapshot), Push::Queued);
        for _ in 0..256 {
            outbox.push(small());
        }
        assert_eq!(outbox.push_whole(&snapshot), Push::Dropped);
        assert_eq!(outbox.take_dropped(), 500);
        assert_eq!(outbox.len(), 756);
        // Drained, the allowance is gone.
        let mut out = Vec::new();
        while outbox.drain_into(&mut out, 100) > 0 {}
        assert_eq!(out.len(), 756);
        assert_eq!(outbox.room(), 256);
    }

    #[test]
    fn concurrent_pushes_and_drains_keep_the_counts_exact() {
        let outbox = Arc::new(Outbox::bounded(64, 64 * 100, SlowConsumerPolicy::Drop));
        let pushers: Vec<_> = (0..3)
            .map(|t| {
                let outbox = outbox.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000usize {
                        outbox.push(Bytes::from(vec![t as u8; 1 + (i % 100)]));
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        while !pushers.iter().all(|p| p.is_finished()) {
            out.clear();
            outbox.drain_into(&mut out, 16);
            assert!(outbox.len() <= 64 + 3);
            assert!(outbox.queued_bytes() <= 64 * 100 + 3 * 100);
        }
        pushers.into_iter().for_each(|p| p.join().unwrap());
        outbox.clear();
        assert_eq!((outbox.len(), outbox.queued_bytes()), (0, 0));
    }

    #[test]
    fn close_now_overrides_close_after_flush() {
        let outbox = Outbox::new(4, SlowConsumerPolicy::Close);
        outbox.close(Closing::AfterFlush(CloseCode::GOING_AWAY));
        outbox.close(Closing::Now(CloseCode::SLOW_CONSUMER));
        assert_eq!(outbox.closing(), Some(Closing::Now(CloseCode::GOING_AWAY)));
    }

    #[test]
    fn silence_after_a_ping_expires_the_client() {
        let outbox = Outbox::new(4, SlowConsumerPolicy::Close);
        assert!(!outbox.expire_if_silent(), "no ping sent yet");
        outbox.ping(frame(9));
        outbox.mark_alive();
        assert!(!outbox.expire_if_silent(), "answered");
        outbox.ping(frame(9));
        assert!(outbox.expire_if_silent());
        assert_eq!(
            outbox.closing(),
            Some(Closing::Now(CloseCode::KEEPALIVE_TIMEOUT))
        );
    }

    #[test]
    fn concurrent_pushers_keep_per_thread_order() {
        let outbox = Arc::new(Outbox::new(1 << 20, SlowConsumerPolicy::Close));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let outbox = outbox.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        outbox.push(numbered(t, i));
                    }
                })
            })
            .collect();
        let mut seen = [None::<u32>; 4];
        let mut total = 0;
        let mut out = Vec::new();
        while total < 40_000 {
            out.clear();
            outbox.drain_into(&mut out, 512);
            for f in &out {
                let i = u32::from_be_bytes(f[1..5].try_into().unwrap());
                let last = &mut seen[f[0] as usize];
                assert!(last.is_none_or(|l| l + 1 == i), "out of order");
                *last = Some(i);
                total += 1;
            }
        }
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_drain_never_waits_for_a_refused_push() {
        // A push counts itself, then takes the count back if the queue is full. A drain that
        // read the count in between must not wait for a frame that will never come.
        let outbox = Arc::new(Outbox::new(1, SlowConsumerPolicy::Drop));
        let (done, finished) = std::sync::mpsc::channel();
        let drainer = {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                let stop = Arc::new(AtomicBool::new(false));
                let pushes = Arc::new(AtomicUsize::new(0));
                let pusher = {
                    let (outbox, stop, pushes) = (outbox.clone(), stop.clone(), pushes.clone());
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            outbox.push(frame(9));
                            pushes.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                };
                let mut out = Vec::new();
                while pushes.load(Ordering::Relaxed) < 2_000_000 {
                    outbox.drain_into(&mut out, usize::MAX);
                    out.clear();
                }
                stop.store(true, Ordering::Relaxed);
                pusher.join().unwrap();
                outbox.drain_into(&mut out, usize::MAX);
                done.send(()).unwrap();
            })
        };
        finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("drain_into waited for a frame that was refused");
        drainer.join().unwrap();
        assert!(outbox.is_empty());
    }
}
