//! The record codec: the only module that knows bincode.
//!
//! A stored record is `[RECORD_FORMAT_V1] ++ bincode(body ++ prev_hash ++ hash)`. The first
//! byte names the encoding, so another codec can be introduced beside this one without
//! rewriting the log: decoders dispatch on it and refuse versions they do not know.
//!
//! The hash chain covers the *canonical body*: `bincode(body)` where the body is every field
//! of the record except `prev_hash` and `hash`, always encoded with the fixed configuration
//! below. `hash = blake3(prev_hash ‖ canonical body)`. Changing this configuration, the field
//! order or a field's type breaks every existing chain, which is why it is pinned here and
//! checked by committed fixtures (`store/tests/fixtures`).

use bincode::config::{self, Configuration, LittleEndian, Varint};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::{Hash, Metadata, Position, RecordedEvent, StreamId, Timestamp};

/// The format byte of records written by this build.
pub const RECORD_FORMAT_V1: u8 = 1;

/// The format byte of a tombstone: a removed record, encoded like a V1 record whose
/// metadata and payload are empty, keeping the original `prev_hash` and `hash` so the
/// chain links through it.
pub const RECORD_TOMBSTONE_V1: u8 = 2;

/// The largest encoded record the decoder accepts. It bounds every allocation a damaged or
/// hostile record can cause (a length prefix of 2^60 is refused, not allocated).
pub const MAX_RECORD_BYTES: usize = 32 * 1024 * 1024;

/// The all-zero hash that the first event's `prev_hash` holds.
pub const GENESIS_HASH: Hash = [0; 32];

type Config = Configuration<LittleEndian, Varint, config::Limit<MAX_RECORD_BYTES>>;

const fn bincode_config() -> Config {
    config::standard().with_limit::<MAX_RECORD_BYTES>()
}

/// Why bytes could not be decoded into a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// There were no bytes at all.
    #[error("empty record")]
    Empty,
    /// The format byte names an encoding this build does not know.
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    /// The bytes are not a valid record of the named format.
    #[error("malformed record")]
    Malformed,
    /// The record decoded but bytes were left over.
    #[error("{0} trailing bytes after the record")]
    TrailingBytes(usize),
}

/// The record without its hashes, borrowed for encoding. Field order is part of the format.
#[derive(Serialize)]
struct BodyRef<'a> {
    position: u64,
    stream_id: &'a str,
    stream_version: u64,
    event_id: &'a Uuid,
    event_type: &'a str,
    schema_version: u16,
    recorded_at: i64,
    metadata: &'a Metadata,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

#[derive(Serialize)]
struct StoredRef<'a> {
    body: BodyRef<'a>,
    prev_hash: &'a Hash,
    hash: &'a Hash,
}

#[derive(Deserialize)]
struct Body {
    position: u64,
    stream_id: String,
    stream_version: u64,
    event_id: Uuid,
    event_type: String,
    schema_version: u16,
    recorded_at: i64,
    metadata: Metadata,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

/// The fields of a record that the hash covers, borrowed: what the writer has before the
/// hash exists.
#[derive(Clone, Copy, Debug)]
pub struct RecordFields<'a> {
    /// Global position.
    pub position: Position,
    /// Stream id.
    pub stream_id: &'a str,
    /// Version within the stream.
    pub stream_version: u64,
    /// Event id.
    pub event_id: &'a Uuid,
    /// Event type name.
    pub event_type: &'a str,
    /// Payload schema version.
    pub schema_version: u16,
    /// Commit time.
    pub recorded_at: Timestamp,
    /// Metadata.
    pub metadata: &'a Metadata,
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl<'a> RecordFields<'a> {
    /// Borrows the hashed fields of a recorded event.
    pub fn of(event: &'a RecordedEvent) -> Self {
        Self {
            position: event.position,
            stream_id: event.stream_id.as_str(),
            stream_version: event.stream_version,
            event_id: &event.event_id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            recorded_at: event.recorded_at,
            metadata: &event.metadata,
            payload: &event.payload,
        }
    }

    fn body(&self) -> BodyRef<'a> {
        BodyRef {
            position: self.position.0,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: self.event_type,
            schema_version: self.schema_version,
            recorded_at: self.recorded_at.0,
            metadata: self.metadata,
            payload: self.payload,
        }
    }
}

