//! `storage`: the driver (filesystem, inmemory, s3, azure), `delete`, and the `cache` and
//! `maintenance` subsections. This is the only reader of `storage.*`: the library's
//! [`BackendConfig`] is plain data built here.

use std::path::PathBuf;

use layerstore::BackendConfig;
use layerstore::backend::{AzureConfig, FilesystemConfig, S3Config};
use layerstore::cache::MemoryCacheConfig;
use layerstore::upload::PurgerConfig;
use serde_yaml_ng::{Mapping, Value};

use super::cache::parse_cache;
use super::gc::GcSchedule;
use super::maintenance::parse_maintenance;
use super::report::{
    Field, Report, Section, get_bool, get_string, is_set, join, take_bool, take_string,
};
use super::{Defaults, enabled, redacted, row, yes_no};

#[derive(Debug, Clone)]
pub struct Storage {
    pub backend: BackendConfig,
    pub delete_enabled: bool,
    /// `None`: no blob-descriptor cache.
    pub cache: Option<MemoryCacheConfig>,
    /// `storage.cache.blobdescriptor: redis`: the cache is the `redis` section's server
    /// (`cache` is then `None`).
    pub redis_cache: bool,
    pub purging: PurgerConfig,
    /// `storage.maintenance.gc`, a layerstore extension.
    pub gc: GcSchedule,
    /// `storage.maintenance.readonly.enabled`: every write endpoint answers 405, and neither
    /// the upload purger nor scheduled GC runs.
    pub read_only: bool,
}

/// Distribution's filesystem root when `rootdirectory` is not given.
pub(super) const DISTRIBUTION_ROOT: &str = "/var/lib/registry";

pub(super) const DRIVERS: &[&str] = &["filesystem", "inmemory", "s3", "s3aws", "azure"];
pub(super) const UNSUPPORTED_DRIVERS: &[&str] = &["gcs", "swift", "oss"];

pub(super) fn parse_storage(
    report: &mut Report,
    field: Option<&Field<'_>>,
    defaults: Defaults,
    mut storage: Storage,
) -> Storage {
    let Some(field) = field else {
        if defaults == Defaults::File {
            report.error(
                "storage",
                "required: configure exactly one driver (filesystem, inmemory, s3 or azure)",
            );
        }
        return storage;
    };
    // `storage: inmemory` names a driver without parameters.
    let short;
    let value = if let Value::String(driver) = field.value {
        let mut m = Mapping::new();
        m.insert(Value::String(driver.clone()), Value::Null);
        short = Value::Mapping(m);
        &short
    } else {
        field.value
    };
    let Some(mut section) = Section::new(report, &field.key, value) else {
        return storage;
    };

    let present: Vec<&str> = DRIVERS
        .iter()
        .chain(UNSUPPORTED_DRIVERS)
        .copied()
        .filter(|d| section.has(d))
        .collect();
    if present.len() > 1 {
        report.error(
            &field.key,
            format!(
                "exactly one storage driver may be configured, found {}",
                present.join(", ")
            ),
        );
    }
    for driver in &present {
        let Some(driver_field) = section.take(driver) else {
            continue;
        };
        if UNSUPPORTED_DRIVERS.contains(driver) {
            report.error(
                &driver_field.key,
                format!(
                    "unsupported storage driver {driver} (layerstore supports filesystem, \
                     inmemory, s3 and azure)"
                ),
            );
            continue;
        }
        let backend = match *driver {
            "filesystem" => parse_filesystem(report, &driver_field),
            "inmemory" => {
                if let Some(s) = Section::new(report, &driver_field.key, driver_field.value) {
                    s.finish(report);
                }
                Some(BackendConfig::Memory)
            }
            "s3" | "s3aws" => parse_s3(report, &driver_field),
            _ => parse_azure(report, &driver_field),
        };
        if let (Some(backend), 1) = (backend, present.len()) {
            storage.backend = backend;
        }
    }
    if present.is_empty() && defaults == Defaults::File {
        report.error(
            &field.key,
            "no storage driver configured: add one of filesystem, inmemory, s3 or azure",
        );
    }

    if let Some(delete) = section.take("delete")
        && let Some(mut s) = Section::new(report, &delete.key, delete.value)
    {
        if let Some(f) = s.take("enabled")
            && let Some(enabled) = get_bool(report, &f)
        {
            storage.delete_enabled = enabled;
        }
        s.finish(report);
    }
    if let Some(cache) = section.take("cache") {
        storage.cache = parse_cache(report, &cache, storage.cache, &mut storage.redis_cache);
    }
    if let Some(maintenance) = section.take("maintenance") {
        parse_maintenance(report, &maintenance, &mut storage);
    }
    section.ignore(
        report,
        "redirect",
        "layerstore serves blob data itself and never redirects clients to the backend",
    );
    section.ignore(report, "tag", "tag lookups need no concurrency limit");
    section.finish(report);
    storage
}

