//! `redis`: the server of the shared blob-descriptor cache (`storage.cache.blobdescriptor:
//! redis`), in Distribution 2.8's names, plus 3.x's `username` and a one-entry `addrs`.

use layerstore::cache::RedisCacheConfig;

use super::report::{Field, Report, Section, get_bool, get_duration, get_string, get_u64};
use super::{go_duration, redacted, row, yes_no};

/// The `redis` section's settings; `None` if it is invalid (the errors are reported).
pub(super) fn parse_redis(report: &mut Report, field: &Field<'_>) -> Option<RedisCacheConfig> {
    let mut s = Section::new(report, &field.key, field.value)?;
    let mut config = RedisCacheConfig::default();
    let mut ok = true;

    let addr = s.take("addr");
    let addrs = s.take("addrs");
    let addr = match (addr, addrs) {
        (Some(a), Some(b)) => {
            report.error(&b.key, format!("give either {} or addrs, not both", a.key));
            None
        }
        (Some(a), None) => get_string(report, &a).map(|text| (a.key, text)),
        (None, Some(b)) => one_address(report, &b).map(|text| (b.key, text)),
        (None, None) => None,
    };
    match addr {
        Some((key, text)) => match host_port(&text) {
            Ok((host, port)) => (config.host, config.port) = (host, port),
            Err(why) => {
                report.error(&key, why);
                ok = false;
            }
        },
        None => {
            report.error(
                &format!("{}.addr", field.key),
                "required: the Redis server as host:port",
            );
            ok = false;
        }
    }
    if let Some(f) = s.take("username") {
        config.username = get_string(report, &f);
    }
    if let Some(f) = s.take("password") {
        config.password = get_string(report, &f);
    }
    if let Some(f) = s.take("db") {
        match get_u64(report, &f).map(i64::try_from) {
            Some(Ok(db)) => config.db = db,
            Some(Err(_)) => {
                report.error(&f.key, "too large for a database number");
                ok = false;
            }
            None => ok = f.value.is_null(),
        }
    }
    for (key, slot) in [
        ("dialtimeout", &mut config.dial_timeout),
        ("readtimeout", &mut config.read_timeout),
        ("writetimeout", &mut config.write_timeout),
    ] {
        if let Some(f) = s.take(key) {
            // Distribution reads 0 as "no timeout"; layerstore never waits without one, so 0
            // keeps the default.
            match get_duration(report, &f) {
                Some(d) if !d.is_zero() => *slot = d,
                Some(_) => {}
                None => ok &= f.value.is_null(),
            }
        }
    }
    if let Some(pool) = s.take("pool") {
        ok &= parse_pool(report, &pool);
    }
    if let Some(tls) = s.take("tls")
        && let Some(mut t) = Section::new(report, &tls.key, tls.value)
    {
        if let Some(f) = t.take("enabled") {
            config.tls = get_bool(report, &f).unwrap_or(false);
        }
        for key in ["certificate", "key", "clientcas"] {
            if let Some(f) = t.take(key) {
                report.error(
                    &f.key,
                    "client certificates for Redis are not supported: remove it (the server's \
                     certificate is verified against the system's roots)",
                );
                ok = false;
            }
        }
        t.finish(report);
    }
    for key in ["sentinel", "mastername", "clientname"] {
        if let Some(f) = s.take(key) {
            report.error(
                &f.key,
                "not supported: layerstore connects to one Redis server (no sentinel or cluster)",
            );
            ok = false;
        }
    }
    s.finish(report);
    ok.then_some(config)
}

/// 3.x's `addrs` with one address (a cluster is not supported).
fn one_address(report: &mut Report, field: &Field<'_>) -> Option<String> {
    let list = match field.value {
        serde_yaml_ng::Value::Sequence(list) => list,
        _ => {
            report.error(&field.key, "expected a list of host:port");
            return None;
        }
    };
    match list.as_slice() {
        [serde_yaml_ng::Value::String(one)] => Some(one.clone()),
        [_] => {
            report.error(&field.key, "expected a host:port string");
            None
        }
        _ => {
            report.error(
                &field.key,
                "give exactly one address: layerstore connects to one Redis server (no cluster)",
            );
            None
        }
    }
}

/// `host:port` (`[v6]:port` for IPv6).
fn host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{text}` names no host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{port}` is not a port number (1-65535)"))?;
    Ok((host.to_owned(), port))
}

/// Validated, then noted: one multiplexed connection serves every request, so there is no
/// pool to size (Distribution's redigo pool holds one request per connection).
fn parse_pool(report: &mut Report, field: &Field<'_>) -> bool {
    let Some(mut p) = Section::new(report, &field.key, field.value) else {
        return false;
    };
    let mut ok = true;
    for key in ["maxidle", "maxactive"] {
        if let Some(f) = p.take(key) {
            ok &= get_u64(report, &f).is_some() || f.value.is_null();
        }
    }
    if let Some(f) = p.take("idletimeout") {
        ok &= get_duration(report, &f).is_some() || f.value.is_null();
    }
    p.finish(report);
    if ok {
        report.warn(
            &field.key,
            "accepted, no effect: layerstore sends every Redis request over one multiplexed \
             connection",
        );
    }
    ok
}

