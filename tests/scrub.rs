//! Scrub: every problem it names is found on a store where exactly that problem was made, a
//! healthy store is reported clean and left untouched, and repair removes exactly what points
//! at nothing and quarantines exactly what is corrupt, after which the digest can be pushed
//! again. Every test runs on memory, filesystem, S3 and Azure.

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use layerstore::cache::{MemoryCache, MemoryCacheConfig};
use layerstore::layout::KeyLayout;
use layerstore::manifest::media_type;
use layerstore::scrub::ScrubPhase;
use layerstore::{
    Algorithm, Digest, ErrorKind, ProblemKind, Reference, Repository, ScrubOptions, ScrubProgress,
    ScrubReport, Store, Tag,
};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::json;

const KIB: usize = 1024;
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

// ---------------------------------------------------------------------------------------
// Support

/// Options of a check: no repair, and every referrer link old enough to be judged.
fn checking() -> ScrubOptions {
    ScrubOptions {
        referrer_grace: Duration::ZERO,
        ..ScrubOptions::default()
    }
}

fn repairing() -> ScrubOptions {
    ScrubOptions {
        repair: true,
        ..checking()
    }
}

async fn scrub(store: &Store, options: ScrubOptions) -> ScrubReport {
    store.scrub(options, &|_| {}).await.unwrap()
}

/// The kinds of the problems found, sorted.
fn kinds(report: &ScrubReport) -> Vec<ProblemKind> {
    let mut kinds: Vec<_> = report.problems.iter().map(|p| p.kind).collect();
    kinds.sort();
    kinds
}

#[track_caller]
fn assert_clean(report: &ScrubReport) {
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

fn tag(t: &str) -> Reference {
    Reference::Tag(Tag::parse(t).unwrap())
}

async fn push_blob(r: &Repository, bytes: &[u8]) -> Digest {
    let d = Digest::sha256(bytes);
    r.put_blob(&d, Bytes::copy_from_slice(bytes)).await.unwrap();
    d
}

/// What [`push_image`] pushed.
struct Image {
    manifest: Digest,
    manifest_size: u64,
    config: Digest,
    layers: Vec<Digest>,
}

fn descriptor(media_type: &str, digest: &Digest, size: usize) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": digest.to_string(), "size": size})
}

/// Pushes a config, two layers and an OCI manifest over them into `name`, tagged `t` if given.
async fn push_image(store: &Store, name: &str, seed: u64, t: Option<&str>) -> Image {
    let r = store.repository(repo(name));
    let config = format!("{{\"seed\":{seed}}}").into_bytes();
    let layer_bytes = [pattern(seed, 3 * KIB), pattern(seed + 1000, 5 * KIB)];
    let config_digest = push_blob(&r, &config).await;
    let mut layers = vec![];
    let mut descriptors = vec![];
    for bytes in &layer_bytes {
        let d = push_blob(&r, bytes).await;
        descriptors.push(descriptor(LAYER_TYPE, &d, bytes.len()));
        layers.push(d);
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": descriptor(CONFIG_TYPE, &config_digest, config.len()),
        "layers": descriptors,
    });
    let (manifest, manifest_size) = put_manifest(&r, &manifest, t).await;
    Image {
        manifest,
        manifest_size,
        config: config_digest,
        layers,
    }
}

/// Puts a manifest by tag `t`, or by digest; returns its digest and size.
async fn put_manifest(
    r: &Repository,
    manifest: &serde_json::Value,
    t: Option<&str>,
) -> (Digest, u64) {
    let bytes = Bytes::from(serde_json::to_vec(manifest).unwrap());
    let digest = Digest::sha256(&bytes);
    let reference = t.map_or(Reference::Digest(digest), tag);
    let media = manifest["mediaType"].as_str().unwrap().to_owned();
    r.put_manifest(&reference, bytes.clone(), Some(&media))
        .await
        .unwrap();
    (digest, bytes.len() as u64)
}

/// Pushes an artifact (empty config, no layers) whose subject is `subject`; returns its digest.
async fn push_referrer(store: &Store, name: &str, subject: &Image, kind: &str) -> Digest {
    let r = store.repository(repo(name));
    let empty = push_blob(&r, b"{}").await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "artifactType": kind,
        "config": descriptor(media_type::OCI_EMPTY, &empty, 2),
        "layers": [],
        "subject": {
            "mediaType": media_type::OCI_MANIFEST,
            "digest": subject.manifest.to_string(),
            "size": subject.manifest_size,
        },
    });
    put_manifest(&r, &manifest, None).await.0
}