pub(super) fn parse_filesystem(report: &mut Report, field: &Field<'_>) -> Option<BackendConfig> {
    let mut s = Section::new(report, &field.key, field.value)?;
    let root = match s.take("rootdirectory") {
        Some(f) => get_string(report, &f).map(PathBuf::from),
        None => None,
    };
    let root = root.unwrap_or_else(|| {
        report.warn(
            &join(&field.key, "rootdirectory"),
            format!("not set: using Distribution's default {DISTRIBUTION_ROOT}"),
        );
        PathBuf::from(DISTRIBUTION_ROOT)
    });
    s.ignore(
        report,
        "maxthreads",
        "filesystem concurrency is not limited",
    );
    s.finish(report);
    Some(BackendConfig::Filesystem(FilesystemConfig { root }))
}

/// A key prefix from `rootdirectory`: slashes trimmed, empty means none.
pub(super) fn prefix(root: Option<String>) -> Option<String> {
    root.map(|r| r.trim_matches('/').to_owned())
        .filter(|r| !r.is_empty())
}

pub(super) fn parse_s3(report: &mut Report, field: &Field<'_>) -> Option<BackendConfig> {
    let mut s = Section::new(report, &field.key, field.value)?;
    let bucket = take_string(report, &mut s, "bucket");
    let region = take_string(report, &mut s, "region");
    let endpoint = take_string(report, &mut s, "regionendpoint");
    let access_key_id = take_string(report, &mut s, "accesskey");
    let secret_access_key = take_string(report, &mut s, "secretkey");
    let session_token = take_string(report, &mut s, "sessiontoken");
    let root = take_string(report, &mut s, "rootdirectory");
    let secure = take_bool(report, &mut s, "secure").unwrap_or(true);
    // layerstore addresses buckets path-style whether or not this is set; both work on S3.
    let _ = take_bool(report, &mut s, "forcepathstyle");
    for (key, why) in [
        (
            "encrypt",
            "server-side encryption is left to the bucket's default encryption",
        ),
        (
            "keyid",
            "server-side encryption is left to the bucket's default encryption",
        ),
        (
            "v4auth",
            "requests are always signed with AWS signature version 4",
        ),
        ("chunksize", "multipart part sizes are chosen by layerstore"),
        ("multipartcopychunksize", "multipart copy is not used"),
        ("multipartcopymaxconcurrency", "multipart copy is not used"),
        ("multipartcopythresholdsize", "multipart copy is not used"),
        (
            "storageclass",
            "objects get the bucket's default storage class",
        ),
        ("objectacl", "objects get the bucket's default ACL"),
        ("useragent", "the S3 client's own user agent is sent"),
        ("usedualstack", "the regular endpoint is used"),
        ("accelerate", "transfer acceleration is not used"),
        ("usefipsendpoint", "the regular endpoint is used"),
        (
            "skipverify",
            "TLS certificates of the endpoint are always verified",
        ),
        ("loglevel", "S3 client logging follows log.level"),
    ] {
        s.ignore(report, key, why);
    }
    s.finish(report);

    let mut ok = true;
    if access_key_id.is_some() != secret_access_key.is_some() {
        let missing = if access_key_id.is_some() {
            "secretkey"
        } else {
            "accesskey"
        };
        report.error(
            &join(&field.key, missing),
            "required when the other of accesskey and secretkey is set",
        );
        ok = false;
    }
    let Some(bucket) = bucket else {
        report.error(&join(&field.key, "bucket"), "required");
        return None;
    };
    let region = match (region, &endpoint) {
        (Some(region), _) => region,
        (None, Some(_)) => "us-east-1".to_owned(),
        (None, None) => {
            report.error(
                &join(&field.key, "region"),
                "required unless regionendpoint is set",
            );
            return None;
        }
    };
    // Go's S3 client honours an http:// endpoint even with `secure` left at true.
    let allow_http = !secure
        || endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
    ok.then(|| {
        BackendConfig::S3(S3Config {
            bucket,
            region,
            endpoint,
            allow_http,
            access_key_id,
            secret_access_key,
            session_token,
            prefix: prefix(root),
        })
    })
}

