//! Uploads under backend faults: for every request along an append, a commit and a cancel,
//! that request fails once (`fail_nth`, `fail_nth_read`), is made but its reply is lost
//! (`fail_after_nth`: the caller cannot know whether it happened), or the process dies just
//! before it (`crash_at`). A healthy store over the same backend — the retrying client's next request,
//! or the restarted process — must then see the session at its old offset or its new one,
//! never in between, must be able to redo the failed step and commit, and must never read
//! wrong bytes under the digest.
//!
//! Every backend runs the engine production runs: on the filesystem, the real filesystem
//! backend, with its `object_store` requests and its upload engine's file-system calls
//! (create, write, fsync, lock, rename, remove) numbered in one sequence, so every call of the
//! staging file, the two-slot state, the writer and the publish-by-rename is failed in turn.

mod common;

use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use layerstore::upload::{ChunkStream, PurgeOptions};
use layerstore::{Algorithm, Digest, ErrorKind, Repository, RepositoryName, Store, UploadId};
use object_store::ObjectStoreExt;
use object_store::path::Path;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// One injected fault.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Write n fails; the others go through (a failed request).
    FailWrite(u64),
    /// Read n fails; the others go through.
    FailRead(u64),
    /// Write n and every later one fail (the process dies before write n).
    Crash(u64),
    /// Write n is made, then reported failed (its reply is lost: the caller cannot know).
    LostReply(u64),
}

impl Fault {
    fn arm(self, store: &FaultyStore) {
        match self {
            Fault::FailWrite(n) => store.fail_nth(n),
            Fault::FailRead(n) => store.fail_nth_read(n),
            Fault::Crash(n) => store.crash_at(n),
            Fault::LostReply(n) => store.fail_after_nth(n),
        }
    }

    /// Every fault along an operation that makes `writes` writes and `reads` reads.
    fn all_along(writes: u64, reads: u64) -> Vec<Fault> {
        let mut faults = vec![];
        for n in 1..=writes {
            faults.push(Fault::FailWrite(n));
            faults.push(Fault::Crash(n));
            faults.push(Fault::LostReply(n));
        }
        faults.extend((1..=reads).map(Fault::FailRead));
        faults
    }
}

/// Runs an operation under a fault: it must end (with any result), never hang — a request
/// that waits forever after a failed write would hold its session, and its client, for good.
async fn ends<T>(fault: Fault, op: impl Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), op)
        .await
        .unwrap_or_else(|_| panic!("{fault:?}: the operation hung"))
}

/// Counts the writes and reads `op` makes through a fault wrapper without faults.
async fn probe<F, Fut>(b: &TestBackend, op: F) -> (u64, u64)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let (store, faulty) = faulty_store_on(b);
    op(store).await;
    (faulty.writes_seen(), faulty.reads_seen())
}

/// A session in `r` holding `head`; returns its id.
async fn session_with(r: &Repository, head: &[u8]) -> UploadId {
    let id = r.start_upload().await.unwrap().id;
    r.append_upload(&id, 0, stream_of(head)).await.unwrap();
    id
}

/// What a reader of `digest` in `r` may see: nothing, or exactly `want`.
async fn assert_absent_or_whole(r: &Repository, digest: &Digest, want: &[u8], fault: Fault) {
    match r.read_blob(digest, None).await {
        Ok(read) => {
            let got: Vec<Bytes> = read
                .stream
                .try_collect()
                .await
                .unwrap_or_else(|e| panic!("{fault:?}: visible blob cannot be read: {e}"));
            assert!(
                got.concat() == want,
                "{fault:?}: wrong bytes under {digest}"
            );
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::BlobUnknown, "{fault:?}: {e}"),
    }
}

async fn assert_reads_back(r: &Repository, digest: &Digest, want: &[u8], fault: Fault) {
    let read = r
        .read_blob(digest, None)
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
    let got: Vec<Bytes> = read
        .stream
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: committed blob cannot be read: {e}"));
    assert!(
        got.concat() == want,
        "{fault:?}: wrong bytes under {digest}"
    );
}

