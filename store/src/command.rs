//! The command bus: load aggregates, decide, append with exact expected versions, retry on
//! conflicts, and make retried commands idempotent.
//!
//! A command runs as a [`Transaction`]: it loads any number of aggregates (each remembers
//! the version it was loaded at), emits events for some of them, and commits them all in
//! one `append_multi`, each stream with `ExpectedVersion::Exact(loaded version)`. If another
//! writer got there first, the store refuses the commit and the command runs again on fresh
//! state, up to `max_attempts` times.
//!
//! Within one process, commands on the same aggregate queue behind each other instead of
//! racing (see [`StreamGates`]): a hot aggregate then costs a wait, not a conflict and a
//! retry. The exact expected version still decides; the queue only makes it win.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use uuid::Uuid;

use crate::aggregate::{Aggregate, DomainEvent, decode_event};
use crate::cache::GenerationalCache;
use crate::error::StoreError;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::EventStore;
use crate::types::{
    AppendResult, Direction, ExpectedVersion, Metadata, NewEvent, Position, StreamAppend, StreamId,
};
use crate::upcast::Upcasters;

/// The namespace of deterministic event ids derived from idempotency keys.
pub const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6a1e_5c0d_7d1b_4f38_9a0e_1c2b_3d4e_5f60);

/// Events read per page while rehydrating.
const LOAD_PAGE: usize = 1024;

/// Who sent a command and why: flows into the metadata of every event it produces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandContext {
    /// Makes the command idempotent: a retry with the same key (and actor) returns the
    /// first result instead of acting twice.
    pub idempotency_key: Option<String>,
    /// Ties the command's events to the request that caused them; generated when absent.
    pub correlation_id: Option<Uuid>,
    /// The command or event that caused this command.
    pub causation_id: Option<Uuid>,
    /// The user, API key or component that sent the command.
    pub actor: Option<String>,
    /// Free key/values copied into every event's metadata.
    pub extra: BTreeMap<String, String>,
}

impl CommandContext {
    /// A context with an actor.
    pub fn by(actor: impl Into<String>) -> Self {
        Self {
            actor: Some(actor.into()),
            ..Self::default()
        }
    }

    /// The same context with an idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The deterministic id of the `index`-th event of the command, if it has a key.
    /// The actor is part of the name so two clients cannot collide on a key.
    pub fn event_id(&self, index: usize) -> Option<Uuid> {
        let key = self.idempotency_key.as_deref()?;
        let actor = self.actor.as_deref().unwrap_or("");
        let name = format!("{actor}\u{0}{key}\u{0}{index}");
        Some(Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()))
    }
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutcome {
    /// One result per stream appended to (empty when the command decided nothing).
    pub streams: Vec<AppendResult>,
    /// The commit's last position: read your own write by waiting for it.
    pub position: Position,
    /// True when this was a retry of a command that had already been executed.
    pub duplicate: bool,
}

/// An aggregate as loaded: its state and the stream version that state includes.
#[derive(Clone, Debug)]
pub struct Loaded<A> {
    /// The aggregate's id (the stream id without its category).
    pub id: String,
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The state, shared with the bus's cache: [`Transaction::emit`] takes it back without
    /// a copy when nothing else holds it, so a command never copies a large state.
    pub state: Arc<A>,
    /// The stream version the state includes (0: the aggregate does not exist yet).
    pub version: u64,
    /// The version of the snapshot the state was built on (0: none), which decides when
    /// the next snapshot is due.
    pub snapshot_version: u64,
}

/// Tuning of the command bus.
#[derive(Clone, Debug)]
pub struct BusOptions {
    /// How many times a command runs before a conflict is reported (1 + retries).
    pub max_attempts: u32,
    /// Take a snapshot once a stream has this many events past its last snapshot (0: never).
    pub snapshot_every: u64,
    /// How many aggregate states are kept in memory.
    pub cache_capacity: usize,
    /// Queue commands on the same aggregate behind each other in this process instead of
    /// letting them race and retry on conflicts (see [`StreamGates`]).
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
    async fn enter(self: &Arc<Self>, stream: &StreamId) -> Gate {
        let guard = self.gate(stream).lock_owned().await;
        Gate::new(self, stream, guard)
    }

