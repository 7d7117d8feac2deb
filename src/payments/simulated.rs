//! A payment gateway in memory, for the default server, the tests and the benchmarks:
//! configurable latency, decline rate and outage windows, idempotent by key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{Authorization, GatewayError, GatewayFuture, PaymentGateway};

/// A stretch of time, from the gateway's start, during which it answers "down".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutageWindow {
    /// When it starts, after the gateway's start.
    pub after: Duration,
    /// How long it lasts.
    pub length: Duration,
}

/// How the simulated gateway behaves.
#[derive(Clone, Debug, Default)]
pub struct GatewayOptions {
    /// How long every answer takes. Default 0.
    pub latency: Duration,
    /// The share of authorizations declined, 0.0 to 1.0. Which payments are declined
    /// depends on the key alone, so a repeated call gets the same answer. Default 0.
    pub decline_rate: f64,
    /// When the gateway is down.
    pub outages: Vec<OutageWindow>,
}

/// How the gateway answers right now (tests switch it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayMode {
    /// It answers.
    Up,
    /// It answers that it is down.
    Down,
    /// It never answers.
    Silent,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Capture calls answered per key (money moves on the first; the others are answered
    /// with the same reference, as the gateway is idempotent by key).
    captures: HashMap<String, u64>,
    /// Refund calls answered per key, likewise.
    refunds: HashMap<String, u64>,
    /// Calls answered, by operation.
    answered: u64,
}

/// The simulated gateway.
#[derive(Debug)]
pub struct SimulatedGateway {
    options: GatewayOptions,
    started: Instant,
    mode: Mutex<GatewayMode>,
    ledger: Mutex<Ledger>,
}

impl SimulatedGateway {
    /// A gateway that starts now.
    pub fn new(options: GatewayOptions) -> Self {
        Self {
            options,
            started: Instant::now(),
            mode: Mutex::new(GatewayMode::Up),
            ledger: Mutex::default(),
        }
    }

    /// Switches how it answers from now on.
    pub fn set_mode(&self, mode: GatewayMode) {
        *self.mode.lock().expect("mode lock") = mode;
    }

    /// How many capture calls (`capture == true`) or refund calls were answered for this
    /// key. Money moves on the first only.
    pub fn calls(&self, key: &str, capture: bool) -> u64 {
        let ledger = self.ledger.lock().expect("ledger lock");
        let map = if capture {
            &ledger.captures
        } else {
            &ledger.refunds
        };
        map.get(key).copied().unwrap_or(0)
    }

    /// Calls it answered (of any kind, including "down").
    pub fn answered(&self) -> u64 {
        self.ledger.lock().expect("ledger lock").answered
    }

    /// Whether this key's authorization is declined.
    pub fn declines(&self, key: &str) -> bool {
        let digest = Sha256::digest(key.as_bytes());
        let draw = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 1_000_000;
        (draw as f64) < self.options.decline_rate.clamp(0.0, 1.0) * 1_000_000.0
    }

    fn mode_now(&self) -> GatewayMode {
        let mode = *self.mode.lock().expect("mode lock");
        if mode != GatewayMode::Up {
            return mode;
        }
        let elapsed = self.started.elapsed();
        let down = self
            .options
            .outages
            .iter()
            .any(|w| elapsed >= w.after && elapsed < w.after + w.length);
        if down {
            GatewayMode::Down
        } else {
            GatewayMode::Up
        }
    }

    /// Waits the latency, then answers by the mode.
    async fn answer<T>(&self, answer: impl FnOnce(&mut Ledger) -> T) -> Result<T, GatewayError> {
        if !self.options.latency.is_zero() {
            tokio::time::sleep(self.options.latency).await;
        }
        let mode = self.mode_now();
        if mode == GatewayMode::Silent {
            std::future::pending::<()>().await;
        }
        let mut ledger = self.ledger.lock().expect("ledger lock");
        ledger.answered += 1;
        match mode {
            GatewayMode::Down => Err(GatewayError::Down("simulated outage".into())),
            _ => Ok(answer(&mut ledger)),
        }
    }
}

impl PaymentGateway for SimulatedGateway {
    fn authorize(&self, key: &str, _amount_cents: u64) -> GatewayFuture<'_, Authorization> {
        let key = key.to_string();
        Box::pin(async move {
            let declined = self.declines(&key);
            self.answer(|_| {
                if declined {
                    Authorization::Declined {
                        reason: "card declined (simulated)".into(),
                    }
                } else {
                    Authorization::Approved {
                        reference: format!("auth-{key}"),
                    }
                }
            })
            .await
        })
    }

    fn capture(&self, key: &str, _amount_cents: u64) -> GatewayFuture<'_, String> {
        let key = key.to_string();
        Box::pin(async move {
            self.answer(|ledger| {
                *ledger.captures.entry(key.clone()).or_default() += 1;
                format!("capture-{key}")
            })
            .await
        })
    }

    fn refund(&self, key: &str, _amount_cents: u64) -> GatewayFuture<'_, String> {
        let key = key.to_string();
        Box::pin(async move {
            self.answer(|ledger| {
                *ledger.refunds.entry(key.clone()).or_default() += 1;
                format!("refund-{key}")
            })
            .await
        })
    }
}
