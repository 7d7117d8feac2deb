//! A given/when/then kit for aggregates (feature `test-utils`).
//!
//! ```text
//! given::<Product>(vec![registered(), received(5)])
//!     .when(ProductCommand::Reserve { order_id: "o-1".into(), quantity: 9 })
//!     .then_expect_error_code("INSUFFICIENT_STOCK");
//! ```
//!
//! `tests/domain_rules.rs` of the `annals` package uses it for every rule of the domain.

use std::fmt::Debug;

use crate::aggregate::Aggregate;
use crate::error::DomainError;

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
