//! The vocabulary of the log: stream ids, positions, expectations, events in and out.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;

/// Longest stream id accepted, in bytes.
pub const MAX_STREAM_ID_BYTES: usize = 256;
/// Longest event type accepted, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;

/// The id of a stream, validated on construction: 1 to 256 bytes of UTF-8 without control
/// characters.
///
/// By convention a stream id is `{category}-{id}` (`order-42`); the category is the part
/// before the first `-` and is what [`ReadFilter`] selects on.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// Validates and wraps a stream id.
    pub fn new(id: impl Into<String>) -> Result<Self, StoreError> {
        let id = id.into();
        validate_stream_id(&id)?;
        Ok(Self(id))
    }

    /// Builds `{category}-{id}`, the stream id convention of aggregates.
    pub fn for_category(category: &str, id: impl fmt::Display) -> Result<Self, StoreError> {
        Self::new(format!("{category}-{id}"))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The category: the part before the first `-`, or the whole id when it has none.
    pub fn category(&self) -> &str {
        category_of(&self.0)
    }

    /// The aggregate's id: the part after the first `-` (`42` of `order-42`), what
    /// [`Self::for_category`] was given; `None` when the id has no `-`.
    pub fn aggregate_id(&self) -> Option<&str> {
        self.0.split_once('-').map(|(_, id)| id)
    }
}

/// The category of a raw stream id (the part before the first `-`).
pub fn category_of(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

fn validate_stream_id(id: &str) -> Result<(), StoreError> {
    let reason = if id.is_empty() {
        Some("is empty")
    } else if id.len() > MAX_STREAM_ID_BYTES {
        Some("is longer than 256 bytes")
    } else if id.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidStreamId {
            stream: truncate_for_error(id),
            reason,
        }),
        None => Ok(()),
    }
}

/// Error messages must stay small even when the input was 10 KB.
fn truncate_for_error(s: &str) -> String {
    const KEEP: usize = 64;
    if s.len() <= KEEP {
        return s.escape_debug().to_string();
    }
    let mut end = KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", s[..end].escape_debug(), s.len())
}

impl TryFrom<String> for StreamId {
    type Error = StoreError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

impl FromStr for StreamId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({:?})", self.0)
    }
}

/// Validates an event type name: 1 to 128 bytes, ASCII letters, digits, `_`, `.`, `-` and `:`.
pub fn validate_event_type(event_type: &str) -> Result<(), StoreError> {
    let ok = !event_type.is_empty()
        && event_type.len() <= MAX_EVENT_TYPE_BYTES
        && event_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidEventType {
            event_type: truncate_for_error(event_type),
        })
    }
}

/// A position in the global log: gapless, starting at 1, strictly increasing in commit
/// order. `Position(0)` means "before the first event".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// The position before the first event.
    pub const ZERO: Position = Position(0);
    /// The first position ever assigned.
    pub const FIRST: Position = Position(1);

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The next position.
    pub const fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

/// What the caller expects of a stream's version before its append.
///
/// Stream versions start at 1; a stream with no events is at version 0.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check at all.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream must be at exactly this version (0 is the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` satisfies this expectation.
    pub fn accepts(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Who did what, and why: carried by every event.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// Ties together every event caused by one user request.
    pub correlation_id: Option<Uuid>,
    /// The command or event that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// The user, API key or system component that acted.
    pub actor: Option<String>,
    /// Free key/values (source, IP address, user agent, ...), ordered so that the encoding
    /// that the hash chain covers is canonical.
    pub extra: BTreeMap<String, String>,
}

/// An event to append.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NewEvent {
    /// The caller's id for idempotent retries; a UUID v7 is generated when `None`.
    pub event_id: Option<Uuid>,
    /// The event type name, for example `OrderPlaced`.
    pub event_type: String,
    /// The schema version of the payload, for upcasting.
    pub schema_version: u16,
    /// Who, why and free key/values.
    pub metadata: Metadata,
    /// The payload bytes: JSON by convention.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl NewEvent {
    /// An event of `event_type` (schema version 1) with a JSON payload and no metadata.
    pub fn json(event_type: impl Into<String>, payload: &serde_json::Value) -> Self {
        Self {
            event_id: None,
            event_type: event_type.into(),
            schema_version: 1,
            metadata: Metadata::default(),
            payload: serde_json::to_vec(payload).unwrap_or_default(),
        }
    }

    /// The same event with a caller-chosen id (for idempotent retries).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.event_id = Some(id);
        self
    }

    /// The same event with the given metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The same event with the given schema version.
    pub fn with_schema_version(mut self, version: u16) -> Self {
        self.schema_version = version;
        self
    }
}

/// Microseconds since the Unix epoch, UTC.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(now.as_micros()).unwrap_or(i64::MAX))
    }

    /// Microseconds since the epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }
}

/// A 32-byte blake3 hash of the chain.
pub type Hash = [u8; 32];

