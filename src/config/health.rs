//! `health`: the checks behind `/debug/health` (and behind the registry port's 503 while one
//! fails). Only Distribution's `storagedriver` check is built; its `file`, `http` and `tcp`
//! checks are refused rather than ignored, since an ignored check would report healthy what
//! the operator asked to see as unhealthy.

use std::time::Duration;

use super::report::{Field, Report, Section, get_positive_duration, get_u64, is_set, take_bool};
use super::{go_duration, row};

/// Distribution's interval when none is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// `health.storagedriver`, when enabled.
    pub storage_driver: Option<StorageDriverCheck>,
}

/// A backend probe every `interval`; unhealthy once `threshold` probes in a row failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageDriverCheck {
    pub interval: Duration,
    /// At least 1 (Distribution's `0`, "no threshold", fails at the first failed probe too).
    pub threshold: u32,
}

impl Health {
    /// The `health` lines of [`super::Config::describe`].
    pub(super) fn describe(&self, out: &mut String) {
        out.push_str("health\n");
        let storage = match &self.storage_driver {
            None => "disabled".to_owned(),
            Some(check) => format!(
                "enabled, interval {}, threshold {}",
                go_duration(check.interval),
                check.threshold
            ),
        };
        row(out, "storagedriver", &storage);
    }
}

pub(super) fn parse_health(report: &mut Report, field: &Field<'_>) -> Health {
    let mut health = Health::default();
    let Some(mut s) = Section::new(report, &field.key, field.value) else {
        return health;
    };
    if let Some(f) = s.take("storagedriver") {
        health.storage_driver = parse_storage_driver(report, &f);
    }
    for key in ["file", "http", "tcp"] {
        if let Some(f) = s.take(key)
            && is_set(f.value)
        {
            report.error(
                &f.key,
                "only the storagedriver health check is supported; remove this check rather \
                 than have it silently never fail",
            );
        }
    }
    s.finish(report);
    health
}

fn parse_storage_driver(report: &mut Report, field: &Field<'_>) -> Option<StorageDriverCheck> {
    let mut s = Section::new(report, &field.key, field.value)?;
    let enabled = take_bool(report, &mut s, "enabled").unwrap_or(false);
    let interval = s
        .take("interval")
        .and_then(|f| get_positive_duration(report, &f))
        .unwrap_or(DEFAULT_INTERVAL);
    let mut threshold = 1;
    if let Some(f) = s.take("threshold")
        && let Some(n) = get_u64(report, &f)
    {
        match u32::try_from(n) {
            Ok(n) => threshold = n.max(1),
            Err(_) => report.error(&f.key, format!("{n} is too large")),
        }
    }
    s.finish(report);
    enabled.then_some(StorageDriverCheck {
        interval,
        threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn the_storagedriver_check_reads_interval_and_threshold() {
        let config = load(&format!(
            "{FS}health:\n  storagedriver:\n    enabled: true\n    interval: 2s\n    threshold: 3\n"
        ));
        assert_eq!(
            config.health.storage_driver,
            Some(StorageDriverCheck {
                interval: Duration::from_secs(2),
                threshold: 3
            })
        );
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn the_storagedriver_check_defaults_to_10s_and_one_failure() {
        let config = load(&format!(
            "{FS}health: {{storagedriver: {{enabled: true}}}}\n"
        ));
        assert_eq!(
            config.health.storage_driver,
            Some(StorageDriverCheck {
                interval: DEFAULT_INTERVAL,
                threshold: 1
            })
        );
        let zero = load(&format!(
            "{FS}health: {{storagedriver: {{enabled: true, threshold: 0}}}}\n"
        ));
        assert_eq!(zero.health.storage_driver.unwrap().threshold, 1);
    }

    #[test]
    fn a_disabled_or_absent_check_does_not_run() {
        assert_eq!(load(FS).health, Health::default());
        let off = load(&format!(
            "{FS}health: {{storagedriver: {{enabled: false, interval: 1s}}}}\n"
        ));
        assert_eq!(off.health.storage_driver, None);
    }

    #[test]
    fn file_http_and_tcp_checks_are_refused() {
        for check in [
            "file: [{file: /tmp/down}]",
            "http: [{uri: 'http://x'}]",
            "tcp: [{addr: 'x:1'}]",
        ] {
            let e = fail(&format!("{FS}health: {{{check}}}\n"));
            assert!(
                e.contains("only the storagedriver health check is supported"),
                "{check}: {e}"
            );
        }
        load(&format!("{FS}health: {{file: []}}\n"));
    }

    #[test]
    fn a_bad_interval_names_the_key() {
        let e = fail(&format!(
            "{FS}health: {{storagedriver: {{enabled: true, interval: 0s}}}}\n"
        ));
        assert!(
            e.contains("health.storagedriver.interval: must be greater than zero"),
            "{e}"
        );
    }
}
