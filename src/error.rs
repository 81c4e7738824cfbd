//! The one error type of the crate.
//!
//! Every kind that a client can cause maps to exactly one OCI Distribution error code
//! ([`ErrorKind::code`]); backend and I/O failures keep their source and have no OCI code
//! (a frontend answers them with a 5xx).

use crate::digest::Digest;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in layerstore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The blob is not known to the repository (or to the store).
    #[error("blob unknown to registry: {digest}")]
    BlobUnknown { digest: Digest },

    /// The upload cannot accept this request (for example a commit of a cancelled session).
    #[error("blob upload invalid: {reason}")]
    BlobUploadInvalid { reason: String },

    /// No upload session with this id exists.
    #[error("blob upload unknown: {id}")]
    BlobUploadUnknown { id: String },

    /// The digest is malformed, or content does not match the digest it was given.
    #[error("digest invalid: {reason}")]
    DigestInvalid { reason: String },

    /// A manifest references blobs or manifests that the repository does not have.
    #[error("manifest references unknown blobs: {}", list(digests))]
    ManifestBlobUnknown { digests: Vec<Digest> },

    /// The manifest is malformed or not acceptable.
    #[error("manifest invalid: {reason}")]
    ManifestInvalid { reason: String },

    /// No manifest under this tag or digest.
    #[error("manifest unknown: {reference}")]
    ManifestUnknown { reference: String },

    /// The repository name, tag or reference breaks the grammar.
    #[error("invalid name {name:?}: {reason}")]
    NameInvalid { name: String, reason: String },

    /// The repository is not known.
    #[error("repository name not known to registry: {name}")]
    NameUnknown { name: String },

    /// A size does not match the content or the declared size.
    #[error("size invalid: {reason}")]
    SizeInvalid { reason: String },

    /// The operation or input is valid but not supported (for example an unsupported digest
    /// algorithm, or deletes switched off).
    #[error("unsupported: {what}")]
    Unsupported { what: String },

    /// A byte range (read) or chunk offset (upload) that cannot be satisfied.
    #[error("{0}")]
    RangeInvalid(RangeError),

    /// The storage backend failed.
    #[error("storage backend error: {source}")]
    Backend {
        #[source]
        source: object_store::Error,
    },

    /// A local I/O operation failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Stored state is not what this version of layerstore wrote (corrupt or foreign data).
    #[error("corrupt stored state at {key}: {reason}")]
    Corrupt { key: String, reason: String },

    /// A shared blob-descriptor cache could not be told of a removal; the removal was not
    /// made (see [`crate::Repository::unlink_blob`]).
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

/// Why a range or offset was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    /// A chunk did not start at the upload's current offset; nothing was written.
    #[error("chunk starts at offset {requested}, but the upload is at offset {current}")]
    UploadOffset { current: u64, requested: u64 },
    /// A read range lies outside the blob.
    #[error("range {start}-{end_inclusive} is outside a blob of {size} bytes")]
    Unsatisfiable {
        start: u64,
        end_inclusive: u64,
        size: u64,
    },
    /// A range that is not well formed (for example end before start).
    #[error("malformed range: {reason}")]
    Malformed { reason: String },
}

/// The kind of an [`Error`], without its details: cheap to copy and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unsupported,
    RangeInvalid,
    Backend,
    Io,
    Corrupt,
    Cache,
}

impl ErrorKind {
    /// The OCI Distribution error code, or `None` for server-side failures (backend, I/O,
    /// corrupt state), which a frontend reports as an internal error.
    #[must_use]
    pub const fn code(self) -> Option<&'static str> {
        Some(match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::Unsupported => "UNSUPPORTED",
            Self::RangeInvalid => "RANGE_INVALID",
            Self::Backend | Self::Io | Self::Corrupt | Self::Cache => return None,
        })
    }
}

impl Error {
    /// The kind of this error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BlobUnknown { .. } => ErrorKind::BlobUnknown,
            Self::BlobUploadInvalid { .. } => ErrorKind::BlobUploadInvalid,
            Self::BlobUploadUnknown { .. } => ErrorKind::BlobUploadUnknown,
            Self::DigestInvalid { .. } => ErrorKind::DigestInvalid,
            Self::ManifestBlobUnknown { .. } => ErrorKind::ManifestBlobUnknown,
            Self::ManifestInvalid { .. } => ErrorKind::ManifestInvalid,
            Self::ManifestUnknown { .. } => ErrorKind::ManifestUnknown,
            Self::NameInvalid { .. } => ErrorKind::NameInvalid,
            Self::NameUnknown { .. } => ErrorKind::NameUnknown,
            Self::SizeInvalid { .. } => ErrorKind::SizeInvalid,
            Self::Unsupported { .. } => ErrorKind::Unsupported,
            Self::RangeInvalid(_) => ErrorKind::RangeInvalid,
            Self::Backend { .. } => ErrorKind::Backend,
            Self::Io { .. } => ErrorKind::Io,
            Self::Corrupt { .. } => ErrorKind::Corrupt,
            Self::Cache(_) => ErrorKind::Cache,
        }
    }

    /// The OCI Distribution error code of this error (see [`ErrorKind::code`]).
    #[must_use]
    pub fn code(&self) -> Option<&'static str> {
        self.kind().code()
    }

    pub(crate) fn manifest_invalid(reason: impl Into<String>) -> Self {
        Self::ManifestInvalid {
            reason: reason.into(),
        }
    }

    pub(crate) fn digest_invalid(reason: impl Into<String>) -> Self {
        Self::DigestInvalid {
            reason: reason.into(),
        }
    }

    pub(crate) fn name_invalid(name: &str, reason: impl Into<String>) -> Self {
        Self::NameInvalid {
            name: truncate_for_message(name),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<object_store::Error> for Error {
    fn from(source: object_store::Error) -> Self {
        Self::Backend { source }
    }
}

/// Keeps error messages bounded when the offending input is huge.
pub(crate) fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

fn list(digests: &[Digest]) -> String {
    digests
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_kind_has_a_distinct_oci_code() {
        let kinds = [
            ErrorKind::BlobUnknown,
            ErrorKind::BlobUploadInvalid,
            ErrorKind::BlobUploadUnknown,
            ErrorKind::DigestInvalid,
            ErrorKind::ManifestBlobUnknown,
            ErrorKind::ManifestInvalid,
            ErrorKind::ManifestUnknown,
            ErrorKind::NameInvalid,
            ErrorKind::NameUnknown,
            ErrorKind::SizeInvalid,
            ErrorKind::Unsupported,
            ErrorKind::RangeInvalid,
        ];
        let codes: std::collections::HashSet<_> = kinds
            .iter()
            .map(|k| k.code().expect("client kind"))
            .collect();
        assert_eq!(codes.len(), kinds.len());
    }

    #[test]
    fn server_side_failures_have_no_oci_code_and_keep_their_source() {
        let err = Error::io("reading", std::io::Error::other("disk gone"));
        assert_eq!(err.code(), None);
        let source = std::error::Error::source(&err).expect("source kept");
        assert_eq!(source.to_string(), "disk gone");
    }

    #[test]
    fn huge_inputs_are_truncated_in_messages() {
        let err = Error::name_invalid(&"a".repeat(10_000), "too long");
        assert!(err.to_string().len() < 400);
    }
}
