//! The layerinfo cache: hits cost no backend request, and the cache never serves what the
//! backend no longer has. The shared behaviours run on every backend with the in-memory
//! cache (`memory_cache::...`) and with the Redis cache (`redis_cache::...`, skipped without
//! `LAYERSTORE_TEST_REDIS` except under `CI=true`); what only one cache does is tested on it
//! alone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use layerstore::cache::{
    BlobDescriptorCache, CacheError, CacheStats, CachedBlob, FillGuard, MemoryCache,
    MemoryCacheConfig, RedisCacheConfig,
};
use layerstore::layout::KeyLayout;
use layerstore::{Backend, Digest, ErrorKind, RepositoryName, Store};
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::Notify;

fn cached_store(objects: Arc<dyn ObjectStore>, ttl: Duration) -> Store {
    let cache = MemoryCache::new(MemoryCacheConfig {
        capacity: 1000,
        time_to_live: ttl,
    });
    Store::with_cache(Backend::object_store(objects), Some(Arc::new(cache)))
}

/// Which cache a shared test runs with; each [`Caches::cache`] is a new, empty one.
#[derive(Debug, Clone)]
enum Caches {
    Memory,
    Redis(RedisCacheConfig),
}

impl Caches {
    fn cache(&self) -> Arc<dyn BlobDescriptorCache> {
        match self {
            Self::Memory => Arc::new(MemoryCache::new(MemoryCacheConfig {
                capacity: 1000,
                time_to_live: Duration::from_secs(600),
            })),
            Self::Redis(config) => common::redis::redis_cache(&RedisCacheConfig {
                key_prefix: format!("t-{:016x}", rand::random::<u64>()),
                ..config.clone()
            }),
        }
    }

    /// A store over `objects` with a new cache of this kind.
    fn store(&self, objects: Arc<dyn ObjectStore>) -> Store {
        Store::with_cache(Backend::object_store(objects), Some(self.cache()))
    }

    /// [`counting_store_on`] with a new cache of this kind.
    fn counting_store_on(&self, b: &TestBackend) -> (Store, Arc<CountingStore>) {
        counting_store_with_cache(b, Some(self.cache()))
    }
}

/// For each `async fn name(b: TestBackend, c: Caches)`: `memory_cache::<backend>::name` and
/// `redis_cache::<backend>::name` for every backend kind.
macro_rules! cache_tests {
    ($($test:ident),+ $(,)?) => {
        mod memory_cache {
            use super::*;
            $(
                async fn $test(b: TestBackend) {
                    super::$test(b, Caches::Memory).await;
                }
            )+
            backend_tests!($($test),+);
        }
        mod redis_cache {
            use super::*;
            $(
                async fn $test(b: TestBackend) {
                    if let Some(config) = common::redis::redis_config() {
                        super::$test(b, Caches::Redis(config)).await;
                    }
                }
            )+
            backend_tests!($($test),+);
        }
    };
}

async fn pushed(store: &Store, name: &str, content: &'static [u8]) -> Digest {
    let d = Digest::sha256(content);
    store
        .repository(repo(name))
        .put_blob(&d, Bytes::from_static(content))
        .await
        .unwrap();
    d
}

async fn a_cached_stat_makes_no_backend_request(b: TestBackend, c: Caches) {
    let counting = b.counting();
    let store = c.store(counting.clone());
    let d = pushed(&store, "app", b"hot layer").await;
    let r = store.repository(repo("app"));
    r.stat_blob(&d).await.unwrap(); // fills the cache
    counting.reset();
    for _ in 0..10 {
        assert_eq!(r.stat_blob(&d).await.unwrap().size, 9);
        assert!(r.blob_exists(&d).await.unwrap());
    }
    assert_eq!(
        counting.snapshot().requests(),
        0,
        "{:?}",
        counting.snapshot()
    );
}

async fn a_miss_fills_the_cache_and_the_counters_show_it(b: TestBackend, c: Caches) {
    let store = c.store(b.store.clone());
    let writer = Store::with_cache(Backend::object_store(b.store.clone()), None);
    let d = pushed(&writer, "app", b"layer").await;
    let r = store.repository(repo("app"));
    r.stat_blob(&d).await.unwrap();
    let after_miss = store.cache_stats().unwrap();
    assert!(after_miss.misses >= 1);
    r.stat_blob(&d).await.unwrap();
    let after_hit = store.cache_stats().unwrap();
    assert_eq!(after_hit.misses, after_miss.misses);
    assert_eq!(after_hit.hits, after_miss.hits + 2); // the link and the descriptor
}

