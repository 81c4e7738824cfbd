//! `auth`.

use serde_yaml_ng::Value;

use super::report::{Field, Report, is_set};

pub(super) fn parse_auth(report: &mut Report, field: &Field<'_>) {
    // `auth: {none: ...}` is Distribution's explicit "no authentication".
    let only_none = match field.value {
        Value::Mapping(m) => m.keys().all(|k| k.as_str() == Some("none")),
        other => !is_set(other),
    };
    if !only_none {
        report.error(
            &field.key,
            "authentication is not supported by layerstore serve, and ignoring this \
             section would serve the registry open to anyone: refusing to start. Put an \
             authenticating reverse proxy in front and remove the `auth` section",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn auth_is_refused_because_ignoring_it_would_open_the_registry() {
        let e = fail(&format!(
            "{FS}auth:\n  htpasswd:\n    realm: basic-realm\n    path: /auth/htpasswd\n"
        ));
        assert!(e.contains("auth: authentication is not supported"), "{e}");
        assert!(e.contains("open to anyone"), "{e}");
        load(&format!("{FS}auth:\n"));
        load(&format!("{FS}auth: {{none: {{}}}}\n"));
    }

    #[test]
    fn environment_auth_is_refused_even_without_a_file() {
        let e = Config::from_env(&env(&[
            ("REGISTRY_AUTH", "htpasswd"),
            ("REGISTRY_AUTH_HTPASSWD_PATH", "/auth/htpasswd"),
            ("REGISTRY_AUTH_HTPASSWD_REALM", "Registry Realm"),
        ]))
        .unwrap_err();
        assert!(e.contains("auth: authentication is not supported"), "{e}");
        assert!(e.contains("(set by REGISTRY_AUTH"), "{e}");
    }
}
