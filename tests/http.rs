//! The reference server over HTTP, black-box: every OCI Distribution endpoint and every error
//! path, with the status codes and headers the spec (and docker/podman) expect.
//!
//! Each test starts the built `layerstore` binary on an ephemeral port over a fresh
//! filesystem root, reads the bound address from its stdout, and kills it when the test ends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

mod common;
use common::server::{Running, layerstore, spawn_server};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const SBOM: &str = "application/vnd.example.sbom.v1";
const SIGNATURE: &str = "application/vnd.example.signature.v1";

// ---------------------------------------------------------------------------------------------
// Harness

/// A running `layerstore serve` (killed on drop) and an HTTP client for it.
struct Server {
    _running: Running,
    /// `127.0.0.1:PORT`
    addr: String,
    client: reqwest::Client,
}

impl Server {
    /// `serve --addr 127.0.0.1:0 --root <fresh dir>`.
    fn start() -> Self {
        Self::over(Running::start())
    }

    /// `serve --config <file>`, the file written by `write_config` into the server's dir.
    fn start_with_config(write_config: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = write_config(dir.path());
        let file = dir.path().join("config.yml");
        std::fs::write(&file, yaml).expect("write config");
        let file = file.to_str().expect("utf-8 path").to_owned();
        Self::over(Running::start_with(dir, &["--config", &file]))
    }

    fn over(running: Running) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        Self {
            addr: running.addr.clone(),
            _running: running,
            client,
        }
    }

    /// An absolute URL for a path (or a `Location` the server returned).
    fn url(&self, path_or_location: &str) -> String {
        if path_or_location.starts_with("http://") {
            path_or_location.to_owned()
        } else {
            format!("http://{}{path_or_location}", self.addr)
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    async fn send(&self, method: Method, path: &str) -> Response {
        self.request(method, path).send().await.expect("request")
    }

    async fn get(&self, path: &str) -> Response {
        self.send(Method::GET, path).await
    }

    async fn head(&self, path: &str) -> Response {
        self.send(Method::HEAD, path).await
    }

    async fn delete(&self, path: &str) -> Response {
        self.send(Method::DELETE, path).await
    }

    /// Pushes a blob in one request (`POST ?digest=`) and returns its digest.
    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = digest_of(bytes);
        let response = self
            .request(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            )
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("push blob");
        assert_eq!(response.status(), StatusCode::CREATED, "pushing a blob");
        digest
    }

    /// Starts an upload session and returns its `Location`.
    async fn start_upload(&self, repo: &str) -> String {
        let response = self
            .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .header(header::CONTENT_LENGTH, "0")
            .send()
            .await
            .expect("start upload");
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "starting an upload"
        );
        header_of(&response, "location").to_owned()
    }

    /// A podman-style chunk: `Content-Length` and `Content-Range: start-end`.
    async fn patch_chunk(&self, location: &str, start: u64, bytes: &[u8]) -> Response {
        let end = start + bytes.len() as u64 - 1;
        self.patch_with_range(location, &format!("{start}-{end}"), bytes)
            .await
    }

    async fn patch_with_range(&self, location: &str, range: &str, bytes: &[u8]) -> Response {
        self.request(Method::PATCH, location)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_RANGE, range)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("patch")
    }

    /// `PUT <location>?digest=` with no body.
    async fn commit(&self, location: &str, digest: &str) -> Response {
        self.request(
            Method::PUT,
            &with_query(location, &format!("digest={digest}")),
        )
        .send()
        .await
        .expect("commit upload")
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header(header::CONTENT_TYPE, media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("put manifest")
    }

    /// Pushes the blobs of an OCI image and its manifest under `reference`; returns the
    /// manifest's exact bytes and digest.
    async fn push_image(&self, repo: &str, reference: &str, seed: &str) -> (Vec<u8>, String) {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
        let layer = format!("layer bytes of {seed}");
        self.push_blob(repo, config.as_bytes()).await;
        self.push_blob(repo, layer.as_bytes()).await;
        let manifest = oci_manifest(config.as_bytes(), &[layer.as_bytes()], json!({}));
        let response = self
            .put_manifest(repo, reference, OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "pushing an image");
        let digest = digest_of(&manifest);
        (manifest, digest)
    }

    /// Pushes an artifact manifest whose `subject` is `subject` (an OCI manifest of `size`
    /// bytes); returns its digest and the response to the push.
    async fn push_referrer(
        &self,
        repo: &str,
        subject: (&str, usize),
        extra: Value,
    ) -> (String, Response) {
        self.push_blob(repo, b"{}").await;
        let mut fields = json!({
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.0, "size": subject.1},
        });
        merge(&mut fields, extra);
        let manifest = oci_manifest_with_config(OCI_EMPTY, b"{}", &[], fields);
        let digest = digest_of(&manifest);
        let response = self
            .put_manifest(repo, &digest, OCI_MANIFEST, &manifest)
            .await;
        (digest, response)
    }
}

fn digest_of(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn with_query(location: &str, query: &str) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!("{location}{separator}{query}")
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

/// An OCI image manifest, pretty-printed with a trailing newline so that "the exact bytes"
/// differ from any re-serialization the server might do.
fn oci_manifest(config: &[u8], layers: &[&[u8]], extra: Value) -> Vec<u8> {
    oci_manifest_with_config(OCI_CONFIG, config, layers, extra)
}

fn oci_manifest_with_config(
    config_type: &str,
    config: &[u8],
    layers: &[&[u8]],
    extra: Value,
) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|l| json!({"mediaType": OCI_LAYER, "digest": digest_of(l), "size": l.len()}))
        .collect();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": digest_of(config), "size": config.len()},
        "layers": layers,
    });
    merge(&mut manifest, extra);
    let mut bytes = serde_json::to_vec_pretty(&manifest).expect("json");
    bytes.push(b'\n');
    bytes
}

fn header_of<'a>(response: &'a Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| {
            panic!(
                "{} {}: no {name} header in {:?}",
                response.status(),
                response.url(),
                response.headers()
            )
        })
        .to_str()
        .expect("ascii header")
}

fn has_header(response: &Response, name: &str) -> bool {
    response.headers().contains_key(name)
}

async fn body_of(response: Response) -> Vec<u8> {
    response.bytes().await.expect("body").to_vec()
}

async fn json_of(response: Response) -> Value {
    let body = body_of(response).await;
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

/// Checks the status and that the body is an OCI error document whose first error has
/// `code`; returns the message.
async fn assert_error(response: Response, status: StatusCode, code: &str) -> String {
    let context = format!("{} {}", response.status(), response.url());
    assert_eq!(response.status(), status, "{context}");
    let content_type = header_of(&response, "content-type").to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{context}: error Content-Type {content_type}"
    );
    let body = json_of(response).await;
    let error = &body["errors"][0];
    assert_eq!(error["code"], code, "{context}: {body}");
    let message = error["message"].as_str();
    assert!(
        message.is_some_and(|m| !m.is_empty()),
        "{context}: no message in {body}"
    );
    message.unwrap_or_default().to_owned()
}

/// The upload id from an upload `Location`.
fn upload_id(location: &str) -> &str {
    let path = location.split('?').next().unwrap_or(location);
    path.rsplit('/').next().unwrap_or(path)
}

/// A raw HTTP/1.1 exchange, for requests an HTTP client would rewrite (such as `..` segments,
/// which URL parsers remove). Returns the status and the body.
fn raw_request(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let response = raw_exchange(addr, &request, false);
    (response.status, response.body)
}