/// The `redis` lines of [`super::Config::describe`].
pub(super) fn describe(out: &mut String, redis: &RedisCacheConfig) {
    row(out, "redis.addr", &format!("{}:{}", redis.host, redis.port));
    row(out, "redis.db", &redis.db);
    row(
        out,
        "redis.password",
        &redacted(redis.password.is_some(), "(none)"),
    );
    row(out, "redis.tls", &yes_no(redis.tls));
    row(
        out,
        "redis.timeouts",
        &format!(
            "dial {}, write {}, read {}",
            go_duration(redis.dial_timeout),
            go_duration(redis.write_timeout),
            go_duration(redis.read_timeout)
        ),
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::*;

    const REDIS_CACHE: &str = "  cache: {blobdescriptor: redis}\n";

    #[test]
    fn distributions_redis_section_configures_the_cache() {
        let config = load(&format!(
            "{FS}{REDIS_CACHE}redis:
  addr: redis.internal:6380
  password: s3cret
  db: 2
  dialtimeout: 10ms
  readtimeout: 20ms
  writetimeout: 30ms
  pool: {{maxidle: 16, maxactive: 64, idletimeout: 300s}}
  tls: {{enabled: true}}
"
        ));
        assert!(config.storage.redis_cache);
        let redis = config.redis.clone().expect("redis settings");
        assert_eq!((redis.host.as_str(), redis.port), ("redis.internal", 6380));
        assert_eq!(redis.password.as_deref(), Some("s3cret"));
        assert_eq!(redis.db, 2);
        assert_eq!(redis.dial_timeout, Duration::from_millis(10));
        assert_eq!(redis.read_timeout, Duration::from_millis(20));
        assert_eq!(redis.write_timeout, Duration::from_millis(30));
        assert!(redis.tls);
        assert!(has_warning(&config, "redis.pool"));
    }

    #[test]
    fn version_3s_username_and_single_addrs_are_accepted() {
        let config = load(&format!(
            "{FS}{REDIS_CACHE}redis: {{addrs: ['10.0.0.5:6379'], username: registry}}\n"
        ));
        let redis = config.redis.expect("redis settings");
        assert_eq!(redis.host, "10.0.0.5");
        assert_eq!(redis.username.as_deref(), Some("registry"));
    }

    #[test]
    fn several_addrs_are_refused_naming_the_key() {
        let e = fail(&format!(
            "{FS}{REDIS_CACHE}redis: {{addrs: ['a:6379', 'b:6379']}}\n"
        ));
        assert!(e.contains("redis.addrs: give exactly one address"), "{e}");
    }

    #[test]
    fn a_bad_address_names_the_key() {
        for (addr, why) in [
            ("localhost", "is not host:port"),
            ("localhost:http", "is not a port number"),
            (":6379", "names no host"),
        ] {
            let e = fail(&format!("{FS}{REDIS_CACHE}redis: {{addr: '{addr}'}}\n"));
            assert!(e.contains("redis.addr: ") && e.contains(why), "{e}");
        }
    }

    #[test]
    fn a_bad_timeout_or_db_names_the_key() {
        let e = fail(&format!(
            "{FS}{REDIS_CACHE}redis: {{addr: 'r:6379', readtimeout: soon, db: -1}}\n"
        ));
        assert!(e.contains("redis.readtimeout: invalid duration"), "{e}");
        assert!(e.contains("redis.db: must not be negative"), "{e}");
    }

    #[test]
    fn a_zero_timeout_keeps_the_default() {
        let config = load(&format!(
            "{FS}{REDIS_CACHE}redis: {{addr: 'r:6379', dialtimeout: 0}}\n"
        ));
        let default = layerstore::cache::RedisCacheConfig::default();
        assert_eq!(config.redis.unwrap().dial_timeout, default.dial_timeout);
    }

    #[test]
    fn the_redis_cache_without_a_redis_section_is_an_error() {
        let e = fail(&format!("{FS}{REDIS_CACHE}"));
        assert!(
            e.contains("storage.cache.blobdescriptor: redis needs the redis section"),
            "{e}"
        );
    }

    #[test]
    fn a_redis_section_without_the_redis_cache_is_unused() {
        let config = load(&format!(
            "{FS}  cache: {{blobdescriptor: inmemory}}\nredis: {{addr: 'r:6379'}}\n"
        ));
        assert!(has_warning(&config, "redis"));
        assert!(!config.storage.redis_cache);
    }

    #[test]
    fn client_certificates_are_refused_naming_the_key() {
        let e = fail(&format!(
            "{FS}{REDIS_CACHE}redis: {{addr: 'r:6379', tls: {{enabled: true, certificate: /c.pem}}}}\n"
        ));
        assert!(
            e.contains("redis.tls.certificate: client certificates"),
            "{e}"
        );
    }

    #[test]
    fn the_password_is_redacted_in_the_description() {
        let config = load(&format!(
            "{FS}{REDIS_CACHE}redis: {{addr: 'r:6379', password: hunter2}}\n"
        ));
        let described = config.describe();
        assert!(described.contains("redis.addr"), "{described}");
        assert!(!described.contains("hunter2"), "{described}");
        assert!(
            described.contains("cache.blobdescriptor   redis"),
            "{described}"
        );
    }
}
