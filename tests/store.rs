//! The backend test suite of the store: every test runs on memory, filesystem, S3 and Azure.

mod common;

use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use layerstore::manifest::media_type;
use layerstore::{ByteRange, Digest, ErrorKind, Reference, RepositoryName, Store, Tag};
use serde_json::json;

async fn read_all(store: &Store, name: &str, digest: &Digest, range: Option<ByteRange>) -> Vec<u8> {
    let read = store
        .repository(repo(name))
        .read_blob(digest, range)
        .await
        .unwrap();
    let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    chunks.concat()
}

// ---------------------------------------------------------------------------------------
// Blobs

async fn blob_put_then_read_returns_the_same_bytes(b: TestBackend) {
    let store = store_on(&b);
    let data = Bytes::from(vec![7u8; 100_000]);
    let d = Digest::sha256(&data);
    let info = store
        .repository(repo("a/b"))
        .put_blob(&d, data.clone())
        .await
        .unwrap();
    assert_eq!((info.digest, info.size), (d, 100_000));
    assert_eq!(read_all(&store, "a/b", &d, None).await, data);
    let stat = store.repository(repo("a/b")).stat_blob(&d).await.unwrap();
    assert_eq!(stat, info);
}

async fn blob_put_with_wrong_digest_is_refused_and_writes_nothing(b: TestBackend) {
    let store = store_on(&b);
    let claimed = Digest::sha256(b"other");
    let err = store
        .repository(repo("a"))
        .put_blob(&claimed, Bytes::from_static(b"data"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DigestInvalid);
    assert_eq!(keys_of(b.store.as_ref(), "").await, Vec::<String>::new());
}

async fn blob_bytes_are_stored_once_across_repositories_and_pushes(b: TestBackend) {
    let store = store_on(&b);
    let data = Bytes::from_static(b"shared layer");
    let d = Digest::sha256(&data);
    for name in ["one", "two", "three/x", "one"] {
        store
            .repository(repo(name))
            .put_blob(&d, data.clone())
            .await
            .unwrap();
    }
    assert_eq!(keys_of(b.store.as_ref(), "blobs").await.len(), 1);
    for name in ["one", "two", "three/x"] {
        assert!(store.repository(repo(name)).blob_exists(&d).await.unwrap());
    }
}

async fn blob_is_invisible_in_a_repository_it_is_not_linked_to(b: TestBackend) {
    let store = store_on(&b);
    let data = Bytes::from_static(b"private");
    let d = Digest::sha256(&data);
    store
        .repository(repo("mine"))
        .put_blob(&d, data)
        .await
        .unwrap();
    let other = store.repository(repo("theirs"));
    assert!(!other.blob_exists(&d).await.unwrap());
    assert_eq!(
        other.stat_blob(&d).await.unwrap_err().kind(),
        ErrorKind::BlobUnknown
    );
    assert_eq!(
        other.read_blob(&d, None).await.unwrap_err().kind(),
        ErrorKind::BlobUnknown
    );
}

async fn blob_range_reads_return_exactly_the_requested_bytes(b: TestBackend) {
    let store = store_on(&b);
    let data: Bytes = (0..=255u8).cycle().take(10_000).collect::<Vec<_>>().into();
    let d = Digest::sha256(&data);
    store
        .repository(repo("r"))
        .put_blob(&d, data.clone())
        .await
        .unwrap();
    let cases = [
        (
            ByteRange::Bounded {
                start: 10,
                end_inclusive: 19,
            },
            10..20,
        ),
        (ByteRange::From(9_990), 9_990..10_000),
        (ByteRange::Suffix(5), 9_995..10_000),
        (
            ByteRange::Bounded {
                start: 0,
                end_inclusive: 99_999,
            },
            0..10_000,
        ),
    ];
    for (range, expected) in cases {
        let read = store
            .repository(repo("r"))
            .read_blob(&d, Some(range))
            .await
            .unwrap();
        assert_eq!(read.range, expected, "{range:?}");
        let got: Vec<Bytes> = read.stream.try_collect().await.unwrap();
        assert_eq!(
            got.concat(),
            data[expected.start as usize..expected.end as usize].to_vec(),
            "{range:?}"
        );
    }
}

async fn blob_range_outside_the_blob_is_range_invalid(b: TestBackend) {
    let store = store_on(&b);
    let data = Bytes::from_static(b"0123456789");
    let d = Digest::sha256(&data);
    let r = store.repository(repo("r"));
    r.put_blob(&d, data).await.unwrap();
    let err = r
        .read_blob(&d, Some(ByteRange::From(10)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RangeInvalid);
}

async fn blob_mount_links_from_another_repository_without_copying_bytes(b: TestBackend) {
    let store = store_on(&b);
    let data = Bytes::from_static(b"mount me");
    let d = Digest::sha256(&data);
    store
        .repository(repo("src"))
        .put_blob(&d, data.clone())
        .await
        .unwrap();
    let dst = store.repository(repo("dst"));
    assert!(dst.mount_blob(&repo("src"), &d).await.unwrap());
    assert_eq!(read_all(&store, "dst", &d, None).await, data);
    assert_eq!(keys_of(b.store.as_ref(), "blobs").await.len(), 1);
}

async fn blob_mount_from_a_repository_without_the_blob_mounts_nothing(b: TestBackend) {
    let store = store_on(&b);
    let data = Bytes::from_static(b"elsewhere");
    let d = Digest::sha256(&data);
    store
        .repository(repo("holder"))
        .put_blob(&d, data)
        .await
        .unwrap();
    let dst = store.repository(repo("dst"));
    assert!(!dst.mount_blob(&repo("empty"), &d).await.unwrap());
    assert!(!dst.blob_exists(&d).await.unwrap());
}

async fn blob_unlink_hides_it_from_that_repository_only(b: TestBackend) {
    let store = store_on(&b);
    let data = Bytes::from_static(b"two homes");
    let d = Digest::sha256(&data);
    for name in ["a", "b"] {
        store
            .repository(repo(name))
            .put_blob(&d, data.clone())
            .await
            .unwrap();
    }
    store.repository(repo("a")).unlink_blob(&d).await.unwrap();
    assert!(!store.repository(repo("a")).blob_exists(&d).await.unwrap());
    assert_eq!(read_all(&store, "b", &d, None).await, data);
    let again = store
        .repository(repo("a"))
        .unlink_blob(&d)
        .await
        .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::BlobUnknown);
}

async fn concurrent_puts_of_the_same_blob_both_succeed_and_leave_one_copy(b: TestBackend) {
    let store = store_on(&b);
    let data = Bytes::from(vec![42u8; 3 << 20]);
    let d = Digest::sha256(&data);
    let puts = (0..4).map(|i| {
        let r = store.repository(repo(&format!("c{}", i % 2)));
        let data = data.clone();
        async move { r.put_blob(&d, data).await }
    });
    for result in futures::future::join_all(puts).await {
        result.unwrap();
    }
    assert_eq!(keys_of(b.store.as_ref(), "blobs").await.len(), 1);
    assert_eq!(read_all(&store, "c1", &d, None).await, data);
}

async fn reading_a_large_blob_streams_it_in_pieces(b: TestBackend) {
    if b.kind == BackendKind::Memory {
        return; // the in-memory backend holds the blob in memory anyway
    }
    let store = store_on(&b);
    let data = Bytes::from(vec![1u8; 24 << 20]);
    let d = Digest::sha256(&data);
    store
        .repository(repo("big"))
        .put_blob(&d, data)
        .await
        .unwrap();
    let read = store
        .repository(repo("big"))
        .read_blob(&d, None)
        .await
        .unwrap();
    let sizes: Vec<usize> = read.stream.map_ok(|c| c.len()).try_collect().await.unwrap();
    assert_eq!(sizes.iter().sum::<usize>(), 24 << 20);
    assert!(
        sizes.len() > 1,
        "one chunk of {} bytes: not streamed",
        sizes[0]
    );
    assert!(*sizes.iter().max().unwrap() <= 16 << 20);
}

// ---------------------------------------------------------------------------------------
// Manifests and tags

async fn manifest_put_by_tag_is_readable_by_tag_and_digest_as_the_exact_bytes(b: TestBackend) {
    let store = store_on(&b);
    let (bytes, _) = push_image(&store, "app", "m1", 2).await;
    let r = store.repository(repo("app"));
    let put = r
        .put_manifest(&tag("v1"), bytes.clone(), Some(media_type::OCI_MANIFEST))
        .await
        .unwrap();
    assert_eq!(put.digest, Digest::sha256(&bytes));
    assert_eq!(put.subject, None);
    for reference in [tag("v1"), Reference::Digest(put.digest)] {
        let got = r.get_manifest(&reference).await.unwrap();
        assert_eq!(got.bytes, bytes);
        assert_eq!(got.info.digest, put.digest);
        assert_eq!(got.info.media_type, media_type::OCI_MANIFEST);
        assert_eq!(got.info.size, bytes.len() as u64);
        assert_eq!(r.stat_manifest(&reference).await.unwrap(), got.info);
    }
}

async fn manifest_put_with_unlinked_blobs_names_each_one_and_writes_nothing(b: TestBackend) {
    let store = store_on(&b);
    let (bytes, digests) = push_image(&store, "has", "m2", 2).await;
    let before = keys_of(b.store.as_ref(), "").await;
    let err = store
        .repository(repo("lacks"))
        .put_manifest(&tag("v1"), bytes, Some(media_type::OCI_MANIFEST))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ManifestBlobUnknown);
    match err {
        layerstore::Error::ManifestBlobUnknown { digests: missing } => assert_eq!(missing, digests),
        other => panic!("{other}"),
    }
    assert_eq!(keys_of(b.store.as_ref(), "").await, before);
}

