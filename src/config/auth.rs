//! `auth`: who may use the registry. One kind at most: `htpasswd` (Basic credentials checked
//! against a bcrypt file) or `token` (bearer tokens from an external issuer, the Docker token
//! specification); `none` says "open" explicitly. Anything else refuses startup: an `auth`
//! section that layerstore ignored would serve the registry open to anyone.

use std::path::PathBuf;

use serde_yaml_ng::{Mapping, Value};

use super::report::{Field, Report, Section, checked_file, is_set, join, take_bool, take_string};
use super::row;

/// The access control `layerstore serve` applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// Anyone may pull and push (no `auth` section, or `auth: {none: …}`).
    #[default]
    None,
    Htpasswd(HtpasswdConfig),
    Token(TokenConfig),
}

/// `auth.htpasswd`: Basic credentials checked against an htpasswd file of bcrypt entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtpasswdConfig {
    /// Sent in the challenge: `WWW-Authenticate: Basic realm="<realm>"`.
    pub realm: String,
    /// The file; re-read when it changes.
    pub path: PathBuf,
}

/// `auth.token`: bearer tokens issued by an external token server (the Docker token
/// specification). At least one of `root_cert_bundle` and `jwks` gives the keys that sign
/// the tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// Where clients get tokens; sent in the challenge.
    pub realm: String,
    /// The audience tokens must name; sent in the challenge.
    pub service: String,
    /// The issuer tokens must name.
    pub issuer: String,
    /// PEM certificates whose keys (or whose chain, through `x5c`) sign tokens.
    pub root_cert_bundle: Option<PathBuf>,
    /// A JSON Web Key Set file with the signing keys.
    pub jwks: Option<PathBuf>,
    /// `autoredirect`: the realm is derived from the request's host.
    pub auto_redirect: bool,
}

const KINDS: &str = "htpasswd, token or none";

pub(super) fn parse_auth(report: &mut Report, field: &Field<'_>) -> Auth {
    // `REGISTRY_AUTH=htpasswd` names a kind without parameters.
    let short;
    let value = if let Value::String(kind) = field.value {
        let mut m = Mapping::new();
        m.insert(Value::String(kind.clone()), Value::Null);
        short = Value::Mapping(m);
        &short
    } else {
        field.value
    };
    if !is_set(value) {
        return Auth::None;
    }
    let Some(mut section) = Section::new(report, &field.key, value) else {
        return Auth::None;
    };
    let kinds: Vec<String> = section.keys().map(str::to_owned).collect();
    if kinds.len() > 1 {
        report.error(
            &field.key,
            format!(
                "exactly one authentication kind may be configured, found {}",
                kinds.join(", ")
            ),
        );
    }
    let mut auth = Auth::None;
    for kind in &kinds {
        let Some(f) = section.take(kind) else {
            continue;
        };
        let parsed = match kind.as_str() {
            "none" => Some(Auth::None),
            "htpasswd" => parse_htpasswd(report, &f).map(Auth::Htpasswd),
            "token" => parse_token(report, &f).map(Auth::Token),
            "silly" => {
                report.error(
                    &f.key,
                    "silly authentication lets in anyone who sends any Authorization header; \
                     it is for development only and not supported: use htpasswd or token",
                );
                None
            }
            other => {
                report.error(
                    &f.key,
                    format!("unknown authentication kind `{other}` ({KINDS})"),
                );
                None
            }
        };
        if let (Some(parsed), 1) = (parsed, kinds.len()) {
            auth = parsed;
        }
    }
    section.finish(report);
    auth
}

/// A string that must be present and not empty.
fn required(report: &mut Report, s: &mut Section<'_>, path: &str, key: &str) -> Option<String> {
    let value = take_string(report, s, key);
    if value.is_none() {
        report.error(&join(path, key), "required");
    }
    value
}

fn parse_htpasswd(report: &mut Report, field: &Field<'_>) -> Option<HtpasswdConfig> {
    let mut s = Section::new(report, &field.key, field.value)?;
    let realm = required(report, &mut s, &field.key, "realm");
    let path = match s.take("path") {
        Some(f) if is_set(f.value) => checked_file(report, &f),
        _ => {
            report.error(&join(&field.key, "path"), "required");
            None
        }
    };
    s.finish(report);
    Some(HtpasswdConfig {
        realm: realm?,
        path: path?,
    })
}

