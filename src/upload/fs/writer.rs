//! Writing a stream to a file while hashing it, in short steps that never wait for the client.
//!
//! The stream's own buffers are gathered (not copied) into batches of about 1 MiB. Each batch
//! goes to two lanes: one writes it (`pwritev`, then a writeback hint), one hashes it, each
//! batch as one short job on tokio's blocking pool. So the write and the hash of a chunk run
//! side by side and throughput approaches the slower of disk and SHA-256, not their sum; and
//! while the client is slow or stalled, no job runs and no thread is held: a stalled upload
//! costs its connection and at most a batch of memory per lane.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::io::{FileHandle, context};
use super::{Guard, job};
use crate::error::{Error, Result};
use crate::upload::session::Hashes;
use crate::upload::{ChunkStream, receiving};

/// Bytes gathered from the stream before they are handed to the lanes: large enough that a
/// stream of small frames costs few jobs, small enough that the disk starts writing early.
const BATCH: usize = 1024 * 1024;
/// Batches queued for each lane at most: bounds the memory a fast sender can pin, and how far
/// the writer can run ahead of the hasher.
const QUEUED: usize = 4;

type Batch = Arc<Vec<Bytes>>;

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
) -> Result<Written> {
    let (to_hasher, mut hasher_jobs) = mpsc::channel::<Batch>(QUEUED);
    let (to_writer, mut writer_jobs) = mpsc::channel::<Batch>(QUEUED);

    // Each lane owns its queue's receiver: a lane that fails drops it, so the feeder's next
    // send fails at once instead of waiting for room that never comes.
    let hashing = async move {
        let mut hashes = hashes;
        while let Some(batch) = hasher_jobs.recv().await {
            hashes = job(guard, move || {
                for piece in batch.iter() {
                    hashes.update(piece);
                }
                Ok(hashes)
            })
            .await?;
        }
        Ok::<_, Error>(hashes)
    };
    let lane_file = Arc::clone(&file);
    let writing = async move {
        let mut position = offset;
        while let Some(batch) = writer_jobs.recv().await {
            let n: u64 = batch.iter().map(|b| b.len() as u64).sum();
            let (file, what) = (Arc::clone(&lane_file), context("writing", path));
            job(guard, move || {
                file.write_at(&batch, position)
                    .map_err(|e| Error::io(what, e))?;
                file.start_writeback(position, n);
                Ok(())
            })
            .await?;
            position += n;
        }
        Ok::<_, Error>(position - offset)
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
                    && to_writer.send(batch).await.is_ok()
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
        Ok::<_, Error>(pending.is_empty() || send(pending).await)
    };
    let (fed, hashed, written) = tokio::join!(feeding, hashing, writing);
    let complete = fed?;
    let len = written?;
    let hashes = hashed?;
    if !complete {
        return Err(Error::io(
            context("writing", path),
            std::io::Error::other("a write lane stopped"),
        ));
    }
    let (synced, what) = (Arc::clone(&file), context("fsyncing", path));
    job(guard, move || {
        synced.sync_data().map_err(|e| Error::io(what, e))
    })
    .await?;
    // Durable and clean now: a blob's bytes are rarely read right after they are pushed, and a
    // multi-GB layer would otherwise push hotter data out of the cache. It also keeps an upload
    // on a small set of recycled pages: on a VM that hands free memory back to its host, each
    // new page costs a host fault (measured here at 2-3x the time of a 256 MiB upload). In the
    // background: nothing waits for it.
    drop(tokio::task::spawn_blocking(move || {
        file.drop_cache(offset, len)
    }));
    Ok(Written { hashes, len })
}
