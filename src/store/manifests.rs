//! Manifests, tags and referrers of a repository.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};

use super::blobs::collected_in_flight;
use super::{Paginated, Repository, encode_link};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::{Action, Event};
use crate::gc::protocol::{Target, Verdict};
use crate::manifest::{Descriptor, MAX_MANIFEST_SIZE, Manifest, Role, media_type};
use crate::name::{Reference, Tag};

/// How many backend requests a manifest operation keeps in flight at once.
const CONCURRENCY: usize = 16;

/// What the store knows about a manifest without reading its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestInfo {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// A manifest as stored: the exact bytes received and their description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub info: ManifestInfo,
    pub bytes: Bytes,
}

/// The outcome of a manifest put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestPut {
    /// The digest the manifest is stored under.
    pub digest: Digest,
    /// The manifest's subject, if it has one (a frontend sends it back as `OCI-Subject`).
    pub subject: Option<Digest>,
}

/// The referrers of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrers {
    /// One descriptor per referring manifest, ordered by digest.
    pub manifests: Vec<Descriptor>,
    /// Whether an `artifactType` filter was applied.
    pub filtered: bool,
}

impl Referrers {
    /// The referrers as an OCI image index, as the referrers API returns them.
    #[must_use]
    pub fn to_index_json(&self) -> Bytes {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Index<'a> {
            schema_version: u32,
            media_type: &'static str,
            manifests: &'a [Descriptor],
        }
        let index = Index {
            schema_version: 2,
            media_type: media_type::OCI_INDEX,
            manifests: &self.manifests,
        };
        // Serializing plain strings, numbers and maps cannot fail.
        Bytes::from(serde_json::to_vec(&index).unwrap_or_default())
    }
}

/// The revision link: enough to stat a manifest, and to undo its referrer entry on delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RevisionLink {
    #[serde(flatten)]
    pub(crate) info: ManifestInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) subject: Option<Digest>,
}

impl Repository {
    /// Stores a manifest under its digest and, for a tag reference, points the tag at it.
    ///
    /// `bytes` are kept exactly as received. Every config and layer must be linked in this
    /// repository and every index child must be a manifest of it; otherwise
    /// [`Error::ManifestBlobUnknown`] names each one missing and nothing is written.
    ///
    /// Writes, in order: the bytes (once per store), the catalog entry, the referrer entry,
    /// the revision link (the commit point: the manifest becomes visible), the tag.
    ///
    /// # Errors
    /// [`Error::ManifestInvalid`] for a body the parser refuses, [`Error::DigestInvalid`] if a
    /// digest reference does not match the bytes, [`Error::ManifestBlobUnknown`].
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> Result<ManifestPut> {
        let manifest = Manifest::parse(bytes, content_type)?;
        let digest = match reference {
            Reference::Digest(d) => {
                d.verify(&manifest.bytes)?;
                *d
            }
            Reference::Tag(_) => manifest.digest,
        };
        // While a GC runs: the manifest's own bytes, revision and repository are pinned
        // (waiting while the run deletes them), and what it references (refused if the run
        // is deleting it), so the run cannot delete what this put relies on.
        let before = self.store.gc_seen().await?;
        self.store
            .pin_all_to_write([
                Target::Blob(digest),
                Target::Revision(self.name.clone(), digest),
                Target::Repository(self.name.clone()),
            ])
            .await?;
        // Checked, pinned, checked again: only what exists is pinned, and what was checked
        // after the pin cannot be deleted by a run in progress.
        let active = self.store.gc_seen().await?.active;
        // Without a run, what this store's cache says is linked here counts (see
        // `check_references`); during one, only the backend, after the pins.
        self.check_references(&manifest, !active).await?;
        let references = self.reference_targets(&manifest);
        if active {
            self.refuse_collected(&references).await?;
            self.check_references(&manifest, false).await?;
        }

        let keys = self.store.keys();
        let data = keys.blob_data(&digest);
        let info = ManifestInfo {
            media_type: manifest.media_type.clone(),
            digest,
            size: manifest.bytes.len() as u64,
        };
        let subject = manifest.subject.as_ref().map(|s| s.digest);
        // In order, each durable before the next is published (see `Store::write_in_order`):
        // the bytes (written whether or not they are there: the same bytes, the digest was
        // verified, one atomic write and one request, as a check would cost), the catalog
        // marker, the referrer entry, the revision link (the commit point), the tag (one
        // atomic write: readers see the old target or the new one).
        let mut writes = vec![(data.clone(), manifest.bytes.clone())];
        let registration = self.unregistered().await?;
        if let Some(pending) = &registration {
            writes.push((pending.marker.clone(), Bytes::new()));
        }
        if let Some(subject) = &subject {
            let key = keys.referrer_link(&self.name, subject, &digest);
            let descriptor = encode_link(&key, &referrer_descriptor(&manifest, &info))?;
            writes.push((key, descriptor));
        }
        let revision = RevisionLink {
            info: info.clone(),
            subject,
        };
        let key = keys.manifest_revision(&self.name, &digest);
        let json = encode_link(&key, &revision)?;
        writes.push((key, json));
        if let Reference::Tag(tag) = reference {
            let key = keys.tag_link(&self.name, tag);
            let json = encode_link(&key, &info)?;
            writes.push((key, json));
        }
        self.store.write_in_order(writes).await?;
        if let Some(pending) = &registration {
            self.remember_registered(pending);
        }
        let mut published = references;
        published.extend([
            Target::Blob(digest),
            Target::Revision(self.name.clone(), digest),
        ]);
        if self.pinned_after_publish(&published, before).await? {
            // A run started while this put was in flight (see `published_blob`): what it
            // wrote and what it references must still be there, now that all is pinned.
            self.forget_registered();
            self.register().await?;
            self.check_references(&manifest, false).await?;
            let revision = keys.manifest_revision(&self.name, &digest);
            for key in [&data, &revision] {
                if !self.store.exists(key).await? {
                    return Err(collected_in_flight(&format!("manifest {digest}")));
                }
            }
        }
        self.store.emit(|| {
            Event::manifest(
                Action::Push,
                &self.name,
                &info,
                reference.tag(),
                Some(manifest.bytes.clone()),
            )
        });
        Ok(ManifestPut { digest, subject })
    }

