//! Replicas of a replicated log (`RocksEventStore::open_replica`), over the in-memory log
//! of the test kit: the writing replica's groups, applied by another, give the same log
//! byte for byte; fencing stops a writer that fell behind; a group that does not continue
//! a replica is refused whole.

use annals_store::testkit::MemoryLog;
use annals_store::{
    Direction, EventStore, ExpectedVersion, NewEvent, Position, ReadFilter, RocksEventStore,
    StoreError, StoreOptions, StreamAppend, StreamId,
};
use serde_json::json;
use uuid::Uuid;

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(n: u64) -> NewEvent {
    NewEvent::json("Thing", &json!({ "n": n }))
}

fn replica(dir: &std::path::Path, log: &MemoryLog) -> RocksEventStore {
    RocksEventStore::open_replica(dir, StoreOptions::default(), log.replicator()).unwrap()
}

async fn catch_up(replica: &RocksEventStore, log: &MemoryLog) -> u64 {
    replica
        .apply_groups(log.groups_after(replica.log_sequence()))
        .await
        .unwrap()
}

async fn whole_log(store: &RocksEventStore) -> Vec<annals_store::RecordedEvent> {
    store
        .read_all(Position::FIRST, usize::MAX, &ReadFilter::all())
        .await
        .unwrap()
        .events
}

/// Given a writing replica with appends of every shape, when another replica applies the
/// log, then it holds the same records, versions and event ids, and leads on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_holds_the_writers_log_and_writes_on_from_it() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = MemoryLog::new();
    let a = replica(a_dir.path(), &log);
    let b = replica(b_dir.path(), &log);
    assert!(matches!(
        a.append(sid("order-1"), ExpectedVersion::Any, vec![ev(0)])
            .await,
        Err(StoreError::NotWriter)
    ));
    a.lead(0).await.unwrap();
    let retried = vec![
        ev(1).with_id(Uuid::from_u128(1)),
        ev(2).with_id(Uuid::from_u128(2)),
    ];
    a.append(sid("order-1"), ExpectedVersion::NoStream, retried.clone())
        .await
        .unwrap();
    a.append_multi(vec![
        StreamAppend::new(sid("order-1"), ExpectedVersion::Exact(2), vec![ev(3)]),
        StreamAppend::new(
            sid("product-9"),
            ExpectedVersion::NoStream,
            vec![ev(4), ev(5)],
        ),
    ])
    .await
    .unwrap();
    let appends = (0..20).map(|i| {
        let a = a.clone();
        async move {
            a.append(
                sid(&format!("cart-{}", i % 4)),
                ExpectedVersion::Any,
                vec![ev(i)],
            )
            .await
            .unwrap()
        }
    });
    futures::future::join_all(appends).await;
    assert_eq!(a.head(), Position(25));
    assert_eq!(a.log_sequence(), log.len());

    assert_eq!(catch_up(&b, &log).await, log.len());
    assert_eq!(b.head(), a.head());
    assert_eq!(whole_log(&b).await, whole_log(&a).await);
    assert!(
        b.verify_chain(Position::FIRST, b.head())
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(b.stream_version(&sid("order-1")).await.unwrap(), 3);
    assert_eq!(
        b.read_stream(&sid("product-9"), 1, Direction::Forward, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    // Applying again is a no-op.
    assert_eq!(catch_up(&b, &log).await, log.len());
    assert_eq!(b.head(), Position(25));

    // The writer steps down, the follower leads: event ids stay permanent across them.
    a.follow().await.unwrap();
    b.lead(log.len()).await.unwrap();
    let again = b
        .append(sid("order-1"), ExpectedVersion::NoStream, retried)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.duplicate);
    assert_eq!(again.first_position, Position(1));
    let next = b
        .append(sid("order-1"), ExpectedVersion::Exact(3), vec![ev(6)])
        .await
        .unwrap();
    assert_eq!(next.last_position, Position(26));
    assert!(!a.is_leading());
    assert!(matches!(
        a.append(sid("order-1"), ExpectedVersion::Any, vec![ev(7)])
            .await,
        Err(StoreError::NotWriter)
    ));
    catch_up(&a, &log).await;
    assert_eq!(whole_log(&a).await, whole_log(&b).await);
}

/// Given two replicas that both believe they lead, when the one that is behind appends,
/// then the log refuses it (nothing is written, the caller learns `NotWriter`) and it stops
/// leading; it can lead again only from the log's last group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_fell_behind_is_fenced() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = MemoryLog::new();
    let a = replica(a_dir.path(), &log);
    let b = replica(b_dir.path(), &log);
    a.lead(0).await.unwrap();
    b.lead(0).await.unwrap();
    a.append(sid("order-1"), ExpectedVersion::NoStream, vec![ev(1)])
        .await
        .unwrap();
    let fenced = b
        .append(sid("order-2"), ExpectedVersion::NoStream, vec![ev(2)])
        .await;
    assert!(matches!(fenced, Err(StoreError::NotWriter)), "{fenced:?}");
    assert!(!b.is_leading());
    assert_eq!(
        b.head(),
        Position::ZERO,
        "nothing of the refused group is written"
    );
    assert_eq!(log.len(), 1);
    // Leading needs the log's last group: the replica has not applied it yet.
    assert!(matches!(b.lead(1).await, Err(StoreError::NotWriter)));
    catch_up(&b, &log).await;
    b.lead(1).await.unwrap();
    // The other writer's group arrives while `a` leads: `a` stops leading.
    let written = b
        .append(sid("order-2"), ExpectedVersion::NoStream, vec![ev(2)])
        .await
        .unwrap();
    assert_eq!(written.last_position, Position(2));
    assert!(a.is_leading());
    catch_up(&a, &log).await;
    assert!(!a.is_leading());
    assert_eq!(whole_log(&a).await, whole_log(&b).await);
}