/// Runs an append of `chunk` after a 1000-byte head, failed at every point, then checks the
/// session and finishes it from a healthy store.
async fn append_at_every_fault(b: TestBackend, chunk_len: usize) {
    let head = pattern(0, 1000);
    let chunk = pattern(1, chunk_len);
    let all = [head.clone(), chunk.clone()].concat();
    let digest = Digest::sha256(&all);
    let setup = store_on(&b);
    let probe_id = session_with(&setup.repository(repo("faults/probe")), &head).await;
    let (writes, reads) = probe(&b, |store| async move {
        let r = store.repository(repo("faults/probe"));
        r.append_upload(&probe_id, 1000, stream_of(&pattern(1, chunk_len)))
            .await
            .unwrap();
    })
    .await;
    assert!(writes >= 2, "an append writes its bytes and its state");

    for (i, fault) in Fault::all_along(writes, reads).into_iter().enumerate() {
        let name = repo(&format!("faults/append{i}"));
        let id = session_with(&setup.repository(name.clone()), &head).await;
        let (store, faulty) = faulty_store_on(&b);
        fault.arm(&faulty);
        let result = ends(
            fault,
            store
                .repository(name.clone())
                .append_upload(&id, 1000, stream_of(&chunk)),
        )
        .await;

        let r = store_on(&b).repository(name);
        let offset = r.upload_status(&id).await.unwrap().offset;
        match &result {
            Ok(status) => assert_eq!(
                (status.offset, offset),
                (all.len() as u64, all.len() as u64),
                "{fault:?}"
            ),
            Err(_) => assert!(
                offset == 1000 || offset == all.len() as u64,
                "{fault:?}: session at {offset}, between the old and new offset"
            ),
        }
        assert_absent_or_whole(&r, &digest, &all, fault).await;
        if offset == 1000 {
            r.append_upload(&id, 1000, stream_of(&chunk))
                .await
                .unwrap_or_else(|e| panic!("{fault:?}: redo of the append: {e}"));
        }
        r.commit_upload(&id, &digest, Some(all.len() as u64))
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: commit after the fault: {e}"));
        assert_reads_back(&r, &digest, &all, fault).await;
    }
}

async fn a_failed_append_leaves_the_session_at_the_old_or_the_new_offset(b: TestBackend) {
    append_at_every_fault(b, 300 * KIB).await;
}

async fn a_failed_multipart_append_leaves_the_session_at_the_old_or_the_new_offset(b: TestBackend) {
    // A part's worth and more: the append claims an upload, sends a part that takes in the
    // staged head, and stages the rest.
    append_at_every_fault(b, 11 * MIB).await;
}

/// The two chunks every commit test stages, and their digest: on object stores, an open
/// multipart upload with one 8 MiB part and a staged segment, so a commit completes an upload
/// and lists two pieces. Sessions hash SHA-256 as they go; a commit under another algorithm
/// re-hashes the stored pieces.
fn commit_content(alg: Algorithm) -> (Vec<u8>, Vec<u8>, Digest) {
    let (head, tail) = (pattern(10, 1000), pattern(11, 9 * MIB));
    let digest = Digest::compute(alg, &[head.clone(), tail.clone()].concat());
    (head, tail, digest)
}

/// A session in `name` with both commit chunks staged, from a healthy store.
async fn staged_for_commit(b: &TestBackend, name: &RepositoryName) -> UploadId {
    let (head, tail, _) = commit_content(Algorithm::Sha256);
    let r = store_on(b).repository(name.clone());
    let id = session_with(&r, &head).await;
    r.append_upload(&id, head.len() as u64, stream_of(&tail))
        .await
        .unwrap();
    id
}

/// Commits a staged session through a store with `fault`; returns the session and whether
/// the commit reported success.
async fn commit_with_fault(
    b: &TestBackend,
    name: &RepositoryName,
    fault: Fault,
    alg: Algorithm,
) -> (UploadId, bool) {
    let (_, _, digest) = commit_content(alg);
    let id = staged_for_commit(b, name).await;
    let (store, faulty) = faulty_store_on(b);
    fault.arm(&faulty);
    let result = ends(
        fault,
        store
            .repository(name.clone())
            .commit_upload(&id, &digest, None),
    )
    .await;
    (id, result.is_ok())
}

async fn commit_faults(b: &TestBackend, alg: Algorithm) -> Vec<Fault> {
    let name = repo("faults/probe");
    let id = staged_for_commit(b, &name).await;
    let (_, _, digest) = commit_content(alg);
    let (writes, reads) = probe(b, |store| async move {
        store
            .repository(name)
            .commit_upload(&id, &digest, None)
            .await
            .unwrap();
    })
    .await;
    // The probe published the blob: every later commit would dedupe against it and skip the
    // writes under test. Each fault starts from an empty backend instead.
    clear(b).await;
    Fault::all_along(writes, reads)
}

