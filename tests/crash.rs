//! Crash points: for every N along an operation, the process "dies" just before its Nth
//! backend write (that write and all later ones fail). A store over the same backend — the
//! restarted process — must then see the operation either not at all or whole, never in part,
//! and must be able to redo it.
//!
//! On every backend the store is the one production builds: on the filesystem, the real
//! filesystem backend, whose writes are `object_store` requests (links, manifests) and the
//! upload engine's file-system calls (staging, fsync, rename), numbered in one sequence.

mod common;

use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use layerstore::manifest::media_type;
use layerstore::{Digest, ErrorKind, Reference, Store, Tag};
use serde_json::json;

/// Runs `op` against a store whose backend crashes at each write in turn, and `check` against
/// a healthy store over the same backend after each crash. `op` gets the iteration number so
/// each iteration can use its own repository and content; `check` also learns whether `op`
/// reported success: a crash after an operation's commit point (during cleanup the client
/// does not wait for) may go unnoticed by it, and then its result must be there whole.
async fn at_every_crash_point<Op, OpFut, Check, CheckFut>(b: &TestBackend, op: Op, check: Check)
where
    Op: Fn(Store, u64) -> OpFut,
    OpFut: Future<Output = layerstore::Result<()>>,
    Check: Fn(Store, u64, Acknowledged) -> CheckFut,
    CheckFut: Future<Output = ()>,
{
    // A clean run counts the writes; iteration 0 is that run.
    let (store, probe) = faulty_store_on(b);
    op(store, 0).await.expect("clean run");
    let writes = probe.writes_seen();
    assert!(writes > 0);
    for n in 1..=writes {
        let (store, faulty) = faulty_store_on(b);
        faulty.crash_at(n);
        let result = op(store, n).await;
        // (The number of writes can differ between runs: a blob whose directories exist
        // already needs fewer. A crash point past the end is a run without a crash.)
        if faulty.faults_injected() == 0
            && let Err(e) = &result
        {
            panic!("run without a crash failed: {e}");
        }
        check(store_on(b), n, Acknowledged(result.is_ok())).await;
        // The restarted process can redo the operation.
        op(store_on(b), n)
            .await
            .unwrap_or_else(|e| panic!("redo after crash at write {n}: {e}"));
    }
}

/// Whether the crashed operation reported success.
#[derive(Debug, Clone, Copy)]
struct Acknowledged(bool);

fn blob_for(n: u64) -> Bytes {
    Bytes::from(format!("blob number {n} ").repeat(1000))
}

async fn a_crash_during_a_blob_put_leaves_the_blob_absent_or_whole(b: TestBackend) {
    at_every_crash_point(
        &b,
        |store, n| async move {
            let data = blob_for(n);
            let r = store.repository(repo(&format!("crash/blob{n}")));
            r.put_blob(&Digest::sha256(&data), data).await.map(|_| ())
        },
        |store, n, acked| async move {
            let data = blob_for(n);
            let d = Digest::sha256(&data);
            let r = store.repository(repo(&format!("crash/blob{n}")));
            match r.read_blob(&d, None).await {
                Ok(read) => {
                    assert_eq!(read.info.size, data.len() as u64);
                    let got: Vec<Bytes> = read.stream.try_collect().await.unwrap();
                    assert_eq!(
                        got.concat(),
                        data,
                        "partial blob visible after crash at {n}"
                    );
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::BlobUnknown);
                    assert!(!acked.0, "acknowledged blob missing after crash at {n}");
                }
            }
        },
    )
    .await;
}

/// Pushes (cleanly) a config, one layer and a subject image into `name`; returns the bytes of
/// a manifest that references them with the subject.
async fn prepare_referrer(store: &Store, name: &str, n: u64) -> (Bytes, Digest) {
    let r = store.repository(repo(name));
    let config = Bytes::from(format!("{{\"n\":{n}}}"));
    let layer = blob_for(n);
    let (cd, ld) = (Digest::sha256(&config), Digest::sha256(&layer));
    r.put_blob(&cd, config.clone()).await.unwrap();
    r.put_blob(&ld, layer.clone()).await.unwrap();
    let subject = Digest::sha256(format!("subject {n}").as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": layer.len()}],
        "subject": {"mediaType": media_type::OCI_MANIFEST, "digest": subject.to_string(), "size": 123},
    });
    (Bytes::from(serde_json::to_vec(&manifest).unwrap()), subject)
}