async fn index_put_requires_every_child_manifest_in_the_repository(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("multi"));
    let (amd64, _) = push_image(&store, "multi", "amd64", 1).await;
    let (arm64, _) = push_image(&store, "multi", "arm64", 1).await;
    let amd64_digest = r
        .put_manifest(
            &Reference::Digest(Digest::sha256(&amd64)),
            amd64.clone(),
            Some(media_type::OCI_MANIFEST),
        )
        .await
        .unwrap()
        .digest;
    let arm64_digest = Digest::sha256(&arm64);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": [
            {"mediaType": media_type::OCI_MANIFEST, "digest": amd64_digest.to_string(), "size": amd64.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": media_type::OCI_MANIFEST, "digest": arm64_digest.to_string(), "size": arm64.len(), "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    });
    let index = Bytes::from(serde_json::to_vec(&index).unwrap());
    let err = r
        .put_manifest(&tag("latest"), index.clone(), Some(media_type::OCI_INDEX))
        .await
        .unwrap_err();
    match err {
        layerstore::Error::ManifestBlobUnknown { digests } => {
            assert_eq!(digests, vec![arm64_digest])
        }
        other => panic!("{other}"),
    }
    r.put_manifest(
        &Reference::Digest(arm64_digest),
        arm64,
        Some(media_type::OCI_MANIFEST),
    )
    .await
    .unwrap();
    r.put_manifest(&tag("latest"), index.clone(), Some(media_type::OCI_INDEX))
        .await
        .unwrap();
    assert_eq!(r.get_manifest(&tag("latest")).await.unwrap().bytes, index);
}

