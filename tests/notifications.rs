//! Webhook notifications (`notifications.endpoints`) of `layerstore serve`, over HTTP: a
//! receiver in the test takes the POSTs, and each test checks what a hook relies on (the
//! event bodies of Distribution's envelope, headers, retries with the same ids, ignore rules,
//! disabled endpoints), and that an endpoint that never answers costs pushes nothing.

mod common;

use std::time::{Duration, Instant};

use common::server::Running;
use common::webhook::{Answer, PATIENCE, Receiver};
use layerstore::Digest;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

const EVENTS_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Registry {
    running: Running,
    client: reqwest::Client,
    /// `(user, password)` sent with every request, under htpasswd.
    credentials: Option<(&'static str, &'static str)>,
    debug: Option<String>,
}

/// An endpoint named `hook` at `url` with `extra` keys (YAML, indented for the endpoint).
fn endpoint(url: &str, extra: &str) -> String {
    format!(
        "notifications:\n  endpoints:\n    - name: hook\n      url: {url}\n      \
         headers:\n        Authorization: [Bearer hook-token]\n      timeout: 1s\n      \
         threshold: 3\n      backoff: 100ms\n{extra}"
    )
}

impl Registry {
    /// `serve --config` on a filesystem root, with `sections` appended.
    fn start(sections: &str) -> Self {
        Self::start_with(sections, None, false)
    }

    fn start_with(
        sections: &str,
        credentials: Option<(&'static str, &'static str)>,
        debug: bool,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let mut yaml = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    \
             enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
            root.display()
        );
        let mut debug_addr = None;
        if debug {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            yaml.push_str(&format!(
                "  debug:\n    addr: {addr}\n    prometheus:\n      enabled: true\n"
            ));
            debug_addr = Some(addr);
        }
        if let Some((user, password)) = credentials {
            let file = dir.path().join("htpasswd");
            let line = format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap());
            std::fs::write(&file, line).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            ));
        }
        yaml.push_str(sections);
        let file = dir.path().join("config.yml");
        std::fs::write(&file, yaml).unwrap();
        Self {
            running: Running::start_with(dir, &["--config", file.to_str().unwrap()]),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            credentials,
            debug: debug_addr,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> reqwest::Response {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("http://{}{path}", self.running.addr)
        };
        let mut request = self
            .client
            .request(method, url)
            .header(header::USER_AGENT, "notifications-test/1 (linux, amd64)");
        if let Some((user, password)) = self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        if let Some((content_type, bytes)) = body {
            request = request
                .header(header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        request.send().await.unwrap()
    }

    /// A blob pushed with one `POST ?digest=`; its digest.
    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = Digest::sha256(bytes).to_string();
        let path = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
        let response = self
            .send(
                Method::POST,
                &path,
                Some(("application/octet-stream", bytes.to_vec())),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        digest
    }

    /// A config and a layer, and a manifest of them put at `reference`; the manifest's digest
    /// and size.
    async fn push_image(&self, repo: &str, reference: Option<&str>) -> (String, usize) {
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let layer = b"pretend this is a layer";
        let config_digest = self.push_blob(repo, config).await;
        let layer_digest = self.push_blob(repo, layer).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": layer.len()}],
        })
        .to_string();
        let digest = Digest::sha256(manifest.as_bytes()).to_string();
        let reference = reference.unwrap_or(&digest);
        let response = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                Some((OCI_MANIFEST, manifest.clone().into_bytes())),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        (digest, manifest.len())
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.debug.as_ref().unwrap());
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn with_action<'a>(events: &'a [Value], action: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["action"] == action).collect()
}

fn of_media_type<'a>(events: &'a [Value], media_type: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["target"]["mediaType"] == media_type)
        .collect()
}

