//! `annals bench`: every subcommand runs (small sizes), reports its fields, prints JSON
//! that parses, and reports exactly the events that are in the store afterwards.

mod common;

use std::process::Command;

use annals_store::{EventStore, Position, ReadFilter, RocksEventStore, StoreOptions};
use serde_json::Value;

fn annals(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the annals binary runs")
}

fn json(args: &[&str]) -> Value {
    let out = annals(args);
    assert!(
        out.status.success(),
        "annals {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn head(dir: &std::path::Path) -> u64 {
    let store = RocksEventStore::open(dir.join("log"), StoreOptions::default()).unwrap();
    let head = store.head().0;
    store.close();
    head
}

/// p50 ≤ p90 ≤ p95 ≤ p99 ≤ p99.9 ≤ max.
fn assert_percentiles_ordered(l: &Value) {
    let values: Vec<Option<u64>> = ["p50_us", "p90_us", "p95_us", "p99_us", "p999_us", "max_us"]
        .iter()
        .map(|field| l[field].as_u64())
        .collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "{l}");
}

/// A table's latency columns, in order, with p95 between p90 and p99.
fn assert_latency_columns(text: &str) {
    let columns = ["p50 µs", "p90 µs", "p95 µs", "p99 µs", "p99.9 µs", "max µs"];
    let at: Vec<Option<usize>> = columns.iter().map(|c| text.find(c)).collect();
    assert!(
        at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
        "latency columns {columns:?} not in order in:\n{text}"
    );
}

fn assert_figures(f: &Value) {
    for field in [
        "events",
        "operations",
        "seconds",
        "events_per_second",
        "operations_per_second",
    ] {
        assert!(f[field].as_f64().is_some_and(|v| v > 0.0), "{field} in {f}");
    }
    for field in ["p50_us", "p90_us", "p95_us", "p99_us", "p999_us", "max_us"] {
        assert!(
            f["latency"][field].as_u64().is_some_and(|v| v > 0),
            "latency.{field} in {f}"
        );
    }
    assert_percentiles_ordered(&f["latency"]);
    assert!(f["first_second_events_per_second"].as_f64().is_some());
    assert!(f["last_second_events_per_second"].as_f64().is_some());
}

