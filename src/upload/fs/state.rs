//! The state file of a filesystem upload session: two fixed slots, each able to hold one
//! checksummed record of the [`Session`].
//!
//! A new record overwrites, in place, the slot that does not hold the current one — no temp
//! file, no rename, no directory fsync — and a reader takes the intact record with the highest
//! sequence number. A write torn by a crash therefore costs at most the record it was writing:
//! the other slot still holds the one before.
//!
//! Slot layout (little-endian): magic and format tag (8 bytes), sequence number (u64), payload
//! length (u32), SHA-256 of the preceding 20 bytes and the payload (32 bytes), then the payload
//! — the `Session` JSON — and zero padding to [`SLOT`] bytes.
//!
//! A file that starts with `{` is the whole-file JSON state of earlier versions; it is still
//! read, and replaced by a slot file (atomically, by rename) on the session's next append.

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::upload::session::{Session, SessionRecord};

/// Bytes per slot: one page, so that writing a record dirties one page of the cache.
pub(super) const SLOT: usize = 4096;
/// Slots per file.
const SLOTS: usize = 2;
/// Size of a state file.
pub(super) const FILE_LEN: usize = SLOT * SLOTS;
/// "layerstore upload state", slot format 1.
const MAGIC: [u8; 8] = *b"LSUPST\x00\x01";
const HEADER: usize = 8 + 8 + 4 + 32;
/// The largest payload a slot holds. A filesystem session's JSON is well under 1 KiB whatever
/// the repository name (the name is at most 255 bytes; object-store fields stay empty).
const MAX_PAYLOAD: usize = SLOT - HEADER;

/// A session state as read from its file, with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// The slot that holds it; `None` for a legacy whole-file JSON state.
    pub(super) slot: Option<usize>,
    pub(super) seq: u64,
    pub(crate) state: Session,
}

impl Record {
    /// The record that follows this one: its slot is the other one (so this record survives a
    /// torn write of the next), its sequence the next number.
    pub(super) fn next(&self, state: Session) -> Self {
        Self {
            slot: Some(self.slot.map_or(0, |s| 1 - s)),
            seq: self.seq + 1,
            state,
        }
    }

    /// Where this record goes in the file.
    pub(super) fn position(&self) -> u64 {
        (self.slot.unwrap_or(0) * SLOT) as u64
    }

    /// The slot's bytes.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the state does not fit in a slot (never for a filesystem session).
    pub(super) fn encode(&self, key: &str) -> Result<Vec<u8>> {
        let payload = self.state.encode();
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::Corrupt {
                key: key.to_owned(),
                reason: format!(
                    "upload state of {} bytes does not fit a {SLOT}-byte slot",
                    payload.len()
                ),
            });
        }
        let mut slot = Vec::with_capacity(SLOT);
        slot.extend_from_slice(&MAGIC);
        slot.extend_from_slice(&self.seq.to_le_bytes());
        // Fits: at most MAX_PAYLOAD.
        slot.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let sum = checksum(&slot, &payload);
        slot.extend_from_slice(&sum);
        slot.extend_from_slice(&payload);
        slot.resize(SLOT, 0);
        Ok(slot)
    }

    /// A whole new state file holding this record in slot 0 and nothing in slot 1.
    pub(super) fn encode_file(state: Session, key: &str) -> Result<(Self, Vec<u8>)> {
        let record = Self {
            slot: Some(0),
            seq: 1,
            state,
        };
        let mut file = record.encode(key)?;
        file.resize(FILE_LEN, 0);
        Ok((record, file))
    }

    /// Reads a state file: the intact record with the highest sequence, or a legacy JSON state.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if neither slot holds an intact record, or the record's state is not
    /// one this version reads.
    pub(super) fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        if bytes.first() == Some(&b'{') {
            return Ok(Self {
                slot: None,
                seq: 0,
                state: Session::decode(key, bytes)?,
            });
        }
        let newest = (0..SLOTS)
            .filter_map(|slot| {
                let bytes = bytes.get(slot * SLOT..(slot + 1) * SLOT)?;
                decode_slot(bytes).map(|(seq, payload)| (slot, seq, payload))
            })
            .max_by_key(|&(_, seq, _)| seq);
        let Some((slot, seq, payload)) = newest else {
            return Err(Error::Corrupt {
                key: key.to_owned(),
                reason: "no intact upload state record in either slot".to_owned(),
            });
        };
        Ok(Self {
            slot: Some(slot),
            seq,
            state: Session::decode(key, payload)?,
        })
    }
}

fn checksum(header: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(header);
    h.update(payload);
    h.finalize().into()
}

