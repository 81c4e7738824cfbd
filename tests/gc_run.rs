//! Garbage collection runs: what they delete, what they keep while clients keep pushing,
//! pulling and deleting through the same or other stores (replicas), and how runs exclude
//! each other. Every test runs on memory, filesystem, S3 and Azure.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use layerstore::gc::{GcLockTiming, GcOptions, GcPhase, GcProgress, GcReport};
use layerstore::layout::KeyLayout;
use layerstore::{Digest, ErrorKind, Reference, Store};
use object_store::ObjectStoreExt;

fn run(delete_untagged: bool) -> GcOptions {
    GcOptions {
        delete_untagged,
        grace: Duration::ZERO,
        dry_run: false,
        // A staleness limit a loaded machine's emulators cannot trip: a run stops deleting
        // when a heartbeat write is late by half of it, and Azurite, after the GC crash suite,
        // has stalled for tens of seconds in CI. (Tests of the limit set their own.)
        lock: GcLockTiming {
            heartbeat: Duration::from_millis(100),
            stale_after: Duration::from_secs(90),
        },
    }
}

async fn gc(store: &Store, options: GcOptions) -> GcReport {
    store.gc(options, &|_| {}).await.unwrap()
}

async fn pull(store: &Store, name: &str, reference: &Reference) -> Vec<Bytes> {
    let r = store.repository(repo(name));
    let manifest = r.get_manifest(reference).await.unwrap();
    let parsed =
        layerstore::Manifest::parse(manifest.bytes.clone(), Some(&manifest.info.media_type))
            .unwrap();
    let mut all = vec![manifest.bytes];
    for (_, d) in parsed.references() {
        let read = r.read_blob(&d.digest, None).await.unwrap();
        let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
        all.push(Bytes::from(chunks.concat()));
    }
    all
}

async fn blob_data_keys(b: &TestBackend) -> Vec<String> {
    keys(b, "blobs").await
}

/// Pushes a blob into `name` that no manifest references.
async fn loose_blob(store: &Store, name: &str, content: &'static [u8]) -> Digest {
    let d = Digest::sha256(content);
    store
        .repository(repo(name))
        .put_blob(&d, Bytes::from_static(content))
        .await
        .unwrap();
    d
}

/// Starts a run in the background; `entered` turns true once it reaches `phase`.
fn start(
    store: &Store,
    options: GcOptions,
    phase: GcPhase,
) -> (
    tokio::task::JoinHandle<layerstore::Result<GcReport>>,
    Arc<AtomicBool>,
) {
    let entered = Arc::new(AtomicBool::new(false));
    let flag = entered.clone();
    let store = store.clone();
    let task = tokio::spawn(async move {
        let progress = move |p: &GcProgress| {
            if p.phase == phase {
                flag.store(true, Ordering::SeqCst);
            }
        };
        store.gc(options, &progress).await
    });
    (task, entered)
}

