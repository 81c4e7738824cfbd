//! Purging abandoned upload sessions, once or in the background.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use sha2::Digest as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::objects::{SegmentIndex, discard_staged, mark_cancelled};
use super::{SessionState, UploadId, age, remove_session};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::Store;

/// What one sweep does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeOptions {
    /// Sessions whose last activity is older than this are purged.
    pub older_than: Duration,
    /// Only report what would be purged.
    pub dry_run: bool,
}

impl Default for PurgeOptions {
    fn default() -> Self {
        Self {
            older_than: Duration::from_secs(168 * 3600),
            dry_run: false,
        }
    }
}

/// What a sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Sessions looked at.
    pub scanned: u64,
    /// Sessions purged (or, in a dry run, that would have been).
    pub purged: u64,
    /// Bytes of staged data deleted (or that would have been).
    pub bytes_freed: u64,
    /// Sessions that could not be purged, with the reason; the sweep goes on past them.
    pub errors: Vec<String>,
}

/// Settings of the background purger (the defaults of the CNCF Distribution registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgerConfig {
    pub enabled: bool,
    pub options: PurgeOptions,
    /// Time between sweeps; each wait is lengthened by a random jitter of up to a tenth of
    /// it, so replicas sharing a backend do not sweep in step.
    pub interval: Duration,
}

impl Default for PurgerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            options: PurgeOptions::default(),
            interval: Duration::from_secs(24 * 3600),
        }
    }
}

impl Store {
    /// Deletes every upload session whose last activity is older than `options.older_than`,
    /// with its staged data.
    ///
    /// On the filesystem a session that is receiving a chunk is never purged: its append lock
    /// is held. On object stores a session's state changes only when a chunk is in: its state
    /// is read again right before deletion and the session is left alone if a chunk came in
    /// since, but one whose last chunk is older than the age can be purged while it receives
    /// another; that append then fails with [`Error::BlobUploadUnknown`] and leaves nothing.
    ///
    /// # Errors
    /// Only if the sessions cannot be listed; a session that fails is reported in
    /// [`PurgeReport::errors`].
    pub async fn purge_uploads(&self, options: PurgeOptions) -> Result<PurgeReport> {
        let keys = self.keys();
        let listed: Vec<object_store::ObjectMeta> = self
            .objects()
            .list(Some(&keys.uploads_prefix()))
            .try_collect()
            .await?;
        let mut sessions: BTreeSet<String> = BTreeSet::new();
        let mut newest = std::collections::HashMap::<String, SystemTime>::new();
        for meta in &listed {
            if let Some(id) = keys.upload_id_from_key(&meta.location) {
                let modified: SystemTime = meta.last_modified.into();
                let entry = newest.entry(id.clone()).or_insert(modified);
                *entry = (*entry).max(modified);
                sessions.insert(id);
            }
        }
        let now = SystemTime::now();
        let mut report = PurgeReport::default();
        for raw in sessions {
            report.scanned += 1;
            let Ok(id) = UploadId::parse(&raw) else {
                report
                    .errors
                    .push(format!("{raw}: not a session this store made; left alone"));
                continue;
            };
            match self.purge_one(&id, newest[&raw], now, options).await {
                Ok(Some(freed)) => {
                    report.purged += 1;
                    report.bytes_freed += freed;
                }
                Ok(None) => {}
                Err(e) => report.errors.push(format!("{id}: {e}")),
            }
        }
        tracing::info!(
            scanned = report.scanned,
            purged = report.purged,
            bytes_freed = report.bytes_freed,
            errors = report.errors.len(),
            dry_run = options.dry_run,
            "upload purge finished"
        );
        Ok(report)
    }

