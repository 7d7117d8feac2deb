//! Column families and key encodings of the event log: every byte layout on disk apart from
//! the record codec lives here.
//!
//! All integers in keys are big-endian so that byte order is numeric order.

use uuid::Uuid;

use crate::types::Position;

/// Records by global position: `position (u64 BE)` → encoded record. Keys only ever grow,
/// the cheapest pattern for an LSM tree.
pub const CF_EVENTS: &str = "events";
/// The stream index, one entry per append (its events have consecutive versions and
/// positions): `stream key ‖ first version (u64 BE)` → `first position (u64 BE) ‖ count (u32 BE)`.
pub const CF_STREAMS: &str = "streams";
/// Event ids: `uuid (16 bytes)` → `position (u64 BE) ‖ index in its append (u32 BE) ‖
/// length of its append (u32 BE)`. The append shape lets a retry be recognised as exactly
/// the original append without reading records.
pub const CF_EVENT_IDS: &str = "event_ids";
/// Store-wide facts such as the format version: `name` → value.
pub const CF_META: &str = "meta";
/// Aggregate snapshots: `stream key` → encoded snapshot.
pub const CF_SNAPSHOTS: &str = "snapshots";

/// Every column family the store opens, in a fixed order.
pub const ALL_CFS: [&str; 5] = [CF_EVENTS, CF_STREAMS, CF_EVENT_IDS, CF_META, CF_SNAPSHOTS];

/// Meta key holding the data directory's format version (u32 BE).
pub const META_FORMAT_VERSION: &[u8] = b"format_version";
/// Meta key of a replica: the sequence (u64 BE) of the replicated log's last group that the
/// replica holds, written in the same batch as the group's records.
pub const META_LOG_SEQUENCE: &[u8] = b"log_sequence";
/// Meta key prefix of a deleted stream: `prefix ‖ stream key` → the version (u64 BE) up to
/// which its events are deleted. Stream reads skip the versions at or below it; appends
/// continue after it.
pub const META_DELETED_PREFIX: &[u8] = b"deleted/";

/// The meta key recording how far `stream_key`'s events are deleted.
pub fn deleted_key(stream_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(META_DELETED_PREFIX.len() + stream_key.len());
    key.extend_from_slice(META_DELETED_PREFIX);
    key.extend_from_slice(stream_key);
    key
}

/// The on-disk format version this build writes and the highest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Length of the fixed stream-hash prefix of stream keys (the prefix extractor's length).
pub const STREAM_HASH_LEN: usize = 8;

/// The position key of the events column family.
pub fn position_key(position: Position) -> [u8; 8] {
    position.0.to_be_bytes()
}

/// Decodes a position key.
pub fn decode_position_key(key: &[u8]) -> Option<Position> {
    Some(Position(u64::from_be_bytes(key.try_into().ok()?)))
}

/// `blake3(stream id)[..8] ‖ id length (u16 BE) ‖ id`: a fixed-length hash first so that a
/// prefix bloom filter makes a stream lookup one seek, and the length so that no stream's
/// key range can contain another's.
pub fn stream_key(stream_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(STREAM_HASH_LEN + 2 + stream_id.len() + 8);
    key.extend_from_slice(&blake3::hash(stream_id.as_bytes()).as_bytes()[..STREAM_HASH_LEN]);
    // Stream ids are at most 256 bytes (validated), so the length fits in a u16.
    key.extend_from_slice(&(stream_id.len() as u16).to_be_bytes());
    key.extend_from_slice(stream_id.as_bytes());
    key
}

/// A stream-index key: `stream key ‖ version (u64 BE)`.
pub fn stream_index_key(stream_key: &[u8], version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream_key.len() + 8);
    key.extend_from_slice(stream_key);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The version at the end of a stream-index key.
pub fn decode_stream_index_version(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key[tail..].try_into().ok()?))
}

/// One stream-index entry: the run of events one append wrote.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StreamRun {
    /// Position of the run's first event.
    pub first_position: Position,
    /// How many events the run has.
    pub count: u32,
}

impl StreamRun {
    /// Encodes the entry's value.
    pub fn encode(self) -> [u8; 12] {
        let mut v = [0; 12];
        v[..8].copy_from_slice(&self.first_position.0.to_be_bytes());
        v[8..].copy_from_slice(&self.count.to_be_bytes());
        v
    }

    /// Decodes an entry's value.
    pub fn decode(value: &[u8]) -> Option<Self> {
        if value.len() != 12 {
            return None;
        }
        Some(Self {
            first_position: Position(u64::from_be_bytes(value[..8].try_into().ok()?)),
            count: u32::from_be_bytes(value[8..].try_into().ok()?),
        })
    }
}

/// The event-id index key.
pub fn event_id_key(id: &Uuid) -> [u8; 16] {
    *id.as_bytes()
}

/// Where an event id is stored, and the shape of the append that wrote it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EventIdEntry {
    /// The event's position.
    pub position: Position,
    /// Its index within its append.
    pub index: u32,
    /// How many events its append had.
    pub append_len: u32,
}

impl EventIdEntry {
    /// Encodes the entry's value.
    pub fn encode(self) -> [u8; 16] {
        let mut v = [0; 16];
        v[..8].copy_from_slice(&self.position.0.to_be_bytes());
        v[8..12].copy_from_slice(&self.index.to_be_bytes());
        v[12..].copy_from_slice(&self.append_len.to_be_bytes());
        v
    }

    /// Decodes an entry's value.
    pub fn decode(value: &[u8]) -> Option<Self> {
        if value.len() != 16 {
            return None;
        }
        Some(Self {
            position: Position(u64::from_be_bytes(value[..8].try_into().ok()?)),
            index: u32::from_be_bytes(value[8..12].try_into().ok()?),
            append_len: u32::from_be_bytes(value[12..].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_do_not_nest() {
        // Without the length, "a" ‖ version could be a prefix of "ab" ‖ version.
        let a = stream_key("a");
        let ab = stream_key("ab");
        assert!(!ab.starts_with(&a));
        assert_eq!(a.len(), STREAM_HASH_LEN + 2 + 1);
    }

    #[test]
    fn values_round_trip() {
        let run = StreamRun {
            first_position: Position(9),
            count: 3,
        };
        assert_eq!(StreamRun::decode(&run.encode()), Some(run));
        let entry = EventIdEntry {
            position: Position(u64::MAX),
            index: 1,
            append_len: 2,
        };
        assert_eq!(EventIdEntry::decode(&entry.encode()), Some(entry));
        assert_eq!(
            decode_stream_index_version(&stream_index_key(&stream_key("s"), 5)),
            Some(5)
        );
        assert_eq!(
            decode_position_key(&position_key(Position(3))),
            Some(Position(3))
        );
    }
}
