//! Token auth as in the Docker token specification (`auth.token` of a Distribution config), the
//! scheme docker, podman, skopeo and containerd implement: a client without a token gets a
//! `Bearer` challenge naming the token server (`realm`), this registry (`service`) and the
//! scopes it needs; it fetches a JWT there and sends it back as `Authorization: Bearer <jwt>`.
//!
//! Invariant: a request passes only with a token signed by a key the operator trusts (a
//! root-bundle certificate's key, found by its libtrust key ID or JWK thumbprint as `kid`, or
//! the leaf of an `x5c` chain that verifies up to the bundle; or a JWKS key by `kid`), with an
//! asymmetric algorithm (RS*, PS*, ES256, ES384: never `none` nor HS*; RSA keys of 2048 bits
//! or more), from the configured `issuer` (`iss` a string), for this `service` as audience (a string, or an array holding it as RFC 7519 and
//! Distribution 3 allow), unexpired (`exp` required), past its `nbf`, both with 60 s of leeway,
//! whose `access` claim grants every action the request needs on the exact resource (a `*`
//! action grants all actions on its resource).
//!
//! # Wiring
//!
//! [`super::bearer::TokenAuthorizer`] is the server's authorizer over this verifier: it builds
//! a [`TokenVerifier`] from `auth.token` at start (a [`SetupError`] stops the server), passes
//! each request's `Authorization` header and the scopes the access table names to
//! [`TokenVerifier::verify`], and answers a refusal with 401 and
//! [`TokenVerifier::challenge`]. 401 (not 403) for an insufficient scope, as Distribution
//! answers, lets clients fetch a token with the wider scope the challenge names.
//!
//! Every `AuthError` is the client's: none of them is a 5xx. Under token auth every request
//! needs a token, the `/v2/` base included (with an empty `required`: any valid token passes).
//!
//! Tests: the unit tests here (`cargo test --bin layerstore server::auth`) and the verifier's
//! behaviour in `tests/token_auth.rs`, which compiles this module and `../scope.rs` in with
//! `#[path]`: keep it free of `crate::` paths and of `super::` paths other than
//! `super::scope` (it only needs its own dependencies); the end-to-end behaviour over HTTP is
//! in `tests/access_control.rs`.

mod keys;

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};

use super::scope;
use super::scope::{Scope, quoted, scope_param};
use keys::{TrustedKeys, VerifyingKey};

/// An `Authorization` header longer than this is refused unread. Tokens with an `x5c` chain of a
/// few RSA-4096 certificates and a long access list stay far below it.
pub const MAX_AUTHORIZATION_LEN: usize = 16 * 1024;

/// Clock skew allowed on `exp` and `nbf` (the specification's upper bound).
pub const LEEWAY_SECS: u64 = 60;

/// `auth.token` of a Distribution config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The token server's URL, sent to clients in the challenge (plain HTTP is allowed).
    pub realm: String,
    /// This registry's name: the audience tokens must name.
    pub service: String,
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// PEM certificates whose keys sign tokens or that issue the signing certificates.
    pub root_cert_bundle: Option<PathBuf>,
    /// A JWK set whose keys sign tokens, found by `kid`.
    pub jwks: Option<PathBuf>,
    /// Send clients to this registry's own `autoredirect_path` as the realm (Distribution's
    /// `autoredirect`), on the host and scheme they used.
    pub autoredirect: bool,
    /// Defaults to `/auth/token`.
    pub autoredirect_path: Option<String>,
}

/// Checks bearer tokens and writes challenges. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    realm: String,
    service: String,
    issuer: String,
    redirect_path: Option<String>,
    keys: TrustedKeys,
}

/// A token that passed, for the request it was checked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// `sub`: the user the token was issued to (empty if it names none).
    pub subject: String,
    /// Everything the token grants, as its `access` claim lists it.
    pub access: Vec<Scope>,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a request was not let through. Each is the client's fault; see [`AuthError::challenge_error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` header (or another scheme): the client should fetch a token.
    #[error("authorization token required")]
    Missing,
    /// The header or the token cannot be read: too long, not a JWT, bad base64 or JSON.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// A well-formed token that is not acceptable.
    #[error("invalid token: {0}")]
    Invalid(#[from] Rejection),
    /// A valid token that lacks some of the access the request needs (listed, with only the
    /// missing actions).
    #[error("insufficient scope: the token does not grant {}", scope_param(.missing))]
    InsufficientScope { missing: Vec<Scope> },
}

impl AuthError {
    /// The `error` attribute of the challenge (RFC 6750 section 3.1), as Distribution sets it.
    pub fn challenge_error(&self) -> Option<&'static str> {
        match self {
            AuthError::Missing => None,
            AuthError::Malformed(_) | AuthError::Invalid(_) => Some("invalid_token"),
            AuthError::InsufficientScope { .. } => Some("insufficient_scope"),
        }
    }
}

