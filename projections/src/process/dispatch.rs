//! The dispatch half of a process manager: sends the outbox's commands, fires due
//! deadlines, retries and parks failed commands, and answers operators.
//!
//! The dispatcher works in rounds. A round reads the deadlines that are due and up to
//! `batch` outbox rows in the order they were decided, fires the deadlines, sends the
//! commands (one instance's commands in order, up to `concurrency` instances at a time;
//! a command waiting for its retry holds back only the later commands of its own event),
//! and removes or updates their rows in one write. A round starts when the process
//! manager's checkpoint moves (new rows), when the next retry or deadline is due, or when
//! an operator retries a parked command.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals_store::{
    CommandContext, EventStore, ExpectedVersion, Metadata, NewEvent, Position, StoreError,
    StreamId, Timestamp,
};
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::clock::Clock;
use super::outbox::{OutboxEntry, ParkedCommand, PendingDeadline};
use super::{DEADLINE_REACHED, ProcessManager, validate_process_name};
use crate::error::ProjectionError;
use crate::keys::process as keys;
use crate::runtime::{ProjectionRuntime, ProjectionStatus};
use crate::storage::{ReadModelStore, Row};

/// The namespace of the ids of deadline events.
const DEADLINE_NAMESPACE: Uuid = Uuid::from_u128(0x3c9d_1e2f_6a7b_4c8d_9e0f_a1b2_c3d4_e5f6);

/// Why a command was not carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandFailure {
    /// It may work later (storage unavailable, a conflict, a remote service down or
    /// slow): retried with backoff, then parked.
    Transient(String),
    /// The domain refused it (the aggregate's state does not allow it): final, never
    /// retried. The process manager learns what happened instead from the log.
    Rejected(String),
}

/// Carries out a process manager's commands. It must honour the context's idempotency
/// key: a command sent twice with the same key has its effect once.
pub trait CommandExecutor<C>: Send + Sync + 'static {
    /// Carries out one command.
    fn execute(
        &self,
        command: C,
        ctx: CommandContext,
    ) -> impl Future<Output = Result<(), CommandFailure>> + Send;
}

/// How failed commands are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Sends before a command is parked. Default 12.
    pub max_attempts: u32,
    /// The backoff ceiling after the first failure; it doubles with each failure.
    /// Default 100 ms.
    pub first_backoff: Duration,
    /// The largest backoff ceiling. Default 30 s. With the defaults the eleven waits'
    /// ceilings add up to 111 s (each wait is half to all of its ceiling), so a command is
    /// parked after about one to two minutes of waiting, plus the failed attempts
    /// themselves: long enough to ride out a restart of the service it calls, short
    /// enough that an operator hears of an outage soon.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failure: "equal jitter", half the exponential
    /// ceiling plus a random part of the other half, so commands that failed together do
    /// not all come back at once, and none comes back at once.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .first_backoff
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let ceiling = doubled.min(self.max_backoff).as_micros() as u64;
        let half = ceiling / 2;
        let random = (Uuid::new_v4().as_u128() as u64) % (half + 1);
        Duration::from_micros(half + random)
    }
}

/// Says whether this process should act now: in a cluster, only the node that writes
/// sends commands and fires deadlines, so the others do not repeat every call to a
/// remote service (their duplicates would be harmless, but not free).
#[derive(Clone)]
pub struct ActiveWhen(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for ActiveWhen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActiveWhen(..)")
    }
}

impl ActiveWhen {
    /// Whether to act now.
    pub fn holds(&self) -> bool {
        (self.0)()
    }
}

/// Tuning of a dispatcher.
#[derive(Clone, Debug)]
pub struct DispatcherOptions {
    /// Retries of failed commands.
    pub retry: RetryPolicy,
    /// Instances whose commands are sent at the same time. Default 64: commands are
    /// appends that wait for a group commit, so many in flight share each fsync.
    pub concurrency: usize,
    /// Outbox rows (and due deadlines) read per round. Default 1,024.
    pub batch: usize,
    /// The longest a dispatcher sleeps without a reason to wake. Default 1 s.
    pub idle: Duration,
    /// When to act (default: always). The outbox and deadlines wait, durable, while it
    /// does not hold.
    pub active_when: Option<ActiveWhen>,
}

impl Default for DispatcherOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            concurrency: 64,
            batch: 1024,
            idle: Duration::from_secs(1),
            active_when: None,
        }
    }
}

