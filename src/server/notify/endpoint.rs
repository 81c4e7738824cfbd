//! One webhook endpoint: its ignore rules, its bounded queue and the worker that POSTs it.
//!
//! The queue holds at most `queuesize` events. When it is full the *oldest* waiting event is
//! dropped: a receiver that comes back after an outage gets the latest events (the ones that
//! describe what the registry holds now), in order, and the gap is counted in
//! `layerstore_notifications_dropped_total` and logged (at most once per
//! [`DROP_LOG_INTERVAL`] per endpoint). The batch in flight is not part of the queue: it is
//! retried until it lands.
//!
//! Retries follow Distribution's retrying sink: after a failed POST (an error, a timeout, or a
//! status outside 200-399) the same batch is sent again at once, until `threshold` attempts in
//! a row have failed; from then on each attempt waits `backoff` after the last failure. The
//! first success resets the count.
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `layerstore_notifications_sent_total` | counter | `endpoint` |
//! | `layerstore_notifications_failures_total` | counter | `endpoint` |
//! | `layerstore_notifications_dropped_total` | counter | `endpoint` |
//! | `layerstore_notifications_pending` | gauge | `endpoint` |
//!
//! `sent` counts events the endpoint accepted, `failures` POSTs that failed (each retry
//! counts), `dropped` events dropped from a full queue, `pending` events waiting in the queue.
//! `endpoint` is the configured name: as many values as the file has endpoints.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use metrics::{Counter, Gauge, counter, describe_counter, describe_gauge, gauge};
use tokio::sync::Notify;

use super::EVENTS_MEDIA_TYPE;
use crate::config;

pub const SENT: &str = "layerstore_notifications_sent_total";
pub const FAILURES: &str = "layerstore_notifications_failures_total";
pub const DROPPED: &str = "layerstore_notifications_dropped_total";
pub const PENDING: &str = "layerstore_notifications_pending";

/// At most this many events go in one POST (whatever is queued when the worker takes some).
const MAX_BATCH: usize = 100;
/// How often, at most, drops and failures of one endpoint are logged.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub fn describe_metrics() {
    describe_counter!(
        SENT,
        "Events delivered to a notification endpoint, by endpoint"
    );
    describe_counter!(
        FAILURES,
        "Failed POSTs to a notification endpoint (each retry counts), by endpoint"
    );
    describe_counter!(
        DROPPED,
        "Events dropped because a notification endpoint's queue was full, by endpoint"
    );
    describe_gauge!(PENDING, "Events waiting in a notification endpoint's queue");
}

/// An event ready to queue: what the ignore rules look at, and its JSON.
#[derive(Debug)]
pub struct Queued {
    pub action: &'static str,
    pub media_type: Option<String>,
    pub json: String,
}

#[derive(Debug)]
pub struct Endpoint {
    name: String,
    ignored_media_types: Vec<String>,
    ignored_actions: Vec<String>,
    capacity: usize,
    queue: Mutex<Waiting>,
    wake: Notify,
    dropped: Counter,
    pending: Gauge,
}

#[derive(Debug, Default)]
struct Waiting {
    events: VecDeque<Arc<Queued>>,
    /// Drops not yet logged, and when drops were last logged.
    unlogged_drops: u64,
    logged_at: Option<Instant>,
}

