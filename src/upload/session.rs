//! What every engine's session state has in common: the repository, the offset, the times, and
//! the hash state of the bytes received so far — enough to resume a session and to commit it
//! without reading back an uploaded byte.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256, Sha512};

use super::{UploadId, UploadStatus};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, RangeError, Result};
use crate::name::RepositoryName;

/// Version of the state format; bumped on any incompatible change. 2 added multipart uploads,
/// the append claim and the commit marker; 3 added the verified commit (object stores: pieces
/// that no purge or cancel may delete) and the SHA-512 hash state. A build must refuse a state
/// of a format it does not know rather than misread it (an old replica would take a verified
/// commit for an abandoned one and delete a blob's pieces).
pub(crate) const STATE_FORMAT: u32 = 3;
/// Formats this build reads (and rewrites as `STATE_FORMAT`).
const READABLE_FORMATS: [u32; 3] = [1, 2, 3];
/// Tags of the serialized hash states: which crate and layout wrote them.
const SHA256_FORMAT: &str = "sha2-0.11/sha256";
const SHA512_FORMAT: &str = "sha2-0.11/sha512";

/// The part of a session's persisted state that every engine has.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Session {
    pub(crate) format: u32,
    pub(crate) repository: RepositoryName,
    pub(crate) offset: u64,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) last_active: DateTime<Utc>,
    /// SHA-256 of the bytes so far, always kept.
    hash: HashState,
    /// SHA-512 of the bytes so far, kept once a commit under a SHA-512 digest has asked for
    /// it (or the session was started for one): that commit re-hashed the stored bytes once,
    /// and every later append hashes both, so no later commit reads anything back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha512: Option<HashState>,
}

impl Session {
    pub(crate) fn new(repository: RepositoryName) -> Self {
        let now = Utc::now();
        Self {
            format: STATE_FORMAT,
            repository,
            offset: 0,
            started_at: now,
            last_active: now,
            hash: HashState::sha256(&Sha256::new()),
            sha512: None,
        }
    }

    pub(crate) fn status(&self, id: &UploadId) -> UploadStatus {
        UploadStatus {
            id: id.clone(),
            repository: self.repository.clone(),
            offset: self.offset,
            started_at: self.started_at.into(),
            last_active: self.last_active.into(),
        }
    }

    /// Checks that a state read from `key` is of a format this build knows, and marks it as
    /// the current format (it is written back as such).
    pub(crate) fn check_format(&mut self, key: &str) -> Result<()> {
        if !READABLE_FORMATS.contains(&self.format) {
            return Err(Error::Corrupt {
                key: key.to_owned(),
                reason: format!(
                    "upload state format {} (this build reads {READABLE_FORMATS:?})",
                    self.format
                ),
            });
        }
        self.format = STATE_FORMAT;
        Ok(())
    }

    pub(crate) fn check_offset(&self, requested: u64) -> Result<()> {
        if requested == self.offset {
            Ok(())
        } else {
            Err(Error::RangeInvalid(RangeError::UploadOffset {
                current: self.offset,
                requested,
            }))
        }
    }

    /// A session is reached through the repository it was started in only.
    pub(crate) fn check_repository(&self, repo: &RepositoryName, id: &UploadId) -> Result<()> {
        if &self.repository == repo {
            Ok(())
        } else {
            Err(Error::BlobUploadUnknown { id: id.to_string() })
        }
    }

    /// The hashers to continue with, or `None` if a hash state was written by something this
    /// build cannot read (a commit then re-hashes the stored bytes; an append cannot go on).
    pub(crate) fn hashes(&self) -> Option<Hashes> {
        let sha512 = match &self.sha512 {
            Some(state) => Some(state.restore::<Sha512>(SHA512_FORMAT)?),
            None => None,
        };
        Some(Hashes {
            sha256: self.hash.restore::<Sha256>(SHA256_FORMAT)?,
            sha512,
        })
    }

    /// The hashers to continue an append with.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a hash state cannot be restored (written by another version).
    pub(crate) fn hashes_for_append(&self, key: &str) -> Result<Hashes> {
        self.hashes().ok_or_else(|| Error::Corrupt {
            key: key.to_owned(),
            reason: "hash state written by another version; commit re-hashes, appends cannot"
                .to_owned(),
        })
    }

    /// Records `n` more bytes, hashed into `hashes`.
    pub(crate) fn advance(&mut self, n: u64, hashes: &Hashes) {
        self.offset += n;
        self.last_active = Utc::now();
        self.set_hashes(hashes);
    }

    pub(crate) fn set_hashes(&mut self, hashes: &Hashes) {
        self.hash = HashState::sha256(&hashes.sha256);
        self.sha512 = hashes.sha512.as_ref().map(HashState::sha512);
    }