/// The sequence number and payload of an intact slot; `None` for an empty, torn or foreign one.
fn decode_slot(slot: &[u8]) -> Option<(u64, &[u8])> {
    let header = slot.get(..HEADER)?;
    if header[..8] != MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(header[16..20].try_into().ok()?) as usize;
    let payload = slot.get(HEADER..HEADER + len.min(MAX_PAYLOAD))?;
    if len > MAX_PAYLOAD || checksum(&header[..20], payload)[..] != header[20..HEADER] {
        return None;
    }
    Some((seq, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::RepositoryName;

    const KEY: &str = "uploads/x/state";

    fn state(offset: u64) -> Session {
        let mut s = Session::new(RepositoryName::parse("library/app").unwrap());
        s.offset = offset;
        s
    }

    /// A file whose slots hold the given records (by slot index), the rest zero.
    fn file_of(records: &[&Record]) -> Vec<u8> {
        let mut file = vec![0u8; FILE_LEN];
        for r in records {
            let at = r.position() as usize;
            file[at..at + SLOT].copy_from_slice(&r.encode(KEY).unwrap());
        }
        file
    }

    #[test]
    fn a_new_file_reads_back_its_one_record() {
        let (record, file) = Record::encode_file(state(0), KEY).unwrap();
        assert_eq!(file.len(), FILE_LEN);
        let read = Record::decode(KEY, &file).unwrap();
        assert_eq!((read.slot, read.seq), (Some(0), 1));
        assert_eq!(read.state.offset, record.state.offset);
    }

    #[test]
    fn each_record_goes_to_the_slot_the_current_one_is_not_in() {
        let (first, _) = Record::encode_file(state(0), KEY).unwrap();
        let second = first.next(state(10));
        let third = second.next(state(20));
        assert_eq!((second.slot, second.seq), (Some(1), 2));
        assert_eq!((third.slot, third.seq), (Some(0), 3));
    }

    #[test]
    fn the_intact_record_with_the_highest_sequence_wins() {
        let (first, _) = Record::encode_file(state(0), KEY).unwrap();
        let second = first.next(state(10));
        let third = second.next(state(20));
        assert_eq!(
            Record::decode(KEY, &file_of(&[&first, &second]))
                .unwrap()
                .state
                .offset,
            10
        );
        // The third overwrote the first's slot: the highest sequence wins, not slot 0.
        let read = Record::decode(KEY, &file_of(&[&second, &third])).unwrap();
        assert_eq!((read.slot, read.seq, read.state.offset), (Some(0), 3, 20));
    }

    #[test]
    fn a_torn_newest_slot_falls_back_to_the_other() {
        let (first, _) = Record::encode_file(state(0), KEY).unwrap();
        let second = first.next(state(10));
        let third = second.next(state(20));
        let mut file = file_of(&[&second, &third]);
        // Only the head of the third record made it; the rest is what the slot held before
        // (zeros here).
        file[HEADER + 16..SLOT].fill(0);
        let read = Record::decode(KEY, &file).unwrap();
        assert_eq!((read.slot, read.seq, read.state.offset), (Some(1), 2, 10));
        // A flipped bit anywhere in the payload is caught as well.
        let mut file = file_of(&[&second, &third]);
        file[HEADER + 5] ^= 1;
        assert_eq!(Record::decode(KEY, &file).unwrap().state.offset, 10);
        // So is a flipped bit in the sequence number, which would otherwise win.
        let mut file = file_of(&[&second, &third]);
        file[8 + 7] ^= 0x80;
        assert_eq!(Record::decode(KEY, &file).unwrap().state.offset, 10);
    }

    #[test]
    fn no_intact_slot_is_corrupt_state() {
        for file in [
            vec![],
            vec![0u8; FILE_LEN],
            vec![0xa5; FILE_LEN],
            b"LSUPST".to_vec(),
        ] {
            let err = Record::decode(KEY, &file).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        }
    }

    #[test]
    fn a_short_file_reads_the_slots_it_has() {
        // A file cut after slot 0 (its size not yet durable when a crash came).
        let (_, file) = Record::encode_file(state(0), KEY).unwrap();
        let read = Record::decode(KEY, &file[..SLOT]).unwrap();
        assert_eq!(read.seq, 1);
    }

    #[test]
    fn a_legacy_json_state_is_read_and_its_successor_starts_slot_zero() {
        let json = state(30).encode();
        let read = Record::decode(KEY, &json).unwrap();
        assert_eq!((read.slot, read.seq, read.state.offset), (None, 0, 30));
        let next = read.next(state(40));
        assert_eq!((next.slot, next.seq), (Some(0), 1));
    }

    #[test]
    fn the_largest_filesystem_state_fits_a_slot_with_room_to_spare() {
        let longest = ["a"; 128].join("/"); // 255 bytes, the longest name
        let mut s = Session::new(RepositoryName::parse(&longest).unwrap());
        s.offset = u64::MAX;
        let len = s.encode().len();
        assert!(len * 4 < MAX_PAYLOAD, "{len} bytes");
        let record = Record {
            slot: Some(1),
            seq: u64::MAX,
            state: s,
        };
        let mut file = vec![0u8; SLOT];
        file.extend_from_slice(&record.encode(KEY).unwrap());
        assert_eq!(Record::decode(KEY, &file).unwrap().seq, u64::MAX);
    }
}