impl Endpoint {
    /// The endpoint, with its worker running.
    pub fn spawn(config: &config::Endpoint) -> Result<Arc<Self>, String> {
        let mut headers = HeaderMap::new();
        for (name, values) in &config.headers {
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .default_headers(headers)
            .build()
            .map_err(|e| format!("notifications endpoint {}: {e}", config.name))?;
        let label = [("endpoint", config.name.clone())];
        let endpoint = Arc::new(Self {
            name: config.name.clone(),
            ignored_media_types: config.ignored_media_types.clone(),
            ignored_actions: config.ignored_actions.clone(),
            capacity: config.queue_size,
            queue: Mutex::default(),
            wake: Notify::new(),
            dropped: counter!(DROPPED, &label),
            pending: gauge!(PENDING, &label),
        });
        // Present in /metrics from the start, at zero.
        counter!(SENT, &label).absolute(0);
        counter!(FAILURES, &label).absolute(0);
        endpoint.pending.set(0.0);
        let worker = Worker {
            endpoint: endpoint.clone(),
            client,
            url: config.url.clone(),
            threshold: config.threshold,
            backoff: config.backoff,
            sent: counter!(SENT, &label),
            failures: counter!(FAILURES, &label),
        };
        tracing::info!(
            endpoint = config.name,
            url = %config.url,
            timeout = ?config.timeout,
            threshold = config.threshold,
            backoff = ?config.backoff,
            queuesize = config.queue_size,
            "notifications: endpoint configured"
        );
        tokio::spawn(worker.run());
        Ok(endpoint)
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `event` unless the ignore rules drop it; never waits.
    pub fn offer(&self, event: &Arc<Queued>) {
        let ignored_type = event
            .media_type
            .as_ref()
            .is_some_and(|t| self.ignored_media_types.contains(t));
        if ignored_type || self.ignored_actions.iter().any(|a| a == event.action) {
            return;
        }
        let mut waiting = self.waiting();
        if waiting.events.len() >= self.capacity {
            waiting.events.pop_front();
            waiting.unlogged_drops += 1;
            self.dropped.increment(1);
            let now = Instant::now();
            if waiting
                .logged_at
                .is_none_or(|at| now.duration_since(at) >= DROP_LOG_INTERVAL)
            {
                tracing::warn!(
                    endpoint = self.name,
                    dropped = waiting.unlogged_drops,
                    queuesize = self.capacity,
                    "notifications: the endpoint's queue is full; the oldest events were dropped"
                );
                waiting.unlogged_drops = 0;
                waiting.logged_at = Some(now);
            }
        }
        waiting.events.push_back(event.clone());
        #[allow(clippy::cast_precision_loss)] // a queue length, far below 2^53
        self.pending.set(waiting.events.len() as f64);
        drop(waiting);
        self.wake.notify_one();
    }

    /// The next batch, waiting for one.
    async fn next_batch(&self) -> Vec<Arc<Queued>> {
        loop {
            // Registered before the queue is looked at, so an offer in between is not missed.
            let woken = self.wake.notified();
            {
                let mut waiting = self.waiting();
                if !waiting.events.is_empty() {
                    let n = waiting.events.len().min(MAX_BATCH);
                    let batch: Vec<_> = waiting.events.drain(..n).collect();
                    #[allow(clippy::cast_precision_loss)]
                    self.pending.set(waiting.events.len() as f64);
                    return batch;
                }
            }
            woken.await;
        }
    }
}

struct Worker {
    endpoint: Arc<Endpoint>,
    client: reqwest::Client,
    url: reqwest::Url,
    threshold: u32,
    backoff: Duration,
    sent: Counter,
    failures: Counter,
}

impl Worker {
    async fn run(self) {
        let mut failed_in_a_row = 0u32;
        let mut logged_at: Option<Instant> = None;
        loop {
            let batch = self.endpoint.next_batch().await;
            let body = envelope(&batch);
            loop {
                if failed_in_a_row >= self.threshold {
                    tokio::time::sleep(self.backoff).await;
                }
                match self.post(body.clone()).await {
                    Ok(()) => {
                        self.sent.increment(batch.len() as u64);
                        failed_in_a_row = 0;
                        break;
                    }
                    Err(why) => {
                        self.failures.increment(1);
                        failed_in_a_row = failed_in_a_row.saturating_add(1);
                        let now = Instant::now();
                        if logged_at.is_none_or(|at| now.duration_since(at) >= DROP_LOG_INTERVAL) {
                            tracing::warn!(
                                endpoint = self.endpoint.name,
                                error = why,
                                events = batch.len(),
                                failed_in_a_row,
                                "notifications: delivery failed; the same events will be sent \
                                 again"
                            );
                            logged_at = Some(now);
                        }
                    }
                }
            }
        }
    }

    async fn post(&self, body: String) -> Result<(), String> {
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, EVENTS_MEDIA_TYPE)
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("the endpoint answered {status}"))
        }
    }
}

/// `{"events":[…]}` from events serialized one by one.
fn envelope(batch: &[Arc<Queued>]) -> String {
    let size = batch.iter().map(|e| e.json.len() + 1).sum::<usize>() + 12;
    let mut body = String::with_capacity(size);
    body.push_str("{\"events\":[");
    for (i, event) in batch.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&event.json);
    }
    body.push_str("]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(capacity: usize, ignore_types: &[&str], ignore_actions: &[&str]) -> Endpoint {
        Endpoint {
            name: "test".to_owned(),
            ignored_media_types: ignore_types.iter().map(|s| (*s).to_owned()).collect(),
            ignored_actions: ignore_actions.iter().map(|s| (*s).to_owned()).collect(),
            capacity,
            queue: Mutex::default(),
            wake: Notify::new(),
            dropped: Counter::noop(),
            pending: Gauge::noop(),
        }
    }

    fn event(action: &'static str, media_type: &str, json: &str) -> Arc<Queued> {
        Arc::new(Queued {
            action,
            media_type: Some(media_type.to_owned()),
            json: json.to_owned(),
        })
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_event() {
        let e = endpoint(2, &[], &[]);
        for n in ["1", "2", "3"] {
            e.offer(&event("push", "m", n));
        }
        let batch = e.next_batch().await;
        let kept: Vec<&str> = batch.iter().map(|q| q.json.as_str()).collect();
        assert_eq!(kept, ["2", "3"]);
    }

    #[tokio::test]
    async fn ignore_rules_filter_by_media_type_and_by_action() {
        let e = endpoint(10, &["application/octet-stream"], &["pull"]);
        e.offer(&event("push", "application/octet-stream", "blob"));
        e.offer(&event(
            "pull",
            "application/vnd.oci.image.manifest.v1+json",
            "pull",
        ));
        e.offer(&event(
            "push",
            "application/vnd.oci.image.manifest.v1+json",
            "kept",
        ));
        let batch = e.next_batch().await;
        let kept: Vec<&str> = batch.iter().map(|q| q.json.as_str()).collect();
        assert_eq!(kept, ["kept"]);
    }

    #[test]
    fn the_envelope_lists_the_events_in_order() {
        let batch = [
            event("push", "m", "{\"a\":1}"),
            event("pull", "m", "{\"b\":2}"),
        ];
        let json: serde_json::Value = serde_json::from_str(&envelope(&batch)).unwrap();
        assert_eq!(json, serde_json::json!({"events": [{"a": 1}, {"b": 2}]}));
    }
}
