//! Garbage collection's mark and plan: what a run keeps and collects, on every backend.
//! A plan changes nothing; the counts are what the sweep removes.

mod common;

use bytes::Bytes;
use common::*;
use std::time::Duration;

use layerstore::gc::{GcLockTiming, GcOptions, GcPlan};
use layerstore::{Digest, ErrorKind, Reference, Store};

const KEEP_UNTAGGED: GcOptions = options(false);
const DELETE_UNTAGGED: GcOptions = options(true);

const fn options(delete_untagged: bool) -> GcOptions {
    GcOptions {
        delete_untagged,
        grace: Duration::ZERO,
        dry_run: true,
        lock: GcLockTiming {
            heartbeat: Duration::from_secs(60),
            stale_after: Duration::from_secs(1),
        },
    }
}

async fn plan(store: &Store, options: GcOptions) -> GcPlan {
    store.gc_plan(options, &|_| {}).await.unwrap()
}

fn by_digest(bytes: &Bytes) -> Reference {
    Reference::Digest(Digest::sha256(bytes))
}

async fn a_store_where_every_blob_is_referenced_collects_nothing(b: TestBackend) {
    let store = store_on(&b);
    let (manifest, blobs) = push_image(&store, "app", "one", 2).await;
    put_manifest(&store, "app", &tag("v1"), &manifest).await;
    let p = plan(&store, DELETE_UNTAGGED).await;
    assert_eq!(p.repositories, 1);
    assert_eq!((p.manifests, p.manifests_kept), (1, 1));
    // The config, two layers and the manifest itself.
    assert_eq!(p.blobs_marked, blobs.len() as u64 + 1);
    assert_eq!(p.blobs, blobs.len() as u64 + 1);
    assert_eq!((p.blobs_collected, p.bytes_collected), (0, 0));
    assert_eq!((p.links_collected, p.repositories_emptied), (0, 0));
    assert!(p.bytes > manifest.len() as u64);
}

async fn layers_of_a_deleted_manifest_are_collected_unless_another_manifest_uses_them(
    b: TestBackend,
) {
    let store = store_on(&b);
    let (old, old_blobs) = push_image(&store, "app", "old", 2).await;
    let (new, _) = push_image(&store, "other", "new", 1).await;
    let old_digest = put_manifest(&store, "app", &tag("v1"), &old).await;
    put_manifest(&store, "other", &tag("v1"), &new).await;
    // The old image's first layer is also used by a manifest of "other" (mounted there).
    let other = store.repository(repo("other"));
    assert!(other.mount_blob(&repo("app"), &old_blobs[1]).await.unwrap());
    let (sharing, _) = push_image(&store, "other", "new", 1).await;
    let sharing = with_extra_layer(
        &sharing,
        &old_blobs[1],
        old_layer_size(&store, &old_blobs[1]).await,
    );
    put_manifest(&store, "other", &tag("v2"), &sharing).await;

    store
        .repository(repo("app"))
        .delete_manifest(&old_digest)
        .await
        .unwrap();
    let p = plan(&store, KEEP_UNTAGGED).await;
    // Collected: the old manifest's bytes, its config and its second layer.
    assert_eq!(p.blobs_collected, 3);
    let expected_bytes = old.len() as u64
        + old_layer_size(&store, &old_blobs[0]).await
        + old_layer_size(&store, &old_blobs[2]).await;
    assert_eq!(p.bytes_collected, expected_bytes);
    // Links: app's config and both its layers go... except the shared layer's, which the
    // kept manifest of "other" references: app's link to it stays too.
    assert_eq!(p.links_collected, 2);
    assert_eq!(p.repositories_emptied, 0);
}

async fn old_layer_size(store: &Store, digest: &Digest) -> u64 {
    // Every blob of these tests is linked into "app" or "other".
    for name in ["app", "other"] {
        if let Ok(info) = store.repository(repo(name)).stat_blob(digest).await {
            return info.size;
        }
    }
    panic!("{digest} is in neither repository")
}

