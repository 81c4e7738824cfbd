//! `storage.maintenance.gc`: garbage collection on a schedule, a layerstore extension.

use std::time::Duration;

use layerstore::gc::GcOptions;

use super::report::{Field, Report, Section, get_duration, get_positive_duration, take_bool};
use super::{go_duration, row};

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

impl GcSchedule {
    /// The `gc` line of [`super::Config::describe`].
    pub(super) fn describe(&self, out: &mut String) {
        let gc = if self.enabled {
            format!(
                "enabled (layerstore extension), interval {}, grace {}, deleteuntagged {}, \
                 dryrun {}",
                go_duration(self.interval),
                go_duration(self.options.grace),
                self.options.delete_untagged,
                self.options.dry_run
            )
        } else {
            "disabled (layerstore extension)".to_owned()
        };
        row(out, "gc", &gc);
    }
}

/// `storage.maintenance.gc` (layerstore's own): `enabled`, `interval`, `grace`,
/// `deleteuntagged`, `dryrun`.
pub(super) fn parse_gc(report: &mut Report, field: &Field<'_>, gc: &mut GcSchedule) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    use crate::config::Config;

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
}
