//! The store: content-addressed blobs linked into repositories, manifests, tags, referrers
//! and the catalog, over any [`Backend`].
//!
//! [`Store`] is cheap to clone and shareable between tasks. [`Store::repository`] gives a
//! [`Repository`] handle through which a frontend reaches everything of one repository.
//!
//! # Consistency
//!
//! Every object the store writes is published by one atomic backend write, and each operation
//! orders its writes so that the last one is its *commit point*: before it, nothing new is
//! visible through the API; after it, everything is. A crash or backend error between two
//! writes therefore leaves, at worst, unreferenced objects (blob bytes with no link) that are
//! invisible and harmless.

mod blobs;
mod catalog;
mod inventory;
mod manifests;
mod segments;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};

pub(crate) use blobs::BlobLocation;
pub use blobs::{BLOB_MEDIA_TYPE, BlobInfo, BlobRead, ByteRange};
pub(crate) use inventory::BlobObject;
pub(crate) use manifests::RevisionLink;
pub use manifests::{ManifestInfo, ManifestPut, Referrers, StoredManifest};
pub(crate) use segments::{MAX_INDEX_SIZE, Segment, SegmentIndex};

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::backend::{Backend, BackendConfig};
use crate::cache::{BlobDescriptorCache, CacheStats, MemoryCache};
use crate::error::{Error, Result};
use crate::events::{Event, EventSink};
use crate::gc::protocol::GcWatch;
use crate::layout::KeyLayout;
use crate::name::RepositoryName;

/// Largest link object the store will read; links are tiny, so anything larger is corrupt.
const MAX_LINK_SIZE: u64 = 64 * 1024;

/// A content-addressed blob and manifest store over one backend.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    keys: KeyLayout,
    cache: Option<Arc<dyn BlobDescriptorCache>>,
    gc: GcWatch,
    /// Repositories this store found or put in the catalog, and the GC generation it saw
    /// then (see [`Repository::register`]).
    registered: Mutex<(u64, HashSet<RepositoryName>)>,
    /// Where events go, once a frontend installed a sink ([`Store::with_events`]).
    events: OnceLock<Arc<dyn EventSink>>,
}

/// How many repositories [`Inner::registered`] remembers before it starts again.
const REGISTERED_REMEMBERED: usize = 100_000;

/// One page of a listing in lexical order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paginated<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Whether more items follow the last one of this page.
    pub truncated: bool,
}

impl<T: AsRef<str>> Paginated<T> {
    /// Sorts `all`, keeps those after `last`, and cuts the result to `n` items.
    fn page(mut all: Vec<T>, n: Option<usize>, last: Option<&str>) -> Self {
        all.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        all.dedup_by(|a, b| a.as_ref() == b.as_ref());
        if let Some(last) = last {
            all.retain(|x| x.as_ref() > last);
        }
        let truncated = n.is_some_and(|n| all.len() > n);
        if let Some(n) = n {
            all.truncate(n);
        }
        Self {
            items: all,
            truncated,
        }
    }
}

impl Store {
    /// A store over `backend`, with the default in-memory blob-descriptor cache.
    #[must_use]
    pub fn new(backend: Backend) -> Self {
        Self::with_cache(backend, Some(Arc::new(MemoryCache::default())))
    }