/// `manifest` with one more layer descriptor.
fn with_extra_layer(manifest: &Bytes, layer: &Digest, size: u64) -> Bytes {
    let mut doc: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    doc["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer.to_string(),
            "size": size,
        }));
    Bytes::from(serde_json::to_vec(&doc).unwrap())
}

async fn blobs_pushed_but_never_referenced_are_collected_with_their_links(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("scratch"));
    let data = Bytes::from_static(b"pushed, never used by a manifest");
    let d = Digest::sha256(&data);
    r.put_blob(&d, data.clone()).await.unwrap();
    let p = plan(&store, KEEP_UNTAGGED).await;
    assert_eq!((p.blobs, p.blobs_collected), (1, 1));
    assert_eq!(p.bytes_collected, data.len() as u64);
    assert_eq!(p.links_collected, 1);
    // Nothing else in it: the repository leaves the catalog.
    assert_eq!(p.repositories_emptied, 1);
}

async fn untagged_manifests_are_kept_unless_delete_untagged(b: TestBackend) {
    let store = store_on(&b);
    let (tagged, _) = push_image(&store, "app", "tagged", 1).await;
    let (untagged, untagged_blobs) = push_image(&store, "app", "untagged", 1).await;
    put_manifest(&store, "app", &tag("v1"), &tagged).await;
    put_manifest(&store, "app", &by_digest(&untagged), &untagged).await;

    let kept = plan(&store, KEEP_UNTAGGED).await;
    assert_eq!((kept.manifests_kept, kept.manifests_collected), (2, 0));
    assert_eq!(kept.blobs_collected, 0);

    let p = plan(&store, DELETE_UNTAGGED).await;
    assert_eq!((p.manifests_kept, p.manifests_collected), (1, 1));
    // The untagged manifest, its config and its layer.
    assert_eq!(p.blobs_collected, untagged_blobs.len() as u64 + 1);
    assert_eq!(p.links_collected, untagged_blobs.len() as u64);
}

async fn children_of_a_tagged_index_are_kept_with_their_layers_though_untagged(b: TestBackend) {
    let store = store_on(&b);
    let (amd64, amd64_blobs) = push_image(&store, "multi", "amd64", 2).await;
    let (arm64, arm64_blobs) = push_image(&store, "multi", "arm64", 2).await;
    put_manifest(&store, "multi", &by_digest(&amd64), &amd64).await;
    put_manifest(&store, "multi", &by_digest(&arm64), &arm64).await;
    put_index(&store, "multi", &tag("latest"), &[&amd64, &arm64]).await;
    let p = plan(&store, DELETE_UNTAGGED).await;
    assert_eq!((p.manifests, p.manifests_kept), (3, 3));
    assert_eq!(p.blobs_collected, 0);
    let all = amd64_blobs.len() + arm64_blobs.len() + 3;
    assert_eq!(p.blobs_marked, all as u64);
}

async fn referrers_of_a_kept_manifest_are_kept_and_of_a_collected_one_collected(b: TestBackend) {
    let store = store_on(&b);
    let (image, _) = push_image(&store, "app", "signed", 1).await;
    let (gone, _) = push_image(&store, "app", "unsigned", 1).await;
    let image_digest = put_manifest(&store, "app", &tag("v1"), &image).await;
    let gone_digest = put_manifest(&store, "app", &by_digest(&gone), &gone).await;
    let (_, signature) = push_referrer(
        &store,
        "app",
        &image_digest,
        image.len(),
        "application/sig",
        "s",
    )
    .await;
    // A referrer of the signature (an attestation of it), kept through it.
    push_referrer(&store, "app", &signature, 300, "application/sig", "c").await;
    push_referrer(
        &store,
        "app",
        &gone_digest,
        gone.len(),
        "application/sig",
        "o",
    )
    .await;
    let p = plan(&store, DELETE_UNTAGGED).await;
    // Kept: the image, its signature and the countersignature; collected: the untagged
    // image and its signature.
    assert_eq!((p.manifests, p.manifests_kept), (5, 3));
    assert_eq!(p.manifests_collected, 2);
    // The untagged image's manifest, config and layer, and its signature's manifest (the
    // empty config all artifacts share stays, through the kept signature).
    assert_eq!(p.blobs_collected, 4);
}

