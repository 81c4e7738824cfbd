//! Bad input, and what layerstore says about it.
//!
//! Each table row is one input a client could send, the kind of error it gets (which fixes the
//! OCI error code) and a piece of the message that tells the client what was wrong. The tables
//! are documentation: add a row when a new kind of bad input turns up.

use layerstore::ErrorKind::{DigestInvalid, NameInvalid, Unsupported};
use layerstore::{Digest, Error, ErrorKind, Reference, RepositoryName, Tag};

const HEX64: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

struct Case {
    what: &'static str,
    input: String,
    kind: ErrorKind,
    message: &'static str,
}

fn case(
    what: &'static str,
    input: impl Into<String>,
    kind: ErrorKind,
    message: &'static str,
) -> Case {
    Case {
        what,
        input: input.into(),
        kind,
        message,
    }
}

/// Runs every row, and reports all the rows that fail rather than the first one.
fn check<T: std::fmt::Debug>(cases: &[Case], parse: impl Fn(&str) -> Result<T, Error>) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let problem = match parse(&c.input) {
                Ok(v) => format!("accepted as {v:?}"),
                Err(e) if e.kind() != c.kind => {
                    format!("got {:?} ({e}), want {:?}", e.kind(), c.kind)
                }
                Err(e) if !e.to_string().contains(c.message) => {
                    format!(
                        "message {:?} does not contain {:?}",
                        e.to_string(),
                        c.message
                    )
                }
                Err(_) => return None,
            };
            Some(format!("{} ({:?}): {problem}", c.what, c.input))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} bad inputs misjudged:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// The tables keep one row per line, whatever their width.

#[test]
#[rustfmt::skip]
fn bad_digests_are_refused_with_a_reason() {
    check(&[
        // Malformed.
        case("empty", "", DigestInvalid, "missing ':'"),
        case("algorithm only", "sha256", DigestInvalid, "missing ':'"),
        case("hex only", HEX64, DigestInvalid, "missing ':'"),
        case("only the colon", ":", DigestInvalid, "empty algorithm"),
        case("empty algorithm", format!(":{HEX64}"), DigestInvalid, "empty algorithm"),
        case("empty encoded part", "sha256:", DigestInvalid, "empty encoded part"),
        case("unknown algorithm, empty encoded part", "md5:", DigestInvalid, "empty encoded part"),
        case("uppercase algorithm", format!("SHA256:{HEX64}"), DigestInvalid, "algorithm has 'S'"),
        case("leading algorithm separator", format!("+sha256:{HEX64}"), DigestInvalid, "algorithm has '+'"),
        case("trailing algorithm separator", format!("sha256+:{HEX64}"), DigestInvalid, "algorithm ends with a separator"),
        case("two algorithm separators", format!("sha..256:{HEX64}"), DigestInvalid, "algorithm has '.'"),
        case("second colon", format!("sha256:{}:{}", &HEX64[..32], &HEX64[32..]), DigestInvalid, "encoded part has character ':'"),
        case("slash in the encoded part", format!("sha256:{}/", &HEX64[..63]), DigestInvalid, "encoded part has character '/'"),
        // Whitespace, control characters, unicode.
        case("leading space", format!(" sha256:{HEX64}"), DigestInvalid, "algorithm has ' '"),
        case("trailing space", format!("sha256:{HEX64} "), DigestInvalid, "encoded part has character ' '"),
        case("trailing newline", format!("sha256:{HEX64}\n"), DigestInvalid, r"encoded part has character '\n'"),
        case("NUL in the encoded part", format!("sha256:{}\0", &HEX64[..63]), DigestInvalid, r"encoded part has character '\0'"),
        case("NUL in the algorithm", format!("sha\0256:{HEX64}"), DigestInvalid, r"algorithm has '\0'"),
        case("non-ASCII in the encoded part", format!("sha256:{}é", &HEX64[..63]), DigestInvalid, "encoded part has character 'é'"),
        case("non-ASCII in the algorithm", format!("shä256:{HEX64}"), DigestInvalid, "algorithm has 'ä'"),
        // A supported algorithm with the wrong encoding.
        case("sha256, 63 hex characters", format!("sha256:{}", &HEX64[..63]), DigestInvalid, "sha256 needs 64 hex characters, got 63"),
        case("sha256, 65 hex characters", format!("sha256:{HEX64}0"), DigestInvalid, "sha256 needs 64 hex characters, got 65"),
        case("sha512 with a sha256's length", format!("sha512:{HEX64}"), DigestInvalid, "sha512 needs 128 hex characters, got 64"),
        case("uppercase hex", format!("sha256:{}", HEX64.to_uppercase()), DigestInvalid, "must be lowercase hex"),
        case("one uppercase hex letter", format!("sha256:E{}", &HEX64[1..]), DigestInvalid, "must be lowercase hex"),
        case("not hex", format!("sha256:g{}", &HEX64[1..]), DigestInvalid, "must be lowercase hex"),
        case("base64 padding", format!("sha256:{}=", &HEX64[..63]), DigestInvalid, "must be lowercase hex"),
        // Well formed, but not an algorithm layerstore supports.
        case("md5", "md5:d41d8cd98f00b204e9800998ecf8427e", Unsupported, "digest algorithm \"md5\""),
        case("sha384", format!("sha384:{HEX64}{}", &HEX64[..32]), Unsupported, "digest algorithm \"sha384\""),
        case("blake3", format!("blake3:{HEX64}"), Unsupported, "(supported: sha256, sha512)"),
        case("sha256 with an encoding suffix", "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", Unsupported, "\"sha256+b64u\""),
        case("multihash", "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", Unsupported, "\"multihash+base58\""),
    ], Digest::parse);
}

