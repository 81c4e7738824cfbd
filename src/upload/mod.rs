//! Resumable upload sessions whose whole state lives in the backend.
//!
//! A session is started in a repository, receives chunks at its current offset, and is
//! committed with the expected digest (or cancelled). After every chunk the session state —
//! offset, times, the serialized SHA-256 state and where the bytes are — is written to the
//! backend, so any process sharing the backend can resume it, and a commit never reads back
//! an uploaded byte.
//!
//! Where the bytes go depends on the backend:
//!
//! - **Filesystem**: one staging file per session, appended and fsynced per chunk, published
//!   by `rename` into the blob's place on commit (O(1), no byte moves). Appends to one session
//!   are serialized by an OS file lock, so racing appends — from one process or several —
//!   see exactly one winner.
//! - **Object stores** (S3, Azure, memory): the session owns multipart uploads whose ids and
//!   recorded parts live in its state; chunk bytes are sent as parts of 8 MiB or more, and
//!   what cannot fill a part yet (S3's minimum is 5 MiB) is staged as a small object and read
//!   back to lead the next part, so 1 KiB chunks work. A commit completes the uploads where
//!   they are and writes one small object listing the pieces: no copy, no download, whatever
//!   the blob's size. Every state change is a conditional put (`PutMode::Update` on its
//!   version), so racing appends see exactly one winner; see `objects` for how parts of a
//!   loser never reach a blob.

mod fs;
mod objects;
mod purge;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sha2::Sha256;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};

pub(crate) use objects::SegmentIndex;
pub use purge::{PurgeOptions, PurgeReport, Purger, PurgerConfig};

use crate::digest::Digest;
use crate::error::{Error, RangeError, Result};
use crate::name::RepositoryName;
use crate::store::{BLOB_MEDIA_TYPE, BlobInfo, Repository, Store};

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

/// Version of the state format; bumped on any incompatible change. 2 added multipart
/// uploads, the append claim and the commit marker: a build that knows only 1 must refuse
/// such a state rather than take an open upload for an object.
const STATE_FORMAT: u32 = 2;
/// Formats this build reads (and rewrites as `STATE_FORMAT`).
const READABLE_FORMATS: [u32; 2] = [1, 2];
/// Tag of the serialized hash state: which crate and layout wrote it.
const HASH_FORMAT: &str = "sha2-0.11/sha256";

/// The persisted state of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionState {
    format: u32,
    repository: RepositoryName,
    offset: u64,
    started_at: DateTime<Utc>,
    last_active: DateTime<Utc>,
    hash: HashState,
    /// Object stores: the segments appended so far, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    segments: Vec<Segment>,
    /// Object stores: a cancel has begun. The session accepts nothing more, so a cancel that
    /// fails midway never leaves a session that could commit with segments missing; a retried
    /// cancel or the next purge finishes the deletion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    cancelled: bool,
    /// Object stores: a digest other than the session's SHA-256 that a commit is publishing its
    /// segments under, so that a cancel or purge after a failed commit finds the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    publishing: Option<Digest>,
    /// Object stores: an append has claimed the right to send parts to the open multipart
    /// upload (its random tag). An append that finds a claim takes over: it seals that upload
    /// and opens a new one, so a claimant that is still alive can never overwrite a part the
    /// session records; its own final state write then fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    appending: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HashState {
    format: String,
    /// Hex of sha2's serialized state.
    state: String,
}

/// One piece of an upload's bytes, in order: an object of its own (a staged chunk, or a
/// completed multipart upload), or a multipart upload still open, which becomes that object
/// when the commit completes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Segment {
    pub(crate) seq: u64,
    pub(crate) nonce: String,
    /// Bytes of the object; of an open multipart upload, of its recorded parts.
    pub(crate) size: u64,
    /// Set while this piece is an open multipart upload (never in a published index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) multipart: Option<OpenMultipart>,
}

/// A multipart upload of the session, with what the backend needs to complete it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OpenMultipart {
    /// The backend's id of the upload (`MultipartId`).
    pub(crate) id: String,
    /// The recorded parts, in order: each one's `PartId` content id (the ETag on S3, the
    /// block id on Azure) and size. Parts the backend holds beyond these are not the
    /// session's and are dropped by the completion.
    pub(crate) parts: Vec<Part>,
    /// No more parts go to this upload (an append took over from one that may still be
    /// sending parts to it, or it reached the part limit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) sealed: bool,
}

/// One recorded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Part {
    pub(crate) content_id: String,
    pub(crate) size: u64,
}

impl SessionState {
    fn new(repository: RepositoryName) -> Self {
        let now = Utc::now();
        Self {
            format: STATE_FORMAT,
            repository,
            offset: 0,
            started_at: now,
            last_active: now,
            hash: HashState::of(&Sha256::new()),
            segments: Vec::new(),
            cancelled: false,
            publishing: None,
            appending: None,
        }
    }

