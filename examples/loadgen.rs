//! A small, bounded HTTP load generator for OCI Distribution registries, used by
//! `bench/compare.sh` and `bench/rss.sh` to run the same workload against any registry.
//!
//! ```text
//! loadgen --url http://127.0.0.1:5000 --workload NAME [--repo bench/big] [--size BYTES]
//!         [--chunk BYTES] [--count N] [--concurrency C] [--rounds R] [--seed S] [--verify]
//!         [--server-pid PID] [--trace FILE]
//! ```
//!
//! Workloads (request counts are always bounded by the arguments):
//! - `big-put`: one blob of `--size` as POST (empty) + PUT `?digest=` with the whole body:
//!   the spec's two-request monolithic upload, which every registry supports.
//! - `big-post`: one blob as a single POST `?digest=` with the whole body (OCI's one-request
//!   monolithic upload; a registry answering 202 instead of 201 does not support it).
//! - `big-patch`: POST, then PATCHes of `--chunk` bytes with `Content-Range` and
//!   `Content-Length` (as podman/skopeo send), then PUT `?digest=` with no body.
//! - `big-stream`: POST, one PATCH with the whole blob as `Transfer-Encoding: chunked` and no
//!   length (as docker sends), then PUT `?digest=`.
//! - `big-get`: GETs that blob `--rounds` times (`--verify` checks its digest).
//! - `sha256`: no request; hashes a blob of `--size` `--rounds` times on one core with the
//!   server's SHA-256 (the ceiling a push's throughput is compared with; `--url` is ignored).
//! - `small-put`: `--count` distinct blobs of `--size` bytes, `--concurrency` at once, each
//!   POST + PUT `?digest=` with the body (`--patch` instead: POST + PATCH + PUT as docker does).
//! - `small-head`: HEAD of those blobs, `--rounds` passes over all of them.
//! - `manifest-put`: `--count` distinct OCI manifests PUT by tag `t0`..; their config and
//!   layer are pushed first (outside the timing).
//! - `manifest-get`: GET of those tags.
//! - `big-push-pull`: one blob of `--size` pushed as in `big-put`, then GET right away; only
//!   the GET is timed (`push_secs=` reports the push), as a pull right after a push is what
//!   CI does and the first read of freshly written bytes is what it measures.
//! - `small-push-pull`: `--count` distinct blobs, `--concurrency` at once, each pushed as in
//!   `small-put` and then GET right away (bytes checked); an operation is one push + one pull.
//!
//! Prints one line: `workload=.. ops=.. bytes=.. secs=..`; exits non-zero at the first request
//! that does not get the expected status. With `--server-pid`, it also prints
//! `server_cpu_ticks=..`: the server's utime + stime (Linux `/proc`, clock ticks) over the
//! timed part alone. With `--trace FILE`, it appends a line per HTTP request to FILE:
//! `start end label status phase` (Unix seconds; phase `prepare` or `run`), so that requests a
//! server makes to its storage can be matched to the client request that caused them
//! (`bench/s3-requests.sh`).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use layerstore::Digest;
use reqwest::{Client, StatusCode};

type Result<T> = std::result::Result<T, String>;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Args {
    url: String,
    workload: String,
    repo: String,
    size: usize,
    chunk: usize,
    count: usize,
    concurrency: usize,
    rounds: usize,
    seed: u64,
    verify: bool,
    patch: bool,
    server_pid: Option<u32>,
    trace: Option<String>,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let key = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {arg:?}"))?
                .to_owned();
            if key == "verify" || key == "patch" {
                flags.push(key);
            } else {
                let value = args
                    .next()
                    .ok_or_else(|| format!("--{key} needs a value"))?;
                values.insert(key, value);
            }
        }
        let num = |key: &str, default: usize| -> Result<usize> {
            values.get(key).map_or(Ok(default), |v| {
                v.parse().map_err(|e| format!("--{key}: {e}"))
            })
        };
        Ok(Args {
            url: values
                .get("url")
                .ok_or("--url is required")?
                .trim_end_matches('/')
                .to_owned(),
            workload: values
                .get("workload")
                .ok_or("--workload is required")?
                .clone(),
            repo: values
                .get("repo")
                .cloned()
                .unwrap_or_else(|| "bench/load".to_owned()),
            size: num("size", 256 << 20)?,
            chunk: num("chunk", 8 << 20)?,
            count: num("count", 2000)?,
            concurrency: num("concurrency", 8)?.max(1),
            rounds: num("rounds", 1)?.max(1),
            seed: num("seed", 1)? as u64,
            verify: flags.iter().any(|f| f == "verify"),
            patch: flags.iter().any(|f| f == "patch"),
            server_pid: values
                .get("server-pid")
                .map(|v| v.parse().map_err(|e| format!("--server-pid: {e}")))
                .transpose()?,
            trace: values.get("trace").cloned(),
        })
    }
}

