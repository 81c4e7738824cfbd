//! A purge and a commit of the same session exclude each other, on every backend: a commit is
//! held before each of its writes in turn (`FaultyStore::pause_at`; on the filesystem that
//! includes every call of the upload engine) while a purge that finds the session idle runs.
//! Whatever the step, the commit either fails cleanly (nothing published) or publishes the
//! whole blob, the purge reports no error, and the store is left with nothing half-done: the
//! blob absent or whole, the same content pushable again, and no session leftovers once the
//! purger has run.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use layerstore::upload::{ChunkStream, PurgeOptions};
use layerstore::{Algorithm, BlobInfo, Digest, ErrorKind, Repository, UploadId};
use object_store::ObjectStoreExt;
use object_store::path::Path;

const MIB: usize = 1024 * 1024;

fn purge_idle() -> PurgeOptions {
    PurgeOptions {
        older_than: Duration::ZERO,
        dry_run: false,
    }
}

fn stream_of(data: &[u8]) -> ChunkStream<'static> {
    in_pieces(data, 256 * 1024)
}

/// A head chunk and a 9 MiB tail: on object stores a multipart upload with one part and a
/// staged piece, so a commit completes an upload and publishes two pieces.
fn content() -> Vec<u8> {
    [pattern(30, 1000), pattern(31, 9 * MIB)].concat()
}

async fn staged(r: &Repository, all: &[u8]) -> UploadId {
    let id = r.start_upload().await.unwrap().id;
    r.append_upload(&id, 0, stream_of(&all[..1000]))
        .await
        .unwrap();
    r.append_upload(&id, 1000, stream_of(&all[1000..]))
        .await
        .unwrap();
    id
}

async fn read_all(r: &Repository, digest: &Digest) -> Vec<u8> {
    let read = r.read_blob(digest, None).await.unwrap();
    let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    chunks.concat()
}

/// Deletes everything, so that the next iteration publishes from scratch (a published blob
/// would make the next commit skip the writes under test).
async fn clear(b: &TestBackend) {
    for key in keys(b, "").await {
        b.store.delete(&Path::from(key)).await.unwrap();
    }
}

/// Waits until the held write is reached, or the commit has ended without reaching it.
async fn until_held(
    faulty: &FaultyStore,
    commit: &tokio::task::JoinHandle<layerstore::Result<BlobInfo>>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !faulty.paused() && !commit.is_finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the commit never reached its held write"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn a_purge_during_a_commit_at_any_step_never_breaks_the_blob(b: TestBackend, alg: Algorithm) {
    let all = content();
    let digest = Digest::compute(alg, &all);
    let healthy = store_on(&b);
    // How many writes a commit makes.
    let probe_id = staged(&healthy.repository(repo("races/probe")), &all).await;
    let (store, probe) = faulty_store_on(&b);
    store
        .repository(repo("races/probe"))
        .commit_upload(&probe_id, &digest, None)
        .await
        .unwrap();
    let writes = probe.writes_seen();
    clear(&b).await;

    for n in 1..=writes {
        let name = repo(&format!("races/commit{n}"));
        let id = staged(&healthy.repository(name.clone()), &all).await;
        let (store, faulty) = faulty_store_on(&b);
        faulty.pause_at(n);
        let commit = {
            let (r, id) = (store.repository(name.clone()), id.clone());
            tokio::spawn(async move { r.commit_upload(&id, &digest, None).await })
        };
        until_held(&faulty, &commit).await;
        // Idle for longer than the purge age (zero): the purge sees an abandoned session.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let report = store_on(&b).purge_uploads(purge_idle()).await.unwrap();
        faulty.release();
        let committed = tokio::time::timeout(Duration::from_secs(60), commit)
            .await
            .unwrap_or_else(|_| panic!("write {n}: the commit hung"))
            .unwrap();
        assert!(report.errors.is_empty(), "write {n}: {report:?}");

        let r = healthy.repository(name.clone());
        match &committed {
            // Acknowledged: whole, in its repository.
            Ok(info) => {
                assert_eq!(info.size, all.len() as u64, "write {n}");
                assert!(read_all(&r, &digest).await == all, "write {n}: wrong bytes");
            }
            // Refused: a clean error, and no session to go on with.
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::BlobUploadInvalid | ErrorKind::BlobUploadUnknown
                    ),
                    "write {n}: {e}"
                );
                assert_eq!(
                    r.upload_status(&id).await.unwrap_err().kind(),
                    ErrorKind::BlobUploadUnknown,
                    "write {n}: the purge left the session it purged"
                );
                match r.read_blob(&digest, None).await {
                    Ok(_) => panic!("write {n}: a refused commit's blob is linked"),
                    Err(e) => assert_eq!(e.kind(), ErrorKind::BlobUnknown, "write {n}"),
                }
            }
        }
        // Whatever happened, the same content can be pushed again and reads back whole
        // (stored from scratch, or found whole by dedupe).
        let other = healthy.repository(repo(&format!("races/again{n}")));
        other
            .put_blob_stream(&digest, None, stream_of(&all))
            .await
            .unwrap_or_else(|e| panic!("write {n}: push again: {e}"));
        assert!(
            read_all(&other, &digest).await == all,
            "write {n}: wrong bytes"
        );
        // And the purger leaves nothing of the session behind.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let report = store_on(&b).purge_uploads(purge_idle()).await.unwrap();
        assert!(report.errors.is_empty(), "write {n}: {report:?}");
        assert_eq!(keys(&b, "uploads").await, Vec::<String>::new(), "write {n}");
        clear(&b).await;
    }
}

async fn a_purge_during_a_sha256_commit_at_any_step_never_breaks_the_blob(b: TestBackend) {
    a_purge_during_a_commit_at_any_step_never_breaks_the_blob(b, Algorithm::Sha256).await;
}

async fn a_purge_during_a_sha512_commit_at_any_step_never_breaks_the_blob(b: TestBackend) {
    // The slow path: the marker, completing the uploads, re-hashing, then the verified write.
    a_purge_during_a_commit_at_any_step_never_breaks_the_blob(b, Algorithm::Sha512).await;
}

backend_tests!(
    a_purge_during_a_sha256_commit_at_any_step_never_breaks_the_blob,
    a_purge_during_a_sha512_commit_at_any_step_never_breaks_the_blob,
);
