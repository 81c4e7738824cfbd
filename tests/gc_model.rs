//! Garbage collection against a plain model (issue 12, part 5): random client operations
//! (push, mount, HEAD, unlink, manifest put by tag or by digest, untag, manifest delete) before
//! a run and while it runs, through two stores (one that served before the run, with its
//! layerinfo cache, and a replica), interleaved with the run by holding it at chosen reads
//! (in the mark) and writes (in the sweep) of its backend.
//!
//! The model is three sets (blob links, manifests, tags), and, while the run goes, what a
//! client was told during it. Checked at every step: what the model says is there and the run
//! cannot be deleting answers as the model says (a HEAD 200, a mount, a manifest put that
//! succeeds), what it says is not there is refused (`BLOB_UNKNOWN`, `MANIFEST_BLOB_UNKNOWN`,
//! `MANIFEST_UNKNOWN`), and what the run may be deleting answers either way, never otherwise.
//! After the run: no blob a client was told about during it (HEAD 200, push 201, mount 201,
//! the blobs of a manifest put 201) is gone, every manifest the run had to keep reads back
//! with its blobs, and nothing points at what is gone. After a second run with nothing in
//! between, the store holds exactly what the model reaches.
//!
//! The run has a grace period of zero: what clients were told before it may go, so the
//! operations "during" it start once every store has seen it (`STATE_MAX_AGE` after its
//! state is written); that is the protocol's promise.
//!
//! Cases: 8 on memory, 4 on the filesystem (each waits two runs of about 3 s); with a fixed
//! seed unless `PROPTEST_RNG_SEED` names one; `PROPTEST_CASES` overrides both counts.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::faulty::Hold;
use common::*;
use futures::TryStreamExt;
use layerstore::gc::{GcLockTiming, GcOptions, GcPhase, GcProgress, STATE_MAX_AGE};
use layerstore::layout::KeyLayout;
use layerstore::manifest::media_type;
use layerstore::{Digest, ErrorKind, Reference, Store, Tag};
use object_store::ObjectStoreExt;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::json;

const REPOS: [&str; 2] = ["model/a", "model/b"];
const TAGS: [&str; 3] = ["t0", "t1", "t2"];
/// Blobs pushed; images reference the first `REFERENCED` of them, the others stay loose.
const BLOBS: usize = 7;
const REFERENCED: usize = 5;
const IMAGES: usize = 5;