/// `blake3(prev_hash ‖ canonical body)`: the chain hash of a record.
pub fn chain_hash(fields: &RecordFields<'_>, prev_hash: &Hash) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev_hash);
    // Encoding into a Vec cannot fail for these types: every field has a serde impl that
    // bincode supports and the limit is far above any accepted record.
    let body = bincode::serde::encode_to_vec(fields.body(), bincode_config())
        .expect("record bodies always encode");
    hasher.update(&body);
    *hasher.finalize().as_bytes()
}

/// Encodes a new record and computes its chain hash in one pass, appending the record to
/// `out` (which the writer reuses) and returning the hash.
///
/// The writer's hot path: the canonical body is encoded once and hashed where it lies,
/// instead of once for the hash and again for storage. The bytes are exactly those of
/// [`encode_record`] with the hash of [`chain_hash`], because bincode encodes a struct as
/// its fields one after another and a `[u8; 32]` as its 32 bytes (a unit test and the
/// committed fixtures hold it to that).
pub fn encode_new_record(fields: &RecordFields<'_>, prev_hash: &Hash, out: &mut Vec<u8>) -> Hash {
    out.push(RECORD_FORMAT_V1);
    let start = out.len();
    bincode::serde::encode_into_std_write(fields.body(), out, bincode_config())
        .expect("writing into a Vec cannot fail");
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev_hash);
    hasher.update(&out[start..]);
    let hash = *hasher.finalize().as_bytes();
    out.extend_from_slice(prev_hash);
    out.extend_from_slice(&hash);
    hash
}

/// Recomputes the hash of a recorded event from its contents and `prev_hash`.
pub fn recompute_hash(event: &RecordedEvent) -> Hash {
    chain_hash(&RecordFields::of(event), &event.prev_hash)
}

/// Encodes a record for storage, appending to `out` (which the writer reuses).
pub fn encode_record(fields: &RecordFields<'_>, prev_hash: &Hash, hash: &Hash, out: &mut Vec<u8>) {
    out.push(RECORD_FORMAT_V1);
    let stored = StoredRef {
        body: fields.body(),
        prev_hash,
        hash,
    };
    bincode::serde::encode_into_std_write(&stored, out, bincode_config())
        .expect("writing into a Vec cannot fail");
}