/// Pushes an index over `children` into `name`, tagged `t`.
async fn push_index(store: &Store, name: &str, children: &[&Image], t: &str) -> Digest {
    let r = store.repository(repo(name));
    let manifests: Vec<_> = children
        .iter()
        .map(|c| {
            json!({
                "mediaType": media_type::OCI_MANIFEST,
                "digest": c.manifest.to_string(),
                "size": c.manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests,
    });
    put_manifest(&r, &index, Some(t)).await.0
}

/// Pushes `data` through the upload API, `chunk` bytes per append: on object stores a blob made
/// of pieces (a segment index and segment objects), on the filesystem one object.
async fn push_in_chunks(r: &Repository, data: &[u8], chunk: usize) -> Digest {
    let digest = Digest::sha256(data);
    let session = r.start_upload().await.unwrap();
    for (i, piece) in data.chunks(chunk).enumerate() {
        r.append_upload(
            &session.id,
            (i * chunk) as u64,
            in_pieces(piece, piece.len()),
        )
        .await
        .unwrap();
    }
    r.commit_upload(&session.id, &digest, Some(data.len() as u64))
        .await
        .unwrap();
    digest
}

/// The keys of the pieces the segment index of `digest` lists.
async fn pieces_of(b: &TestBackend, digest: &Digest) -> Vec<Path> {
    let index = read(b, &KeyLayout.blob_segments(digest)).await;
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let upload = index["upload"].as_str().unwrap();
    index["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            KeyLayout.segment(
                upload,
                s["seq"].as_u64().unwrap(),
                s["nonce"].as_str().unwrap(),
            )
        })
        .collect()
}

/// Whether the store keeps `digest` as one object (always on the filesystem).
async fn is_one_object(b: &TestBackend, digest: &Digest) -> bool {
    b.store.head(&KeyLayout.blob_data(digest)).await.is_ok()
}

async fn read(b: &TestBackend, key: &Path) -> Bytes {
    b.store.get(key).await.unwrap().bytes().await.unwrap()
}

/// Replaces an object behind the store's back.
async fn overwrite(b: &TestBackend, key: &Path, bytes: impl Into<Bytes>) {
    b.store
        .put(key, PutPayload::from(bytes.into()))
        .await
        .unwrap();
}

async fn delete(b: &TestBackend, key: &Path) {
    b.store.delete(key).await.unwrap();
}

/// Every object of the backend with its bytes.
async fn snapshot(b: &TestBackend) -> BTreeMap<String, Bytes> {
    let listed: Vec<Path> = b
        .store
        .list(None)
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    let mut all = BTreeMap::new();
    for key in listed {
        all.insert(key.to_string(), read(b, &key).await);
    }
    all
}

async fn read_back(r: &Repository, digest: &Digest) -> Vec<u8> {
    let read = r.read_blob(digest, None).await.unwrap();
    let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    chunks.concat()
}

/// A store with a bit of everything, all of it healthy: two repositories sharing a layer, an
/// index over two images, a referrer, a blob pushed in chunks (made of pieces on object
/// stores) and one under a SHA-512 digest.
async fn healthy_store(store: &Store) -> (Image, Image) {
    let a = push_image(store, "team/app", 1, Some("v1")).await;
    let b = push_image(store, "team/app", 2, None).await;
    push_index(store, "team/app", &[&a, &b], "multi").await;
    push_referrer(store, "team/app", &a, "application/vnd.example.sbom").await;
    let other = store.repository(repo("mirror/app"));
    assert!(
        other
            .mount_blob(&repo("team/app"), &a.layers[0])
            .await
            .unwrap()
    );
    push_in_chunks(&other, &pattern(77, 40 * KIB), 7 * KIB).await;
    let sha512 = pattern(78, 2 * KIB);
    let d512 = Digest::compute(Algorithm::Sha512, &sha512);
    other.put_blob(&d512, Bytes::from(sha512)).await.unwrap();
    (a, b)
}

/// The blobs the store holds as objects under `blobs/`, and their bytes in all.
async fn stored_blobs(b: &TestBackend) -> (u64, u64) {
    let mut bytes = 0;
    let listed = keys(b, "blobs").await;
    for key in &listed {
        let key = Path::from(key.as_str());
        bytes += if key.as_ref().ends_with("/segments") {
            let index: serde_json::Value = serde_json::from_slice(&read(b, &key).await).unwrap();
            index["size"].as_u64().unwrap()
        } else {
            b.store.head(&key).await.unwrap().size
        };
    }
    (listed.len() as u64, bytes)
}