/// What a process manager is doing, for operators.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessStatus {
    /// The process manager.
    pub name: String,
    /// Its decision half, a projection.
    pub projection: Option<ProjectionStatus>,
    /// Commands decided and not yet sent successfully (counted up to 100,000).
    pub outbox: u64,
    /// Pending deadlines (counted up to 100,000).
    pub deadlines: u64,
    /// When the next deadline is due (microseconds since the Unix epoch).
    pub next_deadline_micros: Option<i64>,
    /// Parked commands.
    pub parked: u64,
    /// Commands carried out since the start.
    pub sent: u64,
    /// Commands the domain refused since the start.
    pub rejected: u64,
    /// Failed sends that were retried since the start.
    pub retried: u64,
    /// Commands parked since the start.
    pub parked_total: u64,
    /// Deadlines fired since the start.
    pub deadlines_fired: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    rejected: AtomicU64,
    retried: AtomicU64,
    parked: AtomicU64,
    deadlines_fired: AtomicU64,
}

struct Shared {
    name: String,
    read: Arc<ReadModelStore>,
    runtime: ProjectionRuntime,
    clock: Arc<dyn Clock>,
    counters: Counters,
    wake: Notify,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A running process manager's dispatcher: status, parked commands, retry and skip.
/// Cheap to clone.
#[derive(Clone)]
pub struct ProcessHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// Starts dispatchers.
#[derive(Debug)]
pub struct Dispatcher;

impl Dispatcher {
    /// Starts the dispatcher of `pm`, whose [`ProcessProjection`](super::ProcessProjection)
    /// must be running in `runtime`: it sends commands through `executor` and appends
    /// deadline events to `store`, by the time of `clock`.
    pub fn start<P, X, S>(
        pm: Arc<P>,
        executor: Arc<X>,
        store: Arc<S>,
        runtime: ProjectionRuntime,
        clock: Arc<dyn Clock>,
        options: DispatcherOptions,
    ) -> Result<ProcessHandle, ProjectionError>
    where
        P: ProcessManager,
        X: CommandExecutor<P::Command>,
        S: EventStore,
    {
        let name = pm.name().to_string();
        if !validate_process_name(&name) {
            return Err(ProjectionError::InvalidName { name });
        }
        let checkpoint = runtime.subscribe_checkpoint(&name)?;
        let shared = Arc::new(Shared {
            read: runtime.read_models().clone(),
            runtime,
            clock,
            counters: Counters::default(),
            wake: Notify::new(),
            shutdown: watch::Sender::new(false),
            task: Mutex::new(None),
            name,
        });
        let round = Round {
            shared: shared.clone(),
            executor,
            store,
            options,
            _pm: std::marker::PhantomData::<P>,
        };
        let task = tokio::spawn(round.run(checkpoint));
        *shared.task.lock().expect("task lock") = Some(task);
        Ok(ProcessHandle { shared })
    }
}

impl ProcessHandle {
    /// The process manager's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// What it is doing.
    pub fn status(&self) -> Result<ProcessStatus, ProjectionError> {
        let s = &self.shared;
        let view = s.read.view(&s.name)?;
        const COUNT_LIMIT: usize = 100_000;
        let count = |kind: u8| -> Result<u64, ProjectionError> {
            Ok(view.scan(&[kind], None, COUNT_LIMIT)?.len() as u64)
        };
        let next_deadline_micros = view
            .scan(&[keys::DEADLINE], None, 1)?
            .first()
            .map(|(_, value)| serde_json::from_slice::<PendingDeadline>(value))
            .transpose()?
            .map(|d| d.due_micros);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Ok(ProcessStatus {
            name: s.name.clone(),
            projection: Some(s.runtime.status_of(&s.name)?),
            outbox: count(keys::OUTBOX)?,
            deadlines: count(keys::DEADLINE)?,
            next_deadline_micros,
            parked: count(keys::PARKED)?,
            sent: load(&s.counters.sent),
            rejected: load(&s.counters.rejected),
            retried: load(&s.counters.retried),
            parked_total: load(&s.counters.parked),
            deadlines_fired: load(&s.counters.deadlines_fired),
        })
    }

    /// The parked commands, oldest decision first.
    pub fn parked(&self) -> Result<Vec<ParkedCommand>, ProjectionError> {
        let view = self.shared.read.view(&self.shared.name)?;
        view.scan(&[keys::PARKED], None, usize::MAX)?
            .into_iter()
            .map(|(_, value)| Ok(serde_json::from_slice(&value)?))
            .collect()
    }

