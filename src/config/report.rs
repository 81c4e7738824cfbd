//! Reading a YAML configuration by the rules every section follows: each key is taken,
//! ignored with a warning, or refused, and every problem is reported with its full dotted key
//! (and the `REGISTRY_*` variable that set it), all at once rather than the first alone.

use std::fmt::Display;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml_ng::Value;

/// Errors and warnings, each starting with the full dotted key.
#[derive(Debug, Default)]
pub(super) struct Report {
    pub(super) errors: Vec<String>,
    pub(super) warnings: Vec<String>,
    /// Dotted keys set from the environment, with the variable that set them.
    pub(super) from_env: Vec<(String, String)>,
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

    pub(super) fn error(&mut self, key: &str, why: impl Display) {
        let origin = self.origin(key);
        self.errors.push(format!("{key}: {why}{origin}"));
    }

    pub(super) fn warn(&mut self, key: &str, why: impl Display) {
        let origin = self.origin(key);
        self.warnings.push(format!("{key}: {why}{origin}"));
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// One value and its full dotted key.
pub(super) struct Field<'a> {
    pub(super) key: String,
    pub(super) value: &'a Value,
}

/// A mapping being read: every entry must be taken, ignored or refused, or it is reported as
/// an unknown key by [`Section::finish`].
pub(super) struct Section<'a> {
    path: String,
    entries: Vec<(String, &'a Value, bool)>,
}

impl<'a> Section<'a> {
    /// `value` as a mapping (`null` reads as an empty one); `None` after reporting otherwise.
    pub(super) fn new(report: &mut Report, path: &str, value: &'a Value) -> Option<Self> {
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

    pub(super) fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _, _)| k == key)
    }

    /// The keys not taken yet, in the file's order.
    pub(super) fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(_, _, used)| !used)
            .map(|(k, _, _)| k.as_str())
    }

    pub(super) fn take(&mut self, key: &str) -> Option<Field<'a>> {
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
    pub(super) fn ignore(&mut self, report: &mut Report, key: &str, why: &str) {
        if let Some(field) = self.take(key) {
            report.warn(&field.key, format!("ignored: {why}"));
        }
    }

    /// Reports every key that was not taken.
    pub(super) fn finish(self, report: &mut Report) {
        for (key, _, used) in self.entries {
            if !used {
                report.error(&join(&self.path, &key), "unknown key");
            }
        }
    }
}

pub(super) fn kind(value: &Value) -> &'static str {
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

pub(super) fn scalar_text(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => format!("<{}>", kind(other)),
    }
}

/// Whether a section's value actually configures something (not absent, null, empty).
pub(super) fn is_set(value: &Value) -> bool {
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
pub(super) fn get_bool(report: &mut Report, field: &Field<'_>) -> Option<bool> {
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
pub(super) fn get_string(report: &mut Report, field: &Field<'_>) -> Option<String> {
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

pub(super) fn get_u64(report: &mut Report, field: &Field<'_>) -> Option<u64> {
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
pub(super) fn get_duration(report: &mut Report, field: &Field<'_>) -> Option<Duration> {
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
pub(super) fn get_positive_duration(report: &mut Report, field: &Field<'_>) -> Option<Duration> {
    let d = get_duration(report, field)?;
    if d.is_zero() {
        report.error(&field.key, "must be greater than zero");
        return None;
    }
    Some(d)
}

/// A string parameter, or `None` (reported if present but invalid).
pub(super) fn take_string(report: &mut Report, s: &mut Section<'_>, key: &str) -> Option<String> {
    s.take(key).and_then(|f| get_string(report, &f))
}

pub(super) fn take_bool(report: &mut Report, s: &mut Section<'_>, key: &str) -> Option<bool> {
    s.take(key).and_then(|f| get_bool(report, &f))
}

/// A path that must name an existing file.
pub(super) fn checked_file(report: &mut Report, field: &Field<'_>) -> Option<PathBuf> {
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
    use crate::config::testing::*;

    #[test]
    fn yaml_1_1_booleans_still_read_as_booleans() {
        let config = load(&format!("{FS}  delete: {{enabled: yes}}\n"));
        assert!(config.storage.delete_enabled);
        let config = load(&format!("{FS}  delete: {{enabled: 'true'}}\n"));
        assert!(config.storage.delete_enabled);
    }
}
