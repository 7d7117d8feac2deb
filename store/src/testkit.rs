//! A given/when/then kit for aggregates (feature `test-utils`).
//!
//! ```text
//! given::<Product>(vec![registered(), received(5)])
//!     .when(ProductCommand::Reserve { order_id: "o-1".into(), quantity: 9 })
//!     .then_expect_error_matching(|e| matches!(e, CommerceError::InsufficientStock { .. }));
//! ```
//!
//! `tests/domain_rules.rs` of the `annals` package uses it for every rule of the domain.
//!
//! [`overwrite_record`] damages a closed log on disk, for the tests of what a reader and
//! the API edge do with a record that no longer decodes.

pub mod conformance;

use std::fmt::Debug;
use std::path::Path;

use crate::aggregate::Aggregate;
use crate::error::StoreError;
use crate::keys::{self, CF_EVENTS};
use crate::rocks::{cf, open_writable};
use crate::store::Durability;
use crate::types::Position;

/// Replaces the stored bytes of the record at `position` in the closed log in `log_dir`
/// with `bytes`, bypassing every check of the store.
pub fn overwrite_record(
    log_dir: &Path,
    position: Position,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let db = open_writable(log_dir, Durability::Fsync)?;
    db.put_cf(cf(&db, CF_EVENTS), keys::position_key(position), bytes)?;
    Ok(())
}

/// Starts a test from the aggregate's history.
pub fn given<A: Aggregate>(events: Vec<A::Event>) -> Given<A> {
    let mut state = A::default();
    for event in &events {
        state.apply(event);
    }
    Given {
        id: "under-test".to_string(),
        state,
    }
}

/// Starts a test from an aggregate that does not exist yet.
pub fn given_no_history<A: Aggregate>() -> Given<A> {
    given(Vec::new())
}

/// The aggregate rebuilt from the given events.
#[derive(Debug)]
pub struct Given<A> {
    id: String,
    state: A,
}

impl<A: Aggregate> Given<A> {
    /// The aggregate's id, which `handle` receives (`under-test` unless set here).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Runs the command against the rebuilt state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.handle(&self.id, command);
        Then {
            state: self.state,
            result,
        }
    }

    /// The rebuilt state, to check `apply`.
    pub fn state(&self) -> &A {
        &self.state
    }
}

/// The decision, ready to be checked.
pub struct Then<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Then<A>
where
    A::Event: PartialEq,
{
    /// Asserts the command produced exactly these events, and returns the state after them.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> A {
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "unexpected events");
                let mut state = self.state;
                for event in &events {
                    state.apply(event);
                }
                state
            }
            Err(error) => panic!("expected events {expected:?}, got error {error:?}"),
        }
    }

    /// Asserts the command was refused with this error.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
            Err(error) => assert_eq!(error, expected, "unexpected error"),
        }
    }

    /// Asserts the command was refused with an error for which `expected` holds (its
    /// variant, say, when the exact message does not matter); returns the error.
    #[track_caller]
    pub fn then_expect_error_matching(self, expected: impl FnOnce(&A::Error) -> bool) -> A::Error {
        match self.result {
            Ok(events) => panic!("expected an error, got events {events:?}"),
            Err(error) => {
                assert!(expected(&error), "unexpected error {error:?}");
                error
            }
        }
    }

    /// The raw decision, for checks the helpers do not cover.
    pub fn result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}

impl<A: Aggregate> Debug for Then<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Then")
            .field("result", &self.result.as_ref().map(|e| e.len()))
            .finish()
    }
}

/// One error of every [`StoreError`] variant, with details an API must not show (paths,
/// positions, RocksDB's own message), for tests that walk every error type.
///
/// The list is complete: [`store_error_variant`] matches every variant without a
/// wildcard, and a test of this crate checks that the list covers each of its arms, so a
/// new variant fails the build or that test until it is added here.
pub fn one_of_each_store_error() -> Vec<crate::StoreError> {
    use crate::StoreError as E;
    use crate::types::{ExpectedVersion, Position, StreamId};
    let stream = StreamId::new("order-7").expect("a valid stream id");
    // A real RocksDB error: a database cannot be opened under a file.
    let storage = match rocksdb::DB::open_default("/dev/null/annals-log") {
        Ok(_) => panic!("a database opened under /dev/null"),
        Err(error) => error,
    };
    vec![
        E::WrongExpectedVersion {
            stream: stream.clone(),
            expected: ExpectedVersion::Exact(3),
            actual: 5,
        },
        E::IdempotencyConflict {
            event_id: uuid::Uuid::nil(),
            existing: Position(42),
        },
        E::InvalidStreamId {
            stream: String::new(),
            reason: "must not be empty",
        },
        E::InvalidEventType {
            event_type: "bad type".into(),
        },
        E::PayloadTooLarge {
            size: 2_000_000,
            limit: 1_048_576,
        },
        E::TooManyEvents {
            count: 1001,
            limit: 1000,
        },
        E::EmptyAppend,
        E::DuplicateStream { stream },
        E::Corruption {
            position: Position(987_654),
        },
        E::UnsupportedFormat {
            found: 99,
            supported: 1,
        },
        E::Locked {
            path: "/srv/annals/secret-dir/log".into(),
        },
        E::Storage(storage),
        E::Io {
            what: "creating /srv/annals/secret-dir/log".into(),
            source: std::io::Error::other("No space left on device"),
        },
        E::ReadOnly {
            path: "/srv/annals/secret-dir/log".into(),
        },
        E::Closed,
        E::Decode {
            event_type: "OrderPlaced".into(),
            schema_version: 7,
            position: Position(987_654),
            reason: "missing field `secret_internal_field`".into(),
        },
        E::NotWriter,
        E::Unavailable {
            reason: "no responders on annals.secret.append".into(),
        },
        E::ReplicaDiverged {
            sequence: 77,
            reason: "position 12 follows head 9 at /srv/annals/secret-dir".into(),
        },
        E::Unsupported {
            operation: "delete a stream",
            reason: "a replica takes only the log's groups".into(),
        },
        E::KeyStore {
            reason: "a key in /srv/annals/secret-dir/keys is not 32 bytes".into(),
        },
    ]
}

