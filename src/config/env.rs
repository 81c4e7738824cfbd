//! `REGISTRY_*` environment variables over the file, as Distribution applies them.

use serde_yaml_ng::{Mapping, Value};

use super::report::Report;
use super::{ENV_PREFIX, SECTIONS};

pub(super) fn process_env() -> Vec<(String, String)> {
    // Non-UTF-8 variables cannot be REGISTRY_* settings layerstore reads; skip them.
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Applies `REGISTRY_*` variables to `document`; returns the names of those applied.
pub(super) fn apply_env(
    document: &mut Value,
    env: &[(String, String)],
    report: &mut Report,
) -> Vec<String> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    let mut applied = Vec::new();
    for (name, payload) in vars {
        let segments: Vec<String> = name[ENV_PREFIX.len()..]
            .split('_')
            .map(str::to_ascii_lowercase)
            .collect();
        let section = segments[0].as_str();
        if segments.iter().any(String::is_empty) || !SECTIONS.contains(&section) {
            report.warn(
                name,
                "ignored environment variable: not a configuration section",
            );
            continue;
        }
        if section == "version" {
            report.warn(name, "ignored: the version cannot be overridden");
            continue;
        }
        // Read as YAML, as Distribution does (so `true` and `5000` keep their types).
        let mut value = serde_yaml_ng::from_str::<Value>(payload)
            .unwrap_or_else(|_| Value::String(payload.clone()));
        if segments.len() == 1 && section == "storage" {
            // `REGISTRY_STORAGE=s3` selects a driver, replacing the file's storage section.
            if let Value::String(driver) = &value {
                let mut m = Mapping::new();
                m.insert(Value::String(driver.clone()), Value::Null);
                value = Value::Mapping(m);
            }
        }
        let dotted = segments.join(".");
        match set_path(document, &segments, value) {
            Ok(()) => {
                report.from_env.push((dotted, name.clone()));
                applied.push(name.clone());
            }
            Err(why) => report.error(name, format!("cannot apply environment variable: {why}")),
        }
    }
    applied
}

pub(super) fn set_path(node: &mut Value, segments: &[String], value: Value) -> Result<(), String> {
    let Some((first, rest)) = segments.split_first() else {
        *node = value;
        return Ok(());
    };
    if let Value::Sequence(items) = node {
        let index: usize = first
            .parse()
            .map_err(|_| format!("`{first}` is not an index into the list"))?;
        if index > items.len() {
            return Err(format!("index {index} is past the end of the list"));
        }
        if index == items.len() {
            items.push(Value::Null);
        }
        return set_path(&mut items[index], rest, value);
    }
    if node.is_null() && first == "0" {
        // `REGISTRY_HTTP_TLS_CLIENTCAS_0` where the file has no list: start one.
        *node = Value::Sequence(Vec::new());
        return set_path(node, segments, value);
    }
    if !node.is_mapping() {
        *node = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(map) = node else {
        return Err("not a mapping".to_owned());
    };
    let key = map
        .keys()
        .find(|k| k.as_str().is_some_and(|s| s.eq_ignore_ascii_case(first)))
        .cloned()
        .unwrap_or_else(|| Value::String(first.clone()));
    if rest.is_empty() {
        map.insert(key, value);
        Ok(())
    } else {
        set_path(map.entry(key).or_insert(Value::Null), rest, value)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    use layerstore::BackendConfig;
    use layerstore::backend::FilesystemConfig;
    use layerstore::cache::MemoryCacheConfig;

    #[test]
    fn environment_overrides_scalar_keys() {
        let config = Config::from_yaml(
            DISTRIBUTION_CONFIG,
            &env(&[
                ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/somewhere"),
                ("REGISTRY_HTTP_ADDR", ":6000"),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "false"),
                ("REGISTRY_LOG_LEVEL", "warn"),
                ("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE", "2h"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.storage.backend,
            BackendConfig::Filesystem(FilesystemConfig {
                root: PathBuf::from("/somewhere")
            })
        );
        assert_eq!(config.http.addr.port(), 6000);
        assert!(!config.storage.delete_enabled);
        assert_eq!(config.log.level, "warn");
        assert_eq!(
            config.storage.purging.options.older_than,
            Duration::from_secs(7200)
        );
        assert_eq!(config.env_overrides.len(), 5);
    }

    #[test]
    fn environment_can_switch_the_storage_driver() {
        let config = Config::from_yaml(
            FS,
            &env(&[
                ("REGISTRY_STORAGE_S3_BUCKET", "images"),
                ("REGISTRY_STORAGE_S3_REGION", "us-west-2"),
                ("REGISTRY_STORAGE", "s3"),
            ]),
        )
        .unwrap();
        let BackendConfig::S3(s3) = config.storage.backend else {
            panic!()
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str()),
            ("images", "us-west-2")
        );
    }

    #[test]
    fn environment_applies_without_a_file_on_the_server_defaults() {
        let config = Config::from_env(&env(&[("REGISTRY_HTTP_ADDR", "0.0.0.0:7000")])).unwrap();
        assert_eq!(config.http.addr, SocketAddr::from(([0, 0, 0, 0], 7000)));
        assert!(config.storage.delete_enabled);
        assert_eq!(config.storage.cache, Some(MemoryCacheConfig::default()));
        assert_eq!(config.storage.backend, BackendConfig::default());
    }

    #[test]
    fn an_unrelated_registry_variable_is_only_a_warning() {
        let config = Config::from_yaml(FS, &env(&[("REGISTRY_URL", "https://r.example")])).unwrap();
        assert!(
            has_warning(&config, "REGISTRY_URL"),
            "{:?}",
            config.warnings
        );
    }

    #[test]
    fn an_environment_typo_names_the_key_and_the_variable() {
        let e = Config::from_yaml(
            FS,
            &env(&[("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTROY", "/x")]),
        )
        .unwrap_err();
        assert!(
            e.contains(
                "storage.filesystem.rootdirectroy: unknown key \
                 (set by REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTROY)"
            ),
            "{e}"
        );
    }

    #[test]
    fn environment_indexes_lists() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap();
        let config = Config::from_yaml(
            FS,
            &env(&[
                ("REGISTRY_HTTP_TLS_CERTIFICATE", path),
                ("REGISTRY_HTTP_TLS_KEY", path),
                ("REGISTRY_HTTP_TLS_CLIENTCAS_0", path),
            ]),
        )
        .unwrap();
        assert_eq!(config.http.tls.unwrap().client_cas, [file.path()]);
        let e = Config::from_yaml(
            "storage: {filesystem: {rootdirectory: /a}}\nhttp: {tls: {clientcas: []}}\n",
            &env(&[("REGISTRY_HTTP_TLS_CLIENTCAS_3", "/ca.pem")]),
        )
        .unwrap_err();
        assert!(
            e.contains("REGISTRY_HTTP_TLS_CLIENTCAS_3: cannot apply"),
            "{e}"
        );
    }
}
