//! The GraphQL API end to end over real HTTP on 127.0.0.1:0: every log query, every
//! domain mutation, admin appends, error codes, limits, and the operational routes.

mod common;

use annals::server::ServerConfig;
use annals::server::auth::{ApiKeys, RateLimit, Role, generate_key};
use annals_store::EventStore;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_queries_head_stream_and_events() {
    log_queries_head_stream_and_events_on(false).await;
}

/// The same over a log in memory: the API does not depend on the store behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_queries_head_stream_and_events_in_memory() {
    log_queries_head_stream_and_events_on(true).await;
}

async fn log_queries_head_stream_and_events_on(in_memory: bool) {
    let server = TestServer::open_on(in_memory).await;
    assert_eq!(server.ok("{ head }", json!({})).await["head"], "0");
    product(&server, "p1", 250, 10).await;
    server
        .ok(
            r#"mutation { changePrice(productId: "p1", priceCents: 300) { position } }"#,
            json!({}),
        )
        .await;
    let data = server.ok("{ head }", json!({})).await;
    assert_eq!(data["head"], "3", "positions are decimal strings");

    let q = r#"query($id: String!, $from: Version, $back: Boolean, $limit: Int) {
      stream(id: $id, fromVersion: $from, backwards: $back, limit: $limit) {
        streamId version nextVersion
        events { position streamId category streamVersion eventId type schemaVersion recordedAt payload metadata { actor correlationId extra } }
      }
    }"#;
    let s = &server.ok(q, json!({ "id": "product-p1" })).await["stream"];
    assert_eq!(s["version"], "3");
    assert_eq!(s["nextVersion"], Value::Null);
    let types: Vec<&str> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["ProductRegistered", "StockReceived", "PriceChanged"]
    );
    let first = &s["events"][0];
    assert_eq!(first["payload"]["price_cents"], 250);
    assert_eq!(first["category"], "product");
    assert_eq!(first["metadata"]["actor"], "anonymous");
    assert!(first["recordedAt"].as_str().unwrap().ends_with('Z'));

    let back = &server
        .ok(q, json!({ "id": "product-p1", "back": true, "limit": 1 }))
        .await["stream"];
    assert_eq!(back["events"][0]["streamVersion"], "3");
    assert_eq!(back["nextVersion"], "2");
    let middle = &server
        .ok(q, json!({ "id": "product-p1", "from": "2", "limit": 1 }))
        .await["stream"];
    assert_eq!(middle["events"][0]["type"], "StockReceived");
    assert_eq!(middle["nextVersion"], "3");

    let page_q = r#"query($after: Position, $limit: Int, $filter: EventFilter) {
      events(after: $after, limit: $limit, filter: $filter) { cursor head hasMore events { position type } }
    }"#;
    let p = &server.ok(page_q, json!({ "after": "0", "limit": 2 })).await["events"];
    assert_eq!(p["cursor"], "2");
    assert_eq!(p["hasMore"], true);
    assert_eq!(p["head"], "3");
    let p2 = &server
        .ok(page_q, json!({ "after": p["cursor"], "limit": 2 }))
        .await["events"];
    assert_eq!(p2["events"][0]["position"], "3");
    assert_eq!(p2["hasMore"], false);
    let filtered = &server
        .ok(
            page_q,
            json!({ "filter": { "types": ["PriceChanged"], "categories": ["product"] } }),
        )
        .await["events"];
    assert_eq!(filtered["events"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["cursor"], "3");
    let none = &server
        .ok(page_q, json!({ "filter": { "categories": ["order"] } }))
        .await["events"];
    assert!(none["events"].as_array().unwrap().is_empty());

    // Errors of the log queries.
    let (code, _) = server.error(q, json!({ "id": "product-nope" })).await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = server.error(q, json!({ "id": "" })).await;
    assert_eq!(code, "BAD_USER_INPUT");
    let (code, _) = server.error(page_q, json!({ "limit": 0 })).await;
    assert_eq!(code, "BAD_USER_INPUT");
    let (code, e) = server.error(page_q, json!({ "after": "-1" })).await;
    assert_eq!(code, "BAD_USER_INPUT", "{e}");
    let (code, _) = server
        .error(r#"{ events(after: "abc") { cursor } }"#, json!({}))
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    // A page size over the cap is capped, not refused.
    let big = &server.ok(page_q, json!({ "limit": 1_000_000 })).await["events"];
    assert_eq!(big["events"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_domain_mutation_commits_and_reports_streams_versions_and_position() {
    every_domain_mutation_commits_and_reports_streams_versions_and_position_on(false).await;
}

/// The same over a log in memory: the API does not depend on the store behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_domain_mutation_commits_and_reports_streams_versions_and_position_in_memory() {
    every_domain_mutation_commits_and_reports_streams_versions_and_position_on(true).await;
}

async fn every_domain_mutation_commits_and_reports_streams_versions_and_position_on(
    in_memory: bool,
) {
    let server = TestServer::open_on(in_memory).await;
    let r = &server
        .ok(REGISTER, json!({ "id": "p1", "price": 500 }))
        .await["registerProduct"];
    assert_eq!(r["streams"][0]["streamId"], "product-p1");
    assert_eq!(r["streams"][0]["version"], "1");
    assert_eq!(r["position"], "1");
    assert_eq!(r["duplicate"], false);
    let r = &server.ok(RECEIVE, json!({ "id": "p1", "qty": 5 })).await["receiveStock"];
    assert_eq!(r["streams"][0]["version"], "2");
    server
        .ok(
            r#"mutation { changePrice(productId: "p1", priceCents: 600) { position } }"#,
            json!({}),
        )
        .await;

    let placed = &server
        .ok(PLACE, json!({ "order": "o1", "product": "p1", "qty": 2 }))
        .await["placeOrder"];
    let streams: Vec<(&str, &str)> = placed["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["streamId"].as_str().unwrap(),
                s["version"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(streams, [("order-o1", "1"), ("product-p1", "4")]);
    assert_eq!(placed["position"], "5", "one commit over both streams");

    let confirm = &server
        .ok(
            r#"mutation { confirmOrder(orderId: "o1") { position streams { streamId version } } }"#,
            json!({}),
        )
        .await["confirmOrder"];
    assert_eq!(confirm["streams"][0]["version"], "2");
    let ship = &server
        .ok(
            r#"mutation { shipOrder(orderId: "o1", trackingNumber: "TRK-1") { position streams { version } } }"#,
            json!({}),
        )
        .await["shipOrder"];
    assert_eq!(ship["streams"][0]["version"], "3");

    server
        .ok(PLACE, json!({ "order": "o2", "product": "p1", "qty": 3 }))
        .await;
    let cancel = &server
        .ok(
            r#"mutation { cancelOrder(orderId: "o2", reason: "changed mind") { position streams { streamId version } } }"#,
            json!({}),
        )
        .await["cancelOrder"];
    let ids: Vec<&str> = cancel["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["streamId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["order-o2", "product-p1"],
        "stock released in the same commit"
    );

    let order = &server
        .ok(
            r#"{ stream(id: "order-o1") { events { type payload } } }"#,
            json!({}),
        )
        .await["stream"]["events"];
    assert_eq!(
        order[0]["payload"]["total_cents"], 1200,
        "priced at the new price"
    );
    assert_eq!(order[2]["payload"]["tracking_number"], "TRK-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_errors_carry_their_codes() {
    domain_errors_carry_their_codes_on(false).await;
}

/// The same over a log in memory: the API does not depend on the store behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_errors_carry_their_codes_in_memory() {
    domain_errors_carry_their_codes_on(true).await;
}

async fn domain_errors_carry_their_codes_on(in_memory: bool) {
    let server = TestServer::open_on(in_memory).await;
    product(&server, "p1", 100, 2).await;
    let (code, e) = server
        .error(PLACE, json!({ "order": "o1", "product": "p1", "qty": 3 }))
        .await;
    assert_eq!(code, "INSUFFICIENT_STOCK", "{e}");
    let (code, _) = server
        .error(
            PLACE,
            json!({ "order": "o1", "product": "ghost", "qty": 1 }),
        )
        .await;
    assert_eq!(code, "UNKNOWN_PRODUCT");
    let (code, _) = server.error(RECEIVE, json!({ "id": "p1", "qty": 0 })).await;
    assert_eq!(code, "VALIDATION_ERROR");
    let (code, _) = server
        .error(RECEIVE, json!({ "id": "p1", "qty": -1 }))
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    let (code, _) = server
        .error(
            r#"mutation { confirmOrder(orderId: "never") { position } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    server
        .ok(PLACE, json!({ "order": "o1", "product": "p1", "qty": 1 }))
        .await;
    let (code, _) = server
        .error(
            r#"mutation { shipOrder(orderId: "o1", trackingNumber: "T") { position } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        code, "INVALID_STATE",
        "a placed order is shipped only once confirmed"
    );
    let (code, _) = server
        .error(REGISTER, json!({ "id": "p1", "price": 100 }))
        .await;
    assert_eq!(code, "INVALID_STATE");
    // Nothing of the refused commands reached the log.
    assert_eq!(server.ok("{ head }", json!({})).await["head"], "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_returns_the_first_result_and_writes_nothing() {
    an_idempotent_retry_returns_the_first_result_and_writes_nothing_on(false).await;
}

/// The same over a log in memory: the API does not depend on the store behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_returns_the_first_result_and_writes_nothing_in_memory() {
    an_idempotent_retry_returns_the_first_result_and_writes_nothing_on(true).await;
}

async fn an_idempotent_retry_returns_the_first_result_and_writes_nothing_on(in_memory: bool) {
    let server = TestServer::open_on(in_memory).await;
    product(&server, "p1", 100, 5).await;
    let vars = json!({ "order": "o1", "product": "p1", "qty": 2, "key": "checkout-77" });
    let first = server.ok(PLACE, vars.clone()).await["placeOrder"].clone();
    let retry = server.ok(PLACE, vars).await["placeOrder"].clone();
    assert_eq!(first["duplicate"], false);
    assert_eq!(retry["duplicate"], true);
    assert_eq!(first["position"], retry["position"]);
    assert_eq!(first["streams"], retry["streams"]);
    assert_eq!(
        server.ok("{ head }", json!({})).await["head"],
        first["position"]
    );
    // The same key for a registration retry as well.
    let r1 = server
        .ok(
            REGISTER,
            json!({ "id": "p2", "price": 10, "key": "reg-p2" }),
        )
        .await;
    let r2 = server
        .ok(
            REGISTER,
            json!({ "id": "p2", "price": 10, "key": "reg-p2" }),
        )
        .await;
    assert_eq!(
        r1["registerProduct"]["position"],
        r2["registerProduct"]["position"]
    );
    assert_eq!(r2["registerProduct"]["duplicate"], true);
}

const APPEND: &str = r#"mutation($stream: String!, $expected: ExpectedVersionInput!, $events: [EventInput!]!) {
  appendToStream(streamId: $stream, expectedVersion: $expected, events: $events) {
    position duplicate streams { streamId firstVersion version }
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_to_stream_checks_versions_ids_and_input() {
    append_to_stream_checks_versions_ids_and_input_on(false).await;
}

/// The same over a log in memory: the API does not depend on the store behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_to_stream_checks_versions_ids_and_input_in_memory() {
    append_to_stream_checks_versions_ids_and_input_on(true).await;
}

async fn append_to_stream_checks_versions_ids_and_input_on(in_memory: bool) {
    let server = TestServer::open_on(in_memory).await;
    let id = "0191e0a0-0000-7000-8000-000000000001";
    let event = json!({ "eventId": id, "type": "NoteTaken", "payload": { "text": "hi" },
                        "metadata": { "extra": { "source": "test" } } });
    let ok = &server
        .ok(
            APPEND,
            json!({ "stream": "note-1", "expected": { "state": "NO_STREAM" }, "events": [event] }),
        )
        .await["appendToStream"];
    assert_eq!(ok["streams"][0]["version"], "1");
    assert_eq!(ok["position"], "1");

    let (code, e) = server
        .error(
            APPEND,
            json!({ "stream": "note-1", "expected": { "state": "NO_STREAM" },
                    "events": [{ "type": "NoteTaken", "payload": {} }] }),
        )
        .await;
    assert_eq!(code, "WRONG_EXPECTED_VERSION");
    assert_eq!(e["extensions"]["expected"], "NO_STREAM");
    assert_eq!(e["extensions"]["actual"], "1");
    let (code, e) = server
        .error(
            APPEND,
            json!({ "stream": "note-1", "expected": { "exact": "5" },
                    "events": [{ "type": "NoteTaken", "payload": {} }] }),
        )
        .await;
    assert_eq!(code, "WRONG_EXPECTED_VERSION");
    assert_eq!(e["extensions"]["expected"], "5");

    // Same id, same stream, same order: an idempotent retry.
    let retry = &server
        .ok(
            APPEND,
            json!({ "stream": "note-1", "expected": { "state": "ANY" }, "events": [event] }),
        )
        .await["appendToStream"];
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["position"], "1");
    // Same id elsewhere: a conflict.
    let (code, _) = server
        .error(
            APPEND,
            json!({ "stream": "note-2", "expected": { "state": "ANY" }, "events": [event] }),
        )
        .await;
    assert_eq!(code, "IDEMPOTENCY_CONFLICT");

    let (code, _) = server
        .error(
            APPEND,
            json!({ "stream": "note-1", "expected": { "exact": "1" },
                    "events": [{ "type": "bad type!", "payload": {} }] }),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    let (code, _) = server
        .error(
            APPEND,
            json!({ "stream": "note-1", "expected": { "exact": "1" }, "events": [] }),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    let (code, _) = server
        .error(
            APPEND,
            json!({ "stream": "note-1", "expected": { "exact": "1", "state": "ANY" },
                    "events": [{ "type": "T", "payload": {} }] }),
        )
        .await;
    assert_eq!(
        code, "BAD_USER_INPUT",
        "expectedVersion is one of exact or state"
    );
    // An event payload over the store's 1 MiB limit, in a body under the 4 MiB limit.
    let big = "x".repeat(1024 * 1024 + 10);
    let (code, _) = server
        .error(
            APPEND,
            json!({ "stream": "note-1", "expected": { "exact": "1" },
                    "events": [{ "type": "T", "payload": { "big": big } }] }),
        )
        .await;
    assert_eq!(code, "PAYLOAD_TOO_LARGE");

    let exact = &server
        .ok(
            APPEND,
            json!({ "stream": "note-1", "expected": { "exact": "1" },
                    "events": [{ "type": "A", "payload": 1 }, { "type": "B", "payload": [2] }] }),
        )
        .await["appendToStream"];
    assert_eq!(exact["streams"][0]["firstVersion"], "2");
    assert_eq!(exact["streams"][0]["version"], "3");
    let events = &server
        .ok(
            r#"{ stream(id: "note-1") { events { type payload metadata { extra } } } }"#,
            json!({}),
        )
        .await["stream"]["events"];
    assert_eq!(events[0]["metadata"]["extra"]["source"], "test");
    assert_eq!(events[2]["payload"], json!([2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_too_deep_requests_get_codes_and_the_server_stays_up() {
    let server = TestServer::open().await;
    let url = server.url("/graphql");

    let response = server
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"query\": \"{ head }\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (code, e) = first_error(&response.json().await.unwrap());
    assert_eq!(code, "BAD_USER_INPUT");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("not a valid GraphQL request")
    );

    let (code, _) = server.error("{ head ", json!({})).await;
    assert_eq!(code, "BAD_USER_INPUT", "syntax error");
    let (code, _) = server.error("{ nope }", json!({})).await;
    assert_eq!(code, "BAD_USER_INPUT", "validation error");

    // Declared too large: refused from the headers alone, before any body byte is sent.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(
            b"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 5242880\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("PAYLOAD_TOO_LARGE"), "{answer}");
        assert!(answer.contains("\"limit\":4194304"), "{answer}");
    }
    // Streamed without a length: cut off at the limit. The server may reset the
    // connection after answering while the client is still uploading; when the answer
    // arrives it is a coded 413.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..5).map(|_| Ok(vec![b' '; 1024 * 1024])).collect();
    // A client of its own: the connection the server resets must not go back into the
    // pool the later requests of this test use.
    let streamed = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    if let Ok(response) = streamed {
        assert_eq!(response.status(), 413);
        let (code, _) = first_error(&response.json().await.unwrap());
        assert_eq!(code, "PAYLOAD_TOO_LARGE");
    }

    let mut deep = String::from("__typename");
    for _ in 0..20 {
        deep = format!("ofType {{ {deep} }}");
    }
    let (code, _) = server
        .error(
            &format!("{{ __schema {{ queryType {{ {deep} }} }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(code, "QUERY_TOO_COMPLEX");
    let wide: String = (0..1100).map(|i| format!("h{i}: head ")).collect();
    let (code, _) = server.error(&format!("{{ {wide} }}"), json!({})).await;
    assert_eq!(code, "QUERY_TOO_COMPLEX");

    // Still serving.
    assert_eq!(server.ok("{ head }", json!({})).await["head"], "0");
    assert_eq!(
        server
            .client
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_for_browsers_and_queries_over_get() {
    let server = TestServer::open().await;
    let page = server
        .client
        .get(server.url("/graphql"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("graphiql"), "a GraphiQL page");
    // GraphiQL comes from the binary: no script or stylesheet from another host.
    for needle in ["https://", "http://", "//unpkg", "//cdn"] {
        assert!(
            !html.contains(needle),
            "the page names another host: {needle}"
        );
    }
    for asset in [
        "/admin/vendor/graphiql-3.8.2/graphiql.min.js",
        "/admin/vendor/react-18.3.1/react.production.min.js",
        "/admin/graphiql.js",
    ] {
        assert!(html.contains(asset), "the page loads {asset}");
        let response = server.client.get(server.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .contains("javascript"),
            "{asset}"
        );
    }

    let get = server
        .client
        .get(server.url("/graphql?query=%7B%20head%20%7D"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let body: Value = get.json().await.unwrap();
    assert_eq!(body["data"]["head"], "0");
    let mutation = server
        .client
        .get(server.url(
            "/graphql?query=mutation%20%7B%20confirmOrder(orderId%3A%20%22o%22)%20%7B%20position%20%7D%20%7D",
        ))
        .send()
        .await
        .unwrap();
    let (code, _) = first_error(&mutation.json().await.unwrap());
    assert_eq!(code, "BAD_USER_INPUT", "mutations need POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_request_ids() {
    let server = TestServer::open().await;
    let health = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = server
        .client
        .get(server.url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["store"]["status"], "up");
    assert_eq!(body["checks"]["store"]["writable"], true);

    // A client's request id is echoed and lands in the metadata of the events.
    let response = server
        .client
        .post(server.url("/graphql"))
        .header("x-request-id", "0191e0a0-1111-7000-8000-00000000abcd")
        .json(
            &json!({ "query": REGISTER, "variables": { "id": "p1", "price": 5 },
                       "operationName": null }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"],
        "0191e0a0-1111-7000-8000-00000000abcd"
    );
    let meta = &server
        .ok(
            r#"{ stream(id: "product-p1") { events { metadata { correlationId extra } } } }"#,
            json!({}),
        )
        .await["stream"]["events"][0]["metadata"];
    assert_eq!(
        meta["correlationId"],
        "0191e0a0-1111-7000-8000-00000000abcd"
    );
    assert_eq!(
        meta["extra"]["requestId"],
        "0191e0a0-1111-7000-8000-00000000abcd"
    );
    // Without one, the server makes one.
    let response = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap();
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    server
        .client
        .post(server.url("/graphql"))
        .json(&json!({ "query": "query HeadProbe { head }", "operationName": "HeadProbe" }))
        .send()
        .await
        .unwrap();
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
        "http_requests_total{operation=\"HeadProbe\",status=\"200\"}",
        "http_request_duration_seconds_bucket{operation=\"HeadProbe\",status=\"200\"",
        "annals_append_duration_seconds_bucket{command=\"registerProduct\"",
        "annals_appends_total{command=\"registerProduct\",outcome=\"ok\"}",
        "annals_events_appended_total",
        "annals_store_group_commits_total",
        "annals_store_group_commit_events_mean",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }

    // While shutting down the server is not ready.
    server.state.begin_shutdown();
    let ready = server
        .client
        .get(server.url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["store"]["status"], "down");
}

fn keyed(rate: RateLimit) -> (ServerConfig, [String; 3]) {
    let (reader, r) = generate_key(Role::Reader).unwrap();
    let (writer, w) = generate_key(Role::Writer).unwrap();
    let (admin, a) = generate_key(Role::Admin).unwrap();
    let config = ServerConfig {
        api_keys: ApiKeys::parse(&format!("{r}\n{w}\n{a}\n")).unwrap(),
        rate_limit: rate,
        ..ServerConfig::default()
    };
    (config, [reader, writer, admin])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_roles_decide_who_may_do_what() {
    let (config, [reader, writer, admin]) = keyed(RateLimit::default());
    let server = TestServer::start(config).await;

    let (status, body) = server.post(None, "{ head }", json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(first_error(&body).0, "UNAUTHENTICATED");
    let (status, body) = server.post(Some("ank_wrong"), "{ head }", json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(first_error(&body).0, "UNAUTHENTICATED");

    assert_eq!(
        server.ok_as(Some(&reader), "{ head }", json!({})).await["head"],
        "0"
    );
    let (code, e) = server
        .error_as(Some(&reader), REGISTER, json!({ "id": "p1", "price": 5 }))
        .await;
    assert_eq!(code, "FORBIDDEN");
    assert_eq!(e["extensions"]["requiredRole"], "writer");

    let r = server
        .ok_as(Some(&writer), REGISTER, json!({ "id": "p1", "price": 5 }))
        .await;
    assert_eq!(r["registerProduct"]["position"], "1");
    let append = json!({ "stream": "x-1", "expected": { "state": "ANY" },
                         "events": [{ "type": "T", "payload": {} }] });
    let (code, e) = server.error_as(Some(&writer), APPEND, append.clone()).await;
    assert_eq!(code, "FORBIDDEN");
    assert_eq!(e["extensions"]["requiredRole"], "admin");
    let a = server.ok_as(Some(&admin), APPEND, append).await;
    assert_eq!(a["appendToStream"]["position"], "2");
    // Admins may do what writers do.
    server
        .ok_as(Some(&admin), RECEIVE, json!({ "id": "p1", "qty": 3 }))
        .await;

    // The actor of an event is the key's id, never the key itself.
    let actor = server
        .ok_as(
            Some(&reader),
            r#"{ stream(id: "product-p1") { events { metadata { actor } } } }"#,
            json!({}),
        )
        .await["stream"]["events"][0]["metadata"]["actor"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        actor.starts_with("key:") && !writer.contains(&actor[4..]),
        "{actor}"
    );
    // The GraphiQL page needs no key.
    let page = server
        .client
        .get(server.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_rate_limit() {
    let rate = RateLimit {
        per_second: 1.try_into().unwrap(),
        burst: 2.try_into().unwrap(),
    };
    let (config, [reader, writer, _]) = keyed(rate);
    let server = TestServer::start(config).await;
    server.ok_as(Some(&reader), "{ head }", json!({})).await;
    server.ok_as(Some(&reader), "{ head }", json!({})).await;
    let response = server
        .client
        .post(server.url("/graphql"))
        .bearer_auth(&reader)
        .json(&json!({ "query": "{ head }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let (code, e) = first_error(&response.json().await.unwrap());
    assert_eq!(code, "RATE_LIMITED");
    assert_eq!(e["extensions"]["retryAfter"], retry_after);
    // Another key is not affected.
    server.ok_as(Some(&writer), "{ head }", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_its_request_id_cors_and_a_coded_timeout() {
    let server = TestServer::start(ServerConfig {
        request_timeout: Duration::from_millis(300),
        stale_read_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    })
    .await;
    // The client's id is echoed; without one the server makes a UUID.
    let response = server
        .client
        .post(server.url("/graphql"))
        .header("x-request-id", "edge-test-1")
        .header("origin", "https://app.example")
        .json(&json!({ "query": "{ head }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "edge-test-1");
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let response = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    // A read waiting for a paused read model outlives the request timeout: the answer is
    // a coded GraphQL error, and it keeps its CORS headers.
    server
        .ok(
            r#"mutation { pauseProjection(name: "products") { state } }"#,
            json!({}),
        )
        .await;
    product(&server, "edge-p", 100, 1).await;
    let head = server.store.head().get().to_string();
    let response = server
        .client
        .post(server.url("/graphql"))
        .header("origin", "https://app.example")
        .json(&json!({
            "query": "query($at: Position) { product(id: \"edge-p\", atLeast: $at) { id } }",
            "variables": { "at": head },
        }))
        .send()
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 500, "{body}");
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(headers.contains_key("x-request-id"));
    let (code, error) = first_error(&body);
    assert_eq!(code, "INTERNAL");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("longer than the server allows")
    );
}
