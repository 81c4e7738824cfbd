//! `layerstore gc`, run as a user would: the built binary on a filesystem store on disk, also
//! while `layerstore serve` uses it; and `serve` collecting garbage on a schedule.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use layerstore::layout::{KeyLayout, local_path};
use layerstore::manifest::media_type;
use layerstore::{Backend, Digest, ErrorKind, Reference, RepositoryName, Store, Tag};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::server::Running;

const REPO: &str = "team/app";

/// `layerstore gc <args>` with no `REGISTRY_*` variable inherited, not yet run.
fn gc_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_layerstore"));
    command.arg("gc").args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REGISTRY_") {
            command.env_remove(name);
        }
    }
    command
}

fn gc(args: &[&str]) -> Output {
    gc_command(args).output().expect("run layerstore")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[track_caller]
fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            text(&output.stdout),
            text(&output.stderr)
        )
    })
}

fn keys_of(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Every file under `root` and its size.
fn files(root: &Path) -> BTreeMap<PathBuf, u64> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                walk(&entry.path(), out);
            } else {
                out.insert(entry.path(), meta.len());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &mut out);
    out
}

/// Bytes of the files under `root` that hold registry data: everything but `gc/`, where a
/// run leaves its state (the generation) behind, by design.
fn stored_bytes(root: &Path) -> u64 {
    let bookkeeping = root.join("gc");
    files(root)
        .iter()
        .filter(|(path, _)| !path.starts_with(&bookkeeping))
        .map(|(_, size)| size)
        .sum()
}

/// An image as pushed: its manifest, and every blob with its bytes (manifest included).
struct Image {
    manifest: Bytes,
    digest: Digest,
    blobs: Vec<(Digest, Bytes)>,
}

impl Image {
    /// A config and one layer of `layer_size` bytes, all derived from `seed`.
    fn new(seed: &str, layer_size: usize) -> Self {
        let config = Bytes::from(format!(r#"{{"architecture":"amd64","seed":"{seed}"}}"#));
        let layer: Bytes = format!("{seed} layer ")
            .bytes()
            .cycle()
            .take(layer_size)
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::sha256(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": Digest::sha256(&layer).to_string(), "size": layer.len()}],
        });
        let manifest = Bytes::from(serde_json::to_vec(&manifest).unwrap());
        let digest = Digest::sha256(&manifest);
        Self {
            blobs: vec![
                (Digest::sha256(&config), config),
                (Digest::sha256(&layer), layer),
                (digest, manifest.clone()),
            ],
            manifest,
            digest,
        }
    }

    /// Bytes of its blobs: what collecting it frees.
    fn bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, b)| b.len() as u64).sum()
    }

    fn layer(&self) -> Digest {
        self.blobs[1].0
    }

    fn data_files(&self, root: &Path) -> Vec<PathBuf> {
        self.blobs
            .iter()
            .map(|(d, _)| local_path(root, &KeyLayout.blob_data(d)))
            .collect()
    }
}

fn reference(tag: Option<&str>, image: &Image) -> Reference {
    match tag {
        Some(t) => Reference::Tag(Tag::parse(t).unwrap()),
        None => Reference::Digest(image.digest),
    }
}

/// A filesystem store in a fresh directory, written through the library: `kept` tagged
/// `v1`, `old` tagged `v0`, `stray` pushed by digest only (untagged).
struct Fixture {
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    kept: Image,
    old: Image,
    stray: Image,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let f = Self {
            dir,
            runtime,
            kept: Image::new("kept", 64 << 10),
            old: Image::new("old", 256 << 10),
            stray: Image::new("stray", 32 << 10),
        };
        for (image, tag) in [
            (&f.kept, Some("v1")),
            (&f.old, Some("v0")),
            (&f.stray, None),
        ] {
            f.runtime.block_on(async {
                let r = f.store().repository(repo());
                for (d, bytes) in &image.blobs[..2] {
                    r.put_blob(d, bytes.clone()).await.unwrap();
                }
                r.put_manifest(
                    &reference(tag, image),
                    image.manifest.clone(),
                    Some(media_type::OCI_MANIFEST),
                )
                .await
                .unwrap();
            });
        }
        f
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn root(&self) -> &str {
        self.path().to_str().unwrap()
    }

    fn store(&self) -> Store {
        Store::new(Backend::filesystem(self.path()).unwrap())
    }

    /// What `DELETE /v2/<repo>/manifests/<digest>` does.
    fn delete_manifest(&self, image: &Image) {
        self.runtime.block_on(async {
            self.store()
                .repository(repo())
                .delete_manifest(&image.digest)
                .await
                .unwrap();
        });
    }

