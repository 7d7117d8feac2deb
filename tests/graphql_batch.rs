//! The API path's request forms: batched requests (a JSON array, answered in order, every
//! operation counted by the rate limit), automatic persisted queries, the document cache
//! (same text, new variables), and `placeOrder` without in-process conflicts.

mod common;

use annals::server::ServerConfig;
use annals::server::auth::RateLimit;
use annals_store::EventStore;
use common::TestServer;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const APPEND: &str = r#"mutation($s: String!, $n: Int!) {
  appendToStream(streamId: $s, expectedVersion: {state: ANY}, events: [{type: "Batched", payload: {n: $n}}]) { position }
}"#;

async fn post(server: &TestServer, body: Value) -> (u16, Value) {
    let response = server
        .client
        .post(server.url("/graphql"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_answered_in_order_with_each_operations_own_errors() {
    let server = TestServer::open().await;
    let (status, body) = post(
        &server,
        json!([
            { "query": "{ head }" },
            { "query": APPEND, "variables": { "s": "batch-1", "n": 1 } },
            { "query": "{ stream(id: \"nothing-1\") { version } }" },
            { "query": "{ nope }" },
            { "query": APPEND, "variables": { "s": "batch-1", "n": 2 } },
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answers = body.as_array().expect("an array answers an array");
    assert_eq!(answers.len(), 5);
    assert!(answers[0]["data"]["head"].is_string());
    let first: u64 = answers[1]["data"]["appendToStream"]["position"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(answers[2]["errors"][0]["extensions"]["code"], "NOT_FOUND");
    assert_eq!(
        answers[3]["errors"][0]["extensions"]["code"],
        "BAD_USER_INPUT"
    );
    let second: u64 = answers[4]["data"]["appendToStream"]["position"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(first, second);

    // A hundred appends in one request: a hundred events, each at its own position.
    let batch: Vec<Value> = (0..100)
        .map(
            |n| json!({ "query": APPEND, "variables": { "s": format!("many-{}", n % 7), "n": n } }),
        )
        .collect();
    let (status, body) = post(&server, Value::Array(batch)).await;
    assert_eq!(status, 200);
    let mut positions: Vec<u64> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["data"]["appendToStream"]["position"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), 100);
    assert_eq!(server.store.head().get(), second + 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_bounded_and_every_operation_counts_against_the_rate_limit() {
    let server = TestServer::open().await;
    for body in [
        json!([]),
        Value::Array(vec![json!({ "query": "{ head }" }); 101]),
    ] {
        let (status, body) = post(&server, body).await;
        assert_eq!(status, 400, "{body}");
        let (code, error) = common::first_error(&body);
        assert_eq!(code, "BAD_USER_INPUT");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("a batch holds 1 to 100")
        );
    }
    // A malformed batch says what is wrong with it, not that it is no request.
    let (status, body) = post(&server, json!([{ "query": 7 }])).await;
    assert_eq!(status, 400);
    let (code, error) = common::first_error(&body);
    assert_eq!(code, "BAD_USER_INPUT");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("expected a string"),
        "{error}"
    );

    let config = ServerConfig {
        rate_limit: RateLimit {
            per_second: 1.try_into().unwrap(),
            burst: 10.try_into().unwrap(),
        },
        ..ServerConfig::default()
    };
    let limited = TestServer::start(config).await;
    let (status, body) = post(
        &limited,
        Value::Array(vec![json!({ "query": "{ head }" }); 20]),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(common::first_error(&body).0, "RATE_LIMITED");
    let (status, body) = post(
        &limited,
        Value::Array(vec![json!({ "query": "{ head }" }); 5]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // 1 + 5 of the 10 are spent: a batch of 5 more is refused.
    let (status, _) = post(
        &limited,
        Value::Array(vec![json!({ "query": "{ head }" }); 5]),
    )
    .await;
    assert_eq!(status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_query_is_sent_by_hash_once_the_server_knows_it() {
    let server = TestServer::open().await;
    let query = "query($id: String!) { stream(id: $id) { version } }";
    let hash = hex::encode(Sha256::digest(query.as_bytes()));
    let persisted = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
    let (_, body) = post(
        &server,
        json!({ "variables": { "id": "none-1" }, "extensions": persisted }),
    )
    .await;
    let (code, error) = common::first_error(&body);
    assert_eq!(code, "PERSISTED_QUERY_NOT_FOUND");
    assert_eq!(error["message"], "PersistedQueryNotFound");
    server.ok(APPEND, json!({ "s": "apq-1", "n": 1 })).await;
    let (_, body) = post(
        &server,
        json!({ "query": query, "variables": { "id": "apq-1" }, "extensions": persisted }),
    )
    .await;
    assert_eq!(body["data"]["stream"]["version"], "1", "{body}");
    let (_, body) = post(
        &server,
        json!({ "variables": { "id": "apq-1" }, "extensions": persisted }),
    )
    .await;
    assert_eq!(body["data"]["stream"]["version"], "1", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_document_answers_each_requests_own_variables() {
    let server = TestServer::open().await;
    for n in 1..=3 {
        for _ in 0..n {
            server
                .ok(APPEND, json!({ "s": format!("doc-{n}"), "n": n }))
                .await;
        }
    }
    let query = "query($id: String!) { stream(id: $id) { version } }";
    for n in [1, 2, 3, 2, 1] {
        let data = server.ok(query, json!({ "id": format!("doc-{n}") })).await;
        assert_eq!(data["stream"]["version"], n.to_string());
    }
    // A bad text is refused every time, with the same error.
    let bad = "{ head ";
    let (first, _) = server.error(bad, json!({})).await;
    let (again, _) = server.error(bad, json!({})).await;
    assert_eq!(
        (first.as_str(), again.as_str()),
        ("BAD_USER_INPUT", "BAD_USER_INPUT")
    );
    // A query too deep for the limits stays refused though its text was parsed before.
    let deep = format!(
        "{{ __schema {{ types {{ fields {{ type {{ {}name{} }} }} }} }} }}",
        "ofType { ".repeat(13),
        " }".repeat(13)
    );
    for _ in 0..2 {
        let (code, _) = server.error(&deep, json!({})).await;
        assert_eq!(code, "QUERY_TOO_COMPLEX");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_for_one_product_queue_in_the_process_instead_of_conflicting() {
    let server = std::sync::Arc::new(TestServer::open().await);
    common::product(&server, "hot", 100, 10_000).await;
    let place = r#"mutation($o: String!) { placeOrder(orderId: $o, customerId: "c", lines: [{productId: "hot", quantity: 1}]) { position } }"#;
    // 16 clients, each placing its orders one after another, all for the one product.
    let clients = (0..16).map(|c| {
        let server = server.clone();
        tokio::spawn(async move {
            for i in 0..30 {
                let (status, body) = server
                    .post(None, place, json!({ "o": format!("hot-{c}-{i}") }))
                    .await;
                assert_eq!(status, 200);
                assert!(
                    body.get("errors").is_none(),
                    "no order of the process conflicts: {body}"
                );
            }
        })
    });
    for client in futures::future::join_all(clients).await {
        client.unwrap();
    }
    let data = server
        .ok(
            r#"query($at: Position) { product(id: "hot", atLeast: $at) { reserved } }"#,
            json!({ "at": server.store.head().get().to_string() }),
        )
        .await;
    assert_eq!(data["product"]["reserved"], "480");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_variable_runs_nothing_whether_or_not_the_text_is_cached() {
    let server = TestServer::open().await;
    // Two appends in one mutation: the second's variable decides whether any runs.
    let two = r#"mutation($a: String!, $n: Int!, $kind: StreamState!) {
      first: appendToStream(streamId: $a, expectedVersion: {state: ANY}, events: [{type: "T", payload: {}}]) { position }
      second: appendToStream(streamId: $a, expectedVersion: {state: $kind}, events: [{type: "T", payload: {n: $n}}]) { position }
    }"#;
    let cases = [
        (json!({ "a": "vars-1", "n": "one", "kind": "ANY" }), "$n"),
        (
            json!({ "a": "vars-1", "n": 1, "kind": "SOMETIMES" }),
            "$kind",
        ),
        (json!({ "a": "vars-1", "kind": "ANY" }), "$n"),
        (json!({ "a": null, "n": 1, "kind": "ANY" }), "$a"),
    ];
    // The first request validates the text; the rest meet it in the cache.
    for round in 0..2 {
        for (variables, name) in &cases {
            let (code, error) = server.error(two, variables.clone()).await;
            assert_eq!(code, "BAD_USER_INPUT", "round {round}: {error}");
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(name), "round {round}: {message}");
            assert_eq!(server.store.head().get(), 0, "round {round}: nothing ran");
        }
    }
    let data = server
        .ok(two, json!({ "a": "vars-1", "n": 1, "kind": "ANY" }))
        .await;
    assert_eq!(data["second"]["position"], "2");
    // A wrong literal stays a validation error after the text's variables were cached.
    let literal = r#"mutation($a: String!) { appendToStream(streamId: $a, expectedVersion: {state: SOMETIMES}, events: []) { position } }"#;
    for _ in 0..2 {
        let (code, _) = server.error(literal, json!({ "a": "x" })).await;
        assert_eq!(code, "BAD_USER_INPUT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_mutation_is_refused_over_get() {
    let server = TestServer::open().await;
    let hash = hex::encode(Sha256::digest(APPEND.as_bytes()));
    let persisted = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
    let (_, body) = post(
        &server,
        json!({ "query": APPEND, "variables": { "s": "get-1", "n": 1 }, "extensions": persisted }),
    )
    .await;
    assert!(body.get("errors").is_none(), "{body}");
    let response = server
        .client
        .get(server.url("/graphql"))
        .query(&[
            ("variables", json!({ "s": "get-1", "n": 2 }).to_string()),
            ("extensions", persisted.to_string()),
        ])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let (code, error) = common::first_error(&body);
    assert_eq!(code, "BAD_USER_INPUT");
    assert!(
        error["message"].as_str().unwrap().contains("POST"),
        "{error}"
    );
    assert_eq!(server.store.head().get(), 1, "the GET appended nothing");
    // A hash that does not match the text is refused.
    let (_, body) = post(
        &server,
        json!({ "query": "{ head }", "extensions": persisted }),
    )
    .await;
    let (code, _) = common::first_error(&body);
    assert_eq!(code, "BAD_USER_INPUT");
}
