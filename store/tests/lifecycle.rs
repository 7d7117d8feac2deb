//! Removing events without breaking the chain (stream deletion, retention), and copies of
//! the log (backup, restore, import), on the RocksDB store.

use std::time::Duration;

use annals_store::{
    DeleteMode, Durability, EventStore, ExpectedVersion, NewEvent, Position, ReadFilter,
    RecordedEvent, RetentionRule, RocksEventStore, StoreError, StoreOptions, StreamId, Timestamp,
    codec,
};
use serde_json::json;

fn open(dir: &std::path::Path) -> RocksEventStore {
    RocksEventStore::open(dir, StoreOptions::with_durability(Durability::Fsync)).unwrap()
}

fn event(n: u64) -> NewEvent {
    NewEvent::json(
        "Thing",
        &json!({ "n": n, "secret": format!("payload-{n}") }),
    )
}

async fn all(store: &RocksEventStore) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut from = Position::FIRST;
    loop {
        let page = store
            .read_all(from, 1000, &ReadFilter::all())
            .await
            .unwrap();
        out.extend(page.events);
        if page.next > page.head {
            return out;
        }
        from = page.next;
    }
}

async fn stream(store: &RocksEventStore, id: &StreamId) -> Vec<u64> {
    store
        .read_stream(id, 1, annals_store::Direction::Forward, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect()
}

async fn chain_ok(store: &RocksEventStore) {
    let report = store
        .verify_chain(Position::FIRST, store.head())
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked, store.head().0);
}

#[tokio::test]
async fn a_hard_deletion_leaves_tombstones_the_chain_links_through() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (
        StreamId::new("cart-a").unwrap(),
        StreamId::new("cart-b").unwrap(),
    );
    let marked = |mark: &str| NewEvent::json("Thing", &json!({ "mark": mark }));
    for _ in 0..3 {
        store
            .append(a.clone(), ExpectedVersion::Any, vec![marked("only-in-a")])
            .await
            .unwrap();
        store
            .append(b.clone(), ExpectedVersion::Any, vec![marked("only-in-b")])
            .await
            .unwrap();
    }
    let before = all(&store).await;

    // Given a wrong expected version, nothing is deleted.
    let err = store
        .delete_stream(&a, ExpectedVersion::Exact(2), DeleteMode::Hard)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 3, .. }),
        "{err}"
    );
    let missing = StreamId::new("cart-none").unwrap();
    let err = store
        .delete_stream(&missing, ExpectedVersion::Any, DeleteMode::Soft)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 0, .. }),
        "{err}"
    );

    let deleted = store
        .delete_stream(&a, ExpectedVersion::Exact(3), DeleteMode::Hard)
        .await
        .unwrap();
    assert_eq!((deleted.through_version, deleted.removed), (3, 3));

    // $all: same positions, same hashes; a's events are tombstones without content.
    let after = all(&store).await;
    assert_eq!(after.len(), before.len());
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(
            (old.position, old.hash, old.prev_hash),
            (new.position, new.hash, new.prev_hash)
        );
        assert_eq!(old.event_id, new.event_id);
        if new.stream_id == a {
            assert!(new.removed && new.payload.is_empty() && new.metadata == Default::default());
        } else {
            assert_eq!(old, new);
        }
    }
    chain_ok(&store).await;
    // The stream reads as deleted; its version stays, and "no stream" recreates it after.
    assert!(stream(&store, &a).await.is_empty());
    assert_eq!(store.stream_version(&a).await.unwrap(), 3);
    let again = store
        .append(a.clone(), ExpectedVersion::NoStream, vec![event(9)])
        .await
        .unwrap();
    assert_eq!(again.first_version, 4);
    assert_eq!(stream(&store, &a).await, vec![4]);
    assert_eq!(stream(&store, &b).await, vec![1, 2, 3]);
    // The removed payloads' bytes are gone from the database's files too (the deletion
    // compacts their range), while other streams' payloads are there.
    store.close();
    drop(store);
    let files: Vec<Vec<u8>> = walk(dir.path())
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_default())
        .collect();
    let holds = |needle: &[u8]| {
        files
            .iter()
            .any(|f| f.windows(needle.len()).any(|w| w == needle))
    };
    assert!(holds(b"only-in-b"), "cart-b's payloads stay");
    let holders: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| {
            let f = std::fs::read(p).unwrap_or_default();
            f.windows(9).any(|w| w == b"only-in-a")
        })
        .collect();
    assert!(
        !holds(b"only-in-a"),
        "cart-a's payloads left the files: {holders:?}"
    );
    let store = open(dir.path());
    let reopened = all(&store).await;
    assert_eq!(reopened.iter().filter(|e| e.removed).count(), 3);
    chain_ok(&store).await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_soft_deletion_hides_the_stream_and_keeps_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = StreamId::new("cart-a").unwrap();
    store
        .append(a.clone(), ExpectedVersion::Any, vec![event(1), event(2)])
        .await
        .unwrap();
    let before = all(&store).await;
    let deleted = store
        .delete_stream(&a, ExpectedVersion::Any, DeleteMode::Soft)
        .await
        .unwrap();
    assert_eq!((deleted.through_version, deleted.removed), (2, 0));
    assert_eq!(all(&store).await, before);
    assert!(stream(&store, &a).await.is_empty());
    assert_eq!(store.deleted_through(&a).unwrap(), 2);
    // Deleting it again is accepted with "no stream" (it reads as empty).
    store
        .delete_stream(&a, ExpectedVersion::NoStream, DeleteMode::Soft)
        .await
        .unwrap();
    // Recreated, its versions continue; an exact version 0 also recreates it.
    store
        .append(a.clone(), ExpectedVersion::Exact(0), vec![event(3)])
        .await
        .unwrap();
    assert_eq!(stream(&store, &a).await, vec![3]);
    let err = store
        .append(a.clone(), ExpectedVersion::NoStream, vec![event(4)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 3, .. }),
        "{err}"
    );
    chain_ok(&store).await;
}

