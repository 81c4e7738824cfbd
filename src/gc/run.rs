//! A garbage collection run: lock, announce, wait, mark, sweep, release. The protocol it
//! follows with the stores serving clients is in [`super::protocol`]; the design and the
//! safety argument in `docs/storage.md`, "Garbage collection".

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{PutMode, PutOptions};
use serde::Serialize;

use super::protocol::{GcState, MARGIN, STATE_MAX_AGE, Target, Verdict, decide};
use super::{GcOptions, GcPhase, GcPlan, GcProgress, Marked};
use crate::error::{Error, Result};
use crate::layout::BlobKey;
use crate::name::RepositoryName;
use crate::store::{BlobObject, MAX_INDEX_SIZE, SegmentIndex, Store};

/// How a run holds its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcLockTiming {
    /// How often the run proves it is alive (rewrites `gc/state`).
    pub heartbeat: Duration,
    /// A lock whose run has not proved itself alive for this long is abandoned: the next run
    /// takes it over. A run that could not prove itself alive for half of it stops deleting.
    pub stale_after: Duration,
}

impl Default for GcLockTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            stale_after: Duration::from_secs(30),
        }
    }
}

/// What a run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcRemoved {
    /// Blobs deleted (data objects, or segment indexes with their pieces).
    pub blobs: u64,
    /// Bytes of those blobs.
    pub bytes: u64,
    /// Manifest revisions deleted (with `delete_untagged`).
    pub manifests: u64,
    /// Blob links, and tags of deleted manifests, deleted.
    pub links: u64,
    /// Repositories removed from the catalog.
    pub repositories: u64,
    /// Upload sessions whose pieces were left behind (no session, no blob names them) by an
    /// interrupted commit, cancel, purge or GC (object stores), deleted.
    pub leftover_uploads: u64,
    /// Things the mark found unreachable that a client used during the run (pinned): kept.
    pub rescued: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// What the mark found (for a dry run, all there is).
    pub plan: GcPlan,
    /// What the sweep removed (zero for a dry run).
    pub removed: GcRemoved,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// The GC generation of the run (0 for a dry run).
    pub generation: u64,
    /// Whether the run found an abandoned run's lock and took it over.
    pub took_over: bool,
}

/// The lock and heartbeat of a run in progress.
struct Held {
    store: Store,
    state: GcState,
    alive: Arc<std::sync::Mutex<Instant>>,
    stop: Arc<AtomicBool>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    timing: GcLockTiming,
}

impl Held {
    /// Refuses to go on deleting once the run could not prove itself alive for half the
    /// staleness limit: another run may be about to take over.
    fn fence(&self) -> Result<()> {
        let since = self
            .alive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        if since < self.timing.stale_after / 2 {
            Ok(())
        } else {
            Err(gc_error(format!(
                "the run could not write its heartbeat for {since:?}; stopped before deleting more"
            )))
        }
    }

    /// Stops the heartbeat (waiting for a write in flight), then marks the run finished,
    /// removes its verdicts and its lock.
    async fn release(mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.heartbeat.take() {
            let _ = task.await;
        }
        let store = &self.store;
        let keys = store.keys();
        let finished = GcState {
            active: false,
            ..self.state.clone()
        };
        store.write_link(&keys.gc_state(), &finished).await?;
        remove_verdicts(store, |g| g <= finished.generation).await?;
        store.remove(&keys.gc_lock()).await
    }
}

/// A 64-bit keyed hash of an upload id (a collision only keeps pieces one run longer).
fn upload_hash(keys: &RandomState, id: &str) -> u64 {
    keys.hash_one(id)
}

