//! `annals bench append`: concurrent writers appending with exact expected versions, and
//! the same workload on raw RocksDB in the same invocation.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use annals_cluster::{ClusterEventStore, ClusterOptions};
use annals_store::baseline::RawDb;
use annals_store::{
    Durability, EventStore, ExpectedVersion, NewEvent, RocksEventStore, StoreError, StoreOptions,
    StreamId,
};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::stats::{self, Meter, RunFigures, Sampler};
use super::{BenchDir, BenchError, Limit, Machine};

/// What to measure.
#[derive(Clone, Debug)]
pub struct AppendBench {
    /// Concurrent writers.
    pub writers: usize,
    /// Events per append.
    pub events_per_append: usize,
    /// Payload bytes per event.
    pub payload_bytes: usize,
    /// Writers share this many streams (contention) instead of each owning one.
    pub streams: Option<usize>,
    /// When an append is acknowledged.
    pub durability: Durability,
    /// When to stop.
    pub limit: Limit,
    /// Where to write (a fresh temporary directory when none).
    pub data_dir: Option<PathBuf>,
    /// Also run the same workload on raw RocksDB, alternating with Annals.
    pub baseline: bool,
    /// NATS servers of a cluster to append through (a fresh cluster name per run); the
    /// embedded store runs the same workload in the same invocation, alternating.
    pub cluster: Vec<String>,
}

/// The conditions of a run.
#[derive(Clone, Debug, Serialize)]
pub struct AppendConditions {
    /// Concurrent writers.
    pub writers: usize,
    /// Events per append.
    pub events_per_append: usize,
    /// Payload bytes per event.
    pub payload_bytes: usize,
    /// Shared streams, if the writers contend.
    pub shared_streams: Option<usize>,
    /// `fsync` or `buffered`.
    pub durability: &'static str,
    /// When the run stopped.
    pub limit: Limit,
    /// Rounds per side (Annals and baseline alternate).
    pub rounds: usize,
    /// The machine and build.
    pub machine: Machine,
}

impl AppendConditions {
    fn of(bench: &AppendBench, rounds: usize) -> Self {
        Self {
            writers: bench.writers,
            events_per_append: bench.events_per_append,
            payload_bytes: bench.payload_bytes,
            shared_streams: bench.streams,
            durability: durability_name(bench.durability),
            limit: bench.limit,
            rounds,
            machine: Machine::current(),
        }
    }
}

/// What `annals bench append` reports.
#[derive(Clone, Debug, Serialize)]
pub struct AppendReport {
    /// Always `append`.
    pub benchmark: &'static str,
    /// Under what conditions.
    pub conditions: AppendConditions,
    /// Annals' figures.
    pub annals: RunFigures,
    /// Mean events per group commit (per fsync with `fsync`).
    pub mean_group_commit_events: f64,
    /// Where the writer thread's time went and how many events each WAL sync covered.
    pub writer: WriterBreakdown,
    /// Appends that hit a wrong expected version and were retried (shared streams).
    pub conflicts: u64,
    /// The store's head afterwards: every event the run reports is in the log.
    pub store_head: u64,
    /// Raw RocksDB's figures for the same workload, if asked.
    pub baseline: Option<RunFigures>,
    /// Annals events/s ÷ raw RocksDB records/s.
    pub ratio: Option<f64>,
    /// `embedded`, or `cluster` when `annals` are the figures of appends through a
    /// cluster.
    pub target: &'static str,
    /// With a cluster: the embedded store's figures for the same workload.
    pub embedded: Option<RunFigures>,
    /// With a cluster: cluster events/s ÷ embedded events/s.
    pub embedded_ratio: Option<f64>,
}

/// The writer's time over the Annals rounds, from the store's own counters.
#[derive(Clone, Debug, Serialize)]
pub struct WriterBreakdown {
    /// WAL syncs made (0 with `buffered`).
    pub syncs: u64,
    /// Mean events made durable by one WAL sync.
    pub events_per_sync: f64,
    /// Mean duration of one WAL sync, in microseconds.
    pub mean_sync_micros: f64,
    /// Microseconds per event the writer spent checking requests and encoding records.
    pub stage_micros_per_event: f64,
    /// Microseconds per event spent in RocksDB writes (memtables and WAL buffer).
    pub write_micros_per_event: f64,
}

