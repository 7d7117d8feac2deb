#![allow(missing_docs)] // criterion_group! generates undocumented functions.
//! GraphQL over HTTP: a point query (`product` from its read model) and the `placeOrder`
//! mutation, each with 1 and 16 concurrent connections, against an in-process server on
//! 127.0.0.1:0 with the default `Fsync` durability.
//!
//! Each criterion iteration is one request; with C connections the iterations are split
//! over C client tasks, so `time` is the inverse of throughput and, at C = 1, the
//! request latency.
//!
//! `cargo bench --bench graphql` (`ANNALS_BENCH_QUICK=1` for a short run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use annals::node::{Node, NodeConfig};
use annals::server::auth::RateLimit;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

struct Bench {
    url: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn post(client: &reqwest::Client, url: &str, query: &str, variables: Value) {
    let body: Value = client
        .post(url)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("errors").is_none(), "{body}");
}

async fn start() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/graphql", listener.local_addr().unwrap());
    let mut config = NodeConfig::on_disk(dir.path());
    // The bench measures the API path (`bench command --saga` measures the checkout).
    config.checkout = None;
    // The bench measures the API, not the per-key limiter's refusals.
    let unlimited = std::num::NonZeroU32::new(10_000_000).unwrap();
    config.server.rate_limit = RateLimit {
        per_second: unlimited,
        burst: unlimited,
    };
    let node = Node::start(config).unwrap();
    tokio::spawn(node.serve(listener, std::future::pending()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    // One product per connection: orders of different connections do not race for the
    // same stock stream, so the bench measures the API rather than conflict retries.
    for p in 0..MAX_CONNECTIONS {
        post(
            &client,
            &url,
            r#"mutation($p: String!) { registerProduct(productId: $p, sku: "S", name: "N", priceCents: 100) { position } }"#,
            json!({ "p": format!("p{p}") }),
        )
        .await;
        post(
            &client,
            &url,
            r#"mutation($p: String!) { receiveStock(productId: $p, quantity: 2000000000) { position } }"#,
            json!({ "p": format!("p{p}") }),
        )
        .await;
    }
    Bench {
        url,
        client,
        _dir: dir,
    }
}

const MAX_CONNECTIONS: u64 = 16;
const POINT: &str = r#"{ product(id: "p0") { available version } }"#;
const PLACE: &str = r#"mutation($o: String!, $p: String!) { placeOrder(orderId: $o, customerId: "c", lines: [{productId: $p, quantity: 1}]) { position } }"#;

fn bench(c: &mut Criterion) {
    let quick = std::env::var_os("ANNALS_BENCH_QUICK").is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let bench = runtime.block_on(start());
    let orders = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("graphql_http");
    group.throughput(Throughput::Elements(1));
    if quick {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
    }
    for connections in [1u64, MAX_CONNECTIONS] {
        for (name, mutation) in [("point_query", false), ("place_order", true)] {
            group.bench_function(format!("{name}/{connections}conn"), |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let started = Instant::now();
                        let mut tasks = Vec::new();
                        for worker in 0..connections {
                            let n = iters / connections + u64::from(worker < iters % connections);
                            let client = bench.client.clone();
                            let url = bench.url.clone();
                            let orders = orders.clone();
                            tasks.push(tokio::spawn(async move {
                                for _ in 0..n {
                                    if mutation {
                                        let o = orders.fetch_add(1, Ordering::Relaxed);
                                        let vars = json!({ "o": format!("o{o}"), "p": format!("p{worker}") });
                                        post(&client, &url, PLACE, vars).await;
                                    } else {
                                        post(&client, &url, POINT, json!({})).await;
                                    }
                                }
                            }));
                        }
                        for task in tasks {
                            task.await.unwrap();
                        }
                        started.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
