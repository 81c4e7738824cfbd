//! The object-store engine (S3, Azure, memory).
//!
//! With a `MultipartStore` a session owns multipart uploads whose ids and recorded parts live
//! in its state. Chunk bytes are sent as parts of 8 MiB or more; bytes that cannot fill a part
//! yet (S3 refuses parts under 5 MiB but for the last) are staged as small *segment* objects
//! and read back to lead the next part once enough has arrived, so a client sending 1 KiB
//! chunks works. A new staged segment takes in the staged segments before it that are no
//! larger than what follows them ([`state::absorbed`]), so a session never holds more than
//! about 23 of them, whatever the chunk pattern. The session's bytes are always, in order, its
//! pieces: multipart uploads (each at least 5 MiB) and at most those few staged segments. The
//! commit completes each multipart upload where it is — the object appears under the
//! session's segment prefix — and writes one small index object listing the pieces: no byte is
//! copied, read or moved.
//!
//! Without a `MultipartStore`, a chunk of 5 MiB or more is one segment object (taking the
//! staged segments in at its head), and a smaller one is staged like the remainders above.
//!
//! Concurrency: every state change is a conditional put on the version that was read, so of
//! two racing writers one wins. Part numbers are positions, so two appends must never send
//! parts to one upload at once: an append claims the upload with a state write before its
//! first part, and an append that finds a claim (a racing or crashed one) seals that upload
//! and opens a new one. Parts a loser sent are never recorded, and the completion, which
//! lists the recorded parts only, drops them. An append through the process whose last
//! append left the state (see [`append::Held`]) may start from that copy without reading it:
//! its conditional final write is what finds a stale copy out.
//!
//! Commit, cancel and purge: a commit writes its marker (`publishing`), and once the digest is
//! verified, `verified`, each by a conditional put. A cancel or purge marks the session
//! cancelled by a conditional put too. So either the cancel wins (the commit's next write
//! fails and nothing is published) or the commit verified first, and then the pieces are the
//! blob's: the cancel or purge finishes publishing them ([`commit::finish_publishing`])
//! instead of deleting them. No piece an index lists is ever deleted.

mod append;
mod buffers;
mod commit;
mod direct;
mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use self::commit::{Published, finish_publishing};
use self::state::{ObjectSession, Piece};
use super::engine::UploadEngine;
use super::purge::{self, PurgeOptions, PurgeReport};
use super::session::{Hashes, Session, SessionRecord};
use super::{ChunkStream, UploadId, UploadStatus, published};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::name::RepositoryName;
use crate::store::{BlobInfo, Repository, Segment, Store};

/// How many just-started sessions an engine remembers, and for how long (a client sends the
/// `PUT` that finishes a small blob right after its `POST`).
const FRESH_REMEMBERED: u64 = 10_000;
const FRESH_FOR: Duration = Duration::from_secs(60);
/// How long an idle session keeps the claim its last append carried over (an append after
/// that takes over from it, at the cost of a new multipart upload).
const HELD_FOR: Duration = Duration::from_secs(15 * 60);
/// Bytes (roughly) of the states the held claims keep in memory: thousands of sessions in
/// upload at once; a session whose entry is evicted pays a state read and a new multipart
/// upload on its next append.
const HELD_BYTES: u64 = 8 * 1024 * 1024;

/// Uploads into an object store.
pub(crate) struct ObjectEngine {
    objects: Arc<dyn ObjectStore>,
    multipart: Option<Arc<dyn MultipartStore>>,
    /// Sessions this engine just started, with the version it wrote: the request that
    /// finishes one (see [`direct`]) reads nothing. A stale entry only makes its conditional
    /// write fail, and the request then reads the state.
    fresh: moka::future::Cache<String, (ObjectSession, UpdateVersion)>,
    /// What the last append of a session through this engine left for the next one: the claim
    /// on its last multipart upload it carried over, and the state it wrote ([`append`]).
    held: moka::future::Cache<String, append::Held>,
    /// Buffers of the parts appends send, reused from part to part ([`buffers`]).
    buffers: buffers::PartBuffers,
}

impl std::fmt::Debug for ObjectEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectEngine")
            .field("objects", &self.objects.to_string())
            .field("multipart", &self.multipart.is_some())
            .finish()
    }
}

