//! `annals bench catchup`: how fast the reference read models are built from a log of
//! domain events (the sample log, generated first in large commits with `Buffered`
//! durability).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{read_models, sample};
use annals_projections::{ProjectionRuntime, ReadModelStore, RuntimeOptions};
use annals_store::{EventStore, RocksEventStore, StoreError};
use serde::Serialize;

use super::stats::{self, Meter, RunFigures};
use super::{BenchDir, BenchError, Machine};

/// What to measure.
#[derive(Clone, Debug)]
pub struct CatchupBench {
    /// Events in the generated log.
    pub events: u64,
    /// Where to write (a fresh temporary directory when none).
    pub data_dir: Option<PathBuf>,
    /// Most events per projection batch (the runtime's default when none).
    pub batch_size: Option<usize>,
    /// After the catch-up, also time a blue/green rebuild of every projection while the
    /// runtime stays live (from the request to the last take-over).
    pub rebuild: bool,
}

/// How long the blue/green rebuild of every projection took.
#[derive(Clone, Debug, Serialize)]
pub struct RebuildFigures {
    /// Seconds from the rebuild requests to the last take-over.
    pub seconds: f64,
    /// Log positions rebuilt per second (the head over the seconds).
    pub events_per_second: f64,
}

/// What `annals bench catchup` reports.
#[derive(Clone, Debug, Serialize)]
pub struct CatchupReport {
    /// Always `catchup`.
    pub benchmark: &'static str,
    /// The machine and build.
    pub machine: Machine,
    /// The projections built.
    pub projections: Vec<String>,
    /// Seconds it took to generate the log (not part of the figures).
    pub log_build_seconds: f64,
    /// Figures: events are log positions caught up by every projection; one operation is
    /// the whole catch-up.
    pub annals: RunFigures,
    /// The store's head: the log the projections caught up with.
    pub store_head: u64,
    /// When each projection reached the head, from the start of the catch-up.
    pub per_projection: Vec<ProjectionSeconds>,
    /// The rebuild after the catch-up, with `--rebuild`.
    pub rebuild: Option<RebuildFigures>,
}

/// When one projection reached the head.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectionSeconds {
    /// The projection.
    pub name: String,
    /// Seconds from the start of the catch-up (polled every 10 ms).
    pub seconds: f64,
}

/// Runs the benchmark.
pub fn run_catchup(bench: &CatchupBench) -> Result<CatchupReport, BenchError> {
    if bench.events == 0 {
        return Err(BenchError::Invalid("--events must be at least 1".into()));
    }
    if bench.batch_size == Some(0) {
        return Err(BenchError::Invalid(
            "--batch-size must be at least 1".into(),
        ));
    }
    let dir = BenchDir::new(bench.data_dir.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let store = match RocksEventStore::open(dir.path().join("log"), sample::log_options()) {
        Ok(store) => Arc::new(store),
        Err(StoreError::Locked { path }) => {
            return Err(BenchError::InUse(path.display().to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    let started = Instant::now();
    rt.block_on(sample::build_log(&store, bench.events))?;
    let log_build_seconds = started.elapsed().as_secs_f64();
    let head = store.head();
    let read_dir = tempfile::Builder::new()
        .prefix("annals-bench-read-")
        .tempdir_in(dir.path())?;
    let read = Arc::new(ReadModelStore::open(read_dir.path())?);
    let mut options = RuntimeOptions::default();
    if let Some(size) = bench.batch_size {
        options.batch_size = size;
    }
    let meter = Meter::new();
    let (elapsed, names, per_projection, rebuild) = rt.block_on(async {
        let started = Instant::now();
        let runtime = read_models::start(store.clone(), read, options)?;
        // Each projection's own finish time: the slowest one is the catch-up time, and the
        // gap between them shows which read model to make cheaper.
        let names = runtime.names();
        let mut finished: Vec<Option<f64>> = vec![None; names.len()];
        let mut last = Instant::now();
        while finished.iter().any(Option::is_none) {
            for (i, status) in runtime.status().into_iter().enumerate() {
                if status.state == annals_projections::ProjectionState::Failed {
                    return Err(BenchError::Invalid(format!(
                        "projection {} failed: {}",
                        status.name,
                        status.last_error.unwrap_or_default()
                    )));
                }
                if finished[i].is_none() && status.checkpoint >= head {
                    finished[i] = Some(started.elapsed().as_secs_f64());
                }
            }
            if last.elapsed() >= Duration::from_secs(1) {
                let done: u64 = runtime
                    .status()
                    .iter()
                    .map(|s| s.checkpoint.0)
                    .min()
                    .unwrap_or(0);
                super::progress(&format!("catch-up: {done}/{} events", head.0));
                last = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let per_projection = names
            .iter()
            .zip(finished)
            .map(|(name, seconds)| ProjectionSeconds {
                name: name.clone(),
                seconds: seconds.unwrap_or_default(),
            })
            .collect::<Vec<_>>();
        let elapsed = started.elapsed();
        let rebuild = if bench.rebuild {
            super::progress_done();
            Some(time_rebuild(&runtime, head).await?)
        } else {
            None
        };
        runtime.shutdown().await;
        Ok::<_, BenchError>((elapsed, names, per_projection, rebuild))
    })?;
    super::progress_done();
    meter.record(head.0);
    let mut latency = stats::histogram();
    stats::record(&mut latency, elapsed);
    store.close();
    Ok(CatchupReport {
        benchmark: "catchup",
        machine: Machine::current(),
        projections: names,
        log_build_seconds,
        annals: stats::figures(&meter, elapsed, &latency, &[]),
        store_head: head.0,
        per_projection,
        rebuild,
    })
}

/// Rebuilds every projection blue/green and waits for the last take-over.
async fn time_rebuild(
    runtime: &ProjectionRuntime,
    head: annals_store::Position,
) -> Result<RebuildFigures, BenchError> {
    let started = Instant::now();
    let names = runtime.names();
    for name in &names {
        runtime.rebuild(name)?;
    }
    let mut last = Instant::now();
    loop {
        let mut running = false;
        for name in &names {
            running |= runtime.is_rebuilding(name)?;
        }
        if !running {
            break;
        }
        if last.elapsed() >= Duration::from_secs(1) {
            let done = runtime
                .status()
                .iter()
                .filter_map(|s| s.rebuild.as_ref().map(|r| r.checkpoint.0))
                .min()
                .unwrap_or(head.0);
            super::progress(&format!("rebuild: {done}/{} events", head.0));
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    super::progress_done();
    let seconds = started.elapsed().as_secs_f64();
    Ok(RebuildFigures {
        seconds,
        events_per_second: head.0 as f64 / seconds,
    })
}
