//! Concurrency invariants over real HTTP: 64 clients at once against one server compete
//! for the last units of stock, for the same order's state transitions, and for the same
//! stream with exact expected versions. Nothing is oversold, no illegal transition gets
//! into the log, exactly one append wins per expected version, and every loser gets a
//! typed error code.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;

use annals::server::ServerConfig;
use annals::server::auth::RateLimit;
use common::*;
use serde_json::{Value, json};

const CLIENTS: usize = 64;

/// A server whose rate limit never gets in the way of the races.
async fn server() -> Arc<TestServer> {
    let unlimited = NonZeroU32::new(1_000_000).unwrap();
    Arc::new(
        TestServer::start(ServerConfig {
            rate_limit: RateLimit {
                per_second: unlimited,
                burst: unlimited,
            },
            ..ServerConfig::default()
        })
        .await,
    )
}

/// Runs `CLIENTS` requests at once, each on its own task, and returns their bodies in
/// client order.
async fn race<F, Fut>(server: &Arc<TestServer>, request: F) -> Vec<Value>
where
    F: Fn(Arc<TestServer>, usize) -> Fut,
    Fut: std::future::Future<Output = Value> + Send + 'static,
{
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(request(server.clone(), i)))
        .collect();
    let mut bodies = Vec::with_capacity(CLIENTS);
    for task in tasks {
        bodies.push(task.await.unwrap());
    }
    bodies
}

/// The error code of a failed response, or None when it succeeded.
fn code_of(body: &Value) -> Option<String> {
    if body.get("errors").is_none() {
        assert!(!body["data"].is_null(), "neither data nor errors: {body}");
        return None;
    }
    Some(first_error(body).0)
}

async fn stream_events(server: &TestServer, id: &str) -> Vec<Value> {
    let data = server
        .ok(
            r#"query($id: String!) { stream(id: $id, limit: 1000) { nextVersion events { position streamVersion eventId type payload } } }"#,
            json!({ "id": id }),
        )
        .await;
    assert!(
        data["stream"]["nextVersion"].is_null(),
        "one page is enough"
    );
    data["stream"]["events"].as_array().unwrap().clone()
}