/// Why a well-formed token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    #[error("algorithm not accepted: {0}")]
    Algorithm(String),
    #[error("the token names no key (no x5c and no kid)")]
    NoKey,
    #[error("no trusted key has kid {0:?}")]
    UnknownKey(String),
    #[error("x5c chain refused: {0}")]
    Chain(String),
    #[error("the signature does not verify")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet (nbf)")]
    NotYetValid,
    #[error("issued by another issuer")]
    Issuer,
    #[error("issued for another service (aud)")]
    Audience,
    #[error("claim {0:?} missing")]
    MissingClaim(String),
    #[error("claim {0:?} malformed")]
    BadClaim(String),
}

/// A setting or key file that keeps token auth from starting, with what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auth.token: {0}")]
pub struct SetupError(String);

impl SetupError {
    fn new(message: impl Into<String>) -> Self {
        SetupError(message.into())
    }
}

/// Where a request was sent, for `autoredirect` realms: its `Host` (or HTTP/2 `:authority`) and
/// `X-Forwarded-Proto`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestOrigin<'a> {
    pub host: Option<&'a str>,
    pub forwarded_proto: Option<&'a str>,
}

impl TokenVerifier {
    /// Reads the bundle and JWKS. Either may be absent, not both.
    pub fn new(settings: Settings) -> Result<Self, SetupError> {
        for (name, value) in [
            ("realm", &settings.realm),
            ("service", &settings.service),
            ("issuer", &settings.issuer),
        ] {
            if value.is_empty() {
                return Err(SetupError::new(format!("{name} is required")));
            }
        }
        let keys = TrustedKeys::load(
            settings.root_cert_bundle.as_deref(),
            settings.jwks.as_deref(),
        )?;
        let redirect_path = settings.autoredirect.then(|| {
            settings
                .autoredirect_path
                .clone()
                .unwrap_or_else(|| "/auth/token".to_owned())
        });
        Ok(TokenVerifier {
            inner: Arc::new(Inner {
                realm: settings.realm,
                service: settings.service,
                issuer: settings.issuer,
                redirect_path,
                keys,
            }),
        })
    }

    /// The `WWW-Authenticate` value for a request that needs `required` and failed with
    /// `error`: `Bearer realm="…",service="…",scope="…",error="…"` (scope and error only when
    /// there is one).
    pub fn challenge(
        &self,
        required: &[Scope],
        error: Option<&AuthError>,
        origin: RequestOrigin<'_>,
    ) -> String {
        let realm = self.realm(origin);
        let mut challenge = format!(
            "Bearer realm={},service={}",
            quoted(&realm),
            quoted(&self.inner.service)
        );
        let scope = scope_param(required);
        if !scope.is_empty() {
            challenge.push_str(&format!(",scope={}", quoted(&scope)));
        }
        if let Some(code) = error.and_then(AuthError::challenge_error) {
            challenge.push_str(&format!(",error={}", quoted(code)));
        }
        challenge
    }

    fn realm(&self, origin: RequestOrigin<'_>) -> String {
        let (Some(path), Some(host)) = (&self.inner.redirect_path, origin.host) else {
            return self.inner.realm.clone();
        };
        // Only a plain host[:port] becomes part of the header.
        let plain = |c: char| c.is_ascii_alphanumeric() || "-.:[]".contains(c);
        if host.is_empty() || !host.chars().all(plain) {
            return self.inner.realm.clone();
        }
        let scheme = match origin.forwarded_proto {
            Some(proto) if proto.eq_ignore_ascii_case("http") => "http",
            _ => "https",
        };
        format!("{scheme}://{host}{path}")
    }

    /// Checks the `Authorization` header (its raw bytes, if the request has one) for a token
    /// that grants everything `required` lists.
    pub fn verify(
        &self,
        authorization: Option<&[u8]>,
        required: &[Scope],
    ) -> Result<Granted, AuthError> {
        let token = bearer_token(authorization)?;
        let claims = self.verified_claims(token)?;
        let access = claims.access.unwrap_or_default();
        let missing = scope::missing(&access, required);
        if !missing.is_empty() {
            return Err(AuthError::InsufficientScope { missing });
        }
        Ok(Granted {
            subject: claims.sub,
            access,
            expires_at: claims.exp.unwrap_or_default() as u64,
        })
    }

    fn verified_claims(&self, token: &str) -> Result<Claims, AuthError> {
        let header = peek_header(token)?;
        let alg = accepted_algorithm(&header.alg)?;
        let key: Arc<VerifyingKey> = match (&header.x5c, &header.kid) {
            (Some(x5c), _) => self.inner.keys.by_chain(x5c)?,
            (None, Some(kid)) => self.inner.keys.by_kid(kid)?,
            (None, None) => return Err(Rejection::NoKey.into()),
        };
        let decoding = key.for_algorithm(alg)?;

        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&self.inner.issuer]);
        validation.set_audience(&[&self.inner.service]);
        let claims = jsonwebtoken::decode::<Claims>(token, decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| jwt_error(e.into_kind()))?;
        // The validation takes an array of issuers holding ours; RFC 7519 and Distribution
        // have one issuer, a string.
        if !matches!(claims.iss, Some(serde_json::Value::String(_))) {
            return Err(Rejection::BadClaim("iss".into()).into());
        }
        Ok(claims)
    }
}

