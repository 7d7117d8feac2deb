//! The projection runtime: one worker task per projection that tails the log and keeps
//! its read model (and, during a rebuild, the next generation of it) current.
//!
//! A worker's loop: apply the next batch of the serving generation up to the durable head;
//! if a rebuild runs, apply the next batch of the new generation too, and take over once it
//! has caught up; when there is nothing to do, sleep until the head moves, an operator asks
//! for something, or the runtime shuts down. Every batch is one `WriteBatch` holding the
//! read-model changes and the checkpoint.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals_store::{
    EventPage, EventStore, Position, ReadFilter, RecordedEvent, StoreError, Timestamp, Upcasters,
};
use serde::Serialize;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::{HandlerError, ProjectionError};
use crate::keys::Generation;
use crate::projection::{PoisonPolicy, Projection, validate_name};
use crate::storage::{
    ActiveRecord, Changes, ParkedEvent, ReadModelStore, ReadModelTx, RebuildRecord,
};

/// Tuning of the workers.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Most matching events applied in one batch (one `WriteBatch`).
    pub batch_size: usize,
    /// How many times a failing handler is tried before its event is parked.
    pub max_attempts: u32,
    /// Wait before the first retry of a failing handler; doubles with every retry.
    pub retry_backoff: Duration,
    /// How long an old generation stays readable after a take-over, so readers that
    /// started on it finish their query before its rows go.
    pub drop_delay: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            batch_size: 16_384,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(20),
            drop_delay: Duration::from_secs(5),
        }
    }
}

/// What a projection is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionState {
    /// Following the log.
    Running,
    /// Stopped by an operator; `resume` continues.
    Paused,
    /// Following the log while a new generation is built next to the serving one.
    Rebuilding,
    /// Stopped on an event it could not apply (stop policy) or on a storage error.
    Failed,
}

impl ProjectionState {
    /// The lowercase name used by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionState::Running => "running",
            ProjectionState::Paused => "paused",
            ProjectionState::Rebuilding => "rebuilding",
            ProjectionState::Failed => "failed",
        }
    }
}

/// Progress of a blue/green rebuild.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RebuildProgress {
    /// The generation being built.
    pub generation: Generation,
    /// The projection version building it.
    pub version: u32,
    /// Events done (the new generation's checkpoint).
    pub checkpoint: Position,
    /// The durable head it is heading for.
    pub head: Position,
    /// Recent rate of the rebuild.
    pub events_per_second: f64,
    /// Estimated seconds left at the recent rate (none while the rate is unknown).
    pub eta_seconds: Option<f64>,
}

/// Where a projection is, for operators and `/ready`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// The version of the handler that built the serving generation.
    pub version: u32,
    /// The serving generation.
    pub generation: Generation,
    /// What it is doing.
    pub state: ProjectionState,
    /// The last position the serving generation has applied.
    pub checkpoint: Position,
    /// The log's durable head.
    pub head: Position,
    /// Events between the checkpoint and the head.
    pub lag: u64,
    /// Events per second over the last few seconds.
    pub events_per_second: f64,
    /// The last handler or storage error, if any.
    pub last_error: Option<String>,
    /// The position it stopped at, when `failed` on an event.
    pub failed_position: Option<Position>,
    /// How many events are parked.
    pub parked: u64,
    /// The rebuild in progress, if any.
    pub rebuild: Option<RebuildProgress>,
}

/// Events counted over a sliding window of a few seconds.
#[derive(Default)]
struct Rate {
    samples: VecDeque<(Instant, u64)>,
    total: u64,
}

const RATE_WINDOW: Duration = Duration::from_secs(5);

impl Rate {
    fn add(&mut self, events: u64) {
        let now = Instant::now();
        if self.samples.is_empty() {
            self.samples.push_back((now, self.total));
        }
        self.total += events;
        self.samples.push_back((now, self.total));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    fn per_second(&self) -> f64 {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        if last.0.elapsed() > RATE_WINDOW {
            return 0.0;
        }
        let span = Instant::now().duration_since(first.0).as_secs_f64();
        if span <= 0.0 {
            0.0
        } else {
            (last.1 - first.1) as f64 / span
        }
    }
}

type ReplayReply = oneshot::Sender<Result<bool, ProjectionError>>;

/// What operators ask of a worker.
#[derive(Default)]
struct Control {
    paused: bool,
    /// Set by the worker when it stopped on an event (stop policy) or a storage error;
    /// cleared by `resume`.
    failed: bool,
    rebuild: bool,
    rewind: Option<Position>,
    replay: Vec<(Position, ReplayReply)>,
}

/// What the worker reports.
struct Observed {
    state: ProjectionState,
    active: ActiveRecord,
    last_error: Option<String>,
    failed_position: Option<Position>,
    rate: Rate,
    rebuild: Option<(RebuildRecord, Position)>,
    rebuild_rate: Rate,
}

struct Worker {
    projection: Arc<dyn Projection>,
    name: String,
    control: Mutex<Control>,
    notify: Notify,
    observed: Mutex<Observed>,
    /// The serving generation's checkpoint; `wait_for` waits on it.
    checkpoint: watch::Sender<Position>,
}

impl Worker {
    fn observe<R>(&self, f: impl FnOnce(&mut Observed) -> R) -> R {
        f(&mut self.observed.lock().expect("observed lock"))
    }

