//! The cost of garbage collection (issue 12, part 8): wall time by phase, peak memory, and the
//! backend requests per blob of one `Store::gc` run over a store populated like a registry.
//! Driven by `bench/gc.sh`; results in `bench/README.md`.
//!
//! ```text
//! gc_cost populate --backend fs --root DIR  [shape options]
//! gc_cost populate --backend s3 --prefix P  [shape options]
//! gc_cost gc       --backend fs|s3 (--root DIR | --prefix P) [--dry-run] [--probe N]
//! gc_cost cleanup  --backend s3 --prefix P
//! ```
//!
//! Populate and collect run as separate processes, so that the collecting process's peak
//! resident set (`VmHWM`) is the run's own and not the population's.
//!
//! **Shape** (defaults give 100 blobs a repository): `--repos 1000` repositories named
//! `team{r%10}/app{r}`; in each, `--images 16` images tagged `v{i}`, each a config, `--layers 4`
//! layers of its own and one base layer from a pool of `--shared 20` shared by every
//! repository, plus the manifest's own bytes (a blob too); `--loose 4` blobs pushed and never
//! referenced; `--deleted 3` images whose manifests are deleted afterwards (their config,
//! own layers and manifest bytes become garbage, their base layer stays referenced elsewhere).
//! Every `--emptied-every 100`th repository has all its images deleted and no base layer, so
//! it is left with nothing and leaves the catalog. The first `--session-layers 1` own layers
//! of each image go through an upload session (start, one append, commit: how docker and
//! podman push), the rest through `put_blob`; on S3 a session blob is a segment index plus
//! its piece, a `put_blob` one a single data object. Blobs are `--blob-size 300` bytes of
//! random data. Everything goes through the library API, so every key is a real one.
//!
//! **Backends.** `fs`: the production filesystem backend (`LocalFileSystem` with fsync and
//! automatic cleanup, the real upload engine) over DIR. `s3`: SeaweedFS or any S3 server from
//! the variables the tests read (`LAYERSTORE_TEST_S3_ENDPOINT`, `_BUCKET`, `_ACCESS_KEY_ID`,
//! `_SECRET_ACCESS_KEY`, `_REGION`; `. /work/emu/emulators.env`), under the key prefix P,
//! built as `Backend::from_config` builds an S3 backend (object store and its multipart view).
//!
//! **What is counted.** On the filesystem, every `ObjectStore` call the store makes (a wrapper
//! between the store and `LocalFileSystem`). On S3, every HTTP request the object store
//! client sends (a wrapper around its HTTP client): list pages, GET, HEAD, PUT (conditional
//! create separately), DELETE, and bulk-delete POSTs with the keys they carry. Each is
//! attributed to the first component of its key (`blobs`, `segments`, `repositories`,
//! `catalog`, `gc` for the protocol's lock, state and verdicts) and to the GC phase it fell
//! in, from the run's progress callback: lock, wait, mark, links, scan, release.
//!
//! `--probe N` measures, after the run, the backend's latency per request of each kind (N
//! sequential requests each, medians; lists of a 10-key and a 1,000-key prefix), so that
//! request counts can be turned into a ceiling: the time those requests take one after
//! another.
//!
//! **Memory.** VmHWM of the process, the heap the Rust code holds (a counting global
//! allocator: what the run allocates, apart from what the allocator and thread stacks keep)
//! and the mark set's own size (`GcPlan::mark_set_bytes`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt, stream};
use layerstore::gc::{GcLockTiming, GcOptions, GcPhase, GcProgress};
use layerstore::manifest::media_type;
use layerstore::upload::StdFileSystem;
use layerstore::{Backend, Digest, Reference, Repository, RepositoryName, Store, Tag};
use object_store::aws::AmazonS3Builder;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    ClientOptions, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions,
};
use rand::{RngCore, SeedableRng};
use serde_json::json;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ---------------------------------------------------------------------------------------------
// Heap accounting: what the process's Rust code holds allocated, apart from what the allocator
// keeps mapped (VmHWM counts both).

struct CountingAlloc;

static HEAP: AtomicUsize = AtomicUsize::new(0);
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = HEAP.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            HEAP_PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grown = new_size - layout.size();
                let now = HEAP.fetch_add(grown, Ordering::Relaxed) + grown;
                HEAP_PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                HEAP.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn heap_kib() -> u64 {
    (HEAP.load(Ordering::Relaxed) / 1024) as u64
}

// ---------------------------------------------------------------------------------------------
// Arguments

struct Args {
    command: String,
    backend: String,
    root: Option<PathBuf>,
    prefix: Option<String>,
    repos: usize,
    images: usize,
    layers: usize,
    session_layers: usize,
    shared: usize,
    loose: usize,
    deleted: usize,
    emptied_every: usize,
    blob_size: usize,
    concurrency: usize,
    seed: u64,
    dry_run: bool,
    probe: usize,
}

