//! The protocol between a garbage collection run and every store that serves clients
//! (replicas included): how a run learns what clients were told, and how clients learn what
//! a run is deleting. The design and the safety argument are in `docs/storage.md`, "Garbage
//! collection".
//!
//! In short: `gc/state` says whether a run is in progress and its generation. Every store
//! reads it at most [`STATE_MAX_AGE`] before it relies on it. While a run is in progress, a
//! store *pins* everything it is about to acknowledge (a blob a `HEAD` finds, a blob a commit
//! or mount links, the blobs a manifest references, the revision and repository a put writes)
//! by creating a `keep` verdict, create-only, before it checks the backend, and again after
//! it published. The run creates a `delete` verdict, create-only, before it deletes anything.
//! One of the two creations wins; the backend decides. A pin that finds `delete` means the
//! thing is going: readers answer "unknown", writers wait until the run has deleted it and
//! removed the verdict, then write it anew.

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::name::RepositoryName;
use crate::store::Store;

/// The oldest GC state a store relies on: it reads `gc/state` again when its copy was read
/// longer ago than this. A run waits this long (plus [`MARGIN`]) after it starts before it
/// decides anything, so that every store pins by then.
pub const STATE_MAX_AGE: Duration = Duration::from_secs(2);

/// Added to every wait of the protocol, for timer and clock-rate slack.
pub const MARGIN: Duration = Duration::from_secs(1);

/// How long a writer waits for a run to finish deleting what it wants to write before it
/// gives up with a backend error (only reached if the run's process died mid-delete; the
/// next run releases it).
const WRITER_WAIT: Duration = Duration::from_secs(60);

/// Most pins a store remembers per generation; past it, it forgets them all (each then
/// costs one more request).
const PINS_REMEMBERED: usize = 100_000;

const KEEP: &[u8] = b"keep";
const DELETE: &[u8] = b"delete";

/// The content of `gc/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GcState {
    /// Incremented by every run when it starts.
    pub generation: u64,
    /// Whether a run is in progress.
    pub active: bool,
    /// The run's id.
    pub run: String,
    /// Incremented by the run while it is alive.
    pub heartbeat: u64,
}

/// What a store last read of `gc/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub generation: u64,
    pub active: bool,
    read_started: Instant,
}

/// What can be pinned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Blob(Digest),
    Revision(RepositoryName, Digest),
    Repository(RepositoryName),
    /// The pieces of an upload session (object stores), which a commit is publishing.
    Upload(String),
}

impl Target {
    pub(crate) fn key(&self, store: &Store, generation: u64) -> Path {
        let keys = store.keys();
        match self {
            Self::Blob(d) => keys.gc_blob_verdict(generation, d),
            Self::Revision(r, d) => keys.gc_revision_verdict(generation, r, d),
            Self::Repository(r) => keys.gc_repository_verdict(generation, r),
            Self::Upload(id) => keys.gc_upload_verdict(generation, id),
        }
    }
}

/// The outcome of a pin or a condemnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    Delete,
}

/// A store's view of garbage collection: its last read of the state and its pins.
#[derive(Debug, Default)]
pub(crate) struct GcWatch {
    seen: RwLock<Option<Seen>>,
    refreshing: tokio::sync::Mutex<()>,
    pinned: Mutex<(u64, HashSet<Target>)>,
}

impl GcWatch {
    fn fresh(&self) -> Option<Seen> {
        let seen = *self.seen.read().unwrap_or_else(|e| e.into_inner());
        seen.filter(|s| s.read_started.elapsed() < STATE_MAX_AGE)
    }

    pub(crate) fn is_pinned(&self, generation: u64, target: &Target) -> bool {
        let pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        pinned.0 == generation && pinned.1.contains(target)
    }

    fn remember_pin(&self, generation: u64, target: Target) {
        let mut pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        if pinned.0 != generation || pinned.1.len() >= PINS_REMEMBERED {
            *pinned = (generation, HashSet::new());
        }
        pinned.1.insert(target);
    }
}