/// A run that holds its heartbeat for a minute, so no write of the run is a heartbeat and a
/// held request never makes it stop.
fn options(delete_untagged: bool) -> GcOptions {
    GcOptions {
        delete_untagged,
        grace: Duration::ZERO,
        dry_run: false,
        lock: GcLockTiming {
            heartbeat: Duration::from_secs(60),
            stale_after: Duration::from_secs(240),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Contents

fn blob(i: usize) -> Bytes {
    Bytes::from(format!("blob {i} of the model ").repeat(10 + i))
}

fn blob_digest(i: usize) -> Digest {
    Digest::sha256(&blob(i))
}

/// The blobs image `j` references: its config, then its layers.
fn image_blobs(j: usize) -> Vec<usize> {
    let mut blobs = vec![j % REFERENCED, (j + 1) % REFERENCED];
    if j == 0 {
        blobs.push(3);
    }
    blobs
}

fn image(j: usize) -> Bytes {
    let blobs = image_blobs(j);
    let descriptor = |media: &str, i: usize| json!({"mediaType": media, "digest": blob_digest(i).to_string(), "size": blob(i).len()});
    let layers: Vec<_> = blobs[1..]
        .iter()
        .map(|&i| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", i))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", blobs[0]),
        "layers": layers,
    });
    Bytes::from(serde_json::to_vec(&manifest).unwrap())
}

fn image_digest(j: usize) -> Digest {
    Digest::sha256(&image(j))
}

fn tag_of(t: usize) -> Tag {
    Tag::parse(TAGS[t]).unwrap()
}

// ---------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy)]
enum Op {
    Push {
        repo: usize,
        blob: usize,
    },
    /// Mounts into `to` from the other repository.
    Mount {
        to: usize,
        blob: usize,
    },
    Head {
        repo: usize,
        blob: usize,
    },
    Unlink {
        repo: usize,
        blob: usize,
    },
    /// By tag (tagging an image is putting it by tag) or by digest.
    Put {
        repo: usize,
        image: usize,
        tag: Option<usize>,
    },
    Untag {
        repo: usize,
        tag: usize,
    },
    Delete {
        repo: usize,
        image: usize,
    },
}

/// An operation and the store it goes through: the one that served before the run, or a
/// replica.
#[derive(Debug, Clone, Copy)]
struct Step {
    op: Op,
    replica: bool,
}

fn op() -> impl Strategy<Value = Op> {
    let repo = 0..REPOS.len();
    let blob = 0..BLOBS;
    let image = 0..IMAGES;
    let tag = 0..TAGS.len();
    prop_oneof![
        5 => (repo.clone(), blob.clone()).prop_map(|(repo, blob)| Op::Push { repo, blob }),
        2 => (repo.clone(), blob.clone()).prop_map(|(to, blob)| Op::Mount { to, blob }),
        3 => (repo.clone(), blob.clone()).prop_map(|(repo, blob)| Op::Head { repo, blob }),
        1 => (repo.clone(), blob).prop_map(|(repo, blob)| Op::Unlink { repo, blob }),
        4 => (repo.clone(), image.clone(), prop::option::of(tag.clone()))
            .prop_map(|(repo, image, tag)| Op::Put { repo, image, tag }),
        1 => (repo.clone(), tag).prop_map(|(repo, tag)| Op::Untag { repo, tag }),
        1 => (repo, image).prop_map(|(repo, image)| Op::Delete { repo, image }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (op(), any::<bool>()).prop_map(|(op, replica)| Step { op, replica })
}

/// One case: operations before the run; then batches during it, the first while it waits,
/// each next one while it is held at the next of `holds` (in the mark: a read; in the sweep:
/// a write; a hold the run never reaches lets its batch run after it).
#[derive(Debug, Clone)]
struct Case {
    delete_untagged: bool,
    before: Vec<Step>,
    holds: Vec<Hold>,
    batches: Vec<Vec<Step>>,
}

fn case() -> impl Strategy<Value = Case> {
    let hold = prop_oneof![
        // Reads 1 and 2 and writes 1 and 2 are the run's own, before it waits.
        1 => (3u64..=15).prop_map(Hold::Read),
        3 => (3u64..=30).prop_map(Hold::Write),
    ];
    // Before the run: pushes of some blobs into some repositories, so that manifests can be
    // put, then anything.
    let pushes = prop::collection::btree_set((0..REPOS.len(), 0..BLOBS), 8..=14);
    let before = (pushes, prop::collection::vec(step(), 8..=24)).prop_map(|(pushes, steps)| {
        let pushes = pushes.into_iter().map(|(repo, blob)| Step {
            op: Op::Push { repo, blob },
            replica: false,
        });
        pushes.chain(steps).collect::<Vec<_>>()
    });
    (any::<bool>(), before, prop::collection::vec(hold, 1..=3))
        .prop_flat_map(|(delete_untagged, before, mut holds)| {
            // Reads (the mark) come before writes (the sweep), each in order.
            holds.sort_by_key(|h| match h {
                Hold::Read(n) => (0, *n),
                Hold::Write(n) => (1, *n),
            });
            holds.dedup();
            let batches =
                prop::collection::vec(prop::collection::vec(step(), 2..=8), holds.len() + 1);
            (Just(delete_untagged), Just(before), Just(holds), batches)
        })
        .prop_map(|(delete_untagged, before, holds, batches)| Case {
            delete_untagged,
            before,
            holds,
            batches,
        })
}

// ---------------------------------------------------------------------------------------
// The model

type Link = (usize, usize);
type Image = (usize, usize);
type TagKey = (usize, usize);

/// What the model knows of the run in progress.
#[derive(Debug, Default)]
struct Run {
    /// Manifests and tags when clients started seeing the run.
    start_manifests: BTreeSet<Image>,
    start_tags: BTreeMap<TagKey, usize>,
    /// Tags set or removed, and manifests deleted (or found gone), during the run.
    touched_tags: BTreeSet<TagKey>,
    deleted: BTreeSet<Image>,
    /// Manifests a put acknowledged during the run (and not deleted since).
    put: BTreeSet<Image>,
    /// Links a HEAD 200, push 201, mount 201 or manifest put 201 acknowledged during the run
    /// (and not unlinked since), and their blobs.
    acked_links: BTreeSet<Link>,
    acked_blobs: BTreeSet<usize>,
}

#[derive(Debug, Default)]
struct Model {
    delete_untagged: bool,
    links: BTreeSet<Link>,
    manifests: BTreeSet<Image>,
    tags: BTreeMap<TagKey, usize>,
    /// Links a client removed through the other store, which may still have them in its
    /// layerinfo cache: its HEAD may say they exist, for up to the cache's lifetime (the
    /// documented price of a per-process cache; a new GC generation clears it).
    stale: BTreeSet<(usize, Link)>,
    run: Option<Run>,
}

/// What an operation may answer.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Yes,
    No,
    Either,
}

impl Model {
    /// Whether the run must keep manifest `m` because it was kept from the start: present
    /// and (with `delete_untagged`) tagged when clients started seeing the run, untouched
    /// since. Outside a run, whatever the model holds.
    fn kept_from_start(&self, m: Image) -> bool {
        let Some(run) = &self.run else {
            return self.manifests.contains(&m);
        };
        run.start_manifests.contains(&m)
            && !run.deleted.contains(&m)
            && (!self.delete_untagged
                || run.start_tags.iter().any(|(&(r, t), &image)| {
                    (r, image) == m && !run.touched_tags.contains(&(r, t))
                }))
    }

    /// Whether the run cannot delete manifest `m` (which the model holds).
    fn manifest_safe(&self, m: Image) -> bool {
        self.manifests.contains(&m)
            && (self.kept_from_start(m) || self.run.as_ref().is_some_and(|r| r.put.contains(&m)))
    }

    /// Whether the mark keeps blob `d`: a manifest kept from the start references it.
    fn marked(&self, d: usize) -> bool {
        self.manifests
            .iter()
            .any(|&(r, j)| image_blobs(j).contains(&d) && self.kept_from_start((r, j)))
    }

    /// Whether the run cannot delete link `l` (which the model holds).
    fn link_safe(&self, l: Link) -> bool {
        self.links.contains(&l)
            && (self.run.is_none()
                || self.marked(l.1)
                || self
                    .run
                    .as_ref()
                    .is_some_and(|r| r.acked_links.contains(&l)))
    }

    /// Whether the run cannot delete the bytes of blob `d`.
    fn bytes_safe(&self, d: usize) -> bool {
        let Some(run) = &self.run else {
            return true;
        };
        self.marked(d)
            || run.acked_blobs.contains(&d)
            || run.put.iter().any(|&(_, j)| image_blobs(j).contains(&d))
    }

    fn expect_link(&self, l: Link) -> Expect {
        if !self.links.contains(&l) {
            Expect::No
        } else if self.link_safe(l) {
            Expect::Yes
        } else {
            Expect::Either
        }
    }

    fn expect_manifest(&self, m: Image) -> Expect {
        if !self.manifests.contains(&m) {
            Expect::No
        } else if self.manifest_safe(m) {
            Expect::Yes
        } else {
            Expect::Either
        }
    }

    fn ack_link(&mut self, l: Link) {
        self.links.insert(l);
        self.stale.retain(|(_, stale)| *stale != l);
        if let Some(run) = &mut self.run {
            run.acked_links.insert(l);
            run.acked_blobs.insert(l.1);
        }
    }

    fn remove_link(&mut self, l: Link) {
        self.links.remove(&l);
        if let Some(run) = &mut self.run {
            run.acked_links.remove(&l);
        }
    }

    fn remove_manifest(&mut self, m: Image) {
        self.manifests.remove(&m);
        let gone: Vec<TagKey> = self
            .tags
            .iter()
            .filter(|&(&(r, _), &j)| (r, j) == m)
            .map(|(&k, _)| k)
            .collect();
        for k in gone {
            self.tags.remove(&k);
            if let Some(run) = &mut self.run {
                run.touched_tags.insert(k);
            }
        }
        if let Some(run) = &mut self.run {
            run.deleted.insert(m);
            run.put.remove(&m);
        }
    }

    fn start_run(&mut self) {
        // Every store has read the new generation, and so cleared its cache.
        self.stale.clear();
        self.run = Some(Run {
            start_manifests: self.manifests.clone(),
            start_tags: self.tags.clone(),
            ..Run::default()
        });
    }
}

// ---------------------------------------------------------------------------------------
// Applying operations

fn kind_of<T>(result: &layerstore::Result<T>) -> Option<ErrorKind> {
    result.as_ref().err().map(layerstore::Error::kind)
}

#[track_caller]
fn check_outcome(what: &str, expect: Expect, ok: bool, refused: bool, error: &str) {
    let fine = match expect {
        Expect::Yes => ok,
        Expect::No => refused,
        Expect::Either => ok || refused,
    };
    assert!(
        fine,
        "{what}: expected {expect:?}, got {}",
        if ok { "success" } else { error }
    );
}

/// Applies `step` through `stores` (the first: the store that served before the run; the
/// second: a replica) and checks its outcome against the model, which it then updates.
async fn apply(stores: &[Store; 2], step: Step, model: &mut Model) {
    let through = usize::from(step.replica);
    let store = &stores[through];
    let what = format!("{step:?}");
    match step.op {
        Op::Push { repo: r, blob: d } => {
            let got = store
                .repository(repo(REPOS[r]))
                .put_blob(&blob_digest(d), blob(d))
                .await;
            check_outcome(&what, Expect::Yes, got.is_ok(), false, &format!("{got:?}"));
            model.ack_link((r, d));
        }
        Op::Mount { to, blob: d } => {
            let from = 1 - to;
            let got = store
                .repository(repo(REPOS[to]))
                .mount_blob(&repo(REPOS[from]), &blob_digest(d))
                .await;
            let mounted = matches!(got, Ok(true));
            let expect = model.expect_link((from, d));
            check_outcome(
                &what,
                expect,
                mounted,
                matches!(got, Ok(false)),
                &format!("{got:?}"),
            );
            if mounted {
                model.ack_link((to, d));
            }
        }
        Op::Head { repo: r, blob: d } => {
            let got = store
                .repository(repo(REPOS[r]))
                .stat_blob(&blob_digest(d))
                .await;
            let refused = kind_of(&got) == Some(ErrorKind::BlobUnknown);
            let stale = !model.links.contains(&(r, d)) && model.stale.contains(&(through, (r, d)));
            let expect = if stale {
                Expect::Either
            } else {
                model.expect_link((r, d))
            };
            check_outcome(&what, expect, got.is_ok(), refused, &format!("{got:?}"));
            if got.is_ok() && !stale {
                model.ack_link((r, d));
            }
        }
        Op::Unlink { repo: r, blob: d } => {
            let got = store
                .repository(repo(REPOS[r]))
                .unlink_blob(&blob_digest(d))
                .await;
            let refused = kind_of(&got) == Some(ErrorKind::BlobUnknown);
            let expect = model.expect_link((r, d));
            check_outcome(&what, expect, got.is_ok(), refused, &format!("{got:?}"));
            model.remove_link((r, d));
            model.stale.insert((1 - through, (r, d)));
        }
        Op::Put {
            repo: r,
            image: j,
            tag,
        } => {
            let reference = match tag {
                Some(t) => Reference::Tag(tag_of(t)),
                None => Reference::Digest(image_digest(j)),
            };
            let got = store
                .repository(repo(REPOS[r]))
                .put_manifest(&reference, image(j), Some(media_type::OCI_MANIFEST))
                .await;
            let refused = kind_of(&got) == Some(ErrorKind::ManifestBlobUnknown);
            let expects: Vec<Expect> = image_blobs(j)
                .into_iter()
                .map(|d| model.expect_link((r, d)))
                .collect();
            let expect = if expects.contains(&Expect::No) {
                Expect::No
            } else if expects.contains(&Expect::Either) {
                Expect::Either
            } else {
                Expect::Yes
            };
            check_outcome(&what, expect, got.is_ok(), refused, &format!("{got:?}"));
            if got.is_ok() {
                model.manifests.insert((r, j));
                for d in image_blobs(j) {
                    model.ack_link((r, d));
                }
                if let Some(t) = tag {
                    model.tags.insert((r, t), j);
                }
                if let Some(run) = &mut model.run {
                    run.put.insert((r, j));
                    if let Some(t) = tag {
                        run.touched_tags.insert((r, t));
                    }
                }
            }
        }
        Op::Untag { repo: r, tag: t } => {
            let got = store
                .repository(repo(REPOS[r]))
                .delete_tag(&tag_of(t))
                .await;
            let refused = kind_of(&got) == Some(ErrorKind::ManifestUnknown);
            let expect = match model.tags.get(&(r, t)) {
                None => Expect::No,
                Some(&j) => model.expect_manifest((r, j)),
            };
            check_outcome(&what, expect, got.is_ok(), refused, &format!("{got:?}"));
            model.tags.remove(&(r, t));
            if let Some(run) = &mut model.run {
                run.touched_tags.insert((r, t));
            }
        }
        Op::Delete { repo: r, image: j } => {
            let got = store
                .repository(repo(REPOS[r]))
                .delete_manifest(&image_digest(j))
                .await;
            let refused = kind_of(&got) == Some(ErrorKind::ManifestUnknown);
            let expect = model.expect_manifest((r, j));
            check_outcome(&what, expect, got.is_ok(), refused, &format!("{got:?}"));
            model.remove_manifest((r, j));
        }
    }
}

/// The holds still to come; moving to the next lets the held request go on.
struct Holds {
    faulty: Arc<FaultyStore>,
    next: VecDeque<Hold>,
}

impl Holds {
    fn advance(&mut self) {
        match self.next.pop_front() {
            Some(hold) => self.faulty.move_pause(hold),
            None => self.faulty.release(),
        }
    }
}

/// Applies a batch during the run. An operation that waits for the run (a write of a blob
/// the run is deleting) makes the run go on to its next hold, then past every hold.
async fn apply_batch(stores: &[Store; 2], batch: &[Step], model: &mut Model, holds: &mut Holds) {
    for &step in batch {
        let mut applying = std::pin::pin!(apply(stores, step, model));
        loop {
            match tokio::time::timeout(Duration::from_millis(500), &mut applying).await {
                Ok(()) => break,
                Err(_) => holds.advance(),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checks

async fn read_blob_in(store: &Store, r: usize, d: usize) -> layerstore::Result<Bytes> {
    let read = store
        .repository(repo(REPOS[r]))
        .read_blob(&blob_digest(d), None)
        .await?;
    let chunks: Vec<Bytes> = read.stream.try_collect().await?;
    Ok(Bytes::from(chunks.concat()))
}

async fn stored_bytes(b: &TestBackend, digest: &Digest) -> Option<Bytes> {
    match b.store.get(&KeyLayout.blob_data(digest)).await {
        Ok(got) => Some(got.bytes().await.unwrap()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("reading {digest}: {e}"),
    }
}

/// What the store holds, read from its keys.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stored {
    links: BTreeSet<Link>,
    manifests: BTreeSet<Image>,
    tags: BTreeSet<TagKey>,
}

async fn stored(b: &TestBackend) -> Stored {
    let found: BTreeSet<String> = keys(b, "repositories").await.into_iter().collect();
    let mut s = Stored::default();
    for (r, name) in REPOS.iter().enumerate() {
        let name = repo(name);
        for d in 0..BLOBS {
            if found.contains(KeyLayout.layer_link(&name, &blob_digest(d)).as_ref()) {
                s.links.insert((r, d));
            }
        }
        for j in 0..IMAGES {
            if found.contains(
                KeyLayout
                    .manifest_revision(&name, &image_digest(j))
                    .as_ref(),
            ) {
                s.manifests.insert((r, j));
            }
        }
        for t in 0..TAGS.len() {
            if found.contains(KeyLayout.tag_link(&name, &tag_of(t)).as_ref()) {
                s.tags.insert((r, t));
            }
        }
    }
    s
}

/// After the first run: what it had to keep is there and reads back; nothing it left points
/// at what it deleted; it only deleted. Then the model forgets what the run deleted.
async fn check_after_run_and_reconcile(b: &TestBackend, model: &mut Model) {
    let store = store_on(b);
    let now = stored(b).await;
    // The run only deletes: the store holds nothing the model does not.
    assert!(now.links.is_subset(&model.links), "{now:?}\n{model:?}");
    assert!(
        now.manifests.is_subset(&model.manifests),
        "{now:?}\n{model:?}"
    );
    let model_tags: BTreeSet<TagKey> = model.tags.keys().copied().collect();
    assert!(now.tags.is_subset(&model_tags), "{now:?}\n{model:?}");

    // What the run had to keep.
    for &l in &model.links {
        if model.link_safe(l) {
            assert!(
                now.links.contains(&l),
                "link {l:?} lost by the run: {model:?}"
            );
        }
    }
    for &m in &model.manifests {
        if model.manifest_safe(m) {
            assert!(now.manifests.contains(&m), "manifest {m:?} lost: {model:?}");
        }
    }
    for d in 0..BLOBS {
        if model.bytes_safe(d) {
            assert_eq!(
                stored_bytes(b, &blob_digest(d)).await,
                Some(blob(d)),
                "blob {d} lost by the run: {model:?}"
            );
        }
    }
    for (&(r, t), &j) in &model.tags {
        if model.manifest_safe((r, j)) {
            assert!(now.tags.contains(&(r, t)), "tag {t} of {r} lost");
        }
    }

    // Nothing left points at what is gone: every link reads back, every manifest and its
    // blobs, every tag resolves to a manifest that is there.
    for &(r, d) in &now.links {
        let got = read_blob_in(&store, r, d).await;
        assert_eq!(got.ok(), Some(blob(d)), "link ({r}, {d}) without its blob");
    }
    for &(r, j) in &now.manifests {
        let got = store
            .repository(repo(REPOS[r]))
            .get_manifest(&Reference::Digest(image_digest(j)))
            .await
            .unwrap_or_else(|e| panic!("manifest ({r}, {j}) listed but unreadable: {e}"));
        assert_eq!(got.bytes, image(j));
        for d in image_blobs(j) {
            let bytes = stored_bytes(b, &blob_digest(d)).await;
            assert_eq!(bytes, Some(blob(d)), "manifest ({r}, {j}) lost blob {d}");
        }
    }
    for &(r, t) in &now.tags {
        let j = model.tags[&(r, t)];
        assert!(
            now.manifests.contains(&(r, j)),
            "tag {t} of {r} names nothing"
        );
    }

    // The model forgets what the run deleted.
    model.run = None;
    model.links = now.links;
    model.manifests = now.manifests;
    model.tags.retain(|k, _| now.tags.contains(k));
}

/// After a second run with nothing in between: exactly what the model reaches is stored.
async fn check_exactly_what_is_reachable(b: &TestBackend, model: &Model) {
    let kept: BTreeSet<Image> = model
        .manifests
        .iter()
        .copied()
        .filter(|&(r, j)| {
            !model.delete_untagged || model.tags.iter().any(|(&(tr, _), &tj)| (tr, tj) == (r, j))
        })
        .collect();
    let marked: BTreeSet<usize> = kept.iter().flat_map(|&(_, j)| image_blobs(j)).collect();
    let layout = KeyLayout;
    let mut expected: BTreeSet<String> = BTreeSet::new();
    expected.insert(layout.gc_state().to_string());
    for &d in &marked {
        expected.insert(layout.blob_data(&blob_digest(d)).to_string());
    }
    for &(r, j) in &kept {
        let name = repo(REPOS[r]);
        expected.insert(layout.blob_data(&image_digest(j)).to_string());
        expected.insert(
            layout
                .manifest_revision(&name, &image_digest(j))
                .to_string(),
        );
    }
    let mut non_empty = BTreeSet::new();
    for &(r, d) in &model.links {
        if marked.contains(&d) {
            expected.insert(
                layout
                    .layer_link(&repo(REPOS[r]), &blob_digest(d))
                    .to_string(),
            );
            non_empty.insert(r);
        }
    }
    for (&(r, t), &j) in &model.tags {
        assert!(kept.contains(&(r, j)));
        expected.insert(layout.tag_link(&repo(REPOS[r]), &tag_of(t)).to_string());
    }
    non_empty.extend(kept.iter().map(|&(r, _)| r));
    for r in non_empty {
        expected.insert(layout.catalog_marker(&repo(REPOS[r])).to_string());
    }
    let found: BTreeSet<String> = keys(b, "").await.into_iter().collect();
    let missing: Vec<_> = expected.difference(&found).collect();
    let extra: Vec<_> = found.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "after a second run, missing: {missing:#?}\nleft: {extra:#?}\nmodel: {model:?}"
    );
    // Every manifest kept pulls: its bytes, and each blob through the repository when linked
    // there (a client may have unlinked a layer of a manifest; its bytes stay).
    let store = store_on(b);
    for &(r, j) in &kept {
        let got = store
            .repository(repo(REPOS[r]))
            .get_manifest(&Reference::Digest(image_digest(j)))
            .await
            .unwrap();
        assert_eq!(got.bytes, image(j));
        for d in image_blobs(j) {
            if model.links.contains(&(r, d)) {
                assert_eq!(read_blob_in(&store, r, d).await.unwrap(), blob(d));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A case

async fn until(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run_case(kind: BackendKind, case: Case) {
    let b = make(kind).await.expect("backend");
    let mut model = Model {
        delete_untagged: case.delete_untagged,
        ..Model::default()
    };
    let before = store_on(&b);
    let stores_before = [before.clone(), store_on(&b)];
    for &step in &case.before {
        apply(&stores_before, step, &mut model).await;
    }

    // The run, over a store whose backend holds it at each of the case's holds in turn.
    let (gc_store, faulty) = faulty_store_on(&b);
    let started = Arc::new(AtomicBool::new(false));
    let task = {
        let started = started.clone();
        let options = options(case.delete_untagged);
        tokio::spawn(async move {
            let progress = move |p: &GcProgress| {
                if p.phase == GcPhase::Wait {
                    started.store(true, Ordering::SeqCst);
                }
            };
            gc_store.gc(options, &progress).await
        })
    };
    until(&started).await;
    // The holds count from here: what the run reads and writes before it waits (its lock,
    // its state) takes a different number of backend calls on each backend (on the
    // filesystem every file call of a durable write counts), and nothing of it is held. The
    // run waits `STATE_MAX_AGE` and more before its next request, so none is missed.
    let (writes, reads) = (faulty.writes_seen(), faulty.reads_seen());
    let mut holds = Holds {
        faulty: faulty.clone(),
        next: case
            .holds
            .iter()
            .map(|hold| match *hold {
                Hold::Write(n) => Hold::Write(writes + n),
                Hold::Read(n) => Hold::Read(reads + n),
            })
            .collect(),
    };
    holds.advance();
    // A replica that starts while the run does, and the store that served before it, once
    // it has read the run's state too.
    let stores = [before, store_on(&b)];
    tokio::time::sleep(STATE_MAX_AGE + Duration::from_millis(100)).await;
    model.start_run();
    for (i, batch) in case.batches.iter().enumerate() {
        if i > 0 {
            while !faulty.paused() && !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        apply_batch(&stores, batch, &mut model, &mut holds).await;
        if i > 0 {
            holds.advance();
        }
    }
    holds.next.clear();
    faulty.release();
    task.await.unwrap().expect("the run");
    check_after_run_and_reconcile(&b, &mut model).await;

    // A second run with nothing in between leaves exactly what the model reaches.
    store_on(&b)
        .gc(options(case.delete_untagged), &|_| {})
        .await
        .expect("the second run");
    check_exactly_what_is_reachable(&b, &model).await;
}

// ---------------------------------------------------------------------------------------
// The properties

fn config(default_cases: u32, seed: u64) -> ProptestConfig {
    let defaults = ProptestConfig::default();
    let env = |name| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let rng_seed = match defaults.rng_seed {
        RngSeed::Random => RngSeed::Fixed(seed),
        fixed => fixed,
    };
    ProptestConfig {
        cases: env("PROPTEST_CASES").unwrap_or(default_cases),
        rng_seed,
        // Each case waits two runs of about 3 s: shrinking is bounded in steps and time.
        max_shrink_iters: env("PROPTEST_MAX_SHRINK_ITERS").unwrap_or(32),
        max_shrink_time: 180_000,
        ..defaults
    }
}

fn check(kind: BackendKind, case: Case) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_case(kind, case));
}

proptest! {
    #![proptest_config(config(8, 21))]

    #[test]
    fn memory_gc_interleaved_with_clients_keeps_what_the_model_keeps(case in case()) {
        check(BackendKind::Memory, case);
    }
}

proptest! {
    #![proptest_config(config(4, 22))]

    #[test]
    fn filesystem_gc_interleaved_with_clients_keeps_what_the_model_keeps(case in case()) {
        check(BackendKind::Filesystem, case);
    }
}
