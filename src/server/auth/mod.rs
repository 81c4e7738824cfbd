//! Who may do what: an [`Authorizer`] decides, from a request's headers and the access the
//! access table says its endpoint needs ([`super::access`], in [`scope::Scope`]s), whether it
//! goes on. One implementation per `auth` kind: [`htpasswd::Htpasswd`] (Basic credentials,
//! bcrypt) and [`bearer::TokenAuthorizer`] (the Docker token specification, over the verifier
//! in [`token`]).
//!
//! Under any authorizer nothing is anonymous: the base endpoint, the catalog, tag lists and
//! HEAD requests need credentials too (the base endpoint needs no scope, only a client the
//! authorizer accepts).

pub mod bearer;
pub mod htpasswd;
pub mod scope;
pub mod token;

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};

use super::error::ApiError;
use scope::Scope;
pub use scope::quoted;

/// What an authorizer decided about one request.
#[derive(Debug)]
pub enum Decision {
    /// Let through; `user` is who the credentials name (the htpasswd user, the token's
    /// subject), for the notifications' `actor`.
    Allow { user: String },
    /// No credentials, or credentials that do not authenticate (unknown user, wrong password,
    /// an invalid token, an unreadable `Authorization` header): 401 `UNAUTHORIZED` with this
    /// `WWW-Authenticate` challenge.
    Challenge {
        challenge: HeaderValue,
        message: String,
    },
    /// An authenticated client without the access: the scopes it lacks are named. With a
    /// challenge, 401 (as the token specification's `error="insufficient_scope"`, which makes
    /// clients ask for a new token); without, 403 `DENIED`.
    Deny {
        missing: Vec<Scope>,
        challenge: Option<HeaderValue>,
    },
}

impl Decision {
    /// The response for a decision other than [`Decision::Allow`].
    pub fn into_error(self) -> Option<ApiError> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Challenge { challenge, message } => Some(
                ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
                    .with_header_value(header::WWW_AUTHENTICATE, challenge),
            ),
            Decision::Deny { missing, challenge } => {
                let scopes: Vec<String> = missing.iter().map(ToString::to_string).collect();
                let message = format!("access denied: missing {}", scopes.join(" "));
                Some(match challenge {
                    Some(challenge) => {
                        ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
                            .with_header_value(header::WWW_AUTHENTICATE, challenge)
                    }
                    None => ApiError::new(StatusCode::FORBIDDEN, "DENIED", message),
                })
            }
        }
    }
}

/// Decides whether a request may have the access its endpoint needs.
#[async_trait]
pub trait Authorizer: Send + Sync {
    /// `access` is what the access table requires of the request: empty for the base
    /// endpoint (authentication alone). Must never fail with a server error because of what
    /// the client sent: a malformed `Authorization` header is a challenge.
    async fn authorize(&self, headers: &HeaderMap, access: &[Scope]) -> Decision;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[test]
    fn challenge_parameters_are_quoted_strings() {
        assert_eq!(quoted("registry"), "\"registry\"");
        assert_eq!(quoted(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }

    #[test]
    fn a_denial_names_the_missing_scope() {
        let missing = vec![Scope::repository("a/b", &[scope::PUSH])];
        let forbidden = Decision::Deny {
            missing: missing.clone(),
            challenge: None,
        }
        .into_error()
        .unwrap()
        .into_response();
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        let unauthorized = Decision::Deny {
            missing,
            challenge: Some(HeaderValue::from_static("Bearer realm=\"r\"")),
        }
        .into_error()
        .unwrap();
        assert!(format!("{unauthorized:?}").contains("repository:a/b:push"));
        let response = unauthorized.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
