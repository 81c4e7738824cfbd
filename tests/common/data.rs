//! Test data: names, deterministic contents, and bodies delivered in pieces.

use bytes::Bytes;
use futures::StreamExt;
use layerstore::RepositoryName;
use layerstore::upload::ChunkStream;

/// A repository name the test knows to be valid.
pub fn repo(name: &str) -> RepositoryName {
    RepositoryName::parse(name).unwrap()
}

/// Deterministic bytes that differ at every position from those of any other seed, so a
/// misplaced or missing byte shows up as a mismatch.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `data` as a chunk stream delivered in pieces of at most `piece` bytes, as a network body
/// would be.
pub fn in_pieces(data: &[u8], piece: usize) -> ChunkStream<'static> {
    let all = Bytes::copy_from_slice(data);
    let pieces: Vec<std::io::Result<Bytes>> = (0..all.len())
        .step_by(piece)
        .map(|i| Ok(all.slice(i..(i + piece).min(all.len()))))
        .collect();
    futures::stream::iter(pieces).boxed()
}

/// Every key under `prefix` in `objects`, sorted.
pub async fn keys_of(objects: &dyn object_store::ObjectStore, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let prefix = object_store::path::Path::from(prefix);
    let mut keys: Vec<String> = objects
        .list(Some(&prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Every key under `prefix` in the test backend (files, on the filesystem), sorted.
pub async fn keys(b: &super::TestBackend, prefix: &str) -> Vec<String> {
    keys_of(b.store.as_ref(), prefix).await
}
