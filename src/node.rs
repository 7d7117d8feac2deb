//! The composition root: [`Node::start`] assembles one Annals node from a [`NodeConfig`].
//!
//! A node is the event log, the read models, the projection runtime that keeps them
//! current, the command side over the log, and the API state over all of them. `annals
//! serve`, `annals replay`, the benchmarks, the end-to-end tests and the fuzz target all
//! build their node here, so there is one place that decides how the pieces fit and in
//! which order they start and stop:
//!
//! 1. open the log ([`Storage`]: a [`DataDir`]'s `log/`, or in memory);
//! 2. open the read models (the data directory's `read/`, or a temporary directory that
//!    the node owns and removes);
//! 3. start the projection workers over the log, with the domain's upcasters (and the
//!    checkout's decision half, a projection like the others);
//! 4. build the command bus, the payment gateway, the domain and the API state over the
//!    same log;
//! 5. start the checkout's dispatcher, which sends the saga's commands through the domain.
//!
//! [`Node::shutdown`] undoes it in reverse: the dispatcher stops after its round, workers
//! stop at a checkpoint, then the log closes (its writer finishes what it was given and
//! joins).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use annals_cluster::ClusterEventStore;
use annals_projections::process::{
    ActiveWhen, Clock, Dispatcher, DispatcherOptions, ProcessHandle, ProcessProjection, SystemClock,
};
use annals_projections::{ProjectionError, ProjectionRuntime, ReadModelStore, RuntimeOptions};
use annals_store::{
    BusOptions, CommandBus, EventStore, InMemoryEventStore, RocksEventStore, SharedStore,
    StoreError, StoreOptions,
};
use tokio::net::TcpListener;

use crate::checkout::{Checkout, CheckoutExecutor};
use crate::domain::{self, Commerce};
use crate::lifecycle::{Lifecycle, RetentionConfig};
use crate::payments::{
    GatewayOptions, GuardOptions, GuardedGateway, PaymentGateway, SimulatedGateway,
};
use crate::privacy::{Privacy, PrivacyError, RocksKeyStore};
use crate::server::{self, AppState, ServerConfig};
use crate::webhooks::{Deliverer, DelivererOptions, WebhookKey, WebhooksProjection};

/// A data directory: `log/` holds the event log, `read/` the read models. Two RocksDB
/// instances, so read-model churn never competes with the log's compactions and a read
/// model can be thrown away and rebuilt without touching the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (created when the node opens it).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the event log lives.
    pub fn log(&self) -> PathBuf {
        self.root.join("log")
    }

    /// Where the read models live.
    pub fn read(&self) -> PathBuf {
        self.root.join("read")
    }

    /// Where the key store (the subjects' data keys) lives.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// Records that a server on `addr` serves this directory (`serve.json`), so that
    /// `annals backup` and `annals forget` pointed at the directory can reach it.
    pub fn announce(&self, addr: std::net::SocketAddr) -> std::io::Result<()> {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let body = serde_json::json!({ "url": format!("http://{addr}") }).to_string();
        std::fs::write(self.root.join(SERVE_FILE), body)
    }

    /// The URL of the server that announced itself on this directory, if any.
    pub fn announced_url(&self) -> Option<String> {
        let bytes = std::fs::read(self.root.join(SERVE_FILE)).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        value["url"].as_str().map(str::to_string)
    }

    /// Removes the announcement (the server stopped).
    pub fn withdraw(&self) {
        let _ = std::fs::remove_file(self.root.join(SERVE_FILE));
    }
}

/// The file in which a server announces itself in its data directory.
const SERVE_FILE: &str = "serve.json";

/// Where a node keeps its log.
#[derive(Clone, Debug)]
pub enum Storage {
    /// On disk, in a data directory: the product.
    Dir(DataDir),
    /// In memory, gone with the process (the read models go to a temporary directory):
    /// for tests and demonstrations.
    InMemory,
    /// A node of a cluster: the log is the cluster's, through this node's replica (which
    /// [`annals_cluster::ClusterEventStore::start`] opened in the data directory's `log/`);
    /// the read models are in the data directory's `read/`.
    Cluster(DataDir, ClusterEventStore),
}

