//! Blobs: stored once per store under their digest, visible in a repository through a link.

use std::ops::Range;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange};

use super::SegmentIndex;
use super::{Repository, Store};
use crate::cache::{BlobDescriptorCache, BlobPlacement, CachedBlob};
use crate::digest::Digest;
use crate::error::{Error, RangeError, Result};
use crate::events::{Action, Event};
use crate::gc::protocol::{Seen, Target, Verdict};
use crate::name::RepositoryName;

/// The media type of a blob as the store sees it: opaque bytes.
pub const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

/// What the store knows about a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub media_type: &'static str,
}

/// A byte range of a blob to read, in the forms an HTTP `Range` header can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// From `start` to the end.
    From(u64),
    /// From `start` to `end_inclusive`; an end past the blob is cut to the blob.
    Bounded { start: u64, end_inclusive: u64 },
    /// The last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The half-open range this selects in a blob of `size` bytes.
    ///
    /// # Errors
    /// [`RangeError::Malformed`] if the end precedes the start, [`RangeError::Unsatisfiable`]
    /// if the range selects no byte of the blob.
    pub fn resolve(self, size: u64) -> Result<Range<u64>, RangeError> {
        let unsatisfiable = |start, end_inclusive| RangeError::Unsatisfiable {
            start,
            end_inclusive,
            size,
        };
        match self {
            Self::From(start) if start < size => Ok(start..size),
            Self::From(start) => Err(unsatisfiable(start, size.saturating_sub(1))),
            Self::Bounded {
                start,
                end_inclusive,
            } if end_inclusive < start => Err(RangeError::Malformed {
                reason: format!("end {end_inclusive} precedes start {start}"),
            }),
            Self::Bounded {
                start,
                end_inclusive,
            } if start < size => Ok(start..end_inclusive.min(size - 1) + 1),
            Self::Bounded {
                start,
                end_inclusive,
            } => Err(unsatisfiable(start, end_inclusive)),
            Self::Suffix(n) if n > 0 && size > 0 => Ok(size.saturating_sub(n)..size),
            Self::Suffix(n) => Err(unsatisfiable(
                size.saturating_sub(n),
                size.saturating_sub(1),
            )),
        }
    }
}

/// A blob being read: its description, the byte range served, and the bytes as a stream.
pub struct BlobRead {
    pub info: BlobInfo,
    /// The half-open range of the blob that `stream` yields.
    pub range: Range<u64>,
    /// The bytes, in order. Memory use does not grow with the blob's size.
    pub stream: BoxStream<'static, Result<Bytes>>,
}

impl std::fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRead")
            .field("info", &self.info)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// Where a blob's bytes are.
#[derive(Debug)]
pub(crate) enum BlobLocation {
    /// One object, `blobs/…/data`.
    Data { size: u64 },
    /// Segment objects of an upload, listed by `blobs/…/segments`.
    Segments(SegmentIndex),
}

impl BlobLocation {
    fn size(&self) -> u64 {
        match self {
            Self::Data { size } => *size,
            Self::Segments(index) => index.size,
        }
    }

    pub(crate) fn cached(&self) -> CachedBlob {
        let placement = match self {
            Self::Data { .. } => BlobPlacement::Object,
            Self::Segments(_) => BlobPlacement::Segments,
        };
        CachedBlob {
            size: self.size(),
            placement,
        }
    }
}

/// The error of a write whose result a GC run that started while it was in flight deleted:
/// not acknowledged, so the client sends it again (and the store takes it anew).
pub(crate) fn collected_in_flight(what: &str) -> Error {
    Error::Backend {
        source: object_store::Error::Generic {
            store: "layerstore gc",
            source: format!(
                "garbage collection is deleting or deleted {what}, which this request wrote \
                 while the run started; send it again"
            )
            .into(),
        },
    }
}

fn info_of(digest: &Digest, size: u64) -> BlobInfo {
    BlobInfo {
        digest: *digest,
        size,
        media_type: BLOB_MEDIA_TYPE,
    }
}

impl Store {
    /// Where the store holds a blob's bytes, `None` if it does not.
    pub(crate) async fn locate_blob(&self, digest: &Digest) -> Result<Option<BlobLocation>> {
        if let Some(meta) = self.head(&self.keys().blob_data(digest)).await? {
            return Ok(Some(BlobLocation::Data { size: meta.size }));
        }
        let index = self.read_segment_index(digest).await?;
        Ok(index.map(BlobLocation::Segments))
    }

