//! The blob-descriptor cache shared by replicas through Redis.
//!
//! # Keys
//!
//! Under a prefix (`layerstore` by default):
//!
//! | key | value | TTL |
//! | --- | --- | --- |
//! | `P:epoch` | a random token; every entry carries the one it was written under | none |
//! | `P:gc` | the last GC generation the cache was cleared for | none |
//! | `P:l:{repository}:{digest}` | a link entry: the epoch | entry TTL |
//! | `P:b:{digest}` | a blob entry: `{epoch} {size} {o\|s}` | entry TTL |
//! | `P:lv:{repository}:{digest}`, `P:bv:{digest}` | removal counters | entry TTL |
//!
//! An entry counts only if it carries the current epoch, so [`clear`](BlobDescriptorCache::clear)
//! is one `SET` of a new epoch that every replica sees at once (entries of old epochs are
//! never read again and expire; a `SCAN` + `DEL` would cost time proportional to the
//! cache and let a replica read half-cleared state).
//!
//! # The cross-replica race guard
//!
//! A removal increments the entry's removal counter and deletes it in one `MULTI`. A fill
//! reads the epoch and both counters before the store reads the backend
//! ([`fill_guard`](BlobDescriptorCache::fill_guard)) and writes its entries in a Lua script
//! only if all three are unchanged, and the store's GC generation is the cache's: so a fill
//! whose backend read predates a removal made by any replica, a clear, or a GC run the store
//! does not know of yet, writes nothing. The counters live for the entry TTL, far longer
//! than any backend read.
//!
//! # When Redis cannot be reached
//!
//! Every call is bounded by the dial, write and read timeouts together. A lookup that fails
//! misses (the store asks the backend), a fill that fails is dropped, and for
//! [`RedisCacheConfig::retry_after`] after a failure lookups and fills do not try Redis at
//! all (a hanging server costs one timeout per `retry_after`, not one per request). A
//! removal always tries, and reports a failure: [`crate::Repository::unlink_blob`] then fails
//! before it deletes anything. A failed removal or clear also marks the cache *dirty*: this
//! process answers nothing from it and fills nothing until it has cleared it (a new epoch),
//! which it tries first at every call, so entries it could not remove are never served once
//! Redis is back. The connection is re-established by itself at the next call.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisError, Script};

use super::{
    BlobDescriptorCache, BlobPlacement, CacheError, CacheStats, CachedBlob, Counters, FillGuard,
};
use crate::digest::Digest;
use crate::name::RepositoryName;

/// How to reach Redis and how long to wait for it: a plain struct, filled by a frontend
/// from its own configuration (the reference server reads Distribution's `redis` section).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisCacheConfig {
    /// Host name or address.
    pub host: String,
    pub port: u16,
    /// Database number (`SELECT`).
    pub db: i64,
    /// ACL user (Redis 6+); `None` authenticates with the password alone.
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS (`rediss`), verified against the system's root certificates.
    pub tls: bool,
    /// Most time to establish a connection.
    pub dial_timeout: Duration,
    /// Most time to send a command.
    pub write_timeout: Duration,
    /// Most time to wait for its reply.
    pub read_timeout: Duration,
    /// After a lookup or fill failed, how long lookups and fills skip Redis.
    pub retry_after: Duration,
    /// How long an entry lives (it is written anew at the next miss after it expired).
    /// Entries are correct without one; it only bounds the memory of entries nobody asks
    /// for and of entries left behind by a clear.
    pub entry_ttl: Duration,
    /// Prefix of every key, so that registries (or tests) can share one database.
    pub key_prefix: String,
}

impl Default for RedisCacheConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 6379,
            db: 0,
            username: None,
            password: None,
            tls: false,
            dial_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(24 * 3600),
            key_prefix: "layerstore".to_owned(),
        }
    }
}

