//! Checks the shared test support (`tests/common`) on every backend, so that the other
//! integration tests can trust what it reports.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{Error, ObjectStore, ObjectStoreExt, PutPayload};

use common::*;

fn payload(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

async fn read_all(store: &dyn ObjectStore, location: &Path) -> Bytes {
    store
        .get(location)
        .await
        .unwrap_or_else(|e| panic!("get {location}: {e}"))
        .bytes()
        .await
        .unwrap()
}

async fn exists(store: &dyn ObjectStore, location: &Path) -> bool {
    match store.head(location).await {
        Ok(_) => true,
        Err(Error::NotFound { .. }) => false,
        Err(e) => panic!("head {location}: {e}"),
    }
}

async fn list_all(store: &dyn ObjectStore) -> Vec<Path> {
    let mut paths: Vec<Path> = store
        .list(None)
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .unwrap();
    paths.sort();
    paths
}

fn assert_injected(result: Result<(), Error>, what: &str, n: u64) {
    match result {
        Err(Error::Generic { store, source }) => {
            assert_eq!(store, "FaultyStore");
            let message = source.to_string();
            assert!(
                message.starts_with(&format!("injected fault at {what} {n} ")),
                "unexpected message: {message}"
            );
        }
        other => panic!("expected the injected fault at {what} {n}, got {other:?}"),
    }
}

async fn put_then_get_round_trips(b: TestBackend) {
    let location = Path::from("dir/sub/object");
    let data = payload(100_000, 1);
    b.store.put(&location, data.clone().into()).await.unwrap();

    assert_eq!(read_all(&*b.store, &location).await, data);
    let meta = b.store.head(&location).await.unwrap();
    // The key comes back as written: the isolating prefix never leaks to the caller.
    assert_eq!(meta.location, location);
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(list_all(&*b.store).await, vec![location.clone()]);

    match b.kind {
        BackendKind::Filesystem => {
            let root = b.fs_root.as_ref().expect("filesystem backend has a root");
            assert_eq!(std::fs::read(root.join("dir/sub/object")).unwrap(), data);
        }
        BackendKind::S3 | BackendKind::Azure => assert!(b.key_prefix.is_some()),
        BackendKind::Memory => {}
    }
}

async fn multipart_store_round_trips_when_present(b: TestBackend) {
    let Some(multipart) = b.multipart.clone() else {
        // object_store has no MultipartStore for the filesystem; layerstore stages itself.
        assert_eq!(b.kind, BackendKind::Filesystem);
        return;
    };
    let location = Path::from("uploads/whole");
    let data = payload(70_000, 2);
    let id = multipart.create_multipart(&location).await.unwrap();
    // A single part may be small: S3's 5 MiB minimum applies to all parts but the last.
    let part = multipart
        .put_part(&location, &id, 0, data.clone().into())
        .await
        .unwrap();
    multipart
        .complete_multipart(&location, &id, vec![part])
        .await
        .unwrap();
    // Written through the MultipartStore view, read through the ObjectStore view.
    assert_eq!(read_all(&*b.store, &location).await, data);
}

async fn same_kind_backends_do_not_see_each_others_keys(b: TestBackend) {
    let location = Path::from("shared/name");
    b.store.put(&location, "first".into()).await.unwrap();

    let other = make(b.kind).await.expect("configured, since `b` exists");
    assert!(list_all(&*other.store).await.is_empty());
    let listing = other.store.list_with_delimiter(None).await.unwrap();
    assert!(listing.objects.is_empty() && listing.common_prefixes.is_empty());
    assert!(!exists(&*other.store, &location).await);

    other.store.put(&location, "second".into()).await.unwrap();
    assert_eq!(read_all(&*b.store, &location).await, Bytes::from("first"));
    assert_eq!(
        read_all(&*other.store, &location).await,
        Bytes::from("second")
    );
}

/// Four independent writes with reads in between, each write on its own keys so that one
/// failing cannot make another fail. Returns each write's result in order.
async fn four_writes(store: &dyn ObjectStore, dir: &str) -> [Result<(), Error>; 4] {
    let key = |name: &str| Path::from(format!("{dir}/{name}"));
    let put = store.put(&key("put"), "p".into()).await.map(|_| ());
    let _ = read_all(store, &key("src")).await;
    let copy = store.copy(&key("src"), &key("copy")).await;
    let _ = store.head(&key("src")).await.unwrap();
    let rename = store.rename(&key("rename-from"), &key("rename-to")).await;
    let _ = list_all(store).await;
    let delete = store.delete(&key("delete-me")).await;
    [put, copy, rename, delete]
}

async fn setup_four_writes(store: &dyn ObjectStore, dir: &str) {
    for name in ["src", "rename-from", "delete-me"] {
        let location = Path::from(format!("{dir}/{name}"));
        store.put(&location, "x".into()).await.unwrap();
    }
}

/// What `four_writes` left behind, as booleans: put done, copy done, rename done, delete done.
async fn four_writes_effects(store: &dyn ObjectStore, dir: &str) -> [bool; 4] {
    let key = |name: &str| Path::from(format!("{dir}/{name}"));
    [
        exists(store, &key("put")).await,
        exists(store, &key("copy")).await,
        exists(store, &key("rename-to")).await && !exists(store, &key("rename-from")).await,
        !exists(store, &key("delete-me")).await,
    ]
}

async fn faulty_store_fails_exactly_the_nth_write(b: TestBackend) {
    let faulty = b.faulty();
    setup_four_writes(&*b.store, "probe").await;
    let results = four_writes(&*faulty, "probe").await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // Reads pass through uncounted as writes.
    assert_eq!(faulty.writes_seen(), 4);
    assert_eq!(faulty.reads_seen(), 3);

    for n in 1..=4u64 {
        let dir = format!("run-{n}");
        setup_four_writes(&*b.store, &dir).await;
        faulty.reset();
        faulty.fail_nth(n);
        let results = four_writes(&*faulty, &dir).await;
        let effects = four_writes_effects(&*b.store, &dir).await;
        for (i, (result, done)) in results.into_iter().zip(effects).enumerate() {
            let write = i as u64 + 1;
            if write == n {
                assert_injected(result, "write", n);
                // The fault fires before the request: the failed write changed nothing.
                assert!(!done, "write {write} took effect although it failed");
            } else {
                result.unwrap_or_else(|e| panic!("write {write} with fail_nth({n}): {e}"));
                assert!(done, "write {write} had no effect");
            }
        }
        assert_eq!(faulty.writes_seen(), 4);
        assert_eq!(faulty.faults_injected(), 1);
    }
}

async fn faulty_store_makes_the_nth_write_then_reports_it_failed(b: TestBackend) {
    let faulty = b.faulty();
    for n in 1..=4u64 {
        let dir = format!("lost-{n}");
        setup_four_writes(&*b.store, &dir).await;
        faulty.reset();
        faulty.fail_after_nth(n);
        let results = four_writes(&*faulty, &dir).await;
        let effects = four_writes_effects(&*b.store, &dir).await;
        // Every write took effect; only write n says it failed.
        assert_eq!(effects, [true; 4], "fail_after_nth({n})");
        for (i, result) in results.into_iter().enumerate() {
            let write = i as u64 + 1;
            if write == n {
                let e = result.expect_err("the lost reply must be an error");
                assert!(e.to_string().contains("injected fault after write"), "{e}");
            } else {
                result.unwrap_or_else(|e| panic!("write {write} with fail_after_nth({n}): {e}"));
            }
        }
        assert_eq!(faulty.faults_injected(), 1);
    }
}

async fn filesystem_seam_makes_the_nth_call_then_reports_it_failed(b: TestBackend) {
    use layerstore::upload::FileSystem;
    let Some(root) = b.fs_root.clone() else {
        return; // the filesystem engine's seam exists on the filesystem backend only
    };
    let faulty = b.faulty();
    let fs = FaultyFs::sharing(&faulty);
    let dir = root.join("seam");
    fs.create_dir_all(&dir).unwrap();
    // Numbered in the same sequence as the store's requests.
    faulty.fail_after_nth(faulty.writes_seen() + 1);
    let e = fs.create(&dir.join("file")).unwrap_err();
    assert!(e.to_string().contains("injected fault after write"), "{e}");
    assert!(dir.join("file").exists(), "the call was made");
    faulty.crash_at(faulty.writes_seen() + 1);
    assert!(fs.create_dir_all(&dir.join("later")).is_err());
    assert!(!dir.join("later").exists(), "a crashed call is not made");
}

async fn faulty_store_crash_fails_every_later_write_but_no_read(b: TestBackend) {
    let faulty = b.faulty();
    setup_four_writes(&*b.store, "crash").await;
    faulty.crash_at(2);
    let results = four_writes(&*faulty, "crash").await;
    let effects = four_writes_effects(&*b.store, "crash").await;
    assert_eq!(effects, [true, false, false, false]);
    let [first, rest @ ..] = results;
    first.unwrap();
    for (result, n) in rest.into_iter().zip(2..) {
        assert_injected(result, "write", n);
    }
    assert_eq!(faulty.faults_injected(), 3);

    // Reads still work after the "crash", so a test can inspect what was left.
    assert_eq!(read_all(&*faulty, &Path::from("crash/put")).await, "p");
    faulty.heal();
    faulty
        .put(&Path::from("crash/after-heal"), "h".into())
        .await
        .unwrap();
}

async fn faulty_store_fails_exactly_the_nth_read(b: TestBackend) {
    let location = Path::from("r");
    b.store.put(&location, "data".into()).await.unwrap();
    let faulty = b.faulty();
    faulty.fail_nth_read(2);
    assert_eq!(read_all(&*faulty, &location).await, "data");
    assert_injected(faulty.head(&location).await.map(|_| ()), "read", 2);
    assert_eq!(faulty.head(&location).await.unwrap().size, 4);
    assert_eq!(faulty.reads_seen(), 3);
    assert_eq!(faulty.writes_seen(), 0);
}

async fn faulty_store_numbers_multipart_upload_writes(b: TestBackend) {
    let location = Path::from("mp/object");
    let data = payload(10_000, 3);
    let faulty = b.faulty();

    let mut upload = faulty.put_multipart(&location).await.unwrap();
    upload.put_part(data.clone().into()).await.unwrap();
    upload.complete().await.unwrap();
    assert_eq!(faulty.writes_seen(), 3, "create + part + complete");
    assert_eq!(read_all(&*b.store, &location).await, data);

    // The part fails; the caller aborts, which is write 3.
    let location = Path::from("mp/failed");
    faulty.reset();
    faulty.fail_nth(2);
    let mut upload = faulty.put_multipart(&location).await.unwrap();
    assert_injected(upload.put_part(data.clone().into()).await, "write", 2);
    upload.abort().await.unwrap();
    assert_eq!(faulty.writes_seen(), 3);
    assert!(!exists(&*b.store, &location).await);

    // The MultipartStore view shares the same numbering.
    match faulty.multipart_store() {
        None => assert!(b.multipart.is_none()),
        Some(multipart) => {
            let location = Path::from("mp/via-store");
            faulty.reset();
            faulty.fail_nth(3);
            let id = multipart.create_multipart(&location).await.unwrap();
            let part = multipart
                .put_part(&location, &id, 0, data.clone().into())
                .await
                .unwrap();
            let completed = multipart
                .complete_multipart(&location, &id, vec![part])
                .await;
            assert_injected(completed.map(|_| ()), "write", 3);
            assert!(!exists(&*b.store, &location).await);
            multipart.abort_multipart(&location, &id).await.unwrap();
            assert_eq!(faulty.writes_seen(), 4);
        }
    }
}

async fn counting_store_counts_streamed_get_bytes_exactly(b: TestBackend) {
    let location = Path::from("big");
    // Several chunks on every backend (the filesystem streams in 8 KiB chunks).
    let data = payload(1024 * 1024 + 123, 4);
    b.store.put(&location, data.clone().into()).await.unwrap();
    let counting = b.counting();

    let mut body = counting.get(&location).await.unwrap().into_stream();
    assert_eq!(
        counting.snapshot().bytes_read,
        0,
        "nothing read before the body is polled"
    );
    let first = body.next().await.unwrap().unwrap();
    if b.kind == BackendKind::Filesystem {
        // Known to stream in 8 KiB chunks, so this proves counting happens as bytes go out.
        assert!(first.len() < data.len(), "body comes in several chunks");
    }
    assert_eq!(counting.snapshot().bytes_read, first.len() as u64);
    let mut total = first.len();
    while let Some(chunk) = body.try_next().await.unwrap() {
        total += chunk.len();
    }
    assert_eq!(total, data.len());
    assert_eq!(
        counting.snapshot(),
        Counts {
            get: 1,
            bytes_read: data.len() as u64,
            ..Counts::default()
        }
    );

    counting.reset();
    let partial = counting.get(&location).await.unwrap();
    let mut body = partial.into_stream();
    let first = body.next().await.unwrap().unwrap();
    drop(body);
    assert_eq!(counting.snapshot().bytes_read, first.len() as u64);
}

async fn counting_store_counts_each_request_kind(b: TestBackend) {
    let counting = b.counting();
    let store: Arc<dyn ObjectStore> = counting.clone();
    let a = Path::from("k/a");
    let c = Path::from("k/c");
    let r = Path::from("k/r");

    store
        .put(&a, PutPayload::from_static(b"0123456789"))
        .await
        .unwrap();
    store.head(&a).await.unwrap();
    assert_eq!(store.get_range(&a, 2..5).await.unwrap(), "234");
    let ranges = store.get_ranges(&a, &[0..1, 8..10]).await.unwrap();
    assert_eq!(ranges, vec![Bytes::from("0"), Bytes::from("89")]);
    store.copy(&a, &c).await.unwrap();
    store.rename(&c, &r).await.unwrap();
    assert_eq!(list_all(&*store).await.len(), 2);
    store
        .list_with_delimiter(Some(&Path::from("k")))
        .await
        .unwrap();
    store.delete(&r).await.unwrap();
    let mut upload = store.put_multipart(&Path::from("k/m")).await.unwrap();
    upload
        .put_part(PutPayload::from_static(b"abc"))
        .await
        .unwrap();
    upload.complete().await.unwrap();
    read_all(&*store, &a).await;

    let expected = Counts {
        get: 1,
        get_range: 1,
        get_ranges: 1,
        head: 1,
        put: 1,
        multipart_create: 1,
        multipart_part: 1,
        multipart_complete: 1,
        multipart_abort: 0,
        list: 1,
        list_with_delimiter: 1,
        copy: 1,
        rename: 1,
        delete: 1,
        bytes_read: 3 + 3 + 10,
        bytes_written: 10 + 3,
    };
    assert_eq!(counting.snapshot(), expected);
    assert_eq!(expected.requests(), 13);

    counting.reset();
    assert_eq!(counting.snapshot(), Counts::default());
}

backend_tests!(
    put_then_get_round_trips,
    multipart_store_round_trips_when_present,
    same_kind_backends_do_not_see_each_others_keys,
    faulty_store_fails_exactly_the_nth_write,
    faulty_store_makes_the_nth_write_then_reports_it_failed,
    filesystem_seam_makes_the_nth_call_then_reports_it_failed,
    faulty_store_crash_fails_every_later_write_but_no_read,
    faulty_store_fails_exactly_the_nth_read,
    faulty_store_numbers_multipart_upload_writes,
    counting_store_counts_streamed_get_bytes_exactly,
    counting_store_counts_each_request_kind,
);

#[tokio::test]
async fn filesystem_backend_directory_is_removed_with_the_backend() {
    let backend = make(BackendKind::Filesystem).await.unwrap();
    let root = backend.fs_root.clone().unwrap();
    backend
        .store
        .put(&Path::from("x"), "x".into())
        .await
        .unwrap();
    assert!(root.join("x").is_file());
    drop(backend);
    assert!(!root.exists());
}