    /// A store over `backend` with the given blob-descriptor cache, or none.
    #[must_use]
    pub fn with_cache(backend: Backend, cache: Option<Arc<dyn BlobDescriptorCache>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                keys: KeyLayout,
                cache,
                gc: GcWatch::default(),
                registered: Mutex::default(),
                events: OnceLock::new(),
            }),
        }
    }

    /// This store (and every clone of it) with `sink` receiving an [`Event`] for each
    /// operation that succeeded (see [`crate::events`]).
    ///
    /// # Panics
    /// If a sink is installed already: one store has one sink (a frontend that wants several
    /// fans out in its own).
    #[must_use]
    pub fn with_events(self, sink: Arc<dyn EventSink>) -> Self {
        assert!(
            self.inner.events.set(sink).is_ok(),
            "Store::with_events: this store has an event sink already"
        );
        self
    }

    /// Sends the event `event` builds, if a sink is installed (else builds nothing).
    pub(crate) fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(sink) = self.inner.events.get() {
            sink.send(event());
        }
    }

    fn registered(&self) -> MutexGuard<'_, (u64, HashSet<RepositoryName>)> {
        self.inner
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The cache's counters, if the store has a cache.
    #[must_use]
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.inner.cache.as_ref().map(|c| c.stats())
    }

    pub(crate) fn cache(&self) -> Option<&dyn BlobDescriptorCache> {
        self.inner.cache.as_deref()
    }

    pub(crate) fn gc_watch(&self) -> &GcWatch {
        &self.inner.gc
    }

    /// Builds the backend `config` describes and a store over it.
    ///
    /// # Errors
    /// See [`Backend::from_config`].
    pub fn open(config: &BackendConfig) -> Result<Self> {
        Backend::from_config(config).map(Self::new)
    }

    /// Whether the backend answers: one cheap read (the metadata of the GC state object, a
    /// key every store reads anyway), made anew on each call through the configured location,
    /// so a filesystem root replaced by a file or made unreadable since the store was built
    /// fails it. An object that does not exist is an answer, as it is to CNCF Distribution's
    /// storage-driver health check: a fresh store, or a filesystem root that is absent (the
    /// next write creates it), probes healthy.
    ///
    /// # Errors
    /// The backend's error, for a frontend's health check to report.
    pub async fn probe(&self) -> Result<()> {
        self.head(&self.keys().gc_state()).await.map(|_| ())
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// A handle on one repository. Nothing is read or written until it is used.
    #[must_use]
    pub fn repository(&self, name: RepositoryName) -> Repository {
        Repository {
            store: self.clone(),
            name,
        }
    }

    pub(crate) fn objects(&self) -> &dyn ObjectStore {
        self.inner.backend.objects.as_ref()
    }

    pub(crate) fn keys(&self) -> KeyLayout {
        self.inner.keys
    }

    /// Metadata of an object, `None` if it does not exist.
    pub(crate) async fn head(&self, key: &Path) -> Result<Option<ObjectMeta>> {
        match self.objects().head(key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn exists(&self, key: &Path) -> Result<bool> {
        Ok(self.head(key).await?.is_some())
    }

    /// Reads a whole small object (at most `limit` bytes), `None` if it does not exist.
    pub(crate) async fn read_small(&self, key: &Path, limit: u64) -> Result<Option<Bytes>> {
        let got = match self.objects().get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if got.meta.size > limit {
            return Err(Error::Corrupt {
                key: key.to_string(),
                reason: format!("{} bytes where at most {limit} are expected", got.meta.size),
            });
        }
        match got.bytes().await {
            Ok(b) => Ok(Some(b)),
            // Deleted between the response headers and the body.
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads and decodes a JSON link object, `None` if it does not exist.
    pub(crate) async fn read_link<T: serde::de::DeserializeOwned>(
        &self,
        key: &Path,
    ) -> Result<Option<T>> {
        self.read_json(key, MAX_LINK_SIZE).await
    }

    /// Reads and decodes a JSON object of at most `limit` bytes, `None` if it does not exist.
    pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &Path,
        limit: u64,
    ) -> Result<Option<T>> {
        let Some(bytes) = self.read_small(key, limit).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    /// Writes an object in one atomic put, replacing any previous one.
    pub(crate) async fn write(&self, key: &Path, bytes: impl Into<PutPayload>) -> Result<()> {
        self.objects().put(key, bytes.into()).await?;
        Ok(())
    }

    /// Writes each object of `writes` in order (see `UploadEngine::write_in_order`): once one
    /// is there after a crash, every one before it is.
    pub(crate) async fn write_in_order(&self, writes: Vec<(Path, Bytes)>) -> Result<()> {
        self.backend().engine().write_in_order(self, writes).await
    }

    pub(crate) async fn write_link<T: serde::Serialize>(
        &self,
        key: &Path,
        value: &T,
    ) -> Result<()> {
        self.write(key, encode_link(key, value)?).await
    }

    /// Deletes an object; deleting a missing one is not an error (backends differ on it).
    pub(crate) async fn remove(&self, key: &Path) -> Result<()> {
        match self.objects().delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a small object with the version a conditional put can replace it at.
    pub(crate) async fn read_versioned(
        &self,
        key: &Path,
    ) -> Result<Option<(Bytes, object_store::UpdateVersion)>> {
        let got = match self.objects().get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let version = object_store::UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        match got.bytes().await {
            Ok(b) => Ok(Some((b, version))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// All keys under `prefix`, in no particular order.
    pub(crate) async fn list_keys(&self, prefix: &Path) -> Result<Vec<Path>> {
        Ok(self
            .objects()
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?)
    }
}

/// A catalog marker to write (see `Repository::unregistered`).
struct Registration {
    generation: u64,
    marker: Path,
}

/// A link object's JSON.
pub(crate) fn encode_link<T: serde::Serialize>(key: &Path, value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Corrupt {
            key: key.to_string(),
            reason: format!("cannot encode: {e}"),
        })
}

/// A handle on one repository of a [`Store`].
#[derive(Clone, Debug)]
pub struct Repository {
    store: Store,
    name: RepositoryName,
}

impl Repository {
    /// The repository's name.
    #[must_use]
    pub fn name(&self) -> &RepositoryName {
        &self.name
    }

    /// The store this repository belongs to.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Lists the repository in the catalog. Idempotent; called before anything of the
    /// repository becomes visible, so a visible manifest's repository is always listed.
    ///
    /// Only garbage collection removes a catalog entry, so once the store has seen or written
    /// it, it remembers that for as long as it sees the same GC generation and asks the
    /// backend nothing. During a run a write pins the repository before it registers (the
    /// run cannot remove it then), and a write that a run started under checks again
    /// afterwards ([`Self::published_blob`]).
    async fn register(&self) -> Result<()> {
        if let Some(pending) = self.unregistered().await? {
            self.store.write(&pending.marker, Bytes::new()).await?;
            self.remember_registered(&pending);
        }
        Ok(())
    }

    /// The catalog marker to write if this store does not know the repository to be in the
    /// catalog and it is not (one `HEAD`); then [`Self::remember_registered`] once it is written.
    async fn unregistered(&self) -> Result<Option<Registration>> {
        let generation = self.store.gc_seen().await?.generation;
        let pending = Registration {
            generation,
            marker: self.store.keys().catalog_marker(&self.name),
        };
        {
            let registered = self.store.registered();
            if registered.0 == generation && registered.1.contains(&self.name) {
                return Ok(None);
            }
        }
        if self.store.exists(&pending.marker).await? {
            self.remember_registered(&pending);
            return Ok(None);
        }
        Ok(Some(pending))
    }

    /// Remembers that the repository is in the catalog, as of the GC generation seen.
    fn remember_registered(&self, pending: &Registration) {
        let mut registered = self.store.registered();
        if registered.0 != pending.generation || registered.1.len() >= REGISTERED_REMEMBERED {
            *registered = (pending.generation, HashSet::new());
        }
        registered.1.insert(self.name.clone());
    }

    /// Forgets that the repository is in the catalog (after a run may have removed it).
    fn forget_registered(&self) {
        self.store.registered().1.remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_passes_on_a_fresh_store_and_on_an_absent_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let store = Store::new(Backend::filesystem(&root).unwrap());
        store.probe().await.unwrap();
        std::fs::remove_dir(&root).unwrap();
        store.probe().await.unwrap();
    }

    #[tokio::test]
    async fn a_probe_fails_while_the_root_is_a_file_and_passes_once_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let store = Store::new(Backend::filesystem(&root).unwrap());
        let aside = dir.path().join("aside");
        std::fs::rename(&root, &aside).unwrap();
        std::fs::write(&root, b"not a directory").unwrap();
        assert!(store.probe().await.is_err());
        std::fs::remove_file(&root).unwrap();
        std::fs::rename(&aside, &root).unwrap();
        store.probe().await.unwrap();
    }

    #[test]
    fn pages_are_sorted_deduplicated_and_cut_after_last() {
        let all = vec!["c", "a", "b", "d", "b"];
        let p = Paginated::page(all.clone(), Some(2), None);
        assert_eq!(p.items, vec!["a", "b"]);
        assert!(p.truncated);
        let p = Paginated::page(all.clone(), Some(2), Some("b"));
        assert_eq!(p.items, vec!["c", "d"]);
        assert!(!p.truncated);
        let p = Paginated::page(all, None, Some("zz"));
        assert!(p.items.is_empty());
        assert!(!p.truncated);
    }
}
