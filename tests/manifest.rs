//! Behaviour of `Manifest::parse`, one behaviour per test.
//!
//! The realistic documents are the fuzzing seeds in `fuzz/corpus/manifest/`, loaded with
//! `include_bytes!` so that the corpus and these tests cannot drift apart.

use bytes::Bytes;
use layerstore::manifest::{MAX_MANIFEST_SIZE, Role, media_type};
use layerstore::{Digest, Error, ErrorKind, Manifest, ManifestKind};
use proptest::prelude::*;

const OCI_MANIFEST: &[u8] = include_bytes!("../fuzz/corpus/manifest/oci-manifest.json");
const OCI_MANIFEST_WITHOUT_MEDIA_TYPE: &[u8] =
    include_bytes!("../fuzz/corpus/manifest/oci-manifest-without-media-type.json");
const OCI_INDEX: &[u8] = include_bytes!("../fuzz/corpus/manifest/oci-index.json");
const OCI_INDEX_WITH_ATTESTATION: &[u8] =
    include_bytes!("../fuzz/corpus/manifest/oci-index-with-attestation.json");
const DOCKER_MANIFEST: &[u8] = include_bytes!("../fuzz/corpus/manifest/docker-manifest.json");
const DOCKER_MANIFEST_LIST: &[u8] =
    include_bytes!("../fuzz/corpus/manifest/docker-manifest-list.json");
const OCI_ARTIFACT_WITH_SUBJECT: &[u8] =
    include_bytes!("../fuzz/corpus/manifest/oci-artifact-with-subject.json");
const OCI_ARTIFACT_WITHOUT_LAYERS: &[u8] =
    include_bytes!("../fuzz/corpus/manifest/oci-artifact-without-layers.json");

/// Every seed with the kind it must parse as (when nothing is declared).
const SEEDS: &[(&str, &[u8], ManifestKind)] = &[
    ("oci-manifest", OCI_MANIFEST, ManifestKind::OciManifest),
    (
        "oci-manifest-without-media-type",
        OCI_MANIFEST_WITHOUT_MEDIA_TYPE,
        ManifestKind::OciManifest,
    ),
    ("oci-index", OCI_INDEX, ManifestKind::OciIndex),
    (
        "oci-index-with-attestation",
        OCI_INDEX_WITH_ATTESTATION,
        ManifestKind::OciIndex,
    ),
    (
        "docker-manifest",
        DOCKER_MANIFEST,
        ManifestKind::DockerManifest,
    ),
    (
        "docker-manifest-list",
        DOCKER_MANIFEST_LIST,
        ManifestKind::DockerManifestList,
    ),
    (
        "oci-artifact-with-subject",
        OCI_ARTIFACT_WITH_SUBJECT,
        ManifestKind::OciManifest,
    ),
    (
        "oci-artifact-without-layers",
        OCI_ARTIFACT_WITHOUT_LAYERS,
        ManifestKind::OciManifest,
    ),
];

const EMPTY_CONFIG_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

fn parse(body: &'static [u8], content_type: Option<&str>) -> Manifest {
    Manifest::parse(Bytes::from_static(body), content_type)
        .unwrap_or_else(|e| panic!("refused: {e}"))
}

