//! Committing a session on an object store: the marker, the verified decision, completing the
//! multipart uploads where they are, and publishing the index.

use std::collections::HashSet;

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload, UpdateVersion};

use super::state::{ObjectSession, Piece};
use super::{ObjectEngine, Stop, abort, list_sizes, load, piece_key, replace_state};
use crate::cache::CachedBlob;
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::gc::protocol::{Target, Verdict};
use crate::store::{BlobInfo, BlobLocation, Repository, Segment, SegmentIndex, Store};
use crate::upload::session::Hashes;
use crate::upload::{UploadId, published, verify};

pub(super) async fn commit(
    engine: &ObjectEngine,
    repo: &Repository,
    id: &UploadId,
    expected: &Digest,
    expected_size: Option<u64>,
) -> Result<BlobInfo> {
    let store = repo.store();
    let (mut state, version) = load(store, id).await?;
    state.session.check_repository(repo.name(), id)?;
    let size = state.session.offset;
    let known = state.session.digest(expected.algorithm());
    if let Some(actual) = &known {
        // Checked before anything changes: a wrong digest leaves the session as it was.
        verify(actual, size, expected, expected_size)?;
    }
    if state.verified {
        // An earlier commit of this session verified its digest and did not finish.
        if state.publishing != Some(*expected) {
            return Err(committed_as(id, state.publishing));
        }
    } else {
        if let Some(other) = state.publishing
            && other != *expected
            && published_as(store, id, &other).await?
        {
            // Published by a version of layerstore that did not record `verified`.
            return Err(committed_as(id, Some(other)));
        }
        // The commit marker. From this write on the session takes no append. When the digest
        // is known (the hash state), it is verified already and this one write is also the
        // decision: the pieces are the blob's, and a cancel or purge that comes later finishes
        // publishing them instead of deleting them. One that wrote first makes this fail.
        state.publishing = Some(*expected);
        state.verified = known.is_some();
        state.session.last_active = Utc::now();
        let version = commit_write(store, id, &state, version).await?;
        if !state.verified {
            let verified = verify_by_rehashing(
                engine,
                store,
                id,
                &mut state,
                version,
                expected,
                expected_size,
            )
            .await;
            if let Err(e) = verified {
                return Err(unless_ended(store, id, e).await);
            }
        }
    }
    let blob = match finish_publishing(engine, store, id, &state.segments, expected, size).await? {
        Published::Yes => CachedBlob::segments(size),
        Published::Deduplicated(blob) => blob,
        Published::PiecesGone => {
            return Err(Error::BlobUploadInvalid {
                reason: format!("the pieces of upload {id} are gone; push the blob again"),
            });
        }
    };
    repo.link_blob(expected, blob).await?;
    // The blob is published and linked: what is left is only the state, which the purger
    // deletes if this fails. The client must not get an error for a stored blob.
    let state_key = store.keys().upload_state(id.as_str());
    if let Err(e) = store.remove(&state_key).await {
        tracing::warn!(upload = %id, error = %e, "committed session not deleted; the purger will");
    }
    Ok(published(expected, size))
}

/// A piece or upload the re-hash needed was gone. If a cancel or purge won the session while
/// it ran (its conditional write came before our verified one, which would fail anyway), that
/// is a race between clients, not a backend failure: the session is unknown now.
async fn unless_ended(store: &Store, id: &UploadId, e: Error) -> Error {
    let Error::Backend {
        source: object_store::Error::NotFound { .. },
    } = &e
    else {
        return e;
    };
    match super::load(store, id).await {
        Err(ended @ Error::BlobUploadUnknown { .. }) => ended,
        _ => e,
    }
}

fn committed_as(id: &UploadId, digest: Option<Digest>) -> Error {
    let digest = digest.map_or_else(|| "another digest".to_owned(), |d| d.to_string());
    Error::BlobUploadInvalid {
        reason: format!("upload {id} was committed as {digest}"),
    }
}

