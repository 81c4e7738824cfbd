//! Uploads on object stores.
//!
//! With a `MultipartStore` (S3, Azure, memory) a session owns multipart uploads whose ids and
//! recorded parts live in its state. Chunk bytes are sent as parts of 8 MiB or more; bytes
//! that cannot fill a part yet (S3 refuses parts under 5 MiB but for the last) are staged as
//! small *segment* objects and read back to lead the next part once enough has arrived, so a
//! client sending 1 KiB chunks works. The session's bytes are always, in order, its pieces:
//! multipart uploads and staged segments. The commit completes each multipart upload where
//! it is — the object appears under the session's segment prefix — and writes one small
//! index object listing the pieces: no byte is copied, read or moved.
//!
//! Concurrency: every state change is a conditional put on the version that was read, so of
//! two racing appends one wins. Part numbers are positions, so two appends must never send
//! parts to one upload at once: an append claims the upload with a state write before its
//! first part, and an append that finds a claim (a racing or crashed one) seals that upload
//! and opens a new one. Parts a loser sent are never recorded, and the completion, which
//! lists the recorded parts only, drops them.
//!
//! Without a `MultipartStore`, every chunk is its own segment object.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::{
    ChunkStream, HashState, OpenMultipart, Part, Segment, SessionState, UploadId, UploadStatus,
    load, load_any, published, verify,
};
use crate::digest::{Algorithm, Digest, DigestHasher};
use crate::error::{Error, RangeError, Result};
use crate::store::{BlobInfo, BlobLocation, Repository, Store};

const MIB: usize = 1024 * 1024;
/// Bytes of the first thousand parts of an upload; later parts are larger (see `part_size`).
const PART_SIZE: usize = 8 * MIB;
/// The smallest part S3 accepts but for the last; smaller remainders are staged as segments.
const MIN_PART: usize = 5 * MIB;
/// Parts of one append in flight at once: the append's memory is about this many parts.
const PARTS_IN_FLIGHT: usize = 2;
/// Parts an upload takes before the next append opens a new one (S3's limit is 10,000).
const MAX_PARTS: usize = 9_000;
/// The most parts one upload can hold.
const PART_LIMIT: usize = 10_000;
/// Staged segments read back at once when they lead a part.
const READS_IN_FLIGHT: usize = 8;
/// Buffer of the segment writer (no `MultipartStore`): larger chunks stream as a multipart.
const SEGMENT_BUFFER: usize = 10 * MIB;

/// The size of part `index` of an upload: 8 MiB, growing by 8 MiB every thousand parts, so
/// that 9,000 parts (where the next append opens a new upload) hold about 350 GiB, within
/// S3's limit of 10,000 parts.
fn part_size(index: usize) -> usize {
    PART_SIZE * (1 + index / 1000)
}

/// What `blobs/…/segments` holds: the blob is these objects, concatenated in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SegmentIndex {
    pub(crate) size: u64,
    pub(crate) upload: String,
    pub(crate) segments: Vec<Segment>,
}

pub(super) async fn start(store: &Store, id: &UploadId, state: &SessionState) -> Result<()> {
    let key = store.keys().upload_state(id.as_str());
    let opts = PutOptions::from(PutMode::Create);
    store
        .objects()
        .put_opts(&key, PutPayload::from(state.encode()), opts)
        .await?;
    Ok(())
}

/// The key of a piece's object (of an open multipart upload: the key it completes to).
fn piece_key(store: &Store, id: &UploadId, piece: &Segment) -> Path {
    store.keys().segment(id.as_str(), piece.seq, &piece.nonce)
}

/// A sequence number no piece of the session has.
fn next_seq(pieces: &[Segment]) -> u64 {
    pieces.iter().map(|p| p.seq + 1).max().unwrap_or(0)
}

/// The staged segments: the pieces after the last multipart upload, which the next part
/// takes in. (Segments of a session an earlier version started can hold more than a part;
/// those stay pieces of their own.)
fn staged_range(pieces: &[Segment]) -> Range<usize> {
    let start = pieces
        .iter()
        .rposition(|p| p.multipart.is_some())
        .map_or(0, |i| i + 1);
    let staged: u64 = pieces[start..].iter().map(|p| p.size).sum();
    if staged < MIN_PART as u64 {
        start..pieces.len()
    } else {
        pieces.len()..pieces.len()
    }
}