/// Creates `key` with `content` unless it exists; returns what it holds afterwards.
pub(crate) async fn decide(
    objects: &dyn ObjectStore,
    key: &Path,
    want: Verdict,
) -> Result<Verdict> {
    let content = match want {
        Verdict::Keep => KEEP,
        Verdict::Delete => DELETE,
    };
    loop {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match objects
            .put_opts(key, Bytes::from_static(content).into(), options)
            .await
        {
            Ok(_) => return Ok(want),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let got = match objects.get(key).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        match got {
            Ok(b) if b.as_ref() == KEEP => return Ok(Verdict::Keep),
            Ok(b) if b.as_ref() == DELETE => return Ok(Verdict::Delete),
            Ok(b) => {
                return Err(Error::Corrupt {
                    key: key.to_string(),
                    reason: format!(
                        "a GC verdict of {} bytes that is neither keep nor delete",
                        b.len()
                    ),
                });
            }
            // Removed between the two requests (a run finished with it): decide again.
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

impl Store {
    /// The GC state, as read at most [`STATE_MAX_AGE`] ago. When the generation changes,
    /// the layerinfo cache is cleared: what it holds was seen before a run that may have
    /// deleted it.
    pub(crate) async fn gc_seen(&self) -> Result<Seen> {
        let watch = self.gc_watch();
        if let Some(seen) = watch.fresh() {
            return Ok(seen);
        }
        let _one_at_a_time = watch.refreshing.lock().await;
        if let Some(seen) = watch.fresh() {
            return Ok(seen);
        }
        let read_started = Instant::now();
        let state: Option<GcState> = self.read_json(&self.keys().gc_state(), 64 * 1024).await?;
        let seen = Seen {
            generation: state.as_ref().map_or(0, |s| s.generation),
            active: state.as_ref().is_some_and(|s| s.active),
            read_started,
        };
        let previous = watch
            .seen
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(seen);
        if previous.is_none_or(|p| p.generation != seen.generation)
            && let Some(cache) = self.cache()
        {
            cache.gc_generation_seen(seen.generation).await;
        }
        Ok(seen)
    }

    /// Pins `target` if a run is in progress: afterwards the run cannot delete it (`Keep`),
    /// or it is being deleted (`Delete`). Without a run, `Keep` at no cost.
    pub(crate) async fn pin(&self, target: Target) -> Result<Verdict> {
        let seen = self.gc_seen().await?;
        if !seen.active || self.gc_watch().is_pinned(seen.generation, &target) {
            return Ok(Verdict::Keep);
        }
        let key = target.key(self, seen.generation);
        let verdict = decide(self.objects(), &key, Verdict::Keep).await?;
        if verdict == Verdict::Keep {
            self.gc_watch().remember_pin(seen.generation, target);
        }
        Ok(verdict)
    }

    /// Pins `target` for a write: while a run is deleting it, waits until the run is done
    /// with it (so the write lands after the delete), then pins it.
    pub(crate) async fn pin_to_write(&self, target: Target) -> Result<()> {
        let deadline = Instant::now() + WRITER_WAIT;
        let mut delay = Duration::from_millis(10);
        loop {
            if self.pin(target.clone()).await? == Verdict::Keep {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Backend {
                    source: object_store::Error::Generic {
                        store: "layerstore gc",
                        source: format!(
                            "{target:?} has been being deleted by garbage collection for over \
                             {WRITER_WAIT:?}; its run seems to have died (the next run releases it)"
                        )
                        .into(),
                    },
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Pins every target for a write (see [`Self::pin_to_write`]).
    pub(crate) async fn pin_all_to_write(
        &self,
        targets: impl IntoIterator<Item = Target>,
    ) -> Result<()> {
        futures::stream::iter(targets)
            .map(|target| self.pin_to_write(target))
            .buffer_unordered(16)
            .try_collect()
            .await
    }
}
