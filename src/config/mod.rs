//! The server's configuration: YAML in the CNCF Distribution `config.yml` layout.
//!
//! An existing Distribution `config.yml` loads unchanged as far as its `storage`, `http` (with
//! `http.debug`), `log`, `health`, `auth` and `notifications` sections go. Every key is
//! accounted for:
//!
//! - keys layerstore honours are mapped onto [`Config`];
//! - Distribution keys that are safe to ignore are accepted and listed in
//!   [`Config::warnings`] (printed at start and by `check-config`);
//! - Distribution features whose absence would change what the registry lets through
//!   (`proxy`, Let's Encrypt, `auth.silly`, an unknown auth kind) are refused;
//! - any other key is an error naming its full dotted path, so a typo such as
//!   `storage.filesystem.rootdirectroy` never silently falls back to a default.
//!
//! One module per section, each with its reader and its tests: `storage` (the driver, `delete`),
//! `cache`, `maintenance` (and layerstore's `gc`), `http` (TLS and the debug server), `log`,
//! `health`, `auth`, `notifications`. The rules
//! they share (taking keys, typed values, the report of errors and warnings) are in `report`,
//! the `REGISTRY_*` environment in `env`.
//!
//! Defaults follow Distribution for a configuration file (delete disabled, no blob-descriptor
//! cache unless `storage.cache.blobdescriptor` says so, upload purging enabled with `168h` /
//! `24h`). Without any file, `layerstore serve` uses [`Config::default`], which enables
//! delete and the cache.
//!
//! # Extensions
//!
//! One key is layerstore's own, `storage.maintenance.gc`: garbage collection run by `serve`
//! on a schedule ([`GcSchedule`]), off by default.
//!
//! ```yaml
//! storage:
//!   maintenance:
//!     uploadpurging: {enabled: true, age: 168h, interval: 24h, dryrun: false}  # Distribution's
//!     gc:                     # layerstore's: what `layerstore gc` does, every interval
//!       enabled: true         # default false
//!       interval: 24h         # default 24h; each wait lengthened by up to a tenth (jitter)
//!       grace: 1h             # default 1h; 0s is valid (the run still waits 3 s)
//!       deleteuntagged: false # default false: also remove manifests no tag reaches
//!       dryrun: false         # default false: only log what a run would remove
//! ```
//!
//! It sits beside `uploadpurging` because it is the same kind of thing (background storage
//! maintenance with an interval and a dry run) and reads the same way; the section is read by
//! the same rules (unknown keys and bad values are errors naming the key,
//! `REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED=true` works), and Distribution, which reads
//! `maintenance` as a free-form map, ignores it, so one file still runs on both. Runs exclude
//! each other through the store's GC lock; enable the schedule on one replica (a run that
//! finds another one alive gives up, logged).
//!
//! Environment variables override the file as in Distribution: `REGISTRY_<SECTION>_<KEY>...`
//! (`_` separates levels, list items by index: `REGISTRY_HTTP_TLS_CLIENTCAS_0`). The value is
//! read as YAML. Variables are applied in name order, so `REGISTRY_STORAGE=s3` (switch driver)
//! comes before `REGISTRY_STORAGE_S3_BUCKET`. A variable whose first part is not a
//! configuration section (such as an unrelated `REGISTRY_URL`) is ignored with a warning, as
//! Distribution does; below a known section the keys are checked like the file's. They apply
//! without a file too, on top of the server defaults: a container started with
//! `REGISTRY_AUTH=htpasswd` and its `REGISTRY_AUTH_HTPASSWD_*` gets htpasswd, and one whose
//! auth settings cannot be honoured is refused, never served open.

mod auth;
mod cache;
mod env;
mod gc;
mod health;
mod http;
mod log;
mod maintenance;
mod notifications;
mod redis;
mod report;
mod storage;

