//! The layerinfo cache: blob descriptors and repository links, kept in memory so that a
//! blob stat (an HTTP `HEAD`) that hits makes no backend request.
//!
//! # What it may and may not do
//!
//! Only [`crate::Repository::stat_blob`] and [`crate::Repository::blob_exists`] answer from
//! the cache. The store fills it when a stat reads the backend, and when a push, a commit or
//! a mount links a blob, so the first `HEAD` after a push makes no backend request. Everything that could expose or rely on bytes asks the backend: a read checks
//! the link and fetches the bytes from the backend (and a missing object evicts the entry), a
//! mount checks the source repository in the backend, and a push checks the backend for the
//! bytes before it skips writing them. So the cache can never make a deleted blob
//! downloadable, nor let a push skip data the backend lacks. Failed lookups are never cached.
//!
//! # Staleness
//!
//! Within one [`crate::Store`], unlinking a blob invalidates its entry at once, and a stat
//! or a push racing the unlink cannot put it back once the unlink returned (see
//! [`BlobDescriptorCache::generation`]). Stores that
//! share a backend (replicas) do not tell each other: a positive entry in one replica can
//! outlive an unlink made through another by at most the cache's time-to-live, during which
//! that replica's `HEAD` may still say the blob is there (its `GET` will not serve it).
//! With the default TTL that window is one minute.
//!
//! Garbage collection is stricter: every store clears its cache when it sees a new GC
//! generation (it reads the GC state at most two seconds before it answers from the cache),
//! and while a run is in progress a hit is pinned before it is answered, so no store answers
//! "exists" for a blob a run deleted (see `docs/storage.md`, "Garbage collection"). A store
//! that cannot read the GC state answers nothing from its cache.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache;

use crate::digest::Digest;
use crate::name::RepositoryName;

/// Where a blob's bytes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobPlacement {
    /// One object.
    Object,
    /// Segments of an upload, listed by an index object.
    Segments,
}

/// What the cache knows about a blob the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedBlob {
    pub size: u64,
    pub placement: BlobPlacement,
}

impl CachedBlob {
    /// A blob kept as one object of `size` bytes.
    pub fn object(size: u64) -> Self {
        Self {
            size,
            placement: BlobPlacement::Object,
        }
    }

    /// A blob of `size` bytes kept as the segments of an upload.
    pub fn segments(size: u64) -> Self {
        Self {
            size,
            placement: BlobPlacement::Segments,
        }
    }
}

/// Counters of a cache, since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// A blob-descriptor cache. The in-memory [`MemoryCache`] is the default; a shared cache
/// (Redis, say) implements this trait and is passed to [`crate::Store::with_cache`].
#[async_trait]
pub trait BlobDescriptorCache: Send + Sync + fmt::Debug {
    /// The blob's descriptor, if cached.
    async fn blob(&self, digest: &Digest) -> Option<CachedBlob>;
    /// Records a blob the backend was just seen to hold, or was just given.
    async fn insert_blob(&self, digest: &Digest, blob: CachedBlob);
    /// Forgets a blob (its bytes were found missing or deleted).
    async fn remove_blob(&self, digest: &Digest);
    /// Whether the blob is known to be linked into the repository (`false`: not known).
    async fn linked(&self, repository: &RepositoryName, digest: &Digest) -> bool;
    /// Records a link the backend was just seen to have, or was just given.
    async fn insert_link(&self, repository: &RepositoryName, digest: &Digest);
    /// Forgets a link (it was removed).
    async fn remove_link(&self, repository: &RepositoryName, digest: &Digest);
    /// Forgets every entry (a garbage collection run may have deleted any of them); changes
    /// the generation like a removal.
    async fn clear(&self);
    /// Hit, miss and eviction counters.
    fn stats(&self) -> CacheStats;
    /// A number that changes (before the entry goes) whenever an entry is removed. A filler
    /// that read the backend inserts, then compares this with what it was before the read,
    /// and removes what it inserted if it changed: so a fill that raced a removal never
    /// leaves behind an entry the removal meant to drop.
    fn generation(&self) -> u64;
}

