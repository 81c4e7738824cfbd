//! Manifest parsing: OCI image manifest and index, Docker schema2 manifest and manifest list.
//!
//! [`Manifest::parse`] takes the body exactly as received plus the declared content type and
//! returns the document's kind, its digest (SHA-256 of those bytes) and every descriptor it
//! references. The bytes are kept as they are: the digest a client computed must stay valid.
//!
//! What is refused, always as [`Error::ManifestInvalid`] with a reason naming the offending
//! field (for example `layers[2].size is negative (-1)`):
//!
//! - a body over [`MAX_MANIFEST_SIZE`] (checked before anything is parsed);
//! - a body that is not a JSON object, is not valid JSON, or nests deeper than `serde_json`'s
//!   recursion limit (128);
//! - `schemaVersion` missing or not the number 2 (Docker schema1 is unsupported);
//! - a declared content type that is not a manifest media type, a body `mediaType` that is not
//!   one, or the two disagreeing; a Docker content type with no `mediaType` in the body;
//! - a document that is neither an image manifest (`config` + `layers`) nor an index
//!   (`manifests`), or is both;
//! - a descriptor without `mediaType`, `digest` or `size`, with a malformed digest or one of an
//!   unsupported algorithm, or a size that is negative, fractional or over `i64::MAX`;
//! - annotations that are not a string-to-string object, a platform that is not an object with
//!   `architecture` and `os` strings.
//!
//! Unknown fields are ignored, so newer documents still parse. A field given twice is refused:
//! parsers that keep the first and parsers that keep the last would see different documents
//! under one digest. `null`, and an empty string for `mediaType` and `artifactType`, count as
//! absent, as they do for the Go clients and registries that produce most manifests.
//!
//! Parsing is one pass of serde over the bytes into borrowed, loosely typed fields (so a wrong
//! JSON type is reported with the field's path rather than a line/column), then a validation
//! pass that builds the public types.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::digest::Digest;
use crate::error::{Error, Result, truncate_for_message};

/// Largest manifest body accepted, in bytes.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// Media types of the documents and descriptors layerstore understands.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest, schema version 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list (the Docker counterpart of an OCI index).
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// The OCI empty descriptor (`{}`), used as the config of artifacts.
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
}

/// Docker schema1 media types: recognised only to refuse them with a clear reason.
const DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The largest size a descriptor may declare: the specs define sizes as int64.
const MAX_DESCRIPTOR_SIZE: u64 = i64::MAX as u64;