async fn a_segmented_blob_counts_its_whole_size(b: TestBackend) {
    let store = store_on(&b);
    let r = store.repository(repo("chunks"));
    let data = pattern(7, 3 * 1024 * 1024 + 17);
    let id = r.start_upload().await.unwrap().id;
    let mut offset = 0;
    for chunk in data.chunks(1024 * 1024) {
        r.append_upload(&id, offset, in_pieces(chunk, 64 * 1024))
            .await
            .unwrap();
        offset += chunk.len() as u64;
    }
    let digest = Digest::sha256(&data);
    r.commit_upload(&id, &digest, None).await.unwrap();
    let p = plan(&store, KEEP_UNTAGGED).await;
    assert_eq!((p.blobs, p.blobs_collected), (1, 1));
    assert_eq!(
        (p.bytes, p.bytes_collected),
        (data.len() as u64, data.len() as u64)
    );
}

async fn a_manifest_that_does_not_parse_stops_the_run_naming_it(b: TestBackend) {
    let store = store_on(&b);
    let (manifest, _) = push_image(&store, "app", "corrupt", 1).await;
    let digest = put_manifest(&store, "app", &tag("v1"), &manifest).await;
    let key = layerstore::layout::KeyLayout.blob_data(&digest);
    overwrite(&b, &key, Bytes::from_static(b"not a manifest")).await;
    let err = store
        .gc_plan(KEEP_UNTAGGED, &|_| {})
        .await
        .expect_err("a run that cannot read a manifest must not plan deletions");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains(&digest.to_string()), "{err}");
}

async fn overwrite(b: &TestBackend, key: &object_store::path::Path, bytes: Bytes) {
    use object_store::ObjectStoreExt;
    b.store.put(key, bytes.into()).await.unwrap();
}

async fn a_plan_changes_nothing(b: TestBackend) {
    let store = store_on(&b);
    let (old, _) = push_image(&store, "app", "old", 2).await;
    let digest = put_manifest(&store, "app", &tag("v1"), &old).await;
    store
        .repository(repo("app"))
        .delete_manifest(&digest)
        .await
        .unwrap();
    let before = keys(&b, "").await;
    let p = plan(&store, DELETE_UNTAGGED).await;
    assert!(p.blobs_collected > 0);
    assert_eq!(keys(&b, "").await, before);
}

async fn progress_reports_every_phase_with_growing_counts(b: TestBackend) {
    let store = store_on(&b);
    for name in ["a", "b", "c"] {
        let (m, _) = push_image(&store, name, name, 1).await;
        put_manifest(&store, name, &tag("v1"), &m).await;
    }
    let seen = std::sync::Mutex::new(Vec::new());
    store
        .gc_plan(KEEP_UNTAGGED, &|p| seen.lock().unwrap().push(*p))
        .await
        .unwrap();
    let seen = seen.into_inner().unwrap();
    use layerstore::gc::GcPhase;
    for phase in [GcPhase::Mark, GcPhase::Scan, GcPhase::Links] {
        assert!(seen.iter().any(|p| p.phase == phase), "{phase:?}: {seen:?}");
    }
    let last = seen.last().unwrap();
    assert_eq!((last.repositories, last.repositories_total), (3, 3));
    assert_eq!((last.manifests, last.blobs), (3, 9));
}

backend_tests!(
    a_store_where_every_blob_is_referenced_collects_nothing,
    layers_of_a_deleted_manifest_are_collected_unless_another_manifest_uses_them,
    blobs_pushed_but_never_referenced_are_collected_with_their_links,
    untagged_manifests_are_kept_unless_delete_untagged,
    children_of_a_tagged_index_are_kept_with_their_layers_though_untagged,
    referrers_of_a_kept_manifest_are_kept_and_of_a_collected_one_collected,
    a_segmented_blob_counts_its_whole_size,
    a_manifest_that_does_not_parse_stops_the_run_naming_it,
    a_plan_changes_nothing,
    progress_reports_every_phase_with_growing_counts,
);