pub(super) fn parse_azure(report: &mut Report, field: &Field<'_>) -> Option<BackendConfig> {
    let mut s = Section::new(report, &field.key, field.value)?;
    let account = take_string(report, &mut s, "accountname");
    let access_key = take_string(report, &mut s, "accountkey");
    let container = take_string(report, &mut s, "container");
    let root = take_string(report, &mut s, "rootdirectory");
    let realm = take_string(report, &mut s, "realm");
    let service_url = take_string(report, &mut s, "serviceurl");
    let credentials = s.take("credentials").filter(|f| is_set(f.value));
    if let Some(f) = s.take("connectionstring").filter(|f| is_set(f.value)) {
        report.error(
            &f.key,
            "connection strings are not supported: use accountname, accountkey and serviceurl",
        );
    }
    for (key, why) in [
        (
            "copy_status_poll_max_retry",
            "layerstore does not use server-side copies",
        ),
        (
            "copy_status_poll_delay",
            "layerstore does not use server-side copies",
        ),
        ("max_retries", "the Azure client's own retry policy is used"),
        ("retry_delay", "the Azure client's own retry policy is used"),
    ] {
        s.ignore(report, key, why);
    }
    s.finish(report);

    let mut ok = true;
    let access_key = match (access_key, credentials) {
        (Some(key), Some(c)) => {
            report.warn(&c.key, "ignored: the shared key from accountkey is used");
            Some(key)
        }
        (Some(key), None) => Some(key),
        (None, Some(c)) => {
            report.error(
                &c.key,
                "Azure AD credentials are not supported: set accountkey (the shared key)",
            );
            ok = false;
            None
        }
        (None, None) => {
            report.error(&join(&field.key, "accountkey"), "required");
            ok = false;
            None
        }
    };
    let Some(account) = account else {
        report.error(&join(&field.key, "accountname"), "required");
        return None;
    };
    let Some(container) = container else {
        report.error(&join(&field.key, "container"), "required");
        return None;
    };
    // As in Distribution: serviceurl wins, else https://<account>.blob.<realm>.
    let endpoint = service_url.or_else(|| {
        realm
            .filter(|r| r != "core.windows.net")
            .map(|r| format!("https://{account}.blob.{r}"))
    });
    let allow_http = endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    ok.then(|| {
        BackendConfig::Azure(AzureConfig {
            account,
            container,
            access_key,
            endpoint,
            allow_http,
            prefix: prefix(root),
            use_emulator: false,
        })
    })
}

/// An access key id is not a secret, but only its first characters are needed to recognise it.
pub(super) fn redact_key_id(id: &str) -> String {
    let shown: String = id.chars().take(4).collect();
    format!("{shown}… (redacted)")
}

