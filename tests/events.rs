//! The store's events, caught in-process by the sink a frontend installs
//! (`Store::with_events`): one per operation that succeeded, none for one that failed.

use bytes::Bytes;
use layerstore::events::{Action, Event, Kind, channel};
use layerstore::manifest::media_type;
use layerstore::{Backend, ByteRange, Digest, Reference, RepositoryName, Store, Tag};
use tokio::sync::mpsc::Receiver;

fn drain(events: &mut Receiver<Event>) -> Vec<Event> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

fn name(s: &str) -> RepositoryName {
    RepositoryName::parse(s).unwrap()
}

#[tokio::test]
async fn the_sink_receives_each_operation_in_order() {
    let (sink, mut events) = channel(64);
    let store = Store::new(Backend::in_memory()).with_events(sink.clone());
    let repo = store.repository(name("team/app"));
    let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
    let config_digest = Digest::sha256(&config);
    repo.put_blob(&config_digest, config.clone()).await.unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[]}}"#,
        media_type::OCI_MANIFEST,
        config.len()
    );
    let latest = Reference::Tag(Tag::parse("latest").unwrap());
    let put = repo
        .put_manifest(
            &latest,
            Bytes::from(manifest.clone()),
            Some(media_type::OCI_MANIFEST),
        )
        .await
        .unwrap();
    repo.get_manifest(&latest).await.unwrap();
    repo.read_blob(&config_digest, None).await.unwrap();
    repo.stat_blob(&config_digest).await.unwrap();
    assert!(repo.blob_exists(&config_digest).await.unwrap());
    let copy = store.repository(name("team/copy"));
    assert!(copy.mount_blob(repo.name(), &config_digest).await.unwrap());
    repo.delete_manifest(&put.digest).await.unwrap();
    repo.unlink_blob(&config_digest).await.unwrap();

    let got = drain(&mut events);
    let got: Vec<(Action, Kind, Option<Digest>, Option<&str>)> = got
        .iter()
        .map(|e| {
            (
                e.action,
                e.kind,
                e.digest,
                e.tag.as_ref().map(AsRef::as_ref),
            )
        })
        .collect();
    let m = Some(put.digest);
    let c = Some(config_digest);
    assert_eq!(
        got,
        [
            (Action::Push, Kind::Blob, c, None),
            (Action::Push, Kind::Manifest, m, Some("latest")),
            (Action::Pull, Kind::Manifest, m, Some("latest")),
            (Action::Pull, Kind::Blob, c, None),
            // A stat is a HEAD: a pull, as in Distribution; blob_exists emits nothing.
            (Action::Pull, Kind::Blob, c, None),
            (Action::Mount, Kind::Blob, c, None),
            (Action::Delete, Kind::Manifest, m, None),
            (Action::Delete, Kind::Tag, None, Some("latest")),
            (Action::Delete, Kind::Blob, c, None),
        ]
    );
    assert_eq!(sink.dropped(), 0);
}

#[tokio::test]
async fn push_and_pull_events_describe_what_was_stored() {
    let (sink, mut events) = channel(8);
    let store = Store::new(Backend::in_memory()).with_events(sink);
    let repo = store.repository(name("team/app"));
    let data = Bytes::from_static(b"layer bytes");
    let digest = Digest::sha256(&data);
    repo.put_blob(&digest, data).await.unwrap();
    let from = repo.name().clone();
    let copy = store.repository(name("team/copy"));
    copy.mount_blob(&from, &digest).await.unwrap();
    let got = drain(&mut events);
    assert_eq!(got[0].repository, name("team/app"));
    assert_eq!(got[0].size, Some(11));
    assert_eq!(
        got[0].media_type.as_deref(),
        Some(layerstore::store::BLOB_MEDIA_TYPE)
    );
    assert_eq!(got[1].action, Action::Mount);
    assert_eq!(got[1].repository, name("team/copy"));
    assert_eq!(got[1].from_repository, Some(from));
}

#[tokio::test]
async fn a_failed_operation_emits_nothing() {
    let (sink, mut events) = channel(8);
    let store = Store::new(Backend::in_memory()).with_events(sink);
    let repo = store.repository(name("team/app"));
    let wrong = Digest::sha256(b"other bytes");
    assert!(
        repo.put_blob(&wrong, Bytes::from_static(b"bytes"))
            .await
            .is_err()
    );
    let latest = Reference::Tag(Tag::parse("latest").unwrap());
    assert!(
        repo.put_manifest(&latest, Bytes::from_static(b"{}"), None)
            .await
            .is_err()
    );
    assert!(repo.get_manifest(&latest).await.is_err());
    assert!(repo.stat_blob(&wrong).await.is_err());
    assert!(repo.unlink_blob(&wrong).await.is_err());
    // A read whose range lies past the blob is refused: no pull either.
    let held = Digest::sha256(b"held");
    repo.put_blob(&held, Bytes::from_static(b"held"))
        .await
        .unwrap();
    drain(&mut events);
    assert!(
        repo.read_blob(&held, Some(ByteRange::From(100)))
            .await
            .is_err()
    );
    assert!(drain(&mut events).is_empty());
}

#[tokio::test]
#[should_panic(expected = "has an event sink already")]
async fn a_store_takes_one_sink() {
    let (first, _a) = channel(1);
    let (second, _b) = channel(1);
    let _ = Store::new(Backend::in_memory())
        .with_events(first)
        .with_events(second);
}
