//! `notifications`: webhook endpoints that receive the registry's events, as Distribution's
//! `notifications.endpoints` configures them, and `notifications.events.includereferences`.
//!
//! ```yaml
//! notifications:
//!   events:
//!     includereferences: true    # manifest events list what the manifest references
//!   endpoints:
//!     - name: ci                 # required, unique: the metrics' `endpoint` label
//!       url: https://ci.example.com/registry-events   # required, http or https
//!       headers: {Authorization: [Bearer s3cr3t]}     # added to every POST
//!       timeout: 1s              # each POST; default 1s
//!       threshold: 10            # failures in a row before waiting `backoff`; default 10
//!       backoff: 1s              # wait between attempts after `threshold` failures; default 1s
//!       disabled: false
//!       ignoredmediatypes: [application/octet-stream]
//!       ignore:
//!         mediatypes: [application/vnd.oci.image.config.v1+json]
//!         actions: [pull]
//!       queuesize: 10000         # layerstore's: events held while the endpoint lags
//! ```
//!
//! Zero (or absent) `timeout`, `threshold` and `backoff` take Distribution's defaults, as its
//! endpoints do. `queuesize` is layerstore's own: Distribution's queue has no bound, so a dead
//! endpoint grows its memory without end; here the oldest event is dropped once `queuesize`
//! are waiting (Distribution ignores the key, so one file still runs on both).

use std::collections::HashSet;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use serde_yaml_ng::Value;

use super::http::parse_headers;
use super::report::{
    Field, Report, Section, get_bool, get_duration, get_string, get_u64, join, kind, take_bool,
};
use super::{go_duration, redacted, row};

/// Distribution's defaults for an endpoint (its `notifications/endpoint.go`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_THRESHOLD: u32 = 10;
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// Events an endpoint holds while it lags, unless `queuesize` says otherwise.
pub const DEFAULT_QUEUE_SIZE: usize = 10_000;

