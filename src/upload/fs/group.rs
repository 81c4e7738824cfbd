//! Group commit of directory fsyncs: concurrent writers that renamed (or created) entries in
//! one directory share the fsync that makes those entries durable, instead of paying one each.
//!
//! The guarantee a caller of [`DirSyncer::sync_now_or_join`] gets (once [`Joined::wait`]
//! returns `Ok`) is the one a plain `fsync(dir)` would give it: an fsync of `dir` that *began
//! after the call was made* has completed, so every entry change the caller made in `dir`
//! before calling is durable. While an fsync of a directory runs, callers for that directory
//! queue, and the next fsync (started as soon as the running one ends) covers them all. A
//! lone caller fsyncs at once, in its own job: no timer, no added wait, no extra trip through
//! the blocking pool.
//!
//! Threads: a queued group's fsync is one short job on tokio's blocking pool, run by a task
//! of its own, so a caller that stops waiting (a client that went away) never stalls the
//! others, and no job ever waits for another job's fsync (queued callers wait as futures).
//!
//! New directories: a directory made by one writer is durable only once its parent has been
//! fsynced after the `mkdir`. A second writer that finds the directory already there must not
//! rely on it before then; [`DirSyncer::make_dirs`] remembers the directories made in this
//! process whose parent fsync has not completed yet, and has the second writer fsync (join)
//! the parent too.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::io::FileSystem;

type Outcome = Result<(), Arc<io::Error>>;

/// How many times [`DirSyncer::write_file`] starts again after a concurrent delete removed a
/// directory it had just made. Each retry needs another delete to empty it at that moment.
const WRITE_ATTEMPTS: usize = 8;

/// `{path}#{n}`: a staging name `object_store`'s `LocalFileSystem` never lists (as its own).
fn staging_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!("#{}", rand::random::<u32>()));
    PathBuf::from(name)
}

/// Shares directory fsyncs among concurrent writers of one filesystem store.
pub(crate) struct DirSyncer {
    fs: Arc<dyn FileSystem>,
    state: Mutex<State>,
    fsyncs: AtomicU64,
}

impl std::fmt::Debug for DirSyncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirSyncer")
            .field("fsyncs", &self.fsyncs.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Directories with an fsync running; their callers that joined since it began.
    running: HashMap<PathBuf, Vec<oneshot::Sender<Outcome>>>,
    /// Directories made in this process whose parent has not been fsynced since.
    fresh: HashSet<PathBuf>,
}

/// Directory fsyncs a writer joined (see [`DirSyncer::sync_now_or_join`]).
#[derive(Debug)]
#[must_use = "the writes are durable only once the joined fsyncs are done"]
pub(crate) struct Joined(Vec<oneshot::Receiver<Outcome>>);

impl Joined {
    /// Waits for the joined fsyncs.
    ///
    /// # Errors
    /// The first that failed.
    pub(crate) async fn wait(self) -> io::Result<()> {
        for rx in self.0 {
            answer(rx.await)?;
        }
        Ok(())
    }
}

fn answer(got: Result<Outcome, oneshot::error::RecvError>) -> io::Result<()> {
    match got {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
        Err(_) => Err(io::Error::other(
            "directory fsync abandoned (shutting down)",
        )),
    }
}

/// What [`DirSyncer::make_dirs`] made or found not yet durable.
#[derive(Debug, Default)]
pub(crate) struct NewDirs {
    /// Directories whose entries must be fsynced for the made directories to be durable.
    pub(crate) parents: Vec<PathBuf>,
    /// The directories themselves (forgotten as fresh once their parents are fsynced).
    made: Vec<PathBuf>,
}

