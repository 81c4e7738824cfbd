//! The real file system with a power switch: a [`FileSystem`] that remembers every change not
//! yet made durable, and on [`PowerCutFs::cut`] undoes them, as a power loss may.
//!
//! The model (what `fsync` promises on Linux file systems, no more):
//! - a directory entry made by `create`, `create_dir_all` or `rename` survives only if its
//!   directory was fsynced (`sync_dir`) after the change, by a call that began after it;
//! - bytes written to a file survive only if that file was fdatasynced after the write;
//! - anything under a directory whose own entry was lost is lost with it.
//!
//! Deletes are taken as durable at once (undoing one would only bring data back, never lose
//! any). After the cut every call fails, and so does a `sync_dir` or `sync_data` that began
//! before it but had not returned: its caller never learns that it succeeded.
//!
//! `sync_dir` calls on paths matching a planned substring, or of one planned directory, can be
//! held (each on its own blocking-pool thread), so a test can cut the power between a group of
//! writes and the directory fsync that would make them durable.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use layerstore::upload::{FileHandle, FileInfo, FileSystem, LockAttempt, StdFileSystem};

/// A change not yet durable, in the order made.
#[derive(Debug)]
enum Change {
    /// A new directory entry for a file (undone by removing it).
    Created { seq: u64, path: PathBuf },
    /// A directory made (undone by removing it and all in it).
    MadeDir { seq: u64, dir: PathBuf },
    /// A rename (undone by renaming back).
    Renamed {
        seq: u64,
        from: PathBuf,
        to: PathBuf,
    },
    /// Bytes written to a file (undone by cutting it back to what was last synced).
    Wrote { seq: u64, file: u64 },
}

impl Change {
    fn seq(&self) -> u64 {
        match self {
            Self::Created { seq, .. }
            | Self::MadeDir { seq, .. }
            | Self::Renamed { seq, .. }
            | Self::Wrote { seq, .. } => *seq,
        }
    }

    /// Whether an fsync of `dir` covers this change.
    fn in_dir(&self, dir: &Path) -> bool {
        match self {
            Self::Created { path, .. } => path.parent() == Some(dir),
            Self::MadeDir { dir: d, .. } => d.parent() == Some(dir),
            Self::Renamed { to, .. } => to.parent() == Some(dir),
            Self::Wrote { .. } => false,
        }
    }
}

#[derive(Debug, Default)]
struct Journal {
    seq: u64,
    pending: Vec<Change>,
    /// Open files by id: the real handle and the length last made durable.
    files: HashMap<u64, (Arc<dyn FileHandle>, u64)>,
}