async fn redo_commit_after_every_fault(b: TestBackend, alg: Algorithm) {
    let (head, tail, digest) = commit_content(alg);
    let all = [head, tail].concat();
    for (i, fault) in commit_faults(&b, alg).await.into_iter().enumerate() {
        let name = repo(&format!("faults/commit{i}"));
        let (id, committed) = commit_with_fault(&b, &name, fault, alg).await;

        let r = store_on(&b).repository(name);
        assert_absent_or_whole(&r, &digest, &all, fault).await;
        match r.upload_status(&id).await {
            // The commit failed, or it succeeded and only the delete of its state failed
            // (a stored blob is never answered with an error): either way a retried commit
            // finishes it.
            Ok(status) => {
                if committed {
                    assert_reads_back(&r, &digest, &all, fault).await;
                }
                assert_eq!(status.offset, all.len() as u64, "{fault:?}");
                r.commit_upload(&id, &digest, None)
                    .await
                    .unwrap_or_else(|e| panic!("{fault:?}: redo of the commit: {e}"));
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::BlobUploadUnknown, "{fault:?}");
                assert!(committed, "{fault:?}: session gone but the commit failed");
            }
        }
        assert_reads_back(&r, &digest, &all, fault).await;
        // Every later push of the same content finds it whole.
        let other = store_on(&b).repository(repo(&format!("faults/again{i}")));
        other
            .put_blob_stream(&digest, None, stream_of(&all))
            .await
            .unwrap();
        assert_reads_back(&other, &digest, &all, fault).await;
        clear(&b).await;
    }
}

async fn a_failed_commit_publishes_the_blob_whole_or_not_at_all_and_can_be_redone(b: TestBackend) {
    redo_commit_after_every_fault(b, Algorithm::Sha256).await;
}

async fn a_failed_sha512_commit_publishes_the_blob_whole_or_not_at_all_and_can_be_redone(
    b: TestBackend,
) {
    redo_commit_after_every_fault(b, Algorithm::Sha512).await;
}

async fn cancelling_after_a_failed_commit_keeps_whatever_was_published_whole(b: TestBackend) {
    cancel_after_every_commit_fault(b, Algorithm::Sha256).await;
}

async fn cancelling_after_a_failed_sha512_commit_keeps_whatever_was_published_whole(
    b: TestBackend,
) {
    cancel_after_every_commit_fault(b, Algorithm::Sha512).await;
}

async fn purging_after_a_failed_commit_keeps_whatever_was_published_whole(b: TestBackend) {
    purge_after_every_commit_fault(b, Algorithm::Sha256).await;
}

async fn purging_after_a_failed_sha512_commit_keeps_whatever_was_published_whole(b: TestBackend) {
    purge_after_every_commit_fault(b, Algorithm::Sha512).await;
}

/// Deletes everything, so that the next iteration publishes from scratch.
async fn clear(b: &TestBackend) {
    for key in keys(b, "").await {
        b.store.delete(&Path::from(key)).await.unwrap();
    }
}

async fn cancel_after_every_commit_fault(b: TestBackend, alg: Algorithm) {
    // A client that gets an error on commit may give up and cancel the session.
    let (head, tail, digest) = commit_content(alg);
    let all = [head, tail].concat();
    for (i, fault) in commit_faults(&b, alg).await.into_iter().enumerate() {
        let name = repo(&format!("faults/cancel{i}"));
        let (id, _) = commit_with_fault(&b, &name, fault, alg).await;
        let r = store_on(&b).repository(name);
        match r.cancel_upload(&id).await {
            Ok(()) => {}
            Err(e) => assert_eq!(e.kind(), ErrorKind::BlobUploadUnknown, "{fault:?}: {e}"),
        }
        assert_absent_or_whole(&r, &digest, &all, fault).await;
        let other = store_on(&b).repository(repo(&format!("faults/after{i}")));
        other
            .put_blob_stream(&digest, None, stream_of(&all))
            .await
            .unwrap();
        assert_reads_back(&other, &digest, &all, fault).await;
        clear(&b).await;
    }
}

