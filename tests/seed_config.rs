//! The configuration users start from: the Distribution 2.8 image's `config.yml`, unchanged
//! but for its storage root and address, with the debug server, the Redis cache and a
//! notification endpoint turned on and pointed at local servers (issue 15's "done when").
//! Each test checks that one of its sections does what it says.
//!
//! Needs Redis (`LAYERSTORE_TEST_REDIS`, started by `.ci/run`): skipped without it locally,
//! a failure under `CI=true`.

mod common;

use std::time::Duration;

use common::redis::redis_config;
use common::server::Running;
use common::webhook::{Answer, Receiver};
use layerstore::Digest;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The Distribution 2.8 image's `/etc/docker/registry/config.yml`, with `rootdirectory`
/// and `http.addr` left as placeholders and `blobdescriptor: redis` in place of `inmemory`.
const IMAGE_CONFIG: &str = "\
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: redis
  filesystem:
    rootdirectory: ROOT
  delete:
    enabled: true
http:
  addr: ADDR
  headers:
    X-Content-Type-Options: [nosniff]
  debug:
    addr: DEBUG
    prometheus:
      enabled: true
      path: /metrics
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One replica: `serve --config` with the image's config, the given storage root, Redis at
/// `redis`, and an endpoint posting to `hook`.
struct Replica {
    running: Running,
    debug: String,
}

impl Replica {
    fn start(root: &std::path::Path, redis: &str, hook: &str) -> Self {
        let debug = format!("127.0.0.1:{}", free_port());
        let yaml = IMAGE_CONFIG
            .replace("ROOT", root.to_str().unwrap())
            .replace("ADDR", "127.0.0.1:0")
            .replace("DEBUG", &debug)
            + &format!(
                "redis:\n  addr: {redis}\n  db: 0\n  dialtimeout: 2s\n  readtimeout: 2s\n  \
                 writetimeout: 2s\n\
                 notifications:\n  endpoints:\n    - name: ci\n      url: {hook}\n      \
                 headers:\n        Authorization: [Bearer ci-token]\n      timeout: 1s\n      \
                 threshold: 3\n      backoff: 100ms\n"
            );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yml");
        std::fs::write(&file, yaml).unwrap();
        let running = Running::start_with(dir, &["--config", file.to_str().unwrap()]);
        Self { running, debug }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr)
    }
}

