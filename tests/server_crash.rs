//! Whole-server crash loop: the real `annals serve` binary, concurrent HTTP clients
//! placing orders, receiving stock, cancelling and appending raw events, and a `kill -9`
//! at a random moment, over and over.
//!
//! Every client records each mutation the server acknowledged, with its position and its
//! streams' versions. After each kill, with the server stopped: every acknowledged event
//! is in the log at the acknowledged position, positions are gapless, the hash chain
//! verifies, no product has more reserved than it has on hand, and every read model equals
//! a from-scratch build up to its checkpoint. After each restart the server is ready
//! within a bound and the `product` read model, asked for `atLeast` the head, agrees with
//! the stock computed from the log. Orders and raw appends that got no answer are retried
//! after the restart with the same idempotency key / event ids: each retry is either the
//! original commit (`duplicate`) or a fresh one, never a second commit.
//!
//! `ANNALS_SERVER_CRASH_ROUNDS` sets the number of kills (default 20; `make soak` runs 100).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::{domain, read_models};
use annals_projections::{ReadModelStore, RuntimeOptions, build_until};
use annals_store::{EventStore, Position, ReadFilter, RecordedEvent, RocksEventStore};
use common::binary::{self, Server};
use serde_json::{Value, json};

mod common;

const PRODUCTS: usize = 6;
/// How long a restarted server may take to answer `/ready` with 200.
const READY_WITHIN: Duration = Duration::from_secs(30);

struct Rng(u64);

