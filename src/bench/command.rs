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
use annals::privacy::{Privacy, RocksKeyStore};
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
    /// Seal the customer id under its customer's key (the product's default).
    pub seal: bool,
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
    let mut commerce = Commerce::new(CommandBus::with_options(
        store.clone(),
        domain::upcasters(),
        BusOptions::default(),
    ));
    if bench.seal {
        let keys = RocksKeyStore::open(&dir.path().join("keys"))?;
        // The customers exist before the run, as returning customers do: the run measures
        // sealing, not the one synced key-store write each customer's first order costs
        // (docs/performance.md measures that apart).
        for customer in 0..CUSTOMERS {
            keys.key_for(&format!("customer-{customer}"))?;
        }
        commerce = commerce.with_privacy(Privacy::new(Arc::new(keys)));
    }
    let app = Arc::new(commerce);
    let limit = match bench.limit {
        Limit::Events(n) => Limit::Events(n.div_ceil(2)),
        other => other,
    };
    let (meter, elapsed, latency, rates) = rt.block_on(async {
        let placing = app.clone();
        let place = move |product: String, order: String| {
            let app = placing.clone();
            async move { place_one(&app, product, &order).await }
        };
        let run = Clients::new("bench", bench.writers, limit, "commands", 2);
        run.go(&app, place).await
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
        operation: if bench.seal {
            "placeOrder (customer id sealed)"
        } else {
            "placeOrder (customer id in clear)"
        },
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
        let waiting: Waiting = Arc::default();
        let observer = tokio::spawn(observe_outcomes(store.clone(), waiting.clone()));
        let (placing, outcomes) = (app.clone(), waiting.clone());
        let checkout = move |product: String, order: String| {
            let (app, waiting) = (placing.clone(), outcomes.clone());
            async move {
                let (done, outcome) = oneshot::channel();
                waiting
                    .lock()
                    .expect("waiting lock")
                    .insert(order.clone(), done);
                place_one(&app, product, &order).await?;
                match tokio::time::timeout(Duration::from_secs(60), outcome).await {
                    Ok(Ok(true)) => Ok(()),
                    Ok(Ok(false)) => Err(BenchError::Invalid(format!(
                        "checkout of {order} was cancelled"
                    ))),
                    _ => Err(BenchError::Invalid(format!(
                        "checkout of {order} not confirmed within 60 s"
                    ))),
                }
            }
        };
        let run = Clients::new("saga", bench.writers, limit, "checkouts", CHECKOUT_EVENTS);
        let outcome = run.go(&app, checkout).await;
        observer.abort();
        outcome
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
            let order = event.stream_id.aggregate_id().unwrap_or_default();
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

/// Clients of a command benchmark: each orders from a stocked product of its own, one
/// operation after the other, while the budget lasts.
struct Clients {
    prefix: String,
    writers: usize,
    limit: Limit,
    label: &'static str,
    events_per_operation: u64,
}

/// A run's meter, duration, latencies and per-second rates.
type Measured = (Meter, Duration, hdrhistogram::Histogram<u64>, Vec<f64>);

impl Clients {
    fn new(
        prefix: &str,
        writers: usize,
        limit: Limit,
        label: &'static str,
        events_per_operation: u64,
    ) -> Self {
        Self {
            prefix: format!("{prefix}-{:x}", std::process::id()),
            writers,
            limit,
            label,
            events_per_operation,
        }
    }

    /// Registers and stocks the products, then runs `operation(product, order id)` from
    /// every client and measures it. The first failing client's error is the run's.
    async fn go<S, F, Fut>(
        &self,
        app: &Arc<Commerce<S>>,
        operation: F,
    ) -> Result<Measured, BenchError>
    where
        S: annals_store::EventStore + annals_store::SnapshotStore,
        F: Fn(String, String) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<(), BenchError>> + Send,
    {
        let ctx = CommandContext::by("bench");
        for w in 0..self.writers {
            let id = format!("{}-{w}", self.prefix);
            app.register_product(&id, format!("SKU-{w}"), "Bench".into(), 100, &ctx)
                .await?;
            app.receive_stock(&id, u64::MAX / 4, &ctx).await?;
        }
        let budget = super::append::budget(self.limit);
        let meter = Meter::new();
        let sampler = Sampler::start(&meter, self.label.into());
        let started = Instant::now();
        let tasks: Vec<_> = (0..self.writers)
            .map(|w| {
                let (budget, meter, operation) = (budget.clone(), meter.clone(), operation.clone());
                let product = format!("{}-{w}", self.prefix);
                let events = self.events_per_operation;
                tokio::spawn(async move {
                    let mut latency = stats::histogram();
                    let mut n = 0u64;
                    while budget.take() {
                        let order = format!("{product}-{n}");
                        n += 1;
                        let op = Instant::now();
                        operation(product.clone(), order).await?;
                        stats::record(&mut latency, op.elapsed());
                        meter.record(events);
                    }
                    Ok::<_, BenchError>(latency)
                })
            })
            .collect();
        let mut latency = stats::histogram();
        let mut failure = None;
        for task in tasks {
            match task.await {
                Ok(Ok(h)) => {
                    let _ = latency.add(&h);
                }
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(e) => {
                    failure = failure.or(Some(BenchError::Invalid(format!(
                        "client task failed: {e}"
                    ))))
                }
            }
        }
        let elapsed = started.elapsed();
        match failure {
            Some(e) => Err(e),
            None => Ok((meter, elapsed, latency, sampler.finish())),
        }
    }
}

/// The customers the orders are spread over.
const CUSTOMERS: u32 = 1000;

/// Places order `order` for one unit of `product`, as every bench client does.
async fn place_one<S: annals_store::EventStore + annals_store::SnapshotStore>(
    app: &Commerce<S>,
    product: String,
    order: &str,
) -> Result<(), BenchError> {
    let lines = [LineRequest {
        product_id: product,
        quantity: 1,
    }];
    let ctx = CommandContext::by("bench");
    let customer = order
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % CUSTOMERS;
    app.place_order(order, &format!("customer-{customer}"), &lines, &ctx)
        .await?;
    Ok(())
}
