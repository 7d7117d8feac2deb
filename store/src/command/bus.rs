//! [`CommandBus`]: loads aggregates (cache, snapshot, tail of the stream), runs decisions
//! with retries on conflicts, answers retried commands from the log, and saves snapshots
//! off the command's path.

use std::any::Any;
use std::sync::Arc;

use uuid::Uuid;

use super::error::CommandError;
use super::gates::StreamGates;
use super::state_cache::{Cached, SnapshotFn, StateCache};
use super::transaction::{Decision, Loaded, Single, Transaction};
use super::{CommandContext, CommandOutcome};
use crate::aggregate::{Aggregate, decode_event};
use crate::error::StoreError;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::EventStore;
use crate::types::{AppendResult, Direction, StreamId};
use crate::upcast::Upcasters;

/// Events read per page while rehydrating.
const LOAD_PAGE: usize = 1024;

/// Tuning of the command bus. The defaults are the product's.
#[derive(Clone, Debug)]
pub struct BusOptions {
    /// How many times a command runs before a conflict is reported (1 + retries).
    /// Default 4: with the per-stream queue a conflict needs another process writing the
    /// same aggregate, and three retries on fresh state ride out a burst of those without
    /// keeping a caller waiting for long.
    pub max_attempts: u32,
    /// Take a snapshot once a stream has this many events past its last snapshot (0:
    /// never), or, past 16 times this many, a sixteenth of its length. Default 500: a cache
    /// miss then replays at most 500 events (about a millisecond) on a short stream, while
    /// a snapshot, a JSON copy of the whole state, is written rarely and its cost per event
    /// stays constant when the state grows with the stream.
    pub snapshot_every: u64,
    /// How many aggregate states are kept in memory. Default 10,000: the hot aggregates
    /// of a shop (its products and open orders) fit, at a few kilobytes each.
    pub cache_capacity: usize,
    /// Queue commands on the same aggregate behind each other in this process instead of
    /// letting them race and retry on conflicts (see [`StreamGates`]). Default on: a hot
    /// aggregate then costs a wait, not a conflict, a reload and a retry.
    pub queue_per_stream: bool,
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            snapshot_every: 500,
            cache_capacity: 10_000,
            queue_per_stream: true,
        }
    }
}

/// Runs commands against aggregates stored in `S`.
pub struct CommandBus<S> {
    pub(super) store: Arc<S>,
    upcasters: Upcasters,
    pub(super) options: BusOptions,
    pub(super) cache: StateCache,
    pub(super) gates: Arc<StreamGates>,
}

