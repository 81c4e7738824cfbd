//! The key layout: the one place that maps logical things to backend keys.
//!
//! No other module builds a key. Every input that reaches this module is already a validated
//! [`Digest`], [`RepositoryName`] or [`Tag`], so no key can leave its place: a name component
//! never is empty, `.`, `..` or `_`-prefixed, and a tag never holds `/` or starts with `.`.
//! The reserved `_`-prefixed components below therefore can never collide with a repository.
//!

#![doc = include_str!("../docs/key-layout.md")]

use object_store::path::{Path, PathPart};

use crate::digest::Digest;
use crate::name::{RepositoryName, Tag};

const BLOBS: &str = "blobs";
const REPOSITORIES: &str = "repositories";
const CATALOG: &str = "catalog";
const UPLOADS: &str = "uploads";
const SEGMENTS: &str = "segments";
const LINK: &str = "link";
const CATALOG_MARKER: &str = "_repository";
const TRASH: &str = "trash";
const GC: &str = "gc";
const VERDICTS: &str = "verdicts";
const QUARANTINE: &str = "quarantine";

/// Builds every backend key. Cheap to copy; holds no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyLayout;

fn path<'a>(parts: impl IntoIterator<Item = &'a str>) -> Path {
    // Each part is a validated name, tag, hex string or constant; PathPart would
    // percent-encode anything unexpected rather than let it split the key.
    Path::from_iter(parts.into_iter().map(PathPart::from))
}