impl DirSyncer {
    pub(crate) fn new(fs: Arc<dyn FileSystem>) -> Self {
        Self {
            fs,
            state: Mutex::new(State::default()),
            fsyncs: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// On a blocking-pool thread, after the caller's changes in `dirs`: fsyncs at once, in
    /// this job, each directory no one is fsyncing (a lone writer pays no extra trip through
    /// the pool), and joins the queue of each one that someone is (never waiting here for
    /// another job). Await the result for those.
    ///
    /// # Errors
    /// An fsync made here; the queued ones fail through [`Joined::wait`].
    pub(crate) fn sync_now_or_join(self: &Arc<Self>, dirs: &[PathBuf]) -> io::Result<Joined> {
        let mut joined = Joined(vec![]);
        for dir in dirs {
            let (tx, rx) = oneshot::channel();
            {
                let mut state = self.state();
                if let Some(waiting) = state.running.get_mut(dir) {
                    waiting.push(tx);
                    joined.0.push(rx);
                    continue;
                }
                state.running.insert(dir.clone(), vec![]);
            }
            let synced = self.fs.sync_dir(dir);
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            // Whoever joined meanwhile asked after this fsync began: the next one is theirs.
            let queued = {
                let mut state = self.state();
                let queued = state.running.get(dir).is_some_and(|w| !w.is_empty());
                if !queued {
                    state.running.remove(dir);
                }
                queued
            };
            if queued {
                tokio::runtime::Handle::current().spawn(Arc::clone(self).run(dir.clone()));
            }
            synced?;
        }
        Ok(joined)
    }

    /// Fsyncs `dir` for everyone waiting when it begins, again and again until no one waits.
    async fn run(self: Arc<Self>, dir: PathBuf) {
        loop {
            // Everyone queued now asked before this fsync begins: it covers them all.
            let members = {
                let mut state = self.state();
                let Some(waiting) = state.running.get_mut(&dir) else {
                    return;
                };
                if waiting.is_empty() {
                    state.running.remove(&dir);
                    return;
                }
                std::mem::take(waiting)
            };
            let (fs, path) = (Arc::clone(&self.fs), dir.clone());
            let outcome = match tokio::task::spawn_blocking(move || fs.sync_dir(&path)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Arc::new(e)),
                Err(e) => Err(Arc::new(io::Error::other(e))),
            };
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            for member in members {
                // A member that stopped waiting needs no answer.
                let _ = member.send(outcome.clone());
            }
        }
    }

    /// Makes `dir` and its missing ancestors below `root` (blocking: run it as a job). Returns
    /// the directories to fsync, after the caller's own writes in `dir`, so that `dir` is
    /// durable: the parent of each directory made here, and of each that another writer of
    /// this process made but has not yet made durable. Call [`Self::made_durable`] once they
    /// are fsynced.
    ///
    /// # Errors
    /// The system calls'.
    pub(crate) fn make_dirs(&self, root: &Path, dir: &Path) -> io::Result<NewDirs> {
        let mut new = NewDirs::default();
        let mut current = dir;
        while current != root && current.starts_with(root) {
            let exists = match self.fs.metadata(current) {
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            };
            if exists && !self.state().fresh.contains(current) {
                break;
            }
            if !exists {
                // Known as fresh before it exists: whoever finds it made knows to wait.
                self.state().fresh.insert(current.to_path_buf());
                new.made.push(current.to_path_buf());
            }
            let Some(parent) = current.parent() else {
                break;
            };
            new.parents.push(parent.to_path_buf());
            current = parent;
        }
        if !new.made.is_empty() {
            self.fs.create_dir_all(dir)?;
        }
        Ok(new)
    }

    /// The parents [`Self::make_dirs`] named are fsynced: its directories are durable.
    pub(crate) fn made_durable(&self, new: &NewDirs) {
        if new.made.is_empty() {
            return;
        }
        let mut state = self.state();
        for dir in &new.made {
            state.fresh.remove(dir);
        }
    }

    /// Writes `payload` to `path` durably and atomically: into a staging file beside it
    /// (`{path}#{n}`, a name listings skip), fdatasynced, renamed over `path`, then the
    /// directory fsynced (shared with concurrent writers), with any directory made on the way.
    /// Returns once all of it is durable.
    ///
    /// A delete racing the write ends as one order of the two: a directory a delete removes
    /// as empty before the staging file is in it makes the write start again (nothing was
    /// published); a directory gone after the rename (its file deleted with it, as the
    /// directory had to be empty) means the write was published and then deleted.
    ///
    /// # Errors
    /// The system calls'.
    pub(crate) async fn write_file(
        self: &Arc<Self>,
        root: &Path,
        path: &Path,
        payload: Vec<Bytes>,
    ) -> io::Result<()> {
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::other(format!("{} has no parent", path.display())))?
            .to_path_buf();
        let payload = Arc::new(payload);
        let mut attempt = 1;
        let synced = loop {
            let (this, root, dir, target) = (
                Arc::clone(self),
                root.to_path_buf(),
                dir.clone(),
                path.to_path_buf(),
            );
            let payload = Arc::clone(&payload);
            let written = tokio::task::spawn_blocking(move || {
                let new = this.make_dirs(&root, &dir)?;
                let staging = staging_path(&target);
                let file = this.fs.create(&staging)?;
                let published = file
                    .write_at(&payload, 0)
                    .and_then(|()| file.sync_data())
                    .and_then(|()| this.fs.rename(&staging, &target));
                if let Err(e) = published {
                    let _ = this.fs.remove_file(&staging);
                    return Err(e);
                }
                // Published: from here a `NotFound` is a delete that came after.
                let mut dirs = new.parents.clone();
                dirs.push(dir);
                Ok((new, this.sync_now_or_join(&dirs)))
            })
            .await
            .map_err(io::Error::other)?;
            match written {
                Ok(synced) => break synced,
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < WRITE_ATTEMPTS => {
                    tracing::debug!(path = %path.display(), attempt, "a concurrent delete removed a directory being made; writing again");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let (new, joined) = synced;
        let synced = match joined {
            Ok(joined) => joined.wait().await,
            Err(e) => Err(e),
        };
        match synced {
            Ok(()) => {
                self.made_durable(&new);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), "written, then deleted by a concurrent delete");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Directory fsyncs made so far (one per group).
    #[cfg(test)]
    pub(crate) fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::io::{FileHandle, FileInfo, LockAttempt, StdFileSystem};
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// The real file system, with `sync_dir` counted and held while `hold` is set.
    #[derive(Debug, Default)]
    struct HeldSyncs {
        hold: AtomicBool,
        syncs: AtomicU64,
    }

    impl FileSystem for HeldSyncs {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            StdFileSystem.create_dir_all(dir)
        }
        fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
            StdFileSystem.create(path)
        }
        fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
            StdFileSystem.open(path)
        }
        fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
            StdFileSystem.open_read(path)
        }
        fn try_lock(&self, path: &Path) -> io::Result<LockAttempt> {
            StdFileSystem.try_lock(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            StdFileSystem.rename(from, to)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            while self.hold.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.syncs.fetch_add(1, Ordering::SeqCst);
            StdFileSystem.sync_dir(dir)
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            StdFileSystem.remove_file(path)
        }
        fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
            StdFileSystem.remove_dir_all(dir)
        }
        fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
            StdFileSystem.read_dir(dir)
        }
        fn metadata(&self, path: &Path) -> io::Result<FileInfo> {
            StdFileSystem.metadata(path)
        }
    }

    /// What a writer does after its rename: fsync now, or join, then wait.
    async fn sync(syncer: &Arc<DirSyncer>, dir: &Path) -> io::Result<()> {
        let (s, d) = (Arc::clone(syncer), dir.to_path_buf());
        let joined = tokio::task::spawn_blocking(move || s.sync_now_or_join(&[d]))
            .await
            .unwrap()?;
        joined.wait().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_join_during_a_running_fsync_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(HeldSyncs::default());
        let syncer = Arc::new(DirSyncer::new(fs.clone()));
        fs.hold.store(true, Ordering::SeqCst);
        let first = tokio::spawn({
            let (s, d) = (Arc::clone(&syncer), dir.path().to_path_buf());
            async move { sync(&s, &d).await }
        });
        // Let the first fsync begin (and stay held), then queue eight more behind it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let later: Vec<_> = (0..8)
            .map(|_| {
                let (s, d) = (Arc::clone(&syncer), dir.path().to_path_buf());
                tokio::spawn(async move { sync(&s, &d).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        fs.hold.store(false, Ordering::SeqCst);
        first.await.unwrap().unwrap();
        for l in later {
            l.await.unwrap().unwrap();
        }
        assert_eq!(fs.syncs.load(Ordering::SeqCst), 2);
        assert_eq!(syncer.fsyncs(), 2);
    }

    #[tokio::test]
    async fn a_lone_caller_gets_an_fsync_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(HeldSyncs::default());
        let syncer = Arc::new(DirSyncer::new(fs.clone()));
        for n in 1..=3 {
            sync(&syncer, dir.path()).await.unwrap();
            assert_eq!(fs.syncs.load(Ordering::SeqCst), n);
        }
    }

    #[tokio::test]
    async fn a_failed_fsync_fails_every_caller_it_covered() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Arc::new(DirSyncer::new(Arc::new(StdFileSystem)));
        let gone = dir.path().join("gone");
        let e = sync(&syncer, &gone).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_directory_another_writer_made_is_synced_again_until_it_is_durable() {
        let root = tempfile::tempdir().unwrap();
        let syncer = DirSyncer::new(Arc::new(StdFileSystem));
        let dir = root.path().join("a/b");
        let made = syncer.make_dirs(root.path(), &dir).unwrap();
        assert_eq!(
            made.parents,
            vec![root.path().join("a"), root.path().to_path_buf()]
        );
        // Another writer finds them made, but not yet durable: it syncs the parents too.
        let found = syncer.make_dirs(root.path(), &dir).unwrap();
        assert_eq!(found.parents, made.parents);
        syncer.made_durable(&made);
        assert!(
            syncer
                .make_dirs(root.path(), &dir)
                .unwrap()
                .parents
                .is_empty()
        );
    }
}