impl<S> std::fmt::Debug for CommandBus<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus")
            .field("options", &self.options)
            .field("upcasters", &self.upcasters)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore + SnapshotStore> CommandBus<S> {
    /// A bus over `store` with default options and no upcasters.
    pub fn new(store: S) -> Self {
        Self::with_options(Arc::new(store), Upcasters::new(), BusOptions::default())
    }

    /// A bus with everything chosen.
    pub fn with_options(store: Arc<S>, upcasters: Upcasters, options: BusOptions) -> Self {
        Self {
            cache: StateCache::new(options.cache_capacity),
            gates: Arc::default(),
            store,
            upcasters,
            options,
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The upcasters applied when events are loaded.
    pub fn upcasters(&self) -> &Upcasters {
        &self.upcasters
    }

    /// The options.
    pub fn options(&self) -> &BusOptions {
        &self.options
    }

    /// Drops the cached state of `stream`: after the stream was deleted, the next command
    /// loads it from the store.
    pub fn evict(&self, stream: &StreamId) {
        self.cache.remove(stream);
    }

    /// The per-stream queues of this bus.
    pub fn gates(&self) -> &StreamGates {
        &self.gates
    }

    /// Loads an aggregate: from the cache if it has it, otherwise from its latest usable
    /// snapshot plus the events after it.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        self.load_with(id, true).await
    }

    /// Loads an aggregate from the store alone (no cache), replaying every event after the
    /// snapshot if `use_snapshot`, or from the first event otherwise.
    pub async fn load_uncached<A: Aggregate>(
        &self,
        id: &str,
        use_snapshot: bool,
    ) -> Result<Loaded<A>, StoreError> {
        let stream = A::stream_id(id)?;
        let (mut state, mut version, mut snapshot_version) = (A::default(), 0, 0);
        if use_snapshot
            && let Some(snapshot) = self.store.load_snapshot(&stream).await?
            && snapshot.schema_version == A::SNAPSHOT_VERSION
        {
            match serde_json::from_slice::<A>(&snapshot.state) {
                Ok(s) => {
                    (state, version, snapshot_version) = (s, snapshot.version, snapshot.version);
                }
                Err(error) => {
                    tracing::warn!(%stream, %error, "ignoring undecodable snapshot")
                }
            }
        }
        loop {
            let events = self
                .store
                .read_stream(&stream, version + 1, Direction::Forward, LOAD_PAGE)
                .await?;
            for recorded in &events {
                if recorded.removed {
                    // A tombstone (retention) keeps its version but has nothing to apply.
                    version = recorded.stream_version;
                    continue;
                }
                let event: A::Event = decode_event(&self.upcasters, recorded)?;
                state.apply(&event);
                version = recorded.stream_version;
            }
            if events.len() < LOAD_PAGE {
                break;
            }
        }
        Ok(Loaded {
            id: id.to_string(),
            stream,
            state: Arc::new(state),
            version,
            snapshot_version,
        })
    }

    pub(super) async fn load_with<A: Aggregate>(
        &self,
        id: &str,
        use_cache: bool,
    ) -> Result<Loaded<A>, StoreError> {
        let stream = A::stream_id(id)?;
        if use_cache
            && let Some(cached) = self.cache.get(&stream)
            && let Some(state) = cached.state
            && let Ok(state) = state.downcast::<A>()
        {
            return Ok(Loaded {
                id: id.to_string(),
                stream,
                state,
                version: cached.version,
                snapshot_version: cached.snapshot_version,
            });
        }
        let loaded = self.load_uncached::<A>(id, true).await?;
        self.cache.remember(
            loaded.stream.clone(),
            Cached {
                version: loaded.version,
                snapshot_version: loaded.snapshot_version,
                state: Some(loaded.state.clone()),
            },
        );
        Ok(loaded)
    }

    /// Starts a transaction for one attempt of a command. `attempt > 0` bypasses the
    /// cache, because the previous attempt found it stale.
    ///
    /// A transaction holds the gates of the streams it loaded (see [`StreamGates`]) until
    /// it is committed or dropped: finish it before running another command on those
    /// streams from the same task, or that command waits for it forever.
    pub fn transaction<'b>(&'b self, ctx: &'b CommandContext, attempt: u32) -> Transaction<'b, S> {
        Transaction::new(self, ctx, attempt > 0)
    }

    /// A transaction for `attempt` that first queues for the stream the previous attempt
    /// lost a race on, if any.
    async fn begin<'b>(
        &'b self,
        ctx: &'b CommandContext,
        attempt: u32,
        lost_on: Option<&StreamId>,
    ) -> Transaction<'b, S> {
        let tx = self.transaction(ctx, attempt);
        if let Some(stream) = lost_on {
            tx.enter(stream).await;
        }
        tx
    }

    /// The outcome of an earlier execution of this command, if its idempotency key has
    /// been used (found by the deterministic ids of its events).
    pub async fn already_executed(
        &self,
        ctx: &CommandContext,
    ) -> Result<Option<CommandOutcome>, StoreError> {
        let mut streams: Vec<AppendResult> = Vec::new();
        let mut index = 0;
        while let Some(id) = ctx.event_id(index) {
            let Some(event) = self.store.find_event(id).await? else {
                break;
            };
            match streams.iter_mut().find(|s| s.stream_id == event.stream_id) {
                Some(s) => {
                    s.last_version = event.stream_version;
                    s.last_position = event.position;
                }
                None => streams.push(AppendResult {
                    stream_id: event.stream_id.clone(),
                    first_version: event.stream_version,
                    last_version: event.stream_version,
                    first_position: event.position,
                    last_position: event.position,
                    duplicate: true,
                }),
            }
            index += 1;
        }
        if streams.is_empty() {
            return Ok(None);
        }
        let position = streams
            .iter()
            .map(|s| s.last_position)
            .max()
            .unwrap_or_default();
        Ok(Some(CommandOutcome {
            streams,
            position,
            duplicate: true,
        }))
    }

    /// Runs a command against one aggregate: load, decide, append, retrying on conflicts.
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        self.run(ctx, &Single::<A> { id, command }).await
    }

    /// Runs a decision over any number of aggregates with the bus's retry and idempotency
    /// rules: the decision loads through the transaction and emits events; the bus commits,
    /// and runs the decision again on fresh state when the commit loses a race.
    pub async fn run<D: Decision<S>>(
        &self,
        ctx: &CommandContext,
        decision: &D,
    ) -> Result<CommandOutcome, CommandError<D::Error>> {
        if let Some(done) = self.already_executed(ctx).await? {
            return Ok(done);
        }
        let attempts = self.options.max_attempts.max(1);
        let mut last_conflict = None;
        for attempt in 0..attempts {
            let mut tx = self.begin(ctx, attempt, last_conflict.as_ref()).await;
            let mut decided = decision.decide(&mut tx).await;
            if matches!(decided, Err(CommandError::Rejected(_))) {
                // A refusal is final only if the latest state agrees: a domain rule's
                // refusal, unlike a stale success, is not caught by the expected version.
                // Cached state can be behind the log for a moment (a commit whose cache
                // update has not landed yet), and so can the store's own view when it
                // follows another writer (a cluster node's replica).
                let moved = matches!(self.store.catch_up().await, Ok(true));
                if moved || !tx.fresh {
                    drop(tx);
                    tx = self.begin(ctx, attempt + 1, last_conflict.as_ref()).await;
                    decided = decision.decide(&mut tx).await;
                }
            }
            decided?;
            match tx.commit().await {
                Err(StoreError::WrongExpectedVersion { stream, .. }) => {
                    last_conflict = Some(stream);
                    if attempt + 1 < attempts && !self.options.queue_per_stream {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
                Err(error @ StoreError::IdempotencyConflict { .. })
                    if ctx.idempotency_key.is_some() =>
                {
                    // A concurrent retry of the same command committed first.
                    return match self.already_executed(ctx).await? {
                        Some(done) => Ok(done),
                        None => Err(error.into()),
                    };
                }
                other => return Ok(other?),
            }
        }
        Err(CommandError::Conflict {
            stream: last_conflict.expect("every failed attempt recorded its stream"),
            attempts,
        })
    }
}

/// The pause before retry `attempt + 1`: random in `0..=2^attempt ms`, capped at 64 ms.
/// Losers of a race that retried in lockstep would collide again; the jitter spreads them
/// over the next commits so a hot aggregate keeps making progress.
fn backoff(attempt: u32) -> std::time::Duration {
    let ceiling_us = 1_000u64 << attempt.min(6);
    let random = (Uuid::new_v4().as_u128() as u64) % (ceiling_us + 1);
    std::time::Duration::from_micros(random)
}

impl<S: EventStore + SnapshotStore> CommandBus<S> {
    /// Saves a snapshot off the command's critical path.
    pub(super) fn spawn_snapshot(
        &self,
        stream: StreamId,
        version: u64,
        state: Arc<dyn Any + Send + Sync>,
        encode: SnapshotFn,
    ) {
        let store = self.store.clone();
        let save = async move {
            let Some((schema_version, state)) = encode(state.as_ref()) else {
                return;
            };
            let snapshot = Snapshot {
                version,
                schema_version,
                state,
            };
            if let Err(error) = store.save_snapshot(&stream, snapshot).await {
                tracing::warn!(%stream, %error, "snapshot not saved");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(save);
            }
            Err(_) => tracing::debug!("no runtime: snapshot skipped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::InMemoryEventStore;
    use crate::aggregate::DomainEvent;

    #[derive(Clone, Default, Serialize, Deserialize)]
    struct Counter {
        value: u64,
    }

    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Counted {
        Incremented { by: u64 },
    }

    impl DomainEvent for Counted {
        fn event_type(&self) -> &'static str {
            "Incremented"
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Aggregate for Counter {
        const CATEGORY: &'static str = "counter";
        type Command = ();
        type Event = Counted;
        type Error = Never;

        fn apply(&mut self, event: &Counted) {
            let Counted::Incremented { by } = event;
            self.value += by;
        }

        fn handle(&self, _id: &str, (): ()) -> Result<Vec<Counted>, Never> {
            Ok(vec![Counted::Incremented { by: 1 }])
        }
    }

    /// Two commits of one stream may reach the cache in either order: the older state
    /// arriving last must not replace the newer one (the server crash test caught
    /// commands refused by domain rules on such a stale state).
    #[tokio::test]
    async fn the_cache_never_goes_back_to_an_older_version() {
        let bus = CommandBus::new(InMemoryEventStore::new(crate::StoreOptions::default()));
        let stream = Counter::stream_id("c").unwrap();
        let state = |value: u64, version: u64| Cached {
            version,
            snapshot_version: 0,
            state: Some(Arc::new(Counter { value })),
        };
        bus.cache.remember(stream.clone(), state(5, 5));
        bus.cache.remember(stream.clone(), state(3, 3));
        let loaded = bus.load::<Counter>("c").await.unwrap();
        assert_eq!((loaded.version, loaded.state.value), (5, 5));
        bus.cache.remember(stream, state(6, 6));
        let loaded = bus.load::<Counter>("c").await.unwrap();
        assert_eq!((loaded.version, loaded.state.value), (6, 6));
    }

    /// A bus over a fresh in-memory store where counter "c" got `commands` increments.
    async fn counter_bus(commands: usize) -> CommandBus<InMemoryEventStore> {
        let bus = CommandBus::new(InMemoryEventStore::new(crate::StoreOptions::default()));
        for _ in 0..commands {
            bus.execute::<Counter>("c", (), &CommandContext::default())
                .await
                .unwrap();
        }
        bus
    }

    /// Loads counter "c" in `tx` and emits an increment of `by`; returns the version loaded.
    async fn emit_increment(tx: &mut Transaction<'_, InMemoryEventStore>, by: u64) -> u64 {
        let loaded = tx.load::<Counter>("c").await.unwrap();
        let version = loaded.version;
        tx.emit(loaded, vec![Counted::Incremented { by }]).unwrap();
        version
    }

    /// `emit` changes the state in place when it holds the only reference: a transaction
    /// that emits and is then dropped (a later aggregate refused the command) must leave
    /// the cache and every other holder of the state as they were.
    #[tokio::test]
    async fn an_abandoned_emit_changes_neither_the_cache_nor_other_holders() {
        let bus = counter_bus(1).await;
        let ctx = CommandContext::default();

        // Shared: another command holds the cached state while this one emits.
        let mut tx = bus.transaction(&ctx, 0);
        let held = bus.load::<Counter>("c").await.unwrap();
        emit_increment(&mut tx, 10).await;
        drop(tx);
        assert_eq!(held.state.value, 1, "another holder's state is not changed");
        assert_eq!(bus.load::<Counter>("c").await.unwrap().state.value, 1);
        drop(held);

        // Sole holder: the cache's reference is dropped first, so the change in place is
        // invisible to the next load.
        let mut tx = bus.transaction(&ctx, 0);
        emit_increment(&mut tx, 10).await;
        drop(tx);
        let after = bus.load::<Counter>("c").await.unwrap();
        assert_eq!((after.version, after.state.value), (1, 1));

        // A committed emit is what the next load sees.
        drop(after);
        let mut tx = bus.transaction(&ctx, 0);
        emit_increment(&mut tx, 10).await;
        tx.commit().await.unwrap();
        let after = bus.load::<Counter>("c").await.unwrap();
        assert_eq!((after.version, after.state.value), (2, 11));
    }

    /// While a command changes a cached state in place, the cache keeps the entry's
    /// version: a commit of an older version that reaches the cache late must not be
    /// cached as the current state.
    #[tokio::test]
    async fn a_late_older_commit_is_not_cached_while_a_state_is_changed_in_place() {
        let bus = counter_bus(3).await;
        let ctx = CommandContext::default();
        let stream = Counter::stream_id("c").unwrap();
        let mut tx = bus.transaction(&ctx, 0);
        assert_eq!(emit_increment(&mut tx, 1).await, 3);
        // The commit of version 2, finishing only now.
        bus.cache.remember(
            stream,
            Cached {
                version: 2,
                snapshot_version: 0,
                state: Some(Arc::new(Counter { value: 2 })),
            },
        );
        drop(tx);
        let loaded = bus.load::<Counter>("c").await.unwrap();
        assert_eq!((loaded.version, loaded.state.value), (3, 3));
    }

    /// With one attempt and no retry, 64 concurrent commands on one aggregate all succeed
    /// because they queue behind each other; without the queue they race, and whatever
    /// the race gives, every success (and only those) is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_on_a_hot_aggregate_queue_instead_of_conflicting() {
        for queue_per_stream in [true, false] {
            let options = BusOptions {
                max_attempts: 1,
                queue_per_stream,
                ..BusOptions::default()
            };
            let bus = Arc::new(CommandBus::with_options(
                Arc::new(InMemoryEventStore::new(crate::StoreOptions::default())),
                Upcasters::new(),
                options,
            ));
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let bus = bus.clone();
                    tokio::spawn(async move {
                        // Yield first so that the commands really run concurrently.
                        tokio::task::yield_now().await;
                        bus.execute::<Counter>("hot", (), &CommandContext::default())
                            .await
                    })
                })
                .collect();
            let mut conflicts = 0;
            for task in tasks {
                match task.await.unwrap() {
                    Ok(_) => {}
                    Err(CommandError::Conflict { .. }) => conflicts += 1,
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            let value = bus.load_uncached::<Counter>("hot", false).await.unwrap();
            assert_eq!(value.state.value, 64 - conflicts);
            if queue_per_stream {
                assert_eq!(conflicts, 0, "queued commands never conflict");
                assert!(bus.gates().is_empty(), "gates are released");
            }
        }
    }
}
