//! The mark set: which blobs garbage collection keeps, in 8 bytes per blob.
//!
//! Each digest is stored as a 64-bit keyed hash (SipHash with keys drawn at random for each
//! set), in a sorted vector. Two digests can share a hash; then the set answers "marked" for
//! a blob that is not, and that blob is kept for one more run. That errs on the safe side
//! only, and as the keys change with every run a blob is never kept twice for that reason
//! except with negligible probability (about n²/2⁶⁵ for n blobs: 3·10⁻⁸ for a million).
//! Why not a hash set of digests: 32 bytes of digest plus table overhead per blob is about
//! 6× the memory, and a bloom filter would need its size before the count is known.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::digest::Digest;

/// A set of digests in 8 bytes each once sealed (16 at most while it grows), with false
/// positives only.
#[derive(Debug)]
pub struct MarkSet {
    hasher: RandomState,
    /// Sorted and free of duplicates up to `sorted`; unsorted after it.
    hashes: Vec<u64>,
    sorted: usize,
}

impl Default for MarkSet {
    fn default() -> Self {
        Self::new()
    }
}

impl MarkSet {
    /// An empty set with fresh random keys.
    #[must_use]
    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            hashes: Vec::new(),
            sorted: 0,
        }
    }

    fn hash(&self, digest: &Digest) -> u64 {
        self.hasher.hash_one(digest.as_bytes())
    }

    /// Adds a digest.
    pub fn insert(&mut self, digest: &Digest) {
        let h = self.hash(digest);
        self.hashes.push(h);
        // Compact when the unsorted tail is as long as the sorted part: amortized
        // O(log n) per insert, and the vector never grows past twice the distinct count.
        if self.hashes.len() - self.sorted >= self.sorted.max(1024) {
            self.compact();
        }
    }

    fn compact(&mut self) {
        self.hashes.sort_unstable();
        self.hashes.dedup();
        self.sorted = self.hashes.len();
        // Room for exactly one tail as long as the sorted part: no reallocation until the
        // next compaction.
        let capacity = self.sorted + self.sorted.max(1024);
        self.hashes.shrink_to(capacity);
        self.hashes.reserve_exact(capacity - self.sorted);
    }

    /// Sorts what was added; call once marking is done, before the lookups.
    pub fn seal(&mut self) {
        self.compact();
        self.hashes.shrink_to_fit();
    }

    /// Whether the digest was added (or, rarely, shares its hash with one that was).
    #[must_use]
    pub fn contains(&self, digest: &Digest) -> bool {
        let h = self.hash(digest);
        self.hashes[..self.sorted].binary_search(&h).is_ok()
            || self.hashes[self.sorted..].contains(&h)
    }

    /// Distinct entries (after [`Self::seal`]; before it, an upper bound).
    #[must_use]
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether nothing was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Bytes of memory the set holds.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.hashes.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u64) -> Digest {
        Digest::sha256(&i.to_le_bytes())
    }

    #[test]
    fn every_added_digest_is_found_before_and_after_sealing() {
        let mut set = MarkSet::new();
        for i in 0..5000 {
            set.insert(&digest(i));
            set.insert(&digest(i / 2));
        }
        for i in 0..5000 {
            assert!(set.contains(&digest(i)), "{i} before seal");
        }
        set.seal();
        assert_eq!(set.len(), 5000);
        for i in 0..5000 {
            assert!(set.contains(&digest(i)), "{i} after seal");
        }
    }

    #[test]
    fn digests_never_added_are_not_found() {
        let mut set = MarkSet::new();
        for i in 0..10_000 {
            set.insert(&digest(i));
        }
        set.seal();
        // A false positive needs a 64-bit hash collision: none expected in 10,000 probes.
        assert!((10_000..20_000).all(|i| !set.contains(&digest(i))));
    }

    #[test]
    fn a_million_blobs_take_eight_megabytes() {
        let mut set = MarkSet::new();
        for i in 0..1_000_000 {
            set.insert(&digest(i));
        }
        set.seal();
        assert_eq!(set.len(), 1_000_000);
        assert_eq!(set.memory_bytes(), 8_000_000);
    }
}
