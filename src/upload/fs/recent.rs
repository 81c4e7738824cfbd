//! Which freshly written bytes stay in the page cache.
//!
//! A blob is often pulled right after it is pushed (CI pushes an image, then a deploy pulls
//! it), so the bytes an upload just wrote are worth keeping in the page cache: the first pull
//! then reads memory, not the disk. But an upload that keeps every new page also touches a new
//! page of memory for every 4 KiB it writes, and this project's VMs hand free memory back to
//! their host (virtio-balloon free page reporting), so each fresh page faults on the host: with
//! nothing ever dropped, 256 MiB uploads in a loop took 187-585 ms instead of 183-207 ms.
//!
//! So the most recently written bytes stay cached, up to [`RECENT_BYTES`] in at most
//! [`RECENT_FILES`] files; written bytes beyond that are dropped from the cache (durable and
//! clean by then), oldest first. Once the budget is full, each new upload recycles the pages
//! of the ones it pushes out, as when every upload dropped its own. Writes below
//! [`TRACKED_FROM`] are left to the kernel (a few pages each; tracking them would only push
//! the large ones out by count).
//!
//! A kept file stays open until it is pushed out, so a blob deleted meanwhile (by GC) frees its
//! disk space only then: at most the budget's worth.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::io::FileHandle;

/// Bytes of recent writes kept in the page cache.
pub(super) const RECENT_BYTES: u64 = 1 << 30;
/// Files kept open for it at most (a chunked upload's appends to one file count once).
pub(super) const RECENT_FILES: usize = 64;
/// Writes smaller than this are not tracked, and never dropped.
pub(super) const TRACKED_FROM: u64 = 1024 * 1024;

/// Bytes of one file written recently and still cached.
#[derive(Debug)]
struct Kept {
    path: PathBuf,
    file: Arc<dyn FileHandle>,
    start: u64,
    end: u64,
}

/// The recently written bytes kept in the page cache (see the module's documentation).
#[derive(Debug)]
pub(super) struct Recent {
    budget: u64,
    max_files: usize,
    kept: Mutex<(VecDeque<Kept>, u64)>,
}

impl Default for Recent {
    fn default() -> Self {
        Self::new(RECENT_BYTES, RECENT_FILES)
    }
}

impl Recent {
    pub(super) fn new(budget: u64, max_files: usize) -> Self {
        Self {
            budget,
            max_files,
            kept: Mutex::new((VecDeque::new(), 0)),
        }
    }

    /// `file` (at `path`) just had `offset..offset + len` written and made durable: keeps
    /// those bytes cached, and drops the oldest kept bytes beyond the budget, in the
    /// background. Bytes written right after a kept range of the same file join it.
    pub(super) fn written(&self, path: &Path, file: &Arc<dyn FileHandle>, offset: u64, len: u64) {
        if len < TRACKED_FROM {
            return;
        }
        let evicted = self.keep(path, file, offset, len);
        if !evicted.is_empty() {
            // Only a hint, and a quick one (0.3 ms per 8 MiB): nothing waits for it.
            drop(tokio::task::spawn_blocking(move || {
                for old in evicted {
                    old.file.drop_cache(old.start, old.end - old.start);
                }
            }));
        }
    }