    fn control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        let r = f(&mut self.control.lock().expect("control lock"));
        self.notify.notify_one();
        r
    }

    fn advance_checkpoint(&self, to: Position) {
        self.checkpoint.send_if_modified(|c| {
            if *c != to {
                *c = to;
                true
            } else {
                false
            }
        });
    }
}

struct RuntimeInner {
    read: Arc<ReadModelStore>,
    workers: Vec<Arc<Worker>>,
    by_name: HashMap<String, usize>,
    head: watch::Receiver<Position>,
    shutdown: watch::Sender<bool>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

/// The running projections of one process. Cheap to clone.
#[derive(Clone)]
pub struct ProjectionRuntime {
    inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for ProjectionRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRuntime")
            .field("projections", &self.names())
            .finish_non_exhaustive()
    }
}

impl ProjectionRuntime {
    /// Starts one worker per projection (inside the current tokio runtime). A projection
    /// seen for the first time starts from position 1; one whose version is newer than the
    /// version that built its read model is rebuilt blue/green while the old one serves; a
    /// rebuild interrupted by a crash resumes from its own checkpoint.
    pub fn start<S: EventStore>(
        store: Arc<S>,
        read: Arc<ReadModelStore>,
        projections: Vec<Arc<dyn Projection>>,
        upcasters: Arc<Upcasters>,
        options: RuntimeOptions,
    ) -> Result<Self, ProjectionError> {
        let mut seen = HashSet::new();
        let mut workers = Vec::new();
        for projection in projections {
            let name = projection.name().to_string();
            if !validate_name(&name) {
                return Err(ProjectionError::InvalidName { name });
            }
            if !seen.insert(name.clone()) {
                return Err(ProjectionError::DuplicateProjection { name });
            }
            workers.push(prepare(&read, projection)?);
        }
        let (shutdown, _) = watch::channel(false);
        let by_name = workers
            .iter()
            .enumerate()
            .map(|(i, w)| (w.name.clone(), i))
            .collect();
        let mut handles = Vec::new();
        for worker in &workers {
            let ctx = WorkerCtx {
                store: store.clone(),
                read: read.clone(),
                filter: worker.projection.filter(),
                worker: worker.clone(),
                upcasters: upcasters.clone(),
                options: options.clone(),
                shutdown: shutdown.subscribe(),
            };
            handles.push(tokio::spawn(run_worker(ctx)));
        }
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                read,
                workers,
                by_name,
                head: store.subscribe_head(),
                shutdown,
                handles: Mutex::new(handles),
            }),
        })
    }

    fn worker(&self, name: &str) -> Result<&Arc<Worker>, ProjectionError> {
        self.inner
            .by_name
            .get(name)
            .map(|i| &self.inner.workers[*i])
            .ok_or_else(|| ProjectionError::UnknownProjection {
                name: name.to_string(),
            })
    }

    /// The names of the projections, in registration order.
    pub fn names(&self) -> Vec<String> {
        self.inner.workers.iter().map(|w| w.name.clone()).collect()
    }

    /// The read-model database the projections write.
    pub fn read_models(&self) -> &Arc<ReadModelStore> {
        &self.inner.read
    }

    /// The status of every projection, in registration order.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        self.inner
            .workers
            .iter()
            .map(|w| self.status_of_worker(w))
            .collect()
    }

    /// The status of one projection.
    pub fn status_of(&self, name: &str) -> Result<ProjectionStatus, ProjectionError> {
        Ok(self.status_of_worker(self.worker(name)?))
    }

    fn status_of_worker(&self, w: &Worker) -> ProjectionStatus {
        let head = *self.inner.head.borrow();
        let checkpoint = *w.checkpoint.borrow();
        let parked = self.inner.read.parked_count(&w.name).unwrap_or(0);
        w.observe(|o| {
            let rebuild = o.rebuild.map(|(record, done)| {
                let rate = o.rebuild_rate.per_second();
                RebuildProgress {
                    generation: record.generation,
                    version: record.version,
                    checkpoint: done,
                    head,
                    events_per_second: rate,
                    eta_seconds: (rate > 0.0).then(|| head.0.saturating_sub(done.0) as f64 / rate),
                }
            });
            ProjectionStatus {
                name: w.name.clone(),
                version: o.active.version,
                generation: o.active.generation,
                state: o.state,
                checkpoint,
                head,
                lag: head.0.saturating_sub(checkpoint.0),
                events_per_second: o.rate.per_second(),
                last_error: o.last_error.clone(),
                failed_position: o.failed_position,
                parked,
                rebuild,
            }
        })
    }

    /// The serving generation's checkpoint of a projection.
    pub fn checkpoint(&self, name: &str) -> Result<Position, ProjectionError> {
        Ok(*self.worker(name)?.checkpoint.borrow())
    }

    /// Stops a projection after its current batch; queries keep answering from it.
    pub fn pause(&self, name: &str) -> Result<(), ProjectionError> {
        self.worker(name)?.control(|c| c.paused = true);
        Ok(())
    }

    /// Continues a paused projection, or retries the event a failed one stopped on.
    pub fn resume(&self, name: &str) -> Result<(), ProjectionError> {
        self.worker(name)?.control(|c| {
            c.paused = false;
            c.failed = false;
        });
        Ok(())
    }

    /// Restarts the serving generation from `from` (inclusive): the events from there on
    /// are handed to the projection again. Meant for idempotent projections and for
    /// skipping forward past a known-bad range; a full, safe reset is [`Self::rebuild`].
    pub fn rewind(&self, name: &str, from: Position) -> Result<(), ProjectionError> {
        self.worker(name)?
            .control(|c| c.rewind = Some(from.max(Position::FIRST)));
        Ok(())
    }

    /// Starts a blue/green rebuild: a new generation is built from position 1 while the
    /// serving one keeps answering and following the log, and takes over atomically when
    /// it has caught up.
    pub fn rebuild(&self, name: &str) -> Result<(), ProjectionError> {
        let worker = self.worker(name)?;
        // Both looked at under the control lock: the worker clears the request only after
        // it has recorded the running rebuild, so one of the two is always visible.
        let refused = worker.control(|c| {
            if c.rebuild || worker.observe(|o| o.rebuild.is_some()) {
                true
            } else {
                c.rebuild = true;
                false
            }
        });
        if refused {
            return Err(ProjectionError::InvalidState {
                name: name.to_string(),
                reason: "a rebuild is already running".into(),
            });
        }
        Ok(())
    }

    /// Whether a rebuild of the projection is requested or running (false again once the
    /// new generation has taken over).
    pub fn is_rebuilding(&self, name: &str) -> Result<bool, ProjectionError> {
        let worker = self.worker(name)?;
        let requested = worker.control.lock().expect("control lock").rebuild;
        Ok(requested || worker.observe(|o| o.rebuild.is_some()))
    }

    /// The parked events of a projection.
    pub fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, ProjectionError> {
        self.worker(name)?;
        self.inner.read.parked(name)
    }

    /// Hands a parked event to the projection again: `true` when it applied (and is no
    /// longer parked), `false` when the handler failed again (it stays parked).
    pub async fn replay_parked(
        &self,
        name: &str,
        position: Position,
    ) -> Result<bool, ProjectionError> {
        let (tx, rx) = oneshot::channel();
        self.worker(name)?
            .control(|c| c.replay.push((position, tx)));
        rx.await.map_err(|_| ProjectionError::Closed)?
    }

    /// Returns once the projection's serving generation has applied `position` (read your
    /// own writes), or fails with [`ProjectionError::StaleRead`] after `timeout`. Waits on
    /// the checkpoint's watch channel: no polling.
    pub async fn wait_for(
        &self,
        name: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let mut rx = self.worker(name)?.checkpoint.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= position))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(ProjectionError::Closed),
            Err(_) => Err(ProjectionError::StaleRead {
                name: name.to_string(),
                position,
                checkpoint: *rx.borrow(),
                timeout,
            }),
        }
    }

    /// [`Self::wait_for`] on every projection, sharing one deadline.
    pub async fn wait_for_all(
        &self,
        position: Position,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let deadline = Instant::now() + timeout;
        for name in self.names() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_for(&name, position, left).await?;
        }
        Ok(())
    }

    /// Stops every worker at a checkpoint (each batch is atomic, so any stop is one) and
    /// waits for them.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let handles = std::mem::take(&mut *self.inner.handles.lock().expect("handles lock"));
        for handle in handles {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "projection worker ended abnormally");
            }
        }
    }
}

