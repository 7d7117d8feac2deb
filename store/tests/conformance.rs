//! The store conformance suite (`annals_store::testkit::conformance`), one test per check,
//! against every embedded `EventStore` implementation: a new backend gets the whole suite
//! by adding one line.

use std::path::PathBuf;

use annals_store::testkit::{MemoryLog, conformance};
use annals_store::{InMemoryEventStore, RocksEventStore, StoreOptions};

macro_rules! conformance {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        #[allow(unused_variables)]
                        let dir = tempfile::tempdir().unwrap();
                        #[allow(clippy::redundant_closure_call)]
                        let store = ($make)(dir.path().to_path_buf()).await;
                        conformance::$name(store).await;
                    }
                };
            }

            case!(append_then_read_back);
            case!(expected_version_cases);
            case!(read_stream_directions_and_limits);
            case!(read_all_with_filters);
            case!(head_and_subscription);
            case!(idempotent_appends);
            case!(multi_stream_atomicity);
            case!(invalid_input);
            case!(chain_verifies);
        }
    };
}

conformance!(rocks, |path: PathBuf| async move {
    RocksEventStore::open(path, StoreOptions::default()).unwrap()
});
conformance!(rocks_tiny_cache, |path: PathBuf| async move {
    // A cache of two streams forces the index lookup on almost every append.
    RocksEventStore::open(
        path,
        StoreOptions {
            stream_cache_capacity: 2,
            durability: annals_store::Durability::Buffered,
            ..StoreOptions::default()
        },
    )
    .unwrap()
});
conformance!(memory, |_path: PathBuf| async move {
    InMemoryEventStore::default()
});
// A replica that writes through a replicated log (here one in memory): the writer path of
// a cluster's writing node.
conformance!(replica_leading, |path: PathBuf| async move {
    let store =
        RocksEventStore::open_replica(path, StoreOptions::default(), MemoryLog::new().replicator())
            .unwrap();
    store.lead(0).await.unwrap();
    store
});

/// The cases above name every check of the suite.
#[test]
fn every_check_is_a_case() {
    let source = include_str!("conformance.rs");
    for name in conformance::CASES {
        assert!(
            source.contains(&format!("case!({name});")),
            "{name} is not run here"
        );
    }
}