    /// The size of a blob the store holds, `None` if it does not.
    pub(crate) async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.locate_blob(digest).await?.map(|l| l.size()))
    }

    /// Streams one object of the object store, or a range of it.
    pub(crate) async fn get_object(
        &self,
        key: &object_store::path::Path,
        range: Option<Range<u64>>,
        digest: &Digest,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        match self.objects().get_opts(key, options).await {
            Ok(got) => Ok(got.into_stream().map_err(Error::from).boxed()),
            Err(object_store::Error::NotFound { .. }) => {
                Err(Error::BlobUnknown { digest: *digest })
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Repository {
    /// Describes a blob linked into this repository: a client's `HEAD`, which emits a
    /// [`Action::Pull`] event as Distribution's does ([`Self::blob_exists`] emits none).
    ///
    /// # Errors
    /// [`Error::BlobUnknown`] if the blob is not linked here (or its bytes are gone).
    pub async fn stat_blob(&self, digest: &Digest) -> Result<BlobInfo> {
        let info = self.describe_blob(digest).await?;
        self.store
            .emit(|| Event::blob(Action::Pull, &self.name, digest, info.size));
        Ok(info)
    }

    /// [`Self::stat_blob`] without its event.
    async fn describe_blob(&self, digest: &Digest) -> Result<BlobInfo> {
        let cache = self.store.cache();
        // First: a new GC generation clears the cache.
        let gc = self.store.gc_seen().await?;
        let target = Target::Blob(*digest);
        if let Some(cache) = cache
            && let Some(blob) = cache.linked_blob(&self.name, digest).await
            && (!gc.active || self.store.gc_watch().is_pinned(gc.generation, &target))
        {
            return Ok(info_of(digest, blob.size));
        }
        let guard = match cache {
            Some(cache) => Some(cache.fill_guard(&self.name, digest).await),
            None => None,
        };
        let mut located = self.locate_linked(digest).await?;
        // While a GC runs, what a stat acknowledges is pinned, then checked again (only what
        // exists is pinned: a client cannot make the store write pins for made-up digests).
        if gc.active {
            if self.store.pin(target).await? == Verdict::Delete {
                if let Some(cache) = cache {
                    self.forget_cached(cache, digest).await;
                }
                return Err(Error::BlobUnknown { digest: *digest });
            }
            located = self.locate_linked(digest).await?;
        }
        let (info, location) = located;
        if let (Some(cache), Some(guard)) = (cache, guard) {
            // Something removed while the backend was read may have been this blob, after
            // the read saw it: then the fill is dropped.
            cache
                .fill(&self.name, digest, location.cached(), guard)
                .await;
        }
        Ok(info)
    }

    /// The blob's info and where its bytes are, if it is linked here.
    async fn locate_linked(&self, digest: &Digest) -> Result<(BlobInfo, BlobLocation)> {
        let link = self.store.keys().layer_link(&self.name, digest);
        let (linked, location) =
            futures::try_join!(self.store.exists(&link), self.store.locate_blob(digest))?;
        match (linked, location) {
            (true, Some(location)) => Ok((info_of(digest, location.size()), location)),
            _ => Err(Error::BlobUnknown { digest: *digest }),
        }
    }

    /// Whether a blob is linked into this repository.
    ///
    /// # Errors
    /// Backend failures only.
    pub async fn blob_exists(&self, digest: &Digest) -> Result<bool> {
        match self.describe_blob(digest).await {
            Ok(_) => Ok(true),
            Err(Error::BlobUnknown { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads a blob, whole or a range of it, as a stream.
    ///
    /// # Errors
    /// [`Error::BlobUnknown`] if it is not linked here; [`Error::RangeInvalid`] if the range
    /// cannot be satisfied.
    pub async fn read_blob(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead> {
        // Always the backend, never the cache: a read must not serve what is gone.
        let located = self.locate_linked(digest).await;
        if let (Err(Error::BlobUnknown { .. }), Some(cache)) = (&located, self.store.cache()) {
            self.forget_cached(cache, digest).await;
        }
        let (info, location) = located?;
        let range = match range {
            None => 0..info.size,
            Some(r) => r.resolve(info.size).map_err(Error::RangeInvalid)?,
        };
        let stream = match location {
            BlobLocation::Data { .. } => {
                let key = self.store.keys().blob_data(digest);
                let whole = range == (0..info.size);
                self.store
                    .backend()
                    .engine()
                    .read_object(&self.store, &key, (!whole).then(|| range.clone()), digest)
                    .await?
            }
            BlobLocation::Segments(index) => {
                self.store.read_segments(index, range.clone(), *digest)
            }
        };
        // Once the read is under way: a range refused or a read that failed to open is no pull.
        self.store
            .emit(|| Event::blob(Action::Pull, &self.name, digest, info.size));
        Ok(BlobRead {
            info,
            range,
            stream,
        })
    }

    /// Stores `data` as the blob `expected` and links it into this repository.
    ///
    /// The digest is verified before anything is written. The bytes are written only if the
    /// store does not have them yet (one copy per store); the link is the commit point.
    ///
    /// # Errors
    /// [`Error::DigestInvalid`] if `data` does not hash to `expected`; nothing is written.
    pub async fn put_blob(&self, expected: &Digest, data: Bytes) -> Result<BlobInfo> {
        let write = self
            .store
            .backend()
            .engine()
            .put_bytes(self, expected, data);
        crate::metrics::monolithic_started();
        let info = self.publishing(expected, write).await?;
        crate::metrics::monolithic_committed();
        self.pushed(&info);
        Ok(info)
    }

    /// Emits the push event of a blob just published here.
    pub(crate) fn pushed(&self, info: &BlobInfo) {
        self.store
            .emit(|| Event::blob(Action::Push, &self.name, &info.digest, info.size));
    }

    /// Runs `write`, which publishes the blob `expected` and links it here, between the pins
    /// before ([`Self::pinned_for_publish`]) and the check after ([`Self::published_blob`]).
    /// `write` does nothing until awaited, so it runs after the pins.
    pub(crate) async fn publishing(
        &self,
        expected: &Digest,
        write: impl Future<Output = Result<BlobInfo>>,
    ) -> Result<BlobInfo> {
        let before = self.pinned_for_publish(expected).await?;
        let info = write.await?;
        self.published_blob(expected, before).await?;
        Ok(info)
    }

    /// Before a blob is published (and possibly deduplicated against stored bytes): pins it
    /// and this repository, waiting while a GC run is deleting either. Returns the GC state
    /// seen before the pins, for [`Self::published_blob`].
    pub(crate) async fn pinned_for_publish(&self, digest: &Digest) -> Result<Seen> {
        let before = self.store.gc_seen().await?;
        self.store
            .pin_all_to_write([Target::Blob(*digest), Target::Repository(self.name.clone())])
            .await?;
        Ok(before)
    }

    /// After a blob was published and linked here: pins it again (see
    /// [`Self::pinned_after_publish`]), and if a GC run started since `before`, checks that
    /// the link and the bytes are still there. A write that took longer than the grace
    /// period can span a whole run that did not know of it, and whose verdicts are lifted by
    /// now; then only the backend can tell whether the run removed what was written.
    pub(crate) async fn published_blob(&self, digest: &Digest, before: Seen) -> Result<()> {
        if !self
            .pinned_after_publish(&[Target::Blob(*digest)], before)
            .await?
        {
            return Ok(());
        }
        // The repository's catalog entry may have gone with the run too; putting it back
        // is safe now that the repository is pinned.
        self.forget_registered();
        self.register().await?;
        match self.locate_linked(digest).await {
            Ok(_) => Ok(()),
            Err(Error::BlobUnknown { .. }) => {
                if let Some(cache) = self.store.cache() {
                    self.forget_cached(cache, digest).await;
                }
                Err(collected_in_flight(&format!("blob {digest}")))
            }
            Err(e) => Err(e),
        }
    }

    /// Links a blob that the store already holds into this repository from `from`.
    /// Returns whether it mounted: `false` (and nothing written) if `from` does not have it.
    ///
    /// # Errors
    /// Backend failures only.
    pub async fn mount_blob(&self, from: &RepositoryName, digest: &Digest) -> Result<bool> {
        // The backend decides, never the cache: a mount must not link bytes that are gone.
        let source = self.store.repository(from.clone());
        let found = |located: Result<(BlobInfo, BlobLocation)>| match located {
            Ok((_, location)) => Ok(Some(location)),
            Err(Error::BlobUnknown { .. }) => Ok(None),
            Err(e) => Err(e),
        };
        let Some(mut location) = found(source.locate_linked(digest).await)? else {
            return Ok(false);
        };
        // While a GC runs: pinned, then checked again; a blob the run is deleting is not
        // mounted (the client uploads it).
        let target = Target::Blob(*digest);
        let before = self.store.gc_seen().await?;
        if before.active {
            if self.store.pin(target.clone()).await? == Verdict::Delete {
                return Ok(false);
            }
            match found(source.locate_linked(digest).await)? {
                Some(again) => location = again,
                None => return Ok(false),
            }
            self.store
                .pin_to_write(Target::Repository(self.name.clone()))
                .await?;
        }
        let size = location.size();
        self.link_blob(digest, location.cached()).await?;
        self.published_blob(digest, before).await?;
        self.store
            .emit(|| Event::blob(Action::Mount, &self.name, digest, size).from(from));
        Ok(true)
    }

    /// After a write is published, pins what it acknowledges again: a GC run that started
    /// while the write was in flight and already decided to delete it makes the write fail
    /// rather than be acknowledged (see `docs/storage.md`, "Garbage collection").
    ///
    /// Returns whether a run started since `before` (the state seen before the write's first
    /// pins): then the run may have removed what the write published before its pins could
    /// stop it, and the caller checks the backend. Once pinned, nothing it checks can go.
    pub(crate) async fn pinned_after_publish(
        &self,
        targets: &[Target],
        before: Seen,
    ) -> Result<bool> {
        for target in targets
            .iter()
            .chain([&Target::Repository(self.name.clone())])
        {
            if self.store.pin(target.clone()).await? == Verdict::Delete {
                if let (Target::Blob(digest), Some(cache)) = (target, self.store.cache()) {
                    self.forget_cached(cache, digest).await;
                }
                return Err(collected_in_flight(&format!("{target:?}")));
            }
        }
        let now = self.store.gc_seen().await?;
        Ok(now.generation != before.generation || (now.active && !before.active))
    }

    /// Removes a blob from this repository. Its bytes stay in the store while other
    /// repositories (or manifests) may use them.
    ///
    /// # Errors
    /// [`Error::BlobUnknown`] if it is not linked here. [`Error::Cache`] if the cache could
    /// not be told: before the link is deleted, nothing changed; after it (the link is gone,
    /// a racing fill may have left an entry), a retry removes the entry and answers
    /// [`Error::BlobUnknown`].
    pub async fn unlink_blob(&self, digest: &Digest) -> Result<()> {
        let link = self.store.keys().layer_link(&self.name, digest);
        let cache = self.store.cache();
        if let Some(cache) = cache {
            cache.remove_link(&self.name, digest).await?;
        }
        if !self.store.exists(&link).await? {
            return Err(Error::BlobUnknown { digest: *digest });
        }
        self.store.remove(&link).await?;
        // Again after the delete: a stat that read the link before it went and fills the
        // cache after this removal is dropped (see `stat_blob`); one that filled it before
        // is undone.
        if let Some(cache) = cache {
            cache.remove_link(&self.name, digest).await?;
        }
        self.store.emit(|| Event::blob_deleted(&self.name, digest));
        Ok(())
    }

    /// Makes a blob the store holds visible in this repository, and tells the cache, so the
    /// first stat after a push or mount asks the backend nothing.
    ///
    /// The cache is filled only if nothing was removed from it while the link was written (an
    /// unlink or a new GC generation racing this write could otherwise be undone by it), the
    /// same rule a stat follows; a write that a GC run turns down afterwards drops the entry
    /// again ([`Self::pinned_after_publish`]).
    pub(crate) async fn link_blob(&self, digest: &Digest, blob: CachedBlob) -> Result<()> {
        let guard = match self.store.cache() {
            Some(cache) => Some(cache.fill_guard(&self.name, digest).await),
            None => None,
        };
        self.register().await?;
        let link = self.store.keys().layer_link(&self.name, digest);
        self.store
            .write(&link, Bytes::from(digest.to_string()))
            .await?;
        if let (Some(cache), Some(guard)) = (self.store.cache(), guard) {
            cache.fill(&self.name, digest, blob, guard).await;
        }
        Ok(())
    }

    /// Drops what the cache says about a blob found missing. Best effort: a shared cache
    /// that cannot be told clears itself once it can (see [`crate::cache`]).
    async fn forget_cached(&self, cache: &dyn BlobDescriptorCache, digest: &Digest) {
        let _ = cache.remove_link(&self.name, digest).await;
        cache.remove_blob(digest).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_http_byte_ranges() {
        assert_eq!(ByteRange::From(3).resolve(10), Ok(3..10));
        assert_eq!(
            ByteRange::Bounded {
                start: 2,
                end_inclusive: 4
            }
            .resolve(10),
            Ok(2..5)
        );
        assert_eq!(
            ByteRange::Bounded {
                start: 2,
                end_inclusive: 400
            }
            .resolve(10),
            Ok(2..10)
        );
        assert_eq!(ByteRange::Suffix(4).resolve(10), Ok(6..10));
        assert_eq!(ByteRange::Suffix(40).resolve(10), Ok(0..10));
    }

    #[test]
    fn ranges_outside_the_blob_are_unsatisfiable() {
        for r in [
            ByteRange::From(10),
            ByteRange::Bounded {
                start: 10,
                end_inclusive: 12,
            },
            ByteRange::Suffix(0),
        ] {
            assert!(
                matches!(r.resolve(10), Err(RangeError::Unsatisfiable { .. })),
                "{r:?}"
            );
        }
        assert!(matches!(
            ByteRange::From(0).resolve(0),
            Err(RangeError::Unsatisfiable { .. })
        ));
    }

    #[test]
    fn end_before_start_is_malformed() {
        assert!(matches!(
            ByteRange::Bounded {
                start: 5,
                end_inclusive: 4
            }
            .resolve(10),
            Err(RangeError::Malformed { .. })
        ));
    }
}