#[tokio::test]
async fn a_blob_push_sends_a_push_event_with_distributions_fields() {
    let (receiver, url) = Receiver::start(Answer::Ok).await;
    let registry = Registry::start(&endpoint(&url, ""));
    let digest = registry.push_blob("team/app", b"a layer").await;
    let events = receiver.wait_for("push", |e| !e.is_empty()).await;
    let event = &events[0];
    assert_eq!(event["action"], "push");
    assert_eq!(
        event["target"],
        json!({
            "mediaType": "application/octet-stream",
            "size": 7,
            "digest": digest,
            "length": 7,
            "repository": "team/app",
            "url": format!("http://{}/v2/team/app/blobs/{digest}", registry.running.addr),
        })
    );
    assert_eq!(event["request"]["method"], "POST");
    assert_eq!(event["request"]["host"], registry.running.addr);
    assert_eq!(
        event["request"]["useragent"],
        "notifications-test/1 (linux, amd64)"
    );
    assert!(
        event["request"]["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(event["request"]["id"].as_str().unwrap().len(), 36);
    assert_eq!(event["actor"], json!({}));
    assert!(event["source"]["instanceID"].as_str().is_some());
    assert!(event["source"]["addr"].as_str().is_some());
    assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_chunked_upload_sends_one_push_event_at_its_commit() {
    let (receiver, url) = Receiver::start(Answer::Ok).await;
    let registry = Registry::start(&endpoint(&url, ""));
    let response = registry
        .send(Method::POST, "/v2/team/app/blobs/uploads/", None)
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let response = registry
        .send(
            Method::PATCH,
            &location,
            Some(("application/octet-stream", b"chunk".to_vec())),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let digest = Digest::sha256(b"chunk").to_string();
    let separator = if location.contains('?') { '&' } else { '?' };
    let response = registry
        .send(
            Method::PUT,
            &format!("{location}{separator}digest={digest}"),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    receiver.wait_for("push", |e| !e.is_empty()).await;
    // Nothing for the session's start or its chunk: a moment later, still the one event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = receiver.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["action"], "push");
    assert_eq!(events[0]["target"]["digest"], digest);
    assert_eq!(events[0]["request"]["method"], "PUT");
}

#[tokio::test]
async fn a_manifest_push_by_tag_names_the_tag_and_by_digest_does_not() {
    let (receiver, url) = Receiver::start(Answer::Ok).await;
    let registry = Registry::start(&endpoint(&url, ""));
    let (tagged, size) = registry.push_image("team/app", Some("v1")).await;
    let (by_digest, _) = registry.push_image("team/other", None).await;
    let events = receiver
        .wait_for("two manifest pushes", |e| {
            of_media_type(e, OCI_MANIFEST).len() == 2
        })
        .await;
    let manifests = of_media_type(&events, OCI_MANIFEST);
    let first = manifests
        .iter()
        .find(|e| e["target"]["repository"] == "team/app")
        .unwrap();
    assert_eq!(first["action"], "push");
    assert_eq!(first["target"]["digest"], tagged);
    assert_eq!(first["target"]["tag"], "v1");
    assert_eq!(first["target"]["repository"], "team/app");
    assert_eq!(first["target"]["size"], size);
    assert_eq!(first["target"]["length"], size);
    assert_eq!(
        first["target"]["url"],
        format!(
            "http://{}/v2/team/app/manifests/{tagged}",
            registry.running.addr
        )
    );
    let second = manifests
        .iter()
        .find(|e| e["target"]["repository"] == "team/other")
        .unwrap();
    assert_eq!(second["target"]["digest"], by_digest);
    assert!(second["target"].get("tag").is_none(), "{second:#}");
    // The config and the layer were pushed as blobs first, each with its own event.
    assert_eq!(of_media_type(&events, "application/octet-stream").len(), 4);
}

#[tokio::test]
async fn pulls_send_pull_events_naming_the_tag_only_when_the_request_did() {
    let (receiver, url) = Receiver::start(Answer::Ok).await;
    let registry = Registry::start(&endpoint(&url, ""));
    let (digest, _) = registry.push_image("team/app", Some("v1")).await;
    let layer = Digest::sha256(b"pretend this is a layer").to_string();
    for (method, path) in [
        (Method::GET, "/v2/team/app/manifests/v1".to_owned()),
        (Method::HEAD, format!("/v2/team/app/manifests/{digest}")),
        (Method::GET, format!("/v2/team/app/blobs/{layer}")),
    ] {
        let response = registry.send(method, &path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.bytes().await.unwrap();
    }
    let events = receiver
        .wait_for("three pulls", |e| with_action(e, "pull").len() == 3)
        .await;
    let pulls = with_action(&events, "pull");
    assert_eq!(pulls[0]["target"]["tag"], "v1");
    assert_eq!(pulls[0]["target"]["digest"], digest);
    assert_eq!(pulls[0]["request"]["method"], "GET");
    assert!(pulls[1]["target"].get("tag").is_none());
    assert_eq!(pulls[1]["request"]["method"], "HEAD");
    assert_eq!(pulls[1]["target"]["mediaType"], OCI_MANIFEST);
    assert_eq!(pulls[2]["target"]["digest"], layer);
    assert_eq!(pulls[2]["target"]["mediaType"], "application/octet-stream");
}

#[tokio::test]
async fn deletes_send_delete_events_for_the_manifest_its_tags_and_blobs() {
    let (receiver, url) = Receiver::start(Answer::Ok).await;
    let registry = Registry::start(&endpoint(&url, ""));
    let (digest, _) = registry.push_image("team/app", Some("v1")).await;
    let layer = Digest::sha256(b"pretend this is a layer").to_string();
    for path in [
        format!("/v2/team/app/manifests/{digest}"),
        format!("/v2/team/app/blobs/{layer}"),
    ] {
        let response = registry.send(Method::DELETE, &path, None).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{path}");
    }
    let events = receiver
        .wait_for("three deletes", |e| with_action(e, "delete").len() == 3)
        .await;
    let deletes: Vec<&Value> = with_action(&events, "delete")
        .into_iter()
        .map(|e| &e["target"])
        .collect();
    assert_eq!(
        deletes,
        [
            &json!({"digest": digest, "repository": "team/app"}),
            &json!({"repository": "team/app", "tag": "v1"}),
            &json!({"digest": layer, "repository": "team/app"}),
        ]
    );
}

#[tokio::test]
async fn a_mount_sends_a_mount_event_naming_the_source_repository() {
    let (receiver, url) = Receiver::start(Answer::Ok).await;
    let registry = Registry::start(&endpoint(&url, ""));
    let digest = registry.push_blob("team/app", b"shared layer").await;
    let path = format!("/v2/team/copy/blobs/uploads/?mount={digest}&from=team/app");
    let response = registry.send(Method::POST, &path, None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let events = receiver
        .wait_for("a mount", |e| !with_action(e, "mount").is_empty())
        .await;
    let mount = with_action(&events, "mount")[0];
    assert_eq!(mount["target"]["repository"], "team/copy");
    assert_eq!(mount["target"]["fromRepository"], "team/app");
    assert_eq!(mount["target"]["digest"], digest);
}

#[tokio::test]
async fn every_post_carries_the_configured_headers_and_every_event_a_unique_id() {
    let (receiver, url) = Receiver::start(Answer::Ok).await;
    let registry = Registry::start(&endpoint(&url, ""));
    registry.push_image("team/app", Some("v1")).await;
    let events = receiver.wait_for("three pushes", |e| e.len() == 3).await;
    for (headers, _) in receiver.posts() {
        assert_eq!(headers[header::AUTHORIZATION.as_str()], "Bearer hook-token");
        assert_eq!(headers[header::CONTENT_TYPE.as_str()], EVENTS_MEDIA_TYPE);
    }
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len());
}

#[tokio::test]
async fn the_actor_is_the_authenticated_user() {
    let (receiver, url) = Receiver::start(Answer::Ok).await;
    let registry = Registry::start_with(&endpoint(&url, ""), Some(("alice", "s3cret")), false);
    registry.push_blob("team/app", b"a layer").await;
    let events = receiver.wait_for("a push", |e| !e.is_empty()).await;
    assert_eq!(events[0]["actor"], json!({"name": "alice"}));
}

#[tokio::test]
async fn the_actor_is_the_token_subject() {
    use common::token_issuer::{KeyKind, Signer, access_entry, claims};
    let (receiver, url) = Receiver::start(Answer::Ok).await;
    let signer = Signer::self_signed(KeyKind::P256);
    let bundle = tempfile::tempdir().unwrap();
    let bundle_file = bundle.path().join("bundle.pem");
    std::fs::write(&bundle_file, signer.cert_pem()).unwrap();
    let registry = Registry::start(&format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:1/token\n    service: registry\n    \
         issuer: test-issuer\n    rootcertbundle: {}\n{}",
        bundle_file.display(),
        endpoint(&url, "")
    ));
    let token = signer.sign(
        &signer.kid_header(),
        &claims(
            "test-issuer",
            "registry",
            "carol",
            json!([access_entry("repository", "team/app", &["pull", "push"])]),
            Duration::from_secs(300),
        ),
    );
    let bytes = b"a layer pushed with a token";
    let digest = Digest::sha256(bytes);
    let pushed = registry
        .client
        .post(format!(
            "http://{}/v2/team/app/blobs/uploads/?digest={digest}",
            registry.running.addr
        ))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(&bytes[..])
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), StatusCode::CREATED);
    let events = receiver.wait_for("a push", |e| !e.is_empty()).await;
    assert_eq!(events[0]["action"], "push");
    assert_eq!(events[0]["actor"], json!({"name": "carol"}));
}

#[tokio::test]
async fn after_a_500_the_same_events_are_sent_again_with_the_same_ids() {
    let (receiver, url) = Receiver::start(Answer::FailFirst(2)).await;
    let registry = Registry::start(&endpoint(&url, ""));
    registry.push_blob("team/app", b"a layer").await;
    receiver
        .wait_for("three deliveries", |e| e.len() >= 3)
        .await;
    let posts = receiver.posts();
    let ids = |i: usize| -> Vec<Value> {
        posts[i].1["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].clone())
            .collect()
    };
    assert_eq!(ids(0), ids(1));
    assert_eq!(ids(0), ids(2));
    assert_eq!(posts[2].1, posts[0].1, "the same body, timestamps included");
}

#[tokio::test]
async fn ignore_rules_drop_events_by_media_type_and_by_action() {
    let (receiver, url) = Receiver::start(Answer::Ok).await;
    let registry = Registry::start(&endpoint(
        &url,
        "      ignoredmediatypes: [application/octet-stream]\n      ignore:\n        \
         actions: [pull]\n",
    ));
    registry.push_image("team/app", Some("v1")).await;
    let response = registry
        .send(Method::GET, "/v2/team/app/manifests/v1", None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // A last event that passes, after everything that must not: once it is in, the others
    // would have been too.
    registry.push_image("team/app", Some("v2")).await;
    let events = receiver
        .wait_for("the v2 push", |e| {
            e.iter().any(|e| e["target"]["tag"] == "v2")
        })
        .await;
    let kept: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"]["tag"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(kept, [("push", "v1"), ("push", "v2")]);
}

#[tokio::test]
async fn a_disabled_endpoint_receives_nothing() {
    let (disabled, disabled_url) = Receiver::start(Answer::Ok).await;
    let (enabled, enabled_url) = Receiver::start(Answer::Ok).await;
    let sections = format!(
        "notifications:\n  endpoints:\n    - name: off\n      url: {disabled_url}\n      \
         disabled: true\n    - name: on\n      url: {enabled_url}\n"
    );
    let registry = Registry::start(&sections);
    registry.push_blob("team/app", b"a layer").await;
    enabled.wait_for("a push", |e| !e.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(disabled.posts().is_empty());
}

#[tokio::test]
async fn a_failed_push_sends_no_event() {
    let (receiver, url) = Receiver::start(Answer::Ok).await;
    let registry = Registry::start(&endpoint(&url, ""));
    let wrong = Digest::sha256(b"something else").to_string();
    let path = format!("/v2/team/app/blobs/uploads/?digest={wrong}");
    let response = registry
        .send(
            Method::POST,
            &path,
            Some(("application/octet-stream", b"bytes".to_vec())),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = registry
        .send(
            Method::PUT,
            "/v2/team/app/manifests/v1",
            Some((OCI_MANIFEST, b"{}".to_vec())),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // A push that succeeds after them: its event is the first and only one.
    let digest = registry.push_blob("team/app", b"good").await;
    receiver.wait_for("a push", |e| !e.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = receiver.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["target"]["digest"], digest);
}

#[tokio::test]
async fn an_endpoint_that_never_answers_costs_pushes_nothing() {
    let (receiver, url) = Receiver::start(Answer::Never).await;
    let registry = Registry::start_with(&endpoint(&url, "      queuesize: 10\n"), None, true);
    let pushes = 200;
    for i in 0..pushes {
        // Each succeeds (push_blob asserts the 201); what pushes cost in time is measured by
        // bench/webhook.sh, not asserted.
        registry
            .push_blob("team/app", format!("blob {i}").as_bytes())
            .await;
    }
    // The endpoint is being tried (it holds a POST open), and the server still answers.
    assert!(!receiver.posts().is_empty());
    let response = registry.send(Method::GET, "/v2/", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = registry.metrics().await;
    let dropped = metric(
        &metrics,
        "layerstore_notifications_dropped_total{endpoint=\"hook\"}",
    );
    let pending = metric(
        &metrics,
        "layerstore_notifications_pending{endpoint=\"hook\"}",
    );
    assert!(pending <= 10.0, "{metrics}");
    // Of 200 events, at most the queue (10) and the batches in flight (each at most 100 events,
    // and one at a time) are held: the rest were dropped, and counted.
    assert!(dropped >= f64::from(pushes) - 10.0 - 100.0, "{metrics}");
}

/// The value of one sample of a Prometheus text exposition.
fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
}

#[tokio::test]
async fn deliveries_and_failed_posts_are_counted_in_the_metrics() {
    let (receiver, url) = Receiver::start(Answer::FailFirst(2)).await;
    let registry = Registry::start_with(&endpoint(&url, ""), None, true);
    let metrics = registry.metrics().await;
    let sent = "layerstore_notifications_sent_total{endpoint=\"hook\"}";
    let failures = "layerstore_notifications_failures_total{endpoint=\"hook\"}";
    // Present from the start, at zero.
    assert_eq!(metric(&metrics, sent), 0.0, "{metrics}");
    assert_eq!(metric(&metrics, failures), 0.0, "{metrics}");
    registry.push_blob("team/app", b"a layer").await;
    receiver.wait_for("three POSTs", |e| e.len() >= 3).await;
    // The worker counts a delivery once its POST is answered: wait for that.
    let deadline = Instant::now() + PATIENCE;
    let metrics = loop {
        let metrics = registry.metrics().await;
        if metric(&metrics, sent) >= 1.0 || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(metric(&metrics, sent), 1.0, "one event, delivered once");
    assert_eq!(metric(&metrics, failures), 2.0, "two POSTs answered 500");
}
