//! Writing a stream to a file while hashing it: one thread writes, one hashes, each fed the
//! stream's own buffers, so throughput approaches the slower of disk and SHA-256 rather than
//! their sum, and no byte is copied on the way.
//!
//! The async side gathers the stream's pieces into batches ([`Batches`]) and hands each batch
//! to both threads ([`hash_batches`], [`write_batches`]) through bounded queues.

use std::fs::File;
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::Digest as _;
use sha2::Sha256;
use tokio::sync::mpsc;

use super::{blocking, io};
use crate::error::{Error, Result};

/// Bytes gathered (not copied) from the stream before they are handed to the threads: large
/// enough that a stream of small frames costs few handoffs, small enough that the disk starts
/// writing early in a chunk.
const BATCH: usize = 1024 * 1024;
/// Batches queued for each thread at most: bounds the memory a fast sender can pin, and how
/// far the writer can run ahead of the hasher.
const QUEUED: usize = 4;

pub(super) type Batch = Arc<Vec<Bytes>>;

/// What the writing thread is told.
pub(super) enum WriteJob {
    Write(Batch),
    /// Everything is sent: fsync and stop. A writer whose queue closes without it was
    /// abandoned, and stops without fsyncing.
    Sync,
}

/// The async side: gathers pieces into batches and sends each to the hashing and the writing
/// thread.
pub(super) struct Batches {
    pending: Vec<Bytes>,
    pending_len: usize,
    to_hasher: Option<mpsc::Sender<Batch>>,
    to_writer: Option<mpsc::Sender<WriteJob>>,
}

/// A thread stopped taking batches: it failed, and its own result says why.
#[derive(Debug)]
pub(super) struct Stopped;

impl Batches {
    /// The batcher, and the queues the hashing and the writing thread read.
    pub(super) fn new() -> (Self, mpsc::Receiver<Batch>, mpsc::Receiver<WriteJob>) {
        let (to_hasher, hasher_jobs) = mpsc::channel(QUEUED);
        let (to_writer, writer_jobs) = mpsc::channel(QUEUED);
        let batches = Self {
            pending: Vec::new(),
            pending_len: 0,
            to_hasher: Some(to_hasher),
            to_writer: Some(to_writer),
        };
        (batches, hasher_jobs, writer_jobs)
    }

    pub(super) async fn push(&mut self, bytes: Bytes) -> Result<(), Stopped> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.pending_len += bytes.len();
        self.pending.push(bytes);
        if self.pending_len >= BATCH {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<(), Stopped> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = Arc::new(std::mem::take(&mut self.pending));
        self.pending_len = 0;
        let (Some(to_hasher), Some(to_writer)) = (&self.to_hasher, &self.to_writer) else {
            return Err(Stopped);
        };
        to_hasher
            .send(Arc::clone(&batch))
            .await
            .map_err(|_| Stopped)?;
        to_writer
            .send(WriteJob::Write(batch))
            .await
            .map_err(|_| Stopped)
    }

    /// Sends what is left and tells the writer to fsync; the hasher's queue closes.
    pub(super) async fn finish(mut self) -> Result<(), Stopped> {
        self.send().await?;
        self.to_hasher = None;
        match self.to_writer.take() {
            Some(to_writer) => to_writer.send(WriteJob::Sync).await.map_err(|_| Stopped),
            None => Err(Stopped),
        }
    }
}

/// Hashes every batch until the queue closes.
pub(super) fn hash_batches(mut hasher: Sha256, mut batches: mpsc::Receiver<Batch>) -> Sha256 {
    while let Some(batch) = batches.blocking_recv() {
        for piece in batch.iter() {
            hasher.update(piece);
        }
    }
    hasher
}

/// Writes every batch to `file` from `position` on, then fsyncs it when told to; returns the
/// bytes written.
///
/// # Errors
/// I/O failures; [`stopped`] if the queue closed without a [`WriteJob::Sync`].
pub(super) fn write_batches(
    mut file: File,
    path: &Path,
    position: u64,
    mut jobs: mpsc::Receiver<WriteJob>,
) -> Result<u64> {
    file.seek(SeekFrom::Start(position))
        .map_err(io("seeking", path))?;
    let mut len = 0u64;
    while let Some(job) = jobs.blocking_recv() {
        match job {
            WriteJob::Write(batch) => {
                write_all_vectored(&mut file, &batch).map_err(io("writing", path))?;
                let n = batch.iter().map(|b| b.len() as u64).sum::<u64>();
                start_writeback(&file, position + len, n);
                len += n;
            }
            WriteJob::Sync => {
                file.sync_data().map_err(io("fsyncing", path))?;
                drop_behind(file, position, len);
                return Ok(len);
            }
        }
    }
    Err(stopped())
}

/// The error of a writer whose stream was abandoned midway.
pub(super) fn stopped() -> Error {
    Error::io(
        "writing",
        std::io::Error::other("the stream stopped before its end"),
    )
}

/// `write_all` for a list of buffers, in as few `writev` calls as the kernel takes.
fn write_all_vectored(file: &mut File, pieces: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Asks the kernel to start writing these bytes to disk now, without waiting: by the time the
/// stream ends and the file is fsynced, most of it is already written. Only a hint — the fsync
/// is what makes the bytes durable — so a failure is ignored.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain syscall on a file descriptor that `file` keeps open; no memory is
    // passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Drops the written bytes, now durable and clean, from the page cache, in the background
/// (the caller waits for this thread's result, not for this).
///
/// A blob's bytes are rarely read right after they are pushed, and a multi-GB layer would
/// otherwise push hotter data out of the cache. It also keeps an upload on a small set of
/// recycled pages instead of ever-new ones: on a VM that hands free memory back to its host
/// (virtio-balloon free page reporting), each new page costs a host fault, which measured
/// here at 2-3x the time of a 256 MiB upload.
#[cfg(target_os = "linux")]
fn drop_behind(file: File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let drop_pages = move || {
        // SAFETY: a plain syscall on a file descriptor that `file` keeps open; no memory is
        // passed. Only a hint: a failure is ignored.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED);
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(drop_pages)),
        Err(_) => drop_pages(),
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_behind(_file: File, _offset: u64, _len: u64) {}

/// A stream written to a new file and hashed, for a blob put without a session.
pub(super) async fn write_and_hash(
    file: File,
    path: PathBuf,
    mut stream: super::ChunkStream<'_>,
) -> Result<(Sha256, u64)> {
    use futures::StreamExt;
    let (mut batches, hasher_jobs, writer_jobs) = Batches::new();
    let hashing = blocking(move || Ok(hash_batches(Sha256::new(), hasher_jobs)));
    let writing = blocking(move || write_batches(file, &path, 0, writer_jobs));
    // Owns the batcher: when it ends, early or not, the queues close and the threads stop.
    let fed = async move {
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(|e| Error::io("receiving the blob", e))?;
            if batches.push(bytes).await.is_err() {
                return Ok(()); // the writer failed: its result says why
            }
        }
        let _ = batches.finish().await;
        Ok::<_, Error>(())
    };
    let (fed, hashed, written) = tokio::join!(fed, hashing, writing);
    fed?;
    let len = written?;
    Ok((hashed?, len))
}