/// Deterministic pseudo-random bytes (splitmix64), so separate runs address the same blobs.
fn data(seed: u64, size: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(size);
    Bytes::from(out)
}

/// The `i`-th small blob of a run: distinct for every (seed, i).
fn small_blob(seed: u64, i: usize, size: usize) -> Bytes {
    data(
        seed.wrapping_mul(1_000_003).wrapping_add(i as u64 + 1),
        size,
    )
}

/// `--trace`: the file every HTTP request is logged to.
static TRACE: OnceLock<Mutex<std::fs::File>> = OnceLock::new();
/// Whether the timed part has begun (for the trace's phase column).
static RUNNING: AtomicBool = AtomicBool::new(false);

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Appends `start end label status phase` to the trace, if there is one.
fn trace(label: &str, start: SystemTime, status: StatusCode) {
    if let Some(file) = TRACE.get() {
        let phase = if RUNNING.load(Ordering::Relaxed) {
            "run"
        } else {
            "prepare"
        };
        let line = format!(
            "{:.6}\t{:.6}\t{label}\t{}\t{phase}\n",
            unix(start),
            unix(SystemTime::now()),
            status.as_u16()
        );
        // A lost trace line only blurs the attribution; the workload itself goes on.
        let _ = file.lock().map(|mut f| f.write_all(line.as_bytes()));
    }
}

/// Sends a request and traces it (ended when the response head arrives).
async fn send(request: reqwest::RequestBuilder, label: &str) -> Result<reqwest::Response> {
    let start = SystemTime::now();
    let r = request.send().await.map_err(|e| e.to_string())?;
    trace(label, start, r.status());
    Ok(r)
}

/// utime + stime of a process so far, in clock ticks (fields 14 and 15 of `/proc/PID/stat`;
/// the command name before them may hold spaces, so split after its closing parenthesis).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let rest = stat.rsplit_once(") ").ok_or("unexpected /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| "unexpected /proc/PID/stat".to_owned())
    };
    Ok(tick(11)? + tick(12)?)
}

/// The timed part of a run: when it began, the server's CPU ticks then, and extra
/// `name=value` fields for the result line.
struct Clock {
    pid: Option<u32>,
    started: Instant,
    ticks: u64,
    extra: String,
}

impl Clock {
    fn start(pid: Option<u32>) -> Result<Clock> {
        RUNNING.store(true, Ordering::Relaxed);
        let ticks = pid.map(cpu_ticks).transpose()?.unwrap_or(0);
        Ok(Clock {
            pid,
            started: Instant::now(),
            ticks,
            extra: String::new(),
        })
    }

    /// Starts the timed part again here: what came before (a push before a pull) is not counted.
    fn restart(&mut self) -> Result<()> {
        self.ticks = self.pid.map(cpu_ticks).transpose()?.unwrap_or(0);
        self.started = Instant::now();
        Ok(())
    }

    /// The result line's tail: ` secs=..` and, with a server pid, ` server_cpu_ticks=..`.
    fn finish(&self) -> Result<String> {
        let mut out = format!(" secs={:.6}", self.started.elapsed().as_secs_f64());
        if let Some(pid) = self.pid {
            let ticks = cpu_ticks(pid)?.saturating_sub(self.ticks);
            out.push_str(&format!(" server_cpu_ticks={ticks}"));
        }
        out.push_str(&self.extra);
        Ok(out)
    }
}

struct Registry {
    client: Client,
    base: String,
    repo: String,
}

fn expect(response: &reqwest::Response, want: StatusCode, what: &str) -> Result<()> {
    if response.status() == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected {want}, got {} ({:?})",
            response.status(),
            response.headers()
        ))
    }
}

