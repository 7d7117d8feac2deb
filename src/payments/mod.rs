//! The payment gateway port, the simulated gateway the server uses by default, and the
//! guard every call goes through: a timeout and a circuit breaker.
//!
//! The gateway is the one remote service of the checkout. It is idempotent by key: the
//! checkout calls it with the payment's id (plus the operation), so a call repeated after
//! a crash or a timeout answers as the first one did and moves no money twice.

mod simulated;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use failsafe::failure_policy::{ConsecutiveFailures, consecutive_failures};
use failsafe::{Config, StateMachine, backoff};

pub use simulated::{GatewayMode, GatewayOptions, OutageWindow, SimulatedGateway};

/// A boxed future of a gateway call.
pub type GatewayFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>;

/// What the gateway answered to an authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authorization {
    /// The amount is reserved on the customer's means of payment.
    Approved {
        /// The gateway's reference.
        reference: String,
    },
    /// The gateway refused.
    Declined {
        /// Its reason.
        reason: String,
    },
}

/// Why a gateway call has no answer. Every variant may succeed later.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No answer within the timeout.
    #[error("the payment gateway did not answer within {0:?}")]
    Timeout(Duration),
    /// The gateway answered that it cannot serve now.
    #[error("the payment gateway is down: {0}")]
    Down(String),
    /// The circuit breaker is open: the call was not made.
    #[error("the payment gateway's circuit is open after repeated failures")]
    CircuitOpen,
}

/// A payment gateway. Every operation is idempotent by `key`.
pub trait PaymentGateway: Send + Sync + std::fmt::Debug + 'static {
    /// Reserves `amount_cents` for the payment `key`.
    fn authorize(&self, key: &str, amount_cents: u64) -> GatewayFuture<'_, Authorization>;
    /// Takes the authorized amount; returns the gateway's reference.
    fn capture(&self, key: &str, amount_cents: u64) -> GatewayFuture<'_, String>;
    /// Gives the amount back (voids an authorization that was not captured).
    fn refund(&self, key: &str, amount_cents: u64) -> GatewayFuture<'_, String>;
}

/// The circuit's state, as `/ready` and `/metrics` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls are refused without being made.
    Open,
    /// The open period is over: calls go through again, and the first answer decides
    /// (a success closes the circuit, a failure opens it for another period).
    HalfOpen,
}

impl CircuitState {
    /// The name shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// The state as a number for a gauge (0 closed, 1 half-open, 2 open).
    pub fn as_gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

/// How the guard treats the gateway.
#[derive(Clone, Debug)]
pub struct GuardOptions {
    /// How long a call may take. Default 2 s.
    pub timeout: Duration,
    /// Consecutive failures (timeouts, outages) that open the circuit. Default 5.
    pub failures_to_open: u32,
    /// How long the circuit stays open before a probe. Default 5 s.
    pub open_for: Duration,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            failures_to_open: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

/// Counts what the guard saw; the breaker's state transitions land here.
#[derive(Debug, Default)]
struct Observed {
    state: AtomicU8,
    calls: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
}

/// The breaker's instrument: keeps the state where `/ready` and `/metrics` read it.
#[derive(Clone, Debug)]
struct Observer(Arc<Observed>);

impl failsafe::Instrument for Observer {
    fn on_call_rejected(&self) {
        self.0.rejected.fetch_add(1, Ordering::Relaxed);
    }
    fn on_open(&self) {
        self.0.state.store(2, Ordering::Relaxed);
        tracing::warn!("payment gateway circuit opened");
    }
    fn on_half_open(&self) {
        self.0.state.store(1, Ordering::Relaxed);
    }
    fn on_closed(&self) {
        if self.0.state.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("payment gateway circuit closed");
        }
    }
}

type Breaker = StateMachine<ConsecutiveFailures<backoff::Constant>, Observer>;

/// A gateway behind a timeout and a circuit breaker: after `failures_to_open` failures in
/// a row calls fail at once with [`GatewayError::CircuitOpen`]; after `open_for` the
/// circuit is half-open and calls go through again, the first success closing it and a
/// failure opening it for another period. A decline is an answer, not a failure. The
/// state the guard reports moves on calls: an open circuit shows as open until the first
/// call after its period.
#[derive(Clone, Debug)]
pub struct GuardedGateway {
    inner: Arc<dyn PaymentGateway>,
    breaker: Breaker,
    observed: Arc<Observed>,
    timeout: Duration,
}

/// What the guard saw, for `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayStats {
    /// The circuit's state.
    pub state: CircuitState,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed (timeouts, outages).
    pub failures: u64,
    /// Calls refused by the open circuit.
    pub rejected: u64,
}