/// The actions an event can have, which `ignore.actions` may name.
pub const ACTIONS: &[&str] = &["push", "pull", "mount", "delete"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notifications {
    /// Every endpoint of the file, disabled ones too (the server starts only the others).
    pub endpoints: Vec<Endpoint>,
    /// `events.includereferences`: manifest events carry `target.references`.
    pub include_references: bool,
}

impl Notifications {
    /// The endpoints to start.
    pub fn enabled(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| !e.disabled)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub url: reqwest::Url,
    pub headers: Vec<(HeaderName, Vec<HeaderValue>)>,
    pub timeout: Duration,
    pub threshold: u32,
    pub backoff: Duration,
    pub disabled: bool,
    /// `ignoredmediatypes` and `ignore.mediatypes` together.
    pub ignored_media_types: Vec<String>,
    /// `ignore.actions`: each one of [`ACTIONS`].
    pub ignored_actions: Vec<String>,
    pub queue_size: usize,
}

impl Notifications {
    /// The `notifications` lines of [`super::Config::describe`]; header values are redacted
    /// (they often carry credentials).
    pub(super) fn describe(&self, out: &mut String) {
        out.push_str("notifications\n");
        if self.endpoints.is_empty() {
            row(out, "endpoints", &"none");
        }
        for e in &self.endpoints {
            let state = if e.disabled { "disabled" } else { "enabled" };
            row(
                out,
                &format!("endpoint {}", e.name),
                &format!(
                    "{state}, {}, timeout {}, threshold {}, backoff {}, queuesize {}",
                    e.url,
                    go_duration(e.timeout),
                    e.threshold,
                    go_duration(e.backoff),
                    e.queue_size
                ),
            );
            for (name, _) in &e.headers {
                row(out, "  header", &format!("{name}: {}", redacted(true, "")));
            }
            if !e.ignored_media_types.is_empty() || !e.ignored_actions.is_empty() {
                row(
                    out,
                    "  ignore",
                    &format!(
                        "media types [{}], actions [{}]",
                        e.ignored_media_types.join(", "),
                        e.ignored_actions.join(", ")
                    ),
                );
            }
        }
        if self.include_references {
            row(out, "includereferences", &"yes");
        }
    }
}

pub(super) fn parse_notifications(report: &mut Report, field: &Field<'_>) -> Notifications {
    let mut notifications = Notifications::default();
    let Some(mut s) = Section::new(report, &field.key, field.value) else {
        return notifications;
    };
    if let Some(f) = s.take("events")
        && let Some(mut events) = Section::new(report, &f.key, f.value)
    {
        notifications.include_references =
            take_bool(report, &mut events, "includereferences").unwrap_or(false);
        events.finish(report);
    }
    if let Some(f) = s.take("endpoints") {
        match f.value {
            Value::Null => {}
            Value::Sequence(items) => {
                let mut names = HashSet::new();
                for (i, value) in items.iter().enumerate() {
                    let item = Field {
                        key: format!("{}.{i}", f.key),
                        value,
                    };
                    if let Some(endpoint) = parse_endpoint(report, &item) {
                        if !names.insert(endpoint.name.clone()) {
                            report.error(
                                &format!("{}.name", item.key),
                                format!("`{}` names another endpoint too", endpoint.name),
                            );
                        }
                        notifications.endpoints.push(endpoint);
                    }
                }
            }
            other => report.error(
                &f.key,
                format!("expected a list of endpoints, found {}", kind(other)),
            ),
        }
    }
    s.finish(report);
    notifications
}

fn parse_endpoint(report: &mut Report, field: &Field<'_>) -> Option<Endpoint> {
    let mut s = Section::new(report, &field.key, field.value)?;
    let errors = report.errors.len();
    let required = |report: &mut Report, s: &mut Section<'_>, key: &str| {
        let key_path = join(&field.key, key);
        let before = report.errors.len();
        let value = s.take(key).and_then(|f| get_string(report, &f));
        if value.is_none() && report.errors.len() == before {
            report.error(&key_path, "required");
        }
        value.map(|v| (v, key_path))
    };
    let name = required(report, &mut s, "name").map(|(name, _)| name);
    let url = required(report, &mut s, "url")
        .and_then(|(text, key)| parse_url(&text).map_err(|why| report.error(&key, why)).ok());
    let headers = s
        .take("headers")
        .map(|f| parse_headers(report, &f))
        .unwrap_or_default();
    let duration = |report: &mut Report, s: &mut Section<'_>, key: &str, default: Duration| {
        s.take(key)
            .and_then(|f| get_duration(report, &f))
            .filter(|d| !d.is_zero())
            .unwrap_or(default)
    };
    let timeout = duration(report, &mut s, "timeout", DEFAULT_TIMEOUT);
    let backoff = duration(report, &mut s, "backoff", DEFAULT_BACKOFF);
    let mut threshold = DEFAULT_THRESHOLD;
    if let Some(f) = s.take("threshold")
        && let Some(n) = get_u64(report, &f)
    {
        match u32::try_from(n) {
            Ok(0) => {}
            Ok(n) => threshold = n,
            Err(_) => report.error(&f.key, format!("{n} is too large")),
        }
    }
    let disabled = s
        .take("disabled")
        .and_then(|f| get_bool(report, &f))
        .unwrap_or(false);
    let mut ignored_media_types = s
        .take("ignoredmediatypes")
        .map(|f| strings(report, &f))
        .unwrap_or_default();
    let mut ignored_actions = Vec::new();
    if let Some(f) = s.take("ignore")
        && let Some(mut ignore) = Section::new(report, &f.key, f.value)
    {
        if let Some(f) = ignore.take("mediatypes") {
            ignored_media_types.extend(strings(report, &f));
        }
        if let Some(f) = ignore.take("actions") {
            for (i, action) in strings(report, &f).into_iter().enumerate() {
                if ACTIONS.contains(&action.as_str()) {
                    ignored_actions.push(action);
                } else {
                    report.error(
                        &format!("{}.{i}", f.key),
                        format!(
                            "`{action}` is not an action (one of {})",
                            ACTIONS.join(", ")
                        ),
                    );
                }
            }
        }
        ignore.finish(report);
    }
    let mut queue_size = DEFAULT_QUEUE_SIZE;
    if let Some(f) = s.take("queuesize")
        && let Some(n) = get_u64(report, &f)
    {
        match usize::try_from(n) {
            Ok(0) => report.error(&f.key, "must be at least 1"),
            Ok(n) => queue_size = n,
            Err(_) => report.error(&f.key, format!("{n} is too large")),
        }
    }
    s.finish(report);
    if report.errors.len() > errors {
        return None;
    }
    Some(Endpoint {
        name: name?,
        url: url?,
        headers,
        timeout,
        threshold,
        backoff,
        disabled,
        ignored_media_types,
        ignored_actions,
        queue_size,
    })
}

