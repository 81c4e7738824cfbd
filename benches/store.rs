//! Throughput and latency of the store's hot paths, next to the ceilings they are bounded by.
//!
//! Run with `cargo bench --bench store`. Every figure is measured in the same run as its
//! ceiling, so it can be read as a ratio:
//!
//! - `baseline/sha256`: raw single-core SHA-256 (`sha2`) of 64 MiB, the ceiling of every put
//!   and upload (each one verifies its digest);
//! - `baseline/file_write_fsync`: 64 MiB written with `std::fs` in 1 MiB writes plus one
//!   `sync_all`, into the same temporary directory as the filesystem store, the ceiling of
//!   filesystem writes;
//! - `baseline/page_cache_read`: 64 MiB read back from the page cache in 1 MiB reads, the
//!   ceiling of filesystem gets.
//!
//! The baselines run again at the end as `baseline_end`, so a change of load during the run
//! shows up instead of skewing every ratio.
//!
//! Each store bench runs on the in-memory and the filesystem backend (in a `TempDir`; the
//! filesystem backend fsyncs every published object, and that is part of what is measured).
//! With `LAYERSTORE_BENCH_REDIS=redis://host:port`, `stat_blob/fs/redis_cached` times a stat
//! answered by the Redis cache as well.
//!
//! Puts and uploads write a new digest on every iteration: contents differ in their first
//! bytes, and large contents come from a small ring of distinct buffers whose blobs are purged
//! (outside the timed region) before the ring comes round again, so dedupe never turns a put
//! into a no-op. Setup — making contents, hashing them for their expected digest, purging —
//! is never timed (`iter_custom`).

use std::fs::File;
use std::future::Future;
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main, measurement::WallTime,
};
use futures::{StreamExt, TryStreamExt};
use layerstore::cache::{BlobDescriptorCache, MemoryCache, RedisCache, RedisCacheConfig};
use layerstore::layout::KeyLayout;
use layerstore::manifest::media_type;
use layerstore::{Backend, ByteRange, Digest, Reference, Repository, RepositoryName, Store, Tag};
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use tokio::runtime::Runtime;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Size of the big blob, and of every baseline.
const BIG: usize = 64 * MIB;
/// Size of the biggest chunked upload.
const HUGE: usize = 256 * MIB;
/// Size of one `append_upload` call of a chunked upload.
const CHUNK: usize = 8 * MIB;
/// Size of the pieces a chunk's stream yields (what a frontend's body frames would be).
const PIECE: usize = MIB;
/// Buffers in a ring of big contents; the store is purged after each round of the ring.
const RING: usize = 4;
/// Contents prepared (and then purged) at once for small puts.
const SMALL_BATCH: u64 = 256;

/// Never-repeating tags for the first 8 bytes of generated contents, across the whole run.
static NEXT_CONTENT: AtomicU64 = AtomicU64::new(0);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn block_on<F: Future>(rt: &Runtime, f: F) -> F::Output {
    rt.block_on(f)
}

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.expect("bench operation failed")
}

/// Pseudo-random (incompressible, not all-zero) bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A content never generated before in this run, with its digest.
fn fresh_content(base: &[u8]) -> (Digest, Bytes) {
    let mut v = base.to_vec();
    let tag = NEXT_CONTENT.fetch_add(1, Ordering::Relaxed).to_le_bytes();
    v[..8].copy_from_slice(&tag);
    (Digest::sha256(&v), Bytes::from(v))
}

/// `n` distinct big contents, hashed once.
fn ring(size: usize, n: usize) -> Vec<(Digest, Bytes)> {
    let base = noise(size, size as u64);
    (0..n).map(|_| fresh_content(&base)).collect()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Filesystem,
}

impl Kind {
    const ALL: [Self; 2] = [Self::Memory, Self::Filesystem];

    fn label(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Filesystem => "fs",
        }
    }
}

/// A store over a fresh backend, one repository, and a raw handle on the same objects for
/// purging outside the timed region.
struct Fixture {
    store: Store,
    repo: Repository,
    raw: Raw,
    _dir: Option<TempDir>,
}

enum Raw {
    Memory(Arc<InMemory>),
    Filesystem(PathBuf),
}