async fn a_failed_lookup_is_not_cached(b: TestBackend, c: Caches) {
    let store = c.store(b.store.clone());
    let other = Store::with_cache(Backend::object_store(b.store.clone()), None);
    let d = Digest::sha256(b"arrives later");
    let r = store.repository(repo("app"));
    assert_eq!(
        r.stat_blob(&d).await.unwrap_err().kind(),
        ErrorKind::BlobUnknown
    );
    pushed(&other, "app", b"arrives later").await;
    assert_eq!(r.stat_blob(&d).await.unwrap().size, 13);
}

async fn unlinking_a_blob_invalidates_its_entry(b: TestBackend, c: Caches) {
    let store = c.store(b.store.clone());
    let d = pushed(&store, "app", b"soon gone").await;
    let r = store.repository(repo("app"));
    r.stat_blob(&d).await.unwrap();
    r.unlink_blob(&d).await.unwrap();
    assert_eq!(
        r.stat_blob(&d).await.unwrap_err().kind(),
        ErrorKind::BlobUnknown
    );
    assert!(!r.blob_exists(&d).await.unwrap());
}

/// A stat that read the backend before a concurrent unlink, and fills the cache after the
/// unlink returned, must not leave the unlinked blob cached as present.
async fn a_stat_racing_an_unlink_leaves_no_entry_behind(b: TestBackend, c: Caches) {
    let faulty = b.faulty();
    let store = c.store(faulty.clone());
    // Pushed through another store, so this one's cache does not know it from the push.
    let writer = Store::with_cache(Backend::object_store(faulty.clone()), None);
    let d = pushed(&writer, "app", b"raced").await;
    let r = store.repository(repo("app"));
    // A stat reads the GC state first (then at most every two seconds): have that read made
    // now, so that the pause below falls between the link read and the data read, where the
    // stat has seen the link and will fill the cache after the unlink removed it.
    let _ = r.stat_blob(&Digest::sha256(b"not pushed")).await;
    // The uncached stat reads the link, then the blob's data object; hold it at the second.
    let before = faulty.reads_seen();
    faulty.pause_read_at(before + 2);
    let stat = {
        let r = r.clone();
        tokio::spawn(async move { r.stat_blob(&d).await })
    };
    while !faulty.paused() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    r.unlink_blob(&d).await.unwrap();
    faulty.release();
    // Concurrent with the unlink, the stat may answer either way...
    let _ = stat.await.unwrap();
    // ...but once both returned, the blob is gone, also for the cache.
    assert_eq!(
        r.stat_blob(&d).await.unwrap_err().kind(),
        ErrorKind::BlobUnknown
    );
}

async fn a_read_of_a_blob_deleted_behind_the_cache_fails_and_evicts_it(b: TestBackend, c: Caches) {
    let store = c.store(b.store.clone());
    let d = pushed(&store, "app", b"deleted by gc").await;
    let r = store.repository(repo("app"));
    r.stat_blob(&d).await.unwrap();
    b.store.delete(&KeyLayout.blob_data(&d)).await.unwrap();
    assert_eq!(
        r.read_blob(&d, None).await.unwrap_err().kind(),
        ErrorKind::BlobUnknown
    );
    // The failed read evicted the entry: the stat asks the backend again.
    assert_eq!(
        r.stat_blob(&d).await.unwrap_err().kind(),
        ErrorKind::BlobUnknown
    );
}

async fn a_mount_never_trusts_the_cache(b: TestBackend, c: Caches) {
    let store = c.store(b.store.clone());
    let d = pushed(&store, "src", b"mountable").await;
    store.repository(repo("src")).stat_blob(&d).await.unwrap();
    // Another replica unlinks it from the source repository.
    let replica = Store::with_cache(Backend::object_store(b.store.clone()), None);
    replica
        .repository(repo("src"))
        .unlink_blob(&d)
        .await
        .unwrap();
    let mounted = store
        .repository(repo("dst"))
        .mount_blob(&repo("src"), &d)
        .await
        .unwrap();
    assert!(!mounted);
}

async fn a_push_never_skips_bytes_the_backend_lacks(b: TestBackend, c: Caches) {
    let store = c.store(b.store.clone());
    let d = pushed(&store, "app", b"rewritten").await;
    store.repository(repo("app")).stat_blob(&d).await.unwrap();
    b.store.delete(&KeyLayout.blob_data(&d)).await.unwrap();
    pushed(&store, "app", b"rewritten").await;
    let read = store
        .repository(repo("app"))
        .read_blob(&d, None)
        .await
        .unwrap();
    let got: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    assert_eq!(got.concat(), b"rewritten");
}

