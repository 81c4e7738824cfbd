//! What a request needs and what a token grants, in the scope form of the Docker token
//! specification: `TYPE:NAME:ACTION[,ACTION]*`, e.g. `repository:library/alpine:pull,push` and
//! `registry:catalog:*`.
//!
//! The one scope type of the server: the access table ([`crate::server::access`]) writes what
//! each request needs in it, authorizers receive it, the token verifier compares it with what a
//! token grants, and a denial names what is missing in it. It is plain strings, because a
//! token may grant types and actions this registry has never heard of; the access table only
//! ever builds it from a validated repository name and the action constants here.
//!
//! No `crate::` paths outside doc links: `tests/token_auth.rs` compiles this module (with the
//! token verifier) on its own.

use std::fmt;

/// Read a repository's manifests, tags and blobs.
pub const PULL: &str = "pull";
/// Upload blobs and put manifests and tags.
pub const PUSH: &str = "push";
/// Delete manifests, tags and blobs.
pub const DELETE: &str = "delete";
/// In a token, every action on its resource (Distribution's `*`); in a request, the catalog's one.
pub const ALL: &str = "*";

/// Actions on one resource: what a request needs, or what a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// `repository` or `registry` (any other type a token names is kept, and matches only
    /// itself).
    pub kind: String,
    /// A repository name, or `catalog` for the `registry` type.
    pub name: String,
    pub actions: Vec<String>,
}

impl Scope {
    pub fn new(kind: &str, name: &str, actions: &[&str]) -> Self {
        Scope {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    /// `repository:NAME:ACTIONS`.
    pub fn repository(name: &str, actions: &[&str]) -> Self {
        Self::new("repository", name, actions)
    }

    /// `registry:catalog:*`, what listing the catalog needs.
    pub fn catalog() -> Self {
        Self::new("registry", "catalog", &[ALL])
    }

    fn same_resource(&self, other: &Scope) -> bool {
        self.kind == other.kind && self.name == other.name
    }
}

/// `TYPE:NAME:ACTION,ACTION`.
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// The `scope` attribute of a challenge: one scope per resource, in the order the resources
/// first appear, its actions merged without repeats, scopes separated by spaces (as
/// Distribution writes it).
pub fn scope_param(required: &[Scope]) -> String {
    merge(required)
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The accesses of `required` that `granted` lacks, one per resource with just the missing
/// actions. A resource matches on type and exact name; a granted `*` covers every action on it.
pub fn missing(granted: &[Scope], required: &[Scope]) -> Vec<Scope> {
    let mut missing = Vec::new();
    for need in merge(required) {
        let lacking: Vec<String> = need
            .actions
            .iter()
            .filter(|action| {
                !granted.iter().any(|grant| {
                    grant.same_resource(&need)
                        && grant.actions.iter().any(|a| a == ALL || a == *action)
                })
            })
            .cloned()
            .collect();
        if !lacking.is_empty() {
            missing.push(Scope {
                actions: lacking,
                ..need
            });
        }
    }
    missing
}

/// One access per resource, first-appearance order, actions without repeats.
fn merge(accesses: &[Scope]) -> Vec<Scope> {
    let mut merged: Vec<Scope> = Vec::new();
    for access in accesses {
        let at = match merged.iter().position(|m| m.same_resource(access)) {
            Some(at) => at,
            None => {
                merged.push(Scope {
                    actions: Vec::new(),
                    ..access.clone()
                });
                merged.len() - 1
            }
        };
        for action in &access.actions {
            if !merged[at].actions.contains(action) {
                merged[at].actions.push(action.clone());
            }
        }
    }
    merged
}

/// A challenge parameter as an HTTP quoted-string (RFC 9110 section 5.6.4): `realm="…"`.
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_formats_as_type_name_and_comma_separated_actions() {
        assert_eq!(
            Scope::repository("library/alpine", &[PULL, PUSH]).to_string(),
            "repository:library/alpine:pull,push"
        );
        assert_eq!(Scope::catalog().to_string(), "registry:catalog:*");
    }

    #[test]
    fn the_scope_param_merges_actions_per_resource_in_first_appearance_order() {
        let required = [
            Scope::repository("target", &[PULL]),
            Scope::repository("source", &[PULL]),
            Scope::repository("target", &[PUSH, PULL]),
        ];
        assert_eq!(
            scope_param(&required),
            "repository:target:pull,push repository:source:pull"
        );
    }

    #[test]
    fn missing_names_only_the_actions_not_granted() {
        let granted = [Scope::repository("app", &[PULL])];
        let required = [Scope::repository("app", &[PULL, PUSH])];
        assert_eq!(
            missing(&granted, &required),
            vec![Scope::repository("app", &[PUSH])]
        );
    }

    #[test]
    fn a_granted_star_covers_every_action_on_its_resource_only() {
        let granted = [Scope::repository("app", &[ALL])];
        assert!(missing(&granted, &[Scope::repository("app", &[PULL, PUSH, DELETE])]).is_empty());
        assert_eq!(
            missing(&granted, &[Scope::repository("other", &[PULL])]),
            vec![Scope::repository("other", &[PULL])]
        );
    }

    #[test]
    fn repository_names_match_exactly() {
        let granted = [Scope::repository("team/app", &[PULL])];
        for other in ["team/app2", "team", "team/app/sub", "TEAM/app", "team/app "] {
            assert_eq!(
                missing(&granted, &[Scope::repository(other, &[PULL])]).len(),
                1,
                "a grant on team/app covered {other:?}"
            );
        }
    }

    #[test]
    fn the_type_must_match_as_well_as_the_name() {
        let granted = [Scope::new("registry", "app", &[ALL])];
        assert_eq!(
            missing(&granted, &[Scope::repository("app", &[PULL])]).len(),
            1
        );
    }
}
