//! Uploads on the filesystem: a staging file per session, appended and fsynced per chunk,
//! renamed into the blob's place on commit; the session state in a two-slot file beside it.
//!
//! Durability of an append rests on one ordering: a state record is written only after the
//! bytes it covers are fsynced. So any record that survives a crash covers durable bytes, and
//! a resumed session never hashes or publishes a byte that was lost. The record itself is
//! fsynced by the next append, off that append's critical path, so a power loss can roll a
//! session back by its last append — the client is told the offset and sends the chunk again —
//! but never further, and never to a state that names bytes the disk does not have.

mod state;
mod writer;

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;
use sha2::Digest as _;
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};

use self::state::Record;
use self::writer::Batches;
use super::{ChunkStream, HashState, SessionState, UploadId, UploadStatus, published, verify};
use crate::digest::{Algorithm, Digest, DigestHasher};
use crate::error::{Error, Result};
use crate::name::RepositoryName;
use crate::store::{BlobInfo, Repository, Store};

/// The local paths of one session.
#[derive(Clone)]
struct Paths {
    dir: PathBuf,
    state: PathBuf,
    data: PathBuf,
    lock: PathBuf,
}

fn paths(store: &Store, root: &Path, id: &UploadId) -> Paths {
    let keys = store.keys();
    let local = |key: object_store::path::Path| root.join(key.as_ref());
    Paths {
        dir: local(keys.upload_prefix(id.as_str())),
        state: local(keys.upload_state(id.as_str())),
        data: local(keys.upload_data(id.as_str())),
        lock: local(keys.upload_lock(id.as_str())),
    }
}

fn root(store: &Store) -> Result<&Path> {
    store
        .backend()
        .local_root()
        .ok_or_else(|| Error::Unsupported {
            what: "filesystem uploads on a backend without a local directory".to_owned(),
        })
}

fn io(context: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let context = format!("{context} {}", path.display());
    move |e| Error::io(context, e)
}

/// Runs blocking filesystem work (fsync, rename) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("joining a filesystem task", std::io::Error::other(e)))?
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsyncing directory", dir))
}

impl Paths {
    /// The state file's name as errors report it.
    fn state_key(&self) -> String {
        self.state.display().to_string()
    }
}

/// Reads a session's current state record.
fn read_record(paths: &Paths, id: &UploadId) -> Result<Record> {
    let bytes = match std::fs::read(&paths.state) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::BlobUploadUnknown { id: id.to_string() });
        }
        Err(e) => return Err(io("reading", &paths.state)(e)),
    };
    Record::decode(&paths.state_key(), &bytes)
}

/// The state of a filesystem session, for status, cancel and purge.
///
/// # Errors
/// [`Error::BlobUploadUnknown`] if there is no such session; [`Error::Corrupt`] if neither
/// slot of its state file holds an intact record.
pub(super) async fn load_state(store: &Store, id: &UploadId) -> Result<SessionState> {
    let paths = paths(store, root(store)?, id);
    let id = id.clone();
    blocking(move || read_record(&paths, &id).map(|r| r.state)).await
}

/// Writes `next` into its slot. The first record after a legacy JSON state replaces the whole
/// file instead (fsynced, renamed, directory fsynced): overwriting the JSON in place could tear
/// the only record the session has.
fn write_record(file: &File, paths: &Paths, current: &Record, next: &Record) -> Result<()> {
    use std::os::unix::fs::FileExt;
    if current.slot.is_none() {
        let (_, bytes) = Record::encode_file(next.state.clone(), &paths.state_key())?;
        let tmp = paths.state.with_extension("tmp");
        let mut tmp_file = File::create(&tmp).map_err(io("creating", &tmp))?;
        std::io::Write::write_all(&mut tmp_file, &bytes).map_err(io("writing", &tmp))?;
        tmp_file.sync_data().map_err(io("fsyncing", &tmp))?;
        std::fs::rename(&tmp, &paths.state).map_err(io("publishing", &paths.state))?;
        return fsync_dir(&paths.dir);
    }
    let slot = next.encode(&paths.state_key())?;
    file.write_all_at(&slot, next.position())
        .map_err(io("writing", &paths.state))
}

