//! Counting and timing every object-store request a backend makes
//! ([`crate::metrics::BACKEND_REQUESTS`], [`crate::metrics::BACKEND_REQUEST_DURATION`]).
//!
//! One wrapper around whichever `ObjectStore` (and `MultipartStore`) the backend was built
//! with, put on once in [`super::Backend`], so no store or upload code counts anything itself
//! and every backend is counted the same way. A `get` is timed to its response head (the body
//! streams afterwards, at the client's pace); a listing from its call to its last page.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartId, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use crate::metrics::backend_request;

/// The `outcome` label of a request's result. A missing object or a lost conditional write
/// is an answer the store acts on, not a backend failure; only `error` is one.
fn outcome<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => failure(e),
    }
}

fn failure(e: &object_store::Error) -> &'static str {
    match e {
        object_store::Error::NotFound { .. } => "not_found",
        object_store::Error::AlreadyExists { .. } => "already_exists",
        object_store::Error::Precondition { .. } | object_store::Error::NotModified { .. } => {
            "precondition"
        }
        _ => "error",
    }
}

/// Runs `request`, then records it under `operation`.
async fn metered<T>(
    operation: &'static str,
    request: impl Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    let result = request.await;
    backend_request(operation, outcome(&result), started.elapsed());
    result
}

/// An object store whose requests are counted and timed.
#[derive(Debug)]
pub(crate) struct MeteredObjects {
    inner: Arc<dyn ObjectStore>,
}

impl MeteredObjects {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

impl fmt::Display for MeteredObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for MeteredObjects {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        metered("put", self.inner.put_opts(location, payload, opts)).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        metered(
            "put_multipart",
            self.inner.put_multipart_opts(location, opts),
        )
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let operation = if options.head { "head" } else { "get" };
        metered(operation, self.inner.get_opts(location, options)).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        metered("get_ranges", self.inner.get_ranges(location, ranges)).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // Each deleted location is one request, timed from the one before it.
        let mut last = Instant::now();
        self.inner
            .delete_stream(locations)
            .inspect(move |result| {
                backend_request("delete", outcome(result), last.elapsed());
                last = Instant::now();
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        MeteredList::new(self.inner.list(prefix)).boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        MeteredList::new(self.inner.list_with_offset(prefix, offset)).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        metered(
            "list_with_delimiter",
            self.inner.list_with_delimiter(prefix),
        )
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        metered("copy", self.inner.copy_opts(from, to, options)).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        metered("rename", self.inner.rename_opts(from, to, options)).await
    }
}

/// A listing, recorded once: when it ends, fails, or is dropped unfinished (then `ok`: the
/// caller stopped, the backend did not fail).
struct MeteredList {
    inner: BoxStream<'static, Result<ObjectMeta>>,
    started: Instant,
    recorded: bool,
}

impl MeteredList {
    fn new(inner: BoxStream<'static, Result<ObjectMeta>>) -> Self {
        Self {
            inner,
            started: Instant::now(),
            recorded: false,
        }
    }

    fn record(&mut self, outcome: &'static str) {
        if !self.recorded {
            self.recorded = true;
            backend_request("list", outcome, self.started.elapsed());
        }
    }
}

impl Stream for MeteredList {
    type Item = Result<ObjectMeta>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        match &next {
            Poll::Ready(None) => self.record("ok"),
            Poll::Ready(Some(Err(e))) => {
                let outcome = failure(e);
                self.record(outcome);
            }
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        next
    }
}

impl Drop for MeteredList {
    fn drop(&mut self) {
        self.record("ok");
    }
}

/// Multipart uploads whose requests are counted and timed.
pub(crate) struct MeteredMultipart {
    inner: Arc<dyn MultipartStore>,
}

impl MeteredMultipart {
    pub(crate) fn new(inner: Arc<dyn MultipartStore>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl MultipartStore for MeteredMultipart {
    async fn create_multipart(&self, path: &Path) -> Result<MultipartId> {
        metered("create_multipart", self.inner.create_multipart(path)).await
    }

    async fn create_multipart_opts(
        &self,
        path: &Path,
        opts: PutMultipartOptions,
    ) -> Result<MultipartId> {
        metered(
            "create_multipart",
            self.inner.create_multipart_opts(path, opts),
        )
        .await
    }

    async fn put_part(
        &self,
        path: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> Result<PartId> {
        metered("put_part", self.inner.put_part(path, id, part_idx, data)).await
    }

    async fn complete_multipart(
        &self,
        path: &Path,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> Result<PutResult> {
        metered(
            "complete_multipart",
            self.inner.complete_multipart(path, id, parts),
        )
        .await
    }

    async fn abort_multipart(&self, path: &Path, id: &MultipartId) -> Result<()> {
        metered("abort_multipart", self.inner.abort_multipart(path, id)).await
    }
}