fn refusal(body: impl Into<Bytes>, content_type: Option<&str>) -> String {
    match Manifest::parse(body.into(), content_type) {
        Ok(m) => panic!("accepted as {:?}", m.kind),
        Err(Error::ManifestInvalid { reason }) => reason,
        Err(other) => panic!("expected ManifestInvalid, got {:?}: {other}", other.kind()),
    }
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

fn platform_of(d: &layerstore::Descriptor) -> (&str, &str, Option<&str>) {
    let p = d.platform.as_ref().expect("platform");
    (
        p["architecture"].as_str().unwrap(),
        p["os"].as_str().unwrap(),
        p.get("variant").and_then(|v| v.as_str()),
    )
}

// --- The four kinds -------------------------------------------------------------------------

#[test]
fn oci_image_manifest_exposes_config_layers_and_annotations() {
    let m = parse(OCI_MANIFEST, Some(media_type::OCI_MANIFEST));
    assert_eq!(m.kind, ManifestKind::OciManifest);
    assert_eq!(m.media_type, media_type::OCI_MANIFEST);

    let config = m.config.as_ref().expect("config");
    assert_eq!(
        config.media_type,
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(
        config.digest,
        digest("sha256:b79606fb3afea5bd1609ed40b622142f1c98125abcfe89a76a661b0e8e343910")
    );
    assert_eq!(config.size, 1472);

    let sizes: Vec<u64> = m.layers.iter().map(|l| l.size).collect();
    assert_eq!(sizes, [3_623_807, 29_124_523, 412]);
    assert_eq!(
        m.layers[2].media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        m.layers[2].annotations.as_ref().unwrap()["org.opencontainers.image.title"],
        "app-config.tar"
    );
    assert!(m.layers[0].annotations.is_none());

    let annotations = m.annotations.as_ref().expect("annotations");
    assert_eq!(annotations.len(), 3);
    assert_eq!(
        annotations["org.opencontainers.image.revision"],
        "4f1c2a9e0d7b"
    );
    assert!(m.manifests.is_empty() && m.subject.is_none() && m.artifact_type.is_none());
}

#[test]
fn oci_index_children_come_back_with_platforms() {
    let m = parse(OCI_INDEX, None);
    assert_eq!(m.kind, ManifestKind::OciIndex);
    assert!(m.config.is_none() && m.layers.is_empty());
    assert_eq!(m.manifests.len(), 2);
    assert_eq!(platform_of(&m.manifests[0]), ("amd64", "linux", None));
    assert_eq!(platform_of(&m.manifests[1]), ("arm64", "linux", Some("v8")));
    assert_eq!(
        m.manifests[1].digest,
        digest("sha256:8e7bbfbd93d2603dd508963c49e0addba874e02446ef08d9bc36485b95677b0d")
    );
    assert_eq!(
        m.annotations.as_ref().unwrap()["org.opencontainers.image.ref.name"],
        "1.4.2"
    );
}

#[test]
fn index_children_keep_their_own_annotations() {
    let m = parse(OCI_INDEX_WITH_ATTESTATION, None);
    let attestation = &m.manifests[1];
    assert_eq!(platform_of(attestation), ("unknown", "unknown", None));
    assert_eq!(
        attestation.annotations.as_ref().unwrap()["vnd.docker.reference.type"],
        "attestation-manifest"
    );
}

#[test]
fn docker_schema2_manifest_is_recognised_from_its_body() {
    let m = parse(DOCKER_MANIFEST, None);
    assert_eq!(m.kind, ManifestKind::DockerManifest);
    assert_eq!(m.media_type, media_type::DOCKER_MANIFEST);
    assert_eq!(
        m.config.as_ref().unwrap().media_type,
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(m.layers.len(), 2);
    assert_eq!(m.layers[0].size, 31_357_624);
}

#[test]
fn docker_manifest_list_children_come_back_with_platforms() {
    let m = parse(DOCKER_MANIFEST_LIST, Some(media_type::DOCKER_MANIFEST_LIST));
    assert_eq!(m.kind, ManifestKind::DockerManifestList);
    let platforms: Vec<_> = m.manifests.iter().map(platform_of).collect();
    assert_eq!(
        platforms,
        [
            ("amd64", "linux", None),
            ("arm64", "linux", Some("v8")),
            ("s390x", "linux", None)
        ]
    );
    assert!(
        m.manifests
            .iter()
            .all(|c| c.media_type == media_type::DOCKER_MANIFEST && c.size == 529)
    );
}

#[test]
fn oci_artifact_keeps_artifact_type_subject_and_empty_config() {
    let m = parse(OCI_ARTIFACT_WITH_SUBJECT, None);
    assert_eq!(m.artifact_type.as_deref(), Some("application/spdx+json"));
    let config = m.config.as_ref().unwrap();
    assert_eq!(config.media_type, media_type::OCI_EMPTY);
    assert_eq!(config.digest, digest(EMPTY_CONFIG_DIGEST));
    assert_eq!(config.digest, Digest::sha256(b"{}"));
    assert_eq!(config.size, 2);
    let subject = m.subject.as_ref().expect("subject");
    assert_eq!(subject.media_type, media_type::OCI_MANIFEST);
    assert_eq!(subject.size, 1403);
    assert_eq!(m.layers[0].media_type, "application/spdx+json");
}

#[test]
fn artifact_with_an_empty_layers_array_is_accepted() {
    let m = parse(OCI_ARTIFACT_WITHOUT_LAYERS, None);
    assert!(m.layers.is_empty());
    assert_eq!(
        m.artifact_type.as_deref(),
        Some("application/vnd.example.signature.v1")
    );
    assert_eq!(
        m.subject.as_ref().unwrap().media_type,
        media_type::OCI_INDEX
    );
}

#[test]
fn every_seed_in_the_fuzz_corpus_parses_as_its_kind() {
    for &(name, body, kind) in SEEDS {
        let m = Manifest::parse(Bytes::from_static(body), None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.kind, kind, "{name}");
    }
}

// --- Bytes and digest -----------------------------------------------------------------------

#[test]
fn digest_is_sha256_of_the_exact_bytes_received() {
    let m = parse(OCI_MANIFEST, None);
    assert_eq!(m.digest, Digest::sha256(OCI_MANIFEST));
    assert_eq!(&m.bytes[..], OCI_MANIFEST);

    // The same document, formatted differently, is a different manifest.
    let compact = parse(OCI_MANIFEST_WITHOUT_MEDIA_TYPE, None);
    let mut spaced = compact.bytes.to_vec();
    spaced.push(b'\n');
    let spaced = Manifest::parse(Bytes::from(spaced), None).unwrap();
    assert_ne!(spaced.digest, compact.digest);
    assert_eq!(spaced.layers, compact.layers);
}

#[test]
fn body_is_kept_without_copying() {
    let body = Bytes::from_static(DOCKER_MANIFEST);
    let m = Manifest::parse(body.clone(), None).unwrap();
    assert_eq!(m.bytes.as_ptr(), body.as_ptr());
    assert_eq!(m.bytes.len(), body.len());
}

// --- Declared type vs body ------------------------------------------------------------------

#[test]
fn declared_type_agreeing_with_body_is_accepted() {
    for &(name, body, kind) in SEEDS {
        let m = Manifest::parse(Bytes::from_static(body), Some(kind.media_type()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.kind, kind, "{name}");
    }
}

#[test]
fn declared_type_parameters_and_case_are_ignored() {
    let m = parse(
        DOCKER_MANIFEST,
        Some("application/vnd.docker.distribution.manifest.V2+json; charset=utf-8"),
    );
    assert_eq!(m.kind, ManifestKind::DockerManifest);
}

#[test]
fn generic_declared_type_defers_to_the_body() {
    for generic in ["application/json", "application/json; charset=utf-8", ""] {
        assert_eq!(
            parse(OCI_INDEX, Some(generic)).kind,
            ManifestKind::OciIndex,
            "{generic:?}"
        );
    }
}

#[test]
fn body_without_media_type_takes_the_declared_oci_type() {
    let m = parse(
        OCI_MANIFEST_WITHOUT_MEDIA_TYPE,
        Some(media_type::OCI_MANIFEST),
    );
    assert_eq!(m.kind, ManifestKind::OciManifest);
    assert_eq!(m.media_type, media_type::OCI_MANIFEST);
}

#[test]
fn without_any_media_type_config_and_layers_make_an_oci_manifest() {
    let m = parse(OCI_MANIFEST_WITHOUT_MEDIA_TYPE, None);
    assert_eq!(m.kind, ManifestKind::OciManifest);
    assert_eq!(m.layers[0].size, 2_811_478);
}

#[test]
fn without_any_media_type_a_manifests_array_makes_an_oci_index() {
    let body = r#"{"schemaVersion":2,"manifests":[]}"#;
    let m = Manifest::parse(Bytes::from_static(body.as_bytes()), None).unwrap();
    assert_eq!(m.kind, ManifestKind::OciIndex);
    assert!(m.manifests.is_empty());
}

#[test]
fn declared_type_disagreeing_with_body_is_refused() {
    let reason = refusal(
        Bytes::from_static(OCI_MANIFEST),
        Some(media_type::OCI_INDEX),
    );
    assert_eq!(
        reason,
        format!(
            "declared content type \"{}\" disagrees with mediaType \"{}\" in the body",
            media_type::OCI_INDEX,
            media_type::OCI_MANIFEST
        )
    );
}

#[test]
fn docker_declared_type_requires_media_type_in_the_body() {
    let reason = refusal(
        Bytes::from_static(OCI_MANIFEST_WITHOUT_MEDIA_TYPE),
        Some(media_type::DOCKER_MANIFEST),
    );
    assert!(
        reason.contains("requires mediaType in the body"),
        "{reason}"
    );
}

// --- Leniency where the specs want it -------------------------------------------------------

#[test]
fn unknown_fields_are_ignored() {
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","futureField":{{"x":[1,2,{{}}]}},
            "manifests":[{{"mediaType":"{}","digest":"{EMPTY_CONFIG_DIGEST}","size":2,
                           "urls":["https://example.com/x"],"data":"e30=","newThing":true}}]}}"#,
        media_type::OCI_INDEX,
        media_type::OCI_MANIFEST
    );
    let m = Manifest::parse(Bytes::from(body), None).unwrap();
    assert_eq!(m.manifests.len(), 1);
}

#[test]
fn null_optional_fields_count_as_absent() {
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":null,"artifactType":null,"annotations":null,"subject":null,
            "config":{{"mediaType":"{}","digest":"{EMPTY_CONFIG_DIGEST}","size":2,"annotations":null,"platform":null}},
            "layers":[]}}"#,
        media_type::OCI_EMPTY
    );
    let m = Manifest::parse(Bytes::from(body), None).unwrap();
    assert_eq!(m.kind, ManifestKind::OciManifest);
    assert!(m.annotations.is_none() && m.subject.is_none() && m.artifact_type.is_none());
}

