//! The outbox's frame queue: lock-free, multi-producer, single-consumer, and holding no
//! memory while it is empty and given back.
//!
//! A crossbeam `SegQueue` allocates a block of 31 slots on its first push and keeps its
//! current block for as long as it lives, empty or not: 1,248 bytes for a queue of `Bytes`,
//! plus the queue's own 256 (two cache-padded indices). An idle connection would pay both
//! for its life after its first frame (perf/README.md, "Idle memory, allocation by
//! allocation").
//!
//! So the queue here is two *generations*, each a `SegQueue` allocated on the first push
//! into it. Producers push into the generation their caller names; the caller (the outbox)
//! keeps the current generation in the same atomic word as its count of queued frames, so a
//! producer learns its generation from the very add that counts its frame. The consumer,
//! once that count is zero, moves the word to the other generation with one
//! compare-exchange: it succeeds only if no frame is counted, which means no producer is
//! between counting and pushing, and every later producer sees the new generation. The old
//! generation is then the consumer's alone, and [`Queue::release`] frees it. Producers
//! never wait: the move and the release happen beside them, not in their way.

#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use crossbeam_queue::SegQueue;

/// A generation of the queue: 0 or 1.
pub(crate) type Generation = usize;

/// Two generations of a `SegQueue`, each allocated while in use. See the [module
/// docs](self).
///
/// # Safety contract
/// [`release`](Self::release) frees a generation's queue. Its caller guarantees that no
/// [`push`](Self::push) into that generation is running and no [`Popper`] of it lives, and
/// that none starts until the release has returned (the outbox guarantees it with its
/// counted word and its drain lock). Pushes and pops rely on it.
pub(crate) struct Queue<T> {
    /// Each generation's queue, or null while it has none.
    generations: [AtomicPtr<SegQueue<T>>; 2],
    /// The queues are owned: `Queue<T>` is `Send`/`Sync` exactly when `SegQueue<T>` is.
    _owns: PhantomData<Box<SegQueue<T>>>,
}

impl<T> Queue<T> {
    /// An empty queue, holding no memory.
    pub(crate) const fn new() -> Self {
        Self {
            generations: [
                AtomicPtr::new(ptr::null_mut()),
                AtomicPtr::new(ptr::null_mut()),
            ],
            _owns: PhantomData,
        }
    }

    /// Pushes `value` into generation `generation`, allocating its queue if it has none.
    #[inline(always)]
    pub(crate) fn push(&self, generation: Generation, value: T) {
        let mut queue = self.generations[generation].load(Ordering::Acquire);
        if queue.is_null() {
            queue = self.install(generation);
        }
        // SAFETY: `queue` is a live `Box` of this generation: it was installed by a
        // compare-exchange from null, and `release` (the only place that frees it) does not
        // run while a push to this generation does (the type's contract).
        unsafe { (*queue).push(value) }
    }

    /// The first push of a generation: allocates its queue, or takes the one a concurrent
    /// first push installed.
    #[cold]
    #[inline(never)]
    fn install(&self, generation: Generation) -> *mut SegQueue<T> {
        let fresh = Box::into_raw(Box::new(SegQueue::new()));
        match self.generations[generation].compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(installed) => {
                // SAFETY: `fresh` came from `Box::into_raw` above and was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                installed
            }
        }
    }

    /// The queue of generation `generation`, for a run of pops: loaded once, and again
    /// only while it has none. [`release`](Self::release) of the generation does not run
    /// while it lives (the type's contract).
    #[inline]
    pub(crate) fn popper(&self, generation: Generation) -> Popper<'_, T> {
        Popper {
            slot: &self.generations[generation],
            queue: ptr::null_mut(),
        }
    }

    /// Frees generation `generation`'s queue (dropping anything left in it), if it has one.
    ///
    /// # Safety
    /// No [`push`](Self::push) into `generation` may be running and no [`Popper`] of it may
    /// live, and none may start before this returns.
    pub(crate) unsafe fn release(&self, generation: Generation) {
        let queue = self.generations[generation].swap(ptr::null_mut(), Ordering::AcqRel);
        if !queue.is_null() {
            // SAFETY: a non-null pointer here came from `Box::into_raw` in `install`, and
            // the swap took it out of the queue, so it is freed once; no push or popper
            // holds it (the caller's guarantee).
            drop(unsafe { Box::from_raw(queue) });
        }
    }

    /// Whether generation `generation` holds an allocated queue.
    pub(crate) fn is_allocated(&self, generation: Generation) -> bool {
        !self.generations[generation]
            .load(Ordering::Acquire)
            .is_null()
    }
}

/// Pops from one generation of a [`Queue`]; see [`Queue::popper`].
pub(crate) struct Popper<'a, T> {
    slot: &'a AtomicPtr<SegQueue<T>>,
    /// The generation's queue once loaded non-null.
    queue: *mut SegQueue<T>,
}

impl<T> Popper<'_, T> {
    /// Pops the oldest value, if the generation holds one.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.queue.is_null() {
            self.queue = self.slot.load(Ordering::Acquire);
            if self.queue.is_null() {
                return None;
            }
        }
        // SAFETY: `self.queue` was loaded non-null from the generation's slot, so it is a
        // live `Box` from `install`, and `release` (the only place that frees it) does not
        // run while a popper of the generation lives (the type's contract).
        unsafe { (*self.queue).pop() }
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        for generation in 0..2 {
            // SAFETY: `&mut self`: nothing else can push, and no popper (which borrows the
            // queue) lives.
            unsafe { self.release(generation) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_generation_is_allocated_on_first_push_and_freed_on_release() {
        let queue = Queue::new();
        assert!(!queue.is_allocated(0) && !queue.is_allocated(1));
        assert_eq!(queue.popper(0).pop(), None);
        let mut zero = queue.popper(0);
        queue.push(0, 1);
        queue.push(0, 2);
        assert!(queue.is_allocated(0) && !queue.is_allocated(1));
        assert_eq!(
            (zero.pop(), zero.pop(), zero.pop()),
            (Some(1), Some(2), None)
        );
        // SAFETY: this thread alone uses the queue.
        unsafe { queue.release(0) };
        assert!(!queue.is_allocated(0));
        queue.push(1, 3);
        assert_eq!(queue.popper(1).pop(), Some(3));
        assert_eq!(queue.popper(0).pop(), None);
    }

    #[test]
    fn values_left_in_a_released_or_dropped_queue_are_dropped() {
        let value = Arc::new(());
        let queue = Queue::new();
        queue.push(0, value.clone());
        queue.push(1, value.clone());
        // SAFETY: this thread alone uses the queue.
        unsafe { queue.release(0) };
        assert_eq!(Arc::strong_count(&value), 2);
        drop(queue);
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[test]
    fn concurrent_first_pushes_share_one_queue() {
        for _ in 0..200 {
            let queue = Arc::new(Queue::new());
            let pushers: Vec<_> = (0..4)
                .map(|t| {
                    let queue = queue.clone();
                    std::thread::spawn(move || queue.push(0, t))
                })
                .collect();
            pushers.into_iter().for_each(|p| p.join().unwrap());
            let mut popper = queue.popper(0);
            let mut got: Vec<i32> = std::iter::from_fn(|| popper.pop()).collect();
            got.sort_unstable();
            assert_eq!(got, [0, 1, 2, 3]);
        }
    }
}