async fn a_replica_never_serves_a_blob_unlinked_elsewhere(b: TestBackend, c: Caches) {
    let a = c.store(b.store.clone());
    let other = c.store(b.store.clone());
    let d = pushed(&a, "app", b"shared").await;
    a.repository(repo("app")).stat_blob(&d).await.unwrap();
    other.repository(repo("app")).unlink_blob(&d).await.unwrap();
    // The replica's cache still holds the link, but a read asks the backend.
    let err = a
        .repository(repo("app"))
        .read_blob(&d, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BlobUnknown);
}

async fn a_stale_positive_lasts_at_most_the_ttl(b: TestBackend) {
    let ttl = Duration::from_millis(300);
    let a = cached_store(b.store.clone(), ttl);
    let replica = Store::with_cache(Backend::object_store(b.store.clone()), None);
    let d = pushed(&a, "app", b"stale").await;
    a.repository(repo("app")).stat_blob(&d).await.unwrap();
    replica
        .repository(repo("app"))
        .unlink_blob(&d)
        .await
        .unwrap();
    // The stat right after is answered from the cache: stale, as documented.
    assert!(a.repository(repo("app")).stat_blob(&d).await.is_ok());
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let err = a.repository(repo("app")).stat_blob(&d).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BlobUnknown);
}

async fn without_a_cache_every_stat_asks_the_backend(b: TestBackend) {
    let counting = b.counting();
    let store = Store::with_cache(Backend::object_store(counting.clone()), None);
    assert_eq!(store.cache_stats(), None);
    let d = pushed(&store, "app", b"uncached").await;
    counting.reset();
    store.repository(repo("app")).stat_blob(&d).await.unwrap();
    store.repository(repo("app")).stat_blob(&d).await.unwrap();
    assert!(counting.snapshot().requests() >= 4);
}

async fn evictions_are_counted_when_capacity_is_exceeded(b: TestBackend) {
    let cache = Arc::new(MemoryCache::new(MemoryCacheConfig {
        capacity: 8,
        time_to_live: Duration::from_secs(600),
    }));
    let store = Store::with_cache(Backend::object_store(b.store.clone()), Some(cache.clone()));
    for i in 0..40u32 {
        let data = Bytes::from(i.to_string());
        let d = Digest::sha256(&data);
        let r = store.repository(repo("many"));
        r.put_blob(&d, data).await.unwrap();
        r.stat_blob(&d).await.unwrap();
    }
    cache.run_pending_tasks().await;
    assert!(store.cache_stats().unwrap().evictions > 0);
}

/// Stats `digest` in `name` twice (a HEAD, then an existence check) and returns how many
/// requests the backend saw for them.
async fn requests_of_two_stats(
    store: &Store,
    counting: &CountingStore,
    name: &str,
    digest: &Digest,
) -> Counts {
    counting.reset();
    let r = store.repository(repo(name));
    r.stat_blob(digest).await.unwrap();
    assert!(r.blob_exists(digest).await.unwrap());
    counting.snapshot()
}

async fn the_first_stat_after_a_push_asks_the_backend_nothing(b: TestBackend, c: Caches) {
    let (store, counting) = c.counting_store_on(&b);
    let d = pushed(&store, "app", b"just pushed").await;
    let counts = requests_of_two_stats(&store, &counting, "app", &d).await;
    assert_eq!(counts.requests(), 0, "{counts:?}");
}

async fn the_first_stat_after_a_push_of_stored_bytes_asks_the_backend_nothing(
    b: TestBackend,
    c: Caches,
) {
    let (store, counting) = c.counting_store_on(&b);
    // Stored by another store: this push only links them.
    let d = pushed(&store_on(&b), "elsewhere", b"stored once").await;
    pushed(&store, "app", b"stored once").await;
    let counts = requests_of_two_stats(&store, &counting, "app", &d).await;
    assert_eq!(counts.requests(), 0, "{counts:?}");
}

async fn the_first_stat_after_a_chunked_upload_asks_the_backend_nothing(b: TestBackend, c: Caches) {
    let (store, counting) = c.counting_store_on(&b);
    let data = pattern(7, 300 * 1024);
    let d = Digest::sha256(&data);
    let r = store.repository(repo("app"));
    let id = r.start_upload().await.unwrap().id;
    let mut offset = 0;
    for chunk in data.chunks(100 * 1024) {
        r.append_upload(&id, offset, in_pieces(chunk, 16 * 1024))
            .await
            .unwrap();
        offset += chunk.len() as u64;
    }
    r.commit_upload(&id, &d, Some(offset)).await.unwrap();
    let counts = requests_of_two_stats(&store, &counting, "app", &d).await;
    assert_eq!(counts.requests(), 0, "{counts:?}");
    assert_eq!(r.stat_blob(&d).await.unwrap().size, data.len() as u64);
}