use std::fmt::{Display, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use layerstore::backend::FilesystemConfig;
use layerstore::cache::{MemoryCache, MemoryCacheConfig, RedisCache, RedisCacheConfig};
use layerstore::upload::PurgerConfig;
use layerstore::{Backend, BackendConfig, Store};
use serde_yaml_ng::{Mapping, Value};

pub use auth::{Auth, TokenConfig};
pub use gc::GcSchedule;
pub use health::{Health, StorageDriverCheck};
pub use http::{Debug, Http, Tls};
pub use log::{Log, LogFormat};
pub use notifications::{Endpoint, Notifications};
pub use storage::Storage;

use env::{apply_env, process_env};
use http::parse_http;
use log::parse_log;
use report::{Report, Section, is_set, scalar_text};
use storage::parse_storage;

/// Everything `layerstore serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub storage: Storage,
    pub http: Http,
    pub log: Log,
    /// `health`: the checks of `/debug/health`.
    pub health: Health,
    /// `auth`: who may use the registry.
    pub auth: Auth,
    /// `notifications`: webhook endpoints for the registry's events.
    pub notifications: Notifications,
    /// `redis`: the server of the shared cache, when `storage.cache.blobdescriptor: redis`.
    pub redis: Option<RedisCacheConfig>,
    /// Keys that were present but are not supported, by name; printed at start.
    pub warnings: Vec<String>,
    /// The `REGISTRY_*` environment variables that were applied, by name.
    pub env_overrides: Vec<String>,
}

impl Default for Config {
    /// The server's defaults when no configuration file is given. They differ from a file's
    /// defaults on purpose: a file follows Distribution (delete off, no cache unless asked
    /// for), while a bare `layerstore serve` is a ready-to-use registry with delete and the
    /// cache on.
    fn default() -> Self {
        Self {
            storage: Storage {
                backend: BackendConfig::default(),
                delete_enabled: true,
                cache: Some(MemoryCacheConfig::default()),
                redis_cache: false,
                purging: PurgerConfig::default(),
                gc: GcSchedule::default(),
                read_only: false,
            },
            http: Http {
                addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
                tls: None,
                headers: Vec::new(),
                debug: None,
            },
            log: Log::default(),
            health: Health::default(),
            auth: Auth::None,
            notifications: Notifications::default(),
            redis: None,
            warnings: Vec::new(),
            env_overrides: Vec::new(),
        }
    }
}

const ENV_PREFIX: &str = "REGISTRY_";

/// The top-level sections of a Distribution configuration (everything else is unknown).
const SECTIONS: &[&str] = &[
    "version",
    "log",
    "loglevel",
    "storage",
    "http",
    "auth",
    "proxy",
    "notifications",
    "health",
    "redis",
    "middleware",
    "reporting",
    "validation",
    "compatibility",
    "catalog",
];

impl Config {
    /// The configuration from `path` (or the defaults), then the `REGISTRY_*` environment,
    /// then the command-line overrides.
    pub fn resolve(
        path: Option<&Path>,
        addr: Option<SocketAddr>,
        root: Option<PathBuf>,
    ) -> Result<Self, String> {
        let mut config = match path {
            Some(path) => Self::load(path)?,
            None => Self::from_env(&process_env())?,
        };
        if let Some(addr) = addr {
            config.http.addr = addr;
        }
        if let Some(root) = root {
            config.storage.backend = BackendConfig::Filesystem(FilesystemConfig { root });
        }
        Ok(config)
    }

    /// Reads a YAML file and applies the process's `REGISTRY_*` environment variables.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_yaml(&text, &process_env()).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a configuration file's text, with `env` (name, value) as the environment.
    pub fn from_yaml(text: &str, env: &[(String, String)]) -> Result<Self, String> {
        let mut document: Value =
            serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        document
            .apply_merge()
            .map_err(|e| format!("invalid YAML: {e}"))?;
        Self::from_document(document, env, Defaults::File)
    }

    /// The server defaults ([`Config::default`]) with `env` (name, value) applied; exactly the
    /// defaults when no `REGISTRY_*` variable is set.
    pub fn from_env(env: &[(String, String)]) -> Result<Self, String> {
        if !env.iter().any(|(name, _)| name.starts_with(ENV_PREFIX)) {
            return Ok(Self::default());
        }
        Self::from_document(Value::Mapping(Mapping::new()), env, Defaults::Server)
    }

    fn from_document(
        mut document: Value,
        env: &[(String, String)],
        defaults: Defaults,
    ) -> Result<Self, String> {
        let mut report = Report::default();
        if document.is_null() {
            document = Value::Mapping(Mapping::new());
        }
        let env_overrides = apply_env(&mut document, env, &mut report);
        let config = parse_root(&document, defaults, &mut report);
        if report.errors.is_empty() {
            Ok(Self {
                warnings: report.warnings,
                env_overrides,
                ..config
            })
        } else {
            let mut message = format!(
                "invalid configuration ({} error{}):",
                report.errors.len(),
                if report.errors.len() == 1 { "" } else { "s" }
            );
            for error in &report.errors {
                let _ = write!(message, "\n  {error}");
            }
            Err(message)
        }
    }

