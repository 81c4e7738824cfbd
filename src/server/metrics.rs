//! Prometheus metrics of the server (`http.debug.prometheus`): the library's counters (see
//! `layerstore::metrics`) and the registry's requests, rendered on the debug server.
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `layerstore_http_requests_total` | counter | `route`, `method`, `status` |
//! | `layerstore_http_request_duration_seconds` | histogram | `route`, `method`, `status` |
//! | `layerstore_http_request_body_bytes_total` | counter | `route` |
//! | `layerstore_http_response_body_bytes_total` | counter | `route` |
//!
//! `route` is the kind of endpoint, never its parameters: `base`, `catalog`, `tags`,
//! `manifest`, `blob`, `upload` (starting one, and each one's chunks, status and commit),
//! `referrers`, or `other` for paths that name no endpoint. `method` is the HTTP method (one
//! outside the API's is `other`), `status` the status code. A request is counted, and its
//! duration taken, when its response body has been sent or dropped: the duration of a blob
//! download includes the download.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use metrics::{Counter, Label, counter, describe_counter, describe_histogram, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::routes::Route;

pub const HTTP_REQUESTS: &str = "layerstore_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "layerstore_http_request_duration_seconds";
pub const HTTP_REQUEST_BYTES: &str = "layerstore_http_request_body_bytes_total";
pub const HTTP_RESPONSE_BYTES: &str = "layerstore_http_response_body_bytes_total";

/// Latency buckets in seconds, from a cached `HEAD` to a multi-gigabyte layer.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Installs the process's Prometheus recorder and keeps its histograms trimmed; the handle
/// renders the text format.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("http.debug.prometheus: {e}"))?;
    layerstore::metrics::describe();
    describe_counter!(
        HTTP_REQUESTS,
        "Registry requests, by route kind, method and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Registry request duration until the response body is sent, by route kind, method and \
         status"
    );
    describe_counter!(
        HTTP_REQUEST_BYTES,
        metrics::Unit::Bytes,
        "Request body bytes received, by route kind"
    );
    describe_counter!(
        HTTP_RESPONSE_BYTES,
        metrics::Unit::Bytes,
        "Response body bytes sent, by route kind"
    );
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The `route` label of a path.
fn route_kind(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/v2") else {
        return "other";
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return "other";
    }
    match Route::parse(rest.strip_prefix('/').unwrap_or(rest)) {
        Some(Route::Base) => "base",
        Some(Route::Catalog) => "catalog",
        Some(Route::Tags { .. }) => "tags",
        Some(Route::Manifest { .. }) => "manifest",
        Some(Route::Blob { .. }) => "blob",
        Some(Route::Uploads { .. } | Route::Upload { .. }) => "upload",
        Some(Route::Referrers { .. }) => "referrers",
        None => "other",
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts each request, its body bytes both ways and its duration.
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_kind(request.uri().path());
    let method = method_label(request.method());
    let request = request.map(|body| {
        Body::new(Counted {
            inner: body,
            bytes: counter!(HTTP_REQUEST_BYTES, "route" => route),
            on_drop: None,
        })
    });
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    response.map(|body| {
        Body::new(Counted {
            inner: body,
            bytes: counter!(HTTP_RESPONSE_BYTES, "route" => route),
            on_drop: Some(Box::new(move || {
                let labels = vec![
                    Label::new("route", route),
                    Label::new("method", method),
                    Label::new("status", status),
                ];
                counter!(HTTP_REQUESTS, labels.clone()).increment(1);
                histogram!(HTTP_REQUEST_DURATION, labels).record(started.elapsed().as_secs_f64());
            })),
        })
    })
}

/// A body whose data bytes are counted as they pass, with its size hint kept (so a response
/// keeps its `Content-Length`), and an action run when it is dropped.
struct Counted {
    inner: Body,
    bytes: Counter,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    // The inner error unwrapped, so that `Body::new` wraps it once, as it was.
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.increment(data.len() as u64);
        }
        polled.map(|frame| frame.map(|result| result.map_err(axum::Error::into_inner)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(action) = self.on_drop.take() {
            action();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_name_the_endpoint_kind_never_its_parameters() {
        for (path, kind) in [
            ("/v2/", "base"),
            ("/v2", "base"),
            ("/v2/_catalog", "catalog"),
            ("/v2/team/app/tags/list", "tags"),
            ("/v2/team/app/manifests/latest", "manifest"),
            ("/v2/team/app/blobs/sha256:00", "blob"),
            ("/v2/team/app/blobs/uploads/", "upload"),
            ("/v2/team/app/blobs/uploads/0123", "upload"),
            ("/v2/team/app/referrers/sha256:00", "referrers"),
            ("/v2/team/app/nothing", "other"),
            ("/v2x", "other"),
            ("/metrics", "other"),
        ] {
            assert_eq!(route_kind(path), kind, "{path}");
        }
    }

    #[test]
    fn methods_outside_the_api_share_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(
            method_label(&Method::from_bytes(b"PROPFIND").unwrap()),
            "other"
        );
    }
}
