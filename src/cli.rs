//! The `annals` command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::node::NodeConfig;
use crate::server::auth::{ApiKeys, Role};

/// Annals: an event-sourced CQRS backend with its own RocksDB event store.
#[derive(Debug, Parser)]
#[command(name = "annals", version, about, long_about = None)]
pub struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object per
    /// line, with the request id and principal of a request on each) for log pipelines.
    /// `RUST_LOG` sets what is logged (default `info`).
    #[arg(long, global = true, env = "ANNALS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The format of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the fields of the enclosing spans.
    Json,
}

/// The subcommands.
// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the GraphQL API over HTTP.
    Serve(ServeArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Write the published contracts (GraphQL SDL, event JSON Schemas) from the code.
    Schema(SchemaArgs),
    /// Rebuild read models offline from the event log (refuses while a server runs).
    Replay(ReplayArgs),
    /// Measure throughput and latency (on a fresh temporary data directory by default).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Export the event log (the audit trail) as NDJSON, CSV or CloudEvents, with a manifest.
    Export(crate::audit::cli::ExportArgs),
    /// Verify an export: hashes, chain, order, manifest, signature; optionally the store.
    Verify(crate::audit::cli::VerifyArgs),
    /// A running server's projections: status, parked events, retry, skip, rewind.
    Projections(ProjectionsArgs),
    /// A running server's process managers (the checkout): status, parked commands,
    /// retry, skip.
    Processes(ProcessesArgs),
    /// Erase a subject's personal data (crypto-shredding: its key is deleted, every record
    /// stays and verifies).
    Forget(ForgetArgs),
    /// Take an online, incremental backup (log, read models, keys) into a backup directory.
    Backup(BackupArgs),
    /// Restore a backup into a new data directory, verified, or list a directory's backups.
    Restore(RestoreArgs),
    /// Build a new data directory from an export: the audit trail as the source of truth.
    Import(ImportArgs),
}

/// Options of `annals processes`.
#[derive(Debug, clap::Args)]
pub struct ProcessesArgs {
    /// Where the server is and how to reach it.
    #[command(flatten)]
    pub server: AdminServerArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: crate::admin::ProcessRequest,
}

