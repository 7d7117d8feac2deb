//! Crash test of the projections: a child process applies a large backlog of domain events
//! to the read models (and appends more meanwhile); the parent `kill -9`s it at random
//! moments. After each kill, every read model must equal a from-scratch build of exactly
//! the positions up to its checkpoint: no event applied twice, none skipped.
//!
//! The child is this same test binary, re-run with `ANNALS_PROJECTION_CRASH_CHILD` set.
//! `ANNALS_PROJECTION_CRASH_ROUNDS` raises the number of kills (default 10).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::domain;
use annals::read_models;
use annals_projections::{ProjectionRuntime, ReadModelStore, RuntimeOptions, build_until};
use annals_store::{
    Durability, EventStore, ExpectedVersion, NewEvent, RocksEventStore, StoreOptions, StreamAppend,
    StreamId,
};
use serde_json::json;

const CHILD_ENV: &str = "ANNALS_PROJECTION_CRASH_CHILD";
const PRODUCTS: usize = 20;

struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Rng(u64::from(nanos) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn open_store(dir: &std::path::Path) -> Arc<RocksEventStore> {
    Arc::new(
        RocksEventStore::open(
            dir.join("log"),
            StoreOptions::with_durability(Durability::Buffered),
        )
        .unwrap(),
    )
}

fn options() -> RuntimeOptions {
    RuntimeOptions {
        // Small batches: many commits, so kills land between and inside them.
        batch_size: 128,
        ..RuntimeOptions::default()
    }
}

fn product(i: usize) -> StreamId {
    StreamId::new(format!("product-p{i}")).unwrap()
}

/// Appends `orders` orders named after `tag`: placed with a reservation in one commit,
/// then some confirmed and some cancelled (with the release in the same commit).
async fn append_orders(store: &RocksEventStore, tag: &str, orders: usize) {
    for j in 0..orders {
        let order = StreamId::new(format!("order-{tag}-{j}")).unwrap();
        let p = j % PRODUCTS;
        let quantity = 1 + (j % 3) as u64;
        store
            .append_multi(vec![
                StreamAppend::new(
                    order.clone(),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::json(
                        "OrderPlaced",
                        &json!({"customer_id": format!("c{}", j % 37), "lines": [{"product_id": format!("p{p}"), "quantity": quantity, "unit_price_cents": 250}], "total_cents": 250 * quantity}),
                    )],
                ),
                StreamAppend::new(
                    product(p),
                    ExpectedVersion::Any,
                    vec![NewEvent::json(
                        "StockReserved",
                        &json!({"order_id": format!("{tag}-{j}"), "quantity": quantity}),
                    )],
                ),
            ])
            .await
            .unwrap();
        if j.is_multiple_of(3) {
            store
                .append(
                    order.clone(),
                    ExpectedVersion::Exact(1),
                    vec![NewEvent::json("OrderConfirmed", &json!({}))],
                )
                .await
                .unwrap();
        }
        if j % 5 == 1 {
            store
                .append_multi(vec![
                    StreamAppend::new(
                        order,
                        ExpectedVersion::StreamExists,
                        vec![NewEvent::json("OrderCancelled", &json!({"reason": "test"}))],
                    ),
                    StreamAppend::new(
                        product(p),
                        ExpectedVersion::Any,
                        vec![NewEvent::json(
                            "StockReleased",
                            &json!({"order_id": format!("{tag}-{j}"), "quantity": quantity}),
                        )],
                    ),
                ])
                .await
                .unwrap();
        }
    }
}

async fn seed(store: &RocksEventStore) {
    for i in 0..PRODUCTS {
        store
            .append(
                product(i),
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::json(
                        "ProductRegistered",
                        &json!({"sku": format!("SKU-{i}"), "name": format!("Product {i}"), "price_cents": 250}),
                    ),
                    NewEvent::json("StockReceived", &json!({"quantity": 1_000_000})),
                ],
            )
            .await
            .unwrap();
    }
    append_orders(store, "seed", 6_000).await;
}

/// Not a test of its own: the body of the child process (a no-op unless the env is set).
#[test]
fn projection_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = open_store(&dir);
        let read = Arc::new(ReadModelStore::open(dir.join("read")).unwrap());
        let _runtime = ProjectionRuntime::start(
            store.clone(),
            read,
            read_models::projections(),
            Arc::new(domain::upcasters()),
            options(),
        )
        .unwrap();
        println!("ready");
        // Keep the backlog growing while the workers apply it, until the parent kills us.
        let tag = format!("r{}", std::process::id());
        for batch in 0.. {
            append_orders(&store, &format!("{tag}-{batch}"), 200).await;
        }
    });
}

/// Every read model equals a from-scratch build of the positions up to its checkpoint.
async fn check(dir: &std::path::Path) -> Vec<u64> {
    let store = open_store(dir);
    let read = Arc::new(ReadModelStore::open(dir.join("read")).unwrap());
    let upcasters = Arc::new(domain::upcasters());
    let mut checkpoints = Vec::new();
    for projection in read_models::projections() {
        let name = projection.name().to_string();
        let generation = read.active_generation(&name).expect("projection started");
        let checkpoint = read.checkpoint(&name, generation).unwrap();
        let scratch_dir = tempfile::tempdir().unwrap();
        let scratch = Arc::new(ReadModelStore::open(scratch_dir.path()).unwrap());
        let reached = build_until(
            &store,
            &scratch,
            projection,
            &upcasters,
            &options(),
            checkpoint,
        )
        .await
        .unwrap();
        assert_eq!(reached, checkpoint);
        let (actual, expected) = (read.dump(&name).unwrap(), scratch.dump(&name).unwrap());
        assert_eq!(
            actual.len(),
            expected.len(),
            "{name}: row count at checkpoint {checkpoint}"
        );
        assert!(
            actual == expected,
            "{name}: read model differs from a scratch build at {checkpoint}"
        );
        assert!(
            read.parked(&name).unwrap().is_empty(),
            "{name}: parked events"
        );
        checkpoints.push(checkpoint.0);
    }
    store.close();
    checkpoints
}

#[test]
fn kill_9_while_applying_a_backlog_leaves_read_models_equal_to_a_rebuild() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let rounds: usize = std::env::var("ANNALS_PROJECTION_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open_store(dir.path());
        seed(&store).await;
        store.close();
    });
    let mut rng = Rng::seeded();
    let started = Instant::now();
    let mut progressed = 0;
    let mut last = Vec::new();
    for _ in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "projection_crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("ready") {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "child ended before it was ready"
            );
        }
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        // SIGKILL: no destructor, no flush runs in the child.
        child.kill().unwrap();
        child.wait().unwrap();
        let checkpoints = rt.block_on(check(dir.path()));
        if checkpoints != last {
            progressed += 1;
        }
        last = checkpoints;
    }
    assert!(
        progressed >= rounds / 2,
        "the projections barely moved between kills"
    );
    eprintln!(
        "projection crash test: {rounds} kills, checkpoints {last:?}, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