/// A conditional write of the commit's state; losing it means an append, cancel or purge
/// changed the session first.
async fn commit_write(
    store: &Store,
    id: &UploadId,
    state: &ObjectSession,
    version: UpdateVersion,
) -> Result<UpdateVersion> {
    match replace_state(store, id, state, version).await {
        Ok(v) => Ok(v),
        Err(Stop::Lost) => Err(Error::BlobUploadInvalid {
            reason: format!(
                "upload {id} changed during the commit (an append, cancel or purge came first); \
                 commit again"
            ),
        }),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// The slow path, for a digest the session does not hash (the first SHA-512 commit, or a hash
/// state this build cannot read): completes the uploads, hashes the stored bytes, and keeps
/// the hashes in the state, so no later commit or append of the session reads them again. On
/// a match the verified decision is written; on a mismatch the marker is taken back and the
/// session stays resumable (its uploads completed, plain pieces now).
async fn verify_by_rehashing(
    engine: &ObjectEngine,
    store: &Store,
    id: &UploadId,
    state: &mut ObjectSession,
    version: UpdateVersion,
    expected: &Digest,
    expected_size: Option<u64>,
) -> Result<()> {
    complete_uploads(engine, store, id, &mut state.segments).await?;
    let hashes = rehash(store, id, &state.segments).await?;
    state.session.set_hashes(&hashes);
    let actual = hashes
        .digest(expected.algorithm())
        .ok_or_else(|| Error::io("re-hashing", std::io::Error::other("no hash kept")))?;
    if let Err(e) = verify(&actual, state.session.offset, expected, expected_size) {
        state.publishing = None;
        // If this write fails, the marker stays until a commit with the right digest, a
        // cancel or the purger.
        let _ = replace_state(store, id, state, version).await;
        return Err(e);
    }
    state.verified = true;
    commit_write(store, id, state, version).await?;
    Ok(())
}

/// Hashes the stored bytes of a session again (its uploads completed), under every hash a
/// session keeps once it has been asked for SHA-512.
async fn rehash(store: &Store, id: &UploadId, pieces: &[Piece]) -> Result<Hashes> {
    let mut hashes = Hashes::for_algorithm(Algorithm::Sha512);
    for piece in pieces {
        let key = piece_key(store, id, &piece.segment);
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(0..piece.size())),
            ..Default::default()
        };
        let mut stream = store.objects().get_opts(&key, options).await?.into_stream();
        while let Some(bytes) = stream.next().await {
            hashes.update(&bytes?);
        }
    }
    Ok(hashes)
}

/// Completes the session's multipart uploads where they are, turning each into a plain piece;
/// drops uploads with no recorded part. Idempotent: an upload an earlier try already
/// completed is found by its object.
pub(super) async fn complete_uploads(
    engine: &ObjectEngine,
    store: &Store,
    id: &UploadId,
    pieces: &mut Vec<Piece>,
) -> Result<()> {
    let Some(multipart) = engine.multipart.clone() else {
        return Ok(());
    };
    let mut done = Vec::with_capacity(pieces.len());
    for piece in pieces.drain(..) {
        let Some(upload) = &piece.multipart else {
            done.push(piece);
            continue;
        };
        let key = piece_key(store, id, &piece.segment);
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
            // Completed before (by an earlier try, or a racing one): the object is there.
            match store.head(&key).await? {
                Some(meta) if meta.size == piece.size() => {}
                _ => return Err(e.into()),
            }
        }
        done.push(Piece {
            multipart: None,
            ..piece
        });
    }
    *pieces = done;
    Ok(())
}

/// What [`finish_publishing`] found.
pub(super) enum Published {
    /// The index lists this session's pieces (written now, or by an earlier try).
    Yes,
    /// The store had the blob from another upload, kept as said; this session's pieces are
    /// deleted.
    Deduplicated(CachedBlob),
    /// The pieces are no longer all there (deleted after a deduplication whose blob has since
    /// gone): nothing was published.
    PiecesGone,
}

