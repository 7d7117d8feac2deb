//! The checkout saga end to end, on a real server with the simulated payment gateway: the
//! happy path, a decline, a payment deadline with a gateway that never answers, a gateway
//! that fails until the circuit opens and then recovers, and the refund of a confirmed
//! order that is cancelled. Each checks the events on every stream, the read models and
//! the stock.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use annals::node::{CheckoutConfig, NodeConfig};
use annals::payments::{GatewayMode, GatewayOptions, GuardOptions, SimulatedGateway};
use annals_projections::process::{ManualClock, RetryPolicy};
use annals_store::{Direction, EventStore, RecordedEvent, StreamId};
use common::{PLACE, TestServer, product};
use serde_json::{Value, json};

/// The order, its payment, its checkout and the stock, each read model at least at `$at`.
const ORDER: &str = r#"query($id: String!, $at: Position) {
  order(id: $id, atLeast: $at) { status cancelReason payment { id status amountCents reason } }
  payment(id: $id, atLeast: $at) { status }
  checkout(orderId: $id, atLeast: $at) { step cancelReason correlationId deadlines { name } history { eventType } }
  product(id: "p-1", atLeast: $at) { onHand reserved available }
}"#;

/// The order query over read models that have caught up with the log's head.
async fn order(server: &TestServer, id: &str) -> Value {
    let head = server.store.head().0;
    server.ok(ORDER, json!({ "id": id, "at": head })).await
}

/// A server with the checkout, the simulated gateway `gateway` behind a quick guard, and
/// a clock the test moves.
async fn shop(gateway: Arc<SimulatedGateway>, clock: Arc<ManualClock>) -> TestServer {
    shop_retrying(gateway, clock, 1_000).await
}

async fn shop_retrying(
    gateway: Arc<SimulatedGateway>,
    clock: Arc<ManualClock>,
    max_attempts: u32,
) -> TestServer {
    let server = TestServer::with_node(|node: &mut NodeConfig| {
        let mut checkout = CheckoutConfig {
            clock: clock.clone(),
            ..CheckoutConfig::default()
        };
        checkout.dispatcher.retry = RetryPolicy {
            max_attempts,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        };
        node.checkout = Some(checkout);
        node.gateway.gateway = Some(gateway);
        node.gateway.guard = GuardOptions {
            timeout: Duration::from_millis(200),
            failures_to_open: 3,
            open_for: Duration::from_millis(300),
        };
    })
    .await;
    product(&server, "p-1", 250, 10).await;
    server
}

fn gateway(options: GatewayOptions) -> Arc<SimulatedGateway> {
    Arc::new(SimulatedGateway::new(options))
}

async fn place(server: &TestServer, order: &str, quantity: i64) {
    server
        .ok(
            PLACE,
            json!({ "order": order, "product": "p-1", "qty": quantity }),
        )
        .await;
}

