//! Backends built from configuration (`Backend::from_config`), as a deployment builds them,
//! against the real S3 and Azure servers of the test environment.

use bytes::Bytes;
use futures::TryStreamExt;
use layerstore::backend::{AzureConfig, S3Config};
use layerstore::{BackendConfig, Digest, RepositoryName, Store};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `None` (skip) when the server is not configured, except under CI=true.
fn configured(var: &str, what: &str) -> Option<String> {
    let value = env(var);
    if value.is_none() {
        assert!(
            env("CI").is_none_or(|ci| ci != "true" && ci != "1"),
            "CI=true but {var} is not set: the {what} server must run in CI"
        );
        eprintln!("skipped: {what} not configured (set {var})");
    }
    value
}

fn unique_prefix() -> String {
    format!("config-test-{:016x}", rand::random::<u64>())
}

async fn round_trip(store: &Store) {
    let repo = store.repository(RepositoryName::parse("config/roundtrip").unwrap());
    let data = Bytes::from_static(b"written through a configured backend");
    let digest = Digest::sha256(&data);
    repo.put_blob(&digest, data.clone()).await.unwrap();
    let read = repo.read_blob(&digest, None).await.unwrap();
    let got: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    assert_eq!(got.concat(), data);
}

#[tokio::test]
async fn an_s3_backend_from_configuration_stores_and_reads_blobs() {
    let Some(endpoint) = configured("LAYERSTORE_TEST_S3_ENDPOINT", "S3") else {
        return;
    };
    let config = BackendConfig::S3(S3Config {
        bucket: env("LAYERSTORE_TEST_S3_BUCKET").expect("LAYERSTORE_TEST_S3_BUCKET"),
        region: env("LAYERSTORE_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".to_owned()),
        endpoint: Some(endpoint),
        allow_http: true,
        access_key_id: env("LAYERSTORE_TEST_S3_ACCESS_KEY_ID"),
        secret_access_key: env("LAYERSTORE_TEST_S3_SECRET_ACCESS_KEY"),
        session_token: None,
        prefix: Some(unique_prefix()),
    });
    round_trip(&Store::open(&config).unwrap()).await;
}

#[tokio::test]
async fn an_azure_backend_from_configuration_stores_and_reads_blobs() {
    let Some(endpoint) = configured("LAYERSTORE_TEST_AZURE_ENDPOINT", "Azure") else {
        return;
    };
    let config = BackendConfig::Azure(AzureConfig {
        account: env("LAYERSTORE_TEST_AZURE_ACCOUNT").expect("LAYERSTORE_TEST_AZURE_ACCOUNT"),
        container: env("LAYERSTORE_TEST_AZURE_CONTAINER").expect("LAYERSTORE_TEST_AZURE_CONTAINER"),
        access_key: env("LAYERSTORE_TEST_AZURE_KEY"),
        endpoint: Some(endpoint),
        allow_http: true,
        prefix: Some(unique_prefix()),
        use_emulator: false,
    });
    round_trip(&Store::open(&config).unwrap()).await;
}

/// `use_emulator` reaches Azurite at `AZURITE_BLOB_STORAGE_URL` with its well-known account.
#[tokio::test]
async fn an_azure_backend_can_target_the_emulator_by_flag() {
    let Some(_) = configured(
        "AZURITE_BLOB_STORAGE_URL",
        "Azurite (AZURITE_BLOB_STORAGE_URL)",
    ) else {
        return;
    };
    let config = BackendConfig::Azure(AzureConfig {
        account: "ignored-with-the-emulator".to_owned(),
        container: env("LAYERSTORE_TEST_AZURE_CONTAINER").expect("LAYERSTORE_TEST_AZURE_CONTAINER"),
        access_key: None,
        endpoint: None,
        allow_http: false,
        prefix: Some(unique_prefix()),
        use_emulator: true,
    });
    round_trip(&Store::open(&config).unwrap()).await;
}
