#![allow(missing_docs)] // criterion_group! generates undocumented functions.
//! Append throughput: Annals against raw RocksDB in the same group.
//!
//! Matrix: writers 1/16/64 × events per append 1/10/100 × `Fsync`/`Buffered`, ~300-byte
//! payloads. Each Annals writer appends to its own stream with exact expected versions, the
//! realistic event-sourcing shape. The baseline writes the same number of ~300-byte
//! records from the same number of threads, one `WriteBatch` of the same size per write,
//! with `set_sync` matching the durability. Throughput is in events (records) per second.
//!
//! `cargo bench --bench append` runs it all; `cargo bench --bench append -- 'fsync/.*w64'`
//! runs a part. Set `ANNALS_BENCH_QUICK=1` for a short smoke run, or `ANNALS_BENCH_PAIRED=1`
//! for the two target shapes measured in alternating Annals/raw rounds (the robust ratio on
//! a shared machine; `ANNALS_BENCH_PAIRS=n` pairs, default 9).

use std::time::{Duration, Instant};

use annals_store::baseline::RawDb;
use annals_store::{
    Durability, EventStore, ExpectedVersion, NewEvent, RocksEventStore, StoreOptions, StoreStats,
    StreamId,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const PAYLOAD_BYTES: usize = 300;

fn payload() -> Vec<u8> {
    // A JSON object of about 300 bytes, like a typical domain event.
    let filler = "x".repeat(PAYLOAD_BYTES - 40);
    format!(r#"{{"order_id":"o-1","total_cents":1234,"note":"{filler}"}}"#).into_bytes()
}

fn annals_round(
    rt: &tokio::runtime::Runtime,
    store: &RocksEventStore,
    config: &str,
    writers: u64,
    per_append: u64,
    iters: u64,
) -> Duration {
    let payload = payload();
    rt.block_on(async {
        let mut tasks = Vec::new();
        let start = Instant::now();
        for w in 0..writers {
            let store = store.clone();
            let payload = payload.clone();
            let stream = StreamId::new(format!("{config}-{w}")).unwrap();
            tasks.push(tokio::spawn(async move {
                let mut version = store.stream_version(&stream).await.unwrap();
                for _ in 0..iters {
                    let events = (0..per_append)
                        .map(|_| NewEvent {
                            event_id: None,
                            event_type: "OrderPlaced".into(),
                            schema_version: 1,
                            metadata: Default::default(),
                            payload: payload.clone(),
                        })
                        .collect();
                    let r = store
                        .append(stream.clone(), ExpectedVersion::Exact(version), events)
                        .await
                        .unwrap();
                    version = r.last_version;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

fn raw_round(
    raw: &RawDb,
    durability: Durability,
    writers: u64,
    per_append: u64,
    iters: u64,
) -> Duration {
    let payload = payload();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                let writer = raw.writer(durability);
                for _ in 0..iters {
                    writer
                        .write(raw.batch(&payload, per_append as usize))
                        .unwrap();
                }
            });
        }
    });
    start.elapsed()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The two target shapes (`Fsync`, 64 × 1 and 1 × 100), Annals and raw RocksDB measured in
/// alternating short rounds, so that a change of load on a shared machine hits both sides
/// of a pair alike. Prints each pair's ratio and the median.
fn paired_ratios() {
    let rt = runtime();
    let annals_dir = tempfile::tempdir().unwrap();
    let raw_dir = tempfile::tempdir().unwrap();
    let store = RocksEventStore::open(annals_dir.path(), StoreOptions::default()).unwrap();
    let raw = RawDb::open(raw_dir.path()).unwrap();
    let pairs: usize = std::env::var("ANNALS_BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    for (writers, per_append, rounds) in [(64u64, 1u64, 100u64), (1, 100, 100)] {
        let label = format!("w{writers}xe{per_append}");
        let events = (writers * per_append * rounds) as f64;
        let mut ratios = Vec::new();
        let (mut annals_sum, mut raw_sum) = (0.0, 0.0);
        for _ in 0..pairs {
            let before = store.stats();
            let a = annals_round(&rt, &store, &label, writers, per_append, rounds);
            let r = raw_round(&raw, Durability::Fsync, writers, per_append, rounds);
            report(&format!("paired/{label}"), &store.stats().since(&before), a);
            let (a, r) = (events / a.as_secs_f64(), events / r.as_secs_f64());
            annals_sum += a;
            raw_sum += r;
            ratios.push(a / r);
        }
        ratios.sort_by(f64::total_cmp);
        eprintln!(
            "paired fsync/{label}: median ratio {:.2} (pairs: {}); mean annals {:.0} events/s, mean raw {:.0} records/s",
            ratios[ratios.len() / 2],
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            annals_sum / pairs as f64,
            raw_sum / pairs as f64,
        );
    }
}

fn append_matrix(c: &mut Criterion) {
    if std::env::var("ANNALS_BENCH_PAIRED").is_ok() {
        paired_ratios();
        return;
    }
    let quick = std::env::var("ANNALS_BENCH_QUICK").is_ok();
    let rt = runtime();
    for durability in [Durability::Fsync, Durability::Buffered] {
        let name = match durability {
            Durability::Fsync => "fsync",
            Durability::Buffered => "buffered",
        };
        let annals_dir = tempfile::tempdir().unwrap();
        let raw_dir = tempfile::tempdir().unwrap();
        let store =
            RocksEventStore::open(annals_dir.path(), StoreOptions::with_durability(durability))
                .unwrap();
        let raw = RawDb::open(raw_dir.path()).unwrap();

        let mut group = c.benchmark_group(format!("append/{name}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(if quick { 100 } else { 1000 }))
            .measurement_time(Duration::from_millis(if quick { 300 } else { 4000 }));
        for writers in [1u64, 16, 64] {
            for per_append in [1u64, 10, 100] {
                let label = format!("w{writers}xe{per_append}");
                group.throughput(Throughput::Elements(writers * per_append));
                let before = store.stats();
                let wall = std::cell::Cell::new(Duration::ZERO);
                group.bench_function(BenchmarkId::new("annals", &label), |b| {
                    b.iter_custom(|iters| {
                        let t = annals_round(&rt, &store, &label, writers, per_append, iters);
                        wall.set(wall.get() + t);
                        t
                    })
                });
                report(
                    &format!("{name}/{label}"),
                    &store.stats().since(&before),
                    wall.get(),
                );
                group.bench_function(BenchmarkId::new("rocksdb", &label), |b| {
                    b.iter_custom(|iters| raw_round(&raw, durability, writers, per_append, iters))
                });
            }
        }
        group.finish();
        let stats = store.stats();
        eprintln!(
            "append/{name}: {} commits, {:.1} events per group commit",
            stats.commits,
            stats.mean_commit_events()
        );
    }
}

/// Where the writer's time went during one configuration: a profile without a profiler.
fn report(label: &str, s: &StoreStats, wall: Duration) {
    if s.commits == 0 {
        return; // Filtered out on the command line.
    }
    let per_commit = |nanos: u64| nanos as f64 / s.commits.max(1) as f64 / 1000.0;
    eprintln!(
        "profile {label}: {} commits, {:.1} events/commit, {} syncs; per commit (us): \
         cycle {:.1}, stage {:.1}, write {:.1}, sync {:.1}",
        s.commits,
        s.mean_commit_events(),
        s.syncs,
        wall.as_nanos() as f64 / s.commits.max(1) as f64 / 1000.0,
        per_commit(s.stage_nanos),
        per_commit(s.write_nanos),
        per_commit(s.sync_nanos),
    );
}

criterion_group!(benches, append_matrix);
criterion_main!(benches);