fn repo_name() -> RepositoryName {
    ok(RepositoryName::parse("bench/app"))
}

impl Fixture {
    fn new(kind: Kind, cached: bool) -> Self {
        let cache: Option<Arc<dyn BlobDescriptorCache>> =
            cached.then(|| Arc::new(MemoryCache::default()) as _);
        Self::with_cache(kind, cache)
    }

    fn with_cache(kind: Kind, cache: Option<Arc<dyn BlobDescriptorCache>>) -> Self {
        let (backend, raw, dir) = match kind {
            Kind::Memory => {
                let mem = Arc::new(InMemory::new());
                // Exactly what `Backend::in_memory()` builds, keeping a handle for purges.
                let backend = Backend::object_store(mem.clone()).with_multipart(mem.clone());
                (backend, Raw::Memory(mem), None)
            }
            Kind::Filesystem => {
                let dir = ok(tempfile::tempdir());
                let backend = ok(Backend::filesystem(dir.path()));
                let root = backend.local_root().expect("local root").to_path_buf();
                // A store in steady state has all 256 fan-out directories of `blobs/sha256/`;
                // a new blob then creates only its own directory.
                for i in 0..=255u8 {
                    ok(std::fs::create_dir_all(
                        root.join(format!("blobs/sha256/{i:02x}")),
                    ));
                }
                (backend, Raw::Filesystem(root), Some(dir))
            }
        };
        let store = Store::with_cache(backend, cache);
        let repo = store.repository(repo_name());
        Self {
            store,
            repo,
            raw,
            _dir: dir,
        }
    }

    /// Removes these blobs' bytes (data, segment index, segments) and links, so that their
    /// digests can be put again for real. Not timed.
    async fn purge(&self, digests: &[Digest]) {
        let keys = KeyLayout;
        let name = repo_name();
        match &self.raw {
            Raw::Memory(mem) => {
                for d in digests {
                    for key in [
                        keys.blob_data(d),
                        keys.blob_segments(d),
                        keys.layer_link(&name, d),
                    ] {
                        let _ = mem.delete(&key).await;
                    }
                }
                let segments: Vec<Key> = ok(mem
                    .list(Some(&Key::from("segments")))
                    .map_ok(|m| m.location)
                    .try_collect()
                    .await);
                for key in segments {
                    let _ = mem.delete(&key).await;
                }
            }
            Raw::Filesystem(root) => {
                for d in digests {
                    // The blob's own directory and the link's; fan-out directories stay.
                    for key in [keys.blob_data(d), keys.layer_link(&name, d)] {
                        let file = root.join(key.as_ref());
                        if let Some(dir) = file.parent() {
                            let _ = std::fs::remove_dir_all(dir);
                        }
                    }
                }
            }
        }
    }
}

/// Turns an 8 MiB chunk into the stream `append_upload` takes, in `PIECE`-sized frames.
fn chunk_stream(chunk: Bytes) -> layerstore::upload::ChunkStream<'static> {
    let pieces: Vec<std::io::Result<Bytes>> = (0..chunk.len())
        .step_by(PIECE)
        .map(|at| Ok(chunk.slice(at..(at + PIECE).min(chunk.len()))))
        .collect();
    futures::stream::iter(pieces).boxed()
}

async fn chunked_upload(repo: &Repository, digest: &Digest, data: &Bytes) {
    let session = ok(repo.start_upload().await);
    let mut offset = 0u64;
    for at in (0..data.len()).step_by(CHUNK) {
        let chunk = data.slice(at..(at + CHUNK).min(data.len()));
        let len = chunk.len() as u64;
        let status = ok(repo
            .append_upload(&session.id, offset, chunk_stream(chunk))
            .await);
        offset += len;
        assert_eq!(status.offset, offset);
    }
    ok(repo
        .commit_upload(&session.id, digest, Some(data.len() as u64))
        .await);
}

/// Streams a read to its end, counting bytes.
async fn drain(repo: &Repository, digest: &Digest, range: Option<ByteRange>) -> u64 {
    let read = ok(repo.read_blob(digest, range).await);
    let mut stream = read.stream;
    let mut n = 0u64;
    while let Some(bytes) = stream.next().await {
        n += ok(bytes).len() as u64;
    }
    n
}