async fn until(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn a_deleted_manifest_loses_its_blobs_and_every_kept_image_still_pulls(b: TestBackend) {
    let store = store_on(&b);
    let (kept, _) = push_image(&store, "app", "kept", 2).await;
    let (old, old_blobs) = push_image(&store, "app", "old", 2).await;
    put_manifest(&store, "app", &tag("kept"), &kept).await;
    let old_digest = put_manifest(&store, "app", &tag("old"), &old).await;
    let before = pull(&store, "app", &tag("kept")).await;
    store
        .repository(repo("app"))
        .delete_manifest(&old_digest)
        .await
        .unwrap();
    let stored_before = blob_data_keys(&b).await.len();

    let report = gc(&store, run(false)).await;
    // The old manifest's bytes, config and two layers.
    assert_eq!(report.removed.blobs, 4, "{report:?}");
    assert_eq!(report.removed.links, 3, "{report:?}");
    assert_eq!(blob_data_keys(&b).await.len(), stored_before - 4);
    for d in old_blobs.iter().chain([&old_digest]) {
        let data = KeyLayout.blob_data(d);
        assert!(b.store.head(&data).await.is_err(), "{d} still stored");
    }
    assert_eq!(pull(&store, "app", &tag("kept")).await, before);
    // Nothing of the run is left behind: no verdict, no lock.
    assert_eq!(keys(&b, "gc/verdicts").await, Vec::<String>::new());
    assert_eq!(keys(&b, "gc/lock").await, Vec::<String>::new());
}

async fn a_second_run_finds_nothing_more(b: TestBackend) {
    let store = store_on(&b);
    loose_blob(&store, "scratch", b"garbage").await;
    let (m, _) = push_image(&store, "app", "kept", 1).await;
    put_manifest(&store, "app", &tag("v1"), &m).await;
    assert_eq!(gc(&store, run(false)).await.removed.blobs, 1);
    let again = gc(&store, run(false)).await;
    assert_eq!(again.removed, Default::default(), "{again:?}");
    assert_eq!(again.generation, 2);
}

async fn an_emptied_repository_leaves_the_catalog(b: TestBackend) {
    let store = store_on(&b);
    loose_blob(&store, "scratch", b"only this").await;
    let (m, _) = push_image(&store, "app", "kept", 1).await;
    put_manifest(&store, "app", &tag("v1"), &m).await;
    let report = gc(&store, run(false)).await;
    assert_eq!(report.removed.repositories, 1);
    let catalog = store.catalog(None, None).await.unwrap().items;
    assert_eq!(catalog, vec![repo("app")]);
}

async fn delete_untagged_removes_untagged_manifests_but_keeps_index_children_and_referrers(
    b: TestBackend,
) {
    let store = store_on(&b);
    let (amd64, _) = push_image(&store, "multi", "amd64", 1).await;
    put_manifest(
        &store,
        "multi",
        &Reference::Digest(Digest::sha256(&amd64)),
        &amd64,
    )
    .await;
    let index = put_index(&store, "multi", &tag("latest"), &[&amd64]).await;
    let (sig, _) = push_referrer(&store, "multi", &index, 200, "application/sig", "s").await;
    let (stray, _) = push_image(&store, "multi", "stray", 1).await;
    let stray_digest = put_manifest(
        &store,
        "multi",
        &Reference::Digest(Digest::sha256(&stray)),
        &stray,
    )
    .await;

    let report = gc(&store, run(true)).await;
    assert_eq!(report.removed.manifests, 1, "{report:?}");
    let r = store.repository(repo("multi"));
    let err = r
        .get_manifest(&Reference::Digest(stray_digest))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ManifestUnknown);
    pull(&store, "multi", &Reference::Digest(Digest::sha256(&amd64))).await;
    assert_eq!(
        r.get_manifest(&Reference::Digest(Digest::sha256(&sig)))
            .await
            .unwrap()
            .bytes,
        sig
    );
    assert_eq!(
        r.get_manifest(&tag("latest")).await.unwrap().info.digest,
        index
    );
}

async fn what_is_pushed_while_a_run_waits_is_kept(b: TestBackend) {
    let store = store_on(&b);
    let replica = store_on(&b);
    loose_blob(&store, "scratch", b"garbage").await;
    let (task, waiting) = start(&store, run(true), GcPhase::Wait);
    until(&waiting).await;
    let (m, _) = push_image(&replica, "app", "during", 2).await;
    put_manifest(&replica, "app", &tag("v1"), &m).await;
    let loose = loose_blob(&replica, "app", b"pushed, manifest to come").await;
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.removed.blobs, 1, "{report:?}");
    pull(&store, "app", &tag("v1")).await;
    assert!(
        store
            .repository(repo("app"))
            .blob_exists(&loose)
            .await
            .unwrap()
    );
}

async fn a_blob_a_head_found_during_the_run_is_kept(b: TestBackend) {
    let faulty = b.faulty();
    let gc_store = store_over(faulty.clone(), faulty.multipart_store());
    let replica = store_on(&b);
    let found = loose_blob(&replica, "app", b"headed during the run").await;
    let other = loose_blob(&replica, "app", b"nobody asks").await;
    // The replica has it cached from before the run.
    replica
        .repository(repo("app"))
        .stat_blob(&found)
        .await
        .unwrap();
    // Hold the run right before it condemns the blob (its first run: generation 1).
    faulty.pause_on("put", &KeyLayout.gc_blob_verdict(1, &found));
    let (task, _) = start(&gc_store, run(false), GcPhase::Links);
    until_paused(&faulty).await;
    replica
        .repository(repo("app"))
        .stat_blob(&found)
        .await
        .unwrap();
    faulty.release();
    let report = task.await.unwrap().unwrap();
    // Rescued twice: its link, then its bytes.
    assert_eq!(
        (report.removed.blobs, report.removed.rescued),
        (1, 2),
        "{report:?}"
    );
    let r = replica.repository(repo("app"));
    assert!(r.blob_exists(&found).await.unwrap());
    assert!(!r.blob_exists(&other).await.unwrap());
}

