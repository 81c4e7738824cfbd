//! `RepositoryName::parse`, `Tag::parse` and `Reference::parse` against the grammar.
//!
//! For any UTF-8 input, each parser:
//! - accepts exactly what the reference model (the spec's regular expressions and length
//!   limits) accepts, and refuses everything else as `NameInvalid` (a reference with a `:` is a
//!   digest, so it follows the digest model and its error kinds instead);
//! - on success prints back exactly the input, and re-parsing the printed form gives an equal
//!   value;
//! - never lets through a name that could address a key outside its place: at most 255
//!   characters, no leading `/`, no empty, `.`, `..` or `_`-prefixed component; never a tag
//!   over 128 characters, starting with `.` or `-`, or holding `/` or `:`;
//! - keeps its error messages bounded whatever the input length.
#![no_main]

use layerstore::{Digest, Error, ErrorKind, Reference, RepositoryName, Tag};
use layerstore_fuzz::{DigestVerdict, MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    check_repository_name(s);
    check_tag(s);
    check_reference(s);
});

fn check_repository_name(s: &str) {
    match RepositoryName::parse(s) {
        Ok(name) => {
            assert!(layerstore_fuzz::repository_name(s), "accepted name {s:?}");
            assert_eq!(name.as_str(), s);
            let printed = name.to_string();
            assert_eq!(printed, s, "printing does not give the name back");
            assert_eq!(RepositoryName::parse(&printed).unwrap(), name);
            assert!(s.len() <= 255, "name over 255 characters: {s:?}");
            assert!(!s.starts_with('/'), "absolute name: {s:?}");
            assert!(
                name.components().eq(s.split('/')),
                "components are not the /-separated parts of {s:?}"
            );
            for c in name.components() {
                assert!(
                    !(c.is_empty() || c == "." || c == ".." || c.starts_with('_')),
                    "name {s:?} has a component {c:?} that could escape its place"
                );
            }
        }
        Err(e) => {
            assert!(
                !layerstore_fuzz::repository_name(s),
                "refused name {s:?}: {e}"
            );
            assert_refusal(&e, ErrorKind::NameInvalid, s);
        }
    }
}

fn check_tag(s: &str) {
    match Tag::parse(s) {
        Ok(tag) => {
            assert!(layerstore_fuzz::tag(s), "accepted tag {s:?}");
            assert_eq!(tag.as_str(), s);
            let printed = tag.to_string();
            assert_eq!(printed, s, "printing does not give the tag back");
            assert_eq!(Tag::parse(&printed).unwrap(), tag);
            assert!(s.len() <= 128, "tag over 128 characters: {s:?}");
            assert!(
                !(s.starts_with('.') || s.starts_with('-') || s.contains(['/', ':'])),
                "tag {s:?} could be mistaken for a path or a digest"
            );
        }
        Err(e) => {
            assert!(!layerstore_fuzz::tag(s), "refused tag {s:?}: {e}");
            assert_refusal(&e, ErrorKind::NameInvalid, s);
        }
    }
}

fn check_reference(s: &str) {
    let is_digest = s.contains(':');
    match Reference::parse(s) {
        Ok(reference) => {
            match &reference {
                Reference::Digest(d) => {
                    assert!(is_digest, "{s:?} has no ':' but was read as a digest");
                    assert_eq!(layerstore_fuzz::digest(s), DigestVerdict::Valid);
                    assert_eq!(Digest::parse(s).unwrap(), *d);
                }
                Reference::Tag(t) => {
                    assert!(!is_digest, "{s:?} has a ':' but was read as a tag");
                    assert!(layerstore_fuzz::tag(s), "accepted tag reference {s:?}");
                    assert_eq!(Tag::parse(s).unwrap(), *t);
                }
            }
            let printed = reference.to_string();
            assert_eq!(printed, s, "printing does not give the reference back");
            assert_eq!(Reference::parse(&printed).unwrap(), reference);
        }
        Err(e) => {
            let kind = if is_digest {
                match layerstore_fuzz::digest(s) {
                    DigestVerdict::Valid => panic!("refused digest reference {s:?}: {e}"),
                    DigestVerdict::Unsupported => ErrorKind::Unsupported,
                    DigestVerdict::Invalid => ErrorKind::DigestInvalid,
                }
            } else {
                assert!(!layerstore_fuzz::tag(s), "refused tag reference {s:?}: {e}");
                ErrorKind::NameInvalid
            };
            assert_refusal(&e, kind, s);
        }
    }
}

fn assert_refusal(e: &Error, kind: ErrorKind, s: &str) {
    assert_eq!(e.kind(), kind, "wrong kind for {s:?}: {e}");
    assert!(e.to_string().len() <= MAX_MESSAGE_LEN, "unbounded message");
}
