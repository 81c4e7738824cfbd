//! Receiving a chunk on an object store: sending parts as they fill, staging (and merging) what
//! cannot fill one yet; or, without a `MultipartStore`, one segment object per chunk.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, UpdateVersion};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::buffers::{PartBuffer, PartBuffers};
use super::state::{
    MIN_PART, ObjectSession, OpenMultipart, Part, Piece, absorbed, next_seq, staged_range,
};
use super::{ObjectEngine, Stop, load, piece_key, random_tag, read_staged, replace_state};
use crate::error::{Error, RangeError, Result};
use crate::store::{Repository, Segment, Store};
use crate::upload::session::Hashes;
use crate::upload::{ChunkStream, UploadId, UploadStatus, receiving};

const MIB: usize = 1024 * 1024;
/// Bytes of the first parts of an upload; later parts are larger (see `part_size`).
const PART_SIZE: usize = 8 * MIB;
/// Parts of one append in memory at once, sent or filling: a part starts filling once fewer
/// than this many are in flight, so the append holds at most this many part buffers. (A third
/// buffer filling while two are sent added 8 MiB to the server's peak memory and no measured
/// speed: the client fills a part far faster than S3 takes one.)
pub(super) const PARTS_IN_FLIGHT: usize = 2;
/// Parts an upload takes before the next append opens a new one (S3's limit is 10,000).
const MAX_PARTS: usize = 9_000;
/// The most parts one upload can hold.
const PART_LIMIT: usize = 10_000;
/// Buffer of the segment writer (no `MultipartStore`): larger chunks stream as a multipart.
const SEGMENT_BUFFER: usize = 10 * MIB;
/// How long a losing append waits for the append it lost to before reporting the offset.
const LOSER_WAIT: Duration = Duration::from_secs(10);

/// The smallest part but for the last, as a buffer length.
const MIN_PART_LEN: usize = MIN_PART as usize;

/// Parts of one size before the size grows by [`PART_SIZE`]: 1,500 parts of 8 MiB hold
/// 11.7 GiB, so the buffers (and the server's memory) stay the same up to that size.
const PARTS_PER_SIZE: usize = 1500;

