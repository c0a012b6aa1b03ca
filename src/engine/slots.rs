//! The slot table: client slot ids to outboxes, read lock-free by publishers.
//!
//! Subscription bitsets name clients by slot id, and ids are reused. A publisher may still
//! be walking an old bitset (loaded before a client left) when that client's slot is freed;
//! if the slot went to a new client at once, the old bitset would deliver the new client an
//! event it never subscribed to. So a freed id goes back to the free list only after an
//! epoch grace period (`crossbeam-epoch`): every publish runs pinned, and an id is reused
//! only once every publish that was running when the client left has finished.
//!
//! Storage is a fixed table of lazily allocated segments of [`SEGMENT`] slots, so lookups
//! never lock and an idle server holds only the segments it has used.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use crossbeam_epoch::Guard;
use crossbeam_queue::SegQueue;

use super::outbox::Outbox;

/// Slots per segment.
pub const SEGMENT: usize = 1024;
/// Segments in the table: at most `SEGMENT * SEGMENTS` (16.7 million) clients at once.
const SEGMENTS: usize = 16 * 1024;

type Segment = Box<[ArcSwapOption<Outbox>]>;

pub(crate) struct Slots {
    segments: Box<[OnceLock<Segment>]>,
    /// Ids past their grace period, ready for reuse.
    free: Arc<SegQueue<u32>>,
    /// Ids never used yet start here.
    next: AtomicU32,
}

/// Every slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free client slot (the hub holds {} clients)", SEGMENT * SEGMENTS)]
pub struct SlotsExhausted;

impl Slots {
    pub(crate) fn new() -> Self {
        Self {
            segments: (0..SEGMENTS).map(|_| OnceLock::new()).collect(),
            free: Arc::new(SegQueue::new()),
            next: AtomicU32::new(0),
        }
    }

    /// Takes a free slot and puts `outbox` in it.
    pub(crate) fn insert(&self, outbox: Arc<Outbox>) -> Result<u32, SlotsExhausted> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                if id as usize >= SEGMENT * SEGMENTS {
                    self.next.fetch_sub(1, Ordering::Relaxed);
                    return Err(SlotsExhausted);
                }
                id
            }
        };
        let segment = self.segments[id as usize / SEGMENT]
            .get_or_init(|| (0..SEGMENT).map(|_| ArcSwapOption::empty()).collect());
        segment[id as usize % SEGMENT].store(Some(outbox));
        Ok(id)
    }

    /// The outbox in slot `id`, if any. Call it only while pinned (the `guard` proves it).
    #[inline]
    pub(crate) fn get(
        &self,
        id: u32,
        _guard: &Guard,
    ) -> Option<arc_swap::Guard<Option<Arc<Outbox>>>> {
        let segment = self.segments.get(id as usize / SEGMENT)?.get()?;
        Some(segment[id as usize % SEGMENT].load())
    }

    /// Empties slot `id` and returns the id to the free list after the grace period.
    ///
    /// The caller must already have removed `id` from every subscriber set.
    pub(crate) fn release(&self, id: u32) {
        if let Some(segment) = self.segments[id as usize / SEGMENT].get() {
            segment[id as usize % SEGMENT].store(None);
        }
        let free = self.free.clone();
        let guard = crossbeam_epoch::pin();
        guard.defer(move || free.push(id));
        guard.flush();
    }

    /// The number of ids ever handed out (the high-water mark of the table).
    pub(crate) fn high_water(&self) -> u32 {
        self.next.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlowConsumerPolicy;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(4, SlowConsumerPolicy::Close))
    }

    #[test]
    fn ids_are_not_reused_while_a_publisher_is_pinned() {
        let slots = Slots::new();
        let a = slots.insert(outbox()).unwrap();
        let reader = crossbeam_epoch::pin();
        slots.release(a);
        assert!(slots.get(a, &reader).unwrap().is_none());
        // While `reader` stays pinned, `a` must not come back.
        for _ in 0..100 {
            let id = slots.insert(outbox()).unwrap();
            assert_ne!(id, a);
        }
        drop(reader);
        // Once unpinned, the id is reused eventually.
        let reused = (0..10_000).any(|_| {
            let id = slots.insert(outbox()).unwrap();
            crossbeam_epoch::pin().flush();
            let hit = id == a;
            slots.release(id);
            hit
        });
        assert!(reused);
    }

    #[test]
    fn lookups_of_unused_ids_are_empty() {
        let slots = Slots::new();
        let g = crossbeam_epoch::pin();
        assert!(slots.get(5_000_000, &g).is_none());
        assert!(slots.get(u32::MAX, &g).is_none());
    }
}
