//! Events: what the store did, for a frontend to pass on (webhooks, audit logs, queues).
//!
//! A frontend installs an [`EventSink`] with [`crate::Store::with_events`]; the store then
//! calls [`EventSink::send`] once per operation that succeeded, in the task that ran it, after
//! its commit point (a push is announced once it is visible, never for a push that failed).
//! Without a sink nothing is built and the cost is one atomic load.
//!
//! # What emits
//!
//! As CNCF Distribution 2.8's notification listener does (its `notifications/listener.go`):
//!
//! | operation | action | kind | fields |
//! | --- | --- | --- | --- |
//! | [`Repository::put_blob`], [`Repository::put_blob_stream`], [`Repository::commit_upload`], [`Repository::finish_upload`] | `Push` | `Blob` | digest, size, media type |
//! | [`Repository::mount_blob`] that mounted | `Mount` | `Blob` | digest, size, media type, `from_repository` |
//! | [`Repository::read_blob`] (a `GET`, each range request too) | `Pull` | `Blob` | digest, size, media type |
//! | [`Repository::stat_blob`] (a `HEAD`) | `Pull` | `Blob` | digest, size, media type |
//! | [`Repository::unlink_blob`] | `Delete` | `Blob` | digest |
//! | [`Repository::put_manifest`] | `Push` | `Manifest` | digest, size, media type, tag if the reference was one, the bytes |
//! | [`Repository::get_manifest`] | `Pull` | `Manifest` | digest, size, media type, tag if named, the bytes |
//! | [`Repository::stat_manifest`] (a `HEAD`) | `Pull` | `Manifest` | digest, size, media type, tag if named |
//! | [`Repository::delete_manifest`] | `Delete` | `Manifest` | digest; then one `Delete` of kind `Tag` per tag that pointed at it |
//! | [`Repository::delete_tag`] | `Delete` | `Tag` | tag |
//!
//! Distribution 2.8 serves `HEAD` with the handler of `GET`, so its `HEAD` of a blob or a
//! manifest sends a `pull` too; the stats above do the same, and [`Repository::blob_exists`]
//! (a question the frontend asks itself) emits nothing. Upload sessions that are started,
//! appended to or cancelled emit nothing, nor do garbage collection and upload purging (as in
//! Distribution); a scrub that repairs a link or a tag goes through the calls above.
//!
//! A blob's media type is [`crate::store::BLOB_MEDIA_TYPE`], as in Distribution's events.
//!
//! [`Repository::put_blob`]: crate::Repository::put_blob
//! [`Repository::put_blob_stream`]: crate::Repository::put_blob_stream
//! [`Repository::commit_upload`]: crate::Repository::commit_upload
//! [`Repository::finish_upload`]: crate::Repository::finish_upload
//! [`Repository::mount_blob`]: crate::Repository::mount_blob
//! [`Repository::read_blob`]: crate::Repository::read_blob
//! [`Repository::stat_blob`]: crate::Repository::stat_blob
//! [`Repository::blob_exists`]: crate::Repository::blob_exists
//! [`Repository::unlink_blob`]: crate::Repository::unlink_blob
//! [`Repository::put_manifest`]: crate::Repository::put_manifest
//! [`Repository::get_manifest`]: crate::Repository::get_manifest
//! [`Repository::stat_manifest`]: crate::Repository::stat_manifest
//! [`Repository::delete_manifest`]: crate::Repository::delete_manifest
//! [`Repository::delete_tag`]: crate::Repository::delete_tag
//!
//! # Never blocking
//!
//! [`EventSink::send`] is a plain function, called inline: a sink must only enqueue (and drop
//! what it cannot hold), never wait for a network or a full queue, or it slows every push.
//! [`channel`] is such a sink: a bounded queue that drops the newest event when full and
//! counts the drops.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::digest::Digest;
use crate::name::{RepositoryName, Tag};
use crate::store::BLOB_MEDIA_TYPE;

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Push,
    Pull,
    /// A blob linked from another repository (a cross-repository mount).
    Mount,
    Delete,
}

impl Action {
    /// `push`, `pull`, `mount` or `delete`, as Distribution's events spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Pull => "pull",
            Self::Mount => "mount",
            Self::Delete => "delete",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What it was done to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Blob,
    Manifest,
    /// A tag removed on its own or with its manifest (only [`Action::Delete`]).
    Tag,
}

