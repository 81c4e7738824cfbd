//! A real client against the real server: skopeo pushes a multi-platform OCI image to
//! `layerstore serve`, copies it back, lists its tags and deletes it; behind `auth.htpasswd`,
//! and behind `auth.token` with a token server the test starts (plain HTTP realm), it logs in
//! (`skopeo login`, `--dest-creds`, `--src-creds`).
//!
//! The image is written here as an OCI image layout (nothing is pulled). skopeo must be
//! installed (`apt-get install skopeo`): without it these tests fail when `CI=true` and are
//! skipped with a note on stderr otherwise. The S3 variants also need the
//! `LAYERSTORE_TEST_S3_*` variables of `tests/common/backends.rs`, with the same rule.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

use layerstore::Digest;
use rand::RngCore;
use serde_json::{Value, json};
use tempfile::TempDir;

mod common;
use common::server::{layerstore, spawn_server};
use common::token_issuer::{IssuerConfig, TokenIssuer, User};

const REPO: &str = "test/multi";
const TAG: &str = "v1";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether to run: `false` (with a note) when something the test needs is missing outside CI;
/// a panic when it is missing in CI.
fn available(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    assert!(!in_ci(), "{what} is required when CI=true");
    // Straight to stderr, past libtest's capture, so that a skip shows in `cargo test`.
    let _ = writeln!(std::io::stderr(), "skipping: {what} is not available");
    false
}

fn skopeo_installed() -> bool {
    available(
        "skopeo (apt-get install skopeo)",
        Command::new("skopeo")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    )
}

// ---------------------------------------------------------------------------------------------
// The server

/// Where the server keeps its data.
enum Storage {
    Filesystem,
    S3,
    /// The filesystem, behind `auth.htpasswd` with one user, [`USER`] / [`PASSWORD`].
    FilesystemWithHtpasswd,
    /// The filesystem, behind `auth.token` trusting this token server.
    FilesystemWithToken(TokenServer),
}

/// What `auth.token` needs to know of a [`TokenIssuer`].
struct TokenServer {
    realm: String,
    service: String,
    issuer: String,
    bundle_pem: String,
}

impl TokenServer {
    fn of(issuer: &TokenIssuer) -> Self {
        TokenServer {
            realm: issuer.realm(),
            service: issuer.service().to_owned(),
            issuer: issuer.issuer().to_owned(),
            bundle_pem: issuer.root_cert_bundle().to_owned(),
        }
    }
}

const USER: &str = "skopeo-user";
/// With colons: clients send it whole, the server splits user and password at the first.
const PASSWORD: &str = "pass:with:colons";

/// A `layerstore serve` child process, killed when dropped.
struct Server {
    child: Child,
    /// `127.0.0.1:PORT`
    host: String,
    _stdout: BufReader<ChildStdout>,
    _dir: TempDir,
}

