//! The slot table: client slot ids to outboxes, read lock-free by publishers.
//!
//! Subscription bitsets name clients by slot id, and ids are reused. A publisher may still
//! be walking an old bitset (loaded before a client left) when that client's slot is freed;
//! if the slot went to a new client at once, the old bitset would deliver the new client an
//! event it never subscribed to. So a freed id goes back to the free list only after an
//! epoch grace period (`crossbeam-epoch`): every publish runs pinned, and an id is reused
//! only once every publish that was running when the client left has finished.
//!
//! The same grace period keeps the outbox itself alive: a slot holds one strong reference
//! to its outbox as a raw pointer, and a release hands that reference to the deferred
//! closure that frees the id. A pinned publisher therefore reads a slot with one plain
//! load, and the outbox it finds outlives its pin.
//!
//! # Why `unsafe`
//! The slots were `ArcSwapOption`s. `arc-swap`'s default strategy has an open report of a
//! guard that observes a freed and reused value (vorner/arc-swap#210, a surviving variant of
//! #156/#164). The race test failed once in CI with that shape, and we found no other
//! explanation: a frame of one channel in the queue of a client subscribed only to
//! another, as if a publisher's guard pointed at the next client's outbox, allocated where
//! the old one had been. Epoch reclamation
//! needs no per-read reference count at all, and every reader here is already pinned, so
//! the table uses it directly: `Arc::into_raw` when a slot is filled, `Arc::from_raw` when
//! it is released or read. The three `unsafe` blocks below rest on one invariant, stated
//! at each.
//!
//! Storage is a fixed table of lazily allocated segments of [`SEGMENT`] slots, so lookups
//! never lock and an idle server holds only the segments it has used. Beside each slot's
//! outbox, a segment keeps the hub's id of the client in it (8 bytes a slot), so that the
//! control API can find a client by the id it was told ([`Slots::find`]).

#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_epoch::Guard;
use crossbeam_queue::SegQueue;

use super::outbox::Outbox;

/// Slots per segment.
pub(crate) const SEGMENT: usize = 1024;
/// Segments in the table: at most `SEGMENT * SEGMENTS` (16.7 million) clients at once.
const SEGMENTS: usize = 16 * 1024;

/// [`SEGMENT`] slots, each null or a pointer from `Arc::into_raw` that owns one strong
/// reference, and the id of the client in each (0: none).
struct Segment {
    outboxes: Box<[AtomicPtr<Outbox>]>,
    clients: Box<[AtomicU64]>,
}