async fn manifest_put_by_a_digest_that_does_not_match_is_digest_invalid(b: TestBackend) {
    let store = store_on(&b);
    let (bytes, _) = push_image(&store, "app", "m3", 1).await;
    let wrong = Digest::sha256(b"not the manifest");
    let err = store
        .repository(repo("app"))
        .put_manifest(
            &Reference::Digest(wrong),
            bytes,
            Some(media_type::OCI_MANIFEST),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DigestInvalid);
    let unknown = store
        .repository(repo("app"))
        .stat_manifest(&Reference::Digest(wrong))
        .await;
    assert_eq!(unknown.unwrap_err().kind(), ErrorKind::ManifestUnknown);
}

async fn invalid_manifest_is_refused_and_writes_nothing(b: TestBackend) {
    let store = store_on(&b);
    let err = store
        .repository(repo("app"))
        .put_manifest(
            &tag("v1"),
            Bytes::from_static(b"{\"schemaVersion\": 1}"),
            Some(media_type::OCI_MANIFEST),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ManifestInvalid);
    assert_eq!(keys_of(b.store.as_ref(), "").await, Vec::<String>::new());
}

async fn retagging_points_the_tag_at_the_new_manifest(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let (first, _) = push_image(&store, "app", "first", 1).await;
    let (second, _) = push_image(&store, "app", "second", 1).await;
    r.put_manifest(
        &tag("latest"),
        first.clone(),
        Some(media_type::OCI_MANIFEST),
    )
    .await
    .unwrap();
    r.put_manifest(
        &tag("latest"),
        second.clone(),
        Some(media_type::OCI_MANIFEST),
    )
    .await
    .unwrap();
    assert_eq!(r.get_manifest(&tag("latest")).await.unwrap().bytes, second);
    // The first manifest stays addressable by digest.
    let first_ref = Reference::Digest(Digest::sha256(&first));
    assert_eq!(r.get_manifest(&first_ref).await.unwrap().bytes, first);
}

