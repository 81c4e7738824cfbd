//! Access control over HTTP, black-box against the built server: `auth.htpasswd` on every
//! endpoint (the access table, cell by cell), read-only mode, and `http.headers`.
//!
//! Each test writes a Distribution `config.yml` (and an htpasswd file of bcrypt entries made
//! here) and starts `layerstore serve --config` on an ephemeral port.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

mod common;
use common::server::Running;

const REALM: &str = "layerstore test realm";
const USER: &str = "alice";
/// Colons in a password are allowed: the header splits at the first one.
const PASSWORD: &str = "correct:horse:battery";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

// ---------------------------------------------------------------------------------------------
// Harness

/// An htpasswd line with a bcrypt hash at the lowest cost (the cost does not change the code
/// path, and keeps the tests fast).
fn htpasswd_line(user: &str, password: &str) -> String {
    format!("{user}:{}\n", bcrypt::hash(password, 4).expect("bcrypt"))
}

fn digest_of(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn manifest(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": layer.len()}],
    }))
    .expect("json")
}

/// Credentials a request is sent with.
#[derive(Debug, Clone, Copy)]
enum Creds {
    None,
    Right,
    WrongPassword,
    UnknownUser,
}

/// A running server over a data directory the test owns (so that a second server can be
/// started on the same data).
struct Registry {
    _running: Running,
    addr: String,
    client: reqwest::Client,
    htpasswd: PathBuf,
}

impl Registry {
    /// `serve --config` with the filesystem under `data`, deletes enabled, and `extra` YAML
    /// appended; the htpasswd file (with `alice`) is written beside the configuration and
    /// `{htpasswd}` in `extra` names it.
    fn start(data: &Path, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, htpasswd_line(USER, PASSWORD)).expect("write htpasswd");
        let yaml = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    \
             enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{}",
            data.display(),
            extra.replace("{htpasswd}", &htpasswd.display().to_string())
        );
        let file = dir.path().join("config.yml");
        std::fs::write(&file, yaml).expect("write config");
        let file = file.to_str().expect("utf-8").to_owned();
        let running = Running::start_with(dir, &["--config", &file]);
        Self {
            addr: running.addr.clone(),
            _running: running,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            htpasswd,
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") {
            path.to_owned()
        } else {
            format!("http://{}{path}", self.addr)
        }
    }

    fn request(&self, creds: Creds, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match creds {
            Creds::None => request,
            Creds::Right => request.basic_auth(USER, Some(PASSWORD)),
            Creds::WrongPassword => request.basic_auth(USER, Some("correct:horse")),
            Creds::UnknownUser => request.basic_auth("mallory", Some(PASSWORD)),
        }
    }

    async fn send(&self, creds: Creds, method: Method, path: &str) -> Response {
        self.request(creds, method, path)
            .send()
            .await
            .expect("request")
    }

    async fn push_blob(&self, creds: Creds, repo: &str, bytes: &[u8]) -> String {
        let digest = digest_of(bytes);
        let response = self
            .request(
                creds,
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            )
            .body(bytes.to_vec())
            .send()
            .await
            .expect("push");
        assert_eq!(response.status(), StatusCode::CREATED, "pushing a blob");
        digest
    }

    async fn start_upload(&self, creds: Creds, repo: &str) -> String {
        let response = self
            .send(creds, Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "starting an upload"
        );
        header_of(&response, "location")
    }

    async fn put_manifest(&self, creds: Creds, repo: &str, reference: &str, bytes: &[u8]) {
        let response = self
            .request(
                creds,
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
            )
            .header(header::CONTENT_TYPE, OCI_MANIFEST)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("put manifest");
        assert_eq!(response.status(), StatusCode::CREATED, "putting a manifest");
    }
}