    /// The digest of the bytes so far under `algorithm`, if the session keeps that hash.
    pub(crate) fn digest(&self, algorithm: Algorithm) -> Option<Digest> {
        self.hashes()?.digest(algorithm)
    }

    /// How long the session has been idle at `now` (zero if its last activity is ahead of
    /// this machine's clock).
    pub(crate) fn idle(&self, now: SystemTime) -> Duration {
        now.duration_since(self.last_active.into())
            .unwrap_or_default()
    }
}

/// A persisted session state: the common [`Session`] and what its engine adds, as JSON.
pub(crate) trait SessionRecord: Serialize + serde::de::DeserializeOwned {
    fn session_mut(&mut self) -> &mut Session;

    fn encode(&self) -> bytes::Bytes {
        // Plain strings and numbers: serialization cannot fail.
        bytes::Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Reads a state written at `key`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if it is not a state, or of a format this build does not read.
    fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        let mut state: Self = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        state.session_mut().check_format(key)?;
        Ok(state)
    }
}

impl SessionRecord for Session {
    fn session_mut(&mut self) -> &mut Session {
        self
    }
}

/// The running hashes of a session's bytes: SHA-256 always, SHA-512 once asked for.
#[derive(Clone)]
pub(crate) struct Hashes {
    pub(crate) sha256: Sha256,
    pub(crate) sha512: Option<Sha512>,
}

impl Hashes {
    /// Fresh hashers for a blob whose digest will be under `algorithm`.
    pub(crate) fn for_algorithm(algorithm: Algorithm) -> Self {
        Self {
            sha256: Sha256::new(),
            sha512: (algorithm == Algorithm::Sha512).then(Sha512::new),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(h) = &mut self.sha512 {
            h.update(data);
        }
    }

    /// The digest under `algorithm`, if kept.
    pub(crate) fn digest(&self, algorithm: Algorithm) -> Option<Digest> {
        match algorithm {
            Algorithm::Sha256 => Some(Digest::Sha256(self.sha256.clone().finalize().into())),
            Algorithm::Sha512 => self
                .sha512
                .as_ref()
                .map(|h| Digest::Sha512(h.clone().finalize().into())),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HashState {
    format: String,
    /// Hex of sha2's serialized state.
    state: String,
}

impl HashState {
    fn sha256(hasher: &Sha256) -> Self {
        Self::of(hasher, SHA256_FORMAT)
    }

    fn sha512(hasher: &Sha512) -> Self {
        Self::of(hasher, SHA512_FORMAT)
    }

    fn of<H: SerializableState>(hasher: &H, format: &str) -> Self {
        Self {
            format: format.to_owned(),
            state: hex_encode(&hasher.serialize()),
        }
    }

    fn restore<H: SerializableState>(&self, format: &str) -> Option<H> {
        if self.format != format {
            return None;
        }
        let bytes = hex_decode(&self.state)?;
        let serialized = SerializedState::<H>::try_from(bytes.as_slice()).ok()?;
        H::deserialize(&serialized).ok()
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new("library/hello".parse().unwrap())
    }

    #[test]
    fn hash_states_round_trip_mid_stream() {
        let mut s = session();
        let mut hashes = s.hashes().unwrap();
        hashes.sha512 = Some(Sha512::new());
        hashes.update(b"hello ");
        s.advance(6, &hashes);
        let mut restored = s.hashes().expect("restorable");
        restored.update(b"world");
        assert_eq!(
            restored.digest(Algorithm::Sha256),
            Some(Digest::sha256(b"hello world"))
        );
        assert_eq!(
            restored.digest(Algorithm::Sha512),
            Some(Digest::compute(Algorithm::Sha512, b"hello world"))
        );
    }

    #[test]
    fn a_session_keeps_no_sha512_until_asked() {
        assert_eq!(session().digest(Algorithm::Sha512), None);
        assert!(session().digest(Algorithm::Sha256).is_some());
    }

    #[test]
    fn foreign_hash_state_is_not_restored() {
        let mut s = session();
        s.hash.format = "sha2-0.12/sha256".to_owned();
        assert!(s.hashes().is_none());
        let mut s = session();
        s.hash.state.truncate(10);
        assert!(s.hashes().is_none());
        assert!(matches!(
            s.hashes_for_append("k"),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn older_formats_are_read_and_rewritten_as_the_current_one() {
        for old in [1, 2] {
            let mut s = session();
            s.format = old;
            s.check_format("k").unwrap();
            assert_eq!(s.format, STATE_FORMAT);
        }
    }

    #[test]
    fn a_state_of_a_later_format_is_refused_as_corrupt() {
        let mut s = session();
        s.format = STATE_FORMAT + 1;
        let e = s.check_format("k").unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    }
}