async fn readers_racing_a_retag_see_the_old_or_the_new_manifest_whole(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("race"));
    let (one, _) = push_image(&store, "race", "one", 1).await;
    let (two, _) = push_image(&store, "race", "two", 1).await;
    r.put_manifest(&tag("t"), one.clone(), Some(media_type::OCI_MANIFEST))
        .await
        .unwrap();
    let writer = {
        let r = r.clone();
        let (one, two) = (one.clone(), two.clone());
        tokio::spawn(async move {
            for i in 0..20 {
                let m = if i % 2 == 0 { two.clone() } else { one.clone() };
                r.put_manifest(&tag("t"), m, Some(media_type::OCI_MANIFEST))
                    .await
                    .unwrap();
            }
        })
    };
    for _ in 0..40 {
        let got = r.get_manifest(&tag("t")).await.unwrap();
        assert!(got.bytes == one || got.bytes == two);
        assert_eq!(got.info.digest, Digest::sha256(&got.bytes));
    }
    writer.await.unwrap();
}

async fn deleting_a_manifest_removes_it_and_the_tags_pointing_at_it(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let (keep, _) = push_image(&store, "app", "keep", 1).await;
    let (gone, _) = push_image(&store, "app", "gone", 1).await;
    r.put_manifest(&tag("keep"), keep, Some(media_type::OCI_MANIFEST))
        .await
        .unwrap();
    let put = r
        .put_manifest(&tag("gone1"), gone.clone(), Some(media_type::OCI_MANIFEST))
        .await
        .unwrap();
    r.put_manifest(&tag("gone2"), gone, Some(media_type::OCI_MANIFEST))
        .await
        .unwrap();
    r.delete_manifest(&put.digest).await.unwrap();
    for reference in [Reference::Digest(put.digest), tag("gone1"), tag("gone2")] {
        assert_eq!(
            r.get_manifest(&reference).await.unwrap_err().kind(),
            ErrorKind::ManifestUnknown
        );
    }
    let tags = r.tags(None, None).await.unwrap();
    assert_eq!(tags.items, vec![Tag::parse("keep").unwrap()]);
    let again = r.delete_manifest(&put.digest).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::ManifestUnknown);
}

async fn deleting_a_tag_keeps_the_manifest(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let (m, _) = push_image(&store, "app", "kept", 1).await;
    let put = r
        .put_manifest(&tag("v1"), m.clone(), Some(media_type::OCI_MANIFEST))
        .await
        .unwrap();
    r.delete_tag(&Tag::parse("v1").unwrap()).await.unwrap();
    assert_eq!(
        r.get_manifest(&tag("v1")).await.unwrap_err().kind(),
        ErrorKind::ManifestUnknown
    );
    assert_eq!(
        r.get_manifest(&Reference::Digest(put.digest))
            .await
            .unwrap()
            .bytes,
        m
    );
    let again = r.delete_tag(&Tag::parse("v1").unwrap()).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::ManifestUnknown);
}

