//! One fresh, isolated backend per test, for every backend kind layerstore supports.
//!
//! Memory and filesystem backends are always available. S3 (SeaweedFS in CI) and Azure Blob
//! (Azurite in CI) are switched on by environment variables; see [`make`].

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use layerstore::backend::MemoryMultipart;
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredential, S3CopyIfNotExists};
use object_store::azure::{
    AzureAccessKey, AzureAuthorizer, AzureCredential, MicrosoftAzureBuilder,
};
use object_store::client::{HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore};
use tempfile::TempDir;
use tokio::sync::OnceCell;

use super::counting::CountingStore;
use super::faulty::FaultyStore;

pub const S3_ENDPOINT: &str = "LAYERSTORE_TEST_S3_ENDPOINT";
pub const S3_BUCKET: &str = "LAYERSTORE_TEST_S3_BUCKET";
pub const S3_ACCESS_KEY_ID: &str = "LAYERSTORE_TEST_S3_ACCESS_KEY_ID";
pub const S3_SECRET_ACCESS_KEY: &str = "LAYERSTORE_TEST_S3_SECRET_ACCESS_KEY";
pub const S3_REGION: &str = "LAYERSTORE_TEST_S3_REGION";
pub const AZURE_ENDPOINT: &str = "LAYERSTORE_TEST_AZURE_ENDPOINT";
pub const AZURE_ACCOUNT: &str = "LAYERSTORE_TEST_AZURE_ACCOUNT";
pub const AZURE_KEY: &str = "LAYERSTORE_TEST_AZURE_KEY";
pub const AZURE_CONTAINER: &str = "LAYERSTORE_TEST_AZURE_CONTAINER";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Memory,
    Filesystem,
    S3,
    Azure,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Memory,
        BackendKind::Filesystem,
        BackendKind::S3,
        BackendKind::Azure,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Filesystem => "filesystem",
            BackendKind::S3 => "s3",
            BackendKind::Azure => "azure",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend owned by one test.
///
/// `store` and `multipart` are the same underlying store seen through its two traits: what one
/// writes, the other sees. `multipart` is `None` exactly where object_store has no
/// `MultipartStore` (the filesystem).
pub struct TestBackend {
    pub store: Arc<dyn ObjectStore>,
    pub multipart: Option<Arc<dyn MultipartStore>>,
    pub kind: BackendKind,
    /// Filesystem only: the (canonical) directory that holds the objects, so a test can look at
    /// what is on disk, e.g. leftover staging files.
    pub fs_root: Option<PathBuf>,
    /// S3/Azure only: the random key prefix that isolates this backend inside the shared
    /// bucket/container. `store` and `multipart` already apply it.
    pub key_prefix: Option<Path>,
    /// Keeps the filesystem backend's directory alive exactly as long as the backend.
    _guard: Option<TempDir>,
}

impl TestBackend {
    /// A [`FaultyStore`] over this backend (both traits, sharing one write/read counter).
    pub fn faulty(&self) -> Arc<FaultyStore> {
        Arc::new(FaultyStore::new(
            Arc::clone(&self.store),
            self.multipart.clone(),
        ))
    }

    /// A [`CountingStore`] over this backend (both traits, sharing one set of counters).
    pub fn counting(&self) -> Arc<CountingStore> {
        Arc::new(CountingStore::new(
            Arc::clone(&self.store),
            self.multipart.clone(),
        ))
    }
}

impl fmt::Debug for TestBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestBackend")
            .field("kind", &self.kind)
            .field("store", &self.store)
            .field("multipart", &self.multipart.is_some())
            .field("fs_root", &self.fs_root)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// Builds a fresh backend of `kind`, empty and invisible to every other `TestBackend`.
///
/// Returns `None`, after printing `skipped: ...` on stderr, when the server for `kind` is not
/// configured — unless `CI=true`, where a missing server is a failure and this panics.
/// Panics if the configuration is incomplete or the server cannot be reached: that is a broken
/// test environment, never a reason to skip.
pub async fn make(kind: BackendKind) -> Option<TestBackend> {
    match kind {
        BackendKind::Memory => Some(memory()),
        BackendKind::Filesystem => Some(filesystem()),
        BackendKind::S3 => match S3Config::from_env() {
            Some(config) => Some(s3(config).await),
            None => not_configured("S3", S3_ENDPOINT),
        },
        BackendKind::Azure => match AzureConfig::from_env() {
            Some(config) => Some(azure(config).await),
            None => not_configured("Azure", AZURE_ENDPOINT),
        },
    }
}