fn configure_big(group: &mut BenchmarkGroup<'_, WallTime>, measurement_secs: u64) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(measurement_secs));
}

fn configure_small(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(30)
        .sampling_mode(SamplingMode::Auto)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

// ---------------------------------------------------------------------------------------------
// 1. Baselines
// ---------------------------------------------------------------------------------------------

/// The ceilings, measured first (`baseline`) and again last (`baseline_end`): on a shared
/// machine the load can change during a run, and a ceiling is what the machine can do.
fn baselines(c: &mut Criterion) {
    baselines_named(c, "baseline");
}

fn baselines_end(c: &mut Criterion) {
    baselines_named(c, "baseline_end");
}

fn baselines_named(c: &mut Criterion, name: &str) {
    let data = noise(BIG, 7);
    let dir = ok(tempfile::tempdir());
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(BIG as u64));
    configure_big(&mut group, 6);

    group.bench_function("sha256/64MiB", |b| {
        b.iter(|| Sha256::digest(black_box(&data[..])));
    });

    group.bench_function("file_write_fsync/64MiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let path = dir.path().join(format!("write-{i}"));
                let start = Instant::now();
                let mut file = ok(File::create(&path));
                for piece in data.chunks(MIB) {
                    ok(file.write_all(piece));
                }
                ok(file.sync_all());
                drop(file);
                total += start.elapsed();
                ok(std::fs::remove_file(&path));
            }
            total
        });
    });

    let path = dir.path().join("read");
    ok(std::fs::write(&path, &data));
    ok(File::open(&path).and_then(|f| f.sync_all()));
    let read_all = |path: &Path, buf: &mut [u8]| {
        let mut file = ok(File::open(path));
        let mut n = 0usize;
        loop {
            match ok(file.read(buf)) {
                0 => break n,
                k => n += k,
            }
        }
    };
    let mut buf = vec![0u8; MIB];
    assert_eq!(read_all(&path, &mut buf), BIG, "warming the page cache");
    group.bench_function("page_cache_read/64MiB", |b| {
        b.iter(|| read_all(&path, black_box(&mut buf)));
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. Monolithic blob puts
// ---------------------------------------------------------------------------------------------

/// Puts `iters` never-seen contents of `size` bytes, in batches made and purged untimed.
async fn put_small(fx: &Fixture, base: &[u8], iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(SMALL_BATCH);
        let batch: Vec<_> = (0..n).map(|_| fresh_content(base)).collect();
        let start = Instant::now();
        for (digest, data) in &batch {
            ok(fx.repo.put_blob(digest, data.clone()).await);
        }
        total += start.elapsed();
        let digests: Vec<_> = batch.iter().map(|(d, _)| *d).collect();
        fx.purge(&digests).await;
        done += n;
    }
    total
}

/// Runs `op` over the ring of big contents, purging each round (untimed) before reuse.
async fn over_ring<F, Fut>(fx: &Fixture, ring: &[(Digest, Bytes)], iters: u64, op: F) -> Duration
where
    F: Fn(Digest, Bytes) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut total = Duration::ZERO;
    let mut used = Vec::with_capacity(ring.len());
    for i in 0..iters as usize {
        let (digest, data) = &ring[i % ring.len()];
        let start = Instant::now();
        op(*digest, data.clone()).await;
        total += start.elapsed();
        used.push(*digest);
        if used.len() == ring.len() {
            fx.purge(&used).await;
            used.clear();
        }
    }
    fx.purge(&used).await;
    total
}

fn blob_put(c: &mut Criterion) {
    let rt = runtime();
    let big = ring(BIG, RING);
    for kind in Kind::ALL {
        let fx = Fixture::new(kind, true);
        let mut group = c.benchmark_group("blob_put");
        configure_small(&mut group);
        for size in [4 * KIB, MIB] {
            let base = noise(size, size as u64);
            group.throughput(Throughput::Bytes(size as u64));
            let id = BenchmarkId::new(kind.label(), label(size));
            group.bench_function(id, |b| {
                b.to_async(&rt)
                    .iter_custom(|iters| put_small(&fx, &base, iters));
            });
        }
        configure_big(&mut group, 8);
        group.throughput(Throughput::Bytes(BIG as u64));
        group.bench_function(BenchmarkId::new(kind.label(), label(BIG)), |b| {
            let repo = &fx.repo;
            b.to_async(&rt).iter_custom(|iters| {
                over_ring(&fx, &big, iters, |digest, data| async move {
                    ok(repo.put_blob(&digest, data).await);
                })
            });
        });
        group.finish();
    }
}

