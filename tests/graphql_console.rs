//! The queries the console is built on, over GraphQL: `viewer`, `streams`, `categories`,
//! `event`, `verifyChain`, `overview`, and the export signature they publish.

mod common;

use std::time::Duration;

use annals::audit::{VerifyOptions, parse_public_key, verify};
use annals::server::ServerConfig;
use annals::server::auth::Role;
use annals_store::SharedStore;
use common::TestServer;
use serde_json::{Value, json};

const APPEND: &str = "mutation($stream: String!, $events: [EventInput!]!) {
    appendToStream(streamId: $stream, expectedVersion: { state: ANY }, events: $events) {
        position
    }
}";

async fn append(server: &TestServer, stream: &str, events: usize) -> u64 {
    let events: Vec<Value> = (0..events)
        .map(|i| json!({ "type": "Happened", "payload": { "i": i } }))
        .collect();
    let data = server
        .ok(APPEND, json!({ "stream": stream, "events": events }))
        .await;
    data["appendToStream"]["position"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits until the stream catalog has seen the head.
async fn catalog_caught_up(server: &TestServer) {
    let head = server.ok("{ head }", json!({})).await["head"].clone();
    for _ in 0..200 {
        let status = server
            .ok("{ projections { name checkpoint } }", json!({}))
            .await;
        let caught_up = status["projections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "streams" && p["checkpoint"] == head);
        if caught_up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the stream catalog never reached the head {head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_listed_by_prefix_and_category_with_counts_and_pages() {
    let server = TestServer::open().await;
    for stream in ["cart-1", "cart-2", "cart-10", "wish-1"] {
        append(&server, stream, 1).await;
    }
    append(&server, "cart-1", 2).await;
    catalog_caught_up(&server).await;

    const STREAMS: &str = "query($category: String, $prefix: String, $first: Int, $after: String) {
        streams(category: $category, prefix: $prefix, first: $first, after: $after) {
            nodes { streamId category version events lastPosition lastRecordedAt }
            pageInfo { hasNextPage endCursor }
        }
    }";
    let all = server.ok(STREAMS, json!({})).await;
    let ids: Vec<&str> = all["streams"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["streamId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cart-1", "cart-10", "cart-2", "wish-1"]);
    let cart_1 = &all["streams"]["nodes"][0];
    assert_eq!(cart_1["category"], "cart");
    assert_eq!(cart_1["version"], "3");
    assert_eq!(cart_1["events"], "3");
    assert_eq!(cart_1["lastPosition"], "6");
    assert!(cart_1["lastRecordedAt"].as_str().unwrap().ends_with('Z'));

    let first = server
        .ok(STREAMS, json!({ "category": "cart", "first": 2 }))
        .await;
    assert_eq!(first["streams"]["pageInfo"]["hasNextPage"], true);
    assert_eq!(first["streams"]["pageInfo"]["endCursor"], "cart-10");
    let rest = server
        .ok(
            STREAMS,
            json!({ "category": "cart", "first": 2, "after": "cart-10" }),
        )
        .await;
    assert_eq!(rest["streams"]["nodes"][0]["streamId"], "cart-2");
    assert_eq!(rest["streams"]["pageInfo"]["hasNextPage"], false);
    let prefixed = server.ok(STREAMS, json!({ "prefix": "cart-1" })).await;
    assert_eq!(prefixed["streams"]["nodes"].as_array().unwrap().len(), 2);
    let (code, _) = server.error(STREAMS, json!({ "first": 0 })).await;
    assert_eq!(code, "BAD_USER_INPUT");

    let categories = server
        .ok("{ categories { name streams events } }", json!({}))
        .await;
    assert_eq!(
        categories["categories"],
        json!([
            { "name": "cart", "streams": "3", "events": "5" },
            { "name": "wish", "streams": "1", "events": "1" },
        ])
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_by_id_or_position_and_the_chain_around_it() {
    let server = TestServer::open().await;
    append(&server, "note-1", 3).await;
    const EVENT: &str = "query($id: UUID, $position: Position) {
        event(id: $id, position: $position) { position eventId type prevHash hash }
    }";
    let second = server.ok(EVENT, json!({ "position": "2" })).await;
    let event = &second["event"];
    assert_eq!(event["position"], "2");
    assert_eq!(event["hash"].as_str().unwrap().len(), 64);
    let first = server.ok(EVENT, json!({ "position": 1 })).await;
    assert_eq!(
        event["prevHash"], first["event"]["hash"],
        "each event links to the one before"
    );
    let by_id = server.ok(EVENT, json!({ "id": event["eventId"] })).await;
    assert_eq!(by_id["event"], *event);
    for absent in [
        json!({ "position": "9" }),
        json!({ "position": "0" }),
        json!({ "id": "00000000-0000-4000-8000-000000000000" }),
    ] {
        assert_eq!(server.ok(EVENT, absent).await["event"], Value::Null);
    }
    for wrong in [
        json!({}),
        json!({ "position": "1", "id": event["eventId"] }),
    ] {
        let (code, _) = server.error(EVENT, wrong).await;
        assert_eq!(code, "BAD_USER_INPUT");
    }

    const CHAIN: &str = "query($from: Position!, $to: Position!) {
        verifyChain(from: $from, to: $to) { from to checked ok error }
    }";
    let check = server.ok(CHAIN, json!({ "from": 1, "to": 99 })).await;
    assert_eq!(
        check["verifyChain"],
        json!({ "from": "1", "to": "3", "checked": "3", "ok": true, "error": null }),
        "cut at the head"
    );
    for wrong in [
        json!({ "from": 0, "to": 1 }),
        json!({ "from": 3, "to": 2 }),
        json!({ "from": 1, "to": 10_001 }),
        json!({ "from": 5, "to": 6 }),
    ] {
        let (code, _) = server.error(CHAIN, wrong).await;
        assert_eq!(code, "BAD_USER_INPUT");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_its_role_and_the_overview_of_the_last_seconds() {
    let (server, keys) = TestServer::with_keys(&[Role::Reader, Role::Admin]).await;
    let (reader, admin) = (keys[0].clone(), keys[1].clone());
    let viewer = server
        .ok_as(Some(&reader), "{ viewer { id role } }", json!({}))
        .await;
    assert_eq!(viewer["viewer"]["role"], "READER");
    assert!(viewer["viewer"]["id"].as_str().unwrap().starts_with("key:"));
    let viewer = server
        .ok_as(Some(&admin), "{ viewer { role } }", json!({}))
        .await;
    assert_eq!(viewer["viewer"]["role"], "ADMIN");
    let (code, _) = server
        .error_as(None, "{ viewer { role } }", json!({}))
        .await;
    assert_eq!(code, "UNAUTHENTICATED");

    server
        .ok_as(
            Some(&admin),
            APPEND,
            json!({ "stream": "tick-1", "events": [{ "type": "Ticked", "payload": {} }] }),
        )
        .await;
    const OVERVIEW: &str = "query($s: Int) { overview(lastSeconds: $s) {
        head events commits meanCommitEvents exportPublicKey
        samples { at head eventsPerSecond commitsPerSecond lags { name lag checkpoint } }
    } }";
    // The server samples once a second, the first sample being the baseline.
    let mut overview = Value::Null;
    for _ in 0..100 {
        overview = server
            .ok_as(Some(&reader), OVERVIEW, json!({ "s": 600 }))
            .await;
        if overview["overview"]["samples"].as_array().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let overview = &overview["overview"];
    assert_eq!(overview["head"], "1");
    assert_eq!(overview["events"], "1");
    assert_eq!(overview["commits"], "1");
    assert_eq!(overview["exportPublicKey"], Value::Null, "unsigned exports");
    let samples = overview["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{overview}");
    let last = samples.last().unwrap();
    assert_eq!(last["head"], "1");
    assert!(
        last["lags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "streams")
    );
    let one = server
        .ok_as(Some(&reader), OVERVIEW, json!({ "s": 1 }))
        .await;
    assert_eq!(one["overview"]["samples"].as_array().unwrap().len(), 1);
    for wrong in [0, 601] {
        let (code, _) = server
            .error_as(Some(&reader), OVERVIEW, json!({ "s": wrong }))
            .await;
        assert_eq!(code, "BAD_USER_INPUT");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_signing_key_signs_its_exports_and_publishes_the_key() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let server = TestServer::start(ServerConfig {
        export_signing_key: Some(key.clone()),
        ..ServerConfig::default()
    })
    .await;
    append(&server, "memo-1", 4).await;
    let published = server
        .ok(
            "{ overview(lastSeconds: 1) { exportPublicKey } }",
            json!({}),
        )
        .await;
    let public = published["overview"]["exportPublicKey"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(public, hex::encode(key.verifying_key().as_bytes()));
    let export = server
        .client
        .get(server.url("/export?format=ndjson"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.ndjson");
    std::fs::write(&path, &export).unwrap();
    let report = verify(
        &path,
        None::<&SharedStore>,
        &VerifyOptions {
            public_key: Some(parse_public_key(&public).unwrap()),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.events, 4);
    assert_eq!(report.signature_pinned, Some(true));
    // Signed with another key, the same export is refused.
    let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let refused = verify(
        &path,
        None::<&SharedStore>,
        &VerifyOptions {
            public_key: Some(other.verifying_key()),
        },
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    server.stop().await;
}