impl Server {
    /// Starts the server on an ephemeral port; `None` if the storage is not configured here.
    fn start(storage: &Storage) -> Option<Server> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = layerstore();
        command.arg("serve");
        match storage {
            Storage::Filesystem => {
                command
                    .args(["--addr", "127.0.0.1:0", "--root"])
                    .arg(dir.path().join("root"));
            }
            Storage::S3 => {
                let config = s3_config()?;
                let path = dir.path().join("config.yml");
                std::fs::write(&path, config).expect("write config.yml");
                command.arg("--config").arg(&path);
            }
            Storage::FilesystemWithHtpasswd => {
                let htpasswd = dir.path().join("htpasswd");
                let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
                std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).expect("write htpasswd");
                let config = format!(
                    "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: 127.0.0.1:0\nauth:\n  htpasswd:\n    realm: skopeo-test\n    \
                     path: {}\n",
                    dir.path().join("root").display(),
                    htpasswd.display()
                );
                let path = dir.path().join("config.yml");
                std::fs::write(&path, config).expect("write config.yml");
                command.arg("--config").arg(&path);
            }
            Storage::FilesystemWithToken(token) => {
                let bundle = dir.path().join("bundle.pem");
                std::fs::write(&bundle, &token.bundle_pem).expect("write bundle.pem");
                let config = format!(
                    "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: 127.0.0.1:0\nauth:\n  token:\n    realm: {}\n    \
                     service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    dir.path().join("root").display(),
                    token.realm,
                    token.service,
                    token.issuer,
                    bundle.display()
                );
                let path = dir.path().join("config.yml");
                std::fs::write(&path, config).expect("write config.yml");
                command.arg("--config").arg(&path);
            }
        }
        let spawned = spawn_server(
            command,
            &dir.path().join("server.log"),
            Duration::from_secs(60),
        );
        Some(Server {
            host: spawned.host("http"),
            child: spawned.child,
            _stdout: spawned.stdout,
            _dir: dir,
        })
    }

    /// `docker://HOST/test/multi:v1`
    fn image(&self) -> String {
        format!("docker://{}/{REPO}:{TAG}", self.host)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Distribution-layout `config.yml` for S3 under a prefix of its own, from the
/// `LAYERSTORE_TEST_S3_*` variables; `None` (outside CI) when they are not set.
fn s3_config() -> Option<String> {
    let var = |name: &str| std::env::var(format!("LAYERSTORE_TEST_S3_{name}")).ok();
    let (endpoint, bucket, access, secret) = (
        var("ENDPOINT"),
        var("BUCKET"),
        var("ACCESS_KEY_ID"),
        var("SECRET_ACCESS_KEY"),
    );
    let set = endpoint.is_some() && bucket.is_some() && access.is_some() && secret.is_some();
    if !available("S3 (LAYERSTORE_TEST_S3_* variables)", set) {
        return None;
    }
    let region = var("REGION").unwrap_or_else(|| "us-east-1".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let prefix = format!("/skopeo-tests/{}-{nanos}", std::process::id());
    // Scalars are written as JSON strings, which YAML reads as double-quoted strings.
    let q = |v: &str| Value::from(v).to_string();
    let (endpoint, bucket, access, secret) = (
        endpoint.unwrap_or_default(),
        bucket.unwrap_or_default(),
        access.unwrap_or_default(),
        secret.unwrap_or_default(),
    );
    Some(format!(
        "version: 0.1
storage:
  s3:
    bucket: {}
    region: {}
    regionendpoint: {}
    accesskey: {}
    secretkey: {}
    secure: false
    rootdirectory: {}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:0
",
        q(&bucket),
        q(&region),
        q(&endpoint),
        q(&access),
        q(&secret),
        q(&prefix),
    ))
}

// ---------------------------------------------------------------------------------------------
// The image

/// A multi-platform image as an OCI image layout in a directory of its own.
struct Layout {
    dir: TempDir,
    /// The digest of the top-level image index.
    index: Digest,
}

impl Layout {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `oci:DIR:v1`
    fn reference(&self) -> String {
        format!("oci:{}:{TAG}", self.path().display())
    }
}

/// The blobs of an OCI layout (`blobs/sha256/*`), by file name.
fn blobs_of(layout: &Path) -> BTreeMap<String, Vec<u8>> {
    let dir = layout.join("blobs").join("sha256");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().into_string().expect("UTF-8 file name");
            (name, std::fs::read(entry.path()).expect("read blob"))
        })
        .collect()
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256(bytes);
    let path = layout.join("blobs").join("sha256").join(digest.hex());
    std::fs::write(path, bytes).expect("write blob");
    digest
}

fn descriptor(media_type: &str, digest: &Digest, size: usize) -> Value {
    json!({ "mediaType": media_type, "digest": digest.to_string(), "size": size })
}

/// CRC-32 (IEEE), as gzip's trailer needs.
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, entry) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    !data.iter().fold(!0u32, |crc, &b| {
        table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// `data` as a valid gzip stream of stored (uncompressed) deflate blocks. Layers must really
/// be gzip: skopeo sniffs layer bytes and would compress anything else on the way to a
/// registry, changing every digest.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let blocks: Vec<&[u8]> = data.chunks(0xffff).collect();
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = u16::try_from(block.len()).expect("block under 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(data.len())
            .expect("under 4 GiB")
            .to_le_bytes(),
    );
    out
}

/// A gzip layer of `size` random bytes: (its digest, its size, the digest of its content).
fn write_layer(layout: &Path, size: usize) -> (Digest, usize, Digest) {
    let mut content = vec![0u8; size];
    rand::rng().fill_bytes(&mut content);
    let gz = gzip_stored(&content);
    (write_blob(layout, &gz), gz.len(), Digest::sha256(&content))
}

/// One platform's manifest over `layers`; returns its descriptor in the index.
fn write_platform(layout: &Path, arch: &str, layers: &[(Digest, usize, Digest)]) -> Value {
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Cmd": ["/x"] },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.2.to_string()).collect::<Vec<_>>(),
        },
    })
    .to_string();
    let config_digest = write_blob(layout, config.as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config_digest, config.len()),
        "layers": layers
            .iter()
            .map(|(d, size, _)| descriptor(OCI_LAYER_GZIP, d, *size))
            .collect::<Vec<_>>(),
    })
    .to_string();
    let digest = write_blob(layout, manifest.as_bytes());
    let mut desc = descriptor(OCI_MANIFEST, &digest, manifest.len());
    desc["platform"] = json!({ "architecture": arch, "os": "linux" });
    desc
}