/// What each test generated by `backend_tests!` runs: build the backend, or skip.
pub async fn run_backend_test<F, Fut>(kind: BackendKind, test: F)
where
    F: FnOnce(TestBackend) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(backend) = make(kind).await {
        // S3 and Azure tests share one bucket/container under a prefix each; a test that passes
        // leaves nothing there, so that the emulators' memory (Azurite keeps every object in
        // RAM) does not grow with every suite run. A failing test keeps its objects to look at.
        let leftovers = backend
            .key_prefix
            .is_some()
            .then(|| Arc::clone(&backend.store));
        test(backend).await;
        if let Some(store) = leftovers {
            delete_everything(store.as_ref()).await;
        }
    }
}

/// Deletes every object `store` lists (best effort: a cleanup never fails a test).
async fn delete_everything(store: &dyn ObjectStore) {
    use futures::{StreamExt, TryStreamExt};
    let locations = store.list(None).map_ok(|meta| meta.location).boxed();
    let deleted = store.delete_stream(locations).try_collect::<Vec<_>>().await;
    if let Err(e) = deleted {
        let _ = writeln!(std::io::stderr(), "cleanup of a test prefix: {e}");
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn not_configured(what: &str, switch: &str) -> Option<TestBackend> {
    if in_ci() {
        panic!(
            "{what} backend not configured but CI=true: set {switch} (a missing server fails CI)"
        );
    }
    // Straight to the process's stderr, not eprintln!: the test harness captures eprintln!
    // output of passing tests, and a skip must stay visible. libtest names the test's thread
    // after the test.
    let test = std::thread::current()
        .name()
        .map(|name| format!(" [{name}]"))
        .unwrap_or_default();
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {what} not configured (set {switch}){test}"
    );
    None
}

fn memory() -> TestBackend {
    let store = Arc::new(InMemory::new());
    TestBackend {
        // The memory backend's own multipart uploads, as `Backend::in_memory` builds them.
        multipart: Some(Arc::new(MemoryMultipart::new(store.clone()))),
        store,
        kind: BackendKind::Memory,
        fs_root: None,
        key_prefix: None,
        _guard: None,
    }
}

fn filesystem() -> TestBackend {
    let dir = TempDir::with_prefix("layerstore-test-").expect("create temp dir");
    // LocalFileSystem canonicalizes its root; use the same spelling so paths compare equal.
    let root = dir.path().canonicalize().expect("canonicalize temp dir");
    let store = LocalFileSystem::new_with_prefix(&root)
        .expect("LocalFileSystem over temp dir")
        // The layerstore default runs with fsync; test the same code path.
        .with_fsync(true)
        // Without it, deletes leave empty directories and "nothing left behind" checks lie.
        .with_automatic_cleanup(true);
    TestBackend {
        store: Arc::new(store),
        multipart: None,
        kind: BackendKind::Filesystem,
        fs_root: Some(root),
        key_prefix: None,
        _guard: Some(dir),
    }
}

/// Tests share one bucket/container (creating one per test would be slow and leave many
/// behind), so each backend gets its own random top-level prefix instead.
fn unique_prefix() -> Path {
    Path::from(format!("t-{:016x}", rand::random::<u64>()))
}

/// Wraps `inner` in a fresh unique prefix and exposes it through both traits.
fn prefixed<T>(inner: T, kind: BackendKind) -> TestBackend
where
    T: ObjectStore + MultipartStore,
{
    let prefix = unique_prefix();
    // PrefixStore<T> implements MultipartStore whenever T does, so one value serves both.
    let store = Arc::new(PrefixStore::new(inner, prefix.clone()));
    TestBackend {
        store: store.clone(),
        multipart: Some(store),
        kind,
        fs_root: None,
        key_prefix: Some(prefix),
        _guard: None,
    }
}

/// Reads a required variable once the backend is switched on: a half-configured environment
/// is a mistake, so it panics rather than skipping.
fn required(var: &str, switch: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{switch} is set, so {var} must be set too"))
}

struct S3Config {
    endpoint: String,
    bucket: String,
    access_key_id: String,
    secret_access_key: String,
    region: String,
}

impl S3Config {
    fn from_env() -> Option<Self> {
        let endpoint = std::env::var(S3_ENDPOINT).ok()?;
        Some(Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            bucket: required(S3_BUCKET, S3_ENDPOINT),
            access_key_id: required(S3_ACCESS_KEY_ID, S3_ENDPOINT),
            secret_access_key: required(S3_SECRET_ACCESS_KEY, S3_ENDPOINT),
            region: std::env::var(S3_REGION).unwrap_or_else(|_| "us-east-1".to_owned()),
        })
    }
}

