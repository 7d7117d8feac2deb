//! The one error type of `annals-store`.

use std::path::PathBuf;

use uuid::Uuid;

use crate::types::{ExpectedVersion, Position, StreamId};

/// Everything that can go wrong in the store. Each variant has a stable [`code`](Self::code)
/// that the API edge turns into `extensions.code`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not at the version the caller expected; nothing was written.
    ///
    /// Handling: reload the stream and decide again (the command bus does this itself).
    #[error("wrong expected version for stream {stream}: expected {expected}, actual {actual}")]
    WrongExpectedVersion {
        /// The stream whose expectation failed.
        stream: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was checked.
        actual: u64,
    },

    /// An event id is already in the log, but not as an identical retry of this append
    /// (another stream or position, or only some of the events); nothing was written.
    ///
    /// Handling: a caller bug; event ids must be unique per logical event.
    #[error(
        "event id {event_id} is already in the log at position {existing}, not as a retry of this append"
    )]
    IdempotencyConflict {
        /// The offending event id.
        event_id: Uuid,
        /// Where that id is already stored (0 when it is repeated inside the request).
        existing: Position,
    },

    /// The stream id is empty, longer than 256 bytes or contains control characters.
    #[error("invalid stream id {stream:?}: {reason}")]
    InvalidStreamId {
        /// The offending id, shortened for the message.
        stream: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The event type is empty, too long or has characters outside `[A-Za-z0-9_.:-]`.
    #[error("invalid event type {event_type:?}: 1 to 128 characters of [A-Za-z0-9_.:-]")]
    InvalidEventType {
        /// The offending type, shortened for the message.
        event_type: String,
    },

    /// One event's payload is larger than `StoreOptions::max_payload_bytes`.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// The append carries more events than `StoreOptions::max_events_per_append`.
    #[error("{count} events in one append exceeds the limit of {limit}")]
    TooManyEvents {
        /// How many events were sent.
        count: usize,
        /// The configured limit.
        limit: usize,
    },

    /// An append with no events, or a multi-stream append with no streams.
    #[error("an append must carry at least one event")]
    EmptyAppend,

    /// A multi-stream append names the same stream twice.
    #[error("stream {stream} appears more than once in one multi-stream append")]
    DuplicateStream {
        /// The repeated stream.
        stream: StreamId,
    },

    /// A stored record is damaged: it does not decode or sits under the wrong key.
    ///
    /// Handling: the rest of the log stays readable; restore the record from a backup or
    /// an export.
    #[error("corrupted record at position {position}")]
    Corruption {
        /// Where the damaged record is.
        position: Position,
    },

    /// The data directory was written by a newer Annals whose format this build cannot read.
    #[error(
        "data directory has format version {found}; this build reads up to {supported}: upgrade Annals"
    )]
    UnsupportedFormat {
        /// The directory's format version.
        found: u32,
        /// The highest version this build understands.
        supported: u32,
    },

    /// Another process (or another handle in this one) has the data directory open.
    #[error("data directory {path} is in use by another process")]
    Locked {
        /// The data directory.
        path: PathBuf,
    },

    /// RocksDB or the file system failed (disk full, I/O error). Nothing of the failed
    /// commit was acknowledged.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),

    /// A file-system operation outside RocksDB failed (creating the data directory,
    /// starting the writer thread).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The handle was opened read-only (`RocksEventStore::open_read_only`): it takes no
    /// appends and saves no snapshots.
    ///
    /// Handling: open the data directory normally (only one process can) to write.
    #[error("the event log in {path} is open read-only")]
    ReadOnly {
        /// The data directory.
        path: PathBuf,
    },

    /// The store was closed; no more appends are taken.
    #[error("the event store is closed")]
    Closed,

    /// A command kept losing the race for its streams: every attempt found a stream
    /// changed by someone else between load and append.
    ///
    /// Handling: the caller may retry later; nothing was written.
    #[error("command conflicted on stream {stream} after {attempts} attempts")]
    Conflict {
        /// The stream that changed under the last attempt.
        stream: StreamId,
        /// How many attempts were made.
        attempts: u32,
    },

    /// The aggregate refused the command (a business rule); nothing was written.
    ///
    /// Handling: report [`DomainError::code`] to the caller; downcast for the typed error.
    #[error("{0}")]
    Rejected(Box<dyn DomainError>),

    /// A stored event or snapshot could not be turned into its typed form (unknown type,
    /// payload that does not match its schema, failing upcaster).
    #[error("cannot decode event {event_type} v{schema_version} at position {position}: {reason}")]
    Decode {
        /// The stored event type.
        event_type: String,
        /// The stored schema version.
        schema_version: u16,
        /// Where the event is.
        position: Position,
        /// What went wrong.
        reason: String,
    },
}

/// A business-rule error of an aggregate, with a stable machine-readable code
/// (`INSUFFICIENT_STOCK`, `INVALID_STATE`, ...).
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    /// The stable code clients see.
    fn code(&self) -> &'static str;
    /// The error as `Any`, so callers can downcast to the typed error.
    fn as_any(&self) -> &dyn std::any::Any;
}

impl StoreError {
    /// The typed domain error inside a [`StoreError::Rejected`], if it is an `E`.
    pub fn rejection<E: DomainError>(&self) -> Option<&E> {
        match self {
            StoreError::Rejected(e) => e.as_any().downcast_ref::<E>(),
            _ => None,
        }
    }
}

impl StoreError {
    /// A stable machine-readable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::WrongExpectedVersion { .. } => "WRONG_EXPECTED_VERSION",
            StoreError::IdempotencyConflict { .. } => "IDEMPOTENCY_CONFLICT",
            StoreError::InvalidStreamId { .. }
            | StoreError::InvalidEventType { .. }
            | StoreError::TooManyEvents { .. }
            | StoreError::EmptyAppend
            | StoreError::DuplicateStream { .. } => "BAD_USER_INPUT",
            StoreError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            StoreError::Corruption { .. } => "CORRUPTION",
            StoreError::UnsupportedFormat { .. } => "UNSUPPORTED_FORMAT",
            StoreError::Locked { .. } => "LOCKED",
            StoreError::Storage(_) | StoreError::Io { .. } => "STORAGE",
            StoreError::Closed => "CLOSED",
            StoreError::ReadOnly { .. } => "READ_ONLY",
            StoreError::Conflict { .. } => "CONFLICT",
            StoreError::Rejected(e) => e.code(),
            StoreError::Decode { .. } => "DECODE",
        }
    }

    /// Whether the caller's input was at fault (as opposed to the store or a race).
    pub fn is_user_error(&self) -> bool {
        self.code() == "BAD_USER_INPUT" || self.code() == "PAYLOAD_TOO_LARGE"
    }
}