// ---------------------------------------------------------------------------------------
// A healthy store

async fn a_healthy_store_is_clean_and_everything_in_it_is_counted(b: TestBackend) {
    let store = store_on(&b);
    healthy_store(&store).await;
    let report = scrub(&store, checking()).await;
    assert_clean(&report);
    let c = report.counts;
    // 2 configs, 4 layers, 2 manifests, the index, the referrer and its empty config, the
    // chunked blob and the SHA-512 one.
    assert_eq!(c.blobs, 13, "{c:?}");
    assert_eq!((c.blobs, c.bytes_hashed), stored_blobs(&b).await);
    assert_eq!(c.repositories, 2);
    // team/app: 2 configs, 4 layers, the empty config; mirror/app: the mounted layer and two.
    assert_eq!(c.layer_links, 7 + 3);
    assert_eq!(c.manifests, 4);
    assert_eq!(c.tags, 2);
    assert_eq!(c.referrers, 1);
    assert_eq!((c.problems, c.repaired), (0, 0));
    assert!(report.empty_repositories.is_empty());
}

async fn repair_leaves_a_healthy_store_untouched(b: TestBackend) {
    let store = store_on(&b);
    healthy_store(&store).await;
    let before = snapshot(&b).await;
    let report = scrub(&store, repairing()).await;
    assert_clean(&report);
    assert!(
        snapshot(&b).await == before,
        "repair changed a healthy store"
    );
}

async fn progress_goes_through_each_phase_and_ends_at_the_reports_counts(b: TestBackend) {
    let store = store_on(&b);
    healthy_store(&store).await;
    let seen: Mutex<Vec<ScrubProgress>> = Mutex::default();
    let report = store
        .scrub(checking(), &|p| seen.lock().unwrap().push(*p))
        .await
        .unwrap();
    let seen = seen.into_inner().unwrap();
    let mut phases: Vec<ScrubPhase> = seen.iter().map(|p| p.phase).collect();
    phases.dedup();
    assert_eq!(
        phases,
        [
            ScrubPhase::Blobs,
            ScrubPhase::Repositories,
            ScrubPhase::Done
        ]
    );
    let last = seen.last().unwrap();
    assert_eq!(last.counts, report.counts);
    assert_eq!(last.blobs_total, Some(report.counts.blobs));
    assert_eq!(last.repositories_total, Some(2));
    // Known up front only when no blob is made of pieces (whose size is in its index).
    let pieced = !keys(&b, "segments").await.is_empty();
    let expected_bytes = (!pieced).then_some(report.counts.bytes_hashed);
    assert_eq!(last.bytes_total, expected_bytes);
    // Counts only grow.
    for pair in seen.windows(2) {
        assert!(pair[1].counts.bytes_hashed >= pair[0].counts.bytes_hashed);
        assert!(pair[1].counts.blobs >= pair[0].counts.blobs);
    }
}

async fn a_catalog_entry_with_nothing_in_it_is_information_not_a_problem(b: TestBackend) {
    let store = store_on(&b);
    push_image(&store, "kept", 1, Some("v1")).await;
    let gone = store.repository(repo("emptied"));
    let d = push_blob(&gone, b"only blob").await;
    gone.unlink_blob(&d).await.unwrap();
    let report = scrub(&store, checking()).await;
    assert_clean(&report);
    assert_eq!(report.empty_repositories, [repo("emptied")]);
    assert_eq!(report.counts.repositories, 2);
}

// ---------------------------------------------------------------------------------------
// Each problem, made alone

async fn a_blob_whose_bytes_changed_is_corrupt(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let original = pattern(1, 10 * KIB);
    let d = push_blob(&r, &original).await;
    let mut changed = original.clone();
    changed[5000] ^= 1;
    overwrite(&b, &KeyLayout.blob_data(&d), changed).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::BlobCorrupt]);
    let p = &report.problems[0];
    assert_eq!(p.digest, Some(d));
    assert_eq!(p.key, KeyLayout.blob_data(&d).to_string());
    assert!(!p.repaired && p.repair.is_none());
    assert!(!report.is_clean());
}