impl WriterBreakdown {
    fn from_stats(s: &annals_store::StoreStats) -> Self {
        let per = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        Self {
            syncs: s.syncs,
            events_per_sync: per(s.events, s.syncs),
            mean_sync_micros: per(s.sync_nanos, s.syncs) / 1e3,
            stage_micros_per_event: per(s.stage_nanos, s.events) / 1e3,
            write_micros_per_event: per(s.write_nanos, s.events) / 1e3,
        }
    }
}

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Fsync => "fsync",
        Durability::Buffered => "buffered",
    }
}

/// A JSON payload of about `bytes` bytes, like a typical domain event.
fn payload(bytes: usize) -> Vec<u8> {
    let head = r#"{"order_id":"o-1","total_cents":1234,"note":""#;
    let filler = "x".repeat(bytes.saturating_sub(head.len() + 2));
    format!("{head}{filler}\"}}").into_bytes()
}

/// Hands out operations until the limit: a deadline, or a budget of operations.
#[derive(Clone)]
pub(crate) struct Budget {
    deadline: Option<Instant>,
    left: Option<Arc<AtomicU64>>,
}

impl Budget {
    fn new(limit: Limit, per_op: usize) -> Self {
        match limit {
            Limit::Duration(d) => Self {
                deadline: Some(Instant::now() + d),
                left: None,
            },
            Limit::Events(n) | Limit::Requests(n) => Self {
                deadline: None,
                left: Some(Arc::new(AtomicU64::new(n.div_ceil(per_op as u64)))),
            },
        }
    }

    pub(crate) fn take(&self) -> bool {
        if let Some(deadline) = self.deadline {
            return Instant::now() < deadline;
        }
        self.left.as_ref().is_some_and(|left| {
            left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        })
    }
}

/// A budget for `limit` counted in operations of one event each.
pub(crate) fn budget(limit: Limit) -> Budget {
    Budget::new(limit, 1)
}

/// Splits a limit over `rounds` rounds.
fn per_round(limit: Limit, rounds: usize) -> Limit {
    match limit {
        Limit::Duration(d) => Limit::Duration(d / rounds as u32),
        Limit::Events(n) => Limit::Events(n.div_ceil(rounds as u64)),
        Limit::Requests(n) => Limit::Requests(n.div_ceil(rounds as u64)),
    }
}

struct Round {
    meter: Meter,
    elapsed: Duration,
    latency: Histogram<u64>,
    rates: Vec<f64>,
    conflicts: u64,
}