impl Args {
    fn parse() -> Res<Self> {
        let mut it = std::env::args().skip(1);
        let command = it
            .next()
            .ok_or("usage: gc_cost populate|gc|cleanup [options]")?;
        let mut a = Args {
            command,
            backend: "fs".to_owned(),
            root: None,
            prefix: None,
            repos: 1000,
            images: 16,
            layers: 4,
            session_layers: 1,
            shared: 20,
            loose: 4,
            deleted: 3,
            emptied_every: 100,
            blob_size: 300,
            concurrency: 16,
            seed: rand::random(),
            dry_run: false,
            probe: 0,
        };
        while let Some(flag) = it.next() {
            if flag == "--dry-run" {
                a.dry_run = true;
                continue;
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = || -> Res<usize> { Ok(value.parse()?) };
            match flag.as_str() {
                "--backend" => a.backend = value.clone(),
                "--root" => a.root = Some(PathBuf::from(&value)),
                "--prefix" => a.prefix = Some(value.clone()),
                "--repos" => a.repos = num()?,
                "--images" => a.images = num()?,
                "--layers" => a.layers = num()?,
                "--session-layers" => a.session_layers = num()?,
                "--shared" => a.shared = num()?.max(1),
                "--loose" => a.loose = num()?,
                "--deleted" => a.deleted = num()?,
                "--emptied-every" => a.emptied_every = num()?,
                "--blob-size" => a.blob_size = num()?,
                "--concurrency" => a.concurrency = num()?.max(1),
                "--seed" => a.seed = value.parse()?,
                "--probe" => a.probe = num()?,
                _ => return Err(format!("unknown option {flag}").into()),
            }
        }
        if a.deleted > a.images || a.session_layers > a.layers {
            return Err(
                "--deleted must be at most --images, --session-layers at most --layers".into(),
            );
        }
        Ok(a)
    }

    fn emptied(&self, r: usize) -> bool {
        self.emptied_every > 0 && r % self.emptied_every == self.emptied_every - 1
    }
}

// ---------------------------------------------------------------------------------------------
// Request counting

const KINDS: [&str; 9] = [
    "list",
    "listed",
    "get",
    "head",
    "put",
    "put_create",
    "delete",
    "delete_req",
    "other",
];
const LIST: usize = 0;
const LISTED: usize = 1;
const GET: usize = 2;
const HEAD: usize = 3;
const PUT: usize = 4;
const PUT_CREATE: usize = 5;
/// Keys deleted (a bulk delete counts each of its keys here).
const DELETE: usize = 6;
/// Delete requests (filesystem: one per key; S3: one per `DELETE` or bulk-delete `POST`).
const DELETE_REQ: usize = 7;
const OTHER: usize = 8;

const AREAS: [&str; 7] = [
    "blobs",
    "segments",
    "repositories",
    "catalog",
    "uploads",
    "gc",
    "other",
];

fn area(key: &str) -> usize {
    let first = key.trim_start_matches('/').split('/').next().unwrap_or("");
    AREAS[..6].iter().position(|a| *a == first).unwrap_or(6)
}

/// Counts by kind and key area, and time spent per kind (S3 only: until response headers).
#[derive(Debug, Default)]
struct Tally {
    cells: [[AtomicU64; 7]; 9],
    nanos: [AtomicU64; 9],
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    cells: [[u64; 7]; 9],
    nanos: [u64; 9],
}

impl Tally {
    fn add(&self, kind: usize, area: usize, n: u64) {
        self.cells[kind][area].fetch_add(n, Ordering::Relaxed);
    }

    fn took(&self, kind: usize, since: Instant) {
        self.nanos[kind].fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Counts {
        let mut c = Counts::default();
        for (k, row) in self.cells.iter().enumerate() {
            for (a, cell) in row.iter().enumerate() {
                c.cells[k][a] = cell.load(Ordering::Relaxed);
            }
            c.nanos[k] = self.nanos[k].load(Ordering::Relaxed);
        }
        c
    }
}

impl Counts {
    fn minus(&self, earlier: &Counts) -> Counts {
        let mut c = *self;
        for k in 0..9 {
            for a in 0..7 {
                c.cells[k][a] -= earlier.cells[k][a];
            }
            c.nanos[k] -= earlier.nanos[k];
        }
        c
    }

    fn kind(&self, k: usize) -> u64 {
        self.cells[k].iter().sum()
    }

    /// Requests of every kind (listed objects and deleted keys are not requests).
    fn requests(&self) -> u64 {
        [LIST, GET, HEAD, PUT, PUT_CREATE, DELETE_REQ, OTHER]
            .iter()
            .map(|k| self.kind(*k))
            .sum()
    }