/// An index of linux/amd64 and linux/arm64, three layers each: one shared by both, one of
/// 9 MiB (several 4 MiB-ish client chunks; over S3's 5 MiB part minimum) and a small one.
fn write_image() -> Layout {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path();
    std::fs::create_dir_all(layout.join("blobs").join("sha256")).expect("mkdir blobs");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write oci-layout");
    let shared = write_layer(layout, 64 << 10);
    let amd64 = write_platform(
        layout,
        "amd64",
        &[
            shared,
            write_layer(layout, 9 << 20),
            write_layer(layout, 1000),
        ],
    );
    let arm64 = write_platform(
        layout,
        "arm64",
        &[
            shared,
            write_layer(layout, 3 << 20),
            write_layer(layout, 2000),
        ],
    );
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [amd64, arm64],
    })
    .to_string();
    let index_digest = write_blob(layout, index.as_bytes());
    let mut top = descriptor(OCI_INDEX, &index_digest, index.len());
    top["annotations"] = json!({ "org.opencontainers.image.ref.name": TAG });
    let top = json!({ "schemaVersion": 2, "manifests": [top] }).to_string();
    std::fs::write(layout.join("index.json"), top).expect("write index.json");
    Layout {
        dir,
        index: index_digest,
    }
}

// ---------------------------------------------------------------------------------------------
// skopeo

/// skopeo (without a signature policy: these images are our own) run with `args`.
fn run_skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run skopeo")
}

/// Runs skopeo and returns its output; panics with its stderr if it fails.
fn skopeo(args: &[&str]) -> Output {
    let output = run_skopeo(args);
    assert!(
        output.status.success(),
        "skopeo {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A server with the image pushed to it by `skopeo copy --all`; `None` when skipped.
fn pushed(storage: &Storage) -> Option<(Server, Layout)> {
    if !skopeo_installed() {
        return None;
    }
    let server = Server::start(storage)?;
    let layout = write_image();
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &layout.reference(),
        &server.image(),
    ]);
    Some((server, layout))
}

// ---------------------------------------------------------------------------------------------
// The behaviours, each on every storage

/// Pulled back into a new layout, the image is the same bytes: every blob, both platform
/// manifests and the index, under the same tag.
fn round_trip_is_byte_identical(storage: Storage) {
    let Some((server, layout)) = pushed(&storage) else {
        return;
    };
    let back = tempfile::tempdir().expect("tempdir");
    let back_path: PathBuf = back.path().join("layout");
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &server.image(),
        &format!("oci:{}:{TAG}", back_path.display()),
    ]);

    let sent = blobs_of(layout.path());
    let received = blobs_of(&back_path);
    assert_eq!(
        sent.keys().collect::<Vec<_>>(),
        received.keys().collect::<Vec<_>>(),
        "the same set of blobs and manifests comes back"
    );
    for (name, bytes) in &sent {
        assert!(
            received[name] == *bytes,
            "blob {name} differs after the round trip"
        );
    }
    let index: Value = serde_json::from_slice(
        &std::fs::read(back_path.join("index.json")).expect("read index.json"),
    )
    .expect("index.json is JSON");
    let top = &index["manifests"][0];
    assert_eq!(top["digest"], layout.index.to_string());
    assert_eq!(top["mediaType"], OCI_INDEX);
    assert_eq!(top["annotations"]["org.opencontainers.image.ref.name"], TAG);
}

/// `skopeo list-tags` sees the pushed tag.
fn list_tags_shows_the_tag(storage: Storage) {
    let Some((server, _layout)) = pushed(&storage) else {
        return;
    };
    let output = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/{REPO}", server.host),
    ]);
    let listed: Value = serde_json::from_slice(&output.stdout).expect("list-tags prints JSON");
    assert_eq!(listed["Tags"], json!([TAG]), "{listed}");
}

