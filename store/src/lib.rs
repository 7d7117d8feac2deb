//! # annals-store: the Annals event log engine
//!
//! An embedded, append-only event log on RocksDB: gapless global positions, per-stream
//! versions with optimistic concurrency, idempotent appends, a blake3 hash chain over every
//! record, and group commit so that one fsync acknowledges many appends.
//!
//! ## Key types
//!
//! The event log:
//! - [`EventStore`]: the role every log implements — `append`, `append_multi`,
//!   `read_stream`, `read_all`, `stream_version`, `find_event`, `head`, `subscribe_head`,
//!   `verify_chain` — and [`SnapshotStore`] beside it.
//! - [`RocksEventStore`]: the product implementation; [`InMemoryEventStore`]: the model the
//!   property tests compare it with; [`SharedStore`]: either (or any other) behind one
//!   cloneable, type-erased handle, for the composition root of an application.
//! - [`StreamId`], [`Position`], [`ExpectedVersion`]: newtypes of the log's vocabulary;
//!   [`NewEvent`] goes in, [`RecordedEvent`] comes out.
//! - [`StoreError`]: the log's error type. Its variants name what failed; the codes that
//!   clients see are given at the application's edge, not here.
//!
//! The command side (module `command`, which uses the log only through [`EventStore`]):
//! - [`Aggregate`] and [`DomainEvent`]: state folded from events, pure decisions.
//! - [`CommandBus`], [`Transaction`], [`Decision`]: load, decide, append with exact
//!   expected versions, retry on conflicts, idempotency keys, snapshots.
//! - [`CommandError`]: a refusal typed by the aggregate's (or decision's) own error, a
//!   conflict, or a [`StoreError`].
//!
//! Replicas (module [`replica`]): a [`RocksEventStore`] opened with
//! [`RocksEventStore::open_replica`] is one copy of a log whose order a replicated log
//! decides (a cluster's, in `annals-cluster`). Its writer hands each commit group to a
//! [`Replicator`] and writes only what it acknowledged; other replicas apply the groups
//! in order with [`RocksEventStore::apply_groups`], checking positions, versions and the
//! chain.
//!
//! Also: [`codec`] (the record encoding and the hash chain's canonical bytes), [`keys`]
//! (column families and key layouts), [`Upcasters`], and `testkit` (feature
//! `test-utils`: given/when/then for aggregates, one error of every variant).
//!
//! ## Invariants
//!
//! - **Gapless order.** Positions start at 1 and every committed event gets the next one;
//!   the writer thread is the only place positions are assigned.
//! - **Atomic appends.** All events of one append (or multi-stream append) commit in one
//!   RocksDB `WriteBatch`, with consecutive stream versions and consecutive positions.
//! - **Acknowledged means durable.** With [`Durability::Fsync`] (the default) an append is
//!   answered only after the WAL sync of its group returned; [`EventStore::head`] and
//!   [`EventStore::subscribe_head`] move only then, so no reader sees an event that could
//!   still be lost.
//! - **Storage failures heal.** After a failed WAL write or sync (a full disk) appends get
//!   [`StoreError::Storage`] until the writer has reopened the database in-process and
//!   removed what the failed groups may have written; reads keep working meanwhile.
//! - **Hash chain.** `hash = blake3(prev_hash ‖ canonical body)` with an all-zero genesis;
//!   the encoding is pinned in [`codec`] and by committed fixtures.
//! - **Replicas are prefixes.** A replica writes a group only after the replicated log
//!   took it (under the log's sequence, stored in the same batch) and applies others' only
//!   when they continue it exactly; a writer whose view is behind is fenced.
//! - **Idempotency.** Re-sending the same event ids to the same stream in the same order
//!   returns the original result and writes nothing; any other reuse of an id is an
//!   [`StoreError::IdempotencyConflict`].
//!
//! ## Dependencies
//!
//! This crate knows nothing of GraphQL, HTTP or any business domain, and must never depend
//! on `annals-projections` or the `annals` package: they depend on it. bincode is used only
//! inside [`codec`], RocksDB only inside `rocks`, [`StoreError::Storage`], the raw-RocksDB
//! baseline of the benchmarks (`baseline`, feature `bench`) and the test kit (`testkit`,
//! feature `test-utils`). `tests/dependency_rules.rs` of the workspace checks these rules.
//!
//! ## Example
//!
//! ```
//! use annals_store::{EventStore, ExpectedVersion, NewEvent, RocksEventStore, StoreOptions, StreamId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), annals_store::StoreError> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = RocksEventStore::open(dir.path(), StoreOptions::default())?;
//! let stream = StreamId::new("order-1")?;
//! let event = NewEvent::json("OrderPlaced", &serde_json::json!({"total_cents": 1200}));
//! let result = store.append(stream.clone(), ExpectedVersion::NoStream, vec![event]).await?;
//! assert_eq!(result.last_version, 1);
//! assert_eq!(store.head(), result.last_position);
//! # Ok(())
//! # }
//! ```

mod aggregate;
#[cfg(any(test, feature = "bench"))]
pub mod baseline;
mod cache;
pub mod codec;
mod command;
mod error;
pub mod keys;
mod memory;
pub mod replica;
mod rocks;
mod shared;
mod snapshot;
mod store;
#[cfg(any(test, feature = "test-utils"))]
pub mod testkit;
mod types;
mod upcast;

pub use aggregate::{Aggregate, DomainEvent, decode_event};
pub use command::{
    BusOptions, CommandBus, CommandContext, CommandError, CommandOutcome, Decision,
    IDEMPOTENCY_NAMESPACE, Loaded, StreamGates, Transaction, encode_event,
};
pub use error::StoreError;
pub use memory::InMemoryEventStore;
pub use replica::{Acknowledger, ReplicaGroup, ReplicationError, Replicator};
pub use rocks::keystore::{
    DumpedKey, KeyDump, RocksKeyStore, SharedKeys, SubjectKey, SubjectRef, fill_random,
};
pub use rocks::{
    BackupPoint, DeleteMode, RetentionReport, RetentionRule, RocksEventStore, StreamDeletion,
};
/// Backups of RocksDB databases (the log's and the read models').
pub mod backup {
    pub use crate::rocks::{backup_db, hash_hex, restore_db, verify_backup};
}
pub use shared::SharedStore;
pub use snapshot::{Snapshot, SnapshotStore};
pub use store::{
    Durability, EventStore, MAX_SCAN_PER_READ, StoreOptions, StoreStats, validate_appends,
};
pub use types::{
    AppendResult, ChainFault, ChainReport, Direction, EventPage, ExpectedVersion, Hash,
    MAX_EVENT_TYPE_BYTES, MAX_STREAM_ID_BYTES, Metadata, MultiAppendResult, NewEvent, Position,
    ReadFilter, RecordedEvent, StreamAppend, StreamId, Timestamp, category_of, validate_event_type,
};
pub use upcast::{UpcastFn, Upcasters};

/// The RocksDB version compiled in (`librocksdb-sys` `0.19.0+11.8.1`), for the conditions
/// a benchmark reports; a test of the `annals` package checks it against `Cargo.lock`.
pub const ROCKSDB_VERSION: &str = "11.8.1";
