//! Backends: where the store keeps its objects.
//!
//! Every backend is an [`object_store::ObjectStore`]. The filesystem backend is
//! `object_store`'s `LocalFileSystem`, built so that every write it publishes is durable
//! (see [`Backend::filesystem`]). Capabilities that only some backends have (multipart
//! uploads, a local directory) are explicit fields, not runtime surprises.

pub(crate) mod local;
mod metered;

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::prefix::PrefixStore;

use crate::error::{Error, Result};
use crate::upload::engine::UploadEngine;
use crate::upload::fs::{DirSyncer, FsEngine};
use crate::upload::objects::ObjectEngine;
use crate::upload::{FileSystem, StdFileSystem};

/// Which backend to use, as plain data. A frontend builds it from its own configuration (the
/// reference server reads Distribution's `storage` section in `src/config/storage.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// A directory on the local filesystem (the default).
    Filesystem(FilesystemConfig),
    /// Process memory; for tests. Everything is lost when the process exits.
    Memory,
    /// Amazon S3 or an S3-compatible server.
    S3(S3Config),
    /// Azure Blob Storage (or Azurite).
    Azure(AzureConfig),
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self::Filesystem(FilesystemConfig {
            root: PathBuf::from("layerstore-data"),
        })
    }
}

/// Filesystem backend settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemConfig {
    /// The directory holding all data; created if missing.
    pub root: PathBuf,
}

/// S3 backend settings. Credentials come from here or from `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`); layerstore never falls back to a cloud
/// instance-metadata endpoint, so a missing credential is an error at start, not a hang.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// Endpoint of an S3-compatible server, such as `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Allow plain HTTP (only sensible on loopback).
    pub allow_http: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Key prefix inside the bucket, so several stores can share one bucket.
    pub prefix: Option<String>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Azure Blob backend settings.
#[derive(Clone, PartialEq, Eq)]
pub struct AzureConfig {
    pub account: String,
    pub container: String,
    /// Shared key of the account.
    pub access_key: Option<String>,
    /// Blob endpoint including the account, such as `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: Option<String>,
    /// Allow plain HTTP (only sensible on loopback).
    pub allow_http: bool,
    /// Key prefix inside the container.
    pub prefix: Option<String>,
    /// Use the local Azurite emulator (its well-known account and key, plain HTTP, at
    /// `AZURITE_BLOB_STORAGE_URL` or `http://127.0.0.1:10000`); the account and key above are
    /// then ignored.
    pub use_emulator: bool,
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureConfig")
            .field("account", &self.account)
            .field("container", &self.container)
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("prefix", &self.prefix)
            .field("use_emulator", &self.use_emulator)
            .finish()
    }
}

/// A built backend: the object store the store keeps its objects in, and the upload engine
/// chosen for it (once, here: nothing else asks which kind of backend it is).
#[derive(Clone)]
pub struct Backend {
    /// The object store, counted and timed ([`metered`]).
    pub(crate) objects: Arc<dyn ObjectStore>,
    /// The same store before metering, for [`Self::with_multipart`] to wrap again.
    unmetered: Arc<dyn ObjectStore>,
    engine: Arc<dyn UploadEngine>,
    local_root: Option<PathBuf>,
    multipart: bool,
    description: String,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

impl Backend {
    /// Builds the backend a configuration describes.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for an incomplete configuration (such as S3 without credentials),
    /// [`Error::Io`] if the filesystem root cannot be created, [`Error::Backend`] if
    /// `object_store` refuses the settings.
    pub fn from_config(config: &BackendConfig) -> Result<Self> {
        match config {
            BackendConfig::Filesystem(fs) => Self::filesystem(&fs.root),
            BackendConfig::Memory => Ok(Self::in_memory()),
            BackendConfig::S3(s3) => Self::s3(s3),
            BackendConfig::Azure(az) => Self::azure(az),
        }
    }

    /// Process memory. Supports multipart uploads.
    #[must_use]
    pub fn in_memory() -> Self {
        let store = Arc::new(InMemory::new());
        Self::over_objects(store.clone(), Some(Arc::new(MemoryMultipart::new(store))))
            .described("memory".to_owned())
    }

    /// An object store, with its multipart uploads if it has them: the object-store engine.
    /// Every request is counted and timed ([`metered`]).
    fn over_objects(
        objects: Arc<dyn ObjectStore>,
        multipart: Option<Arc<dyn MultipartStore>>,
    ) -> Self {
        let description = objects.to_string();
        let unmetered = objects;
        let objects: Arc<dyn ObjectStore> =
            Arc::new(metered::MeteredObjects::new(Arc::clone(&unmetered)));
        let multipart = multipart
            .map(|m| Arc::new(metered::MeteredMultipart::new(m)) as Arc<dyn MultipartStore>);
        Self {
            multipart: multipart.is_some(),
            engine: Arc::new(ObjectEngine::new(Arc::clone(&objects), multipart)),
            objects,
            unmetered,
            local_root: None,
            description,
        }
    }

