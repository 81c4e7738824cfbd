//! Redis for the cache tests: the shared server named by `LAYERSTORE_TEST_REDIS`
//! (`redis://host:port`, started by `.ci/run`), and servers a test starts and stops itself.
//!
//! Without the variable (or without `redis-server` for the tests that start their own) the
//! tests print `skipped: ...` and pass, except under `CI=true`, where they fail.

use std::io::Write as _;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layerstore::cache::{BlobDescriptorCache, RedisCache, RedisCacheConfig};

pub const REDIS_SWITCH: &str = "LAYERSTORE_TEST_REDIS";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Prints `skipped: ...` (or panics under CI) and returns `None`.
pub fn skip<T>(why: &str) -> Option<T> {
    assert!(!in_ci(), "{why} but CI=true: Redis tests must run in CI");
    let test = std::thread::current()
        .name()
        .map(|name| format!(" [{name}]"))
        .unwrap_or_default();
    let _ = writeln!(std::io::stderr(), "skipped: {why}{test}");
    None
}

/// Settings for the shared test server, under a key prefix of their own (each call gets a
/// fresh, empty cache); `None` (skipped) when `LAYERSTORE_TEST_REDIS` is not set.
pub fn redis_config() -> Option<RedisCacheConfig> {
    let Ok(url) = std::env::var(REDIS_SWITCH) else {
        return skip(&format!("Redis not configured (set {REDIS_SWITCH})"));
    };
    let hostport = url
        .strip_prefix("redis://")
        .unwrap_or_else(|| panic!("{REDIS_SWITCH} must be redis://host:port, not {url}"));
    let (host, port) = hostport
        .trim_end_matches('/')
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{REDIS_SWITCH} must be redis://host:port, not {url}"));
    Some(config_at(host, port.parse().expect("a port number")))
}

/// Settings for a server at `host:port`, under a fresh key prefix.
pub fn config_at(host: &str, port: u16) -> RedisCacheConfig {
    RedisCacheConfig {
        host: host.to_owned(),
        port,
        // Generous for a loaded CI machine; the outage tests use short ones of their own.
        dial_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        key_prefix: format!("t-{:016x}", rand::random::<u64>()),
        ..RedisCacheConfig::default()
    }
}

/// A cache over `config`.
pub fn redis_cache(config: &RedisCacheConfig) -> Arc<dyn BlobDescriptorCache> {
    Arc::new(RedisCache::new(config.clone()).expect("redis cache"))
}

/// A `redis-server` this test started on a port of its own, stopped when dropped.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts one on a free port; `None` (skipped) without `redis-server`.
    pub fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            return skip("redis-server not installed");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self { port, child: None };
        redis.restart();
        Some(redis)
    }

    /// Starts it (again) on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (the connection drops; the port refuses).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Settings for this server with short timeouts, under a fresh key prefix.
    pub fn config(&self) -> RedisCacheConfig {
        RedisCacheConfig {
            dial_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_millis(500),
            read_timeout: Duration::from_millis(500),
            retry_after: Duration::from_millis(200),
            ..config_at("127.0.0.1", self.port)
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
