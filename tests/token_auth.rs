//! Token auth, at the level of the verifier: what `TokenVerifier::verify` lets through and
//! refuses, the challenges it writes, the settings it refuses to start with; and the test token
//! server (`tests/common/token_issuer.rs`) that the end-to-end tests will log in against.
//!
//! The verifier lives in the server binary, so its module is compiled in here as it is there.
//! Every key and certificate is made by the test.

mod common;

#[path = "../src/server/auth"]
#[allow(dead_code)]
mod auth {
    pub mod scope;
    pub mod token;
}

use std::path::PathBuf;
use std::time::Duration;

use auth::scope::{ALL, DELETE, PULL, PUSH, Scope};
use auth::token::{AuthError, Granted, Rejection, RequestOrigin, Settings, TokenVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::token_issuer::{
    IssuerConfig, KeyKind, KeyReference, Signer, TestCa, TokenIssuer, User, access_entry, claims,
    now, sign_hs256,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const ISSUER: &str = "test-issuer";
const SERVICE: &str = "registry.test";
const REALM: &str = "https://auth.test/token";

/// A verifier trusting `bundle` (PEM) and/or `jwks`, its files in a temporary directory.
struct Verifier {
    _dir: TempDir,
    verifier: TokenVerifier,
}

impl Verifier {
    fn new(bundle: Option<&str>, jwks: Option<&Value>) -> Self {
        let (dir, settings) = settings_with(bundle, jwks);
        Verifier {
            _dir: dir,
            verifier: TokenVerifier::new(settings).expect("verifier"),
        }
    }

    fn trusting(signer: &Signer) -> Self {
        Self::new(Some(signer.cert_pem()), None)
    }

    fn verify(&self, token: &str, required: &[Scope]) -> Result<Granted, AuthError> {
        self.verifier
            .verify(Some(format!("Bearer {token}").as_bytes()), required)
    }
}

fn settings_with(bundle: Option<&str>, jwks: Option<&Value>) -> (TempDir, Settings) {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, contents: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    let settings = Settings {
        realm: REALM.to_owned(),
        service: SERVICE.to_owned(),
        issuer: ISSUER.to_owned(),
        root_cert_bundle: bundle.map(|pem| write("bundle.pem", pem)),
        jwks: jwks.map(|set| write("jwks.json", &set.to_string())),
        ..Settings::default()
    };
    (dir, settings)
}

/// Claims for `access`, valid now for five minutes, from ISSUER for SERVICE.
fn valid_claims(access: Value) -> Value {
    claims(ISSUER, SERVICE, "alice", access, Duration::from_secs(300))
}

fn pull_on(name: &str) -> Value {
    json!([access_entry("repository", name, &[PULL])])
}

fn rejection(result: Result<Granted, AuthError>) -> Rejection {
    match result {
        Err(AuthError::Invalid(rejection)) => rejection,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

fn with_claim(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without_claim(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

// --- tokens that pass -------------------------------------------------------------------------

#[test]
fn an_rs256_token_naming_a_bundle_key_by_libtrust_kid_grants_its_access() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let token = signer.sign(&signer.kid_header(), &valid_claims(pull_on("team/app")));
    let granted = Verifier::trusting(&signer)
        .verify(&token, &[Scope::repository("team/app", &[PULL])])
        .unwrap();
    assert_eq!(granted.subject, "alice");
    assert_eq!(granted.access, vec![Scope::repository("team/app", &[PULL])]);
}

#[test]
fn an_es256_token_naming_a_bundle_key_by_libtrust_kid_grants_its_access() {
    let signer = Signer::self_signed(KeyKind::P256);
    let token = signer.sign(&signer.kid_header(), &valid_claims(pull_on("team/app")));
    Verifier::trusting(&signer)
        .verify(&token, &[Scope::repository("team/app", &[PULL])])
        .unwrap();
}

#[test]
fn an_es384_token_from_a_p384_bundle_key_grants_its_access() {
    let signer = Signer::self_signed(KeyKind::P384);
    let token = signer.sign(&signer.kid_header(), &valid_claims(pull_on("app")));
    Verifier::trusting(&signer)
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn a_ps256_token_from_an_rsa_bundle_key_grants_its_access() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let header = json!({"alg": "PS256", "kid": signer.libtrust_kid()});
    let token = signer.sign(&header, &valid_claims(pull_on("app")));
    Verifier::trusting(&signer)
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn a_p384_jwks_key_is_found_by_its_kid() {
    let signer = Signer::self_signed(KeyKind::P384);
    let jwks = json!({"keys": [signer.public_jwk("p384")]});
    let token = signer.sign(
        &json!({"alg": "ES384", "kid": "p384"}),
        &valid_claims(pull_on("app")),
    );
    Verifier::new(None, Some(&jwks))
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn a_jwks_key_pinned_to_an_algorithm_refuses_another() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let mut jwk = signer.public_jwk("rsa-pinned");
    jwk["alg"] = json!("RS256");
    let jwks = json!({"keys": [jwk]});
    let token = signer.sign(
        &json!({"alg": "PS256", "kid": "rsa-pinned"}),
        &valid_claims(pull_on("app")),
    );
    let result =
        Verifier::new(None, Some(&jwks)).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert!(matches!(rejection(result), Rejection::Algorithm(_)));
}

#[test]
fn a_kid_equal_to_the_jwk_thumbprint_of_a_bundle_key_is_accepted() {
    // Distribution 3 names bundle keys by their RFC 7638 thumbprint instead.
    let signer = Signer::self_signed(KeyKind::P256);
    let jwk = signer.public_jwk("unused");
    let members = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(members.as_bytes()));
    let header = json!({"alg": "ES256", "kid": thumbprint});
    let token = signer.sign(&header, &valid_claims(pull_on("app")));
    Verifier::trusting(&signer)
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn every_certificate_of_a_bundle_is_trusted() {
    let first = Signer::self_signed(KeyKind::Rsa);
    let second = Signer::self_signed(KeyKind::P256);
    let bundle = format!("{}{}", first.cert_pem(), second.cert_pem());
    let verifier = Verifier::new(Some(&bundle), None);
    for signer in [&first, &second] {
        let token = signer.sign(&signer.kid_header(), &valid_claims(pull_on("app")));
        verifier
            .verify(&token, &[Scope::repository("app", &[PULL])])
            .unwrap();
    }
}

#[test]
fn a_jwks_key_is_found_by_its_kid() {
    let signer = Signer::self_signed(KeyKind::P256);
    let jwks = json!({"keys": [
        Signer::self_signed(KeyKind::Rsa).public_jwk("other"),
        signer.public_jwk("signing-key-1"),
    ]});
    let header = json!({"alg": "ES256", "kid": "signing-key-1"});
    let token = signer.sign(&header, &valid_claims(pull_on("app")));
    Verifier::new(None, Some(&jwks))
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn an_rsa_jwks_key_is_found_by_its_kid() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let jwks = json!({"keys": [signer.public_jwk("rsa-1")]});
    let header = json!({"alg": "RS256", "kid": "rsa-1"});
    let token = signer.sign(&header, &valid_claims(pull_on("app")));
    Verifier::new(None, Some(&jwks))
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn an_x5c_chain_issued_by_a_bundle_ca_is_accepted() {
    let ca = TestCa::new(KeyKind::Rsa, "bundle CA");
    let signer = Signer::issued_by(&ca, KeyKind::P256);
    let token = signer.sign(&signer.x5c_header(&[]), &valid_claims(pull_on("app")));
    Verifier::new(Some(ca.pem()), None)
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn an_x5c_chain_through_an_intermediate_to_a_bundle_ca_is_accepted() {
    let root = TestCa::new(KeyKind::P256, "root CA");
    let intermediate = root.intermediate(KeyKind::P256, "intermediate CA");
    let signer = Signer::issued_by(&intermediate, KeyKind::Rsa);
    let token = signer.sign(
        &signer.x5c_header(&[&intermediate]),
        &valid_claims(pull_on("app")),
    );
    Verifier::new(Some(root.pem()), None)
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn an_x5c_holding_a_bundle_ca_certificate_itself_is_accepted() {
    // Go's verifier (Distribution) accepts a leaf that is itself a root; webpki alone would
    // refuse a CA certificate as the end entity.
    let signer = Signer::self_signed_ca(KeyKind::Rsa);
    let token = signer.sign(&signer.x5c_header(&[]), &valid_claims(pull_on("app")));
    Verifier::trusting(&signer)
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn a_token_expired_less_than_the_leeway_ago_passes() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let claims = with_claim(valid_claims(pull_on("app")), "exp", json!(now() - 30));
    let claims = with_claim(claims, "nbf", json!(now() - 300));
    let token = signer.sign(&signer.kid_header(), &claims);
    Verifier::trusting(&signer)
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn a_token_valid_less_than_the_leeway_from_now_passes() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let claims = with_claim(valid_claims(pull_on("app")), "nbf", json!(now() + 30));
    let token = signer.sign(&signer.kid_header(), &claims);
    Verifier::trusting(&signer)
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn an_audience_array_holding_the_service_is_accepted() {
    // RFC 7519 allows an array; Distribution 3 accepts one that holds the service.
    let signer = Signer::self_signed(KeyKind::Rsa);
    let claims = with_claim(
        valid_claims(pull_on("app")),
        "aud",
        json!(["another", SERVICE]),
    );
    let token = signer.sign(&signer.kid_header(), &claims);
    Verifier::trusting(&signer)
        .verify(&token, &[Scope::repository("app", &[PULL])])
        .unwrap();
}

#[test]
fn any_valid_token_passes_where_nothing_is_required() {
    // The `/v2/` base: authenticated, no resource.
    let signer = Signer::self_signed(KeyKind::Rsa);
    let token = signer.sign(&signer.kid_header(), &valid_claims(json!([])));
    Verifier::trusting(&signer).verify(&token, &[]).unwrap();
}

// --- scopes -------------------------------------------------------------------------------------

#[test]
fn a_token_for_one_repository_does_not_open_another() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let token = signer.sign(&signer.kid_header(), &valid_claims(pull_on("team/a")));
    let result =
        Verifier::trusting(&signer).verify(&token, &[Scope::repository("team/b", &[PULL])]);
    assert_eq!(
        result,
        Err(AuthError::InsufficientScope {
            missing: vec![Scope::repository("team/b", &[PULL])]
        })
    );
}

#[test]
fn a_pull_only_token_cannot_push() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let token = signer.sign(&signer.kid_header(), &valid_claims(pull_on("app")));
    let result =
        Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL, PUSH])]);
    assert_eq!(
        result,
        Err(AuthError::InsufficientScope {
            missing: vec![Scope::repository("app", &[PUSH])]
        })
    );
}

#[test]
fn delete_needs_the_delete_action() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let access = json!([access_entry("repository", "app", &[PULL, PUSH])]);
    let token = signer.sign(&signer.kid_header(), &valid_claims(access));
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[DELETE])]);
    assert_eq!(
        result,
        Err(AuthError::InsufficientScope {
            missing: vec![Scope::repository("app", &[DELETE])]
        })
    );
}