/// Publishes verified pieces as `digest`: completes the uploads, checks that every piece is
/// there whole, writes the index (create-only), and deletes the session's other objects.
/// Idempotent, and safe to run twice at once: the commit, a retried commit, a cancel and the
/// purger all finish a verified commit this way.
pub(super) async fn finish_publishing(
    engine: &ObjectEngine,
    store: &Store,
    id: &UploadId,
    pieces: &[Piece],
    digest: &Digest,
    size: u64,
) -> Result<Published> {
    match store.locate_blob(digest).await? {
        // An earlier try published the index: the pieces are the blob's.
        Some(BlobLocation::Segments(index)) if index.upload == id.as_str() => {
            sweep(store, id, &index.segments).await;
            return Ok(Published::Yes);
        }
        Some(other) => {
            // The store already has these bytes (dedupe): ours are not needed.
            engine.discard_staged(store, id, pieces).await?;
            return Ok(Published::Deduplicated(other.cached()));
        }
        None => {}
    }
    let mut pieces = pieces.to_vec();
    complete_uploads(engine, store, id, &mut pieces).await?;
    let listed = list_sizes(store, id).await?;
    let whole = pieces
        .iter()
        .all(|p| listed.get(&piece_key(store, id, &p.segment)) == Some(&p.size()));
    if !whole {
        return Ok(Published::PiecesGone);
    }
    // A GC run in progress must not take the pieces for leftovers once the index names them.
    let upload = Target::Upload(id.to_string());
    store.pin_to_write(upload.clone()).await?;
    let index = SegmentIndex {
        size,
        upload: id.to_string(),
        segments: pieces.iter().map(|p| p.segment.clone()).collect(),
    };
    // Plain strings and numbers: serialization cannot fail.
    let body = Bytes::from(serde_json::to_vec(&index).unwrap_or_default());
    let opts = PutOptions::from(PutMode::Create);
    match store
        .objects()
        .put_opts(
            &store.keys().blob_segments(digest),
            PutPayload::from(body),
            opts,
        )
        .await
    {
        Ok(_) => {
            if store.pin(upload).await? == Verdict::Delete {
                return Err(Error::Backend {
                    source: object_store::Error::Generic {
                        store: "layerstore gc",
                        source: format!(
                            "garbage collection is deleting the pieces of upload {id}, which \
                             this commit published while the run started; upload again"
                        )
                        .into(),
                    },
                });
            }
            let keep: HashSet<Path> = pieces
                .iter()
                .map(|p| piece_key(store, id, &p.segment))
                .collect();
            remove_unlisted(store, id, listed.into_keys(), &keep).await;
            Ok(Published::Yes)
        }
        Err(object_store::Error::AlreadyExists { .. }) => {
            // A concurrent upload of the same content published first; unless that was a
            // concurrent finish of this same session, whose index lists our pieces.
            if published_as(store, id, digest).await? {
                Ok(Published::Yes)
            } else {
                // The index that won lists another upload's segments.
                engine.discard_staged(store, id, &pieces).await?;
                Ok(Published::Deduplicated(CachedBlob::segments(size)))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the objects under the session's segment prefix that the published index does not
/// list: staged segments of a failed append, or segments a merge or a part took in whose
/// delete failed. No append can add one any more (the commit marker). Best effort: the blob
/// is published either way.
async fn sweep(store: &Store, id: &UploadId, indexed: &[Segment]) {
    let keep: HashSet<Path> = indexed.iter().map(|s| piece_key(store, id, s)).collect();
    match store
        .list_keys(&store.keys().segments_prefix(id.as_str()))
        .await
    {
        Ok(listed) => remove_unlisted(store, id, listed.into_iter(), &keep).await,
        Err(e) => tracing::warn!(upload = %id, error = %e, "leftover upload segments not listed"),
    }
}

async fn remove_unlisted(
    store: &Store,
    id: &UploadId,
    listed: impl Iterator<Item = Path>,
    keep: &HashSet<Path>,
) {
    for key in listed.filter(|k| !keep.contains(k)) {
        if let Err(e) = store.remove(&key).await {
            tracing::warn!(upload = %id, error = %e, "leftover upload segment not deleted");
            return;
        }
    }
}

/// Whether the index of `digest` lists this session's pieces.
pub(super) async fn published_as(store: &Store, id: &UploadId, digest: &Digest) -> Result<bool> {
    let index = store.read_segment_index(digest).await?;
    Ok(index.is_some_and(|i| i.upload == id.as_str()))
}
