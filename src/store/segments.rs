//! Blobs made of several objects: how a blob that an object-store upload published is found
//! and read. The store reads blobs; the upload engines only write them.
//!
//! `blobs/…/segments` (the index) lists the blob's pieces in order, each an object under
//! `segments/{upload}/{seq}-{nonce}` with its size; the blob is their concatenation. The
//! upload engine keeps the number of pieces small whatever the client's chunk pattern (every
//! piece but a few trailing ones is at least 5 MiB, see `upload::objects`), so reading a blob
//! costs about one request per piece and the index stays small.

use std::ops::Range;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::Store;
use crate::digest::Digest;
use crate::error::Result;

/// Largest index the store reads. An index entry is under 80 bytes, so this holds hundreds of
/// thousands of pieces: many TiB even at the smallest piece size; anything larger is corrupt.
pub(crate) const MAX_INDEX_SIZE: u64 = 32 * 1024 * 1024;

/// What `blobs/…/segments` holds: the blob is these objects, concatenated in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SegmentIndex {
    pub(crate) size: u64,
    /// The upload session whose pieces these are.
    pub(crate) upload: String,
    pub(crate) segments: Vec<Segment>,
}

/// One object of a blob made of several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Segment {
    pub(crate) seq: u64,
    pub(crate) nonce: String,
    /// Bytes of the object (the blob takes exactly these, whatever the object may hold).
    pub(crate) size: u64,
}

impl Store {
    /// The index of a blob stored as segments, `None` if there is none.
    pub(crate) async fn read_segment_index(&self, digest: &Digest) -> Result<Option<SegmentIndex>> {
        self.read_json(&self.keys().blob_segments(digest), MAX_INDEX_SIZE)
            .await
    }

    /// Streams `range` of a blob stored as segments, opening each segment only when the
    /// previous one is done, so memory stays bounded.
    pub(crate) fn read_segments(
        &self,
        index: SegmentIndex,
        range: Range<u64>,
        digest: Digest,
    ) -> BoxStream<'static, Result<Bytes>> {
        let keys = self.keys();
        let mut pieces = vec![];
        let mut start = 0u64;
        for segment in &index.segments {
            let end = start + segment.size;
            let (from, to) = (range.start.max(start), range.end.min(end));
            if from < to {
                let key = keys.segment(&index.upload, segment.seq, &segment.nonce);
                // Always an explicit range, even for a whole piece: the blob is the bytes the
                // index records, whatever else an object under that key may have grown to.
                pieces.push((key, (from - start)..(to - start)));
            }
            start = end;
        }
        let store = self.clone();
        futures::stream::iter(pieces)
            .then(move |(key, part)| {
                let store = store.clone();
                async move { store.get_object(&key, Some(part), &digest).await }
            })
            .try_flatten()
            .boxed()
    }
}