async fn a_truncated_blob_is_corrupt(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let original = pattern(2, 10 * KIB);
    let d = push_blob(&r, &original).await;
    overwrite(&b, &KeyLayout.blob_data(&d), original[..4 * KIB].to_vec()).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::BlobCorrupt]);
    assert!(
        report.problems[0].message.contains("4096 bytes"),
        "{}",
        report.problems[0]
    );
}

async fn a_sha512_blob_is_checked_against_its_sha512_digest(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let data = pattern(3, 3 * KIB);
    let d = Digest::compute(Algorithm::Sha512, &data);
    r.put_blob(&d, Bytes::from(data.clone())).await.unwrap();
    assert_clean(&scrub(&store, checking()).await);
    let mut changed = data;
    changed[0] ^= 0x80;
    overwrite(&b, &KeyLayout.blob_data(&d), changed).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::BlobCorrupt]);
    assert!(
        report.problems[0].message.contains("sha512:"),
        "{}",
        report.problems[0]
    );
}

async fn a_blob_missing_a_piece_has_a_segment_missing(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let d = push_in_chunks(&r, &pattern(4, 30 * KIB), 10 * KIB).await;
    if is_one_object(&b, &d).await {
        // The filesystem keeps every blob as one object: it has no pieces to lose.
        assert_eq!(b.kind, BackendKind::Filesystem);
        assert!(keys(&b, "segments").await.is_empty());
        return;
    }
    let pieces = pieces_of(&b, &d).await;
    delete(&b, &pieces[pieces.len() / 2]).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::SegmentMissing]);
    let p = &report.problems[0];
    assert_eq!(p.digest, Some(d));
    assert_eq!(p.key, KeyLayout.blob_segments(&d).to_string());
    assert!(p.message.contains(pieces[pieces.len() / 2].as_ref()), "{p}");
}

async fn a_blob_with_a_short_piece_has_a_segment_truncated(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let d = push_in_chunks(&r, &pattern(5, 30 * KIB), 10 * KIB).await;
    if is_one_object(&b, &d).await {
        assert_eq!(b.kind, BackendKind::Filesystem);
        assert!(keys(&b, "segments").await.is_empty());
        return;
    }
    let piece = pieces_of(&b, &d).await.remove(0);
    let held = read(&b, &piece).await;
    overwrite(&b, &piece, held.slice(..held.len() - 1)).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::SegmentTruncated]);
}

async fn a_segment_index_whose_pieces_do_not_add_up_is_a_size_mismatch(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let d = push_in_chunks(&r, &pattern(6, 30 * KIB), 10 * KIB).await;
    if is_one_object(&b, &d).await {
        assert_eq!(b.kind, BackendKind::Filesystem);
        assert!(keys(&b, "segments").await.is_empty());
        return;
    }
    let key = KeyLayout.blob_segments(&d);
    let mut index: serde_json::Value = serde_json::from_slice(&read(&b, &key).await).unwrap();
    index["size"] = json!(30 * KIB + 1);
    overwrite(&b, &key, serde_json::to_vec(&index).unwrap()).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::BlobSizeMismatch]);
}

async fn a_segment_index_that_does_not_decode_is_invalid(b: TestBackend) {
    // Written by hand, so this runs on the filesystem too (a store copied from a bucket).
    let store = store_on(&b);
    let d = Digest::sha256(b"never stored");
    overwrite(
        &b,
        &KeyLayout.blob_segments(&d),
        &b"{\"size\": \"twelve\""[..],
    )
    .await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::SegmentIndexInvalid]);
    assert_eq!(report.problems[0].digest, Some(d));
}

async fn a_blob_link_whose_blob_is_gone_is_dangling(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let d = push_blob(&r, b"soon lost").await;
    delete(&b, &KeyLayout.blob_data(&d)).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::LayerLinkDangling]);
    let p = &report.problems[0];
    assert_eq!(p.repository, Some(repo("app")));
    assert_eq!(p.key, KeyLayout.layer_link(&repo("app"), &d).to_string());
}

async fn a_revision_whose_manifest_bytes_are_gone_is_dangling(b: TestBackend) {
    let store = store_on(&b);
    let image = push_image(&store, "app", 1, Some("v1")).await;
    delete(&b, &KeyLayout.blob_data(&image.manifest)).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::RevisionDangling]);
    assert_eq!(report.problems[0].digest, Some(image.manifest));
}

