//! # layerstore
//!
//! The storage engine of a container registry: a content-addressed blob and manifest store
//! with a narrow async API that registry frontends plug into.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod name;

pub use digest::{Algorithm, Digest};
pub use error::{Error, ErrorKind, RangeError, Result};
pub use manifest::{Descriptor, Manifest, ManifestKind};
pub use name::{Reference, RepositoryName, Tag};