async fn a_blob_mounted_during_the_run_is_kept(b: TestBackend) {
    let faulty = b.faulty();
    let gc_store = store_over(faulty.clone(), faulty.multipart_store());
    let replica = store_on(&b);
    let d = loose_blob(&replica, "app", b"mounted during the run").await;
    faulty.pause_on("put", &KeyLayout.gc_blob_verdict(1, &d));
    let (task, _) = start(&gc_store, run(false), GcPhase::Links);
    until_paused(&faulty).await;
    let mounted = replica
        .repository(repo("other"))
        .mount_blob(&repo("app"), &d)
        .await
        .unwrap();
    assert!(mounted);
    faulty.release();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.removed.blobs, 0, "{report:?}");
    assert!(
        replica
            .repository(repo("other"))
            .blob_exists(&d)
            .await
            .unwrap()
    );
}

async fn a_mount_of_a_blob_being_deleted_mounts_nothing(b: TestBackend) {
    let faulty = b.faulty();
    let gc_store = store_over(faulty.clone(), faulty.multipart_store());
    let replica = store_on(&b);
    let d = loose_blob(&replica, "app", b"going").await;
    // Held right before it removes the link, its delete verdict taken.
    faulty.pause_on("delete", &KeyLayout.layer_link(&repo("app"), &d));
    let (task, _) = start(&gc_store, run(false), GcPhase::Links);
    until_paused(&faulty).await;
    let mounted = replica
        .repository(repo("other"))
        .mount_blob(&repo("app"), &d)
        .await
        .unwrap();
    assert!(!mounted);
    faulty.release();
    assert_eq!(task.await.unwrap().unwrap().removed.blobs, 1);
    assert!(
        !replica
            .repository(repo("other"))
            .blob_exists(&d)
            .await
            .unwrap()
    );
}

async fn after_a_run_no_replica_says_a_deleted_blob_exists(b: TestBackend) {
    let store = store_on(&b);
    let replica = store_on(&b);
    let d = loose_blob(&store, "app", b"cached elsewhere").await;
    replica.repository(repo("app")).stat_blob(&d).await.unwrap();
    assert_eq!(gc(&store, run(false)).await.removed.blobs, 1);
    let err = replica
        .repository(repo("app"))
        .stat_blob(&d)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BlobUnknown);
}

async fn a_commit_of_a_blob_being_deleted_waits_then_stores_it_anew(b: TestBackend) {
    let faulty = b.faulty();
    let gc_store = store_over(faulty.clone(), faulty.multipart_store());
    let client = store_on(&b);
    let content: &'static [u8] = b"deleted, then pushed again";
    let d = loose_blob(&client, "app", content).await;
    // Hold the run right before it deletes the bytes, its verdict taken.
    faulty.pause_on("delete", &KeyLayout.blob_data(&d));
    let (task, _) = start(&gc_store, run(false), GcPhase::Scan);
    until_paused(&faulty).await;
    let push = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .repository(repo("again"))
                .put_blob(&d, Bytes::from_static(content))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!push.is_finished(), "the push did not wait for the delete");
    faulty.release();
    let report = task.await.unwrap().unwrap();
    push.await.unwrap().unwrap();
    assert_eq!(report.removed.blobs, 1);
    let read = client
        .repository(repo("again"))
        .read_blob(&d, None)
        .await
        .unwrap();
    let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    assert_eq!(chunks.concat(), content);
}

/// A push slower than the grace period can span a whole run that never saw its pins: held
/// between storing the bytes and linking them while a run deletes the unlinked bytes and
/// finishes, it must fail rather than acknowledge a blob that is gone. Sent again, it stores.
async fn a_push_that_spans_a_whole_run_which_deleted_its_bytes_is_not_acknowledged(b: TestBackend) {
    let (client, faulty) = faulty_store_on(&b);
    let gc_store = store_on(&b);
    let content: &'static [u8] = b"stored while a whole run went by";
    let d = Digest::sha256(content);
    faulty.pause_on("put", &KeyLayout.layer_link(&repo("app"), &d));
    let push = {
        let r = client.repository(repo("app"));
        tokio::spawn(async move { r.put_blob(&d, Bytes::from_static(content)).await })
    };
    until_paused(&faulty).await;
    let report = gc(&gc_store, run(false)).await;
    assert_eq!(report.removed.blobs, 1, "{report:?}");
    faulty.release();
    let err = push.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("send it again"), "{err}");
    let r = client.repository(repo("app"));
    assert!(!r.blob_exists(&d).await.unwrap());
    r.put_blob(&d, Bytes::from_static(content)).await.unwrap();
    let read = r.read_blob(&d, None).await.unwrap();
    let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    assert_eq!(chunks.concat(), content);
}

