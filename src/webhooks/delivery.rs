//! The [`Deliverer`]: one task per active subscription, POSTing its queue in order.
//!
//! A queued event is removed once the receiver answered 2xx; until then it is retried
//! with exponential backoff and jitter, and after the last attempt it moves to the
//! subscription's dead letters and the next event follows. A crash between a receiver's
//! 2xx and the removal sends the event again: delivery is at least once, and receivers
//! deduplicate by event id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals_projections::process::{ActiveWhen, RetryPolicy};
use annals_projections::{ProjectionError, ProjectionRuntime, ReadModelStore};
use annals_store::{EventStore, Position, SharedStore, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::projection::Subscription;
use super::{EVENT_ID_HEADER, SIGNATURE_HEADER, WEBHOOKS, WebhookKey, keys, sign};

/// Tuning of webhook delivery.
#[derive(Clone, Debug)]
pub struct DelivererOptions {
    /// Attempts per event before it becomes a dead letter, and their backoff. Default: 8
    /// attempts, 500 ms doubling up to 60 s (about four minutes of failures).
    pub retry: RetryPolicy,
    /// How long a receiver may take to answer. Default 10 s.
    pub timeout: Duration,
    /// The longest a subscription's task sleeps without a reason to wake. Default 1 s.
    pub idle: Duration,
    /// When to deliver (default: always); in a cluster, only the writing node delivers.
    pub active_when: Option<ActiveWhen>,
}

impl Default for DelivererOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy {
                max_attempts: 8,
                first_backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(60),
            },
            timeout: Duration::from_secs(10),
            idle: Duration::from_secs(1),
            active_when: None,
        }
    }
}

/// An event a subscription gave up on after its attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The subscription.
    pub webhook: String,
    /// The event's position.
    pub position: u64,
    /// The body that was POSTed.
    pub body: String,
    /// The last failure.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was given up (microseconds since the Unix epoch).
    pub dead_at_micros: i64,
}

/// A subscription's delivery, for operators.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookStatus {
    /// The subscription.
    pub subscription: Subscription,
    /// Events queued, not yet delivered (counted up to 100,000).
    pub pending: u64,
    /// Positions between the oldest undelivered event and the head (0 when none waits).
    pub lag: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Events delivered since the start.
    pub delivered: u64,
    /// Failed attempts since the start.
    pub failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

