//! The file-system calls the filesystem upload engine makes, behind a narrow trait.
//!
//! Production uses [`StdFileSystem`]. Tests wrap it to count every call, fail any one of them,
//! or crash (fail it and every later one), so that the crash and fault suites run the engine
//! production runs, call by call (as redb's tests wrap its storage backend).
//!
//! Every method is a short, blocking system call (or a few): the engine runs them on tokio's
//! blocking pool, one job per call or small group of calls, and never holds a thread while it
//! waits for a client.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

/// An open file of the filesystem engine.
pub trait FileHandle: Send + Sync + fmt::Debug {
    /// Writes all of `pieces`, in order, starting at `offset`.
    ///
    /// # Errors
    /// The system call's.
    fn write_at(&self, pieces: &[Bytes], offset: u64) -> io::Result<()>;

    /// Fills `buf` from `offset`; an error if the file ends first.
    ///
    /// # Errors
    /// The system call's, or `UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// `len` bytes from `offset`, in a new buffer; an error if the file ends first.
    ///
    /// # Errors
    /// As [`Self::read_exact_at`].
    fn read_bytes_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let mut buf = vec![0; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }

    /// Makes the file's data durable (`fdatasync`).
    ///
    /// # Errors
    /// The system call's.
    fn sync_data(&self) -> io::Result<()>;

    /// Cuts or extends the file to `len` bytes.
    ///
    /// # Errors
    /// The system call's.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// The file's length.
    ///
    /// # Errors
    /// The system call's.
    fn size(&self) -> io::Result<u64>;

    /// A hint: start writing these bytes to disk now, without waiting. Never fails.
    fn start_writeback(&self, _offset: u64, _len: u64) {}

    /// A hint: these bytes are durable and will not be read soon; drop them from the page
    /// cache. Never fails.
    fn drop_cache(&self, _offset: u64, _len: u64) {}
}

/// What [`FileSystem::try_lock`] found.
pub enum LockAttempt {
    /// The lock is held until this value is dropped.
    Held(Box<dyn Send + Sync>),
    /// Another holder has it.
    Busy,
    /// The directory the lock file belongs in is gone (the session was deleted).
    Missing,
}

impl fmt::Debug for LockAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Held(_) => "Held",
            Self::Busy => "Busy",
            Self::Missing => "Missing",
        })
    }
}

/// A file's length and last modification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub len: u64,
    pub modified: SystemTime,
    pub is_dir: bool,
}

/// The file-system calls of the filesystem upload engine.
pub trait FileSystem: Send + Sync + fmt::Debug + 'static {
    /// Creates a directory and its missing parents.
    ///
    /// # Errors
    /// The system call's.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Creates one directory, its parent existing.
    ///
    /// # Errors
    /// The system call's (`AlreadyExists` if it is there, `NotFound` if its parent is not).
    fn create_dir(&self, dir: &Path) -> io::Result<()>;

    /// Creates a file (emptying an existing one), open for reading and writing.
    ///
    /// # Errors
    /// The system call's (`NotFound` if the directory is missing).
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>>;

    /// Opens an existing file for reading and writing.
    ///
    /// # Errors
    /// The system call's (`NotFound` if it does not exist).
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>>;

    /// Opens an existing file for reading.
    ///
    /// # Errors
    /// The system call's (`NotFound` if it does not exist).
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>>;

    /// Takes an exclusive lock on the file at `path` (created if missing, in an existing
    /// directory) without waiting. A lock is only ever granted on the file `path` names when
    /// it is granted: not on one that was removed or renamed away meanwhile.
    ///
    /// # Errors
    /// The system call's.
    fn try_lock(&self, path: &Path) -> io::Result<LockAttempt>;

    /// Renames a file or directory (atomically replacing a file at `to`).
    ///
    /// # Errors
    /// The system call's.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Makes a directory's entries durable.
    ///
    /// # Errors
    /// The system call's.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Removes a file.
    ///
    /// # Errors
    /// The system call's (`NotFound` if it does not exist).
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Removes a directory and everything in it.
    ///
    /// # Errors
    /// The system call's (`NotFound` if it does not exist).
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// The names of a directory's entries.
    ///
    /// # Errors
    /// The system call's (`NotFound` if it does not exist).
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// A file's or directory's length and modification time.
    ///
    /// # Errors
    /// The system call's (`NotFound` if it does not exist).
    fn metadata(&self, path: &Path) -> io::Result<FileInfo>;
}

/// The real file system, through `std::fs` (and, on Linux, `pwritev`, `sync_file_range` and
/// `posix_fadvise`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFileSystem;

#[derive(Debug)]
struct StdFile {
    file: std::fs::File,
}

impl FileHandle for StdFile {
    fn write_at(&self, pieces: &[Bytes], offset: u64) -> io::Result<()> {
        write_all_vectored_at(&self.file, pieces, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset)
    }

