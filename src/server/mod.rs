//! The OCI Distribution API v1.1 on a [`layerstore::Store`].

use crate::config::Config;

pub async fn serve(config: Config) -> Result<(), String> {
    let _store = config.open_store()?;
    Err("the server is being written".to_owned())
}
