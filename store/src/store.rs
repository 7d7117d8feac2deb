//! The `EventStore` role and what every implementation shares: options and input validation.

use std::collections::HashSet;
use std::future::Future;

use tokio::sync::watch;
use uuid::Uuid;

use crate::error::StoreError;
use crate::types::{
    AppendResult, ChainReport, Direction, EventPage, ExpectedVersion, MultiAppendResult, NewEvent,
    Position, ReadFilter, RecordedEvent, StreamAppend, StreamId, validate_event_type,
};

/// How an acknowledged append survives failures.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Durability {
    /// Acknowledged means fsynced: the append survives a power loss. One fsync covers a
    /// whole group commit, so this costs latency, not throughput. The default.
    #[default]
    Fsync,
    /// Acknowledged means written to the WAL in the operating system's page cache: it
    /// survives a crash of the process but not of the machine. For bulk imports and
    /// benchmarks of the engine without the disk.
    Buffered,
}

/// Tuning and limits of a store. The defaults are the product's.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// When an append is acknowledged. Default [`Durability::Fsync`]: acknowledged means
    /// on disk.
    pub durability: Durability,
    /// Most events one group commit takes (a single larger append still commits alone).
    /// Default 4,096: enough to carry thousands of concurrent writers' appends in one
    /// fsync, small enough that one group's WAL write stays in the milliseconds.
    pub max_commit_events: usize,
    /// Most payload bytes one group commit takes (a single larger append still commits
    /// alone). Default 8 MiB, for the same reason in bytes.
    pub max_commit_bytes: usize,
    /// How many streams' current versions the writer keeps in memory. Default 100,000:
    /// the expectation check of an append to a recently written stream then reads no
    /// index, at about a hundred bytes per stream.
    pub stream_cache_capacity: usize,
    /// Largest payload of one event. Default 1 MiB: events are facts, not documents;
    /// larger blobs belong in object storage with a reference in the event.
    pub max_payload_bytes: usize,
    /// Most events in one append (all streams of a multi-stream append together).
    /// Default 1,000, so one append cannot take a group commit for itself.
    pub max_events_per_append: usize,
    /// Appends waiting for the writer before callers wait for room (backpressure).
    /// Default 4,096, one full group commit's worth of single-event appends.
    pub queue_capacity: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            max_commit_events: 4096,
            max_commit_bytes: 8 * 1024 * 1024,
            stream_cache_capacity: 100_000,
            max_payload_bytes: 1024 * 1024,
            max_events_per_append: 1000,
            queue_capacity: 4096,
        }
    }
}

impl StoreOptions {
    /// The defaults with another durability.
    pub fn with_durability(durability: Durability) -> Self {
        Self {
            durability,
            ..Self::default()
        }
    }
}

/// Counters of a store's write path at one point in time (all zero for a store that
/// keeps none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Group commits written.
    pub commits: u64,
    /// Append requests answered successfully.
    pub appends: u64,
    /// Events written.
    pub events: u64,
    /// Append requests that failed.
    pub failed_appends: u64,
    /// Nanoseconds the writer waited for work.
    pub idle_nanos: u64,
    /// Nanoseconds the writer spent checking requests and encoding records.
    pub stage_nanos: u64,
    /// Nanoseconds spent in RocksDB writes.
    pub write_nanos: u64,
    /// Nanoseconds spent in WAL syncs.
    pub sync_nanos: u64,
    /// WAL syncs made.
    pub syncs: u64,
}

impl StoreStats {
    /// The counters accumulated since `earlier` (for measuring one phase of a run).
    pub fn since(&self, earlier: &StoreStats) -> StoreStats {
        StoreStats {
            commits: self.commits - earlier.commits,
            appends: self.appends - earlier.appends,
            events: self.events - earlier.events,
            failed_appends: self.failed_appends - earlier.failed_appends,
            idle_nanos: self.idle_nanos - earlier.idle_nanos,
            stage_nanos: self.stage_nanos - earlier.stage_nanos,
            write_nanos: self.write_nanos - earlier.write_nanos,
            sync_nanos: self.sync_nanos - earlier.sync_nanos,
            syncs: self.syncs - earlier.syncs,
        }
    }

    /// Mean events per group commit.
    pub fn mean_commit_events(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.events as f64 / self.commits as f64
        }
    }
}