fn repo_parts<'a>(name: &'a RepositoryName, rest: &[&'a str]) -> Vec<&'a str> {
    let mut parts = Vec::with_capacity(8 + rest.len());
    parts.push(REPOSITORIES);
    parts.extend(name.components());
    parts.extend_from_slice(rest);
    parts
}

impl KeyLayout {
    /// Where a blob's bytes live.
    #[must_use]
    pub fn blob_data(self, digest: &Digest) -> Path {
        let hex = digest.hex();
        path([BLOBS, digest.algorithm().as_str(), &hex[..2], &hex, "data"])
    }

    /// The link that makes a blob visible in a repository.
    #[must_use]
    pub fn layer_link(self, repo: &RepositoryName, digest: &Digest) -> Path {
        let hex = digest.hex();
        path(repo_parts(
            repo,
            &["_layers", digest.algorithm().as_str(), &hex, LINK],
        ))
    }

    /// The link that makes a manifest a revision of a repository.
    #[must_use]
    pub fn manifest_revision(self, repo: &RepositoryName, digest: &Digest) -> Path {
        let hex = digest.hex();
        path(repo_parts(
            repo,
            &[
                "_manifests",
                "revisions",
                digest.algorithm().as_str(),
                &hex,
                LINK,
            ],
        ))
    }

    /// The link of a tag.
    #[must_use]
    pub fn tag_link(self, repo: &RepositoryName, tag: &Tag) -> Path {
        path(repo_parts(
            repo,
            &["_manifests", "tags", tag.as_str(), LINK],
        ))
    }

    /// The prefix under which all tag links of a repository live.
    #[must_use]
    pub fn tags_prefix(self, repo: &RepositoryName) -> Path {
        path(repo_parts(repo, &["_manifests", "tags"]))
    }

    /// Reads the tag back from a key under [`Self::tags_prefix`]; `None` for any other key.
    #[must_use]
    pub fn tag_from_key(self, repo: &RepositoryName, key: &Path) -> Option<Tag> {
        let prefix = self.tags_prefix(repo);
        let mut rest = key.prefix_match(&prefix)?;
        let tag = rest.next()?;
        let link = rest.next()?;
        if link.as_ref() != LINK || rest.next().is_some() {
            return None;
        }
        Tag::parse(tag.as_ref()).ok()
    }

    /// The link recording that `referrer` has `subject` as its subject.
    #[must_use]
    pub fn referrer_link(self, repo: &RepositoryName, subject: &Digest, referrer: &Digest) -> Path {
        let (shex, rhex) = (subject.hex(), referrer.hex());
        path(repo_parts(
            repo,
            &[
                "_referrers",
                subject.algorithm().as_str(),
                &shex,
                referrer.algorithm().as_str(),
                &rhex,
                LINK,
            ],
        ))
    }

    /// The prefix under which all referrers of `subject` live.
    #[must_use]
    pub fn referrers_prefix(self, repo: &RepositoryName, subject: &Digest) -> Path {
        let shex = subject.hex();
        path(repo_parts(
            repo,
            &["_referrers", subject.algorithm().as_str(), &shex],
        ))
    }

    /// The marker that lists a repository in the catalog.
    #[must_use]
    pub fn catalog_marker(self, repo: &RepositoryName) -> Path {
        let mut parts = vec![CATALOG];
        parts.extend(repo.components());
        parts.push(CATALOG_MARKER);
        path(parts)
    }

    /// The prefix of all catalog markers.
    #[must_use]
    pub fn catalog_prefix(self) -> Path {
        path([CATALOG])
    }

    /// Reads the repository name back from a catalog marker key.
    #[must_use]
    pub fn repository_from_catalog_key(self, key: &Path) -> Option<RepositoryName> {
        let parts: Vec<_> = key.prefix_match(&self.catalog_prefix())?.collect();
        let (last, components) = parts.split_last()?;
        if last.as_ref() != CATALOG_MARKER || components.is_empty() {
            return None;
        }
        let name = components
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<&str>>()
            .join("/");
        RepositoryName::parse(&name).ok()
    }

    /// The prefix of all upload sessions.
    #[must_use]
    pub fn uploads_prefix(self) -> Path {
        path([UPLOADS])
    }

    /// The state object of an upload session. `id` must come from the upload module's id
    /// generator (validated there).
    #[must_use]
    pub fn upload_state(self, id: &str) -> Path {
        path([UPLOADS, id, "state"])
    }

    /// The staged bytes of an upload session (filesystem backend).
    #[must_use]
    pub fn upload_data(self, id: &str) -> Path {
        path([UPLOADS, id, "data"])
    }

    /// The lock file that serializes appends to a session (filesystem backend).
    #[must_use]
    pub fn upload_lock(self, id: &str) -> Path {
        path([UPLOADS, id, "lock"])
    }

    /// The prefix of one upload session's objects.
    #[must_use]
    pub fn upload_prefix(self, id: &str) -> Path {
        path([UPLOADS, id])
    }

    /// Reads the session id back from a key under [`Self::uploads_prefix`].
    #[must_use]
    pub fn upload_id_from_key(self, key: &Path) -> Option<String> {
        let mut rest = key.prefix_match(&self.uploads_prefix())?;
        Some(rest.next()?.as_ref().to_owned())
    }

    /// One piece of an upload's bytes (object-store backends): staged bytes, or the object a
    /// multipart upload completes to; `seq` orders nothing (the state and the index list the
    /// pieces in order), and a random `nonce` keeps racing appends from writing one key.
    #[must_use]
    pub fn segment(self, id: &str, seq: u64, nonce: &str) -> Path {
        let name = format!("{seq:010}-{nonce}");
        path([SEGMENTS, id, &name])
    }

    /// Where an ended filesystem session is moved before it is deleted, so that its path is
    /// gone at once, whatever holds its files open (`nonce` keeps moves apart).
    #[must_use]
    pub fn upload_trash(self, id: &str, nonce: &str) -> Path {
        let name = format!("{id}-{nonce}");
        path([TRASH, UPLOADS, &name])
    }

    /// The prefix of all ended filesystem sessions not yet deleted.
    #[must_use]
    pub fn upload_trash_prefix(self) -> Path {
        path([TRASH, UPLOADS])
    }

    /// The prefix of all segments of one upload session.
    #[must_use]
    pub fn segments_prefix(self, id: &str) -> Path {
        path([SEGMENTS, id])
    }

    /// Where a blob that was uploaded in segments records them, in place of `data`.
    #[must_use]
    pub fn blob_segments(self, digest: &Digest) -> Path {
        let hex = digest.hex();
        path([
            BLOBS,
            digest.algorithm().as_str(),
            &hex[..2],
            &hex,
            "segments",
        ])
    }
}

impl KeyLayout {
    /// Garbage collection's lock: created (create-only) by the one run in progress.
    #[must_use]
    pub fn gc_lock(self) -> Path {
        path([GC, "lock"])
    }

    /// Garbage collection's state: its generation and whether a run is in progress; every
    /// store reads it to know whether to pin what it acknowledges.
    #[must_use]
    pub fn gc_state(self) -> Path {
        path([GC, "state"])
    }

    /// The prefix of every verdict of one GC generation.
    #[must_use]
    pub fn gc_verdicts_prefix(self, generation: u64) -> Path {
        let generation = generation.to_string();
        path([GC, VERDICTS, &generation])
    }

    /// The prefix of the verdicts of every generation.
    #[must_use]
    pub fn gc_all_verdicts_prefix(self) -> Path {
        path([GC, VERDICTS])
    }

    /// Reads the generation back from a key under [`Self::gc_all_verdicts_prefix`].
    #[must_use]
    pub fn gc_generation_from_key(self, key: &Path) -> Option<u64> {
        key.prefix_match(&self.gc_all_verdicts_prefix())?
            .next()?
            .as_ref()
            .parse()
            .ok()
    }

    /// The verdict on a blob in one GC generation: `keep` (a pin) or `delete`, create-only.
    #[must_use]
    pub fn gc_blob_verdict(self, generation: u64, digest: &Digest) -> Path {
        let (generation, hex) = (generation.to_string(), digest.hex());
        path([
            GC,
            VERDICTS,
            &generation,
            BLOBS,
            digest.algorithm().as_str(),
            &hex,
        ])
    }

    /// The verdict on one manifest revision of a repository in one GC generation.
    #[must_use]
    pub fn gc_revision_verdict(
        self,
        generation: u64,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Path {
        let (generation, hex) = (generation.to_string(), digest.hex());
        let mut parts = vec![GC, VERDICTS, &generation, REPOSITORIES];
        parts.extend(repo.components());
        parts.extend(["_revisions", digest.algorithm().as_str(), &hex]);
        path(parts)
    }

    /// The verdict on the pieces of one upload session in one GC generation.
    #[must_use]
    pub fn gc_upload_verdict(self, generation: u64, id: &str) -> Path {
        let generation = generation.to_string();
        path([GC, VERDICTS, &generation, UPLOADS, id])
    }

    /// The prefix of every upload's pieces (object stores).
    #[must_use]
    pub fn segments_root(self) -> Path {
        path([SEGMENTS])
    }

    /// Reads the upload id back from a key under [`Self::segments_root`].
    #[must_use]
    pub fn upload_id_from_segment_key(self, key: &Path) -> Option<String> {
        let mut rest = key.prefix_match(&self.segments_root())?;
        Some(rest.next()?.as_ref().to_owned())
    }

    /// The verdict on a repository's catalog entry in one GC generation.
    #[must_use]
    pub fn gc_repository_verdict(self, generation: u64, repo: &RepositoryName) -> Path {
        let generation = generation.to_string();
        let mut parts = vec![GC, VERDICTS, &generation, REPOSITORIES];
        parts.extend(repo.components());
        parts.push(CATALOG_MARKER);
        path(parts)
    }
}

/// What a key under [`KeyLayout::blobs_prefix`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKey {
    /// `blobs/…/data`: the blob's bytes in one object.
    Data(Digest),
    /// `blobs/…/segments`: the index of a blob kept as upload pieces.
    Segments(Digest),
}

impl KeyLayout {
    /// The prefix of every blob's objects.
    #[must_use]
    pub fn blobs_prefix(self) -> Path {
        path([BLOBS])
    }

    /// Reads a blob key back; `None` for anything that is not a blob's data or index (or is
    /// filed under the wrong shard).
    #[must_use]
    pub fn blob_from_key(self, key: &Path) -> Option<BlobKey> {
        let parts: Vec<_> = key.prefix_match(&self.blobs_prefix())?.collect();
        let [alg, shard, hex, leaf] = parts.as_slice() else {
            return None;
        };
        let digest = Digest::parse(&format!("{}:{}", alg.as_ref(), hex.as_ref())).ok()?;
        if digest.hex().get(..2) != Some(shard.as_ref()) {
            return None;
        }
        match leaf.as_ref() {
            "data" => Some(BlobKey::Data(digest)),
            "segments" => Some(BlobKey::Segments(digest)),
            _ => None,
        }
    }

    /// The prefix under which a repository's blob links live.
    #[must_use]
    pub fn layers_prefix(self, repo: &RepositoryName) -> Path {
        path(repo_parts(repo, &["_layers"]))
    }

    /// The prefix under which a repository's manifest revision links live.
    #[must_use]
    pub fn revisions_prefix(self, repo: &RepositoryName) -> Path {
        path(repo_parts(repo, &["_manifests", "revisions"]))
    }

    /// The prefix under which all referrer links of a repository live.
    #[must_use]
    pub fn all_referrers_prefix(self, repo: &RepositoryName) -> Path {
        path(repo_parts(repo, &["_referrers"]))
    }

    /// The prefix of every quarantined blob object.
    #[must_use]
    pub fn quarantine_prefix(self) -> Path {
        path([QUARANTINE])
    }

    /// Where scrub moves a blob object it found corrupt: outside `blobs/`, so the digest is
    /// absent and can be pushed again, and under the time it was moved (UTC, to the second)
    /// and a random `nonce`, so that the same digest quarantined twice keeps both copies.
    #[must_use]
    pub fn quarantined_blob(
        self,
        blob: BlobKey,
        at: chrono::DateTime<chrono::Utc>,
        nonce: u64,
    ) -> Path {
        let (digest, leaf) = match blob {
            BlobKey::Data(d) => (d, "data"),
            BlobKey::Segments(d) => (d, "segments"),
        };
        let hex = digest.hex();
        let entry = format!("{}-{nonce:016x}", at.format("%Y%m%dT%H%M%SZ"));
        path([QUARANTINE, digest.algorithm().as_str(), &hex, &entry, leaf])
    }

    /// Reads the digest back from a blob link or revision link key (`{prefix}/{alg}/{hex}/link`).
    #[must_use]
    pub fn linked_digest(self, prefix: &Path, key: &Path) -> Option<Digest> {
        let parts: Vec<_> = key.prefix_match(prefix)?.collect();
        let [alg, hex, link] = parts.as_slice() else {
            return None;
        };
        if link.as_ref() != LINK {
            return None;
        }
        Digest::parse(&format!("{}:{}", alg.as_ref(), hex.as_ref())).ok()
    }

    /// Reads `(subject, referrer)` back from a referrer link key.
    #[must_use]
    pub fn referrer_from_key(self, repo: &RepositoryName, key: &Path) -> Option<(Digest, Digest)> {
        let parts: Vec<_> = key
            .prefix_match(&self.all_referrers_prefix(repo))?
            .collect();
        let [salg, shex, ralg, rhex, link] = parts.as_slice() else {
            return None;
        };
        if link.as_ref() != LINK {
            return None;
        }
        let subject = Digest::parse(&format!("{}:{}", salg.as_ref(), shex.as_ref())).ok()?;
        let referrer = Digest::parse(&format!("{}:{}", ralg.as_ref(), rhex.as_ref())).ok()?;
        Some((subject, referrer))
    }
}

/// Where `key` lives under the filesystem backend's root directory: one directory level per
/// key part. The one mapping from keys to local paths in the crate; it agrees with
/// `object_store`'s `LocalFileSystem`, which stores the same keys under the same root, because
/// no part of a key this module builds needs percent-encoding.
#[must_use]
pub fn local_path(root: &std::path::Path, key: &Path) -> std::path::PathBuf {
    let mut local = root.to_path_buf();
    local.extend(key.parts().map(|part| part.as_ref().to_owned()));
    local
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    #[test]
    fn local_paths_put_each_key_part_in_a_directory_level() {
        let d = Digest::sha256(b"");
        let local = local_path(std::path::Path::new("/srv/r"), &KeyLayout.blob_data(&d));
        assert_eq!(
            local,
            std::path::PathBuf::from(format!("/srv/r/blobs/sha256/e3/{}/data", d.hex()))
        );
    }

    #[test]
    fn blob_keys_are_sharded_by_the_first_two_hex_characters() {
        let d = Digest::sha256(b"");
        assert_eq!(
            KeyLayout.blob_data(&d).as_ref(),
            format!("blobs/sha256/e3/{}/data", d.hex())
        );
    }

    #[test]
    fn nested_repository_names_become_nested_keys() {
        let d = Digest::sha256(b"x");
        assert_eq!(
            KeyLayout.layer_link(&repo("a/b"), &d).as_ref(),
            format!("repositories/a/b/_layers/sha256/{}/link", d.hex())
        );
    }

    #[test]
    fn a_repository_cannot_see_the_keys_of_a_nested_one() {
        // "a" and "a/b" share a prefix, but a's reserved components cannot be a name component.
        let d = Digest::sha256(b"x");
        let outer = KeyLayout.tags_prefix(&repo("a"));
        let inner_tag = KeyLayout.tag_link(&repo("a/b"), &Tag::parse("t").unwrap());
        assert!(inner_tag.prefix_match(&outer).is_none());
        let inner_layer = KeyLayout.layer_link(&repo("a/b"), &d);
        assert!(
            inner_layer
                .prefix_match(&KeyLayout.layer_link(&repo("a"), &d))
                .is_none()
        );
    }

    #[test]
    fn blob_link_revision_and_referrer_keys_round_trip() {
        let keys = KeyLayout;
        let d = Digest::sha256(b"x");
        let s = Digest::sha256(b"subject");
        let r = repo("library/alpine");
        assert_eq!(
            keys.blob_from_key(&keys.blob_data(&d)),
            Some(BlobKey::Data(d))
        );
        assert_eq!(
            keys.blob_from_key(&keys.blob_segments(&d)),
            Some(BlobKey::Segments(d))
        );
        let layers = keys.layers_prefix(&r);
        assert_eq!(
            keys.linked_digest(&layers, &keys.layer_link(&r, &d)),
            Some(d)
        );
        let revisions = keys.revisions_prefix(&r);
        assert_eq!(
            keys.linked_digest(&revisions, &keys.manifest_revision(&r, &d)),
            Some(d)
        );
        assert_eq!(
            keys.referrer_from_key(&r, &keys.referrer_link(&r, &s, &d)),
            Some((s, d))
        );
    }

    #[test]
    fn foreign_keys_are_not_read_as_blobs_or_links() {
        let keys = KeyLayout;
        let d = Digest::sha256(b"x");
        let hex = d.hex();
        let wrong_shard = Path::from(format!("blobs/sha256/zz/{hex}/data"));
        assert_eq!(keys.blob_from_key(&wrong_shard), None);
        let other_leaf = Path::from(format!("blobs/sha256/{}/{hex}/condemned", &hex[..2]));
        assert_eq!(keys.blob_from_key(&other_leaf), None);
        assert_eq!(
            keys.blob_from_key(&Path::from("blobs/sha256/ab/nothex/data")),
            None
        );
        let r = repo("a");
        let nested = repo("a/b");
        // A nested repository's link is not under the outer one's prefix.
        assert_eq!(
            keys.linked_digest(&keys.layers_prefix(&r), &keys.layer_link(&nested, &d)),
            None
        );
    }

    #[test]
    fn quarantined_blobs_are_outside_blobs_under_their_digest_and_time() {
        let d = Digest::sha256(b"x");
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-31T23:59:58Z")
            .unwrap()
            .to_utc();
        let key = KeyLayout.quarantined_blob(BlobKey::Segments(d), at, 0xab);
        assert_eq!(
            key.as_ref(),
            format!(
                "quarantine/sha256/{}/20261231T235958Z-00000000000000ab/segments",
                d.hex()
            )
        );
        assert!(key.prefix_match(&KeyLayout.quarantine_prefix()).is_some());
        assert_eq!(KeyLayout.blob_from_key(&key), None);
    }

    #[test]
    fn tag_keys_round_trip() {
        let r = repo("library/alpine");
        let t = Tag::parse("v1.2_3-rc").unwrap();
        let key = KeyLayout.tag_link(&r, &t);
        assert_eq!(KeyLayout.tag_from_key(&r, &key), Some(t));
        assert_eq!(KeyLayout.tag_from_key(&repo("library"), &key), None);
    }

    #[test]
    fn catalog_keys_round_trip_including_names_that_end_in_a_marker_like_word() {
        for name in ["a", "a/b/c", "a/repository", "x/link"] {
            let r = repo(name);
            let key = KeyLayout.catalog_marker(&r);
            assert_eq!(KeyLayout.repository_from_catalog_key(&key), Some(r));
        }
    }
}
