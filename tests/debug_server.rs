//! The debug server of `layerstore serve` (`http.debug`), over HTTP as an operator's probes and
//! Prometheus reach it: `/debug/health` with the `health.storagedriver` check, the registry
//! port's 503 while unhealthy, and each metric family of `/metrics` after the action that
//! moves it. Every server is a fresh process, so its counters start at zero.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::server::Running;
use layerstore::Digest;
use reqwest::{Method, StatusCode, header};

/// How long a condition the server reaches by itself (a failing check, a scheduled run) may
/// take before the test gives up; far above what it needs, so that a slow machine never
/// fails it.
const PATIENCE: Duration = Duration::from_secs(60);

struct Server {
    running: Running,
    debug: String,
    root: PathBuf,
    client: reqwest::Client,
}

/// A free loopback port for the debug listener (the registry's is announced; this one is
/// chosen here).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Server {
    /// `serve --config` with a filesystem root and a debug server on loopback. `extra` is YAML
    /// placed right after the `storage` keys (indented by two it extends `storage`, unindented
    /// it adds sections); `debug` is the body of `http.debug` besides `addr`.
    fn start(debug: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let debug_addr = format!("127.0.0.1:{}", free_port());
        let yaml = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    \
             enabled: true\n  cache:\n    blobdescriptor: inmemory\n{extra}http:\n  addr: \
             127.0.0.1:0\n  debug:\n    addr: {debug_addr}\n{debug}",
            root.display()
        );
        let file = dir.path().join("config.yml");
        std::fs::write(&file, yaml).unwrap();
        let running = Running::start_with(dir, &["--config", file.to_str().unwrap()]);
        Self {
            running,
            debug: debug_addr,
            root,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn with_metrics() -> Self {
        Self::start("    prometheus:\n      enabled: true\n", "")
    }

    /// A storagedriver check every second, failing after two failed probes.
    fn with_health_check() -> Self {
        Self::start(
            "",
            "health:\n  storagedriver:\n    enabled: true\n    interval: 1s\n    threshold: 2\n",
        )
    }

    fn registry(&self, path: &str) -> String {
        if path.starts_with("http://") {
            path.to_owned()
        } else {
            format!("http://{}{path}", self.running.addr)
        }
    }

    async fn send(&self, method: Method, path: &str) -> reqwest::Response {
        self.client
            .request(method, self.registry(path))
            .send()
            .await
            .unwrap()
    }

    async fn debug_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("http://{}{path}", self.debug))
            .send()
            .await
            .unwrap()
    }

    async fn health(&self) -> (StatusCode, serde_json::Value) {
        let response = self.debug_get("/debug/health").await;
        let status = response.status();
        (status, json_of(response).await)
    }

    /// Polls `/debug/health` until it answers `status`; its last body.
    async fn health_until(&self, status: StatusCode) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (now, body) = self.health().await;
            if now == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "health stayed {now} ({body}), never {status}; log:\n{}",
                self.running.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn scrape(&self) -> Scrape {
        let response = self.debug_get("/metrics").await;
        assert_eq!(response.status(), StatusCode::OK);
        Scrape(response.text().await.unwrap())
    }

    /// Replaces the storage root by a file, keeping the real one aside; returns where.
    fn break_root(&self) -> PathBuf {
        let aside = self.root.with_extension("aside");
        std::fs::rename(&self.root, &aside).unwrap();
        std::fs::write(&self.root, b"not a directory").unwrap();
        aside
    }

    fn repair_root(&self, aside: &Path) {
        std::fs::remove_file(&self.root).unwrap();
        std::fs::rename(aside, &self.root).unwrap();
    }

    /// `POST ?digest=` with the whole blob.
    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = Digest::sha256(bytes).to_string();
        let response = self
            .client
            .post(self.registry(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        digest
    }

    /// `POST` a session; its `Location`.
    async fn start_upload(&self, repo: &str) -> String {
        let response = self
            .send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned()
    }
}