#[test]
fn append_with_baseline_reports_both_sides_and_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let report = json(&[
        "bench",
        "append",
        "--writers",
        "3",
        "--events-per-append",
        "2",
        "--events",
        "60",
        "--durability",
        "buffered",
        "--baseline",
        "--json",
        "--data-dir",
        data,
    ]);
    assert_eq!(report["benchmark"], "append");
    let c = &report["conditions"];
    assert_eq!(
        (c["writers"].as_u64(), c["events_per_append"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(c["payload_bytes"], 300);
    assert_eq!(c["durability"], "buffered");
    assert!(c["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert_eq!(
        c["machine"]["rocksdb_version"],
        annals_store::ROCKSDB_VERSION
    );
    assert_figures(&report["annals"]);
    assert_figures(&report["baseline"]);
    assert_eq!(report["annals"]["events"], 60);
    assert_eq!(report["annals"]["operations"], 30);
    assert_eq!(report["baseline"]["events"], 60);
    assert!(report["ratio"].as_f64().unwrap() > 0.0);
    assert!(report["mean_group_commit_events"].as_f64().unwrap() >= 2.0);
    assert_eq!(report["store_head"], 60);
    assert_eq!(
        head(dir.path()),
        60,
        "the store holds exactly the reported events"
    );
}

#[test]
fn append_on_shared_streams_counts_conflicts_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let report = json(&[
        "bench",
        "append",
        "--writers",
        "4",
        "--streams",
        "2",
        "--events",
        "80",
        "--durability",
        "buffered",
        "--json",
        "--data-dir",
        data,
    ]);
    assert_eq!(report["conditions"]["shared_streams"], 2);
    assert!(report["conflicts"].as_u64().is_some());
    assert!(report["baseline"].is_null() && report["ratio"].is_null());
    assert_eq!(report["annals"]["events"], 80);
    assert_eq!(head(dir.path()), 80);
}

#[test]
fn append_table_shows_conditions_figures_and_ratio() {
    let out = annals(&[
        "bench",
        "append",
        "--writers",
        "2",
        "--events",
        "20",
        "--durability",
        "buffered",
        "--baseline",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "2 writers",
        "buffered",
        "annals",
        "raw rocksdb",
        "p99.9",
        "ratio annals / raw RocksDB",
        "CPUs",
        "RocksDB 11",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert_latency_columns(&text);
}

#[test]
fn command_bench_runs_the_full_command_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let report = json(&[
        "bench",
        "command",
        "--writers",
        "2",
        "--events",
        "20",
        "--durability",
        "buffered",
        "--json",
        "--data-dir",
        data,
    ]);
    assert_eq!(report["benchmark"], "command");
    assert_figures(&report["annals"]);
    assert_eq!(report["annals"]["events"], 20);
    assert_eq!(report["annals"]["operations"], 10);
    // Setup: two products registered and stocked (2 events each), then 10 orders × 2.
    assert_eq!(report["store_head"], 24);
    assert_eq!(head(dir.path()), 24);
}

#[test]
fn the_saga_bench_counts_whole_checkouts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let report = json(&[
        "bench",
        "command",
        "--saga",
        "--writers",
        "3",
        "--events",
        "60",
        "--durability",
        "buffered",
        "--json",
        "--data-dir",
        data,
    ]);
    assert_eq!(report["operation"], "checkout");
    assert_figures(&report["annals"]);
    // 60 events are 10 checkouts of 6 events, each counted once it is confirmed.
    assert_eq!(report["annals"]["operations"], 10);
    assert_eq!(report["annals"]["events"], 60);
    // Setup: three products (2 events each), then 10 checkouts of 6 events.
    assert_eq!(report["store_head"], 66);
    assert_eq!(head(dir.path()), 66);
}

#[test]
fn catchup_bench_builds_the_read_models_over_the_generated_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let report = json(&[
        "bench",
        "catchup",
        "--events",
        "3000",
        "--batch-size",
        "100",
        "--rebuild",
        "--json",
        "--data-dir",
        data,
    ]);
    assert_eq!(report["benchmark"], "catchup");
    assert!(report["rebuild"]["seconds"].as_f64().unwrap() > 0.0);
    let per_projection = report["per_projection"].as_array().unwrap();
    // Every projection `annals serve` runs: the three read models and the stream catalog.
    assert_eq!(
        per_projection.len(),
        annals::read_models::projections().len()
    );
    assert_eq!(per_projection.len(), 4);
    assert!(
        per_projection.iter().all(
            |p| p["seconds"].as_f64().unwrap() <= report["annals"]["seconds"].as_f64().unwrap()
        )
    );
    let events = report["annals"]["events"].as_u64().unwrap();
    assert!(events >= 3000);
    assert_eq!(report["store_head"].as_u64(), Some(events));
    assert_eq!(head(dir.path()), events);
    assert_eq!(
        report["projections"],
        serde_json::json!(["orders", "products", "payments", "streams"])
    );
    let out = annals(&[
        "bench",
        "catchup",
        "--events",
        "3000",
        "--batch-size",
        "0",
        "--data-dir",
        data,
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--batch-size"), "{stderr}");
}

#[test]
fn a_data_directory_in_use_is_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let held = RocksEventStore::open(dir.path().join("log"), StoreOptions::default()).unwrap();
    let out = annals(&[
        "bench",
        "append",
        "--events",
        "10",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    let out = annals(&[
        "bench",
        "graphql",
        "--requests",
        "10",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    assert_eq!(held.head().0, 0);
}

#[test]
fn bad_options_are_refused_with_a_message() {
    let out = annals(&["bench", "append", "--writers", "0", "--events", "10"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--writers"));
    let out = annals(&["bench", "append", "--events", "10", "--duration", "1"]);
    assert!(!out.status.success(), "--events and --duration conflict");
}

#[test]
fn the_reported_rocksdb_version_is_the_one_in_cargo_lock() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let expected = format!("+{}\"", annals_store::ROCKSDB_VERSION);
    let line = lock
        .lines()
        .skip_while(|l| *l != "name = \"librocksdb-sys\"")
        .nth(1)
        .expect("librocksdb-sys is locked");
    assert!(line.ends_with(&expected), "{line} vs {expected}");
}

/// `OrderPlaced` events in a log.
async fn orders_placed_in(store: &impl EventStore) -> u64 {
    let filter = ReadFilter::event_types(["OrderPlaced"]);
    let mut from = Position(1);
    let mut count = 0;
    loop {
        let page = store.read_all(from, 1000, &filter).await.unwrap();
        count += page.events.len() as u64;
        if page.next.0 > page.head.0 {
            return count;
        }
        from = page.next;
    }
}

fn assert_operation(f: &Value, kind: &str) {
    for field in ["requests", "ok", "operations_per_second", "seconds"] {
        assert!(
            f[field].as_f64().is_some_and(|v| v > 0.0),
            "{kind}.{field} in {f}"
        );
    }
    assert_eq!(f["errors"], 0, "{kind} in {f}");
    assert_eq!(f["ok"], f["requests"], "{kind} in {f}");
    let l = &f["latency"];
    for field in ["p50_us", "p90_us", "p95_us", "p99_us", "p999_us", "max_us"] {
        assert!(
            l[field].as_u64().is_some_and(|v| v > 0),
            "{kind}.latency.{field} in {f}"
        );
    }
    assert_percentiles_ordered(l);
}

#[test]
fn graphql_bench_in_process_places_exactly_the_orders_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let report = json(&[
        "bench",
        "graphql",
        "--requests",
        "200",
        "--connections",
        "4",
        "--json",
        "--data-dir",
        data,
    ]);
    assert_eq!(report["benchmark"], "graphql");
    let c = &report["conditions"];
    assert_eq!(c["target"], "in-process");
    assert!(c["url"].as_str().unwrap().starts_with("http://127.0.0.1:"));
    assert_eq!(c["connections"], 4);
    assert_eq!(c["mix"], "both");
    assert_eq!(c["limit"]["requests"], 200);
    assert_eq!(c["products"], 4);
    assert!(c["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert_eq!(c["machine"]["annals_version"], env!("CARGO_PKG_VERSION"));
    let (mutation, query) = (&report["mutation"], &report["point_query"]);
    assert_operation(mutation, "mutation");
    assert_operation(query, "point_query");
    assert_eq!(
        mutation["requests"].as_u64().unwrap() + query["requests"].as_u64().unwrap(),
        200,
        "--requests counts both kinds"
    );
    assert!(report["requests_per_second"].as_f64().unwrap() > 0.0);
    let placed = report["orders_placed"].as_u64().unwrap();
    assert_eq!(report["orders_placed"], mutation["ok"]);
    let setup = c["setup_orders"].as_u64().unwrap();
    // The server is gone: the log holds exactly the setup's and the run's orders, each
    // with its reservation, after one registration and one receipt per product.
    let store = RocksEventStore::open(dir.path().join("log"), StoreOptions::default()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        runtime.block_on(orders_placed_in(&store)),
        setup + placed,
        "the log holds exactly the orders the bench reports"
    );
    assert_eq!(store.head().0, 4 * 2 + 2 * (setup + placed));
    assert_eq!(report["store_head"].as_u64(), Some(store.head().0));
    store.close();
}

#[test]
fn graphql_bench_query_only_and_mutation_only_mixes() {
    let report = json(&[
        "bench",
        "graphql",
        "--requests",
        "40",
        "--connections",
        "2",
        "--mix",
        "query",
        "--json",
    ]);
    assert!(report["mutation"].is_null());
    assert_operation(&report["point_query"], "point_query");
    assert_eq!(report["point_query"]["requests"], 40);
    assert_eq!(report["orders_placed"], 0);
    let report = json(&[
        "bench",
        "graphql",
        "--requests",
        "30",
        "--connections",
        "3",
        "--mix",
        "mutation",
        "--json",
    ]);
    assert!(report["point_query"].is_null());
    assert_operation(&report["mutation"], "mutation");
    assert_eq!(report["orders_placed"], 30);
    let out = annals(&["bench", "graphql", "--connections", "2", "--duration", "1"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "in-process",
        "2 connections",
        "placeOrder",
        "point query",
        "p99.9",
        "CPUs",
        "orders placed",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert_latency_columns(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_bench_drives_a_server_given_by_url_with_its_key() {
    use annals::server::ServerConfig;
    use annals::server::auth::{ApiKeys, RateLimit, Role, generate_key};
    let (key, line) = generate_key(Role::Writer).unwrap();
    let (reader, reader_line) = generate_key(Role::Reader).unwrap();
    let mut keys = ApiKeys::none();
    keys.add(&line).unwrap();
    keys.add(&reader_line).unwrap();
    let unlimited = std::num::NonZeroU32::new(1_000_000).unwrap();
    let server = common::TestServer::start(ServerConfig {
        api_keys: keys,
        rate_limit: RateLimit {
            per_second: unlimited,
            burst: unlimited,
        },
        ..ServerConfig::default()
    })
    .await;
    let url = server.url("/graphql");
    let bare = format!("http://{}", server.addr);
    let run = move |url: String, key: Option<String>| {
        tokio::task::spawn_blocking(move || {
            let mut command = Command::new(env!("CARGO_BIN_EXE_annals"));
            command
                .args(["bench", "graphql", "--url", &url])
                .args(["--requests", "60", "--connections", "3", "--json"])
                .env("RUST_LOG", "warn")
                .env_remove("ANNALS_API_KEY");
            if let Some(key) = key {
                command.env("ANNALS_API_KEY", key);
            }
            command.output().unwrap()
        })
    };

    // Without the key the setup is refused, loudly, and nothing is written.
    let out = run(url.clone(), None).await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    assert!(stderr.contains("ANNALS_API_KEY"), "{stderr}");
    assert_eq!(server.store.head().0, 0);

    // With the key (from the environment; a bare server URL gets /graphql).
    let out = run(bare, Some(key)).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["conditions"]["target"], "url");
    assert_eq!(report["conditions"]["url"], url);
    assert!(report["store_head"].is_null());
    assert_operation(&report["mutation"], "mutation");
    assert_operation(&report["point_query"], "point_query");
    let placed = report["orders_placed"].as_u64().unwrap();
    let setup = report["conditions"]["setup_orders"].as_u64().unwrap();
    assert_eq!(
        orders_placed_in(&server.store).await,
        setup + placed,
        "the server's log holds exactly the orders the bench reports"
    );
    // And the read model agrees, through the API.
    let first_order = server
        .ok_as(
            Some(&reader),
            r#"query($h: Position) { orders(first: 1, atLeast: $h) { edges { node { customerId } } } }"#,
            serde_json::json!({ "h": server.store.head().0.to_string() }),
        )
        .await;
    let customer = first_order["orders"]["edges"][0]["node"]["customerId"]
        .as_str()
        .unwrap()
        .to_string();
    let stats = server
        .ok_as(
            Some(&reader),
            r#"query($c: String!) { customerStats(id: $c) { totalOrders } }"#,
            serde_json::json!({ "c": customer }),
        )
        .await;
    assert_eq!(
        stats["customerStats"]["totalOrders"],
        (setup + placed).to_string(),
        "{stats}"
    );
    server.stop().await;
}

#[test]
fn graphql_bench_fails_loudly_when_nothing_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let out = annals(&[
        "bench",
        "graphql",
        "--url",
        &format!("http://{addr}/graphql"),
        "--requests",
        "10",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TRANSPORT"), "{stderr}");
    let out = annals(&["bench", "graphql", "--connections", "0", "--requests", "10"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--connections"));
}
