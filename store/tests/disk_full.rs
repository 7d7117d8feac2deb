//! Disk full: the store runs on a small tmpfs (mounted by the test when it runs as root;
//! skipped with a printed reason otherwise). Appends fail with a clear `Storage` error once
//! it fills, nothing acknowledged is lost, no event of a failed append is ever visible (not
//! while failed, not after the store reopened itself, not after a restart), reads keep
//! working, and appends work again once space is freed.

use std::process::Command;
use std::time::{Duration, Instant};

use annals_store::{
    AppendResult, Durability, EventStore, ExpectedVersion, NewEvent, Position, ReadFilter,
    RocksEventStore, StoreError, StoreOptions, StreamId,
};
use uuid::Uuid;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &std::path::Path, size: &str) -> Result<Mount, String> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !status.status.success() {
        return Err(format!(
            "mount failed: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        ));
    }
    Ok(Mount(dir.to_path_buf()))
}

fn event(i: usize) -> NewEvent {
    let filler = "x".repeat(2000);
    NewEvent::json("Filled", &serde_json::json!({"i": i, "filler": filler})).with_id(Uuid::now_v7())
}

/// What one appending task saw: acknowledged (event id, position) and failed event ids.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<(Uuid, Position)>,
    failed: Vec<Uuid>,
}

/// Checks, through the store's API, that exactly the acknowledged events are visible: each
/// at its acknowledged position, the head at the last of them, positions gapless, and no
/// event of a failed append anywhere.
async fn check_only_acknowledged_visible(store: &RocksEventStore, seen: &Seen) {
    let mut positions: Vec<u64> = seen.acknowledged.iter().map(|(_, p)| p.0).collect();
    positions.sort_unstable();
    let expected_head = positions.len() as u64;
    assert_eq!(positions, (1..=expected_head).collect::<Vec<_>>());
    assert_eq!(store.head(), Position(expected_head));
    for (id, position) in &seen.acknowledged {
        let found = store
            .find_event(*id)
            .await
            .unwrap()
            .expect("acknowledged event lost");
        assert_eq!(found.position, *position);
    }
    for id in &seen.failed {
        assert!(
            store.find_event(*id).await.unwrap().is_none(),
            "an event of a failed append is visible"
        );
    }
    let mut next = Position::FIRST;
    let mut count = 0u64;
    loop {
        let page = store.read_all(next, 500, &ReadFilter::all()).await.unwrap();
        count += page.events.len() as u64;
        if page.events.is_empty() {
            break;
        }
        next = page.next;
    }
    assert_eq!(
        count, expected_head,
        "read_all must see exactly the acknowledged events"
    );
    let past = store
        .read_all(Position(expected_head + 1), 10, &ReadFilter::all())
        .await
        .unwrap();
    assert!(past.events.is_empty());
}

/// Appends one event to `stream`, recording the outcome in `seen`.
async fn append_one(
    store: &RocksEventStore,
    stream: &StreamId,
    seen: &mut Seen,
) -> Result<AppendResult, StoreError> {
    let e = event(0);
    let id = e.event_id.unwrap();
    match store
        .append(stream.clone(), ExpectedVersion::Any, vec![e])
        .await
    {
        Ok(result) => {
            seen.acknowledged.push((id, result.last_position));
            Ok(result)
        }
        Err(error) => {
            seen.failed.push(id);
            Err(error)
        }
    }
}

/// Grows `path` until the file system has no room left.
fn top_up(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    // A partly written last chunk still used the room it could.
    let _ = file.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_appends_clearly_and_loses_nothing() {
    full_disk_round(Durability::Fsync).await;
}

/// With `Buffered` a write fails in the writer (no syncer): the same promises hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_with_buffered_durability_recovers_too() {
    full_disk_round(Durability::Buffered).await;
}

