//! The repository pass: links, revisions, manifests, tags and referrers of each repository;
//! dangling links, tags and referrer links removed on repair.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, stream};

use super::{Problem, ProblemKind, Scan, ScrubPhase};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, MAX_MANIFEST_SIZE, Manifest, Role};
use crate::name::{RepositoryName, Tag};
use crate::store::{ManifestInfo, Repository, RevisionLink};

/// Backend requests of one repository's checks in flight at once.
const CONCURRENCY: usize = 16;

/// What a repository's blob link was found to link.
#[derive(Debug, Clone, Copy)]
enum Linked {
    /// A blob of this size.
    Blob(u64),
    /// Nothing: the blob is not in the store.
    Dangling,
    /// Unknown: looking failed (reported).
    Unknown,
}

impl Scan<'_> {
    /// Checks every repository of the catalog, one after the other.
    pub(super) async fn repositories(&self) -> Result<()> {
        let names = self.store.catalog(None, None).await?.items;
        self.advance(|p| {
            p.phase = ScrubPhase::Repositories;
            p.repositories_total = Some(names.len() as u64);
        });
        for name in names {
            self.check_repository(self.store.repository(name)).await;
            self.advance(|p| p.counts.repositories += 1);
        }
        Ok(())
    }

    async fn check_repository(&self, repo: Repository) {
        let keys = self.store.keys();
        let name = repo.name();
        let layers = self.listed(name, keys.layers_prefix(name), repo.layer_links());
        let revisions = self.listed(name, keys.revisions_prefix(name), repo.revisions());
        let tags = self.listed(name, keys.tags_prefix(name), self.tags(&repo));
        let referrers = self.listed(name, keys.all_referrers_prefix(name), repo.referrer_links());
        let (layers, revisions, tags, referrers) =
            futures::join!(layers, revisions, tags, referrers);
        let listed = [
            layers.as_ref().map(Vec::len),
            revisions.as_ref().map(Vec::len),
            tags.as_ref().map(Vec::len),
            referrers.as_ref().map(Vec::len),
        ];
        if listed.iter().all(|n| *n == Some(0)) {
            self.with_state(|s| s.empty.push(name.clone()));
            return;
        }
        // Blob links first: what they find (and repair removes) is what manifests are checked
        // against.
        // `None`: the links could not be listed (reported), so no reference can be judged.
        let linked = match layers {
            Some(layers) => Some(self.check_layer_links(&repo, layers).await),
            None => None,
        };
        let linked = linked.as_ref();
        if let Some(revisions) = revisions {
            stream::iter(revisions)
                .for_each_concurrent(CONCURRENCY, |digest| {
                    self.check_revision(&repo, digest, linked)
                })
                .await;
        }
        if let Some(tags) = tags {
            stream::iter(tags)
                .for_each_concurrent(CONCURRENCY, |tag| self.check_tag(&repo, tag))
                .await;
        }
        if let Some(referrers) = referrers {
            stream::iter(referrers)
                .for_each_concurrent(CONCURRENCY, |(subject, referrer)| {
                    self.check_referrer(&repo, subject, referrer)
                })
                .await;
        }
    }

    /// A listing of one repository, or `None` with the failure reported.
    async fn listed<T>(
        &self,
        name: &RepositoryName,
        prefix: object_store::path::Path,
        listing: impl Future<Output = Result<Vec<T>>>,
    ) -> Option<Vec<T>> {
        match listing.await {
            Ok(items) => Some(items),
            Err(e) => {
                self.report(
                    Problem::new(
                        ProblemKind::CheckFailed,
                        prefix,
                        format!("cannot list: {e}"),
                    )
                    .in_repository(name),
                );
                None
            }
        }
    }

    async fn tags(&self, repo: &Repository) -> Result<Vec<Tag>> {
        let keys = self.store.keys();
        let listed = self.store.list_keys(&keys.tags_prefix(repo.name())).await?;
        Ok(listed
            .iter()
            .filter_map(|key| keys.tag_from_key(repo.name(), key))
            .collect())
    }

    /// Each blob link has its blob; returns what was found of each linked blob.
    async fn check_layer_links(
        &self,
        repo: &Repository,
        links: Vec<Digest>,
    ) -> HashMap<Digest, Linked> {
        stream::iter(links)
            .map(|digest| async move {
                let linked = self.check_layer_link(repo, digest).await;
                self.advance(|p| p.counts.layer_links += 1);
                (digest, linked)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }

    async fn check_layer_link(&self, repo: &Repository, digest: Digest) -> Linked {
        let key = self.store.keys().layer_link(repo.name(), &digest);
        let problem = |kind, message: String| {
            Problem::new(kind, &key, message)
                .in_repository(repo.name())
                .about(digest)
        };
        match self.store.blob_size(&digest).await {
            Ok(Some(size)) => return Linked::Blob(size),
            Ok(None) => {}
            Err(e) => {
                self.report(problem(ProblemKind::CheckFailed, e.to_string()));
                return Linked::Unknown;
            }
        }
        let mut dangling = problem(
            ProblemKind::LayerLinkDangling,
            "the blob it links is not in the store".to_owned(),
        );
        if self.options.repair {
            // Again, just before: a push may have stored the blob since.
            match self.store.blob_size(&digest).await {
                Ok(Some(size)) => {
                    dangling.not_repaired("the blob was stored again meanwhile");
                    self.report(dangling);
                    return Linked::Blob(size);
                }
                Ok(None) => match repo.unlink_blob(&digest).await {
                    Ok(()) | Err(Error::BlobUnknown { .. }) => dangling.repaired("removed"),
                    Err(e) => dangling.not_repaired(format!("removing it failed: {e}")),
                },
                Err(e) => dangling.not_repaired(format!("cannot look again: {e}")),
            }
        }
        self.report(dangling);
        Linked::Dangling
    }

    /// One revision: its link, its manifest's bytes, and everything the manifest references.
    async fn check_revision(
        &self,
        repo: &Repository,
        digest: Digest,
        linked: Option<&HashMap<Digest, Linked>>,
    ) {
        self.advance(|p| p.counts.manifests += 1);
        let keys = self.store.keys();
        let key = keys.manifest_revision(repo.name(), &digest);
        let problem = |kind, message: String| {
            Problem::new(kind, &key, message)
                .in_repository(repo.name())
                .about(digest)
        };
        let link = match self.store.read_link::<RevisionLink>(&key).await {
            Ok(Some(link)) => link.info,
            Ok(None) => return, // deleted since the listing
            Err(e @ Error::Corrupt { .. }) => {
                return self.report(problem(ProblemKind::LinkInvalid, e.to_string()));
            }
            Err(e) => return self.report(problem(ProblemKind::CheckFailed, e.to_string())),
        };
        if link.digest != digest {
            return self.report(problem(
                ProblemKind::RevisionMismatch,
                format!("the link names {}", link.digest),
            ));
        }
        let data = keys.blob_data(&digest);
        let bytes = match self.store.read_small(&data, MAX_MANIFEST_SIZE as u64).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return self.report(problem(
                    ProblemKind::RevisionDangling,
                    format!("its manifest's bytes are not in the store ({data})"),
                ));
            }
            Err(e @ Error::Corrupt { .. }) => {
                return self.report(problem(ProblemKind::ManifestInvalid, e.to_string()));
            }
            Err(e) => return self.report(problem(ProblemKind::CheckFailed, e.to_string())),
        };
        if self.is_bad(&digest) {
            // The blob pass reported what is wrong with these bytes.
            return;
        }
        if bytes.len() as u64 != link.size {
            return self.report(problem(
                ProblemKind::RevisionMismatch,
                format!(
                    "the link records {} bytes, the manifest has {}",
                    link.size,
                    bytes.len()
                ),
            ));
        }
        // Parsed without a declared type: what a put with the recorded one accepted parses to
        // that same type (or the link's media type is wrong, below).
        let manifest = match Manifest::parse(bytes, None) {
            Ok(m) => m,
            Err(e) => return self.report(problem(ProblemKind::ManifestInvalid, e.to_string())),
        };
        if manifest.media_type != link.media_type {
            return self.report(problem(
                ProblemKind::RevisionMismatch,
                format!(
                    "the link records media type {:?}, the manifest is {:?}",
                    link.media_type, manifest.media_type
                ),
            ));
        }
        let mut seen = HashSet::new();
        let references: Vec<(Role, Descriptor)> = manifest
            .references()
            .filter(|(role, d)| *role != Role::Subject && seen.insert(d.digest))
            .map(|(role, d)| (role, d.clone()))
            .collect();
        stream::iter(references)
            .for_each_concurrent(CONCURRENCY, |(role, descriptor)| {
                let problem = &problem;
                async move {
                    if let Some((kind, message)) =
                        self.check_reference(repo, role, &descriptor, linked).await
                    {
                        self.report(problem(kind, message).referencing(descriptor.digest));
                    }
                }
            })
            .await;
    }

    /// What is wrong with one reference of a manifest, if anything.
    async fn check_reference(
        &self,
        repo: &Repository,
        role: Role,
        descriptor: &Descriptor,
        linked: Option<&HashMap<Digest, Linked>>,
    ) -> Option<(ProblemKind, String)> {
        let digest = &descriptor.digest;
        let size = match role {
            Role::Manifest => {
                let key = self.store.keys().manifest_revision(repo.name(), digest);
                match self.store.read_link::<RevisionLink>(&key).await {
                    Ok(Some(child)) => child.info.size,
                    Ok(None) => {
                        return Some((
                            ProblemKind::ManifestReferenceMissing,
                            format!("child manifest {digest} is not a revision of the repository"),
                        ));
                    }
                    Err(e) => return Some((ProblemKind::CheckFailed, e.to_string())),
                }
            }
            _ => match linked?.get(digest) {
                Some(Linked::Blob(size)) => *size,
                // Its link's check failed, and said so: nothing to conclude here.
                Some(Linked::Unknown) => return None,
                Some(Linked::Dangling) | None => {
                    return Some(match self.store.blob_size(digest).await {
                        Ok(Some(_)) => (
                            ProblemKind::ManifestReferenceUnlinked,
                            format!("its {role} {digest} is not linked in the repository"),
                        ),
                        Ok(None) => (
                            ProblemKind::ManifestReferenceMissing,
                            format!("its {role} {digest} is not in the store"),
                        ),
                        Err(e) => (ProblemKind::CheckFailed, e.to_string()),
                    });
                }
            },
        };
        (size != descriptor.size).then(|| {
            (
                ProblemKind::ManifestReferenceSizeMismatch,
                format!(
                    "its {role} {digest} is {size} bytes, its descriptor says {}",
                    descriptor.size
                ),
            )
        })
    }

    /// A tag points at a revision of the repository.
    async fn check_tag(&self, repo: &Repository, tag: Tag) {
        self.advance(|p| p.counts.tags += 1);
        let keys = self.store.keys();
        let key = keys.tag_link(repo.name(), &tag);
        let problem = |kind, message: String| {
            Problem::new(kind, &key, message)
                .in_repository(repo.name())
                .of_tag(&tag)
        };
        let target = match self.tag_target(repo, &tag).await {
            Ok(Some(info)) => info.digest,
            Ok(None) => return, // deleted since the listing
            Err(e @ Error::Corrupt { .. }) => {
                return self.report(problem(ProblemKind::LinkInvalid, e.to_string()));
            }
            Err(e) => return self.report(problem(ProblemKind::CheckFailed, e.to_string())),
        };
        match self.is_revision(repo, &target).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                return self.report(problem(ProblemKind::CheckFailed, e.to_string()).about(target));
            }
        }
        let mut dangling = problem(
            ProblemKind::TagDangling,
            format!("it points at {target}, which is not a revision of the repository"),
        )
        .about(target);
        if self.options.repair {
            // Again, just before: the tag may have moved, or the manifest been pushed again.
            let still = async {
                let now = self.tag_target(repo, &tag).await?;
                Ok::<_, Error>(
                    now.is_some_and(|i| i.digest == target)
                        && !self.is_revision(repo, &target).await?,
                )
            };
            match still.await {
                Ok(true) => match repo.delete_tag(&tag).await {
                    Ok(()) => dangling.repaired("removed"),
                    Err(e) if e.kind() == crate::ErrorKind::ManifestUnknown => {
                        dangling.repaired("removed (by someone else meanwhile)");
                    }
                    Err(e) => dangling.not_repaired(format!("removing it failed: {e}")),
                },
                Ok(false) => dangling.not_repaired("it changed meanwhile"),
                Err(e) => dangling.not_repaired(format!("cannot look again: {e}")),
            }
        }
        self.report(dangling);
    }

    async fn tag_target(&self, repo: &Repository, tag: &Tag) -> Result<Option<ManifestInfo>> {
        let key = self.store.keys().tag_link(repo.name(), tag);
        self.store.read_link::<ManifestInfo>(&key).await
    }

    async fn is_revision(&self, repo: &Repository, digest: &Digest) -> Result<bool> {
        let key = self.store.keys().manifest_revision(repo.name(), digest);
        self.store.exists(&key).await
    }

    /// A referrer link names its referrer, which is a revision of the repository.
    async fn check_referrer(&self, repo: &Repository, subject: Digest, referrer: Digest) {
        self.advance(|p| p.counts.referrers += 1);
        let key = self
            .store
            .keys()
            .referrer_link(repo.name(), &subject, &referrer);
        let problem = |kind, message: String| {
            Problem::new(kind, &key, message)
                .in_repository(repo.name())
                .about(referrer)
        };
        match self.store.read_link::<Descriptor>(&key).await {
            Ok(Some(d)) if d.digest == referrer => {}
            Ok(Some(d)) => {
                return self.report(problem(
                    ProblemKind::LinkInvalid,
                    format!("the link's descriptor names {}", d.digest),
                ));
            }
            Ok(None) => return, // deleted since the listing
            Err(e @ Error::Corrupt { .. }) => {
                return self.report(problem(ProblemKind::LinkInvalid, e.to_string()));
            }
            Err(e) => return self.report(problem(ProblemKind::CheckFailed, e.to_string())),
        }
        match self.is_revision(repo, &referrer).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => return self.report(problem(ProblemKind::CheckFailed, e.to_string())),
        }
        // A put writes the referrer link before the revision: a young one may be in flight.
        let age = match self.store.head(&key).await {
            Ok(Some(meta)) => (chrono::Utc::now() - meta.last_modified)
                .to_std()
                .unwrap_or_default(),
            Ok(None) => return,
            Err(e) => return self.report(problem(ProblemKind::CheckFailed, e.to_string())),
        };
        if age < self.options.referrer_grace {
            return;
        }
        let mut dangling = problem(
            ProblemKind::ReferrerDangling,
            format!("its referrer (of subject {subject}) is not a revision of the repository"),
        );
        if self.options.repair {
            // Again, just before: the referrer may have been pushed again since.
            match self.is_revision(repo, &referrer).await {
                Ok(false) => match self.store.remove(&key).await {
                    Ok(()) => dangling.repaired("removed"),
                    Err(e) => dangling.not_repaired(format!("removing it failed: {e}")),
                },
                Ok(true) => dangling.not_repaired("the referrer was pushed again meanwhile"),
                Err(e) => dangling.not_repaired(format!("cannot look again: {e}")),
            }
        }
        self.report(dangling);
    }
}