    /// Pulls `reference` through the library: the manifest's bytes and its blobs', each
    /// checked against its digest.
    fn pull(&self, reference: &Reference) -> layerstore::Result<Vec<Bytes>> {
        self.runtime.block_on(async {
            let r = self.store().repository(repo());
            let manifest = r.get_manifest(reference).await?;
            let parsed = layerstore::Manifest::parse(
                manifest.bytes.clone(),
                Some(&manifest.info.media_type),
            )?;
            let mut all = vec![manifest.bytes];
            for (_, descriptor) in parsed.references() {
                let read = r.read_blob(&descriptor.digest, None).await?;
                let chunks: Vec<Bytes> = read.stream.try_collect().await?;
                let bytes = Bytes::from(chunks.concat());
                assert_eq!(Digest::sha256(&bytes), descriptor.digest);
                all.push(bytes);
            }
            Ok(all)
        })
    }
}

fn repo() -> RepositoryName {
    RepositoryName::parse(REPO).unwrap()
}

#[track_caller]
fn all_exist(paths: &[PathBuf]) -> bool {
    paths.iter().all(|p| p.exists())
}

#[track_caller]
fn none_exists(paths: &[PathBuf]) -> bool {
    paths.iter().all(|p| !p.exists())
}

// ---- the command ------------------------------------------------------------------------------

#[test]
fn a_dry_run_reports_as_json_what_a_run_would_remove_and_changes_no_file() {
    let f = Fixture::new();
    f.delete_manifest(&f.old);
    let before = files(f.path());
    let output = gc(&["--root", f.root(), "--dry-run", "--json"]);
    succeeded(&output);
    assert_eq!(files(f.path()), before, "a dry run wrote or deleted a file");
    let report = json_of(&output);
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["generation"], 0);
    let plan = &report["plan"];
    assert_eq!(plan["repositories"], 1);
    assert_eq!(plan["manifests"], 2, "{plan}");
    assert_eq!(plan["manifests_kept"], 2, "{plan}");
    assert_eq!(plan["blobs"], 9, "{plan}");
    assert_eq!(plan["blobs_collected"], 3, "{plan}");
    assert_eq!(plan["bytes_collected"], f.old.bytes(), "{plan}");
    for (field, value) in report["removed"].as_object().unwrap() {
        assert_eq!(value, 0, "removed.{field} in a dry run");
    }
}

#[test]
fn the_json_report_has_the_plan_what_was_removed_and_the_run() {
    let f = Fixture::new();
    let output = gc(&["--root", f.root(), "--dry-run", "--json"]);
    succeeded(&output);
    let report = json_of(&output);
    assert_eq!(
        keys_of(&report),
        ["dry_run", "generation", "plan", "removed", "took_over"]
    );
    assert_eq!(
        keys_of(&report["plan"]),
        [
            "blobs",
            "blobs_collected",
            "blobs_marked",
            "bytes",
            "bytes_collected",
            "links_collected",
            "manifests",
            "manifests_collected",
            "manifests_kept",
            "mark_set_bytes",
            "repositories",
            "repositories_emptied"
        ]
    );
    assert_eq!(
        keys_of(&report["removed"]),
        [
            "blobs",
            "bytes",
            "leftover_uploads",
            "links",
            "manifests",
            "repositories",
            "rescued"
        ]
    );
}

#[test]
fn a_dry_run_as_text_says_what_would_go_and_that_nothing_did() {
    let f = Fixture::new();
    f.delete_manifest(&f.old);
    let output = gc(&["--root", f.root(), "--dry-run"]);
    succeeded(&output);
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("found 1 repositories, 2 manifests"),
        "{stdout}"
    );
    assert!(stdout.contains("would remove 3 blobs"), "{stdout}");
    assert!(stdout.contains("dry run: nothing was deleted"), "{stdout}");
    assert!(all_exist(&f.old.data_files(f.path())));
}

#[test]
fn the_text_report_says_what_was_removed_and_the_bytes_freed() {
    let f = Fixture::new();
    f.delete_manifest(&f.old);
    let output = gc(&["--root", f.root(), "--grace", "0s"]);
    succeeded(&output);
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("removed 3 blobs, 0 untagged manifests"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("({} bytes)", f.old.bytes())),
        "{stdout}"
    );
    assert!(stdout.contains("freed "), "{stdout}");
    assert!(stdout.contains("generation 1"), "{stdout}");
}

