//! The rows a process manager's decision half writes and its dispatch half consumes:
//! commands waiting to be sent, pending deadlines, and parked commands.

use annals_store::{Position, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A command in the outbox: decided, written with the state that decided it, not yet
/// sent successfully.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OutboxEntry {
    /// The instance that decided it: commands of one instance are sent in order.
    pub(crate) instance: String,
    /// The command, as JSON.
    pub(crate) command: serde_json::Value,
    /// The idempotency key it is sent with: `{process}/{event id}/{index}`.
    pub(crate) idempotency_key: String,
    /// The instance's correlation id.
    pub(crate) correlation_id: Option<Uuid>,
    /// The triggering event's id.
    pub(crate) causation_id: Uuid,
    /// Failed sends so far.
    pub(crate) attempts: u32,
    /// Not to be sent before then (the backoff of the last failure).
    pub(crate) not_before: Timestamp,
    /// Why the last send failed.
    pub(crate) last_error: Option<String>,
}

/// A deadline waiting for its time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDeadline {
    /// The instance that set it.
    pub instance: String,
    /// Its name within the instance.
    pub name: String,
    /// When it is due (microseconds since the Unix epoch).
    pub due_micros: i64,
    /// The instance's correlation id.
    pub correlation_id: Option<Uuid>,
    /// The event that set it.
    pub causation_id: Uuid,
}

/// A command the dispatcher gave up on after its retries: it stays here until an operator
/// retries or skips it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParkedCommand {
    /// The process manager.
    pub process: String,
    /// The position of the event that decided it.
    pub position: u64,
    /// Its index among that event's commands.
    pub index: u16,
    /// The instance.
    pub instance: String,
    /// The command, as JSON.
    pub command: serde_json::Value,
    /// The idempotency key it is sent with.
    pub idempotency_key: String,
    /// The last error.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// When it was parked (microseconds since the Unix epoch).
    pub parked_at_micros: i64,
    #[serde(default)]
    pub(crate) correlation_id: Option<Uuid>,
    #[serde(default = "Uuid::nil")]
    pub(crate) causation_id: Uuid,
}

impl ParkedCommand {
    pub(crate) fn new(
        process: &str,
        (position, index): (Position, u16),
        entry: OutboxEntry,
        error: String,
        now: Timestamp,
    ) -> Self {
        Self {
            process: process.to_string(),
            position: position.0,
            index,
            instance: entry.instance,
            command: entry.command,
            idempotency_key: entry.idempotency_key,
            error,
            attempts: entry.attempts,
            parked_at_micros: now.0,
            correlation_id: entry.correlation_id,
            causation_id: entry.causation_id,
        }
    }

    /// Back into the outbox, due now, with its attempts reset.
    pub(crate) fn into_entry(self, now: Timestamp) -> OutboxEntry {
        OutboxEntry {
            instance: self.instance,
            command: self.command,
            idempotency_key: self.idempotency_key,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            attempts: 0,
            not_before: now,
            last_error: None,
        }
    }
}