/// How an admin subcommand reaches the server.
#[derive(Debug, clap::Args)]
pub struct AdminServerArgs {
    /// The server (`http://HOST:PORT`, or its `/graphql` endpoint).
    #[arg(long, env = "ANNALS_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin API key, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "ANNALS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the server's JSON answer instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// Options of `annals projections`.
#[derive(Debug, clap::Args)]
pub struct ProjectionsArgs {
    /// Where the server is and how to reach it (`status` needs any key).
    #[command(flatten)]
    pub server: AdminServerArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: crate::admin::AdminRequest,
}

/// Options of `annals serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Where the event log (`<dir>/log`) and the read models (`<dir>/read`) live.
    #[arg(long, env = "ANNALS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The address to listen on. Without API keys only a loopback address is allowed.
    #[arg(long, env = "ANNALS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// A file of API keys, one `role:sha256hex` line each (`annals keys new` prints them).
    #[arg(long, env = "ANNALS_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// API keys inline, `role:sha256hex` entries separated by commas or newlines.
    #[arg(long, env = "ANNALS_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Sustained requests per second allowed per API key.
    #[arg(long, env = "ANNALS_RATE_LIMIT", default_value_t = 500)]
    pub rate_limit: u32,
    /// Requests an idle API key may send at once.
    #[arg(long, env = "ANNALS_RATE_BURST", default_value_t = 1000)]
    pub rate_burst: u32,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "ANNALS_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest a request may take, in seconds.
    #[arg(long, env = "ANNALS_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Live subscriptions one API key may hold at once (over all its connections).
    #[arg(long, env = "ANNALS_MAX_SUBSCRIPTIONS_PER_KEY", default_value_t = 16)]
    pub max_subscriptions_per_key: usize,
    /// Most operations one batched request (a JSON array of requests) may hold.
    #[arg(long, env = "ANNALS_MAX_BATCH", default_value_t = 100)]
    pub max_batch: usize,
    /// How long a query with `atLeast` waits for its read model, in milliseconds, before
    /// `STALE_READ_TIMEOUT`.
    #[arg(long, env = "ANNALS_STALE_READ_TIMEOUT_MS", default_value_t = 5000)]
    pub stale_read_timeout_ms: u64,
    /// How many times a command runs before a lost race is reported as `CONFLICT`
    /// (default 4).
    #[arg(long, env = "ANNALS_COMMAND_ATTEMPTS")]
    pub command_attempts: Option<u32>,
    /// Snapshot an aggregate once its stream is this many events past its last snapshot;
    /// 0 turns snapshots off (default 500).
    #[arg(long, env = "ANNALS_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Aggregate states the command side keeps in memory (default 10,000).
    #[arg(long, env = "ANNALS_AGGREGATE_CACHE")]
    pub aggregate_cache: Option<usize>,
    /// Most events a projection worker applies in one batch (default 16,384).
    #[arg(long, env = "ANNALS_PROJECTION_BATCH")]
    pub projection_batch: Option<usize>,
    /// Shortest time between two batches of a projection following the log, in
    /// milliseconds: under load, one batch then carries several commit groups (default 2;
    /// 0 applies every commit group on its own).
    #[arg(long, env = "ANNALS_PROJECTION_STEP_MS", default_value_t = 2)]
    pub projection_step_ms: u64,
    /// Run as a node of a cluster whose log is in NATS JetStream: the servers' URLs,
    /// comma-separated (`nats://10.0.0.1:4222,nats://10.0.0.2:4222`). Without it the log
    /// is embedded in the data directory.
    #[arg(long, env = "ANNALS_CLUSTER", value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// With --cluster: `all` takes the write lease when it is free; `query` never writes
    /// and serves queries and subscriptions from its replica.
    #[arg(long = "role", env = "ANNALS_ROLE", value_enum, default_value_t = NodeRole::All)]
    pub node_role: NodeRole,
    /// With --cluster: this node's id, shown in the lease while it writes (default: a
    /// random id per start).
    #[arg(long, env = "ANNALS_NODE_ID")]
    pub node_id: Option<String>,
    /// With --cluster: the cluster's name, part of its stream and subject names, so that
    /// several clusters can share one NATS system.
    #[arg(long, env = "ANNALS_CLUSTER_NAME", default_value = "annals")]
    pub cluster_name: String,
    /// Run the checkout saga: placed orders are paid, then confirmed or cancelled, and
    /// shipping captures the payment. `off` leaves orders to operators. In a cluster every
    /// node keeps the checkouts' state, and only the writing node sends their commands.
    #[arg(long, env = "ANNALS_CHECKOUT", value_enum, default_value_t = Switch::On)]
    pub checkout: Switch,
    /// How long the checkout waits for the payment gateway's answer before it cancels the
    /// order, in seconds.
    #[arg(long, env = "ANNALS_PAYMENT_TIMEOUT_SECS", default_value_t = 900)]
    pub payment_timeout_secs: u64,
    /// The simulated payment gateway's latency, in milliseconds.
    #[arg(long, env = "ANNALS_GATEWAY_LATENCY_MS", default_value_t = 0)]
    pub gateway_latency_ms: u64,
    /// The share of payments the simulated gateway declines, 0.0 to 1.0.
    #[arg(long, env = "ANNALS_GATEWAY_DECLINE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub gateway_decline_rate: f64,
    /// A window in which the simulated gateway is down, `AFTER+LENGTH` in seconds from the
    /// start (`60+30`: down from the first to the second half of the second minute).
    /// Repeatable.
    #[arg(long, env = "ANNALS_GATEWAY_OUTAGE", value_delimiter = ',', value_parser = parse_outage)]
    pub gateway_outage: Vec<crate::payments::OutageWindow>,
    /// A retention rule, `CATEGORY:max-age=AGE,max-count=N` (either or both; ages like
    /// `90s`, `15m`, `12h`, `30d`): the category's events older than the age, or beyond
    /// the last N of their stream, become tombstones. Repeatable.
    #[arg(long = "retention", env = "ANNALS_RETENTION", value_delimiter = ';', value_parser = crate::lifecycle::parse_retention_rule)]
    pub retention: Vec<annals_store::RetentionRule>,
    /// How often the retention rules run, in seconds.
    #[arg(long, env = "ANNALS_RETENTION_INTERVAL_SECS", default_value_t = 300)]
    pub retention_interval_secs: u64,
    /// Signs the manifests of `GET /export` (and so the console's downloads) with this
    /// ed25519 key: 64 hex digits or a file holding them (`annals keys new-signing` makes
    /// one). Its public half is published in `overview { exportPublicKey }`.
    #[arg(long, env = "ANNALS_EXPORT_SIGNING_KEY", value_name = "KEY_OR_FILE")]
    pub export_signing_key: Option<String>,
}

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("{s:?} is not a number from 0.0 to 1.0")),
    }
}

