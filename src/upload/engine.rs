//! The seam between the upload API and the storage underneath it: one engine per kind of
//! backend, chosen once when the backend is built ([`crate::Backend`]), never asked about
//! afterwards. Shared code calls these methods and nothing else; each engine keeps its own
//! session state and its own way of publishing a blob.
//!
//! - [`super::fs::FsEngine`]: a staging file per session, published by rename; its file-system
//!   calls go through [`super::fs::FileSystem`], which tests wrap to fail or crash each one.
//! - [`super::objects::ObjectEngine`]: multipart uploads and staged pieces on an object store
//!   (S3, Azure, memory), or one object per chunk without a `MultipartStore`.

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;

use super::{ChunkStream, PurgeOptions, PurgeReport, UploadId, UploadStatus};
use crate::digest::Digest;
use crate::error::Result;
use crate::name::RepositoryName;
use crate::store::{BlobInfo, Repository, Store};

#[async_trait]
pub(crate) trait UploadEngine: Send + Sync + fmt::Debug {
    /// Starts a session in `repository`.
    async fn start(&self, store: &Store, repository: &RepositoryName) -> Result<UploadStatus>;

    /// Appends `chunk` at `offset`, or where the session stands if `None` (a `PATCH`
    /// without `Content-Range`).
    async fn append_from(
        &self,
        repo: &Repository,
        id: &UploadId,
        offset: Option<u64>,
        chunk: ChunkStream<'_>,
    ) -> Result<UploadStatus> {
        let offset = match offset {
            Some(offset) => offset,
            None => self.status(repo.store(), id).await?.offset,
        };
        self.append(repo, id, offset, chunk).await
    }

    /// Appends the last chunk as [`Self::append_from`] does, then commits (a `PUT` with a
    /// body). Engines that can do both in fewer steps do.
    async fn finish(
        &self,
        repo: &Repository,
        id: &UploadId,
        offset: Option<u64>,
        chunk: ChunkStream<'_>,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        self.append_from(repo, id, offset, chunk).await?;
        self.commit(repo, id, expected, expected_size).await
    }

    /// Where a live session stands, in whatever repository it was started.
    async fn status(&self, store: &Store, id: &UploadId) -> Result<UploadStatus>;

    /// Appends a chunk at `offset`; see [`Repository::append_upload`] for the contract.
    async fn append(
        &self,
        repo: &Repository,
        id: &UploadId,
        offset: u64,
        chunk: ChunkStream<'_>,
    ) -> Result<UploadStatus>;

    /// Verifies the session's bytes, publishes them as `expected`, links the blob into
    /// `repo` and ends the session; see [`Repository::commit_upload`].
    async fn commit(
        &self,
        repo: &Repository,
        id: &UploadId,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo>;

    /// Ends a session without publishing; see [`Repository::cancel_upload`].
    async fn cancel(&self, repo: &Repository, id: &UploadId) -> Result<()>;

    /// Stores a whole blob from one stream and links it into `repo`: verified before it is
    /// published, in bounded memory.
    async fn put_stream(
        &self,
        repo: &Repository,
        expected: &Digest,
        expected_size: Option<u64>,
        data: ChunkStream<'_>,
    ) -> Result<BlobInfo>;

    /// Stores a blob held in memory and links it into `repo`.
    async fn put_bytes(
        &self,
        repo: &Repository,
        expected: &Digest,
        data: Bytes,
    ) -> Result<BlobInfo>;

    /// Deletes sessions idle for longer than `options.older_than` (one sweep of the purger).
    async fn purge(&self, store: &Store, options: PurgeOptions) -> Result<PurgeReport>;

    /// Streams a blob stored as one object (`blobs/…/data`), or a range of it: the object the
    /// engine's commit published.
    async fn read_object(
        &self,
        store: &Store,
        key: &Path,
        range: Option<Range<u64>>,
        digest: &Digest,
    ) -> Result<BoxStream<'static, Result<Bytes>>>;

    /// Writes each object of `writes` (overwriting), in order: once one is there after a
    /// crash, every one before it is. Returns once all are durable. Engines that can make the
    /// bytes of all durable at once and then publish them in order do (the filesystem's);
    /// others write them one after another.
    async fn write_in_order(&self, store: &Store, writes: Vec<(Path, Bytes)>) -> Result<()> {
        for (key, bytes) in writes {
            store.write(&key, bytes).await?;
        }
        Ok(())
    }
}
