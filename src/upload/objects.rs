//! Uploads on object stores: one segment object per chunk, an index object on commit.

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use super::{
    ChunkStream, HashState, Segment, SessionState, UploadId, UploadStatus, load, load_any,
    published, verify,
};
use crate::digest::{Algorithm, Digest, DigestHasher};
use crate::error::{Error, Result};
use crate::store::{BlobInfo, BlobLocation, Repository, Store};

/// Buffer of the segment writer: chunks above it are streamed as a multipart upload.
const SEGMENT_BUFFER: usize = 10 * 1024 * 1024;

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

pub(super) async fn append(
    repo: &Repository,
    id: &UploadId,
    offset: u64,
    mut chunk: ChunkStream<'_>,
) -> Result<UploadStatus> {
    let store = repo.store();
    let (mut state, version) = load(store, id).await?;
    state.check_repository(repo.name(), id)?;
    state.check_offset(offset)?;
    let Some(mut hasher) = state.hash.restore() else {
        return Err(Error::Corrupt {
            key: store.keys().upload_state(id.as_str()).to_string(),
            reason: "hash state written by another version; commit re-hashes, appends cannot"
                .to_owned(),
        });
    };

    let seq = state.segments.last().map_or(0, |s| s.seq + 1);
    let nonce = format!("{:016x}", rand::random::<u64>());
    let key = store.keys().segment(id.as_str(), seq, &nonce);
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
        state.segments.push(Segment { seq, nonce, size });
    }

    state.offset += size;
    state.last_active = Utc::now();
    state.hash = HashState::of(&hasher);
    let state_key = store.keys().upload_state(id.as_str());
    let opts = PutOptions::from(PutMode::Update(version));
    match store
        .objects()
        .put_opts(&state_key, PutPayload::from(state.encode()), opts)
        .await
    {
        Ok(_) => Ok(state.status(id)),
        Err(
            object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. },
        ) => {
            // Another append won the race for this offset: drop ours, report where it stands.
            if size > 0 {
                store.remove(&key).await?;
            }
            let (current, _) = load(store, id).await?;
            current.check_offset(offset)?;
            Err(Error::RangeInvalid(
                crate::error::RangeError::UploadOffset {
                    current: current.offset,
                    requested: offset,
                },
            ))
        }
        Err(e) => {
            if size > 0 {
                let _ = store.remove(&key).await;
            }
            Err(e.into())
        }
    }
}

pub(super) async fn commit(
    repo: &Repository,
    id: &UploadId,
    expected: &Digest,
    expected_size: Option<u64>,
) -> Result<BlobInfo> {
    let store = repo.store();
    let (mut state, version) = load(store, id).await?;
    state.check_repository(repo.name(), id)?;
    let actual = match (expected.algorithm(), state.hash.restore()) {
        (Algorithm::Sha256, Some(hasher)) => Digest::Sha256(hasher.finalize().into()),
        // The slow but correct path: hash the stored bytes.
        (algorithm, _) => rehash(store, id, &state.segments, algorithm).await?,
    };
    verify(&actual, state.offset, expected, expected_size)?;

    if expected.algorithm() != Algorithm::Sha256
        && state.publishing != Some(*expected)
        && !state.segments.is_empty()
    {
        // The session's SHA-256 state does not name this blob: record which one the segments
        // are about to belong to, before the index makes them its, so that a cancel or purge
        // after a failed commit keeps them.
        state.publishing = Some(*expected);
        let key = store.keys().upload_state(id.as_str());
        let opts = PutOptions::from(PutMode::Update(version));
        match store
            .objects()
            .put_opts(&key, PutPayload::from(state.encode()), opts)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::Precondition { .. }) => {
                return Err(Error::BlobUploadInvalid {
                    reason: format!("upload {id} received a chunk during the commit"),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }

    let keys = store.keys();
    match store.locate_blob(expected).await? {
        // An earlier commit of this very session published the index and failed after it:
        // the segments are the blob's now and must stay.
        Some(BlobLocation::Segments(index)) if index.upload == id.as_str() => {
            return Ok(published(expected, state.offset));
        }
        Some(_) => {
            // The store already has these bytes (dedupe): ours are not needed.
            delete_segments(store, id, &state.segments).await?;
            return Ok(published(expected, state.offset));
        }
        None => {}
    }
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
        Ok(_) => {}
        Err(object_store::Error::AlreadyExists { .. }) => {
            // A concurrent upload of the same content published first; unless that was a
            // concurrent commit of this same session, whose index lists our segments.
            let winner: Option<SegmentIndex> =
                store.read_link(&keys.blob_segments(expected)).await?;
            if winner.is_none_or(|w| w.upload != id.as_str()) {
                delete_segments(store, id, &state.segments).await?;
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(published(expected, state.offset))
}

/// Cancels a session. First its state is marked cancelled, with a conditional put (an append
/// that races it loses), so that from then on nothing can append to it or commit it; then its
/// segments are deleted — unless a commit that failed after publishing made them a blob's —
/// and last its state. A failure midway leaves a cancelled session, finished by a retried
/// cancel or the next purge, never a live one with segments missing.
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
        let opts = PutOptions::from(PutMode::Update(version));
        match store
            .objects()
            .put_opts(&key, PutPayload::from(state.encode()), opts)
            .await
        {
            Ok(_) => break state,
            // An append got in first: mark the state it left.
            Err(object_store::Error::Precondition { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    };
    if !store.published_segments(id, &state).await? {
        delete_segments(store, id, &state.segments).await?;
    }
    store.remove(&key).await
}

/// Hashes the stored bytes of a session again.
async fn rehash(
    store: &Store,
    id: &UploadId,
    segments: &[Segment],
    algorithm: Algorithm,
) -> Result<Digest> {
    let mut hasher = DigestHasher::new(algorithm);
    for segment in segments {
        let key = store
            .keys()
            .segment(id.as_str(), segment.seq, &segment.nonce);
        let mut stream = store.objects().get(&key).await?.into_stream();
        while let Some(bytes) = stream.next().await {
            hasher.update(&bytes?);
        }
    }
    Ok(hasher.finish())
}

/// Deletes the segments of a session (including any left by a failed append).
pub(super) async fn delete_segments(store: &Store, id: &UploadId, known: &[Segment]) -> Result<()> {
    let prefix = store.keys().segments_prefix(id.as_str());
    let mut keys = store.list_keys(&prefix).await?;
    keys.extend(
        known
            .iter()
            .map(|s| store.keys().segment(id.as_str(), s.seq, &s.nonce)),
    );
    keys.sort();
    keys.dedup();
    for key in keys {
        store.remove(&key).await?;
    }
    Ok(())
}