/// A run dropped before it released (its future cancelled: a timeout, a server shutting
/// down) stops proving itself alive, so the next run can take its lock over after
/// `stale_after`, as after a crash. Without this, the detached heartbeat kept the abandoned
/// lock alive, and every later run refused, for as long as the process lived.
impl Drop for Held {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn gc_error(message: String) -> Error {
    Error::Backend {
        source: object_store::Error::Generic {
            store: "layerstore gc",
            source: message.into(),
        },
    }
}

/// Deletes the verdicts of every generation `which` selects.
async fn remove_verdicts(store: &Store, which: impl Fn(u64) -> bool) -> Result<()> {
    let keys = store.keys();
    for key in store.list_keys(&keys.gc_all_verdicts_prefix()).await? {
        if keys.gc_generation_from_key(&key).is_some_and(&which) {
            store.remove(&key).await?;
        }
    }
    Ok(())
}

impl Store {
    /// Runs garbage collection: everything [`Store::gc_plan`] finds unreachable is deleted,
    /// except what clients use while the run goes (see the module docs). Safe while this
    /// and other stores over the same backend serve pushes, pulls and deletes.
    ///
    /// It waits `options.grace` plus a few seconds before it marks, so a blob a client was
    /// told exists within the grace period is never deleted. With `dry_run`, it only plans:
    /// no lock, no wait, nothing written.
    ///
    /// # Errors
    /// Another run in progress; backend failures (the next run finishes what this one
    /// left); [`Error::Corrupt`] for a manifest that cannot be read.
    pub async fn gc(
        &self,
        options: GcOptions,
        progress: &(dyn Fn(&GcProgress) + Send + Sync),
    ) -> Result<GcReport> {
        if options.dry_run {
            return Ok(GcReport {
                plan: self.gc_plan(options, progress).await?,
                dry_run: true,
                ..GcReport::default()
            });
        }
        if options.lock.heartbeat * 2 >= options.lock.stale_after {
            return Err(Error::Unsupported {
                what: format!(
                    "a GC heartbeat of {:?} with a staleness limit of {:?}: the heartbeat \
                     must be under half the limit",
                    options.lock.heartbeat, options.lock.stale_after
                ),
            });
        }
        let run = self.gc_run(options, progress).await;
        crate::metrics::run(crate::metrics::GC_RUNS, run.is_ok());
        run
    }

    /// [`Self::gc`] past its checks: lock, mark, sweep, release.
    async fn gc_run(
        &self,
        options: GcOptions,
        progress: &(dyn Fn(&GcProgress) + Send + Sync),
    ) -> Result<GcReport> {
        let (held, took_over) = self.gc_lock(options.lock).await?;
        let generation = held.state.generation;
        let swept = self.gc_locked(&held, options, progress).await;
        let released = held.release().await;
        let (plan, removed) = swept?;
        released?;
        Ok(GcReport {
            plan,
            removed,
            dry_run: false,
            generation,
            took_over,
        })
    }

