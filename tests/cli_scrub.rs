//! `layerstore scrub`, run as a user would: the built binary on a filesystem store on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use layerstore::layout::{KeyLayout, local_path};
use layerstore::manifest::media_type;
use layerstore::{Backend, Digest, Reference, RepositoryName, Store, Tag};
use serde_json::{Value, json};

/// Runs `layerstore scrub <args>` with no `REGISTRY_*` variable inherited.
fn scrub(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_layerstore"));
    command.arg("scrub").args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REGISTRY_") {
            command.env_remove(name);
        }
    }
    command.output().expect("run layerstore")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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

/// A filesystem store in a fresh directory holding one tagged image (config, layer, manifest)
/// and one loose blob; returns the directory, the layer's and the loose blob's digests.
struct Fixture {
    dir: tempfile::TempDir,
    layer: Digest,
    loose: Digest,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (layer, loose) = runtime.block_on(async {
            let store = Store::new(Backend::filesystem(dir.path()).unwrap());
            let r = store.repository(RepositoryName::parse("team/app").unwrap());
            let put = |bytes: &'static [u8]| {
                let r = r.clone();
                async move {
                    let d = Digest::sha256(bytes);
                    r.put_blob(&d, Bytes::from_static(bytes)).await.unwrap();
                    d
                }
            };
            let config = put(b"{}").await;
            let layer = put(b"layer bytes, pretend gzip").await;
            let loose = put(b"a blob no manifest uses").await;
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": media_type::OCI_MANIFEST,
                "config": {"mediaType": media_type::OCI_EMPTY, "digest": config.to_string(), "size": 2},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 25}],
            });
            r.put_manifest(
                &Reference::Tag(Tag::parse("v1").unwrap()),
                Bytes::from(serde_json::to_vec(&manifest).unwrap()),
                Some(media_type::OCI_MANIFEST),
            )
            .await
            .unwrap();
            (layer, loose)
        });
        Self { dir, layer, loose }
    }

    fn root(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn data_file(&self, digest: &Digest) -> PathBuf {
        local_path(self.dir.path(), &KeyLayout.blob_data(digest))
    }

    /// Changes a blob's bytes on disk behind the store's back.
    fn corrupt(&self, digest: &Digest) {
        let file = self.data_file(digest);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&file, bytes).unwrap();
    }
}

fn quarantined(root: &Path) -> bool {
    root.join("quarantine").exists()
}

#[test]
fn a_clean_store_exits_zero_with_a_json_report_of_what_was_checked() {
    let f = Fixture::new();
    let output = scrub(&["--root", f.root(), "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report = json_of(&output);
    assert_eq!(report["problems"], json!([]));
    assert_eq!(report["empty_repositories"], json!([]));
    let counts = &report["counts"];
    for (field, value) in [
        ("repositories", 1),
        ("blobs", 4),
        ("layer_links", 3),
        ("manifests", 1),
        ("tags", 1),
        ("referrers", 0),
        ("problems", 0),
        ("repaired", 0),
    ] {
        assert_eq!(counts[field], json!(value), "{field} in {counts}");
    }
    assert!(counts["bytes_hashed"].as_u64().unwrap() > 0, "{counts}");
}

#[test]
fn a_corrupt_blob_exits_non_zero_and_is_named_in_the_json_report() {
    let f = Fixture::new();
    f.corrupt(&f.loose);
    let output = scrub(&["--root", f.root(), "--json"]);
    assert!(!output.status.success());
    let report = json_of(&output);
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    let p = &problems[0];
    assert_eq!(p["kind"], "blob_corrupt");
    assert_eq!(p["digest"], f.loose.to_string());
    assert_eq!(p["key"], KeyLayout.blob_data(&f.loose).to_string());
    assert_eq!(p["repaired"], false);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("1 problem remains (1 of them can be repaired with --repair)"),
        "{stderr}"
    );
    assert!(!quarantined(f.dir.path()), "a check changes nothing");
}

#[test]
fn repair_that_fixes_everything_exits_zero_and_the_next_scrub_is_clean() {
    let f = Fixture::new();
    f.corrupt(&f.loose);
    let output = scrub(&["--root", f.root(), "--repair", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report = json_of(&output);
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["repaired"], true, "{p}");
            p["kind"].as_str().unwrap()
        })
        .collect();
    assert_eq!(kinds, ["blob_corrupt", "layer_link_dangling"]);
    assert!(!f.data_file(&f.loose).exists());
    assert!(quarantined(f.dir.path()));
    let again = scrub(&["--root", f.root()]);
    assert!(again.status.success(), "{}", text(&again.stdout));
}

#[test]
fn a_problem_repair_cannot_fix_keeps_the_exit_non_zero() {
    let f = Fixture::new();
    // The manifest's layer: once quarantined, the manifest lacks it until it is pushed again.
    f.corrupt(&f.layer);
    let output = scrub(&["--root", f.root(), "--repair"]);
    assert!(!output.status.success());
    let stdout = text(&output.stdout);
    assert!(stdout.contains("manifest_reference_missing"), "{stdout}");
    assert!(
        text(&output.stderr).contains("1 problem remains"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn the_text_report_names_each_problem_and_its_key() {
    let f = Fixture::new();
    f.corrupt(&f.loose);
    let output = scrub(&["--root", f.root()]);
    assert!(!output.status.success());
    let stdout = text(&output.stdout);
    assert!(stdout.contains("checked 4 blobs"), "{stdout}");
    assert!(
        stdout.contains("problems found: 1, repaired: 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("blob_corrupt: {}", KeyLayout.blob_data(&f.loose))),
        "{stdout}"
    );
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
    let output = scrub(&["--config", config.path().to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(json_of(&output)["counts"]["blobs"], 4);
}

#[test]
fn a_rate_that_is_not_a_positive_number_is_refused() {
    let f = Fixture::new();
    for bad in ["0", "-5", "fast"] {
        let output = scrub(&["--root", f.root(), &format!("--rate={bad}")]);
        assert!(!output.status.success(), "{bad}");
        assert!(
            text(&output.stderr).contains("MB/s"),
            "{}",
            text(&output.stderr)
        );
    }
}
