//! The byte-rate limit of a scrub: a token bucket shared by every blob being hashed.
//!
//! Hand-written because it is twenty lines, while the rate-limiting crates count cells in `u32`
//! with a burst that caps each request, which fits byte counts of any size badly.
//!
//! The bucket holds at most one second's worth of bytes and starts full. Taking `n` bytes never
//! waits for them to be there: it takes them at once (the bucket may go into debt) and then
//! sleeps until the debt is paid. So whatever the sizes taken and however many tasks take at
//! once, a taker that returns at time `t` after `N` bytes were taken in all (its own included)
//! since the start finds `burst + rate·t − N ≥ 0`: `N` bytes take at least `(N − burst) / rate`.

use std::num::NonZeroU64;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub(super) struct RateLimiter {
    /// Bytes per second.
    rate: f64,
    /// Most bytes the bucket holds.
    burst: f64,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    /// Bytes that may be taken now without waiting; negative: a debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl RateLimiter {
    pub(super) fn new(bytes_per_second: NonZeroU64) -> Self {
        // f64 is exact up to 2^53 bytes per second, far beyond any disk.
        #[allow(clippy::cast_precision_loss)]
        let rate = bytes_per_second.get() as f64;
        Self {
            rate,
            burst: rate,
            bucket: Mutex::new(Bucket {
                tokens: rate,
                at: Instant::now(),
            }),
        }
    }

    /// Takes `n` bytes, then waits until the bucket is out of debt.
    pub(super) async fn take(&self, n: usize) {
        #[allow(clippy::cast_precision_loss)]
        let n = n as f64;
        let wait = {
            let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
            bucket.tokens = (bucket.tokens + refill).min(self.burst) - n;
            bucket.at = now;
            if bucket.tokens < 0.0 {
                // Rounded up to the next microsecond: never a wait shorter than the debt.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let micros = (-bucket.tokens / self.rate * 1e6).ceil() as u64;
                Duration::from_micros(micros)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