    fn parked_at(
        &self,
        position: Position,
        index: u16,
    ) -> Result<Option<ParkedCommand>, ProjectionError> {
        let view = self.shared.read.view(&self.shared.name)?;
        view.get_json(&keys::command(keys::PARKED, position, index))
    }

    /// Puts a parked command back in the outbox with its attempts reset, and wakes the
    /// dispatcher. `false` when no command is parked there.
    pub fn retry_parked(&self, position: Position, index: u16) -> Result<bool, ProjectionError> {
        let Some(parked) = self.parked_at(position, index)? else {
            return Ok(false);
        };
        let entry = parked.into_entry(self.shared.clock.now());
        let put = (
            keys::command(keys::OUTBOX, position, index),
            serde_json::to_vec(&entry)?,
        );
        self.shared.read.write_rows(
            &self.shared.name,
            &[put],
            &[keys::command(keys::PARKED, position, index)],
        )?;
        self.shared.wake.notify_one();
        Ok(true)
    }

    /// Gives up a parked command for good. `false` when no command is parked there.
    pub fn skip_parked(&self, position: Position, index: u16) -> Result<bool, ProjectionError> {
        if self.parked_at(position, index)?.is_none() {
            return Ok(false);
        }
        self.shared.read.write_rows(
            &self.shared.name,
            &[],
            &[keys::command(keys::PARKED, position, index)],
        )?;
        Ok(true)
    }

    /// Stops the dispatcher after its current round and waits for it. Commands of the
    /// round stay in the outbox until they are done, so none is lost.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let task = self.shared.task.lock().expect("task lock").take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::error!(process = %self.shared.name, %error, "dispatcher ended abnormally");
        }
    }
}

/// What became of an outbox row in a round.
enum Outcome {
    /// Carried out or refused: the row goes.
    Done(Vec<u8>),
    /// Failed, to be tried again: the row is updated.
    Retry(Vec<u8>, OutboxEntry),
    /// Failed for the last time: the row moves to the parked commands.
    Park(Vec<u8>, ParkedCommand),
}

struct Round<P, X, S> {
    shared: Arc<Shared>,
    executor: Arc<X>,
    store: Arc<S>,
    options: DispatcherOptions,
    _pm: std::marker::PhantomData<P>,
}

