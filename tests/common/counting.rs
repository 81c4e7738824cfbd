//! A store wrapper that counts requests by kind and the bytes that cross it, to prove claims
//! such as "a cache hit makes zero backend requests" or "resume reads zero uploaded bytes".

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, Error, Extensions, GetOptions, GetResult, GetResultPayload,
    ListResult, MultipartId, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

const STORE: &str = "CountingStore";

/// What a [`CountingStore`] has seen; a plain value, so tests can compare snapshots.
///
/// Each request field counts calls made through the wrapper, whether they succeeded or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `get_opts` without a range and not a head (`get`, conditional gets).
    pub get: u64,
    /// `get_opts` with a range (`get_range`).
    pub get_range: u64,
    /// `get_ranges` calls (however the inner store splits them).
    pub get_ranges: u64,
    /// `get_opts` with `head: true` (`head`).
    pub head: u64,
    /// `put_opts` (`put`).
    pub put: u64,
    /// Uploads started: `put_multipart_opts` and `MultipartStore::create_multipart(_opts)`.
    pub multipart_create: u64,
    /// Parts sent through either multipart API.
    pub multipart_part: u64,
    /// Uploads completed through either multipart API.
    pub multipart_complete: u64,
    /// Uploads aborted through either multipart API.
    pub multipart_abort: u64,
    /// `list` and `list_with_offset` calls.
    pub list: u64,
    /// `list_with_delimiter` calls.
    pub list_with_delimiter: u64,
    /// `copy_opts` (`copy`, `copy_if_not_exists`).
    pub copy: u64,
    /// `rename_opts` (`rename`, `rename_if_not_exists`).
    pub rename: u64,
    /// Locations passed to `delete_stream` (`delete` is one), not HTTP batches.
    pub delete: u64,
    /// Body bytes handed to the caller by gets (as they stream out) and `get_ranges`.
    pub bytes_read: u64,
    /// Payload bytes of puts and parts.
    pub bytes_written: u64,
}

impl Counts {
    /// Every request of any kind.
    pub fn requests(&self) -> u64 {
        self.reads() + self.writes()
    }

    /// Requests that only read: gets, heads, lists.
    pub fn reads(&self) -> u64 {
        self.get
            + self.get_range
            + self.get_ranges
            + self.head
            + self.list
            + self.list_with_delimiter
    }

    /// Requests that can change state.
    pub fn writes(&self) -> u64 {
        self.put
            + self.multipart_create
            + self.multipart_part
            + self.multipart_complete
            + self.multipart_abort
            + self.copy
            + self.rename
            + self.delete
    }
}

#[derive(Debug, Default)]
struct Counters {
    get: AtomicU64,
    get_range: AtomicU64,
    get_ranges: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    multipart_create: AtomicU64,
    multipart_part: AtomicU64,
    multipart_complete: AtomicU64,
    multipart_abort: AtomicU64,
    list: AtomicU64,
    list_with_delimiter: AtomicU64,
    copy: AtomicU64,
    rename: AtomicU64,
    delete: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// One line per request since the last reset: what it was and its key.
    log: std::sync::Mutex<Vec<String>>,
}

impl Counters {
    fn note(&self, request: &str, key: impl fmt::Display) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{request} {key}"));
    }

    fn all(&self) -> [&AtomicU64; 16] {
        [
            &self.get,
            &self.get_range,
            &self.get_ranges,
            &self.head,
            &self.put,
            &self.multipart_create,
            &self.multipart_part,
            &self.multipart_complete,
            &self.multipart_abort,
            &self.list,
            &self.list_with_delimiter,
            &self.copy,
            &self.rename,
            &self.delete,
            &self.bytes_read,
            &self.bytes_written,
        ]
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::SeqCst);
}

/// Wraps a store (and optionally its `MultipartStore` view) and counts what goes through.
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    inner_multipart: Option<Arc<dyn MultipartStore>>,
    counters: Arc<Counters>,
}

impl CountingStore {
    /// `multipart` must be the same store as `inner`, seen through `MultipartStore`.
    pub fn new(inner: Arc<dyn ObjectStore>, multipart: Option<Arc<dyn MultipartStore>>) -> Self {
        Self {
            inner,
            inner_multipart: multipart,
            counters: Arc::default(),
        }
    }

    /// This store as a `MultipartStore` (same counters), if the inner store has one.
    pub fn multipart_store(self: &Arc<Self>) -> Option<Arc<dyn MultipartStore>> {
        self.inner_multipart
            .as_ref()
            .map(|_| Arc::clone(self) as Arc<dyn MultipartStore>)
    }

    pub fn snapshot(&self) -> Counts {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Counts {
            get: load(&c.get),
            get_range: load(&c.get_range),
            get_ranges: load(&c.get_ranges),
            head: load(&c.head),
            put: load(&c.put),
            multipart_create: load(&c.multipart_create),
            multipart_part: load(&c.multipart_part),
            multipart_complete: load(&c.multipart_complete),
            multipart_abort: load(&c.multipart_abort),
            list: load(&c.list),
            list_with_delimiter: load(&c.list_with_delimiter),
            copy: load(&c.copy),
            rename: load(&c.rename),
            delete: load(&c.delete),
            bytes_read: load(&c.bytes_read),
            bytes_written: load(&c.bytes_written),
        }
    }