#[test]
fn a_star_action_grants_every_action_on_its_repository() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let access = json!([access_entry("repository", "app", &[ALL])]);
    let token = signer.sign(&signer.kid_header(), &valid_claims(access));
    Verifier::trusting(&signer)
        .verify(&token, &[Scope::repository("app", &[PULL, PUSH, DELETE])])
        .unwrap();
}

#[test]
fn the_catalog_is_closed_to_a_token_without_registry_catalog_star() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let access = json!([access_entry("repository", "app", &[ALL])]);
    let token = signer.sign(&signer.kid_header(), &valid_claims(access));
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::catalog()]);
    assert_eq!(
        result,
        Err(AuthError::InsufficientScope {
            missing: vec![Scope::catalog()]
        })
    );
}

#[test]
fn the_catalog_is_open_to_a_token_with_registry_catalog_star() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let access = json!([access_entry("registry", "catalog", &[ALL])]);
    let token = signer.sign(&signer.kid_header(), &valid_claims(access));
    Verifier::trusting(&signer)
        .verify(&token, &[Scope::catalog()])
        .unwrap();
}

#[test]
fn a_null_access_claim_grants_nothing() {
    // Go token servers marshal an empty list as null.
    let signer = Signer::self_signed(KeyKind::Rsa);
    let token = signer.sign(&signer.kid_header(), &valid_claims(Value::Null));
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert_eq!(
        result,
        Err(AuthError::InsufficientScope {
            missing: vec![Scope::repository("app", &[PULL])]
        })
    );
}

