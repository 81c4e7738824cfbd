//! A store wrapper that fails chosen requests, to test what is left behind when a backend
//! errors or the process dies between two writes.
//!
//! # What counts as one write
//!
//! Every request that could change backend state is one write, numbered from 1 in the order
//! the calls are made (since construction or the last [`FaultyStore::reset`]):
//!
//! | call | writes |
//! | --- | --- |
//! | `ObjectStore::put_opts` (and so `put`) | 1 |
//! | `ObjectStore::put_multipart_opts` (creating the upload) | 1 |
//! | `MultipartUpload::put_part` on an upload it returned | 1 per part |
//! | `MultipartUpload::complete` / `abort` | 1 each |
//! | `MultipartStore::create_multipart(_opts)`, `put_part`, `complete_multipart`, `abort_multipart` | 1 each |
//! | `ObjectStore::copy_opts` (`copy`, `copy_if_not_exists`) | 1 |
//! | `ObjectStore::rename_opts` (`rename`, `rename_if_not_exists`) | 1, even where the backend implements it as copy + delete |
//! | `ObjectStore::delete_stream` (and so `delete`) | 1 per location deleted |
//!
//! Aborts count because a crashed process cannot abort either. A write that is refused by an
//! injected fault still gets its number, so with `crash_at(n)` `writes_seen()` keeps growing
//! with every refused attempt.
//!
//! Reads are `get_opts` (`get`, `get_range`, `head`), `get_ranges`, `list`, `list_with_offset`
//! and `list_with_delimiter`: one each per call.
//!
//! An injected fault fires before the request reaches the inner store, so the failed write has
//! no effect: the failure looks like a request that never arrived.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions, Error, GetOptions, GetResult, ListResult, MultipartId, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result, UploadPart,
};

const STORE: &str = "FaultyStore";

/// High bit of a plan: the fault is a crash (this request and every later one fail).
const CRASH: u64 = 1 << 63;
/// Next bit: the request is made, then reported failed (a reply lost on the way back, so the
/// caller cannot tell whether it happened).
const AFTER: u64 = 1 << 62;

/// Counters and fault plans, shared with the uploads the store hands out so that parts and
/// completes are numbered in the same sequence as every other write — and with a
/// [`super::faulty_fs::FaultyFs`], so that the filesystem engine's calls are numbered in the
/// same sequence as the object-store requests of the same store.
#[derive(Debug, Default)]
pub struct FaultState {
    writes: AtomicU64,
    reads: AtomicU64,
    faults: AtomicU64,
    /// 0 = no fault; otherwise the request number, with [`CRASH`] set for a crash. One atomic,
    /// so a plan is never seen half-updated.
    write_plan: AtomicU64,
    read_plan: AtomicU64,
    /// Bytes the filesystem seam read from files (`read_exact_at`).
    pub file_bytes_read: AtomicU64,
    /// 0 = no pause; otherwise the write that waits, before it is made, until released.
    pause_at: AtomicU64,
    /// 0 = no pause; otherwise the read that waits, before it is made, until released.
    pause_read_at: AtomicU64,
    /// A write of this operation on exactly this key waits, before it is made, until released.
    pause_on: std::sync::Mutex<Option<(String, String)>>,
    paused: AtomicBool,
    released: AtomicBool,
}

/// A request [`FaultyStore::move_pause`] holds: a write or a read, by its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Write(u64),
    Read(u64),
}

/// An injected fault, as the filesystem seam reports it.
#[derive(Debug)]
pub struct Injected(pub String);