/// Runs the benchmark.
pub fn run_append(bench: &AppendBench) -> Result<AppendReport, BenchError> {
    if bench.writers == 0 || bench.events_per_append == 0 {
        return Err(BenchError::Invalid(
            "--writers and --events-per-append must be at least 1".into(),
        ));
    }
    if bench.streams == Some(0) {
        return Err(BenchError::Invalid("--streams must be at least 1".into()));
    }
    if matches!(
        bench.limit,
        Limit::Events(0) | Limit::Requests(0) | Limit::Duration(Duration::ZERO)
    ) {
        return Err(BenchError::Invalid(
            "the run must have a positive --duration or --events".into(),
        ));
    }
    let dir = BenchDir::new(bench.data_dir.as_deref())?;
    if !bench.cluster.is_empty() {
        return run_cluster(bench, &dir);
    }
    let rounds = if bench.baseline { 2 } else { 1 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let store = open_embedded(&dir, bench)?;
    let raw = if bench.baseline {
        Some(RawDb::open(dir.path().join("raw-baseline")).map_err(BenchError::Baseline)?)
    } else {
        None
    };
    let before = store.stats();
    let mut annals_rounds = Vec::new();
    let mut raw_rounds = Vec::new();
    for round in 0..rounds {
        let limit = per_round(bench.limit, rounds);
        annals_rounds.push(rt.block_on(annals_round(&store, bench, limit, round))?);
        if let Some(raw) = &raw {
            raw_rounds.push(raw_round(raw, bench, limit, round)?);
        }
    }
    super::progress_done();
    let after = store.stats();
    let store_head = store.head().0;
    store.close();
    let commits = after.commits - before.commits;
    let events = after.events - before.events;
    let annals = merge(&annals_rounds);
    let baseline = (!raw_rounds.is_empty()).then(|| merge(&raw_rounds));
    let ratio = baseline
        .as_ref()
        .map(|b| annals.events_per_second / b.events_per_second.max(1e-9));
    Ok(AppendReport {
        benchmark: "append",
        conditions: AppendConditions::of(bench, rounds),
        mean_group_commit_events: if commits == 0 {
            0.0
        } else {
            events as f64 / commits as f64
        },
        writer: WriterBreakdown::from_stats(&after.since(&before)),
        conflicts: annals_rounds.iter().map(|r| r.conflicts).sum(),
        store_head,
        annals,
        baseline,
        ratio,
        target: "embedded",
        embedded: None,
        embedded_ratio: None,
    })
}

fn store_options(bench: &AppendBench, durability: Durability) -> StoreOptions {
    StoreOptions {
        max_events_per_append: bench.events_per_append.max(1000),
        ..StoreOptions::with_durability(durability)
    }
}

/// The embedded store in the run's directory.
fn open_embedded(dir: &BenchDir, bench: &AppendBench) -> Result<RocksEventStore, BenchError> {
    match RocksEventStore::open(
        dir.path().join("log"),
        store_options(bench, bench.durability),
    ) {
        Ok(store) => Ok(store),
        Err(StoreError::Locked { path }) => Err(BenchError::InUse(path.display().to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Appends through a cluster (this process is its only node, so it writes), alternating
/// with the embedded store on the same workload; the cluster's stream and lease bucket
/// are removed afterwards.
fn run_cluster(bench: &AppendBench, dir: &BenchDir) -> Result<AppendReport, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let name = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut options = ClusterOptions::new(bench.cluster.iter().cloned());
    options.name = name.clone();
    options.node_id = "bench".into();
    options.store = store_options(bench, Durability::Fsync);
    let cluster_error = |e: &dyn std::fmt::Display| BenchError::Invalid(format!("cluster: {e}"));
    let cluster = rt
        .block_on(ClusterEventStore::start(
            dir.path().join("cluster-log"),
            options,
        ))
        .map_err(|e| cluster_error(&e))?;
    rt.block_on(async {
        let started = Instant::now();
        while !cluster.is_leading() {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(cluster_error(
                    &"this node did not get the write lease in 30 s",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })?;
    let embedded = open_embedded(dir, bench)?;
    let rounds = 2;
    let before = EventStore::stats(&cluster);
    let (mut cluster_rounds, mut embedded_rounds) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let limit = per_round(bench.limit, rounds);
        cluster_rounds.push(rt.block_on(annals_round(&cluster, bench, limit, round))?);
        embedded_rounds.push(rt.block_on(annals_round(&embedded, bench, limit, round))?);
    }
    super::progress_done();
    let after = EventStore::stats(&cluster);
    let store_head = cluster.head().0;
    embedded.close();
    rt.block_on(cluster.shutdown());
    if let Err(error) = rt.block_on(annals_cluster::remove_cluster(&bench.cluster, &name)) {
        tracing::warn!(%error, cluster = %name, "cannot remove the benchmark's stream and bucket");
    }
    let delta = after.since(&before);
    let annals = merge(&cluster_rounds);
    let embedded = merge(&embedded_rounds);
    let embedded_ratio = annals.events_per_second / embedded.events_per_second.max(1e-9);
    Ok(AppendReport {
        benchmark: "append",
        conditions: AppendConditions::of(bench, rounds),
        mean_group_commit_events: delta.mean_commit_events(),
        writer: WriterBreakdown::from_stats(&delta),
        conflicts: cluster_rounds.iter().map(|r| r.conflicts).sum(),
        store_head,
        annals,
        baseline: None,
        ratio: None,
        target: "cluster",
        embedded: Some(embedded),
        embedded_ratio: Some(embedded_ratio),
    })
}

/// Sums rounds: counts and time add up, latencies merge, the first second is the first
/// round's and the last second the last round's.
fn merge(rounds: &[Round]) -> RunFigures {
    let mut latency = stats::histogram();
    let mut elapsed = Duration::ZERO;
    let totals = Meter::new();
    for round in rounds {
        let _ = latency.add(&round.latency);
        elapsed += round.elapsed;
        totals.add(&round.meter);
    }
    // A round shorter than a second has no sampled second: its mean rate stands in.
    let mean = |r: &Round| r.meter.events() as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let first = rounds
        .first()
        .map_or(0.0, |r| r.rates.first().copied().unwrap_or_else(|| mean(r)));
    let last = rounds
        .last()
        .map_or(0.0, |r| r.rates.last().copied().unwrap_or_else(|| mean(r)));
    stats::figures(&totals, elapsed, &latency, &[first, last])
}

async fn annals_round<S: EventStore + Clone>(
    store: &S,
    bench: &AppendBench,
    limit: Limit,
    round: usize,
) -> Result<Round, BenchError> {
    let budget = Budget::new(limit, bench.events_per_append);
    let meter = Meter::new();
    let sampler = Sampler::start(&meter, format!("annals round {}", round + 1));
    let payload = Arc::new(payload(bench.payload_bytes));
    // Shared streams: writers take turns over them, each append with the version the
    // writers last saw (a conflict refreshes it and retries).
    let shared: Arc<Vec<(StreamId, AtomicU64)>> = Arc::new(match bench.streams {
        Some(n) => {
            let mut streams = Vec::with_capacity(n);
            for i in 0..n {
                let id = StreamId::new(format!("bench-shared-{i}"))?;
                let version = store.stream_version(&id).await?;
                streams.push((id, AtomicU64::new(version)));
            }
            streams
        }
        None => Vec::new(),
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..bench.writers {
        let store = store.clone();
        let budget = budget.clone();
        let meter = meter.clone();
        let payload = payload.clone();
        let shared = shared.clone();
        let per_append = bench.events_per_append;
        tasks.push(tokio::spawn(async move {
            let mut latency = stats::histogram();
            let mut conflicts = 0u64;
            let own = StreamId::new(format!("bench-w{w}"))?;
            let mut own_version = store.stream_version(&own).await?;
            let mut turn = w;
            while budget.take() {
                loop {
                    let (stream, expected) = if shared.is_empty() {
                        (own.clone(), own_version)
                    } else {
                        let (id, version) = &shared[turn % shared.len()];
                        (id.clone(), version.load(Ordering::Acquire))
                    };
                    let events = (0..per_append)
                        .map(|_| NewEvent {
                            event_id: None,
                            event_type: "BenchEvent".into(),
                            schema_version: 1,
                            metadata: Default::default(),
                            payload: payload.to_vec(),
                        })
                        .collect();
                    let op = Instant::now();
                    match store
                        .append(stream, ExpectedVersion::Exact(expected), events)
                        .await
                    {
                        Ok(result) => {
                            stats::record(&mut latency, op.elapsed());
                            meter.record(per_append as u64);
                            if shared.is_empty() {
                                own_version = result.last_version;
                            } else {
                                shared[turn % shared.len()]
                                    .1
                                    .fetch_max(result.last_version, Ordering::AcqRel);
                            }
                            break;
                        }
                        Err(StoreError::WrongExpectedVersion { actual, .. })
                            if !shared.is_empty() =>
                        {
                            conflicts += 1;
                            shared[turn % shared.len()]
                                .1
                                .fetch_max(actual, Ordering::AcqRel);
                        }
                        Err(e) => return Err(BenchError::from(e)),
                    }
                }
                turn += 1;
            }
            Ok::<_, BenchError>((latency, conflicts))
        }));
    }
    let mut latency = stats::histogram();
    let mut conflicts = 0;
    for task in tasks {
        let (h, c) = task
            .await
            .map_err(|e| BenchError::Invalid(format!("writer task failed: {e}")))??;
        let _ = latency.add(&h);
        conflicts += c;
    }
    let elapsed = started.elapsed();
    Ok(Round {
        rates: sampler.finish(),
        meter,
        elapsed,
        latency,
        conflicts,
    })
}

fn raw_round(
    raw: &RawDb,
    bench: &AppendBench,
    limit: Limit,
    round: usize,
) -> Result<Round, BenchError> {
    let budget = Budget::new(limit, bench.events_per_append);
    let meter = Meter::new();
    let sampler = Sampler::start(&meter, format!("raw RocksDB round {}", round + 1));
    let payload = payload(bench.payload_bytes);
    let started = Instant::now();
    let results: Vec<Result<Histogram<u64>, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..bench.writers)
            .map(|_| {
                let budget = budget.clone();
                let meter = meter.clone();
                let payload = &payload;
                s.spawn(move || {
                    let mut latency = stats::histogram();
                    let writer = raw.writer(bench.durability);
                    while budget.take() {
                        let batch = raw.batch(payload, bench.events_per_append);
                        let op = Instant::now();
                        writer.write(batch).map_err(BenchError::Baseline)?;
                        stats::record(&mut latency, op.elapsed());
                        meter.record(bench.events_per_append as u64);
                    }
                    Ok(latency)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("baseline writer panicked"))
            .collect()
    });
    let elapsed = started.elapsed();
    let mut latency = stats::histogram();
    for h in results {
        let _ = latency.add(&h?);
    }
    Ok(Round {
        rates: sampler.finish(),
        meter,
        elapsed,
        latency,
        conflicts: 0,
    })
}
