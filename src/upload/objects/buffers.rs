//! Part buffers, allocated at a part's full size once and reused from one part to the next.
//!
//! Why: the request body arrives as frames cut from the HTTP server's read buffers (about
//! 400 KiB each), and a frame kept until its part is sent keeps its whole read buffer alive.
//! Holding three parts' worth of those buffers, allocated on one thread and freed on another
//! as parts are acknowledged, fragmented the allocator's arenas: the server's peak resident
//! memory on S3 was twice the bytes it held. Copying each frame into a buffer of the part's
//! size (a memory copy costs a fraction of the SHA-256 every byte gets anyway) frees the frame
//! at once, and the same few part buffers serve every part of every upload.
//!
//! Hand-written (a mutex over a list) rather than a pool crate: a buffer goes back to the pool
//! when the last `Bytes` of a sent part is dropped (`Bytes::from_owner`), which a generic pool's
//! guard type does not do.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::Bytes;

type Idle = Mutex<Vec<Vec<u8>>>;

/// A pool of part buffers that keeps at most `keep` idle ones.
#[derive(Debug)]
pub(super) struct PartBuffers {
    idle: Arc<Idle>,
    keep: usize,
}

impl PartBuffers {
    /// A pool keeping up to `keep` idle buffers; buffers beyond that are freed when dropped.
    pub(super) fn new(keep: usize) -> Self {
        Self {
            idle: Arc::new(Mutex::new(Vec::new())),
            keep,
        }
    }

    /// An empty buffer that holds `size` bytes without growing: an idle one if one is large
    /// enough, else a new one.
    pub(super) fn take(&self, size: usize) -> PartBuffer {
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.iter()
                .position(|b| b.capacity() >= size)
                .map(|i| idle.swap_remove(i))
        };
        PartBuffer {
            bytes: reused.unwrap_or_else(|| Vec::with_capacity(size)),
            home: Arc::downgrade(&self.idle),
            keep: self.keep,
        }
    }

    /// Idle buffers now (for tests).
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A buffer from a [`PartBuffers`] pool; dropped (or, after [`PartBuffer::freeze`], once the
/// last `Bytes` of it is dropped) it goes back to the pool.
#[derive(Debug)]
pub(super) struct PartBuffer {
    bytes: Vec<u8>,
    home: Weak<Idle>,
    keep: usize,
}

impl PartBuffer {
    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends `data`; the caller keeps within the size it asked for (else the buffer grows).
    pub(super) fn extend_from_slice(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
    }

    /// The bytes, shared without copying; the buffer is back in the pool once they are dropped.
    pub(super) fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PartBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for PartBuffer {
    fn drop(&mut self) {
        let Some(home) = self.home.upgrade() else {
            return;
        };
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        let mut idle = home.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.keep {
            idle.push(bytes);
        } else if let Some(smallest) = idle.iter_mut().min_by_key(|b| b.capacity())
            && smallest.capacity() < bytes.capacity()
        {
            // Parts grow with the upload (see `part_size`): keep the larger buffer.
            *smallest = bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_part_returns_its_buffer_for_the_next_part_once_its_bytes_are_dropped() {
        let pool = PartBuffers::new(2);
        let mut first = pool.take(1024);
        first.extend_from_slice(b"part one");
        let address = first.as_ref().as_ptr();
        let sent = first.freeze();
        let copy = sent.clone();
        drop(sent);
        assert_eq!(pool.idle(), 0, "a clone of the part still holds the buffer");
        assert_eq!(&copy[..], b"part one");
        drop(copy);
        assert_eq!(pool.idle(), 1);
        let second = pool.take(1024);
        assert!(second.is_empty(), "a reused buffer starts empty");
        assert_eq!(second.as_ref().as_ptr(), address);
    }

    #[test]
    fn a_buffer_too_small_for_the_part_is_not_reused() {
        let pool = PartBuffers::new(2);
        drop(pool.take(16));
        assert_eq!(pool.idle(), 1);
        let larger = pool.take(4096);
        assert!(larger.bytes.capacity() >= 4096);
        assert_eq!(pool.idle(), 1, "the small one stays idle");
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit_of_idle_buffers_and_the_largest_ones() {
        let pool = PartBuffers::new(2);
        let buffers: Vec<PartBuffer> = [16, 32, 64].map(|n| pool.take(n)).into();
        drop(buffers);
        assert_eq!(pool.idle(), 2);
        let mut kept: Vec<usize> = pool
            .idle
            .lock()
            .unwrap()
            .iter()
            .map(Vec::capacity)
            .collect();
        kept.sort_unstable();
        assert!(kept[0] >= 32, "{kept:?}");
    }
}
