//! Per-stream queues: commands of one process on the same aggregate wait for each other
//! instead of racing to a conflict.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::types::StreamId;

/// One async lock per stream that a command of this process is working on.
///
/// A transaction takes the gate of each aggregate it loads and holds it until it has
/// committed, so the next command on that aggregate loads the state the previous one left
/// (from the cache) and commits without a conflict. To stay free of deadlocks a
/// transaction only *waits* for a gate while it holds none: its first load waits, later
/// loads take their gate only if it is free and otherwise go on optimistically. A retry
/// after a conflict first waits for the gate of the stream that conflicted, so a
/// multi-aggregate command that lost a race on a hot aggregate queues on its second try.
///
/// Gates only order commands inside one process; other processes and every correctness
/// guarantee still rest on the store's exact expected versions. Entries are removed when
/// nobody holds or waits for them, so the map stays as small as the work in flight.
#[derive(Debug, Default)]
pub struct StreamGates {
    gates: Mutex<HashMap<StreamId, Arc<AsyncMutex<()>>>>,
}

impl StreamGates {
    fn gate(&self, stream: &StreamId) -> Arc<AsyncMutex<()>> {
        let mut gates = self
            .gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        gates.entry(stream.clone()).or_default().clone()
    }

    /// Waits for the stream's gate.
    pub(super) async fn enter(self: &Arc<Self>, stream: &StreamId) -> Gate {
        let guard = self.gate(stream).lock_owned().await;
        Gate::new(self, stream, guard)
    }

    /// The stream's gate if it is free right now.
    pub(super) fn try_enter(self: &Arc<Self>, stream: &StreamId) -> Option<Gate> {
        let guard = self.gate(stream).try_lock_owned().ok()?;
        Some(Gate::new(self, stream, guard))
    }

    /// How many streams have a gate (held or waited for): for tests.
    pub fn len(&self) -> usize {
        self.gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// True when no stream has a gate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A held stream gate; leaving it removes the entry if nobody else wants it.
pub(super) struct Gate {
    gates: Arc<StreamGates>,
    pub(super) stream: StreamId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Gate {
    fn new(gates: &Arc<StreamGates>, stream: &StreamId, guard: OwnedMutexGuard<()>) -> Self {
        Self {
            gates: gates.clone(),
            stream: stream.clone(),
            guard: Some(guard),
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut gates = self
            .gates
            .gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Waiters clone the Arc under this same lock, so a count of one (the map's) means
        // nobody holds or waits for the gate.
        if gates
            .get(&self.stream)
            .is_some_and(|gate| Arc::strong_count(gate) == 1)
        {
            gates.remove(&self.stream);
        }
    }
}
