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

/// Subscribes as `id` after `after`; the first message's outcome: `Ok` with the first
/// event's position, or `Err` with the error's code.
async fn try_subscribe(socket: &mut Socket, id: &str, after: u64) -> Result<u64, String> {
    subscribe(socket, id, json!({ "after": after.to_string() })).await;
    let message = next_json(socket).await.expect("socket closed");
    assert_eq!(message["id"], id, "{message}");
    let outcome = first_outcome(&message);
    if outcome.is_err() {
        // A refused subscription is completed right after its error.
        let done = next_json(socket).await.expect("socket closed");
        assert_eq!(done, json!({ "id": id, "type": "complete" }));
    }
    outcome
}

/// A `next` message's event position, or the code of its (or an `error` message's) error.
fn first_outcome(message: &Value) -> Result<u64, String> {
    let errors = match message["type"].as_str() {
        Some("next") if message["payload"]["errors"].is_null() => {
            let position = &message["payload"]["data"]["events"]["position"];
            return Ok(position.as_str().unwrap().parse().unwrap());
        }
        Some("next") => &message["payload"]["errors"],
        Some("error") => &message["payload"],
        _ => panic!("unexpected message {message}"),
    };
    Err(errors[0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a code: {message}"))
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_flood_from_one_key_is_capped_and_slots_free_on_disconnect() {
    let (flooder, f) = generate_key(Role::Reader).unwrap();
    let (other, o) = generate_key(Role::Reader).unwrap();
    let server = TestServer::start(ServerConfig {
        api_keys: ApiKeys::parse(&format!("{f}\n{o}\n")).unwrap(),
        graphql: annals::graphql::GraphqlLimits {
            max_subscriptions_per_key: 3,
            ..Default::default()
        },
        ..ServerConfig::default()
    })
    .await;
    append(&server, "tick-a", 1).await;
    let auth = |key: &str| json!({ "Authorization": format!("Bearer {key}") });

    // Three subscriptions of one key work, the fourth is refused with a code.
    let mut first = connect(&server, auth(&flooder)).await.unwrap();
    for id in ["1", "2", "3"] {
        assert_eq!(try_subscribe(&mut first, id, 0).await, Ok(1));
    }
    assert_eq!(
        try_subscribe(&mut first, "4", 0).await,
        Err("RATE_LIMITED".into())
    );
    // The cap is per key, not per connection.
    let mut second = connect(&server, auth(&flooder)).await.unwrap();
    assert_eq!(
        try_subscribe(&mut second, "1", 0).await,
        Err("RATE_LIMITED".into())
    );
    // Another key is not affected.
    let mut bystander = connect(&server, auth(&other)).await.unwrap();
    assert_eq!(try_subscribe(&mut bystander, "1", 0).await, Ok(1));

    // The admitted subscriptions keep working: each gets the next event live.
    append(&server, "tick-b", 1).await;
    let mut live = Vec::new();
    while live.len() < 3 {
        let message = next_json(&mut first).await.unwrap();
        assert_eq!(first_outcome(&message), Ok(2), "{message}");
        live.push(message["id"].as_str().unwrap().to_string());
    }
    live.sort();
    assert_eq!(live, ["1", "2", "3"]);
    assert_eq!(receive(&mut bystander, "1", 1).await, [2]);

    // Completing one frees its slot.
    send(&mut first, json!({ "id": "1", "type": "complete" })).await;
    let admitted = loop {
        match try_subscribe(&mut second, "2", 1).await {
            Ok(position) => break position,
            Err(code) => {
                assert_eq!(code, "RATE_LIMITED");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(admitted, 2);

    // Disconnecting frees every slot of the connection: two more fit after it.
    drop(first);
    let mut admitted = 0;
    let mut attempt = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while admitted < 2 {
        attempt += 1;
        match try_subscribe(&mut second, &format!("r{attempt}"), 1).await {
            Ok(position) => {
                assert_eq!(position, 2);
                admitted += 1;
            }
            Err(code) => {
                assert_eq!(code, "RATE_LIMITED");
                assert!(tokio::time::Instant::now() < deadline, "slots never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // And the key is at its cap again.
    let over = try_subscribe(&mut second, "over", 1).await;
    assert_eq!(over, Err("RATE_LIMITED".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_errors_over_the_websocket_carry_codes() {
    let server = TestServer::open().await;
    append(&server, "tick-a", 1).await;
    let mut socket = connect(&server, json!({})).await.unwrap();
    let cases = [
        ("syntax", r#"subscription { events(after: "0") { position "#),
        ("validation", "subscription { events { nope } }"),
        (
            "argument",
            r#"subscription { events(after: "-1") { position } }"#,
        ),
        (
            "argument type",
            "subscription { events(filter: []) { position } }",
        ),
    ];
    for (n, (what, query)) in cases.iter().enumerate() {
        let id = n.to_string();
        send(
            &mut socket,
            json!({ "id": id, "type": "subscribe", "payload": { "query": query } }),
        )
        .await;
        let message = next_json(&mut socket).await.expect("socket closed");
        assert_eq!(message["id"], id.as_str(), "{message}");
        assert_eq!(
            first_outcome(&message),
            Err("BAD_USER_INPUT".into()),
            "{what}: {message}"
        );
        let done = next_json(&mut socket).await.expect("socket closed");
        assert_eq!(done, json!({ "id": id, "type": "complete" }));
    }
    // The connection still serves a valid subscription.
    assert_eq!(try_subscribe(&mut socket, "ok", 0).await, Ok(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_its_live_subscriptions() {
    let (revoked, r) = generate_key(Role::Reader).unwrap();
    let (kept, k) = generate_key(Role::Reader).unwrap();
    let server = TestServer::start(ServerConfig {
        api_keys: ApiKeys::parse(&format!("{r}\n{k}\n")).unwrap(),
        ..ServerConfig::default()
    })
    .await;
    append(&server, "tick-a", 1).await;
    let auth = |key: &str| json!({ "Authorization": format!("Bearer {key}") });
    let mut doomed = connect(&server, auth(&revoked)).await.unwrap();
    let mut other = connect(&server, auth(&kept)).await.unwrap();
    assert_eq!(try_subscribe(&mut doomed, "1", 0).await, Ok(1));
    assert_eq!(try_subscribe(&mut other, "1", 0).await, Ok(1));

    let hash = r.split_once(':').unwrap().1;
    server
        .state
        .replace_api_keys(ApiKeys::parse(&format!("{r}\n{k}\nrevoked:{hash}\n")).unwrap())
        .unwrap();
    // The live subscription of the revoked key ends with a coded error.
    let message = next_json(&mut doomed).await.expect("socket closed");
    assert_eq!(message["id"], "1", "{message}");
    assert_eq!(first_outcome(&message), Err("UNAUTHENTICATED".into()));
    assert_eq!(
        next_json(&mut doomed).await.unwrap(),
        json!({ "id": "1", "type": "complete" })
    );
    // The connection takes no new subscription, and the key no new connection.
    assert_eq!(
        try_subscribe(&mut doomed, "2", 0).await,
        Err("UNAUTHENTICATED".into())
    );
    assert!(connect(&server, auth(&revoked)).await.is_err());
    // The other key's subscription goes on.
    append(&server, "tick-b", 1).await;
    assert_eq!(receive(&mut other, "1", 1).await, [2]);
}