/// Settings of the in-memory cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryCacheConfig {
    /// Most entries kept, blobs and links each.
    pub capacity: u64,
    /// How long an entry lives; bounds staleness between replicas (see the module docs).
    pub time_to_live: Duration,
}

impl Default for MemoryCacheConfig {
    /// 100,000 entries of each kind take roughly 30 MB and cover the hot layers of a large
    /// registry; one minute bounds cross-replica staleness while keeping hot `HEAD`s free.
    fn default() -> Self {
        Self {
            capacity: 100_000,
            time_to_live: Duration::from_secs(60),
        }
    }
}

/// The default cache: two bounded moka caches with a time-to-live.
pub struct MemoryCache {
    blobs: Cache<Digest, CachedBlob>,
    links: Cache<(RepositoryName, Digest), ()>,
    counters: Arc<Counters>,
    removals: AtomicU64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl Counters {
    fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::metrics::cache_lookup(hit);
    }
}

/// Counts evictions (capacity or expiry); explicit removals are invalidations, not evictions.
fn eviction_counter<K, V>(
    counters: Arc<Counters>,
) -> impl Fn(Arc<K>, V, moka::notification::RemovalCause) + Send + Sync + 'static {
    move |_key, _value, cause| {
        if cause.was_evicted() {
            counters.evictions.fetch_add(1, Ordering::Relaxed);
            crate::metrics::cache_evicted();
        }
    }
}

impl fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCache")
            .field("blobs", &self.blobs.entry_count())
            .field("links", &self.links.entry_count())
            .field("stats", &self.stats())
            .finish()
    }
}

impl MemoryCache {
    /// A cache with these settings.
    #[must_use]
    pub fn new(config: MemoryCacheConfig) -> Self {
        let counters = Arc::new(Counters::default());
        let blobs = Cache::builder()
            .max_capacity(config.capacity)
            .time_to_live(config.time_to_live)
            .eviction_listener(eviction_counter(counters.clone()))
            .build();
        let links = Cache::builder()
            .max_capacity(config.capacity)
            .time_to_live(config.time_to_live)
            .eviction_listener(eviction_counter(counters.clone()))
            .build();
        Self {
            blobs,
            links,
            counters,
            removals: AtomicU64::new(0),
        }
    }

    /// Runs moka's pending maintenance (evictions are otherwise applied lazily); for tests
    /// and metrics that need exact counts.
    pub async fn run_pending_tasks(&self) {
        self.blobs.run_pending_tasks().await;
        self.links.run_pending_tasks().await;
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new(MemoryCacheConfig::default())
    }
}

#[async_trait]
impl BlobDescriptorCache for MemoryCache {
    async fn blob(&self, digest: &Digest) -> Option<CachedBlob> {
        let found = self.blobs.get(digest).await;
        self.counters.count(found.is_some());
        found
    }

    async fn insert_blob(&self, digest: &Digest, blob: CachedBlob) {
        self.blobs.insert(*digest, blob).await;
    }

    async fn remove_blob(&self, digest: &Digest) {
        self.removals.fetch_add(1, Ordering::SeqCst);
        self.blobs.invalidate(digest).await;
    }

    async fn linked(&self, repository: &RepositoryName, digest: &Digest) -> bool {
        let found = self.links.contains_key(&(repository.clone(), *digest));
        self.counters.count(found);
        found
    }

    async fn insert_link(&self, repository: &RepositoryName, digest: &Digest) {
        self.links.insert((repository.clone(), *digest), ()).await;
    }

    async fn remove_link(&self, repository: &RepositoryName, digest: &Digest) {
        self.removals.fetch_add(1, Ordering::SeqCst);
        self.links.invalidate(&(repository.clone(), *digest)).await;
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
        }
    }

    async fn clear(&self) {
        self.removals.fetch_add(1, Ordering::SeqCst);
        self.blobs.invalidate_all();
        self.links.invalidate_all();
    }

    fn generation(&self) -> u64 {
        self.removals.load(Ordering::SeqCst)
    }
}
