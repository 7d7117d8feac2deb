//! The `events` subscription over graphql-transport-ws: catch-up then live, resumable
//! from the last position seen without gaps or duplicates; authentication on
//! `connection_init`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use annals::server::ServerConfig;
use annals::server::auth::{ApiKeys, Role, generate_key};
use annals_store::{EventStore, ExpectedVersion, NewEvent, StreamId};
use common::TestServer;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SUBSCRIBE: &str = r#"subscription($after: Position, $filter: EventFilter) {
  events(after: $after, filter: $filter) { position streamId type }
}"#;

async fn connect(server: &TestServer, init: Value) -> Result<Socket, String> {
    let mut request = format!("ws://{}/graphql/ws", server.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| e.to_string())?;
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": init }),
    )
    .await;
    match next_json(&mut socket).await {
        Some(m) if m["type"] == "connection_ack" => Ok(socket),
        other => Err(format!("no ack: {other:?}")),
    }
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
}

/// The next JSON message, answering pings; `None` when the socket closed.
async fn next_json(socket: &mut Socket) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("no message within 20 s")?;
        match message {
            Ok(Message::Text(text)) => {
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                if value["type"] == "ping" {
                    send(socket, json!({ "type": "pong" })).await;
                    continue;
                }
                return Some(value);
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn subscribe(socket: &mut Socket, id: &str, variables: Value) {
    send(
        socket,
        json!({ "id": id, "type": "subscribe",
                "payload": { "query": SUBSCRIBE, "variables": variables } }),
    )
    .await;
}

/// Receives `n` events of subscription `id`, returning their positions.
async fn receive(socket: &mut Socket, id: &str, n: usize) -> Vec<u64> {
    let mut positions = Vec::new();
    while positions.len() < n {
        let message = next_json(socket).await.expect("socket closed");
        assert_eq!(message["id"], id, "{message}");
        assert_eq!(message["type"], "next", "{message}");
        let event = &message["payload"]["data"]["events"];
        positions.push(event["position"].as_str().unwrap().parse().unwrap());
    }
    positions
}

async fn append(server: &TestServer, stream: &str, n: usize) {
    for _ in 0..n {
        server
            .store
            .append(
                StreamId::new(stream).unwrap(),
                ExpectedVersion::Any,
                vec![NewEvent::json("Tick", &json!({}))],
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_subscription_receives_every_event_exactly_once() {
    let server = TestServer::open().await;
    append(&server, "tick-a", 5).await;

    // Catch up on part of the history, then drop the connection mid-stream.
    let mut socket = connect(&server, json!({})).await.unwrap();
    subscribe(&mut socket, "1", json!({ "after": "0" })).await;
    let mut seen = receive(&mut socket, "1", 3).await;
    drop(socket);

    // More events while disconnected.
    append(&server, "tick-b", 5).await;

    // Resume from the last position seen; live events arrive while it catches up.
    let mut socket = connect(&server, json!({})).await.unwrap();
    let last = *seen.last().unwrap();
    subscribe(&mut socket, "2", json!({ "after": last.to_string() })).await;
    let writer = {
        let store = server.store.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                store
                    .append(
                        StreamId::new("tick-c").unwrap(),
                        ExpectedVersion::Any,
                        vec![NewEvent::json("Tick", &json!({}))],
                    )
                    .await
                    .unwrap();
            }
        })
    };
    seen.extend(receive(&mut socket, "2", 30 - seen.len()).await);
    writer.await.unwrap();

    let mut counts = BTreeMap::new();
    for p in &seen {
        *counts.entry(*p).or_insert(0) += 1;
    }
    assert!(counts.values().all(|&c| c == 1), "duplicates: {counts:?}");
    assert_eq!(seen, (1..=30).collect::<Vec<u64>>(), "in order, no gaps");

    // A filtered subscription sees only its category, live.
    subscribe(
        &mut socket,
        "3",
        json!({ "after": "30", "filter": { "categories": ["special"] } }),
    )
    .await;
    append(&server, "other-x", 2).await;
    append(&server, "special-1", 1).await;
    // Subscription 2 is still live and sees everything; 3 sees only its category.
    let message = loop {
        let message = next_json(&mut socket).await.unwrap();
        if message["id"] == "3" {
            break message;
        }
        assert_eq!(message["id"], "2", "{message}");
    };
    assert_eq!(message["payload"]["data"]["events"]["position"], "33");
    assert_eq!(
        message["payload"]["data"]["events"]["streamId"],
        "special-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_need_a_key_when_keys_are_configured() {
    let (reader, line) = generate_key(Role::Reader).unwrap();
    let server = TestServer::start(ServerConfig {
        api_keys: ApiKeys::parse(&line).unwrap(),
        ..ServerConfig::default()
    })
    .await;
    append(&server, "tick-a", 2).await;

    let refused = connect(&server, json!({})).await;
    assert!(refused.is_err(), "no key, no connection");
    let refused = connect(&server, json!({ "Authorization": "Bearer ank_wrong" })).await;
    assert!(refused.is_err(), "wrong key, no connection");

    let mut socket = connect(
        &server,
        json!({ "Authorization": format!("Bearer {reader}") }),
    )
    .await
    .unwrap();
    subscribe(&mut socket, "1", json!({})).await;
    assert_eq!(receive(&mut socket, "1", 2).await, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_live_subscriptions_and_the_server() {
    let server = TestServer::open().await;
    let mut socket = connect(&server, json!({})).await.unwrap();
    subscribe(&mut socket, "1", json!({})).await;
    append(&server, "tick-a", 1).await;
    assert_eq!(receive(&mut socket, "1", 1).await, [1]);
    let stopping = tokio::spawn(server.stop());
    // The subscription completes (or the socket closes) instead of hanging.
    let end = next_json(&mut socket).await;
    if let Some(message) = end {
        assert_eq!(message["type"], "complete", "{message}");
    }
    drop(socket);
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("graceful shutdown finished")
        .unwrap();
}
