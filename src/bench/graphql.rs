//! `annals bench graphql`: `placeOrder` mutations and point queries (`order(id)`,
//! `product(id)`) over HTTP from N concurrent keep-alive connections, against a running
//! server (`--url`) or one started in-process on 127.0.0.1:0 over a fresh data directory.
//!
//! Setup (not measured): one product per connection is registered and stocked, and a few
//! orders are placed, through the same GraphQL mutations; the bench then waits until the
//! read models hold them (`atLeast`), so every point query has something to find. Each
//! connection orders from its own product, so the mutations measure the API and the
//! command path rather than retries on one hot stock stream.
//!
//! Each connection is its own `reqwest::Client` with a pool of one, so N connections are
//! exactly N keep-alive TCP connections. A request that fails in transport, answers with a
//! non-2xx status, carries GraphQL `errors` or finds nothing where the setup put something
//! counts as an error, under its `extensions.code`; latency percentiles are of the
//! successful requests. A run where most requests fail is an error, not a report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::cli::Mix;
use annals::node::{Node, NodeConfig, NodeError};
use annals::server::auth::RateLimit;
use annals_store::{EventStore, SharedStore};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use super::stats::{self, Latency, Meter, Sampler};
use super::{BenchDir, BenchError, Limit, Machine};

/// What to measure.
#[derive(Clone, Debug)]
pub struct GraphqlBench {
    /// The GraphQL endpoint of a running server; `None` starts one in-process.
    pub url: Option<String>,
    /// Concurrent keep-alive connections, each sending one request at a time.
    pub connections: usize,
    /// When to stop: a duration or a number of requests (both kinds together).
    pub limit: Limit,
    /// Which requests to send.
    pub mix: Mix,
    /// Sent as `Authorization: Bearer <key>` (needs the `writer` role on a keyed server).
    pub api_key: Option<String>,
    /// The in-process server's data directory (a fresh temporary one when none).
    pub data_dir: Option<PathBuf>,
}

/// The conditions of a run.
#[derive(Clone, Debug, Serialize)]
pub struct GraphqlConditions {
    /// `url` (a server given by `--url`) or `in-process` (started by the bench).
    pub target: &'static str,
    /// The endpoint the requests went to.
    pub url: String,
    /// Concurrent keep-alive connections.
    pub connections: usize,
    /// Which requests were sent.
    pub mix: Mix,
    /// When the run stopped.
    pub limit: Limit,
    /// Products registered and stocked in the setup (one per connection).
    pub products: usize,
    /// Orders placed in the setup, the targets of `order(id)`.
    pub setup_orders: u64,
    /// Seconds the setup took.
    pub setup_seconds: f64,
    /// The machine and build of the bench (and, in-process, of the server).
    pub machine: Machine,
}

/// Figures of one kind of request.
#[derive(Clone, Debug, Serialize)]
pub struct OperationFigures {
    /// Requests sent.
    pub requests: u64,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed (transport, HTTP status, GraphQL errors, nothing found).
    pub errors: u64,
    /// Failed requests by error code (`extensions.code`, `HTTP_<status>`, `TRANSPORT`,
    /// `NOT_FOUND`).
    pub error_codes: BTreeMap<String, u64>,
    /// Wall-clock seconds of the measured part (the same for every kind).
    pub seconds: f64,
    /// Successful requests per second.
    pub operations_per_second: f64,
    /// Latency of one successful request, as the client saw it.
    pub latency: Latency,
}

/// What `annals bench graphql` reports.
#[derive(Clone, Debug, Serialize)]
pub struct GraphqlReport {
    /// Always `graphql`.
    pub benchmark: &'static str,
    /// How it was measured.
    pub conditions: GraphqlConditions,
    /// `placeOrder` (an order and its stock reservation in one commit); `null` when the
    /// mix sends none.
    pub mutation: Option<OperationFigures>,
    /// `order(id)` and `product(id)` from the read models; `null` when the mix sends none.
    pub point_query: Option<OperationFigures>,
    /// Requests of both kinds per second, errors included.
    pub requests_per_second: f64,
    /// Requests in the first whole second.
    pub first_second_requests_per_second: f64,
    /// Requests in the last whole second.
    pub last_second_requests_per_second: f64,
    /// Orders the measured part placed (successful `placeOrder` requests).
    pub orders_placed: u64,
    /// The in-process server's log head after the run; `null` with `--url`.
    pub store_head: Option<u64>,
}