async fn the_first_stat_after_a_mount_asks_the_backend_nothing(b: TestBackend, c: Caches) {
    let (store, counting) = c.counting_store_on(&b);
    let d = pushed(&store_on(&b), "src", b"mounted").await;
    let mounted = store
        .repository(repo("dst"))
        .mount_blob(&repo("src"), &d)
        .await
        .unwrap();
    assert!(mounted);
    let counts = requests_of_two_stats(&store, &counting, "dst", &d).await;
    assert_eq!(counts.requests(), 0, "{counts:?}");
}

/// A cache whose next fill, once armed, waits until released: what a store
/// does between its backend write and its cache fill can be run in between.
#[derive(Debug)]
struct GatedCache {
    inner: Arc<dyn BlobDescriptorCache>,
    armed: AtomicBool,
    reached: Notify,
    released: Notify,
}

impl GatedCache {
    fn new(inner: Arc<dyn BlobDescriptorCache>) -> Self {
        Self {
            inner,
            armed: AtomicBool::new(false),
            reached: Notify::new(),
            released: Notify::new(),
        }
    }
}

#[async_trait]
impl BlobDescriptorCache for GatedCache {
    async fn blob(&self, digest: &Digest) -> Option<CachedBlob> {
        self.inner.blob(digest).await
    }
    async fn linked(&self, repository: &RepositoryName, digest: &Digest) -> bool {
        self.inner.linked(repository, digest).await
    }
    async fn fill_guard(&self, repository: &RepositoryName, digest: &Digest) -> FillGuard {
        self.inner.fill_guard(repository, digest).await
    }
    async fn fill(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        blob: CachedBlob,
        guard: FillGuard,
    ) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.released.notified().await;
        }
        self.inner.fill(repository, digest, blob, guard).await;
    }
    async fn remove_blob(&self, digest: &Digest) {
        self.inner.remove_blob(digest).await;
    }
    async fn remove_link(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        self.inner.remove_link(repository, digest).await
    }
    async fn clear(&self) {
        self.inner.clear().await;
    }
    async fn gc_generation_seen(&self, generation: u64) {
        self.inner.gc_generation_seen(generation).await;
    }
    fn stats(&self) -> CacheStats {
        self.inner.stats()
    }
}

/// A push that wrote its link, and fills the cache after an unlink of the blob returned,
/// must not leave the unlinked blob cached as present.
async fn a_push_racing_an_unlink_leaves_no_entry_behind(b: TestBackend, c: Caches) {
    let cache = Arc::new(GatedCache::new(c.cache()));
    let store = Store::with_cache(backend_on(&b), Some(cache.clone()));
    let content: &'static [u8] = b"pushed, then unlinked";
    let d = Digest::sha256(content);
    cache.armed.store(true, Ordering::SeqCst);
    let push = {
        let r = store.repository(repo("app"));
        tokio::spawn(async move { r.put_blob(&d, Bytes::from_static(content)).await })
    };
    tokio::time::timeout(Duration::from_secs(60), cache.reached.notified())
        .await
        .expect("the push never filled the cache");
    let r = store.repository(repo("app"));
    r.unlink_blob(&d).await.unwrap();
    cache.released.notify_one();
    push.await.unwrap().unwrap();
    assert_eq!(
        r.stat_blob(&d).await.unwrap_err().kind(),
        ErrorKind::BlobUnknown
    );
}

cache_tests!(
    a_cached_stat_makes_no_backend_request,
    a_miss_fills_the_cache_and_the_counters_show_it,
    a_failed_lookup_is_not_cached,
    unlinking_a_blob_invalidates_its_entry,
    a_stat_racing_an_unlink_leaves_no_entry_behind,
    a_read_of_a_blob_deleted_behind_the_cache_fails_and_evicts_it,
    a_mount_never_trusts_the_cache,
    a_push_never_skips_bytes_the_backend_lacks,
    a_replica_never_serves_a_blob_unlinked_elsewhere,
    the_first_stat_after_a_push_asks_the_backend_nothing,
    the_first_stat_after_a_push_of_stored_bytes_asks_the_backend_nothing,
    the_first_stat_after_a_chunked_upload_asks_the_backend_nothing,
    the_first_stat_after_a_mount_asks_the_backend_nothing,
    a_push_racing_an_unlink_leaves_no_entry_behind,
);

backend_tests!(
    a_stale_positive_lasts_at_most_the_ttl,
    without_a_cache_every_stat_asks_the_backend,
    evictions_are_counted_when_capacity_is_exceeded,
);