#[test]
fn sha512_descriptor_digests_are_accepted() {
    let sha512 = Digest::compute(layerstore::Algorithm::Sha512, b"layer");
    let body = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{EMPTY_CONFIG_DIGEST}","size":2}},
            "layers":[{{"mediaType":"application/octet-stream","digest":"{sha512}","size":5}}]}}"#,
        media_type::OCI_EMPTY
    );
    let m = Manifest::parse(Bytes::from(body), None).unwrap();
    assert_eq!(m.layers[0].digest, sha512);
}

#[test]
fn sizes_up_to_i64_max_are_accepted() {
    let body = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{EMPTY_CONFIG_DIGEST}","size":9223372036854775807}},"layers":[]}}"#,
        media_type::OCI_EMPTY
    );
    let m = Manifest::parse(Bytes::from(body), None).unwrap();
    assert_eq!(m.config.unwrap().size, i64::MAX.unsigned_abs());
}

#[test]
fn manifest_of_exactly_4_mib_is_accepted_and_one_byte_more_is_not() {
    let mut body = OCI_MANIFEST.to_vec();
    body.resize(MAX_MANIFEST_SIZE, b' ');
    Manifest::parse(Bytes::from(body.clone()), None).unwrap();
    body.push(b' ');
    let reason = refusal(body, None);
    assert!(reason.contains("over the limit"), "{reason}");
}

