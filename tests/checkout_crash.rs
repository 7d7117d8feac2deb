//! The checkout under `kill -9`: the real `annals serve` binary with the checkout saga and
//! a simulated gateway that declines 20% of payments, 16 HTTP clients checking out (and
//! shipping or cancelling some confirmed orders), and a `kill -9` at a random moment, 10
//! times. Unanswered placements are retried with their idempotency keys after each
//! restart. Afterwards, once the saga is quiet, the log must show that every order reached
//! exactly one final state (confirmed or shipped, or cancelled with its stock released),
//! no payment was captured or refunded twice, every authorized payment of a cancelled order
//! was refunded, no deadline fired twice, and each product's stock equals received −
//! shipped − reserved for the orders still open.
//!
//! `ANNALS_CHECKOUT_CRASH_ROUNDS` sets the number of kills (default 10).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals_store::{EventStore, Position, ReadFilter, RecordedEvent, RocksEventStore};
use common::binary::{self, Server, graphql};
use serde_json::{Value, json};

mod common;

const PRODUCTS: usize = 4;
const CLIENTS: usize = 16;

fn spawn_server(data: &Path, log: &Path) -> Server {
    binary::spawn_server(
        data,
        log,
        &[
            "--checkout",
            "on",
            "--gateway-decline-rate",
            "0.2",
            // Short enough that a payment left unanswered by a kill is decided in the test.
            "--payment-timeout-secs",
            "4",
        ],
    )
}

async fn wait_ready(server: &mut Server, http: &reqwest::Client, log: &Path) {
    binary::wait_ready(server, http, log, Duration::from_secs(30)).await;
}

const PLACE: &str = r#"mutation($o: String!, $p: String!, $q: Int!, $k: String!) {
  placeOrder(orderId: $o, customerId: "crash", lines: [{ productId: $p, quantity: $q }], idempotencyKey: $k) { position }
}"#;
const STATUS: &str = r#"query($o: String!) { order(id: $o) { status } }"#;
const SHIP: &str =
    r#"mutation($o: String!) { shipOrder(orderId: $o, trackingNumber: "T") { position } }"#;
const CANCEL: &str =
    r#"mutation($o: String!) { cancelOrder(orderId: $o, reason: "changed mind") { position } }"#;

/// Orders whose placement got no answer, to be retried with the same key.
#[derive(Default)]
struct Journal {
    placed: Mutex<Vec<String>>,
    unanswered: Mutex<Vec<(String, String, i64)>>,
    unexpected: Mutex<Vec<String>>,
    seq: AtomicU64,
}

const EXPECTED: [&str; 3] = ["INSUFFICIENT_STOCK", "INVALID_STATE", "CONFLICT"];

fn code(body: &Value) -> Option<String> {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_string)
}

async fn client(
    http: reqwest::Client,
    base: String,
    c: usize,
    journal: Arc<Journal>,
    stop: Arc<AtomicBool>,
) {
    let mut mine: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = journal.seq.fetch_add(1, Ordering::Relaxed);
        let order = format!("c{c}-{n}");
        let product = format!("p{}", n as usize % PRODUCTS);
        let quantity = 1 + (n % 3) as i64;
        let variables = json!({ "o": order, "p": product, "q": quantity, "k": order });
        match graphql(&http, &base, PLACE, variables).await {
            None => {
                journal
                    .unanswered
                    .lock()
                    .unwrap()
                    .push((order, product, quantity));
                return;
            }
            Some(body) => match code(&body) {
                None => {
                    journal.placed.lock().unwrap().push(order.clone());
                    mine.push(order);
                }
                Some(code) if EXPECTED.contains(&code.as_str()) => {}
                Some(code) => journal.unexpected.lock().unwrap().push(code),
            },
        }
        // Now and then an earlier order of this client that the saga confirmed is shipped
        // (its payment is captured) or cancelled (its payment is refunded).
        if n.is_multiple_of(4) && mine.len() > 2 {
            let earlier = mine.remove(0);
            let Some(body) = graphql(&http, &base, STATUS, json!({ "o": earlier })).await else {
                return;
            };
            if body["data"]["order"]["status"] == "CONFIRMED" {
                let mutation = if n.is_multiple_of(8) { SHIP } else { CANCEL };
                match graphql(&http, &base, mutation, json!({ "o": earlier })).await {
                    None => return,
                    Some(body) => match code(&body) {
                        None => {}
                        Some(code) if EXPECTED.contains(&code.as_str()) => {}
                        Some(code) => journal.unexpected.lock().unwrap().push(code),
                    },
                }
            }
        }
    }
}

