//! The filesystem engine: a staging file per session, appended and fsynced per chunk, renamed
//! into the blob's place on commit; the session state in a two-slot file beside it.
//!
//! Durability of an append rests on one ordering: a state record is written only after the
//! bytes it covers are fsynced. So any record that survives a crash covers durable bytes, and
//! a resumed session never hashes or publishes a byte that was lost. The record itself is
//! fsynced by the next append, off that append's critical path, so a power loss can roll a
//! session back by its last append — the client is told the offset and sends the chunk again —
//! but never further, and never to a state that names bytes the disk does not have.
//!
//! Exclusion: every append, commit, cancel and purge of a session holds the session's lock
//! (`uploads/{id}/lock`, an OS file lock) while it reads or changes the session, and a session
//! ends by one rename of its whole directory into `trash/` under that lock. So a purge never
//! deletes a session an append or commit is using, an append or commit never works on a
//! session being deleted (a lock on a file renamed away is refused), and the directory is
//! never half-deleted under anyone.
//!
//! Threads: every file-system call runs as a short job on tokio's blocking pool, and no job
//! ever waits for another job or for a client. A stalled request body holds its connection,
//! the session's lock and at most a batch of memory, never a thread.

mod group;
mod io;
mod recent;
mod state;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

pub(crate) use group::DirSyncer;
pub use io::{FileHandle, FileInfo, FileSystem, LockAttempt, StdFileSystem};

use self::io::{context, sibling};
use self::state::Record;
use super::engine::UploadEngine;
use super::purge::{self, PurgeOptions, PurgeReport};
use super::session::{Hashes, Session};
use super::{ChunkStream, UploadId, UploadStatus, published, verify};
use crate::cache::CachedBlob;
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::layout::local_path;
use crate::name::RepositoryName;
use crate::store::{BlobInfo, Repository, Store};

/// How soon a waiting append first tries the session's lock again, and how far apart its
/// tries grow: a racing append waits a few milliseconds, one behind a stalled client costs
/// a try every 100 ms, not hundreds a second.
const LOCK_POLL: Duration = Duration::from_millis(2);
const LOCK_POLL_MAX: Duration = Duration::from_millis(100);
/// How long a cancel waits for an append in progress before it reports the session busy.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// Bytes read per job when a file is read back (a GET, or a re-hash).
const READ_STEP: u64 = 1024 * 1024;
/// Steps a GET reads ahead of the one being sent.
const READ_AHEAD: usize = 1;

/// Uploads into a directory on the local filesystem.
pub(crate) struct FsEngine {
    root: PathBuf,
    fs: Arc<dyn FileSystem>,
    syncer: Arc<DirSyncer>,
    /// Freshly written bytes kept in the page cache.
    recent: recent::Recent,
}

impl std::fmt::Debug for FsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsEngine")
            .field("root", &self.root)
            .field("fs", &self.fs)
            .finish()
    }
}

/// What a job on the blocking pool holds while it runs: the session's lock, if any.
#[derive(Clone, Default)]
pub(super) struct Guard {
    _lock: Option<Arc<Box<dyn Send + Sync>>>,
}

impl Guard {
    fn none() -> Self {
        Self { _lock: None }
    }

    fn holding(lock: Box<dyn Send + Sync>) -> Self {
        Self {
            _lock: Some(Arc::new(lock)),
        }
    }
}

/// Runs `f` on the blocking pool, holding `guard` until it is done.
pub(super) async fn job<T: Send + 'static>(
    guard: &Guard,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let guard = guard.clone();
    tokio::task::spawn_blocking(move || {
        let _held = guard;
        f()
    })
    .await
    .map_err(|e| Error::io("joining a filesystem job", std::io::Error::other(e)))?
}

/// Maps an I/O error to [`Error::Io`] naming what was done to which path.
fn failed(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let what = context(what, path);
    move |e| Error::io(what, e)
}

fn not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// The local paths of one session.
#[derive(Clone)]
struct Paths {
    dir: PathBuf,
    state: PathBuf,
    data: PathBuf,
    lock: PathBuf,
}

impl Paths {
    /// The state file's name as errors report it.
    fn state_key(&self) -> String {
        self.state.display().to_string()
    }
}

/// A session's state as read under its lock, with the open state file.
struct Opened {
    state_file: Arc<dyn FileHandle>,
    record: Record,
}

fn read_whole(file: &dyn FileHandle, path: &Path) -> Result<Vec<u8>> {
    let len = file.size().map_err(failed("reading", path))?;
    let mut bytes = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut bytes, 0)
        .map_err(failed("reading", path))?;
    Ok(bytes)
}

