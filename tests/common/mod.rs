//! A real server on 127.0.0.1:0, assembled by the composition root over a fresh RocksDB
//! data directory (or a log in memory), and a small GraphQL client.
#![allow(dead_code)]

pub mod binary;
pub mod browser;

use std::net::SocketAddr;

use annals::node::{Node, NodeConfig, Storage};
use annals::server::{AppState, ServerConfig};
use annals_store::SharedStore;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// A running server; dropping it stops the server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: SharedStore,
    pub client: reqwest::Client,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), config).await
    }

    /// A server over the data directory `dir` (its `log` and `read`), which may hold data.
    /// Without the checkout saga: these tests confirm and cancel orders themselves.
    pub async fn start_in(dir: tempfile::TempDir, config: ServerConfig) -> Self {
        let mut node = NodeConfig::on_disk(dir.path());
        node.server = config;
        node.checkout = None;
        Self::launch(node, Some(dir)).await
    }

    /// A server whose log is in memory (`InMemoryEventStore`), without the checkout.
    pub async fn in_memory(config: ServerConfig) -> Self {
        let mut node = NodeConfig::new(Storage::InMemory);
        node.server = config;
        node.checkout = None;
        Self::launch(node, None).await
    }

    /// A server over a fresh data directory, configured by `configure` from the product's
    /// defaults (the checkout included).
    pub async fn with_node(configure: impl FnOnce(&mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut node = NodeConfig::on_disk(dir.path());
        configure(&mut node);
        Self::launch(node, Some(dir)).await
    }

    /// A server over exactly `config` (its data directory is the caller's to keep).
    pub async fn with_config(config: NodeConfig) -> Self {
        Self::launch(config, None).await
    }

    /// A server with the default configuration, in memory or on disk.
    pub async fn open_on(in_memory: bool) -> Self {
        if in_memory {
            Self::in_memory(ServerConfig::default()).await
        } else {
            Self::open().await
        }
    }

    async fn launch(config: NodeConfig, dir: Option<tempfile::TempDir>) -> Self {
        let node = Node::start(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = node.store().clone();
        let state = node.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            store,
            client: reqwest::Client::new(),
            state,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    pub async fn open() -> Self {
        Self::start(ServerConfig::default()).await
    }

    /// A server that accepts one fresh key per role in `roles`, and those keys, in order.
    pub async fn with_keys(roles: &[annals::server::auth::Role]) -> (Self, Vec<String>) {
        let mut keys = Vec::new();
        let mut lines = String::new();
        for role in roles {
            let (key, line) = annals::server::auth::generate_key(*role).unwrap();
            keys.push(key);
            lines.push_str(&line);
            lines.push('\n');
        }
        let server = Self::start(ServerConfig {
            api_keys: annals::server::auth::ApiKeys::parse(&lines).unwrap(),
            ..ServerConfig::default()
        })
        .await;
        (server, keys)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs a GraphQL request and returns the HTTP status and the JSON body.
    pub async fn post(&self, key: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap();
        (status, body)
    }

    /// A GraphQL request that must succeed; returns `data`.
    pub async fn ok(&self, query: &str, variables: Value) -> Value {
        self.ok_as(None, query, variables).await
    }

    pub async fn ok_as(&self, key: Option<&str>, query: &str, variables: Value) -> Value {
        let (status, body) = self.post(key, query, variables).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    /// A GraphQL request that must fail; returns the first error's code and the error.
    pub async fn error(&self, query: &str, variables: Value) -> (String, Value) {
        self.error_as(None, query, variables).await
    }

    pub async fn error_as(
        &self,
        key: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (String, Value) {
        let (_, body) = self.post(key, query, variables).await;
        first_error(&body)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn first_error(body: &Value) -> (String, Value) {
    let error = body["errors"][0].clone();
    assert!(!error.is_null(), "expected an error, got {body}");
    let code = error["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a code: {body}"))
        .to_string();
    (code, error)
}

pub const REGISTER: &str = r#"mutation($id: String!, $price: Int!, $key: String) {
  registerProduct(productId: $id, sku: "SKU", name: "Widget", priceCents: $price, idempotencyKey: $key) {
    position duplicate streams { streamId version firstVersion firstPosition lastPosition }
  }
}"#;

pub const RECEIVE: &str = r#"mutation($id: String!, $qty: Int!) {
  receiveStock(productId: $id, quantity: $qty) { position streams { streamId version } }
}"#;

pub const PLACE: &str = r#"mutation($order: String!, $product: String!, $qty: Int!, $key: String) {
  placeOrder(orderId: $order, customerId: "c-1", lines: [{productId: $product, quantity: $qty}], idempotencyKey: $key) {
    position duplicate streams { streamId version }
  }
}"#;

/// Registers a product with stock through the API.
pub async fn product(server: &TestServer, id: &str, price: i64, stock: i64) {
    server
        .ok(REGISTER, json!({ "id": id, "price": price }))
        .await;
    if stock > 0 {
        server.ok(RECEIVE, json!({ "id": id, "qty": stock })).await;
    }
}

/// Appends (as `admin`) an event the orders projection cannot apply — a confirmation of
/// an order it never saw — and waits until the projection has moved past it, parking it.
/// Returns its position.
pub async fn park_a_ghost_confirmation(server: &TestServer, admin: &str) -> Value {
    let appended = server
        .ok_as(
            Some(admin),
            r#"mutation { appendToStream(streamId: "order-ghost", expectedVersion: { state: ANY }, events: [{ type: "OrderConfirmed", payload: {} }]) { position } }"#,
            json!({}),
        )
        .await;
    let position = appended["appendToStream"]["position"].clone();
    server
        .ok_as(
            Some(admin),
            r#"query($at: Position) { orders(atLeast: $at) { nodes { id } } }"#,
            json!({ "at": position }),
        )
        .await;
    position
}

/// Every file under `dir`, for tests that look for bytes on disk.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}
