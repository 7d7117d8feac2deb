//! The page pipeline: how a worker gets through a run of pages of one generation. While a
//! page's events are handled on a blocking thread, the next page is read and the page
//! before is written on another blocking thread; each page's checkpoint (or a rebuild's
//! progress) is published as soon as its write returns.

use std::sync::Arc;

use annals_store::{EventPage, EventStore, Position, StoreError};
use tokio::task::JoinHandle;

use super::batch::{BatchOutcome, handle_events};
use super::worker::{WorkerCtx, record_batch};
use crate::error::ProjectionError;
use crate::keys::Generation;
use crate::storage::{Changes, RebuildRecord};

/// A page read ahead while the previous batch was being applied.
pub(super) struct ReadAhead {
    pub(super) generation: Generation,
    pub(super) from: Position,
    pub(super) page: EventPage,
}

/// Most pages one [`run_pipeline`] handles. While a worker is behind, page *n*'s write runs
/// on one blocking thread while page *n + 1*'s handlers run on another (reading page *n*'s
/// changes beneath their own), so a catch-up keeps both cores busy. The pipeline drains at
/// the end of every run (the last write runs alone, one core idle), so a long run keeps
/// those drains rare when handling and writing a page take about as long. The bound keeps
/// operator requests (pause, rewind, rebuild) and shutdown waiting at most this many pages
/// (about a second); the checkpoint is published after every page's write.
const PIPELINED_PAGES: usize = 16;

/// The generation a [`run_pipeline`] fills: the serving one, or the one a rebuild fills.
#[derive(Clone, Copy)]
pub(super) enum Target {
    /// The generation serving the readers: its checkpoint is published as it moves.
    Serving(Generation),
    /// The generation a rebuild fills: its progress is reported as it moves.
    Rebuild(RebuildRecord),
}

impl Target {
    /// The generation filled.
    pub(super) fn generation(self) -> Generation {
        match self {
            Target::Serving(generation) => generation,
            Target::Rebuild(record) => record.generation,
        }
    }
}

/// What one [`run_pipeline`] did: the pages written, and the error that ended it early, if
/// any. The checkpoint is what the database holds even when there is an error, so the
/// caller's bookkeeping stays true.
pub(super) struct PipelineRun {
    /// What the pages written did, merged.
    pub(super) written: BatchOutcome,
    /// The error that ended the run early.
    pub(super) error: Option<ProjectionError>,
}

/// Reads the batches after `checkpoint` and applies them to the generation `target` names,
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
pub(super) async fn run_pipeline<S: EventStore>(
    ctx: &WorkerCtx<S>,
    target: Target,
    checkpoint: Position,
    until: Position,
    ahead: &mut Option<ReadAhead>,
) -> PipelineRun {
    let generation = target.generation();
    let mut total = BatchOutcome {
        checkpoint,
        stopped: None,
        last_error: None,
    };
    let mut handled_through = checkpoint;
    let mut base: Option<Arc<Changes>> = None;
    // The batch being written; the task returns what it did once it is in the database.
    let mut writing: Option<JoinHandle<Result<BatchOutcome, ProjectionError>>> = None;
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
            && let Err(e) = finish_write(ctx, write, &mut total, target).await
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
        handled_through = handled.outcome.checkpoint;
        if inline {
            publish(ctx, &handled.outcome, total.checkpoint, target);
            merge(&mut total, handled.outcome);
            break;
        }
        let stopped = handled.outcome.stopped.is_some();
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
            Ok(handled.outcome)
        }));
        if last || stopped {
            break;
        }
    }
    if let Some(write) = writing.take()
        && let Err(e) = finish_write(ctx, write, &mut total, target).await
    {
        error = error.or(Some(e));
    }
    // Keep the page read ahead for the next call if it starts where that call will.
    if let Some((at, handle)) = read_ahead
        && error.is_none()
        && total.stopped.is_none()
        && at == total.checkpoint.next()
        && let Ok(Ok(page)) = handle.await
    {
        *ahead = Some(ReadAhead {
            generation,
            from: at,
            page,
        });
    }
    PipelineRun {
        written: total,
        error,
    }
}

/// Waits for a batch's write, publishes it and adds what the batch did to `total`.
async fn finish_write<S>(
    ctx: &WorkerCtx<S>,
    write: JoinHandle<Result<BatchOutcome, ProjectionError>>,
    total: &mut BatchOutcome,
    target: Target,
) -> Result<(), ProjectionError> {
    let batch = write.await.map_err(|e| join_error(ctx, e))??;
    publish(ctx, &batch, total.checkpoint, target);
    merge(total, batch);
    Ok(())
}

/// Makes a written batch visible: its effect in the status first (whoever `wait_for`
/// wakes sees the batch's errors and parks), then its checkpoint for the serving
/// generation, or the progress of the rebuild. `from` is the checkpoint before the batch.
fn publish<S>(ctx: &WorkerCtx<S>, batch: &BatchOutcome, from: Position, target: Target) {
    let events = batch.checkpoint.0.saturating_sub(from.0);
    record_batch(ctx, batch, events, matches!(target, Target::Rebuild(_)));
    match target {
        Target::Serving(_) => ctx.worker.publish_checkpoint(batch.checkpoint),
        Target::Rebuild(record) => ctx
            .worker
            .record(|r| r.rebuild = Some((record, batch.checkpoint))),
    }
}

/// Adds a written batch's effect to what a [`run_pipeline`] did so far.
fn merge(total: &mut BatchOutcome, batch: BatchOutcome) {
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