impl ObjectEngine {
    pub(crate) fn new(
        objects: Arc<dyn ObjectStore>,
        multipart: Option<Arc<dyn MultipartStore>>,
    ) -> Self {
        Self {
            objects,
            multipart,
            fresh: moka::future::Cache::builder()
                .max_capacity(FRESH_REMEMBERED)
                .time_to_live(FRESH_FOR)
                .build(),
            held: moka::future::Cache::builder()
                .max_capacity(HELD_BYTES)
                .weigher(|_, held: &append::Held| held.weight())
                .time_to_idle(HELD_FOR)
                .build(),
            // One append's worth.
            buffers: buffers::PartBuffers::new(append::PARTS_IN_FLIGHT),
        }
    }

    /// The state this engine wrote when it started the session, if it still has it (taken:
    /// the request that uses it changes the state).
    async fn remembered(&self, id: &UploadId) -> Option<(ObjectSession, UpdateVersion)> {
        self.fresh.remove(id.as_str()).await
    }

    /// Forgets the state the last append of a session left in memory, keeping its claim:
    /// called before anything else through this engine changes the state.
    async fn forget_state(&self, id: &UploadId) {
        if let Some(held) = self.held.remove(id.as_str()).await {
            self.held.insert(id.to_string(), held.forget_state()).await;
        }
    }

    /// Starts a session hashing what a blob under `algorithm` needs.
    async fn start_session(
        &self,
        store: &Store,
        repository: &RepositoryName,
        algorithm: Algorithm,
    ) -> Result<UploadStatus> {
        let id = UploadId::random();
        let mut session = Session::new(repository.clone());
        session.set_hashes(&Hashes::for_algorithm(algorithm));
        let state = ObjectSession {
            session,
            segments: Vec::new(),
            cancelled: false,
            publishing: None,
            verified: false,
            appending: None,
        };
        let key = store.keys().upload_state(id.as_str());
        let opts = PutOptions::from(PutMode::Create);
        let written = store
            .objects()
            .put_opts(&key, PutPayload::from(state.encode()), opts)
            .await?;
        let status = state.session.status(&id);
        if let Some(version) = version_of(&written) {
            self.fresh.insert(id.to_string(), (state, version)).await;
        }
        Ok(status)
    }

    /// Purges one session if it is old enough; returns the bytes freed, `None` if kept.
    async fn purge_one(
        &self,
        store: &Store,
        id: &UploadId,
        newest_object: SystemTime,
        now: SystemTime,
        options: PurgeOptions,
    ) -> Result<Option<u64>> {
        let keys = store.keys();
        let state_key = keys.upload_state(id.as_str());
        let loaded = store.read_versioned(&state_key).await?;
        let state = match &loaded {
            Some((bytes, _)) => ObjectSession::decode(state_key.as_ref(), bytes).ok(),
            None => None,
        };
        // Without readable state (a start that crashed), the objects' own times decide.
        let idle = match &state {
            // A cancel that failed midway: nobody can use it any more.
            Some(s) if s.cancelled => Duration::MAX,
            Some(s) => s.session.idle(now),
            None => now.duration_since(newest_object).unwrap_or_default(),
        };
        if idle <= options.older_than {
            return Ok(None);
        }
        if let Some(s) = &state
            && s.verified
        {
            // A commit verified these pieces: they are a blob's. Finish publishing it.
            if !options.dry_run {
                self.roll_forward(store, id, s).await?;
            }
            return Ok(Some(0));
        }
        if let Some(s) = &state
            && s.cancelled
            && s.segments.is_empty()
            && s.session.offset == 0
        {
            // Ended with nothing recorded (a blob published from the request that ended it,
            // see `direct`): only the state is left, and nothing changes a cancelled state.
            // Pieces a losing append may have staged are garbage collection's leftovers.
            if !options.dry_run {
                store.remove(&state_key).await?;
            }
            return Ok(Some(0));
        }
        let pieces = state.as_ref().map_or(&[][..], |s| &s.segments[..]);
        let freed = self.staged_bytes(store, id, pieces).await?;
        if options.dry_run {
            return Ok(Some(freed));
        }
        match (&state, loaded) {
            // Cancel it with a conditional write first: an append, claim or commit marker that
            // wrote since we looked makes this fail (in use: keep it), and one that writes after
            // it fails instead of working on a session being deleted.
            (Some(s), Some((_, version))) if !s.cancelled => {
                match mark_cancelled(store, id, s, version).await? {
                    Marked::Done => {}
                    Marked::Lost => return Ok(None),
                }
            }
            (Some(_), _) => {} // cancelled already: nothing can change it
            (None, loaded) => {
                // No readable state: keep it if one has appeared since we looked.
                let now_version = store.read_versioned(&state_key).await?.map(|(_, v)| v);
                if now_version != loaded.map(|(_, v)| v) {
                    return Ok(None);
                }
            }
        }
        self.end_unpublished(store, id, state.as_ref()).await?;
        for key in store.list_keys(&keys.upload_prefix(id.as_str())).await? {
            store.remove(&key).await?;
        }
        Ok(Some(freed))
    }

