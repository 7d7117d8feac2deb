//! The cluster mode end to end: `annals serve --cluster` processes over a real 3-node NATS
//! cluster (the pinned nats-server), under load from 16 GraphQL clients.
//!
//! - `kill -9` of a NATS server, five times, a different one each time: nothing
//!   acknowledged is lost, every node holds the same gapless, chained log, no event id
//!   appears twice, and appends go on.
//! - `kill -9` of the writing Annals node, five times: another node writes within the
//!   lease expiry plus a few seconds, retried requests commit at most once, nothing
//!   acknowledged is lost.
//! - A query node started empty catches up, and its read models equal the writer's.
//! - 64 buyers for 10 units, spread over both nodes: exactly 10 orders win.
//!
//! The tests run one at a time (each starts its own servers) and take about a minute
//! together.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals_cluster::local::LocalNats;
use annals_store::{EventStore, Position, ReadFilter, RocksEventStore};
use serde_json::{Value, json};
use uuid::Uuid;

mod common;

/// One test at a time: each runs three NATS servers and two or three nodes on 2 cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The lease of `annals serve` (ClusterOptions' default).
const LEASE: Duration = Duration::from_secs(3);
/// How long after a writer's death another node must write.
const FAILOVER_WITHIN: Duration = Duration::from_secs(3 + 7);

const APPEND: &str = r#"mutation($stream: String!, $events: [EventInput!]!) {
  appendToStream(streamId: $stream, expectedVersion: { state: ANY }, events: $events) {
    position duplicate
  }
}"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `annals serve --cluster` process.
struct Node {
    name: String,
    role: &'static str,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    urls: Vec<String>,
    child: Option<Child>,
    /// Whether the node runs the checkout saga (off for the replication tests: its own
    /// writes would keep the log moving after the clients stop).
    checkout: bool,
}