/// An absolute `http` or `https` URL.
fn parse_url(text: &str) -> Result<reqwest::Url, String> {
    let url =
        reqwest::Url::parse(text).map_err(|e| format!("`{text}` is not an absolute URL ({e})"))?;
    match url.scheme() {
        "http" | "https" if url.has_host() => Ok(url),
        "http" | "https" => Err(format!("`{text}` names no host")),
        other => Err(format!(
            "`{text}`: the scheme must be http or https, not {other}"
        )),
    }
}

/// A list of strings (a single string reads as a list of one).
fn strings(report: &mut Report, field: &Field<'_>) -> Vec<String> {
    let items: Vec<&Value> = match field.value {
        Value::Sequence(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, value)| {
            get_string(
                report,
                &Field {
                    key: format!("{}.{i}", field.key),
                    value,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    fn endpoints(yaml: &str) -> Notifications {
        let config = load(&format!("{FS}notifications:\n{yaml}"));
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        config.notifications
    }

    #[test]
    fn an_endpoint_reads_every_distribution_key() {
        let n = endpoints(
            "  events: {includereferences: true}
  endpoints:
    - name: ci
      url: https://ci.example.com/events
      headers: {Authorization: [Bearer t0ken], X-Two: [a, b]}
      timeout: 500ms
      threshold: 5
      backoff: 3s
      disabled: false
      ignoredmediatypes: [application/octet-stream]
      ignore:
        mediatypes: [application/vnd.oci.image.config.v1+json]
        actions: [pull, mount]
      queuesize: 20
",
        );
        assert!(n.include_references);
        let e = &n.endpoints[0];
        assert_eq!(e.name, "ci");
        assert_eq!(e.url.as_str(), "https://ci.example.com/events");
        assert_eq!(e.headers.len(), 2);
        assert_eq!(e.headers[0].0.as_str(), "authorization");
        assert_eq!(e.headers[0].1[0], "Bearer t0ken");
        assert_eq!(e.headers[1].1.len(), 2);
        assert_eq!(e.timeout, Duration::from_millis(500));
        assert_eq!(e.threshold, 5);
        assert_eq!(e.backoff, Duration::from_secs(3));
        assert!(!e.disabled);
        assert_eq!(
            e.ignored_media_types,
            [
                "application/octet-stream",
                "application/vnd.oci.image.config.v1+json"
            ]
        );
        assert_eq!(e.ignored_actions, ["pull", "mount"]);
        assert_eq!(e.queue_size, 20);
    }

    #[test]
    fn absent_or_zero_values_take_distributions_defaults() {
        for yaml in [
            "  endpoints:\n    - {name: a, url: 'http://h/e'}\n",
            "  endpoints:\n    - {name: a, url: 'http://h/e', timeout: 0s, threshold: 0, \
             backoff: 0}\n",
        ] {
            let e = endpoints(yaml).endpoints.remove(0);
            assert_eq!(e.timeout, DEFAULT_TIMEOUT);
            assert_eq!(e.threshold, DEFAULT_THRESHOLD);
            assert_eq!(e.backoff, DEFAULT_BACKOFF);
            assert_eq!(e.queue_size, DEFAULT_QUEUE_SIZE);
            assert!(!e.disabled && e.headers.is_empty());
        }
    }

    #[test]
    fn disabled_endpoints_are_read_but_not_enabled() {
        let n = endpoints(
            "  endpoints:\n    - {name: off, url: 'http://h/1', disabled: true}\n    \
             - {name: on, url: 'http://h/2'}\n",
        );
        assert_eq!(n.endpoints.len(), 2);
        let enabled: Vec<&str> = n.enabled().map(|e| e.name.as_str()).collect();
        assert_eq!(enabled, ["on"]);
    }

    #[test]
    fn no_section_or_no_endpoints_configures_none() {
        assert_eq!(load(FS).notifications, Notifications::default());
        assert!(endpoints("  endpoints: []\n").endpoints.is_empty());
    }

    #[test]
    fn bad_endpoints_are_errors_naming_the_key() {
        for (yaml, expected) in [
            (
                "- {url: 'http://h/e'}",
                "notifications.endpoints.0.name: required",
            ),
            ("- {name: a}", "notifications.endpoints.0.url: required"),
            (
                "- {name: a, url: 'not a url'}",
                "notifications.endpoints.0.url: `not a url` is not an absolute URL",
            ),
            (
                "- {name: a, url: 'ftp://h/e'}",
                "notifications.endpoints.0.url: `ftp://h/e`: the scheme must be http or https",
            ),
            (
                "- {name: a, url: 'http://h/e', timeout: 5}",
                "notifications.endpoints.0.timeout: `5` has no unit",
            ),
            (
                "- {name: a, url: 'http://h/e', backoff: soon}",
                "notifications.endpoints.0.backoff: invalid duration `soon`",
            ),
            (
                "- {name: a, url: 'http://h/e', threshold: -1}",
                "notifications.endpoints.0.threshold: must not be negative",
            ),
            (
                "- {name: a, url: 'http://h/e', ignore: {actions: [pul]}}",
                "notifications.endpoints.0.ignore.actions.0: `pul` is not an action",
            ),
            (
                "- {name: a, url: 'http://h/e', queuesize: 0}",
                "notifications.endpoints.0.queuesize: must be at least 1",
            ),
            (
                "- {name: a, url: 'http://h/e', headres: {}}",
                "notifications.endpoints.0.headres: unknown key",
            ),
            (
                "- {name: a, url: 'http://h/1'}\n    - {name: a, url: 'http://h/2'}",
                "notifications.endpoints.1.name: `a` names another endpoint too",
            ),
        ] {
            let e = fail(&format!("{FS}notifications:\n  endpoints:\n    {yaml}\n"));
            assert!(e.contains(expected), "{yaml}: {e}");
        }
        let e = fail(&format!("{FS}notifications: {{endpoints: {{name: a}}}}\n"));
        assert!(
            e.contains("notifications.endpoints: expected a list of endpoints"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_can_be_set_from_the_environment() {
        let config = Config::from_yaml(
            FS,
            &env(&[
                ("REGISTRY_NOTIFICATIONS_ENDPOINTS_0_NAME", "ci"),
                ("REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL", "http://ci:8080/e"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.notifications.endpoints[0].url.as_str(),
            "http://ci:8080/e"
        );
    }

    #[test]
    fn describe_names_each_endpoint_and_hides_header_values() {
        let config = load(&format!(
            "{FS}notifications:\n  endpoints:\n    - name: ci\n      url: http://h/e\n      \
             headers: {{Authorization: [Bearer t0ken]}}\n"
        ));
        let text = config.describe();
        assert!(
            text.contains("endpoint ci") && text.contains("http://h/e"),
            "{text}"
        );
        assert!(!text.contains("t0ken"), "{text}");
    }
}