    /// The pins a manifest's references need: configs and layers as blobs, index children as
    /// revisions of this repository (and blobs).
    fn reference_targets(&self, manifest: &Manifest) -> Vec<Target> {
        let mut targets = Vec::new();
        for (role, d) in manifest.references() {
            match role {
                Role::Config | Role::Layer => targets.push(Target::Blob(d.digest)),
                Role::Manifest => {
                    targets.push(Target::Blob(d.digest));
                    targets.push(Target::Revision(self.name.clone(), d.digest));
                }
                Role::Subject => {}
            }
        }
        targets.dedup();
        targets
    }

    /// Pins every reference; refuses the put, naming them, if a GC run is deleting any.
    async fn refuse_collected(&self, targets: &[Target]) -> Result<()> {
        let verdicts: Vec<(Target, Verdict)> = stream::iter(targets.iter().cloned())
            .map(|target| async move {
                let verdict = self.store.pin(target.clone()).await?;
                Ok::<_, Error>((target, verdict))
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut doomed: Vec<Digest> = verdicts
            .into_iter()
            .filter(|(_, v)| *v == Verdict::Delete)
            .filter_map(|(target, _)| match target {
                Target::Blob(d) | Target::Revision(_, d) => Some(d),
                Target::Repository(_) | Target::Upload(_) => None,
            })
            .collect();
        dedup_keep_order(&mut doomed);
        if doomed.is_empty() {
            Ok(())
        } else {
            Err(Error::ManifestBlobUnknown { digests: doomed })
        }
    }

    /// Checks that everything `manifest` references is in this repository.
    ///
    /// With `trust_cache`, a config or layer that the layerinfo cache knows is linked here
    /// is not asked of the backend: the cache a `HEAD` answers from, and the one the client
    /// relied on when it skipped pushing that blob. Within a store an unlink evicts at once;
    /// a blob unlinked through another replica can still be named for up to the cache's
    /// time to live (as in Distribution, whose manifest check uses its cache too).
    async fn check_references(&self, manifest: &Manifest, trust_cache: bool) -> Result<()> {
        let keys = self.store.keys();
        let cache = self.store.cache().filter(|_| trust_cache);
        let mut wanted = Vec::new();
        for (role, d) in manifest.references() {
            if let (Some(cache), Role::Config | Role::Layer) = (cache, role)
                && cache.linked_blob(&self.name, &d.digest).await.is_some()
            {
                continue;
            }
            wanted.extend(match role {
                Role::Config | Role::Layer => {
                    Some((keys.layer_link(&self.name, &d.digest), d.digest))
                }
                Role::Manifest => Some((keys.manifest_revision(&self.name, &d.digest), d.digest)),
                // A referrer may be pushed before its subject.
                Role::Subject => None,
            });
        }
        // Owned keys: a future borrowing from the iterator would not be `Send` for all
        // lifetimes, and frontends need `Send` futures.
        let found: Vec<(Digest, bool)> = stream::iter(wanted)
            .map(|(key, digest)| {
                let store = self.store.clone();
                async move { Ok::<_, Error>((digest, store.exists(&key).await?)) }
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut missing: Vec<Digest> = found
            .into_iter()
            .filter(|(_, found)| !found)
            .map(|(digest, _)| digest)
            .collect();
        dedup_keep_order(&mut missing);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::ManifestBlobUnknown { digests: missing })
        }
    }

    /// Resolves a reference to the manifest it names, without reading the body: a client's
    /// `HEAD`, which emits an [`Action::Pull`] event as Distribution's does.
    ///
    /// # Errors
    /// [`Error::ManifestUnknown`] if there is no such manifest in this repository.
    pub async fn stat_manifest(&self, reference: &Reference) -> Result<ManifestInfo> {
        let info = self.resolve_manifest(reference).await?;
        self.store
            .emit(|| Event::manifest(Action::Pull, &self.name, &info, reference.tag(), None));
        Ok(info)
    }

    /// [`Self::stat_manifest`] without its event.
    async fn resolve_manifest(&self, reference: &Reference) -> Result<ManifestInfo> {
        let keys = self.store.keys();
        let digest = match reference {
            Reference::Digest(d) => *d,
            Reference::Tag(tag) => {
                let key = keys.tag_link(&self.name, tag);
                match self.store.read_link::<ManifestInfo>(&key).await? {
                    Some(info) => info.digest,
                    None => return Err(unknown(reference)),
                }
            }
        };
        // The revision link decides: a tag left pointing at a deleted manifest names nothing.
        let key = keys.manifest_revision(&self.name, &digest);
        match self.store.read_link::<RevisionLink>(&key).await? {
            Some(link) => Ok(link.info),
            None => Err(unknown(reference)),
        }
    }

    /// Reads a manifest: its exact bytes, media type and digest.
    ///
    /// # Errors
    /// [`Error::ManifestUnknown`] if there is no such manifest in this repository.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<StoredManifest> {
        let info = self.resolve_manifest(reference).await?;
        let key = self.store.keys().blob_data(&info.digest);
        match self
            .store
            .read_small(&key, MAX_MANIFEST_SIZE as u64)
            .await?
        {
            Some(bytes) => {
                self.store.emit(|| {
                    let bytes = Some(bytes.clone());
                    Event::manifest(Action::Pull, &self.name, &info, reference.tag(), bytes)
                });
                Ok(StoredManifest { info, bytes })
            }
            None => Err(unknown(reference)),
        }
    }

    /// Reads and parses a revision of this repository for whole-store maintenance: `None` if
    /// the revision link is gone; an error if its bytes are missing or do not parse (as the
    /// media type the link records), since then nobody can tell what it references.
    pub(crate) async fn load_revision(&self, digest: &Digest) -> Result<Option<Manifest>> {
        let keys = self.store.keys();
        let revision = keys.manifest_revision(&self.name, digest);
        let Some(link) = self.store.read_link::<RevisionLink>(&revision).await? else {
            return Ok(None);
        };
        let data = keys.blob_data(digest);
        let Some(bytes) = self
            .store
            .read_small(&data, MAX_MANIFEST_SIZE as u64)
            .await?
        else {
            return Err(Error::Corrupt {
                key: data.to_string(),
                reason: format!(
                    "the bytes of manifest {digest} of {} are missing",
                    self.name
                ),
            });
        };
        Manifest::parse(bytes, Some(&link.info.media_type))
            .map(Some)
            .map_err(|e| Error::Corrupt {
                key: data.to_string(),
                reason: format!("manifest {digest} of {} does not parse: {e}", self.name),
            })
    }

    /// Deletes a manifest revision, every tag pointing at it, and its referrer entry.
    ///
    /// Writes, in order: the tags are removed (the manifest stays whole and addressable by
    /// digest), then the revision link (the commit point: the manifest is gone), then the
    /// referrer entry (never listed without its revision). So no tag is ever left listed
    /// that names nothing.
    ///
    /// # Errors
    /// [`Error::ManifestUnknown`] if there is no such manifest in this repository.
    pub async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        match self.delete_revision(digest, ReferrerEntry::Last).await? {
            Some(tags) => {
                // As Distribution: the manifest's delete, then one per tag that went with it.
                self.store
                    .emit(|| Event::manifest_deleted(&self.name, digest));
                for tag in &tags {
                    self.store.emit(|| Event::tag_deleted(&self.name, tag));
                }
                Ok(())
            }
            None => Err(unknown(&Reference::Digest(*digest))),
        }
    }