#[test]
#[rustfmt::skip]
fn bad_repository_names_are_refused_with_a_reason() {
    let name_255 = format!("{}/{}", "a".repeat(127), "b".repeat(127));
    check(&[
        case("empty", "", NameInvalid, "repository name is empty"),
        // Anything that could address a key outside the repository's place.
        case("dot-dot", "..", NameInvalid, r#"component 1 ("..") must start with [a-z0-9]"#),
        case("dot-dot component", "a/../b", NameInvalid, r#"component 2 ("..") must start with [a-z0-9]"#),
        case("dot component", "a/./b", NameInvalid, r#"component 2 (".") must start with [a-z0-9]"#),
        case("absolute", "/a", NameInvalid, r#"component 1 ("") is empty"#),
        case("trailing slash", "a/", NameInvalid, r#"component 2 ("") is empty"#),
        case("empty component", "a//b", NameInvalid, r#"component 2 ("") is empty"#),
        case("reserved component", "_uploads", NameInvalid, r#"component 1 ("_uploads") must start with [a-z0-9]"#),
        case("reserved inner component", "a/_manifests", NameInvalid, r#"component 2 ("_manifests") must start with [a-z0-9]"#),
        case("backslash", r"a\b", NameInvalid, "has a character outside [a-z0-9._-]"),
        // Breaking the component grammar.
        case("leading dot", ".a", NameInvalid, "must start with [a-z0-9]"),
        case("trailing dot", "a.", NameInvalid, "must end with [a-z0-9]"),
        case("leading dash", "-a", NameInvalid, "must start with [a-z0-9]"),
        case("trailing dash", "a/b-", NameInvalid, r#"component 2 ("b-") must end with [a-z0-9]"#),
        case("three underscores", "a___b", NameInvalid, "separator other than '.', '_', '__' or dashes"),
        case("two dots", "a..b", NameInvalid, "separator other than '.', '_', '__' or dashes"),
        case("mixed separators", "a._b", NameInvalid, "separator other than '.', '_', '__' or dashes"),
        case("uppercase first letter", "Library/alpine", NameInvalid, r#"component 1 ("Library") must start with [a-z0-9]"#),
        case("uppercase inside", "library/alPine", NameInvalid, r#"component 2 ("alPine") has a character outside [a-z0-9._-]"#),
        case("tag included", "library/alpine:latest", NameInvalid, "has a character outside [a-z0-9._-]"),
        case("digest included", "library/alpine@sha256", NameInvalid, "has a character outside [a-z0-9._-]"),
        // Whitespace, control characters, unicode.
        case("inner space", "a b", NameInvalid, "has a character outside [a-z0-9._-]"),
        case("leading space", " a", NameInvalid, "must start with [a-z0-9]"),
        case("trailing newline", "a\n", NameInvalid, "must end with [a-z0-9]"),
        case("tab", "a\tb", NameInvalid, "has a character outside [a-z0-9._-]"),
        case("NUL", "a\0b", NameInvalid, "has a character outside [a-z0-9._-]"),
        case("non-ASCII letter", "café/x", NameInvalid, r#"component 1 ("café") must end with [a-z0-9]"#),
        case("zero-width space", "a\u{200b}b", NameInvalid, "has a character outside [a-z0-9._-]"),
        // Length.
        case("256 characters", format!("{name_255}c"), NameInvalid, "repository name is 256 characters, the limit is 255"),
        case("10 000 characters", "a".repeat(10_000), NameInvalid, "the limit is 255"),
    ], RepositoryName::parse);
}

#[test]
#[rustfmt::skip]
fn bad_tags_are_refused_with_a_reason() {
    check(&[
        case("empty", "", NameInvalid, "tag is empty"),
        case("129 characters", "t".repeat(129), NameInvalid, "tag is 129 characters, the limit is 128"),
        case("dot", ".", NameInvalid, "tag must start with [a-zA-Z0-9_]"),
        case("dot-dot", "..", NameInvalid, "tag must start with [a-zA-Z0-9_]"),
        case("leading dot", ".hidden", NameInvalid, "tag must start with [a-zA-Z0-9_]"),
        case("leading dash", "-rc1", NameInvalid, "tag must start with [a-zA-Z0-9_]"),
        case("slash", "v1/latest", NameInvalid, "tag has '/'"),
        case("colon", "v1:latest", NameInvalid, "tag has ':'"),
        case("at sign", "v1@x", NameInvalid, "tag has '@'"),
        case("plus (semver build metadata)", "1.0.0+build.5", NameInvalid, "tag has '+'"),
        case("leading space", " latest", NameInvalid, "tag must start with [a-zA-Z0-9_]"),
        case("trailing space", "latest ", NameInvalid, "tag has ' '"),
        case("trailing newline", "latest\n", NameInvalid, r"tag has '\n'"),
        case("NUL", "latest\0", NameInvalid, r"tag has '\0'"),
        case("non-ASCII start", "été", NameInvalid, "tag must start with [a-zA-Z0-9_]"),
        case("non-ASCII inside", "café", NameInvalid, "tag has 'é'"),
    ], Tag::parse);
}

#[test]
#[rustfmt::skip]
fn bad_references_are_refused_with_a_reason() {
    check(&[
        case("empty", "", NameInvalid, "tag is empty"),
        case("bad tag", "latest!", NameInvalid, "tag has '!'"),
        case("129-character tag", "t".repeat(129), NameInvalid, "the limit is 128"),
        // A ':' makes it a digest, with the digest's errors.
        case("short digest", "sha256:XYZ", DigestInvalid, "sha256 needs 64 hex characters, got 3"),
        case("uppercase digest", format!("sha256:{}", HEX64.to_uppercase()), DigestInvalid, "must be lowercase hex"),
        case("unknown algorithm", "md5:d41d8cd98f00b204e9800998ecf8427e", Unsupported, "digest algorithm \"md5\""),
        case("name:tag", "library/alpine:latest", DigestInvalid, "algorithm has '/'"),
        case("@digest", format!("@sha256:{HEX64}"), DigestInvalid, "algorithm has '@'"),
    ], Reference::parse);
}
