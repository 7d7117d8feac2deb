//! Upcasters: functions that turn an old event payload into the next schema version.
//!
//! Events are stored as they were written, with their schema version. Every read path that
//! hands out typed events runs the payload through the registered chain (`v1 → v2 → …`)
//! first, so `Aggregate::apply` and projections only ever see the current shape.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::error::StoreError;
use crate::types::{Position, RecordedEvent};

/// One step: the payload of `event_type` at version `from` becomes version `from + 1`.
pub type UpcastFn = dyn Fn(Value) -> Result<Value, String> + Send + Sync;

/// The registry of upcasters, keyed by event type and then source version, so that a
/// lookup borrows the event type instead of allocating a key for every event read.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<String, HashMap<u16, Arc<UpcastFn>>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> = self
            .steps
            .iter()
            .flat_map(|(t, by_version)| by_version.keys().map(move |v| (t, *v)))
            .collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step `event_type` v`from` → v`from + 1`.
    pub fn register(
        mut self,
        event_type: &str,
        from: u16,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps
            .entry(event_type.to_string())
            .or_default()
            .insert(from, Arc::new(step));
        self
    }

    /// Whether any step is registered for this event type and version.
    pub fn has_step(&self, event_type: &str, version: u16) -> bool {
        self.step(event_type, version).is_some()
    }

    fn step(&self, event_type: &str, version: u16) -> Option<&Arc<UpcastFn>> {
        self.steps.get(event_type)?.get(&version)
    }

    /// Runs the chain on a JSON payload: returns the payload at the newest version reachable
    /// and that version.
    pub fn upcast_value(
        &self,
        event_type: &str,
        mut version: u16,
        mut payload: Value,
    ) -> Result<(Value, u16), String> {
        // The chain is finite: every step raises the version, which is a u16.
        while let Some(step) = self.step(event_type, version) {
            payload = step(payload)?;
            version = version
                .checked_add(1)
                .ok_or_else(|| "schema version overflow".to_string())?;
        }
        Ok((payload, version))
    }

    /// Parses a recorded event's payload as JSON and upcasts it.
    pub fn upcast(&self, event: &RecordedEvent) -> Result<(Value, u16), StoreError> {
        let decode_error = |reason: String| StoreError::Decode {
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            position: event.position,
            reason,
        };
        let payload: Value = serde_json::from_slice(&event.payload)
            .map_err(|e| decode_error(format!("payload is not JSON: {e}")))?;
        self.upcast_value(&event.event_type, event.schema_version, payload)
            .map_err(decode_error)
    }

    /// Upcasts a recorded event in place (payload bytes and schema version), for read
    /// paths that hand out `RecordedEvent`s rather than typed events.
    pub fn upcast_recorded(&self, event: &mut RecordedEvent) -> Result<(), StoreError> {
        if !self.has_step(&event.event_type, event.schema_version) {
            return Ok(());
        }
        let (payload, version) = self.upcast(event)?;
        event.payload = serde_json::to_vec(&payload).map_err(|e| StoreError::Decode {
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            position: event.position,
            reason: e.to_string(),
        })?;
        event.schema_version = version;
        Ok(())
    }
}

/// Helper for decode errors that are not tied to a stored position (tests, fixtures).
pub(crate) fn decode_error(event_type: &str, version: u16, reason: impl ToString) -> StoreError {
    StoreError::Decode {
        event_type: event_type.to_string(),
        schema_version: version,
        position: Position::ZERO,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runs_the_chain_in_order() {
        let up = Upcasters::new()
            .register("OrderPlaced", 1, |mut v| {
                v["total_cents"] = json!(0);
                Ok(v)
            })
            .register("OrderPlaced", 2, |mut v| {
                v["currency"] = json!("EUR");
                Ok(v)
            });
        let (v, version) = up.upcast_value("OrderPlaced", 1, json!({})).unwrap();
        assert_eq!(version, 3);
        assert_eq!(v, json!({"total_cents": 0, "currency": "EUR"}));
        let (v, version) = up.upcast_value("OrderPlaced", 3, json!({"a": 1})).unwrap();
        assert_eq!((v, version), (json!({"a": 1}), 3));
        let (_, version) = up.upcast_value("Other", 1, json!({})).unwrap();
        assert_eq!(version, 1);
    }

    #[test]
    fn failing_step_is_an_error() {
        let up = Upcasters::new().register("E", 1, |_| Err("no".into()));
        assert_eq!(up.upcast_value("E", 1, json!({})), Err("no".to_string()));
    }
}