fn label(size: usize) -> String {
    if size >= MIB {
        format!("{}MiB", size / MIB)
    } else {
        format!("{}KiB", size / KIB)
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Blob gets
// ---------------------------------------------------------------------------------------------

fn blob_get(c: &mut Criterion) {
    let rt = runtime();
    for kind in Kind::ALL {
        let fx = Fixture::new(kind, true);
        let (big, big_data) = fresh_content(&noise(BIG, 11));
        let (small, small_data) = fresh_content(&noise(4 * KIB, 12));
        block_on(&rt, async {
            ok(fx.repo.put_blob(&big, big_data).await);
            ok(fx.repo.put_blob(&small, small_data).await);
            // Warm the page cache (filesystem) the way a first download would.
            assert_eq!(drain(&fx.repo, &big, None).await, BIG as u64);
        });

        let mut group = c.benchmark_group("blob_get");
        configure_big(&mut group, 5);
        group.throughput(Throughput::Bytes(BIG as u64));
        group.bench_function(BenchmarkId::new(kind.label(), "whole/64MiB"), |b| {
            b.to_async(&rt).iter(|| drain(&fx.repo, &big, None));
        });

        configure_small(&mut group);
        group.throughput(Throughput::Bytes(MIB as u64));
        let middle = ByteRange::Bounded {
            start: (BIG / 2) as u64,
            end_inclusive: (BIG / 2 + MIB - 1) as u64,
        };
        group.bench_function(BenchmarkId::new(kind.label(), "range_1MiB/64MiB"), |b| {
            b.to_async(&rt).iter(|| async {
                let n = drain(&fx.repo, &big, Some(middle)).await;
                assert_eq!(n, MIB as u64);
                n
            });
        });

        group.throughput(Throughput::Bytes(4 * KIB as u64));
        group.bench_function(BenchmarkId::new(kind.label(), "whole/4KiB"), |b| {
            b.to_async(&rt).iter(|| drain(&fx.repo, &small, None));
        });
        group.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Chunked uploads
// ---------------------------------------------------------------------------------------------

fn chunked_upload_bench(c: &mut Criterion) {
    let rt = runtime();
    let big = ring(BIG, RING);
    let huge = ring(HUGE, 2);
    for kind in Kind::ALL {
        let fx = Fixture::new(kind, true);
        let mut group = c.benchmark_group("chunked_upload_8MiB_chunks");
        for (ring, secs) in [(&big, 10), (&huge, 15)] {
            let size = ring[0].1.len();
            configure_big(&mut group, secs);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(BenchmarkId::new(kind.label(), label(size)), |b| {
                let repo = &fx.repo;
                b.to_async(&rt).iter_custom(|iters| {
                    over_ring(&fx, ring, iters, |digest, data| async move {
                        chunked_upload(repo, &digest, &data).await;
                    })
                });
            });
        }
        group.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Stat
// ---------------------------------------------------------------------------------------------

fn stat(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("stat_blob");
    configure_small(&mut group);
    group.sample_size(50);
    group.throughput(Throughput::Elements(1));
    for kind in Kind::ALL {
        for cached in [true, false] {
            let fx = Fixture::new(kind, cached);
            let (digest, data) = fresh_content(&noise(4 * KIB, 13));
            block_on(&rt, async {
                ok(fx.repo.put_blob(&digest, data).await);
                // The first stat fills the cache; the timed ones hit it (if there is one).
                ok(fx.repo.stat_blob(&digest).await);
                ok(fx.repo.stat_blob(&digest).await);
            });
            if cached {
                let stats = fx.store.cache_stats().expect("a cache");
                assert!(
                    stats.hits > 0,
                    "the second stat missed the cache: {stats:?}"
                );
            }
            let which = if cached { "cached" } else { "uncached" };
            group.bench_function(BenchmarkId::new(kind.label(), which), |b| {
                b.to_async(&rt).iter(|| fx.repo.stat_blob(&digest));
            });
        }
    }
    // A hit in a Redis cache (one MGET round trip over loopback), when
    // LAYERSTORE_BENCH_REDIS=redis://host:port names a server.
    if let Some(redis) = bench_redis() {
        // The cache's connection runs its tasks on the runtime it is made in.
        let _in_runtime = rt.enter();
        let fx = Fixture::with_cache(Kind::Filesystem, Some(Arc::new(ok(RedisCache::new(redis)))));
        let (digest, data) = fresh_content(&noise(4 * KIB, 14));
        block_on(&rt, async {
            ok(fx.repo.put_blob(&digest, data).await);
            ok(fx.repo.stat_blob(&digest).await);
        });
        let before = fx.store.cache_stats().expect("a cache");
        block_on(&rt, async { ok(fx.repo.stat_blob(&digest).await) });
        let after = fx.store.cache_stats().expect("a cache");
        assert_eq!(
            after.hits,
            before.hits + 2,
            "the stat missed Redis: {after:?}"
        );
        group.bench_function(BenchmarkId::new("fs", "redis_cached"), |b| {
            b.to_async(&rt).iter(|| fx.repo.stat_blob(&digest));
        });
    }
    group.finish();
}

/// The Redis of the `redis_cached` stat bench, from `LAYERSTORE_BENCH_REDIS`, under a fresh
/// key prefix.
fn bench_redis() -> Option<RedisCacheConfig> {
    let url = std::env::var("LAYERSTORE_BENCH_REDIS").ok()?;
    let (host, port) = url
        .strip_prefix("redis://")
        .and_then(|h| h.trim_end_matches('/').rsplit_once(':'))
        .expect("LAYERSTORE_BENCH_REDIS=redis://host:port");
    Some(RedisCacheConfig {
        host: host.to_owned(),
        port: port.parse().expect("a port"),
        key_prefix: format!("bench-{:016x}", rand::random::<u64>()),
        ..RedisCacheConfig::default()
    })
}

// ---------------------------------------------------------------------------------------------
// 6. Manifests
// ---------------------------------------------------------------------------------------------

/// An OCI image manifest of `config` and `layers`, made unique by an annotation.
fn manifest_json(config: &(Digest, u64), layers: &[(Digest, u64)], n: u64) -> Bytes {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, size)| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{size}}}"#
            )
        })
        .collect();
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}],"annotations":{{"org.opencontainers.image.revision":"{n}"}}}}"#,
        media_type::OCI_MANIFEST,
        config.0,
        config.1,
        layers.join(","),
    ))
}

