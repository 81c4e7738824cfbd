//! # layerstore
//!
//! The storage engine of a container registry: a content-addressed blob and manifest store
//! with a narrow async API that registry frontends plug into.

pub mod backend;
pub mod digest;
pub mod error;
pub mod layout;
pub mod manifest;
pub mod name;
pub mod store;

pub use backend::{Backend, BackendConfig};
pub use digest::{Algorithm, Digest};
pub use error::{Error, ErrorKind, RangeError, Result};
pub use manifest::{Descriptor, Manifest, ManifestKind};
pub use name::{Reference, RepositoryName, Tag};
pub use store::{
    BlobInfo, BlobRead, ByteRange, ManifestInfo, ManifestPut, Paginated, Referrers, Repository,
    Store, StoredManifest,
};
