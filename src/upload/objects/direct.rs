//! The last chunk and the commit in one request (a `PUT` with a body), and the small blob that
//! comes whole with it.
//!
//! Registry clients push a small blob as `POST`, then `PUT ?digest=` with the whole body. When
//! the session is still empty and the body is small, the blob is published straight from the
//! request instead of as a staged segment and an index:
//!
//! 1. the session's state is replaced, conditionally on the version the `POST` wrote (which
//!    this engine remembers, so it reads nothing), by a cancelled one: from then on no append,
//!    commit or cancel can use the session, and one that wrote first makes this write fail
//!    (then the request takes the ordinary path, which sorts the race out as it always does);
//! 2. the store's segment index of the digest is looked for (the bytes may be stored as
//!    segments already), and unless there is one, the bytes are written as the blob's object
//!    (an existing one is the same bytes);
//! 3. the blob is linked.
//!
//! With the `POST`'s write that is five requests. The cancelled state is what a crash after
//! step 1 leaves too; the purger deletes it at its next run (it takes no append or commit).

use bytes::Bytes;
use futures::StreamExt;
use object_store::UpdateVersion;

use super::state::ObjectSession;
use super::{ObjectEngine, Stop, load, replace_state};
use crate::cache::CachedBlob;
use crate::digest::Digest;
use crate::error::Result;
use crate::store::{BlobInfo, Repository, Store};
use crate::upload::engine::UploadEngine;
use crate::upload::{ChunkStream, UploadId, published, receiving};

/// Bodies up to this size are taken whole into memory and published from there; hashing this
/// much on the request's task takes a fraction of a millisecond.
pub(super) const DIRECT_MAX: usize = 256 * 1024;

impl ObjectEngine {
    /// Appends `chunk` at `offset` (where the session stands if `None`) and commits.
    pub(super) async fn finish_upload(
        &self,
        repo: &Repository,
        id: &UploadId,
        offset: Option<u64>,
        chunk: ChunkStream<'_>,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        let store = repo.store();
        let remembered = self.remembered(id).await;
        let from_memory = remembered.is_some();
        let (state, version) = match remembered {
            Some(fresh) => fresh,
            None => load(store, id).await?,
        };
        state.session.check_repository(repo.name(), id)?;
        let empty = state.session.offset == 0
            && state.segments.is_empty()
            && state.publishing.is_none()
            && state.appending.is_none()
            && !state.verified;
        if !empty || offset.is_some_and(|o| o != 0) {
            return self
                .append_then_commit(repo, id, offset, chunk, expected, expected_size)
                .await;
        }
        let whole = match take_up_to(chunk, DIRECT_MAX).await? {
            Taken::Whole(whole)
                if expected.verify(&whole).is_ok()
                    && expected_size.is_none_or(|n| n == whole.len() as u64) =>
            {
                whole
            }
            // Too large, or the client's mistake: the ordinary path stores what came and
            // reports the mistake the way it always does, the session still resumable.
            taken => {
                return self
                    .append_then_commit(
                        repo,
                        id,
                        offset,
                        taken.into_stream(),
                        expected,
                        expected_size,
                    )
                    .await;
            }
        };
        if !self.claim(store, id, &state, version).await? {
            // The remembered state was stale (a chunk came through another replica since):
            // the ordinary way, from where the session stands. Or something wrote since it
            // was read: the ordinary way at the offset this request was for, so that of it
            // and a racing chunk one fails.
            let offset = if from_memory { offset } else { Some(0) };
            let chunk = futures::stream::iter([Ok(whole)]).boxed();
            return self
                .append_then_commit(repo, id, offset, chunk, expected, expected_size)
                .await;
        }
        let size = whole.len() as u64;
        let blob = store_bytes(store, expected, whole).await?;
        repo.link_blob(expected, blob).await?;
        Ok(published(expected, size))
    }

    async fn append_then_commit(
        &self,
        repo: &Repository,
        id: &UploadId,
        offset: Option<u64>,
        chunk: ChunkStream<'_>,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        super::append::append(self, repo, id, offset, chunk).await?;
        self.commit(repo, id, expected, expected_size).await
    }

    /// Ends the session before its blob is published from the request: `false` if something
    /// else changed it first (or the remembered version was stale).
    async fn claim(
        &self,
        store: &Store,
        id: &UploadId,
        state: &ObjectSession,
        version: UpdateVersion,
    ) -> Result<bool> {
        let mut ended = state.clone();
        ended.cancelled = true;
        match replace_state(store, id, &ended, version).await {
            Ok(_) => Ok(true),
            Err(Stop::Lost) => Ok(false),
            Err(Stop::Failed(e)) => Err(e),
        }
    }
}

/// Stores verified bytes as the blob `digest` unless the store has it as segments. As an
/// object it is written whether or not it is there: the bytes are the same, each write is
/// atomic, so concurrent puts of the same content leave one whole copy, and one request
/// costs what a check would. Two requests.
pub(super) async fn store_bytes(
    store: &Store,
    digest: &Digest,
    bytes: Bytes,
) -> Result<CachedBlob> {
    if let Some(index) = store.read_segment_index(digest).await? {
        return Ok(CachedBlob::segments(index.size));
    }
    let size = bytes.len() as u64;
    store.write(&store.keys().blob_data(digest), bytes).await?;
    Ok(CachedBlob::object(size))
}

/// What [`take_up_to`] read.
pub(super) enum Taken<'a> {
    /// The whole body, which ended within the limit, copied into one buffer of its size.
    Whole(Bytes),
    /// A longer body, from its start: the frames read so far (as they came), then the rest.
    Longer(ChunkStream<'a>),
}

impl<'a> Taken<'a> {
    /// The body as a stream again.
    pub(super) fn into_stream(self) -> ChunkStream<'a> {
        match self {
            Taken::Whole(whole) => futures::stream::iter([Ok(whole)]).boxed(),
            Taken::Longer(stream) => stream,
        }
    }
}

/// Reads `chunk` until it ends or more than `max` bytes came. A body that ended is copied
/// once into a buffer of its size (no buffer growing by doubling, and no frame keeps the
/// server's read buffer it was cut from); the frames of a longer one are passed on as they are.
pub(super) async fn take_up_to(mut chunk: ChunkStream<'_>, max: usize) -> Result<Taken<'_>> {
    let mut frames = Vec::new();
    let mut len = 0;
    while let Some(bytes) = chunk.next().await {
        let bytes = bytes.map_err(receiving)?;
        len += bytes.len();
        frames.push(bytes);
        if len > max {
            let head = futures::stream::iter(frames.into_iter().map(Ok));
            return Ok(Taken::Longer(head.chain(chunk).boxed()));
        }
    }
    let mut whole = Vec::with_capacity(len);
    for frame in &frames {
        whole.extend_from_slice(frame);
    }
    Ok(Taken::Whole(Bytes::from(whole)))
}