// --- References -----------------------------------------------------------------------------

#[test]
fn references_list_every_descriptor_with_its_role() {
    let artifact = parse(OCI_ARTIFACT_WITH_SUBJECT, None);
    let roles: Vec<Role> = artifact.references().map(|(role, _)| role).collect();
    assert_eq!(roles, [Role::Config, Role::Layer, Role::Subject]);
    let (_, subject) = artifact.references().last().unwrap();
    assert_eq!(Some(subject), artifact.subject.as_ref());

    let index = parse(DOCKER_MANIFEST_LIST, None);
    let children: Vec<(Role, Digest)> = index.references().map(|(r, d)| (r, d.digest)).collect();
    assert_eq!(children.len(), 3);
    assert!(children.iter().all(|(role, _)| *role == Role::Manifest));
    assert_eq!(children[2].1, index.manifests[2].digest);

    let image = parse(OCI_MANIFEST, None);
    assert_eq!(image.references().count(), 4);
}

#[test]
fn descriptors_serialize_back_in_oci_form() {
    let m = parse(OCI_INDEX, None);
    let json = serde_json::to_value(&m.manifests[1]).unwrap();
    let original: serde_json::Value = serde_json::from_slice(OCI_INDEX).unwrap();
    assert_eq!(json, original["manifests"][1]);
}

