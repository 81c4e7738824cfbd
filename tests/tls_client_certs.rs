//! `http.tls.clientcas`: only clients presenting a certificate issued by one of those CAs
//! complete the TLS handshake. The CAs and certificates are made here (rcgen); the server is
//! the built binary, the client a rustls client that presents a certificate or none.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

mod common;
use common::server::{Spawned, layerstore, spawn_server};

/// A CA: its certificate (DER and PEM) and what signs with it.
struct Ca {
    der: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-signed CA");
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate issued by `ca`: (certificate PEM, certificate DER, key).
fn leaf(
    ca: &Ca,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.issuer).expect("signed");
    (cert.pem(), cert.der().clone(), key)
}

/// `layerstore serve` over TLS with a server certificate from `server_ca`, accepting client
/// certificates from `client_ca` only.
fn start(dir: &Path, server_ca: &Ca, client_ca: &Ca) -> Spawned {
    let (cert, _, key) = leaf(server_ca, "localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let cert = write("server.pem", &cert);
    let key = write("server.key", &key.serialize_pem());
    let cas = write("clients-ca.pem", &client_ca.pem);
    let config = write(
        "config.yml",
        &format!(
            "storage: {{filesystem: {{rootdirectory: {}}}}}\nhttp:\n  addr: 127.0.0.1:0\n  tls:\n    \
             certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
            dir.join("data").display(),
            cert.display(),
            key.display(),
            cas.display()
        ),
    );
    let mut command = layerstore();
    command.arg("serve").arg("--config").arg(config);
    spawn_server(command, &dir.join("server.log"), Duration::from_secs(30))
}

/// `GET /v2/` over TLS, presenting `client` (a certificate and its key) if given; the status
/// line, or the error that stopped the exchange.
async fn get_v2(
    addr: &str,
    server_ca: &Ca,
    client: Option<(CertificateDer<'static>, &KeyPair)>,
) -> Result<String, String> {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.der.clone()).expect("root");
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let key = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
            builder
                .with_client_auth_cert(vec![cert], key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let exchange = async {
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&response);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

struct Server {
    spawned: Spawned,
    _dir: tempfile::TempDir,
    server_ca: Ca,
    client_ca: Ca,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server_ca = ca("server CA");
        let client_ca = ca("client CA");
        let spawned = start(dir.path(), &server_ca, &client_ca);
        Self {
            spawned,
            _dir: dir,
            server_ca,
            client_ca,
        }
    }

    fn addr(&self) -> String {
        self.spawned.host("https")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.spawned.child.kill();
        let _ = self.spawned.child.wait();
    }
}

#[tokio::test]
async fn a_client_with_a_certificate_from_a_configured_ca_is_served() {
    let server = Server::start();
    let (_, cert, key) = leaf(
        &server.client_ca,
        "client",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let status = get_v2(&server.addr(), &server.server_ca, Some((cert, &key))).await;
    assert_eq!(status.as_deref(), Ok("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn a_client_without_a_certificate_fails_the_handshake() {
    let server = Server::start();
    let result = get_v2(&server.addr(), &server.server_ca, None).await;
    assert!(
        result.is_err() || result.as_deref() == Ok(""),
        "served without a certificate: {result:?}"
    );
}

#[tokio::test]
async fn a_client_with_a_certificate_from_another_ca_fails_the_handshake() {
    let server = Server::start();
    let stranger = ca("another CA");
    let (_, cert, key) = leaf(&stranger, "client", ExtendedKeyUsagePurpose::ClientAuth);
    let result = get_v2(&server.addr(), &server.server_ca, Some((cert, &key))).await;
    assert!(
        result.is_err() || result.as_deref() == Ok(""),
        "served with a certificate from another CA: {result:?}"
    );
}