async fn tags_list_in_lexical_order_with_n_and_last(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let (m, _) = push_image(&store, "app", "tags", 1).await;
    for t in ["v2", "V1", "latest", "v10", "_x", "a.b-c"] {
        r.put_manifest(&tag(t), m.clone(), Some(media_type::OCI_MANIFEST))
            .await
            .unwrap();
    }
    let names =
        |p: layerstore::Paginated<Tag>| p.items.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let all = r.tags(None, None).await.unwrap();
    assert!(!all.truncated);
    assert_eq!(names(all), ["V1", "_x", "a.b-c", "latest", "v10", "v2"]);
    let first = r.tags(Some(2), None).await.unwrap();
    assert!(first.truncated);
    assert_eq!(names(first), ["V1", "_x"]);
    let next = r.tags(Some(3), Some("_x")).await.unwrap();
    assert!(next.truncated);
    assert_eq!(names(next), ["a.b-c", "latest", "v10"]);
    let last = r.tags(Some(3), Some("v10")).await.unwrap();
    assert!(!last.truncated);
    assert_eq!(names(last), ["v2"]);
}

async fn tags_of_a_repository_never_written_is_name_unknown(b: TestBackend) {
    let store = store_on(&b);
    let err = store
        .repository(repo("nothing/here"))
        .tags(None, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NameUnknown);
}

// ---------------------------------------------------------------------------------------
// Referrers and catalog

async fn referrers_list_each_manifest_with_that_subject(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let (image, _) = push_image(&store, "app", "subject", 1).await;
    let subject = r
        .put_manifest(&tag("v1"), image.clone(), Some(media_type::OCI_MANIFEST))
        .await
        .unwrap()
        .digest;
    let (sig, sig_digest) = push_referrer(
        &store,
        "app",
        &subject,
        image.len(),
        "application/vnd.example.signature",
        "signed",
    )
    .await;
    let (sbom, sbom_digest) = push_referrer(
        &store,
        "app",
        &subject,
        image.len(),
        "application/spdx+json",
        "sbom",
    )
    .await;
    let referrers = r.referrers(&subject, None).await.unwrap();
    assert!(!referrers.filtered);
    let mut expected = vec![
        (
            sig_digest,
            sig.len(),
            "application/vnd.example.signature",
            "signed",
        ),
        (sbom_digest, sbom.len(), "application/spdx+json", "sbom"),
    ];
    expected.sort_by_key(|e| e.0);
    assert_eq!(referrers.manifests.len(), 2);
    for (d, (digest, size, artifact_type, note)) in referrers.manifests.iter().zip(expected) {
        assert_eq!(d.digest, digest);
        assert_eq!(d.size, size as u64);
        assert_eq!(d.media_type, media_type::OCI_MANIFEST);
        assert_eq!(d.artifact_type.as_deref(), Some(artifact_type));
        assert_eq!(d.annotations.as_ref().unwrap()["note"], note);
    }
    let index: serde_json::Value = serde_json::from_slice(&referrers.to_index_json()).unwrap();
    assert_eq!(index["mediaType"], media_type::OCI_INDEX);
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
}

async fn referrers_filter_by_artifact_type(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let subject = Digest::sha256(b"a subject not pushed yet");
    push_referrer(
        &store,
        "app",
        &subject,
        10,
        "application/vnd.example.signature",
        "s",
    )
    .await;
    let (_, sbom) = push_referrer(&store, "app", &subject, 10, "application/spdx+json", "b").await;
    let filtered = r
        .referrers(&subject, Some("application/spdx+json"))
        .await
        .unwrap();
    assert!(filtered.filtered);
    assert_eq!(
        filtered
            .manifests
            .iter()
            .map(|d| d.digest)
            .collect::<Vec<_>>(),
        vec![sbom]
    );
    let none = r
        .referrers(&subject, Some("application/none"))
        .await
        .unwrap();
    assert!(none.manifests.is_empty());
}

async fn referrers_disappear_when_the_referring_manifest_is_deleted(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let subject = Digest::sha256(b"subject");
    let (_, sig) = push_referrer(
        &store,
        "app",
        &subject,
        7,
        "application/vnd.example.signature",
        "s",
    )
    .await;
    assert_eq!(
        r.referrers(&subject, None).await.unwrap().manifests.len(),
        1
    );
    r.delete_manifest(&sig).await.unwrap();
    assert!(
        r.referrers(&subject, None)
            .await
            .unwrap()
            .manifests
            .is_empty()
    );
}

async fn referrers_of_a_subject_without_any_is_an_empty_index(b: TestBackend) {
    let store = store_on(&b);
    let referrers = store
        .repository(repo("app"))
        .referrers(&Digest::sha256(b"none"), None)
        .await
        .unwrap();
    assert!(referrers.manifests.is_empty());
    let index: serde_json::Value = serde_json::from_slice(&referrers.to_index_json()).unwrap();
    assert_eq!(index["manifests"], json!([]));
}