/// An event as it is in the log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Global position: gapless, from 1, in commit order.
    pub position: Position,
    /// The stream the event belongs to.
    pub stream_id: StreamId,
    /// Version within the stream, from 1.
    pub stream_version: u64,
    /// The event id (the caller's, or a generated UUID v7).
    pub event_id: Uuid,
    /// The event type name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u16,
    /// When the commit was made.
    pub recorded_at: Timestamp,
    /// Who, why and free key/values.
    pub metadata: Metadata,
    /// The payload bytes (JSON by convention).
    pub payload: Vec<u8>,
    /// The hash of the previous event (all zeros for position 1).
    pub prev_hash: Hash,
    /// `blake3(prev_hash ‖ canonical encoding of this record without its hash)`.
    pub hash: Hash,
    /// Whether the event was removed (a hard deletion or retention): the record is a
    /// tombstone that keeps the envelope and both hashes, with no metadata and no payload.
    /// Its hash cannot be recomputed any more; the chain still links through it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

impl RecordedEvent {
    /// The category of the event's stream.
    pub fn category(&self) -> &str {
        self.stream_id.category()
    }
}

/// The outcome of one successful append to one stream.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AppendResult {
    /// The stream appended to.
    pub stream_id: StreamId,
    /// Version of the first event of this append.
    pub first_version: u64,
    /// The stream's version after the append (its last event's version).
    pub last_version: u64,
    /// Global position of the first event of this append.
    pub first_position: Position,
    /// Global position of the last event: wait for this one to read your own write.
    pub last_position: Position,
    /// True when the events were already in the log from an earlier identical append:
    /// nothing was written and this is the original result.
    pub duplicate: bool,
}

/// One stream's part of a multi-stream append.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StreamAppend {
    /// The stream to append to.
    pub stream_id: StreamId,
    /// What its version must be.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// Bundles one stream's append.
    pub fn new(stream_id: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream_id,
            expected,
            events,
        }
    }
}

/// The outcome of a multi-stream append: one result per stream, in request order.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MultiAppendResult {
    /// Per-stream results in the order of the request.
    pub streams: Vec<AppendResult>,
    /// The lowest position written.
    pub first_position: Position,
    /// The highest position written: wait for it to read your own write.
    pub last_position: Position,
    /// True when the whole commit was an identical retry.
    pub duplicate: bool,
}

impl MultiAppendResult {
    /// Summarises per-stream results: the commit spans their lowest to highest position.
    pub fn from_streams(streams: Vec<AppendResult>, duplicate: bool) -> Self {
        Self {
            first_position: streams
                .iter()
                .map(|s| s.first_position)
                .min()
                .unwrap_or_default(),
            last_position: streams
                .iter()
                .map(|s| s.last_position)
                .max()
                .unwrap_or_default(),
            streams,
            duplicate,
        }
    }
}

/// Which way to read a stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Direction {
    /// From the given version upward.
    Forward,
    /// From the given version downward.
    Backward,
}

/// Selects events of the global log by stream category and/or event type. Empty lists
/// select everything.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ReadFilter {
    /// Stream categories to keep (`order`, `product`); empty keeps all.
    pub categories: Vec<String>,
    /// Event types to keep; empty keeps all.
    pub event_types: Vec<String>,
}

impl ReadFilter {
    /// A filter that keeps everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Keeps only these categories.
    pub fn categories<I: IntoIterator<Item = S>, S: Into<String>>(categories: I) -> Self {
        Self {
            categories: categories.into_iter().map(Into::into).collect(),
            event_types: Vec::new(),
        }
    }

    /// Keeps only these event types.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        Self {
            categories: Vec::new(),
            event_types: types.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether the filter keeps everything.
    pub fn is_all(&self) -> bool {
        self.categories.is_empty() && self.event_types.is_empty()
    }

    /// Whether an event of this stream and type passes.
    pub fn matches(&self, stream_id: &str, event_type: &str) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|c| c == category_of(stream_id)))
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

/// A page of the global log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EventPage {
    /// The matching events, in position order.
    pub events: Vec<RecordedEvent>,
    /// Where to continue: the first position not yet examined. With a filter this can be
    /// past the last returned event, so a sparse filter still makes progress.
    pub next: Position,
    /// The durable head when the page was read.
    pub head: Position,
}

/// What [`crate::EventStore::verify_chain`] found.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChainReport {
    /// How many events were checked.
    pub checked: u64,
    /// The first position at which the chain is broken, and how.
    pub first_fault: Option<(Position, ChainFault)>,
}

impl ChainReport {
    /// Whether the checked range is intact.
    pub fn is_ok(&self) -> bool {
        self.first_fault.is_none()
    }
}

/// How the hash chain is broken at a position.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChainFault {
    /// No event is stored at this position although later ones are: the log has a gap.
    Missing,
    /// The stored record does not decode, or is stored under the wrong key.
    Undecodable,
    /// `prev_hash` is not the hash of the previous event.
    BrokenLink,
    /// The record's hash does not match its contents.
    HashMismatch,
}

impl fmt::Display for ChainFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChainFault::Missing => "event missing (gap in the log)",
            ChainFault::Undecodable => "record does not decode",
            ChainFault::BrokenLink => "prev_hash does not match the previous event's hash",
            ChainFault::HashMismatch => "hash does not match the record's contents",
        })
    }
}