const REGISTER: &str = r#"mutation($p: String!, $sku: String!) { registerProduct(productId: $p, sku: $sku, name: "Bench product", priceCents: 100) { position } }"#;
const RECEIVE: &str =
    r#"mutation($p: String!) { receiveStock(productId: $p, quantity: 2000000000) { position } }"#;
const PLACE: &str = r#"mutation($o: String!, $c: String!, $p: String!) { placeOrder(orderId: $o, customerId: $c, lines: [{productId: $p, quantity: 1}]) { position } }"#;
const ORDER: &str = r#"query($id: String!, $at: Position) { order(id: $id, atLeast: $at) { id status totalCents version } }"#;
const PRODUCT: &str = r#"query($id: String!, $at: Position) { product(id: $id, atLeast: $at) { id available version } }"#;

/// A failed request: its code, and what the server or the transport said.
#[derive(Debug)]
struct Failure {
    code: String,
    message: String,
}

impl Failure {
    fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// One keep-alive connection to the endpoint.
#[derive(Clone)]
struct Connection {
    client: reqwest::Client,
    url: Arc<str>,
    key: Option<Arc<str>>,
}

impl Connection {
    fn new(url: &Arc<str>, key: Option<&Arc<str>>) -> Result<Self, BenchError> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| BenchError::Failed(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            url: url.clone(),
            key: key.cloned(),
        })
    }

    /// POSTs one GraphQL request; `Ok(data)` only for a 2xx answer without `errors`.
    async fn post(&self, query: &str, variables: Value) -> Result<Value, Failure> {
        let mut request = self
            .client
            .post(&*self.url)
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::new("TRANSPORT", e.to_string()))?;
        let status = response.status();
        let http = || format!("HTTP_{}", status.as_u16());
        let mut body: Value = response
            .json()
            .await
            .map_err(|e| Failure::new(http(), format!("no JSON body: {e}")))?;
        if let Some(first) = body
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|errors| errors.first())
        {
            let code = first["extensions"]["code"]
                .as_str()
                .unwrap_or("GRAPHQL_ERROR");
            let message = first["message"].as_str().unwrap_or_default();
            return Err(Failure::new(code, message));
        }
        if !status.is_success() {
            return Err(Failure::new(http(), body.to_string()));
        }
        Ok(body["data"].take())
    }

    /// A setup request, which must succeed.
    async fn must(&self, what: &str, query: &str, variables: Value) -> Result<Value, BenchError> {
        self.post(query, variables).await.map_err(|f| {
            BenchError::Failed(format!(
                "setup request {what} to {} failed: {} ({}){}",
                self.url,
                f.code,
                f.message,
                hint(&f.code)
            ))
        })
    }
}

/// What to try when a request is refused.
fn hint(code: &str) -> &'static str {
    match code {
        "UNAUTHENTICATED" | "FORBIDDEN" => "; pass a writer key with --api-key or ANNALS_API_KEY",
        "RATE_LIMITED" => {
            "; the server's per-key rate limit refuses the load: raise `annals serve --rate-limit/--rate-burst`"
        }
        "TRANSPORT" => "; is a server listening there?",
        _ => "",
    }
}

