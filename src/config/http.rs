//! `http`: the listening address, TLS (with client certificates), extra response headers and
//! the debug server (`http.debug`: `/debug/health` and Prometheus metrics).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use axum::http::{HeaderName, HeaderValue};
use serde_yaml_ng::Value;

use super::report::{
    Field, Report, Section, checked_file, get_string, is_set, join, kind, take_bool, take_string,
};
use super::{Config, row};

#[derive(Debug, Clone)]
pub struct Http {
    pub addr: SocketAddr,
    pub tls: Option<Tls>,
    /// `http.headers`: added to every response, in the file's order, each name with its
    /// values (a header the response sets itself keeps the response's value).
    pub headers: Vec<(HeaderName, Vec<HeaderValue>)>,
    /// `http.debug`: a second listener, never the registry's.
    pub debug: Option<Debug>,
}

/// The debug server: `/debug/health` always, metrics when `prometheus` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debug {
    pub addr: SocketAddr,
    /// `http.debug.prometheus.path` (default `/metrics`) when `prometheus.enabled`.
    pub prometheus: Option<String>,
}

/// Where `/metrics` is served unless `http.debug.prometheus.path` says otherwise.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";

#[derive(Debug, Clone)]
pub struct Tls {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// `http.tls.clientcas`: when not empty, only clients presenting a certificate issued by
    /// one of these CAs complete the handshake.
    pub client_cas: Vec<PathBuf>,
}

impl Http {
    /// The `http` lines of [`super::Config::describe`].
    pub(super) fn describe(&self, out: &mut String) {
        out.push_str("http\n");
        row(out, "addr", &self.addr);
        match &self.tls {
            None => row(out, "tls", &"off (plain HTTP)"),
            Some(tls) => {
                row(out, "tls.certificate", &tls.certificate.display());
                row(out, "tls.key", &tls.key.display());
                if tls.client_cas.is_empty() {
                    row(
                        out,
                        "tls.clientcas",
                        &"none (no client certificate asked for)",
                    );
                }
                for ca in &tls.client_cas {
                    row(out, "tls.clientcas", &ca.display());
                }
            }
        }
        for (name, values) in &self.headers {
            for value in values {
                let value = String::from_utf8_lossy(value.as_bytes());
                row(out, "headers", &format!("{name}: {value}"));
            }
        }
        match &self.debug {
            None => row(out, "debug", &"off"),
            Some(debug) => {
                row(out, "debug.addr", &debug.addr);
                let metrics = debug.prometheus.as_deref().unwrap_or("off");
                row(out, "debug.prometheus", &metrics);
            }
        }
    }
}

pub(super) fn parse_http(report: &mut Report, field: &Field<'_>) -> Http {
    let mut http = Config::default().http;
    let Some(mut s) = Section::new(report, &field.key, field.value) else {
        return http;
    };
    if let Some(f) = s.take("addr")
        && let Some(text) = get_string(report, &f)
    {
        match parse_addr(&text) {
            Ok(addr) => http.addr = addr,
            Err(why) => report.error(&f.key, why),
        }
    }
    if let Some(f) = s.take("net")
        && let Some(net) = get_string(report, &f)
        && net != "tcp"
    {
        report.error(&f.key, format!("only tcp is supported, found `{net}`"));
    }
    if let Some(f) = s.take("tls") {
        http.tls = parse_tls(report, &f);
    }
    if let Some(f) = s.take("headers") {
        http.headers = parse_headers(report, &f);
    }
    if let Some(f) = s.take("debug") {
        http.debug = parse_debug(report, &f);
    }
    if let Some(debug) = &http.debug
        && debug.addr == http.addr
        && debug.addr.port() != 0
    {
        report.error(
            &join(&field.key, "debug.addr"),
            "the debug server needs its own address, not the registry's",
        );
    }
    for (key, why) in [
        ("prefix", "the API is served at /v2/"),
        ("host", "URLs in responses are derived from the request"),
        ("secret", "layerstore signs no client-side state"),
        ("relativeurls", "Location headers are always relative"),
        (
            "draintimeout",
            "connections are drained without a time limit",
        ),
        ("http2", "HTTP/2 is negotiated automatically over TLS"),
        ("h2c", "no HTTP/2 without TLS"),
    ] {
        s.ignore(report, key, why);
    }
    s.finish(report);
    http
}