impl Registry {
    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repo)
    }

    /// An upload's Location as an absolute URL (Distribution sends absolute URLs, we a path).
    fn resolve(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base)
        }
    }

    async fn start_upload(&self) -> Result<String> {
        let r = send(self.client.post(self.url("blobs/uploads/")), "POST-upload").await?;
        expect(&r, StatusCode::ACCEPTED, "POST upload")?;
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or("POST upload: no Location")?;
        Ok(self.resolve(location))
    }

    fn with_digest(location: &str, digest: &Digest) -> String {
        let sep = if location.contains('?') { '&' } else { '?' };
        format!("{location}{sep}digest={digest}")
    }

    async fn patch(&self, location: &str, start: usize, body: Bytes) -> Result<String> {
        let end = start + body.len() - 1;
        let request = self
            .client
            .patch(location)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{start}-{end}"))
            .body(body);
        let r = send(request, "PATCH").await?;
        expect(&r, StatusCode::ACCEPTED, "PATCH")?;
        next_location(self, &r)
    }

    async fn commit(&self, location: &str, digest: &Digest, body: Option<Bytes>) -> Result<()> {
        let mut request = self.client.put(Self::with_digest(location, digest));
        let label = if let Some(body) = body {
            request = request
                .header("content-type", "application/octet-stream")
                .body(body);
            "PUT-commit-body"
        } else {
            "PUT-commit"
        };
        let r = send(request, label).await?;
        expect(&r, StatusCode::CREATED, "PUT ?digest=")
    }

    /// GET of a blob, read to the end (`verify`: its digest checked); returns its length.
    async fn get_blob(&self, digest: &Digest, verify: bool) -> Result<usize> {
        let start = SystemTime::now();
        let r = self
            .client
            .get(self.url(&format!("blobs/{digest}")))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        expect(&r, StatusCode::OK, "GET blob")?;
        let status = r.status();
        let mut stream = r.bytes_stream();
        let mut hasher = verify.then(<sha2::Sha256 as sha2::Digest>::new);
        let mut n = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            n += chunk.len();
            if let Some(h) = hasher.as_mut() {
                sha2::Digest::update(h, &chunk);
            }
        }
        trace("GET-blob", start, status);
        if let Some(h) = hasher {
            let hex: String = sha2::Digest::finalize(h)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if hex != digest.hex() {
                return Err(format!("GET blob: got sha256:{hex}, expected {digest}"));
            }
        }
        Ok(n)
    }

    /// POST + PUT with the body (or POST + PATCH + PUT).
    async fn push(&self, bytes: Bytes, patch: bool) -> Result<Digest> {
        let digest = Digest::sha256(&bytes);
        let location = self.start_upload().await?;
        if patch {
            let location = self.patch(&location, 0, bytes).await?;
            self.commit(&location, &digest, None).await?;
        } else {
            self.commit(&location, &digest, Some(bytes)).await?;
        }
        Ok(digest)
    }
}

/// The Location a PATCH answered with (the upload's state may travel in it).
fn next_location(reg: &Registry, r: &reqwest::Response) -> Result<String> {
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("PATCH: no Location")?;
    Ok(reg.resolve(location))
}

/// Runs `job(i)` for i in 0..total on `concurrency` tasks.
async fn parallel<F, Fut>(total: usize, concurrency: usize, job: F) -> Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, job) = (next.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), String>(());
                }
                job(i).await?;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

fn manifest(config: &(Digest, usize), layer: &(Digest, usize), i: usize) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.0.to_string(),
                "size": config.1,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer.0.to_string(),
                "size": layer.1,
            }],
            "annotations": { "bench.index": i.to_string() },
        })
        .to_string(),
    )
}

/// Test data, made (and anything a workload needs pushed first) before the clock starts.
struct Prepared {
    /// The big blob and its digest.
    blob: Bytes,
    digest: Option<Digest>,
    /// Small blobs (only for `small-put`) and their digests (`small-put`, `small-head`).
    small: Vec<Bytes>,
    small_digests: Vec<Digest>,
    /// The manifests' config and layer: (digest, size) each.
    refs: Option<((Digest, usize), (Digest, usize))>,
}

