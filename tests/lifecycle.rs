//! Data lifecycle end to end: a customer forgotten everywhere while the chain verifies,
//! retention and stream deletion over the API, a backup under load restored to exactly its
//! head, and an export imported record by record.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use annals::lifecycle::backup;
use annals::node::NodeConfig;
use annals::server::ServerConfig;
use annals_store::{
    EventStore, Position, ReadFilter, RecordedEvent, RetentionRule, RocksEventStore,
};
use common::TestServer;
use common::binary::annals;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PLACE: &str = r#"mutation($o: String!, $c: String!, $p: String!) {
  placeOrder(orderId: $o, customerId: $c, lines: [{productId: $p, quantity: 1}]) { position }
}"#;
const ORDER: &str = r#"query($id: String!, $at: Position) { order(id: $id, atLeast: $at) { id customerId status } }"#;
const ORDERS: &str = r#"query($c: String!, $at: Position) { orders(customerId: $c, atLeast: $at) { edges { node { id customerId } } } }"#;
const STATS: &str = r#"query($c: String!, $at: Position) { customerStats(id: $c, atLeast: $at) { customerId totalOrders } }"#;
const STREAM: &str =
    r#"query($id: String!) { stream(id: $id) { events { type payload removed } } }"#;
const EVENTS: &str = r#"query($f: EventFilter) { events(limit: 1000, filter: $f) { events { position streamId type payload removed metadata { actor } } } }"#;
const FORGET: &str = r#"mutation($s: String!) { forgetSubject(subjectId: $s, reason: "ticket 42") { subjectRef position backupsScrubbed } }"#;
const BACKUP: &str =
    r#"mutation($d: String!) { backup(directory: $d) { id head tip logBytes seconds } }"#;
