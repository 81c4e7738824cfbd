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

    /// Appends a last chunk and commits in one step; see [`Repository::finish_upload`]. An
    /// engine that can skip persisting the session between the two (nothing was acknowledged
    /// in between) does; by default, an append then a commit.
    async fn append_and_commit(
        &self,
        repo: &Repository,
        id: &UploadId,
        offset: u64,
        chunk: ChunkStream<'_>,
        expected: &Digest,
    ) -> Result<BlobInfo> {
        self.append(repo, id, offset, chunk).await?;
        self.commit(repo, id, expected, None).await
    }

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
}
