//! Uploads on the filesystem: a staging file per session, appended and fsynced per chunk,
//! renamed into the blob's place on commit.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use chrono::Utc;
use futures::StreamExt;
use sha2::Digest as _;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{
    ChunkStream, HashState, SessionState, UploadId, UploadStatus, load, published, verify,
};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::store::{BlobInfo, Repository, Store};

/// The local paths of one session.
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

/// Replaces the state file atomically and durably: temp file, fsync, rename, fsync dir.
fn write_state(paths: &Paths, state: &SessionState) -> Result<()> {
    let tmp = paths.state.with_extension("tmp");
    std::fs::write(&tmp, state.encode()).map_err(io("writing", &tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("fsyncing", &tmp))?;
    std::fs::rename(&tmp, &paths.state).map_err(io("publishing", &paths.state))?;
    fsync_dir(&paths.dir)
}

pub(super) async fn start(store: &Store, id: &UploadId, state: &SessionState) -> Result<()> {
    let paths = paths(store, root(store)?, id);
    let state = state.clone();
    blocking(move || {
        std::fs::create_dir_all(&paths.dir).map_err(io("creating", &paths.dir))?;
        File::create(&paths.data)
            .and_then(|f| f.sync_all())
            .map_err(io("creating", &paths.data))?;
        write_state(&paths, &state)?;
        if let Some(parent) = paths.dir.parent() {
            fsync_dir(parent)?;
        }
        Ok(())
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

pub(super) async fn append(
    repo: &Repository,
    id: &UploadId,
    offset: u64,
    mut chunk: ChunkStream<'_>,
) -> Result<UploadStatus> {
    let store = repo.store();
    let paths = paths(store, root(store)?, id);
    let (state, _) = load(store, id).await?;
    state.check_repository(repo.name(), id)?;
    // Appends are serialized: one that races another waits for it, then checks its offset
    // against the one the other left, so the refusal names the real current offset.
    let _lock = lock_waiting(&paths, id).await?;
    let (mut state, _) = load(store, id).await?;
    state.check_offset(offset)?;
    let Some(mut hasher) = state.hash.restore() else {
        return Err(Error::Corrupt {
            key: paths.state.display().to_string(),
            reason: "hash state written by another version; commit re-hashes, appends cannot"
                .to_owned(),
        });
    };

    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(&paths.data)
        .await
        .map_err(io("opening", &paths.data))?;
    // Bytes past the persisted offset belong to an append that never finished: drop them.
    file.set_len(offset)
        .await
        .map_err(io("truncating", &paths.data))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(io("seeking", &paths.data))?;
    let mut size = 0u64;
    while let Some(bytes) = chunk.next().await {
        let bytes = bytes.map_err(|e| Error::io("receiving the chunk", e))?;
        hasher.update(&bytes);
        size += bytes.len() as u64;
        file.write_all(&bytes)
            .await
            .map_err(io("writing", &paths.data))?;
    }
    file.sync_data()
        .await
        .map_err(io("fsyncing", &paths.data))?;
    drop(file);

    state.offset += size;
    state.last_active = Utc::now();
    state.hash = HashState::of(&hasher);
    let status = state.status(id);
    blocking(move || write_state(&paths, &state)).await?;
    Ok(status)
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
    let (state, _) = load(store, id).await?;
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
    if file.metadata().map_err(io("reading", data))?.len() != size {
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
    let mut sha256 = sha2::Sha256::new();
    let mut sha512 = sha2::Sha512::new();
    loop {
        let n = reader.read(&mut buf).map_err(io("reading", data))?;
        if n == 0 {
            break;
        }
        match algorithm {
            Algorithm::Sha256 => sha256.update(&buf[..n]),
            Algorithm::Sha512 => sha512.update(&buf[..n]),
        }
    }
    Ok(match algorithm {
        Algorithm::Sha256 => Digest::Sha256(sha256.finalize().into()),
        Algorithm::Sha512 => Digest::Sha512(sha512.finalize().into()),
    })
}
