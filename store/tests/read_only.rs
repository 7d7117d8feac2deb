//! `RocksEventStore::open_read_only`: a fixed snapshot beside a writer, no writes.

use annals_store::{
    Durability, EventStore, ExpectedVersion, NewEvent, Position, ReadFilter, RocksEventStore,
    Snapshot, SnapshotStore, StoreError, StoreOptions, StreamId,
};

#[tokio::test]
async fn a_read_only_handle_reads_a_fixed_snapshot_beside_the_writer_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let writer = RocksEventStore::open(
        dir.path(),
        StoreOptions::with_durability(Durability::Buffered),
    )
    .unwrap();
    let stream = StreamId::new("order-1").unwrap();
    let event = || NewEvent::json("OrderPlaced", &serde_json::json!({"total_cents": 1}));
    writer
        .append(stream.clone(), ExpectedVersion::Any, vec![event(), event()])
        .await
        .unwrap();

    let reader = RocksEventStore::open_read_only(dir.path()).unwrap();
    assert!(reader.is_read_only() && !writer.is_read_only());
    assert_eq!(reader.head(), Position(2));
    writer
        .append(stream.clone(), ExpectedVersion::Any, vec![event()])
        .await
        .unwrap();
    // The reader's head stays where it was opened.
    assert_eq!(reader.head(), Position(2));
    let page = reader
        .read_all(Position(1), 10, &ReadFilter::all())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2);
    assert!(
        reader
            .verify_chain(Position(1), Position(2))
            .await
            .unwrap()
            .is_ok()
    );

    let err = reader
        .append(stream.clone(), ExpectedVersion::Any, vec![event()])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
    let snapshot = Snapshot {
        version: 1,
        schema_version: 1,
        state: b"{}".to_vec(),
    };
    let err = reader.save_snapshot(&stream, snapshot).await.unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
}

#[test]
fn a_missing_directory_is_a_clear_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let err = RocksEventStore::open_read_only(&missing).unwrap_err();
    assert!(err.to_string().contains("no event log in"), "{err}");
    assert!(!missing.exists());
}
