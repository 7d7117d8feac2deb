//! Shared helpers of the audit tests: a seeded log and export files to tamper with.

#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};

use annals::audit::{
    AuditError, ExportOptions, Fault, FaultKind, Format, VerifyOptions, export, verify,
};
use annals_store::{
    Durability, EventStore, ExpectedVersion, Metadata, NewEvent, Position, ReadFilter,
    RecordedEvent, RocksEventStore, StoreOptions, StreamId,
};
use uuid::Uuid;

/// The correlation id of the seeded events 1..=10.
pub const CORRELATION: Uuid = Uuid::from_u128(0xC0FFEE);

/// Events in the seeded log.
pub const EVENTS: u64 = 30;

/// A log of 30 events over `order-1..3` and `product-1`, actors alice (odd positions) and
/// bob (even), a correlation id on positions 1..=10, a non-JSON payload at 12 and a
/// pretty-printed one at 13.
pub async fn seed(dir: &Path) -> RocksEventStore {
    let store = RocksEventStore::open(dir, StoreOptions::with_durability(Durability::Buffered))
        .expect("open");
    for i in 1..=EVENTS {
        let stream = match i % 4 {
            0 => "product-1".to_string(),
            k => format!("order-{k}"),
        };
        let mut event = NewEvent::json(
            if i % 3 == 0 {
                "ItemShipped"
            } else {
                "OrderPlaced"
            },
            &serde_json::json!({ "i": i, "note": "ok" }),
        )
        .with_metadata(Metadata {
            actor: Some(if i % 2 == 1 { "alice" } else { "bob" }.into()),
            correlation_id: (i <= 10).then_some(CORRELATION),
            causation_id: None,
            extra: [("ip".to_string(), "10.0.0.1".to_string())].into(),
        });
        if i == 12 {
            event.payload = vec![0xff, 0xfe, b'x', b'\n'];
        }
        if i == 13 {
            event.payload = b"{\n  \"i\": 13\n}".to_vec();
        }
        store
            .append(
                StreamId::new(stream).unwrap(),
                ExpectedVersion::Any,
                vec![event],
            )
            .await
            .expect("append");
    }
    store
}

/// Exports into `path` (and its sidecar manifest for CSV and CloudEvents).
pub async fn export_to(store: &RocksEventStore, options: ExportOptions, path: &Path) {
    let format = options.format;
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let manifest = export(store, options, file).await.expect("export");
    if format != Format::Ndjson {
        std::fs::write(
            annals::audit::verify::sidecar_path(path),
            manifest.to_line() + "\n",
        )
        .unwrap();
    }
}

pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Verifies and returns the fault, failing the test when the file verifies.
pub async fn fault_of(
    path: &Path,
    store: Option<&RocksEventStore>,
    options: &VerifyOptions,
) -> Fault {
    match verify(path, store, options).await {
        Err(AuditError::Tampered(f)) => f,
        other => panic!("expected a fault, got {other:?}"),
    }
}

pub fn assert_fault(f: &Fault, kind: FaultKind, position: Option<u64>, message: &str) {
    assert_eq!(f.kind, kind, "{f}");
    assert_eq!(f.position, position, "{f}");
    assert!(
        f.to_string().contains(message),
        "{f} should mention {message:?}"
    );
}

/// The event at `position`, from the store.
pub async fn event_at(store: &RocksEventStore, position: u64) -> RecordedEvent {
    store
        .read_all(Position(position), 1, &ReadFilter::all())
        .await
        .unwrap()
        .events
        .remove(0)
}

pub fn tmp_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