// --- Bad input ------------------------------------------------------------------------------

#[test]
fn errors_carry_the_manifest_invalid_code() {
    let err = Manifest::parse(Bytes::from_static(b"{}"), None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ManifestInvalid);
    assert_eq!(err.code(), Some("MANIFEST_INVALID"));
    assert!(err.to_string().starts_with("manifest invalid: "), "{err}");
}

#[test]
fn deeply_nested_json_is_a_clean_error_wherever_it_is() {
    let n = 100_000;
    let open = "[".repeat(n);
    let close = "]".repeat(n);
    for (body, expected) in [
        (open.clone(), "must be a JSON object"),
        (
            format!(r#"{{"schemaVersion":2,"x":{open}"#),
            "not valid JSON",
        ),
        (
            format!(r#"{{"schemaVersion":2,"layers":{open}"#),
            "not valid JSON",
        ),
        (
            format!(r#"{{"schemaVersion":2,"manifests":[{{"platform":{{"os":{open}"#),
            "nested too deeply",
        ),
        (
            format!(r#"{{"schemaVersion":2,"manifests":{open}{close}}}"#),
            "manifests[0] must be a descriptor object, got an array",
        ),
        (
            format!(r#"{{"schemaVersion":2,"annotations":{{"a":{open}{close}}},"manifests":[]}}"#),
            r#"the value of "a" is an array"#,
        ),
    ] {
        let reason = refusal(body, None);
        assert!(reason.contains(expected), "{expected:?} not in {reason:?}");
        assert!(
            reason.len() < 500,
            "reason is too long: {} bytes",
            reason.len()
        );
    }
}

#[test]
fn every_truncation_of_a_seed_is_refused_cleanly() {
    for &(name, body, _) in SEEDS {
        let end = body.iter().rposition(|&b| b == b'}').unwrap();
        for len in 0..end {
            let reason = refusal(Bytes::from_static(&body[..len]), None);
            assert!(!reason.is_empty(), "{name}[..{len}]");
        }
    }
}

/// The body of a row in the table below.
enum Body {
    /// JSON text. Tokens make the rows shorter: `<config>` and `<layer>` are valid image
    /// descriptors, `<child>` a valid index child, `<sha256>` a valid digest.
    Text(&'static str),
    /// Raw bytes, for what text cannot hold.
    Bytes(&'static [u8]),
    /// Built by a function, for bodies too big to write out.
    Made(fn() -> Vec<u8>),
}

const SHA256: &str = "sha256:b79606fb3afea5bd1609ed40b622142f1c98125abcfe89a76a661b0e8e343910";

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Text(text) => text
                .replace(
                    "<config>",
                    r#"{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"<sha256>","size":1472}"#,
                )
                .replace(
                    "<layer>",
                    r#"{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"<sha256>","size":3623807}"#,
                )
                .replace(
                    "<child>",
                    r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"<sha256>","size":1089}"#,
                )
                .replace("<sha256>", SHA256)
                .into_bytes(),
            Self::Bytes(bytes) => bytes.to_vec(),
            Self::Made(make) => make(),
        }
    }
}

fn one_byte_over_the_limit() -> Vec<u8> {
    let mut body = OCI_MANIFEST.to_vec();
    body.resize(MAX_MANIFEST_SIZE + 1, b' ');
    body
}

fn arrays_nested_100_000_deep() -> Vec<u8> {
    "[".repeat(100_000).into_bytes()
}

fn platform_nested_100_000_deep() -> Vec<u8> {
    let mut body = br#"{"schemaVersion":2,"manifests":[{"platform":{"os":"#.to_vec();
    body.resize(body.len() + 100_000, b'[');
    body
}

const OCI_MANIFEST_TYPE: Option<&str> = Some("application/vnd.oci.image.manifest.v1+json");
const OCI_INDEX_TYPE: Option<&str> = Some("application/vnd.oci.image.index.v1+json");
const DOCKER_MANIFEST_TYPE: Option<&str> =
    Some("application/vnd.docker.distribution.manifest.v2+json");

/// Bad manifests, each refused as `MANIFEST_INVALID` with a reason containing the last column:
/// (what is wrong, declared content type, body, part of the reason).
#[rustfmt::skip]
const BAD_MANIFESTS: &[(&str, Option<&str>, Body, &str)] = &[
    // Size, checked before anything is parsed.
    ("body over 4 MiB", None, Body::Made(one_byte_over_the_limit),
        "manifest is 4194305 bytes, over the limit of 4194304 bytes (4 MiB)"),

    // Not a JSON object.
    ("empty body", None, Body::Text(""), "manifest body is empty"),
    ("only whitespace", None, Body::Text(" \n\t"), "manifest body is only whitespace"),
    ("HTML instead of JSON", None, Body::Text("<html>404</html>"), "manifest is not JSON: it starts with '<'"),
    ("a JSON array", None, Body::Text(r#"[{"schemaVersion":2}]"#), "must be a JSON object, but the body starts like an array"),
    ("a JSON string", None, Body::Text(r#""{\"schemaVersion\":2}""#), "must be a JSON object, but the body starts like a string"),
    ("100,000 nested arrays", None, Body::Made(arrays_nested_100_000_deep), "must be a JSON object"),
    ("truncated object", None, Body::Text(r#"{"schemaVersion":2,"layers":["#), "manifest is not valid JSON: EOF while parsing"),
    ("trailing characters", None, Body::Text(r#"{"schemaVersion":2,"layers":[],"config":<config>} {}"#), "manifest is not valid JSON: trailing characters"),
    ("invalid UTF-8 in a string", None, Body::Bytes(b"{\"schemaVersion\":2,\"mediaType\":\"\xff\"}"), "manifest is not valid JSON"),
    ("nesting past 128 levels", None, Body::Made(platform_nested_100_000_deep), "nested too deeply (the limit is 128 levels)"),
    ("a field given twice", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[],"layers":[<layer>]}"#), "duplicate field `layers`"),

    // schemaVersion.
    ("no schemaVersion", None, Body::Text(r#"{"config":<config>,"layers":[]}"#), "schemaVersion is missing; it must be 2"),
    ("Docker schema1", None, Body::Text(r#"{"schemaVersion":1,"name":"library/busybox","tag":"1.36","fsLayers":[],"signatures":[]}"#), "schemaVersion 1 is Docker schema1, which is unsupported"),
    ("schemaVersion 3", None, Body::Text(r#"{"schemaVersion":3,"config":<config>,"layers":[]}"#), "schemaVersion must be 2, got 3"),
    ("schemaVersion as a string", None, Body::Text(r#"{"schemaVersion":"2","config":<config>,"layers":[]}"#), "schemaVersion must be the number 2, got the string \"2\""),
    ("schemaVersion 2.0", None, Body::Text(r#"{"schemaVersion":2.0,"config":<config>,"layers":[]}"#), "schemaVersion must be the integer 2, got 2.0"),

    // Declared content type and body mediaType.
    ("declared index, body says manifest", OCI_INDEX_TYPE, Body::Text(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":<config>,"layers":[]}"#),
        "declared content type \"application/vnd.oci.image.index.v1+json\" disagrees with mediaType \"application/vnd.oci.image.manifest.v1+json\" in the body"),
    ("declared Docker with parameters, body says OCI", Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"), Body::Text(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":<config>,"layers":[]}"#),
        "disagrees with mediaType \"application/vnd.oci.image.manifest.v1+json\""),
    ("declared type is not a manifest type", Some("text/plain"), Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[]}"#),
        "declared content type \"text/plain\" is not a manifest media type"),
    ("declared type is a config blob type", Some("application/vnd.oci.image.config.v1+json"), Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[]}"#),
        "declared content type \"application/vnd.oci.image.config.v1+json\" is not a manifest media type"),
    ("declared Docker schema1", Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), Body::Text(r#"{"schemaVersion":1}"#),
        "is Docker schema1, which is unsupported"),
    ("body mediaType is not a manifest type", None, Body::Text(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.layer.v1.tar","config":<config>,"layers":[]}"#),
        "mediaType \"application/vnd.oci.image.layer.v1.tar\" in the body is not a manifest media type"),
    ("body mediaType is a number", None, Body::Text(r#"{"schemaVersion":2,"mediaType":2,"config":<config>,"layers":[]}"#), "mediaType must be a string, got a number"),
    ("declared Docker type, body has no mediaType", DOCKER_MANIFEST_TYPE, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[<layer>]}"#),
        "is a Docker type, which requires mediaType in the body, but the body has none"),
    ("no type anywhere and no recognisable shape", None, Body::Text(r#"{"schemaVersion":2,"annotations":{"a":"b"}}"#), "cannot tell what the document is"),

    // Shape: manifest or index, not both, not neither.
    ("manifest type with a manifests array", None, Body::Text(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[<child>]}"#),
        "application/vnd.oci.image.manifest.v1+json document has a manifests array, which only an index may have"),
    ("index type with layers", None, Body::Text(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[<child>],"layers":[<layer>]}"#),
        "application/vnd.oci.image.index.v1+json document has config/layers, which only an image manifest may have"),
    ("no type, both manifests and layers", None, Body::Text(r#"{"schemaVersion":2,"manifests":[<child>],"layers":[<layer>]}"#),
        "has both manifests and config/layers, so it is neither an image manifest nor an index"),
    ("manifest without config", OCI_MANIFEST_TYPE, Body::Text(r#"{"schemaVersion":2,"layers":[<layer>]}"#), "image manifest has no config"),
    ("manifest without layers", OCI_MANIFEST_TYPE, Body::Text(r#"{"schemaVersion":2,"config":<config>}"#), "image manifest has no layers array"),
    ("layers is an object", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":{"0":<layer>}}"#), "layers must be an array, got an object"),
    ("index without manifests", OCI_INDEX_TYPE, Body::Text(r#"{"schemaVersion":2,"annotations":{"a":"b"}}"#), "image index has no manifests array"),
    ("manifest list with null manifests", None, Body::Text(r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":null}"#),
        "image index has no manifests array"),
    ("manifests is a string", None, Body::Text(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":"none"}"#), "manifests must be an array, got a string"),
    ("config is a string", None, Body::Text(r#"{"schemaVersion":2,"config":"<sha256>","layers":[]}"#), "config must be a descriptor object, got a string"),
    ("a null layer", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[<layer>,null]}"#), "layers[1] is null; expected a descriptor object"),

    // Descriptor digests.
    ("layer digest too short", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:abc","size":1}]}"#),
        "layers[0].digest is invalid: \"sha256:abc\": sha256 needs 64 hex characters, got 3"),
    ("config digest in upper case", None, Body::Text(r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:B79606FB3AFEA5BD1609ED40B622142F1C98125ABCFE89A76A661B0E8E343910","size":1},"layers":[]}"#),
        "config.digest is invalid: \"sha256:B79606FB3AFEA5BD1609ED40B622142F1C98125ABCFE89A76A661B0E8E343910\": encoded part must be lowercase hex"),
    ("child digest without algorithm", None, Body::Text(r#"{"schemaVersion":2,"manifests":[<child>,{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"b79606fb3afea5bd1609ed40b622142f1c98125abcfe89a76a661b0e8e343910","size":1}]}"#),
        "manifests[1].digest is invalid: \"b79606fb3afea5bd1609ed40b622142f1c98125abcfe89a76a661b0e8e343910\": missing ':'"),
    ("sha512 digest of sha256 length", None, Body::Text(r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha512:b79606fb3afea5bd1609ed40b622142f1c98125abcfe89a76a661b0e8e343910","size":1}]}"#),
        "manifests[0].digest is invalid: \"sha512:b79606fb3afea5bd1609ed40b622142f1c98125abcfe89a76a661b0e8e343910\": sha512 needs 128 hex characters, got 64"),
    ("subject digest of an unsupported algorithm", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"md5:d41d8cd98f00b204e9800998ecf8427e","size":1}}"#),
        "subject.digest uses an unsupported digest algorithm \"md5\" (supported: sha256, sha512)"),
    ("layer without digest", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":1}]}"#), "layers[0] has no digest"),
    ("digest as a number", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":256,"size":1}]}"#), "layers[0].digest must be a string, got a number"),

    // Descriptor sizes.
    ("negative size", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[<layer>,{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"<sha256>","size":-1}]}"#), "layers[1].size is negative (-1)"),
    ("fractional size", None, Body::Text(r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"<sha256>","size":1.5},"layers":[]}"#), "config.size is fractional (1.5)"),
    ("size in exponent notation", None, Body::Text(r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"<sha256>","size":1e3},"layers":[]}"#), "config.size must be written as an integer, got 1000.0"),
    ("size one over i64::MAX", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"<sha256>","size":9223372036854775808}]}"#),
        "layers[0].size 9223372036854775808 is over the maximum of 9223372036854775807 (i64::MAX)"),
    ("size beyond u64", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"<sha256>","size":123456789012345678901234567890}]}"#),
        "is over the maximum of 9223372036854775807 (i64::MAX)"),
    ("size as a string", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"<sha256>","size":"1"}]}"#), "layers[0].size must be a number, got a string"),
    ("missing size", None, Body::Text(r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"<sha256>"},"layers":[]}"#), "config has no size"),

    // Descriptor media types and other fields.
    ("child without mediaType", None, Body::Text(r#"{"schemaVersion":2,"manifests":[<child>,{"digest":"<sha256>","size":1089}]}"#), "manifests[1] has no mediaType (required in every descriptor)"),
    ("empty descriptor mediaType", None, Body::Text(r#"{"schemaVersion":2,"config":{"mediaType":"","digest":"<sha256>","size":1},"layers":[]}"#), "config.mediaType is empty"),
    ("descriptor mediaType as an object", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[{"mediaType":{},"digest":"<sha256>","size":1}]}"#), "layers[0].mediaType must be a string, got an object"),
    ("artifactType as a number", None, Body::Text(r#"{"schemaVersion":2,"artifactType":1,"config":<config>,"layers":[]}"#), "artifactType must be a string, got a number"),
    ("annotation value as a number", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[],"annotations":{"build":42}}"#),
        "annotations must map strings to strings, but the value of \"build\" is a number"),
    ("layer annotations as an array", None, Body::Text(r#"{"schemaVersion":2,"config":<config>,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"<sha256>","size":1,"annotations":["a"]}]}"#),
        "layers[0].annotations must be an object mapping strings to strings, got an array"),
    ("platform as a string", None, Body::Text(r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"<sha256>","size":1,"platform":"linux/amd64"}]}"#),
        "manifests[0].platform must be an object, got a string"),
    ("platform without os", None, Body::Text(r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"<sha256>","size":1,"platform":{"architecture":"amd64"}}]}"#),
        "manifests[0].platform has no os string (required)"),
];

#[test]
fn bad_manifests_get_manifest_invalid_with_a_reason() {
    let mut failures = Vec::new();
    for (what, content_type, body, expected) in BAD_MANIFESTS {
        match Manifest::parse(Bytes::from(body.bytes()), *content_type) {
            Ok(m) => failures.push(format!("{what}: accepted as {:?}", m.kind)),
            Err(err) if err.kind() != ErrorKind::ManifestInvalid => {
                failures.push(format!(
                    "{what}: {:?} instead of ManifestInvalid: {err}",
                    err.kind()
                ));
            }
            Err(err) => {
                let message = err.to_string();
                if !message.contains(expected) {
                    failures.push(format!(
                        "{what}:\n  expected {expected:?}\n  in       {message:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// --- Robustness -----------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_are_refused_only_as_manifest_invalid(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(err) = Manifest::parse(Bytes::from(body), None) {
            prop_assert_eq!(err.kind(), ErrorKind::ManifestInvalid);
        }
    }

    #[test]
    fn mutated_seeds_parse_or_are_refused_as_manifest_invalid(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut body = SEEDS[seed].1.to_vec();
        for (at, byte) in edits {
            let i = at.index(body.len());
            body[i] = byte;
        }
        if let Err(err) = Manifest::parse(Bytes::from(body), None) {
            prop_assert_eq!(err.kind(), ErrorKind::ManifestInvalid);
        }
    }
}
