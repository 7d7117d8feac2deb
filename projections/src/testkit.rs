//! A given/then kit for projections: `given(projection, events).then_read_model(|view| ..)`.
//!
//! The events go through the same code path as a worker's batch (upcasting, handler,
//! one committed batch) into a throw-away read-model database.

use std::sync::Arc;

use annals_store::{Metadata, Position, RecordedEvent, StreamId, Timestamp, Upcasters};

use crate::projection::Projection;
use crate::runtime::{RuntimeOptions, apply_events};
use crate::storage::{ReadModelStore, ReadView};

/// A deterministic event id from a position, so test read models are reproducible.
fn event_id(position: u64) -> uuid::Uuid {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&position.to_be_bytes());
    uuid::Uuid::from_bytes(id)
}

/// A recorded event for tests: the next position, the stream's next version, a JSON
/// payload at schema version 1.
#[derive(Default)]
pub struct EventLog {
    events: Vec<RecordedEvent>,
}

impl EventLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an event at schema version 1.
    pub fn event(self, stream: &str, event_type: &str, payload: serde_json::Value) -> Self {
        self.event_v(stream, event_type, 1, payload)
    }

    /// Appends an event at the given schema version.
    pub fn event_v(
        mut self,
        stream: &str,
        event_type: &str,
        schema_version: u16,
        payload: serde_json::Value,
    ) -> Self {
        let position = Position(self.events.len() as u64 + 1);
        let stream_version = self
            .events
            .iter()
            .filter(|e| e.stream_id.as_str() == stream)
            .count() as u64
            + 1;
        self.events.push(RecordedEvent {
            position,
            stream_id: StreamId::new(stream).expect("test stream ids are valid"),
            stream_version,
            event_id: event_id(position.0),
            event_type: event_type.to_string(),
            schema_version,
            recorded_at: Timestamp(1_700_000_000_000_000 + position.0 as i64),
            metadata: Metadata::default(),
            payload: serde_json::to_vec(&payload).expect("JSON encodes"),
            prev_hash: [0; 32],
            hash: [0; 32],
            removed: false,
        });
        self
    }

    /// The events so far.
    pub fn into_events(self) -> Vec<RecordedEvent> {
        self.events
    }
}

/// Starts a scenario: `projection` will be given `events`.
pub fn given<P: Projection>(projection: P, events: impl Into<Vec<RecordedEvent>>) -> Given<P> {
    Given {
        projection,
        events: events.into(),
        upcasters: Arc::new(Upcasters::new()),
    }
}

/// A projection and the events it will be given.
pub struct Given<P> {
    projection: P,
    events: Vec<RecordedEvent>,
    upcasters: Arc<Upcasters>,
}

impl<P: Projection> Given<P> {
    /// Runs the events through these upcasters first, as the runtime does.
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Applies the events in one batch and hands the resulting read model to `check`.
    /// Panics (fails the test) if the batch could not be written or an event was parked.
    pub fn then_read_model(self, check: impl FnOnce(&ReadView<'_>)) {
        let name = self.projection.name().to_string();
        self.then_store(|read| check(&read.view(&name).expect("projection is active")));
    }

    /// Like [`Self::then_read_model`], handing over the whole read-model database (for
    /// query layers built on [`ReadModelStore`]).
    pub fn then_store(self, check: impl FnOnce(&Arc<ReadModelStore>)) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let read = ReadModelStore::open(dir.path()).expect("read-model database opens");
        let name = self.projection.name().to_string();
        read.set_active(&name, 1);
        let through = self.events.last().map_or(Position::ZERO, |e| e.position);
        let options = RuntimeOptions {
            max_attempts: 1,
            ..RuntimeOptions::default()
        };
        let applied = apply_events(
            &read,
            &self.projection,
            1,
            self.events,
            through,
            &self.upcasters,
            &options,
        )
        .expect("the batch commits");
        if let Some(error) = applied.last_error {
            panic!("an event was not applied: {error}");
        }
        check(&Arc::new(read));
    }
}

/// One error of every [`crate::ProjectionError`] variant, with details an API must not
/// show (paths, RocksDB's and serde's messages), for tests that walk every error type.
///
/// The list is complete: [`projection_error_variant`] matches every variant without a
/// wildcard, and a test of this crate checks that the list covers each of its arms.
pub fn one_of_each_projection_error() -> Vec<crate::ProjectionError> {
    use crate::ProjectionError as E;
    let storage = match rocksdb::DB::open_default("/dev/null/annals-read") {
        Ok(_) => panic!("a database opened under /dev/null"),
        Err(error) => error,
    };
    let json = serde_json::from_str::<serde_json::Value>("{secret").expect_err("not JSON");
    vec![
        E::UnknownProjection {
            name: "nope".into(),
        },
        E::InvalidName {
            name: "Bad Name".into(),
        },
        E::DuplicateProjection { name: "a".into() },
        E::StaleRead {
            name: "orders".into(),
            position: Position(10),
            checkpoint: Position(5),
            timeout: std::time::Duration::from_millis(50),
        },
        E::InvalidState {
            name: "orders".into(),
            reason: "a rebuild is already running".into(),
        },
        E::Corruption {
            what: "checkpoint of orders at /srv/annals/secret-dir/read".into(),
            reason: "8 bytes expected".into(),
        },
        E::UnsupportedFormat {
            found: 9,
            supported: 1,
        },
        E::Locked {
            path: "/srv/annals/secret-dir/read".into(),
        },
        E::Store(annals_store::StoreError::Closed),
        E::Storage(storage),
        E::Json(json),
        E::Closed,
    ]
}

/// The index of `error`'s variant among [`crate::ProjectionError`]'s, and how many there are.
pub fn projection_error_variant(error: &crate::ProjectionError) -> (usize, usize) {
    use crate::ProjectionError as E;
    let index = match error {
        E::UnknownProjection { .. } => 0,
        E::InvalidName { .. } => 1,
        E::DuplicateProjection { .. } => 2,
        E::StaleRead { .. } => 3,
        E::InvalidState { .. } => 4,
        E::Corruption { .. } => 5,
        E::UnsupportedFormat { .. } => 6,
        E::Locked { .. } => 7,
        E::Store(_) => 8,
        E::Storage(_) => 9,
        E::Json(_) => 10,
        E::Closed => 11,
    };
    (index, 12)
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn one_of_each_projection_error_covers_every_variant() {
        let errors = one_of_each_projection_error();
        let mut seen: Vec<usize> = errors
            .iter()
            .map(|e| projection_error_variant(e).0)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        let total = projection_error_variant(&errors[0]).1;
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
    }
}