/// A response read off a raw connection.
struct RawResponse {
    status: u16,
    /// The status line and headers, as sent.
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    /// Checks the status and that the body is an OCI error document whose first error has
    /// `code`.
    #[track_caller]
    fn assert_error(&self, status: u16, code: &str, context: &str) {
        let body = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{context}: {}{body}", self.head);
        let json: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{context}: not JSON ({e}): {}{body}", self.head));
        assert_eq!(json["errors"][0]["code"], code, "{context}: {json}");
        assert!(
            json["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{context}: no message in {json}"
        );
    }
}

/// Writes `request` as it is, byte for byte (broken framing included) and reads the response
/// until the server closes the connection. With `half_close`, the client then shuts its
/// sending side, as a client does whose body ends before what it announced.
fn raw_exchange(addr: &str, request: &[u8], half_close: bool) -> RawResponse {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("write request");
    if half_close {
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shut the sending side");
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let (head, body) = match text.find("\r\n\r\n") {
        Some(i) => (text[..i + 2].to_owned(), response[i + 4..].to_vec()),
        None => (text.into_owned(), Vec::new()),
    };
    RawResponse { status, head, body }
}

// ---------------------------------------------------------------------------------------------
// Base and unknown paths

#[tokio::test]
async fn base_endpoint_is_200_with_the_api_version_header() {
    let srv = Server::start();
    for method in [Method::GET, Method::HEAD] {
        let response = srv.send(method.clone(), "/v2/").await;
        assert_eq!(response.status(), StatusCode::OK, "{method} /v2/");
        assert_eq!(
            header_of(&response, "docker-distribution-api-version"),
            "registry/2.0"
        );
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let srv = Server::start();
    for path in [
        "/",
        "/v1/",
        "/v3/",
        "/favicon.ico",
        "/v2/library/hello/nothing",
        "/v2/library/hello/blobs",
        "/v2/library/hello/tags",
    ] {
        let response = srv.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "GET {path}");
    }
}

#[tokio::test]
async fn method_not_allowed_on_an_endpoint_is_405_unsupported_naming_the_allowed_ones() {
    let srv = Server::start();
    let digest = srv.push_blob("library/hello", b"data").await;
    let upload = srv.start_upload("library/hello").await;
    for (method, path, allow) in [
        (
            Method::POST,
            "/v2/library/hello/manifests/latest".to_owned(),
            "GET, HEAD, PUT, DELETE",
        ),
        (
            Method::PUT,
            format!("/v2/library/hello/blobs/{digest}"),
            "GET, HEAD, DELETE",
        ),
        (
            Method::DELETE,
            "/v2/library/hello/tags/list".to_owned(),
            "GET",
        ),
        (Method::PUT, "/v2/_catalog".to_owned(), "GET"),
        (Method::POST, "/v2/".to_owned(), "GET, HEAD"),
        (Method::POST, upload, "GET, PATCH, PUT, DELETE"),
        (
            Method::GET,
            "/v2/library/hello/blobs/uploads/".to_owned(),
            "POST",
        ),
    ] {
        let response = srv.send(method.clone(), &path).await;
        let allowed = response.headers().get("allow").cloned();
        assert_error(response, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
        assert_eq!(
            allowed.as_ref().and_then(|v| v.to_str().ok()),
            Some(allow),
            "Allow of {method} {path}"
        );
    }
}

/// docker opens a TLS handshake on the plain-HTTP port before every push or pull and falls
/// back to HTTP when it fails: an immediate `400` lets it fall back at once, while a server
/// waiting for a line ending stalls each push for seconds.
#[tokio::test]
async fn tls_client_hello_on_the_plain_port_gets_an_http_400_promptly() {
    let srv = Server::start();
    let mut stream = TcpStream::connect(&srv.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    // A TLS 1.2 record header and the start of a ClientHello: no CR or LF anywhere.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
    ];
    hello.extend((0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(1)));
    hello.extend([0x00, 0x00, 0x04, 0x13, 0x01, 0x13, 0x02, 0x01, 0x00]);
    let started = Instant::now();
    stream.write_all(&hello).expect("write ClientHello");
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while answer.len() < 12 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no answer to a ClientHello after {:?}: {e}",
                started.elapsed()
            ),
        }
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "answer to a ClientHello: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// Blobs

const TWENTY: &[u8] = b"0123456789abcdefghij";

#[tokio::test]
async fn blob_head_reports_digest_and_length_without_a_body() {
    let srv = Server::start();
    let digest = srv.push_blob("library/hello", TWENTY).await;
    let response = srv.head(&format!("/v2/library/hello/blobs/{digest}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_of(&response, "docker-content-digest"), digest);
    assert_eq!(header_of(&response, "content-length"), "20");
    assert!(body_of(response).await.is_empty());
}

#[tokio::test]
async fn blob_get_returns_the_bytes_with_digest_and_length() {
    let srv = Server::start();
    let digest = srv.push_blob("library/hello", TWENTY).await;
    let response = srv.get(&format!("/v2/library/hello/blobs/{digest}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_of(&response, "docker-content-digest"), digest);
    assert_eq!(header_of(&response, "content-length"), "20");
    assert_eq!(body_of(response).await, TWENTY);
}

#[tokio::test]
async fn blob_get_of_a_large_blob_streams_every_byte() {
    let srv = Server::start();
    let blob: Vec<u8> = (0..5 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
    let digest = srv.push_blob("library/big", &blob).await;
    let response = srv.get(&format!("/v2/library/big/blobs/{digest}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_of(&response, "content-length"),
        blob.len().to_string()
    );
    assert!(body_of(response).await == blob);
}

#[tokio::test]
async fn blob_get_with_a_range_is_206_with_content_range() {
    let srv = Server::start();
    let digest = srv.push_blob("library/hello", TWENTY).await;
    let response = srv
        .request(Method::GET, &format!("/v2/library/hello/blobs/{digest}"))
        .header(header::RANGE, "bytes=5-9")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header_of(&response, "content-range"), "bytes 5-9/20");
    assert_eq!(header_of(&response, "content-length"), "5");
    assert_eq!(body_of(response).await, b"56789");
}

#[tokio::test]
async fn blob_get_with_an_open_range_returns_the_rest() {
    let srv = Server::start();
    let digest = srv.push_blob("library/hello", TWENTY).await;
    let response = srv
        .request(Method::GET, &format!("/v2/library/hello/blobs/{digest}"))
        .header(header::RANGE, "bytes=15-")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header_of(&response, "content-range"), "bytes 15-19/20");
    assert_eq!(body_of(response).await, b"fghij");
}

#[tokio::test]
async fn blob_get_with_a_suffix_range_returns_the_tail() {
    let srv = Server::start();
    let digest = srv.push_blob("library/hello", TWENTY).await;
    let response = srv
        .request(Method::GET, &format!("/v2/library/hello/blobs/{digest}"))
        .header(header::RANGE, "bytes=-4")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header_of(&response, "content-range"), "bytes 16-19/20");
    assert_eq!(header_of(&response, "content-length"), "4");
    assert_eq!(body_of(response).await, b"ghij");
}

#[tokio::test]
async fn blob_get_with_an_unsatisfiable_range_is_416_with_the_size() {
    let srv = Server::start();
    let digest = srv.push_blob("library/hello", TWENTY).await;
    for range in ["bytes=20-30", "bytes=100-", "bytes=-0"] {
        let response = srv
            .request(Method::GET, &format!("/v2/library/hello/blobs/{digest}"))
            .header(header::RANGE, range)
            .send()
            .await
            .expect("get");
        assert_eq!(
            response.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}"
        );
        assert_eq!(
            header_of(&response, "content-range"),
            "bytes */20",
            "{range}"
        );
    }
}

#[tokio::test]
async fn unknown_blob_is_404_blob_unknown() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"something else").await;
    let path = format!("/v2/library/hello/blobs/{}", digest_of(b"never pushed"));
    assert_error(srv.get(&path).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(srv.head(&path).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn blob_of_another_repository_is_404_blob_unknown() {
    let srv = Server::start();
    let digest = srv.push_blob("library/hello", TWENTY).await;
    let path = format!("/v2/library/other/blobs/{digest}");
    assert_error(srv.get(&path).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(srv.head(&path).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn malformed_blob_digest_is_400_digest_invalid() {
    let srv = Server::start();
    for digest in [
        "sha256:abc",
        "sha256:ZZ5d6b07f0ab7c8f1b1f0f0b4ab1c2b8dd4e7f83b4aef7c3d6a1f0e4b3c2a1f0",
        "nonsense",
    ] {
        let response = srv.get(&format!("/v2/library/hello/blobs/{digest}")).await;
        assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    }
}

#[tokio::test]
async fn blob_delete_is_202_and_the_blob_is_then_404() {
    let srv = Server::start();
    let digest = srv.push_blob("library/hello", TWENTY).await;
    let path = format!("/v2/library/hello/blobs/{digest}");
    let response = srv.delete(&path).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_error(srv.get(&path).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(srv.head(&path).await.status(), StatusCode::NOT_FOUND);
    assert_error(
        srv.delete(&path).await,
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Uploads: starting

#[tokio::test]
async fn upload_post_is_202_with_location_empty_range_and_uuid() {
    let srv = Server::start();
    let response = srv
        .request(Method::POST, "/v2/library/hello/blobs/uploads/")
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = header_of(&response, "location");
    assert!(
        location.contains("/v2/library/hello/blobs/uploads/"),
        "{location}"
    );
    assert_eq!(header_of(&response, "range"), "0-0");
    let uuid = header_of(&response, "docker-upload-uuid");
    assert!(!uuid.is_empty());
    assert_eq!(upload_id(location), uuid);
}

#[tokio::test]
async fn upload_post_without_a_trailing_slash_also_starts_an_upload() {
    let srv = Server::start();
    let response = srv
        .request(Method::POST, "/v2/library/hello/blobs/uploads")
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(has_header(&response, "location"));
}

#[tokio::test]
async fn upload_post_with_digest_stores_the_blob_in_one_request() {
    let srv = Server::start();
    let digest = digest_of(TWENTY);
    let response = srv
        .request(
            Method::POST,
            &format!("/v2/library/hello/blobs/uploads/?digest={digest}"),
        )
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(TWENTY.to_vec())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header_of(&response, "docker-content-digest"), digest);
    let location = header_of(&response, "location").to_owned();
    let pulled = srv.get(&location).await;
    assert_eq!(pulled.status(), StatusCode::OK, "GET {location}");
    assert_eq!(body_of(pulled).await, TWENTY);
}

#[tokio::test]
async fn upload_post_with_a_digest_that_does_not_match_is_400_digest_invalid() {
    let srv = Server::start();
    let claimed = digest_of(b"other bytes");
    let response = srv
        .request(
            Method::POST,
            &format!("/v2/library/hello/blobs/uploads/?digest={claimed}"),
        )
        .body(TWENTY.to_vec())
        .send()
        .await
        .expect("post");
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    for digest in [claimed, digest_of(TWENTY)] {
        let response = srv.head(&format!("/v2/library/hello/blobs/{digest}")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{digest}");
    }
}

#[tokio::test]
async fn mount_from_a_repository_holding_the_blob_is_201() {
    let srv = Server::start();
    let digest = srv.push_blob("library/source", TWENTY).await;
    let response = srv
        .request(
            Method::POST,
            &format!("/v2/library/target/blobs/uploads/?mount={digest}&from=library/source"),
        )
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .expect("mount");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header_of(&response, "docker-content-digest"), digest);
    let location = header_of(&response, "location").to_owned();
    assert!(location.ends_with(&format!("/v2/library/target/blobs/{digest}")));
    let pulled = srv.get(&location).await;
    assert_eq!(pulled.status(), StatusCode::OK);
    assert_eq!(body_of(pulled).await, TWENTY);
}

#[tokio::test]
async fn mount_from_a_repository_without_the_blob_starts_an_upload_instead() {
    let srv = Server::start();
    // The store holds the bytes, but only through a third repository.
    let digest = srv.push_blob("library/elsewhere", TWENTY).await;
    srv.push_blob("library/source", b"unrelated").await;
    let response = srv
        .request(
            Method::POST,
            &format!("/v2/library/target/blobs/uploads/?mount={digest}&from=library/source"),
        )
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .expect("mount");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header_of(&response, "range"), "0-0");
    let location = header_of(&response, "location").to_owned();
    assert_eq!(
        srv.get(&location).await.status(),
        StatusCode::NO_CONTENT,
        "the new upload's status"
    );
    let target = format!("/v2/library/target/blobs/{digest}");
    assert_eq!(srv.head(&target).await.status(), StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------
// Uploads: chunks

/// docker: one PATCH with `Transfer-Encoding: chunked` and neither Content-Length nor
/// Content-Range, then `PUT ?digest=` with an empty body.
#[tokio::test]
async fn patch_streamed_without_content_range_appends_the_whole_body() {
    let srv = Server::start();
    let blob: Vec<u8> = (0..3 * 1024 * 1024 + 11).map(|i| (i % 253) as u8).collect();
    let location = srv.start_upload("library/hello").await;
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        blob.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(pieces));
    let response = srv
        .request(Method::PATCH, &location)
        .body(body)
        .send()
        .await
        .expect("patch");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        header_of(&response, "range"),
        format!("0-{}", blob.len() - 1)
    );
    let location = header_of(&response, "location").to_owned();
    let digest = digest_of(&blob);
    assert_eq!(
        srv.commit(&location, &digest).await.status(),
        StatusCode::CREATED
    );
    let pulled = srv.get(&format!("/v2/library/hello/blobs/{digest}")).await;
    assert!(body_of(pulled).await == blob);
}

/// podman: PATCH chunks with Content-Length and Content-Range, in order.
#[tokio::test]
async fn patch_chunks_with_content_range_append_in_order() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    let response = srv.patch_chunk(&location, 0, &TWENTY[..8]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header_of(&response, "range"), "0-7");
    let location = header_of(&response, "location").to_owned();
    let response = srv.patch_chunk(&location, 8, &TWENTY[8..]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(header_of(&response, "range"), "0-19");
    let location = header_of(&response, "location").to_owned();
    let digest = digest_of(TWENTY);
    assert_eq!(
        srv.commit(&location, &digest).await.status(),
        StatusCode::CREATED
    );
    let pulled = srv.get(&format!("/v2/library/hello/blobs/{digest}")).await;
    assert_eq!(body_of(pulled).await, TWENTY);
}

/// Checks a refused chunk: 416 with the current `Range`, and the session unchanged.
async fn assert_chunk_refused(srv: &Server, location: &str, response: Response, range: &str) {
    let context = format!("{} {}", response.status(), response.url());
    assert_eq!(
        response.status(),
        StatusCode::RANGE_NOT_SATISFIABLE,
        "{context}"
    );
    assert_eq!(header_of(&response, "range"), range, "{context}");
    let status = srv.get(location).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_of(&status, "range"), range, "status after {context}");
}

#[tokio::test]
async fn patch_out_of_order_is_416_with_the_current_range() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    // The second chunk first.
    let response = srv.patch_chunk(&location, 10, &TWENTY[10..]).await;
    assert_chunk_refused(&srv, &location, response, "0-0").await;
}

#[tokio::test]
async fn patch_overlapping_the_previous_chunk_is_416_with_the_current_range() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    let response = srv.patch_chunk(&location, 0, &TWENTY[..10]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = srv.patch_chunk(&location, 5, &TWENTY[5..15]).await;
    assert_chunk_refused(&srv, &location, response, "0-9").await;
    let response = srv.patch_chunk(&location, 0, &TWENTY[..10]).await;
    assert_chunk_refused(&srv, &location, response, "0-9").await;
}

#[tokio::test]
async fn patch_leaving_a_gap_is_416_with_the_current_range() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    let response = srv.patch_chunk(&location, 0, &TWENTY[..10]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = srv.patch_chunk(&location, 12, &TWENTY[12..]).await;
    assert_chunk_refused(&srv, &location, response, "0-9").await;
}

#[tokio::test]
async fn patch_with_a_malformed_content_range_is_416_with_the_current_range() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    let response = srv.patch_chunk(&location, 0, &TWENTY[..10]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    for range in [
        "garbage",
        "10",
        "10-",
        "-19",
        "19-10",
        "ten-nineteen",
        "10-12",
        "0-18446744073709551615",
    ] {
        // "10-12" names 3 bytes for a 10-byte body; the last one a length past u64.
        let response = srv.patch_with_range(&location, range, &TWENTY[10..]).await;
        assert_chunk_refused(&srv, &location, response, "0-9").await;
    }
}

/// `GET <location>`: 204 with `range`, and the same `Location` and upload id.
async fn assert_upload_status(srv: &Server, location: &str, range: &str) {
    let response = srv.get(location).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT, "at {range}");
    assert_eq!(header_of(&response, "range"), range);
    assert_eq!(header_of(&response, "location"), location);
    assert_eq!(
        header_of(&response, "docker-upload-uuid"),
        upload_id(location)
    );
}

#[tokio::test]
async fn upload_status_is_204_with_range_at_the_same_location_for_the_whole_upload() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    assert_upload_status(&srv, &location, "0-0").await;
    let response = srv.patch_chunk(&location, 0, &TWENTY[..8]).await;
    assert_eq!(header_of(&response, "location"), location);
    assert_upload_status(&srv, &location, "0-7").await;
    let response = srv.patch_chunk(&location, 8, &TWENTY[8..]).await;
    assert_eq!(header_of(&response, "location"), location);
    assert_upload_status(&srv, &location, "0-19").await;
    assert_eq!(
        srv.commit(&location, &digest_of(TWENTY)).await.status(),
        StatusCode::CREATED
    );
    let response = srv.get(&location).await;
    assert_error(response, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

// ---------------------------------------------------------------------------------------------
// Uploads: closing

#[tokio::test]
async fn put_with_digest_and_no_body_commits_the_patched_bytes() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    srv.patch_chunk(&location, 0, TWENTY).await;
    let digest = digest_of(TWENTY);
    let response = srv.commit(&location, &digest).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header_of(&response, "docker-content-digest"), digest);
    let blob = header_of(&response, "location").to_owned();
    assert!(blob.ends_with(&format!("/v2/library/hello/blobs/{digest}")));
    assert_eq!(body_of(srv.get(&blob).await).await, TWENTY);
}

#[tokio::test]
async fn put_with_the_final_chunk_commits_every_byte() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    let response = srv.patch_chunk(&location, 0, &TWENTY[..12]).await;
    let location = header_of(&response, "location").to_owned();
    let digest = digest_of(TWENTY);
    let response = srv
        .request(
            Method::PUT,
            &with_query(&location, &format!("digest={digest}")),
        )
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_RANGE, "12-19")
        .body(TWENTY[12..].to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::CREATED);
    let blob = header_of(&response, "location").to_owned();
    assert_eq!(body_of(srv.get(&blob).await).await, TWENTY);
}

#[tokio::test]
async fn put_with_the_whole_blob_after_post_commits_it() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    let digest = digest_of(TWENTY);
    let response = srv
        .request(
            Method::PUT,
            &with_query(&location, &format!("digest={digest}")),
        )
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(TWENTY.to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::CREATED);
    let blob = header_of(&response, "location").to_owned();
    assert_eq!(body_of(srv.get(&blob).await).await, TWENTY);
}

#[tokio::test]
async fn put_with_a_wrong_digest_is_400_digest_invalid_and_the_upload_stays_resumable() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    srv.patch_chunk(&location, 0, &TWENTY[..10]).await;
    let wrong = digest_of(&TWENTY[..10].repeat(2));
    let response = srv.commit(&location, &wrong).await;
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let head = srv.head(&format!("/v2/library/hello/blobs/{wrong}")).await;
    assert_eq!(head.status(), StatusCode::NOT_FOUND);

    let status = srv.get(&location).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_of(&status, "range"), "0-9");
    let response = srv.patch_chunk(&location, 10, &TWENTY[10..]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = srv.commit(&location, &digest_of(TWENTY)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn put_with_a_malformed_or_missing_digest_is_400_digest_invalid() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    srv.patch_chunk(&location, 0, TWENTY).await;
    let response = srv.commit(&location, "sha256:1234").await;
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let response = srv.send(Method::PUT, &location).await;
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let status = srv.get(&location).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_of(&status, "range"), "0-19");
}

#[tokio::test]
async fn upload_delete_cancels_with_204_and_the_upload_is_then_404() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    srv.patch_chunk(&location, 0, TWENTY).await;
    let response = srv.delete(&location).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let gone = StatusCode::NOT_FOUND;
    assert_error(srv.get(&location).await, gone, "BLOB_UPLOAD_UNKNOWN").await;
    let response = srv.patch_chunk(&location, 20, b"more").await;
    assert_error(response, gone, "BLOB_UPLOAD_UNKNOWN").await;
    let response = srv.commit(&location, &digest_of(TWENTY)).await;
    assert_error(response, gone, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(srv.delete(&location).await, gone, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn invalid_or_unknown_upload_id_is_404_blob_upload_unknown() {
    let srv = Server::start();
    srv.start_upload("library/hello").await;
    for id in [
        "not-an-upload",
        "0123456789abcdef0123456789abcdef",
        "0123456789ABCDEF0123456789ABCDEF",
        "%2e%2e%2fetc",
    ] {
        let location = format!("/v2/library/hello/blobs/uploads/{id}");
        let unknown = StatusCode::NOT_FOUND;
        assert_error(srv.get(&location).await, unknown, "BLOB_UPLOAD_UNKNOWN").await;
        let response = srv.patch_chunk(&location, 0, TWENTY).await;
        assert_error(response, unknown, "BLOB_UPLOAD_UNKNOWN").await;
        let response = srv.commit(&location, &digest_of(TWENTY)).await;
        assert_error(response, unknown, "BLOB_UPLOAD_UNKNOWN").await;
        assert_error(srv.delete(&location).await, unknown, "BLOB_UPLOAD_UNKNOWN").await;
    }
}

#[tokio::test]
async fn upload_is_unknown_through_another_repository() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    let id = upload_id(&location);
    let elsewhere = format!("/v2/library/other/blobs/uploads/{id}");
    let response = srv.get(&elsewhere).await;
    assert_error(response, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let response = srv.patch_chunk(&elsewhere, 0, TWENTY).await;
    assert_error(response, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(srv.get(&location).await.status(), StatusCode::NO_CONTENT);
}

// ---------------------------------------------------------------------------------------------
// Uploads: bodies broken in transit (the client's fault: a 400, never a 500)

/// A request body broken in transit: what is wrong, the header that frames it, its bytes, and
/// whether the client then stops sending (a body shorter than it announced).
struct BrokenBody {
    what: &'static str,
    framing: &'static str,
    bytes: &'static [u8],
    half_close: bool,
}

const CHUNKED: &str = "Transfer-Encoding: chunked";

/// Each way a client can break a body that hyper rejects while the handler reads it. Every
/// body would carry `hello` if it were read as far as it goes.
const BROKEN_BODIES: &[BrokenBody] = &[
    BrokenBody {
        what: "a chunk size that is not hex",
        framing: CHUNKED,
        bytes: b"zz\r\nhello\r\n0\r\n\r\n",
        half_close: false,
    },
    BrokenBody {
        what: "a chunk size that overflows",
        framing: CHUNKED,
        bytes: b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        half_close: false,
    },
    BrokenBody {
        what: "a malformed chunk after a good one",
        framing: CHUNKED,
        bytes: b"5\r\nhello\r\nzz\r\n\r\n",
        half_close: false,
    },
    BrokenBody {
        what: "a chunked body that ends before its last chunk",
        framing: CHUNKED,
        bytes: b"5\r\nhello\r\n",
        half_close: true,
    },
    BrokenBody {
        what: "a Content-Length larger than the body",
        framing: "Content-Length: 100",
        bytes: b"hello",
        half_close: true,
    },
];

/// Sends `method path` with `body` exactly as framed, over a raw connection.
fn send_broken(addr: &str, method: &str, path: &str, body: &BrokenBody) -> RawResponse {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\n{}\r\n\r\n",
        body.framing
    )
    .into_bytes();
    request.extend_from_slice(body.bytes);
    raw_exchange(addr, &request, body.half_close)
}

#[tokio::test]
async fn a_patch_with_a_broken_body_is_refused_with_400_and_changes_nothing() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    let response = srv.patch_chunk(&location, 0, &TWENTY[..10]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    for body in BROKEN_BODIES {
        let response = send_broken(&srv.addr, "PATCH", &location, body);
        response.assert_error(400, "BLOB_UPLOAD_INVALID", body.what);
        assert_upload_status(&srv, &location, "0-9").await;
    }
    // Still resumable where it was.
    let response = srv.patch_chunk(&location, 10, &TWENTY[10..]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let digest = digest_of(TWENTY);
    assert_eq!(
        srv.commit(&location, &digest).await.status(),
        StatusCode::CREATED
    );
    let pulled = srv.get(&format!("/v2/library/hello/blobs/{digest}")).await;
    assert_eq!(body_of(pulled).await, TWENTY);
}

#[tokio::test]
async fn a_closing_put_with_a_broken_body_is_refused_with_400_and_changes_nothing() {
    let srv = Server::start();
    let location = srv.start_upload("library/hello").await;
    let response = srv.patch_chunk(&location, 0, &TWENTY[..10]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // The digest of what the upload would hold had the broken body been taken as complete.
    let partial = digest_of(&[&TWENTY[..10], b"hello"].concat());
    let put = with_query(&location, &format!("digest={partial}"));
    for body in BROKEN_BODIES {
        let response = send_broken(&srv.addr, "PUT", &put, body);
        response.assert_error(400, "BLOB_UPLOAD_INVALID", body.what);
        assert_upload_status(&srv, &location, "0-9").await;
        let head = srv
            .head(&format!("/v2/library/hello/blobs/{partial}"))
            .await;
        assert_eq!(head.status(), StatusCode::NOT_FOUND, "{}", body.what);
    }
    let digest = digest_of(TWENTY);
    let response = srv
        .request(
            Method::PUT,
            &with_query(&location, &format!("digest={digest}")),
        )
        .header(header::CONTENT_RANGE, "10-19")
        .body(TWENTY[10..].to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::CREATED);
    let pulled = srv.get(&format!("/v2/library/hello/blobs/{digest}")).await;
    assert_eq!(body_of(pulled).await, TWENTY);
}

#[tokio::test]
async fn a_monolithic_post_with_a_broken_body_is_refused_with_400_and_stores_nothing() {
    let srv = Server::start();
    // Taken as complete, each broken body would be exactly `hello`.
    let digest = digest_of(b"hello");
    let post = format!("/v2/library/hello/blobs/uploads/?digest={digest}");
    for body in BROKEN_BODIES {
        let response = send_broken(&srv.addr, "POST", &post, body);
        response.assert_error(400, "BLOB_UPLOAD_INVALID", body.what);
        let head = srv.head(&format!("/v2/library/hello/blobs/{digest}")).await;
        assert_eq!(head.status(), StatusCode::NOT_FOUND, "{}", body.what);
    }
    assert_eq!(srv.push_blob("library/hello", b"hello").await, digest);
}

#[tokio::test]
async fn a_manifest_put_with_a_broken_body_is_refused_with_400_and_stores_nothing() {
    let srv = Server::start();
    for body in BROKEN_BODIES {
        let response = send_broken(&srv.addr, "PUT", "/v2/library/hello/manifests/v1", body);
        response.assert_error(400, "MANIFEST_INVALID", body.what);
        let head = srv.head("/v2/library/hello/manifests/v1").await;
        assert_eq!(head.status(), StatusCode::NOT_FOUND, "{}", body.what);
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests

#[tokio::test]
async fn manifest_put_by_tag_is_201_with_location_and_digest() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"config").await;
    srv.push_blob("library/hello", b"layer").await;
    let manifest = oci_manifest(b"config", &[b"layer"], json!({}));
    let digest = digest_of(&manifest);
    let response = srv
        .put_manifest("library/hello", "v1", OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header_of(&response, "docker-content-digest"), digest);
    let location = header_of(&response, "location").to_owned();
    assert!(location.ends_with(&format!("/v2/library/hello/manifests/{digest}")));
    let pulled = srv.get(&location).await;
    assert_eq!(pulled.status(), StatusCode::OK);
    assert_eq!(body_of(pulled).await, manifest);
}

#[tokio::test]
async fn manifest_put_by_digest_is_201_with_location_and_digest() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"config").await;
    let manifest = oci_manifest(b"config", &[], json!({}));
    let digest = digest_of(&manifest);
    let response = srv
        .put_manifest("library/hello", &digest, OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header_of(&response, "docker-content-digest"), digest);
    let location = header_of(&response, "location");
    assert!(location.ends_with(&format!("/v2/library/hello/manifests/{digest}")));
}

#[tokio::test]
async fn manifest_put_by_a_digest_of_other_bytes_is_400_digest_invalid() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"config").await;
    let manifest = oci_manifest(b"config", &[], json!({}));
    let wrong = digest_of(b"not the manifest");
    let response = srv
        .put_manifest("library/hello", &wrong, OCI_MANIFEST, &manifest)
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let path = format!("/v2/library/hello/manifests/{wrong}");
    assert_eq!(srv.head(&path).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn manifest_put_with_missing_blobs_is_400_manifest_blob_unknown() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"config").await;
    // The layer exists in the store, but not in this repository.
    srv.push_blob("library/other", b"layer").await;
    let manifest = oci_manifest(b"config", &[b"layer", b"never pushed"], json!({}));
    let response = srv
        .put_manifest("library/hello", "v1", OCI_MANIFEST, &manifest)
        .await;
    let message = assert_error(response, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    assert!(message.contains(&digest_of(b"never pushed")), "{message}");
    let response = srv.head("/v2/library/hello/manifests/v1").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn manifest_put_of_an_invalid_document_is_400_manifest_invalid() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"config").await;
    let wrong_version = {
        let mut m: Value =
            serde_json::from_slice(&oci_manifest(b"config", &[], json!({}))).expect("json");
        m["schemaVersion"] = json!(1);
        serde_json::to_vec(&m).expect("json")
    };
    let no_layers =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    for (what, body) in [
        ("not JSON", b"this is not json".to_vec()),
        ("empty", Vec::new()),
        ("schemaVersion 1", wrong_version),
        ("no config or layers", no_layers.to_vec()),
        (
            "deeply nested",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
    ] {
        let response = srv
            .put_manifest("library/hello", "v1", OCI_MANIFEST, &body)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
        assert_error(response, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    }
    let response = srv.head("/v2/library/hello/manifests/v1").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn manifest_put_with_a_content_type_other_than_its_media_type_is_400_manifest_invalid() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"config").await;
    let manifest = oci_manifest(b"config", &[], json!({}));
    let response = srv
        .put_manifest("library/hello", "v1", DOCKER_MANIFEST, &manifest)
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
}

#[tokio::test]
async fn manifest_of_exactly_4_mib_is_accepted() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"config").await;
    let with_padding = |n: usize| {
        oci_manifest(
            b"config",
            &[],
            json!({"annotations": {"padding": "x".repeat(n)}}),
        )
    };
    let limit = 4 * 1024 * 1024;
    let manifest = with_padding(limit - with_padding(0).len());
    assert_eq!(manifest.len(), limit);
    let response = srv
        .put_manifest("library/hello", "v1", OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = srv.get("/v2/library/hello/manifests/v1").await;
    assert!(body_of(response).await == manifest);
}

#[tokio::test]
async fn manifest_over_4_mib_is_refused_and_not_stored() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"config").await;
    let padding = "x".repeat(4 * 1024 * 1024);
    let manifest = oci_manifest(b"config", &[], json!({"annotations": {"padding": padding}}));
    let response = srv
        .put_manifest("library/hello", "v1", OCI_MANIFEST, &manifest)
        .await;
    // The spec: "If a manifest exceeds this limit, the registry SHOULD respond with 413".
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID").await;
    let response = srv.head("/v2/library/hello/manifests/v1").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn manifest_tag_of_128_characters_is_accepted() {
    let srv = Server::start();
    let tag = format!("v{}", "1".repeat(127));
    let (manifest, _) = srv.push_image("library/hello", &tag, "a").await;
    let response = srv.get(&format!("/v2/library/hello/manifests/{tag}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_of(response).await, manifest);
}

#[tokio::test]
async fn manifest_with_an_invalid_tag_is_400_and_not_stored() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"config").await;
    let manifest = oci_manifest(b"config", &[], json!({}));
    for tag in [
        format!("v{}", "1".repeat(128)),
        "-lead".to_owned(),
        ".dot".to_owned(),
    ] {
        let path = format!("/v2/library/hello/manifests/{tag}");
        let response = srv
            .put_manifest("library/hello", &tag, OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "PUT {path}");
        let body = json_of(response).await;
        assert!(body["errors"][0]["code"].is_string(), "PUT {path}: {body}");
        // No manifest can be under a reference that is no tag (see the GET/HEAD test below).
        let response = srv.get(&path).await;
        assert_error(response, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
    let tags = json_of(srv.get("/v2/library/hello/tags/list").await).await;
    assert_eq!(tags["tags"], json!([]));
}

/// References that are neither a tag nor a digest of a supported algorithm: what is wrong with
/// each, and the code a PUT or DELETE of it gets.
fn references_neither_tag_nor_digest() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "a tag starting with '-' and holding '!'",
            "-bad-tag!".to_owned(),
            "NAME_INVALID",
        ),
        (
            "the conformance suite's nonexistent manifest",
            ".INVALID_MANIFEST_NAME".to_owned(),
            "NAME_INVALID",
        ),
        (
            "a tag of 129 characters",
            format!("v{}", "1".repeat(128)),
            "NAME_INVALID",
        ),
        (
            "the conformance suite's wrong digest",
            "sha256:totallywrong".to_owned(),
            "DIGEST_INVALID",
        ),
        (
            "a digest that is not hex",
            "sha256:xyz".to_owned(),
            "DIGEST_INVALID",
        ),
        (
            "a digest one character short",
            format!("sha256:{}", "a".repeat(63)),
            "DIGEST_INVALID",
        ),
        (
            "a digest in upper-case hex",
            format!("sha256:{}", "A".repeat(64)),
            "DIGEST_INVALID",
        ),
        ("an empty digest", "sha256:".to_owned(), "DIGEST_INVALID"),
        (
            "a digest of an unknown algorithm",
            "md5:abcdef".to_owned(),
            "UNSUPPORTED",
        ),
    ]
}