/// Creates the session without fsyncing anything: a session that holds no acknowledged byte
/// loses nothing if a crash forgets it (the client's next request gets `BLOB_UPLOAD_UNKNOWN`
/// and starts over). The first append makes it durable. This saves four fsyncs per upload.
pub(super) async fn start(store: &Store, id: &UploadId, state: &SessionState) -> Result<()> {
    let paths = paths(store, root(store)?, id);
    let (_, file) = Record::encode_file(state.clone(), &paths.state_key())?;
    blocking(move || {
        std::fs::create_dir_all(&paths.dir).map_err(io("creating", &paths.dir))?;
        File::create(&paths.data).map_err(io("creating", &paths.data))?;
        std::fs::write(&paths.state, file).map_err(io("writing", &paths.state))
    })
    .await
}

/// Takes the session's append lock without waiting; `None` if another append holds it.
fn try_lock(paths: &Paths, id: &UploadId) -> Result<Option<File>> {
    let file = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&paths.lock)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::BlobUploadUnknown { id: id.to_string() });
        }
        Err(e) => return Err(io("opening", &paths.lock)(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(io("locking", &paths.lock)(e)),
    }
}

/// Takes the session's append lock, waiting while another append holds it. Polled rather than
/// blocking, so a caller that gives up (drops the future) stops waiting at once.
async fn lock_waiting(paths: &Paths, id: &UploadId) -> Result<File> {
    loop {
        if let Some(lock) = try_lock(paths, id)? {
            return Ok(lock);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A session opened for an append, under its lock.
struct Appending {
    state_file: File,
    current: Record,
    data: File,
    hasher: Sha256,
}

/// Reads the current record and checks the append against it, then opens the staging file at
/// the recorded offset: one trip to a blocking thread for all of it.
fn open_for_append(
    paths: &Paths,
    id: &UploadId,
    repository: &RepositoryName,
    offset: u64,
) -> Result<Appending> {
    let mut state_file = match OpenOptions::new().read(true).write(true).open(&paths.state) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::BlobUploadUnknown { id: id.to_string() });
        }
        Err(e) => return Err(io("opening", &paths.state)(e)),
    };
    let mut bytes = Vec::with_capacity(state::FILE_LEN);
    state_file
        .read_to_end(&mut bytes)
        .map_err(io("reading", &paths.state))?;
    let current = Record::decode(&paths.state_key(), &bytes)?;
    current.state.check_repository(repository, id)?;
    current.state.check_offset(offset)?;
    let Some(hasher) = current.state.hash.restore() else {
        return Err(Error::Corrupt {
            key: paths.state_key(),
            reason: "hash state written by another version; commit re-hashes, appends cannot"
                .to_owned(),
        });
    };
    let data = OpenOptions::new()
        .write(true)
        .open(&paths.data)
        .map_err(io("opening", &paths.data))?;
    let staged = data.metadata().map_err(io("reading", &paths.data))?.len();
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
            .map_err(io("truncating", &paths.data))?;
    }
    Ok(Appending {
        state_file,
        current,
        data,
        hasher,
    })
}

/// Makes the current record durable, and on a session's first append the session itself (its
/// files' directory entries and its directory's). Runs beside the chunk's write: the record
/// it syncs covers bytes that are already durable, and it must be durable before the next
/// record overwrites the other slot, so that a torn write can never take out both.
fn make_durable(state_file: &File, paths: &Paths, first: bool) -> Result<()> {
    state_file
        .sync_data()
        .map_err(io("fsyncing", &paths.state))?;
    if first {
        fsync_dir(&paths.dir)?;
        if let Some(uploads) = paths.dir.parent() {
            fsync_dir(uploads)?;
        }
    }
    Ok(())
}

