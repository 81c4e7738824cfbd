//! Upload sessions against a plain model: random sequences of start, append (at the right or a
//! wrong offset, chunks of 0 B to 5.5 MiB), restart (a new store over the same backend),
//! status, commit (right or wrong digest), cancel and purge, checked step by step against a
//! map of session → bytes, then for leaks and copies at the end.
//!
//! Cases: 32 on memory and filesystem, 8 on S3 and Azure; `PROPTEST_CASES` overrides both.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use layerstore::upload::{ChunkStream, PurgeOptions, PurgeReport};
use layerstore::{Digest, Error, ErrorKind, RangeError, RepositoryName, UploadId};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use proptest::prelude::*;
use proptest::sample::Index;

const MIB: usize = 1024 * 1024;

#[derive(Debug, Clone)]
enum Op {
    Start,
    /// Starts a session and appends, in one chunk, what `of` has received: another client
    /// pushing the same content, so that commits dedupe.
    StartSameContent {
        of: Index,
    },
    Append {
        session: Index,
        right_offset: bool,
        size: usize,
        /// Picks the bytes; few values, so that sessions often upload the same content.
        fill: u8,
    },
    /// Drops the store and builds a new one over the same backend (a restarted process).
    Restart,
    Status {
        session: Index,
    },
    Commit {
        session: Index,
        right_digest: bool,
    },
    Cancel {
        session: Index,
    },
    Purge {
        dry_run: bool,
        /// `older_than` zero (everything is old enough); otherwise a day (nothing is).
        everything: bool,
    },
}

fn chunk_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => Just(0),
        4 => Just(1),
        5 => Just(1024),
        3 => Just(100_000),
        1 => Just(5 * MIB + MIB / 2),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Start),
        3 => any::<Index>().prop_map(|of| Op::StartSameContent { of }),
        10 => (any::<Index>(), prop::bool::weighted(0.8), chunk_size(), 0u8..4).prop_map(
            |(session, right_offset, size, fill)| Op::Append { session, right_offset, size, fill }
        ),
        1 => Just(Op::Restart),
        2 => any::<Index>().prop_map(|session| Op::Status { session }),
        5 => (any::<Index>(), prop::bool::weighted(0.7))
            .prop_map(|(session, right_digest)| Op::Commit { session, right_digest }),
        1 => any::<Index>().prop_map(|session| Op::Cancel { session }),
        1 => (any::<bool>(), prop::bool::weighted(0.25))
            .prop_map(|(dry_run, everything)| Op::Purge { dry_run, everything }),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..50)
}

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        // Every case builds a backend and moves real bytes; shrinking is bounded accordingly.
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

#[track_caller]
fn expect_kind<T: std::fmt::Debug>(result: layerstore::Result<T>, kind: ErrorKind, ctx: &str) {
    match result {
        Err(e) => assert_eq!(e.kind(), kind, "{ctx}: {e}"),
        Ok(v) => panic!("{ctx}: expected {kind:?}, got Ok({v:?})"),
    }
}

/// One session of the model.
struct Session {
    id: UploadId,
    repo: RepositoryName,
    /// What it holds; `None` once committed, cancelled or purged.
    data: Option<Vec<u8>>,
    /// What it received, kept after it ended.
    received: Vec<u8>,
}

