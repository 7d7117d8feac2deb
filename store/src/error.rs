//! The error type of the event log. The command side wraps it in `CommandError`.

use std::path::PathBuf;

use uuid::Uuid;

use crate::types::{ExpectedVersion, Position, StreamId};

/// Everything that can go wrong in the event log. The command side's refusals and
/// conflicts are not here: they are [`crate::CommandError`]'s. The API edge gives each
/// variant its client-visible code in its own error table.
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

    /// The operation is not one this store can do (deleting from a replica of a
    /// replicated log, restoring over an existing log).
    ///
    /// Handling: run it where it applies (an embedded node, an empty directory).
    #[error("cannot {operation}: {reason}")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
        /// Why it cannot be done here.
        reason: String,
    },

    /// An entry of the key store is damaged (a key of the wrong length, a dump that is not
    /// hex).
    ///
    /// Handling: restore the key store from a backup.
    #[error("the key store is damaged: {reason}")]
    KeyStore {
        /// What is wrong.
        reason: String,
    },

    /// The store was closed; no more appends are taken.
    #[error("the event store is closed")]
    Closed,

    /// This replica of a replicated log does not write (another node holds the write
    /// lease); nothing was written.
    ///
    /// Handling: send the append to the writer (a cluster's store does this itself).
    #[error("this node is not the log's writer")]
    NotWriter,

    /// The replicated log did not take the commit in time (no writer, no quorum, a
    /// failover under way); nothing of it is acknowledged, though it may still appear.
    ///
    /// Handling: retry with the same event ids (idempotency keys): the retry commits at
    /// most once.
    #[error("the log is unavailable: {reason}")]
    Unavailable {
        /// Why, for the operator.
        reason: String,
    },

    /// A commit group of the replicated log does not continue this replica (a gap in its
    /// sequence, a position or hash that does not follow): the replica stops applying.
    ///
    /// Handling: rebuild the replica from the replicated log (an empty data directory
    /// catches up by itself).
    #[error("replicated group {sequence} does not continue this replica: {reason}")]
    ReplicaDiverged {
        /// The group's sequence in the replicated log.
        sequence: u64,
        /// What does not follow.
        reason: String,
    },

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
