//! The HTTP server: `app(state) -> Router` and `run(listener, state, shutdown)`.
//!
//! Routes: `POST`/`GET /graphql` (GraphiQL for browsers), `GET /graphql/ws`
//! (graphql-transport-ws), `GET /export`, `GET /health`, `GET /ready`, `GET /metrics`,
//! and the admin console under `/admin/` ([`crate::console`]). Every request
//! gets an `X-Request-ID` (the client's or a fresh UUID), echoed in the response and
//! recorded on the tracing span that every log line of the request is emitted in.
//!
//! Layers, outermost first: CORS → compression → the edge ([`edge`]: request id, the
//! caller's principal resolved once, trace span, timeout, metrics, and the errors of the
//! layers below as GraphQL errors) → body limit (refuses a body whose `Content-Length`
//! is over the limit before reading it, and stops reading a streamed one at the limit).
//! The GraphQL routes and `/export` take their caller with `routes::Caller`, which
//! refuses a wrong key and applies the per-key rate limit.

pub mod auth;
mod edge;
pub mod metrics;
mod routes;
pub mod samples;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use annals_projections::ProjectionRuntime;
use annals_projections::process::ProcessHandle;
use annals_store::SharedStore;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, header};
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

use crate::domain::Commerce;
use crate::graphql::{self, ApiContext, Graphql, GraphqlLimits};
use crate::read_models::{CommerceReadModels, PageLimits};
use auth::{ApiKeys, KeyRateLimiter, KeyRing, RateLimit};