async fn json_of(response: Response) -> Result<Value, String> {
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

fn header_of(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {response:?}"))
        .to_str()
        .expect("text")
        .to_owned()
}

/// What the fixture holds: `acl/app` with a blob, a manifest tagged `v1`, a blob to delete
/// and three upload sessions; `acl/src` with a blob to mount.
struct Fixture {
    layer: Vec<u8>,
    manifest: Vec<u8>,
    doomed_blob: String,
    mountable: String,
    status_upload: String,
    patch_upload: String,
    put_upload: String,
    cancel_upload: String,
}

const REPO: &str = "acl/app";

async fn fixture(registry: &Registry, creds: Creds) -> Fixture {
    let layer = b"a layer only the authenticated may read".to_vec();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    registry.push_blob(creds, REPO, &layer).await;
    registry.push_blob(creds, REPO, &config).await;
    let manifest = manifest(&config, &layer);
    registry.put_manifest(creds, REPO, "v1", &manifest).await;
    Fixture {
        doomed_blob: registry.push_blob(creds, REPO, b"to be deleted").await,
        mountable: registry.push_blob(creds, "acl/src", b"to be mounted").await,
        status_upload: registry.start_upload(creds, REPO).await,
        patch_upload: registry.start_upload(creds, REPO).await,
        put_upload: registry.start_upload(creds, REPO).await,
        cancel_upload: registry.start_upload(creds, REPO).await,
        layer,
        manifest,
    }
}

/// One endpoint and method: a request to build, and the status it gets with the right
/// credentials (in table order: the later rows see what the earlier ones did).
struct Row {
    name: &'static str,
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    headers: Vec<(header::HeaderName, &'static str)>,
    allowed: StatusCode,
}

fn row(name: &'static str, method: Method, path: String, allowed: StatusCode) -> Row {
    Row {
        name,
        method,
        path,
        body: None,
        headers: Vec::new(),
        allowed,
    }
}

/// Every endpoint and method the server routes.
fn every_endpoint(f: &Fixture) -> Vec<Row> {
    let layer = digest_of(&f.layer);
    let manifest_digest = digest_of(&f.manifest);
    let new_blob = b"pushed in one request";
    let chunk = b"a chunk";
    let with_digest = |location: &str, bytes: &[u8]| {
        let sep = if location.contains('?') { '&' } else { '?' };
        format!("{location}{sep}digest={}", digest_of(bytes))
    };
    vec![
        row("GET /v2/", Method::GET, "/v2/".into(), StatusCode::OK),
        row("HEAD /v2/", Method::HEAD, "/v2/".into(), StatusCode::OK),
        row(
            "GET catalog",
            Method::GET,
            "/v2/_catalog".into(),
            StatusCode::OK,
        ),
        row(
            "GET tags",
            Method::GET,
            format!("/v2/{REPO}/tags/list"),
            StatusCode::OK,
        ),
        row(
            "GET manifest",
            Method::GET,
            format!("/v2/{REPO}/manifests/v1"),
            StatusCode::OK,
        ),
        row(
            "HEAD manifest",
            Method::HEAD,
            format!("/v2/{REPO}/manifests/{manifest_digest}"),
            StatusCode::OK,
        ),
        Row {
            body: Some(f.manifest.clone()),
            headers: vec![(header::CONTENT_TYPE, OCI_MANIFEST)],
            ..row(
                "PUT manifest",
                Method::PUT,
                format!("/v2/{REPO}/manifests/v2"),
                StatusCode::CREATED,
            )
        },
        row(
            "DELETE manifest",
            Method::DELETE,
            format!("/v2/{REPO}/manifests/v2"),
            StatusCode::ACCEPTED,
        ),
        row(
            "GET blob",
            Method::GET,
            format!("/v2/{REPO}/blobs/{layer}"),
            StatusCode::OK,
        ),
        row(
            "HEAD blob",
            Method::HEAD,
            format!("/v2/{REPO}/blobs/{layer}"),
            StatusCode::OK,
        ),
        row(
            "DELETE blob",
            Method::DELETE,
            format!("/v2/{REPO}/blobs/{}", f.doomed_blob),
            StatusCode::ACCEPTED,
        ),
        row(
            "POST upload",
            Method::POST,
            format!("/v2/{REPO}/blobs/uploads/"),
            StatusCode::ACCEPTED,
        ),
        Row {
            body: Some(new_blob.to_vec()),
            ..row(
                "POST monolithic upload",
                Method::POST,
                format!("/v2/{REPO}/blobs/uploads/?digest={}", digest_of(new_blob)),
                StatusCode::CREATED,
            )
        },
        row(
            "POST mount",
            Method::POST,
            format!(
                "/v2/{REPO}/blobs/uploads/?mount={}&from=acl/src",
                f.mountable
            ),
            StatusCode::CREATED,
        ),
        row(
            "GET upload status",
            Method::GET,
            f.status_upload.clone(),
            StatusCode::NO_CONTENT,
        ),
        Row {
            body: Some(chunk.to_vec()),
            headers: vec![(header::CONTENT_RANGE, "0-6")],
            ..row(
                "PATCH upload",
                Method::PATCH,
                f.patch_upload.clone(),
                StatusCode::ACCEPTED,
            )
        },
        Row {
            body: Some(chunk.to_vec()),
            ..row(
                "PUT upload",
                Method::PUT,
                with_digest(&f.put_upload, chunk),
                StatusCode::CREATED,
            )
        },
        row(
            "DELETE upload",
            Method::DELETE,
            f.cancel_upload.clone(),
            StatusCode::NO_CONTENT,
        ),
        row(
            "GET referrers",
            Method::GET,
            format!("/v2/{REPO}/referrers/{manifest_digest}"),
            StatusCode::OK,
        ),
    ]
}

async fn send_row(registry: &Registry, creds: Creds, row: &Row) -> Response {
    let mut request = registry.request(creds, row.method.clone(), &row.path);
    for (name, value) in &row.headers {
        request = request.header(name, *value);
    }
    if let Some(body) = &row.body {
        request = request.body(body.clone());
    }
    request.send().await.expect("request")
}

/// 401, the Basic challenge with the realm, and (except for HEAD) an OCI `UNAUTHORIZED` body.
async fn assert_challenged(row: &Row, creds: Creds, response: Response) {
    let what = format!("{} ({creds:?} credentials)", row.name);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(
        response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap()),
        Some(format!("Basic realm=\"{REALM}\"").as_str()),
        "{what}"
    );
    if row.method != Method::HEAD {
        let body: Value = json_of(response)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED", "{what}: {body}");
    }
}

fn htpasswd_config() -> String {
    format!("auth:\n  htpasswd:\n    realm: {REALM}\n    path: {{htpasswd}}\n")
}

async fn htpasswd_registry() -> (TempDir, Registry, Fixture) {
    let data = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(data.path(), &htpasswd_config());
    let fixture = fixture(&registry, Creds::Right).await;
    (data, registry, fixture)
}

async fn every_endpoint_is_challenged(creds: Creds) {
    let (_data, registry, fixture) = htpasswd_registry().await;
    let rows = every_endpoint(&fixture);
    for row in &rows {
        let response = send_row(&registry, creds, row).await;
        assert_challenged(row, creds, response).await;
    }
    // Nothing the refused requests asked for happened: each still works, in order, with the
    // right credentials (the manifest PUT and DELETE, the blob DELETE, the upload steps).
    for row in &rows {
        let response = send_row(&registry, Creds::Right, row).await;
        assert_eq!(
            response.status(),
            row.allowed,
            "{} after refusals",
            row.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// htpasswd: the access table, cell by cell

#[tokio::test]
async fn htpasswd_without_credentials_every_endpoint_is_401_with_the_basic_challenge() {
    every_endpoint_is_challenged(Creds::None).await;
}

#[tokio::test]
async fn htpasswd_with_a_wrong_password_every_endpoint_is_401_with_the_basic_challenge() {
    every_endpoint_is_challenged(Creds::WrongPassword).await;
}

#[tokio::test]
async fn htpasswd_with_an_unknown_user_every_endpoint_is_401_with_the_basic_challenge() {
    every_endpoint_is_challenged(Creds::UnknownUser).await;
}

#[tokio::test]
async fn htpasswd_with_the_right_credentials_every_endpoint_answers_as_without_auth() {
    let (_data, registry, fixture) = htpasswd_registry().await;
    for row in &every_endpoint(&fixture) {
        let response = send_row(&registry, Creds::Right, row).await;
        assert_eq!(response.status(), row.allowed, "{}", row.name);
        assert!(
            !response.headers().contains_key(header::WWW_AUTHENTICATE),
            "{}",
            row.name
        );
    }
}

#[tokio::test]
async fn htpasswd_malformed_authorization_headers_are_401_never_5xx() {
    let (_data, registry, _fixture) = htpasswd_registry().await;
    let huge = format!("Basic {}", "QUFB".repeat(16 * 1024));
    for value in [
        "Basic !!!not base64!!!",
        "Basic bm8tY29sb24taGVyZQ==", // "no-colon-here"
        "Basic",
        "Bearer abc.def.ghi",
        "Digest username=\"alice\"",
        huge.as_str(),
    ] {
        let response = registry
            .client
            .get(registry.url("/v2/"))
            .header(header::AUTHORIZATION, value)
            .send()
            .await
            .expect("request");
        let status = response.status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST,
            "{value:.40}: {status}"
        );
    }
}

#[tokio::test]
async fn htpasswd_a_user_added_to_the_file_logs_in_without_a_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(data.path(), &htpasswd_config());
    let bob = |registry: &Registry| {
        registry
            .client
            .get(registry.url("/v2/"))
            .basic_auth("bob", Some("b0b:pw"))
            .send()
    };
    assert_eq!(
        bob(&registry).await.expect("request").status(),
        StatusCode::UNAUTHORIZED
    );
    let mut text = std::fs::read_to_string(&registry.htpasswd).expect("read");
    text.push_str(&htpasswd_line("bob", "b0b:pw"));
    std::fs::write(&registry.htpasswd, text).expect("write");
    // The file is checked about once a second; a bound, not a measurement.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = bob(&registry).await.expect("request").status();
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "bob still gets {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // alice still logs in.
    let alice = registry.send(Creds::Right, Method::GET, "/v2/").await;
    assert_eq!(alice.status(), StatusCode::OK);
}

#[tokio::test]
async fn htpasswd_with_a_non_bcrypt_entry_refuses_to_start_naming_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!(
            "{}bob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
            htpasswd_line(USER, PASSWORD)
        ),
    )
    .expect("write");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "storage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: '127.0.0.1:0'}}\n\
             auth: {{htpasswd: {{realm: r, path: {}}}}}\n",
            dir.path().join("data").display(),
            htpasswd.display()
        ),
    )
    .expect("write");
    let output = common::server::layerstore()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}: line 2: SHA-1", htpasswd.display())),
        "{stderr}"
    );
}

