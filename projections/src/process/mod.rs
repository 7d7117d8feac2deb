//! Process managers: long-running workflows that react to events with commands and
//! deadlines (the checkout saga of the reference domain is one).
//!
//! A [`ProcessManager`] is a pure decision function, like a projection: it follows the log
//! from a checkpoint, keeps one state per *instance* (one checkout, one order), and answers
//! each event with a [`Reaction`]: commands to send and deadlines to set or cancel. It
//! runs in two halves:
//!
//! - **The decision half** is a projection ([`ProcessProjection`]) run by the ordinary
//!   [`ProjectionRuntime`](crate::ProjectionRuntime): for every event it writes the
//!   instance's new state, the commands to send (the *outbox*) and the deadlines in the
//!   same batch as its checkpoint. After any crash the state, the outbox and the
//!   checkpoint agree: an event's commands are in the outbox exactly when the event is
//!   behind the checkpoint. Status, pause, rewind and parked events are the runtime's.
//! - **The dispatch half** ([`Dispatcher`]) sends what the outbox holds through a
//!   [`CommandExecutor`], each command with an idempotency key derived from the triggering
//!   event's id (`{process}/{event id}/{index}`), so a command sent again after a crash
//!   (before its outbox row was removed) has its effect once. A command that fails is
//!   retried with exponential backoff and jitter, then parked with the reason; parked
//!   commands can be listed, retried and skipped ([`ProcessHandle`]).
//!
//! **Deadlines** are durable: a deadline row is written with the state that set it. When
//! the [`Clock`] reaches it the dispatcher appends a `DeadlineReached` event to the
//! instance's own stream (`{process}-{instance}`), with an event id derived from the
//! process, instance, deadline name and due time; so a deadline fires once however often
//! it is fired, and its effect is decided by the decision half like any other event
//! ([`ProcessManager::on_deadline`]), in log order. A deadline cancelled or replaced
//! before its event is handled is ignored when the event arrives.
//!
//! Decisions must be deterministic (no clocks, no randomness): a deadline's due time is
//! the triggering event's `recorded_at` plus its delay. Events that do not fit an
//! instance's state (a duplicate, a late answer) must be ignored by `react`: a rewound
//! process manager hands events to it again, and the idempotency keys make the resent
//! commands no-ops.

mod clock;
mod dispatch;
mod outbox;
mod projection;
#[cfg(any(test, feature = "test-utils"))]
pub mod testkit;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use annals_store::{ReadFilter, RecordedEvent, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::HandlerError;

pub use clock::{Clock, ManualClock, SystemClock};
pub use dispatch::{
    ActiveWhen, CommandExecutor, CommandFailure, Dispatcher, DispatcherOptions, ProcessHandle,
    ProcessStatus, RetryPolicy,
};
pub use outbox::{ParkedCommand, PendingDeadline};
pub use projection::{ProcessProjection, load_instance};

/// The event type of a deadline that fired, appended to the instance's stream.
pub const DEADLINE_REACHED: &str = "DeadlineReached";

/// A workflow that reacts to events with commands and deadlines. See the module docs.
pub trait ProcessManager: Send + Sync + 'static {
    /// One instance's state.
    type State: Serialize + DeserializeOwned + Default + Clone + Debug + Send + Sync + 'static;
    /// What the process manager sends; stored in the outbox as JSON.
    type Command: Serialize + DeserializeOwned + Clone + Debug + PartialEq + Send + Sync + 'static;

    /// Unique name, `[a-z0-9_]{1,32}` (no `-`): the name of its projection and the stream
    /// category of its deadline events (`{name}-{instance}`).
    fn name(&self) -> &str;

    /// Version of the decision logic (see [`crate::Projection::version`]). Raising it
    /// rebuilds the states from the log, and the rebuilt outbox resends every command of
    /// the history with the same idempotency keys: harmless, but not free.
    fn version(&self) -> u32 {
        1
    }

    /// The events it reacts to. Its own deadline events are added by the runtime.
    fn filter(&self) -> ReadFilter;

    /// The instance an event belongs to, or `None` to ignore the event. Must be a valid
    /// stream id suffix (no control characters, at most 200 bytes), so that
    /// `{name}-{instance}` is a valid stream id (at most 256 bytes).
    fn instance_of(&self, event: &RecordedEvent) -> Option<String>;

    /// Folds one event into the instance's state and says what to do about it.
    fn react(
        &self,
        state: &mut Self::State,
        event: &RecordedEvent,
        out: &mut Reaction<Self::Command>,
    ) -> Result<(), HandlerError>;

    /// A deadline of the instance fired (`event` is its `DeadlineReached`). The default
    /// does nothing.
    fn on_deadline(
        &self,
        state: &mut Self::State,
        deadline: &str,
        event: &RecordedEvent,
        out: &mut Reaction<Self::Command>,
    ) -> Result<(), HandlerError> {
        let _ = (state, deadline, event, out);
        Ok(())
    }
}

/// What a process manager decides about one event.
#[derive(Clone, Debug, PartialEq)]
pub struct Reaction<C> {
    /// Commands to send, in order.
    pub commands: Vec<C>,
    /// Deadlines to set: name and delay after the triggering event. Setting a name that
    /// is pending replaces it.
    pub set: Vec<(String, Duration)>,
    /// Names of pending deadlines to cancel.
    pub cancel: Vec<String>,
}