impl fmt::Debug for RedisCacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("dial_timeout", &self.dial_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("retry_after", &self.retry_after)
            .field("entry_ttl", &self.entry_ttl)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// The values of the `operation` label of `layerstore_cache_redis_errors_total`.
pub const REDIS_OPERATIONS: &[&str] = &["lookup", "fill", "remove", "clear"];

/// A fill only if nothing changed since the guard, and the store's GC generation is the
/// cache's (an older one: dropped; a newer one: the cache is cleared for it).
/// KEYS: epoch, gc, link version, blob version, link, blob.
/// ARGV: guard epoch, guard link version, guard blob version, store's GC generation,
/// a new epoch, the blob's value, TTL in seconds.
const FILL: &str = r"
local g = tonumber(redis.call('GET', KEYS[2]) or '-1')
local mine = tonumber(ARGV[4])
if g > mine then return 0 end
if g < mine then
  redis.call('SET', KEYS[2], ARGV[4])
  redis.call('SET', KEYS[1], ARGV[5])
  return 0
end
local epoch = redis.call('GET', KEYS[1]) or ''
if epoch ~= ARGV[1]
  or (redis.call('GET', KEYS[3]) or '') ~= ARGV[2]
  or (redis.call('GET', KEYS[4]) or '') ~= ARGV[3] then
  return 0
end
if epoch == '' then
  epoch = ARGV[5]
  redis.call('SET', KEYS[1], epoch)
end
redis.call('SET', KEYS[5], epoch, 'EX', ARGV[7])
redis.call('SET', KEYS[6], epoch .. ' ' .. ARGV[6], 'EX', ARGV[7])
return 1
";

/// Clears the cache for a GC generation unless it already was (or for a later one).
/// KEYS: epoch, gc. ARGV: generation, a new epoch.
const GC_CLEAR: &str = r"
local g = tonumber(redis.call('GET', KEYS[2]) or '-1')
if g < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// The cache over Redis. Cheap to share (`Arc`); one per process and Redis database.
pub struct RedisCache {
    connection: ConnectionManager,
    config: RedisCacheConfig,
    /// Every call's bound: dial, write and read timeouts together.
    call_timeout: Duration,
    fill: Script,
    gc_clear: Script,
    counters: Arc<Counters>,
    /// Until when lookups and fills skip Redis (after a failure).
    skip_until: Mutex<Option<Instant>>,
    /// A removal or clear failed: answer nothing until a clear succeeds.
    dirty: AtomicBool,
    /// The GC generation the store last told the cache of (`u64::MAX`: none yet).
    gc_generation: AtomicU64,
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .field("dirty", &self.dirty.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The Redis cache's [`FillGuard`] token: what the keys held before the backend read
/// (`""` for absent), or `None` if Redis could not be asked (then the fill is dropped).
struct Versions(Option<[String; 3]>);

impl RedisCache {
    /// A cache reaching Redis as `config` says. Connects lazily: a Redis that is down now
    /// is used once it is up.
    ///
    /// # Errors
    /// Not called within a Tokio runtime (the connection's tasks run on it), or the
    /// settings are unusable (for example TLS without a crypto provider).
    pub fn new(config: RedisCacheConfig) -> Result<Self, CacheError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(CacheError {
                reason: "a Redis cache must be made within a Tokio runtime".to_owned(),
            });
        }
        let addr = if config.tls {
            ConnectionAddr::TcpTls {
                host: config.host.clone(),
                port: config.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(config.host.clone(), config.port)
        };
        let mut redis = RedisConnectionInfo::default().set_db(config.db);
        if let Some(user) = &config.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &config.password {
            redis = redis.set_password(password);
        }
        let info = addr
            .into_connection_info()
            .map_err(unusable)?
            .set_redis_settings(redis);
        let client = Client::open(info).map_err(unusable)?;
        let response_timeout = config.write_timeout + config.read_timeout;
        // No retries inside the manager: a refused connection fails the call at once, and
        // the next call dials again (the manager reconnects when a call saw the connection
        // drop).
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.dial_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(0);
        let connection =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(unusable)?;
        Ok(Self {
            connection,
            call_timeout: config.dial_timeout + response_timeout,
            config,
            fill: Script::new(FILL),
            gc_clear: Script::new(GC_CLEAR),
            counters: Arc::new(Counters::default()),
            skip_until: Mutex::new(None),
            dirty: AtomicBool::new(false),
            gc_generation: AtomicU64::new(u64::MAX),
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.config.key_prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    fn link_keys(&self, repository: &RepositoryName, digest: &Digest) -> (String, String) {
        let (r, d) = (repository.as_str(), digest.to_string());
        (self.key(&["l", r, &d]), self.key(&["lv", r, &d]))
    }

    fn blob_keys(&self, digest: &Digest) -> (String, String) {
        let d = digest.to_string();
        (self.key(&["b", &d]), self.key(&["bv", &d]))
    }

    fn ttl_seconds(&self) -> u64 {
        self.config.entry_ttl.as_secs().max(1)
    }

    /// Runs `cmd` within the call timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        call: impl AsyncFnOnce(&mut ConnectionManager) -> Result<T, RedisError>,
    ) -> Result<T, CacheError> {
        let mut connection = self.connection.clone();
        let outcome = tokio::time::timeout(self.call_timeout, call(&mut connection)).await;
        let reason = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if e.is_timeout() => format!("timed out: {e}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.call_timeout),
        };
        let label = if reason.starts_with("no answer") || reason.starts_with("timed out") {
            "timeout"
        } else {
            "error"
        };
        crate::metrics::redis_error(operation, label);
        *self.skip_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + self.config.retry_after);
        tracing::warn!(operation, %reason, "redis cache");
        Err(CacheError { reason })
    }

    /// Whether lookups and fills may use Redis now: not right after a failure, and only
    /// once a dirty cache was cleared.
    async fn usable(&self, operation: &'static str) -> bool {
        let skipping = self
            .skip_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until);
        if skipping {
            crate::metrics::redis_error(operation, "skipped");
            return false;
        }
        if !self.dirty.load(Ordering::SeqCst) || self.clean().await {
            return true;
        }
        crate::metrics::redis_error(operation, "skipped");
        false
    }

    /// Clears a dirty cache; whether it is clean now.
    async fn clean(&self) -> bool {
        if self.set_new_epoch().await.is_ok() {
            self.dirty.store(false, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    async fn set_new_epoch(&self) -> Result<(), CacheError> {
        let key = self.key(&["epoch"]);
        self.run("clear", async |c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(new_epoch())
                .query_async::<()>(c)
                .await
        })
        .await
    }

    /// `MGET epoch, keys...`: the values of the keys that carry the current epoch, after
    /// it (`None` for absent or of another epoch); `None` if Redis could not be asked.
    async fn current(&self, keys: &[&str]) -> Option<Vec<Option<String>>> {
        if !self.usable("lookup").await {
            return None;
        }
        let epoch_key = self.key(&["epoch"]);
        let values: Vec<Option<String>> = self
            .run("lookup", async |c| {
                redis::cmd("MGET")
                    .arg(&epoch_key)
                    .arg(keys)
                    .query_async(c)
                    .await
            })
            .await
            .ok()?;
        let (epoch, entries) = values.split_first()?;
        let epoch = epoch.as_deref()?;
        Some(
            entries
                .iter()
                .map(|v| {
                    let v = v.as_deref()?;
                    let rest = v.strip_prefix(epoch)?;
                    (rest.is_empty() || rest.starts_with(' ')).then(|| rest.trim().to_owned())
                })
                .collect(),
        )
    }

    async fn remove(
        &self,
        entry: String,
        version: String,
        operation: &'static str,
    ) -> Result<(), CacheError> {
        let ttl = self.ttl_seconds();
        let removed = self
            .run(operation, async |c| {
                redis::pipe()
                    .atomic()
                    .incr(&version, 1)
                    .ignore()
                    .expire(&version, i64::try_from(ttl).unwrap_or(i64::MAX))
                    .ignore()
                    .del(&entry)
                    .ignore()
                    .query_async::<()>(c)
                    .await
            })
            .await;
        if removed.is_err() {
            self.dirty.store(true, Ordering::SeqCst);
        }
        removed
    }
}

fn unusable(e: RedisError) -> CacheError {
    CacheError {
        reason: format!("unusable redis settings: {e}"),
    }
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn encode(blob: CachedBlob) -> String {
    let placement = match blob.placement {
        BlobPlacement::Object => 'o',
        BlobPlacement::Segments => 's',
    };
    format!("{} {placement}", blob.size)
}

fn decode(value: &str) -> Option<CachedBlob> {
    let (size, placement) = value.split_once(' ')?;
    let size = size.parse().ok()?;
    match placement {
        "o" => Some(CachedBlob::object(size)),
        "s" => Some(CachedBlob::segments(size)),
        _ => None,
    }
}

#[async_trait]
impl BlobDescriptorCache for RedisCache {
    async fn blob(&self, digest: &Digest) -> Option<CachedBlob> {
        let (key, _) = self.blob_keys(digest);
        let found = self
            .current(&[&key])
            .await
            .and_then(|v| v.into_iter().next().flatten())
            .and_then(|v| decode(&v));
        self.counters.count(found.is_some());
        found
    }

    async fn linked(&self, repository: &RepositoryName, digest: &Digest) -> bool {
        let (key, _) = self.link_keys(repository, digest);
        let found = self
            .current(&[&key])
            .await
            .is_some_and(|v| v.first().is_some_and(Option::is_some));
        self.counters.count(found);
        found
    }

    /// One `MGET` of the epoch, the link and the blob.
    async fn linked_blob(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Option<CachedBlob> {
        let (link, _) = self.link_keys(repository, digest);
        let (blob, _) = self.blob_keys(digest);
        let Some(mut values) = self.current(&[&link, &blob]).await else {
            self.counters.count(false);
            return None;
        };
        let blob = values.pop().flatten();
        if values.pop().flatten().is_none() {
            self.counters.count(false);
            return None;
        }
        let found = blob.and_then(|v| decode(&v));
        self.counters.count(true);
        self.counters.count(found.is_some());
        found
    }

    async fn fill_guard(&self, repository: &RepositoryName, digest: &Digest) -> FillGuard {
        let (_, link_version) = self.link_keys(repository, digest);
        let (_, blob_version) = self.blob_keys(digest);
        let epoch = self.key(&["epoch"]);
        if !self.usable("fill").await {
            return FillGuard::new(Versions(None));
        }
        let read: Result<Vec<Option<String>>, _> = self
            .run("fill", async |c| {
                redis::cmd("MGET")
                    .arg(&epoch)
                    .arg(&link_version)
                    .arg(&blob_version)
                    .query_async(c)
                    .await
            })
            .await;
        let versions = read.ok().and_then(|v| {
            let [e, l, b]: [Option<String>; 3] = v.try_into().ok()?;
            Some([e, l, b].map(Option::unwrap_or_default))
        });
        FillGuard::new(Versions(versions))
    }

    async fn fill(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        blob: CachedBlob,
        guard: FillGuard,
    ) {
        let Some(Versions(Some([epoch, link_version, blob_version]))) = guard.token() else {
            return;
        };
        let generation = self.gc_generation.load(Ordering::SeqCst);
        if generation == u64::MAX || !self.usable("fill").await {
            return;
        }
        let (link_key, link_version_key) = self.link_keys(repository, digest);
        let (blob_key, blob_version_key) = self.blob_keys(digest);
        let (epoch_key, gc_key) = (self.key(&["epoch"]), self.key(&["gc"]));
        let ttl = self.ttl_seconds();
        let _ = self
            .run("fill", async |c| {
                self.fill
                    .key(&epoch_key)
                    .key(&gc_key)
                    .key(&link_version_key)
                    .key(&blob_version_key)
                    .key(&link_key)
                    .key(&blob_key)
                    .arg(epoch)
                    .arg(link_version)
                    .arg(blob_version)
                    .arg(generation)
                    .arg(new_epoch())
                    .arg(encode(blob))
                    .arg(ttl)
                    .invoke_async::<i64>(c)
                    .await
            })
            .await;
    }

    async fn remove_blob(&self, digest: &Digest) {
        let (entry, version) = self.blob_keys(digest);
        let _ = self.remove(entry, version, "remove").await;
    }

    async fn remove_link(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<(), CacheError> {
        let (entry, version) = self.link_keys(repository, digest);
        self.remove(entry, version, "remove").await
    }

    async fn clear(&self) {
        if self.set_new_epoch().await.is_err() {
            self.dirty.store(true, Ordering::SeqCst);
        }
    }

    async fn gc_generation_seen(&self, generation: u64) {
        self.gc_generation.store(generation, Ordering::SeqCst);
        let (epoch_key, gc_key) = (self.key(&["epoch"]), self.key(&["gc"]));
        let cleared = self
            .run("clear", async |c| {
                self.gc_clear
                    .key(&epoch_key)
                    .key(&gc_key)
                    .arg(generation)
                    .arg(new_epoch())
                    .invoke_async::<i64>(c)
                    .await
            })
            .await;
        if cleared.is_err() {
            self.dirty.store(true, Ordering::SeqCst);
        }
    }

    /// Hits and misses of this process; Redis's own evictions are not seen (0).
    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            evictions: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip_through_their_encoding() {
        for blob in [CachedBlob::object(0), CachedBlob::segments(u64::MAX)] {
            assert_eq!(decode(&encode(blob)), Some(blob));
        }
        assert_eq!(decode("12 x"), None);
        assert_eq!(decode("twelve o"), None);
    }

    #[test]
    fn the_password_is_not_printed() {
        let config = RedisCacheConfig {
            password: Some("hunter2".to_owned()),
            ..RedisCacheConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