    /// Takes the GC lock (taking over an abandoned one), starts a new generation and its
    /// heartbeat, and releases the verdicts of earlier generations.
    async fn gc_lock(&self, timing: GcLockTiming) -> Result<(Held, bool)> {
        let keys = self.keys();
        let run = crate::upload::UploadId::random().to_string();
        let mut took_over = false;
        loop {
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            let created = self
                .objects()
                .put_opts(&keys.gc_lock(), Bytes::from(run.clone()).into(), options)
                .await;
            match created {
                Ok(_) => break,
                Err(object_store::Error::AlreadyExists { .. }) if !took_over => {}
                Err(object_store::Error::AlreadyExists { .. }) => {
                    return Err(gc_error(
                        "another garbage collection took the lock first".to_owned(),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
            // Held: by a live run (its heartbeat moves) or an abandoned one.
            let before: Option<GcState> = self.read_link(&keys.gc_state()).await?;
            tokio::time::sleep(timing.stale_after).await;
            let after: Option<GcState> = self.read_link(&keys.gc_state()).await?;
            if before != after {
                match after {
                    // The run ended while we watched: its lock is gone or going; try again.
                    Some(state) if !state.active => continue,
                    after => {
                        let run = after.map_or_else(String::new, |s| s.run);
                        return Err(gc_error(format!(
                            "another garbage collection is running (run {run}); try again \
                             when it ends"
                        )));
                    }
                }
            }
            self.remove(&keys.gc_lock()).await?;
            took_over = true;
        }
        let previous: Option<GcState> = self.read_link(&keys.gc_state()).await?;
        let state = GcState {
            generation: previous.map_or(0, |s| s.generation) + 1,
            active: true,
            run,
            heartbeat: 0,
        };
        self.write_link(&keys.gc_state(), &state).await?;
        let alive = Arc::new(std::sync::Mutex::new(Instant::now()));
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(beat(
            self.clone(),
            state.clone(),
            timing.heartbeat,
            alive.clone(),
            stop.clone(),
        ));
        // Runs that died left verdicts: writers may be waiting on their `delete`s.
        remove_verdicts(self, |g| g < state.generation).await?;
        Ok((
            Held {
                store: self.clone(),
                state,
                alive,
                stop,
                heartbeat: Some(heartbeat),
                timing,
            },
            took_over,
        ))
    }

    async fn gc_locked(
        &self,
        held: &Held,
        options: GcOptions,
        progress: &(dyn Fn(&GcProgress) + Send + Sync),
    ) -> Result<(GcPlan, GcRemoved)> {
        let mut counts = GcProgress::new(GcPhase::Wait);
        progress(&counts);
        // Every store reads the new state within STATE_MAX_AGE and pins from then on; what
        // was acknowledged before that is at least `grace` old when the mark begins.
        tokio::time::sleep(options.grace.saturating_add(STATE_MAX_AGE + MARGIN)).await;
        let marked = self.mark(options, progress, &mut counts).await?;
        let mut removed = GcRemoved::default();
        counts.phase = GcPhase::Links;
        counts.repositories = 0;
        for name in &marked.repositories {
            self.sweep_repository(held, &marked, name, &mut removed)
                .await?;
            counts.repositories += 1;
            progress(&counts);
        }
        counts.phase = GcPhase::Scan;
        let mut plan = marked.plan.clone();
        let named_keys = RandomState::new();
        let mut named = self.quarantined_uploads(&named_keys).await?;
        let mut objects = self.blob_objects();
        while let Some(object) = objects.try_next().await? {
            let size = match object.key {
                BlobKey::Data(_) => Some(object.meta.size),
                BlobKey::Segments(d) => self.read_segment_index(&d).await?.map(|index| {
                    named.insert(upload_hash(&named_keys, &index.upload));
                    index.size
                }),
            };
            let Some(size) = size else {
                continue;
            };
            plan.blobs += 1;
            plan.bytes += size;
            counts.blobs += 1;
            counts.bytes += size;
            if !marked.marks.contains(&object.digest()) {
                plan.blobs_collected += 1;
                plan.bytes_collected += size;
                if self.sweep_blob(held, &object).await? {
                    removed.blobs += 1;
                    removed.bytes += size;
                } else {
                    removed.rescued += 1;
                }
            }
            if counts.blobs.is_multiple_of(1024) {
                progress(&counts);
            }
        }
        progress(&counts);
        self.sweep_leftover_uploads(held, (&named_keys, &named), &mut removed)
            .await?;
        plan.links_collected = removed.links;
        plan.repositories_emptied = removed.repositories;
        Ok((plan, removed))
    }

    /// Condemns `target`; if that wins over every pin, runs `delete` and lifts the verdict.
    /// Returns whether it deleted.
    async fn condemned<F, Fut>(&self, held: &Held, target: Target, delete: F) -> Result<bool>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        held.fence()?;
        let key = target.key(self, held.state.generation);
        if decide(self.objects(), &key, Verdict::Delete).await? == Verdict::Keep {
            return Ok(false);
        }
        delete().await?;
        // Writers waiting on the verdict go on once it is gone, and write anew.
        self.remove(&key).await?;
        Ok(true)
    }

    /// Deletes what the mark did not keep in one repository: untagged revisions (with their
    /// tags and referrer entries), links to blobs nothing keeps, and the repository's
    /// catalog entry if nothing is left.
    async fn sweep_repository(
        &self,
        held: &Held,
        marked: &Marked,
        name: &RepositoryName,
        removed: &mut GcRemoved,
    ) -> Result<()> {
        let repository = self.repository(name.clone());
        for digest in marked.collected_revisions.get(name).into_iter().flatten() {
            let target = Target::Revision(name.clone(), *digest);
            let mut tags = 0;
            let deleted = self
                .condemned(held, target, || async {
                    tags = repository.delete_revision_for_gc(digest).await?;
                    Ok(())
                })
                .await?;
            if deleted {
                removed.manifests += 1;
                removed.links += tags;
            } else {
                removed.rescued += 1;
            }
        }
        let keys = self.keys();
        for digest in repository.layer_links().await? {
            if marked.marks.contains(&digest) {
                continue;
            }
            let link = keys.layer_link(name, &digest);
            let deleted = self
                .condemned(held, Target::Blob(digest), || async {
                    self.remove(&link).await?;
                    if let Some(cache) = self.cache() {
                        // Best effort: every store clears its cache for the run's generation.
                        let _ = cache.remove_link(name, &digest).await;
                    }
                    Ok(())
                })
                .await?;
            if deleted {
                removed.links += 1;
            } else {
                removed.rescued += 1;
            }
        }
        if !repository.is_empty_for_gc().await? {
            return Ok(());
        }
        let deleted = self
            .condemned(held, Target::Repository(name.clone()), || async {
                // Pushes pin the repository first; one that got in before the verdict won.
                if repository.is_empty_for_gc().await? {
                    repository.forget_for_gc().await?;
                }
                Ok(())
            })
            .await?;
        if deleted && !self.exists(&keys.catalog_marker(name)).await? {
            removed.repositories += 1;
        }
        Ok(())
    }

    /// Hashes of the upload ids that quarantined segment indexes name: their pieces stay.
    async fn quarantined_uploads(&self, keys: &RandomState) -> Result<HashSet<u64>> {
        let mut named = HashSet::new();
        for key in self.list_keys(&self.keys().quarantine_prefix()).await? {
            if key.filename() != Some("segments") {
                continue;
            }
            let index: Option<SegmentIndex> = self.read_json(&key, MAX_INDEX_SIZE).await?;
            if let Some(index) = index {
                named.insert(upload_hash(keys, &index.upload));
            }
        }
        Ok(named)
    }

    /// Deletes the pieces of upload sessions that no longer exist and that no blob index
    /// names (`named`, from the scan that just listed every index), each behind a verdict a
    /// commit publishing them would have pinned first.
    async fn sweep_leftover_uploads(
        &self,
        held: &Held,
        (named_keys, named): (&RandomState, &HashSet<u64>),
        removed: &mut GcRemoved,
    ) -> Result<()> {
        let keys = self.keys();
        let listed = self
            .objects()
            .list_with_delimiter(Some(&keys.segments_root()))
            .await?;
        for prefix in listed.common_prefixes {
            let Some(id) = keys.upload_id_from_segment_key(&prefix) else {
                continue;
            };
            if named.contains(&upload_hash(named_keys, &id)) {
                continue;
            }
            if self.exists(&keys.upload_state(&id)).await? {
                continue;
            }
            let deleted = self
                .condemned(held, Target::Upload(id.clone()), || async {
                    for key in self.list_keys(&keys.segments_prefix(&id)).await? {
                        self.remove(&key).await?;
                    }
                    Ok(())
                })
                .await?;
            if deleted {
                removed.leftover_uploads += 1;
            }
        }
        Ok(())
    }

    /// Deletes one unreachable blob unless a client pinned it; returns whether it did.
    async fn sweep_blob(&self, held: &Held, object: &BlobObject) -> Result<bool> {
        let digest = object.digest();
        self.condemned(held, Target::Blob(digest), || async {
            self.delete_blob_bytes(object.key).await?;
            if let Some(cache) = self.cache() {
                cache.remove_blob(&digest).await;
            }
            Ok(())
        })
        .await
    }

    /// Deletes a blob's bytes: its data object, or its index (the blob is gone at once)
    /// and then the pieces it listed.
    async fn delete_blob_bytes(&self, key: BlobKey) -> Result<()> {
        let keys = self.keys();
        match key {
            BlobKey::Data(d) => self.remove(&keys.blob_data(&d)).await,
            BlobKey::Segments(d) => {
                let Some(index) = self.read_segment_index(&d).await? else {
                    return Ok(());
                };
                self.remove(&keys.blob_segments(&d)).await?;
                for segment in &index.segments {
                    self.remove(&keys.segment(&index.upload, segment.seq, &segment.nonce))
                        .await?;
                }
                Ok(())
            }
        }
    }
}

/// Rewrites the state every `period` while the run lives; records each success.
async fn beat(
    store: Store,
    mut state: GcState,
    period: Duration,
    alive: Arc<std::sync::Mutex<Instant>>,
    stop: Arc<AtomicBool>,
) {
    let key = store.keys().gc_state();
    loop {
        let started = Instant::now();
        while started.elapsed() < period {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50).min(period)).await;
        }
        state.heartbeat += 1;
        let attempt = Instant::now();
        match store.write_link(&key, &state).await {
            Ok(()) => *alive.lock().unwrap_or_else(|e| e.into_inner()) = attempt,
            Err(e) => tracing::warn!(error = %e, "gc heartbeat failed"),
        }
    }
}