impl Storage {
    /// The `storage` lines of [`super::Config::describe`].
    pub(super) fn describe(&self, out: &mut String) {
        let storage = self;
        out.push_str("storage\n");
        match &storage.backend {
            BackendConfig::Filesystem(fs) => {
                row(out, "driver", &"filesystem");
                row(out, "rootdirectory", &fs.root.display());
            }
            BackendConfig::Memory => row(out, "driver", &"inmemory (contents lost at exit)"),
            BackendConfig::S3(s3) => {
                row(out, "driver", &"s3");
                row(out, "bucket", &s3.bucket);
                row(out, "region", &s3.region);
                row(
                    out,
                    "regionendpoint",
                    &s3.endpoint.as_deref().unwrap_or("(AWS)"),
                );
                row(out, "plain http allowed", &yes_no(s3.allow_http));
                let key_id = s3.access_key_id.as_deref().map(redact_key_id);
                row(
                    out,
                    "accesskey",
                    &key_id.as_deref().unwrap_or("(from AWS_ACCESS_KEY_ID)"),
                );
                row(
                    out,
                    "secretkey",
                    &redacted(
                        s3.secret_access_key.is_some(),
                        "(from AWS_SECRET_ACCESS_KEY)",
                    ),
                );
                if s3.session_token.is_some() {
                    row(out, "sessiontoken", &"<redacted>");
                }
                row(
                    out,
                    "rootdirectory",
                    &s3.prefix.as_deref().unwrap_or("(bucket root)"),
                );
            }
            BackendConfig::Azure(az) => {
                row(out, "driver", &"azure");
                row(out, "accountname", &az.account);
                row(
                    out,
                    "accountkey",
                    &redacted(az.access_key.is_some(), "(not set)"),
                );
                row(out, "container", &az.container);
                let default_url = format!("https://{}.blob.core.windows.net", az.account);
                row(
                    out,
                    "serviceurl",
                    &az.endpoint.as_deref().unwrap_or(&default_url),
                );
                row(out, "plain http allowed", &yes_no(az.allow_http));
                row(
                    out,
                    "rootdirectory",
                    &az.prefix.as_deref().unwrap_or("(container root)"),
                );
            }
        }
        row(out, "delete", &enabled(storage.delete_enabled));
        super::cache::describe(out, storage.cache.as_ref(), storage.redis_cache);
        super::maintenance::describe(out, storage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use layerstore::backend::FilesystemConfig;

    #[test]
    fn s3_form_maps_onto_the_s3_backend() {
        let config = load(
            "storage:
  s3:
    accesskey: AKIAEXAMPLEKEY
    secretkey: wJalrXUtnFEMI/K7MDENG
    region: eu-west-1
    regionendpoint: https://minio.internal:9000
    bucket: images
    rootdirectory: /registry/v2/
    secure: false
    forcepathstyle: true
    encrypt: true
    v4auth: true
    chunksize: 5242880
    multipartcopythresholdsize: 33554432
    storageclass: STANDARD
",
        );
        let BackendConfig::S3(s3) = &config.storage.backend else {
            panic!("{:?}", config.storage.backend)
        };
        assert_eq!(s3.bucket, "images");
        assert_eq!(s3.region, "eu-west-1");
        assert_eq!(s3.endpoint.as_deref(), Some("https://minio.internal:9000"));
        assert!(s3.allow_http, "secure: false");
        assert_eq!(s3.access_key_id.as_deref(), Some("AKIAEXAMPLEKEY"));
        assert_eq!(
            s3.secret_access_key.as_deref(),
            Some("wJalrXUtnFEMI/K7MDENG")
        );
        assert_eq!(s3.prefix.as_deref(), Some("registry/v2"));
        for key in [
            "encrypt",
            "v4auth",
            "chunksize",
            "multipartcopythresholdsize",
            "storageclass",
        ] {
            assert!(has_warning(&config, &format!("storage.s3.{key}")), "{key}");
        }
    }

    #[test]
    fn s3_is_https_only_unless_insecure_or_an_http_endpoint() {
        let https = load("storage: {s3: {bucket: b, region: us-east-1}}");
        let BackendConfig::S3(s3) = https.storage.backend else {
            panic!()
        };
        assert!(!s3.allow_http && s3.endpoint.is_none() && s3.access_key_id.is_none());
        let minio = load("storage: {s3: {bucket: b, regionendpoint: 'http://127.0.0.1:9000'}}");
        let BackendConfig::S3(s3) = minio.storage.backend else {
            panic!()
        };
        assert!(s3.allow_http);
        assert_eq!(s3.region, "us-east-1", "region defaults with an endpoint");
    }

    #[test]
    fn s3_without_bucket_or_region_names_the_key() {
        assert!(fail("storage: {s3: {region: us-east-1}}").contains("storage.s3.bucket: required"));
        assert!(fail("storage: {s3: {bucket: b}}").contains("storage.s3.region: required"));
    }

    #[test]
    fn s3_access_key_without_secret_key_names_the_missing_key() {
        let e = fail("storage: {s3: {bucket: b, region: r, accesskey: AKIA}}");
        assert!(e.contains("storage.s3.secretkey: required"), "{e}");
    }

    #[test]
    fn azure_form_maps_onto_the_azure_backend() {
        let config = load(
            "storage:
  azure:
    accountname: myaccount
    accountkey: c2VjcmV0LWtleQ==
    container: registry
    realm: core.chinacloudapi.cn
    rootdirectory: /layers
    copy_status_poll_max_retry: 10
",
        );
        let BackendConfig::Azure(az) = &config.storage.backend else {
            panic!()
        };
        assert_eq!(az.account, "myaccount");
        assert_eq!(az.access_key.as_deref(), Some("c2VjcmV0LWtleQ=="));
        assert_eq!(az.container, "registry");
        assert_eq!(
            az.endpoint.as_deref(),
            Some("https://myaccount.blob.core.chinacloudapi.cn")
        );
        assert!(!az.allow_http);
        assert_eq!(az.prefix.as_deref(), Some("layers"));
        assert!(has_warning(
            &config,
            "storage.azure.copy_status_poll_max_retry"
        ));
    }

    #[test]
    fn azure_serviceurl_reaches_azurite_over_http() {
        let config = load(
            "storage:
  azure:
    accountname: devstoreaccount1
    accountkey: Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq
    container: registry
    serviceurl: http://127.0.0.1:10000/devstoreaccount1
    realm: core.windows.net
",
        );
        let BackendConfig::Azure(az) = config.storage.backend else {
            panic!()
        };
        assert_eq!(
            az.endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        assert!(az.allow_http);
    }

    #[test]
    fn azure_without_a_shared_key_is_refused() {
        let e = fail("storage: {azure: {accountname: a, container: c}}");
        assert!(e.contains("storage.azure.accountkey: required"), "{e}");
        let e = fail(
            "storage: {azure: {accountname: a, container: c, credentials: {type: client_secret}}}",
        );
        assert!(e.contains("storage.azure.credentials: "), "{e}");
    }

    #[test]
    fn inmemory_driver_takes_null_empty_or_the_short_form() {
        for yaml in [
            "storage:\n  inmemory:\n",
            "storage: {inmemory: {}}",
            "storage: inmemory",
        ] {
            assert_eq!(load(yaml).storage.backend, BackendConfig::Memory, "{yaml}");
        }
        let e = fail("storage: {inmemory: {size: 1}}");
        assert!(e.contains("storage.inmemory.size: unknown key"), "{e}");
    }

    #[test]
    fn filesystem_without_rootdirectory_uses_distributions_default_with_a_warning() {
        let config = load("storage: {filesystem: {maxthreads: 100}}");
        assert_eq!(
            config.storage.backend,
            BackendConfig::Filesystem(FilesystemConfig {
                root: PathBuf::from("/var/lib/registry")
            })
        );
        assert!(has_warning(&config, "storage.filesystem.rootdirectory"));
        assert!(has_warning(&config, "storage.filesystem.maxthreads"));
    }

    #[test]
    fn s3aws_is_an_alias_of_s3() {
        let config = load("storage: {s3aws: {bucket: b, region: r}}");
        assert!(matches!(config.storage.backend, BackendConfig::S3(_)));
    }

    #[test]
    fn two_drivers_are_refused() {
        let e = fail("storage:\n  filesystem: {rootdirectory: /a}\n  s3: {bucket: b, region: r}\n");
        assert!(
            e.contains(
                "storage: exactly one storage driver may be configured, found filesystem, s3"
            ),
            "{e}"
        );
    }

    #[test]
    fn other_distribution_drivers_are_unsupported() {
        for driver in ["gcs", "swift", "oss"] {
            let e = fail(&format!("storage:\n  {driver}:\n    bucket: b\n"));
            assert!(
                e.contains(&format!(
                    "storage.{driver}: unsupported storage driver {driver}"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn a_file_without_a_storage_driver_is_refused() {
        assert!(fail("version: 0.1\n").contains("storage: required"));
        assert!(fail("").contains("storage: required"));
        let e = fail("storage:\n  delete: {enabled: true}\n");
        assert!(e.contains("storage: no storage driver configured"), "{e}");
    }
}
