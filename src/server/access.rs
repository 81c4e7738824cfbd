//! What each endpoint needs, in one table: every endpoint and method the server routes is a
//! row with the access it requires, as the Docker token specification names access
//! (`repository:NAME:pull,push`, `registry:catalog:*`). Authorization ([`super::auth`]) and
//! read-only mode both read it, and the `Allow` header of a 405 is derived from it.
//!
//! A route cannot be added without a rule: [`Route::endpoint`] and [`rules`] match every
//! variant without a wildcard, so a new endpoint fails to compile until it has its row; and
//! `handlers::dispatch` answers 405 to any method without a row before a handler runs, so a
//! method added to a handler but not to the table is unreachable (its own tests fail) rather
//! than open to any authenticated client. `every_method_the_handlers_serve_has_a_rule` keeps
//! the table and the handlers' methods in step.

use std::collections::HashMap;

use axum::http::Method;

use super::auth::scope::{self, Scope};
use super::error::ApiError;
use super::routes::{self, Route};

/// An action on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pull => scope::PULL,
            Self::Push => scope::PUSH,
            Self::Delete => scope::DELETE,
        }
    }

    /// Whether the action changes what the registry holds (refused in read-only mode).
    pub fn writes(self) -> bool {
        matches!(self, Self::Push | Self::Delete)
    }
}

/// The scope of `actions` on a repository (whose name the caller has validated).
fn on_repository(name: &str, actions: &[Action]) -> Scope {
    let actions: Vec<&str> = actions.iter().map(|a| a.as_str()).collect();
    Scope::repository(name, &actions)
}

/// The endpoints, without their parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog,
    Tags,
    Manifest,
    Blob,
    Uploads,
    Upload,
    Referrers,
}

impl Endpoint {
    #[cfg(test)]
    pub const ALL: [Endpoint; 8] = [
        Self::Base,
        Self::Catalog,
        Self::Tags,
        Self::Manifest,
        Self::Blob,
        Self::Uploads,
        Self::Upload,
        Self::Referrers,
    ];
}

impl Route<'_> {
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Route::Base => Endpoint::Base,
            Route::Catalog => Endpoint::Catalog,
            Route::Tags { .. } => Endpoint::Tags,
            Route::Manifest { .. } => Endpoint::Manifest,
            Route::Blob { .. } => Endpoint::Blob,
            Route::Uploads { .. } => Endpoint::Uploads,
            Route::Upload { .. } => Endpoint::Upload,
            Route::Referrers { .. } => Endpoint::Referrers,
        }
    }

    /// The repository named in the path, if the endpoint has one.
    fn name(&self) -> Option<&str> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags { name }
            | Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Uploads { name }
            | Route::Upload { name, .. }
            | Route::Referrers { name, .. } => Some(name),
        }
    }
}

/// What one method of one endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Only an authenticated client (the base endpoint `/v2/`).
    Authenticated,
    /// `registry:catalog:*`.
    Catalog,
    /// These actions on the repository in the path.
    Repository(&'static [Action]),
    /// These actions on the repository in the path and, for a cross-repository mount
    /// (`?mount=DIGEST&from=SOURCE`), `pull` on the source: a mount reads the source.
    ///
    /// Without `pull` on the source the request is refused (token auth: 401
    /// `insufficient_scope` naming `repository:SOURCE:pull`), as Distribution refuses it,
    /// rather than answered with a plain upload session (the OCI specification's 202
    /// fallback): the client learns which scope is missing, and clients that meet the refusal
    /// (docker, containerd) push the blob in an ordinary upload. Either way it never mounts.
    RepositoryAndMountSource(&'static [Action]),
}

impl Need {
    /// Whether the row writes (push or delete): refused in read-only mode.
    pub fn writes(self) -> bool {
        match self {
            Need::Authenticated | Need::Catalog => false,
            Need::Repository(actions) | Need::RepositoryAndMountSource(actions) => {
                actions.iter().any(|a| a.writes())
            }
        }
    }

    /// Whether the row needs the `delete` action (off unless `storage.delete.enabled`).
    fn deletes(self) -> bool {
        match self {
            Need::Authenticated | Need::Catalog => false,
            Need::Repository(actions) | Need::RepositoryAndMountSource(actions) => {
                actions.contains(&Action::Delete)
            }
        }
    }
}

const PULL: &[Action] = &[Action::Pull];
const PULL_PUSH: &[Action] = &[Action::Pull, Action::Push];
const DELETE: &[Action] = &[Action::Delete];

/// The access table: for each endpoint, the methods it takes and what each needs.
pub fn rules(endpoint: Endpoint) -> &'static [(Method, Need)] {
    match endpoint {
        Endpoint::Base => &[
            (Method::GET, Need::Authenticated),
            (Method::HEAD, Need::Authenticated),
        ],
        Endpoint::Catalog => &[(Method::GET, Need::Catalog)],
        Endpoint::Tags | Endpoint::Referrers => &[(Method::GET, Need::Repository(PULL))],
        Endpoint::Manifest => &[
            (Method::GET, Need::Repository(PULL)),
            (Method::HEAD, Need::Repository(PULL)),
            (Method::PUT, Need::Repository(PULL_PUSH)),
            (Method::DELETE, Need::Repository(DELETE)),
        ],
        Endpoint::Blob => &[
            (Method::GET, Need::Repository(PULL)),
            (Method::HEAD, Need::Repository(PULL)),
            (Method::DELETE, Need::Repository(DELETE)),
        ],
        Endpoint::Uploads => &[(Method::POST, Need::RepositoryAndMountSource(PULL_PUSH))],
        // Every step of an upload is part of a push, its status and its cancellation too.
        Endpoint::Upload => &[
            (Method::GET, Need::Repository(PULL_PUSH)),
            (Method::PATCH, Need::Repository(PULL_PUSH)),
            (Method::PUT, Need::Repository(PULL_PUSH)),
            (Method::DELETE, Need::Repository(PULL_PUSH)),
        ],
    }
}