async fn a_revision_link_recording_another_size_is_a_mismatch(b: TestBackend) {
    let store = store_on(&b);
    let image = push_image(&store, "app", 1, None).await;
    let key = KeyLayout.manifest_revision(&repo("app"), &image.manifest);
    let mut link: serde_json::Value = serde_json::from_slice(&read(&b, &key).await).unwrap();
    link["size"] = json!(image.manifest_size + 1);
    overwrite(&b, &key, serde_json::to_vec(&link).unwrap()).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::RevisionMismatch]);
}

async fn a_revision_link_recording_another_media_type_is_a_mismatch(b: TestBackend) {
    let store = store_on(&b);
    let image = push_image(&store, "app", 1, None).await;
    let key = KeyLayout.manifest_revision(&repo("app"), &image.manifest);
    let mut link: serde_json::Value = serde_json::from_slice(&read(&b, &key).await).unwrap();
    link["mediaType"] = json!(media_type::DOCKER_MANIFEST);
    overwrite(&b, &key, serde_json::to_vec(&link).unwrap()).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::RevisionMismatch]);
}

async fn a_stored_manifest_that_does_not_parse_is_invalid(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    // Bytes stored under their own digest (so the blob is sound), made a revision by hand.
    let bytes = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let d = push_blob(&r, bytes).await;
    let link = json!({"mediaType": media_type::OCI_MANIFEST, "digest": d.to_string(), "size": bytes.len()});
    overwrite(
        &b,
        &KeyLayout.manifest_revision(&repo("app"), &d),
        serde_json::to_vec(&link).unwrap(),
    )
    .await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::ManifestInvalid]);
    assert!(
        report.problems[0].message.contains("config"),
        "{}",
        report.problems[0]
    );
}

async fn a_manifest_whose_layer_is_gone_references_a_missing_blob(b: TestBackend) {
    let store = store_on(&b);
    let image = push_image(&store, "app", 1, Some("v1")).await;
    let lost = image.layers[1];
    store
        .repository(repo("app"))
        .unlink_blob(&lost)
        .await
        .unwrap();
    delete(&b, &KeyLayout.blob_data(&lost)).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::ManifestReferenceMissing]);
    let p = &report.problems[0];
    assert_eq!((p.digest, p.reference), (Some(image.manifest), Some(lost)));
}

async fn a_manifest_whose_config_is_not_linked_references_an_unlinked_blob(b: TestBackend) {
    let store = store_on(&b);
    let image = push_image(&store, "app", 1, Some("v1")).await;
    store
        .repository(repo("app"))
        .unlink_blob(&image.config)
        .await
        .unwrap();
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::ManifestReferenceUnlinked]);
    assert_eq!(report.problems[0].reference, Some(image.config));
}

async fn a_descriptor_with_another_size_than_its_blob_is_a_size_mismatch(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let config = push_blob(&r, b"{}").await;
    let layer = push_blob(&r, &pattern(9, 2 * KIB)).await;
    // The store checks references exist when a manifest is put, not their sizes.
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": descriptor(CONFIG_TYPE, &config, 2),
        "layers": [descriptor(LAYER_TYPE, &layer, 2 * KIB + 1)],
    });
    put_manifest(&r, &manifest, Some("v1")).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::ManifestReferenceSizeMismatch]);
    assert_eq!(report.problems[0].reference, Some(layer));
}

async fn an_index_whose_child_was_deleted_references_a_missing_manifest(b: TestBackend) {
    let store = store_on(&b);
    let a = push_image(&store, "app", 1, None).await;
    let c = push_image(&store, "app", 2, None).await;
    let index = push_index(&store, "app", &[&a, &c], "multi").await;
    store
        .repository(repo("app"))
        .delete_manifest(&c.manifest)
        .await
        .unwrap();
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::ManifestReferenceMissing]);
    let p = &report.problems[0];
    assert_eq!((p.digest, p.reference), (Some(index), Some(c.manifest)));
}

async fn a_tag_whose_revision_is_gone_is_dangling(b: TestBackend) {
    let store = store_on(&b);
    let image = push_image(&store, "app", 1, Some("v1")).await;
    // A delete through the store removes the tags first; only a crash or a race leaves one.
    delete(
        &b,
        &KeyLayout.manifest_revision(&repo("app"), &image.manifest),
    )
    .await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::TagDangling]);
    let p = &report.problems[0];
    assert_eq!(p.tag, Some(Tag::parse("v1").unwrap()));
    assert_eq!(p.digest, Some(image.manifest));
}

