//! The library's counters, read back in-process: each test runs one action on a store built as
//! production builds it, under a debugging recorder of its own, and asserts what the action
//! moved. (The server's `/metrics` is tested over HTTP in `tests/debug_server.rs`.)

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use layerstore::cache::{
    BlobDescriptorCache, MemoryCache, MemoryCacheConfig, RedisCache, RedisCacheConfig,
};
use layerstore::gc::GcOptions;
use layerstore::metrics as m;
use layerstore::upload::PurgeOptions;
use layerstore::{Backend, Digest, RepositoryName, Store};
use metrics::Label;
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tempfile::TempDir;

/// Runs `action` on a fresh filesystem store under a recorder of its own; what it recorded.
fn recorded<F, Fut>(cache: Option<Arc<dyn BlobDescriptorCache>>, action: F) -> Recorded
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = TempDir::new().unwrap();
    let store = Store::with_cache(Backend::filesystem(dir.path()).unwrap(), cache);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A current-thread runtime: every record happens on this thread, inside the recorder's
    // scope.
    metrics::with_local_recorder(&recorder, || runtime.block_on(action(store)));
    Recorded(snapshotter.snapshot().into_vec())
}

type Entry = (
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
);

struct Recorded(Vec<Entry>);

impl Recorded {
    fn values(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&DebugValue> {
        let want: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0
            .iter()
            .filter(|(key, ..)| {
                let key = key.key();
                key.name() == name && want.iter().all(|l| key.labels().any(|k| k == l))
            })
            .map(|(.., value)| value)
            .collect()
    }

    /// The sum of the counters named `name` whose labels include `labels`.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.values(name, labels)
            .into_iter()
            .map(|v| match v {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    fn gauge(&self, name: &str) -> f64 {
        match self.values(name, &[]).as_slice() {
            [DebugValue::Gauge(v)] => v.into_inner(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn histogram_samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.values(name, labels)
            .into_iter()
            .map(|v| match v {
                DebugValue::Histogram(samples) => samples.len(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .sum()
    }
}

fn repo() -> RepositoryName {
    RepositoryName::parse("team/app").unwrap()
}

fn chunk(data: &'static [u8]) -> layerstore::upload::ChunkStream<'static> {
    Box::pin(stream::iter([Ok(Bytes::from_static(data))]))
}

#[test]
fn a_committed_upload_counts_started_and_committed_and_closes_its_session() {
    let got = recorded(None, |store| async move {
        let r = store.repository(repo());
        let session = r.start_upload().await.unwrap();
        r.append_upload(&session.id, 0, chunk(b"layer"))
            .await
            .unwrap();
        r.commit_upload(&session.id, &Digest::sha256(b"layer"), None)
            .await
            .unwrap();
    });
    assert_eq!(got.counter(m::UPLOADS_STARTED, &[]), 1);
    assert_eq!(got.counter(m::UPLOADS_COMMITTED, &[]), 1);
    assert_eq!(got.gauge(m::UPLOAD_SESSIONS_OPEN), 0.0);
}

#[test]
fn an_open_session_is_counted_in_the_gauge() {
    let got = recorded(None, |store| async move {
        store.repository(repo()).start_upload().await.unwrap();
    });
    assert_eq!(got.gauge(m::UPLOAD_SESSIONS_OPEN), 1.0);
    assert_eq!(got.counter(m::UPLOADS_COMMITTED, &[]), 0);
}

#[test]
fn a_cancelled_upload_counts_cancelled_and_closes_its_session() {
    let got = recorded(None, |store| async move {
        let r = store.repository(repo());
        let session = r.start_upload().await.unwrap();
        r.cancel_upload(&session.id).await.unwrap();
    });
    assert_eq!(got.counter(m::UPLOADS_CANCELLED, &[]), 1);
    assert_eq!(got.gauge(m::UPLOAD_SESSIONS_OPEN), 0.0);
}

#[test]
fn a_refused_commit_counts_nothing_committed() {
    let got = recorded(None, |store| async move {
        let r = store.repository(repo());
        let session = r.start_upload().await.unwrap();
        r.append_upload(&session.id, 0, chunk(b"layer"))
            .await
            .unwrap();
        let wrong = Digest::sha256(b"other");
        assert!(r.commit_upload(&session.id, &wrong, None).await.is_err());
    });
    assert_eq!(got.counter(m::UPLOADS_COMMITTED, &[]), 0);
    assert_eq!(got.gauge(m::UPLOAD_SESSIONS_OPEN), 1.0);
}

#[test]
fn a_monolithic_put_counts_as_started_and_committed_without_a_session() {
    let got = recorded(None, |store| async move {
        let data = Bytes::from_static(b"config");
        store
            .repository(repo())
            .put_blob(&Digest::sha256(&data), data)
            .await
            .unwrap();
    });
    assert_eq!(got.counter(m::UPLOADS_STARTED, &[]), 1);
    assert_eq!(got.counter(m::UPLOADS_COMMITTED, &[]), 1);
    assert!(got.values(m::UPLOAD_SESSIONS_OPEN, &[]).is_empty());
}

#[test]
fn a_purge_counts_its_run_and_the_sessions_it_purged() {
    let got = recorded(None, |store| async move {
        let r = store.repository(repo());
        r.start_upload().await.unwrap();
        r.start_upload().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let report = store
            .purge_uploads(PurgeOptions {
                older_than: Duration::from_millis(1),
                dry_run: false,
            })
            .await
            .unwrap();
        assert_eq!(report.purged, 2);
    });
    assert_eq!(got.counter(m::PURGE_RUNS, &[("outcome", "ok")]), 1);
    assert_eq!(got.counter(m::UPLOADS_PURGED, &[]), 2);
    assert_eq!(got.gauge(m::UPLOAD_SESSIONS_OPEN), 0.0);
}

#[test]
fn a_dry_run_purge_counts_its_run_but_purges_nothing() {
    let got = recorded(None, |store| async move {
        store.repository(repo()).start_upload().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let options = PurgeOptions {
            older_than: Duration::from_millis(1),
            dry_run: true,
        };
        assert_eq!(store.purge_uploads(options).await.unwrap().purged, 1);
    });
    assert_eq!(got.counter(m::PURGE_RUNS, &[("outcome", "ok")]), 1);
    assert_eq!(got.counter(m::UPLOADS_PURGED, &[]), 0);
}

#[test]
fn a_gc_run_is_counted_by_outcome() {
    let got = recorded(None, |store| async move {
        let options = GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        };
        store.gc(options, &|_| {}).await.unwrap();
    });
    assert_eq!(got.counter(m::GC_RUNS, &[("outcome", "ok")]), 1);
    assert_eq!(got.counter(m::GC_RUNS, &[("outcome", "error")]), 0);
}

#[test]
fn cache_lookups_count_a_miss_then_a_hit() {
    let cache = Arc::new(MemoryCache::default());
    let got = recorded(Some(cache), |store| async move {
        let data = Bytes::from_static(b"layer");
        let d = Digest::sha256(&data);
        let other = store.repository(RepositoryName::parse("other").unwrap());
        other.put_blob(&d, data).await.unwrap();
        let r = store.repository(repo());
        // Not linked here: the link lookup misses, and nothing is cached for it.
        assert!(r.stat_blob(&d).await.is_err());
        // Linked (and cached) by the push: a hit.
        other.stat_blob(&d).await.unwrap();
    });
    assert!(got.counter(m::CACHE_MISSES, &[]) >= 1);
    assert!(got.counter(m::CACHE_HITS, &[]) >= 1);
}

#[test]
fn cache_evictions_are_counted() {
    let cache = Arc::new(MemoryCache::new(MemoryCacheConfig {
        capacity: 4,
        time_to_live: Duration::from_secs(600),
    }));
    let got = recorded(Some(cache.clone()), |store| async move {
        for i in 0..40u32 {
            let data = Bytes::from(i.to_string());
            let d = Digest::sha256(&data);
            let r = store.repository(repo());
            r.put_blob(&d, data).await.unwrap();
        }
        cache.run_pending_tasks().await;
    });
    assert!(got.counter(m::CACHE_EVICTIONS, &[]) > 0);
}

#[test]
fn backend_requests_are_counted_by_operation_and_outcome_with_latency() {
    let got = recorded(None, |store| async move {
        let d = Digest::sha256(b"absent");
        assert!(store.repository(repo()).stat_blob(&d).await.is_err());
        let data = Bytes::from_static(b"present");
        store
            .repository(repo())
            .put_blob(&Digest::sha256(&data), data)
            .await
            .unwrap();
    });
    let not_found = [("operation", "head"), ("outcome", "not_found")];
    assert!(got.counter(m::BACKEND_REQUESTS, &not_found) >= 1);
    assert!(got.counter(m::BACKEND_REQUESTS, &[("outcome", "ok")]) >= 1);
    assert_eq!(got.counter(m::BACKEND_REQUESTS, &[("outcome", "error")]), 0);
    assert_eq!(
        got.histogram_samples(m::BACKEND_REQUEST_DURATION, &not_found) as u64,
        got.counter(m::BACKEND_REQUESTS, &not_found)
    );
    for (key, ..) in &got.0 {
        if key.key().name() == m::BACKEND_REQUESTS {
            let operation = key.key().labels().find(|l| l.key() == "operation").unwrap();
            assert!(
                m::BACKEND_OPERATIONS.contains(&operation.value()),
                "{operation:?}"
            );
        }
    }
}

#[test]
fn a_failing_backend_request_counts_as_an_error() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("root");
    let got = recorded(None, |_| async move {
        let store = Store::with_cache(Backend::filesystem(&root).unwrap(), None);
        std::fs::remove_dir(&root).unwrap();
        std::fs::write(&root, b"not a directory").unwrap();
        assert!(store.probe().await.is_err());
    });
    assert_eq!(
        got.counter(
            m::BACKEND_REQUESTS,
            &[("operation", "head"), ("outcome", "error")]
        ),
        1
    );
}

#[test]
fn redis_cache_failures_are_counted_by_operation_and_the_store_falls_back() {
    // A port nothing listens on: every connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let maker = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = maker.enter();
    let cache = RedisCache::new(RedisCacheConfig {
        host: "127.0.0.1".to_owned(),
        port,
        retry_after: Duration::ZERO,
        ..RedisCacheConfig::default()
    })
    .unwrap();
    let got = recorded(Some(Arc::new(cache)), |store| async move {
        let r = store.repository(repo());
        let d = Digest::sha256(b"no redis");
        r.put_blob(&d, Bytes::from_static(b"no redis"))
            .await
            .unwrap();
        assert!(r.blob_exists(&d).await.unwrap());
        r.unlink_blob(&d).await.unwrap_err();
    });
    let errors = |operation| got.counter(m::CACHE_REDIS_ERRORS, &[("operation", operation)]);
    assert!(errors("lookup") >= 1, "the stat's lookup");
    assert!(errors("fill") >= 1, "the push's and the stat's fills");
    assert!(errors("remove") >= 1, "the refused unlink");
    assert!(
        got.counter(m::CACHE_MISSES, &[]) >= 1,
        "a failed lookup is a miss"
    );
}