pub(super) async fn append(
    repo: &Repository,
    id: &UploadId,
    offset: u64,
    mut chunk: ChunkStream<'_>,
) -> Result<UploadStatus> {
    let store = repo.store();
    let paths = paths(store, root(store)?, id);
    // Appends are serialized: one that races another waits for it, then checks its offset
    // against the one the other left, so the refusal names the real current offset. A session
    // of another repository is refused under the lock too (it changes nothing).
    let lock = lock_waiting(&paths, id).await?;
    let (mut batches, hasher_jobs, writer_jobs) = Batches::new();
    let job = {
        let (id, repository) = (id.clone(), repo.name().clone());
        blocking(move || {
            // Held until the record is written, whether or not the caller still waits.
            let _lock = lock;
            append_job(&paths, &id, &repository, offset, hasher_jobs, writer_jobs)
        })
    };
    // The chunk flows into the job's queues while the job reads the state and opens the
    // staging file. If the job stops taking it (a refusal or a failure), its result says why.
    let fed = async move {
        while let Some(bytes) = chunk.next().await {
            let bytes = bytes.map_err(|e| Error::io("receiving the chunk", e))?;
            if batches.push(bytes).await.is_err() {
                return Ok(());
            }
        }
        let _ = batches.finish().await;
        Ok::<_, Error>(())
    };
    tokio::pin!(job, fed);
    tokio::select! {
        // Before the chunk's end only a refusal or a failure ends the job: answer it at once,
        // without waiting for the rest of the chunk.
        done = &mut job => done,
        fed = &mut fed => {
            let done = job.await;
            fed?;
            done
        }
    }
}

/// One append, on a blocking thread under the session's lock: reads the current record,
/// checks the append against it, hashes the chunk here while another thread writes it, and
/// once the bytes are fsynced writes the next record. Each step is on this thread, so the
/// chunk's path crosses no thread boundary between its last byte and the record.
fn append_job(
    paths: &Paths,
    id: &UploadId,
    repository: &RepositoryName,
    offset: u64,
    hasher_jobs: mpsc::Receiver<writer::Batch>,
    writer_jobs: mpsc::Receiver<writer::WriteJob>,
) -> Result<UploadStatus> {
    let Appending {
        state_file,
        current,
        data,
        hasher,
    } = open_for_append(paths, id, repository, offset)?;
    let state_file = Arc::new(state_file);
    let durable = {
        let (file, paths) = (Arc::clone(&state_file), paths.clone());
        spawn_thread(move || make_durable(&file, &paths, offset == 0))
    };
    let written = {
        let path = paths.data.clone();
        spawn_thread(move || writer::write_batches(data, &path, offset, writer_jobs))
    };
    let hasher = writer::hash_batches(hasher, hasher_jobs);
    // The bytes are durable before the record that covers them is written.
    let size = joined(written)?;
    joined(durable)?;

    let mut state = current.state.clone();
    state.offset += size;
    state.last_active = Utc::now();
    state.hash = HashState::of(&hasher);
    let status = state.status(id);
    write_record(&state_file, paths, &current, &current.next(state))?;
    Ok(status)
}

/// Runs `f` on the blocking pool, for a blocking thread to wait for with [`joined`].
fn spawn_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> oneshot::Receiver<Result<T>> {
    let (tx, rx) = oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let _ = tx.send(f());
    });
    rx
}

/// Waits, on a blocking thread, for the result of [`spawn_thread`].
fn joined<T>(result: oneshot::Receiver<Result<T>>) -> Result<T> {
    result.blocking_recv().map_err(|_| {
        Error::io(
            "joining a filesystem task",
            std::io::Error::other("the task panicked"),
        )
    })?
}

/// A whole blob from one stream, without a session: written to a staging file while it is
/// hashed, verified, fsynced, and renamed into place. A crash leaves only a staging file,
/// which the upload purger removes.
pub(super) async fn put_stream(
    repo: &Repository,
    expected: &Digest,
    expected_size: Option<u64>,
    data: ChunkStream<'_>,
) -> Result<BlobInfo> {
    let store = repo.store();
    let root = root(store)?.to_path_buf();
    let id = UploadId::random();
    let paths = paths(store, &root, &id);
    let (dir, staging) = (paths.dir.clone(), paths.data.clone());
    let file = blocking(move || {
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        File::create(&staging).map_err(io("creating", &staging))
    })
    .await?;
    let result = async {
        let (hasher, size) = writer::write_and_hash(file, paths.data.clone(), data).await?;
        let actual = match expected.algorithm() {
            Algorithm::Sha256 => Digest::Sha256(hasher.finalize().into()),
            algorithm => {
                let data = paths.data.clone();
                blocking(move || rehash(&data, size, algorithm)).await?
            }
        };
        verify(&actual, size, expected, expected_size)?;
        if store.blob_size(expected).await?.is_none() {
            let target = root.join(store.keys().blob_data(expected).as_ref());
            let (data, root) = (paths.data.clone(), root.clone());
            blocking(move || publish(&root, &data, &target, size)).await?;
        }
        Ok(published(expected, size))
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&paths.dir).await;
    result
}