async fn a_referrer_link_whose_revision_is_gone_is_dangling(b: TestBackend) {
    let store = store_on(&b);
    let subject = push_image(&store, "app", 1, Some("v1")).await;
    let sbom = push_referrer(&store, "app", &subject, "application/vnd.example.sbom").await;
    delete(&b, &KeyLayout.manifest_revision(&repo("app"), &sbom)).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::ReferrerDangling]);
    assert_eq!(report.problems[0].digest, Some(sbom));
}

async fn a_young_referrer_link_without_its_revision_is_taken_for_a_put_in_flight(b: TestBackend) {
    let store = store_on(&b);
    let subject = push_image(&store, "app", 1, Some("v1")).await;
    let sbom = push_referrer(&store, "app", &subject, "application/vnd.example.sbom").await;
    delete(&b, &KeyLayout.manifest_revision(&repo("app"), &sbom)).await;
    let options = ScrubOptions {
        referrer_grace: Duration::from_secs(3600),
        ..repairing()
    };
    let before = snapshot(&b).await;
    assert_clean(&scrub(&store, options).await);
    assert!(snapshot(&b).await == before);
}

async fn a_tag_link_that_does_not_decode_is_invalid(b: TestBackend) {
    let store = store_on(&b);
    push_image(&store, "app", 1, Some("v1")).await;
    let key = KeyLayout.tag_link(&repo("app"), &Tag::parse("v1").unwrap());
    overwrite(&b, &key, &b"not json"[..]).await;
    let report = scrub(&store, checking()).await;
    assert_eq!(kinds(&report), [ProblemKind::LinkInvalid]);
    assert_eq!(report.problems[0].key, key.to_string());
}

/// A backend error at any read of a scrub is reported as a problem of its own, never taken
/// for another problem, never acted on; only failing to list the blobs or the catalog stops
/// the scrub.
async fn a_failed_read_is_reported_as_such_and_never_repaired(b: TestBackend) {
    let (store, faulty) = faulty_store_on(&b);
    let image = push_image(&store, "app", 1, Some("v1")).await;
    push_referrer(&store, "app", &image, "application/vnd.example.sig").await;
    let before = snapshot(&b).await;
    faulty.reset();
    assert_clean(&scrub(&store, repairing()).await);
    let reads = faulty.reads_seen();
    let mut seen = std::collections::BTreeSet::new();
    for n in 1..=reads {
        faulty.reset();
        faulty.fail_nth_read(n);
        let Ok(report) = store.scrub(repairing(), &|_| {}).await else {
            seen.insert("listing failed");
            continue;
        };
        for p in &report.problems {
            assert!(
                matches!(
                    p.kind,
                    ProblemKind::BlobUnreadable | ProblemKind::CheckFailed
                ),
                "read {n}: {p}"
            );
            assert!(!p.repaired, "read {n}: {p}");
            seen.insert(p.kind.as_str());
        }
        assert!(snapshot(&b).await == before, "read {n} changed the store");
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["blob_unreadable", "check_failed", "listing failed"]
    );
}

// ---------------------------------------------------------------------------------------
// Repair

async fn repair_quarantines_exactly_the_corrupt_blob_and_its_digest_can_be_pushed_again(
    b: TestBackend,
) {
    let store = store_on(&b);
    push_image(&store, "app", 1, Some("v1")).await;
    let r = store.repository(repo("app"));
    let original = pattern(10, 20 * KIB);
    let d = push_blob(&r, &original).await;
    let data = KeyLayout.blob_data(&d);
    let rotten = Bytes::from(pattern(11, 20 * KIB));
    overwrite(&b, &data, rotten.clone()).await;
    let mut expected = snapshot(&b).await;
    expected.remove(data.as_ref());
    expected.remove(KeyLayout.layer_link(&repo("app"), &d).as_ref());

    let report = scrub(&store, repairing()).await;
    assert_eq!(
        kinds(&report),
        [ProblemKind::BlobCorrupt, ProblemKind::LayerLinkDangling],
        "{:#?}",
        report.problems
    );
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert_eq!(report.counts.repaired, 2);
    // The bytes moved under quarantine/, whole; nothing else changed.
    let mut after = snapshot(&b).await;
    let quarantined: Vec<String> = keys(&b, "quarantine").await;
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(quarantined[0].starts_with(&format!("quarantine/sha256/{}/", d.hex())));
    assert!(quarantined[0].ends_with("/data"));
    assert_eq!(after.remove(&quarantined[0]), Some(rotten));
    assert!(after == expected, "repair touched something healthy");
    assert!(
        report.problems[0]
            .repair
            .as_ref()
            .unwrap()
            .contains(&quarantined[0])
    );

    assert_clean(&scrub(&store, checking()).await);
    push_blob(&r, &original).await;
    assert!(read_back(&r, &d).await == original);
    assert_clean(&scrub(&store, checking()).await);
}

