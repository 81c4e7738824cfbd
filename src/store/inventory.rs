//! Listings of everything the store holds, for whole-store maintenance (garbage collection,
//! scrub): every blob object, and per repository its blob links, revisions, tags and
//! referrer links. Listings stream or stay per repository, so memory does not grow with
//! the size of the store.

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;

use super::{ManifestInfo, Repository, Store};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::BlobKey;
use crate::name::Tag;

/// One object under `blobs/` that is a blob's data or segment index.
#[derive(Debug, Clone)]
pub(crate) struct BlobObject {
    pub key: BlobKey,
    pub meta: ObjectMeta,
}

impl BlobObject {
    pub fn digest(&self) -> Digest {
        match self.key {
            BlobKey::Data(d) | BlobKey::Segments(d) => d,
        }
    }
}

impl Store {
    /// Every blob data object and segment index, in no particular order, as a stream; other
    /// objects under `blobs/` are skipped.
    pub(crate) fn blob_objects(&self) -> BoxStream<'_, Result<BlobObject>> {
        let keys = self.keys();
        self.objects()
            .list(Some(&keys.blobs_prefix()))
            .map_err(Error::from)
            .try_filter_map(move |meta| async move {
                Ok(keys
                    .blob_from_key(&meta.location)
                    .map(|key| BlobObject { key, meta }))
            })
            .boxed()
    }
}

impl Repository {
    /// The digests of every blob linked into this repository.
    pub(crate) async fn layer_links(&self) -> Result<Vec<Digest>> {
        let keys = self.store.keys();
        let prefix = keys.layers_prefix(&self.name);
        let listed = self.store.list_keys(&prefix).await?;
        Ok(listed
            .iter()
            .filter_map(|key| keys.linked_digest(&prefix, key))
            .collect())
    }

    /// The digests of every manifest revision of this repository.
    pub(crate) async fn revisions(&self) -> Result<Vec<Digest>> {
        let keys = self.store.keys();
        let prefix = keys.revisions_prefix(&self.name);
        let listed = self.store.list_keys(&prefix).await?;
        Ok(listed
            .iter()
            .filter_map(|key| keys.linked_digest(&prefix, key))
            .collect())
    }

    /// Every tag with what its link says it points at (`None`: the link vanished after the
    /// listing).
    pub(crate) async fn tag_targets(&self) -> Result<Vec<(Tag, Option<ManifestInfo>)>> {
        let keys = self.store.keys();
        let tags = self.all_tags().await?;
        futures::stream::iter(tags)
            .map(|tag| async move {
                let info = self
                    .store
                    .read_link::<ManifestInfo>(&keys.tag_link(&self.name, &tag))
                    .await?;
                Ok::<_, Error>((tag, info))
            })
            .buffered(16)
            .try_collect()
            .await
    }

    /// Every referrer link of this repository, as `(subject, referrer)`.
    pub(crate) async fn referrer_links(&self) -> Result<Vec<(Digest, Digest)>> {
        let keys = self.store.keys();
        let listed = self
            .store
            .list_keys(&keys.all_referrers_prefix(&self.name))
            .await?;
        Ok(listed
            .iter()
            .filter_map(|key| keys.referrer_from_key(&self.name, key))
            .collect())
    }
}