/// Loads (or creates) a projection's records and drops generations left to drop.
fn prepare(
    read: &ReadModelStore,
    projection: Arc<dyn Projection>,
) -> Result<Arc<Worker>, ProjectionError> {
    let name = projection.name().to_string();
    let active = match read.active_record(&name)? {
        Some(active) => active,
        None => read.init_projection(&name, projection.version())?,
    };
    read.set_active(&name, active.generation);
    for generation in read.pending_drops(&name)? {
        if generation != active.generation {
            read.drop_generation(&name, generation)?;
        }
    }
    let rebuild = match read.rebuild_in_progress(&name)? {
        Some(record) => Some((record, read.checkpoint(&name, record.generation)?)),
        None => None,
    };
    let wants_rebuild = rebuild.is_none() && active.version < projection.version();
    if active.version > projection.version() {
        tracing::warn!(
            projection = %name,
            built_by = active.version,
            running = projection.version(),
            "read model was built by a newer projection version; serving it as it is"
        );
    }
    let checkpoint = read.checkpoint(&name, active.generation)?;
    let (checkpoint_tx, _) = watch::channel(checkpoint);
    Ok(Arc::new(Worker {
        name,
        projection,
        control: Mutex::new(Control {
            rebuild: wants_rebuild,
            ..Control::default()
        }),
        notify: Notify::new(),
        observed: Mutex::new(Observed {
            state: if rebuild.is_some() {
                ProjectionState::Rebuilding
            } else {
                ProjectionState::Running
            },
            active,
            last_error: None,
            failed_position: None,
            rate: Rate::default(),
            rebuild,
            rebuild_rate: Rate::default(),
        }),
        checkpoint: checkpoint_tx,
    }))
}