    /// Deletes a revision as [`Self::delete_manifest`] does, its referrer entry after or
    /// before the revision link as `order` says; `None` if there is none, else the tags that
    /// pointed at it.
    async fn delete_revision(
        &self,
        digest: &Digest,
        order: ReferrerEntry,
    ) -> Result<Option<Vec<Tag>>> {
        let keys = self.store.keys();
        let revision_key = keys.manifest_revision(&self.name, digest);
        let Some(revision) = self.store.read_link::<RevisionLink>(&revision_key).await? else {
            return Ok(None);
        };
        let tags = self.all_tags().await?;
        let removed: Vec<Option<Tag>> = stream::iter(tags)
            .map(|tag| async move {
                let key = keys.tag_link(&self.name, &tag);
                match self.store.read_link::<ManifestInfo>(&key).await? {
                    Some(info) if info.digest == *digest => {
                        self.store.remove(&key).await.map(|()| Some(tag))
                    }
                    _ => Ok(None),
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let entry = revision
            .subject
            .map(|subject| keys.referrer_link(&self.name, &subject, digest));
        if let (Some(entry), ReferrerEntry::First) = (&entry, order) {
            self.store.remove(entry).await?;
        }
        self.store.remove(&revision_key).await?;
        if let (Some(entry), ReferrerEntry::Last) = (&entry, order) {
            self.store.remove(entry).await?;
        }
        Ok(Some(removed.into_iter().flatten().collect()))
    }

    /// Garbage collection's delete of a revision: how many tags went with it (0 if it was
    /// gone already).
    ///
    /// The referrer entry goes before the revision link, so that a run that dies between the
    /// two leaves the revision, which the next run collects again; the other way round it
    /// would leave an entry naming no revision, which no run looks for (readers skip it, and
    /// scrub reports it once it is older than its grace). Nothing a client relies on sees the
    /// difference: the manifest is collected because no tag reaches it and its subject is not
    /// kept, so only a referrers listing of that subject, between the two deletes, misses it.
    pub(crate) async fn delete_revision_for_gc(&self, digest: &Digest) -> Result<u64> {
        Ok(self
            .delete_revision(digest, ReferrerEntry::First)
            .await?
            .map_or(0, |tags| tags.len() as u64))
    }

    /// Whether the repository has no revision and no blob link left.
    pub(crate) async fn is_empty_for_gc(&self) -> Result<bool> {
        Ok(self.revisions().await?.is_empty() && self.layer_links().await?.is_empty())
    }

    /// Removes an empty repository: its tags (which can only point at nothing) and then its
    /// catalog entry.
    pub(crate) async fn forget_for_gc(&self) -> Result<()> {
        let keys = self.store.keys();
        for tag in self.all_tags().await? {
            self.store.remove(&keys.tag_link(&self.name, &tag)).await?;
        }
        self.store.remove(&keys.catalog_marker(&self.name)).await
    }

    /// Removes a tag; the manifest it pointed at stays.
    ///
    /// # Errors
    /// [`Error::ManifestUnknown`] if the tag does not exist.
    pub async fn delete_tag(&self, tag: &Tag) -> Result<()> {
        let key = self.store.keys().tag_link(&self.name, tag);
        if !self.store.exists(&key).await? {
            return Err(unknown(&Reference::Tag(tag.clone())));
        }
        self.store.remove(&key).await?;
        self.store.emit(|| Event::tag_deleted(&self.name, tag));
        Ok(())
    }

    /// Tags in lexical order, at most `n` of them, starting after `last`.
    ///
    /// # Errors
    /// [`Error::NameUnknown`] if the repository has never been written to.
    pub async fn tags(&self, n: Option<usize>, last: Option<&str>) -> Result<Paginated<Tag>> {
        let tags = self.all_tags().await?;
        if tags.is_empty() && !self.is_known().await? {
            return Err(Error::NameUnknown {
                name: self.name.to_string(),
            });
        }
        Ok(Paginated::page(tags, n, last))
    }

    pub(super) async fn all_tags(&self) -> Result<Vec<Tag>> {
        let keys = self.store.keys();
        let listed = self.store.list_keys(&keys.tags_prefix(&self.name)).await?;
        Ok(listed
            .iter()
            .filter_map(|key| keys.tag_from_key(&self.name, key))
            .collect())
    }

    /// Whether anything was ever written to this repository.
    async fn is_known(&self) -> Result<bool> {
        let key = self.store.keys().catalog_marker(&self.name);
        self.store.exists(&key).await
    }

    /// The manifests of this repository whose subject is `subject`, optionally only those of
    /// one artifact type.
    ///
    /// # Errors
    /// Backend failures only; an unknown subject has no referrers.
    pub async fn referrers(
        &self,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers> {
        let keys = self.store.keys();
        let links = self
            .store
            .list_keys(&keys.referrers_prefix(&self.name, subject))
            .await?;
        let mut manifests: Vec<Descriptor> = stream::iter(links)
            .map(|key| async move {
                let Some(descriptor) = self.store.read_link::<Descriptor>(&key).await? else {
                    return Ok::<_, Error>(None);
                };
                // Only referrers whose revision exists: the revision link is the commit point.
                let revision = keys.manifest_revision(&self.name, &descriptor.digest);
                Ok(self.store.exists(&revision).await?.then_some(descriptor))
            })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|d| async move { Ok(d) })
            .try_collect()
            .await?;
        if let Some(wanted) = artifact_type {
            manifests.retain(|d| d.artifact_type.as_deref() == Some(wanted));
        }
        manifests.sort_by_key(|d| d.digest);
        Ok(Referrers {
            manifests,
            filtered: artifact_type.is_some(),
        })
    }
}

/// When a revision's delete removes its referrer entry: after the revision link (a client's
/// delete: a manifest still visible is always listed) or before it (garbage collection's: a
/// crash between leaves the revision, which the next run finds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReferrerEntry {
    Last,
    First,
}

fn unknown(reference: &Reference) -> Error {
    Error::ManifestUnknown {
        reference: reference.to_string(),
    }
}

/// The descriptor of a referring manifest, as the referrers API lists it. Per the
/// distribution spec, a manifest without `artifactType` is listed with its config's media
/// type.
fn referrer_descriptor(manifest: &Manifest, info: &ManifestInfo) -> Descriptor {
    let artifact_type = manifest
        .artifact_type
        .clone()
        .or_else(|| manifest.config.as_ref().map(|c| c.media_type.clone()));
    Descriptor {
        media_type: info.media_type.clone(),
        digest: info.digest,
        size: info.size,
        artifact_type,
        annotations: manifest
            .annotations
            .clone()
            .filter(|a: &BTreeMap<_, _>| !a.is_empty()),
        platform: None,
    }
}

fn dedup_keep_order(digests: &mut Vec<Digest>) {
    let mut seen = std::collections::HashSet::new();
    digests.retain(|d| seen.insert(*d));
}
