//! Behaviour specific to `RocksEventStore`: persistence across reopen, damaged and foreign
//! data directories, group commit, shutdown.

use std::sync::Arc;

use annals_store::keys::{self, CF_EVENTS, CF_META};
use annals_store::{
    ChainFault, Direction, Durability, EventStore, ExpectedVersion, NewEvent, Position, ReadFilter,
    RocksEventStore, StoreError, StoreOptions, StreamId,
};
use serde_json::json;
use uuid::Uuid;

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(n: u64) -> NewEvent {
    NewEvent::json("Thing", &json!({ "n": n }))
}

/// Opens the raw RocksDB under a store's data directory, with the store's column families.
fn raw_db(path: &std::path::Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    rocksdb::DB::open_cf(&opts, path, keys::ALL_CFS).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_reads_back_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let (before, ids) = {
        let store = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..50u64 {
            store
                .append(
                    sid(&format!("s-{}", i % 7)),
                    ExpectedVersion::Any,
                    vec![ev(i), ev(i + 100)],
                )
                .await
                .unwrap();
        }
        let ids = vec![ev(1).with_id(Uuid::from_u128(77))];
        store
            .append(sid("s-idem"), ExpectedVersion::NoStream, ids.clone())
            .await
            .unwrap();
        let all = store
            .read_all(Position(1), 1000, &ReadFilter::all())
            .await
            .unwrap();
        store.close();
        (all.events, ids)
    };
    let store = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.head(), Position(101));
    let after = store
        .read_all(Position(1), 1000, &ReadFilter::all())
        .await
        .unwrap();
    assert_eq!(after.events, before);
    assert_eq!(store.stream_version(&sid("s-3")).await.unwrap(), 14);
    assert!(
        store
            .verify_chain(Position(1), store.head())
            .await
            .unwrap()
            .is_ok()
    );
    // The chain continues from the recovered tip.
    let next = store
        .append(sid("s-3"), ExpectedVersion::Exact(14), vec![ev(0)])
        .await
        .unwrap();
    assert_eq!(next.last_position, Position(102));
    let read = store
        .read_stream(&sid("s-3"), 15, Direction::Forward, 1)
        .await
        .unwrap();
    assert_eq!(read[0].prev_hash, before.last().unwrap().hash);
    // Idempotency survives a restart.
    let retry = store
        .append(sid("s-idem"), ExpectedVersion::NoStream, ids)
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.last_position, Position(101));
}

#[tokio::test]
async fn corrupted_record_is_reported_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..6u64 {
            let stream = if i == 2 { "bad-1" } else { "good-1" };
            store
                .append(sid(stream), ExpectedVersion::Any, vec![ev(i)])
                .await
                .unwrap();
        }
        store.close();
    }
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle(CF_EVENTS).unwrap();
        let key = keys::position_key(Position(3));
        let mut bytes = db.get_cf(cf, key).unwrap().unwrap();
        // The payload ends right before the two 32-byte hashes: flip its last byte.
        let last = bytes.len() - 65;
        bytes[last] ^= 0xff;
        db.put_cf(cf, key, &bytes).unwrap();
        db.put_cf(cf, keys::position_key(Position(4)), b"\x01garbage")
            .unwrap();
    }
    let store = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
    let report = store.verify_chain(Position(1), store.head()).await.unwrap();
    assert_eq!(
        report.first_fault,
        Some((Position(3), ChainFault::HashMismatch))
    );
    let report = store.verify_chain(Position(4), store.head()).await.unwrap();
    assert_eq!(
        report.first_fault,
        Some((Position(4), ChainFault::Undecodable))
    );
    let err = store
        .read_all(Position(1), 10, &ReadFilter::all())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corruption {
                position: Position(4)
            }
        ),
        "{err:?}"
    );
    let err = store
        .read_stream(&sid("good-1"), 1, Direction::Forward, 10)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corruption {
                position: Position(4)
            }
        ),
        "{err:?}"
    );
    // The other streams' events stay readable up to the damage, and after it.
    let ok = store
        .read_stream(&sid("good-1"), 4, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(ok.len(), 2);
    let page = store
        .read_all(Position(5), 10, &ReadFilter::all())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2);
}

#[test]
fn refuses_a_future_format_version() {
    let dir = tempfile::tempdir().unwrap();
    drop(RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap());
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle(CF_META).unwrap();
        db.put_cf(cf, keys::META_FORMAT_VERSION, 99u32.to_be_bytes())
            .unwrap();
    }
    let err = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnsupportedFormat {
                found: 99,
                supported: 1
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade"), "{err}");
}

#[test]
fn a_held_data_directory_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
    let err = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap());
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = sid(&format!("w-{w}"));
            for v in 0..10u64 {
                store
                    .append(stream.clone(), ExpectedVersion::Exact(v), vec![ev(v)])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.appends, 640);
    assert_eq!(stats.events, 640);
    assert_eq!(store.head(), Position(640));
    // 64 callers waiting on fsyncs of about half a millisecond must share them.
    assert!(
        stats.mean_commit_events() > 2.0,
        "group commit did not group: {stats:?}"
    );
    let all = store
        .read_all(Position(1), 1000, &ReadFilter::all())
        .await
        .unwrap();
    assert!(
        all.events
            .iter()
            .enumerate()
            .all(|(i, e)| e.position.0 == i as u64 + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_stream_has_one_winner_per_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        RocksEventStore::open(
            dir.path(),
            StoreOptions::with_durability(Durability::Buffered),
        )
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = 0;
            for _ in 0..20 {
                let v = store.stream_version(&sid("hot-1")).await.unwrap();
                match store
                    .append(sid("hot-1"), ExpectedVersion::Exact(v), vec![ev(w)])
                    .await
                {
                    Ok(_) => won += 1,
                    Err(StoreError::WrongExpectedVersion { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            won
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap();
    }
    let events = store
        .read_stream(&sid("hot-1"), 1, Direction::Forward, 10_000)
        .await
        .unwrap();
    assert_eq!(
        events.len(),
        wins,
        "exactly one winner per expected version"
    );
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.stream_version == i as u64 + 1)
    );
}

#[tokio::test]
async fn closed_store_refuses_appends_but_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksEventStore::open(dir.path(), StoreOptions::default()).unwrap();
    store
        .append(sid("a-1"), ExpectedVersion::Any, vec![ev(1)])
        .await
        .unwrap();
    store.close();
    let err = store
        .append(sid("a-1"), ExpectedVersion::Any, vec![ev(2)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Closed), "{err:?}");
    assert_eq!(
        store
            .read_all(Position(1), 10, &ReadFilter::all())
            .await
            .unwrap()
            .events
            .len(),
        1
    );
}

#[tokio::test]
async fn big_appends_are_split_across_commits_by_the_caps() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        max_commit_events: 5,
        ..StoreOptions::default()
    };
    let store = RocksEventStore::open(dir.path(), options).unwrap();
    // A single append larger than the cap still commits, alone and atomically.
    let r = store
        .append(
            sid("big-1"),
            ExpectedVersion::Any,
            (0..20).map(ev).collect(),
        )
        .await
        .unwrap();
    assert_eq!(r.last_version, 20);
    assert_eq!(store.stats().commits, 1);
}
