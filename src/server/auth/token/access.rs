//! What a request needs and what a token grants, in the scope form of the Docker token
//! specification: `TYPE:NAME:ACTION[,ACTION]*`, e.g. `repository:library/alpine:pull,push` and
//! `registry:catalog:*`.

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
pub struct Access {
    /// `repository` or `registry` (any other type a token names is kept, and matches only
    /// itself).
    pub kind: String,
    /// A repository name, or `catalog` for the `registry` type.
    pub name: String,
    pub actions: Vec<String>,
}

/// A scope string that does not have the `TYPE:NAME:ACTIONS` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {scope:?}: expected TYPE:NAME:ACTION[,ACTION]")]
pub struct ScopeError {
    pub scope: String,
}

impl Access {
    pub fn new(kind: &str, name: &str, actions: &[&str]) -> Self {
        Access {
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

    /// Parses one scope. The name may itself hold a `:` (a registry host with a port), so the
    /// type ends at the first `:` and the actions start after the last.
    pub fn parse(scope: &str) -> Result<Self, ScopeError> {
        let error = || ScopeError {
            scope: scope.to_owned(),
        };
        let (kind, rest) = scope.split_once(':').ok_or_else(error)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(error)?;
        let actions: Vec<String> = actions.split(',').map(str::to_owned).collect();
        let valid_kind = !kind.is_empty()
            && kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "()".contains(c));
        let valid_actions = actions
            .iter()
            .all(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_lowercase() || c == '*'));
        if !valid_kind || name.is_empty() || name.contains(char::is_whitespace) || !valid_actions {
            return Err(error());
        }
        Ok(Access {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions,
        })
    }

    /// Parses a space-separated list of scopes (the `scope` attribute of a challenge).
    pub fn parse_list(scopes: &str) -> Result<Vec<Self>, ScopeError> {
        scopes.split_whitespace().map(Self::parse).collect()
    }

    fn same_resource(&self, other: &Access) -> bool {
        self.kind == other.kind && self.name == other.name
    }
}

/// `TYPE:NAME:ACTION,ACTION`.
impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// The `scope` attribute of a challenge: one scope per resource, in the order the resources
/// first appear, its actions merged without repeats, scopes separated by spaces (as
/// Distribution writes it).
pub fn scope_param(required: &[Access]) -> String {
    merge(required)
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The accesses of `required` that `granted` lacks, one per resource with just the missing
/// actions. A resource matches on type and exact name; a granted `*` covers every action on it.
pub fn missing(granted: &[Access], required: &[Access]) -> Vec<Access> {
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
            missing.push(Access {
                actions: lacking,
                ..need
            });
        }
    }
    missing
}

/// One access per resource, first-appearance order, actions without repeats.
fn merge(accesses: &[Access]) -> Vec<Access> {
    let mut merged: Vec<Access> = Vec::new();
    for access in accesses {
        let at = match merged.iter().position(|m| m.same_resource(access)) {
            Some(at) => at,
            None => {
                merged.push(Access {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_formats_as_type_name_and_comma_separated_actions() {
        assert_eq!(
            Access::repository("library/alpine", &[PULL, PUSH]).to_string(),
            "repository:library/alpine:pull,push"
        );
        assert_eq!(Access::catalog().to_string(), "registry:catalog:*");
    }

    #[test]
    fn parsing_keeps_a_port_in_the_name() {
        assert_eq!(
            Access::parse("repository:localhost:5000/team/app:pull,push").unwrap(),
            Access::repository("localhost:5000/team/app", &[PULL, PUSH])
        );
    }

    #[test]
    fn parsing_reads_back_what_formatting_wrote() {
        for access in [
            Access::repository("a/b", &[PULL]),
            Access::repository("x", &[PULL, PUSH, DELETE]),
            Access::catalog(),
        ] {
            assert_eq!(Access::parse(&access.to_string()).unwrap(), access);
        }
    }

    #[test]
    fn parsing_refuses_what_is_not_type_name_actions() {
        for bad in [
            "",
            "repository",
            "repository:name",
            ":name:pull",
            "repository::pull",
            "repository:name:",
            "repository:name:pull,",
            "repository:na me:pull",
            "Repository:name:pull",
            "repository:name:PULL",
        ] {
            assert!(Access::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_list_of_scopes_is_separated_by_spaces() {
        assert_eq!(
            Access::parse_list("repository:a:pull registry:catalog:*").unwrap(),
            vec![Access::repository("a", &[PULL]), Access::catalog()]
        );
    }

    #[test]
    fn the_scope_param_merges_actions_per_resource_in_first_appearance_order() {
        let required = [
            Access::repository("target", &[PULL]),
            Access::repository("source", &[PULL]),
            Access::repository("target", &[PUSH, PULL]),
        ];
        assert_eq!(
            scope_param(&required),
            "repository:target:pull,push repository:source:pull"
        );
    }

    #[test]
    fn missing_names_only_the_actions_not_granted() {
        let granted = [Access::repository("app", &[PULL])];
        let required = [Access::repository("app", &[PULL, PUSH])];
        assert_eq!(
            missing(&granted, &required),
            vec![Access::repository("app", &[PUSH])]
        );
    }

    #[test]
    fn a_granted_star_covers_every_action_on_its_resource_only() {
        let granted = [Access::repository("app", &[ALL])];
        assert!(
            missing(
                &granted,
                &[Access::repository("app", &[PULL, PUSH, DELETE])]
            )
            .is_empty()
        );
        assert_eq!(
            missing(&granted, &[Access::repository("other", &[PULL])]),
            vec![Access::repository("other", &[PULL])]
        );
    }

    #[test]
    fn repository_names_match_exactly() {
        let granted = [Access::repository("team/app", &[PULL])];
        for other in ["team/app2", "team", "team/app/sub", "TEAM/app", "team/app "] {
            assert_eq!(
                missing(&granted, &[Access::repository(other, &[PULL])]).len(),
                1,
                "a grant on team/app covered {other:?}"
            );
        }
    }

    #[test]
    fn the_type_must_match_as_well_as_the_name() {
        let granted = [Access::new("registry", "app", &[ALL])];
        assert_eq!(
            missing(&granted, &[Access::repository("app", &[PULL])]).len(),
            1
        );
    }
}
