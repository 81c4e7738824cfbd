//! The server's configuration: YAML in the CNCF Distribution `config.yml` layout.
//!
//! An existing Distribution `config.yml` loads unchanged as far as its `storage`, `http` and
//! `log` sections go. Every key is accounted for:
//!
//! - keys layerstore honours are mapped onto [`Config`];
//! - Distribution keys that are safe to ignore are accepted and listed in
//!   [`Config::warnings`] (printed at start and by `check-config`);
//! - Distribution features whose absence would change what the registry lets through
//!   (`auth`, `proxy`, TLS client certificates, Let's Encrypt, read-only mode) are refused;
//! - any other key is an error naming its full dotted path, so a typo such as
//!   `storage.filesystem.rootdirectroy` never silently falls back to a default.
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
//! `REGISTRY_AUTH_HTPASSWD_PATH` must be refused, not served open.

use std::fmt::{Display, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use layerstore::backend::{AzureConfig, FilesystemConfig, S3Config};
use layerstore::cache::{MemoryCache, MemoryCacheConfig};
use layerstore::gc::GcOptions;
use layerstore::upload::{PurgeOptions, PurgerConfig};
use layerstore::{Backend, BackendConfig, Store};
use serde_yaml_ng::{Mapping, Value};

/// Everything `layerstore serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub storage: Storage,
    pub http: Http,
    pub log: Log,
    /// Keys that were present but are not supported, by name; printed at start.
    pub warnings: Vec<String>,
    /// The `REGISTRY_*` environment variables that were applied, by name.
    pub env_overrides: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Storage {
    pub backend: BackendConfig,
    pub delete_enabled: bool,
    /// `None`: no blob-descriptor cache.
    pub cache: Option<MemoryCacheConfig>,
    pub purging: PurgerConfig,
    /// `storage.maintenance.gc`, a layerstore extension.
    pub gc: GcSchedule,
}

/// Garbage collection run by `serve` on a schedule: `storage.maintenance.gc`, a layerstore
/// extension beside Distribution's `uploadpurging` (Distribution reads `maintenance` as a
/// free-form map and ignores the key). Off unless `enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcSchedule {
    pub enabled: bool,
    /// Time between runs; each wait is lengthened by a random jitter of up to a tenth of it,
    /// as the upload purger's.
    pub interval: Duration,
    /// What each run does: `grace`, `deleteuntagged`, `dryrun`.
    pub options: GcOptions,
}

impl Default for GcSchedule {
    /// Off; when enabled: daily, one hour of grace, untagged manifests kept, a real run.
    fn default() -> Self {
        Self {
            enabled: false,
            interval: Duration::from_secs(24 * 3600),
            options: GcOptions::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Http {
    pub addr: SocketAddr,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Log {
    /// A `tracing` filter level: error, warn, info, debug or trace.
    pub level: String,
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
                purging: PurgerConfig::default(),
                gc: GcSchedule::default(),
            },
            http: Http {
                addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
                tls: None,
            },
            log: Log {
                level: "info".to_owned(),
            },
            warnings: Vec::new(),
            env_overrides: Vec::new(),
        }
    }
}

/// Distribution's filesystem root when `rootdirectory` is not given.
const DISTRIBUTION_ROOT: &str = "/var/lib/registry";
/// Distribution's `storage.cache.blobdescriptorsize` default.
const DISTRIBUTION_CACHE_SIZE: u64 = 10_000;
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
        let cache = self.storage.cache.map(|c| {
            Arc::new(MemoryCache::new(c)) as Arc<dyn layerstore::cache::BlobDescriptorCache>
        });
        Ok(Store::with_cache(backend, cache))
    }

    /// A human-readable account of what the configuration resolved to; secrets are redacted.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let storage = &self.storage;
        out.push_str("storage\n");
        match &storage.backend {
            BackendConfig::Filesystem(fs) => {
                row(&mut out, "driver", &"filesystem");
                row(&mut out, "rootdirectory", &fs.root.display());
            }
            BackendConfig::Memory => row(&mut out, "driver", &"inmemory (contents lost at exit)"),
            BackendConfig::S3(s3) => {
                row(&mut out, "driver", &"s3");
                row(&mut out, "bucket", &s3.bucket);
                row(&mut out, "region", &s3.region);
                row(
                    &mut out,
                    "regionendpoint",
                    &s3.endpoint.as_deref().unwrap_or("(AWS)"),
                );
                row(&mut out, "plain http allowed", &yes_no(s3.allow_http));
                let key_id = s3.access_key_id.as_deref().map(redact_key_id);
                row(
                    &mut out,
                    "accesskey",
                    &key_id.as_deref().unwrap_or("(from AWS_ACCESS_KEY_ID)"),
                );
                row(
                    &mut out,
                    "secretkey",
                    &redacted(
                        s3.secret_access_key.is_some(),
                        "(from AWS_SECRET_ACCESS_KEY)",
                    ),
                );
                if s3.session_token.is_some() {
                    row(&mut out, "sessiontoken", &"<redacted>");
                }
                row(
                    &mut out,
                    "rootdirectory",
                    &s3.prefix.as_deref().unwrap_or("(bucket root)"),
                );
            }
            BackendConfig::Azure(az) => {
                row(&mut out, "driver", &"azure");
                row(&mut out, "accountname", &az.account);
                row(
                    &mut out,
                    "accountkey",
                    &redacted(az.access_key.is_some(), "(not set)"),
                );
                row(&mut out, "container", &az.container);
                let default_url = format!("https://{}.blob.core.windows.net", az.account);
                row(
                    &mut out,
                    "serviceurl",
                    &az.endpoint.as_deref().unwrap_or(&default_url),
                );
                row(&mut out, "plain http allowed", &yes_no(az.allow_http));
                row(
                    &mut out,
                    "rootdirectory",
                    &az.prefix.as_deref().unwrap_or("(container root)"),
                );
            }
        }
        row(&mut out, "delete", &enabled(storage.delete_enabled));
        let cache = match &storage.cache {
            None => "none".to_owned(),
            Some(c) if c.capacity == u64::MAX => format!(
                "inmemory, unlimited entries, time-to-live {}",
                go_duration(c.time_to_live)
            ),
            Some(c) => format!(
                "inmemory, {} entries, time-to-live {}",
                c.capacity,
                go_duration(c.time_to_live)
            ),
        };
        row(&mut out, "cache.blobdescriptor", &cache);
        let purging = &storage.purging;
        let purging = if purging.enabled {
            format!(
                "enabled, age {}, interval {}, dryrun {}",
                go_duration(purging.options.older_than),
                go_duration(purging.interval),
                purging.options.dry_run
            )
        } else {
            "disabled".to_owned()
        };
        row(&mut out, "uploadpurging", &purging);
        let gc = &storage.gc;
        let gc = if gc.enabled {
            format!(
                "enabled (layerstore extension), interval {}, grace {}, deleteuntagged {}, \
                 dryrun {}",
                go_duration(gc.interval),
                go_duration(gc.options.grace),
                gc.options.delete_untagged,
                gc.options.dry_run
            )
        } else {
            "disabled (layerstore extension)".to_owned()
        };
        row(&mut out, "gc", &gc);
        out.push_str("http\n");
        row(&mut out, "addr", &self.http.addr);
        match &self.http.tls {
            None => row(&mut out, "tls", &"off (plain HTTP)"),
            Some(tls) => {
                row(&mut out, "tls.certificate", &tls.certificate.display());
                row(&mut out, "tls.key", &tls.key.display());
            }
        }
        out.push_str("log\n");
        row(&mut out, "level", &self.log.level);
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