    /// Sets every counter back to zero. Bodies of gets made before the reset that are still
    /// being streamed keep adding to `bytes_read`.
    pub fn reset(&self) {
        for counter in self.counters.all() {
            counter.store(0, Ordering::SeqCst);
        }
        self.counters
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Every request since the last reset, in order: its kind and key (for messages that
    /// say which requests an operation made).
    pub fn requests_log(&self) -> Vec<String> {
        self.counters
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE}({})", self.inner)
    }
}

impl fmt::Debug for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(STORE)
            .field("inner", &self.inner)
            .field("multipart", &self.inner_multipart.is_some())
            .field("counts", &self.snapshot())
            .finish()
    }
}

/// Replaces the body of `result` with one that counts its bytes as the caller pulls them.
fn count_body(result: GetResult, counters: Arc<Counters>) -> GetResult {
    let GetResult {
        payload,
        meta,
        range,
        attributes,
        extensions,
    } = result;
    // A filesystem body is a `File`; turn it into the stream `GetResult::into_stream` would
    // make, so that its bytes are counted the same way as a remote body's.
    let body = GetResult {
        payload,
        meta: meta.clone(),
        range: range.clone(),
        attributes: Attributes::new(),
        extensions: Extensions::new(),
    }
    .into_stream()
    .inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            bump(&counters.bytes_read, bytes.len() as u64);
        }
    })
    .boxed();
    GetResult {
        payload: GetResultPayload::Stream(body),
        meta,
        range,
        attributes,
        extensions,
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        bump(&self.counters.put, 1);
        self.counters.note("put", location);
        bump(
            &self.counters.bytes_written,
            payload.content_length() as u64,
        );
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        bump(&self.counters.multipart_create, 1);
        self.counters.note("multipart_create", location);
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload {
            inner: upload,
            counters: Arc::clone(&self.counters),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let counter = if options.head {
            &self.counters.head
        } else if options.range.is_some() {
            &self.counters.get_range
        } else {
            &self.counters.get
        };
        bump(counter, 1);
        let kind = if options.head {
            "head"
        } else if options.range.is_some() {
            "get_range"
        } else {
            "get"
        };
        self.counters.note(kind, location);
        let result = self.inner.get_opts(location, options).await?;
        Ok(count_body(result, Arc::clone(&self.counters)))
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        // Forwarded whole so the inner store coalesces as it would unwrapped, and so the
        // ranges are not counted a second time as single-range gets.
        bump(&self.counters.get_ranges, 1);
        self.counters.note("get_ranges", location);
        let parts = self.inner.get_ranges(location, ranges).await?;
        let bytes: usize = parts.iter().map(Bytes::len).sum();
        bump(&self.counters.bytes_read, bytes as u64);
        Ok(parts)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let counters = Arc::clone(&self.counters);
        let locations = locations
            .inspect(move |location| {
                if let Ok(location) = location {
                    bump(&counters.delete, 1);
                    counters.note("delete", location);
                }
            })
            .boxed();
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        bump(&self.counters.list, 1);
        self.counters
            .note("list", prefix.map_or(String::new(), ToString::to_string));
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        bump(&self.counters.list, 1);
        self.counters
            .note("list", prefix.map_or(String::new(), ToString::to_string));
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        bump(&self.counters.list_with_delimiter, 1);
        self.counters.note(
            "list_with_delimiter",
            prefix.map_or(String::new(), ToString::to_string),
        );
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        bump(&self.counters.copy, 1);
        self.counters.note("copy", to);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        bump(&self.counters.rename, 1);
        self.counters.note("rename", to);
        self.inner.rename_opts(from, to, options).await
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl MultipartStore for CountingStore {
    async fn create_multipart(&self, path: &Path) -> Result<MultipartId> {
        let inner = self.multipart("create_multipart")?;
        bump(&self.counters.multipart_create, 1);
        self.counters.note("multipart_create", path);
        inner.create_multipart(path).await
    }

    async fn create_multipart_opts(
        &self,
        path: &Path,
        opts: PutMultipartOptions,
    ) -> Result<MultipartId> {
        let inner = self.multipart("create_multipart_opts")?;
        bump(&self.counters.multipart_create, 1);
        self.counters.note("multipart_create", path);
        inner.create_multipart_opts(path, opts).await
    }

    async fn put_part(
        &self,
        path: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> Result<PartId> {
        let inner = self.multipart("put_part")?;
        bump(&self.counters.multipart_part, 1);
        self.counters.note("multipart_part", path);
        bump(&self.counters.bytes_written, data.content_length() as u64);
        inner.put_part(path, id, part_idx, data).await
    }

    async fn complete_multipart(
        &self,
        path: &Path,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> Result<PutResult> {
        let inner = self.multipart("complete_multipart")?;
        bump(&self.counters.multipart_complete, 1);
        self.counters.note("multipart_complete", path);
        inner.complete_multipart(path, id, parts).await
    }

    async fn abort_multipart(&self, path: &Path, id: &MultipartId) -> Result<()> {
        let inner = self.multipart("abort_multipart")?;
        bump(&self.counters.multipart_abort, 1);
        self.counters.note("multipart_abort", path);
        inner.abort_multipart(path, id).await
    }
}

/// An upload from `put_multipart_opts`, counted in the store's counters.
#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    counters: Arc<Counters>,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        bump(&self.counters.multipart_part, 1);
        self.counters.note("multipart_part", "(upload)");
        bump(&self.counters.bytes_written, data.content_length() as u64);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        bump(&self.counters.multipart_complete, 1);
        self.counters.note("multipart_complete", "(upload)");
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        bump(&self.counters.multipart_abort, 1);
        self.counters.note("multipart_abort", "(upload)");
        self.inner.abort().await
    }
}