#[test]
fn null_actions_grant_nothing_on_their_resource() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let access = json!([
        {"type": "repository", "name": "app", "actions": null},
        access_entry("repository", "other", &[PULL]),
    ]);
    let token = signer.sign(&signer.kid_header(), &valid_claims(access));
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("other", &[PULL])]);
    assert_eq!(
        result.unwrap().access,
        vec![
            Scope::repository("app", &[]),
            Scope::repository("other", &[PULL])
        ]
    );
}

#[test]
fn the_insufficient_scope_error_names_the_missing_scope() {
    let error = AuthError::InsufficientScope {
        missing: vec![Scope::repository("app", &[PUSH])],
    };
    assert!(error.to_string().contains("repository:app:push"), "{error}");
}

// --- tokens that are refused ------------------------------------------------------------------

#[test]
fn an_expired_token_is_rejected() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let claims = with_claim(valid_claims(pull_on("app")), "exp", json!(now() - 120));
    let claims = with_claim(claims, "nbf", json!(now() - 600));
    let token = signer.sign(&signer.kid_header(), &claims);
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert_eq!(rejection(result), Rejection::Expired);
}

#[test]
fn a_token_not_valid_until_beyond_the_leeway_is_rejected() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let claims = with_claim(valid_claims(pull_on("app")), "nbf", json!(now() + 120));
    let token = signer.sign(&signer.kid_header(), &claims);
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert_eq!(rejection(result), Rejection::NotYetValid);
}