fn random_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn version_of(result: &object_store::PutResult) -> Option<UpdateVersion> {
    (result.e_tag.is_some() || result.version.is_some()).then(|| UpdateVersion {
        e_tag: result.e_tag.clone(),
        version: result.version.clone(),
    })
}

/// Why an append stopped early.
enum Stop {
    /// Another append or a cancel changed the session first.
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

/// How long a losing append waits for the append it lost to before reporting the offset.
const LOSER_WAIT: Duration = Duration::from_secs(10);

/// The refusal a losing append gets: the offset the session is at now. If it lost to another
/// append's claim (the offset has not moved yet), it first waits for that append to finish,
/// so that its client is told where to go on rather than to retry where it is.
async fn lost(store: &Store, id: &UploadId, offset: u64) -> Error {
    let deadline = tokio::time::Instant::now() + LOSER_WAIT;
    let mut pause = Duration::from_millis(20);
    loop {
        let current = match load(store, id).await {
            Ok((current, _)) => current,
            Err(e) => return e,
        };
        let in_progress = current.offset == offset && current.appending.is_some();
        if !in_progress || tokio::time::Instant::now() + pause > deadline {
            return Error::RangeInvalid(RangeError::UploadOffset {
                current: current.offset,
                requested: offset,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Appends are refused once a commit has begun: the pieces may be a blob's already.
fn check_not_committing(state: &SessionState, id: &UploadId) -> Result<()> {
    match state.publishing {
        Some(digest) => Err(Error::BlobUploadInvalid {
            reason: format!("upload {id} is being committed as {digest}; commit it again"),
        }),
        None => Ok(()),
    }
}

pub(super) async fn append(
    repo: &Repository,
    id: &UploadId,
    offset: u64,
    chunk: ChunkStream<'_>,
) -> Result<UploadStatus> {
    let store = repo.store();
    let (state, version) = load(store, id).await?;
    state.check_repository(repo.name(), id)?;
    check_not_committing(&state, id)?;
    state.check_offset(offset)?;
    let Some(hasher) = state.hash.restore() else {
        return Err(Error::Corrupt {
            key: store.keys().upload_state(id.as_str()).to_string(),
            reason: "hash state written by another version; commit re-hashes, appends cannot"
                .to_owned(),
        });
    };
    let Some(multipart) = store.backend().multipart.clone() else {
        return append_segment(store, id, offset, state, version, hasher, chunk).await;
    };
    let mut appender = Appender {
        store,
        multipart,
        id,
        state,
        version,
        hasher,
        received: 0,
        pending: Pending::default(),
        target: None,
        tag: random_tag(),
        consumed: Vec::new(),
        in_flight: JoinSet::new(),
        sent: Vec::new(),
    };
    let result = match appender.receive(chunk).await {
        Ok(()) => appender.finish().await,
        Err(stop) => Err(stop),
    };
    match result {
        Ok(status) => Ok(status),
        Err(Stop::Lost) => Err(lost(store, id, offset).await),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// Received bytes not yet sent, kept as the buffers they arrived in: parts are cut from them
/// without copying (a `PutPayload` takes a list of buffers).
#[derive(Default)]
struct Pending {
    buffers: std::collections::VecDeque<Bytes>,
    len: usize,
}

impl Pending {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        self.buffers.push_back(bytes);
    }

    /// The first `n` bytes (at most all), as buffers.
    fn take(&mut self, mut n: usize) -> Vec<Bytes> {
        let mut taken = Vec::new();
        while n > 0 {
            let Some(mut front) = self.buffers.pop_front() else {
                break;
            };
            if front.len() > n {
                let rest = front.split_off(n);
                self.buffers.push_front(rest);
            }
            n -= front.len();
            self.len -= front.len();
            taken.push(front);
        }
        taken
    }
}

/// One append to a session on a store with multipart uploads.
struct Appender<'a> {
    store: &'a Store,
    multipart: Arc<dyn MultipartStore>,
    id: &'a UploadId,
    /// The session as this append will leave it; persisted only by `claim` and `finish`.
    state: SessionState,
    /// The version of the state object this append last read or wrote.
    version: UpdateVersion,
    hasher: Sha256,
    /// Bytes of the chunk received so far.
    received: u64,
    /// Received bytes in no part yet.
    pending: Pending,
    /// Once claimed: the index, in `state.segments`, of the upload receiving this append's
    /// parts; the staged segments are the pieces after it until `consumed` takes them.
    target: Option<usize>,
    /// This append's claim tag.
    tag: String,
    /// Staged segments read back into a part: deleted once the new state is written.
    consumed: Vec<Path>,
    /// Parts being sent, each on a task of its own so that sending overlaps receiving;
    /// dropping the set (an append that fails) aborts them.
    in_flight: JoinSet<Result<(usize, Part)>>,
    /// Parts sent and acknowledged: (part index, part).
    sent: Vec<(usize, Part)>,
}

impl Appender<'_> {
    /// Receives the chunk, sending parts as they fill; stages nothing yet.
    async fn receive(&mut self, mut chunk: ChunkStream<'_>) -> std::result::Result<(), Stop> {
        while let Some(bytes) = chunk.next().await {
            let bytes = bytes.map_err(|e| Error::io("receiving the chunk", e))?;
            self.hasher.update(&bytes);
            self.received += bytes.len() as u64;
            self.pending.push(bytes);
            while self.staged_bytes() + self.pending.len() >= part_size(self.next_part()) {
                let size = part_size(self.next_part());
                self.send_part(size).await?;
            }
        }
        // The end of the chunk: what is left is a (last) part if S3 would take it as any part.
        let left = self.staged_bytes() + self.pending.len();
        if left >= MIN_PART {
            self.send_part(left).await?;
        }
        while let Some(sent) = self.in_flight.join_next().await {
            self.sent.push(joined(sent)?);
        }
        Ok(())
    }

    /// The staged segments not yet read back.
    fn staged(&self) -> Range<usize> {
        match self.target {
            Some(_) if !self.consumed.is_empty() => 0..0,
            Some(t) => t + 1..self.state.segments.len(),
            None => staged_range(&self.state.segments),
        }
    }

    fn staged_bytes(&self) -> usize {
        let range = self.staged();
        self.state.segments[range]
            .iter()
            .map(|s| s.size as usize)
            .sum()
    }

    /// The index the next part of this append gets.
    fn next_part(&self) -> usize {
        let recorded = self
            .target
            .and_then(|t| self.state.segments[t].multipart.as_ref())
            .map_or(0, |m| m.parts.len());
        recorded + self.sent.len() + self.in_flight.len()
    }

    /// Sends the staged segments (if not yet sent) and then pending bytes, `size` in all, as
    /// the next part.
    async fn send_part(&mut self, size: usize) -> std::result::Result<(), Stop> {
        self.claim().await?;
        let index = self.next_part();
        if index >= PART_LIMIT {
            return Err(Stop::Failed(Error::Unsupported {
                what: format!(
                    "a chunk of more than {PART_LIMIT} parts; send the blob in several chunks"
                ),
            }));
        }
        let mut body: Vec<Bytes> = Vec::new();
        let staged = self.staged();
        let mut from_staged = 0;
        if !staged.is_empty() {
            let keys: Vec<Path> = self.state.segments[staged.clone()]
                .iter()
                .map(|s| piece_key(self.store, self.id, s))
                .collect();
            body = read_staged(self.store, &keys).await?;
            from_staged = self
                .state
                .segments
                .drain(staged)
                .map(|s| s.size)
                .sum::<u64>() as usize;
            self.consumed = keys;
        }
        body.extend(self.pending.take(size - from_staged));
        let payload = PutPayload::from_iter(body);

        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            if let Some(sent) = self.in_flight.join_next().await {
                self.sent.push(joined(sent)?);
            }
        }
        let t = self.target.unwrap_or_default();
        let key = piece_key(self.store, self.id, &self.state.segments[t]);
        let upload = self.state.segments[t]
            .multipart
            .as_ref()
            .map(|m| m.id.clone())
            .unwrap_or_default();
        let multipart = Arc::clone(&self.multipart);
        let size = size as u64;
        self.in_flight.spawn(async move {
            let part = multipart.put_part(&key, &upload, index, payload).await?;
            Ok((
                index,
                Part {
                    content_id: part.content_id,
                    size,
                },
            ))
        });
        Ok(())
    }

    /// Before the first part: records in the state that this append sends parts, to the last
    /// upload if nobody else may be sending to it, else to a new one.
    async fn claim(&mut self) -> std::result::Result<(), Stop> {
        if self.target.is_some() {
            return Ok(());
        }
        let mut next = self.state.clone();
        let start = staged_range(&next.segments).start;
        let last = start.checked_sub(1);
        let reusable = last.is_some_and(|i| {
            next.segments[i]
                .multipart
                .as_ref()
                .is_some_and(|m| !m.sealed && m.parts.len() < MAX_PARTS)
                && next.appending.is_none()
        });
        let mut created = None;
        let target = if reusable {
            start - 1
        } else {
            if let Some(m) = last.and_then(|i| next.segments[i].multipart.as_mut()) {
                // Another append claimed it and may still be sending parts (or it is full).
                m.sealed = true;
            }
            let piece = Segment {
                seq: next_seq(&next.segments),
                nonce: random_tag(),
                size: 0,
                multipart: None,
            };
            let key = piece_key(self.store, self.id, &piece);
            let upload = self.multipart.create_multipart(&key).await?;
            created = Some((key, upload.clone()));
            next.segments.insert(
                start,
                Segment {
                    multipart: Some(OpenMultipart {
                        id: upload,
                        parts: Vec::new(),
                        sealed: false,
                    }),
                    ..piece
                },
            );
            start
        };
        next.appending = Some(self.tag.clone());
        next.last_active = Utc::now();
        match self.write_state(&next).await {
            Ok(()) => {
                self.state = next;
                self.target = Some(target);
                Ok(())
            }
            Err(stop) => {
                if let Some((key, upload)) = created {
                    // Unrecorded (or recorded with no part, which commit and cancel skip).
                    let _ = self.multipart.abort_multipart(&key, &upload).await;
                }
                Err(stop)
            }
        }
    }

    /// Replaces the state object if it is still at `self.version`.
    async fn write_state(&mut self, state: &SessionState) -> std::result::Result<(), Stop> {
        self.version = replace_state(self.store, self.id, state, self.version.clone()).await?;
        Ok(())
    }

    /// Records the parts, stages what is left as a segment, and writes the new state.
    async fn finish(mut self) -> std::result::Result<UploadStatus, Stop> {
        if let Some(t) = self.target {
            self.sent.sort_by_key(|(index, _)| *index);
            let piece = &mut self.state.segments[t];
            if let Some(m) = piece.multipart.as_mut() {
                for (_, part) in std::mem::take(&mut self.sent) {
                    piece.size += part.size;
                    m.parts.push(part);
                }
            }
            // This append's claim ends with it.
            self.state.appending = None;
        }
        let size = self.pending.len();
        let rest = self.pending.take(size);
        let mut staged = None;
        if size > 0 {
            let segment = Segment {
                seq: next_seq(&self.state.segments),
                nonce: random_tag(),
                size: size as u64,
                multipart: None,
            };
            let key = piece_key(self.store, self.id, &segment);
            self.store
                .objects()
                .put(&key, PutPayload::from_iter(rest))
                .await?;
            self.state.segments.push(segment);
            staged = Some(key);
        }
        let mut state = self.state.clone();
        state.offset += self.received;
        state.last_active = Utc::now();
        state.hash = HashState::of(&self.hasher);
        match self.write_state(&state).await {
            Ok(()) => {
                for key in &self.consumed {
                    // Their bytes are in a recorded part now; a leftover is only garbage.
                    let _ = self.store.remove(key).await;
                }
                Ok(state.status(self.id))
            }
            Err(Stop::Lost) => {
                if let Some(key) = staged {
                    self.store.remove(&key).await?;
                }
                Err(Stop::Lost)
            }
            // The outcome is unknown: the write may have landed, so the segment stays.
            Err(e) => Err(e),
        }
    }
}

/// Reads staged segments back, a few at a time, in order.
async fn read_staged(store: &Store, keys: &[Path]) -> Result<Vec<Bytes>> {
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

/// The result of a part's task.
fn joined(
    result: std::result::Result<Result<(usize, Part)>, tokio::task::JoinError>,
) -> Result<(usize, Part)> {
    result.map_err(|e| Error::io("sending a part", std::io::Error::other(e)))?
}

/// An append on a store without multipart uploads: the chunk becomes one segment object.
async fn append_segment(
    store: &Store,
    id: &UploadId,
    offset: u64,
    mut state: SessionState,
    version: UpdateVersion,
    mut hasher: Sha256,
    mut chunk: ChunkStream<'_>,
) -> Result<UploadStatus> {
    let segment = Segment {
        seq: next_seq(&state.segments),
        nonce: random_tag(),
        size: 0,
        multipart: None,
    };
    let key = piece_key(store, id, &segment);
    let mut writer =
        BufWriter::with_capacity(store.backend().objects.clone(), key.clone(), SEGMENT_BUFFER);
    let mut size = 0u64;
    let written: Result<()> = async {
        while let Some(bytes) = chunk.next().await {
            let bytes = bytes.map_err(|e| Error::io("receiving the chunk", e))?;
            hasher.update(&bytes);
            size += bytes.len() as u64;
            writer.put(bytes).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = writer.abort().await;
        return Err(e);
    }
    if size == 0 {
        let _ = writer.abort().await;
    } else {
        writer
            .shutdown()
            .await
            .map_err(|e| Error::io("writing the segment", e))?;
        state.segments.push(Segment { size, ..segment });
    }

    state.offset += size;
    state.last_active = Utc::now();
    state.hash = HashState::of(&hasher);
    match replace_state(store, id, &state, version).await {
        Ok(_) => Ok(state.status(id)),
        Err(Stop::Lost) => {
            // Another append won the race for this offset (or a commit, cancel or purge came
            // first): drop ours, report where it stands.
            if size > 0 {
                store.remove(&key).await?;
            }
            Err(lost(store, id, offset).await)
        }
        // The outcome is unknown: the write may have landed, so the segment stays.
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// Completes the session's multipart uploads where they are, turning each into a plain
/// segment; drops uploads with no recorded part. Idempotent: an upload a failed commit
/// already completed is found by its object.
async fn complete_uploads(store: &Store, id: &UploadId, pieces: &mut Vec<Segment>) -> Result<()> {
    let Some(multipart) = store.backend().multipart.clone() else {
        return Ok(());
    };
    let mut done = Vec::with_capacity(pieces.len());
    for piece in pieces.drain(..) {
        let Some(upload) = &piece.multipart else {
            done.push(piece);
            continue;
        };
        let key = piece_key(store, id, &piece);
        if upload.parts.is_empty() {
            abort(&*multipart, &key, &upload.id).await?;
            continue;
        }
        let parts = upload
            .parts
            .iter()
            .map(|p| object_store::multipart::PartId {
                content_id: p.content_id.clone(),
            })
            .collect();
        if let Err(e) = multipart.complete_multipart(&key, &upload.id, parts).await {
            // A commit that failed after completing it: the object is there, whole.
            match store.head(&key).await? {
                Some(meta) if meta.size == piece.size => {}
                _ => return Err(e.into()),
            }
        }
        done.push(Segment {
            multipart: None,
            ..piece
        });
    }
    *pieces = done;
    Ok(())
}

/// Aborts a multipart upload; one that is already gone is fine.
async fn abort(multipart: &dyn MultipartStore, key: &Path, upload: &str) -> Result<()> {
    match multipart.abort_multipart(key, &upload.to_owned()).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the state object if it is still at `version`; returns the new version.
async fn replace_state(
    store: &Store,
    id: &UploadId,
    state: &SessionState,
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

/// Marks a session cancelled if its state is still at `version` (for the purger): `false` if
/// something changed it since, which means it is in use.
pub(super) async fn mark_cancelled(
    store: &Store,
    id: &UploadId,
    state: &SessionState,
    version: UpdateVersion,
) -> Result<bool> {
    let mut state = state.clone();
    state.cancelled = true;
    match replace_state(store, id, &state, version).await {
        Ok(_) => Ok(true),
        Err(Stop::Lost) => Ok(false),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// Whether the index of `digest` lists this session's pieces.
async fn published_as(store: &Store, id: &UploadId, digest: &Digest) -> Result<bool> {
    let index: Option<SegmentIndex> = store.read_link(&store.keys().blob_segments(digest)).await?;
    Ok(index.is_some_and(|i| i.upload == id.as_str()))
}

pub(super) async fn commit(
    repo: &Repository,
    id: &UploadId,
    expected: &Digest,
    expected_size: Option<u64>,
) -> Result<BlobInfo> {
    let store = repo.store();
    let (mut state, mut version) = load(store, id).await?;
    state.check_repository(repo.name(), id)?;
    let sha256 = match (expected.algorithm(), state.hash.restore()) {
        (Algorithm::Sha256, Some(hasher)) => Some(Digest::Sha256(hasher.finalize().into())),
        _ => None,
    };
    if let Some(actual) = sha256 {
        // Checked before anything changes: a wrong digest leaves the session as it was.
        verify(&actual, state.offset, expected, expected_size)?;
    }
    if state.publishing != Some(*expected) {
        if let Some(other) = state.publishing
            && published_as(store, id, &other).await?
        {
            return Err(Error::BlobUploadInvalid {
                reason: format!("upload {id} was committed as {other}"),
            });
        }
        // The commit marker. From this write on the session takes no append, and a cancel
        // or purge leaves its pieces to the blob this commit may be publishing; an append,
        // cancel or purge that wrote first makes it fail instead.
        state.publishing = Some(*expected);
        state.last_active = Utc::now();
        version = match replace_state(store, id, &state, version).await {
            Ok(v) => v,
            Err(Stop::Lost) => {
                return Err(Error::BlobUploadInvalid {
                    reason: format!("upload {id} changed during the commit; commit again"),
                });
            }
            Err(Stop::Failed(e)) => return Err(e),
        };
    }
    if sha256.is_none() {
        // The slow but correct path: complete the uploads, then hash the stored bytes.
        complete_uploads(store, id, &mut state.segments).await?;
        let actual = rehash(store, id, &state.segments, expected.algorithm()).await?;
        if let Err(e) = verify(&actual, state.offset, expected, expected_size) {
            // The session stays resumable: take the marker back, with the uploads now
            // completed (plain pieces). If this write fails, the marker stays until a commit
            // with the right digest or the purger.
            state.publishing = None;
            let _ = replace_state(store, id, &state, version).await;
            return Err(e);
        }
    }

    let keys = store.keys();
    match store.locate_blob(expected).await? {
        // An earlier commit of this very session published the index and failed after it:
        // the pieces are the blob's now and must stay.
        Some(BlobLocation::Segments(index)) if index.upload == id.as_str() => {
            sweep(store, id, &index.segments).await;
            return Ok(published(expected, state.offset));
        }
        Some(_) => {
            // The store already has these bytes (dedupe): ours are not needed.
            discard_staged(store, id, &state.segments).await?;
            return Ok(published(expected, state.offset));
        }
        None => {}
    }
    complete_uploads(store, id, &mut state.segments).await?;
    let index = SegmentIndex {
        size: state.offset,
        upload: id.to_string(),
        segments: state.segments.clone(),
    };
    // Plain strings and numbers: serialization cannot fail.
    let body = Bytes::from(serde_json::to_vec(&index).unwrap_or_default());
    let opts = PutOptions::from(PutMode::Create);
    match store
        .objects()
        .put_opts(&keys.blob_segments(expected), PutPayload::from(body), opts)
        .await
    {
        Ok(_) => sweep(store, id, &index.segments).await,
        Err(object_store::Error::AlreadyExists { .. }) => {
            // A concurrent upload of the same content published first; unless that was a
            // concurrent commit of this same session, whose index lists our pieces.
            if !published_as(store, id, expected).await? {
                discard_staged(store, id, &state.segments).await?;
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(published(expected, state.offset))
}

/// Deletes the objects under the session's segment prefix that the published index does not
/// list: staged segments a failed append left, or whose delete after being read back into a
/// part failed. No append can add one any more (the commit marker). Best effort: the blob is
/// published either way.
async fn sweep(store: &Store, id: &UploadId, indexed: &[Segment]) {
    let keep: std::collections::HashSet<Path> =
        indexed.iter().map(|s| piece_key(store, id, s)).collect();
    let swept = async {
        for key in store
            .list_keys(&store.keys().segments_prefix(id.as_str()))
            .await?
        {
            if !keep.contains(&key) {
                store.remove(&key).await?;
            }
        }
        Ok::<_, Error>(())
    };
    if let Err(e) = swept.await {
        tracing::warn!(upload = %id, error = %e, "leftover upload segments not deleted");
    }
}

/// Cancels a session. First its state is marked cancelled, with a conditional put (an append
/// or commit that races it loses), so that from then on nothing can append to it or commit
/// it; then its uploads are aborted and its segments deleted, and last its state. A failure
/// midway leaves a cancelled session, finished by a retried cancel or the next purge, never a
/// live one with bytes missing.
///
/// If a commit already began (it may still be running, in another process), its pieces are
/// left: if that commit published them they are a blob's; if not, the purger deletes them
/// once the session has been idle for the purge age.
pub(super) async fn cancel(repo: &Repository, id: &UploadId) -> Result<()> {
    let store = repo.store();
    let key = store.keys().upload_state(id.as_str());
    let state = loop {
        let (mut state, version) = load_any(store, id).await?;
        state.check_repository(repo.name(), id)?;
        if state.cancelled {
            break state;
        }
        state.cancelled = true;
        match replace_state(store, id, &state, version).await {
            Ok(_) => break state,
            // An append or a commit got in first: mark the state it left.
            Err(Stop::Lost) => {}
            Err(Stop::Failed(e)) => return Err(e),
        }
    };
    if store.published_segments(id, &state).await? {
        return store.remove(&key).await;
    }
    if state.publishing.is_some() {
        return Ok(());
    }
    discard_staged(store, id, &state.segments).await?;
    store.remove(&key).await
}

/// Hashes the stored bytes of a session again (its uploads completed).
async fn rehash(
    store: &Store,
    id: &UploadId,
    segments: &[Segment],
    algorithm: Algorithm,
) -> Result<Digest> {
    let mut hasher = DigestHasher::new(algorithm);
    for segment in segments {
        let key = piece_key(store, id, segment);
        let mut stream = store.objects().get(&key).await?.into_stream();
        while let Some(bytes) = stream.next().await {
            hasher.update(&bytes?);
        }
    }
    Ok(hasher.finish())
}

/// Aborts a session's open multipart uploads and deletes its segment objects (including any
/// left by a failed append, and uploads a failed commit completed).
pub(super) async fn discard_staged(store: &Store, id: &UploadId, known: &[Segment]) -> Result<()> {
    if let Some(multipart) = store.backend().multipart.clone() {
        for piece in known {
            if let Some(upload) = &piece.multipart {
                abort(&*multipart, &piece_key(store, id, piece), &upload.id).await?;
            }
        }
    }
    let prefix = store.keys().segments_prefix(id.as_str());
    let mut keys = store.list_keys(&prefix).await?;
    keys.extend(known.iter().map(|s| piece_key(store, id, s)));
    keys.sort();
    keys.dedup();
    for key in keys {
        store.remove(&key).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_bytes_are_cut_at_any_length_in_order_without_loss() {
        let mut pending = Pending::default();
        for piece in [&b"abc"[..], b"", b"defgh", b"i"] {
            pending.push(Bytes::copy_from_slice(piece));
        }
        assert_eq!(pending.len(), 9);
        assert_eq!(pending.take(4).concat(), b"abcd");
        assert_eq!(pending.len(), 5);
        assert_eq!(pending.take(0).concat(), b"");
        assert_eq!(pending.take(100).concat(), b"efghi");
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn part_sizes_grow_so_that_one_upload_holds_hundreds_of_gib() {
        assert_eq!(part_size(0), 8 * MIB);
        assert_eq!(part_size(999), 8 * MIB);
        assert_eq!(part_size(1000), 16 * MIB);
        let held: usize = (0..PART_LIMIT).map(part_size).sum();
        assert!(held as u64 > 300 * 1024 * MIB as u64, "{held}");
    }
}
