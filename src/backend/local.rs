//! The filesystem backend's object store: `object_store`'s `LocalFileSystem` (with fsync and
//! automatic cleanup of emptied directories), wrapped so that a put racing a delete of the same
//! name, or of a neighbour, ends as one order of the two, never as an error.
//!
//! `LocalFileSystem` with automatic cleanup removes the directories a delete empties, and a put
//! makes its directory, writes a staged file beside the destination, renames it into place and
//! fsyncs the directory; a delete in between makes the put fail with `NotFound` although either
//! the put never published anything (it can be made again) or it published and the delete then
//! removed it (the put succeeded, followed by the delete). Only this backend fails so; the
//! store's shared code stays free of it.
//!
//! Durable overwrites (links, tags, manifests: every put the store makes but its create-only
//! ones) do not go through `LocalFileSystem`: they are written by the upload engine's
//! [`DirSyncer`] over the same file-system seam, so that concurrent writes share their
//! directory fsyncs (group commit) with each other and with blob commits. Same staging names,
//! same durability on return; see `docs/storage.md`, "Durability".

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use crate::layout::local_path;
use crate::upload::fs::DirSyncer;

/// `LocalFileSystem` (or a wrapper of it, in tests), with puts that a racing delete cannot
/// fail.
#[derive(Debug)]
pub(crate) struct LocalObjects {
    inner: Arc<dyn ObjectStore>,
    root: PathBuf,
    syncer: Arc<DirSyncer>,
}

impl LocalObjects {
    /// `inner` over `root`; overwrites go through `syncer` (over the same directory).
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, root: PathBuf, syncer: Arc<DirSyncer>) -> Self {
        Self {
            inner,
            root,
            syncer,
        }
    }

    /// Writes `location` durably through the group-committing [`DirSyncer`].
    async fn overwrite(&self, location: &Path, payload: PutPayload) -> Result<PutResult> {
        let path = local_path(&self.root, location);
        let pieces: Vec<Bytes> = payload.into_iter().collect();
        self.syncer
            .write_file(&self.root, &path, pieces)
            .await
            .map_err(write_error)?;
        Ok(PutResult {
            e_tag: None,
            version: None,
            extensions: Default::default(),
        })
    }
}

/// A failed durable write of this backend, as `LocalFileSystem` reports its own (so that
/// [`raced_delete`] and the store's error mapping read both alike).
pub(crate) fn write_error(source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(source),
    }
}

