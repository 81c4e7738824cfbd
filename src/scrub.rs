//! Scrub: reads back everything the store holds and checks it against what it claims to be.
//!
//! The invariant scrub defends is invariant 8 of the design, seen from the other side: what a
//! client was told is stored must still be there, whole, under its digest. Nothing in the store
//! re-reads bytes once they are published, so a disk that rots, a hand edit, a bug or a crash in
//! an older version could break that silently; [`Store::scrub`] finds it and says what it found.
//!
//! It runs online, beside pushes and pulls, in two passes:
//!
//! 1. **Blobs.** Every blob object under `blobs/` (a `data` object, or a `segments` index and the
//!    pieces it lists) is read back and hashed with its own algorithm (SHA-256 or SHA-512),
//!    [`ScrubOptions::parallelism`] blobs at a time, at most [`ScrubOptions::rate`] bytes per
//!    second, in memory that does not grow with a blob's size (hashing runs in batches on the
//!    blocking pool, never on the async threads).
//! 2. **Repositories.** For each repository of the catalog: each blob link has its blob; each
//!    revision link's manifest is there, has the size and media type the link records, parses,
//!    and every config and layer it references is linked in the repository with the size its
//!    descriptor says, every child manifest is a revision of the repository with that size;
//!    each tag points at a revision; each referrer link's referrer is a revision.
//!
//! Each problem is reported with a [`ProblemKind`] (a stable name, also in JSON), the key and
//! digest it concerns, and a message. A backend error is reported as a problem of its own
//! ([`ProblemKind::BlobUnreadable`], [`ProblemKind::CheckFailed`]) and the scan goes on; only a
//! failure to list the blobs or the catalog ends it.
//!
//! With [`ScrubOptions::repair`], scrub changes only what it found broken, after checking again
//! that it still is: it removes blob links, tags and referrer links that point at nothing, and
//! moves corrupt blob objects under `quarantine/` (see [`crate::layout::KeyLayout::quarantined_blob`])
//! so that their digest is absent and can be pushed again, while the bytes stay for inspection.
//! It invalidates this store's layerinfo cache for what it removes. What repair does under
//! concurrent pushes is in `docs/storage.md` ("Scrub").

mod blobs;
mod rate;
mod repositories;

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroU64;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::Result;
use crate::name::{RepositoryName, Tag};
use crate::store::Store;

use self::rate::RateLimiter;

/// What a scrub does; [`Default`] checks without repairing, unthrottled, 4 blobs at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubOptions {
    /// Repair what can be repaired (see the module docs); otherwise only report.
    pub repair: bool,
    /// At most this many bytes hashed per second, over all blobs hashed at once; `None`: as
    /// fast as the backend reads. The limiter lets at most one second's worth through at once.
    pub rate: Option<NonZeroU64>,
    /// Blobs read and hashed at once (at least 1).
    pub parallelism: usize,
    /// A referrer link younger than this whose referrer is not a revision is taken for a
    /// manifest put in progress (a put writes the referrer link before the revision link, its
    /// commit point) and left alone. Older ones are reported as dangling.
    pub referrer_grace: Duration,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        Self {
            repair: false,
            rate: None,
            parallelism: 4,
            referrer_grace: Duration::from_secs(10 * 60),
        }
    }
}

