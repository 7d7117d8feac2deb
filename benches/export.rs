//! Export throughput and memory: NDJSON export rate of a whole log, and the peak resident
//! memory of one export, measured for a tenth of the log and for all of it (flat memory
//! means the two peaks are about equal).
//!
//! The log (`ANNALS_EXPORT_BENCH_EVENTS`, default 1,000,000 events of ~300-byte payloads)
//! is built once per run in a temporary directory, or in `ANNALS_EXPORT_BENCH_DIR` when
//! set (kept, and reused when it already holds the events: `annals export` can then be
//! measured on it with `/usr/bin/time -v`). `ANNALS_BENCH_QUICK=1` shortens the
//! measurement.

#![allow(missing_docs)]

use std::time::Duration;

use annals::audit::{ExportOptions, export, export_blocking};
use annals_store::{
    Durability, EventStore, ExpectedVersion, Metadata, NewEvent, RocksEventStore, StoreOptions,
    StreamId,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn events() -> u64 {
    std::env::var("ANNALS_EXPORT_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn build_log(rt: &tokio::runtime::Runtime, dir: &std::path::Path, n: u64) -> RocksEventStore {
    let store = RocksEventStore::open(dir, StoreOptions::with_durability(Durability::Buffered))
        .expect("open the bench log");
    rt.block_on(async {
        let mut written = 0u64;
        let mut stream = 0u64;
        while written < n {
            let batch = (n - written).min(500);
            let events = (0..batch)
                .map(|i| {
                    NewEvent::json(
                        "OrderPlaced",
                        &serde_json::json!({
                            "order_id": format!("o-{stream}"),
                            "lines": [{"sku": "SKU-12345", "quantity": i % 7 + 1, "unit_price_cents": 1999}],
                            "total_cents": 1999 * (i % 7 + 1),
                            "shipping": {"name": "Ada Lovelace", "street": "12 Analytical Engine Road", "city": "London", "postcode": "N1 9GU"},
                            "note": "leave at the door, ring twice",
                        }),
                    )
                    .with_metadata(Metadata {
                        actor: Some("bench".into()),
                        correlation_id: Some(uuid::Uuid::now_v7()),
                        ..Metadata::default()
                    })
                })
                .collect();
            store
                .append(
                    StreamId::for_category("order", stream).expect("stream id"),
                    ExpectedVersion::NoStream,
                    events,
                )
                .await
                .expect("append");
            written += batch;
            stream += 1;
        }
    });
    store
}

/// Peak resident set size since the last reset, in KiB (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn reset_peak_rss() {
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn bench_export(c: &mut Criterion) {
    let quick = std::env::var_os("ANNALS_BENCH_QUICK").is_some();
    let n = events();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = std::env::var_os("ANNALS_EXPORT_BENCH_DIR")
        .map_or_else(|| temp.path().to_path_buf(), std::path::PathBuf::from);
    let started = std::time::Instant::now();
    let existing = RocksEventStore::open_read_only(&dir).map_or(0, |s| s.head().get());
    let store = if existing == n {
        RocksEventStore::open(&dir, StoreOptions::default()).expect("open the bench log")
    } else {
        assert_eq!(existing, 0, "{} holds another log", dir.display());
        build_log(&rt, &dir, n)
    };
    eprintln!(
        "export bench: log of {n} events in {} ready in {:.1?}",
        dir.display(),
        started.elapsed()
    );

    // Peak memory of one export: a tenth of the log, then all of it.
    for to in [n / 10, n] {
        reset_peak_rss();
        let before = peak_rss_kib().unwrap_or(0);
        let mut options = ExportOptions::default();
        options.filters.to_position = Some(to);
        let started = std::time::Instant::now();
        let manifest =
            export_blocking(&store, options, std::io::sink(), |_, _| {}).expect("export");
        let elapsed = started.elapsed();
        eprintln!(
            "export bench: {} events to NDJSON in {:.2?} ({:.0} events/s); peak RSS {} KiB (baseline before the export {} KiB)",
            manifest.count,
            elapsed,
            manifest.count as f64 / elapsed.as_secs_f64(),
            peak_rss_kib().unwrap_or(0),
            before
        );
    }

    let mut group = c.benchmark_group("export");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(if quick { 5 } else { 30 }));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(n));
    // The CLI's path: one thread reads and decodes pages, the other encodes and writes.
    group.bench_function("ndjson", |b| {
        b.iter(|| {
            export_blocking(&store, ExportOptions::default(), std::io::sink(), |_, _| {})
                .expect("export")
        })
    });
    // The HTTP path (`export_stream` runs the same loop): one task does everything.
    group.bench_function("ndjson_one_thread", |b| {
        b.iter(|| {
            rt.block_on(export(&store, ExportOptions::default(), std::io::sink()))
                .expect("export")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_export);
criterion_main!(benches);