impl Rng {
    fn seeded(salt: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Rng((u64::from(nanos) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One stream's part of an acknowledged commit.
#[derive(Clone, Debug)]
struct AckedStream {
    stream: String,
    first_version: u64,
    version: u64,
    first_position: u64,
    last_position: u64,
}

/// A mutation the server acknowledged.
#[derive(Clone, Debug)]
struct Ack {
    what: &'static str,
    position: u64,
    streams: Vec<AckedStream>,
    /// The caller's event ids, in order (raw appends only).
    event_ids: Vec<String>,
    /// The event type expected first on each stream, by stream id.
    types: Vec<(String, &'static str)>,
}

const STREAMS: &str =
    "position duplicate streams { streamId firstVersion version firstPosition lastPosition }";

fn number(value: &Value) -> u64 {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a decimal string: {value}"))
}

/// What the server said to one request.
enum Outcome {
    /// Committed: the commit result.
    Acked(Value),
    /// Refused with this code (and the request and response, for the failure message).
    Refused(String, String),
    /// No answer (the server died): committed or not, nobody knows.
    Unknown,
}

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    async fn mutate(&self, field: &str, query: &str, variables: Value) -> Outcome {
        let response = match self
            .http
            .post(&self.url)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
        {
            Ok(response) => response,
            Err(_) => return Outcome::Unknown,
        };
        let Ok(body) = response.json::<Value>().await else {
            return Outcome::Unknown;
        };
        if let Some(error) = body["errors"].get(0) {
            let code = error["extensions"]["code"]
                .as_str()
                .unwrap_or_else(|| panic!("error without a code: {body}"));
            return Outcome::Refused(code.to_string(), format!("{field}({variables}): {body}"));
        }
        Outcome::Acked(body["data"][field].clone())
    }
}

fn ack(
    what: &'static str,
    result: &Value,
    types: Vec<(String, &'static str)>,
    ids: Vec<String>,
) -> Ack {
    let streams = result["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| AckedStream {
            stream: s["streamId"].as_str().unwrap().to_string(),
            first_version: number(&s["firstVersion"]),
            version: number(&s["version"]),
            first_position: number(&s["firstPosition"]),
            last_position: number(&s["lastPosition"]),
        })
        .collect();
    Ack {
        what,
        position: number(&result["position"]),
        streams,
        event_ids: ids,
        types,
    }
}

/// Shared between the clients of a round and the checks.
#[derive(Default)]
struct Journal {
    acks: Mutex<Vec<Ack>>,
    /// Refusals with a code the client did not expect.
    unexpected: Mutex<Vec<String>>,
    refused: std::sync::atomic::AtomicU64,
    unknown: std::sync::atomic::AtomicU64,
    /// Requests without an answer, to retry after the restart.
    pending: Mutex<Vec<Retry>>,
    /// Retries the server answered as the original commit.
    duplicates: std::sync::atomic::AtomicU64,
}

/// A request that got no answer, with everything needed to send it again unchanged.
#[derive(Clone)]
struct Retry {
    what: &'static str,
    query: String,
    variables: Value,
    allowed: &'static [&'static str],
    types: Vec<(String, &'static str)>,
    ids: Vec<String>,
}

impl Journal {
    fn record(&self, outcome: Outcome, allowed: &[&str], on_ack: impl FnOnce(&Value) -> Ack) {
        match outcome {
            Outcome::Acked(result) => {
                assert_eq!(
                    result["duplicate"], false,
                    "a first request is never a retry"
                );
                self.acks.lock().unwrap().push(on_ack(&result));
            }
            Outcome::Refused(code, detail) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                if !allowed.contains(&code.as_str()) {
                    self.unexpected.lock().unwrap().push(detail);
                }
            }
            Outcome::Unknown => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One client's loop until `stop`: kind 0 places (and sometimes cancels or confirms)
/// orders, kind 1 receives stock, kind 2 appends raw events.
async fn client_loop(
    client: Client,
    kind: usize,
    tag: String,
    journal: Arc<Journal>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = Rng::seeded(seed);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let product = format!("p{}", rng.below(PRODUCTS as u64));
        match kind {
            0 => {
                let order = format!("{tag}-{n}");
                let qty = 1 + rng.below(3);
                let query = format!(
                    r#"mutation($o: String!, $p: String!, $q: Int!, $k: String) {{ placeOrder(orderId: $o, customerId: "c", lines: [{{productId: $p, quantity: $q}}], idempotencyKey: $k) {{ {STREAMS} }} }}"#
                );
                let variables =
                    json!({ "o": order, "p": product, "q": qty, "k": format!("key-{order}") });
                let outcome = client.mutate("placeOrder", &query, variables.clone()).await;
                let placed = matches!(outcome, Outcome::Acked(_));
                let types = vec![
                    (format!("order-{order}"), "OrderPlaced"),
                    (format!("product-{product}"), "StockReserved"),
                ];
                if matches!(outcome, Outcome::Unknown) {
                    journal.pending.lock().unwrap().push(Retry {
                        what: "placeOrder",
                        query: query.clone(),
                        variables,
                        allowed: &["INSUFFICIENT_STOCK", "CONFLICT"],
                        types: types.clone(),
                        ids: Vec::new(),
                    });
                }
                journal.record(outcome, &["INSUFFICIENT_STOCK", "CONFLICT"], |r| {
                    ack("placeOrder", r, types, Vec::new())
                });
                if placed && rng.below(3) == 0 {
                    let (field, mutation, first) = if rng.below(2) == 0 {
                        (
                            "cancelOrder",
                            format!(
                                r#"mutation($o: String!) {{ cancelOrder(orderId: $o, reason: "crash test") {{ {STREAMS} }} }}"#
                            ),
                            "OrderCancelled",
                        )
                    } else {
                        (
                            "confirmOrder",
                            format!(
                                r#"mutation($o: String!) {{ confirmOrder(orderId: $o) {{ {STREAMS} }} }}"#
                            ),
                            "OrderConfirmed",
                        )
                    };
                    let outcome = client.mutate(field, &mutation, json!({ "o": order })).await;
                    let mut types = vec![(format!("order-{order}"), first)];
                    if field == "cancelOrder" {
                        types.push((format!("product-{product}"), "StockReleased"));
                    }
                    journal.record(outcome, &["CONFLICT"], |r| {
                        ack(
                            if field == "cancelOrder" {
                                "cancelOrder"
                            } else {
                                "confirmOrder"
                            },
                            r,
                            types,
                            Vec::new(),
                        )
                    });
                }
            }
            1 => {
                let query = format!(
                    r#"mutation($p: String!, $q: Int!) {{ receiveStock(productId: $p, quantity: $q) {{ {STREAMS} }} }}"#
                );
                let outcome = client
                    .mutate(
                        "receiveStock",
                        &query,
                        json!({ "p": product, "q": 1 + rng.below(4) }),
                    )
                    .await;
                let types = vec![(format!("product-{product}"), "StockReceived")];
                journal.record(outcome, &["CONFLICT"], |r| {
                    ack("receiveStock", r, types, Vec::new())
                });
                // Stock arrives slower than orders, so that the orders run into the limit.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                let stream = format!("note-{tag}");
                let ids: Vec<String> = (0..1 + rng.below(3))
                    .map(|_| uuid::Uuid::new_v4().to_string())
                    .collect();
                let events: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({ "eventId": id, "type": "NoteTaken", "payload": { "n": n } }))
                    .collect();
                let query = format!(
                    r#"mutation($s: String!, $e: [EventInput!]!) {{ appendToStream(streamId: $s, expectedVersion: {{state: ANY}}, events: $e) {{ {STREAMS} }} }}"#
                );
                let variables = json!({ "s": stream, "e": events });
                let outcome = client
                    .mutate("appendToStream", &query, variables.clone())
                    .await;
                let types = vec![(stream.clone(), "NoteTaken")];
                if matches!(outcome, Outcome::Unknown) {
                    journal.pending.lock().unwrap().push(Retry {
                        what: "appendToStream",
                        query: query.clone(),
                        variables,
                        allowed: &[],
                        types: types.clone(),
                        ids: ids.clone(),
                    });
                }
                journal.record(outcome, &[], |r| ack("appendToStream", r, types, ids));
            }
        }
    }
}

fn spawn_server(data: &Path, log: &Path) -> Server {
    // The clients confirm and cancel orders themselves (the checkout's crash loop is
    // tests/checkout_crash.rs).
    binary::spawn_server(data, log, &["--checkout", "off"])
}

async fn wait_ready(server: &mut Server, http: &reqwest::Client, log: &Path) -> Duration {
    binary::wait_ready(server, http, log, READY_WITHIN).await
}

async fn graphql(http: &reqwest::Client, base: &str, query: &str, variables: Value) -> Value {
    let body: Value = http
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    body["data"].clone()
}

/// Stock per product computed from the log: (on hand, reserved).
fn stock_from_log(events: &[RecordedEvent]) -> HashMap<String, (u64, u64)> {
    let mut stock: HashMap<String, (u64, u64)> = HashMap::new();
    for event in events {
        let Some(id) = event.stream_id.as_str().strip_prefix("product-") else {
            continue;
        };
        let payload: Value = serde_json::from_slice(&event.payload).unwrap();
        let quantity = payload["quantity"].as_u64().unwrap_or(0);
        let entry = stock.entry(id.to_string()).or_default();
        match event.event_type.as_str() {
            "StockReceived" => entry.0 += quantity,
            "StockReserved" => entry.1 += quantity,
            "StockReleased" => {
                entry.1 = entry
                    .1
                    .checked_sub(quantity)
                    .expect("released more than reserved")
            }
            _ => {}
        }
    }
    stock
}

/// The checks on the stopped server's data directory. Returns the log and the stock.
async fn check_stopped(
    data: &Path,
    journal: &Journal,
) -> (u64, HashMap<String, (u64, u64)>, Vec<u64>) {
    let store = Arc::new(RocksEventStore::open_read_only(data.join("log")).unwrap());
    let head = store.head();
    // The whole log: gapless positions from 1 to the head.
    let mut events = Vec::with_capacity(head.0 as usize);
    let mut from = Position(1);
    loop {
        let page = store
            .read_all(from, 10_000, &ReadFilter::default())
            .await
            .unwrap();
        if page.events.is_empty() {
            break;
        }
        events.extend(page.events);
        from = page.next;
    }
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.position.0, i as u64 + 1, "gap in the log");
    }
    assert_eq!(events.len() as u64, head.0, "events up to the head");
    let report = store.verify_chain(Position(1), head).await.unwrap();
    assert!(report.is_ok(), "hash chain broken: {report:?}");
    assert_eq!(report.checked, head.0);

    // Every acknowledged commit is where the server said it was.
    let at = |position: u64| -> &RecordedEvent {
        assert!(
            position >= 1 && position <= head.0,
            "acknowledged position {position} is past the head {}",
            head.0
        );
        &events[position as usize - 1]
    };
    for ack in journal.acks.lock().unwrap().iter() {
        let last = ack.streams.iter().map(|s| s.last_position).max().unwrap();
        assert_eq!(last, ack.position, "{ack:?}");
        for s in &ack.streams {
            assert_eq!(
                s.last_position - s.first_position,
                s.version - s.first_version,
                "{ack:?}"
            );
            for (offset, version) in (s.first_version..=s.version).enumerate() {
                let event = at(s.first_position + offset as u64);
                assert_eq!(event.stream_id.as_str(), s.stream, "{} {ack:?}", ack.what);
                assert_eq!(event.stream_version, version, "{ack:?}");
            }
            let expected_type = ack
                .types
                .iter()
                .find(|(stream, _)| *stream == s.stream)
                .map(|(_, t)| *t)
                .unwrap_or_else(|| panic!("unexpected stream in {ack:?}"));
            assert_eq!(at(s.first_position).event_type, expected_type, "{ack:?}");
        }
        for (offset, id) in ack.event_ids.iter().enumerate() {
            let event = at(ack.streams[0].first_position + offset as u64);
            assert_eq!(event.event_id.to_string(), *id, "{ack:?}");
        }
    }

    // Nothing oversold.
    let stock = stock_from_log(&events);
    for (product, (on_hand, reserved)) in &stock {
        assert!(
            reserved <= on_hand,
            "{product} oversold: {reserved} reserved of {on_hand}"
        );
    }

    // Every read model equals a from-scratch build up to its checkpoint.
    let read = Arc::new(ReadModelStore::open(data.join("read")).unwrap());
    let upcasters = Arc::new(domain::upcasters());
    let mut checkpoints = Vec::new();
    for projection in read_models::projections() {
        let name = projection.name().to_string();
        let Some(generation) = read.active_generation(&name) else {
            checkpoints.push(0);
            continue;
        };
        let checkpoint = read.checkpoint(&name, generation).unwrap();
        assert!(checkpoint <= head, "{name}: checkpoint past the head");
        let scratch_dir = tempfile::tempdir().unwrap();
        let scratch = Arc::new(ReadModelStore::open(scratch_dir.path()).unwrap());
        let reached = build_until(
            &store,
            &scratch,
            projection,
            &upcasters,
            &RuntimeOptions::default(),
            checkpoint,
        )
        .await
        .unwrap();
        assert_eq!(reached, checkpoint);
        let (actual, expected) = (read.dump(&name).unwrap(), scratch.dump(&name).unwrap());
        assert_eq!(actual.len(), expected.len(), "{name}: rows at {checkpoint}");
        assert!(
            actual == expected,
            "{name}: read model differs from a scratch build at {checkpoint}"
        );
        assert!(read.parked(&name).unwrap().is_empty(), "{name}: parked");
        checkpoints.push(checkpoint.0);
    }
    drop(read);
    (head.0, stock, checkpoints)
}

/// With the server up again: every request that got no answer is sent again unchanged.
/// A retry of a request that had committed must be answered as that commit
/// (`duplicate`); one that had not commits now or is refused with its usual code.
async fn retry_pending(http: &reqwest::Client, base: &str, journal: &Journal) {
    let pending = std::mem::take(&mut *journal.pending.lock().unwrap());
    let client = Client {
        http: http.clone(),
        url: format!("{base}/graphql"),
    };
    for retry in pending {
        let field = retry.what;
        match client
            .mutate(field, &retry.query, retry.variables.clone())
            .await
        {
            Outcome::Acked(result) => {
                if result["duplicate"] == true {
                    journal.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                let acked = ack(retry.what, &result, retry.types, retry.ids);
                journal.acks.lock().unwrap().push(acked);
            }
            Outcome::Refused(code, detail) => {
                assert!(
                    retry.allowed.contains(&code.as_str()),
                    "retry refused with {code}: {detail}"
                );
            }
            Outcome::Unknown => panic!("retry of {field} got no answer from a live server"),
        }
    }
}

/// With the server up again: the `product` read model at the head agrees with the log.
async fn check_products(
    http: &reqwest::Client,
    base: &str,
    head: u64,
    stock: &HashMap<String, (u64, u64)>,
) {
    for (product, (on_hand, reserved)) in stock {
        let data = graphql(
            http,
            base,
            "query($id: String!, $at: Position) { product(id: $id, atLeast: $at) { onHand reserved } }",
            json!({ "id": product, "at": head.to_string() }),
        )
        .await;
        assert_eq!(
            number(&data["product"]["onHand"]),
            *on_hand,
            "{product} on hand"
        );
        assert_eq!(
            number(&data["product"]["reserved"]),
            *reserved,
            "{product} reserved"
        );
    }
}

#[test]
fn kill_9_of_the_whole_server_loses_nothing_acknowledged() {
    let rounds = binary::rounds("ANNALS_SERVER_CRASH_ROUNDS", 20);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log: PathBuf = dir.path().join("server.log");
    let (rt, http) = binary::client_runtime();
    let started = Instant::now();
    rt.block_on(async {
        let journal = Arc::new(Journal::default());
        let mut rng = Rng::seeded(7);
        let mut server = spawn_server(&data, &log);
        let mut slowest_ready = wait_ready(&mut server, &http, &log).await;
        for p in 0..PRODUCTS {
            graphql(
                &http,
                &server.base,
                r#"mutation($id: String!) { registerProduct(productId: $id, sku: "S", name: "N", priceCents: 100) { position } }"#,
                json!({ "id": format!("p{p}") }),
            )
            .await;
        }
        let mut heads = Vec::new();
        let mut last_checkpoints = Vec::new();
        for round in 0..rounds {
            let stop = Arc::new(AtomicBool::new(false));
            let tasks: Vec<_> = (0..6)
                .map(|c| {
                    let client = Client {
                        http: http.clone(),
                        url: format!("{}/graphql", server.base),
                    };
                    tokio::spawn(client_loop(
                        client,
                        [0, 0, 0, 1, 2, 2][c],
                        format!("r{round}c{c}"),
                        journal.clone(),
                        stop.clone(),
                        (round * 16 + c) as u64,
                    ))
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(300 + rng.below(900))).await;
            // SIGKILL mid-traffic: no destructor, no flush, no graceful shutdown.
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            stop.store(true, Ordering::Relaxed);
            for task in tasks {
                task.await.unwrap();
            }
            let unexpected = journal.unexpected.lock().unwrap().clone();
            assert!(unexpected.is_empty(), "unexpected error codes: {unexpected:?}");

            let (head, stock, checkpoints) = check_stopped(&data, &journal).await;
            heads.push(head);
            last_checkpoints = checkpoints;

            server = spawn_server(&data, &log);
            slowest_ready = slowest_ready.max(wait_ready(&mut server, &http, &log).await);
            let served = number(&graphql(&http, &server.base, "{ head }", json!({})).await["head"]);
            assert_eq!(served, head, "the restarted server's head");
            check_products(&http, &server.base, head, &stock).await;
            retry_pending(&http, &server.base, &journal).await;
        }
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        let acks = journal.acks.lock().unwrap().len();
        assert!(acks > rounds * 10, "too little traffic: {acks} acknowledged");
        let grew = heads.windows(2).filter(|w| w[1] > w[0]).count();
        assert!(grew >= rounds / 2, "the log barely grew between kills: {heads:?}");
        eprintln!(
            "server crash test: {rounds} kills, {acks} acknowledged mutations checked, \
             head {}, refused {}, unanswered {} (retries answered as duplicates {}), read-model checkpoints {last_checkpoints:?}, \
             slowest ready {:.2}s, {:.1}s",
            heads.last().copied().unwrap_or(0),
            journal.refused.load(Ordering::Relaxed),
            journal.unknown.load(Ordering::Relaxed),
            journal.duplicates.load(Ordering::Relaxed),
            slowest_ready.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    });
}
