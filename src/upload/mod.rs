//! Resumable upload sessions whose whole state lives in the backend.
//!
//! A session is started in a repository, receives chunks at its current offset, and is
//! committed with the expected digest (or cancelled). After every chunk the session state —
//! offset, times, the serialized hash state and where the bytes are — is written to the
//! backend, so any process sharing the backend can resume it, and a commit never reads back
//! an uploaded byte.
//!
//! Where the bytes go is the business of the backend's upload engine (`engine`), chosen
//! once when the backend is built:
//!
//! - **Filesystem** (`fs`): one staging file per session, appended and fsynced per chunk,
//!   published by `rename` into the blob's place on commit (O(1), no byte moves). Appends,
//!   commits and purges of one session are serialized by an OS file lock, so racing appends —
//!   from one process or several — see exactly one winner, and a purge never deletes a
//!   session that is in use. No thread waits for a client: a stalled request body costs a
//!   file descriptor and a little memory.
//! - **Object stores** (`objects`: S3, Azure, memory): the session owns multipart uploads
//!   whose ids and recorded parts live in its state; chunk bytes are sent as parts of 8 MiB or
//!   more, and what cannot fill a part yet (S3's minimum is 5 MiB) is staged as a few small
//!   objects, merged as they accumulate, and read back to lead the next part, so any chunk
//!   pattern works and a blob is always a few objects. A commit completes the uploads where
//!   they are and writes one small object listing the pieces: no copy, no download, whatever
//!   the blob's size. Every state change is a conditional put (`PutMode::Update` on its
//!   version), so racing appends see exactly one winner, and a commit and a purge of one
//!   session cannot both succeed.

pub(crate) mod engine;
pub(crate) mod fs;
pub(crate) mod objects;
mod purge;
mod session;

use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::BoxStream;

pub use fs::{FileHandle, FileInfo, FileSystem, LockAttempt, StdFileSystem};
pub use purge::{PurgeOptions, PurgeReport, Purger, PurgerConfig};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::metrics;
use crate::name::RepositoryName;
use crate::store::{BLOB_MEDIA_TYPE, BlobInfo, Repository};

/// The id of an upload session: 32 lowercase hex characters (128 random bits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    /// Parses an id received from a client.
    ///
    /// # Errors
    /// [`Error::BlobUploadUnknown`] for anything that is not an id this store could have made:
    /// no session can have it.
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::BlobUploadUnknown {
                id: crate::error::truncate_for_message(s),
            })
        }
    }

    pub(crate) fn random() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }

    /// The id as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: UploadId,
    pub repository: RepositoryName,
    /// Bytes received so far; the next chunk must start here.
    pub offset: u64,
    pub started_at: SystemTime,
    pub last_active: SystemTime,
}

/// A stream of chunk bytes as a frontend receives them.
pub type ChunkStream<'a> = BoxStream<'a, std::io::Result<Bytes>>;

/// Checks a finished upload against what the client expects.
pub(crate) fn verify(
    actual: &Digest,
    size: u64,
    expected: &Digest,
    expected_size: Option<u64>,
) -> Result<()> {
    if let Some(want) = expected_size
        && want != size
    {
        return Err(Error::SizeInvalid {
            reason: format!("upload has {size} bytes, expected {want}"),
        });
    }
    if actual != expected {
        return Err(Error::digest_invalid(format!(
            "upload has digest {actual}, expected {expected}"
        )));
    }
    Ok(())
}

/// Blob info for a freshly published upload.
pub(crate) fn published(digest: &Digest, size: u64) -> BlobInfo {
    BlobInfo {
        digest: *digest,
        size,
        media_type: BLOB_MEDIA_TYPE,
    }
}

/// The error of a chunk or blob stream that failed while it was being received.
pub(crate) fn receiving(e: std::io::Error) -> Error {
    Error::io("receiving the chunk", e)
}

impl Repository {
    fn engine(&self) -> &dyn engine::UploadEngine {
        self.store().backend().engine()
    }

    /// Starts an upload session in this repository.
    ///
    /// # Errors
    /// Backend failures only.
    pub async fn start_upload(&self) -> Result<UploadStatus> {
        let status = self.engine().start(self.store(), self.name()).await?;
        metrics::upload_started();
        Ok(status)
    }

    /// Where a session stands.
    ///
    /// # Errors
    /// [`Error::BlobUploadUnknown`] if there is no such session in this repository.
    pub async fn upload_status(&self, id: &UploadId) -> Result<UploadStatus> {
        let status = self.engine().status(self.store(), id).await?;
        if &status.repository != self.name() {
            return Err(Error::BlobUploadUnknown { id: id.to_string() });
        }
        Ok(status)
    }