/// Opens a session's state file and reads its current record.
fn open_state(fs: &dyn FileSystem, paths: &Paths, id: &UploadId) -> Result<Opened> {
    let state_file = match fs.open(&paths.state) {
        Ok(f) => f,
        Err(e) if not_found(&e) => return Err(Error::BlobUploadUnknown { id: id.to_string() }),
        Err(e) => return Err(failed("opening", &paths.state)(e)),
    };
    let bytes = read_whole(&*state_file, &paths.state)?;
    let record = Record::decode(&paths.state_key(), &bytes)?;
    Ok(Opened { state_file, record })
}

/// Writes `next` into its slot. The first record after a legacy JSON state replaces the whole
/// file instead (fsynced, renamed, directory fsynced): overwriting the JSON in place could tear
/// the only record the session has.
fn write_record(
    fs: &dyn FileSystem,
    state_file: &dyn FileHandle,
    paths: &Paths,
    current: &Record,
    next: &Record,
) -> Result<()> {
    if current.slot.is_none() {
        let (_, bytes) = Record::encode_file(next.state.clone(), &paths.state_key())?;
        let tmp = sibling(&paths.state, ".tmp");
        let file = fs.create(&tmp).map_err(failed("creating", &tmp))?;
        file.write_at(&[Bytes::from(bytes)], 0)
            .map_err(failed("writing", &tmp))?;
        file.sync_data().map_err(failed("fsyncing", &tmp))?;
        fs.rename(&tmp, &paths.state)
            .map_err(failed("publishing", &paths.state))?;
        return fs
            .sync_dir(&paths.dir)
            .map_err(failed("fsyncing", &paths.dir));
    }
    let slot = next.encode(&paths.state_key())?;
    state_file
        .write_at(&[Bytes::from(slot)], next.position())
        .map_err(failed("writing", &paths.state))
}

/// A session opened for an append, under its lock.
struct Appending {
    opened: Opened,
    data: Arc<dyn FileHandle>,
    hashes: Hashes,
}

/// Reads the current record and checks the append against it, then opens the staging file at
/// the recorded offset, dropping bytes past it. With `offset` `None` (a last chunk sent
/// without a range) the append goes wherever the session is: read here, under the lock, not
/// in a job of its own before it.
fn open_for_append(
    fs: &dyn FileSystem,
    paths: &Paths,
    id: &UploadId,
    repository: &RepositoryName,
    offset: Option<u64>,
) -> Result<Appending> {
    let opened = open_state(fs, paths, id)?;
    let session = &opened.record.state;
    session.check_repository(repository, id)?;
    let offset = match offset {
        Some(offset) => {
            session.check_offset(offset)?;
            offset
        }
        None => session.offset,
    };
    let hashes = session.hashes_for_append(&paths.state_key())?;
    let data = match fs.open(&paths.data) {
        Ok(f) => f,
        // Published by a commit that did not get to end the session.
        Err(e) if not_found(&e) => return Err(committed(id)),
        Err(e) => return Err(failed("opening", &paths.data)(e)),
    };
    let staged = data.size().map_err(failed("reading", &paths.data))?;
    if staged < offset {
        // Records are written only after their bytes are fsynced: this is not a crash.
        return Err(Error::Corrupt {
            key: paths.data.display().to_string(),
            reason: format!("{staged} bytes staged, but the upload state counts {offset}"),
        });
    }
    if staged > offset {
        // Bytes past the recorded offset belong to an append that never finished (or whose
        // record a power loss rolled back): drop them.
        data.set_len(offset)
            .map_err(failed("truncating", &paths.data))?;
    }
    Ok(Appending {
        opened,
        data,
        hashes,
    })
}

fn committed(id: &UploadId) -> Error {
    Error::BlobUploadInvalid {
        reason: format!("upload {id} was committed; its session is ending"),
    }
}

/// Makes the current record durable, and on a session's first append the session itself (its
/// files' directory entries and its directory's). Runs beside the chunk's write: the record
/// it syncs covers bytes that are already durable, and it must be durable before the next
/// record overwrites the other slot, so that a torn write can never take out both. The
/// directory fsyncs are shared with concurrent writers (`uploads/` with every session's first
/// append).
async fn make_durable(
    syncer: &Arc<DirSyncer>,
    state_file: Arc<dyn FileHandle>,
    paths: &Paths,
    first: bool,
    guard: &Guard,
) -> Result<()> {
    let (syncer, state, dirs) = (
        Arc::clone(syncer),
        paths.state.clone(),
        if first {
            let mut dirs = vec![paths.dir.clone()];
            dirs.extend(paths.dir.parent().map(Path::to_path_buf));
            dirs
        } else {
            vec![]
        },
    );
    let what = context("fsyncing", &paths.dir);
    let joined = job(guard, move || {
        state_file.sync_data().map_err(failed("fsyncing", &state))?;
        syncer
            .sync_now_or_join(&dirs)
            .map_err(|e| Error::io(what, e))
    })
    .await?;
    joined.wait().await.map_err(failed("fsyncing", &paths.dir))
}

