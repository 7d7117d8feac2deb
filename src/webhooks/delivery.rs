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
use annals_store::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Position, SharedStore, StreamId, Timestamp,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::projection::Subscription;
use super::{EVENT_ID_HEADER, SIGNATURE_HEADER, WEBHOOKS, WebhookKey, keys, sign};

/// Tuning of webhook delivery.
#[derive(Clone, Debug)]
pub struct DelivererOptions {
    /// Attempts per event before it becomes a dead letter, and their backoff. Default: 8
    /// attempts, the backoff ceiling 500 ms doubling up to 60 s: the seven waits take 32
    /// to 64 s in all, plus the attempts themselves (each up to `timeout`).
    pub retry: RetryPolicy,
    /// How long a receiver may take to answer. Default 10 s.
    pub timeout: Duration,
    /// The longest a subscription's task sleeps without a reason to wake. Default 1 s.
    pub idle: Duration,
    /// When to deliver (default: always). In a cluster only the writing node delivers,
    /// and it records its progress in the log (a `WebhookDelivered` event per
    /// subscription at most once a second while it delivers), so that the other nodes
    /// drop what it delivered and a node taking over resends only the last second's.
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
        // A redirect would turn the POST into a bodiless GET whose 2xx is no delivery:
        // a receiver's 3xx is a failure like any other non-2xx answer.
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none())
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

    /// Every active subscription's delivery.
    pub fn status(&self) -> Result<Vec<WebhookStatus>, ProjectionError> {
        let view = self.shared.read.view(WEBHOOKS)?;
        let head = self.shared.store.head().0;
        let counters = self.shared.counters.lock().expect("counters lock").clone();
        active(&self.shared.read)?
            .into_iter()
            .map(|subscription| {
                let redriven = view.scan(&keys::redriven(&subscription.id), None, 100_000)?;
                let queued = view.scan(&keys::queue(&subscription.id), None, 100_000)?;
                let lag = queued.first().map_or(0, |(key, _)| {
                    head + 1 - keys::position_of(key).0.min(head + 1)
                });
                let dead = view.scan(&keys::dead(&subscription.id), None, 100_000)?;
                let c = counters.get(&subscription.id).cloned().unwrap_or_default();
                Ok(WebhookStatus {
                    pending: (redriven.len() + queued.len()) as u64,
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
            &[(keys::redriven_at(id, position), dead.body.into_bytes())],
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

/// Keeps one task per active subscription, and removes the rows of subscriptions that are
/// gone.
async fn supervise(shared: Arc<Shared>, mut checkpoint: watch::Receiver<Position>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        let subscriptions = active(&shared.read).unwrap_or_default();
        let mut gone = Vec::new();
        tasks.retain(|id, task| {
            let active = subscriptions.iter().any(|s| &s.id == id);
            if !active {
                task.abort();
                gone.push(id.clone());
            }
            active && !task.is_finished()
        });
        for id in gone {
            if let Err(error) = purge(&shared.read, &id) {
                tracing::warn!(webhook = %id, %error, "rows of a deleted webhook not removed");
            }
        }
        for subscription in subscriptions {
            if !tasks.contains_key(&subscription.id) {
                let id = subscription.id.clone();
                let task = tokio::spawn(deliver(shared.clone(), id.clone()));
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

/// Removes every queued event and dead letter of a deleted subscription.
fn purge(read: &ReadModelStore, id: &str) -> Result<(), ProjectionError> {
    let view = read.view(WEBHOOKS)?;
    loop {
        let mut keys_of: Vec<Vec<u8>> = view
            .scan(&keys::queue(id), None, 1024)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys_of.extend(
            view.scan(&keys::dead(id), None, 1024)?
                .into_iter()
                .map(|(k, _)| k),
        );
        if keys_of.is_empty() {
            return Ok(());
        }
        read.write_rows(WEBHOOKS, &[], &keys_of)?;
    }
}

/// Drops the queued events of subscription `id` up to `up_to` (delivered by the writing
/// node); `true` when there were any.
fn drop_delivered(read: &ReadModelStore, id: &str, up_to: u64) -> Result<bool, ProjectionError> {
    let rows = read.view(WEBHOOKS)?.scan(&keys::queue(id), None, 1024)?;
    let done: Vec<Vec<u8>> = rows
        .into_iter()
        .map(|(k, _)| k)
        .take_while(|k| keys::position_of(k).0 <= up_to)
        .collect();
    read.write_rows(WEBHOOKS, &[], &done)?;
    Ok(!done.is_empty())
}

/// Delivers one subscription's queue, in order, until the subscription goes.
async fn deliver(shared: Arc<Shared>, id: String) {
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
    // In a cluster: the last position this node finished, and when it last recorded it.
    let in_cluster = shared.options.active_when.is_some();
    let mut finished = 0u64;
    let mut recorded_up_to = 0u64;
    let mut recorded = std::time::Instant::now();
    loop {
        let Some(subscription) = active(&shared.read)
            .ok()
            .and_then(|all| all.into_iter().find(|s| s.id == id))
        else {
            return;
        };
        if drop_delivered(&shared.read, &id, subscription.delivered_up_to).unwrap_or(false) {
            continue;
        }
        let leading = shared
            .options
            .active_when
            .as_ref()
            .is_none_or(|a| a.holds());
        if !leading {
            tokio::time::sleep(shared.options.idle).await;
            continue;
        }
        // Redriven dead letters first (they are older than anything queued, and the
        // recorded progress, a watermark, must not drop them), then the queue.
        let next = shared.read.view(WEBHOOKS).and_then(|view| {
            let mut rows = view.scan(&keys::redriven(&id), None, 1)?;
            if rows.is_empty() {
                rows = view.scan(&keys::queue(&id), None, 1)?;
            }
            Ok(rows)
        });
        let next = next.ok().and_then(|rows| rows.into_iter().next());
        // At most once a second; an empty queue is waited on for at most `idle`, so the
        // last progress is recorded soon after the last delivery. Recorded progress
        // reaches this node's projection a moment later: what this task recorded itself
        // counts too, so no position is recorded twice.
        let due = finished > subscription.delivered_up_to.max(recorded_up_to)
            && recorded.elapsed() >= Duration::from_secs(1);
        if in_cluster && due {
            record_progress(&shared, &id, finished).await;
            recorded_up_to = finished;
            recorded = std::time::Instant::now();
        }
        let Some((key, body)) = next else {
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
                        break Err(Some(error));
                    }
                    tokio::time::sleep(shared.options.retry.backoff(attempts)).await;
                    // A node that lost the lease leaves the event to the new writer.
                    if shared
                        .options
                        .active_when
                        .as_ref()
                        .is_some_and(|a| !a.holds())
                    {
                        break Err(None);
                    }
                }
            }
        };
        let written = match outcome {
            Err(None) => continue,
            Ok(()) => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                shared.read.write_rows(WEBHOOKS, &[], &[key])
            }
            Err(Some(error)) => {
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
        match written {
            Ok(()) => finished = finished.max(position.0),
            Err(error) => {
                tracing::error!(webhook = %id, %error, "webhook queue not updated");
                tokio::time::sleep(shared.options.idle).await;
            }
        }
    }
}

/// Appends `WebhookDelivered { up_to }` to the subscription's stream. A failure only
/// means more to resend after a failover: it is logged, not retried.
async fn record_progress(shared: &Shared, id: &str, up_to: u64) {
    let Ok(stream) = StreamId::for_category("webhook", id) else {
        return;
    };
    let event = NewEvent::json("WebhookDelivered", &serde_json::json!({ "up_to": up_to }))
        .with_metadata(Metadata {
            actor: Some("webhooks".into()),
            ..Metadata::default()
        });
    if let Err(error) = shared
        .store
        .append(stream, ExpectedVersion::Any, vec![event])
        .await
    {
        tracing::warn!(webhook = %id, %error, "webhook progress not recorded");
    }
}

/// The message of `error` with its causes (a refused connection, a DNS failure and a
/// timeout all read "error sending request" alone).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
        .map_err(|e| format!("{}: {}", subscription.url, chain(&e)))?;
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