    /// Opens the store this configuration describes.
    pub fn open_store(&self) -> Result<Store, String> {
        let backend = Backend::from_config(&self.storage.backend).map_err(|e| e.to_string())?;
        let cache = match (&self.redis, self.storage.redis_cache) {
            (Some(redis), true) => Some(Arc::new(
                RedisCache::new(redis.clone()).map_err(|e| e.to_string())?,
            )
                as Arc<dyn layerstore::cache::BlobDescriptorCache>),
            _ => self.storage.cache.map(|c| {
                Arc::new(MemoryCache::new(c)) as Arc<dyn layerstore::cache::BlobDescriptorCache>
            }),
        };
        Ok(Store::with_cache(backend, cache))
    }

    /// A human-readable account of what the configuration resolved to; secrets are redacted.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        self.storage.describe(&mut out);
        if let (Some(redis), true) = (&self.redis, self.storage.redis_cache) {
            redis::describe(&mut out, redis);
        }
        self.http.describe(&mut out);
        self.auth.describe(&mut out);
        self.log.describe(&mut out);
        self.health.describe(&mut out);
        self.notifications.describe(&mut out);
        if !self.env_overrides.is_empty() {
            out.push_str("environment overrides\n");
            for name in &self.env_overrides {
                let _ = writeln!(out, "  {name}");
            }
        }
        if self.warnings.is_empty() {
            out.push_str("no warnings\n");
        } else {
            let _ = writeln!(out, "warnings ({})", self.warnings.len());
            for warning in &self.warnings {
                let _ = writeln!(out, "  {warning}");
            }
        }
        out
    }
}

/// One `key value` line of [`Config::describe`].
fn row(out: &mut String, key: &str, value: &dyn Display) {
    let _ = writeln!(out, "  {key:<22} {value}");
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn enabled(b: bool) -> &'static str {
    if b { "enabled" } else { "disabled" }
}

fn redacted(present: bool, absent: &str) -> &str {
    if present { "<redacted>" } else { absent }
}

