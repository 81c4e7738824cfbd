//! A token server for tests of token auth, as docker_auth or GitLab would run one: keys and
//! certificates made when the test starts (nothing secret on disk), users given by the test.
//!
//! Two layers:
//! - [`Signer`] and [`TestCa`]: keys (RSA-2048 or P-256) with their certificates, and JWTs
//!   signed with any header and claims a test wants — valid ones, and hostile ones (`alg: none`,
//!   HMAC with the public key as the secret, tampered parts).
//! - [`TokenIssuer`]: the token endpoint of the Docker token specification on 127.0.0.1,
//!   `GET /token?service=…&scope=…` with Basic credentials, answering
//!   `{"token", "access_token", "expires_in", "issued_at"}` with the requested scopes narrowed to
//!   what the user may do. It runs on its own thread, so tests that block (waiting on a child
//!   process such as skopeo) do not stall it.
//!
//! ```ignore
//! let issuer = TokenIssuer::start(IssuerConfig {
//!     users: vec![User::new("alice", "pa:ss", &["repository:team/app:pull,push"])],
//!     ..IssuerConfig::default()
//! });
//! std::fs::write(&bundle, issuer.root_cert_bundle())?;   // auth.token.rootcertbundle
//! // auth.token: realm = issuer.realm(), service = issuer.service(), issuer = issuer.issuer()
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The kind of key that signs tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA-2048, RS256.
    Rsa,
    /// P-256, ES256.
    P256,
    /// P-384, ES384.
    P384,
}

impl KeyKind {
    fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyKind::Rsa => &rcgen::PKCS_RSA_SHA256,
            KeyKind::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    /// The JWS algorithm this kind of key signs with.
    pub fn alg(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RS256",
            KeyKind::P256 => "ES256",
            KeyKind::P384 => "ES384",
        }
    }
}

fn generate(kind: KeyKind) -> KeyPair {
    KeyPair::generate_for(kind.rcgen_alg()).expect("generate a key")
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
}

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
    pem: String,
}

