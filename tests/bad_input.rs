//! The bad inputs of the reliability list that no other test file covers, over real HTTP
//! on 127.0.0.1:0: each gets a clear typed error and the server stays up. (Which test
//! covers which item of the list is in the README's "Reliability" section.)

mod common;

use std::time::Duration;

use annals::server::ServerConfig;
use annals::server::auth::{ApiKeys, Role, generate_key};
use annals_store::{
    EventStore, ExpectedVersion, NewEvent, RocksEventStore, StoreOptions, StreamId,
};
use common::*;
use serde_json::{Value, json};

const APPEND: &str = r#"mutation($stream: String!, $expected: ExpectedVersionInput!, $events: [EventInput!]!) {
  appendToStream(streamId: $stream, expectedVersion: $expected, events: $events) { position }
}"#;

const STREAM: &str = r#"query($id: String!) { stream(id: $id) { version events { position } } }"#;

async fn still_serving(server: &TestServer) {
    let head = server.ok("{ head }", json!({})).await;
    assert!(head["head"].is_string(), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_scalar_types_get_bad_user_input() {
    let server = TestServer::open().await;
    product(&server, "p1", 100, 5).await;
    for query in [
        r#"{ stream(id: 5) { version } }"#,
        r#"{ events(limit: "ten") { cursor } }"#,
        r#"{ events(limit: 2147483648) { cursor } }"#,
        r#"{ events(after: 1.5) { cursor } }"#,
        r#"{ events(after: true) { cursor } }"#,
        r#"{ stream(id: "product-p1", fromVersion: "x") { version } }"#,
        r#"{ stream(id: "product-p1", backwards: "yes") { version } }"#,
        r#"{ orders(status: SOLD) { nodes { id } } }"#,
        r#"{ lowStock(threshold: null) { id } }"#,
        r#"mutation { receiveStock(productId: "p1", quantity: 1.5) { position } }"#,
        r#"mutation { changePrice(productId: "p1", priceCents: "100") { position } }"#,
        r#"mutation { placeOrder(orderId: "o", customerId: "c", lines: {productId: "p1"}) { position } }"#,
    ] {
        let (code, error) = server.error(query, json!({})).await;
        assert_eq!(code, "BAD_USER_INPUT", "{query}: {error}");
    }
    // The same through variables.
    let (code, error) = server
        .error(
            "query($l: Int) { events(limit: $l) { cursor } }",
            json!({ "l": "ten" }),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT", "{error}");
    let (code, error) = server
        .error(
            "query($f: EventFilter) { events(filter: $f) { cursor } }",
            json!({ "f": [] }),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT", "{error}");
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_beyond_the_head_or_out_of_range() {
    let server = TestServer::open().await;
    product(&server, "p1", 100, 5).await;
    // Beyond the head: an empty page whose cursor stays where it was, not an error.
    let page = server
        .ok(
            r#"{ events(after: "1000") { cursor hasMore events { position } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(page["events"]["events"], json!([]));
    assert_eq!(page["events"]["cursor"], "1000");
    assert_eq!(page["events"]["hasMore"], false);
    let page = server
        .ok(
            r#"{ events(after: "18446744073709551615") { cursor events { position } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(page["events"]["events"], json!([]));
    let stream = server
        .ok(
            r#"{ stream(id: "product-p1", fromVersion: "99") { version events { position } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(stream["stream"]["events"], json!([]));
    // Past u64: refused.
    let (code, _) = server
        .error(
            r#"{ events(after: "18446744073709551616") { cursor } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    // A read model asked to wait for a position beyond the head: refused at once.
    let (code, error) = server
        .error(
            r#"{ product(id: "p1", atLeast: "1000") { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("beyond"),
        "{error}"
    );
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_stream_ids_and_oversized_appends() {
    let server = TestServer::open().await;
    let one = json!([{ "type": "T", "payload": {} }]);
    for (what, id) in [
        ("empty", String::new()),
        ("10 KB", "x".repeat(10 * 1024)),
        ("NUL", "a\u{0}b".to_string()),
        ("newline", "a\nb".to_string()),
        ("escape", "a\u{1b}[31m".to_string()),
    ] {
        let (code, error) = server
            .error(
                APPEND,
                json!({ "stream": id, "expected": { "state": "ANY" }, "events": one }),
            )
            .await;
        assert_eq!(code, "BAD_USER_INPUT", "{what}: {error}");
        let (code, error) = server.error(STREAM, json!({ "id": id })).await;
        assert_eq!(code, "BAD_USER_INPUT", "{what}: {error}");
    }
    // 10,000 events in one append: over the per-append limit, refused whole.
    let events: Vec<Value> = (0..10_000)
        .map(|i| json!({ "type": "T", "payload": i }))
        .collect();
    let (code, error) = server
        .error(
            APPEND,
            json!({ "stream": "bulk-1", "expected": { "state": "ANY" }, "events": events }),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("1000"),
        "says the limit: {error}"
    );
    assert_eq!(
        server.ok("{ head }", json!({})).await["head"],
        "0",
        "nothing written"
    );
    // A 1 GiB body is refused from its Content-Length, before any of it is read.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(
            b"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 1073741824\r\nConnection: close\r\n\r\n{\"query\":",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("PAYLOAD_TOO_LARGE"), "{answer}");
    }
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_aliases_and_admin_mutations_by_readers() {
    let (reader, r) = generate_key(Role::Reader).unwrap();
    let (writer, w) = generate_key(Role::Writer).unwrap();
    let server = TestServer::start(ServerConfig {
        api_keys: ApiKeys::parse(&format!("{r}\n{w}\n")).unwrap(),
        ..ServerConfig::default()
    })
    .await;
    // 1,000 aliases of the most expensive read (a full page of the log with payloads).
    let aliases: String = (0..1000)
        .map(|i| format!("e{i}: events(limit: 1000) {{ events {{ payload }} }} "))
        .collect();
    let (code, error) = server
        .error_as(Some(&reader), &format!("{{ {aliases} }}"), json!({}))
        .await;
    assert_eq!(code, "QUERY_TOO_COMPLEX", "{error}");
    // A reader calling each admin mutation.
    for mutation in [
        r#"mutation { appendToStream(streamId: "x-1", expectedVersion: {state: ANY}, events: [{type: "T", payload: {}}]) { position } }"#,
        r#"mutation { rebuildProjection(name: "orders") { name } }"#,
        r#"mutation { pauseProjection(name: "orders") { name } }"#,
        r#"mutation { resumeProjection(name: "orders") { name } }"#,
    ] {
        for key in [&reader, &writer] {
            let (code, error) = server.error_as(Some(key), mutation, json!({})).await;
            assert_eq!(code, "FORBIDDEN", "{mutation}: {error}");
            assert_eq!(error["extensions"]["requiredRole"], "admin");
        }
    }
    let data = server
        .ok_as(
            Some(&reader),
            "{ head projections { name state } }",
            json!({}),
        )
        .await;
    assert_eq!(data["head"], "0", "nothing was written");
    assert!(
        data["projections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "RUNNING")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_with_an_invalid_range_gets_bad_user_input() {
    let (admin, a) = generate_key(Role::Admin).unwrap();
    let server = TestServer::start(ServerConfig {
        api_keys: ApiKeys::parse(&a).unwrap(),
        ..ServerConfig::default()
    })
    .await;
    server
        .ok_as(Some(&admin), REGISTER, json!({ "id": "p1", "price": 5 }))
        .await;
    let export = |query: &'static str| {
        server
            .client
            .get(server.url(&format!("/export?{query}")))
            .bearer_auth(&admin)
            .send()
    };
    for (query, needle) in [
        (
            "since=2026-11-24T00:00:00Z&until=2026-11-23T00:00:00Z",
            "since must be before",
        ),
        (
            "since=2026-11-23T00:00:00Z&until=2026-11-23T00:00:00Z",
            "since must be before",
        ),
        ("since=yesterday", "RFC 3339"),
        ("until=2026-13-45T99:00:00Z", "RFC 3339"),
        ("from_position=9&to_position=3", "after"),
        ("from_position=-1", "from_position"),
        ("to_position=abc", "to_position"),
        ("since=2026-11-23T00:00:00Z&bogus=1", "bogus"),
    ] {
        let response = export(query).await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        let (code, error) = first_error(&body);
        assert_eq!(code, "BAD_USER_INPUT", "{query}: {body}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }
    // A valid range still exports.
    let response = export("since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_eq!(
        body.lines().count(),
        2,
        "one event and the manifest: {body}"
    );
}

/// A record damaged on disk reaches the client as `INTERNAL` with a generic message and
/// nothing of the server's internals; the rest of the log keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_record_gives_internal_without_detail_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    {
        let store = RocksEventStore::open(&log, StoreOptions::default()).unwrap();
        for stream in ["good-1", "bad-1", "good-1", "good-2"] {
            store
                .append(
                    StreamId::new(stream).unwrap(),
                    ExpectedVersion::Any,
                    vec![NewEvent::json("Noted", &json!({ "secret": "s3cr3t" }))],
                )
                .await
                .unwrap();
        }
        store.close();
    }
    annals_store::testkit::overwrite_record(&log, annals_store::Position(2), b"\x01garbage")
        .unwrap();
    let server = TestServer::start_in(dir, ServerConfig::default()).await;

    for query in [
        r#"{ events(after: "0") { events { position payload } } }"#,
        r#"{ stream(id: "bad-1") { events { position } } }"#,
    ] {
        let (status, body) = server.post(None, query, json!({})).await;
        assert_eq!(status, 200, "{body}");
        let (code, error) = first_error(&body);
        assert_eq!(code, "INTERNAL", "{body}");
        assert_eq!(error["message"], "internal server error", "{body}");
        let extensions = error["extensions"].as_object().unwrap();
        assert_eq!(extensions.len(), 1, "only the code: {body}");
        let text = body.to_string().to_lowercase();
        for leak in [
            "corrupt",
            "garbage",
            "rocksdb",
            "position 2",
            "decode",
            "/tmp",
            "s3cr3t",
        ] {
            assert!(!text.contains(leak), "{leak:?} leaked: {body}");
        }
    }
    // The undamaged parts of the log still answer, and the server is up.
    let page = server
        .ok(
            r#"{ events(after: "2") { events { position streamId } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(page["events"]["events"].as_array().unwrap().len(), 2);
    let other = server.ok(STREAM, json!({ "id": "good-2" })).await;
    assert_eq!(other["stream"]["events"][0]["position"], "4");
    still_serving(&server).await;
    let health = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Two servers on one data directory: the second refuses to start with a clear message,
/// and the first keeps serving its data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_held_by_another_process_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = |()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let first_port = port(());
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{first_port}")])
        .env_remove("ANNALS_API_KEYS")
        .env_remove("ANNALS_API_KEYS_FILE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{first_port}");
    let started = std::time::Instant::now();
    while http.get(format!("{base}/ready")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "first server did not start"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let appended: Value = http
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": REGISTER, "variables": { "id": "p1", "price": 5 } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        appended["data"]["registerProduct"]["position"], "1",
        "{appended}"
    );

    let second = std::process::Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{}", port(()))])
        .env_remove("ANNALS_API_KEYS")
        .env_remove("ANNALS_API_KEYS_FILE")
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");

    let head: Value = http
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": "{ head }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(head["data"]["head"], "1", "{head}");
    let _ = first.kill();
    let _ = first.wait();
}
