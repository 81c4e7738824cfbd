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

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::io::FileSystem;

type Outcome = Result<(), Arc<io::Error>>;

/// How many times making a write's directories, or staging its file, starts again after a
/// concurrent delete removed a directory on its way (each retry needs another delete to empty
/// it at that moment); and how many times [`DirSyncer::write_file`] stages again after one
/// removed the directory between its staging and its rename.
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

/// A file written under a staging name beside its destination, its bytes durable, not yet
/// published.
#[derive(Debug)]
struct Staged {
    staging: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    new: NewDirs,
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
    /// Directories another writer made and had not made durable when they were found: the
    /// parents fsynced for this writer make them durable too (so a writer that made one and
    /// then failed does not leave it fresh for ever).
    found: Vec<PathBuf>,
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
        let mut attempt = 1;
        loop {
            match self.try_make_dirs(root, dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < WRITE_ATTEMPTS => {
                    attempt += 1;
                }
                made => return made,
            }
        }
    }

    /// One attempt of [`Self::make_dirs`]. The directories are made one level at a time, top
    /// down, so that none is made without being counted: a directory seen in place and
    /// durable, then removed by a concurrent cleanup (a delete that emptied it) before the
    /// directory below it is made, fails the attempt with `NotFound` instead of being made
    /// again unseen, with no fsync of its parent (the next attempt finds it missing).
    fn try_make_dirs(&self, root: &Path, dir: &Path) -> io::Result<NewDirs> {
        let mut new = NewDirs::default();
        // Missing or not yet durable, from `dir` up.
        let mut chain = vec![];
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
            if exists {
                new.found.push(current.to_path_buf());
            } else {
                // Known as fresh before it exists: whoever finds it made knows to wait.
                self.state().fresh.insert(current.to_path_buf());
                new.made.push(current.to_path_buf());
            }
            chain.push(current);
            let Some(parent) = current.parent() else {
                break;
            };
            new.parents.push(parent.to_path_buf());
            current = parent;
        }
        if !new.made.is_empty() {
            for level in chain.into_iter().rev() {
                match self.fs.create_dir(level) {
                    Ok(()) => {}
                    // Made by another writer meanwhile: its parent is fsynced here too.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(new)
    }

    /// The parents [`Self::make_dirs`] named are fsynced: its directories are durable.
    pub(crate) fn made_durable(&self, new: &NewDirs) {
        if new.made.is_empty() && new.found.is_empty() {
            return;
        }
        let mut state = self.state();
        for dir in new.made.iter().chain(&new.found) {
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
        let payload = Arc::new(payload);
        let mut attempt = 1;
        loop {
            let (this, root, target) = (Arc::clone(self), root.to_path_buf(), path.to_path_buf());
            let payload = payload.clone();
            let written = tokio::task::spawn_blocking(move || {
                let staged = this.stage(&root, &target, &payload)?;
                Ok::<_, io::Error>(this.publish(&staged).map(|joined| (staged, joined)))
            })
            .await
            .map_err(io::Error::other)??;
            match written {
                Ok((staged, joined)) => return self.published(&staged, joined).await,
                // The directory went between the staging and the rename: nothing published.
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < WRITE_ATTEMPTS => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes each of `files` as [`Self::write_file`] does, in order: once one is durable,
    /// every one before it is (a crash leaves a prefix of them published). The first is
    /// written and published as on its own while one job stages the others, each beside its
    /// destination, and fdatasyncs them one after another; then they are published in order,
    /// each renamed only once the one before it is durable. Their fdatasyncs overlap the first
    /// file's instead of following it, in the same crash order as writing them one by one.
    ///
    /// Runs to its end even if the caller stops waiting (a client that went away), so no
    /// staging file is left behind and no file is published after one that failed.
    ///
    /// # Errors
    /// The first system call that failed; the files before it are published, none after.
    pub(crate) async fn write_files_in_order(
        self: &Arc<Self>,
        root: &Path,
        files: Vec<(PathBuf, Vec<Bytes>)>,
    ) -> io::Result<()> {
        let (this, root) = (Arc::clone(self), root.to_path_buf());
        tokio::spawn(async move { this.in_order(root, files).await })
            .await
            .map_err(io::Error::other)?
    }

    async fn in_order(
        self: Arc<Self>,
        root: PathBuf,
        files: Vec<(PathBuf, Vec<Bytes>)>,
    ) -> io::Result<()> {
        let mut files = files.into_iter();
        let Some((first, payload)) = files.next() else {
            return Ok(());
        };
        let rest: Vec<_> = files.collect();
        let staging = {
            let (this, root) = (Arc::clone(&self), root.clone());
            tokio::task::spawn_blocking(move || {
                let mut staged = VecDeque::new();
                for (target, payload) in &rest {
                    match this.stage(&root, target, payload) {
                        Ok(s) => staged.push_back(s),
                        Err(e) => {
                            this.discard(staged);
                            return Err(e);
                        }
                    }
                }
                Ok(staged)
            })
        };
        let (first, staged) = tokio::join!(self.write_file(&root, &first, payload), staging);
        let staged = staged.map_err(io::Error::other)?;
        let mut staged = match (first, staged) {
            (Ok(()), Ok(staged)) => staged,
            (Err(e), Ok(staged)) => {
                self.discard_blocking(staged).await;
                return Err(e);
            }
            (_, Err(e)) => return Err(e),
        };
        // One job publishes as many as it can without waiting: a lone writer fsyncs each
        // directory itself and goes on; one that joins another writer's fsync waits for it,
        // as a future, before the next rename.
        while !staged.is_empty() {
            let this = Arc::clone(&self);
            let (rest, outcome) = tokio::task::spawn_blocking(move || {
                while let Some(next) = staged.pop_front() {
                    match this.publish(&next) {
                        Ok(Ok(joined)) if joined.0.is_empty() => this.made_durable(&next.new),
                        Ok(joined) => return (staged, Ok(Some((next, joined)))),
                        Err(e) => return (staged, Err(e)),
                    }
                }
                (staged, Ok(None))
            })
            .await
            .map_err(io::Error::other)?;
            staged = rest;
            let published = match outcome {
                Ok(Some((next, joined))) => self.published(&next, joined).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = published {
                self.discard_blocking(staged).await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Makes `target`'s directories, then writes `payload` to a staging file beside it and
    /// fdatasyncs it (blocking). A directory a concurrent delete removed as empty meanwhile
    /// (nothing was published) makes it start again.
    fn stage(&self, root: &Path, target: &Path, payload: &[Bytes]) -> io::Result<Staged> {
        let dir = target
            .parent()
            .ok_or_else(|| io::Error::other(format!("{} has no parent", target.display())))?
            .to_path_buf();
        let mut attempt = 1;
        loop {
            let staged = self.make_dirs(root, &dir).and_then(|new| {
                let staging = staging_path(target);
                let file = self.fs.create(&staging)?;
                if let Err(e) = file.write_at(payload, 0).and_then(|()| file.sync_data()) {
                    let _ = self.fs.remove_file(&staging);
                    return Err(e);
                }
                Ok(Staged {
                    staging,
                    target: target.to_path_buf(),
                    dir: dir.clone(),
                    new,
                })
            });
            match staged {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < WRITE_ATTEMPTS => {
                    tracing::debug!(path = %target.display(), attempt, "a concurrent delete removed a directory being made; writing again");
                    attempt += 1;
                }
                staged => return staged,
            }
        }
    }

    /// Renames a staged file into place, then fsyncs (or joins the fsync of) its directory
    /// and the parents of the directories made for it (blocking). The outer error: the
    /// rename failed, nothing was published; the inner one: an fsync made here failed (see
    /// [`Self::published`]).
    fn publish(self: &Arc<Self>, staged: &Staged) -> io::Result<io::Result<Joined>> {
        if let Err(e) = self.fs.rename(&staged.staging, &staged.target) {
            let _ = self.fs.remove_file(&staged.staging);
            return Err(e);
        }
        let mut dirs = staged.new.parents.clone();
        dirs.push(staged.dir.clone());
        Ok(self.sync_now_or_join(&dirs))
    }

    /// Waits for the fsyncs a published file joined. A directory gone by then was deleted
    /// with the file in it, after the file was published: the write succeeded, followed by
    /// the delete.
    async fn published(&self, staged: &Staged, joined: io::Result<Joined>) -> io::Result<()> {
        let synced = match joined {
            Ok(joined) => joined.wait().await,
            Err(e) => Err(e),
        };
        match synced {
            Ok(()) => {
                self.made_durable(&staged.new);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(path = %staged.target.display(), "written, then deleted by a concurrent delete");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Removes staged files that will not be published (blocking; best effort: a staging
    /// name is never listed or read).
    fn discard(&self, staged: VecDeque<Staged>) {
        for s in staged {
            let _ = self.fs.remove_file(&s.staging);
        }
    }

    async fn discard_blocking(self: &Arc<Self>, staged: VecDeque<Staged>) {
        if staged.is_empty() {
            return;
        }
        let this = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || this.discard(staged)).await;
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
        fn create_dir(&self, dir: &Path) -> io::Result<()> {
            StdFileSystem.create_dir(dir)
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

    /// Makes `root/a/b` as a writer does; what it must fsync.
    fn make_a_b(syncer: &DirSyncer, root: &Path) -> NewDirs {
        syncer.make_dirs(root, &root.join("a/b")).unwrap()
    }

    /// The parents a writer that made (or found not yet durable) `a/b` must fsync.
    fn both_parents(root: &Path) -> Vec<PathBuf> {
        vec![root.join("a"), root.to_path_buf()]
    }

    #[test]
    fn a_directory_a_failed_writer_made_is_durable_once_a_later_writer_fsyncs_its_parent() {
        let root = tempfile::tempdir().unwrap();
        let syncer = DirSyncer::new(Arc::new(StdFileSystem));
        // The first writer makes them, then fails before its fsyncs (never `made_durable`).
        let _abandoned = make_a_b(&syncer, root.path());
        let found = make_a_b(&syncer, root.path());
        assert_eq!(found.parents, both_parents(root.path()));
        // The second writer's fsyncs of those parents make them durable for everyone.
        syncer.made_durable(&found);
        assert!(make_a_b(&syncer, root.path()).parents.is_empty());
    }

    #[test]
    fn a_directory_another_writer_made_is_synced_again_until_it_is_durable() {
        let root = tempfile::tempdir().unwrap();
        let syncer = DirSyncer::new(Arc::new(StdFileSystem));
        let made = make_a_b(&syncer, root.path());
        assert_eq!(made.parents, both_parents(root.path()));
        // Another writer finds them made, but not yet durable: it syncs the parents too.
        let found = make_a_b(&syncer, root.path());
        assert_eq!(found.parents, made.parents);
        syncer.made_durable(&made);
        assert!(make_a_b(&syncer, root.path()).parents.is_empty());
    }
}
