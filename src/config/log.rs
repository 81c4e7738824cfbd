//! `log` (and the deprecated top-level `loglevel`): the level, the line format (`formatter`),
//! fields added to every line (`fields`) and the access log (`accesslog.disabled`).

use serde_yaml_ng::Value;

use super::report::{Field, Report, Section, get_string, kind, take_bool};
use super::row;

#[derive(Debug, Clone)]
pub struct Log {
    /// A `tracing` filter level: error, warn, info, debug or trace.
    pub level: String,
    /// `log.formatter`: how each line is written.
    pub format: LogFormat,
    /// `log.fields`: added to every line, in the file's order, with their YAML types (a number
    /// stays a number in JSON).
    pub fields: Vec<(String, serde_json::Value)>,
    /// One line per request (method, path, status, bytes, duration); `log.accesslog.disabled`
    /// turns it off. On by default, as in Distribution.
    pub access_log: bool,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
            fields: Vec::new(),
            access_log: true,
        }
    }
}

/// `log.formatter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `text` (the default): human-readable lines, `key=value` fields.
    Text,
    /// `json`: one JSON object per line with `time`, `level`, `msg`, `target` and the fields.
    Json,
}

impl Log {
    /// The `log` lines of [`super::Config::describe`].
    pub(super) fn describe(&self, out: &mut String) {
        out.push_str("log\n");
        row(out, "level", &self.level);
        let format = match self.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        row(out, "formatter", &format);
        for (name, value) in &self.fields {
            row(out, "fields", &format!("{name}={value}"));
        }
        let access = if self.access_log { "on" } else { "off" };
        row(out, "accesslog", &access);
    }
}

pub(super) fn parse_log(
    report: &mut Report,
    log: Option<&Field<'_>>,
    loglevel: Option<&Field<'_>>,
) -> Log {
    let mut level_field = None;
    if let Some(field) = loglevel {
        report.warn(&field.key, "deprecated: use log.level (read as log.level)");
        level_field = Some(Field {
            key: field.key.clone(),
            value: field.value,
        });
    }
    let mut out = Log::default();
    let mut section = log.and_then(|f| Section::new(report, &f.key, f.value));
    if let Some(section) = &mut section {
        if let Some(field) = section.take("level") {
            level_field = Some(field);
        }
        if let Some(field) = section.take("formatter") {
            out.format = parse_format(report, &field);
        }
        if let Some(field) = section.take("fields") {
            out.fields = parse_fields(report, &field);
        }
        if let Some(field) = section.take("accesslog")
            && let Some(mut access) = Section::new(report, &field.key, field.value)
        {
            if let Some(disabled) = take_bool(report, &mut access, "disabled") {
                out.access_log = !disabled;
            }
            access.finish(report);
        }
        section.ignore(report, "hooks", "no log hooks");
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
    Log { level, ..out }
}

/// `text` or `json`, as Distribution names them; its `logstash` (JSON too) is written as
/// `json`, with a warning.
fn parse_format(report: &mut Report, field: &Field<'_>) -> LogFormat {
    let Some(text) = get_string(report, field) else {
        return LogFormat::Text;
    };
    match text.to_ascii_lowercase().as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        "logstash" => {
            report.warn(
                &field.key,
                "logstash lines are written as json (time, level, msg, target, fields)",
            );
            LogFormat::Json
        }
        _ => {
            report.error(
                &field.key,
                format!("unknown log formatter `{text}` (text or json)"),
            );
            LogFormat::Text
        }
    }
}

/// A map of names to scalars.
fn parse_fields(report: &mut Report, field: &Field<'_>) -> Vec<(String, serde_json::Value)> {
    let Some(mut s) = Section::new(report, &field.key, field.value) else {
        return Vec::new();
    };
    let names: Vec<String> = s.keys().map(str::to_owned).collect();
    let mut fields = Vec::new();
    for name in names {
        let Some(f) = s.take(&name) else { continue };
        let value = match f.value {
            Value::Null => continue,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::String(text) => serde_json::Value::String(text.clone()),
            Value::Number(n) => serde_json::from_str(&n.to_string())
                .unwrap_or_else(|_| serde_json::Value::String(n.to_string())),
            other => {
                report.error(
                    &f.key,
                    format!(
                        "expected a string, number or boolean, found {}",
                        kind(other)
                    ),
                );
                continue;
            }
        };
        fields.push((name, value));
    }
    s.finish(report);
    fields
}

#[cfg(test)]
mod tests {
    use super::LogFormat;
    use crate::config::testing::*;

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

    #[test]
    fn the_formatter_is_text_by_default_and_json_on_request() {
        assert_eq!(load(FS).log.format, LogFormat::Text);
        let json = load(&format!("{FS}log: {{formatter: json}}\n"));
        assert_eq!(json.log.format, LogFormat::Json);
        assert!(json.warnings.is_empty(), "{:?}", json.warnings);
        let logstash = load(&format!("{FS}log: {{formatter: logstash}}\n"));
        assert_eq!(logstash.log.format, LogFormat::Json);
        assert!(has_warning(&logstash, "log.formatter"));
        let e = fail(&format!("{FS}log: {{formatter: xml}}\n"));
        assert!(
            e.contains("log.formatter: unknown log formatter `xml`"),
            "{e}"
        );
    }

    #[test]
    fn fields_keep_their_order_and_their_types() {
        let config = load(&format!(
            "{FS}log:\n  fields:\n    service: registry\n    replica: 3\n    canary: true\n"
        ));
        assert_eq!(
            config.log.fields,
            [
                ("service".to_owned(), serde_json::json!("registry")),
                ("replica".to_owned(), serde_json::json!(3)),
                ("canary".to_owned(), serde_json::json!(true)),
            ]
        );
        let e = fail(&format!("{FS}log: {{fields: {{nested: {{a: b}}}}}}\n"));
        assert!(
            e.contains("log.fields.nested: expected a string, number or boolean"),
            "{e}"
        );
    }

    #[test]
    fn the_access_log_is_on_unless_disabled() {
        assert!(load(FS).log.access_log);
        let off = load(&format!("{FS}log: {{accesslog: {{disabled: true}}}}\n"));
        assert!(!off.log.access_log);
        let on = load(&format!("{FS}log: {{accesslog: {{disabled: false}}}}\n"));
        assert!(on.log.access_log);
        let e = fail(&format!("{FS}log: {{accesslog: {{disable: true}}}}\n"));
        assert!(e.contains("log.accesslog.disable: unknown key"), "{e}");
    }
}