/// Given a log with a damaged or missing group, when a replica applies it, then it is
/// refused with `ReplicaDiverged` and nothing of the call is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_does_not_continue_the_replica_is_refused() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = MemoryLog::new();
    let a = replica(a_dir.path(), &log);
    a.lead(0).await.unwrap();
    for i in 0..3 {
        a.append(
            sid("order-1"),
            ExpectedVersion::Any,
            vec![ev(i), ev(i + 10)],
        )
        .await
        .unwrap();
    }
    let b = replica(b_dir.path(), &log);
    let groups = log.groups_after(0);

    // A gap: group 2 without group 1.
    let gap = b.apply_groups(groups[1..].to_vec()).await;
    assert!(
        matches!(gap, Err(StoreError::ReplicaDiverged { sequence: 2, .. })),
        "{gap:?}"
    );
    // A flipped byte in the last record of group 2 (its payload): the chain breaks.
    let mut damaged = groups.clone();
    let last = damaged[1].1.len() - 70;
    damaged[1].1[last] ^= 0x01;
    let broken = b.apply_groups(damaged).await;
    assert!(
        matches!(broken, Err(StoreError::ReplicaDiverged { sequence: 2, .. })),
        "{broken:?}"
    );
    // Not a group at all.
    let garbage = b.apply_groups(vec![(1, vec![1, 0, 0, 0, 9, 1, 2])]).await;
    assert!(matches!(
        garbage,
        Err(StoreError::ReplicaDiverged { sequence: 1, .. })
    ));
    assert_eq!(b.head(), Position::ZERO);
    assert_eq!(b.log_sequence(), 0);

    assert_eq!(b.apply_groups(groups).await.unwrap(), 3);
    assert_eq!(whole_log(&b).await, whole_log(&a).await);
}

/// Given a replica that applied groups, when it is reopened, then it knows its place in
/// the replicated log and continues from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_replica_continues_from_its_sequence() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = MemoryLog::new();
    let a = replica(a_dir.path(), &log);
    a.lead(0).await.unwrap();
    for i in 0..4 {
        a.append(sid("order-1"), ExpectedVersion::Any, vec![ev(i)])
            .await
            .unwrap();
    }
    {
        let b = replica(b_dir.path(), &log);
        b.apply_groups(log.groups_after(0)[..2].to_vec())
            .await
            .unwrap();
        b.close();
    }
    let b = replica(b_dir.path(), &log);
    assert_eq!(b.log_sequence(), 2);
    assert_eq!(b.head(), Position(2));
    assert_eq!(catch_up(&b, &log).await, 4);
    assert_eq!(whole_log(&b).await, whole_log(&a).await);
    // An embedded store is not a replica.
    let c_dir = tempfile::tempdir().unwrap();
    let c = RocksEventStore::open(c_dir.path(), StoreOptions::default()).unwrap();
    assert!(!c.is_replica());
    assert!(matches!(c.lead(0).await, Err(StoreError::NotWriter)));
}

/// Given a replica that applied another writer's groups and then leads, when its first
/// group is refused (another writer again), then it falls back to what it applied, not
/// to where it started, and leads on from there once caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_group_falls_back_to_what_the_replica_applied() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = MemoryLog::new();
    let a = replica(a_dir.path(), &log);
    let b = replica(b_dir.path(), &log);
    a.lead(0).await.unwrap();
    for i in 0..3 {
        a.append(sid("order-1"), ExpectedVersion::Any, vec![ev(i)])
            .await
            .unwrap();
    }
    catch_up(&b, &log).await;
    b.lead(3).await.unwrap();
    // `a` still believes it leads and writes group 4 first.
    a.append(sid("order-1"), ExpectedVersion::Any, vec![ev(3)])
        .await
        .unwrap();
    let refused = b
        .append(sid("order-2"), ExpectedVersion::Any, vec![ev(4)])
        .await;
    assert!(matches!(refused, Err(StoreError::NotWriter)), "{refused:?}");
    assert_eq!(b.head(), Position(3));
    catch_up(&b, &log).await;
    b.lead(4).await.unwrap();
    let written = b
        .append(sid("order-2"), ExpectedVersion::Any, vec![ev(4)])
        .await
        .unwrap();
    assert_eq!(written.last_position, Position(5));
    catch_up(&a, &log).await;
    assert_eq!(whole_log(&a).await, whole_log(&b).await);
    assert!(
        b.verify_chain(Position::FIRST, Position(5))
            .await
            .unwrap()
            .is_ok()
    );
}
