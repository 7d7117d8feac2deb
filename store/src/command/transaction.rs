//! One attempt of a command: the aggregates it loaded (with their versions), the events
//! it decided, and the atomic commit of all of them.

use std::any::Any;
use std::future::Future;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::bus::CommandBus;
use super::error::CommandError;
use super::gates::Gate;
use super::state_cache::{Cached, SnapshotFn, snapshot_of};

/// Past `snapshot_every × SNAPSHOT_SPACING` events, a stream's snapshots are this fraction
/// of its length apart.
const SNAPSHOT_SPACING: u64 = 16;
use super::{CommandContext, CommandOutcome};
use crate::aggregate::{Aggregate, DomainEvent};
use crate::error::StoreError;
use crate::snapshot::SnapshotStore;
use crate::store::EventStore;
use crate::types::{ExpectedVersion, Metadata, NewEvent, StreamAppend, StreamId};

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

/// A command's decision over one or more aggregates, run by [`CommandBus::run`].
///
/// `decide` loads what it needs through the transaction and emits events; it must not
/// append by itself. It may run more than once (on fresh state) when a commit loses a race.
pub trait Decision<S>: Sync {
    /// Why the decision refuses a command: the error of its aggregate, or the domain's
    /// own error for a decision over several aggregates.
    type Error: Send;

    /// Loads and emits for one attempt.
    fn decide(
        &self,
        tx: &mut Transaction<'_, S>,
    ) -> impl Future<Output = Result<(), CommandError<Self::Error>>> + Send;
}

pub(super) struct Single<'a, A: Aggregate> {
    pub(super) id: &'a str,
    pub(super) command: A::Command,
}

impl<S: EventStore + SnapshotStore, A: Aggregate> Decision<S> for Single<'_, A> {
    type Error = A::Error;

    async fn decide(&self, tx: &mut Transaction<'_, S>) -> Result<(), CommandError<A::Error>> {
        let loaded = tx.load::<A>(self.id).await?;
        let events = loaded
            .state
            .handle(self.id, self.command.clone())
            .map_err(CommandError::Rejected)?;
        Ok(tx.emit(loaded, events)?)
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
    /// Bypass the cache: an earlier attempt found it stale.
    pub(super) fresh: bool,
    emitted: Vec<Emitted>,
    /// The stream gates this attempt holds until it is committed or dropped.
    gates: Mutex<Vec<Gate>>,
}

impl<'b, S> Transaction<'b, S> {
    /// A fresh attempt of a command on `bus`.
    pub(super) fn new(bus: &'b CommandBus<S>, ctx: &'b CommandContext, fresh: bool) -> Self {
        Self {
            bus,
            ctx,
            fresh,
            emitted: Vec::new(),
            gates: Mutex::new(Vec::new()),
        }
    }
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
    pub(super) async fn enter(&self, stream: &StreamId) {
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
        self.bus.cache.forget(&stream, &state);
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
                    bus.cache.remove(stream);
                }
                return Err(error);
            }
        };
        let every = bus.options.snapshot_every;
        for ((stream, mut snapshot_version, state, snapshot), appended) in
            after.into_iter().zip(&result.streams)
        {
            // A snapshot copies the whole state, and a state may grow with its stream (a
            // product's open reservations): one every `every` events would make each
            // event's share of the copy grow without bound. Spacing them by a sixteenth
            // of the stream's length keeps that share constant, for a replay of at most
            // that many events after a cache miss.
            let interval = every.max(snapshot_version / SNAPSHOT_SPACING);
            let due = every > 0 && appended.last_version - snapshot_version >= interval;
            if due {
                snapshot_version = appended.last_version;
            }
            bus.cache.remember(
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