/// Decodes a stored record. Arbitrary bytes give an error, never a panic, and never an
/// allocation larger than [`MAX_RECORD_BYTES`].
pub fn decode_record(bytes: &[u8]) -> Result<RecordedEvent, DecodeError> {
    let (&format, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if format != RECORD_FORMAT_V1 && format != RECORD_TOMBSTONE_V1 {
        return Err(DecodeError::UnknownFormat(format));
    }
    let (body, used): (Body, usize) = bincode::serde::decode_from_slice(rest, bincode_config())
        .map_err(|_| DecodeError::Malformed)?;
    // The two hashes follow the body as 32 bytes each (bincode's encoding of a `[u8; 32]`):
    // copied as they lie, because serde visits an array element by element, which is a
    // visible share of a projection catch-up's decoding.
    let hashes = &rest[used..];
    if hashes.len() < 64 {
        return Err(DecodeError::Malformed);
    }
    if hashes.len() > 64 {
        return Err(DecodeError::TrailingBytes(hashes.len() - 64));
    }
    let (prev_hash, hash) = hashes.split_at(32);
    let prev_hash: Hash = prev_hash.try_into().map_err(|_| DecodeError::Malformed)?;
    let hash: Hash = hash.try_into().map_err(|_| DecodeError::Malformed)?;
    let stream_id = StreamId::new(body.stream_id).map_err(|_| DecodeError::Malformed)?;
    Ok(RecordedEvent {
        position: Position(body.position),
        stream_id,
        stream_version: body.stream_version,
        event_id: body.event_id,
        event_type: body.event_type,
        schema_version: body.schema_version,
        recorded_at: Timestamp(body.recorded_at),
        metadata: body.metadata,
        payload: body.payload,
        prev_hash,
        hash,
        removed: format == RECORD_TOMBSTONE_V1,
    })
}

/// Encodes the tombstone of `event` (see [`RECORD_TOMBSTONE_V1`]): its envelope and both
/// hashes, without metadata or payload.
pub fn encode_tombstone(event: &RecordedEvent) -> Vec<u8> {
    let empty = Metadata::default();
    let fields = RecordFields {
        metadata: &empty,
        payload: &[],
        ..RecordFields::of(event)
    };
    let mut out = Vec::with_capacity(96 + event.stream_id.as_str().len() + event.event_type.len());
    encode_record(&fields, &event.prev_hash, &event.hash, &mut out);
    out[0] = RECORD_TOMBSTONE_V1;
    out
}

/// Whether a record is consistent with its hash: its contents hash to it, or it is a
/// tombstone, whose hash cannot be recomputed (its content is gone) and which a verifier
/// accepts only as a link of the chain. A "tombstone" that still carries metadata or a
/// payload is refused: a removed event keeps nothing.
pub fn hash_checks(event: &RecordedEvent) -> bool {
    if event.removed {
        event.payload.is_empty() && event.metadata == Metadata::default()
    } else {
        recompute_hash(event) == event.hash
    }
}

/// The fields a read filter looks at, borrowed from a stored record without decoding the
/// rest (metadata, payload, hashes): lets a filtered read skip the records it does not
/// return for a fraction of a full decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHead<'a> {
    /// Global position.
    pub position: u64,
    /// Stream id.
    pub stream_id: &'a str,
    /// Event type name.
    pub event_type: &'a str,
}

#[derive(Deserialize)]
struct HeadRef<'a> {
    position: u64,
    #[serde(borrow)]
    stream_id: &'a str,
    #[allow(dead_code)] // Decoded only to get past it: fields are read in order.
    stream_version: u64,
    #[allow(dead_code)]
    event_id: Uuid,
    #[serde(borrow)]
    event_type: &'a str,
}