    fn status(&self, id: &UploadId) -> UploadStatus {
        UploadStatus {
            id: id.clone(),
            repository: self.repository.clone(),
            offset: self.offset,
            started_at: self.started_at.into(),
            last_active: self.last_active.into(),
        }
    }

    fn encode(&self) -> Bytes {
        // Plain strings and numbers: serialization cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        let state: Self = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        if !READABLE_FORMATS.contains(&state.format) {
            return Err(Error::Corrupt {
                key: key.to_owned(),
                reason: format!(
                    "upload state format {} (this build reads {READABLE_FORMATS:?})",
                    state.format
                ),
            });
        }
        Ok(Self {
            format: STATE_FORMAT,
            ..state
        })
    }

    fn check_offset(&self, requested: u64) -> Result<()> {
        if requested == self.offset {
            Ok(())
        } else {
            Err(Error::RangeInvalid(RangeError::UploadOffset {
                current: self.offset,
                requested,
            }))
        }
    }

    fn check_repository(&self, repo: &RepositoryName, id: &UploadId) -> Result<()> {
        if &self.repository == repo {
            Ok(())
        } else {
            Err(Error::BlobUploadUnknown { id: id.to_string() })
        }
    }
}

impl HashState {
    fn of(hasher: &Sha256) -> Self {
        let serialized = hasher.serialize();
        Self {
            format: HASH_FORMAT.to_owned(),
            state: hex_encode(&serialized),
        }
    }