async fn after_quarantine_a_chunked_upload_of_the_digest_stores_fresh_bytes(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    let original = pattern(12, 30 * KIB);
    let d = push_in_chunks(&r, &original, 10 * KIB).await;
    // Object stores: a piece goes missing; the filesystem: the one object rots.
    if is_one_object(&b, &d).await {
        overwrite(&b, &KeyLayout.blob_data(&d), pattern(13, 30 * KIB)).await;
    } else {
        delete(&b, &pieces_of(&b, &d).await[0]).await;
    }
    let report = scrub(&store, repairing()).await;
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert_eq!(report.counts.repaired, 2, "{:#?}", report.problems);
    assert!(!r.blob_exists(&d).await.unwrap());

    push_in_chunks(&r, &original, 10 * KIB).await;
    assert!(read_back(&r, &d).await == original);
    assert_clean(&scrub(&store, checking()).await);
}

async fn repair_removes_exactly_the_dangling_link_tag_and_referrer(b: TestBackend) {
    let store = store_on(&b);
    let (a, _) = healthy_store(&store).await;
    let app = repo("app");
    let r = store.repository(app.clone());
    let lost = push_blob(&r, b"lost bytes").await;
    delete(&b, &KeyLayout.blob_data(&lost)).await;
    let tagged = push_image(&store, "app", 5, Some("stale")).await;
    delete(&b, &KeyLayout.manifest_revision(&app, &tagged.manifest)).await;
    let sig = push_referrer(&store, "app", &a, "application/vnd.example.sig").await;
    delete(&b, &KeyLayout.manifest_revision(&app, &sig)).await;
    let dangling = [
        KeyLayout.layer_link(&app, &lost),
        KeyLayout.tag_link(&app, &Tag::parse("stale").unwrap()),
        KeyLayout.referrer_link(&app, &a.manifest, &sig),
    ];
    let mut expected = snapshot(&b).await;
    for key in &dangling {
        assert!(expected.remove(key.as_ref()).is_some(), "{key}");
    }

    let report = scrub(&store, repairing()).await;
    assert_eq!(
        kinds(&report),
        [
            ProblemKind::LayerLinkDangling,
            ProblemKind::TagDangling,
            ProblemKind::ReferrerDangling
        ]
    );
    assert!(report.problems.iter().all(|p| p.repaired));
    assert!(
        snapshot(&b).await == expected,
        "repair removed something else"
    );
    assert_clean(&scrub(&store, checking()).await);
}

async fn repair_leaves_what_it_cannot_fix_reported(b: TestBackend) {
    let store = store_on(&b);
    let image = push_image(&store, "app", 1, None).await;
    delete(&b, &KeyLayout.blob_data(&image.manifest)).await;
    let before = snapshot(&b).await;
    let report = scrub(&store, repairing()).await;
    assert_eq!(kinds(&report), [ProblemKind::RevisionDangling]);
    assert!(!report.problems[0].repaired);
    assert!(!report.is_clean());
    assert!(snapshot(&b).await == before);
}

async fn a_quarantined_manifest_leaves_its_revision_reported_dangling(b: TestBackend) {
    let store = store_on(&b);
    let image = push_image(&store, "app", 1, Some("v1")).await;
    let data = KeyLayout.blob_data(&image.manifest);
    let mut rotten = read(&b, &data).await.to_vec();
    rotten[0] = b' ';
    overwrite(&b, &data, rotten).await;
    let report = scrub(&store, repairing()).await;
    assert_eq!(
        kinds(&report),
        [ProblemKind::BlobCorrupt, ProblemKind::RevisionDangling]
    );
    assert!(report.problems[0].repaired && !report.problems[1].repaired);
    // The tag still names the revision: it is the revision that lacks its manifest.
    let r = store.repository(repo("app"));
    assert_eq!(
        r.stat_manifest(&tag("v1")).await.unwrap().digest,
        image.manifest
    );
    assert_eq!(
        r.get_manifest(&tag("v1")).await.unwrap_err().kind(),
        ErrorKind::ManifestUnknown
    );
}