/// An append-only, gapless, hash-chained event log.
///
/// Implementations: [`crate::RocksEventStore`] (the product) and
/// [`crate::InMemoryEventStore`] (the model the property tests compare against). Both pass
/// one conformance suite (`store/tests/conformance.rs`).
///
/// Every method that can wait is `async`; the returned futures are `Send` so they can be
/// spawned.
pub trait EventStore: Send + Sync + 'static {
    /// Appends events to several streams in one atomic commit: either every stream's
    /// expectation holds and all events are written with consecutive positions, or nothing
    /// is written and the error names the failing stream.
    fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> impl Future<Output = Result<MultiAppendResult, StoreError>> + Send;

    /// Appends events to one stream atomically, with consecutive versions and positions.
    fn append(
        &self,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
        async move {
            let mut result = self
                .append_multi(vec![StreamAppend::new(stream, expected, events)])
                .await?;
            Ok(result.streams.swap_remove(0))
        }
    }

    /// Reads up to `limit` events of one stream starting at `from_version` (inclusive) in
    /// the given direction. Reading backward from `u64::MAX` reads from the end.
    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Reads up to `limit` events of the global log at or after `from` that pass `filter`,
    /// never past the durable head.
    fn read_all(
        &self,
        from: Position,
        limit: usize,
        filter: &ReadFilter,
    ) -> impl Future<Output = Result<EventPage, StoreError>> + Send;

    /// The stream's current version (0 when it has no events).
    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The event with this id, if it is in the log (up to the durable head).
    fn find_event(
        &self,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send;

    /// The last durable position (0 for an empty log).
    fn head(&self) -> Position;

    /// A receiver that changes only after a commit is durable: readers following it never
    /// see an event that could still be lost.
    fn subscribe_head(&self) -> watch::Receiver<Position>;

    /// Checks the hash chain over `from..=to` (clamped to the log) and reports the first
    /// broken position.
    fn verify_chain(
        &self,
        from: Position,
        to: Position,
    ) -> impl Future<Output = Result<ChainReport, StoreError>> + Send;

    /// Brings this store's view of the log up to every append acknowledged so far,
    /// wherever it was made (a read barrier), and tells whether the view moved. A store
    /// that is the only writer of its log is always current, which is the default. The
    /// command bus calls it before a domain refusal becomes final: on a node that follows
    /// another writer, a refusal decided on a replica a moment behind would otherwise be
    /// final, since no expected version catches it.
    fn catch_up(&self) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async { Ok(false) }
    }

    /// Counters of the write path, for metrics (zeros where the store keeps none).
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// Whether appends are refused because of a storage failure the store has not yet
    /// recovered from. Readiness checks report it.
    fn is_failed(&self) -> bool {
        false
    }

    /// Stops taking appends and lets what was taken finish; reads keep working. Appends
    /// after this fail with [`StoreError::Closed`].
    fn close(&self) {}
}

/// Most events a filtered `read_all` examines in one call, so that a filter that matches
/// rarely still returns promptly with a cursor that moved on.
pub const MAX_SCAN_PER_READ: usize = 65_536;

/// The input checks every implementation makes before an append reaches its writer.
/// Returns the number of events and their payload bytes.
pub fn validate_appends(
    appends: &[StreamAppend],
    options: &StoreOptions,
) -> Result<(usize, usize), StoreError> {
    if appends.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    let mut events = 0usize;
    let mut bytes = 0usize;
    // Most appends name one stream: only a multi-stream append needs the duplicate check,
    // so the common case allocates nothing here.
    let mut streams = HashSet::with_capacity(if appends.len() > 1 { appends.len() } else { 0 });
    let mut ids = HashSet::new();
    for append in appends {
        if appends.len() > 1 && !streams.insert(append.stream_id.as_str()) {
            return Err(StoreError::DuplicateStream {
                stream: append.stream_id.clone(),
            });
        }
        if append.events.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        events += append.events.len();
        if events > options.max_events_per_append {
            return Err(StoreError::TooManyEvents {
                count: appends.iter().map(|a| a.events.len()).sum(),
                limit: options.max_events_per_append,
            });
        }
        for event in &append.events {
            validate_event_type(&event.event_type)?;
            if event.payload.len() > options.max_payload_bytes {
                return Err(StoreError::PayloadTooLarge {
                    size: event.payload.len(),
                    limit: options.max_payload_bytes,
                });
            }
            bytes += event.payload.len();
            if let Some(id) = event.event_id
                && !ids.insert(id)
            {
                return Err(StoreError::IdempotencyConflict {
                    event_id: id,
                    existing: Position::ZERO,
                });
            }
        }
    }
    Ok((events, bytes))
}