    /// Bytes a session's pieces hold: its objects, and the recorded parts of uploads still
    /// open (no objects yet).
    async fn staged_bytes(&self, store: &Store, id: &UploadId, pieces: &[Piece]) -> Result<u64> {
        let listed = list_sizes(store, id).await?;
        let open: u64 = pieces
            .iter()
            .filter(|p| {
                p.multipart.is_some() && !listed.contains_key(&piece_key(store, id, &p.segment))
            })
            .map(Piece::size)
            .sum();
        Ok(listed.values().sum::<u64>() + open)
    }

    /// Finishes what a verified commit began: publishes the blob (or finds it published, or
    /// its pieces gone) and deletes the session's state.
    async fn roll_forward(
        &self,
        store: &Store,
        id: &UploadId,
        state: &ObjectSession,
    ) -> Result<()> {
        let Some(digest) = state.publishing else {
            return Err(Error::Corrupt {
                key: store.keys().upload_state(id.as_str()).to_string(),
                reason: "a verified commit without its digest".to_owned(),
            });
        };
        match finish_publishing(
            self,
            store,
            id,
            &state.segments,
            &digest,
            state.session.offset,
        )
        .await?
        {
            Published::Yes | Published::Deduplicated(_) => {}
            Published::PiecesGone => self.discard_staged(store, id, &state.segments).await?,
        }
        store.remove(&store.keys().upload_state(id.as_str())).await
    }

    /// Deletes what an unpublished (cancelled) session staged, unless a commit by an earlier
    /// version of layerstore published it without recording so.
    async fn end_unpublished(
        &self,
        store: &Store,
        id: &UploadId,
        state: Option<&ObjectSession>,
    ) -> Result<()> {
        let pieces = state.map_or(&[][..], |s| &s.segments[..]);
        let published = match state {
            Some(s) => published_segments(store, id, s).await?,
            None => false,
        };
        if !published {
            self.discard_staged(store, id, pieces).await?;
        }
        Ok(())
    }

    /// Aborts a session's open multipart uploads and deletes its segment objects (including
    /// any left by a failed append, and uploads a failed commit completed). Aborts come first,
    /// so that a completion racing them either fails or lands before the listing that finds
    /// its object.
    pub(super) async fn discard_staged(
        &self,
        store: &Store,
        id: &UploadId,
        known: &[Piece],
    ) -> Result<()> {
        if let Some(multipart) = &self.multipart {
            for piece in known {
                if let Some(upload) = &piece.multipart {
                    abort(
                        &**multipart,
                        &piece_key(store, id, &piece.segment),
                        &upload.id,
                    )
                    .await?;
                }
            }
        }
        let prefix = store.keys().segments_prefix(id.as_str());
        let mut keys = store.list_keys(&prefix).await?;
        keys.extend(known.iter().map(|p| piece_key(store, id, &p.segment)));
        keys.sort();
        keys.dedup();
        for key in keys {
            store.remove(&key).await?;
        }
        Ok(())
    }
}

/// The sizes of the objects under a session's segment prefix.
async fn list_sizes(store: &Store, id: &UploadId) -> Result<HashMap<Path, u64>> {
    use futures::TryStreamExt;
    let prefix = store.keys().segments_prefix(id.as_str());
    Ok(store
        .objects()
        .list(Some(&prefix))
        .map_ok(|meta| (meta.location, meta.size))
        .try_collect()
        .await?)
}

/// The key of a piece's object (of an open multipart upload: the key it completes to).
pub(super) fn piece_key(store: &Store, id: &UploadId, segment: &Segment) -> Path {
    store
        .keys()
        .segment(id.as_str(), segment.seq, &segment.nonce)
}

