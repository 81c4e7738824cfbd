//! `log` (and the deprecated top-level `loglevel`).

use super::report::{Field, Report, Section, get_string};
use super::row;

#[derive(Debug, Clone)]
pub struct Log {
    /// A `tracing` filter level: error, warn, info, debug or trace.
    pub level: String,
}

impl Log {
    /// The `log` lines of [`super::Config::describe`].
    pub(super) fn describe(&self, out: &mut String) {
        out.push_str("log\n");
        row(out, "level", &self.level);
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

#[cfg(test)]
mod tests {
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
}
