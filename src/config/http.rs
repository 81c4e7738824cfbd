//! `http`: the listening address and TLS.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use super::report::{Field, Report, Section, checked_file, get_string, is_set, join};
use super::{Config, row};

#[derive(Debug, Clone)]
pub struct Http {
    pub addr: SocketAddr,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub certificate: PathBuf,
    pub key: PathBuf,
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
    for (key, why) in [
        ("prefix", "the API is served at /v2/"),
        ("host", "URLs in responses are derived from the request"),
        ("secret", "layerstore signs no client-side state"),
        ("relativeurls", "Location headers are always relative"),
        (
            "draintimeout",
            "connections are drained without a time limit",
        ),
        ("debug", "no debug server"),
        ("headers", "no extra response headers are added"),
        ("http2", "HTTP/2 is negotiated automatically over TLS"),
        ("h2c", "no HTTP/2 without TLS"),
    ] {
        s.ignore(report, key, why);
    }
    s.finish(report);
    http
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
    if let Some(f) = s.take("clientcas").filter(|f| is_set(f.value)) {
        report.error(
            &f.key,
            "TLS client certificates are not supported, and ignoring them would let any \
             client in: refusing to start",
        );
    }
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
        "no TLS client certificates are requested",
    );
    s.ignore(report, "minimumtls", "TLS 1.2 and 1.3 are accepted");
    s.ignore(
        report,
        "ciphersuites",
        "rustls's default (modern) cipher suites are used",
    );
    s.finish(report);
    match (certificate, key) {
        (None, None) => None,
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
            })
        }
    }
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
    fn tls_client_certificates_and_letsencrypt_are_refused() {
        let e = fail(&format!("{FS}http: {{tls: {{clientcas: [/ca.pem]}}}}\n"));
        assert!(e.contains("http.tls.clientcas: "), "{e}");
        let e = fail(&format!(
            "{FS}http: {{tls: {{letsencrypt: {{email: a@b.c, hosts: [r.example]}}}}}}\n"
        ));
        assert!(e.contains("http.tls.letsencrypt: "), "{e}");
    }
}
