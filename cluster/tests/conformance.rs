//! The store conformance suite (the same checks as the RocksDB and in-memory stores) on a
//! real 3-node NATS cluster: once through the writing node, once through a node that
//! forwards its appends to the writer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use annals_cluster::local::LocalNats;
use annals_cluster::{ClusterEventStore, ClusterOptions, Role};
use annals_store::testkit::conformance;

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

fn options(nats: &LocalNats, name: &str, node: &str, role: Role) -> ClusterOptions {
    let mut options = ClusterOptions::new(nats.urls());
    options.name = name.into();
    options.node_id = node.into();
    options.role = role;
    options
}

async fn writer(nats: &LocalNats, dir: &std::path::Path, name: &str) -> ClusterEventStore {
    let store = ClusterEventStore::start(
        dir.join(format!("{name}-w")),
        options(nats, name, "w", Role::All),
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !store.is_leading() {
        assert!(
            std::time::Instant::now() < deadline,
            "the only writer never leads"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_suite_passes_through_the_writing_node() {
    let nats = LocalNats::start(3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    conformance::run_all(|case| {
        let name = format!("w{}", CLUSTERS.fetch_add(1, Ordering::Relaxed));
        let (nats, dir) = (&nats, dir.path());
        async move {
            eprintln!("{case} on cluster {name}");
            writer(nats, dir, &name).await
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_suite_passes_through_a_node_that_forwards_to_the_writer() {
    let nats = LocalNats::start(3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let writers = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|case| {
        let name = format!("q{}", CLUSTERS.fetch_add(1, Ordering::Relaxed));
        let (nats, dir, writers) = (&nats, dir.path(), &writers);
        async move {
            eprintln!("{case} on cluster {name}");
            let writer = writer(nats, dir, &name).await;
            writers.lock().unwrap().push(writer);
            let query = ClusterEventStore::start(
                dir.join(format!("{name}-q")),
                options(nats, &name, "q", Role::Query),
            )
            .await
            .unwrap();
            assert!(!query.is_leading());
            query
        }
    })
    .await;
}