/// The row for `method` on `endpoint`; `None` if the endpoint does not take the method.
pub fn rule(endpoint: Endpoint, method: &Method) -> Option<Need> {
    rules(endpoint)
        .iter()
        .find(|(m, _)| m == method)
        .map(|(_, need)| *need)
}

/// The methods an endpoint takes, as an `Allow` header lists them: without DELETE of content
/// when deletes are disabled, and without writes in read-only mode.
pub fn allowed_methods(endpoint: Endpoint, deletes: bool, read_only: bool) -> String {
    rules(endpoint)
        .iter()
        .filter(|(_, need)| (deletes || !need.deletes()) && !(read_only && need.writes()))
        .map(|(m, _)| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The access a request needs. A method the endpoint does not take needs only an
/// authenticated client (it is then answered 405). A repository name that breaks the grammar
/// is a 400 `NAME_INVALID` here, before any access is named after it.
pub fn required(
    route: &Route<'_>,
    method: &Method,
    query: &HashMap<String, String>,
) -> Result<Vec<Scope>, ApiError> {
    let need = rule(route.endpoint(), method).unwrap_or(Need::Authenticated);
    let on_route_repository = |actions: &[Action]| -> Result<Scope, ApiError> {
        let name = routes::name(route.name().unwrap_or_default())?;
        Ok(on_repository(name.as_str(), actions))
    };
    Ok(match need {
        Need::Authenticated => Vec::new(),
        Need::Catalog => vec![Scope::catalog()],
        Need::Repository(actions) => vec![on_route_repository(actions)?],
        Need::RepositoryAndMountSource(actions) => {
            let mut scopes = vec![on_route_repository(actions)?];
            // A `from` that breaks the grammar is never mounted from (the handler starts an
            // ordinary upload instead), so it needs nothing.
            if query.contains_key("mount")
                && let Some(from) = query.get("from").and_then(|f| routes::name(f).ok())
            {
                scopes.push(on_repository(from.as_str(), &[Action::Pull]));
            }
            scopes
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn scopes(path: &str, method: Method, q: &[(&str, &str)]) -> Vec<String> {
        let route = Route::parse(path).expect("a route");
        required(&route, &method, &query(q))
            .expect("valid")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The methods `handlers::dispatch` serves on each endpoint (delete enabled): the table
    /// must have a row for each, and no row the handlers do not serve.
    #[test]
    fn every_method_the_handlers_serve_has_a_rule() {
        let served: &[(Endpoint, &[Method])] = &[
            (Endpoint::Base, &[Method::GET, Method::HEAD]),
            (Endpoint::Catalog, &[Method::GET]),
            (Endpoint::Tags, &[Method::GET]),
            (
                Endpoint::Manifest,
                &[Method::GET, Method::HEAD, Method::PUT, Method::DELETE],
            ),
            (Endpoint::Blob, &[Method::GET, Method::HEAD, Method::DELETE]),
            (Endpoint::Uploads, &[Method::POST]),
            (
                Endpoint::Upload,
                &[Method::GET, Method::PATCH, Method::PUT, Method::DELETE],
            ),
            (Endpoint::Referrers, &[Method::GET]),
        ];
        for endpoint in Endpoint::ALL {
            let (_, methods) = served
                .iter()
                .find(|(e, _)| *e == endpoint)
                .unwrap_or_else(|| panic!("{endpoint:?} is not in the list of served methods"));
            let listed: Vec<&Method> = rules(endpoint).iter().map(|(m, _)| m).collect();
            assert_eq!(
                listed,
                methods.iter().collect::<Vec<_>>(),
                "{endpoint:?}: the access table and the handlers disagree"
            );
        }
    }

    #[test]
    fn scopes_read_as_the_token_specification_writes_them() {
        assert_eq!(
            scopes("library/alpine/manifests/latest", Method::PUT, &[]),
            ["repository:library/alpine:pull,push"]
        );
        assert_eq!(scopes("_catalog", Method::GET, &[]), ["registry:catalog:*"]);
        assert!(scopes("", Method::GET, &[]).is_empty());
    }

    #[test]
    fn reads_need_pull_and_deletes_need_delete() {
        for (path, method) in [
            ("a/tags/list", Method::GET),
            ("a/manifests/v1", Method::GET),
            ("a/manifests/v1", Method::HEAD),
            ("a/blobs/sha256:00", Method::GET),
            ("a/blobs/sha256:00", Method::HEAD),
            ("a/referrers/sha256:00", Method::GET),
        ] {
            assert_eq!(
                scopes(path, method.clone(), &[]),
                ["repository:a:pull"],
                "{method} {path}"
            );
        }
        for path in ["a/manifests/v1", "a/blobs/sha256:00"] {
            assert_eq!(
                scopes(path, Method::DELETE, &[]),
                ["repository:a:delete"],
                "{path}"
            );
        }
    }

    #[test]
    fn every_upload_step_needs_pull_and_push() {
        for method in [Method::GET, Method::PATCH, Method::PUT, Method::DELETE] {
            assert_eq!(
                scopes("a/blobs/uploads/some-id", method.clone(), &[]),
                ["repository:a:pull,push"],
                "{method}"
            );
        }
        assert_eq!(
            scopes("a/blobs/uploads/", Method::POST, &[]),
            ["repository:a:pull,push"]
        );
    }

    #[test]
    fn a_mount_also_needs_pull_on_its_source() {
        assert_eq!(
            scopes(
                "b/blobs/uploads/",
                Method::POST,
                &[("mount", "sha256:00"), ("from", "a/src")]
            ),
            ["repository:b:pull,push", "repository:a/src:pull"]
        );
        // No `mount`: `from` alone mounts nothing.
        assert_eq!(
            scopes("b/blobs/uploads/", Method::POST, &[("from", "a/src")]),
            ["repository:b:pull,push"]
        );
    }

    #[test]
    fn a_method_an_endpoint_does_not_take_needs_only_authentication() {
        assert!(scopes("a/tags/list", Method::DELETE, &[]).is_empty());
        assert!(scopes("a/blobs/sha256:00", Method::PUT, &[]).is_empty());
    }

    #[test]
    fn an_invalid_repository_name_is_400_before_any_scope() {
        let route = Route::parse("UPPER/manifests/v1").unwrap();
        assert!(required(&route, &Method::GET, &HashMap::new()).is_err());
    }

    #[test]
    fn read_only_refuses_exactly_the_rows_that_push_or_delete() {
        let mut writes = Vec::new();
        for endpoint in Endpoint::ALL {
            for (method, need) in rules(endpoint) {
                if need.writes() {
                    writes.push(format!("{method} {endpoint:?}"));
                }
            }
        }
        assert_eq!(
            writes,
            [
                "PUT Manifest",
                "DELETE Manifest",
                "DELETE Blob",
                "POST Uploads",
                "GET Upload",
                "PATCH Upload",
                "PUT Upload",
                "DELETE Upload"
            ]
        );
    }

    #[test]
    fn allow_lists_follow_the_table() {
        assert_eq!(
            allowed_methods(Endpoint::Manifest, true, false),
            "GET, HEAD, PUT, DELETE"
        );
        assert_eq!(
            allowed_methods(Endpoint::Manifest, false, false),
            "GET, HEAD, PUT"
        );
        assert_eq!(allowed_methods(Endpoint::Manifest, true, true), "GET, HEAD");
        assert_eq!(
            allowed_methods(Endpoint::Upload, false, false),
            "GET, PATCH, PUT, DELETE"
        );
        assert_eq!(allowed_methods(Endpoint::Uploads, true, true), "");
    }
}
