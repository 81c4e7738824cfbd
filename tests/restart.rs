//! An upload session outlives the server process: a chunked upload started on one
//! `layerstore serve` continues and completes on the next one started on the same root,
//! whether the first was killed outright (SIGKILL) or shut down gracefully (SIGTERM).
//!
//! These run the real binary over real HTTP, as a client would see a registry restart.

use std::io::BufReader;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus};
use std::time::{Duration, Instant};

use layerstore::Digest;
use rand::RngCore;
use reqwest::StatusCode;

mod common;
use common::server::{layerstore, spawn_server};

const BLOB_SIZE: usize = 16 << 20;
const HALF: usize = BLOB_SIZE / 2;
const REPO: &str = "test/restart";

/// A `layerstore serve` child process, killed when dropped.
struct Server {
    child: Child,
    base: String,
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts `layerstore serve` on an ephemeral port with filesystem storage in `root`;
    /// its log goes to `log`.
    fn start(root: &Path, log: &Path) -> Server {
        let mut command = layerstore();
        command
            .arg("serve")
            .args(["--addr", "127.0.0.1:0", "--root"])
            .arg(root);
        let spawned = spawn_server(command, log, Duration::from_secs(60));
        Server {
            base: spawned.url,
            child: spawned.child,
            _stdout: spawned.stdout,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the process with `signal` and waits (at most 60 s) for it to exit.
    fn stop(mut self, signal: &str) -> ExitStatus {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server still running 60 s after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {response:?}"))
        .to_str()
        .expect("ASCII header")
        .to_owned()
}

/// PATCHes `bytes` at `start` with `Content-Range`, as podman and skopeo send known-size chunks.
async fn patch(client: &reqwest::Client, url: &str, start: usize, bytes: &[u8]) -> String {
    let end = start + bytes.len() - 1;
    let response = client
        .patch(url)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{start}-{end}"))
        .body(bytes.to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{response:?}");
    header(&response, "range")
}

/// Half a blob goes up, the server stops with `signal`, a new server on the same root reports
/// the half, takes the rest and commits a blob with the right digest.
async fn upload_survives_restart(signal: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let mut blob = vec![0u8; BLOB_SIZE];
    rand::rng().fill_bytes(&mut blob);
    let digest = Digest::sha256(&blob);
    let client = reqwest::Client::new();

    let first = Server::start(&root, &dir.path().join("first.log"));
    let started = client
        .post(first.url(&format!("/v2/{REPO}/blobs/uploads/")))
        .send()
        .await
        .expect("POST");
    assert_eq!(started.status(), StatusCode::ACCEPTED, "{started:?}");
    let location = header(&started, "location");
    assert!(
        location.starts_with('/'),
        "Location {location:?} should be a path, so it stays valid on another server"
    );
    let range = patch(&client, &first.url(&location), 0, &blob[..HALF]).await;
    assert_eq!(range, format!("0-{}", HALF - 1));

    let exit = first.stop(signal);
    if signal == "TERM" {
        assert!(exit.success(), "graceful shutdown should exit 0: {exit:?}");
    }

    let second = Server::start(&root, &dir.path().join("second.log"));
    let status = client
        .get(second.url(&location))
        .send()
        .await
        .expect("GET upload status");
    assert_eq!(status.status(), StatusCode::NO_CONTENT, "{status:?}");
    assert_eq!(header(&status, "range"), format!("0-{}", HALF - 1));

    let range = patch(&client, &second.url(&location), HALF, &blob[HALF..]).await;
    assert_eq!(range, format!("0-{}", BLOB_SIZE - 1));

    let separator = if location.contains('?') { '&' } else { '?' };
    let committed = client
        .put(second.url(&format!("{location}{separator}digest={digest}")))
        .send()
        .await
        .expect("PUT ?digest=");
    assert_eq!(committed.status(), StatusCode::CREATED, "{committed:?}");

    let fetched = client
        .get(second.url(&format!("/v2/{REPO}/blobs/{digest}")))
        .send()
        .await
        .expect("GET blob");
    assert_eq!(fetched.status(), StatusCode::OK, "{fetched:?}");
    let body = fetched.bytes().await.expect("blob body");
    assert_eq!(body.len(), BLOB_SIZE);
    assert_eq!(Digest::sha256(&body), digest);
}

#[tokio::test]
async fn upload_resumes_after_the_server_is_killed() {
    upload_survives_restart("KILL").await;
}

#[tokio::test]
async fn upload_resumes_after_a_graceful_shutdown() {
    upload_survives_restart("TERM").await;
}