/// The conformance suite pulls `.INVALID_MANIFEST_NAME` and expects 404: no manifest is
/// known under a reference that cannot name one.
#[tokio::test]
async fn manifest_get_or_head_of_a_reference_neither_tag_nor_digest_is_404_manifest_unknown() {
    let srv = Server::start();
    srv.push_image("library/hello", "v1", "a").await;
    for (what, reference, _) in references_neither_tag_nor_digest() {
        let path = format!("/v2/library/hello/manifests/{reference}");
        let (status, body) = raw_request(&srv.addr, "GET", &path, b"");
        let body: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "GET {path} ({what}): not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        assert_eq!(status, 404, "GET {path} ({what}): {body}");
        assert_eq!(
            body["errors"][0]["code"], "MANIFEST_UNKNOWN",
            "{what}: {body}"
        );
        let (status, _) = raw_request(&srv.addr, "HEAD", &path, b"");
        assert_eq!(status, 404, "HEAD {path} ({what})");
    }
}

/// The conformance suite PUTs to `sha256:totallywrong` and expects 400 with an OCI error code:
/// a PUT (or DELETE) of a reference that cannot name a manifest is the client's mistake.
#[tokio::test]
async fn manifest_put_or_delete_of_a_reference_neither_tag_nor_digest_is_400() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"config").await;
    let manifest = oci_manifest(b"config", &[], json!({}));
    for (what, reference, code) in references_neither_tag_nor_digest() {
        let path = format!("/v2/library/hello/manifests/{reference}");
        let mut put = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n",
            srv.addr,
            manifest.len()
        )
        .into_bytes();
        put.extend_from_slice(&manifest);
        let response = raw_exchange(&srv.addr, &put, false);
        response.assert_error(400, code, &format!("PUT {path} ({what})"));
        let response = raw_exchange(
            &srv.addr,
            format!(
                "DELETE {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                srv.addr
            )
            .as_bytes(),
            false,
        );
        response.assert_error(400, code, &format!("DELETE {path} ({what})"));
    }
    let tags = json_of(srv.get("/v2/library/hello/tags/list").await).await;
    assert_eq!(tags["tags"], json!([]));
}