impl fmt::Display for LocalObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for LocalObjects {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let overwrite = matches!(opts.mode, PutMode::Overwrite);
        if overwrite && opts.attributes.is_empty() {
            // Races with deletes are settled inside (`DirSyncer::write_file`).
            return self.overwrite(location, payload).await;
        }
        let mut attempt = 1;
        loop {
            let e = match self
                .inner
                .put_opts(location, payload.clone(), opts.clone())
                .await
            {
                Ok(done) => return Ok(done),
                Err(e) => e,
            };
            match raced_delete(&e) {
                Some(RacedDelete::Published) if overwrite => {
                    tracing::debug!(%location, "written, then deleted by a concurrent delete");
                    return Ok(PutResult {
                        e_tag: None,
                        version: None,
                        extensions: Default::default(),
                    });
                }
                Some(RacedDelete::NotWritten) if attempt < WRITE_ATTEMPTS => {
                    tracing::debug!(
                        %location,
                        attempt,
                        "a concurrent delete removed a directory being made; writing again"
                    );
                    attempt += 1;
                }
                _ => return Err(e),
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// How many times [`LocalObjects`] tries a put that a concurrent delete undid before it could
/// publish anything. Each retry needs another delete to empty the directory at that moment.
const WRITE_ATTEMPTS: usize = 8;

/// How a concurrent delete made a put fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RacedDelete {
    /// The object was published, then deleted (with its emptied directory) before the put could
    /// sync that directory: the put did take effect, followed by the delete.
    Published,
    /// A directory the put had just made was removed as empty by a delete's cleanup before the
    /// object was in it: nothing was published, and the put can be made again.
    NotWritten,
}

/// Whether `e`, from a put, is the work of a concurrent delete rather than a failure.
///
/// Only object_store's `LocalFileSystem` fails so: with automatic cleanup, a delete removes the
/// directories it empties, and a put (fsynced) creates its directories, writes a staged file
/// beside the destination, renames it into place and fsyncs the directory. A directory that
/// vanishes under the put shows as a `NotFound` I/O error. The staged file keeps the directory
/// from being empty until the rename, so when the error is `UnableToRenameFile` (what 0.14
/// reports for the rename and the directory fsync after it) the object was published before
/// the delete removed it; any other step failed before anything was published.
fn raced_delete(e: &object_store::Error) -> Option<RacedDelete> {
    let object_store::Error::Generic {
        store: "LocalFileSystem",
        source,
    } = e
    else {
        return None;
    };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    let mut not_found = false;
    while let Some(error) = next {
        not_found |= error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
        next = error.source();
    }
    if !not_found {
        return None;
    }
    if failed_at_rename(source.as_ref()) {
        Some(RacedDelete::Published)
    } else {
        Some(RacedDelete::NotWritten)
    }
}

/// Whether a `LocalFileSystem` error is its `UnableToRenameFile`. The type is private to
/// object_store, so the variant is known by its name only (a test pins it).
fn failed_at_rename(local: &(dyn std::error::Error + Send + Sync)) -> bool {
    format!("{local:?}").starts_with("UnableToRenameFile")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use object_store::ObjectStoreExt;

    /// The error of a failed put to `key` through `LocalFileSystem` as the filesystem backend
    /// builds it (what [`LocalObjects`] still hands it: create-only puts).
    async fn failed_put(root: &std::path::Path, key: &str) -> object_store::Error {
        let local = object_store::local::LocalFileSystem::new_with_prefix(root)
            .unwrap()
            .with_fsync(true)
            .with_automatic_cleanup(true);
        local
            .put(&Path::from(key), Bytes::from_static(b"x").into())
            .await
            .unwrap_err()
    }

    /// The backend's own durable put reports the same failures as errors, not as races.
    #[tokio::test]
    async fn a_put_over_a_directory_or_under_a_file_fails() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dir/inside")).unwrap();
        std::fs::write(root.path().join("file"), b"").unwrap();
        let backend = Backend::filesystem(root.path()).unwrap();
        for key in ["dir", "file/key"] {
            let put = backend
                .objects
                .put(&Path::from(key), Bytes::from_static(b"x").into())
                .await;
            assert!(put.is_err(), "{key}: {put:?}");
        }
    }

    fn local_source(e: &object_store::Error) -> &(dyn std::error::Error + Send + Sync) {
        match e {
            object_store::Error::Generic {
                store: "LocalFileSystem",
                source,
            } => source.as_ref(),
            other => panic!("not a LocalFileSystem error: {other:?}"),
        }
    }

    /// `raced_delete` tells the two races apart by the variant name of object_store's private
    /// error: a release that renamed it must fail here, not quietly retry published writes.
    #[tokio::test]
    async fn a_put_failing_at_its_rename_is_told_from_one_failing_before() {
        let root = tempfile::tempdir().unwrap();
        // A non-empty directory where the object goes: the rename into place fails.
        std::fs::create_dir_all(root.path().join("dir/inside")).unwrap();
        let at_rename = failed_put(root.path(), "dir").await;
        assert!(failed_at_rename(local_source(&at_rename)), "{at_rename:?}");
        // A file where a directory goes: the staged file cannot even be opened.
        std::fs::write(root.path().join("file"), b"").unwrap();
        let before = failed_put(root.path(), "file/key").await;
        assert!(!failed_at_rename(local_source(&before)), "{before:?}");
        // Neither is a delete's doing: both stay errors.
        assert_eq!(raced_delete(&at_rename), None);
        assert_eq!(raced_delete(&before), None);
    }
}