#[test]
fn a_token_without_exp_is_rejected() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let claims = without_claim(valid_claims(pull_on("app")), "exp");
    let token = signer.sign(&signer.kid_header(), &claims);
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert_eq!(rejection(result), Rejection::MissingClaim("exp".into()));
}

#[test]
fn a_token_from_another_issuer_is_rejected() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let claims = with_claim(valid_claims(pull_on("app")), "iss", json!("someone-else"));
    let token = signer.sign(&signer.kid_header(), &claims);
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert_eq!(rejection(result), Rejection::Issuer);
}

#[test]
fn an_issuer_array_is_rejected_even_holding_the_issuer() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let claims = with_claim(valid_claims(pull_on("app")), "iss", json!([ISSUER]));
    let token = signer.sign(&signer.kid_header(), &claims);
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert_eq!(rejection(result), Rejection::BadClaim("iss".into()));
}

#[test]
fn a_token_for_another_service_is_rejected() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let claims = with_claim(valid_claims(pull_on("app")), "aud", json!("other.registry"));
    let token = signer.sign(&signer.kid_header(), &claims);
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert_eq!(rejection(result), Rejection::Audience);
}

#[test]
fn a_token_without_an_audience_is_rejected() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let claims = without_claim(valid_claims(pull_on("app")), "aud");
    let token = signer.sign(&signer.kid_header(), &claims);
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert_eq!(rejection(result), Rejection::MissingClaim("aud".into()));
}

#[test]
fn a_tampered_payload_is_rejected() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let token = signer.sign(&signer.kid_header(), &valid_claims(pull_on("app")));
    let parts: Vec<&str> = token.split('.').collect();
    let widened = valid_claims(json!([access_entry("repository", "app", &[PULL, PUSH])]));
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(widened.to_string()),
        parts[2]
    );
    let result = Verifier::trusting(&signer).verify(&forged, &[Scope::repository("app", &[PUSH])]);
    assert_eq!(rejection(result), Rejection::Signature);
}

#[test]
fn a_tampered_signature_is_rejected() {
    let signer = Signer::self_signed(KeyKind::P256);
    let token = signer.sign(&signer.kid_header(), &valid_claims(pull_on("app")));
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    bytes[10] ^= 0x01;
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(bytes));
    let result = Verifier::trusting(&signer).verify(&forged, &[Scope::repository("app", &[PULL])]);
    assert_eq!(rejection(result), Rejection::Signature);
}

#[test]
fn an_unsigned_token_with_alg_none_is_rejected() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let header = json!({"alg": "none", "kid": signer.libtrust_kid()});
    let token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(valid_claims(pull_on("app")).to_string())
    );
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert!(matches!(rejection(result), Rejection::Algorithm(_)));
}