/// Everything a node is made of. Each part's defaults are the product's defaults and say
/// why where they are defined ([`StoreOptions`], [`BusOptions`], [`RuntimeOptions`],
/// [`ServerConfig`]).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the log lives.
    pub storage: Storage,
    /// The event log's durability, group-commit and input limits.
    pub store: StoreOptions,
    /// The command side's retries, snapshots, cache and per-stream queues.
    pub bus: BusOptions,
    /// The projection workers' batch size, retries and rebuild settings.
    pub projections: RuntimeOptions,
    /// The API: keys, rate limits, body and query limits, timeouts.
    pub server: ServerConfig,
    /// The checkout saga, or `None` to leave orders to operators (placed orders then wait
    /// for `confirmOrder`).
    pub checkout: Option<CheckoutConfig>,
    /// The payment gateway and its guard.
    pub gateway: GatewayConfig,
    /// Webhook delivery.
    pub webhooks: DelivererOptions,
    /// Retention rules and how often they run.
    pub retention: RetentionConfig,
}

/// The checkout saga's settings.
#[derive(Clone, Debug)]
pub struct CheckoutConfig {
    /// The saga's rules (its payment timeout).
    pub saga: Checkout,
    /// How its commands are sent and retried.
    pub dispatcher: DispatcherOptions,
    /// The time its deadlines and retries go by: the system's, or a test's.
    pub clock: Arc<dyn Clock>,
}

impl Default for CheckoutConfig {
    fn default() -> Self {
        Self {
            saga: Checkout::default(),
            dispatcher: DispatcherOptions::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// The payment gateway a node calls.
#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    /// The gateway; `None` for the simulated gateway with `simulated`'s options.
    pub gateway: Option<Arc<dyn PaymentGateway>>,
    /// How the simulated gateway behaves.
    pub simulated: GatewayOptions,
    /// Its timeout and circuit breaker.
    pub guard: GuardOptions,
}

impl NodeConfig {
    /// A node over `storage` with every default.
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            store: StoreOptions::default(),
            bus: BusOptions::default(),
            projections: RuntimeOptions::default(),
            server: ServerConfig::default(),
            checkout: Some(CheckoutConfig::default()),
            gateway: GatewayConfig::default(),
            webhooks: DelivererOptions::default(),
            retention: RetentionConfig::default(),
        }
    }

    /// A node on the data directory at `root`, with every default.
    pub fn on_disk(root: impl Into<PathBuf>) -> Self {
        Self::new(Storage::Dir(DataDir::new(root)))
    }