impl TestCa {
    pub fn new(kind: KeyKind, name: &str) -> Self {
        let key = generate(kind);
        let params = ca_params(name);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate, for a root bundle.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A CA certificate issued by this one.
    pub fn intermediate(&self, kind: KeyKind, name: &str) -> TestCa {
        let key = generate(kind);
        let params = ca_params(name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the intermediate");
        TestCa {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The standard-base64 DER of the certificate, as an `x5c` entry.
    pub fn x5c_entry(&self) -> String {
        STANDARD.encode(&self.der)
    }
}

/// A token-signing key with its certificate.
pub struct Signer {
    pub kind: KeyKind,
    key: KeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
}

impl Signer {
    /// A key with a self-signed certificate: the bundle holds that certificate and tokens name
    /// the key by its libtrust `kid` (the docker_auth and GitLab setup).
    pub fn self_signed(kind: KeyKind) -> Self {
        Self::self_signed_with(kind, |_| {})
    }

    /// As [`Signer::self_signed`], the certificate being a CA's (basic constraints CA:TRUE), as
    /// when a token server signs with its CA key.
    pub fn self_signed_ca(kind: KeyKind) -> Self {
        Self::self_signed_with(kind, |params| {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        })
    }

    fn self_signed_with(kind: KeyKind, adjust: impl FnOnce(&mut CertificateParams)) -> Self {
        let key = generate(kind);
        let mut params = CertificateParams::new(vec!["token-signer".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "test token signer");
        adjust(&mut params);
        let cert = params.self_signed(&key).expect("self-sign");
        Signer {
            kind,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key,
        }
    }

    /// A key whose certificate `ca` issued: the bundle holds the CA and tokens carry the chain in
    /// `x5c`.
    pub fn issued_by(ca: &TestCa, kind: KeyKind) -> Self {
        Self::issued_with(ca, kind, |_| {})
    }

    /// As [`Signer::issued_by`], with a certificate that expired in 2021.
    pub fn issued_by_expired(ca: &TestCa, kind: KeyKind) -> Self {
        Self::issued_with(ca, kind, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn issued_with(
        ca: &TestCa,
        kind: KeyKind,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Self {
        let key = generate(kind);
        let mut params = CertificateParams::new(vec!["token-signer".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "test token signer");
        adjust(&mut params);
        let cert = params.signed_by(&key, &ca.issuer).expect("sign");
        Signer {
            kind,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key,
        }
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate as an `x5c` entry (standard base64 DER).
    pub fn x5c_entry(&self) -> String {
        STANDARD.encode(&self.cert_der)
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    /// The libtrust key ID: SHA-256 of the SPKI, first 30 bytes, base32 without padding, in 12
    /// groups of 4 joined by `:`.
    pub fn libtrust_kid(&self) -> String {
        let digest = Sha256::digest(self.spki_der());
        let encoded = base32(&digest[..30]);
        encoded
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The public key as a JWK with `kid`, for a JWKS file.
    pub fn public_jwk(&self, kid: &str) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match self.kind {
            KeyKind::Rsa => {
                let pair = RsaKeyPair::from_pkcs8(self.key.serialized_der()).expect("RSA key");
                let components: aws_lc_rs::signature::RsaPublicKeyComponents<Vec<u8>> =
                    pair.public_key().into();
                json!({"kty": "RSA", "kid": kid, "use": "sig",
                       "n": b64(&components.n), "e": b64(&components.e)})
            }
            KeyKind::P256 | KeyKind::P384 => {
                let (crv, len) = match self.kind {
                    KeyKind::P256 => ("P-256", 32),
                    _ => ("P-384", 48),
                };
                let point = &self.key.public_key_raw()[1..];
                json!({"kty": "EC", "kid": kid, "crv": crv, "use": "sig",
                       "x": b64(&point[..len]), "y": b64(&point[len..])})
            }
        }
    }

    /// A JWT with exactly this header and these claims, signed with this key by its own
    /// algorithm whatever `alg` the header says (an RSA key signs PS256 if it says so, RS256
    /// otherwise).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match self.kind {
            KeyKind::Rsa => {
                let pair = RsaKeyPair::from_pkcs8(self.key.serialized_der()).expect("RSA key");
                let mut signature = vec![0; pair.public_modulus_len()];
                let padding: &'static dyn aws_lc_rs::signature::RsaEncoding =
                    if header["alg"] == "PS256" {
                        &aws_lc_rs::signature::RSA_PSS_SHA256
                    } else {
                        &RSA_PKCS1_SHA256
                    };
                pair.sign(padding, &rng, signing_input.as_bytes(), &mut signature)
                    .expect("RSA signature");
                signature
            }
            KeyKind::P256 => {
                let pair = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    self.key.serialized_der(),
                )
                .expect("P-256 key");
                pair.sign(&rng, signing_input.as_bytes())
                    .expect("ECDSA signature")
                    .as_ref()
                    .to_vec()
            }
            KeyKind::P384 => {
                let pair = EcdsaKeyPair::from_pkcs8(
                    &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    self.key.serialized_der(),
                )
                .expect("P-384 key");
                pair.sign(&rng, signing_input.as_bytes())
                    .expect("ECDSA signature")
                    .as_ref()
                    .to_vec()
            }
        };
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The header a token names this key by: its libtrust `kid`.
    pub fn kid_header(&self) -> Value {
        json!({"typ": "JWT", "alg": self.kind.alg(), "kid": self.libtrust_kid()})
    }

    /// The header a token carries this key's certificate chain in: `x5c` = this certificate and
    /// then `chain` (intermediates, possibly the root).
    pub fn x5c_header(&self, chain: &[&TestCa]) -> Value {
        let mut x5c = vec![self.x5c_entry()];
        x5c.extend(chain.iter().map(|ca| ca.x5c_entry()));
        json!({"typ": "JWT", "alg": self.kind.alg(), "x5c": x5c})
    }
}

/// A JWT whose header and claims are as given and whose signature is an HMAC-SHA256 keyed with
/// `secret`: with a public key as the secret, the HS256/RS256 key-confusion attack.
pub fn sign_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Claims as a token server issues them: valid from now for `lifetime`, granting `access`
/// (a JSON array of `{"type", "name", "actions"}`).
pub fn claims(
    issuer: &str,
    service: &str,
    subject: &str,
    access: Value,
    lifetime: Duration,
) -> Value {
    let now = now();
    json!({
        "iss": issuer,
        "sub": subject,
        "aud": service,
        "exp": now + lifetime.as_secs() as i64,
        "nbf": now,
        "iat": now,
        "jti": format!("{:016x}", rand::random::<u64>()),
        "access": access,
    })
}

/// One `access` claim entry.
pub fn access_entry(kind: &str, name: &str, actions: &[&str]) -> Value {
    json!({"type": kind, "name": name, "actions": actions})
}

/// RFC 4648 base32 without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A user of the token server and what it may do: scopes as `TYPE:NAME:ACTIONS`, where a NAME
/// ending in `*` stands for every name that starts with what comes before it (`*` alone: every
/// name of that type), and action `*` for every action.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    pub may: Vec<String>,
}

impl User {
    pub fn new(name: &str, password: &str, may: &[&str]) -> Self {
        User {
            name: name.to_owned(),
            password: password.to_owned(),
            may: may.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// How the token server signs and names its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyReference {
    /// A self-signed certificate in the bundle, the token naming its libtrust `kid`.
    Kid,
    /// A certificate issued by a CA in the bundle, the token carrying it in `x5c`.
    X5c,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub service: String,
    pub issuer: String,
    pub key: KeyKind,
    pub reference: KeyReference,
    pub lifetime: Duration,
    pub users: Vec<User>,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            service: "layerstore-test".to_owned(),
            issuer: "layerstore-test-issuer".to_owned(),
            key: KeyKind::Rsa,
            reference: KeyReference::Kid,
            lifetime: Duration::from_secs(300),
            users: Vec::new(),
        }
    }
}

/// What a client asked the token server for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The user of the Basic credentials (`None` without credentials).
    pub user: Option<String>,
    pub service: Option<String>,
    pub scopes: Vec<String>,
    pub status: u16,
}

/// The running token server. Stops when dropped.
pub struct TokenIssuer {
    addr: SocketAddr,
    config: IssuerConfig,
    bundle_pem: String,
    shared: Arc<Shared>,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    config: IssuerConfig,
    signer: Signer,
    chain: Vec<TestCa>,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

impl TokenIssuer {
    /// Makes the keys and starts serving on 127.0.0.1 (a free port).
    pub fn start(config: IssuerConfig) -> Self {
        let (signer, chain, bundle_pem) = match config.reference {
            KeyReference::Kid => {
                let signer = Signer::self_signed(config.key);
                let pem = signer.cert_pem().to_owned();
                (signer, Vec::new(), pem)
            }
            KeyReference::X5c => {
                let ca = TestCa::new(config.key, "test token CA");
                let signer = Signer::issued_by(&ca, config.key);
                let pem = ca.pem().to_owned();
                (signer, vec![ca], pem)
            }
        };
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            config: config.clone(),
            signer,
            chain,
            requests: requests.clone(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("token server address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("token-issuer".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("token server runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let app = axum::Router::new()
                        .route("/token", axum::routing::get(token))
                        .with_state(serving);
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await
                        .expect("token server");
                });
            })
            .expect("token server thread");
        TokenIssuer {
            addr,
            config,
            bundle_pem,
            shared,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/token`: `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// `auth.token.service`.
    pub fn service(&self) -> &str {
        &self.config.service
    }

    /// `auth.token.issuer`.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// PEM to write as `auth.token.rootcertbundle`.
    pub fn root_cert_bundle(&self) -> &str {
        &self.bundle_pem
    }

    /// The key the server signs with: for tokens a test forges with the trusted key (expired,
    /// for another audience, with a tampered payload) or around it (HS256 keyed with it).
    pub fn signer(&self) -> &Signer {
        &self.shared.signer
    }

    /// The JOSE header the server's tokens carry (its key by `kid`, or its `x5c` chain).
    pub fn token_header(&self) -> Value {
        key_header(&self.shared)
    }

    /// A token signed by the server's key with `claims`, as it would issue one.
    pub fn sign(&self, claims: &Value) -> String {
        self.signer().sign(&self.token_header(), claims)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let service = query
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone());
    // `scope` may repeat, and each may hold several scopes separated by spaces.
    let scopes: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split_whitespace().map(str::to_owned))
        .collect();
    let credentials = basic_credentials(&headers);
    let user = credentials.as_ref().and_then(|(name, password)| {
        shared
            .config
            .users
            .iter()
            .find(|u| &u.name == name && &u.password == password)
    });
    let (status, response) = if service.as_deref() != Some(shared.config.service.as_str()) {
        (
            StatusCode::BAD_REQUEST,
            error_body("unknown or missing service"),
        )
    } else if let Some(user) = user {
        (StatusCode::OK, issue(&shared, user, &scopes))
    } else {
        let mut response = error_body("credentials required");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"token\"".parse().unwrap(),
        );
        (StatusCode::UNAUTHORIZED, response)
    };
    shared.requests.lock().unwrap().push(TokenRequest {
        user: credentials.map(|(name, _)| name),
        service,
        scopes,
        status: status.as_u16(),
    });
    (status, response).into_response()
}

fn error_body(message: &str) -> Response {
    axum::Json(json!({"errors": [{"code": "UNAUTHORIZED", "message": message}]})).into_response()
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    // The password may contain ':'; the user name may not.
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

/// `TYPE`, `NAME`, `ACTIONS` of a scope (the name may hold a `:`, a host's port).
fn split_scope(scope: &str) -> Option<(&str, &str, Vec<&str>)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((kind, name, actions.split(',').collect()))
}

/// The token for `user`: each requested scope narrowed to the actions the user may do on it;
/// scopes with none left are not in the token.
fn issue(shared: &Shared, user: &User, requested: &[String]) -> Response {
    let mut granted: Vec<(String, String, Vec<String>)> = Vec::new();
    for scope in requested {
        let Some((kind, name, actions)) = split_scope(scope) else {
            continue;
        };
        let allowed: Vec<String> = actions
            .iter()
            .filter(|action| {
                user.may
                    .iter()
                    .filter_map(|m| split_scope(m))
                    .any(|(k, n, a)| {
                        let name_fits = match n.strip_suffix('*') {
                            Some(prefix) => name.starts_with(prefix),
                            None => n == name,
                        };
                        k == kind && name_fits && (a.contains(action) || a.contains(&"*"))
                    })
            })
            .map(|a| (*a).to_owned())
            .collect();
        if allowed.is_empty() {
            continue;
        }
        match granted.iter_mut().find(|(k, n, _)| k == kind && n == name) {
            Some((_, _, existing)) => {
                for action in allowed {
                    if !existing.contains(&action) {
                        existing.push(action);
                    }
                }
            }
            None => granted.push((kind.to_owned(), name.to_owned(), allowed)),
        }
    }
    let access: Vec<Value> = granted
        .iter()
        .map(|(kind, name, actions)| json!({"type": kind, "name": name, "actions": actions}))
        .collect();
    let config = &shared.config;
    let claims = claims(
        &config.issuer,
        &config.service,
        &user.name,
        Value::Array(access),
        config.lifetime,
    );
    let token = shared.signer.sign(&key_header(shared), &claims);
    let issued_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    axum::Json(json!({
        "token": token,
        "access_token": token,
        "expires_in": config.lifetime.as_secs(),
        "issued_at": issued_at,
    }))
    .into_response()
}

/// The header naming the server's key, by `kid` or `x5c` as configured.
fn key_header(shared: &Shared) -> Value {
    match shared.config.reference {
        KeyReference::Kid => shared.signer.kid_header(),
        KeyReference::X5c => shared
            .signer
            .x5c_header(&shared.chain.iter().collect::<Vec<_>>()),
    }
}

/// The fields of a token response, for tests that read one.
pub fn parse_token_response(body: &str) -> HashMap<String, Value> {
    serde_json::from_str(body).expect("a JSON token response")
}