/// `http.debug`: `addr` and `prometheus: {enabled, path}`. Without `addr` there is no debug
/// server, as in Distribution; metrics asked for without one are refused rather than lost.
fn parse_debug(report: &mut Report, field: &Field<'_>) -> Option<Debug> {
    let mut s = Section::new(report, &field.key, field.value)?;
    let addr_field = s.take("addr");
    let addr = addr_field.as_ref().and_then(|f| {
        let text = get_string(report, f)?;
        parse_addr(&text)
            .map_err(|why| report.error(&f.key, why))
            .ok()
    });
    let mut prometheus = None;
    let mut prometheus_key = None;
    if let Some(f) = s.take("prometheus")
        && let Some(mut p) = Section::new(report, &f.key, f.value)
    {
        let enabled = take_bool(report, &mut p, "enabled").unwrap_or(false);
        let path_key = join(&f.key, "path");
        let path = take_string(report, &mut p, "path");
        p.finish(report);
        if enabled {
            let path = path.unwrap_or_else(|| DEFAULT_METRICS_PATH.to_owned());
            if !path.starts_with('/') || path == "/debug/health" {
                report.error(
                    &path_key,
                    format!("`{path}` must be a path starting with / other than /debug/health"),
                );
            }
            prometheus = Some(path);
            prometheus_key = Some(f.key);
        }
    }
    s.finish(report);
    let Some(addr) = addr else {
        if let Some(key) = prometheus_key {
            report.error(
                &key,
                format!(
                    "metrics are served by the debug server: set {} too",
                    join(&field.key, "addr")
                ),
            );
        }
        return None;
    };
    Some(Debug { addr, prometheus })
}

/// `:5000` (all interfaces), `host:port`, `[::1]:5000`, or a resolvable `name:port`.
pub(super) fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port in `{text}`"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("invalid address `{text}` (expected HOST:PORT or :PORT): {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

pub(super) fn parse_tls(report: &mut Report, field: &Field<'_>) -> Option<Tls> {
    let mut s = Section::new(report, &field.key, field.value)?;
    // Both absent or empty is "no TLS", as in Distribution; one alone is an error, never a
    // silent fall back to plain HTTP.
    let certificate = s.take("certificate").filter(|f| is_set(f.value));
    let key = s.take("key").filter(|f| is_set(f.value));
    let client_cas = s
        .take("clientcas")
        .map(|f| parse_client_cas(report, &f))
        .unwrap_or_default();
    if let Some(f) = s.take("letsencrypt").filter(|f| is_set(f.value)) {
        report.error(
            &f.key,
            "Let's Encrypt is not supported (the registry would not serve the TLS it is meant \
             to): give certificate and key files",
        );
    }
    s.ignore(
        report,
        "clientauth",
        "with clientcas, a certificate from those CAs is always required and verified; \
         without, none is asked for",
    );
    s.ignore(report, "minimumtls", "TLS 1.2 and 1.3 are accepted");
    s.ignore(
        report,
        "ciphersuites",
        "rustls's default (modern) cipher suites are used",
    );
    s.finish(report);
    match (certificate, key) {
        (None, None) => {
            if !client_cas.is_empty() {
                report.error(
                    &join(&field.key, "clientcas"),
                    "client certificates need TLS: set certificate and key too",
                );
            }
            None
        }
        (Some(_), None) => {
            report.error(&join(&field.key, "key"), "required when certificate is set");
            None
        }
        (None, Some(_)) => {
            report.error(&join(&field.key, "certificate"), "required when key is set");
            None
        }
        (Some(certificate), Some(key)) => {
            let certificate = checked_file(report, &certificate);
            let key = checked_file(report, &key);
            Some(Tls {
                certificate: certificate?,
                key: key?,
                client_cas,
            })
        }
    }
}

/// `http.tls.clientcas`: a list of CA certificate files (PEM), each of which must exist.
fn parse_client_cas(report: &mut Report, field: &Field<'_>) -> Vec<PathBuf> {
    let items = match field.value {
        Value::Null => return Vec::new(),
        Value::Sequence(items) => items,
        other => {
            report.error(
                &field.key,
                format!(
                    "expected a list of CA certificate files, found {}",
                    kind(other)
                ),
            );
            return Vec::new();
        }
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, value)| {
            checked_file(
                report,
                &Field {
                    key: format!("{}.{i}", field.key),
                    value,
                },
            )
        })
        .collect()
}