struct WorkerCtx<S> {
    store: Arc<S>,
    read: Arc<ReadModelStore>,
    filter: ReadFilter,
    worker: Arc<Worker>,
    upcasters: Arc<Upcasters>,
    options: RuntimeOptions,
    shutdown: watch::Receiver<bool>,
}

/// What one applied batch did.
pub(crate) struct Applied {
    /// The generation's checkpoint after the batch.
    pub checkpoint: Position,
    /// The event the batch stopped before (stop policy), with the error.
    pub stopped: Option<(Position, String)>,
    /// The last handler error of the batch.
    pub last_error: Option<String>,
}

/// Applies `events` to one generation and commits their changes, the parked records and
/// the checkpoint `through` in one batch (see [`handle_events`] and [`Handled::write`]):
/// the projection test kit's way through a batch.
#[cfg(any(test, feature = "test-utils"))]
pub(crate) fn apply_events(
    read: &ReadModelStore,
    projection: &dyn Projection,
    generation: Generation,
    events: Vec<RecordedEvent>,
    through: Position,
    upcasters: &Upcasters,
    options: &RuntimeOptions,
) -> Result<Applied, ProjectionError> {
    let handled = handle_events(
        read, projection, generation, events, through, None, upcasters, options,
    )?;
    handled.write(read, projection.name(), generation)?;
    Ok(handled.applied)
}

/// A batch handled but not written yet.
pub(crate) struct Handled {
    /// What the batch did: its checkpoint once written, parked events, a stop.
    pub applied: Applied,
    /// The read-model changes of the events applied; shared, so the next batch can read
    /// them while they are written.
    pub changes: Arc<Changes>,
    /// The dead-letter records of the events parked.
    pub parked: Vec<ParkedEvent>,
    /// The events handled, kept so that freeing them falls to whichever thread drops the
    /// batch (the writer, after the write) rather than to the handler thread, the one a
    /// catch-up waits on.
    _spent: Vec<RecordedEvent>,
}

impl Handled {
    /// Writes the batch: its changes, its parked records and the generation's new
    /// checkpoint in one `WriteBatch`. The only place read models are written.
    fn write(
        &self,
        read: &ReadModelStore,
        name: &str,
        generation: Generation,
    ) -> Result<(), ProjectionError> {
        read.write_page(
            name,
            generation,
            &self.changes,
            &self.parked,
            self.applied.checkpoint,
        )
    }
}

/// Hands `events` to the projection's handler (retrying, parking or stopping on failures)
/// and collects their changes, reading through `base` (the previous batch, while it is
/// being written). Writes nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn handle_events(
    read: &ReadModelStore,
    projection: &dyn Projection,
    generation: Generation,
    mut events: Vec<RecordedEvent>,
    through: Position,
    base: Option<Arc<Changes>>,
    upcasters: &Upcasters,
    options: &RuntimeOptions,
) -> Result<Handled, ProjectionError> {
    let name = projection.name();
    let mut tx = ReadModelTx::with_base(read.view_generation(name, generation), base);
    let mut applied = Applied {
        checkpoint: through,
        stopped: None,
        last_error: None,
    };
    let mut parked = Vec::new();
    'events: for event in events.iter_mut() {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match handle_one(projection, upcasters, event, &mut tx) {
                Ok(()) => {
                    tx.accept();
                    continue 'events;
                }
                Err(error) => {
                    tx.discard();
                    let message = error.to_string();
                    if attempts < options.max_attempts.max(1) {
                        tracing::warn!(projection = name, position = event.position.0, attempts, error = %message, "handler failed; retrying");
                        std::thread::sleep(
                            options.retry_backoff * 2u32.saturating_pow(attempts - 1),
                        );
                        continue;
                    }
                    applied.last_error = Some(message.clone());
                    match projection.poison_policy() {
                        PoisonPolicy::Continue => {
                            tracing::error!(projection = name, position = event.position.0, attempts, error = %message, "event parked");
                            parked.push(ParkedEvent {
                                projection: name.to_string(),
                                position: event.position.0,
                                event_id: event.event_id.to_string(),
                                stream_id: event.stream_id.as_str().to_string(),
                                event_type: event.event_type.clone(),
                                error: message,
                                attempts,
                                parked_at_micros: Timestamp::now().as_micros(),
                            });
                            continue 'events;
                        }
                        PoisonPolicy::Stop => {
                            tracing::error!(projection = name, position = event.position.0, attempts, error = %message, "projection stopped on an event");
                            applied.checkpoint = Position(event.position.0 - 1);
                            applied.stopped = Some((event.position, message));
                            break 'events;
                        }
                    }
                }
            }
        }
    }
    Ok(Handled {
        applied,
        changes: Arc::new(tx.into_changes()),
        parked,
        _spent: events,
    })
}