/// What is wrong. The JSON name (`blob_corrupt`, …) is stable; new kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// A blob's bytes hash to another digest than the one they are stored under.
    /// Repair: quarantine.
    BlobCorrupt,
    /// A blob made of pieces whose index records another size than its pieces add up to.
    /// Repair: quarantine.
    BlobSizeMismatch,
    /// A blob could not be read (a backend error); it may be transient. Not repaired.
    BlobUnreadable,
    /// A blob's segment index cannot be decoded. Repair: quarantine.
    SegmentIndexInvalid,
    /// A piece that a blob's segment index lists is gone. Repair: quarantine.
    SegmentMissing,
    /// A piece that a blob's segment index lists holds fewer bytes than the index records.
    /// Repair: quarantine.
    SegmentTruncated,
    /// A repository's blob link whose blob the store does not hold. Repair: the link is removed.
    LayerLinkDangling,
    /// A revision link whose manifest bytes the store does not hold. Not repaired: the
    /// manifest is lost until it is pushed again.
    RevisionDangling,
    /// A revision link that records another digest, size or media type than the manifest it
    /// names has. Not repaired.
    RevisionMismatch,
    /// A stored manifest that does not parse. Not repaired.
    ManifestInvalid,
    /// A config or layer a manifest references that the store does not hold, or a child
    /// manifest that is not a revision of the repository. Not repaired.
    ManifestReferenceMissing,
    /// A config or layer a manifest references that the store holds but the repository does
    /// not link, so a pull of the manifest cannot fetch it. Not repaired.
    ManifestReferenceUnlinked,
    /// A reference whose descriptor size differs from the size of what it names. Not repaired.
    ManifestReferenceSizeMismatch,
    /// A tag whose manifest is not a revision of the repository. Repair: the tag is removed.
    TagDangling,
    /// A referrer link (older than [`ScrubOptions::referrer_grace`]) whose referrer is not a
    /// revision of the repository. Repair: the referrer link is removed.
    ReferrerDangling,
    /// A tag, revision or referrer link that cannot be decoded, or names a digest other than
    /// its key. Not repaired.
    LinkInvalid,
    /// A backend error stopped a check, so nothing was concluded about what it concerns.
    /// Not repaired.
    CheckFailed,
}

impl ProblemKind {
    /// Every kind, in a fixed order.
    pub const ALL: [Self; 17] = [
        Self::BlobCorrupt,
        Self::BlobSizeMismatch,
        Self::BlobUnreadable,
        Self::SegmentIndexInvalid,
        Self::SegmentMissing,
        Self::SegmentTruncated,
        Self::LayerLinkDangling,
        Self::RevisionDangling,
        Self::RevisionMismatch,
        Self::ManifestInvalid,
        Self::ManifestReferenceMissing,
        Self::ManifestReferenceUnlinked,
        Self::ManifestReferenceSizeMismatch,
        Self::TagDangling,
        Self::ReferrerDangling,
        Self::LinkInvalid,
        Self::CheckFailed,
    ];

    /// The stable name, as in JSON.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BlobCorrupt => "blob_corrupt",
            Self::BlobSizeMismatch => "blob_size_mismatch",
            Self::BlobUnreadable => "blob_unreadable",
            Self::SegmentIndexInvalid => "segment_index_invalid",
            Self::SegmentMissing => "segment_missing",
            Self::SegmentTruncated => "segment_truncated",
            Self::LayerLinkDangling => "layer_link_dangling",
            Self::RevisionDangling => "revision_dangling",
            Self::RevisionMismatch => "revision_mismatch",
            Self::ManifestInvalid => "manifest_invalid",
            Self::ManifestReferenceMissing => "manifest_reference_missing",
            Self::ManifestReferenceUnlinked => "manifest_reference_unlinked",
            Self::ManifestReferenceSizeMismatch => "manifest_reference_size_mismatch",
            Self::TagDangling => "tag_dangling",
            Self::ReferrerDangling => "referrer_dangling",
            Self::LinkInvalid => "link_invalid",
            Self::CheckFailed => "check_failed",
        }
    }

    /// Whether [`ScrubOptions::repair`] acts on this kind.
    #[must_use]
    pub const fn repairable(self) -> bool {
        self.quarantines() || self.removes_link()
    }

    /// Blob problems whose repair is moving the blob object under `quarantine/`.
    const fn quarantines(self) -> bool {
        matches!(
            self,
            Self::BlobCorrupt
                | Self::BlobSizeMismatch
                | Self::SegmentIndexInvalid
                | Self::SegmentMissing
                | Self::SegmentTruncated
        )
    }

    /// Link problems whose repair is removing the link.
    const fn removes_link(self) -> bool {
        matches!(
            self,
            Self::LayerLinkDangling | Self::TagDangling | Self::ReferrerDangling
        )
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem scrub found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The backend key of the object the problem is in (a blob object or a link).
    pub key: String,
    /// The repository, for problems found in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepositoryName>,
    /// The blob or manifest the key stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// For `manifest_reference_*`: the referenced digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Digest>,
    /// For tag problems: the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Tag>,
    /// What is wrong, for a person.
    pub message: String,
    /// Whether repair fixed it.
    pub repaired: bool,
    /// What repair did (`moved to quarantine/…`, `removed`), or why it did not act.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<String>,
}