    fn described(mut self, description: String) -> Self {
        self.description = description;
        self
    }

    /// The upload engine of this backend.
    pub(crate) fn engine(&self) -> &dyn UploadEngine {
        self.engine.as_ref()
    }

    /// A directory on the local filesystem, created if missing.
    ///
    /// Durability: every object is written to a staging file and published by rename (or hard
    /// link); the file is fsynced before the rename and its directory after it, so an object
    /// that a call reported as written survives a crash or power loss, and a crash leaves
    /// either the old object or the new one, never a partial file. Deletes are not fsynced: a
    /// crash right after a delete can bring the deleted object back, which never exposes
    /// partial data.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be created; [`Error::Backend`] if it cannot be
    /// used.
    pub fn filesystem(root: impl AsRef<FsPath>) -> Result<Self> {
        let root = Self::filesystem_root(root.as_ref())?;
        let store = LocalFileSystem::new_with_prefix(&root)?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(Self::filesystem_with(
            &root,
            Arc::new(store),
            Arc::new(StdFileSystem),
        ))
    }

    /// The filesystem backend over `root` with its two seams given: `objects`, the object
    /// store that holds its links and manifests (an `object_store` `LocalFileSystem` over the
    /// same `root`, as [`Self::filesystem`] builds it), and `fs`, the file-system calls of its
    /// upload engine ([`StdFileSystem`] in production). For tests and instrumentation: wrap
    /// either to count, delay or fail calls, and the store still runs the production engine.
    /// (Either way, a put racing a delete of the same name ends as one order of the two.)
    #[must_use]
    pub fn filesystem_with(
        root: &FsPath,
        objects: Arc<dyn ObjectStore>,
        fs: Arc<dyn FileSystem>,
    ) -> Self {
        // One syncer per store: its links, manifests and blob commits share directory fsyncs.
        let syncer = Arc::new(DirSyncer::new(Arc::clone(&fs)));
        let unmetered: Arc<dyn ObjectStore> = Arc::new(local::LocalObjects::new(
            objects,
            root.to_path_buf(),
            Arc::clone(&syncer),
        ));
        Self {
            objects: Arc::new(metered::MeteredObjects::new(Arc::clone(&unmetered))),
            unmetered,
            engine: Arc::new(FsEngine::new(root.to_path_buf(), fs, syncer)),
            local_root: Some(root.to_path_buf()),
            multipart: false,
            description: format!("filesystem at {}", root.display()),
        }
    }

    /// Creates the directory if missing and returns its canonical path.
    fn filesystem_root(root: &FsPath) -> Result<PathBuf> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        root.canonicalize()
            .map_err(|e| Error::io(format!("resolving {}", root.display()), e))
    }

    /// Any object store; for example one wrapped for instrumentation in tests.
    #[must_use]
    pub fn object_store(objects: Arc<dyn ObjectStore>) -> Self {
        Self::over_objects(objects, None)
    }

    /// Declares that the object store supports multipart uploads through `multipart` (the
    /// same store, seen through `MultipartStore`).
    #[must_use]
    pub fn with_multipart(self, multipart: Arc<dyn MultipartStore>) -> Self {
        let description = self.description.clone();
        Self::over_objects(self.unmetered, Some(multipart)).described(description)
    }