fn process_env() -> Vec<(String, String)> {
    // Non-UTF-8 variables cannot be REGISTRY_* settings layerstore reads; skip them.
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
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

/// An access key id is not a secret, but only its first characters are needed to recognise it.
fn redact_key_id(id: &str) -> String {
    let shown: String = id.chars().take(4).collect();
    format!("{shown}… (redacted)")
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

/// Errors and warnings, each starting with the full dotted key.
#[derive(Debug, Default)]
struct Report {
    errors: Vec<String>,
    warnings: Vec<String>,
    /// Dotted keys set from the environment, with the variable that set them.
    from_env: Vec<(String, String)>,
}

impl Report {
    fn origin(&self, key: &str) -> String {
        self.from_env
            .iter()
            .rev()
            .find(|(k, _)| {
                key == k
                    || key
                        .strip_prefix(k.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            })
            .map(|(_, var)| format!(" (set by {var})"))
            .unwrap_or_default()
    }

    fn error(&mut self, key: &str, why: impl Display) {
        let origin = self.origin(key);
        self.errors.push(format!("{key}: {why}{origin}"));
    }

    fn warn(&mut self, key: &str, why: impl Display) {
        let origin = self.origin(key);
        self.warnings.push(format!("{key}: {why}{origin}"));
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// One value and its full dotted key.
struct Field<'a> {
    key: String,
    value: &'a Value,
}

/// A mapping being read: every entry must be taken, ignored or refused, or it is reported as
/// an unknown key by [`Section::finish`].
struct Section<'a> {
    path: String,
    entries: Vec<(String, &'a Value, bool)>,
}

impl<'a> Section<'a> {
    /// `value` as a mapping (`null` reads as an empty one); `None` after reporting otherwise.
    fn new(report: &mut Report, path: &str, value: &'a Value) -> Option<Self> {
        let mapping = match value {
            Value::Null => {
                return Some(Self {
                    path: path.to_owned(),
                    entries: Vec::new(),
                });
            }
            Value::Mapping(m) => m,
            other => {
                report.error(
                    if path.is_empty() { "(top level)" } else { path },
                    format!("expected a mapping of keys, found {}", kind(other)),
                );
                return None;
            }
        };
        let mut entries = Vec::with_capacity(mapping.len());
        for (k, v) in mapping {
            match k {
                Value::String(s) => entries.push((s.clone(), v, false)),
                other => report.error(&join(path, &scalar_text(other)), "keys must be strings"),
            }
        }
        Some(Self {
            path: path.to_owned(),
            entries,
        })
    }

    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _, _)| k == key)
    }

    fn take(&mut self, key: &str) -> Option<Field<'a>> {
        let entry = self
            .entries
            .iter_mut()
            .find(|(k, _, used)| k == key && !used)?;
        entry.2 = true;
        Some(Field {
            key: join(&self.path, key),
            value: entry.1,
        })
    }

    /// Accepts `key` with a warning that it is ignored.
    fn ignore(&mut self, report: &mut Report, key: &str, why: &str) {
        if let Some(field) = self.take(key) {
            report.warn(&field.key, format!("ignored: {why}"));
        }
    }

    /// Reports every key that was not taken.
    fn finish(self, report: &mut Report) {
        for (key, _, used) in self.entries {
            if !used {
                report.error(&join(&self.path, &key), "unknown key");
            }
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => format!("<{}>", kind(other)),
    }
}

/// Whether a section's value actually configures something (not absent, null, empty).
fn is_set(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Number(_) | Value::Tagged(_) => true,
    }
}

