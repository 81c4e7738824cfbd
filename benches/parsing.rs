//! Parsing costs on the request path: digests, repository names and manifests, plus the raw
//! SHA-256 throughput that bounds every upload and manifest put.
//!
//! `cargo bench --bench parsing -- digest` (or `name`, `manifest`) runs one group.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use layerstore::manifest::media_type;
use layerstore::{Digest, Manifest, RepositoryName};
use serde_json::{Value, json};

fn digest(c: &mut Criterion) {
    let mut group = c.benchmark_group("digest");
    let d = Digest::sha256(b"layerstore");
    let s = d.to_string();
    group.bench_function("parse sha256", |b| {
        b.iter(|| Digest::parse(black_box(&s)).unwrap());
    });
    group.bench_function("print sha256", |b| b.iter(|| black_box(&d).to_string()));

    // The ceiling for anything that has to hash what it stores.
    let mib = vec![0x5a_u8; 1024 * 1024];
    group.throughput(Throughput::Bytes(mib.len() as u64));
    group.bench_function("sha256 1 MiB", |b| {
        b.iter(|| Digest::sha256(black_box(&mib)));
    });
    group.finish();
}

fn name(c: &mut Criterion) {
    let mut group = c.benchmark_group("name");
    for s in [
        "library/alpine",
        "ghcr.io-mirror/my-org/team_a/service__api/build-cache",
    ] {
        group.bench_function(format!("parse {s}"), |b| {
            b.iter(|| RepositoryName::parse(black_box(s)).unwrap());
        });
    }
    group.finish();
}

fn descriptor(media_type: &str, seed: usize, size: u64) -> Value {
    json!({
        "mediaType": media_type,
        "digest": Digest::sha256(&seed.to_le_bytes()).to_string(),
        "size": size,
    })
}

/// An image manifest as buildkit pushes it: a config, five gzip layers, a few annotations.
fn oci_manifest() -> Bytes {
    let layers: Vec<Value> = (0..5)
        .map(|i| {
            descriptor(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                i,
                3_000_000 + i as u64,
            )
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", 100, 7_023),
        "layers": layers,
        "annotations": {
            "org.opencontainers.image.created": "2025-01-01T00:00:00Z",
            "org.opencontainers.image.source": "https://github.com/example/service",
            "org.opencontainers.image.revision": "4f2a9c1e0b7d3a6f8e5c2b1a0d9e8f7c6b5a4d3e",
        },
    });
    Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap())
}

/// A multi-platform index with 200 children.
fn oci_index_200() -> Bytes {
    let manifests: Vec<Value> = (0..200)
        .map(|i| {
            let mut d = descriptor(media_type::OCI_MANIFEST, i, 1_500 + i as u64);
            d["platform"] = json!({ "architecture": format!("arch{i}"), "os": "linux" });
            d
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests,
    });
    Bytes::from(serde_json::to_vec_pretty(&index).unwrap())
}

fn manifest(c: &mut Criterion) {
    let mut group = c.benchmark_group("manifest");
    for (id, body, content_type) in [
        (
            "parse oci manifest 5 layers",
            oci_manifest(),
            media_type::OCI_MANIFEST,
        ),
        (
            "parse oci index 200 children",
            oci_index_200(),
            media_type::OCI_INDEX,
        ),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(id, |b| {
            b.iter(|| Manifest::parse(black_box(body.clone()), Some(content_type)).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, digest, name, manifest);
criterion_main!(benches);
