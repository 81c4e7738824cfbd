//! Purging abandoned upload sessions, once or in the background. The sweep is shared; what
//! "purge one session" means is the engine's ([`super::engine::UploadEngine::purge`]).

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::UploadId;
use crate::error::Result;
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
    /// A session in use is never purged, and a purge never breaks a commit. On the filesystem
    /// a session that is receiving a chunk or being committed holds its lock, and the purge
    /// skips it. On object stores the purge first marks the session cancelled with a
    /// conditional write: an append, claim or commit marker written since it looked makes
    /// that fail (the session is kept), and one written after it fails instead (`BLOB_UPLOAD_
    /// UNKNOWN`, leaving nothing). A commit that has verified its digest cannot be purged: the
    /// purge finishes publishing it instead, so its pieces are never deleted under it.
    ///
    /// # Errors
    /// Only if the sessions cannot be listed; a session that fails is reported in
    /// [`PurgeReport::errors`].
    pub async fn purge_uploads(&self, options: PurgeOptions) -> Result<PurgeReport> {
        let report = self.backend().engine().purge(self, options).await;
        crate::metrics::run(crate::metrics::PURGE_RUNS, report.is_ok());
        let report = report?;
        if !options.dry_run {
            crate::metrics::sessions_purged(report.purged);
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
}

/// Runs `purge_one` on every listed session (by name), adding to `report`: the sweep goes on
/// past a session that fails.
pub(super) async fn sweep<F, Fut>(report: &mut PurgeReport, names: Vec<String>, mut purge_one: F)
where
    F: FnMut(UploadId) -> Fut,
    Fut: Future<Output = Result<Option<u64>>>,
{
    let mut names = names;
    names.sort();
    names.dedup();
    for raw in names {
        report.scanned += 1;
        let Ok(id) = UploadId::parse(&raw) else {
            report
                .errors
                .push(format!("{raw}: not a session this store made; left alone"));
            continue;
        };
        match purge_one(id.clone()).await {
            Ok(Some(freed)) => {
                report.purged += 1;
                report.bytes_freed += freed;
            }
            Ok(None) => {}
            Err(e) => report.errors.push(format!("{id}: {e}")),
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