fn parse_token(report: &mut Report, field: &Field<'_>) -> Option<TokenConfig> {
    let mut s = Section::new(report, &field.key, field.value)?;
    let realm = required(report, &mut s, &field.key, "realm");
    let service = required(report, &mut s, &field.key, "service");
    let issuer = required(report, &mut s, &field.key, "issuer");
    let mut ok = true;
    let mut file = |s: &mut Section<'_>, key: &str| match s.take(key) {
        Some(f) if is_set(f.value) => {
            let path = checked_file(report, &f);
            ok &= path.is_some();
            path
        }
        _ => None,
    };
    let root_cert_bundle = file(&mut s, "rootcertbundle");
    let jwks = file(&mut s, "jwks");
    let auto_redirect = take_bool(report, &mut s, "autoredirect").unwrap_or(false);
    for (key, why) in [
        (
            "autoredirectpath",
            "a realm path other than the default is not supported: give the full realm URL",
        ),
        (
            "signingalgorithms",
            "restricting the signing algorithms is not supported yet, and ignoring it would \
             accept tokens the operator meant to refuse",
        ),
    ] {
        if let Some(f) = s.take(key).filter(|f| is_set(f.value)) {
            report.error(&f.key, why);
            ok = false;
        }
    }
    s.finish(report);
    if ok && root_cert_bundle.is_none() && jwks.is_none() {
        report.error(
            &join(&field.key, "rootcertbundle"),
            "required unless jwks is set: tokens cannot be verified without the issuer's keys",
        );
        ok = false;
    }
    let config = TokenConfig {
        realm: realm?,
        service: service?,
        issuer: issuer?,
        root_cert_bundle,
        jwks,
        auto_redirect,
    };
    ok.then_some(config)
}

