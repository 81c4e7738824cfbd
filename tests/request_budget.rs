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

/// One request beside the part: the state write. The state the append before left through
/// this store is where the chunk starts, so nothing is read.
async fn a_following_chunk_costs_one_request_beside_its_part(b: TestBackend) {
    let (store, counting) = counting_store_on(&b);
    let r = store.repository(repo("app"));
    let id = r.start_upload().await.unwrap().id;
    let chunk = pattern(2, 8 << 20);
    r.append_upload(&id, 0, in_pieces(&chunk, 1 << 20))
        .await
        .unwrap();
    let (_, counts, log) = requests_of(&counting, || {
        r.append_upload(&id, chunk.len() as u64, in_pieces(&chunk, 1 << 20))
    })
    .await;
    let parts = counts.multipart_part;
    assert!(
        counts.requests() <= parts + 1,
        "{} requests: {log:#?}",
        counts.requests()
    );
}

/// The first chunk after the `POST` reads nothing either (the `POST`'s state is remembered):
/// it opens the multipart upload and claims it, sends its part, and writes the state.
async fn a_first_chunk_costs_three_requests_beside_its_part(b: TestBackend) {
    let (store, counting) = counting_store_on(&b);
    let r = store.repository(repo("app"));
    let id = r.start_upload().await.unwrap().id;
    let chunk = pattern(2, 8 << 20);
    let (_, counts, log) = requests_of(&counting, || {
        r.append_upload(&id, 0, in_pieces(&chunk, 1 << 20))
    })
    .await;
    let parts = counts.multipart_part;
    assert!(
        counts.requests() <= parts + 3,
        "{} requests: {log:#?}",
        counts.requests()
    );
}

/// A chunk without an offset (docker's `PATCH` has no `Content-Range`) goes where the session
/// is now, which another replica may have moved: it reads the state, and costs two.
async fn a_following_chunk_without_an_offset_costs_two_requests_beside_its_part(b: TestBackend) {
    let (store, counting) = counting_store_on(&b);
    let r = store.repository(repo("app"));
    let id = r.start_upload().await.unwrap().id;
    let chunk = pattern(2, 8 << 20);
    r.append_upload(&id, 0, in_pieces(&chunk, 1 << 20))
        .await
        .unwrap();
    let (_, counts, log) = requests_of(&counting, || {
        r.append_upload_from(&id, None, in_pieces(&chunk, 1 << 20))
    })
    .await;
    let parts = counts.multipart_part;
    assert!(
        counts.requests() <= parts + 2,
        "{} requests: {log:#?}",
        counts.requests()
    );
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