impl Segment {
    fn new() -> Self {
        Self {
            outboxes: (0..SEGMENT)
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
            clients: (0..SEGMENT).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

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

/// The outbox in a slot, borrowed for as long as the reader stays pinned.
pub(crate) struct Entry<'g> {
    /// Never dropped: the reference belongs to the slot (or to its release's deferred
    /// closure), not to this entry.
    outbox: ManuallyDrop<Arc<Outbox>>,
    _pinned: PhantomData<&'g Guard>,
}

impl Deref for Entry<'_> {
    type Target = Arc<Outbox>;

    #[inline]
    fn deref(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

impl Slots {
    pub(crate) fn new() -> Self {
        Self {
            segments: (0..SEGMENTS).map(|_| OnceLock::new()).collect(),
            free: Arc::new(SegQueue::new()),
            next: AtomicU32::new(0),
        }
    }

    /// Takes a free slot and puts `outbox`, of the client with id `client` (not 0), in it.
    pub(crate) fn insert(&self, outbox: Arc<Outbox>, client: u64) -> Result<u32, SlotsExhausted> {
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
        let segment = self.segments[id as usize / SEGMENT].get_or_init(Segment::new);
        // Before the pointer: whoever loads the pointer sees the client's id.
        segment.clients[id as usize % SEGMENT].store(client, Ordering::Relaxed);
        // Release: a publisher that loads the pointer sees the outbox it points to.
        let previous = segment.outboxes[id as usize % SEGMENT]
            .swap(Arc::into_raw(outbox).cast_mut(), Ordering::AcqRel);
        debug_assert!(previous.is_null(), "slot {id} was handed out twice");
        Ok(id)
    }

    /// The outbox in slot `id`, if any, valid while `guard` stays pinned.
    #[inline]
    pub(crate) fn get<'g>(&self, id: u32, _guard: &'g Guard) -> Option<Entry<'g>> {
        let segment = self.segments.get(id as usize / SEGMENT)?.get()?;
        let raw = segment.outboxes[id as usize % SEGMENT].load(Ordering::Acquire);
        if raw.is_null() {
            return None;
        }
        // SAFETY: a non-null slot pointer came from `Arc::into_raw` and owns one strong
        // reference. That reference is dropped only by the closure `release` defers, which
        // crossbeam-epoch runs after every thread pinned when it was deferred has unpinned.
        // We are pinned (`_guard`) and loaded the pointer before `release` swapped it out,
        // so our pin precedes the deferral and the reference outlives `'g`. `ManuallyDrop`
        // keeps us from dropping a reference we do not own.
        let outbox = ManuallyDrop::new(unsafe { Arc::from_raw(raw) });
        Some(Entry {
            outbox,
            _pinned: PhantomData,
        })
    }

    /// Empties slot `id`, then, after the grace period, drops the slot's reference to its
    /// outbox and returns the id to the free list.
    ///
    /// The caller must already have removed `id` from every subscriber set.
    pub(crate) fn release(&self, id: u32) {
        let raw = match self.segments[id as usize / SEGMENT].get() {
            Some(segment) => {
                segment.clients[id as usize % SEGMENT].store(0, Ordering::Relaxed);
                segment.outboxes[id as usize % SEGMENT].swap(ptr::null_mut(), Ordering::AcqRel)
            }
            None => ptr::null_mut(),
        };
        // SAFETY: the swap took the slot's pointer, which came from `Arc::into_raw` and owns
        // one strong reference; nothing else will take it, so rebuilding the `Arc` here
        // transfers that reference to the deferred closure exactly once.
        let outbox = (!raw.is_null()).then(|| unsafe { Arc::from_raw(raw.cast_const()) });
        let free = self.free.clone();
        let guard = crossbeam_epoch::pin();
        guard.defer(move || {
            drop(outbox);
            free.push(id);
        });
        guard.flush();
    }

    /// The outbox of the client with id `client`, if it is connected, valid while `guard`
    /// stays pinned. A walk over the slots in use: for the control API, not per event.
    pub(crate) fn find<'g>(&self, client: u64, guard: &'g Guard) -> Option<Entry<'g>> {
        if client == 0 {
            return None;
        }
        let used = self.high_water() as usize;
        for (n, segment) in self.segments[..used.div_ceil(SEGMENT)].iter().enumerate() {
            let Some(segment) = segment.get() else {
                continue;
            };
            let Some(i) = segment
                .clients
                .iter()
                .position(|id| id.load(Ordering::Relaxed) == client)
            else {
                continue;
            };
            let slot = (n * SEGMENT + i) as u32;
            let entry = self.get(slot, guard)?;
            // The id is stored before its outbox's pointer: still the same id after the
            // pointer was loaded means the outbox is that client's (ids are never reused).
            return (segment.clients[i].load(Ordering::Acquire) == client).then_some(entry);
        }
        None
    }

    /// The number of ids ever handed out (the high-water mark of the table).
    pub(crate) fn high_water(&self) -> u32 {
        self.next.load(Ordering::Relaxed)
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        for segment in self.segments.iter().filter_map(OnceLock::get) {
            for slot in segment.outboxes.iter() {
                let raw = slot.swap(ptr::null_mut(), Ordering::AcqRel);
                if !raw.is_null() {
                    // SAFETY: as in `release`; `&mut self` proves no reader is left.
                    drop(unsafe { Arc::from_raw(raw.cast_const()) });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::outbox::SlowConsumerPolicy;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(4, SlowConsumerPolicy::Close))
    }

    #[test]
    fn ids_are_not_reused_while_a_publisher_is_pinned() {
        let slots = Slots::new();
        let a = slots.insert(outbox(), 1).unwrap();
        let reader = crossbeam_epoch::pin();
        slots.release(a);
        assert!(slots.get(a, &reader).is_none());
        // While `reader` stays pinned, `a` must not come back.
        for _ in 0..100 {
            let id = slots.insert(outbox(), 1).unwrap();
            assert_ne!(id, a);
        }
        drop(reader);
        // Once unpinned, the id is reused eventually.
        let reused = (0..10_000).any(|_| {
            let id = slots.insert(outbox(), 1).unwrap();
            crossbeam_epoch::pin().flush();
            let hit = id == a;
            slots.release(id);
            hit
        });
        assert!(reused);
    }

    #[test]
    fn clients_are_found_by_id_while_connected() {
        let slots = Slots::new();
        let (a, b) = (outbox(), outbox());
        let slot_a = slots.insert(a.clone(), 7).unwrap();
        slots.insert(b.clone(), 9).unwrap();
        let g = crossbeam_epoch::pin();
        assert!(Arc::ptr_eq(&slots.find(9, &g).unwrap(), &b));
        assert!(Arc::ptr_eq(&slots.find(7, &g).unwrap(), &a));
        assert!(slots.find(8, &g).is_none());
        assert!(slots.find(0, &g).is_none(), "0 names no client");
        slots.release(slot_a);
        assert!(slots.find(7, &g).is_none());
    }

    #[test]
    fn lookups_of_unused_ids_are_empty() {
        let slots = Slots::new();
        let g = crossbeam_epoch::pin();
        assert!(slots.get(5_000_000, &g).is_none());
        assert!(slots.get(u32::MAX, &g).is_none());
    }
}
