//! The filesystem engine's seam wrapped like [`FaultyStore`] wraps an object store: every call
//! that changes the disk is a write, every call that looks at it a read, numbered in one
//! sequence with the object-store requests of the same [`FaultyStore`] (a filesystem store
//! makes both: links and manifests through `object_store`'s `LocalFileSystem`, uploads through
//! the engine). So the crash and fault suites fail or crash the filesystem store that
//! production runs, call by call.
//!
//! | call | counts as |
//! | --- | --- |
//! | `create_dir_all`, `create`, `try_lock` (it may create the lock file), `rename`, `sync_dir`, `remove_file`, `remove_dir_all` | 1 write |
//! | on an open file: `write_at`, `sync_data`, `set_len` | 1 write |
//! | `open`, `open_read`, `read_dir`, `metadata`; on an open file: `read_exact_at`, `size` | 1 read |
//!
//! The hints (`start_writeback`, `drop_cache`) are not counted: they change nothing a crash
//! could observe. An injected fault fails the call before it reaches the disk, so a crash
//! leaves exactly what the calls before it did (a process crash: the page cache survives) —
//! except a `fail_after_nth` fault, which makes the call and then reports it failed.

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use layerstore::upload::{FileHandle, FileInfo, FileSystem, LockAttempt, StdFileSystem};

use super::faulty::{FaultState, FaultyStore, Injected};

/// A [`FileSystem`] that fails the calls its [`FaultyStore`] plans.
#[derive(Debug)]
pub struct FaultyFs {
    inner: Arc<dyn FileSystem>,
    state: Arc<FaultState>,
}

impl FaultyFs {
    /// The real file system, numbered and failed along with `store`'s requests.
    pub fn sharing(store: &FaultyStore) -> Self {
        Self {
            inner: Arc::new(StdFileSystem),
            state: store.state(),
        }
    }

    /// Numbers a write, fails it if planned, holds it if paused; returns the failure to report
    /// after making it, if one is planned so (see [`after`]).
    fn write(&self, op: &str, path: &Path) -> io::Result<Option<io::Error>> {
        let (n, lost) = self
            .state
            .write_check(op, &path.display().to_string())
            .map_err(failure)?;
        // Called on a blocking-pool thread: waiting here holds only that job.
        while self.state.holds(n) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(lost.map(failure))
    }

    fn read(&self, op: &str, path: &Path) -> io::Result<()> {
        self.state
            .read_check(op, &path.display().to_string())
            .map_err(failure)
    }

    fn wrap(&self, file: Arc<dyn FileHandle>, path: &Path) -> Arc<dyn FileHandle> {
        Arc::new(FaultyFile {
            inner: file,
            fs: FaultyFs {
                inner: Arc::clone(&self.inner),
                state: Arc::clone(&self.state),
            },
            path: path.to_path_buf(),
        })
    }
}

fn failure(Injected(message): Injected) -> io::Error {
    io::Error::other(message)
}

/// The result of a call that was made: its own, or, if its reply is planned to be lost, the
/// injected failure (unless the call failed by itself).
fn after<T>(result: io::Result<T>, lost: Option<io::Error>) -> io::Result<T> {
    match (result, lost) {
        (Ok(_), Some(e)) => Err(e),
        (result, _) => result,
    }
}

impl FileSystem for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let lost = self.write("create_dir_all", dir)?;
        after(self.inner.create_dir_all(dir), lost)
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let lost = self.write("create_dir", dir)?;
        after(self.inner.create_dir(dir), lost)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let lost = self.write("create", path)?;
        let file = after(self.inner.create(path), lost)?;
        Ok(self.wrap(file, path))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        self.read("open", path)?;
        Ok(self.wrap(self.inner.open(path)?, path))
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        self.read("open_read", path)?;
        Ok(self.wrap(self.inner.open_read(path)?, path))
    }

    fn try_lock(&self, path: &Path) -> io::Result<LockAttempt> {
        let lost = self.write("try_lock", path)?;
        after(self.inner.try_lock(path), lost)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let lost = self.write("rename", to)?;
        after(self.inner.rename(from, to), lost)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let lost = self.write("sync_dir", dir)?;
        after(self.inner.sync_dir(dir), lost)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let lost = self.write("remove_file", path)?;
        after(self.inner.remove_file(path), lost)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let lost = self.write("remove_dir_all", dir)?;
        after(self.inner.remove_dir_all(dir), lost)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.read("read_dir", dir)?;
        self.inner.read_dir(dir)
    }

    fn metadata(&self, path: &Path) -> io::Result<FileInfo> {
        self.read("metadata", path)?;
        self.inner.metadata(path)
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn FileHandle>,
    fs: FaultyFs,
    path: std::path::PathBuf,
}

impl FileHandle for FaultyFile {
    fn write_at(&self, pieces: &[Bytes], offset: u64) -> io::Result<()> {
        let lost = self.fs.write("write_at", &self.path)?;
        after(self.inner.write_at(pieces, offset), lost)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.fs.read("read_exact_at", &self.path)?;
        self.inner.read_exact_at(buf, offset)?;
        self.fs
            .state
            .file_bytes_read
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let lost = self.fs.write("sync_data", &self.path)?;
        after(self.inner.sync_data(), lost)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let lost = self.fs.write("set_len", &self.path)?;
        after(self.inner.set_len(len), lost)
    }

    fn size(&self) -> io::Result<u64> {
        self.fs.read("size", &self.path)?;
        self.inner.size()
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        self.inner.start_writeback(offset, len);
    }

    fn drop_cache(&self, offset: u64, len: u64) {
        self.inner.drop_cache(offset, len);
    }
}
