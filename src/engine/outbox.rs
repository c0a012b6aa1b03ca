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
//! At most `capacity` frames wait in the queue. A push beyond that follows the
//! [`SlowConsumerPolicy`]: `Close` marks the outbox for an immediate close with
//! [`CloseCode::SLOW_CONSUMER`] (the writer discards the queue); `Drop` discards the new frame
//! and counts it, and the writer tells the client how many it lost. Either way the publisher
//! never waits, and memory per client stays bounded.
//!
//! # Memory
//! The queue is a `SegQueue`, which allocates its blocks on first use and frees them as they
//! drain: an idle client's outbox holds no frame buffer.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use crossbeam_utils::Backoff;

use super::latency::Stamp;
use crate::config::SlowConsumerPolicy;
use crate::protocol::close::CloseCode;

const OPEN: u8 = 0;
const CLOSE_AFTER_FLUSH: u8 = 1;
const CLOSE_NOW: u8 = 2;

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
    queue: SegQueue<Bytes>,
    len: AtomicUsize,
    capacity: usize,
    policy: SlowConsumerPolicy,
    waker: AtomicWaker,
    state: AtomicU8,
    close_code: OnceLock<CloseCode>,
    dropped: AtomicU64,
    awaiting_pong: AtomicBool,
    /// The publish stamp of the event that found the queue empty (0: none); see
    /// [`super::latency`].
    since: AtomicU64,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` frames.
    pub fn new(capacity: usize, policy: SlowConsumerPolicy) -> Self {
        Self {
            queue: SegQueue::new(),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            policy,
            waker: AtomicWaker::new(),
            state: AtomicU8::new(OPEN),
            close_code: OnceLock::new(),
            dropped: AtomicU64::new(0),
            awaiting_pong: AtomicBool::new(false),
            since: AtomicU64::new(0),
        }
    }

    /// Queues `frame`, applying the slow-consumer policy when the queue is full, and wakes
    /// the writer if the queue was empty.
    #[inline]
    pub fn push(&self, frame: Bytes) -> Push {
        let (push, wake) = self.push_deferred(frame);
        if wake {
            self.wake();
        }
        push
    }

    /// Queues `frame` like [`push`](Self::push) but leaves the wake-up to the caller: when
    /// the second value is true the queue was empty, and the caller must call
    /// [`wake`](Self::wake) once it has queued the rest of its batch.
    #[inline]
    pub fn push_deferred(&self, frame: Bytes) -> (Push, bool) {
        self.enqueue(frame, None)
    }

    /// Queues an event published at `since`, like [`push_deferred`](Self::push_deferred).
    /// If it finds the queue empty, the outbox keeps `since` for the writer's latency
    /// figure ([`take_since`](Self::take_since)).
    #[inline]
    pub fn push_event(&self, frame: Bytes, since: Option<Stamp>) -> (Push, bool) {
        self.enqueue(frame, since)
    }

    #[inline]
    fn enqueue(&self, frame: Bytes, since: Option<Stamp>) -> (Push, bool) {
        if self.state.load(Ordering::Acquire) != OPEN {
            return (Push::Closed, false);
        }
        let before = self.len.fetch_add(1, Ordering::AcqRel);
        if before >= self.capacity {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return match self.policy {
                SlowConsumerPolicy::Close => {
                    self.close(Closing::Now(CloseCode::SLOW_CONSUMER));
                    (Push::Overflowed, false)
                }
                SlowConsumerPolicy::Drop => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    (Push::Dropped, false)
                }
            };
        }
        if before == 0 {
            if let Some(since) = since {
                // Before the frame is visible: a writer that pops it also sees the stamp.
                self.since.store(since.to_raw(), Ordering::Relaxed);
            }
        }
        self.queue.push(frame);
        (Push::Queued, before == 0)
    }

    /// Wakes the writer.
    #[inline]
    pub fn wake(&self) {
        self.waker.wake();
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
        self.state.load(Ordering::Acquire) != OPEN
    }

    /// The number of queued frames.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// How many more frames fit before the queue is full.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.len())
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames dropped by the `drop` policy since the last call; resets the count.
    pub fn take_dropped(&self) -> u64 {
        if self.dropped.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.dropped.swap(0, Ordering::AcqRel)
    }

    /// Ready when frames are queued or a close was requested; otherwise registers the waker.
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
        self.len.load(Ordering::Acquire) > 0
            || self.state.load(Ordering::Acquire) != OPEN
            || self.dropped.load(Ordering::Relaxed) > 0
    }

    /// Moves up to `max` queued frames into `out`, in order, and returns how many.
    ///
    /// Only the writer task calls this. A push counts itself before it enqueues, so for a
    /// few nanoseconds a counted frame may not be in the queue yet; the drain spins briefly
    /// for it rather than lose order.
    pub fn drain_into(&self, out: &mut Vec<Bytes>, max: usize) -> usize {
        let want = self.len.load(Ordering::Acquire).min(max);
        let backoff = Backoff::new();
        let mut got = 0;
        while got < want {
            match self.queue.pop() {
                Some(frame) => {
                    out.push(frame);
                    got += 1;
                }
                None => backoff.snooze(),
            }
        }
        self.len.fetch_sub(got, Ordering::AcqRel);
        got
    }

    /// The publish stamp of the oldest event drained since the last call, if an event found
    /// the queue empty; resets it. The writer calls it after [`drain_into`](Self::drain_into).
    pub fn take_since(&self) -> Option<Stamp> {
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

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("closing", &self.closing())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
                        let mut b = vec![t];
                        b.extend_from_slice(&i.to_be_bytes());
                        outbox.push(Bytes::from(b));
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
}
