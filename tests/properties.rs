//! Properties of the digest, name, tag and reference parsers.
//!
//! Round trips: whatever the grammar allows parses, and prints back exactly as it was written.
//! Near misses: a valid input with exactly one thing broken is refused, with the kind of error
//! that the OCI Distribution spec asks for.

use layerstore::{Algorithm, Digest, ErrorKind, Reference, RepositoryName, Tag};
use proptest::prelude::*;
use proptest::sample::Index;

/// One name component: `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`, kept short so that five of them
/// stay under the 255-character limit.
const COMPONENT: &str = "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}";

/// Repository names from the grammar: at most 5 components of at most 41 characters (209 in all).
fn name() -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{COMPONENT}(/{COMPONENT}){{0,4}}")).unwrap()
}

/// Tags from the grammar, any length up to the limit.
fn tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
}

/// SHA-256 digests in their canonical string form.
fn sha256_string() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}".prop_map(|hex| format!("sha256:{hex}"))
}

/// Characters that appear nowhere in a repository name: not `[a-z0-9._/-]`.
fn char_off_name_grammar() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            'A', 'Z', ' ', '\t', '\n', '\0', ':', '@', '\\', '+', '~', 'é', '\u{200b}',
        ]),
        any::<char>().prop_filter("in the name grammar", |c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/'))
        }),
    ]
}

/// Characters that appear nowhere in a tag: not `[a-zA-Z0-9._-]`.
fn char_off_tag_grammar() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            '/', ':', '@', ' ', '\t', '\n', '\0', '+', '~', '!', 'é', '\u{200b}',
        ]),
        any::<char>().prop_filter("in the tag grammar", |c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        }),
    ]
}

/// Characters outside the encoded-part grammar of a digest: not `[a-zA-Z0-9=_-]`.
fn char_off_encoded_grammar() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            ' ', '\n', '\0', '/', '+', '.', ':', '@', 'é', '\u{200b}'
        ]),
        any::<char>().prop_filter("in the encoded grammar", |c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '=' | '_' | '-'))
        }),
    ]
}

/// `s` with its `i`-th character replaced by `c`.
fn replace_char(s: &str, i: usize, c: char) -> String {
    s.chars()
        .enumerate()
        .map(|(j, x)| if j == i { c } else { x })
        .collect()
}

fn name_error(s: &str) -> ErrorKind {
    match RepositoryName::parse(s) {
        Ok(n) => panic!("{s:?} was accepted as {n:?}"),
        Err(e) => e.kind(),
    }
}

fn tag_error(s: &str) -> ErrorKind {
    match Tag::parse(s) {
        Ok(t) => panic!("{s:?} was accepted as {t:?}"),
        Err(e) => e.kind(),
    }
}

fn digest_error(s: &str) -> ErrorKind {
    match Digest::parse(s) {
        Ok(d) => panic!("{s:?} was accepted as {d:?}"),
        Err(e) => e.kind(),
    }
}

