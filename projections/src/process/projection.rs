//! The decision half of a process manager: a [`Projection`] that keeps the instances'
//! states and writes their outbox and deadline rows in the batch of its checkpoint.

use std::sync::Arc;

use annals_store::{ReadFilter, RecordedEvent};
use serde::de::DeserializeOwned;

use super::outbox::{OutboxEntry, PendingDeadline};
use super::{DEADLINE_REACHED, Instance, ProcessManager, route, step};
use crate::error::{HandlerError, ProjectionError};
use crate::keys::process as keys;
use crate::projection::{PoisonPolicy, Projection};
use crate::storage::{ReadModelStore, ReadModelTx};

/// Runs a [`ProcessManager`]'s decisions as a projection of the same name.
pub struct ProcessProjection<P> {
    pm: Arc<P>,
    filter: ReadFilter,
}

impl<P: ProcessManager> ProcessProjection<P> {
    /// The projection of `pm`. Its filter is the process manager's plus its own deadline
    /// events.
    pub fn new(pm: Arc<P>) -> Self {
        let mut filter = pm.filter();
        if !filter.categories.is_empty() {
            filter.categories.push(pm.name().to_string());
        }
        if !filter.event_types.is_empty() {
            filter.event_types.push(DEADLINE_REACHED.to_string());
        }
        Self { pm, filter }
    }
}

impl<P: ProcessManager> Projection for ProcessProjection<P> {
    fn name(&self) -> &str {
        self.pm.name()
    }

    fn version(&self) -> u32 {
        self.pm.version()
    }

    fn filter(&self) -> ReadFilter {
        self.filter.clone()
    }

    /// A decision that cannot be made must not be skipped: the instance would miss a step
    /// for good. The process manager stops at the event until an operator resumes it.
    fn poison_policy(&self) -> PoisonPolicy {
        PoisonPolicy::Stop
    }

    fn handle(&self, event: &RecordedEvent, tx: &mut ReadModelTx<'_>) -> Result<(), HandlerError> {
        let Some(id) = route(self.pm.as_ref(), event) else {
            return Ok(());
        };
        let key = keys::instance(&id);
        let mut instance: Instance<P::State> = tx.get_typed(&key)?.unwrap_or_default();
        let step = step(self.pm.as_ref(), &mut instance, event)?;
        for removed in &step.removed {
            tx.delete(keys::deadline(removed.due, &id, &removed.name));
        }
        for set in &step.set {
            let row = PendingDeadline {
                instance: id.clone(),
                name: set.name.clone(),
                due_micros: set.due.0,
                correlation_id: instance.correlation_id,
                causation_id: event.event_id,
            };
            tx.put_json(keys::deadline(set.due, &id, &set.name), &row)?;
        }
        for (index, command) in step.commands.iter().enumerate() {
            let index =
                u16::try_from(index).map_err(|_| "more than 65,536 commands for one event")?;
            let entry = OutboxEntry {
                instance: id.clone(),
                command: serde_json::to_value(command)?,
                idempotency_key: format!("{}/{}/{index}", self.pm.name(), event.event_id),
                correlation_id: instance.correlation_id,
                causation_id: event.event_id,
                attempts: 0,
                // Due at once, whatever the clock says.
                not_before: annals_store::Timestamp(0),
                last_error: None,
            };
            tx.put_json(keys::command(keys::OUTBOX, event.position, index), &entry)?;
        }
        tx.put_typed(key, instance);
        Ok(())
    }
}

/// The stored state of one instance of the process manager `process`, from the generation
/// that serves it.
pub fn load_instance<S: DeserializeOwned>(
    read: &ReadModelStore,
    process: &str,
    instance: &str,
) -> Result<Option<Instance<S>>, ProjectionError> {
    read.view(process)?.get_json(&keys::instance(instance))
}
