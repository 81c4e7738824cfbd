//! The blob pass: every blob object read back and hashed; corrupt ones quarantined on repair.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStoreExt};
use sha2::{Digest as _, Sha256, Sha512};

use super::{Problem, ProblemKind, Scan, ScrubPhase};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::layout::BlobKey;
use crate::store::{BlobObject, SegmentIndex};

/// Bytes gathered (as received, not copied) before one hashing job on the blocking pool: large
/// enough that a job's overhead is noise, small enough that a job is short.
const HASH_BATCH: usize = 1024 * 1024;
/// Pieces of one blob looked up at once.
const PIECE_LOOKUPS: usize = 8;
/// Pieces named in a message, at most.
const NAMED: usize = 3;

/// What checking one blob object found.
enum Verdict {
    /// Whole, with the right digest.
    Sound,
    /// Gone since the listing (deleted or moved meanwhile): nothing to say about it.
    Vanished,
    /// Broken: its problem.
    Bad(ProblemKind, String),
}

impl Scan<'_> {
    /// Counts the blobs, then checks each, `parallelism` at a time.
    pub(super) async fn blobs(&self) -> Result<()> {
        let (count, bytes, pieced) = self
            .store
            .blob_objects()
            .try_fold((0u64, 0u64, false), |(n, bytes, pieced), o| async move {
                Ok(match o.key {
                    BlobKey::Data(_) => (n + 1, bytes + o.meta.size, pieced),
                    BlobKey::Segments(_) => (n + 1, bytes, true),
                })
            })
            .await?;
        self.advance(|p| {
            p.phase = ScrubPhase::Blobs;
            p.blobs_total = Some(count);
            p.bytes_total = (!pieced).then_some(bytes);
        });
        self.store
            .blob_objects()
            .map_ok(|object| async move {
                self.check_blob(object).await;
                Ok(())
            })
            .try_buffer_unordered(self.options.parallelism.max(1))
            .try_collect::<()>()
            .await
    }

    async fn check_blob(&self, object: BlobObject) {
        let digest = object.digest();
        let key = &object.meta.location;
        let verdict = match object.key {
            BlobKey::Data(_) => self.check_data(&object).await,
            BlobKey::Segments(_) => self.check_pieces(&digest).await,
        };
        let (kind, message) = match verdict {
            Ok(Verdict::Sound) => {
                self.advance(|p| p.counts.blobs += 1);
                return;
            }
            Ok(Verdict::Vanished) => return,
            Ok(Verdict::Bad(kind, message)) => (kind, message),
            Err(e) => (ProblemKind::BlobUnreadable, e.to_string()),
        };
        self.mark_bad(digest);
        self.advance(|p| p.counts.blobs += 1);
        let mut problem = Problem::new(kind, key, message).about(digest);
        if self.options.repair && kind.repairable() {
            self.quarantine(&object, &mut problem).await;
        }
        self.report(problem);
    }

    /// A blob in one object: read as the engine serves it, hashed.
    async fn check_data(&self, object: &BlobObject) -> Result<Verdict> {
        let digest = object.digest();
        let read = self
            .store
            .backend()
            .engine()
            .read_object(self.store, &object.meta.location, None, &digest)
            .await;
        let stream = match read {
            Ok(stream) => stream,
            Err(Error::BlobUnknown { .. }) => return Ok(Verdict::Vanished),
            Err(e) => return Err(e),
        };
        self.verdict(digest, stream).await
    }

    /// A blob made of pieces: the index decodes and adds up, every piece is there whole, and
    /// their bytes hash to the digest.
    async fn check_pieces(&self, digest: &Digest) -> Result<Verdict> {
        let index = match self.store.read_segment_index(digest).await {
            Ok(Some(index)) => index,
            Ok(None) => return Ok(Verdict::Vanished),
            Err(Error::Corrupt { reason, .. }) => {
                return Ok(Verdict::Bad(ProblemKind::SegmentIndexInvalid, reason));
            }
            Err(e) => return Err(e),
        };
        let pieces = index
            .segments
            .iter()
            .try_fold(0u64, |sum, s| sum.checked_add(s.size));
        if pieces != Some(index.size) {
            let pieces = pieces.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string());
            return Ok(Verdict::Bad(
                ProblemKind::BlobSizeMismatch,
                format!(
                    "the index records {} bytes, its {} pieces hold {pieces}",
                    index.size,
                    index.segments.len()
                ),
            ));
        }
        if let Some(bad) = self.check_piece_objects(&index).await? {
            return Ok(bad);
        }
        let size = index.size;
        let stream = self.store.read_segments(index, 0..size, *digest);
        self.verdict(*digest, stream).await
    }

    /// Every piece an index lists: there, and at least as long as it records.
    async fn check_piece_objects(&self, index: &SegmentIndex) -> Result<Option<Verdict>> {
        let keys = self.store.keys();
        let found: Vec<(String, u64, Option<ObjectMeta>)> =
            futures::stream::iter(index.segments.iter().map(|s| {
                let key = keys.segment(&index.upload, s.seq, &s.nonce);
                let size = s.size;
                async move { Ok::<_, Error>((key.to_string(), size, self.store.head(&key).await?)) }
            }))
            .buffered(PIECE_LOOKUPS)
            .try_collect()
            .await?;
        let total = found.len();
        let missing: Vec<&str> = found
            .iter()
            .filter(|(_, _, meta)| meta.is_none())
            .map(|(key, _, _)| key.as_str())
            .collect();
        if !missing.is_empty() {
            return Ok(Some(Verdict::Bad(
                ProblemKind::SegmentMissing,
                format!(
                    "{} of its {total} pieces are gone: {}",
                    missing.len(),
                    named(&missing)
                ),
            )));
        }
        let short: Vec<String> = found
            .iter()
            .filter_map(|(key, size, meta)| {
                let held = meta.as_ref()?.size;
                (held < *size).then(|| format!("{key} holds {held} of {size} bytes"))
            })
            .collect();
        if !short.is_empty() {
            let short: Vec<&str> = short.iter().map(String::as_str).collect();
            return Ok(Some(Verdict::Bad(
                ProblemKind::SegmentTruncated,
                format!(
                    "{} of its {total} pieces are short: {}",
                    short.len(),
                    named(&short)
                ),
            )));
        }
        Ok(None)
    }

    /// Hashes a blob's bytes and compares with its digest.
    async fn verdict(
        &self,
        digest: Digest,
        stream: BoxStream<'static, Result<Bytes>>,
    ) -> Result<Verdict> {
        match self.hash(digest.algorithm(), stream).await {
            Ok((actual, _)) if actual == digest => Ok(Verdict::Sound),
            Ok((actual, n)) => Ok(Verdict::Bad(
                ProblemKind::BlobCorrupt,
                format!("its {n} bytes hash to {actual}"),
            )),
            // A piece or the object went while it was read (moved by another scrub, say).
            Err(Error::BlobUnknown { .. }) => Ok(Verdict::Vanished),
            Err(e) => Err(e),
        }
    }

    /// Hashes a stream at the rate allowed, in batches on the blocking pool; returns the digest
    /// and the number of bytes.
    async fn hash(
        &self,
        algorithm: Algorithm,
        mut stream: BoxStream<'static, Result<Bytes>>,
    ) -> Result<(Digest, u64)> {
        let mut hasher = Hasher::new(algorithm);
        let mut batch = Vec::new();
        let mut batched = 0;
        let mut total = 0u64;
        while let Some(chunk) = stream.try_next().await? {
            if let Some(limiter) = &self.limiter {
                limiter.take(chunk.len()).await;
            }
            batched += chunk.len();
            batch.push(chunk);
            if batched >= HASH_BATCH {
                hasher = hasher.update(std::mem::take(&mut batch)).await?;
                total += batched as u64;
                self.advance(|p| p.counts.bytes_hashed += batched as u64);
                batched = 0;
            }
        }
        if batched > 0 {
            hasher = hasher.update(batch).await?;
            total += batched as u64;
            self.advance(|p| p.counts.bytes_hashed += batched as u64);
        }
        Ok((hasher.finish(), total))
    }

    /// Moves a bad blob object under `quarantine/`, if it is still the object that was checked.
    async fn quarantine(&self, object: &BlobObject, problem: &mut Problem) {
        let key = &object.meta.location;
        match self.store.head(key).await {
            Ok(Some(now)) if same_object(&now, &object.meta) => {}
            Ok(Some(_)) => return problem.not_repaired("it changed since it was checked"),
            Ok(None) => return problem.not_repaired("it was gone before it could be moved"),
            Err(e) => return problem.not_repaired(format!("cannot look at it again: {e}")),
        }
        let target =
            self.store
                .keys()
                .quarantined_blob(object.key, chrono::Utc::now(), rand::random());
        if let Err(e) = self.store.objects().rename(key, &target).await {
            return problem.not_repaired(format!("moving it to {target} failed: {e}"));
        }
        // After the move: a stat that read the blob before it and fills the cache after sees
        // the removal and drops its entry (see `Repository::stat_blob`).
        if let Some(cache) = self.store.cache() {
            cache.remove_blob(&object.digest()).await;
        }
        problem.repaired(format!("moved to {target}"));
    }
}