fn manifests(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("manifest");
    configure_small(&mut group);
    group.throughput(Throughput::Elements(1));
    let latest = Reference::Tag(ok(Tag::parse("latest")));
    for kind in Kind::ALL {
        let fx = Fixture::new(kind, true);
        let blobs: Vec<(Digest, u64)> = block_on(&rt, async {
            let mut blobs = vec![];
            for i in 0..6 {
                let (d, data) = fresh_content(&noise(4 * KIB, 100 + i));
                let size = data.len() as u64;
                ok(fx.repo.put_blob(&d, data).await);
                blobs.push((d, size));
            }
            blobs
        });
        let (config, layers) = blobs.split_first().expect("six blobs");
        let next = AtomicU64::new(0);
        group.bench_function(BenchmarkId::new(kind.label(), "put/tag+5_layers"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let bodies: Vec<Bytes> = (0..iters)
                    .map(|_| manifest_json(config, layers, next.fetch_add(1, Ordering::Relaxed)))
                    .collect();
                let (repo, latest) = (&fx.repo, &latest);
                async move {
                    let start = Instant::now();
                    for body in bodies {
                        ok(repo
                            .put_manifest(latest, body, Some(media_type::OCI_MANIFEST))
                            .await);
                    }
                    start.elapsed()
                }
            });
        });
        group.bench_function(BenchmarkId::new(kind.label(), "get/tag"), |b| {
            b.to_async(&rt).iter(|| async {
                let got = ok(fx.repo.get_manifest(&latest).await);
                got.bytes.len()
            });
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    baselines,
    blob_put,
    blob_get,
    chunked_upload_bench,
    stat,
    manifests,
    baselines_end
);
criterion_main!(benches);
