//! Garbage collection on shared storage, as operators run it: two `layerstore serve`
//! processes on one S3 prefix take pushes and pulls while a third replica (this process,
//! through the library, as `layerstore gc` would) collects. Every image a server
//! acknowledged must pull from both servers afterwards, and the garbage made before the run
//! must be gone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::server::S3Server;
use common::*;
use layerstore::Digest;
use layerstore::gc::{GcLockTiming, GcOptions};
use layerstore::manifest::media_type;
use reqwest::{Client, StatusCode, header};
use serde_json::json;

/// Pushes a two-blob image (config + layer) through `server` as `app:tag`; returns the
/// manifest bytes and the blobs.
async fn push(client: &Client, server: &S3Server, tag: &str) -> (Bytes, Vec<Bytes>) {
    let config = Bytes::from(format!("{{\"tag\":\"{tag}\"}}"));
    let layer = Bytes::from(format!("layer of {tag} ").repeat(200));
    for blob in [&config, &layer] {
        let digest = Digest::sha256(blob);
        let put = client
            .post(server.url(&format!("/v2/app/blobs/uploads/?digest={digest}")))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::CREATED, "blob of {tag}");
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::sha256(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": Digest::sha256(&layer).to_string(), "size": layer.len()}],
    });
    let manifest = Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let put = client
        .put(server.url(&format!("/v2/app/manifests/{tag}")))
        .header(header::CONTENT_TYPE, media_type::OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED, "manifest {tag}");
    (manifest, vec![config, layer])
}

/// Pulls `app:tag` through `server` and checks every byte.
async fn pulls(client: &Client, server: &S3Server, tag: &str, manifest: &Bytes, blobs: &[Bytes]) {
    let got = client
        .get(server.url(&format!("/v2/app/manifests/{tag}")))
        .header(header::ACCEPT, media_type::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK, "manifest {tag}");
    assert_eq!(&got.bytes().await.unwrap(), manifest, "manifest {tag}");
    for blob in blobs {
        let digest = Digest::sha256(blob);
        let url = server.url(&format!("/v2/app/blobs/{digest}"));
        let head = client.head(&url).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK, "HEAD {digest} of {tag}");
        let got = client.get(&url).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK, "GET {digest} of {tag}");
        assert_eq!(&got.bytes().await.unwrap(), blob, "{digest} of {tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_beside_two_servers_on_s3_loses_nothing_they_acknowledged() {
    let Some(b) = make(BackendKind::S3).await else {
        return;
    };
    let (one, two) = (S3Server::start(&b), S3Server::start(&b));
    let client = Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let store = store_on(&b);
    // Garbage made before the run: an image whose manifest is deleted, and a loose blob.
    let (old, _) = push(&client, &one, "old").await;
    store
        .repository(repo("app"))
        .delete_manifest(&Digest::sha256(&old))
        .await
        .unwrap();
    let loose = Bytes::from_static(b"pushed and never used");
    store
        .repository(repo("scratch"))
        .put_blob(&Digest::sha256(&loose), loose.clone())
        .await
        .unwrap();
    let (kept, kept_blobs) = push(&client, &two, "kept").await;

    let options = GcOptions {
        grace: Duration::ZERO,
        lock: GcLockTiming {
            heartbeat: Duration::from_millis(200),
            stale_after: Duration::from_secs(2),
        },
        ..GcOptions::default()
    };
    let done = Arc::new(AtomicBool::new(false));
    let run = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let report = store.gc(options, &|_| {}).await;
            done.store(true, Ordering::SeqCst);
            report
        })
    };
    // Push through one server, pull through the other, for as long as the run lasts.
    let mut pushed = vec![];
    let mut i = 0;
    while !done.load(Ordering::SeqCst) || i < 5 {
        let tag = format!("during-{i}");
        let (manifest, blobs) = push(&client, &one, &tag).await;
        pulls(&client, &two, &tag, &manifest, &blobs).await;
        pushed.push((tag, manifest, blobs));
        i += 1;
    }
    let report = run.await.unwrap().unwrap();
    // The old image's manifest, config and layer, and the loose blob.
    assert_eq!(report.removed.blobs, 4, "{report:?}");
    for server in [&one, &two] {
        pulls(&client, server, "kept", &kept, &kept_blobs).await;
        for (tag, manifest, blobs) in &pushed {
            pulls(&client, server, tag, manifest, blobs).await;
        }
    }
    let gone = client
        .head(one.url(&format!("/v2/scratch/blobs/{}", Digest::sha256(&loose))))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}