async fn json_at(b: &TestBackend, key: &str) -> serde_json::Value {
    let bytes = b
        .store
        .get(&Path::from(key))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn segment_keys(upload: &str, segments: &serde_json::Value) -> Vec<String> {
    segments
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        // An open multipart upload is no object yet.
        .filter(|s| s.get("multipart").is_none())
        .map(|s| {
            format!(
                "segments/{upload}/{:010}-{}",
                s["seq"].as_u64().unwrap(),
                s["nonce"].as_str().unwrap()
            )
        })
        .collect()
}

async fn run(kind: BackendKind, ops: Vec<Op>) {
    let b = make(kind).await.expect("backend configured");
    let mut store = store_on(&b);
    let repos = [
        RepositoryName::parse("model/a").unwrap(),
        RepositoryName::parse("model/b").unwrap(),
    ];
    let mut sessions: Vec<Session> = vec![];
    // (repository, digest) → bytes, for every commit.
    let mut linked: HashMap<(RepositoryName, Digest), Vec<u8>> = HashMap::new();

    for (step, op) in ops.iter().enumerate() {
        let ctx = format!("step {step}: {op:?}");
        let pick = |i: &Index| (!sessions.is_empty()).then(|| i.index(sessions.len()));
        match op {
            Op::Start => {
                let repo = repos[sessions.len() % 2].clone();
                let status = store.repository(repo.clone()).start_upload().await.unwrap();
                assert_eq!((status.offset, &status.repository), (0, &repo), "{ctx}");
                sessions.push(Session {
                    id: status.id,
                    repo,
                    data: Some(vec![]),
                    received: vec![],
                });
            }
            Op::StartSameContent { of } => {
                let Some(i) = pick(of) else { continue };
                let content = sessions[i].received.clone();
                let repo = repos[sessions.len() % 2].clone();
                let r = store.repository(repo.clone());
                let id = r.start_upload().await.unwrap().id;
                let status = r
                    .append_upload(&id, 0, stream_of(&content))
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(status.offset, content.len() as u64, "{ctx}");
                sessions.push(Session {
                    id,
                    repo,
                    data: Some(content.clone()),
                    received: content,
                });
            }
            Op::Append {
                session,
                right_offset,
                size,
                fill,
            } => {
                let Some(i) = pick(session) else { continue };
                let s = &mut sessions[i];
                let r = store.repository(s.repo.clone());
                let chunk = pattern((u64::from(*fill) << 32) | *size as u64, *size);
                let Some(data) = &mut s.data else {
                    let result = r.append_upload(&s.id, 0, stream_of(&chunk)).await;
                    expect_kind(result, ErrorKind::BlobUploadUnknown, &ctx);
                    continue;
                };
                let len = data.len() as u64;
                if *right_offset {
                    let status = r
                        .append_upload(&s.id, len, stream_of(&chunk))
                        .await
                        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    data.extend_from_slice(&chunk);
                    s.received.extend_from_slice(&chunk);
                    assert_eq!(status.offset, data.len() as u64, "{ctx}");
                } else {
                    let wrong = if len > 0 && fill % 2 == 0 {
                        len - 1
                    } else {
                        len + 1
                    };
                    match r.append_upload(&s.id, wrong, stream_of(&chunk)).await {
                        Err(Error::RangeInvalid(RangeError::UploadOffset {
                            current,
                            requested,
                        })) => {
                            assert_eq!((current, requested), (len, wrong), "{ctx}");
                        }
                        other => panic!("{ctx}: expected an offset refusal, got {other:?}"),
                    }
                }
            }
            Op::Restart => store = store_on(&b),
            Op::Status { session } => {
                let Some(i) = pick(session) else { continue };
                let s = &sessions[i];
                let status = store.repository(s.repo.clone()).upload_status(&s.id).await;
                match &s.data {
                    Some(data) => {
                        let status = status.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                        assert_eq!(status.offset, data.len() as u64, "{ctx}");
                        assert_eq!(status.repository, s.repo, "{ctx}");
                    }
                    None => expect_kind(status, ErrorKind::BlobUploadUnknown, &ctx),
                }
            }
            Op::Commit {
                session,
                right_digest,
            } => {
                let Some(i) = pick(session) else { continue };
                let s = &mut sessions[i];
                let r = store.repository(s.repo.clone());
                let Some(data) = &s.data else {
                    let result = r.commit_upload(&s.id, &Digest::sha256(b""), None).await;
                    expect_kind(result, ErrorKind::BlobUploadUnknown, &ctx);
                    continue;
                };
                if *right_digest {
                    let digest = Digest::sha256(data);
                    let info = r
                        .commit_upload(&s.id, &digest, Some(data.len() as u64))
                        .await
                        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    assert_eq!((info.digest, info.size), (digest, data.len() as u64));
                    linked.insert((s.repo.clone(), digest), s.data.take().unwrap());
                } else {
                    let wrong = Digest::sha256(&[data.as_slice(), b"?"].concat());
                    let result = r.commit_upload(&s.id, &wrong, None).await;
                    expect_kind(result, ErrorKind::DigestInvalid, &ctx);
                    expect_kind(r.stat_blob(&wrong).await, ErrorKind::BlobUnknown, &ctx);
                }
            }
            Op::Cancel { session } => {
                let Some(i) = pick(session) else { continue };
                let s = &mut sessions[i];
                let result = store.repository(s.repo.clone()).cancel_upload(&s.id).await;
                match s.data.take() {
                    Some(_) => result.unwrap_or_else(|e| panic!("{ctx}: {e}")),
                    None => expect_kind(result, ErrorKind::BlobUploadUnknown, &ctx),
                }
            }
            Op::Purge {
                dry_run,
                everything,
            } => {
                let live: Vec<&Vec<u8>> = sessions.iter().filter_map(|s| s.data.as_ref()).collect();
                let older_than = if *everything {
                    // Every session's last activity must lie strictly in the past.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Duration::ZERO
                } else {
                    Duration::from_secs(24 * 3600)
                };
                let report = store
                    .purge_uploads(PurgeOptions {
                        older_than,
                        dry_run: *dry_run,
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let expected = if *everything {
                    PurgeReport {
                        scanned: live.len() as u64,
                        purged: live.len() as u64,
                        bytes_freed: live.iter().map(|d| d.len() as u64).sum(),
                        errors: vec![],
                    }
                } else {
                    PurgeReport {
                        scanned: live.len() as u64,
                        ..PurgeReport::default()
                    }
                };
                assert_eq!(report, expected, "{ctx}");
                if *everything && !dry_run {
                    for s in &mut sessions {
                        s.data = None;
                    }
                }
            }
        }
    }

    // Every commit reads back, in its repository, from a fresh store.
    let store = store_on(&b);
    for ((repo, digest), data) in &linked {
        let read = store.repository(repo.clone()).read_blob(digest, None).await;
        let read = read.unwrap_or_else(|e| panic!("end: {repo} {digest}: {e}"));
        let got: Vec<Bytes> = read.stream.try_collect().await.unwrap();
        assert!(got.concat() == *data, "end: {repo} {digest}: wrong bytes");
    }
    // One copy per distinct content.
    let digests: BTreeSet<&Digest> = linked.keys().map(|(_, d)| d).collect();
    let blob_objects = keys(&b, "blobs").await;
    assert_eq!(blob_objects.len(), digests.len(), "end: {blob_objects:?}");
    // Exactly the live sessions have state; nothing else is left under uploads/.
    let live: BTreeSet<String> = sessions
        .iter()
        .filter(|s| s.data.is_some())
        .map(|s| s.id.to_string())
        .collect();
    let staged: BTreeSet<String> = keys(&b, "uploads")
        .await
        .iter()
        .map(|k| k.split('/').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(staged, live, "end: sessions under uploads/");
    // No segment leaks: each one belongs to a live session or a published blob, and each one
    // they list exists.
    let mut referenced = BTreeSet::new();
    for key in blob_objects.iter().filter(|k| k.ends_with("/segments")) {
        let index = json_at(&b, key).await;
        let upload = index["upload"].as_str().unwrap();
        referenced.extend(segment_keys(upload, &index["segments"]));
    }
    if b.kind != BackendKind::Filesystem {
        for id in &live {
            let state = json_at(&b, &format!("uploads/{id}/state")).await;
            referenced.extend(segment_keys(id, &state["segments"]));
        }
    }
    let segments: BTreeSet<String> = keys(&b, "segments").await.into_iter().collect();
    assert_eq!(segments, referenced, "end: segment objects");
}

/// Runs `ops` on a fresh backend of `kind`, on a runtime of its own (proptest is sync).
fn check(kind: BackendKind, ops: Vec<Op>) {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run(kind, ops));
}

/// Whether the backend is configured (asked once per kind: prints `skipped`, or fails under
/// CI, if not).
fn available(kind: BackendKind) -> bool {
    static S3: OnceLock<bool> = OnceLock::new();
    static AZURE: OnceLock<bool> = OnceLock::new();
    let cell = match kind {
        BackendKind::S3 => &S3,
        BackendKind::Azure => &AZURE,
        BackendKind::Memory | BackendKind::Filesystem => return true,
    };
    *cell.get_or_init(|| {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(make(kind))
            .is_some()
    })
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn memory_upload_sessions_behave_like_the_model(ops in ops()) {
        check(BackendKind::Memory, ops);
    }

    #[test]
    fn filesystem_upload_sessions_behave_like_the_model(ops in ops()) {
        check(BackendKind::Filesystem, ops);
    }
}

proptest! {
    #![proptest_config(config(8))]

    #[test]
    fn s3_upload_sessions_behave_like_the_model(ops in ops()) {
        if available(BackendKind::S3) {
            check(BackendKind::S3, ops);
        }
    }

    #[test]
    fn azure_upload_sessions_behave_like_the_model(ops in ops()) {
        if available(BackendKind::Azure) {
            check(BackendKind::Azure, ops);
        }
    }
}

fn stream_of(data: &[u8]) -> ChunkStream<'static> {
    in_pieces(data, 256 * 1024)
}