#[tokio::test]
async fn token_auth_refuses_to_start_until_it_is_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, "").expect("write");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "storage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: '127.0.0.1:0'}}\n\
             auth: {{token: {{realm: 'http://127.0.0.1:1/token', service: registry, \
             issuer: test, rootcertbundle: {}}}}}\n",
            dir.path().join("data").display(),
            bundle.display()
        ),
    )
    .expect("write");
    let output = common::server::layerstore()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("token auth not yet built"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Read-only mode

const READ_ONLY: &str = "  maintenance:\n    readonly:\n      enabled: true\n";

/// The storage section's `maintenance` goes inside `storage`: the extra YAML is appended
/// after `http`, so read-only configurations repeat the storage keys they need.
fn read_only_config(data: &Path, extra: &str) -> String {
    format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    \
         enabled: true\n{READ_ONLY}{extra}http:\n  addr: 127.0.0.1:0\n  headers:\n    \
         X-Frame-Options: [DENY]\n",
        data.display()
    )
}

fn start_read_only(data: &Path, extra: &str) -> (Running, reqwest::Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yml");
    std::fs::write(&file, read_only_config(data, extra)).expect("write config");
    let file = file.to_str().expect("utf-8").to_owned();
    (
        Running::start_with(dir, &["--config", &file]),
        reqwest::Client::new(),
    )
}

