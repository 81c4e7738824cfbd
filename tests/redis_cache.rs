//! The Redis cache across replicas: stores over one backend that share one Redis see each
//! other's deletes at once, a fill racing another replica's delete leaves nothing behind, a GC
//! run's clear reaches every replica, and a Redis outage costs latency, never correctness.
//! (The behaviours every cache shares run on Redis in `tests/cache.rs`.)
//!
//! Tests on the shared server skip without `LAYERSTORE_TEST_REDIS`; outage tests start their
//! own `redis-server` and skip without it; under `CI=true` both fail instead.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::redis::{OwnRedis, redis_cache, redis_config};
use common::*;
use futures::TryStreamExt;
use layerstore::cache::RedisCacheConfig;
use layerstore::gc::GcOptions;
use layerstore::{Backend, Digest, ErrorKind, Repository, Store};
use object_store::ObjectStore;

/// A store over `objects` whose cache is Redis as `config` says (replicas share `config`).
fn replica(objects: Arc<dyn ObjectStore>, config: &RedisCacheConfig) -> Store {
    Store::with_cache(Backend::object_store(objects), Some(redis_cache(config)))
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

/// Whether a stat of `d` is answered from the cache (no backend request) within about five
/// seconds: the first calls after Redis comes back may still be skipped (`retry_after`) or
/// reconnect.
async fn answers_from_cache_again(r: &Repository, d: &Digest, counting: &CountingStore) -> bool {
    for _ in 0..100 {
        r.stat_blob(d).await.unwrap();
        counting.reset();
        r.stat_blob(d).await.unwrap();
        if counting.snapshot().requests() == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn read_all(store: &Store, name: &str, d: &Digest) -> Vec<u8> {
    let read = store
        .repository(repo(name))
        .read_blob(d, None)
        .await
        .unwrap();
    let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    chunks.concat()
}

async fn a_delete_on_one_replica_is_seen_at_once_by_the_other(b: TestBackend) {
    let Some(config) = redis_config() else { return };
    let a = replica(b.store.clone(), &config);
    let counting = b.counting();
    let other = replica(counting.clone(), &config);
    let d = pushed(&a, "app", b"shared layer").await;
    // The other replica answers from what the first one cached at the push.
    let r = other.repository(repo("app"));
    r.stat_blob(&d).await.unwrap();
    counting.reset();
    assert_eq!(r.stat_blob(&d).await.unwrap().size, 12);
    assert_eq!(
        counting.snapshot().requests(),
        0,
        "{:?}",
        counting.snapshot()
    );

    a.repository(repo("app")).unlink_blob(&d).await.unwrap();
    assert_eq!(
        r.stat_blob(&d).await.unwrap_err().kind(),
        ErrorKind::BlobUnknown
    );
    assert_eq!(
        r.read_blob(&d, None).await.unwrap_err().kind(),
        ErrorKind::BlobUnknown
    );
}

/// A stat on one replica that read the backend before another replica's unlink, and fills
/// Redis after the unlink returned, must not leave the unlinked blob cached as present (the
/// in-memory cache's local guard cannot see another process's removal).
async fn a_fill_racing_a_delete_on_another_replica_leaves_no_entry_behind(b: TestBackend) {
    let Some(config) = redis_config() else { return };
    let faulty = b.faulty();
    let reader = replica(faulty.clone(), &config);
    let deleter = replica(b.store.clone(), &config);
    let writer = Store::with_cache(Backend::object_store(b.store.clone()), None);
    let d = pushed(&writer, "app", b"raced across replicas").await;
    let r = reader.repository(repo("app"));
    // Reads the GC state, so the stat below reads only the link, then the blob's data
    // object: it is held at the second, after it saw the link.
    let _ = r.stat_blob(&Digest::sha256(b"warm-up")).await;
    let before = faulty.reads_seen();
    faulty.pause_read_at(before + 2);
    let stat = {
        let r = r.clone();
        tokio::spawn(async move { r.stat_blob(&d).await })
    };
    while !faulty.paused() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    deleter
        .repository(repo("app"))
        .unlink_blob(&d)
        .await
        .unwrap();
    faulty.release();
    let _ = stat.await.unwrap();
    for store in [&reader, &deleter] {
        assert_eq!(
            store
                .repository(repo("app"))
                .stat_blob(&d)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::BlobUnknown
        );
    }
}

async fn a_clear_on_one_replica_empties_the_cache_of_every_replica(b: TestBackend) {
    let Some(config) = redis_config() else { return };
    let a = redis_cache(&config);
    let counting = b.counting();
    let other = Store::with_cache(
        Backend::object_store(counting.clone()),
        Some(redis_cache(&config)),
    );
    let d = pushed(&other, "app", b"cleared").await;
    counting.reset();
    other.repository(repo("app")).stat_blob(&d).await.unwrap();
    assert_eq!(counting.snapshot().requests(), 0);
    a.clear().await;
    other.repository(repo("app")).stat_blob(&d).await.unwrap();
    assert!(
        counting.snapshot().requests() > 0,
        "the stat after the clear asked Redis only"
    );
}

async fn a_gc_run_on_one_replica_is_seen_at_once_by_the_other(b: TestBackend) {
    let Some(config) = redis_config() else { return };
    let serving = replica(b.store.clone(), &config);
    let collector = replica(b.store.clone(), &config);
    // Pushed, referenced by no manifest: the run deletes it.
    let d = pushed(&serving, "app", b"garbage").await;
    serving.repository(repo("app")).stat_blob(&d).await.unwrap();
    let options = GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    };
    collector.gc(options, &|_| {}).await.unwrap();
    assert_eq!(
        serving
            .repository(repo("app"))
            .stat_blob(&d)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::BlobUnknown
    );
}

backend_tests!(
    a_delete_on_one_replica_is_seen_at_once_by_the_other,
    a_fill_racing_a_delete_on_another_replica_leaves_no_entry_behind,
    a_clear_on_one_replica_empties_the_cache_of_every_replica,
    a_gc_run_on_one_replica_is_seen_at_once_by_the_other,
);

/// A GC generation clears the shared cache once, whichever replica sees it first: a fill made
/// after one replica saw it survives the others seeing it too.
#[tokio::test]
async fn a_new_gc_generation_clears_the_shared_cache_once() {
    let Some(config) = redis_config() else { return };
    let (a, other) = (redis_cache(&config), redis_cache(&config));
    let (name, d) = (repo("app"), Digest::sha256(b"kept"));
    a.gc_generation_seen(1).await;
    let guard = a.fill_guard(&name, &d).await;
    a.fill(&name, &d, layerstore::cache::CachedBlob::object(4), guard)
        .await;
    other.gc_generation_seen(1).await;
    assert!(other.linked_blob(&name, &d).await.is_some());
    other.gc_generation_seen(2).await;
    assert!(a.linked_blob(&name, &d).await.is_none());
}

/// A fill by a replica that has not seen the newest GC generation yet is dropped: what it
/// read may predate the run.
#[tokio::test]
async fn a_fill_from_a_replica_behind_on_gc_is_dropped() {
    let Some(config) = redis_config() else { return };
    let (behind, ahead) = (redis_cache(&config), redis_cache(&config));
    let (name, d) = (repo("app"), Digest::sha256(b"late"));
    behind.gc_generation_seen(3).await;
    ahead.gc_generation_seen(4).await;
    let guard = behind.fill_guard(&name, &d).await;
    behind
        .fill(&name, &d, layerstore::cache::CachedBlob::object(4), guard)
        .await;
    assert!(ahead.linked_blob(&name, &d).await.is_none());
}

/// With Redis down: pushes, stats and reads still succeed from the backend, and a DELETE
/// fails before it changes anything. Started again on the same port, the cache is used
/// again without a restart of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_costs_latency_never_correctness() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let config = redis.config();
    let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let counting = Arc::new(CountingStore::new(objects.clone(), None));
    let store = replica(counting.clone(), &config);
    let d = pushed(&store, "app", b"before the outage").await;

    redis.stop();
    let e = pushed(&store, "app", b"during the outage").await;
    for digest in [&d, &e] {
        assert!(
            store
                .repository(repo("app"))
                .blob_exists(digest)
                .await
                .unwrap()
        );
    }
    assert_eq!(read_all(&store, "app", &e).await, b"during the outage");
    let refused = store
        .repository(repo("app"))
        .unlink_blob(&d)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Cache);
    assert!(store.repository(repo("app")).blob_exists(&d).await.unwrap());
    assert_eq!(read_all(&store, "app", &d).await, b"before the outage");

    redis.restart();
    let r = store.repository(repo("app"));
    let answered_from_cache = answers_from_cache_again(&r, &d, &counting).await;
    assert!(
        answered_from_cache,
        "the cache was not used again after Redis came back"
    );
    r.unlink_blob(&d).await.unwrap();
    assert!(!r.blob_exists(&d).await.unwrap());
}