/// The same for a manifest put held before it writes its revision: the run deleted the
/// layers it names (they were loose), so it is refused naming them, not acknowledged.
async fn a_manifest_put_that_spans_a_whole_run_which_deleted_its_layers_is_refused(b: TestBackend) {
    let (client, faulty) = faulty_store_on(&b);
    let gc_store = store_on(&b);
    let (m, blobs) = push_image(&client, "app", "slow", 1).await;
    let digest = Digest::sha256(&m);
    faulty.pause_on("put", &KeyLayout.manifest_revision(&repo("app"), &digest));
    let put = {
        let r = client.repository(repo("app"));
        tokio::spawn(async move {
            r.put_manifest(
                &tag("v1"),
                m,
                Some(layerstore::manifest::media_type::OCI_MANIFEST),
            )
            .await
        })
    };
    until_paused(&faulty).await;
    let report = gc(&gc_store, run(false)).await;
    assert!(report.removed.blobs >= blobs.len() as u64, "{report:?}");
    faulty.release();
    let err = put.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ManifestBlobUnknown, "{err}");
}

/// Waits until the held request is reached; a run that failed before it fails the test
/// (within a few minutes) instead of hanging it.
async fn until_paused(faulty: &FaultyStore) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while !faulty.paused() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held request was not reached in 180 s (did the run fail?)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn a_manifest_put_naming_a_blob_being_deleted_is_refused(b: TestBackend) {
    let faulty = b.faulty();
    let gc_store = store_over(faulty.clone(), faulty.multipart_store());
    let client = store_on(&b);
    let (m, blobs) = push_image(&client, "app", "late", 1).await;
    // The run holds right before it removes the layer's link, its verdict taken.
    faulty.pause_on("delete", &KeyLayout.layer_link(&repo("app"), &blobs[1]));
    let (task, _) = start(&gc_store, run(false), GcPhase::Links);
    until_paused(&faulty).await;
    let err = client
        .repository(repo("app"))
        .put_manifest(
            &tag("v1"),
            m,
            Some(layerstore::manifest::media_type::OCI_MANIFEST),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ManifestBlobUnknown);
    assert!(err.to_string().contains(&blobs[1].to_string()), "{err}");
    faulty.release();
    task.await.unwrap().unwrap();
}

async fn a_second_run_while_one_runs_is_refused(b: TestBackend) {
    let store = store_on(&b);
    let live = GcOptions {
        grace: Duration::from_secs(3),
        lock: GcLockTiming {
            heartbeat: Duration::from_millis(100),
            stale_after: Duration::from_secs(5),
        },
        ..run(false)
    };
    let (first, waiting) = start(&store, live, GcPhase::Wait);
    until(&waiting).await;
    let err = store.gc(live, &|_| {}).await.unwrap_err();
    assert!(
        err.to_string().contains("another garbage collection"),
        "{err}"
    );
    first.await.unwrap().unwrap();
}

async fn a_run_that_finds_a_live_run_goes_on_once_it_ended(b: TestBackend) {
    let store = store_on(&b);
    loose_blob(&store, "scratch", b"garbage").await;
    // The first run ends (in about 3 s) while the second watches its lock (up to 60 s: a
    // stalled emulator must not make the first look dead).
    let (first, waiting) = start(&store, run(false), GcPhase::Wait);
    until(&waiting).await;
    let patient = GcOptions {
        lock: GcLockTiming {
            heartbeat: Duration::from_millis(100),
            stale_after: Duration::from_secs(60),
        },
        ..run(false)
    };
    let second = gc(&store, patient).await;
    let first = first.await.unwrap().unwrap();
    assert_eq!((first.generation, second.generation), (1, 2));
    assert!(!second.took_over, "{second:?}");
    assert_eq!(first.removed.blobs + second.removed.blobs, 1);
}