#[tokio::test]
async fn manifest_get_by_tag_returns_the_exact_bytes_with_its_media_type() {
    let srv = Server::start();
    let (manifest, digest) = srv.push_image("library/hello", "v1", "a").await;
    let response = srv.get("/v2/library/hello/manifests/v1").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_of(&response, "content-type"), OCI_MANIFEST);
    assert_eq!(header_of(&response, "docker-content-digest"), digest);
    assert_eq!(
        header_of(&response, "content-length"),
        manifest.len().to_string()
    );
    assert_eq!(body_of(response).await, manifest);
}

#[tokio::test]
async fn manifest_get_by_digest_returns_the_exact_bytes_with_its_media_type() {
    let srv = Server::start();
    let (manifest, digest) = srv.push_image("library/hello", "v1", "a").await;
    let response = srv
        .get(&format!("/v2/library/hello/manifests/{digest}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_of(&response, "content-type"), OCI_MANIFEST);
    assert_eq!(header_of(&response, "docker-content-digest"), digest);
    assert_eq!(body_of(response).await, manifest);
}

#[tokio::test]
async fn manifest_head_by_tag_and_by_digest_reports_type_length_and_digest() {
    let srv = Server::start();
    let (manifest, digest) = srv.push_image("library/hello", "v1", "a").await;
    for reference in ["v1", digest.as_str()] {
        let response = srv
            .head(&format!("/v2/library/hello/manifests/{reference}"))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{reference}");
        assert_eq!(header_of(&response, "content-type"), OCI_MANIFEST);
        assert_eq!(header_of(&response, "docker-content-digest"), digest);
        assert_eq!(
            header_of(&response, "content-length"),
            manifest.len().to_string()
        );
        assert!(body_of(response).await.is_empty());
    }
}

#[tokio::test]
async fn docker_schema2_manifest_comes_back_with_its_media_type() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"docker config").await;
    srv.push_blob("library/hello", b"docker layer").await;
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": digest_of(b"docker config"), "size": 13},
        "layers": [{"mediaType": DOCKER_LAYER, "digest": digest_of(b"docker layer"), "size": 12}],
    }))
    .expect("json");
    let response = srv
        .put_manifest("library/hello", "latest", DOCKER_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = srv
        .request(Method::GET, "/v2/library/hello/manifests/latest")
        .header(header::ACCEPT, DOCKER_MANIFEST)
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_of(&response, "content-type"), DOCKER_MANIFEST);
    assert_eq!(body_of(response).await, manifest);
}

