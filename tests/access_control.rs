//! Access control over HTTP, black-box against the built server: `auth.htpasswd` and
//! `auth.token` on every endpoint (the access table, cell by cell), read-only mode, and
//! `http.headers`.
//!
//! Each test writes a Distribution `config.yml` (and an htpasswd file of bcrypt entries made
//! here, or the root bundle of a token server the test starts, `tests/common/token_issuer.rs`)
//! and starts `layerstore serve --config` on an ephemeral port.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

mod common;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::server::Running;
use common::token_issuer::{
    IssuerConfig, KeyKind, KeyReference, Signer, TokenIssuer, User, access_entry, claims, now,
    sign_hs256,
};

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
enum Creds<'a> {
    None,
    Right,
    WrongPassword,
    UnknownUser,
    /// `Authorization: Bearer <token>`.
    Bearer(&'a Token),
}

/// A bearer token, and what it is (the name is what failure messages show).
struct Token {
    what: String,
    jwt: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "token {}", self.what)
    }
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

    fn request(&self, creds: Creds<'_>, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match creds {
            Creds::None => request,
            Creds::Right => request.basic_auth(USER, Some(PASSWORD)),
            Creds::WrongPassword => request.basic_auth(USER, Some("correct:horse")),
            Creds::UnknownUser => request.basic_auth("mallory", Some(PASSWORD)),
            Creds::Bearer(token) => request.bearer_auth(&token.jwt),
        }
    }

    async fn send(&self, creds: Creds<'_>, method: Method, path: &str) -> Response {
        self.request(creds, method, path)
            .send()
            .await
            .expect("request")
    }

    async fn push_blob(&self, creds: Creds<'_>, repo: &str, bytes: &[u8]) -> String {
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

    async fn start_upload(&self, creds: Creds<'_>, repo: &str) -> String {
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

    async fn put_manifest(&self, creds: Creds<'_>, repo: &str, reference: &str, bytes: &[u8]) {
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

async fn fixture(registry: &Registry, creds: Creds<'_>) -> Fixture {
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

async fn send_row(registry: &Registry, creds: Creds<'_>, row: &Row) -> Response {
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
async fn assert_challenged(row: &Row, creds: Creds<'_>, response: Response) {
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

async fn every_endpoint_is_challenged(creds: Creds<'_>) {
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

// ---------------------------------------------------------------------------------------------
// Token auth: a token server started by the test, its bundle in `auth.token.rootcertbundle`

const TOKEN_SOURCE: &str = "acl/src";
const TOKEN_OTHER: &str = "acl/other";
const TOKEN_PASSWORD: &str = "token:pw";
/// What the harness asks the token server for: everything on both fixture repositories and
/// the catalog; the server narrows it to what the user may do.
const EVERY_SCOPE: [&str; 3] = [
    "repository:acl/app:pull,push,delete",
    "repository:acl/src:pull,push,delete",
    "registry:catalog:*",
];

/// The users of the token server: who may do what.
fn token_users() -> Vec<User> {
    vec![
        User::new(
            "admin",
            TOKEN_PASSWORD,
            &["repository:acl/*:*", "registry:catalog:*"],
        ),
        User::new("puller", TOKEN_PASSWORD, &["repository:acl/*:pull"]),
        User::new("pusher", TOKEN_PASSWORD, &["repository:acl/*:pull,push"]),
        // Push to acl/app, nothing on acl/src: a mount from there needs pull it lacks.
        User::new(
            "app-only",
            TOKEN_PASSWORD,
            &["repository:acl/app:pull,push"],
        ),
        User::new("other", TOKEN_PASSWORD, &["repository:acl/other:*"]),
    ]
}

/// A registry behind `auth.token`, the token server it trusts, and the fixture pushed with an
/// admin token.
struct TokenRegistry {
    registry: Registry,
    issuer: TokenIssuer,
    fixture: Fixture,
    admin: Token,
    _data: TempDir,
    _bundle: TempDir,
}

impl TokenRegistry {
    /// With a token server that signs RS256 and names its key by libtrust `kid`.
    async fn start() -> Self {
        Self::start_with(IssuerConfig::default(), "").await
    }

    /// With a token server configured as `config` (its users replaced by [`token_users`]), and
    /// `extra` keys of `auth.token` (each line indented by four spaces).
    async fn start_with(config: IssuerConfig, extra: &str) -> Self {
        let issuer = TokenIssuer::start(IssuerConfig {
            users: token_users(),
            ..config
        });
        let bundle = tempfile::tempdir().expect("tempdir");
        let bundle_file = bundle.path().join("bundle.pem");
        std::fs::write(&bundle_file, issuer.root_cert_bundle()).expect("write the bundle");
        let data = tempfile::tempdir().expect("tempdir");
        let registry = Registry::start(
            data.path(),
            &format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    \
                 rootcertbundle: {}\n{extra}",
                issuer.realm(),
                issuer.service(),
                issuer.issuer(),
                bundle_file.display()
            ),
        );
        let admin = fetch_token(&issuer, "admin", &EVERY_SCOPE).await;
        let fixture = fixture(&registry, Creds::Bearer(&admin)).await;
        Self {
            registry,
            issuer,
            fixture,
            admin,
            _data: data,
            _bundle: bundle,
        }
    }

    /// `Bearer realm="…",service="…"` and, if given, `,scope="…"` and `,error="…"`.
    fn challenge(&self, scope: Option<&str>, error: Option<&str>) -> String {
        let mut challenge = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.issuer.realm(),
            self.issuer.service()
        );
        if let Some(scope) = scope {
            challenge.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(error) = error {
            challenge.push_str(&format!(",error=\"{error}\""));
        }
        challenge
    }

    /// Claims for `access` as the token server issues them (from its issuer, for its service,
    /// five minutes from now), for tests that forge a variant.
    fn claims(&self, access: Value) -> Value {
        claims(
            self.issuer.issuer(),
            self.issuer.service(),
            "admin",
            access,
            Duration::from_secs(300),
        )
    }
}

/// Everything on the fixture's repositories and the catalog, as an `access` claim.
fn full_access() -> Value {
    json!([
        access_entry("repository", REPO, &["pull", "push", "delete"]),
        access_entry("repository", TOKEN_SOURCE, &["pull", "push", "delete"]),
        access_entry("registry", "catalog", &["*"]),
    ])
}

/// A token from the token server's endpoint, as a client fetches one: `user` with Basic
/// credentials, asking for `scopes`.
async fn fetch_token(issuer: &TokenIssuer, user: &str, scopes: &[&str]) -> Token {
    let mut query = vec![("service", issuer.service().to_owned())];
    query.extend(scopes.iter().map(|s| ("scope", (*s).to_owned())));
    let url = reqwest::Url::parse_with_params(&issuer.realm(), &query).expect("realm URL");
    let response = reqwest::Client::new()
        .get(url)
        .basic_auth(user, Some(TOKEN_PASSWORD))
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), StatusCode::OK, "token for {user}");
    let body = json_of(response).await.expect("token response");
    Token {
        what: format!("of {user} for {scopes:?}"),
        jwt: body["token"].as_str().expect("a token").to_owned(),
    }
}

/// The scope the access table names for a row: what its challenge asks for.
fn scope_of(row: &Row) -> Option<String> {
    let on_repo = |actions: &str| Some(format!("repository:{REPO}:{actions}"));
    match row.name {
        "GET /v2/" | "HEAD /v2/" => None,
        "GET catalog" => Some("registry:catalog:*".to_owned()),
        "GET tags" | "GET manifest" | "HEAD manifest" | "GET blob" | "HEAD blob"
        | "GET referrers" => on_repo("pull"),
        "PUT manifest"
        | "POST upload"
        | "POST monolithic upload"
        | "GET upload status"
        | "PATCH upload"
        | "PUT upload"
        | "DELETE upload" => on_repo("pull,push"),
        "DELETE manifest" | "DELETE blob" => on_repo("delete"),
        "POST mount" => Some(format!(
            "repository:{REPO}:pull,push repository:{TOKEN_SOURCE}:pull"
        )),
        other => panic!("{other}: no scope written down for this row; add it here"),
    }
}

/// The parts of `scope` (a challenge's, space-separated) that `granted` lacks: a plain model
/// of the token check, one `TYPE:NAME:ACTIONS` per resource with the missing actions.
fn missing_from(scope: &str, granted: &[(&str, &[&str])]) -> Vec<String> {
    let mut missing = Vec::new();
    for one in scope.split(' ') {
        let (resource, actions) = one.rsplit_once(':').expect("TYPE:NAME:ACTIONS");
        let grant: &[&str] = granted
            .iter()
            .find(|(r, _)| *r == resource)
            .map_or(&[], |(_, a)| a);
        let lacking: Vec<&str> = actions
            .split(',')
            .filter(|a| !grant.contains(a) && !grant.contains(&"*"))
            .collect();
        if !lacking.is_empty() {
            missing.push(format!("{resource}:{}", lacking.join(",")));
        }
    }
    missing
}

/// 401 with the Bearer challenge `expected` and (except for HEAD) an OCI `UNAUTHORIZED` body
/// whose message names each of `named`.
async fn assert_bearer_refused(
    row: &Row,
    what: &str,
    response: Response,
    expected: &str,
    named: &[String],
) {
    let what = format!("{} ({what})", row.name);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(
        header_of(&response, "www-authenticate"),
        expected,
        "{what}: the challenge"
    );
    if row.method != Method::HEAD {
        let body = json_of(response)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED", "{what}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        for scope in named {
            assert!(
                message.contains(scope.as_str()),
                "{what}: {message} does not name {scope}"
            );
        }
    }
}

/// Every row, in order, with the admin token: each answers as without auth. After requests
/// that were all refused, this shows that none of them changed anything (the manifest PUT and
/// DELETE, the blob DELETE, the mount and each upload step still work once, as the first time).
async fn every_endpoint_works_with_the_admin_token(t: &TokenRegistry, after: &str) {
    for row in &every_endpoint(&t.fixture) {
        let response = send_row(&t.registry, Creds::Bearer(&t.admin), row).await;
        assert_eq!(response.status(), row.allowed, "{} {after}", row.name);
    }
}

/// Every row with `token`, which grants `granted` (as `TYPE:NAME`, actions): rows it covers
/// answer as without auth; the others get 401 `insufficient_scope` naming what is missing.
/// Returns whether every write was refused.
async fn every_endpoint_with(
    t: &TokenRegistry,
    token: &Token,
    granted: &[(&str, &[&str])],
) -> bool {
    let mut all_writes_refused = true;
    for row in &every_endpoint(&t.fixture) {
        let response = send_row(&t.registry, Creds::Bearer(token), row).await;
        let scope = scope_of(row);
        let missing = scope
            .as_deref()
            .map_or_else(Vec::new, |scope| missing_from(scope, granted));
        if missing.is_empty() {
            assert_eq!(
                response.status(),
                row.allowed,
                "{} with {token:?}",
                row.name
            );
            let writes = scope
                .as_deref()
                .is_some_and(|s| s.contains("push") || s.contains("delete"));
            all_writes_refused &= !writes;
        } else {
            let challenge = t.challenge(scope.as_deref(), Some("insufficient_scope"));
            assert_bearer_refused(row, &format!("{token:?}"), response, &challenge, &missing).await;
        }
    }
    all_writes_refused
}

/// Every row with a token that must not verify: 401, `error="invalid_token"`, the row's scope
/// in the challenge; and nothing changed.
async fn every_endpoint_refuses_the_token(
    forge: impl FnOnce(&TokenRegistry) -> String,
    what: &str,
) {
    let t = TokenRegistry::start().await;
    let token = Token {
        what: what.to_owned(),
        jwt: forge(&t),
    };
    for row in &every_endpoint(&t.fixture) {
        let response = send_row(&t.registry, Creds::Bearer(&token), row).await;
        let challenge = t.challenge(scope_of(row).as_deref(), Some("invalid_token"));
        assert_bearer_refused(row, what, response, &challenge, &[]).await;
    }
    every_endpoint_works_with_the_admin_token(&t, &format!("after the {what} token")).await;
}

/// Replaces the payload of `jwt` (keeping its header and signature).
fn with_payload(jwt: &str, claims: &Value) -> String {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT");
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

#[tokio::test]
async fn token_without_a_token_every_endpoint_is_401_with_a_challenge_naming_its_scope() {
    let t = TokenRegistry::start().await;
    for row in &every_endpoint(&t.fixture) {
        let response = send_row(&t.registry, Creds::None, row).await;
        let challenge = t.challenge(scope_of(row).as_deref(), None);
        assert_bearer_refused(row, "no token", response, &challenge, &[]).await;
    }
    every_endpoint_works_with_the_admin_token(&t, "after requests without a token").await;
}

#[tokio::test]
async fn token_the_scope_each_challenge_names_is_enough_for_its_request() {
    let t = TokenRegistry::start().await;
    for row in &every_endpoint(&t.fixture) {
        let challenged = send_row(&t.registry, Creds::None, row).await;
        let challenge = header_of(&challenged, "www-authenticate");
        let scopes: Vec<&str> = challenge
            .split_once(",scope=\"")
            .map(|(_, rest)| rest.split('"').next().unwrap_or_default())
            .map(|scope| scope.split(' ').collect())
            .unwrap_or_default();
        // What docker and skopeo do: ask the realm for exactly what the challenge names.
        let token = fetch_token(&t.issuer, "admin", &scopes).await;
        let response = send_row(&t.registry, Creds::Bearer(&token), row).await;
        assert_eq!(
            response.status(),
            row.allowed,
            "{} with {token:?}",
            row.name
        );
    }
}

#[tokio::test]
async fn token_granting_pull_and_push_and_delete_every_endpoint_answers_as_without_auth() {
    let t = TokenRegistry::start().await;
    for row in &every_endpoint(&t.fixture) {
        let response = send_row(&t.registry, Creds::Bearer(&t.admin), row).await;
        assert_eq!(response.status(), row.allowed, "{}", row.name);
        assert!(
            !response.headers().contains_key(header::WWW_AUTHENTICATE),
            "{}",
            row.name
        );
    }
}

#[tokio::test]
async fn token_signed_es256_with_an_x5c_chain_to_a_bundle_ca_opens_every_endpoint() {
    let t = TokenRegistry::start_with(
        IssuerConfig {
            key: KeyKind::P256,
            reference: KeyReference::X5c,
            ..IssuerConfig::default()
        },
        "",
    )
    .await;
    for row in &every_endpoint(&t.fixture) {
        let response = send_row(&t.registry, Creds::Bearer(&t.admin), row).await;
        assert_eq!(response.status(), row.allowed, "{}", row.name);
    }
}

#[tokio::test]
async fn token_autoredirect_points_the_realm_at_the_host_the_client_used() {
    let t = TokenRegistry::start_with(IssuerConfig::default(), "    autoredirect: true\n").await;
    let host = &t.registry.addr;
    for (proto, scheme) in [
        (None, "https"),
        (Some("http"), "http"),
        (Some("https"), "https"),
    ] {
        let mut request = t.registry.request(Creds::None, Method::GET, "/v2/");
        if let Some(proto) = proto {
            request = request.header("x-forwarded-proto", proto);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            header_of(&response, "www-authenticate"),
            format!(
                "Bearer realm=\"{scheme}://{host}/auth/token\",service=\"{}\"",
                t.issuer.service()
            ),
            "X-Forwarded-Proto {proto:?}"
        );
    }
}

#[tokio::test]
async fn token_granting_only_pull_reads_and_every_write_is_401_insufficient_scope() {
    let t = TokenRegistry::start().await;
    let puller = fetch_token(&t.issuer, "puller", &EVERY_SCOPE).await;
    let granted: &[(&str, &[&str])] = &[
        ("repository:acl/app", &["pull"]),
        ("repository:acl/src", &["pull"]),
    ];
    assert!(every_endpoint_with(&t, &puller, granted).await);
    every_endpoint_works_with_the_admin_token(&t, "after a pull-only token").await;
}

#[tokio::test]
async fn token_granting_pull_and_push_pushes_but_deletes_need_the_delete_action() {
    let t = TokenRegistry::start().await;
    let pusher = fetch_token(&t.issuer, "pusher", &EVERY_SCOPE).await;
    let granted: &[(&str, &[&str])] = &[
        ("repository:acl/app", &["pull", "push"]),
        ("repository:acl/src", &["pull", "push"]),
    ];
    every_endpoint_with(&t, &pusher, granted).await;
    // The refused deletes deleted nothing.
    let blob = t
        .registry
        .send(
            Creds::Bearer(&t.admin),
            Method::HEAD,
            &format!("/v2/{REPO}/blobs/{}", t.fixture.doomed_blob),
        )
        .await;
    assert_eq!(
        blob.status(),
        StatusCode::OK,
        "the blob a pusher tried to delete"
    );
}

#[tokio::test]
async fn token_for_another_repository_opens_nothing_here() {
    let t = TokenRegistry::start().await;
    let scope = format!("repository:{TOKEN_OTHER}:pull,push,delete");
    let other = fetch_token(&t.issuer, "other", &[scope.as_str()]).await;
    let granted: &[(&str, &[&str])] = &[("repository:acl/other", &["pull", "push", "delete"])];
    assert!(every_endpoint_with(&t, &other, granted).await);
    every_endpoint_works_with_the_admin_token(&t, "after a token for another repository").await;
}

#[tokio::test]
async fn token_the_catalog_needs_registry_catalog_star() {
    let t = TokenRegistry::start().await;
    let without = fetch_token(&t.issuer, "pusher", &EVERY_SCOPE).await;
    let response = t
        .registry
        .send(Creds::Bearer(&without), Method::GET, "/v2/_catalog")
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header_of(&response, "www-authenticate"),
        t.challenge(Some("registry:catalog:*"), Some("insufficient_scope"))
    );
    let body = json_of(response).await.expect("json");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("registry:catalog:*"), "{message}");

    let with = fetch_token(&t.issuer, "admin", &["registry:catalog:*"]).await;
    let response = t
        .registry
        .send(Creds::Bearer(&with), Method::GET, "/v2/_catalog")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await.expect("json");
    assert_eq!(body["repositories"], json!([REPO, TOKEN_SOURCE]), "{body}");
}

#[tokio::test]
async fn token_a_mount_without_pull_on_the_source_is_401_naming_it_and_mounts_nothing() {
    let t = TokenRegistry::start().await;
    let app_only = fetch_token(&t.issuer, "app-only", &EVERY_SCOPE).await;
    let mount = format!(
        "/v2/{REPO}/blobs/uploads/?mount={}&from={TOKEN_SOURCE}",
        t.fixture.mountable
    );
    let response = t
        .registry
        .send(Creds::Bearer(&app_only), Method::POST, &mount)
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header_of(&response, "www-authenticate"),
        t.challenge(
            Some(&format!(
                "repository:{REPO}:pull,push repository:{TOKEN_SOURCE}:pull"
            )),
            Some("insufficient_scope")
        )
    );
    let body = json_of(response).await.expect("json");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("repository:{TOKEN_SOURCE}:pull")),
        "{message}"
    );
    let linked = t
        .registry
        .send(
            Creds::Bearer(&t.admin),
            Method::HEAD,
            &format!("/v2/{REPO}/blobs/{}", t.fixture.mountable),
        )
        .await;
    assert_eq!(
        linked.status(),
        StatusCode::NOT_FOUND,
        "the blob was mounted"
    );
    // The same token pushes to its own repository without a mount.
    let upload = t
        .registry
        .send(
            Creds::Bearer(&app_only),
            Method::POST,
            &format!("/v2/{REPO}/blobs/uploads/"),
        )
        .await;
    assert_eq!(upload.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn token_expired_every_endpoint_is_401_invalid_token() {
    every_endpoint_refuses_the_token(
        |t| {
            let mut claims = t.claims(full_access());
            let past = now() - 3600;
            claims["exp"] = json!(past);
            claims["nbf"] = json!(past - 300);
            claims["iat"] = json!(past - 300);
            t.issuer.sign(&claims)
        },
        "expired an hour ago",
    )
    .await;
}

#[tokio::test]
async fn token_tampered_every_endpoint_is_401_invalid_token() {
    every_endpoint_refuses_the_token(
        |t| {
            // A genuine token for nothing, its payload swapped for one granting everything.
            let genuine = t.issuer.sign(&t.claims(json!([])));
            with_payload(&genuine, &t.claims(full_access()))
        },
        "with a tampered payload",
    )
    .await;
}

#[tokio::test]
async fn token_from_another_issuer_every_endpoint_is_401_invalid_token() {
    every_endpoint_refuses_the_token(
        |t| {
            let mut claims = t.claims(full_access());
            claims["iss"] = json!("another-issuer");
            t.issuer.sign(&claims)
        },
        "from another issuer",
    )
    .await;
}

#[tokio::test]
async fn token_for_another_audience_every_endpoint_is_401_invalid_token() {
    every_endpoint_refuses_the_token(
        |t| {
            let mut claims = t.claims(full_access());
            claims["aud"] = json!("another-registry");
            t.issuer.sign(&claims)
        },
        "for another audience",
    )
    .await;
}

#[tokio::test]
async fn token_with_alg_none_every_endpoint_is_401_invalid_token() {
    every_endpoint_refuses_the_token(
        |t| {
            let mut header = t.issuer.token_header();
            header["alg"] = json!("none");
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(t.claims(full_access()).to_string())
            )
        },
        "unsigned (alg none)",
    )
    .await;
}

#[tokio::test]
async fn token_signed_by_an_untrusted_key_under_the_trusted_kid_every_endpoint_is_401_invalid_token()
 {
    every_endpoint_refuses_the_token(
        |t| {
            let stranger = Signer::self_signed(KeyKind::Rsa);
            stranger.sign(&t.issuer.token_header(), &t.claims(full_access()))
        },
        "signed by an untrusted key",
    )
    .await;
}

#[tokio::test]
async fn token_hostile_authorization_headers_are_400_or_401_and_change_nothing() {
    let t = TokenRegistry::start().await;
    let claims = t.claims(full_access());
    let mut hs256 = t.issuer.token_header();
    hs256["alg"] = json!("HS256");
    let pem = t.issuer.root_cert_bundle().as_bytes().to_vec();
    let spki = t.issuer.signer().spki_der();
    let mut hostile: Vec<(String, Vec<u8>)> = vec![
        (
            "HS256 keyed with the bundle PEM".into(),
            format!("Bearer {}", sign_hs256(&hs256, &claims, &pem)).into_bytes(),
        ),
        (
            "HS256 keyed with the public key".into(),
            format!("Bearer {}", sign_hs256(&hs256, &claims, &spki)).into_bytes(),
        ),
        ("bad base64".into(), b"Bearer !!!.@@@.###".to_vec()),
        ("not a JWT".into(), b"Bearer abc".to_vec()),
        ("four parts".into(), b"Bearer a.b.c.d".to_vec()),
        (
            "a header that is not JSON".into(),
            format!(
                "Bearer {}.{}.sig",
                URL_SAFE_NO_PAD.encode("not json"),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            )
            .into_bytes(),
        ),
        ("not UTF-8".into(), b"Bearer \xff\xfe.\x80.\x81".to_vec()),
        ("Bearer alone".into(), b"Bearer".to_vec()),
        (
            "Basic credentials".into(),
            b"Basic YWRtaW46dG9rZW46cHc=".to_vec(),
        ),
    ];
    for size in [32 * 1024, 100 * 1024] {
        hostile.push((
            format!("a {} KiB token", size / 1024),
            format!("Bearer {}", "a".repeat(size)).into_bytes(),
        ));
    }
    let rows = every_endpoint(&t.fixture);
    let writes: Vec<&Row> = rows
        .iter()
        .filter(|r| !matches!(r.method, Method::GET | Method::HEAD))
        .collect();
    for (what, value) in &hostile {
        let value = header::HeaderValue::from_bytes(value).expect("a header value");
        for row in [&rows[0]].into_iter().chain(writes.iter().copied()) {
            let mut request = t
                .registry
                .request(Creds::None, row.method.clone(), &row.path);
            request = request.header(header::AUTHORIZATION, value.clone());
            if let Some(body) = &row.body {
                request = request.body(body.clone());
            }
            let status = request.send().await.expect("request").status();
            assert!(
                status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST,
                "{} with {what}: {status}",
                row.name
            );
        }
    }
    every_endpoint_works_with_the_admin_token(&t, "after hostile headers").await;
}

#[tokio::test]
async fn token_an_authorization_header_past_the_http_limit_is_431_before_any_handler() {
    let t = TokenRegistry::start().await;
    // Past hyper's limit on a request head (about 400 KiB): refused while the head is read.
    let value = format!("Bearer {}", "a".repeat(1024 * 1024));
    let response = t
        .registry
        .request(
            Creds::None,
            Method::PUT,
            &format!("/v2/{REPO}/manifests/v2"),
        )
        .header(header::AUTHORIZATION, value)
        .header(header::CONTENT_TYPE, OCI_MANIFEST)
        .body(t.fixture.manifest.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let unchanged = t
        .registry
        .send(
            Creds::Bearer(&t.admin),
            Method::GET,
            &format!("/v2/{REPO}/manifests/v2"),
        )
        .await;
    assert_eq!(
        unchanged.status(),
        StatusCode::NOT_FOUND,
        "the manifest was put"
    );
}

#[tokio::test]
async fn token_auth_with_a_bundle_holding_no_certificate_refuses_to_start() {
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
    assert!(
        stderr.contains(&format!(
            "auth.token: rootcertbundle {}: no PEM CERTIFICATE",
            bundle.display()
        )),
        "{stderr}"
    );
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
