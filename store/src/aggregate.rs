//! The `Aggregate` role: state rebuilt from events, and pure decisions over it.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::StoreError;
use crate::types::{RecordedEvent, StreamId};
use crate::upcast::{Upcasters, decode_error};

/// The events of one aggregate type: serialisable, each with a type name and the schema
/// version it is written at.
///
/// The default `encode`/`decode` expect an adjacently tagged enum,
/// `#[serde(tag = "type", content = "data")]`, whose tag is the event type: the payload stored
/// is the variant's content alone, so the type name is not repeated inside it.
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static
{
    /// The event type name stored with the event (`OrderPlaced`).
    fn event_type(&self) -> &'static str;

    /// The schema version this event is written at (the newest its type has).
    fn schema_version(&self) -> u16 {
        1
    }

    /// The payload to store: the JSON content of the variant.
    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let mut tagged = serde_json::to_value(self)
            .map_err(|e| decode_error(self.event_type(), self.schema_version(), e))?;
        let content = tagged
            .get_mut("data")
            .map(Value::take)
            .unwrap_or(Value::Object(Default::default()));
        serde_json::to_vec(&content)
            .map_err(|e| decode_error(self.event_type(), self.schema_version(), e))
    }

    /// Rebuilds the event from its type and its payload, already upcast to the newest
    /// schema version.
    fn decode(event_type: &str, payload: Value) -> Result<Self, String> {
        let tagged = serde_json::json!({ "type": event_type, "data": payload });
        serde_json::from_value(tagged).map_err(|e| e.to_string())
    }
}

/// An event-sourced aggregate: a consistency boundary whose state is the fold of its
/// events, and whose decisions are pure functions of that state.
///
/// `apply` must be infallible and deterministic (it replays history that already
/// happened); `handle` decides and must not do I/O. The stream of an aggregate is
/// `{CATEGORY}-{id}`.
///
/// ```
/// use annals_store::{Aggregate, CommandBus, CommandContext, CommandError, DomainEvent, InMemoryEventStore};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Clone, Serialize, Deserialize)]
/// struct Counter { value: u64 }
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// #[serde(tag = "type", content = "data")]
/// enum CounterEvent { Incremented { by: u64 } }
///
/// impl DomainEvent for CounterEvent {
///     fn event_type(&self) -> &'static str { "Incremented" }
/// }
///
/// #[derive(Debug, PartialEq, thiserror::Error)]
/// #[error("increment must be positive")]
/// struct ZeroIncrement;
///
/// impl Aggregate for Counter {
///     const CATEGORY: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = ZeroIncrement;
///
///     fn apply(&mut self, CounterEvent::Incremented { by }: &CounterEvent) {
///         self.value += by;
///     }
///     fn handle(&self, _id: &str, by: u64) -> Result<Vec<CounterEvent>, ZeroIncrement> {
///         if by == 0 { return Err(ZeroIncrement); }
///         Ok(vec![CounterEvent::Incremented { by }])
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), CommandError<ZeroIncrement>> {
/// let bus = CommandBus::new(InMemoryEventStore::default());
/// bus.execute::<Counter>("c1", 2, &CommandContext::default()).await?;
/// bus.execute::<Counter>("c1", 3, &CommandContext::default()).await?;
/// assert_eq!(bus.load::<Counter>("c1").await?.state.value, 5);
/// let err = bus.execute::<Counter>("c1", 0, &CommandContext::default()).await.unwrap_err();
/// assert!(matches!(err, CommandError::Rejected(ZeroIncrement)));
/// # Ok(())
/// # }
/// ```
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The stream category: streams are `{CATEGORY}-{id}`.
    const CATEGORY: &'static str;
    /// The version of the snapshot encoding of the state. Raise it whenever the state's
    /// shape changes: snapshots of another version are ignored and the state is rebuilt
    /// from events.
    const SNAPSHOT_VERSION: u16 = 1;

    /// What can be asked of the aggregate.
    type Command: Clone + Send + Sync;
    /// What happened to it.
    type Event: DomainEvent;
    /// Why a command was refused: the business errors of the aggregate, which carry the
    /// ids they are about (the `id` that [`handle`](Self::handle) receives).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Folds one event into the state. Pure and infallible.
    fn apply(&mut self, event: &Self::Event);

    /// Decides what a command means for the current state of the aggregate `id`. Pure:
    /// no I/O. The id is given so that a refusal can name what it is about.
    fn handle(&self, id: &str, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// The stream of the aggregate with this id.
    fn stream_id(id: &str) -> Result<StreamId, StoreError> {
        StreamId::for_category(Self::CATEGORY, id)
    }
}

/// Turns a recorded event into the aggregate's typed event, upcasting it first.
pub fn decode_event<E: DomainEvent>(
    upcasters: &Upcasters,
    recorded: &RecordedEvent,
) -> Result<E, StoreError> {
    let (payload, _) = upcasters.upcast(recorded)?;
    E::decode(&recorded.event_type, payload).map_err(|reason| StoreError::Decode {
        event_type: recorded.event_type.clone(),
        schema_version: recorded.schema_version,
        position: recorded.position,
        reason,
    })
}