impl Node {
    fn new(root: &Path, name: &str, role: &'static str, urls: Vec<String>) -> Self {
        Self {
            name: name.into(),
            role,
            data: root.join(name),
            log: root.join(format!("{name}.log")),
            port: free_port(),
            urls,
            child: None,
            checkout: false,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_annals"))
            .arg("serve")
            .args(["--cluster", &self.urls.join(",")])
            .args(["--node-id", &self.name, "--role", self.role])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--rate-limit", "1000000", "--rate-burst", "1000000"])
            .args(["--checkout", if self.checkout { "on" } else { "off" }])
            .env_remove("ANNALS_API_KEYS")
            .env_remove("ANNALS_API_KEYS_FILE")
            .env("RUST_LOG", "warn,annals_cluster=info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/ready`'s cluster report, or `None` while the node does not answer.
    async fn cluster(&self, http: &reqwest::Client) -> Option<Value> {
        let response = http
            .get(format!("{}/ready", self.base()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let ready = response.status().as_u16() == 200;
        let body: Value = response.json().await.ok()?;
        ready.then(|| body["checks"]["cluster"].clone())
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) {
        let started = Instant::now();
        while self.cluster(http).await.is_none() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} not ready in a minute:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn head(&self, http: &reqwest::Client) -> Option<u64> {
        self.cluster(http).await?["head"].as_str()?.parse().ok()
    }

    async fn leading(&self, http: &reqwest::Client) -> bool {
        self.cluster(http)
            .await
            .is_some_and(|c| c["leading"] == json!(true))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Three NATS servers, a directory for the nodes, an HTTP client.
fn cluster() -> (LocalNats, tempfile::TempDir, reqwest::Client) {
    (
        LocalNats::start(3).unwrap(),
        tempfile::tempdir().unwrap(),
        reqwest::Client::new(),
    )
}

/// Nodes `a` and `b`, both of role `all`, started and ready.
async fn two_nodes(nats: &LocalNats, root: &Path, http: &reqwest::Client) -> [Node; 2] {
    let mut nodes = [
        Node::new(root, "a", "all", nats.urls()),
        Node::new(root, "b", "all", nats.urls()),
    ];
    for node in nodes.iter_mut() {
        node.spawn();
    }
    for node in nodes.iter_mut() {
        node.wait_ready(http).await;
    }
    nodes
}

/// A GraphQL request: `Ok(data)`, or `Err(code or transport error)`.
async fn graphql(
    http: &reqwest::Client,
    base: &str,
    query: &str,
    variables: Value,
) -> Result<Value, String> {
    let response = http
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": variables }))
        .timeout(Duration::from_secs(40))
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let body: Value = response.json().await.map_err(|e| format!("body: {e}"))?;
    match body.get("errors") {
        Some(errors) => Err(errors[0]["extensions"]["code"]
            .as_str()
            .unwrap_or("NO_CODE")
            .to_string()),
        None => Ok(body["data"].clone()),
    }
}

/// What the clients were told: each acknowledged event id with its position.
#[derive(Default)]
struct Journal {
    acked: Mutex<Vec<(Uuid, u64)>>,
    /// When each acknowledgement arrived, in the order of `acked`.
    times: Mutex<Vec<Instant>>,
    retries: AtomicU64,
}

/// 16 clients appending one event each, alternating between the nodes; an event that is
/// not acknowledged is retried with its id (on the other node first) until it is.
fn start_clients(
    bases: Vec<String>,
    journal: Arc<Journal>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..16)
        .map(|client| {
            let (bases, journal, stop) = (bases.clone(), journal.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = Uuid::new_v4();
                    let variables = json!({
                        "stream": format!("client-{client}"),
                        "events": [{ "eventId": id, "type": "Tick", "payload": { "client": client, "n": n } }],
                    });
                    let mut attempt = 0usize;
                    loop {
                        let base = &bases[(client + n as usize + attempt) % bases.len()];
                        match graphql(&http, base, APPEND, variables.clone()).await {
                            Ok(data) => {
                                let position = data["appendToStream"]["position"]
                                    .as_str()
                                    .unwrap()
                                    .parse()
                                    .unwrap();
                                let mut acked = journal.acked.lock().unwrap();
                                acked.push((id, position));
                                journal.times.lock().unwrap().push(Instant::now());
                                break;
                            }
                            Err(_) => {
                                // Unanswered or refused for now: the same event again.
                                attempt += 1;
                                journal.retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect()
}

fn acked(journal: &Journal) -> usize {
    journal.acked.lock().unwrap().len()
}

/// Waits until the journal grows by some acknowledgements; on a stall, fails with the
/// nodes' logs.
async fn wait_acks(journal: &Journal, more: usize, within: Duration, nodes: &[&Node]) {
    let from = acked(journal);
    let started = Instant::now();
    while acked(journal) < from + more {
        if started.elapsed() >= within {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| format!("--- {} ---\n{}", n.name, n.log_text()))
                .collect();
            panic!(
                "appends stopped: {} acknowledged, {} more in {within:?}\n{}",
                acked(journal),
                acked(journal) - from,
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node's replica has the same head, and returns it.
async fn settle(nodes: &[&Node], http: &reqwest::Client) -> u64 {
    let started = Instant::now();
    loop {
        let mut heads = Vec::new();
        for node in nodes {
            heads.push(node.head(http).await);
        }
        if let Some(Some(first)) = heads.first()
            && heads.iter().all(|h| *h == Some(*first))
        {
            return *first;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the nodes do not agree on a head: {heads:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every node's log: the same events, positions 1..=head without a gap, an intact
/// chain, every event id once, and every acknowledged event at its position.
async fn check_logs(nodes: &mut [&mut Node], head: u64, journal: &Journal) {
    let mut logs = Vec::new();
    for node in nodes.iter_mut() {
        node.kill_9();
        let store = RocksEventStore::open_read_only(node.data.join("log")).unwrap();
        assert_eq!(store.head(), Position(head), "{}'s head", node.name);
        let mut events = Vec::new();
        let mut from = Position::FIRST;
        loop {
            let page = store
                .read_all(from, 10_000, &ReadFilter::all())
                .await
                .unwrap();
            events.extend(page.events);
            if page.next > page.head {
                break;
            }
            from = page.next;
        }
        for (i, event) in events.iter().enumerate() {
            assert_eq!(
                event.position,
                Position(i as u64 + 1),
                "a gap in {}",
                node.name
            );
        }
        let report = store
            .verify_chain(Position::FIRST, Position(head))
            .await
            .unwrap();
        assert!(report.is_ok(), "{}'s chain: {report:?}", node.name);
        logs.push(events);
    }
    for log in &logs[1..] {
        assert!(log == &logs[0], "the nodes hold different logs");
    }
    let log = &logs[0];
    let mut ids = HashSet::new();
    for event in log {
        assert!(
            ids.insert(event.event_id),
            "event id {} twice",
            event.event_id
        );
    }
    let by_position: HashMap<u64, Uuid> = log.iter().map(|e| (e.position.0, e.event_id)).collect();
    let acked = journal.acked.lock().unwrap();
    for (id, position) in acked.iter() {
        assert_eq!(
            by_position.get(position),
            Some(id),
            "acknowledged event {id} is not at position {position}"
        );
    }
    eprintln!(
        "{} events, {} acknowledged, {} retried requests",
        log.len(),
        acked.len(),
        journal.retries.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_nats_servers_loses_no_acknowledged_event() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut nats, root, http) = cluster();
    let [mut a, mut b] = two_nodes(&nats, root.path(), &http).await;
    let journal = Arc::new(Journal::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = start_clients(vec![a.base(), b.base()], journal.clone(), stop.clone());
    wait_acks(&journal, 50, Duration::from_secs(30), &[&a, &b]).await;
    let mut resumed = Vec::new();
    for round in 0..5 {
        let victim = round % nats.size();
        let before = acked(&journal);
        nats.kill(victim);
        let killed = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        nats.restart(victim).unwrap();
        // Appends go on after every kill.
        wait_acks(&journal, 50, Duration::from_secs(60), &[&a, &b]).await;
        let fiftieth = journal.times.lock().unwrap()[before + 49];
        resumed.push(fiftieth.duration_since(killed));
    }
    eprintln!("the 50th acknowledgement after each kill came after: {resumed:?}");
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let head = settle(&[&a, &b], &http).await;
    check_logs(&mut [&mut a, &mut b], head, &journal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_writing_node_hands_over_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nats, root, http) = cluster();
    let mut nodes = two_nodes(&nats, root.path(), &http).await;
    let journal = Arc::new(Journal::default());
    let stop = Arc::new(AtomicBool::new(false));
    let bases = nodes.iter().map(Node::base).collect();
    let clients = start_clients(bases, journal.clone(), stop.clone());
    wait_acks(
        &journal,
        50,
        Duration::from_secs(30),
        &[&nodes[0], &nodes[1]],
    )
    .await;
    let mut handovers = Vec::new();
    for _ in 0..5 {
        // Whoever writes now.
        let started = Instant::now();
        let writer = loop {
            if nodes[0].leading(&http).await {
                break 0;
            }
            if nodes[1].leading(&http).await {
                break 1;
            }
            assert!(started.elapsed() < FAILOVER_WITHIN, "no node writes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        nodes[writer].kill_9();
        let killed = Instant::now();
        let other = 1 - writer;
        while !nodes[other].leading(&http).await {
            assert!(
                killed.elapsed() < FAILOVER_WITHIN,
                "{} did not take over within {FAILOVER_WITHIN:?}:\n{}",
                nodes[other].name,
                nodes[other].log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handovers.push(killed.elapsed());
        wait_acks(&journal, 20, FAILOVER_WITHIN, &[&nodes[other]]).await;
        nodes[writer].spawn();
        nodes[writer].wait_ready(&http).await;
    }
    eprintln!("handovers after kill -9 of the writer (lease {LEASE:?}): {handovers:?}");
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let head = settle(&[&nodes[0], &nodes[1]], &http).await;
    let [a, b] = &mut nodes;
    check_logs(&mut [a, b], head, &journal).await;
}

const REGISTER: &str = r#"mutation($id: String!) {
  registerProduct(productId: $id, sku: $id, name: $id, priceCents: 250) { position }
}"#;
const RECEIVE: &str = r#"mutation($id: String!, $n: Int!) {
  receiveStock(productId: $id, quantity: $n) { position }
}"#;
const PLACE: &str = r#"mutation($order: String!, $customer: String!, $product: String!, $key: String) {
  placeOrder(orderId: $order, customerId: $customer, lines: [{ productId: $product, quantity: 1 }], idempotencyKey: $key) { position }
}"#;
const READ_MODELS: &str = r#"query($at: Position!) {
  products(first: 100, atLeast: $at) { nodes { id sku name priceCents onHand reserved available version } }
  orders(first: 100, atLeast: $at) { nodes { id customerId status totalCents placedAt updatedAt version lines { productId quantity } } }
  customerStats(id: "c-1", atLeast: $at) { totalOrders cancelledOrders revenueCents }
}"#;

fn position(data: &Value, field: &str) -> u64 {
    data[field]["position"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_node_started_empty_catches_up_to_the_writers_read_models() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nats, root, http) = cluster();
    let mut a = Node::new(root.path(), "a", "all", nats.urls());
    a.spawn();
    a.wait_ready(&http).await;
    let mut last = 0;
    for p in 0..5 {
        let id = format!("p{p}");
        graphql(&http, &a.base(), REGISTER, json!({ "id": id }))
            .await
            .unwrap();
        let data = graphql(&http, &a.base(), RECEIVE, json!({ "id": id, "n": 100 }))
            .await
            .unwrap();
        last = position(&data, "receiveStock");
    }
    for o in 0..30 {
        let data = graphql(
            &http,
            &a.base(),
            PLACE,
            json!({ "order": format!("o{o}"), "customer": format!("c-{}", o % 3), "product": format!("p{}", o % 5), "key": null }),
        )
        .await
        .unwrap();
        last = position(&data, "placeOrder");
    }
    let mut q = Node::new(root.path(), "q", "query", nats.urls());
    q.spawn();
    q.wait_ready(&http).await;
    let on_a = graphql(
        &http,
        &a.base(),
        READ_MODELS,
        json!({ "at": last.to_string() }),
    )
    .await
    .unwrap();
    let on_q = graphql(
        &http,
        &q.base(),
        READ_MODELS,
        json!({ "at": last.to_string() }),
    )
    .await
    .unwrap();
    assert_eq!(on_a["products"]["nodes"].as_array().unwrap().len(), 5);
    assert_eq!(on_a["orders"]["nodes"].as_array().unwrap().len(), 30);
    assert_eq!(
        on_q, on_a,
        "the query node's read models differ from the writer's"
    );
    let status = q.cluster(&http).await.unwrap();
    assert_eq!(status["role"], "query");
    assert_eq!(status["leading"], false);
    // A mutation sent to the query node is forwarded to the writer, and the query node
    // reads its own write.
    let data = graphql(
        &http,
        &q.base(),
        PLACE,
        json!({ "order": "o-from-q", "customer": "c-1", "product": "p0", "key": null }),
    )
    .await
    .unwrap();
    let at = position(&data, "placeOrder");
    let order = graphql(
        &http,
        &q.base(),
        r#"query($at: Position!) { order(id: "o-from-q", atLeast: $at) { id status } }"#,
        json!({ "at": at.to_string() }),
    )
    .await
    .unwrap();
    assert_eq!(order["order"]["id"], "o-from-q");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_buyers_for_ten_units_over_two_nodes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nats, root, http) = cluster();
    let [a, b] = two_nodes(&nats, root.path(), &http).await;
    graphql(&http, &a.base(), REGISTER, json!({ "id": "last" }))
        .await
        .unwrap();
    graphql(&http, &b.base(), RECEIVE, json!({ "id": "last", "n": 10 }))
        .await
        .unwrap();
    let bases = [a.base(), b.base()];
    let buyers = (0..64).map(|i| {
        let base = bases[i % 2].clone();
        let http = http.clone();
        async move {
            let variables = json!({ "order": format!("o-{i}"), "customer": format!("c-{i}"), "product": "last", "key": format!("buy-{i}") });
            // A lost race (CONFLICT) or a moment without a writer is retried with the same
            // idempotency key, as a client of a real shop would.
            loop {
                match graphql(&http, &base, PLACE, variables.clone()).await {
                    Ok(data) => return Ok(position(&data, "placeOrder")),
                    Err(code) if code == "CONFLICT" || code == "UNAVAILABLE" => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(code) => return Err(code),
                }
            }
        }
    });
    let outcomes = futures::future::join_all(buyers).await;
    let won: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok().copied())
        .collect();
    for outcome in &outcomes {
        if let Err(code) = outcome {
            assert_eq!(code, "INSUFFICIENT_STOCK", "a loser got {code}");
        }
    }
    assert_eq!(won.len(), 10, "exactly the units in stock are sold");
    let at = won.iter().max().copied().unwrap().to_string();
    for node in [&a, &b] {
        let data = graphql(
            &http,
            &node.base(),
            r#"query($at: Position!) { product(id: "last", atLeast: $at) { onHand reserved available } }"#,
            json!({ "at": at }),
        )
        .await
        .unwrap();
        assert_eq!(data["product"]["available"], json!("0"), "{}", node.name);
        assert_eq!(data["product"]["reserved"], json!("10"), "{}", node.name);
    }
}

/// A command on the node that does not write decides on its replica, which may be a
/// moment behind the writer: a refusal (here: the product is unknown) is final only once
/// the replica holds everything the stream acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_right_after_a_write_on_another_node_sees_that_write() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nats, root, http) = cluster();
    let [a, b] = two_nodes(&nats, root.path(), &http).await;
    let (writer, follower) = if a.leading(&http).await {
        (&a, &b)
    } else {
        (&b, &a)
    };
    for i in 0..40 {
        let id = format!("fresh-{i}");
        graphql(&http, &writer.base(), REGISTER, json!({ "id": id }))
            .await
            .unwrap();
        graphql(
            &http,
            &follower.base(),
            RECEIVE,
            json!({ "id": id, "n": 1 }),
        )
        .await
        .unwrap_or_else(|code| panic!("receiving {id} right after its registration: {code}"));
    }
}

/// Every node of a cluster keeps the checkouts' state, and only the writing node calls
/// the payment gateway: each payment is authorized with one call in the whole cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_checks_out_with_one_gateway_call_per_payment() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nats, root, http) = cluster();
    let mut nodes = [
        Node::new(root.path(), "a", "all", nats.urls()),
        Node::new(root.path(), "b", "all", nats.urls()),
    ];
    for node in nodes.iter_mut() {
        node.checkout = true;
        node.spawn();
    }
    for node in nodes.iter_mut() {
        node.wait_ready(&http).await;
    }
    let [a, b] = &nodes;
    graphql(&http, &a.base(), REGISTER, json!({ "id": "p0" }))
        .await
        .unwrap();
    graphql(&http, &b.base(), RECEIVE, json!({ "id": "p0", "n": 100 }))
        .await
        .unwrap();
    const ORDERS: usize = 12;
    for i in 0..ORDERS {
        let base = if i % 2 == 0 { a.base() } else { b.base() };
        let variables = json!({ "order": format!("o-{i}"), "customer": "c", "product": "p0", "key": format!("k-{i}") });
        loop {
            match graphql(&http, &base, PLACE, variables.clone()).await {
                Ok(_) => break,
                Err(code) if code == "CONFLICT" || code == "UNAVAILABLE" => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(code) => panic!("placing o-{i}: {code}"),
            }
        }
    }
    let started = Instant::now();
    for node in [a, b] {
        for i in 0..ORDERS {
            loop {
                let data = graphql(
                    &http,
                    &node.base(),
                    r#"query($o: String!) { checkout(orderId: $o) { step } }"#,
                    json!({ "o": format!("o-{i}") }),
                )
                .await
                .unwrap();
                if data["checkout"]["step"] == "CONFIRMED" {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "o-{i} not confirmed on {}: {data}",
                    node.name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let mut calls = 0;
    for node in [a, b] {
        let metrics = http
            .get(format!("{}/metrics", node.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        calls += metrics
            .lines()
            .find_map(|l| l.strip_prefix("annals_payment_gateway_calls_total "))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap());
    }
    assert_eq!(calls, ORDERS as u64, "one authorization call per payment");
}

/// Deliveries a receiver in the test accepted: event id → how many times.
type Deliveries = Arc<Mutex<HashMap<String, u32>>>;

async fn receive(
    axum::extract::State(seen): axum::extract::State<Deliveries>,
    headers: axum::http::HeaderMap,
) -> axum::http::StatusCode {
    let id = headers
        .get(annals::webhooks::EVENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    *seen.lock().unwrap().entry(id).or_default() += 1;
    axum::http::StatusCode::OK
}

/// Starts a receiver in the test and subscribes it, through `base`, to every product
/// event; returns what it receives.
async fn subscribe_a_receiver(http: &reqwest::Client, base: &str) -> Deliveries {
    let seen: Deliveries = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    graphql(
        http,
        base,
        r#"mutation($url: String!) { createWebhook(id: "stock", url: $url, categories: ["product"]) { id } }"#,
        json!({ "url": url }),
    )
    .await
    .unwrap();
    seen
}

/// A webhook of a cluster is delivered by the writing node alone, once per event while
/// nothing fails, and the other node drops what the writer recorded as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_webhook_is_delivered_once_by_the_writer() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nats, root, http) = cluster();
    let [a, b] = two_nodes(&nats, root.path(), &http).await;
    let seen = subscribe_a_receiver(&http, &b.base()).await;
    const PRODUCTS: usize = 10;
    for i in 0..PRODUCTS {
        let base = if i % 2 == 0 { a.base() } else { b.base() };
        graphql(&http, &base, REGISTER, json!({ "id": format!("p{i}") }))
            .await
            .unwrap();
    }
    let started = Instant::now();
    loop {
        let delivered = seen.lock().unwrap().len();
        let pending: Vec<Value> = {
            let mut pending = Vec::new();
            for node in [&a, &b] {
                let data = graphql(&http, &node.base(), "{ webhooks { pending } }", json!({}))
                    .await
                    .unwrap();
                pending.push(data["webhooks"][0]["pending"].clone());
            }
            pending
        };
        if delivered == PRODUCTS && pending.iter().all(|p| p == "0") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "delivered {delivered} of {PRODUCTS}; pending on the nodes {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.values().all(|n| *n == 1),
        "one delivery per event in the whole cluster: {seen:?}"
    );
}

/// Registers product `id` through `base`, riding out a moment without a writer; a
/// registration that committed before its answer was lost reads as `INVALID_STATE` when
/// sent again, which is the same outcome.
async fn register_through(http: &reqwest::Client, base: &str, id: &str) {
    let started = Instant::now();
    loop {
        match graphql(http, base, REGISTER, json!({ "id": id })).await {
            Ok(_) => return,
            Err(code) if code == "INVALID_STATE" => return,
            Err(_) if started.elapsed() < FAILOVER_WITHIN => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(code) => panic!("registering {id}: {code}"),
        }
    }
}

/// Killing the writing node loses no webhook delivery: the node that takes over sends
/// what came after the last recorded progress, and the receiver gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_loses_nothing_when_the_writer_is_killed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nats, root, http) = cluster();
    let mut nodes = two_nodes(&nats, root.path(), &http).await;
    let seen = subscribe_a_receiver(&http, &nodes[0].base()).await;
    for i in 0..10 {
        register_through(&http, &nodes[i % 2].base(), &format!("p{i}")).await;
    }
    let delivered = |n: usize| {
        let seen = seen.clone();
        async move {
            let started = Instant::now();
            while seen.lock().unwrap().len() < n {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "{} of {n} events delivered",
                    seen.lock().unwrap().len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    delivered(10).await;
    let writer = if nodes[0].leading(&http).await { 0 } else { 1 };
    nodes[writer].kill_9();
    let survivor = 1 - writer;
    for i in 10..20 {
        register_through(&http, &nodes[survivor].base(), &format!("p{i}")).await;
    }
    delivered(20).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        20,
        "every ProductRegistered, and nothing else, was delivered"
    );
}

const ORDER_OF: &str =
    r#"query($id: String!, $at: Position) { order(id: $id, atLeast: $at) { customerId } }"#;

/// The customer id a node reveals for an order once its read model reached `at`.
async fn customer_of(http: &reqwest::Client, node: &Node, order: &str, at: &str) -> String {
    let data = graphql(
        http,
        &node.base(),
        ORDER_OF,
        json!({ "id": order, "at": at }),
    )
    .await
    .unwrap();
    data["order"]["customerId"].as_str().unwrap().to_string()
}

/// A cluster keeps its customers' keys once, in its key bucket: what one node sealed
/// another reveals, and a customer forgotten through one node reads as erased on both,
/// while no file of either data directory ever holds the id in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_sealed_on_one_node_is_revealed_and_forgotten_on_every_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (nats, root, http) = cluster();
    let [a, b] = two_nodes(&nats, root.path(), &http).await;
    graphql(&http, &a.base(), REGISTER, json!({ "id": "p" }))
        .await
        .unwrap();
    graphql(&http, &a.base(), RECEIVE, json!({ "id": "p", "n": 100 }))
        .await
        .unwrap();
    // Orders of one new customer through both nodes at once: one key for the customer.
    let orders = (0..8).map(|i| {
        let base = [a.base(), b.base()][i % 2].clone();
        let http = http.clone();
        async move {
            let variables = json!({ "order": format!("k-{i}"), "customer": "kim@example.com", "product": "p", "key": format!("k-{i}") });
            loop {
                match graphql(&http, &base, PLACE, variables.clone()).await {
                    Ok(data) => return position(&data, "placeOrder"),
                    Err(code) if code == "CONFLICT" || code == "UNAVAILABLE" => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(code) => panic!("placing an order: {code}"),
                }
            }
        }
    });
    let at = futures::future::join_all(orders)
        .await
        .into_iter()
        .max()
        .unwrap()
        .to_string();
    let other = graphql(
        &http,
        &b.base(),
        PLACE,
        json!({ "order": "l-0", "customer": "lee@example.com", "product": "p", "key": "l-0" }),
    )
    .await
    .unwrap();
    let at = position(&other, "placeOrder")
        .max(at.parse().unwrap())
        .to_string();
    for node in [&a, &b] {
        for i in 0..8 {
            assert_eq!(
                customer_of(&http, node, &format!("k-{i}"), &at).await,
                "kim@example.com",
                "{}",
                node.name
            );
        }
        let mine = graphql(
            &http,
            &node.base(),
            r#"query($at: Position) { orders(customerId: "kim@example.com", atLeast: $at) { edges { node { id } } } }"#,
            json!({ "at": at }),
        )
        .await
        .unwrap();
        assert_eq!(
            mine["orders"]["edges"].as_array().unwrap().len(),
            8,
            "one key, one index: {}",
            node.name
        );
    }

    // Forgotten through node b (which forwards the record to the writer): erased on both.
    let erased = graphql(
        &http,
        &b.base(),
        r#"mutation { forgetSubject(subjectId: "kim@example.com") { position } }"#,
        json!({}),
    )
    .await
    .unwrap();
    let at = position(&erased, "forgetSubject").to_string();
    for node in [&a, &b] {
        let started = Instant::now();
        while customer_of(&http, node, "k-0", &at).await != "[erased]" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} still reveals her",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(customer_of(&http, node, "k-7", &at).await, "[erased]");
        assert_eq!(
            customer_of(&http, node, "l-0", &at).await,
            "lee@example.com"
        );
    }
    let again = graphql(
        &http,
        &a.base(),
        r#"mutation { forgetSubject(subjectId: "kim@example.com") { position } }"#,
        json!({}),
    )
    .await;
    assert_eq!(again.unwrap_err(), "NOT_FOUND");
    // Deletion and backups are one node's operations: refused on a cluster.
    let refused = graphql(
        &http,
        &a.base(),
        r#"mutation { deleteStream(streamId: "order-k-0") { removed } }"#,
        json!({}),
    )
    .await;
    assert_eq!(refused.unwrap_err(), "UNSUPPORTED");
    drop((a, b));
    for dir in [root.path().join("a"), root.path().join("b")] {
        for file in common::files_under(&dir) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            for id in [b"kim@example.com".as_slice(), b"lee@example.com"] {
                assert!(
                    !bytes.windows(id.len()).any(|w| w == id),
                    "{} holds a customer id in clear",
                    file.display()
                );
            }
        }
    }
}