    fn s3(config: &S3Config) -> Result<Self> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (key, secret, token) = match (&config.access_key_id, &config.secret_access_key) {
            (Some(k), Some(s)) => (k.clone(), s.clone(), config.session_token.clone()),
            (None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(k), Some(s)) => (k, s, env("AWS_SESSION_TOKEN")),
                _ => {
                    return Err(Error::Unsupported {
                        what: "S3 without credentials: set access_key_id and secret_access_key, \
                               or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                            .to_owned(),
                    });
                }
            },
            _ => {
                return Err(Error::Unsupported {
                    what: "S3 with only one of access_key_id and secret_access_key".to_owned(),
                });
            }
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .with_allow_http(config.allow_http);
        if let Some(token) = token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let s3 = builder.build()?;
        let description = format!("s3 bucket {}", config.bucket);
        Ok(Self::prefixed(s3, config.prefix.as_deref(), description))
    }

    fn azure(config: &AzureConfig) -> Result<Self> {
        let mut builder = MicrosoftAzureBuilder::new()
            .with_container_name(&config.container)
            .with_allow_http(config.allow_http)
            .with_use_emulator(config.use_emulator);
        if !config.use_emulator {
            // The emulator brings its own well-known account and key.
            builder = builder.with_account(&config.account);
            if let Some(key) = &config.access_key {
                builder = builder.with_access_key(key);
            }
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let az = builder.build()?;
        let description = format!("azure container {}", config.container);
        Ok(Self::prefixed(az, config.prefix.as_deref(), description))
    }

    fn prefixed<T: ObjectStore + MultipartStore>(
        store: T,
        prefix: Option<&str>,
        description: String,
    ) -> Self {
        match prefix
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty())
        {
            Some(p) => {
                let store = Arc::new(PrefixStore::new(store, p));
                Self::over_objects(store.clone(), Some(store))
                    .described(format!("{description}, prefix {p}"))
            }
            None => {
                let store = Arc::new(store);
                Self::over_objects(store.clone(), Some(store)).described(description)
            }
        }
    }

    /// The local directory, for the filesystem backend (for operators and tools; the store
    /// itself never asks).
    #[must_use]
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local_root.as_deref()
    }

    /// Whether multipart uploads are available.
    #[must_use]
    pub fn supports_multipart(&self) -> bool {
        self.multipart
    }
}

/// Multipart uploads for the in-memory backend, with S3's rules.
///
/// Written here because `object_store`'s `InMemory` completes an upload with every part it
/// received, ignoring the list it is given and the sizes, while S3 (and Azure) use exactly the
/// listed parts — which the upload path relies on: parts an abandoned append sent but never
/// recorded must not become part of a blob. Like S3: a part re-sent at an index replaces the
/// earlier one (whose id then no longer completes), the listed part ids must be the current
/// ones at their positions, and every part but the last must be at least 5 MiB.
pub struct MemoryMultipart {
    store: Arc<InMemory>,
    uploads: std::sync::Mutex<std::collections::HashMap<String, Vec<Option<MemoryPart>>>>,
}

struct MemoryPart {
    content_id: String,
    bytes: bytes::Bytes,
}

/// S3's smallest part but for the last.
const S3_MIN_PART: usize = 5 * 1024 * 1024;

impl MemoryMultipart {
    /// Multipart uploads whose completed objects land in `store`.
    #[must_use]
    pub fn new(store: Arc<InMemory>) -> Self {
        Self {
            store,
            uploads: std::sync::Mutex::default(),
        }
    }

    fn unknown(path: &object_store::path::Path, id: &str) -> object_store::Error {
        object_store::Error::NotFound {
            path: path.to_string(),
            source: format!("no multipart upload {id}").into(),
        }
    }

    fn refused(message: String) -> object_store::Error {
        object_store::Error::Generic {
            store: "MemoryMultipart",
            source: message.into(),
        }
    }

    fn uploads(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<Option<MemoryPart>>>> {
        // A panic while holding the lock cannot leave the map half-updated: use it anyway.
        self.uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryMultipart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemoryMultipart")
    }
}

#[async_trait::async_trait]
impl MultipartStore for MemoryMultipart {
    async fn create_multipart(
        &self,
        _path: &object_store::path::Path,
    ) -> object_store::Result<object_store::MultipartId> {
        let id = format!("{:032x}", rand::random::<u128>());
        self.uploads().insert(id.clone(), Vec::new());
        Ok(id)
    }

    async fn put_part(
        &self,
        path: &object_store::path::Path,
        id: &object_store::MultipartId,
        part_idx: usize,
        data: object_store::PutPayload,
    ) -> object_store::Result<object_store::multipart::PartId> {
        let content_id = format!("{part_idx}-{:016x}", rand::random::<u64>());
        let mut uploads = self.uploads();
        let parts = uploads.get_mut(id).ok_or_else(|| Self::unknown(path, id))?;
        if parts.len() <= part_idx {
            parts.resize_with(part_idx + 1, || None);
        }
        parts[part_idx] = Some(MemoryPart {
            content_id: content_id.clone(),
            bytes: data.into(),
        });
        Ok(object_store::multipart::PartId { content_id })
    }