/// The request-id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The API keys at startup; empty allows everything (loopback only, checked by
    /// `annals serve`). [`AppState::replace_api_keys`] swaps them while serving.
    pub api_keys: ApiKeys,
    /// Requests per key.
    pub rate_limit: RateLimit,
    /// Depth, complexity and page caps.
    pub graphql: GraphqlLimits,
    /// Largest request body accepted, in bytes. Default 4 MiB: room for a full append
    /// (1,000 events of a few kilobytes) while one client cannot make the server buffer
    /// much.
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered with an error. Default 30 s, the
    /// usual client and proxy timeout: past it nobody is waiting for the answer.
    pub request_timeout: Duration,
    /// The data directory, whose writability `/ready` checks (none for a log in memory;
    /// the composition root fills it in for a data directory).
    pub data_dir: Option<PathBuf>,
    /// How long a read-model query with `atLeast` waits before `STALE_READ_TIMEOUT`.
    /// Default 5 s: a projection keeps up within milliseconds, so a longer wait means it
    /// is stopped or failing, which the client should hear about.
    pub stale_read_timeout: Duration,
    /// Page sizes of the read-model list queries.
    pub page_limits: PageLimits,
    /// The key `GET /export` signs its manifests with; unsigned without one. Its public
    /// half is published in `overview { exportPublicKey }`.
    pub export_signing_key: Option<ed25519_dalek::SigningKey>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_keys: ApiKeys::none(),
            rate_limit: RateLimit::default(),
            graphql: GraphqlLimits::default(),
            max_body_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            data_dir: None,
            stale_read_timeout: Duration::from_secs(5),
            page_limits: PageLimits::default(),
            export_signing_key: None,
        }
    }
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    projections: ProjectionRuntime,
    schema: Graphql,
    limiter: KeyRateLimiter,
    config: ServerConfig,
    shutdown: watch::Sender<bool>,
    draining: AtomicBool,
    /// The keys in force: `config.api_keys` until a reload replaces them.
    keys: KeyRing,
    /// The cluster of a cluster node, for `/ready`'s report.
    cluster: Option<annals_cluster::ClusterEventStore>,
    /// The process managers' dispatchers.
    processes: Vec<ProcessHandle>,
    /// The payment gateway's guard, for `/ready` and `/metrics`.
    gateway: crate::payments::GuardedGateway,
    /// The webhooks' delivery, for `/metrics`.
    webhooks: crate::webhooks::Deliverer,
    /// The last minutes of the node, sampled each second by [`run`].
    samples: samples::Samples,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.inner.store)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state of a server over `store`, the domain's commands over the same store and
    /// the projections that follow it; the schema is built here. `crate::node::Node`
    /// is the one place that calls it.
    // The node hands over each part it built; a struct of them would only repeat the list.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: SharedStore,
        commerce: Arc<Commerce<SharedStore>>,
        projections: ProjectionRuntime,
        config: ServerConfig,
        cluster: Option<annals_cluster::ClusterEventStore>,
        processes: Vec<ProcessHandle>,
        webhooks: crate::webhooks::Deliverer,
        lifecycle: Arc<crate::lifecycle::Lifecycle>,
    ) -> Self {
        // The recorder must exist before the first request so that no sample is lost.
        let _ = metrics::handle();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let keys = KeyRing::new(config.api_keys.clone());
        let gateway = commerce.gateway().clone();
        let samples = samples::Samples::default();
        let schema = graphql::build_schema(ApiContext {
            store: store.clone(),
            commerce,
            limits: config.graphql,
            shutdown: shutdown_rx,
            read_models: CommerceReadModels::new(
                projections.read_models().clone(),
                config.page_limits,
            ),
            projections: projections.clone(),
            stale_read_timeout: config.stale_read_timeout,
            subscriptions: graphql::SubscriptionSlots::default(),
            keys: keys.clone(),
            processes: processes.clone(),
            webhooks: webhooks.clone(),
            privacy: lifecycle.privacy().clone(),
            lifecycle,
            samples: samples.clone(),
            export_public_key: config
                .export_signing_key
                .as_ref()
                .map(|key| hex::encode(key.verifying_key().as_bytes())),
        });
        Self {
            inner: Arc::new(Inner {
                store,
                projections,
                schema,
                limiter: KeyRateLimiter::new(config.rate_limit),
                keys,
                config,
                shutdown,
                draining: AtomicBool::new(false),
                cluster,
                processes,
                gateway,
                webhooks,
                samples,
            }),
        }
    }

    /// The node's samples of the last minutes.
    pub fn samples(&self) -> &samples::Samples {
        &self.inner.samples
    }

    /// The webhooks' delivery.
    pub fn webhooks(&self) -> &crate::webhooks::Deliverer {
        &self.inner.webhooks
    }

    /// The payment gateway, behind its guard.
    pub fn gateway(&self) -> &crate::payments::GuardedGateway {
        &self.inner.gateway
    }

    /// The process managers' dispatchers (the checkout's, when it runs).
    pub fn processes(&self) -> &[ProcessHandle] {
        &self.inner.processes
    }

    /// The cluster this node belongs to, if it is a cluster node.
    pub fn cluster(&self) -> Option<&annals_cluster::ClusterEventStore> {
        self.inner.cluster.as_ref()
    }

    /// The event log.
    pub fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    /// The projection workers.
    pub fn projections(&self) -> &ProjectionRuntime {
        &self.inner.projections
    }

    /// The executable schema, behind its document cache.
    pub fn schema(&self) -> &Graphql {
        &self.inner.schema
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The API keys in force.
    pub fn api_keys(&self) -> Arc<ApiKeys> {
        self.inner.keys.current()
    }

    /// Puts `keys` in force for every later request and WebSocket connection; live
    /// subscriptions of a key revoked or removed by them end with `UNAUTHENTICATED`.
    /// Refused, keeping the keys in force, when the server has keys and `keys` has none
    /// (that would let every caller in as admin): revoke keys with `revoked:` lines.
    pub fn replace_api_keys(&self, keys: ApiKeys) -> Result<(), String> {
        self.inner.keys.replace(keys)
    }

    pub(crate) fn limiter(&self) -> &KeyRateLimiter {
        &self.inner.limiter
    }

    /// Starts shutting down: `/ready` answers 503 and live subscriptions end.
    pub fn begin_shutdown(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        let _ = self.inner.shutdown.send(true);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }
}

/// The router with every route and layer.
pub fn app(state: AppState) -> Router {
    let config = state.config().clone();
    let graphql_routes = Router::new()
        .route(
            "/graphql",
            get(routes::graphql_get).post(routes::graphql_post),
        )
        .route("/graphql/ws", get(routes::graphql_ws))
        .route("/export", get(routes::export));
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, REQUEST_ID])
        .expose_headers([REQUEST_ID]);
    Router::new()
        .merge(graphql_routes)
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .merge(crate::console::router())
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(cors)
                .layer(CompressionLayer::new())
                .layer(from_fn_with_state(state.clone(), edge::edge))
                .layer(RequestBodyLimitLayer::new(config.max_body_bytes)),
        )
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` completes, then stops accepting, ends
/// live subscriptions and waits for in-flight requests. The caller closes the store
/// afterwards (so the writer flushes and joins).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let maintenance = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                if let Some(handle) = metrics::handle() {
                    handle.run_upkeep();
                }
                state.limiter().prune();
            }
        })
    };
    let sampler = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let state = state.clone();
                // Projection status reads the read-model database: off the async threads.
                let _ = tokio::task::spawn_blocking(move || {
                    state.samples().record(state.store(), state.projections());
                })
                .await;
            }
        })
    };
    let draining = state.clone();
    let result = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            draining.begin_shutdown();
        })
        .await;
    maintenance.abort();
    sampler.abort();
    result
}