async fn s3(config: S3Config) -> TestBackend {
    static BUCKET: OnceCell<()> = OnceCell::const_new();
    BUCKET
        .get_or_init(|| async {
            // As for Azure below: retry a busy emulator for up to a minute.
            let mut attempt = 0;
            loop {
                match create_s3_bucket(&config).await {
                    Ok(_) => break,
                    Err(e) if attempt < 60 => {
                        attempt += 1;
                        let _ = writeln!(std::io::stderr(), "create S3 bucket: {e}; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    Err(e) => panic!(
                        "create S3 bucket {:?} at {}: {e}",
                        config.bucket, config.endpoint
                    ),
                }
            }
        })
        .await;

    let store = AmazonS3Builder::new()
        .with_endpoint(&config.endpoint)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        // Always explicit: without credentials the builder falls back to the EC2 metadata
        // endpoint, which is not on loopback.
        .with_access_key_id(&config.access_key_id)
        .with_secret_access_key(&config.secret_access_key)
        // Without it copy_if_not_exists is NotSupported on S3.
        .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
        .build()
        .expect("build AmazonS3");
    prefixed(store, BackendKind::S3)
}

struct AzureConfig {
    /// Account URL, e.g. `http://127.0.0.1:10000/devstoreaccount1`.
    endpoint: String,
    account: String,
    key: String,
    container: String,
}

impl AzureConfig {
    fn from_env() -> Option<Self> {
        let endpoint = std::env::var(AZURE_ENDPOINT).ok()?;
        Some(Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            account: required(AZURE_ACCOUNT, AZURE_ENDPOINT),
            key: required(AZURE_KEY, AZURE_ENDPOINT),
            container: required(AZURE_CONTAINER, AZURE_ENDPOINT),
        })
    }
}

async fn azure(config: AzureConfig) -> TestBackend {
    static CONTAINER: OnceCell<()> = OnceCell::const_new();
    CONTAINER
        .get_or_init(|| async {
            // An emulator busy with the previous suite's load can refuse connections for a
            // few seconds: retry for up to a minute before calling the environment broken.
            let mut attempt = 0;
            loop {
                match create_azure_container(&config).await {
                    Ok(_) => break,
                    Err(e) if attempt < 60 => {
                        attempt += 1;
                        let _ =
                            writeln!(std::io::stderr(), "create Azure container: {e}; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    Err(e) => panic!(
                        "create Azure container {:?} at {}: {e}",
                        config.container, config.endpoint
                    ),
                }
            }
        })
        .await;

    // The explicit endpoint, not with_use_emulator: that one ignores with_endpoint and reads
    // the process-wide AZURITE_BLOB_STORAGE_URL instead.
    let store = MicrosoftAzureBuilder::new()
        .with_endpoint(config.endpoint.clone())
        .with_allow_http(true)
        .with_account(&config.account)
        .with_access_key(&config.key)
        .with_container_name(&config.container)
        // Azurite runs a mark and sweep over all its extents every ten minutes; once the
        // suites have written many blobs it can stop answering for minutes (seen in CI: 181 s
        // of failed requests ten minutes after Azurite started, during tests/gc_crash.rs), and
        // object_store's default retries give up after 180 s. Wait the emulator out: a stall
        // is the emulator's, not the store's, and no test asserts a time.
        .with_retry(object_store::RetryConfig {
            max_retries: 30,
            retry_timeout: std::time::Duration::from_secs(600),
            ..object_store::RetryConfig::default()
        })
        .build()
        .expect("build MicrosoftAzure");
    prefixed(store, BackendKind::Azure)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// object_store has no create-bucket/container API, so these sign the one request by hand
// with object_store's own public signers.

fn empty_put(url: &str) -> Result<HttpRequest, BoxError> {
    let mut request = http::Request::new(HttpRequestBody::from(Bytes::new()));
    *request.method_mut() = http::Method::PUT;
    *request.uri_mut() = url.parse()?;
    request.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from_static("0"),
    );
    Ok(request)
}

/// Sends `request`; "created" and "already exists" both count as success.
async fn send_create(request: HttpRequest) -> Result<(), BoxError> {
    let client =
        ReqwestConnector::default().connect(&ClientOptions::new().with_allow_http(true))?;
    let response = client.execute(request).await?;
    let status = response.status().as_u16();
    match status {
        200 | 201 | 409 => Ok(()),
        _ => {
            let body = response.into_body().bytes().await.unwrap_or_default();
            Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)).into())
        }
    }
}

async fn create_s3_bucket(config: &S3Config) -> Result<(), BoxError> {
    let credential = AwsCredential {
        key_id: config.access_key_id.clone(),
        secret_key: config.secret_access_key.clone(),
        token: None,
    };
    let mut request = empty_put(&format!("{}/{}", config.endpoint, config.bucket))?;
    AwsAuthorizer::new(&credential, "s3", &config.region).try_authorize(&mut request, None)?;
    send_create(request).await
}

async fn create_azure_container(config: &AzureConfig) -> Result<(), BoxError> {
    let credential = AzureCredential::AccessKey(AzureAccessKey::try_new(&config.key)?);
    let mut request = empty_put(&format!(
        "{}/{}?restype=container",
        config.endpoint, config.container
    ))?;
    AzureAuthorizer::new(&credential, &config.account).try_authorize(&mut request)?;
    send_create(request).await
}