/// Polls `check` every 20 ms, moving the clock a minute each time (retries and deadlines
/// are due by it), until it holds; fails after 20 s.
async fn eventually<F, Fut>(what: &str, clock: Option<&ManualClock>, mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<Value>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        if let Some(clock) = clock {
            clock.advance(Duration::from_secs(60));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the order's checkout reaches `step`; returns the order query's data.
async fn step(
    server: &TestServer,
    clock: Option<&ManualClock>,
    order_id: &str,
    step: &str,
) -> Value {
    eventually(&format!("{order_id} to reach {step}"), clock, || async {
        let data = order(server, order_id).await;
        (data["checkout"]["step"] == step).then_some(data)
    })
    .await;
    // Read again at the head that now holds the step: every read model in one answer
    // has then caught up with it (the first answer's read models may stand at different
    // positions past the head it asked for).
    order(server, order_id).await
}

async fn events(server: &TestServer, stream: &str) -> Vec<RecordedEvent> {
    server
        .store
        .read_stream(&StreamId::new(stream).unwrap(), 1, Direction::Forward, 1000)
        .await
        .unwrap()
}

fn types(events: &[RecordedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

/// Every event the checkout caused (its commands' and its deadlines') carries the
/// placement's correlation id and names as its cause an event of the log.
async fn check_links(server: &TestServer, order: &str) {
    let placed = events(server, &format!("order-{order}")).await.remove(0);
    let correlation = placed
        .metadata
        .correlation_id
        .expect("placement has a correlation id");
    let mut caused = events(server, &format!("order-{order}")).await.split_off(1);
    caused.extend(events(server, &format!("payment-{order}")).await);
    caused.extend(events(server, &format!("checkout-{order}")).await);
    caused.retain(|e| e.metadata.actor.as_deref() == Some("process:checkout"));
    assert!(caused.len() >= 2, "the checkout caused events");
    for event in caused {
        assert_eq!(
            event.metadata.correlation_id,
            Some(correlation),
            "{} of the checkout carries its correlation id",
            event.event_type
        );
        let cause = event.metadata.causation_id.expect("a causation id");
        assert!(
            server.store.find_event(cause).await.unwrap().is_some(),
            "{}'s cause is in the log",
            event.event_type
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_is_confirmed_then_shipped_and_captured() {
    let gateway = gateway(GatewayOptions::default());
    let clock = Arc::new(ManualClock::starting_now());
    let server = shop(gateway.clone(), clock.clone()).await;
    place(&server, "o-1", 2).await;

    let data = step(&server, None, "o-1", "CONFIRMED").await;
    assert_eq!(data["order"]["status"], "CONFIRMED");
    assert_eq!(data["order"]["payment"]["status"], "AUTHORIZED");
    assert_eq!(data["order"]["payment"]["amountCents"], "500");
    assert_eq!(
        data["checkout"]["deadlines"],
        json!([]),
        "the payment deadline is cancelled"
    );
    assert_eq!(data["product"]["reserved"], "2");

    server
        .ok(
            r#"mutation { shipOrder(orderId: "o-1", trackingNumber: "TRK-1") { position } }"#,
            json!({}),
        )
        .await;
    let data = step(&server, None, "o-1", "COMPLETED").await;
    assert_eq!(data["order"]["status"], "SHIPPED");
    assert_eq!(data["order"]["payment"]["status"], "CAPTURED");
    // Shipping fulfilled the reservation: both on-hand and reserved fell.
    assert_eq!(
        data["product"],
        json!({ "onHand": "8", "reserved": "0", "available": "8" })
    );

    assert_eq!(
        types(&events(&server, "order-o-1").await),
        [
            "OrderPlaced",
            "OrderAwaitingPayment",
            "OrderConfirmed",
            "OrderShipped"
        ]
    );
    assert_eq!(
        types(&events(&server, "payment-o-1").await),
        ["PaymentRequested", "PaymentAuthorized", "PaymentCaptured"]
    );
    assert_eq!(
        types(&events(&server, "product-p-1").await),
        [
            "ProductRegistered",
            "StockReceived",
            "StockReserved",
            "StockShipped"
        ]
    );
    assert!(
        events(&server, "checkout-o-1").await.is_empty(),
        "no deadline fired"
    );
    check_links(&server, "o-1").await;
    assert_eq!(gateway.calls("o-1/capture", true), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_cancels_the_order_and_releases_its_stock() {
    let gateway = gateway(GatewayOptions {
        decline_rate: 1.0,
        ..GatewayOptions::default()
    });
    let clock = Arc::new(ManualClock::starting_now());
    let server = shop(gateway, clock).await;
    place(&server, "o-2", 3).await;

    let data = step(&server, None, "o-2", "CANCELLED").await;
    assert_eq!(data["order"]["status"], "CANCELLED");
    assert!(
        data["order"]["cancelReason"]
            .as_str()
            .unwrap()
            .starts_with("payment declined"),
        "{data}"
    );
    assert_eq!(data["order"]["payment"]["status"], "DECLINED");
    assert_eq!(
        data["product"],
        json!({ "onHand": "10", "reserved": "0", "available": "10" })
    );
    assert_eq!(
        types(&events(&server, "order-o-2").await),
        ["OrderPlaced", "OrderAwaitingPayment", "OrderCancelled"]
    );
    assert_eq!(
        types(&events(&server, "payment-o-2").await),
        ["PaymentRequested", "PaymentDeclined"]
    );
    assert_eq!(
        types(&events(&server, "product-p-1").await),
        [
            "ProductRegistered",
            "StockReceived",
            "StockReserved",
            "StockReleased"
        ]
    );
    check_links(&server, "o-2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_never_answers_runs_into_the_deadline() {
    let gateway = gateway(GatewayOptions::default());
    gateway.set_mode(GatewayMode::Silent);
    let clock = Arc::new(ManualClock::starting_now());
    let server = shop(gateway.clone(), clock.clone()).await;
    place(&server, "o-3", 1).await;

    let data = step(&server, None, "o-3", "AWAITING_PAYMENT").await;
    assert_eq!(
        data["checkout"]["deadlines"],
        json!([{ "name": "payment" }])
    );
    assert_eq!(data["order"]["status"], "AWAITING_PAYMENT");

    // Fifteen minutes pass without an answer.
    clock.advance(Duration::from_secs(16 * 60));
    let data = step(&server, None, "o-3", "CANCELLED").await;
    assert!(
        data["order"]["cancelReason"]
            .as_str()
            .unwrap()
            .starts_with("no answer from the payment gateway"),
        "{data}"
    );
    assert_eq!(data["product"]["reserved"], "0");
    assert_eq!(data["order"]["payment"]["status"], "REQUESTED");
    let fired = events(&server, "checkout-o-3").await;
    assert_eq!(
        types(&fired),
        ["DeadlineReached"],
        "the deadline fired once"
    );

    // The gateway answers again: the retried authorization of a cancelled order is
    // declined without asking it, so no money is reserved only to be given back.
    gateway.set_mode(GatewayMode::Up);
    let answered = gateway.answered();
    let data = eventually(
        "the late authorization to be declined",
        Some(&clock),
        || async {
            let data = order(&server, "o-3").await;
            (data["order"]["payment"]["status"] == "DECLINED").then_some(data)
        },
    )
    .await;
    assert_eq!(data["order"]["status"], "CANCELLED");
    assert_eq!(gateway.answered(), answered, "the gateway was not asked");
    assert_eq!(
        types(&events(&server, "payment-o-3").await),
        ["PaymentRequested", "PaymentDeclined"]
    );
    assert_eq!(
        types(&events(&server, "checkout-o-3").await),
        ["DeadlineReached"],
        "still once"
    );
    check_links(&server, "o-3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gateway_opens_the_circuit_and_the_checkout_recovers_with_it() {
    let gateway = gateway(GatewayOptions::default());
    gateway.set_mode(GatewayMode::Down);
    let clock = Arc::new(ManualClock::starting_now());
    let server = shop(gateway.clone(), clock.clone()).await;
    for i in 0..4 {
        place(&server, &format!("o-b{i}"), 1).await;
    }
    let ready = eventually("the circuit to open", Some(&clock), || async {
        let ready: Value = reqwest::get(server.url("/ready"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (ready["checks"]["paymentGateway"]["circuit"] == "open").then_some(ready)
    })
    .await;
    assert_eq!(
        ready["status"], "ready",
        "an open circuit degrades, the node stays ready"
    );
    assert_eq!(ready["checks"]["paymentGateway"]["status"], "degraded");
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("annals_payment_gateway_circuit_state 2"),
        "the circuit's state is a metric"
    );
    let answered = gateway.answered();
    tokio::time::sleep(Duration::from_millis(100)).await;
    clock.advance(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        gateway.answered() <= answered + 1,
        "an open circuit lets at most a probe through"
    );

    gateway.set_mode(GatewayMode::Up);
    for i in 0..4 {
        let order = format!("o-b{i}");
        let data = step(&server, Some(&clock), &order, "CONFIRMED").await;
        assert_eq!(data["order"]["payment"]["status"], "AUTHORIZED");
        assert_eq!(
            types(&events(&server, &format!("payment-{order}")).await),
            ["PaymentRequested", "PaymentAuthorized"],
            "retries recorded the authorization once"
        );
    }
    let ready: Value = reqwest::get(server.url("/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["paymentGateway"]["circuit"], "closed");
    let status = server.state.processes()[0].status().unwrap();
    assert!(
        status.retried > 0,
        "the failed sends were retried: {status:?}"
    );
    assert_eq!(status.parked, 0);
    assert_eq!(status.outbox, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_confirmed_order_refunds_its_payment() {
    let gateway = gateway(GatewayOptions::default());
    let clock = Arc::new(ManualClock::starting_now());
    let server = shop(gateway.clone(), clock).await;
    place(&server, "o-4", 4).await;
    step(&server, None, "o-4", "CONFIRMED").await;
    server
        .ok(
            r#"mutation { cancelOrder(orderId: "o-4", reason: "customer changed their mind") { position } }"#,
            json!({}),
        )
        .await;
    let data = step(&server, None, "o-4", "CANCELLED").await;
    assert_eq!(data["order"]["payment"]["status"], "REFUNDED");
    assert_eq!(
        data["product"],
        json!({ "onHand": "10", "reserved": "0", "available": "10" })
    );
    assert_eq!(
        types(&events(&server, "payment-o-4").await),
        ["PaymentRequested", "PaymentAuthorized", "PaymentRefunded"]
    );
    assert_eq!(
        types(&events(&server, "order-o-4").await),
        [
            "OrderPlaced",
            "OrderAwaitingPayment",
            "OrderConfirmed",
            "OrderCancelled"
        ]
    );
    assert_eq!(gateway.calls("o-4/refund", false), 1);
    check_links(&server, "o-4").await;

    // An order waiting for its payment cannot be confirmed by hand.
    gateway.set_mode(GatewayMode::Silent);
    place(&server, "o-7", 1).await;
    step(&server, None, "o-7", "AWAITING_PAYMENT").await;
    let (code, _) = server
        .error(
            r#"mutation { confirmOrder(orderId: "o-7") { position } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "INVALID_STATE");
    gateway.set_mode(GatewayMode::Up);

    // An operator's second refund is refused by the payment, and no money moves.
    let (code, _) = server
        .error(
            r#"mutation { refundPayment(paymentId: "o-4", reason: "again") { position } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "INVALID_STATE");
    assert_eq!(gateway.calls("o-4/refund", false), 1);
}

fn processes(server: &TestServer, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_annals"))
        .arg("processes")
        .args(["--url", &server.url("")])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

const PARKED: &str =
    r#"{ parkedCommands(process: "checkout") { position index instance command attempts error } }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_checkout_commands_are_listed_retried_and_skipped() {
    let gateway = gateway(GatewayOptions::default());
    gateway.set_mode(GatewayMode::Down);
    let clock = Arc::new(ManualClock::starting_now());
    let server = shop_retrying(gateway.clone(), clock.clone(), 2).await;
    place(&server, "o-5", 1).await;
    place(&server, "o-6", 1).await;
    let parked = eventually("two parked authorizations", Some(&clock), || async {
        let data = server.ok(PARKED, json!({})).await;
        let parked = data["parkedCommands"].as_array().unwrap().clone();
        (parked.len() == 2).then_some(Value::Array(parked))
    })
    .await;
    let first = &parked[0];
    assert_eq!(first["instance"], "o-5");
    assert_eq!(first["attempts"], 2);
    assert!(
        first["command"]
            .as_str()
            .unwrap()
            .contains("AuthorizePayment")
    );
    assert!(
        first["error"].as_str().unwrap().contains("payment gateway"),
        "{first}"
    );

    let status = processes(&server, &["status"]);
    assert!(
        status.lines().any(|l| l.starts_with("checkout")),
        "{status}"
    );
    let listed = processes(&server, &["parked", "checkout"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.contains("o-5") && listed.contains("o-6"), "{listed}");

    // The gateway is back: o-5's authorization is retried from the command line, o-6's is
    // given up through GraphQL (its order waits for the deadline instead).
    gateway.set_mode(GatewayMode::Up);
    tokio::time::sleep(Duration::from_millis(400)).await; // the breaker's open period
    let at = |p: &Value| p["position"].as_str().unwrap().to_string();
    let retried = processes(&server, &["retry", "checkout", &at(first), "0"]);
    assert!(retried.contains("back in the outbox"), "{retried}");
    let skipped = server
        .ok(
            r#"mutation($at: Position!) { skipParkedCommand(process: "checkout", position: $at, index: 0) }"#,
            json!({ "at": at(&parked[1]) }),
        )
        .await;
    assert_eq!(skipped["skipParkedCommand"], true);
    let (code, _) = server
        .error(
            r#"mutation($at: Position!) { skipParkedCommand(process: "checkout", position: $at, index: 0) }"#,
            json!({ "at": at(&parked[1]) }),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");

    step(&server, Some(&clock), "o-5", "CONFIRMED").await;
    assert_eq!(
        server.ok(PARKED, json!({})).await["parkedCommands"],
        json!([])
    );
    // o-6 was never authorized: the deadline cancels it and releases its stock.
    let data = step(&server, Some(&clock), "o-6", "CANCELLED").await;
    assert_eq!(data["order"]["payment"]["status"], "REQUESTED");
    assert_eq!(data["product"]["reserved"], "1", "o-5 holds its unit");
}
