//! `storage.maintenance`: upload purging, read-only mode and (layerstore's) scheduled GC.

use layerstore::upload::PurgeOptions;

use super::gc::parse_gc;
use super::report::{Field, Report, Section, get_positive_duration, take_bool};
use super::storage::Storage;
use super::{go_duration, row};

pub(super) fn parse_maintenance(report: &mut Report, field: &Field<'_>, storage: &mut Storage) {
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
        if let Some(enabled) = take_bool(report, &mut r, "enabled") {
            storage.read_only = enabled;
        }
        r.finish(report);
    }
    s.finish(report);
}

/// The `storage.maintenance` lines of [`super::Config::describe`].
pub(super) fn describe(out: &mut String, storage: &Storage) {
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
    row(out, "uploadpurging", &purging);
    storage.gc.describe(out);
    let read_only = if storage.read_only {
        "enabled (every write is refused with 405)"
    } else {
        "disabled"
    };
    row(out, "readonly", &read_only);
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use std::time::Duration;

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
    fn read_only_mode_is_read_and_off_by_default() {
        assert!(!load(FS).storage.read_only);
        let on = load(&format!(
            "{FS}  maintenance: {{readonly: {{enabled: true}}}}\n"
        ));
        assert!(on.storage.read_only);
        let off = load(&format!(
            "{FS}  maintenance: {{readonly: {{enabled: false}}}}\n"
        ));
        assert!(!off.storage.read_only);
        let e = fail(&format!(
            "{FS}  maintenance: {{readonly: {{enabled: sometimes}}}}\n"
        ));
        assert!(
            e.contains("storage.maintenance.readonly.enabled: expected true or false"),
            "{e}"
        );
    }

    #[test]
    fn read_only_mode_is_described() {
        let text = load(&format!(
            "{FS}  maintenance: {{readonly: {{enabled: true}}}}\n"
        ))
        .describe();
        assert!(
            text.contains("readonly               enabled (every write is refused with 405)"),
            "{text}"
        );
    }
}