impl<C> Default for Reaction<C> {
    fn default() -> Self {
        Self {
            commands: Vec::new(),
            set: Vec::new(),
            cancel: Vec::new(),
        }
    }
}

impl<C> Reaction<C> {
    /// Sends `command` (after this event's state is written).
    pub fn send(&mut self, command: C) {
        self.commands.push(command);
    }

    /// Fires the deadline `name` `after` the triggering event was recorded, unless it is
    /// cancelled or replaced first.
    pub fn set_deadline(&mut self, name: impl Into<String>, after: Duration) {
        self.set.push((name.into(), after));
    }

    /// Cancels the pending deadline `name` (nothing happens if none is pending).
    pub fn cancel_deadline(&mut self, name: impl Into<String>) {
        self.cancel.push(name.into());
    }
}

/// An instance as stored: the process manager's state and what the runtime keeps for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Instance<S> {
    /// The process manager's state.
    pub state: S,
    /// Pending deadlines: name → due time.
    pub deadlines: BTreeMap<String, Timestamp>,
    /// The correlation id of the instance's first event (its own id when it has none),
    /// carried by every command and deadline event of the instance; `None` until the
    /// instance has seen an event.
    pub correlation_id: Option<Uuid>,
}

/// A deadline the decision half set, to be written as a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetDeadline {
    pub(crate) name: String,
    pub(crate) due: Timestamp,
}

/// What one event did to one instance.
#[derive(Debug)]
pub(crate) struct Step<C> {
    pub(crate) commands: Vec<C>,
    pub(crate) set: Vec<SetDeadline>,
    /// Deadlines that are no longer pending (cancelled, replaced or fired): name and due.
    pub(crate) removed: Vec<SetDeadline>,
}

/// The name and due time of a `DeadlineReached` event's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineReached {
    /// The deadline's name.
    pub deadline: String,
    /// When it was due (microseconds since the Unix epoch).
    pub due_micros: i64,
}

/// Whether `event` is a deadline event of the process manager `name`, and for which
/// instance.
pub(crate) fn deadline_of(name: &str, event: &RecordedEvent) -> Option<(String, DeadlineReached)> {
    if event.event_type != DEADLINE_REACHED || event.category() != name {
        return None;
    }
    let instance = event.stream_id.aggregate_id()?.to_string();
    let reached = serde_json::from_slice(&event.payload).ok()?;
    Some((instance, reached))
}

/// The instance `event` belongs to, if any: its own deadline stream's, or the one the
/// process manager names.
pub(crate) fn route<P: ProcessManager>(pm: &P, event: &RecordedEvent) -> Option<String> {
    match deadline_of(pm.name(), event) {
        Some((instance, _)) => Some(instance),
        None if event.category() == pm.name() => None,
        None => pm.instance_of(event),
    }
}

/// Applies one event to an instance: the decision and the bookkeeping of its deadlines.
/// The one code path of the projection and of the test kit.
pub(crate) fn step<P: ProcessManager>(
    pm: &P,
    instance: &mut Instance<P::State>,
    event: &RecordedEvent,
) -> Result<Step<P::Command>, HandlerError> {
    let mut out = Reaction::default();
    let mut removed = Vec::new();
    if let Some((_, reached)) = deadline_of(pm.name(), event) {
        let due = Timestamp(reached.due_micros);
        if instance.deadlines.get(&reached.deadline) != Some(&due) {
            // Cancelled or replaced before it fired: nothing to decide.
            return Ok(Step {
                commands: Vec::new(),
                set: Vec::new(),
                removed,
            });
        }
        instance.deadlines.remove(&reached.deadline);
        removed.push(SetDeadline {
            name: reached.deadline.clone(),
            due,
        });
        pm.on_deadline(&mut instance.state, &reached.deadline, event, &mut out)?;
    } else {
        pm.react(&mut instance.state, event, &mut out)?;
    }
    if instance.correlation_id.is_none() {
        instance.correlation_id = event.metadata.correlation_id.or(Some(event.event_id));
    }
    for name in out.cancel {
        if let Some(due) = instance.deadlines.remove(&name) {
            removed.push(SetDeadline { name, due });
        }
    }
    let mut set = Vec::with_capacity(out.set.len());
    for (name, after) in out.set {
        let micros = i64::try_from(after.as_micros()).unwrap_or(i64::MAX);
        let due = Timestamp(event.recorded_at.0.saturating_add(micros));
        if let Some(old) = instance.deadlines.insert(name.clone(), due) {
            removed.push(SetDeadline {
                name: name.clone(),
                due: old,
            });
        }
        set.retain(|s: &SetDeadline| s.name != name);
        set.push(SetDeadline { name, due });
    }
    Ok(Step {
        commands: out.commands,
        set,
        removed,
    })
}

/// Checks a process manager's name: a projection name without `-` (so that it is a
/// stream category of its own) of at most 32 characters (so that a deadline stream,
/// `{name}-{instance}` with an instance of up to 200 bytes, is a valid stream id).
pub fn validate_process_name(name: &str) -> bool {
    crate::projection::validate_name(name) && !name.contains('-') && name.len() <= 32
}