#[tokio::test]
async fn retention_removes_by_age_and_by_count_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for s in 0..4 {
        let id = StreamId::new(format!("log-{s}")).unwrap();
        for n in 0..5 {
            store
                .append(id.clone(), ExpectedVersion::Any, vec![event(n)])
                .await
                .unwrap();
        }
        let kept = StreamId::new(format!("order-{s}")).unwrap();
        store
            .append(kept, ExpectedVersion::Any, vec![event(0)])
            .await
            .unwrap();
    }
    let by_count = RetentionRule {
        category: "log".into(),
        max_age: None,
        max_count: Some(2),
    };
    let report = store
        .apply_retention(vec![by_count.clone()], Timestamp::now())
        .await
        .unwrap();
    assert_eq!((report.examined, report.removed), (20, 12));
    for s in 0..4 {
        let id = StreamId::new(format!("log-{s}")).unwrap();
        let events = store
            .read_stream(&id, 1, annals_store::Direction::Forward, 100)
            .await
            .unwrap();
        let live: Vec<u64> = events
            .iter()
            .filter(|e| !e.removed)
            .map(|e| e.stream_version)
            .collect();
        assert_eq!(live, vec![4, 5]);
        assert!(
            events
                .iter()
                .filter(|e| e.removed)
                .all(|e| e.payload.is_empty())
        );
    }
    assert!(
        all(&store)
            .await
            .iter()
            .filter(|e| e.category() == "order")
            .all(|e| !e.removed)
    );
    chain_ok(&store).await;
    // A second pass has nothing left to do.
    let again = store
        .apply_retention(vec![by_count], Timestamp::now())
        .await
        .unwrap();
    assert_eq!(again.removed, 0);

    // By age: a clock an hour ahead makes everything of the category older than a minute.
    let by_age = RetentionRule {
        category: "log".into(),
        max_age: Some(Duration::from_secs(60)),
        max_count: None,
    };
    let later = Timestamp(Timestamp::now().0 + 3_600_000_000);
    let report = store
        .apply_retention(vec![by_age.clone()], Timestamp::now())
        .await
        .unwrap();
    assert_eq!(report.removed, 0, "nothing is a minute old yet");
    let report = store.apply_retention(vec![by_age], later).await.unwrap();
    assert_eq!(report.removed, 8);
    assert_eq!(all(&store).await.iter().filter(|e| e.removed).count(), 20);
    chain_ok(&store).await;
    // A stream whose events are all removed is still written after them.
    let id = StreamId::new("log-0").unwrap();
    let next = store
        .append(id, ExpectedVersion::Exact(5), vec![event(6)])
        .await
        .unwrap();
    assert_eq!(next.first_version, 6);
}