async fn purge_after_every_commit_fault(b: TestBackend, alg: Algorithm) {
    let (head, tail, digest) = commit_content(alg);
    let all = [head, tail].concat();
    for (i, fault) in commit_faults(&b, alg).await.into_iter().enumerate() {
        let name = repo(&format!("faults/purge{i}"));
        let (_, _) = commit_with_fault(&b, &name, fault, alg).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let report = store_on(&b)
            .purge_uploads(PurgeOptions {
                older_than: std::time::Duration::ZERO,
                dry_run: false,
            })
            .await
            .unwrap();
        assert!(report.errors.is_empty(), "{fault:?}: {report:?}");
        assert!(keys(&b, "uploads").await.is_empty(), "{fault:?}");
        let r = store_on(&b).repository(name);
        assert_absent_or_whole(&r, &digest, &all, fault).await;
        let other = store_on(&b).repository(repo(&format!("faults/after{i}")));
        other
            .put_blob_stream(&digest, None, stream_of(&all))
            .await
            .unwrap();
        assert_reads_back(&other, &digest, &all, fault).await;
        clear(&b).await;
    }
}

async fn a_failed_cancel_leaves_the_session_whole_or_gone(b: TestBackend) {
    // Three segments, so a cancel has several deletes to fail between.
    let chunks = [pattern(20, 1000), pattern(21, 2000), pattern(22, 3000)];
    let all = chunks.concat();
    let digest = Digest::sha256(&all);
    let stage = |name: RepositoryName| {
        let chunks = chunks.clone();
        let store = store_on(&b);
        async move {
            let r = store.repository(name);
            let id = r.start_upload().await.unwrap().id;
            let mut offset = 0;
            for c in &chunks {
                r.append_upload(&id, offset, stream_of(c)).await.unwrap();
                offset += c.len() as u64;
            }
            id
        }
    };
    let probe_id = stage(repo("faults/probe")).await;
    let (writes, reads) = probe(&b, |store| async move {
        store
            .repository(repo("faults/probe"))
            .cancel_upload(&probe_id)
            .await
            .unwrap();
    })
    .await;
    for (i, fault) in Fault::all_along(writes, reads).into_iter().enumerate() {
        let name = repo(&format!("faults/cancel{i}"));
        let id = stage(name.clone()).await;
        let (store, faulty) = faulty_store_on(&b);
        fault.arm(&faulty);
        let cancelled = ends(fault, store.repository(name.clone()).cancel_upload(&id)).await;
        let r = store_on(&b).repository(name);
        match r.upload_status(&id).await {
            // Still there: it must still be the whole session, committable to the right bytes.
            Ok(status) => {
                assert!(cancelled.is_err(), "{fault:?}: session outlived its cancel");
                assert_eq!(status.offset, all.len() as u64);
                match r.commit_upload(&id, &digest, None).await {
                    Ok(_) => assert_reads_back(&r, &digest, &all, fault).await,
                    // Refusing to commit a half-cancelled session is fine too.
                    Err(e) => assert_eq!(e.kind(), ErrorKind::BlobUploadUnknown, "{fault:?}"),
                }
            }
            // Gone, or half cancelled: a retried cancel, or a purge even with the default age,
            // deletes what is left.
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::BlobUploadUnknown, "{fault:?}");
                if i % 2 == 0 {
                    match r.cancel_upload(&id).await {
                        Ok(()) => {}
                        Err(e) => assert_eq!(e.kind(), ErrorKind::BlobUploadUnknown, "{e}"),
                    }
                } else {
                    let report = store_on(&b)
                        .purge_uploads(PurgeOptions::default())
                        .await
                        .unwrap();
                    assert!(report.errors.is_empty(), "{fault:?}: {report:?}");
                }
                assert!(keys(&b, "uploads").await.is_empty(), "{fault:?}");
                assert!(keys(&b, "segments").await.is_empty(), "{fault:?}");
            }
        }
        assert_absent_or_whole(&r, &digest, &all, fault).await;
        clear(&b).await;
    }
}

backend_tests!(
    a_failed_append_leaves_the_session_at_the_old_or_the_new_offset,
    a_failed_multipart_append_leaves_the_session_at_the_old_or_the_new_offset,
    a_failed_commit_publishes_the_blob_whole_or_not_at_all_and_can_be_redone,
    a_failed_sha512_commit_publishes_the_blob_whole_or_not_at_all_and_can_be_redone,
    cancelling_after_a_failed_commit_keeps_whatever_was_published_whole,
    cancelling_after_a_failed_sha512_commit_keeps_whatever_was_published_whole,
    purging_after_a_failed_commit_keeps_whatever_was_published_whole,
    purging_after_a_failed_sha512_commit_keeps_whatever_was_published_whole,
    a_failed_cancel_leaves_the_session_whole_or_gone,
);

fn stream_of(data: &[u8]) -> ChunkStream<'static> {
    in_pieces(data, 256 * KIB)
}