    /// A node whose log is in memory, with every default.
    pub fn in_memory() -> Self {
        Self::new(Storage::InMemory)
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The event log did not open (in use, newer format, unreadable directory, ...).
    #[error("opening the event log in {path}: {source}")]
    Log {
        /// The log's directory.
        path: PathBuf,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// The read models did not open, or their projections did not start.
    #[error("opening the read models in {path}: {source}")]
    ReadModels {
        /// The read models' directory.
        path: PathBuf,
        /// What the projection runtime said.
        #[source]
        source: ProjectionError,
    },
    /// The key store did not open.
    #[error("opening the key store: {0}")]
    Keys(#[source] PrivacyError),
    /// The webhook key file could not be read or made.
    #[error("the webhook key: {0}")]
    WebhookKey(#[source] std::io::Error),
    /// The temporary directory of an in-memory node's read models could not be made.
    #[error("creating a temporary directory for the read models: {0}")]
    TempDir(#[source] std::io::Error),
}

impl NodeError {
    /// The data directory in use by another process, if that is why the node did not start.
    pub fn in_use(&self) -> Option<&Path> {
        match self {
            NodeError::Log {
                source: StoreError::Locked { path },
                ..
            }
            | NodeError::ReadModels {
                source: ProjectionError::Locked { path },
                ..
            } => Some(path),
            _ => None,
        }
    }
}

/// A running node. Cheap handles to its parts are available while it runs; dropping it
/// without [`Node::shutdown`] leaves the workers to stop with the async runtime.
#[derive(Debug)]
pub struct Node {
    store: SharedStore,
    projections: ProjectionRuntime,
    state: AppState,
    /// The checkout's dispatcher, if the checkout runs.
    checkout: Option<ProcessHandle>,
    /// The webhooks' delivery.
    deliverer: Deliverer,
    /// The domain's commands.
    commerce: Arc<Commerce<SharedStore>>,
    /// The read models of an in-memory node, removed when the node is dropped.
    _scratch: Option<tempfile::TempDir>,
    /// The cluster this node belongs to, left in order on shutdown.
    cluster: Option<ClusterEventStore>,
    /// Erasure, deletion, retention, backup.
    lifecycle: Arc<Lifecycle>,
    /// Stops the retention job.
    retention_stop: tokio::sync::watch::Sender<bool>,
}

impl Node {
    /// Opens the log and the read models, starts the projection workers and builds the
    /// command side and the API state. Must be called inside a tokio runtime (the workers
    /// are tasks).
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let NodeConfig {
            storage,
            store: store_options,
            bus,
            projections: runtime_options,
            mut server,
            mut checkout,
            gateway,
            mut webhooks,
            retention,
        } = config;
        let mut cluster = None;
        let mut own_log = None;
        let (store, read_dir, keys_dir, scratch) = match storage {
            Storage::Dir(dir) => {
                let path = dir.log();
                let store = RocksEventStore::open(&path, store_options)
                    .map_err(|source| NodeError::Log { path, source })?;
                server
                    .data_dir
                    .get_or_insert_with(|| dir.root().to_path_buf());
                own_log = Some(store.clone());
                (SharedStore::new(store), dir.read(), Some(dir.keys()), None)
            }
            Storage::InMemory => {
                let scratch = tempfile::tempdir().map_err(NodeError::TempDir)?;
                let read = scratch.path().join("read");
                let keys = scratch.path().join("keys");
                let store = SharedStore::new(InMemoryEventStore::new(store_options));
                (store, read, Some(keys), Some(scratch))
            }
            Storage::Cluster(dir, store) => {
                server
                    .data_dir
                    .get_or_insert_with(|| dir.root().to_path_buf());
                // Every node keeps the checkout's and the webhooks' state (they are
                // projections); only the writer sends commands, fires deadlines and
                // delivers, so a remote service hears each call once per cluster.
                let writer = store.clone();
                let leading = ActiveWhen(Arc::new(move || writer.is_leading()));
                if let Some(checkout) = &mut checkout {
                    checkout.dispatcher.active_when = Some(leading.clone());
                }
                webhooks.active_when = Some(leading);
                cluster = Some(store.clone());
                // The key store follows the cluster's keys ([`ClusterEventStore::share_keys`],
                // which `annals serve` calls before the node starts).
                (SharedStore::new(store), dir.read(), None, None)
            }
        };
        let shared_keys = cluster.as_ref().and_then(ClusterEventStore::keys);
        let privacy = match (&keys_dir, shared_keys) {
            (_, Some(keys)) => Privacy::replicated(keys.local, keys.shared),
            (Some(path), None) => match RocksKeyStore::open(path) {
                Ok(keys) => Privacy::new(Arc::new(keys)),
                Err(source) => {
                    store.close();
                    return Err(NodeError::Keys(source.into()));
                }
            },
            (None, None) => Privacy::disabled(),
        };
        let key = match &server.data_dir {
            Some(dir) => WebhookKey::load_or_create(&dir.join("webhook.key")),
            None => WebhookKey::random(),
        };
        let key = match key {
            Ok(key) => key,
            Err(source) => {
                store.close();
                return Err(NodeError::WebhookKey(source));
            }
        };
        let shared = Arc::new(store.clone());
        let mut projections = crate::read_models::projections();
        projections.push(Arc::new(WebhooksProjection));
        let saga = checkout.as_ref().map(|c| Arc::new(c.saga.clone()));
        if let Some(saga) = &saga {
            projections.push(Arc::new(ProcessProjection::new(saga.clone())));
        }
        let opened = ReadModelStore::open(&read_dir).and_then(|read| {
            ProjectionRuntime::start(
                shared.clone(),
                Arc::new(read),
                projections,
                Arc::new(domain::upcasters()),
                runtime_options,
            )
        });
        let projections = match opened {
            Ok(projections) => projections,
            Err(source) => {
                store.close();
                return Err(NodeError::ReadModels {
                    path: read_dir,
                    source,
                });
            }
        };
        let bus = CommandBus::with_options(shared.clone(), domain::upcasters(), bus);
        let inner = gateway
            .gateway
            .unwrap_or_else(|| Arc::new(SimulatedGateway::new(gateway.simulated)));
        let commerce = Commerce::with_gateway(bus, GuardedGateway::new(inner, gateway.guard))
            .with_privacy(privacy.clone());
        let commerce = Arc::new(match checkout {
            Some(_) => commerce.confirmed_by_checkout(),
            None => commerce,
        });
        let dispatcher = match (checkout, saga) {
            (Some(config), Some(saga)) => Some(Dispatcher::start(
                saga,
                Arc::new(CheckoutExecutor::new(commerce.clone())),
                shared,
                projections.clone(),
                config.clock,
                config.dispatcher,
            )),
            _ => None,
        };
        let started = dispatcher.transpose().and_then(|dispatcher| {
            let deliverer = Deliverer::start(projections.clone(), store.clone(), key, webhooks)?;
            Ok((dispatcher, deliverer))
        });
        let (dispatcher, deliverer) = match started {
            Ok(started) => started,
            Err(source) => {
                store.close();
                return Err(NodeError::ReadModels {
                    path: read_dir,
                    source,
                });
            }
        };
        let lifecycle = Arc::new(Lifecycle {
            log: own_log,
            store: store.clone(),
            commerce: commerce.clone(),
            read: projections.read_models().clone(),
            privacy,
            data_dir: server.data_dir.clone(),
            retention: retention.rules,
            ops: Default::default(),
        });
        // An erasure cut short by a crash (its record written, its key not yet deleted)
        // is finished before long; sealed values read as erased from the record on anyway
        // once the key is gone.
        let reconciling = lifecycle.clone();
        tokio::spawn(async move {
            match reconciling.reconcile().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(keys = n, "finished erasures cut short"),
                Err(error) => tracing::warn!(%error, "checking the erasure records failed"),
            }
        });
        let (retention_stop, stop) = tokio::sync::watch::channel(false);
        if let Some(interval) = retention.interval
            && !lifecycle.retention_rules().is_empty()
        {
            lifecycle.spawn_retention(interval, stop);
        }
        let state = AppState::new(
            store.clone(),
            commerce.clone(),
            projections.clone(),
            server,
            cluster.clone(),
            dispatcher.iter().cloned().collect(),
            deliverer.clone(),
            lifecycle.clone(),
        );
        Ok(Node {
            store,
            projections,
            state,
            checkout: dispatcher,
            deliverer,
            commerce,
            _scratch: scratch,
            cluster,
            lifecycle,
            retention_stop,
        })
    }

    /// Erasure, stream deletion, retention and backup.
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The event log.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The projection workers and the read models they keep.
    pub fn projections(&self) -> &ProjectionRuntime {
        &self.projections
    }

    /// The domain's commands, as the API sends them.
    pub fn commerce(&self) -> &Arc<Commerce<SharedStore>> {
        &self.commerce
    }

    /// The API state (`server::app(state)` is the router).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves the API on `listener` until `shutdown` completes and the in-flight requests
    /// are answered, then shuts the node down. Returns the server's result.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let served = server::run(listener, self.state.clone(), shutdown).await;
        self.shutdown().await;
        served
    }

    /// Stops the checkout's dispatcher after its round (unsent commands stay in its
    /// outbox), the projection workers at a checkpoint (every batch is atomic), then leaves
    /// the cluster (if any) and closes the log.
    pub async fn shutdown(self) {
        let _ = self.retention_stop.send(true);
        if let Some(checkout) = &self.checkout {
            checkout.shutdown().await;
        }
        self.deliverer.shutdown().await;
        self.projections.shutdown().await;
        if let Some(cluster) = &self.cluster {
            // Hands the lease over at once instead of after its expiry.
            cluster.shutdown().await;
        }
        self.store.close();
    }
}
