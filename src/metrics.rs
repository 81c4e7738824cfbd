//! The counters, gauges and histograms the store emits, through the [`metrics`] facade.
//!
//! The library records; it never exports. Until a frontend installs a recorder (the reference
//! server installs a Prometheus one when `http.debug.prometheus.enabled` says so), every
//! record is a no-op costing an atomic load. No label carries a repository name, a digest or
//! an upload id: each label has a handful of values, so a scrape stays small whatever the
//! registry holds.
//!
//! | name | kind | labels | moved by |
//! | --- | --- | --- | --- |
//! | `layerstore_uploads_started_total` | counter | | a session started, or a monolithic put begun |
//! | `layerstore_uploads_committed_total` | counter | | a session committed, or a monolithic put stored |
//! | `layerstore_uploads_cancelled_total` | counter | | a session cancelled |
//! | `layerstore_uploads_purged_total` | counter | | a session purged (not in a dry run) |
//! | `layerstore_upload_sessions_open` | gauge | | sessions started here minus those ended here |
//! | `layerstore_cache_hits_total` | counter | | a layerinfo cache lookup that found an entry |
//! | `layerstore_cache_misses_total` | counter | | a lookup that found none |
//! | `layerstore_cache_evictions_total` | counter | | an entry dropped for capacity or age |
//! | `layerstore_cache_redis_errors_total` | counter | `operation`, `reason` | a Redis cache call that failed (`error`, `timeout`) or was skipped right after one (`skipped`); the store used the backend instead, or refused a delete |
//! | `layerstore_backend_requests_total` | counter | `operation`, `outcome` | an object-store call |
//! | `layerstore_backend_request_duration_seconds` | histogram | `operation`, `outcome` | the same call's latency |
//! | `layerstore_gc_runs_total` | counter | `outcome` | a [`crate::Store::gc`] that was not a dry run |
//! | `layerstore_upload_purge_runs_total` | counter | `outcome` | a [`crate::Store::purge_uploads`] |
//!
//! `operation` is one of [`BACKEND_OPERATIONS`]; `outcome` is `ok`, `not_found`,
//! `already_exists`, `precondition` or `error` for backend calls (a missing object is a normal
//! answer, not a failure), `ok` or `error` for runs.
//!
//! `layerstore_upload_sessions_open` is what this process saw: sessions it started, less those
//! it committed, cancelled or purged. Summed over replicas it is the number of open sessions,
//! except for sessions left from before a restart, which the restarted process only sees end
//! (so one replica's value can be negative; the sum over the replicas that saw both ends is
//! not).
//!
//! Backend requests are the object-store calls of every backend (links, manifests, tags, the
//! catalog, S3 and Azure uploads). On the filesystem, an upload's chunk is appended to its
//! staging file directly, not through the object store, and is not counted here.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

pub const UPLOADS_STARTED: &str = "layerstore_uploads_started_total";
pub const UPLOADS_COMMITTED: &str = "layerstore_uploads_committed_total";
pub const UPLOADS_CANCELLED: &str = "layerstore_uploads_cancelled_total";
pub const UPLOADS_PURGED: &str = "layerstore_uploads_purged_total";
pub const UPLOAD_SESSIONS_OPEN: &str = "layerstore_upload_sessions_open";
pub const CACHE_HITS: &str = "layerstore_cache_hits_total";
pub const CACHE_MISSES: &str = "layerstore_cache_misses_total";
pub const CACHE_EVICTIONS: &str = "layerstore_cache_evictions_total";
pub const CACHE_REDIS_ERRORS: &str = "layerstore_cache_redis_errors_total";
pub const BACKEND_REQUESTS: &str = "layerstore_backend_requests_total";
pub const BACKEND_REQUEST_DURATION: &str = "layerstore_backend_request_duration_seconds";
pub const GC_RUNS: &str = "layerstore_gc_runs_total";
pub const PURGE_RUNS: &str = "layerstore_upload_purge_runs_total";

/// The values of the `operation` label of backend requests.
pub const BACKEND_OPERATIONS: &[&str] = &[
    "get",
    "head",
    "get_ranges",
    "put",
    "put_multipart",
    "delete",
    "list",
    "list_with_delimiter",
    "copy",
    "rename",
    "create_multipart",
    "put_part",
    "complete_multipart",
    "abort_multipart",
];

