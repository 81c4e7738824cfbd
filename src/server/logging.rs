//! The server's log lines on stderr, as `log` configures them: `text` (tracing's format) or
//! `json` (one object per line: `time`, `level`, `msg`, `target` and the event's fields), with
//! `log.fields` added to every line. Distribution's users feed these lines to collectors that
//! parse its logrus output, whose JSON uses the same `time`, `level` and `msg` keys.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{Log, LogFormat};

/// Installs the process's subscriber (once; later calls do nothing). `RUST_LOG`, when set,
/// overrides `log.level`.
pub fn init(log: &Log) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder
            .with_ansi(false)
            .event_format(JsonLines {
                fields: log.fields.clone(),
            })
            .try_init(),
        LogFormat::Text => builder
            // Colour codes only for a terminal (and never with fields appended), not in files.
            .with_ansi(
                log.fields.is_empty() && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            )
            .event_format(TextWithFields {
                inner: Format::default(),
                suffix: text_suffix(&log.fields),
            })
            .try_init(),
    };
}

/// ` name=value` for each configured field, as tracing writes its own.
fn text_suffix(fields: &[(String, Value)]) -> String {
    fields
        .iter()
        .map(|(name, value)| match value {
            Value::String(s) => format!(" {name}={s:?}"),
            other => format!(" {name}={other}"),
        })
        .collect()
}

/// tracing's text line, then the configured fields.
struct TextWithFields {
    inner: Format,
    suffix: String,
}

impl<S, N> FormatEvent<S, N> for TextWithFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.suffix.is_empty() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{line}{}", self.suffix)
    }
}

/// One JSON object per line.
struct JsonLines {
    fields: Vec<(String, Value)>,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writeln!(writer, "{}", json_line(&self.fields, event))
    }
}

/// The object of one event: the configured fields, then `time`, `level`, `target`, and the
/// event's own fields (its message as `msg`), each later one replacing an earlier namesake.
fn json_line(configured: &[(String, Value)], event: &Event<'_>) -> Value {
    let mut object = Map::new();
    for (name, value) in configured {
        object.insert(name.clone(), value.clone());
    }
    let metadata = event.metadata();
    object.insert(
        "time".to_owned(),
        Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
    );
    object.insert(
        "level".to_owned(),
        Value::from(metadata.level().as_str().to_ascii_lowercase()),
    );
    object.insert("target".to_owned(), Value::from(metadata.target()));
    event.record(&mut JsonFields(&mut object));
    Value::Object(object)
}

/// Writes an event's fields into a JSON object, keeping numbers and booleans as such.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl JsonFields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = match field.name() {
            "message" => "msg",
            name => name,
        };
        self.0.insert(name.to_owned(), value);
    }
}

impl Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_are_written_as_tracing_writes_its_own() {
        let fields = [
            ("service".to_owned(), Value::from("registry")),
            ("replica".to_owned(), Value::from(3)),
        ];
        assert_eq!(text_suffix(&fields), " service=\"registry\" replica=3");
    }
}
