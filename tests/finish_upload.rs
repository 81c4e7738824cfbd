//! The request that ends an upload with its last chunk (`Repository::finish_upload`, a `PUT`
//! with a body), and the claim an append carries over to the next one through the same
//! store: on every backend, what a client gets is what appending and committing gives.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use layerstore::upload::PurgeOptions;
use layerstore::{Digest, Error, ErrorKind, RangeError, Repository, Store};

const MIB: usize = 1024 * 1024;

async fn read_all(r: &Repository, digest: &Digest) -> Vec<u8> {
    let read = r.read_blob(digest, None).await.unwrap();
    let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    chunks.concat()
}

async fn finished_whole(store: &Store, name: &str, data: &[u8]) -> Digest {
    let r = store.repository(repo(name));
    let d = Digest::sha256(data);
    let id = r.start_upload().await.unwrap().id;
    r.finish_upload(
        &id,
        None,
        in_pieces(data, 1000),
        &d,
        Some(data.len() as u64),
    )
    .await
    .unwrap();
    d
}

async fn a_small_blob_sent_whole_to_a_new_session_is_stored_and_ends_it(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let data = pattern(1, 4096);
    let d = Digest::sha256(&data);
    let id = r.start_upload().await.unwrap().id;
    let info = r
        .finish_upload(&id, None, in_pieces(&data, 1000), &d, None)
        .await
        .unwrap();
    assert_eq!((info.digest, info.size), (d, 4096));
    assert_eq!(read_all(&r, &d).await, data);
    let ended = r.upload_status(&id).await.unwrap_err();
    assert_eq!(ended.kind(), ErrorKind::BlobUploadUnknown);
    // A second store sees it too (nothing lives in the first one's memory only).
    assert_eq!(
        read_all(&store_on(&b).repository(repo("app")), &d).await,
        data
    );
}

async fn a_small_blob_the_store_has_is_linked_not_stored_again(b: TestBackend) {
    let store = store_on(&b);
    let data = pattern(2, 4096);
    let d = finished_whole(&store, "first", &data).await;
    let before = keys(&b, "blobs").await;
    finished_whole(&store, "second", &data).await;
    assert_eq!(keys(&b, "blobs").await, before);
    assert_eq!(read_all(&store.repository(repo("second")), &d).await, data);
}

async fn a_wrong_digest_keeps_the_bytes_in_the_session_and_commits_nothing(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let data = pattern(3, 4096);
    let wrong = Digest::sha256(b"something else");
    let id = r.start_upload().await.unwrap().id;
    let err = r
        .finish_upload(&id, None, in_pieces(&data, 1000), &wrong, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DigestInvalid);
    assert!(!r.blob_exists(&wrong).await.unwrap());
    // As after an append and a refused commit: resumable, holding what was sent.
    assert_eq!(r.upload_status(&id).await.unwrap().offset, 4096);
    let d = Digest::sha256(&data);
    r.commit_upload(&id, &d, None).await.unwrap();
    assert_eq!(read_all(&r, &d).await, data);
}

async fn the_last_chunk_of_a_chunked_upload_is_appended_then_committed(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let data = pattern(4, 6 * MIB + 123);
    let d = Digest::sha256(&data);
    let id = r.start_upload().await.unwrap().id;
    let cut = 5 * MIB + 7;
    r.append_upload(&id, 0, in_pieces(&data[..cut], MIB))
        .await
        .unwrap();
    r.finish_upload(&id, None, in_pieces(&data[cut..], MIB), &d, None)
        .await
        .unwrap();
    assert_eq!(read_all(&r, &d).await, data);
}

async fn a_large_body_sent_whole_is_appended_then_committed(b: TestBackend) {
    let store = store_on(&b);
    let data = pattern(5, 3 * MIB);
    let d = finished_whole(&store, "app", &data).await;
    assert_eq!(read_all(&store.repository(repo("app")), &d).await, data);
}

async fn a_last_chunk_at_the_wrong_offset_is_refused_with_the_current_offset(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let data = pattern(6, 4096);
    let d = Digest::sha256(&data);
    let id = r.start_upload().await.unwrap().id;
    let err = r
        .finish_upload(&id, Some(100), in_pieces(&data, 1000), &d, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::RangeInvalid(RangeError::UploadOffset {
                current: 0,
                requested: 100
            })
        ),
        "{err:?}"
    );
    assert!(!r.blob_exists(&d).await.unwrap());
}

/// A small whole blob and a chunk racing for the first bytes of one session: exactly one is
/// accepted, and what was accepted is what the store holds.
async fn a_whole_blob_racing_a_chunk_on_a_new_session_accepts_exactly_one(b: TestBackend) {
    let store = store_on(&b);
    for round in 0..8u64 {
        let r = store.repository(repo("app"));
        let whole = pattern(100 + round, 4096);
        let d = Digest::sha256(&whole);
        let chunk = pattern(200 + round, 4096);
        let id = r.start_upload().await.unwrap().id;
        let (finished, appended) = tokio::join!(
            r.finish_upload(&id, None, in_pieces(&whole, 1000), &d, None),
            r.append_upload(&id, 0, in_pieces(&chunk, 1000)),
        );
        match (&finished, &appended) {
            (Ok(_), Err(_)) => assert_eq!(read_all(&r, &d).await, whole),
            (Err(_), Ok(status)) => {
                assert_eq!(status.offset, 4096);
                assert!(!r.blob_exists(&d).await.unwrap());
            }
            _ => panic!("round {round}: {finished:?} and {appended:?}"),
        }
    }
}

