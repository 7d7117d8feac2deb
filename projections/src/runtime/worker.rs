//! A projection's worker: its shared record ([`Worker`]: operator requests, reported
//! status, published checkpoint), how it is prepared from the meta records, and its task —
//! the loop that takes operator requests, moves the state, drives the serving generation
//! and a rebuild's generation through the page pipeline, takes over and drops old
//! generations.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals_store::{EventStore, Position, ReadFilter, Timestamp, Upcasters};
use tokio::sync::{Notify, oneshot, watch};

use super::RuntimeOptions;
use super::batch::{BatchOutcome, handle_one};
use super::pipeline::{PipelineRun, ReadAhead, Target, run_pipeline};
use super::status::{ProjectionState, Rate};
use crate::error::ProjectionError;
use crate::keys::Generation;
use crate::projection::Projection;
use crate::storage::{ActiveRecord, ReadModelStore, ReadModelTx, RebuildRecord};

/// Where a replay's outcome goes: applied (`true`) or parked again (`false`).
pub(super) type ReplayReply = oneshot::Sender<Result<bool, ProjectionError>>;

/// What operators ask of a worker.
#[derive(Default)]
pub(super) struct Control {
    /// Set by `pause`, cleared by `resume`.
    pub(super) paused: bool,
    /// Set by the worker when it stopped on an event (stop policy) or a storage error;
    /// cleared by `resume`.
    pub(super) failed: bool,
    /// A rebuild is asked for; cleared by the worker once the rebuild shows in its report.
    pub(super) rebuild: bool,
    /// The position to restart the serving generation from.
    pub(super) rewind: Option<Position>,
    /// Parked events to hand to the projection again, each with whom to tell the outcome.
    pub(super) replay: Vec<(Position, ReplayReply)>,
}

/// What the worker reports for [`ProjectionRuntime::status`](super::ProjectionRuntime::status):
/// written only by the worker (through [`Worker::record`]), read by the runtime.
pub(super) struct Report {
    pub(super) state: ProjectionState,
    pub(super) active: ActiveRecord,
    pub(super) last_error: Option<String>,
    pub(super) failed_position: Option<Position>,
    pub(super) rate: Rate,
    pub(super) rebuild: Option<(RebuildRecord, Position)>,
    pub(super) rebuild_rate: Rate,
}

/// What a projection's worker task shares with the runtime: operator requests one way,
/// its report and checkpoint the other.
pub(super) struct Worker {
    pub(super) projection: Arc<dyn Projection>,
    pub(super) name: String,
    pub(super) control: Mutex<Control>,
    pub(super) notify: Notify,
    pub(super) report: Mutex<Report>,
    /// The serving generation's checkpoint; `wait_for` waits on it.
    pub(super) checkpoint: watch::Sender<Position>,
}

impl Worker {
    /// Changes what the worker reports (its state, errors, rates, rebuild progress).
    pub(super) fn record<R>(&self, f: impl FnOnce(&mut Report) -> R) -> R {
        f(&mut self.report.lock().expect("report lock"))
    }

    /// Reads what the worker reports.
    pub(super) fn read_report<R>(&self, f: impl FnOnce(&Report) -> R) -> R {
        f(&self.report.lock().expect("report lock"))
    }

