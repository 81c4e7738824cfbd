//! Plain reference models of the layerstore grammars, for the fuzz targets to compare the real
//! parsers against.
//!
//! They are written from the grammars in the spec (as regular expressions plus the length
//! limits), not from the parsers, so that a disagreement points at a bug in one of the two.

use std::sync::LazyLock;

use regex::Regex;

/// What the OCI image-spec grammar, plus the algorithms layerstore supports, says of a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestVerdict {
    /// `sha256:` + 64 or `sha512:` + 128 lowercase hex characters.
    Valid,
    /// Well formed, but the algorithm is neither `sha256` nor `sha512`.
    Unsupported,
    /// Breaks the grammar, or a supported algorithm with a wrong encoding.
    Invalid,
}

/// `digest ::= algorithm ":" encoded` from the OCI image spec.
static DIGEST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\A(?P<alg>[a-z0-9]+(?:[+._-][a-z0-9]+)*):(?P<enc>[a-zA-Z0-9=_-]+)\z").unwrap()
});
static SHA256_HEX: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\A[a-f0-9]{64}\z").unwrap());
static SHA512_HEX: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\A[a-f0-9]{128}\z").unwrap());

/// Classifies `s` as a digest.
#[must_use]
pub fn digest(s: &str) -> DigestVerdict {
    let Some(caps) = DIGEST.captures(s) else {
        return DigestVerdict::Invalid;
    };
    let encoding = match &caps["alg"] {
        "sha256" => &*SHA256_HEX,
        "sha512" => &*SHA512_HEX,
        _ => return DigestVerdict::Unsupported,
    };
    if encoding.is_match(&caps["enc"]) {
        DigestVerdict::Valid
    } else {
        DigestVerdict::Invalid
    }
}

/// `name ::= component ("/" component)*`, `component ::= [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`,
/// from the OCI Distribution spec.
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    let component = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*";
    Regex::new(&format!(r"\A{component}(?:/{component})*\z")).unwrap()
});

/// Maximum repository name length.
pub const MAX_NAME_LEN: usize = 255;

/// Whether `s` is a repository name layerstore should accept.
#[must_use]
pub fn repository_name(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN && NAME.is_match(s)
}

/// `tag ::= [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`, from the OCI Distribution spec.
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\z").unwrap());

/// Whether `s` is a tag layerstore should accept.
#[must_use]
pub fn tag(s: &str) -> bool {
    TAG.is_match(s)
}

/// Upper bound on the length of any parser error message, whatever the input length: the
/// offending input is truncated to 300 bytes before it is quoted (and quoting escapes at most
/// ten characters per character), so messages stay small even for megabyte inputs.
pub const MAX_MESSAGE_LEN: usize = 8 * 1024;