    /// The bookkeeping of [`Self::written`]: returns what is to be dropped.
    fn keep(&self, path: &Path, file: &Arc<dyn FileHandle>, offset: u64, len: u64) -> Vec<Kept> {
        let mut guard = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (kept, bytes) = &mut *guard;
        let joined = kept
            .iter()
            .position(|k| k.path == path && k.end == offset)
            .and_then(|i| kept.remove(i));
        let entry = match joined {
            Some(mut k) => {
                k.end += len;
                k
            }
            None => Kept {
                path: path.to_path_buf(),
                file: Arc::clone(file),
                start: offset,
                end: offset + len,
            },
        };
        kept.push_back(entry);
        *bytes += len;
        let mut evicted = Vec::new();
        while *bytes > self.budget || kept.len() > self.max_files {
            let Some(old) = kept.pop_front() else { break };
            *bytes -= old.end - old.start;
            evicted.push(old);
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// A file that records which ranges were dropped from the cache.
    #[derive(Debug, Default)]
    struct Recording {
        dropped: Mutex<Vec<(u64, u64)>>,
    }

    impl FileHandle for Recording {
        fn write_at(&self, _: &[Bytes], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn read_exact_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn set_len(&self, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn size(&self) -> io::Result<u64> {
            Ok(0)
        }
        fn drop_cache(&self, offset: u64, len: u64) {
            self.dropped.lock().unwrap().push((offset, len));
        }
    }

    fn file() -> (Arc<Recording>, Arc<dyn FileHandle>) {
        let recording = Arc::new(Recording::default());
        let handle: Arc<dyn FileHandle> = recording.clone();
        (recording, handle)
    }

    /// The ranges `evicted` would drop, per file path.
    fn ranges(evicted: &[Kept]) -> Vec<(String, u64, u64)> {
        evicted
            .iter()
            .map(|k| (k.path.display().to_string(), k.start, k.end))
            .collect()
    }

    #[test]
    fn writes_within_the_budget_stay_cached() {
        let recent = Recent::new(64 * MIB, 8);
        let (_, f) = file();
        assert!(recent.keep(Path::new("a"), &f, 0, 32 * MIB).is_empty());
        assert!(recent.keep(Path::new("b"), &f, 0, 32 * MIB).is_empty());
    }

    #[test]
    fn beyond_the_budget_the_oldest_writes_are_dropped_first() {
        let recent = Recent::new(64 * MIB, 8);
        let (_, f) = file();
        recent.keep(Path::new("a"), &f, 0, 32 * MIB);
        recent.keep(Path::new("b"), &f, 0, 32 * MIB);
        let evicted = recent.keep(Path::new("c"), &f, 0, 16 * MIB);
        assert_eq!(ranges(&evicted), [("a".to_owned(), 0, 32 * MIB)]);
    }

    #[test]
    fn beyond_the_file_limit_the_oldest_file_is_dropped() {
        let recent = Recent::new(1024 * MIB, 2);
        let (_, f) = file();
        recent.keep(Path::new("a"), &f, 0, MIB);
        recent.keep(Path::new("b"), &f, 0, MIB);
        let evicted = recent.keep(Path::new("c"), &f, 0, MIB);
        assert_eq!(ranges(&evicted), [("a".to_owned(), 0, MIB)]);
    }

    #[test]
    fn appends_to_one_file_count_as_one_and_become_the_newest() {
        let recent = Recent::new(1024 * MIB, 2);
        let (_, f) = file();
        recent.keep(Path::new("a"), &f, 0, MIB);
        recent.keep(Path::new("b"), &f, 0, MIB);
        // `a` goes on where it ended: joined, and now newer than `b`.
        assert!(recent.keep(Path::new("a"), &f, MIB, 2 * MIB).is_empty());
        let evicted = recent.keep(Path::new("c"), &f, 0, MIB);
        assert_eq!(ranges(&evicted), [("b".to_owned(), 0, MIB)]);
        let evicted = recent.keep(Path::new("d"), &f, 0, MIB);
        assert_eq!(ranges(&evicted), [("a".to_owned(), 0, 3 * MIB)]);
    }

    #[test]
    fn a_write_larger_than_the_budget_is_dropped_at_once() {
        let recent = Recent::new(8 * MIB, 8);
        let (_, f) = file();
        let evicted = recent.keep(Path::new("a"), &f, 0, 16 * MIB);
        assert_eq!(ranges(&evicted), [("a".to_owned(), 0, 16 * MIB)]);
    }

    #[tokio::test]
    async fn a_written_range_pushed_out_is_dropped_from_the_cache_of_its_own_file() {
        let recent = Recent::new(2 * MIB, 8);
        let (first, f1) = file();
        let (second, f2) = file();
        recent.written(Path::new("a"), &f1, 4 * MIB, 2 * MIB);
        recent.written(Path::new("b"), &f2, 0, 2 * MIB);
        for _ in 0..100 {
            if !first.dropped.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(*first.dropped.lock().unwrap(), [(4 * MIB, 2 * MIB)]);
        assert!(second.dropped.lock().unwrap().is_empty());
    }

    #[test]
    fn small_writes_are_left_to_the_kernel() {
        let recent = Recent::new(2 * MIB, 1);
        let (_, f) = file();
        recent.written(Path::new("a"), &f, 0, TRACKED_FROM - 1);
        assert!(recent.kept.lock().unwrap().0.is_empty());
    }
}
