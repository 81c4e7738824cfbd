//! Stores over a test backend, built the ways the suites need.

use std::sync::Arc;

use layerstore::cache::{BlobDescriptorCache, MemoryCache};
use layerstore::upload::StdFileSystem;
use layerstore::{Backend, Store};
use object_store::ObjectStore;
use object_store::multipart::MultipartStore;

use super::counting::CountingStore;
use super::faulty::FaultyStore;
use super::faulty_fs::FaultyFs;
use super::{BackendKind, TestBackend};

/// The store a registry would build on this backend: for the filesystem kind the real
/// filesystem backend (its own upload and publish path) over the test directory; for the
/// others, the object store itself.
pub fn store_on(b: &TestBackend) -> Store {
    Store::new(backend_on(b))
}

/// The backend under [`store_on`], for a store built another way (with a cache of its own).
pub fn backend_on(b: &TestBackend) -> Backend {
    match (b.kind, &b.fs_root) {
        (BackendKind::Filesystem, Some(root)) => {
            Backend::filesystem(root).expect("filesystem backend")
        }
        _ => backend_over(b.store.clone(), b.multipart.clone()),
    }
}

/// A store over any object store (a wrapped one, say): always the object-store paths.
pub fn store_over(
    objects: Arc<dyn ObjectStore>,
    multipart: Option<Arc<dyn MultipartStore>>,
) -> Store {
    Store::new(backend_over(objects, multipart))
}

fn backend_over(
    objects: Arc<dyn ObjectStore>,
    multipart: Option<Arc<dyn MultipartStore>>,
) -> Backend {
    let backend = Backend::object_store(objects);
    match multipart {
        Some(m) => backend.with_multipart(m),
        None => backend,
    }
}

/// The store a registry would build on this backend ([`store_on`]), with every backend request
/// — and on the filesystem every call of its upload engine — numbered, failed or held by the
/// one [`FaultyStore`] returned: fault tests run the production engines.
pub fn faulty_store_on(b: &TestBackend) -> (Store, Arc<FaultyStore>) {
    let faulty = b.faulty();
    let store = match (b.kind, &b.fs_root) {
        (BackendKind::Filesystem, Some(root)) => Store::new(Backend::filesystem_with(
            root,
            faulty.clone(),
            Arc::new(FaultyFs::sharing(&faulty)),
        )),
        _ => store_over(faulty.clone(), faulty.multipart_store()),
    };
    (store, faulty)
}

/// The store a registry would build on this backend ([`store_on`], with its default cache),
/// with every request it sends to the object store counted by the [`CountingStore`] returned
/// (on the filesystem: links, manifests and reads; the upload engine's file calls are not
/// object-store requests).
pub fn counting_store_on(b: &TestBackend) -> (Store, Arc<CountingStore>) {
    counting_store_with_cache(b, Some(Arc::new(MemoryCache::default())))
}

/// [`counting_store_on`] with the given blob-descriptor cache.
pub fn counting_store_with_cache(
    b: &TestBackend,
    cache: Option<Arc<dyn BlobDescriptorCache>>,
) -> (Store, Arc<CountingStore>) {
    let counting = b.counting();
    let backend = match (b.kind, &b.fs_root) {
        (BackendKind::Filesystem, Some(root)) => {
            Backend::filesystem_with(root, counting.clone(), Arc::new(StdFileSystem))
        }
        _ => backend_over(counting.clone(), counting.multipart_store()),
    };
    (Store::with_cache(backend, cache), counting)
}
