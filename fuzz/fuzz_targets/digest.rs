//! `Digest::parse` against the grammar.
//!
//! For any UTF-8 input:
//! - accepted ⇔ the reference model says valid; refused as `Unsupported` ⇔ the model says
//!   well-formed with an unknown algorithm; every other refusal is `DigestInvalid`;
//! - an accepted digest prints back exactly as the input, and re-parses to the same value;
//! - error messages stay bounded whatever the input length.
#![no_main]

use layerstore::{Digest, ErrorKind};
use layerstore_fuzz::{DigestVerdict, MAX_MESSAGE_LEN, digest as model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let expected = model(s);
    match Digest::parse(s) {
        Ok(d) => {
            assert_eq!(expected, DigestVerdict::Valid, "parser accepted {s:?}");
            let printed = d.to_string();
            assert_eq!(printed, s, "printing does not give the input back");
            assert_eq!(Digest::parse(&printed).unwrap(), d, "re-parse differs");
            assert_eq!(d.hex().len(), d.algorithm().hash_len() * 2);
        }
        Err(e) => {
            let kind = match expected {
                DigestVerdict::Valid => panic!("parser refused valid {s:?}: {e}"),
                DigestVerdict::Unsupported => ErrorKind::Unsupported,
                DigestVerdict::Invalid => ErrorKind::DigestInvalid,
            };
            assert_eq!(e.kind(), kind, "wrong kind for {s:?}: {e}");
            assert!(e.to_string().len() <= MAX_MESSAGE_LEN, "unbounded message");
        }
    }
});
