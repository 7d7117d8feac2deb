#![allow(missing_docs)] // criterion_group! generates undocumented functions.
//! Projection catch-up: how fast the reference read models (`orders` and `products`) are
//! built from an existing log, and how long a blue/green rebuild of both takes while the
//! runtime is live.
//!
//! `cargo bench --bench catchup` builds a log of 1,000,000 domain events once (placed,
//! confirmed and cancelled orders with their stock reservations and releases over 200
//! products), then measures. `ANNALS_BENCH_QUICK=1` uses 100,000 events and fewer samples.
//! Throughput is in log events per second: each projection reads the whole log and applies
//! the events of its category.

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{domain, read_models};
use annals_projections::{ProjectionRuntime, ReadModelStore, RuntimeOptions};
use annals_store::{
    Durability, EventStore, ExpectedVersion, NewEvent, Position, RocksEventStore, StoreOptions,
    StreamAppend, StreamId,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const PRODUCTS: usize = 200;
const ORDERS_PER_COMMIT: usize = 100;

fn quick() -> bool {
    std::env::var("ANNALS_BENCH_QUICK").is_ok_and(|v| v == "1")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Writes about `target` events of the reference domain in large multi-stream commits.
async fn build_log(store: &RocksEventStore, target: u64) {
    for p in 0..PRODUCTS {
        store
            .append(
                StreamId::new(format!("product-p{p}")).unwrap(),
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::json("ProductRegistered", &json!({"sku": format!("SKU-{p}"), "name": format!("Product {p}"), "price_cents": 250})),
                    NewEvent::json("StockReceived", &json!({"quantity": 100_000_000u64})),
                ],
            )
            .await
            .unwrap();
    }
    let mut order = 0usize;
    while store.head().0 < target {
        // One commit: ORDERS_PER_COMMIT orders, each placed (some confirmed or cancelled
        // in the same commit), and the reservations/releases grouped per product.
        let mut appends = Vec::new();
        let mut per_product: Vec<Vec<NewEvent>> = vec![Vec::new(); PRODUCTS];
        for _ in 0..ORDERS_PER_COMMIT {
            let p = order % PRODUCTS;
            let quantity = 1 + (order % 3) as u64;
            let mut events = vec![NewEvent::json(
                "OrderPlaced",
                &json!({"customer_id": format!("c{}", order % 5_000), "lines": [{"product_id": format!("p{p}"), "quantity": quantity, "unit_price_cents": 250}], "total_cents": 250 * quantity}),
            )];
            per_product[p].push(NewEvent::json(
                "StockReserved",
                &json!({"order_id": format!("o{order}"), "quantity": quantity}),
            ));
            if order.is_multiple_of(3) {
                events.push(NewEvent::json("OrderConfirmed", &json!({})));
            }
            if order % 5 == 1 {
                events.push(NewEvent::json(
                    "OrderCancelled",
                    &json!({"reason": "bench"}),
                ));
                per_product[p].push(NewEvent::json(
                    "StockReleased",
                    &json!({"order_id": format!("o{order}"), "quantity": quantity}),
                ));
            }
            appends.push(StreamAppend::new(
                StreamId::new(format!("order-o{order}")).unwrap(),
                ExpectedVersion::NoStream,
                events,
            ));
            order += 1;
        }
        for (p, events) in per_product.into_iter().enumerate() {
            if !events.is_empty() {
                appends.push(StreamAppend::new(
                    StreamId::new(format!("product-p{p}")).unwrap(),
                    ExpectedVersion::Any,
                    events,
                ));
            }
        }
        store.append_multi(appends).await.unwrap();
    }
}

fn catchup(c: &mut Criterion) {
    let events: u64 = if quick() { 100_000 } else { 1_000_000 };
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        RocksEventStore::open(
            dir.path().join("log"),
            StoreOptions {
                max_events_per_append: 10_000,
                ..StoreOptions::with_durability(Durability::Buffered)
            },
        )
        .unwrap(),
    );
    let started = Instant::now();
    rt.block_on(build_log(&store, events));
    let head = store.head();
    eprintln!(
        "catchup bench: log of {} events built in {:.1}s",
        head.0,
        started.elapsed().as_secs_f64()
    );

    let mut group = c.benchmark_group("catchup");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(if quick() { 5 } else { 30 }));
    group.throughput(Throughput::Elements(head.0));
    group.bench_function(format!("reference_read_models/{}_events", head.0), |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let read_dir = tempfile::tempdir_in(dir.path()).unwrap();
                let read = Arc::new(ReadModelStore::open(read_dir.path()).unwrap());
                total += rt.block_on(async {
                    let started = Instant::now();
                    let runtime = start(&store, read);
                    runtime
                        .wait_for_all(head, Duration::from_secs(600))
                        .await
                        .unwrap();
                    let elapsed = started.elapsed();
                    runtime.shutdown().await;
                    elapsed
                });
            }
            total
        })
    });
    group.bench_function(format!("live_rebuild/{}_events", head.0), |b| {
        let read_dir = tempfile::tempdir_in(dir.path()).unwrap();
        let read = Arc::new(ReadModelStore::open(read_dir.path()).unwrap());
        let runtime = rt.block_on(async {
            let runtime = start(&store, read);
            runtime
                .wait_for_all(head, Duration::from_secs(600))
                .await
                .unwrap();
            runtime
        });
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                total += rt.block_on(async {
                    let started = Instant::now();
                    for name in runtime.names() {
                        runtime.rebuild(&name).unwrap();
                    }
                    while runtime
                        .names()
                        .iter()
                        .any(|n| runtime.is_rebuilding(n).unwrap())
                    {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    started.elapsed()
                });
            }
            total
        });
        rt.block_on(runtime.shutdown());
    });
    group.finish();
    assert_eq!(store.head(), Position(head.0), "the log did not change");
}

fn start(store: &Arc<RocksEventStore>, read: Arc<ReadModelStore>) -> ProjectionRuntime {
    ProjectionRuntime::start(
        store.clone(),
        read,
        read_models::projections(),
        Arc::new(domain::upcasters()),
        RuntimeOptions {
            drop_delay: Duration::ZERO,
            ..RuntimeOptions::default()
        },
    )
    .unwrap()
}

criterion_group!(benches, catchup);
criterion_main!(benches);