/// Renames the staging file into the blob's place (making its directories) and returns what
/// must be fsynced for the rename to be durable: the directories [`DirSyncer::make_dirs`]
/// names, then the target's own.
fn rename_into_place(
    fs: &dyn FileSystem,
    syncer: &Arc<DirSyncer>,
    root: &Path,
    data: &Path,
    target: &Path,
    size: u64,
) -> Result<(group::NewDirs, group::Joined)> {
    let file = match fs.open(data) {
        Ok(f) => f,
        Err(e) if not_found(&e) => {
            return Err(Error::BlobUploadInvalid {
                reason: "the upload's bytes are gone (committed or cancelled meanwhile)".into(),
            });
        }
        Err(e) => return Err(failed("opening", data)(e)),
    };
    let staged = file.size().map_err(failed("reading", data))?;
    if staged < size {
        // Never a crash's doing (a record is written after its bytes are fsynced); extending
        // the file would publish made-up bytes under the digest.
        return Err(Error::Corrupt {
            key: data.display().to_string(),
            reason: format!("{staged} bytes staged, but the upload state counts {size}"),
        });
    }
    if staged > size {
        // Bytes past the offset, left by an append that never finished.
        file.set_len(size).map_err(failed("truncating", data))?;
        file.sync_data().map_err(failed("fsyncing", data))?;
    }
    // New directories must be durable too: their parents are fsynced with the target's.
    let (parent, new) = blob_dirs(syncer, root, target)?;
    fs.rename(data, target)
        .map_err(failed("publishing", target))?;
    sync_entry(syncer, new, parent, target)
}

/// Fsyncs (or joins the fsyncs of) `parent`, where `target` is, and the directories `new`
/// names: in this job when no one else is fsyncing them, joined otherwise.
fn sync_entry(
    syncer: &Arc<DirSyncer>,
    new: group::NewDirs,
    parent: &Path,
    target: &Path,
) -> Result<(group::NewDirs, group::Joined)> {
    let mut dirs = new.parents.clone();
    dirs.push(parent.to_path_buf());
    let joined = syncer
        .sync_now_or_join(&dirs)
        .map_err(failed("fsyncing the directories of", target))?;
    Ok((new, joined))
}

/// If the store has the blob at `target`, the fsyncs that make its entry durable, as if this
/// writer had renamed it; `None` if it has not (blocking: run it as a job). Segment indexes
/// are not looked for: only object-store engines write them, and bytes published beside one
/// would be the same bytes.
///
/// Bytes already there may be another writer's that it renamed into place a moment ago and is
/// still fsyncing the directory of: nothing may be acknowledged on them until an fsync of
/// their directory (and of the parent of a directory not yet durable) that began after this
/// check has completed. It is shared with that writer's, if it is still queued.
fn in_place(
    fs: &dyn FileSystem,
    syncer: &Arc<DirSyncer>,
    root: &Path,
    target: &Path,
) -> Result<Option<(group::NewDirs, group::Joined)>> {
    match fs.metadata(target) {
        Ok(_) => {}
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(failed("reading", target)(e)),
    }
    // Makes nothing: names the directories another writer made and has not made durable.
    let (parent, new) = blob_dirs(syncer, root, target)?;
    sync_entry(syncer, new, parent, target).map(Some)
}

/// Makes the directory of a blob's `target` and any missing above it; returns it, and what
/// must be fsynced for them to be durable (see [`DirSyncer::make_dirs`]).
fn blob_dirs<'a>(
    syncer: &DirSyncer,
    root: &Path,
    target: &'a Path,
) -> Result<(&'a Path, group::NewDirs)> {
    let parent = target.parent().ok_or_else(|| Error::Corrupt {
        key: target.display().to_string(),
        reason: "blob path has no parent".to_owned(),
    })?;
    let new = syncer
        .make_dirs(root, parent)
        .map_err(failed("creating", parent))?;
    Ok((parent, new))
}

/// Hashes the first `size` bytes of a staging file again, under every hash a session keeps
/// once it has been asked for SHA-512. Runs as a job per step, so a long re-read holds no
/// thread for longer than one step.
async fn rehash(fs: &Arc<dyn FileSystem>, guard: &Guard, data: &Path, size: u64) -> Result<Hashes> {
    let file = {
        let (fs, data) = (Arc::clone(fs), data.to_path_buf());
        job(guard, move || {
            fs.open_read(&data).map_err(failed("opening", &data))
        })
        .await?
    };
    let mut hashes = Hashes::for_algorithm(Algorithm::Sha512);
    let mut position = 0;
    while position < size {
        let n = (size - position).min(READ_STEP * 8);
        let (file, what) = (Arc::clone(&file), context("reading", data));
        hashes = job(guard, move || {
            let mut buf = vec![0; usize::try_from(n).unwrap_or(usize::MAX)];
            file.read_exact_at(&mut buf, position)
                .map_err(|e| Error::io(what, e))?;
            hashes.update(&buf);
            Ok(hashes)
        })
        .await?;
        position += n;
    }
    Ok(hashes)
}