// ---- typed values; `null` reads as absent, anything unreadable is reported -----------------

/// Booleans as YAML 1.1 (which Distribution's parser speaks) and Go's `strconv.ParseBool`
/// spell them, so `yes`, `on` and `"true"` keep working.
fn get_bool(report: &mut Report, field: &Field<'_>) -> Option<bool> {
    match field.value {
        Value::Null => None,
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" | "y" | "on" => Some(true),
            "false" | "f" | "0" | "no" | "n" | "off" => Some(false),
            _ => {
                report.error(&field.key, format!("expected true or false, found `{s}`"));
                None
            }
        },
        Value::Number(n) if n.as_u64() == Some(0) => Some(false),
        Value::Number(n) if n.as_u64() == Some(1) => Some(true),
        other => {
            report.error(
                &field.key,
                format!("expected true or false, found {}", kind(other)),
            );
            None
        }
    }
}

/// A string; numbers are taken as written (a bucket may be called `2024`). Empty reads as
/// absent, as Distribution treats it.
fn get_string(report: &mut Report, field: &Field<'_>) -> Option<String> {
    match field.value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        other => {
            report.error(
                &field.key,
                format!("expected a string, found {}", kind(other)),
            );
            None
        }
    }
}

fn get_u64(report: &mut Report, field: &Field<'_>) -> Option<u64> {
    let text = match field.value {
        Value::Null => return None,
        Value::Number(n) => {
            if let Some(v) = n.as_u64() {
                return Some(v);
            }
            n.to_string()
        }
        Value::String(s) => s.trim().to_owned(),
        other => {
            report.error(
                &field.key,
                format!("expected a whole number, found {}", kind(other)),
            );
            return None;
        }
    };
    match text.parse::<u64>() {
        Ok(v) => Some(v),
        Err(_) if text.starts_with('-') => {
            report.error(&field.key, format!("must not be negative, found {text}"));
            None
        }
        Err(_) => {
            report.error(
                &field.key,
                format!("expected a whole number, found `{text}`"),
            );
            None
        }
    }
}

/// A Go duration such as `168h`, `1h30m`, `10s` or `1.5h` (humantime reads all of Go's forms).
fn get_duration(report: &mut Report, field: &Field<'_>) -> Option<Duration> {
    let text = match field.value {
        Value::Null => return None,
        Value::String(s) => s.trim(),
        Value::Number(n) if n.as_u64() == Some(0) => return Some(Duration::ZERO),
        Value::Number(n) => {
            report.error(
                &field.key,
                format!("`{n}` has no unit: write a duration such as 168h, 30m or 10s"),
            );
            return None;
        }
        other => {
            report.error(
                &field.key,
                format!("expected a duration such as 168h, found {}", kind(other)),
            );
            return None;
        }
    };
    if text.starts_with('-') {
        report.error(&field.key, format!("must not be negative, found `{text}`"));
        return None;
    }
    match humantime::parse_duration(text) {
        Ok(d) => Some(d),
        Err(e) => {
            report.error(
                &field.key,
                format!("invalid duration `{text}` ({e}); write it like 168h, 1h30m or 10s"),
            );
            None
        }
    }
}

/// A duration that must be positive; `None` if absent or invalid.
fn get_positive_duration(report: &mut Report, field: &Field<'_>) -> Option<Duration> {
    let d = get_duration(report, field)?;
    if d.is_zero() {
        report.error(&field.key, "must be greater than zero");
        return None;
    }
    Some(d)
}

// ---- environment ----------------------------------------------------------------------------