    /// The hasher, or `None` if the state was written by something this build cannot read
    /// (the caller then re-hashes the stored bytes).
    fn restore(&self) -> Option<Sha256> {
        if self.format != HASH_FORMAT {
            return None;
        }
        let bytes = hex_decode(&self.state)?;
        let serialized = SerializedState::<Sha256>::try_from(bytes.as_slice()).ok()?;
        Sha256::deserialize(&serialized).ok()
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks a finished upload against what the client expects.
fn verify(actual: &Digest, size: u64, expected: &Digest, expected_size: Option<u64>) -> Result<()> {
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

impl Repository {
    /// Starts an upload session in this repository.
    ///
    /// # Errors
    /// Backend failures only.
    pub async fn start_upload(&self) -> Result<UploadStatus> {
        let id = UploadId::random();
        let state = SessionState::new(self.name().clone());
        if self.store().backend().local_root().is_some() {
            fs::start(self.store(), &id, &state).await?;
        } else {
            objects::start(self.store(), &id, &state).await?;
        }
        Ok(state.status(&id))
    }

    /// Where a session stands.
    ///
    /// # Errors
    /// [`Error::BlobUploadUnknown`] if there is no such session in this repository.
    pub async fn upload_status(&self, id: &UploadId) -> Result<UploadStatus> {
        let (state, _) = load(self.store(), id).await?;
        state.check_repository(self.name(), id)?;
        Ok(state.status(id))
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
    /// [`Error::RangeInvalid`] with [`RangeError::UploadOffset`] (carrying the current offset)
    /// if `offset` is not the current offset. Of racing appends at one offset exactly one is
    /// accepted; the others get this error with the offset the accepted one left.
    /// [`Error::BlobUploadUnknown`]; [`Error::Io`] if the chunk stream fails.
    pub async fn append_upload(
        &self,
        id: &UploadId,
        offset: u64,
        chunk: ChunkStream<'_>,
    ) -> Result<UploadStatus> {
        if self.store().backend().local_root().is_some() {
            fs::append(self, id, offset, chunk).await
        } else {
            objects::append(self, id, offset, chunk).await
        }
    }

    /// Verifies the session's bytes against `expected` (and `expected_size`), then publishes
    /// them as that blob, linked into this repository, and ends the session.
    ///
    /// No uploaded byte is read or copied: the digest comes from the persisted hash state, and
    /// publishing is a rename (filesystem) or completing the multipart uploads where they are
    /// and writing one small index object (object stores).
    ///
    /// # Errors
    /// [`Error::DigestInvalid`] or [`Error::SizeInvalid`] on a mismatch: nothing is published
    /// and the session stays resumable. [`Error::BlobUploadUnknown`].
    pub async fn commit_upload(
        &self,
        id: &UploadId,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        let info = if self.store().backend().local_root().is_some() {
            fs::commit(self, id, expected, expected_size).await?
        } else {
            objects::commit(self, id, expected, expected_size).await?
        };
        self.link_blob(expected).await?;
        remove_session(self.store(), id).await?;
        Ok(info)
    }

    /// Cancels a session and deletes what it staged.
    ///
    /// If this fails midway, the session is either untouched or already unknown (it can no
    /// longer be appended to or committed); calling it again, or the next purge, finishes it.
    /// On object stores, if a commit of the session had begun (it may still be running
    /// elsewhere), the session ends but its staged bytes are left for the purger, unless that
    /// commit published them.
    ///
    /// # Errors
    /// [`Error::BlobUploadUnknown`] if there is no such session in this repository.
    pub async fn cancel_upload(&self, id: &UploadId) -> Result<()> {
        if self.store().backend().local_root().is_none() {
            return objects::cancel(self, id).await;
        }
        let (state, _) = load(self.store(), id).await?;
        state.check_repository(self.name(), id)?;
        remove_session(self.store(), id).await
    }

    /// Stores a blob from a stream through a one-chunk session: the same verified, atomic
    /// path as a chunked upload, in bounded memory. On any failure the session is cancelled.
    ///
    /// # Errors
    /// As [`Self::append_upload`] and [`Self::commit_upload`].
    pub async fn put_blob_stream(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
        data: ChunkStream<'_>,
    ) -> Result<BlobInfo> {
        if self.store().backend().local_root().is_some() {
            let info = fs::put_stream(self, expected, expected_size, data).await?;
            self.link_blob(expected).await?;
            return Ok(info);
        }
        let session = self.start_upload().await?;
        let result = async {
            self.append_upload(&session.id, 0, data).await?;
            self.commit_upload(&session.id, expected, expected_size)
                .await
        }
        .await;
        if result.is_err() {
            // Best effort: an abandoned session is purged later anyway.
            let _ = self.cancel_upload(&session.id).await;
        }
        result
    }
}

/// Reads a live session's state and the version it was read at.
async fn load(store: &Store, id: &UploadId) -> Result<(SessionState, object_store::UpdateVersion)> {
    let (state, version) = load_any(store, id).await?;
    if state.cancelled {
        return Err(Error::BlobUploadUnknown { id: id.to_string() });
    }
    Ok((state, version))
}

/// Reads a session's state, also of one whose cancel has begun.
async fn load_any(
    store: &Store,
    id: &UploadId,
) -> Result<(SessionState, object_store::UpdateVersion)> {
    if store.backend().local_root().is_some() {
        // A two-slot file of its own; appends there are serialized by a lock, not versions.
        let state = fs::load_state(store, id).await?;
        let unversioned = object_store::UpdateVersion {
            e_tag: None,
            version: None,
        };
        return Ok((state, unversioned));
    }
    let key = store.keys().upload_state(id.as_str());
    let Some((bytes, version)) = store.read_versioned(&key).await? else {
        return Err(Error::BlobUploadUnknown { id: id.to_string() });
    };
    Ok((SessionState::decode(key.as_ref(), &bytes)?, version))
}

/// Deletes everything under `uploads/{id}/` (not the segments: a committed blob owns them).
async fn remove_session(store: &Store, id: &UploadId) -> Result<()> {
    if let Some(root) = store.backend().local_root() {
        let dir = root.join(store.keys().upload_prefix(id.as_str()).as_ref());
        return match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
        };
    }
    store.remove(&store.keys().upload_state(id.as_str())).await
}

/// Blob info for a freshly published upload.
fn published(digest: &Digest, size: u64) -> BlobInfo {
    BlobInfo {
        digest: *digest,
        size,
        media_type: BLOB_MEDIA_TYPE,
    }
}

/// How long ago `t` was, zero if it is in the future.
fn age(t: DateTime<Utc>, now: SystemTime) -> Duration {
    now.duration_since(t.into()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_state_round_trips_mid_stream() {
        let mut h = Sha256::new();
        h.update(b"hello ");
        let restored = HashState::of(&h).restore().expect("restorable");
        let mut restored = restored;
        restored.update(b"world");
        assert_eq!(restored.finalize(), Sha256::digest(b"hello world"));
    }

    #[test]
    fn foreign_hash_state_is_not_restored() {
        let mut state = HashState::of(&Sha256::new());
        state.format = "sha2-0.12/sha256".to_owned();
        assert!(state.restore().is_none());
        let mut state = HashState::of(&Sha256::new());
        state.state.truncate(10);
        assert!(state.restore().is_none());
    }

    #[test]
    fn a_format_1_state_is_read_and_rewritten_as_format_2() {
        let mut state = SessionState::new("library/hello".parse().unwrap());
        state.format = 1;
        let read = SessionState::decode("k", &state.encode()).unwrap();
        let rewritten: serde_json::Value = serde_json::from_slice(&read.encode()).unwrap();
        assert_eq!(rewritten["format"], STATE_FORMAT);
    }

    #[test]
    fn a_state_of_a_later_format_is_refused_as_corrupt() {
        let mut state = SessionState::new("library/hello".parse().unwrap());
        state.format = STATE_FORMAT + 1;
        let e = SessionState::decode("k", &state.encode()).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    }

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