/// `http.headers`: a map of header name to a list of values, as Distribution reads it (a
/// single string is taken as a list of one). Names and values must be valid in HTTP.
pub(super) fn parse_headers(
    report: &mut Report,
    field: &Field<'_>,
) -> Vec<(HeaderName, Vec<HeaderValue>)> {
    let Some(mut s) = Section::new(report, &field.key, field.value) else {
        return Vec::new();
    };
    let names: Vec<String> = s.keys().map(str::to_owned).collect();
    let mut headers = Vec::new();
    for name in names {
        let Some(f) = s.take(&name) else { continue };
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            report.error(&f.key, "not a valid HTTP header name");
            continue;
        };
        let items: Vec<&Value> = match f.value {
            Value::Sequence(items) => items.iter().collect(),
            Value::Null => Vec::new(),
            other => vec![other],
        };
        let mut values = Vec::new();
        for (i, value) in items.into_iter().enumerate() {
            let item = Field {
                key: format!("{}.{i}", f.key),
                value,
            };
            let Some(text) = get_string(report, &item) else {
                continue;
            };
            match HeaderValue::from_str(&text) {
                Ok(v) => values.push(v),
                Err(_) => report.error(&item.key, "not a valid HTTP header value"),
            }
        }
        if !values.is_empty() {
            headers.push((header, values));
        }
    }
    s.finish(report);
    headers
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use std::net::SocketAddr;

    #[test]
    fn colon_port_listens_on_all_interfaces() {
        let config = load(&format!("{FS}http:\n  addr: :5000\n"));
        assert_eq!(config.http.addr, SocketAddr::from(([0, 0, 0, 0], 5000)));
    }

    #[test]
    fn host_port_ipv6_and_hostnames_are_addresses() {
        let ip = load(&format!("{FS}http: {{addr: '192.0.2.7:8080'}}\n"));
        assert_eq!(ip.http.addr, SocketAddr::from(([192, 0, 2, 7], 8080)));
        let v6 = load(&format!("{FS}http: {{addr: '[::1]:5000'}}\n"));
        assert_eq!(v6.http.addr, "[::1]:5000".parse::<SocketAddr>().unwrap());
        let name = load(&format!("{FS}http: {{addr: 'localhost:5001'}}\n"));
        assert!(name.http.addr.ip().is_loopback());
        assert_eq!(name.http.addr.port(), 5001);
    }

    #[test]
    fn a_bad_address_names_the_key() {
        for addr in [":99999", "5000", "not an address", ":"] {
            let e = fail(&format!("{FS}http: {{addr: '{addr}'}}\n"));
            assert!(e.contains("http.addr: "), "{addr}: {e}");
        }
    }

    #[test]
    fn only_tcp_listening_is_supported() {
        load(&format!("{FS}http: {{net: tcp, addr: ':5000'}}\n"));
        let e = fail(&format!(
            "{FS}http: {{net: unix, addr: /run/registry.sock}}\n"
        ));
        assert!(
            e.contains("http.net: only tcp is supported, found `unix`"),
            "{e}"
        );
    }

    fn tls_files() -> (tempfile::NamedTempFile, tempfile::NamedTempFile) {
        (
            tempfile::NamedTempFile::new().unwrap(),
            tempfile::NamedTempFile::new().unwrap(),
        )
    }

    #[test]
    fn tls_with_existing_certificate_and_key_is_enabled() {
        let (cert, key) = tls_files();
        let config = load(&format!(
            "{FS}http:\n  tls:\n    certificate: {}\n    key: {}\n    minimumtls: tls1.2\n",
            cert.path().display(),
            key.path().display()
        ));
        let tls = config.http.tls.as_ref().expect("tls");
        assert_eq!(tls.certificate, cert.path());
        assert_eq!(tls.key, key.path());
        assert!(has_warning(&config, "http.tls.minimumtls"));
    }

    #[test]
    fn tls_needs_both_files_and_they_must_exist() {
        let (cert, _key) = tls_files();
        let e = fail(&format!(
            "{FS}http: {{tls: {{certificate: {}}}}}\n",
            cert.path().display()
        ));
        assert!(
            e.contains("http.tls.key: required when certificate is set"),
            "{e}"
        );
        let e = fail(&format!(
            "{FS}http: {{tls: {{certificate: '', key: {}}}}}\n",
            cert.path().display()
        ));
        assert!(
            e.contains("http.tls.certificate: required when key is set"),
            "{e}"
        );
        let e = fail(&format!(
            "{FS}http: {{tls: {{certificate: {}, key: /nonexistent/registry.key}}}}\n",
            cert.path().display()
        ));
        assert!(
            e.contains("http.tls.key: cannot read /nonexistent/registry.key"),
            "{e}"
        );
        assert!(
            load(&format!(
                "{FS}http: {{tls: {{certificate: '', key: ''}}}}\n"
            ))
            .http
            .tls
            .is_none()
        );
    }

    #[test]
    fn letsencrypt_is_refused() {
        let e = fail(&format!(
            "{FS}http: {{tls: {{letsencrypt: {{email: a@b.c, hosts: [r.example]}}}}}}\n"
        ));
        assert!(e.contains("http.tls.letsencrypt: "), "{e}");
    }

    #[test]
    fn tls_client_cas_are_read_in_order() {
        let (cert, key) = tls_files();
        let (ca1, ca2) = tls_files();
        let config = load(&format!(
            "{FS}http:\n  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n      - {}\n",
            cert.path().display(),
            key.path().display(),
            ca1.path().display(),
            ca2.path().display()
        ));
        let tls = config.http.tls.as_ref().expect("tls");
        assert_eq!(tls.client_cas, [ca1.path(), ca2.path()]);
        let text = config.describe();
        assert!(
            text.contains(&format!("tls.clientcas          {}", ca1.path().display())),
            "{text}"
        );
        assert!(load(FS).http.tls.is_none());
    }

    #[test]
    fn a_missing_client_ca_file_names_its_index() {
        let (cert, key) = tls_files();
        let e = fail(&format!(
            "{FS}http: {{tls: {{certificate: {}, key: {}, clientcas: [/nonexistent/ca.pem]}}}}\n",
            cert.path().display(),
            key.path().display()
        ));
        assert!(
            e.contains("http.tls.clientcas.0: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let e = fail(&format!(
            "{FS}http: {{tls: {{certificate: {}, key: {}, clientcas: /ca.pem}}}}\n",
            cert.path().display(),
            key.path().display()
        ));
        assert!(e.contains("http.tls.clientcas: expected a list"), "{e}");
    }

    #[test]
    fn client_cas_without_a_certificate_and_key_are_refused() {
        let (ca, _) = tls_files();
        let e = fail(&format!(
            "{FS}http: {{tls: {{clientcas: [{}]}}}}\n",
            ca.path().display()
        ));
        assert!(
            e.contains("http.tls.clientcas: client certificates need TLS"),
            "{e}"
        );
    }

    #[test]
    fn headers_map_each_name_to_its_values() {
        let config = load(&format!(
            "{FS}http:\n  headers:\n    X-Content-Type-Options: [nosniff]\n    \
             Strict-Transport-Security: 'max-age=63072000; includeSubDomains'\n    \
             X-Multi: [one, two]\n"
        ));
        let headers: Vec<(String, Vec<String>)> = config
            .http
            .headers
            .iter()
            .map(|(n, vs)| {
                let vs = vs.iter().map(|v| v.to_str().unwrap().to_owned()).collect();
                (n.as_str().to_owned(), vs)
            })
            .collect();
        assert_eq!(
            headers,
            [
                (
                    "x-content-type-options".to_owned(),
                    vec!["nosniff".to_owned()]
                ),
                (
                    "strict-transport-security".to_owned(),
                    vec!["max-age=63072000; includeSubDomains".to_owned()]
                ),
                (
                    "x-multi".to_owned(),
                    vec!["one".to_owned(), "two".to_owned()]
                ),
            ]
        );
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn the_debug_server_listens_on_its_own_address_with_metrics_off_by_default() {
        let config = load(&format!(
            "{FS}http: {{debug: {{addr: 'localhost:5001'}}}}\n"
        ));
        let debug = config.http.debug.expect("debug server");
        assert!(debug.addr.ip().is_loopback());
        assert_eq!(debug.addr.port(), 5001);
        assert_eq!(debug.prometheus, None);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        assert_eq!(load(FS).http.debug, None);
    }

    #[test]
    fn prometheus_is_served_at_metrics_unless_a_path_is_given() {
        let config = load(&format!(
            "{FS}http:\n  debug:\n    addr: :5001\n    prometheus:\n      enabled: true\n"
        ));
        let debug = config.http.debug.unwrap();
        assert_eq!(
            debug.prometheus.as_deref(),
            Some(super::DEFAULT_METRICS_PATH)
        );
        let config = load(&format!(
            "{FS}http: {{debug: {{addr: ':5001', prometheus: {{enabled: true, path: /prom}}}}}}\n"
        ));
        assert_eq!(
            config.http.debug.unwrap().prometheus.as_deref(),
            Some("/prom")
        );
        let off = load(&format!(
            "{FS}http: {{debug: {{addr: ':5001', prometheus: {{enabled: false, path: /prom}}}}}}\n"
        ));
        assert_eq!(off.http.debug.unwrap().prometheus, None);
    }

    #[test]
    fn metrics_without_a_debug_address_are_refused() {
        let e = fail(&format!(
            "{FS}http: {{debug: {{prometheus: {{enabled: true}}}}}}\n"
        ));
        assert!(
            e.contains("http.debug.prometheus: metrics are served by the debug server"),
            "{e}"
        );
        assert_eq!(
            load(&format!("{FS}http: {{debug: {{}}}}\n")).http.debug,
            None
        );
    }

    #[test]
    fn the_debug_server_cannot_share_the_registry_address_or_health_path() {
        let e = fail(&format!(
            "{FS}http: {{addr: ':5000', debug: {{addr: ':5000'}}}}\n"
        ));
        assert!(
            e.contains("http.debug.addr: the debug server needs its own"),
            "{e}"
        );
        let e = fail(&format!(
            "{FS}http: {{debug: {{addr: ':5001', prometheus: {{enabled: true, path: /debug/health}}}}}}\n"
        ));
        assert!(e.contains("http.debug.prometheus.path: "), "{e}");
        let e = fail(&format!(
            "{FS}http: {{debug: {{addr: ':5001', pprof: {{}}}}}}\n"
        ));
        assert!(e.contains("http.debug.pprof: unknown key"), "{e}");
    }

    #[test]
    fn a_bad_header_name_or_value_names_the_key() {
        let e = fail(&format!("{FS}http: {{headers: {{'Bad Name': [x]}}}}\n"));
        assert!(
            e.contains("http.headers.Bad Name: not a valid HTTP header name"),
            "{e}"
        );
        let e = fail(&format!("{FS}http: {{headers: {{X-A: [\"a\\nb\"]}}}}\n"));
        assert!(
            e.contains("http.headers.X-A.0: not a valid HTTP header value"),
            "{e}"
        );
        let e = fail(&format!("{FS}http: {{headers: [nosniff]}}\n"));
        assert!(e.contains("http.headers: expected a mapping"), "{e}");
    }
}
