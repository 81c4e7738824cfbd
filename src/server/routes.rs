//! Which endpoint a `/v2/...` path names. Repository names hold `/`, so the path is read from
//! its end: the endpoint's fixed words and last parameter, then the name before them.

use layerstore::{Digest, Reference, RepositoryName, upload::UploadId};

use super::error::ApiError;

/// An endpoint of the OCI Distribution API, with its parameters still as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Base,
    Catalog,
    Tags { name: &'a str },
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Uploads { name: &'a str },
    Upload { name: &'a str, id: &'a str },
    Referrers { name: &'a str, digest: &'a str },
}

impl<'a> Route<'a> {
    /// Reads the part of the path after `/v2/`; `None` if no endpoint matches.
    pub fn parse(rest: &'a str) -> Option<Self> {
        if rest.is_empty() {
            return Some(Self::Base);
        }
        if rest == "_catalog" {
            return Some(Self::Catalog);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Some(Self::Tags { name });
        }
        let rest_trimmed = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(name) = rest_trimmed.strip_suffix("/blobs/uploads") {
            return Some(Self::Uploads { name });
        }
        let split = |marker: &str| {
            rest.rsplit_once(marker)
                .filter(|(name, param)| !name.is_empty() && !param.contains('/'))
        };
        if let Some((name, reference)) = split("/manifests/") {
            return Some(Self::Manifest { name, reference });
        }
        if let Some((name, id)) = split("/blobs/uploads/") {
            return Some(Self::Upload { name, id });
        }
        if let Some((name, digest)) = split("/referrers/") {
            return Some(Self::Referrers { name, digest });
        }
        if let Some((name, digest)) = split("/blobs/") {
            return Some(Self::Blob { name, digest });
        }
        None
    }
}

/// Parses a repository name from a path: 400 `NAME_INVALID` if it breaks the grammar.
pub fn name(s: &str) -> Result<RepositoryName, ApiError> {
    Ok(RepositoryName::parse(s)?)
}

pub fn digest(s: &str) -> Result<Digest, ApiError> {
    Ok(Digest::parse(s)?)
}

pub fn reference(s: &str) -> Result<Reference, ApiError> {
    Ok(Reference::parse(s)?)
}

pub fn upload_id(s: &str) -> Result<UploadId, ApiError> {
    Ok(UploadId::parse(s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_names_are_read_from_the_end() {
        assert_eq!(
            Route::parse("a/b/c/manifests/latest"),
            Some(Route::Manifest {
                name: "a/b/c",
                reference: "latest"
            })
        );
        assert_eq!(
            Route::parse("x/blobs/y/blobs/sha256:00"),
            Some(Route::Blob {
                name: "x/blobs/y",
                digest: "sha256:00"
            })
        );
        assert_eq!(
            Route::parse("lib/blobs/uploads/"),
            Some(Route::Uploads { name: "lib" })
        );
        assert_eq!(
            Route::parse("lib/blobs/uploads/abc"),
            Some(Route::Upload {
                name: "lib",
                id: "abc"
            })
        );
        assert_eq!(Route::parse("a/tags/list"), Some(Route::Tags { name: "a" }));
        assert_eq!(
            Route::parse("a/referrers/sha256:00"),
            Some(Route::Referrers {
                name: "a",
                digest: "sha256:00"
            })
        );
        assert_eq!(Route::parse(""), Some(Route::Base));
        assert_eq!(Route::parse("_catalog"), Some(Route::Catalog));
        assert_eq!(Route::parse("a/nothing"), None);
    }
}