struct Shared {
    read: Arc<ReadModelStore>,
    runtime: ProjectionRuntime,
    store: SharedStore,
    key: WebhookKey,
    http: reqwest::Client,
    options: DelivererOptions,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
    wake: Notify,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Delivers every subscription's queue; status, dead letters and redrive. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

impl Deliverer {
    /// Starts delivering the queues of the `webhooks` projection, which must run in
    /// `runtime`.
    pub fn start(
        runtime: ProjectionRuntime,
        store: SharedStore,
        key: WebhookKey,
        options: DelivererOptions,
    ) -> Result<Self, ProjectionError> {
        let checkpoint = runtime.subscribe_checkpoint(WEBHOOKS)?;
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| ProjectionError::InvalidState {
                name: WEBHOOKS.into(),
                reason: format!("no HTTP client: {e}"),
            })?;
        let shared = Arc::new(Shared {
            read: runtime.read_models().clone(),
            runtime,
            store,
            key,
            http,
            options,
            counters: Mutex::default(),
            wake: Notify::new(),
            shutdown: watch::Sender::new(false),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(supervise(shared.clone(), checkpoint));
        *shared.task.lock().expect("task lock") = Some(task);
        Ok(Self { shared })
    }

    /// The secret deliveries to subscription `id` are signed with.
    pub fn secret(&self, id: &str) -> String {
        self.shared.key.secret(id)
    }

    /// Wakes every subscription's task (a new subscription, a redrive).
    pub fn wake(&self) {
        self.shared.wake.notify_waiters();
    }

    /// The active subscriptions.
    pub fn subscriptions(&self) -> Result<Vec<Subscription>, ProjectionError> {
        active(&self.shared.read)
    }

    /// Every active subscription's delivery.
    pub fn status(&self) -> Result<Vec<WebhookStatus>, ProjectionError> {
        let view = self.shared.read.view(WEBHOOKS)?;
        let head = self.shared.store.head().0;
        let counters = self.shared.counters.lock().expect("counters lock").clone();
        active(&self.shared.read)?
            .into_iter()
            .map(|subscription| {
                let queued = view.scan(&keys::queue(&subscription.id), None, 100_000)?;
                let lag = queued.first().map_or(0, |(key, _)| {
                    head + 1 - keys::position_of(key).0.min(head + 1)
                });
                let dead = view.scan(&keys::dead(&subscription.id), None, 100_000)?;
                let c = counters.get(&subscription.id).cloned().unwrap_or_default();
                Ok(WebhookStatus {
                    pending: queued.len() as u64,
                    lag,
                    dead_letters: dead.len() as u64,
                    delivered: c.delivered.load(Ordering::Relaxed),
                    failures: c.failures.load(Ordering::Relaxed),
                    last_error: c.last_error.lock().expect("error lock").clone(),
                    subscription,
                })
            })
            .collect()
    }

    /// A subscription's dead letters, oldest first.
    pub fn dead_letters(&self, id: &str) -> Result<Vec<DeadLetter>, ProjectionError> {
        let view = self.shared.read.view(WEBHOOKS)?;
        view.scan(&keys::dead(id), None, usize::MAX)?
            .into_iter()
            .map(|(_, value)| Ok(serde_json::from_slice(&value)?))
            .collect()
    }

    /// Puts a dead letter back in its subscription's queue, where it is delivered in
    /// position order with the rest. `false` when there is no such dead letter.
    pub fn redrive(&self, id: &str, position: Position) -> Result<bool, ProjectionError> {
        let view = self.shared.read.view(WEBHOOKS)?;
        let Some(dead) = view.get_json::<DeadLetter>(&keys::dead_letter(id, position))? else {
            return Ok(false);
        };
        self.shared.read.write_rows(
            WEBHOOKS,
            &[(keys::queued(id, position), dead.body.into_bytes())],
            &[keys::dead_letter(id, position)],
        )?;
        self.wake();
        Ok(true)
    }

    /// Stops every delivery task (a delivery in flight is abandoned: it stays queued and
    /// is sent again after the restart).
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let task = self.shared.task.lock().expect("task lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

fn active(read: &ReadModelStore) -> Result<Vec<Subscription>, ProjectionError> {
    Ok(read
        .view(WEBHOOKS)?
        .get_json::<Vec<Subscription>>(keys::ACTIVE)?
        .unwrap_or_default())
}

/// Keeps one task per active subscription.
async fn supervise(shared: Arc<Shared>, mut checkpoint: watch::Receiver<Position>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        let subscriptions = active(&shared.read).unwrap_or_default();
        tasks.retain(|id, task| {
            let keep = subscriptions.iter().any(|s| &s.id == id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for subscription in subscriptions {
            if !tasks.contains_key(&subscription.id) {
                let id = subscription.id.clone();
                let task = tokio::spawn(deliver(shared.clone(), subscription));
                tasks.insert(id, task);
            }
        }
        tokio::select! {
            _ = checkpoint.changed() => {}
            _ = tokio::time::sleep(shared.options.idle) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, task) in tasks {
        task.abort();
        let _ = task.await;
    }
}

/// Delivers one subscription's queue, in order, until the subscription goes.
async fn deliver(shared: Arc<Shared>, subscription: Subscription) {
    let id = subscription.id.clone();
    let counters = shared
        .counters
        .lock()
        .expect("counters lock")
        .entry(id.clone())
        .or_default()
        .clone();
    let secret = shared.key.secret(&id);
    let mut checkpoint = match shared.runtime.subscribe_checkpoint(WEBHOOKS) {
        Ok(checkpoint) => checkpoint,
        Err(_) => return,
    };
    loop {
        if shared
            .options
            .active_when
            .as_ref()
            .is_some_and(|a| !a.holds())
        {
            tokio::time::sleep(shared.options.idle).await;
            continue;
        }
        let next = shared
            .read
            .view(WEBHOOKS)
            .and_then(|view| view.scan(&keys::queue(&id), None, 1));
        let Some((key, body)) = next.ok().and_then(|rows| rows.into_iter().next()) else {
            tokio::select! {
                _ = checkpoint.changed() => {}
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(shared.options.idle) => {}
            }
            continue;
        };
        let position = keys::position_of(&key);
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            match post(&shared, &subscription, &secret, &body, attempts).await {
                Ok(()) => break Ok(()),
                Err(error) => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    *counters.last_error.lock().expect("error lock") = Some(error.clone());
                    tracing::debug!(webhook = %id, position = position.0, attempts, %error, "delivery failed");
                    if attempts >= shared.options.retry.max_attempts {
                        break Err(error);
                    }
                    tokio::time::sleep(shared.options.retry.backoff(attempts)).await;
                }
            }
        };
        let written = match outcome {
            Ok(()) => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                shared.read.write_rows(WEBHOOKS, &[], &[key])
            }
            Err(error) => {
                tracing::warn!(webhook = %id, position = position.0, %error, "delivery parked as a dead letter");
                let dead = DeadLetter {
                    webhook: id.clone(),
                    position: position.0,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    error,
                    attempts,
                    dead_at_micros: Timestamp::now().as_micros(),
                };
                match serde_json::to_vec(&dead) {
                    Ok(dead) => shared.read.write_rows(
                        WEBHOOKS,
                        &[(keys::dead_letter(&id, position), dead)],
                        &[key],
                    ),
                    Err(e) => Err(e.into()),
                }
            }
        };
        if let Err(error) = written {
            tracing::error!(webhook = %id, %error, "webhook queue not updated");
            tokio::time::sleep(shared.options.idle).await;
        }
    }
}

/// One POST of `body` to the subscription; `Err` with the reason unless the receiver
/// answered 2xx.
async fn post(
    shared: &Shared,
    subscription: &Subscription,
    secret: &str,
    body: &[u8],
    attempt: u32,
) -> Result<(), String> {
    let event_id = serde_json::from_slice::<super::Delivery>(body)
        .map(|d| d.event_id)
        .unwrap_or_default();
    let signature = sign(secret, Timestamp::now().as_micros() / 1_000_000, body);
    let response = shared
        .http
        .post(&subscription.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_ID_HEADER, event_id)
        .header(SIGNATURE_HEADER, signature)
        .header("x-annals-webhook-id", &subscription.id)
        .header("x-annals-delivery-attempt", attempt.to_string())
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| format!("{}: {e}", subscription.url))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "{} answered {}",
            subscription.url,
            response.status()
        ))
    }
}