/// The index of `error`'s variant among [`StoreError`]'s, and how many there are.
pub fn store_error_variant(error: &crate::StoreError) -> (usize, usize) {
    use crate::StoreError as E;
    let index = match error {
        E::WrongExpectedVersion { .. } => 0,
        E::IdempotencyConflict { .. } => 1,
        E::InvalidStreamId { .. } => 2,
        E::InvalidEventType { .. } => 3,
        E::PayloadTooLarge { .. } => 4,
        E::TooManyEvents { .. } => 5,
        E::EmptyAppend => 6,
        E::DuplicateStream { .. } => 7,
        E::Corruption { .. } => 8,
        E::UnsupportedFormat { .. } => 9,
        E::Locked { .. } => 10,
        E::Storage(_) => 11,
        E::Io { .. } => 12,
        E::ReadOnly { .. } => 13,
        E::Closed => 14,
        E::Decode { .. } => 15,
        E::NotWriter => 16,
        E::Unavailable { .. } => 17,
        E::ReplicaDiverged { .. } => 18,
        E::Unsupported { .. } => 19,
        E::KeyStore { .. } => 20,
    };
    (index, 21)
}

/// A replicated log in memory, for replicas in tests: groups in order, with the fencing of
/// a real one (a group must name the log's last group as the one it follows).
#[derive(Clone, Debug, Default)]
pub struct MemoryLog {
    groups: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A replicator that appends to this log.
    pub fn replicator(&self) -> Box<dyn crate::Replicator> {
        Box::new(self.clone())
    }

    /// The groups from `after + 1` on, with their sequences.
    pub fn groups_after(&self, after: u64) -> Vec<(u64, Vec<u8>)> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .iter()
            .enumerate()
            .skip(after as usize)
            .map(|(i, g)| (i as u64 + 1, g.clone()))
            .collect()
    }

    /// Appends a group as another writer would, without a replica.
    pub fn push(&self, group: Vec<u8>) -> u64 {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.push(group);
        groups.len() as u64
    }

    /// How many groups the log holds.
    pub fn len(&self) -> u64 {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// Whether the log holds no group.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::Replicator for MemoryLog {
    fn publish(&mut self, group: crate::ReplicaGroup<'_>, ack: crate::replica::Acknowledger) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if groups.len() as u64 != group.after {
            ack.acknowledge(Err(crate::ReplicationError::Fenced));
            return;
        }
        groups.push(group.bytes.to_vec());
        ack.acknowledge(Ok(groups.len() as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        EventStore, ExpectedVersion, NewEvent, ReadFilter, RocksEventStore, StoreOptions, StreamId,
    };

    #[tokio::test]
    async fn an_overwritten_record_reads_as_corruption_and_its_neighbours_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
        for _ in 0..2 {
            let event = NewEvent::json("Noted", &serde_json::json!({}));
            store
                .append(
                    StreamId::new("s-1").unwrap(),
                    ExpectedVersion::Any,
                    vec![event],
                )
                .await
                .unwrap();
        }
        store.close();
        // The lock on the directory goes with the last handle.
        drop(store);
        overwrite_record(dir.path(), Position(1), b"\x01garbage").unwrap();
        let store = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
        let damaged = store.read_all(Position(1), 1, &ReadFilter::all()).await;
        assert!(
            matches!(damaged, Err(StoreError::Corruption { position }) if position == Position(1)),
            "{damaged:?}"
        );
        let page = store
            .read_all(Position(2), 1, &ReadFilter::all())
            .await
            .unwrap();
        assert_eq!(page.events.len(), 1);
        store.close();
    }

    #[test]
    fn one_of_each_store_error_covers_every_variant() {
        let errors = one_of_each_store_error();
        let mut seen: Vec<usize> = errors.iter().map(|e| store_error_variant(e).0).collect();
        seen.sort_unstable();
        seen.dedup();
        let total = store_error_variant(&errors[0]).1;
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
    }
}