#[test]
fn an_hs256_token_keyed_with_the_public_key_is_rejected() {
    // The key-confusion attack: the public key, in any form a verifier might hold it, used as
    // an HMAC secret.
    let signer = Signer::self_signed(KeyKind::Rsa);
    let verifier = Verifier::trusting(&signer);
    let header = json!({"alg": "HS256", "kid": signer.libtrust_kid()});
    for secret in [
        signer.cert_pem().as_bytes().to_vec(),
        signer.spki_der(),
        URL_SAFE_NO_PAD.encode(signer.spki_der()).into_bytes(),
    ] {
        let token = sign_hs256(&header, &valid_claims(pull_on("app")), &secret);
        let result = verifier.verify(&token, &[Scope::repository("app", &[PULL])]);
        assert!(matches!(rejection(result), Rejection::Algorithm(_)));
    }
}

#[test]
fn a_token_whose_alg_does_not_fit_its_key_is_rejected() {
    let signer = Signer::self_signed(KeyKind::P256);
    let header = json!({"alg": "RS256", "kid": signer.libtrust_kid()});
    let token = signer.sign(&header, &valid_claims(pull_on("app")));
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert!(matches!(rejection(result), Rejection::Algorithm(_)));
}

#[test]
fn a_token_signed_by_an_untrusted_key_under_a_trusted_kid_is_rejected() {
    let trusted = Signer::self_signed(KeyKind::Rsa);
    let impostor = Signer::self_signed(KeyKind::Rsa);
    let token = impostor.sign(&trusted.kid_header(), &valid_claims(pull_on("app")));
    let result = Verifier::trusting(&trusted).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert_eq!(rejection(result), Rejection::Signature);
}

#[test]
fn an_unknown_kid_is_rejected() {
    let trusted = Signer::self_signed(KeyKind::Rsa);
    let other = Signer::self_signed(KeyKind::Rsa);
    let token = other.sign(&other.kid_header(), &valid_claims(pull_on("app")));
    let result = Verifier::trusting(&trusted).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert_eq!(
        rejection(result),
        Rejection::UnknownKey(other.libtrust_kid())
    );
}

#[test]
fn a_token_naming_no_key_is_rejected() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let token = signer.sign(&json!({"alg": "RS256"}), &valid_claims(pull_on("app")));
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert_eq!(rejection(result), Rejection::NoKey);
}

#[test]
fn an_x5c_chain_from_another_ca_is_rejected() {
    let bundle_ca = TestCa::new(KeyKind::Rsa, "bundle CA");
    let other_ca = TestCa::new(KeyKind::Rsa, "bundle CA"); // same name, another key
    let signer = Signer::issued_by(&other_ca, KeyKind::Rsa);
    let token = signer.sign(
        &signer.x5c_header(&[&other_ca]),
        &valid_claims(pull_on("app")),
    );
    let result = Verifier::new(Some(bundle_ca.pem()), None)
        .verify(&token, &[Scope::repository("app", &[PULL])]);
    assert!(matches!(rejection(result), Rejection::Chain(_)));
}

#[test]
fn an_x5c_leaf_certificate_that_has_expired_is_rejected() {
    let ca = TestCa::new(KeyKind::Rsa, "bundle CA");
    let signer = Signer::issued_by_expired(&ca, KeyKind::Rsa);
    let token = signer.sign(&signer.x5c_header(&[]), &valid_claims(pull_on("app")));
    let result =
        Verifier::new(Some(ca.pem()), None).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert!(matches!(rejection(result), Rejection::Chain(_)));
}

#[test]
fn an_x5c_chain_does_not_fall_back_to_a_trusted_kid() {
    // The chain decides: a bad chain is not rescued by a kid the verifier knows.
    let bundle_signer = Signer::self_signed(KeyKind::Rsa);
    let other_ca = TestCa::new(KeyKind::Rsa, "other CA");
    let signer = Signer::issued_by(&other_ca, KeyKind::Rsa);
    let mut header = signer.x5c_header(&[]);
    header["kid"] = json!(bundle_signer.libtrust_kid());
    let token = bundle_signer.sign(&header, &valid_claims(pull_on("app")));
    let result =
        Verifier::trusting(&bundle_signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert!(matches!(rejection(result), Rejection::Chain(_)));
}

// --- malformed input ----------------------------------------------------------------------------

#[test]
fn no_authorization_header_asks_for_a_token() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let verifier = Verifier::trusting(&signer);
    assert_eq!(
        verifier
            .verifier
            .verify(None, &[Scope::repository("app", &[PULL])]),
        Err(AuthError::Missing)
    );
}

