//! Stores over a test backend, built the ways the suites need.

use std::sync::Arc;

use layerstore::{Backend, Store};
use object_store::ObjectStore;
use object_store::multipart::MultipartStore;

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