    /// The stream's gate if it is free right now.
    fn try_enter(self: &Arc<Self>, stream: &StreamId) -> Option<Gate> {
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
struct Gate {
    gates: Arc<StreamGates>,
    stream: StreamId,
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

#[derive(Clone)]
struct Cached {
    version: u64,
    snapshot_version: u64,
    /// `None` while a command changes the state in place (see `forget_cached`): the
    /// version stays, so `remember` still refuses an older one.
    state: Option<Arc<dyn Any + Send + Sync>>,
}

type SnapshotFn = fn(&(dyn Any + Send + Sync)) -> Option<(u16, Vec<u8>)>;

fn snapshot_of<A: Aggregate>(state: &(dyn Any + Send + Sync)) -> Option<(u16, Vec<u8>)> {
    let state = state.downcast_ref::<A>()?;
    serde_json::to_vec(state)
        .ok()
        .map(|bytes| (A::SNAPSHOT_VERSION, bytes))
}

/// Runs commands against aggregates stored in `S`.
pub struct CommandBus<S> {
    store: Arc<S>,
    upcasters: Upcasters,
    options: BusOptions,
    /// Recently used states by stream. An entry may be stale (another process or a lost
    /// race wrote since); the exact expected version of the commit catches that, and the
    /// retry loads from the store.
    cache: Mutex<GenerationalCache<StreamId, Cached>>,
    gates: Arc<StreamGates>,
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
            cache: Mutex::new(GenerationalCache::new(options.cache_capacity.max(2))),
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

    /// The per-stream queues of this bus.
    pub fn gates(&self) -> &StreamGates {
        &self.gates
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, GenerationalCache<StreamId, Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Caches a stream's state unless the cache already holds a later version. Two commits
    /// of one stream can finish (and get here) in either order; the older must not
    /// overwrite the newer, or the next command would decide on a state that misses
    /// events and could be refused by a domain rule (which no retry corrects) before its
    /// commit's expected version could notice.
    fn remember(&self, stream: StreamId, cached: Cached) {
        let mut cache = self.cache();
        if cache
            .get(&stream)
            .is_some_and(|held| held.version > cached.version)
        {
            return;
        }
        cache.insert(stream, cached);
    }

    /// Drops the cache's reference to `state` if the entry for `stream` is `state` itself,
    /// so the caller holds the only reference and can change it without a copy. The entry
    /// stays, with its version and no state (a load misses on it): with no entry at all, a
    /// commit of an older version finishing late would be cached as current.
    fn forget_cached<A>(&self, stream: &StreamId, state: &Arc<A>) {
        let mut cache = self.cache();
        if let Some(held) = cache.get_mut(stream)
            && held
                .state
                .as_ref()
                .is_some_and(|held| std::ptr::addr_eq(Arc::as_ptr(held), Arc::as_ptr(state)))
        {
            held.state = None;
        }
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

    async fn load_with<A: Aggregate>(
        &self,
        id: &str,
        use_cache: bool,
    ) -> Result<Loaded<A>, StoreError> {
        let stream = A::stream_id(id)?;
        if use_cache {
            let cached = self.cache().get(&stream).cloned();
            if let Some(cached) = cached
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
        }
        let loaded = self.load_uncached::<A>(id, true).await?;
        self.remember(
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
        Transaction {
            bus: self,
            ctx,
            fresh: attempt > 0,
            emitted: Vec::new(),
            gates: Mutex::new(Vec::new()),
        }
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
    ) -> Result<CommandOutcome, StoreError> {
        self.run(ctx, &Single::<A> { id, command }).await
    }

    /// Runs a decision over any number of aggregates with the bus's retry and idempotency
    /// rules: the decision loads through the transaction and emits events; the bus commits,
    /// and runs the decision again on fresh state when the commit loses a race.
    pub async fn run<D: Decision<S>>(
        &self,
        ctx: &CommandContext,
        decision: &D,
    ) -> Result<CommandOutcome, StoreError> {
        if let Some(done) = self.already_executed(ctx).await? {
            return Ok(done);
        }
        let attempts = self.options.max_attempts.max(1);
        let mut last_conflict = None;
        for attempt in 0..attempts {
            let mut tx = self.begin(ctx, attempt, last_conflict.as_ref()).await;
            let mut decided = decision.decide(&mut tx).await;
            if matches!(decided, Err(StoreError::Rejected(_))) && !tx.fresh {
                // A refusal decided on cached state is final only if fresh state agrees:
                // the cache can be behind the log for a moment (a commit whose cache
                // update has not landed yet), and a domain rule's refusal, unlike a stale
                // success, is not caught by the expected version.
                drop(tx);
                tx = self.begin(ctx, attempt + 1, last_conflict.as_ref()).await;
                decided = decision.decide(&mut tx).await;
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
                        None => Err(error),
                    };
                }
                other => return other,
            }
        }
        Err(StoreError::Conflict {
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

/// A command's decision over one or more aggregates, run by [`CommandBus::run`].
///
/// `decide` loads what it needs through the transaction and emits events; it must not
/// append by itself. It may run more than once (on fresh state) when a commit loses a race.
pub trait Decision<S>: Sync {
    /// Loads and emits for one attempt.
    fn decide(
        &self,
        tx: &mut Transaction<'_, S>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

struct Single<'a, A: Aggregate> {
    id: &'a str,
    command: A::Command,
}

impl<S: EventStore + SnapshotStore, A: Aggregate> Decision<S> for Single<'_, A> {
    async fn decide(&self, tx: &mut Transaction<'_, S>) -> Result<(), StoreError> {
        let loaded = tx.load::<A>(self.id).await?;
        let events = loaded
            .state
            .handle(self.command.clone())
            .map_err(|e| StoreError::Rejected(Box::new(e)))?;
        tx.emit(loaded, events)
    }
}

struct Emitted {
    stream: StreamId,
    loaded_version: u64,
    snapshot_version: u64,
    events: Vec<NewEvent>,
    new_state: Arc<dyn Any + Send + Sync>,
    snapshot: SnapshotFn,
}

/// One attempt of a command: loads remember their versions, emits collect events, and
/// `commit` appends everything atomically.
pub struct Transaction<'b, S> {
    bus: &'b CommandBus<S>,
    ctx: &'b CommandContext,
    fresh: bool,
    emitted: Vec<Emitted>,
    /// The stream gates this attempt holds until it is committed or dropped.
    gates: Mutex<Vec<Gate>>,
}

impl<S: EventStore + SnapshotStore> Transaction<'_, S> {
    /// Loads an aggregate for this attempt (after taking its stream's gate, see
    /// [`StreamGates`]).
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        self.enter(&A::stream_id(id)?).await;
        self.bus.load_with(id, !self.fresh).await
    }

    /// Takes the stream's gate: waits for it if this attempt holds none yet, takes it
    /// only if free otherwise (never waiting while holding one keeps it deadlock-free).
    async fn enter(&self, stream: &StreamId) {
        if !self.bus.options.queue_per_stream {
            return;
        }
        let holds_any = {
            let held = self.held();
            if held.iter().any(|gate| &gate.stream == stream) {
                return;
            }
            !held.is_empty()
        };
        let gate = if holds_any {
            self.bus.gates.try_enter(stream)
        } else {
            Some(self.bus.gates.enter(stream).await)
        };
        if let Some(gate) = gate {
            self.held().push(gate);
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Vec<Gate>> {
        self.gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records events decided for a loaded aggregate; they are appended at `commit` with
    /// `ExpectedVersion::Exact(loaded.version)`. Emitting nothing is allowed.
    ///
    /// The aggregate is taken by value: its state becomes the state after the events.
    /// The cache's reference to it is dropped first (the commit caches the new state), so
    /// the state usually changes in place; copying it made every command's cost grow with
    /// the aggregate (a product's open reservations) and a load test slow down as it ran.
    pub fn emit<A: Aggregate>(
        &mut self,
        loaded: Loaded<A>,
        events: Vec<A::Event>,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let Loaded {
            stream,
            state,
            version,
            snapshot_version,
            ..
        } = loaded;
        self.bus.forget_cached(&stream, &state);
        let mut state = Arc::unwrap_or_clone(state);
        let mut new_events = Vec::with_capacity(events.len());
        for event in &events {
            state.apply(event);
            new_events.push(NewEvent {
                event_id: None,
                event_type: event.event_type().to_string(),
                schema_version: event.schema_version(),
                metadata: Metadata::default(),
                payload: event.encode()?,
            });
        }
        self.emitted.push(Emitted {
            stream,
            loaded_version: version,
            snapshot_version,
            events: new_events,
            new_state: Arc::new(state),
            snapshot: snapshot_of::<A>,
        });
        Ok(())
    }

    /// Appends everything emitted in one atomic commit.
    pub async fn commit(self) -> Result<CommandOutcome, StoreError> {
        let bus = self.bus;
        if self.emitted.is_empty() {
            return Ok(CommandOutcome {
                streams: Vec::new(),
                position: bus.store.head(),
                duplicate: false,
            });
        }
        let metadata = Metadata {
            correlation_id: Some(self.ctx.correlation_id.unwrap_or_else(Uuid::now_v7)),
            causation_id: self.ctx.causation_id,
            actor: self.ctx.actor.clone(),
            extra: self.ctx.extra.clone(),
        };
        let mut index = 0;
        let mut appends = Vec::with_capacity(self.emitted.len());
        let mut after = Vec::with_capacity(self.emitted.len());
        for emitted in self.emitted {
            let mut events = emitted.events;
            for event in &mut events {
                event.event_id = self.ctx.event_id(index);
                event.metadata = metadata.clone();
                index += 1;
            }
            appends.push(StreamAppend::new(
                emitted.stream.clone(),
                ExpectedVersion::Exact(emitted.loaded_version),
                events,
            ));
            after.push((
                emitted.stream,
                emitted.snapshot_version,
                emitted.new_state,
                emitted.snapshot,
            ));
        }
        let result = match bus.store.append_multi(appends).await {
            Ok(result) => result,
            Err(error) => {
                if let StoreError::WrongExpectedVersion { stream, .. } = &error {
                    bus.cache().remove(stream);
                }
                return Err(error);
            }
        };
        let every = bus.options.snapshot_every;
        for ((stream, mut snapshot_version, state, snapshot), appended) in
            after.into_iter().zip(&result.streams)
        {
            let due = every > 0 && appended.last_version - snapshot_version >= every;
            if due {
                snapshot_version = appended.last_version;
            }
            bus.remember(
                stream.clone(),
                Cached {
                    version: appended.last_version,
                    snapshot_version,
                    state: Some(state.clone()),
                },
            );
            if due {
                bus.spawn_snapshot(stream, appended.last_version, state, snapshot);
            }
        }
        Ok(CommandOutcome {
            position: result.last_position,
            duplicate: result.duplicate,
            streams: result.streams,
        })
    }
}

impl<S: EventStore + SnapshotStore> CommandBus<S> {
    /// Saves a snapshot off the command's critical path.
    fn spawn_snapshot(
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

/// Encodes the payload of a domain event (for tests and fixtures).
pub fn encode_event<E: DomainEvent>(event: &E) -> Result<NewEvent, StoreError> {
    Ok(NewEvent {
        event_id: None,
        event_type: event.event_type().to_string(),
        schema_version: event.schema_version(),
        metadata: Metadata::default(),
        payload: event.encode()?,
    })
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::InMemoryEventStore;

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

    impl crate::DomainError for Never {
        fn code(&self) -> &'static str {
            "NEVER"
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    impl Aggregate for Counter {
        const CATEGORY: &'static str = "counter";
        type Command = ();
        type Event = Counted;
        type Error = Never;

        fn apply(&mut self, event: &Counted) {
            let Counted::Incremented { by } = event;
            self.value += by;
        }

        fn handle(&self, (): ()) -> Result<Vec<Counted>, Never> {
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
        bus.remember(stream.clone(), state(5, 5));
        bus.remember(stream.clone(), state(3, 3));
        let loaded = bus.load::<Counter>("c").await.unwrap();
        assert_eq!((loaded.version, loaded.state.value), (5, 5));
        bus.remember(stream, state(6, 6));
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
        bus.remember(
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
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
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