/// The size of part `index` of an upload: 8 MiB, growing by 8 MiB every 1,500 parts, so that
/// 9,000 parts (where the next append opens a new upload) hold about 246 GiB and 10,000 about
/// 300 GiB, within S3's limit of 10,000 parts.
fn part_size(index: usize) -> usize {
    PART_SIZE * (1 + index / PARTS_PER_SIZE)
}

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
        let in_progress = current.session.offset == offset
            && current.appending.as_deref().is_some_and(|t| !is_held(t));
        if !in_progress || tokio::time::Instant::now() + pause > deadline {
            return Error::RangeInvalid(RangeError::UploadOffset {
                current: current.session.offset,
                requested: offset,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Appends are refused once a commit has begun: the pieces may be a blob's already.
fn check_not_committing(state: &ObjectSession, id: &UploadId) -> Result<()> {
    match state.publishing {
        Some(digest) => Err(Error::BlobUploadInvalid {
            reason: format!("upload {id} is being committed as {digest}; commit it again"),
        }),
        None => Ok(()),
    }
}

pub(super) async fn append(
    engine: &ObjectEngine,
    repo: &Repository,
    id: &UploadId,
    offset: Option<u64>,
    chunk: ChunkStream<'_>,
) -> Result<UploadStatus> {
    let store = repo.store();
    // The claim the last append of this session through this engine left for the next one
    // (taken: two appends cannot both use it).
    let held = engine.held.remove(id.as_str()).await;
    let remembered = remembered(engine, id, offset, held.as_ref()).await;
    let mut remembered_version = remembered.as_ref().map(|(_, v)| v.clone());
    let (state, version) = match remembered {
        Some(known) => known,
        None => load(store, id).await?,
    };
    let key = store.keys().upload_state(id.as_str());
    let checked = state
        .session
        .check_repository(repo.name(), id)
        .and_then(|()| check_not_committing(&state, id))
        .and_then(|()| {
            let offset = offset.unwrap_or(state.session.offset);
            state.session.check_offset(offset)?;
            Ok((offset, state.session.hashes_for_append(key.as_ref())?))
        });
    let (offset, hashes) = match checked {
        Ok(checked) => checked,
        Err(refused) => {
            // Refused before anything changed: what was held still holds.
            if let Some(held) = held {
                engine.held.insert(id.to_string(), held).await;
            }
            return Err(refused);
        }
    };
    let held = held.map(|h| h.tag);
    let result = match engine.multipart.clone() {
        Some(multipart) => {
            let staged_len = state.segments[staged_range(&state.segments)]
                .iter()
                .map(|p| p.size() as usize)
                .sum();
            let mut appender = Appender {
                store,
                multipart,
                id,
                state,
                version,
                hashes,
                received: 0,
                buffers: &engine.buffers,
                filling: None,
                staged_len,
                target: None,
                tag: random_tag(),
                held,
                consumed: Vec::new(),
                in_flight: JoinSet::new(),
                sent: Vec::new(),
                written: false,
            };
            let received = appender.receive(chunk).await;
            if appender.written {
                // Its claim write went through: the copy it started from was current then,
                // and from here on it fails as any append does.
                remembered_version = None;
            }
            match received {
                Ok(()) => match appender.finish().await {
                    Ok((status, Some(carried))) => {
                        engine.held.insert(id.to_string(), carried).await;
                        Ok(status)
                    }
                    Ok((status, None)) => Ok(status),
                    Err(stop) => Err(stop),
                },
                Err(stop) => Err(stop),
            }
        }
        None => {
            let segments = SegmentAppend {
                engine,
                store,
                id,
                state,
                version,
                hashes,
            };
            segments.append(chunk).await
        }
    };
    match (result, remembered_version) {
        (Ok(status), _) => Ok(status),
        (Err(stop), Some(remembered)) => {
            Err(after_a_remembered_start(store, id, offset, &remembered, stop).await)
        }
        (Err(Stop::Lost), None) => Err(lost(store, id, offset).await),
        (Err(Stop::Failed(e)), None) => Err(e),
    }
}

/// What the last append of a session through an engine leaves for the next one through it.
#[derive(Clone)]
pub(super) struct Held {
    /// The claim it carried over (see [`Appender::finish`]).
    tag: String,
    /// The state its final write wrote, and the version that write returned; forgotten when
    /// anything else through this engine (a commit, a cancel) is about to change the state.
    known: Option<(ObjectSession, UpdateVersion)>,
}

impl Held {
    /// Roughly the bytes it keeps in memory (the engine bounds their sum).
    pub(super) fn weight(&self) -> u32 {
        let parts: usize = self.known.as_ref().map_or(0, |(state, _)| {
            state
                .segments
                .iter()
                .map(|p| 1 + p.multipart.as_ref().map_or(0, |m| m.parts.len()))
                .sum()
        });
        u32::try_from(256 + 96 * parts).unwrap_or(u32::MAX)
    }

    /// The claim alone, without the state.
    pub(super) fn forget_state(self) -> Self {
        Self {
            known: None,
            ..self
        }
    }
}

/// The session as this engine last wrote it, for a chunk that names its offset and starts
/// where that state ends: the state the last append through this engine left (with its claim),
/// else the one the `POST` wrote. Then the append reads nothing before its parts, and its
/// final write, conditional on that version as always, finds out whether the copy was stale.
///
/// A stale copy (the session changed through another replica since) costs only that chunk:
/// the parts it sends go to an upload nobody else sends parts to (an append that takes over
/// from this engine's claim seals the upload and opens a new one), beyond the recorded ones,
/// which the completion drops, or to an upload that is gone; its final write fails, and the
/// client is refused once (see [`after_a_remembered_start`]). A chunk without an offset is
/// appended where the session is now, so it always reads the state.
async fn remembered(
    engine: &ObjectEngine,
    id: &UploadId,
    offset: Option<u64>,
    held: Option<&Held>,
) -> Option<(ObjectSession, UpdateVersion)> {
    // Taken either way: after this append the copy the `POST` left is stale.
    let started = engine.remembered(id).await;
    let offset = offset?;
    held.and_then(|h| h.known.clone())
        .or(started)
        .filter(|(state, _)| state.session.offset == offset)
}

/// An append that started from a remembered copy failed. If the session changed since that
/// copy, the chunk went where nothing records it: another replica took the claim over (even an
/// append of its that died before it moved the offset), wrote an empty chunk, or began or
/// redid a commit. The client is told at once where the session is (without waiting for an
/// append in flight there, which may be one that died), and its chunk sent again there reads
/// the state (the copy is gone): one refused attempt, never a lost byte. A session gone
/// (cancelled, purged, committed) is unknown; one being committed takes no chunk. Otherwise
/// the failure is the append's own. Called only while no conditional write of the append has
/// gone through (after its claim write the copy is known to have been current).
async fn after_a_remembered_start(
    store: &Store,
    id: &UploadId,
    offset: u64,
    remembered: &UpdateVersion,
    stop: Stop,
) -> Error {
    let (state, now) = match load(store, id).await {
        Ok(loaded) => loaded,
        Err(e) => return e,
    };
    if let Err(committing) = check_not_committing(&state, id) {
        return committing;
    }
    let refused = Error::RangeInvalid(RangeError::UploadOffset {
        current: state.session.offset,
        requested: offset,
    });
    match stop {
        Stop::Failed(e) if now == *remembered => e,
        Stop::Failed(e) => {
            tracing::info!(upload = %id, error = %e, "an append from a stale copy of the state failed");
            refused
        }
        Stop::Lost => refused,
    }
}

/// Received bytes, kept as the buffers they arrived in (the segment path, which writes them
/// out as they come).
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

/// Reads staged pieces back. One that is gone was taken in (and deleted) by a racing append
/// that won: then this append has lost, which its conditional write would find out anyway.
async fn read_back(
    store: &Store,
    id: &UploadId,
    keys: &[Path],
    version: &UpdateVersion,
) -> std::result::Result<Vec<Bytes>, Stop> {
    match read_staged(store, keys).await {
        Ok(bytes) => Ok(bytes),
        Err(Error::Backend {
            source: object_store::Error::NotFound { path, .. },
        }) => {
            let key = store.keys().upload_state(id.as_str());
            match store.read_versioned(&key).await? {
                Some((_, now)) if now == *version => Err(Stop::Failed(Error::Corrupt {
                    key: path,
                    reason: "a staged piece the upload state lists is missing".to_owned(),
                })),
                _ => Err(Stop::Lost),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A new staged piece of `rest` bytes, taking in the staged pieces in `staged` that
/// [`absorbed`] says it should: reads those back and writes the whole as one object.
/// Returns the keys taken in (to delete once the new state is written) and the new piece's
/// key, or `None` if there is nothing to stage.
async fn stage(
    store: &Store,
    id: &UploadId,
    version: &UpdateVersion,
    pieces: &mut Vec<Piece>,
    staged: Range<usize>,
    rest: Vec<Bytes>,
) -> std::result::Result<(Vec<Path>, Option<Path>), Stop> {
    let new: u64 = rest.iter().map(|b| b.len() as u64).sum();
    if new == 0 {
        return Ok((Vec::new(), None));
    }
    let sizes: Vec<u64> = pieces[staged.clone()].iter().map(Piece::size).collect();
    let taken = staged.end - absorbed(&sizes, new)..staged.end;
    let keys: Vec<Path> = pieces[taken.clone()]
        .iter()
        .map(|p| piece_key(store, id, &p.segment))
        .collect();
    let mut body = read_back(store, id, &keys, version).await?;
    body.extend(rest);
    let segment = Segment {
        seq: next_seq(pieces),
        nonce: random_tag(),
        size: body.iter().map(|b| b.len() as u64).sum(),
    };
    let key = piece_key(store, id, &segment);
    store
        .objects()
        .put(&key, PutPayload::from_iter(body))
        .await?;
    pieces.drain(taken);
    pieces.push(Piece {
        segment,
        multipart: None,
    });
    Ok((keys, Some(key)))
}

/// One append to a session on a store with multipart uploads.
struct Appender<'a> {
    store: &'a Store,
    multipart: Arc<dyn MultipartStore>,
    id: &'a UploadId,
    /// The session as this append will leave it; persisted only by `claim` and `finish`.
    state: ObjectSession,
    /// The version of the state object this append last read or wrote.
    version: UpdateVersion,
    hashes: Hashes,
    /// Bytes of the chunk received so far.
    received: u64,
    /// Where part buffers come from.
    buffers: &'a PartBuffers,
    /// Received bytes in no part yet: the next part, copied in as frames arrive (a frame is
    /// freed at once instead of keeping the server's read buffer it was cut from).
    filling: Option<PartBuffer>,
    /// Bytes of the staged pieces not yet read back into a part.
    staged_len: usize,
    /// Once claimed: the index, in `state.segments`, of the upload receiving this append's
    /// parts; the staged pieces are the ones after it until `consumed` takes them.
    target: Option<usize>,
    /// This append's claim tag.
    tag: String,
    /// The claim an earlier append through this engine carried over to this one, if the
    /// state still shows it: then sending parts to the last upload needs no claim write.
    held: Option<String>,
    /// Staged pieces read back into a part or merged: deleted once the new state is written.
    consumed: Vec<Path>,
    /// Parts being sent, each on a task of its own so that sending overlaps receiving;
    /// dropping the set (an append that fails) aborts them.
    in_flight: JoinSet<Result<(usize, Part)>>,
    /// Parts sent and acknowledged: (part index, part).
    sent: Vec<(usize, Part)>,
    /// A conditional write of this append went through (its claim).
    written: bool,
}

impl Appender<'_> {
    /// Receives the chunk, sending parts as they fill; stages nothing yet.
    async fn receive(&mut self, mut chunk: ChunkStream<'_>) -> std::result::Result<(), Stop> {
        while let Some(bytes) = chunk.next().await {
            let bytes = bytes.map_err(receiving)?;
            self.hashes.update(&bytes);
            self.received += bytes.len() as u64;
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let size = part_size(self.next_part());
                // The staged pieces lead the first part; received bytes fill the rest of it.
                let want = size.saturating_sub(self.staged_len);
                if self.filling.is_none() {
                    self.wait_for_a_free_slot().await?;
                }
                let buffers = self.buffers;
                let filling = self.filling.get_or_insert_with(|| buffers.take(want));
                let n = want.saturating_sub(filling.len()).min(rest.len());
                filling.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if filling.len() >= want {
                    self.send_part(size).await?;
                }
            }
        }
        // The end of the chunk: what is left is a (last) part if S3 would take it as any part.
        let left = self.staged_len + self.filling_len();
        if left >= MIN_PART_LEN {
            self.send_part(left).await?;
        }
        while let Some(sent) = self.in_flight.join_next().await {
            self.sent.push(joined(sent)?);
        }
        Ok(())
    }

    /// Bytes received and not yet in a part.
    fn filling_len(&self) -> usize {
        self.filling.as_ref().map_or(0, PartBuffer::len)
    }

    /// The received bytes not yet in a part, as the buffers to send or stage (none if none).
    fn take_filled(&mut self) -> Vec<Bytes> {
        self.filling
            .take()
            .filter(|b| !b.is_empty())
            .map(PartBuffer::freeze)
            .into_iter()
            .collect()
    }

    /// The staged pieces not yet read back.
    fn staged(&self) -> Range<usize> {
        match self.target {
            Some(_) if !self.consumed.is_empty() => 0..0,
            Some(t) => t + 1..self.state.segments.len(),
            None => staged_range(&self.state.segments),
        }
    }

    /// The index the next part of this append gets.
    fn next_part(&self) -> usize {
        let recorded = self
            .target
            .and_then(|t| self.state.segments[t].multipart.as_ref())
            .map_or(0, |m| m.parts.len());
        recorded + self.sent.len() + self.in_flight.len()
    }

    /// Sends the staged pieces (if not yet sent) and then the received bytes, `size` in all,
    /// as the next part.
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
                .map(|p| piece_key(self.store, self.id, &p.segment))
                .collect();
            body = read_back(self.store, self.id, &keys, &self.version).await?;
            from_staged = self
                .state
                .segments
                .drain(staged)
                .map(|p| p.size())
                .sum::<u64>() as usize;
            self.consumed = keys;
            self.staged_len = 0;
        }
        debug_assert_eq!(from_staged + self.filling_len(), size);
        body.extend(self.take_filled());
        let payload = PutPayload::from_iter(body);
        self.wait_for_a_free_slot().await?;
        let t = self.target.unwrap_or_default();
        let key = piece_key(self.store, self.id, &self.state.segments[t].segment);
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

    /// Waits until fewer than [`PARTS_IN_FLIGHT`] parts are in flight.
    async fn wait_for_a_free_slot(&mut self) -> std::result::Result<(), Stop> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            if let Some(sent) = self.in_flight.join_next().await {
                self.sent.push(joined(sent)?);
            }
        }
        Ok(())
    }

    /// Before the first part: records in the state that this append sends parts, to the last
    /// upload if nobody else may be sending to it, else to a new one (before the staged
    /// pieces, which its first part takes in).
    async fn claim(&mut self) -> std::result::Result<(), Stop> {
        if self.target.is_some() {
            return Ok(());
        }
        let mut next = self.state.clone();
        let start = staged_range(&next.segments).start;
        let last = start.checked_sub(1);
        let open = last.is_some_and(|i| {
            next.segments[i]
                .multipart
                .as_ref()
                .is_some_and(|m| !m.sealed && m.parts.len() < MAX_PARTS)
        });
        if open && self.held.is_some() && next.appending == self.held {
            // Claimed for this engine by the append before, which nobody has taken over
            // since (a takeover rewrites the claim): the state says so already.
            self.tag = self.held.clone().unwrap_or_default();
            self.target = last;
            return Ok(());
        }
        let reusable = open && next.appending.is_none();
        let mut created = None;
        let target = if reusable {
            start - 1
        } else {
            if let Some(m) = last.and_then(|i| next.segments[i].multipart.as_mut()) {
                // Another append claimed it and may still be sending parts (or it is full).
                m.sealed = true;
            }
            let segment = Segment {
                seq: next_seq(&next.segments),
                nonce: random_tag(),
                size: 0,
            };
            let key = piece_key(self.store, self.id, &segment);
            let upload = self.multipart.create_multipart(&key).await?;
            created = Some((key, upload.clone()));
            next.segments.insert(
                start,
                Piece {
                    segment,
                    multipart: Some(OpenMultipart {
                        id: upload,
                        parts: Vec::new(),
                        sealed: false,
                    }),
                },
            );
            start
        };
        next.appending = Some(self.tag.clone());
        next.session.last_active = Utc::now();
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
    async fn write_state(&mut self, state: &ObjectSession) -> std::result::Result<(), Stop> {
        self.version = replace_state(self.store, self.id, state, self.version.clone()).await?;
        self.written = true;
        Ok(())
    }

    /// Records the parts, stages what is left (merged with staged pieces where that keeps
    /// them few), and writes the new state; returns the claim it carried over to the next
    /// append through this engine, if it held one, with the state it wrote.
    ///
    /// An append that held the claim (its own, or one carried to it) passes it on in the same
    /// write, under a new tag only this engine knows: the next append through this engine
    /// sends its parts without a claim write of its own, and any other append (another
    /// replica, or this one after forgetting) sees a claim it does not hold and takes over as
    /// from a crashed append.
    async fn finish(mut self) -> std::result::Result<(UploadStatus, Option<Held>), Stop> {
        let owned =
            self.target.is_some() || (self.held.is_some() && self.state.appending == self.held);
        let carried = owned.then(held_tag);
        if let Some(t) = self.target {
            self.sent.sort_by_key(|(index, _)| *index);
            let piece = &mut self.state.segments[t];
            if let Some(m) = piece.multipart.as_mut() {
                for (_, part) in std::mem::take(&mut self.sent) {
                    piece.segment.size += part.size;
                    m.parts.push(part);
                }
            }
        }
        if owned {
            // This append's claim ends with it, carried over to the next one.
            self.state.appending.clone_from(&carried);
        }
        let rest = self.take_filled();
        let staged = self.staged();
        let (merged, new) = stage(
            self.store,
            self.id,
            &self.version,
            &mut self.state.segments,
            staged,
            rest,
        )
        .await?;
        self.consumed.extend(merged);
        let mut state = self.state.clone();
        state.session.advance(self.received, &self.hashes);
        let (status, version) = settle(
            self.store,
            self.id,
            &state,
            self.version,
            &self.consumed,
            new,
        )
        .await?;
        let known = Some((state, version));
        Ok((status, carried.map(|tag| Held { tag, known })))
    }
}

/// Claims carried from one append to the next are told apart from claims of appends in
/// flight: a losing append need not wait for one (see [`lost`]).
const HELD: &str = "held-";

fn held_tag() -> String {
    format!("{HELD}{}", random_tag())
}

fn is_held(tag: &str) -> bool {
    tag.starts_with(HELD)
}

/// The last write of an append: the new state, if the session is still at `version`. Then the
/// staged pieces the append took in (read back into a part, or merged) go; if another writer
/// came first, the piece this append staged goes instead, and the caller reports the offset.
/// Returns the state's new version beside the status.
async fn settle(
    store: &Store,
    id: &UploadId,
    state: &ObjectSession,
    version: UpdateVersion,
    taken_in: &[Path],
    staged: Option<Path>,
) -> std::result::Result<(UploadStatus, UpdateVersion), Stop> {
    match replace_state(store, id, state, version).await {
        Ok(version) => {
            for key in taken_in {
                // Their bytes are in a recorded part or piece now; a leftover is only garbage,
                // which the commit's sweep deletes.
                let _ = store.remove(key).await;
            }
            Ok((state.session.status(id), version))
        }
        Err(Stop::Lost) => {
            if let Some(key) = staged {
                store.remove(&key).await?;
            }
            Err(Stop::Lost)
        }
        // The outcome is unknown: the write may have landed, so the new piece stays.
        Err(e) => Err(e),
    }
}

/// The result of a part's task.
fn joined(
    result: std::result::Result<Result<(usize, Part)>, tokio::task::JoinError>,
) -> Result<(usize, Part)> {
    result.map_err(|e| Error::io("sending a part", std::io::Error::other(e)))?
}

/// An append on a store without multipart uploads.
struct SegmentAppend<'a> {
    engine: &'a ObjectEngine,
    store: &'a Store,
    id: &'a UploadId,
    state: ObjectSession,
    version: UpdateVersion,
    hashes: Hashes,
}

impl SegmentAppend<'_> {
    /// Receives the first 5 MiB of the chunk before it decides: a smaller chunk is staged
    /// like a multipart remainder (merged with the staged pieces as they accumulate); a larger
    /// one is written as one object that takes all staged pieces in at its head. So every
    /// piece but a few trailing ones is at least 5 MiB, whatever the chunk pattern.
    async fn append(
        mut self,
        mut chunk: ChunkStream<'_>,
    ) -> std::result::Result<UploadStatus, Stop> {
        let mut head = Pending::default();
        let mut ended = false;
        while head.len() < MIN_PART_LEN {
            match chunk.next().await {
                Some(bytes) => {
                    let bytes = bytes.map_err(receiving)?;
                    self.hashes.update(&bytes);
                    head.push(bytes);
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let staged = staged_range(&self.state.segments);
        let (merged, new, received) = if ended {
            let received = head.len() as u64;
            let rest = head.take(head.len());
            let (merged, new) = stage(
                self.store,
                self.id,
                &self.version,
                &mut self.state.segments,
                staged,
                rest,
            )
            .await?;
            (merged, new, received)
        } else {
            self.write_large(staged, head, chunk).await?
        };
        let mut state = self.state.clone();
        state.session.advance(received, &self.hashes);
        settle(self.store, self.id, &state, self.version, &merged, new)
            .await
            .map(|(status, _)| status)
    }

    /// Streams a chunk of at least 5 MiB into one new object, led by the staged pieces.
    /// Returns the staged keys taken in, the new key, and the chunk's bytes.
    async fn write_large(
        &mut self,
        staged: Range<usize>,
        mut head: Pending,
        mut chunk: ChunkStream<'_>,
    ) -> std::result::Result<(Vec<Path>, Option<Path>, u64), Stop> {
        let keys: Vec<Path> = self.state.segments[staged.clone()]
            .iter()
            .map(|p| piece_key(self.store, self.id, &p.segment))
            .collect();
        let lead = read_back(self.store, self.id, &keys, &self.version).await?;
        let segment = Segment {
            seq: next_seq(&self.state.segments),
            nonce: random_tag(),
            size: 0,
        };
        let key = piece_key(self.store, self.id, &segment);
        let mut writer = BufWriter::with_capacity(
            Arc::clone(&self.engine.objects),
            key.clone(),
            SEGMENT_BUFFER,
        );
        let mut size = 0u64;
        let mut received = head.len() as u64;
        let written: Result<()> = async {
            for bytes in lead.into_iter().chain(head.take(head.len())) {
                size += bytes.len() as u64;
                writer.put(bytes).await?;
            }
            while let Some(bytes) = chunk.next().await {
                let bytes = bytes.map_err(receiving)?;
                self.hashes.update(&bytes);
                received += bytes.len() as u64;
                size += bytes.len() as u64;
                writer.put(bytes).await?;
            }
            writer
                .shutdown()
                .await
                .map_err(|e| Error::io("writing the segment", e))
        }
        .await;
        if let Err(e) = written {
            let _ = writer.abort().await;
            return Err(Stop::Failed(e));
        }
        self.state.segments.drain(staged);
        self.state.segments.push(Piece {
            segment: Segment { size, ..segment },
            multipart: None,
        });
        Ok((keys, Some(key), received))
    }
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
        assert_eq!(part_size(1499), 8 * MIB);
        assert_eq!(part_size(1500), 16 * MIB);
        let held: usize = (0..PART_LIMIT).map(part_size).sum();
        assert!(held as u64 > 300 * 1024 * MIB as u64, "{held}");
    }

    #[test]
    fn an_8_gib_upload_is_sent_in_parts_of_one_size() {
        let parts = (8 * 1024 * MIB).div_ceil(PART_SIZE);
        assert!((0..parts).all(|i| part_size(i) == PART_SIZE));
    }
}