#[tokio::test]
async fn manifest_get_with_an_accept_excluding_its_type_is_404_manifest_unknown() {
    let srv = Server::start();
    srv.push_image("library/hello", "v1", "a").await;
    let accept =
        format!("{DOCKER_MANIFEST}, application/vnd.docker.distribution.manifest.list.v2+json");
    let response = srv
        .request(Method::GET, "/v2/library/hello/manifests/v1")
        .header(header::ACCEPT, &accept)
        .send()
        .await
        .expect("get");
    assert_error(response, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let response = srv
        .request(Method::HEAD, "/v2/library/hello/manifests/v1")
        .header(header::ACCEPT, &accept)
        .send()
        .await
        .expect("head");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn manifest_get_with_an_accept_listing_its_type_is_200() {
    let srv = Server::start();
    let (manifest, _) = srv.push_image("library/hello", "v1", "a").await;
    // One header with a list and parameters, and several headers as docker sends them.
    let one_header = srv
        .request(Method::GET, "/v2/library/hello/manifests/v1")
        .header(
            header::ACCEPT,
            format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.9, {OCI_INDEX};q=0.5"),
        );
    let several_headers = srv
        .request(Method::GET, "/v2/library/hello/manifests/v1")
        .header(header::ACCEPT, DOCKER_MANIFEST)
        .header(header::ACCEPT, OCI_INDEX)
        .header(header::ACCEPT, OCI_MANIFEST);
    for request in [one_header, several_headers] {
        let response = request.send().await.expect("get");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header_of(&response, "content-type"), OCI_MANIFEST);
        assert_eq!(body_of(response).await, manifest);
    }
}

#[tokio::test]
async fn manifest_get_with_a_wildcard_accept_is_200() {
    let srv = Server::start();
    srv.push_image("library/hello", "v1", "a").await;
    let response = srv
        .request(Method::GET, "/v2/library/hello/manifests/v1")
        .header(header::ACCEPT, format!("{DOCKER_MANIFEST}, */*"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_of(&response, "content-type"), OCI_MANIFEST);
}

#[tokio::test]
async fn unknown_manifest_is_404_manifest_unknown() {
    let srv = Server::start();
    srv.push_image("library/hello", "v1", "a").await;
    for reference in ["v2".to_owned(), digest_of(b"never pushed")] {
        let path = format!("/v2/library/hello/manifests/{reference}");
        assert_error(
            srv.get(&path).await,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        )
        .await;
        assert_eq!(srv.head(&path).await.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn manifest_of_an_unknown_repository_is_404() {
    let srv = Server::start();
    let response = srv.get("/v2/library/nobody/manifests/latest").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let code = json_of(response).await["errors"][0]["code"].clone();
    assert!(
        code == "NAME_UNKNOWN" || code == "MANIFEST_UNKNOWN",
        "code {code}"
    );
}

#[tokio::test]
async fn manifest_put_with_a_subject_answers_with_oci_subject() {
    let srv = Server::start();
    let (subject, subject_digest) = srv.push_image("library/hello", "v1", "a").await;
    let (_, response) = srv
        .push_referrer(
            "library/hello",
            (&subject_digest, subject.len()),
            json!({"artifactType": SBOM}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header_of(&response, "oci-subject"), subject_digest);
}

#[tokio::test]
async fn manifest_put_without_a_subject_has_no_oci_subject() {
    let srv = Server::start();
    srv.push_blob("library/hello", b"config").await;
    let manifest = oci_manifest(b"config", &[], json!({}));
    let response = srv
        .put_manifest("library/hello", "v1", OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!has_header(&response, "oci-subject"));
}

#[tokio::test]
async fn manifest_delete_by_digest_is_202_and_it_is_then_404_manifest_unknown() {
    let srv = Server::start();
    let (_, digest) = srv.push_image("library/hello", "v1", "a").await;
    let path = format!("/v2/library/hello/manifests/{digest}");
    assert_eq!(srv.delete(&path).await.status(), StatusCode::ACCEPTED);
    for path in [path.as_str(), "/v2/library/hello/manifests/v1"] {
        assert_error(
            srv.get(path).await,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        )
        .await;
    }
    let tags = json_of(srv.get("/v2/library/hello/tags/list").await).await;
    assert_eq!(tags["tags"], json!([]));
    assert_error(
        srv.delete(&path).await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn manifest_delete_by_tag_is_202_and_removes_only_the_tag() {
    let srv = Server::start();
    let (manifest, digest) = srv.push_image("library/hello", "v1", "a").await;
    let response = srv
        .put_manifest("library/hello", "v2", OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = srv.delete("/v2/library/hello/manifests/v1").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = srv.get("/v2/library/hello/manifests/v1").await;
    assert_error(response, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    for reference in ["v2", digest.as_str()] {
        let response = srv
            .get(&format!("/v2/library/hello/manifests/{reference}"))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{reference}");
    }
    let response = srv.delete("/v2/library/hello/manifests/v1").await;
    assert_error(response, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

// ---------------------------------------------------------------------------------------------
// Tags and catalog

/// Tags `b`, `a`, `v10`, `v2`, `latest` on one image.
async fn tagged(srv: &Server) {
    let (manifest, _) = srv.push_image("library/hello", "b", "x").await;
    for tag in ["a", "v10", "v2", "latest"] {
        let response = srv
            .put_manifest("library/hello", tag, OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
}

/// The target of a `Link: <...>; rel="next"` header.
fn next_link(response: &Response) -> Option<String> {
    let link = response.headers().get("link")?.to_str().expect("ascii");
    let target = link
        .strip_prefix('<')
        .and_then(|l| l.strip_suffix(r#">; rel="next""#))
        .unwrap_or_else(|| panic!("malformed Link header {link:?}"));
    Some(target.to_owned())
}

#[tokio::test]
async fn tags_list_returns_every_tag_in_lexical_order() {
    let srv = Server::start();
    tagged(&srv).await;
    let response = srv.get("/v2/library/hello/tags/list").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(next_link(&response).is_none());
    let body = json_of(response).await;
    assert_eq!(
        body,
        json!({"name": "library/hello", "tags": ["a", "b", "latest", "v10", "v2"]})
    );
}

#[tokio::test]
async fn tags_list_with_n_returns_a_page_and_a_link_to_the_next() {
    let srv = Server::start();
    tagged(&srv).await;
    let response = srv.get("/v2/library/hello/tags/list?n=2").await;
    assert_eq!(response.status(), StatusCode::OK);
    let next = next_link(&response).expect("a Link header");
    assert!(next.starts_with("/v2/library/hello/tags/list?"), "{next}");
    assert_eq!(json_of(response).await["tags"], json!(["a", "b"]));

    let mut all = vec!["a".to_owned(), "b".to_owned()];
    let mut next = Some(next);
    while let Some(link) = next {
        let response = srv.get(&link).await;
        assert_eq!(response.status(), StatusCode::OK, "{link}");
        next = next_link(&response);
        let page = json_of(response).await;
        let page = page["tags"].as_array().expect("tags").clone();
        assert!(!page.is_empty() && page.len() <= 2, "{link}: {page:?}");
        all.extend(page.iter().map(|t| t.as_str().expect("tag").to_owned()));
    }
    assert_eq!(all, ["a", "b", "latest", "v10", "v2"]);
}

#[tokio::test]
async fn tags_list_with_last_continues_after_it() {
    let srv = Server::start();
    tagged(&srv).await;
    let response = srv.get("/v2/library/hello/tags/list?n=2&last=b").await;
    assert!(next_link(&response).is_some());
    assert_eq!(json_of(response).await["tags"], json!(["latest", "v10"]));
    let response = srv.get("/v2/library/hello/tags/list?last=latest").await;
    assert!(next_link(&response).is_none());
    assert_eq!(json_of(response).await["tags"], json!(["v10", "v2"]));
    let response = srv.get("/v2/library/hello/tags/list?n=2&last=v10").await;
    assert!(next_link(&response).is_none(), "the last page has no Link");
    assert_eq!(json_of(response).await["tags"], json!(["v2"]));
}

#[tokio::test]
async fn tags_list_with_n_zero_is_empty_without_a_link() {
    let srv = Server::start();
    tagged(&srv).await;
    let response = srv.get("/v2/library/hello/tags/list?n=0").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(next_link(&response).is_none());
    assert_eq!(json_of(response).await["tags"], json!([]));
}

#[tokio::test]
async fn tags_list_of_an_unknown_repository_is_404_name_unknown() {
    let srv = Server::start();
    srv.push_image("library/hello", "v1", "a").await;
    let response = srv.get("/v2/library/nobody/tags/list").await;
    assert_error(response, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn tags_list_of_a_repository_with_blobs_only_is_empty() {
    let srv = Server::start();
    srv.push_blob("library/hello", TWENTY).await;
    let response = srv.get("/v2/library/hello/tags/list").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["tags"], json!([]));
}

#[tokio::test]
async fn catalog_lists_repositories_in_lexical_order() {
    let srv = Server::start();
    for repo in ["c/one", "a/two", "b", "a/one/deep"] {
        srv.push_blob(repo, repo.as_bytes()).await;
    }
    let response = srv.get("/v2/_catalog").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(next_link(&response).is_none());
    assert_eq!(
        json_of(response).await,
        json!({"repositories": ["a/one/deep", "a/two", "b", "c/one"]})
    );
}

#[tokio::test]
async fn catalog_with_n_and_last_paginates_with_a_link() {
    let srv = Server::start();
    for repo in ["c/one", "a/two", "b", "a/one/deep"] {
        srv.push_blob(repo, repo.as_bytes()).await;
    }
    let response = srv.get("/v2/_catalog?n=3").await;
    assert_eq!(response.status(), StatusCode::OK);
    let next = next_link(&response).expect("a Link header");
    assert!(next.starts_with("/v2/_catalog?"), "{next}");
    assert_eq!(
        json_of(response).await["repositories"],
        json!(["a/one/deep", "a/two", "b"])
    );
    let response = srv.get(&next).await;
    assert!(next_link(&response).is_none());
    assert_eq!(json_of(response).await["repositories"], json!(["c/one"]));
    let response = srv.get("/v2/_catalog?n=1&last=a/two").await;
    assert!(next_link(&response).is_some());
    assert_eq!(json_of(response).await["repositories"], json!(["b"]));
}

#[tokio::test]
async fn pagination_with_a_non_numeric_n_is_400() {
    let srv = Server::start();
    tagged(&srv).await;
    for path in ["/v2/library/hello/tags/list?n=many", "/v2/_catalog?n=-1"] {
        let response = srv.get(path).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// Referrers

#[tokio::test]
async fn referrers_of_a_subject_come_back_as_an_oci_index() {
    let srv = Server::start();
    let (subject, subject_digest) = srv.push_image("library/hello", "v1", "a").await;
    let subject_ref = (subject_digest.as_str(), subject.len());
    let annotations = json!({"org.example.sbom.format": "json"});
    let (sbom, _) = srv
        .push_referrer(
            "library/hello",
            subject_ref,
            json!({"artifactType": SBOM, "annotations": annotations}),
        )
        .await;
    let (signature, _) = srv
        .push_referrer(
            "library/hello",
            subject_ref,
            json!({"artifactType": SIGNATURE}),
        )
        .await;
    let response = srv
        .get(&format!("/v2/library/hello/referrers/{subject_digest}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_of(&response, "content-type"), OCI_INDEX);
    assert!(!has_header(&response, "oci-filters-applied"));
    let index = json_of(response).await;
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 2, "{index}");
    let find = |digest: &str| {
        manifests
            .iter()
            .find(|d| d["digest"] == digest)
            .unwrap_or_else(|| panic!("{digest} not in {index}"))
    };
    let sbom = find(&sbom);
    assert_eq!(sbom["mediaType"], OCI_MANIFEST);
    assert_eq!(sbom["artifactType"], SBOM);
    assert!(sbom["size"].as_u64().is_some_and(|s| s > 0));
    assert_eq!(sbom["annotations"], annotations);
    assert_eq!(find(&signature)["artifactType"], SIGNATURE);
}

#[tokio::test]
async fn referrer_without_an_artifact_type_is_listed_with_its_config_media_type() {
    let srv = Server::start();
    let (subject, subject_digest) = srv.push_image("library/hello", "v1", "a").await;
    let (referrer, _) = srv
        .push_referrer("library/hello", (&subject_digest, subject.len()), json!({}))
        .await;
    let response = srv
        .get(&format!("/v2/library/hello/referrers/{subject_digest}"))
        .await;
    let index = json_of(response).await;
    assert_eq!(index["manifests"][0]["digest"], referrer, "{index}");
    assert_eq!(index["manifests"][0]["artifactType"], OCI_EMPTY, "{index}");
}

#[tokio::test]
async fn referrers_filtered_by_artifact_type_set_oci_filters_applied() {
    let srv = Server::start();
    let (subject, subject_digest) = srv.push_image("library/hello", "v1", "a").await;
    let subject_ref = (subject_digest.as_str(), subject.len());
    let (sbom, _) = srv
        .push_referrer("library/hello", subject_ref, json!({"artifactType": SBOM}))
        .await;
    srv.push_referrer(
        "library/hello",
        subject_ref,
        json!({"artifactType": SIGNATURE}),
    )
    .await;
    let response = srv
        .get(&format!(
            "/v2/library/hello/referrers/{subject_digest}?artifactType={SBOM}"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_of(&response, "content-type"), OCI_INDEX);
    assert_eq!(header_of(&response, "oci-filters-applied"), "artifactType");
    let index = json_of(response).await;
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(manifests[0]["digest"], sbom);
}

#[tokio::test]
async fn referrers_of_an_unknown_subject_are_an_empty_index() {
    let srv = Server::start();
    srv.push_image("library/hello", "v1", "a").await;
    let unknown = digest_of(b"no such manifest");
    let response = srv
        .get(&format!("/v2/library/hello/referrers/{unknown}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_of(&response, "content-type"), OCI_INDEX);
    let index = json_of(response).await;
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(index["manifests"], json!([]));
}

#[tokio::test]
async fn referrer_pushed_before_its_subject_is_listed() {
    let srv = Server::start();
    let subject = digest_of(b"a manifest pushed later");
    let (referrer, response) = srv
        .push_referrer(
            "library/hello",
            (&subject, 23),
            json!({"artifactType": SBOM}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let index = json_of(
        srv.get(&format!("/v2/library/hello/referrers/{subject}"))
            .await,
    )
    .await;
    assert_eq!(index["manifests"][0]["digest"], referrer, "{index}");
}

#[tokio::test]
async fn referrers_with_a_malformed_digest_is_400() {
    let srv = Server::start();
    let response = srv.get("/v2/library/hello/referrers/sha256:nothex").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------------------------
// Races between clients: never a 5xx, and every outcome one that some order of the requests
// would give

/// Rounds of a write racing a DELETE of the same name. A DELETE failed the write with a 500 in
/// about one round in 500 to 3,000 here (it has to remove the file and its directory while the
/// write is between publishing the file and syncing that directory), so this many rounds
/// caught it in most runs.
const RACE_ROUNDS: usize = 1000;

/// A name that a write and a DELETE race for.
struct Race {
    /// The write: method, path, and body (with its media type) if any.
    write: (Method, String, Option<(&'static str, Vec<u8>)>),
    /// What the DELETE, GET and HEAD name.
    path: String,
    /// The body a GET of `path` returns while it exists.
    expected: Vec<u8>,
    /// The code of a 404 for `path`.
    unknown: &'static str,
}

impl Race {
    async fn write(&self, srv: &Server) -> Response {
        let (method, path, body) = &self.write;
        let mut request = srv.request(method.clone(), path);
        if let Some((media_type, body)) = body {
            request = request
                .header(header::CONTENT_TYPE, *media_type)
                .body(body.clone());
        }
        request.send().await.expect("write")
    }

    /// Whether the name exists now: a GET is 200 with the expected body or 404 with the
    /// race's code, and a HEAD agrees; anything else fails the test.
    async fn present(&self, srv: &Server, context: &str) -> bool {
        let path = &self.path;
        let head = srv.head(path).await.status();
        let response = srv.get(path).await;
        let status = response.status();
        assert_eq!(head, status, "{context}: HEAD {path} disagrees with GET");
        match status {
            StatusCode::OK => {
                assert!(
                    body_of(response).await == self.expected,
                    "{context}: GET {path}"
                );
                true
            }
            StatusCode::NOT_FOUND => {
                assert_error(response, StatusCode::NOT_FOUND, self.unknown).await;
                false
            }
            status => panic!(
                "{context}: GET {path} is {status}: {:?}",
                body_of(response).await
            ),
        }
    }

    /// Checks a write and a DELETE that raced, given whether the name existed before and
    /// after. Linearizable outcomes only: a DELETE that found nothing ran before the write, so
    /// the name is there; one that removed a name that was not there before ran after the
    /// write, so the name is gone.
    async fn assert_outcome(
        &self,
        context: &str,
        write: Response,
        delete: Response,
        before: bool,
        after: bool,
    ) {
        let written = write.status();
        assert!(
            written == StatusCode::CREATED,
            "{context}: the write answered {written}: {:?}",
            String::from_utf8_lossy(&body_of(write).await)
        );
        match delete.status() {
            StatusCode::ACCEPTED => assert!(
                before || !after,
                "{context}: the DELETE removed what only the write made, yet it is there"
            ),
            StatusCode::NOT_FOUND => {
                assert_error(delete, StatusCode::NOT_FOUND, self.unknown).await;
                assert!(
                    after,
                    "{context}: the DELETE found nothing, yet the write is lost"
                );
            }
            status => panic!(
                "{context}: the DELETE answered {status}: {:?}",
                String::from_utf8_lossy(&body_of(delete).await)
            ),
        }
    }

    /// Races the write against a DELETE `RACE_ROUNDS` times; returns whether the name exists
    /// at the end.
    async fn run(&self, srv: &Server) -> bool {
        let mut before = self.present(srv, "before the races").await;
        for round in 0..RACE_ROUNDS {
            let context = format!("round {round}");
            // Only a DELETE that finds the name removes a file and its directory: most rounds
            // start with it there. Every fifth may start without, where the DELETE is a 404
            // unless the write comes first.
            if !before && round % 5 != 4 {
                let write = self.write(srv).await;
                assert_eq!(write.status(), StatusCode::CREATED, "{context}: restoring");
                before = true;
            }
            // Shifted by 0-2 ms, the DELETE meets the write at a different step each round.
            let delete = async {
                tokio::time::sleep(Duration::from_millis(round as u64 % 3)).await;
                srv.delete(&self.path).await
            };
            let (write, delete) = tokio::join!(self.write(srv), delete);
            let after = self.present(srv, &context).await;
            self.assert_outcome(&context, write, delete, before, after)
                .await;
            before = after;
        }
        before
    }
}

#[tokio::test]
async fn a_tag_put_racing_its_delete_never_gets_5xx_and_ends_put_or_deleted() {
    let srv = Server::start();
    let (manifest, digest) = srv.push_image("library/hello", "v1", "a").await;
    let path = "/v2/library/hello/manifests/t".to_owned();
    let race = Race {
        write: (
            Method::PUT,
            path.clone(),
            Some((OCI_MANIFEST, manifest.clone())),
        ),
        path,
        expected: manifest.clone(),
        unknown: "MANIFEST_UNKNOWN",
    };
    let tagged = race.run(&srv).await;
    let tags = json_of(srv.get("/v2/library/hello/tags/list").await).await;
    let expected = if tagged {
        json!(["t", "v1"])
    } else {
        json!(["v1"])
    };
    assert_eq!(tags["tags"], expected);
    // Deleting a tag never deletes its manifest.
    let response = srv
        .get(&format!("/v2/library/hello/manifests/{digest}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_manifest_put_by_digest_racing_its_delete_never_gets_5xx_and_ends_put_or_deleted() {
    let srv = Server::start();
    let (manifest, digest) = srv.push_image("library/hello", "v1", "a").await;
    let path = format!("/v2/library/hello/manifests/{digest}");
    let race = Race {
        write: (
            Method::PUT,
            path.clone(),
            Some((OCI_MANIFEST, manifest.clone())),
        ),
        path,
        expected: manifest,
        unknown: "MANIFEST_UNKNOWN",
    };
    race.run(&srv).await;
}

#[tokio::test]
async fn a_blob_mount_racing_its_delete_never_gets_5xx_and_ends_linked_or_unlinked() {
    let srv = Server::start();
    let digest = srv.push_blob("library/source", TWENTY).await;
    let race = Race {
        write: (
            Method::POST,
            format!("/v2/library/hello/blobs/uploads/?mount={digest}&from=library/source"),
            None,
        ),
        path: format!("/v2/library/hello/blobs/{digest}"),
        expected: TWENTY.to_vec(),
        unknown: "BLOB_UNKNOWN",
    };
    race.run(&srv).await;
}

/// Several clients writing and deleting tags of one repository at once: a delete's removal of
/// the directories it emptied must not fail another tag's write.
#[tokio::test]
async fn puts_and_deletes_of_many_tags_at_once_never_get_5xx() {
    let srv = Server::start();
    let (manifest, _) = srv.push_image("library/hello", "v1", "a").await;
    let client = |tag: String| {
        let srv = &srv;
        let manifest = &manifest;
        async move {
            let path = format!("/v2/library/hello/manifests/{tag}");
            // Each client puts and deletes its own tag, so each request must succeed.
            for step in 0..RACE_ROUNDS / 10 {
                let put = srv
                    .put_manifest("library/hello", &tag, OCI_MANIFEST, manifest)
                    .await;
                let delete = srv.delete(&path).await;
                for (response, expected) in
                    [(put, StatusCode::CREATED), (delete, StatusCode::ACCEPTED)]
                {
                    let status = response.status();
                    assert!(
                        status == expected,
                        "{tag}, step {step}: {status}: {:?}",
                        String::from_utf8_lossy(&body_of(response).await)
                    );
                }
            }
        }
    };
    futures::future::join_all((0..6).map(|i| client(format!("t{i}")))).await;
    let tags = json_of(srv.get("/v2/library/hello/tags/list").await).await;
    assert_eq!(tags["tags"], json!(["v1"]));
}

// ---------------------------------------------------------------------------------------------
// Invalid names

/// Every endpoint with a name in its path, as (method, path after the name, body).
fn named_endpoints() -> Vec<(&'static str, String, Vec<u8>)> {
    let digest = digest_of(TWENTY);
    let id = "0123456789abcdef0123456789abcdef";
    vec![
        ("GET", format!("/blobs/{digest}"), Vec::new()),
        ("HEAD", format!("/blobs/{digest}"), Vec::new()),
        ("DELETE", format!("/blobs/{digest}"), Vec::new()),
        ("GET", "/manifests/latest".to_owned(), Vec::new()),
        ("HEAD", format!("/manifests/{digest}"), Vec::new()),
        ("PUT", "/manifests/latest".to_owned(), b"{}".to_vec()),
        ("DELETE", "/manifests/latest".to_owned(), Vec::new()),
        ("POST", "/blobs/uploads/".to_owned(), Vec::new()),
        (
            "POST",
            format!("/blobs/uploads/?digest={digest}"),
            TWENTY.to_vec(),
        ),
        (
            "POST",
            format!("/blobs/uploads/?mount={digest}&from=library/hello"),
            Vec::new(),
        ),
        ("GET", format!("/blobs/uploads/{id}"), Vec::new()),
        ("PATCH", format!("/blobs/uploads/{id}"), TWENTY.to_vec()),
        (
            "PUT",
            format!("/blobs/uploads/{id}?digest={digest}"),
            Vec::new(),
        ),
        ("DELETE", format!("/blobs/uploads/{id}"), Vec::new()),
        ("GET", "/tags/list".to_owned(), Vec::new()),
        ("GET", format!("/referrers/{digest}"), Vec::new()),
    ]
}

/// Sends every named endpoint with `name` over raw HTTP (so `..` reaches the server as
/// sent) and checks each is 400 NAME_INVALID.
async fn assert_name_invalid_everywhere(name: &str) {
    let srv = Server::start();
    srv.push_blob("library/hello", TWENTY).await;
    for (method, rest, body) in named_endpoints() {
        let path = format!("/v2/{name}{rest}");
        let (status, response) = raw_request(&srv.addr, method, &path, &body);
        let context = format!("{method} {path}");
        assert_eq!(
            status,
            400,
            "{context}: {}",
            String::from_utf8_lossy(&response)
        );
        if method != "HEAD" {
            let body: Value = serde_json::from_slice(&response).unwrap_or_else(|e| {
                panic!(
                    "{context}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&response)
                )
            });
            assert_eq!(
                body["errors"][0]["code"], "NAME_INVALID",
                "{context}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn uppercase_name_is_400_name_invalid_on_every_endpoint() {
    assert_name_invalid_everywhere("Library/Hello").await;
}

#[tokio::test]
async fn dot_dot_name_is_400_name_invalid_on_every_endpoint() {
    for name in [
        "..",
        "library/..",
        "../library",
        "library/../hello",
        "library/./hello",
    ] {
        assert_name_invalid_everywhere(name).await;
    }
}

#[tokio::test]
async fn name_over_255_characters_is_400_name_invalid_on_every_endpoint() {
    let name = format!("{}/{}", "a".repeat(128), "b".repeat(127));
    assert_eq!(name.len(), 256);
    assert_name_invalid_everywhere(&name).await;
}

#[tokio::test]
async fn name_of_255_characters_is_accepted() {
    let srv = Server::start();
    let name = format!("{}/{}", "a".repeat(127), "b".repeat(127));
    assert_eq!(name.len(), 255);
    let digest = srv.push_blob(&name, TWENTY).await;
    let response = srv.get(&format!("/v2/{name}/blobs/{digest}")).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn names_breaking_the_grammar_are_400_name_invalid() {
    let srv = Server::start();
    for name in [
        "-lead", "trail-", "a__b__", "a..b", "a//b", "a/-b", "a b", "_x",
    ] {
        let path = format!("/v2/{name}/tags/list");
        let (status, body) = raw_request(&srv.addr, "GET", &path.replace(' ', "%20"), b"");
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&body));
        let body: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["errors"][0]["code"], "NAME_INVALID", "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[tokio::test]
async fn deletes_disabled_by_configuration_are_405_unsupported() {
    let srv = Server::start_with_config(|dir| {
        format!(
            "version: 0.1\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: false\n\
             http:\n  addr: 127.0.0.1:0\n",
            dir.join("data").display()
        )
    });
    let blob = srv.push_blob("library/hello", TWENTY).await;
    let (_, manifest_digest) = srv.push_image("library/hello", "v1", "a").await;
    for path in [
        format!("/v2/library/hello/blobs/{blob}"),
        format!("/v2/library/hello/manifests/{manifest_digest}"),
        "/v2/library/hello/manifests/v1".to_owned(),
    ] {
        let response = srv.delete(&path).await;
        let allowed = response.headers().get("allow").cloned();
        assert_error(response, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
        assert!(
            allowed.is_some_and(|v| !v.to_str().unwrap().contains("DELETE")),
            "{path}: Allow must not offer DELETE"
        );
        assert_eq!(srv.head(&path).await.status(), StatusCode::OK, "{path}");
    }
    // Cancelling an upload is not a delete of content: it stays allowed.
    let location = srv.start_upload("library/hello").await;
    assert_eq!(srv.delete(&location).await.status(), StatusCode::NO_CONTENT);
}

// ---------------------------------------------------------------------------------------------
// TLS

/// With `http.tls` set, the registry serves HTTPS with the configured certificate.
#[test]
fn tls_is_served_with_the_configured_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian package openssl) makes the test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  tls:\n    certificate: {}\n    key: {}\n",
            dir.path().join("data").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let mut command = layerstore();
    command.args(["serve", "--config"]).arg(&config);
    let spawned = spawn_server(
        command,
        &dir.path().join("server.log"),
        Duration::from_secs(30),
    );
    let (addr, mut child) = (spawned.host("https"), spawned.child);
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .args(["-D", "-", "-o", "/dev/null", &format!("https://{addr}/v2/")])
        .output()
        .expect("curl");
    let _ = child.kill();
    let _ = child.wait();
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        headers.starts_with("http/"),
        "{headers}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(headers.contains(" 200"), "{headers}");
    assert!(
        headers.contains("docker-distribution-api-version: registry/2.0"),
        "{headers}"
    );
}

#[tokio::test]
async fn an_upload_cancel_racing_its_commit_or_chunk_never_gets_5xx() {
    let srv = Server::start();
    let digest = digest_of(TWENTY);
    for round in 0..50 {
        let location = srv.start_upload("library/hello").await;
        srv.patch_chunk(&location, 0, TWENTY).await;
        let (commit, cancel) = tokio::join!(srv.commit(&location, &digest), srv.delete(&location));
        let (a, b) = (commit.status(), cancel.status());
        assert!(
            !a.is_server_error() && !b.is_server_error(),
            "round {round}: commit {a}, cancel {b}"
        );
        let location = srv.start_upload("library/hello").await;
        let (patch, cancel) =
            tokio::join!(srv.patch_chunk(&location, 0, TWENTY), srv.delete(&location));
        let (a, b) = (patch.status(), cancel.status());
        assert!(
            !a.is_server_error() && !b.is_server_error(),
            "round {round}: patch {a}, cancel {b}"
        );
    }
}