impl GuardedGateway {
    /// Guards `inner`.
    pub fn new(inner: Arc<dyn PaymentGateway>, options: GuardOptions) -> Self {
        let observed = Arc::new(Observed::default());
        let policy = consecutive_failures(
            options.failures_to_open.max(1),
            backoff::constant(options.open_for),
        );
        let breaker = Config::new()
            .failure_policy(policy)
            .instrument(Observer(observed.clone()))
            .build();
        Self {
            inner,
            breaker,
            observed,
            timeout: options.timeout,
        }
    }

    /// The simulated gateway with these options, guarded with the defaults.
    pub fn simulated(options: GatewayOptions) -> Self {
        Self::new(
            Arc::new(SimulatedGateway::new(options)),
            GuardOptions::default(),
        )
    }

    /// The circuit's state and the counts.
    pub fn stats(&self) -> GatewayStats {
        let o = &self.observed;
        GatewayStats {
            state: match o.state.load(Ordering::Relaxed) {
                0 => CircuitState::Closed,
                1 => CircuitState::HalfOpen,
                _ => CircuitState::Open,
            },
            calls: o.calls.load(Ordering::Relaxed),
            failures: o.failures.load(Ordering::Relaxed),
            rejected: o.rejected.load(Ordering::Relaxed),
        }
    }

    async fn guard<T>(&self, call: GatewayFuture<'_, T>) -> Result<T, GatewayError> {
        if !self.breaker.is_call_permitted() {
            return Err(GatewayError::CircuitOpen);
        }
        self.observed.calls.fetch_add(1, Ordering::Relaxed);
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => answer,
            Err(_) => Err(GatewayError::Timeout(self.timeout)),
        };
        match &answer {
            Ok(_) => self.breaker.on_success(),
            Err(_) => {
                self.observed.failures.fetch_add(1, Ordering::Relaxed);
                self.breaker.on_error();
            }
        }
        answer
    }

    /// [`PaymentGateway::authorize`] through the guard.
    pub async fn authorize(
        &self,
        key: &str,
        amount_cents: u64,
    ) -> Result<Authorization, GatewayError> {
        self.guard(self.inner.authorize(key, amount_cents)).await
    }

    /// [`PaymentGateway::capture`] through the guard.
    pub async fn capture(&self, key: &str, amount_cents: u64) -> Result<String, GatewayError> {
        self.guard(self.inner.capture(key, amount_cents)).await
    }

    /// [`PaymentGateway::refund`] through the guard.
    pub async fn refund(&self, key: &str, amount_cents: u64) -> Result<String, GatewayError> {
        self.guard(self.inner.refund(key, amount_cents)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(gateway: &Arc<SimulatedGateway>) -> GuardedGateway {
        GuardedGateway::new(
            gateway.clone(),
            GuardOptions {
                timeout: Duration::from_millis(50),
                failures_to_open: 2,
                open_for: Duration::from_millis(200),
            },
        )
    }

    #[tokio::test]
    async fn a_silent_gateway_times_out_and_opens_the_circuit_until_a_probe_succeeds() {
        let gateway = Arc::new(SimulatedGateway::new(GatewayOptions::default()));
        gateway.set_mode(GatewayMode::Silent);
        let guard = guarded(&gateway);
        for _ in 0..2 {
            let answer = guard.authorize("p", 1).await;
            assert_eq!(
                answer,
                Err(GatewayError::Timeout(Duration::from_millis(50)))
            );
        }
        assert_eq!(guard.stats().state, CircuitState::Open);
        assert_eq!(
            guard.authorize("p", 1).await,
            Err(GatewayError::CircuitOpen)
        );
        assert_eq!(guard.stats().rejected, 1);

        gateway.set_mode(GatewayMode::Up);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let answer = guard.authorize("p", 1).await;
        assert!(
            matches!(answer, Ok(Authorization::Approved { .. })),
            "{answer:?}"
        );
        assert_eq!(guard.stats().state, CircuitState::Closed);
    }

    #[tokio::test]
    async fn a_decline_is_an_answer_and_the_same_for_the_same_key() {
        let gateway = Arc::new(SimulatedGateway::new(GatewayOptions {
            decline_rate: 0.5,
            ..GatewayOptions::default()
        }));
        let guard = guarded(&gateway);
        let mut declined = 0;
        for i in 0..200 {
            let key = format!("k{i}");
            let first = guard.authorize(&key, 1).await.unwrap();
            assert_eq!(guard.authorize(&key, 1).await.unwrap(), first);
            declined += usize::from(matches!(first, Authorization::Declined { .. }));
        }
        assert!((60..140).contains(&declined), "{declined} of 200 declined");
        assert_eq!(guard.stats().state, CircuitState::Closed);
        assert_eq!(guard.stats().failures, 0);
    }
}
