//! Invariant 8 on object stores, whatever the chunk pattern: a blob a commit acknowledged reads
//! back byte for byte — from the store that wrote it and from a restarted one — and is made of
//! few objects, so that reading it costs a bounded number of requests per MiB (issue 11).
//!
//! The bound, from the design (`src/upload/objects`): a session's bytes are, in order, pieces of
//! at least 5 MiB (multipart uploads of parts ≥ 5 MiB, or, without a `MultipartStore`, chunks of
//! 5 MiB or more) and then staged pieces under 5 MiB, each larger than all the staged pieces
//! after it together. So n staged pieces hold at least 1 + 2 + … + 2^(n-1) = 2^n − 1 bytes, and
//! since the first is under 5 MiB and larger than the rest, under 10 MiB in all: n ≤ 23. A blob
//! of `size` bytes is therefore made of at most `size / 5 MiB + 23` objects ([`max_pieces`]).
//! Reading it whole takes the index, one ranged GET per object and two HEADs (the repository
//! link and the single-object `data` a blob might have instead); a range takes one GET per
//! object it overlaps.
//!
//! The property runs on memory and S3 (multipart uploads), Azure (block lists), and the
//! object-store path without a `MultipartStore` (memory). Cases: 24 on memory, 8 on S3, 3 on
//! Azure; `PROPTEST_CASES` overrides all. The seed is fixed so that CI runs the same cases
//! each time (`PROPTEST_RNG_SEED` picks others); a failure is minimised and its seed recorded
//! in `tests/chunk_patterns.proptest-regressions`, which then runs it first.

mod common;

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::server::S3Server;
use common::*;
use futures::{StreamExt, TryStreamExt};
use layerstore::layout::KeyLayout;
use layerstore::{Backend, ByteRange, Digest, Repository, Store};
use object_store::ObjectStoreExt;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::RngSeed;
use serde_json::Value;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// The smallest part S3 accepts (but for the last), and so the smallest piece but staged ones.
const MIN_PART: u64 = 5 * MIB as u64;
/// The most staged pieces under 5 MiB a blob can end with (see the module doc).
const MAX_STAGED: u64 = 23;
/// The most bytes one case pushes, so that the file runs in CI time.
const MAX_TOTAL: usize = 40 * MIB;

/// The most objects a blob of `size` bytes may be made of.
fn max_pieces(size: u64) -> u64 {
    size / MIN_PART + MAX_STAGED
}

// ---------------------------------------------------------------------------------------------
// Chunk patterns

/// A chunk of at most 4 KiB, often empty or a single byte; thousands of them make one blob.
fn tiny() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(0),
        1 => Just(1),
        8 => 0..=4 * KIB,
    ]
}

/// A chunk at a boundary of the engine: S3's part minimum and the 8 MiB part size.
fn boundary() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![
        5 * MIB - 1,
        5 * MIB,
        5 * MIB + 1,
        6 * MIB + 1,
        8 * MIB - 1,
        8 * MIB,
        8 * MIB + 1,
    ])
}

/// A chunk that fills much of a part without reaching it.
fn medium() -> impl Strategy<Value = usize> {
    prop_oneof![4 * KIB..5 * MIB, Just(4 * MIB), Just(5 * MIB - 4 * KIB)]
}

/// Chunk sizes of one blob, at most [`MAX_TOTAL`] bytes in all: up to `max_chunks` tiny chunks
/// (a few MiB, staged), up to as many small ones (past several parts), a few around the part
/// boundaries, or a mix.
fn chunk_sizes(max_chunks: usize) -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        prop::collection::vec(tiny(), 1..=max_chunks),
        prop::collection::vec(prop_oneof![tiny(), 0..=64 * KIB], 1..=max_chunks),
        prop::collection::vec(
            prop_oneof![3 => boundary(), 2 => tiny(), 1 => medium()],
            1..=12
        ),
        prop::collection::vec(
            prop_oneof![40 => tiny(), 2 => medium(), 1 => boundary()],
            1..=max_chunks / 2
        ),
    ]
    .prop_map(|sizes| {
        let mut total = 0;
        sizes
            .into_iter()
            .take_while(|size| {
                total += size;
                total <= MAX_TOTAL
            })
            .collect()
    })
}

