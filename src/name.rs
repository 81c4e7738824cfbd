//! Repository names, tags and references, validated per the OCI Distribution spec.
//!
//! ```text
//! name       ::= component ("/" component)*          at most 255 characters
//! component  ::= [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
//! tag        ::= [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
//! reference  ::= tag | digest
//! ```
//!
//! A [`RepositoryName`] or [`Tag`] can only be built by these parsers, so every value the store
//! turns into a backend key is already known to be safe: a name component starts and ends with
//! `[a-z0-9]`, so it can never be empty, `.`, `..`, or a reserved `_`-prefixed component; a tag
//! never starts with `.` and never contains `/`.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, char_at};
use crate::error::{Error, Result};

/// Maximum length of a repository name, in characters (all of them ASCII).
pub const MAX_NAME_LEN: usize = 255;
/// Maximum length of a tag.
pub const MAX_TAG_LEN: usize = 128;

/// A validated repository name such as `library/alpine`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(Box<str>);

impl RepositoryName {
    /// Parses and validates a repository name.
    ///
    /// # Errors
    /// [`Error::NameInvalid`] saying which rule the input breaks.
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::name_invalid(s, "repository name is empty"));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(Error::name_invalid(
                s,
                format!(
                    "repository name is {} characters, the limit is {MAX_NAME_LEN}",
                    s.len()
                ),
            ));
        }
        for (i, component) in s.split('/').enumerate() {
            check_component(component).map_err(|why| {
                Error::name_invalid(s, format!("component {} ({component:?}) {why}", i + 1))
            })?;
        }
        Ok(Self(s.into()))
    }

    /// The name as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Checks `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`; the error says why, for the message.
fn check_component(c: &str) -> std::result::Result<(), &'static str> {
    let b = c.as_bytes();
    if b.is_empty() {
        return Err("is empty");
    }
    if !is_alnum(b[0]) {
        return Err("must start with [a-z0-9]");
    }
    if !is_alnum(b[b.len() - 1]) {
        return Err("must end with [a-z0-9]");
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        match &b[start..i] {
            b"." | b"_" | b"__" => {}
            run if run.iter().all(|&x| x == b'-') => {}
            run if run.iter().all(|&x| matches!(x, b'.' | b'_' | b'-')) => {
                return Err("has a separator other than '.', '_', '__' or dashes");
            }
            _ => return Err("has a character outside [a-z0-9._-]"),
        }
    }
    Ok(())
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepositoryName({:?})", &*self.0)
    }
}

/// A validated tag such as `v1.2.3`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(Box<str>);

impl Tag {
    /// Parses and validates a tag.
    ///
    /// # Errors
    /// [`Error::NameInvalid`] saying which rule the input breaks.
    pub fn parse(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        if b.is_empty() {
            return Err(Error::name_invalid(s, "tag is empty"));
        }
        if b.len() > MAX_TAG_LEN {
            return Err(Error::name_invalid(
                s,
                format!("tag is {} characters, the limit is {MAX_TAG_LEN}", b.len()),
            ));
        }
        if !(b[0].is_ascii_alphanumeric() || b[0] == b'_') {
            return Err(Error::name_invalid(s, "tag must start with [a-zA-Z0-9_]"));
        }
        if let Some(at) = b
            .iter()
            .skip(1)
            .position(|&x| !(x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-')))
        {
            return Err(Error::name_invalid(
                s,
                format!(
                    "tag has {:?}; allowed are [a-zA-Z0-9._-]",
                    char_at(s, at + 1)
                ),
            ));
        }
        Ok(Self(s.into()))
    }

    /// The tag as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({:?})", &*self.0)
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// Parses a reference. Anything with a `:` is read as a digest (a tag cannot hold `:`).
    ///
    /// # Errors
    /// The digest's errors for digest-like input, [`Error::NameInvalid`] for a bad tag.
    pub fn parse(s: &str) -> Result<Self> {
        if s.contains(':') {
            Digest::parse(s).map(Self::Digest)
        } else {
            Tag::parse(s).map(Self::Tag)
        }
    }

    /// The tag, if this reference is one.
    #[must_use]
    pub fn tag(&self) -> Option<&Tag> {
        match self {
            Self::Tag(tag) => Some(tag),
            Self::Digest(_) => None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(t) => t.fmt(f),
            Self::Digest(d) => d.fmt(f),
        }
    }
}

impl From<Tag> for Reference {
    fn from(t: Tag) -> Self {
        Self::Tag(t)
    }
}

impl From<Digest> for Reference {
    fn from(d: Digest) -> Self {
        Self::Digest(d)
    }
}

macro_rules! string_traits {
    ($t:ty) => {
        impl FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
string_traits!(RepositoryName);
string_traits!(Tag);

impl AsRef<str> for RepositoryName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
string_traits!(Reference);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn accepts_names_with_every_separator_kind() {
        for ok in ["a", "library/alpine", "a.b_c__d-e---f/0", "x/y/z/w", "a1b2"] {
            RepositoryName::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn refuses_names_that_could_escape_their_place() {
        for bad in [
            "..",
            "a/..",
            "a/./b",
            "/a",
            "a/",
            "a//b",
            "_uploads",
            "a/_manifests",
            ".a",
            "a.",
            "a___b",
            "a._b",
            "A",
            "a b",
            "a\\b",
        ] {
            assert_eq!(
                RepositoryName::parse(bad).unwrap_err().kind(),
                ErrorKind::NameInvalid,
                "{bad}"
            );
        }
    }

    #[test]
    fn name_length_limit_is_255() {
        let ok = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        assert_eq!(ok.len(), 255);
        RepositoryName::parse(&ok).unwrap();
        let bad = format!("{ok}c");
        assert_eq!(
            RepositoryName::parse(&bad).unwrap_err().kind(),
            ErrorKind::NameInvalid
        );
    }

    #[test]
    fn tag_length_limit_is_128() {
        Tag::parse(&"a".repeat(128)).unwrap();
        assert_eq!(
            Tag::parse(&"a".repeat(129)).unwrap_err().kind(),
            ErrorKind::NameInvalid
        );
    }

    #[test]
    fn tags_may_not_start_with_dot_or_dash_or_hold_slashes() {
        for bad in ["", ".", "..", "-x", ".hidden", "a/b", "a:b", "tag!"] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
        for ok in ["_", "latest", "v1.2.3-rc.1", "A_b.C-d"] {
            Tag::parse(ok).unwrap();
        }
    }

    #[test]
    fn reference_with_colon_is_a_digest() {
        let d = Digest::sha256(b"x");
        assert_eq!(
            Reference::parse(&d.to_string()).unwrap(),
            Reference::Digest(d)
        );
        assert_eq!(
            Reference::parse("latest").unwrap(),
            Reference::Tag(Tag::parse("latest").unwrap())
        );
        assert_eq!(
            Reference::parse("sha256:XYZ").unwrap_err().kind(),
            ErrorKind::DigestInvalid
        );
    }
}
