//! Stores over a test backend, built the ways the suites need.

use std::sync::Arc;

use layerstore::{Backend, Store};
use object_store::ObjectStore;
use object_store::multipart::MultipartStore;

use super::faulty::FaultyStore;
use super::faulty_fs::FaultyFs;
use super::{BackendKind, TestBackend};

/// The store a registry would build on this backend: for the filesystem kind the real
/// filesystem backend (its own upload and publish path) over the test directory; for the
/// others, the object store itself.
pub fn store_on(b: &TestBackend) -> Store {
    match (b.kind, &b.fs_root) {
        (BackendKind::Filesystem, Some(root)) => {
            Store::new(Backend::filesystem(root).expect("filesystem backend"))
        }
        _ => store_over(b.store.clone(), b.multipart.clone()),
    }
}

/// A store over any object store (a wrapped one, say): always the object-store paths.
pub fn store_over(
    objects: Arc<dyn ObjectStore>,
    multipart: Option<Arc<dyn MultipartStore>>,
) -> Store {
    let backend = Backend::object_store(objects);
    Store::new(match multipart {
        Some(m) => backend.with_multipart(m),
        None => backend,
    })
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