/// `skopeo delete` removes the manifest: by tag and by digest it is then 404.
async fn delete_removes_the_manifest(storage: Storage) {
    let Some((server, layout)) = pushed(&storage) else {
        return;
    };
    skopeo(&["delete", "--tls-verify=false", &server.image()]);
    let client = reqwest::Client::new();
    for reference in [TAG.to_owned(), layout.index.to_string()] {
        let response = client
            .get(server.url(&format!("/v2/{REPO}/manifests/{reference}")))
            .header("accept", OCI_INDEX)
            .send()
            .await
            .expect("GET manifest");
        assert_eq!(
            response.status(),
            reqwest::StatusCode::NOT_FOUND,
            "manifest {reference} after delete"
        );
    }
}

#[test]
fn filesystem_round_trip_is_byte_identical() {
    round_trip_is_byte_identical(Storage::Filesystem);
}

#[test]
fn filesystem_list_tags_shows_the_tag() {
    list_tags_shows_the_tag(Storage::Filesystem);
}

#[tokio::test]
async fn filesystem_delete_removes_the_manifest() {
    delete_removes_the_manifest(Storage::Filesystem).await;
}

#[test]
fn s3_round_trip_is_byte_identical() {
    round_trip_is_byte_identical(Storage::S3);
}

#[test]
fn s3_list_tags_shows_the_tag() {
    list_tags_shows_the_tag(Storage::S3);
}

#[tokio::test]
async fn s3_delete_removes_the_manifest() {
    delete_removes_the_manifest(Storage::S3).await;
}

// ---------------------------------------------------------------------------------------------
// htpasswd: a real client logging in

/// `skopeo copy --dest-creds` pushes to a registry behind htpasswd, `--src-creds` pulls back
/// the same index, and without credentials (or with a wrong password) the push is refused.
#[test]
fn htpasswd_skopeo_copy_with_credentials_pushes_and_without_is_refused() {
    if !skopeo_installed() {
        return;
    }
    let Some(server) = Server::start(&Storage::FilesystemWithHtpasswd) else {
        return;
    };
    let layout = write_image();
    let authfile = tempfile::tempdir().expect("tempdir");
    // An empty auth file of its own, so that no stored login of this machine is used.
    let authfile = authfile.path().join("auth.json");
    std::fs::write(&authfile, "{}").expect("write auth.json");
    let authfile = authfile.to_str().expect("utf-8");
    let creds = format!("{USER}:{PASSWORD}");
    for refused in [None, Some(format!("{USER}:wrong"))] {
        let mut args = vec![
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--authfile",
            authfile,
        ];
        if let Some(creds) = &refused {
            args.extend(["--dest-creds", creds]);
        }
        let image = server.image();
        let reference = layout.reference();
        args.extend([reference.as_str(), image.as_str()]);
        let output = run_skopeo(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "pushed with {refused:?}");
        assert!(
            stderr.contains("unauthorized") || stderr.contains("401"),
            "{refused:?}: {stderr}"
        );
    }
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--authfile",
        authfile,
        "--dest-creds",
        &creds,
        &layout.reference(),
        &server.image(),
    ]);
    let back = tempfile::tempdir().expect("tempdir");
    let back_path = back.path().join("layout");
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--authfile",
        authfile,
        "--src-creds",
        &creds,
        &server.image(),
        &format!("oci:{}:{TAG}", back_path.display()),
    ]);
    assert_eq!(blobs_of(layout.path()), blobs_of(&back_path));
}

/// `skopeo login` stores the credentials (a wrong password is refused at login), and later
/// commands use them: a push, then a tag listing.
#[test]
fn htpasswd_skopeo_login_then_push_and_list_with_the_stored_credentials() {
    if !skopeo_installed() {
        return;
    }
    let Some(server) = Server::start(&Storage::FilesystemWithHtpasswd) else {
        return;
    };
    login_then_push_and_list(&server);
}