    /// Changes what operators ask of the worker, and wakes it to act on it.
    pub(super) fn request<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        let r = f(&mut self.control.lock().expect("control lock"));
        self.notify.notify_one();
        r
    }

    /// Publishes the serving generation's checkpoint (forwards as batches are written,
    /// backwards on a rewind), waking the `wait_for`s it satisfies.
    pub(super) fn publish_checkpoint(&self, to: Position) {
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

/// Loads (or creates) a projection's records and drops generations left to drop.
pub(super) fn prepare(
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
        report: Mutex::new(Report {
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

/// What a worker task works with: the log, the read-model database, its shared record and
/// the runtime's settings.
pub(super) struct WorkerCtx<S> {
    pub(super) store: Arc<S>,
    pub(super) read: Arc<ReadModelStore>,
    pub(super) filter: ReadFilter,
    pub(super) worker: Arc<Worker>,
    pub(super) upcasters: Arc<Upcasters>,
    pub(super) options: RuntimeOptions,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl<S> WorkerCtx<S> {
    /// The context of `worker`, reading the events its projection's filter selects.
    pub(super) fn new(
        store: &Arc<S>,
        read: &Arc<ReadModelStore>,
        worker: &Arc<Worker>,
        upcasters: &Arc<Upcasters>,
        options: &RuntimeOptions,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            store: store.clone(),
            read: read.clone(),
            filter: worker.projection.filter(),
            worker: worker.clone(),
            upcasters: upcasters.clone(),
            options: options.clone(),
            shutdown,
        }
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

/// A worker's task: steps while there is work, then sleeps until the head moves, an
/// operator asks for something, an old generation is due to be dropped or the runtime
/// shuts down.
pub(super) async fn run_worker<S: EventStore>(ctx: WorkerCtx<S>) {
    let (active, rebuild) = ctx.worker.read_report(|r| (r.active, r.rebuild));
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
    let mut last_step = Instant::now();
    // A step that failed on storage (a full disk, say) is retried after this long, doubled
    // at each failure in a row: the read models catch up on their own once the cause is
    // gone, as the log does. A handler's failure is not retried here: its event is parked
    // or stops the projection (its policy), and an operator resumes it.
    let mut backoff: Option<Duration> = None;
    let mut retry_at: Option<Instant> = None;
    tracing::info!(projection = %ctx.worker.name, checkpoint = state.checkpoint.0, "projection worker started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        let busy = match step(&ctx, &mut state).await {
            Ok(busy) => {
                if backoff.take().is_some() {
                    tracing::info!(projection = %ctx.worker.name, "projection recovered");
                }
                busy
            }
            Err(error) => {
                tracing::error!(projection = %ctx.worker.name, error = %error, "projection failed");
                ctx.worker.control.lock().expect("control lock").failed = true;
                ctx.worker.record(|r| {
                    r.state = ProjectionState::Failed;
                    r.last_error = Some(error.to_string());
                });
                let wait = backoff.map_or(STORAGE_RETRY_FIRST, |b| (b * 2).min(STORAGE_RETRY_MAX));
                backoff = Some(wait);
                retry_at = Some(Instant::now() + wait);
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
                // Following the head under load: let a few more commit groups in, so
                // one batch (one read-model write) carries them all.
                let next_step = last_step + ctx.options.min_step_interval;
                if next_step > Instant::now() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(next_step.into()) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
            _ = ctx.worker.notify.notified() => {}
            _ = shutdown.changed() => {}
            _ = sleep_until(next_drop) => {}
            _ = sleep_until(retry_at) => {
                // Retried like an operator's resume; a failure again waits longer.
                retry_at = None;
                ctx.worker.control.lock().expect("control lock").failed = false;
            }
        }
        last_step = Instant::now();
    }
    tracing::info!(projection = %ctx.worker.name, checkpoint = state.checkpoint.0, "projection worker stopped");
}

/// The first wait before a step that failed on storage is retried.
const STORAGE_RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between retries.
const STORAGE_RETRY_MAX: Duration = Duration::from_secs(30);

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
        worker.publish_checkpoint(to);
        tracing::info!(projection = name, from = from.0, "projection rewound");
    }
    if rebuild {
        if state.rebuild.is_none() {
            state.rebuild = Some((start_rebuild(ctx, state)?, Position::ZERO));
            worker.record(|r| r.rebuild = state.rebuild);
        }
        // Cleared only now that the rebuild is visible in the status (see `rebuild`).
        worker.control.lock().expect("control lock").rebuild = false;
    }
    drop_due(ctx, state)?;
    if failed || paused {
        worker.record(|r| {
            r.state = if failed {
                ProjectionState::Failed
            } else {
                ProjectionState::Paused
            }
        });
        return Ok(false);
    }
    worker.record(|r| {
        r.state = if state.rebuild.is_some() {
            ProjectionState::Rebuilding
        } else {
            ProjectionState::Running
        };
        r.failed_position = None;
    });
    let head = ctx.store.head();
    let mut busy = false;
    if state.checkpoint < head {
        // Every batch is reported and its checkpoint published as it is written.
        let PipelineRun { written, error } = run_pipeline(
            ctx,
            Target::Serving(state.active.generation),
            state.checkpoint,
            head,
            &mut state.ahead[0],
        )
        .await;
        state.checkpoint = written.checkpoint;
        if let Some(error) = error {
            return Err(error);
        }
        if written.stopped.is_some() {
            return Ok(false);
        }
        busy = true;
    }
    if let Some((record, done)) = state.rebuild {
        let mut done = done;
        if done < head {
            let PipelineRun { written, error } = run_pipeline(
                ctx,
                Target::Rebuild(record),
                done,
                head,
                &mut state.ahead[1],
            )
            .await;
            done = written.checkpoint;
            state.rebuild = Some((record, done));
            if let Some(error) = error {
                return Err(error);
            }
            if written.stopped.is_some() {
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
        worker.record(|r| r.state = ProjectionState::Running);
    }
    Ok(busy)
}

/// Records a batch's effect in the status, and a stop in the control state.
pub(super) fn record_batch<S>(
    ctx: &WorkerCtx<S>,
    batch: &BatchOutcome,
    events: u64,
    rebuild: bool,
) {
    let worker = &ctx.worker;
    if batch.stopped.is_some() {
        worker.control.lock().expect("control lock").failed = true;
    }
    worker.record(|r| {
        if rebuild {
            r.rebuild_rate.add(events);
        } else {
            r.rate.add(events);
        }
        if let Some(error) = &batch.last_error {
            r.last_error = Some(error.clone());
        }
        if let Some((position, _)) = &batch.stopped {
            r.state = ProjectionState::Failed;
            r.failed_position = Some(*position);
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
    ctx.worker.publish_checkpoint(checkpoint);
    ctx.worker.record(|r| {
        r.active = active;
        r.rebuild = None;
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
