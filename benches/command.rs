#![allow(missing_docs)] // criterion_group! generates undocumented functions.
//! The command side: rehydrating a 10,000-event aggregate with and without a snapshot, and
//! commands per second on a cached hot aggregate against the bare append they end in.
//!
//! `cargo bench --bench command`. The command measurements use one caller, with `Fsync`
//! and again with `Buffered`; within each group the difference between the hot-aggregate
//! command and the bare append is what the command path (load from cache, decide, encode,
//! expected-version check) adds to each append.

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::domain::{self, Product, ProductCommand, ProductEvent};
use annals_store::{
    BusOptions, CommandBus, CommandContext, Durability, EventStore, ExpectedVersion,
    RocksEventStore, SnapshotStore, StoreOptions, StreamId, encode_event,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: u64 = 10_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn register() -> ProductCommand {
    ProductCommand::Register {
        sku: "SKU".into(),
        name: "Bench".into(),
        price_cents: 100,
    }
}

fn rehydration(c: &mut Criterion) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap());
    let bus = CommandBus::with_options(
        store.clone(),
        domain::upcasters(),
        BusOptions {
            snapshot_every: 0,
            ..BusOptions::default()
        },
    );
    rt.block_on(async {
        bus.execute::<Product>("big", register(), &CommandContext::default())
            .await
            .unwrap();
        let stream = StreamId::new("product-big").unwrap();
        let mut version = 1;
        while version < EVENTS {
            let batch = (0..(EVENTS - version).min(1000))
                .map(|_| encode_event(&ProductEvent::StockReceived { quantity: 1 }).unwrap())
                .collect();
            version = store
                .append(stream.clone(), ExpectedVersion::Exact(version), batch)
                .await
                .unwrap()
                .last_version;
        }
        let loaded = bus.load_uncached::<Product>("big", false).await.unwrap();
        store
            .save_snapshot(
                &stream,
                annals_store::Snapshot {
                    version: loaded.version,
                    schema_version: 1,
                    state: serde_json::to_vec(&*loaded.state).unwrap(),
                },
            )
            .await
            .unwrap();
    });
    let mut group = c.benchmark_group("rehydrate_10k");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("full_replay", |b| {
        b.iter(|| {
            rt.block_on(bus.load_uncached::<Product>("big", false))
                .unwrap()
        })
    });
    group.bench_function("from_snapshot", |b| {
        b.iter(|| {
            rt.block_on(bus.load_uncached::<Product>("big", true))
                .unwrap()
        })
    });
    group.finish();
}

fn command_path(c: &mut Criterion) {
    // With `Fsync` each command waits for one fsync (~0.5 ms, noisy on a shared machine),
    // which drowns a difference of microseconds; `Buffered` shows the same code path
    // without the disk, so its difference is the command path's cost.
    command_path_with(c, Durability::Fsync, "command_vs_append");
    command_path_with(c, Durability::Buffered, "command_vs_append_buffered");
}

fn command_path_with(c: &mut Criterion, durability: Durability, name: &str) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        RocksEventStore::open(dir.path(), StoreOptions::with_durability(durability)).unwrap(),
    );
    let bus = CommandBus::with_options(store.clone(), domain::upcasters(), BusOptions::default());
    rt.block_on(bus.execute::<Product>("hot", register(), &CommandContext::default()))
        .unwrap();
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    group.bench_function("command_hot_aggregate", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    bus.execute::<Product>(
                        "hot",
                        ProductCommand::ReceiveStock { quantity: 1 },
                        &CommandContext::default(),
                    )
                    .await
                    .unwrap();
                }
                start.elapsed()
            })
        })
    });
    let raw_stream = StreamId::new("product-raw").unwrap();
    group.bench_function("bare_append", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut version = store.stream_version(&raw_stream).await.unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    let event = encode_event(&ProductEvent::StockReceived { quantity: 1 }).unwrap();
                    version = store
                        .append(
                            raw_stream.clone(),
                            ExpectedVersion::Exact(version),
                            vec![event],
                        )
                        .await
                        .unwrap()
                        .last_version;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, rehydration, command_path);
criterion_main!(benches);
