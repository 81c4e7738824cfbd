//! Content digests: `algorithm:encoded`, per the OCI image-spec grammar.
//!
//! ```text
//! digest                ::= algorithm ":" encoded
//! algorithm             ::= algorithm-component (algorithm-separator algorithm-component)*
//! algorithm-component   ::= [a-z0-9]+
//! algorithm-separator   ::= [+._-]
//! encoded               ::= [a-zA-Z0-9=_-]+
//! ```
//!
//! `sha256` (64 lowercase hex) and `sha512` (128 lowercase hex) are supported. Any other
//! well-formed algorithm is refused as [`Error::Unsupported`]; anything that breaks the grammar,
//! or a registered algorithm with a wrong encoding (length, upper case), as
//! [`Error::DigestInvalid`].
//!
//! A digest is held as raw bytes, so it is cheap to copy around, hash and compare, and its
//! printed form is always canonical.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

use crate::error::{Error, Result, truncate_for_message};

/// A supported digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears in a digest string.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Length of the hash in bytes.
    #[must_use]
    pub const fn hash_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    const fn from_name(name: &str) -> Option<Self> {
        match name.as_bytes() {
            b"sha256" => Some(Self::Sha256),
            b"sha512" => Some(Self::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A content digest, such as `sha256:2c26b46b…`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Digest {
    Sha256([u8; 32]),
    Sha512([u8; 64]),
}

impl Digest {
    /// Parses the string form, enforcing the OCI grammar and the registered encodings.
    ///
    /// # Errors
    /// [`Error::DigestInvalid`] for malformed input, [`Error::Unsupported`] for a well-formed
    /// digest whose algorithm is not `sha256` or `sha512`.
    pub fn parse(s: &str) -> Result<Self> {
        let Some((algorithm, encoded)) = s.split_once(':') else {
            return Err(invalid(s, "missing ':' between algorithm and encoded part"));
        };
        check_algorithm_grammar(s, algorithm)?;
        if encoded.is_empty() {
            return Err(invalid(s, "empty encoded part"));
        }
        if let Some(at) = encoded
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-')))
        {
            return Err(invalid(
                s,
                format!("encoded part has character {:?}", char_at(encoded, at)),
            ));
        }
        let Some(alg) = Algorithm::from_name(algorithm) else {
            return Err(Error::Unsupported {
                what: format!(
                    "digest algorithm {:?} (supported: sha256, sha512)",
                    truncate_for_message(algorithm)
                ),
            });
        };
        if encoded.len() != alg.hash_len() * 2 {
            return Err(invalid(
                s,
                format!(
                    "{alg} needs {} hex characters, got {}",
                    alg.hash_len() * 2,
                    encoded.len()
                ),
            ));
        }
        match alg {
            Algorithm::Sha256 => {
                let mut out = [0u8; 32];
                decode_lower_hex(s, encoded, &mut out)?;
                Ok(Self::Sha256(out))
            }
            Algorithm::Sha512 => {
                let mut out = [0u8; 64];
                decode_lower_hex(s, encoded, &mut out)?;
                Ok(Self::Sha512(out))
            }
        }
    }

    /// The SHA-256 digest of `data`.
    #[must_use]
    pub fn sha256(data: &[u8]) -> Self {
        Self::Sha256(Sha256::digest(data).into())
    }

    /// The digest of `data` under `algorithm`.
    #[must_use]
    pub fn compute(algorithm: Algorithm, data: &[u8]) -> Self {
        match algorithm {
            Algorithm::Sha256 => Self::sha256(data),
            Algorithm::Sha512 => Self::Sha512(Sha512::digest(data).into()),
        }
    }

    /// Whether `data` hashes to this digest.
    #[must_use]
    pub fn matches(&self, data: &[u8]) -> bool {
        Self::compute(self.algorithm(), data) == *self
    }

    /// Checks `data` against this digest.
    ///
    /// # Errors
    /// [`Error::DigestInvalid`] naming both digests when they differ.
    pub fn verify(&self, data: &[u8]) -> Result<()> {
        let actual = Self::compute(self.algorithm(), data);
        if actual == *self {
            Ok(())
        } else {
            Err(Error::digest_invalid(format!(
                "content has digest {actual}, expected {self}"
            )))
        }
    }

    /// The algorithm.
    #[must_use]
    pub const fn algorithm(&self) -> Algorithm {
        match self {
            Self::Sha256(_) => Algorithm::Sha256,
            Self::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// The raw hash bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Sha256(b) => b,
            Self::Sha512(b) => b,
        }
    }

    /// The encoded part: lowercase hex.
    #[must_use]
    pub fn hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(self.as_bytes().len() * 2);
        for b in self.as_bytes() {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }
}

fn invalid(input: &str, reason: impl fmt::Display) -> Error {
    Error::digest_invalid(format!("{:?}: {reason}", truncate_for_message(input)))
}

fn check_algorithm_grammar(input: &str, algorithm: &str) -> Result<()> {
    if algorithm.is_empty() {
        return Err(invalid(input, "empty algorithm"));
    }
    let mut previous_was_separator = true; // a separator may not lead
    for (at, b) in algorithm.bytes().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => previous_was_separator = false,
            b'+' | b'.' | b'_' | b'-' if !previous_was_separator => previous_was_separator = true,
            _ => {
                return Err(invalid(
                    input,
                    format!(
                        "algorithm has {:?} where the grammar forbids it",
                        char_at(algorithm, at)
                    ),
                ));
            }
        }
    }
    if previous_was_separator {
        return Err(invalid(input, "algorithm ends with a separator"));
    }
    Ok(())
}

/// The character starting at byte `at`, for messages: the scans look at bytes (fast), but a
/// client that sent `é` should read `é` in the error, not the first byte of its encoding.
/// `at` is always a character boundary there, because every byte before it was ASCII.
pub(crate) fn char_at(s: &str, at: usize) -> char {
    s.get(at..)
        .and_then(|rest| rest.chars().next())
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

fn decode_lower_hex(input: &str, encoded: &str, out: &mut [u8]) -> Result<()> {
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    for (i, pair) in encoded.as_bytes().chunks_exact(2).enumerate() {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = (hi << 4) | lo,
            _ => {
                return Err(invalid(
                    input,
                    "encoded part must be lowercase hex ([a-f0-9])",
                ));
            }
        }
    }
    Ok(())
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sha256_of_empty_input_prints_the_well_known_digest() {
        assert_eq!(Digest::sha256(b"").to_string(), EMPTY_SHA256);
    }

    #[test]
    fn parse_then_print_is_identity_for_sha256_and_sha512() {
        let d512 = Digest::compute(Algorithm::Sha512, b"abc").to_string();
        for s in [EMPTY_SHA256, d512.as_str()] {
            assert_eq!(Digest::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn uppercase_hex_is_invalid_not_unsupported() {
        let upper = EMPTY_SHA256.replace('e', "E");
        assert_eq!(
            Digest::parse(&upper).unwrap_err().kind(),
            ErrorKind::DigestInvalid
        );
    }

    #[test]
    fn well_formed_unknown_algorithm_is_unsupported() {
        for s in [
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
            "blake3:af1349b9",
        ] {
            assert_eq!(
                Digest::parse(s).unwrap_err().kind(),
                ErrorKind::Unsupported,
                "{s}"
            );
        }
    }

    #[test]
    fn verify_names_both_digests_on_mismatch() {
        let d = Digest::sha256(b"hello");
        d.verify(b"hello").unwrap();
        let err = d.verify(b"hellO").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DigestInvalid);
        assert!(err.to_string().contains(&d.to_string()));
        assert!(
            err.to_string()
                .contains(&Digest::sha256(b"hellO").to_string())
        );
    }

    #[test]
    fn serde_uses_the_string_form() {
        let d = Digest::sha256(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }

    #[test]
    fn ordering_matches_string_ordering() {
        let mut ds: Vec<Digest> = (0..50u8).map(|i| Digest::sha256(&[i])).collect();
        ds.push(Digest::compute(Algorithm::Sha512, b"a"));
        let mut by_value = ds.clone();
        by_value.sort();
        let mut by_string = ds;
        by_string.sort_by_key(ToString::to_string);
        assert_eq!(by_value, by_string);
    }
}
