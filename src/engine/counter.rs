//! A counter for hot paths: each thread adds to its own cache-padded shard, so writers on
//! different threads never contend for a cache line; reading sums the shards.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Number of shards; threads beyond it share shards round-robin.
pub(crate) const SHARDS: usize = 16;

/// A monotonic `u64` counter, sharded by thread.
#[derive(Debug)]
pub(crate) struct ShardedCounter {
    shards: Box<[CachePadded<AtomicU64>; SHARDS]>,
}

impl Default for ShardedCounter {
    fn default() -> Self {
        Self {
            shards: Box::new(std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0)))),
        }
    }
}

/// This thread's shard index.
#[inline]
pub(crate) fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl ShardedCounter {
    /// Adds `n` on this thread's shard.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.shards[shard()].fetch_add(n, Ordering::Relaxed);
    }

    /// The total so far.
    pub(crate) fn get(&self) -> u64 {
        self.shards.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_what_every_thread_added() {
        let counter = std::sync::Arc::new(ShardedCounter::default());
        let threads: Vec<_> = (0..20)
            .map(|i| {
                let c = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.get(), (0..20).sum::<u64>() * 1000);
    }
}
