//! The filesystem's upload session state across crashes: what a resumed session sees when its
//! two-slot state file or its staging file is left as a crash or a power loss can leave them.
//!
//! Each test builds the situation by writing the session's files directly
//! (`uploads/{id}/state`, `uploads/{id}/data`, see `docs/storage.md`), then resumes through a
//! fresh store, as a restarted process would.

mod common;

mod filesystem {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime};

    use layerstore::upload::PurgeOptions;
    use layerstore::{Digest, ErrorKind, Repository, Store, UploadId};
    use sha2::Digest as _;
    use sha2::digest::common::hazmat::SerializableState;

    use crate::common::*;

    const KIB: usize = 1024;

    struct Session {
        _backend: TestBackend,
        root: PathBuf,
        id: UploadId,
    }

    impl Session {
        /// A session in `name` that has received `chunks`, on a fresh filesystem backend.
        async fn with_chunks(name: &str, chunks: &[&[u8]]) -> Self {
            let b = make(BackendKind::Filesystem).await.unwrap();
            let root = b.fs_root.clone().unwrap();
            let r = store_on(&b).repository(repo(name));
            let id = r.start_upload().await.unwrap().id;
            let mut offset = 0;
            for chunk in chunks {
                offset = append(&r, &id, offset, chunk).await.unwrap().offset;
            }
            Self {
                _backend: b,
                root,
                id,
            }
        }

        fn file(&self, name: &str) -> PathBuf {
            self.root.join(format!("uploads/{}/{name}", self.id))
        }

        /// The repository through a fresh store over the same directory: a restarted process.
        fn reopened(&self, name: &str) -> Repository {
            let backend = layerstore::Backend::filesystem(&self.root).unwrap();
            Store::new(backend).repository(repo(name))
        }
    }

    async fn append(
        r: &Repository,
        id: &UploadId,
        offset: u64,
        data: &[u8],
    ) -> layerstore::Result<layerstore::UploadStatus> {
        r.append_upload(id, offset, in_pieces(data, 700)).await
    }

    async fn read_all(r: &Repository, digest: &Digest) -> Vec<u8> {
        use futures::TryStreamExt;
        let read = r.read_blob(digest, None).await.unwrap();
        let chunks: Vec<bytes::Bytes> = read.stream.try_collect().await.unwrap();
        chunks.concat()
    }

    /// Commits session `id` as the SHA-256 of `all` and checks it reads back as `all`.
    async fn commits_to(r: &Repository, id: &layerstore::UploadId, all: &[u8]) {
        let digest = Digest::sha256(all);
        r.commit_upload(id, &digest, Some(all.len() as u64))
            .await
            .unwrap();
        assert!(read_all(r, &digest).await == all, "wrong bytes published");
    }

    #[track_caller]
    fn assert_kind<T: std::fmt::Debug>(result: layerstore::Result<T>, kinds: &[ErrorKind]) {
        match result {
            Err(e) => assert!(kinds.contains(&e.kind()), "expected {kinds:?}, got {e}"),
            Ok(v) => panic!("expected {kinds:?}, got {v:?}"),
        }
    }

    /// Whether the store holds any blob data at all.
    fn blobs_on_disk(root: &Path) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = vec![];
        walk(&root.join("blobs"), &mut out);
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_newest_state_record_resumes_at_the_previous_one_and_commits_its_content() {
        let (a, b) = (pattern(1, 3 * KIB), pattern(2, 5 * KIB));
        let s = Session::with_chunks("st/torn", &[&a]).await;
        let before = std::fs::read(s.file("state")).unwrap();
        let r = s.reopened("st/torn");
        append(&r, &s.id, a.len() as u64, &b).await.unwrap();
        let after = std::fs::read(s.file("state")).unwrap();
        assert_eq!(
            after.len(),
            before.len(),
            "the state file is overwritten in place"
        );

        // The second append's record tore: only its first bytes reached the disk, the rest of
        // what it overwrote is still the old content.
        let first = (0..after.len()).find(|&i| after[i] != before[i]).unwrap();
        let mut torn = after.clone();
        torn[first + 100..].copy_from_slice(&before[first + 100..]);
        std::fs::write(s.file("state"), &torn).unwrap();

        let r = s.reopened("st/torn");
        assert_eq!(r.upload_status(&s.id).await.unwrap().offset, a.len() as u64);
        let status = append(&r, &s.id, a.len() as u64, &b).await.unwrap();
        assert_eq!(status.offset, (a.len() + b.len()) as u64);
        let all = [a, b].concat();
        commits_to(&r, &s.id, &all).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_state_file_rolled_back_by_a_power_loss_resumes_at_its_older_offset() {
        // The last record never reached the disk, but the bytes it covered did (they are
        // fsynced before it is written): the session is back at the record before.
        let (a, b, c) = (pattern(1, 2 * KIB), pattern(2, 3 * KIB), pattern(3, KIB));
        let s = Session::with_chunks("st/rollback", &[&a]).await;
        let older = std::fs::read(s.file("state")).unwrap();
        let r = s.reopened("st/rollback");
        append(&r, &s.id, a.len() as u64, &b).await.unwrap();
        std::fs::write(s.file("state"), &older).unwrap();

        let r = s.reopened("st/rollback");
        assert_eq!(r.upload_status(&s.id).await.unwrap().offset, a.len() as u64);
        // The client sends from the offset it is told; here a different, shorter chunk.
        append(&r, &s.id, a.len() as u64, &c).await.unwrap();
        let all = [a, c].concat();
        commits_to(&r, &s.id, &all).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_state_file_with_no_intact_record_is_corrupt_and_publishes_nothing() {
        let a = pattern(1, 4 * KIB);
        let s = Session::with_chunks("st/corrupt", &[&a]).await;
        let len = std::fs::metadata(s.file("state")).unwrap().len() as usize;
        std::fs::write(s.file("state"), pattern(9, len)).unwrap();

        let r = s.reopened("st/corrupt");
        let refused = [ErrorKind::Corrupt, ErrorKind::BlobUploadUnknown];
        assert_kind(r.upload_status(&s.id).await, &refused);
        assert_kind(append(&r, &s.id, a.len() as u64, b"more").await, &refused);
        let digest = Digest::sha256(&a);
        assert_kind(r.commit_upload(&s.id, &digest, None).await, &refused);
        assert_eq!(blobs_on_disk(&s.root), Vec::<PathBuf>::new());
        assert_kind(r.stat_blob(&digest).await, &[ErrorKind::BlobUnknown]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_staged_past_the_recorded_offset_are_ignored_and_the_resent_chunk_commits() {
        // An append that died after writing its bytes and before writing its record.
        let (a, b) = (pattern(1, 3 * KIB), pattern(2, KIB));
        let s = Session::with_chunks("st/past", &[&a]).await;
        let mut staged = std::fs::read(s.file("data")).unwrap();
        staged.extend_from_slice(&pattern(7, 5 * KIB));
        std::fs::write(s.file("data"), &staged).unwrap();

        let r = s.reopened("st/past");
        assert_eq!(r.upload_status(&s.id).await.unwrap().offset, a.len() as u64);
        append(&r, &s.id, a.len() as u64, &b).await.unwrap();
        let all = [a, b].concat();
        let digest = Digest::sha256(&all);
        let info = r
            .commit_upload(&s.id, &digest, Some(all.len() as u64))
            .await
            .unwrap();
        assert_eq!(info.size, all.len() as u64);
        assert!(read_all(&r, &digest).await == all, "stale bytes published");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_ignores_bytes_staged_past_the_recorded_offset() {
        let a = pattern(1, 3 * KIB);
        let s = Session::with_chunks("st/pastcommit", &[&a]).await;
        let mut staged = std::fs::read(s.file("data")).unwrap();
        staged.extend_from_slice(&pattern(7, 5 * KIB));
        std::fs::write(s.file("data"), &staged).unwrap();

        let r = s.reopened("st/pastcommit");
        let digest = Digest::sha256(&a);
        let info = r.commit_upload(&s.id, &digest, None).await.unwrap();
        assert_eq!(info.size, a.len() as u64);
        assert!(read_all(&r, &digest).await == a, "stale bytes published");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_staging_file_shorter_than_its_state_is_corrupt_and_publishes_nothing() {
        // Never a crash's doing (a record is written after its bytes are fsynced), but the
        // store must not make up the missing bytes.
        let a = pattern(1, 3 * KIB);
        let s = Session::with_chunks("st/short", &[&a]).await;
        std::fs::write(s.file("data"), &a[..KIB]).unwrap();

        let r = s.reopened("st/short");
        let digest = Digest::sha256(&a);
        assert_kind(
            append(&r, &s.id, a.len() as u64, b"more").await,
            &[ErrorKind::Corrupt],
        );
        assert_kind(
            r.commit_upload(&s.id, &digest, None).await,
            &[ErrorKind::Corrupt],
        );
        assert_eq!(blobs_on_disk(&s.root), Vec::<PathBuf>::new());
    }

    /// The whole-file JSON state that versions before the two-slot file wrote.
    fn legacy_state(repository: &str, data: &[u8], at: &str) -> String {
        let mut hasher = sha2::Sha256::new();
        hasher.update(data);
        let hex: String = hasher
            .serialize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            r#"{{"format":1,"repository":"{repository}","offset":{},"startedAt":"{at}","lastActive":"{at}","hash":{{"format":"sha2-0.11/sha256","state":"{hex}"}}}}"#,
            data.len()
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_with_a_legacy_json_state_file_resumes_and_commits() {
        let (a, b) = (pattern(1, 3 * KIB), pattern(2, 2 * KIB));
        let s = Session::with_chunks("st/legacy", &[&a]).await;
        let now = chrono::Utc::now().to_rfc3339();
        std::fs::write(s.file("state"), legacy_state("st/legacy", &a, &now)).unwrap();

        let r = s.reopened("st/legacy");
        assert_eq!(r.upload_status(&s.id).await.unwrap().offset, a.len() as u64);
        append(&r, &s.id, a.len() as u64, &b).await.unwrap();
        assert_eq!(
            r.upload_status(&s.id).await.unwrap().offset,
            (a.len() + b.len()) as u64
        );
        let all = [a, b].concat();
        commits_to(&r, &s.id, &all).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_with_a_legacy_json_state_file_commits_without_another_append() {
        let a = pattern(1, 3 * KIB);
        let s = Session::with_chunks("st/legacycommit", &[&a]).await;
        let now = chrono::Utc::now().to_rfc3339();
        std::fs::write(s.file("state"), legacy_state("st/legacycommit", &a, &now)).unwrap();

        let r = s.reopened("st/legacycommit");
        let digest = Digest::sha256(&a);
        r.commit_upload(&s.id, &digest, Some(a.len() as u64))
            .await
            .unwrap();
        assert!(read_all(&r, &digest).await == a);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purge_judges_a_session_by_its_recorded_activity_not_its_file_times() {
        let s = Session::with_chunks("st/purge", &[&pattern(1, KIB)]).await;
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for name in ["state", "data", "lock"] {
            let file = std::fs::File::options()
                .write(true)
                .open(s.file(name))
                .unwrap();
            file.set_modified(two_hours_ago).unwrap();
        }
        let r = s.reopened("st/purge");
        let hour = PurgeOptions {
            older_than: Duration::from_secs(3600),
            dry_run: false,
        };
        let store = Store::new(layerstore::Backend::filesystem(&s.root).unwrap());
        let report = store.purge_uploads(hour).await.unwrap();
        assert_eq!((report.scanned, report.purged), (1, 0), "{report:?}");
        assert_eq!(r.upload_status(&s.id).await.unwrap().offset, KIB as u64);
    }

    /// A chunk stream that yields `head` and then never ends (a client that stalls).
    fn stalled(head: Vec<u8>) -> layerstore::upload::ChunkStream<'static> {
        use futures::StreamExt;
        futures::stream::iter([Ok(bytes::Bytes::from(head))])
            .chain(futures::stream::pending())
            .boxed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_at_the_wrong_offset_is_refused_without_waiting_for_its_end() {
        let a = pattern(1, KIB);
        let s = Session::with_chunks("st/refuse", &[&a]).await;
        let r = s.reopened("st/refuse");
        let refused = tokio::time::timeout(
            Duration::from_secs(10),
            r.append_upload(&s.id, 0, stalled(pattern(2, 100))),
        )
        .await
        .expect("the refusal waited for the rest of the chunk");
        assert_kind(refused, &[ErrorKind::RangeInvalid]);
        assert_eq!(r.upload_status(&s.id).await.unwrap().offset, KIB as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_abandoned_midway_counts_for_nothing_and_the_next_one_commits() {
        // The caller stops waiting (a client that went away) while bytes of the chunk are
        // being written; the next append at the same offset must see none of them.
        let (a, b) = (pattern(1, 3 * KIB), pattern(2, KIB));
        let s = Session::with_chunks("st/abandon", &[&a]).await;
        let r = s.reopened("st/abandon");
        let abandoned = tokio::time::timeout(
            Duration::from_millis(300),
            r.append_upload(&s.id, a.len() as u64, stalled(pattern(7, 3 << 20))),
        )
        .await;
        assert!(
            abandoned.is_err(),
            "the stalled append finished: {abandoned:?}"
        );

        let status = append(&r, &s.id, a.len() as u64, &b).await.unwrap();
        assert_eq!(status.offset, (a.len() + b.len()) as u64);
        let all = [a, b].concat();
        let digest = Digest::sha256(&all);
        r.commit_upload(&s.id, &digest, Some(all.len() as u64))
            .await
            .unwrap();
        assert!(
            read_all(&r, &digest).await == all,
            "abandoned bytes published"
        );
    }
}