/// `168h`, `1h30m`, `10s`, `1h0m0.5s`: the Go notation the file uses.
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let nanos = d.subsec_nanos();
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if nanos > 0 {
        let _ = write!(out, "{}ms", s * 1000 + u64::from(nanos) / 1_000_000);
    } else if s > 0 || out.is_empty() {
        let _ = write!(out, "{s}s");
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defaults {
    /// A configuration file: Distribution's defaults, `storage` required.
    File,
    /// No file (environment only): the server's defaults.
    Server,
}

// ---- sections -------------------------------------------------------------------------------

fn parse_root(document: &Value, defaults: Defaults, report: &mut Report) -> Config {
    let mut config = Config::default();
    if defaults == Defaults::File {
        config.storage.delete_enabled = false;
        config.storage.cache = None;
    }
    let Some(mut root) = Section::new(report, "", document) else {
        return config;
    };

    if let Some(field) = root.take("version") {
        let text = scalar_text(field.value);
        if text != "0.1" && !field.value.is_null() {
            report.warn(
                &field.key,
                format!("version `{text}` is not 0.1; read with the 0.1 layout"),
            );
        }
    }

    let loglevel = root.take("loglevel");
    let log = root.take("log");
    config.log = parse_log(report, log.as_ref(), loglevel.as_ref());

    config.storage = parse_storage(
        report,
        root.take("storage").as_ref(),
        defaults,
        config.storage,
    );
    if let Some(field) = root.take("http") {
        config.http = parse_http(report, &field);
    }

    let redis = root.take("redis");
    match (&redis, config.storage.redis_cache) {
        (Some(field), true) => config.redis = redis::parse_redis(report, field),
        (Some(field), false) => report.warn(
            &field.key,
            "unused: storage.cache.blobdescriptor is not redis",
        ),
        (None, true) => report.error(
            "storage.cache.blobdescriptor",
            "redis needs the redis section (at least redis.addr)",
        ),
        (None, false) => {}
    }

    if let Some(field) = root.take("health") {
        config.health = health::parse_health(report, &field);
    }
    if let Some(field) = root.take("auth") {
        config.auth = auth::parse_auth(report, &field);
    }
    if let Some(field) = root.take("notifications") {
        config.notifications = notifications::parse_notifications(report, &field);
    }
    if let Some(field) = root.take("proxy")
        && is_set(field.value)
    {
        report.error(
            &field.key,
            "pull-through cache mode is not supported: a proxy cache is a different product, \
             and serving this store in place of the upstream would be wrong; remove the section",
        );
    }
    for (key, why) in [
        (
            "middleware",
            "no registry, repository or storage middleware",
        ),
        ("reporting", "no error reporting services"),
        (
            "validation",
            "manifest URL and index validation settings are not applied",
        ),
        (
            "compatibility",
            "schema 1 compatibility settings are not applied",
        ),
        ("catalog", "the catalog page size is not configurable"),
    ] {
        root.ignore(report, key, why);
    }
    root.finish(report);
    config
}

/// What the section tests share: a file's text in, the configuration or the error out.
#[cfg(test)]
pub(crate) mod testing {
    pub(crate) use super::Config;

    pub(crate) fn load(yaml: &str) -> Config {
        Config::from_yaml(yaml, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) fn fail(yaml: &str) -> String {
        match Config::from_yaml(yaml, &[]) {
            Ok(config) => panic!("accepted: {config:#?}"),
            Err(e) => e,
        }
    }

    pub(crate) fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    pub(crate) fn has_warning(config: &Config, key: &str) -> bool {
        config
            .warnings
            .iter()
            .any(|w| w.starts_with(&format!("{key}: ")))
    }

    pub(crate) const FS: &str = "storage:\n  filesystem:\n    rootdirectory: /srv/registry\n";

    /// The shape of the `config.yml` shipped in Distribution's image, plus common additions.
    pub(crate) const DISTRIBUTION_CONFIG: &str = r#"
version: 0.1
log:
  level: debug
  formatter: text
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: true
      age: 72h
      interval: 1h30m
      dryrun: false
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"#;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use std::time::Duration;

    use layerstore::upload::PurgerConfig;

    use super::cache::DISTRIBUTION_CACHE_SIZE;

    #[test]
    fn distribution_config_yml_loads_with_its_values() {
        let config = load(DISTRIBUTION_CONFIG);
        assert_eq!(
            config.storage.backend,
            BackendConfig::Filesystem(FilesystemConfig {
                root: PathBuf::from("/var/lib/registry")
            })
        );
        assert!(config.storage.delete_enabled);
        let cache = config.storage.cache.expect("inmemory cache");
        assert_eq!(cache.capacity, DISTRIBUTION_CACHE_SIZE);
        let purging = config.storage.purging;
        assert!(purging.enabled);
        assert_eq!(purging.options.older_than, Duration::from_secs(72 * 3600));
        assert_eq!(purging.interval, Duration::from_secs(5400));
        assert!(!purging.options.dry_run);
        assert_eq!(config.http.addr, SocketAddr::from(([0, 0, 0, 0], 5000)));
        assert!(config.http.tls.is_none());
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(
            config.log.fields,
            [("service".to_owned(), serde_json::json!("registry"))]
        );
        assert_eq!(
            config.health.storage_driver,
            Some(StorageDriverCheck {
                interval: Duration::from_secs(10),
                threshold: 3
            })
        );
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let (name, values) = &config.http.headers[0];
        assert_eq!((name.as_str(), values.len()), ("x-content-type-options", 1));
        assert_eq!(values[0], "nosniff");
    }

    #[test]
    fn a_file_gets_distributions_defaults() {
        let config = load(FS);
        assert!(!config.storage.delete_enabled);
        assert!(config.storage.cache.is_none());
        assert_eq!(config.storage.purging, PurgerConfig::default());
        assert_eq!(config.http.addr, SocketAddr::from(([127, 0, 0, 1], 5000)));
        assert_eq!(config.log.level, "info");
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn no_file_and_no_environment_is_the_server_default() {
        let config = Config::from_env(&env(&[("PATH", "/bin")])).unwrap();
        assert!(config.storage.delete_enabled);
        assert_eq!(config.storage.cache, Some(MemoryCacheConfig::default()));
        assert_eq!(config.storage.backend, BackendConfig::default());
        assert!(config.warnings.is_empty() && config.env_overrides.is_empty());
    }

    #[test]
    fn an_unknown_key_is_an_error_with_its_full_dotted_name() {
        let e = fail("storage:\n  filesystem:\n    rootdirectroy: /srv\n");
        assert!(
            e.contains("storage.filesystem.rootdirectroy: unknown key"),
            "{e}"
        );
        let e = fail(&format!("{FS}htp:\n  addr: :5000\n"));
        assert!(e.contains("htp: unknown key"), "{e}");
        let e = fail(&format!("{FS}http:\n  tls:\n    certficate: /x\n"));
        assert!(e.contains("http.tls.certficate: unknown key"), "{e}");
        let e = fail(&format!("{FS}  delete: {{enable: true}}\n"));
        assert!(e.contains("storage.delete.enable: unknown key"), "{e}");
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let e =
            fail("storage: {filesystem: {rootdir: /x}}\nhttp: {adr: ':1'}\nlog: {levle: info}\n");
        assert!(e.starts_with("invalid configuration (3 errors):"), "{e}");
        for key in ["storage.filesystem.rootdir", "http.adr", "log.levle"] {
            assert!(e.contains(&format!("{key}: unknown key")), "{e}");
        }
    }

    #[test]
    fn a_wrong_type_names_the_key_and_the_reason() {
        let e = fail(&format!("{FS}  delete: {{enabled: [true]}}\n"));
        assert!(
            e.contains("storage.delete.enabled: expected true or false, found a list"),
            "{e}"
        );
        let e = fail(&format!("{FS}  delete: {{enabled: maybe}}\n"));
        assert!(
            e.contains("storage.delete.enabled: expected true or false"),
            "{e}"
        );
        let e = fail("storage: {filesystem: {rootdirectory: {a: b}}}");
        assert!(
            e.contains("storage.filesystem.rootdirectory: expected a string"),
            "{e}"
        );
        let e = fail(&format!("{FS}http: [':5000']\n"));
        assert!(e.contains("http: expected a mapping"), "{e}");
        let e = fail("- storage");
        assert!(e.contains("(top level): expected a mapping"), "{e}");
    }

    #[test]
    fn ignored_keys_are_warnings_naming_the_key() {
        let config = load(&format!(
            "{FS}  redirect: {{disable: true}}\n  tag: {{concurrencylimit: 8}}
http:
  secret: s3cr3t-value
  prefix: /my/registry/
  host: https://registry.example.com
  relativeurls: false
  draintimeout: 60s
  http2: {{disabled: false}}
middleware: {{storage: [{{name: cloudfront}}]}}
redis: {{addr: 'localhost:6379'}}
validation: {{disabled: true}}
reporting: {{}}
compatibility: {{}}
"
        ));
        for key in [
            "storage.redirect",
            "storage.tag",
            "http.secret",
            "http.prefix",
            "http.host",
            "http.relativeurls",
            "http.draintimeout",
            "http.http2",
            "middleware",
            "redis",
            "validation",
            "reporting",
            "compatibility",
        ] {
            assert!(has_warning(&config, key), "{key}: {:?}", config.warnings);
        }
        assert!(
            config.warnings.iter().all(|w| !w.contains("s3cr3t-value")),
            "a warning never repeats a value"
        );
    }

    #[test]
    fn proxy_is_refused() {
        let e = fail(&format!(
            "{FS}proxy:\n  remoteurl: https://registry-1.docker.io\n"
        ));
        assert!(
            e.contains("proxy: pull-through cache mode is not supported"),
            "{e}"
        );
    }

    #[test]
    fn invalid_yaml_is_an_error_not_a_panic() {
        let e = fail("storage: [filesystem\n");
        assert!(e.starts_with("invalid YAML"), "{e}");
        let e = fail("storage: {}\nstorage: {}\n");
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn describe_redacts_secrets() {
        let s3 = load(
            "storage: {s3: {bucket: b, region: r, accesskey: AKIAIOSFODNN7EXAMPLE, \
             secretkey: wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY}}\nhttp: {secret: hmac-secret}\n",
        );
        let text = s3.describe();
        assert!(
            !text.contains("wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"),
            "{text}"
        );
        assert!(!text.contains("AKIAIOSFODNN7EXAMPLE"), "{text}");
        assert!(!text.contains("hmac-secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        let azure =
            load("storage: {azure: {accountname: a, accountkey: azure-shared-key, container: c}}");
        let text = azure.describe();
        assert!(!text.contains("azure-shared-key"), "{text}");
        assert!(
            text.contains("accountkey") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[test]
    fn describe_gives_the_resolved_values_and_the_warnings() {
        let text = load(DISTRIBUTION_CONFIG).describe();
        for expected in [
            "driver                 filesystem",
            "rootdirectory          /var/lib/registry",
            "delete                 enabled",
            "cache.blobdescriptor   inmemory, 10000 entries",
            "uploadpurging          enabled, age 72h, interval 1h30m, dryrun false",
            "addr                   0.0.0.0:5000",
            "tls                    off",
            "level                  debug",
            "formatter              text",
            "fields                 service=\"registry\"",
            "accesslog              on",
            "storagedriver          enabled, interval 10s, threshold 3",
            "no warnings",
            "headers                x-content-type-options: nosniff",
            "debug                  off",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
    }

    #[test]
    fn resolve_applies_command_line_overrides_last() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "storage: {inmemory: }\nhttp: {addr: ':5000'}\n",
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 9999));
        let config =
            Config::resolve(Some(file.path()), Some(addr), Some(PathBuf::from("/tmp/x"))).unwrap();
        assert_eq!(config.http.addr, addr);
        assert_eq!(
            config.storage.backend,
            BackendConfig::Filesystem(FilesystemConfig {
                root: PathBuf::from("/tmp/x")
            })
        );
        let e =
            Config::resolve(Some(Path::new("/nonexistent/config.yml")), None, None).unwrap_err();
        assert!(e.contains("cannot read /nonexistent/config.yml"), "{e}");
    }

    #[test]
    fn go_duration_formats_like_the_file() {
        assert_eq!(go_duration(Duration::from_secs(168 * 3600)), "168h");
        assert_eq!(go_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    /// Every value of a full configuration replaced by every YAML type: errors, never panics.
    #[test]
    fn no_value_of_any_type_anywhere_panics() {
        fn paths(value: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
            match value {
                Value::Mapping(m) => {
                    for (k, v) in m {
                        prefix.push(k.clone());
                        out.push(prefix.clone());
                        paths(v, prefix, out);
                        prefix.pop();
                    }
                }
                Value::Sequence(s) => {
                    for (i, v) in s.iter().enumerate() {
                        prefix.push(Value::from(i as u64));
                        out.push(prefix.clone());
                        paths(v, prefix, out);
                        prefix.pop();
                    }
                }
                _ => {}
            }
        }
        fn at<'a>(value: &'a mut Value, path: &[Value]) -> &'a mut Value {
            path.iter().fold(value, |v, k| match v {
                Value::Mapping(m) => m.get_mut(k).unwrap(),
                Value::Sequence(s) => &mut s[usize::try_from(k.as_u64().unwrap()).unwrap()],
                _ => unreachable!(),
            })
        }
        let full = format!(
            "{DISTRIBUTION_CONFIG}auth: {{htpasswd: {{path: /p}}}}\nproxy: {{remoteurl: x}}\n\
             loglevel: info\n"
        );
        let base: Value = serde_yaml_ng::from_str(&full).unwrap();
        let s3: Value = serde_yaml_ng::from_str(
            "storage: {s3: {bucket: b, region: r, accesskey: a, secretkey: s, secure: true}, \
             cache: {blobdescriptor: inmemory, blobdescriptorsize: 5}}\n\
             http: {tls: {certificate: /c, key: /k, clientcas: [/a]}}\n\
             notifications: {events: {includereferences: true}, endpoints: [{name: a, \
             url: 'http://h/e', headers: {A: [b]}, timeout: 1s, threshold: 3, backoff: 1s, \
             disabled: false, ignoredmediatypes: [m], ignore: {mediatypes: [n], \
             actions: [pull]}, queuesize: 5}]}",
        )
        .unwrap();
        let azure: Value = serde_yaml_ng::from_str(
            "storage: {azure: {accountname: a, accountkey: k, container: c, realm: r, \
             serviceurl: u, credentials: {type: t}}, maintenance: {readonly: {enabled: false}, \
             gc: {enabled: true, interval: 1h, grace: 0s, deleteuntagged: true, dryrun: false}}}",
        )
        .unwrap();
        let replacements: Vec<Value> = [
            "~",
            "true",
            "-3",
            "1.5",
            "'text'",
            "''",
            "[1, [2]]",
            "{a: {b: c}}",
            "7: x",
        ]
        .iter()
        .map(|y| serde_yaml_ng::from_str(y).unwrap())
        .collect();
        let mut runs = 0;
        for document in [base, s3, azure] {
            let mut all = Vec::new();
            paths(&document, &mut Vec::new(), &mut all);
            for path in &all {
                for replacement in &replacements {
                    let mut mutated = document.clone();
                    *at(&mut mutated, path) = replacement.clone();
                    let _ = Config::from_document(mutated, &[], Defaults::File);
                    runs += 1;
                }
            }
        }
        assert!(runs > 300, "{runs}");
    }
}
