//! Resumable chunked uploads and upload purging, on every backend.
//!
//! The filesystem backend has its own upload path (a staging file renamed into place), which
//! only a store built with `Backend::filesystem` takes: [`store_on`] builds that one. Stores
//! over instrumented wrappers (counting, faulty) take the object-store path (segments and an
//! index object); tests that need such a wrapper say what they cover on the filesystem.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::{StreamExt, TryStreamExt};
use layerstore::upload::{ChunkStream, PurgeOptions, PurgeReport, Purger, PurgerConfig};
use layerstore::{
    Algorithm, ByteRange, Digest, Error, ErrorKind, RangeError, Repository, Store, UploadId,
    UploadStatus,
};
use object_store::ObjectStoreExt;
use object_store::path::Path;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

// ---------------------------------------------------------------------------------------
// Support

/// A store over a counting wrapper of `b` (object-store path).
fn counted_store(counting: &Arc<CountingStore>) -> Store {
    store_over(counting.clone(), counting.multipart_store())
}

async fn append(
    r: &Repository,
    id: &UploadId,
    offset: u64,
    data: &[u8],
) -> layerstore::Result<UploadStatus> {
    r.append_upload(id, offset, stream_of(data)).await
}

async fn read_all(r: &Repository, digest: &Digest, range: Option<ByteRange>) -> Vec<u8> {
    let read = r.read_blob(digest, range).await.unwrap();
    let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    chunks.concat()
}

/// The `(current, requested)` of an upload-offset refusal; panics on anything else.
#[track_caller]
fn offset_refusal<T: std::fmt::Debug>(result: layerstore::Result<T>) -> (u64, u64) {
    match result {
        Err(Error::RangeInvalid(RangeError::UploadOffset { current, requested })) => {
            (current, requested)
        }
        other => panic!("expected an upload-offset refusal, got {other:?}"),
    }
}

#[track_caller]
fn assert_kind<T: std::fmt::Debug>(result: layerstore::Result<T>, kind: ErrorKind) {
    match result {
        Err(e) => assert_eq!(e.kind(), kind, "{e}"),
        Ok(v) => panic!("expected {kind:?}, got Ok({v:?})"),
    }
}

/// On object stores: the segment keys the published index of `digest` lists.
async fn indexed_segments(b: &TestBackend, digest: &Digest) -> Vec<String> {
    let hex = digest.hex();
    let alg = digest.algorithm();
    let key = Path::from(format!("blobs/{alg}/{}/{hex}/segments", &hex[..2]));
    let bytes = b.store.get(&key).await.unwrap().bytes().await.unwrap();
    let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let upload = index["upload"].as_str().unwrap();
    let mut listed: Vec<String> = index["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "segments/{upload}/{:010}-{}",
                s["seq"].as_u64().unwrap(),
                s["nonce"].as_str().unwrap()
            )
        })
        .collect();
    listed.sort();
    listed
}

/// Object stores: no segment object exists that the published index of `digest` does not
/// list (a leak), and every listed one exists.
async fn assert_segments_are_exactly_the_indexed_ones(b: &TestBackend, digest: &Digest) {
    if b.kind == BackendKind::Filesystem {
        assert!(keys(b, "segments").await.is_empty());
        return;
    }
    assert_eq!(keys(b, "segments").await, indexed_segments(b, digest).await);
}

/// Sessions' state is stamped with the time; purging "older than zero" needs a tick to pass.
async fn let_time_pass() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

fn purge_all() -> PurgeOptions {
    PurgeOptions {
        older_than: Duration::ZERO,
        dry_run: false,
    }
}

// ---------------------------------------------------------------------------------------
// Chunked uploads