fn parse_outage(s: &str) -> Result<crate::payments::OutageWindow, String> {
    let parse = |part: &str| part.trim().parse::<u64>().map(Duration::from_secs);
    match s.split_once('+').map(|(a, l)| (parse(a), parse(l))) {
        Some((Ok(after), Ok(length))) => Ok(crate::payments::OutageWindow { after, length }),
        _ => Err(format!("{s:?} is not AFTER+LENGTH in seconds (60+30)")),
    }
}

/// A cluster node's role (`--role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeRole {
    /// Writes when it holds the lease; serves everything.
    All,
    /// Never writes; serves queries and subscriptions, forwards appends to the writer.
    Query,
}

impl ServeArgs {
    /// The cluster this node joins, if `--cluster` names one.
    pub fn cluster_options(&self) -> Option<annals_cluster::ClusterOptions> {
        if self.cluster.is_empty() {
            return None;
        }
        let mut options = annals_cluster::ClusterOptions::new(self.cluster.iter().cloned());
        options.name = self.cluster_name.clone();
        if let Some(id) = &self.node_id {
            options.node_id = id.clone();
        }
        options.role = match self.node_role {
            NodeRole::All => annals_cluster::Role::All,
            NodeRole::Query => annals_cluster::Role::Query,
        };
        Some(options)
    }

    /// The node these options describe (keys, rate limit and listen address apart, which
    /// `annals serve` checks and sets itself).
    pub fn node_config(&self) -> NodeConfig {
        let mut config = NodeConfig::on_disk(&self.data_dir);
        let bus = &mut config.bus;
        bus.max_attempts = self.command_attempts.unwrap_or(bus.max_attempts);
        bus.snapshot_every = self.snapshot_every.unwrap_or(bus.snapshot_every);
        bus.cache_capacity = self.aggregate_cache.unwrap_or(bus.cache_capacity);
        let projections = &mut config.projections;
        projections.batch_size = self.projection_batch.unwrap_or(projections.batch_size);
        projections.min_step_interval = Duration::from_millis(self.projection_step_ms);
        let server = &mut config.server;
        server.max_body_bytes = self.max_body_bytes;
        server.request_timeout = Duration::from_secs(self.request_timeout_secs);
        server.stale_read_timeout = Duration::from_millis(self.stale_read_timeout_ms);
        server.graphql.max_subscriptions_per_key = self.max_subscriptions_per_key;
        server.graphql.max_batch = self.max_batch;
        if self.checkout == Switch::Off {
            config.checkout = None;
        }
        if let Some(checkout) = &mut config.checkout {
            checkout.saga.payment_timeout = Duration::from_secs(self.payment_timeout_secs);
        }
        let simulated = &mut config.gateway.simulated;
        simulated.latency = Duration::from_millis(self.gateway_latency_ms);
        simulated.decline_rate = self.gateway_decline_rate;
        simulated.outages = self.gateway_outage.clone();
        config.retention = crate::lifecycle::RetentionConfig {
            rules: self.retention.clone(),
            interval: Some(Duration::from_secs(self.retention_interval_secs.max(1))),
        };
        config
    }

