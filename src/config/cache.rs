//! `storage.cache`: the blob-descriptor cache.

use layerstore::cache::MemoryCacheConfig;

use super::report::{Field, Report, Section, get_string, get_u64};
use super::{go_duration, row};

/// Distribution's `storage.cache.blobdescriptorsize` default.
pub(super) const DISTRIBUTION_CACHE_SIZE: u64 = 10_000;

/// The cache `field` configures; `current` stays when it names no `blobdescriptor` (a file's
/// `current` is `None`, Distribution's "no cache").
pub(super) fn parse_cache(
    report: &mut Report,
    field: &Field<'_>,
    current: Option<MemoryCacheConfig>,
    redis: &mut bool,
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
        (Some("redis"), _) => {
            if let Some(f) = size_field {
                report.warn(&f.key, "ignored: the redis cache is sized by Redis");
            }
            *redis = true;
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

/// The `cache.blobdescriptor` line of [`super::Config::describe`].
pub(super) fn describe(out: &mut String, cache: Option<&MemoryCacheConfig>, redis: bool) {
    let cache = match cache {
        None if redis => "redis (shared by replicas, see redis.*)".to_owned(),
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
    row(out, "cache.blobdescriptor", &cache);
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

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
    fn redis_cache_replaces_the_memory_cache() {
        let config = load(&format!(
            "{FS}  cache: {{blobdescriptor: redis}}\nredis: {{addr: 'localhost:6379'}}\n"
        ));
        assert!(config.storage.redis_cache);
        assert_eq!(config.storage.cache, None);
        assert!(config.redis.is_some());
    }
}