/// The token of `Bearer <token>`. Any other scheme is no token at all (the client is to fetch
/// one), as in Distribution.
fn bearer_token(authorization: Option<&[u8]>) -> Result<&str, AuthError> {
    let Some(value) = authorization else {
        return Err(AuthError::Missing);
    };
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(AuthError::Malformed(format!(
            "Authorization header of {} bytes (at most {MAX_AUTHORIZATION_LEN})",
            value.len()
        )));
    }
    let value = std::str::from_utf8(value)
        .map_err(|_| AuthError::Malformed("Authorization header is not UTF-8".into()))?;
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return Err(AuthError::Missing);
    };
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// The JOSE header fields that choose the key, read before any verification.
#[derive(serde::Deserialize)]
struct PeekedHeader {
    alg: String,
    kid: Option<String>,
    x5c: Option<Vec<String>>,
}

fn peek_header(token: &str) -> Result<PeekedHeader, AuthError> {
    let malformed = |why: &str| AuthError::Malformed(why.to_owned());
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(malformed("not a JWT (three dot-separated parts)"));
    }
    // The signature covers the text of the parts, so a part that is not base64url would only
    // show as a bad signature: name it for what it is.
    let base64url = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && part.len() % 4 != 1
    };
    if !parts.iter().all(|part| base64url(part)) {
        return Err(malformed("a JWT part is not base64url"));
    }
    let encoded = parts[0];
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| malformed("the JWT header is not base64url"))?;
    serde_json::from_slice(&json).map_err(|_| malformed("the JWT header is not a JOSE header"))
}

/// The asymmetric algorithms accepted; `none`, HS* and anything else are refused by name.
fn accepted_algorithm(alg: &str) -> Result<Algorithm, Rejection> {
    match alg {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "PS256" => Ok(Algorithm::PS256),
        "PS384" => Ok(Algorithm::PS384),
        "PS512" => Ok(Algorithm::PS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        other => Err(Rejection::Algorithm(format!("{other:?}"))),
    }
}

fn jwt_error(kind: jsonwebtoken::errors::ErrorKind) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as E;
    match kind {
        E::InvalidSignature => Rejection::Signature.into(),
        E::ExpiredSignature => Rejection::Expired.into(),
        E::ImmatureSignature => Rejection::NotYetValid.into(),
        E::InvalidIssuer => Rejection::Issuer.into(),
        E::InvalidAudience => Rejection::Audience.into(),
        E::MissingRequiredClaim(claim) => Rejection::MissingClaim(claim).into(),
        E::InvalidClaimFormat(claim) => Rejection::BadClaim(claim).into(),
        E::InvalidAlgorithm | E::InvalidAlgorithmName | E::UnsupportedAlgorithm => {
            Rejection::Algorithm("refused by the verifier".into()).into()
        }
        E::Base64(_) => AuthError::Malformed("a JWT part is not base64url".into()),
        E::Json(e) => AuthError::Malformed(format!("the JWT claims: {e}")),
        E::Utf8(_) => AuthError::Malformed("the JWT claims are not UTF-8".into()),
        E::InvalidToken => AuthError::Malformed("not a JWT".into()),
        other => AuthError::Malformed(format!("{other:?}")),
    }
}

/// The claims a grant is read from (`iss`, `aud`, `nbf` are checked by the validation).
#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    iss: Option<serde_json::Value>,
    /// Required and checked by the validation, which runs after this is read: absent here
    /// means "missing" there, not malformed. A NumericDate may have a fraction.
    #[serde(default)]
    exp: Option<f64>,
    /// Go token servers write an empty list as `null`.
    #[serde(default)]
    access: Option<Vec<Scope>>,
}

/// One entry of the `access` claim: `{"type", "name", "actions"}` (a `class` is ignored, as the
/// specification now says).
#[derive(serde::Deserialize)]
struct ClaimedAccess {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    actions: Option<Vec<String>>,
}

impl<'de> serde::Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ClaimedAccess {
            kind,
            name,
            actions,
        } = ClaimedAccess::deserialize(deserializer)?;
        Ok(Scope {
            kind,
            name,
            actions: actions.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_scheme_is_no_token() {
        assert_eq!(
            bearer_token(Some(b"Basic dXNlcjpwYXNz")),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(Some(b"bEaReR a.b.c")), Ok("a.b.c"));
    }

    #[test]
    fn a_bearer_without_a_token_is_no_token() {
        assert_eq!(bearer_token(Some(b"Bearer   ")), Err(AuthError::Missing));
    }

    #[test]
    fn a_header_that_is_not_utf8_is_malformed() {
        assert!(matches!(
            bearer_token(Some(b"Bearer \xff\xfe")),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn hmac_and_none_are_not_accepted_algorithms() {
        for alg in [
            "none", "None", "HS256", "HS384", "HS512", "EdDSA", "ES512", "",
        ] {
            assert!(
                matches!(accepted_algorithm(alg), Err(Rejection::Algorithm(_))),
                "{alg:?} was accepted"
            );
        }
    }
}