impl FsEngine {
    /// The engine over `root`; `syncer` shares its directory fsyncs with the store's other
    /// writers (links, manifests) over the same `fs`.
    pub(crate) fn new(root: PathBuf, fs: Arc<dyn FileSystem>, syncer: Arc<DirSyncer>) -> Self {
        Self {
            root,
            fs,
            syncer,
            recent: recent::Recent::default(),
        }
    }

    fn local(&self, key: &object_store::path::Path) -> PathBuf {
        local_path(&self.root, key)
    }

    fn paths(&self, store: &Store, id: &UploadId) -> Paths {
        let keys = store.keys();
        Paths {
            dir: self.local(&keys.upload_prefix(id.as_str())),
            state: self.local(&keys.upload_state(id.as_str())),
            data: self.local(&keys.upload_data(id.as_str())),
            lock: self.local(&keys.upload_lock(id.as_str())),
        }
    }

    /// Tries the session's lock once.
    async fn try_lock(&self, paths: &Paths) -> Result<LockAttempt> {
        let (fs, lock) = (Arc::clone(&self.fs), paths.lock.clone());
        job(&Guard::none(), move || {
            fs.try_lock(&lock).map_err(failed("locking", &lock))
        })
        .await
    }

    /// Tries the session's lock once and, if it is taken, runs `then` under it in the same
    /// job: one trip to the blocking pool for both (on an append's critical path).
    /// `Ok(None)` if another holder has it.
    async fn try_lock_then<T: Send + 'static>(
        &self,
        paths: &Paths,
        id: &UploadId,
        then: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<Option<(Guard, T)>> {
        let (fs, lock, id) = (Arc::clone(&self.fs), paths.lock.clone(), id.clone());
        let attempt = job(&Guard::none(), move || {
            match fs.try_lock(&lock).map_err(failed("locking", &lock))? {
                LockAttempt::Held(held) => {
                    let guard = Guard::holding(held);
                    // On an error the guard goes, and with it the lock.
                    Ok(Some((guard, then())))
                }
                LockAttempt::Busy => Ok(None),
                LockAttempt::Missing => Err(Error::BlobUploadUnknown { id: id.to_string() }),
            }
        })
        .await?;
        match attempt {
            Some((guard, out)) => Ok(Some((guard, out?))),
            None => Ok(None),
        }
    }

    /// Takes the session's lock without waiting for another holder, and runs `then` under it.
    ///
    /// # Errors
    /// [`Error::BlobUploadUnknown`] if the session is gone; `busy` if the lock is held;
    /// `then`'s.
    async fn lock_now_then<T: Send + 'static>(
        &self,
        paths: &Paths,
        id: &UploadId,
        busy: impl Fn() -> Error,
        then: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<(Guard, T)> {
        self.try_lock_then(paths, id, then).await?.ok_or_else(busy)
    }

    /// Takes the session's lock, waiting (up to `limit`, if given) while another holder has
    /// it, and runs `then` under it. Polled rather than blocking, so waiting holds no thread,
    /// and a caller that gives up (drops the future) stops waiting at once.
    /// Locks the session for an append at `offset` and opens it. Appends are serialized: one
    /// that races another waits for it, then checks its offset against the one the other
    /// left, so the refusal names the real current offset.
    async fn lock_for_append(
        &self,
        repo: &Repository,
        paths: &Paths,
        id: &UploadId,
        offset: Option<u64>,
    ) -> Result<(Guard, Appending)> {
        let (fs, p, i, name) = (
            Arc::clone(&self.fs),
            paths.clone(),
            id.clone(),
            repo.name().clone(),
        );
        let open = move || open_for_append(&*fs, &p, &i, &name, offset);
        self.lock_waiting_then(paths, id, None, open).await
    }