#[test]
fn without_delete_untagged_an_untagged_manifest_and_its_blobs_stay() {
    let f = Fixture::new();
    let output = gc(&["--root", f.root(), "--grace", "0s", "--json"]);
    succeeded(&output);
    let report = json_of(&output);
    assert_eq!(report["removed"]["blobs"], 0, "{report}");
    assert_eq!(report["removed"]["manifests"], 0, "{report}");
    assert_eq!(f.pull(&Reference::Digest(f.stray.digest)).unwrap().len(), 3);
}

#[test]
fn delete_untagged_removes_a_manifest_no_tag_reaches_and_its_blobs() {
    let f = Fixture::new();
    let output = gc(&[
        "--root",
        f.root(),
        "--grace",
        "0s",
        "--delete-untagged",
        "--json",
    ]);
    succeeded(&output);
    let report = json_of(&output);
    assert_eq!(report["removed"]["manifests"], 1, "{report}");
    assert_eq!(report["removed"]["blobs"], 3, "{report}");
    assert_eq!(report["removed"]["bytes"], f.stray.bytes(), "{report}");
    let err = f.pull(&Reference::Digest(f.stray.digest)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ManifestUnknown, "{err}");
    assert!(none_exists(&f.stray.data_files(f.path())));
    for tag in ["v1", "v0"] {
        let tag = Reference::Tag(Tag::parse(tag).unwrap());
        assert_eq!(f.pull(&tag).unwrap().len(), 3, "{tag}");
    }
}

#[test]
fn a_configuration_file_names_the_storage() {
    let f = Fixture::new();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n",
            f.root()
        ),
    )
    .unwrap();
    let output = gc(&[
        "--config",
        config.path().to_str().unwrap(),
        "--dry-run",
        "--json",
    ]);
    succeeded(&output);
    assert_eq!(json_of(&output)["plan"]["blobs"], 9);
}