    /// Appends a chunk that starts at `offset`, which must be the session's current offset.
    ///
    /// The chunk is durable and the new state persisted when this returns. If the stream
    /// fails midway, nothing of this chunk counts and the session stays at `offset`. On the
    /// filesystem the new state is fsynced by the next append, so a power loss (not a process
    /// crash) can roll the session back to `offset`, never further: [`Self::upload_status`]
    /// then reports it and the client sends the chunk again.
    ///
    /// # Errors
    /// [`Error::BlobUploadInvalid`] once a commit of the session has begun (object stores).
    /// [`Error::RangeInvalid`] with [`crate::RangeError::UploadOffset`] (carrying the current
    /// offset) if `offset` is not the current offset. Of racing appends at one offset exactly
    /// one is accepted; the others get this error with the offset the accepted one left.
    /// [`Error::BlobUploadUnknown`]; [`Error::Io`] if the chunk stream fails.
    pub async fn append_upload(
        &self,
        id: &UploadId,
        offset: u64,
        chunk: ChunkStream<'_>,
    ) -> Result<UploadStatus> {
        self.engine().append(self, id, offset, chunk).await
    }

    /// [`Self::append_upload`] at `offset`, or, with `None`, where the session stands (a
    /// client that streams chunks without naming their offset), without a separate
    /// [`Self::upload_status`].
    ///
    /// # Errors
    /// As [`Self::append_upload`].
    pub async fn append_upload_from(
        &self,
        id: &UploadId,
        offset: Option<u64>,
        chunk: ChunkStream<'_>,
    ) -> Result<UploadStatus> {
        self.engine().append_from(self, id, offset, chunk).await
    }

    /// Appends the last chunk as [`Self::append_upload_from`] does, then commits as
    /// [`Self::commit_upload`] does: the `PUT` with a body that ends an upload, and the way
    /// clients push small blobs (`POST`, then this with the whole blob).
    ///
    /// On object stores, a small whole blob sent to a session that is still empty is
    /// published from the request itself, in three requests (the session is ended by a
    /// conditional write, the bytes are stored unless the store has them, the link), and a
    /// session this store just started is not read back. The outcome is as if appended and
    /// committed, but for a wrong digest: then it is appended, and the commit refused.
    ///
    /// # Errors
    /// As [`Self::append_upload`] and [`Self::commit_upload`].
    pub async fn finish_upload(
        &self,
        id: &UploadId,
        offset: Option<u64>,
        chunk: ChunkStream<'_>,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        let write = self
            .engine()
            .finish(self, id, offset, chunk, expected, expected_size);
        let info = self.publishing(expected, write).await?;
        metrics::session_committed();
        self.pushed(&info);
        Ok(info)
    }

    /// Verifies the session's bytes against `expected` (and `expected_size`), then publishes
    /// them as that blob, linked into this repository, and ends the session.
    ///
    /// No uploaded byte is read or copied: the digest comes from the persisted hash state, and
    /// publishing is a rename (filesystem) or completing the multipart uploads where they are
    /// and writing one small index object (object stores). The one exception is the first
    /// commit of a session under a SHA-512 digest: sessions hash SHA-256 as bytes arrive, so
    /// that commit hashes the stored bytes once; from then on the session keeps both hashes.
    ///
    /// # Errors
    /// [`Error::DigestInvalid`] or [`Error::SizeInvalid`] on a mismatch: nothing is published
    /// and the session stays resumable. [`Error::BlobUploadUnknown`]; [`Error::BlobUploadInvalid`]
    /// if the session is busy (receiving a chunk, or changed by a racing request).
    pub async fn commit_upload(
        &self,
        id: &UploadId,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        let write = self.engine().commit(self, id, expected, expected_size);
        let info = self.publishing(expected, write).await?;
        metrics::session_committed();
        self.pushed(&info);
        Ok(info)
    }

    /// Cancels a session and deletes what it staged.
    ///
    /// If this fails midway, the session is either untouched or already unknown (it can no
    /// longer be appended to or committed); calling it again, or the next purge, finishes it.
    /// A commit of the session that has not yet verified its digest fails instead; one that
    /// has is finished (the blob is stored, but not linked here).
    ///
    /// # Errors
    /// [`Error::BlobUploadUnknown`] if there is no such session in this repository.
    pub async fn cancel_upload(&self, id: &UploadId) -> Result<()> {
        self.engine().cancel(self, id).await?;
        metrics::session_cancelled();
        Ok(())
    }

    /// Stores a blob from a stream: the same verified, atomic path as a chunked upload, in
    /// bounded memory. Nothing of it is left behind on failure.
    ///
    /// # Errors
    /// As [`Self::append_upload`] and [`Self::commit_upload`].
    pub async fn put_blob_stream(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
        data: ChunkStream<'_>,
    ) -> Result<BlobInfo> {
        let write = self
            .engine()
            .put_stream(self, expected, expected_size, data);
        metrics::monolithic_started();
        let info = self.publishing(expected, write).await?;
        metrics::monolithic_committed();
        self.pushed(&info);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_are_32_lowercase_hex() {
        let id = UploadId::random();
        assert_eq!(UploadId::parse(id.as_str()).unwrap(), id);
        for bad in [
            "",
            "../../etc",
            &"A".repeat(32),
            &"a".repeat(31),
            &"a".repeat(33),
        ] {
            assert!(UploadId::parse(bad).is_err(), "{bad}");
        }
    }
}