/// Applies `REGISTRY_*` variables to `document`; returns the names of those applied.
fn apply_env(document: &mut Value, env: &[(String, String)], report: &mut Report) -> Vec<String> {
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

fn set_path(node: &mut Value, segments: &[String], value: Value) -> Result<(), String> {
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

    if let Some(field) = root.take("auth") {
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
        ("notifications", "event notifications are not sent"),
        ("health", "no health checks beyond answering /v2/"),
        ("redis", "layerstore uses no Redis"),
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

fn parse_log(report: &mut Report, log: Option<&Field<'_>>, loglevel: Option<&Field<'_>>) -> Log {
    let mut level_field = None;
    if let Some(field) = loglevel {
        report.warn(&field.key, "deprecated: use log.level (read as log.level)");
        level_field = Some(Field {
            key: field.key.clone(),
            value: field.value,
        });
    }
    let mut section = log.and_then(|f| Section::new(report, &f.key, f.value));
    if let Some(section) = &mut section {
        if let Some(field) = section.take("level") {
            level_field = Some(field);
        }
        section.ignore(report, "formatter", "layerstore writes its own log format");
        section.ignore(report, "fields", "no extra fields are added to log lines");
        section.ignore(report, "hooks", "no log hooks");
        section.ignore(report, "accesslog", "no separate access log");
        section.ignore(report, "reportcaller", "callers are not reported");
    }
    if let Some(section) = section {
        section.finish(report);
    }
    let mut level = "info".to_owned();
    if let Some(field) = level_field
        && let Some(text) = get_string(report, &field)
    {
        match text.to_ascii_lowercase().as_str() {
            l @ ("error" | "warn" | "info" | "debug" | "trace") => level = l.to_owned(),
            "warning" => level = "warn".to_owned(),
            _ => report.error(
                &field.key,
                format!("unknown log level `{text}` (error, warn, info, debug or trace)"),
            ),
        }
    }
    Log { level }
}

const DRIVERS: &[&str] = &["filesystem", "inmemory", "s3", "s3aws", "azure"];
const UNSUPPORTED_DRIVERS: &[&str] = &["gcs", "swift", "oss"];

fn parse_storage(
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
        storage.cache = parse_cache(report, &cache, storage.cache);
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

fn parse_filesystem(report: &mut Report, field: &Field<'_>) -> Option<BackendConfig> {
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

/// A string parameter, or `None` (reported if present but invalid).
fn take_string(report: &mut Report, s: &mut Section<'_>, key: &str) -> Option<String> {
    s.take(key).and_then(|f| get_string(report, &f))
}

fn take_bool(report: &mut Report, s: &mut Section<'_>, key: &str) -> Option<bool> {
    s.take(key).and_then(|f| get_bool(report, &f))
}

/// A key prefix from `rootdirectory`: slashes trimmed, empty means none.
fn prefix(root: Option<String>) -> Option<String> {
    root.map(|r| r.trim_matches('/').to_owned())
        .filter(|r| !r.is_empty())
}

fn parse_s3(report: &mut Report, field: &Field<'_>) -> Option<BackendConfig> {
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

fn parse_azure(report: &mut Report, field: &Field<'_>) -> Option<BackendConfig> {
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

/// The cache `field` configures; `current` stays when it names no `blobdescriptor` (a file's
/// `current` is `None`, Distribution's "no cache").
fn parse_cache(
    report: &mut Report,
    field: &Field<'_>,
    current: Option<MemoryCacheConfig>,
) -> Option<MemoryCacheConfig> {
    let Some(mut s) = Section::new(report, &field.key, field.value) else {
        return current;
    };
    let mut kind_field = s.take("blobdescriptor");
    if let Some(old) = s.take("layerinfo") {
        if kind_field.is_some() {
            report.error(
                &old.key,
                "deprecated duplicate of blobdescriptor: remove it",
            );
        } else {
            report.warn(
                &old.key,
                "deprecated: use blobdescriptor (read as blobdescriptor)",
            );
            kind_field = Some(old);
        }
    }
    let size_field = s.take("blobdescriptorsize");
    s.finish(report);

    // Distribution: 0 means no limit.
    let size = size_field
        .as_ref()
        .and_then(|f| get_u64(report, f))
        .map(|n| if n == 0 { u64::MAX } else { n });
    let kind = kind_field.as_ref().and_then(|f| get_string(report, f));
    match (kind.as_deref(), &kind_field) {
        (Some("inmemory"), _) => Some(MemoryCacheConfig {
            capacity: size.unwrap_or(DISTRIBUTION_CACHE_SIZE),
            ..MemoryCacheConfig::default()
        }),
        (Some("redis"), Some(f)) => {
            report.error(
                &f.key,
                "redis is not supported yet: use inmemory, or remove the key for no cache",
            );
            None
        }
        (Some(other), Some(f)) => {
            report.error(
                &f.key,
                format!("unknown cache `{other}` (inmemory or redis)"),
            );
            None
        }
        _ => match (current, size) {
            (Some(cache), Some(capacity)) => Some(MemoryCacheConfig { capacity, ..cache }),
            (None, Some(_)) => {
                if let Some(f) = size_field {
                    report.warn(&f.key, "ignored: no blobdescriptor cache is configured");
                }
                None
            }
            (current, None) => current,
        },
    }
}

fn parse_maintenance(report: &mut Report, field: &Field<'_>, storage: &mut Storage) {
    let Some(mut s) = Section::new(report, &field.key, field.value) else {
        return;
    };
    let purging = &mut storage.purging;
    if let Some(f) = s.take("uploadpurging")
        && let Some(mut p) = Section::new(report, &f.key, f.value)
    {
        if let Some(enabled) = take_bool(report, &mut p, "enabled") {
            purging.enabled = enabled;
        }
        if let Some(age) = p
            .take("age")
            .and_then(|f| get_positive_duration(report, &f))
        {
            purging.options.older_than = age;
        }
        if let Some(interval) = p
            .take("interval")
            .and_then(|f| get_positive_duration(report, &f))
        {
            purging.interval = interval;
        }
        if let Some(dry_run) = take_bool(report, &mut p, "dryrun") {
            purging.options = PurgeOptions {
                dry_run,
                ..purging.options
            };
        }
        p.finish(report);
    }
    if let Some(f) = s.take("gc") {
        parse_gc(report, &f, &mut storage.gc);
    }
    if let Some(f) = s.take("readonly")
        && let Some(mut r) = Section::new(report, &f.key, f.value)
    {
        if let Some(enabled) = r.take("enabled")
            && get_bool(report, &enabled) == Some(true)
        {
            report.error(
                &enabled.key,
                "read-only mode is not supported: the registry would accept writes; remove it \
                 or set it to false",
            );
        }
        r.finish(report);
    }
    s.finish(report);
}

/// `storage.maintenance.gc` (layerstore's own): `enabled`, `interval`, `grace`,
/// `deleteuntagged`, `dryrun`.
fn parse_gc(report: &mut Report, field: &Field<'_>, gc: &mut GcSchedule) {
    let Some(mut s) = Section::new(report, &field.key, field.value) else {
        return;
    };
    if let Some(enabled) = take_bool(report, &mut s, "enabled") {
        gc.enabled = enabled;
    }
    if let Some(interval) = s
        .take("interval")
        .and_then(|f| get_positive_duration(report, &f))
    {
        gc.interval = interval;
    }
    // Zero is valid: nothing acknowledged is lost whatever the grace (see `layerstore gc`).
    if let Some(f) = s.take("grace")
        && let Some(grace) = get_duration(report, &f)
    {
        if crate::cli_gc::wait_of(grace).is_some() {
            gc.options.grace = grace;
        } else {
            report.error(&f.key, format!("{} is too long", go_duration(grace)));
        }
    }
    if let Some(delete_untagged) = take_bool(report, &mut s, "deleteuntagged") {
        gc.options.delete_untagged = delete_untagged;
    }
    if let Some(dry_run) = take_bool(report, &mut s, "dryrun") {
        gc.options.dry_run = dry_run;
    }
    s.finish(report);
}

fn parse_http(report: &mut Report, field: &Field<'_>) -> Http {
    let mut http = Config::default().http;
    let Some(mut s) = Section::new(report, &field.key, field.value) else {
        return http;
    };
    if let Some(f) = s.take("addr")
        && let Some(text) = get_string(report, &f)
    {
        match parse_addr(&text) {
            Ok(addr) => http.addr = addr,
            Err(why) => report.error(&f.key, why),
        }
    }
    if let Some(f) = s.take("net")
        && let Some(net) = get_string(report, &f)
        && net != "tcp"
    {
        report.error(&f.key, format!("only tcp is supported, found `{net}`"));
    }
    if let Some(f) = s.take("tls") {
        http.tls = parse_tls(report, &f);
    }
    for (key, why) in [
        ("prefix", "the API is served at /v2/"),
        ("host", "URLs in responses are derived from the request"),
        ("secret", "layerstore signs no client-side state"),
        ("relativeurls", "Location headers are always relative"),
        (
            "draintimeout",
            "connections are drained without a time limit",
        ),
        ("debug", "no debug server"),
        ("headers", "no extra response headers are added"),
        ("http2", "HTTP/2 is negotiated automatically over TLS"),
        ("h2c", "no HTTP/2 without TLS"),
    ] {
        s.ignore(report, key, why);
    }
    s.finish(report);
    http
}

/// `:5000` (all interfaces), `host:port`, `[::1]:5000`, or a resolvable `name:port`.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port in `{text}`"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("invalid address `{text}` (expected HOST:PORT or :PORT): {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

fn parse_tls(report: &mut Report, field: &Field<'_>) -> Option<Tls> {
    let mut s = Section::new(report, &field.key, field.value)?;
    // Both absent or empty is "no TLS", as in Distribution; one alone is an error, never a
    // silent fall back to plain HTTP.
    let certificate = s.take("certificate").filter(|f| is_set(f.value));
    let key = s.take("key").filter(|f| is_set(f.value));
    if let Some(f) = s.take("clientcas").filter(|f| is_set(f.value)) {
        report.error(
            &f.key,
            "TLS client certificates are not supported, and ignoring them would let any \
             client in: refusing to start",
        );
    }
    if let Some(f) = s.take("letsencrypt").filter(|f| is_set(f.value)) {
        report.error(
            &f.key,
            "Let's Encrypt is not supported (the registry would not serve the TLS it is meant \
             to): give certificate and key files",
        );
    }
    s.ignore(
        report,
        "clientauth",
        "no TLS client certificates are requested",
    );
    s.ignore(report, "minimumtls", "TLS 1.2 and 1.3 are accepted");
    s.ignore(
        report,
        "ciphersuites",
        "rustls's default (modern) cipher suites are used",
    );
    s.finish(report);
    match (certificate, key) {
        (None, None) => None,
        (Some(_), None) => {
            report.error(&join(&field.key, "key"), "required when certificate is set");
            None
        }
        (None, Some(_)) => {
            report.error(&join(&field.key, "certificate"), "required when key is set");
            None
        }
        (Some(certificate), Some(key)) => {
            let certificate = checked_file(report, &certificate);
            let key = checked_file(report, &key);
            Some(Tls {
                certificate: certificate?,
                key: key?,
            })
        }
    }
}

/// A path that must name an existing file.
fn checked_file(report: &mut Report, field: &Field<'_>) -> Option<PathBuf> {
    let path = PathBuf::from(get_string(report, field)?);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Some(path),
        Ok(_) => {
            report.error(&field.key, format!("{} is not a file", path.display()));
            None
        }
        Err(e) => {
            report.error(&field.key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Config {
        Config::from_yaml(yaml, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fail(yaml: &str) -> String {
        match Config::from_yaml(yaml, &[]) {
            Ok(config) => panic!("accepted: {config:#?}"),
            Err(e) => e,
        }
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn has_warning(config: &Config, key: &str) -> bool {
        config
            .warnings
            .iter()
            .any(|w| w.starts_with(&format!("{key}: ")))
    }

    const FS: &str = "storage:\n  filesystem:\n    rootdirectory: /srv/registry\n";

    /// The shape of the `config.yml` shipped in Distribution's image, plus common additions.
    const DISTRIBUTION_CONFIG: &str = r#"
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
        for key in ["log.formatter", "log.fields", "http.headers", "health"] {
            assert!(has_warning(&config, key), "{key}: {:?}", config.warnings);
        }
        assert_eq!(config.warnings.len(), 4, "{:?}", config.warnings);
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
    fn colon_port_listens_on_all_interfaces() {
        let config = load(&format!("{FS}http:\n  addr: :5000\n"));
        assert_eq!(config.http.addr, SocketAddr::from(([0, 0, 0, 0], 5000)));
    }

    #[test]
    fn host_port_ipv6_and_hostnames_are_addresses() {
        let ip = load(&format!("{FS}http: {{addr: '192.0.2.7:8080'}}\n"));
        assert_eq!(ip.http.addr, SocketAddr::from(([192, 0, 2, 7], 8080)));
        let v6 = load(&format!("{FS}http: {{addr: '[::1]:5000'}}\n"));
        assert_eq!(v6.http.addr, "[::1]:5000".parse::<SocketAddr>().unwrap());
        let name = load(&format!("{FS}http: {{addr: 'localhost:5001'}}\n"));
        assert!(name.http.addr.ip().is_loopback());
        assert_eq!(name.http.addr.port(), 5001);
    }

    #[test]
    fn a_bad_address_names_the_key() {
        for addr in [":99999", "5000", "not an address", ":"] {
            let e = fail(&format!("{FS}http: {{addr: '{addr}'}}\n"));
            assert!(e.contains("http.addr: "), "{addr}: {e}");
        }
    }

    #[test]
    fn only_tcp_listening_is_supported() {
        load(&format!("{FS}http: {{net: tcp, addr: ':5000'}}\n"));
        let e = fail(&format!(
            "{FS}http: {{net: unix, addr: /run/registry.sock}}\n"
        ));
        assert!(
            e.contains("http.net: only tcp is supported, found `unix`"),
            "{e}"
        );
    }

    #[test]
    fn s3aws_is_an_alias_of_s3() {
        let config = load("storage: {s3aws: {bucket: b, region: r}}");
        assert!(matches!(config.storage.backend, BackendConfig::S3(_)));
    }

    #[test]
    fn go_durations_168h_and_1h30m_parse() {
        let config = load(&format!(
            "{FS}  maintenance:\n    uploadpurging: {{age: 168h, interval: 1h30m, dryrun: true}}\n"
        ));
        let purging = config.storage.purging;
        assert_eq!(purging.options.older_than, Duration::from_secs(168 * 3600));
        assert_eq!(purging.interval, Duration::from_secs(90 * 60));
        assert!(purging.options.dry_run && purging.enabled);
        for (text, secs) in [("10s", 10), ("45m", 2700), ("2h10m", 7800), ("1.5h", 5400)] {
            let yaml = format!("{FS}  maintenance: {{uploadpurging: {{age: '{text}'}}}}\n");
            let age = load(&yaml).storage.purging.options.older_than;
            assert_eq!(age, Duration::from_secs(secs), "{text}");
        }
    }

    #[test]
    fn a_bad_duration_names_the_key() {
        for age in ["a week", "3600", "-1h", "0s"] {
            let yaml = format!("{FS}  maintenance: {{uploadpurging: {{age: {age}}}}}\n");
            let e = fail(&yaml);
            assert!(
                e.contains("storage.maintenance.uploadpurging.age: "),
                "{age}: {e}"
            );
        }
        let e = fail(&format!(
            "{FS}  maintenance: {{uploadpurging: {{interval: 0}}}}\n"
        ));
        assert!(
            e.contains("storage.maintenance.uploadpurging.interval: must be greater than zero")
        );
    }

    #[test]
    fn purging_can_be_disabled() {
        let yaml = format!("{FS}  maintenance: {{uploadpurging: {{enabled: false}}}}\n");
        assert!(!load(&yaml).storage.purging.enabled);
    }

    #[test]
    fn scheduled_gc_is_off_in_a_file_and_without_one() {
        assert_eq!(load(FS).storage.gc, GcSchedule::default());
        assert!(!GcSchedule::default().enabled);
        assert!(!Config::default().storage.gc.enabled);
        let text = load(FS).describe();
        assert!(
            text.contains("gc                     disabled (layerstore extension)"),
            "{text}"
        );
    }

    #[test]
    fn scheduled_gc_reads_every_key() {
        let gc = load(&format!(
            "{FS}  maintenance:\n    gc: {{enabled: true, interval: 6h, grace: 30m, \
             deleteuntagged: true, dryrun: true}}\n"
        ))
        .storage
        .gc;
        assert_eq!(
            gc,
            GcSchedule {
                enabled: true,
                interval: Duration::from_secs(6 * 3600),
                options: GcOptions {
                    delete_untagged: true,
                    grace: Duration::from_secs(1800),
                    dry_run: true,
                    ..GcOptions::default()
                },
            }
        );
    }

    #[test]
    fn scheduled_gc_takes_a_grace_of_zero() {
        for zero in ["0s", "0"] {
            let yaml = format!("{FS}  maintenance: {{gc: {{enabled: true, grace: {zero}}}}}\n");
            assert_eq!(
                load(&yaml).storage.gc.options.grace,
                Duration::ZERO,
                "{zero}"
            );
        }
    }

    #[test]
    fn scheduled_gc_refuses_a_bad_value_naming_its_key() {
        for (entry, key, why) in [
            ("interval: 0s", "interval", "must be greater than zero"),
            ("interval: soon", "interval", "invalid duration `soon`"),
            ("interval: 3600", "interval", "`3600` has no unit"),
            ("grace: -1s", "grace", "must not be negative"),
            ("grace: a while", "grace", "invalid duration"),
            (
                "grace: 18446744073709551615s",
                "grace",
                "5124095576030431h15s is too long",
            ),
            ("enabled: maybe", "enabled", "expected true or false"),
            (
                "deleteuntagged: 2",
                "deleteuntagged",
                "expected true or false",
            ),
            ("dryrun: [true]", "dryrun", "expected true or false"),
            ("graceperiod: 1h", "graceperiod", "unknown key"),
        ] {
            let e = fail(&format!("{FS}  maintenance: {{gc: {{{entry}}}}}\n"));
            assert!(
                e.contains(&format!("storage.maintenance.gc.{key}: {why}")),
                "{entry}: {e}"
            );
        }
        let e = fail(&format!("{FS}  maintenance: {{gc: true}}\n"));
        assert!(
            e.contains("storage.maintenance.gc: expected a mapping of keys"),
            "{e}"
        );
    }

    #[test]
    fn environment_switches_scheduled_gc_on() {
        let config = Config::from_yaml(
            FS,
            &env(&[
                ("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "true"),
                ("REGISTRY_STORAGE_MAINTENANCE_GC_GRACE", "0s"),
            ]),
        )
        .unwrap();
        assert!(config.storage.gc.enabled);
        assert_eq!(config.storage.gc.options.grace, Duration::ZERO);
    }

    #[test]
    fn describe_gives_the_gc_schedule() {
        let text = load(&format!(
            "{FS}  maintenance: {{gc: {{enabled: true, interval: 12h, grace: 0s}}}}\n"
        ))
        .describe();
        assert!(
            text.contains(
                "gc                     enabled (layerstore extension), interval 12h, grace 0s, \
                 deleteuntagged false, dryrun false"
            ),
            "{text}"
        );
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
    fn a_negative_cache_size_names_the_key() {
        let e = fail(&format!(
            "{FS}  cache: {{blobdescriptor: inmemory, blobdescriptorsize: -5}}\n"
        ));
        assert!(
            e.contains("storage.cache.blobdescriptorsize: must not be negative"),
            "{e}"
        );
    }

    #[test]
    fn cache_size_sets_capacity_and_zero_means_unlimited() {
        let sized = load(&format!(
            "{FS}  cache: {{blobdescriptor: inmemory, blobdescriptorsize: '2500'}}\n"
        ));
        assert_eq!(sized.storage.cache.map(|c| c.capacity), Some(2500));
        let unlimited = load(&format!(
            "{FS}  cache: {{blobdescriptor: inmemory, blobdescriptorsize: 0}}\n"
        ));
        assert_eq!(unlimited.storage.cache.map(|c| c.capacity), Some(u64::MAX));
        let legacy = load(&format!("{FS}  cache: {{layerinfo: inmemory}}\n"));
        assert!(legacy.storage.cache.is_some());
        assert!(has_warning(&legacy, "storage.cache.layerinfo"));
    }

    #[test]
    fn redis_cache_is_refused_as_not_supported_yet() {
        let e = fail(&format!("{FS}  cache: {{blobdescriptor: redis}}\n"));
        assert!(
            e.contains("storage.cache.blobdescriptor: redis is not supported yet"),
            "{e}"
        );
    }

    #[test]
    fn read_only_mode_is_refused_but_false_is_accepted() {
        let e = fail(&format!(
            "{FS}  maintenance: {{readonly: {{enabled: true}}}}\n"
        ));
        assert!(e.contains("storage.maintenance.readonly.enabled: "), "{e}");
        load(&format!(
            "{FS}  maintenance: {{readonly: {{enabled: false}}}}\n"
        ));
    }

    #[test]
    fn yaml_1_1_booleans_still_read_as_booleans() {
        let config = load(&format!("{FS}  delete: {{enabled: yes}}\n"));
        assert!(config.storage.delete_enabled);
        let config = load(&format!("{FS}  delete: {{enabled: 'true'}}\n"));
        assert!(config.storage.delete_enabled);
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
  debug: {{addr: 'localhost:5001'}}
  http2: {{disabled: false}}
notifications: {{endpoints: []}}
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
            "http.debug",
            "http.http2",
            "notifications",
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

    #[test]
    fn invalid_yaml_is_an_error_not_a_panic() {
        let e = fail("storage: [filesystem\n");
        assert!(e.starts_with("invalid YAML"), "{e}");
        let e = fail("storage: {}\nstorage: {}\n");
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn log_levels_include_trace_and_reject_others() {
        assert_eq!(
            load(&format!("{FS}log: {{level: trace}}\n")).log.level,
            "trace"
        );
        assert_eq!(
            load(&format!("{FS}log: {{level: WARNING}}\n")).log.level,
            "warn"
        );
        let e = fail(&format!("{FS}log: {{level: verbose}}\n"));
        assert!(e.contains("log.level: unknown log level `verbose`"), "{e}");
        let old = load(&format!("{FS}loglevel: error\n"));
        assert_eq!(old.log.level, "error");
        assert!(has_warning(&old, "loglevel"));
    }

    fn tls_files() -> (tempfile::NamedTempFile, tempfile::NamedTempFile) {
        (
            tempfile::NamedTempFile::new().unwrap(),
            tempfile::NamedTempFile::new().unwrap(),
        )
    }

    #[test]
    fn tls_with_existing_certificate_and_key_is_enabled() {
        let (cert, key) = tls_files();
        let config = load(&format!(
            "{FS}http:\n  tls:\n    certificate: {}\n    key: {}\n    minimumtls: tls1.2\n",
            cert.path().display(),
            key.path().display()
        ));
        let tls = config.http.tls.as_ref().expect("tls");
        assert_eq!(tls.certificate, cert.path());
        assert_eq!(tls.key, key.path());
        assert!(has_warning(&config, "http.tls.minimumtls"));
    }

    #[test]
    fn tls_needs_both_files_and_they_must_exist() {
        let (cert, _key) = tls_files();
        let e = fail(&format!(
            "{FS}http: {{tls: {{certificate: {}}}}}\n",
            cert.path().display()
        ));
        assert!(
            e.contains("http.tls.key: required when certificate is set"),
            "{e}"
        );
        let e = fail(&format!(
            "{FS}http: {{tls: {{certificate: '', key: {}}}}}\n",
            cert.path().display()
        ));
        assert!(
            e.contains("http.tls.certificate: required when key is set"),
            "{e}"
        );
        let e = fail(&format!(
            "{FS}http: {{tls: {{certificate: {}, key: /nonexistent/registry.key}}}}\n",
            cert.path().display()
        ));
        assert!(
            e.contains("http.tls.key: cannot read /nonexistent/registry.key"),
            "{e}"
        );
        assert!(
            load(&format!(
                "{FS}http: {{tls: {{certificate: '', key: ''}}}}\n"
            ))
            .http
            .tls
            .is_none()
        );
    }

    #[test]
    fn tls_client_certificates_and_letsencrypt_are_refused() {
        let e = fail(&format!("{FS}http: {{tls: {{clientcas: [/ca.pem]}}}}\n"));
        assert!(e.contains("http.tls.clientcas: "), "{e}");
        let e = fail(&format!(
            "{FS}http: {{tls: {{letsencrypt: {{email: a@b.c, hosts: [r.example]}}}}}}\n"
        ));
        assert!(e.contains("http.tls.letsencrypt: "), "{e}");
    }

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
        let e = Config::from_yaml(FS, &env(&[("REGISTRY_HTTP_TLS_CLIENTCAS_0", "/ca.pem")]))
            .unwrap_err();
        assert!(e.contains("http.tls.clientcas: "), "{e}");
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
            "warnings (4)",
            "log.formatter: ignored",
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
             http: {tls: {certificate: /c, key: /k, clientcas: [/a]}}",
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
