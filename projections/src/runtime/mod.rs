//! The projection runtime: one worker task per projection that tails the log and keeps
//! its read model (and, during a rebuild, the next generation of it) current.
//!
//! This module is the operators' side: [`ProjectionRuntime`] starts the workers and passes
//! them status queries and requests (pause, resume, rewind, rebuild, replay of a parked
//! event, `wait_for`); [`build_until`] builds a read model in the calling task, without a
//! worker. The rest follows the path of an event:
//!
//! - [`worker`]: a worker's task — its loop, operator requests, state transitions, the
//!   start and take-over of a rebuild, the drops of old generations;
//! - [`pipeline`]: how a worker gets through a run of pages — the next page read while one
//!   is handled on a blocking thread and the one before it written on another, each
//!   page's checkpoint published as it is written;
//! - [`batch`]: one page's events through the handler (retries, parking, stops) into
//!   changes, and their write;
//! - [`status`]: what a status reports (states, rates, rebuild progress).
//!
//! Every page is written as one `WriteBatch` holding its read-model changes and the
//! checkpoint; the runtime never writes the database itself but through the
//! [`ReadModelStore`] operations on its meta records (see `storage::meta`).

mod batch;
mod pipeline;
mod status;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals_store::{EventStore, Position, Upcasters};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::ProjectionError;
use crate::projection::{Projection, validate_name};
use crate::storage::{ParkedEvent, ReadModelStore};
use pipeline::{PipelineRun, Target, run_pipeline};
use worker::{Worker, WorkerCtx, prepare, run_worker};

#[cfg(any(test, feature = "test-utils"))]
pub(crate) use batch::apply_events;
pub use status::{ProjectionState, ProjectionStatus, RebuildProgress};

/// Tuning of the workers.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Most matching events applied in one batch (one `WriteBatch`). Default 16,384: a
    /// catch-up coalesces more repeated rows per write the larger the batch, and the
    /// batch's changes (held in memory until the write) stay in the tens of megabytes.
    pub batch_size: usize,
    /// How many times a failing handler is tried before its event is parked. Default 3:
    /// enough to ride out a transient failure, few enough that a poison event does not
    /// hold its projection back for long.
    pub max_attempts: u32,
    /// Wait before the first retry of a failing handler; doubles with every retry.
    /// Default 20 ms, so the three attempts take well under a second.
    pub retry_backoff: Duration,
    /// How long an old generation stays readable after a take-over, so readers that
    /// started on it finish their query before its rows go. Default 5 s, the longest a
    /// read with `atLeast` waits by default.
    pub drop_delay: Duration,
    /// Shortest time between two batches of a worker that is following the head. Default
    /// 2 ms: under a heavy write load each batch then carries the events of several commit
    /// groups (one read-model write instead of one per group), at the price of up to that
    /// much more lag for a read that waits with `atLeast`. A worker catching up runs its
    /// batches back to back regardless.
    pub min_step_interval: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            batch_size: 16_384,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(20),
            drop_delay: Duration::from_secs(5),
            min_step_interval: Duration::from_millis(2),
        }
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
            let ctx = WorkerCtx::new(
                &store,
                &read,
                worker,
                &upcasters,
                &options,
                shutdown.subscribe(),
            );
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
        w.read_report(|r| {
            let rebuild = r.rebuild.map(|(record, done)| {
                let rate = r.rebuild_rate.per_second();
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
                version: r.active.version,
                generation: r.active.generation,
                state: r.state,
                checkpoint,
                head,
                lag: head.0.saturating_sub(checkpoint.0),
                events_per_second: r.rate.per_second(),
                last_error: r.last_error.clone(),
                failed_position: r.failed_position,
                parked,
                rebuild,
            }
        })
    }

    /// The serving generation's checkpoint of a projection.
    pub fn checkpoint(&self, name: &str) -> Result<Position, ProjectionError> {
        Ok(*self.worker(name)?.checkpoint.borrow())
    }

    /// A watch of the serving generation's checkpoint of a projection: it changes as each
    /// batch's write returns.
    pub fn subscribe_checkpoint(
        &self,
        name: &str,
    ) -> Result<watch::Receiver<Position>, ProjectionError> {
        Ok(self.worker(name)?.checkpoint.subscribe())
    }

    /// Stops a projection after its current batch; queries keep answering from it.
    pub fn pause(&self, name: &str) -> Result<(), ProjectionError> {
        self.worker(name)?.request(|c| c.paused = true);
        Ok(())
    }

    /// Continues a paused projection, or retries the event a failed one stopped on.
    pub fn resume(&self, name: &str) -> Result<(), ProjectionError> {
        self.worker(name)?.request(|c| {
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
            .request(|c| c.rewind = Some(from.max(Position::FIRST)));
        Ok(())
    }

    /// Starts a blue/green rebuild: a new generation is built from position 1 while the
    /// serving one keeps answering and following the log, and takes over atomically when
    /// it has caught up.
    pub fn rebuild(&self, name: &str) -> Result<(), ProjectionError> {
        let worker = self.worker(name)?;
        // Both looked at under the control lock: the worker clears the request only after
        // it has recorded the running rebuild, so one of the two is always visible.
        let refused = worker.request(|c| {
            if c.rebuild || worker.read_report(|r| r.rebuild.is_some()) {
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
        Ok(requested || worker.read_report(|r| r.rebuild.is_some()))
    }

    /// The parked events of a projection.
    pub fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, ProjectionError> {
        self.worker(name)?;
        self.inner.read.parked(name)
    }

    /// Gives up a parked event: its record is dropped and the read model stays without it
    /// (until a rebuild, which hands it to the projection again). `true` when an event was
    /// parked at `position`.
    pub fn discard_parked(&self, name: &str, position: Position) -> Result<bool, ProjectionError> {
        self.worker(name)?;
        self.inner.read.discard_parked(name, position)
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
            .request(|c| c.replay.push((position, tx)));
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
    let ctx = WorkerCtx::new(store, read, &worker, upcasters, options, shutdown_rx);
    let generation = worker.read_report(|r| r.active.generation);
    let mut checkpoint = *worker.checkpoint.borrow();
    let until = until.min(store.head());
    let mut ahead = None;
    while checkpoint < until {
        let PipelineRun { written, error } = run_pipeline(
            &ctx,
            Target::Serving(generation),
            checkpoint,
            until,
            &mut ahead,
        )
        .await;
        if let Some(error) = error {
            return Err(error);
        }
        if written.checkpoint == checkpoint || written.stopped.is_some() {
            break;
        }
        checkpoint = written.checkpoint;
    }
    Ok(checkpoint)
}