async fn after_repair_the_cache_does_not_answer_for_a_quarantined_blob(b: TestBackend) {
    let cache = MemoryCache::new(MemoryCacheConfig {
        capacity: 100,
        time_to_live: Duration::from_secs(3600),
    });
    let store = Store::with_cache(store_on(&b).backend().clone(), Some(Arc::new(cache)));
    let r = store.repository(repo("app"));
    let d = push_blob(&r, &pattern(14, 4 * KIB)).await;
    r.stat_blob(&d).await.unwrap(); // cached
    overwrite(&b, &KeyLayout.blob_data(&d), pattern(15, 4 * KIB)).await;
    scrub(&store, repairing()).await;
    assert_eq!(
        r.stat_blob(&d).await.unwrap_err().kind(),
        ErrorKind::BlobUnknown
    );
}

// ---------------------------------------------------------------------------------------
// Rate

async fn hashing_is_held_to_the_rate(b: TestBackend) {
    const RATE: usize = 256 * KIB;
    let store = store_on(&b);
    let r = store.repository(repo("app"));
    // Three seconds' worth: the limiter lets one through at once, the rest takes two seconds.
    push_blob(&r, &pattern(16, 2 * RATE)).await;
    push_blob(&r, &pattern(17, RATE)).await;
    let options = ScrubOptions {
        rate: NonZeroU64::new(RATE as u64),
        ..checking()
    };
    let started = Instant::now();
    let report = scrub(&store, options).await;
    let elapsed = started.elapsed();
    assert_clean(&report);
    let n = report.counts.bytes_hashed;
    assert_eq!(n, 3 * RATE as u64);
    // (N − burst) / rate, the burst being one second's worth.
    let floor = Duration::from_secs_f64((n - RATE as u64) as f64 / RATE as f64);
    assert!(elapsed >= floor, "{n} bytes in {elapsed:?} at {RATE} B/s");
}

backend_tests!(
    a_healthy_store_is_clean_and_everything_in_it_is_counted,
    repair_leaves_a_healthy_store_untouched,
    progress_goes_through_each_phase_and_ends_at_the_reports_counts,
    a_catalog_entry_with_nothing_in_it_is_information_not_a_problem,
    a_blob_whose_bytes_changed_is_corrupt,
    a_truncated_blob_is_corrupt,
    a_sha512_blob_is_checked_against_its_sha512_digest,
    a_blob_missing_a_piece_has_a_segment_missing,
    a_blob_with_a_short_piece_has_a_segment_truncated,
    a_segment_index_whose_pieces_do_not_add_up_is_a_size_mismatch,
    a_segment_index_that_does_not_decode_is_invalid,
    a_blob_link_whose_blob_is_gone_is_dangling,
    a_revision_whose_manifest_bytes_are_gone_is_dangling,
    a_revision_link_recording_another_size_is_a_mismatch,
    a_revision_link_recording_another_media_type_is_a_mismatch,
    a_stored_manifest_that_does_not_parse_is_invalid,
    a_manifest_whose_layer_is_gone_references_a_missing_blob,
    a_manifest_whose_config_is_not_linked_references_an_unlinked_blob,
    a_descriptor_with_another_size_than_its_blob_is_a_size_mismatch,
    an_index_whose_child_was_deleted_references_a_missing_manifest,
    a_tag_whose_revision_is_gone_is_dangling,
    a_referrer_link_whose_revision_is_gone_is_dangling,
    a_young_referrer_link_without_its_revision_is_taken_for_a_put_in_flight,
    a_tag_link_that_does_not_decode_is_invalid,
    a_failed_read_is_reported_as_such_and_never_repaired,
    repair_quarantines_exactly_the_corrupt_blob_and_its_digest_can_be_pushed_again,
    after_quarantine_a_chunked_upload_of_the_digest_stores_fresh_bytes,
    repair_removes_exactly_the_dangling_link_tag_and_referrer,
    repair_leaves_what_it_cannot_fix_reported,
    a_quarantined_manifest_leaves_its_revision_reported_dangling,
    after_repair_the_cache_does_not_answer_for_a_quarantined_blob,
    hashing_is_held_to_the_rate,
);