fn latest() -> Reference {
    Reference::Tag(Tag::parse("latest").unwrap())
}

/// What a reader may see of a manifest that was being put or deleted: all of it or none, and
/// if the operation reported success, what it said it did (`present`).
async fn assert_manifest_absent_or_whole(
    store: &Store,
    name: &str,
    bytes: &Bytes,
    subject: &Digest,
    n: u64,
    present: Option<bool>,
) {
    let r = store.repository(repo(name));
    let digest = Digest::sha256(bytes);
    let by_digest = r.get_manifest(&Reference::Digest(digest)).await;
    let referrers = r.referrers(subject, None).await.unwrap();
    let listed: Vec<Digest> = referrers.manifests.iter().map(|d| d.digest).collect();
    if let Some(present) = present {
        assert_eq!(by_digest.is_ok(), present, "acknowledged, but crash at {n}");
    }
    match by_digest {
        Ok(got) => {
            assert_eq!(&got.bytes, bytes, "crash at {n}");
            assert_eq!(
                listed,
                vec![digest],
                "visible manifest missing from referrers, crash at {n}"
            );
            let catalog = store.catalog(None, None).await.unwrap();
            assert!(catalog.items.contains(&repo(name)), "crash at {n}");
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::ManifestUnknown, "crash at {n}");
            assert!(
                listed.is_empty(),
                "referrer listed without its manifest, crash at {n}"
            );
        }
    }
    // Every listed tag resolves to a whole manifest: no tag is left naming nothing.
    if let Ok(tags) = r.tags(None, None).await {
        for t in tags.items {
            let got = r.get_manifest(&Reference::Tag(t.clone())).await;
            let got = got.unwrap_or_else(|e| {
                panic!("tag {t} listed but unresolvable after crash at {n}: {e}")
            });
            assert_eq!(got.info.digest, Digest::sha256(&got.bytes));
        }
    }
    match r.get_manifest(&latest()).await {
        Ok(got) => assert_eq!(&got.bytes, bytes, "crash at {n}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ManifestUnknown, "crash at {n}"),
    }
}

async fn a_crash_during_a_manifest_put_leaves_it_absent_or_whole(b: TestBackend) {
    let clean = store_on(&b);
    let clean = &clean;
    at_every_crash_point(
        &b,
        |store, n| async move {
            let name = format!("crash/put{n}");
            let (bytes, _) = prepare_referrer(clean, &name, n).await;
            store
                .repository(repo(&name))
                .put_manifest(&latest(), bytes, Some(media_type::OCI_MANIFEST))
                .await
                .map(|_| ())
        },
        |store, n, acked| async move {
            let name = format!("crash/put{n}");
            let (bytes, subject) = prepare_referrer(&store, &name, n).await;
            let present = acked.0.then_some(true);
            assert_manifest_absent_or_whole(&store, &name, &bytes, &subject, n, present).await;
        },
    )
    .await;
}

async fn a_crash_during_a_manifest_delete_leaves_it_present_or_gone(b: TestBackend) {
    let clean = store_on(&b);
    let clean = &clean;
    at_every_crash_point(
        &b,
        |store, n| async move {
            let name = format!("crash/delete{n}");
            let (bytes, _) = prepare_referrer(clean, &name, n).await;
            // Set up cleanly; on a redo after a crash this puts back whatever the crash removed.
            let digest = clean
                .repository(repo(&name))
                .put_manifest(&latest(), bytes, Some(media_type::OCI_MANIFEST))
                .await?
                .digest;
            store.repository(repo(&name)).delete_manifest(&digest).await
        },
        |store, n, acked| async move {
            let name = format!("crash/delete{n}");
            let (bytes, subject) = prepare_referrer(&store, &name, n).await;
            let present = acked.0.then_some(false);
            assert_manifest_absent_or_whole(&store, &name, &bytes, &subject, n, present).await;
        },
    )
    .await;
}

backend_tests!(
    a_crash_during_a_blob_put_leaves_the_blob_absent_or_whole,
    a_crash_during_a_manifest_put_leaves_it_absent_or_whole,
    a_crash_during_a_manifest_delete_leaves_it_present_or_gone,
);