/// Decodes the head of a stored record (the body's first fields, which the encoding puts
/// first). Like [`decode_record`], arbitrary bytes give an error, never a panic.
pub fn peek_head(bytes: &[u8]) -> Result<RecordHead<'_>, DecodeError> {
    let (&format, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if format != RECORD_FORMAT_V1 && format != RECORD_TOMBSTONE_V1 {
        return Err(DecodeError::UnknownFormat(format));
    }
    let (head, _): (HeadRef<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(rest, bincode_config())
            .map_err(|_| DecodeError::Malformed)?;
    Ok(RecordHead {
        position: head.position,
        stream_id: head.stream_id,
        event_type: head.event_type,
    })
}

/// The format byte of snapshots written by this build.
pub const SNAPSHOT_FORMAT_V1: u8 = 1;

/// Encodes a snapshot: `[SNAPSHOT_FORMAT_V1] ‖ version (u64 BE) ‖ schema version (u16 BE) ‖
/// state`.
pub fn encode_snapshot(snapshot: &crate::snapshot::Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(11 + snapshot.state.len());
    out.push(SNAPSHOT_FORMAT_V1);
    out.extend_from_slice(&snapshot.version.to_be_bytes());
    out.extend_from_slice(&snapshot.schema_version.to_be_bytes());
    out.extend_from_slice(&snapshot.state);
    out
}

/// Decodes a snapshot; `None` for anything this build did not write.
pub fn decode_snapshot(bytes: &[u8]) -> Option<crate::snapshot::Snapshot> {
    let (&format, rest) = bytes.split_first()?;
    if format != SNAPSHOT_FORMAT_V1 || rest.len() < 10 {
        return None;
    }
    Some(crate::snapshot::Snapshot {
        version: u64::from_be_bytes(rest[..8].try_into().ok()?),
        schema_version: u16::from_be_bytes(rest[8..10].try_into().ok()?),
        state: rest[10..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RecordedEvent {
        let mut ev = RecordedEvent {
            position: Position(7),
            stream_id: StreamId::new("order-1").unwrap(),
            stream_version: 3,
            event_id: Uuid::from_u128(42),
            event_type: "OrderPlaced".into(),
            schema_version: 2,
            recorded_at: Timestamp(1_700_000_000_000_000),
            metadata: Metadata {
                actor: Some("alice".into()),
                ..Metadata::default()
            },
            payload: br#"{"total_cents":100}"#.to_vec(),
            prev_hash: [9; 32],
            hash: [0; 32],
            removed: false,
        };
        ev.hash = recompute_hash(&ev);
        ev
    }

    #[test]
    fn round_trips() {
        let ev = sample();
        let mut buf = Vec::new();
        encode_record(&RecordFields::of(&ev), &ev.prev_hash, &ev.hash, &mut buf);
        assert_eq!(buf[0], RECORD_FORMAT_V1);
        assert_eq!(decode_record(&buf).unwrap(), ev);
    }

    #[test]
    fn peeked_head_matches_the_full_decode() {
        let ev = sample();
        let mut buf = Vec::new();
        encode_record(&RecordFields::of(&ev), &ev.prev_hash, &ev.hash, &mut buf);
        let head = peek_head(&buf).unwrap();
        assert_eq!(head.position, ev.position.0);
        assert_eq!(head.stream_id, ev.stream_id.as_str());
        assert_eq!(head.event_type, ev.event_type);
        assert!(peek_head(&buf[..5]).is_err());
        assert!(peek_head(&[]).is_err());
    }

    #[test]
    fn one_pass_encoding_matches_the_canonical_one() {
        let ev = sample();
        let mut canonical = Vec::new();
        encode_record(
            &RecordFields::of(&ev),
            &ev.prev_hash,
            &ev.hash,
            &mut canonical,
        );
        let mut one_pass = vec![0xAA];
        let hash = encode_new_record(&RecordFields::of(&ev), &ev.prev_hash, &mut one_pass);
        assert_eq!(hash, ev.hash);
        assert_eq!(&one_pass[1..], &canonical[..]);
    }

    #[test]
    fn hash_covers_every_field() {
        let ev = sample();
        let mut changed = ev.clone();
        changed.payload[3] ^= 1;
        assert_ne!(recompute_hash(&changed), ev.hash);
        let mut changed = ev.clone();
        changed.metadata.actor = Some("mallory".into());
        assert_ne!(recompute_hash(&changed), ev.hash);
        let mut changed = ev.clone();
        changed.prev_hash[0] ^= 1;
        assert_ne!(recompute_hash(&changed), ev.hash);
        let mut changed = ev;
        changed.position = Position(8);
        assert_ne!(recompute_hash(&changed), changed.hash);
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(decode_record(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode_record(&[9, 1, 2]),
            Err(DecodeError::UnknownFormat(9))
        );
        assert_eq!(decode_record(&[1, 1, 2]), Err(DecodeError::Malformed));
        // A huge claimed string length must be refused by the limit, not allocated.
        let mut huge = vec![RECORD_FORMAT_V1, 1, 252];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_record(&huge), Err(DecodeError::Malformed));
        let ev = sample();
        let mut buf = Vec::new();
        encode_record(&RecordFields::of(&ev), &ev.prev_hash, &ev.hash, &mut buf);
        buf.push(0);
        assert_eq!(decode_record(&buf), Err(DecodeError::TrailingBytes(1)));
        // A record cut inside its hashes.
        buf.truncate(buf.len() - 2);
        assert_eq!(decode_record(&buf), Err(DecodeError::Malformed));
        buf.truncate(buf.len() - 64);
        assert_eq!(decode_record(&buf), Err(DecodeError::Malformed));
    }
}

/// The format byte of a commit group as a replicated log carries it.
pub const GROUP_FORMAT_V1: u8 = 1;

/// Most appends one commit group carries; bounds what a damaged group can make a replica
/// allocate.
pub const MAX_GROUP_APPENDS: usize = 1 << 20;

/// Builds the wire form of one commit group, the unit a replicated log stores:
/// `[GROUP_FORMAT_V1] ‖ (events (u32 BE) ‖ (length (u32 BE) ‖ record)*)*`, one run per
/// append. The records are the exact bytes the writer stores, so every replica holds the
/// same records, positions and hash chain; the runs keep each append's shape, which the
/// stream index and the event-id index record.
#[derive(Debug, Default)]
pub struct GroupWriter {
    bytes: Vec<u8>,
    events: usize,
}

impl GroupWriter {
    /// Starts an empty group, reusing `buffer`'s allocation.
    pub fn new(mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        buffer.push(GROUP_FORMAT_V1);
        Self {
            bytes: buffer,
            events: 0,
        }
    }

    /// Starts the run of one append of `count` events.
    pub fn begin_append(&mut self, count: u32) {
        self.bytes.extend_from_slice(&count.to_be_bytes());
    }

    /// Adds the next record of the current append.
    pub fn push_record(&mut self, record: &[u8]) {
        // A record is at most MAX_RECORD_BYTES, far below u32::MAX.
        self.bytes
            .extend_from_slice(&(record.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(record);
        self.events += 1;
    }

    /// How many records the group holds.
    pub fn events(&self) -> usize {
        self.events
    }

    /// The encoded group.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded group, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Splits an encoded commit group into its appends' records, borrowed. Arbitrary bytes
/// give an error, never a panic; the records themselves are not decoded here.
pub fn decode_group(bytes: &[u8]) -> Result<Vec<Vec<&[u8]>>, DecodeError> {
    let (&format, mut rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if format != GROUP_FORMAT_V1 {
        return Err(DecodeError::UnknownFormat(format));
    }
    fn take_u32(rest: &mut &[u8]) -> Result<u32, DecodeError> {
        let (head, tail) = rest.split_at_checked(4).ok_or(DecodeError::Malformed)?;
        *rest = tail;
        Ok(u32::from_be_bytes(
            head.try_into().map_err(|_| DecodeError::Malformed)?,
        ))
    }
    let mut appends = Vec::new();
    while !rest.is_empty() {
        if appends.len() >= MAX_GROUP_APPENDS {
            return Err(DecodeError::Malformed);
        }
        let count = take_u32(&mut rest)? as usize;
        if count == 0 {
            return Err(DecodeError::Malformed);
        }
        // Every record takes at least its four length bytes: a count larger than what is
        // left cannot be true, and is refused before anything is allocated for it.
        if count > rest.len() / 4 {
            return Err(DecodeError::Malformed);
        }
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            let len = take_u32(&mut rest)? as usize;
            if len > MAX_RECORD_BYTES {
                return Err(DecodeError::Malformed);
            }
            let (record, tail) = rest.split_at_checked(len).ok_or(DecodeError::Malformed)?;
            rest = tail;
            records.push(record);
        }
        appends.push(records);
    }
    if appends.is_empty() {
        return Err(DecodeError::Malformed);
    }
    Ok(appends)
}

/// The format byte of messages encoded with [`encode_message`].
pub const MESSAGE_FORMAT_V1: u8 = 1;

/// The largest message [`decode_message`] accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

type MessageConfig = Configuration<LittleEndian, Varint, config::Limit<MAX_MESSAGE_BYTES>>;

const fn message_config() -> MessageConfig {
    config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes a value that travels between the nodes of a cluster (a forwarded append and its
/// answer): `[MESSAGE_FORMAT_V1] ‖ bincode(value)`.
pub fn encode_message<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![MESSAGE_FORMAT_V1];
    bincode::serde::encode_into_std_write(value, &mut out, message_config())
        .expect("writing into a Vec cannot fail");
    out
}

/// Decodes a value written by [`encode_message`]. Arbitrary bytes give an error, never a
/// panic, and never an allocation larger than [`MAX_MESSAGE_BYTES`].
pub fn decode_message<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&format, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if format != MESSAGE_FORMAT_V1 {
        return Err(DecodeError::UnknownFormat(format));
    }
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(rest, message_config())
        .map_err(|_| DecodeError::Malformed)?;
    if used != rest.len() {
        return Err(DecodeError::TrailingBytes(rest.len() - used));
    }
    Ok(value)
}
