//! Webhook notifications (`notifications.endpoints`): the store's events (see
//! `layerstore::events`), in Distribution's envelope, POSTed to each endpoint.
//!
//! ```text
//! store ──send(Event)──► Notifier ──(ignore rules)──► endpoint queue ──worker──► POST
//!        in the request's task:        per endpoint:  bounded, drops     retries the same
//!        adds request, actor, source   the oldest when full              batch until it lands
//! ```
//!
//! The store calls [`Notifier::send`] in the task of the request that did the operation, so
//! the request's details (id, client address, host, method, user agent) and the authenticated
//! user reach the event through a task-local the registry's handler sets ([`in_request`]),
//! with no HTTP type in the library and no context argument on each of its calls. `send`
//! only serializes the event and puts it on each endpoint's queue: a slow or dead endpoint
//! never slows a request, and each queue holds at most `queuesize` events.
//!
//! Delivery is at least once and in order per endpoint while the process runs: a batch that
//! fails is sent again, with the same event ids, until the endpoint accepts it (2xx or 3xx),
//! as Distribution's retrying sink does; events still queued when the process stops are lost,
//! as in Distribution.

mod endpoint;

use std::sync::Arc;

use chrono::SecondsFormat;
use layerstore::Manifest;
use layerstore::events::{Event, EventSink, Kind};
use serde::Serialize;

use crate::config::Notifications;
pub use endpoint::describe_metrics;
use endpoint::{Endpoint, Queued};

/// `Content-Type` of every POST.
pub const EVENTS_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// The request an event happened in, and who made it.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub id: String,
    /// The client: the first `X-Forwarded-For` address, `X-Real-Ip`, or the peer address.
    pub addr: String,
    pub host: String,
    pub method: String,
    pub user_agent: String,
    /// The authenticated user (htpasswd) or token subject.
    pub actor: Option<String>,
    /// `http`, `https`, or what `X-Forwarded-Proto` says: the scheme of `target.url`.
    pub scheme: String,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Runs `future` with `context` as the request every event it causes belongs to.
pub async fn in_request<F: Future>(context: RequestContext, future: F) -> F::Output {
    REQUEST.scope(context, future).await
}

/// Where this registry is: `addr` (host name and port) and an id of this process.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub addr: String,
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

/// The store's event sink: turns each event into Distribution's JSON and queues it on every
/// endpoint whose ignore rules let it through.
#[derive(Debug)]
pub struct Notifier {
    endpoints: Vec<Arc<Endpoint>>,
    source: Source,
    include_references: bool,
}

impl Notifier {
    /// Starts a worker per enabled endpoint; `None` if there is none.
    pub fn spawn(config: &Notifications, source: Source) -> Result<Option<Arc<Self>>, String> {
        for e in config.endpoints.iter().filter(|e| e.disabled) {
            tracing::info!(
                endpoint = e.name,
                "notifications: endpoint disabled, skipped"
            );
        }
        let endpoints = config
            .enabled()
            .map(Endpoint::spawn)
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Self {
            endpoints,
            source,
            include_references: config.include_references,
        })))
    }
}

impl EventSink for Notifier {
    fn send(&self, event: Event) {
        let request = REQUEST.try_with(Clone::clone).unwrap_or_default();
        let queued = Arc::new(Queued {
            action: event.action.as_str(),
            media_type: event.media_type.clone(),
            json: envelope_entry(&event, &request, &self.source, self.include_references),
        });
        for endpoint in &self.endpoints {
            endpoint.offer(&queued);
        }
    }
}

#[derive(Serialize)]
struct EventJson<'a> {
    id: String,
    timestamp: String,
    action: &'static str,
    target: Target<'a>,
    request: RequestJson<'a>,
    actor: Actor<'a>,
    source: &'a Source,
}

/// Distribution's `target`: its descriptor fields (`mediaType`, `size`, `digest`), `length`
/// (the size again), `repository`, `fromRepository` (a mount), `url`, `tag`, `references`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Target<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    repository: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_repository: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    references: Vec<layerstore::Descriptor>,
}

/// Distribution's `request`: `id`, `method` and `useragent` always, `addr` and `host` when
/// known.
#[derive(Serialize)]
struct RequestJson<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    addr: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    host: &'a str,
    method: &'a str,
    useragent: &'a str,
}

