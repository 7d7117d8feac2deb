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
//!
//! The pieces: [`CommandBus`] (`bus.rs`: loading, the retry loop, idempotency, snapshots),
//! [`Transaction`] and [`Decision`] (`transaction.rs`: one attempt and its commit),
//! [`StreamGates`] (`gates.rs`), the bus's state cache (`state_cache.rs`), and
//! [`CommandError`] (`error.rs`), typed by the refusal of the aggregate or decision.

mod bus;
mod error;
mod gates;
mod state_cache;
mod transaction;

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::aggregate::DomainEvent;
use crate::error::StoreError;
use crate::types::{AppendResult, Metadata, NewEvent, Position};

pub use bus::{BusOptions, CommandBus};
pub use error::CommandError;
pub use gates::StreamGates;
pub use transaction::{Decision, Loaded, Transaction};

/// The namespace of deterministic event ids derived from idempotency keys.
pub const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6a1e_5c0d_7d1b_4f38_9a0e_1c2b_3d4e_5f60);

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