/// Upcasts and hands one event to the handler; a panic counts as a handler error, so one
/// bad event cannot take the worker down.
fn handle_one(
    projection: &dyn Projection,
    upcasters: &Upcasters,
    event: &mut RecordedEvent,
    tx: &mut ReadModelTx<'_>,
) -> Result<(), HandlerError> {
    upcasters.upcast_recorded(event)?;
    match std::panic::catch_unwind(AssertUnwindSafe(|| projection.handle(event, tx))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".into());
            Err(format!("handler panicked: {what}").into())
        }
    }
}

/// A page read ahead while the previous batch was being applied.
pub(crate) struct ReadAhead {
    generation: Generation,
    from: Position,
    page: EventPage,
}

/// Most pages one [`advance`] handles. While a worker is behind, page *n*'s write runs on
/// one blocking thread while page *n + 1*'s handlers run on another (reading page *n*'s
/// changes beneath their own), so a catch-up keeps both cores busy. The pipeline drains
/// at the end of every `advance` (the last write runs alone): 16 pages instead of 4 made a
/// catch-up up to 10% faster once handling and writing a page took about as long. The bound
/// keeps operator requests (pause, rewind, rebuild) and shutdown waiting at most this many
/// pages (about a second); the checkpoint is published after every page's write.
const PIPELINED_PAGES: usize = 16;

/// The generation an [`advance`] fills: the serving one, or the one a rebuild fills.
#[derive(Clone, Copy)]
enum Fill {
    Serving(Generation),
    Rebuild(RebuildRecord),
}

impl Fill {
    fn generation(self) -> Generation {
        match self {
            Fill::Serving(generation) => generation,
            Fill::Rebuild(record) => record.generation,
        }
    }
}

/// What one [`advance`] did: the pages written, and the error that ended it early, if
/// any. The checkpoint is what the database holds even when there is an error, so the
/// caller's bookkeeping stays true.
struct Advanced {
    applied: Applied,
    error: Option<ProjectionError>,
}