const APPEND: &str = r#"mutation($s: String!, $n: Int!) {
  appendToStream(streamId: $s, expectedVersion: {state: ANY}, events: [{type: "Line", payload: {n: $n}}]) { position }
}"#;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "annals failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A node on the data directory `data`, without the checkout (these tests follow orders
/// themselves).
fn node_on(data: &Path) -> NodeConfig {
    let mut config = NodeConfig::on_disk(data);
    config.checkout = None;
    config
}

/// `config` with a retention rule keeping the last `max_count` events of each `line-…`
/// stream.
fn with_line_retention(mut config: NodeConfig, max_count: u64) -> NodeConfig {
    config.retention.rules = vec![RetentionRule {
        category: "line".into(),
        max_age: None,
        max_count: Some(max_count),
    }];
    config
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The files under `dir` whose bytes contain `needle`.
fn holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    common::files_under(dir)
        .into_iter()
        .filter(|f| {
            let bytes = std::fs::read(f).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .collect()
}

async fn place(server: &TestServer, order: &str, customer: &str) -> Value {
    server
        .ok(PLACE, json!({ "o": order, "c": customer, "p": "p1" }))
        .await["placeOrder"]["position"]
        .clone()
}

/// The whole log, as records.
async fn log_of(store: &impl EventStore) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut from = Position::FIRST;
    loop {
        let page = store
            .read_all(from, 5000, &ReadFilter::all())
            .await
            .unwrap();
        out.extend(page.events);
        if page.next > page.head {
            return out;
        }
        from = page.next;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The payloads of the `OrderPlaced` events a fresh `events` subscription replays.
async fn subscribed_payloads(server: &TestServer, n: usize) -> Vec<Value> {
    let mut request = format!("ws://{}/graphql/ws", server.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _): (Socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let send = |v: Value| Message::text(v.to_string());
    socket
        .send(send(json!({ "type": "connection_init", "payload": {} })))
        .await
        .unwrap();
    let ack = socket.next().await.unwrap().unwrap();
    assert!(ack.to_string().contains("connection_ack"), "{ack}");
    let query = r#"subscription { events(filter: {types: ["OrderPlaced"]}) { payload } }"#;
    socket
        .send(send(
            json!({ "id": "1", "type": "subscribe", "payload": { "query": query } }),
        ))
        .await
        .unwrap();
    let mut payloads = Vec::new();
    while payloads.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("an event within 20 s")
            .expect("the socket stays open")
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        if value["type"] == "next" {
            payloads.push(value["payload"]["data"]["events"]["payload"].clone());
        }
    }
    payloads
}

fn export_all(data: &Path, out: &Path) -> Vec<PathBuf> {
    ["ndjson", "csv", "cloudevents"]
        .iter()
        .map(|format| {
            let file = out.join(format!("log.{format}"));
            ok(annals(&[
                "export",
                "--data-dir",
                p(data),
                "--format",
                format,
                "-o",
                p(&file),
            ]));
            file
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forgotten_customer_reads_as_erased_everywhere_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir, ServerConfig::default()).await;
    common::product(&server, "p1", 500, 100).await;
    for n in 0..3 {
        place(&server, &format!("a{n}"), ALICE).await;
    }
    let at = place(&server, "b0", BOB).await;

    // Before: the API reveals the customer; the disk never holds the id in clear.
    let order = server.ok(ORDER, json!({ "id": "a0", "at": at })).await;
    assert_eq!(order["order"]["customerId"], ALICE);
    let mine = server.ok(ORDERS, json!({ "c": ALICE, "at": at })).await;
    assert_eq!(mine["orders"]["edges"].as_array().unwrap().len(), 3);
    let stats = server.ok(STATS, json!({ "c": ALICE, "at": at })).await;
    assert_eq!(stats["customerStats"]["totalOrders"], "3");
    assert_eq!(stats["customerStats"]["customerId"], ALICE);
    let stream = server.ok(STREAM, json!({ "id": "order-a0" })).await;
    assert_eq!(
        stream["stream"]["events"][0]["payload"]["customer_id"],
        ALICE
    );
    assert_eq!(
        subscribed_payloads(&server, 4).await[0]["customer_id"],
        ALICE
    );
    assert_eq!(
        holding(&data, ALICE),
        Vec::<PathBuf>::new(),
        "the id is sealed on disk"
    );

    // A backup and exports made before the erasure.
    let backup_dir = work.path().join("backup");
    let taken = server.ok(BACKUP, json!({ "d": p(&backup_dir) })).await;
    assert_eq!(taken["backup"]["id"], 1);
    let before_dir = work.path().join("before");
    std::fs::create_dir_all(&before_dir).unwrap();
    let before = export_all(&data, &before_dir);
    for file in &before {
        assert!(
            holding(file.parent().unwrap(), ALICE).is_empty(),
            "{}",
            file.display()
        );
    }

    // Forget Alice.
    let erased = server.ok(FORGET, json!({ "s": ALICE })).await;
    let subject_ref = erased["forgetSubject"]["subjectRef"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(subject_ref.len(), 32);
    assert_eq!(erased["forgetSubject"]["backupsScrubbed"], 1);
    let at = erased["forgetSubject"]["position"].clone();
    // Forgetting her again finds nothing; an unknown subject is NOT_FOUND too.
    let (code, _) = server.error(FORGET, json!({ "s": ALICE })).await;
    assert_eq!(code, "NOT_FOUND");

    // After: every read shows "[erased]" for her and Bob as he was.
    let order = server.ok(ORDER, json!({ "id": "a1", "at": at })).await;
    assert_eq!(order["order"]["customerId"], "[erased]");
    let order = server.ok(ORDER, json!({ "id": "b0", "at": at })).await;
    assert_eq!(order["order"]["customerId"], BOB);
    let mine = server.ok(ORDERS, json!({ "c": ALICE, "at": at })).await;
    assert!(mine["orders"]["edges"].as_array().unwrap().is_empty());
    let stats = server.ok(STATS, json!({ "c": ALICE, "at": at })).await;
    assert!(stats["customerStats"].is_null());
    let stream = server.ok(STREAM, json!({ "id": "order-a2" })).await;
    assert_eq!(
        stream["stream"]["events"][0]["payload"]["customer_id"],
        "[erased]"
    );
    let page = server
        .ok(EVENTS, json!({ "f": { "types": ["OrderPlaced"] } }))
        .await;
    let customers: Vec<&Value> = page["events"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["payload"]["customer_id"])
        .collect();
    assert_eq!(customers, vec!["[erased]", "[erased]", "[erased]", BOB]);
    let replayed = subscribed_payloads(&server, 4).await;
    assert_eq!(replayed[2]["customer_id"], "[erased]");
    assert_eq!(replayed[3]["customer_id"], BOB);
    // The erasure is an event naming her ref and the operator, not her id.
    let records = server
        .ok(EVENTS, json!({ "f": { "categories": ["erasure"] } }))
        .await;
    let record = &records["events"]["events"][0];
    assert_eq!(record["type"], "SubjectForgotten");
    assert_eq!(record["streamId"], format!("erasure-{subject_ref}"));
    assert_eq!(
        record["payload"],
        json!({ "subject_ref": subject_ref, "reason": "ticket 42" })
    );
    assert_eq!(record["metadata"]["actor"], "anonymous");

    // The orders read model rebuilt from scratch shows the same.
    server
        .ok(
            r#"mutation { rebuildProjection(name: "orders") { name } }"#,
            json!({}),
        )
        .await;
    let mut rebuilt = false;
    for _ in 0..200 {
        let status = server
            .ok(
                r#"{ projections { name generation rebuild { generation } } }"#,
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
        if orders["rebuild"].is_null() && orders["generation"] != 1 {
            rebuilt = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rebuilt, "the orders projection was rebuilt");
    let order = server.ok(ORDER, json!({ "id": "a0", "at": at })).await;
    assert_eq!(order["order"]["customerId"], "[erased]");
    let order = server.ok(ORDER, json!({ "id": "b0", "at": at })).await;
    assert_eq!(order["order"]["customerId"], BOB);

    // The chain verifies on the log and on exports made before and after; no export holds
    // her id in clear (they carry the sealed text the chain covers).
    let report = server
        .store
        .verify_chain(Position::FIRST, server.store.head())
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    let after_dir = work.path().join("after");
    std::fs::create_dir_all(&after_dir).unwrap();
    let after = export_all(&data, &after_dir);
    for file in before.iter().chain(&after) {
        ok(annals(&["verify", p(file), "--data-dir", p(&data)]));
    }
    assert!(holding(&after_dir, ALICE).is_empty());
    assert!(holding(&data, ALICE).is_empty());
    server.stop().await;

    // The backup made before the erasure restores without her key.
    let restored = work.path().join("restored");
    let out = ok(annals(&[
        "restore",
        p(&backup_dir),
        "--data-dir",
        p(&restored),
        "--json",
    ]));
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["head"], taken["backup"]["head"]);
    assert!(holding(&backup_dir, ALICE).is_empty());
    let config = node_on(&restored);
    let restored_server = TestServer::with_config(config).await;
    let head = restored_server.store.head().get().to_string();
    let order = restored_server
        .ok(ORDER, json!({ "id": "a0", "at": head }))
        .await;
    assert_eq!(order["order"]["customerId"], "[erased]");
    let order = restored_server
        .ok(ORDER, json!({ "id": "b0", "at": head }))
        .await;
    assert_eq!(order["order"]["customerId"], BOB);
    restored_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_and_deletion_remove_what_they_should_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let config = with_line_retention(node_on(&data), 2);
    let server = TestServer::with_config(config).await;
    for n in 0..5 {
        for s in ["line-1", "line-2", "keep-1"] {
            server.ok(APPEND, json!({ "s": s, "n": n })).await;
        }
    }
    let pass = server
        .ok(
            r#"mutation { applyRetention { examined removed } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        pass["applyRetention"],
        json!({ "examined": "10", "removed": "6" })
    );
    let page = server.ok(EVENTS, json!({})).await;
    let events = page["events"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 15, "positions stay gapless");
    for e in events {
        let category = e["streamId"].as_str().unwrap().split('-').next().unwrap();
        let n = e["payload"]["n"].as_i64();
        if e["removed"] == true {
            assert_eq!(category, "line");
            assert!(e["payload"].is_null());
        } else if category == "line" {
            assert!(n.unwrap() >= 3, "{e}");
        }
    }
    assert_eq!(events.iter().filter(|e| e["removed"] == true).count(), 6);

    // Soft deletion: the stream reads as deleted, the log keeps it, a new append
    // recreates it with its versions continuing.
    let deleted = server
        .ok(
            r#"mutation { deleteStream(streamId: "keep-1", expectedVersion: "5") { streamId throughVersion removed } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        deleted["deleteStream"],
        json!({ "streamId": "keep-1", "throughVersion": "5", "removed": "0" })
    );
    let (code, _) = server.error(STREAM, json!({ "id": "keep-1" })).await;
    assert_eq!(code, "NOT_FOUND");
    let recreated = server
        .ok(
            r#"mutation { appendToStream(streamId: "keep-1", expectedVersion: {state: NO_STREAM}, events: [{type: "Line", payload: {n: 9}}]) { streams { firstVersion } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        recreated["appendToStream"]["streams"][0]["firstVersion"],
        "6"
    );
    let stream = server.ok(STREAM, json!({ "id": "keep-1" })).await;
    assert_eq!(stream["stream"]["events"].as_array().unwrap().len(), 1);

    // Hard deletion: the events become tombstones.
    let deleted = server
        .ok(
            r#"mutation { deleteStream(streamId: "line-2", mode: HARD) { throughVersion removed } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        deleted["deleteStream"],
        json!({ "throughVersion": "5", "removed": "2" })
    );
    let (code, _) = server
        .error(
            r#"mutation { deleteStream(streamId: "nothing-1") { removed } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = server
        .error(
            r#"mutation { deleteStream(streamId: "line-1", expectedVersion: "2") { removed } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "WRONG_EXPECTED_VERSION");

    let report = server
        .store
        .verify_chain(Position::FIRST, server.store.head())
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    let work = tempfile::tempdir().unwrap();
    let exports = export_all(&data, work.path());
    for file in &exports {
        ok(annals(&["verify", p(file), "--data-dir", p(&data)]));
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.contains("removed"),
            "{} marks its tombstones",
            file.display()
        );
    }
    // A forged tombstone is refused: one that still carries its payload, and (against the
    // store) one that hides an event the log holds.
    let text = std::fs::read_to_string(&exports[0]).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let live = lines
        .iter()
        .position(|l| l["removed"].is_null() && l["manifest"].is_null())
        .unwrap();
    let forge = |edit: &dyn Fn(&mut Value)| {
        let mut forged = lines.clone();
        edit(&mut forged[live]);
        let body: Vec<String> = forged.iter().map(Value::to_string).collect();
        let path = work.path().join("forged.ndjson");
        std::fs::write(&path, body.join("\n") + "\n").unwrap();
        path
    };
    let said = |output: Output| {
        assert!(!output.status.success());
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let keeps_payload = forge(&|l| l["removed"] = json!(true));
    let refused = said(annals(&["verify", p(&keeps_payload)]));
    assert!(refused.contains("MODIFIED_EVENT"), "{refused}");
    let hides = forge(&|l| {
        l["removed"] = json!(true);
        l["payload"] = Value::Null;
        l["payload_base64"] = json!("");
        l["metadata"] =
            json!({"correlation_id": null, "causation_id": null, "actor": null, "extra": {}});
    });
    // Alone, a tombstone is only a link of the chain (its content is gone by design);
    // the store knows the event is still there.
    ok(annals(&["verify", p(&hides)]));
    let refused = said(annals(&["verify", p(&hides), "--data-dir", p(&data)]));
    assert!(
        refused.contains("MODIFIED_EVENT") && refused.contains("marks as removed"),
        "{refused}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_16_writers_restores_to_exactly_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(TestServer::start_in(dir, ServerConfig::default()).await);
    for w in 0..16 {
        common::product(&server, &format!("p{w}"), 500, 1_000_000).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (server, stop) = (server.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let order = json!({ "o": format!("w{w}-{n}"), "c": format!("customer-{w}"), "p": format!("p{w}") });
                    server.ok(PLACE, order).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let backup_dir = work.path().join("backup");
    let first = server.ok(BACKUP, json!({ "d": p(&backup_dir) })).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = server.ok(BACKUP, json!({ "d": p(&backup_dir) })).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut placed = 0;
    for w in writers {
        placed += w.await.unwrap();
    }
    assert!(placed > 32, "the writers kept writing ({placed} orders)");
    let original = log_of(&server.store).await;
    let server = std::sync::Arc::into_inner(server).unwrap();
    server.stop().await;

    let listed = backup::list(&backup_dir).unwrap();
    assert_eq!(listed.len(), 2);
    for (n, taken) in [(1, &first), (2, &second)] {
        let head: u64 = taken["backup"]["head"].as_str().unwrap().parse().unwrap();
        assert!(
            head > 0 && head < original.len() as u64,
            "taken while writing: {head}"
        );
        let target = work.path().join(format!("restored-{n}"));
        let report = backup::restore(&backup_dir, Some(n), &target)
            .await
            .unwrap();
        assert_eq!(report.backup.log.head.0, head);
        assert_eq!(report.verified, head);
        let restored = RocksEventStore::open_read_only(target.join("log")).unwrap();
        assert_eq!(restored.head().0, head);
        let events = log_of(&restored).await;
        assert_eq!(events[..], original[..head as usize]);
        assert_eq!(
            annals_store::backup::hash_hex(&events.last().unwrap().hash),
            taken["backup"]["tip"].as_str().unwrap()
        );
        // The restored node starts, its read models catch up to the restored head.
        restored.close();
        let config = node_on(&target);
        let node = TestServer::with_config(config).await;
        let orders = node
            .ok(
                r#"query($at: Position) { orders(first: 1, atLeast: $at) { edges { node { id } } } }"#,
                json!({ "at": head.to_string() }),
            )
            .await;
        assert_eq!(orders["orders"]["edges"].as_array().unwrap().len(), 1);
        node.stop().await;
        // Restoring into a directory that holds a log is refused.
        let err = backup::restore(&backup_dir, Some(n), &target)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("restore into a new data directory"),
            "{err}"
        );
    }
    // A directory without a manifest is refused clearly.
    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let refused = annals(&[
        "restore",
        p(&empty),
        "--data-dir",
        p(&work.path().join("x")),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("INCOMPLETE_BACKUP"));
    let _ = data;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_imported_export_equals_the_original_log_record_by_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let config = with_line_retention(node_on(&data), 1);
    let server = TestServer::with_config(config).await;
    common::product(&server, "p1", 500, 100).await;
    for n in 0..4 {
        place(&server, &format!("o{n}"), &format!("c{}", n % 2)).await;
        server.ok(APPEND, json!({ "s": "line-1", "n": n })).await;
    }
    server.ok(FORGET, json!({ "s": "c0" })).await;
    server
        .ok(r#"mutation { applyRetention { removed } }"#, json!({}))
        .await;
    let original = log_of(&server.store).await;
    assert!(original.iter().any(|e| e.removed));
    let exports = export_all(&data, work.path());
    let products_before = server
        .ok(r#"{ product(id: "p1") { available reserved } }"#, json!({}))
        .await;
    server.stop().await;

    for export in &exports {
        let target = work.path().join(format!(
            "imported-{}",
            export.extension().unwrap().to_str().unwrap()
        ));
        let out = ok(annals(&[
            "import",
            p(export),
            "--data-dir",
            p(&target),
            "--json",
        ]));
        let report: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(report["head"], original.len().to_string());
        let imported = RocksEventStore::open_read_only(target.join("log")).unwrap();
        assert_eq!(log_of(&imported).await, original, "{}", export.display());
        imported.close();
        // Its read models were built by the import.
        let config = node_on(&target);
        let node = TestServer::with_config(config).await;
        let products = node
            .ok(
                r#"query($at: Position) { product(id: "p1", atLeast: $at) { available reserved } }"#,
                json!({ "at": original.len().to_string() }),
            )
            .await;
        assert_eq!(products["product"], products_before["product"]);
        node.stop().await;
        // Importing again over it is refused; so is an export cut in the middle.
        let again = annals(&["import", p(export), "--data-dir", p(&target)]);
        assert!(!again.status.success());
    }
    let ndjson = &exports[0];
    let text = std::fs::read_to_string(ndjson).unwrap();
    let cut: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("\"position\":3,"))
        .collect();
    let broken = work.path().join("broken.ndjson");
    std::fs::write(&broken, cut.join("\n")).unwrap();
    let target = work.path().join("imported-broken");
    let refused = annals(&["import", p(&broken), "--data-dir", p(&target)]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("position 3") && stderr.contains("DELETED_EVENT"),
        "{stderr}"
    );
    assert!(!target.join("log").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_forgets_and_backs_up_through_a_server_and_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let config = node_on(&data);
    // The data directory outlives this server: the CLI opens it once the server stops.
    let server = TestServer::with_config(config).await;
    common::product(&server, "p1", 500, 100).await;
    place(&server, "c0", "carol").await;
    let at = place(&server, "d0", "dave").await;
    let url = format!("http://{}", server.addr);

    // Through the server (--url).
    let out = ok(annals(&["forget", "carol", "--url", &url, "--json"]));
    let erased: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(erased["subjectRef"].as_str().unwrap().len(), 32);
    let again = annals(&["forget", "carol", "--url", &url]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("NOT_FOUND"));
    let order = server.ok(ORDER, json!({ "id": "c0", "at": at })).await;
    assert_eq!(order["order"]["customerId"], "[erased]");
    // A data directory held by a process that announces no server is a clear error.
    let held = annals(&["forget", "dave", "--data-dir", p(&data)]);

    assert!(!held.status.success());
    assert!(String::from_utf8_lossy(&held.stderr).contains("pass --url"));
    server.stop().await;

    // On its own: the CLI opens the data directory itself.
    ok(annals(&[
        "forget",
        "dave",
        "--data-dir",
        p(&data),
        "--reason",
        "request 7",
    ]));
    let backup_dir = work.path().join("b");
    let out = ok(annals(&[
        "backup",
        "--data-dir",
        p(&data),
        "--to",
        p(&backup_dir),
        "--json",
    ]));
    let taken: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(taken["id"], 1);
    let listed = ok(annals(&["restore", p(&backup_dir), "--list"]));
    assert!(listed.starts_with("backup 1: "), "{listed}");
    // A backup inside the data directory is refused.
    let inside = annals(&["backup", "--data-dir", p(&data), "--to", p(&data.join("b"))]);
    assert!(!inside.status.success());
    assert!(String::from_utf8_lossy(&inside.stderr).contains("BAD_USER_INPUT"));

    let config = node_on(&data);
    let server = TestServer::with_config(config).await;
    let head = server.store.head().get().to_string();
    let order = server.ok(ORDER, json!({ "id": "d0", "at": head })).await;
    assert_eq!(order["order"]["customerId"], "[erased]");
    let records = server
        .ok(EVENTS, json!({ "f": { "categories": ["erasure"] } }))
        .await;
    let records = records["events"]["events"].as_array().unwrap().clone();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["payload"]["reason"], "request 7");
    assert_eq!(records[1]["metadata"]["actor"], "cli");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erasure_cut_short_before_its_key_was_deleted_is_finished_at_the_next_start() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let config = || node_on(&data);
    let server = TestServer::with_config(config()).await;
    common::product(&server, "p1", 500, 100).await;
    let at = place(&server, "e0", "erin").await;
    // The record of an erasure, written as `forgetSubject` writes it first, and then a
    // crash before the key is deleted: the key is still there.
    let placed = log_of(&server.store)
        .await
        .into_iter()
        .find(|e| e.event_type == "OrderPlaced")
        .unwrap();
    let payload: Value = serde_json::from_slice(&placed.payload).unwrap();
    let sealed = payload["customer_id"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sealed.strip_prefix("pii:1:").unwrap())
        .unwrap();
    let subject_ref = hex::encode(&bytes[..16]);
    server
        .store
        .append(
            annals_store::StreamId::new(format!("erasure-{subject_ref}")).unwrap(),
            annals_store::ExpectedVersion::NoStream,
            vec![annals_store::NewEvent::json(
                "SubjectForgotten",
                &json!({ "subject_ref": subject_ref }),
            )],
        )
        .await
        .unwrap();
    let order = server.ok(ORDER, json!({ "id": "e0", "at": at })).await;
    assert_eq!(order["order"]["customerId"], "erin");
    server.stop().await;

    let server = TestServer::with_config(config()).await;
    let mut erased = false;
    for _ in 0..100 {
        let order = server.ok(ORDER, json!({ "id": "e0", "at": at })).await;
        if order["order"]["customerId"] == "[erased]" {
            erased = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(erased, "the start finished the erasure");
    let (code, _) = server.error(FORGET, json!({ "s": "erin" })).await;
    assert_eq!(code, "NOT_FOUND");
    server.stop().await;
}