impl Problem {
    fn new(kind: ProblemKind, key: impl fmt::Display, message: impl Into<String>) -> Self {
        Self {
            kind,
            key: key.to_string(),
            repository: None,
            digest: None,
            reference: None,
            tag: None,
            message: message.into(),
            repaired: false,
            repair: None,
        }
    }

    fn in_repository(mut self, name: &RepositoryName) -> Self {
        self.repository = Some(name.clone());
        self
    }

    fn about(mut self, digest: Digest) -> Self {
        self.digest = Some(digest);
        self
    }

    fn referencing(mut self, digest: Digest) -> Self {
        self.reference = Some(digest);
        self
    }

    fn of_tag(mut self, tag: &Tag) -> Self {
        self.tag = Some(tag.clone());
        self
    }

    fn repaired(&mut self, what: impl Into<String>) {
        self.repaired = true;
        self.repair = Some(what.into());
    }

    fn not_repaired(&mut self, why: impl Into<String>) {
        self.repaired = false;
        self.repair = Some(why.into());
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.kind, self.key, self.message)?;
        match (&self.repair, self.repaired) {
            (Some(what), true) => write!(f, " (repaired: {what})"),
            (Some(why), false) => write!(f, " (not repaired: {why})"),
            (None, _) => Ok(()),
        }
    }
}

/// What a scrub looked at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubCounts {
    /// Repositories of the catalog checked.
    pub repositories: u64,
    /// Blob objects (`data` objects and segment indexes) read back and hashed.
    pub blobs: u64,
    /// Bytes hashed.
    pub bytes_hashed: u64,
    /// Blob links checked.
    pub layer_links: u64,
    /// Manifest revisions checked.
    pub manifests: u64,
    /// Tags checked.
    pub tags: u64,
    /// Referrer links checked.
    pub referrers: u64,
    /// Problems found.
    pub problems: u64,
    /// Problems repaired.
    pub repaired: u64,
}

/// Which pass a scrub is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrubPhase {
    /// Listing the blobs, to know how many there are.
    #[default]
    Counting,
    /// Reading back and hashing every blob.
    Blobs,
    /// Checking every repository's links, manifests, tags and referrers.
    Repositories,
    /// Finished.
    Done,
}

/// Where a running scrub stands; handed to the progress hook of [`Store::scrub`] after each
/// step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubProgress {
    pub phase: ScrubPhase,
    pub counts: ScrubCounts,
    /// Blob objects to hash, once counted.
    pub blobs_total: Option<u64>,
    /// Bytes to hash, once counted; `None` when the store holds blobs made of pieces, whose
    /// sizes are only known as each index is read.
    pub bytes_total: Option<u64>,
    /// Repositories to check, once the catalog is listed.
    pub repositories_total: Option<u64>,
}

/// What a scrub found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    pub counts: ScrubCounts,
    /// Every problem found, blobs first, then repository by repository.
    pub problems: Vec<Problem>,
    /// Catalog entries with no link, revision, tag or referrer: not a problem (a repository
    /// whose content was all deleted stays listed), for information.
    pub empty_repositories: Vec<RepositoryName>,
}

impl ScrubReport {
    /// The problems repair did not fix (all of them without repair).
    pub fn remaining(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| !p.repaired)
    }

    /// Whether no problem remains: none was found, or repair fixed each one.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.remaining().next().is_none()
    }
}

/// The progress hook's type: called from the scrub's task, so it should be quick.
pub type ProgressHook<'a> = &'a (dyn Fn(&ScrubProgress) + Send + Sync);