/// Retries the placements that got no answer, with their idempotency keys.
async fn retry_unanswered(http: &reqwest::Client, base: &str, journal: &Journal) {
    let pending = std::mem::take(&mut *journal.unanswered.lock().unwrap());
    for (order, product, quantity) in pending {
        let variables = json!({ "o": order, "p": product, "q": quantity, "k": order });
        let body = graphql(http, base, PLACE, variables)
            .await
            .expect("the server answers");
        match code(&body) {
            None => journal.placed.lock().unwrap().push(order),
            Some(code) if EXPECTED.contains(&code.as_str()) => {}
            Some(code) => panic!("retry of {order} answered {code}: {body}"),
        }
    }
}

/// Waits until the checkout has nothing left to do: no command in its outbox, no
/// deadline pending, and its projection at the head.
async fn wait_quiet(http: &reqwest::Client, base: &str) {
    let started = Instant::now();
    loop {
        let body = graphql(
            http,
            base,
            "{ head processes { outbox deadlines parked projection { checkpoint } } }",
            json!({}),
        )
        .await
        .expect("the server answers");
        let process = &body["data"]["processes"][0];
        let quiet = process["outbox"] == "0"
            && process["deadlines"] == "0"
            && process["projection"]["checkpoint"] == body["data"]["head"];
        if quiet {
            assert_eq!(process["parked"], "0", "no command was parked: {body}");
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the checkout did not settle: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn payload(event: &RecordedEvent) -> Value {
    serde_json::from_slice(&event.payload).unwrap()
}

fn id_of(event: &RecordedEvent) -> String {
    event
        .stream_id
        .as_str()
        .split_once('-')
        .unwrap()
        .1
        .to_string()
}

/// Checks the whole log once the saga is quiet and the server is stopped.
async fn check_log(data: &Path, placed: &[String]) -> (usize, usize, usize) {
    let store = RocksEventStore::open(data.join("log"), Default::default()).unwrap();
    let mut events = Vec::new();
    let mut from = Position(1);
    loop {
        let page = store
            .read_all(from, 10_000, &ReadFilter::all())
            .await
            .unwrap();
        if page.events.is_empty() {
            break;
        }
        from = page.next;
        events.extend(page.events);
    }
    store.close();

    let mut orders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut payments: HashMap<String, Vec<String>> = HashMap::new();
    let mut deadlines: HashMap<String, Vec<String>> = HashMap::new();
    let mut lines: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    // Per product: received, shipped, reservations by order (open ones only).
    let mut received: HashMap<String, u64> = HashMap::new();
    let mut shipped: HashMap<String, u64> = HashMap::new();
    let mut held: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut released: HashMap<String, Vec<String>> = HashMap::new();
    for event in &events {
        let id = id_of(event);
        let p = payload(event);
        match event.category() {
            "order" => {
                if event.event_type == "OrderPlaced" {
                    let l = p["lines"].as_array().unwrap().iter().map(|l| {
                        (
                            l["product_id"].as_str().unwrap().to_string(),
                            l["quantity"].as_u64().unwrap(),
                        )
                    });
                    lines.insert(id.clone(), l.collect());
                }
                orders.entry(id).or_default().push(event.event_type.clone());
            }
            "payment" => payments
                .entry(id)
                .or_default()
                .push(event.event_type.clone()),
            "checkout" => {
                let name = p["deadline"].as_str().unwrap().to_string();
                deadlines.entry(id).or_default().push(name);
            }
            "product" => {
                let order = p["order_id"].as_str().unwrap_or_default().to_string();
                let quantity = p["quantity"].as_u64().unwrap_or(0);
                match event.event_type.as_str() {
                    "StockReceived" => *received.entry(id).or_default() += quantity,
                    "StockReserved" => {
                        held.entry(id).or_default().insert(order, quantity);
                    }
                    "StockShipped" => {
                        *shipped.entry(id.clone()).or_default() += quantity;
                        held.entry(id).or_default().remove(&order);
                    }
                    "StockReleased" => {
                        released.entry(order.clone()).or_default().push(id.clone());
                        held.entry(id).or_default().remove(&order);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    for order in placed {
        assert!(
            orders.contains_key(order),
            "acknowledged order {order} is in the log"
        );
    }
    let count = |list: &[String], what: &str| list.iter().filter(|t| *t == what).count();
    let (mut confirmed, mut shipped_orders, mut cancelled) = (0, 0, 0);
    let mut open: HashMap<String, u64> = HashMap::new();
    for (order, history) in &orders {
        for once in [
            "OrderPlaced",
            "OrderAwaitingPayment",
            "OrderConfirmed",
            "OrderShipped",
            "OrderCancelled",
        ] {
            assert!(
                count(history, once) <= 1,
                "{order}: {once} more than once: {history:?}"
            );
        }
        let is_cancelled = count(history, "OrderCancelled") == 1;
        let is_shipped = count(history, "OrderShipped") == 1;
        let is_confirmed = count(history, "OrderConfirmed") == 1;
        assert!(
            !(is_cancelled && is_shipped),
            "{order} shipped and cancelled: {history:?}"
        );
        assert!(
            is_cancelled || is_confirmed,
            "{order} reached no final state: {history:?}"
        );
        let payment = payments.get(order).cloned().unwrap_or_default();
        for once in [
            "PaymentRequested",
            "PaymentAuthorized",
            "PaymentDeclined",
            "PaymentCaptured",
            "PaymentRefunded",
        ] {
            assert!(
                count(&payment, once) <= 1,
                "{order}: {once} twice: {payment:?}"
            );
        }
        let authorized = count(&payment, "PaymentAuthorized") == 1;
        if is_cancelled {
            cancelled += 1;
            let released_by = released.get(order).cloned().unwrap_or_default();
            assert_eq!(
                released_by.len(),
                lines[order].len(),
                "{order}'s stock is released once per line"
            );
            if authorized {
                assert_eq!(
                    count(&payment, "PaymentRefunded"),
                    1,
                    "{order}'s payment is refunded: {payment:?}"
                );
            }
            assert_eq!(
                count(&payment, "PaymentCaptured"),
                0,
                "{order}: captured but cancelled"
            );
        } else if is_shipped {
            shipped_orders += 1;
            assert!(authorized, "{order} shipped unpaid: {payment:?}");
            assert_eq!(
                count(&payment, "PaymentCaptured"),
                1,
                "{order}'s payment is captured"
            );
            assert_eq!(count(&payment, "PaymentRefunded"), 0);
        } else {
            confirmed += 1;
            assert!(authorized, "{order} confirmed unpaid: {payment:?}");
            assert_eq!(count(&payment, "PaymentRefunded"), 0);
            for (product, quantity) in &lines[order] {
                *open.entry(product.clone()).or_default() += quantity;
            }
        }
        let fired = deadlines.get(order).cloned().unwrap_or_default();
        assert!(
            count(&fired, "payment") <= 1,
            "{order}'s deadline fired twice"
        );
    }
    for p in 0..PRODUCTS {
        let product = format!("p{p}");
        let reserved: u64 = held.get(&product).map(|h| h.values().sum()).unwrap_or(0);
        assert_eq!(
            reserved,
            open.get(&product).copied().unwrap_or(0),
            "{product}: reserved is what the open orders hold"
        );
        let on_hand = received[&product] - shipped.get(&product).copied().unwrap_or(0);
        assert!(on_hand >= reserved, "{product}: reserved beyond on hand");
    }
    (confirmed, shipped_orders, cancelled)
}

#[test]
fn kill_9_during_checkouts_leaves_every_order_in_one_final_state() {
    let rounds = binary::rounds("ANNALS_CHECKOUT_CRASH_ROUNDS", 10);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log: PathBuf = dir.path().join("server.log");
    let (rt, http) = binary::client_runtime();
    let started = Instant::now();
    rt.block_on(async {
        let journal = Arc::new(Journal::default());
        let mut server = spawn_server(&data, &log);
        wait_ready(&mut server, &http, &log).await;
        for p in 0..PRODUCTS {
            let register = r#"mutation($id: String!) { registerProduct(productId: $id, sku: "S", name: "N", priceCents: 125) { position } receiveStock(productId: $id, quantity: 100000) { position } }"#;
            graphql(&http, &server.base, register, json!({ "id": format!("p{p}") }))
                .await
                .unwrap();
        }
        let mut seed = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
        );
        for _ in 0..rounds {
            let stop = Arc::new(AtomicBool::new(false));
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    tokio::spawn(client(
                        http.clone(),
                        server.base.clone(),
                        c,
                        journal.clone(),
                        stop.clone(),
                    ))
                })
                .collect();
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            tokio::time::sleep(Duration::from_millis(400 + (seed >> 33) % 800)).await;
            // SIGKILL mid-traffic: no destructor, no flush, no graceful shutdown.
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            stop.store(true, Ordering::Relaxed);
            for task in tasks {
                task.await.unwrap();
            }
            server = spawn_server(&data, &log);
            wait_ready(&mut server, &http, &log).await;
            retry_unanswered(&http, &server.base, &journal).await;
        }
        let unexpected = journal.unexpected.lock().unwrap().clone();
        assert!(unexpected.is_empty(), "unexpected error codes: {unexpected:?}");
        wait_quiet(&http, &server.base).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        let placed = journal.placed.lock().unwrap().clone();
        assert!(placed.len() > rounds * 10, "too little traffic: {} orders", placed.len());
        let (confirmed, shipped, cancelled) = check_log(&data, &placed).await;
        assert!(cancelled > 0 && confirmed + shipped > 0, "both outcomes occur");
        eprintln!(
            "checkout crash test: {rounds} kills, {} orders: {confirmed} confirmed, {shipped} shipped, {cancelled} cancelled; {:.1}s",
            placed.len(),
            started.elapsed().as_secs_f64()
        );
    });
}