pub(super) async fn commit(
    repo: &Repository,
    id: &UploadId,
    expected: &Digest,
    expected_size: Option<u64>,
) -> Result<BlobInfo> {
    let store = repo.store();
    let root = root(store)?.to_path_buf();
    let paths = paths(store, &root, id);
    let Some(_lock) = try_lock(&paths, id)? else {
        return Err(Error::BlobUploadInvalid {
            reason: format!("upload {id} is receiving a chunk; commit after it"),
        });
    };
    let state = {
        let (paths, id) = (paths.clone(), id.clone());
        blocking(move || read_record(&paths, &id)).await?.state
    };
    state.check_repository(repo.name(), id)?;
    let actual = match (expected.algorithm(), state.hash.restore()) {
        (Algorithm::Sha256, Some(hasher)) => Digest::Sha256(hasher.finalize().into()),
        (algorithm, _) => {
            let data = paths.data.clone();
            let size = state.offset;
            blocking(move || rehash(&data, size, algorithm)).await?
        }
    };
    verify(&actual, state.offset, expected, expected_size)?;

    if store.blob_size(expected).await?.is_some() {
        // The store already has these bytes (dedupe, or a commit that crashed after publishing).
        return match tokio::fs::remove_file(&paths.data).await {
            Ok(()) => Ok(published(expected, state.offset)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(published(expected, state.offset))
            }
            Err(e) => Err(io("removing", &paths.data)(e)),
        };
    }
    let target = root.join(store.keys().blob_data(expected).as_ref());
    let (data, size) = (paths.data.clone(), state.offset);
    blocking(move || publish(&root, &data, &target, size)).await?;
    Ok(published(expected, state.offset))
}

/// Renames the staging file into the blob's place and makes the rename durable.
fn publish(root: &Path, data: &Path, target: &Path, size: u64) -> Result<()> {
    // Drop bytes past the offset left by an append that never finished.
    let file = OpenOptions::new()
        .write(true)
        .open(data)
        .map_err(io("opening", data))?;
    let staged = file.metadata().map_err(io("reading", data))?.len();
    if staged < size {
        // Never a crash's doing (a record is written after its bytes are fsynced); extending
        // the file would publish made-up bytes under the digest.
        return Err(Error::Corrupt {
            key: data.display().to_string(),
            reason: format!("{staged} bytes staged, but the upload state counts {size}"),
        });
    }
    if staged > size {
        file.set_len(size).map_err(io("truncating", data))?;
        file.sync_all().map_err(io("fsyncing", data))?;
    }
    let parent = target.parent().ok_or_else(|| Error::Corrupt {
        key: target.display().to_string(),
        reason: "blob path has no parent".to_owned(),
    })?;
    // New directories must be durable too: fsync each one's parent, from the top down.
    let mut missing = vec![];
    let mut dir = parent;
    while !dir.exists() && dir != root {
        missing.push(dir.to_path_buf());
        dir = dir.parent().unwrap_or(root);
    }
    std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    for created in missing.iter().rev() {
        if let Some(p) = created.parent() {
            fsync_dir(p)?;
        }
    }
    std::fs::rename(data, target).map_err(io("publishing", target))?;
    fsync_dir(parent)
}

/// Hashes the staged bytes again (first `size` bytes of the staging file).
fn rehash(data: &Path, size: u64, algorithm: Algorithm) -> Result<Digest> {
    use std::io::Read;
    let file = File::open(data).map_err(io("opening", data))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file.take(size));
    let mut buf = vec![0u8; 1 << 20];
    let mut hasher = DigestHasher::new(algorithm);
    loop {
        let n = reader.read(&mut buf).map_err(io("reading", data))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}
