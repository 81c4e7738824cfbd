//! `Manifest::parse` on arbitrary bodies.
//!
//! The first input byte picks the declared content type (none, `application/json`, or one of
//! the four manifest media types); the rest is the body. Then:
//! - a refusal is always `ManifestInvalid` (also for a bad digest inside a descriptor), and
//!   refusing is deterministic;
//! - an accepted manifest keeps the exact bytes, and its digest is the SHA-256 of those bytes;
//! - its media type is the one of its kind, and is the declared one when a manifest media type
//!   was declared;
//! - every descriptor digest prints in a form that parses back to the same digest;
//! - parsing is deterministic: parsing the same input again gives the same media type, kind and
//!   descriptors.
#![no_main]

use bytes::Bytes;
use layerstore::manifest::media_type;
use layerstore::{Descriptor, Digest, ErrorKind, Manifest, ManifestKind};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some("application/json"),
    Some(media_type::OCI_MANIFEST),
    Some(media_type::OCI_INDEX),
    Some(media_type::DOCKER_MANIFEST),
    Some(media_type::DOCKER_MANIFEST_LIST),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let body = Bytes::copy_from_slice(body);

    let first = Manifest::parse(body.clone(), content_type);
    let second = Manifest::parse(body.clone(), content_type);
    let (m, again) = match (first, second) {
        (Ok(m), Ok(again)) => (m, again),
        (Err(e), Err(_)) => {
            assert_eq!(e.kind(), ErrorKind::ManifestInvalid, "wrong kind: {e}");
            return;
        }
        (first, second) => panic!(
            "parsing is not deterministic: {:?} then {:?}",
            first.map(|m| m.digest),
            second.map(|m| m.digest)
        ),
    };

    assert_eq!(m.bytes, body, "the manifest does not keep the exact bytes");
    assert_eq!(
        m.digest,
        Digest::sha256(&body),
        "digest is not over the bytes"
    );

    let kind_media_type = match m.kind {
        ManifestKind::OciManifest => media_type::OCI_MANIFEST,
        ManifestKind::OciIndex => media_type::OCI_INDEX,
        ManifestKind::DockerManifest => media_type::DOCKER_MANIFEST,
        ManifestKind::DockerManifestList => media_type::DOCKER_MANIFEST_LIST,
    };
    assert_eq!(
        m.media_type, kind_media_type,
        "media type disagrees with kind"
    );
    if let Some(declared) = content_type.filter(|&t| t != "application/json") {
        assert_eq!(
            m.media_type, declared,
            "media type disagrees with the declared one"
        );
    }

    for d in descriptors(&m) {
        let printed = d.digest.to_string();
        assert_eq!(Digest::parse(&printed).unwrap(), d.digest, "{printed}");
    }

    assert_eq!(again.digest, m.digest);
    assert_eq!(again.media_type, m.media_type);
    assert_eq!(again.kind, m.kind);
    assert_eq!(again.artifact_type, m.artifact_type);
    assert_eq!(again.config, m.config);
    assert_eq!(again.layers, m.layers);
    assert_eq!(again.manifests, m.manifests);
    assert_eq!(again.subject, m.subject);
    assert_eq!(again.annotations, m.annotations);
});

fn descriptors(m: &Manifest) -> impl Iterator<Item = &Descriptor> {
    m.config
        .iter()
        .chain(&m.layers)
        .chain(&m.manifests)
        .chain(&m.subject)
}
