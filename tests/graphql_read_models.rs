//! The read-model side of the GraphQL API over real HTTP: a write read back with
//! `atLeast` without sleeping, every read-model query, cursor pagination, projection status
//! and control, `STALE_READ_TIMEOUT`, and the projections in `/ready` and `/metrics`.

mod common;

use std::time::Duration;

use annals::server::ServerConfig;
use annals::server::auth::{ApiKeys, Role, generate_key};
use common::{PLACE, TestServer, park_a_ghost_confirmation, product};
use serde_json::{Value, json};

const ORDER: &str = r#"query($id: String!, $at: Position) {
  order(id: $id, atLeast: $at) { id customerId status totalCents lines { productId quantity unitPriceCents } version position placedAt }
}"#;

const PRODUCT: &str = r#"query($id: String!, $at: Position) {
  product(id: $id, atLeast: $at) { id sku name priceCents onHand reserved available version }
}"#;

async fn place(server: &TestServer, order: &str, product: &str, qty: i64) -> String {
    let data = server
        .ok(
            PLACE,
            json!({ "order": order, "product": product, "qty": qty }),
        )
        .await;
    data["placeOrder"]["position"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_reads_back_with_at_least_without_sleeping() {
    let server = TestServer::open().await;
    product(&server, "mug", 900, 5).await;
    let position = place(&server, "o-1", "mug", 2).await;
    // No sleep: atLeast makes the query wait for the read model to apply the commit.
    let data = server
        .ok(ORDER, json!({ "id": "o-1", "at": position }))
        .await;
    let order = &data["order"];
    assert_eq!(order["id"], "o-1");
    assert_eq!(order["customerId"], "c-1");
    assert_eq!(order["status"], "PLACED");
    assert_eq!(order["totalCents"], "1800");
    assert_eq!(order["lines"][0]["productId"], "mug");
    assert_eq!(order["lines"][0]["quantity"], "2");
    assert_eq!(order["version"], "1");
    assert!(order["placedAt"].as_str().unwrap().ends_with('Z'));
    let data = server
        .ok(PRODUCT, json!({ "id": "mug", "at": position }))
        .await;
    let p = &data["product"];
    assert_eq!(
        (
            p["onHand"].as_str(),
            p["reserved"].as_str(),
            p["available"].as_str()
        ),
        (Some("5"), Some("2"), Some("3"))
    );
    assert_eq!(p["sku"], "SKU");
    let stats = server
        .ok(
            r#"query($at: Position) { customerStats(id: "c-1", atLeast: $at) { customerId totalOrders cancelledOrders revenueCents averageOrderValueCents } }"#,
            json!({ "at": position }),
        )
        .await;
    assert_eq!(stats["customerStats"]["revenueCents"], "1800");
    assert_eq!(stats["customerStats"]["averageOrderValueCents"], "1800");
    // Unknown ids are null, not errors.
    let data = server
        .ok(ORDER, json!({ "id": "nope", "at": position }))
        .await;
    assert!(data["order"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_paginate_with_cursors_by_customer_and_status() {
    let server = TestServer::open().await;
    product(&server, "pen", 100, 100).await;
    let mut last = String::new();
    for i in 0..5 {
        last = place(&server, &format!("o-{i}"), "pen", 1).await;
    }
    let confirm = server
        .ok(
            r#"mutation { confirmOrder(orderId: "o-3") { position } }"#,
            json!({}),
        )
        .await;
    let confirmed_at = confirm["confirmOrder"]["position"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!last.is_empty());
    const ORDERS: &str = r#"query($first: Int, $after: String, $status: OrderStatus, $at: Position) {
      orders(customerId: "c-1", status: $status, first: $first, after: $after, atLeast: $at) {
        edges { cursor node { id status } }
        pageInfo { hasNextPage endCursor }
      }
    }"#;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let data = server
            .ok(
                ORDERS,
                json!({ "first": 2, "after": after, "at": confirmed_at }),
            )
            .await;
        let page = &data["orders"];
        for edge in page["edges"].as_array().unwrap() {
            seen.push(edge["node"]["id"].as_str().unwrap().to_string());
        }
        if page["pageInfo"]["hasNextPage"] != json!(true) {
            break;
        }
        after = page["pageInfo"]["endCursor"].as_str().map(str::to_string);
    }
    assert_eq!(seen, ["o-0", "o-1", "o-2", "o-3", "o-4"]);
    let data = server
        .ok(ORDERS, json!({ "status": "CONFIRMED", "at": confirmed_at }))
        .await;
    let ids: Vec<_> = data["orders"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].clone())
        .collect();
    assert_eq!(ids, [json!("o-3")]);
    // Bad cursors and page sizes are the client's error.
    let (code, _) = server.error(ORDERS, json!({ "after": "zz" })).await;
    assert_eq!(code, "BAD_USER_INPUT");
    let (code, _) = server.error(ORDERS, json!({ "first": 0 })).await;
    assert_eq!(code, "BAD_USER_INPUT");
    let (code, _) = server.error(ORDERS, json!({ "first": 100_000 })).await;
    assert_eq!(code, "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_and_low_stock() {
    let server = TestServer::open().await;
    product(&server, "a", 100, 3).await;
    product(&server, "b", 100, 50).await;
    product(&server, "c", 100, 0).await;
    let head = server.ok("{ head }", json!({})).await["head"].clone();
    let data = server
        .ok(
            r#"query($at: Position) { products(first: 2, atLeast: $at) { nodes { id } pageInfo { hasNextPage endCursor } } lowStock(threshold: 5, atLeast: $at) { id available } }"#,
            json!({ "at": head }),
        )
        .await;
    assert_eq!(data["products"]["nodes"], json!([{"id": "a"}, {"id": "b"}]));
    assert_eq!(data["products"]["pageInfo"]["hasNextPage"], true);
    assert_eq!(
        data["lowStock"],
        json!([{"id": "c", "available": "0"}, {"id": "a", "available": "3"}])
    );
    let (code, _) = server
        .error(r#"{ lowStock(threshold: -1) { id } }"#, json!({}))
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_time_out_and_positions_beyond_the_head_are_refused() {
    let server = TestServer::start(ServerConfig {
        stale_read_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await;
    product(&server, "mug", 900, 5).await;
    let data = server
        .ok(
            r#"mutation { pauseProjection(name: "orders") { name state } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["pauseProjection"]["name"], "orders");
    let position = place(&server, "o-1", "mug", 1).await;
    let (code, error) = server
        .error(ORDER, json!({ "id": "o-1", "at": position }))
        .await;
    assert_eq!(code, "STALE_READ_TIMEOUT", "{error}");
    assert_eq!(error["extensions"]["atLeast"], json!(position));
    // The products projection is not paused: its read model answers.
    server
        .ok(PRODUCT, json!({ "id": "mug", "at": position }))
        .await;
    let status = server
        .ok(
            r#"{ projections { name state checkpoint head lag } }"#,
            json!({}),
        )
        .await;
    let orders = status["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "orders")
        .unwrap()
        .clone();
    assert_eq!(orders["state"], "PAUSED");
    assert_ne!(orders["lag"], "0");
    server
        .ok(
            r#"mutation { resumeProjection(name: "orders") { state } }"#,
            json!({}),
        )
        .await;
    server
        .ok(ORDER, json!({ "id": "o-1", "at": position }))
        .await;
    let (code, _) = server
        .error(ORDER, json!({ "id": "o-1", "at": "999999999" }))
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    let (code, _) = server
        .error(ORDER, json!({ "id": "o-1", "at": "-1" }))
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    let (code, _) = server
        .error(
            r#"mutation { pauseProjection(name: "nope") { state } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_keeps_answering_and_only_admins_control_projections() {
    let (reader, r) = generate_key(Role::Reader).unwrap();
    let (writer, w) = generate_key(Role::Writer).unwrap();
    let (admin, a) = generate_key(Role::Admin).unwrap();
    let server = TestServer::start(ServerConfig {
        api_keys: ApiKeys::parse(&format!("{r}\n{w}\n{a}\n")).unwrap(),
        ..ServerConfig::default()
    })
    .await;
    let registered = server
        .ok_as(Some(&writer), r#"mutation { registerProduct(productId: "p", sku: "S", name: "N", priceCents: 5) { position } }"#, json!({}))
        .await;
    let position = registered["registerProduct"]["position"].clone();
    for key in [&reader, &writer] {
        let (code, _) = server
            .error_as(
                Some(key),
                r#"mutation { rebuildProjection(name: "products") { state } }"#,
                json!({}),
            )
            .await;
        assert_eq!(code, "FORBIDDEN");
    }
    let data = server
        .ok_as(
            Some(&admin),
            r#"mutation { rebuildProjection(name: "products") { name generation } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["rebuildProjection"]["name"], "products");
    // Queries keep answering during and after the rebuild; it takes over as generation 2.
    // (`atLeast`: the serving generation may not have applied the registration yet.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let data = server
            .ok_as(Some(&reader), r#"query($at: Position) { product(id: "p", atLeast: $at) { id } projections { name generation rebuild { checkpoint } } }"#, json!({ "at": position }))
            .await;
        assert_eq!(data["product"]["id"], "p");
        let products: Value = data["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "products")
            .unwrap()
            .clone();
        if products["generation"] == 2 && products["rebuild"].is_null() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rebuild never took over: {products}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, _) = server
        .error_as(
            Some(&admin),
            r#"mutation { rebuildProjection(name: "nope") { state } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_metrics_report_the_projections() {
    let server = TestServer::open().await;
    product(&server, "mug", 900, 5).await;
    let ready: Value = server
        .client
        .get(server.url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for name in ["projection:orders", "projection:products"] {
        let check = &ready["checks"][name];
        assert_eq!(check["status"], "up", "{ready}");
        assert!(
            check["state"].is_string() && check["lag"].is_u64(),
            "{ready}"
        );
    }
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "annals_projection_lag_events{projection=\"orders\"}",
        "annals_projection_checkpoint_position{projection=\"products\"}",
        "annals_projection_events_per_second",
    ] {
        assert!(metrics.contains(needle), "{needle} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_over_http_streams_the_audit_trail_for_admins_only() {
    let (reader, r) = generate_key(Role::Reader).unwrap();
    let (admin, a) = generate_key(Role::Admin).unwrap();
    let server = TestServer::start(ServerConfig {
        api_keys: ApiKeys::parse(&format!("{r}\n{a}\n")).unwrap(),
        ..ServerConfig::default()
    })
    .await;
    server
        .ok_as(Some(&admin), r#"mutation { registerProduct(productId: "p", sku: "S", name: "N", priceCents: 5) { position } }"#, json!({}))
        .await;
    server
        .ok_as(
            Some(&admin),
            r#"mutation { receiveStock(productId: "p", quantity: 3) { position } }"#,
            json!({}),
        )
        .await;
    let get = |key: Option<&str>, query: &str| {
        let mut request = server.client.get(server.url(&format!("/export{query}")));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let response = get(Some(&admin), "?format=ndjson").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = response.text().await.unwrap();
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "two events and the manifest: {body}");
    assert_eq!(lines[0]["position"], 1);
    assert_eq!(lines[2]["manifest"]["count"], 2);
    let csv = get(Some(&admin), "?format=csv&category=product")
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(csv.text().await.unwrap().lines().count() >= 3);

    let forbidden = get(Some(&reader), "").await.unwrap();
    assert_eq!(forbidden.status(), 403);
    let body: Value = forbidden.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "FORBIDDEN");
    assert_eq!(get(None, "").await.unwrap().status(), 401);
    let bad = get(Some(&admin), "?format=xml").await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let bad = get(Some(&admin), "?since=yesterday").await.unwrap();
    assert_eq!(bad.status(), 400);
}

/// Given an event the orders projection cannot apply (a confirmation of an order it never
/// saw), when an admin lists the parked events, retries one, skips it and rewinds the
/// projection, then each answers as documented, and readers and writers may do none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_are_listed_retried_and_skipped_and_projections_rewound_by_admins() {
    let (writer, w) = generate_key(Role::Writer).unwrap();
    let (admin, a) = generate_key(Role::Admin).unwrap();
    let server = TestServer::start(ServerConfig {
        api_keys: ApiKeys::parse(&format!("{w}\n{a}\n")).unwrap(),
        ..ServerConfig::default()
    })
    .await;
    let position = park_a_ghost_confirmation(&server, &admin).await;
    const PARKED: &str = r#"{ parkedEvents(projection: "orders") { projection position eventId streamId eventType error attempts parkedAt } }"#;
    let parked = server.ok_as(Some(&admin), PARKED, json!({})).await;
    let list = parked["parkedEvents"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{parked}");
    assert_eq!(list[0]["position"], position);
    assert_eq!(list[0]["streamId"], "order-ghost");
    assert_eq!(list[0]["eventType"], "OrderConfirmed");
    let attempts = list[0]["attempts"].as_i64().unwrap();
    assert!(attempts >= 1);
    assert!(list[0]["parkedAt"].as_str().unwrap().ends_with('Z'));

    let (code, _) = server.error_as(Some(&writer), PARKED, json!({})).await;
    assert_eq!(code, "FORBIDDEN");
    for mutation in [
        r#"mutation($p: Position!) { retryParkedEvent(projection: "orders", position: $p) }"#,
        r#"mutation($p: Position!) { skipParkedEvent(projection: "orders", position: $p) }"#,
        r#"mutation($p: Position!) { rewindProjection(name: "orders", from: $p) { name } }"#,
    ] {
        let (code, _) = server
            .error_as(Some(&writer), mutation, json!({ "p": position }))
            .await;
        assert_eq!(code, "FORBIDDEN", "{mutation}");
    }

    // Retried, the handler fails again: still parked, one more attempt.
    let retried = server
        .ok_as(
            Some(&admin),
            r#"mutation($p: Position!) { retryParkedEvent(projection: "orders", position: $p) }"#,
            json!({ "p": position }),
        )
        .await;
    assert_eq!(retried["retryParkedEvent"], false);
    let parked = server.ok_as(Some(&admin), PARKED, json!({})).await;
    assert_eq!(
        parked["parkedEvents"][0]["attempts"].as_i64().unwrap(),
        attempts + 1
    );

    // Skipped: gone from the list; a second skip or a retry finds nothing there.
    let skipped = server
        .ok_as(
            Some(&admin),
            r#"mutation($p: Position!) { skipParkedEvent(projection: "orders", position: $p) }"#,
            json!({ "p": position }),
        )
        .await;
    assert_eq!(skipped["skipParkedEvent"], true);
    let parked = server.ok_as(Some(&admin), PARKED, json!({})).await;
    assert_eq!(parked["parkedEvents"], json!([]));
    for mutation in [
        r#"mutation($p: Position!) { retryParkedEvent(projection: "orders", position: $p) }"#,
        r#"mutation($p: Position!) { skipParkedEvent(projection: "orders", position: $p) }"#,
    ] {
        let (code, _) = server
            .error_as(Some(&admin), mutation, json!({ "p": position }))
            .await;
        assert_eq!(code, "NOT_FOUND", "{mutation}");
    }
    let (code, _) = server
        .error_as(
            Some(&admin),
            r#"{ parkedEvents(projection: "nope") { position } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");

    // Rewound to the event: the projection is handed it again and parks it again.
    let rewound = server
        .ok_as(
            Some(&admin),
            r#"mutation($p: Position!) { rewindProjection(name: "orders", from: $p) { name } }"#,
            json!({ "p": position }),
        )
        .await;
    assert_eq!(rewound["rewindProjection"]["name"], "orders");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let parked = server.ok_as(Some(&admin), PARKED, json!({})).await;
        if parked["parkedEvents"].as_array().unwrap().len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rewound projection did not park the event again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