    /// The key that signs the server's exports, if one is configured.
    pub fn load_export_signing_key(&self) -> Result<Option<ed25519_dalek::SigningKey>, String> {
        self.export_signing_key
            .as_deref()
            .map(|key| {
                crate::audit::parse_signing_key(key)
                    .map_err(|e| format!("--export-signing-key: {e}"))
            })
            .transpose()
    }

    /// The configured API keys (file and inline together).
    pub fn load_keys(&self) -> Result<ApiKeys, String> {
        let mut keys = ApiKeys::none();
        if let Some(path) = &self.api_keys_file {
            let text = read(path)?;
            keys.add(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if let Some(inline) = &self.api_keys {
            keys.add(inline)
                .map_err(|e| format!("ANNALS_API_KEYS / --api-keys: {e}"))?;
        }
        Ok(keys)
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// `annals keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a fresh random key (shown once) and the line that configures it.
    New {
        /// reader, writer or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Print a fresh ed25519 key pair for signing export manifests.
    NewSigning(crate::audit::cli::NewSigningArgs),
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Options of `annals schema`.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// The schema directory.
    #[arg(long, default_value = "schema")]
    pub out: PathBuf,
    /// Only check that the files are current; exit non-zero if not.
    #[arg(long)]
    pub check: bool,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Appends from concurrent writers, optionally against raw RocksDB in the same run.
    Append(BenchAppendArgs),
    /// The full command path (placeOrder) on the reference domain.
    Command(BenchCommandArgs),
    /// Projection catch-up of the reference read models over a generated log.
    Catchup(BenchCatchupArgs),
    /// placeOrder mutations and point queries over HTTP from concurrent connections.
    Graphql(BenchGraphqlArgs),
}

/// Durability of a benchmark's appends.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Acknowledged means fsynced.
    Fsync,
    /// Acknowledged means in the OS page cache.
    Buffered,
}

impl From<DurabilityArg> for annals_store::Durability {
    fn from(d: DurabilityArg) -> Self {
        match d {
            DurabilityArg::Fsync => annals_store::Durability::Fsync,
            DurabilityArg::Buffered => annals_store::Durability::Buffered,
        }
    }
}

/// How long a benchmark runs.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Run this many seconds (default 10 when --events is not given).
    #[arg(long, conflicts_with = "events")]
    pub duration: Option<f64>,
    /// Run until this many events are written.
    #[arg(long)]
    pub events: Option<u64>,
}

/// Options of `annals bench append`.
#[derive(Debug, clap::Args)]
pub struct BenchAppendArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Events per append.
    #[arg(long, default_value_t = 1)]
    pub events_per_append: usize,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 300)]
    pub payload_bytes: usize,
    /// Writers share this many streams (contention) instead of one stream each.
    #[arg(long)]
    pub streams: Option<usize>,
    /// When an append is acknowledged.
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: DurabilityArg,
    /// How long to run.
    #[command(flatten)]
    pub limit: LimitArgs,
    /// Data directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Also run the same workload on raw RocksDB, alternating, and print the ratio.
    #[arg(long, conflicts_with = "cluster")]
    pub baseline: bool,
    /// Append through a cluster on these NATS servers (comma-separated URLs) instead,
    /// alternating with the embedded store, and print the ratio and the events per
    /// JetStream message. The run's stream and lease bucket are removed afterwards.
    #[arg(long, value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `annals bench command`.