/// The position a commit result reports.
fn position(data: &Value, field: &str) -> u64 {
    data[field]["position"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The endpoint: the URL as given, with `/graphql` when it names only the server.
fn endpoint(url: &str) -> Result<String, BenchError> {
    let mut parsed =
        reqwest::Url::parse(url).map_err(|e| BenchError::Invalid(format!("--url {url}: {e}")))?;
    if parsed.scheme() != "http" {
        return Err(BenchError::Invalid(format!(
            "--url {url}: only http:// is supported (this build has no TLS client)"
        )));
    }
    if parsed.path() == "/" {
        parsed.set_path("/graphql");
    }
    Ok(parsed.to_string())
}

/// The server the bench started, stopped and removed (with its temporary directory) at
/// the end.
struct InProcess {
    runtime: tokio::runtime::Runtime,
    store: SharedStore,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: BenchDir,
}

impl InProcess {
    /// Starts a node on `dir` (log, read models, projection workers) and serves it on
    /// 127.0.0.1:0 on a runtime of its own, as `annals serve` does.
    fn start(dir: BenchDir) -> Result<(Self, String), BenchError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("annals-server")
            .build()?;
        let mut config = NodeConfig::on_disk(dir.path());
        // The bench measures the API path (`bench command --saga` measures the checkout).
        config.checkout = None;
        // The bench measures the API, not the per-key limiter's refusals.
        let unlimited =
            std::num::NonZeroU32::new(1_000_000_000).unwrap_or(std::num::NonZeroU32::MAX);
        config.server.rate_limit = RateLimit {
            per_second: unlimited,
            burst: unlimited,
        };
        let node = {
            let _entered = runtime.enter();
            Node::start(config).map_err(|e| match e {
                _ if e.in_use().is_some() => BenchError::InUse(dir.path().display().to_string()),
                NodeError::Log { source, .. } => BenchError::Store(source),
                NodeError::ReadModels { source, .. } => BenchError::Projection(source),
                NodeError::TempDir(e) | NodeError::WebhookKey(e) => BenchError::Io(e),
                NodeError::Keys(e) => BenchError::Io(std::io::Error::other(e)),
            })?
        };
        let store = node.store().clone();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}/graphql", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = runtime.spawn(node.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok((
            Self {
                runtime,
                store,
                stop,
                served,
                _dir: dir,
            },
            url,
        ))
    }

    /// Stops serving; the node stops its workers at a checkpoint and closes the log.
    /// Returns the log's head. The temporary directory goes when `self` drops.
    fn stop(self) -> Result<u64, BenchError> {
        let _ = self.stop.send(());
        let served = self.runtime.block_on(self.served);
        let head = self.store.head().0;
        match served {
            Ok(result) => result?,
            Err(e) => return Err(BenchError::Failed(format!("the server task failed: {e}"))),
        }
        Ok(head)
    }
}

/// What one connection measured.
struct Measured {
    mutation: Histogram<u64>,
    query: Histogram<u64>,
    mutation_requests: u64,
    query_requests: u64,
    mutation_errors: BTreeMap<String, u64>,
    query_errors: BTreeMap<String, u64>,
}

/// Runs the benchmark.
pub fn run_graphql(bench: &GraphqlBench) -> Result<GraphqlReport, BenchError> {
    if bench.connections == 0 {
        return Err(BenchError::Invalid(
            "--connections must be at least 1".into(),
        ));
    }
    if matches!(
        bench.limit,
        Limit::Events(0) | Limit::Requests(0) | Limit::Duration(Duration::ZERO)
    ) {
        return Err(BenchError::Invalid(
            "the run must have a positive --duration or --requests".into(),
        ));
    }
    if bench.url.is_some() && bench.data_dir.is_some() {
        return Err(BenchError::Invalid(
            "--data-dir is for the in-process server; with --url the server has its own".into(),
        ));
    }
    let (server, url) = match &bench.url {
        Some(urls) => (
            None,
            urls.split(',')
                .map(endpoint)
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
        ),
        None => {
            let dir = BenchDir::new(bench.data_dir.as_deref())?;
            let (server, url) = InProcess::start(dir)?;
            (Some(server), url)
        }
    };
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("annals-bench-client")
        .build()?;
    let outcome = client_runtime.block_on(drive(bench, &url));
    drop(client_runtime);
    super::progress_done();
    // Stop the in-process server whatever the outcome, so its directory is removed.
    let stopped = server.map(InProcess::stop).transpose();
    // The run's own failure says more than a failure to stop after it.
    let mut report = outcome?;
    report.store_head = stopped?;
    Ok(report)
}