impl Store {
    /// Checks everything the store holds, and with [`ScrubOptions::repair`] repairs what it
    /// can; see the [module docs](crate::scrub). `progress` is called after each step.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layerstore::Result<()> {
    /// use layerstore::scrub::ScrubOptions;
    /// let store = layerstore::Store::new(layerstore::Backend::in_memory());
    /// let report = store.scrub(ScrubOptions::default(), &|_progress| {}).await?;
    /// assert!(report.is_clean());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// Only if the blobs or the catalog cannot be listed; every other failure is a
    /// [`Problem`] in the report.
    pub async fn scrub(
        &self,
        options: ScrubOptions,
        progress: ProgressHook<'_>,
    ) -> Result<ScrubReport> {
        let scan = Scan {
            store: self,
            options,
            limiter: options.rate.map(RateLimiter::new),
            hook: progress,
            state: Mutex::new(State::default()),
        };
        scan.blobs().await?;
        scan.repositories().await?;
        scan.advance(|p| p.phase = ScrubPhase::Done);
        let state = scan.state.into_inner().unwrap_or_else(|e| e.into_inner());
        Ok(ScrubReport {
            counts: state.progress.counts,
            problems: state.problems,
            empty_repositories: state.empty,
        })
    }
}

/// One running scrub.
struct Scan<'a> {
    store: &'a Store,
    options: ScrubOptions,
    limiter: Option<RateLimiter>,
    hook: ProgressHook<'a>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    progress: ScrubProgress,
    problems: Vec<Problem>,
    empty: Vec<RepositoryName>,
    /// Digests whose blob the blob pass found bad: the repository pass does not read meaning
    /// into their bytes (the blob's own problem stands for them).
    bad_blobs: HashSet<Digest>,
}

impl Scan<'_> {
    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic while holding the lock cannot leave counters half-updated in a way that
        // matters: keep going with what is there.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    /// Updates the progress and tells the hook (outside the lock).
    fn advance(&self, f: impl FnOnce(&mut ScrubProgress)) {
        let snapshot = self.with_state(|s| {
            f(&mut s.progress);
            s.progress
        });
        (self.hook)(&snapshot);
    }

    fn report(&self, problem: Problem) {
        let repaired = problem.repaired;
        self.with_state(|s| s.problems.push(problem));
        self.advance(|p| {
            p.counts.problems += 1;
            p.counts.repaired += u64::from(repaired);
        });
    }

    fn mark_bad(&self, digest: Digest) {
        self.with_state(|s| s.bad_blobs.insert(digest));
    }

    fn is_bad(&self, digest: &Digest) -> bool {
        self.with_state(|s| s.bad_blobs.contains(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_the_json_names_and_all_distinct() {
        let mut seen = HashSet::new();
        for kind in ProblemKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<ProblemKind>(&json).unwrap(), kind);
            assert!(seen.insert(kind.as_str()), "{kind} twice");
        }
    }

    #[test]
    fn only_blob_and_dangling_link_problems_are_repairable() {
        let repairable: Vec<_> = ProblemKind::ALL
            .into_iter()
            .filter(|k| k.repairable())
            .map(ProblemKind::as_str)
            .collect();
        assert_eq!(
            repairable,
            [
                "blob_corrupt",
                "blob_size_mismatch",
                "segment_index_invalid",
                "segment_missing",
                "segment_truncated",
                "layer_link_dangling",
                "tag_dangling",
                "referrer_dangling",
            ]
        );
    }

    #[test]
    fn a_report_is_clean_when_every_problem_was_repaired() {
        let mut report = ScrubReport::default();
        assert!(report.is_clean());
        let mut fixed = Problem::new(ProblemKind::TagDangling, "k", "m");
        fixed.repaired("removed");
        report.problems.push(fixed);
        assert!(report.is_clean());
        report
            .problems
            .push(Problem::new(ProblemKind::RevisionDangling, "k2", "m"));
        assert!(!report.is_clean());
        assert_eq!(report.remaining().count(), 1);
    }
}