    fn to_json(self) -> serde_json::Value {
        let mut by_kind = serde_json::Map::new();
        for (k, name) in KINDS.iter().enumerate() {
            let mut areas = serde_json::Map::new();
            for (a, area) in AREAS.iter().enumerate() {
                if self.cells[k][a] > 0 {
                    areas.insert((*area).to_owned(), self.cells[k][a].into());
                }
            }
            if !areas.is_empty() {
                by_kind.insert(
                    (*name).to_owned(),
                    json!({"total": self.kind(k), "by_area": areas,
                           "secs": self.nanos[k] as f64 / 1e9}),
                );
            }
        }
        json!({"requests": self.requests(), "by_kind": by_kind})
    }
}

impl fmt::Display for Counts {
    /// `kind total (area n, ...)` for every kind seen.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "requests {}", self.requests())?;
        for (k, name) in KINDS.iter().enumerate() {
            let total = self.kind(k);
            if total == 0 {
                continue;
            }
            let areas: Vec<String> = AREAS
                .iter()
                .enumerate()
                .filter(|(a, _)| self.cells[k][*a] > 0)
                .map(|(a, area)| format!("{area} {}", self.cells[k][a]))
                .collect();
            write!(f, "; {name} {total} ({})", areas.join(", "))?;
        }
        Ok(())
    }
}

/// Counts every `ObjectStore` call going to `inner` (the filesystem backend).
#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    tally: Arc<Tally>,
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

fn counted_list(
    stream: BoxStream<'static, object_store::Result<ObjectMeta>>,
    tally: Arc<Tally>,
    prefix: Option<&Path>,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    let a = area(prefix.map_or("", |p| p.as_ref()));
    tally.add(LIST, a, 1);
    stream
        .inspect(move |m| {
            if m.is_ok() {
                tally.add(LISTED, a, 1);
            }
        })
        .boxed()
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let kind = if matches!(opts.mode, PutMode::Create) {
            PUT_CREATE
        } else {
            PUT
        };
        self.tally.add(kind, area(location.as_ref()), 1);
        let t = Instant::now();
        let r = self.inner.put_opts(location, payload, opts).await;
        self.tally.took(kind, t);
        r
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.tally.add(OTHER, area(location.as_ref()), 1);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let kind = if options.head { HEAD } else { GET };
        self.tally.add(kind, area(location.as_ref()), 1);
        let t = Instant::now();
        let r = self.inner.get_opts(location, options).await;
        self.tally.took(kind, t);
        r
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.tally.add(GET, area(location.as_ref()), 1);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        // Timed from the moment a location is taken to the moment its result comes out: the
        // time of one delete when they go one at a time, as a GC run sends them.
        let pulled: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (tally, taken) = (Arc::clone(&self.tally), Arc::clone(&pulled));
        let locations = locations
            .inspect(move |l| {
                if let Ok(l) = l {
                    tally.add(DELETE, area(l.as_ref()), 1);
                    tally.add(DELETE_REQ, area(l.as_ref()), 1);
                    *taken.lock().unwrap() = Some(Instant::now());
                }
            })
            .boxed();
        let tally = Arc::clone(&self.tally);
        self.inner
            .delete_stream(locations)
            .inspect(move |_| {
                if let Some(t) = pulled.lock().unwrap().take() {
                    tally.took(DELETE_REQ, t);
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        counted_list(self.inner.list(prefix), Arc::clone(&self.tally), prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        counted_list(
            self.inner.list_with_offset(prefix, offset),
            Arc::clone(&self.tally),
            prefix,
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.tally
            .add(LIST, area(prefix.map_or("", |p| p.as_ref())), 1);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.tally.add(OTHER, area(to.as_ref()), 1);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.tally.add(OTHER, area(to.as_ref()), 1);
        self.inner.rename_opts(from, to, options).await
    }
}

/// Counts every HTTP request the S3 client sends.
#[derive(Debug)]
struct CountingConnector {
    tally: Arc<Tally>,
    /// `/{bucket}/{prefix}/`: what precedes a store key in a path-style URL.
    root: String,
}

#[derive(Debug)]
struct CountingService {
    inner: HttpClient,
    tally: Arc<Tally>,
    root: String,
}

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(CountingService {
            inner: ReqwestConnector::default().connect(options)?,
            tally: Arc::clone(&self.tally),
            root: self.root.clone(),
        }))
    }
}

/// Undoes the percent-encoding of a URL path or query value (keys here are plain ASCII).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl CountingService {
    fn key_area(&self, full: &str) -> usize {
        area(full.strip_prefix(self.root.as_str()).unwrap_or(full))
    }

    /// A bucket-relative key (`{prefix}/blobs/…`) relative to the store's prefix.
    fn bucket_relative<'k>(&self, key: &'k str) -> &'k str {
        let store_prefix = self.root.splitn(3, '/').nth(2).unwrap_or("");
        key.strip_prefix(store_prefix).unwrap_or(key)
    }

    /// Kind of request, its area, and how many keys it deletes.
    fn classify(&self, req: &HttpRequest) -> Vec<(usize, usize, u64)> {
        let path = unescape(req.uri().path());
        let query = req.uri().query().unwrap_or("");
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == name).then(|| unescape(v))
            })
        };
        let method = req.method().as_str();
        match method {
            "GET" if param("list-type").is_some() => {
                // The prefix parameter is relative to the bucket: `{prefix}/blobs/…`.
                let prefix = param("prefix").unwrap_or_default();
                vec![(LIST, area(self.bucket_relative(&prefix)), 1)]
            }
            "GET" => vec![(GET, self.key_area(&path), 1)],
            "HEAD" => vec![(HEAD, self.key_area(&path), 1)],
            "PUT" if param("partNumber").is_some() => vec![(OTHER, self.key_area(&path), 1)],
            "PUT" if req.headers().contains_key("if-none-match") => {
                vec![(PUT_CREATE, self.key_area(&path), 1)]
            }
            "PUT" => vec![(PUT, self.key_area(&path), 1)],
            "DELETE" if param("uploadId").is_some() => vec![(OTHER, self.key_area(&path), 1)],
            "DELETE" => {
                let a = self.key_area(&path);
                vec![(DELETE_REQ, a, 1), (DELETE, a, 1)]
            }
            "POST" if param("delete").is_some() => {
                // The keys deleted are in the XML body: <Key>bucket-relative key</Key>.
                let body = req
                    .body()
                    .as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let mut out = Vec::new();
                let mut first_area = 6;
                for (n, part) in body.split("<Key>").skip(1).enumerate() {
                    let key = part.split("</Key>").next().unwrap_or("");
                    let a = area(self.bucket_relative(key));
                    if n == 0 {
                        first_area = a;
                    }
                    out.push((DELETE, a, 1));
                }
                out.push((DELETE_REQ, first_area, 1));
                out
            }
            _ => vec![(OTHER, self.key_area(&path), 1)],
        }
    }
}

