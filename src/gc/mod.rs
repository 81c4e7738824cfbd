//! Garbage collection: find what no repository reaches any more, and (next) reclaim it while
//! the registry keeps serving.
//!
//! This module has the mark phase and the plan a run would carry out ([`Store::gc_plan`],
//! what `layerstore gc --dry-run` prints). The sweep lands with its online-safety protocol;
//! the design is in `docs/storage.md`, "Garbage collection".
//!
//! # What is kept
//!
//! In every repository: every manifest revision, or with `delete_untagged` only those a tag
//! names; then, from each kept manifest, its config and layers, its index children
//! (recursively, tagged or not) and every manifest whose subject it is (signatures, SBOMs,
//! recursively, also with `delete_untagged`). A blob is kept if any kept manifest of any
//! repository references it (manifests are blobs too). Everything else is garbage: blobs
//! only linked into repositories (pushed, never referenced by a manifest), blobs nothing
//! links, the untagged manifests with `delete_untagged`, and the links to all of these.
//!
//! A manifest that cannot be read or parsed stops the run with an error naming it: what it
//! references cannot be known, so nothing may be collected (`layerstore scrub` finds and
//! repairs such manifests).

mod markset;
pub(crate) mod protocol;
mod run;

pub use markset::MarkSet;
pub use protocol::{MARGIN, STATE_MAX_AGE};
pub use run::{GcLockTiming, GcRemoved, GcReport};

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::BlobKey;
use crate::manifest::Role;
use crate::name::RepositoryName;
use crate::store::{BlobObject, Repository, Store};

/// Backend requests a phase keeps in flight.
const CONCURRENCY: usize = 16;

/// What a garbage collection run collects, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Also collect manifests no tag reaches (Distribution's `--delete-untagged`): a tag
    /// keeps its manifest, that manifest's index children and referrers, recursively.
    pub delete_untagged: bool,
    /// What a client was told exists or was stored within this long before the run is
    /// never deleted (the run waits this long, plus a few seconds, before it marks).
    pub grace: Duration,
    /// Only find and count; delete nothing, take no lock, do not wait.
    pub dry_run: bool,
    /// How the run holds its lock.
    pub lock: GcLockTiming,
}

impl Default for GcOptions {
    /// Untagged manifests kept, one hour of grace, a real run.
    fn default() -> Self {
        Self {
            delete_untagged: false,
            grace: Duration::from_secs(3600),
            dry_run: false,
            lock: GcLockTiming::default(),
        }
    }
}

/// Where a run is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcPhase {
    /// Waiting, after announcing the run, until every store pins what it acknowledges.
    Wait,
    /// Walking repositories and manifests.
    Mark,
    /// Listing stored blobs against the mark set (and deleting the unmarked ones).
    Scan,
    /// Going through each repository's links (and deleting what goes).
    Links,
}

/// Counts so far, passed to the progress callback as a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GcProgress {
    pub phase: GcPhase,
    /// Repositories walked, in the current phase.
    pub repositories: u64,
    /// Total repositories (known once the catalog is read).
    pub repositories_total: u64,
    /// Manifests read.
    pub manifests: u64,
    /// Stored blobs listed.
    pub blobs: u64,
    /// Bytes of the stored blobs listed.
    pub bytes: u64,
}

/// What a run found, and what its sweep removes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcPlan {
    /// Repositories in the catalog.
    pub repositories: u64,
    /// Manifest revisions, summed over repositories.
    pub manifests: u64,
    /// Manifest revisions kept.
    pub manifests_kept: u64,
    /// Manifest revisions collected (untagged, with `delete_untagged`).
    pub manifests_collected: u64,
    /// Distinct blobs the kept manifests reference (the mark set's size).
    pub blobs_marked: u64,
    /// Blobs stored (data objects and segmented blobs).
    pub blobs: u64,
    /// Bytes of the stored blobs.
    pub bytes: u64,
    /// Stored blobs no kept manifest references.
    pub blobs_collected: u64,
    /// Bytes of those blobs.
    pub bytes_collected: u64,
    /// Blob links (and tags of collected manifests) that go with what is collected.
    pub links_collected: u64,
    /// Repositories left with no manifest and no blob link: they leave the catalog.
    pub repositories_emptied: u64,
    /// Memory the mark set took, in bytes.
    pub mark_set_bytes: u64,
}

/// What marking one repository found.
struct RepositoryMark {
    revisions: HashSet<Digest>,
    kept: HashSet<Digest>,
}

/// What the mark phase found.
pub(crate) struct Marked {
    /// The repositories of the catalog when the mark began.
    pub repositories: Vec<RepositoryName>,
    /// Every blob a kept manifest references (manifests included).
    pub marks: MarkSet,
    /// Per repository, the revisions not kept (only with `delete_untagged`).
    pub collected_revisions: HashMap<RepositoryName, Vec<Digest>>,
    /// Repositories with at least one kept revision.
    pub with_kept_revisions: HashSet<RepositoryName>,
    pub plan: GcPlan,
}