#[derive(Serialize)]
struct Actor<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// One event as Distribution's notifications send it.
fn envelope_entry(
    event: &Event,
    request: &RequestContext,
    source: &Source,
    include_references: bool,
) -> String {
    let repository = event.repository.as_ref();
    // The canonical URL, by digest, as Distribution's URL builder makes it from the request
    // (pushes and pulls; deletes carry none).
    let url = match (event.digest, event.size, request.host.is_empty()) {
        (Some(digest), Some(_), false) => {
            let kind = if event.kind == Kind::Manifest {
                "manifests"
            } else {
                "blobs"
            };
            Some(format!(
                "{}://{}/v2/{repository}/{kind}/{digest}",
                request.scheme, request.host
            ))
        }
        _ => None,
    };
    let references = match (&event.manifest, &event.media_type, include_references) {
        (Some(bytes), Some(media_type), true) => Manifest::parse(bytes.clone(), Some(media_type))
            .map(|m| {
                m.references()
                    .filter(|(role, _)| *role != layerstore::manifest::Role::Subject)
                    .map(|(_, d)| d.clone())
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let json = EventJson {
        id: uuid::Uuid::new_v4().to_string(),
        timestamp: event.timestamp.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        action: event.action.as_str(),
        target: Target {
            media_type: event.media_type.as_deref(),
            size: event.size,
            digest: event.digest.map(|d| d.to_string()),
            length: event.size,
            repository,
            from_repository: event.from_repository.as_ref().map(AsRef::as_ref),
            url,
            tag: event.tag.as_ref().map(AsRef::as_ref),
            references,
        },
        request: RequestJson {
            id: &request.id,
            addr: &request.addr,
            host: &request.host,
            method: &request.method,
            useragent: &request.user_agent,
        },
        actor: Actor {
            name: request.actor.as_deref(),
        },
        source,
    };
    // Strings, numbers and descriptors: serializing cannot fail.
    serde_json::to_string(&json).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerstore::events::channel;
    use layerstore::{Digest, RepositoryName, Store};

    /// An event as the store makes it, caught in-process.
    async fn pushed_blob() -> Event {
        let (sink, mut events) = channel(8);
        let store = Store::new(layerstore::Backend::in_memory()).with_events(sink);
        let repo = store.repository(RepositoryName::parse("team/app").unwrap());
        let data = bytes::Bytes::from_static(b"layer");
        repo.put_blob(&Digest::sha256(&data), data).await.unwrap();
        events.recv().await.unwrap()
    }

    fn source() -> Source {
        Source {
            addr: "registry-host:5000".to_owned(),
            instance_id: "instance".to_owned(),
        }
    }

    #[tokio::test]
    async fn a_blob_push_has_distributions_fields() {
        let request = RequestContext {
            id: "req".to_owned(),
            addr: "10.0.0.1:1234".to_owned(),
            host: "registry:5000".to_owned(),
            method: "PUT".to_owned(),
            user_agent: "docker/27".to_owned(),
            actor: Some("alice".to_owned()),
            scheme: "https".to_owned(),
        };
        let text = envelope_entry(&pushed_blob().await, &request, &source(), false);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let digest = Digest::sha256(b"layer").to_string();
        assert_eq!(json["action"], "push");
        assert_eq!(
            json["target"],
            serde_json::json!({
                "mediaType": "application/octet-stream",
                "size": 5,
                "digest": digest,
                "length": 5,
                "repository": "team/app",
                "url": format!("https://registry:5000/v2/team/app/blobs/{digest}"),
            })
        );
        assert_eq!(
            json["request"],
            serde_json::json!({"id": "req", "addr": "10.0.0.1:1234", "host": "registry:5000",
                "method": "PUT", "useragent": "docker/27"})
        );
        assert_eq!(json["actor"], serde_json::json!({"name": "alice"}));
        assert_eq!(
            json["source"],
            serde_json::json!({"addr": "registry-host:5000", "instanceID": "instance"})
        );
        assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(json["id"].as_str().unwrap().len(), 36);
    }

    #[tokio::test]
    async fn includereferences_lists_what_a_pushed_manifest_references() {
        let (sink, mut events) = channel(8);
        let store = Store::new(layerstore::Backend::in_memory()).with_events(sink);
        let repo = store.repository(RepositoryName::parse("team/app").unwrap());
        let config = bytes::Bytes::from_static(b"{}");
        let digest = Digest::sha256(&config);
        repo.put_blob(&digest, config).await.unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":2}},"layers":[]}}"#,
            layerstore::manifest::media_type::OCI_MANIFEST
        );
        let tag = layerstore::Reference::Tag(layerstore::Tag::parse("v1").unwrap());
        repo.put_manifest(&tag, manifest.into(), None)
            .await
            .unwrap();
        events.recv().await.unwrap();
        let pushed = events.recv().await.unwrap();
        let request = RequestContext::default();
        let with = envelope_entry(&pushed, &request, &source(), true);
        let with: serde_json::Value = serde_json::from_str(&with).unwrap();
        assert_eq!(
            with["target"]["references"],
            serde_json::json!([{"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest.to_string(), "size": 2}])
        );
        let without = envelope_entry(&pushed, &request, &source(), false);
        let without: serde_json::Value = serde_json::from_str(&without).unwrap();
        assert!(without["target"].get("references").is_none());
    }

    #[tokio::test]
    async fn an_event_outside_a_request_has_an_empty_actor() {
        let text = envelope_entry(
            &pushed_blob().await,
            &RequestContext::default(),
            &source(),
            false,
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["actor"], serde_json::json!({}));
        assert!(json["target"].get("url").is_none());
    }
}
