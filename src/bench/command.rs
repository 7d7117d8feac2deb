//! `annals bench command`: the full command path on the reference domain — load the order
//! and the product (cached), decide, append both in one commit with exact versions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use annals::domain::{self, Commerce, LineRequest};
use annals_store::{
    BusOptions, CommandBus, CommandContext, Durability, RocksEventStore, StoreError, StoreOptions,
};
use serde::Serialize;

use super::stats::{self, Meter, RunFigures, Sampler};
use super::{BenchDir, BenchError, Limit, Machine};

/// What to measure.
#[derive(Clone, Debug)]
pub struct CommandBench {
    /// Concurrent clients, each ordering from a product of its own.
    pub writers: usize,
    /// When an append is acknowledged.
    pub durability: Durability,
    /// When to stop (events: two per command).
    pub limit: Limit,
    /// Where to write (a fresh temporary directory when none).
    pub data_dir: Option<PathBuf>,
}

/// What `annals bench command` reports.
#[derive(Clone, Debug, Serialize)]
pub struct CommandReport {
    /// Always `command`.
    pub benchmark: &'static str,
    /// Concurrent clients.
    pub writers: usize,
    /// `fsync` or `buffered`.
    pub durability: &'static str,
    /// When the run stopped.
    pub limit: Limit,
    /// The machine and build.
    pub machine: Machine,
    /// Figures; an operation is one `placeOrder` command (2 events: the order and the
    /// stock reservation, in one atomic commit).
    pub annals: RunFigures,
    /// The store's head afterwards.
    pub store_head: u64,
}

/// Runs the benchmark.
pub fn run_command(bench: &CommandBench) -> Result<CommandReport, BenchError> {
    if bench.writers == 0 {
        return Err(BenchError::Invalid("--writers must be at least 1".into()));
    }
    let dir = BenchDir::new(bench.data_dir.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let store = match RocksEventStore::open(
        dir.path().join("log"),
        StoreOptions::with_durability(bench.durability),
    ) {
        Ok(store) => Arc::new(store),
        Err(StoreError::Locked { path }) => {
            return Err(BenchError::InUse(path.display().to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    let app = Arc::new(Commerce::new(CommandBus::with_options(
        store.clone(),
        domain::upcasters(),
        BusOptions::default(),
    )));
    let limit = match bench.limit {
        Limit::Events(n) => Limit::Events(n.div_ceil(2)),
        other => other,
    };
    let (meter, elapsed, latency, rates) = rt.block_on(async {
        let ctx = CommandContext::by("bench");
        let run = format!("{:x}", std::process::id());
        for w in 0..bench.writers {
            let id = format!("bench-{run}-{w}");
            app.register_product(&id, format!("SKU-{w}"), "Bench".into(), 100, &ctx)
                .await?;
            app.receive_stock(&id, u64::MAX / 4, &ctx).await?;
        }
        let budget = super::append::budget(limit);
        let meter = Meter::new();
        let sampler = Sampler::start(&meter, "commands".into());
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..bench.writers {
            let app = app.clone();
            let budget = budget.clone();
            let meter = meter.clone();
            let product = format!("bench-{run}-{w}");
            tasks.push(tokio::spawn(async move {
                let ctx = CommandContext::by("bench");
                let mut latency = stats::histogram();
                let lines = [LineRequest {
                    product_id: product.clone(),
                    quantity: 1,
                }];
                let mut n = 0u64;
                while budget.take() {
                    let order = format!("{product}-{n}");
                    n += 1;
                    let op = Instant::now();
                    app.place_order(&order, "bench-customer", &lines, &ctx)
                        .await?;
                    stats::record(&mut latency, op.elapsed());
                    meter.record(2);
                }
                Ok::<_, BenchError>(latency)
            }));
        }
        let mut latency = stats::histogram();
        for task in tasks {
            let h = task
                .await
                .map_err(|e| BenchError::Invalid(format!("client task failed: {e}")))??;
            let _ = latency.add(&h);
        }
        let elapsed = started.elapsed();
        Ok::<_, BenchError>((meter, elapsed, latency, sampler.finish()))
    })?;
    super::progress_done();
    let store_head = annals_store::EventStore::head(store.as_ref()).0;
    store.close();
    Ok(CommandReport {
        benchmark: "command",
        writers: bench.writers,
        durability: match bench.durability {
            Durability::Fsync => "fsync",
            Durability::Buffered => "buffered",
        },
        limit: bench.limit,
        machine: Machine::current(),
        annals: stats::figures(&meter, elapsed, &latency, &rates),
        store_head,
    })
}
