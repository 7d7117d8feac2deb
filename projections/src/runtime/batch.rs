//! One page's events through the projection's handler: upcast, handled (a panic counts as
//! a failure), retried with backoff, then parked or stopped before, per the poison policy.
//! The changes they leave are collected without writing anything ([`handle_events`]) and
//! written in one batch with the parked records and the checkpoint ([`HandledPage::write`]).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use annals_store::{Position, RecordedEvent, Timestamp, Upcasters};

use super::RuntimeOptions;
use crate::error::{HandlerError, ProjectionError};
use crate::keys::Generation;
use crate::projection::{PoisonPolicy, Projection};
use crate::storage::{Changes, ParkedEvent, ReadModelStore, ReadModelTx};

/// What written batches did: one page's, or a whole pipeline run's merged (see
/// [`super::pipeline`]).
pub(crate) struct BatchOutcome {
    /// The generation's checkpoint after the batch.
    pub checkpoint: Position,
    /// The event the batch stopped before (stop policy), with the error.
    pub stopped: Option<(Position, String)>,
    /// The last handler error of the batch.
    pub last_error: Option<String>,
}

/// Applies `events` to one generation and commits their changes, the parked records and
/// the checkpoint `through` in one batch (see [`handle_events`] and [`HandledPage::write`]):
/// the projection test kit's way through a batch.
#[cfg(any(test, feature = "test-utils"))]
pub(crate) fn apply_events(
    read: &ReadModelStore,
    projection: &dyn Projection,
    generation: Generation,
    events: Vec<RecordedEvent>,
    through: Position,
    upcasters: &Upcasters,
    options: &RuntimeOptions,
) -> Result<BatchOutcome, ProjectionError> {
    let handled = handle_events(
        read, projection, generation, events, through, None, upcasters, options,
    )?;
    handled.write(read, projection.name(), generation)?;
    Ok(handled.outcome)
}

/// A page whose events are handled, its changes not written yet.
pub(super) struct HandledPage {
    /// What the page did: its checkpoint once written, its last error, a stop.
    pub outcome: BatchOutcome,
    /// The read-model changes of the events applied; shared, so the next batch can read
    /// them while they are written.
    pub changes: Arc<Changes>,
    /// The dead-letter records of the events parked.
    pub parked: Vec<ParkedEvent>,
    /// The events handled, kept so that freeing them falls to whichever thread drops the
    /// batch (the writer, after the write) rather than to the handler thread, the one a
    /// catch-up waits on.
    pub(super) _spent: Vec<RecordedEvent>,
}

impl HandledPage {
    /// Writes the batch: its changes, its parked records and the generation's new
    /// checkpoint in one `WriteBatch`. The only place read models are written.
    pub(super) fn write(
        &self,
        read: &ReadModelStore,
        name: &str,
        generation: Generation,
    ) -> Result<(), ProjectionError> {
        read.write_page(
            name,
            generation,
            &self.changes,
            &self.parked,
            self.outcome.checkpoint,
        )
    }
}

/// Hands `events` to the projection's handler (retrying, parking or stopping on failures)
/// and collects their changes, reading through `base` (the previous batch, while it is
/// being written). Writes nothing.
#[allow(clippy::too_many_arguments)]
pub(super) fn handle_events(
    read: &ReadModelStore,
    projection: &dyn Projection,
    generation: Generation,
    mut events: Vec<RecordedEvent>,
    through: Position,
    base: Option<Arc<Changes>>,
    upcasters: &Upcasters,
    options: &RuntimeOptions,
) -> Result<HandledPage, ProjectionError> {
    let name = projection.name();
    let mut tx = ReadModelTx::with_base(read.view_generation(name, generation), base);
    let mut outcome = BatchOutcome {
        checkpoint: through,
        stopped: None,
        last_error: None,
    };
    let mut parked = Vec::new();
    'events: for event in events.iter_mut() {
        if event.removed {
            // A tombstone has no content to project: a rebuild after retention or a hard
            // deletion builds the read model without it.
            continue;
        }
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match handle_one(projection, upcasters, event, &mut tx) {
                Ok(()) => {
                    tx.accept();
                    continue 'events;
                }
                Err(error) => {
                    tx.discard();
                    let message = error.to_string();
                    if attempts < options.max_attempts.max(1) {
                        tracing::warn!(projection = name, position = event.position.0, attempts, error = %message, "handler failed; retrying");
                        std::thread::sleep(
                            options.retry_backoff * 2u32.saturating_pow(attempts - 1),
                        );
                        continue;
                    }
                    outcome.last_error = Some(message.clone());
                    match projection.poison_policy() {
                        PoisonPolicy::Continue => {
                            tracing::error!(projection = name, position = event.position.0, attempts, error = %message, "event parked");
                            parked.push(ParkedEvent {
                                projection: name.to_string(),
                                position: event.position.0,
                                event_id: event.event_id.to_string(),
                                stream_id: event.stream_id.as_str().to_string(),
                                event_type: event.event_type.clone(),
                                error: message,
                                attempts,
                                parked_at_micros: Timestamp::now().as_micros(),
                            });
                            continue 'events;
                        }
                        PoisonPolicy::Stop => {
                            tracing::error!(projection = name, position = event.position.0, attempts, error = %message, "projection stopped on an event");
                            outcome.checkpoint = Position(event.position.0 - 1);
                            outcome.stopped = Some((event.position, message));
                            break 'events;
                        }
                    }
                }
            }
        }
    }
    Ok(HandledPage {
        outcome,
        changes: Arc::new(tx.into_changes()),
        parked,
        _spent: events,
    })
}

/// Upcasts and hands one event to the handler; a panic counts as a handler error, so one
/// bad event cannot take the worker down.
pub(super) fn handle_one(
    projection: &dyn Projection,
    upcasters: &Upcasters,
    event: &mut RecordedEvent,
    tx: &mut ReadModelTx<'_>,
) -> Result<(), HandlerError> {
    upcasters.upcast_recorded(event)?;
    match std::panic::catch_unwind(AssertUnwindSafe(|| projection.handle(event, tx))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".into());
            Err(format!("handler panicked: {what}").into())
        }
    }
}
