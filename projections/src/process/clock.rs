//! The time a dispatcher fires deadlines and retries by: the system's, or one a test
//! moves by hand.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use annals_store::Timestamp;
use tokio::sync::watch;

/// A source of the current time that can be waited on.
pub trait Clock: Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Completes once [`Self::now`] has reached `at`.
    fn sleep_until(&self, at: Timestamp) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let micros = at.0.saturating_sub(Timestamp::now().0).max(0);
        Box::pin(tokio::time::sleep(Duration::from_micros(micros as u64)))
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it: deadlines and
/// retry backoffs in tests fire exactly when the test says.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<Timestamp>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn at(start: Timestamp) -> Self {
        Self {
            now: watch::Sender::new(start),
        }
    }

    /// A clock standing at the current wall-clock time (events are recorded with the
    /// wall clock, and deadlines are due relative to them).
    pub fn starting_now() -> Self {
        Self::at(Timestamp::now())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.now
            .send_modify(|now| *now = Timestamp(now.0.saturating_add(micros)));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: Timestamp) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock, which outlives this future.
            let _ = rx.wait_for(|now| *now >= at).await;
        })
    }
}