    async fn complete_multipart(
        &self,
        path: &object_store::path::Path,
        id: &object_store::MultipartId,
        parts: Vec<object_store::multipart::PartId>,
    ) -> object_store::Result<object_store::PutResult> {
        let body = {
            let mut uploads = self.uploads();
            let stored = uploads.get(id).ok_or_else(|| Self::unknown(path, id))?;
            let mut body = Vec::new();
            for (index, part) in parts.iter().enumerate() {
                let Some(Some(held)) = stored.get(index) else {
                    return Err(Self::refused(format!("upload {id} has no part {index}")));
                };
                if held.content_id != part.content_id {
                    return Err(Self::refused(format!(
                        "part {index} of upload {id} is {}, not {}",
                        held.content_id, part.content_id
                    )));
                }
                if held.bytes.len() < S3_MIN_PART && index + 1 < parts.len() {
                    return Err(Self::refused(format!(
                        "part {index} of upload {id} has {} bytes; all but the last need 5 MiB",
                        held.bytes.len()
                    )));
                }
                body.extend_from_slice(&held.bytes);
            }
            uploads.remove(id);
            body
        };
        self.store
            .put_opts(path, body.into(), object_store::PutOptions::default())
            .await
    }

    async fn abort_multipart(
        &self,
        path: &object_store::path::Path,
        id: &object_store::MultipartId,
    ) -> object_store::Result<()> {
        match self.uploads().remove(id) {
            Some(_) => Ok(()),
            None => Err(Self::unknown(path, id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_multipart() -> (Arc<InMemory>, MemoryMultipart) {
        let store = Arc::new(InMemory::new());
        (store.clone(), MemoryMultipart::new(store))
    }

    #[tokio::test]
    async fn memory_multipart_completes_with_the_listed_parts_only() {
        use object_store::ObjectStoreExt;
        let (store, mp) = memory_multipart();
        let path = object_store::path::Path::from("o");
        let id = mp.create_multipart(&path).await.unwrap();
        let big = vec![1u8; S3_MIN_PART];
        let first = mp
            .put_part(&path, &id, 0, big.clone().into())
            .await
            .unwrap();
        let second = mp
            .put_part(&path, &id, 1, b"tail".to_vec().into())
            .await
            .unwrap();
        // Sent but not listed: dropped by the completion.
        mp.put_part(&path, &id, 2, b"stray".to_vec().into())
            .await
            .unwrap();
        mp.complete_multipart(&path, &id, vec![first, second])
            .await
            .unwrap();
        let got = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(got, [big, b"tail".to_vec()].concat());
    }

    #[tokio::test]
    async fn memory_multipart_refuses_a_replaced_part_and_a_small_middle_part() {
        let (_, mp) = memory_multipart();
        let path = object_store::path::Path::from("o");
        let id = mp.create_multipart(&path).await.unwrap();
        let old = mp
            .put_part(&path, &id, 0, vec![1u8; S3_MIN_PART].into())
            .await
            .unwrap();
        let new = mp
            .put_part(&path, &id, 0, vec![2u8; S3_MIN_PART].into())
            .await
            .unwrap();
        let last = mp
            .put_part(&path, &id, 1, b"x".to_vec().into())
            .await
            .unwrap();
        assert!(
            mp.complete_multipart(&path, &id, vec![old, last.clone()])
                .await
                .is_err()
        );
        let id2 = mp.create_multipart(&path).await.unwrap();
        let small = mp
            .put_part(&path, &id2, 0, b"small".to_vec().into())
            .await
            .unwrap();
        let after = mp
            .put_part(&path, &id2, 1, b"x".to_vec().into())
            .await
            .unwrap();
        assert!(
            mp.complete_multipart(&path, &id2, vec![small, after])
                .await
                .is_err()
        );
        mp.complete_multipart(&path, &id, vec![new, last])
            .await
            .unwrap();
    }

    #[test]
    fn s3_with_half_the_credentials_is_refused_before_any_request() {
        let config = S3Config {
            bucket: "b".to_owned(),
            region: "us-east-1".to_owned(),
            endpoint: Some("http://127.0.0.1:1".to_owned()),
            allow_http: true,
            access_key_id: Some("k".to_owned()),
            secret_access_key: None,
            session_token: None,
            prefix: None,
        };
        let err = Backend::from_config(&BackendConfig::S3(config)).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Unsupported);
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let config = AzureConfig {
            account: "acct".to_owned(),
            container: "c".to_owned(),
            access_key: Some("very-secret".to_owned()),
            endpoint: None,
            allow_http: false,
            prefix: None,
            use_emulator: false,
        };
        assert!(!format!("{config:?}").contains("very-secret"));
    }

    #[test]
    fn a_filesystem_backend_creates_its_root_and_has_no_multipart() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nested/root");
        let backend = Backend::filesystem(&root).unwrap();
        assert!(root.is_dir());
        assert_eq!(
            backend.local_root(),
            Some(root.canonicalize().unwrap().as_path())
        );
        assert!(!backend.supports_multipart());
        assert!(Backend::in_memory().supports_multipart());
    }
}