impl Auth {
    /// The `auth` lines of [`super::Config::describe`].
    pub(super) fn describe(&self, out: &mut String) {
        out.push_str("auth\n");
        match self {
            Auth::None => row(out, "kind", &"none (anyone may pull and push)"),
            Auth::Htpasswd(h) => {
                row(out, "kind", &"htpasswd (bcrypt entries only)");
                row(out, "realm", &h.realm);
                row(out, "path", &h.path.display());
            }
            Auth::Token(t) => {
                row(out, "kind", &"token");
                row(out, "realm", &t.realm);
                row(out, "service", &t.service);
                row(out, "issuer", &t.issuer);
                if let Some(bundle) = &t.root_cert_bundle {
                    row(out, "rootcertbundle", &bundle.display());
                }
                if let Some(jwks) = &t.jwks {
                    row(out, "jwks", &jwks.display());
                }
                row(out, "autoredirect", &t.auto_redirect);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    fn htpasswd_yaml(path: &std::path::Path) -> String {
        format!(
            "{FS}auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
            path.display()
        )
    }

    fn existing_file() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    #[test]
    fn no_auth_section_or_an_empty_one_or_none_is_an_open_registry() {
        assert_eq!(load(FS).auth, Auth::None);
        assert_eq!(load(&format!("{FS}auth:\n")).auth, Auth::None);
        assert_eq!(
            load(&format!("{FS}auth: {{none: {{}}}}\n")).auth,
            Auth::None
        );
    }

    #[test]
    fn htpasswd_reads_realm_and_path() {
        let file = existing_file();
        let config = load(&htpasswd_yaml(file.path()));
        assert_eq!(
            config.auth,
            Auth::Htpasswd(HtpasswdConfig {
                realm: "basic-realm".to_owned(),
                path: file.path().to_owned(),
            })
        );
        let text = config.describe();
        assert!(text.contains("htpasswd (bcrypt entries only)"), "{text}");
    }

    #[test]
    fn htpasswd_needs_a_realm_and_an_existing_file() {
        let e = fail(&format!(
            "{FS}auth: {{htpasswd: {{path: /nonexistent/htpasswd}}}}\n"
        ));
        assert!(e.contains("auth.htpasswd.realm: required"), "{e}");
        assert!(
            e.contains("auth.htpasswd.path: cannot read /nonexistent/htpasswd"),
            "{e}"
        );
        let e = fail(&format!("{FS}auth: {{htpasswd: {{realm: r}}}}\n"));
        assert!(e.contains("auth.htpasswd.path: required"), "{e}");
        let e = fail(&format!(
            "{FS}auth: {{htpasswd: {{realm: r, path: /p, paht: /q}}}}\n"
        ));
        assert!(e.contains("auth.htpasswd.paht: unknown key"), "{e}");
    }

    #[test]
    fn token_reads_every_key() {
        let bundle = existing_file();
        let jwks = existing_file();
        let config = load(&format!(
            "{FS}auth:\n  token:\n    realm: https://auth.example/token\n    service: registry\n    \
             issuer: auth-service\n    rootcertbundle: {}\n    jwks: {}\n    autoredirect: true\n",
            bundle.path().display(),
            jwks.path().display()
        ));
        assert_eq!(
            config.auth,
            Auth::Token(TokenConfig {
                realm: "https://auth.example/token".to_owned(),
                service: "registry".to_owned(),
                issuer: "auth-service".to_owned(),
                root_cert_bundle: Some(bundle.path().to_owned()),
                jwks: Some(jwks.path().to_owned()),
                auto_redirect: true,
            })
        );
    }

    #[test]
    fn token_takes_a_jwks_alone() {
        let jwks = existing_file();
        let config = load(&format!(
            "{FS}auth: {{token: {{realm: 'http://a/t', service: s, issuer: i, jwks: {}}}}}\n",
            jwks.path().display()
        ));
        let Auth::Token(token) = config.auth else {
            panic!("{:?}", config.auth)
        };
        assert_eq!(token.root_cert_bundle, None);
        assert!(!token.auto_redirect);
    }

    #[test]
    fn token_without_keys_or_with_a_missing_bundle_is_refused() {
        let e = fail(&format!(
            "{FS}auth: {{token: {{realm: 'http://a/t', service: s, issuer: i}}}}\n"
        ));
        assert!(
            e.contains("auth.token.rootcertbundle: required unless jwks is set"),
            "{e}"
        );
        let e = fail(&format!(
            "{FS}auth: {{token: {{realm: 'http://a/t', service: s, issuer: i, \
             rootcertbundle: /nonexistent/bundle.pem}}}}\n"
        ));
        assert!(
            e.contains("auth.token.rootcertbundle: cannot read /nonexistent/bundle.pem"),
            "{e}"
        );
    }

    #[test]
    fn token_needs_realm_service_and_issuer() {
        let bundle = existing_file();
        let e = fail(&format!(
            "{FS}auth: {{token: {{rootcertbundle: {}}}}}\n",
            bundle.path().display()
        ));
        for key in ["realm", "service", "issuer"] {
            assert!(e.contains(&format!("auth.token.{key}: required")), "{e}");
        }
    }

    #[test]
    fn token_settings_layerstore_cannot_honour_are_refused() {
        let bundle = existing_file();
        for extra in [
            "signingalgorithms: [RS256]",
            "autoredirectpath: /auth/token",
        ] {
            let key = extra.split(':').next().unwrap();
            let e = fail(&format!(
                "{FS}auth: {{token: {{realm: 'http://a/t', service: s, issuer: i, \
                 rootcertbundle: {}, {extra}}}}}\n",
                bundle.path().display()
            ));
            assert!(e.contains(&format!("auth.token.{key}: ")), "{extra}: {e}");
        }
    }

    #[test]
    fn silly_auth_is_refused() {
        let e = fail(&format!("{FS}auth: {{silly: {{realm: r, service: s}}}}\n"));
        assert!(
            e.contains("auth.silly: silly authentication lets in anyone"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_auth_kind_is_refused_naming_it() {
        let e = fail(&format!("{FS}auth: {{ldap: {{url: 'ldap://x'}}}}\n"));
        assert!(
            e.contains("auth.ldap: unknown authentication kind `ldap`"),
            "{e}"
        );
    }

    #[test]
    fn two_auth_kinds_are_refused() {
        let file = existing_file();
        let e = fail(&format!(
            "{FS}auth:\n  htpasswd: {{realm: r, path: {}}}\n  token: {{realm: r}}\n",
            file.path().display()
        ));
        assert!(
            e.contains(
                "auth: exactly one authentication kind may be configured, found htpasswd, token"
            ),
            "{e}"
        );
    }

    #[test]
    fn environment_configures_htpasswd_without_a_file() {
        let file = existing_file();
        let path = file.path().to_str().unwrap();
        let config = Config::from_env(&env(&[
            ("REGISTRY_AUTH", "htpasswd"),
            ("REGISTRY_AUTH_HTPASSWD_PATH", path),
            ("REGISTRY_AUTH_HTPASSWD_REALM", "Registry Realm"),
        ]))
        .unwrap();
        assert_eq!(
            config.auth,
            Auth::Htpasswd(HtpasswdConfig {
                realm: "Registry Realm".to_owned(),
                path: file.path().to_owned(),
            })
        );
    }

    #[test]
    fn environment_auth_that_cannot_be_honoured_is_refused_even_without_a_file() {
        let e = Config::from_env(&env(&[
            ("REGISTRY_AUTH", "htpasswd"),
            ("REGISTRY_AUTH_HTPASSWD_PATH", "/nonexistent/htpasswd"),
        ]))
        .unwrap_err();
        assert!(e.contains("auth.htpasswd.realm: required"), "{e}");
        assert!(
            e.contains("auth.htpasswd.path: cannot read /nonexistent/htpasswd"),
            "{e}"
        );
        assert!(e.contains("(set by REGISTRY_AUTH_HTPASSWD_PATH)"), "{e}");
    }
}