/// Which of the four document kinds a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    /// `application/vnd.oci.image.manifest.v1+json`
    OciManifest,
    /// `application/vnd.oci.image.index.v1+json`
    OciIndex,
    /// `application/vnd.docker.distribution.manifest.v2+json`
    DockerManifest,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`
    DockerManifestList,
}

impl ManifestKind {
    /// All kinds, in a fixed order.
    pub const ALL: [Self; 4] = [
        Self::OciManifest,
        Self::OciIndex,
        Self::DockerManifest,
        Self::DockerManifestList,
    ];

    /// The media type of this kind of document.
    #[must_use]
    pub const fn media_type(self) -> &'static str {
        match self {
            Self::OciManifest => media_type::OCI_MANIFEST,
            Self::OciIndex => media_type::OCI_INDEX,
            Self::DockerManifest => media_type::DOCKER_MANIFEST,
            Self::DockerManifestList => media_type::DOCKER_MANIFEST_LIST,
        }
    }

    /// The kind whose media type is exactly `media_type`, if any.
    #[must_use]
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.media_type() == media_type)
    }

    /// Whether this kind lists other manifests (OCI index, Docker manifest list) rather than
    /// a config and layers.
    #[must_use]
    pub const fn is_index(self) -> bool {
        matches!(self, Self::OciIndex | Self::DockerManifestList)
    }

    const fn is_docker(self) -> bool {
        matches!(self, Self::DockerManifest | Self::DockerManifestList)
    }
}

impl fmt::Display for ManifestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.media_type())
    }
}

/// A content descriptor referenced by a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size of the referenced content in bytes (at most `i64::MAX`).
    pub size: u64,
    /// Type of an artifact, when the descriptor points at one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Arbitrary string metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The platform of an index child: a JSON object with at least `architecture` and `os`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// The part a descriptor plays in a manifest; see [`Manifest::references`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The config blob of an image manifest.
    Config,
    /// A layer blob of an image manifest.
    Layer,
    /// A child manifest of an index or manifest list.
    Manifest,
    /// The manifest this one refers to (`subject`). The OCI Distribution spec lets it be
    /// pushed before its subject exists, so a store should not require it.
    Subject,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Config => "config",
            Self::Layer => "layer",
            Self::Manifest => "manifest",
            Self::Subject => "subject",
        })
    }
}

/// A parsed manifest: the exact bytes received plus what the store needs from them.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The body exactly as received.
    pub bytes: Bytes,
    /// SHA-256 of [`Self::bytes`].
    pub digest: Digest,
    /// The media type of the document (the one of [`Self::kind`]).
    pub media_type: String,
    /// Which kind of document this is.
    pub kind: ManifestKind,
    /// The document's `artifactType`, if any.
    pub artifact_type: Option<String>,
    /// The config of an image manifest; `None` for an index.
    pub config: Option<Descriptor>,
    /// The layers of an image manifest, in order; empty for an index.
    pub layers: Vec<Descriptor>,
    /// The children of an index, in order; empty for an image manifest.
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to, for the referrers API.
    pub subject: Option<Descriptor>,
    /// The document's annotations, if any.
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    /// Parses and validates a manifest body.
    ///
    /// `content_type` is the declared type (the `Content-Type` of a push), if any; parameters
    /// such as `; charset=utf-8` are ignored, and `application/json` or an empty value count as
    /// no declaration. The bytes are kept as they are, without copying.
    ///
    /// # Errors
    /// [`Error::ManifestInvalid`] with a reason naming what is wrong; see the module docs for
    /// the rules.
    pub fn parse(bytes: Bytes, content_type: Option<&str>) -> Result<Self> {
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(invalid(format!(
                "manifest is {} bytes, over the limit of {MAX_MANIFEST_SIZE} bytes (4 MiB)",
                bytes.len()
            )));
        }
        let declared = declared_kind(content_type)?;
        check_starts_as_object(&bytes)?;
        let doc: RawDocument<'_> = serde_json::from_slice(&bytes).map_err(|e| json_error(&e))?;
        check_schema_version(&doc.schema_version)?;
        let kind = resolve_kind(declared, content_type, &doc)?;
        let parts = Parts::from_document(kind, doc)?;
        let digest = Digest::sha256(&bytes);
        Ok(Self {
            bytes,
            digest,
            media_type: kind.media_type().to_owned(),
            kind,
            artifact_type: parts.artifact_type,
            config: parts.config,
            layers: parts.layers,
            manifests: parts.manifests,
            subject: parts.subject,
            annotations: parts.annotations,
        })
    }

    /// Every descriptor the manifest references, with its role: config, then layers, then
    /// child manifests, then the subject.
    pub fn references(&self) -> impl Iterator<Item = (Role, &Descriptor)> {
        let config = self.config.iter().map(|d| (Role::Config, d));
        let layers = self.layers.iter().map(|d| (Role::Layer, d));
        let manifests = self.manifests.iter().map(|d| (Role::Manifest, d));
        let subject = self.subject.iter().map(|d| (Role::Subject, d));
        config.chain(layers).chain(manifests).chain(subject)
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::manifest_invalid(reason)
}

fn quoted(s: &str) -> String {
    format!("{:?}", truncate_for_message(s))
}

fn expected_types() -> String {
    let names: Vec<String> = ManifestKind::ALL
        .iter()
        .map(|k| quoted(k.media_type()))
        .collect();
    names.join(", ")
}

fn is_schema1(media_type: &str) -> bool {
    DOCKER_SCHEMA1
        .iter()
        .any(|s| s.eq_ignore_ascii_case(media_type))
}

/// The declared kind, or `None` when nothing specific is declared.
fn declared_kind(content_type: Option<&str>) -> Result<Option<ManifestKind>> {
    let Some(content_type) = content_type else {
        return Ok(None);
    };
    // Parameters (`; charset=utf-8`) do not change the type; header values are
    // case-insensitive.
    let essence = content_type
        .split_once(';')
        .map_or(content_type, |(essence, _)| essence)
        .trim();
    if essence.is_empty() || essence.eq_ignore_ascii_case("application/json") {
        return Ok(None);
    }
    if let Some(kind) = ManifestKind::ALL
        .into_iter()
        .find(|k| essence.eq_ignore_ascii_case(k.media_type()))
    {
        return Ok(Some(kind));
    }
    if is_schema1(essence) {
        return Err(invalid(format!(
            "declared content type {} is Docker schema1, which is unsupported: \
             push a Docker schema2 or OCI manifest",
            quoted(content_type)
        )));
    }
    Err(invalid(format!(
        "declared content type {} is not a manifest media type (expected one of {})",
        quoted(content_type),
        expected_types()
    )))
}

/// Refuses anything but an object up front: serde would otherwise read a top-level array as
/// a struct's fields in order, and the reason would be confusing.
fn check_starts_as_object(bytes: &[u8]) -> Result<()> {
    let first = bytes
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let looks_like = match first {
        Some(b'{') => return Ok(()),
        None if bytes.is_empty() => return Err(invalid("manifest body is empty")),
        None => return Err(invalid("manifest body is only whitespace")),
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'-' | b'0'..=b'9') => "a number",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b) if b.is_ascii_graphic() => {
            return Err(invalid(format!(
                "manifest is not JSON: it starts with {:?}",
                char::from(b)
            )));
        }
        Some(b) => {
            return Err(invalid(format!(
                "manifest is not JSON: it starts with byte 0x{b:02x}"
            )));
        }
    };
    Err(invalid(format!(
        "manifest must be a JSON object, but the body starts like {looks_like}"
    )))
}

fn json_error(e: &serde_json::Error) -> Error {
    let message = e.to_string();
    // serde_json has no public error code; its message for this case is stable and tested.
    if message.starts_with("recursion limit exceeded") {
        return invalid(format!(
            "manifest JSON is nested too deeply (the limit is 128 levels): {message}"
        ));
    }
    match e.classify() {
        serde_json::error::Category::Data => invalid(format!("manifest is malformed: {message}")),
        _ => invalid(format!("manifest is not valid JSON: {message}")),
    }
}

fn check_schema_version(raw: &Raw<'_>) -> Result<()> {
    match raw {
        Raw::UInt(2) => Ok(()),
        Raw::UInt(1) => Err(invalid(
            "schemaVersion 1 is Docker schema1, which is unsupported: \
             push a Docker schema2 or OCI manifest",
        )),
        Raw::Absent => Err(invalid("schemaVersion is missing; it must be 2")),
        Raw::UInt(n) => Err(invalid(format!("schemaVersion must be 2, got {n}"))),
        Raw::Int(n) => Err(invalid(format!("schemaVersion must be 2, got {n}"))),
        Raw::Float(f) => Err(invalid(format!(
            "schemaVersion must be the integer 2, got {f:?}"
        ))),
        Raw::Str(s) => Err(invalid(format!(
            "schemaVersion must be the number 2, got the string {}",
            quoted(s)
        ))),
        Raw::Other(t) => Err(invalid(format!(
            "schemaVersion must be the number 2, got {t}"
        ))),
    }
}

/// Decides the kind from the declared type, the body's `mediaType` and, failing both, the
/// document's shape.
fn resolve_kind(
    declared: Option<ManifestKind>,
    content_type: Option<&str>,
    doc: &RawDocument<'_>,
) -> Result<ManifestKind> {
    let body_type = match &doc.media_type {
        Raw::Absent => None,
        // An empty string is how Go encoders spell "unset".
        Raw::Str(s) if s.is_empty() => None,
        Raw::Str(s) => Some(s.as_ref()),
        other => {
            return Err(invalid(format!(
                "mediaType must be a string, got {}",
                other.json_type()
            )));
        }
    };
    let body_kind = match body_type {
        None => None,
        Some(s) => match ManifestKind::from_media_type(s) {
            Some(kind) => Some(kind),
            None if is_schema1(s) => {
                return Err(invalid(format!(
                    "mediaType {} is Docker schema1, which is unsupported: \
                     push a Docker schema2 or OCI manifest",
                    quoted(s)
                )));
            }
            None => {
                return Err(invalid(format!(
                    "mediaType {} in the body is not a manifest media type (expected one of {})",
                    quoted(s),
                    expected_types()
                )));
            }
        },
    };
    match (declared, body_kind) {
        (Some(d), Some(b)) if d != b => Err(invalid(format!(
            "declared content type {} disagrees with mediaType {} in the body",
            quoted(content_type.unwrap_or_default()),
            quoted(b.media_type())
        ))),
        (Some(d), None) if d.is_docker() => Err(invalid(format!(
            "declared content type {} is a Docker type, which requires mediaType in the body, \
             but the body has none",
            quoted(d.media_type())
        ))),
        (Some(kind), _) | (None, Some(kind)) => Ok(kind),
        (None, None) => infer_kind(doc),
    }
}

/// OCI allows a body without `mediaType`; with nothing declared either, the shape decides.
fn infer_kind(doc: &RawDocument<'_>) -> Result<ManifestKind> {
    let has_manifests = !doc.manifests.is_absent();
    let has_image_parts = !doc.config.is_absent() || !doc.layers.is_absent();
    match (has_manifests, has_image_parts) {
        (true, true) => Err(invalid(
            "document has both manifests and config/layers, so it is neither an image \
             manifest nor an index",
        )),
        (true, false) => Ok(ManifestKind::OciIndex),
        (false, true) => Ok(ManifestKind::OciManifest),
        (false, false) => Err(invalid(
            "cannot tell what the document is: no mediaType in the body, no manifest \
             content type declared, and neither a manifests array nor config and layers",
        )),
    }
}

/// The validated contents of a document.
struct Parts {
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Vec<Descriptor>,
    manifests: Vec<Descriptor>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

impl Parts {
    fn from_document(kind: ManifestKind, doc: RawDocument<'_>) -> Result<Self> {
        let (config, layers, manifests) = if kind.is_index() {
            if !doc.config.is_absent() || !doc.layers.is_absent() {
                return Err(invalid(format!(
                    "{} document has config/layers, which only an image manifest may have",
                    kind.media_type()
                )));
            }
            let manifests = match doc.manifests {
                Field::Present(list) => descriptors(list, Path::Child)?,
                Field::Absent => return Err(invalid("image index has no manifests array")),
                Field::Wrong(t) => {
                    return Err(invalid(format!("manifests must be an array, got {t}")));
                }
            };
            (None, Vec::new(), manifests)
        } else {
            if !doc.manifests.is_absent() {
                return Err(invalid(format!(
                    "{} document has a manifests array, which only an index may have",
                    kind.media_type()
                )));
            }
            let config = match doc.config {
                Field::Absent => return Err(invalid("image manifest has no config")),
                field => descriptor(Path::Config, field)?,
            };
            let layers = match doc.layers {
                Field::Present(list) => descriptors(list, Path::Layer)?,
                Field::Absent => {
                    return Err(invalid(
                        "image manifest has no layers array (it may be empty, but must be there)",
                    ));
                }
                Field::Wrong(t) => {
                    return Err(invalid(format!("layers must be an array, got {t}")));
                }
            };
            (Some(config), layers, Vec::new())
        };
        let subject = match doc.subject {
            Field::Absent => None,
            field => Some(descriptor(Path::Subject, field)?),
        };
        Ok(Self {
            artifact_type: optional_string(At(Path::Root, "artifactType"), doc.artifact_type)?,
            config,
            layers,
            manifests,
            subject,
            annotations: annotations(Path::Root, doc.annotations)?,
        })
    }
}

/// Where a descriptor sits in the document, for messages.
#[derive(Debug, Clone, Copy)]
enum Path {
    Root,
    Config,
    Subject,
    Layer(usize),
    Child(usize),
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root => f.write_str("manifest"),
            Self::Config => f.write_str("config"),
            Self::Subject => f.write_str("subject"),
            Self::Layer(i) => write!(f, "layers[{i}]"),
            Self::Child(i) => write!(f, "manifests[{i}]"),
        }
    }
}

/// A field of a descriptor (or of the document itself, for [`Path::Root`]).
#[derive(Debug, Clone, Copy)]
struct At(Path, &'static str);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Path::Root => f.write_str(self.1),
            path => write!(f, "{path}.{}", self.1),
        }
    }
}

fn descriptors(
    list: Vec<Field<RawDescriptor<'_>>>,
    path: fn(usize) -> Path,
) -> Result<Vec<Descriptor>> {
    list.into_iter()
        .enumerate()
        .map(|(i, field)| descriptor(path(i), field))
        .collect()
}

fn descriptor(path: Path, field: Field<RawDescriptor<'_>>) -> Result<Descriptor> {
    let raw = match field {
        Field::Present(raw) => raw,
        // Only list elements get here absent: a missing config or subject is handled before.
        Field::Absent => {
            return Err(invalid(format!(
                "{path} is null; expected a descriptor object"
            )));
        }
        Field::Wrong(t) => {
            return Err(invalid(format!(
                "{path} must be a descriptor object, got {t}"
            )));
        }
    };
    let media_type = match raw.media_type {
        Raw::Str(s) if s.is_empty() => return Err(invalid(format!("{path}.mediaType is empty"))),
        Raw::Str(s) => s.into_owned(),
        Raw::Absent => {
            return Err(invalid(format!(
                "{path} has no mediaType (required in every descriptor)"
            )));
        }
        other => {
            return Err(invalid(format!(
                "{path}.mediaType must be a string, got {}",
                other.json_type()
            )));
        }
    };
    let digest = match raw.digest {
        Raw::Str(s) => descriptor_digest(path, &s)?,
        Raw::Absent => return Err(invalid(format!("{path} has no digest"))),
        other => {
            return Err(invalid(format!(
                "{path}.digest must be a string, got {}",
                other.json_type()
            )));
        }
    };
    Ok(Descriptor {
        media_type,
        digest,
        size: descriptor_size(path, &raw.size)?,
        artifact_type: optional_string(At(path, "artifactType"), raw.artifact_type)?,
        annotations: annotations(path, raw.annotations)?,
        platform: platform(path, raw.platform)?,
    })
}

fn descriptor_digest(path: Path, s: &str) -> Result<Digest> {
    Digest::parse(s).map_err(|e| match e {
        Error::DigestInvalid { reason } => invalid(format!("{path}.digest is invalid: {reason}")),
        Error::Unsupported { what } => invalid(format!("{path}.digest uses an unsupported {what}")),
        other => invalid(format!("{path}.digest is invalid: {other}")),
    })
}

fn descriptor_size(path: Path, raw: &Raw<'_>) -> Result<u64> {
    // 2^63 exactly; every float at or above it is over i64::MAX.
    const LIMIT_AS_F64: f64 = 9_223_372_036_854_775_808.0;
    let over = |shown: &dyn fmt::Display| {
        invalid(format!(
            "{path}.size {shown} is over the maximum of {MAX_DESCRIPTOR_SIZE} (i64::MAX)"
        ))
    };
    match *raw {
        Raw::UInt(n) if n <= MAX_DESCRIPTOR_SIZE => Ok(n),
        Raw::UInt(n) => Err(over(&n)),
        Raw::Int(n) => Err(invalid(format!("{path}.size is negative ({n})"))),
        Raw::Float(f) if f < 0.0 => Err(invalid(format!("{path}.size is negative ({f:?})"))),
        Raw::Float(f) if f.fract() != 0.0 => Err(invalid(format!(
            "{path}.size is fractional ({f:?}); a size is a whole number of bytes"
        ))),
        Raw::Float(f) if f >= LIMIT_AS_F64 => Err(over(&f)),
        // `1.0` or `1e3`: Go clients and registries refuse these for an int64 too.
        Raw::Float(f) => Err(invalid(format!(
            "{path}.size must be written as an integer, got {f:?}"
        ))),
        Raw::Absent => Err(invalid(format!("{path} has no size"))),
        ref other => Err(invalid(format!(
            "{path}.size must be a number, got {}",
            other.json_type()
        ))),
    }
}

fn optional_string(at: At, raw: Raw<'_>) -> Result<Option<String>> {
    match raw {
        Raw::Absent => Ok(None),
        // An empty string is how Go encoders spell "unset".
        Raw::Str(s) if s.is_empty() => Ok(None),
        Raw::Str(s) => Ok(Some(s.into_owned())),
        other => Err(invalid(format!(
            "{at} must be a string, got {}",
            other.json_type()
        ))),
    }
}

fn annotations(path: Path, field: Field<Annotations>) -> Result<Option<BTreeMap<String, String>>> {
    let at = At(path, "annotations");
    match field {
        Field::Absent => Ok(None),
        Field::Present(Annotations(Ok(map))) => Ok(Some(map)),
        Field::Present(Annotations(Err((key, t)))) => Err(invalid(format!(
            "{at} must map strings to strings, but the value of {} is {t}",
            quoted(&key)
        ))),
        Field::Wrong(t) => Err(invalid(format!(
            "{at} must be an object mapping strings to strings, got {t}"
        ))),
    }
}

fn platform(
    path: Path,
    field: Field<serde_json::Map<String, serde_json::Value>>,
) -> Result<Option<serde_json::Value>> {
    let at = At(path, "platform");
    let map = match field {
        Field::Absent => return Ok(None),
        Field::Present(map) => map,
        Field::Wrong(t) => return Err(invalid(format!("{at} must be an object, got {t}"))),
    };
    // Both specs require these two; everything else in a platform is optional.
    for key in ["architecture", "os"] {
        if !map.get(key).is_some_and(serde_json::Value::is_string) {
            return Err(invalid(format!("{at} has no {key} string (required)")));
        }
    }
    Ok(Some(serde_json::Value::Object(map)))
}

// ---------------------------------------------------------------------------------------------
// The loosely typed first pass. Every field accepts any JSON value and records what it got, so
// that validation can say "layers[1].size must be a number, got a string" instead of serde's
// "invalid type … at line 7 column 15". Strings borrow from the body when they hold no escapes.

/// The JSON type of a value, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl fmt::Display for JsonType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Null => "null",
            Self::Bool => "a boolean",
            Self::Number => "a number",
            Self::String => "a string",
            Self::Array => "an array",
            Self::Object => "an object",
        })
    }
}

/// A scalar field as found in the document.
#[derive(Debug, Default, PartialEq)]
enum Raw<'a> {
    /// Missing or `null`.
    #[default]
    Absent,
    Str(Cow<'a, str>),
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    Int(i64),
    /// A number with a fraction or exponent, or an integer too large for `u64`.
    Float(f64),
    /// A boolean, array or object (whose contents are skipped).
    Other(JsonType),
}

impl Raw<'_> {
    fn json_type(&self) -> JsonType {
        match self {
            Self::Absent => JsonType::Null,
            Self::Str(_) => JsonType::String,
            Self::UInt(_) | Self::Int(_) | Self::Float(_) => JsonType::Number,
            Self::Other(t) => *t,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor(PhantomData))
    }
}

struct RawVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for RawVisitor<'a> {
    type Value = Raw<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Raw::Absent)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Raw::Absent)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Raw::deserialize(d)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Raw::Other(JsonType::Bool))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Raw::UInt(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v).map_or(Raw::Int(v), Raw::UInt))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Raw::Float(v))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Raw::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Raw::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Raw::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        // serde_json skips ignored values iteratively, so deep nesting here cannot overflow.
        IgnoredAny.visit_seq(seq)?;
        Ok(Raw::Other(JsonType::Array))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(Raw::Other(JsonType::Object))
    }
}

/// An object or array field: present with the expected shape, absent (or `null`), or of
/// another JSON type.
#[derive(Debug, Default)]
enum Field<T> {
    #[default]
    Absent,
    Present(T),
    Wrong(JsonType),
}

impl<T> Field<T> {
    const fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
}

/// Whether a [`Field`]'s content is a JSON array (else an object).
trait Shape {
    const ARRAY: bool;
}

impl<T> Shape for Vec<T> {
    const ARRAY: bool = true;
}

impl Shape for RawDescriptor<'_> {
    const ARRAY: bool = false;
}

impl Shape for Annotations {
    const ARRAY: bool = false;
}

impl Shape for serde_json::Map<String, serde_json::Value> {
    const ARRAY: bool = false;
}

impl<'de, T: Deserialize<'de> + Shape> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor(PhantomData))
    }
}

struct FieldVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de> + Shape> Visitor<'de> for FieldVisitor<T> {
    type Value = Field<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if T::ARRAY { "an array" } else { "an object" })
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Absent)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Absent)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Field::deserialize(d)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Field::Wrong(JsonType::Bool))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Field::Wrong(JsonType::Number))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Field::Wrong(JsonType::Number))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Field::Wrong(JsonType::Number))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Field::Wrong(JsonType::String))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        if T::ARRAY {
            T::deserialize(SeqAccessDeserializer::new(seq)).map(Field::Present)
        } else {
            IgnoredAny.visit_seq(seq)?;
            Ok(Field::Wrong(JsonType::Array))
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        if T::ARRAY {
            IgnoredAny.visit_map(map)?;
            Ok(Field::Wrong(JsonType::Object))
        } else {
            T::deserialize(MapAccessDeserializer::new(map)).map(Field::Present)
        }
    }
}

/// Annotations as read: the map, or the first key whose value is not a string.
#[derive(Debug)]
struct Annotations(std::result::Result<BTreeMap<String, String>, (String, JsonType)>);

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(AnnotationsVisitor)
    }
}

struct AnnotationsVisitor;

impl<'de> Visitor<'de> for AnnotationsVisitor {
    type Value = Annotations;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object mapping strings to strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        let mut problem = None;
        while let Some(key) = map.next_key::<String>()? {
            // Keep reading after a problem: the parser must consume the whole object.
            match (map.next_value::<Raw<'de>>()?, &problem) {
                (Raw::Str(value), None) => {
                    out.insert(key, value.into_owned());
                }
                (other, None) => problem = Some((key, other.json_type())),
                (_, Some(_)) => {}
            }
        }
        Ok(Annotations(problem.map_or(Ok(out), Err)))
    }
}

/// A descriptor as read.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor<'a> {
    #[serde(default, borrow)]
    media_type: Raw<'a>,
    #[serde(default, borrow)]
    digest: Raw<'a>,
    #[serde(default, borrow)]
    size: Raw<'a>,
    #[serde(default, borrow)]
    artifact_type: Raw<'a>,
    #[serde(default)]
    annotations: Field<Annotations>,
    #[serde(default)]
    platform: Field<serde_json::Map<String, serde_json::Value>>,
}

/// A manifest or index as read: the union of the fields of all four kinds.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument<'a> {
    #[serde(default, borrow)]
    schema_version: Raw<'a>,
    #[serde(default, borrow)]
    media_type: Raw<'a>,
    #[serde(default, borrow)]
    artifact_type: Raw<'a>,
    #[serde(default, borrow)]
    config: Field<RawDescriptor<'a>>,
    #[serde(default, borrow)]
    layers: Field<Vec<Field<RawDescriptor<'a>>>>,
    #[serde(default, borrow)]
    manifests: Field<Vec<Field<RawDescriptor<'a>>>>,
    #[serde(default, borrow)]
    subject: Field<RawDescriptor<'a>>,
    #[serde(default)]
    annotations: Field<Annotations>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    const CONFIG: &str = "sha256:b79606fb3afea5bd1609ed40b622142f1c98125abcfe89a76a661b0e8e343910";
    const LAYER: &str = "sha256:77ea7eee3d80b1a38f83906dd3048e2689457eb90e18a7d12f839c5ae37106a2";

    fn image(layers: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}",
                "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{CONFIG}","size":7}},
                "layers":{layers}}}"#,
            media_type::OCI_MANIFEST
        )
    }

    fn layer_with_size(size: &str) -> String {
        image(&format!(
            r#"[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{LAYER}","size":{size}}}]"#
        ))
    }

    fn reason(body: &str, content_type: Option<&str>) -> String {
        match Manifest::parse(Bytes::copy_from_slice(body.as_bytes()), content_type) {
            Ok(m) => panic!("accepted: {m:?}"),
            Err(Error::ManifestInvalid { reason }) => reason,
            Err(other) => panic!("wrong error kind: {other}"),
        }
    }

    #[test]
    fn kinds_round_trip_through_their_media_types() {
        for kind in ManifestKind::ALL {
            assert_eq!(ManifestKind::from_media_type(kind.media_type()), Some(kind));
            assert_eq!(kind.to_string(), kind.media_type());
        }
        assert_eq!(ManifestKind::from_media_type(media_type::OCI_EMPTY), None);
        assert!(ManifestKind::OciIndex.is_index() && ManifestKind::DockerManifestList.is_index());
        assert!(!ManifestKind::OciManifest.is_index() && !ManifestKind::DockerManifest.is_index());
    }

    #[test]
    fn declared_type_ignores_parameters_case_and_generic_json() {
        assert_eq!(
            declared_kind(Some(
                "Application/VND.OCI.image.index.v1+json ; charset=utf-8"
            ))
            .unwrap(),
            Some(ManifestKind::OciIndex)
        );
        for generic in [
            None,
            Some(""),
            Some("  "),
            Some("application/json"),
            Some("application/json; charset=utf-8"),
        ] {
            assert_eq!(declared_kind(generic).unwrap(), None, "{generic:?}");
        }
        let err = declared_kind(Some("text/plain")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ManifestInvalid);
        assert!(err.to_string().contains("\"text/plain\""), "{err}");
    }

    #[test]
    fn unescaped_strings_borrow_from_the_body_and_escaped_ones_are_decoded() {
        let body = br#"{"mediaType":"plain","digest":"a\u0041b"}"#;
        let d: RawDescriptor<'_> = serde_json::from_slice(body).unwrap();
        assert!(matches!(d.media_type, Raw::Str(Cow::Borrowed("plain"))));
        assert_eq!(d.digest, Raw::Str(Cow::Owned("aAb".to_owned())));
    }

    #[test]
    fn sizes_are_whole_numbers_up_to_i64_max() {
        let at_limit =
            Manifest::parse(Bytes::from(layer_with_size("9223372036854775807")), None).unwrap();
        assert_eq!(at_limit.layers[0].size, i64::MAX.unsigned_abs());
        Manifest::parse(Bytes::from(layer_with_size("0")), None).unwrap();

        for (size, expected) in [
            ("9223372036854775808", "over the maximum"),
            ("18446744073709551615", "over the maximum"),
            ("1e30", "over the maximum"),
            ("-1", "negative (-1)"),
            ("-0.5", "negative"),
            ("2.5", "fractional (2.5)"),
            ("1e3", "must be written as an integer"),
            ("7.0", "must be written as an integer"),
            ("\"7\"", "must be a number, got a string"),
            ("null", "layers[0] has no size"),
        ] {
            let r = reason(&layer_with_size(size), None);
            assert!(r.contains(expected), "{size}: {r}");
            assert!(r.contains("layers[0]"), "{size}: {r}");
        }
    }

    #[test]
    fn references_come_in_document_order_with_their_roles() {
        let body = format!(
            r#"{{"schemaVersion":2,
                "config":{{"mediaType":"c","digest":"{CONFIG}","size":1}},
                "layers":[{{"mediaType":"l","digest":"{LAYER}","size":2}},
                          {{"mediaType":"l","digest":"{CONFIG}","size":3}}],
                "subject":{{"mediaType":"{}","digest":"{LAYER}","size":4}}}}"#,
            media_type::OCI_MANIFEST
        );
        let m = Manifest::parse(Bytes::from(body), None).unwrap();
        let refs: Vec<(Role, u64)> = m.references().map(|(r, d)| (r, d.size)).collect();
        assert_eq!(
            refs,
            [
                (Role::Config, 1),
                (Role::Layer, 2),
                (Role::Layer, 3),
                (Role::Subject, 4)
            ]
        );
    }

    #[test]
    fn the_body_is_kept_without_a_copy() {
        let bytes = Bytes::from(image("[]"));
        let m = Manifest::parse(bytes.clone(), None).unwrap();
        assert_eq!(m.bytes.as_ptr(), bytes.as_ptr());
        assert_eq!(m.digest, Digest::sha256(&bytes));
    }

    #[test]
    fn values_nested_past_serde_jsons_limit_are_a_clean_error() {
        // Parsed into a platform (a serde_json map), so serde_json's own limit applies.
        let deep = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"platform":{{"x":{}}}}}]}}"#,
            "[".repeat(200)
        );
        let r = reason(&deep, None);
        assert!(r.contains("nested too deeply"), "{r}");
    }

    #[test]
    fn deeply_nested_skipped_values_do_not_overflow_the_stack() {
        let n = 100_000;
        let deep = format!(
            r#"{{"future":{}{},"schemaVersion":2,"config":{}{}}}"#,
            "[".repeat(n),
            "]".repeat(n),
            "[".repeat(n),
            "]".repeat(n),
        );
        let r = reason(&deep, None);
        assert_eq!(r, "config must be a descriptor object, got an array");
    }

    #[test]
    fn annotation_values_must_be_strings() {
        let body = image(r#"[],"annotations":{"a":"b","n":1,"z":{"deep":[]}}"#);
        let r = reason(&body, None);
        assert_eq!(
            r,
            r#"annotations must map strings to strings, but the value of "n" is a number"#
        );
    }
}