async fn an_abandoned_run_is_taken_over_and_its_verdicts_released(b: TestBackend) {
    let store = store_on(&b);
    let d = loose_blob(&store, "app", b"condemned by a run that died").await;
    // What a run that died mid-sweep leaves: its lock, its state, a delete verdict.
    let layout = KeyLayout;
    b.store
        .put(&layout.gc_lock(), Bytes::from_static(b"dead").into())
        .await
        .unwrap();
    let state = br#"{"generation":4,"active":true,"run":"dead","heartbeat":7}"#;
    b.store
        .put(&layout.gc_state(), Bytes::from_static(state).into())
        .await
        .unwrap();
    b.store
        .put(
            &layout.gc_blob_verdict(4, &d),
            Bytes::from_static(b"delete").into(),
        )
        .await
        .unwrap();
    // A push of that blob waits for the dead run's delete...
    let push = {
        let store = store_on(&b);
        tokio::spawn(async move {
            store
                .repository(repo("again"))
                .put_blob(&d, Bytes::from_static(b"condemned by a run that died"))
                .await
        })
    };
    // The next run takes the lock over after its staleness limit (short here: the takeover
    // is what this tests).
    let taking_over = GcOptions {
        lock: GcLockTiming {
            heartbeat: Duration::from_millis(100),
            stale_after: Duration::from_secs(10),
        },
        ..run(false)
    };
    let (task, waiting) = start(&store, taking_over, GcPhase::Wait);
    until(&waiting).await;
    // ...and goes on once the next run released it, while that run still waits.
    let pushed = tokio::time::timeout(Duration::from_secs(30), push).await;
    assert!(!task.is_finished());
    pushed
        .expect("the push was never released")
        .unwrap()
        .unwrap();
    let report = task.await.unwrap().unwrap();
    assert!(report.took_over);
    assert_eq!(report.generation, 5);
    assert_eq!(keys(&b, "gc/verdicts").await, Vec::<String>::new());
}

/// Pushes `data` into `name` as chunks of 64 KiB (pieces on object stores); returns the
/// upload id, left open when `commit` is false.
async fn chunked(store: &Store, name: &str, data: &[u8], commit: bool) -> layerstore::UploadId {
    let r = store.repository(repo(name));
    let id = r.start_upload().await.unwrap().id;
    let mut offset = 0;
    for chunk in data.chunks(64 * 1024) {
        r.append_upload(&id, offset, in_pieces(chunk, chunk.len()))
            .await
            .unwrap();
        offset += chunk.len() as u64;
    }
    if commit {
        r.commit_upload(&id, &Digest::sha256(data), None)
            .await
            .unwrap();
    }
    id
}

async fn pieces_left_by_an_interrupted_cancel_are_collected_and_no_others(b: TestBackend) {
    if b.kind == BackendKind::Filesystem {
        return; // The filesystem engine keeps an upload in one file, never in pieces.
    }
    let store = store_on(&b);
    // Kept: an image whose layer was pushed in chunks, and a session still open.
    let layer = pattern(1, 300 * 1024);
    chunked(&store, "app", &layer, true).await;
    let (m, _) = push_image(&store, "app", "chunked", 0).await;
    let mut doc: serde_json::Value = serde_json::from_slice(&m).unwrap();
    doc["layers"] = serde_json::json!([{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::sha256(&layer).to_string(), "size": layer.len()}]);
    let m = Bytes::from(serde_json::to_vec(&doc).unwrap());
    put_manifest(&store, "app", &tag("v1"), &m).await;
    let open = chunked(&store, "app", &pattern(2, 200 * 1024), false).await;
    // Left behind: a session whose state a cancel deleted before it could delete the pieces.
    let dead = chunked(&store, "app", &pattern(3, 200 * 1024), false).await;
    b.store
        .delete(&KeyLayout.upload_state(dead.as_str()))
        .await
        .unwrap();
    assert!(!keys(&b, &format!("segments/{dead}")).await.is_empty());

    let report = gc(&store, run(false)).await;
    assert_eq!(report.removed.leftover_uploads, 1, "{report:?}");
    assert_eq!(
        keys(&b, &format!("segments/{dead}")).await,
        Vec::<String>::new()
    );
    assert!(!keys(&b, &format!("segments/{open}")).await.is_empty());
    let pulled = pull(&store, "app", &tag("v1")).await;
    assert_eq!(pulled.last().unwrap().as_ref(), layer.as_slice());
}