async fn catalog_lists_repositories_in_lexical_order_with_n_and_last(b: TestBackend) {
    let store = store_on(&b);
    let data = Bytes::from_static(b"x");
    let d = Digest::sha256(&data);
    for name in ["b", "a/c", "a", "a/b/c", "z-z"] {
        store
            .repository(repo(name))
            .put_blob(&d, data.clone())
            .await
            .unwrap();
    }
    let names = |p: layerstore::Paginated<RepositoryName>| {
        p.items.iter().map(|t| t.to_string()).collect::<Vec<_>>()
    };
    let all = store.catalog(None, None).await.unwrap();
    assert_eq!(names(all), ["a", "a/b/c", "a/c", "b", "z-z"]);
    let page = store.catalog(Some(2), Some("a/b/c")).await.unwrap();
    assert!(page.truncated);
    assert_eq!(names(page), ["a/c", "b"]);
}

/// Rounds of a write racing a delete of the same name. On the filesystem, a delete that removed
/// a file and its emptied directory while a write was between publishing that file and syncing
/// the directory failed the write, a few rounds in a thousand; the object stores have no
/// directories but must give the same outcomes (fewer rounds: each is a dozen requests).
fn race_rounds(b: &TestBackend) -> usize {
    match b.kind {
        BackendKind::Memory | BackendKind::Filesystem => 2000,
        BackendKind::S3 | BackendKind::Azure => 50,
    }
}

/// Whether a read found the name (`Ok`) or not (`unknown`); any other error fails the test.
fn found<T>(read: layerstore::Result<T>, unknown: ErrorKind, context: &str) -> Option<T> {
    match read {
        Ok(x) => Some(x),
        Err(e) if e.kind() == unknown => None,
        Err(e) => panic!("{context}: {e}"),
    }
}

/// Linearizable outcomes of a write racing a delete: a delete that found nothing ran before
/// the write, so the name is there; one that removed a name that was not there before ran
/// after the write, so the name is gone.
fn assert_linearizable(round: usize, before: bool, deleted: bool, after: bool) {
    if deleted {
        assert!(
            before || !after,
            "round {round}: the delete removed what only the write made, yet it is there"
        );
    } else {
        assert!(
            after,
            "round {round}: the delete found nothing, yet the write is lost"
        );
    }
}

/// Most rounds start with the name there (only a delete that finds it removes directories);
/// every fifth may start without.
fn restore_before(round: usize, before: bool) -> bool {
    !before && round % 5 != 4
}

async fn a_tag_put_racing_its_delete_ends_put_or_deleted_without_error(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("race"));
    let (m, _) = push_image(&store, "race", "m", 1).await;
    let t = Tag::parse("t").unwrap();
    let reference = tag("t");
    let put = || r.put_manifest(&reference, m.clone(), Some(media_type::OCI_MANIFEST));
    let mut before = false;
    for round in 0..race_rounds(&b) {
        if restore_before(round, before) {
            put().await.unwrap();
            before = true;
        }
        let (written, deleted) = tokio::join!(put(), r.delete_tag(&t));
        written.unwrap_or_else(|e| panic!("round {round}: put: {e}"));
        let deleted = found(deleted, ErrorKind::ManifestUnknown, "delete").is_some();
        let got = found(
            r.get_manifest(&reference).await,
            ErrorKind::ManifestUnknown,
            "get",
        );
        if let Some(got) = &got {
            assert_eq!(got.bytes, m, "round {round}");
        }
        assert_linearizable(round, before, deleted, got.is_some());
        before = got.is_some();
    }
}

