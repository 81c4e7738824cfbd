//! The object-store part of a session's state: its pieces (multipart uploads and staged
//! segments, in order) and where a commit or cancel of it stands.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::store::Segment;
use crate::upload::session::{Session, SessionRecord};

/// The smallest part S3 accepts but for the last; a staged piece is one smaller than this.
pub(super) const MIN_PART: u64 = 5 * 1024 * 1024;

/// The persisted state of a session on an object store, at `uploads/{id}/state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ObjectSession {
    #[serde(flatten)]
    pub(super) session: Session,
    /// The pieces appended so far, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) segments: Vec<Piece>,
    /// A cancel (or purge) has begun. The session accepts nothing more, so a cancel that
    /// fails midway never leaves a session that could commit with pieces missing; a retried
    /// cancel or the next purge finishes the deletion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) cancelled: bool,
    /// The commit marker: a commit is publishing the pieces under this digest. From then on
    /// the session takes no append (the pieces may be a blob's already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) publishing: Option<Digest>,
    /// The commit has verified `publishing` against the session's bytes: the pieces are that
    /// blob's. Nothing may delete them any more; whoever finds the session (the commit, a
    /// retried commit, a cancel, the purger) finishes publishing them instead. Written by the
    /// same conditional put as the marker when the digest is known from the hash state, by a
    /// second one after the re-hash otherwise; a purge or cancel that wrote first makes it fail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) verified: bool,
    /// An append has claimed the right to send parts to the open multipart upload (its random
    /// tag). An append that finds a claim takes over: it seals that upload and opens a new
    /// one, so a claimant that is still alive can never overwrite a part the session records;
    /// its own final state write then fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) appending: Option<String>,
}

impl SessionRecord for ObjectSession {
    fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

/// One piece of an upload's bytes: a [`Segment`] (an object of its own: a staged chunk, or a
/// completed multipart upload), or a multipart upload still open, which becomes that object
/// when the commit completes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Piece {
    #[serde(flatten)]
    pub(super) segment: Segment,
    /// Set while this piece is an open multipart upload (never in a published index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) multipart: Option<OpenMultipart>,
}

/// A multipart upload of the session, with what the backend needs to complete it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OpenMultipart {
    /// The backend's id of the upload (`MultipartId`).
    pub(super) id: String,
    /// The recorded parts, in order: each one's `PartId` content id (the ETag on S3, the
    /// block id on Azure) and size. Parts the backend holds beyond these are not the
    /// session's and are dropped by the completion.
    pub(super) parts: Vec<Part>,
    /// No more parts go to this upload (an append took over from one that may still be
    /// sending parts to it, or it reached the part limit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) sealed: bool,
}

/// One recorded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Part {
    pub(super) content_id: String,
    pub(super) size: u64,
}

impl Piece {
    pub(super) fn size(&self) -> u64 {
        self.segment.size
    }

    /// A staged piece: a plain object smaller than a part, which the next part or a merge
    /// takes in.
    fn is_staged(&self) -> bool {
        self.multipart.is_none() && self.segment.size < MIN_PART
    }
}

/// The staged pieces: the run of small plain objects at the end, which the next part takes
/// in (or the next staged piece merges with).
pub(super) fn staged_range(pieces: &[Piece]) -> Range<usize> {
    let start = pieces
        .iter()
        .rposition(|p| !p.is_staged())
        .map_or(0, |i| i + 1);
    start..pieces.len()
}

/// How many of the trailing staged pieces (their sizes, in order) a new staged piece of `new`
/// bytes takes in, so that each staged piece stays larger than all the ones after it
/// together: everything from the first piece that would no longer be. A session therefore
/// holds at most about log2(bytes staged) staged pieces (23 for 5 MiB of one-byte chunks), and
/// a piece is only re-read once as many bytes as it holds have arrived after it, so each byte
/// is re-read a logarithmic number of times while it is staged.
pub(super) fn absorbed(staged: &[u64], new: u64) -> usize {
    let mut after: u64 = staged.iter().sum();
    for (i, &size) in staged.iter().enumerate() {
        after -= size;
        if size <= after + new {
            return staged.len() - i;
        }
    }
    0
}

/// A sequence number no piece of the session has.
pub(super) fn next_seq(pieces: &[Piece]) -> u64 {
    pieces.iter().map(|p| p.segment.seq + 1).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_piece_takes_in_every_piece_it_would_not_be_smaller_than_with_what_follows() {
        assert_eq!(absorbed(&[], 10), 0);
        assert_eq!(absorbed(&[8, 4, 2], 0), 0);
        assert_eq!(absorbed(&[8, 4, 2], 1), 0);
        assert_eq!(absorbed(&[8, 4, 2], 2), 3); // 8 ≤ 4 + 2 + 2
        assert_eq!(absorbed(&[16, 4, 2], 2), 2); // 4 ≤ 2 + 2, but 16 > 8
        assert_eq!(absorbed(&[16, 4, 2], 1), 0);
        assert_eq!(absorbed(&[5, 3, 1], 1), 3); // 5 ≤ 4 + 1
        assert_eq!(absorbed(&[100, 99], 98), 2);
    }

    /// Stages chunks of the given sizes while they stay under a part; returns the staged
    /// sizes at the end, the bytes staged and the bytes re-read by merges.
    fn stage_all(chunks: impl Iterator<Item = u64>) -> (Vec<u64>, u64, u64) {
        let (mut staged, mut total, mut reread) = (Vec::<u64>::new(), 0, 0);
        for chunk in chunks {
            if total + chunk >= MIN_PART {
                break;
            }
            let k = absorbed(&staged, chunk);
            let taken: u64 = staged.drain(staged.len() - k..).sum();
            reread += taken;
            staged.push(taken + chunk);
            total += chunk;
            for i in 0..staged.len() {
                assert!(
                    staged[i] > staged[i + 1..].iter().sum::<u64>(),
                    "{staged:?}"
                );
            }
        }
        (staged, total, reread)
    }

    #[test]
    fn staged_pieces_stay_few_whatever_the_chunk_sizes() {
        let patterns: Vec<(&str, Vec<u64>)> = vec![
            ("1 byte", vec![1; 6_000_000]),
            ("3 bytes", vec![3; 2_000_000]),
            ("1 KiB", vec![1024; 6000]),
            ("64 KiB", vec![65_536; 100]),
            ("1 MiB", vec![1 << 20; 5]),
            ("shrinking", (1..=3000).rev().collect()),
            ("growing", (1..=3000).collect()),
            (
                "alternating",
                (0..20_000)
                    .map(|i| if i % 2 == 0 { 1 } else { 500 })
                    .collect(),
            ),
        ];
        for (name, chunks) in patterns {
            let (staged, total, reread) = stage_all(chunks.into_iter());
            // log2 of the bytes staged, plus one.
            let bound = 64 - total.leading_zeros() as usize + 1;
            assert!(staged.len() <= bound, "{name}: {} pieces", staged.len());
            assert!(
                reread <= 2 * total * bound as u64,
                "{name}: re-read {reread} for {total} staged"
            );
        }
    }
}