proptest! {
    // Round trips.

    #[test]
    fn sha256_of_any_bytes_prints_and_parses_back(data in prop::collection::vec(any::<u8>(), 0..1024)) {
        let d = Digest::sha256(&data);
        let printed = d.to_string();
        prop_assert_eq!(printed.len(), "sha256:".len() + 64);
        prop_assert_eq!(Digest::parse(&printed).unwrap(), d);
    }

    #[test]
    fn sha512_of_any_bytes_prints_and_parses_back(data in prop::collection::vec(any::<u8>(), 0..1024)) {
        let d = Digest::compute(Algorithm::Sha512, &data);
        let printed = d.to_string();
        prop_assert_eq!(printed.len(), "sha512:".len() + 128);
        prop_assert_eq!(Digest::parse(&printed).unwrap(), d);
    }

    #[test]
    fn any_canonical_sha256_string_parses_and_prints_back_unchanged(s in sha256_string()) {
        prop_assert_eq!(Digest::parse(&s).unwrap().to_string(), s);
    }

    #[test]
    fn names_from_the_grammar_parse_and_print_back_unchanged(s in name()) {
        let parsed = RepositoryName::parse(&s).unwrap();
        prop_assert_eq!(parsed.to_string(), s.clone());
        prop_assert_eq!(RepositoryName::parse(parsed.as_str()).unwrap(), parsed);
    }

    #[test]
    fn names_of_exactly_255_characters_are_accepted(s in name(), fill in "[a-z0-9]{255}") {
        let padded = format!("{s}/{}", &fill[s.len() + 1..]);
        prop_assert_eq!(padded.len(), 255);
        prop_assert_eq!(RepositoryName::parse(&padded).unwrap().to_string(), padded);
    }

    #[test]
    fn tags_from_the_grammar_parse_and_print_back_unchanged(s in tag()) {
        let parsed = Tag::parse(&s).unwrap();
        prop_assert_eq!(parsed.to_string(), s.clone());
        prop_assert_eq!(Tag::parse(parsed.as_str()).unwrap(), parsed);
    }

    #[test]
    fn a_reference_without_a_colon_is_the_tag(s in tag()) {
        let reference = Reference::parse(&s).unwrap();
        prop_assert_eq!(reference.to_string(), s.clone());
        prop_assert_eq!(reference, Reference::Tag(Tag::parse(&s).unwrap()));
    }

    #[test]
    fn a_reference_with_a_colon_is_the_digest(s in sha256_string()) {
        let reference = Reference::parse(&s).unwrap();
        prop_assert_eq!(reference.to_string(), s.clone());
        prop_assert_eq!(reference, Reference::Digest(Digest::parse(&s).unwrap()));
    }

    // Near misses: digests.

    #[test]
    fn one_uppercase_hex_letter_makes_a_digest_invalid(s in sha256_string(), pick in any::<Index>()) {
        let letters: Vec<usize> = s.char_indices()
            .filter(|&(i, c)| i >= "sha256:".len() && c.is_ascii_lowercase())
            .map(|(i, _)| i)
            .collect();
        prop_assume!(!letters.is_empty());
        let i = letters[pick.index(letters.len())];
        let upper = replace_char(&s, i, s[i..].chars().next().unwrap().to_ascii_uppercase());
        prop_assert_eq!(digest_error(&upper), ErrorKind::DigestInvalid);
    }

    #[test]
    fn one_non_hex_letter_of_the_encoded_grammar_makes_a_sha256_invalid(
        s in sha256_string(),
        pick in any::<Index>(),
        c in prop::sample::select("ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ=_-".chars().collect::<Vec<_>>()),
    ) {
        let i = "sha256:".len() + pick.index(64);
        prop_assert_eq!(digest_error(&replace_char(&s, i, c)), ErrorKind::DigestInvalid);
    }

    #[test]
    fn one_character_off_the_encoded_grammar_makes_a_digest_invalid(
        s in sha256_string(),
        pick in any::<Index>(),
        c in char_off_encoded_grammar(),
    ) {
        let i = "sha256:".len() + pick.index(64);
        prop_assert_eq!(digest_error(&replace_char(&s, i, c)), ErrorKind::DigestInvalid);
    }

    #[test]
    fn a_sha256_with_63_hex_characters_is_invalid(s in sha256_string(), pick in any::<Index>()) {
        let mut short = s;
        short.remove("sha256:".len() + pick.index(64));
        prop_assert_eq!(digest_error(&short), ErrorKind::DigestInvalid);
    }

    #[test]
    fn a_sha256_with_65_hex_characters_is_invalid(
        s in sha256_string(),
        pick in any::<Index>(),
        extra in "[0-9a-f]",
    ) {
        let mut long = s;
        long.insert_str("sha256:".len() + pick.index(65), &extra);
        prop_assert_eq!(digest_error(&long), ErrorKind::DigestInvalid);
    }

    #[test]
    fn a_well_formed_digest_with_an_unknown_algorithm_is_unsupported(
        algorithm in "[a-z0-9]{1,8}([+._-][a-z0-9]{1,8}){0,2}",
        encoded in "[a-zA-Z0-9=_-]{1,130}",
    ) {
        prop_assume!(algorithm != "sha256" && algorithm != "sha512");
        prop_assert_eq!(digest_error(&format!("{algorithm}:{encoded}")), ErrorKind::Unsupported);
    }

    #[test]
    fn an_algorithm_separator_at_either_end_makes_a_digest_invalid(
        s in sha256_string(),
        sep in prop::sample::select(vec!['+', '.', '_', '-']),
        at_start in any::<bool>(),
    ) {
        let broken = if at_start { format!("{sep}{s}") } else { s.replacen(':', &format!("{sep}:"), 1) };
        prop_assert_eq!(digest_error(&broken), ErrorKind::DigestInvalid);
    }

    // Near misses: names.

    #[test]
    fn one_character_off_the_grammar_makes_a_name_invalid(
        s in name(),
        pick in any::<Index>(),
        c in char_off_name_grammar(),
    ) {
        let i = pick.index(s.len());
        prop_assert_eq!(name_error(&replace_char(&s, i, c)), ErrorKind::NameInvalid);
    }

    #[test]
    fn a_separator_at_either_edge_of_a_component_makes_a_name_invalid(
        s in name(),
        pick in any::<Index>(),
        sep in prop::sample::select(vec![".", "_", "__", "-", "--"]),
        at_start in any::<bool>(),
    ) {
        let mut components: Vec<String> = s.split('/').map(str::to_owned).collect();
        let n = components.len();
        let c = &mut components[pick.index(n)];
        if at_start { c.insert_str(0, sep) } else { c.push_str(sep) }
        prop_assert_eq!(name_error(&components.join("/")), ErrorKind::NameInvalid);
    }

    #[test]
    fn a_slash_at_either_end_makes_a_name_invalid(s in name(), at_start in any::<bool>()) {
        let broken = if at_start { format!("/{s}") } else { format!("{s}/") };
        prop_assert_eq!(name_error(&broken), ErrorKind::NameInvalid);
    }

    #[test]
    fn an_empty_component_makes_a_name_invalid(
        s in name(),
        last in COMPONENT,
        pick in any::<Index>(),
    ) {
        let mut components: Vec<&str> = s.split('/').collect();
        components.push(&last);
        let at = 1 + pick.index(components.len() - 1); // between two components
        components.insert(at, "");
        prop_assert_eq!(name_error(&components.join("/")), ErrorKind::NameInvalid);
    }

    #[test]
    fn names_over_255_characters_are_invalid(
        s in name(),
        len in prop_oneof![Just(256usize), 257usize..1024],
        fill in "[a-z0-9]{1024}",
    ) {
        // Still within the grammar: only the length is wrong.
        let long = format!("{s}/{}", &fill[s.len() + 1..len]);
        prop_assert_eq!(long.len(), len);
        prop_assert_eq!(name_error(&long), ErrorKind::NameInvalid);
    }

    // Near misses: tags.

    #[test]
    fn one_character_off_the_grammar_makes_a_tag_invalid(
        s in tag(),
        pick in any::<Index>(),
        c in char_off_tag_grammar(),
    ) {
        let i = pick.index(s.len());
        prop_assert_eq!(tag_error(&replace_char(&s, i, c)), ErrorKind::NameInvalid);
    }

    #[test]
    fn a_leading_dot_or_dash_makes_a_tag_invalid(
        s in "[a-zA-Z0-9._-]{0,127}",
        lead in prop::sample::select(vec!['.', '-']),
    ) {
        prop_assert_eq!(tag_error(&format!("{lead}{s}")), ErrorKind::NameInvalid);
    }

    #[test]
    fn tags_over_128_characters_are_invalid(
        s in tag(),
        len in prop_oneof![Just(129usize), 130usize..1024],
        fill in "[a-zA-Z0-9._-]{1024}",
    ) {
        // Still within the grammar: only the length is wrong.
        let long = format!("{s}{}", &fill[s.len()..len]);
        prop_assert_eq!(long.len(), len);
        prop_assert_eq!(tag_error(&long), ErrorKind::NameInvalid);
    }
}