    async fn lock_waiting_then<T: Send + 'static>(
        &self,
        paths: &Paths,
        id: &UploadId,
        limit: Option<Duration>,
        then: impl FnOnce() -> Result<T> + Clone + Send + 'static,
    ) -> Result<(Guard, T)> {
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        let mut pause = LOCK_POLL;
        loop {
            if let Some(taken) = self.try_lock_then(paths, id, then.clone()).await? {
                return Ok(taken);
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Err(Error::BlobUploadInvalid {
                    reason: format!("upload {id} is receiving a chunk; try again after it"),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
    }

    /// What reads a session's state, for [`Self::lock_now_then`] and
    /// [`Self::lock_waiting_then`] to run under the lock.
    fn opener(
        &self,
        paths: &Paths,
        id: &UploadId,
    ) -> impl FnOnce() -> Result<Opened> + Clone + Send + 'static {
        let (fs, paths, id) = (Arc::clone(&self.fs), paths.clone(), id.clone());
        move || open_state(&*fs, &paths, &id)
    }

    /// Reads the session's state; under its lock when `guard` holds it.
    async fn open_state(&self, paths: &Paths, id: &UploadId, guard: &Guard) -> Result<Opened> {
        let (fs, paths, id) = (Arc::clone(&self.fs), paths.clone(), id.clone());
        job(guard, move || open_state(&*fs, &paths, &id)).await
    }

    /// Ends a session under its lock, in one job: moves its directory into the trash in one
    /// rename (from then on its path is gone for everyone), then deletes it there. A crash
    /// after the rename leaves the trash to the next purge; one before it leaves the session
    /// whole.
    async fn end_session(
        &self,
        store: &Store,
        paths: &Paths,
        id: &UploadId,
        guard: Guard,
    ) -> Result<()> {
        let nonce = format!("{:016x}", rand::random::<u64>());
        let trash = self.local(&store.keys().upload_trash(id.as_str(), &nonce));
        let fs = Arc::clone(&self.fs);
        let dir = paths.dir.clone();
        job(&guard, move || {
            let mut moved = fs.rename(&dir, &trash);
            if let (Err(e), Some(parent)) = (&moved, trash.parent())
                && not_found(e)
                && fs.metadata(&dir).is_ok()
            {
                // The first session ended in this store: no trash directory yet.
                fs.create_dir_all(parent)
                    .map_err(failed("creating", parent))?;
                moved = fs.rename(&dir, &trash);
            }
            match moved {
                Ok(()) => {}
                Err(e) if not_found(&e) => return Ok(()),
                Err(e) => return Err(failed("moving to the trash", &dir)(e)),
            }
            // Nobody can reach the session now: deleting it under the lock delays no one.
            match fs.remove_dir_all(&trash) {
                Ok(()) => Ok(()),
                Err(e) if not_found(&e) => Ok(()),
                Err(e) => Err(failed("deleting", &trash)(e)),
            }
        })
        .await
    }

    /// Ends a session whose blob is published: what is left is only its state, so a failure
    /// is logged, not reported (the client must not get an error for a stored blob); the
    /// purger deletes what is left.
    async fn end_published(&self, store: &Store, paths: &Paths, id: &UploadId, guard: Guard) {
        if let Err(e) = self.end_session(store, paths, id, guard).await {
            tracing::warn!(upload = %id, error = %e, "committed session not deleted; the purger will");
        }
    }

    /// Publishes the staging file as `digest` unless the store has it already, in one job:
    /// the check, the rename and the directory fsyncs (see [`in_place`] for bytes already
    /// there).
    async fn publish(
        &self,
        store: &Store,
        paths: &Paths,
        digest: &Digest,
        size: u64,
        guard: &Guard,
    ) -> Result<()> {
        let target = self.local(&store.keys().blob_data(digest));
        let (fs, syncer) = (Arc::clone(&self.fs), Arc::clone(&self.syncer));
        let (root, data) = (self.root.clone(), paths.data.clone());
        let what = context("fsyncing the directories of", &target);
        let (new, joined) = job(guard, move || {
            match in_place(&*fs, &syncer, &root, &target)? {
                Some(there) => Ok(there),
                None => rename_into_place(&*fs, &syncer, &root, &data, &target, size),
            }
        })
        .await?;
        joined.wait().await.map_err(|e| Error::io(what, e))?;
        self.syncer.made_durable(&new);
        Ok(())
    }

    /// Whether the store has `digest`'s bytes; if so, returns once they are durable (see
    /// [`in_place`]).
    async fn durably_stored(&self, store: &Store, digest: &Digest) -> Result<bool> {
        let target = self.local(&store.keys().blob_data(digest));
        let (fs, syncer, root) = (
            Arc::clone(&self.fs),
            Arc::clone(&self.syncer),
            self.root.clone(),
        );
        let what = context("fsyncing the directories of", &target);
        let Some((new, joined)) = job(&Guard::none(), move || {
            in_place(&*fs, &syncer, &root, &target)
        })
        .await?
        else {
            return Ok(false);
        };
        joined.wait().await.map_err(|e| Error::io(what, e))?;
        self.syncer.made_durable(&new);
        Ok(true)
    }

    /// One purge decision, under the session's lock: the bytes freed, `None` if kept.
    async fn purge_one(
        &self,
        store: &Store,
        id: &UploadId,
        now: SystemTime,
        options: PurgeOptions,
    ) -> Result<Option<u64>> {
        let paths = self.paths(store, id);
        let guard = match self.try_lock(&paths).await? {
            LockAttempt::Held(held) => Guard::holding(held),
            // In use (an append, commit or cancel), or gone meanwhile.
            LockAttempt::Busy | LockAttempt::Missing => return Ok(None),
        };
        let state = match self.open_state(&paths, id, &guard).await {
            Ok(opened) => Some(opened.record.state),
            Err(Error::BlobUploadUnknown { .. } | Error::Corrupt { .. }) => None,
            Err(e) => return Err(e),
        };
        let (fs, p) = (Arc::clone(&self.fs), paths.clone());
        let (newest, freed) = job(&guard, move || {
            let info = |path: &Path| match fs.metadata(path) {
                Ok(info) => Ok(Some(info)),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(failed("reading", path)(e)),
            };
            let data = info(&p.data)?;
            let newest = [info(&p.state)?, data, info(&p.dir)?]
                .into_iter()
                .flatten()
                .map(|i| i.modified)
                .max();
            Ok((newest, data.map_or(0, |d| d.len)))
        })
        .await?;
        // Without readable state (a start that crashed), the files' own times decide.
        let idle = match (&state, newest) {
            (Some(s), _) => s.idle(now),
            (None, Some(t)) => now.duration_since(t).unwrap_or_default(),
            (None, None) => Duration::MAX,
        };
        if idle <= options.older_than {
            return Ok(None);
        }
        if !options.dry_run {
            self.end_session(store, &paths, id, guard).await?;
        }
        Ok(Some(freed))
    }

    /// Deletes what ended sessions left in the trash (a crash between moving and deleting).
    async fn empty_trash(&self, store: &Store, report: &mut PurgeReport) {
        let trash = self.local(&store.keys().upload_trash_prefix());
        let fs = Arc::clone(&self.fs);
        let emptied = job(&Guard::none(), move || {
            let names = match fs.read_dir(&trash) {
                Ok(names) => names,
                Err(e) if not_found(&e) => return Ok(vec![]),
                Err(e) => return Err(failed("listing", &trash)(e)),
            };
            Ok(names
                .into_iter()
                .filter_map(|name| {
                    let dir = trash.join(&name);
                    match fs.remove_dir_all(&dir) {
                        Ok(()) => None,
                        Err(e) if not_found(&e) => None,
                        Err(e) => Some(format!("trash/{name}: {}", failed("deleting", &dir)(e))),
                    }
                })
                .collect::<Vec<_>>())
        })
        .await;
        match emptied {
            Ok(errors) => report.errors.extend(errors),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
}

#[async_trait]
impl UploadEngine for FsEngine {
    /// Creates the session without fsyncing anything: a session that holds no acknowledged
    /// byte loses nothing if a crash forgets it (the client's next request gets
    /// `BLOB_UPLOAD_UNKNOWN` and starts over). The first append makes it durable. This saves
    /// four fsyncs per upload.
    async fn start(&self, store: &Store, repository: &RepositoryName) -> Result<UploadStatus> {
        let id = UploadId::random();
        let session = Session::new(repository.clone());
        let status = session.status(&id);
        let paths = self.paths(store, &id);
        let (_, file) = Record::encode_file(session, &paths.state_key())?;
        let fs = Arc::clone(&self.fs);
        job(&Guard::none(), move || {
            fs.create_dir_all(&paths.dir)
                .map_err(failed("creating", &paths.dir))?;
            let state = fs
                .create(&paths.state)
                .map_err(failed("creating", &paths.state))?;
            state
                .write_at(&[Bytes::from(file)], 0)
                .map_err(failed("writing", &paths.state))?;
            fs.create(&paths.data)
                .map_err(failed("creating", &paths.data))?;
            Ok(())
        })
        .await?;
        Ok(status)
    }

    async fn status(&self, store: &Store, id: &UploadId) -> Result<UploadStatus> {
        let paths = self.paths(store, id);
        let opened = self.open_state(&paths, id, &Guard::none()).await?;
        Ok(opened.record.state.status(id))
    }

    async fn append(
        &self,
        repo: &Repository,
        id: &UploadId,
        offset: u64,
        chunk: ChunkStream<'_>,
    ) -> Result<UploadStatus> {
        let paths = self.paths(repo.store(), id);
        let (
            guard,
            Appending {
                opened,
                data,
                hashes,
            },
        ) = self.lock_for_append(repo, &paths, id, Some(offset)).await?;
        let durable = make_durable(
            &self.syncer,
            Arc::clone(&opened.state_file),
            &paths,
            offset == 0,
            &guard,
        );
        let written = writer::write_and_hash(
            data,
            &paths.data,
            offset,
            hashes,
            chunk,
            &guard,
            &self.recent,
        );
        let (written, durable) = tokio::join!(written, durable);
        // The bytes are durable before the record that covers them is written.
        let written = written?;
        durable?;

        let mut session = opened.record.state.clone();
        session.advance(written.len, &written.hashes);
        let status = session.status(id);
        let next = opened.record.next(session);
        let (fs, p) = (Arc::clone(&self.fs), paths.clone());
        job(&guard, move || {
            write_record(&*fs, &*opened.state_file, &p, &opened.record, &next)
        })
        .await?;
        Ok(status)
    }

    async fn commit(
        &self,
        repo: &Repository,
        id: &UploadId,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        let store = repo.store();
        let paths = self.paths(store, id);
        let busy = || Error::BlobUploadInvalid {
            reason: format!("upload {id} is receiving a chunk; commit after it"),
        };
        let open = self.opener(&paths, id);
        let (guard, opened) = self.lock_now_then(&paths, id, busy, open).await?;
        let session = opened.record.state.clone();
        session.check_repository(repo.name(), id)?;
        let size = session.offset;
        let actual = match session.digest(expected.algorithm()) {
            Some(digest) => digest,
            None => {
                // The first commit under a digest the session does not keep (SHA-512), or a
                // hash state this build cannot read: hash the stored bytes once, and keep the
                // hashes, so that no later commit or append of the session reads them again.
                let hashes = rehash(&self.fs, &guard, &paths.data, size).await?;
                let mut rehashed = session.clone();
                rehashed.set_hashes(&hashes);
                let next = opened.record.next(rehashed);
                let (fs, p) = (Arc::clone(&self.fs), paths.clone());
                let (file, record) = (Arc::clone(&opened.state_file), opened.record.clone());
                job(&guard, move || {
                    write_record(&*fs, &*file, &p, &record, &next)
                })
                .await?;
                hashes
                    .digest(expected.algorithm())
                    .ok_or_else(|| Error::io("re-hashing", std::io::Error::other("no hash")))?
            }
        };
        verify(&actual, size, expected, expected_size)?;
        self.publish(store, &paths, expected, size, &guard).await?;
        repo.link_blob(expected, CachedBlob::object(size)).await?;
        self.end_published(store, &paths, id, guard).await;
        Ok(published(expected, size))
    }

    /// The last chunk and the commit in one step, under one hold of the session's lock: the
    /// chunk is written and fdatasynced as by an append, and if its digest matches it is
    /// published straight away. No record is written and no session fsync made: the session
    /// ends here, and until the blob is published and linked nothing was acknowledged (a
    /// crash leaves the session at its old offset, bytes past it ignored). Otherwise — a
    /// mismatch, or a digest the session does not keep — the chunk is kept as an append keeps
    /// it, then the ordinary commit path answers.
    async fn finish(
        &self,
        repo: &Repository,
        id: &UploadId,
        offset: Option<u64>,
        chunk: ChunkStream<'_>,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        let store = repo.store();
        let paths = self.paths(store, id);
        let (
            guard,
            Appending {
                opened,
                data,
                hashes,
            },
        ) = self.lock_for_append(repo, &paths, id, offset).await?;
        let offset = opened.record.state.offset;
        let written = writer::write_and_hash(
            data,
            &paths.data,
            offset,
            hashes,
            chunk,
            &guard,
            &self.recent,
        )
        .await?;
        let mut session = opened.record.state.clone();
        session.advance(written.len, &written.hashes);
        let size = session.offset;
        let verified = session
            .digest(expected.algorithm())
            .map(|actual| verify(&actual, size, expected, expected_size));
        if let Some(Ok(())) = verified {
            self.publish(store, &paths, expected, size, &guard).await?;
            repo.link_blob(expected, CachedBlob::object(size)).await?;
            self.end_published(store, &paths, id, guard).await;
            return Ok(published(expected, size));
        }
        // Keep the chunk, as an append would have.
        make_durable(
            &self.syncer,
            Arc::clone(&opened.state_file),
            &paths,
            offset == 0,
            &guard,
        )
        .await?;
        let next = opened.record.next(session);
        let (fs, p) = (Arc::clone(&self.fs), paths.clone());
        job(&guard, move || {
            write_record(&*fs, &*opened.state_file, &p, &opened.record, &next)
        })
        .await?;
        drop(guard);
        match verified {
            Some(Err(e)) => Err(e),
            _ => self.commit(repo, id, expected, expected_size).await,
        }
    }

    async fn cancel(&self, repo: &Repository, id: &UploadId) -> Result<()> {
        let paths = self.paths(repo.store(), id);
        let open = self.opener(&paths, id);
        let (guard, opened) = self
            .lock_waiting_then(&paths, id, Some(CANCEL_WAIT), open)
            .await?;
        opened.record.state.check_repository(repo.name(), id)?;
        self.end_session(repo.store(), &paths, id, guard).await
    }

    /// A whole blob from one stream, in a session directory of its own (locked, so no purge
    /// deletes it underneath), but without a state file: written while it is hashed,
    /// verified, fsynced and renamed into place. A crash leaves only the directory, which the
    /// purger removes.
    async fn put_stream(
        &self,
        repo: &Repository,
        expected: &Digest,
        expected_size: Option<u64>,
        data: ChunkStream<'_>,
    ) -> Result<BlobInfo> {
        let store = repo.store();
        let id = UploadId::random();
        let paths = self.paths(store, &id);
        {
            let (fs, dir) = (Arc::clone(&self.fs), paths.dir.clone());
            job(&Guard::none(), move || {
                fs.create_dir_all(&dir).map_err(failed("creating", &dir))
            })
            .await?;
        }
        let (fs, staging) = (Arc::clone(&self.fs), paths.data.clone());
        let create = move || fs.create(&staging).map_err(failed("creating", &staging));
        let busy = || Error::io("locking a new upload", std::io::Error::other("busy"));
        let (guard, file) = self.lock_now_then(&paths, &id, busy, create).await?;
        let result = async {
            let hashes = Hashes::for_algorithm(expected.algorithm());
            let written =
                writer::write_and_hash(file, &paths.data, 0, hashes, data, &guard, &self.recent)
                    .await?;
            let actual = written
                .hashes
                .digest(expected.algorithm())
                .ok_or_else(|| Error::io("hashing", std::io::Error::other("no hash")))?;
            verify(&actual, written.len, expected, expected_size)?;
            self.publish(store, &paths, expected, written.len, &guard)
                .await?;
            repo.link_blob(expected, CachedBlob::object(written.len))
                .await?;
            Ok(published(expected, written.len))
        }
        .await;
        self.end_published(store, &paths, &id, guard).await;
        result
    }

    async fn put_bytes(
        &self,
        repo: &Repository,
        expected: &Digest,
        data: Bytes,
    ) -> Result<BlobInfo> {
        let size = data.len() as u64;
        if self.durably_stored(repo.store(), expected).await? {
            expected.verify(&data)?;
            repo.link_blob(expected, CachedBlob::object(size)).await?;
            return Ok(published(expected, size));
        }
        // Hashes while it writes, then verifies before it publishes.
        let stream = futures::stream::once(async move { Ok(data) }).boxed();
        self.put_stream(repo, expected, Some(size), stream).await
    }

    async fn purge(&self, store: &Store, options: PurgeOptions) -> Result<PurgeReport> {
        let mut report = PurgeReport::default();
        self.empty_trash(store, &mut report).await;
        let uploads = self.local(&store.keys().uploads_prefix());
        let fs = Arc::clone(&self.fs);
        let names = job(&Guard::none(), move || match fs.read_dir(&uploads) {
            Ok(names) => Ok(names),
            Err(e) if not_found(&e) => Ok(vec![]),
            Err(e) => Err(failed("listing", &uploads)(e)),
        })
        .await?;
        let now = SystemTime::now();
        purge::sweep(&mut report, names, |id| async move {
            self.purge_one(store, &id, now, options).await
        })
        .await;
        Ok(report)
    }

    async fn write_in_order(
        &self,
        _store: &Store,
        writes: Vec<(object_store::path::Path, Bytes)>,
    ) -> Result<()> {
        let (count, started) = (writes.len(), std::time::Instant::now());
        let files = writes
            .into_iter()
            .map(|(key, bytes)| (self.local(&key), vec![bytes]))
            .collect();
        let written = self.syncer.write_files_in_order(&self.root, files).await;
        // Counted as the puts they replace, each timed to the end of all of them.
        let outcome = if written.is_ok() { "ok" } else { "error" };
        for _ in 0..count {
            crate::metrics::backend_request("put", outcome, started.elapsed());
        }
        written.map_err(|e| crate::backend::local::write_error(e).into())
    }

    async fn read_object(
        &self,
        _store: &Store,
        key: &object_store::path::Path,
        range: Option<std::ops::Range<u64>>,
        digest: &Digest,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let path = self.local(key);
        let fs = Arc::clone(&self.fs);
        let opened = {
            let path = path.clone();
            job(&Guard::none(), move || match fs.open_read(&path) {
                Ok(file) => {
                    let len = file.size().map_err(failed("reading", &path))?;
                    Ok(Some((file, len)))
                }
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(failed("opening", &path)(e)),
            })
            .await?
        };
        let Some((file, len)) = opened else {
            return Err(Error::BlobUnknown { digest: *digest });
        };
        let range = range.unwrap_or(0..len);
        let path: Arc<Path> = Arc::from(path);
        // The next step is read while the last one is sent: reading and sending take turns
        // otherwise, and the socket runs dry while the disk (or page cache) is read.
        let steps = (range.start..range.end)
            .step_by(usize::try_from(READ_STEP).unwrap_or(usize::MAX))
            .map(move |position| (position, (range.end - position).min(READ_STEP)));
        let stream = futures::stream::iter(steps)
            .map(move |(position, n)| {
                let (file, path) = (Arc::clone(&file), Arc::clone(&path));
                async move {
                    job(&Guard::none(), move || {
                        file.read_bytes_at(position, usize::try_from(n).unwrap_or(usize::MAX))
                            .map_err(failed("reading", &path))
                    })
                    .await
                }
            })
            .buffered(READ_AHEAD + 1);
        Ok(stream.boxed())
    }
}
