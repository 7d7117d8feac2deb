//! The bus's cache of aggregate states by stream, and the rules that keep it from going
//! back in time.

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::aggregate::Aggregate;
use crate::cache::GenerationalCache;
use crate::types::StreamId;

/// One stream's cached state.
#[derive(Clone)]
pub(super) struct Cached {
    /// The stream version the state includes.
    pub(super) version: u64,
    /// The version of the last snapshot taken of the stream (0: none).
    pub(super) snapshot_version: u64,
    /// `None` while a command changes the state in place (see [`StateCache::forget`]):
    /// the version stays, so [`StateCache::remember`] still refuses an older one.
    pub(super) state: Option<Arc<dyn Any + Send + Sync>>,
}

/// Encodes a type-erased state as a snapshot: `(schema version, JSON)`.
pub(super) type SnapshotFn = fn(&(dyn Any + Send + Sync)) -> Option<(u16, Vec<u8>)>;

/// The [`SnapshotFn`] of aggregate `A`.
pub(super) fn snapshot_of<A: Aggregate>(state: &(dyn Any + Send + Sync)) -> Option<(u16, Vec<u8>)> {
    let state = state.downcast_ref::<A>()?;
    serde_json::to_vec(state)
        .ok()
        .map(|bytes| (A::SNAPSHOT_VERSION, bytes))
}

/// Recently used states by stream. An entry may be stale (another process or a lost race
/// wrote since); the exact expected version of the commit catches that, and the retry
/// loads from the store.
pub(super) struct StateCache {
    entries: Mutex<GenerationalCache<StreamId, Cached>>,
}

impl StateCache {
    /// A cache of about `capacity` states.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(GenerationalCache::new(capacity.max(2))),
        }
    }

    fn entries(&self) -> MutexGuard<'_, GenerationalCache<StreamId, Cached>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry of `stream`, if any.
    pub(super) fn get(&self, stream: &StreamId) -> Option<Cached> {
        self.entries().get(stream).cloned()
    }

    /// Drops the entry of `stream` (its commit lost a race: the state is stale).
    pub(super) fn remove(&self, stream: &StreamId) {
        self.entries().remove(stream);
    }

    /// Caches a stream's state unless the cache already holds a later version. Two commits
    /// of one stream can finish (and get here) in either order; the older must not
    /// overwrite the newer, or the next command would decide on a state that misses
    /// events and could be refused by a domain rule (which no retry corrects) before its
    /// commit's expected version could notice.
    pub(super) fn remember(&self, stream: StreamId, cached: Cached) {
        let mut entries = self.entries();
        if entries
            .get(&stream)
            .is_some_and(|held| held.version > cached.version)
        {
            return;
        }
        entries.insert(stream, cached);
    }

    /// Drops the cache's reference to `state` if the entry for `stream` is `state` itself,
    /// so the caller holds the only reference and can change it without a copy. The entry
    /// stays, with its version and no state (a load misses on it): with no entry at all, a
    /// commit of an older version finishing late would be cached as current.
    pub(super) fn forget<A>(&self, stream: &StreamId, state: &Arc<A>) {
        let mut entries = self.entries();
        if let Some(held) = entries.get_mut(stream)
            && held
                .state
                .as_ref()
                .is_some_and(|held| std::ptr::addr_eq(Arc::as_ptr(held), Arc::as_ptr(state)))
        {
            held.state = None;
        }
    }
}
