//! # layerstore
//!
//! The storage engine of a container registry: a content-addressed blob and manifest store
//! with a narrow async API that registry frontends plug into. It speaks in domain types only
//! ([`Digest`], [`RepositoryName`], [`Tag`], [`Descriptor`], [`bytes::Bytes`] and streams);
//! there are no HTTP or configuration-file types in it.
//!
//! ```text
//! frontend ──► Store ──► Repository ──► blobs / manifests / tags / referrers
//!                 └────► catalog
//!                 ▼
//!              Backend: filesystem │ memory │ S3 │ Azure Blob   (object_store)
//! ```
//!
//! ## A frontend's read and write paths
//!
//! Every OCI Distribution endpoint except chunked uploads maps onto one call:
//!
//! ```
//! use bytes::Bytes;
//! use futures::TryStreamExt;
//! use layerstore::manifest::media_type;
//! use layerstore::{Backend, ByteRange, Digest, Reference, RepositoryName, Store, Tag};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> layerstore::Result<()> {
//! // `Backend::filesystem("/var/lib/layerstore")?` for the embedded default.
//! let store = Store::new(Backend::in_memory());
//! let repo = store.repository(RepositoryName::parse("library/hello")?);
//!
//! // PUT /v2/<name>/blobs/uploads/?digest=<digest>   (monolithic upload)
//! let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
//! let layer = Bytes::from_static(b"pretend this is a tar.gz");
//! let (config_digest, layer_digest) = (Digest::sha256(&config), Digest::sha256(&layer));
//! repo.put_blob(&config_digest, config.clone()).await?;
//! repo.put_blob(&layer_digest, layer.clone()).await?;
//!
//! // POST /v2/<other>/blobs/uploads/?mount=<digest>&from=<name>
//! let other = store.repository(RepositoryName::parse("mirror/hello")?);
//! assert!(other.mount_blob(repo.name(), &layer_digest).await?);
//!
//! // HEAD and GET /v2/<name>/blobs/<digest>, with a Range
//! assert_eq!(repo.stat_blob(&layer_digest).await?.size, layer.len() as u64);
//! let read = repo.read_blob(&layer_digest, Some(ByteRange::Suffix(6))).await?;
//! let tail: Vec<Bytes> = read.stream.try_collect().await?;
//! assert_eq!(tail.concat(), b"tar.gz");
//!
//! // PUT /v2/<name>/manifests/<tag>
//! let manifest = format!(
//!     r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{}}}]}}"#,
//!     media_type::OCI_MANIFEST,
//!     config.len(),
//!     layer.len(),
//! );
//! let latest = Reference::Tag(Tag::parse("latest")?);
//! let put = repo
//!     .put_manifest(&latest, Bytes::from(manifest.clone()), Some(media_type::OCI_MANIFEST))
//!     .await?;
//!
//! // HEAD and GET /v2/<name>/manifests/<reference>
//! let got = repo.get_manifest(&latest).await?;
//! assert_eq!(got.bytes, manifest.as_bytes());
//! assert_eq!(got.info.digest, put.digest);
//! assert_eq!(repo.stat_manifest(&Reference::Digest(put.digest)).await?.media_type, media_type::OCI_MANIFEST);
//!
//! // GET /v2/<name>/tags/list?n=10 and /v2/_catalog
//! assert_eq!(repo.tags(Some(10), None).await?.items, vec![Tag::parse("latest")?]);
//! let catalog = store.catalog(None, None).await?;
//! assert_eq!(catalog.items.len(), 2);
//!
//! // GET /v2/<name>/referrers/<digest>?artifactType=...
//! let referrers = repo.referrers(&put.digest, None).await?;
//! assert!(referrers.manifests.is_empty());
//! let _index_json: Bytes = referrers.to_index_json();
//!
//! // DELETE /v2/<name>/manifests/<digest> and /v2/<name>/blobs/<digest>
//! repo.delete_manifest(&put.digest).await?;
//! repo.unlink_blob(&layer_digest).await?;
//! assert!(!repo.blob_exists(&layer_digest).await?);
//! # Ok(())
//! # }
//! ```
//!
//! ## Maintenance
//!
//! [`Store::purge_uploads`] deletes abandoned upload sessions (once, or in the background with
//! [`upload::Purger`]). [`Store::scrub`] reads back and re-hashes every blob, checks every
//! link, manifest, tag and referrer, reports each problem by [`ProblemKind`], and with
//! [`ScrubOptions::repair`] removes what points at nothing and quarantines corrupt blobs; see
//! [`scrub`]. [`Store::gc`] deletes what no tag or manifest reaches while this and other
//! stores over the same backend keep serving (what a client was told exists within the grace
//! period is never deleted); [`Store::gc_plan`] only counts it; see [`gc`].
//!
//! ## Operating it
//!
//! [`Store::probe`] makes one cheap backend read, for a frontend's health check. Uploads,
//! cache lookups, backend requests and maintenance runs are counted through the [`metrics`]
//! facade (names and labels in [`mod@metrics`]); a frontend that wants them installs a recorder.
//! Each push, pull, mount and delete that succeeded is an [`events::Event`], sent to the sink
//! a frontend installs with [`Store::with_events`] (webhooks, audit logs); see [`events`].
//!
//! ## Guarantees
//!
//! - A blob's bytes are stored once per store; a repository sees a blob only through its link.
//! - A digest is verified before anything is published under it.
//! - Nothing becomes visible partially: each operation writes its objects in an order whose
//!   last write is the commit point (see [`store`]); a crash leaves only invisible orphans.
//! - Names, tags and digests are validated before any key is built ([`layout`]).
//! - On the filesystem backend every published object is fsynced, file and directory entry,
//!   before the call returns ([`Backend::filesystem`]).

pub mod backend;
pub mod cache;
pub mod digest;
pub mod error;
pub mod events;
pub mod gc;
pub mod layout;
pub mod manifest;
pub mod metrics;
pub mod name;
pub mod scrub;
pub mod store;
pub mod upload;

pub use backend::{Backend, BackendConfig};
pub use digest::{Algorithm, Digest};
pub use error::{Error, ErrorKind, RangeError, Result};
pub use manifest::{Descriptor, Manifest, ManifestKind};
pub use name::{Reference, RepositoryName, Tag};
pub use scrub::{Problem, ProblemKind, ScrubOptions, ScrubProgress, ScrubReport};
pub use store::{
    BlobInfo, BlobRead, ByteRange, ManifestInfo, ManifestPut, Paginated, Referrers, Repository,
    Store, StoredManifest,
};
pub use upload::{UploadId, UploadStatus};