/// Redis's `host:port`, or `None` (skipped).
fn redis_addr() -> Option<String> {
    redis_config().map(|c| format!("{}:{}", c.host, c.port))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A repository no other test (or earlier run on the same Redis) has used.
fn fresh_repository() -> String {
    format!("seed-{:016x}/app", rand::random::<u64>())
}

/// A config and a layer pushed with `POST ?digest=`, and a manifest of them put by `tag`;
/// the layer's and the manifest's digests.
async fn push_image(replica: &Replica, repo: &str, tag: &str) -> (String, String) {
    let http = client();
    let mut digests = Vec::new();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = format!("layer of {repo}").into_bytes();
    for bytes in [&config, &layer] {
        let digest = Digest::sha256(bytes).to_string();
        let response = http
            .post(replica.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        digests.push(digest);
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digests[0], "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digests[1], "size": layer.len()}],
    })
    .to_string();
    let response = http
        .put(replica.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    (
        digests.swap_remove(1),
        Digest::sha256(manifest.as_bytes()).to_string(),
    )
}

/// One replica of the seed configuration with an image pushed by tag `v1` into a fresh
/// repository; `None` without Redis (the test then skips). Fields drop in order: the
/// replica before its storage root.
struct Seeded {
    replica: Replica,
    receiver: Receiver,
    repo: String,
    layer: String,
    manifest: String,
    _root: tempfile::TempDir,
}

async fn seeded() -> Option<Seeded> {
    let redis = redis_addr()?;
    let (receiver, hook) = Receiver::start(Answer::Ok).await;
    let root = tempfile::tempdir().unwrap();
    let replica = Replica::start(root.path(), &redis, &hook);
    let repo = fresh_repository();
    let (layer, manifest) = push_image(&replica, &repo, "v1").await;
    Some(Seeded {
        replica,
        receiver,
        repo,
        layer,
        manifest,
        _root: root,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_config_with_every_section_on_serves_a_push_and_a_pull() {
    let Some(seed) = seeded().await else { return };
    // Borrowed, so that the root and the receiver live as long as the test.
    let Seeded {
        replica,
        repo,
        layer,
        manifest,
        ..
    } = &seed;
    let http = client();
    let got = http
        .get(replica.url(&format!("/v2/{repo}/manifests/v1")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["docker-content-digest"], manifest.as_str());
    // `http.headers` of the image's config, on every response.
    assert_eq!(got.headers()["x-content-type-options"], "nosniff");
    let blob = http
        .get(replica.url(&format!("/v2/{repo}/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(blob.headers()["x-content-type-options"], "nosniff");
    assert_eq!(blob.bytes().await.unwrap(), format!("layer of {repo}"));
    // Every section is taken as it is: nothing ignored, nothing warned about.
    let log = replica.running.log();
    assert!(!log.contains(" WARN "), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn its_endpoint_receives_the_push_with_the_configured_header() {
    let Some(seed) = seeded().await else { return };
    // Borrowed, so that the root and the receiver live as long as the test.
    let Seeded {
        receiver,
        repo,
        manifest,
        ..
    } = &seed;
    let events = receiver
        .wait_for("the manifest's push event", |events| {
            events
                .iter()
                .any(|e| e["action"] == "push" && e["target"]["digest"] == manifest.as_str())
        })
        .await;
    let push: &Value = events
        .iter()
        .find(|e| e["action"] == "push" && e["target"]["digest"] == manifest.as_str())
        .unwrap();
    assert_eq!(push["target"]["repository"], repo.as_str());
    assert_eq!(push["target"]["tag"], "v1");
    assert_eq!(push["target"]["mediaType"], OCI_MANIFEST);
    for (headers, _) in receiver.posts() {
        assert_eq!(headers["authorization"], "Bearer ci-token");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn its_debug_server_answers_health_and_counts_requests_and_cache_hits() {
    let Some(seed) = seeded().await else { return };
    // Borrowed, so that the root and the receiver live as long as the test.
    let Seeded {
        replica,
        repo,
        layer,
        ..
    } = &seed;
    let http = client();
    let head = http
        .head(replica.url(&format!("/v2/{repo}/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let health = http
        .get(format!("http://{}/debug/health", replica.debug))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(&health.text().await.unwrap()).unwrap();
    assert_eq!(body, json!({}));
    let metrics = http
        .get(format!("http://{}/metrics", replica.debug))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // The push's POSTs and PUT, and the HEAD; the HEAD answered from Redis, which the
    // push filled.
    assert!(count("layerstore_http_requests_total{") >= 4.0, "{metrics}");
    assert!(count("layerstore_cache_hits_total") >= 1.0, "{metrics}");
    assert_eq!(
        count("layerstore_cache_redis_errors_total"),
        0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn its_replicas_share_the_cache_so_a_delete_on_one_is_seen_at_once_by_the_other() {
    let Some(redis) = redis_addr() else { return };
    let (_receiver, hook) = Receiver::start(Answer::Ok).await;
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (
        Replica::start(root.path(), &redis, &hook),
        Replica::start(root.path(), &redis, &hook),
    );
    let repo = fresh_repository();
    let (layer, _) = push_image(&a, &repo, "v1").await;
    let http = client();
    let blob = |r: &Replica| r.url(&format!("/v2/{repo}/blobs/{layer}"));
    assert_eq!(http.head(blob(&b)).send().await.unwrap().status(), 200);
    assert_eq!(
        http.request(Method::DELETE, blob(&a))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(http.head(blob(&b)).send().await.unwrap().status(), 404);
    assert_eq!(http.get(blob(&b)).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn its_log_lines_carry_the_service_field() {
    let Some(redis) = redis_addr() else { return };
    let (_receiver, hook) = Receiver::start(Answer::Ok).await;
    let root = tempfile::tempdir().unwrap();
    let replica = Replica::start(root.path(), &redis, &hook);
    let response = client().get(replica.url("/v2/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The access log line of that request is written after the response; wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = replica.running.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("/v2/")).collect();
        if !lines.is_empty() {
            for line in lines {
                assert!(line.contains("service=\"registry\""), "{line}");
            }
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access line:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