async fn prepare(args: &Args, reg: &Registry) -> Result<Prepared> {
    let (size, seed) = (args.size, args.seed);
    let mut p = Prepared {
        blob: Bytes::new(),
        digest: None,
        small: Vec::new(),
        small_digests: Vec::new(),
        refs: None,
    };
    match args.workload.as_str() {
        "sha256" => p.blob = data(seed, size),
        w if w.starts_with("big-") => {
            p.blob = data(seed, size);
            p.digest = Some(Digest::sha256(&p.blob));
            if w == "big-get" {
                // Only the digest is needed; let the memory go.
                p.blob = Bytes::new();
            }
        }
        "small-put" | "small-head" | "small-push-pull" => {
            let blobs: Vec<Bytes> = (0..args.count).map(|i| small_blob(seed, i, size)).collect();
            p.small_digests = blobs.iter().map(|b| Digest::sha256(b)).collect();
            if args.workload != "small-head" {
                p.small = blobs;
            }
        }
        "manifest-put" | "manifest-get" => {
            let config = Bytes::from(r#"{"architecture":"amd64","os":"linux"}"#);
            let layer = small_blob(seed ^ 0xABCD, 0, 4096);
            p.refs = Some((
                (Digest::sha256(&config), config.len()),
                (Digest::sha256(&layer), layer.len()),
            ));
            if args.workload == "manifest-put" {
                reg.push(config, false).await?;
                reg.push(layer, false).await?;
            }
        }
        _ => {}
    }
    Ok(p)
}

/// Runs the workload; returns (operations, bytes moved). `clock` is the timed part's start.
async fn run(
    args: &Args,
    reg: Arc<Registry>,
    p: Prepared,
    clock: &mut Clock,
) -> Result<(usize, usize)> {
    let size = args.size;
    match args.workload.as_str() {
        "sha256" => {
            // The ceiling a push is compared with: one core hashing the blob with the
            // server's SHA-256 (the `sha2` crate), in the 1 MiB pieces its hash lane gets.
            for _ in 0..args.rounds {
                let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
                for piece in p.blob.chunks(1 << 20) {
                    sha2::Digest::update(&mut hasher, piece);
                }
                std::hint::black_box(sha2::Digest::finalize(hasher));
            }
            Ok((args.rounds, size * args.rounds))
        }
        "big-put" => {
            reg.push(p.blob, false).await?;
            Ok((1, size))
        }
        "big-post" => {
            let (blob, digest) = (p.blob, p.digest.expect("prepared"));
            let request = reg
                .client
                .post(Registry::with_digest(&reg.url("blobs/uploads/"), &digest))
                .header("content-type", "application/octet-stream")
                .body(blob);
            let r = send(request, "POST-mono").await?;
            expect(
                &r,
                StatusCode::CREATED,
                "POST ?digest= (one-request upload)",
            )?;
            Ok((1, size))
        }
        "big-patch" => {
            let (blob, digest) = (p.blob, p.digest.expect("prepared"));
            let mut location = reg.start_upload().await?;
            let mut start = 0;
            while start < size {
                let end = (start + args.chunk).min(size);
                location = reg.patch(&location, start, blob.slice(start..end)).await?;
                start = end;
            }
            reg.commit(&location, &digest, None).await?;
            Ok((size.div_ceil(args.chunk) + 2, size))
        }
        "big-stream" => {
            let (blob, digest) = (p.blob, p.digest.expect("prepared"));
            let location = reg.start_upload().await?;
            let pieces: Vec<std::result::Result<Bytes, std::io::Error>> = (0..size)
                .step_by(1 << 20)
                .map(|s| Ok(blob.slice(s..(s + (1 << 20)).min(size))))
                .collect();
            let request = reg
                .client
                .patch(&location)
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)));
            let r = send(request, "PATCH-stream").await?;
            expect(&r, StatusCode::ACCEPTED, "PATCH (chunked transfer)")?;
            let location = next_location(&reg, &r)?;
            reg.commit(&location, &digest, None).await?;
            Ok((3, size))
        }
        "big-get" => {
            let digest = p.digest.expect("prepared");
            let mut total = 0;
            for _ in 0..args.rounds {
                let n = reg.get_blob(&digest, args.verify).await?;
                if n != size {
                    return Err(format!("GET blob: {n} bytes, expected {size}"));
                }
                total += n;
            }
            Ok((args.rounds, total))
        }
        "big-push-pull" => {
            let pushed = Instant::now();
            let digest = reg.push(p.blob, false).await?;
            clock.extra = format!(" push_secs={:.6}", pushed.elapsed().as_secs_f64());
            clock.restart()?;
            let n = reg.get_blob(&digest, args.verify).await?;
            if n != size {
                return Err(format!("GET blob: {n} bytes, expected {size}"));
            }
            Ok((1, n))
        }
        "small-push-pull" => {
            let (r, small) = (reg.clone(), Arc::new(p.small));
            parallel(args.count, args.concurrency, move |i| {
                let (r, small) = (r.clone(), small.clone());
                async move {
                    let digest = r.push(small[i].clone(), false).await?;
                    let start = SystemTime::now();
                    let resp = r
                        .client
                        .get(r.url(&format!("blobs/{digest}")))
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    expect(&resp, StatusCode::OK, "GET blob")?;
                    let status = resp.status();
                    let got = resp.bytes().await.map_err(|e| e.to_string())?;
                    trace("GET-blob", start, status);
                    if got != small[i] {
                        return Err(format!("GET blob {digest}: different bytes"));
                    }
                    Ok(())
                }
            })
            .await?;
            Ok((args.count, args.count * size))
        }
        "small-put" => {
            let patch = args.patch;
            let (r, small) = (reg.clone(), Arc::new(p.small));
            parallel(args.count, args.concurrency, move |i| {
                let (r, small) = (r.clone(), small.clone());
                async move { r.push(small[i].clone(), patch).await.map(|_| ()) }
            })
            .await?;
            Ok((args.count, args.count * size))
        }
        "small-head" => {
            let digests = Arc::new(p.small_digests);
            let total = args.count * args.rounds;
            let r = reg.clone();
            parallel(total, args.concurrency, move |i| {
                let (r, digests) = (r.clone(), digests.clone());
                async move {
                    let digest = &digests[i % digests.len()];
                    let request = r.client.head(r.url(&format!("blobs/{digest}")));
                    let resp = send(request, "HEAD-blob").await?;
                    expect(&resp, StatusCode::OK, "HEAD blob")
                }
            })
            .await?;
            Ok((total, 0))
        }
        "manifest-put" | "manifest-get" => {
            let refs = Arc::new(p.refs.expect("prepared"));
            let put = args.workload == "manifest-put";
            let bytes = Arc::new(AtomicUsize::new(0));
            let (r, counted) = (reg.clone(), bytes.clone());
            parallel(args.count, args.concurrency, move |i| {
                let (r, refs, counted) = (r.clone(), refs.clone(), counted.clone());
                async move {
                    let body = manifest(&refs.0, &refs.1, i);
                    counted.fetch_add(body.len(), Ordering::Relaxed);
                    let url = r.url(&format!("manifests/t{i}"));
                    if put {
                        let request = r
                            .client
                            .put(url)
                            .header("content-type", OCI_MANIFEST)
                            .body(body);
                        let resp = send(request, "PUT-manifest").await?;
                        expect(&resp, StatusCode::CREATED, "PUT manifest")
                    } else {
                        let start = SystemTime::now();
                        let resp = r
                            .client
                            .get(url)
                            .header("accept", OCI_MANIFEST)
                            .send()
                            .await
                            .map_err(|e| e.to_string())?;
                        expect(&resp, StatusCode::OK, "GET manifest")?;
                        let status = resp.status();
                        let got = resp.bytes().await.map_err(|e| e.to_string())?;
                        trace("GET-manifest", start, status);
                        if got != body {
                            return Err(format!("GET manifest t{i}: different bytes"));
                        }
                        Ok(())
                    }
                }
            })
            .await?;
            Ok((args.count, bytes.load(Ordering::Relaxed)))
        }
        other => Err(format!("unknown workload {other:?}")),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let client = Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("HTTP client");
    if let Some(path) = &args.trace {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        match file {
            Ok(f) => {
                let _ = TRACE.set(Mutex::new(f));
            }
            Err(e) => {
                eprintln!("loadgen: --trace {path}: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let reg = Arc::new(Registry {
        client,
        base: args.url.clone(),
        repo: args.repo.clone(),
    });
    let prepared = match prepare(&args, &reg).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loadgen {} (preparing): {e}", args.workload);
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut clock = match Clock::start(args.server_pid) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: --server-pid: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let timed = run(&args, reg, prepared, &mut clock);
    match tokio::time::timeout(Duration::from_secs(1800), timed).await {
        Ok(Ok((ops, bytes))) => match clock.finish() {
            Ok(tail) => {
                println!("workload={} ops={ops} bytes={bytes}{tail}", args.workload);
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: --server-pid: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Ok(Err(e)) => {
            eprintln!("loadgen {}: {e}", args.workload);
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("loadgen {}: gave up after 1800 s", args.workload);
            std::process::ExitCode::FAILURE
        }
    }
}