impl FaultState {
    /// Numbers a write and fails it if planned; returns its number, and the failure to report
    /// after making it if one is planned so.
    pub fn write_check(
        &self,
        op: &str,
        location: &str,
    ) -> std::result::Result<(u64, Option<Injected>), Injected> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let plan = self.write_plan.load(Ordering::SeqCst);
        if plan & AFTER != 0 {
            if n != plan & !AFTER {
                return Ok((n, None));
            }
            self.faults.fetch_add(1, Ordering::SeqCst);
            let lost = format!("injected fault after write {n} ({op} {location}): it was made");
            return Ok((n, Some(Injected(lost))));
        }
        self.check(&self.write_plan, n, "write", op, location)?;
        Ok((n, None))
    }

    /// Numbers a read and fails it if planned.
    pub fn read_check(&self, op: &str, location: &str) -> std::result::Result<(), Injected> {
        self.read_numbered(op, location).map(drop)
    }

    /// Numbers a read and fails it if planned; returns its number.
    fn read_numbered(&self, op: &str, location: &str) -> std::result::Result<u64, Injected> {
        let n = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
        self.check(&self.read_plan, n, "read", op, location)?;
        Ok(n)
    }

    /// A read from async code: numbered, failed if planned, and held if a pause is set on it.
    async fn read_async(&self, op: &str, location: &Path) -> Result<()> {
        let n = self.read_numbered(op, location.as_ref()).map_err(generic)?;
        while self.holds_read(n) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(())
    }

    fn holds_read(&self, n: u64) -> bool {
        if self.pause_read_at.load(Ordering::SeqCst) != n {
            return false;
        }
        self.paused.store(true, Ordering::SeqCst);
        !self.released.load(Ordering::SeqCst)
    }

    fn write(&self, op: &str, location: &Path) -> Result<(u64, Option<Error>)> {
        let (n, lost) = self.write_check(op, location.as_ref()).map_err(generic)?;
        Ok((n, lost.map(generic)))
    }

    /// A write from async code: numbered, failed if planned, and held if a pause is set on it.
    /// Returns the failure to report after making it, if one is planned so (see [`after`]).
    async fn write_async(&self, op: &str, location: &Path) -> Result<Option<Error>> {
        let (n, lost) = self.write(op, location)?;
        while self.holds(n) || self.holds_key(op, location) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(lost)
    }

    /// Whether write `n` must wait now (it is the paused one, not yet released).
    pub fn holds(&self, n: u64) -> bool {
        if self.pause_at.load(Ordering::SeqCst) != n {
            return false;
        }
        self.paused.store(true, Ordering::SeqCst);
        !self.released.load(Ordering::SeqCst)
    }

    fn holds_key(&self, op: &str, location: &Path) -> bool {
        let planned = self.pause_on.lock().unwrap();
        if planned.as_ref() != Some(&(op.to_owned(), location.to_string())) {
            return false;
        }
        self.paused.store(true, Ordering::SeqCst);
        !self.released.load(Ordering::SeqCst)
    }

    fn read(&self, op: &str, location: &Path) -> Result<()> {
        self.read_check(op, location.as_ref()).map_err(generic)
    }

    fn check(
        &self,
        plan: &AtomicU64,
        n: u64,
        what: &str,
        op: &str,
        location: &str,
    ) -> std::result::Result<(), Injected> {
        let plan = plan.load(Ordering::SeqCst);
        let target = plan & !CRASH;
        let fails = target != 0 && (n == target || (plan & CRASH != 0 && n > target));
        if !fails {
            return Ok(());
        }
        self.faults.fetch_add(1, Ordering::SeqCst);
        Err(Injected(format!(
            "injected fault at {what} {n} ({op} {location})"
        )))
    }
}

/// The result of a write that was made: its own, or, if its reply is planned to be lost, the
/// injected failure (unless the write failed by itself).
fn after<T>(result: Result<T>, lost: Option<Error>) -> Result<T> {
    match (result, lost) {
        (Ok(_), Some(e)) => Err(e),
        (result, _) => result,
    }
}

fn generic(Injected(message): Injected) -> Error {
    Error::Generic {
        store: STORE,
        source: message.into(),
    }
}

/// Wraps a store (and optionally its `MultipartStore` view) and fails the Nth write or read.
///
/// Without a plan it is a transparent pass-through that only counts, which is how a test learns
/// how many writes an operation takes before looping over each of them:
///
/// ```ignore
/// let probe = backend.faulty();
/// operation(probe.clone()).await.unwrap();
/// for n in 1..=probe.writes_seen() {
///     let backend = make(kind).await.unwrap();
///     let store = backend.faulty();
///     store.crash_at(n);
///     let _ = operation(store.clone()).await;
///     check_nothing_partial(&backend).await;
/// }
/// ```
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    inner_multipart: Option<Arc<dyn MultipartStore>>,
    state: Arc<FaultState>,
}

impl FaultyStore {
    /// `multipart` must be the same store as `inner`, seen through `MultipartStore`.
    pub fn new(inner: Arc<dyn ObjectStore>, multipart: Option<Arc<dyn MultipartStore>>) -> Self {
        Self {
            inner,
            inner_multipart: multipart,
            state: Arc::default(),
        }
    }

    /// This store as a `MultipartStore` (same counters and plans), if the inner store has one.
    pub fn multipart_store(self: &Arc<Self>) -> Option<Arc<dyn MultipartStore>> {
        self.inner_multipart
            .as_ref()
            .map(|_| Arc::clone(self) as Arc<dyn MultipartStore>)
    }

    /// Write `n` (1-based) fails; the writes before and after it go through.
    pub fn fail_nth(&self, n: u64) {
        assert!(n > 0 && n < CRASH, "write numbers start at 1");
        self.state.write_plan.store(n, Ordering::SeqCst);
    }

