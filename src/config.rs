//! The server's configuration: YAML in the CNCF Distribution `config.yml` layout.
//! (YAML loading is being written; defaults and flags work.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layerstore::cache::{MemoryCache, MemoryCacheConfig};
use layerstore::upload::PurgerConfig;
use layerstore::{Backend, BackendConfig, Store};

/// Everything `layerstore serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub storage: Storage,
    pub http: Http,
    pub log: Log,
    /// Keys that were present but are not supported, by name; printed at start.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Storage {
    pub backend: BackendConfig,
    pub delete_enabled: bool,
    /// `None`: no blob-descriptor cache.
    pub cache: Option<MemoryCacheConfig>,
    pub purging: PurgerConfig,
}

#[derive(Debug, Clone)]
pub struct Http {
    pub addr: SocketAddr,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Log {
    /// A `tracing` filter level: error, warn, info, debug or trace.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            storage: Storage {
                backend: BackendConfig::default(),
                delete_enabled: true,
                cache: Some(MemoryCacheConfig::default()),
                purging: PurgerConfig::default(),
            },
            http: Http {
                addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
                tls: None,
            },
            log: Log {
                level: "info".to_owned(),
            },
            warnings: Vec::new(),
        }
    }
}

impl Config {
    /// The configuration from `path` (or the defaults), with the command-line overrides.
    pub fn resolve(
        path: Option<&Path>,
        addr: Option<SocketAddr>,
        root: Option<PathBuf>,
    ) -> Result<Self, String> {
        let mut config = match path {
            Some(path) => Self::load(path)?,
            None => Self::default(),
        };
        if let Some(addr) = addr {
            config.http.addr = addr;
        }
        if let Some(root) = root {
            config.storage.backend =
                BackendConfig::Filesystem(layerstore::backend::FilesystemConfig { root });
        }
        Ok(config)
    }

    /// Reads a YAML file.
    pub fn load(path: &Path) -> Result<Self, String> {
        Err(format!(
            "{}: YAML configuration is not supported yet",
            path.display()
        ))
    }

    /// Opens the store this configuration describes.
    pub fn open_store(&self) -> Result<Store, String> {
        let backend = Backend::from_config(&self.storage.backend).map_err(|e| e.to_string())?;
        let cache = self.storage.cache.map(|c| {
            Arc::new(MemoryCache::new(c)) as Arc<dyn layerstore::cache::BlobDescriptorCache>
        });
        Ok(Store::with_cache(backend, cache))
    }

    /// A human-readable account of what the configuration resolved to.
    pub fn describe(&self) -> String {
        format!("{self:#?}\n")
    }
}