impl Store {
    /// Marks everything reachable and measures what a garbage collection with `options`
    /// would collect, changing nothing. `progress` is called as the run goes.
    ///
    /// Memory: 8 bytes per distinct referenced blob for the whole store (16 while marking),
    /// plus one repository's revisions at a time.
    ///
    /// # Errors
    /// Backend failures, and [`Error::Corrupt`] for a manifest that cannot be read or parsed.
    pub async fn gc_plan(
        &self,
        options: GcOptions,
        progress: &(dyn Fn(&GcProgress) + Send + Sync),
    ) -> Result<GcPlan> {
        let mut counts = GcProgress::new(GcPhase::Mark);
        let marked = self.mark(options, progress, &mut counts).await?;
        let mut plan = marked.plan;
        let marks = &marked.marks;

        counts.phase = GcPhase::Scan;
        let mut objects = self.blob_objects();
        while let Some(object) = objects.try_next().await? {
            let digest = object.digest();
            let Some(size) = self.blob_object_size(&object).await? else {
                continue;
            };
            plan.blobs += 1;
            plan.bytes += size;
            counts.blobs += 1;
            counts.bytes += size;
            if !marks.contains(&digest) {
                plan.blobs_collected += 1;
                plan.bytes_collected += size;
            }
            if counts.blobs.is_multiple_of(1024) {
                progress(&counts);
            }
        }
        progress(&counts);

        counts.phase = GcPhase::Links;
        counts.repositories = 0;
        for name in &marked.repositories {
            let repository = self.repository(name.clone());
            let links = repository.layer_links().await?;
            let surviving = links.iter().filter(|d| marks.contains(d)).count();
            plan.links_collected += (links.len() - surviving) as u64;
            if surviving == 0 && !marked.with_kept_revisions.contains(name) {
                plan.repositories_emptied += 1;
            }
            counts.repositories += 1;
            progress(&counts);
        }
        Ok(plan)
    }

    /// The size of the blob a listed object holds: the object's for data, the index's
    /// recorded size for a segmented blob (`None` if the index went since the listing).
    pub(crate) async fn blob_object_size(&self, object: &BlobObject) -> Result<Option<u64>> {
        Ok(match object.key {
            BlobKey::Data(_) => Some(object.meta.size),
            BlobKey::Segments(d) => self.read_segment_index(&d).await?.map(|i| i.size),
        })
    }

    /// The mark phase: every repository of the catalog, its roots, children and referrers.
    pub(crate) async fn mark(
        &self,
        options: GcOptions,
        progress: &(dyn Fn(&GcProgress) + Send + Sync),
        counts: &mut GcProgress,
    ) -> Result<Marked> {
        let repositories = self.catalog(None, None).await?.items;
        counts.phase = GcPhase::Mark;
        counts.repositories = 0;
        counts.repositories_total = repositories.len() as u64;
        progress(counts);
        let mut plan = GcPlan {
            repositories: repositories.len() as u64,
            ..GcPlan::default()
        };
        let mut marks = MarkSet::new();
        let mut collected_revisions = HashMap::new();
        let mut with_kept_revisions = HashSet::new();
        for name in &repositories {
            let repository = self.repository(name.clone());
            let found = mark_repository(&repository, options, &mut marks).await?;
            plan.manifests += found.revisions.len() as u64;
            plan.manifests_kept += found.kept.len() as u64;
            counts.repositories += 1;
            counts.manifests += found.kept.len() as u64;
            progress(counts);
            if !found.kept.is_empty() {
                with_kept_revisions.insert(name.clone());
            }
            let collected: Vec<Digest> = found
                .revisions
                .iter()
                .filter(|d| !found.kept.contains(d))
                .copied()
                .collect();
            if !collected.is_empty() {
                collected_revisions.insert(name.clone(), collected);
            }
        }
        marks.seal();
        plan.manifests_collected = plan.manifests - plan.manifests_kept;
        plan.blobs_marked = marks.len() as u64;
        plan.mark_set_bytes = marks.memory_bytes() as u64;
        Ok(Marked {
            repositories,
            marks,
            collected_revisions,
            with_kept_revisions,
            plan,
        })
    }
}

impl GcProgress {
    fn new(phase: GcPhase) -> Self {
        Self {
            phase,
            repositories: 0,
            repositories_total: 0,
            manifests: 0,
            blobs: 0,
            bytes: 0,
        }
    }
}

/// Marks what one repository keeps: its roots, their children and referrers, recursively;
/// adds every blob they reference to `marks`.
async fn mark_repository(
    repository: &Repository,
    options: GcOptions,
    marks: &mut MarkSet,
) -> Result<RepositoryMark> {
    let revisions: HashSet<Digest> = repository.revisions().await?.into_iter().collect();
    let mut referrers: HashMap<Digest, Vec<Digest>> = HashMap::new();
    for (subject, referrer) in repository.referrer_links().await? {
        referrers.entry(subject).or_default().push(referrer);
    }
    let mut pending: Vec<Digest> = if options.delete_untagged {
        repository
            .tag_targets()
            .await?
            .into_iter()
            .filter_map(|(_, info)| info.map(|i| i.digest))
            .filter(|d| revisions.contains(d))
            .collect()
    } else {
        revisions.iter().copied().collect()
    };
    let mut kept = HashSet::new();
    while !pending.is_empty() {
        let batch: Vec<Digest> = pending
            .drain(..)
            .filter(|d| kept.insert(*d))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let loaded: Vec<_> = stream::iter(batch)
            .map(|digest| async move {
                Ok::<_, Error>((digest, repository.load_revision(&digest).await?))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        for (digest, manifest) in loaded {
            // A revision deleted since the listing keeps nothing.
            let Some(manifest) = manifest else {
                kept.remove(&digest);
                continue;
            };
            marks.insert(&digest);
            for (role, descriptor) in manifest.references() {
                match role {
                    Role::Config | Role::Layer => marks.insert(&descriptor.digest),
                    Role::Manifest => pending.push(descriptor.digest),
                    // The subject keeps its referrers, not the other way round.
                    Role::Subject => {}
                }
            }
            if let Some(found) = referrers.get(&digest) {
                pending.extend(found.iter().copied());
            }
        }
    }
    Ok(RepositoryMark { revisions, kept })
}