/// Gives every metric above its help text and unit in the installed recorder. Optional (the
/// metrics are recorded either way); a frontend calls it once after installing its recorder.
pub fn describe() {
    describe_counter!(
        UPLOADS_STARTED,
        "Upload sessions started, and monolithic blob puts"
    );
    describe_counter!(
        UPLOADS_COMMITTED,
        "Uploads committed (sessions and monolithic puts)"
    );
    describe_counter!(UPLOADS_CANCELLED, "Upload sessions cancelled by a client");
    describe_counter!(UPLOADS_PURGED, "Abandoned upload sessions purged");
    describe_gauge!(
        UPLOAD_SESSIONS_OPEN,
        "Upload sessions started by this process and not yet ended by it"
    );
    describe_counter!(CACHE_HITS, "Layerinfo cache lookups that found an entry");
    describe_counter!(CACHE_MISSES, "Layerinfo cache lookups that found none");
    describe_counter!(
        CACHE_EVICTIONS,
        "Layerinfo cache entries dropped for capacity or age"
    );
    describe_counter!(
        CACHE_REDIS_ERRORS,
        "Redis cache calls that failed or were skipped after a failure, by operation and reason"
    );
    describe_counter!(
        BACKEND_REQUESTS,
        "Object-store requests, by operation and outcome"
    );
    describe_histogram!(
        BACKEND_REQUEST_DURATION,
        Unit::Seconds,
        "Object-store request latency, by operation and outcome"
    );
    describe_counter!(
        GC_RUNS,
        "Garbage collection runs (not dry runs), by outcome"
    );
    describe_counter!(PURGE_RUNS, "Upload purge sweeps, by outcome");
}

pub(crate) fn upload_started() {
    counter!(UPLOADS_STARTED).increment(1);
    gauge!(UPLOAD_SESSIONS_OPEN).increment(1.0);
}

/// A monolithic put: an upload that starts and ends in one call, never an open session.
pub(crate) fn monolithic_started() {
    counter!(UPLOADS_STARTED).increment(1);
}

pub(crate) fn monolithic_committed() {
    counter!(UPLOADS_COMMITTED).increment(1);
}

pub(crate) fn session_committed() {
    counter!(UPLOADS_COMMITTED).increment(1);
    gauge!(UPLOAD_SESSIONS_OPEN).decrement(1.0);
}

pub(crate) fn session_cancelled() {
    counter!(UPLOADS_CANCELLED).increment(1);
    gauge!(UPLOAD_SESSIONS_OPEN).decrement(1.0);
}

pub(crate) fn sessions_purged(n: u64) {
    counter!(UPLOADS_PURGED).increment(n);
    #[allow(clippy::cast_precision_loss)] // exact up to 2^53 sessions
    gauge!(UPLOAD_SESSIONS_OPEN).decrement(n as f64);
}

pub(crate) fn cache_lookup(hit: bool) {
    counter!(if hit { CACHE_HITS } else { CACHE_MISSES }).increment(1);
}

pub(crate) fn cache_evicted() {
    counter!(CACHE_EVICTIONS).increment(1);
}

/// `operation` is one of `crate::cache::REDIS_OPERATIONS`; `reason` is `error`, `timeout`
/// or `skipped`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn redis_error(operation: &'static str, reason: &'static str) {
    counter!(CACHE_REDIS_ERRORS, "operation" => operation, "reason" => reason).increment(1);
}

pub(crate) fn backend_request(operation: &'static str, outcome: &'static str, took: Duration) {
    let labels = [("operation", operation), ("outcome", outcome)];
    counter!(BACKEND_REQUESTS, &labels).increment(1);
    histogram_seconds(BACKEND_REQUEST_DURATION, &labels, took);
}

fn histogram_seconds(name: &'static str, labels: &[(&'static str, &'static str)], took: Duration) {
    metrics::histogram!(name, labels).record(took.as_secs_f64());
}

pub(crate) fn run(name: &'static str, ok: bool) {
    counter!(name, "outcome" => if ok { "ok" } else { "error" }).increment(1);
}
