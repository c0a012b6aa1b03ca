//! An immutable, chunked bitset of client slots: one channel's subscribers.
//!
//! A channel's subscriber set is read by every publish and changed by every subscribe and
//! unsubscribe. Readers load it through an `ArcSwap` without locking; writers build a new set
//! and swap it in. To keep a change cheap at 100k+ clients, the set is split into chunks of
//! [`CHUNK_BITS`] slots, each behind its own `Arc`: a change copies the one chunk it touches
//! (512 bytes) and the chunk pointer table (one pointer per 4096 slots), and shares every
//! other chunk with the previous version.

use std::sync::Arc;

/// Slots per chunk.
pub(crate) const CHUNK_BITS: usize = 4096;
const WORDS: usize = CHUNK_BITS / 64;

#[derive(Clone)]
struct Chunk {
    words: [u64; WORDS],
    len: u32,
}

impl Chunk {
    const EMPTY: Chunk = Chunk {
        words: [0; WORDS],
        len: 0,
    };
}

/// A set of slot ids. Cloning shares all chunks.
#[derive(Clone, Default)]
pub(crate) struct SubscriberSet {
    chunks: Vec<Option<Arc<Chunk>>>,
    len: usize,
}

fn locate(slot: u32) -> (usize, usize, u64) {
    let slot = slot as usize;
    let chunk = slot / CHUNK_BITS;
    let bit = slot % CHUNK_BITS;
    (chunk, bit / 64, 1u64 << (bit % 64))
}

impl SubscriberSet {
    /// The number of slots in the set.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `slot` is in the set.
    pub(crate) fn contains(&self, slot: u32) -> bool {
        let (c, w, mask) = locate(slot);
        matches!(self.chunks.get(c), Some(Some(chunk)) if chunk.words[w] & mask != 0)
    }

    /// A new set with `slot` added, or `None` if it was already there.
    pub(crate) fn with(&self, slot: u32) -> Option<SubscriberSet> {
        if self.contains(slot) {
            return None;
        }
        let (c, w, mask) = locate(slot);
        let mut chunks = self.chunks.clone();
        if chunks.len() <= c {
            chunks.resize(c + 1, None);
        }
        let mut chunk = chunks[c].as_deref().cloned().unwrap_or(Chunk::EMPTY);
        chunk.words[w] |= mask;
        chunk.len += 1;
        chunks[c] = Some(Arc::new(chunk));
        Some(SubscriberSet {
            chunks,
            len: self.len + 1,
        })
    }

    /// A new set with `slot` removed, or `None` if it was not there.
    pub(crate) fn without(&self, slot: u32) -> Option<SubscriberSet> {
        if !self.contains(slot) {
            return None;
        }
        let (c, w, mask) = locate(slot);
        let mut chunks = self.chunks.clone();
        let mut chunk = chunks[c]
            .as_deref()
            .cloned()
            .expect("contains() saw this chunk");
        chunk.words[w] &= !mask;
        chunk.len -= 1;
        chunks[c] = (chunk.len > 0).then(|| Arc::new(chunk));
        while matches!(chunks.last(), Some(None)) {
            chunks.pop();
        }
        Some(SubscriberSet {
            chunks,
            len: self.len - 1,
        })
    }

    /// Calls `f` with every slot in the set, in ascending order.
    #[inline]
    pub(crate) fn for_each(&self, mut f: impl FnMut(u32)) {
        for (c, chunk) in self.chunks.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            let base = (c * CHUNK_BITS) as u32;
            for (w, &word) in chunk.words.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let bit = bits.trailing_zeros();
                    f(base + (w as u32) * 64 + bit);
                    bits &= bits - 1;
                }
            }
        }
    }

    /// The slots in the set, in ascending order.
    pub(crate) fn to_vec(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len);
        self.for_each(|s| out.push(s));
        out
    }
}

impl std::fmt::Debug for SubscriberSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.to_vec()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Add(u32),
        Remove(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Slots cluster near chunk boundaries and spread over several chunks.
        let slot = prop_oneof![0u32..200, 4000u32..4200, 0u32..40_000];
        prop_oneof![slot.clone().prop_map(Op::Add), slot.prop_map(Op::Remove)]
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec(op(), 0..300)) {
            let mut model = BTreeSet::new();
            let mut set = SubscriberSet::default();
            let mut versions = Vec::new();
            for op in ops {
                versions.push((set.clone(), model.clone()));
                match op {
                    Op::Add(s) => {
                        let changed = set.with(s);
                        prop_assert_eq!(changed.is_some(), model.insert(s));
                        if let Some(new) = changed { set = new; }
                    }
                    Op::Remove(s) => {
                        let changed = set.without(s);
                        prop_assert_eq!(changed.is_some(), model.remove(&s));
                        if let Some(new) = changed { set = new; }
                    }
                }
                prop_assert_eq!(set.len(), model.len());
                prop_assert_eq!(set.to_vec(), model.iter().copied().collect::<Vec<_>>());
            }
            // Copy-on-write: no older version was changed by a later operation.
            for (old, old_model) in versions {
                prop_assert_eq!(old.to_vec(), old_model.into_iter().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn a_change_shares_untouched_chunks() {
        let mut set = SubscriberSet::default();
        for s in [1, 5000, 9000] {
            set = set.with(s).unwrap();
        }
        let next = set.with(2).unwrap();
        assert!(Arc::ptr_eq(
            set.chunks[1].as_ref().unwrap(),
            next.chunks[1].as_ref().unwrap()
        ));
        assert!(!Arc::ptr_eq(
            set.chunks[0].as_ref().unwrap(),
            next.chunks[0].as_ref().unwrap()
        ));
    }

    #[test]
    fn empty_trailing_chunks_are_released() {
        let set = SubscriberSet::default().with(10_000).unwrap();
        let empty = set.without(10_000).unwrap();
        assert!(empty.chunks.is_empty());
        assert!(empty.is_empty());
    }
}