    /// Reads into a buffer that is not zeroed first: the zeroing was 7 % of a GET's CPU.
    #[cfg(target_os = "linux")]
    fn read_bytes_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        use std::os::fd::AsRawFd;
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let filled = buf.len();
            let at = i64::try_from(offset + filled as u64)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: pread writes at most `len - filled` bytes at the start of the vector's
            // spare capacity, which is that long and owned by `buf`; the bytes count as the
            // vector's only once the kernel says it wrote them.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    buf.as_mut_ptr().add(filled).cast(),
                    len - filled,
                    at,
                )
            };
            match n {
                0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                n => {
                    let n = usize::try_from(n).unwrap_or(0).min(len - filled);
                    // SAFETY: the kernel initialised these `n` bytes (above).
                    unsafe { buf.set_len(filled + n) };
                }
            }
        }
        Ok(Bytes::from(buf))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: a plain syscall on a file descriptor that `self.file` keeps open; no memory
        // is passed. Only a hint: a failure is ignored.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    #[cfg(target_os = "linux")]
    fn drop_cache(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: as above; only a hint.
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::POSIX_FADV_DONTNEED,
            );
        }
    }
}

/// `write_all_at` for a list of buffers, in as few `pwritev` calls as the kernel takes.
#[cfg(target_os = "linux")]
fn write_all_vectored_at(file: &std::fs::File, pieces: &[Bytes], offset: u64) -> io::Result<()> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    // At most IOV_MAX (1024 on Linux) buffers per call.
    const MAX_IOV: usize = 1024;
    let mut slices: Vec<IoSlice<'_>> = pieces
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut slices = &mut slices[..];
    let mut offset = offset;
    while !slices.is_empty() {
        let n = slices.len().min(MAX_IOV);
        let position = i64::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` (guaranteed by std); the slices
        // point into buffers that live for the whole call; the descriptor is open.
        let written = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr().cast::<libc::iovec>(),
                n as libc::c_int,
                position,
            )
        };
        match written {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n if n > 0 => {
                // Positive and at most the bytes passed: fits.
                let n = n as usize;
                offset += n as u64;
                IoSlice::advance_slices(&mut slices, n);
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn write_all_vectored_at(file: &std::fs::File, pieces: &[Bytes], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut offset = offset;
    for piece in pieces {
        file.write_all_at(piece, offset)?;
        offset += piece.len() as u64;
    }
    Ok(())
}

fn handle(file: std::fs::File) -> Arc<dyn FileHandle> {
    Arc::new(StdFile { file })
}

impl FileSystem for StdFileSystem {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map(handle)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(handle)
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        std::fs::File::open(path).map(handle)
    }

    fn try_lock(&self, path: &Path) -> io::Result<LockAttempt> {
        use std::os::unix::fs::MetadataExt;
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LockAttempt::Missing),
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(LockAttempt::Busy),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        // The file may have been renamed away (its session deleted) between our open and our
        // lock, by the holder we waited for: then the lock protects nothing.
        let locked = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {
                Ok(LockAttempt::Held(Box::new(file)))
            }
            Ok(_) => Ok(LockAttempt::Busy),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LockAttempt::Missing),
            Err(e) => Err(e),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(dir)?
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    fn metadata(&self, path: &Path) -> io::Result<FileInfo> {
        let meta = std::fs::metadata(path)?;
        Ok(FileInfo {
            len: meta.len(),
            modified: meta.modified()?,
            is_dir: meta.is_dir(),
        })
    }
}

/// A path and what was being done to it, for error messages.
pub(super) fn context(what: &str, path: &Path) -> String {
    format!("{what} {}", path.display())
}

/// `path` with `name` appended as a sibling's name: `dir/file` → `dir/file.tmp`.
pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_writes_land_at_their_offset_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let fs = StdFileSystem;
        let f = fs.create(&path).unwrap();
        let pieces: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; (i % 7) as usize]))
            .collect();
        f.write_at(&pieces, 5).unwrap();
        let want: Vec<u8> = pieces.concat();
        assert_eq!(f.size().unwrap(), 5 + want.len() as u64);
        let mut got = vec![0; want.len()];
        f.read_exact_at(&mut got, 5).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn reading_bytes_returns_exactly_the_range_and_refuses_one_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = StdFileSystem.open_read(&path).unwrap();
        assert_eq!(f.read_bytes_at(0, data.len()).unwrap(), data);
        assert_eq!(
            f.read_bytes_at(1_000_001, 5).unwrap(),
            data[1_000_001..1_000_006]
        );
        assert_eq!(f.read_bytes_at(7, 0).unwrap(), Bytes::new());
        let past = f.read_bytes_at(2_999_999, 2).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_lock_is_exclusive_and_refused_on_a_file_renamed_away() {
        let dir = tempfile::tempdir().unwrap();
        let session = dir.path().join("s");
        std::fs::create_dir(&session).unwrap();
        let lock = session.join("lock");
        let fs = StdFileSystem;
        let held = fs.try_lock(&lock).unwrap();
        assert!(matches!(held, LockAttempt::Held(_)));
        assert!(matches!(fs.try_lock(&lock).unwrap(), LockAttempt::Busy));
        // The holder deletes the session by renaming it away, then lets go.
        fs.rename(&session, &dir.path().join("gone")).unwrap();
        drop(held);
        assert!(matches!(fs.try_lock(&lock).unwrap(), LockAttempt::Missing));
    }
}
