//! `auth.token`: the [`Authorizer`] of the Docker token specification, over the verifier in
//! [`super::token`]. Every request needs a bearer token the verifier accepts and that grants
//! every scope the access table names for it (none for `/v2/`: any valid token passes).
//!
//! What a client is told when it does not pass, always 401 with the OCI `UNAUTHORIZED` body
//! and `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` naming everything the
//! request needs (so that one token request is enough):
//! - no token (or another scheme): the challenge alone, which sends the client to the realm;
//! - a token that cannot be read or does not verify (bad base64, not a JWT, a huge header,
//!   `alg: none` or HS*, a bad signature, an unknown key, expired, not yet valid, another
//!   issuer or audience): `error="invalid_token"`, the reason as the message;
//! - a valid token without all the access: `error="insufficient_scope"` and a message naming
//!   the missing scopes. 401 rather than 403, as Distribution answers: clients then fetch a
//!   token with the wider scope the challenge names (the token server decides what it grants).
//!   A cross-repository mount whose token lacks `pull` on the source is one of these (see
//!   [`crate::server::access::Need::RepositoryAndMountSource`]): it never mounts.
//!
//! Nothing a client sends makes this fail with a server error.

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderValue, header};

use super::scope::Scope;
use super::token::{AuthError, RequestOrigin, Settings, TokenVerifier};
use super::{Authorizer, Decision};

/// Bearer tokens checked by a [`TokenVerifier`].
pub struct TokenAuthorizer {
    verifier: TokenVerifier,
    /// The challenge without scope or error: what is sent should a challenge with them not be
    /// a valid header value (it always is: names are validated before they are scopes).
    plain_challenge: HeaderValue,
}

impl std::fmt::Debug for TokenAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthorizer")
            .field("challenge", &self.plain_challenge)
            .finish_non_exhaustive()
    }
}

impl TokenAuthorizer {
    /// Loads the keys `settings` names. An error (unreadable or unusable keys, a realm or
    /// service that cannot be sent in a header) keeps the server from starting.
    pub fn new(settings: Settings) -> Result<Self, String> {
        let verifier = TokenVerifier::new(settings).map_err(|e| e.to_string())?;
        let plain = verifier.challenge(&[], None, RequestOrigin::default());
        let plain_challenge = HeaderValue::from_str(&plain).map_err(|_| {
            format!("auth.token: the challenge {plain:?} cannot be sent in a header")
        })?;
        Ok(Self {
            verifier,
            plain_challenge,
        })
    }
}

/// The request's host and forwarded scheme, for an `autoredirect` realm.
fn origin(headers: &HeaderMap) -> RequestOrigin<'_> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    RequestOrigin {
        host: text(header::HOST.as_str()),
        forwarded_proto: text("x-forwarded-proto"),
    }
}

#[async_trait]
impl Authorizer for TokenAuthorizer {
    async fn authorize(&self, headers: &HeaderMap, access: &[Scope]) -> Decision {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let error = match self.verifier.verify(authorization, access) {
            Ok(granted) => {
                tracing::debug!(subject = granted.subject, "token accepted");
                return Decision::Allow {
                    user: granted.subject,
                };
            }
            Err(error) => error,
        };
        let challenge = self
            .verifier
            .challenge(access, Some(&error), origin(headers));
        let challenge =
            HeaderValue::from_str(&challenge).unwrap_or_else(|_| self.plain_challenge.clone());
        match error {
            AuthError::InsufficientScope { missing } => Decision::Deny {
                missing,
                challenge: Some(challenge),
            },
            other => Decision::Challenge {
                challenge,
                message: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::scope::{PULL, PUSH};

    /// A verifier over a bundle of one certificate nothing signs with: enough for every answer
    /// but `Allow`, which `tests/access_control.rs` covers with a token server.
    fn authorizer() -> (tempfile::TempDir, TokenAuthorizer) {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["signer".to_owned()]).unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, certified.cert.pem()).unwrap();
        let authorizer = TokenAuthorizer::new(Settings {
            realm: "http://auth.test/token".into(),
            service: "registry.test".into(),
            issuer: "issuer".into(),
            root_cert_bundle: Some(bundle),
            ..Settings::default()
        })
        .unwrap();
        (dir, authorizer)
    }

    fn with_authorization(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).unwrap(),
        );
        headers
    }

    fn challenge_of(decision: Decision) -> String {
        match decision {
            Decision::Challenge { challenge, .. } => challenge.to_str().unwrap().to_owned(),
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn no_token_is_challenged_with_the_scope_the_request_needs() {
        let (_dir, authorizer) = authorizer();
        let decision = authorizer
            .authorize(
                &HeaderMap::new(),
                &[Scope::repository("team/app", &[PULL, PUSH])],
            )
            .await;
        assert_eq!(
            challenge_of(decision),
            r#"Bearer realm="http://auth.test/token",service="registry.test",scope="repository:team/app:pull,push""#
        );
    }

    #[tokio::test]
    async fn an_unreadable_token_is_challenged_as_invalid() {
        let (_dir, authorizer) = authorizer();
        for value in [
            &b"Bearer not-a-jwt"[..],
            b"Bearer !!!.???.###",
            b"Bearer \xff\xfe.\x80.\x81",
        ] {
            let decision = authorizer.authorize(&with_authorization(value), &[]).await;
            let challenge = challenge_of(decision);
            assert!(
                challenge.ends_with(r#",error="invalid_token""#),
                "{value:?}: {challenge}"
            );
        }
    }
}
