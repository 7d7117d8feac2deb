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

use annals::{read_models, sample};
use annals_projections::{ProjectionRuntime, ReadModelStore, RuntimeOptions};
use annals_store::{EventStore, Position, RocksEventStore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

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

fn catchup(c: &mut Criterion) {
    let events: u64 = if quick() { 100_000 } else { 1_000_000 };
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(RocksEventStore::open(dir.path().join("log"), sample::log_options()).unwrap());
    let started = Instant::now();
    rt.block_on(sample::build_log(&store, events)).unwrap();
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
    read_models::start(
        store.clone(),
        read,
        RuntimeOptions {
            drop_delay: Duration::ZERO,
            ..RuntimeOptions::default()
        },
    )
    .unwrap()
}

criterion_group!(benches, catchup);
criterion_main!(benches);