/// Whether `now` (from a `HEAD`) is still the object `then` (from the listing) described: a
/// blob object is never rewritten in place, so any change means someone else acted on it.
fn same_object(now: &ObjectMeta, then: &ObjectMeta) -> bool {
    now.size == then.size
        && now.last_modified == then.last_modified
        && now.e_tag.as_deref().map(bare_etag) == then.e_tag.as_deref().map(bare_etag)
}

/// An ETag without its quotes: Azure's listing gives `0x8D…` where its `HEAD` gives `"0x8D…"`.
fn bare_etag(tag: &str) -> &str {
    tag.trim_matches('"')
}

fn named(items: &[&str]) -> String {
    let mut text = items[..items.len().min(NAMED)].join(", ");
    if items.len() > NAMED {
        text.push_str(&format!(" and {} more", items.len() - NAMED));
    }
    text
}

/// A running hash under one algorithm.
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Self::Sha256(Sha256::new()),
            Algorithm::Sha512 => Self::Sha512(Sha512::new()),
        }
    }

    /// Hashes `batch` as one job on the blocking pool.
    async fn update(mut self, batch: Vec<Bytes>) -> Result<Self> {
        tokio::task::spawn_blocking(move || {
            for bytes in &batch {
                match &mut self {
                    Self::Sha256(h) => h.update(bytes),
                    Self::Sha512(h) => h.update(bytes),
                }
            }
            self
        })
        .await
        .map_err(|e| Error::io("joining a hashing job", std::io::Error::other(e)))
    }

    fn finish(self) -> Digest {
        match self {
            Self::Sha256(h) => Digest::Sha256(h.finalize().into()),
            Self::Sha512(h) => Digest::Sha512(h.finalize().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(e_tag: &str) -> ObjectMeta {
        ObjectMeta {
            location: object_store::path::Path::from("blobs/x"),
            last_modified: chrono::DateTime::UNIX_EPOCH,
            size: 3,
            e_tag: Some(e_tag.to_owned()),
            version: None,
        }
    }

    #[test]
    fn an_etag_listed_bare_and_headed_quoted_is_the_same_object() {
        assert!(same_object(&meta("\"0x1C9\""), &meta("0x1C9")));
        assert!(!same_object(&meta("\"0x1C9\""), &meta("0x1CA")));
    }
}