async fn json_of(response: reqwest::Response) -> serde_json::Value {
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

/// A Prometheus text exposition.
struct Scrape(String);

impl Scrape {
    /// The sum of the samples named `name` whose labels include `labels`; `None` if none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                continue;
            }
            if labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|l| l == format!("{k}=\"{v}\""))
            }) {
                *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
            }
        }
        found
    }

    #[track_caller]
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.0))
    }
}

// ---- health ---------------------------------------------------------------------------------

#[tokio::test]
async fn health_is_200_and_an_empty_object_while_the_backend_answers() {
    let server = Server::with_health_check();
    let (status, body) = server.health().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({}));
}

#[tokio::test]
async fn health_turns_503_naming_the_check_when_the_root_is_replaced_by_a_file() {
    let server = Server::with_health_check();
    server.break_root();
    let body = server.health_until(StatusCode::SERVICE_UNAVAILABLE).await;
    let error = body["storagedriver_filesystem"]
        .as_str()
        .unwrap_or_else(|| panic!("the check is not named: {body}"));
    assert!(!error.is_empty());
}

#[tokio::test]
async fn the_registry_port_answers_503_unavailable_while_unhealthy() {
    let server = Server::with_health_check();
    server.break_root();
    server.health_until(StatusCode::SERVICE_UNAVAILABLE).await;
    let response = server.send(Method::GET, "/v2/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = json_of(response).await;
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
}

#[tokio::test]
async fn health_recovers_by_itself_once_the_root_is_back() {
    let server = Server::with_health_check();
    let aside = server.break_root();
    server.health_until(StatusCode::SERVICE_UNAVAILABLE).await;
    server.repair_root(&aside);
    let body = server.health_until(StatusCode::OK).await;
    assert_eq!(body, serde_json::json!({}));
    assert_eq!(
        server.send(Method::GET, "/v2/").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_debug_listener_serves_health_with_prometheus_off() {
    let server = Server::start("", "");
    let (status, body) = server.health().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({}));
    assert_eq!(
        server.debug_get("/metrics").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_registry_port_serves_no_debug_endpoint() {
    let server = Server::with_metrics();
    for path in ["/debug/health", "/metrics"] {
        let status = server.send(Method::GET, path).await.status();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn metrics_are_served_at_the_configured_path() {
    let server = Server::start(
        "    prometheus:\n      enabled: true\n      path: /prom\n",
        "",
    );
    server.send(Method::GET, "/v2/").await;
    let response = server.debug_get("/prom").await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    assert!(text.contains("layerstore_http_requests_total"), "{text}");
}

// ---- metrics --------------------------------------------------------------------------------

#[tokio::test]
async fn requests_are_counted_by_route_kind_method_and_status_without_names_or_digests() {
    let server = Server::with_metrics();
    let digest = server.push_blob("team/secret-project", b"layer").await;
    server
        .send(
            Method::HEAD,
            &format!("/v2/team/secret-project/blobs/{digest}"),
        )
        .await;
    server
        .send(Method::GET, "/v2/team/secret-project/manifests/latest")
        .await;
    let scrape = server.scrape().await;
    let requests = "layerstore_http_requests_total";
    let head = [("route", "blob"), ("method", "HEAD"), ("status", "200")];
    assert_eq!(scrape.get(requests, &head), 1.0);
    let push = [("route", "upload"), ("method", "POST"), ("status", "201")];
    assert_eq!(scrape.get(requests, &push), 1.0);
    let missing = [("route", "manifest"), ("method", "GET"), ("status", "404")];
    assert_eq!(scrape.get(requests, &missing), 1.0);
    assert!(!scrape.0.contains("secret-project"), "{}", scrape.0);
    assert!(!scrape.0.contains(&digest[7..]), "{}", scrape.0);
}

#[tokio::test]
async fn request_latency_is_a_histogram_by_route_method_and_status() {
    let server = Server::with_metrics();
    server.send(Method::GET, "/v2/").await;
    let scrape = server.scrape().await;
    let labels = [("route", "base"), ("method", "GET"), ("status", "200")];
    let name = "layerstore_http_request_duration_seconds";
    assert_eq!(scrape.get(&format!("{name}_count"), &labels), 1.0);
    let mut infinite = labels.to_vec();
    infinite.push(("le", "+Inf"));
    assert_eq!(scrape.get(&format!("{name}_bucket"), &infinite), 1.0);
}

#[tokio::test]
async fn body_bytes_in_and_out_are_counted_by_route() {
    let server = Server::with_metrics();
    let layer = vec![7u8; 10_000];
    let digest = server.push_blob("app", &layer).await;
    let got = server
        .send(Method::GET, &format!("/v2/app/blobs/{digest}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), layer.len());
    let scrape = server.scrape().await;
    let bytes_in = "layerstore_http_request_body_bytes_total";
    let bytes_out = "layerstore_http_response_body_bytes_total";
    assert_eq!(scrape.get(bytes_in, &[("route", "upload")]), 10_000.0);
    assert_eq!(scrape.get(bytes_out, &[("route", "blob")]), 10_000.0);
}

#[tokio::test]
async fn uploads_started_committed_cancelled_and_open_are_counted() {
    let server = Server::with_metrics();
    let committed = server.start_upload("app").await;
    let digest = Digest::sha256(b"").to_string();
    let sep = if committed.contains('?') { '&' } else { '?' };
    let response = server
        .send(Method::PUT, &format!("{committed}{sep}digest={digest}"))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let cancelled = server.start_upload("app").await;
    let response = server.send(Method::DELETE, &cancelled).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    server.start_upload("app").await;
    let scrape = server.scrape().await;
    assert_eq!(scrape.get("layerstore_uploads_started_total", &[]), 3.0);
    assert_eq!(scrape.get("layerstore_uploads_committed_total", &[]), 1.0);
    assert_eq!(scrape.get("layerstore_uploads_cancelled_total", &[]), 1.0);
    assert_eq!(scrape.get("layerstore_upload_sessions_open", &[]), 1.0);
}

#[tokio::test]
async fn layerinfo_cache_hits_and_misses_are_counted() {
    let server = Server::with_metrics();
    let digest = server.push_blob("app", b"cached").await;
    let before = server.scrape().await;
    let hits_before = before
        .value("layerstore_cache_hits_total", &[])
        .unwrap_or(0.0);
    server
        .send(Method::HEAD, &format!("/v2/app/blobs/{digest}"))
        .await;
    server
        .send(Method::HEAD, &format!("/v2/other/blobs/{digest}"))
        .await;
    let scrape = server.scrape().await;
    assert!(scrape.get("layerstore_cache_hits_total", &[]) > hits_before);
    assert!(scrape.get("layerstore_cache_misses_total", &[]) >= 1.0);
}

#[tokio::test]
async fn backend_requests_are_counted_by_operation_and_outcome_with_latency() {
    let server = Server::with_metrics();
    server.send(Method::GET, "/v2/app/manifests/missing").await;
    let scrape = server.scrape().await;
    let missing = [("operation", "get"), ("outcome", "not_found")];
    let count = scrape.get("layerstore_backend_requests_total", &missing);
    assert!(count >= 1.0);
    assert_eq!(
        scrape.get(
            "layerstore_backend_request_duration_seconds_count",
            &missing
        ),
        count
    );
}

#[tokio::test]
async fn scheduled_gc_and_purge_runs_are_counted() {
    let server = Server::start(
        "    prometheus:\n      enabled: true\n",
        "  maintenance:\n    uploadpurging:\n      enabled: true\n      age: 1h\n      \
         interval: 1s\n    gc:\n      enabled: true\n      interval: 1s\n      grace: 0s\n",
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let scrape = server.scrape().await;
        let gc = scrape.value("layerstore_gc_runs_total", &[("outcome", "ok")]);
        let purge = scrape.value("layerstore_upload_purge_runs_total", &[("outcome", "ok")]);
        if gc.is_some_and(|n| n >= 1.0) && purge.is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no gc ({gc:?}) or purge ({purge:?}) run counted; log:\n{}",
            server.running.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
