//! Health checks (`health`), as CNCF Distribution 2.8 runs them.
//!
//! The `storagedriver` check probes the backend every `interval` ([`layerstore::Store::probe`]:
//! one read, through the configured location each time) and fails once `threshold` probes in a
//! row failed; one good probe makes it pass again. It is named `storagedriver_<driver>`
//! (`storagedriver_filesystem`, `storagedriver_s3`, ...), as Distribution names it.
//!
//! While a check fails:
//! - `/debug/health` on the debug server answers 503 with a JSON object naming each failing
//!   check and its error (200 with `{}` otherwise);
//! - the registry port answers every request 503 `UNAVAILABLE` ("health check failed: please
//!   see /debug/health"), as Distribution's `health.Handler` does, so a load balancer or a
//!   client stops sending work to a replica that cannot reach its storage.
//!
//! A probe that finds nothing at its key passes: Distribution's check lets "path not found"
//! through (the backend answered), so an absent filesystem root is healthy (the next write
//! creates it); a root replaced by a file, unreadable, or a backend that errors or does not
//! answer within `interval` is not.

use layerstore::{BackendConfig, Store};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::time::MissedTickBehavior;

use crate::config::StorageDriverCheck;

/// The process's checks and what each last concluded.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<Vec<Check>>,
}

struct Check {
    name: String,
    /// The error while failing, `None` while passing.
    failing: Mutex<Option<String>>,
}

impl Health {
    /// Starts the configured checks on the current runtime (none: always healthy).
    pub fn spawn(
        store: &Store,
        backend: &BackendConfig,
        check: Option<StorageDriverCheck>,
    ) -> Self {
        let Some(check) = check else {
            return Self::default();
        };
        let health = Self {
            checks: Arc::new(vec![Check {
                name: format!("storagedriver_{}", driver_name(backend)),
                failing: Mutex::new(None),
            }]),
        };
        let store = store.clone();
        let checks = Arc::clone(&health.checks);
        tokio::spawn(async move { probe_forever(&store, &checks[0], check).await });
        health
    }

    /// Whether any check is configured.
    pub fn is_checked(&self) -> bool {
        !self.checks.is_empty()
    }

    /// Each failing check by name, with its error; empty when healthy.
    pub fn failing(&self) -> BTreeMap<String, String> {
        self.checks
            .iter()
            .filter_map(|c| {
                let failing = c.failing.lock().unwrap_or_else(|e| e.into_inner()).clone();
                failing.map(|error| (c.name.clone(), error))
            })
            .collect()
    }
}

/// Distribution's name of the storage driver.
fn driver_name(backend: &BackendConfig) -> &'static str {
    match backend {
        BackendConfig::Filesystem(_) => "filesystem",
        BackendConfig::Memory => "inmemory",
        BackendConfig::S3(_) => "s3",
        BackendConfig::Azure(_) => "azure",
    }
}

async fn probe_forever(store: &Store, check: &Check, config: StorageDriverCheck) {
    let mut every = tokio::time::interval(config.interval);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failures_in_a_row = 0u32;
    loop {
        every.tick().await;
        let result = match tokio::time::timeout(config.interval, store.probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", config.interval)),
        };
        let mut failing = check.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if failing.take().is_some() {
                    tracing::info!(check = %check.name, "health check passes again");
                }
                failures_in_a_row = 0;
            }
            Err(error) => {
                failures_in_a_row = failures_in_a_row.saturating_add(1);
                if failures_in_a_row >= config.threshold {
                    if failing.is_none() {
                        tracing::error!(check = %check.name, %error, "health check fails");
                    }
                    *failing = Some(error);
                } else {
                    tracing::warn!(
                        check = %check.name,
                        %error,
                        failures_in_a_row,
                        threshold = config.threshold,
                        "health probe failed"
                    );
                }
            }
        }
    }
}