/// Setup, measured part and figures, on the client runtime.
async fn drive(bench: &GraphqlBench, url: &str) -> Result<GraphqlReport, BenchError> {
    // Several endpoints (the nodes of a cluster): the connections take turns over them.
    let urls: Vec<Arc<str>> = url.split(',').map(Arc::<str>::from).collect();
    let key = bench.api_key.as_deref().map(Arc::<str>::from);
    let connections = (0..bench.connections)
        .map(|i| Connection::new(&urls[i % urls.len()], key.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;

    // Setup: products, stock and the orders the point queries read.
    let setup_started = Instant::now();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let customer = format!("bench-{run}");
    let products: Vec<String> = (0..bench.connections)
        .map(|p| format!("bench-{run}-p{p}"))
        .collect();
    let first = &connections[0];
    for (p, product) in products.iter().enumerate() {
        first
            .must(
                "registerProduct",
                REGISTER,
                json!({ "p": product, "sku": format!("SKU-{run}-{p}") }),
            )
            .await?;
        first
            .must("receiveStock", RECEIVE, json!({ "p": product }))
            .await?;
    }
    let setup_orders = (2 * bench.connections).max(32);
    let mut orders = Vec::with_capacity(setup_orders);
    let mut last = 0u64;
    for o in 0..setup_orders {
        let id = format!("bench-{run}-s{o}");
        let data = first
            .must(
                "placeOrder",
                PLACE,
                json!({ "o": id, "c": customer, "p": products[o % products.len()] }),
            )
            .await?;
        last = last.max(position(&data, "placeOrder"));
        orders.push(id);
    }
    // Wait until both read models hold the setup, and open every connection.
    let at = last.to_string();
    for (c, connection) in connections.iter().enumerate() {
        let order = &orders[c % orders.len()];
        let data = connection
            .must("order(atLeast)", ORDER, json!({ "id": order, "at": at }))
            .await?;
        if data["order"].is_null() {
            return Err(BenchError::Failed(format!(
                "order {order} placed in the setup is not in the read model"
            )));
        }
        connection
            .must(
                "product(atLeast)",
                PRODUCT,
                json!({ "id": products[c], "at": at }),
            )
            .await?;
    }
    let setup_seconds = setup_started.elapsed().as_secs_f64();

    // The measured part.
    let orders: Arc<[String]> = orders.into();
    let products: Arc<[String]> = products.into();
    let budget = super::append::budget(bench.limit);
    let meter = Meter::new();
    let sampler = Sampler::start_counting(&meter, "graphql".into(), "requests");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections.len());
    for (c, connection) in connections.into_iter().enumerate() {
        let budget = budget.clone();
        let meter = meter.clone();
        let orders = orders.clone();
        let products = products.clone();
        let customer = customer.clone();
        let run = run.clone();
        let mix = bench.mix;
        tasks.push(tokio::spawn(async move {
            let mut m = Measured {
                mutation: stats::histogram(),
                query: stats::histogram(),
                mutation_requests: 0,
                query_requests: 0,
                mutation_errors: BTreeMap::new(),
                query_errors: BTreeMap::new(),
            };
            let product = &products[c];
            let mut i = 0u64;
            while budget.take() {
                let mutation = match mix {
                    Mix::Mutation => true,
                    Mix::Query => false,
                    Mix::Both => i.is_multiple_of(2),
                };
                let round = if mix == Mix::Both { i / 2 } else { i };
                i += 1;
                let op = Instant::now();
                if mutation {
                    let vars = json!({ "o": format!("bench-{run}-c{c}-{round}"), "c": customer, "p": product });
                    m.mutation_requests += 1;
                    match connection.post(PLACE, vars).await {
                        Ok(_) => stats::record(&mut m.mutation, op.elapsed()),
                        Err(f) => *m.mutation_errors.entry(f.code).or_default() += 1,
                    }
                } else {
                    // Alternate the two point queries; walk the setup orders and products
                    // so that connections do not all read the same key.
                    let n = round as usize + c;
                    let (query, field, id) = if round.is_multiple_of(2) {
                        (ORDER, "order", &orders[n.wrapping_mul(7) % orders.len()])
                    } else {
                        (PRODUCT, "product", &products[n % products.len()])
                    };
                    m.query_requests += 1;
                    match connection.post(query, json!({ "id": id })).await {
                        Ok(data) if !data[field].is_null() => {
                            stats::record(&mut m.query, op.elapsed())
                        }
                        Ok(_) => *m.query_errors.entry("NOT_FOUND".into()).or_default() += 1,
                        Err(f) => *m.query_errors.entry(f.code).or_default() += 1,
                    }
                }
                meter.record(1);
            }
            m
        }));
    }
    let mut mutation = stats::histogram();
    let mut query = stats::histogram();
    let (mut mutation_requests, mut query_requests) = (0, 0);
    let mut mutation_errors = BTreeMap::new();
    let mut query_errors = BTreeMap::new();
    for task in tasks {
        let m = task
            .await
            .map_err(|e| BenchError::Failed(format!("connection task failed: {e}")))?;
        let _ = mutation.add(&m.mutation);
        let _ = query.add(&m.query);
        mutation_requests += m.mutation_requests;
        query_requests += m.query_requests;
        merge(&mut mutation_errors, m.mutation_errors);
        merge(&mut query_errors, m.query_errors);
    }
    let elapsed = started.elapsed();
    let rates = sampler.finish();
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let requests = meter.operations();
    let figures = |requests: u64, latency: &Histogram<u64>, errors: BTreeMap<String, u64>| {
        let failed: u64 = errors.values().sum();
        let ok = requests - failed;
        OperationFigures {
            requests,
            ok,
            errors: failed,
            error_codes: errors,
            seconds,
            operations_per_second: ok as f64 / seconds,
            latency: if ok == 0 {
                Latency::default()
            } else {
                Latency::of(latency)
            },
        }
    };
    let mutation =
        (bench.mix != Mix::Query).then(|| figures(mutation_requests, &mutation, mutation_errors));
    let point_query =
        (bench.mix != Mix::Mutation).then(|| figures(query_requests, &query, query_errors));
    let failed: u64 = [&mutation, &point_query]
        .into_iter()
        .flatten()
        .map(|f| f.errors)
        .sum();
    if requests == 0 || failed * 2 > requests {
        let mut codes = BTreeMap::new();
        for f in [&mutation, &point_query].into_iter().flatten() {
            merge(&mut codes, f.error_codes.clone());
        }
        let codes = codes
            .iter()
            .map(|(code, n)| format!("{code} × {n}{}", hint(code)))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(BenchError::Failed(format!(
            "{failed} of {requests} requests to {url} failed: {codes}"
        )));
    }
    let conditions = GraphqlConditions {
        target: if bench.url.is_some() {
            "url"
        } else {
            "in-process"
        },
        url: url.to_string(),
        connections: bench.connections,
        mix: bench.mix,
        limit: bench.limit,
        products: products.len(),
        setup_orders: orders.len() as u64,
        setup_seconds,
        machine: Machine::current(),
    };
    let per_second = requests as f64 / seconds;
    let report = GraphqlReport {
        benchmark: "graphql",
        conditions,
        orders_placed: mutation.as_ref().map_or(0, |m| m.ok),
        mutation,
        point_query,
        requests_per_second: per_second,
        first_second_requests_per_second: rates.first().copied().unwrap_or(per_second),
        last_second_requests_per_second: rates.last().copied().unwrap_or(per_second),
        store_head: None,
    };
    Ok(report)
}

fn merge(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (code, n) in from {
        *into.entry(code).or_default() += n;
    }
}

impl GraphqlReport {
    /// The report as a readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let c = &self.conditions;
        let mut out = format!(
            "graphql: {} server {}, {} connections, mix {}, {} products, {} setup orders (setup {:.1}s)\n{}\n",
            c.target,
            c.url,
            c.connections,
            c.mix.name(),
            c.products,
            c.setup_orders,
            c.setup_seconds,
            super::machine_line(&c.machine)
        );
        let _ = write!(
            out,
            "{:<14} {:>9} {:>8} {:>10}",
            "", "requests", "errors", "ok/s"
        );
        Latency::push_headings(&mut out);
        for (name, figures) in [
            ("placeOrder", &self.mutation),
            ("point query", &self.point_query),
        ] {
            if let Some(f) = figures {
                let _ = write!(
                    out,
                    "{name:<14} {:>9} {:>8} {:>10}",
                    super::thousands(f.requests as f64),
                    super::thousands(f.errors as f64),
                    super::thousands(f.operations_per_second),
                );
                f.latency.push_cells(&mut out);
            }
        }
        let _ = writeln!(
            out,
            "{} requests/s (first second {}, last second {}); orders placed {}{}",
            super::thousands(self.requests_per_second),
            super::thousands(self.first_second_requests_per_second),
            super::thousands(self.last_second_requests_per_second),
            self.orders_placed,
            self.store_head
                .map_or(String::new(), |h| format!("; store head {h}"))
        );
        for (name, figures) in [
            ("placeOrder", &self.mutation),
            ("point query", &self.point_query),
        ] {
            if let Some(f) = figures.as_ref().filter(|f| f.errors > 0) {
                let codes = f
                    .error_codes
                    .iter()
                    .map(|(code, n)| format!("{code} × {n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(out, "{name} errors: {codes}");
            }
        }
        out
    }
}
