//! Group commit on the filesystem backend: concurrent writes share their directory fsyncs, and
//! a power loss at any moment — in particular between a group's renames and the fsync that
//! makes them durable — loses nothing that was acknowledged and shows nothing in part.
//!
//! Every store here is the production filesystem backend (`Backend::filesystem_with` over the
//! real directory), with its file-system calls going through [`PowerCut`], which can hold
//! directory fsyncs and undo whatever was not yet durable.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use layerstore::manifest::media_type;
use layerstore::upload::{FileSystem, StdFileSystem};
use layerstore::{Backend, Digest, ErrorKind, Store};
use object_store::local::LocalFileSystem;

fn store_with(root: &Path, fs: &Arc<PowerCutFs>) -> Store {
    let objects = LocalFileSystem::new_with_prefix(root)
        .unwrap()
        .with_fsync(true)
        .with_automatic_cleanup(true);
    Store::new(Backend::filesystem_with(
        root,
        Arc::new(objects),
        Arc::new(PowerCut(Arc::clone(fs))),
    ))
}

/// The store a restart after the power cut opens.
fn restarted(root: &Path) -> Store {
    Store::new(Backend::filesystem(root).unwrap())
}

fn blob(round: u64, i: u64) -> Bytes {
    Bytes::from(format!("round {round} blob {i} ").repeat(300))
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A blob reads back whole in `name`, or is not there at all.
async fn whole_or_absent(store: &Store, name: &str, data: &Bytes) -> bool {
    let d = Digest::sha256(data);
    match store.repository(repo(name)).read_blob(&d, None).await {
        Ok(read) => {
            let got: Vec<Bytes> = read.stream.try_collect().await.unwrap();
            assert_eq!(
                got.concat(),
                data.to_vec(),
                "{name}: partial or wrong bytes"
            );
            true
        }
        Err(e) if e.kind() == ErrorKind::BlobUnknown => false,
        Err(e) => panic!("{name}: {e}"),
    }
}

const WRITERS: u64 = 8;

/// Round 1 is pushed and acknowledged; round 2 runs with directory fsyncs on paths holding
/// `held` stopped until all of its `renamed_name` renames are made; then the power goes.
/// Returns the root and how many changes the cut undid.
async fn cut_between_renames_and_their_fsync(held: &str, renamed_name: &str) {
    let root = tempfile::tempdir().unwrap();
    let fs = PowerCutFs::new();
    let store = store_with(root.path(), &fs);
    let r = store.repository(repo("group/app"));
    for i in 0..WRITERS {
        let data = blob(1, i);
        r.put_blob(&Digest::sha256(&data), data).await.unwrap();
    }

    let before = fs.renames_to(renamed_name);
    fs.hold_dir_syncs(held);
    let round2: Vec<_> = (0..WRITERS)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let data = blob(2, i);
                r.put_blob(&Digest::sha256(&data), data).await
            })
        })
        .collect();
    until("every writer of round 2 to rename", || {
        fs.renames_to(renamed_name) >= before + WRITERS
    })
    .await;
    until("a directory fsync to be held", || fs.held() > 0).await;
    let lost = fs.cut();
    assert!(lost > 0, "the cut came after everything was durable");
    fs.release();
    let mut acknowledged = vec![];
    for (i, put) in round2.into_iter().enumerate() {
        if put.await.unwrap().is_ok() {
            acknowledged.push(i as u64);
        }
    }
    assert!(
        acknowledged.is_empty(),
        "acknowledged before the fsync covering them: {acknowledged:?}"
    );

    let after = restarted(root.path());
    for i in 0..WRITERS {
        assert!(
            whole_or_absent(&after, "group/app", &blob(1, i)).await,
            "acknowledged blob {i} of round 1 lost"
        );
        whole_or_absent(&after, "group/app", &blob(2, i)).await;
    }
    // And the restarted store can push round 2 again.
    let again = after.repository(repo("group/app"));
    for i in 0..WRITERS {
        let data = blob(2, i);
        again.put_blob(&Digest::sha256(&data), data).await.unwrap();
        assert!(whole_or_absent(&after, "group/app", &blob(2, i)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_between_a_groups_blob_renames_and_their_fsync_loses_nothing_acknowledged() {
    cut_between_renames_and_their_fsync("blobs", "data").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_between_a_groups_link_renames_and_their_fsync_loses_nothing_acknowledged() {
    cut_between_renames_and_their_fsync("_layers", "link").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_blob_put_is_durable_when_it_returns() {
    let root = tempfile::tempdir().unwrap();
    let fs = PowerCutFs::new();
    let store = store_with(root.path(), &fs);
    let data = blob(1, 0);
    store
        .repository(repo("lone/app"))
        .put_blob(&Digest::sha256(&data), data.clone())
        .await
        .unwrap();
    fs.cut();
    assert!(whole_or_absent(&restarted(root.path()), "lone/app", &data).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_manifest_put_is_durable_when_it_returns() {
    let root = tempfile::tempdir().unwrap();
    let fs = PowerCutFs::new();
    let store = store_with(root.path(), &fs);
    let (manifest, _) = push_image(&store, "lone/img", "v1", 2).await;
    let digest = put_manifest(&store, "lone/img", &tag("v1"), &manifest).await;
    fs.cut();
    let after = restarted(root.path());
    let got = after
        .repository(repo("lone/img"))
        .get_manifest(&tag("v1"))
        .await
        .unwrap();
    assert_eq!(got.info.digest, digest);
    assert_eq!(got.bytes, manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_link_writes_share_their_directory_fsync() {
    let root = tempfile::tempdir().unwrap();
    let fs = PowerCutFs::new();
    let store = store_with(root.path(), &fs);
    let r = store.repository(repo("group/app"));
    // The repository's directories exist: each new link makes only its own directory, in
    // `_layers/sha256/`, which must then be fsynced for every one of them.
    let first = blob(0, 0);
    r.put_blob(&Digest::sha256(&first), first).await.unwrap();
    let shared = root.path().join("repositories/group/app/_layers/sha256");
    let before = fs.dir_syncs(&shared);
    let links = fs.renames_to("link");

    fs.hold_dir_syncs("_layers/sha256");
    let puts: Vec<_> = (0..WRITERS)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let data = blob(1, i);
                r.put_blob(&Digest::sha256(&data), data).await
            })
        })
        .collect();
    until("every link to be renamed into place", || {
        fs.renames_to("link") >= links + WRITERS
    })
    .await;
    // Let the last ones queue for the fsync.
    tokio::time::sleep(Duration::from_millis(100)).await;
    fs.release();
    for put in puts {
        put.await.unwrap().unwrap();
    }
    let syncs = fs.dir_syncs(&shared) - before;
    assert!(
        syncs <= 3,
        "{WRITERS} concurrent links made {syncs} fsyncs of their shared directory"
    );
}

/// How the second writer of a blob the first has renamed but not yet made durable pushes it.
#[derive(Clone, Copy)]
enum SecondPush {
    /// `put_blob`: the store's check for bytes it has, before anything is written.
    Whole,
    /// An upload session's last chunk and commit in one call (`PUT ?digest=` with a body):
    /// the check at publishing.
    Session,
}

/// Writer A renames blob X into place and is held before the fsync of its directory; writer B
/// then pushes X into another repository, finds the bytes there, and must not be acknowledged
/// before an fsync of that directory completes. The power goes; whatever was acknowledged
/// must read back whole after the restart.
async fn second_push_of_a_blob_not_yet_durable(how: SecondPush) {
    let root = tempfile::tempdir().unwrap();
    let fs = PowerCutFs::new();
    let store = store_with(root.path(), &fs);
    // The repositories' directories exist, so that B's link has nothing held to wait for.
    for name in ["dedupe/a", "dedupe/b"] {
        let warm = Bytes::from(format!("warm-up of {name}"));
        store
            .repository(repo(name))
            .put_blob(&Digest::sha256(&warm), warm)
            .await
            .unwrap();
    }
    let data = blob(7, 0);
    let digest = Digest::sha256(&data);

    let before = fs.renames_to("data");
    fs.hold_dir_syncs("blobs/sha256");
    let a = {
        let (r, data) = (store.repository(repo("dedupe/a")), data.clone());
        tokio::spawn(async move { r.put_blob(&digest, data).await })
    };
    until("writer A to rename the blob into place", || {
        fs.renames_to("data") > before
    })
    .await;
    until("writer A's directory fsync to be held", || fs.held() > 0).await;

    let (b, bytes) = (store.repository(repo("dedupe/b")), data.clone());
    let mut b = tokio::spawn(async move {
        match how {
            SecondPush::Whole => b.put_blob(&digest, bytes).await,
            SecondPush::Session => {
                let id = b.start_upload().await?.id;
                b.finish_upload(&id, None, in_pieces(&bytes, 1000), &digest, None)
                    .await
            }
        }
    });
    // Unfixed, B is acknowledged in milliseconds; fixed, it waits on A's held fsync.
    let early = tokio::time::timeout(Duration::from_secs(2), &mut b).await;
    fs.cut();
    fs.release();
    let b_acknowledged = match early {
        Ok(joined) => joined.unwrap().is_ok(),
        Err(_) => b.await.unwrap().is_ok(),
    };
    let a_acknowledged = a.await.unwrap().is_ok();

    let after = restarted(root.path());
    for (name, acknowledged) in [("dedupe/a", a_acknowledged), ("dedupe/b", b_acknowledged)] {
        if acknowledged {
            assert!(
                whole_or_absent(&after, name, &data).await,
                "{name}: acknowledged, then lost in the power cut"
            );
        }
    }
    assert!(
        !b_acknowledged,
        "the second push was acknowledged before the bytes it found were durable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_of_a_blob_another_writer_has_not_yet_made_durable_waits_for_its_fsync() {
    second_push_of_a_blob_not_yet_durable(SecondPush::Whole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_of_a_blob_another_writer_has_not_yet_made_durable_waits_for_its_fsync() {
    second_push_of_a_blob_not_yet_durable(SecondPush::Session).await;
}

/// The files a manifest put by tag publishes, in the order it must publish them.
fn manifest_files(root: &Path, name: &str, digest: &Digest, tag: &str) -> [std::path::PathBuf; 3] {
    let hex = digest.hex();
    let repo = root.join("repositories").join(name).join("_manifests");
    [
        root.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2])),
        repo.join(format!("revisions/sha256/{hex}/link")),
        repo.join(format!("tags/{tag}/link")),
    ]
}

/// Releases held fsyncs when dropped: a failed assertion must not leave a blocking-pool
/// thread held, which would stop the test's runtime from shutting down.
struct ReleaseOnDrop(Arc<PowerCutFs>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Files under `dir` whose names hold `#`: staging files not (yet) renamed into place.
fn staging_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = vec![];
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if entry.file_name().to_string_lossy().contains('#') {
                found.push(path);
            }
        }
    }
    found
}

/// An image pushed into `name` on a store over the power-cut file system; then a put of its
/// manifest by tag `v1` started with the directory fsyncs on paths holding `held` stopped
/// (released when the returned guard drops, even on a failed assertion).
struct HeldManifestPut {
    root: tempfile::TempDir,
    fs: Arc<PowerCutFs>,
    store: Store,
    manifest: Bytes,
    put: tokio::task::JoinHandle<layerstore::Result<layerstore::ManifestPut>>,
    _release: ReleaseOnDrop,
}

async fn held_manifest_put(name: &str, held: &str) -> HeldManifestPut {
    let root = tempfile::tempdir().unwrap();
    let fs = PowerCutFs::new();
    let store = store_with(root.path(), &fs);
    let (manifest, _) = push_image(&store, name, "v1", 1).await;
    fs.hold_dir_syncs(held);
    let release = ReleaseOnDrop(Arc::clone(&fs));
    let put = {
        let (r, manifest) = (store.repository(repo(name)), manifest.clone());
        tokio::spawn(async move {
            r.put_manifest(&tag("v1"), manifest, Some(media_type::OCI_MANIFEST))
                .await
        })
    };
    until("a directory fsync to be held", || fs.held() > 0).await;
    HeldManifestPut {
        root,
        fs,
        store,
        manifest,
        put,
        _release: release,
    }
}

/// A manifest put by tag runs with the directory fsyncs of its `held`-th file (0: the bytes,
/// 1: the revision link, 2: the tag) held; no later file may be renamed into place before that
/// fsync, and after a power cut there the restarted store has a prefix of the three, never a
/// tag without its revision or a revision without its bytes.
async fn manifest_put_cut_while_publishing(held: usize) {
    let dirs = ["blobs/sha256/", "_manifests/revisions/", "_manifests/tags/"];
    let HeldManifestPut {
        root,
        fs,
        store: _,
        manifest,
        put,
        _release,
    } = held_manifest_put("order/img", dirs[held]).await;
    let digest = Digest::sha256(&manifest);
    let files = manifest_files(root.path(), "order/img", &digest, "v1");
    // The later files are staged beside their places; then room for a rename that should not
    // come.
    for later in &files[held + 1..] {
        let dir = later.parent().unwrap();
        until(&format!("a staged file in {}", dir.display()), || {
            staging_files(dir).len() == 1
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, file) in files.iter().enumerate() {
        assert_eq!(
            file.exists(),
            i <= held,
            "{} renamed into place with file {held}'s fsync held",
            file.display()
        );
    }
    assert!(fs.cut() > 0, "the cut came after everything was durable");
    fs.release();
    assert!(
        put.await.unwrap().is_err(),
        "acknowledged before its writes were durable"
    );

    let present: Vec<bool> = files.iter().map(|f| f.exists()).collect();
    assert!(
        present.windows(2).all(|w| w[0] || !w[1]),
        "not a prefix after the cut: {present:?} (bytes, revision, tag)"
    );
    // Each file was durable before the next one was renamed: those before the held one stay.
    assert!(
        present[..held].iter().all(|p| *p),
        "a file published before the held one was lost: {present:?} (bytes, revision, tag)"
    );
    let after = restarted(root.path());
    let r = after.repository(repo("order/img"));
    match r.get_manifest(&tag("v1")).await {
        Ok(got) => assert_eq!(got.bytes, manifest),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ManifestUnknown, "{e}"),
    }
    // The restarted store can put it again.
    let again = put_manifest(&after, "order/img", &tag("v1"), &manifest).await;
    assert_eq!(again, digest);
    assert_eq!(r.get_manifest(&tag("v1")).await.unwrap().bytes, manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_while_a_manifests_bytes_are_published_leaves_no_revision_or_tag() {
    manifest_put_cut_while_publishing(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_while_a_manifests_revision_is_published_leaves_no_tag() {
    manifest_put_cut_while_publishing(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_while_a_tag_is_published_keeps_the_revision_before_it() {
    manifest_put_cut_while_publishing(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_puts_links_are_staged_while_its_bytes_are_published() {
    let HeldManifestPut {
        root,
        fs,
        manifest,
        put,
        _release,
        ..
    } = held_manifest_put("early/img", "blobs/sha256/").await;
    let files = manifest_files(root.path(), "early/img", &Digest::sha256(&manifest), "v1");
    // The revision link and the tag are written (and fdatasynced) under staging names beside
    // their places while the bytes wait: publishing them is a rename and a directory fsync.
    for link in &files[1..] {
        let dir = link.parent().unwrap();
        until(&format!("a staged link in {}", dir.display()), || {
            staging_files(dir).len() == 1
        })
        .await;
        assert!(!link.exists());
    }
    fs.release();
    put.await.unwrap().unwrap();
    assert!(files.iter().all(|f| f.exists()));
    assert_eq!(staging_files(root.path()), Vec::<std::path::PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_put_whose_caller_stops_waiting_ends_whole_with_no_staging_file_left() {
    let HeldManifestPut {
        root,
        fs,
        store,
        manifest,
        put,
        _release,
    } = held_manifest_put("gone/img", "blobs/sha256/").await;
    // The client goes away mid-put (the server drops the request's future).
    put.abort();
    fs.release();
    let r = store.repository(repo("gone/img"));
    until("the put to end on its own", || {
        staging_files(root.path()).is_empty()
    })
    .await;
    let mut got = r.get_manifest(&tag("v1")).await;
    for _ in 0..4000 {
        if got.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        got = r.get_manifest(&tag("v1")).await;
    }
    assert_eq!(got.unwrap().bytes, manifest);
    assert_eq!(staging_files(root.path()), Vec::<std::path::PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_a_cleanup_removes_while_a_tag_is_put_is_made_durable_again() {
    let root = tempfile::tempdir().unwrap();
    let fs = PowerCutFs::new();
    let store = store_with(root.path(), &fs);
    let (manifest, _) = push_image(&store, "race/img", "v1", 1).await;
    // Put by digest first: the tag put then makes no directory but the tag's own, and
    // fsyncs nothing above `_manifests/tags/` unless it finds that directory made anew.
    let digest = Digest::sha256(&manifest);
    put_manifest(
        &store,
        "race/img",
        &layerstore::Reference::Digest(digest),
        &manifest,
    )
    .await;
    // `_manifests/tags/` in place, empty and durable, as the delete of a repository's last tag
    // leaves it for a moment before its cleanup removes it.
    let tags = root.path().join("repositories/race/img/_manifests/tags");
    std::fs::create_dir_all(&tags).unwrap();
    StdFileSystem.sync_dir(tags.parent().unwrap()).unwrap();
    // The cleanup removes it right after the put has seen it there.
    fs.vanish_after_lookup(&tags);
    put_manifest(&store, "race/img", &tag("v1"), &manifest).await;
    assert!(fs.vanished(), "the put never looked at {}", tags.display());
    fs.cut();
    let after = restarted(root.path());
    let got = after
        .repository(repo("race/img"))
        .get_manifest(&tag("v1"))
        .await
        .expect("an acknowledged tag lost in the power cut");
    assert_eq!(got.bytes, manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_manifest_puts_that_share_a_revision_fsync_publish_no_tag_before_it() {
    let root = tempfile::tempdir().unwrap();
    let fs = PowerCutFs::new();
    let store = store_with(root.path(), &fs);
    let mut manifests = vec![];
    for i in 0..WRITERS {
        let (manifest, _) = push_image(&store, "shared/img", &format!("s{i}"), 1).await;
        manifests.push(manifest);
    }
    // The directory the revisions share exists, so every put fsyncs it: the first one's
    // fsync is held, the others queue behind it (joined, waiting as futures).
    let (warm, _) = push_image(&store, "shared/img", "warm", 1).await;
    put_manifest(&store, "shared/img", &tag("warm"), &warm).await;
    fs.hold_dir_syncs_of(
        &root
            .path()
            .join("repositories/shared/img/_manifests/revisions/sha256"),
    );
    let _release = ReleaseOnDrop(Arc::clone(&fs));
    let puts: Vec<_> = manifests
        .iter()
        .enumerate()
        .map(|(i, manifest)| {
            let (r, manifest) = (store.repository(repo("shared/img")), manifest.clone());
            tokio::spawn(async move {
                r.put_manifest(
                    &tag(&format!("t{i}")),
                    manifest,
                    Some(media_type::OCI_MANIFEST),
                )
                .await
            })
        })
        .collect();
    until("a revision fsync to be held", || fs.held() > 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..WRITERS {
        let tag_link = root
            .path()
            .join(format!("repositories/shared/img/_manifests/tags/t{i}/link"));
        assert!(
            !tag_link.exists(),
            "tag t{i} renamed into place while the revisions' fsync is held"
        );
    }
    fs.cut();
    fs.release();
    for put in puts {
        assert!(put.await.unwrap().is_err(), "acknowledged before durable");
    }
    let after = restarted(root.path());
    let r = after.repository(repo("shared/img"));
    for (i, manifest) in manifests.iter().enumerate() {
        match r.get_manifest(&tag(&format!("t{i}"))).await {
            Ok(got) => assert_eq!(&got.bytes, manifest),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ManifestUnknown, "{e}"),
        }
    }
}