/// One case: the chunks, the bytes, how the network delivers each chunk, and a few ranges.
#[derive(Debug, Clone)]
struct Case {
    sizes: Vec<usize>,
    seed: u64,
    /// Each chunk's stream yields pieces of at most this many bytes.
    delivery: usize,
    /// Ranges to read, as (start, length) picks.
    ranges: Vec<(Index, Index)>,
}

/// Cases of up to `max_chunks` chunks.
fn case(max_chunks: usize) -> impl Strategy<Value = Case> {
    (
        chunk_sizes(max_chunks),
        any::<u64>(),
        prop::sample::select(vec![1000, 64 * KIB, MIB]),
        prop::collection::vec(any::<(Index, Index)>(), 3),
    )
        .prop_map(|(sizes, seed, delivery, ranges)| Case {
            sizes,
            seed,
            delivery,
            ranges,
        })
}

/// Cases per backend and shrinking steps (`PROPTEST_CASES`, `PROPTEST_MAX_SHRINK_ITERS`
/// override them), with a fixed `seed` unless `PROPTEST_RNG_SEED` names one.
fn config(default_cases: u32, max_shrink_iters: u32, seed: u64) -> ProptestConfig {
    let defaults = ProptestConfig::default();
    let env = |name| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let rng_seed = match defaults.rng_seed {
        RngSeed::Random => RngSeed::Fixed(seed),
        fixed => fixed,
    };
    ProptestConfig {
        cases: env("PROPTEST_CASES").unwrap_or(default_cases),
        rng_seed,
        // Every case moves up to 40 MiB through a backend, and a server that stops answering
        // fails every step alike: shrinking is bounded in steps and to two minutes.
        max_shrink_iters: env("PROPTEST_MAX_SHRINK_ITERS").unwrap_or(max_shrink_iters),
        max_shrink_time: 120_000,
        ..defaults
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The object-store paths over a backend, with or without its `MultipartStore`, and no cache:
/// every read goes to the backend.
fn store_without_cache(
    objects: Arc<dyn object_store::ObjectStore>,
    multipart: Option<Arc<dyn object_store::multipart::MultipartStore>>,
) -> Store {
    let backend = Backend::object_store(objects);
    let backend = match multipart {
        Some(m) => backend.with_multipart(m),
        None => backend,
    };
    Store::with_cache(backend, None)
}

/// Whether a backend of `kind` is configured (asked once per kind: prints `skipped`, or fails
/// under CI, if not).
fn available(kind: BackendKind) -> bool {
    static S3: OnceLock<bool> = OnceLock::new();
    static AZURE: OnceLock<bool> = OnceLock::new();
    let cell = match kind {
        BackendKind::S3 => &S3,
        BackendKind::Azure => &AZURE,
        BackendKind::Memory | BackendKind::Filesystem => return true,
    };
    *cell.get_or_init(|| runtime().block_on(make(kind)).is_some())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Pushes `data` as chunks of `sizes` (each delivered in pieces of at most `delivery` bytes)
/// and commits it; returns its digest.
async fn push_in_chunks(r: &Repository, data: &[u8], sizes: &[usize], delivery: usize) -> Digest {
    let id = r.start_upload().await.unwrap().id;
    let mut offset = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let chunk = &data[offset..offset + size];
        let status = r
            .append_upload(&id, offset as u64, in_pieces(chunk, delivery))
            .await
            .unwrap_or_else(|e| panic!("chunk {i} ({size} bytes at {offset}): {e}"));
        offset += size;
        assert_eq!(status.offset, offset as u64, "offset after chunk {i}");
    }
    assert_eq!(offset, data.len(), "the chunks cover the data");
    let digest = Digest::sha256(data);
    let info = r
        .commit_upload(&id, &digest, Some(data.len() as u64))
        .await
        .unwrap_or_else(|e| panic!("commit of {} bytes: {e}", data.len()));
    assert_eq!((info.digest, info.size), (digest, data.len() as u64));
    digest
}

/// Reads `range` of a blob (whole if `None`) and returns the bytes.
async fn read(r: &Repository, digest: &Digest, range: Option<ByteRange>) -> Vec<u8> {
    let read = r
        .read_blob(digest, range)
        .await
        .unwrap_or_else(|e| panic!("reading {digest} {range:?}: {e}"));
    let got: Vec<Bytes> = read
        .stream
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("streaming {digest} {range:?}: {e}"));
    got.concat()
}

/// Asserts that a read of `range` returned exactly those bytes of `data` (without printing
/// megabytes on a mismatch).
#[track_caller]
fn assert_bytes(got: &[u8], data: &[u8], range: Range<usize>, context: &str) {
    let want = &data[range.clone()];
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{context}: read {} bytes of {range:?}, expected {}; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

/// A blob's index, `blobs/sha256/…/segments`, read straight from the backend, and its length.
async fn index_of(b: &TestBackend, digest: &Digest) -> (Value, usize) {
    let key = KeyLayout.blob_segments(digest);
    let bytes = match b.store.get(&key).await {
        Ok(got) => got.bytes().await.unwrap(),
        Err(e) => panic!("no index at {key}: {e}"),
    };
    (serde_json::from_slice(&bytes).unwrap(), bytes.len())
}

/// Deletes everything a passing test left on a shared server (S3, Azure: the backend's own
/// prefix), so that runs do not pile up data there; a failing test leaves it to look at.
async fn clear(b: &TestBackend) {
    if b.key_prefix.is_none() {
        return;
    }
    let all = b.store.list(None).map_ok(|meta| meta.location).boxed();
    let deleted: Vec<_> = b.store.delete_stream(all).try_collect().await.unwrap();
    assert!(!deleted.is_empty(), "cleared nothing");
}

/// The sizes of the pieces an index lists, in order.
fn piece_sizes(index: &Value) -> Vec<u64> {
    index["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| s["size"].as_u64().expect("size"))
        .collect()
}

/// The keys of the objects an index lists.
fn piece_keys(index: &Value) -> BTreeSet<String> {
    let upload = index["upload"].as_str().expect("upload");
    index["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| {
            KeyLayout
                .segment(
                    upload,
                    s["seq"].as_u64().expect("seq"),
                    s["nonce"].as_str().expect("nonce"),
                )
                .to_string()
        })
        .collect()
}

/// How many of the pieces (by size, in order) overlap `range`.
fn overlapping(sizes: &[u64], range: &Range<u64>) -> u64 {
    let mut start = 0;
    let mut n = 0;
    for &size in sizes {
        let end = start + size;
        if range.start < end && start < range.end {
            n += 1;
        }
        start = end;
    }
    n
}

/// Ranges to read in a blob of `size` bytes made of pieces of `sizes`: the ones picked, the
/// first and the last byte, and the two bytes around each boundary between pieces.
fn ranges_to_read(size: u64, sizes: &[u64], picks: &[(Index, Index)]) -> Vec<Range<u64>> {
    if size == 0 {
        return vec![];
    }
    let mut ranges = vec![0..1, size - 1..size];
    for (start, len) in picks {
        let start = start.index(size as usize) as u64;
        let len = 1 + len.index((size - start) as usize) as u64;
        ranges.push(start..start + len);
    }
    let mut boundary = 0;
    for &piece in &sizes[..sizes.len().saturating_sub(1)] {
        boundary += piece;
        if boundary > 0 && boundary < size {
            ranges.push(boundary - 1..boundary + 1);
        }
    }
    ranges
}

// ---------------------------------------------------------------------------------------------
// The property

/// Pushes one chunk pattern through the object-store engine over `b` (with its
/// `MultipartStore` or without) and checks the blob and what the backend holds.
async fn check_pattern(b: TestBackend, multipart: bool, case: Case) {
    let Case {
        sizes,
        seed,
        delivery,
        ranges: picks,
    } = case;
    let total: usize = sizes.iter().sum();
    let data = pattern(seed, total);
    let parts = if multipart { b.multipart.clone() } else { None };
    let store = store_without_cache(b.store.clone(), parts);
    let r = store.repository(repo("chunks/pattern"));
    let digest = push_in_chunks(&r, &data, &sizes, delivery).await;
    let size = total as u64;

    // (a) The store that wrote it reads it back, whole and in ranges.
    assert_bytes(&read(&r, &digest, None).await, &data, 0..total, "whole");
    let (index, index_len) = index_of(&b, &digest).await;
    let pieces = piece_sizes(&index);
    let ranges = ranges_to_read(size, &pieces, &picks);
    for range in &ranges {
        let byte_range = ByteRange::Bounded {
            start: range.start,
            end_inclusive: range.end - 1,
        };
        let got = read(&r, &digest, Some(byte_range)).await;
        let context = format!("range {range:?}");
        assert_bytes(
            &got,
            &data,
            range.start as usize..range.end as usize,
            &context,
        );
    }

    // (c) Few objects: every piece of at least 5 MiB but at most 23 staged ones.
    assert_eq!(index["size"].as_u64(), Some(size), "index size");
    assert_eq!(pieces.iter().sum::<u64>(), size, "the pieces make the blob");
    assert!(
        pieces.len() as u64 <= max_pieces(size),
        "{size} bytes in {} chunks made {} objects, more than {}: {pieces:?}",
        sizes.len(),
        pieces.len(),
        max_pieces(size)
    );

    // (e) Nothing left behind: no session state, no object the index does not list.
    assert_eq!(keys(&b, "uploads").await, Vec::<String>::new(), "uploads/");
    let listed: BTreeSet<String> = keys(&b, "segments").await.into_iter().collect();
    assert_eq!(listed, piece_keys(&index), "segments/ against the index");

    // (b) A restarted store (nothing shared but the backend) reads it back, and (d) at a cost
    // bounded by its objects: the index, one GET per object read, two HEADs, no other byte.
    let counting = b.counting();
    let parts = if multipart {
        counting.multipart_store()
    } else {
        None
    };
    let restarted = store_without_cache(counting.clone(), parts);
    let r = restarted.repository(repo("chunks/pattern"));
    let whole = (None, 0..size);
    let ranged = ranges.iter().map(|range| {
        let byte_range = ByteRange::Bounded {
            start: range.start,
            end_inclusive: range.end - 1,
        };
        (Some(byte_range), range.clone())
    });
    for (byte_range, range) in std::iter::once(whole).chain(ranged) {
        counting.reset();
        let got = read(&r, &digest, byte_range).await;
        let context = format!("after a restart, range {range:?}");
        assert_bytes(
            &got,
            &data,
            range.start as usize..range.end as usize,
            &context,
        );
        let c = counting.snapshot();
        let objects = overlapping(&pieces, &range);
        assert!(
            c.get + c.get_range <= objects + 1 && c.head <= 2 && c.reads() <= objects + 3,
            "{context}: {c:?} for {objects} of {} objects",
            pieces.len()
        );
        assert!(
            c.bytes_read <= range.end - range.start + index_len as u64,
            "{context}: {} bytes read for {} and an index of {index_len}",
            c.bytes_read,
            range.end - range.start
        );
        assert_eq!(c.writes(), 0, "{context}: a read wrote: {c:?}");
    }
    clear(&b).await;
}

/// Runs one case on a fresh backend of `kind`, on a runtime of its own (proptest is sync).
fn check(kind: BackendKind, multipart: bool, case: Case) {
    runtime().block_on(async {
        let b = make(kind).await.expect("backend configured");
        check_pattern(b, multipart, case).await;
    });
}

proptest! {
    #![proptest_config(config(24, 256, 11))]

    #[test]
    fn memory_any_chunk_pattern_commits_to_a_blob_of_few_objects_that_reads_back(
        case in case(3000)
    ) {
        check(BackendKind::Memory, true, case);
    }

    #[test]
    fn memory_without_multipart_any_chunk_pattern_commits_to_a_blob_of_few_objects_that_reads_back(
        case in case(3000)
    ) {
        check(BackendKind::Memory, false, case);
    }
}

proptest! {
    #![proptest_config(config(8, 32, 12))]

    #[test]
    fn s3_any_chunk_pattern_commits_to_a_blob_of_few_objects_that_reads_back(case in case(600)) {
        if available(BackendKind::S3) {
            check(BackendKind::S3, true, case);
        }
    }
}

proptest! {
    #![proptest_config(config(3, 32, 13))]

    #[test]
    fn azure_any_chunk_pattern_commits_to_a_blob_of_few_objects_that_reads_back(
        case in case(600)
    ) {
        if available(BackendKind::Azure) {
            check(BackendKind::Azure, true, case);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The finding: 2,000 PATCHes of 1 KiB

const FINDING_CHUNKS: usize = 2000;

fn finding_data() -> Vec<u8> {
    pattern(2000, FINDING_CHUNKS * KIB)
}

/// 2,000 appends of 1 KiB, committed: stat (HEAD) and read (GET) answer, byte for byte, from
/// the store that wrote it and from a restarted one; and pushing the same digest again (in
/// another repository, streamed in one request) succeeds and reads back there. The three
/// requests the finding saw fail, on the blob it built (built once: on S3 it takes 2,000
/// round trips).
async fn two_thousand_one_kib_chunks_commit_to_a_blob_that_reads_back(b: TestBackend) {
    let data = finding_data();
    let store = store_on(&b);
    let r = store.repository(repo("finding/chunks"));
    let digest = push_in_chunks(&r, &data, &[KIB; FINDING_CHUNKS], KIB).await;
    for (label, store) in [("writer", store.clone()), ("restarted", store_on(&b))] {
        let r = store.repository(repo("finding/chunks"));
        let info = r
            .stat_blob(&digest)
            .await
            .unwrap_or_else(|e| panic!("{label}: stat: {e}"));
        assert_eq!(info.size, data.len() as u64, "{label}: size");
        let got = read(&r, &digest, None).await;
        assert_bytes(&got, &data, 0..data.len(), label);
    }
    let again = store.repository(repo("finding/again"));
    let info = again
        .put_blob_stream(&digest, Some(data.len() as u64), in_pieces(&data, 64 * KIB))
        .await
        .unwrap_or_else(|e| panic!("pushing {digest} again: {e}"));
    assert_eq!((info.digest, info.size), (digest, data.len() as u64));
    let got = read(&again, &digest, None).await;
    assert_bytes(&got, &data, 0..data.len(), "pushed again");
    clear(&b).await;
}

backend_tests!(two_thousand_one_kib_chunks_commit_to_a_blob_that_reads_back);

// ---------------------------------------------------------------------------------------------
// The finding over HTTP, on S3

fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// The finding as a client sees it: 2,000 PATCHes of 1 KiB to a server on S3, then the PUT
/// answers 201, HEAD and GET of the digest answer 200 with every byte, and pushing the same
/// digest again (to another repository) answers 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_two_thousand_one_kib_patches_give_a_blob_that_head_get_and_a_second_push_serve() {
    use reqwest::{StatusCode, header};
    // Skips (or fails under CI) as the other S3 tests do.
    let Some(b) = make(BackendKind::S3).await else {
        return;
    };
    let server = S3Server::start(&b);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let data = finding_data();
    let digest = Digest::sha256(&data);

    let started = client
        .post(server.url("/v2/finding/http/blobs/uploads/"))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED, "POST");
    let mut location = started.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    for (i, chunk) in data.chunks(KIB).enumerate() {
        let start = i * KIB;
        let response = client
            .patch(server.url(&location))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(
                header::CONTENT_RANGE,
                format!("{start}-{}", start + chunk.len() - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "PATCH {i}");
        location = response.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
    }
    let put = client
        .put(server.url(&with_digest(&location, &digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED, "PUT ?digest");

    let blob = server.url(&format!("/v2/finding/http/blobs/{digest}"));
    let head = client.head(&blob).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK, "HEAD");
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        data.len().to_string().as_str(),
        "HEAD Content-Length"
    );
    let get = client.get(&blob).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK, "GET");
    let body = get.bytes().await.unwrap();
    assert_bytes(&body, &data, 0..data.len(), "GET");

    let again = client
        .post(server.url(&format!("/v2/finding/again/blobs/uploads/?digest={digest}")))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::CREATED,
        "pushing the digest again"
    );
    drop(server);
    clear(&b).await;
}