#[test]
fn a_huge_authorization_header_is_malformed() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let huge = format!("Bearer {}", "a".repeat(1 << 20));
    let result = Verifier::trusting(&signer)
        .verifier
        .verify(Some(huge.as_bytes()), &[Scope::repository("app", &[PULL])]);
    assert!(matches!(result, Err(AuthError::Malformed(_))), "{result:?}");
}

#[test]
fn a_token_with_bad_base64_is_malformed() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let verifier = Verifier::trusting(&signer);
    let token = signer.sign(&signer.kid_header(), &valid_claims(pull_on("app")));
    let parts: Vec<&str> = token.split('.').collect();
    for bad in [
        format!("!!!{}.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}$%.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}*", parts[0], parts[1], parts[2]),
    ] {
        let result = verifier.verify(&bad, &[Scope::repository("app", &[PULL])]);
        assert!(
            matches!(result, Err(AuthError::Malformed(_))),
            "{bad}: {result:?}"
        );
    }
}

#[test]
fn a_token_that_is_not_three_parts_is_malformed() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let verifier = Verifier::trusting(&signer);
    for bad in ["abc", "a.b", "a.b.c.d", "...."] {
        let result = verifier.verify(bad, &[Scope::repository("app", &[PULL])]);
        assert!(
            matches!(result, Err(AuthError::Malformed(_))),
            "{bad}: {result:?}"
        );
    }
}

#[test]
fn an_access_claim_of_the_wrong_shape_is_malformed() {
    let signer = Signer::self_signed(KeyKind::Rsa);
    let claims = with_claim(
        valid_claims(json!([])),
        "access",
        json!("repository:app:pull"),
    );
    let token = signer.sign(&signer.kid_header(), &claims);
    let result = Verifier::trusting(&signer).verify(&token, &[Scope::repository("app", &[PULL])]);
    assert!(matches!(result, Err(AuthError::Malformed(_))), "{result:?}");
}

// --- challenges ---------------------------------------------------------------------------------

fn challenge_verifier() -> Verifier {
    Verifier::trusting(&Signer::self_signed(KeyKind::P256))
}