async fn a_purge_removes_what_a_small_push_left_and_nothing_else(b: TestBackend) {
    let store = store_on(&b);
    let data = pattern(7, 4096);
    let d = finished_whole(&store, "app", &data).await;
    let r = store.repository(repo("app"));
    let open = r.start_upload().await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let report = store
        .purge_uploads(PurgeOptions {
            older_than: Duration::from_secs(3600),
            dry_run: false,
        })
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    // The open session is younger than the age given and stays; an ended one goes at once.
    assert!(r.upload_status(&open).await.is_ok());
    let left = keys(&b, "uploads").await;
    assert!(
        left.iter().all(|k| k.contains(open.as_str())),
        "{left:?} {report:?}"
    );
    assert_eq!(read_all(&r, &d).await, data);
}

/// Chunks of one session through two stores (replicas behind a load balancer): the claim
/// one store carried over is taken over by the other, and back, and the blob is whole.
async fn chunks_alternating_between_two_stores_commit_to_the_same_bytes(b: TestBackend) {
    let (one, two) = (store_on(&b), store_on(&b));
    let data = pattern(8, 4 * 6 * MIB);
    let d = Digest::sha256(&data);
    let id = one.repository(repo("app")).start_upload().await.unwrap().id;
    for (i, chunk) in data.chunks(6 * MIB).enumerate() {
        let store = if i % 2 == 0 { &one } else { &two };
        store
            .repository(repo("app"))
            .append_upload_from(&id, None, in_pieces(chunk, MIB))
            .await
            .unwrap();
    }
    let r = two.repository(repo("app"));
    r.commit_upload(&id, &d, None).await.unwrap();
    assert_eq!(read_all(&r, &d).await, data);
}

/// Two appends at one offset through the store that carried the claim over: it goes to one of
/// them, and exactly one is accepted.
async fn two_chunks_racing_through_the_store_that_holds_the_claim_accept_exactly_one(
    b: TestBackend,
) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let first = pattern(9, 6 * MIB);
    let id = r.start_upload().await.unwrap().id;
    r.append_upload(&id, 0, in_pieces(&first, MIB))
        .await
        .unwrap();
    let (x, y) = (pattern(10, 6 * MIB), pattern(11, 6 * MIB));
    let at = first.len() as u64;
    let (rx, ry) = tokio::join!(
        r.append_upload(&id, at, in_pieces(&x, MIB)),
        r.append_upload(&id, at, in_pieces(&y, MIB)),
    );
    let winner = match (&rx, &ry) {
        (Ok(_), Err(_)) => &x,
        (Err(_), Ok(_)) => &y,
        _ => panic!("{rx:?} and {ry:?}"),
    };
    let whole = [first.as_slice(), winner.as_slice()].concat();
    let d = Digest::sha256(&whole);
    r.commit_upload(&id, &d, None).await.unwrap();
    assert_eq!(read_all(&r, &d).await, whole);
}

/// A session started through one store, given a chunk through another, and finished through
/// the first: the first store's memory of the session it started is stale, and must not
/// make it refuse a last chunk that comes in order.
async fn a_last_chunk_after_a_chunk_through_another_store_is_taken(b: TestBackend) {
    let (one, two) = (store_on(&b), store_on(&b));
    let data = pattern(12, 8192);
    let d = Digest::sha256(&data);
    let id = one.repository(repo("app")).start_upload().await.unwrap().id;
    two.repository(repo("app"))
        .append_upload(&id, 0, in_pieces(&data[..4096], 1000))
        .await
        .unwrap();
    let r = one.repository(repo("app"));
    r.finish_upload(&id, None, in_pieces(&data[4096..], 1000), &d, None)
        .await
        .unwrap();
    assert_eq!(read_all(&r, &d).await, data);
}

backend_tests!(
    a_small_blob_sent_whole_to_a_new_session_is_stored_and_ends_it,
    a_small_blob_the_store_has_is_linked_not_stored_again,
    a_wrong_digest_keeps_the_bytes_in_the_session_and_commits_nothing,
    the_last_chunk_of_a_chunked_upload_is_appended_then_committed,
    a_large_body_sent_whole_is_appended_then_committed,
    a_last_chunk_at_the_wrong_offset_is_refused_with_the_current_offset,
    a_whole_blob_racing_a_chunk_on_a_new_session_accepts_exactly_one,
    a_purge_removes_what_a_small_push_left_and_nothing_else,
    chunks_alternating_between_two_stores_commit_to_the_same_bytes,
    two_chunks_racing_through_the_store_that_holds_the_claim_accept_exactly_one,
    a_last_chunk_after_a_chunk_through_another_store_is_taken,
);