/// A store whose Redis is down when it starts works from the backend, and uses Redis once it
/// is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_started_while_redis_is_down_uses_it_once_it_is_up() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    redis.stop();
    let objects: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let counting = Arc::new(CountingStore::new(objects, None));
    let store = replica(counting.clone(), &redis.config());
    let d = pushed(&store, "app", b"no redis yet").await;
    assert!(store.repository(repo("app")).blob_exists(&d).await.unwrap());
    redis.restart();
    let r = store.repository(repo("app"));
    let answered_from_cache = answers_from_cache_again(&r, &d, &counting).await;
    assert!(answered_from_cache);
}

/// A Redis that accepts connections and never answers costs each call at most the
/// configured timeouts: the store falls back to the backend and every operation completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_is_given_up_on_after_the_timeouts() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let config = RedisCacheConfig {
        host: "127.0.0.1".to_owned(),
        port,
        dial_timeout: Duration::from_millis(200),
        write_timeout: Duration::from_millis(200),
        read_timeout: Duration::from_millis(200),
        ..RedisCacheConfig::default()
    };
    let store = Store::with_cache(
        Backend::object_store(Arc::new(object_store::memory::InMemory::new())),
        Some(redis_cache(&config)),
    );
    // Bounds a hang, not a speed: without the timeouts this would never finish.
    let work = async {
        let d = pushed(&store, "app", b"silent redis").await;
        assert!(store.repository(repo("app")).blob_exists(&d).await.unwrap());
        assert_eq!(read_all(&store, "app", &d).await, b"silent redis");
        store
            .repository(repo("app"))
            .unlink_blob(&d)
            .await
            .unwrap_err()
    };
    let refused = tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("a call waited past the timeouts");
    assert_eq!(refused.kind(), ErrorKind::Cache);
    held.abort();
}