impl<P, X, S> Round<P, X, S>
where
    P: ProcessManager,
    X: CommandExecutor<P::Command>,
    S: EventStore,
{
    async fn run(self, mut checkpoint: watch::Receiver<Position>) {
        let mut shutdown = self.shared.shutdown.subscribe();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let next = match self.round().await {
                Ok(next) => next,
                Err(error) => {
                    // Storage trouble: the next round waits the idle period.
                    tracing::warn!(process = %self.shared.name, %error, "dispatch round failed");
                    None
                }
            };
            let now = self.shared.clock.now();
            let busy = next.is_some_and(|at| at <= now);
            if busy {
                // More is due at once: yield, then go on.
                tokio::task::yield_now().await;
                continue;
            }
            let idle = i64::try_from(self.options.idle.as_micros()).unwrap_or(i64::MAX);
            let until = next.unwrap_or(Timestamp(now.0.saturating_add(idle)));
            tokio::select! {
                _ = checkpoint.changed() => {}
                _ = self.shared.wake.notified() => {}
                _ = self.shared.clock.sleep_until(until) => {}
                _ = tokio::time::sleep(self.options.idle) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One round. Returns when the next one is due: now (more rows than one round
    /// takes), at the next retry or deadline, or `None` (when rows arrive).
    async fn round(&self) -> Result<Option<Timestamp>, ProjectionError> {
        let s = &self.shared;
        if self
            .options
            .active_when
            .as_ref()
            .is_some_and(|a| !a.holds())
        {
            self.sweep().await?;
            return Ok(None);
        }
        let now = s.clock.now();
        let mut next: Option<Timestamp> = None;
        let mut earliest = |at: Timestamp| next = Some(next.map_or(at, |n| n.min(at)));

        let (fired, deadline_next) = self.fire_deadlines(now).await?;
        if let Some(at) = deadline_next {
            earliest(at);
        }

        let rows = s
            .read
            .view(&s.name)?
            .scan(&[keys::OUTBOX], None, self.options.batch)?;
        let full = rows.len() >= self.options.batch;
        let mut groups: Vec<Vec<(Vec<u8>, OutboxEntry)>> = Vec::new();
        let mut by_instance: HashMap<String, usize> = HashMap::new();
        for (key, value) in rows {
            let entry: OutboxEntry = serde_json::from_slice(&value)?;
            let at = *by_instance
                .entry(entry.instance.clone())
                .or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
            groups[at].push((key, entry));
        }
        // Rows waiting for their retries (wherever they are in their instance's order)
        // say when the next round is due.
        for (_, entry) in groups.iter().flatten() {
            if entry.not_before > now {
                earliest(entry.not_before);
            }
        }
        let outcomes: Vec<Outcome> = futures::stream::iter(groups)
            .map(|group| self.send_in_order(group, now))
            .buffer_unordered(self.options.concurrency.max(1))
            .flat_map(futures::stream::iter)
            .collect()
            .await;

        let mut puts: Vec<Row> = Vec::new();
        let mut deletes: Vec<Vec<u8>> = fired;
        for outcome in outcomes {
            match outcome {
                Outcome::Done(key) => deletes.push(key),
                Outcome::Retry(key, entry) => {
                    earliest(entry.not_before);
                    puts.push((key, serde_json::to_vec(&entry)?));
                }
                Outcome::Park(key, parked) => {
                    let (position, index) = keys::decode_command(&key).unwrap_or_default();
                    puts.push((
                        keys::command(keys::PARKED, position, index),
                        serde_json::to_vec(&parked)?,
                    ));
                    deletes.push(key);
                }
            }
        }
        let progressed = !puts.is_empty() || !deletes.is_empty();
        s.read.write_rows(&s.name, &puts, &deletes)?;
        if full && progressed {
            // More rows than one round takes, and this round moved some: go on at once.
            // A full round of rows that all wait for their retries waits like any other.
            return Ok(Some(now));
        }
        Ok(next)
    }

    /// On a node that does not act: removes the outbox rows whose commands the acting
    /// node carried out (their first event, with the id the idempotency key gives it, is
    /// in the log), so that a node taking over resends only what is really left. Commands
    /// that had no effect (refused, or deciding nothing) stay and are sent again then,
    /// to be refused again. Deadlines need no sweep: the acting node's `DeadlineReached`
    /// removes them here too, through the projection.
    async fn sweep(&self) -> Result<(), ProjectionError> {
        let s = &self.shared;
        let rows = s
            .read
            .view(&s.name)?
            .scan(&[keys::OUTBOX], None, self.options.batch)?;
        let mut done = Vec::new();
        for (key, value) in rows {
            let entry: OutboxEntry = serde_json::from_slice(&value)?;
            let ctx = CommandContext {
                idempotency_key: Some(entry.idempotency_key),
                actor: Some(format!("process:{}", s.name)),
                ..CommandContext::default()
            };
            if let Some(id) = ctx.event_id(0)
                && self.store.find_event(id).await?.is_some()
            {
                done.push(key);
            }
        }
        s.read.write_rows(&s.name, &[], &done)
    }

    /// Sends one instance's commands of this round in order. A command that fails or is
    /// not due yet holds back the commands decided after it on the same event, not those
    /// of later events: a deadline's command must not wait for a retried command of an
    /// earlier step (the checkout's cancellation after an unanswered authorization).
    async fn send_in_order(
        &self,
        group: Vec<(Vec<u8>, OutboxEntry)>,
        now: Timestamp,
    ) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(group.len());
        let mut held: Option<Position> = None;
        for (key, entry) in group {
            let position = keys::decode_command(&key).map(|(p, _)| p);
            if position.is_some() && position == held {
                continue;
            }
            if entry.not_before > now {
                held = position;
                continue;
            }
            let outcome = self.send(key, entry, now).await;
            if !matches!(outcome, Outcome::Done(_)) {
                held = position;
            }
            outcomes.push(outcome);
        }
        outcomes
    }

    async fn send(&self, key: Vec<u8>, mut entry: OutboxEntry, now: Timestamp) -> Outcome {
        let s = &self.shared;
        let result = match serde_json::from_value::<P::Command>(entry.command.clone()) {
            Ok(command) => {
                let ctx = CommandContext {
                    idempotency_key: Some(entry.idempotency_key.clone()),
                    correlation_id: entry.correlation_id,
                    causation_id: Some(entry.causation_id),
                    actor: Some(format!("process:{}", s.name)),
                    extra: Default::default(),
                };
                self.executor.execute(command, ctx).await
            }
            // A command this build cannot read will not become readable by waiting.
            Err(error) => {
                // Counted as the last attempt below: it is parked at once.
                entry.attempts = self.options.retry.max_attempts.saturating_sub(1);
                Err(CommandFailure::Transient(format!(
                    "the command cannot be decoded: {error}"
                )))
            }
        };
        match result {
            Ok(()) => {
                s.counters.sent.fetch_add(1, Ordering::Relaxed);
                Outcome::Done(key)
            }
            Err(CommandFailure::Rejected(reason)) => {
                s.counters.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::info!(process = %s.name, instance = %entry.instance, %reason, "command refused");
                Outcome::Done(key)
            }
            Err(CommandFailure::Transient(reason)) => {
                entry.attempts = entry.attempts.saturating_add(1);
                if entry.attempts >= self.options.retry.max_attempts {
                    s.counters.parked.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(process = %s.name, instance = %entry.instance, %reason, attempts = entry.attempts, "command parked");
                    let at = keys::decode_command(&key).unwrap_or_default();
                    Outcome::Park(key, ParkedCommand::new(&s.name, at, entry, reason, now))
                } else {
                    s.counters.retried.fetch_add(1, Ordering::Relaxed);
                    let wait = self.options.retry.backoff(entry.attempts);
                    let micros = i64::try_from(wait.as_micros()).unwrap_or(i64::MAX);
                    entry.not_before = Timestamp(now.0.saturating_add(micros));
                    entry.last_error = Some(reason);
                    Outcome::Retry(key, entry)
                }
            }
        }
    }

    /// Appends the `DeadlineReached` event of every deadline due by `now` (up to one
    /// batch). Returns the keys of the rows fired and when the next deadline is due.
    async fn fire_deadlines(
        &self,
        now: Timestamp,
    ) -> Result<(Vec<Vec<u8>>, Option<Timestamp>), ProjectionError> {
        let s = &self.shared;
        let rows = s
            .read
            .view(&s.name)?
            .scan(&[keys::DEADLINE], None, self.options.batch)?;
        let bound = keys::deadline_until(Timestamp(now.0.saturating_add(1)));
        let mut due = Vec::new();
        let mut next = None;
        for (key, value) in rows {
            let deadline: PendingDeadline = serde_json::from_slice(&value)?;
            if key >= bound {
                next = Some(Timestamp(deadline.due_micros));
                break;
            }
            due.push((key, deadline));
        }
        if due.len() >= self.options.batch {
            // More due than one round fires.
            next = Some(now);
        }
        let results: Vec<(Vec<u8>, Result<(), StoreError>)> = futures::stream::iter(due)
            .map(|(key, deadline)| async move { (key, self.fire(&deadline).await) })
            .buffer_unordered(self.options.concurrency.max(1))
            .collect()
            .await;
        let mut fired = Vec::with_capacity(results.len());
        for (key, result) in results {
            match result {
                Ok(()) => {
                    s.counters.deadlines_fired.fetch_add(1, Ordering::Relaxed);
                    fired.push(key);
                }
                Err(error) => {
                    // The row stays: a later round fires it again, under the same id,
                    // after a pause rather than at once (the store may be refusing writes).
                    tracing::warn!(process = %s.name, %error, "deadline not fired yet");
                    let pause = Timestamp(now.0.saturating_add(1_000_000));
                    next = Some(next.map_or(pause, |n: Timestamp| n.min(pause)));
                }
            }
        }
        Ok((fired, next))
    }

    async fn fire(&self, deadline: &PendingDeadline) -> Result<(), StoreError> {
        let s = &self.shared;
        let stream = StreamId::for_category(&s.name, &deadline.instance)?;
        let id_name = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            s.name, deadline.instance, deadline.name, deadline.due_micros
        );
        let payload = serde_json::json!({
            "deadline": deadline.name,
            "due_micros": deadline.due_micros,
        });
        let event = NewEvent::json(DEADLINE_REACHED, &payload)
            .with_id(Uuid::new_v5(&DEADLINE_NAMESPACE, id_name.as_bytes()))
            .with_metadata(Metadata {
                correlation_id: deadline.correlation_id,
                causation_id: Some(deadline.causation_id),
                actor: Some(format!("process:{}", s.name)),
                extra: Default::default(),
            });
        match self
            .store
            .append(stream, ExpectedVersion::Any, vec![event])
            .await
        {
            // Fired before (a crash came between the append and the row's removal).
            Ok(_) | Err(StoreError::IdempotencyConflict { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }
}