#[test]
fn the_challenge_without_a_token_names_realm_service_and_scope() {
    let v = challenge_verifier();
    assert_eq!(
        v.verifier.challenge(
            &[Scope::repository("team/app", &[PULL])],
            Some(&AuthError::Missing),
            RequestOrigin::default()
        ),
        format!(r#"Bearer realm="{REALM}",service="{SERVICE}",scope="repository:team/app:pull""#)
    );
}

#[test]
fn the_challenge_for_an_upload_asks_for_pull_and_push() {
    let v = challenge_verifier();
    assert_eq!(
        v.verifier.challenge(
            &[Scope::repository("app", &[PULL, PUSH])],
            None,
            RequestOrigin::default()
        ),
        format!(r#"Bearer realm="{REALM}",service="{SERVICE}",scope="repository:app:pull,push""#)
    );
}

#[test]
fn the_challenge_for_a_mount_lists_both_repositories_separated_by_a_space() {
    let v = challenge_verifier();
    let required = [
        Scope::repository("target", &[PULL, PUSH]),
        Scope::repository("source", &[PULL]),
    ];
    assert_eq!(
        v.verifier
            .challenge(&required, None, RequestOrigin::default()),
        format!(
            r#"Bearer realm="{REALM}",service="{SERVICE}",scope="repository:target:pull,push repository:source:pull""#
        )
    );
}

#[test]
fn the_challenge_for_the_catalog_asks_for_registry_catalog_star() {
    let v = challenge_verifier();
    assert_eq!(
        v.verifier
            .challenge(&[Scope::catalog()], None, RequestOrigin::default()),
        format!(r#"Bearer realm="{REALM}",service="{SERVICE}",scope="registry:catalog:*""#)
    );
}

#[test]
fn the_challenge_for_the_base_endpoint_has_no_scope() {
    let v = challenge_verifier();
    assert_eq!(
        v.verifier.challenge(&[], None, RequestOrigin::default()),
        format!(r#"Bearer realm="{REALM}",service="{SERVICE}""#)
    );
}

#[test]
fn the_challenge_after_an_invalid_token_says_invalid_token() {
    let v = challenge_verifier();
    let challenge = v.verifier.challenge(
        &[Scope::repository("app", &[PULL])],
        Some(&AuthError::Invalid(Rejection::Expired)),
        RequestOrigin::default(),
    );
    assert!(
        challenge.ends_with(r#",error="invalid_token""#),
        "{challenge}"
    );
}

#[test]
fn the_challenge_after_a_malformed_token_says_invalid_token() {
    let v = challenge_verifier();
    let challenge = v.verifier.challenge(
        &[Scope::repository("app", &[PULL])],
        Some(&AuthError::Malformed("bad".into())),
        RequestOrigin::default(),
    );
    assert!(
        challenge.ends_with(r#",error="invalid_token""#),
        "{challenge}"
    );
}

#[test]
fn the_challenge_after_an_insufficient_scope_says_so_and_asks_for_the_whole_scope() {
    let v = challenge_verifier();
    let required = [Scope::repository("app", &[PULL, PUSH])];
    let error = AuthError::InsufficientScope {
        missing: vec![Scope::repository("app", &[PUSH])],
    };
    assert_eq!(
        v.verifier
            .challenge(&required, Some(&error), RequestOrigin::default()),
        format!(
            r#"Bearer realm="{REALM}",service="{SERVICE}",scope="repository:app:pull,push",error="insufficient_scope""#
        )
    );
}

fn autoredirect_verifier() -> (TempDir, TokenVerifier) {
    let signer = Signer::self_signed(KeyKind::P256);
    let (dir, mut settings) = settings_with(Some(signer.cert_pem()), None);
    settings.autoredirect = true;
    (dir, TokenVerifier::new(settings).unwrap())
}

#[test]
fn with_autoredirect_the_realm_is_the_registry_own_token_path() {
    let (_dir, verifier) = autoredirect_verifier();
    let origin = RequestOrigin {
        host: Some("registry.example:5000"),
        forwarded_proto: Some("http"),
    };
    assert!(
        verifier
            .challenge(&[], None, origin)
            .starts_with(r#"Bearer realm="http://registry.example:5000/auth/token","#)
    );
}

#[test]
fn with_autoredirect_a_host_that_is_not_a_plain_host_falls_back_to_the_realm() {
    let (_dir, verifier) = autoredirect_verifier();
    let origin = RequestOrigin {
        host: Some(r#"evil",x="y"#),
        forwarded_proto: None,
    };
    assert!(
        verifier
            .challenge(&[], None, origin)
            .starts_with(&format!(r#"Bearer realm="{REALM}","#))
    );
}

// --- settings -----------------------------------------------------------------------------------

fn setup_error(settings: Settings) -> String {
    match TokenVerifier::new(settings) {
        Ok(_) => panic!("the settings were accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn settings_without_a_bundle_or_jwks_are_refused() {
    let (_dir, settings) = settings_with(None, None);
    assert!(setup_error(settings).contains("rootcertbundle or jwks"));
}

#[test]
fn a_bundle_without_certificates_is_refused() {
    let (_dir, settings) = settings_with(Some("not a certificate\n"), None);
    assert!(setup_error(settings).contains("no PEM CERTIFICATE"));
}

#[test]
fn a_missing_bundle_file_is_refused_naming_it() {
    let (_dir, mut settings) = settings_with(None, None);
    settings.root_cert_bundle = Some("/nonexistent/bundle.pem".into());
    assert!(setup_error(settings).contains("/nonexistent/bundle.pem"));
}

#[test]
fn a_jwks_with_a_symmetric_key_is_refused() {
    let jwks = json!({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]});
    let (_dir, settings) = settings_with(None, Some(&jwks));
    assert!(setup_error(settings).contains("symmetric"));
}

#[test]
fn a_jwks_key_without_a_kid_is_refused() {
    let mut jwk = Signer::self_signed(KeyKind::P256).public_jwk("x");
    jwk.as_object_mut().unwrap().remove("kid");
    let (_dir, settings) = settings_with(None, Some(&json!({"keys": [jwk]})));
    assert!(setup_error(settings).contains("kid"));
}

#[test]
fn settings_without_a_service_are_refused() {
    let signer = Signer::self_signed(KeyKind::P256);
    let (_dir, mut settings) = settings_with(Some(signer.cert_pem()), None);
    settings.service.clear();
    assert!(setup_error(settings).contains("service"));
}

// --- the test token server ----------------------------------------------------------------------

async fn fetch_token(
    issuer: &TokenIssuer,
    credentials: Option<(&str, &str)>,
    scopes: &[&str],
) -> (u16, Value) {
    let mut url = format!("{}?service={}", issuer.realm(), issuer.service());
    for scope in scopes {
        url.push_str(&format!("&scope={}", scope.replace(' ', "%20")));
    }
    let mut request = reqwest::Client::new().get(url);
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn verifier_for(issuer: &TokenIssuer) -> (TempDir, TokenVerifier) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, issuer.root_cert_bundle()).unwrap();
    let verifier = TokenVerifier::new(Settings {
        realm: issuer.realm(),
        service: issuer.service().to_owned(),
        issuer: issuer.issuer().to_owned(),
        root_cert_bundle: Some(bundle),
        ..Settings::default()
    })
    .unwrap();
    (dir, verifier)
}

fn issuer_with_alice(key: KeyKind, reference: KeyReference) -> TokenIssuer {
    TokenIssuer::start(IssuerConfig {
        key,
        reference,
        users: vec![User::new(
            "alice",
            "pa:ss",
            &["repository:team/app:pull", "repository:alice/*:*"],
        )],
        ..IssuerConfig::default()
    })
}

#[tokio::test]
async fn the_issuer_grants_only_the_actions_the_user_may_do() {
    let issuer = issuer_with_alice(KeyKind::Rsa, KeyReference::Kid);
    let (status, body) = fetch_token(
        &issuer,
        Some(("alice", "pa:ss")),
        &["repository:team/app:pull,push"],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_dir, verifier) = verifier_for(&issuer);
    let token = format!("Bearer {}", body["token"].as_str().unwrap());
    let granted = verifier.verify(Some(token.as_bytes()), &[]).unwrap();
    assert_eq!(granted.access, vec![Scope::repository("team/app", &[PULL])]);
}

#[tokio::test]
async fn the_issuer_answers_as_the_token_specification_says() {
    let issuer = issuer_with_alice(KeyKind::P256, KeyReference::Kid);
    let (status, body) = fetch_token(&issuer, Some(("alice", "pa:ss")), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], json!(300));
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["issued_at"].as_str().unwrap()).is_ok(),
        "{body}"
    );
}

#[tokio::test]
async fn the_issuer_tokens_with_an_x5c_chain_verify_against_its_bundle() {
    let issuer = issuer_with_alice(KeyKind::P256, KeyReference::X5c);
    let (status, body) = fetch_token(
        &issuer,
        Some(("alice", "pa:ss")),
        &["repository:alice/app:pull,push,delete"],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_dir, verifier) = verifier_for(&issuer);
    let token = format!("Bearer {}", body["token"].as_str().unwrap());
    verifier
        .verify(
            Some(token.as_bytes()),
            &[Scope::repository("alice/app", &[PULL, PUSH, DELETE])],
        )
        .unwrap();
}

#[tokio::test]
async fn the_issuer_refuses_a_wrong_password() {
    let issuer = issuer_with_alice(KeyKind::Rsa, KeyReference::Kid);
    let (status, _) = fetch_token(
        &issuer,
        Some(("alice", "pa")),
        &["repository:team/app:pull"],
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_issuer_refuses_a_request_without_credentials() {
    let issuer = issuer_with_alice(KeyKind::Rsa, KeyReference::Kid);
    let (status, _) = fetch_token(&issuer, None, &["repository:team/app:pull"]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_issuer_records_what_was_asked_for() {
    let issuer = issuer_with_alice(KeyKind::Rsa, KeyReference::Kid);
    fetch_token(
        &issuer,
        Some(("alice", "pa:ss")),
        &["repository:a:pull repository:b:push", "registry:catalog:*"],
    )
    .await;
    let requests = issuer.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].user.as_deref(), Some("alice"));
    assert_eq!(
        requests[0].scopes,
        [
            "repository:a:pull",
            "repository:b:push",
            "registry:catalog:*"
        ]
    );
}