/// One thing the store did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    pub action: Action,
    pub kind: Kind,
    pub repository: RepositoryName,
    /// `None` only for a tag's delete.
    pub digest: Option<Digest>,
    /// The manifest's media type, or [`BLOB_MEDIA_TYPE`]; `None` for deletes.
    pub media_type: Option<String>,
    /// `None` for deletes.
    pub size: Option<u64>,
    /// The tag the operation named (a manifest put or get by tag), or the tag deleted.
    pub tag: Option<Tag>,
    /// The repository a mounted blob came from.
    pub from_repository: Option<RepositoryName>,
    /// A manifest's exact bytes, on a push or a `GET` pull (a frontend can list what the
    /// manifest references from them); cheap to clone.
    pub manifest: Option<Bytes>,
    /// When the operation finished.
    pub timestamp: DateTime<Utc>,
}

impl Event {
    fn new(action: Action, kind: Kind, repository: &RepositoryName) -> Self {
        Self {
            action,
            kind,
            repository: repository.clone(),
            digest: None,
            media_type: None,
            size: None,
            tag: None,
            from_repository: None,
            manifest: None,
            timestamp: Utc::now(),
        }
    }

    pub(crate) fn blob(
        action: Action,
        repository: &RepositoryName,
        digest: &Digest,
        size: u64,
    ) -> Self {
        Self {
            digest: Some(*digest),
            media_type: Some(BLOB_MEDIA_TYPE.to_owned()),
            size: Some(size),
            ..Self::new(action, Kind::Blob, repository)
        }
    }

    pub(crate) fn blob_deleted(repository: &RepositoryName, digest: &Digest) -> Self {
        Self {
            digest: Some(*digest),
            ..Self::new(Action::Delete, Kind::Blob, repository)
        }
    }

    pub(crate) fn manifest(
        action: Action,
        repository: &RepositoryName,
        info: &crate::ManifestInfo,
        tag: Option<&Tag>,
        bytes: Option<Bytes>,
    ) -> Self {
        Self {
            digest: Some(info.digest),
            media_type: Some(info.media_type.clone()),
            size: Some(info.size),
            tag: tag.cloned(),
            manifest: bytes,
            ..Self::new(action, Kind::Manifest, repository)
        }
    }

    pub(crate) fn manifest_deleted(repository: &RepositoryName, digest: &Digest) -> Self {
        Self {
            digest: Some(*digest),
            ..Self::new(Action::Delete, Kind::Manifest, repository)
        }
    }

    pub(crate) fn tag_deleted(repository: &RepositoryName, tag: &Tag) -> Self {
        Self {
            tag: Some(tag.clone()),
            ..Self::new(Action::Delete, Kind::Tag, repository)
        }
    }

    /// With the repository a mount came from.
    pub(crate) fn from(self, repository: &RepositoryName) -> Self {
        Self {
            from_repository: Some(repository.clone()),
            ..self
        }
    }
}

/// Where the store sends its events. Called inline by the operation that succeeded, in its
/// task: it must return at once (enqueue, or drop), never wait.
pub trait EventSink: Send + Sync + fmt::Debug {
    fn send(&self, event: Event);
}

/// A sink that puts events on a bounded queue for a task of the frontend to read, dropping
/// (and counting) the newest when the queue is full.
#[derive(Debug)]
pub struct ChannelSink {
    queue: mpsc::Sender<Event>,
    dropped: AtomicU64,
}

impl ChannelSink {
    /// Events not queued because the queue was full or its reader gone.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl EventSink for ChannelSink {
    fn send(&self, event: Event) {
        if self.queue.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A [`ChannelSink`] holding at most `capacity` events (at least one), and its reader.
#[must_use]
pub fn channel(capacity: usize) -> (Arc<ChannelSink>, mpsc::Receiver<Event>) {
    let (queue, reader) = mpsc::channel(capacity.max(1));
    (
        Arc::new(ChannelSink {
            queue,
            dropped: AtomicU64::new(0),
        }),
        reader,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepositoryName {
        RepositoryName::parse("team/app").unwrap()
    }

    #[test]
    fn a_full_channel_drops_the_newest_and_counts_it() {
        let (sink, mut reader) = channel(1);
        let digest = Digest::sha256(b"x");
        sink.send(Event::blob(Action::Push, &repo(), &digest, 1));
        sink.send(Event::blob_deleted(&repo(), &digest));
        assert_eq!(sink.dropped(), 1);
        assert_eq!(reader.try_recv().unwrap().action, Action::Push);
        assert!(reader.try_recv().is_err());
    }

    #[test]
    fn actions_are_spelled_as_distribution_spells_them() {
        let spelled: Vec<&str> = [Action::Push, Action::Pull, Action::Mount, Action::Delete]
            .iter()
            .map(|a| a.as_str())
            .collect();
        assert_eq!(spelled, ["push", "pull", "mount", "delete"]);
    }
}