/// `skopeo login` with a wrong password fails and with the right one succeeds; a push and a
/// tag listing then use the stored credentials.
fn login_then_push_and_list(server: &Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let authfile = dir.path().join("auth.json");
    let authfile = authfile.to_str().expect("utf-8");
    let login = |password: &str| {
        run_skopeo(&[
            "login",
            "--tls-verify=false",
            "--authfile",
            authfile,
            "--username",
            USER,
            "--password",
            password,
            &server.host,
        ])
    };
    let wrong = login("wrong");
    assert!(
        !wrong.status.success(),
        "login with a wrong password succeeded"
    );
    let right = login(PASSWORD);
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    let layout = write_image();
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--authfile",
        authfile,
        &layout.reference(),
        &server.image(),
    ]);
    let output = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        "--authfile",
        authfile,
        &format!("docker://{}/{REPO}", server.host),
    ]);
    let listed: Value = serde_json::from_slice(&output.stdout).expect("list-tags prints JSON");
    assert_eq!(listed["Tags"], json!([TAG]), "{listed}");
}

// ---------------------------------------------------------------------------------------------
// Token auth: a real client fetching tokens from a token server

/// A user that may only pull: its token never grants the push.
const READER: &str = "skopeo-reader";

/// A token server with [`USER`] (pull and push under `test/`) and [`READER`] (pull only), both
/// with [`PASSWORD`], and a registry trusting it.
fn token_server_and_registry() -> Option<(TokenIssuer, Server)> {
    let issuer = TokenIssuer::start(IssuerConfig {
        users: vec![
            User::new(USER, PASSWORD, &["repository:test/*:pull,push"]),
            User::new(READER, PASSWORD, &["repository:test/*:pull"]),
        ],
        ..IssuerConfig::default()
    });
    let server = Server::start(&Storage::FilesystemWithToken(TokenServer::of(&issuer)))?;
    Some((issuer, server))
}

/// An empty auth file of its own, so that no stored login of this machine is used.
fn empty_authfile(dir: &TempDir) -> String {
    let authfile = dir.path().join("auth.json");
    std::fs::write(&authfile, "{}").expect("write auth.json");
    authfile.to_str().expect("utf-8").to_owned()
}

/// `skopeo copy --dest-creds` pushes through tokens the token server issues for
/// `repository:test/multi:pull,push`, and `--src-creds` pulls the same blobs back; without
/// credentials, with a wrong password, or as a user whose token grants only pull, the push is
/// refused.
#[test]
fn token_skopeo_copy_with_credentials_pushes_and_without_is_refused() {
    if !skopeo_installed() {
        return;
    }
    let Some((issuer, server)) = token_server_and_registry() else {
        return;
    };
    let layout = write_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let authfile = empty_authfile(&dir);
    let reader = format!("{READER}:{PASSWORD}");
    let wrong = format!("{USER}:wrong");
    for refused in [None, Some(wrong.as_str()), Some(reader.as_str())] {
        let mut args = vec![
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--authfile",
            &authfile,
        ];
        if let Some(creds) = refused {
            args.extend(["--dest-creds", creds]);
        }
        let image = server.image();
        let reference = layout.reference();
        args.extend([reference.as_str(), image.as_str()]);
        let output = run_skopeo(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "pushed with {refused:?}");
        assert!(
            stderr.contains("unauthorized") || stderr.contains("401"),
            "{refused:?}: {stderr}"
        );
    }
    let creds = format!("{USER}:{PASSWORD}");
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--authfile",
        &authfile,
        "--dest-creds",
        &creds,
        &layout.reference(),
        &server.image(),
    ]);
    let push_scope = format!("repository:{REPO}:pull,push");
    assert!(
        issuer
            .requests()
            .iter()
            .any(|r| r.user.as_deref() == Some(USER)
                && r.status == 200
                && r.scopes.contains(&push_scope)),
        "skopeo never got a {push_scope} token: {:?}",
        issuer.requests()
    );
    let back = tempfile::tempdir().expect("tempdir");
    let back_path = back.path().join("layout");
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--authfile",
        &authfile,
        "--src-creds",
        &reader,
        &server.image(),
        &format!("oci:{}:{TAG}", back_path.display()),
    ]);
    assert_eq!(blobs_of(layout.path()), blobs_of(&back_path));
}

/// `skopeo login` gets a token from the realm (a wrong password is refused there), and later
/// commands use the stored credentials: a push, then a tag listing.
#[test]
fn token_skopeo_login_then_push_and_list_with_the_stored_credentials() {
    if !skopeo_installed() {
        return;
    }
    let Some((_issuer, server)) = token_server_and_registry() else {
        return;
    };
    login_then_push_and_list(&server);
}