/// Two `layerstore serve` over one filesystem root with `blobdescriptor: redis`: a blob
/// deleted through one is 404 on the other at its very next HEAD and GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_redis_see_each_others_deletes_over_http() {
    use common::server::Running;
    let Some(redis) = redis_config() else { return };
    let shared = tempfile::tempdir().unwrap();
    let root = shared.path().join("data");
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem: {{rootdirectory: {root:?}}}\n  delete: {{enabled: true}}\n  \
         cache: {{blobdescriptor: redis}}\nhttp: {{addr: '127.0.0.1:0'}}\n\
         redis: {{addr: '{}:{}', dialtimeout: 2s, readtimeout: 2s, writetimeout: 2s}}\n",
        redis.host, redis.port
    );
    let start = || {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(&config, &yaml).unwrap();
        let config = config.to_str().unwrap().to_owned();
        Running::start_with(dir, &["--config", &config])
    };
    let (a, b) = (start(), start());
    let http = reqwest::Client::new();
    // A repository of its own: the servers use the default key prefix of a shared Redis.
    let name = format!("t{:016x}/app", rand::random::<u64>());
    let content = b"deleted over http";
    let d = Digest::sha256(content);
    let pushed = http
        .post(format!(
            "http://{}/v2/{name}/blobs/uploads/?digest={d}",
            a.addr
        ))
        .body(&content[..])
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 201);
    let blob = |server: &Running| format!("http://{}/v2/{name}/blobs/{d}", server.addr);
    assert_eq!(http.head(blob(&b)).send().await.unwrap().status(), 200);
    assert_eq!(http.delete(blob(&a)).send().await.unwrap().status(), 202);
    assert_eq!(http.head(blob(&b)).send().await.unwrap().status(), 404);
    assert_eq!(http.get(blob(&b)).send().await.unwrap().status(), 404);
}
