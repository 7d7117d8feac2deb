//! Aggregate snapshots: the state at a version, so a long stream loads from its tail.

use std::future::Future;

use crate::error::StoreError;
use crate::types::StreamId;

/// An aggregate's encoded state at a stream version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream version the state includes.
    pub version: u64,
    /// The aggregate's `SNAPSHOT_VERSION` when the snapshot was taken.
    pub schema_version: u16,
    /// The encoded state (JSON).
    pub state: Vec<u8>,
}

/// Where snapshots are kept. They are a cache of the event log: losing one costs a longer
/// load, never correctness.
pub trait SnapshotStore: Send + Sync + 'static {
    /// The latest snapshot of a stream, if any.
    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;

    /// Stores a snapshot unless a newer one is already stored.
    fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