#[test]
fn a_bad_grace_is_a_usage_error_naming_the_flag_and_nothing_runs() {
    let f = Fixture::new();
    for bad in ["soon", "-1s", "5"] {
        let output = gc(&["--root", f.root(), &format!("--grace={bad}")]);
        assert_eq!(output.status.code(), Some(2), "{bad}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains("--grace"), "{bad}: {stderr}");
        assert!(stderr.contains("is not a duration"), "{bad}: {stderr}");
        assert!(output.stdout.is_empty());
    }
    assert!(!f.path().join("gc").exists(), "a run started");
}

#[test]
fn a_run_while_another_is_alive_exits_non_zero_saying_so() {
    let f = Fixture::new();
    // Alive for longer than the second run watches it (30 s).
    let mut first = gc_command(&["--root", f.root(), "--grace", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the first run");
    let lock = local_path(f.path(), &KeyLayout.gc_lock());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lock.exists() {
        assert!(
            Instant::now() < deadline,
            "the first run never took the lock"
        );
        assert!(first.try_wait().unwrap().is_none(), "the first run ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    // It watches the lock's heartbeat for 30 s before it decides the holder is alive.
    let second = gc(&["--root", f.root(), "--grace", "0s"]);
    assert_eq!(second.status.code(), Some(1));
    let stderr = text(&second.stderr);
    assert!(
        stderr.contains("another garbage collection is running"),
        "{stderr}"
    );
    assert!(second.stdout.is_empty());
    assert!(first.try_wait().unwrap().is_none(), "the first run ended");
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn a_manifest_that_cannot_be_read_stops_the_run_before_any_delete_and_names_scrub() {
    let f = Fixture::new();
    f.delete_manifest(&f.old);
    let manifest = local_path(f.path(), &KeyLayout.blob_data(&f.kept.digest));
    std::fs::write(&manifest, b"not a manifest").unwrap();
    let output = gc(&["--root", f.root(), "--grace", "0s"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("layerstore scrub"), "{stderr}");
    assert!(
        stderr.contains(&KeyLayout.blob_data(&f.kept.digest).to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was deleted"), "{stderr}");
    assert!(all_exist(&f.old.data_files(f.path())));
}

// ---- beside a running server ----------------------------------------------------------------

/// A client of a running `layerstore serve`.
struct Client {
    http: reqwest::Client,
    base: String,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    fn of(server: &Running) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            base: format!("http://{}/v2/{REPO}", server.addr),
            runtime: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Bytes) {
        self.runtime.block_on(async {
            let response = request.send().await.expect("request");
            (response.status(), response.bytes().await.expect("body"))
        })
    }

    /// Pushes `image`'s config and layer (monolithic uploads), then its manifest as `tag`.
    fn push(&self, image: &Image, tag: &str) {
        for (digest, bytes) in &image.blobs[..2] {
            let (status, _) = self.send(
                self.http
                    .post(format!("{}/blobs/uploads/?digest={digest}", self.base))
                    .header("content-type", "application/octet-stream")
                    .body(bytes.clone()),
            );
            assert_eq!(status, StatusCode::CREATED, "pushing {digest}");
        }
        let (status, _) = self.send(
            self.http
                .put(format!("{}/manifests/{tag}", self.base))
                .header("content-type", media_type::OCI_MANIFEST)
                .body(image.manifest.clone()),
        );
        assert_eq!(status, StatusCode::CREATED, "pushing the manifest {tag}");
    }

    fn delete_manifest(&self, image: &Image) {
        let (status, _) = self.send(
            self.http
                .delete(format!("{}/manifests/{}", self.base, image.digest)),
        );
        assert_eq!(status, StatusCode::ACCEPTED);
    }

    fn head_blob(&self, digest: &Digest) -> StatusCode {
        self.send(self.http.head(format!("{}/blobs/{digest}", self.base)))
            .0
    }

    /// Pulls `tag` and checks it is `image`, byte for byte.
    #[track_caller]
    fn pulls(&self, tag: &str, image: &Image) {
        let (status, body) = self.send(self.http.get(format!("{}/manifests/{tag}", self.base)));
        assert_eq!(status, StatusCode::OK, "GET manifest {tag}");
        assert_eq!(body, image.manifest);
        for (digest, bytes) in &image.blobs[..2] {
            let (status, body) = self.send(self.http.get(format!("{}/blobs/{digest}", self.base)));
            assert_eq!(status, StatusCode::OK, "GET {digest}");
            assert_eq!(&body, bytes);
        }
    }
}

#[test]
fn gc_beside_a_running_server_returns_a_deleted_images_bytes_on_disk_and_the_kept_image_still_pulls()
 {
    let server = Running::start();
    let root = server.dir.path().join("data");
    let client = Client::of(&server);
    let (kept, old) = (Image::new("kept", 64 << 10), Image::new("old", 1 << 20));
    client.push(&kept, "v1");
    client.push(&old, "v0");
    // The server has the old layer in its cache, then deletes the manifest.
    assert_eq!(client.head_blob(&old.layer()), StatusCode::OK);
    client.delete_manifest(&old);
    let before = stored_bytes(&root);

    let output = gc(&["--root", root.to_str().unwrap(), "--grace", "0s", "--json"]);
    succeeded(&output);
    let after = stored_bytes(&root);
    let report = json_of(&output);
    assert_eq!(report["removed"]["blobs"], 3, "{report}");
    assert_eq!(report["removed"]["bytes"], old.bytes(), "{report}");
    let freed = before.saturating_sub(after);
    assert!(
        freed >= old.bytes(),
        "freed {freed} bytes on disk, the deleted image had {}",
        old.bytes()
    );
    assert!(none_exists(&old.data_files(&root)));
    assert_eq!(client.head_blob(&old.layer()), StatusCode::NOT_FOUND);
    client.pulls("v1", &kept);
}

// ---- serve, on a schedule ---------------------------------------------------------------------

#[test]
fn serve_with_a_gc_schedule_collects_a_deleted_image_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let (kept, old) = (Image::new("kept", 64 << 10), Image::new("old", 256 << 10));
    // Pushed before the schedule starts: with a grace of 0 s, a layer pushed while a run
    // waits could go before its manifest comes (that is what the grace period is for).
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let r = Store::new(Backend::filesystem(&root).unwrap()).repository(repo());
        for (image, tag) in [(&kept, "v1"), (&old, "v0")] {
            for (d, bytes) in &image.blobs[..2] {
                r.put_blob(d, bytes.clone()).await.unwrap();
            }
            r.put_manifest(
                &reference(Some(tag), image),
                image.manifest.clone(),
                Some(media_type::OCI_MANIFEST),
            )
            .await
            .unwrap();
        }
    });
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    \
             enabled: true\n  maintenance:\n    gc:\n      enabled: true\n      interval: 1s\n      \
             grace: 0s\nhttp:\n  addr: 127.0.0.1:0\n",
            root.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let server = Running::start_with(dir, &["--config", &config]);
    let client = Client::of(&server);
    client.pulls("v0", &old);
    client.delete_manifest(&old);

    // A liveness bound only: runs come every second or so and each waits 3 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    let gone = old.data_files(&root);
    let collected = |log: &str| {
        log.lines()
            .any(|l| l.contains("garbage collection finished") && !l.contains("blobs_removed=0 "))
    };
    while !(none_exists(&gone) && collected(&server.log())) {
        assert!(
            Instant::now() < deadline,
            "no scheduled run collected the deleted image; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(client.head_blob(&old.layer()), StatusCode::NOT_FOUND);
    client.pulls("v1", &kept);
}