    /// Purges one session if it is old enough; returns the bytes freed, `None` if kept.
    async fn purge_one(
        &self,
        id: &UploadId,
        newest_object: SystemTime,
        now: SystemTime,
        options: PurgeOptions,
    ) -> Result<Option<u64>> {
        let keys = self.keys();
        let state_key = keys.upload_state(id.as_str());
        let (loaded, state) = if self.backend().local_root().is_some() {
            let state = match super::fs::load_state(self, id).await {
                Ok(state) => Some(state),
                Err(Error::BlobUploadUnknown { .. } | Error::Corrupt { .. }) => None,
                Err(e) => return Err(e),
            };
            (None, state)
        } else {
            let loaded = self.read_versioned(&state_key).await?;
            let state = match &loaded {
                Some((bytes, _)) => SessionState::decode(state_key.as_ref(), bytes).ok(),
                None => None,
            };
            (loaded, state)
        };
        // Without readable state (a start that crashed), the files' own times decide.
        let idle = match &state {
            // A cancel that failed midway: nobody can use it any more. (Unless a commit had
            // begun: that one may still be publishing, so it waits out the age.)
            Some(s) if s.cancelled && s.publishing.is_none() => Duration::MAX,
            Some(s) => age(s.last_active, now),
            None => now.duration_since(newest_object).unwrap_or_default(),
        };
        if idle <= options.older_than {
            return Ok(None);
        }
        let _lock = match self.backend().local_root() {
            Some(root) => match lock_session(&root.join(keys.upload_lock(id.as_str()).as_ref()))? {
                SessionLock::Busy => return Ok(None), // receiving a chunk right now
                SessionLock::Held(file) => Some(file),
                SessionLock::NoDirectory => None,
            },
            None => None,
        };
        let published = match &state {
            Some(s) => self.published_segments(id, s).await?,
            None => false,
        };
        let mut freed = 0;
        if !published {
            for key in self.list_keys(&keys.segments_prefix(id.as_str())).await? {
                freed += self.head(&key).await?.map_or(0, |m| m.size);
            }
            // Parts of open multipart uploads are no objects yet; their state records them.
            let pieces = state.as_ref().map_or(&[][..], |s| &s.segments[..]);
            freed += pieces
                .iter()
                .filter(|p| p.multipart.is_some())
                .map(|p| p.size)
                .sum::<u64>();
        }
        if let Some(root) = self.backend().local_root() {
            let data = root.join(keys.upload_data(id.as_str()).as_ref());
            freed += tokio::fs::metadata(&data).await.map_or(0, |m| m.len());
        }
        if options.dry_run {
            return Ok(Some(freed));
        }
        if self.backend().local_root().is_none() {
            match (&state, loaded) {
                // Cancel it with a conditional write first: an append or commit that wrote
                // since we looked makes this fail (in use: keep it), and one that writes after
                // it fails instead of working on a session being deleted.
                (Some(s), Some((_, version))) if !s.cancelled => {
                    if !mark_cancelled(self, id, s, version).await? {
                        return Ok(None);
                    }
                }
                (Some(_), _) => {} // cancelled already: nothing can change it
                (None, loaded) => {
                    // No readable state: keep it if one has appeared since we looked.
                    let now_version = self.read_versioned(&state_key).await?.map(|(_, v)| v);
                    if now_version != loaded.map(|(_, v)| v) {
                        return Ok(None);
                    }
                }
            }
        }
        if !published {
            let pieces = state.as_ref().map_or(&[][..], |s| &s.segments[..]);
            discard_staged(self, id, pieces).await?;
        }
        for key in self.list_keys(&keys.upload_prefix(id.as_str())).await? {
            self.remove(&key).await?;
        }
        remove_session(self, id).await?;
        Ok(Some(freed))
    }

    /// Whether a session's segments already belong to a published blob (a commit that
    /// crashed before it removed the session): then they must not be deleted.
    pub(super) async fn published_segments(
        &self,
        id: &UploadId,
        state: &SessionState,
    ) -> Result<bool> {
        if state.segments.is_empty() {
            return Ok(false);
        }
        let Some(hasher) = state.hash.restore() else {
            // Cannot tell which blob it would be: keep the segments, to be safe.
            return Ok(true);
        };
        // The blob is the session's SHA-256, or the other digest a commit recorded.
        let sha256 = Digest::Sha256(hasher.finalize().into());
        for digest in std::iter::once(sha256).chain(state.publishing) {
            let index: Option<SegmentIndex> =
                self.read_link(&self.keys().blob_segments(&digest)).await?;
            if index.is_some_and(|i| i.upload == id.as_str()) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

enum SessionLock {
    Held(std::fs::File),
    Busy,
    /// The session directory is gone: nothing to lock, nothing to protect.
    NoDirectory,
}

fn lock_session(path: &std::path::Path) -> Result<SessionLock> {
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SessionLock::NoDirectory),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(SessionLock::Held(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(SessionLock::Busy),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io(format!("locking {}", path.display()), e))
        }
    }
}

/// A background task that purges old upload sessions every `interval`.
#[derive(Debug)]
pub struct Purger {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Purger {
    /// Starts purging in the background; `None` if `config.enabled` is false. The first
    /// sweep runs after one interval (plus jitter), not at start.
    #[must_use]
    pub fn spawn(store: Store, config: PurgerConfig) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                let jitter = config.interval.mul_f64(rand::random::<f64>() / 10.0);
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(config.interval + jitter) => {}
                }
                if let Err(e) = store.purge_uploads(config.options).await {
                    tracing::warn!(error = %e, "upload purge failed");
                }
            }
        });
        Some(Self {
            stop: Some(stop),
            task,
        })
    }

    /// Stops the purger and waits for it; a sweep under way finishes first.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}
