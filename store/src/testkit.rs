//! A given/when/then kit for aggregates (feature `test-utils`).
//!
//! ```text
//! given::<Product>(vec![registered(), received(5)])
//!     .when(ProductCommand::Reserve { order_id: "o-1".into(), quantity: 9 })
//!     .then_expect_error_code("INSUFFICIENT_STOCK");
//! ```
//!
//! `tests/domain_rules.rs` of the `annals` package uses it for every rule of the domain.
//!
//! [`overwrite_record`] damages a closed log on disk, for the tests of what a reader and
//! the API edge do with a record that no longer decodes.

use std::fmt::Debug;
use std::path::Path;

use crate::aggregate::Aggregate;
use crate::error::{DomainError, StoreError};
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
    Given { state }
}

/// Starts a test from an aggregate that does not exist yet.
pub fn given_no_history<A: Aggregate>() -> Given<A> {
    given(Vec::new())
}

/// The aggregate rebuilt from the given events.
#[derive(Debug)]
pub struct Given<A> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    /// Runs the command against the rebuilt state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.handle(command);
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

    /// Asserts the command was refused with an error of this code.
    #[track_caller]
    pub fn then_expect_error_code(self, code: &str) {
        match self.result {
            Ok(events) => panic!("expected error {code}, got events {events:?}"),
            Err(error) => assert_eq!(error.code(), code, "unexpected error {error:?}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        EventStore, ExpectedVersion, NewEvent, ReadFilter, RocksEventStore, StoreOptions, StreamId,
    };

    #[tokio::test]
    async fn an_overwritten_record_no_longer_decodes_and_its_neighbours_do() {
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
        overwrite_record(dir.path(), Position(1), b"\x01garbage").unwrap();
        let store = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
        let damaged = store.read_all(Position(1), 1, &ReadFilter::all()).await;
        assert!(
            matches!(damaged, Err(StoreError::Decode { .. })),
            "{damaged:?}"
        );
        let page = store
            .read_all(Position(2), 1, &ReadFilter::all())
            .await
            .unwrap();
        assert_eq!(page.events.len(), 1);
        store.close();
    }
}