#[tokio::test]
async fn read_only_every_write_is_405_unsupported_and_every_read_works() {
    let data = tempfile::tempdir().expect("tempdir");
    let fixture = {
        let writable = Registry::start(data.path(), "");
        fixture(&writable, Creds::None).await
    };
    let (running, client) = start_read_only(data.path(), "");
    let writes = [
        "PUT manifest",
        "DELETE manifest",
        "DELETE blob",
        "POST upload",
        "POST monolithic upload",
        "POST mount",
        "GET upload status",
        "PATCH upload",
        "PUT upload",
        "DELETE upload",
    ];
    for row in every_endpoint(&fixture) {
        let mut request = client.request(
            row.method.clone(),
            format!("http://{}{}", running.addr, row.path),
        );
        for (name, value) in &row.headers {
            request = request.header(name, *value);
        }
        if let Some(body) = &row.body {
            request = request.body(body.clone());
        }
        let response = request.send().await.expect("request");
        if writes.contains(&row.name) {
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{}",
                row.name
            );
            assert_eq!(
                header_of(&response, "x-frame-options"),
                "DENY",
                "{}",
                row.name
            );
            assert!(
                response.headers().contains_key(header::ALLOW),
                "{}",
                row.name
            );
            assert_eq!(
                header_of(&response, "content-type"),
                "application/json",
                "{}",
                row.name
            );
            let body: Value = json_of(response).await.expect("json");
            assert_eq!(
                body["errors"][0]["code"], "UNSUPPORTED",
                "{}: {body}",
                row.name
            );
            let message = body["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(message.contains("read-only"), "{}: {message}", row.name);
        } else {
            assert_eq!(response.status(), row.allowed, "{} (a read)", row.name);
        }
    }
    // The refused deletes deleted nothing.
    let blob = client
        .head(format!(
            "http://{}/v2/{REPO}/blobs/{}",
            running.addr, fixture.doomed_blob
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(blob.status(), StatusCode::OK);
}

#[tokio::test]
async fn read_only_runs_neither_the_upload_purger_nor_scheduled_gc() {
    let data = tempfile::tempdir().expect("tempdir");
    let (upload, orphan) = {
        let writable = Registry::start(data.path(), "");
        (
            writable.start_upload(Creds::None, REPO).await,
            // Linked but in no manifest: a GC run with no grace would remove it.
            writable
                .push_blob(Creds::None, REPO, b"an orphan blob")
                .await,
        )
    };
    let (running, client) = start_read_only(
        data.path(),
        "    uploadpurging: {enabled: true, age: 1s, interval: 1s}\n    \
         gc: {enabled: true, interval: 1s, grace: 0s, deleteuntagged: true}\n",
    );
    // Both would have run (and a GC run waits 3 s after its grace) by then.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let blob = client
        .head(format!("http://{}/v2/{REPO}/blobs/{orphan}", running.addr))
        .send()
        .await
        .expect("request");
    assert_eq!(blob.status(), StatusCode::OK, "scheduled GC removed a blob");
    let log = running.log();
    assert!(log.contains("read-only mode"), "{log}");
    assert!(!log.contains("garbage collection scheduled"), "{log}");
    drop(running);
    // The upload session is still there: a writable server continues it.
    let writable = Registry::start(data.path(), "");
    let status = writable.send(Creds::None, Method::GET, &upload).await;
    assert_eq!(
        status.status(),
        StatusCode::NO_CONTENT,
        "the purger removed {upload}"
    );
}

// ---------------------------------------------------------------------------------------------
// http.headers

/// `extra` YAML for `Registry::start`: headers (inside `http`, which the extra follows) and
/// htpasswd.
fn headers_and_htpasswd() -> String {
    format!(
        "  headers:\n    X-Content-Type-Options: [nosniff]\n    \
         Strict-Transport-Security: ['max-age=63072000']\n    X-Multi: [one, two]\n{}",
        htpasswd_config()
    )
}

fn assert_configured_headers(what: &str, response: &Response) {
    assert_eq!(
        header_of(response, "x-content-type-options"),
        "nosniff",
        "{what}"
    );
    assert_eq!(
        header_of(response, "strict-transport-security"),
        "max-age=63072000",
        "{what}"
    );
    let multi: Vec<&str> = response
        .headers()
        .get_all("x-multi")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(multi, ["one", "two"], "{what}");
}

#[tokio::test]
async fn configured_headers_are_on_every_kind_of_response() {
    let data = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(data.path(), &headers_and_htpasswd());
    let missing = digest_of(b"never pushed");
    let digest = digest_of(b"pushed");
    let cases = [
        (
            "200 GET /v2/",
            Creds::Right,
            Method::GET,
            "/v2/".to_owned(),
            None,
            StatusCode::OK,
        ),
        (
            "200 HEAD /v2/",
            Creds::Right,
            Method::HEAD,
            "/v2/".to_owned(),
            None,
            StatusCode::OK,
        ),
        (
            "201 blob push",
            Creds::Right,
            Method::POST,
            format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
            Some(b"pushed".to_vec()),
            StatusCode::CREATED,
        ),
        (
            "200 HEAD blob",
            Creds::Right,
            Method::HEAD,
            format!("/v2/{REPO}/blobs/{digest}"),
            None,
            StatusCode::OK,
        ),
        (
            "404 unknown blob",
            Creds::Right,
            Method::GET,
            format!("/v2/{REPO}/blobs/{missing}"),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "404 HEAD unknown blob",
            Creds::Right,
            Method::HEAD,
            format!("/v2/{REPO}/blobs/{missing}"),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "404 unknown path",
            Creds::None,
            Method::GET,
            "/nowhere".to_owned(),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "401 no credentials",
            Creds::None,
            Method::GET,
            "/v2/".to_owned(),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "401 HEAD no credentials",
            Creds::None,
            Method::HEAD,
            format!("/v2/{REPO}/manifests/v1"),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "405 method not allowed",
            Creds::Right,
            Method::POST,
            "/v2/_catalog".to_owned(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (what, creds, method, path, body, status) in cases {
        let mut request = registry.request(creds, method, &path);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), status, "{what}");
        assert_configured_headers(what, &response);
    }
}

#[tokio::test]
async fn a_header_the_response_sets_itself_keeps_its_value() {
    let data = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(data.path(), "  headers:\n    Content-Type: [text/plain]\n");
    let response = registry.send(Creds::None, Method::GET, "/v2/").await;
    assert_eq!(header_of(&response, "content-type"), "application/json");
    let missing = digest_of(b"never pushed");
    let response = registry
        .send(
            Creds::None,
            Method::GET,
            &format!("/v2/{REPO}/blobs/{missing}"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(header_of(&response, "content-type"), "application/json");
}