async fn full_disk_round(durability: Durability) {
    let options = StoreOptions {
        durability,
        ..StoreOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let _mount = match mount_tmpfs(dir.path(), "48m") {
        Ok(mount) => mount,
        Err(reason) => {
            eprintln!("SKIPPED disk-full test: {reason} (needs root and tmpfs)");
            return;
        }
    };
    let log = dir.path().join("log");
    let store = RocksEventStore::open(&log, options.clone()).unwrap();
    // Leave a little room: a filler file takes most of the file system.
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 40 * 1024 * 1024]).unwrap();

    // Several appenders at once, so the failing groups share syncs and the writer runs
    // ahead of the syncer when the disk fills. Each stops at its first failure.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("disk-{t}")).unwrap();
            let mut seen = Seen::default();
            for _ in 0..100_000 {
                if let Err(error) = append_one(&store, &stream, &mut seen).await {
                    return (seen, Some(error));
                }
            }
            (seen, None)
        }));
    }
    let mut seen = Seen::default();
    let mut failures = Vec::new();
    for task in tasks {
        let (mut one, failure) = task.await.unwrap();
        seen.acknowledged.append(&mut one.acknowledged);
        seen.failed.append(&mut one.failed);
        failures.push(failure.expect("the file system never filled"));
    }
    // Every appender stopped on a clear storage error.
    for failure in &failures {
        assert!(
            matches!(failure, StoreError::Storage(_) | StoreError::Io { .. }),
            "{failure}"
        );
        assert!(matches!(failure, StoreError::Storage(_)), "{failure:?}");
    }
    assert!(!seen.acknowledged.is_empty());
    eprintln!(
        "disk full after {} acknowledged appends: {}",
        seen.acknowledged.len(),
        failures[0]
    );

    // Reads keep working, every acknowledged event is there and nothing else is.
    check_only_acknowledged_visible(&store, &seen).await;

    // Keep the disk full for a while: top up a second filler before every append. The
    // writer tries to reopen the database meanwhile, and an append may even succeed when
    // closing the failed instance gave back room (RocksDB preallocates WAL space and the
    // reopen flushes the WAL into compressed tables). Either way only what was
    // acknowledged is visible, and a failure is a clear `Storage` error.
    let stream = StreamId::new("disk-0").unwrap();
    let filler2 = dir.path().join("filler2");
    let until = Instant::now() + Duration::from_millis(1500);
    let mut failed_while_full = 0;
    while Instant::now() < until {
        top_up(&filler2);
        if let Err(error) = append_one(&store, &stream, &mut seen).await {
            assert!(
                matches!(error, StoreError::Storage(_) | StoreError::Io { .. }),
                "{error}"
            );
            failed_while_full += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed_while_full > 0);
    check_only_acknowledged_visible(&store, &seen).await;

    // Free the space: appends work again (the writer reopens the database).
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&filler2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let resumed = loop {
        match append_one(&store, &stream, &mut seen).await {
            Ok(result) => break result,
            Err(e) => {
                assert!(
                    matches!(e, StoreError::Storage(_) | StoreError::Io { .. }),
                    "{e}"
                );
                assert!(Instant::now() < deadline, "appends never resumed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(!store.is_failed());
    let acknowledged = seen.acknowledged.len() as u64;
    assert_eq!(resumed.last_position, Position(acknowledged));
    eprintln!(
        "resumed at {}; {} appends failed in all",
        resumed.last_position.0,
        seen.failed.len()
    );
    // The failed appends' events did not come back with the reopen.
    check_only_acknowledged_visible(&store, &seen).await;
    let report = store
        .verify_chain(Position::FIRST, resumed.last_position)
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked, acknowledged);
    drop(store);

    // And after a reopen, everything acknowledged is still there, nothing else is, and
    // the log ends at the last acknowledged append.
    let store = RocksEventStore::open(&log, options.clone()).unwrap();
    assert_eq!(store.head(), resumed.last_position);
    check_only_acknowledged_visible(&store, &seen).await;
    // A failed append retried with the same event id is a new append, not a duplicate.
    let failed_id = &seen.failed[0];
    let retried = store
        .append(
            StreamId::new("retry").unwrap(),
            ExpectedVersion::NoStream,
            vec![NewEvent::json("Filled", &serde_json::json!({})).with_id(*failed_id)],
        )
        .await
        .unwrap();
    assert!(!retried.duplicate);
    assert_eq!(retried.last_position, Position(acknowledged + 1));
    store.close();
}