#[derive(Debug, clap::Args)]
pub struct BenchCommandArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Whole checkouts through the saga (placed to confirmed, simulated gateway at zero
    /// latency) instead of `placeOrder` alone.
    #[arg(long)]
    pub saga: bool,
    /// Seal the customer id (personal data) under its customer's key, as `annals serve`
    /// does; `off` stores it in clear, to measure what sealing costs. Orders are spread
    /// over 1,000 customers whose keys exist before the run.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub seal: Switch,
    /// When an append is acknowledged.
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: DurabilityArg,
    /// How long to run.
    #[command(flatten)]
    pub limit: LimitArgs,
    /// Data directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `annals bench catchup`.
#[derive(Debug, clap::Args)]
pub struct BenchCatchupArgs {
    /// Events in the generated log.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Data directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Most events per projection batch (default: the runtime's default).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Then time a blue/green rebuild of every projection with the runtime live.
    #[arg(long)]
    pub rebuild: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Which requests the connections of `annals bench graphql` send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mix {
    /// Point queries only (`order(id)` and `product(id)`, alternating).
    Query,
    /// `placeOrder` mutations only.
    Mutation,
    /// A mutation, then a point query, in turn.
    Both,
}

impl Mix {
    /// The value as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Mutation => "mutation",
            Self::Both => "both",
        }
    }
}

/// Options of `annals bench graphql`.
#[derive(Debug, clap::Args)]
pub struct BenchGraphqlArgs {
    /// The GraphQL endpoint of a running server (`http://HOST:PORT/graphql`; a bare
    /// `http://HOST:PORT` gets `/graphql`), or several, comma-separated (the nodes of a
    /// cluster: the connections take turns over them). Without it a server is started
    /// in-process on 127.0.0.1 over a fresh temporary data directory, removed afterwards.
    #[arg(long)]
    pub url: Option<String>,
    /// Concurrent keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Run this many seconds (default 10 when --requests is not given).
    #[arg(long, conflicts_with = "requests")]
    pub duration: Option<f64>,
    /// Run until this many requests (of both kinds) are sent.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Which requests to send: placeOrder mutations, point queries, or both in turn.
    #[arg(long, value_enum, default_value = "both")]
    pub mix: Mix,
    /// API key sent as `Authorization: Bearer <key>` (a writer key; the in-process server
    /// has no keys and ignores it).
    #[arg(long, env = "ANNALS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Data directory of the in-process server (default: a fresh temporary directory,
    /// removed afterwards); never one in use.
    #[arg(long, conflicts_with = "url")]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `annals replay`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["projection", "all"]))]
pub struct ReplayArgs {
    /// Where the event log and the read models live.
    #[arg(long, env = "ANNALS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The projection to rebuild.
    pub projection: Option<String>,
    /// Rebuild every projection.
    #[arg(long)]
    pub all: bool,
}

/// Where a lifecycle command runs: against the data directory itself when no server holds
/// it, else through the server that does (found in `<data-dir>/serve.json`, or `--url`).
#[derive(Debug, clap::Args)]
pub struct NodeTargetArgs {
    /// The node's data directory.
    #[arg(long, env = "ANNALS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The server to ask instead (`http://HOST:PORT`); by default the one serving the data
    /// directory, if any.
    #[arg(long)]
    pub url: Option<String>,
    /// An admin API key for the server, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "ANNALS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `annals forget`.
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// The subject whose personal data is erased (for the reference domain, a customer id).
    pub subject: String,
    /// Why (recorded with the erasure: a ticket number, a legal basis).
    #[arg(long)]
    pub reason: Option<String>,
    /// Which node.
    #[command(flatten)]
    pub target: NodeTargetArgs,
}

/// Options of `annals backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The backup directory (created if missing; outside the data directory). Backups
    /// into the same directory share the files they have in common.
    #[arg(long)]
    pub to: PathBuf,
    /// Which node.
    #[command(flatten)]
    pub target: NodeTargetArgs,
}

/// Options of `annals restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup directory.
    pub backup_dir: PathBuf,
    /// The new data directory (must not hold a log, read models or keys yet).
    #[arg(long, required_unless_present = "list")]
    pub data_dir: Option<PathBuf>,
    /// Which backup (default: the latest).
    #[arg(long)]
    pub backup: Option<u32>,
    /// List the directory's complete backups instead.
    #[arg(long)]
    pub list: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `annals import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The export (NDJSON, CSV or CloudEvents) of a whole log, from position 1.
    pub file: PathBuf,
    /// The new data directory (must not hold a log yet).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}
