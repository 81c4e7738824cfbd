//! The TLS configuration of `http.tls`: the server's certificate and key and, with
//! `http.tls.clientcas`, client certificates: only a client presenting a certificate issued by
//! one of those CAs completes the handshake (rustls's WebPKI client verifier).

use std::path::Path;
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::Tls;

/// The rustls configuration `tls` describes.
pub async fn rustls_config(tls: &Tls) -> Result<RustlsConfig, String> {
    if tls.client_cas.is_empty() {
        return RustlsConfig::from_pem_file(&tls.certificate, &tls.key)
            .await
            .map_err(|e| e.to_string());
    }
    let tls = tls.clone();
    let config = tokio::task::spawn_blocking(move || with_client_cas(&tls))
        .await
        .map_err(|e| e.to_string())??;
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certificates)
}

fn with_client_cas(tls: &Tls) -> Result<rustls::ServerConfig, String> {
    let mut roots = RootCertStore::empty();
    for path in &tls.client_cas {
        for ca in certificates(path)? {
            roots
                .add(ca)
                .map_err(|e| format!("clientcas {}: {e}", path.display()))?;
        }
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| format!("clientcas: {e}"))?;
    let chain = certificates(&tls.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("{}: {e}", tls.key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    // As `RustlsConfig::from_pem_file` sets them: HTTP/2 when the client offers it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
