//! Images and artifacts pushed through the store API, for suites that need real manifests.

use bytes::Bytes;
use layerstore::manifest::media_type;
use layerstore::{Digest, Reference, Store, Tag};
use serde_json::json;

use super::repo;

/// A tag reference.
pub fn tag(t: &str) -> Reference {
    Reference::Tag(Tag::parse(t).unwrap())
}

/// Pushes a config and `layers` layers into `name`, returns an OCI manifest over them.
pub async fn push_image(
    store: &Store,
    name: &str,
    seed: &str,
    layers: usize,
) -> (Bytes, Vec<Digest>) {
    let r = store.repository(repo(name));
    let config = Bytes::from(format!("{{\"seed\":\"{seed}\"}}"));
    let config_digest = Digest::sha256(&config);
    r.put_blob(&config_digest, config.clone()).await.unwrap();
    let mut digests = vec![config_digest];
    let mut layer_descs = vec![];
    for i in 0..layers {
        let data = Bytes::from(format!("layer {i} of {seed}").repeat(100));
        let d = Digest::sha256(&data);
        r.put_blob(&d, data.clone()).await.unwrap();
        digests.push(d);
        layer_descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.to_string(),
            "size": data.len(),
        }));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": layer_descs,
    });
    (Bytes::from(serde_json::to_vec(&manifest).unwrap()), digests)
}

/// An artifact manifest (empty config, no layers) whose subject is `subject`.
pub async fn push_referrer(
    store: &Store,
    name: &str,
    subject: &Digest,
    subject_size: usize,
    artifact_type: &str,
    note: &str,
) -> (Bytes, Digest) {
    let r = store.repository(repo(name));
    let empty = Bytes::from_static(b"{}");
    let empty_digest = Digest::sha256(&empty);
    r.put_blob(&empty_digest, empty).await.unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": media_type::OCI_EMPTY, "digest": empty_digest.to_string(), "size": 2},
        "layers": [],
        "subject": {"mediaType": media_type::OCI_MANIFEST, "digest": subject.to_string(), "size": subject_size},
        "annotations": {"note": note},
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let digest = Digest::sha256(&bytes);
    let put = r
        .put_manifest(
            &Reference::Digest(digest),
            bytes.clone(),
            Some(media_type::OCI_MANIFEST),
        )
        .await
        .unwrap();
    assert_eq!(put.subject, Some(*subject));
    (bytes, digest)
}

/// Puts `bytes` (an OCI image manifest) into `name` under `reference`; returns its digest.
pub async fn put_manifest(
    store: &Store,
    name: &str,
    reference: &Reference,
    bytes: &Bytes,
) -> Digest {
    store
        .repository(repo(name))
        .put_manifest(reference, bytes.clone(), Some(media_type::OCI_MANIFEST))
        .await
        .unwrap()
        .digest
}

/// Puts an OCI index over `children` (manifest bytes already in `name`) under `reference`.
pub async fn put_index(
    store: &Store,
    name: &str,
    reference: &Reference,
    children: &[&Bytes],
) -> Digest {
    let manifests: Vec<_> = children
        .iter()
        .map(|c| json!({"mediaType": media_type::OCI_MANIFEST, "digest": Digest::sha256(c).to_string(), "size": c.len(), "platform": {"architecture": "amd64", "os": "linux"}}))
        .collect();
    let index =
        json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": manifests});
    let bytes = Bytes::from(serde_json::to_vec(&index).unwrap());
    store
        .repository(repo(name))
        .put_manifest(reference, bytes, Some(media_type::OCI_INDEX))
        .await
        .unwrap()
        .digest
}