/// Which `sync_dir` calls are held.
#[derive(Debug)]
enum Hold {
    /// Those of every path containing this.
    Containing(String),
    /// Those of this directory.
    Exactly(PathBuf),
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct PowerCutFs {
    journal: Mutex<Journal>,
    dead: AtomicBool,
    next_file: AtomicU64,
    hold: Mutex<Option<Hold>>,
    held: AtomicU64,
    /// `sync_dir` calls made, by directory.
    dir_syncs: Mutex<HashMap<PathBuf, u64>>,
    /// Renames made, by the name of their target's file.
    renames: Mutex<HashMap<String, u64>>,
    /// An empty directory removed right after the next `metadata` of it answers, as a
    /// concurrent delete's cleanup may remove it.
    vanish: Mutex<Option<PathBuf>>,
}

fn off() -> io::Error {
    io::Error::other("power cut")
}

impl PowerCutFs {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn alive(&self) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            Err(off())
        } else {
            Ok(())
        }
    }

    fn record(&self, change: impl FnOnce(u64) -> Change) {
        let mut j = self.journal.lock().unwrap();
        j.seq += 1;
        let seq = j.seq;
        j.pending.push(change(seq));
    }

    fn now(&self) -> u64 {
        self.journal.lock().unwrap().seq
    }

    /// Removes the empty directory `dir` right after the next `metadata` call on it has found
    /// it: a delete's cleanup racing a writer that has just seen the directory in place.
    pub fn vanish_after_lookup(&self, dir: &Path) {
        *self.vanish.lock().unwrap() = Some(dir.to_path_buf());
    }

    /// Whether the directory armed by [`Self::vanish_after_lookup`] was removed.
    pub fn vanished(&self) -> bool {
        self.vanish.lock().unwrap().is_none()
    }

    /// Holds every `sync_dir` whose path contains `part` from now on, until [`Self::release`].
    pub fn hold_dir_syncs(&self, part: &str) {
        *self.hold.lock().unwrap() = Some(Hold::Containing(part.to_owned()));
    }

    /// Holds every `sync_dir` of `dir` itself (not of the directories under it) from now on,
    /// until [`Self::release`].
    pub fn hold_dir_syncs_of(&self, dir: &Path) {
        *self.hold.lock().unwrap() = Some(Hold::Exactly(dir.to_path_buf()));
    }

    pub fn release(&self) {
        *self.hold.lock().unwrap() = None;
    }

    /// `sync_dir` calls waiting on the hold now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// How many times `dir` was fsynced.
    pub fn dir_syncs(&self, dir: &Path) -> u64 {
        self.dir_syncs
            .lock()
            .unwrap()
            .get(dir)
            .copied()
            .unwrap_or(0)
    }

    /// All directory fsyncs made.
    pub fn all_dir_syncs(&self) -> u64 {
        self.dir_syncs.lock().unwrap().values().sum()
    }

    /// How many renames had a target named `name` (such as `link` or `data`).
    pub fn renames_to(&self, name: &str) -> u64 {
        self.renames.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    /// Changes made but not yet durable.
    pub fn pending(&self) -> usize {
        self.journal.lock().unwrap().pending.len()
    }

    /// Cuts the power: every change not durable is undone, latest first, and every call
    /// from now on fails. Returns how many changes were lost.
    pub fn cut(&self) -> usize {
        self.dead.store(true, Ordering::SeqCst);
        let mut j = self.journal.lock().unwrap();
        let lost = std::mem::take(&mut j.pending);
        let n = lost.len();
        for change in lost.into_iter().rev() {
            match change {
                Change::Wrote { file, .. } => {
                    if let Some((handle, synced)) = j.files.get(&file) {
                        let _ = handle.set_len(*synced);
                    }
                }
                Change::Renamed { from, to, .. } => {
                    let _ = std::fs::rename(&to, &from);
                }
                Change::Created { path, .. } => {
                    let _ = std::fs::remove_file(&path);
                }
                Change::MadeDir { dir, .. } => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        n
    }

    fn open_file(self: &Arc<Self>, inner: Arc<dyn FileHandle>, synced: u64) -> Arc<dyn FileHandle> {
        let id = self.next_file.fetch_add(1, Ordering::SeqCst);
        self.journal
            .lock()
            .unwrap()
            .files
            .insert(id, (Arc::clone(&inner), synced));
        Arc::new(CutFile {
            fs: Arc::clone(self),
            inner,
            id,
        })
    }
}

/// The seam the store takes: an `Arc<PowerCutFs>` (files keep a reference to it).
#[derive(Debug, Clone)]
pub struct PowerCut(pub Arc<PowerCutFs>);

impl FileSystem for PowerCut {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.0.alive()?;
        let mut missing = vec![];
        let mut d = dir;
        while !d.exists() {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        StdFileSystem.create_dir_all(dir)?;
        for made in missing.into_iter().rev() {
            self.0.record(|seq| Change::MadeDir { seq, dir: made });
        }
        Ok(())
    }

    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.alive()?;
        StdFileSystem.create_dir(dir)?;
        self.0.record(|seq| Change::MadeDir {
            seq,
            dir: dir.to_path_buf(),
        });
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        self.0.alive()?;
        let existed = path.exists();
        let file = StdFileSystem.create(path)?;
        if !existed {
            self.0.record(|seq| Change::Created {
                seq,
                path: path.to_path_buf(),
            });
        }
        Ok(self.0.open_file(file, 0))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        self.0.alive()?;
        let file = StdFileSystem.open(path)?;
        // What an earlier handle left unsynced is still that handle's to lose.
        let len = file.size()?;
        Ok(self.0.open_file(file, len))
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        self.0.alive()?;
        StdFileSystem.open_read(path)
    }

    fn try_lock(&self, path: &Path) -> io::Result<LockAttempt> {
        self.0.alive()?;
        StdFileSystem.try_lock(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.alive()?;
        StdFileSystem.rename(from, to)?;
        self.0.record(|seq| Change::Renamed {
            seq,
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        if let Some(name) = to.file_name() {
            *self
                .0
                .renames
                .lock()
                .unwrap()
                .entry(name.to_string_lossy().into_owned())
                .or_default() += 1;
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.alive()?;
        let held = |fs: &PowerCutFs| {
            fs.hold
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|hold| match hold {
                    Hold::Containing(part) => dir.to_string_lossy().contains(part.as_str()),
                    Hold::Exactly(held) => dir == held,
                })
        };
        if held(&self.0) {
            self.0.held.fetch_add(1, Ordering::SeqCst);
            while held(&self.0) && !self.0.dead.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.0.held.fetch_sub(1, Ordering::SeqCst);
        }
        let began = self.0.now();
        self.0.alive()?;
        StdFileSystem.sync_dir(dir)?;
        *self
            .0
            .dir_syncs
            .lock()
            .unwrap()
            .entry(dir.to_path_buf())
            .or_default() += 1;
        let mut j = self.0.journal.lock().unwrap();
        // Checked under the journal's lock: a cut either undid this fsync's changes already
        // (and then it fails) or comes after it (and finds them durable).
        self.0.alive()?;
        j.pending.retain(|c| !(c.seq() <= began && c.in_dir(dir)));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.0.alive()?;
        StdFileSystem.remove_file(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.0.alive()?;
        StdFileSystem.remove_dir_all(dir)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.0.alive()?;
        StdFileSystem.read_dir(dir)
    }

    fn metadata(&self, path: &Path) -> io::Result<FileInfo> {
        self.0.alive()?;
        let info = StdFileSystem.metadata(path)?;
        let mut vanish = self.0.vanish.lock().unwrap();
        if vanish.as_deref() == Some(path) {
            std::fs::remove_dir(path).expect("the directory to vanish is empty");
            *vanish = None;
        }
        Ok(info)
    }
}

#[derive(Debug)]
struct CutFile {
    fs: Arc<PowerCutFs>,
    inner: Arc<dyn FileHandle>,
    id: u64,
}

impl FileHandle for CutFile {
    fn write_at(&self, pieces: &[Bytes], offset: u64) -> io::Result<()> {
        self.fs.alive()?;
        self.inner.write_at(pieces, offset)?;
        let file = self.id;
        self.fs.record(|seq| Change::Wrote { seq, file });
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.fs.alive()?;
        self.inner.read_exact_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.alive()?;
        let began = self.fs.now();
        let len = self.inner.size()?;
        self.inner.sync_data()?;
        let mut j = self.fs.journal.lock().unwrap();
        self.fs.alive()?;
        let id = self.id;
        j.pending
            .retain(|c| !matches!(c, Change::Wrote { seq, file } if *seq <= began && *file == id));
        if let Some(entry) = j.files.get_mut(&id) {
            entry.1 = len;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.alive()?;
        self.inner.set_len(len)?;
        let file = self.id;
        self.fs.record(|seq| Change::Wrote { seq, file });
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        self.fs.alive()?;
        self.inner.size()
    }
}
