//! Garbage collection on a schedule (`storage.maintenance.gc`), beside the upload purger: a
//! run every `interval` plus a random jitter of up to a tenth of it, so replicas configured
//! alike do not start in step. Each run's outcome is logged; a failed run is logged and the
//! next one comes at its time: the server never stops because of a run.
//!
//! Runs exclude each other through the store's GC lock, whichever process starts them (this
//! server, a replica, `layerstore gc`): a run that finds the lock held by a live run gives up
//! with an error, logged. A run under way when the server stops is abandoned, as a crash
//! would leave it: the next run takes its lock over after 30 s and finishes the work.

use std::time::Duration;

use layerstore::Store;
use layerstore::gc::{GcOptions, GcReport};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::GcSchedule;

/// The scheduled runs of one server.
pub struct ScheduledGc {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ScheduledGc {
    /// Starts the schedule; `None` if it is not enabled. The first run starts after one
    /// interval (plus jitter), not at start.
    #[must_use]
    pub fn spawn(store: Store, schedule: GcSchedule) -> Option<Self> {
        if !schedule.enabled {
            return None;
        }
        let options = schedule.options;
        tracing::info!(
            interval = %humantime::format_duration(schedule.interval),
            grace = %humantime::format_duration(options.grace),
            delete_untagged = options.delete_untagged,
            dry_run = options.dry_run,
            "garbage collection scheduled"
        );
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                let jitter = schedule.interval.mul_f64(rand::random::<f64>() / 10.0);
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(schedule.interval.saturating_add(jitter)) => {}
                }
                // Its own task: a run that panics is logged like one that fails.
                let mut run = tokio::spawn(run_once(store.clone(), options));
                tokio::select! {
                    _ = &mut stopped => {
                        run.abort();
                        let _ = run.await;
                        tracing::warn!(
                            "garbage collection abandoned: the server is stopping (the next \
                             run takes its lock over and finishes its work)"
                        );
                        return;
                    }
                    ended = &mut run => {
                        if let Err(e) = ended {
                            tracing::error!(error = %e, "garbage collection crashed");
                        }
                    }
                }
            }
        });
        Some(Self {
            stop: Some(stop),
            task,
        })
    }

    /// Stops the schedule and waits for it; a run under way is abandoned.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// One run, logged.
async fn run_once(store: Store, options: GcOptions) {
    tracing::info!(
        wait = %humantime::format_duration(
            crate::cli_gc::wait_of(options.grace).unwrap_or(Duration::MAX)
        ),
        dry_run = options.dry_run,
        "garbage collection started"
    );
    match store.gc(options, &|_| {}).await {
        Ok(report) => log_report(&report),
        Err(e) => tracing::error!(error = %e, "garbage collection failed"),
    }
}

fn log_report(report: &GcReport) {
    let (p, r) = (&report.plan, &report.removed);
    if report.dry_run {
        tracing::info!(
            repositories = p.repositories,
            manifests = p.manifests,
            blobs = p.blobs,
            bytes = p.bytes,
            blobs_collectable = p.blobs_collected,
            bytes_collectable = p.bytes_collected,
            manifests_collectable = p.manifests_collected,
            links_collectable = p.links_collected,
            repositories_emptied = p.repositories_emptied,
            "garbage collection dry run finished: nothing deleted"
        );
    } else {
        tracing::info!(
            generation = report.generation,
            took_over = report.took_over,
            repositories = p.repositories,
            manifests = p.manifests,
            blobs = p.blobs,
            bytes = p.bytes,
            blobs_removed = r.blobs,
            bytes_freed = r.bytes,
            manifests_removed = r.manifests,
            links_removed = r.links,
            repositories_removed = r.repositories,
            rescued = r.rescued,
            "garbage collection finished"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use layerstore::layout::KeyLayout;
    use layerstore::manifest::media_type;
    use layerstore::{Backend, Digest, Reference, RepositoryName};
    use object_store::memory::InMemory;
    use object_store::{ObjectStore, ObjectStoreExt};

    use super::*;

    async fn exists(objects: &InMemory, digest: &Digest) -> bool {
        objects.head(&KeyLayout.blob_data(digest)).await.is_ok()
    }

    /// The generation of the last run that ended, if any did.
    async fn ended_generation(objects: &InMemory) -> Option<u64> {
        let state = objects.get(&KeyLayout.gc_state()).await.ok()?;
        let state: serde_json::Value = serde_json::from_slice(&state.bytes().await.ok()?).ok()?;
        (state["active"] == false).then(|| state["generation"].as_u64())?
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_run_does_not_stop_the_schedule() {
        let objects = Arc::new(InMemory::new());
        let store = Store::new(Backend::object_store(
            objects.clone() as Arc<dyn ObjectStore>
        ));
        let r = store.repository(RepositoryName::parse("team/app").unwrap());
        let loose = Bytes::from_static(b"pushed, never used");
        let loose_digest = Digest::sha256(&loose);
        r.put_blob(&loose_digest, loose).await.unwrap();
        let config = Bytes::from_static(b"{}");
        r.put_blob(&Digest::sha256(&config), config).await.unwrap();
        let manifest = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":2}},"layers":[]}}"#,
            media_type::OCI_MANIFEST,
            media_type::OCI_EMPTY,
            Digest::sha256(b"{}"),
        ));
        let manifest_digest = Digest::sha256(&manifest);
        r.put_manifest(
            &Reference::Digest(manifest_digest),
            manifest.clone(),
            Some(media_type::OCI_MANIFEST),
        )
        .await
        .unwrap();
        // A manifest that does not parse: every run stops with an error, deleting nothing.
        let bytes_key = KeyLayout.blob_data(&manifest_digest);
        objects
            .put(&bytes_key, Bytes::from_static(b"garbled").into())
            .await
            .unwrap();
        let schedule = GcSchedule {
            enabled: true,
            interval: Duration::from_millis(100),
            options: GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
        };
        let scheduled = ScheduledGc::spawn(store.clone(), schedule).expect("enabled");
        // A liveness bound only.
        let deadline = Instant::now() + Duration::from_secs(120);
        while ended_generation(&objects).await.is_none() {
            assert!(Instant::now() < deadline, "no run ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            exists(&objects, &loose_digest).await,
            "the failed run deleted"
        );
        objects.put(&bytes_key, manifest.into()).await.unwrap();
        while exists(&objects, &loose_digest).await {
            assert!(
                Instant::now() < deadline,
                "no run came after the failed one"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        scheduled.stop().await;
    }
}
