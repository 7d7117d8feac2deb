//! A given/when/then kit for process managers, through the same decision code as the
//! runtime: `given(pm, events).when(event).then_commands([...])`, and deadline expiry with
//! [`Given::when_deadline`].

use std::collections::HashMap;
use std::time::Duration;

use annals_store::{Metadata, Position, RecordedEvent, StreamId, Timestamp};

use super::{DEADLINE_REACHED, Instance, ProcessManager, Step, route, step};

/// Starts a scenario: `pm` has seen `events` (in order).
pub fn given<P: ProcessManager>(pm: P, events: impl Into<Vec<RecordedEvent>>) -> Given<P> {
    let mut given = Given {
        pm,
        instances: HashMap::new(),
        last: None,
    };
    for event in events.into() {
        given.apply(&event);
    }
    given
}

/// A process manager and the instances the given events made.
pub struct Given<P: ProcessManager> {
    pm: P,
    instances: HashMap<String, Instance<P::State>>,
    last: Option<RecordedEvent>,
}

impl<P: ProcessManager> Given<P> {
    fn apply(&mut self, event: &RecordedEvent) -> Option<(String, Step<P::Command>)> {
        let id = route(&self.pm, event)?;
        let instance = self.instances.entry(id.clone()).or_default();
        let step = step(&self.pm, instance, event)
            .unwrap_or_else(|e| panic!("the process manager failed on {}: {e}", event.event_type));
        self.last = Some(event.clone());
        Some((id, step))
    }

    /// The process manager reacts to `event`.
    pub fn when(mut self, event: RecordedEvent) -> Then<P> {
        let outcome = self.apply(&event);
        Then {
            given: self,
            event,
            outcome,
        }
    }

    /// The deadline `name` of `instance` fires (it must be pending).
    pub fn when_deadline(self, instance: &str, name: &str) -> Then<P> {
        let due = *self
            .instances
            .get(instance)
            .and_then(|i| i.deadlines.get(name))
            .unwrap_or_else(|| panic!("no deadline {name:?} is pending for {instance:?}"));
        let position = self.last.as_ref().map_or(1, |e| e.position.0 + 1);
        let stream = format!("{}-{instance}", self.pm.name());
        let event = RecordedEvent {
            position: Position(position),
            stream_id: StreamId::new(stream).expect("instance ids make valid streams"),
            stream_version: 1,
            event_id: uuid::Uuid::from_u128(u128::from(position)),
            event_type: DEADLINE_REACHED.to_string(),
            schema_version: 1,
            recorded_at: due,
            metadata: Metadata::default(),
            payload: serde_json::to_vec(&serde_json::json!({
                "deadline": name,
                "due_micros": due.0,
            }))
            .expect("JSON encodes"),
            prev_hash: [0; 32],
            hash: [0; 32],
            removed: false,
        };
        self.when(event)
    }
}

/// What the process manager did about the `when` event.
pub struct Then<P: ProcessManager> {
    given: Given<P>,
    event: RecordedEvent,
    outcome: Option<(String, Step<P::Command>)>,
}

impl<P: ProcessManager> Then<P> {
    /// Asserts the commands it decided, in order.
    pub fn then_commands(self, expected: impl Into<Vec<P::Command>>) -> Self {
        let decided = self
            .outcome
            .as_ref()
            .map(|(_, s)| s.commands.clone())
            .unwrap_or_default();
        assert_eq!(
            decided,
            expected.into(),
            "commands decided on {}",
            self.event.event_type
        );
        self
    }

    /// Asserts that it ignored the event (no instance, or nothing decided).
    pub fn then_nothing(self) -> Self {
        if let Some((_, step)) = &self.outcome {
            assert!(
                step.commands.is_empty() && step.set.is_empty(),
                "expected nothing on {}, got {step:?}",
                self.event.event_type
            );
        }
        self
    }

    /// Asserts that the event set the deadline `name`, due `after` the event.
    pub fn then_deadline_set(self, name: &str, after: Duration) -> Self {
        let due = Timestamp(self.event.recorded_at.0 + after.as_micros() as i64);
        let set = self.outcome.as_ref().map(|(_, s)| &s.set);
        assert!(
            set.is_some_and(|set| set.iter().any(|d| d.name == name && d.due == due)),
            "deadline {name:?} due {after:?} after {} was not set: {set:?}",
            self.event.event_type
        );
        self
    }

    /// Asserts the names of the deadlines pending for `instance` afterwards.
    pub fn then_pending_deadlines(self, instance: &str, expected: &[&str]) -> Self {
        let pending: Vec<&str> = self
            .given
            .instances
            .get(instance)
            .map(|i| i.deadlines.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(pending, expected, "deadlines pending for {instance}");
        self
    }

    /// Hands the state of `instance` afterwards to `check`.
    pub fn then_state(self, instance: &str, check: impl FnOnce(&P::State)) -> Self {
        let state = &self
            .given
            .instances
            .get(instance)
            .unwrap_or_else(|| panic!("no instance {instance:?}"))
            .state;
        check(state);
        self
    }

    /// Goes on: the scenario so far becomes the given of the next step.
    pub fn and(self) -> Given<P> {
        self.given
    }
}