async fn pieces_of_a_quarantined_blob_are_kept(b: TestBackend) {
    if b.kind == BackendKind::Filesystem {
        return; // The filesystem engine keeps an upload in one file, never in pieces.
    }
    let store = store_on(&b);
    let data = pattern(4, 300 * 1024);
    let id = chunked(&store, "app", &data, true).await;
    // Corrupt one piece; scrub's repair moves the index to quarantine/.
    let pieces = keys(&b, &format!("segments/{id}")).await;
    let piece = object_store::path::Path::from(pieces[0].as_str());
    let size = b.store.head(&piece).await.unwrap().size as usize;
    b.store
        .put(&piece, Bytes::from(vec![0u8; size]).into())
        .await
        .unwrap();
    let repaired = store
        .scrub(
            layerstore::ScrubOptions {
                repair: true,
                ..Default::default()
            },
            &|_| {},
        )
        .await
        .unwrap();
    let quarantined = repaired.problems.iter().any(|p| {
        p.repair
            .as_deref()
            .is_some_and(|r| r.starts_with("moved to quarantine/"))
    });
    assert!(quarantined, "{repaired:?}");
    let report = gc(&store, run(false)).await;
    assert_eq!(report.removed.leftover_uploads, 0, "{report:?}");
    assert_eq!(keys(&b, &format!("segments/{id}")).await, pieces);
}

async fn a_cancelled_run_stops_its_heartbeat_so_the_next_run_takes_over(b: TestBackend) {
    let store = store_on(&b);
    // A staleness limit a loaded machine's S3 cannot trip (the run stops deleting when a
    // heartbeat write is late by half of it).
    let lock = GcLockTiming {
        heartbeat: Duration::from_millis(200),
        stale_after: Duration::from_secs(5),
    };
    let waits = GcOptions {
        grace: Duration::from_secs(3600),
        lock,
        ..run(false)
    };
    let (cancelled, waiting) = start(&store, waits, GcPhase::Wait);
    until(&waiting).await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    // A heartbeat still beating would make this run refuse ("another garbage collection
    // is running") after watching the lock for `stale_after`.
    let report = gc(&store, GcOptions { lock, ..run(false) }).await;
    assert!(report.took_over, "{report:?}");
    assert_eq!(report.generation, 2);
}

backend_tests!(
    a_deleted_manifest_loses_its_blobs_and_every_kept_image_still_pulls,
    a_second_run_finds_nothing_more,
    an_emptied_repository_leaves_the_catalog,
    delete_untagged_removes_untagged_manifests_but_keeps_index_children_and_referrers,
    what_is_pushed_while_a_run_waits_is_kept,
    a_blob_a_head_found_during_the_run_is_kept,
    a_blob_mounted_during_the_run_is_kept,
    a_mount_of_a_blob_being_deleted_mounts_nothing,
    after_a_run_no_replica_says_a_deleted_blob_exists,
    a_commit_of_a_blob_being_deleted_waits_then_stores_it_anew,
    a_manifest_put_naming_a_blob_being_deleted_is_refused,
    a_second_run_while_one_runs_is_refused,
    a_run_that_finds_a_live_run_goes_on_once_it_ended,
    an_abandoned_run_is_taken_over_and_its_verdicts_released,
    pieces_left_by_an_interrupted_cancel_are_collected_and_no_others,
    pieces_of_a_quarantined_blob_are_kept,
    a_cancelled_run_stops_its_heartbeat_so_the_next_run_takes_over,
);

// The two tests that hold a client's write across a whole run hold it at the write of a link
// or revision as the object store sees it. The filesystem backend writes those through its own
// group-committing writer, not as object-store puts, so this harness cannot hold them there;
// the check they test is in `Repository`, the same for every backend.
mod held_across_a_run {
    use super::*;

    backend_tests!(@kind memory, Memory,
        a_push_that_spans_a_whole_run_which_deleted_its_bytes_is_not_acknowledged,
        a_manifest_put_that_spans_a_whole_run_which_deleted_its_layers_is_refused
    );
    backend_tests!(@kind s3, S3,
        a_push_that_spans_a_whole_run_which_deleted_its_bytes_is_not_acknowledged,
        a_manifest_put_that_spans_a_whole_run_which_deleted_its_layers_is_refused
    );
    backend_tests!(@kind azure, Azure,
        a_push_that_spans_a_whole_run_which_deleted_its_bytes_is_not_acknowledged,
        a_manifest_put_that_spans_a_whole_run_which_deleted_its_layers_is_refused
    );
}