async fn chunks_of_every_size_commit_to_the_same_bytes(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/chunks"));
    let sizes = [KIB, 0, KIB, 6 * MIB + 7, KIB, 0, 1, 3 * KIB];
    let session = r.start_upload().await.unwrap();
    assert_eq!(session.offset, 0);
    assert_eq!(&session.repository, r.name());
    let mut all = vec![];
    for (i, size) in sizes.into_iter().enumerate() {
        let chunk = pattern(i as u64, size);
        let status = append(&r, &session.id, all.len() as u64, &chunk)
            .await
            .unwrap_or_else(|e| panic!("chunk {i} ({size} bytes): {e}"));
        all.extend_from_slice(&chunk);
        assert_eq!(status.offset, all.len() as u64, "after chunk {i}");
        let seen = r.upload_status(&session.id).await.unwrap();
        assert_eq!(seen.offset, all.len() as u64, "status after chunk {i}");
        assert_eq!(seen.id, session.id);
    }
    let digest = Digest::sha256(&all);
    let info = r
        .commit_upload(&session.id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    assert_eq!((info.digest, info.size), (digest, all.len() as u64));
    assert_eq!(r.stat_blob(&digest).await.unwrap(), info);
    assert!(read_all(&r, &digest, None).await == all, "bytes differ");
    assert_kind(
        r.upload_status(&session.id).await,
        ErrorKind::BlobUploadUnknown,
    );
}

async fn a_chunk_larger_than_the_segment_buffer_commits_to_the_same_bytes(b: TestBackend) {
    // Object stores buffer 10 MiB of a chunk and stream anything larger as a multipart upload.
    let store = store_on(&b);
    let r = store.repository(repo("up/large"));
    let session = r.start_upload().await.unwrap();
    let (first, large) = (pattern(1, 100), pattern(2, 12 * MIB + 5));
    append(&r, &session.id, 0, &first).await.unwrap();
    let status = append(&r, &session.id, 100, &large).await.unwrap();
    assert_eq!(status.offset, 100 + large.len() as u64);
    let all = [first, large].concat();
    let digest = Digest::sha256(&all);
    r.commit_upload(&session.id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    assert!(read_all(&r, &digest, None).await == all, "bytes differ");
}

async fn an_upload_of_no_bytes_commits_the_empty_blob(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/empty"));
    let session = r.start_upload().await.unwrap();
    append(&r, &session.id, 0, &[]).await.unwrap();
    let digest = Digest::sha256(b"");
    let info = r
        .commit_upload(&session.id, &digest, Some(0))
        .await
        .unwrap();
    assert_eq!(info.size, 0);
    assert_eq!(r.stat_blob(&digest).await.unwrap().size, 0);
    assert!(read_all(&r, &digest, None).await.is_empty());
}

async fn a_chunk_at_the_wrong_offset_is_refused_with_the_current_offset_and_changes_nothing(
    b: TestBackend,
) {
    let store = store_on(&b);
    let r = store.repository(repo("up/offset"));
    let session = r.start_upload().await.unwrap();
    let first = pattern(1, 3000);
    append(&r, &session.id, 0, &first).await.unwrap();
    let before = r.upload_status(&session.id).await.unwrap();
    let staged = (keys(&b, "uploads").await, keys(&b, "segments").await);

    for wrong in [0, 2999, 3001, 1 << 40] {
        let refused = append(&r, &session.id, wrong, &pattern(9, 500)).await;
        assert_eq!(offset_refusal(refused), (3000, wrong));
        assert_eq!(r.upload_status(&session.id).await.unwrap().offset, 3000);
    }
    let after = r.upload_status(&session.id).await.unwrap();
    assert_eq!(after, before, "a refused chunk changed the session");
    // No segment written, no staging change visible as a new object.
    assert_eq!(
        (keys(&b, "uploads").await, keys(&b, "segments").await),
        staged
    );

    let second = pattern(2, 700);
    let status = append(&r, &session.id, 3000, &second).await.unwrap();
    assert_eq!(status.offset, 3700);
    let all = [first, second].concat();
    let digest = Digest::sha256(&all);
    r.commit_upload(&session.id, &digest, Some(3700))
        .await
        .unwrap();
    assert!(read_all(&r, &digest, None).await == all);
}

async fn a_chunk_stream_that_fails_midway_counts_for_nothing(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/broken"));
    let session = r.start_upload().await.unwrap();
    let first = pattern(1, 1000);
    append(&r, &session.id, 0, &first).await.unwrap();
    let broken: ChunkStream<'static> = futures::stream::iter(vec![
        Ok(Bytes::from(pattern(7, 5000))),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ])
    .boxed();
    assert_kind(
        r.append_upload(&session.id, 1000, broken).await,
        ErrorKind::Io,
    );
    assert_eq!(r.upload_status(&session.id).await.unwrap().offset, 1000);

    let second = pattern(2, 2000);
    append(&r, &session.id, 1000, &second).await.unwrap();
    let all = [first, second].concat();
    let digest = Digest::sha256(&all);
    r.commit_upload(&session.id, &digest, Some(3000))
        .await
        .unwrap();
    assert!(
        read_all(&r, &digest, None).await == all,
        "bytes of the failed chunk leaked into the blob"
    );
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

// ---------------------------------------------------------------------------------------
// Commit

async fn a_commit_with_the_wrong_digest_publishes_nothing_and_the_session_stays_resumable(
    b: TestBackend,
) {
    let store = store_on(&b);
    let r = store.repository(repo("up/digest"));
    let session = r.start_upload().await.unwrap();
    let first = pattern(1, 5000);
    append(&r, &session.id, 0, &first).await.unwrap();

    let wrong = Digest::sha256(b"something else");
    assert_kind(
        r.commit_upload(&session.id, &wrong, None).await,
        ErrorKind::DigestInvalid,
    );
    // The digest of what is staged so far is not published either.
    let partial = Digest::sha256(&first);
    for d in [wrong, partial] {
        assert_kind(r.stat_blob(&d).await, ErrorKind::BlobUnknown);
    }
    assert_eq!(keys(&b, "blobs").await, Vec::<String>::new());
    assert_eq!(r.upload_status(&session.id).await.unwrap().offset, 5000);

    let second = pattern(2, 100);
    append(&r, &session.id, 5000, &second).await.unwrap();
    let all = [first, second].concat();
    let digest = Digest::sha256(&all);
    r.commit_upload(&session.id, &digest, None).await.unwrap();
    assert!(read_all(&r, &digest, None).await == all);
    assert_kind(r.stat_blob(&wrong).await, ErrorKind::BlobUnknown);
}

async fn a_commit_with_the_wrong_size_publishes_nothing_and_the_session_stays_resumable(
    b: TestBackend,
) {
    let store = store_on(&b);
    let r = store.repository(repo("up/size"));
    let session = r.start_upload().await.unwrap();
    let first = pattern(1, 5000);
    append(&r, &session.id, 0, &first).await.unwrap();
    let digest = Digest::sha256(&first);

    for wrong in [0, 4999, 5001] {
        assert_kind(
            r.commit_upload(&session.id, &digest, Some(wrong)).await,
            ErrorKind::SizeInvalid,
        );
    }
    assert_kind(r.stat_blob(&digest).await, ErrorKind::BlobUnknown);
    assert_eq!(keys(&b, "blobs").await, Vec::<String>::new());
    assert_eq!(r.upload_status(&session.id).await.unwrap().offset, 5000);

    let second = pattern(2, 100);
    append(&r, &session.id, 5000, &second).await.unwrap();
    let all = [first, second].concat();
    let digest = Digest::sha256(&all);
    r.commit_upload(&session.id, &digest, Some(5100))
        .await
        .unwrap();
    assert!(read_all(&r, &digest, None).await == all);
}

async fn an_upload_commits_under_a_sha512_digest_by_rehashing_what_is_stored(b: TestBackend) {
    // Sessions keep a SHA-256 state; a SHA-512 digest is verified by reading the bytes back.
    let store = store_on(&b);
    let r = store.repository(repo("up/sha512"));
    let session = r.start_upload().await.unwrap();
    let chunks = [pattern(1, 70 * KIB), pattern(2, 1), pattern(3, 5000)];
    let mut offset = 0;
    for c in &chunks {
        append(&r, &session.id, offset, c).await.unwrap();
        offset += c.len() as u64;
    }
    let all = chunks.concat();
    let wrong = Digest::compute(Algorithm::Sha512, &all[1..]);
    assert_kind(
        r.commit_upload(&session.id, &wrong, None).await,
        ErrorKind::DigestInvalid,
    );
    let digest = Digest::compute(Algorithm::Sha512, &all);
    let info = r
        .commit_upload(&session.id, &digest, Some(offset))
        .await
        .unwrap();
    assert_eq!((info.digest, info.size), (digest, offset));
    assert!(read_all(&r, &digest, None).await == all);
    assert_kind(
        r.stat_blob(&Digest::sha256(&all)).await,
        ErrorKind::BlobUnknown,
    );
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

/// What an operation read back of the stored bytes: through the object store, or on the
/// filesystem through the upload engine's file reads.
struct ReadBack {
    store: Store,
    faulty: Option<Arc<FaultyStore>>,
    counting: Option<Arc<CountingStore>>,
}

impl ReadBack {
    fn on(b: &TestBackend) -> Self {
        if b.kind == BackendKind::Filesystem {
            let (store, faulty) = faulty_store_on(b);
            return Self {
                store,
                faulty: Some(faulty),
                counting: None,
            };
        }
        let counting = b.counting();
        Self {
            store: counted_store(&counting),
            faulty: None,
            counting: Some(counting),
        }
    }

    /// Runs `op` and tells whether it read a MiB or more of uploaded bytes back.
    async fn rereads<T>(&self, op: impl Future<Output = T>) -> (T, bool) {
        let bytes = self.now();
        let out = op.await;
        let bytes_after = self.now();
        (out, bytes_after - bytes >= MIB as u64)
    }

    /// Bytes read so far (state objects and files are a few KiB).
    fn now(&self) -> u64 {
        match (&self.faulty, &self.counting) {
            (Some(f), _) => f.file_bytes_read(),
            (_, Some(c)) => c.snapshot().bytes_read,
            _ => 0,
        }
    }
}

async fn wrong_sha512_commits_read_the_stored_bytes_back_once_not_on_every_try(b: TestBackend) {
    // Sessions hash SHA-256 as bytes arrive. The first SHA-512 commit must read the bytes back;
    // it keeps the SHA-512 state, so a client repeating wrong SHA-512 digests cannot make the
    // store re-read a large upload again and again, and later chunks are hashed as they come.
    let counted = ReadBack::on(&b);
    let r = counted.store.repository(repo("up/sha512tries"));
    let id = r.start_upload().await.unwrap().id;
    let mut all = pattern(40, 20 * MIB);
    append(&r, &id, 0, &all).await.unwrap();
    let wrong = Digest::compute(Algorithm::Sha512, b"not these bytes");
    let (refused, reread) = counted.rereads(r.commit_upload(&id, &wrong, None)).await;
    assert_kind(refused, ErrorKind::DigestInvalid);
    assert!(reread, "the first SHA-512 commit must read the bytes back");
    for _ in 0..3 {
        let (refused, reread) = counted.rereads(r.commit_upload(&id, &wrong, None)).await;
        assert_kind(refused, ErrorKind::DigestInvalid);
        assert!(
            !reread,
            "a repeated wrong SHA-512 commit read the upload again"
        );
    }
    // The session is still resumable, and keeps both hashes.
    let tail = pattern(41, 3 * MIB);
    append(&r, &id, all.len() as u64, &tail).await.unwrap();
    all.extend_from_slice(&tail);
    let digest = Digest::compute(Algorithm::Sha512, &all);
    let (info, reread) = counted
        .rereads(r.commit_upload(&id, &digest, Some(all.len() as u64)))
        .await;
    assert_eq!(info.unwrap().digest, digest);
    assert!(
        !reread,
        "a SHA-512 commit after the first read the upload again"
    );
    assert!(read_all(&r, &digest, None).await == all);
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

async fn a_monolithic_sha512_upload_reads_nothing_back(b: TestBackend) {
    // The digest is known before the first byte: the session hashes SHA-512 from the start.
    let counted = ReadBack::on(&b);
    let r = counted.store.repository(repo("up/sha512mono"));
    let all = pattern(42, 12 * MIB);
    let digest = Digest::compute(Algorithm::Sha512, &all);
    let (info, reread) = counted
        .rereads(r.put_blob_stream(&digest, None, stream_of(&all)))
        .await;
    assert_eq!(info.unwrap().size, all.len() as u64);
    assert!(!reread, "a monolithic SHA-512 upload read its bytes back");
    assert!(read_all(&r, &digest, None).await == all);
}

async fn a_second_store_over_the_same_backend_resumes_the_session(b: TestBackend) {
    let first_process = store_on(&b);
    let r1 = first_process.repository(repo("up/resume"));
    let session = r1.start_upload().await.unwrap();
    let first = pattern(1, 2 * MIB);
    append(&r1, &session.id, 0, &first).await.unwrap();
    drop(r1);
    drop(first_process);

    // Another process (or replica) knows nothing but the id it got from the client.
    let second_process = store_on(&b);
    let r2 = second_process.repository(repo("up/resume"));
    let id = UploadId::parse(session.id.as_str()).unwrap();
    let status = r2.upload_status(&id).await.unwrap();
    assert_eq!(status.offset, first.len() as u64);
    assert_eq!(status.started_at, session.started_at);
    assert_eq!(
        offset_refusal(append(&r2, &id, 0, b"x").await),
        (first.len() as u64, 0)
    );
    let second = pattern(2, 3000);
    append(&r2, &id, first.len() as u64, &second).await.unwrap();

    let third_process = store_on(&b);
    let r3 = third_process.repository(repo("up/resume"));
    let all = [first, second].concat();
    let digest = Digest::sha256(&all);
    r3.commit_upload(&id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    assert!(read_all(&r2, &digest, None).await == all);
}

/// A chunk stream that delivers `n` bytes, pauses (parts are sent meanwhile), then fails as
/// a client that went away.
fn broken_after(seed: u64, n: usize, pause: Duration) -> ChunkStream<'static> {
    futures::stream::iter(vec![Bytes::from(pattern(seed, n))])
        .map(Ok)
        .chain(futures::stream::once(async move {
            tokio::time::sleep(pause).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "client went away",
            ))
        }))
        .boxed()
}

/// Two replicas over one backend, as behind a load balancer, with a session started through
/// the first: (first replica's repository, second's, session id).
async fn two_replicas(b: &TestBackend, name: &str) -> (Repository, Repository, UploadId) {
    let ra = store_on(b).repository(repo(name));
    let rb = store_on(b).repository(repo(name));
    let id = ra.start_upload().await.unwrap().id;
    (ra, rb, id)
}

async fn a_chunk_through_a_replica_after_another_appended_lands_where_the_session_is(
    b: TestBackend,
) {
    // Each replica remembers the state its last append wrote; the second replica's append
    // makes the first one's copy stale, and the client's next chunk starts past it.
    let (ra, rb, id) = two_replicas(&b, "up/replicas").await;
    let chunks = [1, 2, 3].map(|seed| pattern(seed, 8 * MIB));
    append(&ra, &id, 0, &chunks[0]).await.unwrap();
    append(&rb, &id, 8 * MIB as u64, &chunks[1]).await.unwrap();
    append(&ra, &id, 16 * MIB as u64, &chunks[2]).await.unwrap();
    let all = chunks.concat();
    let digest = Digest::sha256(&all);
    ra.commit_upload(&id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    assert!(read_all(&rb, &digest, None).await == all);
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

async fn a_chunk_retried_through_a_replica_whose_copy_is_stale_is_refused_and_never_reaches_the_blob(
    b: TestBackend,
) {
    // The client's second chunk went through the second replica; a retry of it (other bytes
    // here, to tell them apart) reaches the first replica, whose remembered state ends where
    // the chunk starts. It sends its part before its conditional write finds out.
    let (ra, rb, id) = two_replicas(&b, "up/stale").await;
    let first = pattern(1, 8 * MIB);
    let second = pattern(2, 8 * MIB);
    append(&ra, &id, 0, &first).await.unwrap();
    append(&rb, &id, 8 * MIB as u64, &second).await.unwrap();
    assert_eq!(
        offset_refusal(append(&ra, &id, 8 * MIB as u64, &pattern(9, 8 * MIB)).await),
        (16 * MIB as u64, 8 * MIB as u64)
    );
    let third = pattern(3, 3 * MIB);
    append(&ra, &id, 16 * MIB as u64, &third).await.unwrap();
    let all = [first, second, third].concat();
    let digest = Digest::sha256(&all);
    rb.commit_upload(&id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    assert!(
        read_all(&ra, &digest, None).await == all,
        "the refused chunk's part reached the blob"
    );
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

async fn a_chunk_through_a_replica_after_another_cancelled_the_session_is_told_it_is_unknown(
    b: TestBackend,
) {
    let (ra, rb, id) = two_replicas(&b, "up/cancelled").await;
    append(&ra, &id, 0, &pattern(1, 8 * MIB)).await.unwrap();
    rb.cancel_upload(&id).await.unwrap();
    assert_kind(
        append(&ra, &id, 8 * MIB as u64, &pattern(2, 8 * MIB)).await,
        ErrorKind::BlobUploadUnknown,
    );
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new());
}

/// A chunk sent through `ra` after the session changed elsewhere without moving its offset.
/// On object stores: refused once with the session's offset (it started from `ra`'s copy of
/// the state, stale now), then taken when the client sends it there again. The filesystem
/// engine reads its state for every chunk: taken at once. The blob is the acknowledged bytes.
async fn refused_once_then_taken(b: &TestBackend, ra: &Repository, id: &UploadId, first: Vec<u8>) {
    let at = first.len() as u64;
    let second = pattern(2, 8 * MIB);
    let first_try = append(ra, id, at, &second).await;
    if b.kind == BackendKind::Filesystem {
        first_try.unwrap();
    } else {
        assert_eq!(offset_refusal(first_try), (at, at));
        append(ra, id, at, &second).await.unwrap();
    }
    let all = [first, second].concat();
    let digest = Digest::sha256(&all);
    ra.commit_upload(id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    assert!(read_all(ra, &digest, None).await == all);
}

async fn a_chunk_retried_through_a_replica_after_another_replicas_append_died_is_refused_once_then_taken(
    b: TestBackend,
) {
    // The client's chunk went to the second replica, which took the claim over, sent a part
    // and lost the client; the client sends the chunk again through the first.
    let (ra, rb, id) = two_replicas(&b, "up/died").await;
    let first = pattern(1, 8 * MIB);
    append(&ra, &id, 0, &first).await.unwrap();
    let broken = broken_after(7, 9 * MIB, Duration::from_millis(300));
    assert_kind(
        rb.append_upload(&id, 8 * MIB as u64, broken).await,
        ErrorKind::Io,
    );
    refused_once_then_taken(&b, &ra, &id, first).await;
}

async fn a_chunk_through_a_replica_after_an_empty_chunk_through_another_is_refused_once_then_taken(
    b: TestBackend,
) {
    let (ra, rb, id) = two_replicas(&b, "up/empty").await;
    let first = pattern(1, 8 * MIB);
    append(&ra, &id, 0, &first).await.unwrap();
    append(&rb, &id, 8 * MIB as u64, &[]).await.unwrap();
    refused_once_then_taken(&b, &ra, &id, first).await;
}

async fn a_chunk_through_a_replica_after_a_failed_commit_through_another_is_refused_once_then_taken(
    b: TestBackend,
) {
    // The SHA-512 commit re-hashes the stored bytes (completing the open multipart upload to
    // read it) and keeps the hash state: the first replica's upload is gone.
    let (ra, rb, id) = two_replicas(&b, "up/commitfail").await;
    let first = pattern(1, 8 * MIB);
    append(&ra, &id, 0, &first).await.unwrap();
    let wrong = Digest::compute(Algorithm::Sha512, b"not these bytes");
    assert_kind(
        rb.commit_upload(&id, &wrong, None).await,
        ErrorKind::DigestInvalid,
    );
    refused_once_then_taken(&b, &ra, &id, first).await;
}

async fn a_backend_failure_in_the_first_chunk_after_the_post_is_reported_as_one(b: TestBackend) {
    // The first chunk starts from the state the POST left in memory and writes its claim;
    // whichever of its writes the backend fails, the client is told of a failure, not sent
    // back to the offset it asked for, and the chunk sent again is taken.
    let (store, faulty) = faulty_store_on(&b);
    let r = store.repository(repo("up/firstfault"));
    let chunk = pattern(1, 8 * MIB);
    let id = r.start_upload().await.unwrap().id;
    faulty.reset();
    append(&r, &id, 0, &chunk).await.unwrap();
    let writes = faulty.writes_seen();
    assert!(writes > 0);
    for n in 1..=writes {
        let id = r.start_upload().await.unwrap().id;
        faulty.reset();
        faulty.fail_nth(n);
        let failed = append(&r, &id, 0, &chunk).await;
        assert!(
            matches!(failed, Err(ref e) if !matches!(e, Error::RangeInvalid(_))),
            "write {n} of {writes} failed: {failed:?}"
        );
        faulty.heal();
        let status = match append(&r, &id, 0, &chunk).await {
            Ok(status) => status,
            // The failed write was made (a reply lost): the chunk is recorded.
            Err(e) => panic!("after write {n} failed, the chunk sent again: {e:?}"),
        };
        assert_eq!(status.offset, chunk.len() as u64, "write {n}");
    }
}

async fn resuming_in_a_new_store_and_committing_reads_no_uploaded_byte(b: TestBackend) {
    // The counting wrapper sees object-store requests only; on the filesystem the staged bytes
    // are local file I/O it cannot see (the filesystem commit is a rename, tested below).
    if b.kind == BackendKind::Filesystem {
        return;
    }
    let counting = b.counting();
    let r = counted_store(&counting).repository(repo("up/noread"));
    let session = r.start_upload().await.unwrap();
    let mut all = vec![];
    for i in 0..4 {
        let chunk = pattern(i, 2 * MIB);
        append(&r, &session.id, all.len() as u64, &chunk)
            .await
            .unwrap();
        all.extend_from_slice(&chunk);
    }

    counting.reset();
    let restarted = counted_store(&counting).repository(repo("up/noread"));
    let last = pattern(9, MIB);
    append(&restarted, &session.id, all.len() as u64, &last)
        .await
        .unwrap();
    all.extend_from_slice(&last);
    let digest = Digest::sha256(&all);
    restarted
        .commit_upload(&session.id, &digest, None)
        .await
        .unwrap();
    let counts = counting.snapshot();
    // CountingStore does not record keys, so "no uploaded byte was read" is shown by volume:
    // the session holds a 6 MiB part and a 2 MiB staged segment before the restart, and the
    // resumed 1 MiB chunk stays under a part, so nothing needs reading back; the state and
    // index objects are a few hundred bytes each. Reading any piece, even partly, would blow
    // this bound.
    assert!(
        counts.bytes_read < 64 * KIB as u64,
        "resume + commit read {} bytes of a {} byte upload: {counts:?}",
        counts.bytes_read,
        all.len()
    );
    assert!(read_all(&restarted, &digest, None).await == all);
}

/// The requests and bytes of `commit_upload` alone, for an upload of `size` bytes in 8 chunks.
async fn cost_of_a_commit(b: &TestBackend, size: usize, name: &str) -> Counts {
    let counting = b.counting();
    let r = counted_store(&counting).repository(repo(name));
    let session = r.start_upload().await.unwrap();
    let chunk_size = size / 8;
    let mut all = Vec::with_capacity(size);
    for i in 0..8 {
        let chunk = pattern(size as u64 + i, chunk_size);
        append(&r, &session.id, all.len() as u64, &chunk)
            .await
            .unwrap();
        all.extend_from_slice(&chunk);
    }
    let digest = Digest::sha256(&all);
    counting.reset();
    r.commit_upload(&session.id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    let counts = counting.snapshot();
    drop(all);
    assert_eq!(r.stat_blob(&digest).await.unwrap().size, size as u64);
    counts
}

async fn commit_cost_does_not_grow_with_the_upload_size(b: TestBackend) {
    // Object-store path only: the filesystem commit is a rename, see the next test.
    if b.kind == BackendKind::Filesystem {
        return;
    }
    // 16 MiB and 64 MiB: both commit one multipart upload (of 2 and 8 parts), the larger
    // with four times the bytes.
    let medium = cost_of_a_commit(&b, 16 * MIB, "up/medium").await;
    let large = cost_of_a_commit(&b, 64 * MIB, "up/large").await;
    let requests_only = |c: Counts| Counts {
        bytes_read: 0,
        bytes_written: 0,
        ..c
    };
    assert_eq!(
        requests_only(medium),
        requests_only(large),
        "commit makes different requests for 16 MiB and 64 MiB"
    );
    assert_eq!(large.multipart_complete, 1, "{large:?}");
    // 1 MiB in 128 KiB chunks never fills a part (S3's minimum is 5 MiB): its staged
    // segments are the blob, and the commit completes nothing.
    let small = cost_of_a_commit(&b, MIB, "up/small").await;
    assert_eq!(small.multipart_complete, 0, "{small:?}");
    assert!(
        small.requests() <= large.requests(),
        "1 MiB: {small:?}\n64 MiB: {large:?}"
    );
    for (what, c) in [("1 MiB", small), ("16 MiB", medium), ("64 MiB", large)] {
        assert_eq!(c.copy + c.rename + c.multipart_part, 0, "{what}: {c:?}");
        // The state and index objects differ only in the pieces and sizes they record: a
        // few bytes, never the blob's bytes.
        assert!(
            c.bytes_read < 16 * KIB as u64 && c.bytes_written < 16 * KIB as u64,
            "commit of {what} moved blob bytes: {c:?}"
        );
    }
    // What does differ: the state (read, and written with the commit marker) lists each
    // recorded part (its ETag or block id and size, under 128 bytes), and 64 MiB has 6 parts
    // more; the index lists objects, not parts.
    let per_part = 128 * 6;
    assert!(
        medium.bytes_read.abs_diff(large.bytes_read) < per_part,
        "16 MiB: {medium:?}\n64 MiB: {large:?}"
    );
    assert!(
        medium.bytes_written.abs_diff(large.bytes_written) < per_part,
        "16 MiB: {medium:?}\n64 MiB: {large:?}"
    );
}

/// The session state object, as JSON (object stores).
async fn state_json(b: &TestBackend, id: &UploadId) -> serde_json::Value {
    let key = Path::from(format!("uploads/{id}/state"));
    let bytes = b.store.get(&key).await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The sizes of the parts the session records, per multipart upload.
fn recorded_parts(state: &serde_json::Value) -> Vec<Vec<u64>> {
    state["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.get("multipart"))
        .map(|m| {
            m["parts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|part| part["size"].as_u64().unwrap())
                .collect()
        })
        .collect()
}

/// The sizes of the staged segments the session records (pieces that are objects already).
fn staged_segments(state: &serde_json::Value) -> Vec<u64> {
    state["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("multipart").is_none())
        .map(|p| p["size"].as_u64().unwrap())
        .collect()
}

async fn chunks_smaller_than_a_part_are_staged_then_read_back_into_one(b: TestBackend) {
    if b.kind == BackendKind::Filesystem {
        return; // one staging file, no parts
    }
    let counting = b.counting();
    let r = counted_store(&counting).repository(repo("up/staged"));
    let session = r.start_upload().await.unwrap();
    let mut all = vec![];
    for i in 0..4 {
        let chunk = pattern(i, MIB);
        append(&r, &session.id, all.len() as u64, &chunk)
            .await
            .unwrap();
        all.extend_from_slice(&chunk);
    }
    // Staged pieces merge as they accumulate (each stays larger than all after it), so the
    // four 1 MiB chunks are one 4 MiB piece by now.
    let state = state_json(&b, &session.id).await;
    assert_eq!(staged_segments(&state), vec![4 * MIB as u64]);
    assert!(recorded_parts(&state).is_empty(), "{state}");
    assert_eq!(counting.snapshot().multipart_part, 0);

    // The fifth brings 5 MiB: S3's smallest part. The staged 4 MiB are read back and lead it.
    counting.reset();
    let fifth = pattern(4, MIB);
    append(&r, &session.id, all.len() as u64, &fifth)
        .await
        .unwrap();
    all.extend_from_slice(&fifth);
    let counts = counting.snapshot();
    assert_eq!(counts.multipart_part, 1, "{counts:?}");
    // The staged 4 MiB, and the state object (under 16 KiB).
    assert!(
        (4 * MIB..4 * MIB + 16 * KIB).contains(&(counts.bytes_read as usize)),
        "{counts:?}"
    );
    assert_eq!(counts.delete, 1, "the staged piece is gone: {counts:?}");
    let state = state_json(&b, &session.id).await;
    assert_eq!(recorded_parts(&state), vec![vec![5 * MIB as u64]]);
    assert!(staged_segments(&state).is_empty(), "{state}");

    let digest = Digest::sha256(&all);
    r.commit_upload(&session.id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    assert!(read_all(&r, &digest, None).await == all);
    let indexed = indexed_segments(&b, &digest).await;
    assert_eq!(
        indexed.len(),
        1,
        "one object, the completed upload: {indexed:?}"
    );
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

async fn a_client_sending_1_kib_chunks_commits_with_parts_of_at_least_5_mib(b: TestBackend) {
    let r = store_on(&b).repository(repo("up/kib"));
    let session = r.start_upload().await.unwrap();
    // Most of a part in one chunk, then 1 KiB chunks across the 5 MiB line and past it.
    let mut all = pattern(1, 5 * MIB - 3 * KIB);
    append(&r, &session.id, 0, &all).await.unwrap();
    for i in 0..8 {
        let chunk = pattern(10 + i, KIB);
        append(&r, &session.id, all.len() as u64, &chunk)
            .await
            .unwrap();
        all.extend_from_slice(&chunk);
    }
    if b.kind != BackendKind::Filesystem {
        let state = state_json(&b, &session.id).await;
        let parts: Vec<u64> = recorded_parts(&state).concat();
        assert_eq!(parts, vec![5 * MIB as u64], "{state}");
        // Five 1 KiB chunks past the part, merged as they came: 1, 2, 2+1, 4, 4+1.
        assert_eq!(staged_segments(&state), vec![4 * KIB as u64, KIB as u64]);
    }
    let digest = Digest::sha256(&all);
    r.commit_upload(&session.id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    assert!(read_all(&r, &digest, None).await == all);
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

/// A session staged with 9 MiB (a part and a staged segment on object stores) whose commit,
/// through a faulty store, wrote its marker and then died.
async fn session_with_a_dead_commit(b: &TestBackend, name: &str) -> (UploadId, Vec<u8>, Digest) {
    let r = store_over(b.store.clone(), b.multipart.clone()).repository(repo(name));
    let session = r.start_upload().await.unwrap();
    let all = pattern(3, 9 * MIB);
    append(&r, &session.id, 0, &all).await.unwrap();
    let digest = Digest::sha256(&all);
    let faulty = b.faulty();
    faulty.crash_at(2); // the commit marker is write 1
    let dead = store_over(faulty.clone(), faulty.multipart_store()).repository(repo(name));
    assert!(
        dead.commit_upload(&session.id, &digest, None)
            .await
            .is_err()
    );
    (session.id, all, digest)
}

async fn an_append_after_a_commit_began_is_refused_and_the_commit_can_be_redone(b: TestBackend) {
    if b.kind == BackendKind::Filesystem {
        return; // a commit holds the session's lock; see the fs tests
    }
    let (id, all, digest) = session_with_a_dead_commit(&b, "up/latecommit").await;
    let r = store_over(b.store.clone(), b.multipart.clone()).repository(repo("up/latecommit"));
    assert_kind(
        append(&r, &id, all.len() as u64, b"more").await,
        ErrorKind::BlobUploadInvalid,
    );
    r.commit_upload(&id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    assert!(read_all(&r, &digest, None).await == all);
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

async fn a_cancel_after_a_commit_verified_its_digest_finishes_publishing_the_blob(b: TestBackend) {
    if b.kind == BackendKind::Filesystem {
        return; // a commit holds the session's lock; see the fs tests
    }
    let (id, all, digest) = session_with_a_dead_commit(&b, "up/cancelcommit").await;
    let store = store_over(b.store.clone(), b.multipart.clone());
    let r = store.repository(repo("up/cancelcommit"));
    // The commit's marker verified the digest: its pieces are that blob's, and the commit
    // might still be running elsewhere. The cancel ends the session by finishing it, never by
    // deleting what the commit publishes.
    r.cancel_upload(&id).await.unwrap();
    assert_kind(r.upload_status(&id).await, ErrorKind::BlobUploadUnknown);
    assert_kind(
        r.commit_upload(&id, &digest, None).await,
        ErrorKind::BlobUploadUnknown,
    );
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new());
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
    // Not linked here (the client was never told it was stored), but stored: another push of
    // the same bytes finds it and writes nothing new.
    assert_kind(r.stat_blob(&digest).await, ErrorKind::BlobUnknown);
    let other = store.repository(repo("up/cancelcommit2"));
    other
        .put_blob_stream(&digest, None, stream_of(&all))
        .await
        .unwrap();
    assert!(read_all(&other, &digest, None).await == all);
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

async fn a_purge_after_a_commit_verified_its_digest_finishes_publishing_the_blob(b: TestBackend) {
    if b.kind == BackendKind::Filesystem {
        return; // a commit holds the session's lock; see the fs tests
    }
    let (id, all, digest) = session_with_a_dead_commit(&b, "up/purgecommit").await;
    let store = store_over(b.store.clone(), b.multipart.clone());
    // Within the purge age the session is left alone; past it, the purge finishes the commit.
    let kept = store
        .purge_uploads(PurgeOptions {
            older_than: Duration::from_secs(3600),
            dry_run: false,
        })
        .await
        .unwrap();
    assert_eq!((kept.scanned, kept.purged), (1, 0), "{kept:?}");
    let_time_pass().await;
    let report = store.purge_uploads(purge_all()).await.unwrap();
    assert_eq!((report.purged, report.bytes_freed), (1, 0), "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new());
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
    let r = store.repository(repo("up/purgecommit"));
    assert_kind(r.upload_status(&id).await, ErrorKind::BlobUploadUnknown);
    r.put_blob_stream(&digest, None, stream_of(&all))
        .await
        .unwrap();
    assert!(read_all(&r, &digest, None).await == all);
}

async fn without_a_multipart_store_a_large_chunk_is_one_segment_that_takes_in_the_staged_ones(
    b: TestBackend,
) {
    if b.kind == BackendKind::Filesystem {
        return; // one staging file
    }
    // A custom store given to `Backend::object_store` without `with_multipart`.
    let r = store_over(b.store.clone(), None).repository(repo("up/plain"));
    let session = r.start_upload().await.unwrap();
    let mut all = vec![];
    for (i, size) in [KIB, 11 * MIB, KIB].into_iter().enumerate() {
        let chunk = pattern(i as u64, size);
        append(&r, &session.id, all.len() as u64, &chunk)
            .await
            .unwrap();
        all.extend_from_slice(&chunk);
    }
    let digest = Digest::sha256(&all);
    r.commit_upload(&session.id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    assert!(read_all(&r, &digest, None).await == all);
    // The first 1 KiB leads the 11 MiB chunk's object; the last is staged on its own.
    assert_eq!(indexed_segments(&b, &digest).await.len(), 2);
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

async fn an_append_that_failed_after_sending_parts_leaves_none_of_them_in_the_blob(b: TestBackend) {
    let counting = b.counting();
    let store = match b.kind {
        BackendKind::Filesystem => store_on(&b),
        _ => counted_store(&counting),
    };
    let r = store.repository(repo("up/partfail"));
    let session = r.start_upload().await.unwrap();
    let first = pattern(1, 9 * MIB);
    append(&r, &session.id, 0, &first).await.unwrap();
    let mut failed_claim = serde_json::Value::Null;
    // 25 MiB arrive (three parts' worth, sent while the client pauses), then it goes away.
    counting.reset();
    let broken = broken_after(7, 25 * MIB, Duration::from_millis(500));
    assert_kind(
        r.append_upload(&session.id, 9 * MIB as u64, broken).await,
        ErrorKind::Io,
    );
    assert_eq!(
        r.upload_status(&session.id).await.unwrap().offset,
        9 * MIB as u64
    );
    if b.kind != BackendKind::Filesystem {
        let counts = counting.snapshot();
        assert!(
            counts.multipart_part >= 2,
            "the failed append sent its parts before it failed: {counts:?}"
        );
        // The failed append's claim stays, and its parts are not recorded.
        let state = state_json(&b, &session.id).await;
        assert!(state.get("appending").is_some(), "{state}");
        assert_eq!(recorded_parts(&state), vec![vec![8 * MIB as u64]]);
        failed_claim = state["appending"].clone();
    }

    let second = pattern(2, 10 * MIB);
    append(&r, &session.id, 9 * MIB as u64, &second)
        .await
        .unwrap();
    if b.kind != BackendKind::Filesystem {
        let state = state_json(&b, &session.id).await;
        // The failed append's claim is gone: the next append took over from it, and left a
        // claim of its own carried over to the append after it (see `docs/storage.md`).
        assert_ne!(state["appending"], failed_claim, "{state}");
        assert!(
            state["appending"]
                .as_str()
                .is_some_and(|tag| tag.starts_with("held-")),
            "{state}"
        );
        // The staged 1 MiB and 7 MiB of the chunk are a part of the new upload; 3 MiB wait.
        assert_eq!(
            recorded_parts(&state),
            vec![vec![8 * MIB as u64], vec![8 * MIB as u64]]
        );
        assert_eq!(staged_segments(&state), vec![3 * MIB as u64]);
    }
    let all = [first, second].concat();
    let digest = Digest::sha256(&all);
    r.commit_upload(&session.id, &digest, Some(all.len() as u64))
        .await
        .unwrap();
    assert!(
        read_all(&r, &digest, None).await == all,
        "parts of the failed append reached the blob"
    );
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

async fn a_filesystem_commit_renames_the_staging_file_into_place(b: TestBackend) {
    use std::os::unix::fs::MetadataExt;
    let Some(root) = b.fs_root.clone() else {
        return; // filesystem only: object stores publish an index, tested above
    };
    let store = store_on(&b);
    let r = store.repository(repo("up/rename"));
    let session = r.start_upload().await.unwrap();
    let data = pattern(1, 3 * MIB);
    append(&r, &session.id, 0, &data[..MIB]).await.unwrap();
    append(&r, &session.id, MIB as u64, &data[MIB..])
        .await
        .unwrap();
    let staging = root.join(format!("uploads/{}/data", session.id));
    let staged_inode = std::fs::metadata(&staging).unwrap().ino();

    let digest = Digest::sha256(&data);
    r.commit_upload(&session.id, &digest, None).await.unwrap();
    assert!(!staging.exists(), "staging file left behind");
    assert!(!root.join(format!("uploads/{}", session.id)).exists());
    let hex = digest.hex();
    let blob = root.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
    let meta = std::fs::metadata(&blob).unwrap();
    assert_eq!(
        meta.ino(),
        staged_inode,
        "the blob is a copy, not the renamed file"
    );
    assert_eq!(meta.len(), data.len() as u64);
    assert!(read_all(&r, &digest, None).await == data);
}

// ---------------------------------------------------------------------------------------
// Concurrency

/// A chunk stream that delivers half of `data`, tells `started`, waits a while, then delivers
/// the rest: an append that is surely still under way when the other one starts.
fn slow_stream(data: Vec<u8>, started: tokio::sync::oneshot::Sender<()>) -> ChunkStream<'static> {
    let all = Bytes::from(data);
    let half = all.len() / 2;
    let (head, tail) = (all.slice(..half), all.slice(half..));
    futures::stream::once(async move { Ok(head) })
        .chain(futures::stream::once(async move {
            let _ = started.send(());
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(tail)
        }))
        .boxed()
}

/// Two appends at offset 1000 of one session, through `ra` and `rb`, the second started
/// while the first is mid-chunk: exactly one is accepted, the other is told the offset the
/// winner left, and the blob is the winner's bytes.
async fn race_two_appends(b: &TestBackend, ra: Repository, rb: Repository) {
    race_two_appends_of(b, ra, rb, [1000, 300 * KIB, 200 * KIB]).await;
}

/// As [`race_two_appends`], with a first chunk (`head`) and racing chunks of the given sizes.
async fn race_two_appends_of(b: &TestBackend, ra: Repository, rb: Repository, sizes: [usize; 3]) {
    let [head_len, a_len, b_len] = sizes;
    let session = ra.start_upload().await.unwrap();
    let id = session.id.clone();
    let head = pattern(0, head_len);
    append(&ra, &id, 0, &head).await.unwrap();
    let at = head_len as u64;
    let (a, bb) = (pattern(1, a_len), pattern(2, b_len));

    let (started, a_is_mid_chunk) = tokio::sync::oneshot::channel();
    let task_a = {
        let (ra, id, a) = (ra.clone(), id.clone(), a.clone());
        tokio::spawn(async move { ra.append_upload(&id, at, slow_stream(a, started)).await })
    };
    a_is_mid_chunk.await.unwrap();
    let task_b = {
        let (rb, id, bb) = (rb.clone(), id.clone(), bb.clone());
        tokio::spawn(async move { append(&rb, &id, at, &bb).await })
    };
    let (result_a, result_b) = (task_a.await.unwrap(), task_b.await.unwrap());

    let (winner, loser) = match (result_a, result_b) {
        (Ok(_), lost) => (a, lost),
        (lost, Ok(_)) => (bb, lost),
        (ra, rb) => panic!("no append accepted: {ra:?} / {rb:?}"),
    };
    let end = at + winner.len() as u64;
    assert_eq!(
        offset_refusal(loser),
        (end, at),
        "the refused append must be told the offset the accepted one left"
    );
    assert_eq!(rb.upload_status(&id).await.unwrap().offset, end);
    let all = [head, winner].concat();
    let digest = Digest::sha256(&all);
    rb.commit_upload(&id, &digest, Some(end)).await.unwrap();
    assert!(read_all(&ra, &digest, None).await == all);
    assert_segments_are_exactly_the_indexed_ones(b, &digest).await;
}

async fn racing_appends_at_one_offset_in_one_store_accept_exactly_one(b: TestBackend) {
    let r = store_on(&b).repository(repo("up/race"));
    race_two_appends(&b, r.clone(), r).await;
}

async fn racing_appends_at_one_offset_from_two_stores_accept_exactly_one(b: TestBackend) {
    let ra = store_on(&b).repository(repo("up/race"));
    let rb = store_on(&b).repository(repo("up/race"));
    race_two_appends(&b, ra, rb).await;
}

async fn racing_appends_that_send_parts_accept_exactly_one_and_the_blob_is_the_winners(
    b: TestBackend,
) {
    // The session already holds a recorded 8 MiB part and a staged tail, and each racing
    // chunk fills parts: on object stores the loser's parts go to an upload the session
    // records differently (or not at all), and must not reach the blob.
    let ra = store_on(&b).repository(repo("up/raceparts"));
    let rb = store_on(&b).repository(repo("up/raceparts"));
    race_two_appends_of(&b, ra, rb, [8 * MIB + 1000, 18 * MIB, 12 * MIB]).await;
}

async fn many_racing_appends_at_one_offset_accept_exactly_one(b: TestBackend) {
    // No pacing: several stores, all released at once, a few rounds.
    let stores: Vec<Store> = (0..4).map(|_| store_on(&b)).collect();
    let name = repo("up/many");
    let session = stores[0]
        .repository(name.clone())
        .start_upload()
        .await
        .unwrap();
    let mut offset = 0u64;
    let mut all = vec![];
    for round in 0..3u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(stores.len()));
        let tasks: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let r = s.repository(name.clone());
                let (id, barrier) = (session.id.clone(), barrier.clone());
                let chunk = pattern(round * 10 + i as u64, 10 * KIB + i * 100);
                tokio::spawn(async move {
                    barrier.wait().await;
                    (chunk.clone(), append(&r, &id, offset, &chunk).await)
                })
            })
            .collect();
        let mut accepted = vec![];
        let mut refused = vec![];
        for task in tasks {
            let (chunk, result) = task.await.unwrap();
            match result {
                Ok(status) => accepted.push((chunk, status)),
                Err(e) => refused.push(e),
            }
        }
        assert_eq!(accepted.len(), 1, "round {round}: refused {refused:?}");
        let (chunk, status) = accepted.pop().unwrap();
        let end = offset + chunk.len() as u64;
        assert_eq!(status.offset, end);
        for e in refused {
            assert_eq!(offset_refusal::<()>(Err(e)), (end, offset), "round {round}");
        }
        all.extend_from_slice(&chunk);
        offset = end;
    }
    let r = stores[1].repository(name);
    let digest = Digest::sha256(&all);
    r.commit_upload(&session.id, &digest, Some(offset))
        .await
        .unwrap();
    assert!(read_all(&r, &digest, None).await == all);
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

async fn concurrent_commits_of_the_same_content_both_succeed_and_leave_one_copy(b: TestBackend) {
    let data = pattern(5, 3 * MIB + 1);
    let digest = Digest::sha256(&data);
    let (ra, rb) = (
        store_on(&b).repository(repo("up/one")),
        store_on(&b).repository(repo("up/two")),
    );
    let mut sessions = vec![];
    for r in [&ra, &rb] {
        let s = r.start_upload().await.unwrap();
        append(r, &s.id, 0, &data[..MIB]).await.unwrap();
        append(r, &s.id, MIB as u64, &data[MIB..]).await.unwrap();
        sessions.push(s.id);
    }
    let (a, bb) = tokio::join!(
        ra.commit_upload(&sessions[0], &digest, Some(data.len() as u64)),
        rb.commit_upload(&sessions[1], &digest, Some(data.len() as u64)),
    );
    assert_eq!(a.unwrap().digest, digest);
    assert_eq!(bb.unwrap().digest, digest);

    let blob_objects = keys(&b, "blobs").await;
    assert_eq!(blob_objects.len(), 1, "copies: {blob_objects:?}");
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
    assert!(keys(&b, "uploads").await.is_empty());
    for r in [&ra, &rb] {
        assert!(read_all(r, &digest, None).await == data);
    }
}

// ---------------------------------------------------------------------------------------
// Cancel and unknown sessions

async fn cancel_deletes_the_staged_data_and_forgets_the_session(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/cancel"));
    let session = r.start_upload().await.unwrap();
    append(&r, &session.id, 0, &pattern(1, 100 * KIB))
        .await
        .unwrap();
    append(&r, &session.id, 100 * KIB as u64, &pattern(2, KIB))
        .await
        .unwrap();
    assert!(!keys(&b, "uploads").await.is_empty());

    r.cancel_upload(&session.id).await.unwrap();
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new());
    assert_eq!(keys(&b, "segments").await, Vec::<String>::new());
    assert_eq!(keys(&b, "blobs").await, Vec::<String>::new());
    assert_kind(
        r.upload_status(&session.id).await,
        ErrorKind::BlobUploadUnknown,
    );
    assert_kind(
        r.cancel_upload(&session.id).await,
        ErrorKind::BlobUploadUnknown,
    );
}

async fn a_cancelled_session_accepts_no_append_or_commit(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/cancel"));
    let session = r.start_upload().await.unwrap();
    let data = pattern(1, 1000);
    append(&r, &session.id, 0, &data).await.unwrap();
    r.cancel_upload(&session.id).await.unwrap();

    assert_kind(
        append(&r, &session.id, 1000, b"more").await,
        ErrorKind::BlobUploadUnknown,
    );
    assert_kind(
        r.commit_upload(&session.id, &Digest::sha256(&data), None)
            .await,
        ErrorKind::BlobUploadUnknown,
    );
    assert_kind(
        r.stat_blob(&Digest::sha256(&data)).await,
        ErrorKind::BlobUnknown,
    );
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new());
    assert_eq!(keys(&b, "segments").await, Vec::<String>::new());
}

async fn a_session_is_unknown_through_another_repository(b: TestBackend) {
    let store = store_on(&b);
    let (ra, rb) = (
        store.repository(repo("up/owner")),
        store.repository(repo("up/other")),
    );
    let session = ra.start_upload().await.unwrap();
    let data = pattern(1, 1000);
    append(&ra, &session.id, 0, &data).await.unwrap();
    let digest = Digest::sha256(&data);

    assert_kind(
        rb.upload_status(&session.id).await,
        ErrorKind::BlobUploadUnknown,
    );
    assert_kind(
        append(&rb, &session.id, 1000, b"intruder").await,
        ErrorKind::BlobUploadUnknown,
    );
    assert_kind(
        rb.commit_upload(&session.id, &digest, None).await,
        ErrorKind::BlobUploadUnknown,
    );
    assert_kind(
        rb.cancel_upload(&session.id).await,
        ErrorKind::BlobUploadUnknown,
    );
    assert_kind(rb.stat_blob(&digest).await, ErrorKind::BlobUnknown);

    // Untouched in its own repository.
    assert_eq!(ra.upload_status(&session.id).await.unwrap().offset, 1000);
    ra.commit_upload(&session.id, &digest, None).await.unwrap();
    assert!(read_all(&ra, &digest, None).await == data);
    assert_kind(rb.stat_blob(&digest).await, ErrorKind::BlobUnknown);
}

#[test]
fn malformed_upload_ids_are_unknown_uploads() {
    for bad in [
        "../x",
        "",
        "/etc/passwd",
        "..",
        "0123456789abcdef0123456789abcdeF",
        "0123456789abcdef0123456789abcde",
        "0123456789abcdef0123456789abcdef0",
        "0123456789abcdef/123456789abcdef",
        "0123456789abcdef%2e%2e456789abcd",
    ] {
        assert_kind(UploadId::parse(bad), ErrorKind::BlobUploadUnknown);
    }
}

async fn an_id_that_was_never_started_is_unknown(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/never"));
    let id = UploadId::parse("0123456789abcdef0123456789abcdef").unwrap();
    assert_kind(r.upload_status(&id).await, ErrorKind::BlobUploadUnknown);
    assert_kind(append(&r, &id, 0, b"x").await, ErrorKind::BlobUploadUnknown);
    assert_kind(
        r.commit_upload(&id, &Digest::sha256(b""), None).await,
        ErrorKind::BlobUploadUnknown,
    );
    assert_kind(r.cancel_upload(&id).await, ErrorKind::BlobUploadUnknown);
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new());
    assert_eq!(keys(&b, "blobs").await, Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------
// Purging

/// Starts a session in `r` and stages `sizes` chunks; returns its id and the bytes staged.
async fn staged_session(r: &Repository, sizes: &[usize]) -> (UploadId, u64) {
    let session = r.start_upload().await.unwrap();
    let mut offset = 0;
    for (i, &size) in sizes.iter().enumerate() {
        append(r, &session.id, offset, &pattern(i as u64, size))
            .await
            .unwrap();
        offset += size as u64;
    }
    (session.id, offset)
}

async fn purge_deletes_idle_sessions_with_their_data_and_reports_the_bytes(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/purge"));
    let (one, staged_one) = staged_session(&r, &[100 * KIB, 0, KIB, 7]).await;
    let (two, staged_two) = staged_session(&r, &[]).await;
    let_time_pass().await;

    let report = store.purge_uploads(purge_all()).await.unwrap();
    assert_eq!(
        report,
        PurgeReport {
            scanned: 2,
            purged: 2,
            bytes_freed: staged_one + staged_two,
            errors: vec![],
        }
    );
    for id in [&one, &two] {
        assert_kind(r.upload_status(id).await, ErrorKind::BlobUploadUnknown);
    }
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new());
    assert_eq!(keys(&b, "segments").await, Vec::<String>::new());

    // Nothing left to purge.
    let again = store.purge_uploads(purge_all()).await.unwrap();
    assert_eq!(again, PurgeReport::default());
}

/// A session on object stores holding an open multipart upload (one 8 MiB part) and 1 MiB
/// staged, over a counting wrapper.
async fn session_with_an_open_upload(
    b: &TestBackend,
    name: &str,
) -> (Arc<CountingStore>, Store, UploadId) {
    let counting = b.counting();
    let store = counted_store(&counting);
    let r = store.repository(repo(name));
    let session = r.start_upload().await.unwrap();
    append(&r, &session.id, 0, &pattern(1, 9 * MIB))
        .await
        .unwrap();
    let state = state_json(b, &session.id).await;
    assert_eq!(recorded_parts(&state), vec![vec![8 * MIB as u64]]);
    (counting, store, session.id)
}

async fn cancel_aborts_the_open_multipart_upload(b: TestBackend) {
    if b.kind == BackendKind::Filesystem {
        return; // no multipart uploads
    }
    let (counting, store, id) = session_with_an_open_upload(&b, "up/cancelmp").await;
    counting.reset();
    store
        .repository(repo("up/cancelmp"))
        .cancel_upload(&id)
        .await
        .unwrap();
    let counts = counting.snapshot();
    assert_eq!(counts.multipart_abort, 1, "{counts:?}");
    assert_eq!(counts.multipart_complete, 0, "{counts:?}");
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new());
    assert_eq!(keys(&b, "segments").await, Vec::<String>::new());
}

async fn purge_aborts_the_open_multipart_upload_and_counts_its_parts(b: TestBackend) {
    if b.kind == BackendKind::Filesystem {
        return; // no multipart uploads
    }
    let (counting, store, _) = session_with_an_open_upload(&b, "up/purgemp").await;
    let_time_pass().await;
    counting.reset();
    let report = store.purge_uploads(purge_all()).await.unwrap();
    assert_eq!(
        report,
        PurgeReport {
            scanned: 1,
            purged: 1,
            bytes_freed: 9 * MIB as u64,
            errors: vec![],
        }
    );
    let counts = counting.snapshot();
    assert_eq!(counts.multipart_abort, 1, "{counts:?}");
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new());
    assert_eq!(keys(&b, "segments").await, Vec::<String>::new());
}

async fn a_dry_run_purge_reports_but_deletes_nothing(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/dry"));
    let (id, staged) = staged_session(&r, &[50 * KIB, KIB]).await;
    let_time_pass().await;
    let before = (keys(&b, "uploads").await, keys(&b, "segments").await);

    let report = store
        .purge_uploads(PurgeOptions {
            older_than: Duration::ZERO,
            dry_run: true,
        })
        .await
        .unwrap();
    assert_eq!(
        report,
        PurgeReport {
            scanned: 1,
            purged: 1,
            bytes_freed: staged,
            errors: vec![],
        }
    );
    assert_eq!(
        (keys(&b, "uploads").await, keys(&b, "segments").await),
        before
    );
    // Still whole and resumable.
    assert_eq!(r.upload_status(&id).await.unwrap().offset, staged);
    let all = [pattern(0, 50 * KIB), pattern(1, KIB)].concat();
    let digest = Digest::sha256(&all);
    r.commit_upload(&id, &digest, Some(staged)).await.unwrap();
    assert!(read_all(&r, &digest, None).await == all);
}

async fn purge_keeps_sessions_active_within_the_age(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/keep"));
    let (id, staged) = staged_session(&r, &[10 * KIB]).await;
    let before = (keys(&b, "uploads").await, keys(&b, "segments").await);

    let report = store
        .purge_uploads(PurgeOptions {
            older_than: Duration::from_secs(3600),
            dry_run: false,
        })
        .await
        .unwrap();
    assert_eq!(
        report,
        PurgeReport {
            scanned: 1,
            purged: 0,
            bytes_freed: 0,
            errors: vec![],
        }
    );
    assert_eq!(
        (keys(&b, "uploads").await, keys(&b, "segments").await),
        before
    );
    let status = r.upload_status(&id).await.unwrap();
    assert_eq!(status.offset, staged);
    append(&r, &id, staged, b"more").await.unwrap();
}

async fn purge_uses_the_last_activity_not_the_start(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/active"));
    let session = r.start_upload().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Started 1.5 s ago, active just now: kept by a sweep of sessions idle for over a second.
    let status = append(&r, &session.id, 0, b"recent").await.unwrap();
    assert!(status.last_active > status.started_at);
    let report = store
        .purge_uploads(PurgeOptions {
            older_than: Duration::from_secs(1),
            dry_run: false,
        })
        .await
        .unwrap();
    assert_eq!((report.scanned, report.purged), (1, 0), "{report:?}");
    assert_eq!(r.upload_status(&session.id).await.unwrap().offset, 6);
}

async fn a_purge_racing_an_append_leaves_the_session_whole_or_gone(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/racepurge"));
    let (id, _) = staged_session(&r, &[1000]).await;
    let chunk = pattern(1, 300 * KIB);
    let (started, mid_chunk) = tokio::sync::oneshot::channel();
    let appending = {
        let (r, id, chunk) = (r.clone(), id.clone(), chunk.clone());
        tokio::spawn(async move {
            r.append_upload(&id, 1000, slow_stream(chunk, started))
                .await
        })
    };
    mid_chunk.await.unwrap();
    let report = store.purge_uploads(purge_all()).await.unwrap();
    let appended = appending.await.unwrap();
    if b.kind == BackendKind::Filesystem {
        // The append holds the session's lock: the sweep leaves it alone, whatever its age.
        assert_eq!((report.scanned, report.purged), (1, 0), "{report:?}");
        assert!(appended.is_ok(), "{appended:?}");
    }
    // Object stores: the state does not change until the chunk is in, so a sweep of sessions
    // idle for longer than zero takes it; the append then fails. Either way nothing is half
    // there: the session is whole and commits, or it is gone with all its objects.
    match appended {
        Ok(status) => {
            assert_eq!(status.offset, 1000 + chunk.len() as u64);
            let all = [pattern(0, 1000), chunk].concat();
            let digest = Digest::sha256(&all);
            r.commit_upload(&id, &digest, None).await.unwrap();
            assert!(read_all(&r, &digest, None).await == all);
        }
        Err(e) => {
            assert_kind(r.upload_status(&id).await, ErrorKind::BlobUploadUnknown);
            assert_eq!(keys(&b, "uploads").await, Vec::<String>::new(), "{e}");
            assert_eq!(keys(&b, "segments").await, Vec::<String>::new(), "{e}");
        }
    }
}

async fn the_background_purger_purges_idle_sessions_and_stops_promptly(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/purger"));
    let (id, _) = staged_session(&r, &[KIB]).await;
    let purger = Purger::spawn(
        store.clone(),
        PurgerConfig {
            enabled: true,
            options: purge_all(),
            interval: Duration::from_millis(50),
        },
    )
    .expect("an enabled purger runs");

    // On object stores a purge first marks the session cancelled (it is unknown from then
    // on), then deletes its objects: wait for both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = r.upload_status(&id).await;
        let left = [keys(&b, "uploads").await, keys(&b, "segments").await].concat();
        match status {
            Err(e) if e.kind() == ErrorKind::BlobUploadUnknown && left.is_empty() => break,
            Err(e) if e.kind() != ErrorKind::BlobUploadUnknown => panic!("{e}"),
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("session not purged in time: {other:?}, left: {left:?}"),
        }
    }
    tokio::time::timeout(Duration::from_secs(5), purger.stop())
        .await
        .expect("stop() returns promptly");
}

async fn a_waiting_purger_stops_at_once_and_a_disabled_one_never_starts(b: TestBackend) {
    let store = store_on(&b);
    let config = PurgerConfig {
        enabled: true,
        options: purge_all(),
        interval: Duration::from_secs(3600),
    };
    let purger = Purger::spawn(store.clone(), config).unwrap();
    tokio::time::timeout(Duration::from_secs(1), purger.stop())
        .await
        .expect("stop() interrupts the wait between sweeps");
    let disabled = PurgerConfig {
        enabled: false,
        ..config
    };
    assert!(Purger::spawn(store, disabled).is_none());
}

// ---------------------------------------------------------------------------------------
// Reads of uploaded blobs

async fn range_reads_across_chunk_boundaries_return_the_right_bytes(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/ranges"));
    let sizes = [1000, 1, 4096, 0, 70_000, 3, 1024];
    let session = r.start_upload().await.unwrap();
    let mut all = vec![];
    let mut boundaries = vec![0u64];
    for (i, size) in sizes.into_iter().enumerate() {
        let chunk = pattern(100 + i as u64, size);
        append(&r, &session.id, all.len() as u64, &chunk)
            .await
            .unwrap();
        all.extend_from_slice(&chunk);
        boundaries.push(all.len() as u64);
    }
    let digest = Digest::sha256(&all);
    r.commit_upload(&session.id, &digest, None).await.unwrap();
    let size = all.len() as u64;

    let mut points: Vec<u64> = boundaries
        .iter()
        .flat_map(|&p| [p.saturating_sub(1), p, p + 1])
        .filter(|&p| p < size)
        .collect();
    points.sort_unstable();
    points.dedup();
    let slice = |from: u64, to: u64| &all[from as usize..to as usize];
    for (i, &start) in points.iter().enumerate() {
        for &end in &points[i..] {
            let range = ByteRange::Bounded {
                start,
                end_inclusive: end,
            };
            let got = read_all(&r, &digest, Some(range)).await;
            assert!(got == slice(start, end + 1), "{range:?}");
        }
        let got = read_all(&r, &digest, Some(ByteRange::From(start))).await;
        assert!(got == slice(start, size), "From({start})");
        let n = size - start;
        let got = read_all(&r, &digest, Some(ByteRange::Suffix(n))).await;
        assert!(got == slice(start, size), "Suffix({n})");
    }
    let read = r
        .read_blob(
            &digest,
            Some(ByteRange::Bounded {
                start: 999,
                end_inclusive: 5096,
            }),
        )
        .await
        .unwrap();
    assert_eq!(read.range, 999..5097);
    assert_eq!(read.info.size, size);
    assert_kind(
        r.read_blob(&digest, Some(ByteRange::From(size))).await,
        ErrorKind::RangeInvalid,
    );
}

// ---------------------------------------------------------------------------------------
// Monolithic streamed puts

async fn put_blob_stream_stores_a_blob_in_one_step(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/stream"));
    let data = pattern(3, 2 * MIB + 3);
    let digest = Digest::sha256(&data);
    let info = r
        .put_blob_stream(&digest, Some(data.len() as u64), stream_of(&data))
        .await
        .unwrap();
    assert_eq!((info.digest, info.size), (digest, data.len() as u64));
    assert!(read_all(&r, &digest, None).await == data);
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new());
    assert_segments_are_exactly_the_indexed_ones(&b, &digest).await;
}

async fn put_blob_stream_with_a_wrong_digest_leaves_no_session_and_no_blob(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("up/stream"));
    let data = pattern(3, 300 * KIB);
    let claimed = Digest::sha256(b"not these bytes");
    assert_kind(
        r.put_blob_stream(&claimed, None, stream_of(&data)).await,
        ErrorKind::DigestInvalid,
    );
    assert_kind(
        r.put_blob_stream(&Digest::sha256(&data), Some(1), stream_of(&data))
            .await,
        ErrorKind::SizeInvalid,
    );
    for d in [claimed, Digest::sha256(&data)] {
        assert_kind(r.stat_blob(&d).await, ErrorKind::BlobUnknown);
    }
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new());
    assert_eq!(keys(&b, "segments").await, Vec::<String>::new());
    assert_eq!(keys(&b, "blobs").await, Vec::<String>::new());
}

backend_tests!(
    chunks_of_every_size_commit_to_the_same_bytes,
    a_chunk_larger_than_the_segment_buffer_commits_to_the_same_bytes,
    an_upload_of_no_bytes_commits_the_empty_blob,
    a_chunk_at_the_wrong_offset_is_refused_with_the_current_offset_and_changes_nothing,
    a_chunk_stream_that_fails_midway_counts_for_nothing,
    a_commit_with_the_wrong_digest_publishes_nothing_and_the_session_stays_resumable,
    a_commit_with_the_wrong_size_publishes_nothing_and_the_session_stays_resumable,
    an_upload_commits_under_a_sha512_digest_by_rehashing_what_is_stored,
    wrong_sha512_commits_read_the_stored_bytes_back_once_not_on_every_try,
    a_monolithic_sha512_upload_reads_nothing_back,
    a_second_store_over_the_same_backend_resumes_the_session,
    a_chunk_through_a_replica_after_another_appended_lands_where_the_session_is,
    a_chunk_retried_through_a_replica_whose_copy_is_stale_is_refused_and_never_reaches_the_blob,
    a_chunk_through_a_replica_after_another_cancelled_the_session_is_told_it_is_unknown,
    a_chunk_retried_through_a_replica_after_another_replicas_append_died_is_refused_once_then_taken,
    a_chunk_through_a_replica_after_an_empty_chunk_through_another_is_refused_once_then_taken,
    a_chunk_through_a_replica_after_a_failed_commit_through_another_is_refused_once_then_taken,
    a_backend_failure_in_the_first_chunk_after_the_post_is_reported_as_one,
    resuming_in_a_new_store_and_committing_reads_no_uploaded_byte,
    commit_cost_does_not_grow_with_the_upload_size,
    chunks_smaller_than_a_part_are_staged_then_read_back_into_one,
    a_client_sending_1_kib_chunks_commits_with_parts_of_at_least_5_mib,
    an_append_that_failed_after_sending_parts_leaves_none_of_them_in_the_blob,
    without_a_multipart_store_a_large_chunk_is_one_segment_that_takes_in_the_staged_ones,
    an_append_after_a_commit_began_is_refused_and_the_commit_can_be_redone,
    a_cancel_after_a_commit_verified_its_digest_finishes_publishing_the_blob,
    a_purge_after_a_commit_verified_its_digest_finishes_publishing_the_blob,
    a_filesystem_commit_renames_the_staging_file_into_place,
    racing_appends_at_one_offset_in_one_store_accept_exactly_one,
    racing_appends_at_one_offset_from_two_stores_accept_exactly_one,
    racing_appends_that_send_parts_accept_exactly_one_and_the_blob_is_the_winners,
    many_racing_appends_at_one_offset_accept_exactly_one,
    concurrent_commits_of_the_same_content_both_succeed_and_leave_one_copy,
    cancel_deletes_the_staged_data_and_forgets_the_session,
    a_cancelled_session_accepts_no_append_or_commit,
    a_session_is_unknown_through_another_repository,
    an_id_that_was_never_started_is_unknown,
    purge_deletes_idle_sessions_with_their_data_and_reports_the_bytes,
    a_dry_run_purge_reports_but_deletes_nothing,
    cancel_aborts_the_open_multipart_upload,
    purge_aborts_the_open_multipart_upload_and_counts_its_parts,
    purge_keeps_sessions_active_within_the_age,
    purge_uses_the_last_activity_not_the_start,
    a_purge_racing_an_append_leaves_the_session_whole_or_gone,
    the_background_purger_purges_idle_sessions_and_stops_promptly,
    a_waiting_purger_stops_at_once_and_a_disabled_one_never_starts,
    range_reads_across_chunk_boundaries_return_the_right_bytes,
    put_blob_stream_stores_a_blob_in_one_step,
    put_blob_stream_with_a_wrong_digest_leaves_no_session_and_no_blob,
);

fn stream_of(data: &[u8]) -> ChunkStream<'static> {
    in_pieces(data, 64 * KIB)
}

/// Over HTTP, on S3, two servers over one prefix as behind a load balancer: podman-style
/// chunks (`Content-Range`) alternating between them make the blob. A chunk sent to the first
/// after an empty `PATCH` through the second (the session changed, its offset did not) starts
/// from the first server's stale copy of the state: it is refused once with a 416 whose
/// `Range` is where the session is, and taken when sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_chunks_through_two_servers_make_the_blob_and_a_stale_chunk_is_refused_once() {
    use common::server::S3Server;
    use reqwest::{StatusCode, header};
    let Some(b) = make(BackendKind::S3).await else {
        return;
    };
    let servers = [S3Server::start(&b), S3Server::start(&b)];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let data = pattern(5, 4 * 8 * MIB);
    let chunk = |i: usize| &data[i * 8 * MIB..(i + 1) * 8 * MIB];
    let patch = |server: usize, location: &str, start: Option<usize>, body: &[u8]| {
        let mut request = client
            .patch(servers[server].url(location))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body.to_vec());
        if let Some(start) = start {
            let range = format!("{start}-{}", start + body.len() - 1);
            request = request.header(header::CONTENT_RANGE, range);
        }
        request.send()
    };
    let location_of =
        |r: &reqwest::Response| r.headers()[header::LOCATION].to_str().unwrap().to_owned();

    let started = client
        .post(servers[0].url("/v2/replicas/http/blobs/uploads/"))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED, "POST");
    let mut location = location_of(&started);
    for (i, server) in [(0, 0), (1, 1), (2, 0)] {
        let response = patch(server, &location, Some(i * 8 * MIB), chunk(i))
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "chunk {i} through server {server}"
        );
        location = location_of(&response);
    }
    let empty = patch(1, &location, None, &[]).await.unwrap();
    assert_eq!(empty.status(), StatusCode::ACCEPTED, "empty PATCH");
    location = location_of(&empty);

    let at = 3 * 8 * MIB;
    let refused = patch(0, &location, Some(at), chunk(3)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        refused.headers()[header::RANGE],
        format!("0-{}", at - 1).as_str()
    );
    let taken = patch(0, &location, Some(at), chunk(3)).await.unwrap();
    assert_eq!(taken.status(), StatusCode::ACCEPTED, "the chunk sent again");
    location = location_of(&taken);

    let digest = Digest::sha256(&data);
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = client
        .put(servers[1].url(&format!("{location}{sep}digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED, "PUT");
    let got = client
        .get(servers[0].url(&format!("/v2/replicas/http/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert!(
        got.bytes().await.unwrap() == data,
        "the blob is not the acknowledged bytes"
    );
}