/// Reads the batches after `checkpoint` and applies them to the generation `fill` names,
/// off the async threads, up to [`PIPELINED_PAGES`] pages or `until`. Returns what was
/// written (checkpoint unchanged when nothing was there). Each batch is published (see
/// [`publish`]) as soon as it is written: as the serving generation's checkpoint, or as
/// the rebuild's progress.
///
/// While a batch is handled (on a blocking thread) the next page is read (on the async
/// threads) and the previous batch is written (on another blocking thread); a page read
/// ahead is used only if the next read starts exactly where it does. Each batch's write
/// finishes before the batch after the next one starts, because that batch reads the
/// database beneath only one batch of changes.
async fn advance<S: EventStore>(
    ctx: &WorkerCtx<S>,
    fill: Fill,
    checkpoint: Position,
    until: Position,
    ahead: &mut Option<ReadAhead>,
) -> Advanced {
    let generation = fill.generation();
    let mut applied = Applied {
        checkpoint,
        stopped: None,
        last_error: None,
    };
    let mut handled_through = checkpoint;
    let mut base: Option<Arc<Changes>> = None;
    // The batch being written; the task returns what it did once it is in the database.
    let mut writing: Option<JoinHandle<Result<Applied, ProjectionError>>> = None;
    let mut read_ahead: Option<(Position, JoinHandle<Result<EventPage, StoreError>>)> = None;
    let mut error = None;
    for page_number in 0..PIPELINED_PAGES {
        let from = handled_through.next();
        let page = match read_ahead.take() {
            Some((at, handle)) if at == from => handle
                .await
                .map_err(|e| join_error(ctx, e))
                .and_then(|read| read.map_err(Into::into)),
            _ => match ahead.take() {
                Some(a) if a.generation == generation && a.from == from => Ok(a.page),
                _ => ctx
                    .store
                    .read_all(from, ctx.options.batch_size, &ctx.filter)
                    .await
                    .map_err(Into::into),
            },
        };
        let mut page = match page {
            Ok(page) => page,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        page.events.retain(|e| e.position <= until);
        let through = Position(page.next.0.saturating_sub(1))
            .min(until)
            .max(handled_through);
        if through == handled_through {
            break;
        }
        let last = through >= until || page_number + 1 == PIPELINED_PAGES;
        let next_from = through.next();
        if through < until {
            let store = ctx.store.clone();
            let filter = ctx.filter.clone();
            let limit = ctx.options.batch_size;
            read_ahead = Some((
                next_from,
                tokio::spawn(async move { store.read_all(next_from, limit, &filter).await }),
            ));
        }
        let read = ctx.read.clone();
        let projection = ctx.worker.projection.clone();
        let upcasters = ctx.upcasters.clone();
        let options = ctx.options.clone();
        let below = base.clone();
        // A single page (a live worker's usual case) is handled and written in one task,
        // as there is nothing to overlap.
        let inline = last && writing.is_none();
        let handled = tokio::task::spawn_blocking(move || {
            let handled = handle_events(
                &read,
                projection.as_ref(),
                generation,
                page.events,
                through,
                below,
                &upcasters,
                &options,
            )?;
            if inline {
                handled.write(&read, projection.name(), generation)?;
            }
            Ok(handled)
        })
        .await
        .map_err(|e| join_error(ctx, e))
        .and_then(|handled| handled);
        // The batch before this one must be written before this one is, and before the
        // batch after this one starts.
        if let Some(write) = writing.take()
            && let Err(e) = finish_write(ctx, write, &mut applied, fill).await
        {
            error = Some(e);
            break;
        }
        let handled = match handled {
            Ok(handled) => handled,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        handled_through = handled.applied.checkpoint;
        if inline {
            publish(ctx, &handled.applied, applied.checkpoint, fill);
            merge(&mut applied, handled.applied);
            break;
        }
        let stopped = handled.applied.stopped.is_some();
        // The batch beneath this one is written and no handler reads it any more: this is
        // usually its last reference, and freeing a batch's changes takes as long as
        // encoding them, so the writer frees it after its write instead of this task
        // doing it before the next handler can start.
        let written = if last || stopped {
            base.take()
        } else {
            base.replace(handled.changes.clone())
        };
        let read = ctx.read.clone();
        let name = ctx.worker.name.clone();
        writing = Some(tokio::task::spawn_blocking(move || {
            handled.write(&read, &name, generation)?;
            drop(written);
            Ok(handled.applied)
        }));
        if last || stopped {
            break;
        }
    }
    if let Some(write) = writing.take()
        && let Err(e) = finish_write(ctx, write, &mut applied, fill).await
    {
        error = error.or(Some(e));
    }
    // Keep the page read ahead for the next call if it starts where that call will.
    if let Some((at, handle)) = read_ahead
        && error.is_none()
        && applied.stopped.is_none()
        && at == applied.checkpoint.next()
        && let Ok(Ok(page)) = handle.await
    {
        *ahead = Some(ReadAhead {
            generation,
            from: at,
            page,
        });
    }
    Advanced { applied, error }
}

/// Waits for a batch's write, publishes it and adds what the batch did to `total`.
async fn finish_write<S>(
    ctx: &WorkerCtx<S>,
    write: JoinHandle<Result<Applied, ProjectionError>>,
    total: &mut Applied,
    fill: Fill,
) -> Result<(), ProjectionError> {
    let batch = write.await.map_err(|e| join_error(ctx, e))??;
    publish(ctx, &batch, total.checkpoint, fill);
    merge(total, batch);
    Ok(())
}

/// Makes a written batch visible: its effect in the status first (whoever `wait_for`
/// wakes sees the batch's errors and parks), then its checkpoint for the serving
/// generation, or the progress of the rebuild. `from` is the checkpoint before the batch.
fn publish<S>(ctx: &WorkerCtx<S>, batch: &Applied, from: Position, fill: Fill) {
    let events = batch.checkpoint.0.saturating_sub(from.0);
    report(ctx, batch, events, matches!(fill, Fill::Rebuild(_)));
    match fill {
        Fill::Serving(_) => ctx.worker.advance_checkpoint(batch.checkpoint),
        Fill::Rebuild(record) => ctx
            .worker
            .observe(|o| o.rebuild = Some((record, batch.checkpoint))),
    }
}

/// Adds a written batch's effect to what an [`advance`] did so far.
fn merge(total: &mut Applied, batch: Applied) {
    total.checkpoint = batch.checkpoint;
    if batch.last_error.is_some() {
        total.last_error = batch.last_error;
    }
    if batch.stopped.is_some() {
        total.stopped = batch.stopped;
    }
}

fn join_error<S>(ctx: &WorkerCtx<S>, e: tokio::task::JoinError) -> ProjectionError {
    ProjectionError::InvalidState {
        name: ctx.worker.name.clone(),
        reason: format!("batch task failed: {e}"),
    }
}

/// Everything a worker keeps between iterations.
struct LoopState {
    active: ActiveRecord,
    checkpoint: Position,
    rebuild: Option<(RebuildRecord, Position)>,
    drops: Vec<(Generation, Instant)>,
    /// Pages read ahead for the serving generation and for the rebuild.
    ahead: [Option<ReadAhead>; 2],
}

async fn run_worker<S: EventStore>(ctx: WorkerCtx<S>) {
    let (active, rebuild) = ctx.worker.observe(|o| (o.active, o.rebuild));
    let mut state = LoopState {
        active,
        checkpoint: *ctx.worker.checkpoint.borrow(),
        rebuild,
        drops: Vec::new(),
        ahead: [None, None],
    };
    let mut head_rx = ctx.store.subscribe_head();
    let mut head_open = true;
    let mut shutdown = ctx.shutdown.clone();
    tracing::info!(projection = %ctx.worker.name, checkpoint = state.checkpoint.0, "projection worker started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        let busy = match step(&ctx, &mut state).await {
            Ok(busy) => busy,
            Err(error) => {
                tracing::error!(projection = %ctx.worker.name, error = %error, "projection failed");
                ctx.worker.control.lock().expect("control lock").failed = true;
                ctx.worker.observe(|o| {
                    o.state = ProjectionState::Failed;
                    o.last_error = Some(error.to_string());
                });
                false
            }
        };
        if busy {
            // Give the other tasks of the runtime a turn between batches.
            tokio::task::yield_now().await;
            continue;
        }
        let next_drop = state.drops.iter().map(|(_, at)| *at).min();
        tokio::select! {
            changed = head_rx.changed(), if head_open => {
                if changed.is_err() {
                    head_open = false;
                }
            }
            _ = ctx.worker.notify.notified() => {}
            _ = shutdown.changed() => {}
            _ = sleep_until(next_drop) => {}
        }
    }
    tracing::info!(projection = %ctx.worker.name, checkpoint = state.checkpoint.0, "projection worker stopped");
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One iteration: operator requests, then one batch of each generation. Returns whether
/// there may be more to do right away.
async fn step<S: EventStore>(
    ctx: &WorkerCtx<S>,
    state: &mut LoopState,
) -> Result<bool, ProjectionError> {
    let worker = &ctx.worker;
    let name = worker.name.as_str();
    let (paused, failed, rebuild, rewind, replays) = {
        let mut c = worker.control.lock().expect("control lock");
        (
            c.paused,
            c.failed,
            c.rebuild,
            c.rewind.take(),
            std::mem::take(&mut c.replay),
        )
    };
    for (position, reply) in replays {
        let _ = reply.send(replay_one(ctx, state, position).await);
    }
    if let Some(from) = rewind {
        let to = Position(from.0 - 1);
        ctx.read.rewind(name, state.active.generation, to)?;
        state.checkpoint = to;
        worker.advance_checkpoint(to);
        tracing::info!(projection = name, from = from.0, "projection rewound");
    }
    if rebuild {
        if state.rebuild.is_none() {
            state.rebuild = Some((start_rebuild(ctx, state)?, Position::ZERO));
            worker.observe(|o| o.rebuild = state.rebuild);
        }
        // Cleared only now that the rebuild is visible in the status (see `rebuild`).
        worker.control.lock().expect("control lock").rebuild = false;
    }
    drop_due(ctx, state)?;
    if failed || paused {
        worker.observe(|o| {
            o.state = if failed {
                ProjectionState::Failed
            } else {
                ProjectionState::Paused
            }
        });
        return Ok(false);
    }
    worker.observe(|o| {
        o.state = if state.rebuild.is_some() {
            ProjectionState::Rebuilding
        } else {
            ProjectionState::Running
        };
        o.failed_position = None;
    });
    let head = ctx.store.head();
    let mut busy = false;
    if state.checkpoint < head {
        // Every batch is reported and its checkpoint published as it is written.
        let Advanced { applied, error } = advance(
            ctx,
            Fill::Serving(state.active.generation),
            state.checkpoint,
            head,
            &mut state.ahead[0],
        )
        .await;
        state.checkpoint = applied.checkpoint;
        if let Some(error) = error {
            return Err(error);
        }
        if applied.stopped.is_some() {
            return Ok(false);
        }
        busy = true;
    }
    if let Some((record, done)) = state.rebuild {
        let mut done = done;
        if done < head {
            let Advanced { applied, error } =
                advance(ctx, Fill::Rebuild(record), done, head, &mut state.ahead[1]).await;
            done = applied.checkpoint;
            state.rebuild = Some((record, done));
            if let Some(error) = error {
                return Err(error);
            }
            if applied.stopped.is_some() {
                return Ok(false);
            }
            busy = true;
        }
        if done >= state.checkpoint {
            take_over(ctx, state, record, done)?;
            busy = true;
        }
    }
    if state.rebuild.is_none() {
        worker.observe(|o| o.state = ProjectionState::Running);
    }
    Ok(busy)
}

/// Records a batch's effect in the status, and a stop in the control state.
fn report<S>(ctx: &WorkerCtx<S>, applied: &Applied, events: u64, rebuild: bool) {
    let worker = &ctx.worker;
    if applied.stopped.is_some() {
        worker.control.lock().expect("control lock").failed = true;
    }
    worker.observe(|o| {
        if rebuild {
            o.rebuild_rate.add(events);
        } else {
            o.rate.add(events);
        }
        if let Some(error) = &applied.last_error {
            o.last_error = Some(error.clone());
        }
        if let Some((position, _)) = &applied.stopped {
            o.state = ProjectionState::Failed;
            o.failed_position = Some(*position);
        }
    });
}

fn start_rebuild<S>(
    ctx: &WorkerCtx<S>,
    state: &LoopState,
) -> Result<RebuildRecord, ProjectionError> {
    let name = ctx.worker.name.as_str();
    let highest_dropping = state.drops.iter().map(|(g, _)| *g).max().unwrap_or(0);
    let record = RebuildRecord {
        generation: state.active.generation.max(highest_dropping) + 1,
        version: ctx.worker.projection.version(),
        started_at_micros: Timestamp::now().as_micros(),
    };
    ctx.read.begin_rebuild(name, &record)?;
    tracing::info!(
        projection = name,
        generation = record.generation,
        version = record.version,
        "rebuild started"
    );
    Ok(record)
}

/// Makes the rebuilt generation the serving one, in one batch, and schedules the old one's
/// drop.
fn take_over<S>(
    ctx: &WorkerCtx<S>,
    state: &mut LoopState,
    record: RebuildRecord,
    checkpoint: Position,
) -> Result<(), ProjectionError> {
    let name = ctx.worker.name.as_str();
    let old = state.active.generation;
    let active = ActiveRecord {
        generation: record.generation,
        version: record.version,
    };
    ctx.read.take_over(name, active, old)?;
    state.active = active;
    state.checkpoint = checkpoint;
    state.rebuild = None;
    state
        .drops
        .push((old, Instant::now() + ctx.options.drop_delay));
    ctx.worker.advance_checkpoint(checkpoint);
    ctx.worker.observe(|o| {
        o.active = active;
        o.rebuild = None;
    });
    tracing::info!(
        projection = name,
        generation = active.generation,
        checkpoint = checkpoint.0,
        "rebuilt generation took over"
    );
    Ok(())
}

fn drop_due<S>(ctx: &WorkerCtx<S>, state: &mut LoopState) -> Result<(), ProjectionError> {
    let now = Instant::now();
    let mut kept = Vec::new();
    for (generation, at) in std::mem::take(&mut state.drops) {
        if at <= now {
            ctx.read.drop_generation(&ctx.worker.name, generation)?;
            tracing::info!(projection = %ctx.worker.name, generation, "old generation dropped");
        } else {
            kept.push((generation, at));
        }
    }
    state.drops = kept;
    Ok(())
}

/// Applies one parked event to the serving generation, outside the checkpoint order.
async fn replay_one<S: EventStore>(
    ctx: &WorkerCtx<S>,
    state: &LoopState,
    position: Position,
) -> Result<bool, ProjectionError> {
    let name = ctx.worker.name.as_str();
    let Some(mut record) = ctx.read.parked_event(name, position)? else {
        return Err(ProjectionError::InvalidState {
            name: name.to_string(),
            reason: format!("no parked event at position {position}"),
        });
    };
    let page = ctx.store.read_all(position, 1, &ReadFilter::all()).await?;
    let Some(mut event) = page.events.into_iter().find(|e| e.position == position) else {
        return Err(ProjectionError::InvalidState {
            name: name.to_string(),
            reason: format!("position {position} is not in the log"),
        });
    };
    let read = ctx.read.clone();
    let projection = ctx.worker.projection.clone();
    let upcasters = ctx.upcasters.clone();
    let generation = state.active.generation;
    tokio::task::spawn_blocking(move || {
        let name = projection.name();
        let mut tx = ReadModelTx::new(read.view_generation(name, generation));
        let outcome = handle_one(projection.as_ref(), &upcasters, &mut event, &mut tx);
        match outcome {
            Ok(()) => {
                tx.accept();
                read.write_replayed(tx, name, position)?;
                Ok(true)
            }
            Err(error) => {
                record.attempts += 1;
                record.error = error.to_string();
                read.update_parked(name, position, &record)?;
                Ok(false)
            }
        }
    })
    .await
    .map_err(|e| ProjectionError::InvalidState {
        name: name.to_string(),
        reason: format!("replay task failed: {e}"),
    })?
}

/// Builds a projection's serving generation up to `until` (or the head, if lower) in the
/// calling task, without a worker: for tools and for comparing a read model with a
/// from-scratch build of the same positions.
pub async fn build_until<S: EventStore>(
    store: &Arc<S>,
    read: &Arc<ReadModelStore>,
    projection: Arc<dyn Projection>,
    upcasters: &Arc<Upcasters>,
    options: &RuntimeOptions,
    until: Position,
) -> Result<Position, ProjectionError> {
    let worker = prepare(read, projection)?;
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let ctx = WorkerCtx {
        store: store.clone(),
        read: read.clone(),
        filter: worker.projection.filter(),
        worker: worker.clone(),
        upcasters: upcasters.clone(),
        options: options.clone(),
        shutdown: shutdown_rx,
    };
    let generation = worker.observe(|o| o.active.generation);
    let mut checkpoint = *worker.checkpoint.borrow();
    let until = until.min(store.head());
    let mut ahead = None;
    while checkpoint < until {
        let Advanced { applied, error } = advance(
            &ctx,
            Fill::Serving(generation),
            checkpoint,
            until,
            &mut ahead,
        )
        .await;
        if let Some(error) = error {
            return Err(error);
        }
        if applied.checkpoint == checkpoint || applied.stopped.is_some() {
            break;
        }
        checkpoint = applied.checkpoint;
    }
    Ok(checkpoint)
}