    /// Write `n` and every write after it fail, as if the process had died just before write
    /// `n`. Reads still go through, so a test can inspect what the "dead" process left.
    pub fn crash_at(&self, n: u64) {
        assert!(n > 0 && n < CRASH, "write numbers start at 1");
        self.state.write_plan.store(n | CRASH, Ordering::SeqCst);
    }

    /// Write `n` (1-based) is made, then reported failed, as if its reply was lost: the caller
    /// cannot tell whether it happened. The writes before and after it go through.
    pub fn fail_after_nth(&self, n: u64) {
        assert!(n > 0 && n < AFTER, "write numbers start at 1");
        self.state.write_plan.store(n | AFTER, Ordering::SeqCst);
    }

    /// Read `n` (1-based) fails; the reads before and after it go through.
    pub fn fail_nth_read(&self, n: u64) {
        assert!(n > 0 && n < CRASH, "read numbers start at 1");
        self.state.read_plan.store(n, Ordering::SeqCst);
    }

    /// Write `n` waits, before it is made, until [`Self::release`]; the test sees it waiting
    /// with [`Self::paused`]. Holds the operation making it at that step.
    pub fn pause_at(&self, n: u64) {
        assert!(n > 0, "write numbers start at 1");
        self.state.released.store(false, Ordering::SeqCst);
        self.state.paused.store(false, Ordering::SeqCst);
        self.state.pause_at.store(n, Ordering::SeqCst);
    }

    /// Read `n` (`get`, `head`: see the module docs) waits, before it is made, until
    /// [`Self::release`]; seen with [`Self::paused`] like a paused write.
    pub fn pause_read_at(&self, n: u64) {
        assert!(n > 0, "read numbers start at 1");
        self.state.released.store(false, Ordering::SeqCst);
        self.state.paused.store(false, Ordering::SeqCst);
        self.state.pause_read_at.store(n, Ordering::SeqCst);
    }

    /// The write `op` (`put`, `delete`, …) on exactly `key` waits, before it is made, until
    /// [`Self::release`]; seen with [`Self::paused`]. For holding one step of an operation
    /// whose write numbers are not known in advance.
    pub fn pause_on(&self, op: &str, key: &Path) {
        self.state.released.store(false, Ordering::SeqCst);
        self.state.paused.store(false, Ordering::SeqCst);
        *self.state.pause_on.lock().unwrap() = Some((op.to_owned(), key.to_string()));
    }

    /// Moves the pause to `next`, in one step: whatever an earlier pause holds goes on, and
    /// `next` waits when it comes, until [`Self::release`] or the next move; [`Self::paused`]
    /// turns true once it is reached. For holding one operation at several points in turn.
    pub fn move_pause(&self, next: Hold) {
        let (write, read) = match next {
            Hold::Write(n) => (n, 0),
            Hold::Read(n) => (0, n),
        };
        self.state.paused.store(false, Ordering::SeqCst);
        self.state.pause_read_at.store(read, Ordering::SeqCst);
        self.state.pause_at.store(write, Ordering::SeqCst);
        self.state.released.store(false, Ordering::SeqCst);
    }

    /// Whether the write set by [`Self::pause_at`] has been reached (and is waiting, unless
    /// released).
    pub fn paused(&self) -> bool {
        self.state.paused.load(Ordering::SeqCst)
    }

    /// Lets the paused write go on.
    pub fn release(&self) {
        self.state.released.store(true, Ordering::SeqCst);
    }

    /// The counters and plans, to share with a wrapper of another seam of the same store.
    pub fn state(&self) -> Arc<FaultState> {
        Arc::clone(&self.state)
    }

    /// Removes every planned fault; counters keep counting.
    pub fn heal(&self) {
        self.state.write_plan.store(0, Ordering::SeqCst);
        self.state.read_plan.store(0, Ordering::SeqCst);
    }

    /// Removes every planned fault and sets all counters back to zero.
    pub fn reset(&self) {
        self.heal();
        self.state.writes.store(0, Ordering::SeqCst);
        self.state.reads.store(0, Ordering::SeqCst);
        self.state.faults.store(0, Ordering::SeqCst);
    }

    /// Writes attempted so far, including the ones that were made to fail.
    pub fn writes_seen(&self) -> u64 {
        self.state.writes.load(Ordering::SeqCst)
    }

    /// Reads attempted so far, including the ones that were made to fail.
    pub fn reads_seen(&self) -> u64 {
        self.state.reads.load(Ordering::SeqCst)
    }

    /// Bytes read from files through the filesystem seam so far (see `FaultyFs`).
    pub fn file_bytes_read(&self) -> u64 {
        self.state.file_bytes_read.load(Ordering::SeqCst)
    }