async fn head(server: &TestServer) -> String {
    server.ok("{ head }", json!({})).await["head"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_racing_for_the_last_ten_units_never_oversell() {
    let server = server().await;
    product(&server, "last", 100, 10).await;
    let bodies = race(&server, |server, i| async move {
        server
            .post(
                None,
                PLACE,
                json!({ "order": format!("race-{i}"), "product": "last", "qty": 1 }),
            )
            .await
            .1
    })
    .await;
    let mut winners = Vec::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for (i, body) in bodies.iter().enumerate() {
        match code_of(body) {
            None => winners.push(i),
            Some(code) => *codes.entry(code).or_default() += 1,
        }
    }
    assert_eq!(winners.len(), 10, "exactly the stock is sold: {codes:?}");
    for code in codes.keys() {
        assert!(
            code == "INSUFFICIENT_STOCK" || code == "CONFLICT",
            "a loser got {code}: {codes:?}"
        );
    }
    // The log holds exactly the winners' reservations, and only theirs.
    let events = stream_events(&server, "product-last").await;
    let reserved: Vec<String> = events
        .iter()
        .filter(|e| e["type"] == "StockReserved")
        .map(|e| e["payload"]["order_id"].as_str().unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = winners.iter().map(|i| format!("race-{i}")).collect();
    let mut actual = reserved.clone();
    expected.sort();
    actual.sort();
    assert_eq!(actual, expected);
    let at = head(&server).await;
    let product = &server
        .ok(
            r#"query($at: Position) { product(id: "last", atLeast: $at) { onHand reserved available } }"#,
            json!({ "at": at }),
        )
        .await["product"];
    assert_eq!(product["onHand"], "10", "{product}");
    assert_eq!(product["reserved"], "10", "{product}");
    assert_eq!(product["available"], "0", "{product}");
    eprintln!("last units: 10 winners, losers {codes:?}");
}

const CONFIRM: &str = r#"mutation($id: String!) { confirmOrder(orderId: $id) { position streams { streamId version } } }"#;
const SHIP: &str = r#"mutation($id: String!) { shipOrder(orderId: $id, trackingNumber: "TRK") { position streams { streamId version } } }"#;
const CANCEL: &str = r#"mutation($id: String!) { cancelOrder(orderId: $id, reason: "race") { position streams { streamId version } } }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_racing_on_one_order_make_only_legal_transitions() {
    let server = server().await;
    product(&server, "p", 100, 1_000).await;
    let mut finals = BTreeMap::<String, usize>::new();
    for round in 0..6 {
        let order = format!("o{round}");
        server
            .ok(PLACE, json!({ "order": order, "product": "p", "qty": 2 }))
            .await;
        // A different mix per round, so that each transition gets to win some races:
        // without cancellations the order can end confirmed or shipped, with them it
        // almost always ends cancelled.
        let bodies = race(&server, |server, i| {
            let order = order.clone();
            async move {
                let kinds = if round % 2 == 0 { 2 } else { 3 };
                let query = match (i + round) % kinds {
                    0 => CONFIRM,
                    1 => SHIP,
                    _ => CANCEL,
                };
                let body = server.post(None, query, json!({ "id": order })).await.1;
                json!({ "query": query, "body": body })
            }
        })
        .await;
        let mut won: HashMap<&str, usize> = HashMap::new();
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        for entry in &bodies {
            let name = match entry["query"].as_str().unwrap() {
                CONFIRM => "OrderConfirmed",
                SHIP => "OrderShipped",
                _ => "OrderCancelled",
            };
            match code_of(&entry["body"]) {
                None => *won.entry(name).or_default() += 1,
                Some(code) => *codes.entry(code).or_default() += 1,
            }
        }
        for code in codes.keys() {
            assert!(
                code == "INVALID_STATE" || code == "CONFLICT",
                "a loser got {code}: {codes:?}"
            );
        }
        let events = stream_events(&server, &format!("order-{order}")).await;
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let legal: [&[&str]; 4] = [
            &["OrderPlaced"],
            &["OrderPlaced", "OrderConfirmed"],
            &["OrderPlaced", "OrderConfirmed", "OrderShipped"],
            &["OrderPlaced", "OrderCancelled"],
        ];
        let legal_too: &[&str] = &["OrderPlaced", "OrderConfirmed", "OrderCancelled"];
        assert!(
            legal.contains(&types.as_slice()) || types == legal_too,
            "illegal history {types:?}"
        );
        // Every acknowledged transition is in the stream exactly once, and nothing else is.
        for name in ["OrderConfirmed", "OrderShipped", "OrderCancelled"] {
            let in_log = types.iter().filter(|t| **t == name).count();
            assert_eq!(
                won.get(name).copied().unwrap_or(0),
                in_log,
                "{name}: acknowledged vs in the log ({types:?})"
            );
        }
        let status = match *types.last().unwrap() {
            "OrderConfirmed" => "CONFIRMED",
            "OrderShipped" => "SHIPPED",
            "OrderCancelled" => "CANCELLED",
            _ => "PLACED",
        };
        let at = head(&server).await;
        let view = &server
            .ok(
                r#"query($id: String!, $at: Position) { order(id: $id, atLeast: $at) { status version } }"#,
                json!({ "id": order, "at": at }),
            )
            .await["order"];
        assert_eq!(view["status"], status, "read model vs log");
        assert_eq!(view["version"], types.len().to_string());
        *finals.entry(status.to_string()).or_default() += 1;
    }
    // A cancellation releases its reservation exactly once.
    let product = stream_events(&server, "product-p").await;
    let mut held: HashMap<String, i64> = HashMap::new();
    for e in &product {
        let order = e["payload"]["order_id"].as_str().unwrap_or("").to_string();
        match e["type"].as_str().unwrap() {
            "StockReserved" => *held.entry(order).or_default() += 1,
            "StockReleased" => *held.entry(order).or_default() -= 1,
            _ => {}
        }
    }
    assert!(held.values().all(|n| *n == 0 || *n == 1), "{held:?}");
    let released = held.values().filter(|n| **n == 0).count();
    assert_eq!(
        released,
        finals.get("CANCELLED").copied().unwrap_or(0),
        "one release per cancelled order"
    );
    eprintln!("order races: final states {finals:?}");
}

const APPEND: &str = r#"mutation($stream: String!, $expected: ExpectedVersionInput!, $events: [EventInput!]!) {
  appendToStream(streamId: $stream, expectedVersion: $expected, events: $events) {
    position streams { firstVersion version }
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_appends_with_the_same_exact_version_have_one_winner_per_version() {
    let server = server().await;
    let stream = "race-1";
    let seed: Vec<Value> = (0..3)
        .map(|i| json!({ "type": "Seeded", "payload": { "i": i } }))
        .collect();
    server
        .ok(
            APPEND,
            json!({ "stream": stream, "expected": { "state": "NO_STREAM" }, "events": seed }),
        )
        .await;
    // Every client starts at version 3 and, after each loss, retries at the version the
    // error reported, until its one event is in: 64 expected versions, 64 races.
    let results = race(&server, |server, i| async move {
        let event_id = uuid::Uuid::new_v4().to_string();
        let mut expected = 3u64;
        let mut losses = Vec::new();
        loop {
            let (_, body) = server
                .post(
                    None,
                    APPEND,
                    json!({ "stream": "race-1", "expected": { "exact": expected.to_string() },
                            "events": [{ "eventId": event_id, "type": "Raced", "payload": { "client": i } }] }),
                )
                .await;
            match code_of(&body) {
                None => {
                    let result = &body["data"]["appendToStream"]["streams"][0];
                    assert_eq!(result["firstVersion"], (expected + 1).to_string());
                    return json!({ "won": expected, "eventId": event_id, "losses": losses });
                }
                Some(code) => {
                    let (_, error) = first_error(&body);
                    let actual: u64 = error["extensions"]["actual"]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(|| panic!("{code} without a parsable actual: {body}"));
                    assert_eq!(error["extensions"]["expected"], expected.to_string());
                    assert!(actual > expected, "lost to nobody: {body}");
                    losses.push(code);
                    expected = actual;
                }
            }
        }
    })
    .await;
    let mut winners: BTreeMap<u64, String> = BTreeMap::new();
    let mut losses = 0;
    for result in &results {
        for code in result["losses"].as_array().unwrap() {
            assert_eq!(code, "WRONG_EXPECTED_VERSION");
            losses += 1;
        }
        let won = result["won"].as_u64().unwrap();
        let id = result["eventId"].as_str().unwrap().to_string();
        assert!(
            winners.insert(won, id).is_none(),
            "two winners at expected version {won}"
        );
    }
    let versions: Vec<u64> = winners.keys().copied().collect();
    assert_eq!(versions, (3..3 + CLIENTS as u64).collect::<Vec<_>>());
    // The first race had 64 contenders and one winner, so 63 losers at least.
    assert!(losses >= CLIENTS - 1, "only {losses} losses");
    let events = stream_events(&server, stream).await;
    assert_eq!(events.len(), 3 + CLIENTS, "one event per client, no more");
    for (expected, id) in &winners {
        let event = &events[*expected as usize];
        assert_eq!(event["streamVersion"], (expected + 1).to_string());
        assert_eq!(event["eventId"], id.as_str(), "the winner's event");
    }
    eprintln!("exact versions: {CLIENTS} winners, {losses} WRONG_EXPECTED_VERSION losers");
}
