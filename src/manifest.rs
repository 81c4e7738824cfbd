//! Manifest parsing: OCI image manifest and index, Docker schema2 manifest and manifest list.
//! (Being implemented: see the helper's work.)

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::digest::Digest;
use crate::error::Result;

/// Largest manifest body accepted, in bytes.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// Media types of the documents and descriptors layerstore understands.
pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
}

/// Which of the four document kinds a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerManifestList,
}

/// A content descriptor referenced by a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// A parsed manifest: the exact bytes received plus what the store needs from them.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub digest: Digest,
    pub media_type: String,
    pub kind: ManifestKind,
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    pub fn parse(_bytes: Bytes, _content_type: Option<&str>) -> Result<Self> {
        todo!("being implemented")
    }
}

/// What a referenced descriptor is to the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Config,
    Layer,
    Manifest,
    Subject,
}

impl Manifest {
    /// Every descriptor referenced, with its role.
    pub fn references(&self) -> impl Iterator<Item = (Role, &Descriptor)> {
        self.config
            .iter()
            .map(|d| (Role::Config, d))
            .chain(self.layers.iter().map(|d| (Role::Layer, d)))
            .chain(self.manifests.iter().map(|d| (Role::Manifest, d)))
            .chain(self.subject.iter().map(|d| (Role::Subject, d)))
    }
}