    /// Requests failed by an injected fault so far.
    pub fn faults_injected(&self) -> u64 {
        self.state.faults.load(Ordering::SeqCst)
    }

    fn multipart(&self, operation: &str) -> Result<&Arc<dyn MultipartStore>> {
        self.inner_multipart
            .as_ref()
            .ok_or_else(|| Error::NotImplemented {
                operation: operation.to_owned(),
                implementer: format!("{STORE}({}) without a MultipartStore", self.inner),
            })
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE}({})", self.inner)
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(STORE)
            .field("inner", &self.inner)
            .field("multipart", &self.inner_multipart.is_some())
            .field("state", &self.state)
            .finish()
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let lost = self.state.write_async("put", location).await?;
        after(self.inner.put_opts(location, payload, opts).await, lost)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let lost = self.state.write_async("put_multipart", location).await?;
        let upload = after(self.inner.put_multipart_opts(location, opts).await, lost)?;
        Ok(Box::new(FaultyUpload {
            inner: upload,
            location: location.clone(),
            state: Arc::clone(&self.state),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.state.read_async("get", location).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.state.read("get_ranges", location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // One inner delete per location, so that each one can be failed on its own. This gives
        // up S3's batching, which a fault-injection wrapper does not need.
        let inner = Arc::clone(&self.inner);
        let state = Arc::clone(&self.state);
        locations
            .then(move |location| {
                let inner = Arc::clone(&inner);
                let state = Arc::clone(&state);
                async move {
                    let location = location?;
                    let lost = state.write_async("delete", &location).await?;
                    let mut deleted = inner.delete_stream(stream::iter([Ok(location)]).boxed());
                    let deleted = deleted.next().await.unwrap_or_else(|| {
                        Err(Error::Generic {
                            store: STORE,
                            source: "inner delete_stream yielded nothing for one location".into(),
                        })
                    });
                    after(deleted, lost)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.state.read("list", prefix.unwrap_or(&Path::default())) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => stream::iter([Err(e)]).boxed(),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        match self
            .state
            .read("list_with_offset", prefix.unwrap_or(&Path::default()))
        {
            Ok(()) => self.inner.list_with_offset(prefix, offset),
            Err(e) => stream::iter([Err(e)]).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.state
            .read("list_with_delimiter", prefix.unwrap_or(&Path::default()))?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let lost = self.state.write_async("copy", to).await?;
        after(self.inner.copy_opts(from, to, options).await, lost)
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let lost = self.state.write_async("rename", to).await?;
        after(self.inner.rename_opts(from, to, options).await, lost)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl MultipartStore for FaultyStore {
    async fn create_multipart(&self, path: &Path) -> Result<MultipartId> {
        let inner = self.multipart("create_multipart")?;
        let lost = self.state.write_async("create_multipart", path).await?;
        after(inner.create_multipart(path).await, lost)
    }

    async fn create_multipart_opts(
        &self,
        path: &Path,
        opts: PutMultipartOptions,
    ) -> Result<MultipartId> {
        let inner = self.multipart("create_multipart_opts")?;
        let lost = self.state.write_async("create_multipart", path).await?;
        after(inner.create_multipart_opts(path, opts).await, lost)
    }

    async fn put_part(
        &self,
        path: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> Result<PartId> {
        let inner = self.multipart("put_part")?;
        let lost = self.state.write_async("put_part", path).await?;
        after(inner.put_part(path, id, part_idx, data).await, lost)
    }

    async fn complete_multipart(
        &self,
        path: &Path,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> Result<PutResult> {
        let inner = self.multipart("complete_multipart")?;
        let lost = self.state.write_async("complete_multipart", path).await?;
        after(inner.complete_multipart(path, id, parts).await, lost)
    }

    async fn abort_multipart(&self, path: &Path, id: &MultipartId) -> Result<()> {
        let inner = self.multipart("abort_multipart")?;
        let lost = self.state.write_async("abort_multipart", path).await?;
        after(inner.abort_multipart(path, id).await, lost)
    }
}

/// An upload from `put_multipart_opts`, numbered in the store's write sequence.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    state: Arc<FaultState>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        // Numbered when called, not when polled: that is the order the caller issued them in.
        match self.state.write("upload.put_part", &self.location) {
            Ok((_, lost)) => {
                let part = self.inner.put_part(data);
                async move { after(part.await, lost) }.boxed()
            }
            Err(e) => async move { Err(e) }.boxed(),
        }
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let lost = self
            .state
            .write_async("upload.complete", &self.location)
            .await?;
        after(self.inner.complete().await, lost)
    }

    async fn abort(&mut self) -> Result<()> {
        let lost = self
            .state
            .write_async("upload.abort", &self.location)
            .await?;
        after(self.inner.abort().await, lost)
    }
}
