//! Writing a stream to a file while hashing it, in short steps that never wait for the client.
//!
//! The stream's own buffers are gathered (not copied) into batches of about 1 MiB. Each batch
//! goes to two lanes: one writes it (`pwritev`, then a writeback hint), one hashes it, in short
//! jobs on tokio's blocking pool (a job takes every batch queued when it runs, and ends when
//! the queue is empty). So the write and the hash of a chunk run
//! side by side and throughput approaches the slower of disk and SHA-256, not their sum; and
//! while the client is slow or stalled, no job runs and no thread is held: a stalled upload
//! costs its connection and at most a batch of memory per lane.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::io::{FileHandle, context};
use super::recent::Recent;
use super::{Guard, job};
use crate::error::{Error, Result};
use crate::upload::session::Hashes;
use crate::upload::{ChunkStream, receiving};

/// Bytes gathered from the stream before they are handed to the lanes: large enough that a
/// stream of small frames costs few jobs, small enough that the disk starts writing early.
const BATCH: usize = 1024 * 1024;
/// Batches queued for each lane at most: bounds the memory a fast sender can pin (8 MiB per
/// append, shared by the lanes; a stalled sender pins none), and how far the writer can run
/// ahead of the hasher. A lane's job takes every queued batch, so a deeper queue means fewer
/// jobs: at 4, a 256 MiB upload from memory ran 6 % slower than with dedicated threads; at 8,
/// 3 %.
const QUEUED: usize = 8;

type Batch = Arc<Vec<Bytes>>;

/// What the write lane is sent.
enum WriteJob {
    Write(Batch),
    /// Everything is sent: fsync. A lane whose queue closes without it was abandoned (the
    /// stream failed or ended early), and fsyncs nothing.
    Sync,
}

/// What [`write_and_hash`] did.
pub(super) struct Written {
    pub(super) hashes: Hashes,
    /// Bytes written (and fsynced).
    pub(super) len: u64,
}

/// Receives `stream`, writing it to `file` from `offset` and hashing it into `hashes`, then
/// fsyncs the file. `guard` goes with every job on the blocking pool, so what it holds (the
/// session's lock) is released only when the last job is done, even if the caller stops
/// waiting midway: no write of an abandoned append can land after another append began.
///
/// # Errors
/// [`Error::Io`] if the stream fails (nothing of it counts) or a write fails.
pub(super) async fn write_and_hash(
    file: Arc<dyn FileHandle>,
    path: &Path,
    offset: u64,
    hashes: Hashes,
    mut stream: ChunkStream<'_>,
    guard: &Guard,
    recent: &Recent,
) -> Result<Written> {
    let (to_hasher, hasher_jobs) = mpsc::channel::<Batch>(QUEUED);
    let (to_writer, writer_jobs) = mpsc::channel::<WriteJob>(QUEUED);

    // Each lane owns its queue's receiver: a lane that fails drops it, so the feeder's next
    // send fails at once instead of waiting for room that never comes. A lane waits for a batch
    // without a thread, then takes it and every batch already queued behind it in one job
    // (`try_recv` never waits): one job per burst of data, not per batch, while the client
    // keeps sending.
    let hashing = async move {
        let (mut hashes, mut queue) = (hashes, hasher_jobs);
        while let Some(first) = queue.recv().await {
            (hashes, queue) = job(guard, move || {
                let mut next = Some(first);
                while let Some(batch) = next {
                    for piece in batch.iter() {
                        hashes.update(piece);
                    }
                    next = queue.try_recv().ok();
                }
                Ok((hashes, queue))
            })
            .await?;
        }
        Ok::<_, Error>(hashes)
    };
    // The write lane fsyncs as soon as the last batch is written, while the hash lane may
    // still be hashing: the fsync overlaps the hash instead of following it.
    let lane_file = Arc::clone(&file);
    let writing = async move {
        let (mut position, mut queue, mut synced) = (offset, writer_jobs, false);
        while let Some(first) = queue.recv().await {
            let (file, path) = (Arc::clone(&lane_file), path.to_path_buf());
            (position, queue, synced) = job(guard, move || {
                let mut next = Some(first);
                while let Some(job) = next {
                    match job {
                        WriteJob::Write(batch) => {
                            let n: u64 = batch.iter().map(|b| b.len() as u64).sum();
                            file.write_at(&batch, position)
                                .map_err(|e| Error::io(context("writing", &path), e))?;
                            file.start_writeback(position, n);
                            position += n;
                        }
                        WriteJob::Sync => {
                            file.sync_data()
                                .map_err(|e| Error::io(context("fsyncing", &path), e))?;
                            return Ok((position, queue, true));
                        }
                    }
                    next = queue.try_recv().ok();
                }
                Ok((position, queue, false))
            })
            .await?;
            if synced {
                break;
            }
        }
        Ok::<_, Error>((position - offset, synced))
    };
    // Owns the senders: when it ends, early or not, the lanes' queues close and they stop.
    let feeding = async move {
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = 0;
        let send = |batch: Vec<Bytes>| {
            let batch = Arc::new(batch);
            let (to_hasher, to_writer) = (to_hasher.clone(), to_writer.clone());
            async move {
                // A lane that stopped failed: its own result says why.
                to_hasher.send(Arc::clone(&batch)).await.is_ok()
                    && to_writer.send(WriteJob::Write(batch)).await.is_ok()
            }
        };
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(receiving)?;
            if bytes.is_empty() {
                continue;
            }
            pending_len += bytes.len();
            pending.push(bytes);
            if pending_len >= BATCH {
                pending_len = 0;
                if !send(std::mem::take(&mut pending)).await {
                    return Ok(false);
                }
            }
        }
        let sent = pending.is_empty() || send(pending).await;
        Ok::<_, Error>(sent && to_writer.send(WriteJob::Sync).await.is_ok())
    };
    let (fed, hashed, written) = tokio::join!(feeding, hashing, writing);
    let complete = fed?;
    let (len, synced) = written?;
    let hashes = hashed?;
    if !(complete && synced) {
        return Err(Error::io(
            context("writing", path),
            std::io::Error::other("a write lane stopped"),
        ));
    }
    // Durable and clean now: kept in the page cache for a pull right after the push, within
    // a budget; older writes are dropped from it (see `recent`).
    recent.written(path, &file, offset, len);
    Ok(Written { hashes, len })
}
