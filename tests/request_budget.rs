//! What each registry operation costs in backend requests on an object store (S3, Azure, and
//! memory through the same engine), counted by a wrapper around the store: the budget of
//! issue 13 (a small push, a chunk, a cached HEAD, a manifest put). Each failure lists the
//! requests made.

mod common;

use common::*;
use layerstore::manifest::media_type;
use layerstore::{Digest, Store};

/// Runs `op`, and returns what it asked of the backend.
async fn requests_of<F, Fut, T>(counting: &CountingStore, op: F) -> (T, Counts, Vec<String>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    counting.reset();
    let out = op().await;
    (out, counting.snapshot(), counting.requests_log())
}

/// A blob pushed as registry clients push small blobs: POST, then PUT with the body.
async fn small_push(store: &Store, name: &str, data: &[u8]) -> Digest {
    let r = store.repository(repo(name));
    let d = Digest::sha256(data);
    let id = r.start_upload().await.unwrap().id;
    r.finish_upload(&id, None, in_pieces(data, data.len()), &d, None)
        .await
        .unwrap();
    d
}

async fn a_small_push_costs_at_most_five_requests(b: TestBackend) {
    let (store, counting) = counting_store_on(&b);
    // The repository exists already, as it does for all but a registry's first push.
    small_push(&store, "app", b"first").await;
    let data = pattern(1, 4096);
    let (_, counts, log) = requests_of(&counting, || small_push(&store, "app", &data)).await;
    assert!(
        counts.requests() <= 5,
        "{} requests: {log:#?}",
        counts.requests()
    );
}

/// The requests an 8 MiB chunk (one part) makes beside its part, with their log: the first
/// chunk of a session (`following: false`) or the one after it, with its offset or without
/// (as docker sends its `PATCH`).
async fn requests_beside_a_chunks_part(
    b: &TestBackend,
    following: bool,
    with_offset: bool,
) -> (u64, Vec<String>) {
    let (store, counting) = counting_store_on(b);
    let r = store.repository(repo("app"));
    let id = r.start_upload().await.unwrap().id;
    let chunk = pattern(2, 8 << 20);
    let mut at = 0;
    if following {
        r.append_upload(&id, 0, in_pieces(&chunk, 1 << 20))
            .await
            .unwrap();
        at = chunk.len() as u64;
    }
    let offset = with_offset.then_some(at);
    let (_, counts, log) = requests_of(&counting, || {
        r.append_upload_from(&id, offset, in_pieces(&chunk, 1 << 20))
    })
    .await;
    (counts.requests() - counts.multipart_part, log)
}

/// One request beside the part: the state write. The state the append before left through
/// this store is where the chunk starts, so nothing is read.
async fn a_following_chunk_costs_one_request_beside_its_part(b: TestBackend) {
    let (beside, log) = requests_beside_a_chunks_part(&b, true, true).await;
    assert!(beside <= 1, "{beside} beside the part: {log:#?}");
}

/// The first chunk after the `POST` reads nothing either (the `POST`'s state is remembered):
/// it opens the multipart upload and claims it, sends its part, and writes the state.
async fn a_first_chunk_costs_three_requests_beside_its_part(b: TestBackend) {
    let (beside, log) = requests_beside_a_chunks_part(&b, false, true).await;
    assert!(beside <= 3, "{beside} beside the part: {log:#?}");
}

/// A chunk without an offset (docker's `PATCH` has no `Content-Range`) goes where the session
/// is now, which another replica may have moved: it reads the state, and costs two.
async fn a_following_chunk_without_an_offset_costs_two_requests_beside_its_part(b: TestBackend) {
    let (beside, log) = requests_beside_a_chunks_part(&b, true, false).await;
    assert!(beside <= 2, "{beside} beside the part: {log:#?}");
}

async fn a_manifest_put_by_tag_costs_at_most_four_requests(b: TestBackend) {
    let (store, counting) = counting_store_on(&b);
    let (first, _) = push_image(&store, "app", "first", 1).await;
    put_manifest(&store, "app", &tag("v0"), &first).await;
    let (m, _) = push_image(&store, "app", "second", 2).await;
    let (_, counts, log) = requests_of(&counting, || async {
        store
            .repository(repo("app"))
            .put_manifest(&tag("v1"), m.clone(), Some(media_type::OCI_MANIFEST))
            .await
            .unwrap()
    })
    .await;
    assert!(
        counts.requests() <= 4,
        "{} requests: {log:#?}",
        counts.requests()
    );
}

backend_tests!(@kind memory, Memory,
    a_small_push_costs_at_most_five_requests,
    a_following_chunk_costs_one_request_beside_its_part,
    a_first_chunk_costs_three_requests_beside_its_part,
    a_following_chunk_without_an_offset_costs_two_requests_beside_its_part,
    a_manifest_put_by_tag_costs_at_most_four_requests
);
backend_tests!(@kind s3, S3,
    a_small_push_costs_at_most_five_requests,
    a_following_chunk_costs_one_request_beside_its_part,
    a_first_chunk_costs_three_requests_beside_its_part,
    a_following_chunk_without_an_offset_costs_two_requests_beside_its_part,
    a_manifest_put_by_tag_costs_at_most_four_requests
);
backend_tests!(@kind azure, Azure,
    a_small_push_costs_at_most_five_requests,
    a_following_chunk_costs_one_request_beside_its_part,
    a_first_chunk_costs_three_requests_beside_its_part,
    a_following_chunk_without_an_offset_costs_two_requests_beside_its_part,
    a_manifest_put_by_tag_costs_at_most_four_requests
);
