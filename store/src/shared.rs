//! [`SharedStore`]: any event log behind one cloneable, type-erased handle.
//!
//! [`EventStore`] returns `impl Future`, which keeps the embedded store's hot paths free
//! of boxing but makes the trait unusable as `dyn EventStore`. The composition root of
//! an application wants the opposite: one concrete type for "the log", whichever
//! implementation is behind it (RocksDB, in memory, a replicated backend). `SharedStore`
//! is that type: it implements [`EventStore`] and [`SnapshotStore`] itself, each call
//! forwarded through an object-safe mirror of both traits at the price of one boxed
//! future per call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use uuid::Uuid;

use crate::error::StoreError;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::{EventStore, StoreStats};
use crate::types::{
    ChainReport, Direction, EventPage, MultiAppendResult, Position, ReadFilter, RecordedEvent,
    StreamAppend, StreamId,
};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe mirror of [`EventStore`] + [`SnapshotStore`], implemented for every
/// store that implements both.
trait ErasedStore: Send + Sync + 'static {
    fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> BoxFuture<'_, Result<MultiAppendResult, StoreError>>;
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>>;
    fn read_all<'a>(
        &'a self,
        from: Position,
        limit: usize,
        filter: &'a ReadFilter,
    ) -> BoxFuture<'a, Result<EventPage, StoreError>>;
    fn stream_version<'a>(&'a self, stream: &'a StreamId)
    -> BoxFuture<'a, Result<u64, StoreError>>;
    fn find_event(
        &self,
        event_id: Uuid,
    ) -> BoxFuture<'_, Result<Option<RecordedEvent>, StoreError>>;
    fn head(&self) -> Position;
    fn subscribe_head(&self) -> watch::Receiver<Position>;
    fn verify_chain(
        &self,
        from: Position,
        to: Position,
    ) -> BoxFuture<'_, Result<ChainReport, StoreError>>;
    fn stats(&self) -> StoreStats;
    fn is_failed(&self) -> bool;
    fn catch_up(&self) -> BoxFuture<'_, Result<bool, StoreError>>;
    fn close(&self);
    fn load_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>>;
    fn save_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: Snapshot,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn kind(&self) -> &'static str;
}

impl<S: EventStore + SnapshotStore> ErasedStore for S {
    fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> BoxFuture<'_, Result<MultiAppendResult, StoreError>> {
        Box::pin(EventStore::append_multi(self, appends))
    }
    fn read_stream<'a>(
        &'a self,
        stream: &'a StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(EventStore::read_stream(
            self,
            stream,
            from_version,
            direction,
            limit,
        ))
    }
    fn read_all<'a>(
        &'a self,
        from: Position,
        limit: usize,
        filter: &'a ReadFilter,
    ) -> BoxFuture<'a, Result<EventPage, StoreError>> {
        Box::pin(EventStore::read_all(self, from, limit, filter))
    }
    fn stream_version<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(EventStore::stream_version(self, stream))
    }
    fn find_event(
        &self,
        event_id: Uuid,
    ) -> BoxFuture<'_, Result<Option<RecordedEvent>, StoreError>> {
        Box::pin(EventStore::find_event(self, event_id))
    }
    fn head(&self) -> Position {
        EventStore::head(self)
    }
    fn subscribe_head(&self) -> watch::Receiver<Position> {
        EventStore::subscribe_head(self)
    }
    fn verify_chain(
        &self,
        from: Position,
        to: Position,
    ) -> BoxFuture<'_, Result<ChainReport, StoreError>> {
        Box::pin(EventStore::verify_chain(self, from, to))
    }
    fn stats(&self) -> StoreStats {
        EventStore::stats(self)
    }
    fn is_failed(&self) -> bool {
        EventStore::is_failed(self)
    }
    fn catch_up(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(EventStore::catch_up(self))
    }
    fn close(&self) {
        EventStore::close(self)
    }
    fn load_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        Box::pin(SnapshotStore::load_snapshot(self, stream))
    }
    fn save_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: Snapshot,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(SnapshotStore::save_snapshot(self, stream, snapshot))
    }
    fn kind(&self) -> &'static str {
        std::any::type_name::<S>()
    }
}

/// Any event log (with its snapshots) behind one cloneable handle; clones share the store.
#[derive(Clone)]
pub struct SharedStore {
    inner: Arc<dyn ErasedStore>,
}

impl SharedStore {
    /// Wraps a store.
    pub fn new<S: EventStore + SnapshotStore>(store: S) -> Self {
        Self {
            inner: Arc::new(store),
        }
    }
}

impl fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedStore")
            .field("kind", &self.inner.kind())
            .field("head", &self.inner.head())
            .finish()
    }
}

impl EventStore for SharedStore {
    fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> impl Future<Output = Result<MultiAppendResult, StoreError>> + Send {
        self.inner.append_multi(appends)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .read_stream(stream, from_version, direction, limit)
            .await
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<EventPage, StoreError> {
        self.inner.read_all(from, limit, filter).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        self.inner.stream_version(stream).await
    }

    fn find_event(
        &self,
        event_id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send {
        self.inner.find_event(event_id)
    }

    fn head(&self) -> Position {
        self.inner.head()
    }

    fn subscribe_head(&self) -> watch::Receiver<Position> {
        self.inner.subscribe_head()
    }

    fn verify_chain(
        &self,
        from: Position,
        to: Position,
    ) -> impl Future<Output = Result<ChainReport, StoreError>> + Send {
        self.inner.verify_chain(from, to)
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    fn is_failed(&self) -> bool {
        self.inner.is_failed()
    }

    fn catch_up(&self) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.inner.catch_up()
    }

    fn close(&self) {
        self.inner.close()
    }
}

impl SnapshotStore for SharedStore {
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(stream).await
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(stream, snapshot).await
    }
}