pub(super) fn random_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Why a conditional write did not happen.
pub(super) enum Stop {
    /// Another append, a commit, a cancel or a purge changed the session first.
    Lost,
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

impl From<object_store::Error> for Stop {
    fn from(e: object_store::Error) -> Self {
        Self::Failed(e.into())
    }
}

/// Reads a live session's state and the version it was read at.
pub(super) async fn load(store: &Store, id: &UploadId) -> Result<(ObjectSession, UpdateVersion)> {
    let (state, version) = load_any(store, id).await?;
    if state.cancelled {
        return Err(Error::BlobUploadUnknown { id: id.to_string() });
    }
    Ok((state, version))
}

/// Reads a session's state, also of one whose cancel has begun.
pub(super) async fn load_any(
    store: &Store,
    id: &UploadId,
) -> Result<(ObjectSession, UpdateVersion)> {
    let key = store.keys().upload_state(id.as_str());
    let Some((bytes, version)) = store.read_versioned(&key).await? else {
        return Err(Error::BlobUploadUnknown { id: id.to_string() });
    };
    Ok((ObjectSession::decode(key.as_ref(), &bytes)?, version))
}

fn version_of(result: &object_store::PutResult) -> Option<UpdateVersion> {
    (result.e_tag.is_some() || result.version.is_some()).then(|| UpdateVersion {
        e_tag: result.e_tag.clone(),
        version: result.version.clone(),
    })
}

/// Replaces the state object if it is still at `version`; returns the new version.
pub(super) async fn replace_state(
    store: &Store,
    id: &UploadId,
    state: &ObjectSession,
    version: UpdateVersion,
) -> std::result::Result<UpdateVersion, Stop> {
    let key = store.keys().upload_state(id.as_str());
    let opts = PutOptions::from(PutMode::Update(version));
    match store
        .objects()
        .put_opts(&key, PutPayload::from(state.encode()), opts)
        .await
    {
        Ok(result) => Ok(match version_of(&result) {
            Some(v) => v,
            None => load_any(store, id).await?.1,
        }),
        // Changed by an append, a commit or a cancel; or gone (purged).
        Err(
            object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::NotFound { .. },
        ) => Err(Stop::Lost),
        Err(e) => Err(e.into()),
    }
}

enum Marked {
    Done,
    Lost,
}

/// Marks a session cancelled if its state is still at `version`.
async fn mark_cancelled(
    store: &Store,
    id: &UploadId,
    state: &ObjectSession,
    version: UpdateVersion,
) -> Result<Marked> {
    let mut state = state.clone();
    state.cancelled = true;
    match replace_state(store, id, &state, version).await {
        Ok(_) => Ok(Marked::Done),
        Err(Stop::Lost) => Ok(Marked::Lost),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// Aborts a multipart upload; one that is already gone is fine.
pub(super) async fn abort(multipart: &dyn MultipartStore, key: &Path, upload: &str) -> Result<()> {
    match multipart.abort_multipart(key, &upload.to_owned()).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a session's pieces already belong to a published blob although its state does not
/// say so (a commit by a version before the verified flag crashed after publishing): then
/// they must not be deleted.
async fn published_segments(store: &Store, id: &UploadId, state: &ObjectSession) -> Result<bool> {
    if state.segments.is_empty() {
        return Ok(false);
    }
    let Some(sha256) = state.session.digest(Algorithm::Sha256) else {
        // Cannot tell which blob it would be: keep the pieces, to be safe.
        return Ok(true);
    };
    for digest in std::iter::once(sha256).chain(state.publishing) {
        if commit::published_as(store, id, &digest).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[async_trait]
impl UploadEngine for ObjectEngine {
    async fn start(&self, store: &Store, repository: &RepositoryName) -> Result<UploadStatus> {
        self.start_session(store, repository, Algorithm::Sha256)
            .await
    }

    async fn status(&self, store: &Store, id: &UploadId) -> Result<UploadStatus> {
        let (state, _) = load(store, id).await?;
        Ok(state.session.status(id))
    }

    async fn append(
        &self,
        repo: &Repository,
        id: &UploadId,
        offset: u64,
        chunk: ChunkStream<'_>,
    ) -> Result<UploadStatus> {
        self.append_from(repo, id, Some(offset), chunk).await
    }

    async fn append_from(
        &self,
        repo: &Repository,
        id: &UploadId,
        offset: Option<u64>,
        chunk: ChunkStream<'_>,
    ) -> Result<UploadStatus> {
        append::append(self, repo, id, offset, chunk).await
    }

    async fn finish(
        &self,
        repo: &Repository,
        id: &UploadId,
        offset: Option<u64>,
        chunk: ChunkStream<'_>,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        self.finish_upload(repo, id, offset, chunk, expected, expected_size)
            .await
    }

    async fn commit(
        &self,
        repo: &Repository,
        id: &UploadId,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        self.forget_state(id).await;
        commit::commit(self, repo, id, expected, expected_size).await
    }

    /// Marks the state cancelled (conditionally: a racing append or commit marker loses, or
    /// wins and is marked next), so that from then on nothing can append to it or commit it;
    /// then aborts its uploads, deletes its pieces, and last its state. A failure midway
    /// leaves a cancelled session, finished by a retried cancel or the next purge, never a
    /// live one with bytes missing. A session whose commit verified its digest is finished
    /// instead: its pieces are that blob's.
    async fn cancel(&self, repo: &Repository, id: &UploadId) -> Result<()> {
        self.fresh.invalidate(id.as_str()).await;
        self.held.invalidate(id.as_str()).await;
        let store = repo.store();
        let state = loop {
            let (mut state, version) = load_any(store, id).await?;
            state.session.check_repository(repo.name(), id)?;
            if state.verified {
                return self.roll_forward(store, id, &state).await;
            }
            if state.cancelled {
                break state;
            }
            state.cancelled = true;
            match replace_state(store, id, &state, version).await {
                Ok(_) => break state,
                // An append or a commit got in first: look at what it left.
                Err(Stop::Lost) => {}
                Err(Stop::Failed(e)) => return Err(e),
            }
        };
        self.end_unpublished(store, id, Some(&state)).await?;
        store.remove(&store.keys().upload_state(id.as_str())).await
    }

    async fn put_stream(
        &self,
        repo: &Repository,
        expected: &Digest,
        expected_size: Option<u64>,
        data: ChunkStream<'_>,
    ) -> Result<BlobInfo> {
        // A small blob is stored from memory, without a session.
        let data = match direct::take_up_to(data, direct::DIRECT_MAX).await? {
            direct::Taken::Whole(whole) => {
                if let Some(want) = expected_size
                    && want != whole.len() as u64
                {
                    return Err(Error::SizeInvalid {
                        reason: format!("upload has {} bytes, expected {want}", whole.len()),
                    });
                }
                return self.put_bytes(repo, expected, whole).await;
            }
            direct::Taken::Longer(data) => data,
        };
        let session = self
            .start_session(repo.store(), repo.name(), expected.algorithm())
            .await?;
        let result = async {
            self.append(repo, &session.id, 0, data).await?;
            self.commit(repo, &session.id, expected, expected_size)
                .await
        }
        .await;
        if result.is_err() {
            // Best effort: an abandoned session is purged later anyway.
            let _ = self.cancel(repo, &session.id).await;
        }
        result
    }

    async fn put_bytes(
        &self,
        repo: &Repository,
        expected: &Digest,
        data: Bytes,
    ) -> Result<BlobInfo> {
        expected.verify(&data)?;
        let size = data.len() as u64;
        let store = repo.store();
        let blob = direct::store_bytes(store, expected, data).await?;
        repo.link_blob(expected, blob).await?;
        Ok(published(expected, size))
    }

    async fn purge(&self, store: &Store, options: PurgeOptions) -> Result<PurgeReport> {
        use futures::TryStreamExt;
        let keys = store.keys();
        let listed: Vec<object_store::ObjectMeta> = store
            .objects()
            .list(Some(&keys.uploads_prefix()))
            .try_collect()
            .await?;
        let mut newest = HashMap::<String, SystemTime>::new();
        for meta in &listed {
            if let Some(id) = keys.upload_id_from_key(&meta.location) {
                let modified: SystemTime = meta.last_modified.into();
                let entry = newest.entry(id).or_insert(modified);
                *entry = (*entry).max(modified);
            }
        }
        let now = SystemTime::now();
        let mut report = PurgeReport::default();
        let names = newest.keys().cloned().collect();
        let newest = &newest;
        purge::sweep(&mut report, names, |id| async move {
            let listed_at = newest
                .get(id.as_str())
                .copied()
                .unwrap_or(SystemTime::UNIX_EPOCH);
            self.purge_one(store, &id, listed_at, now, options).await
        })
        .await;
        Ok(report)
    }

    async fn read_object(
        &self,
        store: &Store,
        key: &Path,
        range: Option<std::ops::Range<u64>>,
        digest: &Digest,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        store.get_object(key, range, digest).await
    }
}

/// Reads staged segments back, a few at a time, in order.
pub(super) async fn read_staged(store: &Store, keys: &[Path]) -> Result<Vec<Bytes>> {
    /// Staged segments read back at once.
    const READS_IN_FLIGHT: usize = 8;
    use futures::TryStreamExt;
    let store = store.clone();
    futures::stream::iter(keys.to_vec())
        .map(move |key| {
            let store = store.clone();
            async move { Ok::<_, Error>(store.objects().get(&key).await?.bytes().await?) }
        })
        .buffered(READS_IN_FLIGHT)
        .try_collect()
        .await
}