#[async_trait]
impl HttpService for CountingService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let classes = self.classify(&req);
        for (kind, a, n) in &classes {
            self.tally.add(*kind, *a, *n);
        }
        let t = Instant::now();
        let r = self.inner.execute(req).await;
        if let Some((kind, _, _)) = classes.iter().find(|(k, _, _)| *k != DELETE) {
            self.tally.took(*kind, t);
        }
        r
    }
}

// ---------------------------------------------------------------------------------------------
// Backends

struct Opened {
    store: Store,
    /// The object store under the store (for probes and cleanup), counted too.
    objects: Arc<dyn ObjectStore>,
    tally: Arc<Tally>,
}

fn env(name: &str) -> Res<String> {
    std::env::var(name).map_err(|_| format!("{name} is not set (. /work/emu/emulators.env)").into())
}

fn open(args: &Args) -> Res<Opened> {
    let tally = Arc::new(Tally::default());
    match args.backend.as_str() {
        "fs" => {
            let root = args.root.as_ref().ok_or("--backend fs needs --root DIR")?;
            std::fs::create_dir_all(root)?;
            let root = root.canonicalize()?;
            // As `Backend::filesystem` builds it, with the counter between the store and
            // `LocalFileSystem`.
            let local = LocalFileSystem::new_with_prefix(&root)?
                .with_fsync(true)
                .with_automatic_cleanup(true);
            let objects: Arc<dyn ObjectStore> = Arc::new(CountingStore {
                inner: Arc::new(local),
                tally: Arc::clone(&tally),
            });
            let backend =
                Backend::filesystem_with(&root, Arc::clone(&objects), Arc::new(StdFileSystem));
            Ok(Opened {
                store: Store::new(backend),
                objects,
                tally,
            })
        }
        "s3" => {
            let prefix = args
                .prefix
                .as_ref()
                .ok_or("--backend s3 needs --prefix P")?;
            let bucket = env("LAYERSTORE_TEST_S3_BUCKET")?;
            let region =
                std::env::var("LAYERSTORE_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into());
            let s3 = AmazonS3Builder::new()
                .with_endpoint(env("LAYERSTORE_TEST_S3_ENDPOINT")?)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(true)
                .with_bucket_name(&bucket)
                .with_region(region)
                .with_access_key_id(env("LAYERSTORE_TEST_S3_ACCESS_KEY_ID")?)
                .with_secret_access_key(env("LAYERSTORE_TEST_S3_SECRET_ACCESS_KEY")?)
                .with_http_connector(CountingConnector {
                    tally: Arc::clone(&tally),
                    root: format!("/{bucket}/{prefix}/"),
                })
                .build()?;
            // As `Backend::from_config` builds an S3 backend with a prefix.
            let prefixed = Arc::new(PrefixStore::new(s3, prefix.as_str()));
            let backend = Backend::object_store(prefixed.clone()).with_multipart(prefixed.clone());
            Ok(Opened {
                store: Store::new(backend),
                objects: prefixed,
                tally,
            })
        }
        other => Err(format!("unknown backend {other} (fs or s3)").into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Population

fn random_bytes(seed: u64, what: &str, size: usize) -> Bytes {
    let mut h = seed;
    for b in what.bytes() {
        h = h.rotate_left(7) ^ u64::from(b).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(h);
    let mut buf = vec![0u8; size];
    rng.fill_bytes(&mut buf);
    Bytes::from(buf)
}

fn repo_name(r: usize) -> Res<RepositoryName> {
    Ok(RepositoryName::parse(&format!("team{}/app{r}", r % 10))?)
}

/// Pushes one blob through an upload session (start, one append, commit), as a client does.
async fn push_session(repo: &Repository, data: Bytes) -> Res<Digest> {
    let digest = Digest::sha256(&data);
    let size = data.len() as u64;
    let status = repo.start_upload().await?;
    let chunk: layerstore::upload::ChunkStream<'_> =
        stream::once(async move { Ok::<_, std::io::Error>(data) }).boxed();
    repo.append_upload(&status.id, 0, chunk).await?;
    repo.commit_upload(&status.id, &digest, Some(size)).await?;
    Ok(digest)
}

async fn push_blob(repo: &Repository, data: Bytes) -> Res<Digest> {
    let digest = Digest::sha256(&data);
    repo.put_blob(&digest, data).await?;
    Ok(digest)
}

fn descriptor(mt: &str, digest: &Digest, size: usize) -> serde_json::Value {
    json!({"mediaType": mt, "digest": digest.to_string(), "size": size})
}

/// One repository: images (some deleted afterwards), loose blobs.
async fn populate_repository(args: &Args, store: &Store, r: usize) -> Res<()> {
    let repo = store.repository(repo_name(r)?);
    let emptied = args.emptied(r);
    let size = args.blob_size;
    let mut deleted = Vec::new();
    for i in 0..args.images {
        let config = Bytes::from(
            json!({"architecture": "amd64", "os": "linux",
                   "config": {"Labels": {"repo": r, "image": i}},
                   "pad": hex(&random_bytes(args.seed, &format!("c{r}/{i}"), size / 3))})
            .to_string(),
        );
        let config_len = config.len();
        let config_digest = push_blob(&repo, config).await?;
        let mut layers = Vec::new();
        if !emptied {
            let b = (r + i) % args.shared;
            let base = random_bytes(args.seed, &format!("base{b}"), size);
            let len = base.len();
            layers.push((push_blob(&repo, base).await?, len));
        }
        for l in 0..args.layers {
            let data = random_bytes(args.seed, &format!("l{r}/{i}/{l}"), size);
            let len = data.len();
            let d = if l < args.session_layers {
                push_session(&repo, data).await?
            } else {
                push_blob(&repo, data).await?
            };
            layers.push((d, len));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config_len),
            "layers": layers.iter().map(|(d, n)| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", d, *n)).collect::<Vec<_>>(),
        });
        let tag = Reference::Tag(Tag::parse(&format!("v{i}"))?);
        let put = repo
            .put_manifest(
                &tag,
                Bytes::from(manifest.to_string()),
                Some(media_type::OCI_MANIFEST),
            )
            .await?;
        if emptied || i < args.deleted {
            deleted.push(put.digest);
        }
    }
    for k in 0..args.loose {
        push_blob(&repo, random_bytes(args.seed, &format!("x{r}/{k}"), size)).await?;
    }
    for d in deleted {
        repo.delete_manifest(&d).await?;
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a run over this shape must find.
fn expected(args: &Args) -> serde_json::Value {
    let per_image = 2 + args.layers as u64; // manifest bytes, config, own layers
    let per_repo = args.images as u64 * per_image + args.loose as u64;
    let emptied = (0..args.repos).filter(|r| args.emptied(*r)).count() as u64;
    let normal = args.repos as u64 - emptied;
    let mut bases_used = HashSet::new();
    let mut bases_kept = HashSet::new();
    for r in (0..args.repos).filter(|r| !args.emptied(*r)) {
        for i in 0..args.images {
            bases_used.insert((r + i) % args.shared);
            if i >= args.deleted {
                bases_kept.insert((r + i) % args.shared);
            }
        }
    }
    let bases_garbage = (bases_used.len() - bases_kept.len()) as u64;
    let kept_images = normal * (args.images - args.deleted) as u64;
    json!({
        "repositories": args.repos,
        "blobs": args.repos as u64 * per_repo + bases_used.len() as u64,
        "blobs_marked": kept_images * per_image + bases_kept.len() as u64,
        "blobs_collected": normal * (args.deleted as u64 * per_image + args.loose as u64)
            + emptied * per_repo + bases_garbage,
        "manifests_kept": kept_images,
        "links_collected": normal * (args.deleted as u64 * (per_image - 1) + args.loose as u64)
            + emptied * (args.images as u64 * (per_image - 1) + args.loose as u64),
        "repositories_emptied": emptied,
    })
}

async fn populate(args: &Args) -> Res<()> {
    let opened = open(args)?;
    let store = &opened.store;
    let started = Instant::now();
    let done = AtomicU64::new(0);
    let step = (args.repos / 10).max(1);
    stream::iter(0..args.repos)
        .map(|r| {
            let done = &done;
            async move {
                populate_repository(args, store, r).await?;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if (n as usize).is_multiple_of(step) {
                    eprintln!(
                        "populate: {n}/{} repositories, {:.0} s",
                        args.repos,
                        started.elapsed().as_secs_f64()
                    );
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let counts = opened.tally.snapshot();
    println!(
        "populate: {} repositories in {secs:.1} s ({counts})",
        args.repos
    );
    println!(
        "result {}",
        json!({"command": "populate", "backend": args.backend, "secs": secs,
               "expected": expected(args), "requests": counts.to_json(),
               "shape": {"repos": args.repos, "images": args.images, "layers": args.layers,
                         "session_layers": args.session_layers, "shared": args.shared,
                         "loose": args.loose, "deleted": args.deleted,
                         "emptied_every": args.emptied_every, "blob_size": args.blob_size}})
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run

/// A numeric field of `/proc/self/status` (kB for the memory ones).
fn proc_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn phase_name(p: GcPhase) -> &'static str {
    match p {
        GcPhase::Wait => "wait",
        GcPhase::Mark => "mark",
        GcPhase::Scan => "scan",
        GcPhase::Links => "links",
    }
}

#[derive(Clone, Copy)]
struct PhaseMark {
    name: &'static str,
    at: Instant,
    counts: Counts,
    rss_kib: u64,
    heap_kib: u64,
}

/// The first and the latest progress call of one phase.
struct Seen {
    name: &'static str,
    first: PhaseMark,
    last: PhaseMark,
}

/// Phase boundaries from the progress calls: the start of each phase, then the end of the
/// run. A run calls back at the start of the wait, after each repository it marks or sweeps,
/// every 1,024 blobs it scans and once at the end of the scan, so a phase ends at its *last*
/// call (the next phase's first call comes only after some of its work), except the wait,
/// which calls once at its start and ends when the mark first calls (after it read the
/// catalog). Before the wait: taking the lock; after the last call: releasing it.
fn boundaries(start: PhaseMark, seen: &[Seen], end: PhaseMark) -> Vec<PhaseMark> {
    let mut out = Vec::new();
    let mut cursor = start;
    for (i, s) in seen.iter().enumerate() {
        if s.name == "wait" {
            out.push(PhaseMark {
                name: "lock",
                ..cursor
            });
            out.push(s.first);
            cursor = seen.get(i + 1).map_or(s.last, |next| next.first);
        } else {
            out.push(PhaseMark {
                name: s.name,
                ..cursor
            });
            cursor = s.last;
        }
    }
    out.push(PhaseMark {
        name: "release",
        ..cursor
    });
    out.push(PhaseMark { name: "end", ..end });
    out
}

async fn collect(args: &Args) -> Res<()> {
    let opened = open(args)?;
    let store = &opened.store;
    let tally = &opened.tally;
    let options = GcOptions {
        delete_untagged: false,
        grace: Duration::ZERO,
        dry_run: args.dry_run,
        lock: GcLockTiming::default(),
    };
    let rss_before = proc_status("VmRSS:");
    let hwm_before = proc_status("VmHWM:");
    let heap_before = heap_kib();
    HEAP_PEAK.store(HEAP.load(Ordering::Relaxed), Ordering::Relaxed);
    let seen: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
    let started = Instant::now();
    let start = PhaseMark {
        name: "start",
        at: started,
        counts: tally.snapshot(),
        rss_kib: rss_before,
        heap_kib: heap_before,
    };
    let progress = |p: &GcProgress| {
        let mark = PhaseMark {
            name: phase_name(p.phase),
            at: Instant::now(),
            counts: tally.snapshot(),
            rss_kib: proc_status("VmRSS:"),
            heap_kib: heap_kib(),
        };
        let mut seen = seen.lock().unwrap();
        match seen.last_mut() {
            Some(s) if s.name == mark.name => s.last = mark,
            _ => seen.push(Seen {
                name: mark.name,
                first: mark,
                last: mark,
            }),
        }
    };
    let report = store.gc(options, &progress).await?;
    let ended = Instant::now();
    let total = tally.snapshot();
    let hwm = proc_status("VmHWM:");
    let rss_after = proc_status("VmRSS:");
    let heap_peak = (HEAP_PEAK.load(Ordering::Relaxed) / 1024) as u64;
    let threads = proc_status("Threads:");
    let heap_after = heap_kib();
    let marks = boundaries(
        start,
        &seen.into_inner().unwrap(),
        PhaseMark {
            name: "end",
            at: ended,
            counts: total,
            rss_kib: rss_after,
            heap_kib: heap_after,
        },
    );

    let plan = &report.plan;
    let blobs = plan.blobs.max(1) as f64;
    let secs = ended.duration_since(started).as_secs_f64();
    println!(
        "gc{}: {secs:.2} s; {} repositories, {} manifests ({} kept), {} blobs stored, {} marked, \
         {} collected; removed {} blobs, {} links, {} manifests, {} repositories, {} rescued",
        if args.dry_run { " --dry-run" } else { "" },
        plan.repositories,
        plan.manifests,
        plan.manifests_kept,
        plan.blobs,
        plan.blobs_marked,
        plan.blobs_collected,
        report.removed.blobs,
        report.removed.links,
        report.removed.manifests,
        report.removed.repositories,
        report.removed.rescued,
    );
    println!(
        "memory: VmHWM {:.1} MiB (before the run: VmRSS {:.1} MiB, VmHWM {:.1} MiB; after: VmRSS \
         {:.1} MiB, {} threads); heap in use: peak {:.2} MiB (before {:.2}, after {:.2}); mark \
         set {} bytes ({:.1} bytes a marked blob)",
        hwm as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        hwm_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        threads,
        heap_peak as f64 / 1024.0,
        heap_before as f64 / 1024.0,
        heap_after as f64 / 1024.0,
        plan.mark_set_bytes,
        plan.mark_set_bytes as f64 / plan.blobs_marked.max(1) as f64,
    );
    // After the run (its memory and counts are read already): the backend's latencies.
    let probe = if args.probe > 0 {
        Some(probe_latency(opened.objects.as_ref(), args.probe).await?)
    } else {
        None
    };
    let s3 = args.backend == "s3";
    let mut phases = Vec::new();
    for pair in marks.windows(2) {
        let (m, next) = (&pair[0], &pair[1]);
        let d = next.counts.minus(&m.counts);
        let secs = next.at.duration_since(m.at).as_secs_f64();
        let ceiling = probe.as_ref().map(|p| p.sequential_secs(&d, s3));
        println!(
            "  {:<8} {:>8.3} s  at start VmRSS {:>5.1} MiB, heap {:>5.2} MiB  {d}{}",
            m.name,
            secs,
            m.rss_kib as f64 / 1024.0,
            m.heap_kib as f64 / 1024.0,
            ceiling.map_or_else(String::new, |c| format!(
                "; one after another at the probed latencies: {c:.2} s"
            )),
        );
        phases.push(json!({"phase": m.name, "secs": secs,
                           "rss_mib_at_start": m.rss_kib as f64 / 1024.0,
                           "heap_mib_at_start": m.heap_kib as f64 / 1024.0,
                           "requests": d.to_json(), "sequential_request_secs": ceiling}));
    }
    let all = marks.last().unwrap().counts.minus(&marks[0].counts);
    println!(
        "  per stored blob: {:.2} requests; list {:.4}, get {:.3}, head {:.3}, put {:.3} \
         (create {:.3}), delete {:.3} keys in {:.3} requests",
        all.requests() as f64 / blobs,
        all.kind(LIST) as f64 / blobs,
        all.kind(GET) as f64 / blobs,
        all.kind(HEAD) as f64 / blobs,
        (all.kind(PUT) + all.kind(PUT_CREATE)) as f64 / blobs,
        all.kind(PUT_CREATE) as f64 / blobs,
        all.kind(DELETE) as f64 / blobs,
        all.kind(DELETE_REQ) as f64 / blobs,
    );

    let timed_kinds: Vec<String> = [GET, HEAD, PUT, PUT_CREATE, DELETE_REQ]
        .iter()
        .filter(|k| all.nanos[**k] > 0 && all.kind(**k) > 0)
        .map(|k| {
            format!(
                "{} {:.2} ms",
                KINDS[*k],
                all.nanos[*k] as f64 / 1e6 / all.kind(*k) as f64
            )
        })
        .collect();
    println!(
        "  mean time per request in the run: {}",
        timed_kinds.join(", ")
    );

    if let Some(p) = &probe {
        println!(
            "latency (medians of {} sequential requests): {p}",
            args.probe
        );
        let ceiling = p.sequential_secs(&all, s3);
        println!(
            "  the run's {} requests one after another at those latencies: {ceiling:.2} s{} \
             (the run took {:.2} s of which {:.2} s waiting)",
            all.requests(),
            if s3 { "" } else { " without the listings" },
            secs,
            phase_secs(&marks, "wait")
        );
    }
    println!(
        "result {}",
        json!({
            "command": "gc", "backend": args.backend, "dry_run": args.dry_run,
            "secs": secs, "report": report, "phases": phases,
            "requests": all.to_json(),
            "per_blob": {
                "requests": all.requests() as f64 / blobs,
                "list": all.kind(LIST) as f64 / blobs,
                "listed": all.kind(LISTED) as f64 / blobs,
                "get": all.kind(GET) as f64 / blobs,
                "head": all.kind(HEAD) as f64 / blobs,
                "put": all.kind(PUT) as f64 / blobs,
                "put_create": all.kind(PUT_CREATE) as f64 / blobs,
                "delete_keys": all.kind(DELETE) as f64 / blobs,
                "delete_requests": all.kind(DELETE_REQ) as f64 / blobs,
            },
            "memory": {"vm_hwm_kib": hwm, "vm_rss_before_kib": rss_before,
                       "heap_peak_kib": heap_peak, "heap_before_kib": heap_before,
                       "heap_after_kib": heap_after, "threads_after": threads,
                       "vm_hwm_before_kib": hwm_before, "vm_rss_after_kib": rss_after,
                       "mark_set_bytes": plan.mark_set_bytes},
            "latency_ms": probe.as_ref().map(Latency::to_json),
            "sequential_request_secs": probe.as_ref().map(|p| p.sequential_secs(&all, s3)),
        })
    );
    Ok(())
}

fn phase_secs(marks: &[PhaseMark], name: &str) -> f64 {
    marks
        .windows(2)
        .find(|w| w[0].name == name)
        .map_or(0.0, |w| w[1].at.duration_since(w[0].at).as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Latency probes

/// Median milliseconds per request kind.
struct Latency {
    put: f64,
    put_create: f64,
    head: f64,
    get: f64,
    delete: f64,
    /// One list request (page) over 1,000 keys.
    list_1000: f64,
    /// One list request over 10 keys.
    list_10: f64,
    /// One bulk delete of 1,000 keys (`delete_stream`).
    bulk_delete_1000: f64,
}

impl Latency {
    /// The time `c`'s requests take one after another at these latencies. On S3 a list
    /// request is one page: pages of `blobs/` at the 1,000-key page latency, the per-repository
    /// listings (tens of keys) at the 10-key one; on the filesystem one list call walks a
    /// whole tree, so listings are left out (`bench/gc.sh` times `find` over the same files).
    /// A bulk delete counts as a single delete plus the per-key share of a 1,000-key one.
    fn sequential_secs(&self, c: &Counts, pages: bool) -> f64 {
        let blob_pages = c.cells[LIST][area("blobs")] as f64;
        let other_lists = c.kind(LIST) as f64 - blob_pages;
        let lists = if pages {
            blob_pages * self.list_1000 + other_lists * self.list_10
        } else {
            0.0
        };
        let ms = lists
            + c.kind(GET) as f64 * self.get
            + c.kind(HEAD) as f64 * self.head
            + c.kind(PUT) as f64 * self.put
            + c.kind(PUT_CREATE) as f64 * self.put_create
            + c.kind(DELETE_REQ) as f64 * self.delete
            + c.kind(DELETE).saturating_sub(c.kind(DELETE_REQ)) as f64 * self.bulk_delete_1000
                / 1000.0;
        ms / 1000.0
    }

    fn to_json(&self) -> serde_json::Value {
        json!({"put": self.put, "put_create": self.put_create, "head": self.head,
               "get": self.get, "delete": self.delete, "list_1000": self.list_1000,
               "list_10": self.list_10,
               "bulk_delete_1000": self.bulk_delete_1000})
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "put {:.2} ms, put create-only {:.2} ms, head {:.2} ms, get {:.2} ms, delete {:.2} \
             ms, list of 10 keys {:.2} ms, of 1,000 keys {:.2} ms, bulk delete of 1,000 keys \
             {:.2} ms",
            self.put,
            self.put_create,
            self.head,
            self.get,
            self.delete,
            self.list_10,
            self.list_1000,
            self.bulk_delete_1000
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn timed<F, Fut>(n: usize, mut f: F) -> Res<f64>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = object_store::Result<()>>,
{
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i).await?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(v))
}

/// Sequential requests of each kind under `probe/` (a 300-byte object each, each in a
/// directory of its own on the filesystem), then removes it.
async fn probe_latency(objects: &dyn ObjectStore, n: usize) -> Res<Latency> {
    let body = Bytes::from(vec![7u8; 300]);
    // One directory per key, as blob and verdict keys have (`blobs/sha256/ab/{hex}/data`).
    let key = |what: &str, i: usize| Path::from(format!("probe/{what}/{i:06}/data"));
    let put = timed(n, |i| {
        let (k, b) = (key("a", i), body.clone());
        async move { objects.put(&k, b.into()).await.map(|_| ()) }
    })
    .await?;
    let put_create = timed(n, |i| {
        let (k, b) = (key("b", i), body.clone());
        async move {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            objects.put_opts(&k, b.into(), opts).await.map(|_| ())
        }
    })
    .await?;
    let head = timed(n, |i| {
        let k = key("a", i);
        async move { objects.head(&k).await.map(|_| ()) }
    })
    .await?;
    let get = timed(n, |i| {
        let k = key("a", i);
        async move { objects.get(&k).await?.bytes().await.map(|_| ()) }
    })
    .await?;
    let delete = timed(n, |i| {
        let k = key("a", i);
        async move { objects.delete(&k).await }
    })
    .await?;
    // 1,000 keys for the list and bulk-delete probes (written 16 at a time), the first 10
    // of them under `probe/c/0000` for the short listing.
    stream::iter(0..1000)
        .map(|i| {
            let k = Path::from(format!("probe/c/{:04}/{i:06}", i / 10));
            let b = body.clone();
            async move { objects.put(&k, b.into()).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let small = Path::from("probe/c/0000");
    let list_10 = timed(n.clamp(1, 50), |_| {
        let small = small.clone();
        async move {
            let listed: Vec<ObjectMeta> = objects.list(Some(&small)).try_collect().await?;
            assert_eq!(listed.len(), 10);
            Ok(())
        }
    })
    .await?;
    let prefix = Path::from("probe/c");
    let list_1000 = timed(n.clamp(1, 20), |_| {
        let prefix = prefix.clone();
        async move {
            let listed: Vec<ObjectMeta> = objects.list(Some(&prefix)).try_collect().await?;
            assert_eq!(listed.len(), 1000);
            Ok(())
        }
    })
    .await?;
    let t = Instant::now();
    let gone: Vec<Path> = objects
        .delete_stream(objects.list(Some(&prefix)).map_ok(|m| m.location).boxed())
        .try_collect()
        .await?;
    let bulk_delete_1000 = t.elapsed().as_secs_f64() * 1000.0 - list_1000;
    assert_eq!(gone.len(), 1000);
    remove_prefix(objects, &Path::from("probe")).await?;
    Ok(Latency {
        put,
        put_create,
        head,
        get,
        delete,
        list_1000,
        list_10,
        bulk_delete_1000,
    })
}

async fn remove_prefix(objects: &dyn ObjectStore, prefix: &Path) -> Res<usize> {
    let gone: Vec<Path> = objects
        .delete_stream(objects.list(Some(prefix)).map_ok(|m| m.location).boxed())
        .try_collect()
        .await?;
    Ok(gone.len())
}

async fn cleanup(args: &Args) -> Res<()> {
    let opened = open(args)?;
    let objects = opened.objects.as_ref();
    let gone: Vec<Path> = objects
        .delete_stream(objects.list(None).map_ok(|m| m.location).boxed())
        .try_collect()
        .await?;
    let left: Vec<ObjectMeta> = objects.list(None).try_collect().await?;
    println!(
        "cleanup: deleted {} objects under {}; {} left",
        gone.len(),
        args.prefix
            .as_deref()
            .or(args.root.as_deref().and_then(FsPath::to_str))
            .unwrap_or("?"),
        left.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let result = async {
        let args = Args::parse()?;
        match args.command.as_str() {
            "populate" => populate(&args).await,
            "gc" => collect(&args).await,
            "cleanup" => cleanup(&args).await,
            other => Err(format!("unknown command {other}").into()),
        }
    }
    .await;
    if let Err(e) = result {
        eprintln!("gc_cost: {e}");
        std::process::exit(1);
    }
}
