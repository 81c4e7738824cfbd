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
//! [`BlobDescriptorCache::fill`]). Stores that share a backend (replicas) with in-memory
//! caches do not tell each other: a positive entry in one replica can outlive an unlink made
//! through another by at most the cache's time-to-live, during which that replica's `HEAD`
//! may still say the blob is there (its `GET` will not serve it). With the default TTL that
//! window is one minute. Replicas sharing a [`RedisCache`] have no such window: the unlink
//! removes the entry for all of them before the link goes, and fills that raced it are
//! refused by Redis (see the `redis` module). A Redis that cannot be told of an unlink makes
//! it fail before anything changes.
//!
//! Garbage collection is stricter: every store clears its cache when it sees a new GC
//! generation (it reads the GC state at most two seconds before it answers from the cache;
//! a shared cache is cleared once per generation, see
//! [`BlobDescriptorCache::gc_generation_seen`]),
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

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use self::redis::{REDIS_OPERATIONS, RedisCache, RedisCacheConfig};

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

/// What a cache noted before the store read the backend, to tell at [`BlobDescriptorCache::fill`]
/// whether anything was removed since (then the fill may undo that removal, and is dropped).
/// Opaque to the store; each cache puts in it what it needs.
pub struct FillGuard(Box<dyn std::any::Any + Send + Sync>);

impl FillGuard {
    /// A guard holding `token`.
    pub fn new<T: std::any::Any + Send + Sync>(token: T) -> Self {
        Self(Box::new(token))
    }

    /// The token, if it is a `T`.
    #[must_use]
    pub fn token<T: std::any::Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl fmt::Debug for FillGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FillGuard")
    }
}

/// A removal the cache could not make (a shared cache that cannot be reached): the caller
/// must not change what the entry describes, or other replicas may keep seeing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the blob-descriptor cache could not remove an entry: {reason}")]
pub struct CacheError {
    pub reason: String,
}

/// A blob-descriptor cache. The in-memory [`MemoryCache`] is the default; a shared cache
/// ([`RedisCache`] with the `redis` feature) is passed to [`crate::Store::with_cache`].
///
/// Lookups and fills never fail: a cache that cannot answer misses (the store asks the
/// backend) and a fill it cannot make is dropped. Only [`Self::remove_link`] reports a
/// failure, because the store must then not delete the link (see the module docs).
#[async_trait]
pub trait BlobDescriptorCache: Send + Sync + fmt::Debug {
    /// The blob's descriptor, if cached.
    async fn blob(&self, digest: &Digest) -> Option<CachedBlob>;
    /// Whether the blob is known to be linked into the repository (`false`: not known).
    async fn linked(&self, repository: &RepositoryName, digest: &Digest) -> bool;
    /// The blob's descriptor if it is cached and known to be linked into the repository: a
    /// `HEAD`'s lookup. A shared cache answers it in one round trip; counts like
    /// [`Self::linked`] followed, if linked, by [`Self::blob`].
    async fn linked_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Option<CachedBlob> {
        if self.linked(repository, digest).await {
            self.blob(digest).await
        } else {
            None
        }
    }
    /// Taken before the store reads (or writes) in the backend what it will
    /// [`Self::fill`] the cache with.
    async fn fill_guard(&self, repository: &RepositoryName, digest: &Digest) -> FillGuard;
    /// Records that the blob is linked into the repository and described by `blob`, unless
    /// the link or the blob was removed, or the cache cleared, since `guard` was taken: so a
    /// fill that raced a removal (in any replica sharing the cache) never leaves behind an
    /// entry the removal meant to drop.
    async fn fill(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        blob: CachedBlob,
        guard: FillGuard,
    );
    /// Forgets a blob (its bytes were found missing or deleted).
    async fn remove_blob(&self, digest: &Digest);
    /// Forgets a link (it is being removed, or was).
    ///
    /// # Errors
    /// The cache could not be told (a shared cache that is down).
    async fn remove_link(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<(), CacheError>;
    /// Forgets every entry (a garbage collection run may have deleted any of them); a fill
    /// guarded from before is dropped.
    async fn clear(&self);
    /// The store saw GC generation `generation` for the first time since it started, or
    /// saw it change: what the cache holds may predate a run that deleted it. The default
    /// clears; a shared cache clears once per generation whichever replica calls first.
    async fn gc_generation_seen(&self, generation: u64) {
        let _ = generation;
        self.clear().await;
    }
    /// Hit, miss and eviction counters.
    fn stats(&self) -> CacheStats;
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

/// The memory cache's [`FillGuard`] token: its removal count when the guard was taken.
struct Removals(u64);

#[async_trait]
impl BlobDescriptorCache for MemoryCache {
    async fn blob(&self, digest: &Digest) -> Option<CachedBlob> {
        let found = self.blobs.get(digest).await;
        self.counters.count(found.is_some());
        found
    }

    async fn linked(&self, repository: &RepositoryName, digest: &Digest) -> bool {
        let found = self.links.contains_key(&(repository.clone(), *digest));
        self.counters.count(found);
        found
    }

    async fn fill_guard(&self, _repository: &RepositoryName, _digest: &Digest) -> FillGuard {
        FillGuard::new(Removals(self.removals.load(Ordering::SeqCst)))
    }

    /// Inserts, then drops what it inserted if anything was removed since the guard: a
    /// removal changes the count before its entry goes, so one of the two sees the other.
    async fn fill(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        blob: CachedBlob,
        guard: FillGuard,
    ) {
        let Some(&Removals(before)) = guard.token::<Removals>() else {
            return;
        };
        let link = (repository.clone(), *digest);
        self.links.insert(link.clone(), ()).await;
        self.blobs.insert(*digest, blob).await;
        if self.removals.load(Ordering::SeqCst) != before {
            self.links.invalidate(&link).await;
            self.blobs.invalidate(digest).await;
        }
    }

    async fn remove_blob(&self, digest: &Digest) {
        self.removals.fetch_add(1, Ordering::SeqCst);
        self.blobs.invalidate(digest).await;
    }

    async fn remove_link(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        self.removals.fetch_add(1, Ordering::SeqCst);
        self.links.invalidate(&(repository.clone(), *digest)).await;
        Ok(())
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
}