#[tokio::test]
async fn a_backup_taken_under_writes_restores_to_exactly_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = StreamId::new(format!("cart-{w}")).unwrap();
                for n in 0..200 {
                    store
                        .append(id.clone(), ExpectedVersion::Any, vec![event(n)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let first = store.backup(&backups.path().join("log")).await.unwrap();
    let second = store.backup(&backups.path().join("log")).await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    assert!(second.backup_id > first.backup_id && second.head >= first.head);
    let original = all(&store).await;
    for point in [&first, &second] {
        let target = tempfile::tempdir().unwrap();
        let restored_dir = target.path().join("log");
        let (head, tip) =
            RocksEventStore::restore_backup(&backups.path().join("log"), point, &restored_dir)
                .unwrap();
        assert_eq!((head, tip), (point.head, point.tip));
        let restored = open(&restored_dir);
        assert_eq!(restored.head(), point.head);
        let events = all(&restored).await;
        assert_eq!(events[..], original[..point.head.0 as usize]);
        chain_ok(&restored).await;
        // Restoring over a log is refused.
        restored.close();
        let err =
            RocksEventStore::restore_backup(&backups.path().join("log"), point, &restored_dir)
                .unwrap_err();
        assert!(matches!(err, StoreError::Unsupported { .. }), "{err}");
    }
}

#[tokio::test]
async fn an_import_rebuilds_the_log_record_by_record_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = StreamId::new("cart-a").unwrap();
    for n in 0..5 {
        store
            .append(
                a.clone(),
                ExpectedVersion::Any,
                vec![event(n), event(n + 10)],
            )
            .await
            .unwrap();
    }
    store
        .append(
            StreamId::new("cart-b").unwrap(),
            ExpectedVersion::Any,
            vec![event(1)],
        )
        .await
        .unwrap();
    store
        .delete_stream(
            &StreamId::new("cart-b").unwrap(),
            ExpectedVersion::Any,
            DeleteMode::Hard,
        )
        .await
        .unwrap();
    let original = all(&store).await;

    let target = tempfile::tempdir().unwrap();
    let path = target.path().join("log");
    let (head, tip) = RocksEventStore::import(&path, original.iter().cloned().map(Ok)).unwrap();
    assert_eq!((head, tip), (store.head(), original.last().unwrap().hash));
    let imported = open(&path);
    assert_eq!(all(&imported).await, original);
    assert_eq!(stream(&imported, &a).await, (1..=10).collect::<Vec<_>>());
    chain_ok(&imported).await;
    // The imported log takes new appends after its head.
    let next = imported
        .append(a.clone(), ExpectedVersion::Exact(10), vec![event(99)])
        .await
        .unwrap();
    assert_eq!(
        (next.first_version, next.first_position),
        (11, Position(12))
    );
    imported.close();

    // An edited record, a gap, or a record out of place stops the import; nothing stays.
    let mut edited = original.clone();
    edited[3].payload = b"{\"n\":666}".to_vec();
    let gap: Vec<RecordedEvent> = original
        .iter()
        .filter(|e| e.position != Position(4))
        .cloned()
        .collect();
    let mut relinked = original.clone();
    relinked[5].prev_hash = [7; 32];
    relinked[5].hash = codec::recompute_hash(&relinked[5]);
    for (name, records, at) in [
        ("edited", edited, 4),
        ("gap", gap, 5),
        ("relinked", relinked, 6),
    ] {
        let path = target.path().join(name);
        let err = RocksEventStore::import(&path, records.into_iter().map(Ok)).unwrap_err();
        assert!(
            matches!(err, StoreError::Corruption { position } if position == Position(at)),
            "{name}: {err}"
        );
        assert!(!path.exists(), "{name}: a refused import leaves nothing");
    }
}