async fn a_manifest_put_by_digest_racing_its_delete_ends_put_or_deleted_without_error(
    b: TestBackend,
) {
    let store = store_on(&b);
    let r = store.repository(repo("race"));
    let (m, _) = push_image(&store, "race", "m", 1).await;
    let digest = Digest::sha256(&m);
    let by_digest = Reference::Digest(digest);
    let put = || r.put_manifest(&by_digest, m.clone(), Some(media_type::OCI_MANIFEST));
    let mut before = false;
    for round in 0..race_rounds(&b) {
        if restore_before(round, before) {
            put().await.unwrap();
            before = true;
        }
        let (written, deleted) = tokio::join!(put(), r.delete_manifest(&digest));
        written.unwrap_or_else(|e| panic!("round {round}: put: {e}"));
        let deleted = found(deleted, ErrorKind::ManifestUnknown, "delete").is_some();
        let got = found(
            r.get_manifest(&by_digest).await,
            ErrorKind::ManifestUnknown,
            "get",
        );
        if let Some(got) = &got {
            assert_eq!(got.bytes, m, "round {round}");
        }
        assert_linearizable(round, before, deleted, got.is_some());
        before = got.is_some();
    }
}

async fn a_blob_link_racing_its_unlink_ends_linked_or_unlinked_without_error(b: TestBackend) {
    let store = store_on(&b);
    let data = Bytes::from_static(b"linked and unlinked");
    let digest = Digest::sha256(&data);
    store
        .repository(repo("source"))
        .put_blob(&digest, data.clone())
        .await
        .unwrap();
    let r = store.repository(repo("race"));
    let source = repo("source");
    let mount = || r.mount_blob(&source, &digest);
    let mut before = false;
    for round in 0..race_rounds(&b) {
        if restore_before(round, before) {
            assert!(mount().await.unwrap());
            before = true;
        }
        let (mounted, unlinked) = tokio::join!(mount(), r.unlink_blob(&digest));
        let mounted = mounted.unwrap_or_else(|e| panic!("round {round}: mount: {e}"));
        assert!(mounted, "round {round}: the source has it");
        let deleted = found(unlinked, ErrorKind::BlobUnknown, "unlink").is_some();
        let read = found(
            r.read_blob(&digest, None).await,
            ErrorKind::BlobUnknown,
            "read",
        );
        let stat = found(r.stat_blob(&digest).await, ErrorKind::BlobUnknown, "stat");
        assert_eq!(
            read.is_some(),
            stat.is_some(),
            "round {round}: stat disagrees with read"
        );
        assert_linearizable(round, before, deleted, read.is_some());
        before = read.is_some();
    }
}

backend_tests!(
    blob_put_then_read_returns_the_same_bytes,
    blob_put_with_wrong_digest_is_refused_and_writes_nothing,
    blob_bytes_are_stored_once_across_repositories_and_pushes,
    blob_is_invisible_in_a_repository_it_is_not_linked_to,
    blob_range_reads_return_exactly_the_requested_bytes,
    blob_range_outside_the_blob_is_range_invalid,
    blob_mount_links_from_another_repository_without_copying_bytes,
    blob_mount_from_a_repository_without_the_blob_mounts_nothing,
    blob_unlink_hides_it_from_that_repository_only,
    concurrent_puts_of_the_same_blob_both_succeed_and_leave_one_copy,
    reading_a_large_blob_streams_it_in_pieces,
    manifest_put_by_tag_is_readable_by_tag_and_digest_as_the_exact_bytes,
    manifest_put_with_unlinked_blobs_names_each_one_and_writes_nothing,
    index_put_requires_every_child_manifest_in_the_repository,
    manifest_put_by_a_digest_that_does_not_match_is_digest_invalid,
    invalid_manifest_is_refused_and_writes_nothing,
    retagging_points_the_tag_at_the_new_manifest,
    readers_racing_a_retag_see_the_old_or_the_new_manifest_whole,
    deleting_a_manifest_removes_it_and_the_tags_pointing_at_it,
    deleting_a_tag_keeps_the_manifest,
    tags_list_in_lexical_order_with_n_and_last,
    tags_of_a_repository_never_written_is_name_unknown,
    referrers_list_each_manifest_with_that_subject,
    referrers_filter_by_artifact_type,
    referrers_disappear_when_the_referring_manifest_is_deleted,
    referrers_of_a_subject_without_any_is_an_empty_index,
    catalog_lists_repositories_in_lexical_order_with_n_and_last,
    a_tag_put_racing_its_delete_ends_put_or_deleted_without_error,
    a_manifest_put_by_digest_racing_its_delete_ends_put_or_deleted_without_error,
    a_blob_link_racing_its_unlink_ends_linked_or_unlinked_without_error,
);
