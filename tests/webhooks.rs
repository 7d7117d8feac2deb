//! Webhooks end to end: a receiver in the test that fails the first attempts of every
//! event and is down for a while still receives every event of its filter, each with a
//! valid signature, none lost, in log order; a receiver that keeps failing fills the dead
//! letters, which an operator redrives.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::node::NodeConfig;
use annals::webhooks::{self, Delivery};
use annals_projections::process::RetryPolicy;
use annals_store::{EventStore, Position, ReadFilter};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{PLACE, TestServer, product};
use serde_json::json;

#[derive(Default)]
struct Received {
    /// The secret to check signatures with.
    secret: Mutex<String>,
    /// Attempts seen per event id.
    attempts: Mutex<std::collections::HashMap<String, u32>>,
    /// Accepted deliveries, in the order they were accepted: (event id, position).
    accepted: Mutex<Vec<(String, u64)>>,
    /// Requests whose signature did not verify.
    forged: Mutex<u32>,
    /// Whether `/broken` answers 500.
    broken: Mutex<bool>,
}

async fn receive(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let secret = received.secret.lock().unwrap().clone();
    let signature = headers
        .get(webhooks::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !webhooks::verify(&secret, signature, &body) {
        *received.forged.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let delivery: Delivery = serde_json::from_slice(&body).unwrap();
    let header_id = headers
        .get(webhooks::EVENT_ID_HEADER)
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(header_id, delivery.event_id);
    let mut attempts = received.attempts.lock().unwrap();
    let seen = attempts.entry(delivery.event_id.clone()).or_default();
    *seen += 1;
    if *seen <= 2 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    received
        .accepted
        .lock()
        .unwrap()
        .push((delivery.event_id, delivery.position));
    StatusCode::OK
}

async fn broken(State(received): State<Arc<Received>>, body: Bytes) -> StatusCode {
    if *received.broken.lock().unwrap() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let delivery: Delivery = serde_json::from_slice(&body).unwrap();
    received
        .accepted
        .lock()
        .unwrap()
        .push((format!("broken:{}", delivery.event_id), delivery.position));
    StatusCode::OK
}

/// Serves the receiver on `listener` until `stop` fires.
fn serve(
    listener: tokio::net::TcpListener,
    received: Arc<Received>,
) -> tokio::sync::oneshot::Sender<()> {
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .route("/broken", post(broken))
        .with_state(received);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    stop
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_the_filter_arrives_signed_and_in_order_despite_failures() {
    let server = TestServer::with_node(|node: &mut NodeConfig| {
        node.checkout = None;
        node.webhooks.retry = RetryPolicy {
            max_attempts: 20,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
        };
    })
    .await;
    product(&server, "p-1", 100, 1000).await;
    let received = Arc::new(Received::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut stop = Some(serve(listener, received.clone()));

    let created = server
        .ok(
            r#"mutation($url: String!) { createWebhook(id: "orders", url: $url, categories: ["order"]) { id secret commit { position } } }"#,
            json!({ "url": format!("http://{addr}/hook") }),
        )
        .await;
    let secret = created["createWebhook"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(secret.starts_with("whsec_"));
    *received.secret.lock().unwrap() = secret;
    let since: u64 = created["createWebhook"]["commit"]["position"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    for i in 0..30 {
        if i == 10 {
            // The receiver goes down for a while.
            let _ = stop.take().unwrap().send(());
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        if i == 20 {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            stop = Some(serve(listener, received.clone()));
        }
        server
            .ok(
                PLACE,
                json!({ "order": format!("o-{i}"), "product": "p-1", "qty": 1 }),
            )
            .await;
        if i % 3 == 0 {
            server
                .ok(
                    r#"mutation($o: String!) { confirmOrder(orderId: $o) { position } }"#,
                    json!({ "o": format!("o-{i}") }),
                )
                .await;
        }
    }

    let expected: Vec<(String, u64)> = server
        .store
        .read_all(
            Position(since + 1),
            10_000,
            &ReadFilter::categories(["order"]),
        )
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| (e.event_id.to_string(), e.position.0))
        .collect();
    assert_eq!(expected.len(), 40, "30 placements and 10 confirmations");
    until("every order event", || {
        let accepted = received.accepted.lock().unwrap();
        let ids: HashSet<&String> = accepted.iter().map(|(id, _)| id).collect();
        ids.len() >= expected.len()
    })
    .await;
    let accepted = received.accepted.lock().unwrap().clone();
    let mut first_seen = Vec::new();
    let mut seen = HashSet::new();
    for (id, position) in &accepted {
        if seen.insert(id.clone()) {
            first_seen.push((id.clone(), *position));
        }
    }
    assert_eq!(
        first_seen, expected,
        "every event, none other, in log order"
    );
    assert_eq!(
        *received.forged.lock().unwrap(),
        0,
        "every request is signed"
    );

    let data = server
        .ok(
            r#"{ webhooks { id pending deadLetters delivered failures } }"#,
            json!({}),
        )
        .await;
    let hook = &data["webhooks"][0];
    assert_eq!(hook["id"], "orders");
    assert_eq!(hook["deadLetters"], "0");
    assert!(hook["failures"].as_str().unwrap().parse::<u64>().unwrap() >= 80);
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"annals_webhook_deliveries_total{webhook="orders"}"#),
        "delivery is in the metrics"
    );
    let _ = stop.take().unwrap().send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_keeps_failing_fills_the_dead_letters_and_redrive_delivers_them() {
    let server = TestServer::with_node(|node: &mut NodeConfig| {
        node.checkout = None;
        node.webhooks.retry = RetryPolicy {
            max_attempts: 3,
            first_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        };
    })
    .await;
    let received = Arc::new(Received::default());
    *received.broken.lock().unwrap() = true;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = serve(listener, received.clone());
    server
        .ok(
            r#"mutation($url: String!) { createWebhook(id: "stock", url: $url, eventTypes: ["ProductRegistered"]) { id } }"#,
            json!({ "url": format!("http://{addr}/broken") }),
        )
        .await;
    product(&server, "p-1", 100, 5).await;
    product(&server, "p-2", 100, 5).await;
    let dead = loop {
        let data = server
            .ok(
                r#"{ webhookDeadLetters(id: "stock") { position attempts error } }"#,
                json!({}),
            )
            .await;
        let dead = data["webhookDeadLetters"].as_array().unwrap().clone();
        if dead.len() == 2 {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead[0]["attempts"], 3);
    assert!(
        dead[0]["error"].as_str().unwrap().contains("500"),
        "{dead:?}"
    );
    assert!(received.accepted.lock().unwrap().is_empty());

    *received.broken.lock().unwrap() = false;
    for letter in &dead {
        let redriven = server
            .ok(
                r#"mutation($at: Position!) { redriveWebhook(id: "stock", position: $at) }"#,
                json!({ "at": letter["position"] }),
            )
            .await;
        assert_eq!(redriven["redriveWebhook"], true);
    }
    until("both redriven deliveries", || {
        received.accepted.lock().unwrap().len() == 2
    })
    .await;
    let positions: Vec<u64> = received
        .accepted
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p)| *p)
        .collect();
    assert!(positions[0] < positions[1], "redriven in order");
    let (code, _) = server
        .error(
            r#"mutation($at: Position!) { redriveWebhook(id: "stock", position: $at) }"#,
            json!({ "at": dead[0]["position"] }),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");

    // A deleted subscription receives nothing more.
    server
        .ok(
            r#"mutation { deleteWebhook(id: "stock") { position } }"#,
            json!({}),
        )
        .await;
    product(&server, "p-3", 100, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received.accepted.lock().unwrap().len(), 2);
    let (code, _) = server
        .error(
            r#"mutation { deleteWebhook(id: "stock") { position } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = server
        .error(
            r#"mutation { createWebhook(id: "bad", url: "ftp://example.com") { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "VALIDATION_ERROR");
    let _ = stop.send(());
}
