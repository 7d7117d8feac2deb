//! `annals bench command`: the full command path on the reference domain — load the order
//! and the product (cached), decide, append both in one commit with exact versions.
//!
//! With `--saga`, whole checkouts instead: a node with the checkout saga and the simulated
//! gateway at zero latency; each client places an order and waits until the saga has
//! confirmed it (payment requested, authorized, order confirmed: three more commands),
//! then places the next. An operation is one checkout, its latency from the placement to
//! the commit of `OrderConfirmed`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::domain::{self, Commerce, LineRequest};
use annals::node::{Node, NodeConfig};
use annals_store::{
    BusOptions, CommandBus, CommandContext, Durability, EventStore, Position, ReadFilter,
    RocksEventStore, SharedStore, StoreError, StoreOptions,
};
use serde::Serialize;
use tokio::sync::oneshot;

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
    /// Measure whole checkouts through the saga instead of `placeOrder` alone.
    pub saga: bool,
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
    /// `placeOrder`, or `checkout` with `--saga`.
    pub operation: &'static str,
    /// Figures; an operation is one `placeOrder` command (2 events: the order and the
    /// stock reservation, in one atomic commit), or with `--saga` one checkout from
    /// placement to confirmation (6 events in 4 commits).
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
    if bench.saga {
        return run_saga(bench, &dir, &rt);
    }
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
        operation: "placeOrder",
        annals: stats::figures(&meter, elapsed, &latency, &rates),
        store_head,
    })
}

/// Events one checkout writes up to its confirmation: `OrderPlaced`, `StockReserved`,
/// `OrderAwaitingPayment`, `PaymentRequested`, `PaymentAuthorized`, `OrderConfirmed`.
const CHECKOUT_EVENTS: u64 = 6;

/// Who waits for which order's outcome: `true` when confirmed.
type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<bool>>>>;

fn run_saga(
    bench: &CommandBench,
    dir: &BenchDir,
    rt: &tokio::runtime::Runtime,
) -> Result<CommandReport, BenchError> {
    let mut config = NodeConfig::on_disk(dir.path());
    config.store = StoreOptions::with_durability(bench.durability);
    let node = {
        let _entered = rt.enter();
        Node::start(config).map_err(|e| match e.in_use() {
            Some(path) => BenchError::InUse(path.display().to_string()),
            None => BenchError::Invalid(format!("starting the node: {e}")),
        })?
    };
    let app = node.commerce().clone();
    let store = node.store().clone();
    let limit = match bench.limit {
        Limit::Events(n) => Limit::Events(n.div_ceil(CHECKOUT_EVENTS)),
        other => other,
    };
    let outcome = rt.block_on(async {
        let ctx = CommandContext::by("bench");
        let run = format!("{:x}", std::process::id());
        for w in 0..bench.writers {
            let id = format!("saga-{run}-{w}");
            app.register_product(&id, format!("SKU-{w}"), "Bench".into(), 100, &ctx)
                .await?;
            app.receive_stock(&id, u64::MAX / 4, &ctx).await?;
        }
        let waiting: Waiting = Arc::default();
        let observer = tokio::spawn(observe_outcomes(store.clone(), waiting.clone()));
        let budget = super::append::budget(limit);
        let meter = Meter::new();
        let sampler = Sampler::start(&meter, "checkouts".into());
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..bench.writers {
            let (app, budget, meter, waiting) =
                (app.clone(), budget.clone(), meter.clone(), waiting.clone());
            let product = format!("saga-{run}-{w}");
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
                    let (done, outcome) = oneshot::channel();
                    waiting
                        .lock()
                        .expect("waiting lock")
                        .insert(order.clone(), done);
                    let op = Instant::now();
                    app.place_order(&order, "bench-customer", &lines, &ctx)
                        .await?;
                    match tokio::time::timeout(Duration::from_secs(60), outcome).await {
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) => {
                            return Err(BenchError::Invalid(format!(
                                "checkout of {order} was cancelled"
                            )));
                        }
                        _ => {
                            return Err(BenchError::Invalid(format!(
                                "checkout of {order} not confirmed within 60 s"
                            )));
                        }
                    }
                    stats::record(&mut latency, op.elapsed());
                    meter.record(CHECKOUT_EVENTS);
                }
                Ok::<_, BenchError>(latency)
            }));
        }
        let mut latency = stats::histogram();
        let mut failure = None;
        for task in tasks {
            match task.await {
                Ok(Ok(h)) => {
                    let _ = latency.add(&h);
                }
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(BenchError::Invalid(format!("client task failed: {e}"))),
            }
        }
        let elapsed = started.elapsed();
        observer.abort();
        match failure {
            Some(e) => Err(e),
            None => Ok::<_, BenchError>((meter, elapsed, latency, sampler.finish())),
        }
    });
    super::progress_done();
    let store_head = annals_store::EventStore::head(&store).0;
    rt.block_on(node.shutdown());
    let (meter, elapsed, latency, rates) = outcome?;
    Ok(CommandReport {
        benchmark: "command",
        writers: bench.writers,
        durability: match bench.durability {
            Durability::Fsync => "fsync",
            Durability::Buffered => "buffered",
        },
        limit: bench.limit,
        machine: Machine::current(),
        operation: "checkout",
        annals: stats::figures(&meter, elapsed, &latency, &rates),
        store_head,
    })
}

/// Tails the log for the end of each checkout and tells whoever waits for it.
async fn observe_outcomes(store: SharedStore, waiting: Waiting) -> Result<(), StoreError> {
    let filter = ReadFilter::event_types(["OrderConfirmed", "OrderCancelled"]);
    let mut head = store.subscribe_head();
    let mut from = Position(store.head().0 + 1);
    loop {
        let page = store.read_all(from, 4096, &filter).await?;
        for event in &page.events {
            let order = event
                .stream_id
                .as_str()
                .split_once('-')
                .map_or("", |(_, id)| id);
            if let Some(done) = waiting.lock().expect("waiting lock").remove(order) {
                let _ = done.send(event.event_type == "OrderConfirmed");
            }
        }
        from = page.next;
        if page.events.is_empty() && head.changed().await.is_err() {
            return Ok(());
        }
    }
}
